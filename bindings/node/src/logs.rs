//! Engine logs for JavaScript: one process-wide handler called on the
//! JavaScript thread with each record of lbmkv (level, where, message).

use std::sync::Arc;

use lbmkv::{LogLevel, LogRecord, LogSink};
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;

use crate::error::{from_core, from_napi, Result};

/// Records waiting for the JavaScript thread; beyond, new ones are dropped
/// rather than queued without bound while the event loop is busy.
const QUEUE: usize = 4096;

type Args = FnArgs<(String, String, String)>;

/// Weak: the handler never keeps the process alive.
type LogFn = ThreadsafeFunction<(LogLevel, String, String), (), Args, Status, false, true, QUEUE>;

/// Sends lbmkv's log records up to `level` to `handler(level, target,
/// message)`, called on the JavaScript thread, for every node of the
/// process; `'off'` or `null` stops them. Replaces the handler set before.
#[napi(
    ts_args_type = "level: 'off' | 'error' | 'warn' | 'info' | 'debug' | 'trace', handler: ((level: 'error' | 'warn' | 'info' | 'debug' | 'trace', target: string, message: string) => void) | null"
)]
pub fn set_logger(level: String, handler: Option<Function<Args, ()>>) -> Result<()> {
    let level = LogLevel::parse(&level).map_err(from_core)?;
    let sink = match handler {
        Some(f) if level != LogLevel::Off => {
            let call: LogFn = f
                .build_threadsafe_function::<(LogLevel, String, String)>()
                .weak::<true>()
                .callee_handled::<false>()
                .max_queue_size::<QUEUE>()
                .build_callback(|ctx| {
                    let (level, target, message) = ctx.value;
                    Ok(FnArgs::from((level.name().to_string(), target, message)))
                })
                .map_err(from_napi)?;
            let sink: LogSink = Arc::new(move |r: &LogRecord<'_>| {
                // A full queue or a closing environment drops the record.
                let _ = call.call(
                    (r.level, r.target.to_string(), r.message.to_string()),
                    ThreadsafeFunctionCallMode::NonBlocking,
                );
            });
            Some(sink)
        }
        _ => None,
    };
    lbmkv::set_log_sink(level, sink).map_err(from_core)
}
