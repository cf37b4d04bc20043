//! Engine logs for C: one process-wide callback that receives lbmkv's log
//! records (level, where, message).

use std::ffi::{c_char, c_void, CString};
use std::sync::Arc;

use lbmkv::{LogLevel, LogRecord, LogSink};

use crate::callback::{lbmkv_free_fn, UserData};
use crate::error::{lbmkv_error, lbmkv_status, Failure};
use crate::panic::ffi_status;

/// How much lbmkv logs. The values never change meaning.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum lbmkv_log_level {
    /// Nothing.
    Off = 0,
    /// Failures that lose something or stop a part of the node.
    Error = 1,
    /// Refused peers (wrong cookie, protocol version), dropped connections.
    Warn = 2,
    /// Nodes started, peers up and down.
    Info = 3,
    /// Dial failures, refused connections, events.
    Debug = 4,
    /// Everything.
    Trace = 5,
}

impl lbmkv_log_level {
    fn of(level: LogLevel) -> lbmkv_log_level {
        match level {
            LogLevel::Off => lbmkv_log_level::Off,
            LogLevel::Error => lbmkv_log_level::Error,
            LogLevel::Warn => lbmkv_log_level::Warn,
            LogLevel::Info => lbmkv_log_level::Info,
            LogLevel::Debug => lbmkv_log_level::Debug,
            LogLevel::Trace => lbmkv_log_level::Trace,
        }
    }
}

/// Receives one log record. `target` says where it comes from (a module
/// path such as `"lbmkv::cluster::membership"`), `message` is the text with
/// its fields (`"dial failed: ... node=a#1f target=127.0.0.1:7001"`); both
/// are NUL-terminated UTF-8, valid during the call only.
///
/// It is called on whatever thread logged, lbmkv's own threads included,
/// possibly on several at once: it must be thread-safe, should return
/// quickly (lbmkv waits for it), must not call `lbmkv_*` functions, and must
/// not unwind (C++ exceptions, `longjmp`) out of the call.
pub type lbmkv_log_fn = Option<
    unsafe extern "C" fn(
        user_data: *mut c_void,
        level: lbmkv_log_level,
        target: *const c_char,
        message: *const c_char,
    ),
>;

/// Sends lbmkv's log records up to `level` (an `lbmkv_log_level` value) to
/// `fn`, for every node of the process, from now on. The callback set before,
/// if any, is dropped: its `user_data_free` runs once no call to it is
/// running any more. `fn` NULL or `LBMKV_LOG_LEVEL_OFF` stops the logs (and
/// `user_data_free(user_data)` runs at once). Nothing is logged until this is
/// called. A level that is not an `lbmkv_log_level` gives
/// `LBMKV_STATUS_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn lbmkv_log_set_callback(
    level: u32,
    r#fn: lbmkv_log_fn,
    user_data: *mut c_void,
    user_data_free: lbmkv_free_fn,
    err_out: *mut *mut lbmkv_error,
) -> lbmkv_status {
    ffi_status!(err_out, {
        let data = UserData::new(user_data, user_data_free);
        let level = LogLevel::from_number(level).ok_or_else(|| {
            Failure::invalid(format!(
                "log level {level} is not an lbmkv_log_level (0 to 5)"
            ))
        })?;
        let sink = r#fn.filter(|_| level != LogLevel::Off).map(|f| -> LogSink {
            Arc::new(move |r: &LogRecord<'_>| {
                let (target, message) = (c_text(r.target), c_text(r.message));
                // SAFETY: `f` and `data` were registered together by the
                // application, which the header requires to accept calls
                // from any thread, at once, without unwinding. Both strings
                // outlive the call, which may use them only during it.
                unsafe {
                    f(
                        data.ptr(),
                        lbmkv_log_level::of(r.level),
                        target.as_ptr(),
                        message.as_ptr(),
                    )
                }
            })
        });
        lbmkv::set_log_sink(level, sink)?;
        Ok(())
    })
}

/// `text` NUL-terminated, with a NUL inside (from a peer's bytes) shown as `?`.
fn c_text(text: &str) -> CString {
    let bytes: Vec<u8> = text
        .bytes()
        .map(|b| if b == 0 { b'?' } else { b })
        .collect();
    CString::new(bytes).unwrap_or_default()
}
