//! No client, identified or not, can starve another: requests take a slot only
//! once they have arrived, submissions and reads draw on pools of their own,
//! each caller keeps to its share, and every path open before identity is known
//! (connections, the HTTP/2 opening, health watches) is bounded.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use bytes::Bytes;
use selfie_auth::grpc::pb;
use selfie_auth_testkit::*;
use tokio::io::AsyncWriteExt as _;
use tonic::Code;
use tonic_types::StatusExt as _;

const GET_JOB: &str = "/selfieauth.v1.SelfieAuth/GetJob";
const SUBMIT: &str = "/selfieauth.v1.SelfieAuth/SubmitAuthentication";
const LIST_JOBS: &str = "/selfieauth.v1.SelfieAuth/ListJobs";

fn get_job(job_id: &str) -> pb::GetJobRequest {
    pb::GetJobRequest {
        job_id: job_id.into(),
        ..Default::default()
    }
}

/// The `limit` an OVERLOADED refusal names.
fn shed_by(status: &tonic::Status) -> String {
    assert_eq!(
        (status.code(), reason(status)),
        (Code::Unavailable, "OVERLOADED".to_owned()),
        "{status:?}"
    );
    assert!(status.get_error_details().retry_info().is_some(), "says when to retry");
    let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
    info.metadata.get("limit").cloned().unwrap_or_default()
}

/// Calls of `path` on their own connections that announce `declared` bytes and send ten.
async fn stall(
    addr: std::net::SocketAddr,
    path: &str,
    count: usize,
    declared: u32,
) -> Vec<(RawGrpc, ResponseFuture, SendStream<Bytes>)> {
    let mut stalled = Vec::new();
    for _ in 0..count {
        let mut raw = RawGrpc::connect(addr).await;
        let mut partial = vec![0u8];
        partial.extend_from_slice(&declared.to_be_bytes());
        partial.extend_from_slice(&[0x0A; 10]);
        // The body stays open (its stream is kept): the call is still arriving.
        let (response, stream) = raw.call(path, Bytes::from(partial), false).await;
        stalled.push((raw, response, stream));
    }
    stalled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_still_arriving_hold_no_slot() {
    let (_sim, service, _dir) = service_with(&["--concurrency-limit", "4", "--request-timeout", "4s"]).await;
    let addr = service.running.grpc_addr;
    let mut client = service.client().await;
    client
        .submit_authentication(submit_request(ENROLLED_USER, "arrive-1"))
        .await
        .expect("submit");
    // Reads and submissions that never finish arriving: four times each pool's slots.
    let mut stalled = stall(addr, GET_JOB, 16, 100).await;
    stalled.extend(stall(addr, SUBMIT, 16, 1024 * 1024).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for _ in 0..20 {
        client
            .get_job(get_job("arrive-1"))
            .await
            .expect("a well-behaved read is never refused");
    }
    let mut again = submit_request(ENROLLED_USER, "arrive-1");
    again.wait_for_result = false;
    client
        .submit_authentication(again)
        .await
        .expect("nor a well-behaved submission");
    for (_raw, response, _stream) in stalled {
        let status = raw_status(response, Duration::from_secs(10)).await.expect("a status");
        assert_eq!(
            (status.code, status.reason()),
            (Code::DeadlineExceeded as i32, "REQUEST_TIMEOUT".to_owned()),
            "a stalled request times out; it was never admitted to be shed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_openings_are_cut_off_and_one_address_cannot_take_every_connection() {
    let (_sim, service, _dir) = service_with(&[
        "--header-timeout",
        "1s",
        "--grpc-max-connections",
        "8",
        "--grpc-max-connections-per-peer",
        "4",
    ])
    .await;
    let addr = service.running.grpc_addr;
    // Eight sockets from one address, each sending a byte or half the preface.
    let mut trickling = Vec::new();
    for index in 0..8 {
        let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let opening: &[u8] = if index % 2 == 0 { b"P" } else { b"PRI * HTTP/2.0\r\n" };
        let _ = socket.write_all(opening).await;
        trickling.push(socket);
    }
    // Another address still gets in, and is served.
    let mut other = client_from(addr, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2))).await;
    other
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("served while one address holds all it may");
    let started = std::time::Instant::now();
    for socket in &mut trickling {
        assert!(
            closed_within(socket, Duration::from_secs(4)).await,
            "a connection that never finishes its opening is closed"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(4), "{:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_watches_have_a_cap_of_their_own_and_checks_always_answer() {
    let (_sim, service, _dir) = service_with(&["--max-health-watches", "3"]).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(service.channel().await);
    let watch = tonic_health::pb::HealthCheckRequest { service: String::new() };
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = health.watch(watch.clone()).await.expect("watch").into_inner();
        stream.message().await.expect("first status").expect("a status");
        open.push(stream);
    }
    let refused = match health.watch(watch.clone()).await {
        Err(status) => status,
        Ok(stream) => stream.into_inner().message().await.expect_err("over the cap"),
    };
    assert_eq!(shed_by(&refused), "health_watches");
    health.check(watch.clone()).await.expect("a check always answers");
    drop(open.pop());
    let reopened = eventually(Duration::from_secs(5), || {
        let mut health = health.clone();
        let watch = watch.clone();
        async move { health.watch(watch).await.ok() }
    })
    .await;
    assert!(reopened.is_some(), "a closed watch gives its slot back");
}

/// Callers identified by the client certificate a mesh on this host forwards.
const BEHIND_A_MESH: [&str; 4] = ["--trust-xfcc", "true", "--xfcc-trusted-peers", "127.0.0.1"];

/// The client certificate a mesh forwards for `identity`.
fn forwarded_cert(identity: &str) -> String {
    format!("URI=spiffe://cluster.local/ns/pay/sa/{identity}")
}

/// `message` as the mesh says `identity` sent it.
fn as_caller<T>(identity: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "x-forwarded-client-cert",
        forwarded_cert(identity).parse().expect("ascii"),
    );
    request
}

/// A submission by `identity`, on a connection of its own, that announces a
/// 1 MiB message and never sends it.
async fn announced_by(addr: std::net::SocketAddr, identity: &str) -> (RawGrpc, ResponseFuture, SendStream<Bytes>) {
    let mut raw = RawGrpc::connect(addr).await;
    let mut announced = vec![0u8];
    announced.extend_from_slice(&(1024u32 * 1024).to_be_bytes());
    let cert = forwarded_cert(identity);
    let (response, stream) = raw
        .call_with(
            SUBMIT,
            &[("x-forwarded-client-cert", cert.as_str())],
            Bytes::from(announced),
            false,
        )
        .await;
    (raw, response, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_keeps_its_share_of_a_saturated_replica() {
    // Uploads that never answer keep submissions, and so their slots, busy.
    let sim = start_simulator_with_hung_uploads().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = [
        &BEHIND_A_MESH[..],
        &["--concurrency-limit", "4", "--caller-concurrency-limit", "2"],
    ]
    .concat();
    let service = start_service(config_with(&sim, &sqlite_url(&dir), &flags)).await;
    let client = service.client().await;
    let submit = |identity: &'static str, job_id: &'static str| {
        let mut client = client.clone();
        async move {
            let mut request = as_caller(identity, submit_request(ENROLLED_USER, job_id));
            // Long enough that the flood holds its share while the others are refused.
            request.set_timeout(Duration::from_secs(6));
            client.submit_authentication(request).await
        }
    };
    let flood: Vec<_> = ["flood-1", "flood-2"]
        .into_iter()
        .map(|job_id| selfie_auth::task::spawn(submit("greedy", job_id)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let over = submit("greedy", "flood-3").await.expect_err("over its share");
    assert_eq!(shed_by(&over), "caller_share");
    assert!(over.message().contains("its share"), "{}", over.message());
    // A caller holding its whole share is told so before its body is read: a
    // body it never finishes sending is refused at once, not at the request timeout.
    let (_raw, response, _still_sending) = announced_by(service.running.grpc_addr, "greedy").await;
    let refused = raw_status(response, Duration::from_secs(2))
        .await
        .expect("refused before its body arrives");
    assert_eq!(refused.reason(), "OVERLOADED");
    // The other caller is admitted: its call ends as a submission still in progress, not shed.
    let honest = submit("honest", "honest-1").await.expect_err("the upload hangs");
    assert_eq!(reason(&honest), "SUBMISSION_IN_PROGRESS", "{honest:?}");
    for call in flood {
        let status = call.await.expect("join").expect_err("the upload hangs");
        assert_eq!(reason(&status), "SUBMISSION_IN_PROGRESS");
    }
    let metrics = metrics_text(&service).await;
    assert!(
        metrics.contains(r#"selfie_auth_calls_shed_total{limit="caller_share"} 2"#),
        "{metrics}"
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_over_its_rate_is_told_its_quota_and_when_to_retry() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[[grant]]\nidentities = [\"*\"]\npermissions = [\"submit\", \"get\", \"watch_job\"]\n\n\
         [[limit]]\nidentities = [\"spiffe://cluster.local/ns/pay/sa/batch\"]\n\
         requests_per_second = 0.2\nburst = 3\nrefreshes_per_second = 0.1\n",
    )
    .expect("policy");
    let flags = [
        "--trust-xfcc",
        "true",
        "--xfcc-trusted-peers",
        "127.0.0.1",
        "--policy-file",
        policy.to_str().expect("utf-8"),
        "--caller-max-open-streams",
        "2",
    ];
    let service = start_service(config_with(&sim, &sqlite_url(&dir), &flags)).await;
    let mut client = service.client().await;
    let from = |identity: &str, request: pb::GetJobRequest| {
        let mut request = tonic::Request::new(request);
        request.metadata_mut().insert(
            "x-forwarded-client-cert",
            format!("URI=spiffe://cluster.local/ns/pay/sa/{identity}")
                .parse()
                .expect("ascii"),
        );
        request
    };
    let mut job = tonic::Request::new(submit_request(ENROLLED_USER, "rated-1"));
    job.metadata_mut().insert(
        "x-forwarded-client-cert",
        "URI=spiffe://cluster.local/ns/pay/sa/batch".parse().expect("ascii"),
    );
    client.submit_authentication(job).await.expect("submit");
    let refresh = pb::GetJobRequest {
        job_id: "rated-1".into(),
        refresh: true,
        ..Default::default()
    };
    client
        .get_job(from("batch", refresh.clone()))
        .await
        .expect("a first refresh");
    let status = client
        .get_job(from("batch", refresh))
        .await
        .expect_err("refreshes are rarer");
    assert_eq!(
        (status.code(), reason(&status)),
        (Code::ResourceExhausted, "RATE_LIMITED".to_owned())
    );
    let details = status.get_error_details();
    let quota = details.quota_failure().expect("QuotaFailure");
    assert_eq!(
        quota.violations[0].subject,
        "caller:spiffe://cluster.local/ns/pay/sa/batch"
    );
    assert!(quota.violations[0].description.contains("refreshes"), "{quota:?}");
    assert!(details.retry_info().and_then(|retry| retry.retry_delay).is_some());
    // Three calls were the burst: the next is over the rate, while others are not limited.
    let status = client
        .get_job(from("batch", get_job("rated-1")))
        .await
        .expect_err("over the rate");
    assert_eq!(reason(&status), "RATE_LIMITED");
    for _ in 0..5 {
        let status = client
            .get_job(from("web", get_job("rated-1")))
            .await
            .expect_err("not its job");
        assert_eq!(reason(&status), "JOB_NOT_FOUND", "another caller is not rate limited");
    }

    // Streams: two each, whoever else watches.
    let watch = |identity: &str| {
        let mut request = tonic::Request::new(pb::WatchJobsRequest::default());
        request.metadata_mut().insert(
            "x-forwarded-client-cert",
            format!("URI=spiffe://cluster.local/ns/pay/sa/{identity}")
                .parse()
                .expect("ascii"),
        );
        request
    };
    let _first = client.watch_jobs(watch("web")).await.expect("a watch");
    let _second = client.watch_jobs(watch("web")).await.expect("a watch");
    let status = client.watch_jobs(watch("web")).await.expect_err("over its streams");
    assert_eq!(shed_by(&status), "caller_streams");
    client
        .watch_jobs(watch("mobile"))
        .await
        .expect("another caller's watch");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_connection_must_send_its_preface_within_the_header_timeout_too() {
    let ca = Authority::new("selfie-auth callers");
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = ca.issue(&["127.0.0.1"], rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let (cert_path, key_path) = (dir.path().join("server.pem"), dir.path().join("server-key.pem"));
    std::fs::write(&cert_path, cert).expect("write");
    std::fs::write(&key_path, key).expect("write");
    let sim = start_simulator(|_| {}).await;
    let flags = [
        "--grpc-tls-cert",
        cert_path.to_str().expect("utf-8"),
        "--grpc-tls-key",
        key_path.to_str().expect("utf-8"),
        "--header-timeout",
        "1s",
    ];
    let service = start_service(config_with(&sim, &sqlite_url(&dir), &flags)).await;
    // The handshake completes; then the HTTP/2 preface never comes, or only its first bytes.
    for opening in [&b""[..], b"PRI * HTTP"] {
        let mut tls = tls_handshake(service.running.grpc_addr, &ca, None)
            .await
            .expect("handshake");
        tls.write_all(opening).await.expect("write");
        tls.flush().await.expect("flush");
        // The server's own SETTINGS arrive first; then the connection must end.
        let mut buffer = [0u8; 256];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
        let closed = loop {
            match tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(&mut tls, &mut buffer)).await {
                Ok(Ok(0) | Err(_)) => break true,
                Ok(Ok(_)) => {}
                Err(_) => break false,
            }
        };
        assert!(closed, "a TLS connection without its preface is closed ({opening:?})");
    }
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_waiting_on_smile_id_do_not_hold_back_the_others() {
    // Uploads that never answer: every send waits on Smile ID, not the CPU.
    let sim = start_simulator_with_hung_uploads().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_with(&sim, &sqlite_url(&dir), &[])).await;
    let client = service.client().await;
    // Many more than the cores: nothing between admission and Smile ID keeps a
    // place for the whole of a send, so a slow Smile ID caps nothing below the
    // admission limits.
    let sends = 4 * std::thread::available_parallelism().map_or(1, std::num::NonZero::get) + 4;
    let calls: Vec<_> = (0..sends)
        .map(|index| {
            let mut client = client.clone();
            selfie_auth::task::spawn(async move {
                let mut request = tonic::Request::new(submit_request(ENROLLED_USER, &format!("hung-{index}")));
                request.set_timeout(Duration::from_secs(5));
                client.submit_authentication(request).await
            })
        })
        .collect();
    let mut reached = 0;
    for _ in 0..100 {
        reached = sim.counters().prep_uploads;
        if reached >= sends as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        reached, sends as u64,
        "every send reached Smile ID while the first ones hung"
    );
    for call in calls {
        let status = call.await.expect("join").expect_err("the upload hangs");
        assert_eq!(reason(&status), "SUBMISSION_IN_PROGRESS");
    }
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_smile_id_hangs_two_greedy_callers_leave_room_for_a_third_callers_images() {
    // Uploads that never answer: every submission sent holds its images.
    let sim = start_simulator_with_hung_uploads().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let limits = ["--max-message-bytes", "1114112", "--submission-memory-bytes", "4194304"];
    let flags = [&BEHIND_A_MESH[..], &limits].concat();
    let service = start_service(config_with(&sim, &sqlite_url(&dir), &flags)).await;
    let client = service.client().await;
    // 700-1,000 KiB of images each: four or five fit in the 4 MiB; two in a
    // caller's half while it holds alone, one in a third beside another.
    let selfie = Bytes::from(noise_jpeg(860, 7));
    assert!((700 * 1024..1000 * 1024).contains(&selfie.len()), "{}", selfie.len());
    let submit = |identity: &'static str, job_id: String, timeout: Duration| {
        let mut client = client.clone();
        let mut message = submit_request(ENROLLED_USER, &job_id);
        message.selfie_image = selfie.clone();
        async move {
            let mut request = as_caller(identity, message);
            request.set_timeout(timeout);
            client.submit_authentication(request).await
        }
    };
    let flood = |identity: &'static str| -> Vec<_> {
        (0..6)
            .map(|index| {
                selfie_auth::task::spawn(submit(identity, format!("{identity}-{index}"), Duration::from_secs(3)))
            })
            .collect()
    };
    let first = flood("greedy");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = flood("greedier");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let honest = submit("honest", "honest-1".into(), Duration::from_millis(1500))
        .await
        .expect_err("the upload hangs");
    assert_eq!(
        reason(&honest),
        "SUBMISSION_IN_PROGRESS",
        "room for its images: {honest:?}"
    );
    let mut refused = 0;
    for (calls, fit) in [(first, 2), (second, 1)] {
        let mut sent = 0;
        for call in calls {
            let status = call.await.expect("join").expect_err("the upload hangs");
            if reason(&status) == "SUBMISSION_IN_PROGRESS" {
                sent += 1;
                continue;
            }
            assert_eq!(shed_by(&status), "caller_submission_memory");
            assert!(status.message().contains("its share"), "{}", status.message());
            refused += 1;
        }
        assert_eq!(sent, fit, "a half alone, then a third beside the other");
    }
    assert_eq!(sim.counters().prep_uploads, 4, "the refused reached nothing");
    let metrics = metrics_text(&service).await;
    assert!(
        metrics.contains(&format!(
            r#"selfie_auth_calls_shed_total{{limit="caller_submission_memory"}} {refused}"#
        )),
        "{metrics}"
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_a_caller_never_reads_hold_its_own_share_and_no_one_elses() {
    let flags = [&BEHIND_A_MESH[..], &["--caller-concurrency-limit", "2"]].concat();
    let (_sim, service, _dir) = service_with(&flags).await;
    // A connection that lets the server send no DATA at all: each answer
    // stays on the server, waiting for a window the caller never opens.
    let mut stalled = RawFrames::connect_with(service.running.grpc_addr, &[(INITIAL_WINDOW_SIZE, 0)]).await;
    let identity = forwarded_cert("greedy");
    for _ in 0..2 {
        let (stream, mut frames) = stalled.open_with(LIST_JOBS, &[("x-forwarded-client-cert", &identity)]);
        frames.extend(RawFrames::last_data(stream, &grpc_frame(&[])));
        assert!(stalled.send(&frames).await);
    }
    // Refused once both calls are admitted (until then a third is served).
    let client = service.client().await;
    let over = eventually(Duration::from_secs(5), || {
        let mut client = client.clone();
        async move {
            client
                .list_jobs(as_caller("greedy", pb::ListJobsRequest::default()))
                .await
                .err()
        }
    })
    .await
    .expect("its share is held by the two answers it does not read");
    assert_eq!(shed_by(&over), "caller_share", "{over:?}");
    client
        .clone()
        .list_jobs(as_caller("honest", pb::ListJobsRequest::default()))
        .await
        .expect("another caller is served");
    // Once the unread answers go (their connection closes), the share is the caller's again.
    drop(stalled);
    let given_back = eventually(Duration::from_secs(2), || {
        let mut client = client.clone();
        async move {
            client
                .list_jobs(as_caller("greedy", pb::ListJobsRequest::default()))
                .await
                .ok()
        }
    })
    .await;
    assert!(given_back.is_some(), "the share is given back with the connection");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_stalled_bodies_hold_its_own_share_and_no_one_elses() {
    let flags = [&BEHIND_A_MESH[..], &["--caller-concurrency-limit", "2"]].concat();
    let (_sim, service, _dir) = service_with(&flags).await;
    let client = service.client().await;
    // The greedy caller starts as many submissions as its share and never sends their bodies.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        stalled.push(announced_by(service.running.grpc_addr, "greedy").await);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Its next submission waits for a place in its share, finds none, and is refused.
    let over = client
        .clone()
        .submit_authentication(as_caller("greedy", submit_request(ENROLLED_USER, "greedy-3")))
        .await
        .expect_err("its share is taken by its own stalled bodies");
    assert_eq!(shed_by(&over), "caller_share");
    // Another caller is not held back by them, nor are the greedy caller's reads.
    client
        .clone()
        .submit_authentication(as_caller("honest", submit_request(ENROLLED_USER, "honest-1")))
        .await
        .expect("another caller's submission is served");
    client
        .clone()
        .get_job(as_caller("honest", get_job("honest-1")))
        .await
        .expect("and its reads");
    let read = client
        .clone()
        .get_job(as_caller("greedy", get_job("greedy-3")))
        .await
        .expect_err("no such job");
    assert_eq!(read.code(), Code::NotFound, "a read is answered, not shed: {read:?}");
    // A call over the share waits for a place: once one stalled body goes
    // away, the waiting submission takes its place instead of being refused.
    let waiting = selfie_auth::task::spawn({
        let mut client = client.clone();
        let request = as_caller("greedy", submit_request(ENROLLED_USER, "greedy-4"));
        async move { client.submit_authentication(request).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(stalled.pop());
    waiting.await.expect("join").expect("admitted in the place given back");
    service.stop().await;
}
