//! The one lock-poisoning policy of the engine.
//!
//! A lock is poisoned when a thread panicked while holding it. Every lock but a
//! table's store guards bookkeeping that each critical section leaves whole
//! after every single step (a map insert, a counter, a list), so the engine
//! takes a poisoned lock over and goes on: refusing every later call would turn
//! one panic into a dead node. A table's store is the exception: an insert cut
//! short may leave an entry and its digest out of step, so a poisoned store
//! answers `Internal` (see `Replica::read`) and nothing is applied to it or
//! acknowledged from it.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, taking a poisoned lock over.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Read-locks `l`, taking a poisoned lock over.
pub(crate) fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

/// Write-locks `l`, taking a poisoned lock over.
pub(crate) fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
