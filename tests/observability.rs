//! The dashboard and alert rules shipped with the chart speak of metrics the
//! service really exports, in PromQL that parses; `/metrics` says its format.

use std::collections::BTreeSet;
use std::path::Path;

use selfie_auth_testkit::*;

/// Every sample name a scrape of the running service holds, in the format `accept` asks for.
async fn scrape(service: &TestService, accept: &str) -> (String, BTreeSet<String>) {
    let response = reqwest::Client::new()
        .get(format!("{}/metrics", service.http_url))
        .header("accept", accept)
        .send()
        .await
        .expect("metrics");
    let content_type = response.headers()["content-type"].to_str().expect("ascii").to_owned();
    assert!(content_type.contains("version="), "{content_type}");
    let text = response.text().await.expect("text");
    let mut names: BTreeSet<String> = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    // Families without a series yet are declared all the same.
    for declared in text.lines().filter_map(|line| line.strip_prefix("# TYPE ")) {
        if let Some((name, kind)) = declared.split_once(' ') {
            names.insert(name.to_owned());
            if kind == "counter" && !name.ends_with("_total") {
                names.insert(format!("{name}_total"));
            }
        }
    }
    (content_type, names)
}

async fn exported(service: &TestService) -> BTreeSet<String> {
    scrape(service, "application/openmetrics-text;version=1.0.0,*/*;q=0.1")
        .await
        .1
}

/// The metric names a PromQL expression reads, after checking that it parses.
fn metrics_of(expr: &str) -> BTreeSet<String> {
    let grafana = expr.replace("$__rate_interval", "5m").replace("$namespace", ".*");
    if let Err(error) = promql_parser::parser::parse(&grafana) {
        panic!("{expr:?} is not valid PromQL: {error}");
    }
    let mut names = BTreeSet::new();
    let mut rest = grafana.as_str();
    while let Some(at) = rest.find(|c: char| c.is_ascii_lowercase()) {
        rest = &rest[at..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let word = &rest[..end];
        if ["rpc_server_", "selfie_auth_", "process_"]
            .iter()
            .any(|prefix| word.starts_with(prefix))
        {
            names.insert(word.to_owned());
        }
        rest = &rest[end..];
    }
    assert!(!names.is_empty(), "{expr:?} reads no selfie-auth metric");
    names
}

fn chart_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("helm/selfie-auth/files")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_alerts_read_metrics_the_service_exports() {
    let (_sim, service, _dir) = simulator_and_service(|_| {}).await;
    let mut client = service.client().await;
    client
        .submit_authentication(submit_request(ENROLLED_USER, "observed-1"))
        .await
        .expect("submit");
    let mut stream = watch(&mut client, "observed-1", 0).await;
    collect_events(&mut stream, 4).await;
    get_job(&mut client, "observed-1").await.expect("get");
    let exported = eventually(std::time::Duration::from_secs(15), || async {
        let names = exported(&service).await;
        // The callback, the pool and the reconciler's gauges arrive on their own schedule.
        names.contains("selfie_auth_db_pool_connections").then_some(names)
    })
    .await
    .expect("a callback was counted");

    let dashboard: serde_json::Value = serde_json::from_str(&chart_file("dashboard.json")).expect("dashboard JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for panel in panels {
        assert!(panel["title"].is_string() && panel["gridPos"].is_object(), "{panel}");
        for target in panel["targets"].as_array().expect("targets") {
            for name in metrics_of(target["expr"].as_str().expect("expr")) {
                assert!(
                    exported.contains(&name),
                    "panel {}: {name} is not exported",
                    panel["title"]
                );
            }
        }
    }

    let rules: serde_yaml::Value = serde_yaml::from_str(&chart_file("alerts.yaml")).expect("alerts YAML");
    let rules = rules["groups"][0]["rules"].as_sequence().expect("rules");
    assert!(rules.len() >= 8);
    for rule in rules {
        let alert = rule["alert"].as_str().expect("alert name");
        assert!(
            ["warning", "critical"].contains(&rule["labels"]["severity"].as_str().unwrap_or_default()),
            "{alert}: severity"
        );
        assert!(rule["annotations"]["summary"].is_string(), "{alert}: summary");
        for name in metrics_of(rule["expr"].as_str().expect("expr")) {
            assert!(exported.contains(&name), "alert {alert}: {name} is not exported");
        }
    }

    // Every metric the docs name is one the service exports, in either format.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut documents = vec![root.join("README.md")];
    documents.extend(
        std::fs::read_dir(root.join("docs"))
            .expect("docs")
            .map(|entry| entry.expect("entry").path()),
    );
    let (content_type, as_text) = scrape(&service, "text/plain;version=0.0.4").await;
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let family_names = |names: &BTreeSet<String>| {
        names
            .iter()
            .filter(|name| name.ends_with("_total") || !exported.contains(&format!("{name}_total")))
            .cloned()
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(
        family_names(&as_text),
        family_names(&exported),
        "both formats hold the same metrics"
    );
    for document in documents {
        let text = std::fs::read_to_string(&document).expect("read");
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if word.starts_with("selfie_auth_") && word.len() > "selfie_auth_".len() {
                let family = ["", "_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .any(|suffix| exported.contains(&format!("{word}{suffix}")));
                assert!(family, "{} names {word}, which is not exported", document.display());
            }
        }
    }
}

/// The wait for the threads serving connections is sampled while the service
/// runs, with nothing asked of it: `serve` starts the sampler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wait_for_the_threads_serving_connections_is_sampled() {
    let (_sim, service, _dir) = simulator_and_service(|_| {}).await;
    let samples = eventually(std::time::Duration::from_secs(5), || async {
        let text = reqwest::get(format!("{}/metrics", service.http_url))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let count: f64 = text.lines().find_map(|line| {
            line.strip_prefix("selfie_auth_runtime_lag_seconds_count ")?
                .parse()
                .ok()
        })?;
        (count >= 3.0).then_some(count)
    })
    .await;
    assert!(
        samples.is_some(),
        "no three samples of selfie_auth_runtime_lag_seconds within 5 s"
    );
}

/// The store writer's commits and the writes in them reach `/metrics`: a job
/// taken to its result writes at least its create, Smile ID's acceptance and
/// the result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_writers_commits_are_counted() {
    let (_sim, service, _dir) = simulator_and_service(|_| {}).await;
    let mut client = service.client().await;
    client
        .submit_authentication(submit_request(ENROLLED_USER, "counted-1"))
        .await
        .expect("submit");
    let mut stream = watch(&mut client, "counted-1", 0).await;
    collect_events(&mut stream, 4).await;
    let (commits, writes) = (
        metric_total(&service, "selfie_auth_db_commits_total").await,
        metric_total(&service, "selfie_auth_db_committed_writes_total").await,
    );
    assert!(writes >= 3, "{writes} writes counted");
    assert!((1..=writes).contains(&commits), "{commits} commits for {writes} writes");
}

/// The next status a health watch sends within a moment: `None` when none comes,
/// `Some(None)` when the stream ends.
async fn next(
    stream: &mut tonic::Streaming<tonic_health::pb::HealthCheckResponse>,
) -> Option<Option<tonic_health::pb::health_check_response::ServingStatus>> {
    tokio::time::timeout(std::time::Duration::from_millis(700), stream.message())
        .await
        .ok()
        .map(|message| message.ok().flatten().map(|response| response.status()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_health_watch_sends_one_message_per_change() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    let (_sim, service, _dir) = simulator_and_service(|_| {}).await;
    let mut health = tonic_health::pb::health_client::HealthClient::new(service.channel().await);
    let watch = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    let mut unknown = health
        .watch(watch("no.such.Service"))
        .await
        .expect("watch")
        .into_inner();
    let mut known = health
        .watch(watch("selfieauth.v1.SelfieAuth"))
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(next(&mut unknown).await, Some(Some(ServingStatus::ServiceUnknown)));
    assert_eq!(next(&mut known).await, Some(Some(ServingStatus::Serving)));
    assert_eq!(next(&mut unknown).await, None, "SERVICE_UNKNOWN is sent once");
    assert_eq!(next(&mut known).await, None, "nothing changed");
    // Shutdown: the known service turns NOT_SERVING once; the unknown one says nothing more.
    let shutdown = selfie_auth::task::spawn(service.running.shutdown());
    assert_eq!(next(&mut known).await, Some(Some(ServingStatus::NotServing)));
    let after = next(&mut unknown).await;
    assert!(
        !matches!(after, Some(Some(_))),
        "no second message for an unknown service: {after:?}"
    );
    shutdown.await.expect("shut down");
}

/// promtool and prometheus from Debian's `prometheus` package, or why not.
fn prometheus_tools() -> Option<(std::path::PathBuf, std::path::PathBuf)> {
    let tools = debian_tool("promtool", &["prometheus"])
        .and_then(|promtool| Ok((promtool, debian_tool("prometheus", &["prometheus"])?)));
    match tools {
        Ok(tools) => Some(tools),
        Err(reason) => {
            skip_or_fail("the Prometheus checks (need Debian's prometheus package)", &reason);
            None
        }
    }
}

fn run_tool(program: &Path, args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write as _;
    let mut child = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the tool");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("run the tool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{} {args:?} failed:\n{said}",
        program.display()
    );
    said
}

/// An expression without its alerting threshold: what the alert compares.
fn compared(expr: &str) -> String {
    let expr = expr.trim();
    let cut = [" > ", " < ", " == "]
        .iter()
        .filter_map(|operator| expr.rfind(operator))
        .max()
        .unwrap_or(expr.len());
    expr[..cut].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_and_the_dashboard_work_in_a_real_prometheus() {
    let Some((promtool, prometheus)) = prometheus_tools() else {
        return;
    };
    let files = Path::new(env!("CARGO_MANIFEST_DIR")).join("helm/selfie-auth/files");
    let alerts = files.join("alerts.yaml");
    run_tool(&promtool, &["check", "rules", alerts.to_str().expect("utf-8")], None);
    let tested = run_tool(
        &promtool,
        &["test", "rules", files.join("alerts.test.yaml").to_str().expect("utf-8")],
        None,
    );
    assert!(tested.contains("SUCCESS"), "{tested}");

    let (_sim, service, _dir) = simulator_and_service(|_| {}).await;
    let mut client = service.client().await;
    client
        .submit_authentication(submit_request(ENROLLED_USER, "scraped-1"))
        .await
        .expect("submit");
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", service.http_url))
        .header("accept", "text/plain;version=0.0.4")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    let lint = run_tool(&promtool, &["check", "metrics"], Some(&text));
    assert!(lint.trim().is_empty(), "promtool check metrics: {lint}");

    // The chart scrapes by pod annotations: the target's labels are its namespace and pod.
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let target = service.http_url.trim_start_matches("http://");
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: [{}]\nscrape_configs:\n  - job_name: kubernetes-pods\n    static_configs:\n      - targets: ['{target}']\n        labels: {{namespace: payments, pod: auth-0}}\n",
        alerts.display()
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("config");
    let _prometheus = tokio::process::Command::new(&prometheus)
        .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    let query = |expr: String| {
        let url = format!("http://127.0.0.1:{port}/api/v1/query");
        async move {
            let answer: serde_json::Value = reqwest::Client::new()
                .get(url)
                .query(&[("query", expr.as_str())])
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (answer["status"] == "success").then(|| answer["data"]["result"].as_array().cloned().unwrap_or_default())
        }
    };
    // Rates need two scrapes of the target.
    eventually(std::time::Duration::from_secs(30), || async {
        let scrapes = query("count_over_time(selfie_auth_ready[1m])".to_owned()).await?;
        let count = scrapes.first()?["value"][1].as_str()?.parse::<f64>().ok()?;
        (count >= 3.0).then_some(())
    })
    .await
    .expect("prometheus scrapes the service");

    let dashboard: serde_json::Value = serde_json::from_str(&chart_file("dashboard.json")).expect("dashboard JSON");
    let mut expressions: Vec<(String, String)> = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            let expr = expr.replace("$__rate_interval", "1m").replace("$namespace", ".*");
            expressions.push((format!("panel {}", panel["title"]), expr));
        }
    }
    let rules: serde_yaml::Value = serde_yaml::from_str(&chart_file("alerts.yaml")).expect("alerts YAML");
    for rule in rules["groups"][0]["rules"].as_sequence().expect("rules") {
        let alert = rule["alert"].as_str().expect("alert");
        expressions.push((format!("alert {alert}"), compared(rule["expr"].as_str().expect("expr"))));
    }
    for (what, expr) in expressions {
        let result = query(expr.clone())
            .await
            .unwrap_or_else(|| panic!("{what}: {expr} does not evaluate"));
        assert!(
            !result.is_empty(),
            "{what}: {expr} returns no data under the chart's scraping"
        );
    }
}
