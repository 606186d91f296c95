//! The client address of a request behind load balancers and reverse proxies.
//!
//! The TCP peer of a request is usually a load balancer, not the client. Proxies report the
//! address they received the request from in `X-Forwarded-For` or `Forwarded` (RFC 7239), but a
//! client can send those headers too. So a header is believed only as far as it was written by
//! proxies you trust: when the peer is in [`TrustedProxies`], the header is walked right-to-left,
//! skipping trusted hops, and the first untrusted hop is the client. Otherwise the peer itself is
//! the client. See [`resolve`] for the exact rules, including what happens with malformed,
//! `unknown` and obfuscated hops.
//!
//! **Which header** is an explicit setting, [`ForwardingHeader`] (`X-Forwarded-For` by default),
//! never guessed from the request: a proxy that appends to `X-Forwarded-For` passes a client's own
//! `Forwarded` header through, so a resolver that read "whichever is present" would let every
//! client pick its address behind NGINX, ALB or Envoy.
//!
//! - [`IpNet`], [`TrustedProxies`]: the trusted networks (parse `"10.0.0.0/8, ::1"`; presets).
//! - [`ForwardingHeader`]: the header the trusted proxies write.
//! - [`resolve`]: the pure function, allocation-free.
//! - [`ClientIpLayer`] / [`SetClientIp`]: a tower middleware inserting a [`ClientIp`] extension,
//!   reading the peer from a [`PeerAddr`] extension (or, with the `axum` feature, from axum's
//!   `ConnectInfo<SocketAddr>`).
//! - [`ipv6_prefix`]: the `/64` a rate limiter should key IPv6 clients by.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:192.0.2.7`, what a dual-stack socket reports for IPv4
//! peers) are normalised to IPv4 everywhere, so one client never has two spellings.
//!
//! ```
//! use std::convert::Infallible;
//! use http::Request;
//! use tower::{Layer, ServiceExt, service_fn};
//! use welcomedly_core::client_ip::{ClientIp, ClientIpLayer, PeerAddr, TrustedProxies};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Usually from `CoreConfig::trusted_proxies` (env `TRUSTED_PROXIES`).
//! let trusted: TrustedProxies = "10.0.0.0/8".parse()?;
//! // The service sees the resolved address as a request extension.
//! let svc = ClientIpLayer::new(trusted).layer(service_fn(|req: Request<()>| async move {
//!     Ok::<_, Infallible>(req.extensions().get::<ClientIp>().copied())
//! }));
//!
//! // The load balancer (10.0.0.1) forwards a request whose client forged the first entry.
//! let mut req = Request::new(());
//! req.headers_mut().insert("x-forwarded-for", "6.6.6.6, 203.0.113.9".parse()?);
//! req.extensions_mut().insert(PeerAddr("10.0.0.1:40000".parse()?));
//! assert_eq!(svc.oneshot(req).await?, Some(ClientIp("203.0.113.9".parse()?)));
//! # Ok(())
//! # }
//! ```

mod layer;
mod net;
mod resolve;

pub use layer::{ClientIp, ClientIpLayer, MissingClientIp, PeerAddr, SetClientIp};
pub use net::{IpNet, ParseIpNetError, TrustedProxies, ipv6_prefix};
pub use resolve::{ForwardingHeader, MAX_HOPS, ParseForwardingHeaderError, resolve};
