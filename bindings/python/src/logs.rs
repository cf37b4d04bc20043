//! Engine logs for Python's `logging`. Records leave lbmkv's threads through
//! a bounded queue and reach the Python handler on a thread of this module:
//! a runtime thread never waits for the interpreter, and a slow logging
//! handler never holds up the engine (when the queue is full, records are
//! dropped and the next one delivered says how many).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};

use lbmkv::{LogLevel, LogRecord, LogSink};
use pyo3::prelude::*;

/// Records waiting for the Python handler.
const QUEUE: usize = 4096;

type Item = (u32, String, String);

/// The handler `handler(level, target, message)`, and the queue to the
/// thread that calls it (per process: a fork starts a new one).
struct Forwarder {
    pid: u32,
    tx: SyncSender<Item>,
}

static HANDLER: Mutex<Option<Py<PyAny>>> = Mutex::new(None);
static FORWARDER: Mutex<Option<Forwarder>> = Mutex::new(None);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// `set_log_handler(level, handler)`: lbmkv's records up to `level` (0 off
/// ... 5 trace) go to `handler(level, target, message)` on a thread of
/// lbmkv's; `None` or level 0 stops them.
#[pyfunction]
#[pyo3(signature = (level, handler))]
pub fn set_log_handler(py: Python<'_>, level: u32, handler: Option<Py<PyAny>>) -> PyResult<()> {
    let level = LogLevel::from_number(level).ok_or_else(|| {
        pyo3::exceptions::PyValueError::new_err(format!("log level {level} is not 0 to 5"))
    })?;
    let on = handler.is_some() && level != LogLevel::Off;
    let old = std::mem::replace(&mut *lock(&HANDLER), handler);
    let sink = if on { Some(sink()?) } else { None };
    py.detach(|| lbmkv::set_log_sink(level, sink))
        .map_err(|e| crate::to_py_err(py, e))?;
    drop(old);
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A sink that queues records for this process's forwarding thread.
fn sink() -> PyResult<LogSink> {
    let mut forwarder = lock(&FORWARDER);
    let pid = std::process::id();
    let tx = match forwarder.as_ref() {
        Some(f) if f.pid == pid => f.tx.clone(),
        _ => {
            let (tx, rx) = sync_channel(QUEUE);
            std::thread::Builder::new()
                .name("lbmkv-logs".into())
                .spawn(move || forward(rx))
                .map_err(|e| {
                    pyo3::exceptions::PyRuntimeError::new_err(format!(
                        "cannot start the log thread: {e}"
                    ))
                })?;
            *forwarder = Some(Forwarder {
                pid,
                tx: tx.clone(),
            });
            tx
        }
    };
    Ok(Arc::new(move |r: &LogRecord<'_>| {
        let item = (r.level as u32, r.target.to_string(), r.message.to_string());
        if let Err(TrySendError::Full(_)) = tx.try_send(item) {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }))
}

/// Hands queued records to the Python handler, attached to the interpreter
/// for each (none at interpreter shutdown: they are dropped).
fn forward(rx: Receiver<Item>) {
    while let Ok((level, target, mut message)) = rx.recv() {
        let dropped = DROPPED.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            message = format!("{message} ({dropped} earlier records dropped: the queue was full)");
        }
        Python::try_attach(|py| {
            let handler = lock(&HANDLER).as_ref().map(|h| h.clone_ref(py));
            if let Some(h) = handler {
                if let Err(e) = h.call1(py, (level, target, message)) {
                    e.write_unraisable(py, None);
                }
            }
        });
    }
}
