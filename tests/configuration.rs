//! `serve` and `dev` configuration as users meet it: a bad value is named as
//! the user set it, a variable when it came from the environment, a flag
//! otherwise; `dev` reads the same variables as `serve`.

use std::process::Output;

use selfie_auth_testkit::*;

/// Runs selfie-auth with `args` and `env` only (no variable of this process leaks in).
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_selfie-auth"));
    command.args(args).env_clear().envs(env.iter().copied());
    if let Some(path) = std::env::var_os("PATH") {
        command.env("PATH", path);
    }
    command.kill_on_drop(true).output().await.expect("run selfie-auth")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const SERVE_ENV: [(&str, &str); 3] = [
    ("SMILEID_PARTNER_ID", PARTNER_ID),
    ("SMILEID_API_KEY", API_KEY),
    ("SMILEID_ENVIRONMENT", "sandbox"),
];

#[tokio::test]
async fn an_unparsable_value_names_the_variable_or_the_flag_that_gave_it() {
    let from_env = run(&["serve"], &[("SELFIE_AUTH_DRAIN_TIMEOUT", "10")]).await;
    assert_eq!(from_env.status.code(), Some(2));
    let message = stderr(&from_env);
    assert!(
        message.contains("invalid value '10' for SELFIE_AUTH_DRAIN_TIMEOUT"),
        "{message}"
    );
    assert!(!message.contains("--drain-timeout"), "{message}");

    let from_flag = run(&["serve", "--drain-timeout", "10"], &[]).await;
    assert_eq!(from_flag.status.code(), Some(2));
    assert!(
        stderr(&from_flag).contains("'--drain-timeout"),
        "{}",
        stderr(&from_flag)
    );
}

#[tokio::test]
async fn an_invalid_setting_names_the_variable_or_the_flag_that_gave_it() {
    let mut env = SERVE_ENV.to_vec();
    env.push(("SELFIE_AUTH_CONCURRENCY_LIMIT", "0"));
    let from_env = run(&["serve"], &env).await;
    assert_eq!(from_env.status.code(), Some(1));
    assert!(
        stderr(&from_env).contains("error: SELFIE_AUTH_CONCURRENCY_LIMIT must be at least 1"),
        "{}",
        stderr(&from_env)
    );

    let from_flag = run(&["serve", "--concurrency-limit", "0"], &SERVE_ENV).await;
    assert!(
        stderr(&from_flag).contains("error: --concurrency-limit (SELFIE_AUTH_CONCURRENCY_LIMIT) must be at least 1"),
        "{}",
        stderr(&from_flag)
    );
}

#[tokio::test]
async fn dev_listens_where_the_serve_variables_say_and_names_them_when_it_cannot() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let taken = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    let output = run(
        &["dev", "--simulator-addr", "127.0.0.1:0"],
        &[
            ("SELFIE_AUTH_GRPC_ADDR", &taken),
            ("SELFIE_AUTH_HTTP_ADDR", "127.0.0.1:0"),
            ("SELFIE_AUTH_DATA_DIR", dir.path().to_str().expect("utf-8")),
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains(&format!("binding the gRPC address {taken} (SELFIE_AUTH_GRPC_ADDR)")),
        "{message}"
    );
}

#[tokio::test]
async fn help_shows_the_defaults_in_force() {
    let serve = run(&["serve", "--help"], &[]).await;
    let help = String::from_utf8_lossy(&serve.stdout);
    for default in [
        "[default: 0.0.0.0:50051]",
        "[default: 2m]",
        "[default: 15m]",
        "[default: 1day]",
        "[default: 15s]",
        "[default: 30s]",
    ] {
        assert!(help.contains(default), "serve --help lacks {default}:\n{help}");
    }
    let dev = run(&["dev", "--help"], &[]).await;
    let help = String::from_utf8_lossy(&dev.stdout);
    assert!(
        help.contains("[env: SELFIE_AUTH_GRPC_ADDR=] [default: 127.0.0.1:50051]"),
        "{help}"
    );
    assert!(
        !help.contains("--partner-id"),
        "dev talks to its own simulator:\n{help}"
    );
}

#[tokio::test]
async fn unsafe_identity_and_confirmation_settings_stop_serve_with_their_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let weak_jwks = dir.path().join("jwks.json");
    // A 512-bit RSA modulus, as an old identity provider may still publish.
    let modulus = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xc3; 64])
    };
    std::fs::write(
        &weak_jwks,
        serde_json::json!({"keys": [{"kty": "RSA", "kid": "legacy", "n": modulus, "e": "AQAB"}]}).to_string(),
    )
    .expect("write");
    let weak_jwks = weak_jwks.to_str().expect("utf-8");
    for (env, says) in [
        (
            vec![
                ("SMILEID_BASE_URL", "https://API.smileidentity.com/v1"),
                ("SELFIE_AUTH_CONFIRM_CALLBACKS", "false"),
                ("SELFIE_AUTH_INSECURE_NO_AUTH", "true"),
            ],
            "SELFIE_AUTH_CONFIRM_CALLBACKS is false, but https://API.smileidentity.com/v1 reaches Smile ID production",
        ),
        (
            vec![("SELFIE_AUTH_TRUST_XFCC", "true")],
            "no proxy is trusted to set x-forwarded-client-cert",
        ),
        (
            vec![
                ("SELFIE_AUTH_JWT_JWKS_FILE", weak_jwks),
                ("SELFIE_AUTH_JWT_ISSUER", "https://issuer.example"),
                ("SELFIE_AUTH_JWT_AUDIENCE", "selfie-auth"),
            ],
            "key \"legacy\": an RSA key of 512 bits is too weak",
        ),
    ] {
        let mut all = SERVE_ENV.to_vec();
        all.extend(env);
        let output = run(&["serve"], &all).await;
        assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
        assert!(stderr(&output).contains(says), "{says}: {}", stderr(&output));
    }
}
