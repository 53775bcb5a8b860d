//! Load benchmark on loopback: the service (SQLite in a temporary directory) and
//! the simulator in one process, driven by a gRPC client with N calls in flight.
//!
//!     cargo run --release --example bench -- [JOBS] [CONCURRENCY]
//!
//! Measures SubmitAuthentication (a 640x640 JPEG selfie, the size Smile ID's
//! own SDKs capture, through the whole Smile ID flow) and GetJob, and reports
//! the peak resident memory of the process (service and simulator together).

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use selfie_auth::config::Config;
use selfie_auth::grpc::pb;
use selfie_auth::grpc::pb::selfie_auth_client::SelfieAuthClient;
use selfie_auth::simulator::{self, SimulatorConfig};
use selfie_auth::smileid::ApiKey;
use tokio::sync::Semaphore;

const PARTNER: &str = "1234";
const KEY: &str = "bench-key";

fn selfie() -> Vec<u8> {
    let image = image::RgbImage::from_fn(640, 640, |x, y| {
        image::Rgb([(x % 251) as u8, (y % 241) as u8, ((x * y) % 239) as u8])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(image)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("jpeg");
    out.into_inner()
}

fn report(name: &str, mut latencies: Vec<Duration>, elapsed: Duration) {
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<22} {:>6} calls  {:>8.0} calls/s  p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
        latencies.len(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
    );
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn run_phase<F, Fut>(name: &str, jobs: usize, concurrency: usize, call: F)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let permits = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(jobs);
    for index in 0..jobs {
        let permit = permits.clone().acquire_owned().await.expect("semaphore");
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let begun = Instant::now();
            call(index).await;
            drop(permit);
            begun.elapsed()
        }));
        if (index + 1) % 500 == 0 {
            eprintln!("  {name}: {} of {jobs} started", index + 1);
        }
    }
    let mut latencies = Vec::with_capacity(jobs);
    for task in tasks {
        latencies.push(task.await.expect("call"));
    }
    report(name, latencies, started.elapsed());
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args.next().map(|value| value.parse()).transpose()?.unwrap_or(2000);
    let concurrency: usize = args.next().map(|value| value.parse()).transpose()?.unwrap_or(32);
    let loopback = "127.0.0.1:0".parse()?;

    let mut sim_config = SimulatorConfig::new(PARTNER, ApiKey::new(KEY));
    sim_config.enrolled_users = vec!["bench-user".into()];
    sim_config.max_jobs = jobs + 10;
    let sim = simulator::start(sim_config, loopback).await?;
    let dir = tempfile::tempdir()?;
    let grpc = tokio::net::TcpListener::bind(loopback).await?;
    let http = tokio::net::TcpListener::bind(loopback).await?;
    let callback_url = format!("http://{}/callbacks/smileid", http.local_addr()?);
    let database_url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let base_url = sim.v1_url();
    let config = Config::parse_from(
        [
            "--database-url",
            &database_url,
            "--partner-id",
            PARTNER,
            "--smileid-base-url",
            &base_url,
            "--callback-url",
            &callback_url,
            "--concurrency-limit",
            "4096",
        ],
        Some(ApiKey::new(KEY)),
    )?;
    let service = selfie_auth::server::start_on(config, grpc, http).await?;
    service.ready().await;
    let client = SelfieAuthClient::connect(format!("http://{}", service.grpc_addr)).await?;
    let image = bytes::Bytes::from(selfie());
    println!(
        "selfie-auth bench: {jobs} jobs, {concurrency} in flight, selfie {} KiB, SQLite, loopback",
        image.len() / 1024
    );

    let submit_client = client.clone();
    run_phase("SubmitAuthentication", jobs, concurrency, move |index| {
        let mut client = submit_client.clone();
        let image = image.clone();
        async move {
            let request = pb::SubmitAuthenticationRequest {
                user_id: "bench-user".into(),
                job_id: format!("bench-{index}"),
                selfie_image: image,
                ..Default::default()
            };
            client.submit_authentication(request).await.expect("submit");
        }
    })
    .await;
    let get_client = client.clone();
    run_phase("GetJob", jobs, concurrency, move |index| {
        let mut client = get_client.clone();
        async move {
            let request = pb::GetJobRequest {
                job_id: format!("bench-{}", index),
                ..Default::default()
            };
            client.get_job(request).await.expect("get");
        }
    })
    .await;
    if let Some(peak) = peak_rss_mib() {
        println!("peak resident memory   {peak:.0} MiB (service and simulator, one process)");
    }
    service.shutdown().await;
    sim.shutdown().await;
    Ok(())
}
