//! Free loopback ports for test servers.
//!
//! Ports come from `20000..32000`: never a server's default port (6379, 5432: the machine may run
//! its own Redis and PostgreSQL there) and never the ephemeral range `32768..61000`, which can be
//! full of `TIME_WAIT` client sockets after a load test. Each test process starts in its own block
//! of 25 ports (`20000 + (pid % 400) * 25`) and walks upward through a process-global counter, so
//! parallel tests in one process never get the same port and test processes running side by side
//! rarely meet. When they do, the server fails to bind and the caller retries on the next port.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Error;

const FIRST: u32 = 20_000;
const SPAN: u32 = 12_000;
const BLOCK: u32 = 25;
const BLOCKS: u32 = 400;
/// How many candidates [`free_port`] checks before giving up.
const TRIES: usize = 500;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A loopback port nobody listens on right now, below the ephemeral range (so a burst of
/// client sockets in `TIME_WAIT` cannot take it) and distinct from every other port this process
/// was given.
///
/// # Errors
///
/// No port of this process's block is free.
///
/// Binding a listener is the check; std sets `SO_REUSEADDR` like Redis and PostgreSQL do, so a
/// port with lingering `TIME_WAIT` sockets counts as free exactly when the servers can bind it.
pub fn free_port() -> Result<u16, Error> {
    let block_start = (std::process::id() % BLOCKS) * BLOCK;
    for _ in 0..TRIES {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let offset = block_start.wrapping_add(step) % SPAN;
        let Ok(port) = u16::try_from(FIRST + offset) else {
            continue;
        };
        if is_free(port) {
            return Ok(port);
        }
    }
    Err(Error::no_free_port(TRIES))
}

fn is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn ports_are_distinct_in_range_and_taken_ones_are_not_free() {
        let first = free_port().unwrap();
        let second = free_port().unwrap();
        assert_ne!(first, second);
        for port in [first, second] {
            assert!((20_000..32_000).contains(&port), "{port}");
        }

        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, second)).unwrap();
        assert!(!is_free(second));
        drop(listener);
        assert!(is_free(second));
    }
}
