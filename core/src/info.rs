//! What `info()` tells of a node: the description every surface returns.

use serde::Serialize;

use crate::replica::TableStats;

/// A node's description, as `info()` returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Info {
    /// The version of lbmkv the node runs.
    pub version: String,
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// The node's name.
    pub name: String,
    /// The node's actor id (name and incarnation).
    pub actor: String,
    /// Where it listens.
    pub address: String,
    /// Names of the nodes in its view, itself included, sorted.
    pub members: Vec<String>,
    /// The member whose sequencer this node follows, if any.
    pub sequencer: Option<String>,
    /// The peers this node is connected to, sorted by name.
    pub peers: Vec<PeerStats>,
    /// Tables, sorted by name, each with its sequencer.
    pub tables: Vec<TableStats>,
    /// Bytes this node wrote to peers.
    pub bytes_sent: u64,
    /// Bytes this node read from peers.
    pub bytes_received: u64,
    /// Bytes of merge traffic this node wrote.
    pub merge_bytes_sent: u64,
    /// Bytes queued for peers and not yet handed to their sockets.
    pub send_queue_bytes: u64,
    /// Bytes of the write budget held by writes waiting for sequencers.
    pub write_budget_in_use: u64,
}

/// One connected peer, as `info()` describes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PeerStats {
    /// The peer's name.
    pub name: String,
    /// The address the peer listens on, as it announced it.
    pub address: String,
    /// Milliseconds since the connection joined this node's view.
    pub connected_ms: u64,
    /// Bytes queued for the peer and not yet handed to its socket.
    pub send_queue_bytes: u64,
    /// Milliseconds since the last frame from the peer (a heartbeat at least
    /// every heartbeat interval).
    pub last_heard_ms: u64,
    /// The last round trip of a probe to the peer, in microseconds. Probes go
    /// from a sequencer to its peers, so this is `None` on a node that has
    /// not sequenced since the connection began.
    pub round_trip_us: Option<u64>,
}
