//! Secret values the tool makes or reads once: the generated value of
//! `aws.secret` and `gcp.secret` (random bytes, hex, base64 or
//! alphanumeric, or an operator's environment variable), their rotation
//! schedule, and the check of a secret source. The value itself lives only
//! in the caller until it is sent to the secret store.

use base64::Engine as _;
use rand::RngCore;
use serde_json::Value as Json;

use super::{Desired, DriverError};
use crate::model::kinds::{checks, Field, Ty};

pub fn encoding(v: &Json) -> Result<(), String> {
    match v.as_str() {
        Some("hex" | "base64" | "alphanumeric") => Ok(()),
        other => Err(format!(
            "encoding {} is not one of hex, base64, alphanumeric",
            crate::model::kinds::shown(other)
        )),
    }
}

pub fn env_name(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
    checks::require(ok, || {
        format!("`{s}` is not an environment variable name (UPPER_CASE letters, digits, _)")
    })
}

pub static GENERATE: &[Field] = &[
    Field::new(
        "bytes",
        Ty::Int,
        "random bytes (or characters for alphanumeric)",
    )
    .default("32")
    .check(checks::range::<8, 4096>),
    Field::new("encoding", Ty::String, "hex, base64 or alphanumeric")
        .default("\"hex\"")
        .check(encoding),
];

/// `generate`, shared by `aws.secret` and `gcp.secret`.
pub const fn generate_field() -> Field {
    Field::new(
        "generate",
        Ty::Object(GENERATE),
        "generate the value: `{bytes: 32, encoding: hex}`",
    )
}

/// `value_from_env`, shared by both.
pub const fn value_from_env_field() -> Field {
    Field::new(
        "value_from_env",
        Ty::String,
        "take the value from this environment variable at the first apply",
    )
    .check(env_name)
}

/// `rotate_every_days`, shared by both.
pub const fn rotate_every_field() -> Field {
    Field::new(
        "rotate_every_days",
        Ty::Int,
        "rotate on a schedule, at most a year apart: `rotation` gains the first day of the current period of this many days (periods counted from 1970-01-01, so every run agrees), so the first plan of a new period shows the rotation and its apply makes the new version. Setting it rotates once",
    )
    .check(checks::range::<1, 365>)
}

/// Adds the current period of `rotate_every_days` (if set) to `rotation`:
/// "0" every 90 days reads "0 (every 90 days from 2026-10-29)" until the
/// next period starts.
pub fn scheduled_rotation(props: &mut serde_json::Map<String, Json>, today: chrono::NaiveDate) {
    let Some(days) = props
        .get("rotate_every_days")
        .and_then(Json::as_i64)
        .filter(|d| *d > 0)
    else {
        return;
    };
    let epoch = chrono::NaiveDate::default();
    let n = (today - epoch).num_days();
    let start = epoch + chrono::Duration::days(n - n.rem_euclid(days));
    let base = props
        .get("rotation")
        .and_then(Json::as_str)
        .unwrap_or_default();
    let period = format!("every {days} days from {start}");
    let rotation = if base.is_empty() {
        period
    } else {
        format!("{base} ({period})")
    };
    props.insert("rotation".into(), Json::String(rotation));
}

/// Makes the value. It lives only in this function's caller until sent.
pub fn make_value(want: &Desired<'_>) -> Result<String, DriverError> {
    if let Some(g) = want.props.get("generate").and_then(Json::as_object) {
        let n = g
            .get("bytes")
            .and_then(Json::as_i64)
            .unwrap_or(32)
            .clamp(8, 4096) as usize;
        let enc = g.get("encoding").and_then(Json::as_str).unwrap_or("hex");
        let mut rng = rand::rng();
        return Ok(match enc {
            "base64" => {
                let mut buf = vec![0u8; n];
                rng.fill_bytes(&mut buf);
                base64::engine::general_purpose::STANDARD.encode(buf)
            }
            "alphanumeric" => {
                const CHARS: &[u8] =
                    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
                (0..n)
                    .map(|_| CHARS[(rng.next_u32() as usize) % CHARS.len()] as char)
                    .collect()
            }
            _ => {
                let mut buf = vec![0u8; n];
                rng.fill_bytes(&mut buf);
                hex::encode(buf)
            }
        });
    }
    let var = want.required_str("value_from_env")?;
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(DriverError::new(format!(
            "the secret's value comes from the environment variable {var}, which is not set: set it for this first apply (afterwards the value lives only in the secret store)"
        ))),
    }
}

/// A secret source: a Secrets Manager ARN or name (optionally `#key`) or
/// `env:VARIABLE`.
pub fn secret_source(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    match s.strip_prefix("env:") {
        Some(var)
            if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
        {
            Err(format!(
                "`{s}` does not name an environment variable after `env:`"
            ))
        }
        _ => Ok(()),
    }
}

/// An `env:NAME` source: the variable's value, and `env` as its version;
/// `None` for any other source.
pub fn read_env(what: &str, source: &str) -> Option<Result<(String, String), DriverError>> {
    let var = source.strip_prefix("env:")?;
    Some(
        std::env::var(var)
            .map(|v| (v, "env".to_string()))
            .map_err(|_| {
                DriverError::new(format!("{what}: the environment variable {var} is not set"))
            }),
    )
}
