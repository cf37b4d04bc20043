//! Deterministic simulation of whole clusters (see `tests/sim/`): 3 to 7 nodes
//! in one thread, paused time, a seeded in-memory network, a nemesis, clients
//! and a history checker.
//!
//! - `cargo test -p lbmkv --test simulation` runs the fixed seed set;
//! - `LBMKV_SIM_SEED=<seed> cargo test -p lbmkv --test simulation -- --nocapture`
//!   replays one seed and prints its history summary;
//! - `LBMKV_SIM_SOAK=<n> cargo test -p lbmkv --test simulation soak -- --ignored --nocapture`
//!   runs `n` fresh seeds (`make soak SEEDS=n`; `LBMKV_SIM_BASE=<b>` fixes them);
//!
//! Replays take `LBMKV_SIM_VERBOSE=1` (every fault and conflict),
//! `LBMKV_SIM_CALLS=1` (with every call) and `LBMKV_SIM_LOG=lbmkv=debug`
//! (engine logs stamped with simulated time). `LBMKV_SIM_KINDS=crash,join`
//! limits the faults drawn, `LBMKV_SIM_STRICT=1` forces strict seeds.
//! Build in release (`--release`): a debug build runs 4 seeds only.
//!
//! Determinism: one seed gives the same faults, the same calls with the same
//! simulated times and results, and the same final digests (the fingerprint
//! in the summary line), in the same process or another, with these sources
//! of nondeterminism closed: time (paused tokio time; the clock dots read a
//! simulated wall clock per node through `Net::wall_clock_ms`), randomness
//! (`Config::rng_seed` per node incarnation, the network's own seeded
//! generator, one per client and per nemesis lane), the scheduler (one
//! thread, current-thread runtime; no `spawn_blocking` since no handler runs
//! on the blocking pool), and the engine's waiters and peers, which are now
//! woken and told in a fixed order instead of a hash map's. What remains:
//! hash maps with per-process random hashers that the engine still iterates
//! (membership's maps, merge sessions, and the store's hash table, whose
//! order decides the order of entries in a merge), so about 8 seeds in 100
//! differ from run to run in which of two increments that become possible at
//! the same simulated instant gets which value. Violations found reproduce
//! with their seed in practice (all the seeds above did).

mod sim;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use sim::Outcome;

/// The fixed seed set of `make test` (in a release build; a debug build runs
/// its first [`DEBUG_SEEDS`] only, as a smoke test).
const FIXED_SEEDS: u64 = 200;
const DEBUG_SEEDS: u64 = 4;

/// Seeds that showed violations of the engine, fixed since; they run with
/// the fixed set (in a release build) so that none comes back:
///
/// - a node that was cut off (paused) past the failure timeout was alone and
///   ready when it came back; a node that just (re)started connected to it
///   first, turned to it, and counted as caught up without a merge since it
///   had applied nothing, although it had merged the others' newer state: the
///   stale node ordered writes from what it held before the pause (198,
///   13971890134628663997, and most of the others). A replica now refuses a
///   batch with a version that does not descend its own, and a sequencer does
///   not order while a peer sees a member it does not;
/// - a sequencer whose batch was refused (its replicas had turned to a newly
///   ready node that sorts first) kept that batch in its own replica; merged
///   later, it was concurrent with the acknowledged versions and the fallback
///   could keep it (12923536439675549604). A refused batch is now taken back;
/// - a node that stepped out of a partial partition ended its step-out on
///   reaching another node that had stepped out too, and the two ordered
///   for each other while the rest of the cluster ordered on
///   (7520992057763579749, 1144797980576831655, 15124139495500306375). A
///   step-out now ends only among ready peers;
/// - a restarted node whose seeds both turned its connections away (each was
///   dialing it at that moment) took itself for a new cluster and ordered
///   from an empty table (3368728696908891100). Such a refusal now comes after
///   both sides proved the cookie, and a node that met a member waits for it;
/// - a batch some members refused and others applied, when those others
///   then left for the far side of a partial partition: the next sequencer
///   ordered on without it, and when they came back the fallback kept the
///   refused version over acknowledged ones (13693156349956818956). The
///   members that applied a batch the sequencer takes back now take it back
///   too (`Retract`);
/// - a node that ended its step-out on reaching a ready node that then
///   stepped out itself: the one still ready ordered for the two while the
///   rest of the cluster ordered on (9108992124813584347). A sequencer no
///   longer orders for a view that holds a node standing out;
/// - a sequencer cut off past the failure timeout, alone once it dropped
///   its peers, counted its batch in flight as acknowledged by the members
///   that remained (none); its clock ahead, the fallback later kept that
///   version over the acknowledged ones of the others (5025340851861811152).
///   A batch waiting for a member that goes silent past its confirmation
///   now fails and is taken back;
/// - a write that changed nothing (a delete of a key a pending batch had
///   deleted) was answered at once, and the pending batch was then taken
///   back (8264478933348117580); such a write now waits for the batches
///   before it. A node that had turned to a new sequencer took back its
///   pending batches under that sequencer's feet (2614145149562905606); a
///   take-back now happens only on a node that still sequences;
/// - a restarted node whose state holder crashed mid-merge became ready by
///   merging with another node that had just restarted, and ordered apart
///   from a member it had not reached yet (1378332635454586967); a joining
///   node now needs a ready peer (or a failure timeout without one).
///
/// And one seed of the checker's own: a local read of a failed increment's
/// version, taken back since, whose value a later increment was acknowledged
/// with (7726959029085276891); such a read is not an acknowledged value the
/// node may not go back from.
const REGRESSION_SEEDS: &[u64] = &[
    198,
    13971890134628663997,
    12974320500567425669,
    16924143928408705650,
    12923536439675549604,
    14456037206675035282,
    11614861373225989789,
    16683431714139074831,
    10819922280078231716,
    9776994931580589218,
    1498809144279495928,
    4240050987437787141,
    8466913652746665147,
    8481581836235916023,
    12941188880994266164,
    2001242780340999272,
    3368728696908891100,
    7520992057763579749,
    1144797980576831655,
    15124139495500306375,
    13693156349956818956,
    9108992124813584347,
    5025340851861811152,
    7726959029085276891,
    8264478933348117580,
    2614145149562905606,
    1378332635454586967,
];

fn replay_line(seed: u64) -> String {
    let mut env = String::new();
    for var in ["LBMKV_SIM_KINDS", "LBMKV_SIM_STRICT"] {
        if let Ok(v) = std::env::var(var) {
            env.push_str(&format!("{var}={v} "));
        }
    }
    format!(
        "{env}LBMKV_SIM_SEED={seed} cargo test --release -p lbmkv --test simulation -- --nocapture"
    )
}

/// Overrides from the environment: `LBMKV_SIM_KINDS=crash,join,...` limits
/// the faults drawn (names as in `sim::nemesis::Kind`, lowercase), and
/// `LBMKV_SIM_STRICT=1` (or `0`) forces strict (or split) seeds.
fn tweak(p: &mut sim::Params) {
    if let Ok(kinds) = std::env::var("LBMKV_SIM_KINDS") {
        p.kinds = sim::nemesis::Kind::ALL
            .iter()
            .copied()
            .filter(|k| {
                kinds
                    .split(',')
                    .any(|n| n.trim().eq_ignore_ascii_case(&format!("{k:?}")))
            })
            .collect();
        if p.kinds.contains(&sim::nemesis::Kind::Join) {
            p.joiner = true;
            p.nodes = p.nodes.min(6);
        }
    }
    if let Ok(strict) = std::env::var("LBMKV_SIM_STRICT") {
        p.strict = strict == "1";
    }
}

fn summary(o: &Outcome) -> String {
    format!(
        "seed {:>20} {:>6} {} nodes {:>2} faults {:>4} ops {:>4} acked incr {:>3} split dups {:>2} paused acks, converged {:>5} ms after, {:>6} ms simulated in {:>5} ms; fingerprint {:016x}; {} violations",
        o.seed,
        if o.strict { "strict" } else { "split" },
        o.nodes,
        o.faults,
        o.ops,
        o.acked_increments,
        o.duplicates_in_split,
        o.paused_acks,
        o.converged_after_ms.map_or("never".into(), |c| c.to_string()),
        o.sim_ms,
        o.wall.as_millis(),
        o.fingerprint,
        o.violations.len()
    )
}

/// Runs `seeds` on two threads; returns the outcomes in seed order.
fn run_all(seeds: Vec<u64>) -> Vec<Outcome> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    let threads = std::env::var("LBMKV_SIM_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(2usize);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(&seed) = seeds.get(i) else { return };
                let o = sim::run_seed(seed, &tweak);
                if std::env::var("LBMKV_SIM_PRINT").is_ok() {
                    println!("{}", summary(&o));
                }
                if !o.violations.is_empty() {
                    eprintln!(
                        "{}\n{}replay: {}\n",
                        summary(&o),
                        o.report,
                        replay_line(seed)
                    );
                }
                results.lock().unwrap().push((i, o));
            });
        }
    });
    let mut r = results.into_inner().unwrap();
    r.sort_by_key(|(i, _)| *i);
    r.into_iter().map(|(_, o)| o).collect()
}

fn totals(outcomes: &[Outcome], took: std::time::Duration) -> String {
    let faults: usize = outcomes.iter().map(|o| o.faults).sum();
    let ops: usize = outcomes.iter().map(|o| o.ops).sum();
    let bad: Vec<u64> = outcomes
        .iter()
        .filter(|o| !o.violations.is_empty())
        .map(|o| o.seed)
        .collect();
    let violations: usize = outcomes.iter().map(|o| o.violations.len()).sum();
    format!(
        "simulation: {} seeds, {faults} faults, {ops} operations, {violations} violations{} in {:.1} s ({:.0} seeds/min)",
        outcomes.len(),
        if bad.is_empty() {
            String::new()
        } else {
            format!(" (seeds {bad:?})")
        },
        took.as_secs_f64(),
        outcomes.len() as f64 / took.as_secs_f64() * 60.0
    )
}

#[test]
fn fixed_seeds() {
    if let Some(seed) = std::env::var("LBMKV_SIM_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        if let Ok(filter) = std::env::var("LBMKV_SIM_LOG") {
            // Engine logs, stamped with the simulated time.
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_timer(sim::SimTimer)
                .try_init();
        }
        let o = sim::run_seed(seed, &tweak);
        println!("{}", summary(&o));
        print!("{}", o.report);
        if std::env::var("LBMKV_SIM_VERBOSE").is_ok() {
            print!("{}", o.timeline);
        }
        assert!(o.violations.is_empty(), "replay: {}", replay_line(seed));
        return;
    }
    let began = Instant::now();
    let count = std::env::var("LBMKV_SIM_COUNT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(debug_assertions) {
            DEBUG_SEEDS
        } else {
            FIXED_SEEDS
        });
    let mut seeds: Vec<u64> = (1..=count).collect();
    if !cfg!(debug_assertions) {
        let fixed_since = REGRESSION_SEEDS.iter().filter(|s| !seeds.contains(s));
        let fixed_since: Vec<u64> = fixed_since.copied().collect();
        seeds.extend(fixed_since);
    }
    let outcomes = run_all(seeds);
    let line = totals(&outcomes, began.elapsed());
    println!("{line}");
    assert!(outcomes.iter().all(|o| o.violations.is_empty()), "{line}");
}

/// `make soak SEEDS=n`: fresh seeds, one summary line.
#[test]
#[ignore]
fn soak() {
    let n: u64 = std::env::var("LBMKV_SIM_SOAK")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let base = std::env::var("LBMKV_SIM_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let seeds: Vec<u64> = (0..n).map(|i| sim::mix(base.wrapping_add(i))).collect();
    let began = Instant::now();
    let outcomes = run_all(seeds);
    println!("{}", totals(&outcomes, began.elapsed()));
    assert!(outcomes.iter().all(|o| o.violations.is_empty()));
}
