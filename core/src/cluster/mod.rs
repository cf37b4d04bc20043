//! The cluster layer: connections to peers and the view. It knows the
//! handshake and its own messages (heartbeats, member lists, goodbyes) and
//! delivers everything else upward through [`Inbound`], which the node
//! implements; it never calls the layers above by name.

pub(crate) mod handshake;
pub(crate) mod membership;
pub(crate) mod transport;

use std::sync::Arc;

pub(crate) use membership::Membership;
pub(crate) use transport::PeerConn;

use crate::wire::Message;

/// How the cluster layer reaches the node above it.
pub(crate) trait Inbound: Send + Sync {
    /// A connection joined the view (or replaced another to the same peer);
    /// called before its first message is read.
    fn on_peer_up(&self, peer: &Arc<PeerConn>);
    /// A message for the layers above.
    fn on_message(&self, peer: &Arc<PeerConn>, msg: Message);
    /// A connection ended: its peer left the view, or (`replaced`) another
    /// connection to the same peer took its place and the peer stays.
    fn on_connection_ended(&self, peer: &PeerConn, replaced: bool);
}
