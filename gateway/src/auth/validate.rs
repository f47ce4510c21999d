//! Owns the verification of one compact JWS token against a provider's rules: structure,
//! header (`alg` on the list and fitting the key, `kid`, no `crit`), signature (via
//! `jsonwebtoken`'s aws-lc-rs backend), then claims (`exp`, `nbf`, `iss`, `aud`, required
//! claims). Pure: the clock is a parameter, nothing is fetched (`jku`, `x5u`, `x5c` and an
//! inline `jwk` header are ignored, never used as keys).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use super::keys::{Key, KeySet, Pick};

/// What a provider accepts.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub algorithms: Vec<Algorithm>,
    /// Accepted `iss` values (at least one).
    pub issuers: Vec<String>,
    /// Accepted `aud` values; empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub leeway: u64,
    pub require_exp: bool,
    pub required_claims: Vec<String>,
    pub max_token_bytes: usize,
}

/// Why a token was refused. `description` is what the client is told: enough to act on
/// ("expired"), nothing about keys or the expected values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    Malformed,
    TooLarge,
    Algorithm,
    CriticalHeader,
    /// The `kid` is not in the key set (a refresh may help).
    UnknownKid,
    /// No single key fits the token's `alg`/`kid`.
    NoKey,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    MissingClaim,
    /// The provider has no keys at all (never fetched, or stale past its limit): 503.
    NoKeys,
}

impl Failure {
    pub fn description(self) -> &'static str {
        match self {
            Failure::Malformed => "the token is malformed",
            Failure::TooLarge => "the token is too large",
            Failure::Algorithm => "the token's algorithm is not accepted",
            Failure::CriticalHeader => "the token has critical header parameters",
            // One message for every key problem: which key is unknown helps only an attacker.
            Failure::UnknownKid | Failure::NoKey | Failure::Signature => {
                "the token signature is invalid"
            }
            Failure::Expired => "the token expired",
            Failure::NotYetValid => "the token is not valid yet",
            Failure::Issuer => "the token issuer is not accepted",
            Failure::Audience => "the token audience is not accepted",
            Failure::MissingClaim => "the token lacks a required claim",
            Failure::NoKeys => "the keys to verify tokens are unavailable",
        }
    }

    /// The `result` label of `gateway_jwt_validations_total`.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Malformed | Failure::TooLarge | Failure::CriticalHeader => "malformed",
            Failure::Algorithm => "bad_algorithm",
            Failure::UnknownKid | Failure::NoKey => "unknown_key",
            Failure::Signature => "bad_signature",
            Failure::Expired | Failure::NotYetValid => "expired",
            Failure::Issuer | Failure::Audience | Failure::MissingClaim => "bad_claims",
            Failure::NoKeys => "unavailable",
        }
    }
}

/// A token split and decoded, signature not yet checked.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    /// `header.payload`, the signed bytes.
    pub message: &'a str,
    pub signature: &'a str,
    pub claims: Map<String, Value>,
}

fn decode_object(part: &str) -> Result<Map<String, Value>, Failure> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| Failure::Malformed)?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Failure::Malformed),
    }
}

/// Split, decode and check the header of a compact JWS.
pub fn parse<'a>(token: &'a str, policy: &Policy) -> Result<Parsed<'a>, Failure> {
    if token.len() > policy.max_token_bytes {
        return Err(Failure::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Failure::Malformed);
    };
    if header.is_empty() || payload.is_empty() || signature.is_empty() {
        return Err(Failure::Malformed);
    }
    let head = decode_object(header)?;
    // `crit` names extensions the recipient must understand; we understand none.
    if head.contains_key("crit") {
        return Err(Failure::CriticalHeader);
    }
    let alg = match head.get("alg") {
        Some(Value::String(a)) => a.parse::<Algorithm>().map_err(|_| Failure::Algorithm)?,
        _ => return Err(Failure::Malformed),
    };
    if !policy.algorithms.contains(&alg) {
        return Err(Failure::Algorithm);
    }
    let kid = match head.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(Failure::Malformed),
    };
    let claims = decode_object(payload)?;
    let message = &token[..header.len() + 1 + payload.len()];
    Ok(Parsed {
        alg,
        kid,
        message,
        signature,
        claims,
    })
}

/// Check the signature with `key`, which must accept the token's algorithm.
pub fn verify_signature(parsed: &Parsed<'_>, key: &Key) -> Result<(), Failure> {
    if !key.accepts(parsed.alg) {
        return Err(Failure::NoKey);
    }
    match jsonwebtoken::crypto::verify(
        parsed.signature,
        parsed.message.as_bytes(),
        &key.decoding,
        parsed.alg,
    ) {
        Ok(true) => Ok(()),
        _ => Err(Failure::Signature),
    }
}

/// A NumericDate claim: absent, or a JSON number (seconds; fractions allowed).
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Failure> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f as i64))
            .map(Some)
            .ok_or(Failure::Malformed),
        Some(_) => Err(Failure::Malformed),
    }
}

/// Check the registered and required claims at `now` (Unix seconds). Returns `exp`.
pub fn check_claims(
    claims: &Map<String, Value>,
    policy: &Policy,
    now: i64,
) -> Result<Option<i64>, Failure> {
    let leeway = policy.leeway as i64;
    let exp = numeric_date(claims, "exp")?;
    let nbf = numeric_date(claims, "nbf")?;
    match exp {
        None if policy.require_exp => return Err(Failure::MissingClaim),
        Some(exp) if exp.saturating_add(leeway) <= now => return Err(Failure::Expired),
        _ => {}
    }
    if nbf.is_some_and(|nbf| nbf.saturating_sub(leeway) > now) {
        return Err(Failure::NotYetValid);
    }
    match claims.get("iss") {
        Some(Value::String(iss)) if policy.issuers.iter().any(|i| i == iss) => {}
        None => return Err(Failure::MissingClaim),
        _ => return Err(Failure::Issuer),
    }
    if !policy.audiences.is_empty() {
        let accepted = |a: &str| policy.audiences.iter().any(|x| x == a);
        match claims.get("aud") {
            Some(Value::String(a)) if accepted(a) => {}
            Some(Value::Array(list)) if list.iter().any(|v| v.as_str().is_some_and(accepted)) => {}
            None => return Err(Failure::MissingClaim),
            _ => return Err(Failure::Audience),
        }
    }
    if policy
        .required_claims
        .iter()
        .any(|c| claims.get(c).is_none_or(Value::is_null))
    {
        return Err(Failure::MissingClaim);
    }
    Ok(exp)
}

/// A verified token's claims and `exp`.
#[derive(Debug)]
pub struct Verified {
    pub claims: Map<String, Value>,
    pub exp: Option<i64>,
}

/// Everything at once: parse, pick the key, verify the signature, check the claims.
pub fn validate(
    token: &str,
    policy: &Policy,
    keys: &KeySet,
    now: i64,
) -> Result<Verified, Failure> {
    let parsed = parse(token, policy)?;
    if keys.keys.is_empty() {
        return Err(Failure::NoKeys);
    }
    let key = keys
        .pick(parsed.alg, parsed.kid.as_deref())
        .map_err(|p| match p {
            Pick::UnknownKid => Failure::UnknownKid,
            Pick::NoKey => Failure::NoKey,
        })?;
    verify_signature(&parsed, key)?;
    let exp = check_claims(&parsed.claims, policy, now)?;
    Ok(Verified {
        claims: parsed.claims,
        exp,
    })
}
