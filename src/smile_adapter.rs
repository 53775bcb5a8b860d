//! The domain's [`SmileId`] port over the Smile ID protocol client.

use std::sync::Arc;
use std::time::Instant;

use crate::fair::Precedence;
use crate::jobs::model::{Decision, JobKind, Refusal, RefusalCause, SmileResult};
use crate::jobs::ports::{
    Accepted, ManageFailure, SmileId, SmileJob, StatusExtras, StatusFailure, StatusReport, SubmitFailure,
};
use crate::metrics::Metrics;
use crate::smileid::wire::{JOB_TYPE_AUTHENTICATION, JOB_TYPE_REGISTRATION};
use crate::smileid::{
    self, ClientConfig, ErrorCode, JobSubmission, PartnerParams, ResultEntry, SmileIdClient, SmileIdError,
    StatusOptions, SubmitOutcome, UserAction,
};
use crate::users::model::Operation;

pub struct SmileIdAdapter {
    client: SmileIdClient,
    /// The same, with connections of its own for submissions beyond their
    /// callers' first few. A connection is driven on the runtime that opened
    /// it; opened by one of those, at the lowest CPU priority, it would
    /// stall everyone's calls that took it from a shared pool.
    further: SmileIdClient,
    metrics: Arc<Metrics>,
}

impl SmileIdAdapter {
    pub fn new(config: &ClientConfig, metrics: Arc<Metrics>) -> Result<Self, SmileIdError> {
        Ok(Self {
            client: SmileIdClient::new(config.clone())?,
            further: SmileIdClient::new(config.clone())?,
            metrics,
        })
    }
}

#[async_trait::async_trait]
impl SmileId for SmileIdAdapter {
    async fn submit(&self, job: SmileJob<'_>) -> Result<Accepted, SubmitFailure> {
        let partner_params = PartnerParams {
            user_id: job.user_id.to_owned(),
            job_id: job.job_id.to_owned(),
            job_type: match job.kind {
                JobKind::Authentication => JOB_TYPE_AUTHENTICATION,
                JobKind::Enrollment => JOB_TYPE_REGISTRATION,
            },
            extra: job.partner_params.clone(),
        };
        let submission = JobSubmission {
            partner_params: &partner_params,
            callback_url: job.callback_url,
            selfie_jpeg: job.selfie_jpeg,
            liveness_jpegs: job.liveness_jpegs,
            may_resume: job.may_resume,
            allow_new_enroll: job.allow_new_enroll,
        };
        let started = Instant::now();
        let client = match job.precedence {
            Precedence::Ahead => &self.client,
            Precedence::Further => &self.further,
        };
        let submitted = client.submit(&submission).await;
        let outcome = match &submitted {
            Ok(_) => "accepted",
            Err(error) => match error.outcome {
                SubmitOutcome::Refused => "refused",
                SubmitOutcome::NotSent => "not_sent",
                SubmitOutcome::Unknown => "unknown",
            },
        };
        self.metrics.observe_smileid("submit", outcome, started.elapsed());
        match submitted {
            Ok(submitted) => Ok(Accepted {
                smile_job_id: submitted.smile_job_id,
                resumed: submitted.resumed,
            }),
            Err(error) => {
                let detail = format!("{:?}: {}", error.stage, error.source);
                Err(match (error.outcome, error.source) {
                    (SubmitOutcome::Refused, SmileIdError::Refused { code, message, .. }) => {
                        SubmitFailure::Refused(refusal(&code, message))
                    }
                    (SubmitOutcome::NotSent, source) => SubmitFailure::NotSent {
                        retry_after: source.retry_after(),
                        detail,
                    },
                    _ => SubmitFailure::Unknown {
                        smile_job_id: error.smile_job_id,
                        detail,
                    },
                })
            }
        }
    }

    async fn job_status(
        &self,
        user_id: &str,
        job_id: &str,
        extras: StatusExtras,
    ) -> Result<StatusReport, StatusFailure> {
        let started = Instant::now();
        let options = StatusOptions {
            history: extras.history,
            image_links: extras.image_links,
        };
        let status = self.client.job_status(user_id, job_id, options).await;
        let outcome = match &status {
            Ok(_) => "ok",
            Err(SmileIdError::NotFound) => "not_found",
            Err(error) if error.is_transient() => "unavailable",
            Err(_) => "unusable",
        };
        self.metrics.observe_smileid("job_status", outcome, started.elapsed());
        match status {
            Ok(status) => Ok(StatusReport {
                complete: status.job_complete,
                result: status.result.map(result),
                history: status.history.into_iter().map(result).collect(),
                image_links: status.image_links,
            }),
            Err(SmileIdError::NotFound) => Err(StatusFailure::NotFound),
            Err(error) if error.is_transient() => Err(StatusFailure::Unavailable {
                retry_after: error.retry_after(),
                detail: error.to_string(),
            }),
            Err(error) => Err(StatusFailure::Unusable(error.to_string())),
        }
    }

    async fn manage_user(&self, user_id: &str, operation: Operation) -> Result<(), ManageFailure> {
        let action = match operation {
            Operation::AllowReenrollment => UserAction::AllowNewEnroll,
            Operation::Deactivate => UserAction::Deactivate,
            Operation::Reactivate => UserAction::Reactivate,
            Operation::Flag => UserAction::FlagFraud,
            Operation::Unflag => UserAction::ClearFraud,
            Operation::Delete => UserAction::Delete,
        };
        let started = Instant::now();
        let managed = self.client.manage_user(user_id, action).await;
        let outcome = match &managed {
            Ok(()) => "ok",
            Err(SmileIdError::Refused { .. }) => "refused",
            Err(_) => "unavailable",
        };
        self.metrics.observe_smileid("block_user", outcome, started.elapsed());
        managed.map_err(|error| match error {
            SmileIdError::Refused { code, message, .. } => ManageFailure::Refused(refusal(&code, message)),
            // Anything else may or may not have been carried out: repeat it.
            other => ManageFailure::Unavailable {
                retry_after: other.retry_after(),
                detail: other.to_string(),
            },
        })
    }
}

/// A result from Smile ID, in the domain's terms.
pub fn result(entry: ResultEntry) -> SmileResult {
    SmileResult {
        result_code: entry.result_code,
        result_text: entry.result_text,
        result_type: entry.result_type,
        smile_job_id: entry.smile_job_id,
        is_final: entry.is_final,
        is_machine_result: entry.is_machine_result,
        confidence: entry.confidence,
        actions: entry.actions,
        partner_params: entry.partner_params,
        timestamp: entry.timestamp,
        decision: decision(entry.decision),
    }
}

/// What a result code means, in the domain's terms.
pub fn decision(decision: smileid::Decision) -> Decision {
    match decision {
        smileid::Decision::Approved => Decision::Approved,
        smileid::Decision::Rejected => Decision::Rejected,
        smileid::Decision::ProvisionallyApproved => Decision::ProvisionallyApproved,
        smileid::Decision::SuspectedSpoof => Decision::SuspectedSpoof,
        smileid::Decision::Error => Decision::Error,
        smileid::Decision::Unknown(code) => Decision::Unknown(code),
    }
}

/// What a Smile ID error code says about the user or this service.
fn refusal(code: &ErrorCode, message: String) -> Refusal {
    let cause = match code {
        ErrorCode::UserNotEnrolled => RefusalCause::UserNotEnrolled,
        ErrorCode::UserAlreadyEnrolled => RefusalCause::UserAlreadyEnrolled,
        ErrorCode::UserDisabled => RefusalCause::UserDisabled,
        ErrorCode::UserDeleted | ErrorCode::ReEnrollmentRequired | ErrorCode::NoPhotoOnFile => {
            RefusalCause::UserNotAuthenticatable
        }
        ErrorCode::Unauthorized | ErrorCode::ProductionNotEnabled => RefusalCause::Credentials,
        _ => RefusalCause::Other,
    };
    Refusal {
        cause,
        code: code.code().to_owned(),
        code_text: code.text().to_owned(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;
    use crate::smileid::{ApiKey, Credentials, Environment};

    /// A stand-in for Smile ID on loopback that refuses every request over
    /// connections kept open, and counts the connections opened to it.
    async fn refusing_smile_id() -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
        let url = format!("http://{}/v1", listener.local_addr().expect("an address"));
        let opened = Arc::new(AtomicUsize::new(0));
        let counted = opened.clone();
        crate::task::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                crate::task::spawn(async move {
                    let mut request = Vec::new();
                    let mut chunk = [0_u8; 4096];
                    while let Ok(read @ 1..) = socket.read(&mut chunk).await {
                        request.extend_from_slice(&chunk[..read]);
                        // Each request here fits its first reads; answer once its headers are in.
                        if request.windows(4).any(|window| window == b"\r\n\r\n") {
                            request.clear();
                            let refusal = br#"{"code":"2204","error":"refused by the stand-in"}"#;
                            let head = format!(
                                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                                refusal.len()
                            );
                            if socket.write_all(head.as_bytes()).await.is_err()
                                || socket.write_all(refusal).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (url, opened)
    }

    #[tokio::test]
    async fn submissions_beyond_their_callers_first_few_never_share_a_connection_with_the_rest() {
        let (url, opened) = refusing_smile_id().await;
        let config = ClientConfig::new(Environment::Custom(url), Credentials::new("001", ApiKey::new("key")));
        let adapter = SmileIdAdapter::new(&config, Arc::new(Metrics::default())).expect("a client");
        let (partner_params, selfie) = (BTreeMap::new(), Bytes::from_static(b"\xFF\xD8\xFF"));
        let line = [
            Precedence::Ahead,
            Precedence::Ahead,
            Precedence::Further,
            Precedence::Further,
            Precedence::Ahead,
        ];
        for precedence in line {
            let job = SmileJob {
                kind: JobKind::Authentication,
                user_id: "user-1",
                job_id: "job-1",
                partner_params: &partner_params,
                callback_url: None,
                selfie_jpeg: &selfie,
                liveness_jpegs: &[],
                may_resume: false,
                allow_new_enroll: false,
                precedence,
            };
            let refused = adapter.submit(job).await;
            assert!(
                matches!(refused, Err(SubmitFailure::Refused(_))),
                "{precedence:?}: {refused:?}"
            );
        }
        assert_eq!(
            opened.load(Ordering::SeqCst),
            2,
            "one connection for each, each kept for its own"
        );
    }

    #[test]
    fn a_result_stored_as_the_client_wrote_it_reads_back_as_the_domains() {
        let wire = serde_json::json!({
            "ResultCode": "0820", "ResultText": "Enroll User", "ResultType": "SAIA",
            "SmileJobID": "0000000321", "IsFinalResult": "true", "ConfidenceValue": "99.5",
            "Actions": {"Liveness_Check": "Passed"}, "PartnerParams": {"job_id": "j-1", "user_id": "u-1"},
            "timestamp": "2026-01-02T03:04:05.000Z",
        });
        let entry = ResultEntry::from_value(&wire).expect("a result");
        // Jobs stored before the domain had its own type hold the client's JSON.
        let stored = serde_json::to_string(&entry).expect("json");
        let read: SmileResult = serde_json::from_str(&stored).expect("reads back");
        assert_eq!(read, result(entry));
        assert_eq!((&read.decision, read.job_id()), (&Decision::Approved, Some("j-1")));
        assert!(read.timestamp.is_some() && read.is_final);
    }

    #[test]
    fn refusals_say_what_they_mean_for_the_user_or_the_service() {
        for (code, cause) in [
            ("2210", RefusalCause::UserNotEnrolled),
            ("2215", RefusalCause::Other),
            ("2205", RefusalCause::Credentials),
        ] {
            let refusal = refusal(&ErrorCode::parse(code), "said".into());
            assert_eq!((refusal.cause, refusal.code.as_str()), (cause, code), "{code}");
            assert!(!refusal.code_text.is_empty(), "{code}");
        }
    }
}
