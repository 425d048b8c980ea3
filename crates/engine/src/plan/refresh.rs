//! Refresh: read what exists, one listing per kind, all kinds at once.
//!
//! Each recorded resource is matched by its id; a resource carrying this
//! stack's ownership tags for an address that has no live match is adopted;
//! tagged resources for addresses that are neither declared nor recorded
//! (or second copies) are orphans, which the plan deletes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use crate::state::State;
use ralph_core::driver::{Context, Known, Observed, Registry};
use ralph_core::events::Event;
use ralph_stack::Stack;

use super::PlanError;

#[derive(Debug, Default, Clone)]
pub struct Refreshed {
    /// The live resource for each declared or recorded address.
    pub current: BTreeMap<String, Observed>,
    /// The kind of each entry of `current`.
    pub kinds: BTreeMap<String, String>,
    /// Addresses whose resource was found by tags rather than by the state's id.
    pub adopted: BTreeSet<String>,
    /// (address, kind, resource): tagged as ours, but nobody wants them.
    pub orphans: Vec<(String, String, Observed)>,
}

impl Refreshed {
    /// What the state recorded, as if the cloud had been read
    /// (`--refresh=false`): each resource as last applied, with the
    /// attributes the cloud assigned then.
    pub fn from_state(state: &State) -> Refreshed {
        let mut r = Refreshed {
            current: BTreeMap::new(),
            kinds: BTreeMap::new(),
            adopted: BTreeSet::new(),
            orphans: Vec::new(),
        };
        for (address, rs) in &state.resources {
            let mut attrs = rs.inputs.clone();
            for (k, v) in &rs.attrs {
                attrs.insert(k.clone(), v.clone());
            }
            r.current.insert(
                address.clone(),
                Observed {
                    address: Some(address.clone()),
                    // Recorded means ours: no ownership tags to restore.
                    owner: Some(ralph_core::driver::Owner {
                        stack: state.stack.clone(),
                        environment: state.environment.clone(),
                    }),
                    id: rs.id.clone(),
                    attrs,
                },
            );
            r.kinds.insert(address.clone(), rs.kind.clone());
        }
        r
    }
}

pub async fn refresh(
    stack: Option<&Stack>,
    state: &State,
    registry: &Registry,
    cx: &Context,
) -> Result<Refreshed, PlanError> {
    let mut kinds: BTreeSet<String> = state.resources.values().map(|r| r.kind.clone()).collect();
    if let Some(stack) = stack {
        kinds.extend(stack.resources.values().map(|r| r.kind.kind.to_string()));
    }
    let kinds: Vec<(String, &dyn ralph_core::driver::Driver)> = kinds
        .into_iter()
        .filter_map(|k| registry.driver(&k).map(|d| (k, d)))
        .collect();
    cx.reporter
        .report(Event::RefreshStarted { kinds: kinds.len() });
    let started = Instant::now();

    let pending: std::sync::Mutex<BTreeSet<String>> =
        std::sync::Mutex::new(kinds.iter().map(|(k, _)| k.clone()).collect());
    let pending = &pending;
    let listings = futures::future::join_all(kinds.iter().map(|(kind, driver)| async move {
        let known = known_of(stack, state, kind, *driver);
        let listing = driver.refresh(cx, &known).await;
        if let Ok(mut p) = pending.lock() {
            p.remove(kind);
        }
        (kind.clone(), listing)
    }));
    // A cloud that does not answer is named within seconds, not after the
    // operation timeout: a mistyped endpoint or a broken proxy looks like
    // this.
    let listings = {
        tokio::pin!(listings);
        let mut next = std::time::Duration::from_secs(5);
        loop {
            tokio::select! {
                done = &mut listings => break done,
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(started + next)) => {
                    report_waiting(cx, pending, next);
                    next = (next * 2).min(next + std::time::Duration::from_secs(30));
                }
            }
        }
    };

    let mut out = Refreshed::default();
    let declared = |address: &str, kind: &str| -> bool {
        stack
            .and_then(|s| s.resources.get(address))
            .is_some_and(|r| r.kind.kind == kind)
            || state.resources.get(address).is_some_and(|r| r.kind == kind)
    };
    for (kind, listing) in listings {
        let mut found = match listing {
            // An API the project has not enabled holds nothing yet: a new
            // project's first plan reads it as empty (the stack enables it
            // before its resources). With something recorded, the refusal
            // stands: the API was turned off under the stack.
            Err(e) if e.api_disabled && !state.resources.values().any(|r| r.kind == kind) => {
                Vec::new()
            }
            other => other.map_err(|e| PlanError::Refresh {
                kind: kind.clone(),
                message: e.message,
            })?,
        };
        found.retain(|o| o.owner.as_ref().is_none_or(|owner| *owner == cx.owner));
        let mut unmatched: Vec<Observed> = Vec::new();
        // First: recorded ids.
        for obs in found {
            let by_id = state
                .resources
                .iter()
                .find(|(_, r)| r.kind == kind && r.id == obs.id)
                .map(|(a, _)| a.clone());
            match by_id {
                Some(address) => {
                    out.kinds.insert(address.clone(), kind.clone());
                    out.current.insert(address, obs);
                }
                None => unmatched.push(obs),
            }
        }
        // Then: ownership tags, for addresses without a live match.
        for obs in unmatched {
            let Some(address) = obs.address.clone() else {
                continue;
            };
            // Made under a name the stack has since `moved`.
            let address = match stack {
                Some(s) if !declared(&address, &kind) => moved_to(&s.moves(), address),
                _ => address,
            };
            if declared(&address, &kind) && !out.current.contains_key(&address) {
                out.adopted.insert(address.clone());
                out.kinds.insert(address.clone(), kind.clone());
                out.current.insert(address, obs);
            } else {
                out.orphans.push((address, kind.clone(), obs));
            }
        }
    }
    look_up_missing(state, registry, cx, &mut out).await?;
    let resources = out.current.len() + out.orphans.len();
    cx.reporter.report(Event::RefreshFinished {
        resources,
        elapsed_ms: started.elapsed().as_millis(),
    });
    Ok(out)
}

/// What refresh asks `kind`'s driver about: the recorded resources, and the
/// names the stack gives (kinds named by the stack can be looked up before
/// the state knows them).
fn known_of(
    stack: Option<&Stack>,
    state: &State,
    kind: &str,
    driver: &dyn ralph_core::driver::Driver,
) -> Vec<Known> {
    let mut known: Vec<Known> = state
        .resources
        .values()
        .filter(|r| &r.kind == kind)
        .map(|r| Known {
            id: r.id.clone(),
            inputs: r.inputs.clone(),
            attrs: r.attrs.clone(),
        })
        .collect();
    // Kinds named by the stack can be looked up before the state knows them.
    if let (Some(stack), Some(field)) = (stack, driver.schema().name_field) {
        for r in stack.resources.values().filter(|r| r.kind.kind == kind) {
            if let Some(name) = r.properties.get(field).and_then(|p| p.value.literal_str()) {
                if !known.iter().any(|k| k.id == name) {
                    known.push(Known {
                        id: name.to_string(),
                        ..Default::default()
                    });
                }
            }
        }
    }
    known
}

/// Names who has not answered yet, one line per party and address.
fn report_waiting(
    cx: &Context,
    pending: &std::sync::Mutex<BTreeSet<String>>,
    next: std::time::Duration,
) {
    let waiting: Vec<String> = pending
        .lock()
        .map(|p| p.iter().cloned().collect())
        .unwrap_or_default();
    // One line per party waited for, naming where it is.
    let mut by_party: Vec<(ralph_core::remote::Party, String, Vec<String>)> = Vec::new();
    for kind in waiting {
        let (party, at) = cx.party_of(&kind);
        match by_party
            .iter_mut()
            .find(|(p, a, _)| *p == party && *a == at)
        {
            Some((_, _, kinds)) => kinds.push(kind),
            None => by_party.push((party, at, vec![kind])),
        }
    }
    for (party, at, kinds) in by_party {
        let shown = kinds.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
        let more = kinds.len().saturating_sub(4);
        cx.reporter.report(Event::Warning {
            message: format!(
                "still reading the cloud after {}s: no answer yet for {shown}{} from {} at {at} (each call gives up after {}s, {}=SECONDS changes that)",
                next.as_secs(),
                if more > 0 { format!(" and {more} more") } else { String::new() },
                party.name(),
                ralph_core::remote::api_timeout().as_secs(),
                ralph_core::remote::API_TIMEOUT_ENV,
            ),
        });
    }
}

/// Recorded resources the listings did not return, looked up by id, so one
/// whose ownership tags are gone (removed by hand, or an imported resource
/// not tagged yet) is not taken for deleted.
async fn look_up_missing(
    state: &State,
    registry: &Registry,
    cx: &Context,
    out: &mut Refreshed,
) -> Result<(), PlanError> {
    let missing: Vec<(&String, &crate::state::ResourceState)> = state
        .resources
        .iter()
        .filter(|(a, _)| !out.current.contains_key(*a))
        .collect();
    let looked_up = futures::future::join_all(missing.into_iter().filter_map(|(address, rs)| {
        let driver = registry.driver(&rs.kind)?;
        tracing::debug!(address = %address, kind = %rs.kind, id = %rs.id, "not in the listing: looked up by id");
        Some(async move { (address, rs, driver.lookup(cx, &rs.id).await) })
    }))
    .await;
    for (address, rs, found) in looked_up {
        let found = found.map_err(|e| PlanError::Refresh {
            kind: rs.kind.clone(),
            message: e.message,
        })?;
        if let Some(obs) = found.filter(|o| o.owner.as_ref().is_none_or(|owner| *owner == cx.owner))
        {
            out.orphans.retain(|(_, _, o)| o.id != obs.id);
            out.kinds.insert(address.clone(), rs.kind.clone());
            out.current.insert(address.clone(), obs);
        }
    }
    Ok(())
}

/// Where `address` is after the stack's `moved` entries.
fn moved_to(moves: &[(String, String)], mut address: String) -> String {
    for (from, to) in moves {
        if ralph_core::model::address::is_under(&address, from) {
            address = format!("{to}{}", &address[from.len()..]);
        }
    }
    address
}
