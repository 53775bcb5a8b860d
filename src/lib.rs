//! selfie-auth: a gRPC gateway for Smile ID SmartSelfie™ Authentication.
//!
//! Dependencies point toward the domain: `grpc` and `callbacks` call `jobs`;
//! `jobs` defines the ports it needs (`jobs::ports`), which `store`, `events`
//! and the wiring's Smile ID adapter implement. `smileid` is a protocol library
//! of its own: `jobs` uses its value types (results, codes), never its client.
//! `server` wires everything and is the one place that knows concrete types.
#![forbid(unsafe_code)]
#![warn(clippy::too_many_lines)]

pub mod auth;
pub mod callbacks;
pub mod cli;
pub mod config;
pub mod events;
pub mod fair;
pub mod grpc;
pub mod jobs;
pub mod metrics;
pub mod net;
pub mod server;
pub mod shares;
pub mod smile_adapter;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod users;

/// The Smile ID protocol client, a crate of its own (`crates/smileid`).
pub use ::smileid;
/// The Smile ID simulator (`crates/smileid-simulator`), behind the default `simulator` feature.
#[cfg(feature = "simulator")]
pub use ::smileid_simulator as simulator;

/// `bytes` as lowercase hexadecimal.
pub(crate) fn lower_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// The cells of each row of `document`'s table under `header`, for tests that
/// keep the docs true to the code.
#[cfg(test)]
fn documented_table(document: &str, header: &str) -> Vec<Vec<String>> {
    let table = document
        .split(header)
        .nth(1)
        .unwrap_or_else(|| panic!("the docs have a table headed {header}"));
    table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
            cells.into_iter().map(str::to_owned).collect()
        })
        .collect()
}
