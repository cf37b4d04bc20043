//! Vector clocks with the semantics of riak_core's `vclock` module.
//!
//! A clock is a set of dots, one per actor, each holding a counter and the
//! wall-clock time (in milliseconds) of the actor's last increment. Causality
//! is decided on counters alone; timestamps only matter for [`VClock::prune`],
//! for [`VClock::newest_dot`] and as a tie breaker when two dots of the same
//! actor carry the same counter.
//!
//! Dots are kept sorted by actor, so comparisons and merges are linear walks
//! over two short vectors.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::hash::Xxh64;

/// Identity of one node incarnation: node name plus a random 64-bit
/// incarnation drawn at start.
///
/// A restarted node gets a new incarnation, so it never reuses counters of a
/// previous life that other replicas may already have seen. Ordering is by
/// name, then incarnation.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ActorId {
    /// Node name, shared between all clocks that mention this actor.
    #[serde(with = "arc_str")]
    pub name: Arc<str>,
    /// Random value chosen when the node started.
    pub incarnation: u64,
}

impl ActorId {
    /// Creates an actor id from a node name and an incarnation number.
    pub fn new(name: &str, incarnation: u64) -> Self {
        ActorId {
            name: Arc::from(name),
            incarnation,
        }
    }
}

impl fmt::Display for ActorId {
    /// Formats as `name#incarnation` with the incarnation in lowercase hex.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{:x}", self.name, self.incarnation)
    }
}

/// Compares actors like `Ord` does, but skips the string comparison when both
/// ids share the same name allocation, which is the common case for clocks
/// built on one node.
#[inline]
pub(crate) fn cmp_actor(a: &ActorId, b: &ActorId) -> Ordering {
    if Arc::ptr_eq(&a.name, &b.name) {
        a.incarnation.cmp(&b.incarnation)
    } else {
        a.cmp(b)
    }
}

/// Serde support for `Arc<str>` without requiring serde's `rc` feature.
mod arc_str {
    use std::sync::Arc;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Arc<str>, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(value)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Arc<str>, D::Error> {
        String::deserialize(deserializer).map(Arc::from)
    }
}

/// One actor's entry in a clock: how many updates the actor made and when it
/// made the last one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// Number of increments by the actor; decides causality.
    pub counter: u64,
    /// Wall-clock time of the last increment, in milliseconds since the Unix
    /// epoch; used for pruning and tie breaking only.
    pub timestamp_ms: u64,
}

/// Combines two dots of the same actor the way riak_core's merge does: the
/// larger counter wins with its own timestamp, equal counters keep the later
/// timestamp.
#[inline]
fn merge_dot(a: Dot, b: Dot) -> Dot {
    match a.counter.cmp(&b.counter) {
        Ordering::Greater => a,
        Ordering::Less => b,
        Ordering::Equal => Dot {
            counter: a.counter,
            timestamp_ms: a.timestamp_ms.max(b.timestamp_ms),
        },
    }
}

/// Limits for [`VClock::prune`], riak_core's `small_vclock`, `big_vclock`,
/// `young_vclock` and `old_vclock` bucket properties.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PruneLimits {
    /// Clocks with at most this many dots are never pruned.
    pub small: usize,
    /// Clocks with more dots than this are pruned even if their dots are not old.
    pub big: usize,
    /// Dots younger than this (in milliseconds) are never pruned.
    pub young_ms: u64,
    /// Dots older than this (in milliseconds) are pruned while the clock has
    /// more than `small` dots.
    pub old_ms: u64,
}

impl Default for PruneLimits {
    /// riak_core's defaults: small 50, big 50, young 20 s, old one day.
    fn default() -> Self {
        PruneLimits {
            small: 50,
            big: 50,
            young_ms: 20_000,
            old_ms: 86_400_000,
        }
    }
}

/// A vector clock: at most one [`Dot`] per actor, kept sorted by actor.
///
/// Because the representation is canonical, the derived `PartialEq` and `Hash`
/// agree with [`VClock::equal`]. Deserialization normalizes its input, so a
/// clock read from the wire upholds the same invariant as one built locally.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "VClockRepr")]
pub struct VClock {
    dots: Vec<(ActorId, Dot)>,
}

/// Wire shape of [`VClock`]; exists so that deserialized dots pass through
/// [`VClock::from_dots`] and cannot break the sorted, one-per-actor invariant.
#[derive(Deserialize)]
struct VClockRepr {
    dots: Vec<(ActorId, Dot)>,
}

impl From<VClockRepr> for VClock {
    fn from(repr: VClockRepr) -> Self {
        VClock::from_dots(repr.dots)
    }
}

impl VClock {
    /// Creates an empty clock, the ancestor of every clock.
    pub fn fresh() -> Self {
        VClock { dots: Vec::new() }
    }

    /// Builds a clock from dots in any order. Several dots of the same actor
    /// are combined as [`VClock::merge`] would combine them.
    pub fn from_dots(dots: impl IntoIterator<Item = (ActorId, Dot)>) -> Self {
        let mut dots: Vec<(ActorId, Dot)> = dots.into_iter().collect();
        if !dots.is_sorted_by(|a, b| cmp_actor(&a.0, &b.0) == Ordering::Less) {
            dots.sort_by(|a, b| cmp_actor(&a.0, &b.0));
            dots.dedup_by(|later, kept| {
                if cmp_actor(&later.0, &kept.0) == Ordering::Equal {
                    kept.1 = merge_dot(kept.1, later.1);
                    true
                } else {
                    false
                }
            });
        }
        VClock { dots }
    }

    /// The dots, sorted by actor, at most one per actor.
    pub fn dots(&self) -> &[(ActorId, Dot)] {
        &self.dots
    }

    /// True for a clock without dots (a value nobody has written yet).
    pub fn is_empty(&self) -> bool {
        self.dots.is_empty()
    }

    /// Number of actors in the clock.
    pub fn len(&self) -> usize {
        self.dots.len()
    }

    fn position(&self, actor: &ActorId) -> Result<usize, usize> {
        self.dots.binary_search_by(|(a, _)| cmp_actor(a, actor))
    }

    /// Records one more update by `actor` at time `now_ms`: its counter goes
    /// up by one (starting at 1) and its timestamp becomes `now_ms`.
    ///
    /// The counter saturates at `u64::MAX` instead of wrapping, since wrapping
    /// would make the new clock look older than the old one.
    pub fn increment(&mut self, actor: &ActorId, now_ms: u64) {
        match self.position(actor) {
            Ok(i) => {
                let dot = &mut self.dots[i].1;
                dot.counter = dot.counter.saturating_add(1);
                dot.timestamp_ms = now_ms;
            }
            Err(i) => self.dots.insert(
                i,
                (
                    actor.clone(),
                    Dot {
                        counter: 1,
                        timestamp_ms: now_ms,
                    },
                ),
            ),
        }
    }

    /// True if `self` is `other` or a descendant of it: every actor of
    /// `other` is present in `self` with at least the same counter.
    /// Timestamps are ignored.
    pub fn descends(&self, other: &VClock) -> bool {
        // Every actor of `other` must appear in `self`, so a shorter clock
        // cannot descend.
        if other.dots.len() > self.dots.len() {
            return false;
        }
        let mut mine = self.dots.iter();
        'theirs: for (actor, theirs) in &other.dots {
            for (candidate, dot) in mine.by_ref() {
                match cmp_actor(candidate, actor) {
                    Ordering::Less => {}
                    Ordering::Equal => {
                        if dot.counter < theirs.counter {
                            return false;
                        }
                        continue 'theirs;
                    }
                    Ordering::Greater => return false,
                }
            }
            return false;
        }
        true
    }

    /// True if `self` strictly descends `other`.
    ///
    /// Checked as "descends and not the reverse", not as "descends and not
    /// equal": clocks with equal counters but different timestamps descend
    /// each other and neither dominates.
    pub fn dominates(&self, other: &VClock) -> bool {
        self.descends(other) && !other.descends(self)
    }

    /// True if neither clock descends the other, i.e. the two histories
    /// diverged and their values conflict.
    pub fn concurrent(&self, other: &VClock) -> bool {
        !self.descends(other) && !other.descends(self)
    }

    /// The least common descendant of both clocks: per actor the dot with the
    /// larger counter; for equal counters the later timestamp is kept.
    pub fn merge(&self, other: &VClock) -> VClock {
        if other.dots.is_empty() {
            return self.clone();
        }
        if self.dots.is_empty() {
            return other.clone();
        }
        let (a, b) = (&self.dots, &other.dots);
        let mut out = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            match cmp_actor(&a[i].0, &b[j].0) {
                Ordering::Less => {
                    out.push(a[i].clone());
                    i += 1;
                }
                Ordering::Greater => {
                    out.push(b[j].clone());
                    j += 1;
                }
                Ordering::Equal => {
                    out.push((a[i].0.clone(), merge_dot(a[i].1, b[j].1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(&a[i..]);
        out.extend_from_slice(&b[j..]);
        VClock { dots: out }
    }

    /// In-place [`VClock::merge`]: `self` becomes the merge of `self` and
    /// `other`. Does not allocate when `other` adds no new actor.
    pub fn merge_from(&mut self, other: &VClock) {
        if self.dots.is_empty() {
            self.dots.clone_from(&other.dots);
            return;
        }
        let mut i = 0;
        for (actor, theirs) in &other.dots {
            while i < self.dots.len() && cmp_actor(&self.dots[i].0, actor) == Ordering::Less {
                i += 1;
            }
            if i < self.dots.len() && cmp_actor(&self.dots[i].0, actor) == Ordering::Equal {
                self.dots[i].1 = merge_dot(self.dots[i].1, *theirs);
            } else {
                self.dots.insert(i, (actor.clone(), *theirs));
            }
            i += 1;
        }
    }

    /// riak_core's `equal`: both clocks hold exactly the same dots,
    /// timestamps included.
    pub fn equal(&self, other: &VClock) -> bool {
        self.dots == other.dots
    }

    /// The counter of `actor`, 0 if the actor never incremented this clock.
    pub fn counter(&self, actor: &ActorId) -> u64 {
        self.position(actor).map_or(0, |i| self.dots[i].1.counter)
    }

    /// The timestamp of `actor`'s last increment, if the actor is present.
    pub fn timestamp(&self, actor: &ActorId) -> Option<u64> {
        self.position(actor)
            .ok()
            .map(|i| self.dots[i].1.timestamp_ms)
    }

    /// All actors that ever incremented this clock, in actor order.
    pub fn actors(&self) -> impl Iterator<Item = &ActorId> {
        self.dots.iter().map(|(actor, _)| actor)
    }

    /// The dot with the largest timestamp, ties broken by the larger actor id.
    /// Used by the merge fallback.
    pub fn newest_dot(&self) -> Option<(&ActorId, &Dot)> {
        self.dots
            .iter()
            .max_by(|(a, x), (b, y)| {
                x.timestamp_ms
                    .cmp(&y.timestamp_ms)
                    .then_with(|| cmp_actor(a, b))
            })
            .map(|(actor, dot)| (actor, dot))
    }

    /// Possibly shrinks the clock, exactly like riak_core's `prune`.
    ///
    /// Dots are considered oldest first (by timestamp, then actor, so every
    /// replica drops the same dots). The oldest dot is dropped while the clock
    /// has more than `small` dots, the dot is at least `young_ms` old, and
    /// either the clock has more than `big` dots or the dot is more than
    /// `old_ms` old. Ages are computed signed, so timestamps in the future
    /// count as young, as they do in riak_core.
    pub fn prune(&mut self, now_ms: u64, limits: &PruneLimits) {
        let len = self.dots.len();
        if len <= limits.small {
            return;
        }
        let age = |dot: &Dot| i128::from(now_ms) - i128::from(dot.timestamp_ms);
        let mut by_age: Vec<usize> = (0..len).collect();
        by_age.sort_by(|&x, &y| {
            let (ax, dx) = &self.dots[x];
            let (ay, dy) = &self.dots[y];
            dx.timestamp_ms
                .cmp(&dy.timestamp_ms)
                .then_with(|| cmp_actor(ax, ay))
        });
        let mut drop = vec![false; len];
        let mut remaining = len;
        for &i in &by_age {
            let age = age(&self.dots[i].1);
            if remaining <= limits.small || age < i128::from(limits.young_ms) {
                break;
            }
            if remaining <= limits.big && age <= i128::from(limits.old_ms) {
                break;
            }
            drop[i] = true;
            remaining -= 1;
        }
        if remaining < len {
            let mut flags = drop.iter();
            self.dots
                .retain(|_| !flags.next().copied().unwrap_or(false));
        }
    }

    /// Stable 64-bit hash of the clock's content (actors, counters,
    /// timestamps), the same on every machine and in every process; used in
    /// table digests.
    ///
    /// It is XXH64 with seed 0 (see [`crate::hash::stable_hash_bytes`]) over this encoding,
    /// all integers as little-endian `u64`: the number of dots, then per dot
    /// in actor order the name's length in bytes, the name's UTF-8 bytes, the
    /// incarnation, the counter and the timestamp.
    pub fn stable_hash(&self) -> u64 {
        stable_hash_of_dots(self.dots.iter().map(|(a, d)| (a, *d)))
    }
}

/// [`VClock::stable_hash`] of the clock made of `dots` (given in actor order),
/// for stores that keep dots in another form and should not build a clock to hash it.
pub fn stable_hash_of_dots<'a>(dots: impl ExactSizeIterator<Item = (&'a ActorId, Dot)>) -> u64 {
    let mut hasher = Xxh64::new(0);
    hasher.write_u64(dots.len() as u64);
    for (actor, dot) in dots {
        hasher.write_u64(actor.name.len() as u64);
        hasher.write(actor.name.as_bytes());
        hasher.write_u64(actor.incarnation);
        hasher.write_u64(dot.counter);
        hasher.write_u64(dot.timestamp_ms);
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn actor(name: &str) -> ActorId {
        ActorId::new(name, 0)
    }

    fn dot(counter: u64, timestamp_ms: u64) -> Dot {
        Dot {
            counter,
            timestamp_ms,
        }
    }

    /// Builds a clock from `(name, counter, timestamp)` triples, in the
    /// notation of riak_core's tests.
    fn vc(entries: &[(&str, u64, u64)]) -> VClock {
        VClock::from_dots(entries.iter().map(|&(n, c, t)| (actor(n), dot(c, t))))
    }

    fn triples(clock: &VClock) -> Vec<(String, u64, u64)> {
        clock
            .dots()
            .iter()
            .map(|(a, d)| (a.name.to_string(), d.counter, d.timestamp_ms))
            .collect()
    }

    const NOW: u64 = 63_000_000_000;

    #[test]
    fn example() {
        let (a, b, c) = (actor("a"), actor("b"), actor("c"));
        let a0 = VClock::fresh();
        let b0 = VClock::fresh();
        let mut a1 = a0.clone();
        a1.increment(&a, 1);
        let mut b1 = b0.clone();
        b1.increment(&b, 2);
        assert!(a1.descends(&a0));
        assert!(b1.descends(&b0));
        assert!(!a1.descends(&b1));
        let mut a2 = a1.clone();
        a2.increment(&a, 3);
        let merged = a2.merge(&b1);
        let mut c1 = merged.clone();
        c1.increment(&c, 4);
        assert!(c1.descends(&a2));
        assert!(c1.descends(&b1));
        assert!(!b1.descends(&c1));
        assert!(!b1.descends(&a1));
    }

    #[test]
    fn equals_or_dominates() {
        let (a, b) = (actor("a"), actor("b"));
        let mut a3 = VClock::fresh();
        a3.increment(&a, 1);
        a3.increment(&b, 2);
        a3.increment(&a, 3);
        let mut b4 = a3.clone();
        b4.increment(&b, 4);
        let mut b5 = a3.clone();
        b5.increment(&b, 4);
        assert!(b4.dominates(&a3));
        assert!(!a3.dominates(&b4));
        assert!(b4.equal(&b5));
        assert!(!b4.dominates(&b5));
        assert!(!b5.dominates(&b4));
    }

    #[test]
    fn equal_counters_with_different_timestamps_neither_dominate_nor_conflict() {
        let x = vc(&[("a", 2, 10)]);
        let y = vc(&[("a", 2, 20)]);
        assert!(x.descends(&y) && y.descends(&x));
        assert!(!x.dominates(&y) && !y.dominates(&x));
        assert!(!x.concurrent(&y));
        assert!(!x.equal(&y));
    }

    #[test]
    fn concurrent_clocks() {
        let x = vc(&[("a", 2, 1), ("b", 1, 1)]);
        let y = vc(&[("a", 1, 1), ("b", 2, 1)]);
        assert!(x.concurrent(&y));
        assert!(y.concurrent(&x));
        assert!(!x.concurrent(&x));
        let z = vc(&[("c", 1, 1)]);
        assert!(x.concurrent(&z));
        assert!(!x.concurrent(&VClock::fresh()));
    }

    #[test]
    fn descends_requires_every_actor() {
        let x = vc(&[("a", 5, 1), ("c", 5, 1)]);
        assert!(!x.descends(&vc(&[("b", 1, 1)])));
        assert!(!x.descends(&vc(&[("a", 1, 1), ("b", 1, 1)])));
        assert!(!x.descends(&vc(&[("d", 1, 1)])));
        assert!(x.descends(&vc(&[("c", 5, 9)])));
        assert!(!x.descends(&vc(&[("c", 6, 1)])));
        assert!(VClock::fresh().descends(&VClock::fresh()));
        assert!(!VClock::fresh().descends(&x));
    }

    #[test]
    fn prune_small() {
        // Clocks with fewer entries than small_vclock are left alone.
        let old = NOW - 32_000_000;
        let small = vc(&[("1", 1, old), ("2", 2, old), ("3", 3, old)]);
        let limits = PruneLimits {
            small: 4,
            ..PruneLimits::default()
        };
        let mut pruned = small.clone();
        pruned.prune(NOW, &limits);
        assert_eq!(pruned, small);
    }

    #[test]
    fn prune_young() {
        // Clocks whose entries are all younger than young_vclock are left alone.
        let new = NOW - 1;
        let clock = vc(&[("1", 1, new), ("2", 2, new), ("3", 3, new)]);
        let limits = PruneLimits {
            small: 1,
            young_ms: 1000,
            ..PruneLimits::default()
        };
        let mut pruned = clock.clone();
        pruned.prune(NOW, &limits);
        assert_eq!(pruned, clock);
    }

    #[test]
    fn prune_big() {
        // Clocks not protected by small or young shrink to at most big_vclock entries.
        let new = NOW - 1000;
        let mut clock = vc(&[("1", 1, new), ("2", 2, new), ("3", 3, new)]);
        let limits = PruneLimits {
            small: 1,
            young_ms: 1,
            big: 2,
            old_ms: 100_000,
        };
        clock.prune(NOW, &limits);
        assert_eq!(clock.len(), 2);
        // The ({timestamp, actor}) order makes "1" the oldest.
        assert_eq!(
            triples(&clock),
            vec![("2".into(), 2, new), ("3".into(), 3, new)]
        );
    }

    #[test]
    fn prune_old() {
        // ...and additionally lose every entry older than old_vclock.
        let new = NOW - 1000;
        let old = NOW - 100_000;
        let mut clock = vc(&[("1", 1, new), ("2", 2, old), ("3", 3, old)]);
        let limits = PruneLimits {
            small: 1,
            young_ms: 1,
            big: 2,
            old_ms: 10_000,
        };
        clock.prune(NOW, &limits);
        assert_eq!(triples(&clock), vec![("1".into(), 1, new)]);
    }

    #[test]
    fn prune_order() {
        // Entries with the same timestamp are pruned in actor order, so
        // every replica keeps the same entry.
        let old = NOW - 100_000;
        let entries = [(actor("1"), dot(1, old)), (actor("2"), dot(2, old))];
        let mut forward = VClock::from_dots(entries.iter().cloned());
        let mut backward = VClock::from_dots(entries.iter().rev().cloned());
        let limits = PruneLimits {
            small: 1,
            young_ms: 1,
            big: 2,
            old_ms: 10_000,
        };
        forward.prune(NOW, &limits);
        backward.prune(NOW, &limits);
        assert_eq!(forward, backward);
        assert_eq!(triples(&forward), vec![("2".into(), 2, old)]);
    }

    #[test]
    fn prune_keeps_future_timestamps() {
        let mut clock = vc(&[("1", 1, NOW + 5), ("2", 1, NOW + 5)]);
        let limits = PruneLimits {
            small: 0,
            young_ms: 0,
            big: 0,
            old_ms: 0,
        };
        let before = clock.clone();
        clock.prune(NOW, &limits);
        assert_eq!(clock, before);
    }

    #[test]
    fn prune_defaults_match_riak() {
        assert_eq!(
            PruneLimits::default(),
            PruneLimits {
                small: 50,
                big: 50,
                young_ms: 20_000,
                old_ms: 86_400_000
            }
        );
    }

    #[test]
    fn accessors() {
        let clock = vc(&[("1", 1, 1), ("2", 2, 2)]);
        assert_eq!(clock.counter(&actor("1")), 1);
        assert_eq!(clock.timestamp(&actor("1")), Some(1));
        assert_eq!(clock.counter(&actor("2")), 2);
        assert_eq!(clock.timestamp(&actor("2")), Some(2));
        assert_eq!(clock.counter(&actor("3")), 0);
        assert_eq!(clock.timestamp(&actor("3")), None);
        let names: Vec<&str> = clock.actors().map(|a| &*a.name).collect();
        assert_eq!(names, ["1", "2"]);
        assert_eq!(clock.len(), 2);
        assert!(!clock.is_empty());
        assert!(VClock::fresh().is_empty());
        assert_eq!(VClock::fresh(), VClock::default());
    }

    #[test]
    fn get_entry() {
        let (a, b, c, d) = (actor("a"), actor("b"), actor("c"), actor("d"));
        let mut clock = VClock::fresh();
        clock.increment(&a, 1);
        clock.increment(&b, 2);
        clock.increment(&c, 3);
        clock.increment(&a, 4);
        assert_eq!(clock.counter(&a), 2);
        assert_eq!(clock.timestamp(&a), Some(4));
        assert_eq!(clock.counter(&b), 1);
        assert_eq!(clock.counter(&c), 1);
        assert_eq!(clock.counter(&d), 0);
        assert_eq!(clock.timestamp(&d), None);
    }

    #[test]
    fn incarnations_are_distinct_actors() {
        let old = ActorId::new("n1", 1);
        let new = ActorId::new("n1", 2);
        let mut clock = VClock::fresh();
        clock.increment(&old, 1);
        clock.increment(&new, 2);
        assert_eq!(clock.len(), 2);
        assert_eq!(clock.counter(&old), 1);
        assert_eq!(clock.counter(&new), 1);
        assert!(old < new);
        assert!(ActorId::new("a", 9) < ActorId::new("b", 1));
    }

    #[test]
    fn merge() {
        let vc1 = vc(&[("1", 1, 1), ("2", 2, 2), ("4", 4, 4)]);
        let vc2 = vc(&[("3", 3, 3), ("4", 3, 3)]);
        assert!(VClock::fresh().merge(&VClock::fresh()).is_empty());
        assert_eq!(
            triples(&vc1.merge(&vc2)),
            vec![
                ("1".into(), 1, 1),
                ("2".into(), 2, 2),
                ("3".into(), 3, 3),
                ("4".into(), 4, 4)
            ]
        );
    }

    #[test]
    fn merge_less_left() {
        let vc1 = vc(&[("5", 5, 5)]);
        let vc2 = vc(&[("6", 6, 6), ("7", 7, 7)]);
        assert_eq!(
            triples(&vc1.merge(&vc2)),
            vec![("5".into(), 5, 5), ("6".into(), 6, 6), ("7".into(), 7, 7)]
        );
    }

    #[test]
    fn merge_less_right() {
        let vc1 = vc(&[("6", 6, 6), ("7", 7, 7)]);
        let vc2 = vc(&[("5", 5, 5)]);
        assert_eq!(
            triples(&vc1.merge(&vc2)),
            vec![("5".into(), 5, 5), ("6".into(), 6, 6), ("7".into(), 7, 7)]
        );
    }

    #[test]
    fn merge_same_id() {
        let vc1 = vc(&[("1", 1, 2), ("2", 1, 4)]);
        let vc2 = vc(&[("1", 1, 3), ("3", 1, 5)]);
        assert_eq!(
            triples(&vc1.merge(&vc2)),
            vec![("1".into(), 1, 3), ("2".into(), 1, 4), ("3".into(), 1, 5)]
        );
    }

    #[test]
    fn merge_larger_counter_keeps_its_own_timestamp() {
        let x = vc(&[("a", 3, 1)]);
        let y = vc(&[("a", 2, 100)]);
        assert_eq!(triples(&x.merge(&y)), vec![("a".into(), 3, 1)]);
        assert_eq!(triples(&y.merge(&x)), vec![("a".into(), 3, 1)]);
    }

    #[test]
    fn merge_from_matches_merge() {
        let vc1 = vc(&[("1", 1, 1), ("2", 2, 2), ("4", 4, 4)]);
        let vc2 = vc(&[("0", 1, 1), ("3", 3, 3), ("4", 3, 3), ("5", 1, 1)]);
        let mut in_place = vc1.clone();
        in_place.merge_from(&vc2);
        assert_eq!(in_place, vc1.merge(&vc2));
        let mut empty = VClock::fresh();
        empty.merge_from(&vc2);
        assert_eq!(empty, vc2);
    }

    #[test]
    fn from_dots_normalizes() {
        let clock = VClock::from_dots([
            (actor("b"), dot(1, 5)),
            (actor("a"), dot(2, 1)),
            (actor("b"), dot(3, 2)),
            (actor("a"), dot(2, 7)),
        ]);
        assert_eq!(
            triples(&clock),
            vec![("a".into(), 2, 7), ("b".into(), 3, 2)]
        );
    }

    #[test]
    fn newest_dot_breaks_ties_by_actor() {
        assert_eq!(VClock::fresh().newest_dot(), None);
        let clock = vc(&[("a", 1, 10), ("b", 5, 3), ("c", 1, 10)]);
        let (who, d) = clock.newest_dot().expect("clock is not empty");
        assert_eq!(&*who.name, "c");
        assert_eq!(*d, dot(1, 10));
        let clock = vc(&[("a", 1, 11), ("b", 5, 3), ("c", 1, 10)]);
        assert_eq!(clock.newest_dot().map(|(a, _)| &*a.name), Some("a"));
    }

    #[test]
    fn display_actor() {
        assert_eq!(ActorId::new("node1", 0xbeef).to_string(), "node1#beef");
        assert_eq!(ActorId::new("n", 0).to_string(), "n#0");
    }

    #[test]
    fn increment_saturates() {
        let a = actor("a");
        let mut clock = vc(&[("a", u64::MAX, 1)]);
        clock.increment(&a, 2);
        assert_eq!(clock.counter(&a), u64::MAX);
        assert_eq!(clock.timestamp(&a), Some(2));
    }

    #[test]
    fn serde_round_trip_and_normalization() {
        let clock = vc(&[("a", 1, 2), ("b", 3, 4)]);
        let json = serde_json::to_string(&clock).expect("serialize");
        let back: VClock = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, clock);
        let bytes = postcard::to_stdvec(&clock).expect("serialize");
        let back: VClock = postcard::from_bytes(&bytes).expect("deserialize");
        assert_eq!(back, clock);

        let unsorted = r#"{"dots":[
            [{"name":"b","incarnation":0},{"counter":3,"timestamp_ms":4}],
            [{"name":"a","incarnation":0},{"counter":1,"timestamp_ms":2}],
            [{"name":"b","incarnation":0},{"counter":2,"timestamp_ms":9}]]}"#;
        let back: VClock = serde_json::from_str(unsorted).expect("deserialize");
        assert_eq!(back, clock);
    }

    #[test]
    fn stable_hash_is_fixed() {
        // Pins the encoding: a change here changes every table digest.
        let clock = vc(&[("a", 1, 2), ("b", 3, 4)]);
        let mut encoding = Vec::new();
        encoding.extend_from_slice(&2u64.to_le_bytes());
        for (name, inc, counter, ts) in [("a", 0u64, 1u64, 2u64), ("b", 0, 3, 4)] {
            encoding.extend_from_slice(&(name.len() as u64).to_le_bytes());
            encoding.extend_from_slice(name.as_bytes());
            for v in [inc, counter, ts] {
                encoding.extend_from_slice(&v.to_le_bytes());
            }
        }
        assert_eq!(
            clock.stable_hash(),
            crate::hash::stable_hash_bytes(0, &encoding)
        );
        assert_ne!(clock.stable_hash(), VClock::fresh().stable_hash());
        assert_ne!(
            vc(&[("a", 1, 2)]).stable_hash(),
            vc(&[("a", 1, 3)]).stable_hash()
        );
    }

    /// riak_core's prune, transcribed literally: sort by `{timestamp, actor}`
    /// and drop heads.
    fn reference_prune(clock: &VClock, now: u64, limits: &PruneLimits) -> VClock {
        let mut v: Vec<(ActorId, Dot)> = clock.dots().to_vec();
        v.sort_by(|(n1, d1), (n2, d2)| (d1.timestamp_ms, n1).cmp(&(d2.timestamp_ms, n2)));
        loop {
            if v.len() <= limits.small {
                break;
            }
            let head_age = i128::from(now) - i128::from(v[0].1.timestamp_ms);
            if head_age < i128::from(limits.young_ms) {
                break;
            }
            if v.len() > limits.big || head_age > i128::from(limits.old_ms) {
                v.remove(0);
            } else {
                break;
            }
        }
        VClock::from_dots(v)
    }

    fn arb_actor() -> impl Strategy<Value = ActorId> {
        (prop::sample::select(vec!["a", "b", "c", "d"]), 0u64..2)
            .prop_map(|(name, inc)| ActorId::new(name, inc))
    }

    fn arb_dots() -> impl Strategy<Value = Vec<(ActorId, Dot)>> {
        prop::collection::vec(
            (arb_actor(), 1u64..6, 0u64..6).prop_map(|(a, c, t)| (a, dot(c, t))),
            0..8,
        )
    }

    fn arb_clock() -> impl Strategy<Value = VClock> {
        arb_dots().prop_map(VClock::from_dots)
    }

    proptest! {
        #[test]
        fn prop_merge_commutative(a in arb_clock(), b in arb_clock()) {
            prop_assert_eq!(a.merge(&b), b.merge(&a));
        }

        #[test]
        fn prop_merge_associative(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
            prop_assert_eq!(a.merge(&b).merge(&c), a.merge(&b.merge(&c)));
        }

        #[test]
        fn prop_merge_idempotent(a in arb_clock(), b in arb_clock()) {
            prop_assert_eq!(a.merge(&a), a.clone());
            let ab = a.merge(&b);
            prop_assert_eq!(ab.merge(&b), ab);
        }

        #[test]
        fn prop_merge_descends_both(a in arb_clock(), b in arb_clock()) {
            let m = a.merge(&b);
            prop_assert!(m.descends(&a));
            prop_assert!(m.descends(&b));
            // Least upper bound: nothing beyond the inputs' actors and counters.
            for (actor, d) in m.dots() {
                prop_assert_eq!(d.counter, a.counter(actor).max(b.counter(actor)));
            }
        }

        #[test]
        fn prop_merge_from_equals_merge(a in arb_clock(), b in arb_clock()) {
            let mut in_place = a.clone();
            in_place.merge_from(&b);
            prop_assert_eq!(in_place, a.merge(&b));
        }

        #[test]
        fn prop_from_dots_is_order_independent_and_merges(dots in arb_dots()) {
            let forward = VClock::from_dots(dots.iter().cloned());
            let backward = VClock::from_dots(dots.iter().rev().cloned());
            prop_assert_eq!(&forward, &backward);
            let folded = dots.iter().fold(VClock::fresh(), |acc, d| {
                acc.merge(&VClock::from_dots([d.clone()]))
            });
            prop_assert_eq!(&forward, &folded);
            prop_assert!(forward.dots().windows(2).all(|w| w[0].0 < w[1].0));
        }

        #[test]
        fn prop_increment_dominates(a in arb_clock(), who in arb_actor(), now in 0u64..10) {
            let mut b = a.clone();
            b.increment(&who, now);
            prop_assert!(b.dominates(&a));
            prop_assert!(!a.dominates(&b));
            prop_assert!(!a.descends(&b));
            prop_assert_eq!(b.counter(&who), a.counter(&who) + 1);
            prop_assert_eq!(b.timestamp(&who), Some(now));
            prop_assert!(b.dots().windows(2).all(|w| w[0].0 < w[1].0));
        }

        #[test]
        fn prop_descends_matches_definition(a in arb_clock(), b in arb_clock()) {
            let expected = b
                .dots()
                .iter()
                .all(|(actor, d)| a.timestamp(actor).is_some() && a.counter(actor) >= d.counter);
            prop_assert_eq!(a.descends(&b), expected);
            prop_assert_eq!(a.dominates(&b), expected && !b.descends(&a));
            prop_assert_eq!(a.concurrent(&b), !expected && !b.descends(&a));
        }

        #[test]
        fn prop_descends_reflexive(a in arb_clock()) {
            prop_assert!(a.descends(&a));
            prop_assert!(!a.dominates(&a));
            prop_assert!(a.descends(&VClock::fresh()));
        }

        #[test]
        fn prop_descends_antisymmetric(a in arb_clock(), b in arb_clock()) {
            let b_like_a = b.merge(&a);
            for (x, y) in [(&a, &b), (&a, &b_like_a)] {
                if x.descends(y) && y.descends(x) {
                    let counters = |c: &VClock| -> Vec<(ActorId, u64)> {
                        c.dots().iter().map(|(a, d)| (a.clone(), d.counter)).collect()
                    };
                    prop_assert_eq!(counters(x), counters(y));
                }
            }
        }

        #[test]
        fn prop_descends_transitive(a in arb_clock(), b in arb_clock(), c in arb_clock()) {
            if a.descends(&b) && b.descends(&c) {
                prop_assert!(a.descends(&c));
            }
            // Build a chain so the premise holds on every case.
            let mid = b.merge(&c);
            let top = a.merge(&mid);
            prop_assert!(top.descends(&mid) && mid.descends(&c));
            prop_assert!(top.descends(&c));
        }

        #[test]
        fn prop_prune_matches_riak(
            a in arb_clock(),
            now in 0u64..12,
            small in 0usize..5,
            big in 0usize..5,
            young in 0u64..6,
            old in 0u64..8,
        ) {
            let limits = PruneLimits { small, big, young_ms: young, old_ms: old };
            let mut pruned = a.clone();
            pruned.prune(now, &limits);
            prop_assert_eq!(&pruned, &reference_prune(&a, now, &limits));
            prop_assert!(a.descends(&pruned));
        }

        #[test]
        fn prop_stable_hash_follows_equality(a in arb_clock(), b in arb_clock()) {
            if a == b {
                prop_assert_eq!(a.stable_hash(), b.stable_hash());
            }
            let shuffled = VClock::from_dots(a.dots().iter().rev().cloned());
            prop_assert_eq!(a.stable_hash(), shuffled.stable_hash());
        }
    }
}
