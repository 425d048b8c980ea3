//! `status`: is a deployed environment serving? Its add-ons all there and
//! available, and for every orchestrator the stack deploys: its Deployment at the recorded release, /health through
//! the cluster, and the credentials its pods get logging in to the database
//! and Redis (`drivers::kubernetes::health`). Reads the state, changes no
//! resource, takes no lock.

use crate::drivers::kubernetes::health::{self, Probe, Tunnel};
use crate::drivers::kubernetes::manifests;
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
        .resolved_all("kubernetes.orchestrator", Unapplied::Refuse)
        .await?;
    let addons = s
        .resolved_all("kubernetes.manifests", Unapplied::Refuse)
        .await?;
    if targets.is_empty() && addons.is_empty() {
        return Err(OpError::Other(format!(
            "{} declares no kubernetes.orchestrator and no kubernetes.manifests: there is no service to check",
            s.stack.path.display()
        )));
    }
    // Roles whose server the tool itself reaches through a tunnel url.
    let tunnels: Vec<Tunnel> = s
        .resolved_all("postgres.role", Unapplied::Refuse)
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
