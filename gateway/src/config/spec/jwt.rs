//! Owns parsing `jwt_providers` and `routes[].auth` from wire form into typed specs:
//! algorithms, key material (secrets, PEM and JWKS files are read and parsed here, so a
//! bad key is a config error with its path), JWKS refresh bounds, token sources and
//! claim requirements. A child of `spec`, sharing its error collector.

use std::time::Duration;

use http::HeaderName;
use indexmap::IndexMap;
use jsonwebtoken::Algorithm;

use super::wire;
use super::{Errors, header_name, writable_header_name};
use crate::auth::jwks::JwksSpec;
use crate::auth::keys::{Key, KeySet};
use crate::auth::validate::Policy;
use crate::auth::{ClaimRule, ClaimTest, KeySource, ProviderSpec, RouteJwtSpec, TokenSource};

const MAX_LEEWAY: Duration = Duration::from_secs(300);
const MAX_LONG: Duration = Duration::from_secs(7 * 24 * 3600);
const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// A duration between 1 ms and 7 days.
fn long_duration(raw: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(raw.trim())
        .map_err(|e| format!("invalid duration {raw:?}: {e} (write e.g. 250ms, 30s, 1h)"))?;
    if d < Duration::from_millis(1) {
        return Err(format!("duration {raw:?} must be at least 1ms"));
    }
    if d > MAX_LONG {
        return Err(format!("duration {raw:?} is longer than the 7d maximum"));
    }
    Ok(d)
}

fn opt_long(e: &mut Errors, path: String, raw: Option<&str>, default: Duration) -> Duration {
    raw.and_then(|r| e.take(path, long_duration(r)))
        .unwrap_or(default)
}

fn algorithm(raw: &str) -> Result<Algorithm, String> {
    if raw.eq_ignore_ascii_case("none") {
        return Err("algorithm \"none\" (unsigned tokens) is never accepted".into());
    }
    raw.parse::<Algorithm>().map_err(|_| {
        format!(
            "unknown algorithm {raw:?}: use HS256/384/512, RS256/384/512, PS256/384/512, ES256/384 or EdDSA"
        )
    })
}

fn token_source(raw: &str, allow_query: bool) -> Result<TokenSource, String> {
    match raw.split_once(':') {
        None if raw == "bearer" => Ok(TokenSource::Bearer),
        Some(("header", name)) => header_name(name).map(TokenSource::Header),
        Some(("cookie", name)) if !name.is_empty() && !name.contains([';', '=', ' ']) => {
            Ok(TokenSource::Cookie(name.into()))
        }
        Some(("query", name)) if !name.is_empty() && !name.contains(['&', '=', ' ']) => {
            if allow_query {
                Ok(TokenSource::Query(name.into()))
            } else {
                Err("tokens in the query string end up in logs; set allow_query_token: true to accept them".into())
            }
        }
        _ => Err(format!(
            "invalid token source {raw:?}: expected bearer, header:NAME, cookie:NAME or query:NAME"
        )),
    }
}

/// A short, non-reversible tag for key material, so a changed key file or secret gets a
/// new key store without the secret ever appearing in a fingerprint.
fn tag(bytes: &[u8]) -> String {
    use std::hash::{DefaultHasher, Hasher};
    let mut h = DefaultHasher::new();
    h.write(bytes);
    format!("{:016x}", h.finish())
}

fn key_source(e: &mut Errors, path: &str, p: &wire::JwtProvider) -> Option<KeySource> {
    let set: Vec<&str> = [
        ("secret", p.secret.is_some()),
        ("secret_env", p.secret_env.is_some()),
        ("pem_file", p.pem_file.is_some()),
        ("jwks_file", p.jwks_file.is_some()),
        ("jwks", p.jwks.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, set)| set.then_some(k))
    .collect();
    if set.len() != 1 {
        e.push(
            path,
            "set exactly one key source: secret, secret_env, pem_file, jwks_file or jwks",
        );
        return None;
    }
    if p.key_id.is_some() && (p.jwks.is_some() || p.jwks_file.is_some()) {
        e.push(
            format!("{path}.key_id"),
            "key_id is for secret and pem_file keys; JWKS keys carry their own kid",
        );
    }
    let kid = p.key_id.as_deref();
    let secret = |e: &mut Errors, field: &str, bytes: &[u8]| {
        if bytes.len() < 32 {
            e.push(
                format!("{path}.{field}"),
                "an HMAC secret must be at least 32 bytes",
            );
            return None;
        }
        Some(KeySource::Fixed {
            keys: vec![Key::secret(bytes, kid)],
            fingerprint: format!("secret:{}:{kid:?}", tag(bytes)),
        })
    };
    if let Some(s) = &p.secret {
        return secret(e, "secret", s.as_bytes());
    }
    if let Some(var) = &p.secret_env {
        return match std::env::var(var) {
            Ok(s) => secret(e, "secret_env", s.as_bytes()),
            Err(_) => {
                e.push(
                    format!("{path}.secret_env"),
                    format!("environment variable {var:?} is not set"),
                );
                None
            }
        };
    }
    if let Some(file) = &p.pem_file {
        let p = format!("{path}.pem_file");
        let bytes = e.take(
            p.clone(),
            std::fs::read(file).map_err(|err| format!("cannot read {file:?}: {err}")),
        )?;
        let key = e.take(
            p,
            Key::from_pem(&bytes, kid).map_err(|m| format!("{file:?}: {m}")),
        )?;
        return Some(KeySource::Fixed {
            keys: vec![key],
            fingerprint: format!("pem:{}:{kid:?}", tag(&bytes)),
        });
    }
    if let Some(file) = &p.jwks_file {
        let p = format!("{path}.jwks_file");
        let bytes = e.take(
            p.clone(),
            std::fs::read(file).map_err(|err| format!("cannot read {file:?}: {err}")),
        )?;
        let (keys, skipped) = e.take(p.clone(), KeySet::from_jwks(&bytes))?;
        // A file is under the operator's control: a weak key in it is a mistake (or an
        // attack on the file) to fix, not to skip.
        let weak: Vec<&String> = skipped
            .iter()
            .filter(|s| s.contains(crate::auth::keys::WEAK_KEY))
            .collect();
        if !weak.is_empty() {
            for w in weak {
                e.push(p.clone(), format!("{file:?}: {w}"));
            }
            return None;
        }
        if keys.is_empty() {
            e.push(p, format!("{file:?} has no usable keys"));
            return None;
        }
        return Some(KeySource::Fixed {
            keys,
            fingerprint: format!("jwks_file:{}", tag(&bytes)),
        });
    }
    let j = p.jwks.as_ref()?;
    let jp = format!("{path}.jwks");
    let url_ok = j.url.starts_with("https://") || j.url.starts_with("http://");
    if !url_ok || j.url.parse::<http::Uri>().is_err() {
        e.push(
            format!("{jp}.url"),
            format!("invalid JWKS URL {:?}: expected https://host/path", j.url),
        );
    }
    let refresh_min = opt_long(
        e,
        format!("{jp}.refresh_min"),
        j.refresh_min.as_deref(),
        Duration::from_secs(30),
    );
    let refresh_max = opt_long(
        e,
        format!("{jp}.refresh_max"),
        j.refresh_max.as_deref(),
        Duration::from_secs(3600),
    );
    if refresh_max < refresh_min {
        e.push(
            format!("{jp}.refresh_max"),
            "refresh_max must not be shorter than refresh_min",
        );
    }
    let spec = JwksSpec {
        url: j.url.clone(),
        refresh_min,
        refresh_max: refresh_max.max(refresh_min),
        timeout: opt_long(
            e,
            format!("{jp}.timeout"),
            j.timeout.as_deref(),
            Duration::from_secs(5),
        ),
        start_timeout: opt_long(
            e,
            format!("{jp}.start_timeout"),
            j.start_timeout.as_deref(),
            Duration::from_secs(10),
        ),
        max_stale: opt_long(
            e,
            format!("{jp}.max_stale"),
            j.max_stale.as_deref(),
            Duration::from_secs(24 * 3600),
        ),
        negative_ttl: opt_long(
            e,
            format!("{jp}.negative_cache"),
            j.negative_cache.as_deref(),
            Duration::from_secs(30),
        ),
    };
    url_ok.then_some(KeySource::Jwks(spec))
}

pub(super) fn provider_spec(
    e: &mut Errors,
    path: &str,
    name: &str,
    p: &wire::JwtProvider,
) -> Option<ProviderSpec> {
    let before = e.0.len();
    if !super::route_id_ok(name) {
        e.push(
            path,
            format!("provider name {name:?} must be 1-128 of A-Z a-z 0-9 - _ . :"),
        );
    }
    let keys = key_source(e, path, p);
    if p.algorithms.is_empty() {
        e.push(
            format!("{path}.algorithms"),
            "list the accepted algorithms, e.g. [RS256]",
        );
    }
    let algorithms: Vec<Algorithm> = p
        .algorithms
        .iter()
        .enumerate()
        .filter_map(|(i, a)| e.take(format!("{path}.algorithms[{i}]"), algorithm(a)))
        .collect();
    // A secret verifies only HMAC; a public key never does (that is the classic
    // "RSA public key used as an HMAC secret" confusion).
    let hmac_source = p.secret.is_some() || p.secret_env.is_some();
    for (i, a) in algorithms.iter().enumerate() {
        let hmac = a.family() == jsonwebtoken::AlgorithmFamily::Hmac;
        if hmac_source && !hmac {
            e.push(
                format!("{path}.algorithms[{i}]"),
                format!("{a:?} needs a public key; a secret verifies only HS256/384/512"),
            );
        }
        if p.pem_file.is_some() && hmac {
            e.push(
                format!("{path}.algorithms[{i}]"),
                format!("{a:?} needs a secret, not a public key"),
            );
        }
    }
    let issuers = match &p.issuer {
        None => Vec::new(),
        Some(wire::OneOrMany::One(s)) => vec![s.clone()],
        Some(wire::OneOrMany::Many(v)) => v.clone(),
    };
    if issuers.is_empty() || issuers.iter().any(String::is_empty) {
        e.push(
            format!("{path}.issuer"),
            "name the accepted issuer (iss), one string or a list",
        );
    }
    if p.audiences.iter().any(String::is_empty) {
        e.push(
            format!("{path}.audiences"),
            "audiences must not be empty strings",
        );
    }
    let leeway = opt_long(
        e,
        format!("{path}.leeway"),
        p.leeway.as_deref(),
        Duration::from_secs(30),
    );
    if leeway > MAX_LEEWAY {
        e.push(format!("{path}.leeway"), "leeway must be at most 5m");
    }
    let max_token_bytes = p.max_token_bytes.unwrap_or(8192);
    if !(256..=MAX_TOKEN_BYTES).contains(&max_token_bytes) {
        e.push(
            format!("{path}.max_token_bytes"),
            format!("max_token_bytes must be between 256 and {MAX_TOKEN_BYTES}"),
        );
    }
    let sources: Vec<TokenSource> = if p.token_sources.is_empty() {
        vec![TokenSource::Bearer]
    } else {
        p.token_sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                e.take(
                    format!("{path}.token_sources[{i}]"),
                    token_source(s, p.allow_query_token),
                )
            })
            .collect()
    };
    let realm = p.realm.clone().unwrap_or_else(|| name.to_owned());
    if realm.is_empty()
        || realm.contains(['"', '\\'])
        || !realm.chars().all(|c| c.is_ascii_graphic() || c == ' ')
    {
        e.push(
            format!("{path}.realm"),
            "realm must be printable ASCII without quotes or backslashes",
        );
    }
    let cache_entries = p
        .cache
        .as_ref()
        .and_then(|c| c.max_entries)
        .unwrap_or(10_000);
    if cache_entries > 10_000_000 {
        e.push(
            format!("{path}.cache.max_entries"),
            "max_entries must be at most 10000000",
        );
    }
    let cache_ttl = opt_long(
        e,
        format!("{path}.cache.ttl"),
        p.cache.as_ref().and_then(|c| c.ttl.as_deref()),
        Duration::from_secs(300),
    );
    if e.0.len() != before {
        return None;
    }
    Some(ProviderSpec {
        name: name.into(),
        keys: keys?,
        policy: Policy {
            algorithms,
            issuers,
            audiences: p.audiences.clone(),
            leeway: leeway.as_secs(),
            require_exp: p.require_exp.unwrap_or(true),
            required_claims: p.required_claims.clone(),
            max_token_bytes,
        },
        sources,
        realm,
        cache_entries,
        cache_ttl,
    })
}

fn claim_rule(e: &mut Errors, path: &str, c: &wire::ClaimRequirement) -> Option<ClaimRule> {
    if c.claim.is_empty() {
        e.push(format!("{path}.claim"), "claim name must not be empty");
    }
    let test = match (&c.contains, &c.any_of, &c.equals) {
        (Some(w), None, None) if !w.is_empty() && !w.contains(char::is_whitespace) => {
            Some(ClaimTest::Contains(w.clone()))
        }
        (Some(_), None, None) => {
            e.push(format!("{path}.contains"), "contains takes one word");
            None
        }
        (None, Some(set), None) if !set.is_empty() => Some(ClaimTest::AnyOf(set.clone())),
        (None, Some(_), None) => {
            e.push(format!("{path}.any_of"), "any_of needs at least one value");
            None
        }
        (None, None, Some(v)) => Some(ClaimTest::Equals(v.clone())),
        _ => {
            e.push(path, "set exactly one of contains, any_of or equals");
            None
        }
    };
    Some(ClaimRule {
        claim: c.claim.clone(),
        test: test?,
    })
}

/// A route's `auth.jwt` (or a `jwt` alternative of `auth.any_of`) at `path`.
pub(super) fn route_jwt(
    e: &mut Errors,
    path: &str,
    jwt: &wire::RouteJwt,
    providers: &IndexMap<String, wire::JwtProvider>,
) -> Option<RouteJwtSpec> {
    let before = e.0.len();
    if jwt.providers.is_empty() {
        e.push(
            format!("{path}.providers"),
            "name at least one of jwt_providers",
        );
    }
    for (i, name) in jwt.providers.iter().enumerate() {
        if !providers.contains_key(name) {
            let mut names: Vec<&str> = providers.keys().map(String::as_str).collect();
            names.sort_unstable();
            e.push(
                format!("{path}.providers[{i}]"),
                format!(
                    "unknown jwt provider {name:?} (defined: {})",
                    names.join(", ")
                ),
            );
        }
    }
    let claims: Vec<ClaimRule> = jwt
        .claims
        .iter()
        .enumerate()
        .filter_map(|(i, c)| claim_rule(e, &format!("{path}.claims[{i}]"), c))
        .collect();
    let mut claims_to_headers: Vec<(String, HeaderName)> = Vec::new();
    for (claim, header) in &jwt.claims_to_headers {
        let p = format!("{path}.claims_to_headers.{claim}");
        if let Some(name) = e.take(p.clone(), writable_header_name(header)) {
            if name == http::header::AUTHORIZATION || name == http::header::HOST {
                e.push(p, format!("{header:?} cannot carry a claim"));
            } else if claims_to_headers.iter().any(|(_, n)| *n == name) {
                e.push(p, format!("header {header:?} is the target of two claims"));
            } else {
                claims_to_headers.push((claim.clone(), name));
            }
        }
    }
    if e.0.len() != before {
        return None;
    }
    Some(RouteJwtSpec {
        providers: jwt.providers.clone(),
        required: jwt.required.unwrap_or(true),
        claims,
        claims_to_headers,
        strip_authorization: jwt.strip_authorization,
    })
}
