//! Logging and OpenTelemetry tracing.
//!
//! Logs go to stderr as text or JSON lines, filtered by `RUST_LOG` (default
//! `info`). When an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, gRPC protocol), spans are exported too,
//! with the standard `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, and W3C
//! trace context is taken from incoming gRPC metadata.

use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Default)]
pub struct TelemetryConfig {
    pub log_format: LogFormat,
    /// OTLP/gRPC endpoint for spans; none: no export.
    pub otlp_endpoint: Option<String>,
}

impl TelemetryConfig {
    /// Reads the standard OpenTelemetry environment variables.
    pub fn from_env(log_format: LogFormat) -> Self {
        let disabled = std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|value| value.trim() == "none")
            || std::env::var("OTEL_SDK_DISABLED").is_ok_and(|value| value.trim() == "true");
        let endpoint = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
            .iter()
            .find_map(|name| std::env::var(name).ok().filter(|value| !value.trim().is_empty()));
        Self {
            log_format,
            otlp_endpoint: if disabled { None } else { endpoint },
        }
    }
}

/// Keeps the span exporter alive; [`Telemetry::shutdown`] flushes it.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports every buffered span; call before the process exits.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("flushing spans failed: {error}");
        }
    }
}

/// Installs the global subscriber (and the span exporter when configured).
pub fn init(config: &TelemetryConfig) -> anyhow::Result<Telemetry> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = config.otlp_endpoint.as_deref().map(span_provider).transpose()?;
    let otel_layer = provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer("selfie-auth")));
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    let installed = match config.log_format {
        LogFormat::Text => registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr))
            .try_init(),
    };
    installed.map_err(|error| anyhow::anyhow!("installing the log subscriber: {error}"))?;
    Ok(Telemetry { provider })
}

fn span_provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
    if std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL").is_ok_and(|protocol| !protocol.starts_with("grpc")) {
        tracing::warn!("only the grpc OTLP protocol is built in; exporting with grpc");
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|error| anyhow::anyhow!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot build the span exporter: {error}"))?;
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name("selfie-auth");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_text_map_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ]));
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The server span of one gRPC call at `path`, a child of the caller's trace
/// when the metadata carries W3C trace context. Only the method is recorded,
/// never request fields; the status code is recorded when the call ends.
pub fn grpc_span(path: &str, headers: &http::HeaderMap) -> tracing::Span {
    let path = path.trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let span = tracing::info_span!(
        "grpc",
        otel.name = %path,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&HeaderExtractor(headers)));
    let _ = span.set_parent(parent);
    span
}
