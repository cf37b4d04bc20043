//! Events, pulled by the application with `lbmkv_node_next_event`.

use std::ffi::{c_char, CString};

use lbmkv::Event;

use crate::handle::{self, castable};
use crate::panic::{ffi_boundary, static_cstr};

/// The kind of an event. Values never change meaning.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum lbmkv_event_type {
    /// Not an event (a NULL event pointer).
    Unknown = 0,
    /// A peer joined this node's view.
    NodeUp = 1,
    /// A peer left this node's view (closed, cut off or silent).
    NodeDown = 2,
    /// A table appeared on this node (created here or by a peer).
    TableCreated = 3,
    /// A merge with a peer finished for one table.
    Merged = 4,
    /// A conflict was settled (by a handler or by the fallback).
    Conflict = 5,
}

/// The Rust value behind an `lbmkv_event`.
pub(crate) struct EventState {
    kind: lbmkv_event_type,
    json: CString,
    node: Option<CString>,
    table: Option<CString>,
}

impl EventState {
    pub(crate) fn new(event: &Event) -> EventState {
        let c = |s: &str| CString::new(s.replace('\0', "\u{fffd}")).ok();
        let (kind, node, table) = match event {
            Event::NodeUp { node } => (lbmkv_event_type::NodeUp, c(node), None),
            Event::NodeDown { node, .. } => (lbmkv_event_type::NodeDown, c(node), None),
            Event::TableCreated { table } => (lbmkv_event_type::TableCreated, None, c(table)),
            Event::Merged { table, peer, .. } => (lbmkv_event_type::Merged, c(peer), c(table)),
            Event::Conflict { table, .. } => (lbmkv_event_type::Conflict, None, c(table)),
            // An event kind newer than this header: its JSON still tells all.
            _ => (lbmkv_event_type::Unknown, None, None),
        };
        EventState {
            kind,
            // JSON escapes control characters, so it holds no NUL.
            json: CString::new(event.to_json()).unwrap_or_default(),
            node,
            table,
        }
    }
}

/// One event of a node. Free with `lbmkv_event_free`.
pub struct lbmkv_event {
    _private: [u8; 0],
}

castable! {
    lbmkv_event => EventState, Owned;
}

/// The kind of `event` (`LBMKV_EVENT_TYPE_UNKNOWN` for NULL).
#[no_mangle]
pub extern "C" fn lbmkv_event_get_type(event: *const lbmkv_event) -> lbmkv_event_type {
    ffi_boundary! { handle::opt_ref(event).map_or(lbmkv_event_type::Unknown, |e| e.kind) }
}

/// The event as one line of JSON with a `type` field (`node_up`,
/// `node_down`, `table_created`, `merged`, `conflict`) and the event's
/// fields; NUL-terminated, valid until the event is freed. `"{}"` for NULL.
#[no_mangle]
pub extern "C" fn lbmkv_event_json(event: *const lbmkv_event) -> *const c_char {
    ffi_boundary! {
        handle::opt_ref(event).map_or(static_cstr("{}\0"), |e| e.json.as_ptr())
    }
}

/// The node an event is about: the peer of `NODE_UP`, `NODE_DOWN` and
/// `MERGED`; NULL for other kinds. Valid until the event is freed.
#[no_mangle]
pub extern "C" fn lbmkv_event_node(event: *const lbmkv_event) -> *const c_char {
    ffi_boundary! {
        handle::opt_ref(event)
            .and_then(|e| e.node.as_ref())
            .map_or(std::ptr::null(), |s| s.as_ptr())
    }
}

/// The table an event is about: for `TABLE_CREATED`, `MERGED` and
/// `CONFLICT`; NULL for other kinds. Valid until the event is freed.
#[no_mangle]
pub extern "C" fn lbmkv_event_table(event: *const lbmkv_event) -> *const c_char {
    ffi_boundary! {
        handle::opt_ref(event)
            .and_then(|e| e.table.as_ref())
            .map_or(std::ptr::null(), |s| s.as_ptr())
    }
}

/// Frees an event. NULL does nothing.
#[no_mangle]
pub extern "C" fn lbmkv_event_free(event: *mut lbmkv_event) {
    ffi_boundary! { handle::free(event) }
}
