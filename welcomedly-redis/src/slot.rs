//! Redis Cluster hash slots: which of the 16 384 slots a key lives in, and the check every
//! component runs before a command or script that names several keys.
//!
//! A Redis Cluster refuses a multi-key command or script whose keys live in different slots
//! (`CROSSSLOT`), so every component names the keys it writes together with one hash tag
//! (`{…}`), and calls [`debug_assert_same_slot`] before each such call: a key layout that
//! breaks the rule fails the first debug test that runs it, on one node as on a cluster,
//! instead of failing in production on the first cluster. In release builds the check costs
//! nothing.
//!
//! ```
//! use welcomedly_redis::slot::{key_slot, same_slot};
//!
//! assert_eq!(key_slot(b"123456789"), 12739);
//! // Only the hash tag is hashed: one user's keys share a slot.
//! assert!(same_slot(&["{user1000}.following", "{user1000}.followers"]));
//! assert!(!same_slot(&["user1000.following", "user1000.followers"]));
//! ```

use crc::{CRC_16_XMODEM, Crc};

/// The number of hash slots of a Redis Cluster.
pub const SLOTS: u16 = 16_384;

/// The CRC the cluster spec names (CRC16-CCITT/XMODEM: polynomial 0x1021, initial 0).
const CRC16: Crc<u16> = Crc::<u16>::new(&CRC_16_XMODEM);

/// The part of `key` Redis hashes: the text between the first `{` and the first `}` after it
/// when that text is not empty (the hash tag), else the whole key.
pub fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|b| *b == b'{') else {
        return key;
    };
    let rest = key.get(open + 1..).unwrap_or_default();
    match rest.iter().position(|b| *b == b'}') {
        // `{}`: an empty tag hashes the whole key.
        Some(0) | None => key,
        Some(close) => rest.get(..close).unwrap_or(key),
    }
}

/// The hash slot of `key` (0..16 384), computed as a Redis Cluster does: CRC16 (XMODEM) of the
/// key's [hash tag](hash_tag), modulo 16 384.
pub fn key_slot(key: &[u8]) -> u16 {
    CRC16.checksum(hash_tag(key)) % SLOTS
}

/// Whether every key lives in one slot (true for no key or one key).
pub fn same_slot<K: AsRef<[u8]>>(keys: &[K]) -> bool {
    let mut slots = keys.iter().map(|k| key_slot(k.as_ref()));
    match slots.next() {
        Some(first) => slots.all(|s| s == first),
        None => true,
    }
}

/// Checks, in debug builds only, that every key of one command or script lives in one slot,
/// and panics naming `what` and the keys' slots if not: a layout that would be a `CROSSSLOT`
/// error on a Redis Cluster fails the tests on one node already. Compiled out of release
/// builds (`debug_assert!`), so hot paths call it freely.
///
/// ```
/// welcomedly_redis::slot::debug_assert_same_slot("a rate-limit check", &["rl:{a}:login", "rl:{a}:api"]);
/// ```
#[track_caller]
pub fn debug_assert_same_slot<K: AsRef<[u8]>>(what: &str, keys: &[K]) {
    debug_assert!(
        same_slot(keys),
        "{what} names keys in different Redis Cluster slots (a CROSSSLOT error on a cluster): {:?}; give them one hash tag",
        keys.iter()
            .map(|k| (
                String::from_utf8_lossy(k.as_ref()).into_owned(),
                key_slot(k.as_ref())
            ))
            .collect::<Vec<_>>()
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;

    #[test]
    fn slots_match_the_cluster_spec() {
        // The spec's CRC16 check value and its example keys.
        assert_eq!(CRC16.checksum(b"123456789"), 0x31c3);
        assert_eq!(key_slot(b"123456789"), 12739);
        assert_eq!(
            key_slot(b"{user1000}.following"),
            key_slot(b"{user1000}.followers")
        );
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        // `{}` is no tag: the whole key is hashed.
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(
            key_slot(b"foo{}{bar}"),
            CRC16.checksum(b"foo{}{bar}") % SLOTS
        );
        // The first `{` and the first `}` after it.
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        // No closing brace: the whole key.
        assert_eq!(hash_tag(b"foo{bar"), b"foo{bar");
        assert_eq!(hash_tag(b""), b"");
        // Values `CLUSTER KEYSLOT` answers on Redis 7.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"hello"), 866);
    }

    #[test]
    fn same_slot_compares_every_key() {
        assert!(same_slot::<&str>(&[]));
        assert!(same_slot(&["alone"]));
        assert!(same_slot(&["a:{t}:s", "a:{t}:m", "{t}"]));
        assert!(!same_slot(&["a:{t}:s", "a:{u}:m"]));
    }

    #[test]
    #[cfg(debug_assertions)]
    fn the_debug_check_names_the_keys() {
        debug_assert_same_slot("fine", &["{x}:1", "{x}:2"]);
        let caught = std::panic::catch_unwind(|| {
            debug_assert_same_slot("a test script", &["{x}:1", "{y}:2"]);
        })
        .unwrap_err();
        let text = caught.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(
            text.contains("a test script") && text.contains("{y}:2"),
            "{text}"
        );
    }
}
