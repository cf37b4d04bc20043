//! Node.js binding of lbmkv, an embedded, replicated, partition-tolerant
//! in-memory key-value store: a napi-rs addon under a thin JavaScript layer
//! (`index.js`).
//!
//! Everything that crosses the network runs on the core's shared tokio
//! runtime and settles a Promise; local reads are synchronous. JavaScript
//! callbacks (update functions, conflict handlers, the event listener) are
//! called from the runtime through weak ThreadsafeFunctions, and so is the
//! log handler of `setLogger`.

// napi-rs registers exports only outside `cfg(test)`.
#![cfg_attr(test, allow(dead_code))]

mod callbacks;
mod conv;
mod error;
mod fast;
mod logs;
mod node;
mod promise;
mod table;
mod watch;

use napi_derive::napi;

/// The version of lbmkv.
#[napi]
pub fn version() -> String {
    lbmkv::VERSION.to_string()
}
