//! Synchronous replication: each table's sequencer (the member the view agrees
//! on, see [`crate::agreement`]) orders writes, applies them, sends them to
//! every member of its view and answers only when all of them acknowledged.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::{mpsc, oneshot};

use crate::error::{Error, ErrorKind, Result};
use crate::membership::PeerConn;
use crate::node::{wall_clock_ms, NodeInner, SETTLE_PAUSE};
use crate::resolve::merge_versions;
use crate::store::{Entry, TableStore};
use crate::table::{ConflictRecord, TableShared};
use crate::vclock::{ActorId, PruneLimits, VClock};
use crate::wire::{Message, WireEntry, WriteOp, WriteOutcome, WriteRefusal};

/// Most writes the sequencer folds into one replication round.
const MAX_BATCH: usize = 512;

type Reply = std::result::Result<WriteOutcome, WriteRefusal>;

/// Where the answer to a write goes: a caller on this node, or a peer's request.
pub(crate) enum ReplyTo {
    Local(oneshot::Sender<Reply>),
    Remote { peer: Arc<PeerConn>, id: u64 },
}

impl ReplyTo {
    fn send(self, node: &NodeInner, result: Reply) {
        match self {
            ReplyTo::Local(tx) => {
                let _ = tx.send(result);
            }
            ReplyTo::Remote { peer, id } => peer.send(node, &Message::WriteReply { id, result }),
        }
    }
}

/// One write waiting for the sequencer.
pub(crate) struct WriteJob {
    pub op: WriteOp,
    pub reply: ReplyTo,
}

/// A replicated batch waiting for its acknowledgements; its answers go out
/// when the last member acknowledged (or left the view).
struct PendingAck {
    waiting: Vec<ActorId>,
    replies: Vec<(ReplyTo, Reply)>,
    deadline: tokio::time::Instant,
}

/// Requests in flight to remote sequencers and batches waiting for acknowledgements.
#[derive(Default)]
pub(crate) struct Replication {
    next_id: AtomicU64,
    requests: Mutex<HashMap<u64, (ActorId, oneshot::Sender<Reply>)>>,
    acks: Mutex<HashMap<u64, PendingAck>>,
}

impl Replication {
    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Removes `actor` from the batches it has not acknowledged (all of them
    /// with `None`); returns the batches that are now complete.
    fn acknowledge(&self, actor: &ActorId, id: Option<u64>) -> Vec<PendingAck> {
        let Ok(mut acks) = self.acks.lock() else {
            return Vec::new();
        };
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
        finished.iter().filter_map(|id| acks.remove(id)).collect()
    }

    /// A peer left the view: its unanswered requests fail, and batches stop
    /// waiting for it (they are acknowledged by every member that remains).
    pub fn peer_down(&self, node: &NodeInner, actor: &ActorId) {
        self.fail_requests_to(actor);
        deliver(node, self.acknowledge(actor, None));
    }

    /// A peer's connection was replaced by another while the peer stays in the
    /// view: what it had not acknowledged was lost with the old connection, so
    /// those batches fail instead of counting as applied.
    pub fn connection_replaced(&self, node: &NodeInner, actor: &ActorId) {
        self.fail_requests_to(actor);
        let lost: Vec<PendingAck> = match self.acks.lock() {
            Ok(mut acks) => {
                let ids: Vec<u64> = acks
                    .iter()
                    .filter(|(_, p)| p.waiting.contains(actor))
                    .map(|(id, _)| *id)
                    .collect();
                ids.iter().filter_map(|id| acks.remove(id)).collect()
            }
            Err(_) => Vec::new(),
        };
        fail_batches(
            node,
            lost,
            &format!(
                "the connection to {} was replaced before it applied the write",
                actor.name
            ),
        );
    }

    fn fail_requests_to(&self, actor: &ActorId) {
        if let Ok(mut reqs) = self.requests.lock() {
            let ids: Vec<u64> = reqs
                .iter()
                .filter(|(_, (a, _))| a == actor)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                if let Some((_, tx)) = reqs.remove(&id) {
                    let _ = tx.send(Err(WriteRefusal::Failed(
                        ErrorKind::Unavailable,
                        format!("the sequencer {} went down before answering", actor.name),
                    )));
                }
            }
        }
    }

    /// Members that let a batch wait longer than the failure timeout.
    fn overdue(&self, now: tokio::time::Instant) -> Vec<ActorId> {
        let Ok(acks) = self.acks.lock() else {
            return Vec::new();
        };
        let mut late: Vec<ActorId> = acks
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
        if let Ok(mut reqs) = self.requests.lock() {
            reqs.clear();
        }
        if let Ok(mut acks) = self.acks.lock() {
            acks.clear();
        }
    }
}

/// Answers every write of `batches` with `Unavailable`: the sequencer applied
/// them, but not every member did, so they may or may not last.
fn fail_batches(node: &NodeInner, batches: Vec<PendingAck>, why: &str) {
    for batch in batches {
        for (to, _) in batch.replies {
            to.send(
                node,
                Err(WriteRefusal::Failed(
                    ErrorKind::Unavailable,
                    format!("{why}; it may or may not have taken effect"),
                )),
            );
        }
    }
}

fn deliver(node: &NodeInner, batches: Vec<PendingAck>) {
    for batch in batches {
        for (to, result) in batch.replies {
            to.send(node, result);
        }
    }
}

/// Drops members that do not acknowledge within the failure timeout, so a write
/// never waits on a dead member for longer than that.
pub(crate) fn start_ack_watchdog(node: &Arc<NodeInner>) {
    let weak = Arc::downgrade(node);
    let every = node.config.heartbeat_interval;
    node.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(node) = weak.upgrade() else { return };
            for actor in node.replication.overdue(tokio::time::Instant::now()) {
                node.members.drop_peer(
                    &node,
                    &actor,
                    None,
                    "did not acknowledge a write within the failure timeout",
                );
            }
        }
    });
}

/// Sends `op` to the table's sequencer (this node or a peer) and waits for the
/// answer, retrying while the views settle, up to the request timeout.
pub(crate) async fn submit(
    node: &Arc<NodeInner>,
    table: &Arc<TableShared>,
    op: WriteOp,
) -> Result<WriteOutcome> {
    let timeout = node.config.request_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        node.check_open()?;
        let Some(sequencer) = node.agreement.follows() else {
            // No member holds the cluster's state yet (every one is joining).
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::unavailable(
                    "no member of the view is ready to order writes",
                ));
            }
            tokio::time::sleep(SETTLE_PAUSE).await;
            continue;
        };
        let (tx, rx) = oneshot::channel();
        if sequencer == node.actor {
            let job = WriteJob {
                op: op.clone(),
                reply: ReplyTo::Local(tx),
            };
            table.jobs.send(job).await.map_err(|_| Error::closed())?;
        } else {
            let Some(peer) = node.members.peer(&sequencer) else {
                tokio::time::sleep(SETTLE_PAUSE).await;
                continue;
            };
            let id = node.replication.next_id();
            if let Ok(mut reqs) = node.replication.requests.lock() {
                reqs.insert(id, (sequencer.clone(), tx));
            }
            peer.send(
                node,
                &Message::WriteRequest {
                    id,
                    table: table.name.to_string(),
                    op: op.clone(),
                },
            );
        }
        let answer = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => {
                node.check_open()?;
                Err(WriteRefusal::Failed(
                    ErrorKind::Unavailable,
                    "the sequencer stopped before answering".into(),
                ))
            }
            Err(_) => {
                return Err(Error::timeout(format!(
                    "no answer from the sequencer {} within {} ms",
                    sequencer.name,
                    timeout.as_millis()
                )))
            }
        };
        match answer {
            Ok(outcome) => return Ok(outcome),
            Err(WriteRefusal::NotSequencer) => {
                if tokio::time::Instant::now() >= deadline {
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

/// A peer's write for a table this node sequences.
pub(crate) fn on_write_request(
    node: &Arc<NodeInner>,
    peer: &Arc<PeerConn>,
    id: u64,
    table: String,
    op: WriteOp,
) {
    let reply = ReplyTo::Remote {
        peer: peer.clone(),
        id,
    };
    let shared = match node.ensure_table(&table) {
        Ok(t) => t,
        Err(e) => {
            reply.send(
                node,
                Err(WriteRefusal::Failed(e.kind(), e.message().to_string())),
            );
            return;
        }
    };
    let job = WriteJob { op, reply };
    if let Err(mpsc::error::TrySendError::Full(job)) = shared.jobs.try_send(job) {
        // The sequencer is saturated: wait for room without stalling this connection.
        tokio::spawn(async move {
            let _ = shared.jobs.send(job).await;
        });
    }
}

/// A sequencer's answer to one of this node's requests.
pub(crate) fn on_write_reply(node: &NodeInner, id: u64, result: Reply) {
    let waiter = node
        .replication
        .requests
        .lock()
        .ok()
        .and_then(|mut r| r.remove(&id));
    if let Some((_, tx)) = waiter {
        let _ = tx.send(result);
    }
}

/// A batch from a sequencer: applied in order and acknowledged when it comes
/// from the sequencer this node follows, refused otherwise.
pub(crate) fn on_apply(
    node: &Arc<NodeInner>,
    peer: &Arc<PeerConn>,
    id: u64,
    table: &str,
    entries: Vec<WireEntry>,
) {
    let mut agreement = node.agreement.lock();
    if !agreement.may_apply_from(&peer.actor) {
        drop(agreement);
        tracing::debug!(node = %node.actor, peer = %peer.actor, "refusing a batch from a sequencer this node does not follow");
        peer.send(node, &Message::ApplyRefused { id });
        return;
    }
    let cutoff = node.tombstone_cutoff_ms();
    let applied = node.ensure_table(table).and_then(|shared| {
        let mut store = shared.write()?;
        let conflicts: Vec<ConflictRecord> = entries
            .into_iter()
            .filter_map(|e| apply_replicated(&mut store, e, &peer.actor.name, cutoff))
            .collect();
        Ok((shared.clone(), conflicts))
    });
    match applied {
        Ok((shared, conflicts)) => {
            agreement.applied_from(&peer.actor);
            drop(agreement);
            for record in conflicts {
                crate::merge::report_unsettled(node, &shared, record);
            }
            peer.send(node, &Message::ApplyAck { id });
        }
        Err(e) => {
            drop(agreement);
            tracing::warn!(node = %node.actor, peer = %peer.actor, "refusing a batch: {e}");
            peer.send(node, &Message::ApplyRefused { id });
        }
    }
}

/// Stores a version from the sequencer. It normally descends the local one; when
/// it does not (a merge brought a version the sequencer has not seen yet), the
/// merge rule decides, and a conflict it settles by the fallback is returned
/// to be logged and reported.
fn apply_replicated(
    store: &mut TableStore,
    e: WireEntry,
    sender: &str,
    cutoff_ms: u64,
) -> Option<ConflictRecord> {
    match store.clock(&e.key) {
        Some(local) if !e.clock.descends(&local) => {
            let local = store.entry(&e.key)?;
            if local.is_expired_tombstone(cutoff_ms) {
                // Past its retention the tombstone counts as absent here, as it
                // already is where it was purged (the sequencer, for one).
                store.insert(&e.key, e.value.as_deref(), &e.clock);
                return None;
            }
            let incoming = Entry {
                value: e.value.map(Vec::into_boxed_slice),
                clock: e.clock,
            };
            let merged = merge_versions(&local, &incoming);
            store.insert(&e.key, merged.entry.value.as_deref(), &merged.entry.clock);
            merged.conflict.then(|| {
                let kept = merged.entry.value.as_deref().map(<[u8]>::to_vec);
                let local = local.value.as_deref().map(<[u8]>::to_vec);
                let lost = if kept == local {
                    incoming.value.as_deref().map(<[u8]>::to_vec)
                } else {
                    local
                };
                ConflictRecord {
                    key: e.key,
                    kept,
                    lost,
                    peer: sender.to_string(),
                    at_ms: wall_clock_ms(),
                }
            })
        }
        _ => {
            store.insert(&e.key, e.value.as_deref(), &e.clock);
            None
        }
    }
}

/// A member applied a batch.
pub(crate) fn on_apply_ack(node: &NodeInner, peer: &ActorId, id: u64) {
    deliver(node, node.replication.acknowledge(peer, Some(id)));
}

/// A member refused a batch: it follows another sequencer now.
pub(crate) fn on_apply_refused(node: &NodeInner, peer: &ActorId, id: u64) {
    let refused = node
        .replication
        .acks
        .lock()
        .ok()
        .and_then(|mut acks| acks.remove(&id));
    fail_batches(
        node,
        refused.into_iter().collect(),
        &format!(
            "{} follows another sequencer and refused the write",
            peer.name
        ),
    );
}

/// The sequencer task of one table: takes writes in batches and orders each
/// batch while this node is the active sequencer (see [`crate::agreement`]).
pub(crate) async fn run_sequencer(
    node: Weak<NodeInner>,
    table: Arc<TableShared>,
    mut jobs: mpsc::Receiver<WriteJob>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if jobs.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return;
        }
        let Some(node) = node.upgrade() else { return };
        sequence_batch(&node, &table, &mut batch);
    }
}

/// Applies a batch of writes in order, replicates it and arranges its answers;
/// refuses it when this node is not the active sequencer. Runs under the
/// agreement lock, so the batch is executed and queued to the members as a
/// whole before this node can turn to another sequencer.
fn sequence_batch(node: &Arc<NodeInner>, table: &Arc<TableShared>, batch: &mut Vec<WriteJob>) {
    let mut agreement = node.agreement.lock();
    if !agreement.is_active(tokio::time::Instant::now()) {
        drop(agreement);
        for job in batch.drain(..) {
            job.reply.send(node, Err(WriteRefusal::NotSequencer));
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
    let now = wall_clock_ms();
    let mut changes = Vec::new();
    let mut replies = Vec::with_capacity(batch.len());
    match table.write() {
        Ok(mut store) => {
            for job in batch.drain(..) {
                let outcome = execute(node, &mut store, job.op, now, &mut changes);
                replies.push((job.reply, outcome));
            }
        }
        Err(e) => {
            drop(agreement);
            for job in batch.drain(..) {
                job.reply.send(
                    node,
                    Err(WriteRefusal::Failed(e.kind(), e.message().to_string())),
                );
            }
            return;
        }
    }
    if changes.is_empty() || peers.is_empty() {
        if !changes.is_empty() {
            agreement.applied_from(&node.actor);
        }
        drop(agreement);
        for (reply, outcome) in replies {
            reply.send(node, outcome);
        }
        return;
    }
    agreement.applied_from(&node.actor);
    replicate(node, table, &peers, changes, replies);
}

/// Sends a batch to `peers`; its answers go out when all of them acknowledged
/// it or left the view (the ack watchdog drops members silent for too long).
fn replicate(
    node: &Arc<NodeInner>,
    table: &TableShared,
    peers: &[Arc<PeerConn>],
    entries: Vec<WireEntry>,
    replies: Vec<(ReplyTo, Reply)>,
) {
    let id = node.replication.next_id();
    if let Ok(mut acks) = node.replication.acks.lock() {
        acks.insert(
            id,
            PendingAck {
                waiting: peers.iter().map(|p| p.actor.clone()).collect(),
                replies,
                deadline: tokio::time::Instant::now() + node.config.failure_timeout,
            },
        );
    }
    let msg = Message::Apply {
        id,
        table: table.name.to_string(),
        entries: crate::wire::Entries(entries),
    };
    match crate::wire::encode_frame(&msg) {
        Ok(frame) => {
            let frame: Arc<[u8]> = frame.into();
            for p in peers {
                p.send_frame(node, frame.clone());
            }
        }
        Err(e) => tracing::error!("cannot encode a batch: {e}"),
    }
}

/// Applies one write at the sequencer; new versions go to `changes`.
fn execute(
    node: &NodeInner,
    store: &mut TableStore,
    op: WriteOp,
    now: u64,
    changes: &mut Vec<WireEntry>,
) -> Reply {
    let limits = (node.config.max_key_size, node.config.max_value_size);
    let mut write_over =
        |store: &mut TableStore, key: Vec<u8>, value: Option<Vec<u8>>, base: Option<&VClock>| {
            let mut clock = store.clock(&key).unwrap_or_else(VClock::fresh);
            if let Some(base) = base {
                clock.merge_from(base);
            }
            clock.increment(&node.actor, now);
            clock.prune(now, &PruneLimits::default());
            let old = store.insert(&key, value.as_deref(), &clock);
            changes.push(WireEntry { key, value, clock });
            old
        };
    let mut write = |store: &mut TableStore, key: Vec<u8>, value: Option<Vec<u8>>| {
        write_over(store, key, value, None)
    };
    let check = |key: &[u8], value: Option<&[u8]>| -> std::result::Result<(), WriteRefusal> {
        if key.len() > limits.0 || value.is_some_and(|v| v.len() > limits.1) {
            return Err(WriteRefusal::Failed(
                ErrorKind::InvalidArgument,
                "key or value larger than the sequencer's limit".into(),
            ));
        }
        Ok(())
    };
    match op {
        WriteOp::Put(entries) => {
            for (k, v) in &entries {
                check(k, Some(v))?;
            }
            let mut previous = Vec::new();
            for (k, v) in entries {
                if let Some(old) = write(store, k.clone(), Some(v)) {
                    previous.push((k, old.into_vec()));
                }
            }
            Ok(WriteOutcome::Previous(previous))
        }
        WriteOp::Delete(keys) => {
            for k in &keys {
                check(k, None)?;
            }
            let mut previous = Vec::new();
            for k in keys {
                if store.value(&k).is_some() {
                    if let Some(old) = write(store, k.clone(), None) {
                        previous.push((k, old.into_vec()));
                    }
                }
            }
            Ok(WriteOutcome::Previous(previous))
        }
        WriteOp::CompareAndSet { key, expected, new } => {
            check(&key, new.as_deref())?;
            let (value, clock) = match store.entry(&key) {
                Some(e) => (
                    e.value.as_deref().map(<[u8]>::to_vec),
                    Some(e.clock.clone()),
                ),
                None => (None, None),
            };
            let same = match (&clock, &expected) {
                (None, None) => true,
                (Some(a), Some(b)) => a.equal(b),
                _ => false,
            };
            if !same {
                return Ok(WriteOutcome::Mismatch { value, clock });
            }
            if value != new {
                write(store, key, new);
            }
            Ok(WriteOutcome::Swapped)
        }
        WriteOp::CompareAndSetTable {
            expected_digest,
            changes: updates,
        } => {
            for (k, v) in &updates {
                check(k, v.as_deref())?;
            }
            if store.digest_total() != expected_digest {
                return Ok(WriteOutcome::TableMismatch);
            }
            for (k, v) in updates {
                if store.value(&k) != v.as_deref() {
                    write(store, k, v);
                }
            }
            Ok(WriteOutcome::Swapped)
        }
        WriteOp::Read(key) => Ok(WriteOutcome::Value(store.value(&key).map(<[u8]>::to_vec))),
        WriteOp::Resolve { key, merged, new } => {
            check(&key, new.as_deref())?;
            // Only a version the merge saw may be replaced: a write made
            // after it (one `merged` does not descend) wins, and the handler
            // node meets it again as a conflict if its own copy differs.
            if let Some(current) = store.clock(&key) {
                if !merged.descends(&current) {
                    return Ok(WriteOutcome::Superseded);
                }
            }
            write_over(store, key, new, Some(&merged));
            Ok(WriteOutcome::Swapped)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Node};

    fn pending(waiting: ActorId) -> (PendingAck, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        let batch = PendingAck {
            waiting: vec![waiting],
            replies: vec![(ReplyTo::Local(tx), Ok(WriteOutcome::Swapped))],
            deadline: tokio::time::Instant::now() + std::time::Duration::from_secs(60),
        };
        (batch, rx)
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
            let inner = node.inner();
            let peer = ActorId::new("peer", 1);
            let (batch, mut replaced) = pending(peer.clone());
            inner.replication.acks.lock().unwrap().insert(1, batch);
            let (batch, mut gone) = pending(ActorId::new("other", 2));
            inner.replication.acks.lock().unwrap().insert(2, batch);

            inner.replication.connection_replaced(inner, &peer);
            match replaced.try_recv() {
                Ok(Err(WriteRefusal::Failed(ErrorKind::Unavailable, _))) => {}
                other => panic!("a batch lost with its connection answered {other:?}"),
            }
            assert!(gone.try_recv().is_err(), "other batches keep waiting");

            // A member that leaves the view no longer holds a batch up.
            inner
                .replication
                .peer_down(inner, &ActorId::new("other", 2));
            assert_eq!(gone.try_recv().unwrap(), Ok(WriteOutcome::Swapped));
            node.close().await.unwrap();
        });
    }
}
