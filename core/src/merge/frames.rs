//! The merge protocol's outgoing frames: messages counted as merge traffic,
//! and entries and summaries cut into chunks of about [`CHUNK_BYTES`].

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use crate::cluster::PeerConn;
use crate::context::Context;
use crate::store::HashedEntry;
use crate::wire::{self, Message, WireEntry};

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

/// A stored entry as it crosses the wire.
pub(super) fn to_wire(h: HashedEntry) -> WireEntry {
    WireEntry {
        key: h.key.into_vec(),
        value: h.entry.value.map(<[u8]>::into_vec),
        clock: h.entry.clock,
        deadline_ms: h.entry.deadline_ms,
    }
}

/// Sends `entries` as `SyncEntries` chunks of about [`CHUNK_BYTES`], the last
/// one marked (an empty one when there is nothing to send).
pub(super) fn send_entries(
    ctx: &Context,
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
            send_merge(ctx, peer, &msg);
            size = 0;
        }
    }
    let msg = Message::SyncEntries {
        session,
        entries: wire::Entries(chunk),
        last: true,
    };
    send_merge(ctx, peer, &msg);
}

/// Sends this side's part of the differing `buckets` as `SyncSummary` chunks:
/// summaries, or whole entries where the peer's bucket digest is 0 (empty).
/// Returns the summarized entries, which the peer may ask for next.
pub(super) fn send_summary(
    ctx: &Context,
    peer: &PeerConn,
    session: u64,
    bits: u8,
    buckets: Vec<u32>,
    peer_empty: &HashSet<u32>,
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
            send_merge(ctx, peer, &msg);
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
    send_merge(ctx, peer, &msg);
    kept
}
