//! lbmkv: an embedded, replicated, partition-tolerant in-memory key-value store.
//!
//! Every node holds a full replica of every table. Writes to a table are ordered
//! by its sequencer (one member that holds the cluster's state and that every
//! member of the view agrees on) and acknowledged once every member of the
//! view applied them; reads are local. When nodes that
//! were apart meet again, tables are merged key by key with vector clocks and
//! the table's conflict handler decides between concurrent versions.
//!
//! ```no_run
//! # async fn demo() -> lbmkv::Result<()> {
//! let node = lbmkv::Node::start(lbmkv::Config::default()).await?;
//! let users = node.create_table("users").await?;
//! users.put(b"alice", b"admin").await?;
//! assert_eq!(users.get(b"alice")?, Some(b"admin".to_vec()));
//! node.close().await?;
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

// Layers, each using only the ones below it:
// node -> table -> merge -> replication -> agreement -> cluster -> context
//      -> replica, sequencer -> resolve -> store, wire, auth, tls -> vclock -> hash
mod agreement;
mod auth;
pub mod blocking;
mod cluster;
mod config;
mod context;
mod error;
mod events;
mod flow;
pub mod glob;
mod hash;
mod info;
mod locks;
pub mod log;
mod merge;
mod metrics;
pub mod net;
mod node;
mod offload;
mod replica;
mod replication;
mod resolve;
pub mod runtime;
mod sequencer;
mod store;
mod table;
mod tls;
#[doc(hidden)]
pub mod vclock;
mod watch;
#[doc(hidden)]
pub mod wire;

pub use auth::{read_cookie_file, COOKIE_ENV, COOKIE_FILE};
pub use config::{
    name_from_bytes, validate_address, validate_cookie, validate_name, validate_positive, Config,
    TlsConfig, ENTRY_OVERHEAD, FRAME_ENVELOPE,
};
pub use error::{Error, ErrorKind, Result};
pub use events::{Event, Events, ResolutionKind};
pub use info::{Info, PeerStats};
pub use log::{set_log_sink, LogLevel, LogRecord, LogSink};
pub use node::Node;
pub use replica::{ConflictRecord, TableStats};
pub use resolve::{handler_fn, Conflict, ConflictHandler, HandlerFuture, Resolution};
pub use table::{Entries, Table, Updated};
pub use watch::{Cause, Change, TryNext, Watch, WatchItem, DEFAULT_WATCH_BUFFER};

/// The version of lbmkv.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
