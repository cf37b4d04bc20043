//! The merge rule and the conflict-handler API: what two versions of one key
//! become when nodes that were apart meet, identical on every node so that
//! both sides of a merge reach the same entry.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::store::Entry;

/// Two concurrent versions of a key, as a conflict handler sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// The table.
    pub table: String,
    /// The key.
    pub key: Vec<u8>,
    /// This node's version (`None`: deleted).
    pub local: Option<Vec<u8>>,
    /// The other side's version (`None`: deleted).
    pub remote: Option<Vec<u8>>,
}

/// What a conflict handler decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Write this value everywhere.
    Value(Vec<u8>),
    /// Delete the key everywhere.
    Delete,
}

/// The future a conflict handler returns; an `Err` means unresolved (the fallback applies).
pub type HandlerFuture =
    Pin<Box<dyn Future<Output = std::result::Result<Resolution, String>> + Send>>;

/// A table's conflict handler. It runs on exactly one node per conflict (the
/// smallest actor id among the members that have one) and is bounded by the
/// handler timeout.
pub trait ConflictHandler: Send + Sync + 'static {
    /// Decides a conflict.
    fn resolve(&self, conflict: Conflict) -> HandlerFuture;
}

struct BlockingHandler<F>(Arc<F>);

impl<F> ConflictHandler for BlockingHandler<F>
where
    F: Fn(&Conflict) -> std::result::Result<Resolution, String> + Send + Sync + 'static,
{
    fn resolve(&self, conflict: Conflict) -> HandlerFuture {
        let f = self.0.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&conflict))
                .await
                .unwrap_or_else(|e| Err(format!("the conflict handler panicked: {e}")))
        })
    }
}

/// A conflict handler from a plain function, run on tokio's blocking pool (so it
/// may take locks or call into a foreign runtime).
pub fn handler_fn<F>(f: F) -> Arc<dyn ConflictHandler>
where
    F: Fn(&Conflict) -> std::result::Result<Resolution, String> + Send + Sync + 'static,
{
    Arc::new(BlockingHandler(Arc::new(f)))
}

/// The result of merging two versions of one key.
pub(crate) struct Merged {
    pub entry: Entry,
    pub conflict: bool,
}

/// The merge rule, identical on every node so that both sides of a merge reach
/// the same entry: a version that descends the other wins; equal values merge
/// their clocks; otherwise the version whose newest dot has the larger
/// timestamp (then actor id) wins, with the merged clock, and it is a conflict.
pub(crate) fn merge_versions(local: &Entry, remote: &Entry) -> Merged {
    let keep = |e: &Entry| Merged {
        entry: e.clone(),
        conflict: false,
    };
    if local.clock.equal(&remote.clock) {
        // One write has one value; should two ever differ, pick the same one everywhere.
        return keep(if fallback_prefers(local, remote) {
            local
        } else {
            remote
        });
    }
    let local_descends = local.clock.descends(&remote.clock);
    let remote_descends = remote.clock.descends(&local.clock);
    if local_descends && !remote_descends {
        return keep(local);
    }
    if remote_descends && !local_descends {
        return keep(remote);
    }
    let clock = local.clock.merge(&remote.clock);
    if local.value == remote.value {
        return Merged {
            entry: Entry {
                value: local.value.clone(),
                clock,
                deadline_ms: joint_deadline(local, remote),
            },
            conflict: false,
        };
    }
    let winner = if fallback_prefers(local, remote) {
        local
    } else {
        remote
    };
    Merged {
        entry: Entry {
            value: winner.value.clone(),
            clock,
            deadline_ms: winner.deadline_ms,
        },
        conflict: true,
    }
}

/// The deadline a value made of two versions keeps: none when a present
/// side never expires, else the later one (the same whichever side is local).
pub(crate) fn joint_deadline(a: &Entry, b: &Entry) -> Option<u64> {
    let sides = [a, b];
    let mut present = sides.iter().filter(|e| e.value.is_some()).peekable();
    present.peek()?;
    present.try_fold(0u64, |latest, e| e.deadline_ms.map(|d| latest.max(d)))
}

/// Whether `a` beats `b` in the deterministic fallback.
fn fallback_prefers(a: &Entry, b: &Entry) -> bool {
    let key = |e: &Entry| {
        e.clock
            .newest_dot()
            .map(|(actor, dot)| (dot.timestamp_ms, actor.clone()))
    };
    match key(a).cmp(&key(b)) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        // Same newest dot on both sides: only the bytes can still decide.
        std::cmp::Ordering::Equal => a.value >= b.value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vclock::{ActorId, VClock};
    use proptest::prelude::*;

    fn version(value: Option<&[u8]>, dots: &[(&str, u64, u64)]) -> Entry {
        Entry {
            value: value.map(Box::from),
            clock: VClock::from_dots(dots.iter().map(|(n, c, t)| {
                (
                    ActorId::new(n, 1),
                    crate::vclock::Dot {
                        counter: *c,
                        timestamp_ms: *t,
                    },
                )
            })),
            deadline_ms: None,
        }
    }

    #[test]
    fn descending_version_wins() {
        let old = version(Some(b"1"), &[("a", 1, 10)]);
        let new = version(Some(b"2"), &[("a", 2, 20)]);
        for (l, r) in [(&old, &new), (&new, &old)] {
            let m = merge_versions(l, r);
            assert_eq!(m.entry, new);
            assert!(!m.conflict);
        }
    }

    #[test]
    fn equal_values_merge_clocks_without_conflict() {
        let a = version(Some(b"x"), &[("a", 1, 10)]);
        let b = version(Some(b"x"), &[("b", 1, 11)]);
        let m = merge_versions(&a, &b);
        assert!(!m.conflict);
        assert!(m.entry.clock.descends(&a.clock) && m.entry.clock.descends(&b.clock));
    }

    #[test]
    fn concurrent_values_fall_back_to_newest_dot() {
        let a = version(Some(b"older"), &[("a", 1, 10)]);
        let b = version(Some(b"newer"), &[("b", 1, 11)]);
        let m = merge_versions(&a, &b);
        assert!(m.conflict);
        assert_eq!(m.entry.value.as_deref(), Some(&b"newer"[..]));
        // Same timestamp: the larger actor id wins.
        let c = version(Some(b"from-c"), &[("c", 1, 11)]);
        assert_eq!(
            merge_versions(&b, &c).entry.value.as_deref(),
            Some(&b"from-c"[..])
        );
    }

    #[test]
    fn delete_concurrent_with_put_is_a_conflict() {
        let put = version(Some(b"v"), &[("a", 2, 10)]);
        let del = version(None, &[("a", 1, 5), ("b", 1, 20)]);
        let m = merge_versions(&put, &del);
        assert!(m.conflict);
        assert!(m.entry.value.is_none());
    }

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (
            proptest::option::of(proptest::collection::vec(0u8..3, 0..2)),
            proptest::collection::vec((0usize..3, 1u64..4, 0u64..4), 0..4),
        )
            .prop_map(|(v, dots)| {
                let names = ["a", "b", "c"];
                version(
                    v.as_deref(),
                    &dots
                        .iter()
                        .map(|(i, c, t)| (names[*i], *c, *t))
                        .collect::<Vec<_>>(),
                )
            })
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_entry(), b in arb_entry()) {
            prop_assert_eq!(merge_versions(&a, &b).entry, merge_versions(&b, &a).entry);
        }

        #[test]
        fn merge_is_idempotent(a in arb_entry(), b in arb_entry()) {
            let m = merge_versions(&a, &b).entry;
            prop_assert_eq!(merge_versions(&m, &b).entry, m.clone());
            prop_assert_eq!(merge_versions(&a, &a).entry, a);
        }

        #[test]
        fn merged_clock_descends_both(a in arb_entry(), b in arb_entry()) {
            let m = merge_versions(&a, &b).entry;
            prop_assert!(m.clock.descends(&a.clock) && m.clock.descends(&b.clock));
        }

        #[test]
        fn replicas_converge_whatever_the_order_of_pairwise_merges(
            versions in proptest::collection::vec(arb_entry(), 2..5),
            order in proptest::collection::vec((0usize..5, 0usize..5), 0..30),
        ) {
            let mut replicas = versions.clone();
            let n = replicas.len();
            for (i, j) in order {
                let (i, j) = (i % n, j % n);
                let m = merge_versions(&replicas[i], &replicas[j]).entry;
                replicas[i] = m.clone();
                replicas[j] = m;
            }
            // A final round in a fixed order, as anti-entropy does.
            for _ in 0..2 {
                for i in 1..n {
                    let m = merge_versions(&replicas[0], &replicas[i]).entry;
                    replicas[0] = m.clone();
                    replicas[i] = m;
                }
            }
            for r in &replicas[1..] {
                prop_assert_eq!(r, &replicas[0]);
            }
        }
    }
}
