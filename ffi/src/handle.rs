//! How opaque C types map to Rust values.
//!
//! Each opaque C type (`lbmkv_node`, `lbmkv_table`, ...) implements
//! [`Castable`], which names the Rust value behind the pointer and who owns
//! it: [`Owned`] types are a `Box` handed to C and taken back by their
//! `_free`; [`Borrowed`] types point at a value lbmkv owns and lends to a
//! callback for the duration of one call. The helpers below are the only
//! places that turn C pointers into Rust references, and each one checks for
//! NULL first.

use std::ffi::{c_char, CStr};

use crate::error::Failure;

/// Marker: C receives a `Box<RustType>` and gives it back to `_free`.
pub(crate) struct Owned;

/// Marker: C receives a pointer to a value lbmkv owns, valid during one call.
pub(crate) struct Borrowed;

/// Ties an opaque C type to the Rust value behind its pointers.
pub(crate) trait Castable {
    /// [`Owned`] or [`Borrowed`].
    type Ownership;
    /// The Rust value a pointer to `Self` points at.
    type RustType;
}

/// Implements [`Castable`] for opaque C types. The types themselves are
/// written out in full (a zero-sized private field, no `repr(C)`) so that
/// cbindgen, which does not expand macros, declares them as opaque.
macro_rules! castable {
    ( $( $name:ident => $rust:ty, $own:ident; )* ) => {
        $(
            impl $crate::handle::Castable for $name {
                type Ownership = $crate::handle::$own;
                type RustType = $rust;
            }
        )*
    };
}
pub(crate) use castable;

/// Hands `value` to C as an owned pointer.
pub(crate) fn into_raw<C: Castable<Ownership = Owned>>(value: C::RustType) -> *mut C {
    Box::into_raw(Box::new(value)).cast()
}

/// Takes back and drops an owned pointer; NULL does nothing.
pub(crate) fn free<C: Castable<Ownership = Owned>>(ptr: *mut C) {
    if !ptr.is_null() {
        // SAFETY: `C` is `Owned`, so a non-NULL `*mut C` handed to C was made
        // by `into_raw::<C>` from a `Box<C::RustType>`; the header's
        // ownership rule makes the caller give it back to its `_free` exactly
        // once and not use it afterwards, nor race the free with another call.
        drop(unsafe { Box::from_raw(ptr.cast::<C::RustType>()) });
    }
}

/// Lends a Rust value to C for one call.
pub(crate) fn lend<C: Castable<Ownership = Borrowed>>(value: &C::RustType) -> *const C {
    (value as *const C::RustType).cast()
}

/// Lends a mutable Rust value to C for one call.
pub(crate) fn lend_mut<C: Castable<Ownership = Borrowed>>(value: &mut C::RustType) -> *mut C {
    (value as *mut C::RustType).cast()
}

/// The value behind `ptr`, or `None` for NULL.
pub(crate) fn opt_ref<'a, C: Castable>(ptr: *const C) -> Option<&'a C::RustType> {
    // SAFETY: `as_ref` checks for NULL. A non-NULL `*const C` was made by
    // `into_raw::<C>` or `lend::<C>`/`lend_mut::<C>` from a live, aligned
    // `C::RustType` (opaque types cannot be built any other way in C); the
    // header's ownership rule makes it valid until its `_free` (owned) or
    // until the callback returns (borrowed), and every exported function uses
    // the reference only within its call. Nodes and tables, the handles the
    // header lets threads use at once, are `Sync` (asserted in lib.rs).
    unsafe { ptr.cast::<C::RustType>().as_ref() }
}

/// The value behind `ptr`; NULL is an invalid-argument failure naming `what`.
pub(crate) fn try_ref<'a, C: Castable>(
    ptr: *const C,
    what: &str,
) -> Result<&'a C::RustType, Failure> {
    opt_ref(ptr).ok_or_else(|| Failure::null(what))
}

/// The mutable value behind `ptr`; NULL is an invalid-argument failure.
pub(crate) fn try_mut<'a, C: Castable>(
    ptr: *mut C,
    what: &str,
) -> Result<&'a mut C::RustType, Failure> {
    // SAFETY: validity as for `opt_ref`. Exclusivity: `try_mut` is only used
    // on handles the header declares not thread-safe (a config) or lends
    // mutably to one callback call (resolution, update decision), so no other
    // reference to the value exists during the call.
    unsafe { ptr.cast::<C::RustType>().as_mut() }.ok_or_else(|| Failure::null(what))
}

/// A required output parameter.
pub(crate) fn out<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: `as_mut` checks for NULL. The header's output rule makes a
    // non-NULL output pointer point at the caller's aligned, writable `T`,
    // not aliased by the other arguments and only written during the call.
    unsafe { ptr.as_mut() }.ok_or_else(|| Failure::null(what))
}

/// An optional output parameter (NULL: the caller does not want it).
pub(crate) fn opt_out<'a, T>(ptr: *mut T) -> Option<&'a mut T> {
    // SAFETY: as for `out`: NULL is checked by `as_mut`, and a non-NULL
    // output (or in-out, as in `lbmkv_bytes_free`) pointer is the caller's
    // writable, unaliased `T` for the call.
    unsafe { ptr.as_mut() }
}

/// A borrowed NUL-terminated UTF-8 string.
pub(crate) fn c_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: `ptr` is not NULL (checked above); the header's input rule
    // makes it a NUL-terminated string that stays unchanged until the
    // exported call returns, and the `&str` is used or copied within it.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    std::str::from_utf8(bytes)
        .map_err(|e| Failure::invalid(format!("{what} is not valid UTF-8: {e}")))
}

/// A borrowed name (table or node): UTF-8, 1 to 255 bytes, checked by the core's rule.
pub(crate) fn c_name<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: as for `c_str`: not NULL (checked above), NUL-terminated and
    // unchanged for the duration of the exported call, which is as long as
    // the name is used.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    Ok(lbmkv::name_from_bytes(what, bytes)?)
}
