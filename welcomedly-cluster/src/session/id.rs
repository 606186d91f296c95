//! Session ids: 128 bits from the operating system's CSPRNG, shown as 32 hex digits; stores
//! name a session by a SHA-256 digest of its id, never by the id itself.

use std::fmt::{self, Write as _};

use sha2::{Digest, Sha256};

/// Bytes of a session id (128 bits).
pub(crate) const ID_BYTES: usize = 16;
/// Hex digits of a session id in a cookie.
pub(crate) const ID_HEX: usize = ID_BYTES * 2;

/// A session id: what the cookie carries. Its `Debug` hides it (a live id is a credential).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct SessionId([u8; ID_BYTES]);

impl SessionId {
    /// A fresh id from the OS CSPRNG; `None` when the OS refuses randomness (then no session is
    /// created: a predictable id would be worse than an error).
    pub(crate) fn generate() -> Option<Self> {
        let mut bytes = [0u8; ID_BYTES];
        getrandom::fill(&mut bytes).ok()?;
        Some(Self(bytes))
    }

    /// Parses 32 lowercase or uppercase hex digits.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        if text.len() != ID_HEX {
            return None;
        }
        let mut bytes = [0u8; ID_BYTES];
        let digits = text.as_bytes();
        for (i, b) in bytes.iter_mut().enumerate() {
            let hi = hex_value(*digits.get(2 * i)?)?;
            let lo = hex_value(*digits.get(2 * i + 1)?)?;
            *b = hi << 4 | lo;
        }
        Some(Self(bytes))
    }

    /// The 32 hex digits the cookie carries.
    pub(crate) fn to_hex(self) -> String {
        hex(&self.0)
    }

    /// The name stores use for this session: SHA-256 of the id's hex form, cut to 128 bits
    /// (32 hex digits). One-way, so a Redis dump or `MONITOR` shows no usable cookie.
    pub(crate) fn digest(self) -> String {
        let d: [u8; 32] = Sha256::digest(self.to_hex().as_bytes()).into();
        hex(d.get(..ID_BYTES).unwrap_or(&d))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SessionId(***)")
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing into a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Decodes lowercase or uppercase hex into `out`, which must be exactly half as long.
pub(crate) fn unhex(text: &str, out: &mut [u8]) -> Option<()> {
    if text.len() != out.len() * 2 {
        return None;
    }
    let digits = text.as_bytes();
    for (i, b) in out.iter_mut().enumerate() {
        *b = hex_value(*digits.get(2 * i)?)? << 4 | hex_value(*digits.get(2 * i + 1)?)?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_random_round_trip_and_hide_in_debug() {
        let a = SessionId::generate().unwrap();
        let b = SessionId::generate().unwrap();
        assert_ne!(a, b);
        assert_eq!(SessionId::parse(&a.to_hex()), Some(a));
        assert_eq!(a.to_hex().len(), ID_HEX);
        assert_eq!(format!("{a:?}"), "SessionId(***)");
        assert!(SessionId::parse("zz").is_none());
        assert!(SessionId::parse(&"g".repeat(ID_HEX)).is_none());
        assert!(SessionId::parse(&"é".repeat(16)).is_none());
    }

    #[test]
    fn the_digest_is_not_the_id() {
        let id = SessionId::parse("00112233445566778899aabbccddeeff").unwrap();
        let d = id.digest();
        assert_eq!(d.len(), 32);
        assert_ne!(d, id.to_hex());
        // SHA-256("00112233445566778899aabbccddeeff"), cut to 128 bits: the layout other
        // languages sharing the sessions reproduce.
        let full: [u8; 32] = Sha256::digest(b"00112233445566778899aabbccddeeff").into();
        assert_eq!(d, hex(&full[..16]));
    }
}
