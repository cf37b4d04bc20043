//! The simulated cluster: node slots (a name and an address that a node can be
//! started at, crash and restart under), the shared record of the run, and
//! the phases of one seed.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use lbmkv::net::MemNet;
use lbmkv::{Config, Event, Node, Table};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::checker::{self, Violation};
use super::clients::{self, Call};
use super::mix;
use super::nemesis;

pub const TABLE: &str = "t";
/// Counters incremented with `update`.
pub const COUNTERS: &[&str] = &["c0", "c1"];
/// Keys written with put, delete and put_many.
pub const REGISTERS: usize = 8;

/// Everything one seed decides before the run starts.
#[derive(Clone, Debug)]
pub struct Params {
    pub seed: u64,
    /// Nodes present at the start.
    pub nodes: usize,
    /// A node whose name sorts first joins during the faults.
    pub joiner: bool,
    /// Only faults after which the design promises one total order (no
    /// partition into halves, no isolated node with its clients running).
    pub strict: bool,
    /// How long faults are drawn for.
    pub fault_ms: u64,
    /// How long clients go on after the final heal.
    pub after_heal_ms: u64,
    pub clients_per_node: usize,
    pub heartbeat_ms: u64,
    pub failure_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub anti_entropy_ms: u64,
    /// Faults the nemesis may draw (all by default); see [`nemesis::Kind`].
    pub kinds: Vec<nemesis::Kind>,
}

impl Params {
    pub fn draw(seed: u64) -> Params {
        let mut rng = StdRng::seed_from_u64(mix(seed));
        let nodes = rng.random_range(3..=7);
        let joiner = nodes < 7 && rng.random_bool(0.4);
        let strict = rng.random_bool(0.6);
        Params {
            seed,
            nodes,
            joiner,
            strict,
            fault_ms: rng.random_range(4_000..=7_000),
            after_heal_ms: 2_500,
            clients_per_node: 2,
            heartbeat_ms: 50,
            failure_timeout_ms: 500,
            request_timeout_ms: 1_500,
            anti_entropy_ms: 250,
            kinds: nemesis::Kind::ALL.to_vec(),
        }
    }

    pub fn failure_timeout(&self) -> Duration {
        Duration::from_millis(self.failure_timeout_ms)
    }

    /// Slots: the joiner (if any) first, named `a0`, then `n1`..`nN`.
    pub fn slot_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        if self.joiner {
            names.push("a0".to_string());
        }
        for i in 1..=self.nodes {
            names.push(format!("n{i}"));
        }
        names
    }
}

/// Suspends the calls of a node's clients while the node is "paused".
#[derive(Default)]
pub struct Freeze {
    frozen: AtomicBool,
    wakers: Mutex<Vec<Waker>>,
}

impl Freeze {
    pub fn set(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
        if !frozen {
            let wakers = std::mem::take(&mut *self.wakers.lock().unwrap());
            wakers.into_iter().for_each(Waker::wake);
        }
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::SeqCst)
    }
}

/// A future that is not polled while its [`Freeze`] is set.
pub struct Freezable<F> {
    pub freeze: Arc<Freeze>,
    pub fut: Pin<Box<F>>,
}

impl<F: Future> Future for Freezable<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.freeze.is_frozen() {
            self.freeze.wakers.lock().unwrap().push(cx.waker().clone());
            return Poll::Pending;
        }
        self.fut.as_mut().poll(cx)
    }
}

/// One place a node runs: a name and an address, kept across restarts.
pub struct Slot {
    pub name: String,
    pub ip: IpAddr,
    pub node: Option<Node>,
    pub table: Option<Table>,
    /// The task starting the node (aborted by a crash during the start).
    pub starting: Option<JoinHandle<()>>,
    pub incarnation: u32,
    /// When the current incarnation's `create_table` returned (µs).
    pub ready_at: Option<u64>,
    pub freeze: Arc<Freeze>,
}

impl Slot {
    pub fn is_up(&self) -> bool {
        self.node.is_some()
    }
    /// Up, or being started.
    pub fn is_present(&self) -> bool {
        self.node.is_some() || self.starting.is_some()
    }
    pub fn is_ready(&self) -> bool {
        self.node.is_some() && self.table.is_some()
    }
}

/// A conflict seen on some node: an event or a record of the conflict log.
#[derive(Clone, Debug)]
pub struct ConflictSeen {
    pub at_us: u64,
    pub slot: usize,
    pub key: Vec<u8>,
    pub kept: Option<Option<Vec<u8>>>,
    pub lost: Option<Option<Vec<u8>>>,
    pub what: String,
}

/// One fault as the nemesis applied it.
#[derive(Clone, Debug)]
pub struct FaultRec {
    pub at_us: u64,
    pub what: String,
}

/// The shared, mutable record of a run.
pub struct Record {
    pub slots: Vec<Slot>,
    pub calls: Vec<Call>,
    pub faults: Vec<FaultRec>,
    pub conflicts: Vec<ConflictSeen>,
    /// Links cut now (slot pairs, smaller first).
    pub cuts: BTreeSet<(usize, usize)>,
    /// Per slot, the pause windows (µs) of the node there.
    pub paused: Vec<Vec<(u64, u64)>>,
    pub next_call: u64,
}

/// The simulated world of one seed.
pub struct Sim {
    pub params: Params,
    pub net: MemNet,
    pub start: Instant,
    pub rec: Mutex<Record>,
    pub stop_clients: AtomicBool,
    pub lanes: Mutex<nemesis::LaneState>,
}

/// What one seed did and found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub seed: u64,
    pub strict: bool,
    pub nodes: usize,
    pub faults: usize,
    pub ops: usize,
    pub acked_increments: usize,
    pub duplicates_in_split: usize,
    /// Writes acknowledged on a node while it was paused (counted as failed).
    pub paused_acks: usize,
    pub violations: Vec<Violation>,
    /// The lines to print for a failing seed: the relevant history.
    pub report: String,
    /// Every fault, one per line.
    pub timeline: String,
    /// A hash of everything observable (calls, faults, final digests).
    pub fingerprint: u64,
    pub converged_after_ms: Option<u64>,
    pub sim_ms: u64,
    pub wall: Duration,
}

pub fn ip_of(slot: usize) -> IpAddr {
    IpAddr::from([127, 0, 0, slot as u8 + 1])
}

impl Sim {
    pub fn now_us(&self) -> u64 {
        Instant::now().duration_since(self.start).as_micros() as u64
    }

    pub fn rec(&self) -> std::sync::MutexGuard<'_, Record> {
        self.rec.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn fault(&self, what: String) {
        let at_us = self.now_us();
        self.rec().faults.push(FaultRec { at_us, what });
    }

    fn config(&self, slot: usize, incarnation: u32) -> Config {
        let p = &self.params;
        let names = p.slot_names();
        Config {
            name: Some(names[slot].clone()),
            listen: format!("{}:7000", ip_of(slot)),
            seeds: (0..names.len())
                .filter(|&i| i != slot)
                .map(|i| format!("{}:7000", ip_of(i)))
                .collect(),
            cookie: Some(b"sim-cookie".to_vec()),
            heartbeat_interval: Duration::from_millis(p.heartbeat_ms),
            failure_timeout: p.failure_timeout(),
            request_timeout: Duration::from_millis(p.request_timeout_ms),
            handler_timeout: Duration::from_millis(p.request_timeout_ms),
            anti_entropy_interval: Duration::from_millis(p.anti_entropy_ms),
            rng_seed: Some(mix(p.seed ^ mix((slot as u64) << 32 | incarnation as u64))),
            ..Config::default()
        }
    }

    /// Starts a new incarnation of the node at `slot` (in the background: the
    /// node is in the slot at once, its table once `create_table` returned).
    pub fn start_slot(self: &Arc<Self>, slot: usize) {
        let incarnation = {
            let mut rec = self.rec();
            let s = &mut rec.slots[slot];
            s.incarnation += 1;
            s.incarnation
        };
        let cfg = self.config(slot, incarnation);
        let sim = self.clone();
        let task = tokio::spawn(async move {
            let (node, mut events) = loop {
                match Node::start_subscribed_with_net(cfg.clone(), Arc::new(sim.net.clone())).await
                {
                    Ok(x) => break x,
                    // The crashed incarnation's listener is not gone yet.
                    Err(e) if e.to_string().contains("in use") => {
                        tokio::time::sleep(Duration::from_millis(5)).await
                    }
                    Err(e) => panic!("cannot start {}: {e}", cfg.name.as_deref().unwrap_or("")),
                }
            };
            let watcher = sim.clone();
            tokio::spawn(async move {
                while let Some(ev) = events.next().await {
                    if let Event::Conflict {
                        table,
                        key,
                        resolution,
                    } = ev
                    {
                        if table == TABLE {
                            let at_us = watcher.now_us();
                            watcher.rec().conflicts.push(ConflictSeen {
                                at_us,
                                slot,
                                key: key.into_bytes(),
                                kept: None,
                                lost: None,
                                what: format!("event ({resolution:?})"),
                            });
                        }
                    }
                }
            });
            {
                let mut rec = sim.rec();
                let s = &mut rec.slots[slot];
                if s.incarnation != incarnation {
                    return;
                }
                s.node = Some(node.clone());
            }
            let table = loop {
                match node.create_table(TABLE).await {
                    Ok(t) => break t,
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            };
            let now = sim.now_us();
            let mut rec = sim.rec();
            let s = &mut rec.slots[slot];
            if s.incarnation == incarnation {
                s.table = Some(table);
                s.ready_at = Some(now);
                s.starting = None;
            }
        });
        self.rec().slots[slot].starting = Some(task);
    }

    /// Drops the node at `slot` without a goodbye (a crash), or closes it
    /// (a clean leave) when `leave`; its conflict log is kept first.
    pub async fn stop_slot(&self, slot: usize, leave: bool) {
        let (node, table, starting) = {
            let mut rec = self.rec();
            let s = &mut rec.slots[slot];
            s.ready_at = None;
            (s.node.take(), s.table.take(), s.starting.take())
        };
        if let Some(t) = &table {
            self.keep_conflict_log(slot, t);
        }
        if let Some(task) = starting {
            task.abort();
        }
        if let (Some(node), true) = (&node, leave) {
            let _ = node.close().await;
        }
        drop(table);
        drop(node);
    }

    pub fn keep_conflict_log(&self, slot: usize, t: &Table) {
        let now = self.now_us();
        if let Ok(log) = t.conflicts() {
            let mut rec = self.rec();
            for c in log {
                rec.conflicts.push(ConflictSeen {
                    at_us: now,
                    slot,
                    key: c.key,
                    kept: Some(c.kept),
                    lost: Some(c.lost),
                    what: format!("log (merge with {})", c.peer),
                });
            }
        }
    }

    /// Names of the nodes up now, by slot.
    pub fn up_slots(&self) -> Vec<usize> {
        let rec = self.rec();
        (0..rec.slots.len())
            .filter(|&i| rec.slots[i].is_up())
            .collect()
    }

    /// Whether every node up sees every other node up (and only those).
    pub fn views_whole(&self) -> bool {
        let rec = self.rec();
        let up: Vec<&Slot> = rec.slots.iter().filter(|s| s.is_ready()).collect();
        if up.len() != rec.slots.iter().filter(|s| s.is_present()).count() {
            return false;
        }
        let names: Vec<String> = {
            let mut n: Vec<String> = up.iter().map(|s| s.name.clone()).collect();
            n.sort();
            n
        };
        up.iter().all(|s| {
            s.node
                .as_ref()
                .is_some_and(|n| n.members().unwrap_or_default() == names)
        })
    }

    /// Whether the connections between the ready nodes, `without` the node at
    /// that slot, still let any two of them see each other or a common
    /// neighbour (so that no two of them can order writes apart).
    pub fn close_knit_without(&self, without: Option<usize>) -> bool {
        let rec = self.rec();
        let ready: Vec<(usize, Vec<String>)> = (0..rec.slots.len())
            .filter(|&i| Some(i) != without && rec.slots[i].is_ready())
            .filter(|&i| !rec.slots[i].freeze.is_frozen())
            .map(|i| {
                (
                    i,
                    rec.slots[i]
                        .node
                        .as_ref()
                        .unwrap()
                        .members()
                        .unwrap_or_default(),
                )
            })
            .collect();
        let sees = |a: usize, b: usize| {
            let (ia, ma) = &ready[a];
            let (ib, mb) = &ready[b];
            ma.contains(&rec.slots[*ib].name) && mb.contains(&rec.slots[*ia].name)
        };
        (0..ready.len()).all(|a| {
            (a + 1..ready.len())
                .all(|b| sees(a, b) || (0..ready.len()).any(|c| sees(a, c) && sees(c, b)))
        })
    }

    /// Cuts the link between slots `a` and `b`.
    pub fn cut(&self, a: usize, b: usize) {
        self.net.cut(ip_of(a), ip_of(b));
        self.rec().cuts.insert((a.min(b), a.max(b)));
    }

    /// Heals every cut link.
    pub fn heal_all(&self) {
        let cuts = std::mem::take(&mut self.rec().cuts);
        for (a, b) in cuts {
            self.net.heal(ip_of(a), ip_of(b));
        }
    }

    /// The slot of the node that orders writes when views are whole: the
    /// smallest name among the ready nodes.
    pub fn sequencer(&self) -> Option<usize> {
        let rec = self.rec();
        (0..rec.slots.len())
            .filter(|&i| rec.slots[i].is_ready())
            .min_by(|&a, &b| rec.slots[a].name.cmp(&rec.slots[b].name))
    }
}

/// The whole run of one seed: start, faults with clients, final heal,
/// settle, convergence, checks.
pub async fn simulate(params: Params) -> Outcome {
    let net = MemNet::seeded(mix(params.seed ^ 0x006e_6574));
    // 2026-01-01, so that clock dots look like real ones.
    net.set_clock(1_767_225_600_000);
    let names = params.slot_names();
    let slots = names
        .iter()
        .enumerate()
        .map(|(i, name)| Slot {
            name: name.clone(),
            ip: ip_of(i),
            node: None,
            table: None,
            starting: None,
            incarnation: 0,
            ready_at: None,
            freeze: Arc::new(Freeze::default()),
        })
        .collect();
    let sim = Arc::new(Sim {
        net,
        start: Instant::now(),
        rec: Mutex::new(Record {
            slots,
            calls: Vec::new(),
            faults: Vec::new(),
            conflicts: Vec::new(),
            cuts: BTreeSet::new(),
            paused: vec![Vec::new(); names.len()],
            next_call: 0,
        }),
        stop_clients: AtomicBool::new(false),
        lanes: Mutex::new(nemesis::LaneState::default()),
        params,
    });
    let first = usize::from(sim.params.joiner);
    // The initial nodes, one after the other as a deployment would.
    for slot in first..names.len() {
        sim.start_slot(slot);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !sim.rec().slots[slot].is_ready() {
            assert!(Instant::now() < deadline, "n{slot} never became ready");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    wait_for(&sim, Duration::from_secs(10), |s| s.views_whole()).await;

    let clients = clients::start(&sim);
    nemesis::run(&sim).await;
    // The final heal: every link, every node back, nothing frozen.
    final_heal(&sim).await;
    let healed_at = sim.now_us();
    sim.fault("final heal".to_string());
    tokio::time::sleep(Duration::from_millis(sim.params.after_heal_ms)).await;
    sim.stop_clients.store(true, Ordering::SeqCst);
    for c in clients {
        let _ = c.await;
    }
    let quiet_at = sim.now_us();
    // Convergence: every replica identical.
    let limit = Duration::from_secs(20);
    let converged_at = wait_for(&sim, limit, |s| s.views_whole() && digests(s).len() == 1)
        .await
        .then(|| sim.now_us());
    let finals = final_state(&sim);
    if converged_at.is_none() {
        let rec = sim.rec();
        let views: Vec<String> = rec
            .slots
            .iter()
            .map(|s| match (&s.node, &s.table) {
                (Some(n), Some(t)) => format!(
                    "{} sees {:?}, digest {}",
                    s.name,
                    n.members().unwrap_or_default(),
                    t.stats().map(|s| s.digest).unwrap_or_default()
                ),
                (Some(_), None) => format!("{} is starting", s.name),
                _ => format!("{} is down", s.name),
            })
            .collect();
        drop(rec);
        sim.fault(format!("not converged: {}", views.join("; ")));
    }
    // Close every node (crash-like, keeping each conflict log) so that
    // nothing outlives the run.
    for slot in 0..names.len() {
        sim.stop_slot(slot, false).await;
    }
    checker::check(&sim, healed_at, quiet_at, converged_at, &finals)
}

async fn final_heal(sim: &Arc<Sim>) {
    sim.heal_all();
    let n = sim.params.slot_names().len();
    for a in 0..n {
        for b in a + 1..n {
            sim.net.clear_link(ip_of(a), ip_of(b));
        }
    }
    for slot in 0..n {
        let (up, frozen) = {
            let rec = sim.rec();
            (rec.slots[slot].is_present(), rec.slots[slot].freeze.clone())
        };
        frozen.set(false);
        if !up {
            sim.start_slot(slot);
        }
    }
}

/// Polls `cond` every 10 ms for up to `limit`; returns whether it held.
pub async fn wait_for(sim: &Arc<Sim>, limit: Duration, cond: impl Fn(&Sim) -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond(sim) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The distinct table digests of the ready nodes.
pub fn digests(sim: &Sim) -> BTreeSet<String> {
    let rec = sim.rec();
    rec.slots
        .iter()
        .filter_map(|s| s.table.as_ref())
        .filter_map(|t| t.stats().ok().map(|s| s.digest))
        .collect()
}

/// Per ready slot: its name, its digest and every key's value.
pub struct FinalState {
    pub slot: usize,
    pub name: String,
    pub digest: String,
    pub values: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn final_state(sim: &Sim) -> Vec<FinalState> {
    let rec = sim.rec();
    let mut keys: Vec<Vec<u8>> = COUNTERS.iter().map(|k| k.as_bytes().to_vec()).collect();
    keys.extend((0..REGISTERS).map(|i| format!("r{i}").into_bytes()));
    rec.slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let t = s.table.as_ref()?;
            Some(FinalState {
                slot: i,
                name: s.name.clone(),
                digest: t.stats().ok()?.digest,
                values: keys
                    .iter()
                    .map(|k| (k.clone(), t.get(k).ok().flatten()))
                    .collect(),
            })
        })
        .collect()
}
