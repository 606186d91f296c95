//! What a policy counts requests by: the client IP, the authenticated user, a header, one global
//! key, or a composition of these.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request};

use crate::client_ip::{ClientIp, ipv6_prefix};

/// The id of the authenticated user, inserted into request extensions by an authentication layer
/// (welcomedly-cluster's sessions do it), read by policies keyed by [`KeySource::User`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(pub Arc<str>);

impl UserId {
    /// A user id.
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }
}

/// The longest header value that is a key of its own (see [`KeySource::Header`]). API keys and
/// tenant ids are far shorter.
pub const MAX_HEADER_KEY_LEN: usize = 256;

/// Where a policy takes its key from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeySource {
    /// The client IP from [`ClientIp`] (install `ClientIpLayer` outside the rate-limit layer),
    /// IPv6 addresses cut to their `/64` (see `Policy::ipv6_prefix`): one host owns a whole /64.
    /// Without a `ClientIp` extension every request shares the key `unknown`, so a
    /// misconfiguration shows up as a shared limit instead of no limit.
    ClientIp,
    /// The [`UserId`] extension; requests without one are not limited by this policy.
    User,
    /// The value of a request header (an API key, a tenant id); requests without it are not
    /// limited by this policy. Values longer than [`MAX_HEADER_KEY_LEN`] bytes all share one
    /// key, [`Key::HeaderTooLong`]: a client sending huge values cannot make a key per value
    /// (nor make hashing them expensive), and shares one limit with everyone else who does.
    Header(HeaderName),
    /// One key shared by every request: a limit on the whole service.
    Global,
    /// Each listed part; requests missing a part are not limited by this policy (unless the part
    /// is `ClientIp` or `Global`, which always exist).
    Composite(Vec<KeySource>),
}

/// One extracted key. Cheap to clone; hashing it is allocation-free.
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Key {
    /// The global key.
    Global,
    /// A client IP (already cut to the policy's IPv6 prefix).
    Ip(IpAddr),
    /// No client IP was known.
    UnknownIp,
    /// A user id.
    User(Arc<str>),
    /// A header value (at most [`MAX_HEADER_KEY_LEN`] bytes).
    Header(HeaderValue),
    /// A header value longer than [`MAX_HEADER_KEY_LEN`] bytes: one key for all of them.
    HeaderTooLong,
    /// Several parts.
    Composite(Arc<[Key]>),
}

impl fmt::Display for Key {
    /// A stable text form (the Redis backend builds key names from it): `global`, `ip:1.2.3.4`,
    /// `ip:unknown`, `user:<id>`, `h:<value>` and parts joined by `|`. Non-visible bytes of a header
    /// value are written as `%XX`, so the text stays printable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Global => f.write_str("global"),
            Key::Ip(ip) => write!(f, "ip:{ip}"),
            Key::UnknownIp => f.write_str("ip:unknown"),
            Key::HeaderTooLong => f.write_str("h-too-long"),
            Key::User(u) => write!(f, "user:{u}"),
            Key::Header(v) => {
                f.write_str("h:")?;
                for b in v.as_bytes() {
                    if b.is_ascii_graphic() && *b != b'%' && *b != b'|' {
                        fmt::Write::write_char(f, char::from(*b))?;
                    } else {
                        write!(f, "%{b:02X}")?;
                    }
                }
                Ok(())
            }
            Key::Composite(parts) => {
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        f.write_str("|")?;
                    }
                    fmt::Display::fmt(p, f)?;
                }
                Ok(())
            }
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

impl KeySource {
    /// The key of `req`, or `None` when the policy does not apply to it (no user, no header).
    pub(crate) fn extract<B>(&self, req: &Request<B>, v6_prefix: u8) -> Option<Key> {
        match self {
            KeySource::ClientIp => Some(match req.extensions().get::<ClientIp>() {
                Some(ClientIp(ip)) => Key::Ip(ipv6_prefix(*ip, v6_prefix)),
                None => Key::UnknownIp,
            }),
            KeySource::User => req
                .extensions()
                .get::<UserId>()
                .map(|u| Key::User(u.0.clone())),
            KeySource::Header(name) => req.headers().get(name).map(|v| {
                if v.len() > MAX_HEADER_KEY_LEN {
                    Key::HeaderTooLong
                } else {
                    Key::Header(v.clone())
                }
            }),
            KeySource::Global => Some(Key::Global),
            KeySource::Composite(parts) => {
                let keys = parts
                    .iter()
                    .map(|p| p.extract(req, v6_prefix))
                    .collect::<Option<Vec<_>>>()?;
                Some(Key::Composite(keys.into()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> Request<()> {
        Request::new(())
    }

    #[test]
    fn client_ip_is_cut_to_its_v6_prefix() {
        let mut r = req();
        r.extensions_mut()
            .insert(ClientIp("2001:db8:1:2:3:4:5:6".parse().unwrap()));
        let k = KeySource::ClientIp.extract(&r, 64).unwrap();
        assert_eq!(k.to_string(), "ip:2001:db8:1:2::");
        let mut r = req();
        r.extensions_mut()
            .insert(ClientIp("203.0.113.9".parse().unwrap()));
        assert_eq!(
            KeySource::ClientIp.extract(&r, 64).unwrap().to_string(),
            "ip:203.0.113.9"
        );
    }

    #[test]
    fn missing_parts() {
        let r = req();
        assert_eq!(KeySource::ClientIp.extract(&r, 64), Some(Key::UnknownIp));
        assert_eq!(KeySource::User.extract(&r, 64), None);
        let h = KeySource::Header(HeaderName::from_static("x-api-key"));
        assert_eq!(h.extract(&r, 64), None);
        let c = KeySource::Composite(vec![KeySource::Global, KeySource::User]);
        assert_eq!(c.extract(&r, 64), None);
    }

    #[test]
    fn over_long_header_values_share_one_key() {
        let h = KeySource::Header(HeaderName::from_static("x-api-key"));
        let mut r = req();
        let fits = "k".repeat(MAX_HEADER_KEY_LEN);
        r.headers_mut()
            .insert("x-api-key", HeaderValue::from_str(&fits).unwrap());
        assert_eq!(h.extract(&r, 64), Some(Key::Header(fits.parse().unwrap())));
        for n in [MAX_HEADER_KEY_LEN + 1, 100_000] {
            r.headers_mut()
                .insert("x-api-key", HeaderValue::from_str(&"k".repeat(n)).unwrap());
            assert_eq!(h.extract(&r, 64), Some(Key::HeaderTooLong));
        }
    }

    #[test]
    fn composite_and_header_text_forms() {
        let mut r = req();
        r.extensions_mut().insert(UserId::new("alice"));
        r.headers_mut()
            .insert("x-api-key", HeaderValue::from_static("a|b%c"));
        let c = KeySource::Composite(vec![
            KeySource::User,
            KeySource::Header(HeaderName::from_static("x-api-key")),
        ]);
        assert_eq!(
            c.extract(&r, 64).unwrap().to_string(),
            "user:alice|h:a%7Cb%25c"
        );
    }
}
