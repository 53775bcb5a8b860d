//! The Smile ID v1 client: prep upload, zip, pre-signed upload, job status.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tracing::{debug, warn};

use super::codes::ErrorCode;
use super::config::{ClientConfig, Environment};
use super::error::{SmileIdError, SubmitError, SubmitOutcome, SubmitStage};
use super::package::{PackageInfo, ZIP_FILE_NAME, build_zip, info_bytes};
use super::signature::Credentials;
use super::wire::{
    ErrorBody, JobStatusRequest, JobStatusResponse, PartnerParams, ResultEntry, SOURCE_SDK, SOURCE_SDK_VERSION,
    UploadRequest, UploadResponse,
};

/// One job to submit: partner params, images (JPEG), and where results go.
pub struct JobSubmission<'a> {
    /// The job's ids and type, echoed back in every result.
    pub partner_params: &'a PartnerParams,
    /// Where Smile ID posts the job's results; `None` leaves it to the partner's portal setting.
    pub callback_url: Option<&'a str>,
    /// The selfie, a JPEG.
    pub selfie_jpeg: &'a bytes::Bytes,
    /// Liveness frames, JPEGs; may be empty.
    pub liveness_jpegs: &'a [bytes::Bytes],
    /// This job_id is ours and an earlier attempt may have reached Smile ID: on
    /// 2215 (job already exists) resume it with `retry: true`.
    pub may_resume: bool,
    /// Enrol the user again although they are enrolled (enrolments only).
    pub allow_new_enroll: bool,
}

/// Image bytes up to which a job's zip is built on the calling task.
const INLINE_ZIP_BYTES: usize = 1024 * 1024;

impl JobSubmission<'_> {
    /// The bytes of every image the job sends.
    fn image_bytes(&self) -> usize {
        self.selfie_jpeg.len() + self.liveness_jpegs.iter().map(bytes::Bytes::len).sum::<usize>()
    }
}

/// Smile ID accepted the job and its images.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Submitted {
    /// Smile ID's id of the job.
    pub smile_job_id: String,
    /// Whether an earlier attempt's job was resumed (`retry: true`) rather than made.
    pub resumed: bool,
}

/// What `job_status` said.
#[derive(Clone, Debug, PartialEq)]
pub struct JobStatus {
    /// Whether Smile ID has finished the job.
    pub job_complete: bool,
    /// Whether the finished job succeeded.
    pub job_success: bool,
    /// Smile ID's status code of the lookup.
    pub code: Option<String>,
    /// The latest result, once the zip was processed.
    pub result: Option<ResultEntry>,
    /// The text Smile ID answers in place of a result before the zip is processed.
    pub pending_text: Option<String>,
    /// Every result so far, oldest first, when asked for with [`StatusOptions::history`].
    pub history: Vec<ResultEntry>,
    /// Links to the job's images by name, when asked for with [`StatusOptions::image_links`].
    pub image_links: BTreeMap<String, String>,
}

#[derive(Clone, Copy, Debug, Default)]
/// What a `job_status` lookup asks for besides the latest result.
pub struct StatusOptions {
    /// Every result so far, not just the latest.
    pub history: bool,
    /// Links to the images Smile ID holds (they expire).
    pub image_links: bool,
}

#[derive(Clone, Debug)]
/// A client of Smile ID's server API. Cheap to clone; clones share one connection pool.
pub struct SmileIdClient {
    http: reqwest::Client,
    config: ClientConfig,
}

impl SmileIdClient {
    /// A client for `config`; fails only when no HTTP client can be built (no TLS roots).
    pub fn new(config: ClientConfig) -> Result<Self, SmileIdError> {
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("selfie-auth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(SmileIdError::from_reqwest)?;
        Ok(Self { http, config })
    }

    /// The credentials requests are signed with.
    pub fn credentials(&self) -> &Credentials {
        &self.config.credentials
    }

    /// The Smile ID this client talks to.
    pub fn environment(&self) -> &Environment {
        &self.config.environment
    }

    /// The host Smile ID calls go to, for span attributes.
    fn host(&self) -> String {
        reqwest::Url::parse(self.config.environment.base_url())
            .ok()
            .and_then(|url| url.host_str().map(str::to_owned))
            .unwrap_or_default()
    }

    fn endpoint(&self, name: &str) -> String {
        format!("{}/{name}", self.config.environment.base_url())
    }

    /// `path` on the API host, beside the `/v1` endpoints (e.g. `/v2/block-user`).
    pub(super) fn host_endpoint(&self, path: &str) -> String {
        let base = self.config.environment.base_url();
        format!("{}{path}", base.strip_suffix("/v1").unwrap_or(base))
    }

    /// POSTs `body` as JSON with `headers`, recording a failure to connect on the span.
    pub(super) async fn post_json(
        &self,
        url: &str,
        body: &impl Serialize,
        headers: &[(&str, &str)],
    ) -> Result<reqwest::Response, SmileIdError> {
        let request = headers.iter().fold(self.http.post(url), |request, (name, value)| {
            request.header(*name, *value)
        });
        let response = request
            .header("Accept", "application/json")
            .json(body)
            .send()
            .await
            .map_err(SmileIdError::from_reqwest);
        record_failure(response)
    }

    pub(super) fn contact_email(&self) -> Option<&str> {
        self.config.contact_email.as_deref()
    }

    /// `POST /v1/upload`: registers the job and returns the pre-signed upload URL.
    #[tracing::instrument(
        name = "POST upload",
        skip_all,
        fields(
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            server.address = %self.host(),
            http.response.status_code = tracing::field::Empty,
            smileid.operation = "prep_upload",
            job_id = %partner_params.job_id,
            retry,
            allow_new_enroll,
        )
    )]
    pub async fn prep_upload(
        &self,
        partner_params: &PartnerParams,
        callback_url: Option<&str>,
        retry: bool,
        allow_new_enroll: bool,
    ) -> Result<(UploadResponse, String, String), SmileIdError> {
        let credentials = &self.config.credentials;
        let (timestamp, signature) = credentials.sign_now();
        let body = UploadRequest {
            source_sdk: SOURCE_SDK,
            source_sdk_version: SOURCE_SDK_VERSION,
            file_name: ZIP_FILE_NAME,
            smile_client_id: &credentials.partner_id,
            partner_params,
            model_parameters: serde_json::Map::new(),
            callback_url,
            use_enrolled_image: false,
            retry,
            allow_new_enroll,
            timestamp: &timestamp,
            signature: signature.as_str(),
        };
        let response = self.post_json(&self.endpoint("upload"), &body, &[]).await?;
        let upload: UploadResponse = read_json(response).await?;
        Ok((upload, timestamp, signature.as_str().to_owned()))
    }

    /// `PUT` of the zip to the pre-signed URL. Idempotent, so it is retried.
    #[tracing::instrument(
        name = "PUT",
        skip_all,
        fields(
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "PUT",
            http.response.status_code = tracing::field::Empty,
            smileid.operation = "upload",
            zip_bytes = zip.len(),
        )
    )]
    pub async fn upload_zip(&self, upload_url: &str, zip: bytes::Bytes) -> Result<(), SmileIdError> {
        self.with_retries("upload", || async {
            let response = self
                .http
                .put(upload_url)
                .header(CONTENT_TYPE, "application/zip")
                .body(zip.clone())
                .send()
                .await
                .map_err(SmileIdError::from_reqwest);
            let response = record_failure(response)?;
            let status = response.status();
            record_answer(status);
            if status == StatusCode::OK {
                return Ok(());
            }
            let headers = response.headers().clone();
            Err(error_from_status(
                status,
                &headers,
                &body_of(response).await.unwrap_or_default(),
            ))
        })
        .await
    }

    /// The whole v1 submission: prep upload, zip, upload.
    pub async fn submit(&self, job: &JobSubmission<'_>) -> Result<Submitted, SubmitError> {
        let fail = |stage, outcome, smile_job_id: Option<&str>, source| SubmitError {
            stage,
            outcome,
            smile_job_id: smile_job_id.map(str::to_owned),
            source,
        };
        let mut resumed = false;
        let prepared = match self
            .prep_upload(job.partner_params, job.callback_url, false, job.allow_new_enroll)
            .await
        {
            Err(SmileIdError::Refused {
                code: ErrorCode::JobAlreadyExists,
                ..
            }) if job.may_resume => {
                debug!(job_id = %job.partner_params.job_id, "job already exists at smile id, resuming it");
                resumed = true;
                self.prep_upload(job.partner_params, job.callback_url, true, job.allow_new_enroll)
                    .await
            }
            other => other,
        };
        let (upload, timestamp, signature) = prepared.map_err(|error| {
            let outcome = match &error {
                SmileIdError::Refused { .. } => SubmitOutcome::Refused,
                // 429 and 503 say the request was turned away, not processed.
                SmileIdError::Unavailable {
                    http_status: 429 | 503, ..
                } => SubmitOutcome::NotSent,
                error if error.never_sent() => SubmitOutcome::NotSent,
                _ => SubmitOutcome::Unknown,
            };
            fail(SubmitStage::PrepUpload, outcome, None, error)
        })?;
        let smile_job_id = upload.smile_job_id.as_str();

        let info = PackageInfo {
            partner_id: &self.config.credentials.partner_id,
            partner_params: job.partner_params,
            callback_url: job.callback_url,
            timestamp: &timestamp,
            signature: &signature,
            retry: resumed,
            upload_url: &upload.upload_url,
        };
        let packaged = match info_bytes(&info, job.liveness_jpegs.len()) {
            // The entries are stored, so a zip is a copy and a checksum: for a
            // typical submission, handing it to the blocking pool costs more CPU
            // than it moves off the runtime. Only a large one leaves the runtime's thread.
            Ok(info_bytes) if job.image_bytes() <= INLINE_ZIP_BYTES => {
                build_zip(&info_bytes, job.selfie_jpeg, job.liveness_jpegs).map_err(|error| error.to_string())
            }
            Ok(info_bytes) => {
                let (selfie, liveness) = (job.selfie_jpeg.clone(), job.liveness_jpegs.to_vec());
                tokio::task::spawn_blocking(move || build_zip(&info_bytes, &selfie, &liveness))
                    .await
                    .map_err(|error| error.to_string())
                    .and_then(|zipped| zipped.map_err(|error| error.to_string()))
            }
            Err(error) => Err(error.to_string()),
        };
        let zip = packaged.map_err(|error| {
            fail(
                SubmitStage::Package,
                SubmitOutcome::Unknown,
                Some(smile_job_id),
                SmileIdError::Malformed(error),
            )
        })?;
        self.upload_zip(&upload.upload_url, zip.into())
            .await
            .map_err(|error| fail(SubmitStage::Upload, SubmitOutcome::Unknown, Some(smile_job_id), error))?;
        Ok(Submitted {
            smile_job_id: upload.smile_job_id,
            resumed,
        })
    }

    /// `POST /v1/job_status`, with the response signature verified. Retried on
    /// transport errors, 5xx and 429 (honouring `Retry-After`).
    #[tracing::instrument(
        name = "POST job_status",
        skip_all,
        fields(
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            server.address = %self.host(),
            http.response.status_code = tracing::field::Empty,
            smileid.operation = "job_status",
            job_id = %job_id,
        )
    )]
    pub async fn job_status(
        &self,
        user_id: &str,
        job_id: &str,
        options: StatusOptions,
    ) -> Result<JobStatus, SmileIdError> {
        let credentials = &self.config.credentials;
        let response: JobStatusResponse = self
            .with_retries("job_status", || async {
                let (timestamp, signature) = credentials.sign_now();
                let body = JobStatusRequest {
                    partner_id: &credentials.partner_id,
                    user_id,
                    job_id,
                    image_links: options.image_links,
                    history: options.history,
                    source_sdk: SOURCE_SDK,
                    source_sdk_version: SOURCE_SDK_VERSION,
                    timestamp: &timestamp,
                    signature: signature.as_str(),
                };
                let response = self.post_json(&self.endpoint("job_status"), &body, &[]).await?;
                if response.status() == StatusCode::NOT_FOUND {
                    record_answer(response.status());
                    return Err(SmileIdError::NotFound);
                }
                read_json(response).await
            })
            .await?;

        let (Some(timestamp), Some(signature)) = (&response.timestamp, &response.signature) else {
            return Err(SmileIdError::BadSignature);
        };
        if !credentials.verify(timestamp, signature) {
            return Err(SmileIdError::BadSignature);
        }
        let result = ResultEntry::from_value(&response.result);
        let pending_text = match &response.result {
            Value::String(text) => Some(text.clone()),
            _ => None,
        };
        Ok(JobStatus {
            job_complete: response.job_complete,
            job_success: response.job_success,
            code: response.code,
            result,
            pending_text,
            history: response
                .history
                .unwrap_or_default()
                .iter()
                .filter_map(ResultEntry::from_value)
                .collect(),
            image_links: response
                .image_links
                .unwrap_or_default()
                .into_iter()
                .filter_map(|(key, value)| match value {
                    Value::String(text) => Some((key, text)),
                    _ => None,
                })
                .collect(),
        })
    }

    pub(super) async fn with_retries<T, F, Fut>(
        &self,
        call: &'static str,
        mut attempt_once: F,
    ) -> Result<T, SmileIdError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, SmileIdError>>,
    {
        let policy = self.config.retry;
        let mut attempt = 1;
        loop {
            match attempt_once().await {
                Err(error) if error.is_transient() && attempt < policy.max_attempts => {
                    let wait = policy.backoff(attempt, error.retry_after());
                    warn!(call, attempt, wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), error = %error, "smile id call failed, retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }
}

/// Notes an HTTP answer on the current client span; a 5xx marks it failed.
fn record_answer(status: StatusCode) {
    let span = tracing::Span::current();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
}

/// Marks the current client span failed when `outcome` is an error that got no HTTP answer.
fn record_failure<T>(outcome: Result<T, SmileIdError>) -> Result<T, SmileIdError> {
    if let Err(SmileIdError::Connect(_) | SmileIdError::Timeout | SmileIdError::Transport(_)) = &outcome {
        tracing::Span::current().record("otel.status_code", "ERROR");
    }
    outcome
}

/// The most of one answer this client reads. Smile ID answers with a few KiB
/// of JSON (a job's status with its history and image links among the
/// largest); past this, whoever answers is not Smile ID as documented.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// `response`'s body, refused once it is larger than [`MAX_ANSWER_BYTES`]
/// (declared or sent), so that no answer makes this process hold more.
async fn body_of(mut response: reqwest::Response) -> Result<bytes::Bytes, SmileIdError> {
    let too_large = || SmileIdError::Malformed(format!("an answer larger than {MAX_ANSWER_BYTES} bytes"));
    if response
        .content_length()
        .is_some_and(|declared| declared > MAX_ANSWER_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(SmileIdError::from_reqwest)? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

pub(super) async fn read_json<T: DeserializeOwned>(response: reqwest::Response) -> Result<T, SmileIdError> {
    let status = response.status();
    record_answer(status);
    let headers = response.headers().clone();
    let body = body_of(response).await?;
    if !status.is_success() {
        return Err(error_from_status(status, &headers, &body));
    }
    serde_json::from_slice(&body).map_err(|error| SmileIdError::Malformed(error.to_string()))
}

fn error_from_status(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> SmileIdError {
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = headers
            .get(RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        return SmileIdError::Unavailable {
            http_status: status.as_u16(),
            retry_after,
        };
    }
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(ErrorBody {
            error,
            code: Some(code),
        }) => SmileIdError::Refused {
            code: ErrorCode::parse(&code),
            http_status: status.as_u16(),
            // Smile ID's own text; bounded so a hostile body cannot flood our errors.
            message: error.chars().take(200).collect(),
        },
        _ => SmileIdError::Malformed(format!("http {} without an error code", status.as_u16())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_errors_map_to_typed_errors() {
        let headers = HeaderMap::new();
        let refused = error_from_status(
            StatusCode::BAD_REQUEST,
            &headers,
            br#"{"error":"No enrolled user found","code":2210}"#,
        );
        assert!(matches!(
            refused,
            SmileIdError::Refused {
                code: ErrorCode::UserNotEnrolled,
                http_status: 400,
                ..
            }
        ));
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "3".parse().expect("header"));
        let throttled = error_from_status(StatusCode::TOO_MANY_REQUESTS, &headers, b"");
        assert_eq!(throttled.retry_after(), Some(Duration::from_secs(3)));
        assert!(throttled.is_transient());
    }
}
