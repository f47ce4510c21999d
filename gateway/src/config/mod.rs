//! Owns reading a config file into a [`Spec`]: YAML -> `wire` (serde) -> `Spec`
//! (validated), with every error located as `file:line:col: path: message`.
//!
//! YAML is read with `serde_yaml_ng`, a maintained fork of the archived `serde_yaml`
//! with the same API.

pub mod discovery_spec;
pub mod source;
pub mod spec;
mod wire;

use std::fmt;
use std::path::Path;

pub use discovery_spec::{
    ApiSource, DiscoverySource, DiscoverySpec, KubernetesUpstreamSpec, KubernetesWatchSpec,
    TokenSource,
};
pub use source::{Location, SourceMap};
pub use spec::{ActionSpec, ListenerSpec, RouteSpec, ServerSpec, Spec, SpecError, UpstreamSpec};

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
    fn single(file: &str, message: String) -> Self {
        Self(vec![ConfigError {
            file: file.to_owned(),
            line: None,
            column: None,
            path: String::new(),
            message,
        }])
    }
}

/// serde_yaml errors read "path: message at line L column C"; split them up.
fn serde_error(file: &str, err: &serde_yaml_ng::Error) -> ConfigError {
    let mut message = err.to_string();
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    let (path, message) = match message.split_once(": ") {
        Some((p, m))
            if !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._[]-".contains(&b)) =>
        {
            (p.to_owned(), m.to_owned())
        }
        _ => (String::new(), message),
    };
    let location = err.location();
    ConfigError {
        file: file.to_owned(),
        line: location.as_ref().map(|l| l.line()),
        column: location.as_ref().map(|l| l.column()),
        path,
        message,
    }
}

/// Parse and validate config text. `file` names the source in error messages.
pub fn parse(text: &str, file: &str) -> Result<Spec, ConfigErrors> {
    if text.trim().is_empty() {
        return Err(ConfigErrors::single(file, "config file is empty".into()));
    }
    let wire: wire::File =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigErrors(vec![serde_error(file, &e)]))?;
    Spec::try_from(wire).map_err(|errors| {
        let map = SourceMap::index(text);
        ConfigErrors(
            errors
                .into_iter()
                .map(|e| {
                    let loc = map.locate(&e.path);
                    ConfigError {
                        file: file.to_owned(),
                        line: loc.map(|l| l.line),
                        column: loc.map(|l| l.column),
                        path: e.path,
                        message: e.message,
                    }
                })
                .collect(),
        )
    })
}

/// Read and parse a config file, returning the spec and the exact bytes it came from.
pub fn load(path: &Path) -> Result<(Spec, String), ConfigErrors> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigErrors::single(&name, format!("cannot read config file: {e}")))?;
    let spec = parse(&text, &name)?;
    Ok((spec, text))
}

#[cfg(test)]
mod tests;
