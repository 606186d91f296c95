//! Stable, integer-only bucketing for percentage rollouts.
//!
//! A context lands in a bucket in `0..TOTAL` (100 000 buckets, so weights have a granularity of
//! 0.001 %) computed from the flag's salt and the rollout's bucket-by attribute. A rollout gives
//! each variant a contiguous range of buckets in list order, so moving weight from one variant to
//! its neighbour moves only the users on the border: raising a percentage never removes a user
//! who was in.
//!
//! Algorithms are frozen behind a [`BucketingVersion`]; a new algorithm is a new version, never a
//! change to an old one (golden vectors in `tests/bucketing_golden.rs` pin them):
//!
//! - [`BucketingVersion::V1`] (the default): a 64-bit multiply-fold hash. With
//!   `fold(a, b) = lo64(a·b) ^ hi64(a·b)` over the 128-bit product, `absorb(h, bytes)` runs
//!   `h = fold(h ^ chunk, K1)` over the bytes in 8-byte little-endian chunks (the last one
//!   zero-padded) and then `h = fold(h ^ len, K2)`; the hash is
//!   `fmix64(absorb(absorb(SEED, salt), value))` (MurmurHash3's 64-bit finalizer) and the bucket
//!   `(hash · TOTAL) >> 64`. `SEED = 0x243F6A8885A308D3`, `K1 = 0x9E3779B97F4A7C15`,
//!   `K2 = 0xBF58476D1CE4E5B9`.
//! - [`BucketingVersion::Flagd`]: flagd's fractional split, MurmurHash3 x86_32 with seed 0 over
//!   `salt ‖ value` (the salt defaults to the flag key, as flagd prefixes it), bucket
//!   `(hash · TOTAL) >> 32`.
//!
//! The salt's part of the hash is computed once per flag when the snapshot is compiled
//! ([`Bucketer`]); evaluating only hashes the attribute value.
//!
//! ```
//! use welcomedly_flags::bucketing::{Bucketer, BucketingVersion, TOTAL};
//!
//! let bucketer = Bucketer::new(BucketingVersion::V1, "new-ui");
//! let bucket = bucketer.bucket("user-42");
//! assert!(bucket < TOTAL);
//! // Stable: the same inputs always give the same bucket.
//! assert_eq!(bucket, welcomedly_flags::bucketing::bucket(BucketingVersion::V1, "new-ui", "user-42"));
//! ```

mod murmur3;

use serde::{Deserialize, Serialize};

pub(crate) use self::murmur3::Murmur3;
pub use self::murmur3::murmur3_x86_32;

/// The number of buckets: weights are out of 100 000 (one unit = 0.001 %).
pub const TOTAL: u32 = 100_000;

/// A frozen bucketing algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum BucketingVersion {
    /// Welcomedly's own 64-bit multiply-fold hash (JSON `"v1"`, the default).
    #[default]
    V1,
    /// flagd's MurmurHash3 x86_32 split (JSON `"flagd"`), to keep assignments when migrating from
    /// flagd.
    Flagd,
}

impl BucketingVersion {
    /// Whether this is the default (left out of the canonical JSON).
    pub fn is_default(&self) -> bool {
        *self == BucketingVersion::default()
    }
}

const SEED: u64 = 0x243F_6A88_85A3_08D3;
const K1: u64 = 0x9E37_79B9_7F4A_7C15;
const K2: u64 = 0xBF58_476D_1CE4_E5B9;

#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

#[inline]
fn absorb(mut h: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        h = fold(h ^ u64::from_le_bytes(word), K1);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        let mut word = [0u8; 8];
        for (dst, src) in word.iter_mut().zip(rest) {
            *dst = *src;
        }
        h = fold(h ^ u64::from_le_bytes(word), K1);
    }
    fold(h ^ bytes.len() as u64, K2)
}

#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// A bucketing algorithm with a flag's salt already hashed in.
#[derive(Debug, Clone)]
pub struct Bucketer {
    state: State,
}

#[derive(Debug, Clone)]
enum State {
    V1(u64),
    Flagd(Murmur3),
}

impl Bucketer {
    /// Prepares `version` for `salt`.
    pub fn new(version: BucketingVersion, salt: &str) -> Bucketer {
        let state = match version {
            BucketingVersion::V1 => State::V1(absorb(SEED, salt.as_bytes())),
            BucketingVersion::Flagd => {
                let mut m = Murmur3::new(0);
                m.write(salt.as_bytes());
                State::Flagd(m)
            }
        };
        Bucketer { state }
    }

    /// The bucket of `value`, in `0..TOTAL`.
    #[inline]
    pub fn bucket(&self, value: &str) -> u32 {
        match &self.state {
            State::V1(prefix) => {
                let hash = fmix64(absorb(*prefix, value.as_bytes()));
                ((u128::from(hash) * u128::from(TOTAL)) >> 64) as u32
            }
            State::Flagd(prefix) => {
                let mut m = prefix.clone();
                m.write(value.as_bytes());
                ((u64::from(m.finish()) * u64::from(TOTAL)) >> 32) as u32
            }
        }
    }
}

/// The bucket of `value` under `salt` (see [`Bucketer`] to hash the salt once).
pub fn bucket(version: BucketingVersion, salt: &str, value: &str) -> u32 {
    Bucketer::new(version, salt).bucket(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_in_range_and_salted() {
        for version in [BucketingVersion::V1, BucketingVersion::Flagd] {
            let a = Bucketer::new(version, "a");
            let b = Bucketer::new(version, "b");
            let mut differ = 0;
            for i in 0..1000 {
                let key = format!("user-{i}");
                assert!(a.bucket(&key) < TOTAL);
                if a.bucket(&key) != b.bucket(&key) {
                    differ += 1;
                }
            }
            assert!(
                differ > 990,
                "{version:?}: salts barely change buckets ({differ})"
            );
        }
    }

    #[test]
    fn salt_and_value_do_not_run_together_in_v1() {
        assert_ne!(
            bucket(BucketingVersion::V1, "ab", "c"),
            bucket(BucketingVersion::V1, "a", "bc")
        );
    }

    #[test]
    fn flagd_hashes_the_concatenation() {
        let hash = murmur3_x86_32(b"new-uiuser-1", 0);
        let expected = ((u64::from(hash) * u64::from(TOTAL)) >> 32) as u32;
        assert_eq!(
            bucket(BucketingVersion::Flagd, "new-ui", "user-1"),
            expected
        );
    }
}
