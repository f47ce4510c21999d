//! Owns the serde mirror of the YAML file, field for field. Nothing here is validated
//! beyond its shape; these types never leave the `config` module (see `spec`).

use indexmap::IndexMap;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    #[serde(default)]
    pub server: Server,
    #[serde(default)]
    pub listeners: Vec<Listener>,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub upstreams: IndexMap<String, Upstream>,
    #[serde(default)]
    pub rate_limit_policies: IndexMap<String, RateLimitPolicy>,
    /// Where `kubernetes` upstreams get their endpoints.
    pub discovery: Option<Discovery>,
}

/// Exactly one of `kubernetes` (embedded watcher) or `control_plane`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    /// This gateway's zone, for EndpointSlice topology hints.
    pub zone: Option<String>,
    pub kubernetes: Option<KubernetesDiscovery>,
    pub control_plane: Option<ControlPlane>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesDiscovery {
    /// Default: in-cluster config, else `KUBECONFIG` / `~/.kube/config`.
    pub kubeconfig: Option<String>,
    /// Default: all namespaces.
    #[serde(default)]
    pub namespaces: Vec<String>,
    pub label_selector: Option<String>,
    /// `endpointslices` (default) or `endpoints` (the legacy v1 API).
    pub source: Option<String>,
    /// Coalescing: publish after this much quiet (default 100ms)...
    pub quiet: Option<String>,
    /// ...but at most this long after the first change (default 1s).
    pub max_delay: Option<String>,
    /// Mass-deletion guard: hold a change removing more than this percent of all
    /// endpoints (default 50; 100 turns the guard off).
    pub max_removed_percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlane {
    /// `http://host:port` of a `discovery` server.
    pub url: String,
    /// Bearer token read from this file at start...
    pub token_file: Option<String>,
    /// ...or from this environment variable.
    pub token_env: Option<String>,
}

/// A Kubernetes Service port as the upstream's endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesUpstream {
    pub namespace: String,
    pub service: String,
    /// The Service port's name, or its number.
    pub port: PortValue,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    Number(i64),
    Name(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    /// `N/s`, `N/m` or `N/h`.
    pub rate: String,
    /// Default: N.
    pub burst: Option<u32>,
    /// Any of `client_ip`, `route`, `header:NAME`; default `[client_ip]`.
    #[serde(default)]
    pub key: Vec<String>,
    /// `local` (default); `cluster` needs the Redis backend.
    pub scope: Option<String>,
    pub max_keys: Option<usize>,
    #[serde(default)]
    pub legacy_headers: bool,
    /// Cluster scope: `fail_open`, `fail_closed` or `local_fallback` (default).
    pub on_redis_failure: Option<String>,
    /// Cluster scope: replicas sharing the limit (the local fallback allows limit / N).
    pub expected_replicas: Option<u32>,
    /// Cluster scope: `strict` (default) or `batched`.
    pub mode: Option<String>,
    /// Batched mode: cells taken from Redis at once (default 10).
    pub batch_size: Option<u32>,
    /// Batched mode: longest a taken allowance is spent locally (default 100ms).
    pub batch_interval: Option<String>,
}

/// Process-wide settings; changing them takes a restart.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    /// Worker threads for the proxy; default: the number of CPUs.
    pub threads: Option<usize>,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT; default 30s.
    pub shutdown_grace_period: Option<String>,
    /// Largest request head (request line + headers) accepted; default 32 KiB.
    pub max_request_header_bytes: Option<u64>,
    /// Quiet time after a config file change before it is reloaded; default 200ms.
    pub reload_debounce: Option<String>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` / `Forwarded` name the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Redis for `scope: cluster` rate limits.
    pub redis: Option<Redis>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// `redis://host:port/db`.
    pub url: String,
    /// Per call; default 50ms.
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Default `127.0.0.1:9901`: the admin API is never public unless asked for.
    pub address: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    pub id: String,
    #[serde(default, rename = "match")]
    pub matcher: Match,
    pub rewrite: Option<Rewrite>,
    pub request_headers: Option<HeaderOps>,
    pub response_headers: Option<HeaderOps>,
    pub upstream: Option<String>,
    pub split: Option<Vec<SplitTarget>>,
    pub redirect: Option<Redirect>,
    pub direct_response: Option<DirectResponse>,
    /// Per try: the longest wait for the upstream's next bytes.
    pub timeout: Option<String>,
    /// Whole request, all tries and backoffs included.
    pub deadline: Option<String>,
    pub retry: Option<Retry>,
    /// Names of `rate_limit_policies`; all must pass.
    #[serde(default)]
    pub rate_limits: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    pub attempts: Option<u32>,
    /// Any of `connect_failure`, `gateway_error` (502/503/504), `timeout`.
    #[serde(default)]
    pub retry_on: Vec<String>,
    #[serde(default)]
    pub non_idempotent: bool,
    pub backoff_base: Option<String>,
    pub backoff_max: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Match {
    #[serde(default)]
    pub hosts: Vec<String>,
    pub path: Option<PathMatch>,
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    #[serde(default)]
    pub query: Vec<ValueMatch>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
    pub template: Option<String>,
}

/// A header or query-parameter matcher: exactly one of `exact`, `regex`, `present`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueMatch {
    pub name: String,
    pub exact: Option<String>,
    pub regex: Option<String>,
    pub present: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    pub strip_prefix: Option<String>,
    pub regex: Option<RegexRewrite>,
    /// A path with `{name}` placeholders filled from the route's path template.
    pub path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    pub pattern: String,
    pub replacement: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    #[serde(default)]
    pub set: IndexMap<String, String>,
    #[serde(default)]
    pub add: IndexMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitTarget {
    pub upstream: String,
    pub weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redirect {
    pub status: Option<u16>,
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<String>,
    #[serde(default)]
    pub strip_query: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    pub body: Option<String>,
    pub content_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    /// Static endpoints; or `kubernetes`, never both.
    pub endpoints: Option<Vec<Endpoint>>,
    pub kubernetes: Option<KubernetesUpstream>,
    pub load_balancing: Option<String>,
    /// For `consistent_hash`: `header:NAME`, `cookie:NAME`, `client_ip` or `path`.
    pub hash_on: Option<String>,
    /// For `consistent_hash`: cap each endpoint at this multiple of the average load.
    pub bounded_load: Option<f64>,
    pub connect_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub health_check: Option<HealthCheck>,
    pub outlier_detection: Option<OutlierDetection>,
    /// Percent of healthy endpoints below which health is ignored (default 50).
    pub panic_threshold: Option<u32>,
    pub retry_budget: Option<RetryBudget>,
    pub limits: Option<Limits>,
    pub sticky_cookie: Option<StickyCookie>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyCookie {
    pub name: String,
    /// Cookie lifetime; default: a browser-session cookie.
    pub ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    pub address: String,
    pub weight: Option<u32>,
    #[serde(default)]
    pub draining: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `http` (default) or `tcp`.
    pub protocol: Option<String>,
    pub path: Option<String>,
    pub host: Option<String>,
    #[serde(default)]
    pub expected_statuses: Vec<u16>,
    pub interval: Option<String>,
    pub jitter: Option<String>,
    pub timeout: Option<String>,
    pub healthy_threshold: Option<u32>,
    pub unhealthy_threshold: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// 0 turns passive ejection off.
    pub consecutive_failures: Option<u32>,
    pub base_ejection_time: Option<String>,
    pub max_ejection_time: Option<String>,
    pub max_ejection_percent: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBudget {
    pub ratio: Option<f64>,
    pub min_per_second: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_connections: Option<u32>,
    pub max_in_flight: Option<u32>,
    pub max_pending: Option<u32>,
}
