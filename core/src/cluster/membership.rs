//! The view (this node and its live peers), the listener, dialers that
//! reconnect forever, bans (`disconnect`) and the partial partition step-out,
//! and one connection per pair of nodes.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::Duration;

use tokio::sync::{oneshot, Semaphore};
use tokio::time::Instant;

use super::handshake::{self, Authenticated};
use super::transport::{ConnectionEvents, PeerConn};
use super::Inbound;
use crate::context::Context;
use crate::error::{Error, ErrorKind, Result};
use crate::events::Event;
use crate::locks::lock;
use crate::net::Listener;
use crate::vclock::ActorId;
use crate::wire::{self, Message, PeerInfo, TableInfo};

const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Inbound connections that may be in their handshake at once. Each holds a
/// socket and a task until it proves the cookie or its request timeout ends;
/// beyond this, new connections are closed at once, so that connections that
/// never speak cannot take every file descriptor of the process.
pub(crate) const MAX_PENDING_HANDSHAKES: usize = 64;
/// Dials (connection attempts with their handshakes) in flight at once.
pub(crate) const MAX_CONCURRENT_DIALS: usize = 32;
/// Addresses dialed at once beyond which addresses learned from peers are not
/// dialed (seeds always are): a full mesh of this many nodes is far beyond
/// what lbmkv is made for, so more means addresses that no longer lead anywhere.
pub(crate) const MAX_DIALERS: usize = 1024;
/// At most one warning per this interval for each kind of refusal.
const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    peers: HashMap<ActorId, Arc<PeerConn>>,
    /// Addresses dialed forever (seeds and every peer ever seen).
    dialing: HashSet<String>,
    /// Names refused until `connect` is called for them.
    banned: HashSet<String>,
    /// Names kept away for a while because they see a node this one cannot
    /// reach (a partial partition), with that node and until when.
    quarantined: HashMap<String, (ActorId, Instant)>,
    /// Which name was last seen at which address, to skip refused peers.
    names_by_addr: HashMap<SocketAddr, String>,
    /// Addresses this node is dialing right now.
    in_flight: HashSet<SocketAddr>,
    /// The tables each peer has a conflict handler for, kept across reconnects
    /// so that every connection knows them from its first message on.
    handlers: HashMap<ActorId, HashSet<String>>,
    /// Why the last attempt at each dialed address failed.
    dial_errors: HashMap<String, String>,
    /// A member of this node's cluster answered it: it became a peer, or it
    /// proved the cookie and then turned the connection away.
    met_a_member: bool,
}

impl State {
    /// Whether connections with `name` are refused now.
    fn refuses(&self, name: &str) -> bool {
        self.banned.contains(name)
            || self
                .quarantined
                .get(name)
                .is_some_and(|(_, until)| *until > Instant::now())
    }
}

/// What registering a new connection found.
enum Registered {
    /// Refused, or a duplicate that loses to the connection already there.
    Dropped,
    /// A new peer; a previous incarnation under the same name, if any, leaves.
    New { restarted: Option<ActorId> },
    /// Replaces a duplicate connection to the same peer.
    Replacing(Arc<PeerConn>),
}

/// This node's peers and what it knows about reaching others.
pub(crate) struct Membership {
    ctx: Arc<Context>,
    state: Mutex<State>,
    inbound: OnceLock<Weak<dyn Inbound>>,
    me: Weak<Membership>,
    /// Permits of inbound connections in their handshake.
    handshakes: Arc<Semaphore>,
    /// Permits of dials in flight.
    dials: Semaphore,
    refused_busy: Throttle,
    refused_dialer: Throttle,
}

/// Lets one warning through per interval and counts the ones it held back.
struct Throttle {
    last: Mutex<Option<Instant>>,
    held_back: AtomicU64,
}

impl Throttle {
    fn new() -> Self {
        Throttle {
            last: Mutex::new(None),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a warning may go out now, `n` being how many were held
    /// back since the last one.
    fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = lock(&self.last);
        if last.is_some_and(|t| now < t + WARN_EVERY) {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held_back.swap(0, Ordering::Relaxed))
    }
}

impl Membership {
    pub fn new(ctx: &Arc<Context>) -> Arc<Self> {
        Arc::new_cyclic(|me| Membership {
            ctx: ctx.clone(),
            state: Mutex::new(State::default()),
            inbound: OnceLock::new(),
            me: me.clone(),
            handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
            dials: Semaphore::new(MAX_CONCURRENT_DIALS),
            refused_busy: Throttle::new(),
            refused_dialer: Throttle::new(),
        })
    }

    /// Where connections are reported; set once, before the first one.
    pub fn deliver_to(&self, inbound: Weak<dyn Inbound>) {
        let _ = self.inbound.set(inbound);
    }

    fn inbound(&self) -> Option<Arc<dyn Inbound>> {
        self.inbound.get().and_then(Weak::upgrade)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// The view: this node and its live peers, sorted by actor id.
    pub fn view(&self) -> Vec<ActorId> {
        let mut v: Vec<ActorId> = self.lock().peers.keys().cloned().collect();
        v.push(self.ctx.actor.clone());
        v.sort();
        v
    }

    /// The live peers, sorted by actor (one order on every run).
    pub fn peers(&self) -> Vec<Arc<PeerConn>> {
        let mut peers: Vec<Arc<PeerConn>> = self.lock().peers.values().cloned().collect();
        peers.sort_by(|a, b| a.actor.cmp(&b.actor));
        peers
    }

    /// The connection to `actor`, if live.
    pub fn peer(&self, actor: &ActorId) -> Option<Arc<PeerConn>> {
        self.lock().peers.get(actor).cloned()
    }

    /// Sends `msg` to every live peer.
    pub fn broadcast(&self, msg: &Message) {
        let peers = self.peers();
        if peers.is_empty() {
            return;
        }
        match wire::encode_frame(msg) {
            Ok(frame) => {
                let frame: Arc<[u8]> = frame.into();
                for p in peers {
                    p.send_frame(frame.clone());
                }
            }
            Err(e) => tracing::error!("cannot encode a message: {e}"),
        }
    }

    /// The node that runs the conflict handler of `table`: the smallest actor id
    /// among the members that have one.
    pub fn handler_node(&self, table: &str) -> Option<ActorId> {
        let local = self
            .ctx
            .replica(table)
            .and_then(|t| t.handler())
            .map(|_| self.ctx.actor.clone());
        let st = self.lock();
        st.peers
            .keys()
            .filter(|a| st.handlers.get(*a).is_some_and(|t| t.contains(table)))
            .cloned()
            .chain(local)
            .min()
    }

    /// Records whether `actor` has a conflict handler for a table.
    pub fn set_handler(&self, actor: &ActorId, info: &TableInfo) {
        let mut st = self.lock();
        let tables = st.handlers.entry(actor.clone()).or_default();
        if info.has_handler {
            tables.insert(info.name.clone());
        } else {
            tables.remove(&info.name);
        }
    }

    /// Removes the connection to `actor` (only connection `conn_id` when given).
    pub fn drop_peer(&self, actor: &ActorId, conn_id: Option<u64>, reason: &str) {
        let removed = {
            let mut st = self.lock();
            match st.peers.get(actor) {
                Some(p) if conn_id.is_none_or(|c| c == p.conn_id) => st.peers.remove(actor),
                _ => None,
            }
        };
        if let Some(p) = removed {
            tracing::info!(node = %self.ctx.actor, peer = %actor, reason, "peer down");
            self.connection_ended(&p, false);
            self.ctx.emit(Event::NodeDown {
                node: actor.name.to_string(),
                reason: reason.to_string(),
            });
        }
    }

    /// What happens to every connection that ends, dropped or replaced.
    fn connection_ended(&self, peer: &PeerConn, replaced: bool) {
        peer.abort();
        // Nobody waits on the first merge over a connection that is gone.
        peer.mark_synced();
        if let Some(inbound) = self.inbound() {
            inbound.on_connection_ended(peer, replaced);
        }
    }

    /// `disconnect(name)`: drop the peer and refuse it until `connect`.
    pub fn disconnect(&self, name: &str) {
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
            self.drop_peer(&a, None, "disconnected");
        }
    }

    /// Steps out of a partial partition: drops every peer in `victims` (each
    /// sees a node this one cannot reach, named beside it) and keeps it away
    /// until this node reaches that node, or for `how_long`.
    pub fn step_out(&self, victims: Vec<(ActorId, ActorId)>, how_long: Duration) {
        let until = Instant::now() + how_long;
        for (peer, unreachable) in victims {
            tracing::warn!(
                node = %self.ctx.actor, %peer, %unreachable,
                "partial partition: leaving the peers that see a node this one cannot reach"
            );
            self.lock()
                .quarantined
                .insert(peer.name.to_string(), (unreachable.clone(), until));
            let reason = format!("sees {} which this node cannot reach", unreachable.name);
            self.drop_peer(&peer, None, &reason);
        }
    }

    /// Tells every peer this node leaves and waits briefly for the words to go out.
    pub async fn say_goodbye(&self) {
        let peers = self.peers();
        for p in &peers {
            p.send(&Message::Leaving);
            p.finish();
        }
        let flushed = async {
            for p in &peers {
                p.flushed().await;
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

    fn is_refused(&self, name: &str) -> bool {
        self.lock().refuses(name)
    }

    fn connected_to(&self, addr: SocketAddr) -> bool {
        if self.ctx.address.parse::<SocketAddr>().ok() == Some(addr) {
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

    /// Remembers why the last attempt at `addr` failed (`None`: it worked).
    fn note_dial(&self, addr: &str, failure: Option<String>) {
        let mut st = self.lock();
        match failure {
            Some(why) => st.dial_errors.insert(addr.to_string(), why),
            None => st.dial_errors.remove(addr),
        };
    }

    /// One attempt at `target` (an address of `addr`), given up after a
    /// failure timeout when it hangs (packets dropped), so that a healed link
    /// is found again soon after.
    async fn dial_with_limit(self: &Arc<Self>, addr: &str, target: SocketAddr) -> bool {
        let limit = self.ctx.config.request_timeout;
        // Closed only with the node, which ends this task anyway.
        let Ok(_permit) = self.dials.acquire().await else {
            return false;
        };
        let failure = match tokio::time::timeout(limit, self.dial(target, false)).await {
            Ok(Ok(())) => None,
            // A wrong cookie or protocol version is worth a warning on this
            // side too; an absent peer is retried all the time.
            Ok(Err(e)) if e.kind() == ErrorKind::Protocol => {
                tracing::warn!(node = %self.ctx.actor, %target, "dial refused: {e}");
                Some(e.message().to_string())
            }
            Ok(Err(e)) => {
                tracing::debug!(node = %self.ctx.actor, %target, "dial failed: {e}");
                Some(e.message().to_string())
            }
            Err(_) => {
                tracing::debug!(node = %self.ctx.actor, %target, "dial timed out");
                Some(format!("connecting to {target} timed out"))
            }
        };
        let ok = failure.is_none();
        self.note_dial(addr, failure);
        ok
    }

    /// Whether `addr` (not a seed) last led to a peer that is now connected
    /// at another address: it restarted there, and is dialed there.
    fn superseded(&self, addr: &str) -> bool {
        if self.ctx.config.seeds.iter().any(|s| s == addr) {
            return false;
        }
        let Ok(sock) = addr.parse::<SocketAddr>() else {
            return false;
        };
        let mut st = self.lock();
        let Some(name) = st.names_by_addr.get(&sock).cloned() else {
            return false;
        };
        let moved = st
            .peers
            .values()
            .any(|p| *p.actor.name == *name && p.listen.parse::<SocketAddr>().ok() != Some(sock));
        if moved {
            st.dialing.remove(addr);
            st.dial_errors.remove(addr);
        }
        moved
    }

    /// Whether a member of this node's cluster ever answered it (a joining
    /// node that met one does not start a cluster of its own at once).
    pub fn met_a_member(&self) -> bool {
        let st = self.lock();
        st.met_a_member || !st.peers.is_empty()
    }

    /// Waits until the view holds `n` members (this node included); fails with
    /// `Unavailable` naming each seed and why it was not reached.
    pub async fn wait_for_members(&self, n: usize, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let have = self.lock().peers.len() + 1;
            if have >= n {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let st = self.lock();
                let seeds: Vec<String> = self
                    .ctx
                    .config
                    .seeds
                    .iter()
                    .map(|s| match st.dial_errors.get(s) {
                        Some(why) => format!("{s}: {why}"),
                        None => format!("{s}: reached"),
                    })
                    .collect();
                let seeds = if seeds.is_empty() {
                    "no seeds given".to_string()
                } else {
                    seeds.join("; ")
                };
                return Err(Error::unavailable(format!(
                    "{have} of {n} members after {} ms ({seeds})",
                    limit.as_millis()
                )));
            }
            tokio::time::sleep(crate::context::SETTLE_PAUSE * 4).await;
        }
    }

    /// Whether `actor`, dialing this node, should be turned away.
    fn admit(&self, actor: &ActorId, listen: &str) -> Result<()> {
        if self.is_refused(&actor.name) {
            return Err(Error::unavailable(format!(
                "{} is disconnected",
                actor.name
            )));
        }
        let dialing_it = listen
            .parse::<SocketAddr>()
            .is_ok_and(|a| self.lock().in_flight.contains(&a));
        if *actor > self.ctx.actor && dialing_it {
            // Both nodes are dialing each other; both will keep the connection the
            // smaller one (this node) initiated, so this one would only be replaced.
            return Err(Error::unavailable(format!(
                "{} dialed while this node dials it; keeping this node's connection",
                actor.name
            )));
        }
        Ok(())
    }

    /// Starts accepting connections.
    pub fn listen(self: &Arc<Self>, listener: Box<dyn Listener>) {
        let me = self.me.clone();
        self.ctx.spawn(async move {
            loop {
                let accepted = listener.accept().await;
                let Some(members) = me.upgrade() else { return };
                match accepted {
                    Ok((stream, from)) => {
                        let Ok(permit) = members.handshakes.clone().try_acquire_owned() else {
                            drop(stream);
                            if let Some(held_back) = members.refused_busy.allow() {
                                tracing::warn!(
                                    node = %members.ctx.actor, %from, held_back,
                                    "closed a connection at once: {MAX_PENDING_HANDSHAKES} \
                                     connections are in their handshake already"
                                );
                            }
                            continue;
                        };
                        let m = members.clone();
                        members.ctx.spawn(async move {
                            m.answer(stream, from).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        tracing::warn!(node = %members.ctx.actor, "accept failed: {e}");
                        drop(members);
                        tokio::time::sleep(MIN_BACKOFF).await;
                    }
                }
            }
        });
    }

    async fn answer(self: Arc<Self>, stream: crate::net::BoxStream, from: SocketAddr) {
        let limit = self.ctx.config.request_timeout;
        let accepted = handshake::accept(&self.ctx, stream, from, |a, l| self.admit(a, l));
        match tokio::time::timeout(limit, accepted).await {
            Ok(Ok(peer)) => self.register(peer, false),
            // A refused peer whose cookie or protocol is wrong is worth a
            // warning; one that is merely disconnected retries all the time.
            Ok(Err(e)) if e.kind() == ErrorKind::Protocol => {
                tracing::warn!(node = %self.ctx.actor, %from, "refused a connection: {e}")
            }
            Ok(Err(e)) => {
                tracing::debug!(node = %self.ctx.actor, %from, "refused a connection: {e}")
            }
            Err(_) => tracing::warn!(node = %self.ctx.actor, %from, "handshake timed out"),
        }
    }

    /// Dials every seed forever; the returned future completes once each seed had a first attempt.
    pub fn dial_seeds(
        self: &Arc<Self>,
        seeds: &[String],
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut firsts = Vec::new();
        for seed in seeds {
            let (tx, rx) = oneshot::channel();
            if self.ensure_dialer(seed, Some(tx)) {
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
    fn ensure_dialer(self: &Arc<Self>, addr: &str, first: Option<oneshot::Sender<()>>) -> bool {
        if addr == self.ctx.address {
            return false;
        }
        {
            let mut st = self.lock();
            if st.dialing.contains(addr) {
                return false;
            }
            if st.dialing.len() >= MAX_DIALERS && !self.ctx.config.seeds.iter().any(|s| s == addr) {
                drop(st);
                if let Some(held_back) = self.refused_dialer.allow() {
                    tracing::warn!(
                        node = %self.ctx.actor, %addr, held_back,
                        "not dialing an address: {MAX_DIALERS} addresses are dialed already"
                    );
                }
                return false;
            }
            st.dialing.insert(addr.to_string());
        }
        self.ctx
            .spawn(dial_forever(self.me.clone(), addr.to_string(), first));
        true
    }

    /// `connect(addr)`: one dial now (lifting a ban of whoever answers), and a
    /// dialer that keeps the connection up afterwards.
    pub async fn connect(self: &Arc<Self>, addr: &str) -> Result<()> {
        let target = crate::net::resolve_one(&*self.ctx.net, addr).await?;
        if self.ctx.address.parse::<SocketAddr>().ok() == Some(target) {
            return Ok(());
        }
        let already = {
            let mut st = self.lock();
            if let Some(name) = st.names_by_addr.get(&target).cloned() {
                st.banned.remove(&name);
            }
            st.peers
                .values()
                .any(|p| p.listen.parse::<SocketAddr>().ok() == Some(target))
        };
        if !already {
            tokio::time::timeout(self.ctx.config.request_timeout, self.dial(target, true))
                .await
                .map_err(|_| Error::timeout(format!("connecting to {addr} timed out")))??;
        }
        self.ensure_dialer(&target.to_string(), None);
        Ok(())
    }

    async fn dial(self: &Arc<Self>, addr: SocketAddr, unban: bool) -> Result<()> {
        let result = {
            // Dials are given up by timeouts: whatever ends this one, the
            // address stops counting as dialed (else peers dialing this node
            // from it would be turned away for good).
            let _dialing = InFlight::new(self, addr);
            handshake::dial(&self.ctx, addr, || self.lock().met_a_member = true).await
        };
        let peer = result?;
        {
            let mut st = self.lock();
            st.names_by_addr.insert(addr, peer.actor.name.to_string());
            if unban {
                st.banned.remove(&*peer.actor.name);
            }
        }
        self.register(peer, true);
        Ok(())
    }

    /// Adds an authenticated connection to the view, keeping one connection per
    /// pair: when both nodes dialed each other, both keep the one the smaller
    /// actor id initiated.
    fn register(self: &Arc<Self>, auth: Authenticated, initiated_by_me: bool) {
        let Authenticated {
            actor,
            listen,
            stream,
            session,
        } = auth;
        let initiated_by_smaller = if initiated_by_me {
            self.ctx.actor < actor
        } else {
            actor < self.ctx.actor
        };
        let (peer, io) = PeerConn::new(
            &self.ctx,
            actor.clone(),
            listen.clone(),
            initiated_by_smaller,
            stream,
            session,
        );
        let registered = {
            let mut st = self.lock();
            let registered = self.decide(&mut st, &peer);
            if !matches!(registered, Registered::Dropped) {
                // Before the reader starts, so that the layers above know the
                // peer when its first message arrives.
                if let Some(inbound) = self.inbound() {
                    inbound.on_peer_up(&peer);
                }
                let events: Weak<dyn ConnectionEvents> = self.me.clone();
                peer.start(io, events);
                st.peers.insert(actor.clone(), peer.clone());
            }
            registered
        };
        match registered {
            Registered::Dropped => return,
            Registered::Replacing(old) => {
                // Both nodes dialed each other and both keep the connection the
                // smaller one initiated. What was in flight on the other is lost.
                tracing::debug!(node = %self.ctx.actor, peer = %actor, "replaced a duplicate connection");
                self.connection_ended(&old, true);
            }
            Registered::New { restarted } => {
                if let Some(old) = &restarted {
                    self.drop_peer(old, None, "restarted with a new incarnation");
                }
                tracing::info!(node = %self.ctx.actor, peer = %actor, "peer up");
                self.ctx.emit(Event::NodeUp {
                    node: actor.name.to_string(),
                });
            }
        }
        self.introduce(&peer);
        self.ensure_dialer(&listen, None);
    }

    /// Whether a new connection joins the view, under the membership lock.
    fn decide(&self, st: &mut State, peer: &PeerConn) -> Registered {
        let actor = &peer.actor;
        if self.ctx.check_open().is_err() || st.refuses(&actor.name) {
            return Registered::Dropped;
        }
        // Reaching the node that kept others away ends their quarantine.
        st.quarantined
            .retain(|_, (unreachable, _)| unreachable.name != actor.name);
        if let Ok(addr) = peer.listen.parse::<SocketAddr>() {
            st.names_by_addr.insert(addr, actor.name.to_string());
        }
        let same_name: Option<ActorId> = st.peers.keys().find(|a| a.name == actor.name).cloned();
        match same_name {
            Some(existing) if existing == *actor => {
                let old = &st.peers[&existing];
                if old.initiated_by_smaller || !peer.initiated_by_smaller {
                    return Registered::Dropped;
                }
                match st.peers.remove(&existing) {
                    Some(old) => Registered::Replacing(old),
                    None => Registered::Dropped,
                }
            }
            restarted => Registered::New { restarted },
        }
    }

    /// The first messages on a new connection: the members this node knows,
    /// and its tables.
    fn introduce(&self, peer: &PeerConn) {
        let members: Vec<PeerInfo> = self
            .peers()
            .iter()
            .filter(|p| p.actor != peer.actor)
            .map(|p| PeerInfo {
                actor: p.actor.clone(),
                listen: p.listen.clone(),
            })
            .collect();
        peer.send(&Message::Members(members));
        peer.send(&Message::Tables(self.ctx.table_infos()));
    }

    /// A message of the cluster layer's own; anything else goes up.
    fn on_cluster_message(self: &Arc<Self>, peer: &Arc<PeerConn>, msg: Message) {
        match msg {
            Message::Heartbeat => {}
            Message::Leaving => self.drop_peer(&peer.actor, Some(peer.conn_id), "left the cluster"),
            Message::Members(list) => {
                for p in list {
                    if p.actor.name != self.ctx.actor.name && !self.is_refused(&p.actor.name) {
                        self.ensure_dialer(&p.listen, None);
                    }
                }
            }
            Message::Hello { .. }
            | Message::Challenge { .. }
            | Message::Proof { .. }
            | Message::Rejected
            | Message::Refused { .. }
            | Message::Welcome => self.drop_peer(
                &peer.actor,
                Some(peer.conn_id),
                "sent a handshake message after the handshake",
            ),
            other => {
                if let Some(inbound) = self.inbound() {
                    inbound.on_message(peer, other);
                }
            }
        }
    }
}

impl ConnectionEvents for Membership {
    fn on_message(&self, peer: &Arc<PeerConn>, msg: Message) {
        if let Some(me) = self.me.upgrade() {
            me.on_cluster_message(peer, msg);
        }
    }

    fn on_lost(&self, peer: &PeerConn, reason: &str) {
        self.drop_peer(&peer.actor, Some(peer.conn_id), reason);
    }
}

/// Marks an address as being dialed for as long as it lives.
struct InFlight<'a> {
    members: &'a Membership,
    addr: SocketAddr,
}

impl<'a> InFlight<'a> {
    fn new(members: &'a Membership, addr: SocketAddr) -> Self {
        members.lock().in_flight.insert(addr);
        InFlight { members, addr }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.members.lock().in_flight.remove(&self.addr);
    }
}

/// Keeps this node connected to whatever listens at `addr` (re-resolved on every
/// round), with capped exponential backoff, until the node closes.
async fn dial_forever(
    members: Weak<Membership>,
    addr: String,
    mut first: Option<oneshot::Sender<()>>,
) {
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(m) = members.upgrade() else { return };
        if m.ctx.check_open().is_err() {
            return;
        }
        if m.superseded(&addr) {
            tracing::debug!(node = %m.ctx.actor, %addr, "stopped dialing an address its node left");
            return;
        }
        let idle = m.ctx.config.heartbeat_interval;
        let targets = match m.ctx.net.resolve(addr.clone()).await {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(%addr, "cannot resolve: {e}");
                m.note_dial(&addr, Some(format!("cannot resolve: {e}")));
                Vec::new()
            }
        };
        let mut missing = false;
        for t in targets {
            if m.connected_to(t) {
                m.note_dial(&addr, None);
                continue;
            }
            missing = true;
            if m.dial_with_limit(&addr, t).await {
                missing = false;
            }
        }
        if let Some(f) = first.take() {
            let _ = f.send(());
        }
        drop(m);
        if missing {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        } else {
            backoff = MIN_BACKOFF;
            tokio::time::sleep(idle).await;
        }
    }
}
