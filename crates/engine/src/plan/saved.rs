//! Saved plans (`plan --out FILE`, then `apply FILE`).
//!
//! A plan file travels between CI jobs as an artifact, so `apply` treats it
//! as untrusted input:
//! - its content is bound to a SHA-256 digest written beside it, and, when
//!   `RALPH_DEPLOY_PLAN_KEY` is set, to an HMAC-SHA256 signature with that
//!   key; an edited or damaged file is refused before anything is read from
//!   it;
//! - the stack it names is loaded again and must still have the digest the
//!   plan recorded, and the state its lineage and serial;
//! - the changes are derived again from the stack, the state and the cloud,
//!   and must be the ones the file lists (action, id, protection, values),
//!   the way Terraform reports an inconsistent final plan; apply then runs
//!   the re-derived changes, never values taken from the file.

use std::collections::BTreeMap;
use std::path::Path;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::{Change, Plan, PLAN_FORMAT};

/// Where the signing key comes from.
pub const KEY_ENV: &str = "RALPH_DEPLOY_PLAN_KEY";
/// Plan files larger than this are refused unread.
const MAX_PLAN_BYTES: usize = 64 << 20;

/// A saved plan, with what is needed to load its stack again.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlanFile {
    pub plan: Plan,
    pub variables: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SavedPlanError {
    #[error("cannot read the plan file {path}: {message}")]
    Read { path: String, message: String },
    #[error("{path} is not a ralph-deploy plan file: {message}")]
    NotAPlan { path: String, message: String },
    #[error("the plan file {path} was changed after `plan --out` wrote it (its content no longer matches its digest); nothing was applied. Make a new plan with `ralph-deploy plan --out`")]
    Tampered { path: String },
    #[error("the plan file {path} {problem}, and {KEY_ENV} is set; nothing was applied. Make the plan with the same {KEY_ENV} in its environment")]
    Signature { path: String, problem: &'static str },
}

/// The bytes the digest and signature cover: compact JSON with every
/// object's keys sorted, so the digest does not depend on key order.
fn canonical(file: &PlanFile) -> Result<Vec<u8>, serde_json::Error> {
    fn sorted(v: Json) -> Json {
        match v {
            Json::Object(m) => {
                let mut entries: Vec<(String, Json)> = m.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Json::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
            }
            Json::Array(a) => Json::Array(a.into_iter().map(sorted).collect()),
            other => other,
        }
    }
    serde_json::to_vec(&sorted(serde_json::to_value(file)?))
}

fn digest_of(body: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(body)))
}

fn signature_of(key: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length, so this never fails; if it did, the
    // tag below matches nothing and the plan is refused (fails closed).
    match <Hmac<Sha256> as Mac>::new_from_slice(key) {
        Ok(mut mac) => {
            mac.update(body);
            format!("hmac-sha256:{}", hex::encode(mac.finalize().into_bytes()))
        }
        Err(_) => "hmac-sha256:unusable-key".to_string(),
    }
}

fn key_from_env() -> Option<Vec<u8>> {
    std::env::var_os(KEY_ENV)
        .filter(|k| !k.is_empty())
        .map(|k| k.into_encoded_bytes())
}

/// The bytes of a plan file: the plan, its digest and (with a key in the
/// environment) its signature.
pub fn to_bytes(file: &PlanFile) -> Result<Vec<u8>, serde_json::Error> {
    let body = canonical(file)?;
    let mut v = serde_json::to_value(file)?;
    v["digest"] = Json::String(digest_of(&body));
    if let Some(key) = key_from_env() {
        v["signature"] = Json::String(signature_of(&key, &body));
    }
    serde_json::to_vec_pretty(&v)
}

/// Whether `path` looks like a plan file (JSON with a `plan` object), as
/// opposed to a stack file. Reads at most a little of it.
pub fn looks_like_plan(path: &Path) -> bool {
    let Ok(bytes) = ralph_core::files::read_bounded(path, MAX_PLAN_BYTES) else {
        return false;
    };
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    if start.map(|i| bytes[i]) != Some(b'{') {
        return false;
    }
    serde_json::from_slice::<serde_json::Map<String, Json>>(&bytes)
        .map(|m| m.contains_key("plan"))
        .unwrap_or(false)
}

/// Reads and verifies a plan file: digest, signature (when a key is set),
/// format.
pub fn read(path: &Path) -> Result<PlanFile, SavedPlanError> {
    let p = path.display().to_string();
    let bytes = ralph_core::files::read_bounded(path, MAX_PLAN_BYTES).map_err(|e| {
        SavedPlanError::Read {
            path: p.clone(),
            message: e.to_string(),
        }
    })?;
    let mut v: serde_json::Map<String, Json> =
        serde_json::from_slice(&bytes).map_err(|e| SavedPlanError::NotAPlan {
            path: p.clone(),
            message: format!("not JSON ({e})"),
        })?;
    let digest = v.remove("digest");
    let signature = v.remove("signature");
    let file: PlanFile =
        serde_json::from_value(Json::Object(v)).map_err(|e| SavedPlanError::Tampered {
            path: format!("{p} ({e})"),
        })?;
    if file.plan.format != PLAN_FORMAT {
        return Err(SavedPlanError::NotAPlan {
            path: p,
            message: format!(
                "its format is `{}`; this ralph-deploy reads `{PLAN_FORMAT}`",
                file.plan.format
            ),
        });
    }
    let body = canonical(&file).map_err(|e| SavedPlanError::NotAPlan {
        path: p.clone(),
        message: e.to_string(),
    })?;
    if digest.as_ref().and_then(Json::as_str) != Some(digest_of(&body).as_str()) {
        return Err(SavedPlanError::Tampered { path: p });
    }
    if let Some(key) = key_from_env() {
        match signature.as_ref().and_then(Json::as_str) {
            None => {
                return Err(SavedPlanError::Signature {
                    path: p,
                    problem: "is not signed",
                })
            }
            Some(sig) => {
                let want = signature_of(&key, &body);
                // Constant-time comparison of the tags.
                let same = sig.len() == want.len()
                    && sig
                        .bytes()
                        .zip(want.bytes())
                        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                        == 0;
                if !same {
                    return Err(SavedPlanError::Signature {
                        path: p,
                        problem:
                            "carries a signature that does not match its content under this key",
                    });
                }
            }
        }
    }
    Ok(file)
}

/// What of a change decides what apply does: everything but the cloud's
/// report of the current values and the human-readable reason.
fn essence(c: &Change) -> Json {
    let attributes: Vec<Json> = c
        .attributes
        .iter()
        .map(|a| serde_json::json!([a.name, a.after, a.forces_replace]))
        .collect();
    serde_json::json!({
        "kind": c.kind,
        "action": c.action,
        "id": c.id,
        "adopt": c.adopt,
        "protect": c.protect,
        "depends_on": c.depends_on,
        "attributes": attributes,
    })
}

/// How the saved changes differ from the ones derived again now; empty when
/// they are the same.
pub fn differences(saved: &[Change], now: &[Change]) -> Vec<String> {
    let index = |list: &[Change]| -> BTreeMap<String, Vec<Json>> {
        let mut m: BTreeMap<String, Vec<Json>> = BTreeMap::new();
        for c in list {
            m.entry(c.address.clone()).or_default().push(essence(c));
        }
        for v in m.values_mut() {
            v.sort_by_key(|j| j.to_string());
        }
        m
    };
    let (a, b) = (index(saved), index(now));
    let mut out = Vec::new();
    let describe = |list: Option<&Vec<Json>>| -> String {
        match list {
            None => "nothing".to_string(),
            Some(l) => l
                .iter()
                .map(|j| {
                    let action = j["action"].as_str().unwrap_or("?");
                    match j["id"].as_str() {
                        Some(id) => format!("{action} of {id}"),
                        None => action.to_string(),
                    }
                })
                .collect::<Vec<_>>()
                .join(" and "),
        }
    };
    let addresses: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    for addr in addresses {
        let (x, y) = (a.get(addr), b.get(addr));
        if x == y {
            continue;
        }
        let (dx, dy) = (describe(x), describe(y));
        if dx != dy {
            out.push(format!("{addr}: the plan says {dx}, now it is {dy}"));
        } else {
            out.push(format!(
                "{addr}: the plan's {dx} differs in its values or protection from the one derived now"
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Action, AttrChange};

    fn plan(changes: Vec<Change>) -> PlanFile {
        PlanFile {
            plan: Plan {
                format: PLAN_FORMAT.into(),
                stack: "s".into(),
                stack_path: "stacks/s.yaml".into(),
                environment: "production".into(),
                stack_digest: "d".into(),
                selection: Default::default(),
                replace: vec![],
                refreshed: true,
                state_lineage: Some("l".into()),
                state_serial: 3,
                destroy: false,
                moves: vec![],
                changes,
                created_at: chrono::Utc::now(),
            },
            variables: vec![],
        }
    }

    fn change(address: &str, action: Action) -> Change {
        Change {
            id: Some(format!("{address}-id")),
            attributes: vec![AttrChange {
                name: "cidr_block".into(),
                before: Some(Json::String("10.0.0.0/16".into())),
                after: Some(Json::String("10.1.0.0/16".into())),
                forces_replace: true,
                partial: None,
            }],
            ..Change::new(address, "aws.vpc", action)
        }
    }

    #[test]
    fn any_edit_is_refused_and_the_untouched_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.plan");
        let file = plan(vec![change("vpc", Action::Replace)]);
        std::fs::write(&path, to_bytes(&file).unwrap()).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.plan.changes, file.plan.changes);
        let text = std::fs::read_to_string(&path).unwrap();
        for (from, to) in [
            ("\"replace\"", "\"delete\""),
            ("\"production\"", "\"staging\""),
            ("\"protect\": false", "\"protect\": true"),
            ("vpc-id", "vpc-other"),
            ("10.1.0.0/16", "10.2.0.0/16"),
        ] {
            assert!(text.contains(from), "{from}");
            std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
            let e = read(&path).unwrap_err();
            assert!(matches!(e, SavedPlanError::Tampered { .. }), "{from}: {e}");
        }
    }

    #[test]
    fn differences_name_the_address_and_both_actions() {
        let saved = vec![change("vpc", Action::Delete)];
        let now = vec![change("vpc", Action::Replace)];
        let d = differences(&saved, &now);
        assert_eq!(d.len(), 1);
        assert!(
            d[0].contains("vpc: the plan says delete of vpc-id, now it is replace of vpc-id"),
            "{}",
            d[0]
        );
        let mut edited = change("vpc", Action::Replace);
        edited.protect = true;
        assert_eq!(differences(&[edited], &now).len(), 1);
        assert!(differences(&now.clone(), &now).is_empty());
    }
}
