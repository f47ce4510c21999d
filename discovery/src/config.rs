//! Owns the YAML configuration of the `discovery` binary: wire structs that mirror the
//! file (`deny_unknown_fields`), parsed into the typed [`WatchConfig`] and
//! [`ServerConfig`], with every problem reported at once with its path.
//!
//! [`WatchWire`] is public so that another config (the gateway's embedded mode) can
//! carry the same `watch:` block.
//!
//! ```yaml
//! listen: 0.0.0.0:8081            # default 127.0.0.1:8081: other hosts only when written
//! token_file: /var/run/secrets/discovery/token   # or env DISCOVERY_TOKEN
//! insecure_no_token: false        # true: serve /v1 without a token (warned at every start)
//! tls:                            # reloaded when the files change
//!   cert_file: /var/run/secrets/discovery-tls/tls.crt
//!   key_file: /var/run/secrets/discovery-tls/tls.key
//! insecure_plaintext: false       # true: plain HTTP on a non-loopback address
//! watch:
//!   source: endpointslices        # or endpoints (legacy v1 Endpoints)
//!   namespaces: [shop]            # empty or absent: all namespaces
//!   label_selector: app.kubernetes.io/part-of=shop
//!   coalesce: { quiet: 100ms, max_delay: 1s }
//!   mass_deletion: { max_removed_share: 0.5, min_endpoints: 10 }
//!   relist: { interval: 5m, after_gap: 30s }   # full relists that repair drift
//! stream:
//!   heartbeat: 10s
//!   history: 256
//!   subscriber_buffer: 64
//! tracing:                        # a span per snapshot build, over OTLP
//!   service_name: discovery       # the default
//!   otlp:
//!     endpoint: http://otel-collector:4318   # else the OTEL_EXPORTER_OTLP_* variables
//!     protocol: http              # or grpc (port 4317)
//!     headers: { x-api-key: ... }
//! ```
//!
//! Without a `tracing:` section, tracing is on only when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the standard variables'
//! settings; otherwise no span is ever built.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::engine::{Coalesce, MassDeletionGuard};
use crate::metrics::DiscoveryMetrics;
use crate::server::ServerConfig;
use crate::tls::CertFiles;
use crate::trace::{Protocol, TraceConfig};
use crate::watcher::{Relist, Source, WatchConfig};

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileWire {
    #[serde(default)]
    pub listen: Option<String>,
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_no_token: bool,
    #[serde(default)]
    pub tls: Option<TlsWire>,
    #[serde(default)]
    pub insecure_plaintext: bool,
    #[serde(default)]
    pub watch: WatchWire,
    #[serde(default)]
    pub stream: StreamWire,
    #[serde(default)]
    pub tracing: Option<TracingWire>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingWire {
    #[serde(default)]
    pub service_name: Option<String>,
    #[serde(default)]
    pub otlp: OtlpWire,
}

#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtlpWire {
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

// Header values may be credentials.
impl fmt::Debug for OtlpWire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpWire")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl TracingWire {
    fn parse(&self, errors: &mut Vec<ConfigError>) -> TraceConfig {
        let mut errs = Errors(errors);
        let mut config = TraceConfig::default();
        match self.service_name.as_deref().map(str::trim) {
            Some("") => errs.push("tracing.service_name".into(), "must not be empty"),
            Some(name) => config.service_name = name.to_owned(),
            None => {}
        }
        let o = &self.otlp;
        config.protocol = match o.protocol.as_deref() {
            None => None,
            Some("http") => Some(Protocol::Http),
            Some("grpc") => Some(Protocol::Grpc),
            Some(other) => {
                errs.push(
                    "tracing.otlp.protocol".into(),
                    format!("{other:?} is not one of http, grpc"),
                );
                None
            }
        };
        if let Some(endpoint) = &o.endpoint {
            match endpoint.parse::<http::Uri>() {
                Ok(u)
                    if matches!(u.scheme_str(), Some("http" | "https"))
                        && u.authority().is_some() =>
                {
                    if u.authority().is_some_and(|a| a.as_str().contains('@')) {
                        errs.push(
                            "tracing.otlp.endpoint".into(),
                            "credentials go in tracing.otlp.headers, not in the URL",
                        );
                    } else if config.protocol == Some(Protocol::Grpc)
                        && u.scheme_str() == Some("https")
                    {
                        errs.push(
                            "tracing.otlp.endpoint".into(),
                            "gRPC export is plaintext here: use http:// or protocol: http with https://",
                        );
                    }
                    config.endpoint = Some(endpoint.clone());
                }
                _ => errs.push(
                    "tracing.otlp.endpoint".into(),
                    format!("{endpoint:?} is not an http:// or https:// URL"),
                ),
            }
        }
        for (k, v) in &o.headers {
            let path = format!("tracing.otlp.headers.{k}");
            if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
                errs.push(path, "is not a header name");
            } else if http::HeaderValue::from_str(v).is_err() {
                errs.push(path, "is not a header value");
            } else {
                config.headers.push((k.to_ascii_lowercase(), v.clone()));
            }
        }
        config
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsWire {
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchWire {
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub label_selector: Option<String>,
    #[serde(default)]
    pub coalesce: CoalesceWire,
    #[serde(default)]
    pub mass_deletion: GuardWire,
    #[serde(default)]
    pub relist: RelistWire,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelistWire {
    /// A full relist this often (jittered by up to a tenth), default 5m...
    #[serde(default)]
    pub interval: Option<String>,
    /// ...and when a watch comes back after failing for longer than this (default 30s).
    #[serde(default)]
    pub after_gap: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoalesceWire {
    #[serde(default)]
    pub quiet: Option<String>,
    #[serde(default)]
    pub max_delay: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardWire {
    #[serde(default)]
    pub max_removed_share: Option<f64>,
    #[serde(default)]
    pub min_endpoints: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamWire {
    #[serde(default)]
    pub heartbeat: Option<String>,
    #[serde(default)]
    pub history: Option<usize>,
    #[serde(default)]
    pub subscriber_buffer: Option<usize>,
}

/// One problem in a config, with the path of the value at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in one config.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

struct Errors<'a>(&'a mut Vec<ConfigError>);

impl Errors<'_> {
    fn push(&mut self, path: String, message: impl Into<String>) {
        self.0.push(ConfigError {
            path,
            message: message.into(),
        });
    }

    fn duration(&mut self, path: String, text: Option<&String>, default: Duration) -> Duration {
        let Some(text) = text else { return default };
        match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => d,
            Ok(_) => {
                self.push(path, "must be greater than zero");
                default
            }
            Err(e) => {
                self.push(path, format!("{text:?} is not a duration: {e}"));
                default
            }
        }
    }
}

impl WatchWire {
    /// The typed watch settings; problems are appended to `errors` under `path`.
    pub fn parse(
        &self,
        path: &str,
        metrics: DiscoveryMetrics,
        errors: &mut Vec<ConfigError>,
    ) -> WatchConfig {
        let mut errs = Errors(errors);
        let mut config = WatchConfig::new(metrics);
        match self.source.as_deref() {
            None | Some("endpointslices") => {}
            Some("endpoints") => config.source = Source::Endpoints,
            Some(other) => errs.push(
                format!("{path}.source"),
                format!("{other:?} is not one of endpointslices, endpoints"),
            ),
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            if ns.is_empty()
                || ns.len() > 63
                || !ns
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            {
                errs.push(
                    format!("{path}.namespaces[{i}]"),
                    format!("{ns:?} is not a namespace name"),
                );
            }
        }
        config.namespaces.clone_from(&self.namespaces);
        match self.label_selector.as_deref().map(str::trim) {
            Some("") => errs.push(format!("{path}.label_selector"), "must not be empty"),
            Some(sel) => match crate::selector::LabelSelector::parse(sel) {
                Ok(_) => config.label_selector = Some(sel.to_owned()),
                Err(e) => errs.push(format!("{path}.label_selector"), e.to_string()),
            },
            None => {}
        }
        let defaults = Coalesce::default();
        let quiet = errs.duration(
            format!("{path}.coalesce.quiet"),
            self.coalesce.quiet.as_ref(),
            defaults.quiet,
        );
        let max_delay = errs.duration(
            format!("{path}.coalesce.max_delay"),
            self.coalesce.max_delay.as_ref(),
            defaults.max_delay,
        );
        if max_delay < quiet {
            errs.push(
                format!("{path}.coalesce.max_delay"),
                "must not be shorter than coalesce.quiet",
            );
        }
        config.coalesce = Coalesce { quiet, max_delay };
        let guard = MassDeletionGuard::default();
        let share = self
            .mass_deletion
            .max_removed_share
            .unwrap_or(guard.max_removed_share);
        if !(share > 0.0 && share <= 1.0) {
            errs.push(
                format!("{path}.mass_deletion.max_removed_share"),
                "must be in (0, 1] (1 disables the guard)",
            );
        }
        let relist = Relist::default();
        config.relist = Relist {
            interval: errs.duration(
                format!("{path}.relist.interval"),
                self.relist.interval.as_ref(),
                relist.interval,
            ),
            after_gap: errs.duration(
                format!("{path}.relist.after_gap"),
                self.relist.after_gap.as_ref(),
                relist.after_gap,
            ),
        };
        config.mass_deletion = MassDeletionGuard {
            max_removed_share: share.clamp(0.0, 1.0),
            min_endpoints: self
                .mass_deletion
                .min_endpoints
                .unwrap_or(guard.min_endpoints),
        };
        config
    }
}

/// The binary's settings after parsing.
#[derive(Debug)]
pub struct FileConfig {
    pub listen: SocketAddr,
    pub token_file: Option<PathBuf>,
    /// `/v1` may be served without a token (written in the file or on the command line).
    pub insecure_no_token: bool,
    /// Serve over TLS with this pair; `None` is plain HTTP (loopback, or written intent).
    pub tls: Option<CertFiles>,
    pub watch: WatchConfig,
    pub server: ServerConfig,
    /// The `tracing:` section; `None` without one (see [`TraceConfig::from_env`]).
    pub tracing: Option<TraceConfig>,
}

/// Loopback: serving other hosts is a decision the operator writes down (`listen:
/// 0.0.0.0:8081`, as the manifests do), never a default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";

impl FileWire {
    pub fn from_yaml(text: &str) -> Result<Self, ConfigErrors> {
        serde_yaml_ng::from_str::<Option<Self>>(text)
            .map(Option::unwrap_or_default)
            .map_err(|e| {
                ConfigErrors(vec![ConfigError {
                    path: e.location().map_or_else(
                        || "(file)".into(),
                        |l| format!("line {} column {}", l.line(), l.column()),
                    ),
                    message: e.to_string(),
                }])
            })
    }

    pub fn parse(&self, metrics: DiscoveryMetrics) -> Result<FileConfig, ConfigErrors> {
        let mut errors = Vec::new();
        let listen_text = self.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
        let listen = listen_text.parse().unwrap_or_else(|_| {
            errors.push(ConfigError {
                path: "listen".into(),
                message: format!("{listen_text:?} is not an address:port"),
            });
            SocketAddr::from(([127, 0, 0, 1], 8081))
        });
        let tls = match &self.tls {
            None => None,
            Some(TlsWire {
                cert_file: Some(cert),
                key_file: Some(key),
            }) => Some(CertFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            Some(_) => {
                errors.push(ConfigError {
                    path: "tls".into(),
                    message: "set both cert_file and key_file".into(),
                });
                None
            }
        };
        if self.tls.is_none() && !listen.ip().is_loopback() && !self.insecure_plaintext {
            errors.push(ConfigError {
                path: "listen".into(),
                message: format!(
                    "{listen} is reachable from other hosts: serve it over TLS (tls: {{cert_file, key_file}}) or write insecure_plaintext: true"
                ),
            });
        }
        let watch = self.watch.parse("watch", metrics, &mut errors);
        let tracing = self.tracing.as_ref().map(|t| t.parse(&mut errors));
        let mut server = ServerConfig::default();
        {
            let mut errs = Errors(&mut errors);
            server.heartbeat = errs.duration(
                "stream.heartbeat".into(),
                self.stream.heartbeat.as_ref(),
                server.heartbeat,
            );
            for (path, value, target) in [
                ("stream.history", self.stream.history, &mut server.history),
                (
                    "stream.subscriber_buffer",
                    self.stream.subscriber_buffer,
                    &mut server.subscriber_buffer,
                ),
            ] {
                match value {
                    Some(0) => errs.push(path.into(), "must be at least 1"),
                    Some(n) => *target = n,
                    None => {}
                }
            }
        }
        if errors.is_empty() {
            Ok(FileConfig {
                listen,
                token_file: self.token_file.clone(),
                insecure_no_token: self.insecure_no_token,
                tls,
                watch,
                server,
                tracing,
            })
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> DiscoveryMetrics {
        DiscoveryMetrics::unregistered().unwrap()
    }

    #[test]
    fn a_full_file_parses_into_typed_settings() {
        let wire = FileWire::from_yaml(
            "listen: 127.0.0.1:9000\nwatch:\n  source: endpoints\n  namespaces: [shop, ops]\n  label_selector: team=web\n  coalesce: { quiet: 50ms, max_delay: 2s }\n  mass_deletion: { max_removed_share: 0.3, min_endpoints: 4 }\nstream: { heartbeat: 5s, history: 10, subscriber_buffer: 8 }\n",
        )
        .unwrap();
        let c = wire.parse(metrics()).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(c.watch.source, Source::Endpoints);
        assert_eq!(c.watch.namespaces, vec!["shop", "ops"]);
        assert_eq!(c.watch.coalesce.quiet, Duration::from_millis(50));
        assert_eq!(c.watch.mass_deletion.min_endpoints, 4);
        assert_eq!(
            (
                c.server.heartbeat,
                c.server.history,
                c.server.subscriber_buffer
            ),
            (Duration::from_secs(5), 10, 8)
        );
        assert!(FileWire::from_yaml("").unwrap().parse(metrics()).is_ok());
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let wire = FileWire::from_yaml(
            "listen: nowhere\nwatch:\n  source: pods\n  namespaces: [Bad_NS]\n  coalesce: { quiet: 2s, max_delay: soon }\n  mass_deletion: { max_removed_share: 0 }\n  relist: { interval: 0s }\nstream: { history: 0 }\n",
        )
        .unwrap();
        let errors = wire.parse(metrics()).unwrap_err().0;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "listen",
                "watch.source",
                "watch.namespaces[0]",
                "watch.coalesce.max_delay",
                "watch.coalesce.max_delay",
                "watch.mass_deletion.max_removed_share",
                "watch.relist.interval",
                "stream.history",
            ]
        );
        assert!(FileWire::from_yaml("watch: { sources: x }").is_err());
    }

    #[test]
    fn other_hosts_need_tls_or_written_intent() {
        let parse = |text: &str| FileWire::from_yaml(text).unwrap().parse(metrics());
        let c = parse("").unwrap();
        assert!(c.listen.ip().is_loopback(), "{:?}", c.listen);
        let errors = parse("listen: 0.0.0.0:8081\n").unwrap_err().0;
        assert_eq!(errors[0].path, "listen", "{errors:?}");
        assert!(parse("listen: 0.0.0.0:8081\ninsecure_plaintext: true\n").is_ok());
        let c = parse("listen: 0.0.0.0:8081\ntls: {cert_file: /c, key_file: /k}\n").unwrap();
        assert_eq!(c.tls.unwrap().key, PathBuf::from("/k"));
        let errors = parse("tls: {cert_file: /c}\n").unwrap_err().0;
        assert_eq!(errors[0].path, "tls", "{errors:?}");
    }

    #[test]
    fn tracing_parses_with_defaults_and_reports_its_errors() {
        let parse = |text: &str| FileWire::from_yaml(text).unwrap().parse(metrics());
        assert!(parse("").unwrap().tracing.is_none());
        let t = parse("tracing: {}\n").unwrap().tracing.unwrap();
        assert_eq!(t, TraceConfig::default());
        assert_eq!(t.service_name, "discovery");
        let t = parse(
            "tracing:\n  service_name: cp\n  otlp: { endpoint: 'http://c:4317', protocol: grpc, headers: { X-Key: s3cret } }\n",
        )
        .unwrap()
        .tracing
        .unwrap();
        assert_eq!(t.service_name, "cp");
        assert_eq!(t.protocol, Some(Protocol::Grpc));
        assert_eq!(t.endpoint.as_deref(), Some("http://c:4317"));
        assert_eq!(t.headers, vec![("x-key".to_owned(), "s3cret".to_owned())]);
        assert!(!format!("{t:?}").contains("s3cret"));
        let errors = parse(
            "tracing:\n  service_name: ' '\n  otlp: { endpoint: 'http://u:p@c', protocol: udp, headers: { 'a b': x } }\n",
        )
        .unwrap_err()
        .0;
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            vec![
                "tracing.service_name",
                "tracing.otlp.protocol",
                "tracing.otlp.endpoint",
                "tracing.otlp.headers.a b",
            ]
        );
        assert!(parse("tracing: { otlp: { endpoint: collector:4318 } }\n").is_err());
        assert!(FileWire::from_yaml("tracing: { sample_ratio: 1 }").is_err());
    }

    #[test]
    fn a_label_selector_the_api_would_refuse_is_a_config_error() {
        let wire = FileWire::from_yaml("watch: { label_selector: 'app in (a' }\n").unwrap();
        let errors = wire.parse(metrics()).unwrap_err().0;
        assert_eq!(errors[0].path, "watch.label_selector", "{errors:?}");
        let ok = FileWire::from_yaml("watch: { label_selector: 'app in (a, b),!legacy' }\n");
        assert!(ok.unwrap().parse(metrics()).is_ok());
    }
}
