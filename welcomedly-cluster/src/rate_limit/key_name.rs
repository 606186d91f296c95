//! Redis key names for rate-limit state: `<prefix>:{<digest>}:<policy>`.
//!
//! Client keys are attacker-controlled text (a header value can be hundreds of kilobytes, and an
//! API key is a secret), so they never appear in Redis: the name holds a fixed-length digest of
//! the key's text form — HMAC-SHA-256 under the deployment's secret when one is set, plain
//! SHA-256 otherwise — cut to 128 bits (32 hex digits). The digest is also the hash tag, so all
//! policies of one client share a Redis Cluster slot.

use std::fmt::{self, Write as _};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use welcomedly_core::rate_limit::backend::{Key, PolicySpec};

/// Hex digits of the digest in a key name (128 bits: collisions are out of reach).
const DIGEST_HEX: usize = 32;

/// Computes key names; the keyed hash state is prepared once and cloned per name.
#[derive(Clone)]
pub(crate) struct KeyNamer {
    prefix: String,
    hasher: Hasher,
}

#[derive(Clone)]
enum Hasher {
    Plain,
    Keyed(Hmac<Sha256>),
}

impl KeyNamer {
    pub(crate) fn new(prefix: String, secret: Option<&str>) -> Self {
        let hasher = match secret.filter(|s| !s.is_empty()) {
            // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
            Some(s) => match Hmac::<Sha256>::new_from_slice(s.as_bytes()) {
                Ok(mac) => Hasher::Keyed(mac),
                Err(_) => Hasher::Plain,
            },
            None => Hasher::Plain,
        };
        Self { prefix, hasher }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The digest of `key`'s text form, as 32 lowercase hex digits.
    #[cfg(test)]
    pub(crate) fn digest(&self, key: &Key) -> String {
        String::from_utf8_lossy(&self.digest_hex(key)).into_owned()
    }

    /// The digest as hex bytes, on the stack (the hot path writes it straight into a command).
    fn digest_hex(&self, key: &Key) -> [u8; DIGEST_HEX] {
        let bytes: [u8; 32] = match &self.hasher {
            Hasher::Plain => {
                let mut h = Feed(Sha256::new());
                // Writing into a hash cannot fail.
                let _ = write!(h, "{key}");
                h.0.finalize().into()
            }
            Hasher::Keyed(mac) => {
                let mut h = FeedMac(mac.clone());
                let _ = write!(h, "{key}");
                h.0.finalize().into_bytes().into()
            }
        };
        let digit = |n: u8| if n < 10 { b'0' + n } else { b'a' + n - 10 };
        let mut hex = [0u8; DIGEST_HEX];
        for (pair, b) in hex.chunks_exact_mut(2).zip(bytes) {
            if let [hi, lo] = pair {
                *hi = digit(b >> 4);
                *lo = digit(b & 0x0f);
            }
        }
        hex
    }

    /// `<prefix>:{<digest>}:<policy>`.
    pub(crate) fn name(&self, policy: &PolicySpec, key: &Key) -> String {
        let mut name = Vec::with_capacity(self.prefix.len() + DIGEST_HEX + policy.name().len() + 4);
        self.write_name(&mut name, policy, key);
        String::from_utf8_lossy(&name).into_owned()
    }

    /// Writes `<prefix>:{<digest>}:<policy>` into `out` (cleared first): no allocation once
    /// `out` has grown to a key's size.
    pub(crate) fn write_name(&self, out: &mut Vec<u8>, policy: &PolicySpec, key: &Key) {
        out.clear();
        out.extend_from_slice(self.prefix.as_bytes());
        out.extend_from_slice(b":{");
        out.extend_from_slice(&self.digest_hex(key));
        out.extend_from_slice(b"}:");
        out.extend_from_slice(policy.name().as_bytes());
    }
}

/// Streams a key's text form into SHA-256 without building the string.
struct Feed(Sha256);

impl fmt::Write for Feed {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

struct FeedMac(Hmac<Sha256>);

impl fmt::Write for FeedMac {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.update(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn digests_are_fixed_length_and_hide_the_key() {
        let n = KeyNamer::new("wd:rl".to_owned(), None);
        let long = Key::Header(HeaderValue::from_str(&"k".repeat(200)).unwrap());
        for key in [Key::Global, long, Key::UnknownIp] {
            let d = n.digest(&key);
            assert_eq!(d.len(), DIGEST_HEX);
            assert!(d.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(!d.contains("kkk"));
        }
        // SHA-256("global"), cut to 128 bits: the layout other languages reproduce.
        assert_eq!(n.digest(&Key::Global), "8001c27439650c5c5a6b4ed94163b5dd");
    }

    #[test]
    fn a_secret_changes_every_digest() {
        let plain = KeyNamer::new("p".to_owned(), None);
        let a = KeyNamer::new("p".to_owned(), Some("a"));
        let b = KeyNamer::new("p".to_owned(), Some("b"));
        let key = Key::Ip("203.0.113.9".parse().unwrap());
        assert_ne!(plain.digest(&key), a.digest(&key));
        assert_ne!(a.digest(&key), b.digest(&key));
        assert_eq!(a.digest(&key), a.clone().digest(&key));
        // An empty secret is no secret.
        assert_eq!(
            KeyNamer::new("p".to_owned(), Some("")).digest(&key),
            plain.digest(&key)
        );
    }
}
