//! The nemesis: a fault schedule drawn from the seed, in two lanes that run
//! at the same time, each one fault after the other:
//!
//! - the network lane: partial ("bridge") partitions, pauses, stalls, slow
//!   and lossy links, connection resets, and (split seeds only) partitions
//!   into halves and isolated nodes;
//! - the node lane: crashes and restarts under the same name and address
//!   (often of the sequencer), clean leaves and returns, the join of the node
//!   whose name sorts first, and clock skew.
//!
//! A *pause* cannot stop a task in-process: it is emulated by cutting every
//! link of the node silently for longer than the failure timeout and
//! suspending its clients' calls (new and in flight) until it is back in
//! every view. Unlike a SIGSTOP'd process, the node's own tasks keep running:
//! it sees its peers go silent, drops them and redials them after the heal,
//! while a real paused process would find its connections still open.
//!
//! On strict seeds the links that are down at any time always leave a node
//! (the hub) connected to every other node that is up and not paused, so any
//! two of them see each other or have a common neighbour: the partial
//! partitions the design promises to settle without forking. Crashes never
//! take down the hub of such a partition, nor the last node that holds the
//! state.

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::mix;
use super::world::{ip_of, wait_for, Sim};

/// The kinds of faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Some links cut, one node (the hub) still sees every other.
    Bridge,
    /// Every link of one node cut past the failure timeout, its clients suspended.
    Pause,
    /// Links deliver nothing for a while, then everything.
    Stall,
    /// Links with delay, jitter and loss.
    Slow,
    /// Connections reset.
    Reset,
    /// Two halves (split seeds only).
    Halves,
    /// One node cut off with its clients running (split seeds only).
    Isolate,
    /// A node dropped without goodbye and restarted under its name and address.
    Crash,
    /// A node closed cleanly and started again.
    Leave,
    /// The node whose name sorts first joins.
    Join,
    /// A node's clock runs ahead or behind.
    Skew,
}

impl Kind {
    pub const ALL: &'static [Kind] = &[
        Kind::Bridge,
        Kind::Pause,
        Kind::Stall,
        Kind::Slow,
        Kind::Reset,
        Kind::Halves,
        Kind::Isolate,
        Kind::Crash,
        Kind::Leave,
        Kind::Join,
        Kind::Skew,
    ];
    /// Faults that split the cluster into parts that each go on writing.
    pub fn splits(self) -> bool {
        matches!(self, Kind::Halves | Kind::Isolate)
    }
}

fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Runs the fault schedule until the seed's fault time is over and both
/// lanes finished their last fault.
pub async fn run(sim: &Arc<Sim>) {
    let until = Instant::now() + ms(sim.params.fault_ms);
    let net = tokio::spawn(network_lane(sim.clone(), until));
    let node = tokio::spawn(node_lane(sim.clone(), until));
    let _ = net.await;
    let _ = node.await;
}

fn allowed(sim: &Sim, k: Kind) -> bool {
    sim.params.kinds.contains(&k) && (!k.splits() || !sim.params.strict)
}

fn pick(rng: &mut StdRng, sim: &Sim, weighted: &[(Kind, u32)]) -> Option<Kind> {
    let options: Vec<(Kind, u32)> = weighted
        .iter()
        .copied()
        .filter(|(k, _)| allowed(sim, *k))
        .collect();
    let total: u32 = options.iter().map(|(_, w)| w).sum();
    if total == 0 {
        return None;
    }
    let mut x = rng.random_range(0..total);
    for (k, w) in options {
        if x < w {
            return Some(k);
        }
        x -= w;
    }
    None
}

/// Slots up and not paused.
fn active(sim: &Sim) -> Vec<usize> {
    let rec = sim.rec();
    (0..rec.slots.len())
        .filter(|&i| rec.slots[i].is_up() && !rec.slots[i].freeze.is_frozen())
        .collect()
}

/// Shared between the lanes: the hub of a partial partition (never crashed
/// while it lasts), and whether a split is on (no crash meanwhile, nor right
/// after, so that no side's acknowledged writes die before they merge).
#[derive(Default)]
pub struct LaneState {
    pub hub: Option<usize>,
    pub no_crash_until: Option<Instant>,
}

async fn network_lane(sim: Arc<Sim>, until: Instant) {
    let mut rng = StdRng::seed_from_u64(mix(sim.params.seed ^ 0x6e_656d));
    let ft = sim.params.failure_timeout_ms;
    while Instant::now() < until {
        tokio::time::sleep(ms(rng.random_range(50..500))).await;
        let weights = [
            (Kind::Bridge, 4),
            (Kind::Pause, 3),
            (Kind::Stall, 2),
            (Kind::Slow, 2),
            (Kind::Reset, 1),
            (Kind::Halves, 3),
            (Kind::Isolate, 3),
        ];
        let Some(kind) = pick(&mut rng, &sim, &weights) else {
            return;
        };
        if sim.params.strict && matches!(kind, Kind::Bridge | Kind::Stall | Kind::Pause) {
            // Connections lag behind healed links (a dial into a cut link
            // hangs until it times out): start from whole views, so that the
            // links that go down now are the only ones missing.
            wait_for(&sim, Duration::from_secs(5), |s| s.views_whole()).await;
        }
        let nodes = active(&sim);
        if nodes.len() < 2 {
            continue;
        }
        match kind {
            Kind::Bridge | Kind::Stall => {
                if nodes.len() < 3 {
                    continue;
                }
                // The hub sees everyone; some other links go down.
                let hub = if sim.params.strict {
                    Some(nodes[rng.random_range(0..nodes.len())])
                } else {
                    None
                };
                let mut links = Vec::new();
                for (i, &a) in nodes.iter().enumerate() {
                    for &b in &nodes[i + 1..] {
                        if Some(a) != hub && Some(b) != hub && rng.random_bool(0.5) {
                            links.push((a, b));
                        }
                    }
                }
                if links.is_empty() {
                    let others: Vec<usize> =
                        nodes.iter().copied().filter(|&n| Some(n) != hub).collect();
                    links.push((others[0], others[1]));
                }
                let dur = rng.random_range(ft / 2..ft * 4);
                sim.lanes.lock().unwrap().hub = hub;
                let names = names(&sim, &links);
                if kind == Kind::Bridge {
                    sim.fault(format!(
                        "bridge partition for {dur} ms: cut {names} (hub {})",
                        hub.map_or("none".into(), |h| name(&sim, h))
                    ));
                    for &(a, b) in &links {
                        sim.cut(a, b);
                    }
                    tokio::time::sleep(ms(dur)).await;
                    sim.heal_all();
                } else {
                    sim.fault(format!("stall for {dur} ms: {names}"));
                    for &(a, b) in &links {
                        sim.net.stall(ip_of(a), ip_of(b), ms(dur));
                    }
                    tokio::time::sleep(ms(dur)).await;
                }
                sim.fault("healed".into());
                // Until the links are back in the views, they may still be down.
                tokio::time::sleep(ms(ft)).await;
                sim.lanes.lock().unwrap().hub = None;
            }
            Kind::Pause => {
                // A node that is still starting would find nobody and start
                // a cluster of its own: pause only nodes that hold the state.
                let ready: Vec<usize> = {
                    let rec = sim.rec();
                    nodes
                        .iter()
                        .copied()
                        .filter(|&n| rec.slots[n].is_ready())
                        .collect()
                };
                if ready.is_empty() {
                    continue;
                }
                let target = if rng.random_bool(0.5) {
                    sim.sequencer().filter(|s| ready.contains(s))
                } else {
                    None
                }
                .unwrap_or(ready[rng.random_range(0..ready.len())]);
                let dur = rng.random_range(ft + ft / 5..ft * 3);
                sim.fault(format!("pause {} for {dur} ms", name(&sim, target)));
                let freeze = sim.rec().slots[target].freeze.clone();
                let from = sim.now_us();
                freeze.set(true);
                let n = sim.params.slot_names().len();
                for other in (0..n).filter(|&o| o != target) {
                    sim.cut(target, other);
                }
                tokio::time::sleep(ms(dur)).await;
                sim.heal_all();
                // Resumed once it is back in every view (or gave up waiting).
                wait_for(&sim, Duration::from_secs(4), |s| s.views_whole()).await;
                freeze.set(false);
                let to = sim.now_us();
                sim.rec().paused[target].push((from, to));
                sim.fault(format!("resume {}", name(&sim, target)));
            }
            Kind::Slow => {
                let mut links = Vec::new();
                for (i, &a) in nodes.iter().enumerate() {
                    for &b in &nodes[i + 1..] {
                        if rng.random_bool(0.4) {
                            links.push((a, b));
                        }
                    }
                }
                let delay = rng.random_range(1..60);
                let jitter = rng.random_range(0..20);
                let loss = if rng.random_bool(0.5) {
                    rng.random_range(0.0..0.05)
                } else {
                    0.0
                };
                let dur = rng.random_range(300..3000);
                sim.fault(format!(
                    "slow links for {dur} ms (delay {delay} ms, jitter {jitter} ms, loss {:.0}%): {}",
                    loss * 100.0,
                    names(&sim, &links)
                ));
                for &(a, b) in &links {
                    sim.net.set_delay(ip_of(a), ip_of(b), ms(delay), ms(jitter));
                    sim.net.set_loss(ip_of(a), ip_of(b), loss);
                }
                tokio::time::sleep(ms(dur)).await;
                for &(a, b) in &links {
                    sim.net.clear_link(ip_of(a), ip_of(b));
                }
                sim.fault("links fast again".into());
            }
            Kind::Reset => {
                let a = nodes[rng.random_range(0..nodes.len())];
                let b = nodes[rng.random_range(0..nodes.len())];
                // On strict seeds a reset link is down until it is redialed:
                // its ends must keep a common neighbour (the hub meanwhile).
                let hub = nodes.iter().copied().find(|&c| c != a && c != b);
                if sim.params.strict && (hub.is_none() || !sim.views_whole()) {
                    continue;
                }
                if a != b {
                    sim.lanes.lock().unwrap().hub = hub.filter(|_| sim.params.strict);
                    sim.fault(format!(
                        "reset connections {}-{}",
                        name(&sim, a),
                        name(&sim, b)
                    ));
                    sim.net.reset(ip_of(a), ip_of(b));
                    tokio::time::sleep(ms(ft)).await;
                    sim.lanes.lock().unwrap().hub = None;
                }
            }
            Kind::Halves | Kind::Isolate => {
                let mut side = nodes.clone();
                if kind == Kind::Isolate {
                    let target = if rng.random_bool(0.5) {
                        sim.sequencer().filter(|s| nodes.contains(s))
                    } else {
                        None
                    }
                    .unwrap_or(nodes[rng.random_range(0..nodes.len())]);
                    side = vec![target];
                } else {
                    side.shuffle(&mut rng);
                    let k = rng.random_range(1..side.len());
                    side.truncate(k);
                }
                let n = sim.params.slot_names().len();
                let mut links = Vec::new();
                for &a in &side {
                    for b in (0..n).filter(|b| !side.contains(b)) {
                        links.push((a, b));
                    }
                }
                let dur = rng.random_range(300..3000);
                sim.lanes.lock().unwrap().no_crash_until = Some(Instant::now() + ms(100_000));
                sim.fault(format!(
                    "{} for {dur} ms: {{{}}} apart",
                    if kind == Kind::Isolate {
                        "isolate"
                    } else {
                        "halves"
                    },
                    side.iter()
                        .map(|&s| name(&sim, s))
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                for &(a, b) in &links {
                    sim.cut(a, b);
                }
                tokio::time::sleep(ms(dur)).await;
                sim.heal_all();
                sim.fault("healed".into());
                sim.lanes.lock().unwrap().no_crash_until = Some(Instant::now() + ms(3000));
            }
            _ => {}
        }
    }
}

async fn node_lane(sim: Arc<Sim>, until: Instant) {
    let mut rng = StdRng::seed_from_u64(mix(sim.params.seed ^ 0x6e_6f64));
    let joiner_at = Instant::now() + ms(rng.random_range(0..sim.params.fault_ms));
    let mut joined = !sim.params.joiner;
    while Instant::now() < until {
        tokio::time::sleep(ms(rng.random_range(100..900))).await;
        if !joined && Instant::now() >= joiner_at && allowed(&sim, Kind::Join) {
            joined = true;
            sim.fault(format!("{} joins", name(&sim, 0)));
            sim.start_slot(0);
            continue;
        }
        let weights = [(Kind::Crash, 5), (Kind::Leave, 1), (Kind::Skew, 2)];
        let Some(kind) = pick(&mut rng, &sim, &weights) else {
            return;
        };
        match kind {
            Kind::Crash | Kind::Leave => {
                let blocked = {
                    let lanes = sim.lanes.lock().unwrap();
                    lanes.no_crash_until.is_some_and(|t| Instant::now() < t)
                };
                if blocked {
                    continue;
                }
                let ready: Vec<usize> = {
                    let rec = sim.rec();
                    let now = sim.now_us();
                    (0..rec.slots.len())
                        .filter(|&i| {
                            let s = &rec.slots[i];
                            s.is_ready()
                                && !s.freeze.is_frozen()
                                && s.ready_at.is_some_and(|r| now >= r + 300_000)
                        })
                        .collect()
                };
                let up = sim.up_slots();
                let hub = sim.lanes.lock().unwrap().hub;
                let target = if rng.random_bool(0.5) {
                    sim.sequencer()
                } else {
                    Some(up[rng.random_range(0..up.len())])
                };
                let Some(target) = target else { continue };
                // A paused node restarted behind its cut links would find
                // nobody and start a cluster of its own (a split).
                if sim.rec().slots[target].freeze.is_frozen() {
                    continue;
                }
                // Another node that holds the state stays, and at most half go down.
                let holders = ready.iter().filter(|&&r| r != target).count();
                let down = {
                    let rec = sim.rec();
                    rec.slots
                        .iter()
                        .filter(|s| s.incarnation > 0 && !s.is_present())
                        .count()
                };
                let max_down = (sim.params.nodes - 1) / 2;
                if holders == 0 || Some(target) == hub || down + 1 > max_down.max(1) {
                    continue;
                }
                // On strict seeds the others must still see each other or a
                // common neighbour, by the connections they have now.
                if sim.params.strict && !sim.close_knit_without(Some(target)) {
                    continue;
                }
                let downtime = if rng.random_bool(0.3) {
                    0
                } else {
                    rng.random_range(0..1500)
                };
                let leave = kind == Kind::Leave;
                sim.fault(format!(
                    "{} {} for {downtime} ms",
                    if leave { "leave" } else { "crash" },
                    name(&sim, target)
                ));
                sim.stop_slot(target, leave).await;
                tokio::time::sleep(ms(downtime)).await;
                sim.fault(format!("restart {}", name(&sim, target)));
                sim.start_slot(target);
            }
            Kind::Skew => {
                let up = sim.up_slots();
                let target = up[rng.random_range(0..up.len())];
                let skew = rng.random_range(-3000i64..3000);
                sim.fault(format!("clock of {} off by {skew} ms", name(&sim, target)));
                sim.net.set_skew(ip_of(target), skew);
            }
            _ => {}
        }
    }
    if !joined && allowed(&sim, Kind::Join) {
        sim.fault(format!("{} joins", name(&sim, 0)));
        sim.start_slot(0);
    }
}

fn name(sim: &Sim, slot: usize) -> String {
    sim.rec().slots[slot].name.clone()
}

fn names(sim: &Sim, links: &[(usize, usize)]) -> String {
    links
        .iter()
        .map(|&(a, b)| format!("{}-{}", name(sim, a), name(sim, b)))
        .collect::<Vec<_>>()
        .join(" ")
}
