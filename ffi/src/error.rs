//! Status codes and error objects.

use std::ffi::{c_char, CString};

use lbmkv::ErrorKind;

use crate::handle::{self, castable};
use crate::panic::{ffi_boundary, static_cstr};

/// What a fallible lbmkv function returns. `LBMKV_STATUS_OK` is 0; every
/// other value names one kind of failure. Values never change meaning and are
/// never reused; new kinds get new values.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum lbmkv_status {
    /// Success.
    Ok = 0,
    /// A write could not reach or be acknowledged by the nodes it needs.
    Unavailable = 1,
    /// The operation did not finish within the request timeout.
    Timeout = 2,
    /// Bad input: NULL where a value is required, invalid UTF-8 or length of a
    /// name, oversize key or value, bad pattern, bad address.
    InvalidArgument = 3,
    /// The node (or the table's node) has been closed or freed.
    Closed = 4,
    /// No table of that name exists on this node.
    NoSuchTable = 5,
    /// A blocking call was made from a thread that runs lbmkv's own tasks (for
    /// example from inside a conflict handler), which would deadlock.
    WouldDeadlock = 6,
    /// The update function returned false; nothing was written.
    Aborted = 7,
    /// Network or operating-system failure (bind, resolve, connect).
    Io = 8,
    /// A peer broke the protocol or authentication failed.
    Protocol = 9,
    /// A bug in lbmkv; the error message says where.
    Internal = 10,
    /// A panic inside lbmkv was caught at the C boundary; the error message
    /// carries the panic message.
    Panic = 11,
}

impl lbmkv_status {
    /// The status of a core error kind.
    pub(crate) fn of(kind: ErrorKind) -> lbmkv_status {
        match kind {
            ErrorKind::Unavailable => lbmkv_status::Unavailable,
            ErrorKind::Timeout => lbmkv_status::Timeout,
            ErrorKind::InvalidArgument => lbmkv_status::InvalidArgument,
            ErrorKind::Closed => lbmkv_status::Closed,
            ErrorKind::NoSuchTable => lbmkv_status::NoSuchTable,
            ErrorKind::WouldDeadlock => lbmkv_status::WouldDeadlock,
            ErrorKind::Aborted => lbmkv_status::Aborted,
            ErrorKind::Io => lbmkv_status::Io,
            ErrorKind::Protocol => lbmkv_status::Protocol,
            ErrorKind::Internal => lbmkv_status::Internal,
            // A kind added to the core after this library was built.
            _ => lbmkv_status::Internal,
        }
    }

    /// The stable upper-case name (`OK`, `UNAVAILABLE`, ...), NUL-terminated.
    fn name(code: u32) -> &'static str {
        match code {
            0 => "OK\0",
            1 => "UNAVAILABLE\0",
            2 => "TIMEOUT\0",
            3 => "INVALID_ARGUMENT\0",
            4 => "CLOSED\0",
            5 => "NO_SUCH_TABLE\0",
            6 => "WOULD_DEADLOCK\0",
            7 => "ABORTED\0",
            8 => "IO\0",
            9 => "PROTOCOL\0",
            10 => "INTERNAL\0",
            11 => "PANIC\0",
            _ => "UNKNOWN\0",
        }
    }
}

/// A failed call inside the library, before it becomes a status and an
/// `lbmkv_error`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub status: lbmkv_status,
    pub message: String,
}

impl Failure {
    pub(crate) fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            status: lbmkv_status::InvalidArgument,
            message: message.into(),
        }
    }

    pub(crate) fn null(what: &str) -> Failure {
        Failure::invalid(format!("{what} is NULL"))
    }
}

impl From<lbmkv::Error> for Failure {
    fn from(e: lbmkv::Error) -> Failure {
        Failure {
            status: lbmkv_status::of(e.kind()),
            message: e.message().to_string(),
        }
    }
}

/// The Rust value behind an `lbmkv_error`.
pub(crate) struct ErrorState {
    status: lbmkv_status,
    message: CString,
}

/// An error: a status plus a message. Made by a failing call when its
/// `err_out` is not NULL; the caller frees it with `lbmkv_error_free`.
pub struct lbmkv_error {
    _private: [u8; 0],
}

castable! {
    lbmkv_error => ErrorState, Owned;
}

/// Ends an exported fallible call: maps the result (or a caught panic) to a
/// status and stores an error object for the caller when asked to.
pub(crate) fn finish(
    err_out: *mut *mut lbmkv_error,
    result: std::thread::Result<Result<(), Failure>>,
) -> lbmkv_status {
    let failure = match result {
        Ok(Ok(())) => return lbmkv_status::Ok,
        Ok(Err(f)) => f,
        Err(payload) => Failure {
            status: lbmkv_status::Panic,
            message: format!(
                "panic inside lbmkv: {}",
                crate::panic::payload_message(&*payload)
            ),
        },
    };
    if let Some(slot) = handle::opt_out(err_out) {
        // A message cannot hold NUL in C; replace any rather than lose the error.
        let message = CString::new(failure.message.replace('\0', "\u{fffd}")).unwrap_or_default();
        *slot = handle::into_raw(ErrorState {
            status: failure.status,
            message,
        });
    }
    failure.status
}

/// The status of `error` (`LBMKV_STATUS_INVALID_ARGUMENT` for NULL).
#[no_mangle]
pub extern "C" fn lbmkv_error_status(error: *const lbmkv_error) -> lbmkv_status {
    ffi_boundary! {
        match handle::opt_ref(error) {
            Some(e) => e.status,
            None => lbmkv_status::InvalidArgument,
        }
    }
}

/// The message of `error`, NUL-terminated UTF-8, valid until the error is
/// freed; an empty string for NULL.
#[no_mangle]
pub extern "C" fn lbmkv_error_message(error: *const lbmkv_error) -> *const c_char {
    ffi_boundary! {
        match handle::opt_ref(error) {
            Some(e) => e.message.as_ptr(),
            None => static_cstr("\0"),
        }
    }
}

/// Frees an error. NULL does nothing.
#[no_mangle]
pub extern "C" fn lbmkv_error_free(error: *mut lbmkv_error) {
    ffi_boundary! { handle::free(error) }
}

/// The stable name of a status (`"OK"`, `"UNAVAILABLE"`, `"TIMEOUT"`, ...;
/// `"UNKNOWN"` for a value this library does not know). A static string.
#[no_mangle]
pub extern "C" fn lbmkv_status_name(status: u32) -> *const c_char {
    ffi_boundary! { static_cstr(lbmkv_status::name(status)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_values_are_stable() {
        let expected = [
            (lbmkv_status::Ok, 0, "OK"),
            (lbmkv_status::Unavailable, 1, "UNAVAILABLE"),
            (lbmkv_status::Timeout, 2, "TIMEOUT"),
            (lbmkv_status::InvalidArgument, 3, "INVALID_ARGUMENT"),
            (lbmkv_status::Closed, 4, "CLOSED"),
            (lbmkv_status::NoSuchTable, 5, "NO_SUCH_TABLE"),
            (lbmkv_status::WouldDeadlock, 6, "WOULD_DEADLOCK"),
            (lbmkv_status::Aborted, 7, "ABORTED"),
            (lbmkv_status::Io, 8, "IO"),
            (lbmkv_status::Protocol, 9, "PROTOCOL"),
            (lbmkv_status::Internal, 10, "INTERNAL"),
            (lbmkv_status::Panic, 11, "PANIC"),
        ];
        for (status, value, name) in expected {
            assert_eq!(status as u32, value);
            assert_eq!(lbmkv_status::name(value).trim_end_matches('\0'), name);
        }
    }

    #[test]
    fn every_core_kind_maps_to_the_status_of_the_same_name() {
        let kinds = [
            ErrorKind::Unavailable,
            ErrorKind::Timeout,
            ErrorKind::InvalidArgument,
            ErrorKind::Closed,
            ErrorKind::NoSuchTable,
            ErrorKind::WouldDeadlock,
            ErrorKind::Aborted,
            ErrorKind::Io,
            ErrorKind::Protocol,
            ErrorKind::Internal,
        ];
        for kind in kinds {
            let status = lbmkv_status::of(kind) as u32;
            assert_eq!(
                lbmkv_status::name(status).trim_end_matches('\0'),
                kind.code()
            );
        }
    }

    #[test]
    fn a_panic_becomes_the_panic_status_with_its_message() {
        let mut err: *mut lbmkv_error = std::ptr::null_mut();
        let fail = true;
        let status = crate::panic::ffi_status!(&mut err, {
            if fail {
                panic!("boom");
            }
            Ok(())
        });
        assert_eq!(status, lbmkv_status::Panic);
        assert_eq!(lbmkv_error_status(err), lbmkv_status::Panic);
        // SAFETY: `err` was just set to a valid error (the status above is
        // not OK), whose message is a NUL-terminated string owned by it and
        // freed only by `lbmkv_error_free` after the last use of `msg`.
        let msg = unsafe { std::ffi::CStr::from_ptr(lbmkv_error_message(err)) };
        assert_eq!(msg.to_str().unwrap(), "panic inside lbmkv: boom");
        lbmkv_error_free(err);
    }
}
