//! What happened to jobs: events, the notices that announce them, and erasures.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Job;

/// Which events a read of the log returns; `None` matches any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct LogFilter {
    pub user_id: Option<String>,
    /// Events of jobs this identity created.
    pub owner: Option<String>,
}

impl LogFilter {
    pub fn matches(&self, event: &JobEvent) -> bool {
        self.user_id.as_ref().is_none_or(|user| *user == event.job.user_id)
            && self
                .owner
                .as_ref()
                .is_none_or(|owner| event.job.owner.as_ref() == Some(owner))
    }
}

/// What happened to a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKind {
    Created,
    Submitted,
    ProvisionalResult,
    FinalResult,
    Failed,
}

impl EventKind {
    /// Whether no event can follow this one.
    pub fn is_final(self) -> bool {
        matches!(self, Self::FinalResult | Self::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Submitted => "SUBMITTED",
            Self::ProvisionalResult => "PROVISIONAL_RESULT",
            Self::FinalResult => "FINAL_RESULT",
            Self::Failed => "FAILED",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "CREATED" => Self::Created,
            "SUBMITTED" => Self::Submitted,
            "PROVISIONAL_RESULT" => Self::ProvisionalResult,
            "FINAL_RESULT" => Self::FinalResult,
            "FAILED" => Self::Failed,
            _ => return None,
        })
    }
}

/// A stored event: a job snapshot at a per-job sequence, plus its place in the global log.
#[derive(Clone, Debug, PartialEq)]
pub struct JobEvent {
    /// Position in the global event log (the WatchJobs resume point).
    pub global_id: i64,
    pub sequence: u64,
    pub kind: EventKind,
    pub job: Job,
    pub at: DateTime<Utc>,
}

/// Announces that an event was stored; subscribers read the event itself from the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventNotice {
    pub global_id: i64,
    pub job_id: String,
    pub user_id: String,
    pub sequence: u64,
    /// Who created the job; `None` when it has no owner or the notice came
    /// from a replica that does not say (subscribers then look anyway).
    pub owner: Option<String>,
}

impl EventNotice {
    /// Whether a subscriber to `filter`'s events may need to look at this one.
    pub fn may_match(&self, filter: &LogFilter) -> bool {
        filter.user_id.as_ref().is_none_or(|user| *user == self.user_id)
            && filter
                .owner
                .as_ref()
                .is_none_or(|owner| self.owner.as_ref().is_none_or(|noticed| noticed == owner))
    }
}

/// One job erased with its user.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ErasedJob {
    pub job_id: String,
    /// Who created the job, so streams of other callers hear nothing of it.
    pub owner: Option<String>,
}

/// The jobs of one user that were erased.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Erasure {
    pub user_id: String,
    pub jobs: Vec<ErasedJob>,
}

impl Erasure {
    /// The erased jobs a stream whose filter is `filter` may hear of.
    pub fn visible_to<'a>(&'a self, filter: &'a LogFilter) -> impl Iterator<Item = &'a ErasedJob> + 'a {
        let user_matches = filter.user_id.as_ref().is_none_or(|user| *user == self.user_id);
        self.jobs.iter().filter(move |job| {
            user_matches
                && filter
                    .owner
                    .as_ref()
                    .is_none_or(|owner| job.owner.as_ref() == Some(owner))
        })
    }
}

impl From<&JobEvent> for EventNotice {
    fn from(event: &JobEvent) -> Self {
        Self {
            global_id: event.global_id,
            job_id: event.job.job_id.clone(),
            user_id: event.job.user_id.clone(),
            sequence: event.sequence,
            owner: event.job.owner.clone(),
        }
    }
}
