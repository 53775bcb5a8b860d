//! The wire settings that keep calls quick. No sequential call waits on
//! Nagle's algorithm: each answer leaves at once. A submission's images may
//! arrive in large HTTP/2 frames, so receiving them wakes its thread a few
//! times, not once every 16 KiB.
//!
//! Not a timing target (the benchmark measures those): a stall is ~40 ms, the
//! margin below is wide enough for a loaded CI machine and still catches it.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use selfie_auth::grpc::pb;
use selfie_auth_testkit::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
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

/// HTTP/2's SETTINGS frame type, its ACK flag, and the setting naming the
/// largest frame payload its sender accepts (RFC 9113 6.5).
const SETTINGS: u8 = 0x4;
const ACK: u8 = 0x1;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;

/// The settings the server at `addr` sends as a connection opens.
async fn server_settings(addr: std::net::SocketAddr) -> HashMap<u16, u32> {
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // An empty SETTINGS frame: length 0, type, no flags, stream 0.
    opening.extend_from_slice(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]);
    socket.write_all(&opening).await.expect("preface");
    let read = async {
        loop {
            let mut header = [0u8; 9];
            socket.read_exact(&mut header).await.expect("a frame header");
            let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; length];
            socket.read_exact(&mut payload).await.expect("a frame payload");
            if header[3] == SETTINGS && header[4] & ACK == 0 {
                return payload
                    .chunks_exact(6)
                    .map(|entry| {
                        let id = u16::from_be_bytes([entry[0], entry[1]]);
                        (id, u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]))
                    })
                    .collect();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the server's SETTINGS within 10 s")
}

#[tokio::test]
async fn a_submissions_images_may_arrive_in_frames_of_256_kib() {
    let (_sim, service, _dir) = simulator_and_service(|_| {}).await;
    let settings = server_settings(service.running.grpc_addr).await;
    // Without the setting a client may send frames of 16 KiB at most.
    assert_eq!(
        settings.get(&SETTINGS_MAX_FRAME_SIZE),
        Some(&(256 * 1024)),
        "{settings:?}"
    );
}
