//! Process counters, exposed in the Prometheus text format on the HTTP port.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Metrics {
    pub calls_in_flight: Gauge,
    pub calls_shed: Counter,
    pub jobs_created: Counter,
    pub submissions_accepted: Counter,
    pub submissions_refused: Counter,
    pub events_written: Counter,
    pub callbacks_received: Counter,
    pub callbacks_rejected: Counter,
    pub callbacks_unknown_job: Counter,
    pub reconcile_polls: Counter,
}

impl Metrics {
    pub fn render(&self) -> String {
        let counters = [
            (
                "selfie_auth_calls_shed_total",
                "SelfieAuth calls shed at the concurrency limit",
                &self.calls_shed,
            ),
            ("selfie_auth_jobs_created_total", "Jobs created", &self.jobs_created),
            (
                "selfie_auth_submissions_accepted_total",
                "Submissions Smile ID accepted",
                &self.submissions_accepted,
            ),
            (
                "selfie_auth_submissions_refused_total",
                "Submissions Smile ID refused",
                &self.submissions_refused,
            ),
            (
                "selfie_auth_events_written_total",
                "Job events written",
                &self.events_written,
            ),
            (
                "selfie_auth_callbacks_received_total",
                "Callbacks received",
                &self.callbacks_received,
            ),
            (
                "selfie_auth_callbacks_rejected_total",
                "Callbacks refused (signature, window, body)",
                &self.callbacks_rejected,
            ),
            (
                "selfie_auth_callbacks_unknown_job_total",
                "Callbacks for no known job",
                &self.callbacks_unknown_job,
            ),
            (
                "selfie_auth_reconcile_polls_total",
                "job_status polls by the reconciler",
                &self.reconcile_polls,
            ),
        ];
        let mut text = String::new();
        let name = "selfie_auth_calls_in_flight";
        let in_flight = self.calls_in_flight.get();
        let _ = writeln!(
            text,
            "# HELP {name} SelfieAuth calls being served\n# TYPE {name} gauge\n{name} {in_flight}"
        );
        for (name, help, counter) in counters {
            let _ = writeln!(
                text,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.get()
            );
        }
        text
    }
}
