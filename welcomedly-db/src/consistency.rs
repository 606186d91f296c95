//! Read-your-writes: the [`Token`] a write returns (a WAL position and its timeline) and its
//! signed text form for cookies.
//!
//! ```
//! use welcomedly_db::{Token, TokenSigner};
//!
//! let token = Token::new(1, 0x0300_0148);
//! let signer = TokenSigner::new(b"a secret shared by every instance");
//! let value = signer.sign(&token, 1_900_000_000);
//! assert_eq!(signer.verify(&value, 1_800_000_000), Some(token));
//! assert_eq!(signer.verify(&value, 2_000_000_000), None); // expired
//! assert_eq!(signer.verify("1-3000148-1-forged", 1_800_000_000), None);
//! ```

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The size of a WAL page (PostgreSQL's default `XLOG_BLCKSZ`).
const WAL_PAGE: u64 = 8192;
/// The header at the start of every WAL page but a segment's first.
const SHORT_PAGE_HEADER: u64 = 24;
/// The header at the start of a segment's first page.
const LONG_PAGE_HEADER: u64 = 40;

/// A position in a PostgreSQL primary's WAL at or past the end of a commit record, with the
/// timeline it belongs to. A node has "seen" a token when it is on the same timeline and has
/// replayed at least that far; a node on another timeline (after a failover) never satisfies it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token {
    timeline: u32,
    lsn: u64,
}

impl Token {
    /// A token for WAL position `lsn` on `timeline`.
    pub fn new(timeline: u32, lsn: u64) -> Self {
        Self { timeline, lsn }
    }

    /// The timeline.
    pub fn timeline(&self) -> u32 {
        self.timeline
    }

    /// The WAL position as a number (`0/3000148` is `0x0300_0148`).
    pub fn lsn(&self) -> u64 {
        self.lsn
    }

    /// The later of two tokens: the one on the newer timeline, else the higher position.
    pub fn max(self, other: Self) -> Self {
        if (other.timeline, other.lsn) > (self.timeline, self.lsn) {
            other
        } else {
            self
        }
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:X}/{:X} on timeline {}",
            self.lsn >> 32,
            self.lsn & 0xFFFF_FFFF,
            self.timeline
        )
    }
}

/// A WAL position as PostgreSQL writes it (`16/B374D848`).
pub(crate) fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

/// `16/B374D848` as a number; `None` if malformed.
pub(crate) fn parse_lsn(text: &str) -> Option<u64> {
    let (high, low) = text.trim().split_once('/')?;
    let high = u32::from_str_radix(high, 16).ok()?;
    let low = u32::from_str_radix(low, 16).ok()?;
    Some((u64::from(high) << 32) | u64::from(low))
}

/// An insert position just past a page header is where the next record will start, not where
/// the last one ended: a replica reports the end of the last record it replayed, so on an idle
/// primary it would never reach the raw insert position. Step back over the header.
pub(crate) fn end_of_last_record(insert_lsn: u64, segment_size: u64) -> u64 {
    if segment_size > 0 && insert_lsn % segment_size == LONG_PAGE_HEADER {
        insert_lsn - LONG_PAGE_HEADER
    } else if insert_lsn % WAL_PAGE == SHORT_PAGE_HEADER {
        insert_lsn - SHORT_PAGE_HEADER
    } else {
        insert_lsn
    }
}

/// Signs tokens for cookies and checks them: `<timeline>-<lsn>-<expiry>-<mac>` in hex, the MAC
/// an HMAC-SHA-256 (128 bits shown) over the rest, so a client can neither forge a position
/// that would pin it to the primary forever nor replay one past its expiry.
#[derive(Clone)]
pub struct TokenSigner {
    key: Hmac<Sha256>,
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner").finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer with `secret` (every instance must share it).
    pub fn new(secret: &[u8]) -> Self {
        Self {
            key: <Hmac<Sha256> as Mac>::new(&hmac_key_block(secret).into()),
        }
    }

    fn mac(&self, payload: &str) -> [u8; 16] {
        let mut mac = self.key.clone();
        mac.update(payload.as_bytes());
        let full = mac.finalize().into_bytes();
        let mut out = [0u8; 16];
        for (o, b) in out.iter_mut().zip(full.iter()) {
            *o = *b;
        }
        out
    }

    /// The cookie value for `token`, valid until `expires` (Unix seconds).
    pub fn sign(&self, token: &Token, expires: u64) -> String {
        let payload = format!("{:x}-{:x}-{:x}", token.timeline, token.lsn, expires);
        let mac = self.mac(&payload);
        let mut out = payload;
        out.push('-');
        for b in mac {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// The token in `value` if it is well formed, signed by this key and not expired at `now`
    /// (Unix seconds); `None` otherwise (a malformed or forged cookie is ignored).
    pub fn verify(&self, value: &str, now: u64) -> Option<Token> {
        let (payload, mac_hex) = value.rsplit_once('-')?;
        if mac_hex.len() != 32 {
            return None;
        }
        let mut given = [0u8; 16];
        for (i, slot) in given.iter_mut().enumerate() {
            let pair = mac_hex.get(i * 2..i * 2 + 2)?;
            *slot = u8::from_str_radix(pair, 16).ok()?;
        }
        // Constant-time comparison through the MAC's own verifier.
        let mut mac = self.key.clone();
        mac.update(payload.as_bytes());
        mac.verify_truncated_left(&given).ok()?;
        let mut parts = payload.split('-');
        let timeline = u32::from_str_radix(parts.next()?, 16).ok()?;
        let lsn = u64::from_str_radix(parts.next()?, 16).ok()?;
        let expires = u64::from_str_radix(parts.next()?, 16).ok()?;
        if parts.next().is_some() || expires <= now {
            return None;
        }
        Some(Token { timeline, lsn })
    }
}

/// The 64-byte key block HMAC-SHA-256 derives from `secret` (RFC 2104: zero-padded, or its
/// SHA-256 zero-padded when longer than a block), so the MAC is built without a fallible call.
fn hmac_key_block(secret: &[u8]) -> [u8; 64] {
    let mut block = [0u8; 64];
    let digest;
    let key: &[u8] = if secret.len() > block.len() {
        digest = Sha256::digest(secret);
        &digest
    } else {
        secret
    };
    if let Some(head) = block.get_mut(..key.len()) {
        head.copy_from_slice(key);
    }
    block
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_key_block_is_what_hmac_derives_from_any_secret() {
        for secret in [&b""[..], b"short", &[7u8; 64], &[9u8; 200]] {
            let ours = <Hmac<Sha256> as Mac>::new(&hmac_key_block(secret).into())
                .chain_update(b"m")
                .finalize()
                .into_bytes();
            let reference = Hmac::<Sha256>::new_from_slice(secret)
                .unwrap()
                .chain_update(b"m")
                .finalize()
                .into_bytes();
            assert_eq!(ours, reference, "secret of {} bytes", secret.len());
        }
    }

    #[test]
    fn lsn_text_parses() {
        assert_eq!(parse_lsn("0/3000148"), Some(0x0300_0148));
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(parse_lsn("x"), None);
        assert_eq!(parse_lsn("1/"), None);
    }

    #[test]
    fn page_headers_are_stepped_over() {
        let seg = 16 * 1024 * 1024;
        assert_eq!(end_of_last_record(0x0300_0148, seg), 0x0300_0148);
        assert_eq!(end_of_last_record(8192 + 24, seg), 8192);
        assert_eq!(end_of_last_record(seg * 3 + 40, seg), seg * 3);
    }

    #[test]
    fn tokens_order_by_timeline_then_position() {
        let a = Token::new(1, 100);
        let b = Token::new(1, 200);
        let c = Token::new(2, 50);
        assert_eq!(a.max(b), b);
        assert_eq!(b.max(c), c);
        assert_eq!(c.max(a), c);
    }

    #[test]
    fn malformed_forged_and_expired_cookies_are_ignored() {
        let s = TokenSigner::new(b"k");
        let t = Token::new(3, 0xABCDEF);
        let v = s.sign(&t, 100);
        assert_eq!(s.verify(&v, 99), Some(t));
        assert_eq!(s.verify(&v, 100), None);
        assert_eq!(TokenSigner::new(b"other").verify(&v, 1), None);
        let tampered = v.replacen("abcdef", "abcdff", 1);
        assert_eq!(s.verify(&tampered, 1), None);
        for junk in [
            "",
            "-",
            "a-b-c-d",
            "1-2-3-zz",
            "é-é-é-ééééééééééééééééééééééééééééééééé",
        ] {
            assert_eq!(s.verify(junk, 1), None, "{junk}");
        }
    }
}
