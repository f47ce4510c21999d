//! Owns the serde mirror of the YAML file, field for field. Nothing here is validated
//! beyond its shape; these types never leave the `config` module (see `spec`).

use indexmap::IndexMap;
use serde::Deserialize;

pub use super::wire_discovery::*;
pub use super::wire_policies::*;
pub use super::wire_protocols::*;

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
    /// Named JWT issuers that routes may require (`routes[].auth.jwt.providers`).
    #[serde(default)]
    pub jwt_providers: IndexMap<String, JwtProvider>,
    /// Where `kubernetes` upstreams get their endpoints.
    pub discovery: Option<Discovery>,
    /// API consumers and their key digests (`routes[].auth.api_key`).
    #[serde(default)]
    pub consumers: Vec<Consumer>,
    /// Named CORS policies that routes and listeners refer to.
    #[serde(default)]
    pub cors_policies: IndexMap<String, Cors>,
    /// The access log: `off`, or where and how lines are written (default: stdout).
    pub access_log: Option<AccessLog>,
    /// OpenTelemetry tracing; absent: no spans, trace headers pass through untouched.
    pub tracing: Option<Tracing>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tracing {
    /// Share of new traces recorded (default 0.01); incoming sampled flags win.
    pub sample_ratio: Option<f64>,
    /// Record the server span of every request answered with a 5xx, sampled or not
    /// (default true).
    pub sample_errors: Option<bool>,
    /// Default `gateway`.
    pub service_name: Option<String>,
    /// Where spans go (the default when neither this nor `file` is set: OTLP with the
    /// `OTEL_EXPORTER_OTLP_*` environment variables).
    pub otlp: Option<Otlp>,
    /// Write spans as JSON lines to this file instead.
    pub file: Option<String>,
    /// Finished spans waiting for export at most (default 2048).
    pub queue_size: Option<usize>,
    /// Spans per export call at most (default 512).
    pub batch_size: Option<usize>,
    /// Longest wait of a partly filled batch (default 1s).
    pub batch_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Otlp {
    pub endpoint: Option<String>,
    /// `http` (protobuf, default) or `grpc`.
    pub protocol: Option<String>,
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    /// Per export call (default 10s).
    pub timeout: Option<String>,
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
    /// One Tokio runtime shared by all threads, which steal each other's tasks (true,
    /// the default), or one single-threaded runtime per thread (false; it measured no
    /// fewer instructions per request, see benches/README.md).
    pub work_stealing: Option<bool>,
    /// Time in-flight requests get to finish after SIGTERM/SIGINT; default 30s.
    pub shutdown_grace_period: Option<String>,
    /// Largest request head (request line + headers) accepted; default 32 KiB.
    pub max_request_header_bytes: Option<u64>,
    /// Quiet time after a config file change before it is reloaded; default 200ms.
    pub reload_debounce: Option<String>,
    /// Proxies (CIDRs) whose `X-Forwarded-For` names the client (the older spelling
    /// of `client_ip.trusted_proxies`).
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Where the client's address comes from behind trusted proxies.
    pub client_ip: Option<ClientIp>,
    /// Redis for `scope: cluster` rate limits.
    pub redis: Option<Redis>,
    /// The process-wide response cache (used by routes with `cache:`).
    pub cache: Option<ServerCache>,
    /// Client-side timeouts of every listener (each may override them).
    pub timeouts: Option<Timeouts>,
    /// Open connections per listener; default 10000, 0 = no limit.
    pub max_connections: Option<u32>,
    /// Open connections from one client address per listener; default: no limit.
    pub max_connections_per_client_ip: Option<u32>,
    /// Largest request body; default 10 MiB, 0 = no limit. Routes may override it.
    pub max_request_body_bytes: Option<Size>,
}

/// Client-side timeouts (`edge::Timeouts`); each defaults to the server-wide value.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Whole request head; default 10s.
    pub request_header: Option<String>,
    /// Longest gap between request body reads; default 30s.
    pub request_body_idle: Option<String>,
    /// Wait for the next request on a connection; default 60s.
    pub keepalive_idle: Option<String>,
    /// Longest blocked write to the client; default 60s.
    pub downstream_write: Option<String>,
}

/// A byte count: a number, or a string such as `64KiB` or `10MiB`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Size {
    Number(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientIp {
    /// `x_forwarded_for` (default), `forwarded`, `x_real_ip` or `peer`.
    pub source: Option<String>,
    /// Proxies (CIDRs or addresses) whose header is believed.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerCache {
    /// Bytes (headers and bodies) the cache may hold; default 256 MiB. LRU eviction.
    pub max_bytes: Option<u64>,
    /// Longest wait for another request filling the same entry; default 5s.
    pub lock_timeout: Option<String>,
}

/// Per-route response caching (RFC 9111).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteCache {
    /// Default true: a `cache:` block turns caching on.
    pub enabled: Option<bool>,
    /// Freshness for responses that declare none; default: such responses are not stored.
    pub default_ttl: Option<String>,
    /// Largest response stored, in bytes; default 8 MiB.
    pub max_object_size: Option<u64>,
    #[serde(default)]
    pub key: CacheKey,
    /// `bypass` (default: responses with Set-Cookie are not stored) or `strip`.
    pub set_cookie: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheKey {
    /// `all` (default), `none`, or a list of parameter names.
    pub query: Option<CacheKeyQuery>,
    /// Request headers whose values are part of the key.
    #[serde(default)]
    pub headers: Vec<String>,
    /// Verified JWT claims whose values are part of the key.
    #[serde(default)]
    pub claims: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum CacheKeyQuery {
    Mode(String),
    Names(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// `redis://host:port/db`.
    pub url: String,
    /// Per call; default 50ms.
    pub timeout: Option<String>,
    /// File holding the password (Redis `AUTH`; e.g. a mounted Kubernetes Secret), read
    /// again on every reconnect. Overrides a password in `url`.
    pub password_file: Option<String>,
    /// When to stop calling a failing Redis, and how to come back.
    pub circuit_breaker: Option<CircuitBreaker>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Open after this many failed calls in a row (default 5).
    pub consecutive_failures: Option<u32>,
    /// ...or when this share of a window's calls failed (default 0.5)...
    pub error_ratio: Option<f64>,
    /// ...over this window (default 10s)...
    pub window: Option<String>,
    /// ...with at least this many calls in it (default 20).
    pub min_calls: Option<u32>,
    /// While open, one call probes Redis this often (default 1s).
    pub probe_interval: Option<String>,
    /// Successful probes in a row that close it (default 2).
    pub close_after: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listener {
    pub name: String,
    pub address: String,
    /// Overrides of `server.timeouts` for this listener.
    pub timeouts: Option<Timeouts>,
    /// Overrides `server.max_connections`.
    pub max_connections: Option<u32>,
    /// Overrides `server.max_connections_per_client_ip`.
    pub max_connections_per_client_ip: Option<u32>,
    /// Client address rules for every request on this listener.
    pub ip: Option<IpRules>,
    /// Default CORS policy of the routes served here.
    pub cors: Option<CorsRef>,
    /// Default response compression of the routes served here.
    pub compression: Option<Compression>,
    /// HTTP/2 with prior knowledge on this plaintext listener (default false).
    #[serde(default)]
    pub h2c: bool,
    /// HTTP/2 limits (h2c, and h2 over TLS by ALPN).
    pub http2: Option<Http2>,
    /// TLS termination; without it the listener is plaintext.
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http2 {
    /// Streams a client may have open at once (default 100).
    pub max_concurrent_streams: Option<u32>,
    /// Decoded request header list, in bytes (default `server.max_request_header_bytes`).
    pub max_header_list_size: Option<String>,
    /// Streams the client reset before the gateway took them up; past this the
    /// connection gets GOAWAY ENHANCE_YOUR_CALM (rapid reset, CVE-2023-44487; default 20).
    pub max_pending_resets: Option<u32>,
    /// Streams the gateway reset for the client's protocol errors; past this, GOAWAY
    /// (default 200).
    pub max_error_resets: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Chosen by SNI against each certificate's SAN; the first is the default.
    pub certificates: Vec<TlsCertificate>,
    /// "1.2" (default) or "1.3".
    pub min_version: Option<String>,
    /// Offered protocols, in preference order (default [h2, http/1.1]).
    pub alpn: Option<Vec<String>>,
    /// Require client certificates issued by these CAs (mTLS).
    pub client_ca_file: Option<String>,
    /// A TLS handshake must finish within this (default `timeouts.request_header`).
    pub handshake_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsCertificate {
    pub cert_file: String,
    pub key_file: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Default `127.0.0.1:9901`: the admin API is never public unless asked for.
    pub address: Option<String>,
    /// Bearer token every admin request needs (health and readiness aside), read from
    /// this file (again whenever it changes)...
    pub token_file: Option<String>,
    /// ...or from this environment variable (at start).
    pub token_env: Option<String>,
    /// `/metrics` without the token (default false).
    #[serde(default)]
    pub metrics_public: bool,
    /// A non-loopback address without a token is refused unless this is true.
    #[serde(default)]
    pub insecure_no_auth: bool,
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
    /// Authentication of the caller, checked after the route matched and before rate limits.
    pub auth: Option<RouteAuth>,
    /// Response caching; off unless present.
    pub cache: Option<RouteCache>,
    /// Overrides `server.max_request_body_bytes` (0 = no limit).
    pub max_request_body_bytes: Option<Size>,
    /// Client address rules, checked right after the route matched.
    pub ip: Option<IpRules>,
    /// CORS: a `cors_policies` name, an inline policy, or false.
    pub cors: Option<CorsRef>,
    /// Response compression; off unless present (or a listener default).
    pub compression: Option<Compression>,
    /// WebSocket upgrades on this route (idle timeout).
    pub websocket: Option<WebSocket>,
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
    /// A gRPC service (and method): sets the path, and needs a gRPC content type.
    pub grpc: Option<GrpcMatch>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathMatch {
    pub exact: Option<String>,
    pub prefix: Option<String>,
    pub regex: Option<String>,
    pub template: Option<String>,
    /// `exact` and `prefix` only: match ignoring ASCII case.
    #[serde(default)]
    pub case_insensitive: bool,
    /// Accept `%2F` / `%5C` in the path (refused with 400 otherwise).
    #[serde(default)]
    pub allow_encoded_slashes: bool,
    /// Accept `;` path parameters (refused with 400 otherwise).
    #[serde(default)]
    pub allow_path_parameters: bool,
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
    /// `http1` (default; for `kubernetes`, from the port's `appProtocol`), `h2c` or `h2`.
    pub protocol: Option<String>,
    /// TLS to the endpoints (`h2` implies it).
    pub tls: Option<UpstreamTls>,
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

/// One JWT issuer: where its keys come from and what a valid token looks like.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtProvider {
    /// Accepted `alg` values, e.g. `[RS256, EdDSA]`; `none` is never accepted.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// HMAC secret, inline (prefer `secret_env`).
    pub secret: Option<String>,
    /// Name of an environment variable holding the HMAC secret.
    pub secret_env: Option<String>,
    /// A PEM public key (RSA, EC or Ed25519).
    pub pem_file: Option<String>,
    /// `kid` of the `secret`/`pem_file` key; tokens with a `kid` must name it.
    pub key_id: Option<String>,
    /// A JWKS document on disk.
    pub jwks_file: Option<String>,
    /// A JWKS fetched over HTTP(S) and refreshed.
    pub jwks: Option<Jwks>,
    /// Accepted `iss`: one string or a list.
    pub issuer: Option<OneOrMany>,
    /// Accepted `aud` values; a token passes when it names any of them.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp`/`nbf`; default 30s, at most 5m.
    pub leeway: Option<String>,
    /// Default true: tokens without `exp` are refused.
    pub require_exp: Option<bool>,
    /// Claims that must be present (and not null).
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Longest token accepted, in bytes; default 8192.
    pub max_token_bytes: Option<usize>,
    /// Where the token is read from, in order: `bearer` (default), `header:NAME`,
    /// `cookie:NAME`, `query:NAME` (the last only with `allow_query_token`).
    #[serde(default)]
    pub token_sources: Vec<String>,
    /// Tokens in URLs end up in logs and browser history; off unless asked for.
    #[serde(default)]
    pub allow_query_token: bool,
    /// `realm` of `WWW-Authenticate`; default: the provider name.
    pub realm: Option<String>,
    pub cache: Option<JwtCache>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Jwks {
    /// `https://...` (or `http://` for loopback and tests).
    pub url: String,
    /// Least time between two fetches (also for unknown-`kid` refreshes); default 30s.
    pub refresh_min: Option<String>,
    /// Longest time keys are used before a refresh, whatever `max-age` says; default 1h.
    pub refresh_max: Option<String>,
    /// Per fetch; default 5s.
    pub timeout: Option<String>,
    /// How long `/readyz` waits for the first fetch; default 10s.
    pub start_timeout: Option<String>,
    /// How long the last good keys keep serving while fetches fail; default 24h.
    pub max_stale: Option<String>,
    /// How long an unknown `kid` is refused without another fetch; default 30s.
    pub negative_cache: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtCache {
    /// Verified tokens kept; default 10000, 0 turns the cache off.
    pub max_entries: Option<usize>,
    /// Longest an entry lives (it also ends at the token's `exp`); default 5m.
    pub ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteAuth {
    pub jwt: Option<RouteJwt>,
    pub api_key: Option<RouteApiKey>,
    /// Alternatives, any one of which passes (a JWT or an API key).
    pub any_of: Option<Vec<AuthAlternative>>,
    /// An external check after the JWT / API key, before rate limits.
    pub forward: Option<ForwardAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteJwt {
    /// Names of `jwt_providers`, tried in order.
    pub providers: Vec<String>,
    /// Default true; false lets requests without a token through (a bad token is
    /// still refused).
    pub required: Option<bool>,
    /// Claim requirements; a failed one is 403 `insufficient_scope`.
    #[serde(default)]
    pub claims: Vec<ClaimRequirement>,
    /// Claim -> upstream request header; client-sent headers of these names are
    /// always removed first.
    #[serde(default)]
    pub claims_to_headers: IndexMap<String, String>,
    /// Remove `Authorization` before forwarding; default false.
    #[serde(default)]
    pub strip_authorization: bool,
}

/// `claim` plus exactly one of `contains`, `any_of`, `equals`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRequirement {
    pub claim: String,
    /// A space-separated string claim (`scope`) or an array holding this value.
    pub contains: Option<String>,
    /// The claim (or any element of an array claim) is one of these.
    pub any_of: Option<Vec<String>>,
    /// The claim equals this value exactly.
    pub equals: Option<serde_json::Value>,
}
