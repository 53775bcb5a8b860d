//! Spans reach an OTLP collector (a fake one on 127.0.0.1:0), continue the
//! caller's W3C trace, and carry no secrets or image bytes.

use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::trace::v1::Span;
use selfie_auth::telemetry::{LogFormat, TelemetryConfig};
use selfie_auth_testkit::*;

#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource in request.into_inner().resource_spans {
            for scope in resource.scope_spans {
                spans.extend(scope.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_are_traced_as_children_of_the_callers_trace() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind");
    let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
    let server = tonic::transport::Server::builder().add_service(TraceServiceServer::new(collector.clone()));
    selfie_auth::task::spawn(server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
    let telemetry = selfie_auth::telemetry::init(&TelemetryConfig {
        log_format: LogFormat::Text,
        otlp_endpoint: Some(endpoint),
    })
    .expect("telemetry");

    let sim = start_simulator(|_| {}).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let service = start_service(config_for(&sim, &sqlite_url(&dir))).await;
    let mut client = service.client().await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(submit_request(ENROLLED_USER, "traced-1"));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01").parse().expect("header"),
    );
    client.submit_authentication(request).await.expect("submit");
    // A stream that lasts until its caller leaves: its span must last as long.
    let watched = std::time::Instant::now();
    let stream = client
        .watch_jobs(selfie_auth::grpc::pb::WatchJobsRequest::default())
        .await
        .expect("watch");
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    drop(stream);
    let watch_lasted = watched.elapsed();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // An error the server counts as its own: UNAVAILABLE from a Smile ID that answers 503.
    sim.set_fault(
        selfie_auth::simulator::Endpoint::JobStatus,
        selfie_auth::simulator::Fault {
            status: Some(503),
            ..Default::default()
        },
    );
    let refreshed = client
        .get_job(selfie_auth::grpc::pb::GetJobRequest {
            job_id: "traced-1".into(),
            refresh: true,
            ..Default::default()
        })
        .await
        .expect_err("Smile ID is down");
    assert_eq!(refreshed.code(), tonic::Code::Unavailable);
    // Probes are not traced.
    tonic_health::pb::health_client::HealthClient::new(service.channel().await)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health");
    service.stop().await;
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .expect("flush");

    let spans = collector.spans.lock().expect("lock").clone();
    let hex = |bytes: &[u8]| {
        bytes.iter().fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
    };
    let submit = spans
        .iter()
        .find(|span| span.name == "selfieauth.v1.SelfieAuth/SubmitAuthentication")
        .unwrap_or_else(|| {
            panic!(
                "server span exported; got {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(hex(&submit.trace_id), trace_id, "the caller's trace continues");
    assert_eq!(hex(&submit.parent_span_id), "00f067aa0ba902b7");
    let attribute = |span: &Span, key: &str| {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.clone())
            .map(|v| format!("{v:?}"))
    };
    assert!(attribute(submit, "rpc.method").is_some_and(|v| v.contains("SubmitAuthentication")));
    assert!(
        attribute(submit, "rpc.grpc.status_code").is_some_and(|v| v.contains("IntValue(0)")),
        "{submit:?}"
    );
    let unset = |span: &Span| span.status.as_ref().is_none_or(|status| status.code == 0);
    assert!(unset(submit), "an OK call is not an error");

    let watch_span = spans
        .iter()
        .find(|span| span.name == "selfieauth.v1.SelfieAuth/WatchJobs")
        .expect("stream span exported");
    let span_lasted = std::time::Duration::from_nanos(watch_span.end_time_unix_nano - watch_span.start_time_unix_nano);
    assert!(
        span_lasted + std::time::Duration::from_millis(100) >= watch_lasted,
        "the stream span lasted {span_lasted:?}, the stream {watch_lasted:?}"
    );
    assert!(
        attribute(watch_span, "rpc.grpc.status_code").is_some_and(|v| v.contains("IntValue(1)")),
        "a caller that leaves cancels: {watch_span:?}"
    );

    let get = spans
        .iter()
        .find(|span| span.name == "selfieauth.v1.SelfieAuth/GetJob")
        .expect("failed call exported");
    assert!(
        attribute(get, "rpc.grpc.status_code").is_some_and(|v| v.contains("IntValue(14)")),
        "{get:?}"
    );
    assert!(
        get.status.as_ref().is_some_and(|status| status.code == 2),
        "UNAVAILABLE is an error: {get:?}"
    );
    let status_call = spans
        .iter()
        .find(|span| {
            span.name == "POST job_status"
                && attribute(span, "http.response.status_code").is_some_and(|v| v.contains("503"))
        })
        .expect("the 503 is on the client span");
    assert!(
        status_call.status.as_ref().is_some_and(|status| status.code == 2),
        "{status_call:?}"
    );
    assert!(
        !spans
            .iter()
            .any(|span| span.name.contains("grpc.health") || span.name.contains("Reflection")),
        "probes are not traced"
    );

    let upload = spans
        .iter()
        .find(|span| span.name == "POST upload")
        .expect("client span exported");
    assert!(
        attribute(upload, "http.response.status_code").is_some_and(|v| v.contains("200")),
        "{upload:?}"
    );
    assert!(
        attribute(upload, "server.address").is_some_and(|v| v.contains("127.0.0.1")),
        "{upload:?}"
    );
    assert_eq!(
        hex(&upload.trace_id),
        trace_id,
        "Smile ID calls belong to the same trace"
    );
    let everything = format!("{spans:?}");
    assert!(!everything.contains(API_KEY));
    assert!(!everything.contains("X-Amz-Signature"));
    sim.shutdown().await;
}
