//! Pure checks of the flags, each building one part of [`Config`](super::Config).
//! Nothing here opens a file: `name` turns a setting's id into the words the
//! user wrote, for the error.

use anyhow::{Context as _, bail};

use super::args::{ServeArgs, SmileEnvironment};
use super::limits::{Admissions, GrpcLimits, HttpLimits};
use super::{ApiKeySetting, CallerIdentification, JwtSettings, SmileSettings};
use crate::auth::{Identity, TrustedForwarders};
use crate::jobs::{ImageLimits, ReconcilePolicy, RetentionPolicy, ServiceConfig};
use crate::smileid::{Environment, RetryPolicy, Upstream};

type Name<'a> = &'a dyn Fn(&str) -> String;

fn is_http_url(url: &str) -> bool {
    url.starts_with("http://") || url.starts_with("https://")
}

/// Which Smile ID, as whom; refuses skipping confirmation where it may reach production.
pub(super) fn smile(args: &ServeArgs, api_key: ApiKeySetting, name: Name<'_>) -> anyhow::Result<SmileSettings> {
    let partner_id = args
        .partner_id
        .clone()
        .filter(|id| !id.trim().is_empty())
        .with_context(|| format!("{} is not set: the Smile ID partner id is required", name("partner_id")))?;
    let environment = match (&args.base_url, args.environment) {
        (Some(url), _) => {
            if !is_http_url(url) {
                bail!("{} must be an http:// or https:// URL, got {url:?}", name("base_url"));
            }
            Environment::Custom(url.clone())
        }
        (None, Some(SmileEnvironment::Sandbox)) => Environment::Sandbox,
        (None, Some(SmileEnvironment::Production)) => Environment::Production,
        (None, None) => bail!(
            "{} is not set: choose sandbox or production (or set {})",
            name("environment"),
            name("base_url")
        ),
    };
    if !args.confirm_callbacks && environment.upstream() == Upstream::Production {
        bail!(
            "{} is false, but {} reaches Smile ID production (or a host that may lead there): every \
             callback must be confirmed with job_status there, since Smile ID's signature does not cover \
             the result. Only the sandbox ({}) and loopback simulators may skip it",
            name("confirm_callbacks"),
            environment.base_url(),
            Environment::Sandbox.base_url()
        );
    }
    Ok(SmileSettings {
        environment,
        partner_id,
        api_key,
        contact_email: args.contact_email.clone(),
        connect_timeout: args.smileid_connect_timeout.0,
        request_timeout: args.smileid_request_timeout.0,
        retry: RetryPolicy::default(),
        key_overlap: args.api_key_overlap.0,
    })
}

/// The callback endpoint: Smile ID needs a URL it can post to, on a path we serve.
pub(super) fn callbacks(args: &ServeArgs, name: Name<'_>) -> anyhow::Result<()> {
    if let Some(url) = &args.callback_url
        && !is_http_url(url)
    {
        bail!(
            "{} must be an http:// or https:// URL, got {url:?}",
            name("callback_url")
        );
    }
    if !args.callback_path.starts_with('/') {
        bail!(
            "{} must start with '/', got {:?}",
            name("callback_path"),
            args.callback_path
        );
    }
    Ok(())
}

/// Counts that must be at least one and spans that must be longer than nothing.
pub(super) fn positive(args: &ServeArgs, name: Name<'_>) -> anyhow::Result<()> {
    let counts = [
        ("concurrency_limit", args.concurrency_limit),
        ("caller_concurrency_limit", args.caller_concurrency_limit),
        ("grpc_max_connections", args.grpc_max_connections),
        ("http_max_connections", args.http_max_connections),
        ("grpc_max_connections_per_peer", args.grpc_max_connections_per_peer),
        ("max_health_watches", args.max_health_watches),
        ("http_max_connections_per_peer", args.http_max_connections_per_peer),
        ("max_concurrent_streams", args.max_concurrent_streams as usize),
        ("max_open_streams", args.max_open_streams),
        ("caller_max_open_streams", args.caller_max_open_streams),
        ("database_max_connections", args.database_max_connections as usize),
    ];
    if let Some((id, _)) = counts.iter().find(|(_, value)| *value == 0) {
        bail!("{} must be at least 1", name(id));
    }
    let spans = [
        ("heartbeat_interval", args.heartbeat_interval),
        ("submit_lease", args.submit_lease),
        ("request_timeout", args.request_timeout),
        ("header_timeout", args.header_timeout),
        ("idle_timeout", args.idle_timeout),
        ("jwt_max_lifetime", args.jwt_max_lifetime),
        ("readiness_interval", args.readiness_interval),
        ("http2_keepalive_interval", args.http2_keepalive_interval),
        ("http2_keepalive_timeout", args.http2_keepalive_timeout),
    ];
    if let Some((id, _)) = spans.iter().find(|(_, span)| span.0.is_zero()) {
        bail!("{} must be greater than zero", name(id));
    }
    Ok(())
}

/// Image limits that fit in a message, and memory budgets that hold at least one request.
pub(super) fn image_limits(args: &ServeArgs, name: Name<'_>) -> anyhow::Result<ImageLimits> {
    // Images must fit in a message with room for the other fields.
    let image_budget = args.max_message_bytes.saturating_sub(64 * 1024);
    if image_budget < 1024 * 1024 {
        bail!(
            "{} must be at least 1 MiB + 64 KiB, got {}",
            name("max_message_bytes"),
            args.max_message_bytes
        );
    }
    for (id, bytes) in [
        ("submission_memory_bytes", args.submission_memory_bytes),
        ("request_memory_bytes", args.request_memory_bytes),
        ("caller_request_memory_bytes", args.caller_request_memory_bytes),
    ] {
        if bytes < args.max_message_bytes {
            bail!(
                "{} must be at least the largest request ({}), got {bytes}",
                name(id),
                args.max_message_bytes
            );
        }
    }
    let limits = ImageLimits::default();
    // The largest image allowed must be decodable: 4096 x 4096 RGBA.
    let largest = limits.max_side_px as usize * limits.max_side_px as usize * 4;
    if args.decode_memory_bytes < largest {
        bail!(
            "{} must be at least {largest} (one {}x{} image), got {}",
            name("decode_memory_bytes"),
            limits.max_side_px,
            limits.max_side_px,
            args.decode_memory_bytes
        );
    }
    Ok(ImageLimits {
        max_total_bytes: limits.max_total_bytes.min(image_budget),
        max_image_bytes: limits.max_image_bytes.min(image_budget),
        decode_memory_bytes: args.decode_memory_bytes,
        ..limits
    })
}

/// The ways callers are identified; refuses a configuration that identifies no one.
pub(super) fn identity(args: &ServeArgs, name: Name<'_>) -> anyhow::Result<CallerIdentification> {
    let forwarded = args
        .trust_xfcc
        .then(|| trusted_forwarders(&args.xfcc_trusted_peers, &args.xfcc_trusted_proxies, name))
        .transpose()?;
    let client_certificates =
        args.grpc_tls_cert.is_some() && args.grpc_tls_key.is_some() && args.grpc_client_ca.is_some();
    if forwarded
        .as_ref()
        .is_some_and(|trusted| !trusted.certificates.is_empty())
        && !client_certificates
    {
        bail!(
            "{} names proxies by their client certificates, which needs {}",
            name("xfcc_trusted_proxies"),
            name("grpc_client_ca")
        );
    }
    let bearer_tokens = match (&args.jwt_jwks_file, &args.jwt_issuer, &args.jwt_audience) {
        (Some(jwks_file), Some(issuer), Some(audience)) => Some(JwtSettings {
            jwks_file: jwks_file.clone(),
            issuer: issuer.clone(),
            audience: audience.clone(),
            max_lifetime: args.jwt_max_lifetime.0,
        }),
        _ => None,
    };
    let identity = CallerIdentification {
        forwarded,
        client_certificates,
        bearer_tokens,
        insecure_no_auth: args.insecure_no_auth,
    };
    if identity.forwarded.is_none()
        && !identity.client_certificates
        && identity.bearer_tokens.is_none()
        && !identity.insecure_no_auth
    {
        bail!(
            "no way to identify callers: set {} behind a service mesh that sets x-forwarded-client-cert, \
             or {} to require client certificates, or {} for bearer tokens, or {} to let every caller do \
             everything (development only)",
            name("trust_xfcc"),
            name("grpc_client_ca"),
            name("jwt_jwks_file"),
            name("insecure_no_auth")
        );
    }
    Ok(identity)
}

/// The proxies trusted to forward identities; at least one must be named, since
/// a header believed from anyone makes anyone anyone.
fn trusted_forwarders(peers: &[String], proxies: &[String], name: Name<'_>) -> anyhow::Result<TrustedForwarders> {
    let networks = peers
        .iter()
        .map(|text| {
            let text = text.trim();
            text.parse::<ipnet::IpNet>()
                .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "{}: {text:?} is not an address or network (e.g. 127.0.0.6/32)",
                        name("xfcc_trusted_peers")
                    )
                })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let certificates = proxies
        .iter()
        .map(|text| {
            Identity::spiffe(text.trim())
                .with_context(|| format!("{}: {:?} is not a SPIFFE ID", name("xfcc_trusted_proxies"), text.trim()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let trusted = TrustedForwarders { networks, certificates };
    if trusted.is_empty() {
        bail!(
            "{} is true, but no proxy is trusted to set x-forwarded-client-cert: set {} to the addresses the \
             mesh proxy connects from (Istio's sidecar: 127.0.0.6/32), or {} to its client certificate's SPIFFE ID",
            name("trust_xfcc"),
            name("xfcc_trusted_peers"),
            name("xfcc_trusted_proxies")
        );
    }
    Ok(trusted)
}

/// How long finished jobs, and idle users' jobs, are kept.
pub(super) fn retention(
    args: &ServeArgs,
    name: Name<'_>,
) -> anyhow::Result<(Option<RetentionPolicy>, Option<RetentionPolicy>)> {
    if args.retention.is_some_and(|span| span.0.is_zero()) {
        bail!("{} must be greater than zero, or unset to keep jobs", name("retention"));
    }
    if args.retention_after_last_activity.is_some_and(|span| span.0.is_zero()) {
        bail!(
            "{} must be greater than zero, or unset to keep users' jobs",
            name("retention_after_last_activity")
        );
    }
    Ok((
        args.retention.map(|span| RetentionPolicy::keeping(span.0)),
        args.retention_after_last_activity
            .map(|span| RetentionPolicy::keeping(span.0)),
    ))
}

/// The job service's settings; `sandbox_result` is never accepted where it may reach production.
pub(super) fn service(args: &ServeArgs, image_limits: ImageLimits, upstream: Upstream) -> ServiceConfig {
    ServiceConfig {
        callback_url: args.callback_url.clone(),
        confirm_callbacks: args.confirm_callbacks,
        heartbeat_interval: args.heartbeat_interval.0,
        reconcile: ReconcilePolicy {
            first_delay: args.reconcile_after.0,
            max_delay: args.reconcile_max_interval.0.max(args.reconcile_after.0),
            give_up_after: args.reconcile_give_up.0,
            abandon_after: args.abandon_after.0,
            ..ReconcilePolicy::default()
        },
        submit_retry_budget: args.submit_retry_budget.0,
        submit_lease: args.submit_lease.0,
        submission_memory_bytes: args.submission_memory_bytes,
        max_open_streams: args.max_open_streams,
        image_limits,
        sandbox_params_allowed: upstream != Upstream::Production,
        ..ServiceConfig::default()
    }
}

/// A caller's share never exceeds the whole.
pub(super) fn admissions(args: &ServeArgs) -> Admissions {
    Admissions {
        submissions: args.concurrency_limit,
        reads: args.concurrency_limit,
        per_caller: args.caller_concurrency_limit.min(args.concurrency_limit),
    }
}

pub(super) fn grpc_limits(args: &ServeArgs) -> GrpcLimits {
    GrpcLimits {
        max_connections: args.grpc_max_connections,
        max_connections_per_peer: args.grpc_max_connections_per_peer.min(args.grpc_max_connections),
        max_health_watches: args.max_health_watches,
        max_concurrent_streams: args.max_concurrent_streams,
        preface_timeout: args.header_timeout.0,
        request_timeout: args.request_timeout.0,
        request_memory_bytes: args.request_memory_bytes,
        caller_request_memory_bytes: args.caller_request_memory_bytes.min(args.request_memory_bytes),
    }
}

pub(super) fn http_limits(args: &ServeArgs) -> HttpLimits {
    HttpLimits {
        max_connections: args.http_max_connections,
        max_connections_per_peer: args.http_max_connections_per_peer.min(args.http_max_connections),
        header_timeout: args.header_timeout.0,
        idle_timeout: args.idle_timeout.0,
        body_timeout: args.request_timeout.0,
    }
}
