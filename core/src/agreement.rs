//! Sequencer agreement: which member of a view orders its writes, and when it
//! may.
//!
//! Every node *follows* one sequencer: the smallest actor id among the members
//! of its view that are *ready*. A node is ready once it holds the cluster's
//! state: it started alone, or it finished its first merge with every member
//! it joined. A node that is joining therefore never takes over the ordering
//! before it has the data; it follows whoever orders meanwhile. A node that
//! stands out of a partial partition does not count as ready meanwhile.
//!
//! A node orders writes only while it is *active*:
//! - it follows itself;
//! - every peer of its view follows it, and confirmed so in answer to a probe
//!   sent less than [`LEASE_SHARE`] of the failure timeout ago. A peer declares
//!   a node down only after a whole failure timeout without a byte from it, so
//!   while the confirmation holds, that peer has not turned to a sequencer of
//!   its own behind this node's back (a paused or cut-off sequencer stops
//!   ordering before the others replace it);
//! - it merged with every peer that may hold writes it has not seen (one that
//!   last applied another sequencer's batches, or sequenced itself), in a merge
//!   that began after that peer turned to it;
//! - no peer of its view stands out of a partial partition: a view that holds
//!   such a peer is a side of that partition (the peer left every member that
//!   sees the node it could not reach), and the rest of the cluster may order
//!   writes of its own meanwhile.
//!
//! A replica applies batches only from the sequencer it follows and refuses the
//! others, so a write is acknowledged only when every member of the view applied
//! it under one sequencer. Changes of what this node follows, the execution of a
//! batch at the sequencer and the application of a batch at a replica all happen
//! under one lock: a node that turns to a new sequencer has no write of the old
//! one half-done that the new one's merge could miss.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::cluster::{Membership, PeerConn};
use crate::context::{Context, SETTLE_PAUSE};
use crate::vclock::ActorId;
use crate::wire::{Message, Status};

/// The share of the failure timeout a peer's confirmation lasts, counted from
/// when the probe it answers was sent.
const LEASE_SHARE: f64 = 0.75;

/// What this node knows of one peer of its view.
struct Peer {
    conn: Arc<PeerConn>,
    ready: bool,
    follows: Option<ActorId>,
    applied_from: Option<ActorId>,
    /// Until when the peer's confirmation that it follows this node holds.
    confirmed_until: Option<Instant>,
    /// The newest probe id received from the peer, echoed in each status.
    probe_seen: u64,
    /// The newest of this node's probes whose answer timed a round trip.
    echo_timed: u64,
    /// This node merged with the peer since it turned to this node (or the
    /// peer had nothing this node lacks).
    caught_up: bool,
    /// Counts the peer's turns to this node, so that a merge that finishes
    /// is credited to the turn it was started for.
    turn: u64,
    /// The peer's own peers.
    view: Vec<ActorId>,
    /// The peer stands out of a partial partition.
    stepped_out: bool,
}

/// The agreement state of one node; see the module documentation.
pub(crate) struct State {
    me: ActorId,
    lease: Duration,
    ready: bool,
    follows: Option<ActorId>,
    applied_from: Option<ActorId>,
    /// Ordered, so that messages to every peer go out in the same order in every run.
    peers: BTreeMap<ActorId, Peer>,
    next_probe: u64,
    /// Probes sent within the last lease, with when they were sent.
    probes: VecDeque<(u64, Instant)>,
    /// Nodes a peer sees and this node does not, since when.
    unreachable: BTreeMap<ActorId, Instant>,
    /// Set while this node stays out of a partial partition. Meanwhile it
    /// does not sequence, so what it left and what it kept never order
    /// writes side by side.
    stepped_out: Option<StepOut>,
}

/// A step-out from a partial partition (see [`Agreement::partial_partition`]).
struct StepOut {
    /// The nodes this one could not reach while its peers saw them.
    causes: Vec<ActorId>,
    /// Until when it keeps the peers it left away.
    until: Instant,
    /// When it ends even with no ready member in sight (liveness, should
    /// the rest of the cluster be gone).
    last_resort: Instant,
}

/// A merge this node must finish with a peer before it may sequence.
pub(crate) struct CatchUp {
    pub conn: Arc<PeerConn>,
    pub turn: u64,
}

/// The node's agreement state behind its lock, and a signal for readiness.
pub(crate) struct Agreement {
    state: Mutex<State>,
    ready: watch::Sender<bool>,
}

impl Agreement {
    pub fn new(me: ActorId, failure_timeout: Duration) -> Self {
        Agreement {
            state: Mutex::new(State {
                me,
                lease: failure_timeout.mul_f64(LEASE_SHARE),
                ready: false,
                follows: None,
                applied_from: None,
                peers: BTreeMap::new(),
                next_probe: 0,
                probes: VecDeque::new(),
                unreachable: BTreeMap::new(),
                stepped_out: None,
            }),
            ready: watch::channel(false).0,
        }
    }

    /// The agreement state (a poisoned lock is taken over: see [`crate::locks`]).
    pub fn lock(&self) -> MutexGuard<'_, State> {
        crate::locks::lock(&self.state)
    }

    /// The sequencer this node follows, if any.
    pub fn follows(&self) -> Option<ActorId> {
        self.lock().follows.clone()
    }

    /// Whether a peer of the view is ready (and not standing out).
    pub fn a_peer_is_ready(&self) -> bool {
        self.lock().peers.values().any(|p| p.ready)
    }

    /// Waits until this node is ready, for at most `limit`.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let mut rx = self.ready.subscribe();
        let ready = tokio::time::timeout(limit, rx.wait_for(|r| *r)).await;
        ready.is_ok()
    }

    /// This node holds the cluster's state from now on.
    pub fn set_ready(&self) {
        {
            let mut st = self.lock();
            if st.ready {
                return;
            }
            st.ready = true;
            st.reconsider();
            st.tell_everyone();
        }
        self.ready.send_replace(true);
    }

    /// A connection to a peer joined the view (or replaced its previous one).
    pub fn peer_up(&self, conn: Arc<PeerConn>) {
        let mut st = self.lock();
        let actor = conn.actor.clone();
        match st.peers.get_mut(&actor) {
            Some(p) => p.conn = conn.clone(),
            None => {
                st.peers.insert(
                    actor,
                    Peer {
                        conn: conn.clone(),
                        ready: false,
                        follows: None,
                        applied_from: None,
                        confirmed_until: None,
                        probe_seen: 0,
                        echo_timed: 0,
                        caught_up: false,
                        turn: 0,
                        view: Vec::new(),
                        stepped_out: false,
                    },
                );
            }
        }
        // Every peer learns of the new member (its view changed), the new one
        // of everything.
        st.tell_everyone();
    }

    /// Connection `conn_id` to `actor` left the view. Returns whether the
    /// peer's confirmation that it follows this node still held (or it was
    /// not the peer's live connection): if not, the peer may follow another
    /// sequencer by now.
    pub fn peer_down(&self, actor: &ActorId, conn_id: u64) -> bool {
        let mut st = self.lock();
        let live = st
            .peers
            .get(actor)
            .is_some_and(|p| p.conn.conn_id == conn_id);
        if !live {
            return true;
        }
        let confirmed = st
            .peers
            .remove(actor)
            .and_then(|p| p.confirmed_until)
            .is_some_and(|t| t > Instant::now());
        st.reconsider();
        st.tell_everyone();
        confirmed
    }

    /// A peer's [`Message::Status`]; returns the merge to run when the peer just
    /// turned to this node carrying writes it may lack.
    pub fn on_status(&self, conn: &PeerConn, status: Status) -> Option<CatchUp> {
        let Status {
            ready,
            follows,
            applied_from,
            echo,
            view,
            stepped_out,
        } = status;
        let mut st = self.lock();
        let me = st.me.clone();
        let now = Instant::now();
        let lease = st.lease;
        let sent = st
            .probes
            .iter()
            .find(|(id, _)| *id == echo)
            .map(|(_, at)| *at);
        let p = st.peers.get_mut(&conn.actor)?;
        if p.conn.conn_id != conn.conn_id {
            return None;
        }
        let turned_to_me = follows.as_ref() == Some(&me) && p.follows.as_ref() != Some(&me);
        p.ready = ready;
        p.follows = follows;
        p.applied_from = applied_from;
        p.view = view;
        p.stepped_out = stepped_out;
        let mut catch_up = None;
        if p.follows.as_ref() != Some(&me) {
            p.confirmed_until = None;
            p.caught_up = false;
        } else {
            if let Some(sent) = sent {
                p.confirmed_until = Some(sent + lease);
                // The first answer to a probe times its round trip; later
                // statuses echo it again.
                if echo > p.echo_timed {
                    p.echo_timed = echo;
                    p.conn.note_round_trip(now.saturating_duration_since(sent));
                }
            }
            if turned_to_me {
                p.turn += 1;
                p.caught_up = p.applied_from.as_ref().is_none_or(|a| *a == me);
                if !p.caught_up {
                    catch_up = Some(CatchUp {
                        conn: p.conn.clone(),
                        turn: p.turn,
                    });
                }
                // A fresh confirmation now rather than at the next probe round.
                let id = st.new_probe(now);
                if let Some(p) = st.peers.get(&conn.actor) {
                    p.conn.send_control(&Message::Probe { id });
                }
            }
        }
        let step_out_ended = st.end_step_out(now);
        if st.reconsider() || step_out_ended {
            st.tell_everyone();
        }
        catch_up
    }

    /// A peer's probe: answer with this node's status.
    pub fn on_probe(&self, conn: &PeerConn, id: u64) {
        let mut st = self.lock();
        if let Some(p) = st.peers.get_mut(&conn.actor) {
            if p.conn.conn_id == conn.conn_id {
                p.probe_seen = p.probe_seen.max(id);
                let conn = p.conn.clone();
                st.tell(&conn);
            }
        }
    }

    /// The merge started for `turn` of `actor` finished.
    pub fn caught_up(&self, actor: &ActorId, conn_id: u64, turn: u64) {
        let mut st = self.lock();
        let me = st.me.clone();
        if let Some(p) = st.peers.get_mut(actor) {
            if p.conn.conn_id == conn_id && p.turn == turn && p.follows.as_ref() == Some(&me) {
                p.caught_up = true;
            }
        }
    }

    /// Whether a merge for `turn` of `actor` over `conn_id` is still wanted.
    pub fn catch_up_wanted(&self, actor: &ActorId, conn_id: u64, turn: u64) -> bool {
        let st = self.lock();
        st.peers.get(actor).is_some_and(|p| {
            p.conn.conn_id == conn_id
                && p.turn == turn
                && !p.caught_up
                && p.follows.as_ref() == Some(&st.me)
        })
    }

    /// Asks every peer to confirm that it follows this node, if it does.
    fn probe_round(&self) {
        let mut st = self.lock();
        if st.end_step_out(Instant::now()) {
            st.tell_everyone();
        }
        if st.follows.as_ref() != Some(&st.me) || st.peers.is_empty() {
            return;
        }
        let id = st.new_probe(Instant::now());
        for p in st.peers.values() {
            p.conn.send_control(&Message::Probe { id });
        }
    }

    /// The peers this node leaves to settle a partial partition, each with the
    /// node it sees that this one cannot reach.
    ///
    /// The rule, the same on every node: when a peer has seen a node X for
    /// longer than `patience` while this node has not reached X, the larger of
    /// this node and X steps out: it leaves every peer that sees the smaller.
    /// What remains are views that agree (each side of the missing link keeps
    /// the members that do not need it), and the step-out ends once the
    /// larger reaches the smaller again and finds it ready (see
    /// [`State::end_step_out`]).
    fn partial_partition(
        &self,
        patience: Duration,
        step_out_for: Duration,
    ) -> Vec<(ActorId, ActorId)> {
        let mut st = self.lock();
        let now = Instant::now();
        let seen: Vec<ActorId> = st
            .peers
            .values()
            .flat_map(|p| p.view.iter())
            .filter(|a| **a != st.me && !st.peers.contains_key(*a))
            .cloned()
            .collect();
        st.unreachable.retain(|a, _| seen.contains(a));
        for a in seen {
            st.unreachable.entry(a).or_insert(now);
        }
        let smaller_unreachable: Vec<ActorId> = st
            .unreachable
            .iter()
            .filter(|(a, since)| **a < st.me && now.duration_since(**since) >= patience)
            .map(|(a, _)| a.clone())
            .collect();
        let mut victims = Vec::new();
        for x in &smaller_unreachable {
            for (actor, p) in &st.peers {
                if p.view.contains(x) && !victims.iter().any(|(v, _)| v == actor) {
                    victims.push((actor.clone(), x.clone()));
                }
            }
        }
        if !victims.is_empty() {
            let until = now + step_out_for;
            st.stepped_out = Some(StepOut {
                causes: smaller_unreachable,
                until,
                last_resort: now + step_out_for * 2,
            });
            st.reconsider();
            st.tell_everyone();
        }
        victims
    }
}

impl State {
    /// Whether this node may order writes now.
    pub fn is_active(&self, now: Instant) -> bool {
        self.follows.as_ref() == Some(&self.me)
            && self.peers.values().all(|p| {
                p.follows.as_ref() == Some(&self.me)
                    && p.caught_up
                    && p.confirmed_until.is_some_and(|t| t > now)
                    && self.reaches_all_of(&p.view)
                    && !p.stepped_out
            })
    }

    /// Whether this node sees every member of a peer's view. A member it
    /// does not see may order writes of its own, or hold writes this node
    /// lacks that the peer merged: ordering for that peer meanwhile could
    /// hand out what was handed out there.
    fn reaches_all_of(&self, view: &[ActorId]) -> bool {
        view.iter()
            .all(|a| *a == self.me || self.peers.contains_key(a))
    }

    /// The connections of the view's peers.
    pub fn peer_conns(&self) -> Vec<Arc<PeerConn>> {
        self.peers.values().map(|p| p.conn.clone()).collect()
    }

    /// A peer refused a batch of this node's. A peer that still follows this
    /// node refuses only a version that does not descend its own: it holds a
    /// write this node has not seen. This node then orders nothing more
    /// until a merge with that peer, begun now, has finished; returns that merge.
    pub fn refused_by(&mut self, conn: &PeerConn) -> Option<CatchUp> {
        let p = self.peers.get_mut(&conn.actor)?;
        if p.conn.conn_id != conn.conn_id || p.follows.as_ref() != Some(&self.me) {
            return None;
        }
        p.caught_up = false;
        p.turn += 1;
        Some(CatchUp {
            conn: p.conn.clone(),
            turn: p.turn,
        })
    }

    /// Whether this node follows itself: it is the sequencer of its view
    /// (active or not).
    pub fn sequences(&self) -> bool {
        self.follows.as_ref() == Some(&self.me)
    }

    /// Whether connection `conn_id` is the live one of a view member.
    pub fn is_live(&self, conn: &PeerConn) -> bool {
        self.peers
            .get(&conn.actor)
            .is_some_and(|p| p.conn.conn_id == conn.conn_id)
    }

    /// Whether a batch from `sender` may be applied: it is the sequencer this node follows.
    pub fn may_apply_from(&self, sender: &ActorId) -> bool {
        self.follows.as_ref() == Some(sender)
    }

    /// This node applied (or, as sequencer, executed) a batch of `sequencer`'s.
    pub fn applied_from(&mut self, sequencer: &ActorId) {
        if self.applied_from.as_ref() != Some(sequencer) {
            self.applied_from = Some(sequencer.clone());
        }
    }

    fn new_probe(&mut self, now: Instant) -> u64 {
        self.next_probe += 1;
        let id = self.next_probe;
        self.probes.push_back((id, now));
        while self
            .probes
            .front()
            .is_some_and(|(_, at)| now.duration_since(*at) > self.lease)
        {
            self.probes.pop_front();
        }
        id
    }

    /// Recomputes the sequencer to follow (the smallest ready member); returns
    /// whether it changed (the caller tells the peers).
    fn reconsider(&mut self) -> bool {
        let mine = self.may_sequence().then(|| self.me.clone());
        let best = self
            .peers
            .iter()
            .filter(|(_, p)| p.ready)
            .map(|(a, _)| a.clone())
            .chain(mine)
            .min();
        if best == self.follows {
            return false;
        }
        tracing::debug!(node = %self.me, from = ?self.follows, to = ?best, "follows another sequencer");
        self.follows = best;
        true
    }

    /// Ends this node's step-out when it may: every node it could not reach
    /// is a ready peer again; or its time is up and it is back among peers,
    /// one of them ready (a node that stepped out too is no sign of the
    /// cluster: two such nodes ordering for each other would fork from it),
    /// with no member out of its reach; or, past its last resort, among any
    /// peers with no member out of its reach. Returns whether it ended.
    fn end_step_out(&mut self, now: Instant) -> bool {
        let Some(out) = &self.stepped_out else {
            return false;
        };
        let back = |c: &ActorId| self.peers.iter().any(|(a, p)| a.name == c.name && p.ready);
        let settled = !self.peers.is_empty() && self.unreachable.is_empty();
        let ends = out.causes.iter().all(back)
            || (settled && out.until <= now && self.peers.values().any(|p| p.ready))
            || (settled && out.last_resort <= now);
        if ends {
            self.stepped_out = None;
            self.reconsider();
        }
        ends
    }

    /// Whether this node may sequence: it holds the cluster's state and is not
    /// standing out of a partial partition.
    fn may_sequence(&self) -> bool {
        self.ready && self.stepped_out.is_none()
    }

    fn status_for(&self, probe_seen: u64) -> Message {
        Message::Status(Status {
            ready: self.may_sequence(),
            follows: self.follows.clone(),
            applied_from: self.applied_from.clone(),
            echo: probe_seen,
            view: self.peers.keys().cloned().collect(),
            stepped_out: self.stepped_out.is_some(),
        })
    }

    fn tell(&self, conn: &PeerConn) {
        let seen = self.peers.get(&conn.actor).map_or(0, |p| p.probe_seen);
        conn.send_control(&self.status_for(seen));
    }

    fn tell_everyone(&self) {
        for p in self.peers.values() {
            p.conn.send_control(&self.status_for(p.probe_seen));
        }
    }
}

/// How long a peer must see a node this one cannot reach before the partial
/// partition rule acts, in failure timeouts: long enough for a new member's
/// connections to every other member to form, and for a link that dropped
/// for a moment to come back.
const PARTIAL_PARTITION_PATIENCE: u32 = 3;
/// How long a node that stepped out of a partial partition keeps the peers it
/// left away (unless it reaches the node they see sooner), in failure timeouts.
const STEP_OUT_FOR: u32 = 10;

/// Starts the probe rounds of a node and its watch for partial partitions,
/// every heartbeat interval.
pub(crate) fn start(ctx: &Context, agreement: &Arc<Agreement>, members: &Arc<Membership>) {
    let (agreement, members) = (Arc::downgrade(agreement), Arc::downgrade(members));
    let every = ctx.config.heartbeat_interval;
    let failure_timeout = ctx.config.failure_timeout;
    ctx.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let (Some(agreement), Some(members)) = (agreement.upgrade(), members.upgrade()) else {
                return;
            };
            agreement.probe_round();
            let victims = agreement.partial_partition(
                failure_timeout * PARTIAL_PARTITION_PATIENCE,
                failure_timeout * STEP_OUT_FOR,
            );
            if !victims.is_empty() {
                members.step_out(victims, failure_timeout * STEP_OUT_FOR);
            }
        }
    });
}

/// Makes the node ready once it has finished its first merge with every peer
/// it has, one of them ready: peers that are all joining too (restarted, say,
/// while the member that held the state went down) hold no more than it
/// does, and merging with them alone would let it order from less than the
/// cluster holds; without a ready peer it waits a failure timeout (the rest
/// is gone). A node that meets nobody starts a cluster of its own and is ready at
/// once; one that met a member (even one that turned its connection away for
/// now, as a node dialing it at the same time does) or whose peers all left
/// before a merge finished waits for them, and takes the ordering on itself
/// only after a failure timeout alone (they are gone: it is the cluster now).
pub(crate) fn start_join(ctx: &Context, agreement: &Arc<Agreement>, members: &Arc<Membership>) {
    let (agreement, members) = (Arc::downgrade(agreement), Arc::downgrade(members));
    let failure_timeout = ctx.config.failure_timeout;
    ctx.spawn(async move {
        let mut met_anyone = false;
        let began = Instant::now();
        let mut alone_since = began;
        loop {
            let (Some(agreement), Some(members)) = (agreement.upgrade(), members.upgrade()) else {
                return;
            };
            let peers = members.peers();
            if !peers.is_empty() || (!met_anyone && members.met_a_member()) {
                met_anyone = true;
                alone_since = Instant::now();
            }
            let ready = match peers.is_empty() {
                true => !met_anyone || alone_since.elapsed() >= failure_timeout,
                false => {
                    peers.iter().all(|p| p.is_synced())
                        && (agreement.a_peer_is_ready() || began.elapsed() >= failure_timeout)
                }
            };
            if ready {
                agreement.set_ready();
                return;
            }
            drop((agreement, members));
            tokio::time::sleep(SETTLE_PAUSE).await;
        }
    });
}
