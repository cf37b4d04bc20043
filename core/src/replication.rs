//! Synchronous replication: each table's sequencer (the member the view agrees
//! on, see [`crate::agreement`]) orders writes, applies them, sends them to
//! every member of its view and answers only when all of them acknowledged.
//! Replicas apply batches only from the sequencer they follow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::agreement::{self, Agreement, CatchUp};
use crate::cluster::{Membership, PeerConn};
use crate::context::{Context, SETTLE_PAUSE};
use crate::error::{Error, ErrorKind, Result};
use crate::events::Event;
use crate::locks::lock;
use crate::replica::Replica;
use crate::sequencer::{Reply, Sequencer};
use crate::store::{Entry, TableStore};
use crate::vclock::{ActorId, VClock};
use crate::watch::Cause;
use crate::wire::{
    Message, Restored, Retracted, WireEntry, WriteCause, WriteOp, WriteOutcome, WriteRefusal,
};

/// Most writes the sequencer folds into one replication round.
const MAX_BATCH: usize = 512;
/// Writes a table's sequencer queues before writers wait.
const QUEUE: usize = 4096;

/// Where the answer to a write goes: a caller on this node, or a peer's request.
pub(crate) enum ReplyTo {
    Local(oneshot::Sender<Reply>),
    Remote { peer: Arc<PeerConn>, id: u64 },
}

impl ReplyTo {
    fn send(self, result: Reply) {
        match self {
            ReplyTo::Local(tx) => {
                let _ = tx.send(result);
            }
            ReplyTo::Remote { peer, id } => peer.send(&Message::WriteReply { id, result }),
        }
    }
}

/// A write's answer and where it goes.
type Answer = (ReplyTo, Reply);

/// One write waiting for the sequencer.
pub(crate) struct WriteJob {
    pub op: WriteOp,
    pub reply: ReplyTo,
}

/// A replicated batch waiting for its acknowledgements; its answers go out
/// when the last member acknowledged (or left the view).
struct PendingAck {
    waiting: Vec<ActorId>,
    replies: Vec<Answer>,
    deadline: Instant,
    replica: Arc<Replica>,
    /// Each version the batch wrote, with what it replaced.
    written: Vec<Written>,
}

/// A batch executed on the sequencer's replica: the answers, the new
/// versions in order, and what each of them replaced.
struct Executed {
    replies: Vec<Answer>,
    changes: Vec<WireEntry>,
    replaced: Vec<Option<Entry>>,
    causes: Vec<(u32, WriteCause)>,
}

/// A version the sequencer wrote and what it replaced, kept until the batch
/// is acknowledged so that a refused batch can be taken back.
struct Written {
    key: Vec<u8>,
    clock: VClock,
    replaced: Option<Entry>,
}

/// The sequencer tasks of the node's tables, its requests in flight to remote
/// sequencers and its batches waiting for acknowledgements.
pub(crate) struct Replication {
    ctx: Arc<Context>,
    members: Arc<Membership>,
    agreement: Arc<Agreement>,
    next_id: AtomicU64,
    requests: Mutex<HashMap<u64, (ActorId, oneshot::Sender<Reply>)>>,
    acks: Mutex<HashMap<u64, PendingAck>>,
    sequencers: Mutex<HashMap<String, mpsc::Sender<WriteJob>>>,
    me: Weak<Replication>,
}

impl Replication {
    pub fn new(
        ctx: &Arc<Context>,
        members: &Arc<Membership>,
        agreement: &Arc<Agreement>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Replication {
            ctx: ctx.clone(),
            members: members.clone(),
            agreement: agreement.clone(),
            next_id: AtomicU64::new(0),
            requests: Mutex::new(HashMap::new()),
            acks: Mutex::new(HashMap::new()),
            sequencers: Mutex::new(HashMap::new()),
            me: me.clone(),
        })
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The replica of table `name`, created empty (with its sequencer task,
    /// and announced as created) when missing.
    pub fn ensure_table(&self, name: &str) -> Result<Arc<Replica>> {
        crate::config::validate_name("table name", name)?;
        let (replica, created) = self.ctx.replica_or_insert(name, || {
            let replica = Replica::new(name);
            let (tx, rx) = mpsc::channel(QUEUE);
            lock(&self.sequencers).insert(name.to_string(), tx);
            self.ctx
                .spawn(run_sequencer(self.me.clone(), replica.clone(), rx));
            self.ctx.spawn(run_expiry(self.me.clone(), replica.clone()));
            replica
        });
        if created {
            self.ctx.emit(Event::TableCreated {
                table: name.to_string(),
            });
        }
        Ok(replica)
    }

    /// Tells every peer about a table of this node (created, or its handler changed).
    pub fn announce(&self, replica: &Replica) {
        self.members
            .broadcast(&Message::TableChanged(replica.info()));
    }

    fn sequencer_queue(&self, table: &str) -> Result<mpsc::Sender<WriteJob>> {
        lock(&self.sequencers)
            .get(table)
            .cloned()
            .ok_or_else(Error::closed)
    }

    /// Removes `actor` from the batches it has not acknowledged (all of them
    /// with `None`); returns the batches that are now complete.
    fn acknowledge(&self, actor: &ActorId, id: Option<u64>) -> Vec<PendingAck> {
        let mut acks = lock(&self.acks);
        let mut finished = Vec::new();
        let mut check = |id: u64, p: &mut PendingAck| {
            p.waiting.retain(|a| a != actor);
            if p.waiting.is_empty() {
                finished.push(id);
            }
        };
        match id {
            Some(id) => {
                if let Some(p) = acks.get_mut(&id) {
                    check(id, p);
                }
            }
            None => {
                for (id, p) in acks.iter_mut() {
                    check(*id, p);
                }
            }
        }
        // In id order, so that waiters are woken in the same order on every run.
        finished.sort_unstable();
        finished.iter().filter_map(|id| acks.remove(id)).collect()
    }

    /// A peer left the view: its unanswered requests fail, and batches stop
    /// waiting for it.
    ///
    /// When the peer still confirmed that it follows this node (it crashed,
    /// closed, or stepped out), it has not turned to another sequencer, and
    /// the batches are acknowledged by every member that remains. Otherwise
    /// (it went silent past its confirmation: this node may be the one cut
    /// off, and the peer may follow a sequencer of its own by now), the
    /// batches that wait for it, and every later one of their tables, fail
    /// and are taken back: acknowledged by a part of the view that may be
    /// the smaller side, they could later win a conflict against writes the
    /// rest of the cluster acknowledged.
    pub fn peer_down(&self, actor: &ActorId, confirmed: bool) {
        self.fail_requests_to(actor);
        if confirmed {
            return deliver(self.acknowledge(actor, None));
        }
        let agreement = self.agreement.lock();
        let lost = {
            let mut acks = lock(&self.acks);
            let mut first: HashMap<Arc<str>, u64> = HashMap::new();
            for (id, p) in acks.iter().filter(|(_, p)| p.waiting.contains(actor)) {
                let f = first.entry(p.replica.name.clone()).or_insert(*id);
                *f = (*f).min(*id);
            }
            remove_from(&mut acks, |i, p| {
                first.get(&p.replica.name).is_some_and(|f| i >= *f)
            })
        };
        if lost.is_empty() {
            return;
        }
        drop(self.take_back(agreement, &lost));
        tracing::debug!(node = %self.ctx.actor, peer = %actor, batches = lost.len(), "a member went silent before it applied a batch; failed");
        let why = format!("{} went silent before it applied the write", actor.name);
        fail_batches(lost, &why);
    }

    /// A peer's connection was replaced by another while the peer stays in the
    /// view: what it had not acknowledged was lost with the old connection, so
    /// those batches fail instead of counting as applied.
    pub fn connection_replaced(&self, actor: &ActorId) {
        self.fail_requests_to(actor);
        let lost = remove_from(&mut lock(&self.acks), |_, p| p.waiting.contains(actor));
        let why = format!(
            "the connection to {} was replaced before it applied the write",
            actor.name
        );
        fail_batches(lost, &why);
    }

    fn fail_requests_to(&self, actor: &ActorId) {
        let mut reqs = lock(&self.requests);
        let mut ids: Vec<u64> = reqs
            .iter()
            .filter(|(_, (a, _))| a == actor)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            if let Some((_, tx)) = reqs.remove(&id) {
                let _ = tx.send(Err(WriteRefusal::Failed(
                    ErrorKind::Unavailable,
                    format!("the sequencer {} went down before answering", actor.name),
                )));
            }
        }
    }

    /// Members that let a batch wait longer than the failure timeout.
    fn overdue(&self, now: Instant) -> Vec<ActorId> {
        let mut late: Vec<ActorId> = lock(&self.acks)
            .values()
            .filter(|p| p.deadline <= now)
            .flat_map(|p| p.waiting.iter().cloned())
            .collect();
        late.sort();
        late.dedup();
        late
    }

    /// The node is closing: every waiter fails.
    pub fn fail_all(&self) {
        lock(&self.requests).clear();
        lock(&self.acks).clear();
        lock(&self.sequencers).clear();
    }

    /// Drops members that do not acknowledge within the failure timeout, so a
    /// write never waits on a dead member for longer than that.
    pub fn start_ack_watchdog(&self) {
        let me = self.me.clone();
        let every = self.ctx.config.heartbeat_interval;
        self.ctx.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(replication) = me.upgrade() else {
                    return;
                };
                for actor in replication.overdue(Instant::now()) {
                    replication.members.drop_peer(
                        &actor,
                        None,
                        "did not acknowledge a write within the failure timeout",
                    );
                }
            }
        });
    }

    /// Sends `op` to the table's sequencer (this node or a peer) and waits for
    /// the answer, retrying while the views settle, up to the request timeout.
    pub async fn submit(&self, table: &Replica, op: WriteOp) -> Result<WriteOutcome> {
        let timeout = self.ctx.config.request_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            self.ctx.check_open()?;
            let sequencer = self.agreement.follows();
            let answer = match &sequencer {
                Some(s) => self.send_to_sequencer(s, table, &op, deadline).await?,
                // No member holds the cluster's state yet (every one is joining).
                None => Err(WriteRefusal::NotSequencer),
            };
            match answer {
                Ok(outcome) => return Ok(outcome),
                Err(WriteRefusal::NotSequencer) => {
                    if Instant::now() >= deadline {
                        return Err(Error::unavailable(
                            "the members could not agree on a sequencer within the request timeout",
                        ));
                    }
                    tokio::time::sleep(SETTLE_PAUSE).await;
                }
                Err(WriteRefusal::Failed(kind, message)) => return Err(Error::new(kind, message)),
            }
        }
    }

    /// One attempt of [`Replication::submit`] at `sequencer`.
    async fn send_to_sequencer(
        &self,
        sequencer: &ActorId,
        table: &Replica,
        op: &WriteOp,
        deadline: Instant,
    ) -> Result<Reply> {
        let (tx, rx) = oneshot::channel();
        if *sequencer == self.ctx.actor {
            let job = WriteJob {
                op: op.clone(),
                reply: ReplyTo::Local(tx),
            };
            let queue = self.sequencer_queue(&table.name)?;
            queue.send(job).await.map_err(|_| Error::closed())?;
        } else {
            let Some(peer) = self.members.peer(sequencer) else {
                return Ok(Err(WriteRefusal::NotSequencer));
            };
            let id = self.next_id();
            lock(&self.requests).insert(id, (sequencer.clone(), tx));
            peer.send(&Message::WriteRequest {
                id,
                table: table.name.to_string(),
                op: op.clone(),
            });
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(_)) => {
                self.ctx.check_open()?;
                Ok(Err(WriteRefusal::Failed(
                    ErrorKind::Unavailable,
                    "the sequencer stopped before answering".into(),
                )))
            }
            Err(_) => Err(Error::timeout(format!(
                "no answer from the sequencer {} within {} ms",
                sequencer.name,
                self.ctx.config.request_timeout.as_millis()
            ))),
        }
    }

    /// A peer's write for a table this node sequences.
    pub fn on_write_request(&self, peer: &Arc<PeerConn>, id: u64, table: String, op: WriteOp) {
        let reply = ReplyTo::Remote {
            peer: peer.clone(),
            id,
        };
        let queue = self
            .ensure_table(&table)
            .and_then(|_| self.sequencer_queue(&table));
        let queue = match queue {
            Ok(q) => q,
            Err(e) => {
                let refusal = WriteRefusal::Failed(e.kind(), e.message().to_string());
                return reply.send(Err(refusal));
            }
        };
        let job = WriteJob { op, reply };
        if let Err(mpsc::error::TrySendError::Full(job)) = queue.try_send(job) {
            // The sequencer is saturated: wait for room without stalling this connection.
            self.ctx.spawn(async move {
                let _ = queue.send(job).await;
            });
        }
    }

    /// A sequencer's answer to one of this node's requests.
    pub fn on_write_reply(&self, id: u64, result: Reply) {
        if let Some((_, tx)) = lock(&self.requests).remove(&id) {
            let _ = tx.send(result);
        }
    }

    /// A batch from a sequencer: applied in order and acknowledged when it
    /// comes from the sequencer this node follows and descends what this
    /// node holds; refused otherwise.
    pub fn on_apply(
        &self,
        peer: &PeerConn,
        id: u64,
        table: &str,
        entries: Vec<WireEntry>,
        causes: &[(u32, WriteCause)],
    ) {
        let mut agreement = self.agreement.lock();
        if !agreement.may_apply_from(&peer.actor) {
            drop(agreement);
            tracing::debug!(node = %self.ctx.actor, peer = %peer.actor, "refusing a batch from a sequencer this node does not follow");
            return peer.send(&Message::ApplyRefused { id });
        }
        let cutoff = self.ctx.tombstone_cutoff_ms();
        let applied = self.ensure_table(table).and_then(|replica| {
            let mut store = replica.write()?;
            Ok(apply_replicated(&mut store, entries, causes, cutoff))
        });
        match applied {
            Ok(true) => {
                agreement.applied_from(&peer.actor);
                drop(agreement);
                peer.send(&Message::ApplyAck { id });
            }
            Ok(false) => {
                drop(agreement);
                tracing::debug!(node = %self.ctx.actor, peer = %peer.actor, table, "refusing a batch: this node holds a version the sequencer has not seen");
                peer.send(&Message::ApplyRefused { id });
            }
            Err(e) => {
                drop(agreement);
                tracing::warn!(node = %self.ctx.actor, peer = %peer.actor, "refusing a batch: {e}");
                peer.send(&Message::ApplyRefused { id });
            }
        }
    }

    /// A member applied a batch.
    pub fn on_apply_ack(&self, peer: &ActorId, id: u64) {
        deliver(self.acknowledge(peer, Some(id)));
    }

    /// A member refused a batch: it follows another sequencer now, or it
    /// holds a version of a key in the batch that the batch does not descend
    /// from. The batch and every later one of its table fail and are taken
    /// back here (newest first), so that a version no member acknowledged
    /// never competes later with the acknowledged ones; returns the merge to
    /// run with the member before this node orders again.
    pub fn on_apply_refused(&self, peer: &PeerConn, id: u64) -> Option<CatchUp> {
        let agreement = self.agreement.lock();
        let refused = {
            let mut acks = lock(&self.acks);
            let table = acks.get(&id).map(|p| p.replica.name.clone())?;
            remove_from(&mut acks, |i, p| i >= id && p.replica.name == table)
        };
        let mut agreement = self.take_back(agreement, &refused);
        let catch_up = agreement.refused_by(peer);
        drop(agreement);
        tracing::debug!(node = %self.ctx.actor, peer = %peer.actor, batches = refused.len(), "a member refused a batch; failed");
        let why = format!("{} refused the write", peer.actor.name);
        fail_batches(refused, &why);
        catch_up
    }

    /// Takes `batches` back (newest first) here and on every member that
    /// applied them, while this node still sequences. The members are told
    /// before they may leave the view with them: a version kept there would
    /// meet the next sequencer's as a conflict, which the fallback may settle
    /// for the version no member acknowledged. The messages follow the
    /// batches on each connection, so they arrive after them.
    ///
    /// A node that turned to another sequencer keeps them: that sequencer
    /// merges with it before it orders, so they are part of what it orders
    /// from (and of what it answered since); taking them back now would undo
    /// them under its feet.
    fn take_back<'a>(
        &self,
        agreement: MutexGuard<'a, agreement::State>,
        batches: &[PendingAck],
    ) -> MutexGuard<'a, agreement::State> {
        if !agreement.sequences() {
            return agreement;
        }
        for batch in batches.iter().rev() {
            match batch.replica.write() {
                Ok(mut store) => {
                    for w in batch.written.iter().rev() {
                        store.take_back(&w.key, &w.clock, w.replaced.as_ref());
                    }
                }
                Err(e) => {
                    tracing::error!(node = %self.ctx.actor, "cannot take back a failed batch: {e}")
                }
            }
        }
        for retract in retractions(batches) {
            for m in agreement.peer_conns() {
                m.send(&retract);
            }
        }
        agreement
    }

    /// A sequencer took back versions of its own that a member refused: each
    /// one this node holds goes back to what it replaced (newest first, as
    /// they come). A version the sender did not write is left alone.
    pub fn on_retract(&self, peer: &PeerConn, table: &str, versions: Vec<Retracted>) {
        // Only from the sequencer this node follows: another one may have
        // ordered from these versions since this node merged them to it.
        let agreement = self.agreement.lock();
        if !agreement.may_apply_from(&peer.actor) {
            return;
        }
        let Some(replica) = self.ctx.replica(table) else {
            return;
        };
        let Ok(mut store) = replica.write() else {
            return;
        };
        let mut restored = 0usize;
        for v in versions {
            if !v.written.dots().iter().any(|(a, _)| *a == peer.actor) {
                continue;
            }
            let previous = v.replaced.map(|r| Entry {
                value: r.value.map(Vec::into_boxed_slice),
                clock: r.clock,
                deadline_ms: r.deadline_ms,
            });
            restored += usize::from(store.take_back(&v.key, &v.written, previous.as_ref()));
        }
        drop(store);
        drop(agreement);
        tracing::debug!(node = %self.ctx.actor, peer = %peer.actor, table, restored, "took back versions the sequencer retracted");
    }

    /// Applies a batch of writes in order, replicates it and arranges its
    /// answers; refuses it when this node is not the active sequencer. Runs
    /// under the agreement lock, so the batch is executed and queued to the
    /// members as a whole before this node can turn to another sequencer.
    fn sequence_batch(&self, replica: &Arc<Replica>, batch: &mut Vec<WriteJob>) {
        let mut agreement = self.agreement.lock();
        if !agreement.is_active(Instant::now()) {
            drop(agreement);
            for job in batch.drain(..) {
                job.reply.send(Err(WriteRefusal::NotSequencer));
            }
            return;
        }
        // A request whose connection ended has nobody left to answer, and its
        // sender was told it failed: ordering it now would add a write nobody
        // knows of.
        batch.retain(|job| match &job.reply {
            ReplyTo::Remote { peer, .. } => agreement.is_live(peer),
            ReplyTo::Local(_) => true,
        });
        let peers = agreement.peer_conns();
        let Executed {
            replies,
            changes,
            replaced,
            causes,
        } = match self.execute(replica, batch) {
            Ok(done) => done,
            Err(e) => {
                drop(agreement);
                for job in batch.drain(..) {
                    let refusal = WriteRefusal::Failed(e.kind(), e.message().to_string());
                    job.reply.send(Err(refusal));
                }
                return;
            }
        };
        if !changes.is_empty() {
            agreement.applied_from(&self.ctx.actor);
        }
        if changes.is_empty() || peers.is_empty() {
            let replies = self.after_pending(replica, replies);
            drop(agreement);
            deliver_replies(replies);
            return;
        }
        self.replicate(replica, &peers, changes, replaced, causes, replies);
    }

    /// Writes that changed nothing (a delete of an absent key, say) were
    /// decided on versions whose batches may still wait for their
    /// acknowledgements: they are answered with the newest such batch of the
    /// table, and fail with it should it be taken back. Returns the replies
    /// to send now (all of them when no batch of the table waits).
    fn after_pending(&self, replica: &Replica, replies: Vec<Answer>) -> Vec<Answer> {
        let mut acks = lock(&self.acks);
        let newest = acks
            .iter_mut()
            .filter(|(_, p)| p.replica.name == replica.name)
            .max_by_key(|(id, _)| **id);
        match newest {
            Some((_, p)) => {
                p.replies.extend(replies);
                Vec::new()
            }
            None => replies,
        }
    }

    /// Executes `batch` on the local replica.
    fn execute(&self, replica: &Replica, batch: &mut Vec<WriteJob>) -> Result<Executed> {
        let mut store = replica.write()?;
        let mut sequencer = Sequencer {
            store: &mut store,
            actor: &self.ctx.actor,
            now_ms: self.ctx.wall_clock_ms(),
            max_key: self.ctx.config.max_key_size,
            max_value: self.ctx.config.max_value_size,
            changes: Vec::new(),
            replaced: Vec::new(),
            causes: Vec::new(),
        };
        let replies = batch
            .drain(..)
            .map(|job| {
                let outcome = sequencer.execute(job.op);
                (job.reply, outcome)
            })
            .collect();
        Ok(Executed {
            replies,
            changes: sequencer.changes,
            replaced: sequencer.replaced,
            causes: sequencer.causes,
        })
    }

    /// Sends a batch to `peers`; its answers go out when all of them
    /// acknowledged it or left the view (the ack watchdog drops members
    /// silent for too long).
    fn replicate(
        &self,
        replica: &Arc<Replica>,
        peers: &[Arc<PeerConn>],
        entries: Vec<WireEntry>,
        replaced: Vec<Option<Entry>>,
        causes: Vec<(u32, WriteCause)>,
        replies: Vec<Answer>,
    ) {
        let id = self.next_id();
        let written = entries
            .iter()
            .zip(replaced)
            .map(|(e, replaced)| Written {
                key: e.key.clone(),
                clock: e.clock.clone(),
                replaced,
            })
            .collect();
        lock(&self.acks).insert(
            id,
            PendingAck {
                waiting: peers.iter().map(|p| p.actor.clone()).collect(),
                replies,
                deadline: Instant::now() + self.ctx.config.failure_timeout,
                replica: replica.clone(),
                written,
            },
        );
        let msg = Message::Apply {
            id,
            table: replica.name.to_string(),
            entries: crate::wire::Entries(entries),
            causes,
        };
        match crate::wire::encode_frame(&msg) {
            Ok(frame) => {
                let frame: Arc<[u8]> = frame.into();
                for p in peers {
                    p.send_frame(frame.clone());
                }
            }
            Err(e) => tracing::error!("cannot encode a batch: {e}"),
        }
    }
}

/// The sequencer task of one table: takes writes in batches and orders each
/// batch while this node is the active sequencer (see [`crate::agreement`]).
async fn run_sequencer(
    replication: Weak<Replication>,
    replica: Arc<Replica>,
    mut jobs: mpsc::Receiver<WriteJob>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if jobs.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let Some(replication) = replication.upgrade() else {
            return;
        };
        replication.sequence_batch(&replica, &mut batch);
    }
}

/// Most keys one expiry write deletes.
const EXPIRE_BATCH: usize = 1024;
/// How often a node looks again at deadlines that passed while it does not
/// sequence the table (the sequencer's delete has not arrived yet, or this
/// node may become the sequencer), or after its expiry write failed.
const EXPIRY_RETRY: std::time::Duration = std::time::Duration::from_millis(20);

/// The expiry task of one table: sleeps until the earliest deadline the
/// replica holds and, while this node is the table's sequencer, writes the
/// deletes of the values that are due (an [`WriteOp::Expire`] through its own
/// queue, ordered and replicated as any write). Every node runs it, so a
/// new sequencer (after a handoff, or on each side of a split) deletes what
/// is due by the deadlines it holds.
async fn run_expiry(replication: Weak<Replication>, replica: Arc<Replica>) {
    let Ok(wake) = replica.read().map(|s| s.expiry_wake()) else {
        return;
    };
    loop {
        let next = match replica.read() {
            Ok(s) => s.next_deadline(),
            Err(_) => return,
        };
        let Some(next) = next else {
            wake.notified().await;
            continue;
        };
        let Some(r) = replication.upgrade() else {
            return;
        };
        let now = r.ctx.wall_clock_ms();
        if next > now {
            drop(r);
            let wait = std::time::Duration::from_millis(next - now);
            let _ = tokio::time::timeout(wait, wake.notified()).await;
            continue;
        }
        let due = match replica.write() {
            Ok(mut s) => s.due(now, EXPIRE_BATCH),
            Err(_) => return,
        };
        if due.is_empty() {
            continue;
        }
        let sequences = r.agreement.follows().as_ref() == Some(&r.ctx.actor);
        if sequences {
            let deleted = r.submit(&replica, WriteOp::Expire(due)).await;
            if let Err(e) = &deleted {
                tracing::debug!(node = %r.ctx.actor, table = %replica.name, "expiry write failed, retrying: {e}");
            } else {
                continue;
            }
        }
        drop(r);
        tokio::time::sleep(EXPIRY_RETRY).await;
    }
}

/// Removes the batches `pick` selects (by id and batch), in id order.
fn remove_from(
    acks: &mut HashMap<u64, PendingAck>,
    pick: impl Fn(u64, &PendingAck) -> bool,
) -> Vec<PendingAck> {
    let mut ids: Vec<u64> = acks
        .iter()
        .filter(|(i, p)| pick(**i, p))
        .map(|(i, _)| *i)
        .collect();
    ids.sort_unstable();
    ids.iter().filter_map(|i| acks.remove(i)).collect()
}

/// Answers every write of `batches` with `Unavailable`: the sequencer applied
/// them, but not every member did, so they may or may not last.
fn fail_batches(batches: Vec<PendingAck>, why: &str) {
    for batch in batches {
        for (to, _) in batch.replies {
            to.send(Err(WriteRefusal::Failed(
                ErrorKind::Unavailable,
                format!("{why}; it may or may not have taken effect"),
            )));
        }
    }
}

fn deliver(batches: Vec<PendingAck>) {
    for batch in batches {
        deliver_replies(batch.replies);
    }
}

fn deliver_replies(replies: Vec<Answer>) {
    for (to, result) in replies {
        to.send(result);
    }
}

/// Stores a batch from the sequencer, all or nothing: each version must
/// descend the local one, which it does unless this replica took in a
/// version the sequencer has not seen (by a merge, after a netsplit or a
/// handoff). Then nothing is stored and `false` says so: acknowledging
/// would let the sequencer hand out what it ordered from a state that lacks
/// that version. A version older than the local one (an anti-entropy round
/// brought its successor first) is skipped.
/// Most bytes of keys and values in one [`Message::Retract`]: each version
/// fits a frame on its own (the configuration makes sure of that), and a few
/// together stay well below the frame limit.
const RETRACT_CHUNK: usize = 1 << 20;

/// The [`Message::Retract`]s for `refused` (in the order they were taken
/// back: newest first), a table per message and at most about
/// [`RETRACT_CHUNK`] bytes each.
fn retractions(refused: &[PendingAck]) -> Vec<Message> {
    let mut out = Vec::new();
    let mut current: Option<(String, Vec<Retracted>, usize)> = None;
    for batch in refused.iter().rev() {
        for w in batch.written.iter().rev() {
            let restored = w.replaced.as_ref().map(|e| Restored {
                value: e.value.as_deref().map(<[u8]>::to_vec),
                clock: e.clock.clone(),
                deadline_ms: e.deadline_ms,
            });
            let size = w.key.len()
                + restored
                    .as_ref()
                    .map_or(0, |r| r.value.as_ref().map_or(0, Vec::len));
            let table = batch.replica.name.to_string();
            let full = current.as_ref().is_some_and(|(t, v, bytes)| {
                *t != table || (!v.is_empty() && bytes + size > RETRACT_CHUNK)
            });
            if full {
                if let Some((table, versions, _)) = current.take() {
                    out.push(Message::Retract { table, versions });
                }
            }
            let (_, versions, bytes) = current.get_or_insert_with(|| (table, Vec::new(), 0));
            versions.push(Retracted {
                key: w.key.clone(),
                written: w.clock.clone(),
                replaced: restored,
            });
            *bytes += size;
        }
    }
    if let Some((table, versions, _)) = current {
        out.push(Message::Retract { table, versions });
    }
    out
}

fn apply_replicated(
    store: &mut TableStore,
    entries: Vec<WireEntry>,
    causes: &[(u32, WriteCause)],
    cutoff_ms: u64,
) -> bool {
    let mut fresh = Vec::with_capacity(entries.len());
    // In index order, as the sequencer lists them.
    let mut marks = causes.iter().peekable();
    for (i, e) in entries.into_iter().enumerate() {
        let cause = match marks.next_if(|(at, _)| *at as usize == i) {
            Some((_, WriteCause::Resolve)) => Cause::Resolve,
            Some((_, WriteCause::Expiry)) => Cause::Expiry,
            None => Cause::Replicated,
        };
        let Some(local) = store.clock(&e.key) else {
            fresh.push((e, cause));
            continue;
        };
        // Past its retention a tombstone counts as absent here, as it
        // already is where it was purged (the sequencer, for one).
        let gone = || {
            store
                .entry(&e.key)
                .is_some_and(|l| l.is_expired_tombstone(cutoff_ms))
        };
        if e.clock.descends(&local) || gone() {
            fresh.push((e, cause));
        } else if !local.descends(&e.clock) {
            return false;
        }
    }
    for (e, cause) in fresh {
        store.insert(&e.key, e.value.as_deref(), &e.clock, e.deadline_ms, cause);
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Node};
    use std::time::Duration;

    fn pending(waiting: ActorId) -> (PendingAck, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        let batch = PendingAck {
            waiting: vec![waiting],
            replies: vec![(ReplyTo::Local(tx), Ok(WriteOutcome::Swapped))],
            deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(60),
            replica: Replica::new("t"),
            written: Vec::new(),
        };
        (batch, rx)
    }

    fn version(key: &[u8], value: &[u8], clock: &VClock) -> WireEntry {
        WireEntry {
            key: key.to_vec(),
            value: Some(value.to_vec()),
            clock: clock.clone(),
            deadline_ms: None,
        }
    }

    #[test]
    fn a_batch_that_does_not_descend_a_local_version_is_refused_whole() {
        let (seq, other) = (ActorId::new("seq", 1), ActorId::new("other", 2));
        let mut store = TableStore::new();
        let mut base = VClock::fresh();
        base.increment(&seq, 1);
        store.insert(b"a", Some(b"1"), &base, None, Cause::Replicated);
        // This replica merged a write the sequencer has not seen.
        let mut theirs = base.clone();
        theirs.increment(&other, 2);
        store.insert(b"b", Some(b"theirs"), &theirs, None, Cause::Replicated);

        let mut next = base.clone();
        next.increment(&seq, 3);
        let batch = vec![version(b"a", b"2", &next), version(b"b", b"stale", &next)];
        assert!(!apply_replicated(&mut store, batch, &[], 0));
        assert_eq!(
            store.value(b"a"),
            Some(&b"1"[..]),
            "nothing of it is stored"
        );
        assert_eq!(store.value(b"b"), Some(&b"theirs"[..]));

        // An older version (an anti-entropy round brought its successor
        // first) is skipped, a newer one stored.
        store.insert(b"a", Some(b"2"), &next, None, Cause::Replicated);
        let mut newer = theirs.clone();
        newer.increment(&seq, 4);
        let batch = vec![version(b"a", b"1", &base), version(b"b", b"3", &newer)];
        assert!(apply_replicated(&mut store, batch, &[], 0));
        assert_eq!(store.value(b"a"), Some(&b"2"[..]));
        assert_eq!(store.value(b"b"), Some(&b"3"[..]));
    }

    #[test]
    fn a_replaced_connection_fails_the_batches_it_had_not_acknowledged() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = Config {
                cookie: Some(b"t".to_vec()),
                ..Config::default()
            };
            let node = Node::start(config).await.unwrap();
            let replication = node.replication();
            let peer = ActorId::new("peer", 1);
            let (batch, mut replaced) = pending(peer.clone());
            lock(&replication.acks).insert(1, batch);
            let (batch, mut gone) = pending(ActorId::new("other", 2));
            lock(&replication.acks).insert(2, batch);

            replication.connection_replaced(&peer);
            match replaced.try_recv() {
                Ok(Err(WriteRefusal::Failed(ErrorKind::Unavailable, _))) => {}
                other => panic!("a batch lost with its connection answered {other:?}"),
            }
            assert!(gone.try_recv().is_err(), "other batches keep waiting");

            // A member that leaves the view while it confirms no longer
            // holds a batch up.
            replication.peer_down(&ActorId::new("other", 2), true);
            assert_eq!(gone.try_recv().unwrap(), Ok(WriteOutcome::Swapped));
            node.close().await.unwrap();
        });
    }

    #[test]
    fn a_batch_waiting_for_a_member_gone_silent_fails_and_is_taken_back() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = Config {
                cookie: Some(b"t".to_vec()),
                ..Config::default()
            };
            let node = Node::start(config).await.unwrap();
            let replication = node.replication();
            // Alone, the node sequences once it is ready.
            assert!(
                replication
                    .agreement
                    .wait_ready(Duration::from_secs(5))
                    .await
            );
            let replica = replication.ensure_table("t").unwrap();
            let me = ActorId::new("seq", 1);
            let mut old = VClock::fresh();
            old.increment(&me, 1);
            let mut new = old.clone();
            new.increment(&me, 2);
            let previous = Entry {
                value: Some(Box::from(&b"old"[..])),
                clock: old.clone(),
                deadline_ms: None,
            };
            replica
                .write()
                .unwrap()
                .insert(b"k", Some(b"new"), &new, None, Cause::Replicated);
            let silent = ActorId::new("silent", 2);
            let (mut batch, mut answer) = pending(silent.clone());
            batch.replica = replica.clone();
            batch.written = vec![Written {
                key: b"k".to_vec(),
                clock: new.clone(),
                replaced: Some(previous),
            }];
            lock(&replication.acks).insert(1, batch);

            replication.peer_down(&silent, false);
            match answer.try_recv() {
                Ok(Err(WriteRefusal::Failed(ErrorKind::Unavailable, _))) => {}
                other => panic!("a batch the silent member held up answered {other:?}"),
            }
            {
                let store = replica.read().unwrap();
                assert_eq!(store.value(b"k"), Some(&b"old"[..]), "taken back");
                assert!(store.clock(b"k").is_some_and(|c| c.equal(&old)));
            }
            node.close().await.unwrap();
        });
    }

    #[test]
    fn a_retracted_version_goes_back_only_where_it_is_still_held() {
        let (seq, other) = (ActorId::new("seq", 1), ActorId::new("other", 2));
        let mut store = TableStore::new();
        let mut old = VClock::fresh();
        old.increment(&seq, 1);
        let mut taken = old.clone();
        taken.increment(&seq, 2);
        store.insert(b"held", Some(b"new"), &taken, None, Cause::Replicated);
        let mut moved_on = taken.clone();
        moved_on.increment(&other, 1);
        store.insert(b"moved", Some(b"newer"), &moved_on, None, Cause::Replicated);
        let previous = Entry {
            value: Some(Box::from(&b"old"[..])),
            clock: old.clone(),
            deadline_ms: None,
        };
        assert!(store.take_back(b"held", &taken, Some(&previous)));
        assert!(!store.take_back(b"moved", &taken, Some(&previous)));
        assert_eq!(store.value(b"held"), Some(&b"old"[..]));
        assert_eq!(store.value(b"moved"), Some(&b"newer"[..]));
    }
}
