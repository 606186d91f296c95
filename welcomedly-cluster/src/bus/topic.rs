//! [`Topic`]: a typed, validated topic name with its delivery tier.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use crate::Error;

/// The longest topic name, in bytes.
pub const MAX_TOPIC_LEN: usize = 100;

/// How a topic's events travel between instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Tier {
    /// Redis pub/sub: **at most once**. Cheap and fast; an event published while an instance's
    /// subscriber connection is down never reaches that instance (its subscribers are told with
    /// [`Delivery::Interrupted`](super::Delivery::Interrupted)). No offsets, no history.
    Ephemeral,
    /// Redis Streams: **at least once** within the retained history. Every event has an
    /// [`Offset`](super::Offset); a subscriber resumes from its last offset after any
    /// disconnect, and is told with [`Delivery::Gap`](super::Delivery::Gap) when what it
    /// missed is no longer retained.
    Durable,
}

/// A topic: a name the application chooses, the type of its events and its [`Tier`].
///
/// Names are 1 to [`MAX_TOPIC_LEN`] bytes of ASCII letters, digits and `_ - . : /`, so they
/// can be written into Redis key and channel names as they are (no pattern or hash-tag
/// characters, no spaces). Build topics once, at start-up, from constants: a name is never
/// taken from a request.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use welcomedly_cluster::bus::{Tier, Topic};
///
/// #[derive(Serialize, Deserialize)]
/// struct StatusChanged { agent: String, status: String }
///
/// let topic = Topic::<StatusChanged>::durable("agents.status").unwrap();
/// assert_eq!(topic.name(), "agents.status");
/// assert_eq!(topic.tier(), Tier::Durable);
/// assert!(Topic::<StatusChanged>::ephemeral("has space").is_err());
/// ```
pub struct Topic<T> {
    name: Arc<str>,
    tier: Tier,
    _event: PhantomData<fn() -> T>,
}

impl<T> Topic<T> {
    /// A topic of the given tier.
    ///
    /// # Errors
    ///
    /// A configuration error when the name is empty, too long or has a character outside
    /// `A-Z a-z 0-9 _ - . : /`.
    pub fn new(name: &str, tier: Tier) -> Result<Self, Error> {
        validate(name)?;
        Ok(Self {
            name: Arc::from(name),
            tier,
            _event: PhantomData,
        })
    }

    /// An [`Ephemeral`](Tier::Ephemeral) topic (pub/sub, at most once).
    ///
    /// # Errors
    ///
    /// See [`new`](Self::new).
    pub fn ephemeral(name: &str) -> Result<Self, Error> {
        Self::new(name, Tier::Ephemeral)
    }

    /// A [`Durable`](Tier::Durable) topic (Redis Streams, at least once, with offsets).
    ///
    /// # Errors
    ///
    /// See [`new`](Self::new).
    pub fn durable(name: &str) -> Result<Self, Error> {
        Self::new(name, Tier::Durable)
    }

    /// The topic's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic's tier.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    pub(crate) fn shared_name(&self) -> &Arc<str> {
        &self.name
    }
}

impl<T> Clone for Topic<T> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            tier: self.tier,
            _event: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Topic<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topic")
            .field("name", &self.name)
            .field("tier", &self.tier)
            .field("event", &std::any::type_name::<T>())
            .finish()
    }
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/')
}

pub(crate) fn validate(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_TOPIC_LEN {
        return Err(Error::invalid(format!(
            "a bus topic name must be 1 to {MAX_TOPIC_LEN} bytes long, this one is {}",
            name.len()
        )));
    }
    if let Some(bad) = name.bytes().find(|b| !allowed(*b)) {
        return Err(Error::invalid(format!(
            "the bus topic name {:?} has the character {:?}: use only ASCII letters, digits and _ - . : /",
            name.escape_default().to_string(),
            char::from(bad).escape_default().to_string()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_bounded_in_length_and_charset() {
        assert!(validate("agents.status").is_ok());
        assert!(validate("tenant/42:calls_v2-x").is_ok());
        assert!(validate(&"a".repeat(MAX_TOPIC_LEN)).is_ok());
        assert!(validate(&"a".repeat(MAX_TOPIC_LEN + 1)).is_err());
        for bad in ["", "a b", "{tag}", "a*", "x?", "[x]", "é", "a\nb"] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }
}
