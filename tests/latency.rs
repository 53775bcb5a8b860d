//! No sequential call waits on Nagle's algorithm: each answer leaves at once.
//!
//! Not a timing target (the benchmark measures those): a stall is ~40 ms, the
//! margin below is wide enough for a loaded CI machine and still catches it.

use std::time::{Duration, Instant};

use selfie_auth::grpc::pb;
use selfie_auth_testkit::*;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Enough calls that Linux leaves its quick-ACK start and delays ACKs, as it does
/// on a connection that lives for long.
const CALLS: usize = 100;
/// Far below the ~40 ms of a delayed-ACK stall, far above a loopback round trip.
const STALL: Duration = Duration::from_millis(20);

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

#[tokio::test]
async fn sequential_grpc_calls_do_not_stall() {
    let (_sim, service, _dir) = simulator_and_service(|_| {}).await;
    let mut client = service.client().await;
    client
        .submit_authentication(submit_request(ENROLLED_USER, "latency-1"))
        .await
        .expect("submit");
    let request = pb::GetJobRequest {
        job_id: "latency-1".into(),
        ..Default::default()
    };
    client.get_job(request.clone()).await.expect("warm up");
    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let started = Instant::now();
        client.get_job(request.clone()).await.expect("get");
        samples.push(started.elapsed());
    }
    let get_job = median(samples);

    let mut health = HealthClient::new(service.channel().await);
    let mut samples = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let started = Instant::now();
        health.check(HealthCheckRequest::default()).await.expect("health");
        samples.push(started.elapsed());
    }
    let check = median(samples);
    assert!(
        get_job < STALL && check < STALL,
        "sequential calls stall: GetJob median {get_job:?}, Health/Check median {check:?}"
    );
}
