//! Operations that cross the network return Promises: the work runs as a task
//! on the core's shared runtime and settles a deferred promise, whose value is
//! built on the JavaScript thread. The event loop never waits.

use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

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

/// Builds a finished operation's outcome on the JavaScript thread: the
/// value to resolve with, or the reason to reject with.
type Settle =
    Box<dyn FnOnce(sys::napi_env) -> std::result::Result<sys::napi_value, sys::napi_value> + Send>;

/// A promise's deferred handle, used only on the JavaScript thread that made it.
struct Deferred(sys::napi_deferred);

// SAFETY: the handle is only carried by the runtime's thread, never used
// there; it is resolved back on the JavaScript thread that created it.
unsafe impl Send for Deferred {}

/// The operations of one JavaScript environment that finished and wait for
/// its thread to settle their promises, and the one threadsafe function that
/// wakes it. One per environment instead of one per promise: a promise costs
/// no threadsafe function, cleanup hook or wake-up of its own, and the
/// operations that finish together are settled in one call.
struct Completions {
    done: Mutex<Vec<(Deferred, Settle)>>,
    /// A wake-up is on its way since the last drain.
    signalled: AtomicBool,
    /// The threadsafe function, until the environment tears down (then null):
    /// runtime threads call it under the read lock, teardown releases it
    /// under the write lock.
    tsfn: RwLock<SendTsfn>,
}

struct SendTsfn(sys::napi_threadsafe_function);

// SAFETY: Node-API lets any thread call a threadsafe function; the lock in
// `Completions` keeps calls from racing its release.
unsafe impl Send for SendTsfn {}
// SAFETY: as above: shared calls happen under the read lock only.
unsafe impl Sync for SendTsfn {}

/// The JavaScript thread's view of its environment's queue: the queue, and
/// how many of its operations are in flight (the threadsafe function keeps
/// the event loop alive only while some are).
struct Local {
    env: sys::napi_env,
    completions: Arc<Completions>,
    in_flight: usize,
}

thread_local! {
    static LOCAL: RefCell<Option<Local>> = const { RefCell::new(None) };
}

impl Completions {
    /// Queues a finished operation and wakes the JavaScript thread unless a
    /// wake-up is on its way; an environment that is gone drops it.
    fn push(&self, deferred: Deferred, settle: Settle) {
        if let Ok(mut done) = self.done.lock() {
            done.push((deferred, settle));
        }
        if self.signalled.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Ok(tsfn) = self.tsfn.read() {
            if !tsfn.0.is_null() {
                // SAFETY: the function is live (not yet released: the null
                // check runs under the read lock that teardown waits for).
                unsafe {
                    sys::napi_call_threadsafe_function(
                        tsfn.0,
                        std::ptr::null_mut(),
                        sys::ThreadsafeFunctionCallMode::nonblocking,
                    )
                };
            }
        }
    }
}

/// Called by Node on the JavaScript thread after a wake-up: settles every
/// finished operation.
unsafe extern "C" fn drain(
    env: sys::napi_env,
    _js_callback: sys::napi_value,
    context: *mut std::ffi::c_void,
    _data: *mut std::ffi::c_void,
) {
    if env.is_null() || context.is_null() {
        return;
    }
    // SAFETY: `context` is the `Completions` the environment's `Local` holds
    // a strong reference to for as long as the function lives.
    let completions = unsafe { &*(context as *const Completions) };
    completions.signalled.store(false, Ordering::Release);
    let done = match completions.done.lock() {
        Ok(mut done) => std::mem::take(&mut *done),
        Err(_) => Vec::new(),
    };
    let settled = done.len();
    for (deferred, settle) in done {
        // SAFETY: this is the JavaScript thread of `env`, which made the
        // deferred; each deferred is settled exactly once.
        unsafe {
            match settle(env) {
                Ok(value) => sys::napi_resolve_deferred(env, deferred.0, value),
                Err(reason) => sys::napi_reject_deferred(env, deferred.0, reason),
            };
        }
    }
    LOCAL.with(|local| {
        if let Some(local) = local.borrow_mut().as_mut() {
            local.in_flight = local.in_flight.saturating_sub(settled);
            if local.in_flight == 0 {
                // SAFETY: on the JavaScript thread, with the function live.
                if let Ok(tsfn) = local.completions.tsfn.read() {
                    unsafe { sys::napi_unref_threadsafe_function(env, tsfn.0) };
                }
            }
        }
    });
}

/// Environment teardown: no wake-up may reach a released function.
unsafe extern "C" fn teardown(_arg: *mut std::ffi::c_void) {
    let local = LOCAL.with(|local| local.borrow_mut().take());
    if let Some(local) = local {
        if let Ok(mut tsfn) = local.completions.tsfn.write() {
            if !tsfn.0.is_null() {
                // SAFETY: the function is live and released once, here.
                unsafe {
                    sys::napi_release_threadsafe_function(
                        tsfn.0,
                        sys::ThreadsafeFunctionReleaseMode::abort,
                    )
                };
                tsfn.0 = std::ptr::null_mut();
            }
        }
    }
}

/// The queue of the environment `env` (made on its first operation), with
/// one more operation counted in flight.
fn completions_for(env: sys::napi_env) -> Result<Arc<Completions>> {
    LOCAL.with(|local| {
        let mut local = local.borrow_mut();
        let l = match local.as_mut() {
            Some(l) if l.env == env => l,
            _ => local.insert(Local {
                env,
                completions: new_completions(env)?,
                in_flight: 0,
            }),
        };
        if l.in_flight == 0 {
            if let Ok(tsfn) = l.completions.tsfn.read() {
                // SAFETY: on the JavaScript thread, with the function live.
                unsafe { sys::napi_ref_threadsafe_function(env, tsfn.0) };
            }
        }
        l.in_flight += 1;
        Ok(l.completions.clone())
    })
}

fn new_completions(env: sys::napi_env) -> Result<Arc<Completions>> {
    use crate::conv::check;
    let completions = Arc::new(Completions {
        done: Mutex::new(Vec::new()),
        signalled: AtomicBool::new(false),
        tsfn: RwLock::new(SendTsfn(std::ptr::null_mut())),
    });
    let mut name = std::ptr::null_mut();
    let mut tsfn = std::ptr::null_mut();
    // SAFETY: called on the JavaScript thread of `env` with valid arguments;
    // `context` outlives the function (the `Local` of this thread holds the
    // `Arc`, and a leaked clone stays until the process ends).
    unsafe {
        check(
            sys::napi_create_string_utf8(env, c"lbmkv".as_ptr(), 5, &mut name),
            "napi_create_string_utf8",
        )?;
        let context = Arc::into_raw(completions.clone()) as *mut std::ffi::c_void;
        check(
            sys::napi_create_threadsafe_function(
                env,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                name,
                0,
                1,
                std::ptr::null_mut(),
                None,
                context,
                Some(drain),
                &mut tsfn,
            ),
            "napi_create_threadsafe_function",
        )?;
        check(
            sys::napi_unref_threadsafe_function(env, tsfn),
            "napi_unref_threadsafe_function",
        )?;
        check(
            sys::napi_add_env_cleanup_hook(env, Some(teardown), std::ptr::null_mut()),
            "napi_add_env_cleanup_hook",
        )?;
    }
    if let Ok(mut slot) = completions.tsfn.write() {
        slot.0 = tsfn;
    }
    Ok(completions)
}

/// Runs `fut` on the shared runtime; its output becomes the promise's value
/// through `to_js` (on the JavaScript thread), its failure the rejection.
pub fn spawn<T, F, C>(env: &Env, fut: F, to_js: C) -> Result<Raw>
where
    T: Send + 'static,
    F: Future<Output = std::result::Result<T, Failure>> + Send + 'static,
    C: FnOnce(sys::napi_env, T) -> Result<sys::napi_value> + Send + 'static,
{
    use crate::conv::check;
    let rt = lbmkv::runtime::shared().map_err(from_core)?;
    let raw_env = env.raw();
    let mut deferred = std::ptr::null_mut();
    let mut promise = std::ptr::null_mut();
    // SAFETY: called on the JavaScript thread with the env of the current call.
    check(
        unsafe { sys::napi_create_promise(raw_env, &mut deferred, &mut promise) },
        "napi_create_promise",
    )?;
    let completions = completions_for(raw_env)?;
    let deferred = Deferred(deferred);
    rt.spawn(async move {
        let out = match AssertUnwindSafe(fut).catch_unwind().await {
            Ok(out) => out,
            Err(_) => Err(Failure::Core(lbmkv::Error::new(
                lbmkv::ErrorKind::Internal,
                "an lbmkv operation panicked",
            ))),
        };
        completions.push(deferred, Box::new(move |env| settle(env, out, to_js)));
    });
    Ok(Raw(promise))
}

/// The value or the rejection reason of a finished operation (on the
/// JavaScript thread of `env`).
fn settle<T, C>(
    env: sys::napi_env,
    out: std::result::Result<T, Failure>,
    to_js: C,
) -> std::result::Result<sys::napi_value, sys::napi_value>
where
    C: FnOnce(sys::napi_env, T) -> Result<sys::napi_value>,
{
    match out {
        Ok(v) => to_js(env, v).map_err(|e| reason(env, JsError::from(e))),
        Err(Failure::Core(e)) => Err(reason(env, JsError::from(from_core(e)))),
        // The value JavaScript threw, as it is.
        Err(Failure::Js(e)) => {
            // SAFETY: on the JavaScript thread of `env`, which the value belongs to.
            match unsafe { napi::Error::to_napi_value(env, e) } {
                Ok(value) if !value.is_null() => Err(value),
                _ => Err(reason(
                    env,
                    JsError::from(napi::Error::from_reason("the update function failed")),
                )),
            }
        }
    }
}

/// The rejection reason: a JavaScript exception a conversion left pending,
/// else `e` as a JavaScript `Error` with our `code`.
fn reason<S: AsRef<str>>(env: sys::napi_env, e: JsError<S>) -> sys::napi_value {
    let mut pending = false;
    let mut exception = std::ptr::null_mut();
    // SAFETY: only called from `settle`, on the JavaScript thread of `env`
    // while Node runs a callback in it.
    unsafe {
        if sys::napi_is_exception_pending(env, &mut pending) == sys::Status::napi_ok
            && pending
            && sys::napi_get_and_clear_last_exception(env, &mut exception) == sys::Status::napi_ok
        {
            return exception;
        }
        e.into_value(env)
    }
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
