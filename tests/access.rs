//! Only the right callers see a user's results: identities from a service
//! mesh's forwarded client certificate, the authorization policy and its
//! reloading, and the audit trail.

use std::time::Duration;

use selfie_auth::grpc::pb;
use selfie_auth_testkit::*;
use tonic::Code;
use tonic_types::StatusExt as _;

const CHECKOUT: &str = "spiffe://cluster.local/ns/payments/sa/checkout";
const BILLING: &str = "spiffe://cluster.local/ns/payments/sa/billing";
const SUPPORT: &str = "spiffe://cluster.local/ns/support/sa/console";

/// The test client stands in for the mesh sidecar, which connects from loopback.
const MESH: &[&str] = &["--trust-xfcc", "true", "--xfcc-trusted-peers", "127.0.0.1"];

/// `message` as sent by the caller whose sidecar forwards `identity`.
fn from<T>(identity: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let header = format!("By=spiffe://cluster.local/ns/selfie/sa/server;Hash=ab12;URI={identity}");
    request
        .metadata_mut()
        .insert("x-forwarded-client-cert", header.parse().expect("ascii"));
    request
}

fn get(job_id: &str) -> pb::GetJobRequest {
    pb::GetJobRequest {
        job_id: job_id.into(),
        ..Default::default()
    }
}

/// What a refusal shows, with `job_id` written as `{job}`: code, message and every detail.
fn looks(status: &tonic::Status, job_id: &str) -> (Code, String, String) {
    let details = format!("{:?}", status.get_error_details()).replace(job_id, "{job}");
    (status.code(), status.message().replace(job_id, "{job}"), details)
}

fn denied_permission(status: &tonic::Status) -> String {
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let info = status.get_error_details().error_info().cloned().expect("ErrorInfo");
    assert_eq!(info.reason, "NOT_PERMITTED");
    info.metadata.get("permission").cloned().unwrap_or_default()
}

async fn final_job(client: &mut Client, identity: &str, job_id: &str) -> pb::Job {
    let mut stream = client
        .watch_job(from(
            identity,
            pb::WatchJobRequest {
                job_id: job_id.into(),
                after_sequence: 0,
            },
        ))
        .await
        .expect("watch own job")
        .into_inner();
    let mut last = None;
    while let Some(event) = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("events keep coming")
        .expect("stream")
    {
        if event.job.is_some() {
            last = event.job;
        }
    }
    last.expect("a final job")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_read_or_watch_another_callers_job() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_with(&sim, &sqlite_url(&dir), MESH)).await;
    let mut client = service.client().await;

    let unidentified = client
        .get_job(get("anything"))
        .await
        .expect_err("no forwarded certificate");
    assert_eq!(unidentified.code(), Code::Unauthenticated);
    assert_eq!(reason(&unidentified), "CALLER_UNIDENTIFIED");

    let created = client
        .submit_authentication(from(CHECKOUT, submit_request(ENROLLED_USER, "checkout-1")))
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(created.creator, CHECKOUT, "the job records who created it");
    let done = final_job(&mut client, CHECKOUT, "checkout-1").await;
    assert_eq!(done.state(), pb::JobState::Completed);
    client
        .submit_authentication(from(BILLING, submit_request(ENROLLED_USER, "billing-1")))
        .await
        .expect("submit");

    // Billing sees its own job, and nothing of checkout's.
    let own = client.get_job(from(BILLING, get("billing-1"))).await.expect("own job");
    assert_eq!(own.into_inner().creator, BILLING);
    // Another caller's job answers exactly as a job that does not exist.
    let nothing = client
        .get_job(from(BILLING, get("no-such-job")))
        .await
        .expect_err("no job");
    let status = client
        .get_job(from(BILLING, get("checkout-1")))
        .await
        .expect_err("another caller's job");
    assert_eq!(looks(&status, "checkout-1"), looks(&nothing, "no-such-job"));
    assert_eq!(status.code(), Code::NotFound);
    let watch = |job_id: &str| {
        from(
            BILLING,
            pb::WatchJobRequest {
                job_id: job_id.into(),
                after_sequence: 0,
            },
        )
    };
    let nothing = client.watch_job(watch("no-such-job")).await.expect_err("no job");
    let status = client
        .watch_job(watch("checkout-1"))
        .await
        .expect_err("another caller's job");
    assert_eq!(looks(&status, "checkout-1"), looks(&nothing, "no-such-job"));
    // Its job_id is billing's to use as if checkout's job did not exist: a job of billing's own.
    let own = client
        .submit_authentication(from(BILLING, submit_request(ENROLLED_USER, "checkout-1")))
        .await
        .expect("the same job_id is billing's own job")
        .into_inner();
    let fresh = client
        .submit_authentication(from(BILLING, submit_request(ENROLLED_USER, "billing-2")))
        .await
        .expect("a fresh job_id")
        .into_inner();
    let shape = |response: &pb::SubmitAuthenticationResponse| {
        let job = response.job.clone().expect("job");
        (response.created, job.creator, job.state, job.user_id)
    };
    assert_eq!(shape(&own), shape(&fresh), "answered as a job_id nobody used");
    assert_eq!(own.job.as_ref().map(|job| job.job_id.as_str()), Some("checkout-1"));
    let billings = final_job(&mut client, BILLING, "checkout-1").await;
    assert_eq!(
        (billings.creator.as_str(), billings.state()),
        (BILLING, pb::JobState::Completed)
    );
    let checkouts = client
        .get_job(from(CHECKOUT, get("checkout-1")))
        .await
        .expect("checkout's own")
        .into_inner();
    assert_eq!(checkouts.creator, CHECKOUT, "checkout's job is untouched");
    let mut other_content = submit_request(ENROLLED_USER, "billing-1");
    other_content.partner_params.insert("order".into(), "2".into());
    let reused = client
        .submit_authentication(from(BILLING, other_content))
        .await
        .expect_err("its own job_id with other content");
    assert_eq!(reason(&reused), "JOB_ID_REUSED");
    let listed = client
        .list_jobs(from(BILLING, pb::ListJobsRequest::default()))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        listed.jobs.iter().map(|job| job.job_id.as_str()).collect::<Vec<_>>(),
        ["billing-2", "checkout-1", "billing-1"]
    );
    let mut everything = client
        .watch_jobs(from(
            BILLING,
            pb::WatchJobsRequest {
                from_start: true,
                ..Default::default()
            },
        ))
        .await
        .expect("watch own jobs")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), everything.message())
        .await
        .expect("an event")
        .expect("stream")
        .expect("open");
    let mut seen = vec![first];
    // Replay and heartbeats: read until the first heartbeat, which follows the replay.
    while seen
        .last()
        .is_some_and(|event| event.kind() != pb::JobEventKind::Heartbeat)
    {
        let event = tokio::time::timeout(Duration::from_secs(5), everything.message())
            .await
            .expect("an event")
            .expect("stream")
            .expect("open");
        seen.push(event);
    }
    let jobs: std::collections::BTreeSet<String> = seen
        .iter()
        .filter_map(|event| event.job.as_ref().map(|job| job.job_id.clone()))
        .collect();
    assert_eq!(
        jobs,
        ["billing-1", "billing-2", "checkout-1"].map(str::to_owned).into(),
        "WatchJobs shows only the caller's own jobs"
    );
    assert!(
        seen.iter()
            .filter_map(|event| event.job.as_ref())
            .all(|job| job.creator == BILLING),
        "billing's checkout-1 is billing's"
    );

    // Image links need their own grant, which the default policy gives nobody.
    let status = client
        .get_job(from(
            CHECKOUT,
            pb::GetJobRequest {
                job_id: "checkout-1".into(),
                refresh: true,
                include_image_links: true,
                ..Default::default()
            },
        ))
        .await
        .expect_err("image links");
    assert_eq!(denied_permission(&status), "image_links");

    let metrics = reqwest::get(format!("http://{}/metrics", service.running.http_addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(r#"selfie_auth_calls_denied_total{rpc_method="GetJob",permission="others_jobs"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"selfie_auth_calls_denied_total{rpc_method="WatchJob",permission="others_jobs"} 1"#),
        "the hidden job is still counted: {metrics}"
    );
    assert!(metrics.contains("selfie_auth_calls_unidentified_total 1"), "{metrics}");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_forwarded_certificate_is_ignored_unless_trusted() {
    let (_sim, service, _dir) = simulator_and_service(|_| {}).await;
    let job = service
        .client()
        .await
        .submit_authentication(from(SUPPORT, submit_request(ENROLLED_USER, "forged-1")))
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(job.creator, "", "the header names nobody when the mesh is not trusted");
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_grants_more_and_reloads_when_its_file_changes() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("policy.toml");
    let grants = |support: &str| {
        format!(
            "[[grant]]\nidentities = [\"spiffe://cluster.local/ns/payments/*\"]\npermissions = [\"submit\", \"get\", \"watch_job\"]\n\n\
             [[grant]]\nidentities = [\"{SUPPORT}\"]\npermissions = [{support}]\n"
        )
    };
    std::fs::write(&policy, grants(r#""get", "others_jobs""#)).expect("write policy");
    let policy_path = policy.to_str().expect("utf-8");
    let service = start_service(config_with(
        &sim,
        &sqlite_url(&dir),
        &[MESH, &["--policy-file", policy_path]].concat(),
    ))
    .await;
    let mut client = service.client().await;
    client
        .submit_authentication(from(CHECKOUT, submit_request(ENROLLED_USER, "policy-1")))
        .await
        .expect("payments may submit");
    let status = client
        .list_jobs(from(CHECKOUT, pb::ListJobsRequest::default()))
        .await
        .expect_err("list is not granted");
    assert_eq!(denied_permission(&status), "list");
    let seen = client
        .get_job(from(SUPPORT, get("policy-1")))
        .await
        .expect("support sees others' jobs")
        .into_inner();
    assert_eq!(seen.creator, CHECKOUT);

    // An invalid file changes nothing; a valid one is in force within seconds.
    std::fs::write(&policy, "[[grant]]\npermissions = 3").expect("write policy");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client
        .get_job(from(SUPPORT, get("policy-1")))
        .await
        .expect("the last valid policy stays");
    std::fs::write(&policy, grants(r#""get""#)).expect("write policy");
    let mut denied = None;
    for _ in 0..40 {
        match client.get_job(from(SUPPORT, get("policy-1"))).await {
            Ok(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            Err(status) => {
                denied = Some(status);
                break;
            }
        }
    }
    let status = denied.expect("the reloaded policy takes others_jobs away");
    assert_eq!(
        (status.code(), reason(&status)),
        (Code::NotFound, "JOB_NOT_FOUND".to_owned())
    );
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_results_and_denials_are_audited_without_personal_data() {
    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let database = sqlite_url(&dir);
    let serve = ServeProcess::start(
        env!("CARGO_BIN_EXE_selfie-auth"),
        &sim.v1_url(),
        &[
            ("DATABASE_URL", database.as_str()),
            ("SELFIE_AUTH_INSECURE_NO_AUTH", "false"),
            ("SELFIE_AUTH_TRUST_XFCC", "true"),
            ("SELFIE_AUTH_XFCC_TRUSTED_PEERS", "127.0.0.1"),
            // No callback URL here: the reconciler fetches the result.
            ("SELFIE_AUTH_RECONCILE_AFTER", "200ms"),
            ("SELFIE_AUTH_RECONCILE_MAX_INTERVAL", "400ms"),
        ],
    )
    .await;
    let mut client = pb::selfie_auth_client::SelfieAuthClient::connect(format!("http://{}", serve.grpc_addr))
        .await
        .expect("connect");
    let mut request = submit_request(ENROLLED_USER, "audited-1");
    request.wait_for_result = true;
    let mut request = from(CHECKOUT, request);
    request.set_timeout(Duration::from_secs(10));
    client.submit_authentication(request).await.expect("submit");
    client.get_job(from(CHECKOUT, get("audited-1"))).await.expect("get");
    client
        .list_jobs(from(CHECKOUT, pb::ListJobsRequest::default()))
        .await
        .expect("list");
    client
        .get_job(from(BILLING, get("audited-1")))
        .await
        .expect_err("denied");
    let mut audit = Vec::new();
    for _ in 0..40 {
        audit = serve.logs_containing("selfie_auth::audit");
        if audit.len() >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events: Vec<serde_json::Value> = audit
        .iter()
        .map(|line| serde_json::from_str(line).expect("a JSON log line"))
        .collect();
    let reads: Vec<(&str, &str)> = events
        .iter()
        .filter(|event| event["fields"]["message"] == "audit: read")
        .map(|event| {
            (
                event["fields"]["method"].as_str().unwrap_or_default(),
                event["fields"]["caller"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        reads,
        [
            ("SubmitAuthentication", CHECKOUT),
            ("GetJob", CHECKOUT),
            ("ListJobs", CHECKOUT)
        ],
        "{audit:?}"
    );
    assert!(
        events.iter().any(|event| event["fields"]["message"] == "audit: denied"
            && event["fields"]["caller"] == BILLING
            && event["fields"]["permission"] == "others_jobs"),
        "{audit:?}"
    );
    for line in &audit {
        assert!(line.contains("audited-1") || line.contains("denied"), "{line}");
        assert!(!line.contains(ENROLLED_USER), "no user id in the audit trail: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_identify_callers_and_another_cas_are_refused() {
    let ours = Authority::new("selfie-auth callers");
    let theirs = Authority::new("someone else");
    let dir = tempfile::tempdir().expect("tempdir");
    let (server_cert, server_key) = ours.issue(&["127.0.0.1"], rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let files = [
        ("server.pem", server_cert),
        ("server-key.pem", server_key),
        ("ca.pem", ours.cert.pem()),
    ];
    for (name, text) in &files {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    let path = |name: &str| dir.path().join(name).to_str().expect("utf-8").to_owned();
    let sim = start_simulator(|_| {}).await;
    let service = start_service(config_with(
        &sim,
        &sqlite_url(&dir),
        &[
            "--grpc-tls-cert",
            &path("server.pem"),
            "--grpc-tls-key",
            &path("server-key.pem"),
            "--grpc-client-ca",
            &path("ca.pem"),
        ],
    ))
    .await;
    let addr = service.running.grpc_addr;

    let checkout = ours.issue(&[CHECKOUT], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let mut client = tls_client(addr, &ours, Some(&checkout)).await.expect("connect");
    // A forwarded-certificate header is not trusted here: the certificate is the identity.
    let job = client
        .submit_authentication(from(SUPPORT, submit_request(ENROLLED_USER, "mtls-1")))
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(job.creator, CHECKOUT);

    let billing = ours.issue(&[BILLING], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let mut other = tls_client(addr, &ours, Some(&billing)).await.expect("connect");
    let status = other.get_job(get("mtls-1")).await.expect_err("another caller's job");
    assert_eq!(
        (status.code(), reason(&status)),
        (Code::NotFound, "JOB_NOT_FOUND".to_owned())
    );

    let stranger = theirs.issue(&[SUPPORT], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    // TLS 1.3 finishes the client's side of the handshake first: the refusal arrives
    // as an alert (or a closed connection) on the first call.
    for identity in [Some(&stranger), None] {
        if let Ok(mut client) = tls_client(addr, &ours, identity).await {
            let status = client
                .get_job(get("mtls-1"))
                .await
                .expect_err("never served without a certificate from our CA");
            // Refused by the TLS layer (an alert, a closed connection), not by a handler.
            assert!(
                matches!(status.code(), Code::Unknown | Code::Cancelled | Code::Unavailable)
                    && status.metadata().get("grpc-status").is_none(),
                "{status:?}"
            );
        }
    }
    service.stop().await;
}

/// An ES256 signing key and the JWKS that publishes its public half as `kid`.
fn signing_key(kid: &str) -> (ring::signature::EcdsaKeyPair, serde_json::Value) {
    use ring::signature::KeyPair as _;
    let rng = ring::rand::SystemRandom::new();
    let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("key");
    let key = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng).expect("key");
    let point = key.public_key().as_ref().to_vec();
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
        "x": b64(&point[1..33]), "y": b64(&point[33..65]),
    });
    (key, jwk)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A compact JWS of `claims`, signed with `key` as `kid`.
fn token(key: &ring::signature::EcdsaKeyPair, kid: &str, claims: serde_json::Value) -> String {
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid});
    let message = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let signature = key
        .sign(&ring::rand::SystemRandom::new(), message.as_bytes())
        .expect("sign");
    format!("{message}.{}", b64(signature.as_ref()))
}

fn bearer<T>(token: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().expect("ascii"));
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bearer_tokens_identify_callers_when_valid() {
    let (key, jwk) = signing_key("k1");
    let (forger, _) = signing_key("k1");
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, serde_json::json!({"keys": [jwk]}).to_string()).expect("write");
    let sim = start_simulator(|_| {}).await;
    let service = start_service(config_with(
        &sim,
        &sqlite_url(&dir),
        &[
            "--jwt-jwks-file",
            jwks.to_str().expect("utf-8"),
            "--jwt-issuer",
            "https://issuer.example",
            "--jwt-audience",
            "selfie-auth",
        ],
    ))
    .await;
    let mut client = service.client().await;
    let now = u64::try_from(chrono::Utc::now().timestamp()).expect("after 1970");
    let claims = |sub: &str, aud: &str, exp: u64| serde_json::json!({"sub": sub, "iss": "https://issuer.example", "aud": aud, "exp": exp});

    let valid = token(&key, "k1", claims(CHECKOUT, "selfie-auth", now + 300));
    let job = client
        .submit_authentication(bearer(&valid, submit_request(ENROLLED_USER, "jwt-1")))
        .await
        .expect("submit")
        .into_inner()
        .job
        .expect("job");
    assert_eq!(job.creator, CHECKOUT);

    for (what, refused) in [
        ("expired", token(&key, "k1", claims(CHECKOUT, "selfie-auth", now - 600))),
        (
            "wrong audience",
            token(&key, "k1", claims(CHECKOUT, "another-service", now + 300)),
        ),
        (
            "bad signature",
            token(&forger, "k1", claims(CHECKOUT, "selfie-auth", now + 300)),
        ),
        ("not a JWT", "not.a.jwt".to_owned()),
        ("not valid yet", {
            let mut early = claims(CHECKOUT, "selfie-auth", now + 31 * 86_400);
            early["nbf"] = (now + 30 * 86_400).into();
            early["iat"] = (now + 30 * 86_400).into();
            token(&key, "k1", early)
        }),
        (
            "lifetime",
            token(&key, "k1", claims(CHECKOUT, "selfie-auth", now + 100 * 365 * 86_400)),
        ),
    ] {
        let status = client.get_job(bearer(&refused, get("jwt-1"))).await.expect_err(what);
        assert_eq!(
            (status.code(), reason(&status)),
            (Code::Unauthenticated, "CALLER_UNIDENTIFIED".to_owned())
        );
        assert!(status.message().contains(what), "{what}: {}", status.message());
        assert!(!status.message().contains(&refused), "the token is never echoed");
    }
    let status = client.get_job(get("jwt-1")).await.expect_err("no token");
    assert_eq!(status.code(), Code::Unauthenticated);
    service.stop().await;
}
