//! Watches of a table's changes, pulled with `lbmkv_watch_next`.

use std::ffi::{c_char, CString};
use std::time::Duration;

use lbmkv::blocking::{Watch, WatchNext};
use lbmkv::{Cause, WatchItem};

use crate::bytes::lbmkv_slice;
use crate::error::{lbmkv_error, lbmkv_status, Failure};
use crate::handle::{self, castable};
use crate::panic::{ffi_boundary, ffi_status, static_cstr};
use crate::table::lbmkv_table;

/// Why a key changed. Values never change meaning.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum lbmkv_change_cause {
    /// Not a change (a NULL pointer, or a lag).
    Unknown = 0,
    /// A write this node executed as the table's sequencer.
    Write = 1,
    /// A write from the sequencer applied here; also a write taken back
    /// (a batch that failed), reported as a change back to the value before.
    Replicated = 2,
    /// A version that came in by a merge.
    Merge = 3,
    /// A conflict handler's decision (or its fallback).
    Resolve = 4,
    /// The delete the sequencer wrote when the key's time was up.
    Expiry = 5,
}

/// The Rust value behind an `lbmkv_change`.
pub(crate) struct ChangeState {
    item: WatchItem,
    table: CString,
    node: CString,
}

/// One item of a watch: a change, or a lag (see `lbmkv_change_lagged`).
/// Free with `lbmkv_change_free`.
pub struct lbmkv_change {
    _private: [u8; 0],
}

/// A watch of a table's changes on one node (see `lbmkv_table_watch`).
/// `lbmkv_watch_next` may be called from one thread at a time;
/// `lbmkv_watch_close` from any thread.
pub struct lbmkv_watch {
    _private: [u8; 0],
}

castable! {
    lbmkv_change => ChangeState, Owned;
    lbmkv_watch => Watch, Owned;
}

fn c_string(s: &str) -> CString {
    CString::new(s.replace('\0', "\u{fffd}")).unwrap_or_default()
}

/// Opens a watch of the changes of the keys of `table` that start with the
/// `prefix_len` bytes at `prefix` (`prefix` may be NULL when `prefix_len` is
/// 0: the whole table), on this node, from now on. `buffer` changes are kept
/// for a consumer that falls behind (0: 4096); beyond that the next item is
/// a lag with the count of changes missed. Free with `lbmkv_watch_free`.
#[no_mangle]
pub extern "C" fn lbmkv_table_watch(
    table: *const lbmkv_table,
    prefix: *const u8,
    prefix_len: usize,
    buffer: usize,
    watch_out: *mut *mut lbmkv_watch,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = crate::table::blocking_table(table)?;
        let prefix = lbmkv_slice {
            data: prefix,
            len: prefix_len,
        }
        .bytes("prefix")?;
        let out = handle::out(watch_out, "watch_out")?;
        let watch = t.watch(prefix, buffer)?;
        *out = handle::into_raw(watch);
        Ok(())
    })
}

/// The next change of `watch`, waiting at most `timeout_ms`: stored in
/// `*change_out` (free it with `lbmkv_change_free`). Returns
/// `LBMKV_STATUS_TIMEOUT` when nothing came in time and
/// `LBMKV_STATUS_CLOSED` once the watch ended (closed, or its node closed
/// and every buffered change was taken); `*change_out` is then untouched.
/// Changes of one node come in the order it applied them. Blocking.
#[no_mangle]
pub extern "C" fn lbmkv_watch_next(
    watch: *const lbmkv_watch,
    timeout_ms: u32,
    change_out: *mut *mut lbmkv_change,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let w = handle::try_ref(watch, "watch")?;
        let out = handle::out(change_out, "change_out")?;
        match w.next(Duration::from_millis(u64::from(timeout_ms)))? {
            WatchNext::Item(item) => {
                let (table, node) = match &item {
                    WatchItem::Change(c) => (c_string(&c.table), c_string(&c.node)),
                    _ => (CString::default(), CString::default()),
                };
                *out = handle::into_raw(ChangeState { item, table, node });
                Ok(())
            }
            WatchNext::Timeout => Err(Failure {
                status: lbmkv_status::Timeout,
                message: format!("no change within {timeout_ms} ms"),
            }),
            WatchNext::Ended => Err(Failure {
                status: lbmkv_status::Closed,
                message: "the watch ended".to_string(),
            }),
        }
    })
}

/// Ends `watch`: a call waiting in `lbmkv_watch_next` (on another thread)
/// and every later one return `LBMKV_STATUS_CLOSED`. The handle stays valid
/// until `lbmkv_watch_free`. NULL does nothing.
#[no_mangle]
pub extern "C" fn lbmkv_watch_close(watch: *const lbmkv_watch) {
    ffi_boundary! {
        if let Some(w) = handle::opt_ref(watch) {
            w.close();
        }
    }
}

/// Closes and frees a watch. NULL does nothing.
#[no_mangle]
pub extern "C" fn lbmkv_watch_free(watch: *mut lbmkv_watch) {
    ffi_boundary! {
        if let Some(w) = handle::opt_ref(watch) {
            w.close();
        }
        handle::free(watch)
    }
}

fn change_of(change: *const lbmkv_change) -> Option<&'static lbmkv::Change> {
    match &handle::opt_ref(change)?.item {
        WatchItem::Change(c) => Some(c),
        _ => None,
    }
}

/// The number of changes missed when this item is a lag (the consumer
/// fell behind the watch's buffer); 0 for a change or NULL.
#[no_mangle]
pub extern "C" fn lbmkv_change_lagged(change: *const lbmkv_change) -> u64 {
    ffi_boundary! {
        match handle::opt_ref(change).map(|c| &c.item) {
            Some(WatchItem::Lagged(n)) => *n,
            _ => 0,
        }
    }
}

/// Why the key changed (`LBMKV_CHANGE_CAUSE_UNKNOWN` for a lag or NULL).
#[no_mangle]
pub extern "C" fn lbmkv_change_get_cause(change: *const lbmkv_change) -> lbmkv_change_cause {
    ffi_boundary! {
        match change_of(change).map(|c| c.cause) {
            Some(Cause::Write) => lbmkv_change_cause::Write,
            Some(Cause::Replicated) => lbmkv_change_cause::Replicated,
            Some(Cause::Merge) => lbmkv_change_cause::Merge,
            Some(Cause::Resolve) => lbmkv_change_cause::Resolve,
            Some(Cause::Expiry) => lbmkv_change_cause::Expiry,
            _ => lbmkv_change_cause::Unknown,
        }
    }
}

/// The cause as a word (`"write"`, `"replicated"`, `"merge"`, `"resolve"`,
/// `"expiry"`; `""` for a lag or NULL). A static string.
#[no_mangle]
pub extern "C" fn lbmkv_change_cause_name(change: *const lbmkv_change) -> *const c_char {
    ffi_boundary! {
        match change_of(change).map(|c| c.cause) {
            Some(Cause::Write) => static_cstr("write\0"),
            Some(Cause::Replicated) => static_cstr("replicated\0"),
            Some(Cause::Merge) => static_cstr("merge\0"),
            Some(Cause::Resolve) => static_cstr("resolve\0"),
            Some(Cause::Expiry) => static_cstr("expiry\0"),
            _ => static_cstr("\0"),
        }
    }
}

/// The key that changed, valid until the change is freed (`{NULL, 0}` for
/// a lag or NULL).
#[no_mangle]
pub extern "C" fn lbmkv_change_key(change: *const lbmkv_change) -> lbmkv_slice {
    ffi_boundary! { change_of(change).map_or(lbmkv_slice::EMPTY, |c| lbmkv_slice::of(&c.key)) }
}

/// The new value in `*value_out` (valid until the change is freed); false
/// (and `{NULL, 0}`) when the key was deleted, for a lag or NULL.
#[no_mangle]
pub extern "C" fn lbmkv_change_value(
    change: *const lbmkv_change,
    value_out: *mut lbmkv_slice,
) -> bool {
    ffi_boundary! { side(change_of(change).and_then(|c| c.value.as_deref()), value_out) }
}

/// The value before in `*prev_out` (valid until the change is freed);
/// false (and `{NULL, 0}`) when the key was absent or deleted.
#[no_mangle]
pub extern "C" fn lbmkv_change_prev(
    change: *const lbmkv_change,
    prev_out: *mut lbmkv_slice,
) -> bool {
    ffi_boundary! { side(change_of(change).and_then(|c| c.prev.as_deref()), prev_out) }
}

fn side(v: Option<&[u8]>, out: *mut lbmkv_slice) -> bool {
    if let Some(out) = handle::opt_out(out) {
        *out = v.map_or(lbmkv_slice::EMPTY, lbmkv_slice::of);
    }
    v.is_some()
}

/// The table's name, NUL-terminated, valid until the change is freed
/// (`""` for a lag; NULL for NULL).
#[no_mangle]
pub extern "C" fn lbmkv_change_table(change: *const lbmkv_change) -> *const c_char {
    ffi_boundary! { handle::opt_ref(change).map_or(std::ptr::null(), |c| c.table.as_ptr()) }
}

/// The node that wrote the new version (the actor of its newest clock
/// dot: the sequencer that ordered it), NUL-terminated, valid until the
/// change is freed (`""` for a lag; NULL for NULL).
#[no_mangle]
pub extern "C" fn lbmkv_change_node(change: *const lbmkv_change) -> *const c_char {
    ffi_boundary! { handle::opt_ref(change).map_or(std::ptr::null(), |c| c.node.as_ptr()) }
}

/// Frees a change. NULL does nothing.
#[no_mangle]
pub extern "C" fn lbmkv_change_free(change: *mut lbmkv_change) {
    ffi_boundary! { handle::free(change) }
}
