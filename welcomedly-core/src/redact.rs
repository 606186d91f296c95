//! Keeping credentials out of error messages and logs.
//!
//! A connection URL such as `redis://:secret@cache:6379/0` or
//! `postgres://app:secret@db/app` carries its password in the userinfo part. Every error and log
//! line of Welcomedly that shows a URL passes it through [`redact_url`] first; use it in your own
//! messages too.
//!
//! ```
//! use welcomedly_core::redact::redact_url;
//!
//! assert_eq!(redact_url("redis://:hunter2@cache:6379/0"), "redis://:***@cache:6379/0");
//! assert_eq!(
//!     redact_url(r#"cannot use "postgres://app:s3cret@db/app?sslmode=require""#),
//!     r#"cannot use "postgres://app:***@db/app?sslmode=require""#
//! );
//! // Nothing to hide: the text comes back borrowed, unchanged.
//! assert_eq!(redact_url("redis://cache:6379"), "redis://cache:6379");
//! ```

use std::borrow::Cow;

/// What a password is replaced with.
pub const REDACTED: &str = "***";

/// `text` with the password of every URL in it replaced by [`REDACTED`].
///
/// A URL is found by its `scheme://`; its authority runs to the next `/`, `?`, `#`, whitespace,
/// quote or the end of the text, and the userinfo is what precedes the authority's last `@`.
/// `user:password@` becomes `user:***@`; a userinfo without `:` (`token@host`, as some services
/// put a token in the user name) is replaced whole, since it cannot be told from a secret.
/// Allocates only when something is replaced.
pub fn redact_url(text: &str) -> Cow<'_, str> {
    let mut out: Option<String> = None;
    // Position in `text` up to which `out` holds the (redacted) copy.
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text.get(search..).and_then(|rest| rest.find("://")) {
        let authority_start = search + found + 3;
        let rest = text.get(authority_start..).unwrap_or_default();
        let authority_len = rest
            .find(|c: char| matches!(c, '/' | '?' | '#' | '"' | '\'' | '`') || c.is_whitespace())
            .unwrap_or(rest.len());
        let authority = rest.get(..authority_len).unwrap_or_default();
        search = authority_start + authority_len;
        let Some(at) = authority.rfind('@') else {
            continue;
        };
        let userinfo = authority.get(..at).unwrap_or_default();
        let keep = match userinfo.find(':') {
            Some(colon) => colon + 1,
            None => 0,
        };
        let secret_start = authority_start + keep;
        let secret_end = authority_start + at;
        if secret_start == secret_end && keep > 0 {
            // `user:@host`: an empty password, nothing to hide.
            continue;
        }
        let buf = out.get_or_insert_with(|| String::with_capacity(text.len()));
        buf.push_str(text.get(copied..secret_start).unwrap_or_default());
        buf.push_str(REDACTED);
        copied = secret_end;
    }
    match out {
        None => Cow::Borrowed(text),
        Some(mut buf) => {
            buf.push_str(text.get(copied..).unwrap_or_default());
            Cow::Owned(buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn passwords_are_replaced() {
        assert_eq!(redact_url("redis://:pw@h:1/"), "redis://:***@h:1/");
        assert_eq!(redact_url("redis://u:pw@h"), "redis://u:***@h");
        assert_eq!(redact_url("rediss://u:p@ss@h/0"), "rediss://u:***@h/0");
        assert_eq!(
            redact_url("https://token@api.example"),
            "https://***@api.example"
        );
        assert_eq!(
            redact_url("a redis://:x@h b postgres://u:y@db/app"),
            "a redis://:***@h b postgres://u:***@db/app"
        );
        assert_eq!(redact_url("\"redis://:x@h\""), "\"redis://:***@h\"");
    }

    #[test]
    fn text_without_credentials_is_borrowed() {
        for text in [
            "",
            "redis://h:6379",
            "no url",
            "x://",
            "http://h/a@b",
            "u:@h",
        ] {
            assert!(matches!(redact_url(text), Cow::Borrowed(_)), "{text}");
        }
        assert_eq!(redact_url("http://u:@h"), "http://u:@h");
    }

    proptest! {
        #[test]
        fn the_password_never_survives(user in "[a-z]{0,8}", pw in "[A-Za-z0-9!$%&*+,;=]{1,16}",
                                       host in "[a-z]{1,8}", path in "(/[a-z]{0,5})?",
                                       before in "[ a-z]{0,5}") {
            let url = format!("{before}redis://{user}:{pw}@{host}{path}");
            let redacted = redact_url(&url);
            prop_assert_eq!(
                redacted.as_ref(),
                format!("{before}redis://{user}:{REDACTED}@{host}{path}")
            );
        }

        #[test]
        fn never_panics(text in "\\PC{0,64}") {
            let _ = redact_url(&text);
        }
    }
}
