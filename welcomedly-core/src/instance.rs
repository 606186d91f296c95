//! The identity of this process among the identical instances of a service.
//!
//! ```
//! use welcomedly_core::InstanceId;
//!
//! let id = InstanceId::new("api-1");
//! assert_eq!(id.as_str(), "api-1");
//! assert_ne!(InstanceId::generate(), InstanceId::generate());
//! ```

use std::fmt;
use std::sync::Arc;

/// The identity of one instance (process) of a service: on every response (`x-instance-id`), in
/// `/health`, on every log line and as the OpenTelemetry `service.instance.id`.
///
/// Cloning is cheap (a reference count).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct InstanceId(Arc<str>);

impl InstanceId {
    /// An instance id chosen by the operator (for instance a pod name).
    pub fn new(id: impl Into<Arc<str>>) -> Self {
        Self(id.into())
    }

    /// A fresh id: the host name (when known), the process id and 32 random bits, such as
    /// `web-3-4242-9f2c1a7b`. Unique enough that two processes never share one.
    pub fn generate() -> Self {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/etc/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
                    .filter(|h| !h.is_empty())
            })
            .unwrap_or_else(|| "instance".to_owned());
        let random = uuid::Uuid::new_v4().as_u128() as u32;
        Self(format!("{host}-{}-{random:08x}", std::process::id()).into())
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InstanceId").field(&&*self.0).finish()
    }
}

impl Default for InstanceId {
    fn default() -> Self {
        Self::generate()
    }
}
