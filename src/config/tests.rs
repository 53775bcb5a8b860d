use std::time::Duration;

use super::*;
use crate::smileid::{ClientConfig, Credentials};

fn error_of(args: &[&str]) -> String {
    match Config::parse_from(args, Some(ApiKey::new("k"))) {
        Ok(_) => panic!("expected an error for {args:?}"),
        Err(error) => error.to_string(),
    }
}

#[test]
fn every_invalid_setting_is_named_as_the_user_set_it() {
    let base = ["--partner-id", "085", "--smileid-environment", "sandbox"];
    assert!(error_of(&[]).contains("--partner-id (SMILEID_PARTNER_ID)"));
    assert!(error_of(&["--partner-id", "085"]).contains("--smileid-environment (SMILEID_ENVIRONMENT)"));
    let with =
        |extra: &[&'static str]| -> Vec<&'static str> { base.iter().copied().chain(extra.iter().copied()).collect() };
    for (flag, value) in [
        ("--smileid-base-url", "ftp://x"),
        ("--callback-url", "nope"),
        ("--callback-path", "cb"),
        ("--max-message-bytes", "1000"),
        ("--concurrency-limit", "0"),
        ("--database-max-connections", "0"),
        ("--heartbeat-interval", "0s"),
        ("--readiness-interval", "0s"),
        ("--http2-keepalive-timeout", "0s"),
    ] {
        let error = error_of(&with(&[flag, value]));
        assert!(error.starts_with(flag), "{flag}: {error}");
    }
    let error = error_of(&with(&["--drain-timeout", "10"]));
    assert!(error.contains("--drain-timeout"), "{error}");
    let unconfirmed_production = error_of(&[
        "--partner-id",
        "085",
        "--smileid-environment",
        "production",
        "--confirm-callbacks",
        "false",
    ]);
    assert!(
        unconfirmed_production.starts_with("--confirm-callbacks"),
        "{unconfirmed_production}"
    );
}

#[test]
fn production_is_production_however_it_is_named() {
    let unconfirmed = |url: &str| {
        Config::parse_from(
            [
                "--partner-id",
                "085",
                "--smileid-base-url",
                url,
                "--confirm-callbacks",
                "false",
                "--insecure-no-auth",
                "true",
            ],
            Some(ApiKey::new("k")),
        )
    };
    for production in [
        "https://api.smileidentity.com/v1",
        "https://API.SmileIdentity.com./v1/",
        "https://api.smileidentity.com:443/v1",
        "https://prod.smileidentity.com/api/v2",
        "https://smileid-proxy.internal/v1",
        "http://10.0.0.1:8780/v1",
    ] {
        let error = unconfirmed(production).expect_err(production).to_string();
        assert!(error.starts_with("--confirm-callbacks"), "{production}: {error}");
    }
    for relaxed in [
        "http://127.0.0.1:8780/v1",
        "http://[::1]:8780/v1",
        "http://localhost:8780/v1",
        "https://testapi.smileidentity.com/v1",
    ] {
        let config = unconfirmed(relaxed).unwrap_or_else(|error| panic!("{relaxed}: {error}"));
        assert!(config.service.sandbox_params_allowed, "{relaxed}");
    }
    let proxied = Config::parse_from(
        [
            "--partner-id",
            "085",
            "--smileid-base-url",
            "https://api.smileidentity.com/v1",
            "--insecure-no-auth",
            "true",
        ],
        Some(ApiKey::new("k")),
    )
    .expect("confirmed production");
    assert!(
        !proxied.service.sandbox_params_allowed,
        "sandbox_result never reaches production"
    );
}

#[test]
fn a_trusted_mesh_needs_a_trusted_proxy() {
    let mesh = |extra: &[&str]| {
        let mut args = vec![
            "--partner-id",
            "085",
            "--smileid-environment",
            "sandbox",
            "--trust-xfcc",
            "true",
        ];
        args.extend_from_slice(extra);
        Config::parse_from(args, Some(ApiKey::new("k")))
    };
    let error = mesh(&[]).expect_err("no proxy named").to_string();
    assert!(
        error.contains("--xfcc-trusted-peers") && error.contains("127.0.0.6/32"),
        "{error}"
    );
    let error = mesh(&["--xfcc-trusted-peers", "sidecar"])
        .expect_err("not an address")
        .to_string();
    assert!(error.starts_with("--xfcc-trusted-peers"), "{error}");
    let error = mesh(&["--xfcc-trusted-proxies", "spiffe://c/ns/mesh/sa/gw"])
        .expect_err("proxy certificates need client certificates")
        .to_string();
    assert!(error.contains("--grpc-client-ca"), "{error}");
    let config = mesh(&["--xfcc-trusted-peers", "127.0.0.6,fd00::/8"]).expect("config");
    let trusted = config.identity.forwarded.expect("trusted");
    assert_eq!(trusted.networks.len(), 2);
}

#[test]
fn defaults_are_the_domain_defaults_and_build_working_settings() {
    let unidentified = Config::parse_from(
        ["--partner-id", "085", "--smileid-environment", "production"],
        Some(ApiKey::new("k")),
    )
    .expect_err("serve needs a way to identify callers");
    assert!(
        unidentified.to_string().contains("--trust-xfcc") && unidentified.to_string().contains("--insecure-no-auth"),
        "{unidentified}"
    );
    let config = Config::parse_from(
        [
            "--partner-id",
            "085",
            "--smileid-environment",
            "production",
            "--trust-xfcc",
            "true",
            "--xfcc-trusted-peers",
            "127.0.0.6/32,::1",
        ],
        Some(ApiKey::new("k")),
    )
    .expect("config");
    assert_eq!(config.smile.environment, Environment::Production);
    assert!(
        !config.service.sandbox_params_allowed,
        "sandbox_result never reaches production"
    );
    assert_eq!(config.database_url, "sqlite://data/selfie-auth.db");
    assert_eq!(config.grpc_addr.port(), 50051);
    let defaults = ServiceConfig::default();
    assert_eq!(config.service.reconcile.first_delay, defaults.reconcile.first_delay);
    assert_eq!(config.service.reconcile.max_delay, defaults.reconcile.max_delay);
    assert_eq!(config.service.heartbeat_interval, defaults.heartbeat_interval);
    assert_eq!(
        config.smile.request_timeout,
        ClientConfig::new(Environment::Sandbox, Credentials::new("", ApiKey::new(""))).request_timeout
    );
    assert_eq!(
        config.database_limits.statement_timeout,
        PgLimits::default().statement_timeout
    );
    assert!(config.service.image_limits.max_total_bytes < config.max_message_bytes);
    let custom = Config::parse_from(
        [
            "--partner-id",
            "1",
            "--smileid-base-url",
            "http://127.0.0.1:8780/v1",
            "--insecure-no-auth",
            "true",
        ],
        Some(ApiKey::new("k")),
    )
    .expect("config");
    assert_eq!(
        custom.smile.environment,
        Environment::Custom("http://127.0.0.1:8780/v1".into())
    );
}

#[test]
fn spans_read_and_print_as_people_write_them() {
    assert_eq!("1h 30m".parse::<Span>().expect("span").0, Duration::from_mins(90));
    assert_eq!(Span(Duration::from_mins(2)).to_string(), "2m");
    assert!("10".parse::<Span>().is_err());
}

/// The configuration table of docs/operations.md: `(variables, defaults)` of each row.
fn documented() -> Vec<(String, String)> {
    crate::documented_table(
        include_str!("../../docs/operations.md"),
        "| variable | default | meaning |",
    )
    .into_iter()
    .map(|cells| (cells[0].clone(), cells[1].clone()))
    .collect()
}

#[test]
fn the_operations_docs_show_the_defaults_the_flags_have() {
    let command = serve_command();
    let mut checked = 0;
    for (variables, defaults) in documented() {
        let variables: Vec<&str> = variables.split(" / ").map(|v| v.trim_matches('`')).collect();
        // A default is a literal in backticks; anything else ("required ...") is none.
        let defaults: Vec<Option<&str>> = defaults
            .split(" / ")
            .map(|d| d.strip_prefix('`').and_then(|d| d.strip_suffix('`')))
            .collect();
        for (index, variable) in variables.iter().enumerate() {
            let Some(arg) = command
                .get_arguments()
                .find(|arg| arg.get_env().is_some_and(|env| env == *variable))
            else {
                continue;
            };
            let flag_default: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|value| value.to_string_lossy().into_owned())
                .collect();
            let documented = defaults.get(index).copied().flatten();
            assert_eq!(
                flag_default.first().map(String::as_str),
                documented,
                "{variable}: docs/operations.md and --help disagree"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 20,
        "only {checked} settings were found in docs/operations.md"
    );
}
