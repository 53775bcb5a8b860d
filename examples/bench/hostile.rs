//! The well-behaved caller beside a hostile one: its GetJob one at a time and
//! its submissions four at a time, alone and then while another client stalls
//! hundreds of request bodies, trickles one-byte connections, floods
//! submissions under its own identity, opens thousands of health watches and
//! sends header-only callbacks, and the simulator posts Smile ID's callbacks.
//! Against a `selfie-auth serve` process, so its memory is the service's own.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use selfie_auth::grpc::pb;
use selfie_auth::simulator;
use selfie_auth_testkit::RawGrpc;
use tokio::io::AsyncWriteExt as _;

use super::{
    Client, CoreWait, Echo, Report, Sample, Serving, apart_on, client_for, jpeg_of, measure, serving, smile_id_client,
    start_echo, submit_request, verdict,
};

/// Submissions the flood keeps in flight: twice its share.
const FLOOD_CALLS: usize = 128;
/// The honest caller's calls each time it measures: enough that a p99 is the
/// thirtieth and the sixth slowest call, not the tenth and the second.
const HONEST_GETS: usize = 3000;
const HONEST_SUBMISSIONS: usize = 600;
/// The name of the honest caller's runtime threads.
const HONEST_THREADS: &str = "honest-caller";

/// The chart's memory limit.
const CHART_MEMORY_LIMIT: u64 = 512 * 1024 * 1024;

pub(super) fn identified<T>(identity: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    let header = format!("URI=spiffe://bench/ns/pay/sa/{identity}");
    request
        .metadata_mut()
        .insert("x-forwarded-client-cert", header.parse().expect("ascii"));
    request
}

/// The honest caller's measures, how long its own thread waited for its core
/// during the measured GetJobs, and (in `refused`) how many of its calls were refused.
/// `flood`, when given, is counted while the honest caller submits.
async fn honest(
    client: &Client,
    selfie: &Bytes,
    round: &str,
    refused: &Arc<AtomicUsize>,
    flood: Option<&Flood>,
) -> Honest {
    let gets = |calls: usize| {
        let (client, refused) = (client.clone(), refused.clone());
        measure(calls, 1, move |_| {
            let (mut client, refused) = (client.clone(), refused.clone());
            async move {
                let request = pb::GetJobRequest {
                    job_id: "honest-target".into(),
                    ..Default::default()
                };
                if client.get_job(identified("honest", request)).await.is_err() {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    // Unmeasured: the first calls on a new connection, and whatever the
    // section before left running, would set the tail of the figure alone.
    gets(HONEST_GETS / 10).await;
    let waited_before = CoreWait::of_threads(&[HONEST_THREADS]);
    let gets = gets(HONEST_GETS).await;
    let gets_waited = CoreWait::of_threads(&[HONEST_THREADS]).since(waited_before);
    let flood_before = flood.map(Flood::counts);
    let submissions = {
        let (client, refused, selfie, round) = (client.clone(), refused.clone(), selfie.clone(), round.to_owned());
        measure(HONEST_SUBMISSIONS, 4, move |index| {
            let (mut client, refused) = (client.clone(), refused.clone());
            let request = submit_request(format!("honest-{round}-{index}"), &selfie, &[]);
            async move {
                if client
                    .submit_authentication(identified("honest", request))
                    .await
                    .is_err()
                {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
        .await
    };
    let flood_rate = flood
        .zip(flood_before)
        .map(|(flood, before)| (flood.counts().0 - before.0) as f64 / submissions.elapsed.as_secs_f64());
    Honest {
        gets,
        submissions,
        gets_waited,
        flood_rate,
    }
}

/// What the honest caller measured in one round.
struct Honest {
    gets: Sample,
    submissions: Sample,
    gets_waited: CoreWait,
    /// The flood's accepted submissions a second while these were measured.
    flood_rate: Option<f64>,
}

/// Peak resident memory of process `pid` (VmHWM).
fn peak_resident(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

/// What the service at `http` has timed so far, from its `/metrics`.
#[derive(Default)]
struct Timed {
    /// Successful GetJobs within each bucket of `rpc_server_duration_seconds`.
    getjobs: Vec<(u64, u64)>,
    /// Samples of `selfie_auth_runtime_lag_seconds` within each bucket.
    lag: Vec<(u64, u64)>,
    /// Their sum, in seconds.
    lag_sum: f64,
}

impl Timed {
    async fn of(http: SocketAddr) -> Self {
        let Ok(response) = reqwest::get(format!("http://{http}/metrics")).await else {
            return Self::default();
        };
        let text = response.text().await.unwrap_or_default();
        Self {
            getjobs: buckets(
                &text,
                "rpc_server_duration_seconds_bucket{",
                &["rpc_method=\"GetJob\"", "rpc_grpc_status_code=\"0\""],
            ),
            lag: buckets(&text, "selfie_auth_runtime_lag_seconds_bucket{", &[]),
            lag_sum: text
                .lines()
                .find_map(|line| line.strip_prefix("selfie_auth_runtime_lag_seconds_sum ")?.parse().ok())
                .unwrap_or_default(),
        }
    }

    /// The mean lag sampled between `before` and `self`, in milliseconds.
    fn mean_lag_ms(&self, before: &Self) -> Option<f64> {
        let count = |timed: &Self| timed.lag.last().map_or(0, |&(_, count)| count);
        let samples = count(self).checked_sub(count(before)).filter(|&samples| samples > 0)?;
        Some(1000.0 * (self.lag_sum - before.lag_sum) / samples as f64)
    }
}

/// How many observations of the histogram whose bucket lines start with
/// `series` (and carry every one of `labels`) fell within each bucket:
/// (upper bound in microseconds, `u64::MAX` for the last; count within), by bound.
fn buckets(text: &str, series: &str, labels: &[&str]) -> Vec<(u64, u64)> {
    let mut buckets: Vec<(u64, u64)> = Vec::new();
    for line in text
        .lines()
        .filter(|line| line.starts_with(series) && labels.iter().all(|label| line.contains(label)))
    {
        let bound = line.split("le=\"").nth(1).and_then(|rest| rest.split('"').next());
        let count = line.rsplit(' ').next().and_then(|count| count.parse::<u64>().ok());
        let (Some(bound), Some(count)) = (bound, count) else {
            continue;
        };
        let micros = match bound {
            "+Inf" => u64::MAX,
            seconds => match seconds.parse::<f64>() {
                Ok(seconds) => (seconds * 1e6).round() as u64,
                Err(_) => continue,
            },
        };
        match buckets.iter_mut().find(|(kept, _)| *kept == micros) {
            Some((_, kept)) => *kept += count,
            None => buckets.push((micros, count)),
        }
    }
    buckets.sort_unstable();
    buckets
}

/// The bucket bound within which 99% of the observations between `before`
/// and `after` fell, in milliseconds.
fn p99_within(before: &[(u64, u64)], after: &[(u64, u64)]) -> Option<f64> {
    let timed: Vec<(u64, u64)> = after
        .iter()
        .map(|&(bound, count)| {
            let earlier = before
                .iter()
                .find(|(kept, _)| *kept == bound)
                .map_or(0, |(_, count)| *count);
            (bound, count.saturating_sub(earlier))
        })
        .collect();
    let total = timed.last()?.1;
    let bound = timed
        .iter()
        .find(|(_, within)| *within as f64 >= 0.99 * total as f64)?
        .0;
    (total > 0 && bound != u64::MAX).then_some(bound as f64 / 1000.0)
}

/// What the submission flood got.
#[derive(Default)]
struct Flood {
    accepted: AtomicUsize,
    refused: AtomicUsize,
}

impl Flood {
    fn counts(&self) -> (usize, usize) {
        (
            self.accepted.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

/// Reads what the service sends (its HTTP/2 settings, an error) until it
/// closes the connection, or for `longest`.
async fn until_closed(socket: &mut tokio::net::TcpStream, longest: Duration) {
    let mut buffer = [0u8; 512];
    let _ = tokio::time::timeout(longest, async {
        while let Ok(1..) = tokio::io::AsyncReadExt::read(socket, &mut buffer).await {}
    })
    .await;
}

/// Starts every hostile client; they run until `stop`. `greedy` counts the
/// flood's submissions the service took and those it refused.
async fn attack(
    grpc: SocketAddr,
    http: SocketAddr,
    stop: Arc<AtomicBool>,
    selfie: Bytes,
    greedy: Arc<Flood>,
    attacker: Attacker,
) -> anyhow::Result<()> {
    // Hundreds of request bodies announced and never sent, on four connections.
    let (mut connections, mut stalled) = (Vec::new(), Vec::new());
    for connection in 0..4 {
        let mut raw = RawGrpc::connect(grpc).await;
        for stream in 0..100 {
            let path = if (connection + stream) % 2 == 0 {
                "/selfieauth.v1.SelfieAuth/GetJob"
            } else {
                "/selfieauth.v1.SelfieAuth/SubmitAuthentication"
            };
            let mut partial = vec![0u8];
            partial.extend_from_slice(&(1024 * 1024u32).to_be_bytes());
            partial.extend_from_slice(&[0x0A; 10]);
            stalled.push(raw.call(path, Bytes::from(partial), false).await);
        }
        connections.push(raw);
    }
    {
        let stop = stop.clone();
        selfie_auth::task::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            drop((connections, stalled));
        });
    }
    // One-byte connections, reopened as the service closes them.
    for _ in 0..200 {
        let stop = stop.clone();
        selfie_auth::task::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut socket) = tokio::net::TcpStream::connect(grpc).await {
                    let _ = socket.write_all(b"P").await;
                    until_closed(&mut socket, Duration::from_secs(15)).await;
                }
            }
        });
    }
    if let Attacker::AlsoACaller { paced } = attacker {
        flood(grpc, &stop, &selfie, &greedy, paced.map(f64::from)).await?;
    }
    // Thousands of health watches.
    let channel = super::client_channel(grpc).await?;
    for _ in 0..2000 {
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        selfie_auth::task::spawn(async move {
            if let Ok(response) = health.watch(tonic_health::pb::HealthCheckRequest::default()).await {
                let mut stream = response.into_inner();
                while let Ok(Some(_)) = stream.message().await {}
            }
        });
    }
    // Callbacks that announce 2 MiB and send one byte.
    for _ in 0..64 {
        let stop = stop.clone();
        selfie_auth::task::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(mut socket) = tokio::net::TcpStream::connect(http).await {
                    let _ = socket
                        .write_all(b"POST /callbacks/smileid HTTP/1.1\r\nHost: x\r\nContent-Length: 2097152\r\n\r\n{")
                        .await;
                    until_closed(&mut socket, Duration::from_secs(40)).await;
                }
            }
        });
    }
    Ok(())
}

/// A submission flood under one identity, each call on a connection of its
/// own, so that calls waiting for a place do not hold up the others' bodies;
/// as fast as they are answered, or `paced` to at most that many a second.
async fn flood(
    grpc: SocketAddr,
    stop: &Arc<AtomicBool>,
    selfie: &Bytes,
    greedy: &Arc<Flood>,
    paced: Option<f64>,
) -> anyhow::Result<()> {
    let pace = paced.map(|per_second| {
        let mut every = tokio::time::interval(Duration::from_secs_f64(1.0 / per_second.max(1.0)));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Arc::new(tokio::sync::Mutex::new(every))
    });
    for worker in 0..FLOOD_CALLS {
        let (mut client, stop, selfie) = (client_for(grpc).await?, stop.clone(), selfie.clone());
        let (greedy, pace) = (greedy.clone(), pace.clone());
        selfie_auth::task::spawn(async move {
            let mut index = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some(pace) = &pace {
                    pace.lock().await.tick().await;
                }
                let request = submit_request(format!("greedy-{worker}-{index}"), &selfie, &[]);
                let answered = client.submit_authentication(identified("greedy", request)).await;
                let counter = if answered.is_ok() {
                    &greedy.accepted
                } else {
                    &greedy.refused
                };
                counter.fetch_add(1, Ordering::Relaxed);
                index += 1;
            }
        });
    }
    Ok(())
}

/// The honest caller's two rows, GetJob's and its submissions', each figure
/// `(under attack, alone)`, judged by `judge`.
fn latency_rows(
    report: &mut Report,
    row: &dyn Fn(&str) -> String,
    figures: [(&Sample, &Sample); 2],
    judge: impl Fn(&Sample, &Sample) -> String,
) {
    let measures = ["GetJob, 1 in flight", "SubmitAuthentication, 4 in flight"];
    for (measure, (ours, solo)) in measures.into_iter().zip(figures) {
        report.row(
            &row(measure),
            format!("p50 {:.2} ms, p99 {:.2} ms", ours.p50_ms(), ours.p99_ms()),
            format!("alone: p50 {:.2} ms, p99 {:.2} ms", solo.p50_ms(), solo.p99_ms()),
            judge(ours, solo),
        );
    }
}

/// How long the honest caller's own thread waited for its core during its
/// measured GetJobs: the share of their latency that is the benchmark's, on
/// the core it shares with Smile ID's simulator and the attacking client.
fn core_wait_row(report: &mut Report, row: &dyn Fn(&str) -> String, attacked: CoreWait, solo: CoreWait) {
    report.row(
        &row("the honest caller's own thread waiting for its core during its GetJobs"),
        attacked.describe(),
        format!("alone: {}", solo.describe()),
        "the client's side of GetJob's latency (schedstat), not the server's".into(),
    );
}

/// The honest caller's measures, made on its own runtime with its own connection.
async fn honest_apart(
    runtime: &tokio::runtime::Runtime,
    grpc: SocketAddr,
    selfie: &Bytes,
    round: &'static str,
    refused: &Arc<AtomicUsize>,
    flood: Option<&Arc<Flood>>,
) -> anyhow::Result<Honest> {
    let (selfie, refused, flood) = (selfie.clone(), refused.clone(), flood.cloned());
    Ok(runtime
        .spawn(async move {
            let client = client_for(grpc).await.expect("the honest caller connects");
            honest(&client, &selfie, round, &refused, flood.as_deref()).await
        })
        .await?)
}

/// Who attacks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Attacker {
    /// Anyone who can reach the ports: no identity, no permission.
    Anyone,
    /// That, and a caller allowed to submit, flooding submissions as fast as
    /// they are answered, or at most `paced` a second.
    AlsoACaller { paced: Option<u32> },
}

impl Attacker {
    const FLOODING: Self = Self::AlsoACaller { paced: None };

    fn floods(self) -> bool {
        matches!(self, Self::AlsoACaller { .. })
    }
}

/// Where the service runs beside its callers and Smile ID.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Every process on every core.
    Shared,
    /// The service on the first half of the cores, everything else on the rest,
    /// as it would be with its callers and Smile ID on machines of their own.
    OwnCores,
}

/// How long Smile ID takes to answer each call of a submission.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SmileIdAnswers {
    /// The simulator's own speed: four submissions in flight keep the service
    /// busy, so an equal share is at best twice the latency alone.
    AtOnce,
    /// After this many milliseconds, the prep upload and the upload each: a
    /// caller's four in flight then leave the service mostly idle, as with
    /// Smile ID across a network (whose calls take longer still).
    After(u64),
}

impl SmileIdAnswers {
    fn label(self) -> String {
        match self {
            Self::AtOnce => String::new(),
            Self::After(ms) => format!(", Smile ID answering in {ms} ms"),
        }
    }
}

/// The cores of this machine: the service takes the first half when it has
/// cores of its own, the benchmark's runtimes the rest.
fn halves() -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (0..cores / 2, cores / 2..cores)
}

impl Placement {
    fn label(self) -> &'static str {
        match self {
            Self::Shared => "",
            Self::OwnCores => ", service on cores of its own",
        }
    }
}

/// The hostile rows: once with every process sharing the cores, once with the
/// service on cores of its own (where `taskset` exists and there are two
/// cores or more), which shows what the service itself does with a flood.
pub async fn beside_an_attacker(report: &mut Report) -> anyhow::Result<()> {
    let binary = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/selfie-auth");
    if !binary.exists() {
        report
            .notes
            .push("Figures under attack skipped: build `target/release/selfie-auth` first.".into());
        return Ok(());
    }
    let at_once = SmileIdAnswers::AtOnce;
    let shared_rate = under_attack(report, &binary, Placement::Shared, Attacker::FLOODING, at_once).await?;
    floor_under_flood(report, Placement::Shared, Some(shared_rate)).await?;
    let taskset = std::process::Command::new("taskset").arg("-V").output().is_ok();
    if !halves().0.is_empty() && taskset {
        let own = Placement::OwnCores;
        let flood_rate = under_attack(report, &binary, own, Attacker::FLOODING, at_once).await?;
        under_attack(report, &binary, own, Attacker::FLOODING, SmileIdAnswers::After(50)).await?;
        under_attack(report, &binary, own, Attacker::Anyone, at_once).await?;
        // The flood a caller's rate limit would leave: a third of what it took.
        let paced = Some((flood_rate / 3.0).round() as u32);
        under_attack(report, &binary, own, Attacker::AlsoACaller { paced }, at_once).await?;
        floor_under_flood(report, own, Some(flood_rate)).await?;
        floor_under_flood(report, own, None).await?;
    } else {
        report
            .notes
            .push("Figures with the service on cores of its own skipped: they need `taskset` and 2 cores.".into());
    }
    Ok(())
}

/// A runtime for the benchmark's side of the attack: on the cores the service
/// leaves to it when it has its own.
fn beside(name: &str, workers: usize, nice: u8, placement: Placement) -> anyhow::Result<tokio::runtime::Runtime> {
    let ours = (placement == Placement::OwnCores).then(|| halves().1.collect());
    super::apart_on(name, workers, nice, ours)
}

/// The honest caller's runtime. It stands for a client on a machine of its
/// own, so on the core it shares with the simulator and the attacking client
/// it runs first ([`super::ahead_on`]): what it measures is then the
/// service's, not the wait for its own core (its row "waiting for its core").
fn honest_caller(placement: Placement) -> anyhow::Result<tokio::runtime::Runtime> {
    let ours = (placement == Placement::OwnCores).then(|| halves().1.collect());
    super::ahead_on(HONEST_THREADS, ours)
}

/// One attack's rows; answers how many of the flood's submissions a second
/// the service accepted while the honest caller measured.
async fn under_attack(
    report: &mut Report,
    binary: &Path,
    placement: Placement,
    attacker_is: Attacker,
    smile_id_answers: SmileIdAnswers,
) -> anyhow::Result<f64> {
    // The honest caller waits for none of the attacker's tasks, as a separate
    // client would not. The attacker stands for machines elsewhere: at the
    // lowest priority it takes only the CPU the service, Smile ID and the honest
    // caller leave idle, and still pushes as many submissions through the
    // service as it takes (the `greedy caller` row says how many).
    let (smile_id, caller, attacker) = (
        beside("smile-id", 1, 0, placement)?,
        honest_caller(placement)?,
        beside("attacker", 2, 19, placement)?,
    );
    let sim = smile_id
        .spawn(simulator::start(super::simulator_config(), "127.0.0.1:0".parse()?))
        .await??;
    if let SmileIdAnswers::After(ms) = smile_id_answers {
        for endpoint in [simulator::Endpoint::Upload, simulator::Endpoint::Put] {
            let fault = simulator::Fault {
                latency_ms: Some(ms),
                ..simulator::Fault::default()
            };
            sim.set_fault(endpoint, fault);
        }
    }
    let dir = tempfile::tempdir()?;
    let selfie = jpeg_of(330, 3);
    let serve = serving(
        &sim,
        |http| {
            let mut command = match placement {
                Placement::Shared => tokio::process::Command::new(binary),
                Placement::OwnCores => {
                    let service = halves().0;
                    let mut pinned = tokio::process::Command::new("taskset");
                    pinned
                        .arg("-c")
                        .arg(format!("{}-{}", service.start, service.end - 1))
                        .arg(binary);
                    pinned
                }
            };
            command
                .env("SELFIE_AUTH_CALLBACK_URL", format!("http://{http}/callbacks/smileid"))
                .env(
                    "DATABASE_URL",
                    format!("sqlite://{}", dir.path().join("attack.db").display()),
                )
                .env("SELFIE_AUTH_TRUST_XFCC", "true")
                .env("SELFIE_AUTH_XFCC_TRUSTED_PEERS", "127.0.0.1")
                // The chart's memory budgets.
                .env("SELFIE_AUTH_REQUEST_MEMORY_BYTES", "67108864")
                .env("SELFIE_AUTH_SUBMISSION_MEMORY_BYTES", "67108864")
                .env("SELFIE_AUTH_CALLER_REQUEST_MEMORY_BYTES", "33554432")
                .env("RUST_LOG", "error");
            command
        },
        |client| {
            let target = submit_request("honest-target".into(), &selfie, &[]);
            async move {
                let mut client = client;
                client.submit_authentication(identified("honest", target)).await.is_ok()
            }
        },
    )
    .await?;
    let Serving {
        mut child,
        pid,
        grpc,
        http,
        client,
    } = serve;
    let refused = Arc::new(AtomicUsize::new(0));
    drop(client);
    let timed_before = Timed::of(http).await;
    let service_cpu =
        || super::cpu_seconds_of(&std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default());
    let (cpu_before_solo, started_solo) = (service_cpu(), Instant::now());
    let Honest {
        gets: solo_gets,
        submissions: solo_submissions,
        gets_waited: solo_waited,
        ..
    } = honest_apart(&caller, grpc, &selfie, "solo", &refused, None).await?;
    let cpu_solo = (service_cpu() - cpu_before_solo) / started_solo.elapsed().as_secs_f64();
    let timed_solo = Timed::of(http).await;
    let solo_refused = refused.swap(0, Ordering::Relaxed);

    let stop = Arc::new(AtomicBool::new(false));
    let before = sim.counters();
    let greedy = Arc::new(Flood::default());
    attacker
        .spawn(attack(
            grpc,
            http,
            stop.clone(),
            selfie.clone(),
            greedy.clone(),
            attacker_is,
        ))
        .await??;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu_before = service_cpu();
    let started = Instant::now();
    let greedy_before = greedy.counts();
    let Honest {
        gets,
        submissions,
        gets_waited,
        flood_rate,
    } = honest_apart(&caller, grpc, &selfie, "attacked", &refused, Some(&greedy)).await?;
    let attacked_refused = refused.load(Ordering::Relaxed);
    let timed_attacked = Timed::of(http).await;
    let during = started.elapsed();
    let service_cores = match placement {
        Placement::Shared => halves().1.end,
        Placement::OwnCores => halves().0.len(),
    };
    let busy = (service_cpu() - cpu_before) / during.as_secs_f64() / service_cores as f64;
    let busy_alone = cpu_solo / service_cores as f64;
    let greedy_during = {
        let now = greedy.counts();
        (now.0 - greedy_before.0, now.1 - greedy_before.1)
    };
    let after = sim.counters();
    stop.store(true, Ordering::Relaxed);
    let peak = peak_resident(pid).unwrap_or_default();
    child.kill().await?;
    smile_id.spawn(sim.shutdown()).await?;
    smile_id.shutdown_background();
    caller.shutdown_background();
    attacker.shutdown_background();

    let within =
        |ours: &Sample, solo: &Sample| ours.p50_ms() <= 2.0 * solo.p50_ms() && ours.p99_ms() <= 2.0 * solo.p99_ms();
    let (by, paced) = match attacker_is {
        Attacker::Anyone => (" with no identity", String::new()),
        Attacker::AlsoACaller { paced: None } => ("", String::new()),
        // A row is replaced by its label when the benchmark runs again, so the
        // rate is in the greedy caller's row, not here.
        Attacker::AlsoACaller { paced: Some(_) } => ("", ", the flood paced to a third of its rate".to_owned()),
    };
    let row = |what: &str| {
        format!(
            "under attack{by}{}{}{paced}: {what}",
            placement.label(),
            smile_id_answers.label()
        )
    };
    latency_rows(
        report,
        &row,
        [(&gets, &solo_gets), (&submissions, &solo_submissions)],
        |ours, solo| {
            verdict(
                within(ours, solo) && attacked_refused == 0,
                format!(
                    "{:.1}x / {:.1}x alone, {attacked_refused} refused (alone {solo_refused}); target <= 2x, none refused",
                    ours.p50_ms() / solo.p50_ms(),
                    ours.p99_ms() / solo.p99_ms()
                ),
            )
        },
    );
    core_wait_row(report, &row, gets_waited, solo_waited);
    let within_ms = |ms: Option<f64>| ms.map_or_else(|| "?".to_owned(), |ms| format!("within {ms} ms"));
    report.row(
        &row("GetJob as the service timed it, p99"),
        within_ms(p99_within(&timed_solo.getjobs, &timed_attacked.getjobs)),
        format!(
            "alone: {}",
            within_ms(p99_within(&timed_before.getjobs, &timed_solo.getjobs))
        ),
        "the rest of the caller's p99 is spent on the connection".into(),
    );
    let lag = |before: &Timed, after: &Timed| {
        let mean = after
            .mean_lag_ms(before)
            .map_or_else(|| "?".to_owned(), |ms| format!("{ms:.2} ms"));
        format!("mean {mean}, p99 {}", within_ms(p99_within(&before.lag, &after.lag)))
    };
    report.row(
        &row("wait for the threads serving connections, as the service sampled it"),
        lag(&timed_solo, &timed_attacked),
        format!("alone: {}", lag(&timed_before, &timed_solo)),
        "selfie_auth_runtime_lag_seconds: what work that became ready waited, a call's request among it".into(),
    );
    let (sent, failed) = (
        after.callbacks_sent - before.callbacks_sent,
        after.callbacks_failed - before.callbacks_failed,
    );
    report.row(
        &row("Smile ID callbacks acknowledged"),
        format!("{} of {sent}", sent - failed),
        format!("during {:.1} s of attack", during.as_secs_f64()),
        verdict(failed == 0 && sent > 0, "target: every one".into()),
    );
    let greedy_rate = greedy_during.0 as f64 / during.as_secs_f64();
    if attacker_is.floods() {
        report.row(
            &row("the greedy caller's submissions accepted"),
            format!(
                "{greedy_rate:.0} /s ({:.0} /s refused)",
                greedy_during.1 as f64 / during.as_secs_f64()
            ),
            {
                // At a fixed number in flight, latency is in flight over
                // throughput: half of what both got is the bound of an equal
                // share, for a caller that wants more than half.
                let both = submissions.rate() + flood_rate.unwrap_or(greedy_rate);
                format!(
                    "the honest caller's: {:.0} /s under attack ({:.0}% of both meanwhile), {:.0} /s alone; \
                     an equal share of both ({:.0} /s) would take {:.1}x as long as alone",
                    submissions.rate(),
                    100.0 * submissions.rate() / both,
                    solo_submissions.rate(),
                    both / 2.0,
                    (solo_submissions.rate() / (both / 2.0)).max(1.0)
                )
            },
            format!(
                "what the flood pushed through the service meanwhile, its {service_cores} core(s) {:.0}% busy \
                 ({:.0}% with the honest caller alone)",
                100.0 * busy,
                100.0 * busy_alone
            ),
        );
    }
    report.row(
        &row("peak resident memory (serve)"),
        format!("{:.0} MiB", peak as f64 / 1_048_576.0),
        "the chart's limit: 512 MiB".into(),
        verdict(peak <= CHART_MEMORY_LIMIT, "target <= the chart's limit".into()),
    );
    let missed = !(within(&gets, &solo_gets) && within(&submissions, &solo_submissions));
    if missed && attacker_is == Attacker::FLOODING && smile_id_answers == SmileIdAnswers::AtOnce {
        let note = "Under attack, the well-behaved caller's latency misses 2x. Alone, its four submissions in flight \
                    hold every turn the service has for checking and storing jobs (four a core) through most of their \
                    time: two durable writes each, which wait for the store's writer, and it runs only when the core is \
                    otherwise idle. A flood as demanding gets its turns as often, so the honest caller keeps at most \
                    half the throughput it had alone, and at four in flight its latency is then at least twice \
                    (latency = calls in flight / throughput). The greedy caller's row gives the latency an equal share of what both \
                    callers got through would mean. That bound is above 2x when the service gets less through under \
                    attack than the honest caller did alone (the flood's connections are served at full priority, as \
                    everyone's are); what is left above the bound is the share the honest caller gets below half."
            .to_owned();
        if !report.notes.contains(&note) {
            report.notes.push(note);
        }
    }
    if placement == Placement::Shared {
        report.notes.push(format!(
            "Under attack: 400 request bodies announced (1 MiB each) and never sent, 200 one-byte connections \
             reopened as they are closed, 128 concurrent submissions under one identity (each on a connection of \
             its own, so that those waiting for a place do not hold up the others' bodies), 2000 health watches \
             and 64 header-only callbacks, while the well-behaved caller (its own identity, on a runtime and \
             connection of its own, as a separate client would be) measures again: {HONEST_GETS} GetJobs one at a \
             time, then {HONEST_SUBMISSIONS} submissions four at a time; the simulator has a runtime \
             of its own, and the attacking client runs at the lowest CPU priority, as a machine elsewhere would. \
             The well-behaved caller's one thread runs under SCHED_FIFO{}, so that on the core it shares with the \
             simulator and the attacking client it does not wait for them, as a client on a machine of its own \
             would not (its row \"waiting for its core\"); alone and under attack alike. \
             With the service on cores of its own, the service runs on the first half of the cores and the \
             callers and the simulator on the rest. \"With no identity\": the same attack without the submission \
             flood, which takes a caller allowed to submit; everything else anyone who reaches the ports can do. \
             \"Smile ID answering in 50 ms\": the simulator waits that long before answering each prep upload and \
             upload, so the honest caller's four submissions in flight no longer keep the service busy by \
             themselves, while the flood's 128 still do. \"GetJob as the service timed it\": its own \
             rpc_server_duration_seconds, from the call reaching its handlers to their answer, without the time \
             request and answer spend on the connection (the bound of the histogram bucket the 99th percentile \
             falls in). \"The flood paced to a third of its rate\": the same attack with the flood held to a \
             third of the rate the service took it at, as a rate limit in the access policy would hold one caller.",
            if super::ahead_refused() {
                " where the benchmark may set it (here it could not: it ran at normal priority; run as root or \
                 with CAP_SYS_NICE)"
            } else {
                ""
            }
        ));
    }
    Ok(greedy_rate)
}

/// The floor of the flood's rows: the honest caller's GetJobs and submissions
/// against a bare tonic gateway (no identity, storage or limits), placed as the
/// service was, alone and under the same submission flood: `paced` to the rate
/// the service accepted it at, or as fast as the gateway answers. As the
/// service does, the gateway answers reads on the connections' runtime and
/// does each submission's work on one ten nice steps below.
async fn floor_under_flood(report: &mut Report, placement: Placement, paced: Option<f64>) -> anyhow::Result<()> {
    let (smile_id, caller, attacker) = (
        beside("smile-id", 1, 0, placement)?,
        honest_caller(placement)?,
        beside("attacker", 2, 19, placement)?,
    );
    let cores: Vec<usize> = match placement {
        Placement::Shared => (0..halves().1.end).collect(),
        Placement::OwnCores => halves().0.collect(),
    };
    let pinned = (placement == Placement::OwnCores).then(|| cores.clone());
    let (connections, below) = (
        apart_on("floor", cores.len(), 0, pinned.clone())?,
        apart_on("floor-below", cores.len(), 10, pinned)?,
    );
    let sim = smile_id
        .spawn(simulator::start(super::simulator_config(), "127.0.0.1:0".parse()?))
        .await??;
    let echo = Echo {
        gateway: Some(Arc::new(smile_id_client(&sim)?)),
        below: Some(below.handle().clone()),
    };
    let grpc = connections.spawn(start_echo(echo)).await??;
    let selfie = jpeg_of(330, 3);
    let refused = Arc::new(AtomicUsize::new(0));
    let Honest {
        gets: solo_gets,
        submissions: solo_submissions,
        gets_waited: solo_waited,
        ..
    } = honest_apart(&caller, grpc, &selfie, "floor-solo", &refused, None).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let greedy = Arc::new(Flood::default());
    {
        let (stop, selfie, greedy) = (stop.clone(), selfie.clone(), greedy.clone());
        attacker
            .spawn(async move { flood(grpc, &stop, &selfie, &greedy, paced).await })
            .await??;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (cpu_before, greedy_before, started) =
        (super::threads_cpu_seconds(&["floor"]), greedy.counts(), Instant::now());
    let Honest {
        gets,
        submissions,
        gets_waited,
        ..
    } = honest_apart(&caller, grpc, &selfie, "floor-flooded", &refused, None).await?;
    let during = started.elapsed().as_secs_f64();
    let busy = (super::threads_cpu_seconds(&["floor"]) - cpu_before) / during / cores.len() as f64;
    let greedy_rate = (greedy.counts().0 - greedy_before.0) as f64 / during;
    stop.store(true, Ordering::Relaxed);
    smile_id.spawn(sim.shutdown()).await?;
    for runtime in [smile_id, caller, attacker, connections, below] {
        runtime.shutdown_background();
    }
    let flood_is = if paced.is_some() {
        "paced to the service's rate"
    } else {
        "as fast as it is answered"
    };
    let placed = match placement {
        Placement::Shared => "sharing the cores",
        Placement::OwnCores => "on cores of its own",
    };
    let row = |what: &str| format!("under a submission flood {flood_is}, a bare tonic gateway {placed}: {what}");
    let refused = refused.load(Ordering::Relaxed);
    latency_rows(
        report,
        &row,
        [(&gets, &solo_gets), (&submissions, &solo_submissions)],
        |ours, solo| {
            format!(
                "{:.1}x / {:.1}x alone, {refused} refused: the floor of the service's rows under attack",
                ours.p50_ms() / solo.p50_ms(),
                ours.p99_ms() / solo.p99_ms(),
            )
        },
    );
    core_wait_row(report, &row, gets_waited, solo_waited);
    report.row(
        &row("the greedy caller's submissions accepted"),
        match paced {
            Some(rate) => format!("{greedy_rate:.0} /s (paced to {rate:.0} /s)"),
            None => format!("{greedy_rate:.0} /s"),
        },
        format!(
            "the honest caller's: {:.0} /s under the flood, {:.0} /s alone",
            submissions.rate(),
            solo_submissions.rate()
        ),
        format!("its {} core(s) {:.0}% busy", cores.len(), 100.0 * busy),
    );
    let note = "The bare tonic gateway rows are the floor of the rows under attack: the same honest caller and the \
                same submission flood (128 calls in flight under one identity, each on a connection of its own) \
                against a tonic server with no identity, limits or storage, placed as the service was (sharing every \
                core with the simulator and the callers, or on the service's core). It answers GetJob \
                at once and does each submission's prep upload, zip and upload on a runtime ten nice steps below, \
                as the service does; Smile ID's callbacks go nowhere. \"Paced to the service's rate\": the flood held to \
                the rate the service accepted it at, placed the same way, so both serve the same flood; \
                \"as fast as it is answered\": what the flood does to the bare server when nothing holds it back."
        .to_owned();
    if !report.notes.contains(&note) {
        report.notes.push(note);
    }
    Ok(())
}
