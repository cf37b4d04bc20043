//! The fast local read. A call through napi-rs's class machinery and a fresh
//! `Buffer` per value cost more than the lookup itself, so the JavaScript layer
//! reads through a plain function that copies the value into a slab `Buffer` it
//! owns and hands out views of it, as `Buffer.allocUnsafe` does with its pool:
//!
//! `getInto(handle, key, slab, offset)` returns the value's length when it was
//! written at `slab[offset..]`, `-1` when the key is absent, and `-2 - length`
//! when the value does not fit (the caller takes a new slab and retries).
//! `handle` is made once per table by `tableHandle(table)`.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;

use crate::conv::{self, Raw};
use crate::error::{invalid, Result};
use crate::table::Table;

/// Marks the externals made here, so that no other value passes for one.
static HANDLE_TAG: sys::napi_type_tag = sys::napi_type_tag {
    lower: 0x6c62_6d6b_765f_7462,
    upper: 0x3c1f_8a52_d6e4_0b97,
};

/// The finalizer of the externals made by `table_handle`.
///
/// # Safety
/// Only for Node-API, as the finalizer of an external made by `table_handle`:
/// `data` must be the `Box<lbmkv::Table>` pointer that external was created
/// with, finalized once and never used afterwards.
unsafe extern "C" fn drop_handle(_env: sys::napi_env, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: `drop_handle` is only the finalizer of the externals of
    // `table_handle`, whose data is a `Box<lbmkv::Table>` given to Node-API;
    // Node-API runs a finalizer once, after the last JavaScript reference to
    // the external is gone, so nothing can reach the table through it again.
    drop(unsafe { Box::from_raw(data.cast::<lbmkv::Table>()) });
}

/// A handle for `getInto` on `table`.
#[napi(js_name = "tableHandle", skip_typescript)]
pub fn table_handle(env: Env, table: &Table) -> Result<Raw> {
    let env = env.raw();
    let data = Box::into_raw(Box::new(table.inner.clone()));
    let mut out = ptr::null_mut();
    // SAFETY: `env` is the env napi-rs passed this function, valid for this
    // call; `data` is a live box whose ownership passes to the external (freed
    // by `drop_handle`), and `out` is a live local.
    let status = unsafe {
        sys::napi_create_external(
            env,
            data.cast(),
            Some(drop_handle),
            ptr::null_mut(),
            &mut out,
        )
    };
    if status != sys::Status::napi_ok {
        // SAFETY: `data` came from `Box::into_raw` above, and the failed
        // call did not take ownership of it (no external exists that could
        // run `drop_handle`), so this is its only owner.
        drop(unsafe { Box::from_raw(data) });
        conv::check(status, "napi_create_external")?;
    }
    conv::check(
        // SAFETY: `env` is valid for this call and `out` the external just
        // created in it; `HANDLE_TAG` is a static, so it outlives the tag.
        unsafe { sys::napi_type_tag_object(env, out, &HANDLE_TAG) },
        "napi_type_tag_object",
    )?;
    Ok(Raw(out))
}

/// Registers `getInto` as a raw Node-API function.
#[napi(module_exports)]
pub fn register(exports: Object, env: Env) -> napi::Result<()> {
    let mut f = ptr::null_mut();
    let name = c"getInto";
    // SAFETY: `env` is the env napi-rs passed this function, valid for this
    // call; `name` is a NUL-terminated static string of the length given,
    // `get_into` has the signature of a Node-API callback, and `f` is a live
    // local.
    let status = unsafe {
        sys::napi_create_function(
            env.raw(),
            name.as_ptr(),
            name.count_bytes() as isize,
            Some(get_into),
            ptr::null_mut(),
            &mut f,
        )
    };
    if status != sys::Status::napi_ok {
        return Err(napi::Error::new(
            Status::GenericFailure,
            "cannot create getInto",
        ));
    }
    let status =
        // SAFETY: `env` and `exports` are what napi-rs passed this function,
        // valid for this call; `name` is NUL-terminated and `f` the function
        // just created.
        unsafe { sys::napi_set_named_property(env.raw(), exports.raw(), name.as_ptr(), f) };
    if status != sys::Status::napi_ok {
        return Err(napi::Error::new(
            Status::GenericFailure,
            "cannot export getInto",
        ));
    }
    Ok(())
}

/// `getInto(handle, key, slab, offset)`, a raw Node-API function (see the
/// module documentation). Panics are caught and thrown as JavaScript errors.
///
/// # Safety
/// Only Node-API may call it, on the JavaScript thread, with the env and
/// callback info of the current call.
unsafe extern "C" fn get_into(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> sys::napi_value {
    // SAFETY: `env` and `info` are Node-API's for this call (this function's
    // contract), which is all `get_into_inner` requires.
    let result = catch_unwind(AssertUnwindSafe(|| unsafe { get_into_inner(env, info) }));
    let err = match result {
        Ok(Ok(v)) => return v,
        Ok(Err(e)) => e,
        Err(_) => crate::error::JsErr::new(
            crate::error::Code(lbmkv::ErrorKind::Internal.code()),
            "getInto panicked",
        ),
    };
    // SAFETY: `env` is valid for this call (this function's contract), which
    // has not returned yet.
    unsafe { JsError::from(err).throw_into(env) };
    ptr::null_mut()
}

/// Keys up to this many UTF-16 units are encoded on the stack.
const STACK_KEY: usize = 128;

/// The work of `getInto`; an error is thrown by the caller.
///
/// # Safety
/// `env` and `info` must be those Node-API passed to the current call of
/// `get_into`, on the JavaScript thread.
unsafe fn get_into_inner(
    env: sys::napi_env,
    info: sys::napi_callback_info,
) -> Result<sys::napi_value> {
    let mut argc = 4usize;
    let mut argv = [ptr::null_mut(); 4];
    conv::check(
        // SAFETY: `env` and `info` come from Node-API for the current call of
        // `getInto` (this function's contract); `argc` holds the capacity of
        // `argv`, a live local array of that many handles, and NULL is allowed
        // for the two outputs not wanted.
        unsafe {
            sys::napi_get_cb_info(
                env,
                info,
                &mut argc,
                argv.as_mut_ptr(),
                ptr::null_mut(),
                ptr::null_mut(),
            )
        },
        "napi_get_cb_info",
    )?;
    if argc < 4 {
        return Err(invalid(
            "getInto(handle, key, slab, offset) takes 4 arguments",
        ));
    }
    let mut tagged = false;
    // SAFETY: `env` is valid for this call and `argv[0]` one of its arguments
    // (`argc` >= 4, checked above); `HANDLE_TAG` is a static and `tagged` a
    // live local.
    let status = unsafe { sys::napi_check_object_type_tag(env, argv[0], &HANDLE_TAG, &mut tagged) };
    if status != sys::Status::napi_ok || !tagged {
        return Err(invalid("not a table handle"));
    }
    let mut data: *mut c_void = ptr::null_mut();
    conv::check(
        // SAFETY: `env` is valid for this call and `argv[0]` is an external
        // (its type tag, checked above, is only ever put on the externals of
        // `table_handle`); `data` is a live local.
        unsafe { sys::napi_get_value_external(env, argv[0], &mut data) },
        "napi_get_value_external",
    )?;
    // SAFETY: the type tag is only put on the externals of `table_handle`, so
    // `data` is the `Box<lbmkv::Table>` it made; the external is an argument
    // of this call, so it is reachable and its finalizer (the only place the
    // box is freed) cannot run before this call returns. The table is only
    // read through a shared reference.
    let table = unsafe { &*data.cast::<lbmkv::Table>() };

    let mut stack = [0u8; STACK_KEY * 3 + 1];
    let mut heap = Vec::new();
    // SAFETY: `env` is valid for this call and `argv[1]` one of its arguments.
    let key: &[u8] = if unsafe { conv::type_of(env, argv[1]) }? == sys::ValueType::napi_string {
        let mut units = 0usize;
        conv::check(
            // SAFETY: `env` is valid for this call and `argv[1]` a string
            // (checked above); a NULL buffer of size 0 only asks for the
            // length, written to the live local `units`.
            unsafe {
                sys::napi_get_value_string_utf16(env, argv[1], ptr::null_mut(), 0, &mut units)
            },
            "napi_get_value_string_utf16",
        )?;
        if units <= STACK_KEY {
            // Each UTF-16 unit takes at most 3 bytes of UTF-8, so it fits.
            let mut n = 0usize;
            conv::check(
                // SAFETY: `env` is valid for this call and `argv[1]` a string;
                // `stack` is a live local array of `stack.len()` bytes, the
                // size passed, so Node-API writes at most that many, the NUL
                // included.
                unsafe {
                    sys::napi_get_value_string_utf8(
                        env,
                        argv[1],
                        stack.as_mut_ptr().cast(),
                        stack.len(),
                        &mut n,
                    )
                },
                "napi_get_value_string_utf8",
            )?;
            &stack[..n.min(stack.len() - 1)]
        } else {
            // SAFETY: `env` is valid for this call and `argv[1]` a string
            // (checked above).
            unsafe { conv::read_string(env, argv[1], &mut heap) }?;
            &heap
        }
    } else {
        // SAFETY: `env` is valid for this call and `argv[1]` one of its
        // arguments. Borrowed bytes are used only within this call, while no
        // JavaScript runs that could detach or change them.
        match unsafe { conv::bytes(env, argv[1], "key") }? {
            conv::Bytes::Borrowed(b) => b,
            conv::Bytes::Owned(v) => {
                heap = v;
                &heap
            }
        }
    };

    let mut slab_len = 0usize;
    let mut slab_ptr: *mut c_void = ptr::null_mut();
    let mut kind = 0;
    let mut is_typed = false;
    conv::check(
        // SAFETY: `env` is valid for this call and `argv[2]` one of its
        // arguments; `is_typed` is a live local.
        unsafe { sys::napi_is_typedarray(env, argv[2], &mut is_typed) },
        "napi_is_typedarray",
    )?;
    if is_typed {
        conv::check(
            // SAFETY: `env` is valid for this call and `argv[2]` a typed array
            // (checked above); the out-pointers are live locals, and NULL is
            // allowed for the two outputs not wanted.
            unsafe {
                sys::napi_get_typedarray_info(
                    env,
                    argv[2],
                    &mut kind,
                    &mut slab_len,
                    &mut slab_ptr,
                    ptr::null_mut(),
                    ptr::null_mut(),
                )
            },
            "napi_get_typedarray_info",
        )?;
    }
    if !is_typed || kind != sys::TypedarrayType::uint8_array {
        return Err(invalid("slab must be a Buffer"));
    }
    let mut offset = 0u32;
    conv::check(
        // SAFETY: `env` is valid for this call and `argv[3]` one of its
        // arguments; `offset` is a live local.
        unsafe { sys::napi_get_value_uint32(env, argv[3], &mut offset) },
        "napi_get_value_uint32",
    )?;
    let offset = (offset as usize).min(slab_len);
    // A key that is itself a view of the slab (made from a value's `.buffer`)
    // must not be written over while it is borrowed: read it from a copy.
    let slab_range = slab_ptr as usize..(slab_ptr as usize).saturating_add(slab_len);
    let key_range = key.as_ptr() as usize..(key.as_ptr() as usize).saturating_add(key.len());
    let copied;
    let key: &[u8] = if key_range.start < slab_range.end && slab_range.start < key_range.end {
        copied = key.to_vec();
        &copied
    } else {
        key
    };

    let n: i64 = table
        .with_value(key, |v| match v {
            None => -1,
            Some(v) if v.len() <= slab_len - offset => {
                if !v.is_empty() {
                    // SAFETY: `slab_ptr` is the start of a Uint8Array of
                    // `slab_len` bytes (an argument of this call, so alive),
                    // `offset <= slab_len` and `v.len() <= slab_len - offset`
                    // (both checked above), so the range written lies inside
                    // it, and `v` is not empty, so neither is the slab and
                    // `slab_ptr` is not NULL. `v` is the table's own memory and the key that may
                    // view the slab was copied above, so nothing overlaps, and
                    // no JavaScript runs during this call to detach the slab.
                    unsafe {
                        ptr::copy_nonoverlapping(
                            v.as_ptr(),
                            slab_ptr.cast::<u8>().add(offset),
                            v.len(),
                        )
                    };
                }
                v.len() as i64
            }
            Some(v) => -2 - v.len() as i64,
        })
        .map_err(crate::error::from_core)?;
    let mut out = ptr::null_mut();
    conv::check(
        // SAFETY: `env` is valid for this call (this function's contract);
        // `out` is a live local.
        unsafe { sys::napi_create_int64(env, n, &mut out) },
        "napi_create_int64",
    )?;
    Ok(out)
}
