//! Owns API-key digests: SHA-256 of the key's bytes, written as 64 hex digits in the
//! config, in `keys_file`s (one per line) and by `gateway hash-key`.

use sha2::{Digest as _, Sha256};

pub type Digest = [u8; 32];

/// The SHA-256 digest of a key.
pub fn digest(key: &[u8]) -> Digest {
    Sha256::digest(key).into()
}

/// Parse a digest written as 64 hex digits (either case).
pub fn parse_digest(text: &str) -> Result<Digest, String> {
    let text = text.trim();
    let mut out = [0u8; 32];
    if text.len() != 64 || hex::decode_to_slice(text, &mut out).is_err() {
        return Err(
            "not a SHA-256 digest (64 hex digits; `gateway hash-key` prints one for a key)".into(),
        );
    }
    Ok(out)
}

/// Parse a keys file: one digest per line; blank lines and `#` comments are skipped.
/// An error names the (1-based) line.
pub fn parse_keys_file(text: &str) -> Result<Vec<Digest>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        out.push(parse_digest(line).map_err(|e| format!("line {}: {e}", i + 1))?);
    }
    Ok(out)
}
