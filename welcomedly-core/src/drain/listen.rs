//! [`ListenConfig`]: the listening socket, inherited from systemd socket activation
//! (`LISTEN_FDS`) or bound here, optionally with `SO_REUSEPORT`.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::CoreConfig;

/// Where the server's listening socket comes from.
///
/// [`listen`](Self::listen) takes the socket systemd (or any supervisor speaking its protocol)
/// passed as fd 3 with `LISTEN_FDS=1` (and `LISTEN_PID` set to this process, or absent), and
/// otherwise binds [`addr`](Self::addr). An inherited socket outlives the process: connections
/// that arrive while one process drains and the next one starts wait in its accept queue instead
/// of being refused or reset, so a restart loses nothing.
///
/// ```
/// use welcomedly_core::drain::ListenConfig;
///
/// let config = ListenConfig::new(([0, 0, 0, 0], 3000).into());
/// assert!(config.inherit);
/// assert!(!config.reuse_port);
/// assert_eq!(config.backlog, 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenConfig {
    /// The address bound when no socket is inherited. Default `0.0.0.0:3000`.
    pub addr: SocketAddr,
    /// Take a socket passed through `LISTEN_FDS` instead of binding. Default `true`.
    pub inherit: bool,
    /// Set `SO_REUSEPORT` before binding, so the next process can listen on the same port
    /// before this one stops (start the new one first, then SIGTERM the old). The kernel spreads
    /// new connections over both; when the old one closes its listener, the connections still in
    /// its accept queue are reset unless `net.ipv4.tcp_migrate_req = 1` (Linux ≥ 5.14) hands them
    /// to the new listener. Every process on the port must set it. Default `false`.
    pub reuse_port: bool,
    /// The accept queue length asked of `listen(2)` (the kernel caps it at
    /// `net.core.somaxconn`). Default 1024.
    pub backlog: u32,
}

impl ListenConfig {
    /// Bind `addr` (or inherit a socket), with the other defaults.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            inherit: true,
            reuse_port: false,
            backlog: 1024,
        }
    }

    /// The listening socket: the inherited one, or a fresh one bound to [`addr`](Self::addr).
    ///
    /// Call it from within a tokio runtime, early in `main`: taking an inherited socket removes
    /// `LISTEN_FDS` and `LISTEN_PID` from the environment (so child processes do not take it too).
    ///
    /// # Errors
    ///
    /// The inherited socket is not a listening TCP socket, more than one was passed, the address
    /// cannot be bound, or there is no tokio runtime; each message says what to do.
    pub fn listen(&self) -> io::Result<tokio::net::TcpListener> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "ListenConfig::listen needs a tokio runtime: call it from async code \
                 (inside #[tokio::main])",
            ));
        }
        let std_listener = match self.inherited()? {
            Some(listener) => listener,
            None => self.bind()?,
        };
        tokio::net::TcpListener::from_std(std_listener)
    }

    fn inherited(&self) -> io::Result<Option<std::net::TcpListener>> {
        if !self.inherit {
            return Ok(None);
        }
        let mut fds = listenfd::ListenFd::from_env();
        match fds.len() {
            0 => return Ok(None),
            1 => {}
            n => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "LISTEN_FDS={n}: this server takes exactly one listening socket; pass \
                         one (a single ListenStream= in the systemd .socket unit)"
                    ),
                ));
            }
        }
        let listener = fds
            .take_tcp_listener(0)
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "LISTEN_FDS=1 but fd 3 is not a TCP socket ({e}); pass a TCP listening \
                         socket (ListenStream=<port>), or unset LISTEN_FDS to bind instead"
                    ),
                )
            })?
            .ok_or_else(|| io::Error::other("the inherited socket was already taken"))?;
        let sock = SockRef::from(&listener);
        if !sock.is_listener()? {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "LISTEN_FDS=1 but fd 3 is a TCP socket that is not listening; call listen() on \
                 it before passing it (systemd does), or unset LISTEN_FDS to bind instead",
            ));
        }
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, "listening on the socket passed by LISTEN_FDS");
        Ok(Some(listener))
    }

    fn bind(&self) -> io::Result<std::net::TcpListener> {
        let socket = Socket::new(
            Domain::for_address(self.addr),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        // What std and tokio do too: a restart can bind while old connections sit in TIME_WAIT.
        #[cfg(unix)]
        socket.set_reuse_address(true)?;
        if self.reuse_port {
            #[cfg(unix)]
            socket.set_reuse_port(true)?;
            #[cfg(not(unix))]
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "SO_REUSEPORT exists on Unix only; set ListenConfig::reuse_port to false",
            ));
        }
        socket.bind(&self.addr.into()).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot bind {}: {e}; choose a free port (PORT), or stop what listens there",
                    self.addr
                ),
            )
        })?;
        let backlog = i32::try_from(self.backlog).unwrap_or(i32::MAX);
        socket.listen(backlog)?;
        socket.set_nonblocking(true)?;
        Ok(socket.into())
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self::new(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 3000)))
    }
}

impl From<&CoreConfig> for ListenConfig {
    /// `0.0.0.0:<port>` of the core config, the other defaults.
    fn from(config: &CoreConfig) -> Self {
        Self::new(SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.port)))
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn loopback(port: u16) -> ListenConfig {
        let mut config = ListenConfig::new(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        // The test process has no LISTEN_FDS, but do not depend on it.
        config.inherit = false;
        config
    }

    #[tokio::test]
    async fn binds_when_nothing_is_inherited() {
        let listener = loopback(0).listen().unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(addr.ip().is_loopback());
        assert_ne!(addr.port(), 0);
        let port = addr.port();
        let err = loopback(port).listen().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("choose a free port"), "{err}");
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn reuse_port_lets_the_next_process_listen_before_this_one_stops() {
        let mut first = loopback(0);
        first.reuse_port = true;
        let old = first.listen().unwrap();
        let mut next = loopback(old.local_addr().unwrap().port());
        next.reuse_port = true;
        let new = next.listen().unwrap();
        assert_eq!(old.local_addr().unwrap(), new.local_addr().unwrap());
    }

    #[test]
    fn listen_outside_a_runtime_is_an_error_not_a_panic() {
        let err = loopback(0).listen().unwrap_err();
        assert!(err.to_string().contains("tokio runtime"), "{err}");
    }
}
