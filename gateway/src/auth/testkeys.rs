//! Test and benchmark fixtures: fresh signing keys for every supported family, their
//! public JWKs, and token signing. Not used by the gateway itself.

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// A private key that signs tokens, and its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub encoding: EncodingKey,
    /// Public JWK (with `kid` when set); for HMAC, an `oct` JWK with the secret.
    pub jwk: Value,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Errors of key generation, as text (fixtures fail loudly in their callers).
pub type FixtureResult<T> = Result<T, String>;

impl SigningKey {
    /// A fresh key for `alg` (RSA 2048 for RS*/PS*, P-256/P-384, Ed25519, 32-byte HMAC).
    pub fn generate(alg: Algorithm, kid: Option<&str>) -> FixtureResult<SigningKey> {
        let rng = SystemRandom::new();
        let (encoding, mut jwk) = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => {
                let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(|e| e.to_string())?;
                let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair)
                    .map_err(|e| e.to_string())?;
                let public = pair.public_key();
                let jwk = json!({
                    "kty": "RSA",
                    "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                    "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
                });
                let enc = EncodingKey::from_rsa_pem(pem("PRIVATE KEY", der.as_ref()).as_bytes())
                    .map_err(|e| e.to_string())?;
                (enc, jwk)
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                let (signing, crv, len) = if alg == Algorithm::ES256 {
                    (&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32)
                } else {
                    (&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48)
                };
                let doc = EcdsaKeyPair::generate_pkcs8(signing, &rng).map_err(|e| e.to_string())?;
                let pair =
                    EcdsaKeyPair::from_pkcs8(signing, doc.as_ref()).map_err(|e| e.to_string())?;
                // Uncompressed point: 0x04 || x || y.
                let point = pair.public_key().as_ref();
                let jwk = json!({
                    "kty": "EC",
                    "crv": crv,
                    "x": URL_SAFE_NO_PAD.encode(&point[1..1 + len]),
                    "y": URL_SAFE_NO_PAD.encode(&point[1 + len..]),
                });
                (EncodingKey::from_ec_der(doc.as_ref()), jwk)
            }
            Algorithm::EdDSA => {
                let doc = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
                let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| e.to_string())?;
                let jwk = json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
                });
                (EncodingKey::from_ed_der(doc.as_ref()), jwk)
            }
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let mut secret = [0u8; 32];
                aws_lc_rs::rand::SecureRandom::fill(&rng, &mut secret)
                    .map_err(|e| e.to_string())?;
                let jwk = json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode(secret)});
                (EncodingKey::from_secret(&secret), jwk)
            }
            other => return Err(format!("no fixture for {other:?}")),
        };
        if let Some(kid) = kid {
            jwk["kid"] = json!(kid);
        }
        Ok(SigningKey {
            alg,
            kid: kid.map(str::to_owned),
            encoding,
            jwk,
        })
    }

    /// Sign `claims` with this key's algorithm and `kid`.
    pub fn sign(&self, claims: &Value) -> FixtureResult<String> {
        let mut header = Header::new(self.alg);
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.encoding).map_err(|e| e.to_string())
    }

    /// Sign with a custom header (e.g. with `crit`, `jku` or a different `alg`).
    pub fn sign_with(&self, header: &Header, claims: &Value) -> FixtureResult<String> {
        jsonwebtoken::encode(header, claims, &self.encoding).map_err(|e| e.to_string())
    }
}

/// A JWKS document holding these keys' public JWKs.
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

/// Sign `header` and `claims` given as raw JSON with `key` (for headers the `Header`
/// type cannot express, such as `crit`).
pub fn sign_raw(key: &SigningKey, header: &Value, claims: &Value) -> FixtureResult<String> {
    let h = URL_SAFE_NO_PAD.encode(header.to_string());
    let c = URL_SAFE_NO_PAD.encode(claims.to_string());
    let message = format!("{h}.{c}");
    let alg = header["alg"]
        .as_str()
        .and_then(|a| a.parse::<Algorithm>().ok())
        .unwrap_or(key.alg);
    let sig = jsonwebtoken::crypto::sign(message.as_bytes(), &key.encoding, alg)
        .map_err(|e| e.to_string())?;
    Ok(format!("{message}.{sig}"))
}
