//! The decision itself, rule by rule as Go 1.25's `net/http.CrossOriginProtection.Check`
//! makes it, and the two settings it consults: [`TrustedOrigin`] and [`BypassPattern`].

use std::fmt;
use std::str::FromStr;

use http::header::{HOST, ORIGIN};
use http::{HeaderMap, HeaderName, Method, Uri};

/// `Sec-Fetch-Site` (Fetch Metadata): where the browser says the request comes from.
pub static SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");

/// Why [`CrossOriginLayer`](super::CrossOriginLayer) refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The browser's `Sec-Fetch-Site` named another origin (`cross-site`, `same-site`, or any
    /// value other than `same-origin` and `none`).
    FetchMetadata,
    /// No `Sec-Fetch-Site` (an older browser), and the host of `Origin` is not the request's
    /// host.
    OriginMismatch,
}

impl Refusal {
    /// A short, stable name for logs and metrics: `sec-fetch-site` or `origin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FetchMetadata => "sec-fetch-site",
            Self::OriginMismatch => "origin",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FetchMetadata => {
                "cross-origin request detected from the Sec-Fetch-Site header: this site's own pages may send it, pages of other origins may not unless they are trusted"
            }
            Self::OriginMismatch => {
                "cross-origin request detected, and/or the browser is out of date: Sec-Fetch-Site is missing and Origin does not match Host; send it from this site's own pages with a current browser, or trust the calling origin"
            }
        })
    }
}

impl std::error::Error for Refusal {}

/// An origin whose pages may send unsafe requests: `scheme://host[:port]`, compared exactly with
/// the request's `Origin` header (as Go's `AddTrustedOrigin`). The scheme and host are
/// lowercased when parsed, as browsers write them; a path (even `/`), query, fragment or user
/// name is refused, since an `Origin` never carries one.
///
/// ```
/// use welcomedly_core::cross_origin::TrustedOrigin;
///
/// let o: TrustedOrigin = "https://Admin.Example.com:8443".parse()?;
/// assert_eq!(o.as_str(), "https://admin.example.com:8443");
/// assert!("https://admin.example.com/".parse::<TrustedOrigin>().is_err());
/// assert!("admin.example.com".parse::<TrustedOrigin>().is_err());
/// # Ok::<(), welcomedly_core::cross_origin::InvalidSetting>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TrustedOrigin(Box<str>);

impl TrustedOrigin {
    /// The origin as compared with `Origin` headers.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustedOrigin {
    type Err = InvalidSetting;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| InvalidSetting::new(format!("the trusted origin {:?} {why}", cap(s)));
        let Some((scheme, authority)) = s.split_once("://") else {
            return Err(bad(
                "has no scheme: write it as a browser sends Origin, such as https://app.example.com",
            ));
        };
        if !is_scheme(scheme) {
            return Err(bad(
                "has an invalid scheme: expected https:// or http:// followed by the host",
            ));
        }
        if authority.contains(['/', '?', '#']) {
            return Err(bad(
                "has a path, query or fragment: an origin is only scheme://host[:port], without even a trailing /",
            ));
        }
        if authority.contains('@') {
            return Err(bad(
                "holds a user name: an origin is only scheme://host[:port]",
            ));
        }
        if authority.is_empty() || !is_host(authority) {
            return Err(bad(
                "has no valid host: expected scheme://host[:port], such as https://app.example.com:8443",
            ));
        }
        let origin = format!(
            "{}://{}",
            scheme.to_ascii_lowercase(),
            authority.to_ascii_lowercase()
        );
        Ok(Self(origin.into_boxed_str()))
    }
}

/// Requests to these paths skip the check, whatever their origin: `"/sso/callback"` (exactly
/// that path), `"/webhooks/"` (a trailing `/`: the whole subtree), optionally after a method
/// (`"POST /sso/callback"`). A subset of Go's `ServeMux` patterns (no host, no wildcards). A
/// path that is not clean (`//`, `.` or `..` segments) never matches, so `/webhooks/../logout`
/// cannot borrow a bypass. Named "insecure" as in Go: a bypassed route must defend itself (a
/// signature, a token in the body).
///
/// ```
/// use welcomedly_core::cross_origin::BypassPattern;
///
/// assert!("POST /sso/callback".parse::<BypassPattern>().is_ok());
/// assert!("/webhooks/".parse::<BypassPattern>().is_ok());
/// assert!("webhooks".parse::<BypassPattern>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BypassPattern {
    method: Option<Method>,
    path: Box<str>,
}

impl fmt::Display for BypassPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.method {
            Some(m) => write!(f, "{m} {}", self.path),
            None => f.write_str(&self.path),
        }
    }
}

impl FromStr for BypassPattern {
    type Err = InvalidSetting;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (method, path) = match s.split_once(' ') {
            Some((m, p)) => {
                let upper = !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase());
                let method = upper
                    .then(|| Method::from_bytes(m.as_bytes()).ok())
                    .flatten()
                    .ok_or_else(|| {
                        InvalidSetting::new(format!(
                            "the bypass pattern {:?} has an invalid method: expected an upper-case method such as POST before the path",
                            cap(s)
                        ))
                    })?;
                (Some(method), p.trim_start())
            }
            None => (None, s),
        };
        if !path.starts_with('/') || !is_clean_path(path) || path.contains(['{', '}', ' ']) {
            return Err(InvalidSetting::new(format!(
                "the bypass pattern {:?} is not a clean path: expected [METHOD ]/path or /subtree/ (no wildcards, no . or .. segments)",
                cap(s)
            )));
        }
        Ok(Self {
            method,
            path: path.into(),
        })
    }
}

impl BypassPattern {
    fn matches(&self, method: &Method, path: &str) -> bool {
        if self.method.as_ref().is_some_and(|m| m != method) {
            return false;
        }
        let matched = if self.path.ends_with('/') {
            path.starts_with(&*self.path)
        } else {
            path == &*self.path
        };
        matched && is_clean_path(path)
    }
}

/// A setting of [`CrossOriginLayer`](super::CrossOriginLayer) that cannot be used: a
/// [`TrustedOrigin`] or [`BypassPattern`] that does not parse. The message names the value and
/// what is expected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSetting(String);

impl InvalidSetting {
    fn new(message: String) -> Self {
        Self(message)
    }
}

impl fmt::Display for InvalidSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidSetting {}

/// At most 100 characters of `s` for a message.
fn cap(s: &str) -> &str {
    s.char_indices()
        .nth(100)
        .map_or(s, |(i, _)| s.get(..i).unwrap_or(s))
}

/// RFC 3986 scheme: a letter, then letters, digits, `+`, `-`, `.`.
fn is_scheme(s: &str) -> bool {
    let mut bytes = s.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphabetic())
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// What Go's `url.Parse` accepts as a host (without percent-escapes, refused here): a
/// reg-name or IP literal of the characters it allows, then an optional `:port` of digits.
fn is_host(s: &str) -> bool {
    let (name, port) = if let Some(rest) = s.strip_prefix('[') {
        match rest.split_once(']') {
            Some((_, after)) => (s.get(..s.len() - after.len()).unwrap_or(""), after),
            None => return false,
        }
    } else {
        match s.rfind(':') {
            Some(i) => (s.get(..i).unwrap_or(""), s.get(i..).unwrap_or("")),
            None => (s, ""),
        }
    };
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()));
    let name_ok = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]<>\"".contains(&b) || b >= 0x80);
    port_ok && name_ok
}

/// No empty, `.` or `..` segment (a trailing `/` is fine).
fn is_clean_path(path: &str) -> bool {
    let inner = path.strip_prefix('/').unwrap_or(path);
    let inner = inner.strip_suffix('/').unwrap_or(inner);
    inner.is_empty() || inner.split('/').all(|seg| !matches!(seg, "" | "." | ".."))
}

/// The host of an `Origin` value as Go's `url.Parse(origin).Host` gives it, `None` where Go's
/// parse fails (which Go then treats as a mismatch). `Some("")` when there is no authority
/// (`null`, `mailto:x`).
pub(super) fn origin_host(origin: &str) -> Option<&str> {
    if origin.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return None;
    }
    let origin = origin.split('#').next().unwrap_or("");
    let rest = match scheme_len(origin)? {
        0 => origin,
        n => origin.get(n + 1..).unwrap_or(""),
    };
    let has_scheme = rest.len() != origin.len();
    let rest = rest.split('?').next().unwrap_or("");
    if !rest.starts_with('/') {
        if has_scheme {
            return Some(""); // opaque: `scheme:opaque`
        }
        // Go: "first path segment in URL cannot contain colon".
        let first = rest.split('/').next().unwrap_or("");
        return (!first.contains(':')).then_some("");
    }
    let Some(authority) = rest.strip_prefix("//") else {
        return Some("");
    };
    if !has_scheme && authority.starts_with('/') {
        return Some(""); // `///path`
    }
    let authority = authority.split('/').next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    (host.is_empty() || is_host(host)).then_some(host)
}

/// Go's `getScheme`: `Some(n)` with the scheme's length (0: no scheme), `None` for a leading
/// `:` ("missing protocol scheme").
fn scheme_len(s: &str) -> Option<usize> {
    for (i, b) in s.bytes().enumerate() {
        match b {
            b if b.is_ascii_alphabetic() => {}
            b'0'..=b'9' | b'+' | b'-' | b'.' if i > 0 => {}
            b':' if i == 0 => return None,
            b':' => return Some(i),
            _ => return Some(0),
        }
    }
    Some(0)
}

/// The host the request was sent to, as Go's `Request.Host`: the authority of an absolute
/// request target (HTTP/1 absolute-form, HTTP/2 `:authority`), else the `Host` header.
fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    match uri.authority() {
        Some(a) => a.as_str().rsplit('@').next(),
        None => headers.get(HOST).and_then(|h| h.to_str().ok()),
    }
}

/// The settings the check consults.
#[derive(Debug, Default)]
pub(super) struct Rules {
    pub(super) trusted: Vec<TrustedOrigin>,
    pub(super) bypass: Vec<BypassPattern>,
}

impl Rules {
    /// Go's `Check`: `Ok` for a request to let through.
    pub(super) fn check(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
    ) -> Result<(), Refusal> {
        // Safe methods are always allowed (exactly these three, as Go; a state-changing GET is
        // the application's bug).
        if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
            return Ok(());
        }
        // Go reads the first value; an empty one counts as absent.
        match headers.get(&SEC_FETCH_SITE).map(|v| v.as_bytes()) {
            None | Some(b"") => {}
            Some(b"same-origin" | b"none") => return Ok(()),
            Some(_) => {
                return if self.is_exempt(method, uri, headers) {
                    Ok(())
                } else {
                    Err(Refusal::FetchMetadata)
                };
            }
        }
        let origin = match headers.get(ORIGIN).map(|v| v.as_bytes()) {
            // Neither header: same-origin from a browser that sends neither, or not a browser.
            None | Some(b"") => return Ok(()),
            Some(raw) => raw,
        };
        // Go compares the hosts as strings (ports included, no scheme: an HTTP page posting to
        // HTTPS passes here, which HSTS prevents). An empty host never matches (Go would match
        // it against a request without Host, which no browser sends).
        let host = std::str::from_utf8(origin).ok().and_then(origin_host);
        if let (Some(host), Some(req_host)) = (host, request_host(uri, headers))
            && !host.is_empty()
            && host == req_host
        {
            return Ok(());
        }
        if self.is_exempt(method, uri, headers) {
            return Ok(());
        }
        Err(Refusal::OriginMismatch)
    }

    /// Go's `isRequestExempt`: a bypass pattern matches, or `Origin` is trusted.
    fn is_exempt(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> bool {
        if self.bypass.iter().any(|p| p.matches(method, uri.path())) {
            return true;
        }
        headers.get(ORIGIN).is_some_and(|o| {
            !o.is_empty()
                && self
                    .trusted
                    .iter()
                    .any(|t| t.as_str().as_bytes() == o.as_bytes())
        })
    }
}
