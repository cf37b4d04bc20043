//! Conversions between JavaScript values and bytes, through raw Node-API calls
//! so that the hot paths pay for nothing they do not use.
//!
//! Keys and values come in as `Buffer`, `Uint8Array` or `string` (UTF-8) and
//! go out as `Buffer`s that own a copy of the bytes.

use std::ptr;

use napi::bindgen_prelude::*;
use napi::sys;

use crate::error::{invalid, type_error, JsErr, Result};

/// A JavaScript value handed through napi-rs unchanged (promises, arrays and
/// objects built here).
pub struct Raw(pub sys::napi_value);

impl ToNapiValue for Raw {
    unsafe fn to_napi_value(_env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        Ok(val.0)
    }
}

impl TypeName for Raw {
    fn type_name() -> &'static str {
        "unknown"
    }
    fn value_type() -> ValueType {
        ValueType::Unknown
    }
}

/// Fails with an internal error when a Node-API call did not succeed.
pub fn check(status: sys::napi_status, what: &str) -> Result<()> {
    if status == sys::Status::napi_ok {
        Ok(())
    } else {
        Err(JsErr::new(
            crate::error::Code(lbmkv::ErrorKind::Internal.code()),
            format!("Node-API call {what} failed with status {status}"),
        ))
    }
}

/// Bytes read from a JavaScript value: borrowed from a typed array, or the
/// UTF-8 encoding of a string.
pub enum Bytes<'a> {
    /// The contents of a `Uint8Array`, valid while the value is alive.
    Borrowed(&'a [u8]),
    /// A string's UTF-8 encoding.
    Owned(Vec<u8>),
}

impl Bytes<'_> {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Borrowed(b) => b,
            Bytes::Owned(v) => v,
        }
    }

    /// The bytes as an owned vector.
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            Bytes::Borrowed(b) => b.to_vec(),
            Bytes::Owned(v) => v,
        }
    }
}

/// The `typeof` of a value.
///
/// # Safety
/// `env` and `v` must be valid for the current call.
pub unsafe fn type_of(env: sys::napi_env, v: sys::napi_value) -> Result<i32> {
    let mut t = 0;
    // SAFETY: `env` and `v` are valid for this call (this function's contract);
    // `t` is a live local for the result.
    check(unsafe { sys::napi_typeof(env, v, &mut t) }, "napi_typeof")?;
    Ok(t)
}

/// Whether a value is `null` or `undefined`.
///
/// # Safety
/// `env` and `v` must be valid for the current call.
pub unsafe fn is_nullish(env: sys::napi_env, v: sys::napi_value) -> Result<bool> {
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    let t = unsafe { type_of(env, v) }?;
    Ok(t == sys::ValueType::napi_undefined || t == sys::ValueType::napi_null)
}

fn type_name(t: i32) -> &'static str {
    match t {
        sys::ValueType::napi_undefined => "undefined",
        sys::ValueType::napi_null => "null",
        sys::ValueType::napi_boolean => "a boolean",
        sys::ValueType::napi_number => "a number",
        sys::ValueType::napi_string => "a string",
        sys::ValueType::napi_symbol => "a symbol",
        sys::ValueType::napi_function => "a function",
        sys::ValueType::napi_external => "an external",
        sys::ValueType::napi_bigint => "a bigint",
        _ => "an object",
    }
}

/// Reads a string as UTF-8 into `buf` (cleared first). Lone surrogates become
/// U+FFFD, as everywhere in Node.js.
///
/// # Safety
/// `env` and `v` must be valid for the current call and `v` must be a string.
pub unsafe fn read_string(env: sys::napi_env, v: sys::napi_value, buf: &mut Vec<u8>) -> Result<()> {
    let mut len = 0usize;
    check(
        // SAFETY: `env` and `v` are valid for this call (this function's
        // contract) and `v` is a string; a NULL buffer of size 0 only asks for
        // the length, written to the local `len`.
        unsafe { sys::napi_get_value_string_utf8(env, v, ptr::null_mut(), 0, &mut len) },
        "napi_get_value_string_utf8",
    )?;
    buf.clear();
    buf.reserve(len + 1);
    let mut written = 0usize;
    check(
        // SAFETY: as above; `buf` has room for `len + 1` bytes (reserved
        // above), the size passed, so Node-API writes at most that many, the
        // NUL included.
        unsafe {
            sys::napi_get_value_string_utf8(env, v, buf.as_mut_ptr().cast(), len + 1, &mut written)
        },
        "napi_get_value_string_utf8",
    )?;
    // SAFETY: `buf` has a capacity of at least `len + 1` (reserved above),
    // and Node-API initialized its first `written` bytes; `min(len)` keeps the
    // new length within that capacity whatever `written` says.
    unsafe { buf.set_len(written.min(len)) };
    Ok(())
}

/// The bytes of a `Buffer`, `Uint8Array` or string; anything else is an
/// `INVALID_ARGUMENT` error naming `what`.
///
/// # Safety
/// `env` and `v` must be valid for the current call; the borrowed bytes must
/// not outlive it.
pub unsafe fn bytes<'a>(env: sys::napi_env, v: sys::napi_value, what: &str) -> Result<Bytes<'a>> {
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    let t = unsafe { type_of(env, v) }?;
    if t == sys::ValueType::napi_string {
        let mut buf = Vec::new();
        // SAFETY: `v` is a string (checked above) and, with `env`, valid for
        // this call.
        unsafe { read_string(env, v, &mut buf) }?;
        return Ok(Bytes::Owned(buf));
    }
    if t == sys::ValueType::napi_object {
        // SAFETY: `env` and `v` are valid for this call (this function's
        // contract); the slice borrows `v`'s bytes for `'a`, which the caller
        // must not let outlive the call (the same contract).
        if let Some(b) = unsafe { uint8_array(env, v) }? {
            return Ok(Bytes::Borrowed(b));
        }
    }
    Err(type_error(format!(
        "{what} must be a Buffer, Uint8Array or string, got {}",
        // SAFETY: `env` and `v` are valid for this call (this function's
        // contract).
        unsafe { describe(env, v, t) }
    )))
}

/// Like [`bytes`], copied.
///
/// # Safety
/// As [`bytes`].
pub unsafe fn bytes_vec(env: sys::napi_env, v: sys::napi_value, what: &str) -> Result<Vec<u8>> {
    // SAFETY: `env` and `v` are valid for this call (this function's contract);
    // the borrowed bytes are copied before it returns.
    Ok(unsafe { bytes(env, v, what) }?.into_vec())
}

/// The contents of `v` when it is a `Uint8Array` (a `Buffer` is one).
///
/// # Safety
/// `env` and `v` must be valid for the current call; the slice must not outlive it.
pub unsafe fn uint8_array<'a>(env: sys::napi_env, v: sys::napi_value) -> Result<Option<&'a [u8]>> {
    let mut is_typed = false;
    check(
        // SAFETY: `env` and `v` are valid for this call (this function's
        // contract); `is_typed` is a live local.
        unsafe { sys::napi_is_typedarray(env, v, &mut is_typed) },
        "napi_is_typedarray",
    )?;
    if !is_typed {
        return Ok(None);
    }
    let mut kind = 0;
    let mut len = 0usize;
    let mut data: *mut std::ffi::c_void = ptr::null_mut();
    check(
        // SAFETY: as above, and `v` is a typed array; the out-pointers are live
        // locals, or NULL for the two outputs not wanted, which Node-API
        // allows.
        unsafe {
            sys::napi_get_typedarray_info(
                env,
                v,
                &mut kind,
                &mut len,
                &mut data,
                ptr::null_mut(),
                ptr::null_mut(),
            )
        },
        "napi_get_typedarray_info",
    )?;
    if kind != sys::TypedarrayType::uint8_array {
        return Ok(None);
    }
    if data.is_null() || len == 0 {
        return Ok(Some(&[]));
    }
    // SAFETY: `data` is not NULL and `len` is not 0 (checked above), and
    // Node-API reports `len` readable bytes of a Uint8Array at `data` (u8
    // needs no alignment, and a typed array is never longer than isize::MAX).
    // `v` is valid for this call, which keeps the array alive, and the caller
    // must not let the slice outlive the call (this function's contract);
    // only JavaScript could detach or write the buffer, and none runs while
    // the caller uses the slice.
    Ok(Some(unsafe {
        std::slice::from_raw_parts(data.cast::<u8>(), len)
    }))
}

/// A short description of a value for error messages ("a number", "an Int16Array").
///
/// # Safety
/// `env` and `v` must be valid for the current call.
unsafe fn describe(env: sys::napi_env, v: sys::napi_value, t: i32) -> &'static str {
    if t == sys::ValueType::napi_object {
        let mut is_array = false;
        // SAFETY: `env` and `v` are valid for this call (this function's
        // contract); `is_array` is a live local, left false should the call
        // fail.
        unsafe { sys::napi_is_array(env, v, &mut is_array) };
        if is_array {
            return "an array";
        }
        let mut is_typed = false;
        // SAFETY: `env` and `v` are valid for this call (this function's
        // contract); `is_typed` is a live local, left false should the call
        // fail.
        unsafe { sys::napi_is_typedarray(env, v, &mut is_typed) };
        if is_typed {
            return "a typed array other than Uint8Array";
        }
        let mut is_promise = false;
        // SAFETY: `env` and `v` are valid for this call (this function's
        // contract); `is_promise` is a live local, left false should the call
        // fail.
        unsafe { sys::napi_is_promise(env, v, &mut is_promise) };
        if is_promise {
            return "a Promise";
        }
    }
    type_name(t)
}

/// Describes a value for an error message.
///
/// # Safety
/// `env` and `v` must be valid for the current call.
pub unsafe fn describe_value(env: sys::napi_env, v: sys::napi_value) -> &'static str {
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    match unsafe { type_of(env, v) } {
        // SAFETY: `env` and `v` are valid for this call (this function's
        // contract).
        Ok(t) => unsafe { describe(env, v, t) },
        Err(_) => "an unreadable value",
    }
}

/// A string argument; anything else is an `INVALID_ARGUMENT` error naming `what`.
///
/// # Safety
/// `env` and `v` must be valid for the current call.
pub unsafe fn string(env: sys::napi_env, v: sys::napi_value, what: &str) -> Result<String> {
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    let t = unsafe { type_of(env, v) }?;
    if t != sys::ValueType::napi_string {
        return Err(type_error(format!(
            "{what} must be a string, got {}",
            // SAFETY: `env` and `v` are valid for this call (this function's
            // contract).
            unsafe { describe(env, v, t) }
        )));
    }
    let mut buf = Vec::new();
    // SAFETY: `v` is a string (checked above) and, with `env`, valid for this
    // call.
    unsafe { read_string(env, v, &mut buf) }?;
    String::from_utf8(buf).map_err(|_| invalid(format!("{what} is not valid UTF-8")))
}

/// A number argument; anything else is a `TypeError` naming `what`.
///
/// # Safety
/// `env` and `v` must be valid for the current call.
pub unsafe fn number_arg(env: sys::napi_env, v: sys::napi_value, what: &str) -> Result<f64> {
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    let t = unsafe { type_of(env, v) }?;
    if t != sys::ValueType::napi_number {
        return Err(type_error(format!(
            "{what} must be a number, got {}",
            // SAFETY: `env` and `v` are valid for this call (this function's
            // contract).
            unsafe { describe(env, v, t) }
        )));
    }
    let mut n = 0f64;
    check(
        // SAFETY: `env` and `v` are valid for this call and `v` is a number
        // (checked above); `n` is a live local.
        unsafe { sys::napi_get_value_double(env, v, &mut n) },
        "napi_get_value_double",
    )?;
    Ok(n)
}

/// A new `Buffer` holding a copy of `data`.
///
/// # Safety
/// `env` must be valid for the current call.
pub unsafe fn buffer(env: sys::napi_env, data: &[u8]) -> Result<sys::napi_value> {
    let mut out = ptr::null_mut();
    let mut dst: *mut std::ffi::c_void = ptr::null_mut();
    check(
        // SAFETY: `env` is valid for this call (this function's contract);
        // `dst` and `out` are live locals.
        unsafe { sys::napi_create_buffer(env, data.len(), &mut dst, &mut out) },
        "napi_create_buffer",
    )?;
    if !data.is_empty() && !dst.is_null() {
        // SAFETY: `dst` is not NULL (checked above) and is the start of the
        // buffer Node-API just allocated with `data.len()` bytes, so the write
        // stays inside it and cannot overlap `data`, which Rust borrows.
        unsafe { ptr::copy_nonoverlapping(data.as_ptr(), dst.cast::<u8>(), data.len()) };
    }
    Ok(out)
}

/// `null`.
///
/// # Safety
/// `env` must be valid for the current call.
pub unsafe fn null(env: sys::napi_env) -> Result<sys::napi_value> {
    let mut out = ptr::null_mut();
    check(
        // SAFETY: `env` is valid for this call (this function's contract);
        // `out` is a live local.
        unsafe { sys::napi_get_null(env, &mut out) },
        "napi_get_null",
    )?;
    Ok(out)
}

/// `undefined`.
///
/// # Safety
/// `env` must be valid for the current call.
pub unsafe fn undefined(env: sys::napi_env) -> Result<sys::napi_value> {
    let mut out = ptr::null_mut();
    check(
        // SAFETY: `env` is valid for this call (this function's contract);
        // `out` is a live local.
        unsafe { sys::napi_get_undefined(env, &mut out) },
        "napi_get_undefined",
    )?;
    Ok(out)
}

/// A `Buffer`, or `null` for `None`.
///
/// # Safety
/// `env` must be valid for the current call.
pub unsafe fn opt_buffer(env: sys::napi_env, data: Option<&[u8]>) -> Result<sys::napi_value> {
    match data {
        // SAFETY: `env` is valid for this call (this function's contract).
        Some(d) => unsafe { buffer(env, d) },
        // SAFETY: `env` is valid for this call (this function's contract).
        None => unsafe { null(env) },
    }
}

/// A JavaScript string.
///
/// # Safety
/// `env` must be valid for the current call.
pub unsafe fn js_string(env: sys::napi_env, s: &str) -> Result<sys::napi_value> {
    let mut out = ptr::null_mut();
    check(
        // SAFETY: `env` is valid for this call (this function's contract); `s`
        // points at `s.len()` bytes of UTF-8 that outlive the call (a `str` is
        // never longer than isize::MAX), and `out` is a live local.
        unsafe { sys::napi_create_string_utf8(env, s.as_ptr().cast(), s.len() as isize, &mut out) },
        "napi_create_string_utf8",
    )?;
    Ok(out)
}

/// A JavaScript number.
///
/// # Safety
/// `env` must be valid for the current call.
pub unsafe fn number(env: sys::napi_env, n: f64) -> Result<sys::napi_value> {
    let mut out = ptr::null_mut();
    check(
        // SAFETY: `env` is valid for this call (this function's contract);
        // `out` is a live local.
        unsafe { sys::napi_create_double(env, n, &mut out) },
        "napi_create_double",
    )?;
    Ok(out)
}

/// A JavaScript array of the given values.
///
/// # Safety
/// `env` and the values must be valid for the current call.
pub unsafe fn array(env: sys::napi_env, items: &[sys::napi_value]) -> Result<sys::napi_value> {
    let mut out = ptr::null_mut();
    check(
        // SAFETY: `env` is valid for this call (this function's contract);
        // `out` is a live local.
        unsafe { sys::napi_create_array_with_length(env, items.len(), &mut out) },
        "napi_create_array_with_length",
    )?;
    for (i, item) in items.iter().enumerate() {
        check(
            // SAFETY: `env` and every item are valid for this call (this
            // function's contract), and `out` is the array just created in it.
            unsafe { sys::napi_set_element(env, out, i as u32, *item) },
            "napi_set_element",
        )?;
    }
    Ok(out)
}

/// An array of `[key, value]` Buffer pairs.
///
/// # Safety
/// `env` must be valid for the current call.
pub unsafe fn pairs(env: sys::napi_env, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<sys::napi_value> {
    let mut items = Vec::with_capacity(entries.len());
    for (k, v) in entries {
        // SAFETY: `env` is valid for this call (this function's contract).
        let pair = [unsafe { buffer(env, k) }?, unsafe { buffer(env, v) }?];
        // SAFETY: `env` is valid for this call and the two values were just
        // created in it.
        items.push(unsafe { array(env, &pair) }?);
    }
    // SAFETY: `env` is valid for this call and the pair arrays were just
    // created in it.
    unsafe { array(env, &items) }
}

/// Reads the elements of a JavaScript array.
///
/// # Safety
/// `env` and `v` must be valid for the current call.
pub unsafe fn array_items(
    env: sys::napi_env,
    v: sys::napi_value,
    what: &str,
) -> Result<Vec<sys::napi_value>> {
    let mut is_array = false;
    check(
        // SAFETY: `env` and `v` are valid for this call (this function's
        // contract); `is_array` is a live local.
        unsafe { sys::napi_is_array(env, v, &mut is_array) },
        "napi_is_array",
    )?;
    if !is_array {
        return Err(type_error(format!(
            "{what} must be an array, got {}",
            // SAFETY: `env` and `v` are valid for this call (this function's
            // contract).
            unsafe { describe_value(env, v) }
        )));
    }
    let mut len = 0u32;
    check(
        // SAFETY: `env` and `v` are valid for this call (this function's
        // contract) and `v` is an array (checked above); `len` is a live local.
        unsafe { sys::napi_get_array_length(env, v, &mut len) },
        "napi_get_array_length",
    )?;
    let mut out = Vec::with_capacity(len as usize);
    for i in 0..len {
        let mut item = ptr::null_mut();
        check(
            // SAFETY: `env` and `v` are valid for this call (this function's
            // contract) and `v` is an array; `item` is a live local.
            unsafe { sys::napi_get_element(env, v, i, &mut item) },
            "napi_get_element",
        )?;
        out.push(item);
    }
    Ok(out)
}

/// Whether `v` is a JavaScript array.
///
/// # Safety
/// `env` and `v` must be valid for the current call.
pub unsafe fn is_array(env: sys::napi_env, v: sys::napi_value) -> Result<bool> {
    let mut is_array = false;
    check(
        // SAFETY: `env` and `v` are valid for this call (this function's
        // contract); `is_array` is a live local.
        unsafe { sys::napi_is_array(env, v, &mut is_array) },
        "napi_is_array",
    )?;
    Ok(is_array)
}

/// Reads a named property.
///
/// # Safety
/// `env` and `obj` must be valid for the current call; `obj` must be an object.
pub unsafe fn property(
    env: sys::napi_env,
    obj: sys::napi_value,
    name: &std::ffi::CStr,
) -> Result<sys::napi_value> {
    let mut out = ptr::null_mut();
    check(
        // SAFETY: `env` and `obj` are valid for this call and `obj` is an
        // object (this function's contract); `name` is NUL-terminated and
        // outlives the call, `out` is a live local.
        unsafe { sys::napi_get_named_property(env, obj, name.as_ptr(), &mut out) },
        "napi_get_named_property",
    )?;
    Ok(out)
}

/// Sets a named property.
///
/// # Safety
/// `env`, `obj` and `value` must be valid for the current call.
pub unsafe fn set_property(
    env: sys::napi_env,
    obj: sys::napi_value,
    name: &std::ffi::CStr,
    value: sys::napi_value,
) -> Result<()> {
    check(
        // SAFETY: `env`, `obj` and `value` are valid for this call (this
        // function's contract); `name` is NUL-terminated and outlives the call.
        unsafe { sys::napi_set_named_property(env, obj, name.as_ptr(), value) },
        "napi_set_named_property",
    )
}

/// A new empty object.
///
/// # Safety
/// `env` must be valid for the current call.
pub unsafe fn object(env: sys::napi_env) -> Result<sys::napi_value> {
    let mut out = ptr::null_mut();
    check(
        // SAFETY: `env` is valid for this call (this function's contract);
        // `out` is a live local.
        unsafe { sys::napi_create_object(env, &mut out) },
        "napi_create_object",
    )?;
    Ok(out)
}

/// The own enumerable string keys of an object with their values, in order.
///
/// # Safety
/// `env` and `obj` must be valid for the current call; `obj` must be an object.
pub unsafe fn own_entries(
    env: sys::napi_env,
    obj: sys::napi_value,
) -> Result<Vec<(sys::napi_value, sys::napi_value)>> {
    let mut names = ptr::null_mut();
    check(
        // SAFETY: `env` and `obj` are valid for this call and `obj` is an
        // object (this function's contract); `names` is a live local.
        unsafe {
            sys::napi_get_all_property_names(
                env,
                obj,
                sys::KeyCollectionMode::own_only,
                sys::KeyFilter::enumerable | sys::KeyFilter::skip_symbols,
                sys::KeyConversion::numbers_to_strings,
                &mut names,
            )
        },
        "napi_get_all_property_names",
    )?;
    // SAFETY: `env` is valid for this call and `names` is the array Node-API
    // just made in it.
    let keys = unsafe { array_items(env, names, "property names") }?;
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let mut v = ptr::null_mut();
        check(
            // SAFETY: `env` and `obj` are valid for this call (this function's
            // contract), `k` is one of the names just read from `obj`, and `v`
            // is a live local.
            unsafe { sys::napi_get_property(env, obj, k, &mut v) },
            "napi_get_property",
        )?;
        out.push((k, v));
    }
    Ok(out)
}
