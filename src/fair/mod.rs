//! Work taken from each caller's queue in turn, so that a caller with much
//! waiting waits behind its own work, not in front of everyone else's:
//! [`FairLane`]'s threads for CPU-heavy work (checking images).

mod lane;
mod turns;

pub use lane::{FairLane, Interrupted};

/// The cores this process may use (its cgroup's quota counts).
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
