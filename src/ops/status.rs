//! `status`: is a deployed environment serving? For every orchestrator the
//! stack deploys: its Deployment at the recorded release, /health through
//! the cluster, and the credentials its pods get logging in to the database
//! and Redis (`drivers::kubernetes::health`). Reads the state, changes no
//! resource, takes no lock.

use crate::drivers::kubernetes::health::{self, Probe, Tunnel};
use crate::drivers::Context;
use serde_json::Value as Json;

use super::{OpError, Session, Unapplied};

/// One orchestrator's checks.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub address: String,
    pub checks: Vec<Probe>,
}

pub async fn status(s: &Session, cx: &Context) -> Result<Vec<Report>, OpError> {
    let targets = s
        .resolved_targets("kubernetes.orchestrator", Unapplied::Refuse)
        .await?;
    if targets.is_empty() {
        return Err(OpError::Other(format!(
            "{} declares no kubernetes.orchestrator: there is no service to check",
            s.stack.path.display()
        )));
    }
    // Roles whose server the tool itself reaches through a tunnel url.
    let tunnels: Vec<Tunnel> = s
        .resolved_targets("postgres.role", Unapplied::Refuse)
        .await?
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
    let (state, _) = s.read_state().await?;
    let mut out = Vec::new();
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
