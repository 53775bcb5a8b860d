//! The fixed label values of every metric, and the label sets: series stay
//! few because no label ever takes an id.

use prometheus_client::encoding::EncodeLabelSet;

/// The content type of the OpenMetrics exposition.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The content type of the Prometheus text exposition (format 0.0.4).
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The contract's methods, as `rpc_method` label values.
pub const RPC_METHODS: [&str; 12] = [
    "SubmitAuthentication",
    "EnrollUser",
    "GetJob",
    "ListJobs",
    "WatchJob",
    "WatchJobs",
    "GetUser",
    "AllowReenrollment",
    "DeactivateUser",
    "ReactivateUser",
    "SetUserFraudFlag",
    "DeleteUser",
];
/// The streaming methods among them.
pub const STREAMING_METHODS: [&str; 2] = ["WatchJob", "WatchJobs"];
/// gRPC codes alerts and dashboards select: OK, and those the OpenTelemetry
/// conventions count as the server's errors (UNKNOWN, DEADLINE_EXCEEDED,
/// UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS).
pub const WATCHED_CODES: [i32; 7] = [0, 2, 4, 12, 13, 14, 15];
/// What becomes of a callback.
pub const CALLBACK_OUTCOMES: [&str; 11] = [
    "applied",
    "unchanged",
    "deferred",
    "unknown_job",
    "replayed",
    "refused_signature",
    "refused_malformed",
    "too_large",
    "timeout",
    "busy",
    "not_stored",
];
/// The permissions each method may be refused, as `calls_denied` labels.
pub const DENIALS: [(&str, &[&str]); 12] = [
    ("SubmitAuthentication", &["submit", "image_links", "others_users"]),
    ("EnrollUser", &["enroll", "image_links", "others_users"]),
    ("GetJob", &["get", "image_links", "others_jobs"]),
    ("ListJobs", &["list"]),
    ("WatchJob", &["watch_job", "others_jobs"]),
    ("WatchJobs", &["watch_job"]),
    ("GetUser", &["read_users", "others_users"]),
    ("AllowReenrollment", &["manage_users", "others_users"]),
    ("DeactivateUser", &["manage_users", "others_users"]),
    ("ReactivateUser", &["manage_users", "others_users"]),
    ("SetUserFraudFlag", &["manage_users", "others_users"]),
    ("DeleteUser", &["delete_users", "others_users"]),
];
/// The limits that refuse calls: a pool's concurrency, a caller's share of it,
/// the memory of requests arriving, a caller's share of that and of open
/// streams, the caps on health watches and reflection streams, the
/// policy's per-caller rates, and the job layer's own ([`crate::jobs::Limit`]).
pub const SHED_LIMITS: [&str; 14] = [
    "concurrency",
    "caller_share",
    "arrival_memory",
    "caller_arrival",
    "caller_streams",
    "health_watches",
    "reflection",
    "rate",
    "refresh_rate",
    "decode_memory",
    "submission_memory",
    "caller_submission_memory",
    "submission_turns",
    "open_streams",
];
/// What becomes of a submission to Smile ID.
pub const SUBMISSION_OUTCOMES: [&str; 2] = ["accepted", "refused"];
/// Smile ID operations and their outcomes.
pub const SMILEID_OUTCOMES: [(&str, &[&str]); 3] = [
    ("submit", &["accepted", "refused", "not_sent", "unknown"]),
    ("job_status", &["ok", "not_found", "unavailable", "unusable"]),
    ("block_user", &["ok", "refused", "unavailable"]),
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub rpc_method: &'static str,
    pub rpc_grpc_status_code: i32,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub rpc_method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SmileIdLabels {
    pub endpoint: &'static str,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub rpc_method: &'static str,
    pub permission: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LimitLabel {
    pub limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabel {
    pub state: &'static str,
}
