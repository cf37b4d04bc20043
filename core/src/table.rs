//! Table handles: the public read and write operations of one replicated table.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crate::agreement::Agreement;
use crate::context::{Context, SETTLE_PAUSE};
use crate::error::{Error, Result};
use crate::glob::Glob;
use crate::replica::{ConflictRecord, Replica, TableStats};
use crate::replication::Replication;
use crate::resolve::ConflictHandler;
use crate::watch::{Watch, DEFAULT_WATCH_BUFFER};
use crate::wire::{WriteOp, WriteOutcome};

/// Key-value pairs, as returned by batch operations and `match`.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// The old and new value of an `update` (`None`: absent or deleted).
pub type Updated = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A handle to a replicated table. Cheap to clone. Reads are local; writes are
/// ordered by the table's sequencer and acknowledged by every member of the view.
#[derive(Clone)]
pub struct Table {
    ctx: Arc<Context>,
    shared: Arc<Replica>,
    replication: Arc<Replication>,
    agreement: Arc<Agreement>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("name", &self.shared.name)
            .finish()
    }
}

impl Table {
    pub(crate) fn new(
        ctx: Arc<Context>,
        shared: Arc<Replica>,
        replication: Arc<Replication>,
        agreement: Arc<Agreement>,
    ) -> Self {
        Table {
            ctx,
            shared,
            replication,
            agreement,
        }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        let max = self.ctx.config.max_key_size;
        if key.len() > max {
            return Err(Error::invalid(format!(
                "key of {} bytes is larger than the limit of {max} bytes",
                key.len()
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<()> {
        let max = self.ctx.config.max_value_size;
        if value.len() > max {
            return Err(Error::invalid(format!(
                "value of {} bytes is larger than the limit of {max} bytes",
                value.len()
            )));
        }
        Ok(())
    }

    /// Sends `op` to the sequencer once its bytes fit the node's write
    /// budget (see [`crate::flow`]); refuses it when they never could.
    async fn submit(&self, op: WriteOp) -> Result<WriteOutcome> {
        let stats = &self.ctx.stats;
        if matches!(op, WriteOp::Read(_)) {
            stats.strong_reads.fetch_add(1, Ordering::Relaxed);
            return self.submit_unmeasured(op).await;
        }
        let started = tokio::time::Instant::now();
        let result = self.submit_unmeasured(op).await;
        stats.writes.observe(started.elapsed());
        if result.is_err() {
            stats.write_errors.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn submit_unmeasured(&self, op: WriteOp) -> Result<WriteOutcome> {
        let budget = &self.ctx.writes;
        let cost = budget.check(&op)?;
        let deadline = tokio::time::Instant::now() + self.ctx.config.request_timeout;
        let _share = budget.reserve(cost, deadline).await?;
        self.replication.submit(&self.shared, op).await
    }

    /// Sets `key` to `value` on every member; returns the previous value.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        self.ctx.check_open()?;
        self.check_key(key)?;
        self.check_value(value)?;
        let prev = self
            .submit(WriteOp::Put(vec![(key.to_vec(), value.to_vec())]))
            .await?;
        Ok(previous(prev)?.pop().map(|(_, v)| v))
    }

    /// Sets `key` to `value` on every member for `ttl`: when it is up, the
    /// sequencer deletes the key everywhere (a watch sees the cause
    /// `expiry`), and reads hide it from its deadline on. Returns the
    /// previous value. A later write without a ttl makes the key permanent;
    /// writing it again with a ttl refreshes it.
    pub async fn put_expiring(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> Result<Option<Vec<u8>>> {
        self.ctx.check_open()?;
        self.check_key(key)?;
        self.check_value(value)?;
        let ttl_ms = ttl_ms(ttl)?;
        let op = WriteOp::PutExpiring {
            entries: vec![(key.to_vec(), value.to_vec())],
            ttl_ms,
        };
        Ok(previous(self.submit(op).await?)?.pop().map(|(_, v)| v))
    }

    /// Sets all `entries` atomically; returns the previous values of those that had one.
    pub async fn put_many(&self, entries: Entries) -> Result<Entries> {
        self.put_many_inner(entries, None).await
    }

    /// [`Table::put_many`] of values that expire after `ttl` (see
    /// [`Table::put_expiring`]).
    pub async fn put_many_expiring(&self, entries: Entries, ttl: Duration) -> Result<Entries> {
        self.put_many_inner(entries, Some(ttl)).await
    }

    async fn put_many_inner(&self, entries: Entries, ttl: Option<Duration>) -> Result<Entries> {
        self.ctx.check_open()?;
        for (k, v) in &entries {
            self.check_key(k)?;
            self.check_value(v)?;
        }
        let ttl_ms = ttl.map(ttl_ms).transpose()?;
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let op = match ttl_ms {
            Some(ttl_ms) => WriteOp::PutExpiring { entries, ttl_ms },
            None => WriteOp::Put(entries),
        };
        previous(self.submit(op).await?)
    }

    /// The local value of `key` (no network). A value past its deadline is
    /// hidden by this node's clock, before the sequencer's delete arrives.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with_value(key, |v| v.map(<[u8]>::to_vec))
    }

    /// Calls `f` with the local value of `key` without copying it.
    pub fn with_value<R>(&self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> R) -> Result<R> {
        self.ctx.check_open()?;
        self.check_key(key)?;
        let store = self.shared.read()?;
        Ok(f(store.visible(key, || self.ctx.wall_clock_ms())))
    }

    /// The time `key` has left before it expires, by this node's clock:
    /// `None` when the key is absent or never expires.
    pub fn ttl(&self, key: &[u8]) -> Result<Option<Duration>> {
        self.ctx.check_open()?;
        self.check_key(key)?;
        let Some(deadline) = self.shared.read()?.deadline(key) else {
            return Ok(None);
        };
        let now = self.ctx.wall_clock_ms();
        Ok((deadline > now).then(|| Duration::from_millis(deadline - now)))
    }

    /// Watches the changes of the keys that start with `prefix` (empty: the
    /// whole table) on this node, from now on, with a buffer of
    /// [`DEFAULT_WATCH_BUFFER`] changes. See [`crate::Watch`].
    pub fn watch(&self, prefix: &[u8]) -> Result<Watch> {
        self.watch_with(prefix, DEFAULT_WATCH_BUFFER)
    }

    /// [`Table::watch`] with a buffer of `buffer` changes (at least 1): a
    /// consumer that falls further behind gets a [`crate::WatchItem::Lagged`].
    pub fn watch_with(&self, prefix: &[u8], buffer: usize) -> Result<Watch> {
        self.ctx.check_open()?;
        self.check_key(prefix)?;
        if buffer == 0 {
            return Err(Error::invalid("a watch buffer holds at least 1 change"));
        }
        let mut store = self.shared.write()?;
        // Checked again under the store: close ends the watches it finds there.
        self.ctx.check_open()?;
        Ok(store.watch(&self.shared.name, prefix, buffer))
    }

    /// The value of `key` as the sequencer has it, ordered after every write before it.
    pub async fn get_strong(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.ctx.check_open()?;
        self.check_key(key)?;
        match self.submit(WriteOp::Read(key.to_vec())).await? {
            WriteOutcome::Value(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    /// Deletes `key` (leaves a tombstone); returns the previous value.
    pub async fn delete(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.ctx.check_open()?;
        self.check_key(key)?;
        let prev = self.submit(WriteOp::Delete(vec![key.to_vec()])).await?;
        Ok(previous(prev)?.pop().map(|(_, v)| v))
    }

    /// Deletes all `keys` atomically; returns the previous entries of those that existed.
    pub async fn delete_many(&self, keys: Vec<Vec<u8>>) -> Result<Entries> {
        self.ctx.check_open()?;
        for k in &keys {
            self.check_key(k)?;
        }
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        previous(self.submit(WriteOp::Delete(keys)).await?)
    }

    /// Local entries whose key matches `key_pattern` and value matches
    /// `value_pattern` (globs: `*`, `?`, `[...]`, `\`), sorted by key.
    pub fn match_entries(&self, key_pattern: &[u8], value_pattern: &[u8]) -> Result<Entries> {
        self.ctx.check_open()?;
        let kp =
            Glob::new(key_pattern).map_err(|e| Error::invalid(format!("bad key pattern: {e}")))?;
        let vp = Glob::new(value_pattern)
            .map_err(|e| Error::invalid(format!("bad value pattern: {e}")))?;
        // Runtime tasks wait for this lock to apply writes: it is held only
        // to copy the entries under the key's literal prefix, and the globs,
        // which can cost much more per entry, run after it is released.
        let now = self.ctx.wall_clock_ms();
        let mut out: Entries = {
            let store = self.shared.read()?;
            let prefix = kp.literal_prefix();
            store
                .visible_entries(now)
                .filter(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.to_vec(), v.to_vec()))
                .collect()
        };
        if !kp.is_match_all() || !vp.is_match_all() {
            out.retain(|(k, v)| {
                (kp.is_match_all() || kp.matches(k)) && (vp.is_match_all() || vp.matches(v))
            });
        }
        out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// Atomic read-modify-write of `key`: `f(key, value)` returns the new value,
    /// `None` to delete, or the old value to write nothing. `f` may run more than
    /// once (the write is a compare-and-set at the sequencer, retried on conflict).
    /// Returns `(old, new)`.
    /// A value that has a deadline keeps it.
    pub async fn update<F>(&self, key: &[u8], mut f: F) -> Result<Updated>
    where
        F: FnMut(&[u8], Option<&[u8]>) -> Option<Vec<u8>>,
    {
        self.update_with(key, |k, v| std::future::ready(Ok(f(k, v.as_deref()))))
            .await
    }

    /// [`Table::update`] whose new value expires after `ttl` (see
    /// [`Table::put_expiring`]); returning the old value refreshes the
    /// deadline and writes the value again.
    pub async fn update_expiring<F>(&self, key: &[u8], ttl: Duration, mut f: F) -> Result<Updated>
    where
        F: FnMut(&[u8], Option<&[u8]>) -> Option<Vec<u8>>,
    {
        let ttl_ms = ttl_ms(ttl)?;
        self.update_inner(key, Some(ttl_ms), |k, v| {
            std::future::ready(Ok(f(k, v.as_deref())))
        })
        .await
    }

    /// [`Table::update`] with a fallible, possibly asynchronous `f`; an error from
    /// `f` aborts the update and is returned as is. Updates of one key from one
    /// node take turns, so `f` must not itself update the same key.
    pub async fn update_with<F, Fut>(&self, key: &[u8], f: F) -> Result<Updated>
    where
        F: FnMut(&[u8], Option<Vec<u8>>) -> Fut,
        Fut: Future<Output = Result<Option<Vec<u8>>>>,
    {
        self.update_inner(key, None, f).await
    }

    /// [`Table::update_with`] whose new value expires after `ttl` (see
    /// [`Table::update_expiring`]).
    pub async fn update_with_expiring<F, Fut>(
        &self,
        key: &[u8],
        ttl: Duration,
        f: F,
    ) -> Result<Updated>
    where
        F: FnMut(&[u8], Option<Vec<u8>>) -> Fut,
        Fut: Future<Output = Result<Option<Vec<u8>>>>,
    {
        let ttl_ms = ttl_ms(ttl)?;
        self.update_inner(key, Some(ttl_ms), f).await
    }

    async fn update_inner<F, Fut>(
        &self,
        key: &[u8],
        ttl_ms: Option<u64>,
        mut f: F,
    ) -> Result<Updated>
    where
        F: FnMut(&[u8], Option<Vec<u8>>) -> Fut,
        Fut: Future<Output = Result<Option<Vec<u8>>>>,
    {
        self.ctx.check_open()?;
        self.check_key(key)?;
        let deadline = tokio::time::Instant::now() + self.ctx.config.request_timeout;
        let _turn = tokio::time::timeout_at(deadline, self.shared.update_turn(key))
            .await
            .map_err(|_| {
                Error::timeout("other updates of this key kept it busy until the request timeout")
            })?;
        let (mut value, mut clock) = {
            let store = self.shared.read()?;
            match store.entry(key) {
                Some(e) => (
                    e.value
                        .as_deref()
                        .filter(|_| !e.is_expired(self.ctx.wall_clock_ms()))
                        .map(<[u8]>::to_vec),
                    Some(e.clock.clone()),
                ),
                None => (None, None),
            }
        };
        loop {
            let new = f(key, value.clone()).await?;
            // With a ttl, the same value is written again: that refreshes it.
            if new == value && (ttl_ms.is_none() || new.is_none()) {
                return Ok((value, new));
            }
            if let Some(v) = &new {
                self.check_value(v)?;
            }
            let op = match ttl_ms {
                Some(ttl_ms) => WriteOp::CompareAndSetExpiring {
                    key: key.to_vec(),
                    expected: clock.clone(),
                    new: new.clone(),
                    ttl_ms,
                },
                None => WriteOp::CompareAndSet {
                    key: key.to_vec(),
                    expected: clock.clone(),
                    new: new.clone(),
                },
            };
            match self.submit(op).await? {
                WriteOutcome::Swapped => return Ok((value, new)),
                WriteOutcome::Mismatch {
                    value: current,
                    clock: current_clock,
                } => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::timeout(
                            "update kept conflicting with other writes until the request timeout",
                        ));
                    }
                    value = current;
                    clock = current_clock;
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Atomic update of the whole table: `f(key, value)` for every entry, with
    /// the rule of [`Table::update`]. Returns the old and new entries that changed.
    pub async fn update_all<F>(&self, mut f: F) -> Result<(Entries, Entries)>
    where
        F: FnMut(&[u8], &[u8]) -> Option<Vec<u8>>,
    {
        self.update_all_with(|k, v| std::future::ready(Ok(f(k, &v))))
            .await
    }

    /// [`Table::update_all`] with a fallible, possibly asynchronous `f`; an
    /// error from `f` aborts the whole update and is returned as is.
    pub async fn update_all_with<F, Fut>(&self, mut f: F) -> Result<(Entries, Entries)>
    where
        F: FnMut(&[u8], Vec<u8>) -> Fut,
        Fut: Future<Output = Result<Option<Vec<u8>>>>,
    {
        self.ctx.check_open()?;
        let deadline = tokio::time::Instant::now() + self.ctx.config.request_timeout;
        loop {
            let now = self.ctx.wall_clock_ms();
            let (snapshot, digest) = {
                let store = self.shared.read()?;
                let mut entries: Entries = store
                    .visible_entries(now)
                    .map(|(k, v)| (k.to_vec(), v.to_vec()))
                    .collect();
                entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                (entries, store.digest_total())
            };
            let mut old = Vec::new();
            let mut new = Vec::new();
            let mut changes = Vec::new();
            for (k, v) in snapshot {
                let result = f(&k, v.clone()).await?;
                if result.as_deref() == Some(v.as_slice()) {
                    continue;
                }
                if let Some(nv) = &result {
                    self.check_value(nv)?;
                    new.push((k.clone(), nv.clone()));
                }
                changes.push((k.clone(), result));
                old.push((k, v));
            }
            if changes.is_empty() {
                return Ok((old, new));
            }
            let op = WriteOp::CompareAndSetTable {
                expected_digest: digest,
                changes,
            };
            match self.submit(op).await? {
                WriteOutcome::Swapped => return Ok((old, new)),
                WriteOutcome::TableMismatch => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::timeout(
                            "update_all kept conflicting with other writes until the request timeout",
                        ));
                    }
                    tokio::time::sleep(SETTLE_PAUSE).await;
                }
                other => return Err(unexpected(&other)),
            }
        }
    }

    /// Number of live entries on this node (counting values past their
    /// deadline until the sequencer's delete arrives, at most a few
    /// milliseconds later).
    pub fn len(&self) -> Result<usize> {
        self.ctx.check_open()?;
        Ok(self.shared.read()?.len())
    }

    /// Whether the table has no live entry on this node.
    pub fn is_empty(&self) -> Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Live keys on this node, sorted.
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        self.ctx.check_open()?;
        let now = self.ctx.wall_clock_ms();
        let mut keys: Vec<Vec<u8>> = self
            .shared
            .read()?
            .visible_entries(now)
            .map(|(k, _)| k.to_vec())
            .collect();
        keys.sort_unstable();
        Ok(keys)
    }

    /// Whether `key` has a live value on this node.
    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        self.with_value(key, |v| v.is_some())
    }

    /// Sets (or, with `None`, removes) this node's conflict handler for the table
    /// and tells the peers.
    pub fn set_conflict_handler(&self, handler: Option<Arc<dyn ConflictHandler>>) -> Result<()> {
        self.ctx.check_open()?;
        self.shared.set_handler(handler);
        self.replication.announce(&self.shared);
        Ok(())
    }

    /// The table's conflict log, oldest first.
    pub fn conflicts(&self) -> Result<Vec<ConflictRecord>> {
        self.ctx.check_open()?;
        Ok(self.shared.conflicts())
    }

    /// Entry count, bytes, tombstones, conflicts, digest and sequencer on this node.
    pub fn stats(&self) -> Result<TableStats> {
        self.ctx.check_open()?;
        let mut stats = self.shared.stats();
        stats.sequencer = self.agreement.follows().map(|a| a.name.to_string());
        Ok(stats)
    }
}

/// A ttl in whole milliseconds (at least 1).
fn ttl_ms(ttl: Duration) -> Result<u64> {
    let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    if ms == 0 {
        return Err(Error::invalid("a ttl is at least 1 millisecond"));
    }
    Ok(ms)
}

fn previous(outcome: WriteOutcome) -> Result<Entries> {
    match outcome {
        WriteOutcome::Previous(p) => Ok(p),
        other => Err(unexpected(&other)),
    }
}

fn unexpected(outcome: &WriteOutcome) -> Error {
    Error::internal(format!("unexpected answer from the sequencer: {outcome:?}"))
}

#[cfg(test)]
mod tests {
    use crate::{Config, Node};

    #[test]
    fn update_turns_are_forgotten_when_no_update_waits() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let config = Config {
                cookie: Some(b"t".to_vec()),
                ..Config::default()
            };
            let node = Node::start(config).await.unwrap();
            let t = node.create_table("t").await.unwrap();
            let mut tasks = Vec::new();
            for i in 0..4u8 {
                let t = t.clone();
                tasks.push(tokio::spawn(async move {
                    for _ in 0..50 {
                        t.update(&[i % 2], |_, v| Some(vec![v.map_or(0, |v| v[0]) + 1]))
                            .await
                            .unwrap();
                    }
                }));
            }
            for task in tasks {
                task.await.unwrap();
            }
            assert_eq!(t.get(&[0]).unwrap(), Some(vec![100]));
            assert_eq!(t.get(&[1]).unwrap(), Some(vec![100]));
            assert_eq!(t.shared.update_turns_held(), 0);
        });
    }
}
