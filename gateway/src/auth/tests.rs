//! One test per validation rule, plus the key store's refresh behaviour against a JWKS
//! server on loopback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use jsonwebtoken::{Algorithm, Header};
use serde_json::{Value, json};

use super::jwks::{JwksSpec, KeyStore};
use super::keys::KeySet;
use super::testkeys::{SigningKey, jwks, sign_raw};
use super::validate::{Failure, Policy, validate};
use super::*;
use crate::metrics::Metrics;

const NOW: i64 = 1_800_000_000;
const ISS: &str = "https://issuer.test";

fn policy(algorithms: &[Algorithm]) -> Policy {
    Policy {
        algorithms: algorithms.to_vec(),
        issuers: vec![ISS.into()],
        audiences: vec!["api".into()],
        leeway: 30,
        require_exp: true,
        required_claims: vec![],
        max_token_bytes: 8192,
    }
}

fn claims() -> Value {
    json!({"iss": ISS, "aud": "api", "sub": "u1", "exp": NOW + 600, "nbf": NOW - 10, "scope": "profile orders:read", "roles": ["customer"]})
}

fn with(mut c: Value, key: &str, v: Value) -> Value {
    if v.is_null() {
        c.as_object_mut().unwrap().remove(key);
    } else {
        c[key] = v;
    }
    c
}

fn key(alg: Algorithm, kid: Option<&str>) -> SigningKey {
    SigningKey::generate(alg, kid).unwrap()
}

fn keyset(keys: &[&SigningKey]) -> KeySet {
    let (keys, skipped) = KeySet::from_jwks(jwks(keys).to_string().as_bytes()).unwrap();
    assert!(skipped.is_empty(), "{skipped:?}");
    KeySet {
        keys,
        generation: 1,
        ..KeySet::default()
    }
}

fn check(token: &str, p: &Policy, keys: &KeySet) -> Result<(), Failure> {
    validate(token, p, keys, NOW).map(|_| ())
}

#[test]
fn every_family_verifies() {
    for alg in [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ] {
        let k = key(alg, Some("k1"));
        let token = k.sign(&claims()).unwrap();
        let verified = validate(&token, &policy(&[alg]), &keyset(&[&k]), NOW)
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(verified.claims["sub"], "u1");
        assert_eq!(verified.exp, Some(NOW + 600));
    }
}

#[test]
fn algorithm_must_be_on_the_list() {
    let k = key(Algorithm::RS256, Some("k1"));
    let token = k.sign(&claims()).unwrap();
    assert_eq!(
        check(&token, &policy(&[Algorithm::ES256]), &keyset(&[&k])),
        Err(Failure::Algorithm)
    );
}

#[test]
fn alg_none_is_refused() {
    let k = key(Algorithm::HS256, None);
    let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let c = URL_SAFE_NO_PAD.encode(claims().to_string());
    for token in [format!("{h}.{c}."), format!("{h}.{c}.c2ln")] {
        assert!(check(&token, &policy(&[Algorithm::HS256]), &keyset(&[&k])).is_err());
    }
    assert_eq!(
        check(
            &format!("{h}.{c}.c2ln"),
            &policy(&[Algorithm::HS256]),
            &keyset(&[&k])
        ),
        Err(Failure::Algorithm)
    );
}

/// The classic confusion: an HS256 token whose "secret" is the RSA public key. The RSA
/// key never acts as an HMAC secret, even when HS256 is on the provider's list.
#[test]
fn rsa_public_key_is_never_an_hmac_secret() {
    let rsa = key(Algorithm::RS256, Some("k1"));
    let public = serde_json::to_vec(&rsa.jwk).unwrap();
    let forger = SigningKey {
        alg: Algorithm::HS256,
        kid: Some("k1".into()),
        encoding: jsonwebtoken::EncodingKey::from_secret(&public),
        jwk: json!({}),
    };
    let token = forger.sign(&claims()).unwrap();
    let p = policy(&[Algorithm::RS256, Algorithm::HS256]);
    assert_eq!(check(&token, &p, &keyset(&[&rsa])), Err(Failure::NoKey));
    // Without kid: no HMAC key in the set, so nothing to pick.
    let mut forger = forger;
    forger.kid = None;
    let token = forger.sign(&claims()).unwrap();
    assert_eq!(check(&token, &p, &keyset(&[&rsa])), Err(Failure::NoKey));
}

#[test]
fn algorithm_must_fit_the_key() {
    // A JWK that pins `alg` takes only that algorithm.
    let mut k = key(Algorithm::RS256, Some("k1"));
    k.jwk["alg"] = json!("RS256");
    let mut h = Header::new(Algorithm::RS384);
    h.kid = Some("k1".into());
    let token = k.sign_with(&h, &claims()).unwrap();
    let p = policy(&[Algorithm::RS256, Algorithm::RS384]);
    assert_eq!(check(&token, &p, &keyset(&[&k])), Err(Failure::NoKey));
    // An ES256 token cannot pick a P-384 key.
    let p384 = key(Algorithm::ES384, Some("ec"));
    let p256 = key(Algorithm::ES256, Some("ec"));
    let token = p256.sign(&claims()).unwrap();
    assert_eq!(
        check(
            &token,
            &policy(&[Algorithm::ES256, Algorithm::ES384]),
            &keyset(&[&p384])
        ),
        Err(Failure::NoKey)
    );
    // An EdDSA token cannot pick an RSA key.
    let ed = key(Algorithm::EdDSA, Some("k1"));
    let token = ed.sign(&claims()).unwrap();
    let rsa = key(Algorithm::RS256, Some("k1"));
    assert_eq!(
        check(
            &token,
            &policy(&[Algorithm::EdDSA, Algorithm::RS256]),
            &keyset(&[&rsa])
        ),
        Err(Failure::NoKey)
    );
}

#[test]
fn kid_selects_exactly_one_key() {
    let a = key(Algorithm::RS256, Some("a"));
    let b = key(Algorithm::RS256, Some("b"));
    let p = policy(&[Algorithm::RS256]);
    let token_b = b.sign(&claims()).unwrap();
    assert_eq!(check(&token_b, &p, &keyset(&[&a, &b])), Ok(()));
    // Signed by b but claiming a's kid: a's key is used, and fails.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("a".into());
    let lying = b.sign_with(&h, &claims()).unwrap();
    assert_eq!(
        check(&lying, &p, &keyset(&[&a, &b])),
        Err(Failure::Signature)
    );
    // Unknown kid.
    assert_eq!(
        check(&token_b, &p, &keyset(&[&a])),
        Err(Failure::UnknownKid)
    );
    // Two keys with the same kid: ambiguous, neither is used.
    let b_twin = key(Algorithm::RS256, Some("b"));
    assert_eq!(
        check(&token_b, &p, &keyset(&[&b_twin, &b])),
        Err(Failure::NoKey)
    );
}

#[test]
fn no_kid_needs_exactly_one_key_of_the_type() {
    let rsa = key(Algorithm::RS256, None);
    let ec = key(Algorithm::ES256, Some("ec"));
    let p = policy(&[Algorithm::RS256, Algorithm::ES256]);
    let token = rsa.sign(&claims()).unwrap();
    // One RSA key (and an EC key, which does not count): used.
    assert_eq!(check(&token, &p, &keyset(&[&rsa, &ec])), Ok(()));
    // Two RSA keys: no guessing.
    let rsa2 = key(Algorithm::RS256, Some("r2"));
    assert_eq!(
        check(&token, &p, &keyset(&[&rsa2, &rsa])),
        Err(Failure::NoKey)
    );
}

#[test]
fn exp_is_required_unless_the_provider_says_otherwise() {
    let k = key(Algorithm::HS256, None);
    let token = k.sign(&with(claims(), "exp", Value::Null)).unwrap();
    let mut p = policy(&[Algorithm::HS256]);
    assert_eq!(
        check(&token, &p, &keyset(&[&k])),
        Err(Failure::MissingClaim)
    );
    p.require_exp = false;
    assert_eq!(check(&token, &p, &keyset(&[&k])), Ok(()));
}

#[test]
fn exp_and_nbf_with_leeway() {
    let k = key(Algorithm::HS256, None);
    let p = policy(&[Algorithm::HS256]);
    let ks = keyset(&[&k]);
    let t = |c: Value| k.sign(&c).unwrap();
    assert_eq!(
        check(&t(with(claims(), "exp", json!(NOW - 10))), &p, &ks),
        Ok(())
    );
    assert_eq!(
        check(&t(with(claims(), "exp", json!(NOW - 31))), &p, &ks),
        Err(Failure::Expired)
    );
    assert_eq!(
        check(&t(with(claims(), "nbf", json!(NOW + 10))), &p, &ks),
        Ok(())
    );
    assert_eq!(
        check(&t(with(claims(), "nbf", json!(NOW + 31))), &p, &ks),
        Err(Failure::NotYetValid)
    );
    // Fractional NumericDates are allowed.
    assert_eq!(
        check(
            &t(with(claims(), "exp", json!((NOW + 60) as f64 + 0.5))),
            &p,
            &ks
        ),
        Ok(())
    );
}

#[test]
fn issuer_and_audience_are_checked() {
    let k = key(Algorithm::HS256, None);
    let mut p = policy(&[Algorithm::HS256]);
    let ks = keyset(&[&k]);
    let t = |c: Value| k.sign(&c).unwrap();
    assert_eq!(
        check(
            &t(with(claims(), "iss", json!("https://evil.test"))),
            &p,
            &ks
        ),
        Err(Failure::Issuer)
    );
    assert_eq!(
        check(&t(with(claims(), "iss", Value::Null)), &p, &ks),
        Err(Failure::MissingClaim)
    );
    assert_eq!(
        check(&t(with(claims(), "aud", json!("other"))), &p, &ks),
        Err(Failure::Audience)
    );
    assert_eq!(
        check(&t(with(claims(), "aud", json!(["other", "api"]))), &p, &ks),
        Ok(())
    );
    assert_eq!(
        check(&t(with(claims(), "aud", json!(["other"]))), &p, &ks),
        Err(Failure::Audience)
    );
    // A list of issuers: any of them.
    p.issuers.push("https://second.test".into());
    assert_eq!(
        check(
            &t(with(claims(), "iss", json!("https://second.test"))),
            &p,
            &ks
        ),
        Ok(())
    );
    // Required claims.
    p.required_claims = vec!["email".into()];
    assert_eq!(check(&t(claims()), &p, &ks), Err(Failure::MissingClaim));
    assert_eq!(
        check(&t(with(claims(), "email", json!("a@b.c"))), &p, &ks),
        Ok(())
    );
}

#[test]
fn crit_headers_are_rejected() {
    let k = key(Algorithm::HS256, None);
    let header = json!({"alg": "HS256", "crit": ["exp"], "exp": NOW + 60});
    let token = sign_raw(&k, &header, &claims()).unwrap();
    assert_eq!(
        check(&token, &policy(&[Algorithm::HS256]), &keyset(&[&k])),
        Err(Failure::CriticalHeader)
    );
}

/// A token that brings its own key (`jwk`), or points at one (`jku`, `x5u`), is verified
/// with the provider's keys only.
#[test]
fn keys_named_by_the_token_are_never_used() {
    let legit = key(Algorithm::RS256, Some("legit"));
    let attacker = key(Algorithm::RS256, None);
    let header = json!({
        "alg": "RS256",
        "jwk": attacker.jwk,
        "jku": "http://127.0.0.1:1/jwks.json",
        "x5u": "http://127.0.0.1:1/cert.pem",
    });
    let token = sign_raw(&attacker, &header, &claims()).unwrap();
    assert_eq!(
        check(&token, &policy(&[Algorithm::RS256]), &keyset(&[&legit])),
        Err(Failure::Signature)
    );
}

#[test]
fn malformed_input_is_a_plain_failure() {
    let k = key(Algorithm::HS256, None);
    let p = policy(&[Algorithm::HS256]);
    let ks = keyset(&[&k]);
    let good = k.sign(&claims()).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let b64 = |s: &str| URL_SAFE_NO_PAD.encode(s);
    let cases: Vec<(String, Failure)> = vec![
        ("".into(), Failure::Malformed),
        ("abc".into(), Failure::Malformed),
        (format!("{}.{}", parts[0], parts[1]), Failure::Malformed),
        (format!("{good}.extra"), Failure::Malformed),
        (
            format!(
                "{}.{}.{}.{}.{}",
                parts[0], parts[1], parts[2], parts[2], parts[2]
            ),
            Failure::Malformed,
        ),
        (format!("!!!.{}.{}", parts[1], parts[2]), Failure::Malformed),
        (format!("{}.%%%.{}", parts[0], parts[2]), Failure::Malformed),
        (
            format!("{}.{}.{}", b64("[1,2]"), parts[1], parts[2]),
            Failure::Malformed,
        ),
        (
            format!("{}.{}.{}", b64("not json"), parts[1], parts[2]),
            Failure::Malformed,
        ),
        (
            format!("{}.{}.{}", b64(r#"{"alg":5}"#), parts[1], parts[2]),
            Failure::Malformed,
        ),
        (
            format!(
                "{}.{}.{}",
                b64(r#"{"alg":"HS256","kid":7}"#),
                parts[1],
                parts[2]
            ),
            Failure::Malformed,
        ),
        ("a".repeat(1 << 20), Failure::TooLarge),
        (
            format!("{}.{}.{}", parts[0], parts[1], "A".repeat(10)),
            Failure::Signature,
        ),
    ];
    for (token, want) in cases {
        assert_eq!(check(&token, &p, &ks), Err(want), "{:.60}", token);
    }
    // Signed, but the payload is not an object, or exp is not a number.
    for payload in [json!(123), json!("text"), json!([1])] {
        let token = sign_raw(&k, &json!({"alg": "HS256"}), &payload).unwrap();
        assert_eq!(check(&token, &p, &ks), Err(Failure::Malformed));
    }
    let token = sign_raw(
        &k,
        &json!({"alg": "HS256"}),
        &with(claims(), "exp", json!("tomorrow")),
    )
    .unwrap();
    assert_eq!(check(&token, &p, &ks), Err(Failure::Malformed));
}

#[test]
fn descriptions_do_not_name_keys() {
    for f in [Failure::UnknownKid, Failure::NoKey, Failure::Signature] {
        assert_eq!(f.description(), "the token signature is invalid");
    }
    assert_eq!(Failure::Expired.description(), "the token expired");
}

#[test]
fn www_authenticate_per_rfc_6750() {
    let realm = "api".to_owned();
    assert_eq!(
        Rejection::Missing {
            realm: realm.clone()
        }
        .www_authenticate()
        .unwrap(),
        "Bearer realm=\"api\""
    );
    assert_eq!(
        Rejection::Invalid {
            realm: realm.clone(),
            failure: Failure::Expired
        }
        .www_authenticate()
        .unwrap(),
        "Bearer realm=\"api\", error=\"invalid_token\", error_description=\"the token expired\""
    );
    assert!(
        Rejection::Forbidden { realm }
            .www_authenticate()
            .unwrap()
            .contains("error=\"insufficient_scope\"")
    );
    assert!(
        Rejection::Unavailable { retry_after: 3 }
            .www_authenticate()
            .is_none()
    );
}

#[test]
fn claim_rules() {
    let c = claims();
    let c = c.as_object().unwrap();
    let rule = |claim: &str, test| ClaimRule {
        claim: claim.into(),
        test,
    };
    assert!(rule("scope", ClaimTest::Contains("orders:read".into())).holds(c));
    assert!(!rule("scope", ClaimTest::Contains("orders".into())).holds(c));
    assert!(!rule("scope", ClaimTest::Contains("orders:write".into())).holds(c));
    assert!(rule("roles", ClaimTest::Contains("customer".into())).holds(c));
    assert!(
        rule(
            "roles",
            ClaimTest::AnyOf(vec!["admin".into(), "customer".into()])
        )
        .holds(c)
    );
    assert!(!rule("roles", ClaimTest::AnyOf(vec!["admin".into()])).holds(c));
    assert!(rule("sub", ClaimTest::AnyOf(vec!["u1".into()])).holds(c));
    assert!(rule("sub", ClaimTest::Equals(json!("u1"))).holds(c));
    assert!(!rule("missing", ClaimTest::Equals(json!(null))).holds(c));
}

#[test]
fn token_sources() {
    let mut h = HeaderMap::new();
    h.insert("authorization", "bearer  abc.def.ghi".parse().unwrap());
    h.insert("x-token", "hdr.tok.en".parse().unwrap());
    h.append("cookie", "a=1; session=coo.kie.tok".parse().unwrap());
    let q = Some("x=1&access_token=qu.er.y");
    assert_eq!(extract(&[TokenSource::Bearer], &h, q), Some("abc.def.ghi"));
    assert_eq!(
        extract(&[TokenSource::Header("x-token".parse().unwrap())], &h, q),
        Some("hdr.tok.en")
    );
    assert_eq!(
        extract(&[TokenSource::Cookie("session".into())], &h, q),
        Some("coo.kie.tok")
    );
    assert_eq!(
        extract(&[TokenSource::Query("access_token".into())], &h, q),
        Some("qu.er.y")
    );
    // Not Bearer: no token from that source; the next source is tried.
    h.insert("authorization", "Basic dXNlcjpwYXNz".parse().unwrap());
    assert_eq!(extract(&[TokenSource::Bearer], &h, q), None);
    assert_eq!(
        extract(
            &[TokenSource::Bearer, TokenSource::Cookie("session".into())],
            &h,
            q
        ),
        Some("coo.kie.tok")
    );
}

#[test]
fn claims_become_header_values() {
    assert_eq!(RouteJwt::header_value(&json!("u1")).unwrap(), "u1");
    assert_eq!(RouteJwt::header_value(&json!(["a", "b"])).unwrap(), "a,b");
    assert_eq!(RouteJwt::header_value(&json!(42)).unwrap(), "42");
    assert!(RouteJwt::header_value(&json!({"a": 1})).is_none());
    assert!(RouteJwt::header_value(&json!("line\nbreak")).is_none());
}

fn provider(keys: KeyStore, algorithms: &[Algorithm]) -> Provider {
    Provider {
        name: "p".into(),
        policy: policy(algorithms),
        sources: vec![TokenSource::Bearer],
        realm: "p".into(),
        keys: Arc::new(keys),
        cache: cache::TokenCache::new(1000, 300),
        fingerprint: String::new(),
    }
}

#[tokio::test]
async fn verified_tokens_are_cached_until_keys_change() {
    let metrics = Metrics::new().unwrap();
    let k = key(Algorithm::ES256, Some("k1"));
    let ks = keyset(&[&k]);
    let p = provider(
        KeyStore::fixed("p".into(), "f".into(), ks.keys),
        &[Algorithm::ES256],
    );
    let token = k.sign(&claims()).unwrap();
    let (c1, cached) = verify(&p, &token, NOW, &metrics).await.unwrap();
    assert!(!cached);
    let (c2, cached) = verify(&p, &token, NOW, &metrics).await.unwrap();
    assert!(cached);
    assert!(Arc::ptr_eq(&c1, &c2));
    // Past exp, the cache does not answer (and validation refuses).
    assert_eq!(
        verify(&p, &token, NOW + 1000, &metrics).await.err(),
        Some(Failure::Expired)
    );
}

/// A JWKS server on loopback that counts its fetches; `keys` is what it serves,
/// `fail` makes it answer 500.
struct JwksServer {
    url: String,
    fetches: Arc<AtomicUsize>,
    doc: Arc<std::sync::Mutex<Value>>,
    fail: Arc<std::sync::atomic::AtomicBool>,
}

async fn jwks_server(doc: Value) -> JwksServer {
    let fetches = Arc::new(AtomicUsize::new(0));
    let doc = Arc::new(std::sync::Mutex::new(doc));
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (f, d, x) = (fetches.clone(), doc.clone(), fail.clone());
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let (f, d, x) = (f.clone(), d.clone(), x.clone());
            async move {
                f.fetch_add(1, Ordering::SeqCst);
                // Slow enough that concurrent requests queue behind one fetch.
                tokio::time::sleep(Duration::from_millis(50)).await;
                if x.load(Ordering::SeqCst) {
                    return (http::StatusCode::INTERNAL_SERVER_ERROR, String::new());
                }
                (http::StatusCode::OK, d.lock().unwrap().to_string())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    JwksServer {
        url,
        fetches,
        doc,
        fail,
    }
}

fn remote(url: &str, refresh_min: Duration, max_stale: Duration) -> KeyStore {
    KeyStore::remote(
        "p".into(),
        "f".into(),
        JwksSpec {
            url: url.into(),
            refresh_min,
            refresh_max: Duration::from_secs(3600),
            timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(3600),
            max_stale,
            negative_ttl: Duration::from_secs(3600),
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_storm_fetches_once() {
    let metrics = Arc::new(Metrics::new().unwrap());
    let old = key(Algorithm::RS256, Some("old"));
    let new = key(Algorithm::RS256, Some("new"));
    let server = jwks_server(jwks(&[&old])).await;
    let store = remote(
        &server.url,
        Duration::from_millis(1),
        Duration::from_secs(3600),
    );
    assert!(!store.ready());
    store.refresh_if_due(&metrics).await;
    assert!(store.ready());
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
    let p = Arc::new(provider(store, &[Algorithm::RS256]));

    // The issuer rotates; 1,000 requests with the new kid arrive at once.
    *server.doc.lock().unwrap() = jwks(&[&old, &new]);
    let token = Arc::new(new.sign(&claims()).unwrap());
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let (p, token, metrics) = (p.clone(), token.clone(), metrics.clone());
            tokio::spawn(async move { verify(&p, &token, NOW, &metrics).await.map(|_| ()) })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok(()));
    }
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        2,
        "exactly one extra fetch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kids_are_refreshed_at_most_once_per_interval_and_cached_negatively() {
    let metrics = Metrics::new().unwrap();
    let old = key(Algorithm::RS256, Some("old"));
    let server = jwks_server(jwks(&[&old])).await;
    let store = remote(
        &server.url,
        Duration::from_millis(1),
        Duration::from_secs(3600),
    );
    store.refresh_if_due(&metrics).await;
    let p = provider(store, &[Algorithm::RS256]);
    let stranger = key(Algorithm::RS256, Some("stranger"))
        .sign(&claims())
        .unwrap();
    assert_eq!(
        verify(&p, &stranger, NOW, &metrics).await.err(),
        Some(Failure::UnknownKid)
    );
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        2,
        "one refresh for the kid"
    );
    // The same unknown kid again: remembered, no fetch.
    for _ in 0..5 {
        assert_eq!(
            verify(&p, &stranger, NOW, &metrics).await.err(),
            Some(Failure::UnknownKid)
        );
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);

    // With a long minimum interval, a second unknown kid right after a fetch does not
    // fetch either.
    let server = jwks_server(jwks(&[&old])).await;
    let store = remote(
        &server.url,
        Duration::from_secs(3600),
        Duration::from_secs(3600),
    );
    store.refresh_if_due(&metrics).await;
    let p = provider(store, &[Algorithm::RS256]);
    for kid in ["x1", "x2", "x3"] {
        let t = key(Algorithm::RS256, Some(kid)).sign(&claims()).unwrap();
        assert_eq!(
            verify(&p, &t, NOW, &metrics).await.err(),
            Some(Failure::UnknownKid)
        );
    }
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_keys_serve_on_error_until_max_stale() {
    let metrics = Metrics::new().unwrap();
    let k = key(Algorithm::EdDSA, Some("k"));
    let server = jwks_server(jwks(&[&k])).await;
    let store = remote(
        &server.url,
        Duration::from_millis(1),
        Duration::from_secs(3600),
    );
    store.refresh_if_due(&metrics).await;
    let generation = store.current().generation;
    server.fail.store(true, Ordering::SeqCst);
    // Force a refresh: unknown kid.
    let seen = store.fetch_count();
    store.refresh_for_unknown_kid("other", seen, &metrics).await;
    assert_eq!(server.fetches.load(Ordering::SeqCst), 2);
    let keys = store.current();
    assert_eq!(keys.keys.len(), 1, "last good keys kept");
    assert_eq!(keys.generation, generation);
    let p = provider(store, &[Algorithm::EdDSA]);
    assert!(
        verify(&p, &k.sign(&claims()).unwrap(), NOW, &metrics)
            .await
            .is_ok()
    );

    // With a tiny max_stale the same keys are too old to use: no keys, 503.
    server.fail.store(false, Ordering::SeqCst);
    let store = remote(
        &server.url,
        Duration::from_millis(1),
        Duration::from_millis(1),
    );
    store.refresh_if_due(&metrics).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let p = provider(store, &[Algorithm::EdDSA]);
    let token = k.sign(&claims()).unwrap();
    // Even a token in the verified-token cache does not pass without keys.
    let generation = p.keys.current().generation;
    let cached = Arc::new(claims().as_object().unwrap().clone());
    p.cache.insert(&token, cached, None, generation, NOW);
    assert_eq!(
        verify(&p, &token, NOW, &metrics).await.err(),
        Some(Failure::NoKeys)
    );
}

#[tokio::test]
async fn never_fetched_means_no_keys() {
    let metrics = Metrics::new().unwrap();
    let store = remote(
        "http://127.0.0.1:1/jwks.json",
        Duration::from_secs(1),
        Duration::from_secs(60),
    );
    store.refresh_if_due(&metrics).await;
    assert!(store.current().keys.is_empty());
    let p = provider(store, &[Algorithm::RS256]);
    let t = key(Algorithm::RS256, Some("k")).sign(&claims()).unwrap();
    assert_eq!(
        verify(&p, &t, NOW, &metrics).await.err(),
        Some(Failure::NoKeys)
    );
    // Malformed input is still a 401, not a 503.
    assert_eq!(
        verify(&p, "x.y", NOW, &metrics).await.err(),
        Some(Failure::Malformed)
    );
}

fn parse(yaml: &str) -> Result<crate::config::Spec, Vec<String>> {
    let text = format!(
        "listeners: [{{name: m, address: '127.0.0.1:1'}}]\nupstreams: {{u: {{endpoints: [{{address: '127.0.0.1:2'}}]}}}}\n{yaml}"
    );
    crate::config::parse(&text, "t.yaml").map_err(|e| {
        e.0.iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    })
}

#[test]
fn config_parses_every_option() {
    let dir = std::env::temp_dir().join(format!("jwt-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let k = key(Algorithm::ES256, Some("file"));
    let jwks_file = dir.join("jwks.json");
    std::fs::write(&jwks_file, jwks(&[&k]).to_string()).unwrap();
    let spec = parse(&format!(
        r#"
jwt_providers:
  remote:
    algorithms: [RS256, EdDSA]
    jwks: {{url: "https://id.example.com/jwks.json", refresh_min: 10s, refresh_max: 2h, timeout: 2s, start_timeout: 5s, max_stale: 48h, negative_cache: 1m}}
    issuer: [a, b]
    audiences: [api]
    leeway: 1m
    require_exp: false
    required_claims: [sub]
    max_token_bytes: 4096
    token_sources: [bearer, "cookie:session", "header:x-token", "query:access_token"]
    allow_query_token: true
    realm: example
    cache: {{max_entries: 100, ttl: 1m}}
  file:
    algorithms: [ES256]
    jwks_file: {}
    issuer: a
  hmac:
    algorithms: [HS256]
    secret: "0123456789abcdef0123456789abcdef"
    key_id: h1
    issuer: a
routes:
  - id: r
    upstream: u
    auth:
      jwt:
        providers: [remote, file]
        required: false
        claims: [{{claim: scope, contains: "orders:write"}}, {{claim: roles, any_of: [admin]}}, {{claim: tier, equals: 3}}]
        claims_to_headers: {{sub: X-User-Id, roles: X-User-Roles}}
        strip_authorization: true
"#,
        jwks_file.display()
    ))
    .unwrap();
    let remote = &spec.jwt_providers["remote"];
    assert_eq!(remote.policy.leeway, 60);
    assert!(!remote.policy.require_exp);
    assert_eq!(remote.sources.len(), 4);
    let KeySource::Jwks(j) = &remote.keys else {
        panic!()
    };
    assert_eq!(j.max_stale, Duration::from_secs(48 * 3600));
    let route = spec.routes[0].jwt.as_ref().unwrap();
    assert!(!route.required && route.strip_authorization);
    assert_eq!(route.claims.len(), 3);
    assert_eq!(route.claims_to_headers[0].1, "x-user-id");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn config_errors_have_paths() {
    let errors = parse(
        r#"
jwt_providers:
  bad:
    algorithms: [none, HS999, RS256]
    secret: short
    jwks: {url: "ftp://x", refresh_min: 2h, refresh_max: 1h}
    leeway: 10m
    token_sources: ["query:t", "smoke"]
    max_token_bytes: 10
  mixed:
    algorithms: [RS256]
    secret: "0123456789abcdef0123456789abcdef"
    issuer: a
routes:
  - id: r
    upstream: u
    auth:
      jwt:
        providers: [nope]
        claims: [{claim: scope, contains: a, any_of: [b]}]
        claims_to_headers: {sub: "bad header", x: Authorization}
"#,
    )
    .unwrap_err();
    let want = [
        "jwt_providers.bad: set exactly one key source",
        "jwt_providers.bad.algorithms[0]: algorithm \"none\"",
        "jwt_providers.bad.algorithms[1]: unknown algorithm",
        "jwt_providers.bad.issuer:",
        "jwt_providers.bad.leeway:",
        "jwt_providers.bad.max_token_bytes:",
        "jwt_providers.bad.token_sources[0]: tokens in the query string",
        "jwt_providers.bad.token_sources[1]: invalid token source",
        "jwt_providers.mixed.algorithms[0]: RS256 needs a public key",
        "routes[0].auth.jwt.providers[0]: unknown jwt provider \"nope\"",
        "routes[0].auth.jwt.claims[0]: set exactly one of",
        "routes[0].auth.jwt.claims_to_headers.sub: invalid header name",
        "routes[0].auth.jwt.claims_to_headers.x: \"Authorization\" cannot carry a claim",
    ];
    for w in want {
        assert!(
            errors.iter().any(|e| e.starts_with(w)),
            "missing {w:?} in {errors:#?}"
        );
    }
}

#[test]
fn key_stores_survive_reloads() {
    let yaml = |leeway: &str, url: &str| {
        format!(
            "jwt_providers:\n  p:\n    algorithms: [RS256]\n    jwks: {{url: \"{url}\"}}\n    issuer: a\n    leeway: {leeway}\nroutes: [{{id: r, upstream: u, auth: {{jwt: {{providers: [p]}}}}}}]\n"
        )
    };
    let compile =
        |text: &str, prev| crate::runtime::compile(&parse(text).unwrap(), 1, prev).unwrap();
    let v1 = compile(&yaml("30s", "https://a/jwks"), None);
    // Same provider: reused whole.
    let v2 = compile(&yaml("30s", "https://a/jwks"), Some(&v1));
    assert!(Arc::ptr_eq(&v1.jwt.providers["p"], &v2.jwt.providers["p"]));
    // Other validation rules, same key source: new provider (and cache), same keys.
    let v3 = compile(&yaml("10s", "https://a/jwks"), Some(&v2));
    assert!(!Arc::ptr_eq(&v2.jwt.providers["p"], &v3.jwt.providers["p"]));
    assert!(Arc::ptr_eq(
        &v2.jwt.providers["p"].keys,
        &v3.jwt.providers["p"].keys
    ));
    // The route points at the runtime's own provider.
    let route = v3.routes[0].jwt.as_ref().unwrap();
    assert!(Arc::ptr_eq(&route.providers[0], &v3.jwt.providers["p"]));
    // Another URL: new keys.
    let v4 = compile(&yaml("10s", "https://b/jwks"), Some(&v3));
    assert!(!Arc::ptr_eq(
        &v3.jwt.providers["p"].keys,
        &v4.jwt.providers["p"].keys
    ));
}
