//! The session cookie: finding it among the request's cookies, checking its signature, writing
//! `Set-Cookie`.
//!
//! Value: the id's 32 hex digits, or with signing `<id>.<tag>` where the tag is HMAC-SHA-256 of
//! the id under the newest key, cut to 128 bits (32 hex digits). Verification tries every key
//! in constant time, so rotation is "put the new key first".

use hmac::{Hmac, Mac};
use http::header::COOKIE;
use http::{HeaderMap, HeaderValue};
use sha2::Sha256;

use welcomedly_core::config::MIN_SECRET_LEN;

use super::config::{HOST_PREFIX, SessionConfig};
use super::id::{ID_BYTES, ID_HEX, SessionId, hex, unhex};
use crate::Error;

/// What the request's cookie says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Presented {
    /// No session cookie.
    None,
    /// A well-formed (and, with signing, verified) id.
    Id(SessionId),
    /// A session cookie that is not an id (wrong length, not hex).
    Malformed,
    /// Several cookies of the name: no session, and nothing deleted (a `Set-Cookie` removal
    /// would hit this host's own cookie, never one planted with another `Domain` or `Path`).
    Ambiguous,
    /// A well-formed id whose signature no key verifies (or missing while signing is on).
    Forged,
}

/// Reads and writes the session cookie, attributes computed once.
#[derive(Clone)]
pub(crate) struct CookieCodec {
    name: String,
    keys: Vec<Hmac<Sha256>>,
    /// `; Path=/; HttpOnly; SameSite=Lax[; Secure][; Domain=…]`.
    attributes: String,
    removal: HeaderValue,
}

impl std::fmt::Debug for CookieCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieCodec")
            .field("name", &self.name)
            .field("signed", &!self.keys.is_empty())
            .field("attributes", &self.attributes)
            .finish()
    }
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn is_attribute_value(s: &str) -> bool {
    s.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b';')
}

impl CookieCodec {
    pub(crate) fn new(config: &SessionConfig) -> Result<Self, Error> {
        if !is_token(&config.cookie_name) {
            return Err(Error::invalid(format!(
                "the session cookie name {:?} is not a cookie name: use letters, digits and - or _ (default wd_session)",
                config.cookie_name
            )));
        }
        if !config.path.starts_with('/') || !is_attribute_value(&config.path) {
            return Err(Error::invalid(format!(
                "the session cookie path {:?} is not a path: it must start with / and hold no ; space or control character",
                config.path
            )));
        }
        if let Some(d) = &config.domain
            && (d.is_empty() || !is_attribute_value(d))
        {
            return Err(Error::invalid(format!(
                "the session cookie domain {d:?} is not a domain: give a host name such as example.com, or none for this host only"
            )));
        }
        let name = config.effective_cookie_name();
        let prefixed = |p: &str| {
            name.get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p))
        };
        if (prefixed(HOST_PREFIX)
            && (!config.secure || config.path != "/" || config.domain.is_some()))
            || (prefixed("__Secure-") && !config.secure)
        {
            return Err(Error::invalid(format!(
                "the session cookie name {name:?} has a prefix browsers refuse with these settings: __Host- needs secure, path / and no domain, __Secure- needs secure; drop the prefix (it is added when the settings allow it)"
            )));
        }
        let mut keys = Vec::with_capacity(config.signing_keys.len());
        for (i, k) in config.signing_keys.iter().enumerate() {
            if k.len() < MIN_SECRET_LEN {
                return Err(Error::invalid(format!(
                    "session signing key #{} is shorter than {MIN_SECRET_LEN} bytes: use long random keys (32 bytes of hex, say), newest first",
                    i + 1
                )));
            }
            // HMAC takes keys of any length: this cannot fail.
            if let Ok(mac) = Hmac::<Sha256>::new_from_slice(k.as_bytes()) {
                keys.push(mac);
            }
        }
        let mut attributes = format!("; Path={}; HttpOnly; SameSite=Lax", config.path);
        if config.secure {
            attributes.push_str("; Secure");
        }
        if let Some(d) = &config.domain {
            attributes.push_str("; Domain=");
            attributes.push_str(d);
        }
        let removal =
            HeaderValue::try_from(format!("{name}=; Max-Age=0{attributes}")).map_err(|_| {
                Error::invalid("the session cookie settings do not make a valid header")
            })?;
        Ok(Self {
            name: name.into_owned(),
            keys,
            attributes,
            removal,
        })
    }

    /// The session cookie of `headers`. Several cookies of the name are ambiguous: a browser
    /// sends one per (path, domain), and guessing which is meant could pick a planted one. (A
    /// `__Host-` cookie cannot be planted by a sibling subdomain nor for another path, so a
    /// browser never sends two.)
    pub(crate) fn find(&self, headers: &HeaderMap) -> Presented {
        let mut found = None;
        for value in headers.get_all(COOKIE) {
            let Ok(text) = value.to_str() else { continue };
            for pair in text.split(';') {
                let Some((name, value)) = pair.trim().split_once('=') else {
                    continue;
                };
                if name.trim() == self.name {
                    if found.is_some() {
                        return Presented::Ambiguous;
                    }
                    found = Some(value.trim().trim_matches('"'));
                }
            }
        }
        match found {
            None => Presented::None,
            Some(v) => self.decode(v),
        }
    }

    fn decode(&self, value: &str) -> Presented {
        let (id, tag) = match value.split_once('.') {
            Some((id, tag)) => (id, Some(tag)),
            None => (value, None),
        };
        let Some(id) = SessionId::parse(id) else {
            return Presented::Malformed;
        };
        if self.keys.is_empty() {
            return match tag {
                None => Presented::Id(id),
                // Signed elsewhere, unsigned here: the deployments disagree; refuse.
                Some(_) => Presented::Forged,
            };
        }
        let mut bytes = [0u8; ID_BYTES];
        let Some(()) = tag.and_then(|t| unhex(t, &mut bytes)) else {
            return Presented::Forged;
        };
        let hex_id = id.to_hex();
        let verified = self.keys.iter().any(|k| {
            let mut mac = k.clone();
            mac.update(hex_id.as_bytes());
            mac.verify_truncated_left(&bytes).is_ok()
        });
        if verified {
            Presented::Id(id)
        } else {
            Presented::Forged
        }
    }

    /// The cookie value for `id`: the id, signed with the newest key when signing is on.
    fn encode(&self, id: SessionId) -> String {
        let mut value = id.to_hex();
        if let Some(k) = self.keys.first() {
            let mut mac = k.clone();
            mac.update(value.as_bytes());
            let tag = mac.finalize().into_bytes();
            value.push('.');
            value.push_str(&hex(tag.get(..ID_BYTES).unwrap_or(&tag)));
        }
        debug_assert!(value.len() >= ID_HEX);
        value
    }

    /// `Set-Cookie` for `id`: a browser-session cookie (no `Max-Age`; the store ends it).
    pub(crate) fn set_cookie(&self, id: SessionId) -> Option<HeaderValue> {
        HeaderValue::try_from(format!(
            "{}={}{}",
            self.name,
            self.encode(id),
            self.attributes
        ))
        .ok()
    }

    /// `Set-Cookie` that removes the cookie.
    pub(crate) fn removal(&self) -> HeaderValue {
        self.removal.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec(keys: &[&str]) -> CookieCodec {
        let config = SessionConfig {
            signing_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..SessionConfig::default()
        };
        CookieCodec::new(&config).unwrap()
    }

    fn headers(cookie: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(COOKIE, HeaderValue::from_str(cookie).unwrap());
        h
    }

    fn value_of(set_cookie: &HeaderValue) -> String {
        let text = set_cookie.to_str().unwrap();
        let pair = text.split(';').next().unwrap();
        pair.split_once('=').unwrap().1.to_owned()
    }

    #[test]
    fn attributes_are_http_only_lax_and_secure() {
        let c = codec(&[]);
        let id = SessionId::generate().unwrap();
        let text = c.set_cookie(id).unwrap().to_str().unwrap().to_owned();
        assert!(text.starts_with(&format!("__Host-wd_session={}", id.to_hex())));
        for attr in ["Path=/", "HttpOnly", "SameSite=Lax", "Secure"] {
            assert!(text.contains(attr), "{text}");
        }
        let removal = c.removal();
        assert!(removal.to_str().unwrap().contains("Max-Age=0"));
        let local = CookieCodec::new(&SessionConfig {
            secure: false,
            domain: Some("example.com".to_owned()),
            ..SessionConfig::default()
        })
        .unwrap();
        let text = local.set_cookie(id).unwrap().to_str().unwrap().to_owned();
        assert!(!text.contains("Secure") && text.contains("Domain=example.com"));
    }

    #[test]
    fn finds_the_cookie_among_others() {
        let c = codec(&[]);
        let id = SessionId::generate().unwrap();
        let h = headers(&format!("a=1; __Host-wd_session={}; b=2", id.to_hex()));
        assert_eq!(c.find(&h), Presented::Id(id));
        assert_eq!(c.find(&headers("a=1")), Presented::None);
        assert_eq!(c.find(&HeaderMap::new()), Presented::None);
        for bad in [
            "__Host-wd_session=",
            "__Host-wd_session=abc",
            "__Host-wd_session=../../etc",
        ] {
            assert_eq!(c.find(&headers(bad)), Presented::Malformed, "{bad}");
        }
        let twice = format!("__Host-wd_session={0}; __Host-wd_session={0}", id.to_hex());
        assert_eq!(c.find(&headers(&twice)), Presented::Ambiguous);
        // A signed cookie presented to an unsigned deployment.
        let signed = format!("__Host-wd_session={}.{}", id.to_hex(), "0".repeat(32));
        assert_eq!(c.find(&headers(&signed)), Presented::Forged);
    }

    #[test]
    fn signing_rotates_and_refuses_forgeries() {
        let old = codec(&["old-key-0123456789"]);
        let rotated = codec(&["new-key-0123456789", "old-key-0123456789"]);
        let new_only = codec(&["new-key-0123456789"]);
        let id = SessionId::generate().unwrap();
        let by_old = format!(
            "__Host-wd_session={}",
            value_of(&old.set_cookie(id).unwrap())
        );
        let by_new = format!(
            "__Host-wd_session={}",
            value_of(&rotated.set_cookie(id).unwrap())
        );
        assert_eq!(rotated.find(&headers(&by_old)), Presented::Id(id));
        assert_eq!(rotated.find(&headers(&by_new)), Presented::Id(id));
        assert_eq!(new_only.find(&headers(&by_new)), Presented::Id(id));
        assert_eq!(new_only.find(&headers(&by_old)), Presented::Forged);
        let bare = format!("__Host-wd_session={}", id.to_hex());
        assert_eq!(rotated.find(&headers(&bare)), Presented::Forged);
        let mut tampered = by_new.clone();
        tampered.pop();
        tampered.push(if by_new.ends_with('0') { '1' } else { '0' });
        assert_eq!(rotated.find(&headers(&tampered)), Presented::Forged);
        assert_eq!(
            rotated.find(&headers(&format!("{by_new}zz"))),
            Presented::Forged
        );
    }

    #[test]
    fn the_host_prefix_is_added_when_the_settings_allow_it() {
        let id = SessionId::generate().unwrap();
        let name_of = |config: SessionConfig| {
            let c = CookieCodec::new(&config).unwrap();
            let set = c.set_cookie(id).unwrap().to_str().unwrap().to_owned();
            let removal = c.removal().to_str().unwrap().to_owned();
            let name = set.split_once('=').unwrap().0.to_owned();
            assert!(removal.starts_with(&format!("{name}=;")), "{removal}");
            name
        };
        assert_eq!(name_of(SessionConfig::default()), "__Host-wd_session");
        let plain = |f: fn(&mut SessionConfig)| {
            let mut c = SessionConfig::default();
            f(&mut c);
            name_of(c)
        };
        assert_eq!(plain(|c| c.secure = false), "wd_session");
        assert_eq!(
            plain(|c| c.domain = Some("example.com".to_owned())),
            "wd_session"
        );
        assert_eq!(plain(|c| c.path = "/app".to_owned()), "wd_session");
        // Already prefixed: kept as is.
        assert_eq!(
            plain(|c| c.cookie_name = "__Host-sid".to_owned()),
            "__Host-sid"
        );
        // A prefix the browser would refuse with these settings.
        for config in [
            SessionConfig {
                cookie_name: "__Host-sid".to_owned(),
                domain: Some("example.com".to_owned()),
                ..SessionConfig::default()
            },
            SessionConfig {
                cookie_name: "__secure-sid".to_owned(),
                secure: false,
                ..SessionConfig::default()
            },
        ] {
            assert!(CookieCodec::new(&config).unwrap_err().is_config());
        }
        // The plain name is not read once the prefix is on: a cookie planted by a sibling
        // subdomain (which cannot set a __Host- one) is no session cookie at all.
        let c = codec(&[]);
        let planted = format!("wd_session={}", id.to_hex());
        assert_eq!(c.find(&headers(&planted)), Presented::None);
        let both = format!("{planted}; __Host-wd_session={}", id.to_hex());
        assert_eq!(c.find(&headers(&both)), Presented::Id(id));
    }

    #[test]
    fn bad_settings_are_refused() {
        for config in [
            SessionConfig {
                cookie_name: "a b".to_owned(),
                ..SessionConfig::default()
            },
            SessionConfig {
                path: "x".to_owned(),
                ..SessionConfig::default()
            },
            SessionConfig {
                domain: Some("a;b".to_owned()),
                ..SessionConfig::default()
            },
            SessionConfig {
                signing_keys: vec!["tiny".to_owned()],
                ..SessionConfig::default()
            },
        ] {
            let e = CookieCodec::new(&config).unwrap_err();
            assert!(e.is_config());
            assert!(!e.to_string().contains("tiny"), "{e}");
        }
    }
}
