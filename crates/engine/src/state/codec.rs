//! Client-side state encryption, for every backend: the state, its
//! snapshots and history (and, in the remote stores, the intents) are
//! sealed before they are stored, so the store only ever sees ciphertext.
//!
//! - `RALPH_DEPLOY_STATE_KEY` (32 bytes as 64 hex digits or base64):
//!   AES-256-GCM with a fresh 96-bit nonce per write.
//! - `RALPH_DEPLOY_STATE_KMS_KEY` (or `state.kms_key` in the stack): envelope
//!   encryption, a data key from AWS KMS `GenerateDataKey` (AES-256) per
//!   run, stored encrypted beside the ciphertext and opened with KMS
//!   `Decrypt`.
//! - `RALPH_DEPLOY_STATE_OLD_KEY`: a previous key that can still open what it
//!   sealed (`state rekey` rewrites the state with the current one).
//!
//! Without any of them bodies are stored as they are, unless the stack says
//! `state: { encrypt: true }`, which makes a missing key an error. A sealed
//! body read without its key, or with another, is an error that names what
//! to do; nothing is overwritten.

use std::collections::HashMap;
use std::sync::Mutex;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;

pub const KEY_ENV: &str = "RALPH_DEPLOY_STATE_KEY";
pub const OLD_KEY_ENV: &str = "RALPH_DEPLOY_STATE_OLD_KEY";
pub const KMS_ENV: &str = "RALPH_DEPLOY_STATE_KMS_KEY";
const MAGIC: &[u8] = b"RDSEAL1\0";
const KMS_MAGIC: &[u8] = b"RDKMS1\0\0";

/// How bodies are sealed and opened in one run.
pub struct Sealer {
    key: Option<Aes256Gcm>,
    old: Option<Aes256Gcm>,
    kms: Option<Kms>,
    required: bool,
}

struct Kms {
    key_id: String,
    region: Option<String>,
    client: tokio::sync::OnceCell<aws_sdk_kms::Client>,
    /// This run's data key: (plaintext, encrypted blob).
    data: tokio::sync::OnceCell<(Vec<u8>, Vec<u8>)>,
    /// Data keys opened so far, by encrypted blob.
    opened: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
}

fn parse_key(var: &str) -> Result<Option<Aes256Gcm>, String> {
    let Ok(text) = std::env::var(var) else {
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
            .map_err(|_| format!("{var} is neither 64 hex digits nor base64"))?
    };
    if bytes.len() != 32 {
        return Err(format!(
            "{var} must be 32 bytes (AES-256), it is {}; make one with `openssl rand -hex 32`",
            bytes.len()
        ));
    }
    Aes256Gcm::new_from_slice(&bytes)
        .map(Some)
        .map_err(|e| e.to_string())
}

fn aes_seal(cipher: &Aes256Gcm, plain: &[u8]) -> Result<(Vec<u8>, [u8; 12]), String> {
    let nonce: [u8; 12] = rand::random();
    let sealed = cipher
        .encrypt(Nonce::from_slice(&nonce), plain)
        .map_err(|_| "encrypting the state failed".to_string())?;
    Ok((sealed, nonce))
}

impl Sealer {
    /// Plain storage (no key): what tests and library callers get by default.
    pub fn none() -> Sealer {
        Sealer {
            key: None,
            old: None,
            kms: None,
            required: false,
        }
    }

    /// From the environment, plus the stack's `state` settings: a KMS key
    /// (the environment's wins) and whether encryption is required.
    pub fn from_env(
        stack_kms_key: Option<&str>,
        region: Option<String>,
        required: bool,
    ) -> Result<Sealer, String> {
        let kms_key = std::env::var(KMS_ENV)
            .ok()
            .filter(|k| !k.trim().is_empty())
            .or_else(|| stack_kms_key.map(str::to_string));
        let sealer = Sealer {
            key: parse_key(KEY_ENV)?,
            old: parse_key(OLD_KEY_ENV)?,
            kms: kms_key.map(|key_id| Kms {
                key_id,
                region,
                client: tokio::sync::OnceCell::new(),
                data: tokio::sync::OnceCell::new(),
                opened: Mutex::new(HashMap::new()),
            }),
            required,
        };
        if required && sealer.key.is_none() && sealer.kms.is_none() {
            return Err(format!(
                "the stack says `state: {{ encrypt: true }}`, but no key is set: set {KEY_ENV} (32 bytes, `openssl rand -hex 32`) or {KMS_ENV} (a KMS key id, ARN or alias)"
            ));
        }
        Ok(sealer)
    }

    /// Whether new bodies are sealed.
    pub fn enabled(&self) -> bool {
        self.key.is_some() || self.kms.is_some()
    }

    /// `plain` as it is stored.
    pub async fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, String> {
        if let Some(kms) = &self.kms {
            let (data_key, blob) = kms.data_key().await?;
            let cipher = Aes256Gcm::new_from_slice(&data_key).map_err(|e| e.to_string())?;
            let (sealed, nonce) = aes_seal(&cipher, plain)?;
            let mut out = Vec::with_capacity(KMS_MAGIC.len() + 4 + blob.len() + 12 + sealed.len());
            out.extend_from_slice(KMS_MAGIC);
            out.extend_from_slice(&(blob.len() as u32).to_be_bytes());
            out.extend_from_slice(&blob);
            out.extend_from_slice(&nonce);
            out.extend_from_slice(&sealed);
            return Ok(out);
        }
        let Some(cipher) = &self.key else {
            if self.required {
                return Err(format!("encryption is required but {KEY_ENV} is not set"));
            }
            return Ok(plain.to_vec());
        };
        let (sealed, nonce) = aes_seal(cipher, plain)?;
        let mut out = Vec::with_capacity(MAGIC.len() + 12 + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// A stored body as plain bytes.
    /// A state as indented JSON (what a person reads in a plain store),
    /// sealed.
    pub async fn seal_state(&self, state: &super::State) -> Result<Vec<u8>, String> {
        let plain = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
        self.seal(&plain).await
    }

    /// A journal record (an intent, a result) as one line of JSON, sealed.
    pub async fn seal_record<T: serde::Serialize>(&self, record: &T) -> Result<Vec<u8>, String> {
        let plain = serde_json::to_vec(record).map_err(|e| e.to_string())?;
        self.seal(&plain).await
    }

    pub async fn open(&self, stored: &[u8]) -> Result<Vec<u8>, String> {
        if let Some(rest) = stored.strip_prefix(KMS_MAGIC) {
            return self.open_kms(rest).await;
        }
        let Some(rest) = stored.strip_prefix(MAGIC) else {
            return Ok(stored.to_vec());
        };
        if self.key.is_none() && self.old.is_none() {
            return Err(format!(
                "the stored state is encrypted; set {KEY_ENV} to the key it was written with"
            ));
        }
        if rest.len() < 12 {
            return Err("the stored state is encrypted but truncated".into());
        }
        let (nonce, sealed) = rest.split_at(12);
        for cipher in [&self.key, &self.old].into_iter().flatten() {
            if let Ok(plain) = cipher.decrypt(Nonce::from_slice(nonce), sealed) {
                return Ok(plain);
            }
        }
        Err(format!(
            "cannot decrypt the stored state: {KEY_ENV} is not the key it was written with (or the data was altered); during a key rotation put the previous key in {OLD_KEY_ENV}"
        ))
    }

    async fn open_kms(&self, rest: &[u8]) -> Result<Vec<u8>, String> {
        let bad = || "the stored state is KMS-encrypted but truncated".to_string();
        if rest.len() < 4 {
            return Err(bad());
        }
        let n = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let rest = &rest[4..];
        if rest.len() < n + 12 {
            return Err(bad());
        }
        let (blob, rest) = rest.split_at(n);
        let (nonce, sealed) = rest.split_at(12);
        let data_key = match &self.kms {
            Some(kms) => kms.open_data_key(blob).await?,
            None => Kms {
                key_id: String::new(),
                region: None,
                client: tokio::sync::OnceCell::new(),
                data: tokio::sync::OnceCell::new(),
                opened: Mutex::new(HashMap::new()),
            }
            .open_data_key(blob)
            .await
            .map_err(|e| format!("the stored state is encrypted with an AWS KMS key: {e}"))?,
        };
        let cipher = Aes256Gcm::new_from_slice(&data_key).map_err(|e| e.to_string())?;
        cipher
            .decrypt(Nonce::from_slice(nonce), sealed)
            .map_err(|_| {
                "cannot decrypt the stored state with its KMS data key (the data was altered)"
                    .to_string()
            })
    }
}

impl Kms {
    async fn client(&self) -> &aws_sdk_kms::Client {
        self.client
            .get_or_init(|| async {
                aws_sdk_kms::Client::new(&super::aws_sdk_config(self.region.as_deref()).await)
            })
            .await
    }

    async fn data_key(&self) -> Result<(Vec<u8>, Vec<u8>), String> {
        self.data
            .get_or_try_init(|| async {
                let out = self
                    .client()
                    .await
                    .generate_data_key()
                    .key_id(&self.key_id)
                    .key_spec(aws_sdk_kms::types::DataKeySpec::Aes256)
                    .send()
                    .await
                    .map_err(|e| {
                        format!(
                            "KMS GenerateDataKey with key {}: {}",
                            self.key_id,
                            aws_sdk_kms::error::DisplayErrorContext(e)
                        )
                    })?;
                let plain = out
                    .plaintext()
                    .map(|b| b.as_ref().to_vec())
                    .ok_or("KMS returned no data key")?;
                let blob = out
                    .ciphertext_blob()
                    .map(|b| b.as_ref().to_vec())
                    .ok_or("KMS returned no encrypted data key")?;
                Ok::<_, String>((plain, blob))
            })
            .await
            .cloned()
    }

    async fn open_data_key(&self, blob: &[u8]) -> Result<Vec<u8>, String> {
        if let Some(k) = self.opened.lock().ok().and_then(|m| m.get(blob).cloned()) {
            return Ok(k);
        }
        let out = self
            .client()
            .await
            .decrypt()
            .ciphertext_blob(aws_sdk_kms::primitives::Blob::new(blob.to_vec()))
            .send()
            .await
            .map_err(|e| {
                format!(
                    "KMS Decrypt of the state's data key: {} (the credentials need kms:Decrypt on the key it was written with)",
                    aws_sdk_kms::error::DisplayErrorContext(e)
                )
            })?;
        let key = out
            .plaintext()
            .map(|b| b.as_ref().to_vec())
            .ok_or("KMS returned no plaintext")?;
        if let Ok(mut m) = self.opened.lock() {
            m.insert(blob.to_vec(), key.clone());
        }
        Ok(key)
    }
}

#[cfg(test)]
impl Sealer {
    /// A sealer with this key (64 hex digits), for tests of other modules.
    pub fn with_key(hex_key: &str) -> Sealer {
        Sealer {
            key: Some(Aes256Gcm::new_from_slice(&hex::decode(hex_key).unwrap()).unwrap()),
            old: None,
            kms: None,
            required: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(key: Option<&str>, old: Option<&str>) -> Sealer {
        let k = |t: Option<&str>| {
            t.map(|t| Aes256Gcm::new_from_slice(&hex::decode(t).unwrap()).unwrap())
        };
        Sealer {
            key: k(key),
            old: k(old),
            kms: None,
            required: false,
        }
    }

    #[tokio::test]
    async fn seals_opens_rotates_and_refuses_a_wrong_or_missing_key() {
        let (a, b) = ("11".repeat(32), "22".repeat(32));
        let sealed = with(Some(&a), None).seal(b"{\"serial\": 1}").await.unwrap();
        assert!(sealed.starts_with(MAGIC));
        assert!(!String::from_utf8_lossy(&sealed).contains("serial"));
        assert_eq!(
            with(Some(&a), None).open(&sealed).await.unwrap(),
            b"{\"serial\": 1}"
        );
        // Plain bodies (written before encryption was turned on) still read.
        assert_eq!(with(Some(&a), None).open(b"plain").await.unwrap(), b"plain");
        assert!(with(Some(&b), None)
            .open(&sealed)
            .await
            .unwrap_err()
            .contains("not the key"));
        // During a rotation the previous key still opens.
        assert!(with(Some(&b), Some(&a)).open(&sealed).await.is_ok());
        assert!(with(None, None)
            .open(&sealed)
            .await
            .unwrap_err()
            .contains("encrypted"));
        assert_eq!(with(None, None).seal(b"x").await.unwrap(), b"x");
        let mut required = with(None, None);
        required.required = true;
        assert!(required.seal(b"x").await.is_err());
    }
}
