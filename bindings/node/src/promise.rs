//! Operations that cross the network return Promises: the work runs as a task
//! on the core's shared runtime and settles a deferred promise, whose value is
//! built on the JavaScript thread. The event loop never waits.

use std::future::Future;
use std::panic::AssertUnwindSafe;

use futures::FutureExt;
use napi::bindgen_prelude::*;
use napi::sys;

use crate::conv::Raw;
use crate::error::{from_core, Result};

/// Why an operation failed: a core error, or a value JavaScript threw (kept
/// as is, so that the caller's own error comes back from `update`).
pub enum Failure {
    /// An error of the core, rejected with its `code`.
    Core(lbmkv::Error),
    /// A value thrown or rejected by a user function.
    Js(napi::Error),
}

impl From<lbmkv::Error> for Failure {
    fn from(e: lbmkv::Error) -> Self {
        Failure::Core(e)
    }
}

type Resolver = Box<dyn FnOnce(Env) -> napi::Result<Raw> + Send>;

/// Runs `fut` on the shared runtime and returns a Promise of its output,
/// converted by `to_js` on the JavaScript thread.
pub fn spawn<T, F, C>(env: &Env, fut: F, to_js: C) -> Result<Raw>
where
    T: Send + 'static,
    F: Future<Output = std::result::Result<T, Failure>> + Send + 'static,
    C: FnOnce(sys::napi_env, T) -> Result<sys::napi_value> + Send + 'static,
{
    let rt = lbmkv::runtime::shared().map_err(from_core)?;
    let (deferred, promise) = env
        .create_deferred::<Raw, Resolver>()
        .map_err(crate::error::from_napi)?;
    let promise = Raw(promise.raw());
    rt.spawn(async move {
        let out = match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(out) => out,
            Err(_) => Err(Failure::Core(lbmkv::Error::new(
                lbmkv::ErrorKind::Internal,
                "an lbmkv operation panicked",
            ))),
        };
        deferred.resolve(Box::new(move |env: Env| settle(env, out, to_js)));
    });
    Ok(promise)
}

/// Builds the value (or the rejection) on the JavaScript thread.
fn settle<T, C>(env: Env, out: std::result::Result<T, Failure>, to_js: C) -> napi::Result<Raw>
where
    C: FnOnce(sys::napi_env, T) -> Result<sys::napi_value>,
{
    let raw_env = env.raw();
    match out {
        Ok(v) => match to_js(raw_env, v) {
            Ok(value) => Ok(Raw(value)),
            Err(e) => Err(rejection(raw_env, e)),
        },
        Err(Failure::Core(e)) => Err(rejection(raw_env, from_core(e))),
        Err(Failure::Js(e)) => Err(e),
    }
}

/// A rejection carrying a JavaScript `Error` with our `code`: the error object
/// is made here and handed through napi-rs by reference, so that its `code`
/// survives (napi-rs would otherwise rebuild it with a Node-API status).
fn rejection(env: sys::napi_env, e: crate::error::JsErr) -> napi::Error {
    // SAFETY: `rejection` is only called from `settle`, on the JavaScript
    // thread with the env of the callback that is running, valid until it
    // returns.
    let value = unsafe { JsError::from(e).into_value(env) };
    if value.is_null() {
        return napi::Error::new(Status::GenericFailure, "the environment is shutting down");
    }
    // SAFETY: `value` is not NULL (checked above) and was just created in
    // `env`, the env of the running callback.
    napi::Error::from_unknown_without_coercion(unsafe { Unknown::from_raw_unchecked(env, value) })
}

/// Runs `start` (argument checks, then [`spawn`]); when it fails, returns a
/// rejected Promise instead of throwing, as an `async` function would.
pub fn run(env: &Env, start: impl FnOnce() -> Result<Raw>) -> Result<Raw> {
    match start() {
        Ok(p) => Ok(p),
        Err(e) => rejected(env.raw(), e),
    }
}

/// A Promise rejected with `e`, or with the pending JavaScript exception when
/// there is one (a getter of an options object threw, say).
fn rejected(env: sys::napi_env, e: crate::error::JsErr) -> Result<Raw> {
    use crate::conv::check;
    let mut deferred = std::ptr::null_mut();
    let mut promise = std::ptr::null_mut();
    let mut pending = false;
    // SAFETY: `rejected` is only called by `run`, from a napi-rs method, with
    // the env napi-rs passed that method, valid for its call; the
    // out-pointers are live locals, `deferred` is the one just created, and
    // `reason` a value just taken or created in `env`.
    unsafe {
        check(
            sys::napi_is_exception_pending(env, &mut pending),
            "napi_is_exception_pending",
        )?;
        let reason = if pending {
            let mut exception = std::ptr::null_mut();
            check(
                sys::napi_get_and_clear_last_exception(env, &mut exception),
                "napi_get_and_clear_last_exception",
            )?;
            exception
        } else {
            JsError::from(e).into_value(env)
        };
        check(
            sys::napi_create_promise(env, &mut deferred, &mut promise),
            "napi_create_promise",
        )?;
        check(
            sys::napi_reject_deferred(env, deferred, reason),
            "napi_reject_deferred",
        )?;
    }
    Ok(Raw(promise))
}
