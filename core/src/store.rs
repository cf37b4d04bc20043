//! The in-memory replica of one table: entries (values or tombstones with their
//! clocks) and an incremental digest that the merge engine compares between nodes.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::ptr::NonNull;
use std::sync::Arc;

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::hash::stable_hash_bytes;
use crate::vclock::{stable_hash_of_dots, ActorId, Dot, VClock};
use crate::watch::{Cause, Change, Watch, Watchers};
use crate::wire::{PackedEntries, WireEntry};

/// Seeds of the stable hashes; changing them changes the wire meaning of digests.
const KEY_HASH_SEED: u64 = 0x6c62_6d6b_765f_6b65;
const VALUE_HASH_SEED: u64 = 0x6c62_6d6b_765f_7661;
const TOMBSTONE_MARK: u64 = 0x7a6f_6d62_6965_2121;

/// Fewest and most digest bits: 64 leaves for a small table (512 bytes), about
/// four entries per leaf as it grows, and never more than 2^20 leaves (8 MiB).
const MIN_DIGEST_BITS: u8 = 6;
const MAX_DIGEST_BITS: u8 = 20;

/// One version of a key: a value or a tombstone, and the clock that orders it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// `None` is a tombstone.
    pub value: Option<Box<[u8]>>,
    /// The version's clock.
    pub clock: VClock,
    /// When the value expires, in milliseconds since the Unix epoch (`None`:
    /// never). Set by the sequencer that wrote the version, replicated and
    /// merged with it.
    pub deadline_ms: Option<u64>,
}

impl Entry {
    /// Whether this is a value whose deadline is at or before `now_ms`:
    /// reads hide it, and the sequencer deletes it.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.value.is_some() && self.deadline_ms.is_some_and(|d| d <= now_ms)
    }

    /// Whether this is a tombstone past its retention (newest dot before
    /// `cutoff_ms`): purged where it is found, and treated as absent everywhere
    /// until then, so a purge is never undone by a copy that survives elsewhere.
    pub fn is_expired_tombstone(&self, cutoff_ms: u64) -> bool {
        self.value.is_none()
            && self
                .clock
                .newest_dot()
                .is_none_or(|(_, dot)| dot.timestamp_ms < cutoff_ms)
    }
}

/// The stable hash of a key, which also picks its digest bucket.
pub fn key_hash(key: &[u8]) -> u64 {
    stable_hash_bytes(KEY_HASH_SEED, key)
}

fn entry_hash(key_hash: u64, value: Option<&[u8]>, clock_hash: u64) -> u64 {
    let value_hash = match value {
        Some(v) => stable_hash_bytes(VALUE_HASH_SEED ^ key_hash, v),
        None => TOMBSTONE_MARK ^ key_hash,
    };
    stable_hash_bytes(value_hash, &clock_hash.to_le_bytes())
}

/// One stored version in a single heap block behind a thin pointer, so that an
/// entry costs one allocation and eight bytes of hash table:
/// `key_len: u32 | value_len: u32 (u32::MAX = tombstone) | dots: u16 |
/// [deadline: u64] | dots × (actor: u32, counter: u64, timestamp: u64) | key |
/// value`, integers little-endian, actors as indexes into the table's actor
/// list. The top bit of `dots` says whether the deadline is there, so an
/// entry without one costs nothing more.
///
/// The pointer carries the top [`TAG_BITS`] bits of the key's hash in its
/// unused bits (the top ones: user-space addresses fit in 48 bits; the low
/// ones: blocks are aligned), so that a merge finds the entries of a digest
/// bucket by going through the hash table alone, touching only the blocks
/// whose tag matches.
struct Packed {
    tagged: NonNull<u8>,
}

/// Bits of the key hash a block pointer carries in its top bits: where
/// user-space addresses are known to fit in 48 bits (Linux gives a process
/// addresses above that only when it asks for them by a hint, which
/// allocators do not), else none.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]
const HIGH_TAG_BITS: u32 = 16;
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
const HIGH_TAG_BITS: u32 = 0;
/// Bits of the key hash a block pointer carries in its low bits, which
/// the blocks' alignment keeps free.
const LOW_TAG_BITS: u32 = 4;
const BLOCK_ALIGN: usize = 1 << LOW_TAG_BITS;
/// Bits of the key hash a block pointer carries.
const TAG_BITS: u8 = (HIGH_TAG_BITS + LOW_TAG_BITS) as u8;
/// The address bits of a tagged pointer.
const ADDRESS_BITS: u32 = usize::BITS - HIGH_TAG_BITS;
const ADDRESS_MASK: usize = (usize::MAX >> HIGH_TAG_BITS) & !(BLOCK_ALIGN - 1);

/// Puts the top bits of `key_hash` into the unused bits of `block`.
fn tag(block: NonNull<u8>, key_hash: u64, layout: Layout) -> Packed {
    if block.as_ptr().addr() & !ADDRESS_MASK != 0 {
        // Cannot happen with the allocators of the targets that use the top
        // bits, nor with an aligned block; storing the block would lose part
        // of its address.
        tracing::error!("the allocator returned an address above 48 bits or unaligned");
        handle_alloc_error(layout)
    }
    let tag = (key_hash >> 1 >> (63 - u32::from(TAG_BITS))) as usize;
    let high = (tag >> LOW_TAG_BITS).checked_shl(ADDRESS_BITS).unwrap_or(0);
    let tagged = block
        .as_ptr()
        .map_addr(|a| a | high | (tag & (BLOCK_ALIGN - 1)));
    Packed {
        tagged: NonNull::new(tagged).unwrap_or(block),
    }
}

// SAFETY: a Packed owns its block exclusively, like a Box<[u8]>: nothing else
// points into it, so moving it to another thread moves the only access.
unsafe impl Send for Packed {}
// SAFETY: a shared Packed only ever reads its block (every write happens on
// construction, before it is shared), so concurrent `&Packed` are sound.
unsafe impl Sync for Packed {}

const HEADER: usize = 10;
const DOT_SIZE: usize = 20;
const TOMBSTONE_LEN: u32 = u32::MAX;
/// The bit of the dot count that says a deadline follows the header.
const HAS_DEADLINE: u16 = 0x8000;
/// Most dots a block stores; clocks are pruned far below that.
const MAX_DOTS: usize = 0x7fff;
const DEADLINE_SIZE: usize = 8;

impl Packed {
    /// A block of `key` (whose hash is `key_hash`) and the rest.
    fn new(
        (key, key_hash): (&[u8], u64),
        value: Option<&[u8]>,
        dots: &[(u32, Dot)],
        deadline: Option<u64>,
    ) -> Packed {
        let extra = if deadline.is_some() { DEADLINE_SIZE } else { 0 };
        let len = HEADER + extra + dots.len() * DOT_SIZE + key.len() + value.map_or(0, <[u8]>::len);
        let layout = block_layout(len);
        // SAFETY: the layout has a non-zero size (HEADER > 0).
        let raw = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            handle_alloc_error(layout)
        };
        // SAFETY: `ptr` points to `len` freshly allocated bytes that nothing else refers to.
        let buf = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), len) };
        buf[0..4].copy_from_slice(&(key.len() as u32).to_le_bytes());
        let vlen = value.map_or(TOMBSTONE_LEN, |v| v.len() as u32);
        buf[4..8].copy_from_slice(&vlen.to_le_bytes());
        let flag = if deadline.is_some() { HAS_DEADLINE } else { 0 };
        buf[8..10].copy_from_slice(&(dots.len() as u16 | flag).to_le_bytes());
        let mut at = HEADER;
        if let Some(d) = deadline {
            buf[at..at + DEADLINE_SIZE].copy_from_slice(&d.to_le_bytes());
            at += DEADLINE_SIZE;
        }
        for (actor, dot) in dots {
            buf[at..at + 4].copy_from_slice(&actor.to_le_bytes());
            buf[at + 4..at + 12].copy_from_slice(&dot.counter.to_le_bytes());
            buf[at + 12..at + 20].copy_from_slice(&dot.timestamp_ms.to_le_bytes());
            at += DOT_SIZE;
        }
        buf[at..at + key.len()].copy_from_slice(key);
        if let Some(v) = value {
            buf[at + key.len()..].copy_from_slice(v);
        }
        tag(ptr, key_hash, layout)
    }

    /// A block holding a copy of `bytes` (a whole block, checked) of a key
    /// whose hash is `key_hash`.
    fn copy_of(bytes: &[u8], key_hash: u64) -> Packed {
        let layout = block_layout(bytes.len());
        // SAFETY: the layout has a non-zero size (every block has a header).
        let raw = unsafe { alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            handle_alloc_error(layout)
        };
        // SAFETY: `ptr` points to `bytes.len()` freshly allocated bytes that
        // nothing else refers to, and `bytes` cannot overlap them.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr(), bytes.len()) };
        tag(ptr, key_hash, layout)
    }

    /// The block's address, without the tag.
    fn ptr(&self) -> *mut u8 {
        self.tagged.as_ptr().map_addr(|a| a & ADDRESS_MASK)
    }

    /// The top [`TAG_BITS`] bits of the key's hash.
    fn key_hash_prefix(&self) -> usize {
        let a = self.tagged.as_ptr().addr();
        let high = a.checked_shr(ADDRESS_BITS).unwrap_or(0);
        high << LOW_TAG_BITS | (a & (BLOCK_ALIGN - 1))
    }

    fn raw_header(&self) -> &[u8] {
        // SAFETY: every block starts with HEADER initialized bytes.
        unsafe { std::slice::from_raw_parts(self.ptr(), HEADER) }
    }

    /// Key length, value length (`None`: tombstone), dot count, and where
    /// the dots start.
    fn header(&self) -> (usize, Option<usize>, usize, usize) {
        parse_header(self.raw_header())
    }

    fn len(&self) -> usize {
        let (k, v, d, start) = self.header();
        start + d * DOT_SIZE + k + v.unwrap_or(0)
    }

    /// The deadline, if the version has one.
    fn deadline(&self) -> Option<u64> {
        let h = self.raw_header();
        if u16::from_le_bytes([h[8], h[9]]) & HAS_DEADLINE == 0 {
            return None;
        }
        // SAFETY: a block with the flag holds the deadline right after the header.
        let d = unsafe { std::slice::from_raw_parts(self.ptr().add(HEADER), DEADLINE_SIZE) };
        let mut x = [0u8; 8];
        x.copy_from_slice(d);
        Some(u64::from_le_bytes(x))
    }

    /// The value, unless it is past its deadline at `now_ms` (asked only
    /// for a version that has one).
    fn visible_value(&self, now_ms: impl FnOnce() -> u64) -> Option<&[u8]> {
        let v = self.value()?;
        match self.deadline() {
            Some(d) if d <= now_ms() => None,
            _ => Some(v),
        }
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: the block holds exactly `len()` initialized bytes, owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len()) }
    }

    /// The block, to write to before it is stored (a copy being adapted).
    fn bytes_mut(&mut self) -> &mut [u8] {
        let len = self.len();
        // SAFETY: the block holds exactly `len()` initialized bytes, owned by
        // self, and `&mut self` is the only access to them.
        unsafe { std::slice::from_raw_parts_mut(self.ptr(), len) }
    }

    fn key(&self) -> &[u8] {
        let (k, _, d, start) = self.header();
        let at = start + d * DOT_SIZE;
        &self.bytes()[at..at + k]
    }

    fn value(&self) -> Option<&[u8]> {
        let (k, v, d, start) = self.header();
        let at = start + d * DOT_SIZE + k;
        v.map(|v| &self.bytes()[at..at + v])
    }

    fn dots(&self) -> impl ExactSizeIterator<Item = (u32, Dot)> + '_ {
        let (_, _, d, start) = self.header();
        let bytes = self.bytes();
        (0..d).map(move |i| dot_at(bytes, start + i * DOT_SIZE))
    }

    fn newest_timestamp(&self) -> Option<u64> {
        self.dots().map(|(_, d)| d.timestamp_ms).max()
    }
}

fn block_layout(len: usize) -> Layout {
    match Layout::from_size_align(len, BLOCK_ALIGN) {
        Ok(l) => l,
        // Only sizes above isize::MAX fail, which no key or value limit allows.
        Err(_) => handle_alloc_error(Layout::new::<u8>()),
    }
}

impl Drop for Packed {
    fn drop(&mut self) {
        let layout = block_layout(self.len());
        // SAFETY: allocated in `Packed::new` with this very layout.
        unsafe { dealloc(self.ptr(), layout) }
    }
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

/// A stored entry copied out of a table with the hashes a merge compares:
/// later writes to the table leave it as it was.
pub struct SnapshotEntry {
    /// [`key_hash`] of the key.
    pub key_hash: u64,
    /// The entry's contribution to the digest.
    pub entry_hash: u64,
    block: Packed,
}

impl SnapshotEntry {
    /// The key.
    #[cfg(test)]
    pub fn key(&self) -> &[u8] {
        self.block.key()
    }

    /// The entry's block, as [`PackedEntries`] carries it.
    pub fn block(&self) -> &[u8] {
        self.block.bytes()
    }
}

/// One block of a peer's [`PackedEntries`], checked to be whole and to name
/// only actors the message lists.
pub struct IncomingBlock<'a> {
    bytes: &'a [u8],
    key_len: usize,
    value_len: Option<usize>,
    dots: usize,
    /// Where the dots start (after the header and the deadline, if any).
    start: usize,
}

impl<'a> IncomingBlock<'a> {
    /// The key.
    pub fn key(&self) -> &'a [u8] {
        let at = self.start + self.dots * DOT_SIZE;
        &self.bytes[at..at + self.key_len]
    }

    fn value(&self) -> Option<&'a [u8]> {
        let at = self.start + self.dots * DOT_SIZE + self.key_len;
        self.value_len.map(|v| &self.bytes[at..at + v])
    }

    fn deadline(&self) -> Option<u64> {
        (self.start > HEADER).then(|| u64_at(self.bytes, HEADER))
    }

    /// The dots, their actors as indexes into the message's list.
    fn dots(&self) -> impl Iterator<Item = (u32, Dot)> + 'a {
        let (bytes, start) = (self.bytes, self.start);
        (0..self.dots).map(move |i| dot_at(bytes, start + i * DOT_SIZE))
    }

    /// The entry as a merge compares it, its actors taken from `actors`.
    pub fn to_wire(&self, actors: &[ActorId]) -> WireEntry {
        let dots = self
            .dots()
            .filter_map(|(a, d)| actors.get(a as usize).map(|actor| (actor.clone(), d)));
        WireEntry {
            key: self.key().to_vec(),
            value: self.value().map(<[u8]>::to_vec),
            clock: VClock::from_dots(dots),
            deadline_ms: self.deadline(),
        }
    }
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Key length, value length (`None`: tombstone), dot count, and where the
/// dots start, from a block's first [`HEADER`] bytes.
fn parse_header(h: &[u8]) -> (usize, Option<usize>, usize, usize) {
    let key_len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
    let vlen = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    let count = u16::from_le_bytes([h[8], h[9]]);
    let dots = usize::from(count & !HAS_DEADLINE);
    let start = if count & HAS_DEADLINE != 0 {
        HEADER + DEADLINE_SIZE
    } else {
        HEADER
    };
    let value_len = (vlen != TOMBSTONE_LEN).then_some(vlen as usize);
    (key_len, value_len, dots, start)
}

/// The dot at `at`: its actor index and the dot.
fn dot_at(bytes: &[u8], at: usize) -> (u32, Dot) {
    (
        u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]),
        Dot {
            counter: u64_at(bytes, at + 4),
            timestamp_ms: u64_at(bytes, at + 12),
        },
    )
}

/// Cuts `entries` into its blocks; fails when one is cut short, claims more
/// dots than a block may hold, or names an actor the message does not list.
pub fn incoming_blocks(entries: &PackedEntries) -> Result<Vec<IncomingBlock<'_>>, &'static str> {
    let mut out = Vec::new();
    let mut rest = &entries.blocks[..];
    while !rest.is_empty() {
        if rest.len() < HEADER {
            return Err("a block is cut short");
        }
        let (key_len, value_len, dots, start) = parse_header(rest);
        let len = start + dots * DOT_SIZE + key_len + value_len.unwrap_or(0);
        if dots > MAX_DOTS || rest.len() < len {
            return Err("a block is cut short");
        }
        let block = IncomingBlock {
            bytes: &rest[..len],
            key_len,
            value_len,
            dots,
            start,
        };
        if block
            .dots()
            .any(|(a, _)| a as usize >= entries.actors.len())
        {
            return Err("a dot names an actor the message does not list");
        }
        out.push(block);
        rest = &rest[len..];
    }
    Ok(out)
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
pub struct TableStore {
    slots: HashTable<Packed>,
    hasher: DefaultHashBuilder,
    actors: Vec<ActorId>,
    actor_index: HashMap<ActorId, u32>,
    stats: StoreStats,
    digest: Digest,
    /// Per actor (by index), the largest counter of any version this replica
    /// dropped: purged tombstones, and versions the sequencer took back (see
    /// [`TableStore::take_back`]). The actor's next version of any key starts
    /// above it, so it supersedes a copy of a dropped version that survives
    /// elsewhere and never reuses its dot for other contents.
    dropped_counters: HashMap<u32, u64>,
    /// The open watches of the table.
    watchers: Watchers,
    /// The deadlines of the versions that have one, earliest first; an
    /// item whose key moved on is dropped when it comes up.
    deadlines: BinaryHeap<Reverse<(u64, Box<[u8]>)>>,
    /// Woken when a deadline earlier than every other is stored.
    expiry_wake: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for TableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableStore")
            .field("stats", &self.stats)
            .finish()
    }
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
            slots: HashTable::new(),
            hasher: DefaultHashBuilder::default(),
            actors: Vec::new(),
            actor_index: HashMap::new(),
            stats: StoreStats::default(),
            digest: Digest::new(MIN_DIGEST_BITS),
            dropped_counters: HashMap::new(),
            watchers: Watchers::default(),
            deadlines: BinaryHeap::new(),
            expiry_wake: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Opens a watch of the keys starting with `prefix` (see [`crate::watch`]).
    pub fn watch(&mut self, table: &Arc<str>, prefix: &[u8], buffer: usize) -> Watch {
        self.watchers.open(table, prefix, buffer)
    }

    /// Ends every watch of the table (the node is closing).
    pub fn close_watches(&mut self) {
        self.watchers.close_all();
    }

    /// What the table's expiry task waits on: woken when an earlier
    /// deadline is stored.
    pub fn expiry_wake(&self) -> Arc<tokio::sync::Notify> {
        self.expiry_wake.clone()
    }

    /// The earliest deadline stored (possibly of a key that moved on since).
    pub fn next_deadline(&self) -> Option<u64> {
        self.deadlines.peek().map(|Reverse((d, _))| *d)
    }

    /// The keys whose live value is past its deadline at `now_ms` (at most
    /// `limit`). Deadlines of keys that moved on are forgotten; the others
    /// stay until the key's delete is stored.
    pub fn due(&mut self, now_ms: u64, limit: usize) -> Vec<Vec<u8>> {
        let mut keep = Vec::new();
        let mut due = Vec::new();
        while let Some(Reverse((d, _))) = self.deadlines.peek() {
            if *d > now_ms || due.len() >= limit {
                break;
            }
            let Some(Reverse((d, key))) = self.deadlines.pop() else {
                break;
            };
            let holds = self
                .find(&key)
                .is_some_and(|p| p.value().is_some() && p.deadline() == Some(d));
            if holds {
                due.push(key.to_vec());
                keep.push(Reverse((d, key)));
            }
        }
        self.deadlines.extend(keep);
        due
    }

    /// The clock `actor`'s next version of a key starts from: the key's
    /// `current` one (`None` for a key with no entry), with `actor`'s counter
    /// raised to the largest it had in any version this replica dropped.
    pub fn base_clock(&self, current: Option<&VClock>, actor: &ActorId) -> VClock {
        let mut clock = current.cloned().unwrap_or_else(VClock::fresh);
        let floor = self
            .actor_index
            .get(actor)
            .and_then(|i| self.dropped_counters.get(i))
            .copied();
        if let Some(counter) = floor.filter(|c| *c > clock.counter(actor)) {
            let dot = Dot {
                counter,
                timestamp_ms: clock.timestamp(actor).unwrap_or(0),
            };
            clock.merge_from(&VClock::from_dots([(actor.clone(), dot)]));
        }
        clock
    }

    fn find(&self, key: &[u8]) -> Option<&Packed> {
        let h = self.hasher.hash_one(key);
        self.slots.find(h, |p| p.key() == key)
    }

    fn decode_clock(&self, p: &Packed) -> VClock {
        VClock::from_dots(
            p.dots()
                .filter_map(|(a, d)| self.actors.get(a as usize).map(|actor| (actor.clone(), d))),
        )
    }

    fn decode(&self, p: &Packed) -> Entry {
        Entry {
            value: p.value().map(Box::from),
            clock: self.decode_clock(p),
            deadline_ms: p.deadline(),
        }
    }

    /// The digest contribution of a stored entry, computed from its block.
    fn packed_hash(&self, key_hash: u64, p: &Packed) -> u64 {
        let unknown = ActorId::new("", 0);
        let clock_hash = stable_hash_of_dots(
            p.dots()
                .map(|(a, d)| (self.actors.get(a as usize).unwrap_or(&unknown), d)),
        );
        entry_hash(key_hash, p.value(), clock_hash)
    }

    fn intern(&mut self, actor: &ActorId) -> u32 {
        // Most dots of a table come from the same few actors: check the last one first.
        if let Some(last) = self.actors.last() {
            if Arc::ptr_eq(&last.name, &actor.name) && last.incarnation == actor.incarnation {
                return (self.actors.len() - 1) as u32;
            }
        }
        if let Some(&i) = self.actor_index.get(actor) {
            return i;
        }
        let i = self.actors.len() as u32;
        self.actors.push(actor.clone());
        self.actor_index.insert(actor.clone(), i);
        i
    }

    /// The entry of `key`, tombstones included.
    pub fn entry(&self, key: &[u8]) -> Option<Entry> {
        self.find(key).map(|p| self.decode(p))
    }

    /// The live value of `key`, past its deadline or not.
    pub fn value(&self, key: &[u8]) -> Option<&[u8]> {
        self.find(key).and_then(Packed::value)
    }

    /// The live value of `key` unless it is past its deadline; `now_ms` is
    /// asked only for a value that has one.
    pub fn visible(&self, key: &[u8], now_ms: impl FnOnce() -> u64) -> Option<&[u8]> {
        self.find(key).and_then(|p| p.visible_value(now_ms))
    }

    /// The deadline of `key`'s live value, if it has one.
    pub fn deadline(&self, key: &[u8]) -> Option<u64> {
        self.find(key)
            .filter(|p| p.value().is_some())
            .and_then(Packed::deadline)
    }

    /// The clock of `key`'s entry, tombstones included.
    pub fn clock(&self, key: &[u8]) -> Option<VClock> {
        self.find(key).map(|p| self.decode_clock(p))
    }

    /// Stores a version of `key` (with its deadline, if any), keeping
    /// counters, digest and deadlines current, and reports it to the
    /// table's watches with `cause`; returns the old live value (`None` when
    /// absent or deleted).
    pub fn insert(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        clock: &VClock,
        deadline: Option<u64>,
        cause: Cause,
    ) -> Option<Box<[u8]>> {
        let mut dots: Vec<(u32, Dot)> = clock
            .dots()
            .iter()
            .map(|(a, d)| (self.intern(a), *d))
            .collect();
        dots.truncate(MAX_DOTS);
        // A tombstone never expires.
        let deadline = deadline.filter(|_| value.is_some());
        let kh = key_hash(key);
        let hash = entry_hash(kh, value, clock.stable_hash());
        let packed = Packed::new((key, kh), value, &dots, deadline);
        self.count(value, key.len(), true);
        self.digest.toggle(kh, hash);
        let h = self.hasher.hash_one(key);
        let old = match self.slots.find_mut(h, |p| p.key() == key) {
            Some(slot) => Some(std::mem::replace(slot, packed)),
            None => {
                let hasher = &self.hasher;
                self.slots
                    .insert_unique(h, packed, |p| hasher.hash_one(p.key()));
                None
            }
        };
        let old = old.and_then(|old| {
            self.digest.toggle(kh, self.packed_hash(kh, &old));
            self.count(old.value(), key.len(), false);
            old.value().map(Box::from)
        });
        self.maybe_grow_digest();
        if let Some(d) = deadline {
            if self.next_deadline().is_none_or(|first| d < first) {
                self.expiry_wake.notify_one();
            }
            self.deadlines.push(Reverse((d, key.into())));
        }
        if !self.watchers.is_empty() {
            self.report(key, value, old.as_deref(), clock, cause);
        }
        old
    }

    /// Tells the table's watches that `key` went from `prev` to `value`
    /// (both absent: nothing to tell).
    #[cold]
    fn report(
        &mut self,
        key: &[u8],
        value: Option<&[u8]>,
        prev: Option<&[u8]>,
        clock: &VClock,
        cause: Cause,
    ) {
        if (value.is_none() && prev.is_none()) || !self.watchers.wants(key) {
            return;
        }
        // A merge that only joined the clocks of one value changes nothing visible.
        if cause == Cause::Merge && value == prev {
            return;
        }
        let change = Change {
            table: self.watchers.table().to_string(),
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
            prev: prev.map(<[u8]>::to_vec),
            cause,
            node: clock
                .newest_dot()
                .map(|(a, _)| a.name.to_string())
                .unwrap_or_default(),
        };
        self.watchers.publish(change);
    }

    fn count(&mut self, value: Option<&[u8]>, key_len: usize, add: bool) {
        let (entries, tombstones, bytes) = match value {
            Some(v) => (1, 0, key_len + v.len()),
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

    /// Makes room for `additional` more keys at once (a merge chunk), so the
    /// hash table and the digest grow once instead of step by step.
    pub fn reserve(&mut self, additional: usize) {
        let hasher = &self.hasher;
        self.slots.reserve(additional, |p| hasher.hash_one(p.key()));
        self.grow_digest_for(self.slots.len() + additional);
    }

    /// Makes room for a peer's `count` entries, when this table is empty (a
    /// join: all of them are coming), as their first chunk arrives. Bounded,
    /// so that a count that lies costs no more than a large table would.
    pub fn make_room_when_empty(&mut self, count: u64) {
        const MOST: u64 = 1 << 22;
        if self.slots.is_empty() && count > 0 {
            self.reserve(count.min(MOST) as usize);
        }
    }

    fn maybe_grow_digest(&mut self) {
        self.grow_digest_for(self.slots.len());
    }

    fn grow_digest_for(&mut self, len: usize) {
        let wanted = digest_bits_for(len);
        if wanted > self.digest.bits {
            let mut digest = Digest::new(wanted);
            for p in self.slots.iter() {
                let kh = key_hash(p.key());
                digest.toggle(kh, self.packed_hash(kh, p));
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
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Entry)> {
        self.slots.iter().map(|p| (p.key(), self.decode(p)))
    }

    /// Live entries not past their deadline at `now_ms`.
    pub fn visible_entries(&self, now_ms: u64) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.slots
            .iter()
            .filter_map(move |p| p.visible_value(|| now_ms).map(|v| (p.key(), v)))
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

    /// The digests of `buckets` at level `bits` (at most the stored level);
    /// out-of-range buckets count as empty.
    pub fn digest_buckets(&self, bits: u8, buckets: &[u32]) -> Vec<u64> {
        let bits = bits.min(self.digest.bits);
        let group = 1usize << (self.digest.bits - bits);
        buckets
            .iter()
            .map(|&b| {
                let start = b as usize * group;
                self.digest
                    .leaves
                    .get(start..start + group)
                    .map_or(0, |c| c.iter().fold(0, |a, x| a ^ x))
            })
            .collect()
    }

    /// The table's actors, which the dots of its blocks name by index (the
    /// list only grows, so an index stays valid).
    pub fn actors(&self) -> &[ActorId] {
        &self.actors
    }

    /// Every entry whose key falls in one of `buckets` at level `bits`: the
    /// blocks of the buckets `whole` picks go to `send` (entries sent whole
    /// need no hash); the others come back as snapshots with their hashes.
    pub fn entries_in_buckets(
        &self,
        bits: u8,
        buckets: &[u32],
        whole: impl Fn(u32) -> bool,
        mut send: impl FnMut(&[u8]),
    ) -> Vec<SnapshotEntry> {
        if buckets.is_empty() {
            return Vec::new();
        }
        if buckets.len() == 1 << bits && (0..buckets.len() as u32).all(&whole) {
            // Everything goes whole (the peer's table is empty: a join), so no
            // key needs hashing to find its bucket.
            self.slots.iter().for_each(|p| send(p.bytes()));
            return Vec::new();
        }
        // One bit per bucket of the level: a test per entry instead of a search.
        let mut wanted = vec![0u64; ((1usize << bits) / 64).max(1)];
        for &b in buckets {
            if let Some(w) = wanted.get_mut(b as usize / 64) {
                *w |= 1 << (b % 64);
            }
        }
        // The same for the key-hash prefixes the block pointers carry: a
        // block whose prefix is in no wanted bucket is not looked at.
        let mut prefixes = vec![0u64; ((1usize << TAG_BITS) / 64).max(1)];
        let shift = u32::from(TAG_BITS.abs_diff(bits));
        for &b in buckets {
            let (first, last) = if bits >= TAG_BITS {
                (b >> shift, b >> shift)
            } else {
                (b << shift, ((b + 1) << shift) - 1)
            };
            for x in first..=last {
                if let Some(w) = prefixes.get_mut(x as usize / 64) {
                    *w |= 1 << (x % 64);
                }
            }
        }
        let mut out = Vec::new();
        for p in self.slots.iter() {
            let x = p.key_hash_prefix();
            if prefixes
                .get(x / 64)
                .is_none_or(|w| w & (1 << (x % 64)) == 0)
            {
                continue;
            }
            let kh = key_hash(p.key());
            let b = bucket_of(kh, bits);
            if wanted.get(b / 64).is_none_or(|w| w & (1 << (b % 64)) == 0) {
                continue;
            }
            if whole(b as u32) {
                send(p.bytes());
            } else {
                out.push(SnapshotEntry {
                    key_hash: kh,
                    entry_hash: self.packed_hash(kh, p),
                    block: Packed::copy_of(p.bytes(), kh),
                });
            }
        }
        out
    }

    /// Stores a peer's block as it is when this table has no entry of its
    /// key, nothing else needs to see it (no watch is open) and it is a
    /// plain value (no deadline, dots in order); returns whether it did.
    /// `actor_map` maps the message's actor indexes to this table's (see
    /// [`TableStore::intern_all`]). The others go through the merge rule.
    pub fn insert_new_block(&mut self, block: &IncomingBlock<'_>, actor_map: &[u32]) -> bool {
        let plain = block.value_len.is_some() && block.deadline().is_none() && block.dots > 0;
        if !plain || !self.watchers.is_empty() {
            return false;
        }
        let key = block.key();
        let h = self.hasher.hash_one(key);
        if self.slots.find(h, |p| p.key() == key).is_some() {
            return false;
        }
        let kh = key_hash(key);
        let mut packed = Packed::copy_of(block.bytes, kh);
        let mut previous: Option<&ActorId> = None;
        for (i, (a, _)) in block.dots().enumerate() {
            let Some(&local) = actor_map.get(a as usize) else {
                return false;
            };
            let Some(actor) = self.actors.get(local as usize) else {
                return false;
            };
            // Clocks keep one dot per actor, in actor order: anything else
            // goes through the merge rule, which builds the clock anew.
            if previous.is_some_and(|p| crate::vclock::cmp_actor(p, actor).is_ge()) {
                return false;
            }
            previous = Some(actor);
            let at = block.start + i * DOT_SIZE;
            packed.bytes_mut()[at..at + 4].copy_from_slice(&local.to_le_bytes());
        }
        let hash = self.packed_hash(kh, &packed);
        self.count(block.value(), key.len(), true);
        self.digest.toggle(kh, hash);
        let hasher = &self.hasher;
        self.slots
            .insert_unique(h, packed, |p| hasher.hash_one(p.key()));
        self.maybe_grow_digest();
        true
    }

    /// This table's index of each of `actors`, added when missing.
    pub fn intern_all(&mut self, actors: &[ActorId]) -> Vec<u32> {
        actors.iter().map(|a| self.intern(a)).collect()
    }

    /// How many entries the table holds, tombstones included.
    pub fn stored(&self) -> usize {
        self.slots.len()
    }

    /// Drops tombstones whose newest dot is older than `cutoff_ms`; returns how many.
    pub fn purge_tombstones(&mut self, cutoff_ms: u64) -> usize {
        let old: Vec<Box<[u8]>> = self
            .slots
            .iter()
            .filter(|p| p.value().is_none() && p.newest_timestamp().is_none_or(|t| t < cutoff_ms))
            .map(|p| Box::from(p.key()))
            .collect();
        for key in &old {
            self.remove(key);
        }
        old.len()
    }

    /// Puts back what a version the sequencer wrote replaced (`previous`, or
    /// no entry), unless the key moved on since (its clock is no longer
    /// `written`). Either way the written version's counters count as
    /// dropped, so that no later version reuses its dot. Returns whether it
    /// put the previous version back. Watches see the restore as a
    /// [`Cause::Replicated`] change back to the previous value.
    pub fn take_back(&mut self, key: &[u8], written: &VClock, previous: Option<&Entry>) -> bool {
        let holds = self.clock(key).is_some_and(|c| c.equal(written));
        if holds {
            match previous {
                Some(e) => {
                    self.insert(
                        key,
                        e.value.as_deref(),
                        &e.clock,
                        e.deadline_ms,
                        Cause::Replicated,
                    );
                }
                None => {
                    let prev = self.value(key).map(<[u8]>::to_vec);
                    self.remove(key);
                    if !self.watchers.is_empty() {
                        self.report(key, None, prev.as_deref(), written, Cause::Replicated);
                    }
                }
            }
        }
        for (actor, dot) in written.dots() {
            let i = self.intern(actor);
            self.raise_dropped(i, dot.counter);
        }
        holds
    }

    /// Removes `key`'s entry, keeping its counters as dropped.
    fn remove(&mut self, key: &[u8]) {
        let h = self.hasher.hash_one(key);
        if let Ok(slot) = self.slots.find_entry(h, |p| p.key() == key) {
            let (removed, _) = slot.remove();
            for (actor, dot) in removed.dots() {
                self.raise_dropped(actor, dot.counter);
            }
            let kh = key_hash(key);
            self.digest.toggle(kh, self.packed_hash(kh, &removed));
            self.count(removed.value(), key.len(), false);
        }
    }

    fn raise_dropped(&mut self, actor: u32, counter: u64) {
        let floor = self.dropped_counters.entry(actor).or_insert(0);
        *floor = (*floor).max(counter);
    }
}

fn digest_bits_for(len: usize) -> u8 {
    let per_leaf = 4usize;
    let leaves = (len / per_leaf).max(1);
    let bits = usize::BITS - (leaves - 1).leading_zeros();
    (bits as u8).clamp(MIN_DIGEST_BITS, MAX_DIGEST_BITS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &mut TableStore, key: &[u8], e: Entry) -> Option<Box<[u8]>> {
        s.insert(key, e.value.as_deref(), &e.clock, None, Cause::Replicated)
    }

    fn entry(v: Option<&[u8]>, actor: &ActorId, n: u64) -> Entry {
        let mut clock = VClock::fresh();
        for i in 0..n {
            clock.increment(actor, 1000 + i);
        }
        Entry {
            value: v.map(Box::from),
            clock,
            deadline_ms: None,
        }
    }

    /// The sequencer's next version of `key` after `base_clock`.
    fn next_version(s: &TableStore, key: &[u8], actor: &ActorId) -> VClock {
        let mut clock = s.base_clock(s.clock(key).as_ref(), actor);
        clock.increment(actor, 5000);
        clock
    }

    #[test]
    fn a_version_taken_back_restores_the_previous_one_and_its_dot_is_never_reused() {
        let me = ActorId::new("seq", 1);
        let mut s = TableStore::new();
        put(&mut s, b"k", entry(Some(b"old"), &me, 3));
        let before = s.digest_total();
        let previous = s.entry(b"k");
        let written = next_version(&s, b"k", &me);
        s.insert(b"k", Some(b"refused"), &written, None, Cause::Replicated);

        s.take_back(b"k", &written, previous.as_ref());
        assert_eq!(s.value(b"k"), Some(&b"old"[..]));
        assert_eq!(
            s.digest_total(),
            before,
            "the replica is as before the write"
        );
        // The next version of any key starts above the dot taken back, so a
        // replica that applied the refused version sees it superseded.
        let next = next_version(&s, b"k", &me);
        assert!(next.dominates(&written), "{next:?} vs {written:?}");
        assert!(next_version(&s, b"other", &me).counter(&me) > written.counter(&me));
    }

    #[test]
    fn a_new_key_taken_back_is_gone_and_one_that_moved_on_is_left_alone() {
        let me = ActorId::new("seq", 1);
        let mut s = TableStore::new();
        let written = next_version(&s, b"new", &me);
        s.insert(b"new", Some(b"v"), &written, None, Cause::Replicated);
        s.take_back(b"new", &written, None);
        assert!(s.entry(b"new").is_none());
        assert_eq!(s.stats().entries, 0);

        let previous = s.entry(b"k");
        let written = next_version(&s, b"k", &me);
        s.insert(b"k", Some(b"v1"), &written, None, Cause::Replicated);
        let merged_in = entry(Some(b"v2"), &ActorId::new("other", 2), 1);
        let moved_on = written.merge(&merged_in.clock);
        s.insert(b"k", Some(b"v2"), &moved_on, None, Cause::Replicated);
        s.take_back(b"k", &written, previous.as_ref());
        assert_eq!(s.value(b"k"), Some(&b"v2"[..]), "a later version stays");
    }

    #[test]
    fn digest_is_independent_of_insertion_order_and_history() {
        let a = ActorId::new("a", 1);
        let mut s1 = TableStore::new();
        let mut s2 = TableStore::new();
        for i in 0..500u32 {
            put(&mut s1, &i.to_be_bytes(), entry(Some(b"x"), &a, 1));
        }
        for i in (0..500u32).rev() {
            put(&mut s2, &i.to_be_bytes(), entry(Some(b"y"), &a, 3));
            put(&mut s2, &i.to_be_bytes(), entry(Some(b"x"), &a, 1));
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
            put(&mut s1, &i.to_be_bytes(), entry(Some(b"v"), &a, 1));
        }
        let mut s2 = TableStore::new();
        let all: Vec<(Vec<u8>, Entry)> = s1.iter().map(|(k, e)| (k.to_vec(), e)).collect();
        for (k, e) in all {
            put(&mut s2, &k, e);
        }
        let key: Box<[u8]> = 7u32.to_be_bytes().into();
        put(&mut s2, &key, entry(Some(b"w"), &a, 2));
        let bits = s1.digest_bits();
        let (l1, l2) = (s1.digest_leaves(bits), s2.digest_leaves(bits));
        let differing: Vec<usize> = (0..l1.len()).filter(|&i| l1[i] != l2[i]).collect();
        assert_eq!(differing, vec![bucket_of(key_hash(&key), bits)]);
        let found = s2.entries_in_buckets(bits, &[differing[0] as u32], |_| false, |_| {});
        assert!(found
            .iter()
            .any(|h| h.key() == &key[..] && h.key_hash == key_hash(&key)));
    }

    #[test]
    fn a_scan_finds_exactly_the_entries_of_the_buckets_at_every_level() {
        let a = ActorId::new("a", 1);
        let mut s = TableStore::new();
        for i in 0..3000u32 {
            put(&mut s, &i.to_be_bytes(), entry(Some(b"v"), &a, 1));
        }
        for bits in [0u8, 6, 15, 16, 17, 20] {
            let buckets: Vec<u32> = (0..3000u32)
                .step_by(7)
                .map(|i| bucket_of(key_hash(&i.to_be_bytes()), bits) as u32)
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut expected: Vec<Vec<u8>> = (0..3000u32)
                .map(|i| i.to_be_bytes().to_vec())
                .filter(|k| buckets.contains(&(bucket_of(key_hash(k), bits) as u32)))
                .collect();
            let mut found: Vec<Vec<u8>> = s
                .entries_in_buckets(bits, &buckets, |_| false, |_| {})
                .iter()
                .map(|e| e.key().to_vec())
                .collect();
            expected.sort();
            found.sort();
            assert_eq!(found, expected, "at {bits} bits");
        }
    }

    /// The blocks of `from` in every bucket, as a merge sends them whole.
    fn packed_copy(from: &TableStore) -> PackedEntries {
        let bits = from.digest_bits();
        let all: Vec<u32> = (0..1u32 << bits).collect();
        let mut blocks = Vec::new();
        let rest = from.entries_in_buckets(bits, &all, |_| true, |b| blocks.extend_from_slice(b));
        assert!(rest.is_empty());
        PackedEntries {
            actors: from.actors().to_vec(),
            blocks,
        }
    }

    #[test]
    fn blocks_copied_whole_make_an_equal_replica() {
        let (a, b) = (ActorId::new("a", 1), ActorId::new("b", 2));
        let mut from = TableStore::new();
        for i in 0..500u32 {
            let mut e = entry(Some(b"value"), &a, u64::from(i) + 1);
            if i % 3 == 0 {
                e.clock.increment(&b, 7);
            }
            put(&mut from, &i.to_be_bytes(), e);
        }
        put(&mut from, b"gone", entry(None, &a, 1));
        // The receiving table lists its actors in another order.
        let mut to = TableStore::new();
        put(&mut to, b"other", entry(Some(b"x"), &b, 1));
        put(&mut from, b"other", entry(Some(b"x"), &b, 1));
        let packed = packed_copy(&from);
        let map = to.intern_all(&packed.actors);
        let blocks = incoming_blocks(&packed).unwrap();
        assert_eq!(blocks.len(), 502);
        let mut stored = 0;
        for block in &blocks {
            if to.insert_new_block(block, &map) {
                stored += 1;
            } else {
                // What the fast path leaves (a tombstone, a key held here) goes
                // through the merge rule, as the merge engine does.
                let w = block.to_wire(&packed.actors);
                if to.entry(&w.key).is_none() {
                    to.insert(
                        &w.key,
                        w.value.as_deref(),
                        &w.clock,
                        w.deadline_ms,
                        Cause::Merge,
                    );
                }
            }
        }
        assert_eq!(stored, 500);
        assert_eq!(to.digest_total(), from.digest_total());
        assert_eq!(to.stats(), from.stats());
        assert_eq!(
            to.entry(&7u32.to_be_bytes()),
            from.entry(&7u32.to_be_bytes())
        );
        assert_eq!(to.entry(b"other"), from.entry(b"other"));
    }

    #[test]
    fn blocks_cut_short_or_naming_unknown_actors_are_refused() {
        let a = ActorId::new("a", 1);
        let mut from = TableStore::new();
        put(&mut from, b"k", entry(Some(b"value"), &a, 1));
        let packed = packed_copy(&from);
        for cut in 1..packed.blocks.len() {
            let short = PackedEntries {
                actors: packed.actors.clone(),
                blocks: packed.blocks[..cut].to_vec(),
            };
            assert!(incoming_blocks(&short).is_err(), "cut at {cut}");
        }
        let no_actors = PackedEntries {
            actors: Vec::new(),
            blocks: packed.blocks.clone(),
        };
        assert!(incoming_blocks(&no_actors).is_err());
        let mut huge = packed.blocks.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        let huge = PackedEntries {
            actors: packed.actors.clone(),
            blocks: huge,
        };
        assert!(incoming_blocks(&huge).is_err());
    }

    #[test]
    fn stats_track_live_entries_tombstones_and_bytes() {
        let a = ActorId::new("a", 1);
        let mut s = TableStore::new();
        put(&mut s, b"k1", entry(Some(b"abc"), &a, 1));
        put(&mut s, b"k2", entry(Some(b"de"), &a, 1));
        put(&mut s, b"k1", entry(None, &a, 2));
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
    fn packed_entries_round_trip_values_tombstones_and_clocks() {
        let (a, b) = (ActorId::new("a", 1), ActorId::new("b", 2));
        let mut multi = VClock::fresh();
        multi.increment(&a, 5);
        multi.increment(&b, u64::MAX);
        multi.increment(&b, 7);
        let cases = [
            (
                b"".as_slice(),
                Entry {
                    value: Some(Box::from(&b""[..])),
                    clock: VClock::fresh(),
                    deadline_ms: None,
                },
            ),
            (
                b"k",
                Entry {
                    value: None,
                    clock: multi.clone(),
                    deadline_ms: None,
                },
            ),
            (
                b"key",
                Entry {
                    value: Some(vec![9u8; 70_000].into()),
                    clock: multi,
                    deadline_ms: None,
                },
            ),
        ];
        let mut s = TableStore::new();
        for (k, e) in &cases {
            assert!(put(&mut s, k, e.clone()).is_none());
        }
        for (k, e) in &cases {
            assert_eq!(s.entry(k).as_ref(), Some(e));
            assert_eq!(s.value(k), e.value.as_deref());
        }
        assert_eq!(
            put(&mut s, b"k", cases[0].1.clone()),
            None,
            "was a tombstone"
        );
        assert_eq!(
            put(&mut s, b"key", cases[0].1.clone()).map(|v| v.len()),
            Some(70_000)
        );
        assert_eq!(s.stats().tombstones, 0);
        assert_eq!(s.stats().entries, 3);
    }

    #[test]
    fn folding_a_finer_digest_gives_the_coarser_one() {
        let a = ActorId::new("a", 1);
        let mut s = TableStore::new();
        for i in 0..5000u32 {
            put(&mut s, &i.to_be_bytes(), entry(Some(b"v"), &a, 1));
        }
        assert!(s.digest_bits() > MIN_DIGEST_BITS);
        let coarse = s.digest_leaves(MIN_DIGEST_BITS);
        assert_eq!(coarse.len(), 1 << MIN_DIGEST_BITS);
        assert_eq!(coarse.iter().fold(0, |a, b| a ^ b), s.digest_total());
    }
}
