//! The test PostgreSQL: a schema per test, and a proxy to cut it off.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::simulator::loopback;

/// The PostgreSQL server tests use: `TEST_DATABASE_URL`, else the local trust-auth server.
pub fn pg_base_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

/// A fresh schema on the test PostgreSQL, as a `DATABASE_URL` whose connections use it.
///
/// When PostgreSQL cannot be reached the test says so loudly and is skipped
/// (`None`), except under `CI=true`, where that fails the run.
pub async fn pg_schema_url() -> Option<String> {
    use sqlx::Connection as _;
    let base = pg_base_url();
    let connected = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&base)).await;
    let mut connection = match connected {
        Ok(Ok(connection)) => connection,
        failure => {
            let reason = match failure {
                Ok(Err(error)) => error.to_string(),
                _ => "timed out".to_owned(),
            };
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "PostgreSQL at {base} is required under CI: {reason}"
            );
            eprintln!("\n*** SKIPPED: PostgreSQL at {base} is not reachable ({reason}); set TEST_DATABASE_URL ***\n");
            return None;
        }
    };
    let schema = format!("t_{}", rand::random::<u64>());
    // The schema name is generated digits, not input.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut connection)
        .await
        .expect("create schema");
    let separator = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{separator}options=-c%20search_path%3D{schema}"))
}

/// Replaces the host and port of a PostgreSQL URL (to route it through a proxy).
pub fn pg_url_via(url: &str, addr: SocketAddr) -> String {
    let (scheme, rest) = url.split_once("://").expect("url");
    let (authority, path) = rest.split_once('/').expect("path");
    let user = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"))
        .unwrap_or_default();
    format!("{scheme}://{user}{addr}/{path}")
}

/// A TCP proxy on 127.0.0.1:0 that a test can cut (dropping every connection and
/// refusing new ones) and restore, to make a server unreachable without stopping it.
pub struct CuttableProxy {
    pub addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl CuttableProxy {
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(loopback()).await.expect("bind proxy");
        let addr = listener.local_addr().expect("addr");
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (is_cut, tracked) = (cut.clone(), connections.clone());
        selfie_auth::task::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if is_cut.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = selfie_auth::task::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().expect("lock").push(task.abort_handle());
            }
        });
        Self { addr, cut, connections }
    }

    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().expect("lock").drain(..) {
            connection.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}
