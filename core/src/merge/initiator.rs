//! The leading side of a merge session, one per table: it sends its digest,
//! descends the digest tree through the buckets that differ, sends summaries
//! (or whole entries where the peer's bucket is empty) and exchanges the
//! entries that differ.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::frames::{send_entries, send_merge, Chunks};
use super::{Merge, Tally};
use crate::cluster::PeerConn;
use crate::error::{Error, Result};
use crate::locks::lock;
use crate::replica::Replica;
use crate::wire::Message;

/// Bits added per round of the digest descent: 16 children per differing bucket.
const DESCENT_STEP: u8 = 4;
/// The level of the first round of digests: 256 buckets (2 KiB).
pub(super) const FIRST_LEVEL: u8 = 8;

/// One session's conversation: its id, its inbox and the time each step may take.
struct Session<'a> {
    peer: &'a Arc<PeerConn>,
    table: &'a Arc<Replica>,
    id: u64,
    rx: mpsc::UnboundedReceiver<Message>,
    step: Duration,
    began: tokio::time::Instant,
}

/// Where the digest descent ended: the differing buckets at the final level,
/// and the peer's digest of each.
struct Differing {
    bits: u8,
    buckets: Vec<u32>,
    theirs: Vec<u64>,
    /// How many entries the peer said it holds.
    their_count: u64,
}

impl Merge {
    /// Merges `table` with `peer` in one session.
    pub(super) async fn sync_table(
        &self,
        peer: &Arc<PeerConn>,
        table: &Arc<Replica>,
    ) -> Result<()> {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.initiated).insert(id, (peer.conn_id, tx));
        let mut session = Session {
            peer,
            table,
            id,
            rx,
            began: tokio::time::Instant::now(),
            // Generous: a peer that goes away ends the session at once, and
            // one step over a large table may take seconds.
            step: self.ctx.config.request_timeout * 12,
        };
        let result = self.run_session(&mut session).await;
        lock(&self.initiated).remove(&id);
        if result.is_err() {
            // The peer may hold this session's state (a snapshot of its buckets): let it go.
            send_merge(&self.ctx, peer, &Message::SyncDone { session: id });
        }
        result
    }

    async fn run_session(&self, s: &mut Session<'_>) -> Result<()> {
        let Some(differing) = self.descend(s).await? else {
            return Ok(());
        };
        self.exchange(s, differing).await
    }

    /// Compares digests level by level through the buckets that differ only,
    /// so the bytes exchanged follow the differences rather than the table
    /// size. `None`: the peer found the whole tables equal.
    async fn descend(&self, s: &mut Session<'_>) -> Result<Option<Differing>> {
        let (bits, total, count) = {
            let store = s.table.read()?;
            (store.digest_bits(), store.digest_total(), store.stored())
        };
        let digest = Message::SyncDigest {
            session: s.id,
            table: s.table.name.to_string(),
            bits,
            total,
            count: count as u64,
        };
        send_merge(&self.ctx, s.peer, &digest);
        let (mut level, final_bits, mut theirs, their_count) = match recv_step(s).await? {
            Message::SyncDone { .. } => return Ok(None),
            Message::SyncLeaves {
                bits: level,
                final_bits,
                leaves,
                count,
                ..
            } => (level, final_bits, leaves, count),
            other => return Err(unexpected(&other)),
        };
        if final_bits > bits || level > final_bits {
            return Err(Error::protocol(
                "the peer sent digests of an impossible level",
            ));
        }
        if their_count == 0 && theirs.iter().all(|l| *l == 0) {
            // The peer's table is empty (a join): every bucket differs, with
            // no need to descend to find out.
            let all = 1u32 << final_bits;
            return Ok(Some(Differing {
                bits: final_bits,
                buckets: (0..all).collect(),
                theirs: vec![0; all as usize],
                their_count,
            }));
        }
        let mut candidates: Vec<u32> = (0..theirs.len() as u32).collect();
        loop {
            let ours = s.table.read()?.digest_buckets(level, &candidates);
            if ours.len() != theirs.len() {
                return Err(Error::protocol("the peer sent a wrong number of digests"));
            }
            let (differing, their_digests): (Vec<u32>, Vec<u64>) = candidates
                .iter()
                .zip(ours.iter().zip(&theirs))
                .filter(|(_, (a, b))| a != b)
                .map(|(c, (_, b))| (*c, *b))
                .unzip();
            // Equal at a coarser level: nothing differs (the exchange still
            // runs, empty, so that both sides end the session alike).
            if level >= final_bits || differing.is_empty() {
                return Ok(Some(Differing {
                    bits: final_bits,
                    buckets: differing,
                    theirs: their_digests,
                    their_count,
                }));
            }
            let next = (level + DESCENT_STEP).min(final_bits);
            let descend = Message::SyncDescend {
                session: s.id,
                parent_bits: level,
                bits: next,
                buckets: differing.clone(),
            };
            send_merge(&self.ctx, s.peer, &descend);
            theirs = match recv_step(s).await? {
                Message::SyncLeaves { bits, leaves, .. } if bits == next => leaves,
                other => return Err(unexpected(&other)),
            };
            candidates = children(&differing, level, next);
            level = next;
        }
    }

    /// Where the peer's bucket is empty, whole entries go at once; elsewhere
    /// summaries first, then only the entries that differ, both ways. The
    /// buckets go first, so that both sides go through their tables at once.
    async fn exchange(&self, s: &mut Session<'_>, d: Differing) -> Result<()> {
        let peer_empty: HashSet<u32> = d
            .buckets
            .iter()
            .zip(&d.theirs)
            .filter(|(_, digest)| **digest == 0)
            .map(|(b, _)| *b)
            .collect();
        let (mine, actors) = {
            let store = s.table.read()?;
            let mut chunks = Chunks::new(&self.ctx, s.peer, s.id, store.actors().to_vec());
            chunks.announce_buckets(d.buckets.clone());
            let mine = store.entries_in_buckets(
                d.bits,
                &d.buckets,
                |b| peer_empty.contains(&b),
                |block| chunks.summary_entry(block),
            );
            for e in &mine {
                chunks.summary_pair((e.key_hash, e.entry_hash));
            }
            chunks.send_summary(true);
            (mine, store.actors().to_vec())
        };
        let want: HashSet<u64> = match recv_step(s).await? {
            Message::SyncWant { want, .. } => want.into_iter().collect(),
            other => return Err(unexpected(&other)),
        };
        // Sent before anything of the peer's is merged: this side's versions as
        // they were when the merge compared them.
        let wanted = mine.iter().filter(|e| want.contains(&e.key_hash));
        send_entries(&self.ctx, s.peer, s.id, actors, wanted);
        let mut tally = Tally::since(s.began);
        loop {
            match recv_step(s).await? {
                Message::SyncEntries { entries, last, .. } => {
                    self.merge_remote(s.peer, s.table, &entries, d.their_count, &mut tally)
                        .map_err(Error::protocol)?;
                    if last {
                        break;
                    }
                }
                other => return Err(unexpected(&other)),
            }
        }
        self.report_merge(s.peer, s.table, &tally);
        Ok(())
    }
}

/// The buckets at level `to` under `parents` (at level `from`), in order.
pub(super) fn children(parents: &[u32], from: u8, to: u8) -> Vec<u32> {
    let shift = u32::from(to - from);
    parents
        .iter()
        .flat_map(|p| (p << shift)..((p + 1) << shift))
        .collect()
}

async fn recv_step(s: &mut Session<'_>) -> Result<Message> {
    match tokio::time::timeout(s.step, s.rx.recv()).await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err(Error::unavailable("the peer left during the merge")),
        Err(_) => Err(Error::timeout("the peer did not answer during the merge")),
    }
}

fn unexpected(msg: &Message) -> Error {
    Error::protocol(format!("unexpected merge message {msg:?}"))
}
