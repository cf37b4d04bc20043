//! The merge engine: when two nodes connect that were apart (a join, a healed
//! split, tables created independently), and in anti-entropy rounds, every
//! table is compared by digest and only differing buckets are exchanged; then
//! each key is merged by its vector clocks, and concurrent versions go to the
//! table's conflict handler.
//!
//! On each connection the smaller actor leads: it runs rounds (a merge of
//! every table, one session per table, `initiator`), the other answers
//! (`responder`); `settle` merges what arrives. A round runs on connect,
//! every anti-entropy interval, and when asked for (a new sequencer catching
//! up with a peer asks for one that begins after its request).

mod frames;
mod initiator;
mod responder;
mod settle;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::cluster::{Membership, PeerConn};
use crate::context::{Context, SETTLE_PAUSE};
use crate::locks::lock;
use crate::replica::Replica;
use crate::replication::Replication;
use crate::store::SnapshotEntry;
use crate::vclock::ActorId;
use crate::wire::Message;

/// A session this node answers.
struct Responding {
    table: Arc<Replica>,
    bits: u8,
    /// This side's entries of the differing buckets, taken at the first
    /// summary chunk, before anything of the peer's was merged.
    mine: Vec<SnapshotEntry>,
    /// The table's actors when `mine` was taken.
    actors: Vec<ActorId>,
    /// How many entries the initiator said it holds.
    peer_count: u64,
    /// The differing buckets, while their snapshot is not taken (see
    /// `on_summary`).
    unsnapshotted: Option<Vec<u32>>,
    /// The initiator's (key hash, entry hash) pairs so far.
    summary: Vec<(u64, u64)>,
    tally: Tally,
}

/// What one merge of one table changed, reported in the `merged` event, and
/// when it began (for the merge duration metric).
struct Tally {
    changed: usize,
    conflicts: usize,
    began: tokio::time::Instant,
}

impl Tally {
    /// A tally of a merge that began at `began`.
    fn since(began: tokio::time::Instant) -> Tally {
        Tally {
            changed: 0,
            conflicts: 0,
            began,
        }
    }
}

/// The merge engine of one node and its sessions in flight.
pub(crate) struct Merge {
    ctx: Arc<Context>,
    members: Arc<Membership>,
    replication: Arc<Replication>,
    next_session: AtomicU64,
    /// This node's sessions: session id -> (connection id, inbox).
    initiated: Mutex<HashMap<u64, (u64, mpsc::UnboundedSender<Message>)>>,
    /// The peers' sessions, by (connection id, session id).
    responding: Mutex<HashMap<(u64, u64), Responding>>,
    /// Connections with a round running.
    busy_with: Mutex<HashSet<u64>>,
    me: Weak<Merge>,
}

impl Merge {
    pub fn new(
        ctx: &Arc<Context>,
        members: &Arc<Membership>,
        replication: &Arc<Replication>,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Merge {
            ctx: ctx.clone(),
            members: members.clone(),
            replication: replication.clone(),
            next_session: AtomicU64::new(0),
            initiated: Mutex::new(HashMap::new()),
            responding: Mutex::new(HashMap::new()),
            busy_with: Mutex::new(HashSet::new()),
            me: me.clone(),
        })
    }

    /// Takes the state of a session this node answers, while it handles a message of it.
    fn take_responding(&self, key: (u64, u64)) -> Option<Responding> {
        lock(&self.responding).remove(&key)
    }

    /// Puts a session's state back for its next message.
    fn put_responding(&self, key: (u64, u64), state: Responding) {
        lock(&self.responding).insert(key, state);
    }

    /// A connection closed: its sessions end at once.
    pub fn connection_closed(&self, conn_id: u64) {
        lock(&self.initiated).retain(|_, (c, _)| *c != conn_id);
        lock(&self.responding).retain(|(c, _), _| *c != conn_id);
    }

    /// Starts a round with `peer` now, or after the one running (this node
    /// leads merges on that connection).
    pub fn start_round(&self, peer: &Arc<PeerConn>) {
        if let Some(me) = self.me.upgrade() {
            let peer = peer.clone();
            let round = async move { me.sync_all(peer).await };
            self.ctx.spawn(crate::offload::off_workers(round));
        }
    }

    /// Merges every table with `peer`, then tells the peer. When a round is
    /// already running, that one runs another afterwards if a round was asked
    /// for meanwhile.
    async fn sync_all(&self, peer: Arc<PeerConn>) {
        loop {
            if !lock(&self.busy_with).insert(peer.conn_id) {
                return;
            }
            let asked = loop {
                let asked = rounds_asked(&peer);
                // A round with a table that failed to merge does not count:
                // nobody may take it for a state that arrived.
                if self.sync_every_table(&peer).await {
                    peer.rounds_done.send_if_modified(|done| {
                        let grew = asked.0 > *done;
                        *done = (*done).max(asked.0);
                        grew
                    });
                    let done = Message::SyncAllDone { served: asked.1 };
                    frames::send_merge(&self.ctx, &peer, &done);
                    peer.mark_synced();
                }
                if rounds_asked(&peer) == asked {
                    break asked;
                }
            };
            lock(&self.busy_with).remove(&peer.conn_id);
            // A round asked for between the last check and the release above
            // found the connection busy and left it to this loop.
            if rounds_asked(&peer) == asked {
                return;
            }
        }
    }

    /// One round: a session per table; whether every one succeeded.
    async fn sync_every_table(&self, peer: &Arc<PeerConn>) -> bool {
        let mut all = true;
        for table in self.ctx.replicas() {
            if let Err(e) = self.sync_table(peer, &table).await {
                tracing::warn!(node = %self.ctx.actor, peer = %peer.actor, table = %table.name, "merge failed: {e}");
                all = false;
            }
        }
        all
    }

    /// A merge of every table with `peer` that begins now (or after the one
    /// running): returns whether it finished within `limit`.
    pub async fn merge_round(&self, peer: &Arc<PeerConn>, limit: Duration) -> bool {
        let id = peer.rounds_asked.fetch_add(1, Ordering::AcqRel) + 1;
        if self.ctx.actor < peer.actor {
            self.start_round(peer);
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
            let _ = tokio::time::timeout(SETTLE_PAUSE * 10, done.changed()).await;
        }
    }

    /// A message of the merge protocol from `peer`.
    pub fn on_message(&self, peer: &Arc<PeerConn>, msg: Message) {
        let leading = self.ctx.actor < peer.actor;
        match msg {
            Message::SyncAllDone { served } => on_round_done(peer, served),
            Message::SyncRequest if leading => {
                peer.rounds_asked_by_peer.fetch_add(1, Ordering::AcqRel);
                self.start_round(peer);
            }
            Message::SyncDigest {
                session,
                table,
                bits,
                total,
                count,
            } => self.on_digest(peer, session, &table, bits, total, count),
            Message::SyncDescend {
                session,
                parent_bits,
                bits,
                buckets,
            } if !leading => self.on_descend(peer, session, parent_bits, bits, buckets),
            Message::SyncSummary {
                session,
                buckets,
                summary,
                entries,
                last,
            } if !leading => self.on_summary(peer, session, buckets, summary, entries, last),
            Message::SyncDone { session } if !leading => {
                // The initiator gave the session up.
                self.take_responding((peer.conn_id, session));
            }
            Message::SyncEntries {
                session,
                entries,
                last,
            } if !leading => self.on_entries(peer, session, entries, last),
            other => self.to_initiator(other),
        }
    }

    /// Feeds a message to the session of this node's it belongs to.
    fn to_initiator(&self, msg: Message) {
        let session = match &msg {
            Message::SyncLeaves { session, .. }
            | Message::SyncWant { session, .. }
            | Message::SyncEntries { session, .. }
            | Message::SyncDone { session } => *session,
            _ => return,
        };
        let inbox = lock(&self.initiated)
            .get(&session)
            .map(|(_, tx)| tx.clone());
        if let Some(tx) = inbox {
            let _ = tx.send(msg);
        }
    }

    /// Periodic work: anti-entropy rounds with every peer this node leads, and
    /// the tombstone purge.
    pub fn start_maintenance(&self) {
        let me = self.me.clone();
        let interval = self.ctx.config.anti_entropy_interval;
        self.ctx.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(merge) = me.upgrade() else { return };
                for peer in merge.members.peers() {
                    if merge.ctx.actor < peer.actor {
                        merge.start_round(&peer);
                    }
                }
            }
        });
        let me = self.me.clone();
        let retention = self.ctx.config.tombstone_retention;
        let every = (retention / 4).clamp(Duration::from_millis(100), Duration::from_secs(60));
        self.ctx.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(merge) = me.upgrade() else { return };
                merge.purge_tombstones();
            }
        });
    }

    fn purge_tombstones(&self) {
        let cutoff = self.ctx.tombstone_cutoff_ms();
        for t in self.ctx.replicas() {
            if let Ok(mut s) = t.write() {
                let n = s.purge_tombstones(cutoff);
                if n > 0 {
                    tracing::debug!(table = %t.name, purged = n, "tombstones purged");
                }
            }
        }
    }
}

/// The rounds asked for on `peer` so far: by this node, and by the peer.
fn rounds_asked(peer: &PeerConn) -> (u64, u64) {
    (
        peer.rounds_asked.load(Ordering::Acquire),
        peer.rounds_asked_by_peer.load(Ordering::Acquire),
    )
}

/// The peer finished a round of merges it leads on this connection.
fn on_round_done(peer: &PeerConn, served: u64) {
    peer.rounds_done.send_if_modified(|done| {
        let grew = served > *done;
        *done = (*done).max(served);
        grew
    });
    peer.mark_synced();
}
