//! The request id: accepted from `x-request-id` when well-formed, generated otherwise.
//!
//! ```
//! use http::HeaderValue;
//! use welcomedly_core::telemetry::RequestId;
//!
//! let accepted = RequestId::accept(&HeaderValue::from_static("abc-123")).unwrap();
//! assert_eq!(accepted.as_str(), "abc-123");
//! // A space is not a visible character: such an id is refused (and the layer generates one).
//! assert!(RequestId::accept(&HeaderValue::from_static("a b")).is_none());
//! assert_eq!(RequestId::generate().as_str().len(), 36);
//! ```

use std::fmt;

use bytes::Bytes;
use http::HeaderValue;
use http::header::HeaderName;

/// The `x-request-id` header name.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-request-id");

/// The longest request id accepted from a client, in bytes.
pub const MAX_REQUEST_ID_LEN: usize = 128;

/// The id of one request: put in the request's extensions by
/// [`HttpTelemetryLayer`](super::HttpTelemetryLayer), on its span (so on every log line written
/// while serving it) and on the response's `x-request-id` header.
///
/// Handlers read it from the request extensions (with axum: `Extension<RequestId>`). Cloning is
/// cheap (a reference count).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RequestId(HeaderValue);

impl RequestId {
    /// Accepts a client-supplied id when it is well-formed: 1 to [`MAX_REQUEST_ID_LEN`] visible
    /// ASCII characters (`0x21..=0x7E`). Anything else (empty, too long, spaces, control or
    /// non-ASCII bytes) is refused, so a client cannot inject log-breaking text.
    pub fn accept(value: &HeaderValue) -> Option<Self> {
        is_well_formed(value.as_bytes()).then(|| Self(value.clone()))
    }

    /// A fresh random id (a UUID v4, `xxxxxxxx-xxxx-4xxx-yxxx-xxxxxxxxxxxx`).
    pub fn generate() -> Self {
        let mut text = [0; 36];
        uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
        // One allocation shared by every clone (request header, extension, response header); a
        // header value built from a `&str` copies into a `Vec` that allocates again on its first
        // clone.
        match HeaderValue::from_maybe_shared(Bytes::from_owner(text)) {
            Ok(value) => Self(value),
            // Unreachable: a hyphenated UUID is hex digits and hyphens, all valid in a header.
            Err(_) => Self(HeaderValue::from_static(
                "00000000-0000-0000-0000-000000000000",
            )),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Always valid: accepted ids are visible ASCII and generated ones are hex and hyphens.
        self.0.to_str().unwrap_or_default()
    }

    /// The id as a header value, ready to put on an outgoing request or a response.
    pub fn header_value(&self) -> &HeaderValue {
        &self.0
    }
}

/// 1..=128 bytes, each a visible ASCII character.
pub(crate) fn is_well_formed(bytes: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_LEN).contains(&bytes.len())
        && bytes.iter().all(|b| (0x21..=0x7E).contains(b))
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("RequestId").field(&self.as_str()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bounds() {
        assert!(!is_well_formed(b""));
        assert!(is_well_formed(b"!"));
        assert!(is_well_formed(&[b'~'; MAX_REQUEST_ID_LEN]));
        assert!(!is_well_formed(&[b'a'; MAX_REQUEST_ID_LEN + 1]));
        assert!(!is_well_formed(b"a\tb"));
        assert!(!is_well_formed(b"a\x7fb"));
        assert!(!is_well_formed("é".as_bytes()));
    }

    #[test]
    fn generated_ids_are_well_formed_and_distinct() {
        let a = RequestId::generate();
        let b = RequestId::generate();
        assert_ne!(a, b);
        assert!(is_well_formed(a.as_str().as_bytes()));
        assert_eq!(a.as_str().as_bytes()[14], b'4', "UUID version 4");
    }

    proptest! {
        #[test]
        fn accept_agrees_with_the_rule(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let expected = !bytes.is_empty()
                && bytes.len() <= 128
                && bytes.iter().all(|&b| b > b' ' && b < 0x7F);
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let accepted = RequestId::accept(&value);
                prop_assert_eq!(accepted.is_some(), expected);
                if let Some(id) = accepted {
                    prop_assert_eq!(id.as_str().as_bytes(), &bytes[..]);
                }
            }
        }
    }
}
