//! Owns verification keys: one `Key` per usable JWK or configured secret/PEM, the
//! immutable `KeySet` a provider verifies against, and the rules that pick the one key a
//! token may be verified with (by `kid`, and by algorithm family and curve).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};

/// The curve of an EC or OKP key; `None` for RSA and HMAC keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Curve {
    P256,
    P384,
    Ed25519,
    /// A curve no accepted algorithm uses (P-521, X25519...).
    Other,
}

/// One verification key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<Arc<str>>,
    pub family: AlgorithmFamily,
    pub curve: Option<Curve>,
    /// The JWK's `alg`, when it pins one: tokens must then use exactly it.
    pub alg: Option<Algorithm>,
    pub decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    // Never print key material (HMAC secrets are keys too).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("curve", &self.curve)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// May a token signed with `alg` be verified with this key? The family must match
    /// (an RSA or EC public key is never an HMAC secret), EC curves must match the
    /// algorithm, and a key that names its `alg` takes only that one.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|a| a != alg) || self.family != alg.family() {
            return false;
        }
        match alg {
            Algorithm::ES256 => self.curve == Some(Curve::P256),
            Algorithm::ES384 => self.curve == Some(Curve::P384),
            Algorithm::EdDSA => self.curve == Some(Curve::Ed25519),
            _ => true,
        }
    }

    pub fn secret(secret: &[u8], kid: Option<&str>) -> Key {
        Key {
            kid: kid.map(Into::into),
            family: AlgorithmFamily::Hmac,
            curve: None,
            alg: None,
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// A PEM public key, tried as RSA, then EC, then Ed25519. The EC curve is read from
    /// the key's DER (the SPKI names it).
    pub fn from_pem(pem: &[u8], kid: Option<&str>) -> Result<Key, String> {
        let kid = kid.map(Into::into);
        if let Ok(decoding) = DecodingKey::from_rsa_pem(pem) {
            return Ok(Key {
                kid,
                family: AlgorithmFamily::Rsa,
                curve: None,
                alg: None,
                decoding,
            });
        }
        if let Ok(decoding) = DecodingKey::from_ec_pem(pem) {
            let curve = ec_curve_of_pem(pem);
            return Ok(Key {
                kid,
                family: AlgorithmFamily::Ec,
                curve: Some(curve),
                alg: None,
                decoding,
            });
        }
        if let Ok(decoding) = DecodingKey::from_ed_pem(pem) {
            let point = ed25519_of_pem(pem).ok_or("not an Ed25519 public key")?;
            check_ed25519(&point)?;
            return Ok(Key {
                kid,
                family: AlgorithmFamily::Ed,
                curve: Some(Curve::Ed25519),
                alg: None,
                decoding,
            });
        }
        Err("not an RSA, EC or Ed25519 public key in PEM form".into())
    }

    /// A key from one JWK, or why it cannot be used for verification.
    pub fn from_jwk(jwk: &Jwk) -> Result<Key, String> {
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            return Err("key is not for signatures (`use`)".into());
        }
        let (family, curve) = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => (AlgorithmFamily::Rsa, None),
            AlgorithmParameters::EllipticCurve(p) => (
                AlgorithmFamily::Ec,
                Some(match p.curve {
                    EllipticCurve::P256 => Curve::P256,
                    EllipticCurve::P384 => Curve::P384,
                    _ => Curve::Other,
                }),
            ),
            AlgorithmParameters::OctetKeyPair(p) => (
                AlgorithmFamily::Ed,
                Some(if p.curve == EllipticCurve::Ed25519 {
                    Curve::Ed25519
                } else {
                    Curve::Other
                }),
            ),
            AlgorithmParameters::OctetKey(_) => (AlgorithmFamily::Hmac, None),
            _ => return Err("unsupported key type".into()),
        };
        let alg = match &jwk.common.key_algorithm {
            None => None,
            Some(a) => Some(
                a.to_string()
                    .parse::<Algorithm>()
                    .map_err(|_| format!("key algorithm {a} is not a signature algorithm"))?,
            ),
        };
        if let AlgorithmParameters::OctetKeyPair(p) = &jwk.algorithm
            && p.curve == EllipticCurve::Ed25519
        {
            use base64::Engine;
            let point = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p.x.trim_end_matches('='))
                .map_err(|_| "unusable key: `x` is not base64url".to_owned())?;
            check_ed25519(&point)?;
        }
        let decoding = DecodingKey::from_jwk(jwk).map_err(|e| format!("unusable key: {e}"))?;
        Ok(Key {
            kid: jwk.common.key_id.as_deref().map(Into::into),
            family,
            curve,
            alg,
            decoding,
        })
    }
}

/// How a refusal of a weak key starts (so a JWKS fetch can count them apart).
pub const WEAK_KEY: &str = "weak key";

/// Refuse an Ed25519 public key that is not a point of the prime-order subgroup: with
/// a small-order key (the identity, or a point of order 2, 4 or 8) a signature with
/// R = identity and S = 0 verifies for many messages, so anyone could mint tokens; a
/// key with a small-order component is never one an honest signer made either.
pub fn check_ed25519(public: &[u8]) -> Result<(), String> {
    let bytes: [u8; 32] = public.try_into().map_err(|_| {
        format!(
            "unusable key: an Ed25519 key is 32 bytes, not {}",
            public.len()
        )
    })?;
    let point = curve25519_dalek::edwards::CompressedEdwardsY(bytes)
        .decompress()
        .ok_or_else(|| "unusable key: not a point of Ed25519".to_owned())?;
    if point.is_small_order() {
        return Err(format!(
            "{WEAK_KEY}: Ed25519 public key of small order (signatures would verify for anyone)"
        ));
    }
    if !point.is_torsion_free() {
        return Err(format!(
            "{WEAK_KEY}: Ed25519 public key outside the prime-order subgroup"
        ));
    }
    Ok(())
}

/// The 32 key bytes of an Ed25519 SubjectPublicKeyInfo in PEM form.
fn ed25519_of_pem(pem: &[u8]) -> Option<Vec<u8>> {
    use base64::Engine;
    // SEQUENCE { SEQUENCE { OID 1.3.101.112 } BIT STRING (32 bytes) }
    const PREFIX: &[u8] = &[
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let text = String::from_utf8_lossy(pem);
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    (der.len() == PREFIX.len() + 32 && der.starts_with(PREFIX))
        .then(|| der[PREFIX.len()..].to_vec())
}

/// The named curve in an EC SubjectPublicKeyInfo: look for the curve's OID bytes.
fn ec_curve_of_pem(pem: &[u8]) -> Curve {
    use base64::Engine;
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    let text = String::from_utf8_lossy(pem);
    let b64: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(b64.trim()) else {
        return Curve::Other;
    };
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    if has(P256) {
        Curve::P256
    } else if has(P384) {
        Curve::P384
    } else {
        Curve::Other
    }
}

/// Why no key could be chosen for a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pick {
    /// The token's `kid` is not in the set: a refresh may bring it.
    UnknownKid,
    /// No usable key: the `kid` names a key of another type, several keys share the
    /// `kid`, or a token without `kid` does not single out one key.
    NoKey,
}

/// The keys a provider verifies with at one moment. Immutable; replaced whole.
#[derive(Debug, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    /// Bumped whenever the keys change, so cached verifications made with older keys
    /// are not trusted any more.
    pub generation: u64,
    /// When these keys were fetched (JWKS URL only).
    pub fetched_at: Option<Instant>,
    pub fetched_at_wall: Option<SystemTime>,
    /// JWK entries that were skipped, with why (shown by the admin API).
    pub skipped: Vec<String>,
}

impl KeySet {
    /// Parse a JWKS document; unusable keys are skipped (and listed), not fatal.
    pub fn from_jwks(body: &[u8]) -> Result<(Vec<Key>, Vec<String>), String> {
        // Each key on its own: one key of an unknown type must not hide the others.
        #[derive(serde::Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (i, raw) in doc.keys.into_iter().enumerate() {
            let kid = raw
                .get("kid")
                .and_then(|k| k.as_str())
                .unwrap_or("no kid")
                .to_owned();
            let parsed = serde_json::from_value::<Jwk>(raw)
                .map_err(|e| format!("unsupported key: {e}"))
                .and_then(|jwk| Key::from_jwk(&jwk));
            match parsed {
                Ok(k) => keys.push(k),
                Err(e) => skipped.push(format!("keys[{i}] ({kid}): {e}")),
            }
        }
        Ok((keys, skipped))
    }

    /// The one key a token with header `alg` and `kid` may be verified with.
    ///
    /// A `kid` selects exactly one key (two keys with the same `kid` select none);
    /// without a `kid`, the set must hold exactly one key that accepts `alg`.
    pub fn pick(&self, alg: Algorithm, kid: Option<&str>) -> Result<&Key, Pick> {
        match kid {
            Some(kid) => {
                let mut named = self.keys.iter().filter(|k| k.kid.as_deref() == Some(kid));
                let Some(key) = named.next() else {
                    return Err(Pick::UnknownKid);
                };
                if named.next().is_some() || !key.accepts(alg) {
                    return Err(Pick::NoKey);
                }
                Ok(key)
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.accepts(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Ok(key),
                    _ => Err(Pick::NoKey),
                }
            }
        }
    }

    /// Key ids, for the admin API (keys without one show as `null`).
    pub fn kids(&self) -> Vec<Option<&str>> {
        self.keys.iter().map(|k| k.kid.as_deref()).collect()
    }
}
