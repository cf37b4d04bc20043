//! The in-memory replica of one table: entries (values or tombstones with their
//! clocks) and an incremental digest that the merge engine compares between nodes.

use std::collections::HashMap;

use crate::vclock::{stable_hash_bytes, VClock};

/// Seeds of the stable hashes; changing them changes the wire meaning of digests.
const KEY_HASH_SEED: u64 = 0x6c62_6d6b_765f_6b65;
const VALUE_HASH_SEED: u64 = 0x6c62_6d6b_765f_7661;
const TOMBSTONE_MARK: u64 = 0x7a6f_6d62_6965_2121;

/// Fewest and most digest bits: 64 leaves for a small table (512 bytes), about
/// two entries per leaf as it grows, and never more than 2^20 leaves (8 MiB).
const MIN_DIGEST_BITS: u8 = 6;
const MAX_DIGEST_BITS: u8 = 20;

/// One version of a key: a value or a tombstone, and the clock that orders it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `None` is a tombstone.
    pub value: Option<Box<[u8]>>,
    /// The version's vector clock.
    pub clock: VClock,
}

impl Entry {
    /// Whether this version is a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }
}

/// A stored entry with its cached digest contribution.
#[derive(Clone, Debug)]
struct Slot {
    entry: Entry,
    hash: u64,
}

/// The stable hash of a key, which also picks its digest bucket.
pub fn key_hash(key: &[u8]) -> u64 {
    stable_hash_bytes(KEY_HASH_SEED, key)
}

fn entry_hash(key_hash: u64, entry: &Entry) -> u64 {
    let value_hash = match &entry.value {
        Some(v) => stable_hash_bytes(VALUE_HASH_SEED ^ key_hash, v),
        None => TOMBSTONE_MARK ^ key_hash,
    };
    stable_hash_bytes(value_hash, &entry.clock.stable_hash().to_le_bytes())
}

/// XOR digests over buckets of the key-hash space. XOR makes every update O(1)
/// (remove the old contribution, add the new one) and lets a fine level be folded
/// into any coarser one, so two nodes with different bucket counts still compare.
#[derive(Clone, Debug)]
struct Digest {
    bits: u8,
    leaves: Vec<u64>,
    total: u64,
}

impl Digest {
    fn new(bits: u8) -> Self {
        Digest {
            bits,
            leaves: vec![0; 1 << bits],
            total: 0,
        }
    }

    fn toggle(&mut self, key_hash: u64, hash: u64) {
        let idx = bucket_of(key_hash, self.bits);
        self.leaves[idx] ^= hash;
        self.total ^= hash;
    }
}

/// The bucket of a key hash at a digest level of `bits` bits.
pub fn bucket_of(key_hash: u64, bits: u8) -> usize {
    if bits == 0 {
        0
    } else {
        (key_hash >> (64 - u32::from(bits))) as usize
    }
}

/// Counters reported by `info`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Live (non-deleted) entries.
    pub entries: usize,
    /// Tombstones kept for the merge.
    pub tombstones: usize,
    /// Bytes of live keys and values.
    pub bytes: usize,
}

/// The replica of one table.
#[derive(Debug)]
pub struct TableStore {
    slots: HashMap<Box<[u8]>, Slot>,
    stats: StoreStats,
    digest: Digest,
}

impl Default for TableStore {
    fn default() -> Self {
        Self::new()
    }
}

impl TableStore {
    /// An empty table.
    pub fn new() -> Self {
        TableStore {
            slots: HashMap::new(),
            stats: StoreStats::default(),
            digest: Digest::new(MIN_DIGEST_BITS),
        }
    }

    /// The entry of `key`, tombstones included.
    pub fn entry(&self, key: &[u8]) -> Option<&Entry> {
        self.slots.get(key).map(|s| &s.entry)
    }

    /// The live value of `key`.
    pub fn value(&self, key: &[u8]) -> Option<&[u8]> {
        self.slots.get(key).and_then(|s| s.entry.value.as_deref())
    }

    /// Stores `entry` for `key`, keeping counters and digest current; returns the old entry.
    pub fn insert(&mut self, key: Box<[u8]>, entry: Entry) -> Option<Entry> {
        let kh = key_hash(&key);
        let hash = entry_hash(kh, &entry);
        self.count(&entry, &key, true);
        self.digest.toggle(kh, hash);
        let old = match self.slots.get_mut(&key) {
            Some(slot) => {
                let old = std::mem::replace(slot, Slot { entry, hash });
                Some(old)
            }
            None => {
                self.slots.insert(key.clone(), Slot { entry, hash });
                None
            }
        };
        let old = old.map(|old| {
            self.digest.toggle(kh, old.hash);
            self.count(&old.entry, &key, false);
            old.entry
        });
        self.maybe_grow_digest();
        old
    }

    /// Removes `key` entirely (used by the tombstone purge).
    fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let slot = self.slots.remove(key)?;
        self.digest.toggle(key_hash(key), slot.hash);
        self.count(&slot.entry, key, false);
        Some(slot.entry)
    }

    fn count(&mut self, entry: &Entry, key: &[u8], add: bool) {
        let (entries, tombstones, bytes) = match &entry.value {
            Some(v) => (1, 0, key.len() + v.len()),
            None => (0, 1, 0),
        };
        if add {
            self.stats.entries += entries;
            self.stats.tombstones += tombstones;
            self.stats.bytes += bytes;
        } else {
            self.stats.entries -= entries;
            self.stats.tombstones -= tombstones;
            self.stats.bytes -= bytes;
        }
    }

    fn maybe_grow_digest(&mut self) {
        let wanted = digest_bits_for(self.slots.len());
        if wanted > self.digest.bits {
            let mut digest = Digest::new(wanted);
            for (key, slot) in &self.slots {
                digest.toggle(key_hash(key), slot.hash);
            }
            self.digest = digest;
        }
    }

    /// Live entry count.
    pub fn len(&self) -> usize {
        self.stats.entries
    }

    /// Counters for `info`.
    pub fn stats(&self) -> StoreStats {
        self.stats
    }

    /// Every entry, tombstones included, in no particular order.
    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Entry)> {
        self.slots.iter().map(|(k, s)| (&**k, &s.entry))
    }

    /// Live entries only.
    pub fn live(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.slots
            .iter()
            .filter_map(|(k, s)| s.entry.value.as_deref().map(|v| (&**k, v)))
    }

    /// The digest of the whole table: equal digests mean equal replicas.
    pub fn digest_total(&self) -> u64 {
        self.digest.total
    }

    /// How many bits the stored digest level has.
    pub fn digest_bits(&self) -> u8 {
        self.digest.bits
    }

    /// The digest folded to `bits` bits (at most the stored level).
    pub fn digest_leaves(&self, bits: u8) -> Vec<u64> {
        let bits = bits.min(self.digest.bits);
        let group = 1usize << (self.digest.bits - bits);
        self.digest
            .leaves
            .chunks(group)
            .map(|c| c.iter().fold(0, |a, b| a ^ b))
            .collect()
    }

    /// Every entry whose key falls in one of `buckets` (sorted) at level `bits`.
    pub fn entries_in_buckets(&self, bits: u8, buckets: &[u32]) -> Vec<(Box<[u8]>, Entry)> {
        if buckets.is_empty() {
            return Vec::new();
        }
        self.slots
            .iter()
            .filter(|(k, _)| {
                let b = bucket_of(key_hash(k), bits) as u32;
                buckets.binary_search(&b).is_ok()
            })
            .map(|(k, s)| (k.clone(), s.entry.clone()))
            .collect()
    }

    /// Drops tombstones whose newest dot is older than `cutoff_ms`; returns how many.
    pub fn purge_tombstones(&mut self, cutoff_ms: u64) -> usize {
        let old: Vec<Box<[u8]>> = self
            .slots
            .iter()
            .filter(|(_, s)| {
                s.entry.is_tombstone()
                    && s.entry
                        .clock
                        .newest_dot()
                        .is_none_or(|(_, d)| d.timestamp_ms < cutoff_ms)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &old {
            self.remove(k);
        }
        old.len()
    }
}

fn digest_bits_for(len: usize) -> u8 {
    let per_leaf = 2usize;
    let leaves = (len / per_leaf).max(1);
    let bits = usize::BITS - (leaves - 1).leading_zeros();
    (bits as u8).clamp(MIN_DIGEST_BITS, MAX_DIGEST_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vclock::ActorId;

    fn entry(v: Option<&[u8]>, actor: &ActorId, n: u64) -> Entry {
        let mut clock = VClock::fresh();
        for i in 0..n {
            clock.increment(actor, 1000 + i);
        }
        Entry {
            value: v.map(Box::from),
            clock,
        }
    }

    #[test]
    fn digest_is_independent_of_insertion_order_and_history() {
        let a = ActorId::new("a", 1);
        let mut s1 = TableStore::new();
        let mut s2 = TableStore::new();
        for i in 0..500u32 {
            s1.insert(i.to_be_bytes().into(), entry(Some(b"x"), &a, 1));
        }
        for i in (0..500u32).rev() {
            s2.insert(i.to_be_bytes().into(), entry(Some(b"y"), &a, 3));
            s2.insert(i.to_be_bytes().into(), entry(Some(b"x"), &a, 1));
        }
        assert_eq!(s1.digest_total(), s2.digest_total());
        assert_eq!(s1.digest_bits(), s2.digest_bits());
        assert_eq!(s1.digest_leaves(8), s2.digest_leaves(8));
        assert_eq!(s1.len(), 500);
    }

    #[test]
    fn digest_differs_in_exactly_the_changed_bucket() {
        let a = ActorId::new("a", 1);
        let mut s1 = TableStore::new();
        for i in 0..1000u32 {
            s1.insert(i.to_be_bytes().into(), entry(Some(b"v"), &a, 1));
        }
        let mut s2 = TableStore::new();
        for (k, e) in s1.iter() {
            s2.insert(k.into(), e.clone());
        }
        let key: Box<[u8]> = 7u32.to_be_bytes().into();
        s2.insert(key.clone(), entry(Some(b"w"), &a, 2));
        let bits = s1.digest_bits();
        let (l1, l2) = (s1.digest_leaves(bits), s2.digest_leaves(bits));
        let differing: Vec<usize> = (0..l1.len()).filter(|&i| l1[i] != l2[i]).collect();
        assert_eq!(differing, vec![bucket_of(key_hash(&key), bits)]);
        let found = s2.entries_in_buckets(bits, &[differing[0] as u32]);
        assert!(found.iter().any(|(k, _)| *k == key));
    }

    #[test]
    fn stats_track_live_entries_tombstones_and_bytes() {
        let a = ActorId::new("a", 1);
        let mut s = TableStore::new();
        s.insert(b"k1".as_slice().into(), entry(Some(b"abc"), &a, 1));
        s.insert(b"k2".as_slice().into(), entry(Some(b"de"), &a, 1));
        s.insert(b"k1".as_slice().into(), entry(None, &a, 2));
        assert_eq!(
            s.stats(),
            StoreStats {
                entries: 1,
                tombstones: 1,
                bytes: 4
            }
        );
        assert_eq!(s.purge_tombstones(u64::MAX), 1);
        assert_eq!(s.stats().tombstones, 0);
        assert!(s.entry(b"k1").is_none());
    }

    #[test]
    fn folding_a_finer_digest_gives_the_coarser_one() {
        let a = ActorId::new("a", 1);
        let mut s = TableStore::new();
        for i in 0..5000u32 {
            s.insert(i.to_be_bytes().into(), entry(Some(b"v"), &a, 1));
        }
        assert!(s.digest_bits() > MIN_DIGEST_BITS);
        let coarse = s.digest_leaves(MIN_DIGEST_BITS);
        assert_eq!(coarse.len(), 1 << MIN_DIGEST_BITS);
        assert_eq!(coarse.iter().fold(0, |a, b| a ^ b), s.digest_total());
    }
}
