//! What a policy counts requests by: the client IP, the authenticated user (or the client IP when
//! anonymous), a header, a key an earlier layer derived from the request, one global key, or a
//! composition of these.

use std::borrow::Cow;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Request};

use crate::UserId;
use crate::client_ip::{ClientIp, ipv6_prefix};

/// A key an earlier layer derived from what the rate-limit layer cannot see (a field of the
/// request body, such as a digest of the user name a login names), put in the request's
/// extensions and read by policies keyed by [`KeySource::Derived`] with the same name.
///
/// Put a fixed-length digest in it, never client text itself: the value becomes part of the key
/// (the Redis backend hashes keys again, the local one keeps only a fingerprint). Values longer
/// than [`MAX_HEADER_KEY_LEN`] bytes all share one key, as over-long header values do. A request
/// carries at most one `DerivedKey` (extensions hold one value per type).
///
/// ```
/// use welcomedly_core::rate_limit::{DerivedKey, KeySource, Policy, Quota};
///
/// // Set by a layer outside the limits that read the login body:
/// let key = DerivedKey::new("account", "9f86d081884c7d659a2feaa0c55ad015");
/// let policy = Policy::new("login-account", Quota::per_minute(10)).key(KeySource::Derived("account".into()));
/// # let _ = (key, policy);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DerivedKey {
    name: Cow<'static, str>,
    value: Arc<str>,
}

impl DerivedKey {
    /// The key `value` for policies keyed by `KeySource::Derived(name)`.
    pub fn new(name: impl Into<Cow<'static, str>>, value: impl Into<Arc<str>>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }

    /// The name policies select it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The value.
    pub fn value(&self) -> &str {
        &self.value
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
    /// The [`UserId`] extension when there is one, else the client IP as [`ClientIp`](Self::ClientIp)
    /// does: logged-in users each get their own budget wherever they connect from (many users
    /// behind one NAT no longer share one), anonymous requests share their address's. User and
    /// address keys never collide. Put the layer that inserts `UserId` (welcomedly-cluster's
    /// sessions, loading eagerly) outside the rate-limit layer, or every request counts as
    /// anonymous.
    UserOrClientIp,
    /// The [`DerivedKey`] extension of this name, set by a layer outside the rate-limit layer;
    /// requests without one (or with another name) are not limited by this policy.
    Derived(Cow<'static, str>),
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
    /// A header value (or a [`DerivedKey`] value) longer than [`MAX_HEADER_KEY_LEN`] bytes: one
    /// key for all of them.
    HeaderTooLong,
    /// A [`DerivedKey`]'s value.
    Derived(Arc<str>),
    /// Several parts.
    Composite(Arc<[Key]>),
}

impl fmt::Display for Key {
    /// A stable text form (the Redis backend builds key names from it): `global`, `ip:1.2.3.4`,
    /// `ip:unknown`, `user:<id>`, `h:<value>`, `d:<value>` and parts joined by `|`. Non-visible bytes of a header
    /// value are written as `%XX`, so the text stays printable.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Global => f.write_str("global"),
            Key::Ip(ip) => write!(f, "ip:{ip}"),
            Key::UnknownIp => f.write_str("ip:unknown"),
            Key::HeaderTooLong => f.write_str("h-too-long"),
            Key::User(u) => write!(f, "user:{u}"),
            Key::Derived(v) => {
                f.write_str("d:")?;
                for c in v.chars() {
                    if c == '%' || c == '|' || c.is_control() {
                        let mut buf = [0u8; 4];
                        for b in c.encode_utf8(&mut buf).bytes() {
                            write!(f, "%{b:02X}")?;
                        }
                    } else {
                        fmt::Write::write_char(f, c)?;
                    }
                }
                Ok(())
            }
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
            KeySource::ClientIp => Some(client_ip(req, v6_prefix)),
            KeySource::User => req
                .extensions()
                .get::<UserId>()
                .map(|u| Key::User(u.0.clone())),
            KeySource::UserOrClientIp => Some(match req.extensions().get::<UserId>() {
                Some(u) => Key::User(u.0.clone()),
                None => client_ip(req, v6_prefix),
            }),
            KeySource::Derived(name) => req
                .extensions()
                .get::<DerivedKey>()
                .filter(|d| d.name == *name)
                .map(|d| {
                    if d.value.len() > MAX_HEADER_KEY_LEN {
                        Key::HeaderTooLong
                    } else {
                        Key::Derived(d.value.clone())
                    }
                }),
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

fn client_ip<B>(req: &Request<B>, v6_prefix: u8) -> Key {
    match req.extensions().get::<ClientIp>() {
        Some(ClientIp(ip)) => Key::Ip(ipv6_prefix(*ip, v6_prefix)),
        None => Key::UnknownIp,
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

    #[test]
    fn user_or_client_ip_takes_the_user_when_there_is_one() {
        let mut r = req();
        r.extensions_mut()
            .insert(ClientIp("203.0.113.9".parse().unwrap()));
        let k = KeySource::UserOrClientIp;
        assert_eq!(k.extract(&r, 64).unwrap().to_string(), "ip:203.0.113.9");
        r.extensions_mut().insert(UserId::new("alice"));
        assert_eq!(k.extract(&r, 64).unwrap().to_string(), "user:alice");
        assert_eq!(k.extract(&req(), 64), Some(Key::UnknownIp));
    }

    #[test]
    fn derived_keys_are_read_by_name_and_bounded() {
        let k = KeySource::Derived("account".into());
        let mut r = req();
        assert_eq!(k.extract(&r, 64), None);
        r.extensions_mut().insert(DerivedKey::new("other", "abc"));
        assert_eq!(k.extract(&r, 64), None, "another policy's key");
        r.extensions_mut()
            .insert(DerivedKey::new("account", "ab|c%"));
        assert_eq!(k.extract(&r, 64).unwrap().to_string(), "d:ab%7Cc%25");
        let long = "d".repeat(MAX_HEADER_KEY_LEN + 1);
        r.extensions_mut().insert(DerivedKey::new("account", long));
        assert_eq!(k.extract(&r, 64), Some(Key::HeaderTooLong));
        let both = KeySource::Composite(vec![KeySource::ClientIp, k]);
        r.extensions_mut().insert(DerivedKey::new("account", "f00"));
        r.extensions_mut()
            .insert(ClientIp("203.0.113.9".parse().unwrap()));
        assert_eq!(
            both.extract(&r, 64).unwrap().to_string(),
            "ip:203.0.113.9|d:f00"
        );
    }
}
