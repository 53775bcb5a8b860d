//! Produces a job's results over time and posts each one, signed, to its callback URL.

use serde_json::Value;
use tracing::{debug, warn};

use super::app::App;
use super::results::{self, Outcome};
use super::state::{CallbackMode, UserStanding};

/// Produces `outcomes` in order: the first right away, each later one (human
/// review) after the review delay. Runs in the background.
pub fn process(app: App, job_id: String, outcomes: Vec<Outcome>, selfie_provided: bool) {
    crate::task::spawn(async move {
        let review_delay = app.state().review_delay;
        for (index, outcome) in outcomes.iter().enumerate() {
            if index > 0 {
                tokio::select! {
                    () = tokio::time::sleep(review_delay) => {}
                    () = app.shutdown.cancelled() => return,
                }
            }
            let Some(result) = record(&app, &job_id, outcome, selfie_provided) else {
                return;
            };
            deliver(&app, &job_id, result);
        }
    });
}

/// Appends a result to the job; a final approved registration enrols the user.
fn record(app: &App, job_id: &str, outcome: &Outcome, selfie_provided: bool) -> Option<Value> {
    let mut state = app.state();
    let job = state.jobs.get_mut(job_id)?;
    let result = results::render(outcome, &job.smile_job_id, &job.partner_params, selfie_provided);
    job.results.push(result.clone());
    let enrols = job.job_type == 4 && outcome.is_final && results::is_success(&result);
    let user_id = job.user_id.clone();
    if enrols {
        state.users.insert(user_id, UserStanding::Active);
    }
    Some(result)
}

/// Sends a result to the job's callback URL as the callback mode says.
fn deliver(app: &App, job_id: &str, result: Value) {
    let mut state = app.state();
    let mode = state.callback_mode;
    let callback_delay = state.callback_delay;
    let Some(job) = state.jobs.get_mut(job_id) else { return };
    let Some(url) = job.callback_url.clone() else { return };
    let is_final = result.get("IsFinalResult").and_then(Value::as_str) == Some("true");
    let bodies = match mode {
        CallbackMode::Deliver => vec![result],
        CallbackMode::Duplicate => vec![result.clone(), result],
        CallbackMode::Drop => {
            state.counters.callbacks_dropped += 1;
            return;
        }
        CallbackMode::Reorder if !is_final => {
            job.held_callbacks.push(result);
            return;
        }
        CallbackMode::Reorder => {
            let mut bodies = vec![result];
            bodies.append(&mut job.held_callbacks);
            bodies
        }
    };
    drop(state);
    let app = app.clone();
    crate::task::spawn(async move {
        for mut body in bodies {
            tokio::select! {
                () = tokio::time::sleep(callback_delay) => {}
                () = app.shutdown.cancelled() => return,
            }
            app.sign_into(&mut body);
            let sent = app.http.post(&url).json(&body).send().await;
            let mut state = app.state();
            match sent {
                Ok(response) if response.status().is_success() => {
                    state.counters.callbacks_sent += 1;
                    debug!(status = response.status().as_u16(), "callback delivered");
                }
                Ok(response) => {
                    state.counters.callbacks_failed += 1;
                    warn!(status = response.status().as_u16(), "callback refused by receiver");
                }
                Err(error) => {
                    state.counters.callbacks_failed += 1;
                    warn!(error = %error.without_url(), "callback delivery failed");
                }
            }
        }
    });
}

/// Re-sends every result of a job, in order (the control API's replay).
pub fn replay(app: &App, job_id: &str) -> bool {
    let results = match app.state().jobs.get(job_id) {
        Some(job) => job.results.clone(),
        None => return false,
    };
    for result in results {
        deliver(app, job_id, result);
    }
    true
}
