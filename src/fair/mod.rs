//! Work kept from crowding out everyone else's: [`FairLane`]'s threads take
//! CPU-heavy work (checking images) from each caller's queue in turn, so a
//! caller with much waiting waits behind its own work; [`BelowCalls`] runs
//! work on threads below those answering calls.

mod below;
mod gate;
mod lane;
mod turns;

pub use below::{BelowCalls, KeepThreads};
pub use gate::{FairGate, Precedence, Present, Turn};
pub use lane::{FairLane, Interrupted};

/// The cores this process may use (its cgroup's quota counts).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}
