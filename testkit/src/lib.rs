//! Helpers of selfie-auth's black-box tests, one module per concern: fixture
//! images, caller identities, the simulator, the service under test, streams,
//! PostgreSQL and external tools.

pub mod identity;
pub mod images;
pub mod postgres;
pub mod process;
pub mod raw;
pub mod service;
pub mod simulator;
pub mod streams;
pub mod tools;

use std::time::Duration;

pub use identity::*;
pub use images::*;
pub use postgres::*;
pub use process::*;
pub use raw::*;
pub use service::*;
pub use simulator::*;
pub use streams::*;
pub use tools::*;

/// Polls until `check` returns `Some`, at most `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
