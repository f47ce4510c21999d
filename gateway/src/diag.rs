//! Owns the diagnostic types of config problems: [`SpecError`] (a YAML path and a
//! message, found while a `Spec` is built), the [`Errors`] collector that lets one pass
//! report every problem at once, and [`ConfigError`] / [`ConfigErrors`], the same
//! problems located in a file as `file:line:col: path: message`.
//!
//! Bottom layer: imports nothing from the rest of the crate.

use std::fmt;

/// One problem in a config file, before it is located by line and column.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SpecError {
    /// YAML path such as `routes[3].match.path`; empty for the whole document.
    pub path: String,
    pub message: String,
}

/// Collects every problem of one validation pass, so `gateway check` reports them all.
#[derive(Debug, Default)]
pub struct Errors(pub Vec<SpecError>);

impl Errors {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(SpecError {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Keep the value, or record the error at `path` and return `None`.
    pub fn take<T>(&mut self, path: impl Into<String>, r: Result<T, String>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.push(path, e);
                None
            }
        }
    }

    /// Problems recorded so far; compare before and after a section to see whether it
    /// added any.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One located problem with a config file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConfigError {
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let (Some(l), Some(c)) = (self.line, self.column) {
            write!(f, ":{l}:{c}")?;
        }
        if !self.path.is_empty() {
            write!(f, ": {}", self.path)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one file; `Display` prints one per line.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    /// One problem with the whole file (unreadable, empty, not YAML).
    pub fn single(file: &str, message: String) -> Self {
        Self(vec![ConfigError {
            file: file.to_owned(),
            line: None,
            column: None,
            path: String::new(),
            message,
        }])
    }
}
