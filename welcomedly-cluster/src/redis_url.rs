//! `REDIS_URL`, read the same way by every component of the crate.

use welcomedly_core::config::EnvReader;

/// The URL schemes redis-rs connects with.
const SCHEMES: [&str; 4] = ["redis://", "rediss://", "unix://", "redis+unix://"];

/// `REDIS_URL`, `None` when unset; a value that is not a Redis URL is recorded in `env` (once,
/// however many components read it).
pub(crate) fn read(env: &mut EnvReader<'_>) -> Option<String> {
    env.read("REDIS_URL", None, |v| {
        SCHEMES
            .iter()
            .any(|s| v.starts_with(s))
            .then(|| Some(v.to_owned()))
            .ok_or("is not a Redis URL: expected redis://[user:password@]host[:port][/db] or rediss://…")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_url_read_by_several_components_is_reported_once() {
        let mut env = EnvReader::from_pairs(&[("REDIS_URL", "http://:pw@cache/")]);
        assert_eq!(read(&mut env), None);
        assert_eq!(read(&mut env), None);
        let err = env.finish(()).unwrap_err();
        assert_eq!(err.invalid_variables().len(), 1);
        assert!(!err.to_string().contains("pw@"), "{err}");
        let mut env = EnvReader::from_pairs(&[("REDIS_URL", "rediss://cache:6380/1")]);
        assert_eq!(read(&mut env).as_deref(), Some("rediss://cache:6380/1"));
    }
}
