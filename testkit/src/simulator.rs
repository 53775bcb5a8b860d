//! The simulator as Smile ID: on 127.0.0.1:0 in-process or as the
//! `selfie-auth simulator` command, a Smile ID client for it, and a callback sink.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use selfie_auth::simulator::{self, Endpoint, Fault, RunningSimulator, SimulatorConfig};
use selfie_auth::smileid::{ApiKey, ClientConfig, Credentials, Environment, SmileIdClient};
use serde_json::Value;

pub const PARTNER_ID: &str = "1234";
pub const API_KEY: &str = "test-api-key-0123456789abcdef";
pub const ENROLLED_USER: &str = "user-enrolled";

pub fn credentials() -> Credentials {
    Credentials::new(PARTNER_ID, ApiKey::new(API_KEY))
}

pub fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

pub async fn start_simulator(configure: impl FnOnce(&mut SimulatorConfig)) -> RunningSimulator {
    let mut config = SimulatorConfig::new(PARTNER_ID, ApiKey::new(API_KEY));
    config.enrolled_users = vec![ENROLLED_USER.to_owned()];
    config.callback_delay = Duration::from_millis(20);
    config.review_delay = Duration::from_millis(300);
    configure(&mut config);
    simulator::start(config, loopback()).await.expect("simulator")
}

/// A simulator whose zip uploads never answer: every submission sent to it
/// stays in flight, holding whatever it holds, until the client gives up.
pub async fn start_simulator_with_hung_uploads() -> RunningSimulator {
    let sim = start_simulator(|_| {}).await;
    sim.set_fault(
        Endpoint::Put,
        Fault {
            hang: true,
            ..Fault::default()
        },
    );
    sim
}

pub fn client_for(sim: &RunningSimulator) -> SmileIdClient {
    client_with(sim, |_| {})
}

pub fn client_with(sim: &RunningSimulator, configure: impl FnOnce(&mut ClientConfig)) -> SmileIdClient {
    let mut config = ClientConfig::new(Environment::Custom(sim.v1_url()), credentials());
    config.retry.initial_backoff = Duration::from_millis(20);
    config.retry.max_backoff = Duration::from_millis(100);
    configure(&mut config);
    SmileIdClient::new(config).expect("client")
}

/// An HTTP endpoint on 127.0.0.1:0 that records every JSON body posted to it.
#[derive(Clone)]
pub struct CallbackSink {
    pub url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl CallbackSink {
    pub async fn start() -> Self {
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let recorded = bodies.clone();
        let router = axum::Router::new().route(
            "/callback",
            axum::routing::post(move |body: Bytes| {
                let recorded = recorded.clone();
                async move {
                    if let Ok(value) = serde_json::from_slice(&body) {
                        recorded.lock().expect("lock").push(value);
                    }
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
        let url = format!("http://{}/callback", listener.local_addr().expect("addr"));
        selfie_auth::task::spawn(async move { axum::serve(listener, router).await });
        Self { url, bodies }
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().expect("lock").clone()
    }

    /// Waits (bounded) until at least `count` bodies arrived.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let bodies = self.bodies();
            if bodies.len() >= count || tokio::time::Instant::now() >= deadline {
                return bodies;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs `selfie-auth simulator` (the command at `binary`) on a free port with `extra` arguments;
/// returns the process and the base URL it announces.
pub async fn spawn_simulator_command(binary: &str, extra: &[&std::ffi::OsStr]) -> (tokio::process::Child, String) {
    let mut simulator = tokio::process::Command::new(binary)
        .args([
            "simulator",
            "--listen",
            "127.0.0.1:0",
            "--enroll",
            ENROLLED_USER,
            "--review-delay",
            "500ms",
        ])
        .args(extra)
        .env("SMILEID_PARTNER_ID", PARTNER_ID)
        .env("SMILEID_API_KEY", API_KEY)
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the simulator");
    let stderr = simulator.stderr.take().expect("stderr");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stderr));
    let base_url = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.expect("read stderr") {
            if let Some(rest) = line.strip_prefix("Smile ID simulator: ") {
                return rest.split_whitespace().next().map(str::to_owned);
            }
        }
        None
    })
    .await
    .expect("simulator announces itself")
    .expect("simulator url");
    // Keep reading so the simulator never blocks on a full pipe.
    selfie_auth::task::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (simulator, base_url)
}
