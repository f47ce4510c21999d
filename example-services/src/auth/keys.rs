//! Owns the auth service's signing keys: generation, rotation, the active key that signs
//! a token, and their protection at rest.
//!
//! With a key-encryption key (`AUTH_KEY_ENCRYPTION_KEY`: 32 random bytes, base64) every
//! private key is stored sealed with AES-256-GCM (aws-lc-rs, a fresh random 96-bit nonce
//! per seal), bound to its row by the AAD (`kid` and algorithm), so a copied database or
//! backup holds no usable key. A blob is `AKEK1` | key id (8 bytes) | nonce (12) |
//! ciphertext and tag; the key id (a SHA-256 prefix of the key-encryption key) tells a
//! wrong key from a damaged blob. Keys stored in clear by an earlier start are sealed at
//! the next start with a key; `AUTH_KEY_ENCRYPTION_KEY_PREVIOUS` lets the key-encryption
//! key be rotated (keys sealed with the previous one are resealed with the current one).
//! Without a key the private keys are stored in clear (a warning at every start), and a
//! database holding sealed keys refuses to start.

use std::path::Path;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sqlx::{Row, SqlitePool};

use super::{SigningAlg, env_secret, now_secs};
use crate::common::error::ApiError;

/// Marks a sealed private key; a PKCS#8 key in clear starts with a DER SEQUENCE (0x30).
const MAGIC: &[u8; 5] = b"AKEK1";
const KEY_ID_LEN: usize = 8;
const HEADER_LEN: usize = MAGIC.len() + KEY_ID_LEN + NONCE_LEN;

/// One AES-256-GCM key-encryption key and its id.
struct Sealer {
    key: RandomizedNonceKey,
    id: [u8; KEY_ID_LEN],
}

impl Sealer {
    fn from_base64(var: &str, text: &str) -> Result<Self, String> {
        let bytes = STANDARD.decode(text.trim()).map_err(|e| {
            format!("{var} is not base64 ({e}); make one with `openssl rand -base64 32`")
        })?;
        if bytes.len() != 32 {
            return Err(format!(
                "{var} must decode to 32 bytes (AES-256), not {}; make one with `openssl rand -base64 32`",
                bytes.len()
            ));
        }
        let key = RandomizedNonceKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| format!("{var} is not a usable AES-256 key"))?;
        let mut id = [0u8; KEY_ID_LEN];
        let mut input = b"auth key-encryption key id\0".to_vec();
        input.extend_from_slice(&bytes);
        id.copy_from_slice(&digest(&SHA256, &input).as_ref()[..KEY_ID_LEN]);
        Ok(Self { key, id })
    }

    fn seal(&self, aad: &[u8], der: &[u8]) -> Result<Vec<u8>, ApiError> {
        let mut body = der.to_vec();
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(aad), &mut body)
            .map_err(|_| ApiError::internal("sealing a signing key failed"))?;
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.id);
        out.extend_from_slice(nonce.as_ref());
        out.extend_from_slice(&body);
        Ok(out)
    }
}

/// The key-encryption keys from the environment: the current one seals, the previous
/// one (while rotating) only opens.
pub struct KeyEncryption {
    current: Sealer,
    previous: Option<Sealer>,
}

impl std::fmt::Debug for KeyEncryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself: only which keys are loaded.
        f.debug_struct("KeyEncryption")
            .field("previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

impl KeyEncryption {
    /// `current` and `previous` are base64 texts, as in `AUTH_KEY_ENCRYPTION_KEY` and
    /// `AUTH_KEY_ENCRYPTION_KEY_PREVIOUS`; an error names the variable and the fix.
    pub fn from_base64(current: &str, previous: Option<&str>) -> Result<Self, String> {
        Ok(Self {
            current: Sealer::from_base64("AUTH_KEY_ENCRYPTION_KEY", current)?,
            previous: previous
                .map(|p| Sealer::from_base64("AUTH_KEY_ENCRYPTION_KEY_PREVIOUS", p))
                .transpose()?,
        })
    }

    /// From `file` (`--key-encryption-key-file`) or the env `AUTH_KEY_ENCRYPTION_KEY`,
    /// with `AUTH_KEY_ENCRYPTION_KEY_PREVIOUS` while rotating; `None` when neither is set.
    pub fn from_env(file: Option<&Path>) -> Result<Option<Self>, String> {
        let current = match (file, env_secret("AUTH_KEY_ENCRYPTION_KEY")) {
            (Some(_), Some(_)) => {
                return Err("give the key-encryption key once: --key-encryption-key-file or AUTH_KEY_ENCRYPTION_KEY, not both".into());
            }
            (Some(path), None) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| format!("key-encryption key file {}: {e}", path.display()))?,
            ),
            (None, key) => key,
        };
        let previous = env_secret("AUTH_KEY_ENCRYPTION_KEY_PREVIOUS");
        match current {
            Some(current) => Self::from_base64(&current, previous.as_deref()).map(Some),
            None if previous.is_some() => Err(
                "AUTH_KEY_ENCRYPTION_KEY_PREVIOUS needs the new key in AUTH_KEY_ENCRYPTION_KEY"
                    .into(),
            ),
            None => Ok(None),
        }
    }

    fn sealer(&self, id: &[u8]) -> Option<&Sealer> {
        std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .find(|s| s.id == id)
    }
}

/// Why a stored key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(
        "signing key {kid} is encrypted at rest, but no AUTH_KEY_ENCRYPTION_KEY is set: start with the key-encryption key it was sealed with"
    )]
    NoKey { kid: String },
    #[error(
        "signing key {kid} was sealed with a different AUTH_KEY_ENCRYPTION_KEY (wrong key?): start with the key it was sealed with, or set the new one as AUTH_KEY_ENCRYPTION_KEY and the old one as AUTH_KEY_ENCRYPTION_KEY_PREVIOUS to reseal"
    )]
    WrongKey { kid: String },
    #[error(
        "signing key {kid} does not decrypt with AUTH_KEY_ENCRYPTION_KEY: the stored key is damaged"
    )]
    Damaged { kid: String },
}

fn aad(kid: &str, alg: &str) -> Vec<u8> {
    format!("auth signing key\0{kid}\0{alg}").into_bytes()
}

/// The private key (PKCS#8 DER) stored for `kid`, opened when sealed. The second value
/// says whether it should be resealed (in clear, or sealed with the previous key).
fn open(
    kek: Option<&KeyEncryption>,
    kid: &str,
    alg: &str,
    stored: &[u8],
) -> Result<(Vec<u8>, bool), KeyError> {
    let Some(rest) = stored.strip_prefix(MAGIC.as_slice()) else {
        return Ok((stored.to_vec(), kek.is_some()));
    };
    let Some(kek) = kek else {
        return Err(KeyError::NoKey { kid: kid.into() });
    };
    let damaged = || KeyError::Damaged { kid: kid.into() };
    let (id, rest) = rest.split_at_checked(KEY_ID_LEN).ok_or_else(damaged)?;
    let (nonce, sealed) = rest.split_at_checked(NONCE_LEN).ok_or_else(damaged)?;
    let sealer = kek
        .sealer(id)
        .ok_or_else(|| KeyError::WrongKey { kid: kid.into() })?;
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| damaged())?;
    let mut body = sealed.to_vec();
    let plain = sealer
        .key
        .open_in_place(nonce, Aad::from(aad(kid, alg)), &mut body)
        .map_err(|_| damaged())?;
    let stale = !std::ptr::eq(sealer, &kek.current);
    Ok((plain.to_vec(), stale))
}

/// What is stored for a fresh key: sealed with the current key, or in clear without one.
fn store(
    kek: Option<&KeyEncryption>,
    kid: &str,
    alg: &str,
    der: &[u8],
) -> Result<Vec<u8>, ApiError> {
    match kek {
        Some(k) => k.current.seal(&aad(kid, alg), der),
        None => Ok(der.to_vec()),
    }
}

pub(crate) fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A fresh key pair: PKCS#8 private key and the public JWK (without `kid`).
fn generate(alg: SigningAlg) -> Result<(Vec<u8>, Value), ApiError> {
    match alg {
        SigningAlg::Rs256 => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(|_| ApiError::internal("RSA key generation failed"))?;
            let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair)
                .map_err(|_| ApiError::internal("RSA key export failed"))?;
            let public = pair.public_key();
            let jwk = json!({
                "kty": "RSA",
                "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
            });
            Ok((der.as_ref().to_vec(), jwk))
        }
        SigningAlg::EdDsa => {
            let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                .map_err(|_| ApiError::internal("Ed25519 key generation failed"))?;
            let pair = Ed25519KeyPair::from_pkcs8(doc.as_ref())
                .map_err(|_| ApiError::internal("Ed25519 key reload failed"))?;
            let jwk = json!({
                "kty": "OKP",
                "crv": "Ed25519",
                "x": URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            });
            Ok((doc.as_ref().to_vec(), jwk))
        }
    }
}

/// Add a new signing key for `alg` and retire the current one (returns the new `kid`).
pub async fn rotate(
    db: &SqlitePool,
    alg: SigningAlg,
    kek: Option<&KeyEncryption>,
) -> Result<String, ApiError> {
    let (der, mut jwk) = generate(alg)?;
    let kid = uuid::Uuid::new_v4().simple().to_string();
    jwk["kid"] = json!(kid);
    jwk["alg"] = json!(alg.name());
    jwk["use"] = json!("sig");
    let stored = store(kek, &kid, alg.name(), &der)?;
    let now = now_secs();
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE signing_keys SET retired_at = ? WHERE alg = ? AND retired_at IS NULL")
        .bind(now)
        .bind(alg.name())
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO signing_keys (kid, alg, private_der, public_jwk, created_at) VALUES (?, ?, ?, ?, ?)",
    )
    .bind(&kid)
    .bind(alg.name())
    .bind(stored)
    .bind(jwk.to_string())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(kid = %kid, alg = alg.name(), sealed = kek.is_some(), "new signing key");
    Ok(kid)
}

/// At every start: check that every stored key opens with the configured key-encryption
/// key (a clear error otherwise), seal keys stored in clear or with the previous key, warn
/// when keys stay in clear, and make sure both algorithms have an active key.
pub async fn ensure_keys(db: &SqlitePool, kek: Option<&KeyEncryption>) -> anyhow::Result<()> {
    // The OAuth tables live with their module; every start comes through here.
    sqlx::raw_sql(super::oauth::SCHEMA).execute(db).await?;
    let rows = sqlx::query("SELECT kid, alg, private_der FROM signing_keys")
        .fetch_all(db)
        .await?;
    let mut resealed = 0;
    for row in &rows {
        let kid: String = row.try_get("kid")?;
        let alg: String = row.try_get("alg")?;
        let stored: Vec<u8> = row.try_get("private_der")?;
        let (der, stale) = open(kek, &kid, &alg, &stored)?;
        if stale {
            let sealed = store(kek, &kid, &alg, &der)
                .map_err(|e| anyhow::anyhow!("sealing signing key {kid}: {}", e.message))?;
            sqlx::query("UPDATE signing_keys SET private_der = ? WHERE kid = ?")
                .bind(sealed)
                .bind(&kid)
                .execute(db)
                .await?;
            resealed += 1;
        }
    }
    if resealed > 0 {
        tracing::info!(
            keys = resealed,
            "signing keys sealed with AUTH_KEY_ENCRYPTION_KEY"
        );
    }
    if kek.is_none() {
        tracing::warn!(
            "signing keys are stored unencrypted: set AUTH_KEY_ENCRYPTION_KEY (32 random bytes, base64) to seal them at rest"
        );
    }
    for alg in [SigningAlg::Rs256, SigningAlg::EdDsa] {
        let active: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM signing_keys WHERE alg = ? AND retired_at IS NULL",
        )
        .bind(alg.name())
        .fetch_one(db)
        .await?;
        if active == 0 {
            rotate(db, alg, kek)
                .await
                .map_err(|e| anyhow::anyhow!("generating a {} key: {}", alg.name(), e.message))?;
        }
    }
    Ok(())
}

/// The active key for `alg`: its `kid` and private key (PKCS#8 DER, opened).
pub(crate) async fn active(
    db: &SqlitePool,
    alg: SigningAlg,
    kek: Option<&KeyEncryption>,
) -> Result<(String, Vec<u8>), ApiError> {
    let key = sqlx::query(
        "SELECT kid, private_der FROM signing_keys WHERE alg = ? AND retired_at IS NULL ORDER BY created_at DESC LIMIT 1",
    )
    .bind(alg.name())
    .fetch_optional(db)
    .await?
    .ok_or_else(|| ApiError::internal("no active signing key"))?;
    let kid: String = key.try_get("kid")?;
    let stored: Vec<u8> = key.try_get("private_der")?;
    let (der, _) = open(kek, &kid, alg.name(), &stored).map_err(ApiError::internal)?;
    Ok((kid, der))
}
