//! The merge engine: when two nodes connect that were apart (a join, a healed
//! split, tables created independently), every table is compared by digest and
//! only differing buckets are exchanged; then each key is merged by its vector
//! clocks, and concurrent versions go to the table's conflict handler.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::events::{Event, ResolutionKind};
use crate::membership::PeerConn;
use crate::node::{wall_clock_ms, NodeInner};
use crate::resolve::{merge_versions, Conflict, Resolution};
use crate::store::{Entry, HashedEntry};
use crate::table::{ConflictRecord, TableShared};
use crate::vclock::VClock;
use crate::wire::{self, Message, WireEntry, WriteOp, WriteOutcome};

/// Bytes of entries per merge frame.
const CHUNK_BYTES: usize = 1 << 20;

/// Merge sessions in flight.
#[derive(Default)]
pub(crate) struct Merges {
    next_session: AtomicU64,
    /// This node's sessions: session id -> (connection id, inbox).
    initiated: Mutex<HashMap<u64, (u64, mpsc::UnboundedSender<Message>)>>,
    /// The peers' sessions, by (connection id, session id).
    responding: Mutex<HashMap<(u64, u64), Responding>>,
    /// Connections with a merge round running.
    busy_with: Mutex<std::collections::HashSet<u64>>,
}

struct Responding {
    table: Arc<TableShared>,
    bits: u8,
    /// This side's entries of the differing buckets, taken at the first
    /// summary chunk, before anything of the peer's was merged.
    mine: Vec<HashedEntry>,
    /// The initiator's (key hash, entry hash) pairs so far.
    summary: Vec<(u64, u64)>,
    tally: Tally,
}

/// What one merge of one table changed, reported in the `merged` event.
#[derive(Default)]
struct Tally {
    changed: usize,
    conflicts: usize,
}

impl Merges {
    /// Takes the state of a session this node answers, while it handles a message of it.
    fn take_responding(&self, key: (u64, u64)) -> Option<Responding> {
        self.responding.lock().ok().and_then(|mut r| r.remove(&key))
    }

    /// Puts a session's state back for its next message.
    fn put_responding(&self, key: (u64, u64), state: Responding) {
        if let Ok(mut r) = self.responding.lock() {
            r.insert(key, state);
        }
    }

    /// A connection closed: its sessions end at once.
    pub fn connection_closed(&self, conn_id: u64) {
        if let Ok(mut m) = self.initiated.lock() {
            m.retain(|_, (c, _)| *c != conn_id);
        }
        if let Ok(mut m) = self.responding.lock() {
            m.retain(|(c, _), _| *c != conn_id);
        }
    }
}

fn send_merge(node: &NodeInner, peer: &PeerConn, msg: &Message) {
    match wire::encode_frame(msg) {
        Ok(frame) => {
            node.stats
                .merge_bytes_sent
                .fetch_add(frame.len() as u64, Ordering::Relaxed);
            peer.send_frame(node, frame.into());
        }
        Err(e) => tracing::error!("cannot encode a merge message: {e}"),
    }
}

fn to_wire(h: HashedEntry) -> WireEntry {
    WireEntry {
        key: h.key.into_vec(),
        value: h.entry.value.map(<[u8]>::into_vec),
        clock: h.entry.clock,
    }
}

/// Sends `entries` as `SyncEntries` chunks of about [`CHUNK_BYTES`], the last
/// one marked (an empty one when there is nothing to send).
fn send_entries(
    node: &NodeInner,
    peer: &PeerConn,
    session: u64,
    entries: impl Iterator<Item = WireEntry>,
) {
    let mut chunk = Vec::new();
    let mut size = 0;
    for w in entries {
        size += wire::encoded_len(&w);
        chunk.push(w);
        if size >= CHUNK_BYTES {
            let msg = Message::SyncEntries {
                session,
                entries: wire::Entries(std::mem::take(&mut chunk)),
                last: false,
            };
            send_merge(node, peer, &msg);
            size = 0;
        }
    }
    let msg = Message::SyncEntries {
        session,
        entries: wire::Entries(chunk),
        last: true,
    };
    send_merge(node, peer, &msg);
}

/// Sends this side's part of the differing `buckets` as `SyncSummary` chunks:
/// summaries, or whole entries where the peer's bucket digest is 0 (empty).
/// Returns the summarized entries, which the peer may ask for next.
fn send_summary(
    node: &NodeInner,
    peer: &PeerConn,
    session: u64,
    bits: u8,
    buckets: Vec<u32>,
    peer_empty: &std::collections::HashSet<u32>,
    mine: Vec<HashedEntry>,
) -> Vec<HashedEntry> {
    let mut buckets = buckets;
    let mut kept = Vec::new();
    let mut summary = Vec::new();
    let mut entries = Vec::new();
    let mut size = 0;
    for h in mine {
        if peer_empty.contains(&(crate::store::bucket_of(h.key_hash, bits) as u32)) {
            let w = to_wire(h);
            size += wire::encoded_len(&w);
            entries.push(w);
        } else {
            summary.push((h.key_hash, h.entry_hash));
            kept.push(h);
            size += 16;
        }
        if size >= CHUNK_BYTES {
            let msg = Message::SyncSummary {
                session,
                buckets: std::mem::take(&mut buckets),
                summary: std::mem::take(&mut summary),
                entries: wire::Entries(std::mem::take(&mut entries)),
                last: false,
            };
            send_merge(node, peer, &msg);
            size = 0;
        }
    }
    let msg = Message::SyncSummary {
        session,
        buckets,
        summary,
        entries: wire::Entries(entries),
        last: true,
    };
    send_merge(node, peer, &msg);
    kept
}

/// Merges every table with `peer` (this node is the smaller actor, so it leads
/// the merges on this connection), then tells the peer. When a round is already
/// running, that one runs another afterwards if a round was asked for meanwhile.
pub(crate) async fn sync_all(node: Arc<NodeInner>, peer: Arc<PeerConn>) {
    loop {
        let first = match node.merges.busy_with.lock() {
            Ok(mut busy) => busy.insert(peer.conn_id),
            Err(_) => return,
        };
        if !first {
            return;
        }
        let asked = loop {
            let asked = (
                peer.rounds_asked.load(Ordering::Acquire),
                peer.rounds_asked_by_peer.load(Ordering::Acquire),
            );
            sync_every_table(&node, &peer).await;
            peer.rounds_done.send_if_modified(|done| {
                let grew = asked.0 > *done;
                *done = (*done).max(asked.0);
                grew
            });
            send_merge(&node, &peer, &Message::SyncAllDone { served: asked.1 });
            peer.mark_synced();
            if !round_asked_since(&peer, asked) {
                break asked;
            }
        };
        if let Ok(mut busy) = node.merges.busy_with.lock() {
            busy.remove(&peer.conn_id);
        }
        // A round asked for between the last check and the release above
        // found the connection busy and left it to this loop.
        if !round_asked_since(&peer, asked) {
            return;
        }
    }
}

fn round_asked_since(peer: &PeerConn, asked: (u64, u64)) -> bool {
    peer.rounds_asked.load(Ordering::Acquire) > asked.0
        || peer.rounds_asked_by_peer.load(Ordering::Acquire) > asked.1
}

async fn sync_every_table(node: &Arc<NodeInner>, peer: &Arc<PeerConn>) {
    let names: Vec<String> = node.table_infos().into_iter().map(|t| t.name).collect();
    for name in names {
        let Some(table) = node.table(&name) else {
            continue;
        };
        if let Err(e) = sync_table(node, peer, &table).await {
            tracing::warn!(node = %node.actor, peer = %peer.actor, table = %name, "merge failed: {e}");
        }
    }
}

/// A merge of every table with `peer` that begins now (or after the one
/// running): returns whether it finished within `limit`.
pub(crate) async fn merge_round(
    node: &Arc<NodeInner>,
    peer: &Arc<PeerConn>,
    limit: Duration,
) -> bool {
    let id = peer.rounds_asked.fetch_add(1, Ordering::AcqRel) + 1;
    if node.actor < peer.actor {
        tokio::spawn(sync_all(node.clone(), peer.clone()));
    } else {
        peer.send_control(&Message::SyncRequest);
    }
    let mut done = peer.rounds_done.subscribe();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if *done.borrow_and_update() >= id {
            return true;
        }
        if peer.is_closed() || tokio::time::Instant::now() >= deadline {
            return false;
        }
        // Woken by a finished round, or now and then to notice a closed connection.
        let _ = tokio::time::timeout(crate::node::SETTLE_PAUSE * 10, done.changed()).await;
    }
}

/// The peer finished a round of merges it leads on this connection.
pub(crate) fn on_round_done(peer: &PeerConn, served: u64) {
    peer.rounds_done.send_if_modified(|done| {
        let grew = served > *done;
        *done = (*done).max(served);
        grew
    });
    peer.mark_synced();
}

/// The peer asks for a round of merges, which this node leads.
pub(crate) fn on_round_asked(node: &Arc<NodeInner>, peer: &Arc<PeerConn>) {
    if node.actor < peer.actor {
        peer.rounds_asked_by_peer.fetch_add(1, Ordering::AcqRel);
        tokio::spawn(sync_all(node.clone(), peer.clone()));
    }
}

async fn sync_table(
    node: &Arc<NodeInner>,
    peer: &Arc<PeerConn>,
    table: &Arc<TableShared>,
) -> Result<()> {
    let session = node.merges.next_session.fetch_add(1, Ordering::Relaxed) + 1;
    let (tx, mut rx) = mpsc::unbounded_channel();
    if let Ok(mut m) = node.merges.initiated.lock() {
        m.insert(session, (peer.conn_id, tx));
    }
    let result = run_initiator(node, peer, table, session, &mut rx).await;
    if let Ok(mut m) = node.merges.initiated.lock() {
        m.remove(&session);
    }
    if result.is_err() {
        // The peer may hold this session's state (a snapshot of its buckets): let it go.
        send_merge(node, peer, &Message::SyncDone { session });
    }
    result
}

async fn run_initiator(
    node: &Arc<NodeInner>,
    peer: &Arc<PeerConn>,
    table: &Arc<TableShared>,
    session: u64,
    rx: &mut mpsc::UnboundedReceiver<Message>,
) -> Result<()> {
    let step = node.config.request_timeout;
    let (bits, total) = {
        let s = table.read()?;
        (s.digest_bits(), s.digest_total())
    };
    send_merge(
        node,
        peer,
        &Message::SyncDigest {
            session,
            table: table.name.to_string(),
            bits,
            total,
        },
    );
    let (mut level, final_bits, mut theirs) = match recv_step(rx, step).await? {
        Message::SyncDone { .. } => return Ok(()),
        Message::SyncLeaves {
            bits,
            final_bits,
            leaves,
            ..
        } => (bits, final_bits, leaves),
        other => {
            return Err(Error::protocol(format!(
                "unexpected merge message {other:?}"
            )))
        }
    };
    if final_bits > bits_of(table)? || level > final_bits {
        return Err(Error::protocol(
            "the peer sent digests of an impossible level",
        ));
    }
    // Descend the digest tree through the buckets that differ only, so the
    // bytes exchanged follow the differences rather than the table size.
    let mut candidates: Vec<u32> = (0..theirs.len() as u32).collect();
    let (differing, their_digests) = loop {
        let ours = table.read()?.digest_buckets(level, &candidates);
        if ours.len() != theirs.len() {
            return Err(Error::protocol("the peer sent a wrong number of digests"));
        }
        let (differing, their_digests): (Vec<u32>, Vec<u64>) = candidates
            .iter()
            .zip(ours.iter().zip(&theirs))
            .filter(|(_, (a, b))| a != b)
            .map(|(c, (_, b))| (*c, *b))
            .unzip();
        if level >= final_bits || differing.is_empty() {
            break (differing, their_digests);
        }
        let next = (level + DESCENT_STEP).min(final_bits);
        send_merge(
            node,
            peer,
            &Message::SyncDescend {
                session,
                parent_bits: level,
                bits: next,
                buckets: differing.clone(),
            },
        );
        theirs = match recv_step(rx, step).await? {
            Message::SyncLeaves { bits, leaves, .. } if bits == next => leaves,
            other => {
                return Err(Error::protocol(format!(
                    "unexpected merge message {other:?}"
                )))
            }
        };
        candidates = children(&differing, level, next);
        level = next;
    };
    let (buckets, their_digests) = if level == final_bits {
        (differing, their_digests)
    } else {
        // Equal at a coarser level: nothing differs.
        (Vec::new(), Vec::new())
    };
    // Where the peer's bucket is empty, whole entries go at once; elsewhere
    // summaries first, then only the entries that differ, both ways.
    let peer_empty: std::collections::HashSet<u32> = buckets
        .iter()
        .zip(&their_digests)
        .filter(|(_, d)| **d == 0)
        .map(|(b, _)| *b)
        .collect();
    let mine = table
        .read()?
        .hashed_entries_in_buckets(final_bits, &buckets, |b| !peer_empty.contains(&b));
    let mine = send_summary(node, peer, session, final_bits, buckets, &peer_empty, mine);
    let want: std::collections::HashSet<u64> = match recv_step(rx, step).await? {
        Message::SyncWant { want, .. } => want.into_iter().collect(),
        other => {
            return Err(Error::protocol(format!(
                "unexpected merge message {other:?}"
            )))
        }
    };
    // Sent before anything of the peer's is merged: this side's versions as
    // they were when the merge compared them.
    let wanted = mine
        .into_iter()
        .filter(|h| want.contains(&h.key_hash))
        .map(to_wire);
    send_entries(node, peer, session, wanted);
    let mut tally = Tally::default();
    loop {
        match recv_step(rx, step).await? {
            Message::SyncEntries { entries, last, .. } => {
                merge_remote(node, peer, table, entries.0, &mut tally);
                if last {
                    break;
                }
            }
            other => {
                return Err(Error::protocol(format!(
                    "unexpected merge message {other:?}"
                )))
            }
        }
    }
    report_merge(node, peer, table, &tally);
    Ok(())
}

/// Bits added per round of the digest descent: 16 children per differing bucket.
const DESCENT_STEP: u8 = 4;
/// The level of the first round of digests: 256 buckets (2 KiB).
const FIRST_LEVEL: u8 = 8;

fn bits_of(table: &TableShared) -> Result<u8> {
    Ok(table.read()?.digest_bits())
}

/// The buckets at level `to` under `parents` (at level `from`), in order.
fn children(parents: &[u32], from: u8, to: u8) -> Vec<u32> {
    let shift = u32::from(to - from);
    parents
        .iter()
        .flat_map(|p| (p << shift)..((p + 1) << shift))
        .collect()
}

async fn recv_step(rx: &mut mpsc::UnboundedReceiver<Message>, step: Duration) -> Result<Message> {
    match tokio::time::timeout(step, rx.recv()).await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(Error::unavailable("the peer left during the merge")),
        Err(_) => Err(Error::timeout("the peer did not answer during the merge")),
    }
}

/// A merge message from `peer`: answers as responder, or feeds this node's own session.
pub(crate) fn on_sync_message(node: &Arc<NodeInner>, peer: &Arc<PeerConn>, msg: Message) {
    let leading = node.actor < peer.actor;
    match msg {
        Message::SyncDigest {
            session,
            table,
            bits,
            total,
        } => {
            let shared = match node.ensure_table(&table) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(peer = %peer.actor, "refusing a merge: {e}");
                    send_merge(node, peer, &Message::SyncDone { session });
                    return;
                }
            };
            let answer = match shared.read() {
                Ok(s) if s.digest_total() == total => None,
                Ok(s) => {
                    let level = bits.min(s.digest_bits());
                    let first = level.min(FIRST_LEVEL);
                    Some((level, first, s.digest_leaves(first)))
                }
                Err(_) => None,
            };
            match answer {
                None => send_merge(node, peer, &Message::SyncDone { session }),
                Some((level, first, leaves)) => {
                    node.merges.put_responding(
                        (peer.conn_id, session),
                        Responding {
                            table: shared,
                            bits: level,
                            mine: Vec::new(),
                            summary: Vec::new(),
                            tally: Tally::default(),
                        },
                    );
                    send_merge(
                        node,
                        peer,
                        &Message::SyncLeaves {
                            session,
                            bits: first,
                            final_bits: level,
                            leaves,
                        },
                    );
                }
            }
        }
        Message::SyncDescend {
            session,
            parent_bits,
            bits,
            buckets,
        } if !leading => {
            let state = node.merges.responding.lock().ok().and_then(|r| {
                r.get(&(peer.conn_id, session))
                    .map(|s| (s.table.clone(), s.bits))
            });
            let Some((table, final_bits)) = state else {
                return;
            };
            let in_range = buckets.len() <= 1usize << parent_bits
                && buckets.iter().all(|&b| u64::from(b) < 1u64 << parent_bits);
            if bits > final_bits || parent_bits >= bits || bits - parent_bits > 8 || !in_range {
                node.members.drop_peer(
                    node,
                    &peer.actor,
                    Some(peer.conn_id),
                    "asked for digests of an impossible level",
                );
                return;
            }
            let leaves = match table.read() {
                Ok(s) => s.digest_buckets(bits, &children(&buckets, parent_bits, bits)),
                Err(_) => return,
            };
            send_merge(
                node,
                peer,
                &Message::SyncLeaves {
                    session,
                    bits,
                    final_bits,
                    leaves,
                },
            );
        }
        Message::SyncSummary {
            session,
            buckets,
            summary,
            entries,
            last,
        } if !leading => {
            let key = (peer.conn_id, session);
            let Some(mut state) = node.merges.take_responding(key) else {
                return;
            };
            let table = state.table.clone();
            if !buckets.is_empty() {
                // The snapshot this side compares and sends: taken before the
                // peer's whole entries (for buckets empty here) are merged.
                state.mine = match table.read() {
                    Ok(s) => s.hashed_entries_in_buckets(state.bits, &buckets, |_| true),
                    Err(_) => return,
                };
            }
            state.summary.extend(summary);
            merge_remote(node, peer, &table, entries.0, &mut state.tally);
            if last {
                let theirs: std::collections::HashSet<(u64, u64)> =
                    state.summary.drain(..).collect();
                let ours: std::collections::HashSet<(u64, u64)> = state
                    .mine
                    .iter()
                    .map(|h| (h.key_hash, h.entry_hash))
                    .collect();
                let mut want: Vec<u64> = theirs
                    .iter()
                    .filter(|pair| !ours.contains(pair))
                    .map(|(kh, _)| *kh)
                    .collect();
                want.sort_unstable();
                want.dedup();
                send_merge(node, peer, &Message::SyncWant { session, want });
                let differing = std::mem::take(&mut state.mine)
                    .into_iter()
                    .filter(|h| !theirs.contains(&(h.key_hash, h.entry_hash)))
                    .map(to_wire);
                send_entries(node, peer, session, differing);
            }
            node.merges.put_responding(key, state);
        }
        Message::SyncDone { session } if !leading => {
            // The initiator gave the session up.
            node.merges.take_responding((peer.conn_id, session));
        }
        Message::SyncEntries {
            session,
            entries,
            last,
        } if !leading => {
            let key = (peer.conn_id, session);
            let Some(mut state) = node.merges.take_responding(key) else {
                return;
            };
            let table = state.table.clone();
            merge_remote(node, peer, &table, entries.0, &mut state.tally);
            if last {
                report_merge(node, peer, &table, &state.tally);
            } else {
                node.merges.put_responding(key, state);
            }
        }
        other => {
            let session = match &other {
                Message::SyncLeaves { session, .. }
                | Message::SyncWant { session, .. }
                | Message::SyncEntries { session, .. }
                | Message::SyncDone { session } => *session,
                _ => return,
            };
            let tx = node
                .merges
                .initiated
                .lock()
                .ok()
                .and_then(|m| m.get(&session).map(|(_, tx)| tx.clone()));
            if let Some(tx) = tx {
                let _ = tx.send(other);
            }
        }
    }
}

struct Found {
    key: Vec<u8>,
    local: Option<Vec<u8>>,
    remote: Option<Vec<u8>>,
    kept: Option<Vec<u8>>,
    merged_clock: VClock,
}

/// Merges a chunk of the peer's versions into the local table, then settles
/// the conflicts found in it.
///
/// When a member of the view has a conflict handler for the table, only that
/// member (the smallest such actor id) settles a conflict: it stores the
/// fallback with the merged clock and runs the handler, whose decision is then
/// written everywhere. Every other node keeps its own version until that write
/// arrives, so that the handler node still sees the conflict whichever pair of
/// nodes merged first.
fn merge_remote(
    node: &Arc<NodeInner>,
    peer: &PeerConn,
    table: &Arc<TableShared>,
    remote: Vec<WireEntry>,
    tally: &mut Tally,
) {
    let handler_node = node.members.handler_node(node, &table.name);
    let settles_here = handler_node.as_ref().is_none_or(|h| *h == node.actor);
    let mut found = Vec::new();
    let cutoff = node.tombstone_cutoff_ms();
    if let Ok(mut store) = table.write() {
        store.reserve(remote.len());
        for w in remote {
            let incoming = Entry {
                value: w.value.map(Vec::into_boxed_slice),
                clock: w.clock,
            };
            let local = store
                .entry(&w.key)
                .filter(|l| !l.is_expired_tombstone(cutoff));
            let merged = match local {
                // A tombstone past its retention is not brought back where it
                // was purged (nor where it never was).
                None if incoming.is_expired_tombstone(cutoff) => continue,
                None => incoming,
                Some(local) => {
                    let m = merge_versions(&local, &incoming);
                    if m.conflict {
                        tally.conflicts += 1;
                        if !settles_here {
                            continue;
                        }
                        found.push(Found {
                            key: w.key.clone(),
                            local: local.value.as_deref().map(<[u8]>::to_vec),
                            remote: incoming.value.as_deref().map(<[u8]>::to_vec),
                            kept: m.entry.value.as_deref().map(<[u8]>::to_vec),
                            merged_clock: m.entry.clock.clone(),
                        });
                    }
                    if local == m.entry {
                        continue;
                    }
                    m.entry
                }
            };
            tally.changed += 1;
            store.insert(&w.key, merged.value.as_deref(), &merged.clock);
        }
    }
    for f in found {
        if handler_node.is_some() {
            tokio::spawn(resolve_with_handler(
                node.clone(),
                table.clone(),
                f,
                peer.actor.name.to_string(),
            ));
        } else {
            settle_by_fallback(node, table, f, &peer.actor.name, ResolutionKind::Fallback);
        }
    }
}

fn report_merge(node: &NodeInner, peer: &PeerConn, table: &TableShared, tally: &Tally) {
    node.emit(Event::Merged {
        table: table.name.to_string(),
        peer: peer.actor.name.to_string(),
        keys_changed: tally.changed,
        conflicts: tally.conflicts,
    });
}

/// A conflict settled by the fallback outside a merge (a replica received a
/// version that did not descend its own): logged and reported like any other.
pub(crate) fn report_unsettled(node: &NodeInner, table: &TableShared, record: ConflictRecord) {
    tracing::warn!(node = %node.actor, table = %table.name, peer = %record.peer, "a replicated version was concurrent with the local one; settled by the fallback");
    node.emit(Event::Conflict {
        table: table.name.to_string(),
        key: String::from_utf8_lossy(&record.key).into_owned(),
        resolution: ResolutionKind::Fallback,
    });
    table.log_conflict(record, node.config.conflict_log_limit);
}

fn settle_by_fallback(
    node: &NodeInner,
    table: &TableShared,
    f: Found,
    peer: &str,
    how: ResolutionKind,
) {
    let lost = if f.kept == f.local { f.remote } else { f.local };
    node.emit(Event::Conflict {
        table: table.name.to_string(),
        key: String::from_utf8_lossy(&f.key).into_owned(),
        resolution: how,
    });
    table.log_conflict(
        ConflictRecord {
            key: f.key,
            kept: f.kept,
            lost,
            peer: peer.to_string(),
            at_ms: wall_clock_ms(),
        },
        node.config.conflict_log_limit,
    );
}

async fn resolve_with_handler(
    node: Arc<NodeInner>,
    table: Arc<TableShared>,
    f: Found,
    peer: String,
) {
    let decided = match table.handler() {
        None => Err("the handler was removed".to_string()),
        Some(handler) => {
            let conflict = Conflict {
                table: table.name.to_string(),
                key: f.key.clone(),
                local: f.local.clone(),
                remote: f.remote.clone(),
            };
            match tokio::time::timeout(node.config.handler_timeout, handler.resolve(conflict)).await
            {
                Ok(result) => result,
                Err(_) => Err("it timed out".to_string()),
            }
        }
    };
    let (new, how) = match decided {
        Ok(Resolution::Value(v)) => (Some(v), ResolutionKind::Handler),
        Ok(Resolution::Delete) => (None, ResolutionKind::Handler),
        Err(e) => {
            tracing::warn!(table = %table.name, "conflict handler failed: {e}");
            // The other nodes kept their versions: they learn the fallback
            // through the same write a decision would have made.
            (f.kept.clone(), ResolutionKind::HandlerFailed)
        }
    };
    let op = WriteOp::Resolve {
        key: f.key.clone(),
        merged: f.merged_clock.clone(),
        new,
    };
    match crate::replication::submit(&node, &table, op).await {
        Ok(WriteOutcome::Swapped) if how == ResolutionKind::Handler => {
            node.emit(Event::Conflict {
                table: table.name.to_string(),
                key: String::from_utf8_lossy(&f.key).into_owned(),
                resolution: how,
            });
        }
        Ok(WriteOutcome::Swapped) => settle_by_fallback(&node, &table, f, &peer, how),
        Ok(_) => {
            tracing::info!(table = %table.name, "a newer write superseded a conflict resolution")
        }
        Err(e) => {
            // The fallback this node stored stays, and anti-entropy carries it
            // to the others (its merged clock descends their versions).
            tracing::warn!(table = %table.name, "cannot write a conflict resolution: {e}");
            settle_by_fallback(&node, &table, f, &peer, ResolutionKind::HandlerFailed);
        }
    }
}

/// Periodic work: anti-entropy rounds with every peer this node leads, and the
/// tombstone purge.
pub(crate) fn start_maintenance(node: &Arc<NodeInner>) {
    let weak = Arc::downgrade(node);
    let interval = node.config.anti_entropy_interval;
    node.spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let Some(node) = weak.upgrade() else { return };
            for peer in node.members.peers() {
                if node.actor < peer.actor {
                    tokio::spawn(sync_all(node.clone(), peer));
                }
            }
        }
    });
    let weak = Arc::downgrade(node);
    let retention = node.config.tombstone_retention;
    let every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
    node.spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(node) = weak.upgrade() else { return };
            let cutoff = node.tombstone_cutoff_ms();
            let tables: Vec<Arc<TableShared>> = match node.tables.read() {
                Ok(t) => t.values().cloned().collect(),
                Err(_) => return,
            };
            for t in tables {
                if let Ok(mut s) = t.write() {
                    let n = s.purge_tombstones(cutoff);
                    if n > 0 {
                        tracing::debug!(table = %t.name, purged = n, "tombstones purged");
                    }
                }
            }
        }
    });
}
