//! How the sequencer executes each write operation on its own replica: one
//! method per operation, each returning the answer for the writer and
//! collecting the new versions that go to the other members.

use crate::error::ErrorKind;
use crate::store::{Entry, TableStore};
use crate::vclock::{ActorId, PruneLimits, VClock};
use crate::wire::{WireEntry, WriteOp, WriteOutcome, WriteRefusal};

/// The answer to one write.
pub(crate) type Reply = std::result::Result<WriteOutcome, WriteRefusal>;

/// One batch's execution on the sequencer's store.
pub(crate) struct Sequencer<'a> {
    pub store: &'a mut TableStore,
    /// The sequencer's actor, whose dot every new version gets.
    pub actor: &'a ActorId,
    /// The wall clock of the batch, the timestamp of its dots.
    pub now_ms: u64,
    pub max_key: usize,
    pub max_value: usize,
    /// The new versions, in order.
    pub changes: Vec<WireEntry>,
    /// What each new version replaced, in the same order.
    pub replaced: Vec<Option<Entry>>,
}

impl Sequencer<'_> {
    /// Executes one operation.
    pub fn execute(&mut self, op: WriteOp) -> Reply {
        match op {
            WriteOp::Put(entries) => self.put(entries),
            WriteOp::Delete(keys) => self.delete(keys),
            WriteOp::CompareAndSet { key, expected, new } => {
                self.compare_and_set(key, expected, new)
            }
            WriteOp::CompareAndSetTable {
                expected_digest,
                changes,
            } => self.compare_and_set_table(expected_digest, changes),
            WriteOp::Read(key) => Ok(WriteOutcome::Value(
                self.store.value(&key).map(<[u8]>::to_vec),
            )),
            WriteOp::Resolve { key, merged, new } => self.resolve(key, merged, new),
        }
    }

    fn put(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>) -> Reply {
        for (k, v) in &entries {
            self.check(k, Some(v))?;
        }
        let mut previous = Vec::new();
        for (k, v) in entries {
            if let Some(old) = self.write(k.clone(), Some(v), None) {
                previous.push((k, old.into_vec()));
            }
        }
        Ok(WriteOutcome::Previous(previous))
    }

    fn delete(&mut self, keys: Vec<Vec<u8>>) -> Reply {
        for k in &keys {
            self.check(k, None)?;
        }
        let mut previous = Vec::new();
        for k in keys {
            if self.store.value(&k).is_some() {
                if let Some(old) = self.write(k.clone(), None, None) {
                    previous.push((k, old.into_vec()));
                }
            }
        }
        Ok(WriteOutcome::Previous(previous))
    }

    fn compare_and_set(
        &mut self,
        key: Vec<u8>,
        expected: Option<VClock>,
        new: Option<Vec<u8>>,
    ) -> Reply {
        self.check(&key, new.as_deref())?;
        let (value, clock) = match self.store.entry(&key) {
            Some(e) => (
                e.value.as_deref().map(<[u8]>::to_vec),
                Some(e.clock.clone()),
            ),
            None => (None, None),
        };
        let same = match (&clock, &expected) {
            (None, None) => true,
            (Some(a), Some(b)) => a.equal(b),
            _ => false,
        };
        if !same {
            return Ok(WriteOutcome::Mismatch { value, clock });
        }
        if value != new {
            self.write(key, new, None);
        }
        Ok(WriteOutcome::Swapped)
    }

    fn compare_and_set_table(
        &mut self,
        expected_digest: u64,
        updates: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Reply {
        for (k, v) in &updates {
            self.check(k, v.as_deref())?;
        }
        if self.store.digest_total() != expected_digest {
            return Ok(WriteOutcome::TableMismatch);
        }
        for (k, v) in updates {
            if self.store.value(&k) != v.as_deref() {
                self.write(k, v, None);
            }
        }
        Ok(WriteOutcome::Swapped)
    }

    fn resolve(&mut self, key: Vec<u8>, merged: VClock, new: Option<Vec<u8>>) -> Reply {
        self.check(&key, new.as_deref())?;
        // Only a version the merge saw may be replaced: a write made after it
        // (one `merged` does not descend) wins, and the handler node meets it
        // again as a conflict if its own copy differs.
        if let Some(current) = self.store.clock(&key) {
            if !merged.descends(&current) {
                return Ok(WriteOutcome::Superseded);
            }
        }
        self.write(key, new, Some(&merged));
        Ok(WriteOutcome::Swapped)
    }

    /// Stores a new version of `key` whose clock dominates its current one
    /// (and `base`); returns the previous live value.
    fn write(
        &mut self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        base: Option<&VClock>,
    ) -> Option<Box<[u8]>> {
        let replaced = self.store.entry(&key);
        let current = replaced.as_ref().map(|e| &e.clock);
        let mut clock = self.store.base_clock(current, self.actor);
        if let Some(base) = base {
            clock.merge_from(base);
        }
        clock.increment(self.actor, self.now_ms);
        clock.prune(self.now_ms, &PruneLimits::default());
        self.replaced.push(replaced);
        let old = self.store.insert(&key, value.as_deref(), &clock);
        self.changes.push(WireEntry { key, value, clock });
        old
    }

    fn check(&self, key: &[u8], value: Option<&[u8]>) -> std::result::Result<(), WriteRefusal> {
        if key.len() > self.max_key || value.is_some_and(|v| v.len() > self.max_value) {
            return Err(WriteRefusal::Failed(
                ErrorKind::InvalidArgument,
                "key or value larger than the sequencer's limit".into(),
            ));
        }
        Ok(())
    }
}
