//! The process-wide tokio runtime that the blocking API (and through it the C,
//! Python and Node.js bindings) runs nodes on.

use std::sync::OnceLock;

use crate::error::{Error, Result};

static SHARED: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();

/// The shared multi-thread runtime, built on first use with at least two workers.
pub fn shared() -> Result<&'static tokio::runtime::Runtime> {
    SHARED
        .get_or_init(|| {
            let workers = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .clamp(2, 8);
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .thread_name("lbmkv")
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the lbmkv runtime: {e}"))
        })
        .as_ref()
        .map_err(|e| Error::internal(e.clone()))
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
