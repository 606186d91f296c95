//! Address ranges: [`IpNet`] (one CIDR) and [`TrustedProxies`] (the list whose forwarding headers
//! are believed), plus [`ipv6_prefix`] for keying IPv6 clients by network.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

/// One IP network in CIDR notation, such as `10.0.0.0/8` or `2001:db8::/32`.
///
/// A bare address (`192.0.2.7`, `::1`) is the network of that single address (`/32`, `/128`).
/// Host bits below the prefix are cleared when parsing, so `10.1.2.3/8` is `10.0.0.0/8` (the
/// same leniency as nginx's `set_real_ip_from`). An IPv4-mapped IPv6 network
/// (`::ffff:10.0.0.0/104`) is stored as the IPv4 network it denotes (`10.0.0.0/8`).
///
/// ```
/// use std::net::IpAddr;
/// use welcomedly_core::client_ip::IpNet;
///
/// let net: IpNet = "10.0.0.0/8".parse()?;
/// assert!(net.contains("10.20.30.40".parse::<IpAddr>()?));
/// assert!(net.contains("::ffff:10.1.1.1".parse::<IpAddr>()?)); // IPv4-mapped IPv6
/// assert!(!net.contains("11.0.0.1".parse::<IpAddr>()?));
/// assert_eq!("192.0.2.7".parse::<IpNet>()?.to_string(), "192.0.2.7/32");
/// assert!("10.0.0.0/33".parse::<IpNet>().is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IpNet {
    /// The network address, host bits cleared, never IPv4-mapped IPv6.
    addr: IpAddr,
    /// Prefix length: at most 32 for IPv4, 128 for IPv6.
    prefix_len: u8,
}

impl IpNet {
    /// The network of `addr`'s first `prefix_len` bits, or `None` when `prefix_len` is longer than
    /// the address (more than 32 for IPv4, 128 for IPv6).
    pub fn new(addr: IpAddr, prefix_len: u8) -> Option<Self> {
        let (addr, prefix_len) = match addr {
            IpAddr::V4(_) if prefix_len > 32 => return None,
            IpAddr::V6(_) if prefix_len > 128 => return None,
            // `::ffff:a.b.c.d/n` with n >= 96 only covers mapped IPv4 addresses: store it as the
            // IPv4 network so it matches the normalised addresses `contains` compares against.
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) if prefix_len >= 96 => (IpAddr::V4(v4), prefix_len - 96),
                _ => (addr, prefix_len),
            },
            IpAddr::V4(_) => (addr, prefix_len),
        };
        Some(Self {
            addr: mask(addr, prefix_len),
            prefix_len,
        })
    }

    /// The network address (host bits cleared).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length in bits.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `addr` lies in this network. IPv4-mapped IPv6 addresses are compared as IPv4, and
    /// an IPv4 address lies in an IPv6 network that contains its mapped form (so `::/0` contains
    /// every address).
    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(a)) => {
                u32::from(net) == u32::from(a) & v4_mask(self.prefix_len)
            }
            (IpAddr::V6(net), IpAddr::V6(a)) => {
                u128::from(net) == u128::from(a) & v6_mask(self.prefix_len)
            }
            (IpAddr::V6(net), IpAddr::V4(a)) => {
                u128::from(net) == u128::from(a.to_ipv6_mapped()) & v6_mask(self.prefix_len)
            }
            (IpAddr::V4(_), IpAddr::V6(_)) => false,
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for IpNet {
    type Err = ParseIpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = |kind| ParseIpNetError {
            input: s.to_owned(),
            kind,
        };
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| error(ErrorKind::Address))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max,
            // Digits only: `u8::from_str` would also take `+8`.
            Some(p) if !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()) => {
                p.parse().map_err(|_| error(ErrorKind::Prefix { max }))?
            }
            // Not a number at all (`10.0.0.0/8; 10.1.0.0/16`): the general message fits better
            // than one about the prefix length.
            Some(_) => return Err(error(ErrorKind::Address)),
        };
        Self::new(addr, prefix_len).ok_or_else(|| error(ErrorKind::Prefix { max }))
    }
}

/// Clears the bits of `addr` after the first `prefix_len` (which the caller has checked).
fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & v4_mask(prefix_len))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & v6_mask(prefix_len))),
    }
}

fn v4_mask(prefix_len: u8) -> u32 {
    // `checked_shl` because shifting a u32 by 32 overflows: /0 masks everything away.
    u32::MAX
        .checked_shl(32_u32.saturating_sub(u32::from(prefix_len)))
        .unwrap_or(0)
}

fn v6_mask(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128_u32.saturating_sub(u32::from(prefix_len)))
        .unwrap_or(0)
}

/// `addr` with an IPv6 address cut to its first `prefix_len` bits (at most 128); an IPv4 address
/// (including an IPv4-mapped IPv6 one, which is returned as IPv4) is returned unchanged.
///
/// One IPv6 client usually holds a whole `/64` and can pick any address in it, so a per-address
/// limit would be trivial to dodge: the rate limiter keys IPv6 clients by
/// `ipv6_prefix(ip, 64)`.
///
/// ```
/// use std::net::IpAddr;
/// use welcomedly_core::client_ip::ipv6_prefix;
///
/// let ip: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse()?;
/// assert_eq!(ipv6_prefix(ip, 64), "2001:db8:1:2::".parse::<IpAddr>()?);
/// let v4: IpAddr = "192.0.2.7".parse()?;
/// assert_eq!(ipv6_prefix(v4, 64), v4);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn ipv6_prefix(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & v6_mask(prefix_len.min(128)))),
        v4 => v4,
    }
}

/// The input of [`IpNet::from_str`] or [`TrustedProxies::from_str`] is not a network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseIpNetError {
    /// The offending entry (for a list, the one bad entry, not the whole list).
    input: String,
    kind: ErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorKind {
    Address,
    Prefix { max: u8 },
}

impl ParseIpNetError {
    /// The entry that could not be parsed.
    pub fn input(&self) -> &str {
        &self.input
    }
}

impl fmt::Display for ParseIpNetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ErrorKind::Address => write!(
                f,
                "{:?} is not an IP network: expected an address or address/prefix such as \
                 10.0.0.0/8, 192.0.2.7 or 2001:db8::/32",
                self.input
            ),
            ErrorKind::Prefix { max } => write!(
                f,
                "{:?} has an invalid prefix length: expected /0 to /{max} after the address",
                self.input
            ),
        }
    }
}

impl std::error::Error for ParseIpNetError {}

/// The proxies (load balancers, ingress) whose `Forwarded` / `X-Forwarded-For` headers are
/// believed. The default trusts nobody: only the peer address counts.
///
/// Parses from a comma-separated list of networks (whitespace around entries is ignored, an empty
/// string is the empty list). Cloning is cheap (a reference count).
///
/// ```
/// use std::net::IpAddr;
/// use welcomedly_core::client_ip::TrustedProxies;
///
/// let trusted: TrustedProxies = "10.0.0.0/8, 2001:db8::/32 ,192.0.2.7".parse()?;
/// assert!(trusted.contains("10.9.9.9".parse::<IpAddr>()?));
/// assert!(!trusted.contains("192.0.2.8".parse::<IpAddr>()?));
/// assert!("".parse::<TrustedProxies>()?.is_empty());
///
/// let err = "10.0.0.0/8, 300.0.0.1".parse::<TrustedProxies>().unwrap_err();
/// assert_eq!(err.input(), "300.0.0.1");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies {
    nets: Arc<[IpNet]>,
}

impl TrustedProxies {
    /// Trusts the given networks.
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        Self {
            nets: nets.into_iter().collect(),
        }
    }

    /// Trusts nobody (the default): only the peer address counts.
    pub fn none() -> Self {
        Self::default()
    }

    /// Loopback only (`127.0.0.0/8`, `::1/128`): a reverse proxy on the same host.
    pub fn loopback() -> Self {
        Self::new([
            net(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
            net(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
        ])
    }

    /// Loopback and the private ranges (`10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16`,
    /// `fc00::/7`): a load balancer inside the same private network, as in most clusters.
    /// Only right when no client can reach the service from those ranges directly.
    pub fn private_networks() -> Self {
        Self::new([
            net(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
            net(IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
            net(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8),
            net(IpAddr::V4(Ipv4Addr::new(172, 16, 0, 0)), 12),
            net(IpAddr::V4(Ipv4Addr::new(192, 168, 0, 0)), 16),
            net(IpAddr::V6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0)), 7),
        ])
    }

    /// Whether `addr` (IPv4-mapped IPv6 compared as IPv4) lies in one of the trusted networks.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.nets.iter().any(|n| n.contains(addr))
    }

    /// Whether no network is trusted.
    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// The trusted networks.
    pub fn iter(&self) -> impl Iterator<Item = &IpNet> {
        self.nets.iter()
    }
}

/// A preset network: the prefix lengths above are all in range, so `new` never declines them;
/// falling back to the single address keeps this free of panics regardless.
fn net(addr: IpAddr, prefix_len: u8) -> IpNet {
    IpNet::new(addr, prefix_len).unwrap_or(IpNet {
        addr,
        prefix_len: if addr.is_ipv4() { 32 } else { 128 },
    })
}

impl FromStr for TrustedProxies {
    type Err = ParseIpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let nets = s
            .split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(IpNet::from_str)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self::new(nets))
    }
}

impl fmt::Display for TrustedProxies {
    /// The networks, comma-separated (the format `from_str` reads).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, net) in self.nets.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            fmt::Display::fmt(net, f)?;
        }
        Ok(())
    }
}

impl FromIterator<IpNet> for TrustedProxies {
    fn from_iter<I: IntoIterator<Item = IpNet>>(iter: I) -> Self {
        Self::new(iter)
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_cidrs_and_bare_addresses() {
        let v4: IpNet = "10.0.0.0/8".parse().unwrap();
        assert_eq!((v4.addr(), v4.prefix_len()), (ip("10.0.0.0"), 8));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert_eq!((v6.addr(), v6.prefix_len()), (ip("2001:db8::"), 32));
        assert_eq!("192.0.2.7".parse::<IpNet>().unwrap().prefix_len(), 32);
        assert_eq!("::1".parse::<IpNet>().unwrap().prefix_len(), 128);
        assert_eq!("0.0.0.0/0".parse::<IpNet>().unwrap().prefix_len(), 0);
        // Host bits are cleared.
        assert_eq!(
            "10.1.2.3/8".parse::<IpNet>().unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(
            "2001:db8::/32".parse::<IpNet>().unwrap().to_string(),
            "2001:db8::/32"
        );
    }

    #[test]
    fn rejects_bad_networks_with_a_message_naming_them() {
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/+8",
            "10.0.0.0/08x",
            "10.0.0/8",
            "300.1.1.1",
            "example.com",
            "10.0.0.0/8/8",
            " 10.0.0.0/8",
            "10.0.0.0/1000",
        ] {
            let err = bad.parse::<IpNet>().unwrap_err();
            assert_eq!(err.input(), bad);
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert_eq!(
            "10.0.0.0/33".parse::<IpNet>().unwrap_err().to_string(),
            "\"10.0.0.0/33\" has an invalid prefix length: expected /0 to /32 after the address"
        );
        assert!(
            "nope"
                .parse::<IpNet>()
                .unwrap_err()
                .to_string()
                .contains("expected an address or address/prefix")
        );
    }

    #[test]
    fn contains_respects_prefix_boundaries() {
        let net: IpNet = "172.16.0.0/12".parse().unwrap();
        assert!(net.contains(ip("172.16.0.0")));
        assert!(net.contains(ip("172.31.255.255")));
        assert!(!net.contains(ip("172.32.0.0")));
        assert!(!net.contains(ip("172.15.255.255")));
        assert!(!net.contains(ip("::1")));

        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:ffff::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));

        let single: IpNet = "192.0.2.7".parse().unwrap();
        assert!(single.contains(ip("192.0.2.7")));
        assert!(!single.contains(ip("192.0.2.6")));

        assert!(
            "0.0.0.0/0"
                .parse::<IpNet>()
                .unwrap()
                .contains(ip("8.8.8.8"))
        );
        assert!(!"0.0.0.0/0".parse::<IpNet>().unwrap().contains(ip("::")));
        // `::/0` contains every address, IPv4 ones through their mapped form.
        assert!("::/0".parse::<IpNet>().unwrap().contains(ip("8.8.8.8")));
    }

    #[test]
    fn ipv4_mapped_ipv6_is_normalised_in_networks_and_addresses() {
        let mapped: IpNet = "::ffff:10.0.0.0/104".parse().unwrap();
        assert_eq!(mapped.to_string(), "10.0.0.0/8");
        assert!(mapped.contains(ip("10.1.1.1")));
        assert!(mapped.contains(ip("::ffff:10.1.1.1")));

        let v4: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(v4.contains(ip("::ffff:10.1.1.1")));
        assert!(!v4.contains(ip("::ffff:11.1.1.1")));
        assert_eq!(
            "::ffff:192.0.2.7".parse::<IpNet>().unwrap().to_string(),
            "192.0.2.7/32"
        );
    }

    #[test]
    fn trusted_proxies_parse_lists() {
        let t: TrustedProxies = " 10.0.0.0/8 ,\t2001:db8::/32,192.0.2.7 ".parse().unwrap();
        assert_eq!(t.to_string(), "10.0.0.0/8,2001:db8::/32,192.0.2.7/32");
        assert!(t.contains(ip("10.0.0.1")));
        assert!(t.contains(ip("2001:db8::5")));
        assert!(t.contains(ip("::ffff:192.0.2.7")));
        assert!(!t.contains(ip("192.0.2.8")));
        assert_eq!(t.to_string().parse::<TrustedProxies>().unwrap(), t);

        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
        assert!("  ".parse::<TrustedProxies>().unwrap().is_empty());
        assert!(" , ".parse::<TrustedProxies>().unwrap().is_empty());

        let err = "10.0.0.0/8, 10.0.0.0/40 ,::1"
            .parse::<TrustedProxies>()
            .unwrap_err();
        assert_eq!(err.input(), "10.0.0.0/40");
    }

    #[test]
    fn presets() {
        let none = TrustedProxies::default();
        assert!(none.is_empty());
        assert!(!none.contains(ip("127.0.0.1")));
        assert_eq!(TrustedProxies::none(), none);

        let lo = TrustedProxies::loopback();
        assert!(lo.contains(ip("127.0.0.1")));
        assert!(lo.contains(ip("::1")));
        assert!(lo.contains(ip("::ffff:127.0.0.1")));
        assert!(!lo.contains(ip("10.0.0.1")));

        let private = TrustedProxies::private_networks();
        for inside in [
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "fd00::1",
            "127.0.0.1",
            "::1",
        ] {
            assert!(private.contains(ip(inside)), "{inside}");
        }
        for outside in [
            "8.8.8.8",
            "172.32.0.1",
            "192.169.0.1",
            "2001:db8::1",
            "fe80::1",
        ] {
            assert!(!private.contains(ip(outside)), "{outside}");
        }
    }

    #[test]
    fn ipv6_prefix_masks_only_ipv6() {
        let a = ip("2001:db8:1:2:3:4:5:6");
        assert_eq!(ipv6_prefix(a, 64), ip("2001:db8:1:2::"));
        assert_eq!(ipv6_prefix(a, 48), ip("2001:db8:1::"));
        assert_eq!(ipv6_prefix(a, 128), a);
        assert_eq!(ipv6_prefix(a, 200), a);
        assert_eq!(ipv6_prefix(a, 0), ip("::"));
        assert_eq!(ipv6_prefix(ip("192.0.2.7"), 64), ip("192.0.2.7"));
        assert_eq!(ipv6_prefix(ip("::ffff:192.0.2.7"), 64), ip("192.0.2.7"));
    }
}
