//! Which slot a key lives in (CRC16 of the key or its hash tag), and how slots are shared.

use crate::Error;

use super::SLOTS;

/// Master `index` of `count` gets `[index * 16384 / count, (index + 1) * 16384 / count)`.
pub(super) fn even_share(index: usize, count: usize) -> (usize, usize) {
    let slots = usize::from(SLOTS);
    let count = count.max(1);
    (index * slots / count, (index + 1) * slots / count - 1)
}

/// The part of a key that is hashed: the bytes between the first `{` and the next `}` when
/// there is at least one byte between them, else the whole key (the cluster spec's rule).
pub(super) fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|&byte| byte == b'{') else {
        return key;
    };
    let Some(rest) = key.get(open + 1..) else {
        return key;
    };
    match rest.iter().position(|&byte| byte == b'}') {
        Some(close) if close > 0 => rest.get(..close).unwrap_or(key),
        _ => key,
    }
}

/// CRC16-CCITT as XMODEM computes it (polynomial 0x1021, initial value 0), the cluster spec's
/// hash. Eight lines, so no crate for it.
pub(super) fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in bytes {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

pub(super) fn check_slot(slot: u16) -> Result<(), Error> {
    if slot < SLOTS {
        Ok(())
    } else {
        Err(Error::invalid_request(
            format_args!("slot {slot}"),
            "slots are 0..16384: compute them with RedisCluster::slot_of",
        ))
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::RedisCluster;

    #[test]
    fn slots_follow_the_cluster_spec() {
        // The spec's check value of CRC16-XMODEM, and the slot it gives.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(RedisCluster::slot_of(b"123456789"), 12739);
        assert_eq!(RedisCluster::slot_of(b"foo"), 12182);
        assert_eq!(RedisCluster::slot_of(b""), 0);
        // Hash tags: the first `{...}` with something inside.
        assert_eq!(
            RedisCluster::slot_of(b"{user1000}.following"),
            RedisCluster::slot_of(b"{user1000}.followers")
        );
        assert_eq!(
            RedisCluster::slot_of(b"{user1000}.following"),
            RedisCluster::slot_of(b"user1000")
        );
        assert_eq!(hash_tag(b"foo{}{bar}"), b"foo{}{bar}");
        assert_eq!(hash_tag(b"foo{{bar}}zap"), b"{bar");
        assert_eq!(hash_tag(b"foo{bar}{zap}"), b"bar");
        assert_eq!(hash_tag(b"foo{bar"), b"foo{bar");
    }

    #[test]
    fn slots_are_shared_evenly_and_completely() {
        assert_eq!(even_share(0, 3), (0, 5460));
        assert_eq!(even_share(1, 3), (5461, 10921));
        assert_eq!(even_share(2, 3), (10922, 16383));
        assert_eq!(even_share(0, 1), (0, 16383));
    }
}
