//! The process-wide tokio runtime that the blocking API (and through it the C,
//! Python and Node.js bindings) runs nodes on.
//!
//! The runtime belongs to the process that built it. `fork()` copies the
//! runtime object into the child but none of its worker threads, so the child
//! must not use it: every task it was given would wait forever. On Unix a
//! `pthread_atfork` child handler forgets the runtime in the child, which then
//! builds its own on first use. The parent's runtime is left alone in the
//! child, never dropped (dropping joins worker threads that do not exist
//! there). Should registering the handler fail, the runtime's owner process id
//! is compared on every call instead.
//!
//! Nodes started before the fork keep living in the parent only: their tasks
//! ran on the parent's workers. A child starts its own nodes.

use std::process;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

use crate::error::{Error, Result};

/// A runtime and the process that built it.
struct Owned {
    runtime: tokio::runtime::Runtime,
    pid: u32,
}

/// The current process's runtime, or null before the first use (and in the
/// child of a fork, until its first use). A published pointer comes from
/// `Box::into_raw` and is never freed: when it is replaced (only in a forked
/// child) the old runtime is abandoned, not dropped. Hence `&'static`.
static CURRENT: AtomicPtr<Owned> = AtomicPtr::new(ptr::null_mut());

/// Whether the fork handler is registered (or there is no fork on this
/// platform): `CURRENT` is then reset in every child, and the hot path needs no
/// process id check.
static FORK_SAFE: AtomicBool = AtomicBool::new(false);

/// Whether some thread has started registering the fork handler.
static REGISTERING: AtomicBool = AtomicBool::new(false);

/// The shared multi-thread runtime, built on first use in this process with at
/// least two workers. Cheap after the first call: one or two atomic loads.
pub fn shared() -> Result<&'static tokio::runtime::Runtime> {
    let owned = CURRENT.load(Ordering::Acquire);
    if let Some(runtime) = usable(owned) {
        return Ok(runtime);
    }
    install(owned)
}

/// The runtime behind `owned` if this process may use it.
#[inline]
fn usable(owned: *mut Owned) -> Option<&'static tokio::runtime::Runtime> {
    // SAFETY: a non-null pointer in `CURRENT` came from `Box::into_raw` in
    // `install` and is never freed (a replaced runtime is leaked, see
    // `CURRENT`), so it stays valid for the rest of the process; the Acquire
    // load that read it pairs with the Release of its publication, so the
    // `Owned` it points to is fully initialized.
    let owned = unsafe { owned.as_ref() }?;
    if FORK_SAFE.load(Ordering::Relaxed) || owned.pid == process::id() {
        Some(&owned.runtime)
    } else {
        None
    }
}

/// Builds this process's runtime and publishes it in place of `seen` (null, or
/// a runtime inherited through a fork), unless another thread got there first.
#[cold]
fn install(mut seen: *mut Owned) -> Result<&'static tokio::runtime::Runtime> {
    register_fork_handler();
    loop {
        let fresh = Box::into_raw(Box::new(Owned {
            runtime: build()?,
            pid: process::id(),
        }));
        match CURRENT.compare_exchange(seen, fresh, Ordering::AcqRel, Ordering::Acquire) {
            // `seen`, if not null, belonged to the parent of a fork: leaked.
            // SAFETY: `fresh` is now published, and published pointers are
            // never freed (see `CURRENT`).
            Ok(_) => return Ok(unsafe { &(*fresh).runtime }),
            Err(now) => {
                // SAFETY: `fresh` was not published, so this thread still owns
                // the box it came from.
                let lost = unsafe { Box::from_raw(fresh) };
                // Nothing runs on it yet; no joining, so this is fine on any
                // thread (a plain drop panics inside an async context).
                lost.runtime.shutdown_background();
                if let Some(runtime) = usable(now) {
                    return Ok(runtime);
                }
                seen = now;
            }
        }
    }
}

fn build() -> Result<tokio::runtime::Runtime> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .clamp(2, 8);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("lbmkv")
        .enable_all()
        .build()
        .map_err(|e| Error::internal(format!("cannot start the lbmkv runtime: {e}")))
}

/// Registers `forget_in_child` once per process (children inherit it). Until
/// it is registered, `usable` compares process ids.
fn register_fork_handler() {
    if REGISTERING.swap(true, Ordering::AcqRel) {
        return;
    }
    #[cfg(unix)]
    {
        // SAFETY: the three arguments are valid handlers or null, as
        // pthread_atfork(3) requires; `forget_in_child` never unwinds and is
        // async-signal-safe (one atomic store), as a handler run after
        // `fork()` in a multi-threaded process must be.
        let rc = unsafe { pthread_atfork(None, None, Some(forget_in_child)) };
        if rc != 0 {
            // Out of memory: the process id check stays on.
            return;
        }
    }
    FORK_SAFE.store(true, Ordering::Release);
}

#[cfg(unix)]
extern "C" {
    // POSIX (libc on Linux and macOS); declared here rather than through a
    // `libc` dependency for this one function.
    fn pthread_atfork(
        prepare: Option<unsafe extern "C" fn()>,
        parent: Option<unsafe extern "C" fn()>,
        child: Option<unsafe extern "C" fn()>,
    ) -> std::ffi::c_int;
}

/// Runs in the child right after `fork()`, on the only thread there: the
/// parent's runtime has no workers in the child, so the next `shared()` builds
/// a new one. Only an atomic store: nothing that could take a lock held by a
/// thread that did not survive the fork.
#[cfg(unix)]
extern "C" fn forget_in_child() {
    CURRENT.store(ptr::null_mut(), Ordering::Release);
}

/// Runs `fut` to completion on the calling thread, driven by the shared runtime.
/// Refuses (instead of deadlocking) when called from a thread of a tokio runtime,
/// such as inside a conflict handler.
pub fn block_on<F: std::future::Future>(fut: F) -> Result<F::Output> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(Error::new(
            crate::ErrorKind::WouldDeadlock,
            "a blocking lbmkv call was made from an lbmkv runtime thread (for example inside a conflict handler)",
        ));
    }
    Ok(shared()?.block_on(fut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_gets_the_same_runtime() {
        let addrs: Vec<usize> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..4)
                .map(|_| s.spawn(|| shared().unwrap() as *const _ as usize))
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).collect()
        });
        assert!(addrs.iter().all(|&a| a == addrs[0]));
        assert_eq!(block_on(async { 7 }).unwrap(), 7);
        assert_eq!(shared().unwrap() as *const _ as usize, addrs[0]);
    }

    #[test]
    fn block_on_refuses_on_a_runtime_thread() {
        let err = shared()
            .unwrap()
            .block_on(async { block_on(async {}) })
            .unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::WouldDeadlock);
    }
}
