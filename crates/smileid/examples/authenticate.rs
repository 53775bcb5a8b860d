//! Authenticates a selfie against an enrolled user and prints the result.
//!
//! ```text
//! SMILEID_PARTNER_ID=1234 SMILEID_API_KEY=... \
//!   cargo run -p smileid --example authenticate -- USER_ID selfie.jpg
//! ```
//!
//! `SMILEID_BASE_URL` points it elsewhere than the sandbox, e.g. at a local
//! simulator (`selfie-auth simulator --enroll demo-user`, base URL
//! `http://127.0.0.1:8780/v1`, API key `selfie-auth-simulator-key`).

use std::time::Duration;

use smileid::wire::JOB_TYPE_AUTHENTICATION;
use smileid::{
    ApiKey, ClientConfig, Credentials, Environment, JobSubmission, PartnerParams, SmileIdClient, StatusOptions,
};

const POLLS: u32 = 30;
const POLL_INTERVAL: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(user_id), Some(selfie_path)) = (args.next(), args.next()) else {
        return Err("usage: authenticate USER_ID SELFIE.jpg".into());
    };
    let partner_id = std::env::var("SMILEID_PARTNER_ID").map_err(|_| "set SMILEID_PARTNER_ID")?;
    let api_key = std::env::var("SMILEID_API_KEY").map_err(|_| "set SMILEID_API_KEY")?;
    let environment = std::env::var("SMILEID_BASE_URL").map_or(Environment::Sandbox, Environment::Custom);

    let credentials = Credentials::new(partner_id, ApiKey::new(api_key));
    let client = SmileIdClient::new(ClientConfig::new(environment, credentials))?;
    let selfie = bytes::Bytes::from(std::fs::read(&selfie_path)?);
    let job_id = format!("example-{}", chrono::Utc::now().timestamp_millis());
    let partner_params = PartnerParams {
        user_id: user_id.clone(),
        job_id: job_id.clone(),
        job_type: JOB_TYPE_AUTHENTICATION,
        extra: std::collections::BTreeMap::new(),
    };
    let submitted = client
        .submit(&JobSubmission {
            partner_params: &partner_params,
            callback_url: None,
            selfie_jpeg: &selfie,
            liveness_jpegs: &[],
            may_resume: false,
            allow_new_enroll: false,
        })
        .await?;
    println!("submitted job {job_id} (Smile ID job {})", submitted.smile_job_id);

    // Without a callback URL of our own, poll as the server SDKs do.
    for _ in 0..POLLS {
        let status = client.job_status(&user_id, &job_id, StatusOptions::default()).await?;
        if let Some(result) = status.result.filter(|_| status.job_complete) {
            println!(
                "{}: {} ({:?}, final: {})",
                result.result_code, result.result_text, result.decision, result.is_final
            );
            return Ok(());
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Err(format!("job {job_id} was not complete after {POLLS} polls").into())
}
