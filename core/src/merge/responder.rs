//! The answering side of a merge session: one method per message of the
//! initiator.

use std::collections::HashSet;
use std::sync::Arc;

use super::frames::{send_entries, send_merge, Chunks};
use super::initiator::{children, FIRST_LEVEL};
use super::{Merge, Responding, Tally};
use crate::cluster::PeerConn;
use crate::wire::{Message, PackedEntries};

impl Merge {
    /// Step 1: the initiator's digest of a table. Equal tables end the session
    /// at once; otherwise the first level of bucket digests goes back.
    pub(super) fn on_digest(
        &self,
        peer: &Arc<PeerConn>,
        session: u64,
        table: &str,
        bits: u8,
        total: u64,
        count: u64,
    ) {
        let done = Message::SyncDone { session };
        let replica = match self.replication.ensure_table(table) {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(peer = %peer.actor, "refusing a merge: {e}");
                return send_merge(&self.ctx, peer, &done);
            }
        };
        let answer = match replica.read() {
            Ok(s) if s.digest_total() != total => {
                let level = bits.min(s.digest_bits());
                let first = level.min(FIRST_LEVEL);
                Some((level, first, s.digest_leaves(first), s.stored()))
            }
            _ => None,
        };
        let Some((level, first, leaves, stored)) = answer else {
            return send_merge(&self.ctx, peer, &done);
        };
        let state = Responding {
            table: replica,
            bits: level,
            mine: Vec::new(),
            actors: Vec::new(),
            peer_count: count,
            unsnapshotted: None,
            summary: Vec::new(),
            tally: Tally::since(tokio::time::Instant::now()),
        };
        self.put_responding((peer.conn_id, session), state);
        let leaves = Message::SyncLeaves {
            session,
            bits: first,
            final_bits: level,
            leaves,
            count: stored as u64,
        };
        send_merge(&self.ctx, peer, &leaves);
    }

    /// Step 2 again: the children of the buckets whose digests differ.
    pub(super) fn on_descend(
        &self,
        peer: &Arc<PeerConn>,
        session: u64,
        parent_bits: u8,
        bits: u8,
        buckets: Vec<u32>,
    ) {
        let state = crate::locks::lock(&self.responding)
            .get(&(peer.conn_id, session))
            .map(|s| (s.table.clone(), s.bits));
        let Some((table, final_bits)) = state else {
            return;
        };
        let in_range = buckets.len() <= 1usize << parent_bits.min(32)
            && buckets
                .iter()
                .all(|&b| u64::from(b) < 1u64 << parent_bits.min(63));
        if bits > final_bits || parent_bits >= bits || bits - parent_bits > 8 || !in_range {
            let reason = "asked for digests of an impossible level";
            return self
                .members
                .drop_peer(&peer.actor, Some(peer.conn_id), reason);
        }
        let leaves = match table.read() {
            Ok(s) => s.digest_buckets(bits, &children(&buckets, parent_bits, bits)),
            Err(_) => return,
        };
        let msg = Message::SyncLeaves {
            session,
            bits,
            final_bits,
            leaves,
            count: 0,
        };
        send_merge(&self.ctx, peer, &msg);
    }

    /// Step 3, in chunks: the initiator's summaries (and whole entries where
    /// this side's bucket is empty). After the last chunk, this side asks for
    /// the entries it lacks and sends its own that differ.
    pub(super) fn on_summary(
        &self,
        peer: &Arc<PeerConn>,
        session: u64,
        buckets: Vec<u32>,
        summary: Vec<(u64, u64)>,
        entries: PackedEntries,
        last: bool,
    ) {
        let key = (peer.conn_id, session);
        let Some(mut state) = self.take_responding(key) else {
            return;
        };
        let table = state.table.clone();
        if !buckets.is_empty() {
            state.unsnapshotted = Some(buckets);
        }
        // The snapshot this side compares and sends is taken before anything
        // of the peer's is merged. From a peer that holds nothing (a joiner
        // that leads) nothing may come: then none is needed at all.
        let peer_sends = !summary.is_empty() || !entries.blocks.is_empty();
        if state.peer_count > 0 || peer_sends {
            if let Some(buckets) = state.unsnapshotted.take() {
                let snapshot = table.read().map(|s| {
                    let mine = s.entries_in_buckets(state.bits, &buckets, |_| false, |_| {});
                    (mine, s.actors().to_vec())
                });
                (state.mine, state.actors) = match snapshot {
                    Ok(snapshot) => snapshot,
                    Err(_) => return,
                };
            }
        }
        state.summary.extend(summary);
        if let Err(reason) =
            self.merge_remote(peer, &table, &entries, state.peer_count, &mut state.tally)
        {
            return self
                .members
                .drop_peer(&peer.actor, Some(peer.conn_id), reason);
        }
        if last {
            match state.unsnapshotted.take() {
                Some(buckets) => self.answer_empty_peer(peer, session, &state, &buckets),
                None => self.answer_summary(peer, session, &mut state),
            }
        }
        self.put_responding(key, state);
    }

    /// The peer has nothing in the differing buckets and sent nothing: this
    /// side wants nothing and sends all of its entries there, straight from
    /// its table (no snapshot, no hashes).
    fn answer_empty_peer(
        &self,
        peer: &Arc<PeerConn>,
        session: u64,
        state: &Responding,
        buckets: &[u32],
    ) {
        let want = Vec::new();
        send_merge(&self.ctx, peer, &Message::SyncWant { session, want });
        let Ok(store) = state.table.read() else {
            // The peer's step times out and it gives the session up.
            return;
        };
        let mut chunks = Chunks::new(&self.ctx, peer, session, store.actors().to_vec());
        store.entries_in_buckets(state.bits, buckets, |_| true, |b| chunks.entry(b));
        chunks.send_entries(true);
    }

    fn answer_summary(&self, peer: &Arc<PeerConn>, session: u64, state: &mut Responding) {
        let theirs: HashSet<(u64, u64)> = state.summary.drain(..).collect();
        let ours: HashSet<(u64, u64)> = state
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
        send_merge(&self.ctx, peer, &Message::SyncWant { session, want });
        let mine = std::mem::take(&mut state.mine);
        let differing = mine
            .iter()
            .filter(|h| !theirs.contains(&(h.key_hash, h.entry_hash)));
        let actors = std::mem::take(&mut state.actors);
        send_entries(&self.ctx, peer, session, actors, differing);
    }

    /// Step 5, in chunks: the initiator's entries this side asked for.
    pub(super) fn on_entries(
        &self,
        peer: &Arc<PeerConn>,
        session: u64,
        entries: PackedEntries,
        last: bool,
    ) {
        let key = (peer.conn_id, session);
        let Some(mut state) = self.take_responding(key) else {
            return;
        };
        let table = state.table.clone();
        if let Err(reason) =
            self.merge_remote(peer, &table, &entries, state.peer_count, &mut state.tally)
        {
            return self
                .members
                .drop_peer(&peer.actor, Some(peer.conn_id), reason);
        }
        if last {
            self.report_merge(peer, &table, &state.tally);
        } else {
            self.put_responding(key, state);
        }
    }
}
