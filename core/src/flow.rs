//! Flow control of writes. Every write waiting for its sequencer holds a share
//! of the node's write budget (its bytes) until it is answered: a writer's own
//! writes in flight, and on the sequencer the writes it was sent. The writes
//! a sequencer folds into one replicated batch were all waiting at once, so a
//! batch never outgrows a frame, and the bytes a node buffers for writes stay
//! bounded: while the budget is spent (a slow member holds its share until it
//! acknowledges or is dropped) further writers wait instead of queueing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::ENTRY_OVERHEAD;
use crate::error::{Error, Result};
use crate::wire::WriteOp;

/// A share of the write budget, given back when dropped.
pub(crate) type Share = OwnedSemaphorePermit;

/// The bytes of writes a node lets wait for sequencers at once.
pub(crate) struct WriteBudget {
    bytes: Arc<Semaphore>,
    total: usize,
    /// Writers waiting for room; while there are any, nobody jumps the queue.
    waiting: AtomicUsize,
}

impl WriteBudget {
    /// A budget of `total` bytes (at most `u32::MAX`, as configurations are).
    pub fn new(total: usize) -> Self {
        let total = total.min(u32::MAX as usize);
        WriteBudget {
            bytes: Arc::new(Semaphore::new(total)),
            total,
            waiting: AtomicUsize::new(0),
        }
    }

    /// The bytes `op` adds to a replicated batch.
    pub fn cost(op: &WriteOp) -> usize {
        let entry =
            |k: &[u8], v: Option<&[u8]>| k.len() + v.map_or(0, <[u8]>::len) + ENTRY_OVERHEAD;
        match op {
            WriteOp::Put(entries) | WriteOp::PutExpiring { entries, .. } => {
                entries.iter().map(|(k, v)| entry(k, Some(v))).sum()
            }
            WriteOp::Delete(keys) | WriteOp::Expire(keys) => {
                keys.iter().map(|k| entry(k, None)).sum()
            }
            WriteOp::CompareAndSet { key, new, .. }
            | WriteOp::CompareAndSetExpiring { key, new, .. } => entry(key, new.as_deref()),
            WriteOp::CompareAndSetTable { changes, .. } => {
                changes.iter().map(|(k, v)| entry(k, v.as_deref())).sum()
            }
            WriteOp::Read(key) => entry(key, None),
            WriteOp::Resolve { key, new, .. } => entry(key, new.as_deref()),
        }
    }

    /// Refuses `op` when it alone is larger than the whole budget: such a
    /// write could never be replicated in one frame.
    pub fn check(&self, op: &WriteOp) -> Result<usize> {
        let cost = Self::cost(op);
        if cost > self.total {
            return Err(Error::invalid(format!(
                "a write of {cost} bytes (keys, values and {ENTRY_OVERHEAD} bytes per entry) \
                 is larger than the write budget of {} bytes (max_frame_size less its envelope); \
                 split it into smaller writes",
                self.total
            )));
        }
        Ok(cost)
    }

    /// Waits for `cost` bytes of the budget, until `deadline`.
    pub async fn reserve(&self, cost: usize, deadline: Instant) -> Result<Share> {
        let n = self.permits(cost);
        let acquired = {
            let _waiting = Waiting::new(&self.waiting);
            tokio::time::timeout_at(deadline, self.bytes.clone().acquire_many_owned(n)).await
        };
        match acquired {
            Ok(Ok(share)) => Ok(share),
            Ok(Err(_)) => Err(Error::closed()),
            Err(_) => Err(Error::timeout(format!(
                "other writes kept the write budget ({} bytes) spent until the request timeout",
                self.total
            ))),
        }
    }

    /// `cost` bytes of the budget if they are free now.
    pub fn try_reserve(&self, cost: usize) -> Option<Share> {
        if self.waiting.load(Ordering::Acquire) > 0 {
            return None;
        }
        self.bytes
            .clone()
            .try_acquire_many_owned(self.permits(cost))
            .ok()
    }

    /// Bytes of the budget in use now.
    pub fn in_use(&self) -> usize {
        self.total - self.bytes.available_permits().min(self.total)
    }

    fn permits(&self, cost: usize) -> u32 {
        // `total` fits u32, and a cost above it was refused by `check`.
        cost.min(self.total) as u32
    }
}

/// Counts a waiting writer for as long as it lives (also when its wait is
/// given up half-way).
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_write_larger_than_the_budget_is_refused_and_others_wait_for_room() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let budget = WriteBudget::new(1000);
            let big = WriteOp::Put(vec![(b"k".to_vec(), vec![0; 1000])]);
            let err = budget.check(&big).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::InvalidArgument);

            let half = WriteOp::Put(vec![(b"k".to_vec(), vec![0; 200])]);
            let cost = budget.check(&half).unwrap();
            let deadline = Instant::now() + Duration::from_millis(50);
            let first = budget.reserve(cost, deadline).await.unwrap();
            let _second = budget.reserve(cost, deadline).await.unwrap();
            assert!(budget.try_reserve(cost).is_none(), "the budget is spent");
            let err = budget.reserve(cost, deadline).await.unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Timeout);
            drop(first);
            assert!(
                budget.try_reserve(cost).is_some(),
                "a share given back is free again"
            );
        });
    }
}
