//! Identity and results as an attacker inside the network tries them: a forged
//! mesh header, a verified certificate with a header on top, crafted
//! certificate names, users claimed by another caller, replayed and oversized
//! callbacks, and probes for jobs and positions a caller may not see.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use selfie_auth::grpc::pb;
use selfie_auth::simulator::CallbackMode;
use selfie_auth_testkit::*;
use serde_json::json;
use tonic::Code;

const ALICE: &str = "spiffe://cluster.local/ns/payments/sa/alice";
const BOB: &str = "spiffe://cluster.local/ns/payments/sa/bob";
const CONSOLE: &str = "spiffe://cluster.local/ns/support/sa/console";
const GATEWAY: &str = "spiffe://cluster.local/ns/mesh/sa/gateway";
/// Where an Istio sidecar's inbound connections come from.
const SIDECAR: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6));

fn with_xfcc<T>(lines: &[String], message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    for line in lines {
        request
            .metadata_mut()
            .append("x-forwarded-client-cert", line.parse().expect("ascii"));
    }
    request
}

/// `message` as the sidecar forwards it for `identity`.
fn from<T>(identity: &str, message: T) -> tonic::Request<T> {
    with_xfcc(
        &[format!("By=spiffe://cluster.local/ns/selfie/sa/server;URI={identity}")],
        message,
    )
}

fn code_and_reason(status: &tonic::Status) -> (Code, String) {
    (status.code(), reason(status))
}

async fn metrics(service: &TestService) -> String {
    reqwest::get(format!("{}/metrics", service.http_url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

async fn creator(client: &mut Client, request: tonic::Request<pb::SubmitAuthenticationRequest>) -> String {
    client
        .submit_authentication(request)
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("job")
        .creator
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_identity_counts_only_from_the_trusted_proxy() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = ["--trust-xfcc", "true", "--xfcc-trusted-peers", "127.0.0.6/32"];
    let service = start_service(config_with(&sim, &sqlite_url(&dir), &flags)).await;

    // kubectl port-forward, a process in the pod, or any other peer: not the sidecar.
    let mut stranger = service.client().await;
    let status = stranger
        .submit_authentication(from(CONSOLE, submit_request(ENROLLED_USER, "forged-1")))
        .await
        .expect_err("a header from a peer that is not the proxy");
    assert_eq!(
        code_and_reason(&status),
        (Code::Unauthenticated, "FORWARDED_IDENTITY_UNTRUSTED".to_owned())
    );
    assert!(status.message().contains("trusted mesh proxy"), "{}", status.message());
    let listed = stranger
        .list_jobs(from(CONSOLE, pb::ListJobsRequest::default()))
        .await
        .expect_err("nothing is listed for a forged identity");
    assert_eq!(listed.code(), Code::Unauthenticated);
    assert!(
        metrics(&service)
            .await
            .contains("selfie_auth_forwarded_identities_refused_total 2"),
        "refusals are counted"
    );

    // The sidecar's element is the last one, on whichever header line it arrives.
    let mut sidecar = client_from(service.running.grpc_addr, SIDECAR).await;
    let injected = with_xfcc(
        &[
            format!("URI={CONSOLE}"),
            format!("By=spiffe://cluster.local/ns/selfie/sa/server;URI={ALICE}"),
        ],
        submit_request(ENROLLED_USER, "mesh-1"),
    );
    assert_eq!(creator(&mut sidecar, injected).await, ALICE);
    let one_line = with_xfcc(
        &[format!(
            "URI={CONSOLE},By=spiffe://cluster.local/ns/selfie/sa/server;URI={BOB}"
        )],
        submit_request(ENROLLED_USER, "mesh-2"),
    );
    assert_eq!(creator(&mut sidecar, one_line).await, BOB);
    let ambiguous = with_xfcc(
        &[format!("URI={ALICE};URI={CONSOLE}")],
        submit_request(ENROLLED_USER, "mesh-3"),
    );
    let status = sidecar.submit_authentication(ambiguous).await.expect_err("two URIs");
    assert_eq!(
        code_and_reason(&status),
        (Code::Unauthenticated, "CALLER_UNIDENTIFIED".to_owned())
    );
    service.stop().await;
}

/// The files of a TLS gRPC port whose client certificates come from `ca`.
fn tls_files(dir: &tempfile::TempDir, ca: &Authority) -> Vec<String> {
    let (cert, key) = ca.issue(&["127.0.0.1"], rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let mut paths = Vec::new();
    for (name, text) in [("server.pem", cert), ("server-key.pem", key), ("ca.pem", ca.cert.pem())] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        paths.push(path.to_str().expect("utf-8").to_owned());
    }
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_is_never_overridden_and_its_names_are_parsed() {
    let ca = Authority::new("selfie-auth callers");
    let dir = tempfile::tempdir().expect("tempdir");
    let files = tls_files(&dir, &ca);
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[grant]]\nidentities = [\"*\"]\npermissions = [\"submit\", \"get\", \"list\"]\n\n\
             [[grant]]\nidentities = [\"{CONSOLE}\"]\npermissions = [\"list\", \"others_jobs\"]\n"
        ),
    )
    .expect("policy");
    let sim = start_simulator(|_| {}).await;
    let service = start_service(config_with(
        &sim,
        &sqlite_url(&dir),
        &[
            "--grpc-tls-cert",
            &files[0],
            "--grpc-tls-key",
            &files[1],
            "--grpc-client-ca",
            &files[2],
            "--trust-xfcc",
            "true",
            "--xfcc-trusted-proxies",
            GATEWAY,
            "--policy-file",
            policy.to_str().expect("utf-8"),
        ],
    ))
    .await;
    let addr = service.running.grpc_addr;
    let client_auth = rcgen::ExtendedKeyUsagePurpose::ClientAuth;

    let alice = ca.issue(&[ALICE], client_auth.clone());
    let mut as_alice = tls_client(addr, &ca, Some(&alice)).await.expect("connect");
    let status = as_alice
        .submit_authentication(from(BOB, submit_request(ENROLLED_USER, "tls-1")))
        .await
        .expect_err("alice's certificate with a header naming bob");
    assert_eq!(
        code_and_reason(&status),
        (Code::Unauthenticated, "FORWARDED_IDENTITY_UNTRUSTED".to_owned())
    );
    let own = tonic::Request::new(submit_request(ENROLLED_USER, "tls-1"));
    assert_eq!(creator(&mut as_alice, own).await, ALICE);

    // The proxy whose certificate is trusted to forward identities does.
    let gateway = ca.issue(&[GATEWAY], client_auth.clone());
    let mut via_gateway = tls_client(addr, &ca, Some(&gateway)).await.expect("connect");
    let forwarded = from(BOB, submit_request(ENROLLED_USER, "tls-2"));
    assert_eq!(creator(&mut via_gateway, forwarded).await, BOB);

    // A common name written as a SPIFFE ID is a common name: no support grant for it.
    let pretender = ca.issue_for(
        Names {
            sans: &[],
            subject: &[(rcgen::DnType::CommonName, CONSOLE)],
        },
        client_auth.clone(),
    );
    let mut as_pretender = tls_client(addr, &ca, Some(&pretender)).await.expect("connect");
    let own = tonic::Request::new(submit_request(ENROLLED_USER, "tls-3"));
    assert_eq!(creator(&mut as_pretender, own).await, format!("cn:{CONSOLE}"));
    let listed = as_pretender
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed.jobs.iter().map(|job| job.job_id.as_str()).collect::<Vec<_>>(),
        ["tls-3"],
        "only its own jobs"
    );

    // An earlier attribute carrying a common name's encoding supplies nothing.
    let crafted = ca.issue_for(
        Names {
            sans: &[],
            subject: &[
                (rcgen::DnType::OrganizationName, "\u{6}\u{3}U\u{4}\u{3}\u{c}\u{5}admin"),
                (rcgen::DnType::CommonName, "api"),
            ],
        },
        client_auth,
    );
    let mut as_crafted = tls_client(addr, &ca, Some(&crafted)).await.expect("connect");
    let own = tonic::Request::new(submit_request(ENROLLED_USER, "tls-4"));
    assert_eq!(creator(&mut as_crafted, own).await, "cn:api");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_belongs_to_the_caller_that_enrolled_it() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[grant]]\nidentities = [\"spiffe://cluster.local/ns/payments/*\"]\n\
             permissions = [\"submit\", \"enroll\", \"get\"]\nusers = [\"pay-*\"]\n\n\
             [[grant]]\nidentities = [\"{CONSOLE}\"]\npermissions = [\"submit\", \"others_users\"]\n"
        ),
    )
    .expect("policy");
    let flags = [
        "--trust-xfcc",
        "true",
        "--xfcc-trusted-peers",
        "127.0.0.1",
        "--policy-file",
        policy.to_str().expect("utf-8"),
    ];
    let service = start_service(config_with(&sim, &sqlite_url(&dir), &flags)).await;
    let mut client = service.client().await;
    let not_permitted = |status: &tonic::Status| {
        assert_eq!(
            code_and_reason(status),
            (Code::PermissionDenied, "USER_NOT_PERMITTED".to_owned()),
            "{status:?}"
        );
    };

    let mut enrol = enroll_request("pay-newcust", "enrol-bob");
    enrol.wait_for_result = true;
    let mut request = from(BOB, enrol);
    request.set_timeout(Duration::from_secs(10));
    client.enroll_user(request).await.expect("bob enrols the user first");
    let status = client
        .submit_authentication(from(ALICE, submit_request("pay-newcust", "auth-alice")))
        .await
        .expect_err("alice may not authenticate bob's user");
    not_permitted(&status);
    let status = client
        .enroll_user(from(ALICE, enroll_request("pay-newcust", "enrol-alice")))
        .await
        .expect_err("nor enrol it again");
    not_permitted(&status);
    client
        .submit_authentication(from(BOB, submit_request("pay-newcust", "auth-bob")))
        .await
        .expect("bob authenticates his user");
    client
        .submit_authentication(from(CONSOLE, submit_request("pay-newcust", "auth-console")))
        .await
        .expect("others_users acts for anyone's users");

    // Outside the grant's users, nobody of payments may act.
    let status = client
        .enroll_user(from(ALICE, enroll_request("ride-1", "enrol-ride")))
        .await
        .expect_err("not a payments user");
    not_permitted(&status);
    let stored = client
        .get_job(from(
            ALICE,
            pb::GetJobRequest {
                job_id: "enrol-ride".into(),
                ..Default::default()
            },
        ))
        .await
        .expect_err("the refused enrolment stored nothing");
    assert_eq!(stored.code(), Code::NotFound, "{stored:?}");
    assert_eq!(
        sim.counters().jobs_created_by_job_id.get("auth-alice").copied(),
        None,
        "a refused caller costs no Smile ID job"
    );
    service.stop().await;
}

/// A callback for `job_id` signed now, as only Smile ID (and whoever captured one) can.
fn signed_callback(job_id: &str, code: &str, text: &str) -> serde_json::Value {
    let (timestamp, signature) = credentials().sign_now();
    json!({
        "ResultCode": code, "ResultText": text, "IsFinalResult": "true", "SmileJobID": "",
        "PartnerParams": {"job_id": job_id, "user_id": ENROLLED_USER, "job_type": 2},
        "timestamp": timestamp, "signature": signature.as_str(),
    })
}

async fn post(url: &str, body: &serde_json::Value) -> (u16, String) {
    let response = reqwest::Client::new().post(url).json(body).send().await.expect("post");
    (response.status().as_u16(), response.text().await.expect("body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_forgery_costs_nothing_and_probes_nothing() {
    let sim = start_simulator(|config| config.review_delay = Duration::from_mins(10)).await;
    sim.set_callback_mode(CallbackMode::Drop);
    let dir = tempfile::tempdir().expect("tempdir");
    let database = sqlite_url(&dir);
    let service = start_service(config_with(&sim, &database, &["--reconcile-after", "10m"])).await;
    let mut client = service.client().await;
    client
        .submit_authentication(provisional_request(ENROLLED_USER, "victim-1"))
        .await
        .expect("submit");

    // Whether the job exists or not, the answer is the same.
    let known = post(&service.callback_url, &signed_callback("victim-1", "0820", "")).await;
    let unknown = post(&service.callback_url, &signed_callback("no-such-job", "0820", "")).await;
    assert_eq!(known, unknown);
    assert_eq!(known.0, 200);

    // Forged final results with 1.5 MB of text each, under fresh signatures: a few bytes are kept.
    let text = "x".repeat(1_500_000);
    for code in ["0820", "1020", "0821", "1022", "0824", "0825"] {
        let (status, _) = post(&service.callback_url, &signed_callback("victim-1", code, &text)).await;
        assert_eq!(status, 200);
        // Signed timestamps have milliseconds: each forgery its own signature.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let pool = sqlx::SqlitePool::connect(&database).await.expect("open the database");
    let row_bytes: i64 = sqlx::query_scalar("SELECT length(data) FROM jobs WHERE job_id = 'victim-1'")
        .fetch_one(&pool)
        .await
        .expect("row");
    assert!(row_bytes < 16 * 1024, "the job row holds {row_bytes} bytes");

    // The same signed delivery again costs no job_status call, however often it comes.
    let captured = signed_callback("victim-1", "0820", "");
    post(&service.callback_url, &captured).await;
    // The reconciler's confirmation of the claims above settles first.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let asked = sim.counters().job_status_by_job_id.get("victim-1").copied();
    for _ in 0..20 {
        let mut replay = captured.clone();
        replay["ResultCode"] = json!("1020");
        assert_eq!(post(&service.callback_url, &replay).await.0, 200);
    }
    assert_eq!(sim.counters().job_status_by_job_id.get("victim-1").copied(), asked);
    let job = get_job(&mut client, "victim-1").await.expect("get");
    assert_eq!(job.state(), pb::JobState::Provisional, "Smile ID confirmed none of it");
    assert!(
        metrics(&service)
            .await
            .contains(r#"selfie_auth_callbacks_total{outcome="replayed"} 20"#)
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_a_caller_sees_are_those_of_its_own_jobs() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = ["--trust-xfcc", "true", "--xfcc-trusted-peers", "127.0.0.1"];
    let service = start_service(config_with(&sim, &sqlite_url(&dir), &flags)).await;
    let mut client = service.client().await;
    let live = pb::WatchJobsRequest::default();
    let mut watching = client
        .watch_jobs(from(BOB, live.clone()))
        .await
        .expect("watch")
        .into_inner();
    for job_id in ["a-1", "a-2", "a-3"] {
        let mut request = submit_request(ENROLLED_USER, job_id);
        request.wait_for_result = true;
        let mut request = from(ALICE, request);
        request.set_timeout(Duration::from_secs(10));
        client.submit_authentication(request).await.expect("alice submits");
    }
    // Bob's heartbeats say where Bob's view is: nowhere, however much Alice's jobs moved.
    let mut tokens = Vec::new();
    while tokens.len() < 2 {
        let event = next_event(&mut watching, Duration::from_secs(5))
            .await
            .expect("an event")
            .expect("open");
        assert_eq!(event.kind(), pb::JobEventKind::Heartbeat, "none of alice's events");
        tokens.push(event.resume_token);
    }
    assert_eq!(tokens, ["v1.0", "v1.0"]);

    // Alice's position is beyond Bob's view: never issued to Bob, so refused.
    let mut alices = client
        .watch_jobs(from(
            ALICE,
            pb::WatchJobsRequest {
                from_start: true,
                ..live.clone()
            },
        ))
        .await
        .expect("watch")
        .into_inner();
    let first = next_event(&mut alices, Duration::from_secs(5))
        .await
        .expect("an event")
        .expect("open");
    let status = client
        .watch_jobs(from(
            BOB,
            pb::WatchJobsRequest {
                resume_token: first.resume_token,
                ..live
            },
        ))
        .await
        .expect_err("a position outside bob's view");
    assert_eq!(
        code_and_reason(&status),
        (Code::InvalidArgument, "INVALID_RESUME_TOKEN".to_owned())
    );
    service.stop().await;
}
