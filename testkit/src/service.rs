//! The service under test: configured through the same constructor as
//! `serve`, on 127.0.0.1:0, with a client and request builders.

use std::time::Duration;

use selfie_auth::config::Config;
use selfie_auth::grpc::pb;
use selfie_auth::grpc::pb::selfie_auth_client::SelfieAuthClient;
use selfie_auth::server::RunningService;
use selfie_auth::simulator::{RunningSimulator, SimulatorConfig};
use selfie_auth::smileid::ApiKey;

use crate::images::jpeg;
use crate::simulator::{API_KEY, PARTNER_ID, start_simulator};

pub type Client = SelfieAuthClient<tonic::transport::Channel>;

/// A service on 127.0.0.1:0 talking to `sim`, with a SQLite file in `dir`.
pub struct TestService {
    pub running: RunningService,
    pub callback_url: String,
    pub http_url: String,
    pub database_url: String,
}

/// The configuration of a test service talking to `sim`, built as `serve`
/// builds its own from `flags`, with quick timings for tests.
pub fn config_for(sim: &RunningSimulator, database_url: &str) -> Config {
    config_with(sim, database_url, &[])
}

/// [`config_for`] with more `serve` flags.
pub fn config_with(sim: &RunningSimulator, database_url: &str, flags: &[&str]) -> Config {
    let base_url = sim.v1_url();
    let mut args = vec![
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
        "--database-url",
        database_url,
        "--partner-id",
        PARTNER_ID,
        "--smileid-base-url",
        &base_url,
        "--heartbeat-interval",
        "200ms",
        "--reconcile-after",
        "300ms",
        "--reconcile-max-interval",
        "600ms",
        "--concurrency-limit",
        "64",
        "--drain-timeout",
        "2s",
        "--shutdown-delay",
        "0s",
    ];
    // Tests that are not about identities call as anyone.
    let identified = flags.iter().any(|flag| {
        [
            "--trust-xfcc",
            "--insecure-no-auth",
            "--grpc-client-ca",
            "--jwt-jwks-file",
        ]
        .contains(flag)
    });
    if !identified {
        args.extend_from_slice(&["--insecure-no-auth", "true"]);
    }
    args.extend_from_slice(flags);
    let mut config = Config::parse_from(args, Some(ApiKey::new(API_KEY))).expect("a valid test configuration");
    // Internals no operator sets, quickened for tests.
    config.readiness_interval = Duration::from_millis(200);
    config.service.reconcile.tick = Duration::from_millis(50);
    config.smile.retry.initial_backoff = Duration::from_millis(20);
    config.smile.retry.max_backoff = Duration::from_millis(100);
    config
}

pub async fn start_service(config: Config) -> TestService {
    let grpc = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .expect("bind grpc");
    let http = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .expect("bind http");
    let http_url = format!("http://{}", http.local_addr().expect("addr"));
    let callback_url = format!("{http_url}{}", config.callback_path);
    let mut config = config;
    if config.service.callback_url.is_none() {
        config.service.callback_url = Some(callback_url.clone());
    }
    let database_url = config.database_url.clone();
    let running = selfie_auth::server::start_on(config, grpc, http)
        .await
        .expect("service starts");
    tokio::time::timeout(Duration::from_secs(30), running.ready())
        .await
        .expect("the service turns ready");
    TestService {
        running,
        callback_url,
        http_url,
        database_url,
    }
}

impl TestService {
    /// Stops the service the way `serve` stops on SIGTERM.
    pub async fn stop(self) {
        self.running.shutdown().await;
    }

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

/// GetJob of `job_id`, as the client's caller sees it.
pub async fn get_job(client: &mut Client, job_id: &str) -> Result<pb::Job, tonic::Status> {
    client
        .get_job(pb::GetJobRequest {
            job_id: job_id.to_owned(),
            ..Default::default()
        })
        .await
        .map(tonic::Response::into_inner)
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

/// An enrolment of `user_id` with one selfie.
pub fn enroll_request(user_id: &str, job_id: &str) -> pb::EnrollUserRequest {
    pb::EnrollUserRequest {
        user_id: user_id.into(),
        job_id: job_id.into(),
        selfie_image: jpeg(64, 64, 2).into(),
        ..Default::default()
    }
}

/// A submission the simulator answers provisionally (0822), then finally (1220) after its review delay.
pub fn provisional_request(user_id: &str, job_id: &str) -> pb::SubmitAuthenticationRequest {
    let mut request = submit_request(user_id, job_id);
    request.partner_params.insert("sandbox_result".into(), "2".into());
    request
}

/// The service's `/metrics`, as text.
pub async fn metrics_text(service: &TestService) -> String {
    reqwest::get(format!("{}/metrics", service.http_url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// The sum of every series of metric `name` (whatever its labels) on the
/// service's `/metrics`; 0 when it has none.
pub async fn metric_total(service: &TestService, name: &str) -> u64 {
    metrics_text(service)
        .await
        .lines()
        .filter_map(|line| line.strip_prefix(name))
        .filter(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
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

/// A simulator, and a service with more `serve` flags on SQLite in a fresh directory.
pub async fn service_with(flags: &[&str]) -> (RunningSimulator, TestService, tempfile::TempDir) {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_with(&sim, &sqlite_url(&dir), flags)).await;
    (sim, service, dir)
}

/// A simulator configured by `configure`, and a service on SQLite in a fresh directory.
pub async fn simulator_and_service(
    configure: impl FnOnce(&mut SimulatorConfig),
) -> (RunningSimulator, TestService, tempfile::TempDir) {
    let sim = start_simulator(configure).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_for(&sim, &sqlite_url(&dir))).await;
    (sim, service, dir)
}
