//! Tables: replicated reads and writes.

use std::ffi::{c_char, c_void, CString};

use lbmkv::blocking::Table;

use crate::bytes::{self, lbmkv_bytes, lbmkv_entries, lbmkv_slice};
use crate::callback::{self, lbmkv_conflict_fn, lbmkv_free_fn, lbmkv_update_fn, UserData};
use crate::error::{lbmkv_error, lbmkv_status, Failure};
use crate::handle::{self, castable};
use crate::node::lbmkv_node;
use crate::panic::{ffi_boundary, ffi_status};

/// The Rust value behind an `lbmkv_table`.
pub(crate) struct TableState {
    table: Table,
    name: CString,
}

impl TableState {
    fn new(table: Table) -> Result<TableState, Failure> {
        let name =
            CString::new(table.name()).map_err(|_| Failure::invalid("table name holds NUL"))?;
        Ok(TableState { table, name })
    }
}

/// A handle to a replicated table. Safe to use from several threads at once.
/// It stays valid after its node is freed (calls then return
/// `LBMKV_STATUS_CLOSED`) until `lbmkv_table_free`.
pub struct lbmkv_table {
    _private: [u8; 0],
}

castable! {
    lbmkv_table => TableState, Owned;
}

/// The blocking table behind a handle.
pub(crate) fn blocking_table<'a>(table: *const lbmkv_table) -> Result<&'a Table, Failure> {
    Ok(&handle::try_ref(table, "table")?.table)
}

/// A ttl in milliseconds as the core takes it (0: none).
fn ttl_of(ttl_ms: u64) -> Option<std::time::Duration> {
    (ttl_ms > 0).then(|| std::time::Duration::from_millis(ttl_ms))
}

/// Stores `value` in the optional outputs of a "previous value" or "value";
/// the bytes are only made when the caller asked for them.
fn value_outputs(value: Option<Vec<u8>>, value_out: *mut lbmkv_bytes, found_out: *mut bool) {
    if let Some(found) = handle::opt_out(found_out) {
        *found = value.is_some();
    }
    if let Some(out) = handle::opt_out(value_out) {
        *out = value.map_or(lbmkv_bytes::NONE, lbmkv_bytes::from_vec);
    }
}

/// Creates the table `name` (UTF-8, 1 to 255 bytes, no NUL) on `node`, or
/// opens it when it exists, and returns once it is readable and writable
/// here (a joining node first receives the cluster's copy). `on_conflict`
/// (may be NULL) becomes this node's conflict handler for the table, with
/// `user_data`; `user_data_free` (may be NULL) runs exactly once, when lbmkv
/// drops the handler: when it is replaced, when the node and every handle of
/// the table are freed, or at once when this call fails or `on_conflict` is
/// NULL. Blocking.
#[no_mangle]
pub extern "C" fn lbmkv_table_create(
    node: *const lbmkv_node,
    name: *const c_char,
    on_conflict: lbmkv_conflict_fn,
    user_data: *mut c_void,
    user_data_free: lbmkv_free_fn,
    table_out: *mut *mut lbmkv_table,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let data = UserData::new(user_data, user_data_free);
        let node = handle::try_ref(node, "node")?;
        let name = handle::c_name(name, "table name")?;
        let out = handle::out(table_out, "table_out")?;
        let handler = callback::conflict_handler(on_conflict, data);
        let table = TableState::new(node.node.create_table(name, handler)?)?;
        *out = handle::into_raw(table);
        Ok(())
    })
}

/// Opens the existing table `name`; `LBMKV_STATUS_NO_SUCH_TABLE` when this
/// node has none of that name.
#[no_mangle]
pub extern "C" fn lbmkv_node_table(
    node: *const lbmkv_node,
    name: *const c_char,
    table_out: *mut *mut lbmkv_table,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let node = handle::try_ref(node, "node")?;
        let name = handle::c_name(name, "table name")?;
        let out = handle::out(table_out, "table_out")?;
        *out = handle::into_raw(TableState::new(node.node.table(name)?)?);
        Ok(())
    })
}

/// The table's name, NUL-terminated, valid until the handle is freed; NULL for NULL.
#[no_mangle]
pub extern "C" fn lbmkv_table_name(table: *const lbmkv_table) -> *const c_char {
    ffi_boundary! { handle::opt_ref(table).map_or(std::ptr::null(), |t| t.name.as_ptr()) }
}

/// Frees a table handle (the table itself stays in the cluster). NULL does nothing.
#[no_mangle]
pub extern "C" fn lbmkv_table_free(table: *mut lbmkv_table) {
    ffi_boundary! { handle::free(table) }
}

/// Sets `key` to `value` on every member of the view; returns once all of
/// them applied it. The previous value goes to `*prev_out` (free it with
/// `lbmkv_bytes_free`; `{NULL, 0}` when there was none) and whether there
/// was one to `*prev_found_out`; both may be NULL. Blocking.
#[no_mangle]
pub extern "C" fn lbmkv_table_put(
    table: *const lbmkv_table,
    key: lbmkv_slice,
    value: lbmkv_slice,
    prev_out: *mut lbmkv_bytes,
    prev_found_out: *mut bool,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = handle::try_ref(table, "table")?;
        let key = key.bytes("key")?;
        let value = value.bytes("value")?;
        let prev = t.table.put(key, value)?;
        value_outputs(prev, prev_out, prev_found_out);
        Ok(())
    })
}

/// `lbmkv_table_put` of a value that expires `ttl_ms` milliseconds after
/// the sequencer wrote it (0: never): then the sequencer deletes it on every
/// member, and reads hide it from its deadline on. Writing the key again
/// with a ttl refreshes it; without one, it stays. Blocking.
#[no_mangle]
pub extern "C" fn lbmkv_table_put_ttl(
    table: *const lbmkv_table,
    key: lbmkv_slice,
    value: lbmkv_slice,
    ttl_ms: u64,
    prev_out: *mut lbmkv_bytes,
    prev_found_out: *mut bool,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = handle::try_ref(table, "table")?;
        let key = key.bytes("key")?;
        let value = value.bytes("value")?;
        let prev = t.table.put_with_ttl(key, value, ttl_of(ttl_ms))?;
        value_outputs(prev, prev_out, prev_found_out);
        Ok(())
    })
}

/// `lbmkv_table_put_many` of values that expire `ttl_ms` milliseconds after
/// the sequencer wrote them (0: never). Blocking.
#[no_mangle]
pub extern "C" fn lbmkv_table_put_many_ttl(
    table: *const lbmkv_table,
    keys: *const lbmkv_slice,
    values: *const lbmkv_slice,
    count: usize,
    ttl_ms: u64,
    previous_out: *mut *mut lbmkv_entries,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = handle::try_ref(table, "table")?;
        let keys = lbmkv_slice::array(keys, count, "keys")?;
        let values = lbmkv_slice::array(values, count, "values")?;
        let entries = keys
            .into_iter()
            .zip(values)
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        let prev = t.table.put_many_with_ttl(entries, ttl_of(ttl_ms))?;
        if let Some(out) = handle::opt_out(previous_out) {
            *out = bytes::entries_out(prev);
        }
        Ok(())
    })
}

/// The time `key` has left before it expires, in milliseconds by this
/// node's clock, in `*ttl_ms_out`; `*found_out` is false (and `*ttl_ms_out`
/// 0) when the key is absent or never expires. Both outputs may be NULL.
/// Local, never blocks on the network.
#[no_mangle]
pub extern "C" fn lbmkv_table_ttl(
    table: *const lbmkv_table,
    key: lbmkv_slice,
    ttl_ms_out: *mut u64,
    found_out: *mut bool,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = handle::try_ref(table, "table")?;
        let key = key.bytes("key")?;
        let left = t.table.ttl(key)?;
        if let Some(out) = handle::opt_out(ttl_ms_out) {
            *out = left.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        }
        if let Some(found) = handle::opt_out(found_out) {
            *found = left.is_some();
        }
        Ok(())
    })
}

/// Sets `count` keys to their values atomically (all or nothing); `keys` and
/// `values` are arrays of `count` slices. The previous entries of the keys
/// that had one go to `*previous_out` (may be NULL; free with
/// `lbmkv_entries_free`). Blocking.
#[no_mangle]
pub extern "C" fn lbmkv_table_put_many(
    table: *const lbmkv_table,
    keys: *const lbmkv_slice,
    values: *const lbmkv_slice,
    count: usize,
    previous_out: *mut *mut lbmkv_entries,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = handle::try_ref(table, "table")?;
        let keys = lbmkv_slice::array(keys, count, "keys")?;
        let values = lbmkv_slice::array(values, count, "values")?;
        let entries = keys
            .into_iter()
            .zip(values)
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        let prev = t.table.put_many(entries)?;
        if let Some(out) = handle::opt_out(previous_out) {
            *out = bytes::entries_out(prev);
        }
        Ok(())
    })
}

/// Reads `key`. With `strong` false the read is local and never touches the
/// network; with `strong` true it is answered by the table's sequencer,
/// ordered after every write acknowledged before it (blocking). Whether the
/// key has a value goes to `*found_out` (required); the value to
/// `*value_out` (may be NULL; `{NULL, 0}` when not found; free with
/// `lbmkv_bytes_free`). A missing key is not an error.
#[no_mangle]
pub extern "C" fn lbmkv_table_get(
    table: *const lbmkv_table,
    key: lbmkv_slice,
    strong: bool,
    value_out: *mut lbmkv_bytes,
    found_out: *mut bool,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = handle::try_ref(table, "table")?;
        let found = handle::out(found_out, "found_out")?;
        let key = key.bytes("key")?;
        match handle::opt_out(value_out) {
            Some(out) if !strong => {
                // The hot path: one copy straight from the table into the output.
                let value = t.table.with_value(key, |v| v.map(lbmkv_bytes::copy_of))?;
                *found = value.is_some();
                *out = value.unwrap_or(lbmkv_bytes::NONE);
            }
            None if !strong => *found = t.table.contains(key)?,
            value_out => {
                let value = t.table.get_strong(key)?;
                *found = value.is_some();
                if let Some(out) = value_out {
                    *out = value.map_or(lbmkv_bytes::NONE, lbmkv_bytes::from_vec);
                }
            }
        }
        Ok(())
    })
}

/// Whether `key` has a live value on this node (local) goes to `*found_out`.
#[no_mangle]
pub extern "C" fn lbmkv_table_contains(
    table: *const lbmkv_table,
    key: lbmkv_slice,
    found_out: *mut bool,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = handle::try_ref(table, "table")?;
        let found = handle::out(found_out, "found_out")?;
        let key = key.bytes("key")?;
        *found = t.table.contains(key)?;
        Ok(())
    })
}

/// Deletes `key` everywhere (a tombstone that merges do not undo). The
/// previous value and whether there was one go to the optional outputs as
/// in `lbmkv_table_put`. Blocking.
#[no_mangle]
pub extern "C" fn lbmkv_table_delete(
    table: *const lbmkv_table,
    key: lbmkv_slice,
    prev_out: *mut lbmkv_bytes,
    prev_found_out: *mut bool,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = handle::try_ref(table, "table")?;
        let key = key.bytes("key")?;
        let prev = t.table.delete(key)?;
        value_outputs(prev, prev_out, prev_found_out);
        Ok(())
    })
}

/// Deletes `count` keys atomically. The previous entries of the keys that
/// existed go to `*previous_out` (may be NULL). Blocking.
#[no_mangle]
pub extern "C" fn lbmkv_table_delete_many(
    table: *const lbmkv_table,
    keys: *const lbmkv_slice,
    count: usize,
    previous_out: *mut *mut lbmkv_entries,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = handle::try_ref(table, "table")?;
        let keys = lbmkv_slice::array(keys, count, "keys")?
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        let prev = t.table.delete_many(keys)?;
        if let Some(out) = handle::opt_out(previous_out) {
            *out = bytes::entries_out(prev);
        }
        Ok(())
    })
}

/// The local entries whose key matches `key_pattern` and whose value matches
/// `value_pattern`, sorted by key, go to `*entries_out` (free with
/// `lbmkv_entries_free`). Patterns are globs on bytes: `*`, `?`, `[...]`
/// and `\` escapes; `{NULL, 0}` matches everything (as `*`).
#[no_mangle]
pub extern "C" fn lbmkv_table_match(
    table: *const lbmkv_table,
    key_pattern: lbmkv_slice,
    value_pattern: lbmkv_slice,
    entries_out: *mut *mut lbmkv_entries,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = handle::try_ref(table, "table")?;
        let out = handle::out(entries_out, "entries_out")?;
        let pattern = |p: lbmkv_slice, what: &str| -> Result<&[u8], Failure> {
            if p.data.is_null() && p.len == 0 {
                Ok(b"*")
            } else {
                p.bytes(what)
            }
        };
        let kp = pattern(key_pattern, "key pattern")?;
        let vp = pattern(value_pattern, "value pattern")?;
        *out = bytes::entries_out(t.table.match_entries(kp, vp)?);
        Ok(())
    })
}

/// Atomic read-modify-write of `key`: `fn` (required) runs on this thread
/// with `user_data`, the key and its current value, and decides the new
/// value (see `lbmkv_update_fn`). Concurrent updates of one key from any
/// node never lose a write. The old value and the new one go to the
/// optional outputs (`{NULL, 0}` and false for absent or deleted); free the
/// bytes with `lbmkv_bytes_free`. Blocking.
#[no_mangle]
pub extern "C" fn lbmkv_table_update(
    table: *const lbmkv_table,
    key: lbmkv_slice,
    r#fn: lbmkv_update_fn,
    user_data: *mut c_void,
    old_out: *mut lbmkv_bytes,
    old_found_out: *mut bool,
    new_out: *mut lbmkv_bytes,
    new_found_out: *mut bool,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = handle::try_ref(table, "table")?;
        let key = key.bytes("key")?;
        let f = r#fn.ok_or_else(|| Failure::null("update function"))?;
        let (old, new) = t
            .table
            .update(key, |k, v| callback::call_update(f, user_data, k, v))?;
        value_outputs(old, old_out, old_found_out);
        value_outputs(new, new_out, new_found_out);
        Ok(())
    })
}

/// `lbmkv_table_update` whose new value expires `ttl_ms` milliseconds
/// after the sequencer wrote it (0: as `lbmkv_table_update`, which keeps
/// the key's deadline); returning the old value writes it again, which
/// refreshes it. Blocking.
#[no_mangle]
pub extern "C" fn lbmkv_table_update_ttl(
    table: *const lbmkv_table,
    key: lbmkv_slice,
    ttl_ms: u64,
    r#fn: lbmkv_update_fn,
    user_data: *mut c_void,
    old_out: *mut lbmkv_bytes,
    old_found_out: *mut bool,
    new_out: *mut lbmkv_bytes,
    new_found_out: *mut bool,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = handle::try_ref(table, "table")?;
        let key = key.bytes("key")?;
        let f = r#fn.ok_or_else(|| Failure::null("update function"))?;
        let (old, new) = t.table.update_with_ttl(key, ttl_of(ttl_ms), |k, v| {
            callback::call_update(f, user_data, k, v)
        })?;
        value_outputs(old, old_out, old_found_out);
        value_outputs(new, new_out, new_found_out);
        Ok(())
    })
}

/// Atomic update of the whole table: `fn` (required) runs on this thread for
/// every entry, in key order, and decides each new value (see
/// `lbmkv_update_fn`); everything is applied at once or not at all. The old
/// and new versions of the entries that changed go to `*old_out` and
/// `*new_out` (each may be NULL; deleted keys appear only in `*old_out`).
/// Blocking.
#[no_mangle]
pub extern "C" fn lbmkv_table_update_all(
    table: *const lbmkv_table,
    r#fn: lbmkv_update_fn,
    user_data: *mut c_void,
    old_out: *mut *mut lbmkv_entries,
    new_out: *mut *mut lbmkv_entries,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = handle::try_ref(table, "table")?;
        let f = r#fn.ok_or_else(|| Failure::null("update function"))?;
        let (old, new) = t
            .table
            .update_all(|k, v| callback::call_update(f, user_data, k, Some(v)))?;
        if let Some(out) = handle::opt_out(old_out) {
            *out = bytes::entries_out(old);
        }
        if let Some(out) = handle::opt_out(new_out) {
            *out = bytes::entries_out(new);
        }
        Ok(())
    })
}

/// The number of live entries on this node goes to `*len_out`.
#[no_mangle]
pub extern "C" fn lbmkv_table_len(
    table: *const lbmkv_table,
    len_out: *mut usize,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = handle::try_ref(table, "table")?;
        let out = handle::out(len_out, "len_out")?;
        *out = t.table.len()?;
        Ok(())
    })
}

/// Sets this node's conflict handler for the table (replacing, and so
/// dropping, the previous one), or removes it when `fn` is NULL. The
/// `user_data_free` rule of `lbmkv_table_create` applies.
#[no_mangle]
pub extern "C" fn lbmkv_table_set_conflict_handler(
    table: *const lbmkv_table,
    r#fn: lbmkv_conflict_fn,
    user_data: *mut c_void,
    user_data_free: lbmkv_free_fn,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let data = UserData::new(user_data, user_data_free);
        let t = handle::try_ref(table, "table")?;
        t.table
            .set_conflict_handler(callback::conflict_handler(r#fn, data))?;
        Ok(())
    })
}

/// The table's conflict log (losing versions of settled conflicts, oldest
/// first) as a JSON array of objects with `key`, `kept`, `lost` (byte
/// arrays, `null` for deleted), `peer` and `at_ms`. Free with `lbmkv_bytes_free`.
#[no_mangle]
pub extern "C" fn lbmkv_table_conflicts_json(
    table: *const lbmkv_table,
    json_out: *mut lbmkv_bytes,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let t = handle::try_ref(table, "table")?;
        let out = handle::out(json_out, "json_out")?;
        let json = serde_json::to_vec(&t.table.conflicts()?).map_err(|e| Failure {
            status: lbmkv_status::Internal,
            message: format!("cannot encode the conflict log: {e}"),
        })?;
        *out = lbmkv_bytes::from_vec(json);
        Ok(())
    })
}
