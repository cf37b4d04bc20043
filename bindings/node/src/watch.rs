//! The `Watch` class: the changes of a table's keys on this node, pulled one
//! at a time by the JavaScript layer (`index.js`), which makes it an async
//! iterable and an `EventEmitter`.

use std::time::Duration;

use lbmkv::blocking::{self, WatchNext};
use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;

use crate::conv::{self, Raw};
use crate::error::{range_error, Result};
use crate::promise::{self, Failure};

/// A watch of a table's changes on this node. Get one from `table.watch()`.
#[napi]
pub struct Watch {
    pub(crate) inner: blocking::Watch,
    // Keeps the node open while a watch handle is reachable.
    pub(crate) _node: lbmkv::Node,
}

/// The JavaScript form of what `next` found: `{ type: 'change', table, key,
/// value, prev, cause, node }`, `{ type: 'lagged', count }`, `null` when
/// nothing came in time, `false` once the watch ended.
///
/// # Safety
/// `env` must be valid for the current call.
unsafe fn item(env: sys::napi_env, next: WatchNext) -> Result<sys::napi_value> {
    // SAFETY: `env` is valid for this call (this function's contract); every
    // value set is created in it just before.
    unsafe {
        match next {
            WatchNext::Item(lbmkv::WatchItem::Change(c)) => {
                let o = conv::object(env)?;
                conv::set_property(env, o, c"type", conv::js_string(env, "change")?)?;
                conv::set_property(env, o, c"table", conv::js_string(env, &c.table)?)?;
                conv::set_property(env, o, c"key", conv::buffer(env, &c.key)?)?;
                conv::set_property(env, o, c"value", conv::opt_buffer(env, c.value.as_deref())?)?;
                conv::set_property(env, o, c"prev", conv::opt_buffer(env, c.prev.as_deref())?)?;
                conv::set_property(env, o, c"cause", conv::js_string(env, c.cause.as_str())?)?;
                conv::set_property(env, o, c"node", conv::js_string(env, &c.node)?)?;
                Ok(o)
            }
            WatchNext::Item(lbmkv::WatchItem::Lagged(n)) => {
                let o = conv::object(env)?;
                conv::set_property(env, o, c"type", conv::js_string(env, "lagged")?)?;
                // Counts above 2^53 are not exact as numbers; none gets there.
                conv::set_property(env, o, c"count", conv::number(env, n as f64)?)?;
                Ok(o)
            }
            // An item kind this binding does not know yet: nothing to report.
            WatchNext::Item(_) | WatchNext::Timeout => conv::null(env),
            WatchNext::Ended => {
                let mut out = std::ptr::null_mut();
                conv::check(
                    sys::napi_get_boolean(env, false, &mut out),
                    "napi_get_boolean",
                )?;
                Ok(out)
            }
        }
    }
}

#[napi]
impl Watch {
    /// The next item, waiting at most `timeoutMs` (`null`/`undefined`: until
    /// one comes): a change, a lag, `null` when nothing came in time, `false`
    /// once the watch ended. The JavaScript layer builds `next()` and the
    /// iteration on it.
    #[napi(js_name = "_next", skip_typescript)]
    pub fn next(&self, env: Env, timeout_ms: Option<f64>) -> Result<Raw> {
        promise::run(&env, || {
            let timeout = match timeout_ms {
                None => None,
                Some(ms) => Some(Duration::try_from_secs_f64(ms / 1000.0).map_err(|_| {
                    range_error(format!(
                        "timeoutMs must be a finite, non-negative number, got {ms}"
                    ))
                })?),
            };
            let w = self.inner.clone();
            promise::spawn(
                &env,
                async move {
                    Ok::<_, Failure>(match w.try_next() {
                        WatchNext::Timeout if timeout.is_none_or(|t| !t.is_zero()) => {
                            w.next_async(timeout).await
                        }
                        found => found,
                    })
                },
                // SAFETY: `settle` runs this conversion on the JavaScript
                // thread with the env of that callback, valid until it returns.
                |env, next| unsafe { item(env, next) },
            )
        })
    }

    /// Ends the watch: the iteration stops, a pending `next()` resolves
    /// with `undefined`, and the `end` event is emitted. Calling it again
    /// does nothing.
    #[napi]
    pub fn close(&self) {
        self.inner.close();
    }
}
