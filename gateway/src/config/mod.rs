//! Owns reading a config file into a [`Spec`]: YAML -> `wire` (serde) -> `Spec`
//! (validated), with every error located as `file:line:col: path: message`.
//!
//! YAML is read with `serde_yaml_ng`, a maintained fork of the archived `serde_yaml`
//! with the same API.

pub mod source;
pub mod spec;
mod wire;
mod wire_discovery;
mod wire_policies;
mod wire_protocols;

use std::path::Path;

pub use crate::diag::{ConfigError, ConfigErrors, SpecError};
pub use source::{Location, SourceMap};
pub use spec::discovery_spec::{
    ApiSource, DiscoverySource, DiscoverySpec, KubernetesWatchSpec, TokenSource,
};
pub use spec::{ActionSpec, AdminSpec, AdminToken, ListenerSpec, RouteSpec, ServerSpec, Spec};

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
    let mut wire: wire::File =
        serde_yaml_ng::from_str(text).map_err(|e| ConfigErrors(vec![serde_error(file, &e)]))?;
    // A relative keys_file, certificate, key or CA file (listener or upstream TLS) is next
    // to the config (as a Kubernetes Secret mounted beside a ConfigMap is), wherever the
    // gateway was started from.
    if let Some(dir) = Path::new(file)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        let rebase = |k: &mut String| {
            if Path::new(k.as_str()).is_relative() {
                *k = dir.join(&*k).display().to_string();
            }
        };
        for c in &mut wire.consumers {
            if let Some(k) = c.keys_file.as_mut() {
                rebase(k);
            }
        }
        // So is a relative access-log file.
        if let Some(wire::AccessLog::On(a)) = wire.access_log.as_mut()
            && let Some(p) = a.path.as_mut()
            && p != "stdout"
        {
            rebase(p);
        }
        for t in wire.listeners.iter_mut().filter_map(|l| l.tls.as_mut()) {
            for c in &mut t.certificates {
                rebase(&mut c.cert_file);
                rebase(&mut c.key_file);
            }
            if let Some(ca) = t.client_ca_file.as_mut() {
                rebase(ca);
            }
        }
        for t in wire.upstreams.values_mut().filter_map(|u| u.tls.as_mut()) {
            for f in [
                &mut t.ca_file,
                &mut t.client_cert_file,
                &mut t.client_key_file,
            ]
            .into_iter()
            .flatten()
            {
                if Path::new(f.as_str()).is_relative() {
                    *f = dir.join(&*f).display().to_string();
                }
            }
        }
    }
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
                        // Messages may quote a URL with a password (a Redis URL): they
                        // reach logs and /admin/config.
                        message: crate::redact::urls_in(&e.message).into_owned(),
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
