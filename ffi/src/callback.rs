//! C callbacks: conflict handlers (on library threads) and update functions
//! (on the calling thread).

use std::ffi::c_void;
use std::sync::Arc;

use lbmkv::{Conflict, ConflictHandler, ErrorKind, Resolution};

use crate::bytes::lbmkv_slice;
use crate::error::{lbmkv_error, lbmkv_status};
use crate::handle::{self, castable};
use crate::panic::{ffi_boundary, ffi_status};

/// Frees the `user_data` of a callback. lbmkv calls it exactly once, when it
/// drops the callback, on whatever thread does that.
pub type lbmkv_free_fn = Option<unsafe extern "C" fn(user_data: *mut c_void)>;

/// A conflict handler. It sees the two concurrent versions of one key in
/// `conflict` and decides by calling `lbmkv_resolution_set_value` or
/// `lbmkv_resolution_set_delete` on `resolution`, then returns true. Returning
/// false (or true without deciding) leaves the conflict unresolved: the
/// deterministic fallback applies and the losing version goes to the
/// table's conflict log.
///
/// It runs on library threads, possibly on several at once: it must be
/// thread-safe, must not block for long (the handler timeout applies) and
/// must not call blocking `lbmkv_*` functions (they return
/// `LBMKV_STATUS_WOULD_DEADLOCK`); local reads such as `lbmkv_table_get`
/// work. It must not unwind (C++ exceptions, `longjmp`) out of the call.
pub type lbmkv_conflict_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        conflict: *const lbmkv_conflict,
        resolution: *mut lbmkv_resolution,
    ) -> bool,
>;

/// An update function, for `lbmkv_table_update` and `lbmkv_table_update_all`.
/// It sees `key` and its current `value` (NULL when the key is absent; never
/// NULL in `update_all`) and decides with `lbmkv_update_set` or
/// `lbmkv_update_delete` on `update`; deciding nothing keeps the value (and
/// writes nothing). Returning false aborts the whole operation with
/// `LBMKV_STATUS_ABORTED`. It runs on the calling thread, possibly more than
/// once (the write is retried when another write got there first), so it
/// should have no side effects beyond its decision. `key` and `value` are
/// valid during the call only.
pub type lbmkv_update_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        key: lbmkv_slice,
        value: *const lbmkv_slice,
        update: *mut lbmkv_update,
    ) -> bool,
>;

/// Two concurrent versions of one key, lent to a conflict handler for the
/// duration of its call.
pub struct lbmkv_conflict {
    _private: [u8; 0],
}

/// Where a conflict handler writes its decision; valid during its call.
pub struct lbmkv_resolution {
    _private: [u8; 0],
}

/// Where an update function writes its decision; valid during its call.
pub struct lbmkv_update {
    _private: [u8; 0],
}

/// An update function's decision.
pub(crate) enum Decision {
    Keep,
    Set(Vec<u8>),
    Delete,
}

castable! {
    lbmkv_conflict => Conflict, Borrowed;
    lbmkv_resolution => Option<Resolution>, Borrowed;
    lbmkv_update => Decision, Borrowed;
}

/// Callback user data with its finalizer, run exactly once on drop.
pub(crate) struct UserData {
    ptr: *mut c_void,
    free: lbmkv_free_fn,
}

// SAFETY: lbmkv never dereferences `ptr`; it only hands it back to the
// application's own functions (handler and finalizer). The header requires
// conflict handlers, their user data and its finalizer to work from any of
// lbmkv's threads, possibly several at once, so moving the pointer to another
// thread breaks nothing the application relies on.
unsafe impl Send for UserData {}
// SAFETY: `&UserData` only gives out a copy of the pointer (`ptr()`), which is
// handed to the application's functions that the header requires to be
// thread-safe (see `Send` above); nothing is mutated through a shared
// reference.
unsafe impl Sync for UserData {}

impl UserData {
    pub(crate) fn new(ptr: *mut c_void, free: lbmkv_free_fn) -> UserData {
        UserData { ptr, free }
    }

    /// The pointer. A method, not a field access, so that closures capture the
    /// whole `UserData` (which is `Send`) rather than the bare pointer.
    pub(crate) fn ptr(&self) -> *mut c_void {
        self.ptr
    }
}

impl Drop for UserData {
    fn drop(&mut self) {
        if let Some(free) = self.free.take() {
            // SAFETY: `free` and `ptr` were registered together by the
            // application, which promised that `free(ptr)` may be called
            // once from any thread; `take()` ensures this is the only call,
            // and nothing uses `ptr` after the drop.
            unsafe { free(self.ptr) }
        }
    }
}

/// A conflict handler calling a C function; `None` when `f` is NULL (the
/// user data is then finalized at once, when `data` drops).
pub(crate) fn conflict_handler(
    f: lbmkv_conflict_fn,
    data: UserData,
) -> Option<Arc<dyn ConflictHandler>> {
    let f = f?;
    Some(lbmkv::handler_fn(move |conflict: &Conflict| {
        let mut decision: Option<Resolution> = None;
        // SAFETY: `f` is the application's handler, registered with `data`
        // and required by the header to be thread-safe and not to unwind. The
        // two lent pointers point at `conflict` and `decision`, which outlive
        // the call, have the types `lbmkv_conflict`/`lbmkv_resolution` map
        // to, and are used by C only through the accessors during the call.
        let resolved = unsafe {
            f(
                data.ptr(),
                handle::lend::<lbmkv_conflict>(conflict),
                handle::lend_mut::<lbmkv_resolution>(&mut decision),
            )
        };
        match (resolved, decision) {
            (true, Some(r)) => Ok(r),
            (true, None) => Err("the C conflict handler returned true without a resolution".into()),
            (false, _) => Err("the C conflict handler returned false".into()),
        }
    }))
}

/// An update function over a C callback, for the core's blocking `update`.
pub(crate) fn call_update(
    f: unsafe extern "C" fn(
        *mut c_void,
        lbmkv_slice,
        *const lbmkv_slice,
        *mut lbmkv_update,
    ) -> bool,
    user_data: *mut c_void,
    key: &[u8],
    value: Option<&[u8]>,
) -> lbmkv::Result<Option<Vec<u8>>> {
    let mut decision = Decision::Keep;
    let value_slice = value.map(lbmkv_slice::of);
    let value_ptr = value_slice
        .as_ref()
        .map_or(std::ptr::null(), |s| s as *const lbmkv_slice);
    // SAFETY: `f` and `user_data` were passed together by the caller of
    // `lbmkv_table_update`/`update_all`, on whose thread this runs, and the
    // header forbids `f` to unwind. `key`, `value_ptr` (NULL or pointing at
    // `value_slice`) and the lent `decision` all outlive the call, which may
    // only use them during it.
    let ok = unsafe {
        f(
            user_data,
            lbmkv_slice::of(key),
            value_ptr,
            handle::lend_mut::<lbmkv_update>(&mut decision),
        )
    };
    if !ok {
        return Err(lbmkv::Error::new(
            ErrorKind::Aborted,
            "the update function returned false",
        ));
    }
    Ok(match decision {
        Decision::Keep => value.map(<[u8]>::to_vec),
        Decision::Set(v) => Some(v),
        Decision::Delete => None,
    })
}

/// The name of the conflict's table (not NUL-terminated), borrowed for the
/// handler's call; `{NULL, 0}` for NULL.
#[no_mangle]
pub extern "C" fn lbmkv_conflict_table(conflict: *const lbmkv_conflict) -> lbmkv_slice {
    ffi_boundary! {
        handle::opt_ref(conflict).map_or(lbmkv_slice::EMPTY, |c| lbmkv_slice::of(c.table.as_bytes()))
    }
}

/// The conflicting key, borrowed for the handler's call; `{NULL, 0}` for NULL.
#[no_mangle]
pub extern "C" fn lbmkv_conflict_key(conflict: *const lbmkv_conflict) -> lbmkv_slice {
    ffi_boundary! {
        handle::opt_ref(conflict).map_or(lbmkv_slice::EMPTY, |c| lbmkv_slice::of(&c.key))
    }
}

/// This node's version: returns true and stores it in `*value_out` (when
/// not NULL), or returns false when this side deleted the key.
#[no_mangle]
pub extern "C" fn lbmkv_conflict_local(
    conflict: *const lbmkv_conflict,
    value_out: *mut lbmkv_slice,
) -> bool {
    ffi_boundary! { side(conflict, value_out, |c| c.local.as_deref()) }
}

/// The other side's version: returns true and stores it in `*value_out`
/// (when not NULL), or returns false when that side deleted the key.
#[no_mangle]
pub extern "C" fn lbmkv_conflict_remote(
    conflict: *const lbmkv_conflict,
    value_out: *mut lbmkv_slice,
) -> bool {
    ffi_boundary! { side(conflict, value_out, |c| c.remote.as_deref()) }
}

fn side(
    conflict: *const lbmkv_conflict,
    value_out: *mut lbmkv_slice,
    pick: impl FnOnce(&Conflict) -> Option<&[u8]>,
) -> bool {
    match handle::opt_ref(conflict).and_then(pick) {
        Some(v) => {
            if let Some(out) = handle::opt_out(value_out) {
                *out = lbmkv_slice::of(v);
            }
            true
        }
        None => false,
    }
}

/// Resolves the conflict with `value` (copied), written everywhere.
#[no_mangle]
pub extern "C" fn lbmkv_resolution_set_value(
    resolution: *mut lbmkv_resolution,
    value: lbmkv_slice,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let r = handle::try_mut(resolution, "resolution")?;
        *r = Some(Resolution::Value(value.bytes("value")?.to_vec()));
        Ok(())
    })
}

/// Resolves the conflict by deleting the key everywhere.
#[no_mangle]
pub extern "C" fn lbmkv_resolution_set_delete(
    resolution: *mut lbmkv_resolution,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        *handle::try_mut(resolution, "resolution")? = Some(Resolution::Delete);
        Ok(())
    })
}

/// Sets the key to `value` (copied).
#[no_mangle]
pub extern "C" fn lbmkv_update_set(
    update: *mut lbmkv_update,
    value: lbmkv_slice,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let u = handle::try_mut(update, "update")?;
        *u = Decision::Set(value.bytes("value")?.to_vec());
        Ok(())
    })
}

/// Deletes the key.
#[no_mangle]
pub extern "C" fn lbmkv_update_delete(
    update: *mut lbmkv_update,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        *handle::try_mut(update, "update")? = Decision::Delete;
        Ok(())
    })
}
