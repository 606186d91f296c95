//! [`EnvReader`]: reading settings from environment variables the way every Welcomedly crate
//! does — blank counts as unset, every variable is checked, and one [`ConfigError`] lists each
//! bad one with its value (URL passwords redacted) and what is expected.

use std::env::VarError;
use std::time::Duration;

use super::{ConfigError, InvalidVariable, check_secret};

/// One variable's raw value: unset (`None`), a value, or (`Err`) a value that is not valid
/// Unicode, given lossily for the message.
type Raw = Option<Result<String, String>>;

/// Reads environment variables one by one, collecting every invalid one instead of stopping at
/// the first: blank counts as unset, and one [`ConfigError`] lists each bad variable with its
/// value (URL passwords redacted) and what is expected.
///
/// Other crates read their own variables through the same reader, so a service gets one error
/// for all of its configuration:
///
/// ```
/// use std::time::Duration;
/// use welcomedly_core::config::{CoreConfig, EnvReader, parse_millis};
///
/// let mut env = EnvReader::from_lookup(|name| match name {
///     "PORT" => Some("http".to_owned()),
///     "MY_TIMEOUT_MS" => Some("soon".to_owned()),
///     _ => None,
/// });
/// let timeout = env.read("MY_TIMEOUT_MS", Duration::from_secs(1), |v| {
///     parse_millis(v).ok_or("is not a duration: expected milliseconds, such as 1500")
/// });
/// let core = CoreConfig::read(&mut env);
/// let err = env.finish((core, timeout)).unwrap_err();
/// assert_eq!(err.invalid_variables().len(), 2);
/// ```
pub struct EnvReader<'a> {
    source: Box<dyn Fn(&str) -> Raw + 'a>,
    invalid: Vec<InvalidVariable>,
}

impl std::fmt::Debug for EnvReader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvReader")
            .field("invalid", &self.invalid)
            .finish_non_exhaustive()
    }
}

impl EnvReader<'static> {
    /// A reader of the process environment.
    pub fn from_env() -> Self {
        Self::from_raw(|name| match std::env::var(name) {
            Ok(value) => Some(Ok(value)),
            Err(VarError::NotPresent) => None,
            Err(VarError::NotUnicode(raw)) => Some(Err(raw.to_string_lossy().into_owned())),
        })
    }
}

impl<'a> EnvReader<'a> {
    /// A reader of the variables `lookup` gives (tests never mutate the process environment).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String> + 'a) -> Self {
        Self::from_raw(move |name| lookup(name).map(Ok))
    }

    /// A reader of exactly these `(name, value)` pairs (tests, and tools that take settings
    /// from somewhere else than the environment).
    pub fn from_pairs(pairs: &[(&str, &str)]) -> EnvReader<'static> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        EnvReader::from_lookup(move |name| {
            owned
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        })
    }

    /// A reader over raw lookups, where `Some(Err(lossy))` is a value that is not valid Unicode.
    pub fn from_raw(source: impl Fn(&str) -> Option<Result<String, String>> + 'a) -> Self {
        Self {
            source: Box::new(source),
            invalid: Vec::new(),
        }
    }

    /// `name`'s value passed through `parse`, or `default` when it is unset or blank (surrounding
    /// whitespace is ignored). When it is invalid, the problem `parse` describes (say what is
    /// wrong and what is expected: `"is not a port: expected an integer 1-65535"`) is recorded
    /// and `default` returned, so the remaining variables are still checked.
    pub fn read<T, P: Into<String>>(
        &mut self,
        name: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, P>,
    ) -> T {
        self.read_value(name, default, parse, false)
    }

    /// Like [`read`](Self::read), for a secret (a token, a signing key): a value `parse`
    /// refuses is never recorded nor shown, only its length, so a start-up error cannot print
    /// it.
    pub fn read_secret<T, P: Into<String>>(
        &mut self,
        name: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, P>,
    ) -> T {
        self.read_value(name, default, parse, true)
    }

    /// [`read`](Self::read) and [`read_secret`](Self::read_secret): a refused `secret` is
    /// recorded by its length only.
    fn read_value<T, P: Into<String>>(
        &mut self,
        name: &'static str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, P>,
        secret: bool,
    ) -> T {
        let bad = |value: String, problem: String| {
            if secret {
                InvalidVariable::secret(name, value.len(), problem)
            } else {
                InvalidVariable {
                    variable: name,
                    value,
                    problem,
                    secret_len: None,
                }
            }
        };
        let raw = match (self.source)(name) {
            None => return default,
            Some(Ok(raw)) => raw,
            Some(Err(lossy)) => {
                self.record(bad(
                    lossy,
                    "is not valid UTF-8: expected a text value".to_owned(),
                ));
                return default;
            }
        };
        let value = raw.trim();
        if value.is_empty() {
            return default;
        }
        match parse(value) {
            Ok(parsed) => parsed,
            Err(problem) => {
                // The secret's length is that of the trimmed value (what was refused).
                let shown = if secret {
                    value.to_owned()
                } else {
                    raw.clone()
                };
                self.record(bad(shown, problem.into()));
                default
            }
        }
    }

    /// A secret of at least [`MIN_SECRET_LEN`](super::MIN_SECRET_LEN) bytes, `None` when unset or blank. A shorter one
    /// is reported by its length only, never its value.
    pub fn secret(&mut self, name: &'static str) -> Option<String> {
        self.read_secret(name, None, |v| check_secret(v).map(|()| Some(v.to_owned())))
    }

    /// Records a bad variable once: several components may read the same one (`REDIS_URL`).
    fn record(&mut self, bad: InvalidVariable) {
        if !self.invalid.iter().any(|v| v.variable == bad.variable) {
            self.invalid.push(bad);
        }
    }

    /// Whether any variable read so far was invalid.
    pub fn has_problems(&self) -> bool {
        !self.invalid.is_empty()
    }

    /// `value` when every variable read was valid, else the error listing each bad one.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] with every invalid variable, in the order they were read.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        let mut invalid = self.invalid;
        match invalid.len() {
            0 => Ok(value),
            1 => Err(ConfigError::Invalid(invalid.remove(0))),
            _ => Err(ConfigError::Several(invalid)),
        }
    }
}

/// A whole number of milliseconds (digits only: no sign, no unit).
pub fn parse_millis(value: &str) -> Option<Duration> {
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().map(Duration::from_millis)
}
