//! Owns a provider's keys over time (`KeyStore`) and the background service that keeps
//! JWKS URLs fresh. A store outlives config reloads: the runtime hands the same store to
//! the next runtime while the provider's name and key source are unchanged.
//!
//! - Fetched at start; `/readyz` waits for the first success or `start_timeout`.
//! - Refreshed on the response's `Cache-Control: max-age`, clamped to
//!   [`refresh_min`, `refresh_max`]; failures retry with backoff (250 ms doubling, up to
//!   `refresh_max`).
//! - An unknown `kid` refreshes at most once per `refresh_min`, single-flight: requests
//!   queue on one lock and whoever finds that a fetch completed while it waited does not
//!   fetch again. A `kid` still unknown after that is refused without fetching for
//!   `negative_cache`.
//! - A failed fetch keeps the last good keys until they are `max_stale` old; after that
//!   (or before the first success) the provider has no keys and answers 503.
//! - Each fetch is a client span (through OpenTelemetry's global tracer, a no-op
//!   without `tracing:`): a child of the request's span when an unknown `kid` of a
//!   traced request triggered it, a trace of its own when the schedule did.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::{Value, json};

use super::keys::{Key, KeySet};
use crate::metrics::Metrics;

/// A JWKS URL and how it is kept fresh.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JwksSpec {
    pub url: String,
    pub refresh_min: Duration,
    pub refresh_max: Duration,
    pub timeout: Duration,
    pub start_timeout: Duration,
    pub max_stale: Duration,
    pub negative_ttl: Duration,
}

/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// Unknown kids remembered at most; beyond that the oldest are forgotten.
const MAX_NEGATIVE: usize = 1024;
const FIRST_RETRY: Duration = Duration::from_millis(250);

#[derive(Debug, Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    last_attempt_wall: Option<SystemTime>,
    last_success_wall: Option<SystemTime>,
    last_error: Option<String>,
    next_due: Option<Instant>,
    failures: u32,
    body_hash: Option<u64>,
}

/// The keys of one provider, and (for a JWKS URL) their refresh state.
pub struct KeyStore {
    pub provider: Arc<str>,
    /// Provider name plus key source: a reload keeps the store while this is unchanged.
    pub fingerprint: String,
    remote: Option<JwksSpec>,
    keys: ArcSwap<KeySet>,
    created: Instant,
    /// Fetch attempts completed; lets queued requests see that one happened meanwhile.
    fetches: AtomicU64,
    fetch_lock: tokio::sync::Mutex<()>,
    state: Mutex<FetchState>,
    negative: Mutex<HashMap<String, Instant>>,
    client: OnceLock<Result<reqwest::Client, String>>,
    hasher: RandomState,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("provider", &self.provider)
            .field(
                "url",
                &self.remote.as_ref().map(|s| crate::redact::url(&s.url)),
            )
            .field("keys", &self.keys.load().keys.len())
            .finish_non_exhaustive()
    }
}

impl KeyStore {
    /// A store whose keys never change (secret, PEM file, JWKS file).
    pub fn fixed(provider: Arc<str>, fingerprint: String, keys: Vec<Key>) -> KeyStore {
        Self::build(
            provider,
            fingerprint,
            None,
            KeySet {
                keys,
                generation: 1,
                ..KeySet::default()
            },
        )
    }

    /// A store fed by a JWKS URL; it has no keys until the first fetch.
    pub fn remote(provider: Arc<str>, fingerprint: String, spec: JwksSpec) -> KeyStore {
        Self::build(provider, fingerprint, Some(spec), KeySet::default())
    }

    fn build(
        provider: Arc<str>,
        fingerprint: String,
        remote: Option<JwksSpec>,
        keys: KeySet,
    ) -> KeyStore {
        KeyStore {
            provider,
            fingerprint,
            remote,
            keys: ArcSwap::from_pointee(keys),
            created: Instant::now(),
            fetches: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(()),
            state: Mutex::new(FetchState::default()),
            negative: Mutex::new(HashMap::new()),
            client: OnceLock::new(),
            hasher: RandomState::new(),
        }
    }

    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// Completed fetch attempts; read it *before* [`KeyStore::current`] and pass it to
    /// [`KeyStore::refresh_for_unknown_kid`].
    pub fn fetch_count(&self) -> u64 {
        self.fetches.load(Ordering::Acquire)
    }

    /// The keys to verify with now: empty when there never were any, or when the last
    /// good JWKS is older than `max_stale`.
    pub fn current(&self) -> Arc<KeySet> {
        let keys = self.keys.load_full();
        if let (Some(spec), Some(at)) = (&self.remote, keys.fetched_at)
            && at.elapsed() > spec.max_stale
        {
            return Arc::new(KeySet {
                generation: keys.generation,
                ..KeySet::default()
            });
        }
        keys
    }

    /// Ready to serve: keys are not fetched, or the first fetch succeeded, or the start
    /// timeout passed (then requests get 503 until keys arrive).
    pub fn ready(&self) -> bool {
        match &self.remote {
            None => true,
            Some(spec) => {
                self.keys.load().fetched_at.is_some()
                    || self.created.elapsed() >= spec.start_timeout
            }
        }
    }

    /// Seconds a client should wait before retrying while there are no keys.
    pub fn retry_after(&self) -> u64 {
        let due = self.state.lock().ok().and_then(|s| s.next_due);
        due.map_or(1, |d| {
            d.saturating_duration_since(Instant::now())
                .as_secs()
                .clamp(1, 60)
        })
    }

    fn is_negative(&self, kid: &str) -> bool {
        let ttl = self
            .remote
            .as_ref()
            .map_or(Duration::ZERO, |s| s.negative_ttl);
        self.negative
            .lock()
            .ok()
            .and_then(|n| n.get(kid).map(|at| at.elapsed() < ttl))
            .unwrap_or(false)
    }

    /// Remember that `kid` is not in the JWKS, so the next requests do not fetch.
    pub fn remember_unknown(&self, kid: &str) {
        let Some(spec) = &self.remote else { return };
        if let Ok(mut n) = self.negative.lock() {
            if n.len() >= MAX_NEGATIVE {
                n.retain(|_, at| at.elapsed() < spec.negative_ttl);
                if n.len() >= MAX_NEGATIVE {
                    n.clear();
                }
            }
            // Keep the first refusal's time: repeats must not stretch the entry, or a
            // kid published a moment later would stay refused while traffic lasts.
            let now = Instant::now();
            n.entry(kid.to_owned())
                .and_modify(|at| {
                    if at.elapsed() >= spec.negative_ttl {
                        *at = now;
                    }
                })
                .or_insert(now);
        }
    }

    /// A request met `kid`, which the keys it saw (after `seen` fetches) do not hold.
    /// Fetch once if no fetch happened meanwhile, none happened within `refresh_min`, and
    /// the kid is not remembered as unknown. Concurrent callers share one fetch. Returns
    /// whether the keys may have changed since the caller looked (worth a second look).
    pub async fn refresh_for_unknown_kid(&self, kid: &str, seen: u64, metrics: &Metrics) -> bool {
        let Some(spec) = &self.remote else {
            return false;
        };
        if self.is_negative(kid) {
            return false;
        }
        let _one = self.fetch_lock.lock().await;
        if self.fetch_count() != seen {
            return true;
        }
        let recent = self
            .state
            .lock()
            .ok()
            .and_then(|s| s.last_attempt)
            .is_some_and(|at| at.elapsed() < spec.refresh_min);
        if recent {
            return false;
        }
        self.fetch(spec, metrics, "unknown_kid").await;
        true
    }

    /// Fetch if the refresh schedule says so and no fetch is running (background task).
    pub async fn refresh_if_due(&self, metrics: &Metrics) {
        let Some(spec) = &self.remote else { return };
        let due = self
            .state
            .lock()
            .ok()
            .is_some_and(|s| s.next_due.is_none_or(|d| Instant::now() >= d));
        if !due {
            return;
        }
        let Ok(_one) = self.fetch_lock.try_lock() else {
            return;
        };
        self.fetch(spec, metrics, "schedule").await;
    }

    fn client(&self) -> Result<&reqwest::Client, String> {
        self.client
            .get_or_init(|| {
                let builder = || {
                    reqwest::Client::builder()
                        // Fetches are rare and may come from any of Pingora's runtimes: a
                        // pooled connection would be tied to the runtime that opened it.
                        .pool_max_idle_per_host(0)
                        .redirect(reqwest::redirect::Policy::limited(3))
                        .user_agent("gateway-jwks")
                };
                builder().build().or_else(|e| {
                    // No usable system CA store (a bare container): plain-HTTP JWKS still
                    // work; HTTPS ones fail their fetches, visibly, until CAs are installed.
                    tracing::warn!(error = %e, "no system root certificates; HTTPS JWKS URLs cannot be verified");
                    builder()
                        .tls_built_in_native_certs(false)
                        .build()
                        .map_err(|e| format!("cannot build the HTTP client: {e}"))
                })
            })
            .as_ref()
            .map_err(Clone::clone)
    }

    async fn get(
        &self,
        spec: &JwksSpec,
        status: &mut Option<u16>,
    ) -> Result<(Vec<u8>, Option<Duration>), String> {
        let client = self.client()?;
        let mut resp = client
            .get(&spec.url)
            .header("accept", "application/json")
            .timeout(spec.timeout)
            .send()
            .await
            .map_err(|e| format!("fetch failed: {e}"))?;
        *status = Some(resp.status().as_u16());
        if !resp.status().is_success() {
            return Err(format!("JWKS answered {}", resp.status()));
        }
        let max_age = resp
            .headers()
            .get(http::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(max_age);
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("reading the JWKS failed: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err("JWKS is larger than 1 MiB".into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    }

    /// The span of one fetch, in the current context (see the module doc).
    fn span(&self, spec: &JwksSpec, trigger: &'static str) -> opentelemetry::global::BoxedSpan {
        use opentelemetry::KeyValue;
        use opentelemetry::trace::{SpanKind, Tracer as _};
        let tracer = opentelemetry::global::tracer("gateway");
        let mut attrs = vec![
            KeyValue::new("http.request.method", "GET"),
            KeyValue::new("url.full", crate::redact::url(&spec.url).into_owned()),
            KeyValue::new("gateway.jwt.provider", self.provider.to_string()),
            KeyValue::new("gateway.jwks.trigger", trigger),
        ];
        if let Ok(u) = spec.url.parse::<http::Uri>() {
            if let Some(h) = u.host() {
                attrs.push(KeyValue::new("server.address", h.to_owned()));
            }
            let port = u.port_u16().or(match u.scheme_str() {
                Some("https") => Some(443),
                _ => Some(80),
            });
            if let Some(p) = port {
                attrs.push(KeyValue::new("server.port", i64::from(p)));
            }
        }
        tracer
            .span_builder("GET jwks")
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .start(&tracer)
    }

    /// One fetch; the caller holds `fetch_lock`.
    async fn fetch(&self, spec: &JwksSpec, metrics: &Metrics, trigger: &'static str) {
        use opentelemetry::KeyValue;
        use opentelemetry::trace::{Span as _, Status};
        if let Ok(mut s) = self.state.lock() {
            s.last_attempt = Some(Instant::now());
            s.last_attempt_wall = Some(SystemTime::now());
        }
        let mut span = self.span(spec, trigger);
        let mut status = None;
        let fetched = self.get(spec, &mut status).await;
        if let Some(code) = status {
            span.set_attribute(KeyValue::new("http.response.status_code", i64::from(code)));
        }
        let outcome = match fetched {
            Ok((body, max_age)) => match KeySet::from_jwks(&body) {
                Ok((keys, skipped)) => {
                    self.count_skipped(&skipped, metrics);
                    if keys.is_empty() {
                        Err("JWKS has no usable keys".to_owned())
                    } else {
                        Ok((body, keys, skipped, max_age))
                    }
                }
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        let provider = &*self.provider;
        match outcome {
            Ok((body, keys, skipped, max_age)) => {
                let hash = self.hasher.hash_one(&body);
                let now = Instant::now();
                let old = self.keys.load();
                let (changed, generation) = match self.state.lock() {
                    Ok(s) if s.body_hash == Some(hash) => (false, old.generation),
                    _ => (true, old.generation + 1),
                };
                let count = keys.len();
                self.keys.store(Arc::new(KeySet {
                    keys,
                    generation,
                    fetched_at: Some(now),
                    fetched_at_wall: Some(SystemTime::now()),
                    skipped,
                }));
                if changed && let Ok(mut n) = self.negative.lock() {
                    n.clear();
                }
                let next = max_age
                    .unwrap_or(spec.refresh_max)
                    .clamp(spec.refresh_min, spec.refresh_max);
                if let Ok(mut s) = self.state.lock() {
                    s.body_hash = Some(hash);
                    s.failures = 0;
                    s.last_error = None;
                    s.last_success_wall = Some(SystemTime::now());
                    s.next_due = Some(now + next);
                }
                metrics
                    .jwks_refresh
                    .with_label_values(&[provider, "success"])
                    .inc();
                metrics
                    .jwks_keys
                    .with_label_values(&[provider])
                    .set(count as i64);
                metrics
                    .jwks_last_success
                    .with_label_values(&[provider])
                    .set(unix_seconds(SystemTime::now()));
                span.set_attribute(KeyValue::new("gateway.jwks.keys", count as i64));
                span.set_attribute(KeyValue::new("gateway.jwks.changed", changed));
                tracing::info!(provider, keys = count, changed, "JWKS fetched");
            }
            Err(error) => {
                // Fetch errors quote the URL: keep its credentials and query out of the
                // log and the admin view.
                let error = crate::redact::urls_in(&error).into_owned();
                if let Ok(mut s) = self.state.lock() {
                    s.failures = s.failures.saturating_add(1);
                    let backoff = FIRST_RETRY
                        .saturating_mul(1u32 << (s.failures - 1).min(16))
                        .min(spec.refresh_max);
                    s.next_due = Some(Instant::now() + backoff);
                    s.last_error = Some(error.clone());
                }
                metrics
                    .jwks_refresh
                    .with_label_values(&[provider, "error"])
                    .inc();
                span.set_attribute(KeyValue::new(
                    "error.type",
                    match status {
                        Some(code) if !(200..300).contains(&code) => code.to_string(),
                        Some(_) => "invalid_jwks".to_owned(),
                        None => "fetch_failed".to_owned(),
                    },
                ));
                span.set_status(Status::error(error.clone()));
                tracing::warn!(provider, url = %crate::redact::url(&spec.url), %error, "JWKS fetch failed; keeping the last good keys");
            }
        }
        self.fetches.fetch_add(1, Ordering::AcqRel);
        span.end();
    }

    /// Count the keys a fetch left out; weak ones (an attack, or a broken issuer) are
    /// also logged, at every fetch.
    fn count_skipped(&self, skipped: &[String], metrics: &Metrics) {
        let provider = &*self.provider;
        for s in skipped {
            let reason = if s.contains(super::keys::WEAK_KEY) {
                tracing::warn!(provider, key = %s, "JWKS key refused");
                "weak_key"
            } else {
                "unusable"
            };
            metrics
                .jwks_keys_skipped
                .with_label_values(&[provider, reason])
                .inc();
        }
    }

    /// For `/admin/jwt`.
    pub fn describe(&self) -> Value {
        let keys = self.keys.load();
        let usable = self.current();
        let state = self.state.lock();
        let wall =
            |t: Option<SystemTime>| t.map(|t| humantime::format_rfc3339_millis(t).to_string());
        let (attempt, success, error, due) = match &state {
            Ok(s) => (
                wall(s.last_attempt_wall),
                wall(s.last_success_wall),
                s.last_error.clone(),
                s.next_due
                    .map(|d| d.saturating_duration_since(Instant::now()).as_secs()),
            ),
            Err(_) => (None, None, None, None),
        };
        json!({
            "source": self.remote.as_ref().map_or("static", |_| "jwks_url"),
            "url": self.remote.as_ref().map(|s| crate::redact::url(&s.url)),
            "ready": self.ready(),
            "key_ids": keys.kids(),
            "usable_keys": usable.keys.len(),
            "generation": keys.generation,
            "skipped_keys": keys.skipped,
            "fetched_at": wall(keys.fetched_at_wall),
            "last_fetch": {
                "attempted_at": attempt,
                "succeeded_at": success,
                "error": error,
                "next_in_seconds": due,
            },
        })
    }

    /// Seconds since the epoch of the last good fetch (0: never).
    pub fn last_success_unix(&self) -> f64 {
        self.state
            .lock()
            .ok()
            .and_then(|s| s.last_success_wall)
            .map_or(0.0, unix_seconds)
    }
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `max-age` of a `Cache-Control` value; `no-cache`/`no-store` count as 0.
pub fn max_age(cache_control: &str) -> Option<Duration> {
    let mut found = None;
    for directive in cache_control.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-cache" || lower == "no-store" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            found = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    found
}

/// How often the background task looks for stores that are due.
const TICK: Duration = Duration::from_millis(100);

/// The key stores of the running runtime's providers: the server hands the service a
/// reader of the runtime store, so this module needs nothing above it.
pub type KeyStoreSource = Box<dyn Fn() -> Vec<Arc<KeyStore>> + Send + Sync>;

/// Keeps every JWKS of the running runtime fresh; runs on Pingora's background runtime.
pub struct JwksService {
    stores: KeyStoreSource,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for JwksService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksService").finish_non_exhaustive()
    }
}

impl JwksService {
    pub fn new(stores: KeyStoreSource, metrics: Arc<Metrics>) -> Self {
        Self { stores, metrics }
    }
}

#[async_trait]
impl BackgroundService for JwksService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            for keys in (self.stores)() {
                let metrics = Arc::clone(&self.metrics);
                if keys.is_remote() {
                    // Each store on its own task: one slow JWKS must not delay the others.
                    tokio::spawn(async move { keys.refresh_if_due(&metrics).await });
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_do_not_stretch_a_negative_entry() {
        let ttl = Duration::from_millis(200);
        let store = KeyStore::remote(
            "p".into(),
            "f".into(),
            JwksSpec {
                url: "http://127.0.0.1:1/jwks.json".into(),
                refresh_min: Duration::from_secs(1),
                refresh_max: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                start_timeout: Duration::from_secs(1),
                max_stale: Duration::from_secs(1),
                negative_ttl: ttl,
            },
        );
        store.remember_unknown("k");
        assert!(store.is_negative("k"));
        std::thread::sleep(ttl * 6 / 10);
        store.remember_unknown("k");
        std::thread::sleep(ttl * 6 / 10);
        // 1.2 x ttl after the first refusal: expired, however often it was repeated.
        assert!(!store.is_negative("k"));
        assert!(!store.is_negative("other"));
    }

    #[test]
    fn cache_control() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("max-age=\"60\""), Some(Duration::from_secs(60)));
        assert_eq!(max_age("no-store"), Some(Duration::ZERO));
        assert_eq!(max_age("public"), None);
        assert_eq!(max_age("max-age=abc"), None);
    }
}
