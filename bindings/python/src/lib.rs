//! The native module `lbmkv._lbmkv`: a thin layer over `lbmkv::blocking` that
//! converts types, errors, threads and callbacks. The Pythonic API (mapping
//! protocol, context manager, exception classes) lives in the pure-Python
//! package `lbmkv` around it.
//!
//! Threading rules kept here:
//! - every call that may wait (network, sequencer, locks held by runtime
//!   threads) runs inside `py.detach`, so other Python threads keep running;
//! - `update` functions run on the calling thread and attach to the
//!   interpreter only while they run;
//! - conflict handlers run on tokio's blocking pool and attach with
//!   `Python::try_attach` (at interpreter shutdown they count as unresolved);
//! - log records reach Python on a thread of their own (see `logs`).

mod aio;
mod logs;

use std::mem::ManuallyDrop;
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use lbmkv::blocking;
use lbmkv::{Config, Conflict, ConflictHandler, ErrorKind, Resolution};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{
    PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyMemoryView, PyString, PyTuple,
};
use pyo3::IntoPyObjectExt;

/// Bytes taken from a Python argument: borrowed from an immutable `bytes`
/// object (which the caller keeps alive), copied from anything else.
enum Buf<'a> {
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Deref for Buf<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Buf::Borrowed(b) => b,
            Buf::Owned(v) => v,
        }
    }
}

impl Buf<'_> {
    fn into_vec(self) -> Vec<u8> {
        match self {
            Buf::Borrowed(b) => b.to_vec(),
            Buf::Owned(v) => v,
        }
    }
}

/// Accepts `bytes`, `bytearray`, `memoryview` and `str` (encoded as UTF-8);
/// anything else is a `TypeError` naming `what`.
fn buf<'a>(obj: &'a Bound<'_, PyAny>, what: &str) -> PyResult<Buf<'a>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Buf::Borrowed(b.as_bytes()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Buf::Owned(s.to_cow()?.into_owned().into_bytes()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Buf::Owned(b.to_vec()));
    }
    if obj.cast::<PyMemoryView>().is_ok() {
        let copy = obj.call_method0(pyo3::intern!(obj.py(), "tobytes"))?;
        let copy = copy.cast::<PyBytes>()?;
        return Ok(Buf::Owned(copy.as_bytes().to_vec()));
    }
    Err(PyTypeError::new_err(format!(
        "{what} must be bytes, bytearray, memoryview or str, not {}",
        type_name(obj)
    )))
}

/// A `str` argument; anything else is a `TypeError` naming `what`.
fn text(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    match obj.cast::<PyString>() {
        Ok(s) => Ok(s.to_cow()?.into_owned()),
        Err(_) => Err(PyTypeError::new_err(format!(
            "{what} must be str, not {}",
            type_name(obj)
        ))),
    }
}

/// An optional duration in seconds (`int` or `float`); negative, NaN or
/// infinite values are `InvalidArgument`.
fn seconds_arg(obj: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Duration>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    if obj.cast::<PyBool>().is_ok()
        || !(obj.cast::<PyInt>().is_ok() || obj.cast::<PyFloat>().is_ok())
    {
        return Err(PyTypeError::new_err(format!(
            "{what} must be a number of seconds (int or float), not {}",
            type_name(obj)
        )));
    }
    let secs: f64 = obj.extract()?;
    seconds(what, secs).map(Some).py_err(obj.py())
}

/// An optional non-negative `int`; negative values are `InvalidArgument`.
fn count_arg(obj: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<usize>> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else {
        return Ok(None);
    };
    if obj.cast::<PyBool>().is_ok() || obj.cast::<PyInt>().is_err() {
        return Err(PyTypeError::new_err(format!(
            "{what} must be an int, not {}",
            type_name(obj)
        )));
    }
    obj.extract::<usize>().map(Some).map_err(|_| {
        to_py_err(
            obj.py(),
            lbmkv::Error::new(
                ErrorKind::InvalidArgument,
                format!("{what} must be a non-negative int that fits in memory, got {obj}"),
            ),
        )
    })
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "?".to_string())
}

/// A value returned by a user function: bytes-like or `None` (= absent / delete).
fn optional_value(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Option<Vec<u8>>> {
    if obj.is_none() {
        return Ok(None);
    }
    Ok(Some(buf(obj, what)?.into_vec()))
}

fn opt_bytes<'py>(py: Python<'py>, v: Option<&[u8]>) -> Option<Bound<'py, PyBytes>> {
    v.map(|v| PyBytes::new(py, v))
}

fn entries_dict<'py>(py: Python<'py>, entries: lbmkv::Entries) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in entries {
        d.set_item(PyBytes::new(py, &k), PyBytes::new(py, &v))?;
    }
    Ok(d)
}

/// The exception for an lbmkv error: an instance of the class of
/// `lbmkv._errors` that matches its kind.
fn to_py_err(py: Python<'_>, err: lbmkv::Error) -> PyErr {
    static FROM_CODE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let made = FROM_CODE
        .get_or_try_init(py, || {
            py.import("lbmkv._errors")
                .and_then(|m| m.getattr("_from_code"))
                .map(Bound::unbind)
        })
        .and_then(|f| f.bind(py).call1((err.kind().code(), err.message())));
    match made {
        Ok(exc) => PyErr::from_value(exc),
        // Only reachable when the package is broken; say so rather than hide it.
        Err(e) => e,
    }
}

/// Maps a core result; `py` is needed to build the exception.
trait CoreResultExt<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> CoreResultExt<T> for lbmkv::Result<T> {
    fn py_err(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py_err(py, e))
    }
}

fn seconds(what: &str, secs: f64) -> lbmkv::Result<Duration> {
    Duration::try_from_secs_f64(secs).map_err(|_| {
        lbmkv::Error::new(
            ErrorKind::InvalidArgument,
            format!("{what} must be a finite, non-negative number of seconds, got {secs}"),
        )
    })
}

/// An optional callable (`None` allowed).
fn callable(obj: Option<Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Py<PyAny>>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) if o.is_callable() => Ok(Some(o.unbind())),
        Some(o) => Err(PyTypeError::new_err(format!(
            "{what} must be callable or None, not {}",
            type_name(&o)
        ))),
    }
}

/// A required callable.
fn function(obj: Bound<'_, PyAny>, what: &str) -> PyResult<Py<PyAny>> {
    if obj.is_callable() {
        Ok(obj.unbind())
    } else {
        Err(PyTypeError::new_err(format!(
            "{what} must be callable, not {}",
            type_name(&obj)
        )))
    }
}

/// Logs an exception raised by a conflict handler through the `lbmkv` logger.
fn log_handler_error(py: Python<'_>, conflict: &Conflict, err: &PyErr) {
    let logged = (|| -> PyResult<()> {
        let logger = py
            .import("logging")?
            .call_method1("getLogger", ("lbmkv",))?;
        let kwargs = PyDict::new(py);
        kwargs.set_item("exc_info", err.value(py))?;
        logger.call_method(
            "error",
            (
                "conflict handler of table %r raised for key %r; the fallback applies",
                &conflict.table,
                PyBytes::new(py, &conflict.key),
            ),
            Some(&kwargs),
        )?;
        Ok(())
    })();
    if let Err(e) = logged {
        e.write_unraisable(py, None);
    }
}

/// Calls a Python conflict handler on the current (runtime) thread.
fn call_handler(handler: &Py<PyAny>, conflict: &Conflict) -> Result<Resolution, String> {
    Python::try_attach(|py| {
        let result = handler
            .bind(py)
            .call1((
                PyBytes::new(py, &conflict.key),
                opt_bytes(py, conflict.local.as_deref()),
                opt_bytes(py, conflict.remote.as_deref()),
            ))
            .and_then(|r| optional_value(&r, "the conflict handler's result"));
        match result {
            Ok(Some(v)) => Ok(Resolution::Value(v)),
            Ok(None) => Ok(Resolution::Delete),
            Err(e) => {
                log_handler_error(py, conflict, &e);
                Err(format!("the conflict handler raised: {e}"))
            }
        }
    })
    .unwrap_or_else(|| Err("the Python interpreter is shutting down".to_string()))
}

fn handler(obj: Option<Py<PyAny>>) -> Option<Arc<dyn ConflictHandler>> {
    obj.map(|h| lbmkv::handler_fn(move |c: &Conflict| call_handler(&h, c)))
}

/// The error returned to the core when a Python function raised; the Python
/// exception itself is kept aside and re-raised unchanged.
fn aborted() -> lbmkv::Error {
    lbmkv::Error::new(ErrorKind::Aborted, "the Python function raised")
}

/// Drops `value` with the GIL released: dropping a node may wait for runtime
/// threads, which may be waiting for the GIL.
fn drop_detached<T: Send>(value: T) {
    Python::attach(|py| py.detach(move || drop(value)));
}

/// The options of `Node`, in the order of its signature.
const OPTIONS: [&str; 18] = [
    "name",
    "listen",
    "advertise",
    "seeds",
    "min_members",
    "cookie",
    "failure_timeout",
    "request_timeout",
    "heartbeat_interval",
    "handler_timeout",
    "anti_entropy_interval",
    "tombstone_retention",
    "conflict_log_limit",
    "max_key_size",
    "max_value_size",
    "tls_cert",
    "tls_key",
    "tls_ca",
];

/// The configuration given as keyword arguments; an unknown one is a
/// `TypeError`, as for any Python function.
fn config_from(options: Option<&Bound<'_, PyDict>>) -> PyResult<Config> {
    let mut given: [Option<Bound<'_, PyAny>>; 18] = Default::default();
    if let Some(options) = options {
        for (k, v) in options.iter() {
            let k = text(&k, "an option name")?;
            match OPTIONS.iter().position(|o| *o == k) {
                Some(i) => given[i] = Some(v),
                None => {
                    return Err(PyTypeError::new_err(format!(
                        "Node got an unexpected keyword argument '{k}'"
                    )))
                }
            }
        }
    }
    let [name, listen, advertise, seeds, min_members, cookie, failure_timeout, request_timeout, heartbeat_interval, handler_timeout, anti_entropy_interval, tombstone_retention, conflict_log_limit, max_key_size, max_value_size, tls_cert, tls_key, tls_ca] =
        given;
    let mut config = Config::default();
    let tls = [
        ("tls_cert", tls_cert),
        ("tls_key", tls_key),
        ("tls_ca", tls_ca),
    ]
    .into_iter()
    .map(|(what, o)| match o.filter(|o| !o.is_none()) {
        Some(o) => text(&o, what).map(Some),
        None => Ok(None),
    })
    .collect::<PyResult<Vec<_>>>()?;
    match (&tls[0], &tls[1], &tls[2]) {
        (Some(cert), Some(key), Some(ca)) => {
            config.tls = Some(lbmkv::TlsConfig {
                cert: cert.into(),
                key: key.into(),
                ca: ca.into(),
            })
        }
        (None, None, None) => {}
        _ => {
            return Err(pyo3::exceptions::PyValueError::new_err(
                "tls_cert, tls_key and tls_ca go together",
            ))
        }
    }
    if let Some(name) = name.filter(|o| !o.is_none()) {
        config.name = Some(text(&name, "name")?);
    }
    if let Some(listen) = listen.filter(|o| !o.is_none()) {
        config.listen = text(&listen, "listen")?;
    }
    if let Some(advertise) = advertise.filter(|o| !o.is_none()) {
        config.advertise = Some(text(&advertise, "advertise")?);
    }
    if let Some(seeds) = seeds.filter(|o| !o.is_none()) {
        let list = seeds.cast::<PyList>().map_err(|_| {
            PyTypeError::new_err(format!(
                "seeds must be a list of 'host:port' strings, not {}",
                type_name(&seeds)
            ))
        })?;
        config.seeds = list
            .iter()
            .map(|s| text(&s, "each seed"))
            .collect::<PyResult<_>>()?;
    }
    if let Some(cookie) = cookie.filter(|c| !c.is_none()) {
        config.cookie = Some(buf(&cookie, "cookie")?.into_vec());
    }
    let durations = [
        (
            "failure_timeout",
            failure_timeout,
            &mut config.failure_timeout,
        ),
        (
            "request_timeout",
            request_timeout,
            &mut config.request_timeout,
        ),
        (
            "heartbeat_interval",
            heartbeat_interval,
            &mut config.heartbeat_interval,
        ),
        (
            "handler_timeout",
            handler_timeout,
            &mut config.handler_timeout,
        ),
        (
            "anti_entropy_interval",
            anti_entropy_interval,
            &mut config.anti_entropy_interval,
        ),
        (
            "tombstone_retention",
            tombstone_retention,
            &mut config.tombstone_retention,
        ),
    ];
    for (what, secs, field) in durations {
        if let Some(d) = seconds_arg(secs.as_ref(), what)? {
            *field = d;
        }
    }
    let counts = [
        (
            "conflict_log_limit",
            conflict_log_limit,
            &mut config.conflict_log_limit,
        ),
        ("max_key_size", max_key_size, &mut config.max_key_size),
        ("max_value_size", max_value_size, &mut config.max_value_size),
        ("min_members", min_members, &mut config.min_members),
    ];
    for (what, n, field) in counts {
        if let Some(n) = count_arg(n.as_ref(), what)? {
            *field = n;
        }
    }
    Ok(config)
}

/// The arguments of `wait_for_members`: a count and seconds.
fn members_args(n: &Bound<'_, PyAny>, timeout: &Bound<'_, PyAny>) -> PyResult<(usize, Duration)> {
    let n = count_arg(Some(n), "n")?.unwrap_or(0);
    let timeout = seconds_arg(Some(timeout), "timeout")?.ok_or_else(|| {
        PyTypeError::new_err("timeout must be a number of seconds (int or float), not NoneType")
    })?;
    Ok((n, timeout))
}

/// A value as `bytes`, or `None`.
fn opt_bytes_any(py: Python<'_>, v: Option<Vec<u8>>) -> PyResult<Py<PyAny>> {
    opt_bytes(py, v.as_deref()).into_py_any(py)
}

/// The entries that a key list or pair list gives to a batch write.
fn pair_entries(pairs: &Bound<'_, PyList>) -> PyResult<lbmkv::Entries> {
    let mut entries = Vec::with_capacity(pairs.len());
    for pair in pairs.iter() {
        let pair = pair.cast::<PyTuple>()?;
        if pair.len() != 2 {
            return Err(PyTypeError::new_err("put_many expects (key, value) pairs"));
        }
        let k = buf(&pair.get_item(0)?, "key")?.into_vec();
        let v = buf(&pair.get_item(1)?, "value")?.into_vec();
        entries.push((k, v));
    }
    Ok(entries)
}

fn key_list(keys: &Bound<'_, PyList>) -> PyResult<Vec<Vec<u8>>> {
    keys.iter()
        .map(|k| Ok(buf(&k, "key")?.into_vec()))
        .collect()
}

/// A user function scheduled on `event_loop` for an async update.
fn loop_fn(event_loop: &Bound<'_, PyAny>, func: Bound<'_, PyAny>) -> PyResult<Arc<aio::LoopFn>> {
    Ok(Arc::new(aio::LoopFn {
        event_loop: event_loop.clone().unbind(),
        channel: aio::channel_of(event_loop)?,
        func: function(func, "the update function")?,
        raised: Arc::default(),
    }))
}

/// The outcome of an async update: the exception its function raised, if
/// any, else the core's result.
fn update_outcome<T>(f: &aio::LoopFn, r: lbmkv::Result<T>) -> aio::Outcome<T> {
    match f.take_raised() {
        Some(e) => Err(aio::Failure::Py(e)),
        None => Ok(r?),
    }
}

/// A running node (native half of `lbmkv.Node`).
#[pyclass(frozen, module = "lbmkv._lbmkv", name = "Node")]
struct PyNode {
    inner: ManuallyDrop<blocking::Node>,
}

impl Drop for PyNode {
    fn drop(&mut self) {
        // SAFETY: `inner` was initialized by `ManuallyDrop::new` and is taken
        // only here; `drop` runs once and nothing reads `self` after it, and
        // `ManuallyDrop` keeps the field from being dropped a second time.
        let inner = unsafe { ManuallyDrop::take(&mut self.inner) };
        drop_detached(inner);
    }
}

#[pymethods]
impl PyNode {
    /// Starts a node; options left out or `None` keep the core's defaults.
    #[new]
    #[pyo3(signature = (**options))]
    fn new(py: Python<'_>, options: Option<&Bound<'_, PyDict>>) -> PyResult<Self> {
        let config = config_from(options)?;
        let node = py.detach(|| blocking::Node::start(config)).py_err(py)?;
        Ok(PyNode {
            inner: ManuallyDrop::new(node),
        })
    }

    /// The node's name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// The address peers reach this node at, `host:port`.
    #[getter]
    fn address(&self) -> &str {
        self.inner.address()
    }

    /// Creates (or opens) a table once it is readable and writable here.
    #[pyo3(signature = (name, on_conflict=None))]
    fn create_table(
        &self,
        py: Python<'_>,
        name: &Bound<'_, PyAny>,
        on_conflict: Option<Bound<'_, PyAny>>,
    ) -> PyResult<PyTable> {
        let name = text(name, "the table name")?;
        let h = handler(callable(on_conflict, "on_conflict")?);
        let inner = py.detach(|| self.inner.create_table(&name, h)).py_err(py)?;
        Ok(PyTable::new(inner))
    }

    /// The existing table `name`.
    fn table(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<PyTable> {
        let name = text(name, "the table name")?;
        let inner = self.inner.table(&name).py_err(py)?;
        Ok(PyTable::new(inner))
    }

    /// Names of the tables on this node, sorted.
    fn tables(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        py.detach(|| self.inner.tables()).py_err(py)
    }

    /// Names of the nodes in this node's view, itself included, sorted.
    fn members(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        py.detach(|| self.inner.members()).py_err(py)
    }

    /// The node's description as JSON.
    fn info_json(&self, py: Python<'_>) -> PyResult<String> {
        let info = py.detach(|| self.inner.info()).py_err(py)?;
        serde_json::to_string(&info).map_err(|e| {
            to_py_err(
                py,
                lbmkv::Error::new(ErrorKind::Internal, format!("cannot encode info: {e}")),
            )
        })
    }

    /// The node's metrics in the Prometheus text exposition format.
    fn metrics(&self, py: Python<'_>) -> PyResult<String> {
        py.detach(|| self.inner.metrics()).py_err(py)
    }

    /// Connects to the node at `addr` and waits for the handshake.
    fn connect(&self, py: Python<'_>, addr: &Bound<'_, PyAny>) -> PyResult<()> {
        let addr = text(addr, "addr")?;
        py.detach(|| self.inner.connect(&addr)).py_err(py)
    }

    /// Drops the connection to `name` and refuses it until `connect`.
    fn disconnect(&self, py: Python<'_>, name: &Bound<'_, PyAny>) -> PyResult<()> {
        let name = text(name, "the node name")?;
        py.detach(|| self.inner.disconnect(&name)).py_err(py)
    }

    /// The next event as JSON, waiting at most `timeout` seconds; `None` when none came.
    fn next_event(&self, py: Python<'_>, timeout: &Bound<'_, PyAny>) -> PyResult<Option<String>> {
        let timeout = seconds_arg(Some(timeout), "timeout")?.unwrap_or_default();
        let ev = py.detach(|| self.inner.next_event(timeout)).py_err(py)?;
        Ok(ev.map(|e| e.to_json()))
    }

    /// Leaves the cluster; later calls fail with `Closed`.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| self.inner.close()).py_err(py)
    }

    /// Whether the node is closed.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.as_async().is_closed()
    }

    /// Starts a node on the shared runtime and completes `fut` (a future of
    /// `event_loop`) with it; the options are those of `Node`.
    #[staticmethod]
    #[pyo3(signature = (event_loop, fut, **options))]
    fn start_async(
        event_loop: Bound<'_, PyAny>,
        fut: Bound<'_, PyAny>,
        options: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<aio::Pending> {
        let config = config_from(options)?;
        aio::spawn(
            event_loop,
            fut,
            false,
            async move { Ok(blocking::Node::start_async(config).await?) },
            |py, node| {
                let node = PyNode {
                    inner: ManuallyDrop::new(node),
                };
                Ok(Py::new(py, node)?.into_any())
            },
        )
    }

    /// `create_table` completing `fut`.
    #[pyo3(signature = (event_loop, fut, name, on_conflict=None))]
    fn create_table_async(
        &self,
        event_loop: Bound<'_, PyAny>,
        fut: Bound<'_, PyAny>,
        name: &Bound<'_, PyAny>,
        on_conflict: Option<Bound<'_, PyAny>>,
    ) -> PyResult<aio::Pending> {
        let name = text(name, "the table name")?;
        let h = handler(callable(on_conflict, "on_conflict")?);
        let node = self.inner.as_async().clone();
        aio::spawn(
            event_loop,
            fut,
            false,
            async move { Ok(node.create_table_with(&name, h).await?) },
            |py, t| Ok(Py::new(py, PyTable::new(blocking::Table::from_async(t)))?.into_any()),
        )
    }

    /// `connect` completing `fut`.
    fn connect_async(
        &self,
        event_loop: Bound<'_, PyAny>,
        fut: Bound<'_, PyAny>,
        addr: &Bound<'_, PyAny>,
    ) -> PyResult<aio::Pending> {
        let addr = text(addr, "addr")?;
        let node = self.inner.as_async().clone();
        aio::spawn(
            event_loop,
            fut,
            true,
            async move { Ok(node.connect(&addr).await?) },
            |py, ()| Ok(py.None()),
        )
    }

    /// `disconnect` completing `fut`.
    fn disconnect_async(
        &self,
        event_loop: Bound<'_, PyAny>,
        fut: Bound<'_, PyAny>,
        name: &Bound<'_, PyAny>,
    ) -> PyResult<aio::Pending> {
        let name = text(name, "the node name")?;
        let node = self.inner.as_async().clone();
        aio::spawn(
            event_loop,
            fut,
            false,
            async move { Ok(node.disconnect(&name).await?) },
            |py, ()| Ok(py.None()),
        )
    }

    /// Waits until at least `n` members, this node included, are in the
    /// view, for at most `timeout` seconds (`Unavailable` when they are not).
    fn wait_for_members(
        &self,
        py: Python<'_>,
        n: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let (n, timeout) = members_args(n, timeout)?;
        py.detach(|| self.inner.wait_for_members(n, timeout))
            .py_err(py)
    }

    /// `wait_for_members` completing `fut`.
    fn wait_for_members_async(
        &self,
        event_loop: Bound<'_, PyAny>,
        fut: Bound<'_, PyAny>,
        n: &Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
    ) -> PyResult<aio::Pending> {
        let (n, timeout) = members_args(n, timeout)?;
        let node = self.inner.as_async().clone();
        aio::spawn(
            event_loop,
            fut,
            true,
            async move { Ok(node.wait_for_members(n, timeout).await?) },
            |py, ()| Ok(py.None()),
        )
    }

    /// `next_event` completing `fut` (with the event as JSON, or `None`).
    fn next_event_async(
        &self,
        event_loop: Bound<'_, PyAny>,
        fut: Bound<'_, PyAny>,
        timeout: &Bound<'_, PyAny>,
    ) -> PyResult<aio::Pending> {
        let timeout = seconds_arg(Some(timeout), "timeout")?.unwrap_or_default();
        let node = (*self.inner).clone();
        aio::spawn(
            event_loop,
            fut,
            true,
            async move { Ok(node.next_event_async(timeout).await) },
            |py, ev| ev.map(|e| e.to_json()).into_py_any(py),
        )
    }

    /// `close` completing `fut`.
    fn close_async(
        &self,
        event_loop: Bound<'_, PyAny>,
        fut: Bound<'_, PyAny>,
    ) -> PyResult<aio::Pending> {
        let node = self.inner.as_async().clone();
        aio::spawn(
            event_loop,
            fut,
            false,
            async move { Ok(node.close().await?) },
            |py, ()| Ok(py.None()),
        )
    }
}

/// A replicated table (native half of `lbmkv.Table`).
#[pyclass(frozen, module = "lbmkv._lbmkv", name = "Table")]
struct PyTable {
    inner: ManuallyDrop<blocking::Table>,
}

impl PyTable {
    fn new(inner: blocking::Table) -> Self {
        PyTable {
            inner: ManuallyDrop::new(inner),
        }
    }
}

impl Drop for PyTable {
    fn drop(&mut self) {
        // A table handle may hold the last reference to its node's state.
        // SAFETY: as for `PyNode`: initialized by `ManuallyDrop::new`, taken
        // only here, in a `drop` that runs once, and never read afterwards.
        let inner = unsafe { ManuallyDrop::take(&mut self.inner) };
        drop_detached(inner);
    }
}

#[pymethods]
impl PyTable {
    /// The table's name.
    #[getter]
    fn name(&self) -> &str {
        self.inner.name()
    }

    /// The local value of `key`, or `None` (no network, no copy through Rust).
    fn get<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let key = buf(key, "key")?;
        self.inner
            .with_value(&key, |v| v.map(|v| PyBytes::new(py, v)))
            .py_err(py)
    }

    /// The value of `key` as the table's sequencer has it.
    fn get_strong<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let key = buf(key, "key")?;
        let v = py.detach(|| self.inner.get_strong(&key)).py_err(py)?;
        Ok(opt_bytes(py, v.as_deref()))
    }

    /// Whether `key` has a live value on this node.
    fn contains(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = buf(key, "key")?;
        self.inner.contains(&key).py_err(py)
    }

    /// Sets `key` on every member, for `ttl` seconds when given; returns
    /// the previous value.
    #[pyo3(signature = (key, value, ttl=None))]
    fn put<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
        ttl: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let key = buf(key, "key")?;
        let value = buf(value, "value")?;
        let ttl = seconds_arg(ttl, "ttl")?;
        let prev = py
            .detach(|| self.inner.put_with_ttl(&key, &value, ttl))
            .py_err(py)?;
        Ok(opt_bytes(py, prev.as_deref()))
    }

    /// Sets all `(key, value)` pairs of the list atomically, for `ttl`
    /// seconds when given; returns the previous entries.
    #[pyo3(signature = (pairs, ttl=None))]
    fn put_many<'py>(
        &self,
        py: Python<'py>,
        pairs: &Bound<'py, PyList>,
        ttl: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let entries = pair_entries(pairs)?;
        let ttl = seconds_arg(ttl, "ttl")?;
        let prev = py
            .detach(|| self.inner.put_many_with_ttl(entries, ttl))
            .py_err(py)?;
        entries_dict(py, prev)
    }

    /// Seconds `key` has left before it expires; `None` when it is absent
    /// or never expires.
    fn ttl(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<f64>> {
        let key = buf(key, "key")?;
        let left = self.inner.ttl(&key).py_err(py)?;
        Ok(left.map(|d| d.as_secs_f64()))
    }

    /// Watches the changes of the keys under `prefix` on this node, from
    /// now on; `buffer` changes are kept for a slow consumer (`None`: the
    /// default).
    #[pyo3(signature = (prefix, buffer=None))]
    fn watch(
        &self,
        py: Python<'_>,
        prefix: &Bound<'_, PyAny>,
        buffer: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyWatch> {
        let prefix = buf(prefix, "prefix")?;
        let buffer = match count_arg(buffer, "buffer")? {
            Some(0) => {
                return Err(to_py_err(
                    py,
                    lbmkv::Error::new(
                        ErrorKind::InvalidArgument,
                        "a watch buffer holds at least 1 change",
                    ),
                ))
            }
            Some(n) => n,
            None => 0,
        };
        let inner = self.inner.watch(&prefix, buffer).py_err(py)?;
        Ok(PyWatch { inner })
    }

    /// Deletes `key` everywhere; returns the previous value.
    fn delete<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let key = buf(key, "key")?;
        let prev = py.detach(|| self.inner.delete(&key)).py_err(py)?;
        Ok(opt_bytes(py, prev.as_deref()))
    }

    /// Deletes all keys of the list atomically; returns the previous entries.
    fn delete_many<'py>(
        &self,
        py: Python<'py>,
        keys: &Bound<'py, PyList>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let ks = key_list(keys)?;
        let prev = py.detach(|| self.inner.delete_many(ks)).py_err(py)?;
        entries_dict(py, prev)
    }

    /// Local entries matching both glob patterns, in key order.
    fn match_entries<'py>(
        &self,
        py: Python<'py>,
        key_pattern: &Bound<'py, PyAny>,
        value_pattern: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let kp = buf(key_pattern, "key_pattern")?;
        let vp = buf(value_pattern, "value_pattern")?;
        let entries = py
            .detach(|| self.inner.match_entries(&kp, &vp))
            .py_err(py)?;
        entries_dict(py, entries)
    }

    /// Atomic read-modify-write of `key` with `fn(key, value)`; returns `(old, new)`.
    /// An exception raised by `fn` aborts the update and propagates unchanged.
    /// With `ttl` (seconds) the new value expires after it.
    #[allow(clippy::type_complexity)]
    #[pyo3(signature = (key, func, ttl=None))]
    fn update<'py>(
        &self,
        py: Python<'py>,
        key: &Bound<'py, PyAny>,
        func: Bound<'py, PyAny>,
        ttl: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<(Option<Bound<'py, PyBytes>>, Option<Bound<'py, PyBytes>>)> {
        let key = buf(key, "key")?;
        let func = function(func, "the update function")?;
        let ttl = seconds_arg(ttl, "ttl")?;
        let mut raised: Option<PyErr> = None;
        let result = py.detach(|| {
            self.inner.update_with_ttl(&key, ttl, |k, v| {
                Python::attach(|py| {
                    let r = func
                        .bind(py)
                        .call1((PyBytes::new(py, k), opt_bytes(py, v)))
                        .and_then(|r| optional_value(&r, "the update function's result"));
                    r.map_err(|e| {
                        raised = Some(e);
                        aborted()
                    })
                })
            })
        });
        if let Some(e) = raised {
            return Err(e);
        }
        let (old, new) = result.py_err(py)?;
        Ok((opt_bytes(py, old.as_deref()), opt_bytes(py, new.as_deref())))
    }

    /// Atomic update of the whole table with `fn(key, value)` per entry;
    /// returns the old and new entries that changed.
    fn update_all<'py>(
        &self,
        py: Python<'py>,
        func: Bound<'py, PyAny>,
    ) -> PyResult<(Bound<'py, PyDict>, Bound<'py, PyDict>)> {
        let func = function(func, "the update function")?;
        let mut raised: Option<PyErr> = None;
        let result = py.detach(|| {
            self.inner.update_all(|k, v| {
                Python::attach(|py| {
                    let r = func
                        .bind(py)
                        .call1((PyBytes::new(py, k), PyBytes::new(py, v)))
                        .and_then(|r| optional_value(&r, "the update function's result"));
                    r.map_err(|e| {
                        raised = Some(e);
                        aborted()
                    })
                })
            })
        });
        if let Some(e) = raised {
            return Err(e);
        }
        let (old, new) = result.py_err(py)?;
        Ok((entries_dict(py, old)?, entries_dict(py, new)?))
    }

    /// `get_strong` completing `fut`.
    fn get_strong_async(
        &self,
        event_loop: Bound<'_, PyAny>,
        fut: Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<aio::Pending> {
        let key = buf(key, "key")?.into_vec();
        let t = self.inner.as_async().clone();
        aio::spawn(
            event_loop,
            fut,
            true,
            async move { Ok(t.get_strong(&key).await?) },
            opt_bytes_any,
        )
    }

    /// `put` completing `fut`.
    #[pyo3(signature = (event_loop, fut, key, value, ttl=None))]
    fn put_async(
        &self,
        event_loop: Bound<'_, PyAny>,
        fut: Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<aio::Pending> {
        let key = buf(key, "key")?.into_vec();
        let value = buf(value, "value")?.into_vec();
        let ttl = seconds_arg(ttl, "ttl")?;
        let t = self.inner.as_async().clone();
        aio::spawn(
            event_loop,
            fut,
            false,
            async move {
                Ok(match ttl {
                    Some(ttl) => t.put_expiring(&key, &value, ttl).await?,
                    None => t.put(&key, &value).await?,
                })
            },
            opt_bytes_any,
        )
    }

    /// `put_many` completing `fut`.
    #[pyo3(signature = (event_loop, fut, pairs, ttl=None))]
    fn put_many_async(
        &self,
        event_loop: Bound<'_, PyAny>,
        fut: Bound<'_, PyAny>,
        pairs: &Bound<'_, PyList>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<aio::Pending> {
        let entries = pair_entries(pairs)?;
        let ttl = seconds_arg(ttl, "ttl")?;
        let t = self.inner.as_async().clone();
        aio::spawn(
            event_loop,
            fut,
            false,
            async move {
                Ok(match ttl {
                    Some(ttl) => t.put_many_expiring(entries, ttl).await?,
                    None => t.put_many(entries).await?,
                })
            },
            |py, prev| Ok(entries_dict(py, prev)?.into_any().unbind()),
        )
    }

    /// `delete` completing `fut`.
    fn delete_async(
        &self,
        event_loop: Bound<'_, PyAny>,
        fut: Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<aio::Pending> {
        let key = buf(key, "key")?.into_vec();
        let t = self.inner.as_async().clone();
        aio::spawn(
            event_loop,
            fut,
            false,
            async move { Ok(t.delete(&key).await?) },
            opt_bytes_any,
        )
    }

    /// `delete_many` completing `fut`.
    fn delete_many_async(
        &self,
        event_loop: Bound<'_, PyAny>,
        fut: Bound<'_, PyAny>,
        keys: &Bound<'_, PyList>,
    ) -> PyResult<aio::Pending> {
        let keys = key_list(keys)?;
        let t = self.inner.as_async().clone();
        aio::spawn(
            event_loop,
            fut,
            false,
            async move { Ok(t.delete_many(keys).await?) },
            |py, prev| Ok(entries_dict(py, prev)?.into_any().unbind()),
        )
    }

    /// `update` completing `fut`; `func` runs on the event loop's thread.
    #[pyo3(signature = (event_loop, fut, key, func, ttl=None))]
    fn update_async(
        &self,
        event_loop: Bound<'_, PyAny>,
        fut: Bound<'_, PyAny>,
        key: &Bound<'_, PyAny>,
        func: Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<aio::Pending> {
        let key = buf(key, "key")?.into_vec();
        let ttl = seconds_arg(ttl, "ttl")?;
        let f = loop_fn(&event_loop, func)?;
        let t = self.inner.as_async().clone();
        aio::spawn(
            event_loop,
            fut,
            false,
            async move {
                let r = match ttl {
                    Some(ttl) => {
                        t.update_with_expiring(&key, ttl, |k, v| f.call(k, v.as_deref()))
                            .await
                    }
                    None => t.update_with(&key, |k, v| f.call(k, v.as_deref())).await,
                };
                update_outcome(&f, r)
            },
            |py, (old, new)| {
                (opt_bytes(py, old.as_deref()), opt_bytes(py, new.as_deref())).into_py_any(py)
            },
        )
    }

    /// `update_all` completing `fut`; `func` runs on the event loop's thread.
    fn update_all_async(
        &self,
        event_loop: Bound<'_, PyAny>,
        fut: Bound<'_, PyAny>,
        func: Bound<'_, PyAny>,
    ) -> PyResult<aio::Pending> {
        let f = loop_fn(&event_loop, func)?;
        let t = self.inner.as_async().clone();
        aio::spawn(
            event_loop,
            fut,
            false,
            async move {
                let r = t.update_all_with(|k, v| f.call(k, Some(&v))).await;
                update_outcome(&f, r)
            },
            |py, (old, new)| (entries_dict(py, old)?, entries_dict(py, new)?).into_py_any(py),
        )
    }

    /// Number of live entries on this node.
    fn len(&self, py: Python<'_>) -> PyResult<usize> {
        self.inner.len().py_err(py)
    }

    /// Live keys on this node, sorted.
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let keys = py.detach(|| self.inner.keys()).py_err(py)?;
        PyList::new(py, keys.iter().map(|k| PyBytes::new(py, k)))
    }

    /// Sets (or with `None` removes) this node's conflict handler for the table.
    #[pyo3(signature = (handler))]
    fn set_conflict_handler(
        &self,
        py: Python<'_>,
        handler: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let h = self::handler(callable(handler, "the conflict handler")?);
        py.detach(|| self.inner.set_conflict_handler(h)).py_err(py)
    }

    /// The conflict log, oldest first, as `(key, kept, lost, peer, at_ms)` tuples.
    #[allow(clippy::type_complexity)]
    fn conflicts<'py>(
        &self,
        py: Python<'py>,
    ) -> PyResult<
        Vec<(
            Bound<'py, PyBytes>,
            Option<Bound<'py, PyBytes>>,
            Option<Bound<'py, PyBytes>>,
            String,
            u64,
        )>,
    > {
        let records = self.inner.conflicts().py_err(py)?;
        Ok(records
            .into_iter()
            .map(|r| {
                (
                    PyBytes::new(py, &r.key),
                    opt_bytes(py, r.kept.as_deref()),
                    opt_bytes(py, r.lost.as_deref()),
                    r.peer,
                    r.at_ms,
                )
            })
            .collect())
    }
}

/// How long a blocking `Watch.next` waits between checks for signals
/// (Ctrl-C reaches a thread waiting without a timeout).
const WATCH_SLICE: Duration = Duration::from_millis(100);

/// A watch item as the dict of `lbmkv.Change` or `lbmkv.Lagged`; `None`
/// when nothing came in time, `False` once the watch ended.
fn watch_next_py(py: Python<'_>, next: blocking::WatchNext) -> PyResult<Py<PyAny>> {
    match next {
        blocking::WatchNext::Item(lbmkv::WatchItem::Change(c)) => {
            let d = PyDict::new(py);
            d.set_item("type", "change")?;
            d.set_item("table", c.table)?;
            d.set_item("key", PyBytes::new(py, &c.key))?;
            d.set_item("value", opt_bytes(py, c.value.as_deref()))?;
            d.set_item("prev", opt_bytes(py, c.prev.as_deref()))?;
            d.set_item("cause", c.cause.as_str())?;
            d.set_item("node", c.node)?;
            Ok(d.into_any().unbind())
        }
        blocking::WatchNext::Item(lbmkv::WatchItem::Lagged(n)) => {
            let d = PyDict::new(py);
            d.set_item("type", "lagged")?;
            d.set_item("count", n)?;
            Ok(d.into_any().unbind())
        }
        // An item kind this binding does not know yet: nothing to report.
        blocking::WatchNext::Item(_) | blocking::WatchNext::Timeout => Ok(py.None()),
        blocking::WatchNext::Ended => PyBool::new(py, false).into_py_any(py),
    }
}

/// The changes of a table on this node (native half of `lbmkv.Watch`).
#[pyclass(frozen, module = "lbmkv._lbmkv", name = "Watch")]
struct PyWatch {
    inner: blocking::Watch,
}

#[pymethods]
impl PyWatch {
    /// The next item as a dict, waiting at most `timeout` seconds (`None`:
    /// until one comes); `None` when none came, `False` once the watch ended.
    #[pyo3(signature = (timeout=None))]
    fn next(&self, py: Python<'_>, timeout: Option<&Bound<'_, PyAny>>) -> PyResult<Py<PyAny>> {
        let limit = seconds_arg(timeout, "timeout")?;
        let deadline = limit.and_then(|d| std::time::Instant::now().checked_add(d));
        if limit.is_some_and(|d| d.is_zero()) {
            return watch_next_py(py, self.inner.try_next());
        }
        loop {
            let slice = match deadline {
                Some(d) => d
                    .saturating_duration_since(std::time::Instant::now())
                    .min(WATCH_SLICE),
                None => WATCH_SLICE,
            };
            let next = if slice.is_zero() {
                self.inner.try_next()
            } else {
                py.detach(|| self.inner.next(slice)).py_err(py)?
            };
            match next {
                blocking::WatchNext::Timeout => {
                    if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                        return Ok(py.None());
                    }
                    py.check_signals()?;
                }
                other => return watch_next_py(py, other),
            }
        }
    }

    /// `next` completing `fut` (waiting from the runtime, not a thread).
    #[pyo3(signature = (event_loop, fut, timeout=None))]
    fn next_async(
        &self,
        event_loop: Bound<'_, PyAny>,
        fut: Bound<'_, PyAny>,
        timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<aio::Pending> {
        let timeout = seconds_arg(timeout, "timeout")?;
        let w = self.inner.clone();
        aio::spawn(
            event_loop,
            fut,
            true,
            async move {
                Ok(match w.try_next() {
                    blocking::WatchNext::Timeout => w.next_async(timeout).await,
                    found => found,
                })
            },
            watch_next_py,
        )
    }

    /// Ends the watch: a call waiting in `next` returns, and so do later ones.
    fn close(&self) {
        self.inner.close();
    }
}

/// The native half of the `lbmkv` package.
#[pymodule]
fn _lbmkv(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNode>()?;
    m.add_class::<PyTable>()?;
    m.add_class::<PyWatch>()?;
    m.add_class::<aio::Pending>()?;
    m.add_class::<aio::Reply>()?;
    m.add_class::<aio::Completions>()?;
    m.add_function(wrap_pyfunction!(logs::set_log_handler, m)?)?;
    m.add("__version__", lbmkv::VERSION)?;
    Ok(())
}
