//! Metrics an operator can alert on, in the OpenMetrics text format on the HTTP
//! port's `/metrics` (Prometheus scrapes it natively).
//!
//! gRPC calls follow the OpenTelemetry RPC conventions (`rpc_server_duration_seconds`
//! by method and status code); everything else is prefixed `selfie_auth_`, with
//! units in the names. Labels only ever take values from fixed sets (methods,
//! codes, outcomes), never ids, so series stay few.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

mod labels;
pub mod lag;
mod process;

pub use labels::*;
use process::ProcessCollector;

/// Latency buckets from a tenth of a millisecond (a GetJob answered from memory
/// takes less) to half a minute.
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

/// Connections of the job store's pool: `(open, idle)`.
pub type PoolStatus = Box<dyn Fn() -> (u32, u32) + Send + Sync>;

/// What the job store's writer has committed: `(commits, writes)` so far.
pub type CommitTotals = Box<dyn Fn() -> (u64, u64) + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    pub rpc_duration: Histograms<RpcLabels>,
    pub ready: Gauge,
    pub calls_in_flight: Gauge,
    pub calls_shed: Family<LimitLabel, Counter>,
    pub calls_denied: Family<DenialLabels, Counter>,
    pub calls_unidentified: Counter,
    pub forwarded_identities_refused: Counter,
    pub streams_open: Family<MethodLabel, Gauge>,
    pub jobs_created: Counter,
    pub jobs_deleted: Counter,
    pub api_key_rotations: Counter,
    pub submissions: Family<OutcomeLabel, Counter>,
    pub events_written: Counter,
    pub callbacks: Family<OutcomeLabel, Counter>,
    pub smileid_duration: Histograms<SmileIdLabels>,
    pub db_duration: Histograms<OperationLabel>,
    pub submission_turn_wait: Histogram,
    pub runtime_lag: Histogram,
    pub db_pool_connections: Family<PoolLabel, Gauge>,
    pub reconcile_polls: Counter,
    pub reconciler_due_jobs: Gauge,
    pub oldest_unfinished_job_age: Gauge<f64, AtomicU64>,
    pool: OnceLock<PoolStatus>,
    db_commits: Counter,
    db_committed_writes: Counter,
    commits: OnceLock<CommitTotals>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut metrics = Self {
            registry: Registry::default(),
            rpc_duration: Family::new_with_constructor(latency),
            ready: Gauge::default(),
            calls_in_flight: Gauge::default(),
            calls_shed: Family::default(),
            calls_denied: Family::default(),
            calls_unidentified: Counter::default(),
            forwarded_identities_refused: Counter::default(),
            streams_open: Family::default(),
            jobs_created: Counter::default(),
            jobs_deleted: Counter::default(),
            api_key_rotations: Counter::default(),
            submissions: Family::default(),
            events_written: Counter::default(),
            callbacks: Family::default(),
            smileid_duration: Family::new_with_constructor(latency),
            db_duration: Family::new_with_constructor(latency),
            submission_turn_wait: latency(),
            runtime_lag: latency(),
            db_pool_connections: Family::default(),
            reconcile_polls: Counter::default(),
            reconciler_due_jobs: Gauge::default(),
            oldest_unfinished_job_age: Gauge::default(),
            pool: OnceLock::new(),
            db_commits: Counter::default(),
            db_committed_writes: Counter::default(),
            commits: OnceLock::new(),
        };
        metrics.register();
        metrics.create_watched_series();
        metrics
    }
}

impl crate::jobs::JobMetrics for Metrics {
    fn job_created(&self) {
        self.jobs_created.inc();
    }

    fn event_written(&self) {
        self.events_written.inc();
    }

    fn submission(&self, outcome: &'static str) {
        Self::submission(self, outcome);
    }

    fn reconcile_poll(&self) {
        self.reconcile_polls.inc();
    }

    fn backlog(&self, due: u64, oldest_unfinished: Duration) {
        self.reconciler_due_jobs.set(i64::try_from(due).unwrap_or(i64::MAX));
        self.oldest_unfinished_job_age.set(oldest_unfinished.as_secs_f64());
    }

    fn jobs_deleted(&self, count: u64) {
        self.jobs_deleted.inc_by(count);
    }

    fn turn_waited(&self, waited: Duration) {
        self.submission_turn_wait.observe(waited.as_secs_f64());
    }

    fn shed(&self, limit: crate::jobs::Limit) {
        Self::shed(self, limit.as_str());
    }
}

impl Metrics {
    fn register(&mut self) {
        // Taken out while the groups below register into it, which borrow the handles.
        let mut registry = std::mem::take(&mut self.registry);
        registry.register_with_unit(
            "rpc_server_duration",
            "Duration of SelfieAuth gRPC calls (streams: until they end), by method and gRPC status code",
            Unit::Seconds,
            self.rpc_duration.clone(),
        );
        let ours = registry.sub_registry_with_prefix("selfie_auth");
        self.register_calls(ours);
        self.register_jobs(ours);
        self.register_upstreams(ours);
        registry.register_collector(Box::new(ProcessCollector));
        self.registry = registry;
    }

    /// Calls, their refusals, streams and readiness.
    fn register_calls(&self, ours: &mut Registry) {
        ours.register(
            "calls_in_flight",
            "SelfieAuth calls being served",
            self.calls_in_flight.clone(),
        );
        ours.register(
            "calls_shed",
            format!(
                "Calls shed or throttled, by the limit that refused them ({})",
                SHED_LIMITS.join(", ")
            ),
            self.calls_shed.clone(),
        );
        ours.register(
            "calls_denied",
            "SelfieAuth calls refused by the authorization policy, by method and missing permission",
            self.calls_denied.clone(),
        );
        ours.register(
            "calls_unidentified",
            "SelfieAuth calls refused because the caller could not be identified",
            self.calls_unidentified.clone(),
        );
        ours.register(
            "forwarded_identities_refused",
            "SelfieAuth calls refused because x-forwarded-client-cert came from a peer that is not a trusted proxy",
            self.forwarded_identities_refused.clone(),
        );
        ours.register(
            "streams_open",
            "Open WatchJob and WatchJobs streams",
            self.streams_open.clone(),
        );
        ours.register(
            "ready",
            "1 when this replica serves (its store is open and it is not shutting down), else 0",
            self.ready.clone(),
        );
        ours.register_with_unit(
            "runtime_lag",
            "How long work that became ready (a call that arrived, a callback) waited for the threads serving \
             connections, reads and callbacks; sampled ten times a second",
            Unit::Seconds,
            self.runtime_lag.clone(),
        );
    }

    /// Jobs, their events, callbacks and key rotations.
    fn register_jobs(&self, ours: &mut Registry) {
        ours.register("jobs_created", "Jobs created", self.jobs_created.clone());
        ours.register(
            "api_key_rotations",
            "Smile ID API key changes taken from the key file",
            self.api_key_rotations.clone(),
        );
        ours.register(
            "jobs_deleted",
            "Finished jobs deleted by retention",
            self.jobs_deleted.clone(),
        );
        ours.register(
            "submissions",
            "Submissions to Smile ID by outcome (accepted, refused)",
            self.submissions.clone(),
        );
        ours.register("events_written", "Job events written", self.events_written.clone());
        ours.register(
            "callbacks",
            "Smile ID callbacks by outcome (applied, unchanged, deferred, unknown_job, replayed, refused_signature, \
             refused_malformed, too_large, timeout, busy, not_stored)",
            self.callbacks.clone(),
        );
    }

    /// Smile ID, the job store and the reconciler.
    fn register_upstreams(&self, ours: &mut Registry) {
        ours.register_with_unit(
            "smileid_request_duration",
            "Duration of Smile ID operations (submit: prep upload, zip and upload; job_status) by outcome",
            Unit::Seconds,
            self.smileid_duration.clone(),
        );
        ours.register_with_unit(
            "db_operation_duration",
            "Duration of job-store operations",
            Unit::Seconds,
            self.db_duration.clone(),
        );
        ours.register_with_unit(
            "submission_turn_wait",
            "Time submissions waited for their caller's turn to be checked and stored",
            Unit::Seconds,
            self.submission_turn_wait.clone(),
        );
        ours.register(
            "db_pool_connections",
            "Connections of the job store's pool, by state (idle, used)",
            self.db_pool_connections.clone(),
        );
        ours.register(
            "db_commits",
            "Transactions the job store's writer committed",
            self.db_commits.clone(),
        );
        ours.register(
            "db_committed_writes",
            "Job creates and saves in those transactions: over db_commits, how many shared a commit",
            self.db_committed_writes.clone(),
        );
        ours.register(
            "reconcile_polls",
            "job_status polls by the reconciler",
            self.reconcile_polls.clone(),
        );
        ours.register(
            "reconciler_due_jobs",
            "Jobs due for a reconciler poll now (its backlog)",
            self.reconciler_due_jobs.clone(),
        );
        ours.register_with_unit(
            "oldest_unfinished_job_age",
            "Age of the oldest job without a final state",
            Unit::Seconds,
            self.oldest_unfinished_job_age.clone(),
        );
    }

    /// Every series an alert or the dashboard reads, at zero, so that `rate()`
    /// and `increase()` see the first event of each kind.
    fn create_watched_series(&self) {
        for rpc_method in RPC_METHODS {
            for rpc_grpc_status_code in WATCHED_CODES {
                drop(self.rpc_duration.get_or_create(&RpcLabels {
                    rpc_method,
                    rpc_grpc_status_code,
                }));
            }
        }
        for rpc_method in STREAMING_METHODS {
            drop(self.streams_open.get_or_create(&MethodLabel { rpc_method }));
        }
        for outcome in CALLBACK_OUTCOMES {
            drop(self.callbacks.get_or_create(&OutcomeLabel { outcome }));
        }
        for (rpc_method, permissions) in DENIALS {
            for permission in permissions {
                drop(
                    self.calls_denied
                        .get_or_create(&DenialLabels { rpc_method, permission }),
                );
            }
        }
        for limit in SHED_LIMITS {
            drop(self.calls_shed.get_or_create(&LimitLabel { limit }));
        }
        for outcome in SUBMISSION_OUTCOMES {
            drop(self.submissions.get_or_create(&OutcomeLabel { outcome }));
        }
        for (endpoint, outcomes) in SMILEID_OUTCOMES {
            for outcome in outcomes {
                drop(
                    self.smileid_duration
                        .get_or_create(&SmileIdLabels { endpoint, outcome }),
                );
            }
        }
    }

    /// Reports the store's pool from now on.
    pub fn watch_pool(&self, status: PoolStatus) {
        let _ = self.pool.set(status);
    }

    /// Reports the store writer's commits from now on.
    pub fn watch_commits(&self, totals: CommitTotals) {
        let _ = self.commits.set(totals);
    }

    pub fn observe_rpc(&self, method: &'static str, code: i32, elapsed: Duration) {
        self.rpc_duration
            .get_or_create(&RpcLabels {
                rpc_method: method,
                rpc_grpc_status_code: code,
            })
            .observe(elapsed.as_secs_f64());
    }

    pub fn shed(&self, limit: &'static str) {
        debug_assert!(SHED_LIMITS.contains(&limit), "{limit} is not listed");
        self.calls_shed.get_or_create(&LimitLabel { limit }).inc();
    }

    pub fn denied(&self, rpc_method: &'static str, permission: &'static str) {
        debug_assert!(
            DENIALS
                .iter()
                .any(|(method, permissions)| *method == rpc_method && permissions.contains(&permission)),
            "{rpc_method}/{permission} is not listed"
        );
        self.calls_denied
            .get_or_create(&DenialLabels { rpc_method, permission })
            .inc();
    }

    pub fn callback(&self, outcome: &'static str) {
        debug_assert!(CALLBACK_OUTCOMES.contains(&outcome), "{outcome} is not listed");
        self.callbacks.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn submission(&self, outcome: &'static str) {
        debug_assert!(SUBMISSION_OUTCOMES.contains(&outcome), "{outcome} is not listed");
        self.submissions.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    pub fn observe_smileid(&self, endpoint: &'static str, outcome: &'static str, elapsed: Duration) {
        debug_assert!(
            SMILEID_OUTCOMES
                .iter()
                .any(|(listed, outcomes)| *listed == endpoint && outcomes.contains(&outcome)),
            "{endpoint}/{outcome} is not listed"
        );
        self.smileid_duration
            .get_or_create(&SmileIdLabels { endpoint, outcome })
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_db(&self, operation: &'static str, elapsed: Duration) {
        self.db_duration
            .get_or_create(&OperationLabel { operation })
            .observe(elapsed.as_secs_f64());
    }

    /// Every metric in the format `accept` (an HTTP `Accept` header) asks for,
    /// and its content type: OpenMetrics when it is named (as Prometheus's
    /// scrapes do), else the Prometheus text format that every tool reads.
    pub fn render_for(&self, accept: Option<&str>) -> (&'static str, String) {
        if accept.is_some_and(|accept| accept.contains("application/openmetrics-text")) {
            (OPENMETRICS_CONTENT_TYPE, self.render())
        } else {
            (TEXT_CONTENT_TYPE, openmetrics_to_text(&self.render()))
        }
    }

    /// Every metric, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        if let Some(pool) = self.pool.get() {
            let (open, idle) = pool();
            let gauge = |state| self.db_pool_connections.get_or_create(&PoolLabel { state }).clone();
            gauge("idle").set(i64::from(idle));
            gauge("used").set(i64::from(open.saturating_sub(idle)));
        }
        if let Some(totals) = self.commits.get() {
            // Counted by the writer as it commits; copied here when read.
            let (commits, writes) = totals();
            self.db_commits.inner().store(commits, Ordering::Relaxed);
            self.db_committed_writes.inner().store(writes, Ordering::Relaxed);
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The Prometheus text format (0.0.4) of an OpenMetrics exposition: the
/// samples are the same; a counter's HELP and TYPE name its `_total` sample,
/// and there are no UNIT lines and no EOF.
fn openmetrics_to_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let described = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match described.and_then(|(prefix, rest)| rest.split_once(' ').map(|(name, tail)| (prefix, name, tail))) {
            Some((prefix, name, tail)) if counters.contains(name) => {
                let _ = writeln!(text, "{prefix}{name}_total {tail}");
            }
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_has_every_family_with_types_and_units() {
        let metrics = Metrics::default();
        metrics.observe_rpc("GetJob", 0, Duration::from_millis(3));
        metrics.callback("applied");
        metrics.submission("accepted");
        metrics.observe_smileid("job_status", "ok", Duration::from_millis(20));
        metrics.observe_db("get", Duration::from_micros(300));
        metrics.watch_pool(Box::new(|| (4, 3)));
        metrics.watch_commits(Box::new(|| (2, 7)));
        let text = metrics.render();
        for expected in [
            "# TYPE rpc_server_duration_seconds histogram",
            "rpc_server_duration_seconds_bucket{le=\"0.005\",rpc_method=\"GetJob\",rpc_grpc_status_code=\"0\"} 1",
            "selfie_auth_callbacks_total{outcome=\"applied\"} 1",
            "selfie_auth_submissions_total{outcome=\"accepted\"} 1",
            "# TYPE selfie_auth_smileid_request_duration_seconds histogram",
            "# TYPE selfie_auth_db_operation_duration_seconds histogram",
            "# TYPE selfie_auth_submission_turn_wait_seconds histogram",
            "selfie_auth_db_pool_connections{state=\"used\"} 1",
            "selfie_auth_db_commits_total 2",
            "selfie_auth_db_committed_writes_total 7",
            "# TYPE selfie_auth_oldest_unfinished_job_age_seconds gauge",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_cpu_seconds counter",
            "# EOF",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn every_limit_of_the_job_layer_is_counted_under_its_name() {
        let metrics = Metrics::default();
        for limit in crate::jobs::Limit::ALL {
            crate::jobs::JobMetrics::shed(&metrics, limit);
            let counted = format!(r#"selfie_auth_calls_shed_total{{limit="{}"}} 1"#, limit.as_str());
            assert!(metrics.render().contains(&counted), "{counted}");
        }
    }

    #[test]
    fn watched_series_exist_at_zero_from_the_start() {
        let text = Metrics::default().render();
        for expected in [
            r#"rpc_server_duration_seconds_count{rpc_method="SubmitAuthentication",rpc_grpc_status_code="14"} 0"#,
            r#"rpc_server_duration_seconds_count{rpc_method="GetJob",rpc_grpc_status_code="13"} 0"#,
            r#"selfie_auth_callbacks_total{outcome="not_stored"} 0"#,
            r#"selfie_auth_smileid_request_duration_seconds_count{endpoint="submit",outcome="not_sent"} 0"#,
            r#"selfie_auth_submissions_total{outcome="refused"} 0"#,
            r#"selfie_auth_streams_open{rpc_method="WatchJobs"} 0"#,
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }

    #[test]
    fn the_text_format_names_counters_by_their_samples() {
        let metrics = Metrics::default();
        metrics.callback("applied");
        let (content_type, text) = metrics.render_for(Some("text/plain;version=0.0.4"));
        assert_eq!(content_type, TEXT_CONTENT_TYPE);
        assert!(text.contains("# TYPE selfie_auth_callbacks_total counter"), "{text}");
        assert!(
            text.contains("# HELP selfie_auth_callbacks_total Smile ID callbacks"),
            "{text}"
        );
        assert!(text.contains(r#"selfie_auth_callbacks_total{outcome="applied"} 1"#));
        assert!(text.contains("# TYPE rpc_server_duration_seconds histogram"));
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        let (content_type, text) = metrics.render_for(Some("application/openmetrics-text;version=1.0.0,*/*"));
        assert_eq!(content_type, OPENMETRICS_CONTENT_TYPE);
        assert!(text.ends_with("# EOF\n"));
    }
}
