//! Helpers shared by the black-box tests: fixture images, a simulator on
//! 127.0.0.1:0, and a callback sink.
#![allow(dead_code)]

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use selfie_auth::simulator::{self, RunningSimulator, SimulatorConfig};
use selfie_auth::smileid::{ApiKey, ClientConfig, Credentials, Environment, SmileIdClient};
use serde_json::Value;

pub const PARTNER_ID: &str = "1234";
pub const API_KEY: &str = "test-api-key-0123456789abcdef";
pub const ENROLLED_USER: &str = "user-enrolled";

pub fn credentials() -> Credentials {
    Credentials::new(PARTNER_ID, ApiKey::new(API_KEY))
}

/// A small real JPEG; `seed` varies the pixels so images differ.
pub fn jpeg(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x as u8).wrapping_add(seed), (y as u8).wrapping_mul(3), seed])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode jpeg");
    out.into_inner()
}

pub fn png(width: u32, height: u32, seed: u8) -> Vec<u8> {
    let image = image::RgbImage::from_fn(width, height, |x, y| image::Rgb([x as u8, y as u8, seed]));
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
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
        tokio::spawn(async move { axum::serve(listener, router).await });
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

/// Polls until `check` returns `Some`, at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// === the service ===

use selfie_auth::grpc::pb;
use selfie_auth::grpc::pb::selfie_auth_client::SelfieAuthClient;
use selfie_auth::jobs::{ReconcilePolicy, ServiceConfig};
use selfie_auth::server::{RunningService, Settings};

pub type Client = SelfieAuthClient<tonic::transport::Channel>;

/// A service on 127.0.0.1:0 talking to `sim`, with a SQLite file in `dir`.
pub struct TestService {
    pub running: RunningService,
    pub callback_url: String,
    pub http_url: String,
    pub database_url: String,
}

pub fn settings_for(sim: &RunningSimulator, database_url: &str) -> Settings {
    let mut smile = ClientConfig::new(Environment::Custom(sim.v1_url()), credentials());
    smile.retry.initial_backoff = Duration::from_millis(20);
    smile.retry.max_backoff = Duration::from_millis(100);
    Settings {
        grpc_addr: loopback(),
        http_addr: loopback(),
        database_url: database_url.to_owned(),
        database_limits: selfie_auth::store::PgLimits::default(),
        readiness_interval: Duration::from_millis(200),
        smile,
        callback_path: "/callbacks/smileid".into(),
        callback_window: Duration::from_secs(300),
        service: ServiceConfig {
            heartbeat_interval: Duration::from_millis(200),
            reconcile: ReconcilePolicy {
                first_delay: Duration::from_millis(300),
                max_delay: Duration::from_millis(600),
                tick: Duration::from_millis(50),
                ..ReconcilePolicy::default()
            },
            ..ServiceConfig::default()
        },
        max_message_bytes: 16 * 1024 * 1024,
        concurrency_limit: 64,
        http2_keepalive_interval: Duration::from_secs(30),
        drain_timeout: Duration::from_secs(2),
    }
}

pub async fn start_service(settings: Settings) -> TestService {
    let grpc = tokio::net::TcpListener::bind(settings.grpc_addr)
        .await
        .expect("bind grpc");
    let http = tokio::net::TcpListener::bind(settings.http_addr)
        .await
        .expect("bind http");
    let http_url = format!("http://{}", http.local_addr().expect("addr"));
    let callback_url = format!("{http_url}{}", settings.callback_path);
    let mut settings = settings;
    if settings.service.callback_url.is_none() {
        settings.service.callback_url = Some(callback_url.clone());
    }
    let database_url = settings.database_url.clone();
    let running = selfie_auth::server::start_on(settings, grpc, http)
        .await
        .expect("service starts");
    TestService {
        running,
        callback_url,
        http_url,
        database_url,
    }
}

impl TestService {
    pub async fn client(&self) -> Client {
        SelfieAuthClient::connect(format!("http://{}", self.running.grpc_addr))
            .await
            .expect("connect")
            .max_encoding_message_size(32 * 1024 * 1024)
    }

    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::new(format!("http://{}", self.running.grpc_addr))
            .expect("endpoint")
            .connect()
            .await
            .expect("connect")
    }
}

pub fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("jobs.db").display())
}

pub fn submit_request(user_id: &str, job_id: &str) -> pb::SubmitAuthenticationRequest {
    pb::SubmitAuthenticationRequest {
        user_id: user_id.into(),
        job_id: job_id.into(),
        selfie_image: jpeg(64, 64, 1).into(),
        ..Default::default()
    }
}

/// A submission the simulator answers provisionally (0822), then finally (1220) after its review delay.
pub fn provisional_request(user_id: &str, job_id: &str) -> pb::SubmitAuthenticationRequest {
    let mut request = submit_request(user_id, job_id);
    request.partner_params.insert("sandbox_result".into(), "2".into());
    request
}

/// Opens a WatchJob stream.
pub async fn watch(client: &mut Client, job_id: &str, after_sequence: u64) -> tonic::Streaming<pb::JobEvent> {
    client
        .watch_job(pb::WatchJobRequest {
            job_id: job_id.into(),
            after_sequence,
        })
        .await
        .expect("watch")
        .into_inner()
}

/// A simulator configured by `configure`, and a service on SQLite in a fresh directory.
pub async fn simulator_and_service(
    configure: impl FnOnce(&mut SimulatorConfig),
) -> (RunningSimulator, TestService, tempfile::TempDir) {
    let sim = start_simulator(configure).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(settings_for(&sim, &sqlite_url(&dir))).await;
    (sim, service, dir)
}

/// Runs `selfie-auth simulator` (the command) on a free port with `extra` arguments;
/// returns the process and the base URL it announces.
pub async fn spawn_simulator_command(extra: &[&std::ffi::OsStr]) -> (tokio::process::Child, String) {
    let mut simulator = tokio::process::Command::new(env!("CARGO_BIN_EXE_selfie-auth"))
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
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (simulator, base_url)
}

/// The `ErrorInfo.reason` of a status.
pub fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt as _;
    status
        .get_error_details()
        .error_info()
        .map(|info| info.reason.clone())
        .unwrap_or_default()
}

/// The `ErrorInfo.reason` inside a stored `google.rpc.Status` (`Job.error`).
pub fn rpc_status_reason(status: &tonic_types::pb::Status) -> String {
    use prost::Message as _;
    let status = tonic::Status::with_details(
        tonic::Code::from_i32(status.code),
        status.message.clone(),
        status.encode_to_vec().into(),
    );
    reason(&status)
}

/// Reads a stream's next message within `timeout`.
pub async fn next_event(
    stream: &mut tonic::Streaming<pb::JobEvent>,
    timeout: Duration,
) -> Option<Result<pb::JobEvent, tonic::Status>> {
    tokio::time::timeout(timeout, stream.message())
        .await
        .ok()
        .and_then(|item| item.transpose())
}

/// Reads non-heartbeat events until the stream ends or `count` were read.
pub async fn collect_events(stream: &mut tonic::Streaming<pb::JobEvent>, count: usize) -> Vec<pb::JobEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        match next_event(stream, Duration::from_secs(10)).await {
            Some(Ok(event)) if event.kind() == pb::JobEventKind::Heartbeat => continue,
            Some(Ok(event)) => events.push(event),
            _ => break,
        }
    }
    events
}

// === PostgreSQL ===

/// The PostgreSQL server tests use: `TEST_DATABASE_URL`, else the local trust-auth server.
pub fn pg_base_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh schema on the test PostgreSQL, as a `DATABASE_URL` whose connections use it.
///
/// When PostgreSQL cannot be reached the test says so loudly and is skipped
/// (`None`), except under `CI=true`, where that fails the run.
pub async fn pg_schema_url() -> Option<String> {
    use sqlx::Connection as _;
    let base = pg_base_url();
    let connected = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&base)).await;
    let mut connection = match connected {
        Ok(Ok(connection)) => connection,
        failure => {
            let reason = match failure {
                Ok(Err(error)) => error.to_string(),
                _ => "timed out".to_owned(),
            };
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("PostgreSQL at {base} is required under CI: {reason}");
            }
            eprintln!("\n*** SKIPPED: PostgreSQL at {base} is not reachable ({reason}); set TEST_DATABASE_URL ***\n");
            return None;
        }
    };
    let schema = format!("t_{}", rand::random::<u64>());
    // The schema name is generated digits, not input.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut connection)
        .await
        .expect("create schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{separator}options=-c%20search_path%3D{schema}"))
}

/// Replaces the host and port of a PostgreSQL URL (to route it through a proxy).
pub fn pg_url_via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("url");
    let (authority, path) = rest.split_once('/').expect("path");
    let user = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}{addr}/{path}")
}

/// A TCP proxy on 127.0.0.1:0 that a test can cut (dropping every connection and
/// refusing new ones) and restore, to make a server unreachable without stopping it.
pub struct CuttableProxy {
    pub addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CuttableProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (is_cut, tracked) = (cut.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_cut.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().expect("lock").push(task.abort_handle());
            }
        });
        Self { addr, cut, connections }
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().expect("lock").drain(..) {
            connection.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

// === Python tools ===

/// A virtual environment under `target/NAME` with `packages` installed from
/// PyPI on first use; `probe` is Python code that succeeds once they are there.
pub fn python_venv(name: &str, packages: &[&str], probe: &str) -> Result<std::path::PathBuf, String> {
    use std::process::Command;
    let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join(name);
    let python = venv.join("bin").join("python");
    let ready = |python: &std::path::Path| {
        python.exists()
            && Command::new(python)
                .args(["-c", probe])
                .status()
                .is_ok_and(|status| status.success())
    };
    if ready(&python) {
        return Ok(python);
    }
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .map_err(|error| format!("python3: {error}"))?;
    if !created.success() {
        return Err("python3 -m venv failed".into());
    }
    let pip = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(packages)
        .status()
        .map_err(|error| format!("pip: {error}"))?;
    if !pip.success() || !ready(&python) {
        return Err(format!("pip install {} failed", packages.join(" ")));
    }
    Ok(python)
}

/// Skips a test that needs an external tool, loudly; under `CI=true` fails instead.
pub fn skip_or_fail(what: &str, reason: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what} cannot run under CI: {reason}");
    }
    eprintln!("\n*** SKIPPED: {what}: {reason} ***\n");
}
