//! How the sequencer executes each write operation on its own replica: one
//! method per operation, each returning the answer for the writer and
//! collecting the new versions that go to the other members.

use crate::error::ErrorKind;
use crate::store::{Entry, TableStore};
use crate::vclock::{ActorId, PruneLimits, VClock};
use crate::watch::Cause;
use crate::wire::{WireEntry, WriteCause, WriteOp, WriteOutcome, WriteRefusal};

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
    /// The new versions that are not plain writes, by index into `changes`.
    pub causes: Vec<(u32, WriteCause)>,
}

/// The deadline a new version gets.
#[derive(Clone, Copy)]
enum Expiry {
    /// None: the value never expires.
    Never,
    /// The key's current deadline (`update` without a ttl keeps it).
    Keep,
    /// This one.
    At(u64),
}

impl Sequencer<'_> {
    /// Executes one operation.
    pub fn execute(&mut self, op: WriteOp) -> Reply {
        match op {
            WriteOp::Put(entries) => self.put(entries, Expiry::Never),
            WriteOp::PutExpiring { entries, ttl_ms } => {
                let at = self.now_ms.saturating_add(ttl_ms);
                self.put(entries, Expiry::At(at))
            }
            WriteOp::Delete(keys) => self.delete(keys),
            WriteOp::CompareAndSet { key, expected, new } => {
                self.compare_and_set(key, expected, new, Expiry::Keep)
            }
            WriteOp::CompareAndSetExpiring {
                key,
                expected,
                new,
                ttl_ms,
            } => {
                let at = self.now_ms.saturating_add(ttl_ms);
                self.compare_and_set(key, expected, new, Expiry::At(at))
            }
            WriteOp::CompareAndSetTable {
                expected_digest,
                changes,
            } => self.compare_and_set_table(expected_digest, changes),
            WriteOp::Read(key) => Ok(WriteOutcome::Value(self.visible(&key))),
            WriteOp::Resolve {
                key,
                merged,
                new,
                deadline_ms,
            } => self.resolve(key, merged, new, deadline_ms),
            WriteOp::Expire(keys) => self.expire(keys),
        }
    }

    /// The value of `key` as reads see it (none past its deadline).
    fn visible(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.store.visible(key, || self.now_ms).map(<[u8]>::to_vec)
    }

    fn put(&mut self, entries: Vec<(Vec<u8>, Vec<u8>)>, expiry: Expiry) -> Reply {
        for (k, v) in &entries {
            self.check(k, Some(v))?;
        }
        let mut previous = Vec::new();
        for (k, v) in entries {
            if let Some(old) = self.write(k.clone(), Some(v), None, expiry, Cause::Write) {
                previous.push((k, old.into_vec()));
            }
        }
        Ok(WriteOutcome::Previous(previous))
    }

    /// Deletes each key whose live value is past its deadline.
    fn expire(&mut self, keys: Vec<Vec<u8>>) -> Reply {
        for k in keys {
            let due = self.store.deadline(&k).is_some_and(|d| d <= self.now_ms);
            if due {
                self.write(k, None, None, Expiry::Never, Cause::Expiry);
            }
        }
        Ok(WriteOutcome::Swapped)
    }

    fn delete(&mut self, keys: Vec<Vec<u8>>) -> Reply {
        for k in &keys {
            self.check(k, None)?;
        }
        let mut previous = Vec::new();
        for k in keys {
            if self.store.value(&k).is_some() {
                if let Some(old) = self.write(k.clone(), None, None, Expiry::Never, Cause::Write) {
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
        expiry: Expiry,
    ) -> Reply {
        self.check(&key, new.as_deref())?;
        let (value, clock) = match self.store.entry(&key) {
            Some(e) => (
                e.value
                    .as_deref()
                    .filter(|_| !e.is_expired(self.now_ms))
                    .map(<[u8]>::to_vec),
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
        if value != new || matches!(expiry, Expiry::At(_)) {
            self.write(key, new, None, expiry, Cause::Write);
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
                self.write(k, v, None, Expiry::Keep, Cause::Write);
            }
        }
        Ok(WriteOutcome::Swapped)
    }

    fn resolve(
        &mut self,
        key: Vec<u8>,
        merged: VClock,
        new: Option<Vec<u8>>,
        deadline_ms: Option<u64>,
    ) -> Reply {
        self.check(&key, new.as_deref())?;
        // Only a version the merge saw may be replaced: a write made after it
        // (one `merged` does not descend) wins, and the handler node meets it
        // again as a conflict if its own copy differs.
        if let Some(current) = self.store.clock(&key) {
            if !merged.descends(&current) {
                return Ok(WriteOutcome::Superseded);
            }
        }
        let expiry = deadline_ms.map_or(Expiry::Never, Expiry::At);
        self.write(key, new, Some(&merged), expiry, Cause::Resolve);
        Ok(WriteOutcome::Swapped)
    }

    /// Stores a new version of `key` whose clock dominates its current one
    /// (and `base`); returns the previous live value (none when it was
    /// past its deadline).
    fn write(
        &mut self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        base: Option<&VClock>,
        expiry: Expiry,
        cause: Cause,
    ) -> Option<Box<[u8]>> {
        let replaced = self.store.entry(&key);
        let current = replaced.as_ref().map(|e| &e.clock);
        let mut clock = self.store.base_clock(current, self.actor);
        if let Some(base) = base {
            clock.merge_from(base);
        }
        clock.increment(self.actor, self.now_ms);
        clock.prune(self.now_ms, &PruneLimits::default());
        let expired = replaced.as_ref().is_some_and(|e| e.is_expired(self.now_ms));
        let deadline_ms = match expiry {
            Expiry::Never => None,
            Expiry::Keep => replaced
                .as_ref()
                .filter(|_| !expired)
                .and_then(|e| e.deadline_ms),
            Expiry::At(d) => Some(d),
        }
        .filter(|_| value.is_some());
        self.replaced.push(replaced);
        let old = self
            .store
            .insert(&key, value.as_deref(), &clock, deadline_ms, cause);
        let wire_cause = match cause {
            Cause::Resolve => Some(WriteCause::Resolve),
            Cause::Expiry => Some(WriteCause::Expiry),
            _ => None,
        };
        if let Some(c) = wire_cause {
            self.causes.push((self.changes.len() as u32, c));
        }
        self.changes.push(WireEntry {
            key,
            value,
            clock,
            deadline_ms,
        });
        old.filter(|_| !expired)
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
