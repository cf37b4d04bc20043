//! The panic boundary: every exported function runs its body inside
//! `catch_unwind`, so a panic never unwinds into C. Functions that return a
//! status report `LBMKV_STATUS_PANIC`; the others return a neutral value.

use std::ffi::c_char;
use std::ptr;

/// The value an exported function returns when its body panicked.
pub(crate) trait PanicDefault {
    fn panic_default() -> Self;
}

impl PanicDefault for () {
    fn panic_default() -> Self {}
}

impl PanicDefault for bool {
    fn panic_default() -> Self {
        false
    }
}

impl PanicDefault for usize {
    fn panic_default() -> Self {
        0
    }
}

impl<T> PanicDefault for *mut T {
    fn panic_default() -> Self {
        ptr::null_mut()
    }
}

impl<T> PanicDefault for *const T {
    fn panic_default() -> Self {
        ptr::null()
    }
}

impl PanicDefault for crate::bytes::lbmkv_slice {
    fn panic_default() -> Self {
        crate::bytes::lbmkv_slice::EMPTY
    }
}

impl PanicDefault for crate::error::lbmkv_status {
    fn panic_default() -> Self {
        crate::error::lbmkv_status::Panic
    }
}

impl PanicDefault for u64 {
    fn panic_default() -> Self {
        0
    }
}

impl PanicDefault for crate::watch::lbmkv_change_cause {
    fn panic_default() -> Self {
        crate::watch::lbmkv_change_cause::Unknown
    }
}

impl PanicDefault for crate::event::lbmkv_event_type {
    fn panic_default() -> Self {
        crate::event::lbmkv_event_type::Unknown
    }
}

/// Text of a panic payload, for the error message.
pub(crate) fn payload_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".to_string()
    }
}

/// Runs the body of an exported function that returns no status; a panic
/// becomes [`PanicDefault::panic_default`].
macro_rules! ffi_boundary {
    ( $($body:tt)* ) => {
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| { $($body)* })) {
            Ok(ret) => ret,
            Err(_) => $crate::panic::PanicDefault::panic_default(),
        }
    };
}

/// Runs the body of an exported fallible function. The body is a block that
/// evaluates to `Result<(), Failure>` (and may use `?`); the macro turns it
/// into an `lbmkv_status` and, on failure, stores an `lbmkv_error` in
/// `*err_out` when `err_out` is not NULL. A panic becomes `LBMKV_STATUS_PANIC`.
macro_rules! ffi_status {
    ( $err_out:expr, $($body:tt)* ) => {
        $crate::error::finish(
            $err_out,
            ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(
                || -> ::std::result::Result<(), $crate::error::Failure> { $($body)* },
            )),
        )
    };
}

pub(crate) use {ffi_boundary, ffi_status};

/// A static NUL-terminated string as a C pointer.
pub(crate) fn static_cstr(s: &'static str) -> *const c_char {
    debug_assert!(s.ends_with('\0'));
    s.as_ptr().cast()
}
