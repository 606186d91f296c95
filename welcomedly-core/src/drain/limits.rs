//! Connection caps of the accept loop: at most `max_connections` open at once, at most
//! `max_connections_per_client` from one client address (an IPv4 address, or an IPv6 /64, the
//! block one host usually gets), except from the exempt networks (the load balancer's, which
//! carries many clients). An admitted connection holds a [`Permit`] until it closes; the excess
//! is refused with a [`Refusal`].
//!
//! The per-client table holds an entry only while its address has a connection open, so it never
//! grows past the global cap, whatever addresses clients use.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::client_ip::TrustedProxies;

/// Counters the metrics read; shared by the [`Drain`](super::Drain) and its accept loop.
#[derive(Debug, Default)]
pub(super) struct ConnStats {
    /// Connections open now (admitted and not closed yet).
    pub(super) open: AtomicUsize,
    /// Connections refused because the server had `max_connections` open.
    pub(super) refused_global: AtomicU64,
    /// Connections refused because their client address had `max_connections_per_client` open.
    pub(super) refused_per_client: AtomicU64,
    /// Connections closed because their first request's head did not arrive in time.
    pub(super) first_request_timeouts: AtomicU64,
    /// Keep-alive connections closed because no next request arrived in time.
    pub(super) idle_timeouts: AtomicU64,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The server has `max_connections` open.
    Global,
    /// The client's address has `max_connections_per_client` open.
    PerClient,
}

impl Refusal {
    /// The metric label.
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::PerClient => "per_client",
        }
    }
}

/// The caps and the connections counted against them.
#[derive(Debug)]
pub(super) struct ConnectionLimits {
    max: usize,
    per_client: usize,
    exempt: TrustedProxies,
    stats: Arc<ConnStats>,
    clients: Mutex<HashMap<ClientKey, usize>>,
}

/// What the per-client cap counts by: an IPv4 address, or the /64 of an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    V6Prefix(u64),
}

impl ClientKey {
    fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => Self::V6Prefix(prefix64(v6)),
        }
    }
}

fn prefix64(v6: Ipv6Addr) -> u64 {
    // The upper half of the address: its /64 network.
    let bits = u128::from(v6) >> 64;
    u64::try_from(bits).unwrap_or(u64::MAX)
}

/// An admitted connection's place under the caps; dropping it frees the place.
#[derive(Debug)]
pub(super) struct Permit {
    limits: Arc<ConnectionLimits>,
    /// `None` for an exempt peer (not counted per client).
    client: Option<ClientKey>,
}

impl Permit {
    /// The counters of the server this connection belongs to.
    pub(super) fn stats(&self) -> &ConnStats {
        self.limits.stats()
    }
}

impl ConnectionLimits {
    /// Caps of `max` connections in all and `per_client` from one address outside `exempt`.
    pub(super) fn new(
        max: usize,
        per_client: usize,
        exempt: TrustedProxies,
        stats: Arc<ConnStats>,
    ) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_client,
            exempt,
            stats,
            clients: Mutex::new(HashMap::new()),
        })
    }

    pub(super) fn stats(&self) -> &ConnStats {
        &self.stats
    }

    /// A permit for a connection from `peer`, or why it is refused (also counted).
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Permit, Refusal> {
        // Only the accept loop admits, so a plain load-then-add cannot overshoot the cap.
        if self.stats.open.load(Ordering::Acquire) >= self.max {
            self.stats.refused_global.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Global);
        }
        let client = if self.exempt.contains(peer.to_canonical()) {
            None
        } else {
            let key = ClientKey::of(peer);
            let mut clients = self.clients();
            let count = clients.entry(key).or_insert(0);
            if *count >= self.per_client {
                if *count == 0 {
                    // Only with a cap of 0; never leave an empty entry behind.
                    clients.remove(&key);
                }
                self.stats
                    .refused_per_client
                    .fetch_add(1, Ordering::Relaxed);
                return Err(Refusal::PerClient);
            }
            *count += 1;
            Some(key)
        };
        self.stats.open.fetch_add(1, Ordering::AcqRel);
        Ok(Permit {
            limits: Arc::clone(self),
            client,
        })
    }

    /// Client addresses with a connection open (the table's size).
    #[cfg(test)]
    fn clients_tracked(&self) -> usize {
        self.clients().len()
    }

    fn clients(&self) -> MutexGuard<'_, HashMap<ClientKey, usize>> {
        // A panic while holding the lock leaves plain counters behind, still usable.
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(key) = self.client {
            let mut clients = self.limits.clients();
            if let Some(count) = clients.get_mut(&key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    clients.remove(&key);
                }
            }
        }
        self.limits.stats.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max: usize, per_client: usize, exempt: &str) -> Arc<ConnectionLimits> {
        let exempt = if exempt.is_empty() {
            TrustedProxies::none()
        } else {
            exempt.parse().unwrap()
        };
        ConnectionLimits::new(max, per_client, exempt, Arc::default())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_per_client_cap_refuses_the_excess_and_others_still_get_in() {
        let limits = limits(100, 2, "");
        let a1 = limits.admit(ip("192.0.2.1")).unwrap();
        let _a2 = limits.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            limits.admit(ip("192.0.2.1")).unwrap_err(),
            Refusal::PerClient
        );
        let _b = limits.admit(ip("192.0.2.2")).unwrap();
        drop(a1);
        let _a3 = limits.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(limits.stats().refused_per_client.load(Ordering::Relaxed), 1);
        assert_eq!(limits.stats().open.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_global_cap_refuses_everyone_once_reached() {
        let limits = limits(2, 10, "");
        let _a = limits.admit(ip("192.0.2.1")).unwrap();
        let b = limits.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(limits.admit(ip("192.0.2.3")).unwrap_err(), Refusal::Global);
        drop(b);
        let _c = limits.admit(ip("192.0.2.3")).unwrap();
        assert_eq!(limits.stats().refused_global.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn an_exempt_proxy_is_not_capped_per_client_but_counts_globally() {
        let limits = limits(3, 1, "10.0.0.0/8");
        let permits: Vec<_> = (0..3)
            .map(|_| limits.admit(ip("10.1.2.3")).unwrap())
            .collect();
        assert_eq!(limits.clients_tracked(), 0);
        assert_eq!(limits.admit(ip("10.1.2.3")).unwrap_err(), Refusal::Global);
        drop(permits);
        assert_eq!(limits.stats().open.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn ipv6_counts_by_slash_64_and_mapped_ipv4_as_ipv4() {
        let limits = limits(100, 1, "");
        let _a = limits.admit(ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(
            limits.admit(ip("2001:db8:1:2::ffff")).unwrap_err(),
            Refusal::PerClient,
            "same /64"
        );
        let _b = limits.admit(ip("2001:db8:1:3::1")).unwrap();
        let _c = limits.admit(ip("192.0.2.9")).unwrap();
        assert_eq!(
            limits.admit(ip("::ffff:192.0.2.9")).unwrap_err(),
            Refusal::PerClient
        );
    }

    #[test]
    fn the_table_forgets_an_address_when_its_last_connection_closes() {
        let limits = limits(100, 5, "");
        for n in 0..50u8 {
            let permit = limits.admit(IpAddr::from([192, 0, 2, n])).unwrap();
            drop(permit);
        }
        assert_eq!(limits.clients_tracked(), 0);
        let zero = self::limits(100, 0, "");
        assert_eq!(zero.admit(ip("192.0.2.1")).unwrap_err(), Refusal::PerClient);
        assert_eq!(zero.clients_tracked(), 0);
    }
}
