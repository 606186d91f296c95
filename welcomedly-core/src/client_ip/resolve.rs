//! Walking the forwarding header the operator names — `X-Forwarded-For` or `Forwarded` (RFC 7239)
//! — right-to-left through trusted proxies.
//!
//! Each proxy appends the address it received the request from, so the right end of the header
//! was written by the nearest proxy and everything further left was written by whoever sent the
//! request to it — possibly the client, who can write anything. Walking from the right and stopping
//! at the first address that is not a trusted proxy therefore yields the address the outermost
//! trusted proxy actually saw, however the client forged the left part.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::str::FromStr;

use http::HeaderMap;
use http::header::{FORWARDED, HeaderName};

use super::TrustedProxies;

/// Which forwarding header the trusted proxies write: the one [`resolve`] reads. An explicit
/// setting, never detected from the request: a proxy that writes one header passes a client's
/// own header of the other kind through untouched, so reading "whichever is present" would let
/// any client choose its address.
///
/// NGINX (`$proxy_add_x_forwarded_for`), AWS ALB, Envoy, HAProxy's `option forwardfor` and most
/// CDNs write `X-Forwarded-For` (the default). Choose `Forwarded` only when every trusted proxy
/// writes RFC 7239 `Forwarded` (for instance HAProxy's `option forwarded`).
///
/// Parsed from `x-forwarded-for` or `forwarded` in any case (env `TRUSTED_PROXY_HEADER` in
/// [`CoreConfig`](crate::CoreConfig)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ForwardingHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (the default).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239); only its `for=` parameters are read.
    Forwarded,
}

impl ForwardingHeader {
    /// The header's name.
    pub fn name(self) -> HeaderName {
        match self {
            Self::XForwardedFor => X_FORWARDED_FOR,
            Self::Forwarded => FORWARDED,
        }
    }
}

impl fmt::Display for ForwardingHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::XForwardedFor => "x-forwarded-for",
            Self::Forwarded => "forwarded",
        })
    }
}

impl FromStr for ForwardingHeader {
    type Err = ParseForwardingHeaderError;

    /// `x-forwarded-for` or `forwarded`, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("x-forwarded-for") {
            Ok(Self::XForwardedFor)
        } else if s.eq_ignore_ascii_case("forwarded") {
            Ok(Self::Forwarded)
        } else {
            Err(ParseForwardingHeaderError(()))
        }
    }
}

/// The input of [`ForwardingHeader::from_str`] names neither supported header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseForwardingHeaderError(());

impl fmt::Display for ParseForwardingHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "not a forwarding header: expected x-forwarded-for (what NGINX, ALB and Envoy write) or forwarded (RFC 7239)",
        )
    }
}

impl std::error::Error for ParseForwardingHeaderError {}

/// At most this many hops are examined per request, so a huge forwarding header cannot make
/// resolution expensive. Real chains are a handful of proxies long.
pub const MAX_HOPS: usize = 32;

/// The client address of a request received from `peer`, given its headers, the proxies whose
/// forwarding headers are believed and the one header those proxies write.
///
/// - If `peer` is not trusted (the common case, and always when `trusted` is empty), the result is
///   `peer`: headers are not even read, so a client cannot forge its address.
/// - Otherwise the `header` the operator named (`X-Forwarded-For`, or the `for=` parameters of
///   `Forwarded`) is walked from right to left (several header lines count as one list, in
///   order), skipping trusted addresses; the first untrusted address is the result. The other
///   header is never read: the proxy passes a client's copy of it through unchanged.
/// - If every hop is trusted, the result is the leftmost hop.
/// - If a hop cannot be read — malformed, not an address, `for=unknown`, an obfuscated
///   identifier such as `for=_hidden`, not ASCII — or more than [`MAX_HOPS`] hops would have to be
///   examined, the walk stops and the result is the last address that was trusted (the hop to its
///   right, or `peer`). A proxy address is a poor key for rate limiting, but it is never a
///   value the client chose; taking the unreadable hop's left neighbour instead would let a client
///   pick its address by sending garbage.
///
/// IPv4-mapped IPv6 addresses (`::ffff:192.0.2.7`) are normalised to IPv4, in `peer` and in the
/// headers. A hop may carry a port (`192.0.2.60:8080`, `[2001:db8::1]:4711`), which is ignored.
///
/// Allocation-free, and reads no header when `peer` is untrusted.
///
/// ```
/// use http::HeaderMap;
/// use std::net::IpAddr;
/// use welcomedly_core::client_ip::{ForwardingHeader, resolve, TrustedProxies};
///
/// let trusted: TrustedProxies = "10.0.0.0/8".parse()?;
/// let mut headers = HeaderMap::new();
/// headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.9, 10.0.0.2".parse()?);
/// // Written by the client and passed through by a proxy that only appends X-Forwarded-For.
/// headers.insert("forwarded", "for=1.2.3.4".parse()?);
/// let xff = ForwardingHeader::XForwardedFor;
///
/// // From the trusted load balancer: the first untrusted hop from the right.
/// let lb: IpAddr = "10.0.0.1".parse()?;
/// assert_eq!(resolve(lb, &headers, &trusted, xff), "203.0.113.9".parse::<IpAddr>()?);
///
/// // Straight from a client: its forged headers are ignored.
/// let client: IpAddr = "198.51.100.4".parse()?;
/// assert_eq!(resolve(client, &headers, &trusted, xff), client);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn resolve(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &TrustedProxies,
    header: ForwardingHeader,
) -> IpAddr {
    let peer = peer.to_canonical();
    if !trusted.contains(peer) {
        return peer;
    }
    match header {
        ForwardingHeader::XForwardedFor => walk(peer, headers, &X_FORWARDED_FOR, trusted, xff_hop),
        ForwardingHeader::Forwarded => walk(peer, headers, &FORWARDED, trusted, |element| {
            std::str::from_utf8(element).ok().and_then(forwarded_for)
        }),
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// The walk shared by both headers; `parse_hop` reads one comma-separated element (`None` when it
/// is unusable).
fn walk(
    peer: IpAddr,
    headers: &HeaderMap,
    name: &HeaderName,
    trusted: &TrustedProxies,
    parse_hop: fn(&[u8]) -> Option<IpAddr>,
) -> IpAddr {
    let mut last_trusted = peer;
    let mut budget = MAX_HOPS;
    for line in headers.get_all(name).iter().rev() {
        // Bytes rather than `to_str`: a non-ASCII byte on the left of a line (client-written)
        // must not hide the well-formed hops the proxies appended on its right.
        for element in line.as_bytes().rsplit(|&b| b == b',') {
            // Counted before anything else, empty elements included, so even a header of a
            // million commas costs at most MAX_HOPS steps.
            budget = match budget.checked_sub(1) {
                Some(b) => b,
                None => return last_trusted,
            };
            let element = trim(element);
            if element.is_empty() {
                // `a,,b` or a trailing comma: nothing to believe or distrust.
                continue;
            }
            let Some(addr) = parse_hop(element) else {
                return last_trusted;
            };
            let addr = addr.to_canonical();
            if !trusted.contains(addr) {
                return addr;
            }
            last_trusted = addr;
        }
    }
    last_trusted
}

/// Strips optional whitespace (spaces and tabs, as HTTP allows around list elements).
fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

/// One `X-Forwarded-For` element as bytes: the common dotted-quad read directly, anything else
/// through [`bare_hop`].
fn xff_hop(element: &[u8]) -> Option<IpAddr> {
    if let Some(v4) = dotted_quad(element) {
        return Some(IpAddr::V4(v4));
    }
    std::str::from_utf8(element).ok().and_then(bare_hop)
}

/// `a.b.c.d`, each part 1 to 3 digits without a leading zero and at most 255: exactly the
/// dotted quads `Ipv4Addr::from_str` accepts, read without a UTF-8 check or the standard
/// parser's IPv4-then-IPv6 attempts (most of the cost of a hop). `None` for anything else,
/// which then takes the general path.
fn dotted_quad(bytes: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = bytes.split(|&b| b == b'.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || (part.len() > 1 && part.first() == Some(&b'0')) {
            return None;
        }
        let mut value: u16 = 0;
        for &b in part {
            if !b.is_ascii_digit() {
                return None;
            }
            value = value * 10 + u16::from(b - b'0');
        }
        *octet = u8::try_from(value).ok()?;
    }
    match parts.next() {
        None => Some(Ipv4Addr::from(octets)),
        Some(_) => None,
    }
}

/// One `X-Forwarded-For` element: an address, tolerating the `ip:port` and `[ipv6]:port` forms
/// some load balancers write.
fn bare_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// The `for=` node of one `Forwarded` element (`for=192.0.2.60;proto=http;by=203.0.113.43`).
/// `None` when the element has no `for=`, or its node is `unknown`, obfuscated or malformed.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let node = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?,
        None => value,
    };
    forwarded_node(node)
}

/// An RFC 7239 node: `192.0.2.60`, `192.0.2.60:8080`, `[2001:db8::1]`, `[2001:db8::1]:4711`.
/// An unbracketed IPv6 address, invalid in the RFC but written by some proxies, is accepted too
/// since it cannot be mistaken for anything else.
fn forwarded_node(node: &str) -> Option<IpAddr> {
    if let Ok(addr) = node.parse::<IpAddr>() {
        return Some(addr);
    }
    let (name, port) = match node.strip_prefix('[') {
        Some(rest) => {
            let (v6, after) = rest.split_once(']')?;
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':')?),
            };
            (IpAddr::V6(v6.parse().ok()?), port)
        }
        None => {
            let (v4, port) = node.split_once(':')?;
            (IpAddr::V4(v4.parse().ok()?), Some(port))
        }
    };
    match port {
        None => Some(name),
        Some(p) if is_node_port(p) => Some(name),
        Some(_) => None,
    }
}

/// `node-port = port / obfport`: 1-5 digits, or `_` followed by letters, digits, `.`, `_`, `-`.
fn is_node_port(port: &str) -> bool {
    match port.strip_prefix('_') {
        Some(obf) => {
            !obf.is_empty()
                && obf
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        }
        None => (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit()),
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn trusted() -> TrustedProxies {
        "10.0.0.0/8, 2001:db8:ffff::/48".parse().unwrap()
    }

    /// Headers with the given (name, value) lines, in order.
    fn headers(lines: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in lines {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const LB: &str = "10.0.0.1";

    const XFF: ForwardingHeader = ForwardingHeader::XForwardedFor;
    const FWD: ForwardingHeader = ForwardingHeader::Forwarded;

    fn resolve_xff(value: &str) -> IpAddr {
        resolve(
            ip(LB),
            &headers(&[("x-forwarded-for", value)]),
            &trusted(),
            XFF,
        )
    }

    fn resolve_fwd(value: &str) -> IpAddr {
        resolve(ip(LB), &headers(&[("forwarded", value)]), &trusted(), FWD)
    }

    proptest! {
        /// The dotted-quad shortcut accepts exactly what the standard parser accepts, with the
        /// same address, for text made of digits and dots (and anything else it declines).
        #[test]
        fn dotted_quad_agrees_with_the_standard_parser(
            s in "(0?[0-9]{1,3}\\.){3}0?[0-9]{1,3}|[0-9.]{0,18}|[0-9a-f:.]{0,12}"
        ) {
            let std = s.parse::<Ipv4Addr>().ok();
            prop_assert_eq!(dotted_quad(s.as_bytes()), std);
            prop_assert_eq!(xff_hop(s.as_bytes()), bare_hop(&s));
        }
    }

    #[test]
    fn dotted_quad_edges() {
        assert_eq!(dotted_quad(b"10.1.2.3"), Some(Ipv4Addr::new(10, 1, 2, 3)));
        assert_eq!(dotted_quad(b"255.255.255.255"), Some(Ipv4Addr::BROADCAST));
        assert_eq!(dotted_quad(b"0.0.0.0"), Some(Ipv4Addr::UNSPECIFIED));
        for refused in [
            &b"256.1.1.1"[..],
            b"01.1.1.1",
            b"1.1.1",
            b"1.1.1.1.",
            b"1.1.1.1.1",
            b"1..1.1",
            b"1000.1.1.1",
            b"1.1.1.1:80",
            b"",
        ] {
            assert_eq!(
                dotted_quad(refused),
                None,
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
        // Declined here, still read by the general path.
        assert_eq!(xff_hop(b"1.1.1.1:80"), Some(ip("1.1.1.1")));
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_the_headers() {
        let h = headers(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=2.2.2.2")]);
        for header in [XFF, FWD] {
            assert_eq!(
                resolve(ip("203.0.113.5"), &h, &trusted(), header),
                ip("203.0.113.5")
            );
            // With nobody trusted, not even a loopback peer's headers count.
            assert_eq!(
                resolve(ip("127.0.0.1"), &h, &TrustedProxies::default(), header),
                ip("127.0.0.1")
            );
        }
    }

    #[test]
    fn trusted_peer_without_headers_is_the_client() {
        assert_eq!(resolve(ip(LB), &HeaderMap::new(), &trusted(), XFF), ip(LB));
    }

    #[test]
    fn x_forwarded_for_right_to_left() {
        assert_eq!(resolve_xff("203.0.113.9"), ip("203.0.113.9"));
        assert_eq!(resolve_xff("203.0.113.9, 10.0.0.2"), ip("203.0.113.9"));
        // The forged entry on the left is never reached.
        assert_eq!(
            resolve_xff("6.6.6.6, 203.0.113.9, 10.0.0.2"),
            ip("203.0.113.9")
        );
        assert_eq!(resolve_xff("10.0.0.1, 6.6.6.6"), ip("6.6.6.6"));
        assert_eq!(resolve_xff(" 203.0.113.9 ,\t10.0.0.3 "), ip("203.0.113.9"));
        assert_eq!(
            resolve_xff("2001:db8::7, 2001:db8:ffff::1"),
            ip("2001:db8::7")
        );
    }

    #[test]
    fn all_trusted_gives_the_leftmost_hop() {
        assert_eq!(resolve_xff("10.0.0.7, 10.0.0.8"), ip("10.0.0.7"));
        assert_eq!(resolve_fwd("for=10.0.0.7, for=10.0.0.8"), ip("10.0.0.7"));
    }

    #[test]
    fn x_forwarded_for_lines_are_concatenated_in_order() {
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6, 203.0.113.9"),
            ("x-forwarded-for", "10.0.0.5"),
        ]);
        assert_eq!(resolve(ip(LB), &h, &trusted(), XFF), ip("203.0.113.9"));
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "10.0.0.5, 10.0.0.6"),
        ]);
        assert_eq!(resolve(ip(LB), &h, &trusted(), XFF), ip("203.0.113.1"));
    }

    #[test]
    fn x_forwarded_for_with_ports_and_empty_elements() {
        assert_eq!(resolve_xff("203.0.113.9:5555, 10.0.0.2"), ip("203.0.113.9"));
        assert_eq!(resolve_xff("[2001:db8::7]:443"), ip("2001:db8::7"));
        assert_eq!(resolve_xff("203.0.113.9,,10.0.0.2,"), ip("203.0.113.9"));
        // Only separators: nothing but the peer to believe.
        assert_eq!(resolve_xff(", ,"), ip(LB));
    }

    #[test]
    fn malformed_hop_stops_at_the_last_trusted_address() {
        // The hop right of the garbage is trusted: it is the answer, never the garbage's neighbour.
        assert_eq!(resolve_xff("6.6.6.6, garbage, 10.0.0.2"), ip("10.0.0.2"));
        assert_eq!(resolve_xff("6.6.6.6, 300.1.1.1"), ip(LB));
        assert_eq!(resolve_xff("unknown"), ip(LB));
        assert_eq!(resolve_xff("6.6.6.6 7.7.7.7"), ip(LB));
        // Garbage left of the first untrusted hop is never read.
        assert_eq!(resolve_xff("garbage, 203.0.113.9"), ip("203.0.113.9"));
    }

    #[test]
    fn forwarded_forms() {
        assert_eq!(resolve_fwd("for=192.0.2.60"), ip("192.0.2.60"));
        assert_eq!(resolve_fwd("for=\"192.0.2.60:8080\""), ip("192.0.2.60"));
        assert_eq!(resolve_fwd("for=192.0.2.60:8080"), ip("192.0.2.60"));
        assert_eq!(
            resolve_fwd("for=\"[2001:db8:cafe::17]:4711\""),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(
            resolve_fwd("for=\"[2001:db8:cafe::17]\""),
            ip("2001:db8:cafe::17")
        );
        assert_eq!(resolve_fwd("for=\"192.0.2.60:_port\""), ip("192.0.2.60"));
        assert_eq!(
            resolve_fwd("for=192.0.2.60;proto=http;by=203.0.113.43"),
            ip("192.0.2.60")
        );
        assert_eq!(resolve_fwd("proto=https; FOR=192.0.2.60"), ip("192.0.2.60"));
        assert_eq!(
            resolve_fwd("for=6.6.6.6, for=198.51.100.17;by=10.0.0.9, for=10.0.0.2"),
            ip("198.51.100.17")
        );
    }

    #[test]
    fn forwarded_unknown_obfuscated_and_malformed_stop_the_walk() {
        assert_eq!(resolve_fwd("for=unknown"), ip(LB));
        assert_eq!(resolve_fwd("for=_hidden, for=10.0.0.3"), ip("10.0.0.3"));
        assert_eq!(resolve_fwd("for=\"_hidden:80\""), ip(LB));
        assert_eq!(resolve_fwd("proto=https"), ip(LB));
        assert_eq!(resolve_fwd("for=\"192.0.2.60"), ip(LB));
        assert_eq!(resolve_fwd("for=[2001:db8::1"), ip(LB));
        assert_eq!(resolve_fwd("for=\"[2001:db8::1]x\""), ip(LB));
        assert_eq!(resolve_fwd("for=192.0.2.60:123456"), ip(LB));
        assert_eq!(resolve_fwd("for=192.0.2.60:"), ip(LB));
        assert_eq!(resolve_fwd("for="), ip(LB));
    }

    #[test]
    fn only_the_configured_header_is_read() {
        // Behind NGINX (X-Forwarded-For), a client's own Forwarded header is passed through:
        // it must not move the address. This is the bypass of the login limit that was found.
        let h = headers(&[("x-forwarded-for", "1.1.1.1"), ("forwarded", "for=2.2.2.2")]);
        assert_eq!(resolve(ip(LB), &h, &trusted(), XFF), ip("1.1.1.1"));
        assert_eq!(resolve(ip(LB), &h, &trusted(), FWD), ip("2.2.2.2"));
        // A Forwarded header alone, behind an X-Forwarded-For proxy, is not believed either.
        let h = headers(&[("forwarded", "for=2.2.2.2")]);
        assert_eq!(resolve(ip(LB), &h, &trusted(), XFF), ip(LB));
        let h = headers(&[("x-forwarded-for", "1.1.1.1")]);
        assert_eq!(resolve(ip(LB), &h, &trusted(), FWD), ip(LB));
    }

    #[test]
    fn forwarding_header_parses_and_prints() {
        assert_eq!("X-Forwarded-For".parse(), Ok(XFF));
        assert_eq!("forwarded".parse(), Ok(FWD));
        assert!("x-real-ip".parse::<ForwardingHeader>().is_err());
        assert_eq!(FWD.to_string(), "forwarded");
        assert_eq!(ForwardingHeader::default(), XFF);
    }

    #[test]
    fn ipv4_mapped_addresses_are_normalised() {
        assert_eq!(resolve_xff("::ffff:203.0.113.9"), ip("203.0.113.9"));
        // A mapped trusted hop is recognised as trusted.
        assert_eq!(
            resolve_xff("203.0.113.9, ::ffff:10.0.0.2"),
            ip("203.0.113.9")
        );
        assert_eq!(
            resolve_fwd("for=\"[::ffff:203.0.113.9]:80\""),
            ip("203.0.113.9")
        );
        // And the peer itself.
        let h = headers(&[("x-forwarded-for", "203.0.113.9")]);
        assert_eq!(
            resolve(ip("::ffff:10.0.0.1"), &h, &trusted(), XFF),
            ip("203.0.113.9")
        );
        assert_eq!(
            resolve(ip("::ffff:198.51.100.1"), &h, &trusted(), XFF),
            ip("198.51.100.1")
        );
    }

    #[test]
    fn non_ascii_bytes_left_of_the_client_are_not_read() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.9, 10.0.0.2").unwrap(),
        );
        assert_eq!(resolve(ip(LB), &h, &trusted(), XFF), ip("203.0.113.9"));
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"203.0.113.9, \xff, 10.0.0.2").unwrap(),
        );
        assert_eq!(resolve(ip(LB), &h, &trusted(), XFF), ip("10.0.0.2"));
    }

    #[test]
    fn hop_budget_caps_the_walk() {
        // MAX_HOPS trusted hops then the client: the client is examined last and found.
        let chain = |trusted_hops: usize| {
            let mut value = String::from("203.0.113.9");
            for _ in 0..trusted_hops {
                value.push_str(", 10.0.0.2");
            }
            value
        };
        assert_eq!(resolve_xff(&chain(MAX_HOPS - 1)), ip("203.0.113.9"));
        // One more and the budget runs out: the last trusted hop is the answer.
        assert_eq!(resolve_xff(&chain(MAX_HOPS)), ip("10.0.0.2"));
        // A header of a million commas is cut short too.
        assert_eq!(resolve_xff(&",".repeat(1_000_000)), ip(LB));
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
            // IPv4-mapped IPv6, which must come out as IPv4.
            any::<[u8; 4]>().prop_map(|o| IpAddr::V6(std::net::Ipv4Addr::from(o).to_ipv6_mapped())),
        ]
    }

    fn untrusted_ip() -> impl Strategy<Value = IpAddr> {
        any_ip().prop_filter("must not be trusted", |a| !trusted().contains(*a))
    }

    fn trusted_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::from([10, a, b, c])),
            any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::V6(
                std::net::Ipv4Addr::new(10, a, b, c).to_ipv6_mapped()
            )),
            any::<[u16; 5]>().prop_map(|[a, b, c, d, e]| {
                IpAddr::V6(std::net::Ipv6Addr::new(
                    0x2001, 0xdb8, 0xffff, a, b, c, d, e,
                ))
            }),
        ]
    }

    /// Header values as an attacker could send them: any bytes a `HeaderValue` accepts, biased
    /// towards the characters the parsers care about.
    fn any_header_value() -> impl Strategy<Value = HeaderValue> {
        // Well-formed hops of both header syntaxes, or noise around them.
        let hop = (any_ip(), any::<bool>(), proptest::option::of(any::<u16>()))
            .prop_map(|(addr, forwarded, port)| spell(addr, forwarded, port));
        let bytes = prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            "[0-9a-fA-F:.,;=\\[\\]\" _forunknw]{0,200}".prop_map(String::into_bytes),
            proptest::collection::vec(hop, 1..5).prop_map(|hops| hops.join(", ").into_bytes()),
        ];
        bytes.prop_filter_map("not a valid header value", |b| {
            HeaderValue::from_bytes(&b).ok()
        })
    }

    fn any_headers() -> impl Strategy<Value = HeaderMap> {
        proptest::collection::vec(
            (
                prop_oneof![
                    Just("forwarded"),
                    Just("x-forwarded-for"),
                    Just("x-real-ip")
                ],
                any_header_value(),
            ),
            0..4,
        )
        .prop_map(|lines| {
            let mut map = HeaderMap::new();
            for (name, value) in lines {
                map.append(name, value);
            }
            map
        })
    }

    /// An address written as a forwarding header could spell it.
    fn spell(addr: IpAddr, forwarded: bool, port: Option<u16>) -> String {
        match (forwarded, addr, port) {
            (false, a, None) => a.to_string(),
            (false, a, Some(p)) => SocketAddr::new(a, p).to_string(),
            (true, IpAddr::V4(a), None) => format!("for={a}"),
            (true, IpAddr::V4(a), Some(p)) => format!("for=\"{a}:{p}\""),
            (true, IpAddr::V6(a), None) => format!("for=\"[{a}]\""),
            (true, IpAddr::V6(a), Some(p)) => format!("for=\"[{a}]:{p}\""),
        }
    }

    proptest! {
        #[test]
        fn forged_headers_from_an_untrusted_peer_never_change_the_result(
            peer in untrusted_ip(),
            headers in any_headers(),
        ) {
            for header in [XFF, FWD] {
                prop_assert_eq!(resolve(peer, &headers, &trusted(), header), peer.to_canonical());
            }
        }

        #[test]
        fn ipv4_mapped_peers_and_hops_are_normalised(
            octets in any::<[u8; 4]>(),
            via_header in any::<bool>(),
            forwarded in any::<bool>(),
        ) {
            let v4 = std::net::Ipv4Addr::from(octets);
            let mapped = IpAddr::V6(v4.to_ipv6_mapped());
            let got = if via_header {
                let name = if forwarded { "forwarded" } else { "x-forwarded-for" };
                let h = headers(&[(name, &spell(mapped, forwarded, None))]);
                resolve(ip(LB), &h, &trusted(), if forwarded { FWD } else { XFF })
            } else {
                resolve(mapped, &HeaderMap::new(), &trusted(), XFF)
            };
            prop_assert_eq!(got, IpAddr::V4(v4));
            prop_assert!(got.is_ipv4());
        }

        #[test]
        fn arbitrary_headers_never_panic(
            peer in prop_oneof![any_ip(), trusted_ip()],
            headers in any_headers(),
            forwarded in any::<bool>(),
        ) {
            let got = resolve(peer, &headers, &trusted(), if forwarded { FWD } else { XFF });
            // Whatever the input, the result is canonical.
            prop_assert_eq!(got, got.to_canonical());
        }

        #[test]
        fn the_client_is_found_behind_trusted_proxies_whatever_is_forged_left_of_it(
            client in untrusted_ip(),
            proxies in proptest::collection::vec(trusted_ip(), 0..4),
            peer in trusted_ip(),
            forged in proptest::collection::vec(
                prop_oneof![
                    any_ip().prop_map(|a| a.to_string()),
                    "[ -+\\-~]{0,20}",
                ],
                0..5,
            ),
            forwarded in any::<bool>(),
            ports in any::<bool>(),
            other_kind in proptest::collection::vec(any_header_value(), 0..3),
        ) {
            let (name, other, header) = if forwarded {
                ("forwarded", "x-forwarded-for", FWD)
            } else {
                ("x-forwarded-for", "forwarded", XFF)
            };
            let mut hops: Vec<String> = vec![spell(client, forwarded, ports.then_some(4711))];
            hops.extend(proxies.iter().map(|p| spell(*p, forwarded, None)));
            let honest = hops.join(", ");
            let expected = client.to_canonical();
            prop_assert_eq!(resolve(peer, &headers(&[(name, &honest)]), &trusted(), header), expected);

            // A header of the other kind, written by the client and passed through by the
            // proxy, changes nothing, whatever it says and wherever it sits.
            for value in &other_kind {
                let mut h = headers(&[(name, &honest)]);
                h.append(other, value.clone());
                prop_assert_eq!(resolve(peer, &h, &trusted(), header), expected);
                let mut h = HeaderMap::new();
                h.append(other, value.clone());
                h.append(name, HeaderValue::from_str(&honest).unwrap());
                prop_assert_eq!(resolve(peer, &h, &trusted(), header), expected);
            }

            // Whatever the client prepends (as separate elements or as an earlier header line),
            // the result is the same.
            let prefix = forged.join(", ");
            let with_prefix = format!("{prefix}, {honest}");
            if let Ok(v) = HeaderValue::from_str(&with_prefix) {
                let mut h = HeaderMap::new();
                h.insert(name, v);
                prop_assert_eq!(resolve(peer, &h, &trusted(), header), expected);
            }
            if let Ok(v) = HeaderValue::from_str(&prefix) {
                let mut h = HeaderMap::new();
                h.append(name, v);
                h.append(name, HeaderValue::from_str(&honest).unwrap());
                prop_assert_eq!(resolve(peer, &h, &trusted(), header), expected);
            }
        }
    }
}
