//! The `Node` class: start, tables, membership, events and close.

use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{select, Either as Select};
use napi::bindgen_prelude::*;
use napi::sys;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use tokio::sync::watch;

use crate::callbacks::JsConflictHandler;
use crate::conv::{self, Raw};
use crate::error::{invalid, range_error, type_error, IntoJs, Result};
use crate::promise::{self, Failure};
use crate::table::Table;

/// How to start a node. Every field is optional; durations are in milliseconds.
#[napi(object)]
pub struct NodeOptions {
    /// Unique name in the cluster (default `<hostname>-<pid>`).
    pub name: Option<String>,
    /// Address to listen on, `host:port` (default `127.0.0.1:0`: a free port).
    pub listen: Option<String>,
    /// The address (`host:port`) peers are told to reach this node at, for NAT
    /// and containers. Default: the listen address; for a wildcard listen
    /// address (`0.0.0.0:7000`), each peer uses the address it sees this node's
    /// connection come from, with the listen port.
    pub advertise: Option<String>,
    /// Addresses (`host:port`) of nodes to join.
    pub seeds: Option<Vec<String>>,
    /// `Node.start` waits until this many members, this node included, are in
    /// the view, and rejects with `UNAVAILABLE` (naming each seed and why it was
    /// not reached) when they are not there within `requestTimeoutMs`. 0 or 1
    /// (default 0): no wait.
    pub min_members: Option<f64>,
    /// Shared cluster secret (default `$LBMKV_COOKIE`, else `~/.lbmkv.cookie`).
    pub cookie: Option<Either<String, Uint8Array>>,
    /// Interval of heartbeats on idle connections (default 250).
    pub heartbeat_interval_ms: Option<f64>,
    /// Silence after which a peer is considered down (default 2000).
    pub failure_timeout_ms: Option<f64>,
    /// Upper bound of one operation: write acknowledgement, strong read, connect (default 5000).
    pub request_timeout_ms: Option<f64>,
    /// Upper bound of one call of a conflict handler (default 5000).
    pub handler_timeout_ms: Option<f64>,
    /// Interval of anti-entropy rounds between connected peers (default 1000).
    pub anti_entropy_interval_ms: Option<f64>,
    /// How long tombstones are kept for merges (default 24 hours).
    pub tombstone_retention_ms: Option<f64>,
    /// Bound of each table's conflict log (default 1000).
    pub conflict_log_limit: Option<f64>,
    /// Largest key in bytes (default 64 KiB).
    pub max_key_size: Option<f64>,
    /// Largest value in bytes (default 62 MiB).
    pub max_value_size: Option<f64>,
    /// Mutual TLS with every peer, whose node name must be a DNS name of its
    /// certificate (without `name`, the node takes its certificate's first).
    pub tls: Option<TlsOptions>,
}

/// Paths of the PEM files of mutual TLS.
#[napi(object)]
pub struct TlsOptions {
    /// This node's certificate chain, its own certificate first.
    pub cert: String,
    /// This node's private key (readable by its owner only).
    pub key: String,
    /// The cluster's CA certificate.
    pub ca: String,
}

/// One table in `NodeInfo`.
#[napi(object)]
pub struct TableStats {
    /// The table's name.
    pub name: String,
    /// Live entries.
    pub entries: f64,
    /// Bytes of live keys and values.
    pub bytes: f64,
    /// Tombstones kept for merges.
    pub tombstones: f64,
    /// Entries in the conflict log.
    pub conflicts: f64,
    /// The table digest: equal digests mean equal replicas.
    pub digest: String,
    /// The member that orders the table's writes for this node, if any yet.
    pub sequencer: Option<String>,
}

/// One connected peer in `NodeInfo`.
#[napi(object)]
pub struct PeerStats {
    /// The peer's name.
    pub name: String,
    /// The address the peer listens on, as it announced it.
    pub address: String,
    /// Milliseconds since the connection joined this node's view.
    pub connected_ms: f64,
    /// Bytes queued for the peer and not yet handed to its socket.
    pub send_queue_bytes: f64,
    /// Milliseconds since the last frame from the peer.
    pub last_heard_ms: f64,
    /// The last round trip of a probe to the peer, in microseconds; absent on
    /// a node that has not sequenced since the connection began.
    pub round_trip_us: Option<f64>,
}

/// A node's description, as `node.info()` returns it.
#[napi(object)]
pub struct NodeInfo {
    /// The version of lbmkv the node runs.
    pub version: String,
    /// Milliseconds since the node started.
    pub uptime_ms: f64,
    /// The node's name.
    pub name: String,
    /// The node's actor id (name and incarnation).
    pub actor: String,
    /// Where it listens, `host:port`.
    pub address: String,
    /// Names of the nodes in its view, itself included, sorted.
    pub members: Vec<String>,
    /// The member whose sequencer this node follows, if any.
    pub sequencer: Option<String>,
    /// The peers this node is connected to, sorted by name.
    pub peers: Vec<PeerStats>,
    /// Tables, sorted by name, each with its sequencer.
    pub tables: Vec<TableStats>,
    /// Bytes this node wrote to peers.
    pub bytes_sent: f64,
    /// Bytes this node read from peers.
    pub bytes_received: f64,
    /// Bytes of merge traffic this node wrote.
    pub merge_bytes_sent: f64,
    /// Bytes queued for peers and not yet handed to their sockets.
    pub send_queue_bytes: f64,
    /// Bytes of the write budget held by writes waiting for sequencers.
    pub write_budget_in_use: f64,
}

fn millis(field: &str, v: Option<f64>, default: Duration) -> Result<Duration> {
    match v {
        None => Ok(default),
        Some(ms) if (0.0..=1e13).contains(&ms) => Ok(Duration::from_secs_f64(ms / 1000.0)),
        Some(ms) => Err(range_error(format!(
            "{field} must be a number of milliseconds >= 0, got {ms}"
        ))),
    }
}

fn count(field: &str, v: Option<f64>, default: usize) -> Result<usize> {
    match v {
        None => Ok(default),
        Some(n) if n.is_finite() && n >= 0.0 && n.fract() == 0.0 && n <= 9.0e15 => Ok(n as usize),
        Some(n) => Err(range_error(format!(
            "{field} must be a whole number >= 0, got {n}"
        ))),
    }
}

/// The fields of `NodeOptions`, as JavaScript spells them.
const START_OPTIONS: &[&str] = &[
    "name",
    "listen",
    "advertise",
    "seeds",
    "minMembers",
    "cookie",
    "heartbeatIntervalMs",
    "failureTimeoutMs",
    "requestTimeoutMs",
    "handlerTimeoutMs",
    "antiEntropyIntervalMs",
    "tombstoneRetentionMs",
    "conflictLogLimit",
    "maxKeySize",
    "maxValueSize",
    "tls",
];

/// Rejects an options object with a key outside `known`: a misspelt option
/// would otherwise be ignored without a word.
///
/// # Safety
/// `env` and `v` must be valid for the current call; `v` must be an object.
unsafe fn known_keys(
    env: sys::napi_env,
    v: sys::napi_value,
    what: &str,
    known: &[&str],
) -> Result<()> {
    // SAFETY: `env` and `v` are valid for this call (this function's contract)
    // and `v` is an object.
    for (k, _) in unsafe { conv::own_entries(env, v) }? {
        // SAFETY: `env` is valid for this call and `k` is a property name just
        // read in it.
        let k = unsafe { conv::string(env, k, "option name") }?;
        if !known.contains(&k.as_str()) {
            return Err(invalid(format!(
                "unknown {what} {k:?}; the options are {}",
                known.join(", ")
            )));
        }
    }
    Ok(())
}

/// Reads the options of `Node.start` into a core configuration.
///
/// # Safety
/// `env` and `v` must be valid for the current call.
unsafe fn config(env: sys::napi_env, v: sys::napi_value) -> Result<lbmkv::Config> {
    let d = lbmkv::Config::default();
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    if unsafe { conv::is_nullish(env, v) }? {
        return Ok(d);
    }
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    if unsafe { conv::type_of(env, v) }? != sys::ValueType::napi_object {
        return Err(type_error(format!(
            "options must be an object, got {}",
            // SAFETY: `env` and `v` are valid for this call (this function's
            // contract).
            unsafe { conv::describe_value(env, v) }
        )));
    }
    // SAFETY: `env` and `v` are valid for this call (this function's contract)
    // and `v` is an object (checked above).
    unsafe { known_keys(env, v, "Node.start option", START_OPTIONS) }?;
    // SAFETY: `env` and `v` are valid for this call (this function's contract)
    // and `v` is an object, which is what `NodeOptions` reads.
    let o = unsafe { NodeOptions::from_napi_value(env, v) }
        .map_err(|e| type_error(format!("bad options: {}", e.reason)))?;
    let cookie = match o.cookie {
        None => None,
        Some(Either::A(s)) => Some(s.into_bytes()),
        Some(Either::B(b)) => Some(b.to_vec()),
    };
    Ok(lbmkv::Config {
        name: o.name,
        listen: o.listen.unwrap_or(d.listen),
        advertise: o.advertise,
        seeds: o.seeds.unwrap_or_default(),
        min_members: count("minMembers", o.min_members, d.min_members)?,
        cookie,
        heartbeat_interval: millis(
            "heartbeatIntervalMs",
            o.heartbeat_interval_ms,
            d.heartbeat_interval,
        )?,
        failure_timeout: millis("failureTimeoutMs", o.failure_timeout_ms, d.failure_timeout)?,
        request_timeout: millis("requestTimeoutMs", o.request_timeout_ms, d.request_timeout)?,
        handler_timeout: millis("handlerTimeoutMs", o.handler_timeout_ms, d.handler_timeout)?,
        anti_entropy_interval: millis(
            "antiEntropyIntervalMs",
            o.anti_entropy_interval_ms,
            d.anti_entropy_interval,
        )?,
        tombstone_retention: millis(
            "tombstoneRetentionMs",
            o.tombstone_retention_ms,
            d.tombstone_retention,
        )?,
        conflict_log_limit: count(
            "conflictLogLimit",
            o.conflict_log_limit,
            d.conflict_log_limit,
        )?,
        max_key_size: count("maxKeySize", o.max_key_size, d.max_key_size)?,
        max_value_size: count("maxValueSize", o.max_value_size, d.max_value_size)?,
        tls: o.tls.map(|t| lbmkv::TlsConfig {
            cert: t.cert.into(),
            key: t.key.into(),
            ca: t.ca.into(),
        }),
        ..d
    })
}

/// Reads the conflict handler from the options of `createTable`.
///
/// # Safety
/// `env` and `v` must be valid for the current call.
unsafe fn table_handler(
    env: sys::napi_env,
    v: sys::napi_value,
) -> Result<Option<Arc<dyn lbmkv::ConflictHandler>>> {
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    if unsafe { conv::is_nullish(env, v) }? {
        return Ok(None);
    }
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    if unsafe { conv::type_of(env, v) }? != sys::ValueType::napi_object {
        return Err(type_error(format!(
            "table options must be an object, got {}",
            // SAFETY: `env` and `v` are valid for this call (this function's
            // contract).
            unsafe { conv::describe_value(env, v) }
        )));
    }
    // SAFETY: `env` and `v` are valid for this call (this function's contract)
    // and `v` is an object (checked above).
    unsafe { known_keys(env, v, "createTable option", &["onConflict"]) }?;
    // SAFETY: `env` and `v` are valid for this call (this function's contract)
    // and `v` is an object.
    let f = unsafe { conv::property(env, v, c"onConflict") }?;
    // SAFETY: `env` is valid for this call and `f` is a property value just
    // read in it.
    unsafe { handler(env, f) }
}

/// A conflict handler from a function, `None` from `null` or `undefined`.
///
/// # Safety
/// `env` and `f` must be valid for the current call.
pub(crate) unsafe fn handler(
    env: sys::napi_env,
    f: sys::napi_value,
) -> Result<Option<Arc<dyn lbmkv::ConflictHandler>>> {
    // SAFETY: `env` and `f` are valid for this call (this function's contract).
    if unsafe { conv::is_nullish(env, f) }? {
        return Ok(None);
    }
    // SAFETY: `env` and `f` are valid for this call (this function's contract).
    Ok(Some(Arc::new(unsafe { JsConflictHandler::new(env, f) }?)))
}

/// The listener of a node's events: `emit(type, arg1, arg2)`.
type EmitFn = ThreadsafeFunction<lbmkv::Event, (), FnArgs<(Raw, Raw, Raw)>, Status, false, true>;

/// The JavaScript arguments of an event.
///
/// # Safety
/// `env` must be the env of the current call on the JavaScript thread.
unsafe fn event_args(env: sys::napi_env, ev: lbmkv::Event) -> Result<FnArgs<(Raw, Raw, Raw)>> {
    use lbmkv::Event as E;
    // SAFETY: `env` is valid for this call (this function's contract), and the
    // closure is only called within it.
    let s = |x: &str| unsafe { conv::js_string(env, x) };
    // SAFETY: `env` is valid for this call (this function's contract).
    let undef = unsafe { conv::undefined(env) }?;
    let (kind, a, b) = match ev {
        E::NodeUp { node } => ("nodeup", s(&node)?, undef),
        E::NodeDown { node, reason } => ("nodedown", s(&node)?, s(&reason)?),
        E::TableCreated { table } => ("tablecreated", s(&table)?, undef),
        E::Merged {
            table,
            peer,
            keys_changed,
            conflicts,
        } => {
            // SAFETY: `env` is valid for this call (this function's contract).
            let o = unsafe { conv::object(env) }?;
            // SAFETY: `env` is valid for this call (this function's contract)
            // and `o` is the object just created in it.
            unsafe {
                conv::set_property(env, o, c"table", s(&table)?)?;
                conv::set_property(env, o, c"peer", s(&peer)?)?;
                conv::set_property(
                    env,
                    o,
                    c"keysChanged",
                    conv::number(env, keys_changed as f64)?,
                )?;
                conv::set_property(env, o, c"conflicts", conv::number(env, conflicts as f64)?)?;
            }
            ("merged", o, undef)
        }
        E::Conflict {
            table,
            key,
            resolution,
        } => {
            // SAFETY: `env` is valid for this call (this function's contract).
            let o = unsafe { conv::object(env) }?;
            let resolution = match resolution {
                lbmkv::ResolutionKind::Handler => "handler",
                lbmkv::ResolutionKind::Fallback => "fallback",
                lbmkv::ResolutionKind::HandlerFailed => "handler_failed",
                _ => "other",
            };
            // SAFETY: `env` is valid for this call (this function's contract)
            // and `o` is the object just created in it.
            unsafe {
                conv::set_property(env, o, c"table", s(&table)?)?;
                conv::set_property(env, o, c"key", s(&key)?)?;
                conv::set_property(env, o, c"resolution", s(resolution)?)?;
            }
            ("conflict", o, undef)
        }
        // A kind of event newer than this addon: emitted by its JSON form.
        other => ("event", s(&other.to_json())?, undef),
    };
    Ok(FnArgs::from((Raw(s(kind)?), Raw(a), Raw(b))))
}

/// A member of an lbmkv cluster, living in this process. Start one with
/// `Node.start()`; it is an `EventEmitter` (`nodeup`, `nodedown`,
/// `tablecreated`, `merged`, `conflict`) and keeps the process alive until
/// `close()` (or `unref()`).
#[napi]
pub struct Node {
    inner: lbmkv::Node,
    events: Mutex<Option<lbmkv::Events>>,
    closed: watch::Sender<bool>,
}

#[napi]
impl Node {
    /// Starts a node: binds its listener and makes a first attempt to reach
    /// every seed. Resolves once the node is up (with `minMembers`, once that
    /// many members are in its view).
    #[napi(
        writable = true,
        configurable = true,
        ts_args_type = "options?: NodeOptions | null",
        ts_return_type = "Promise<Node>"
    )]
    pub fn start(env: Env, options: Unknown) -> Result<Raw> {
        promise::run(&env, || {
            // SAFETY: napi-rs passes this method the env of the current
            // JavaScript call and argument handles valid in it.
            let config = unsafe { config(env.raw(), options.raw()) }?;
            promise::spawn(
                &env,
                async move {
                    let node = lbmkv::Node::start(config).await?;
                    let events = node.subscribe();
                    Ok::<_, Failure>((node, events))
                },
                |env, (inner, events)| {
                    let node = Node {
                        inner,
                        events: Mutex::new(Some(events)),
                        closed: watch::channel(false).0,
                    };
                    // SAFETY: `settle` runs this conversion on the JavaScript
                    // thread with the env of that callback, valid until it
                    // returns; `Node` is a `#[napi]` class, which
                    // `to_napi_value` wraps.
                    unsafe { ToNapiValue::to_napi_value(env, node) }.js()
                },
            )
        })
    }

    /// The node's name.
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.inner.name().to_string()
    }

    /// The address peers reach this node at, `host:port`.
    #[napi(getter)]
    pub fn address(&self) -> String {
        self.inner.address().to_string()
    }

    /// Creates the table `name` (or returns the existing one) once it is
    /// readable and writable here; `onConflict` becomes its conflict handler.
    #[napi(
        ts_args_type = "name: string, options?: TableOptions | null",
        ts_return_type = "Promise<Table>"
    )]
    pub fn create_table(&self, env: Env, name: Unknown, options: Unknown) -> Result<Raw> {
        promise::run(&env, || {
            // SAFETY: napi-rs passes this method the env of the current
            // JavaScript call and argument handles valid in it.
            let name = unsafe { conv::string(env.raw(), name.raw(), "table name") }?;
            // SAFETY: napi-rs passes this method the env of the current
            // JavaScript call and argument handles valid in it.
            let handler = unsafe { table_handler(env.raw(), options.raw()) }?;
            let node = self.inner.clone();
            promise::spawn(
                &env,
                async move {
                    let table = node.create_table_with(&name, handler).await?;
                    Ok::<_, Failure>((table, node))
                },
                |env, (table, node)| {
                    // SAFETY: `settle` runs this conversion on the JavaScript
                    // thread with the env of that callback, valid until it
                    // returns; `Table` is a `#[napi]` class, which
                    // `to_napi_value` wraps.
                    unsafe { ToNapiValue::to_napi_value(env, Table::new(table, node)) }.js()
                },
            )
        })
    }

    /// The existing table `name`; throws `NO_SUCH_TABLE` when there is none.
    #[napi(ts_args_type = "name: string")]
    pub fn table(&self, env: Env, name: Unknown) -> Result<Table> {
        // SAFETY: napi-rs passes this method the env of the current JavaScript
        // call and argument handles valid in it.
        let name = unsafe { conv::string(env.raw(), name.raw(), "table name") }?;
        let table = self.inner.table(&name).js()?;
        Ok(Table::new(table, self.inner.clone()))
    }

    /// Names of the tables on this node, sorted.
    #[napi]
    pub fn tables(&self) -> Result<Vec<String>> {
        self.inner.tables().js()
    }

    /// Names of the nodes in this node's view, itself included, sorted.
    #[napi]
    pub fn members(&self) -> Result<Vec<String>> {
        self.inner.members().js()
    }

    /// A description of the node, its peers and its tables.
    #[napi]
    pub fn info(&self) -> Result<NodeInfo> {
        let i = self.inner.info().js()?;
        Ok(NodeInfo {
            version: i.version,
            uptime_ms: i.uptime_ms as f64,
            name: i.name,
            actor: i.actor,
            address: i.address,
            members: i.members,
            sequencer: i.sequencer,
            peers: i
                .peers
                .into_iter()
                .map(|p| PeerStats {
                    name: p.name,
                    address: p.address,
                    connected_ms: p.connected_ms as f64,
                    send_queue_bytes: p.send_queue_bytes as f64,
                    last_heard_ms: p.last_heard_ms as f64,
                    round_trip_us: p.round_trip_us.map(|us| us as f64),
                })
                .collect(),
            tables: i
                .tables
                .into_iter()
                .map(|t| TableStats {
                    name: t.name,
                    entries: t.entries as f64,
                    bytes: t.bytes as f64,
                    tombstones: t.tombstones as f64,
                    conflicts: t.conflicts as f64,
                    digest: t.digest,
                    sequencer: t.sequencer,
                })
                .collect(),
            bytes_sent: i.bytes_sent as f64,
            bytes_received: i.bytes_received as f64,
            merge_bytes_sent: i.merge_bytes_sent as f64,
            send_queue_bytes: i.send_queue_bytes as f64,
            write_budget_in_use: i.write_budget_in_use as f64,
        })
    }

    /// The node's metrics in the Prometheus text exposition format (version
    /// 0.0.4), ready to serve at `/metrics`.
    #[napi]
    pub fn metrics(&self) -> Result<String> {
        self.inner.metrics().js()
    }

    /// Connects to the node at `address` (`host:port`) and waits for the
    /// handshake; also lifts a `disconnect` of that node.
    #[napi(ts_args_type = "address: string", ts_return_type = "Promise<void>")]
    pub fn connect(&self, env: Env, address: Unknown) -> Result<Raw> {
        promise::run(&env, || {
            // SAFETY: napi-rs passes this method the env of the current
            // JavaScript call and argument handles valid in it.
            let addr = unsafe { conv::string(env.raw(), address.raw(), "address") }?;
            let node = self.inner.clone();
            promise::spawn(
                &env,
                async move { Ok::<_, Failure>(node.connect(&addr).await?) },
                // SAFETY: `settle` runs this conversion on the JavaScript
                // thread with the env of that callback, valid until it returns.
                |env, ()| unsafe { conv::undefined(env) },
            )
        })
    }

    /// Drops the connection to the node `name` and refuses it until `connect`
    /// is called for it again.
    #[napi(ts_args_type = "name: string", ts_return_type = "Promise<void>")]
    pub fn disconnect(&self, env: Env, name: Unknown) -> Result<Raw> {
        promise::run(&env, || {
            // SAFETY: napi-rs passes this method the env of the current
            // JavaScript call and argument handles valid in it.
            let name = unsafe { conv::string(env.raw(), name.raw(), "node name") }?;
            let node = self.inner.clone();
            promise::spawn(
                &env,
                async move { Ok::<_, Failure>(node.disconnect(&name).await?) },
                // SAFETY: `settle` runs this conversion on the JavaScript
                // thread with the env of that callback, valid until it returns.
                |env, ()| unsafe { conv::undefined(env) },
            )
        })
    }

    /// Resolves once at least `n` members, this node included, are in the
    /// view; rejects with `UNAVAILABLE` (how many there are, and why each
    /// seed was not reached) after `timeoutMs`, with `CLOSED` at once when the
    /// node closes meanwhile. The `minMembers` wait of `Node.start`, later.
    #[napi(
        js_name = "waitForMembers",
        ts_args_type = "n: number, timeoutMs: number",
        ts_return_type = "Promise<void>"
    )]
    pub fn wait_for_members(&self, env: Env, n: Unknown, timeout_ms: Unknown) -> Result<Raw> {
        promise::run(&env, || {
            // SAFETY: napi-rs passes this method the env of the current
            // JavaScript call and argument handles valid in it.
            let n = unsafe { conv::number_arg(env.raw(), n.raw(), "n") }?;
            // SAFETY: as above.
            let ms = unsafe { conv::number_arg(env.raw(), timeout_ms.raw(), "timeoutMs") }?;
            let n = count("n", Some(n), 0)?;
            let timeout = millis("timeoutMs", Some(ms), Duration::ZERO)?;
            let node = self.inner.clone();
            promise::spawn(
                &env,
                async move { Ok::<_, Failure>(node.wait_for_members(n, timeout).await?) },
                // SAFETY: `settle` runs this conversion on the JavaScript
                // thread with the env of that callback, valid until it returns.
                |env, ()| unsafe { conv::undefined(env) },
            )
        })
    }

    /// Leaves the cluster (the peers see `nodedown` at once) and stops the
    /// node; later calls fail with `CLOSED`. Closing twice is harmless.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close(&self, env: Env) -> Result<Raw> {
        promise::run(&env, || {
            let node = self.inner.clone();
            let closed = self.closed.clone();
            promise::spawn(
                &env,
                async move {
                    let out = node.close().await;
                    closed.send_replace(true);
                    Ok::<_, Failure>(out?)
                },
                // SAFETY: `settle` runs this conversion on the JavaScript
                // thread with the env of that callback, valid until it returns.
                |env, ()| unsafe { conv::undefined(env) },
            )
        })
    }

    /// Closes the node: `await using node = await Node.start()`.
    #[napi(well_known_symbol = "asyncDispose", ts_return_type = "Promise<void>")]
    pub fn async_dispose(&self, env: Env) -> Result<Raw> {
        self.close(env)
    }

    /// Forwards the node's events to `emit(type, arg1, arg2)` on the
    /// JavaScript thread, from the node's start until it closes. Called once,
    /// by the JavaScript layer.
    #[napi(js_name = "_listen", skip_typescript)]
    pub fn listen(&self, env: Env, emit: Unknown) -> Result<()> {
        let raw_env = env.raw();
        // SAFETY: napi-rs passes this method the env of the current JavaScript
        // call and argument handles valid in it.
        if unsafe { conv::type_of(raw_env, emit.raw()) }? != sys::ValueType::napi_function {
            return Err(invalid("the event listener must be a function"));
        }
        let Some(mut events) = self.events.lock().ok().and_then(|mut e| e.take()) else {
            return Err(invalid("the node's events are already forwarded"));
        };
        // SAFETY: napi-rs passes this method the env of the current JavaScript
        // call and argument handles valid in it, and `emit` was just checked to
        // be a function.
        let func = unsafe {
            Function::<FnArgs<(Raw, Raw, Raw)>, ()>::from_napi_value(raw_env, emit.raw())
        }
        .js()?;
        let emit: EmitFn = func
            .build_threadsafe_function::<lbmkv::Event>()
            .weak::<true>()
            .callee_handled::<false>()
            .build_callback(|ctx| {
                // SAFETY: napi-rs runs this callback on the JavaScript thread
                // with the env of that call, which is what `event_args`
                // requires.
                unsafe { event_args(ctx.env.raw(), ctx.value) }
                    .map_err(|e| napi::Error::new(Status::GenericFailure, e.reason))
            })
            .js()?;
        let mut closed = self.closed.subscribe();
        let rt = lbmkv::runtime::shared().js()?;
        rt.spawn(async move {
            let forward = |ev| emit.call(ev, ThreadsafeFunctionCallMode::NonBlocking) == Status::Ok;
            loop {
                if *closed.borrow() {
                    break;
                }
                let next = pin!(events.next());
                let stop = pin!(closed.changed());
                match select(next, stop).await {
                    Select::Left((Some(ev), _)) => {
                        if !forward(ev) {
                            return;
                        }
                    }
                    Select::Left((None, _)) => return,
                    // Closed, or the node object was collected.
                    Select::Right(_) => break,
                }
            }
            while let Some(ev) = events.try_next() {
                if !forward(ev) {
                    return;
                }
            }
        });
        Ok(())
    }
}
