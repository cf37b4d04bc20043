//! What every part of a node reads: its identity and configuration, its
//! network, events, traffic counters, random numbers, tasks and table
//! replicas. It holds no service; the services hold it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use rand::rngs::StdRng;
use rand::Rng;
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::events::{Event, Events, ResolutionKind};
use crate::flow::WriteBudget;
use crate::locks::{lock, read, write};
use crate::net::Net;
use crate::replica::{ConflictRecord, Replica};
use crate::tls::Tls;
use crate::vclock::ActorId;
use crate::wire::TableInfo;

/// Traffic and activity counters of a node (what `metrics()` exposes).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub merge_bytes_sent: AtomicU64,
    /// Writes (put, delete, their batches, updates) this node submitted and
    /// their latency until acknowledged or failed.
    pub writes: Histogram,
    /// Writes that failed.
    pub write_errors: AtomicU64,
    /// Strong reads this node submitted.
    pub strong_reads: AtomicU64,
    /// Peers that joined or left this node's view.
    pub view_changes: AtomicU64,
    /// Merges of one table with one peer that finished.
    pub merges: AtomicU64,
    /// How long those merges took, from their first message to their last.
    pub merge_durations: Histogram,
    /// Conflicts settled by a conflict handler.
    pub conflicts_handled: AtomicU64,
    /// Conflicts settled by the fallback rule (no handler, or it failed).
    pub conflicts_fallback: AtomicU64,
}

/// Upper bounds (seconds) of the buckets of latency histograms.
pub(crate) const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram with fixed buckets, updated without locks.
#[derive(Debug, Default)]
pub(crate) struct Histogram {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A copy of a [`Histogram`]: cumulative bucket counts, count, sum in seconds.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HistogramSnapshot {
    pub cumulative: Vec<u64>,
    pub count: u64,
    pub sum_seconds: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The histogram as it is now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            count: self.count.load(Ordering::Relaxed),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// A node's identity and shared facilities.
pub(crate) struct Context {
    pub config: Config,
    pub actor: ActorId,
    /// Where peers reach this node, `host:port` (loopback for a wildcard
    /// listen address without an advertised one).
    pub address: String,
    /// What the handshake tells peers: the advertised address, else the listen
    /// address as bound (a wildcard one is completed by each peer with the
    /// address it sees this node come from).
    pub announce: String,
    /// The address outgoing connections come from: the listen address, unless
    /// that is a wildcard.
    pub source_ip: Option<IpAddr>,
    pub cookie: Vec<u8>,
    pub net: Arc<dyn Net>,
    /// Mutual TLS under the handshake, when configured.
    pub tls: Option<Arc<Tls>>,
    pub stats: Stats,
    /// When the node started (for its uptime).
    pub started: tokio::time::Instant,
    /// The bytes of writes that may wait for sequencers at once.
    pub writes: WriteBudget,
    replicas: RwLock<HashMap<String, Arc<Replica>>>,
    /// Taken at shutdown, which ends every subscription.
    events: Mutex<Option<broadcast::Sender<Event>>>,
    closed: AtomicBool,
    rng: Mutex<StdRng>,
    tasks: Mutex<JoinSet<()>>,
}

/// What a node is started with, before its context exists.
pub(crate) struct Identity {
    pub config: Config,
    pub actor: ActorId,
    pub address: String,
    pub announce: String,
    pub source_ip: Option<IpAddr>,
    pub cookie: Vec<u8>,
    pub net: Arc<dyn Net>,
    pub tls: Option<Arc<Tls>>,
    pub rng: StdRng,
}

impl Context {
    /// The context of a new node, and the first subscription to its events.
    pub fn new(id: Identity) -> (Arc<Context>, Events) {
        let (events, rx) = broadcast::channel(4096);
        let writes = WriteBudget::new(id.config.write_budget());
        let ctx = Context {
            writes,
            config: id.config,
            actor: id.actor,
            address: id.address,
            announce: id.announce,
            source_ip: id.source_ip,
            cookie: id.cookie,
            net: id.net,
            tls: id.tls,
            stats: Stats::default(),
            started: tokio::time::Instant::now(),
            replicas: RwLock::new(HashMap::new()),
            events: Mutex::new(Some(events)),
            closed: AtomicBool::new(false),
            rng: Mutex::new(id.rng),
            tasks: Mutex::new(JoinSet::new()),
        };
        (Arc::new(ctx), Events { rx })
    }

    /// Spawns a task of the node, which `close` aborts. Tasks hold `Weak`
    /// references to the services they serve, so they never keep a node alive.
    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let mut tasks = lock(&self.tasks);
        while tasks.try_join_next().is_some() {}
        tasks.spawn(fut);
    }

    /// Reports `event` to every subscriber.
    pub fn emit(&self, event: Event) {
        tracing::debug!(node = %self.actor, ?event, "event");
        self.count(&event);
        if let Some(tx) = lock(&self.events).as_ref() {
            let _ = tx.send(event);
        }
    }

    /// Counts what `event` reports in the node's stats.
    fn count(&self, event: &Event) {
        let counter = match event {
            Event::NodeUp { .. } | Event::NodeDown { .. } => &self.stats.view_changes,
            Event::Merged { .. } => &self.stats.merges,
            Event::Conflict {
                resolution: ResolutionKind::Handler,
                ..
            } => &self.stats.conflicts_handled,
            Event::Conflict { .. } => &self.stats.conflicts_fallback,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A new subscription to the node's events (one that ends at once after close).
    pub fn subscribe(&self) -> Events {
        match lock(&self.events).as_ref() {
            Some(tx) => Events { rx: tx.subscribe() },
            None => Events {
                rx: broadcast::channel(1).1,
            },
        }
    }

    /// `Closed` once the node is closed.
    pub fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            Err(Error::closed())
        } else {
            Ok(())
        }
    }

    /// Whether the node is closed.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Marks the node closed, stops its tasks and ends its subscriptions;
    /// false when it was closed already.
    pub fn close(&self) -> bool {
        if self.closed.swap(true, Ordering::AcqRel) {
            return false;
        }
        lock(&self.tasks).abort_all();
        lock(&self.events).take();
        true
    }

    /// A fresh handshake nonce.
    pub fn random_nonce(&self) -> [u8; 32] {
        let mut nonce = [0u8; 32];
        lock(&self.rng).fill(&mut nonce);
        nonce
    }

    /// The replica of table `name`, if the node has it.
    pub fn replica(&self, name: &str) -> Option<Arc<Replica>> {
        read(&self.replicas).get(name).cloned()
    }

    /// Every replica, sorted by name.
    pub fn replicas(&self) -> Vec<Arc<Replica>> {
        let mut all: Vec<Arc<Replica>> = read(&self.replicas).values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The replica of `name`, made by `make` when missing; tells whether it was made.
    pub fn replica_or_insert(
        &self,
        name: &str,
        make: impl FnOnce() -> Arc<Replica>,
    ) -> (Arc<Replica>, bool) {
        if let Some(r) = self.replica(name) {
            return (r, false);
        }
        let mut replicas = write(&self.replicas);
        if let Some(r) = replicas.get(name) {
            return (r.clone(), false);
        }
        let r = make();
        replicas.insert(name.to_string(), r.clone());
        (r, true)
    }

    /// What peers learn about this node's tables, sorted by name.
    pub fn table_infos(&self) -> Vec<TableInfo> {
        self.replicas().iter().map(|r| r.info()).collect()
    }

    /// Milliseconds since the Unix epoch on this node: the timestamps of
    /// clock dots. The network's clock when it simulates one (with a skew per
    /// node), else the system's.
    pub fn wall_clock_ms(&self) -> u64 {
        self.net
            .wall_clock_ms(self.source_ip)
            .unwrap_or_else(wall_clock_ms)
    }

    /// Tombstones whose newest dot is older than this are past their retention.
    pub fn tombstone_cutoff_ms(&self) -> u64 {
        self.wall_clock_ms()
            .saturating_sub(self.config.tombstone_retention.as_millis() as u64)
    }

    /// A conflict settled without the handler's decision: the losing version
    /// goes to the table's log and a `conflict` event reports it.
    pub fn report_conflict(&self, replica: &Replica, record: ConflictRecord, how: ResolutionKind) {
        self.emit(Event::Conflict {
            table: replica.name.to_string(),
            key: String::from_utf8_lossy(&record.key).into_owned(),
            resolution: how,
        });
        replica.log_conflict(record, self.config.conflict_log_limit);
    }
}

/// Milliseconds since the Unix epoch by the system clock.
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A short pause used when views are settling.
pub(crate) const SETTLE_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);
