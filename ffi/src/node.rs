//! Nodes: start, membership, information, events, close.

use std::ffi::{c_char, CString};
use std::time::Duration;

use lbmkv::blocking::Node;
use lbmkv::Config;

use crate::bytes::{self, lbmkv_bytes, lbmkv_names};
use crate::config::lbmkv_config;
use crate::error::{lbmkv_error, lbmkv_status, Failure};
use crate::event::{lbmkv_event, EventState};
use crate::handle::{self, castable};
use crate::panic::{ffi_boundary, ffi_status};

/// The Rust value behind an `lbmkv_node`.
pub(crate) struct NodeState {
    pub node: Node,
    name: CString,
    address: CString,
}

impl Drop for NodeState {
    fn drop(&mut self) {
        // Leave the cluster cleanly so the peers see `node_down` at once. From a
        // library thread the blocking close is refused; dropping the last
        // handle below still shuts the node down, only without the goodbye.
        let _ = self.node.close();
    }
}

/// A running node: one member of a cluster inside this process. Safe to use
/// from several threads at once. Free with `lbmkv_node_free`.
pub struct lbmkv_node {
    _private: [u8; 0],
}

castable! {
    lbmkv_node => NodeState, Owned;
}

/// Starts a node with `config` (NULL: every default) and stores it in
/// `*node_out`. It listens, reaches its seeds, and keeps reconnecting to every
/// peer it has seen. The config is only read; it may be freed afterwards.
#[no_mangle]
pub extern "C" fn lbmkv_node_start(
    config: *const lbmkv_config,
    node_out: *mut *mut lbmkv_node,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let config = handle::opt_ref(config)
            .cloned()
            .unwrap_or_else(Config::default);
        let out = handle::out(node_out, "node_out")?;
        let node = Node::start(config)?;
        let name =
            CString::new(node.name()).map_err(|_| Failure::invalid("node name holds NUL"))?;
        let address =
            CString::new(node.address()).map_err(|_| Failure::invalid("address holds NUL"))?;
        *out = handle::into_raw(NodeState {
            node,
            name,
            address,
        });
        Ok(())
    })
}

/// The node's name, NUL-terminated, valid until the node is freed; NULL for NULL.
#[no_mangle]
pub extern "C" fn lbmkv_node_name(node: *const lbmkv_node) -> *const c_char {
    ffi_boundary! { handle::opt_ref(node).map_or(std::ptr::null(), |n| n.name.as_ptr()) }
}

/// The address peers reach the node at, `host:port`, NUL-terminated, valid
/// until the node is freed; NULL for NULL.
#[no_mangle]
pub extern "C" fn lbmkv_node_address(node: *const lbmkv_node) -> *const c_char {
    ffi_boundary! { handle::opt_ref(node).map_or(std::ptr::null(), |n| n.address.as_ptr()) }
}

/// Connects to the node at `addr` (`host:port`) and waits for the
/// handshake; also lifts an earlier `lbmkv_node_disconnect` of that node on
/// this side. Blocking.
#[no_mangle]
pub extern "C" fn lbmkv_node_connect(
    node: *const lbmkv_node,
    addr: *const c_char,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let node = handle::try_ref(node, "node")?;
        let addr = handle::c_str(addr, "address")?;
        node.node.connect(addr)?;
        Ok(())
    })
}

/// Drops the connection to the node named `name` and refuses it until
/// `lbmkv_node_connect` is called for it again (both sides must connect
/// again to heal: the first connect is refused by the side that still
/// refuses). Blocking.
#[no_mangle]
pub extern "C" fn lbmkv_node_disconnect(
    node: *const lbmkv_node,
    name: *const c_char,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let node = handle::try_ref(node, "node")?;
        let name = handle::c_name(name, "node name")?;
        node.node.disconnect(name)?;
        Ok(())
    })
}

/// The names of the nodes in this node's view, itself included, sorted.
#[no_mangle]
pub extern "C" fn lbmkv_node_members(
    node: *const lbmkv_node,
    members_out: *mut *mut lbmkv_names,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let node = handle::try_ref(node, "node")?;
        let out = handle::out(members_out, "members_out")?;
        *out = bytes::names_out(node.node.members()?);
        Ok(())
    })
}

/// The names of the tables on this node, sorted.
#[no_mangle]
pub extern "C" fn lbmkv_node_tables(
    node: *const lbmkv_node,
    tables_out: *mut *mut lbmkv_names,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let node = handle::try_ref(node, "node")?;
        let out = handle::out(tables_out, "tables_out")?;
        *out = bytes::names_out(node.node.tables()?);
        Ok(())
    })
}

/// A description of the node as JSON: `version`, `uptime_ms`, `name`,
/// `actor`, `address`, `members`, `sequencer`, `peers` (each with `name`,
/// `address`, `connected_ms`, `send_queue_bytes`, `last_heard_ms`,
/// `round_trip_us`), `tables` (each with `name`,
/// `entries`, `bytes`, `tombstones`, `conflicts`, `digest`, `sequencer`) and
/// traffic counters. Free with `lbmkv_bytes_free`.
#[no_mangle]
pub extern "C" fn lbmkv_node_info_json(
    node: *const lbmkv_node,
    json_out: *mut lbmkv_bytes,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let node = handle::try_ref(node, "node")?;
        let out = handle::out(json_out, "json_out")?;
        let json = serde_json::to_vec(&node.node.info()?).map_err(|e| Failure {
            status: lbmkv_status::Internal,
            message: format!("cannot encode the node info: {e}"),
        })?;
        *out = lbmkv_bytes::from_vec(json);
        Ok(())
    })
}

/// The node's metrics in the Prometheus text exposition format (version
/// 0.0.4), UTF-8, ready to serve at `/metrics`. Free with `lbmkv_bytes_free`.
#[no_mangle]
pub extern "C" fn lbmkv_node_metrics(
    node: *const lbmkv_node,
    text_out: *mut lbmkv_bytes,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let node = handle::try_ref(node, "node")?;
        let out = handle::out(text_out, "text_out")?;
        *out = lbmkv_bytes::from_vec(node.node.metrics()?.into_bytes());
        Ok(())
    })
}

/// Waits at most `timeout_ms` for the node's next event. Stores it in
/// `*event_out` (free it with `lbmkv_event_free`), or stores NULL when none
/// came in time. Events are queued from the node's start; after the node is
/// closed the queued ones are still returned, then `LBMKV_STATUS_CLOSED`.
/// Blocking.
#[no_mangle]
pub extern "C" fn lbmkv_node_next_event(
    node: *const lbmkv_node,
    timeout_ms: u32,
    event_out: *mut *mut lbmkv_event,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let node = handle::try_ref(node, "node")?;
        let out = handle::out(event_out, "event_out")?;
        let event = node
            .node
            .next_event(Duration::from_millis(u64::from(timeout_ms)))?;
        *out = match event {
            Some(e) => handle::into_raw(EventState::new(&e)),
            None => {
                check_open(node)?;
                std::ptr::null_mut()
            }
        };
        Ok(())
    })
}

/// Leaves the cluster (the peers see `node_down` at once) and stops the
/// node; later calls on it or its tables return `LBMKV_STATUS_CLOSED`. The
/// handle stays valid until `lbmkv_node_free`. Closing twice is fine. Blocking.
#[no_mangle]
pub extern "C" fn lbmkv_node_close(
    node: *const lbmkv_node,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        handle::try_ref(node, "node")?.node.close()?;
        Ok(())
    })
}

/// Closes the node (as `lbmkv_node_close`) and frees the handle. NULL does
/// nothing. Table handles of the node stay valid and answer
/// `LBMKV_STATUS_CLOSED` until they are freed.
#[no_mangle]
pub extern "C" fn lbmkv_node_free(node: *mut lbmkv_node) {
    ffi_boundary! { handle::free(node) }
}

fn check_open(node: &NodeState) -> Result<(), Failure> {
    if node.node.as_async().is_closed() {
        return Err(lbmkv::Error::new(lbmkv::ErrorKind::Closed, "the node is closed").into());
    }
    Ok(())
}
