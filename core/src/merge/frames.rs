//! The merge protocol's outgoing frames: messages counted as merge traffic,
//! and entries (in their stored form) and summaries cut into chunks of
//! about [`CHUNK_BYTES`].

use std::sync::atomic::Ordering;

use crate::cluster::PeerConn;
use crate::context::Context;
use crate::store::SnapshotEntry;
use crate::vclock::ActorId;
use crate::wire::{self, Message, PackedEntries};

/// Bytes of entries per merge frame.
const CHUNK_BYTES: usize = 1 << 20;

/// Queues a merge message, counted as merge traffic.
pub(super) fn send_merge(ctx: &Context, peer: &PeerConn, msg: &Message) {
    match wire::encode_frame(msg) {
        Ok(frame) => {
            ctx.stats
                .merge_bytes_sent
                .fetch_add(frame.len() as u64, Ordering::Relaxed);
            peer.send_frame(frame.into());
        }
        Err(e) => tracing::error!("cannot encode a merge message: {e}"),
    }
}

/// Blocks gathered into [`Message::SyncSummary`] or [`Message::SyncEntries`]
/// chunks of about [`CHUNK_BYTES`], sent as each one fills up.
pub(super) struct Chunks<'a> {
    ctx: &'a Context,
    peer: &'a PeerConn,
    session: u64,
    /// The table's actors when the blocks were taken (a prefix of its list
    /// later on, which only grows).
    actors: Vec<ActorId>,
    blocks: Vec<u8>,
    /// Differing buckets, sent with the first chunk of a summary.
    buckets: Vec<u32>,
    summary: Vec<(u64, u64)>,
}

impl<'a> Chunks<'a> {
    pub(super) fn new(
        ctx: &'a Context,
        peer: &'a PeerConn,
        session: u64,
        actors: Vec<ActorId>,
    ) -> Self {
        Chunks {
            ctx,
            peer,
            session,
            actors,
            blocks: Vec::new(),
            buckets: Vec::new(),
            summary: Vec::new(),
        }
    }

    /// Adds a block to a `SyncEntries` chunk.
    pub(super) fn entry(&mut self, block: &[u8]) {
        self.blocks.extend_from_slice(block);
        if self.blocks.len() >= CHUNK_BYTES {
            self.send_entries(false);
        }
    }

    /// Adds a block to a `SyncSummary` chunk.
    pub(super) fn summary_entry(&mut self, block: &[u8]) {
        self.blocks.extend_from_slice(block);
        self.summary_full();
    }

    /// Adds an entry's (key hash, entry hash) to a `SyncSummary` chunk.
    pub(super) fn summary_pair(&mut self, pair: (u64, u64)) {
        self.summary.push(pair);
        self.summary_full();
    }

    fn summary_full(&mut self) {
        if self.blocks.len() + self.summary.len() * 16 >= CHUNK_BYTES {
            self.send_summary(false);
        }
    }

    fn packed(&mut self) -> PackedEntries {
        PackedEntries {
            actors: self.actors.clone(),
            blocks: std::mem::take(&mut self.blocks),
        }
    }

    /// Sends what is gathered as a `SyncEntries` chunk (`last`: the final one,
    /// sent even when empty).
    pub(super) fn send_entries(&mut self, last: bool) {
        let msg = Message::SyncEntries {
            session: self.session,
            entries: self.packed(),
            last,
        };
        send_merge(self.ctx, self.peer, &msg);
    }

    /// Sends what is gathered as a `SyncSummary` chunk, with `buckets` when
    /// it is the first one (`last`: the final one, sent even when empty).
    pub(super) fn send_summary(&mut self, last: bool) {
        let msg = Message::SyncSummary {
            session: self.session,
            buckets: std::mem::take(&mut self.buckets),
            summary: std::mem::take(&mut self.summary),
            entries: self.packed(),
            last,
        };
        send_merge(self.ctx, self.peer, &msg);
    }

    /// Sends the differing buckets at once, in a chunk of their own, so that
    /// the peer takes its snapshot of them while this side takes its own.
    pub(super) fn announce_buckets(&mut self, buckets: Vec<u32>) {
        self.buckets = buckets;
        self.send_summary(false);
    }
}

/// Sends `entries` as `SyncEntries` chunks, the last one marked (an empty
/// one when there is nothing to send).
pub(super) fn send_entries<'e>(
    ctx: &Context,
    peer: &PeerConn,
    session: u64,
    actors: Vec<ActorId>,
    entries: impl Iterator<Item = &'e SnapshotEntry>,
) {
    let mut chunks = Chunks::new(ctx, peer, session, actors);
    for e in entries {
        chunks.entry(e.block());
    }
    chunks.send_entries(true);
}
