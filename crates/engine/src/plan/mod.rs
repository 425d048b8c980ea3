//! Plan: refresh what exists, then diff the stack against it.
//!
//! For every resource the plan says one of no change, create, update in
//! place (which attributes), replace (which attribute forces it) or delete.
//! Refresh lists each kind once by the ownership tags, so resources changed
//! or deleted outside the tool are seen, and resources the tool created but
//! never recorded (an interrupted apply) are adopted instead of duplicated.

pub mod refresh;
pub mod saved;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

use crate::state::State;
use ralph_core::driver::{Driver, Observed, Owner, Registry};
use ralph_core::model::kinds::{KindSchema, Ty};
use ralph_stack::{Reference, Resource, Stack};

pub use refresh::Refreshed;

pub const PLAN_FORMAT: &str = "ralph-deploy-plan/1";

pub use ralph_core::model::Action;

pub use ralph_core::change::{AttrChange, Change};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub format: String,
    pub stack: String,
    pub stack_path: String,
    pub environment: String,
    pub stack_digest: String,
    /// The state this plan was made against; applying it elsewhere is refused.
    pub state_lineage: Option<String>,
    pub state_serial: u64,
    pub destroy: bool,
    /// State entries the stack's `moved` list renames before the changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<Move>,
    pub changes: Vec<Change>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// `--target` / `--exclude`: the plan covers only part of the stack.
    #[serde(default, skip_serializing_if = "Selection::is_empty")]
    pub selection: Selection,
    /// `--replace`: resources replaced although nothing forces it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replace: Vec<String>,
    /// False for `--refresh=false`: made from the state alone, without
    /// reading the cloud.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub refreshed: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

/// What a plan covers and how it is made: the selection, the resources to
/// replace (`--replace`), and whether the cloud is read (`--refresh`).
#[derive(Debug, Clone)]
pub struct Scope {
    pub selection: Selection,
    pub replace: Vec<String>,
    pub refresh: bool,
}

impl Default for Scope {
    fn default() -> Self {
        Scope {
            selection: Selection::default(),
            replace: Vec::new(),
            refresh: true,
        }
    }
}

impl Scope {
    /// The scope a saved plan was made with.
    pub fn of(plan: &Plan) -> Scope {
        Scope {
            selection: plan.selection.clone(),
            replace: plan.replace.clone(),
            refresh: plan.refreshed,
        }
    }
}

/// Which resources a run covers: the targets (and what they need), less
/// the excluded ones (and what needs them). Empty: all of them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Selection {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excludes: Vec<String>,
}

impl Selection {
    pub fn is_empty(&self) -> bool {
        self.targets.is_empty() && self.excludes.is_empty()
    }

    /// An address a pattern names: itself, its `for_each` instances
    /// (`private` names `private["a"]`), or a component's resources (`app`
    /// names `app.orchestrator`).
    pub fn names(pattern: &str, address: &str) -> bool {
        address == pattern
            || address
                .strip_prefix(pattern)
                .is_some_and(|rest| rest.starts_with('[') || rest.starts_with('.'))
    }

    /// Keeps the changes the selection covers. `deps` maps each address to
    /// what it needs. A build needs its dependencies built first; a destroy
    /// needs its dependents gone first: the closure follows that direction
    /// from the targets, and the other from the excluded. Returns the
    /// addresses left out, or an error naming a pattern that names nothing.
    pub fn apply(
        &self,
        changes: &mut Vec<Change>,
        deps: &BTreeMap<String, Vec<String>>,
        destroy: bool,
    ) -> Result<Vec<String>, String> {
        if self.is_empty() {
            return Ok(Vec::new());
        }
        let mut reverse: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (a, ds) in deps {
            for d in ds {
                reverse.entry(d.clone()).or_default().push(a.clone());
            }
        }
        let (needs, needed_by) = if destroy {
            (&reverse, deps)
        } else {
            (deps, &reverse)
        };
        let known: std::collections::BTreeSet<&str> = deps
            .keys()
            .map(String::as_str)
            .chain(changes.iter().map(|c| c.address.as_str()))
            .collect();
        let closure = |patterns: &[String],
                       edges: &BTreeMap<String, Vec<String>>,
                       flag: &str|
         -> Result<std::collections::BTreeSet<String>, String> {
            let mut out = std::collections::BTreeSet::new();
            let mut todo = Vec::new();
            for p in patterns {
                let hits: Vec<&str> = known
                    .iter()
                    .copied()
                    .filter(|a| Selection::names(p, a))
                    .collect();
                if hits.is_empty() {
                    let names: Vec<&str> = known.iter().copied().collect();
                    let hint = ralph_core::model::did_you_mean(p, names.iter().copied())
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default();
                    return Err(format!("{flag} {p}: the stack has no such resource{hint}"));
                }
                todo.extend(hits.into_iter().map(str::to_string));
            }
            while let Some(a) = todo.pop() {
                if out.insert(a.clone()) {
                    todo.extend(edges.get(&a).into_iter().flatten().cloned());
                }
            }
            Ok(out)
        };
        let kept = if self.targets.is_empty() {
            None
        } else {
            Some(closure(&self.targets, needs, "--target")?)
        };
        let dropped = closure(&self.excludes, needed_by, "--exclude")?;
        let mut left_out = Vec::new();
        changes.retain(|c| {
            let keep = kept.as_ref().is_none_or(|k| k.contains(&c.address))
                && !dropped.contains(&c.address);
            if !keep && c.action != Action::NoOp {
                left_out.push(c.address.clone());
            }
            keep
        });
        Ok(left_out)
    }
}

/// `from` has moved to `to`: only the state's name for the resource changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Move {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Default, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Counts {
    pub create: usize,
    pub update: usize,
    pub replace: usize,
    pub delete: usize,
    pub adopt: usize,
    #[serde(rename = "move")]
    pub moved: usize,
    pub unchanged: usize,
}

impl Plan {
    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            moved: self.moves.len(),
            ..Counts::default()
        };
        for ch in &self.changes {
            match ch.action {
                // Adopted as it is: counted once, as adopted.
                Action::NoOp if ch.adopt => {}
                Action::NoOp => c.unchanged += 1,
                Action::Create => c.create += 1,
                Action::Update => c.update += 1,
                Action::Replace => c.replace += 1,
                Action::Delete => c.delete += 1,
            }
            if ch.adopt {
                c.adopt += 1;
            }
        }
        c
    }

    pub fn has_changes(&self) -> bool {
        !self.moves.is_empty() || self.changes.iter().any(Change::is_change)
    }

    /// Deletes and replacements of protected resources.
    pub fn protected_violations(&self) -> Vec<&Change> {
        self.changes
            .iter()
            .filter(|c| c.protect && matches!(c.action, Action::Delete | Action::Replace))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("refreshing {kind}: {message}")]
    Refresh { kind: String, message: String },
    #[error("{address}: {message}")]
    Properties { address: String, message: String },
}

/// The properties a resource should have: references resolved through
/// `lookup` (`None` where not known yet), defaults filled, normalized.
pub fn desired_properties(
    r: &Resource,
    driver: &dyn Driver,
    owner: &Owner,
    base_dir: &std::path::Path,
    lookup: &dyn Fn(&Reference) -> Option<Json>,
) -> Result<BTreeMap<String, Option<Json>>, PlanError> {
    let kind = r.kind;
    let mut out: BTreeMap<String, Option<Json>> = BTreeMap::new();
    for f in kind.fields {
        let v = match r.properties.get(f.name) {
            Some(p) => p.value.evaluate(lookup),
            None => match f.default_value() {
                Some(d) => Some(d),
                None => continue,
            },
        };
        out.insert(f.name.to_string(), v);
    }
    if kind.taggable {
        if let Some(Some(Json::Object(tags))) = out.get_mut("tags") {
            if !tags.contains_key("Name") {
                tags.insert(
                    "Name".into(),
                    Json::String(format!(
                        "{}-{}-{}",
                        owner.stack,
                        owner.environment,
                        ralph_core::model::address::to_tag(&r.address)
                    )),
                );
            }
        }
    }
    // Normalize what is fully known.
    let mut known: Map<String, Json> = out
        .iter()
        .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
        .collect();
    let complete = known.len() == out.len();
    if let Err(message) = driver.normalize(base_dir, &mut known) {
        // With values still unknown the kind cannot judge them yet.
        if complete {
            return Err(PlanError::Properties {
                address: r.address.clone(),
                message,
            });
        }
    }
    for (k, v) in known {
        out.insert(k, Some(v));
    }
    Ok(out)
}

/// Whether the stack gives the resource a `Name` tag of its own (unknown
/// tags count as yes: they are compared in full).
fn names_itself(r: &Resource) -> bool {
    match r.properties.get("tags").map(|p| p.value.to_literal()) {
        None => false,
        Some(Some(Json::Object(m))) => m.contains_key("Name"),
        Some(_) => true,
    }
}

/// Compares two values of a field, sets without regard to order.
pub fn same_value(ty: &Ty, a: &Json, b: &Json) -> bool {
    match ty {
        Ty::Set(_) => {
            let norm = |v: &Json| {
                let mut items: Vec<String> = v
                    .as_array()
                    .map(|a| a.iter().map(|x| x.to_string()).collect())
                    .unwrap_or_default();
                items.sort();
                items.dedup();
                items
            };
            norm(a) == norm(b)
        }
        Ty::StringMap => {
            let norm = |v: &Json| -> BTreeMap<String, String> {
                v.as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), ralph_stack::expr::json_to_text(v)))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            norm(a) == norm(b)
        }
        Ty::Version => match (a.as_str(), b.as_str()) {
            (Some(want), Some(have)) => have == want || have.starts_with(&format!("{want}.")),
            _ => a == b,
        },
        _ => a == b,
    }
}

/// Plans the stack against the state and what refresh found.
pub fn diff(
    stack: &Stack,
    state: &State,
    refreshed: &Refreshed,
    registry: &Registry,
    owner: &Owner,
    replace: &[String],
) -> Result<Vec<Change>, PlanError> {
    // Loading refuses cycles, so the order is topological; name order is
    // only a fallback for a stack built without `Stack::load`.
    let order = match stack.graph() {
        Ok(g) => g.topological(),
        Err(_) => stack.resources.keys().cloned().collect(),
    };
    let mut planned: BTreeMap<String, Action> = BTreeMap::new();
    // Attributes that planned updates give new values.
    let mut renewed: BTreeMap<String, Vec<&'static str>> = BTreeMap::new();
    let mut changes = Vec::new();
    for address in order {
        let Some(r) = stack.resources.get(&address) else {
            continue;
        };
        let Some(driver) = registry.driver(r.kind.kind) else {
            continue;
        };
        let lookup = |reference: &Reference| -> Option<Json> {
            match planned.get(&reference.address) {
                Some(Action::NoOp | Action::Update) => {}
                _ => return None,
            }
            if renewed
                .get(&reference.address)
                .is_some_and(|r| r.contains(&reference.attribute.as_str()))
            {
                return None;
            }
            let current = refreshed.current.get(&reference.address)?;
            if reference.attribute == "id" {
                return Some(Json::String(current.id.clone()));
            }
            current
                .attrs
                .get(&reference.attribute)
                .cloned()
                .or_else(|| state.attribute(&reference.address, &reference.attribute))
        };
        let desired = desired_properties(r, driver, owner, &stack.base_dir(), &lookup)?;
        let mut change = diff_one(
            r,
            r.kind,
            &desired,
            refreshed.current.get(&address),
            state,
            refreshed.adopted.contains(&address),
            r.dependencies()
                .into_iter()
                .filter(|d| stack.resources.contains_key(d))
                .collect(),
        );
        // A list or map unknown as a whole is still shown in its known parts.
        for a in change.attributes.iter_mut().filter(|a| a.after.is_none()) {
            if let Some(p) = r.properties.get(&a.name) {
                let partial = p.value.evaluate_partial(&lookup);
                if matches!(partial, Json::Array(_) | Json::Object(_))
                    && ralph_stack::expr::partly_known(&partial)
                {
                    a.partial = Some(partial);
                }
            }
        }
        // `--replace`: an existing resource is replaced although nothing
        // forces it (a resource to create is simply created).
        if matches!(change.action, Action::NoOp | Action::Update)
            && change.id.is_some()
            && replace.iter().any(|p| Selection::names(p, &address))
        {
            change.action = Action::Replace;
            change.reason = Some("replacement asked for with --replace".into());
        }
        if change.action == Action::Update {
            let renews: Vec<&'static str> = change
                .attributes
                .iter()
                .filter_map(|a| r.kind.field(&a.name))
                .flat_map(|f| f.renews.iter().copied())
                .collect();
            if !renews.is_empty() {
                renewed.insert(address.clone(), renews);
            }
        }
        planned.insert(address.clone(), change.action);
        changes.push(change);
    }
    departed(stack, state, refreshed, &mut changes);
    fill_from_state(&mut changes, state);
    Ok(changes)
}

/// Deletions: recorded or tagged resources that the stack no longer
/// declares, and the orphans refresh found by their ownership tags.
fn departed(stack: &Stack, state: &State, refreshed: &Refreshed, changes: &mut Vec<Change>) {
    for (address, rs) in &state.resources {
        if stack.resources.contains_key(address) {
            continue;
        }
        let current = refreshed.current.get(address);
        if current.is_none() {
            // Already gone from the cloud: only the state entry goes.
            changes.push(Change {
                id: Some(rs.id.clone()),
                reason: Some("no longer in the stack (already gone from the cloud)".into()),
                protect: rs.protect,
                depends_on: rs.depends_on.clone(),
                ..Change::new(address, &rs.kind, Action::Delete)
            });
            continue;
        }
        changes.push(delete_change(
            address,
            &rs.kind,
            current,
            rs.protect,
            rs.depends_on.clone(),
            "no longer in the stack",
        ));
    }
    let reason = "found in the cloud by its ownership tags, but not declared in the stack";
    changes.extend(orphan_deletes(refreshed, reason));
}

/// Deletes of what refresh found tagged as this stack's and nothing records.
fn orphan_deletes<'a>(
    refreshed: &'a Refreshed,
    reason: &'a str,
) -> impl Iterator<Item = Change> + 'a {
    let orphans = refreshed.orphans.iter();
    orphans.map(move |(address, kind, obs)| {
        delete_change(address, kind, Some(obs), false, vec![], reason)
    })
}

fn delete_change(
    address: &str,
    kind: &str,
    current: Option<&Observed>,
    protect: bool,
    depends_on: Vec<String>,
    reason: &str,
) -> Change {
    Change {
        id: current.map(|c| c.id.clone()),
        reason: Some(reason.to_string()),
        protect: protect || current.is_some_and(service_protected),
        depends_on,
        current: current.map(|c| c.attrs.clone()),
        ..Change::new(address, kind, Action::Delete)
    }
}

/// The service's own deletion protection counts as `protect: true`.
fn service_protected(current: &Observed) -> bool {
    current.attrs.get("deletion_protection") == Some(&Json::Bool(true))
}

/// A resource that does not exist (or was deleted outside the tool) is created.
fn create_change(
    r: &Resource,
    kind: &KindSchema,
    desired: &BTreeMap<String, Option<Json>>,
    recorded: Option<&crate::state::ResourceState>,
    depends_on: Vec<String>,
) -> Change {
    let reason = recorded.map(|rs| format!("{} was deleted outside ralph-deploy", rs.id));
    Change {
        attributes: desired
            .iter()
            .map(|(k, v)| AttrChange {
                name: k.clone(),
                before: None,
                after: v.clone(),
                forces_replace: false,
                partial: None,
            })
            .collect(),
        reason,
        protect: r.protect,
        depends_on,
        ..Change::new(&r.address, kind.kind, Action::Create)
    }
}

/// One field's change, if the stack's value differs from what the cloud
/// reports (or, where it reports nothing, from what the state recorded).
fn field_change(
    r: &Resource,
    kind: &KindSchema,
    f: &ralph_core::model::Field,
    want: &Option<Json>,
    current: &Observed,
    recorded: Option<&crate::state::ResourceState>,
    adopted: bool,
) -> Option<AttrChange> {
    let have = current
        .attrs
        .get(f.name)
        .filter(|v| !v.is_null())
        .cloned()
        .or_else(|| recorded.and_then(|rs| rs.inputs.get(f.name).cloned()))
        // Adopted (after a crash, or imported): what the cloud does not
        // report is taken as the stack states it; adoption records it so.
        .or_else(|| {
            if adopted && recorded.is_none() {
                r.stated(f.name)
            } else {
                None
            }
        });
    // The default `Name` tag is given at creation; afterwards it is not
    // enforced, so a resource that `moved` keeps the name it was made with.
    let (want, have) = if f.name == "tags" && kind.taggable && !names_itself(r) {
        let strip = |v: &Option<Json>| {
            v.clone().map(|mut t| {
                if let Some(m) = t.as_object_mut() {
                    m.remove("Name");
                }
                t
            })
        };
        (&strip(want), strip(&have))
    } else {
        (want, have)
    };
    let differs = match (want, &have) {
        (None, _) => true,
        (Some(w), Some(h)) => !same_value(&f.ty, w, h),
        // A `name_prefix` given to a resource made with a fixed name
        // under that prefix (the stack moved to generated names): the
        // name it has fits, nothing to replace.
        (Some(Json::String(prefix)), None)
            if f.name == ralph_core::model::kinds::NAME_PREFIX
                && (current.id == *prefix || current.id.starts_with(&format!("{prefix}-"))) =>
        {
            false
        }
        // Nothing recorded or reported, and the stack gives nothing
        // either: null, or an empty string (an input left at "").
        (Some(w), None) => !(w.is_null() || w.as_str() == Some("")),
    };
    differs.then(|| AttrChange {
        name: f.name.to_string(),
        before: have,
        after: want.clone(),
        forces_replace: f.replace,
        partial: None,
    })
}

/// Whether a release (`deploy --image`, `rollback`) made since the stack
/// last set the fields it sets stands: the stack still has every value it
/// overrode. A stack that changes one of them rolls its own out.
fn release_stands(desired: &BTreeMap<String, Option<Json>>, current: &Observed) -> bool {
    let stack_value = |field: &str| desired.get(field).and_then(Option::as_ref);
    ralph_core::driver::standing_release(&current.attrs, stack_value).is_some()
}

fn diff_one(
    r: &Resource,
    kind: &KindSchema,
    desired: &BTreeMap<String, Option<Json>>,
    current: Option<&Observed>,
    state: &State,
    adopted: bool,
    depends_on: Vec<String>,
) -> Change {
    let recorded = state.resources.get(&r.address);
    let protect =
        r.protect || recorded.is_some_and(|s| s.protect) || current.is_some_and(service_protected);
    let Some(current) = current else {
        return create_change(r, kind, desired, recorded, depends_on);
    };
    let stands = release_stands(desired, current);
    // While a release stands, what it set is shown apart, kept.
    let (mut release_holds, mut attributes) = (Vec::new(), Vec::new());
    for f in kind.fields {
        let Some(want) = desired.get(f.name) else {
            continue;
        };
        if let Some(c) = field_change(r, kind, f, want, current, recorded, adopted) {
            let held = f.released && stands;
            if held {
                &mut release_holds
            } else {
                &mut attributes
            }
            .push(c);
        }
    }
    // Imported (or its ownership tags removed by hand): it gets them back.
    if kind.taggable && current.owner.is_none() && !attributes.iter().any(|a| a.name == "tags") {
        if let Some(want) = desired.get("tags") {
            attributes.push(AttrChange {
                name: "tags".to_string(),
                before: current.attrs.get("tags").cloned(),
                after: want.clone(),
                forces_replace: false,
                partial: None,
            });
        }
    }
    // Still becoming ready (a create or update whose wait timed out): apply waits.
    if current.attrs.get(ralph_core::driver::READY_ATTR) == Some(&Json::Bool(false))
        && attributes.iter().all(|a| !a.forces_replace)
    {
        attributes.push(AttrChange {
            name: ralph_core::driver::READY_ATTR.to_string(),
            before: current.attrs.get(ralph_core::driver::STATUS_ATTR).cloned(),
            after: Some(Json::String("ready".into())),
            forces_replace: false,
            partial: None,
        });
    }
    let forcing: Vec<&str> = attributes
        .iter()
        .filter(|a| a.forces_replace)
        .map(|a| a.name.as_str())
        .collect();
    let (action, reason) = if !forcing.is_empty() {
        (
            Action::Replace,
            Some(format!(
                "changing {} forces replacement",
                forcing
                    .iter()
                    .map(|f| format!("`{f}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        )
    } else if !attributes.is_empty() {
        (Action::Update, None)
    } else {
        (Action::NoOp, None)
    };
    let reason = if adopted {
        Some(match reason {
            Some(r) => format!(
                "{r}; found in the cloud by its ownership tags, adopting {}",
                current.id
            ),
            None => format!(
                "found in the cloud by its ownership tags, adopting {}",
                current.id
            ),
        })
    } else {
        reason
    };
    Change {
        id: Some(current.id.clone()),
        attributes,
        reason,
        adopt: adopted,
        protect,
        depends_on,
        current: Some(current.attrs.clone()),
        // The stack changed what a release overrode and nothing differs:
        // it names what runs now.
        release_settled: action == Action::NoOp
            && !stands
            && current
                .attrs
                .contains_key(ralph_core::driver::STACK_VALUES_ATTR),
        release_holds,
        ..Change::new(&r.address, kind.kind, action)
    }
}

/// The plan for `destroy`: everything recorded or tagged goes.
pub fn destroy_changes(state: &State, refreshed: &Refreshed) -> Vec<Change> {
    let mut changes = Vec::new();
    for (address, rs) in &state.resources {
        let current = refreshed.current.get(address);
        let mut c = delete_change(
            address,
            &rs.kind,
            current,
            rs.protect,
            rs.depends_on.clone(),
            "destroy",
        );
        if current.is_none() {
            c.id = Some(rs.id.clone());
            c.reason = Some("destroy (already gone from the cloud)".into());
        }
        changes.push(c);
    }
    for (address, obs) in &refreshed.current {
        if !state.resources.contains_key(address) {
            if let Some(kind) = refreshed.kinds.get(address) {
                changes.push(delete_change(
                    address,
                    kind,
                    Some(obs),
                    false,
                    vec![],
                    "destroy (found by its ownership tags)",
                ));
            }
        }
    }
    changes.extend(orphan_deletes(
        refreshed,
        "destroy (found by its ownership tags)",
    ));
    fill_from_state(&mut changes, state);
    changes
}

/// A destroy goes in the order the stack declares now for what it declares,
/// and in the recorded order for the rest (as a plan does). The record can
/// be short: a `state rm` drops the address from every recorded
/// `depends_on` and the adoption that brings it back does not restore them,
/// and a `depends_on` added to a resource with nothing to change is never
/// recorded; a NAT gateway deleted beside its internet gateway, say, leaves
/// the gateway refused. A retired primary (`ADDRESS~retired:ID`) needs what
/// the primary at ADDRESS needs. (Replacing rather than adding keeps the
/// order acyclic when the stack turned a dependency around.)
pub fn with_declared_dependencies(changes: &mut [Change], stack: &Stack) {
    for c in changes.iter_mut() {
        let served = c.address.split(RETIRED_MARK).next().unwrap_or_default();
        if let Some(r) = stack.resources.get(served) {
            c.depends_on = r.dependencies();
        }
    }
}

/// Between the address an old primary served and its id, in the address of
/// its deletion.
const RETIRED_MARK: &str = "~retired:";

/// The deletion of an old primary a failover retired (`kind`'s
/// `Promotion::retired`), at an address of its own beside the one it
/// served: it needs what that primary needed (so it goes before its network),
/// its deletion protection makes it protected, and its delete sees the
/// settings the primary was applied with (its final snapshot).
pub fn retired_change(
    kind: &str,
    retired: ralph_core::driver::capability::Retired,
    state: &State,
) -> Change {
    let served = state.resources.get(&retired.address);
    let mut c = delete_change(
        &format!("{}{RETIRED_MARK}{}", retired.address, retired.observed.id),
        kind,
        Some(&retired.observed),
        true,
        served.map(|p| p.depends_on.clone()).unwrap_or_default(),
        &format!(
            "destroy (the old primary of {} a failover retired; it still holds its data)",
            retired.address
        ),
    );
    if let (Some(current), Some(served)) = (c.current.as_mut(), served) {
        fill_missing(current, &served.inputs);
    }
    c
}

fn fill_missing(current: &mut Map<String, Json>, inputs: &Map<String, Json>) {
    for (k, v) in inputs {
        if current.get(k).is_none_or(Json::is_null) {
            current.insert(k.clone(), v.clone());
        }
    }
}

/// Settings the cloud does not report (a secret's recovery window, whether a
/// database keeps a final snapshot) come from what was applied, so that
/// delete and update see them.
fn fill_from_state(changes: &mut [Change], state: &State) {
    for c in changes.iter_mut() {
        let (Some(current), Some(rs)) = (c.current.as_mut(), state.resources.get(&c.address))
        else {
            continue;
        };
        if c.id.as_deref() != Some(rs.id.as_str()) {
            continue;
        }
        fill_missing(current, &rs.inputs);
    }
}
