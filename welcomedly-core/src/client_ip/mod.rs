//! client_ip (in progress)

/// Trusted proxy CIDRs (in progress).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {}
