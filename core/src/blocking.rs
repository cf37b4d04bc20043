//! A blocking facade over [`crate::Node`] and [`crate::Table`], driven by the
//! shared runtime. The C, Python and Node.js bindings build on it; user
//! functions given to `update` run on the calling thread.

use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use crate::error::Result;
use crate::runtime::block_on;
use crate::{Config, ConflictHandler, ConflictRecord, Entries, Event, Events, Info, WatchItem};

/// A node driven by blocking calls.
#[derive(Clone)]
pub struct Node {
    inner: crate::Node,
    events: Arc<tokio::sync::Mutex<Events>>,
}

impl Node {
    /// Starts a node on the shared runtime.
    pub fn start(config: Config) -> Result<Node> {
        let rt = crate::runtime::shared()?;
        if tokio::runtime::Handle::try_current().is_ok() {
            // Same refusal as every other blocking call.
            block_on(async {})?;
        }
        let started = rt.block_on(async move {
            // Spawned so the node's tasks are children of the shared runtime.
            rt.spawn(crate::Node::start_subscribed(config)).await
        });
        let (inner, events) =
            started.map_err(|e| crate::Error::internal(format!("node start panicked: {e}")))??;
        let events = Arc::new(tokio::sync::Mutex::new(events));
        Ok(Node { inner, events })
    }

    /// Starts a node from a task of the shared runtime (the async twin of
    /// [`Node::start`], for bindings that complete their own futures): the
    /// node's tasks are children of the runtime this runs on.
    pub async fn start_async(config: Config) -> Result<Node> {
        let (inner, events) = crate::Node::start_subscribed(config).await?;
        let events = Arc::new(tokio::sync::Mutex::new(events));
        Ok(Node { inner, events })
    }

    /// The async node under this facade.
    pub fn as_async(&self) -> &crate::Node {
        &self.inner
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// The node's address, `host:port`.
    pub fn address(&self) -> &str {
        self.inner.address()
    }

    /// See [`crate::Node::create_table_with`].
    pub fn create_table(
        &self,
        name: &str,
        on_conflict: Option<Arc<dyn ConflictHandler>>,
    ) -> Result<Table> {
        let inner = block_on(self.inner.create_table_with(name, on_conflict))??;
        Ok(Table { inner })
    }

    /// See [`crate::Node::table`].
    pub fn table(&self, name: &str) -> Result<Table> {
        Ok(Table {
            inner: self.inner.table(name)?,
        })
    }

    /// See [`crate::Node::tables`].
    pub fn tables(&self) -> Result<Vec<String>> {
        self.inner.tables()
    }

    /// See [`crate::Node::members`].
    pub fn members(&self) -> Result<Vec<String>> {
        self.inner.members()
    }

    /// See [`crate::Node::info`].
    pub fn info(&self) -> Result<Info> {
        self.inner.info()
    }

    /// See [`crate::Node::metrics`].
    pub fn metrics(&self) -> Result<String> {
        self.inner.metrics()
    }

    /// See [`crate::Node::connect`].
    pub fn connect(&self, addr: &str) -> Result<()> {
        block_on(self.inner.connect(addr))?
    }

    /// See [`crate::Node::disconnect`].
    pub fn disconnect(&self, name: &str) -> Result<()> {
        block_on(self.inner.disconnect(name))?
    }

    /// See [`crate::Node::wait_for_members`].
    pub fn wait_for_members(&self, n: usize, timeout: Duration) -> Result<()> {
        block_on(self.inner.wait_for_members(n, timeout))?
    }

    /// The next event, waiting at most `timeout` (`None` when none came, or
    /// once the node is closed and every queued event was taken). The async
    /// form of [`Node::next_event`], for bindings that complete their own
    /// futures; it shares the queue with `next_event`. Dropping the future
    /// takes no event.
    pub async fn next_event_async(&self, timeout: Duration) -> Option<Event> {
        let mut ev = self.events.lock().await;
        if let Some(e) = ev.try_next() {
            return Some(e);
        }
        if self.inner.is_closed() {
            return None;
        }
        tokio::time::timeout(timeout, ev.next())
            .await
            .ok()
            .flatten()
    }

    /// The next event, waiting at most `timeout` (`None` when none came).
    /// Events are queued from the node's start on.
    pub fn next_event(&self, timeout: Duration) -> Result<Option<Event>> {
        let events = self.events.clone();
        let closed = self.inner.is_closed();
        block_on(async move {
            let mut ev = events.lock().await;
            if let Some(e) = ev.try_next() {
                return Some(e);
            }
            if closed {
                return None;
            }
            tokio::time::timeout(timeout, ev.next())
                .await
                .ok()
                .flatten()
        })
    }

    /// See [`crate::Node::close`].
    pub fn close(&self) -> Result<()> {
        block_on(self.inner.close())?
    }
}

/// A table driven by blocking calls.
#[derive(Clone, Debug)]
pub struct Table {
    inner: crate::Table,
}

impl Table {
    /// The facade over an async table (from [`crate::Node::create_table_with`]).
    pub fn from_async(inner: crate::Table) -> Table {
        Table { inner }
    }

    /// The async table under this facade.
    pub fn as_async(&self) -> &crate::Table {
        &self.inner
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        self.inner.name()
    }

    /// See [`crate::Table::put`].
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<Option<Vec<u8>>> {
        block_on(self.inner.put(key, value))?
    }

    /// See [`crate::Table::put_many`].
    pub fn put_many(&self, entries: Entries) -> Result<Entries> {
        block_on(self.inner.put_many(entries))?
    }

    /// [`crate::Table::put_expiring`], or [`crate::Table::put`] without a ttl.
    pub fn put_with_ttl(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<Option<Vec<u8>>> {
        match ttl {
            Some(ttl) => block_on(self.inner.put_expiring(key, value, ttl))?,
            None => block_on(self.inner.put(key, value))?,
        }
    }

    /// [`crate::Table::put_many_expiring`], or [`crate::Table::put_many`]
    /// without a ttl.
    pub fn put_many_with_ttl(&self, entries: Entries, ttl: Option<Duration>) -> Result<Entries> {
        match ttl {
            Some(ttl) => block_on(self.inner.put_many_expiring(entries, ttl))?,
            None => block_on(self.inner.put_many(entries))?,
        }
    }

    /// See [`crate::Table::ttl`].
    pub fn ttl(&self, key: &[u8]) -> Result<Option<Duration>> {
        self.inner.ttl(key)
    }

    /// See [`crate::Table::watch_with`]; `buffer` 0 takes the default.
    pub fn watch(&self, prefix: &[u8], buffer: usize) -> Result<Watch> {
        let buffer = if buffer == 0 {
            crate::DEFAULT_WATCH_BUFFER
        } else {
            buffer
        };
        let inner = self.inner.watch_with(prefix, buffer)?;
        Ok(Watch {
            inner: Arc::new(tokio::sync::Mutex::new(inner)),
            stop: Arc::new(tokio::sync::Notify::new()),
            stopped: Arc::new(AtomicBool::new(false)),
        })
    }

    /// See [`crate::Table::get`] (local, never blocks on the network).
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }

    /// See [`crate::Table::with_value`].
    pub fn with_value<R>(&self, key: &[u8], f: impl FnOnce(Option<&[u8]>) -> R) -> Result<R> {
        self.inner.with_value(key, f)
    }

    /// See [`crate::Table::get_strong`].
    pub fn get_strong(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        block_on(self.inner.get_strong(key))?
    }

    /// See [`crate::Table::delete`].
    pub fn delete(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        block_on(self.inner.delete(key))?
    }

    /// See [`crate::Table::delete_many`].
    pub fn delete_many(&self, keys: Vec<Vec<u8>>) -> Result<Entries> {
        block_on(self.inner.delete_many(keys))?
    }

    /// See [`crate::Table::match_entries`].
    pub fn match_entries(&self, key_pattern: &[u8], value_pattern: &[u8]) -> Result<Entries> {
        self.inner.match_entries(key_pattern, value_pattern)
    }

    /// See [`crate::Table::update_with`]; `f` runs on the calling thread.
    pub fn update<F>(&self, key: &[u8], mut f: F) -> Result<crate::Updated>
    where
        F: FnMut(&[u8], Option<&[u8]>) -> Result<Option<Vec<u8>>>,
    {
        block_on(
            self.inner
                .update_with(key, |k, v| std::future::ready(f(k, v.as_deref()))),
        )?
    }

    /// [`Table::update`] whose new value expires after `ttl` (see
    /// [`crate::Table::update_with_expiring`]); without a ttl, `update`.
    pub fn update_with_ttl<F>(
        &self,
        key: &[u8],
        ttl: Option<Duration>,
        mut f: F,
    ) -> Result<crate::Updated>
    where
        F: FnMut(&[u8], Option<&[u8]>) -> Result<Option<Vec<u8>>>,
    {
        let Some(ttl) = ttl else {
            return self.update(key, f);
        };
        block_on(
            self.inner
                .update_with_expiring(key, ttl, |k, v| std::future::ready(f(k, v.as_deref()))),
        )?
    }

    /// See [`crate::Table::update_all_with`]; `f` runs on the calling thread.
    pub fn update_all<F>(&self, f: F) -> Result<(Entries, Entries)>
    where
        F: FnMut(&[u8], &[u8]) -> Result<Option<Vec<u8>>>,
    {
        let mut f = f;
        block_on(
            self.inner
                .update_all_with(|k, v| std::future::ready(f(k, &v))),
        )?
    }

    /// See [`crate::Table::len`].
    pub fn len(&self) -> Result<usize> {
        self.inner.len()
    }

    /// See [`crate::Table::is_empty`].
    pub fn is_empty(&self) -> Result<bool> {
        self.inner.is_empty()
    }

    /// See [`crate::Table::keys`].
    pub fn keys(&self) -> Result<Vec<Vec<u8>>> {
        self.inner.keys()
    }

    /// See [`crate::Table::contains`].
    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        self.inner.contains(key)
    }

    /// See [`crate::Table::set_conflict_handler`].
    pub fn set_conflict_handler(&self, handler: Option<Arc<dyn ConflictHandler>>) -> Result<()> {
        self.inner.set_conflict_handler(handler)
    }

    /// See [`crate::Table::conflicts`].
    pub fn conflicts(&self) -> Result<Vec<ConflictRecord>> {
        self.inner.conflicts()
    }
}

/// What [`Watch::next`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchNext {
    /// A change, or a lag.
    Item(WatchItem),
    /// Nothing came within the timeout.
    Timeout,
    /// The watch ended: closed, or its node closed.
    Ended,
}

/// A watch driven by blocking calls, or by futures on any runtime thread
/// (see [`crate::Watch`]). Cheap to clone; [`Watch::close`] ends it for
/// every clone, also a call waiting in `next`.
#[derive(Clone)]
pub struct Watch {
    inner: Arc<tokio::sync::Mutex<crate::Watch>>,
    stop: Arc<tokio::sync::Notify>,
    stopped: Arc<AtomicBool>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").finish_non_exhaustive()
    }
}

impl Watch {
    /// The next item, waiting at most `timeout`.
    pub fn next(&self, timeout: Duration) -> Result<WatchNext> {
        let me = self.clone();
        block_on(async move { me.next_async(Some(timeout)).await })
    }

    /// The next item if one is buffered, without waiting.
    pub fn try_next(&self) -> WatchNext {
        if self.stopped.load(Ordering::Acquire) {
            return WatchNext::Ended;
        }
        let Ok(mut w) = self.inner.try_lock() else {
            return WatchNext::Timeout;
        };
        match w.try_next() {
            crate::TryNext::Item(item) => WatchNext::Item(item),
            crate::TryNext::Ended => WatchNext::Ended,
            _ => WatchNext::Timeout,
        }
    }

    /// The next item, waiting at most `timeout` (`None`: until one comes or
    /// the watch ends). Dropping the future takes no item.
    pub async fn next_async(&self, timeout: Option<Duration>) -> WatchNext {
        let stopped = pin!(self.stop.notified());
        let mut stopped = stopped;
        stopped.as_mut().enable();
        if self.stopped.load(Ordering::Acquire) {
            return WatchNext::Ended;
        }
        let sleep = timeout.map(tokio::time::sleep);
        let mut sleep = pin!(sleep);
        let mut guard = pin!(self.inner.lock());
        let mut w = std::future::poll_fn(|cx| {
            if stopped.as_mut().poll(cx).is_ready() {
                return Poll::Ready(None);
            }
            if let Some(s) = sleep.as_mut().as_pin_mut() {
                if s.poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
            }
            guard.as_mut().poll(cx).map(Some)
        });
        let Some(mut w) = (&mut w).await else {
            return self.stopped_or_timeout();
        };
        let item = {
            let mut next = pin!(w.next());
            std::future::poll_fn(|cx| {
                if stopped.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Err(()));
                }
                if let Some(s) = sleep.as_mut().as_pin_mut() {
                    if s.poll(cx).is_ready() {
                        return Poll::Ready(Err(()));
                    }
                }
                next.as_mut().poll(cx).map(Ok)
            })
            .await
        };
        match item {
            Ok(Some(item)) => WatchNext::Item(item),
            Ok(None) => WatchNext::Ended,
            Err(()) => self.stopped_or_timeout(),
        }
    }

    fn stopped_or_timeout(&self) -> WatchNext {
        if self.stopped.load(Ordering::Acquire) {
            WatchNext::Ended
        } else {
            WatchNext::Timeout
        }
    }

    /// Ends the watch: calls waiting in `next` return [`WatchNext::Ended`],
    /// and so do later ones.
    pub fn close(&self) {
        self.stopped.store(true, Ordering::Release);
        self.stop.notify_waiters();
        if let Ok(mut w) = self.inner.try_lock() {
            w.close();
        }
    }
}
