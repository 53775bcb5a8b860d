//! Clients that misbehave, on purpose: every resource a caller controls is
//! bounded, the misbehaving caller gets a precise error, and other callers
//! are not affected.

use std::time::{Duration, Instant};

use bytes::Bytes;
use selfie_auth::grpc::pb;
use selfie_auth_testkit::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic::Code;

const GET_JOB: &str = "/selfieauth.v1.SelfieAuth/GetJob";

fn get_job(job_id: &str) -> pb::GetJobRequest {
    pb::GetJobRequest {
        job_id: job_id.into(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_limit_is_refused_by_its_declared_size() {
    let (_sim, service, _dir) = service_with(&[]).await;
    let mut raw = RawGrpc::connect(service.running.grpc_addr).await;
    // Only a frame header declaring 8 MiB, against GetJob's 4 MiB: refused before the body comes.
    let mut header = vec![0u8];
    header.extend_from_slice(&(8u32 * 1024 * 1024).to_be_bytes());
    let (response, _stream) = raw.call(GET_JOB, Bytes::from(header), false).await;
    let status = raw_status(response, Duration::from_secs(5)).await.expect("a status");
    assert_eq!(
        (status.code, status.reason()),
        (Code::ResourceExhausted as i32, "MESSAGE_TOO_LARGE".into())
    );

    // The same through a real client, over by far more than a KiB.
    let mut client = service.client().await;
    let error = client
        .get_job(get_job(&"j".repeat(4 * 1024 * 1024 + 4096)))
        .await
        .expect_err("too large");
    assert_eq!(
        (error.code(), reason(&error)),
        (Code::ResourceExhausted, "MESSAGE_TOO_LARGE".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_is_not_protobuf_is_the_callers_error() {
    let (_sim, service, _dir) = service_with(&[]).await;
    let mut raw = RawGrpc::connect(service.running.grpc_addr).await;
    let (response, _stream) = raw.call(GET_JOB, grpc_frame(&[0xFF, 0xFF, 0xFF, 0xFF]), true).await;
    let status = raw_status(response, Duration::from_secs(5)).await.expect("a status");
    assert_eq!(
        (status.code, status.reason()),
        (Code::InvalidArgument as i32, "INVALID_MESSAGE".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_bodies_give_their_slots_back() {
    let (_sim, service, _dir) = service_with(&["--concurrency-limit", "4", "--request-timeout", "1s"]).await;
    let mut client = service.client().await;
    client
        .submit_authentication(submit_request(ENROLLED_USER, "stall-1"))
        .await
        .expect("submit");
    // Eight calls that promise 100 bytes and send 10, then nothing: twice the concurrency limit.
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut raw = RawGrpc::connect(service.running.grpc_addr).await;
        let mut partial = vec![0u8];
        partial.extend_from_slice(&100u32.to_be_bytes());
        partial.extend_from_slice(&[0x0A; 10]);
        let (response, stream) = raw.call(GET_JOB, Bytes::from(partial), false).await;
        stalled.push((raw, response, stream));
    }
    let started = Instant::now();
    for (_raw, response, _stream) in stalled {
        let status = raw_status(response, Duration::from_secs(5)).await.expect("a status");
        // Calls over the limit are shed at once; the rest time out.
        let expected = [
            (Code::DeadlineExceeded as i32, "REQUEST_TIMEOUT".to_owned()),
            (Code::Unavailable as i32, "OVERLOADED".to_owned()),
        ];
        assert!(expected.contains(&(status.code, status.reason())), "{status:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    let job = client
        .get_job(get_job("stall-1"))
        .await
        .expect("answered after the stall");
    assert_eq!(job.into_inner().job_id, "stall-1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_may_open_only_so_many_streams() {
    let (_sim, service, _dir) = service_with(&["--max-concurrent-streams", "32"]).await;
    let raw = RawGrpc::connect(service.running.grpc_addr).await;
    assert_eq!(raw.max_concurrent_streams().await, 32);
}

/// Sends `attempts` of what `each` writes for a new stream, in batches, until
/// the server closes the connection; what the server sent, once it ended the
/// connection (`None` if it had not within 5 s).
async fn flood_of_streams(
    service: &TestService,
    attempts: usize,
    each: impl Fn(&mut RawFrames) -> Vec<u8>,
) -> Option<Heard> {
    let mut raw = RawFrames::connect(service.running.grpc_addr).await;
    for _ in 0..attempts / 100 {
        let batch: Vec<u8> = (0..100).flat_map(|_| each(&mut raw)).collect();
        if !raw.send(&batch).await {
            break;
        }
    }
    raw.heard(Duration::from_secs(5)).await
}

/// A client still served after the flood: the server kept nothing of it.
async fn others_are_still_served(service: &TestService) {
    let missing = service
        .client()
        .await
        .get_job(get_job("after-the-flood"))
        .await
        .expect_err("no such job");
    assert_eq!(missing.code(), Code::NotFound, "{missing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_reset_as_fast_as_they_are_opened_end_the_connection() {
    // HTTP/2 rapid reset: a stream opened and cancelled at once never counts
    // against the streams a connection may have open.
    let (_sim, service, _dir) = service_with(&[]).await;
    let heard = flood_of_streams(&service, 10_000, |raw| {
        let (stream, mut frames) = raw.open(GET_JOB);
        frames.extend(RawFrames::cancel(stream));
        frames
    })
    .await
    .expect("the server ends the connection");
    assert_eq!(
        heard.goaway,
        Some(ENHANCE_YOUR_CALM),
        "10,000 streams opened and cancelled"
    );
    others_are_still_served(&service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_server_is_made_to_reset_end_the_connection() {
    // A frame the server must answer by resetting the stream itself (here a
    // window past its maximum) frees the stream as a client's reset would,
    // without counting as one.
    let (_sim, service, _dir) = service_with(&[]).await;
    let heard = flood_of_streams(&service, 10_000, |raw| {
        let (stream, mut frames) = raw.open(GET_JOB);
        frames.extend(RawFrames::overflow_window(stream));
        frames
    })
    .await
    .expect("the server ends the connection");
    assert!(
        (100..=1024).contains(&heard.resets),
        "the server resets the streams, up to its bound: {heard:?}"
    );
    assert_eq!(heard.goaway, Some(ENHANCE_YOUR_CALM), "{heard:?}");
    others_are_still_served(&service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_that_never_ends_ends_the_connection() {
    let (_sim, service, _dir) = service_with(&[]).await;
    let mut raw = RawFrames::connect(service.running.grpc_addr).await;
    let (stream, opening) = raw.open_without_end(GET_JOB);
    assert!(raw.send(&opening).await);
    // 64 MiB of CONTINUATION at most, 16 KiB a frame; the server stops reading long before.
    let mut sent = 0usize;
    let flooding = async {
        while sent < 64 * 1024 * 1024 && raw.send(&RawFrames::continuation(stream, 16 * 1024)).await {
            sent += 16 * 1024;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), flooding)
        .await
        .expect("the server closes the connection rather than stop reading it");
    assert!(sent < 64 * 1024 * 1024, "the server read 64 MiB of one header block");
    raw.heard(Duration::from_secs(5))
        .await
        .expect("the server ends the connection");
    others_are_still_served(&service).await;
}

/// Writes `requests` (at most 1,000 times) and never reads what comes back:
/// true once the server has closed the connection, within 15 s.
async fn asks_and_never_reads(addr: std::net::SocketAddr, opening: &[u8], requests: &[u8]) -> bool {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let flooding = async {
        tcp.write_all(opening).await?;
        for _ in 0..1000 {
            tcp.write_all(requests).await?;
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(15), flooding)
        .await
        .expect("the server closes the connection rather than leave it stuck")
        .is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_the_answers_is_cut_off_on_both_ports() {
    let stall = [
        "--http2-keepalive-interval",
        "500ms",
        "--http2-keepalive-timeout",
        "500ms",
        "--idle-timeout",
        "500ms",
    ];
    let (_sim, service, _dir) = service_with(&stall).await;
    // gRPC: PINGs, each of which the server must answer: 17 MB of them at most.
    let pings: Vec<u8> = (0..1000).flat_map(|_| RawFrames::ping()).collect();
    assert!(
        asks_and_never_reads(service.running.grpc_addr, &RawFrames::opening(), &pings).await,
        "the server read 17 MB of PINGs it could not answer"
    );
    // HTTP: health checks, pipelined, 34 MB of them at most.
    let healthz: Vec<u8> = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
    assert!(
        asks_and_never_reads(service.running.http_addr, &[], &healthz).await,
        "the server read every health check it could not answer"
    );
    others_are_still_served(&service).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_on_both_ports() {
    let (_sim, service, _dir) = service_with(&["--header-timeout", "500ms", "--idle-timeout", "500ms"]).await;
    let mut grpc = tokio::net::TcpStream::connect(service.running.grpc_addr)
        .await
        .expect("connect");
    assert!(
        closed_within(&mut grpc, Duration::from_secs(3)).await,
        "no HTTP/2 preface, no connection"
    );
    let mut http = tokio::net::TcpStream::connect(service.running.http_addr)
        .await
        .expect("connect");
    assert!(
        closed_within(&mut http, Duration::from_secs(3)).await,
        "an idle connection is closed"
    );
    // A request whose headers never end is cut off by the header timeout.
    let mut slow = tokio::net::TcpStream::connect(service.running.http_addr)
        .await
        .expect("connect");
    slow.write_all(b"POST /callbacks/smileid HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    assert!(closed_within(&mut slow, Duration::from_secs(3)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_callback_port_does_not_keep_others_out() {
    let (_sim, service, _dir) = service_with(&[
        "--header-timeout",
        "1s",
        "--http-max-connections",
        "100",
        "--idle-timeout",
        "1s",
    ])
    .await;
    let addr = service.running.http_addr;
    let mut slow = Vec::new();
    for _ in 0..300 {
        let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
            continue;
        };
        let _ = stream
            .write_all(b"POST /callbacks/smileid HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await;
        slow.push(stream);
    }
    // Over the cap, new connections are closed on arrival; within the header
    // timeout the slow ones are gone and a real client gets in.
    let http = reqwest::Client::new();
    let healthy = eventually(Duration::from_secs(5), || {
        let http = http.clone();
        async move {
            let response = http.get(format!("http://{addr}/healthz")).send().await.ok()?;
            response.status().is_success().then_some(())
        }
    })
    .await;
    assert!(
        healthy.is_some(),
        "/healthz answered once the slow clients were cut off"
    );
    let mut closed = 0;
    for stream in &mut slow {
        if closed_within(stream, Duration::from_millis(100)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, slow.len(), "every slow connection was closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_body_that_never_ends_times_out() {
    let (_sim, service, _dir) = service_with(&["--request-timeout", "500ms"]).await;
    let mut stream = tokio::net::TcpStream::connect(service.running.http_addr)
        .await
        .expect("connect");
    stream
        .write_all(b"POST /callbacks/smileid HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"Result")
        .await
        .expect("write");
    let mut answer = vec![0u8; 512];
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut answer))
        .await
        .expect("answered in time")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // The rest of the body would never be read: the connection ends with the answer.
    assert!(
        answer.to_ascii_lowercase().contains("\r\nconnection: close\r\n"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_never_echo_input_in_bulk() {
    let (_sim, service, _dir) = service_with(&[]).await;
    let mut client = service.client().await;
    let mut many = submit_request(ENROLLED_USER, "echo-1");
    for index in 0..300 {
        many.partner_params.insert(format!("bad key {index}"), "v".into());
    }
    let mut huge = submit_request(ENROLLED_USER, "echo-2");
    huge.partner_params.insert("k".repeat(1024 * 1024), "v".into());
    for request in [many, huge] {
        let error = client.submit_authentication(request).await.expect_err("invalid");
        assert_eq!(
            (error.code(), reason(&error)),
            (Code::InvalidArgument, "INVALID_FIELD".into())
        );
        let size = error.details().len() + error.message().len();
        assert!(size < 4096, "{size} bytes of error for a bad request");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_positions_are_checked_and_heartbeats_carry_one() {
    let (_sim, service, _dir) = service_with(&[]).await;
    let mut client = service.client().await;
    client
        .submit_authentication(submit_request(ENROLLED_USER, "pos-1"))
        .await
        .expect("submit");
    let error = client
        .watch_job(pb::WatchJobRequest {
            job_id: "pos-1".into(),
            after_sequence: 1 << 63,
        })
        .await
        .expect_err("past the end");
    assert_eq!(
        (error.code(), reason(&error)),
        (Code::InvalidArgument, "INVALID_FIELD".into())
    );

    for never_issued in ["v1.+0", "v1.00", "v1.7fffffffffffffff"] {
        let error = client
            .watch_jobs(pb::WatchJobsRequest {
                resume_token: never_issued.into(),
                ..Default::default()
            })
            .await
            .expect_err("not issued");
        assert_eq!(reason(&error), "INVALID_RESUME_TOKEN", "{never_issued}");
    }

    // A live-only stream's heartbeat says where it stands; resuming there replays nothing before it.
    let final_result = eventually(Duration::from_secs(5), || {
        let mut client = client.clone();
        async move {
            let job = client.get_job(get_job("pos-1")).await.ok()?.into_inner();
            (job.state() == pb::JobState::Completed).then_some(())
        }
    })
    .await;
    assert!(final_result.is_some(), "pos-1 is final before the live stream opens");
    let mut live = client
        .watch_jobs(pb::WatchJobsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    let heartbeat = loop {
        let event = next_event(&mut live, Duration::from_secs(5))
            .await
            .expect("an event")
            .expect("ok");
        if event.kind() == pb::JobEventKind::Heartbeat {
            break event;
        }
    };
    assert!(!heartbeat.resume_token.is_empty(), "{heartbeat:?}");
    client
        .submit_authentication(submit_request(ENROLLED_USER, "pos-2"))
        .await
        .expect("submit");
    let mut resumed = client
        .watch_jobs(pb::WatchJobsRequest {
            resume_token: heartbeat.resume_token,
            ..Default::default()
        })
        .await
        .expect("resume")
        .into_inner();
    let events = collect_events(&mut resumed, 1).await;
    assert_eq!(
        events
            .first()
            .and_then(|event| event.job.as_ref())
            .map(|job| job.job_id.as_str()),
        Some("pos-2")
    );
}

/// A PNG of `side` x `side` black RGB pixels: tiny on the wire, `side² × 3` bytes decoded.
fn png_bomb(side: u32) -> Vec<u8> {
    use std::io::Write as _;
    fn chunk(out: &mut Vec<u8>, kind: [u8; 4], data: &[u8]) {
        out.extend_from_slice(&u32::try_from(data.len()).expect("small").to_be_bytes());
        out.extend_from_slice(&kind);
        out.extend_from_slice(data);
        let mut crc = flate2::Crc::new();
        crc.update(&kind);
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_be_bytes());
    }
    let mut header = Vec::new();
    header.extend_from_slice(&side.to_be_bytes());
    header.extend_from_slice(&side.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    let row = vec![0u8; 1 + side as usize * 3];
    let mut deflate = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
    for _ in 0..side {
        deflate.write_all(&row).expect("deflate");
    }
    let data = deflate.finish().expect("finish");
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, *b"IHDR", &header);
    chunk(&mut png, *b"IDAT", &data);
    chunk(&mut png, *b"IEND", &[]);
    png
}

/// Decode memory of the serve process below (the chart's default).
const DECODE_BUDGET: &str = "134217728";
/// What the process may reach with bombs arriving at once: the decode budget,
/// the bombs themselves, and the process around them.
const BOMB_MEMORY_BOUND: u64 = 256 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_bombs_stay_within_the_decode_budget() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let database_url = sqlite_url(&dir);
    let served = ServeProcess::start(
        env!("CARGO_BIN_EXE_selfie-auth"),
        &sim.v1_url(),
        &[
            ("DATABASE_URL", &database_url),
            ("SELFIE_AUTH_DECODE_MEMORY_BYTES", DECODE_BUDGET),
        ],
    )
    .await;
    // 4096 x 4096, the largest allowed: 48 MiB of pixels and 64 MiB to convert, from 0.5 MB.
    let bomb = bytes::Bytes::from(png_bomb(4096));
    let client = served.client().await;
    let bombs: Vec<_> = (0..4)
        .map(|index| {
            let mut client = client.clone();
            let mut request = submit_request(ENROLLED_USER, &format!("bomb-{index}"));
            request.selfie_image = bomb.clone();
            selfie_auth::task::spawn(async move { client.submit_authentication(request).await })
        })
        .collect();
    for bomb in bombs {
        match bomb.await.expect("join") {
            Ok(_) => {}
            // Waiting for its share of decode memory too long is a retryable refusal.
            Err(status) => assert_eq!(
                (status.code(), reason(&status).as_str()),
                (Code::Unavailable, "OVERLOADED")
            ),
        }
    }
    let peak = served.peak_memory_bytes().expect("VmHWM");
    assert!(
        peak < BOMB_MEMORY_BOUND,
        "peak resident memory {} MiB with 4 bombs at once",
        peak / (1024 * 1024)
    );

    // Bombs whose headers alone give them away are refused before any allocation.
    let mut client = client.clone();
    let mut pixel_flood = submit_request(ENROLLED_USER, "bomb-flood");
    pixel_flood.selfie_image = png_bomb_header(20_000).into();
    let mut huge_jpeg = submit_request(ENROLLED_USER, "bomb-jpeg");
    huge_jpeg.selfie_image = jpeg_header(65_000).into();
    for request in [pixel_flood, huge_jpeg] {
        let error = client.submit_authentication(request).await.expect_err("refused");
        assert_eq!(
            (error.code(), reason(&error)),
            (Code::InvalidArgument, "INVALID_IMAGE".into())
        );
    }
    served.kill().await;
}

/// A PNG whose header claims `side` x `side` pixels, with almost no data behind it.
fn png_bomb_header(side: u32) -> Vec<u8> {
    let mut png = png_bomb(16);
    png[16..20].copy_from_slice(&side.to_be_bytes());
    png[20..24].copy_from_slice(&side.to_be_bytes());
    // The header's CRC no longer matches; a decoder must refuse it either way.
    png
}

/// A JPEG that declares `side` x `side` pixels in its frame header, and ends.
fn jpeg_header(side: u16) -> Vec<u8> {
    let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 0x08];
    jpeg.extend_from_slice(&side.to_be_bytes());
    jpeg.extend_from_slice(&side.to_be_bytes());
    jpeg.extend_from_slice(&[0x03, 0x01, 0x22, 0x00, 0x02, 0x11, 0x01, 0x03, 0x11, 0x01]);
    jpeg.extend_from_slice(&[0xFF, 0xD9]);
    jpeg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callback_bodies_share_a_memory_budget() {
    let (_sim, service, _dir) = service_with(&["--request-timeout", "2s"]).await;
    let addr = service.running.http_addr;
    let post = |body: Vec<u8>| {
        reqwest::Client::new()
            .post(format!("http://{addr}/callbacks/smileid"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // Sixteen requests declaring 2 MiB each and sending a byte hold no memory at all.
    let mut stalled = Vec::new();
    for _ in 0..16 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"POST /callbacks/smileid HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2097152\r\n\r\n{")
            .await
            .expect("write");
        stalled.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (timestamp, signature) = credentials().sign_now();
    let genuine = serde_json::json!({
        "ResultCode": "0820", "SmileJobID": "1", "PartnerParams": {"job_id": "nobody"},
        "timestamp": timestamp, "signature": signature.as_str(),
    });
    let answered = post(genuine.to_string().into_bytes()).await.expect("answered");
    assert_eq!(
        answered.status(),
        200,
        "header-only requests keep no genuine callback out"
    );
    drop(stalled);

    // Sixteen bodies that really arrived but for their last byte do take the 32 MiB.
    let mut holding = Vec::new();
    for _ in 0..16 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(b"POST /callbacks/smileid HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2097152\r\n\r\n")
            .await
            .expect("write");
        stream.write_all(&vec![b' '; 2 * 1024 * 1024 - 1]).await.expect("write");
        holding.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let one_more = post(vec![b' '; 2 * 1024 * 1024]).await.expect("answered");
    assert_eq!(one_more.status(), 503, "no room for another 2 MiB");
    let metrics = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("selfie_auth_callbacks_total{outcome=\"busy\"} 1"),
        "{metrics}"
    );
}
