//! A deterministic cluster simulator: whole clusters in one thread on a
//! current-thread tokio runtime with paused time, over a seeded in-memory
//! network; a nemesis that draws faults from the seed; clients that record
//! every call; and a checker of the recorded history.
//!
//! See `tests/simulation.rs` for the commands and `checker.rs` for which
//! property is checked under which faults.
#![allow(dead_code)]

pub mod checker;
pub mod clients;
pub mod nemesis;
pub mod world;

use std::time::Instant as WallInstant;

pub use world::{Outcome, Params};

/// Runs one seed to the end on a fresh current-thread runtime with paused time.
pub fn run_seed(seed: u64, tweak: &dyn Fn(&mut Params)) -> Outcome {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("simulation runtime");
    let began = WallInstant::now();
    let mut params = Params::draw(seed);
    tweak(&mut params);
    let mut outcome = rt.block_on(world::simulate(params));
    // Whatever the nodes left running (dialers, delivery queues) ends with the runtime.
    drop(rt);
    outcome.wall = began.elapsed();
    outcome
}

/// SplitMix64: seeds of the per-node and per-client generators.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Log timestamps in simulated milliseconds since the runtime started.
pub struct SimTimer;

thread_local! {
    static EPOCH: std::cell::Cell<Option<tokio::time::Instant>> = const { std::cell::Cell::new(None) };
}

impl tracing_subscriber::fmt::time::FormatTime for SimTimer {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        let now = tokio::time::Instant::now();
        let epoch = EPOCH.with(|e| {
            let epoch = e.get().unwrap_or(now);
            e.set(Some(epoch));
            epoch
        });
        write!(
            w,
            "{:>9.3}",
            now.duration_since(epoch).as_secs_f64() * 1000.0
        )
    }
}
