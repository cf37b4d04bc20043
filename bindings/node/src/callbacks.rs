//! JavaScript functions called from the runtime: update functions and
//! conflict handlers. Each is a weak ThreadsafeFunction (it never keeps the
//! process alive); the call runs on the JavaScript thread and its return value,
//! or the value of a returned Promise, is awaited by the runtime task.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use futures::channel::oneshot;
use napi::bindgen_prelude::*;
use napi::sys;
use napi::threadsafe_function::ThreadsafeFunction;

use crate::conv::{self, Raw};
use crate::error::{type_error, Result};

/// What a user function gave back, once settled.
pub enum Outcome {
    /// Bytes (a `Buffer`, `Uint8Array` or string).
    Value(Vec<u8>),
    /// `null` or `undefined`.
    Nothing,
    /// Something that is not bytes; the message says what.
    Bad(String),
    /// It threw, or its Promise rejected; the JavaScript value is kept.
    Threw(napi::Error),
}

/// What a user function returned at once: an outcome, or a pending Promise.
pub enum Returned {
    /// A plain value, or a throw.
    Ready(Outcome),
    /// A Promise, settled later on the JavaScript thread.
    Pending(oneshot::Receiver<Outcome>),
}

impl Returned {
    /// Waits for the outcome.
    pub async fn settle(self) -> Outcome {
        match self {
            Returned::Ready(o) => o,
            Returned::Pending(rx) => rx.await.unwrap_or_else(|_| {
                Outcome::Bad("a Promise that was dropped before it settled".to_string())
            }),
        }
    }
}

/// Reads a settled value as bytes, `Nothing` or `Bad`.
///
/// # Safety
/// `env` and `v` must be valid for the current call.
unsafe fn outcome_of(env: sys::napi_env, v: sys::napi_value) -> Outcome {
    // SAFETY: `env` and `v` are valid for this call (this function's contract).
    match unsafe { conv::is_nullish(env, v) } {
        Ok(true) => return Outcome::Nothing,
        Ok(false) => {}
        Err(e) => return Outcome::Bad(e.reason),
    }
    // SAFETY: as above; the borrowed bytes are copied by `into_vec` before
    // this function returns.
    match unsafe { conv::bytes(env, v, "the returned value") } {
        Ok(b) => Outcome::Value(b.into_vec()),
        Err(e) => Outcome::Bad(e.reason),
    }
}

impl FromNapiValue for Returned {
    unsafe fn from_napi_value(env: sys::napi_env, v: sys::napi_value) -> napi::Result<Self> {
        let mut is_promise = false;
        // SAFETY: napi-rs calls `from_napi_value` on the JavaScript thread with
        // that call's `env` and a live `v`; `is_promise` is a local.
        unsafe { sys::napi_is_promise(env, v, &mut is_promise) };
        if !is_promise {
            // SAFETY: same `env` and `v`, still within the call.
            return Ok(Returned::Ready(unsafe { outcome_of(env, v) }));
        }
        let (tx, rx) = oneshot::channel();
        let on_value = Rc::new(Cell::new(Some(tx)));
        let on_error = on_value.clone();
        // SAFETY: same `env` and `v`, and `v` was just found to be a Promise,
        // which is what `PromiseRaw` wraps.
        let promise = unsafe { PromiseRaw::<Unknown>::from_napi_value(env, v) }?;
        promise
            .then(move |ctx: CallbackContext<Unknown>| {
                if let Some(tx) = on_value.take() {
                    // SAFETY: the `then` callback runs on the JavaScript thread
                    // with its own live env and settled value, used only here.
                    let _ = tx.send(unsafe { outcome_of(ctx.env.raw(), ctx.value.raw()) });
                }
                Ok(())
            })?
            .catch(move |ctx: CallbackContext<Unknown>| {
                if let Some(tx) = on_error.take() {
                    let _ = tx.send(Outcome::Threw(napi::Error::from_unknown_without_coercion(
                        ctx.value,
                    )));
                }
                Ok(())
            })?;
        Ok(Returned::Pending(rx))
    }
}

/// A user function of two arguments (`update`, `updateAll`).
pub type Fn2 = ThreadsafeFunction<
    (Vec<u8>, Option<Vec<u8>>),
    Returned,
    FnArgs<(Raw, Raw)>,
    Status,
    false,
    true,
>;

/// A conflict handler: `(key, local, remote)`.
pub type Fn3 = ThreadsafeFunction<
    (Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>),
    Returned,
    FnArgs<(Raw, Raw, Raw)>,
    Status,
    false,
    true,
>;

fn napi_failure(e: crate::error::JsErr) -> napi::Error {
    napi::Error::new(Status::GenericFailure, e.reason)
}

/// Checks that `f` is a function.
///
/// # Safety
/// `env` and `f` must be valid for the current call.
unsafe fn expect_function(env: sys::napi_env, f: sys::napi_value, what: &str) -> Result<()> {
    // SAFETY: `env` and `f` are valid for this call (this function's contract).
    if unsafe { conv::type_of(env, f) }? != sys::ValueType::napi_function {
        return Err(type_error(format!(
            "{what} must be a function, got {}",
            // SAFETY: as above.
            unsafe { conv::describe_value(env, f) }
        )));
    }
    Ok(())
}

/// A weak ThreadsafeFunction over `f(key, value)`.
///
/// # Safety
/// `env` and `f` must be valid for the current call.
pub unsafe fn fn2(env: sys::napi_env, f: sys::napi_value, what: &str) -> Result<Fn2> {
    // SAFETY: `env` and `f` are valid for this call (this function's contract).
    unsafe { expect_function(env, f, what) }?;
    // SAFETY: as above, and `f` was just checked to be a function.
    let func = unsafe { Function::<FnArgs<(Raw, Raw)>, Returned>::from_napi_value(env, f) }
        .map_err(crate::error::from_napi)?;
    func.build_threadsafe_function::<(Vec<u8>, Option<Vec<u8>>)>()
        .weak::<true>()
        .callee_handled::<false>()
        .build_callback(|ctx| {
            let env = ctx.env.raw();
            let (key, value) = ctx.value;
            // SAFETY: napi-rs runs this callback on the JavaScript thread with
            // the env of that call, valid until it returns.
            let key = unsafe { conv::buffer(env, &key) }.map_err(napi_failure)?;
            // SAFETY: as above.
            let value = unsafe { conv::opt_buffer(env, value.as_deref()) }.map_err(napi_failure)?;
            Ok(FnArgs::from((Raw(key), Raw(value))))
        })
        .map_err(crate::error::from_napi)
}

/// A weak ThreadsafeFunction over a conflict handler `f(key, local, remote)`.
///
/// # Safety
/// `env` and `f` must be valid for the current call.
pub unsafe fn fn3(env: sys::napi_env, f: sys::napi_value, what: &str) -> Result<Fn3> {
    // SAFETY: `env` and `f` are valid for this call (this function's contract).
    unsafe { expect_function(env, f, what) }?;
    // SAFETY: as above, and `f` was just checked to be a function.
    let func = unsafe { Function::<FnArgs<(Raw, Raw, Raw)>, Returned>::from_napi_value(env, f) }
        .map_err(crate::error::from_napi)?;
    func.build_threadsafe_function::<(Vec<u8>, Option<Vec<u8>>, Option<Vec<u8>>)>()
        .weak::<true>()
        .callee_handled::<false>()
        .build_callback(|ctx| {
            let env = ctx.env.raw();
            let (key, local, remote) = ctx.value;
            // SAFETY: napi-rs runs this callback on the JavaScript thread with
            // the env of that call, valid until it returns.
            let key = unsafe { conv::buffer(env, &key) }.map_err(napi_failure)?;
            // SAFETY: as above.
            let local = unsafe { conv::opt_buffer(env, local.as_deref()) }.map_err(napi_failure)?;
            let remote =
                // SAFETY: as above.
                unsafe { conv::opt_buffer(env, remote.as_deref()) }.map_err(napi_failure)?;
            Ok(FnArgs::from((Raw(key), Raw(local), Raw(remote))))
        })
        .map_err(crate::error::from_napi)
}

/// Calls `f(key, value)` on the JavaScript thread and waits for its outcome.
pub async fn call2(f: &Fn2, key: Vec<u8>, value: Option<Vec<u8>>) -> Outcome {
    match f.call_async_catch((key, value)).await {
        Ok(r) => r.settle().await,
        Err(e) => Outcome::Threw(e),
    }
}

/// The conflict handler of a table, written in JavaScript. A throw, a
/// rejection or a value that is not bytes leaves the conflict unresolved, and
/// the core's fallback applies.
pub struct JsConflictHandler {
    f: Arc<Fn3>,
}

impl JsConflictHandler {
    /// Wraps `f`.
    ///
    /// # Safety
    /// `env` and `f` must be valid for the current call.
    pub unsafe fn new(env: sys::napi_env, f: sys::napi_value) -> Result<Self> {
        Ok(JsConflictHandler {
            // SAFETY: `env` and `f` are valid for this call (this function's
            // contract), which is all `fn3` requires.
            f: Arc::new(unsafe { fn3(env, f, "onConflict") }?),
        })
    }
}

impl lbmkv::ConflictHandler for JsConflictHandler {
    fn resolve(&self, conflict: lbmkv::Conflict) -> lbmkv::HandlerFuture {
        let f = self.f.clone();
        Box::pin(async move {
            let call = f.call_async_catch((conflict.key, conflict.local, conflict.remote));
            let outcome = match call.await {
                Ok(r) => r.settle().await,
                Err(e) => Outcome::Threw(e),
            };
            match outcome {
                Outcome::Value(v) => Ok(lbmkv::Resolution::Value(v)),
                Outcome::Nothing => Ok(lbmkv::Resolution::Delete),
                Outcome::Bad(m) => Err(format!("the conflict handler gave {m}")),
                Outcome::Threw(e) => Err(format!("the conflict handler threw: {}", e.reason)),
            }
        })
    }
}
