//! A node: one member of a cluster, with its tables, its view and its tasks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio::task::JoinSet;

use crate::agreement::Agreement;
use crate::auth;
use crate::config::{validate_name, Config};
use crate::error::{Error, ErrorKind, Result};
use crate::events::{Event, Events};
use crate::membership::Membership;
use crate::merge::Merges;
use crate::net::{Net, TcpNet};
use crate::replication::Replication;
use crate::resolve::ConflictHandler;
use crate::table::{Table, TableShared};
use crate::vclock::ActorId;
use crate::wire::{Message, TableInfo};

/// Process-wide count of started nodes, for default names.
static NODES_STARTED: AtomicU64 = AtomicU64::new(0);

/// Traffic counters of a node.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
    pub merge_bytes_sent: AtomicU64,
}

/// The shared state of a node; tasks and table handles hold it.
pub(crate) struct NodeInner {
    pub config: Config,
    pub actor: ActorId,
    pub address: String,
    /// The address outgoing connections come from: the listen address, unless
    /// that is a wildcard.
    pub source_ip: Option<std::net::IpAddr>,
    pub cookie: Vec<u8>,
    pub net: Arc<dyn Net>,
    pub tables: RwLock<HashMap<String, Arc<TableShared>>>,
    /// Taken at shutdown, which ends every subscription.
    events: Mutex<Option<broadcast::Sender<Event>>>,
    pub closed: AtomicBool,
    pub rng: Mutex<StdRng>,
    pub members: Membership,
    pub agreement: Agreement,
    pub replication: Replication,
    pub merges: Merges,
    pub stats: Stats,
    tasks: Mutex<JoinSet<()>>,
}

impl NodeInner {
    /// Spawns a long-lived task that `close` aborts.
    pub fn spawn<F>(&self, fut: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if let Ok(mut tasks) = self.tasks.lock() {
            while tasks.try_join_next().is_some() {}
            tasks.spawn(fut);
        }
    }

    pub fn emit(&self, event: Event) {
        tracing::debug!(node = %self.actor, ?event, "event");
        if let Ok(events) = self.events.lock() {
            if let Some(tx) = events.as_ref() {
                let _ = tx.send(event);
            }
        }
    }

    pub fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            Err(Error::closed())
        } else {
            Ok(())
        }
    }

    pub fn random_nonce(&self) -> [u8; 32] {
        let mut nonce = [0u8; 32];
        if let Ok(mut rng) = self.rng.lock() {
            rng.fill(&mut nonce);
        }
        nonce
    }

    /// Tombstones whose newest dot is older than this are past their retention.
    pub fn tombstone_cutoff_ms(&self) -> u64 {
        wall_clock_ms().saturating_sub(self.config.tombstone_retention.as_millis() as u64)
    }

    pub fn table(&self, name: &str) -> Option<Arc<TableShared>> {
        self.tables.read().ok()?.get(name).cloned()
    }

    /// The table `name`, created empty (and announced) when missing.
    pub fn ensure_table(self: &Arc<Self>, name: &str) -> Result<Arc<TableShared>> {
        validate_name("table name", name)?;
        if let Some(t) = self.table(name) {
            return Ok(t);
        }
        let created = {
            let mut tables = self
                .tables
                .write()
                .map_err(|_| Error::internal("table registry lock poisoned"))?;
            if let Some(t) = tables.get(name) {
                return Ok(t.clone());
            }
            let t = TableShared::start(self, name);
            tables.insert(name.to_string(), t.clone());
            t
        };
        self.emit(Event::TableCreated {
            table: name.to_string(),
        });
        Ok(created)
    }

    pub fn table_infos(&self) -> Vec<TableInfo> {
        let tables = match self.tables.read() {
            Ok(t) => t,
            Err(_) => return Vec::new(),
        };
        let mut infos: Vec<TableInfo> = tables.values().map(|t| t.info()).collect();
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        infos
    }

    fn shutdown(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.members.close_all();
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.abort_all();
        }
        self.replication.fail_all();
        if let Ok(mut events) = self.events.lock() {
            events.take();
        }
    }
}

/// Closes the node when the last user handle is dropped without `close`.
struct CloseGuard(Arc<NodeInner>);

impl Drop for CloseGuard {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

/// A running lbmkv node. Cheap to clone; the node closes when `close` is called
/// or the last clone is dropped.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
    _guard: Arc<CloseGuard>,
}

/// A node's description, as `info()` returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Info {
    /// The node's name.
    pub name: String,
    /// The node's actor id (name and incarnation).
    pub actor: String,
    /// Where it listens.
    pub address: String,
    /// Names of the nodes in its view, itself included, sorted.
    pub members: Vec<String>,
    /// Tables, sorted by name.
    pub tables: Vec<TableStats>,
    /// Bytes this node wrote to peers.
    pub bytes_sent: u64,
    /// Bytes this node read from peers.
    pub bytes_received: u64,
    /// Bytes of merge traffic this node wrote.
    pub merge_bytes_sent: u64,
}

/// One table in [`Info`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableStats {
    /// The table's name.
    pub name: String,
    /// Live entries.
    pub entries: usize,
    /// Bytes of live keys and values.
    pub bytes: usize,
    /// Tombstones kept for merges.
    pub tombstones: usize,
    /// Entries in the conflict log.
    pub conflicts: usize,
    /// The table digest (equal digests: equal replicas).
    pub digest: String,
}

impl Node {
    /// Starts a node on the current tokio runtime: binds its listener, starts
    /// its tasks and makes a first attempt to reach every seed.
    pub async fn start(config: Config) -> Result<Node> {
        Self::start_with_net(config, Arc::new(TcpNet)).await
    }

    /// Starts a node whose network goes through `net` (a simulator, for example).
    pub async fn start_with_net(config: Config, net: Arc<dyn Net>) -> Result<Node> {
        Ok(Self::start_subscribed_with_net(config, net).await?.0)
    }

    /// Starts a node and subscribes to its events before it reaches its seeds,
    /// so that the `node_up` of peers met during the start are seen too.
    pub async fn start_subscribed(config: Config) -> Result<(Node, Events)> {
        Self::start_subscribed_with_net(config, Arc::new(TcpNet)).await
    }

    /// [`Node::start_subscribed`] over `net`.
    pub async fn start_subscribed_with_net(
        config: Config,
        net: Arc<dyn Net>,
    ) -> Result<(Node, Events)> {
        config.validate()?;
        let mut rng = match config.rng_seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let incarnation: u64 = rng.random();
        let ordinal = NODES_STARTED.fetch_add(1, Ordering::Relaxed);
        let name = match &config.name {
            Some(n) => n.clone(),
            None => default_name(ordinal),
        };
        let cookie = auth::resolve_cookie(config.cookie.as_deref(), rng.random())?;
        let listen_addr = resolve_one(&*net, &config.listen).await?;
        let listener = net
            .bind(listen_addr)
            .await
            .map_err(|e| Error::io(&format!("cannot listen on {}", config.listen), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the listen address", e))?;
        let address = advertised(local);
        let (events, first_subscriber) = broadcast::channel(4096);
        let inner = Arc::new(NodeInner {
            actor: ActorId::new(&name, incarnation),
            address,
            source_ip: Some(local.ip()).filter(|ip| !ip.is_unspecified()),
            cookie,
            net,
            tables: RwLock::new(HashMap::new()),
            events: Mutex::new(Some(events)),
            closed: AtomicBool::new(false),
            rng: Mutex::new(rng),
            members: Membership::new(),
            agreement: Agreement::new(ActorId::new(&name, incarnation), config.failure_timeout),
            replication: Replication::default(),
            merges: Merges::default(),
            stats: Stats::default(),
            tasks: Mutex::new(JoinSet::new()),
            config,
        });
        tracing::info!(node = %inner.actor, address = %inner.address, "node started");
        crate::membership::start(&inner, listener);
        crate::merge::start_maintenance(&inner);
        crate::replication::start_ack_watchdog(&inner);
        crate::agreement::start(&inner);
        let seeds = inner.config.seeds.clone();
        let first_attempts = crate::membership::dial_seeds(&inner, &seeds);
        let _ = tokio::time::timeout(inner.config.request_timeout, first_attempts).await;
        crate::agreement::start_join(&inner);
        let node = Node {
            _guard: Arc::new(CloseGuard(inner.clone())),
            inner,
        };
        Ok((
            node,
            Events {
                rx: first_subscriber,
            },
        ))
    }

    #[cfg(test)]
    pub(crate) fn inner(&self) -> &Arc<NodeInner> {
        &self.inner
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.actor.name
    }

    /// The node's actor id (name plus incarnation).
    pub fn actor(&self) -> &ActorId {
        &self.inner.actor
    }

    /// The address peers reach this node at, `host:port`.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }

    /// Creates the table `name` (or returns the existing one) once it is readable
    /// and writable here; a joining node first receives the cluster's copy.
    pub async fn create_table(&self, name: &str) -> Result<Table> {
        self.create_table_with(name, None).await
    }

    /// Like [`Node::create_table`], and sets the table's conflict handler when given.
    pub async fn create_table_with(
        &self,
        name: &str,
        on_conflict: Option<Arc<dyn ConflictHandler>>,
    ) -> Result<Table> {
        self.inner.check_open()?;
        let shared = self.inner.ensure_table(name)?;
        if on_conflict.is_some() {
            shared.set_handler(on_conflict);
        }
        let info = shared.info();
        self.inner
            .members
            .broadcast(&self.inner, &Message::TableChanged(info));
        // A joining node's first merges stream whole tables, which can take a
        // while for large ones: wait for them well beyond one request timeout
        // (each of their steps has that timeout, and a peer that goes away ends it).
        let limit = self.inner.config.request_timeout * 12;
        if !self.inner.agreement.wait_ready(limit).await {
            return Err(Error::unavailable(format!(
                "the table's state did not arrive from the cluster within {} s",
                limit.as_secs()
            )));
        }
        Ok(Table::new(self.inner.clone(), shared))
    }

    /// The existing table `name`.
    pub fn table(&self, name: &str) -> Result<Table> {
        self.inner.check_open()?;
        validate_name("table name", name)?;
        let shared = self.inner.table(name).ok_or_else(|| {
            Error::new(ErrorKind::NoSuchTable, format!("no table named {name:?}"))
        })?;
        Ok(Table::new(self.inner.clone(), shared))
    }

    /// Names of the tables on this node, sorted.
    pub fn tables(&self) -> Vec<String> {
        self.inner
            .table_infos()
            .into_iter()
            .map(|t| t.name)
            .collect()
    }

    /// Names of the nodes in this node's view, itself included, sorted.
    pub fn members(&self) -> Vec<String> {
        self.inner
            .members
            .view(&self.inner)
            .into_iter()
            .map(|a| a.name.to_string())
            .collect()
    }

    /// A description of the node and its tables.
    pub fn info(&self) -> Info {
        let tables = match self.inner.tables.read() {
            Ok(t) => {
                let mut v: Vec<TableStats> = t.values().map(|t| t.stats()).collect();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                v
            }
            Err(_) => Vec::new(),
        };
        Info {
            name: self.name().to_string(),
            actor: self.inner.actor.to_string(),
            address: self.inner.address.clone(),
            members: self.members(),
            tables,
            bytes_sent: self.inner.stats.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.inner.stats.bytes_received.load(Ordering::Relaxed),
            merge_bytes_sent: self.inner.stats.merge_bytes_sent.load(Ordering::Relaxed),
        }
    }

    /// Connects to the node at `addr` (`host:port`) and waits for the handshake;
    /// also lifts a `disconnect` of that node.
    pub async fn connect(&self, addr: &str) -> Result<()> {
        self.inner.check_open()?;
        crate::membership::connect(&self.inner, addr).await
    }

    /// Drops the connection to the node `name` and refuses it until `connect`
    /// is called for it again.
    pub async fn disconnect(&self, name: &str) -> Result<()> {
        self.inner.check_open()?;
        validate_name("node name", name)?;
        self.inner.members.disconnect(&self.inner, name);
        Ok(())
    }

    /// Subscribes to this node's events.
    pub fn subscribe(&self) -> Events {
        Events {
            rx: match self
                .inner
                .events
                .lock()
                .ok()
                .and_then(|e| e.as_ref().map(|tx| tx.subscribe()))
            {
                Some(rx) => rx,
                // Closed: a subscription that ends at once.
                None => broadcast::channel(1).1,
            },
        }
    }

    /// Whether `close` was called (or the node was dropped).
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::Acquire)
    }

    /// Leaves the cluster: tells every peer (which see `node_down` at once),
    /// stops every task. Later calls on the node or its tables fail with `Closed`.
    pub async fn close(&self) -> Result<()> {
        if self.is_closed() {
            return Ok(());
        }
        self.inner.members.say_goodbye(&self.inner).await;
        self.inner.shutdown();
        Ok(())
    }
}

fn default_name(ordinal: u64) -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "lbmkv".to_string());
    let pid = std::process::id();
    if ordinal == 0 {
        format!("{host}-{pid}")
    } else {
        format!("{host}-{pid}-{}", ordinal + 1)
    }
}

/// Resolves `host:port` to its first address.
pub(crate) async fn resolve_one(net: &dyn Net, addr: &str) -> Result<SocketAddr> {
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(a);
    }
    if !addr.contains(':') {
        return Err(Error::invalid(format!("address {addr:?} is not host:port")));
    }
    let addrs = net
        .resolve(addr.to_string())
        .await
        .map_err(|e| Error::invalid(format!("cannot resolve {addr:?}: {e}")))?;
    addrs
        .into_iter()
        .next()
        .ok_or_else(|| Error::invalid(format!("{addr:?} resolves to no address")))
}

/// The address to tell peers: a wildcard listen address is announced as loopback.
fn advertised(local: SocketAddr) -> String {
    if local.ip().is_unspecified() {
        let ip = if local.is_ipv4() {
            std::net::IpAddr::from([127, 0, 0, 1])
        } else {
            std::net::IpAddr::from(std::net::Ipv6Addr::LOCALHOST)
        };
        SocketAddr::new(ip, local.port()).to_string()
    } else {
        local.to_string()
    }
}

/// Milliseconds since the Unix epoch: the timestamps of clock dots.
pub(crate) fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A short pause used when views are settling.
pub(crate) const SETTLE_PAUSE: Duration = Duration::from_millis(5);
