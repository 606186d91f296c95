//! [`Problem`] and [`ValidationErrors`]: what is wrong with a flag set, and where. A leaf: the
//! model, validation and compiling all report through it, and it depends on none of them.
//! Public as `validate::{Problem, ValidationErrors}` and at the crate root.

use std::fmt;

use serde::Serialize;

/// One problem in a flag set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    path: String,
    message: String,
}

impl Problem {
    /// A problem at `path` (e.g. `flags.new-ui.rules[2].clauses[0].values[0]`).
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }

    /// Where: dotted map keys and `[index]` list positions from the root of the flag set; empty
    /// for the document as a whole.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong and what to do.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a flag set was rejected: one or more [`Problem`]s.
///
/// Serializes as `{"problems": [{"path": …, "message": …}, …]}` (the admin API's 422 body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationErrors {
    problems: Vec<Problem>,
}

impl ValidationErrors {
    /// Every problem, in the order found.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Whether a problem is reported at exactly `path`.
    pub fn has_problem_at(&self, path: &str) -> bool {
        self.problems.iter().any(|p| p.path == path)
    }
}

impl From<Vec<Problem>> for ValidationErrors {
    fn from(problems: Vec<Problem>) -> ValidationErrors {
        ValidationErrors { problems }
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid flag set ({n} problem{})",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(f, "\n- {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}
