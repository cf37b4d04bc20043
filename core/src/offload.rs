//! Work that keeps the CPU busy for long (a step of a merge over a large table:
//! a snapshot of a million entries, their encoding, the merge of a chunk),
//! run without freezing the node's other tasks.
//!
//! A task that computes for seconds without an await holds its worker thread,
//! and when that worker was the one parked on the I/O and timer driver, nothing
//! polls the driver meanwhile: the other workers sleep, no timer fires, no
//! heartbeat goes out, no socket is read, and the peers declare this node down
//! after the failure timeout. On a multi-thread runtime `block_in_place` first
//! hands the worker's queue and driver duties to another thread; on a
//! current-thread runtime, which cannot, the work just runs.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs `f`, which may compute for long, without freezing other tasks.
pub(crate) fn run_long<R>(f: impl FnOnce() -> R) -> R {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// A future each poll of which goes through [`run_long`]: for a task whose
/// steps may compute for long between awaits, such as a round of merges.
pub(crate) fn off_workers<F: Future>(fut: F) -> OffWorkers<F> {
    OffWorkers(Box::pin(fut))
}

/// See [`off_workers`].
pub(crate) struct OffWorkers<F>(Pin<Box<F>>);

impl<F: Future> Future for OffWorkers<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let fut = self.0.as_mut();
        run_long(|| fut.poll(cx))
    }
}
