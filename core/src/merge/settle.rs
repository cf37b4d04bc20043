//! What a merge does with the versions that arrive: the merge rule per key,
//! and the settlement of conflicts by the table's handler or the fallback.

use std::sync::Arc;

use super::{Merge, Tally};
use crate::cluster::PeerConn;
use crate::context::Context;
use crate::events::{Event, ResolutionKind};
use crate::replica::{ConflictRecord, Replica};
use crate::replication::Replication;
use crate::resolve::{joint_deadline, merge_versions, Conflict, Resolution};
use crate::store::{incoming_blocks, Entry, TableStore};
use crate::vclock::VClock;
use crate::watch::Cause;
use crate::wire::{PackedEntries, WireEntry, WriteOp, WriteOutcome};

/// A conflict this node settles.
struct Found {
    key: Vec<u8>,
    local: Option<Vec<u8>>,
    remote: Option<Vec<u8>>,
    kept: Option<Vec<u8>>,
    merged_clock: VClock,
    /// The deadline the decision keeps (see [`joint_deadline`]).
    deadline_ms: Option<u64>,
    /// The peer the merge was with.
    peer: String,
}

impl Found {
    /// The conflict log's record of the fallback's choice, made at `at_ms`.
    fn record(self, at_ms: u64) -> ConflictRecord {
        let lost = if self.kept == self.local {
            self.remote
        } else {
            self.local
        };
        ConflictRecord {
            key: self.key,
            kept: self.kept,
            lost,
            peer: self.peer,
            at_ms,
        }
    }
}

impl Merge {
    /// Merges a chunk of the peer's versions into the local table, then settles
    /// the conflicts found in it; fails, merging nothing, when the chunk is
    /// malformed.
    ///
    /// When a member of the view has a conflict handler for the table, only
    /// that member (the smallest such actor id) settles a conflict: it stores
    /// the fallback with the merged clock and runs the handler, whose decision
    /// is then written everywhere. Every other node keeps its own version until
    /// that write arrives, so that the handler node still sees the conflict
    /// whichever pair of nodes merged first.
    pub(super) fn merge_remote(
        &self,
        peer: &PeerConn,
        table: &Arc<Replica>,
        remote: &PackedEntries,
        peer_count: u64,
        tally: &mut Tally,
    ) -> std::result::Result<(), &'static str> {
        let blocks = incoming_blocks(remote)?;
        if blocks.is_empty() {
            return Ok(());
        }
        let handler_node = self.members.handler_node(&table.name);
        let settles_here = handler_node.as_ref().is_none_or(|h| *h == self.ctx.actor);
        let mut found = Vec::new();
        let cutoff = self.ctx.tombstone_cutoff_ms();
        if let Ok(mut store) = table.write() {
            // Into an empty table (a join), every entry the peer holds is
            // coming: room for all of them at once, not chunk by chunk.
            store.make_room_when_empty(peer_count.max(blocks.len() as u64));
            store.reserve(blocks.len());
            let actor_map = store.intern_all(&remote.actors);
            for block in &blocks {
                // A key this replica lacks is stored as it came; the rest
                // goes through the merge rule.
                if store.insert_new_block(block, &actor_map) {
                    tally.changed += 1;
                    continue;
                }
                let w = block.to_wire(&remote.actors);
                if let Some(f) = merge_one(&mut store, w, cutoff, settles_here, tally) {
                    found.push(Found {
                        peer: peer.actor.name.to_string(),
                        ..f
                    });
                }
            }
        }
        for f in found {
            if handler_node.is_some() {
                let (ctx, replication) = (self.ctx.clone(), self.replication.clone());
                let table = table.clone();
                self.ctx.spawn(
                    async move { resolve_with_handler(&ctx, &replication, &table, f).await },
                );
            } else {
                self.ctx.report_conflict(
                    table,
                    f.record(self.ctx.wall_clock_ms()),
                    ResolutionKind::Fallback,
                );
            }
        }
        Ok(())
    }

    pub(super) fn report_merge(&self, peer: &PeerConn, table: &Replica, tally: &Tally) {
        self.ctx
            .stats
            .merge_durations
            .observe(tally.began.elapsed());
        self.ctx.emit(Event::Merged {
            table: table.name.to_string(),
            peer: peer.actor.name.to_string(),
            keys_changed: tally.changed,
            conflicts: tally.conflicts,
        });
    }
}

/// Merges one version of the peer's into `store`; returns the conflict it
/// found when this node settles it.
fn merge_one(
    store: &mut TableStore,
    w: WireEntry,
    cutoff_ms: u64,
    settles_here: bool,
    tally: &mut Tally,
) -> Option<Found> {
    let incoming = Entry {
        value: w.value.map(Vec::into_boxed_slice),
        clock: w.clock,
        deadline_ms: w.deadline_ms,
    };
    let local = store
        .entry(&w.key)
        .filter(|l| !l.is_expired_tombstone(cutoff_ms));
    let mut found = None;
    let merged = match local {
        // A tombstone past its retention is not brought back where it was
        // purged (nor where it never was).
        None if incoming.is_expired_tombstone(cutoff_ms) => return None,
        None => incoming,
        Some(local) => {
            let m = merge_versions(&local, &incoming);
            if m.conflict {
                tally.conflicts += 1;
                if !settles_here {
                    return None;
                }
                found = Some(Found {
                    key: w.key.clone(),
                    local: local.value.as_deref().map(<[u8]>::to_vec),
                    remote: incoming.value.as_deref().map(<[u8]>::to_vec),
                    kept: m.entry.value.as_deref().map(<[u8]>::to_vec),
                    merged_clock: m.entry.clock.clone(),
                    deadline_ms: joint_deadline(&local, &incoming),
                    peer: String::new(),
                });
            }
            if local == m.entry {
                return found;
            }
            m.entry
        }
    };
    tally.changed += 1;
    store.insert(
        &w.key,
        merged.value.as_deref(),
        &merged.clock,
        merged.deadline_ms,
        Cause::Merge,
    );
    found
}

/// Runs the table's handler on a conflict (bounded by the handler timeout)
/// and writes its decision through the sequencer; a failed handler writes the
/// fallback the same way.
async fn resolve_with_handler(
    ctx: &Context,
    replication: &Replication,
    table: &Arc<Replica>,
    f: Found,
) {
    let (new, how) = match run_handler(ctx, table, &f).await {
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
        deadline_ms: f.deadline_ms,
    };
    match replication.submit(table, op).await {
        Ok(WriteOutcome::Swapped) if how == ResolutionKind::Handler => {
            ctx.emit(Event::Conflict {
                table: table.name.to_string(),
                key: String::from_utf8_lossy(&f.key).into_owned(),
                resolution: how,
            });
        }
        Ok(WriteOutcome::Swapped) => ctx.report_conflict(table, f.record(ctx.wall_clock_ms()), how),
        Ok(_) => {
            tracing::info!(table = %table.name, "a newer write superseded a conflict resolution")
        }
        Err(e) => {
            // The fallback this node stored stays, and anti-entropy carries it
            // to the others (its merged clock descends their versions).
            tracing::warn!(table = %table.name, "cannot write a conflict resolution: {e}");
            let record = f.record(ctx.wall_clock_ms());
            ctx.report_conflict(table, record, ResolutionKind::HandlerFailed);
        }
    }
}

async fn run_handler(
    ctx: &Context,
    table: &Replica,
    f: &Found,
) -> std::result::Result<Resolution, String> {
    let Some(handler) = table.handler() else {
        return Err("the handler was removed".to_string());
    };
    let conflict = Conflict {
        table: table.name.to_string(),
        key: f.key.clone(),
        local: f.local.clone(),
        remote: f.remote.clone(),
    };
    match tokio::time::timeout(ctx.config.handler_timeout, handler.resolve(conflict)).await {
        Ok(result) => result,
        Err(_) => Err("it timed out".to_string()),
    }
}
