//! `status`: is a deployed environment serving? Its add-ons all there and
//! available, and for every orchestrator the stack deploys: its Deployment at the recorded release, /health through
//! the cluster, and the credentials its pods get logging in to the database
//! and Redis (`drivers::kubernetes::health`). Reads the state, changes no
//! resource, takes no lock.

use ralph_core::driver::Context;
use ralph_service::kubernetes::health::{self, Probe, Tunnel};
use ralph_service::kubernetes::manifests;
use serde_json::Value as Json;

use super::{OpError, Role, Session, Unapplied};

/// One orchestrator's checks.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub address: String,
    pub checks: Vec<Probe>,
}

/// The latest backup's age against the stack's RPO.
async fn backup_age(
    s: &Session,
    cx: &Context,
    state: &crate::state::State,
    rpo: std::time::Duration,
) -> Report {
    let t = std::time::Instant::now();
    let rpo_text = humantime(rpo);
    let (healthy, detail, target) = match super::backup::latest(s, cx, state).await {
        Ok(Some((key, at))) => {
            let age = (chrono::Utc::now() - at).to_std().unwrap_or_default();
            (
                age <= rpo,
                format!(
                    "the latest backup is {} old (RPO {rpo_text})",
                    humantime(age)
                ),
                key,
            )
        }
        Ok(None) => (
            false,
            format!("no backup yet (RPO {rpo_text}): run `ralph-deploy backup`"),
            "the backup bucket".to_string(),
        ),
        Err(e) => (false, e.to_string(), "the backup bucket".to_string()),
    };
    Report {
        address: "recovery".into(),
        checks: vec![Probe {
            check: "backup",
            target,
            healthy,
            detail,
            elapsed_ms: t.elapsed().as_millis() as u64,
        }],
    }
}

/// `1h05m`, `12m`, `40s`.
pub fn humantime(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, sec) => format!("{sec}s"),
        (0, m, _) => format!("{m}m"),
        (h, 0, _) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

pub async fn status(s: &Session, cx: &Context) -> Result<Vec<Report>, OpError> {
    // One read of the state serves every check.
    let (state, _) = s.read_state().await?;
    let targets = s.resolved_in(&state, Role::Orchestrator, Unapplied::Refuse)?;
    let addons = s.resolved_in(&state, Role::AddOns, Unapplied::Refuse)?;
    if targets.is_empty() && addons.is_empty() && s.stack.recovery.rpo.is_none() {
        // Nothing to check is an answer, not a failure: the caller says so.
        return Ok(Vec::new());
    }
    // Roles whose server the tool itself reaches through a tunnel url.
    let tunnels: Vec<Tunnel> = s
        .resolved_in(&state, Role::DatabaseLogin, Unapplied::Refuse)?
        .into_iter()
        .filter_map(|(_, p)| {
            let url = p
                .get("url")
                .and_then(Json::as_str)
                .filter(|u| !u.is_empty())?;
            Some(Tunnel {
                role: p.get("name").and_then(Json::as_str)?.to_string(),
                url: url.to_string(),
            })
        })
        .collect();
    let mut out = Vec::new();
    if let Some(rpo) = s.stack.recovery.rpo {
        out.push(backup_age(s, cx, &state, rpo).await);
    }
    for (address, props) in addons {
        let t = std::time::Instant::now();
        let (healthy, detail) = match manifests::health(cx, &props, &address).await {
            Ok(r) => r,
            Err(e) => (false, e.message),
        };
        out.push(Report {
            address,
            checks: vec![Probe {
                check: "add-ons",
                target: "the objects of the files".into(),
                healthy,
                detail,
                elapsed_ms: t.elapsed().as_millis() as u64,
            }],
        });
    }
    for (address, props) in targets {
        let image_ref = state.attribute(&address, "image_ref");
        let checks = health::check(
            cx,
            &props,
            image_ref.as_ref().and_then(Json::as_str),
            &tunnels,
        )
        .await;
        out.push(Report { address, checks });
    }
    Ok(out)
}
