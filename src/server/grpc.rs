//! The gRPC port's stack: reflection, the tower layers in the order a request
//! meets them, and the accept loop with its connection limits and TLS.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context as _;
use prost::Message as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::health::Readiness;
use super::tls::{self, GrpcTlsAcceptor};
use crate::auth::IdentityModes;
use crate::auth::policy::PolicySource;
use crate::config::Config;
use crate::grpc::apart::SubmissionsApart;
use crate::grpc::identity::Identify;
use crate::grpc::load_shed::LoadShed;
use crate::grpc::middleware::Middleware as _;
use crate::grpc::observe::Observe;
use crate::grpc::request_limits::{ArrivalBudgets, READ_MEMORY_BYTES, RequestLimitsLayer};
use crate::grpc::stream_caps::StreamCaps;
use crate::grpc::{SelfieAuthApi, SelfieAuthServer, pb};
use crate::jobs::JobService;
use crate::jobs::memory::MemoryBudget;
use crate::metrics::Metrics;
use crate::net::{self, ConnectionLimits, Silence};
use crate::shares::Shares;

/// Reflection streams open at once: tools (grpcurl, a developer's client) need a few.
const REFLECTION_STREAMS: usize = 32;

/// Streams the server may reset on one connection for the client's protocol
/// errors before it sends GOAWAY (ENHANCE_YOUR_CALM). A stream the server
/// resets stops counting against the connection's streams at once, so
/// without this bound a client that provokes resets (a window update past
/// the maximum, say) opens streams without end. h2 bounds it at 1,024 unless
/// told otherwise, and tonic tells hyper "no bound" unless given one.
const PROVOKED_RESETS: usize = 1024;

/// What the gRPC stack is built from, besides the configuration.
pub struct GrpcParts {
    pub service: Arc<JobService>,
    pub identity: IdentityModes,
    pub policy: Arc<PolicySource>,
    pub tls: Option<GrpcTlsAcceptor>,
    pub readiness: Readiness,
    pub metrics: Arc<Metrics>,
}

/// Serves the gRPC port on `listener` until `shutdown`.
pub fn serve(
    config: &Config,
    parts: GrpcParts,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<JoinHandle<()>> {
    let GrpcParts {
        service,
        identity,
        policy,
        tls,
        readiness,
        metrics,
    } = parts;
    let descriptors = reflection_descriptors()?;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(&descriptors)
        .build_v1()
        .context("building reflection v1")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(&descriptors)
        .build_v1alpha()
        .context("building reflection v1alpha")?;
    let api = SelfieAuthServer::new(SelfieAuthApi::new(
        service,
        policy,
        metrics.clone(),
        config.caller_max_open_streams,
    ))
    // The per-method limits are enforced by RequestLimitsLayer, with precise errors,
    // as soon as a frame header declares too much; tonic's own limit is a backstop.
    .max_decoding_message_size(config.max_message_bytes + 1024)
    .max_encoding_message_size(config.max_message_bytes);
    let limits = config.grpc_limits;
    let keepalive = config.keepalive;
    let load_shed = LoadShed::new(config.admissions, metrics.clone());
    let router = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(keepalive.interval))
        .http2_keepalive_timeout(Some(keepalive.timeout))
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_max_local_error_reset_streams(Some(PROVOKED_RESETS))
        .layer(Observe::new(metrics.clone()).into_layer())
        .layer(StreamCaps::new(limits.max_health_watches, REFLECTION_STREAMS, metrics.clone()).into_layer())
        // Before load shedding: a flood of unidentified calls takes no slot, and a
        // request is admitted only once it has arrived whole.
        .layer(Identify::new(identity, metrics.clone()).into_layer())
        .layer(load_shed.on_arrival().into_layer())
        .layer(SubmissionsApart::start(config.service.submission_turns).into_layer())
        .layer(RequestLimitsLayer::new(
            config.max_message_bytes,
            limits.request_timeout,
            ArrivalBudgets {
                submissions: MemoryBudget::new(limits.request_memory_bytes),
                reads: MemoryBudget::new(READ_MEMORY_BYTES),
                per_caller: Shares::new(limits.caller_request_memory_bytes as u64),
            },
            metrics.clone(),
        ))
        .layer(load_shed.into_layer())
        .add_service(readiness.service())
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(api);
    Ok(crate::task::spawn(async move {
        let incoming = net::accept(
            listener,
            ConnectionLimits {
                max_connections: limits.max_connections,
                max_per_peer: limits.max_connections_per_peer,
                silence: Silence::OpeningWithin(limits.preface_timeout),
                // A peer that cannot read for this long cannot answer a keepalive ping either.
                stalled_writes: keepalive.timeout,
            },
        );
        let served = match tls {
            Some(GrpcTlsAcceptor(acceptor)) => {
                let incoming = tls::handshakes(incoming, acceptor, limits.preface_timeout);
                router
                    .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                    .await
            }
            None => {
                router
                    .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
                    .await
            }
        };
        if let Err(error) = served {
            warn!(%error, "grpc server stopped with an error");
        }
    }))
}

/// The contract, google.rpc and health descriptors as one set, so reflection
/// clients can decode rich error details.
fn reflection_descriptors() -> anyhow::Result<Vec<u8>> {
    let mut files = BTreeMap::new();
    for encoded in [
        pb::FILE_DESCRIPTOR_SET,
        tonic_types::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
    ] {
        let set = prost_types::FileDescriptorSet::decode(encoded).context("decoding a descriptor set")?;
        for file in set.file {
            files.entry(file.name.clone().unwrap_or_default()).or_insert(file);
        }
    }
    Ok(prost_types::FileDescriptorSet {
        file: files.into_values().collect(),
    }
    .encode_to_vec())
}
