//! What a node reports: membership changes, tables, merges and conflicts.

use serde::Serialize;
use tokio::sync::broadcast;

/// How a conflict found by a merge was settled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResolutionKind {
    /// The table's conflict handler chose the value (or the delete).
    Handler,
    /// No node had a handler: the newest dot won, the loser went to the conflict log.
    Fallback,
    /// The handler failed or timed out: the fallback applies, the loser went to the conflict log.
    HandlerFailed,
}

/// Something that happened on a node. Serialized as JSON with a `type` field
/// (`node_up`, `node_down`, `table_created`, `merged`, `conflict`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A peer joined this node's view.
    NodeUp {
        /// The peer's name.
        node: String,
    },
    /// A peer left this node's view (closed, cut off or silent for the failure timeout).
    NodeDown {
        /// The peer's name.
        node: String,
        /// Why it left.
        reason: String,
    },
    /// A table appeared on this node (created here or by a peer).
    TableCreated {
        /// The table's name.
        table: String,
    },
    /// A merge with a peer finished for one table.
    Merged {
        /// The table's name.
        table: String,
        /// The peer merged with.
        peer: String,
        /// Keys whose local version changed.
        keys_changed: usize,
        /// Concurrent versions found.
        conflicts: usize,
    },
    /// A conflict was settled.
    Conflict {
        /// The table's name.
        table: String,
        /// The key, lossily decoded as UTF-8 for display.
        key: String,
        /// How it was settled.
        resolution: ResolutionKind,
    },
}

impl Event {
    /// The event as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".to_string())
    }
}

/// A subscription to a node's events; each subscriber sees every event sent
/// after it subscribed (a subscriber that falls more than 4,096 events behind
/// loses the oldest ones).
pub struct Events {
    pub(crate) rx: broadcast::Receiver<Event>,
}

impl Events {
    /// The next event, or `None` once the node is closed.
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            match self.rx.recv().await {
                Ok(ev) => return Some(ev),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "event subscriber fell behind");
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }

    /// The next event if one is queued, without waiting.
    pub fn try_next(&mut self) -> Option<Event> {
        loop {
            match self.rx.try_recv() {
                Ok(ev) => return Some(ev),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    }
}
