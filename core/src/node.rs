//! A node: the composition root. It builds the context and the services in
//! layer order (cluster, agreement, replication, merge), receives what the
//! cluster delivers upward ([`Inbound`]) and routes each message to the
//! service that handles it, and offers the public API.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::agreement::{self, Agreement, CatchUp};
use crate::auth;
use crate::cluster::{Inbound, Membership, PeerConn};
use crate::config::{validate_name, Config};
use crate::context::{Context, Identity};
use crate::error::{Error, ErrorKind, Result};
use crate::events::Events;
use crate::info::{Info, PeerStats};
use crate::merge::Merge;
use crate::net::{Net, TcpNet};
use crate::replication::Replication;
use crate::resolve::ConflictHandler;
use crate::table::Table;
use crate::tls::Tls;
use crate::vclock::ActorId;
use crate::wire::{Message, TableInfo, WriteOp, WriteRefusal};

/// Process-wide count of started nodes, for default names.
static NODES_STARTED: AtomicU64 = AtomicU64::new(0);

/// The services of one node, in layer order.
pub(crate) struct NodeInner {
    ctx: Arc<Context>,
    members: Arc<Membership>,
    agreement: Arc<Agreement>,
    replication: Arc<Replication>,
    merge: Arc<Merge>,
    /// When each live connection (by id) joined the view.
    connected: std::sync::Mutex<std::collections::HashMap<u64, tokio::time::Instant>>,
}

impl NodeInner {
    fn new(ctx: Arc<Context>) -> Arc<NodeInner> {
        let members = Membership::new(&ctx);
        let agreement = Arc::new(Agreement::new(
            ctx.actor.clone(),
            ctx.config.failure_timeout,
        ));
        let replication = Replication::new(&ctx, &members, &agreement);
        let merge = Merge::new(&ctx, &members, &replication);
        let inner = Arc::new(NodeInner {
            ctx,
            members,
            agreement,
            replication,
            merge,
            connected: Default::default(),
        });
        let inbound: std::sync::Weak<dyn Inbound> = Arc::downgrade(&inner) as _;
        inner.members.deliver_to(inbound);
        inner
    }

    /// Starts the node's periodic tasks.
    fn start_tasks(&self) {
        self.merge.start_maintenance();
        self.replication.start_ack_watchdog();
        agreement::start(&self.ctx, &self.agreement, &self.members);
    }

    /// A peer's table: created here when missing, and its handler flag noted.
    fn on_table_info(&self, peer: &PeerConn, info: &TableInfo) {
        match self.replication.ensure_table(&info.name) {
            Ok(_) => self.members.set_handler(&peer.actor, info),
            Err(e) => tracing::warn!(peer = %peer.actor, "ignoring a table: {e}"),
        }
    }

    /// Runs the merge a peer's turn to this node asks for, again until it
    /// finishes while it is still wanted, then credits it.
    fn catch_up(&self, job: CatchUp) {
        let (agreement, merge) = (self.agreement.clone(), self.merge.clone());
        let limit = self.ctx.config.request_timeout * 12;
        self.ctx.spawn(async move {
            let (actor, conn_id) = (job.conn.actor.clone(), job.conn.conn_id);
            // A round on a closed connection fails at once without waiting:
            // retrying it would spin and never yield to the node's close.
            while !job.conn.is_closed() && agreement.catch_up_wanted(&actor, conn_id, job.turn) {
                if merge.merge_round(&job.conn, limit).await {
                    agreement.caught_up(&actor, conn_id, job.turn);
                    return;
                }
            }
        });
    }

    /// A peer's write goes to the sequencer once its bytes fit the write
    /// budget, which it holds until it is answered (see [`crate::flow`]).
    fn on_write_request(&self, peer: &Arc<PeerConn>, id: u64, table: String, op: WriteOp) {
        let budget = &self.ctx.writes;
        let cost = match budget.check(&op) {
            Ok(cost) => cost,
            Err(e) => {
                let result = Err(WriteRefusal::Failed(e.kind(), e.message().to_string()));
                return peer.send(&Message::WriteReply { id, result });
            }
        };
        if let Some(share) = budget.try_reserve(cost) {
            peer.hold_share(id, share);
            return self.replication.on_write_request(peer, id, table, op);
        }
        let (ctx, peer) = (self.ctx.clone(), peer.clone());
        let replication = Arc::downgrade(&self.replication);
        let deadline = tokio::time::Instant::now() + self.ctx.config.request_timeout;
        self.ctx.spawn(async move {
            match ctx.writes.reserve(cost, deadline).await {
                Ok(share) => {
                    if let Some(replication) = replication.upgrade() {
                        peer.hold_share(id, share);
                        replication.on_write_request(&peer, id, table, op);
                    }
                }
                Err(e) => {
                    let result = Err(WriteRefusal::Failed(e.kind(), e.message().to_string()));
                    peer.send(&Message::WriteReply { id, result });
                }
            }
        });
    }

    fn shutdown(&self) {
        if !self.ctx.close() {
            return;
        }
        self.members.close_all();
        self.replication.fail_all();
        for replica in self.ctx.replicas() {
            if let Ok(mut store) = replica.write() {
                store.close_watches();
            }
        }
    }
}

impl Inbound for NodeInner {
    fn on_peer_up(&self, peer: &Arc<PeerConn>) {
        crate::locks::lock(&self.connected).insert(peer.conn_id, tokio::time::Instant::now());
        self.agreement.peer_up(peer.clone());
    }

    fn on_message(&self, peer: &Arc<PeerConn>, msg: Message) {
        match msg {
            Message::Tables(list) => {
                for info in &list {
                    self.on_table_info(peer, info);
                }
                // The first round of merges on a new connection, led by the smaller actor.
                if self.ctx.actor < peer.actor {
                    self.merge.start_round(peer);
                }
            }
            Message::TableChanged(info) => self.on_table_info(peer, &info),
            Message::Status(status) => {
                if let Some(job) = self.agreement.on_status(peer, status) {
                    self.catch_up(job);
                }
            }
            Message::Probe { id } => self.agreement.on_probe(peer, id),
            Message::WriteRequest { id, table, op } => self.on_write_request(peer, id, table, op),
            Message::WriteReply { id, result } => self.replication.on_write_reply(id, result),
            Message::Apply {
                id,
                table,
                entries,
                causes,
            } => self
                .replication
                .on_apply(peer, id, &table, entries.0, &causes),
            Message::ApplyAck { id } => self.replication.on_apply_ack(&peer.actor, id),
            Message::ApplyRefused { id } => {
                if let Some(job) = self.replication.on_apply_refused(peer, id) {
                    self.catch_up(job);
                }
            }
            Message::Retract { table, versions } => {
                self.replication.on_retract(peer, &table, versions)
            }
            msg @ (Message::SyncDigest { .. }
            | Message::SyncLeaves { .. }
            | Message::SyncDescend { .. }
            | Message::SyncSummary { .. }
            | Message::SyncWant { .. }
            | Message::SyncEntries { .. }
            | Message::SyncDone { .. }
            | Message::SyncAllDone { .. }
            | Message::SyncRequest) => {
                crate::offload::run_long(|| self.merge.on_message(peer, msg))
            }
            other => {
                let reason = format!("sent a message out of place: {other:?}");
                self.members
                    .drop_peer(&peer.actor, Some(peer.conn_id), &reason)
            }
        }
    }

    fn on_connection_ended(&self, peer: &PeerConn, replaced: bool) {
        crate::locks::lock(&self.connected).remove(&peer.conn_id);
        if replaced {
            self.replication.connection_replaced(&peer.actor);
        } else {
            let confirmed = self.agreement.peer_down(&peer.actor, peer.conn_id);
            self.replication.peer_down(&peer.actor, confirmed);
        }
        self.merge.connection_closed(peer.conn_id);
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
        let (tls, actor) = tls_and_actor(&config, incarnation, ordinal)?;
        let cookie = auth::resolve_cookie(config.cookie.as_deref(), rng.random())?;
        let listen_addr = crate::net::resolve_one(&*net, &config.listen).await?;
        let listener = net
            .bind(listen_addr)
            .await
            .map_err(|e| Error::io(&format!("cannot listen on {}", config.listen), e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("cannot read the listen address", e))?;
        if tls.is_none() {
            warn_if_exposed(&actor, local);
        }
        let (ctx, events) = Context::new(Identity {
            actor,
            address: config
                .advertise
                .clone()
                .unwrap_or_else(|| advertised(local)),
            announce: config
                .advertise
                .clone()
                .unwrap_or_else(|| local.to_string()),
            source_ip: Some(local.ip()).filter(|ip| !ip.is_unspecified()),
            cookie,
            net,
            tls,
            rng,
            config,
        });
        tracing::info!(node = %ctx.actor, address = %ctx.address, "node started");
        let inner = NodeInner::new(ctx);
        inner.members.listen(listener);
        inner.start_tasks();
        let seeds = inner.ctx.config.seeds.clone();
        let first_attempts = inner.members.dial_seeds(&seeds);
        let _ = tokio::time::timeout(inner.ctx.config.request_timeout, first_attempts).await;
        agreement::start_join(&inner.ctx, &inner.agreement, &inner.members);
        let guard = Arc::new(CloseGuard(inner.clone()));
        let min_members = inner.ctx.config.min_members;
        if min_members > 1 {
            let limit = inner.ctx.config.request_timeout;
            // On failure the guard closes the node as it drops.
            inner.members.wait_for_members(min_members, limit).await?;
        }
        let node = Node {
            _guard: guard,
            inner,
        };
        Ok((node, events))
    }

    #[cfg(test)]
    pub(crate) fn replication(&self) -> &Arc<Replication> {
        &self.inner.replication
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        &self.inner.ctx.actor.name
    }

    /// The node's actor id (name plus incarnation).
    pub fn actor(&self) -> &ActorId {
        &self.inner.ctx.actor
    }

    /// The address peers reach this node at, `host:port`.
    pub fn address(&self) -> &str {
        &self.inner.ctx.address
    }

    /// The node's configuration.
    pub fn config(&self) -> &Config {
        &self.inner.ctx.config
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
        let inner = &self.inner;
        inner.ctx.check_open()?;
        let replica = inner.replication.ensure_table(name)?;
        if on_conflict.is_some() {
            replica.set_handler(on_conflict);
        }
        inner.replication.announce(&replica);
        // A joining node's first merges stream whole tables, which can take a
        // while for large ones: wait for them well beyond one request timeout
        // (each of their steps has that timeout, and a peer that goes away ends it).
        let limit = inner.ctx.config.request_timeout * 12;
        if !inner.agreement.wait_ready(limit).await {
            return Err(Error::unavailable(format!(
                "the table's state did not arrive from the cluster within {} s",
                limit.as_secs()
            )));
        }
        Ok(self.handle(replica))
    }

    fn handle(&self, replica: Arc<crate::replica::Replica>) -> Table {
        Table::new(
            self.inner.ctx.clone(),
            replica,
            self.inner.replication.clone(),
            self.inner.agreement.clone(),
        )
    }

    /// The existing table `name`.
    pub fn table(&self, name: &str) -> Result<Table> {
        self.inner.ctx.check_open()?;
        validate_name("table name", name)?;
        let replica = self.inner.ctx.replica(name).ok_or_else(|| {
            Error::new(ErrorKind::NoSuchTable, format!("no table named {name:?}"))
        })?;
        Ok(self.handle(replica))
    }

    /// Names of the tables on this node, sorted.
    pub fn tables(&self) -> Result<Vec<String>> {
        self.inner.ctx.check_open()?;
        Ok(self
            .inner
            .ctx
            .table_infos()
            .into_iter()
            .map(|t| t.name)
            .collect())
    }

    /// Names of the nodes in this node's view, itself included, sorted.
    pub fn members(&self) -> Result<Vec<String>> {
        self.inner.ctx.check_open()?;
        Ok(self
            .inner
            .members
            .view()
            .into_iter()
            .map(|a| a.name.to_string())
            .collect())
    }

    /// A description of the node, its peers and its tables.
    pub fn info(&self) -> Result<Info> {
        let ctx = &self.inner.ctx;
        let stats = &ctx.stats;
        let members = self.members()?;
        let sequencer = self.inner.agreement.follows().map(|a| a.name.to_string());
        let now = tokio::time::Instant::now();
        let mut peers: Vec<PeerStats> = {
            let connected = crate::locks::lock(&self.inner.connected);
            self.inner
                .members
                .peers()
                .iter()
                .map(|p| PeerStats {
                    name: p.actor.name.to_string(),
                    address: p.listen.clone(),
                    connected_ms: connected
                        .get(&p.conn_id)
                        .map_or(0, |t| millis(now.saturating_duration_since(*t))),
                    send_queue_bytes: p.queued_bytes() as u64,
                    last_heard_ms: millis(p.since_last_frame()),
                    round_trip_us: p.round_trip_us(),
                })
                .collect()
        };
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        let tables = ctx
            .replicas()
            .iter()
            .map(|r| {
                let mut t = r.stats();
                t.sequencer = sequencer.clone();
                t
            })
            .collect();
        Ok(Info {
            version: crate::VERSION.to_string(),
            uptime_ms: millis(now.saturating_duration_since(ctx.started)),
            name: self.name().to_string(),
            actor: ctx.actor.to_string(),
            address: ctx.address.clone(),
            members,
            sequencer,
            send_queue_bytes: peers.iter().map(|p| p.send_queue_bytes).sum(),
            peers,
            tables,
            bytes_sent: stats.bytes_sent.load(Ordering::Relaxed),
            bytes_received: stats.bytes_received.load(Ordering::Relaxed),
            merge_bytes_sent: stats.merge_bytes_sent.load(Ordering::Relaxed),
            write_budget_in_use: ctx.writes.in_use() as u64,
        })
    }

    /// The node's metrics in the Prometheus text exposition format (version
    /// 0.0.4): what `info()` says plus counters of writes, their latency,
    /// strong reads, view changes, merges and conflicts since the start.
    pub fn metrics(&self) -> Result<String> {
        let info = self.info()?;
        Ok(crate::metrics::render(&info, &self.inner.ctx.stats))
    }

    /// Connects to the node at `addr` (`host:port`) and waits for the handshake;
    /// also lifts a `disconnect` of that node.
    pub async fn connect(&self, addr: &str) -> Result<()> {
        self.inner.ctx.check_open()?;
        self.inner.members.connect(addr).await
    }

    /// Drops the connection to the node `name` and refuses it until `connect`
    /// is called for it again.
    pub async fn disconnect(&self, name: &str) -> Result<()> {
        self.inner.ctx.check_open()?;
        validate_name("node name", name)?;
        self.inner.members.disconnect(name);
        Ok(())
    }

    /// Waits until at least `n` members, this node included, are in this
    /// node's view, for at most `timeout`. `n` of 0 or 1 returns at once.
    ///
    /// Fails with `Unavailable` (saying how many members there are and, for
    /// each seed, why it was not reached) when they are not there in time,
    /// and with `Closed` when the node is closed before or during the wait.
    /// The same wait as the `min_members` option of [`Config`], for a node
    /// that is already running (tests, rolling starts, tools).
    pub async fn wait_for_members(&self, n: usize, timeout: std::time::Duration) -> Result<()> {
        self.inner.ctx.check_open()?;
        // A subscription ends when the node closes: that ends the wait too.
        let mut events = self.subscribe();
        let closed = async move { while events.next().await.is_some() {} };
        let wait = self.inner.members.wait_for_members(n, timeout);
        let (mut closed, mut wait) = (std::pin::pin!(closed), std::pin::pin!(wait));
        std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(result) = wait.as_mut().poll(cx) {
                return std::task::Poll::Ready(result);
            }
            closed.as_mut().poll(cx).map(|()| Err(Error::closed()))
        })
        .await
    }

    /// Subscribes to this node's events.
    pub fn subscribe(&self) -> Events {
        self.inner.ctx.subscribe()
    }

    /// Whether `close` was called (or the node was dropped).
    pub fn is_closed(&self) -> bool {
        self.inner.ctx.is_closed()
    }

    /// Leaves the cluster: tells every peer (which see `node_down` at once),
    /// stops every task. Later calls on the node or its tables fail with `Closed`.
    pub async fn close(&self) -> Result<()> {
        if self.is_closed() {
            return Ok(());
        }
        self.inner.members.say_goodbye().await;
        self.inner.shutdown();
        Ok(())
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The node's TLS material (loaded from the configured files) and its actor:
/// with TLS and no name given, the node is what its certificate names. A
/// certificate that does not name the node, or does not verify, is worth a
/// warning at start: peers will refuse it.
fn tls_and_actor(
    config: &Config,
    incarnation: u64,
    ordinal: u64,
) -> Result<(Option<Arc<Tls>>, ActorId)> {
    let tls = match &config.tls {
        Some(t) => Some(Arc::new(Tls::load(t)?)),
        None => None,
    };
    let name = match (&config.name, &tls) {
        (Some(n), _) => n.clone(),
        // With TLS, the node is what its certificate names.
        (None, Some(t)) if !t.names.is_empty() => t.names[0].clone(),
        (None, _) => default_name(ordinal),
    };
    let actor = ActorId::new(&name, incarnation);
    if let Some(t) = &tls {
        if let Some(why) = t.own_name_problem(&name) {
            tracing::warn!(
                node = %actor,
                "this node's TLS certificate does not name it, so peers will refuse it: {why}"
            );
        }
        if let Some(why) = &t.own_problem {
            tracing::warn!(
                node = %actor,
                "this node's TLS certificate does not verify against its CA, so peers \
                 will refuse it: {why}"
            );
        }
    }
    Ok((tls, actor))
}

/// Warns once at start when the node listens beyond loopback without TLS.
fn warn_if_exposed(actor: &ActorId, local: SocketAddr) {
    if !local.ip().is_loopback() {
        tracing::warn!(
            node = %actor, address = %local,
            "listening on a non-loopback address without TLS: keys, values and \
             membership cross the network in clear text (configure TLS, or run on a \
             network you trust)"
        );
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
