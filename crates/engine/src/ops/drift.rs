//! Refresh-only: what changed in the cloud outside ralph-deploy, and
//! accepting it into the state without touching the cloud (Terraform's
//! `-refresh-only`). A resource that is gone is forgotten; a changed
//! attribute is recorded as the cloud reports it, so references and
//! outputs follow the real values.

use serde::Serialize;
use serde_json::Value as Json;

use super::{locked, OpError, Session};
use crate::plan::refresh::refresh;
use crate::state::State;
use ralph_core::driver::Context;

/// One recorded resource that no longer matches the cloud.
#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub address: String,
    pub kind: String,
    pub id: String,
    /// Gone from the cloud: the state entry is dropped.
    pub gone: bool,
    /// (attribute, recorded, reported)
    pub changed: Vec<DriftedAttr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DriftedAttr {
    pub name: String,
    pub recorded: Option<Json>,
    pub reported: Json,
}

/// The drift of `state` against the cloud, and the cloud as read.
async fn read_drift(
    s: &Session,
    cx: &Context,
    state: &State,
) -> Result<(Vec<Drift>, crate::plan::Refreshed), OpError> {
    let refreshed = refresh(Some(&s.stack), state, &s.registry, cx)
        .await
        .map_err(|e| OpError::Other(e.to_string()))?;
    let mut out = Vec::new();
    for (address, rs) in &state.resources {
        let Some(obs) = refreshed.current.get(address) else {
            out.push(Drift {
                address: address.clone(),
                kind: rs.kind.clone(),
                id: rs.id.clone(),
                gone: true,
                changed: Vec::new(),
            });
            continue;
        };
        let mut changed = Vec::new();
        for (name, reported) in &obs.attrs {
            if reported.is_null() {
                continue;
            }
            let recorded = rs.attrs.get(name).or_else(|| rs.inputs.get(name));
            // Only what the state knows: a value it never recorded is not drift.
            if let Some(recorded) = recorded {
                if recorded != reported {
                    changed.push(DriftedAttr {
                        name: name.clone(),
                        recorded: Some(recorded.clone()),
                        reported: reported.clone(),
                    });
                }
            }
        }
        if !changed.is_empty() {
            out.push(Drift {
                address: address.clone(),
                kind: rs.kind.clone(),
                id: obs.id.clone(),
                gone: false,
                changed,
            });
        }
    }
    Ok((out, refreshed))
}

/// `plan --refresh-only`: the drift, read-only (no lock, nothing written).
pub async fn plan(s: &Session, cx: &Context) -> Result<Vec<Drift>, OpError> {
    let (state, _) = s.read_state().await?;
    Ok(read_drift(s, cx, &state).await?.0)
}

/// `apply --refresh-only`: under the lock, reads the drift, asks `approve`
/// (given the drift), then writes the state as the cloud is. Returns the
/// drift, and whether it was written (false: none, or not approved).
pub async fn apply(
    s: &Session,
    cx: &Context,
    approve: &(dyn Fn(&[Drift]) -> Result<bool, OpError> + Sync),
) -> Result<(Vec<Drift>, bool), OpError> {
    locked(s, cx, "refresh-only", |l| async move {
        let mut state = l.state;
        let (drift, refreshed) = read_drift(s, cx, &state).await?;
        if drift.is_empty() || !approve(&drift)? {
            return Ok((drift, false));
        }
        for d in &drift {
            if d.gone {
                state.resources.remove(&d.address);
                continue;
            }
            if let (Some(rs), Some(obs)) = (
                state.resources.get_mut(&d.address),
                refreshed.current.get(&d.address),
            ) {
                rs.id = obs.id.clone();
                for a in &d.changed {
                    rs.attrs.insert(a.name.clone(), a.reported.clone());
                }
                rs.updated_at = chrono::Utc::now();
            }
        }
        crate::apply::record_outputs(&s.stack, &mut state);
        state.serial += 1;
        s.backend.write(&state).await?;
        Ok((drift, true))
    })
    .await
}
