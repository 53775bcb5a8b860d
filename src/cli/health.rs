//! `selfie-auth health`: a container health check over gRPC health.

use clap::Args;

use super::server_url;

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// gRPC address of the server: host:port or a URL. Default: this host's
    /// port of SELFIE_AUTH_GRPC_ADDR, the variable `serve` listens by (else 50051).
    #[arg(long, env = "SELFIE_AUTH_HEALTH_ADDR")]
    pub addr: Option<String>,
    /// Service to check; empty: the server as a whole.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Longest wait for an answer.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: std::time::Duration,
}

/// Where this host reaches a server listening on `listen` (`serve`'s
/// SELFIE_AUTH_GRPC_ADDR): a wildcard address is reached on loopback.
fn local_address_of(listen: Option<&str>) -> String {
    match listen.and_then(|listen| listen.parse::<std::net::SocketAddr>().ok()) {
        Some(addr) if addr.ip().is_unspecified() => {
            let loopback = if addr.is_ipv4() {
                std::net::IpAddr::from(std::net::Ipv4Addr::LOCALHOST)
            } else {
                std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
            };
            std::net::SocketAddr::new(loopback, addr.port()).to_string()
        }
        Some(addr) => addr.to_string(),
        None => "127.0.0.1:50051".to_owned(),
    }
}

/// Exit codes of `health`.
const NOT_SERVING: u8 = 1;
const UNREACHABLE: u8 = 3;

/// `selfie-auth health`: the server's gRPC health as an exit code, and a line saying it.
pub async fn health(args: &HealthArgs) -> std::process::ExitCode {
    use tonic_health::pb::health_check_response::ServingStatus;
    let addr = args
        .addr
        .clone()
        .unwrap_or_else(|| local_address_of(std::env::var("SELFIE_AUTH_GRPC_ADDR").ok().as_deref()));
    let url = server_url(&addr);
    let checked = async {
        let channel = tonic::transport::Endpoint::from_shared(url)?
            .connect_timeout(args.timeout)
            .timeout(args.timeout)
            .connect()
            .await?;
        let response = tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: args.service.clone(),
            })
            .await?;
        Ok::<_, Box<dyn std::error::Error>>(response.into_inner().status())
    };
    match tokio::time::timeout(args.timeout, checked).await {
        Ok(Ok(ServingStatus::Serving)) => {
            println!("SERVING");
            std::process::ExitCode::SUCCESS
        }
        Ok(Ok(status)) => {
            println!("{}", status.as_str_name());
            std::process::ExitCode::from(NOT_SERVING)
        }
        Ok(Err(error)) => {
            eprintln!("error: {addr} is unreachable: {error}");
            std::process::ExitCode::from(UNREACHABLE)
        }
        Err(_) => {
            eprintln!("error: {addr} did not answer within {:?}", args.timeout);
            std::process::ExitCode::from(UNREACHABLE)
        }
    }
}
