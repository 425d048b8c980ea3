//! Client-side state encryption: with `RALPH_DEPLOY_STATE_KEY` set (32
//! bytes, as 64 hex digits or base64), every state, snapshot and intent a
//! remote backend stores is sealed with AES-256-GCM (a fresh 96-bit nonce
//! per write), so the store only ever sees ciphertext. Without the key,
//! bodies are stored as they are; a sealed body read without the key, or
//! with another key, is an error that names what to do, and nothing is
//! overwritten.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;

pub const KEY_ENV: &str = "RALPH_DEPLOY_STATE_KEY";
const MAGIC: &[u8] = b"RDSEAL1\0";

fn key() -> Result<Option<Aes256Gcm>, String> {
    let Ok(text) = std::env::var(KEY_ENV) else {
        return Ok(None);
    };
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(text).map_err(|e| e.to_string())?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| format!("{KEY_ENV} is neither 64 hex digits nor base64"))?
    };
    if bytes.len() != 32 {
        return Err(format!(
            "{KEY_ENV} must be 32 bytes (AES-256), it is {}; make one with `openssl rand -hex 32`",
            bytes.len()
        ));
    }
    Aes256Gcm::new_from_slice(&bytes)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Whether stored bodies are sealed.
pub fn enabled() -> bool {
    matches!(key(), Ok(Some(_)))
}

/// `plain` as it is stored: sealed when a key is set.
pub fn seal(plain: &[u8]) -> Result<Vec<u8>, String> {
    let Some(cipher) = key()? else {
        return Ok(plain.to_vec());
    };
    let nonce: [u8; 12] = rand::random();
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), plain)
        .map_err(|_| "encrypting the state failed".to_string())?;
    let mut out = Vec::with_capacity(MAGIC.len() + 12 + sealed.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    Ok(out)
}

/// A stored body as plain bytes.
pub fn open(stored: &[u8]) -> Result<Vec<u8>, String> {
    let Some(rest) = stored.strip_prefix(MAGIC) else {
        return Ok(stored.to_vec());
    };
    let Some(cipher) = key()? else {
        return Err(format!(
            "the stored state is encrypted; set {KEY_ENV} to the key it was written with"
        ));
    };
    if rest.len() < 12 {
        return Err("the stored state is encrypted but truncated".into());
    }
    let (nonce, sealed) = rest.split_at(12);
    cipher
        .decrypt(Nonce::from_slice(nonce), sealed)
        .map_err(|_| {
            format!("cannot decrypt the stored state: {KEY_ENV} is not the key it was written with (or the data was altered)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_opens_and_refuses_a_wrong_or_missing_key() {
        // One test touches the variable, so tests in parallel do not race.
        std::env::set_var(KEY_ENV, "11".repeat(32));
        let sealed = seal(b"{\"serial\": 1}").unwrap();
        assert!(sealed.starts_with(MAGIC));
        assert!(!String::from_utf8_lossy(&sealed).contains("serial"));
        assert_eq!(open(&sealed).unwrap(), b"{\"serial\": 1}");
        // Plain bodies (written before encryption was turned on) still read.
        assert_eq!(open(b"plain").unwrap(), b"plain");
        std::env::set_var(KEY_ENV, "22".repeat(32));
        assert!(open(&sealed).unwrap_err().contains("not the key"));
        std::env::set_var(KEY_ENV, "short");
        assert!(seal(b"x").unwrap_err().contains(KEY_ENV));
        std::env::remove_var(KEY_ENV);
        assert!(open(&sealed).unwrap_err().contains("encrypted"));
        assert_eq!(seal(b"x").unwrap(), b"x");
    }
}
