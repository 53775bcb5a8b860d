//! The dashboard and alert rules shipped with the chart speak of metrics the
//! service really exports, in PromQL that parses; `/metrics` says its format.

use std::collections::BTreeSet;
use std::path::Path;

use selfie_auth::grpc::pb;
use selfie_auth_testkit::*;

/// Every series name a scrape of the running service holds.
async fn exported(service: &TestService) -> BTreeSet<String> {
    let response = reqwest::get(format!("{}/metrics", service.http_url))
        .await
        .expect("metrics");
    let content_type = response.headers()["content-type"].to_str().expect("ascii").to_owned();
    assert!(content_type.contains("version="), "{content_type}");
    let text = response.text().await.expect("text");
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            let suffixes: &[&str] = match kind {
                "histogram" => &["_bucket", "_count", "_sum"],
                "counter" => &["_total"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|suffix| format!("{name}{suffix}")));
        }
    }
    names
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
    client
        .get_job(pb::GetJobRequest {
            job_id: "observed-1".into(),
            ..Default::default()
        })
        .await
        .expect("get");
    let exported = eventually(std::time::Duration::from_secs(15), || async {
        let names = exported(&service).await;
        // The callback and the reconciler's gauges arrive on their own schedule.
        names.contains("selfie_auth_callbacks_total").then_some(names)
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
}
