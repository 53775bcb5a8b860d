//! `selfie-auth serve` as a separate process: started, signalled, killed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::simulator::{API_KEY, PARTNER_ID};

/// A free port on 127.0.0.1, for a process that must keep its address across restarts.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// A running `selfie-auth serve`.
pub struct ServeProcess {
    pub process: tokio::process::Child,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    /// Every log line so far.
    logs: Arc<Mutex<Vec<String>>>,
}

impl ServeProcess {
    /// Starts `binary serve` against the simulator at `base_url`, with `env`
    /// on top of the Smile ID settings, and waits until it serves.
    pub async fn start(binary: &str, base_url: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(binary, base_url, env, "selfie-auth serving").await
    }

    /// Like [`ServeProcess::start`], but returns once it listens, ready or not.
    pub async fn start_listening(binary: &str, base_url: &str, env: &[(&str, &str)]) -> Self {
        Self::spawn(binary, base_url, env, "selfie-auth listening; opening the job store").await
    }

    /// The log lines so far that contain `needle`.
    pub fn logs_containing(&self, needle: &str) -> Vec<String> {
        let logs = self.logs.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        logs.iter().filter(|line| line.contains(needle)).cloned().collect()
    }

    async fn spawn(binary: &str, base_url: &str, env: &[(&str, &str)], announcement: &str) -> Self {
        let mut process = tokio::process::Command::new(binary)
            .arg("serve")
            .env("SMILEID_PARTNER_ID", PARTNER_ID)
            .env("SMILEID_API_KEY", API_KEY)
            .env("SMILEID_BASE_URL", base_url)
            .env("SELFIE_AUTH_GRPC_ADDR", "127.0.0.1:0")
            .env("SELFIE_AUTH_HTTP_ADDR", "127.0.0.1:0")
            .env("SELFIE_AUTH_SHUTDOWN_DELAY", "0s")
            .env("SELFIE_AUTH_INSECURE_NO_AUTH", "true")
            .envs(env.iter().copied())
            .env("SELFIE_AUTH_LOG_FORMAT", "json")
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start selfie-auth serve");
        let stderr = process.stderr.take().expect("stderr");
        let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
        let logs: Arc<Mutex<Vec<String>>> = Arc::default();
        let kept = logs.clone();
        let addrs = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.expect("read stderr") {
                kept.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line.clone());
                let Ok(entry) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if entry["fields"]["message"] == announcement {
                    let addr = |key: &str| entry["fields"][key].as_str().and_then(|text| text.parse().ok());
                    return addr("grpc").zip(addr("http"));
                }
            }
            None
        })
        .await
        .expect("the service announces itself")
        .expect("its addresses");
        // Keep reading (and keeping) so the service never blocks on a full pipe.
        let kept = logs.clone();
        selfie_auth::task::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                kept.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line);
            }
        });
        Self {
            process,
            grpc_addr: addrs.0,
            http_addr: addrs.1,
            logs,
        }
    }

    /// Sends `signal` (e.g. `-TERM`, `-KILL`) to the process.
    pub fn signal(&self, signal: &str) {
        let pid = self.process.id().expect("running").to_string();
        let sent = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .expect("kill");
        assert!(sent.success());
    }

    /// `kill -9`, and waits until it is gone.
    pub async fn kill(mut self) {
        self.signal("-KILL");
        let _ = self.process.wait().await;
    }

    /// The highest resident memory of the process so far (`VmHWM`), in bytes.
    pub fn peak_memory_bytes(&self) -> Option<u64> {
        let pid = self.process.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    pub async fn client(&self) -> crate::service::Client {
        selfie_auth::grpc::pb::selfie_auth_client::SelfieAuthClient::connect(format!("http://{}", self.grpc_addr))
            .await
            .expect("connect")
            .max_encoding_message_size(32 * 1024 * 1024)
    }
}
