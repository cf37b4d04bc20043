//! The stable hash of clocks and table digests: XXH64, so values can be
//! reproduced with any xxHash implementation and never depend on platform,
//! process or Rust version (digests are compared between nodes).

/// Stable 64-bit hash of bytes with a seed, the algorithm of
/// [`crate::vclock::VClock::stable_hash`] and of the store's digests.
///
/// The algorithm is XXH64, so values can be reproduced with any xxHash
/// implementation and never depend on platform, process or Rust version.
pub fn stable_hash_bytes(seed: u64, bytes: &[u8]) -> u64 {
    let mut hasher = Xxh64::new(seed);
    hasher.write(bytes);
    hasher.finish()
}

const PRIME64_1: u64 = 0x9E37_79B1_85EB_CA87;
const PRIME64_2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const PRIME64_3: u64 = 0x1656_67B1_9E37_79F9;
const PRIME64_4: u64 = 0x85EB_CA77_C2B2_AE63;
const PRIME64_5: u64 = 0x27D4_EB2F_1656_67C5;

/// Streaming XXH64, so structured values can be hashed without first being
/// copied into one buffer.
pub(crate) struct Xxh64 {
    seed: u64,
    acc: [u64; 4],
    buf: [u8; 32],
    buf_len: usize,
    total_len: u64,
}

#[inline]
fn read_u64(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[inline]
fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

#[inline]
fn xxh_round(acc: u64, input: u64) -> u64 {
    acc.wrapping_add(input.wrapping_mul(PRIME64_2))
        .rotate_left(31)
        .wrapping_mul(PRIME64_1)
}

#[inline]
fn xxh_merge_round(hash: u64, acc: u64) -> u64 {
    (hash ^ xxh_round(0, acc))
        .wrapping_mul(PRIME64_1)
        .wrapping_add(PRIME64_4)
}

impl Xxh64 {
    pub(crate) fn new(seed: u64) -> Self {
        Xxh64 {
            seed,
            acc: [
                seed.wrapping_add(PRIME64_1).wrapping_add(PRIME64_2),
                seed.wrapping_add(PRIME64_2),
                seed,
                seed.wrapping_sub(PRIME64_1),
            ],
            buf: [0; 32],
            buf_len: 0,
            total_len: 0,
        }
    }

    #[inline]
    fn stripe(acc: &mut [u64; 4], block: &[u8]) {
        for (lane, a) in acc.iter_mut().enumerate() {
            *a = xxh_round(*a, read_u64(block, lane * 8));
        }
    }

    pub(crate) fn write(&mut self, mut bytes: &[u8]) {
        self.total_len = self.total_len.wrapping_add(bytes.len() as u64);
        if self.buf_len > 0 {
            let take = (32 - self.buf_len).min(bytes.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&bytes[..take]);
            self.buf_len += take;
            bytes = &bytes[take..];
            if self.buf_len < 32 {
                return;
            }
            Self::stripe(&mut self.acc, &self.buf);
            self.buf_len = 0;
        }
        let mut blocks = bytes.chunks_exact(32);
        for block in blocks.by_ref() {
            Self::stripe(&mut self.acc, block);
        }
        let rest = blocks.remainder();
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    pub(crate) fn write_u64(&mut self, value: u64) {
        self.write(&value.to_le_bytes());
    }

    pub(crate) fn finish(&self) -> u64 {
        let mut hash = if self.total_len >= 32 {
            let [a1, a2, a3, a4] = self.acc;
            let mut h = a1
                .rotate_left(1)
                .wrapping_add(a2.rotate_left(7))
                .wrapping_add(a3.rotate_left(12))
                .wrapping_add(a4.rotate_left(18));
            for a in self.acc {
                h = xxh_merge_round(h, a);
            }
            h
        } else {
            self.seed.wrapping_add(PRIME64_5)
        };
        hash = hash.wrapping_add(self.total_len);

        let tail = &self.buf[..self.buf_len];
        let mut at = 0;
        while at + 8 <= tail.len() {
            hash ^= xxh_round(0, read_u64(tail, at));
            hash = hash
                .rotate_left(27)
                .wrapping_mul(PRIME64_1)
                .wrapping_add(PRIME64_4);
            at += 8;
        }
        if at + 4 <= tail.len() {
            hash ^= u64::from(read_u32(tail, at)).wrapping_mul(PRIME64_1);
            hash = hash
                .rotate_left(23)
                .wrapping_mul(PRIME64_2)
                .wrapping_add(PRIME64_3);
            at += 4;
        }
        for &byte in &tail[at..] {
            hash ^= u64::from(byte).wrapping_mul(PRIME64_5);
            hash = hash.rotate_left(11).wrapping_mul(PRIME64_1);
        }

        hash ^= hash >> 33;
        hash = hash.wrapping_mul(PRIME64_2);
        hash ^= hash >> 29;
        hash = hash.wrapping_mul(PRIME64_3);
        hash ^= hash >> 32;
        hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn xxh64_reference_vectors() {
        assert_eq!(stable_hash_bytes(0, b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(stable_hash_bytes(1, b""), 0xD5AF_BA13_36A3_BE4B);
        assert_eq!(stable_hash_bytes(0, b"a"), 0xD24E_C4F1_A98C_6E5B);
        assert_eq!(stable_hash_bytes(0, b"abc"), 0x44BC_2CF5_AD77_0999);
        assert_eq!(stable_hash_bytes(0, b"asdf"), 0x4158_72F5_99CE_A71E);
        assert_eq!(
            stable_hash_bytes(0, b"Call me Ishmael."),
            0x6D04_390F_C9D6_1A90
        );
        assert_eq!(
            stable_hash_bytes(0, b"Nobody inspects the spammish repetition"),
            0xFBCE_A83C_8A37_8BF1
        );
        assert_eq!(
            stable_hash_bytes(0, b"Some years ago--never mind how long precisely-"),
            0x8F26_F2B9_86AF_DC52
        );
    }

    proptest! {
    #[test]
    fn prop_stable_hash_streaming_matches_one_shot(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        cuts in prop::collection::vec(0usize..200, 0..5),
        seed in any::<u64>(),
    ) {
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
        cuts.sort_unstable();
        let mut hasher = Xxh64::new(seed);
        let mut from = 0;
        for cut in cuts {
            hasher.write(&bytes[from..cut]);
            from = cut;
        }
        hasher.write(&bytes[from..]);
        prop_assert_eq!(hasher.finish(), stable_hash_bytes(seed, &bytes));
    }
    }
}
