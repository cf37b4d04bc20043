//! Membership and transport: the listener, dialers that reconnect forever, the
//! authenticated handshake, one connection per pair of nodes with heartbeats and
//! failure detection, and the view (this node plus its live peers).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::auth::{self, Role};
use crate::error::{Error, ErrorKind, Result};
use crate::events::Event;
use crate::net::{BoxStream, Listener};
use crate::node::NodeInner;
use crate::vclock::ActorId;
use crate::wire::{
    self, Message, PeerInfo, TableInfo, MAGIC, MAX_HANDSHAKE_FRAME, PROTOCOL_VERSION,
};

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

static NEXT_CONN_ID: AtomicU64 = AtomicU64::new(1);

/// One authenticated connection to a peer.
pub(crate) struct PeerConn {
    pub actor: ActorId,
    pub listen: String,
    /// Unique per connection, so a replaced connection's leftovers are told apart.
    pub conn_id: u64,
    initiated_by_smaller: bool,
    tx: Mutex<Option<mpsc::UnboundedSender<Arc<[u8]>>>>,
    tasks: Mutex<Vec<AbortHandle>>,
    writer_done: watch::Receiver<bool>,
    synced: watch::Sender<bool>,
    /// Merge rounds this node asked for on this connection (run here when this
    /// node initiates merges on it, else asked of the peer).
    pub rounds_asked: AtomicU64,
    /// Merge rounds the peer asked of this node.
    pub rounds_asked_by_peer: AtomicU64,
    /// How many of this node's asked-for rounds are done.
    pub rounds_done: watch::Sender<u64>,
}

impl PeerConn {
    /// Queues `msg` for this peer; a closed connection drops it silently (its
    /// waiters learn of the loss through `drop_peer`).
    pub fn send(&self, node: &NodeInner, msg: &Message) {
        match wire::encode_frame(msg) {
            Ok(frame) => self.send_frame(node, frame.into()),
            Err(e) => tracing::error!("cannot encode a message: {e}"),
        }
    }

    /// Queues an encoded frame.
    pub fn send_frame(&self, node: &NodeInner, frame: Arc<[u8]>) {
        let len = frame.len() as u64;
        if let Ok(tx) = self.tx.lock() {
            if let Some(tx) = tx.as_ref() {
                if tx.send(frame).is_ok() {
                    node.stats.bytes_sent.fetch_add(len, Ordering::Relaxed);
                }
            }
        }
    }

    /// Queues a small control message that traffic statistics leave out.
    pub fn send_control(&self, msg: &Message) {
        match wire::encode_frame(msg) {
            Ok(frame) => {
                if let Ok(tx) = self.tx.lock() {
                    if let Some(tx) = tx.as_ref() {
                        let _ = tx.send(frame.into());
                    }
                }
            }
            Err(e) => tracing::error!("cannot encode a message: {e}"),
        }
    }

    /// The first merge after connecting finished.
    pub fn mark_synced(&self) {
        self.synced.send_replace(true);
    }

    /// Whether the first merge after connecting finished.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Whether the connection is closed for sending.
    pub fn is_closed(&self) -> bool {
        self.tx.lock().map(|tx| tx.is_none()).unwrap_or(true)
    }

    fn abort(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Ok(tasks) = self.tasks.lock() {
            for t in tasks.iter() {
                t.abort();
            }
        }
    }
}

#[derive(Default)]
struct State {
    peers: HashMap<ActorId, Arc<PeerConn>>,
    /// Addresses dialed forever (seeds and every peer ever seen).
    dialing: HashSet<String>,
    /// Names refused until `connect` is called for them.
    banned: HashSet<String>,
    /// Names kept away for a while because they see a node this one cannot
    /// reach (a partial partition), with that node and until when.
    quarantined: HashMap<String, (ActorId, tokio::time::Instant)>,
    /// Which name was last seen at which address, to skip banned peers.
    names_by_addr: HashMap<SocketAddr, String>,
    /// Addresses this node is dialing right now.
    in_flight: HashSet<SocketAddr>,
    /// The tables each peer has a conflict handler for, kept across reconnects
    /// so that every connection knows them from its first message on.
    handlers: HashMap<ActorId, HashSet<String>>,
}

impl State {
    /// Whether connections with `name` are refused now.
    fn refuses(&self, name: &str) -> bool {
        self.banned.contains(name)
            || self
                .quarantined
                .get(name)
                .is_some_and(|(_, until)| *until > tokio::time::Instant::now())
    }
}

/// This node's peers and what it knows about reaching others.
pub(crate) struct Membership {
    state: Mutex<State>,
}

impl Membership {
    pub fn new() -> Self {
        Membership {
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave it half-updated in a way
        // that matters more than stopping membership altogether.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The view: this node and its live peers, sorted by actor id.
    pub fn view(&self, node: &NodeInner) -> Vec<ActorId> {
        let mut v: Vec<ActorId> = self.lock().peers.keys().cloned().collect();
        v.push(node.actor.clone());
        v.sort();
        v
    }

    /// The live peers.
    pub fn peers(&self) -> Vec<Arc<PeerConn>> {
        self.lock().peers.values().cloned().collect()
    }

    /// The connection to `actor`, if live.
    pub fn peer(&self, actor: &ActorId) -> Option<Arc<PeerConn>> {
        self.lock().peers.get(actor).cloned()
    }

    /// Sends `msg` to every live peer.
    pub fn broadcast(&self, node: &NodeInner, msg: &Message) {
        let peers = self.peers();
        if peers.is_empty() {
            return;
        }
        match wire::encode_frame(msg) {
            Ok(frame) => {
                let frame: Arc<[u8]> = frame.into();
                for p in peers {
                    p.send_frame(node, frame.clone());
                }
            }
            Err(e) => tracing::error!("cannot encode a message: {e}"),
        }
    }

    /// The node that runs the conflict handler of `table`: the smallest actor id
    /// among the members that have one.
    pub fn handler_node(&self, node: &NodeInner, table: &str) -> Option<ActorId> {
        let local = node
            .table(table)
            .and_then(|t| t.handler())
            .map(|_| node.actor.clone());
        let st = self.lock();
        st.peers
            .keys()
            .filter(|a| st.handlers.get(*a).is_some_and(|t| t.contains(table)))
            .cloned()
            .chain(local)
            .min()
    }

    /// Removes the connection to `actor` (only connection `conn_id` when given).
    pub fn drop_peer(&self, node: &NodeInner, actor: &ActorId, conn_id: Option<u64>, reason: &str) {
        let removed = {
            let mut st = self.lock();
            match st.peers.get(actor) {
                Some(p) if conn_id.is_none_or(|c| c == p.conn_id) => st.peers.remove(actor),
                _ => None,
            }
        };
        if let Some(p) = removed {
            tracing::info!(node = %node.actor, peer = %actor, reason, "peer down");
            p.abort();
            // Nobody waits on the first merge with a peer that is gone.
            p.mark_synced();
            node.agreement.peer_down(actor, p.conn_id);
            node.replication.peer_down(node, actor);
            node.merges.connection_closed(p.conn_id);
            node.emit(Event::NodeDown {
                node: actor.name.to_string(),
                reason: reason.to_string(),
            });
        }
    }

    /// `disconnect(name)`: drop the peer and refuse it until `connect`.
    pub fn disconnect(&self, node: &NodeInner, name: &str) {
        let victims: Vec<ActorId> = {
            let mut st = self.lock();
            st.banned.insert(name.to_string());
            st.peers
                .keys()
                .filter(|a| &*a.name == name)
                .cloned()
                .collect()
        };
        for a in victims {
            self.drop_peer(node, &a, None, "disconnected");
        }
    }

    /// Tells every peer this node leaves and waits briefly for the words to go out.
    pub async fn say_goodbye(&self, node: &NodeInner) {
        let peers = self.peers();
        for p in &peers {
            p.send(node, &Message::Leaving);
            if let Ok(mut tx) = p.tx.lock() {
                tx.take();
            }
        }
        let flushed = async {
            for p in &peers {
                let mut done = p.writer_done.clone();
                let _ = done.wait_for(|d| *d).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), flushed).await;
    }

    /// Closes every connection (the node is shutting down).
    pub fn close_all(&self) {
        let peers: Vec<Arc<PeerConn>> = self.lock().peers.drain().map(|(_, p)| p).collect();
        for p in peers {
            p.abort();
        }
    }

    /// Records whether `actor` has a conflict handler for a table.
    fn set_handler(&self, actor: &ActorId, info: &TableInfo) {
        let mut st = self.lock();
        let tables = st.handlers.entry(actor.clone()).or_default();
        if info.has_handler {
            tables.insert(info.name.clone());
        } else {
            tables.remove(&info.name);
        }
    }

    fn dialing(&self, listen: &str) -> bool {
        listen
            .parse::<SocketAddr>()
            .is_ok_and(|a| self.lock().in_flight.contains(&a))
    }

    fn is_banned(&self, name: &str) -> bool {
        self.lock().refuses(name)
    }

    /// Steps out of a partial partition: drops every peer in `victims` (each
    /// sees a node this one cannot reach, named beside it) and keeps it away
    /// until this node reaches that node, or for `how_long`.
    pub fn step_out(&self, node: &NodeInner, victims: Vec<(ActorId, ActorId)>, how_long: Duration) {
        let until = tokio::time::Instant::now() + how_long;
        for (peer, unreachable) in victims {
            tracing::warn!(
                node = %node.actor, %peer, %unreachable,
                "partial partition: leaving the peers that see a node this one cannot reach"
            );
            self.lock()
                .quarantined
                .insert(peer.name.to_string(), (unreachable.clone(), until));
            let reason = format!("sees {} which this node cannot reach", unreachable.name);
            self.drop_peer(node, &peer, None, &reason);
        }
    }

    fn connected_to(&self, node: &NodeInner, addr: SocketAddr) -> bool {
        if node.address.parse::<SocketAddr>().ok() == Some(addr) {
            return true;
        }
        let st = self.lock();
        if let Some(name) = st.names_by_addr.get(&addr) {
            if st.refuses(name) {
                return true;
            }
        }
        st.peers
            .values()
            .any(|p| p.listen.parse::<SocketAddr>().ok() == Some(addr))
    }
}

/// Starts accepting connections.
pub(crate) fn start(node: &Arc<NodeInner>, listener: Box<dyn Listener>) {
    let weak = Arc::downgrade(node);
    node.spawn(async move {
        loop {
            let accepted = listener.accept().await;
            let Some(node) = weak.upgrade() else { return };
            match accepted {
                Ok((stream, from)) => {
                    let node2 = node.clone();
                    tokio::spawn(async move {
                        let limit = node2.config.request_timeout;
                        match tokio::time::timeout(limit, accept(&node2, stream)).await {
                            Ok(Ok(())) => {}
                            // A refused peer whose cookie or protocol is wrong is worth a
                            // warning; one that is merely disconnected retries all the time.
                            Ok(Err(e)) if e.kind() == ErrorKind::Protocol => {
                                tracing::warn!(node = %node2.actor, %from, "refused a connection: {e}")
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(node = %node2.actor, %from, "refused a connection: {e}")
                            }
                            Err(_) => {
                                tracing::warn!(node = %node2.actor, %from, "handshake timed out")
                            }
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(node = %node.actor, "accept failed: {e}");
                    drop(node);
                    tokio::time::sleep(MIN_BACKOFF).await;
                }
            }
        }
    });
}

/// Dials every seed forever; the returned future completes once each seed had a first attempt.
pub(crate) fn dial_seeds(
    node: &Arc<NodeInner>,
    seeds: &[String],
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut firsts = Vec::new();
    for seed in seeds {
        let (tx, rx) = oneshot::channel();
        if ensure_dialer(node, seed, Some(tx)) {
            firsts.push(rx);
        }
    }
    async move {
        for rx in firsts {
            let _ = rx.await;
        }
    }
}

/// Starts a dialer for `addr` unless one runs; returns whether it started one.
fn ensure_dialer(node: &Arc<NodeInner>, addr: &str, first: Option<oneshot::Sender<()>>) -> bool {
    if addr == node.address || !node.members.lock().dialing.insert(addr.to_string()) {
        return false;
    }
    node.spawn(dial_forever(Arc::downgrade(node), addr.to_string(), first));
    true
}

/// Keeps this node connected to whatever listens at `addr` (re-resolved on every
/// round), with capped exponential backoff, until the node closes.
async fn dial_forever(node: Weak<NodeInner>, addr: String, mut first: Option<oneshot::Sender<()>>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(n) = node.upgrade() else { return };
        if n.check_open().is_err() {
            return;
        }
        let idle = n.config.heartbeat_interval;
        let targets = match n.net.resolve(addr.clone()).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(%addr, "cannot resolve: {e}");
                Vec::new()
            }
        };
        let mut missing = false;
        for t in targets {
            if n.members.connected_to(&n, t) {
                continue;
            }
            missing = true;
            // A dial that hangs (packets dropped) is given up after a failure
            // timeout, so that a healed link is found again soon after.
            let limit = n.config.failure_timeout;
            match tokio::time::timeout(limit, dial(&n, t, false)).await {
                Ok(Ok(())) => missing = false,
                Ok(Err(e)) => tracing::debug!(node = %n.actor, %t, "dial failed: {e}"),
                Err(_) => tracing::debug!(node = %n.actor, %t, "dial timed out"),
            }
        }
        if let Some(f) = first.take() {
            let _ = f.send(());
        }
        drop(n);
        if missing {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = MIN_BACKOFF;
            tokio::time::sleep(idle).await;
        }
    }
}

/// `connect(addr)`: one dial now (lifting a ban of whoever answers), and a
/// dialer that keeps the connection up afterwards.
pub(crate) async fn connect(node: &Arc<NodeInner>, addr: &str) -> Result<()> {
    let target = crate::node::resolve_one(&*node.net, addr).await?;
    if node.address.parse::<SocketAddr>().ok() == Some(target) {
        return Ok(());
    }
    {
        let mut st = node.members.lock();
        if let Some(name) = st.names_by_addr.get(&target).cloned() {
            st.banned.remove(&name);
        }
    }
    let already = {
        let st = node.members.lock();
        st.peers
            .values()
            .any(|p| p.listen.parse::<SocketAddr>().ok() == Some(target))
    };
    if !already {
        tokio::time::timeout(node.config.request_timeout, dial(node, target, true))
            .await
            .map_err(|_| Error::timeout(format!("connecting to {addr} timed out")))??;
    }
    ensure_dialer(node, &target.to_string(), None);
    Ok(())
}

async fn dial(node: &Arc<NodeInner>, addr: SocketAddr, unban: bool) -> Result<()> {
    node.members.lock().in_flight.insert(addr);
    let result = dial_once(node, addr, unban).await;
    node.members.lock().in_flight.remove(&addr);
    result
}

async fn dial_once(node: &Arc<NodeInner>, addr: SocketAddr, unban: bool) -> Result<()> {
    let mut stream = node.net.connect(node.source_ip, addr).await.map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("cannot connect to {addr}: {e}"),
        )
    })?;
    let nonce = node.random_nonce();
    write_message(
        &mut stream,
        &Message::Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            actor: node.actor.clone(),
            listen: node.address.clone(),
            nonce,
        },
    )
    .await?;
    let (actor, listen, their_nonce, their_proof) =
        match read_message(&mut stream, MAX_HANDSHAKE_FRAME).await? {
            Message::Challenge {
                magic,
                version,
                actor,
                listen,
                nonce,
                proof,
            } => {
                check_version(magic, version)?;
                (actor, listen, nonce, proof)
            }
            other => {
                return Err(Error::protocol(format!(
                    "expected Challenge, got {other:?}"
                )))
            }
        };
    if !auth::verify(
        &node.cookie,
        Role::Acceptor,
        &actor,
        &nonce,
        &their_nonce,
        &their_proof,
    ) {
        return Err(Error::protocol(format!(
            "{addr} failed authentication (different cookie)"
        )));
    }
    if actor.name == node.actor.name {
        return Err(Error::protocol(format!(
            "{addr} has this node's own name {:?}",
            actor.name
        )));
    }
    {
        let mut st = node.members.lock();
        st.names_by_addr.insert(addr, actor.name.to_string());
        if unban {
            st.banned.remove(&*actor.name);
        }
    }
    let proof = auth::proof(
        &node.cookie,
        Role::Initiator,
        &node.actor,
        &their_nonce,
        &nonce,
    );
    write_message(&mut stream, &Message::Proof { proof }).await?;
    match read_message(&mut stream, MAX_HANDSHAKE_FRAME).await {
        Ok(Message::Welcome) => {}
        Ok(other) => return Err(Error::protocol(format!("expected Welcome, got {other:?}"))),
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("{addr} refused the connection"),
            ))
        }
    }
    register(node, actor, listen, stream, true);
    Ok(())
}

async fn accept(node: &Arc<NodeInner>, mut stream: BoxStream) -> Result<()> {
    let (actor, listen, their_nonce) = match read_message(&mut stream, MAX_HANDSHAKE_FRAME).await? {
        Message::Hello {
            magic,
            version,
            actor,
            listen,
            nonce,
        } => {
            check_version(magic, version)?;
            (actor, listen, nonce)
        }
        other => return Err(Error::protocol(format!("expected Hello, got {other:?}"))),
    };
    if actor.name == node.actor.name {
        return Err(Error::protocol(format!(
            "a peer uses this node's own name {:?}",
            actor.name
        )));
    }
    if node.members.is_banned(&actor.name) {
        return Err(Error::unavailable(format!(
            "{} is disconnected",
            actor.name
        )));
    }
    if actor > node.actor && node.members.dialing(&listen) {
        // Both nodes are dialing each other; both will keep the connection the
        // smaller one (this node) initiated, so this one would only be replaced.
        return Err(Error::unavailable(format!(
            "{} dialed while this node dials it; keeping this node's connection",
            actor.name
        )));
    }
    let nonce = node.random_nonce();
    let proof = auth::proof(
        &node.cookie,
        Role::Acceptor,
        &node.actor,
        &their_nonce,
        &nonce,
    );
    write_message(
        &mut stream,
        &Message::Challenge {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            actor: node.actor.clone(),
            listen: node.address.clone(),
            nonce,
            proof,
        },
    )
    .await?;
    let their_proof = match read_message(&mut stream, MAX_HANDSHAKE_FRAME).await? {
        Message::Proof { proof } => proof,
        other => return Err(Error::protocol(format!("expected Proof, got {other:?}"))),
    };
    if !auth::verify(
        &node.cookie,
        Role::Initiator,
        &actor,
        &nonce,
        &their_nonce,
        &their_proof,
    ) {
        return Err(Error::protocol(format!(
            "{} failed authentication (different cookie)",
            actor.name
        )));
    }
    write_message(&mut stream, &Message::Welcome).await?;
    register(node, actor, listen, stream, false);
    Ok(())
}

fn check_version(magic: u32, version: u16) -> Result<()> {
    if magic != MAGIC {
        return Err(Error::protocol("not an lbmkv peer (bad magic)"));
    }
    if version != PROTOCOL_VERSION {
        return Err(Error::protocol(format!(
            "protocol version {version} is not supported (this node speaks {PROTOCOL_VERSION})"
        )));
    }
    Ok(())
}

/// Adds an authenticated connection to the view, keeping one connection per
/// pair: when both nodes dialed each other, both keep the one the smaller
/// actor id initiated.
fn register(
    node: &Arc<NodeInner>,
    actor: ActorId,
    listen: String,
    stream: BoxStream,
    initiated_by_me: bool,
) {
    let initiated_by_smaller = if initiated_by_me {
        node.actor < actor
    } else {
        actor < node.actor
    };
    let (rd, wr) = tokio::io::split(stream);
    let (tx, rx) = mpsc::unbounded_channel();
    let (done_tx, done_rx) = watch::channel(false);
    let peer = Arc::new(PeerConn {
        actor: actor.clone(),
        listen: listen.clone(),
        conn_id: NEXT_CONN_ID.fetch_add(1, Ordering::Relaxed),
        initiated_by_smaller,
        tx: Mutex::new(Some(tx)),
        tasks: Mutex::new(Vec::new()),
        writer_done: done_rx,
        synced: watch::channel(false).0,
        rounds_asked: AtomicU64::new(0),
        rounds_asked_by_peer: AtomicU64::new(0),
        rounds_done: watch::channel(0).0,
    });
    let mut replaced_restart = None;
    let mut replaced_duplicate: Option<Arc<PeerConn>> = None;
    {
        let mut st = node.members.lock();
        if node.check_open().is_err() || st.refuses(&actor.name) {
            return;
        }
        // Reaching the node that kept others away ends their quarantine.
        st.quarantined
            .retain(|_, (unreachable, _)| unreachable.name != actor.name);
        if let Ok(addr) = listen.parse::<SocketAddr>() {
            st.names_by_addr.insert(addr, actor.name.to_string());
        }
        let same_name: Option<ActorId> = st.peers.keys().find(|a| a.name == actor.name).cloned();
        let mut is_new = true;
        if let Some(existing) = same_name {
            if existing == actor {
                let old = &st.peers[&existing];
                if old.initiated_by_smaller || !initiated_by_smaller {
                    return;
                }
                if let Some(old) = st.peers.remove(&existing) {
                    replaced_duplicate = Some(old);
                }
                is_new = false;
            } else {
                replaced_restart = Some(existing);
            }
        }
        // Before the reader starts, so that the peer's first status finds it.
        node.agreement.peer_up(peer.clone());
        let weak = Arc::downgrade(node);
        let r = tokio::spawn(run_reader(weak.clone(), peer.clone(), rd)).abort_handle();
        let w = tokio::spawn(run_writer(weak, peer.clone(), rx, wr, done_tx)).abort_handle();
        if let Ok(mut t) = peer.tasks.lock() {
            t.push(r);
            t.push(w);
        }
        st.peers.insert(actor.clone(), peer.clone());
        if let Some(old) = replaced_duplicate.take() {
            drop(st);
            // Both nodes dialed each other and both keep the connection the
            // smaller one initiated. What was in flight on the other is lost:
            // its requests fail, its batches fail (the peer stays in the view
            // without them, so they cannot count as acknowledged), its merges
            // end, and the merge on the kept connection reconciles the tables.
            tracing::debug!(node = %node.actor, peer = %actor, "replaced a duplicate connection");
            old.abort();
            old.mark_synced();
            node.replication.connection_replaced(node, &actor);
            node.merges.connection_closed(old.conn_id);
        } else if is_new {
            drop(st);
            if let Some(old) = &replaced_restart {
                node.members
                    .drop_peer(node, old, None, "restarted with a new incarnation");
            }
            tracing::info!(node = %node.actor, peer = %actor, "peer up");
            node.emit(Event::NodeUp {
                node: actor.name.to_string(),
            });
        }
    }
    let members: Vec<PeerInfo> = node
        .members
        .peers()
        .iter()
        .filter(|p| p.actor != actor)
        .map(|p| PeerInfo {
            actor: p.actor.clone(),
            listen: p.listen.clone(),
        })
        .collect();
    peer.send(node, &Message::Members(members));
    peer.send(node, &Message::Tables(node.table_infos()));
    ensure_dialer(node, &listen, None);
}

async fn run_reader(node: Weak<NodeInner>, peer: Arc<PeerConn>, rd: ReadHalf<BoxStream>) {
    let (failure_timeout, max_frame) = match node.upgrade() {
        Some(n) => (n.config.failure_timeout, n.config.max_frame_size),
        None => return,
    };
    // Buffered, so that one read takes in every frame that arrived at once.
    let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
    loop {
        let frame = tokio::time::timeout(failure_timeout, read_frame(&mut rd, max_frame)).await;
        let Some(n) = node.upgrade() else { return };
        let body = match frame {
            Err(_) => {
                n.members.drop_peer(
                    &n,
                    &peer.actor,
                    Some(peer.conn_id),
                    "silent for the failure timeout",
                );
                return;
            }
            Ok(Err(e)) => {
                let reason = format!("connection lost: {e}");
                n.members
                    .drop_peer(&n, &peer.actor, Some(peer.conn_id), &reason);
                return;
            }
            Ok(Ok(body)) => body,
        };
        n.stats
            .bytes_received
            .fetch_add(body.len() as u64 + 4, Ordering::Relaxed);
        match wire::decode(&body) {
            Ok(msg) => dispatch(&n, &peer, msg),
            Err(e) => {
                tracing::warn!(node = %n.actor, peer = %peer.actor, "{e}");
                n.members.drop_peer(
                    &n,
                    &peer.actor,
                    Some(peer.conn_id),
                    "sent a malformed frame",
                );
                return;
            }
        }
    }
}

async fn run_writer(
    node: Weak<NodeInner>,
    peer: Arc<PeerConn>,
    mut rx: mpsc::UnboundedReceiver<Arc<[u8]>>,
    wr: WriteHalf<BoxStream>,
    done: watch::Sender<bool>,
) {
    let interval = match node.upgrade() {
        Some(n) => n.config.heartbeat_interval,
        None => return,
    };
    let heartbeat: Arc<[u8]> = match wire::encode_frame(&Message::Heartbeat) {
        Ok(f) => f.into(),
        Err(_) => return,
    };
    let mut w = BufWriter::with_capacity(64 * 1024, wr);
    let result: std::io::Result<()> = async {
        loop {
            match tokio::time::timeout(interval, rx.recv()).await {
                Ok(Some(frame)) => {
                    w.write_all(&frame).await?;
                    while let Ok(frame) = rx.try_recv() {
                        w.write_all(&frame).await?;
                    }
                    w.flush().await?;
                }
                Ok(None) => {
                    w.flush().await?;
                    let _ = w.shutdown().await;
                    return Ok(());
                }
                Err(_) => {
                    w.write_all(&heartbeat).await?;
                    w.flush().await?;
                }
            }
        }
    }
    .await;
    done.send_replace(true);
    if let Err(e) = result {
        if let Some(n) = node.upgrade() {
            let reason = format!("write failed: {e}");
            n.members
                .drop_peer(&n, &peer.actor, Some(peer.conn_id), &reason);
        }
    }
}

/// Routes one message from an authenticated peer to the module that handles it.
fn dispatch(node: &Arc<NodeInner>, peer: &Arc<PeerConn>, msg: Message) {
    use crate::{merge, replication};
    match msg {
        Message::Heartbeat => {}
        Message::Leaving => {
            node.members
                .drop_peer(node, &peer.actor, Some(peer.conn_id), "left the cluster")
        }
        Message::Members(list) => {
            for p in list {
                if p.actor.name != node.actor.name && !node.members.is_banned(&p.actor.name) {
                    ensure_dialer(node, &p.listen, None);
                }
            }
        }
        Message::Tables(list) => {
            for info in &list {
                on_table_changed(node, peer, info);
            }
            if node.actor < peer.actor {
                tokio::spawn(merge::sync_all(node.clone(), peer.clone()));
            }
        }
        Message::TableChanged(info) => on_table_changed(node, peer, &info),
        Message::WriteRequest { id, table, op } => {
            replication::on_write_request(node, peer, id, table, op)
        }
        Message::WriteReply { id, result } => replication::on_write_reply(node, id, result),
        Message::Apply { id, table, entries } => {
            replication::on_apply(node, peer, id, &table, entries.0)
        }
        Message::ApplyAck { id } => replication::on_apply_ack(node, &peer.actor, id),
        Message::SyncAllDone { served } => merge::on_round_done(peer, served),
        Message::SyncRequest => merge::on_round_asked(node, peer),
        Message::Status(status) => {
            if let Some(job) = node.agreement.on_status(peer, status) {
                crate::agreement::run_catch_up(node, job);
            }
        }
        Message::Probe { id } => node.agreement.on_probe(peer, id),
        Message::ApplyRefused { id } => replication::on_apply_refused(node, &peer.actor, id),
        msg @ (Message::SyncDigest { .. }
        | Message::SyncLeaves { .. }
        | Message::SyncDescend { .. }
        | Message::SyncSummary { .. }
        | Message::SyncWant { .. }
        | Message::SyncEntries { .. }
        | Message::SyncDone { .. }) => merge::on_sync_message(node, peer, msg),
        Message::Hello { .. }
        | Message::Challenge { .. }
        | Message::Proof { .. }
        | Message::Welcome => node.members.drop_peer(
            node,
            &peer.actor,
            Some(peer.conn_id),
            "sent a handshake message after the handshake",
        ),
    }
}

fn on_table_changed(node: &Arc<NodeInner>, peer: &PeerConn, info: &TableInfo) {
    match node.ensure_table(&info.name) {
        Ok(_) => node.members.set_handler(&peer.actor, info),
        Err(e) => tracing::warn!(peer = %peer.actor, "ignoring a table: {e}"),
    }
}

async fn write_message(stream: &mut BoxStream, msg: &Message) -> Result<()> {
    let frame = wire::encode_frame(msg)?;
    stream
        .write_all(&frame)
        .await
        .map_err(|e| Error::io("handshake write", e))
}

async fn read_message(stream: &mut BoxStream, max: usize) -> Result<Message> {
    let body = read_frame(stream, max)
        .await
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("handshake read: {e}")))?;
    wire::decode(&body)
}

/// Reads one length-prefixed frame, refusing lengths above `max` before reading them.
async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    max: usize,
) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    rd.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {max}"),
        ));
    }
    let mut body = vec![0u8; len];
    rd.read_exact(&mut body).await?;
    Ok(body)
}
