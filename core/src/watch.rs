//! Change feeds: what a table's watchers receive.
//!
//! A table's store keeps the senders of its open watches and reports every
//! change to the ones whose prefix matches, under the store's write lock: so
//! each watcher sees the changes of its node in the order the node applied
//! them. Each watch has a bounded buffer; when its consumer falls behind,
//! the changes that do not fit are counted and the watch yields one
//! [`WatchItem::Lagged`] with that count in their place, never a silent gap.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

use crate::locks::lock;

/// Changes a watch buffers by default before its consumer is lagged.
pub const DEFAULT_WATCH_BUFFER: usize = 4096;

/// Why a key changed on this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Cause {
    /// A write this node executed as the table's sequencer.
    Write,
    /// A write executed by the sequencer and applied here; also a write taken
    /// back (a batch that failed), reported as a change back to the value
    /// before it.
    Replicated,
    /// A version that came in by a merge (a healed split, a join, anti-entropy).
    Merge,
    /// A conflict handler's decision (or the fallback it fell back to).
    Resolve,
    /// The delete the sequencer wrote when the key's time was up.
    Expiry,
}

impl Cause {
    /// The cause as a lowercase word: `write`, `replicated`, `merge`,
    /// `resolve` or `expiry`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Cause::Write => "write",
            Cause::Replicated => "replicated",
            Cause::Merge => "merge",
            Cause::Resolve => "resolve",
            Cause::Expiry => "expiry",
        }
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One change of one key on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Change {
    /// The table.
    pub table: String,
    /// The key.
    pub key: Vec<u8>,
    /// The new value; `None`: the key was deleted.
    pub value: Option<Vec<u8>>,
    /// The value before; `None`: the key was absent or deleted.
    pub prev: Option<Vec<u8>>,
    /// Why it changed.
    pub cause: Cause,
    /// The node that wrote the new version (the actor of its newest clock
    /// dot); empty when the version has no dot.
    pub node: String,
}

/// What a watch yields.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WatchItem {
    /// A change.
    Change(Change),
    /// The consumer fell behind the watch's buffer: this many changes were
    /// dropped here, between the items before and after this one.
    Lagged(u64),
}

enum Item {
    Change(Arc<Change>),
    Lagged(u64),
}

impl Item {
    fn into_public(self) -> WatchItem {
        match self {
            Item::Change(c) => WatchItem::Change(Arc::unwrap_or_clone(c)),
            Item::Lagged(n) => WatchItem::Lagged(n),
        }
    }
}

/// The changes dropped for a lagging consumer and not yet reported. Shared
/// by the sender and the receiver: the receiver takes them once the buffer
/// is empty, the sender reports them first once the buffer has room again.
type Lag = Arc<Mutex<u64>>;

struct Sender {
    tx: mpsc::Sender<Item>,
    prefix: Box<[u8]>,
    lag: Lag,
}

impl Sender {
    /// Queues `change`; false when the watch is closed.
    fn deliver(&self, change: &Arc<Change>) -> bool {
        let mut lag = lock(&self.lag);
        if *lag > 0 {
            match self.tx.try_send(Item::Lagged(*lag)) {
                Ok(()) => *lag = 0,
                Err(TrySendError::Full(_)) => {
                    *lag += 1;
                    return true;
                }
                Err(TrySendError::Closed(_)) => return false,
            }
        }
        match self.tx.try_send(Item::Change(change.clone())) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                *lag += 1;
                true
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

/// The open watches of one table (held by its store).
#[derive(Default)]
pub(crate) struct Watchers {
    table: Option<Arc<str>>,
    list: Vec<Sender>,
}

impl Watchers {
    /// Whether no watch is open: the only check on a write's path then.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Whether a watch wants changes of `key`.
    pub fn wants(&self, key: &[u8]) -> bool {
        self.list.iter().any(|s| key.starts_with(&s.prefix))
    }

    /// The table's name, as changes carry it.
    pub fn table(&self) -> &str {
        self.table.as_deref().unwrap_or("")
    }

    /// Opens a watch of the keys that start with `prefix`.
    pub fn open(&mut self, table: &Arc<str>, prefix: &[u8], buffer: usize) -> Watch {
        let (tx, rx) = mpsc::channel(buffer.max(1));
        let lag: Lag = Arc::default();
        self.table = Some(table.clone());
        self.list.push(Sender {
            tx,
            prefix: prefix.into(),
            lag: lag.clone(),
        });
        Watch {
            rx,
            lag,
            table: table.clone(),
        }
    }

    /// Reports `change` to every watch whose prefix matches; forgets the
    /// watches that were closed.
    pub fn publish(&mut self, change: Change) {
        let change = Arc::new(change);
        self.list.retain(|s| {
            if change.key.starts_with(&s.prefix) {
                s.deliver(&change)
            } else {
                !s.tx.is_closed()
            }
        });
    }

    /// Ends every watch (the node is closing): each yields what it buffered,
    /// then ends.
    pub fn close_all(&mut self) {
        self.list.clear();
    }
}

/// A watch of a table's changes (see [`crate::Table::watch`]): an async
/// sequence of [`WatchItem`]s, also a [`futures_core::Stream`]. It ends
/// (`None`) once closed, or once its node closed and every buffered item
/// was taken. Dropping it closes it.
pub struct Watch {
    rx: mpsc::Receiver<Item>,
    lag: Lag,
    table: Arc<str>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("table", &self.table).finish()
    }
}

/// What [`Watch::try_next`] found.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TryNext {
    /// An item.
    Item(WatchItem),
    /// Nothing yet.
    Empty,
    /// The watch ended.
    Ended,
}

impl Watch {
    /// The watched table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The next item without waiting.
    pub fn try_next(&mut self) -> TryNext {
        let mut lag = lock(&self.lag);
        match self.rx.try_recv() {
            Ok(item) => TryNext::Item(item.into_public()),
            Err(e) => {
                if *lag > 0 {
                    let n = std::mem::take(&mut *lag);
                    return TryNext::Item(WatchItem::Lagged(n));
                }
                match e {
                    TryRecvError::Empty => TryNext::Empty,
                    TryRecvError::Disconnected => TryNext::Ended,
                }
            }
        }
    }

    /// The next item, waiting for one; `None` once the watch ended.
    pub async fn next(&mut self) -> Option<WatchItem> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    /// The next item, waiting at most `timeout`: `Ok(None)` when the watch
    /// ended, `Err(())` when nothing came in time.
    pub async fn next_timeout(
        &mut self,
        timeout: std::time::Duration,
    ) -> std::result::Result<Option<WatchItem>, ()> {
        tokio::time::timeout(timeout, self.next())
            .await
            .map_err(|_| ())
    }

    /// Closes the watch: the items still buffered can be taken, then it
    /// ends. The store forgets it at the table's next change.
    pub fn close(&mut self) {
        self.rx.close();
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<WatchItem>> {
        match self.try_next() {
            TryNext::Item(item) => return Poll::Ready(Some(item)),
            TryNext::Ended => return Poll::Ready(None),
            TryNext::Empty => {}
        }
        // Nothing was queued: wait for the sender. A change that was dropped
        // meanwhile needs a full buffer, so it cannot be missed here.
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(item.into_public())),
            Poll::Ready(None) => {
                let n = std::mem::take(&mut *lock(&self.lag));
                Poll::Ready((n > 0).then_some(WatchItem::Lagged(n)))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl futures_core::Stream for Watch {
    type Item = WatchItem;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchItem>> {
        self.get_mut().poll_item(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(key: &[u8]) -> Change {
        Change {
            table: "t".into(),
            key: key.to_vec(),
            value: Some(b"v".to_vec()),
            prev: None,
            cause: Cause::Write,
            node: "n".into(),
        }
    }

    #[test]
    fn a_slow_consumer_gets_a_lagged_item_in_place_of_the_gap() {
        let mut w = Watchers::default();
        let mut watch = w.open(&Arc::from("t"), b"", 2);
        for i in 0..5u8 {
            w.publish(change(&[i]));
        }
        let keys = |item: TryNext| match item {
            TryNext::Item(WatchItem::Change(c)) => format!("{:?}", c.key),
            TryNext::Item(WatchItem::Lagged(n)) => format!("lag{n}"),
            other => format!("{other:?}"),
        };
        assert_eq!(keys(watch.try_next()), "[0]");
        assert_eq!(keys(watch.try_next()), "[1]");
        // Room again: the gap is reported before the next change.
        w.publish(change(&[5]));
        assert_eq!(keys(watch.try_next()), "lag3");
        assert_eq!(keys(watch.try_next()), "[5]");
        assert_eq!(keys(watch.try_next()), "Empty");
        // A gap at the end is reported once the buffer is drained.
        for i in 6..9u8 {
            w.publish(change(&[i]));
        }
        assert_eq!(keys(watch.try_next()), "[6]");
        assert_eq!(keys(watch.try_next()), "[7]");
        assert_eq!(keys(watch.try_next()), "lag1");
        w.close_all();
        assert_eq!(keys(watch.try_next()), "Ended");
    }

    #[test]
    fn prefixes_filter_and_closed_watches_are_forgotten() {
        let mut w = Watchers::default();
        let mut a = w.open(&Arc::from("t"), b"a", 8);
        let mut b = w.open(&Arc::from("t"), b"b", 8);
        assert!(w.wants(b"ax") && !w.wants(b"cx"));
        w.publish(change(b"ax"));
        assert!(matches!(a.try_next(), TryNext::Item(_)));
        assert_eq!(b.try_next(), TryNext::Empty);
        b.close();
        drop(a);
        w.publish(change(b"bx"));
        assert!(w.is_empty());
    }
}
