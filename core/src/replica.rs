//! One table's state on one node: its store, conflict handler, conflict log
//! and the turns of `update` calls. Tasks and handles share it; it starts no
//! task and sends nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::locks::{lock, read, write};
use crate::resolve::ConflictHandler;
use crate::store::TableStore;
use crate::wire::TableInfo;

/// A losing version kept by the conflict log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct ConflictRecord {
    /// The key.
    pub key: Vec<u8>,
    /// The version that was kept (`None`: deleted).
    pub kept: Option<Vec<u8>>,
    /// The version that lost (`None`: deleted).
    pub lost: Option<Vec<u8>>,
    /// The peer the merge was with.
    pub peer: String,
    /// When, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

/// State of one table on one node, shared by its handles and tasks.
pub(crate) struct Replica {
    pub name: Arc<str>,
    store: RwLock<TableStore>,
    handler: RwLock<Option<Arc<dyn ConflictHandler>>>,
    conflicts: Mutex<VecDeque<ConflictRecord>>,
    /// One lock per key with an `update` running on this node, so updates of
    /// one key from this node take turns instead of failing each other's
    /// compare-and-set (and a hot key stays fair).
    update_locks: Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>,
}

/// The turn of one `update` on one key; gives the turn on and forgets the key's
/// lock when nobody else waits for it.
pub(crate) struct UpdateTurn<'a> {
    locks: &'a Mutex<HashMap<Vec<u8>, Arc<tokio::sync::Mutex<()>>>>,
    key: &'a [u8],
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Drop for UpdateTurn<'_> {
    fn drop(&mut self) {
        self.guard.take();
        let mut locks = lock(self.locks);
        if locks
            .get(self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            locks.remove(self.key);
        }
    }
}

impl Replica {
    /// An empty replica of the table `name`.
    pub fn new(name: &str) -> Arc<Replica> {
        Arc::new(Replica {
            name: Arc::from(name),
            store: RwLock::new(TableStore::new()),
            handler: RwLock::new(None),
            conflicts: Mutex::new(VecDeque::new()),
            update_locks: Mutex::new(HashMap::new()),
        })
    }

    /// The store, to read. A panic while it was written may have left an
    /// entry half-updated, so a poisoned store is an `Internal` error rather
    /// than data served or acknowledged.
    pub fn read(&self) -> Result<RwLockReadGuard<'_, TableStore>> {
        self.store
            .read()
            .map_err(|_| Error::internal("table lock poisoned"))
    }

    /// The store, to write (see [`Replica::read`] on poisoning). Writers are
    /// runtime tasks, and a long local read (a `match` or `keys` over a big
    /// table from a user thread) can hold the store meanwhile: a worker that
    /// must wait for it first hands its other tasks and its timer and I/O
    /// duties to another thread, so heartbeats still go out and peers do not
    /// declare this node down.
    pub fn write(&self) -> Result<RwLockWriteGuard<'_, TableStore>> {
        let poisoned = |_| Error::internal("table lock poisoned");
        match self.store.try_write() {
            Ok(guard) => Ok(guard),
            Err(TryLockError::Poisoned(p)) => Err(poisoned(p)),
            Err(TryLockError::WouldBlock) => {
                crate::offload::run_long(|| self.store.write()).map_err(poisoned)
            }
        }
    }

    /// This node's conflict handler for the table.
    pub fn handler(&self) -> Option<Arc<dyn ConflictHandler>> {
        read(&self.handler).clone()
    }

    /// Sets (or removes) this node's conflict handler for the table.
    pub fn set_handler(&self, handler: Option<Arc<dyn ConflictHandler>>) {
        *write(&self.handler) = handler;
    }

    /// What peers learn about the table.
    pub fn info(&self) -> TableInfo {
        TableInfo {
            name: self.name.to_string(),
            has_handler: self.handler().is_some(),
        }
    }

    /// Keeps a losing version, dropping the oldest beyond `limit`.
    pub fn log_conflict(&self, record: ConflictRecord, limit: usize) {
        let mut log = lock(&self.conflicts);
        log.push_back(record);
        while log.len() > limit {
            log.pop_front();
        }
    }

    /// The conflict log, oldest first.
    pub fn conflicts(&self) -> Vec<ConflictRecord> {
        lock(&self.conflicts).iter().cloned().collect()
    }

    /// Entry count, bytes, tombstones, conflicts and digest.
    pub fn stats(&self) -> TableStats {
        let (s, digest) = match self.read() {
            Ok(st) => (st.stats(), st.digest_total()),
            Err(_) => (Default::default(), 0),
        };
        TableStats {
            name: self.name.to_string(),
            entries: s.entries,
            bytes: s.bytes,
            tombstones: s.tombstones,
            conflicts: lock(&self.conflicts).len(),
            digest: format!("{digest:016x}"),
            sequencer: None,
        }
    }

    /// Keys whose update turns are remembered.
    #[cfg(test)]
    pub fn update_turns_held(&self) -> usize {
        lock(&self.update_locks).len()
    }

    /// Waits for this node's turn to update `key`.
    pub async fn update_turn<'a>(&'a self, key: &'a [u8]) -> UpdateTurn<'a> {
        let turn = lock(&self.update_locks)
            .entry(key.to_vec())
            .or_default()
            .clone();
        UpdateTurn {
            locks: &self.update_locks,
            key,
            guard: Some(turn.lock_owned().await),
        }
    }
}

/// One table's figures on one node, as `stats()` and `info()` give them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct TableStats {
    /// The table's name.
    pub name: String,
    /// Live entries.
    pub entries: usize,
    /// Bytes of live keys and values.
    pub bytes: usize,
    /// Tombstones kept for merges.
    pub tombstones: usize,
    /// Entries in the conflict log.
    pub conflicts: usize,
    /// The table digest (equal digests: equal replicas).
    pub digest: String,
    /// The name of the member that orders this table's writes for this node
    /// (the sequencer it follows), if there is one yet.
    pub sequencer: Option<String>,
}
