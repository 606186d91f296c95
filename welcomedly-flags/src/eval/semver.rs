//! Semantic versions (semver 2.0.0) parsed without allocating and compared by precedence.
//!
//! `major.minor.patch`, then an optional `-pre.release` and an optional `+build` (ignored for
//! precedence). Numbers have no leading zeros; no `v` prefix.

use std::cmp::Ordering;

/// A parsed version borrowing its pre-release from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Semver<'a> {
    major: u64,
    minor: u64,
    patch: u64,
    pre: &'a str,
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || (s.len() > 1 && s.starts_with('0')) || !s.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    s.parse().ok()
}

fn identifiers_ok(s: &str, numeric_rule: bool) -> bool {
    s.split('.').all(|id| {
        !id.is_empty()
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && (!numeric_rule
                || !id.bytes().all(|b| b.is_ascii_digit())
                || id.len() == 1
                || !id.starts_with('0'))
    })
}

impl<'a> Semver<'a> {
    pub(crate) fn parse(s: &'a str) -> Option<Semver<'a>> {
        let (rest, build) = match s.split_once('+') {
            Some((rest, build)) => (rest, Some(build)),
            None => (s, None),
        };
        if build.is_some_and(|b| !identifiers_ok(b, false)) {
            return None;
        }
        let (core, pre) = match rest.split_once('-') {
            Some((core, pre)) => {
                if !identifiers_ok(pre, true) {
                    return None;
                }
                (core, pre)
            }
            None => (rest, ""),
        };
        let mut parts = core.split('.');
        let major = number(parts.next()?)?;
        let minor = number(parts.next()?)?;
        let patch = number(parts.next()?)?;
        if parts.next().is_some() {
            return None;
        }
        Some(Semver {
            major,
            minor,
            patch,
            pre,
        })
    }

    /// flagd's reading of a version (Go's `golang.org/x/mod/semver`, which flagd uses): an
    /// optional `v` prefix, and `1` or `1.2` standing for `1.0.0` and `1.2.0` (a pre-release or
    /// build suffix needs all three numbers). Build metadata is ignored for precedence.
    #[cfg(feature = "flagd")]
    pub(crate) fn parse_flagd(s: &'a str) -> Option<Semver<'a>> {
        let s = s.strip_prefix('v').unwrap_or(s);
        // One pass over `1`, `1.2` or `1.2.3` (the common case, evaluated per request); anything
        // with a suffix takes the full parser.
        let mut parts = [0u64; 3];
        let mut part = 0usize;
        let mut len = 0usize;
        let mut leading_zero = false;
        for b in s.bytes() {
            match b {
                b'0'..=b'9' => {
                    if len == 1 && leading_zero {
                        return None;
                    }
                    leading_zero = len == 0 && b == b'0';
                    let slot = parts.get_mut(part)?;
                    *slot = slot.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
                    len += 1;
                }
                b'.' => {
                    if len == 0 {
                        return None;
                    }
                    part += 1;
                    len = 0;
                    leading_zero = false;
                }
                _ => return Semver::parse(s),
            }
        }
        if len == 0 || part > 2 {
            return None;
        }
        let [major, minor, patch] = parts;
        Some(Semver {
            major,
            minor,
            patch,
            pre: "",
        })
    }

    /// `(major, minor)`, for flagd's `~` (same minor) and `^` (same major).
    #[cfg(feature = "flagd")]
    pub(crate) fn major_minor(&self) -> (u64, u64) {
        (self.major, self.minor)
    }

    pub(crate) fn precedence(&self, other: &Semver<'_>) -> Ordering {
        (self.major, self.minor, self.patch)
            .cmp(&(other.major, other.minor, other.patch))
            .then_with(|| compare_pre(self.pre, other.pre))
    }
}

fn compare_pre(a: &str, b: &str) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => return Ordering::Equal,
        // A release outranks its pre-releases.
        (true, false) => return Ordering::Greater,
        (false, true) => return Ordering::Less,
        (false, false) => {}
    }
    let mut xs = a.split('.');
    let mut ys = b.split('.');
    loop {
        match (xs.next(), ys.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) => {
                let nx = x.bytes().all(|c| c.is_ascii_digit());
                let ny = y.bytes().all(|c| c.is_ascii_digit());
                let ord = match (nx, ny) {
                    // Numeric identifiers without leading zeros: longer is larger.
                    (true, true) => x.len().cmp(&y.len()).then_with(|| x.cmp(y)),
                    (true, false) => Ordering::Less,
                    (false, true) => Ordering::Greater,
                    (false, false) => x.cmp(y),
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
        }
    }
}

/// A version owned by a compiled clause.
#[derive(Debug, Clone)]
pub(crate) struct OwnedSemver {
    major: u64,
    minor: u64,
    patch: u64,
    pre: Box<str>,
}

impl OwnedSemver {
    pub(crate) fn parse(s: &str) -> Option<OwnedSemver> {
        let v = Semver::parse(s)?;
        Some(OwnedSemver {
            major: v.major,
            minor: v.minor,
            patch: v.patch,
            pre: v.pre.into(),
        })
    }

    /// [`Semver::parse_flagd`], owned (a constant compared against in a flagd rule).
    #[cfg(feature = "flagd")]
    pub(crate) fn parse_flagd(s: &str) -> Option<OwnedSemver> {
        let v = Semver::parse_flagd(s)?;
        Some(OwnedSemver {
            major: v.major,
            minor: v.minor,
            patch: v.patch,
            pre: v.pre.into(),
        })
    }

    pub(crate) fn borrow(&self) -> Semver<'_> {
        Semver {
            major: self.major,
            minor: self.minor,
            patch: self.patch,
            pre: &self.pre,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_spec_precedence_example() {
        // The ordering example from semver.org §11.
        let order = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "2.0.0",
            "2.1.0",
            "2.1.1",
        ];
        for pair in order.windows(2) {
            let [a, b] = pair else { unreachable!() };
            let (a, b) = (Semver::parse(a).unwrap(), Semver::parse(b).unwrap());
            assert_eq!(a.precedence(&b), Ordering::Less, "{a:?} < {b:?}");
            assert_eq!(b.precedence(&a), Ordering::Greater);
        }
        let a = Semver::parse("1.2.3+build.5").unwrap();
        let b = Semver::parse("1.2.3").unwrap();
        assert_eq!(a.precedence(&b), Ordering::Equal);
    }

    #[test]
    fn rejects_malformed_versions() {
        for bad in [
            "",
            "1",
            "1.2",
            "1.2.3.4",
            "01.2.3",
            "1.02.3",
            "v1.2.3",
            "1.2.3-",
            "1.2.3-01",
            "1.2.3+",
            "1.2.3-a..b",
            "1.2.x",
            "1.2.3-é",
        ] {
            assert!(Semver::parse(bad).is_none(), "{bad:?}");
        }
        assert!(Semver::parse("0.0.0-0.a-b+x.y-z").is_some());
    }

    #[cfg(feature = "flagd")]
    #[test]
    fn flagd_reading_takes_v_prefix_and_partial_versions() {
        let full = |s| {
            Semver::parse("1.0.0")
                .unwrap()
                .precedence(&Semver::parse_flagd(s).unwrap())
        };
        for same in [
            "1",
            "1.0",
            "v1",
            "v1.0",
            "v1.0.0",
            "1.0.0+build.7",
            "v1.0.0+x",
        ] {
            assert_eq!(full(same), Ordering::Equal, "{same}");
        }
        assert_eq!(Semver::parse_flagd("v1.2.3-rc.1").unwrap().pre, "rc.1");
        for bad in [
            "",
            "v",
            "vv1",
            "1.",
            "1..2",
            "1.2.3.4",
            "01",
            "1.02",
            "1-rc",
            "1.2-rc",
            "V1.0.0",
            "1.0.0-",
            "not-a-version",
        ] {
            assert!(Semver::parse_flagd(bad).is_none(), "{bad:?}");
        }
    }
}
