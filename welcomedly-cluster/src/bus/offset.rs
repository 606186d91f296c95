//! [`Offset`]: where a durable event sits in its topic's Redis stream.

use std::fmt;
use std::str::FromStr;

/// A Redis stream entry id, `<milliseconds>-<sequence>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct StreamId {
    pub(crate) ms: u64,
    pub(crate) seq: u64,
}

impl StreamId {
    pub(crate) const ZERO: Self = Self { ms: 0, seq: 0 };

    pub(crate) fn parse(text: &str) -> Option<Self> {
        let (ms, seq) = text.split_once('-')?;
        Some(Self {
            ms: digits(ms)?,
            seq: digits(seq)?,
        })
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

fn digits(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The position of a durable event: its Redis stream id, qualified by the topic's **epoch**
/// (a random id Redis keeps beside the stream; a new one means the history was lost, e.g. a
/// Redis restarted without persistence) and its **sequence number** in the topic (1, 2, 3, …
/// in that epoch), which lets a subscriber see exactly how many events it missed.
///
/// Its text form, `<stream id>.<epoch>.<sequence>` such as `1733080000000-0.9f86d081884c7d65.42`,
/// is what the SSE helper sends as `id:` and reads back from `Last-Event-ID`; at most 63
/// bytes of ASCII.
///
/// ```
/// use welcomedly_cluster::bus::Offset;
///
/// let offset: Offset = "1733080000000-0.9f86d081884c7d65.42".parse().unwrap();
/// assert_eq!(offset.sequence(), 42);
/// assert_eq!(offset.stream_id(), "1733080000000-0");
/// assert_eq!(offset.to_string(), "1733080000000-0.9f86d081884c7d65.42");
/// assert!("not an offset".parse::<Offset>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Offset {
    pub(crate) id: StreamId,
    pub(crate) epoch: u64,
    pub(crate) n: u64,
}

impl Offset {
    /// The Redis stream entry id (`XRANGE` accepts it).
    pub fn stream_id(&self) -> String {
        self.id.to_string()
    }

    /// The topic's epoch this event was published in.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The event's sequence number in its topic and epoch (the first event is 1).
    pub fn sequence(&self) -> u64 {
        self.n
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:016x}.{}", self.id, self.epoch, self.n)
    }
}

/// A text that is not an [`Offset`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidOffset(());

impl fmt::Display for InvalidOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "not a bus offset: expected <ms>-<seq>.<epoch hex>.<sequence> as sent in an SSE id",
        )
    }
}

impl std::error::Error for InvalidOffset {}

impl FromStr for Offset {
    type Err = InvalidOffset;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parse = || {
            if text.len() > 63 {
                return None;
            }
            let mut parts = text.split('.');
            let id = StreamId::parse(parts.next()?)?;
            let epoch = parts.next()?;
            if epoch.len() != 16 || !epoch.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            let epoch = u64::from_str_radix(epoch, 16).ok()?;
            let n = digits(parts.next()?)?;
            if parts.next().is_some() {
                return None;
            }
            Some(Self { id, epoch, n })
        };
        parse().ok_or(InvalidOffset(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_round_trip_through_text() {
        let o = Offset {
            id: StreamId { ms: 17, seq: 3 },
            epoch: u64::MAX,
            n: 9,
        };
        assert_eq!(o.to_string().parse::<Offset>(), Ok(o));
        assert_eq!(
            "0-0.0000000000000001.0".parse::<Offset>().map(|o| o.epoch),
            Ok(1)
        );
    }

    #[test]
    fn malformed_offsets_are_rejected() {
        for bad in [
            "",
            "1-0",
            "1-0.abc.1",
            "1-0.000000000000000g.1",
            "1-0.0000000000000001.1.2",
            "-1-0.0000000000000001.1",
            "1-0.0000000000000001.+1",
            "99999999999999999999999-0.0000000000000001.1",
        ] {
            assert!(bad.parse::<Offset>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn stream_ids_order_by_time_then_sequence() {
        let a = StreamId::parse("5-9").unwrap();
        let b = StreamId::parse("6-0").unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "5-9");
    }
}
