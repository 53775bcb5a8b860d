//! Reliability under crashes and upstream faults, sized for CI: every stored
//! job reaches a final state, Smile ID never gets a job twice, and no
//! acknowledged callback is lost.

use std::time::Duration;

use rand::{Rng as _, SeedableRng as _};
use selfie_auth::grpc::pb;
use selfie_auth::simulator::{CallbackMode, Endpoint, Fault, RunningSimulator};
use selfie_auth_testkit::*;
use tonic::Code;

const JOBS: usize = 24;

fn job_id(index: usize) -> String {
    format!("rel-{index}")
}

/// Submits job `index` until the service says OK (retrying what it says to
/// retry, and lost connections), for at most `within`.
async fn submit_until_accepted(addr: String, index: usize, within: Duration) -> Result<(), String> {
    let request = if index.is_multiple_of(3) {
        provisional_request(ENROLLED_USER, &job_id(index))
    } else {
        submit_request(ENROLLED_USER, &job_id(index))
    };
    let deadline = tokio::time::Instant::now() + within;
    let mut last = String::new();
    while tokio::time::Instant::now() < deadline {
        let channel = tonic::transport::Endpoint::new(addr.clone())
            .expect("endpoint")
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        let mut client = pb::selfie_auth_client::SelfieAuthClient::new(channel);
        match client.submit_authentication(request.clone()).await {
            Ok(_) => return Ok(()),
            // Only what the contract calls retryable is retried; a lost connection looks like UNAVAILABLE too.
            Err(status) if matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled) => {
                last = format!("{:?} {}", status.code(), reason(&status));
            }
            Err(status) => return Err(format!("job {index}: {status:?}")),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("job {index} not accepted in time: {last}"))
}

/// Waits until every job is final; returns them.
async fn all_final(client: &Client, within: Duration) -> Vec<pb::Job> {
    let final_jobs = eventually(within, || {
        let client = client.clone();
        async move {
            let mut jobs = Vec::new();
            for index in 0..JOBS {
                let job = client
                    .clone()
                    .get_job(pb::GetJobRequest {
                        job_id: job_id(index),
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner();
                if !matches!(job.state(), pb::JobState::Completed | pb::JobState::Failed) {
                    return None;
                }
                jobs.push(job);
            }
            Some(jobs)
        }
    })
    .await;
    if let Some(jobs) = final_jobs {
        jobs
    } else {
        let mut stuck = Vec::new();
        for index in 0..JOBS {
            if let Ok(job) = client
                .clone()
                .get_job(pb::GetJobRequest {
                    job_id: job_id(index),
                    ..Default::default()
                })
                .await
            {
                let job = job.into_inner();
                if !matches!(job.state(), pb::JobState::Completed | pb::JobState::Failed) {
                    stuck.push(format!("{} {:?} {:?}", job.job_id, job.state(), job.error));
                }
            }
        }
        panic!("jobs not final in time: {stuck:?}");
    }
}

/// Smile ID's final result code of a job, as the simulator holds it.
async fn simulator_final_code(sim: &RunningSimulator, job_id: &str) -> Option<String> {
    let job: serde_json::Value = reqwest::get(format!("{}/_control/jobs/{job_id}", sim.url()))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    job["results"]
        .as_array()?
        .iter()
        .rfind(|result| result["IsFinalResult"] == "true" || result["IsFinalResult"] == true)
        .and_then(|result| result["ResultCode"].as_str().map(str::to_owned))
}

/// The same final result as Smile ID, and one Smile ID job per job_id.
async fn assert_faithful(sim: &RunningSimulator, jobs: &[pb::Job]) {
    let counters = sim.counters();
    for job in jobs {
        assert_eq!(
            counters.jobs_created_by_job_id.get(&job.job_id),
            Some(&1),
            "{}: exactly one Smile ID job",
            job.job_id
        );
        assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
        let stored = job.result.as_ref().map(|result| result.result_code.clone());
        assert_eq!(
            stored,
            simulator_final_code(sim, &job.job_id).await,
            "{}: the stored final result is Smile ID's",
            job.job_id
        );
    }
}

/// `kill -9` twice during concurrent submissions and callbacks, then restarts:
/// callers who retry as told see every job through, once.
async fn crash_twice(database_url: &str) {
    let sim = start_simulator(|config| config.review_delay = Duration::from_millis(400)).await;
    // Slow uploads, so the kills land while submissions are on the wire.
    sim.set_fault(
        Endpoint::Put,
        Fault {
            latency_ms: Some(250),
            ..Fault::default()
        },
    );
    let (grpc_port, http_port) = (free_port(), free_port());
    let grpc_addr = format!("127.0.0.1:{grpc_port}");
    let http_addr = format!("127.0.0.1:{http_port}");
    let callback_url = format!("http://{http_addr}/callbacks/smileid");
    let env = [
        ("DATABASE_URL", database_url),
        ("SELFIE_AUTH_GRPC_ADDR", grpc_addr.as_str()),
        ("SELFIE_AUTH_HTTP_ADDR", http_addr.as_str()),
        ("SELFIE_AUTH_CALLBACK_URL", callback_url.as_str()),
        ("SELFIE_AUTH_RECONCILE_AFTER", "1s"),
        ("SELFIE_AUTH_RECONCILE_MAX_INTERVAL", "2s"),
        ("SELFIE_AUTH_SUBMIT_LEASE", "2s"),
    ];
    let binary = env!("CARGO_BIN_EXE_selfie-auth");
    let mut served = ServeProcess::start(binary, &sim.v1_url(), &env).await;
    let addr = format!("http://{grpc_addr}");
    let callers: Vec<_> = (0..JOBS)
        .map(|index| selfie_auth::task::spawn(submit_until_accepted(addr.clone(), index, Duration::from_mins(1))))
        .collect();
    for pause in [Duration::from_millis(300), Duration::from_millis(700)] {
        tokio::time::sleep(pause).await;
        served.kill().await;
        served = ServeProcess::start(binary, &sim.v1_url(), &env).await;
    }
    for caller in callers {
        caller.await.expect("caller").expect("accepted");
    }
    let jobs = all_final(&served.client().await, Duration::from_mins(1)).await;
    assert_faithful(&sim, &jobs).await;
    served.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_kill_9_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    crash_twice(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_survive_kill_9_on_postgres() {
    let Some(url) = pg_schema_url().await else { return };
    crash_twice(&url).await;
}

/// A fault for a random endpoint, once.
fn random_fault(rng: &mut impl rand::Rng) -> (Endpoint, Fault) {
    let once = |fault: Fault| Fault {
        times: Some(1),
        ..fault
    };
    match rng.random_range(0..5) {
        0 => (
            Endpoint::Upload,
            once(Fault {
                status: Some(503),
                ..Fault::default()
            }),
        ),
        1 => (
            Endpoint::Upload,
            once(Fault {
                status: Some(502),
                ..Fault::default()
            }),
        ),
        2 => (
            Endpoint::Put,
            once(Fault {
                status: Some(500),
                ..Fault::default()
            }),
        ),
        3 => (
            Endpoint::Put,
            once(Fault {
                hang: true,
                ..Fault::default()
            }),
        ),
        _ => (
            Endpoint::JobStatus,
            once(Fault {
                status: Some(500),
                ..Fault::default()
            }),
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_is_final_within_its_bound_under_upstream_faults() {
    let sim = start_simulator(|config| config.review_delay = Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let flags = [
        "--submit-retry-budget",
        "3s",
        "--reconcile-after",
        "500ms",
        "--reconcile-max-interval",
        "1s",
        "--abandon-after",
        "10s",
        "--reconcile-give-up",
        "30s",
        "--smileid-request-timeout",
        "1s",
    ];
    let service = start_service(config_with(&sim, &sqlite_url(&dir), &flags)).await;
    let addr = format!("http://{}", service.running.grpc_addr);
    let chaos = {
        let sim_url = sim.url().to_owned();
        selfie_auth::task::spawn(async move {
            let http = reqwest::Client::new();
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            let modes = ["deliver", "drop", "duplicate", "reorder"];
            for _ in 0..60 {
                let (endpoint, fault) = random_fault(&mut rng);
                let endpoint = serde_json::to_value(endpoint).expect("endpoint");
                let _ = http
                    .put(format!(
                        "{sim_url}/_control/faults/{}",
                        endpoint.as_str().unwrap_or_default()
                    ))
                    .json(&fault)
                    .send()
                    .await;
                let mode = modes[rng.random_range(0..modes.len())];
                let _ = http
                    .put(format!("{sim_url}/_control/callbacks"))
                    .json(&serde_json::json!({ "mode": mode }))
                    .send()
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let callers: Vec<_> = (0..JOBS)
        .map(|index| selfie_auth::task::spawn(submit_until_accepted(addr.clone(), index, Duration::from_mins(1))))
        .collect();
    for caller in callers {
        caller.await.expect("caller").expect("accepted");
    }
    chaos.await.expect("chaos");
    sim.set_callback_mode(CallbackMode::Drop);
    sim.clear_faults();
    // Callbacks stay dropped: the reconciler alone must finish what remains.
    let jobs = all_final(&service.client().await, Duration::from_secs(30)).await;
    assert_faithful(&sim, &jobs).await;
    service.stop().await;
}
