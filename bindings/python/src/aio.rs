//! The native bridge under `lbmkv.aio`: an operation runs as a task on the
//! core's shared tokio runtime and completes an asyncio future of the caller's
//! event loop. The event loop never waits for the network and no executor
//! thread is taken.
//!
//! A finished operation goes into the loop's [`Completions`] queue, and a
//! byte on a socket the loop watches (`loop.add_reader`) wakes the loop,
//! which sets the futures' outcomes on its own thread. The runtime's threads
//! thus never wait for the GIL: a busy event loop (which holds it) cannot
//! stall the node's network. Where a loop cannot watch a socket, the outcome
//! goes through `loop.call_soon_threadsafe`, which takes the GIL on the
//! runtime's thread.
//!
//! Cancelling the asyncio task that awaits the future cancels the future;
//! `Pending.cancel` then ends the runtime task too when the operation only
//! waits (strong reads, events, members). A write is never dropped half-way:
//! it runs to its end and its result is discarded, as a write whose reply is
//! lost would be.
//!
//! Functions given to `update_key`/`update_all` run on the event loop's
//! thread (queued the same way, and awaited when they return an awaitable),
//! so that they see the same thread as the rest of the caller's asyncio code.

use std::future::Future;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;

use crate::{optional_value, to_py_err};

/// Why an operation failed: a core error, or a Python exception to raise as
/// it is (one raised by a user function).
pub(crate) enum Failure {
    Core(lbmkv::Error),
    Py(PyErr),
}

impl From<lbmkv::Error> for Failure {
    fn from(e: lbmkv::Error) -> Self {
        Failure::Core(e)
    }
}

/// The outcome of a runtime task.
pub(crate) type Outcome<T> = Result<T, Failure>;

/// Builds a completed operation's Python outcome, once attached.
type Settle = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// Where a user function's reply goes.
type ReplyTx = tokio::sync::oneshot::Sender<PyResult<Option<Vec<u8>>>>;

/// The handle of a running operation, returned to the Python layer so that a
/// cancelled asyncio task can end it.
#[pyclass(frozen, module = "lbmkv._lbmkv", name = "Pending")]
pub(crate) struct Pending {
    cancel: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

#[pymethods]
impl Pending {
    /// Ends the operation when it only waits (a write runs to its end);
    /// calling it again, or after the operation finished, does nothing.
    fn cancel(&self) {
        if let Ok(mut cancel) = self.cancel.lock() {
            if let Some(tx) = cancel.take() {
                let _ = tx.send(());
            }
        }
    }
}

/// Builds a call for the event loop to make, once attached: the function
/// and its arguments, as one tuple.
type LoopCall = Box<dyn FnOnce(Python<'_>) -> PyResult<Py<PyAny>> + Send>;

/// What the runtime hands to one event loop (finished operations, calls of
/// update functions) until the loop takes it, and the socket pair that wakes
/// the loop.
#[pyclass(frozen, module = "lbmkv._lbmkv", name = "Completions")]
pub(crate) struct Completions {
    queued: Mutex<Vec<LoopCall>>,
    /// A byte is on its way to the loop (or in the socket) since the last take.
    signalled: AtomicBool,
    loop_end: UnixStream,
    runtime_end: UnixStream,
}

impl Completions {
    /// Queues a call for the loop and wakes it unless a wake-up is on its
    /// way; takes no GIL.
    fn push(&self, call: LoopCall) {
        if let Ok(mut queued) = self.queued.lock() {
            queued.push(call);
        }
        if !self.signalled.swap(true, Ordering::AcqRel) {
            // Non-blocking: with a byte already unread the loop wakes anyway.
            let _ = (&self.runtime_end).write(&[1]);
        }
    }

    /// Queues the outcome of a finished operation for `fut`.
    fn complete(&self, fut: Py<PyAny>, outcome: Settle) {
        self.push(Box::new(move |py| {
            let (exc, value) = match outcome(py) {
                Ok(v) => (py.None(), v),
                Err(e) => (e.into_value(py).into_any(), py.None()),
            };
            let call = (completer(py)?.clone(), fut, exc, value);
            Ok(call.into_pyobject(py)?.into_any().unbind())
        }));
    }
}

#[pymethods]
impl Completions {
    #[new]
    fn new() -> PyResult<Self> {
        let (loop_end, runtime_end) = UnixStream::pair()?;
        loop_end.set_nonblocking(true)?;
        runtime_end.set_nonblocking(true)?;
        Ok(Completions {
            queued: Mutex::new(Vec::new()),
            signalled: AtomicBool::new(false),
            loop_end,
            runtime_end,
        })
    }

    /// The socket the loop watches for wake-ups.
    fn fileno(&self) -> i32 {
        self.loop_end.as_raw_fd()
    }

    /// The calls to make so far, each a tuple `(function, *arguments)`.
    fn take(&self, py: Python<'_>) -> PyResult<Vec<Py<PyAny>>> {
        // The wake-up bytes first, then the flag, then the queue: a call
        // queued after the flag is cleared writes a byte of its own.
        let mut bytes = [0u8; 64];
        while matches!((&self.loop_end).read(&mut bytes), Ok(n) if n > 0) {}
        self.signalled.store(false, Ordering::Release);
        let queued = match self.queued.lock() {
            Ok(mut queued) => std::mem::take(&mut *queued),
            Err(_) => Vec::new(),
        };
        // One call that cannot be built does not hold up the others (its
        // future or reply is dropped, which its waiter sees).
        Ok(queued
            .into_iter()
            .filter_map(|call| call(py).map_err(|e| e.write_unraisable(py, None)).ok())
            .collect())
    }
}

/// `lbmkv.aio._run_update_fn(fn, key, value, reply)`, which runs an update
/// function on the loop and answers through `reply`.
fn run_update_fn(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static RUN: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    RUN.get_or_try_init(py, || {
        py.import("lbmkv.aio")
            .and_then(|m| m.getattr("_run_update_fn"))
            .map(Bound::unbind)
    })
    .map(|f| f.bind(py))
}

/// The completion queue of `event_loop` (`lbmkv.aio._channel`), or `None`
/// when the loop cannot watch a socket.
pub(crate) fn channel_of(event_loop: &Bound<'_, PyAny>) -> PyResult<Option<Py<Completions>>> {
    static CHANNEL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = event_loop.py();
    let channel = CHANNEL.get_or_try_init(py, || {
        py.import("lbmkv.aio")
            .and_then(|m| m.getattr("_channel"))
            .map(Bound::unbind)
    })?;
    let found = channel.bind(py).call1((event_loop,))?;
    if found.is_none() {
        return Ok(None);
    }
    Ok(Some(found.cast_into::<Completions>()?.unbind()))
}

/// `lbmkv.aio._complete(fut, exc, value)`, which sets the future's outcome
/// unless it is done (cancelled) already.
fn completer(py: Python<'_>) -> PyResult<&Bound<'_, PyAny>> {
    static COMPLETE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    COMPLETE
        .get_or_try_init(py, || {
            py.import("lbmkv.aio")
                .and_then(|m| m.getattr("_complete"))
                .map(Bound::unbind)
        })
        .map(|f| f.bind(py))
}

/// Hands `outcome` to the event loop. When the loop is closed nobody awaits
/// the future any more, and the outcome is dropped.
fn complete(event_loop: Py<PyAny>, fut: Py<PyAny>, outcome: Settle) {
    // `None`: the interpreter is shutting down and nobody awaits any more.
    let _ = Python::try_attach(|py| {
        let (exc, value) = match outcome(py) {
            Ok(v) => (py.None(), v),
            Err(e) => (e.into_value(py).into_any(), py.None()),
        };
        let scheduled = completer(py).and_then(|complete| {
            event_loop
                .bind(py)
                .call_method1("call_soon_threadsafe", (complete, &fut, exc, value))
        });
        if let Err(e) = scheduled {
            // Only a closed loop refuses; anything else is worth seeing.
            if !e.is_instance_of::<pyo3::exceptions::PyRuntimeError>(py) {
                e.write_unraisable(py, None);
            }
        }
        drop((event_loop, fut));
    });
}

/// Runs `work` on the shared runtime and completes `fut` (a future of
/// `event_loop`) with `to_py` of its output, or with the exception. With
/// `abortable`, [`Pending::cancel`] drops `work`; otherwise it only stops the
/// waiting (the result is discarded by the completed-future check).
pub(crate) fn spawn<T, W, C>(
    event_loop: Bound<'_, PyAny>,
    fut: Bound<'_, PyAny>,
    abortable: bool,
    work: W,
    to_py: C,
) -> PyResult<Pending>
where
    T: Send + 'static,
    W: Future<Output = Outcome<T>> + Send + 'static,
    C: FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    let py = event_loop.py();
    let rt = lbmkv::runtime::shared().map_err(|e| to_py_err(py, e))?;
    let (cancel_tx, cancel_rx) = tokio::sync::oneshot::channel::<()>();
    let channel = channel_of(&event_loop)?;
    let (event_loop, fut) = (event_loop.unbind(), fut.unbind());
    rt.spawn(async move {
        let mut work = pin!(work);
        let mut cancel = pin!(async move {
            // A dropped sender (the Pending handle was collected) is no cancel.
            if cancel_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        });
        let out = std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = work.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            if abortable && cancel.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await;
        let outcome: Settle = match out {
            Some(Ok(v)) => Box::new(move |py| to_py(py, v)),
            Some(Err(Failure::Core(e))) => Box::new(move |py| Err(to_py_err(py, e))),
            Some(Err(Failure::Py(e))) => Box::new(move |_| Err(e)),
            None => Box::new(|_| {
                Err(pyo3::exceptions::asyncio::CancelledError::new_err(
                    "the operation was cancelled",
                ))
            }),
        };
        match channel {
            Some(channel) => {
                channel.get().complete(fut, outcome);
                // Dropped without the GIL: pyo3 releases it later, on a
                // thread that holds it.
                drop((channel, event_loop));
            }
            None => complete(event_loop, fut, outcome),
        }
    });
    Ok(Pending {
        cancel: Mutex::new(Some(cancel_tx)),
    })
}

/// The reply of a user function run on the event loop (native half of the
/// object `lbmkv.aio._run_update_fn` answers through).
#[pyclass(frozen, module = "lbmkv._lbmkv", name = "Reply")]
pub(crate) struct Reply {
    tx: Mutex<Option<ReplyTx>>,
}

impl Reply {
    fn answer(&self, r: PyResult<Option<Vec<u8>>>) {
        if let Ok(mut tx) = self.tx.lock() {
            if let Some(tx) = tx.take() {
                let _ = tx.send(r);
            }
        }
    }
}

#[pymethods]
impl Reply {
    /// The function returned `value` (bytes-like, or `None` to delete).
    fn send(&self, value: &Bound<'_, PyAny>) {
        self.answer(optional_value(value, "the update function's result"));
    }

    /// The function raised `exc`.
    fn fail(&self, exc: &Bound<'_, PyAny>) {
        self.answer(Err(PyErr::from_value(exc.clone())));
    }
}

/// A user function that runs on an event loop: calling it schedules it there
/// and waits for its reply. The first exception it raises is kept in
/// `raised`, to be raised as it is by the operation.
pub(crate) struct LoopFn {
    pub(crate) event_loop: Py<PyAny>,
    /// The loop's queue, through which calls reach it without the GIL
    /// (`None`: through `call_soon_threadsafe`).
    pub(crate) channel: Option<Py<Completions>>,
    pub(crate) func: Py<PyAny>,
    pub(crate) raised: Arc<Mutex<Option<PyErr>>>,
}

impl LoopFn {
    /// Schedules `func(key, value)` on the loop; the future gives its result.
    pub(crate) fn call(
        self: &Arc<Self>,
        key: &[u8],
        value: Option<&[u8]>,
    ) -> impl Future<Output = lbmkv::Result<Option<Vec<u8>>>> + Send + 'static {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let scheduled = match &self.channel {
            Some(channel) => {
                let (me, key, value) = (self.clone(), key.to_vec(), value.map(<[u8]>::to_vec));
                channel.get().push(Box::new(move |py| {
                    let reply = Py::new(
                        py,
                        Reply {
                            tx: Mutex::new(Some(tx)),
                        },
                    )?;
                    let value = value.map(|v| PyBytes::new(py, &v));
                    let call = (
                        run_update_fn(py)?.clone(),
                        me.func.clone_ref(py),
                        PyBytes::new(py, &key),
                        value,
                        reply,
                    );
                    Ok(call.into_pyobject(py)?.into_any().unbind())
                }));
                Some(Ok(()))
            }
            None => Python::try_attach(|py| -> PyResult<()> {
                let reply = Py::new(
                    py,
                    Reply {
                        tx: Mutex::new(Some(tx)),
                    },
                )?;
                self.event_loop.bind(py).call_method1(
                    "call_soon_threadsafe",
                    (
                        run_update_fn(py)?,
                        &self.func,
                        PyBytes::new(py, key),
                        value.map(|v| PyBytes::new(py, v)),
                        reply,
                    ),
                )?;
                Ok(())
            }),
        };
        let raised = self.raised.clone();
        async move {
            let failed = |e: PyErr| {
                if let Ok(mut r) = raised.lock() {
                    r.get_or_insert(e);
                }
                lbmkv::Error::new(lbmkv::ErrorKind::Aborted, "the Python function raised")
            };
            match scheduled {
                None => {
                    return Err(lbmkv::Error::new(
                        lbmkv::ErrorKind::Aborted,
                        "the Python interpreter is shutting down",
                    ))
                }
                Some(Err(e)) => return Err(failed(e)),
                Some(Ok(())) => {}
            }
            match rx.await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(failed(e)),
                Err(_) => Err(lbmkv::Error::new(
                    lbmkv::ErrorKind::Aborted,
                    "the event loop dropped the update function's call (closed?)",
                )),
            }
        }
    }

    /// The exception a call raised, if any.
    pub(crate) fn take_raised(&self) -> Option<PyErr> {
        self.raised.lock().ok().and_then(|mut r| r.take())
    }
}
