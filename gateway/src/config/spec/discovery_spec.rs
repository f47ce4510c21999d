//! Owns the validated form of Kubernetes discovery in the gateway config: the
//! top-level `discovery` section (embedded watcher or control-plane subscription, plus
//! the gateway's zone) and `kubernetes` upstreams (`namespace`, `service`, `port`).
//! Called from `spec`, which owns the rest of the file.

use std::path::PathBuf;
use std::time::Duration;

use discovery::{PortRef, ServiceKey};

use super::wire;
use super::{Errors, duration};
use crate::upstream::KubernetesUpstreamSpec;

/// Which Kubernetes API the embedded watcher reads endpoints from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiSource {
    /// `discovery.k8s.io/v1` EndpointSlices (the default).
    EndpointSlices,
    /// The legacy `v1` Endpoints API, for old clusters.
    Endpoints,
}

/// Where a control-plane subscriber finds its bearer token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenSource {
    None,
    /// Read at start (an unreadable file fails start-up) and again before every
    /// connection, so a rotated Secret needs no restart.
    File(PathBuf),
    /// Read once at start.
    Env(String),
}

/// The embedded watcher's settings.
#[derive(Clone, Debug, PartialEq)]
pub struct KubernetesWatchSpec {
    /// `None`: in-cluster config, else `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Empty: all namespaces.
    pub namespaces: Vec<String>,
    pub label_selector: Option<String>,
    pub source: ApiSource,
    pub quiet: Duration,
    pub max_delay: Duration,
    /// Percent of all endpoints a single change may remove before it is held.
    pub max_removed_percent: u32,
    /// Full relists: periodically (jittered), and after a watch gap longer than this.
    pub relist_interval: Duration,
    pub relist_after_gap: Duration,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DiscoverySource {
    /// The gateway runs the watcher itself.
    Kubernetes(KubernetesWatchSpec),
    /// The gateway subscribes to a `discovery` control-plane server; over `https` its
    /// certificate is verified against `ca_file` (else the system's roots).
    ControlPlane {
        url: String,
        token: TokenSource,
        ca_file: Option<PathBuf>,
    },
}

/// The validated `discovery` section.
#[derive(Clone, Debug, PartialEq)]
pub struct DiscoverySpec {
    /// For topology hints: endpoints hinted for this zone are preferred.
    pub zone: Option<String>,
    pub source: DiscoverySource,
}

impl DiscoverySpec {
    /// `kubernetes` or `control_plane`, for the admin API and logs.
    pub fn mode(&self) -> &'static str {
        match self.source {
            DiscoverySource::Kubernetes(_) => "kubernetes",
            DiscoverySource::ControlPlane { .. } => "control_plane",
        }
    }
}

/// A DNS-1123 label (Kubernetes namespace and Service names).
fn dns_label(kind: &str, raw: &str) -> Result<(), String> {
    let ok = !raw.is_empty()
        && raw.len() <= 63
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !raw.starts_with('-')
        && !raw.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} {raw:?}: expected a DNS label (1-63 of a-z 0-9 -, starting and ending with a letter or digit)"
        ))
    }
}

/// A Service port: a number 1-65535, or an IANA-style port name (1-15 of a-z 0-9 -,
/// with at least one letter), as Kubernetes requires.
fn port_ref(raw: &wire::PortValue) -> Result<PortRef, String> {
    let number = |n: i64| {
        u16::try_from(n)
            .ok()
            .filter(|n| *n > 0)
            .map(PortRef::Number)
            .ok_or_else(|| format!("port {n} must be between 1 and 65535"))
    };
    match raw {
        wire::PortValue::Number(n) => number(*n),
        wire::PortValue::Name(name) => {
            if let Ok(n) = name.parse::<i64>() {
                return number(n);
            }
            let ok = !name.is_empty()
                && name.len() <= 15
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && name.bytes().any(|b| b.is_ascii_lowercase())
                && !name.starts_with('-')
                && !name.ends_with('-')
                && !name.contains("--");
            if ok {
                Ok(PortRef::Name(name.clone()))
            } else {
                Err(format!(
                    "invalid port name {name:?}: expected a Service port name (1-15 of a-z 0-9 -) or a number"
                ))
            }
        }
    }
}

pub(super) fn kubernetes_upstream(
    e: &mut Errors,
    path: &str,
    k: &wire::KubernetesUpstream,
) -> Option<KubernetesUpstreamSpec> {
    let ns = e.take(
        format!("{path}.namespace"),
        dns_label("namespace", &k.namespace),
    );
    let svc = e.take(
        format!("{path}.service"),
        dns_label("service name", &k.service),
    );
    let port = e.take(format!("{path}.port"), port_ref(&k.port));
    ns?;
    svc?;
    Some(KubernetesUpstreamSpec {
        service: ServiceKey::new(k.namespace.as_str(), k.service.as_str()),
        port: port?,
    })
}

/// A label selector in the API's syntax (`discovery::selector`, the grammar the fake API
/// server also uses). Checked here so a typo is a config error rather than a watch that
/// the API server refuses forever; an empty selector is a mistake, not "everything".
fn label_selector(raw: &str) -> Result<(), String> {
    if raw.trim().is_empty() {
        return Err(format!("invalid label_selector {raw:?}: empty"));
    }
    discovery::selector::LabelSelector::parse(raw)
        .map(|_| ())
        .map_err(|e| format!("invalid label_selector {raw:?}: {e}"))
}

pub(super) fn discovery(e: &mut Errors, d: &wire::Discovery) -> Option<DiscoverySpec> {
    let before = e.0.len();
    let path = "discovery";
    let zone = d.zone.as_ref().and_then(|z| {
        let ok = !z.is_empty()
            && z.len() <= 63
            && z.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            e.push(
                format!("{path}.zone"),
                format!("invalid zone {z:?}: expected a topology zone name such as eu-west-1a"),
            );
        }
        ok.then(|| z.clone())
    });
    let source = match (&d.kubernetes, &d.control_plane) {
        (Some(k), None) => kubernetes_watch(e, &format!("{path}.kubernetes"), k),
        (None, Some(c)) => control_plane(e, &format!("{path}.control_plane"), c),
        (Some(_), Some(_)) => {
            e.push(path, "set only one of kubernetes or control_plane");
            None
        }
        (None, None) => {
            e.push(
                path,
                "set one of kubernetes (embedded watcher) or control_plane",
            );
            None
        }
    };
    if e.0.len() != before {
        return None;
    }
    Some(DiscoverySpec {
        zone,
        source: source?,
    })
}

fn kubernetes_watch(
    e: &mut Errors,
    path: &str,
    k: &wire::KubernetesDiscovery,
) -> Option<DiscoverySource> {
    let before = e.0.len();
    if k.kubeconfig.as_deref().is_some_and(str::is_empty) {
        e.push(
            format!("{path}.kubeconfig"),
            "kubeconfig must be a file path",
        );
    }
    for (i, ns) in k.namespaces.iter().enumerate() {
        e.take(
            format!("{path}.namespaces[{i}]"),
            dns_label("namespace", ns),
        );
    }
    if let Some(sel) = &k.label_selector {
        e.take(format!("{path}.label_selector"), label_selector(sel));
    }
    let source = match k.source.as_deref() {
        None | Some("endpointslices") => ApiSource::EndpointSlices,
        Some("endpoints") => ApiSource::Endpoints,
        Some(other) => {
            e.push(
                format!("{path}.source"),
                format!("unknown source {other:?}: expected endpointslices or endpoints"),
            );
            ApiSource::EndpointSlices
        }
    };
    let quiet = k
        .quiet
        .as_deref()
        .and_then(|q| e.take(format!("{path}.quiet"), duration(q)))
        .unwrap_or(Duration::from_millis(100));
    let max_delay = k
        .max_delay
        .as_deref()
        .and_then(|q| e.take(format!("{path}.max_delay"), duration(q)))
        .unwrap_or(Duration::from_secs(1));
    if max_delay < quiet {
        e.push(
            format!("{path}.max_delay"),
            format!("max_delay {max_delay:?} must be at least quiet {quiet:?}"),
        );
    }
    let max_removed_percent = match k.max_removed_percent {
        Some(p) if !(1..=100).contains(&p) => {
            e.push(
                format!("{path}.max_removed_percent"),
                "max_removed_percent is a percent: 1-100 (100 turns the guard off)",
            );
            50
        }
        Some(p) => p,
        None => 50,
    };
    let relist_interval = k
        .relist_interval
        .as_deref()
        .and_then(|q| e.take(format!("{path}.relist_interval"), duration(q)))
        .unwrap_or(Duration::from_secs(300));
    let relist_after_gap = k
        .relist_after_gap
        .as_deref()
        .and_then(|q| e.take(format!("{path}.relist_after_gap"), duration(q)))
        .unwrap_or(Duration::from_secs(30));
    for (field, value) in [
        ("relist_interval", relist_interval),
        ("relist_after_gap", relist_after_gap),
    ] {
        if value.is_zero() {
            e.push(
                format!("{path}.{field}"),
                format!("{field} must be more than 0"),
            );
        }
    }
    (e.0.len() == before).then(|| {
        DiscoverySource::Kubernetes(KubernetesWatchSpec {
            kubeconfig: k.kubeconfig.as_ref().map(PathBuf::from),
            namespaces: k.namespaces.clone(),
            label_selector: k.label_selector.clone(),
            source,
            quiet,
            max_delay,
            max_removed_percent,
            relist_interval,
            relist_after_gap,
        })
    })
}

fn control_plane(e: &mut Errors, path: &str, c: &wire::ControlPlane) -> Option<DiscoverySource> {
    let before = e.0.len();
    match c.url.parse::<http::Uri>() {
        Ok(uri) if matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some() => {
            if uri.query().is_some() {
                e.push(format!("{path}.url"), "url must not have a query string");
            }
            let https = uri.scheme_str() == Some("https");
            if !https && c.ca_file.is_some() {
                e.push(
                    format!("{path}.ca_file"),
                    "ca_file verifies an https control plane: the url is http",
                );
            }
            if !https && !c.insecure_plaintext && !is_loopback(uri.host().unwrap_or_default()) {
                e.push(
                    format!("{path}.url"),
                    format!(
                        "{:?} is plain http to another host: anyone on the path could feed this gateway endpoints; use https (with ca_file) or write insecure_plaintext: true",
                        c.url
                    ),
                );
            }
        }
        _ => e.push(
            format!("{path}.url"),
            format!(
                "invalid control-plane url {:?}: expected https://host:port",
                c.url
            ),
        ),
    }
    let ca_file = match c.ca_file.as_deref() {
        Some("") => {
            e.push(format!("{path}.ca_file"), "ca_file must be a file path");
            None
        }
        other => other.map(PathBuf::from),
    };
    let token = match (&c.token_file, &c.token_env) {
        (Some(_), Some(_)) => {
            e.push(path, "set only one of token_file or token_env");
            TokenSource::None
        }
        (Some(f), None) if f.is_empty() => {
            e.push(
                format!("{path}.token_file"),
                "token_file must be a file path",
            );
            TokenSource::None
        }
        (Some(f), None) => TokenSource::File(PathBuf::from(f)),
        (None, Some(v)) => {
            let ok = !v.is_empty() && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                e.push(
                    format!("{path}.token_env"),
                    format!("invalid environment variable name {v:?}"),
                );
            }
            TokenSource::Env(v.clone())
        }
        (None, None) => TokenSource::None,
    };
    (e.0.len() == before).then(|| DiscoverySource::ControlPlane {
        url: c.url.trim_end_matches('/').to_owned(),
        token,
        ca_file,
    })
}

/// `localhost` or a loopback address (an IPv6 one in brackets, as URIs write it).
fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_selectors() {
        for ok in [
            "app=web",
            "app==web,tier!=db",
            "app.kubernetes.io/name in (a, b),!legacy",
            "env notin (dev)",
            "managed",
        ] {
            assert!(label_selector(ok).is_ok(), "{ok}");
        }
        for bad in ["", "app=we b", "app in (a", "=x", "a,,b"] {
            assert!(label_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports() {
        use wire::PortValue::*;
        assert_eq!(port_ref(&Number(80)).unwrap(), PortRef::Number(80));
        assert_eq!(
            port_ref(&Name("8080".into())).unwrap(),
            PortRef::Number(8080)
        );
        assert_eq!(
            port_ref(&Name("http-api".into())).unwrap(),
            PortRef::Name("http-api".into())
        );
        for bad in [Number(0), Number(70_000), Number(-1)] {
            assert!(port_ref(&bad).is_err(), "{bad:?}");
        }
        for bad in ["HTTP", "a-very-long-port-name", "-x", "a--b", ""] {
            assert!(port_ref(&Name(bad.into())).is_err(), "{bad}");
        }
    }
}
