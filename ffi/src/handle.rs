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
        // SAFETY: the caller gives back a pointer made by `into_raw` for this
        // type, once (the header's ownership rule).
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
    // SAFETY: a non-NULL pointer of this type was made by `into_raw` or `lend`
    // and is still valid (the header's ownership rule).
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
    // SAFETY: as for `opt_ref`; C does not share a mutable handle between calls.
    unsafe { ptr.cast::<C::RustType>().as_mut() }.ok_or_else(|| Failure::null(what))
}

/// A required output parameter.
pub(crate) fn out<'a, T>(ptr: *mut T, what: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: a non-NULL output pointer points at writable storage of the caller.
    unsafe { ptr.as_mut() }.ok_or_else(|| Failure::null(what))
}

/// An optional output parameter (NULL: the caller does not want it).
pub(crate) fn opt_out<'a, T>(ptr: *mut T) -> Option<&'a mut T> {
    // SAFETY: as for `out`.
    unsafe { ptr.as_mut() }
}

/// A borrowed NUL-terminated UTF-8 string.
pub(crate) fn c_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: the caller passes a NUL-terminated string that outlives the call.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    std::str::from_utf8(bytes)
        .map_err(|e| Failure::invalid(format!("{what} is not valid UTF-8: {e}")))
}

/// A borrowed name (table or node): UTF-8, 1 to 255 bytes, checked by the core's rule.
pub(crate) fn c_name<'a>(ptr: *const c_char, what: &str) -> Result<&'a str, Failure> {
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: as for `c_str`.
    let bytes = unsafe { CStr::from_ptr(ptr) }.to_bytes();
    Ok(lbmkv::name_from_bytes(what, bytes)?)
}
