//! The engine on the fake cloud: diff (every action and reason), apply
//! ordering and parallelism, partial creates, recovery of each kind of open
//! intent, and a kill after every driver call of the production stack's
//! apply and of a deploy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value as Json};

use super::{context, FakeCloud, Kill, MemoryBackend};
use crate::apply::ApplyOptions;
use crate::ops::apply::{Approver, Outcome, Request};
use crate::ops::{OpError, Session};
use crate::plan::{Action, Plan};
use crate::state::{Intent, State};
use ralph_core::driver::{Context, Observed};
use ralph_stack::{LoadOptions, Stack};

struct Yes;
impl Approver for Yes {
    fn show(&self, _: &Plan) {}
    fn approve(&self, _: &Plan) -> Result<bool, OpError> {
        Ok(true)
    }
}

struct World {
    s: Session,
    /// The backend's count of whole-state writes.
    writes: Arc<std::sync::atomic::AtomicUsize>,
    cloud: Arc<FakeCloud>,
    kill: Arc<Kill>,
    cx: Context,
    _dir: Option<tempfile::TempDir>,
}

/// The checkout the tests run in: cargo sets CARGO_MANIFEST_DIR (this
/// crate's folder, crates/engine) when it runs them (the compiled-in path
/// can name another checkout that shares the target directory).
pub fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("../..")
}

/// The production environment, with the API endpoint's ranges the
/// production stacks leave to the user (their placeholder is refused;
/// ignored by stacks without them).
fn load_options() -> LoadOptions {
    LoadOptions {
        environment: Some("production".into()),
        env_variables: vec![("api_allowed_cidrs".into(), "[\"0.0.0.0/0\"]".into())],
        ..Default::default()
    }
}

fn world_at(path: &Path, dir: Option<tempfile::TempDir>) -> World {
    let kill = Arc::new(Kill::default());
    let cloud = FakeCloud::new(kill.clone());
    let registry = cloud.registry();
    let stack = Stack::load(path, &load_options(), &registry).unwrap_or_else(|d| panic!("{d}"));
    let cx = context(&stack.name, &stack.environment);
    let backend = MemoryBackend::new(kill.clone());
    World {
        writes: backend.writes.clone(),
        s: Session {
            stack,
            backend: Box::new(backend),
            registry,
            lock_timeout: None,
            scope: Default::default(),
        },
        cloud,
        kill,
        cx,
        _dir: dir,
    }
}

fn production() -> World {
    world_at(&repo().join("stacks/aws-production.yaml"), None)
}

const SMALL: &str = r#"name: small
cloud: { aws: { region: us-east-1 } }
environments: { production: {} }
resources:
  vpc:
    kind: aws.vpc
    properties: { cidr_block: 10.0.0.0/16 }
  a:
    kind: aws.subnet
    properties: { vpc_id: "${vpc.id}", cidr_block: 10.0.1.0/24, availability_zone: us-east-1a, tags: { tier: private } }
  b: { kind: aws.subnet, properties: { vpc_id: "${vpc.id}", cidr_block: 10.0.2.0/24, availability_zone: us-east-1b } }
  sg:
    kind: aws.security_group
    protect: true
    properties: { name: web, vpc_id: "${vpc.id}" }
"#;

fn small(text: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("small.yaml");
    std::fs::write(&path, text).unwrap();
    world_at(&path, Some(dir))
}

impl World {
    async fn state(&self) -> (State, bool) {
        self.s.read_state().await.unwrap()
    }

    async fn plan(&self) -> Plan {
        let (st, existed) = self.state().await;
        self.s
            .make_plan(&st, existed, &self.cx, false)
            .await
            .unwrap()
    }

    async fn apply(&self) -> Result<Outcome, OpError> {
        self.run(false).await
    }

    async fn run(&self, destroy: bool) -> Result<Outcome, OpError> {
        crate::ops::apply::run(
            &self.s,
            &self.cx,
            Request {
                destroy,
                saved: None,
                allow_protected: true,
                options: ApplyOptions { parallelism: 10 },
            },
            &Yes,
        )
        .await
    }

    async fn apply_ok(&self) {
        match self.apply().await {
            Ok(Outcome::Applied { report, .. }) => {
                assert!(report.succeeded(), "{report:?}")
            }
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }

    /// Reloads the stack from new text (same file).
    fn edit(&mut self, text: &str) {
        let path = self.s.stack.path.clone();
        std::fs::write(&path, text).unwrap();
        self.s.stack = Stack::load(&path, &load_options(), &self.s.registry).unwrap();
    }

    fn cloud_mut<R>(&self, kind: &str, f: impl FnOnce(&mut BTreeMap<String, Observed>) -> R) -> R {
        let mut all = self.cloud.resources.lock().unwrap();
        f(all.entry(kind.to_string()).or_default())
    }

    /// Nothing orphaned, nothing duplicated: every resource in the cloud is
    /// recorded once, every recorded one exists, the next plan is empty.
    async fn assert_consistent(&self, context: &str) {
        let (st, _) = self.state().await;
        let mut recorded: BTreeMap<(String, String), String> = BTreeMap::new();
        for (a, r) in &st.resources {
            if let Some(other) = recorded.insert((r.kind.clone(), r.id.clone()), a.clone()) {
                panic!("{context}: {a} and {other} share the id {}", r.id);
            }
        }
        let cloud = self.cloud.all();
        for (kind, id, _) in &cloud {
            assert!(
                recorded.contains_key(&(kind.clone(), id.clone())),
                "{context}: {kind} {id} is in the cloud but not in the state"
            );
        }
        for ((kind, id), address) in &recorded {
            assert!(
                cloud.iter().any(|(k, c, _)| k == kind && c == id),
                "{context}: {address} ({id}) is recorded but not in the cloud"
            );
        }
        let plan = self.plan().await;
        let changes: Vec<String> = plan
            .changes
            .iter()
            .filter(|c| c.is_change())
            .map(|c| format!("{} {:?} {:?}", c.address, c.action, c.reason))
            .collect();
        assert!(
            changes.is_empty(),
            "{context}: the next plan is not empty: {changes:#?}"
        );
    }
}

fn action(plan: &Plan, address: &str) -> (Action, Option<String>, bool) {
    let c = plan
        .changes
        .iter()
        .find(|c| c.address == address)
        .unwrap_or_else(|| panic!("{address} is not in the plan"));
    (c.action, c.reason.clone(), c.adopt)
}

#[tokio::test]
async fn diff_gives_every_action_with_its_reason() {
    let mut w = small(SMALL);
    // Nothing exists: everything is created.
    let plan = w.plan().await;
    assert!(plan.changes.iter().all(|c| c.action == Action::Create));
    w.apply_ok().await;
    assert_eq!(w.cloud.count(), 4);
    // No change.
    let plan = w.plan().await;
    assert!(!plan.has_changes(), "{:?}", plan.changes);

    // In place.
    w.edit(&SMALL.replace("tier: private", "tier: app"));
    let plan = w.plan().await;
    assert_eq!(action(&plan, "a").0, Action::Update);
    let attrs: Vec<&str> = plan
        .changes
        .iter()
        .find(|c| c.address == "a")
        .unwrap()
        .attributes
        .iter()
        .map(|a| a.name.as_str())
        .collect();
    assert_eq!(attrs, vec!["tags"]);
    assert_eq!(action(&plan, "vpc").0, Action::NoOp);

    // A forcing field: replace, saying which.
    w.edit(&SMALL.replace("10.0.1.0/24", "10.0.3.0/24"));
    let (a, reason, _) = action(&w.plan().await, "a");
    assert_eq!(a, Action::Replace);
    assert!(reason.unwrap().contains("`cidr_block`"));

    // Replacing a protected resource is a violation.
    w.edit(&SMALL.replace("name: web", "name: web2"));
    let plan = w.plan().await;
    assert_eq!(action(&plan, "sg").0, Action::Replace);
    assert_eq!(plan.protected_violations().len(), 1);

    // Removed from the stack: delete.
    let without_b: String = SMALL
        .lines()
        .filter(|l| !l.starts_with("  b:"))
        .map(|l| format!("{l}\n"))
        .collect();
    w.edit(&without_b);
    let (a, reason, _) = action(&w.plan().await, "b");
    assert_eq!(
        (a, reason.as_deref()),
        (Action::Delete, Some("no longer in the stack"))
    );

    // ... and also gone from the cloud: only the record goes.
    let b_id = w.state().await.0.resources["b"].id.clone();
    w.cloud_mut("aws.subnet", |m| m.remove(&b_id));
    let (a, reason, _) = action(&w.plan().await, "b");
    assert_eq!(a, Action::Delete);
    assert!(reason.unwrap().contains("already gone"));
    w.apply_ok().await;
    assert!(!w.state().await.0.resources.contains_key("b"));

    // Deleted outside the tool while the stack keeps it: create, saying so.
    w.edit(SMALL);
    w.apply_ok().await;
    let a_id = w.state().await.0.resources["a"].id.clone();
    w.cloud_mut("aws.subnet", |m| m.remove(&a_id));
    let (a, reason, _) = action(&w.plan().await, "a");
    assert_eq!(a, Action::Create);
    assert!(reason.unwrap().contains("deleted outside"));
    w.apply_ok().await;

    // In the cloud with our tags but not in the state: adopted, not duplicated.
    let (mut st, _) = w.state().await;
    let lost = st.resources.remove("b").unwrap();
    st.serial += 1;
    w.s.backend.write(&st).await.unwrap();
    let (a, reason, adopt) = action(&w.plan().await, "b");
    assert_eq!(a, Action::NoOp);
    assert!(adopt);
    assert!(reason.unwrap().contains(&format!("adopting {}", lost.id)));
    w.apply_ok().await;
    assert_eq!(w.state().await.0.resources["b"].id, lost.id);

    // Tagged as ours for an address nobody declares: an orphan, deleted.
    let mut stray = w.cloud_mut("aws.subnet", |m| m.values().next().cloned().unwrap());
    stray.id = "subnet-stray".into();
    stray.address = Some("c".into());
    w.cloud_mut("aws.subnet", |m| m.insert("subnet-stray".into(), stray));
    let (a, reason, _) = action(&w.plan().await, "c");
    assert_eq!(a, Action::Delete);
    assert!(reason.unwrap().contains("not declared in the stack"));
    w.apply_ok().await;

    // Not ready yet (a create that timed out): an in-place `ready` change.
    let vpc_id = w.state().await.0.resources["vpc"].id.clone();
    w.cloud_mut("aws.vpc", |m| {
        m.get_mut(&vpc_id)
            .unwrap()
            .attrs
            .insert("ready".into(), json!(false))
    });
    let plan = w.plan().await;
    let vpc = plan.changes.iter().find(|c| c.address == "vpc").unwrap();
    assert_eq!(vpc.action, Action::Update);
    assert_eq!(vpc.attributes[0].name, "ready");
    w.apply_ok().await;
    w.assert_consistent("after the table").await;
}

const NORMALISED: &str = r#"name: normalised
cloud: { aws: { region: us-east-1 } }
environments: { production: {} }
resources:
  vpc:
    kind: aws.vpc
    properties: { cidr_block: 10.0.0.0/16, tags: { team: Platform } }
  sg:
    kind: aws.security_group
    properties:
      name: web
      vpc_id: "${vpc.id}"
      ingress:
        - { protocol: tcp, from_port: 443, cidr_block: 10.0.0.0/16 }
        - { protocol: tcp, from_port: 80, cidr_block: 10.0.0.0/16 }
"#;

#[tokio::test]
async fn a_cloud_that_normalises_values_is_a_no_op_where_the_planner_knows_the_rule_and_a_diff_where_not(
) {
    let mut w = small(NORMALISED);
    // What clouds do: keep a set in an order of their own.
    w.cloud.normalises("aws.security_group", "ingress", |v| {
        let mut rules = v.as_array().cloned().unwrap_or_default();
        rules.reverse();
        Json::Array(rules)
    });
    w.apply_ok().await;
    let kept = w.cloud.resources.lock().unwrap()["aws.security_group"]
        .values()
        .next()
        .unwrap()
        .attrs["ingress"][0]["from_port"]
        .clone();
    assert_eq!(kept, json!(80), "the fake kept its own order");
    let plan = w.plan().await;
    assert!(!plan.has_changes(), "{:?}", plan.changes);

    // A rule the planner does not know (the cloud lowercases tag values)
    // is a change on every plan: the fake can now show that.
    w.cloud.normalises("aws.vpc", "tags", |v| {
        let m = v.as_object().cloned().unwrap_or_default();
        Json::Object(
            m.into_iter()
                .map(|(k, v)| (k, json!(v.as_str().unwrap_or_default().to_lowercase())))
                .collect(),
        )
    });
    w.edit(&NORMALISED.replace("team: Platform", "team: Data"));
    w.apply_ok().await;
    let plan = w.plan().await;
    assert_eq!(action(&plan, "vpc").0, Action::Update, "{:?}", plan.changes);
}

#[tokio::test]
async fn apply_starts_each_resource_after_its_dependencies_and_runs_branches_at_once() {
    let w = production();
    for kind in w.s.registry.drivers().map(|d| d.schema().kind) {
        w.cloud
            .latency
            .lock()
            .unwrap()
            .insert(kind.to_string(), Duration::from_millis(15));
    }
    w.apply_ok().await;
    let calls = w.cloud.calls.lock().unwrap().clone();
    let n = w.s.stack.resources.len();
    assert_eq!(calls.len(), n, "one create per resource");
    assert!(calls.iter().all(|c| c.op == "create"));
    let by_address: BTreeMap<&str, &super::Call> =
        calls.iter().map(|c| (c.address.as_str(), c)).collect();
    for r in w.s.stack.resources.values() {
        let me = by_address[r.address.as_str()];
        for dep in r.dependencies() {
            let d = by_address[dep.as_str()];
            assert!(
                d.ended <= me.started,
                "{} started before its dependency {dep} finished",
                r.address
            );
        }
    }
    let most = w
        .cloud
        .max_in_flight
        .load(std::sync::atomic::Ordering::SeqCst);
    assert!(most >= 3, "independent branches ran one at a time ({most})");
    assert!(most <= 10, "more than --parallelism at once ({most})");
    w.assert_consistent("production apply").await;
}

#[tokio::test]
async fn a_partial_create_is_recorded_and_the_next_apply_waits_for_it() {
    let w = production();
    w.cloud.partial.lock().unwrap().insert("db".into());
    let Ok(Outcome::Applied { report, .. }) = w.apply().await else {
        panic!("apply did not run")
    };
    assert_eq!(report.failed, 1);
    assert!(report.skipped > 0, "dependents of db are skipped");
    let (st, _) = w.state().await;
    let db = &st.resources["db"];
    assert_eq!(db.attrs["ready"], json!(false));
    // The next plan waits for it (in place), never creates a second one.
    w.cloud.partial.lock().unwrap().clear();
    let plan = w.plan().await;
    let c = plan.changes.iter().find(|c| c.address == "db").unwrap();
    assert_eq!(c.action, Action::Update);
    assert!(c.attributes.iter().any(|a| a.name == "ready"));
    w.apply_ok().await;
    let dbs = w
        .cloud
        .all()
        .into_iter()
        .filter(|(k, _, a)| k == "aws.rds_instance" && a.as_deref() == Some("db"))
        .count();
    assert_eq!(dbs, 1);
    w.assert_consistent("after a partial create").await;
}

fn intent(w: &World, address: &str, action: &str, lookup: Option<String>) -> Intent {
    let r = &w.s.stack.resources[address];
    Intent {
        id: uuid::Uuid::new_v4().to_string(),
        address: address.into(),
        kind: r.kind.kind.into(),
        action: action.into(),
        lookup,
        props: Default::default(),
        depends_on: vec![],
        protect: false,
        started_at: chrono::Utc::now(),
        pid: 1,
    }
}

#[tokio::test]
async fn each_kind_of_open_intent_is_settled_before_planning() {
    let w = small(SMALL);
    w.apply_ok().await;
    let (mut st, _) = w.state().await;
    // A create that took effect but never reached the state.
    let made = st.resources.remove("a").unwrap();
    st.serial += 1;
    w.s.backend.write(&st).await.unwrap();
    let created = intent(&w, "a", "create", None);
    // A create that never happened (the subnet b is recorded; pretend c).
    let mut never = intent(&w, "b", "create", None);
    never.address = "c".into();
    // An update and a delete in flight.
    let update = intent(&w, "vpc", "update", Some(st.resources["vpc"].id.clone()));
    let delete = intent(&w, "sg", "delete", Some(st.resources["sg"].id.clone()));
    for i in [&created, &never, &update, &delete] {
        w.s.backend.open_intent(i).await.unwrap();
    }
    let outcome = w.apply().await.unwrap();
    assert!(
        matches!(outcome, Outcome::NoChanges),
        "the adopted create needs nothing"
    );
    assert!(w.s.backend.open_intents().await.unwrap().is_empty());
    let (st, _) = w.state().await;
    assert_eq!(st.resources["a"].id, made.id, "adopted, not created again");
    assert!(!st.resources.contains_key("c"));
    w.assert_consistent("after recovery").await;
}

/// How many mutating driver calls `f` makes on a fresh world.
async fn count_calls(
    make: impl Fn() -> World,
    prepare: impl AsyncFn(&World),
    run: impl AsyncFn(&World),
) -> usize {
    let w = make();
    prepare(&w).await;
    let before = w.cloud.calls.lock().unwrap().len();
    run(&w).await;
    let after = w.cloud.calls.lock().unwrap().len();
    after - before
}

#[tokio::test]
async fn a_kill_after_every_driver_call_of_the_production_apply_is_recovered() {
    let total = count_calls(production, async |_| {}, async |w| w.apply_ok().await).await;
    assert!(total >= 40, "{total}");
    for k in 1..=total as i64 {
        let w = production();
        w.kill.after(k);
        let _ = w.apply().await;
        assert!(w.kill.is_dead(), "k={k}: the process was not killed");
        // The process is gone: its lock stays, the next run is new.
        w.kill.revive();
        let _ = w.s.backend.force_unlock("any").await;
        w.apply_ok().await;
        w.assert_consistent(&format!("k={k}")).await;
    }
    println!("covered {total} kill points of the production apply");
}

#[tokio::test]
async fn an_apply_journals_each_result_and_writes_the_whole_state_a_few_times() {
    let w = production();
    w.apply_ok().await;
    let (st, _) = w.state().await;
    assert!(st.resources.len() >= 40, "{}", st.resources.len());
    // The first write of a new state, and the last: no whole-state write
    // per resource (the fake cloud answers within the checkpoint interval).
    let writes = w.writes.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(writes, 2, "{writes} whole-state writes");
    // Everything journaled is in the state written last, so none is kept.
    assert!(w.s.backend.results().await.unwrap().is_empty());
    assert!(w.s.backend.open_intents().await.unwrap().is_empty());
}

#[tokio::test]
async fn results_journaled_before_a_kill_are_read_and_kept_in_the_copy_before_the_next_command() {
    let w = production();
    w.kill.after(12);
    let _ = w.apply().await;
    assert!(w.kill.is_dead());
    w.kill.revive();
    let _ = w.s.backend.force_unlock("any").await;
    // The killed run wrote the new state and then only journaled.
    let journaled = w.s.backend.results().await.unwrap();
    assert!(journaled.len() >= 5, "{} results", journaled.len());
    let (read, _) = w.state().await;
    for e in &journaled {
        assert_eq!(
            read.resources.get(&e.address),
            e.resource.as_ref(),
            "{}",
            e.address
        );
    }
    // The next command folds them into a written state first, so the copy
    // it keeps of the state before it holds them too.
    w.apply_ok().await;
    assert!(w.s.backend.results().await.unwrap().is_empty());
    let before = w.s.backend.snapshots().await.unwrap();
    let kept =
        w.s.backend
            .read_snapshot(&before.last().unwrap().name)
            .await
            .unwrap();
    for e in journaled.iter().filter(|e| e.resource.is_some()) {
        assert!(
            kept.resources.contains_key(&e.address),
            "{} not in the copy",
            e.address
        );
    }
}

#[tokio::test]
async fn a_kill_during_deploy_is_recovered_by_the_next_command() {
    let prepare = async |w: &World| w.apply_ok().await;
    let deploy = async |w: &World| {
        let _ = crate::ops::release::deploy(&w.s, &w.cx, "9.9.9", None).await;
    };
    let total = count_calls(production, prepare, deploy).await;
    assert!(total >= 1, "{total}");
    for k in 1..=total as i64 {
        let w = production();
        w.apply_ok().await;
        w.kill.after(k);
        let _ = crate::ops::release::deploy(&w.s, &w.cx, "9.9.9", None).await;
        assert!(w.kill.is_dead());
        w.kill.revive();
        let _ = w.s.backend.force_unlock("any").await;
        // The deploy's intent is open; the next command settles it, and the
        // plan sees the half-recorded release as drift from the stack.
        assert!(!w.s.backend.open_intents().await.unwrap().is_empty());
        w.apply_ok().await;
        assert!(w.s.backend.open_intents().await.unwrap().is_empty());
        w.assert_consistent(&format!("deploy k={k}")).await;
    }
    // Not killed: the state records what runs.
    let w = production();
    w.apply_ok().await;
    let released = crate::ops::release::deploy(&w.s, &w.cx, "9.9.9", None)
        .await
        .unwrap();
    assert!(released.iter().all(|r| r.result.is_ok()));
    let (st, _) = w.state().await;
    assert_eq!(
        st.resources["app.orchestrator"].inputs["tag"],
        Json::from("9.9.9")
    );
}

/// The backups' objects in the fake buckets (dumps and manifests).
fn backup_objects(w: &World) -> Vec<String> {
    let objects = w.cloud.objects.lock().unwrap();
    objects
        .keys()
        .map(|(_, k)| k.clone())
        .filter(|k| k.starts_with("backups/"))
        .collect()
}

async fn take_backup(w: &World) -> Result<crate::ops::backup::BackupReport, OpError> {
    crate::ops::backup::backup(&w.s, &w.cx, &Default::default()).await
}

async fn restore_copy(w: &World) -> Result<crate::ops::backup::RestoreReport, OpError> {
    let dump = backup_objects(w)
        .into_iter()
        .find(|k| k.ends_with(".dump"))
        .expect("a backup");
    crate::ops::backup::restore(&w.s, &w.cx, &Default::default(), &dump, Some("ralph_copy")).await
}

#[tokio::test]
async fn a_kill_during_backup_is_settled_by_the_next_command() {
    let prepare = async |w: &World| w.apply_ok().await;
    let backup = async |w: &World| {
        let _ = take_backup(w).await;
    };
    let total = count_calls(production, prepare, backup).await;
    // The dump's upload and its manifest.
    assert_eq!(total, 2);
    for k in 1..=total as i64 {
        let w = production();
        w.apply_ok().await;
        w.kill.after(k);
        backup(&w).await;
        assert!(w.kill.is_dead(), "k={k}");
        w.kill.revive();
        let _ = w.s.backend.force_unlock("any").await;
        assert_eq!(w.s.backend.open_intents().await.unwrap().len(), 1, "k={k}");
        // The next command settles it: a dump without its manifest is
        // removed, a finished one kept.
        let (st, _) = w.state().await;
        let before = backup_objects(&w);
        w.apply_ok().await;
        assert!(
            w.s.backend.open_intents().await.unwrap().is_empty(),
            "k={k}"
        );
        let after = backup_objects(&w);
        if k == 1 {
            assert!(after.is_empty(), "k={k}: {before:?} -> {after:?}");
        } else {
            assert_eq!(after, before, "k={k}");
        }
        let latest = crate::ops::backup::latest(&w.s, &w.cx, &st).await.unwrap();
        assert_eq!(latest.is_some(), k == 2, "k={k}");
        // And the next backup works.
        let report = take_backup(&w).await.unwrap();
        assert_eq!(report.manifest.tables, super::backups::seeded_tables());
        w.assert_consistent(&format!("backup k={k}")).await;
    }
}

#[tokio::test]
async fn a_kill_during_restore_is_settled_by_the_next_command() {
    let prepare = async |w: &World| {
        w.apply_ok().await;
        take_backup(w).await.unwrap();
    };
    let restore = async |w: &World| {
        let _ = restore_copy(w).await;
    };
    let total = count_calls(production, prepare, restore).await;
    // The database created, then each of its two tables.
    assert_eq!(total, 3);
    for k in 1..=total as i64 {
        let w = production();
        prepare(&w).await;
        w.kill.after(k);
        restore(&w).await;
        assert!(w.kill.is_dead(), "k={k}");
        w.kill.revive();
        let _ = w.s.backend.force_unlock("any").await;
        assert!(w.cloud.databases.lock().unwrap().contains_key("ralph_copy"));
        // The next command drops the half-made database, so the restore
        // can be run again under the same name.
        w.apply_ok().await;
        assert!(
            w.s.backend.open_intents().await.unwrap().is_empty(),
            "k={k}"
        );
        assert!(
            !w.cloud.databases.lock().unwrap().contains_key("ralph_copy"),
            "k={k}"
        );
        let report = restore_copy(&w).await.unwrap();
        assert_eq!(report.tables, super::backups::seeded_tables(), "k={k}");
        w.assert_consistent(&format!("restore k={k}")).await;
    }
    // A database that exists is refused before anything starts, and kept.
    let w = production();
    prepare(&w).await;
    restore_copy(&w).await.unwrap();
    let again = restore_copy(&w).await.unwrap_err().to_string();
    assert!(again.contains("exists already"), "{again}");
    assert!(w.cloud.databases.lock().unwrap().contains_key("ralph_copy"));
}

async fn failover(w: &World) -> Result<crate::ops::failover::Report, OpError> {
    let o = crate::ops::failover::Options {
        replica: None,
        force: false,
    };
    crate::ops::failover::failover(&w.s, &w.cx, &o).await
}

/// The operator deletes the old primaries failovers retired (they are not
/// the stack's any more).
fn delete_retired(w: &World) {
    for m in w.cloud.resources.lock().unwrap().values_mut() {
        m.retain(|_, o| !o.attrs.contains_key(super::RETIRED_BY));
    }
}

#[tokio::test]
async fn a_kill_during_failover_is_finished_by_the_next_failover() {
    let prepare = async |w: &World| w.apply_ok().await;
    let run = async |w: &World| {
        failover(w).await.unwrap();
    };
    let total = count_calls(production, prepare, run).await;
    // Promote, retire, take over, the primary's settings, the orchestrator's
    // new inputs and its restart at least.
    assert!(total >= 5, "{total}");
    for k in 1..=total as i64 {
        let w = production();
        w.apply_ok().await;
        w.kill.after(k);
        let _ = failover(&w).await;
        assert!(w.kill.is_dead(), "k={k}: the process was not killed");
        w.kill.revive();
        let _ = w.s.backend.force_unlock("any").await;
        // Every other command refuses until a failover finishes it.
        let refused = w.apply().await.map(|_| ()).unwrap_err().to_string();
        assert!(refused.contains("failover"), "k={k}: {refused}");
        let report = failover(&w).await.unwrap_or_else(|e| panic!("k={k}: {e}"));
        assert!(report.resumed, "k={k}");
        assert_eq!(report.rolled, vec!["app.orchestrator".to_string()], "k={k}");
        // The next apply makes the new replica, and nothing else is amiss.
        w.apply_ok().await;
        delete_retired(&w);
        w.assert_consistent(&format!("failover k={k}")).await;
        let (st, _) = w.state().await;
        assert!(
            st.resources.contains_key("db_replica"),
            "k={k}: the new replica"
        );
    }
    println!("covered {total} kill points of the failover");
}

/// The small stack applied, then its records cut short as `state rm vpc`
/// and the adoption that brings it back leave them: the subnets' records
/// no longer name the VPC.
async fn applied_with_records_short() -> World {
    let w = small(SMALL);
    w.apply_ok().await;
    let (mut st, _) = w.state().await;
    for r in st.resources.values_mut() {
        r.depends_on.retain(|d| d != "vpc");
    }
    st.serial += 1;
    w.s.backend.write(&st).await.unwrap();
    w
}

#[tokio::test]
async fn destroy_orders_by_what_the_stack_declares_when_the_record_is_short() {
    let w = applied_with_records_short().await;
    let (st, existed) = w.state().await;
    let plan = w.s.make_plan(&st, existed, &w.cx, true).await.unwrap();
    let a = plan.changes.iter().find(|c| c.address == "a").unwrap();
    assert_eq!(
        a.depends_on,
        vec!["vpc".to_string()],
        "the subnet goes before its VPC"
    );
}

#[tokio::test]
async fn an_apply_with_nothing_to_change_records_the_stacks_dependencies() {
    let w = applied_with_records_short().await;
    w.apply_ok().await;
    let (st, _) = w.state().await;
    assert_eq!(
        st.resources["a"].depends_on,
        vec!["vpc".to_string()],
        "the record names the VPC again"
    );
    // Without the stack, a destroy reads only the record.
    let changes = crate::plan::destroy_changes(&st, &Default::default());
    let a = changes.iter().find(|c| c.address == "a").unwrap();
    assert_eq!(a.depends_on, vec!["vpc".to_string()]);
}

#[tokio::test]
async fn destroy_after_a_failover_deletes_the_retired_primary_first() {
    let w = production();
    w.apply_ok().await;
    let report = failover(&w).await.unwrap();
    let old = report.old_primary.clone().expect("a retired primary");
    let (st, existed) = w.state().await;
    let plan = w.s.make_plan(&st, existed, &w.cx, true).await.unwrap();
    let retired = format!("db~retired:{old}");
    let c = plan
        .changes
        .iter()
        .find(|c| c.address == retired)
        .unwrap_or_else(|| panic!("{:?}", plan.changes));
    assert!(c.protect, "its deletion protection makes it protected");
    assert_eq!(
        c.depends_on, st.resources["db"].depends_on,
        "it needs what db needed"
    );
    w.run(true).await.unwrap();
    let left: Vec<String> = w
        .cloud
        .resources
        .lock()
        .unwrap()
        .values()
        .flat_map(|m| m.keys().cloned())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[tokio::test]
async fn a_kill_during_rollback_is_recovered_by_the_next_command() {
    let prepare = async |w: &World| {
        w.apply_ok().await;
        crate::ops::release::deploy(&w.s, &w.cx, "9.9.9", None)
            .await
            .unwrap();
    };
    let rollback = async |w: &World| {
        let _ = crate::ops::release::rollback(&w.s, &w.cx, None).await;
    };
    let total = count_calls(production, prepare, rollback).await;
    assert!(total >= 1, "{total}");
    for k in 1..=total as i64 {
        let w = production();
        prepare(&w).await;
        w.kill.after(k);
        rollback(&w).await;
        assert!(w.kill.is_dead());
        w.kill.revive();
        let _ = w.s.backend.force_unlock("any").await;
        assert!(!w.s.backend.open_intents().await.unwrap().is_empty());
        w.apply_ok().await;
        assert!(w.s.backend.open_intents().await.unwrap().is_empty());
        w.assert_consistent(&format!("rollback k={k}")).await;
    }
    // Not killed: the state records the release before.
    let w = production();
    prepare(&w).await;
    crate::ops::release::rollback(&w.s, &w.cx, None)
        .await
        .unwrap();
    let (st, _) = w.state().await;
    assert_ne!(
        st.resources["app.orchestrator"].inputs["tag"],
        Json::from("9.9.9")
    );
}

#[tokio::test]
async fn a_fixed_name_under_the_prefix_given_later_is_kept() {
    let fixed = r#"name: names
cloud: { gcp: { project: p, region: us-central1 } }
environments: { production: {} }
resources:
  db:
    kind: gcp.sql_instance
    protect: true
    properties: { name: names-production-postgres, tier: db-custom-2-7680 }
"#;
    let mut w = small(fixed);
    w.apply_ok().await;
    // The stack moves to generated names: the instance it has is kept.
    w.edit(&fixed.replace(
        "name: names-production-postgres",
        "name_prefix: names-production-postgres",
    ));
    let plan = w.plan().await;
    assert!(!plan.has_changes(), "{:?}", plan.changes);
    // A prefix its name is not under is another instance.
    w.edit(&fixed.replace(
        "name: names-production-postgres",
        "name_prefix: names-staging-postgres",
    ));
    let plan = w.plan().await;
    assert_eq!(action(&plan, "db").0, Action::Replace);
    // A new one gets a name of its own under the prefix.
    let w = small(&fixed.replace(
        "name: names-production-postgres",
        "name_prefix: names-production-postgres",
    ));
    w.apply_ok().await;
    let (st, _) = w.state().await;
    let id = &st.resources["db"].id;
    assert!(
        id.starts_with("names-production-postgres-")
            && id.len() == "names-production-postgres-".len() + 8,
        "{id}"
    );
    assert_eq!(st.attribute("db", "name"), Some(Json::from(id.as_str())));
    w.assert_consistent("generated").await;
}

// ------------------------------------------------------- stack language

const ZONES: &str = r#"name: zones
cloud: { aws: { region: us-east-1 } }
environments: { production: {} }
variables:
  zones:
    type: map
    default: ZONES
resources:
  vpc:
    kind: aws.vpc
    properties: { cidr_block: 10.0.0.0/16 }
  private:
    kind: aws.subnet
    for_each: ${var.zones}
    properties:
      vpc_id: ${vpc.id}
      cidr_block: ${cidrsubnet("10.0.0.0/16", 8, each.value)}
      availability_zone: us-east-1${each.key}
outputs:
  subnets: ${private[*].id}
"#;

fn zones(map: &str) -> String {
    ZONES.replace("ZONES", map)
}

fn counts(plan: &Plan) -> (usize, usize, usize, usize) {
    let c = plan.counts();
    (c.create, c.update, c.replace, c.delete)
}

#[tokio::test]
async fn adding_a_for_each_key_creates_one_instance_and_removing_one_deletes_one() {
    let mut w = small(&zones("{ a: 10, b: 11 }"));
    let plan = w.plan().await;
    assert_eq!(counts(&plan), (3, 0, 0, 0));
    assert!(plan.changes.iter().any(|c| c.address == "private[\"a\"]"));
    w.apply_ok().await;
    let (st, _) = w.state().await;
    assert_eq!(
        st.resources["private[\"b\"]"].inputs["cidr_block"],
        Json::from("10.0.11.0/24")
    );
    // The splat output lists every instance, in key order.
    assert_eq!(st.outputs["subnets"].as_array().map(Vec::len), Some(2));

    w.edit(&zones("{ a: 10, b: 11, c: 12 }"));
    let plan = w.plan().await;
    assert_eq!(counts(&plan), (1, 0, 0, 0));
    assert_eq!(action(&plan, "private[\"c\"]").0, Action::Create);
    w.apply_ok().await;

    w.edit(&zones("{ a: 10, c: 12 }"));
    let plan = w.plan().await;
    assert_eq!(counts(&plan), (0, 0, 0, 1));
    assert_eq!(action(&plan, "private[\"b\"]").0, Action::Delete);
    w.apply_ok().await;
    assert!(!w.plan().await.has_changes());
}

#[tokio::test]
async fn moved_renames_state_entries_without_touching_the_cloud() {
    let flat = r#"name: zones
cloud: { aws: { region: us-east-1 } }
environments: { production: {} }
resources:
  vpc: { kind: aws.vpc, properties: { cidr_block: 10.0.0.0/16 } }
  private_a:
    kind: aws.subnet
    properties: { vpc_id: "${vpc.id}", cidr_block: 10.0.10.0/24, availability_zone: us-east-1a }
"#;
    let mut w = small(flat);
    w.apply_ok().await;
    let id = w.state().await.0.resources["private_a"].id.clone();
    let moved = format!(
        "{}moved:\n  - {{ from: private_a, to: 'private[\"a\"]' }}\n",
        zones("{ a: 10 }")
    );
    w.edit(&moved);
    let plan = w.plan().await;
    assert_eq!(
        plan.moves,
        vec![crate::plan::Move {
            from: "private_a".into(),
            to: "private[\"a\"]".into()
        }]
    );
    assert_eq!(counts(&plan), (0, 0, 0, 0), "{:?}", plan.changes);
    let mutating = |w: &World| {
        w.cloud
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.op != "refresh")
            .count()
    };
    let before = mutating(&w);
    w.apply_ok().await;
    assert_eq!(mutating(&w), before, "a move changes nothing in the cloud");
    let (st, _) = w.state().await;
    assert_eq!(st.resources["private[\"a\"]"].id, id);
    assert!(!st.resources.contains_key("private_a"));
    // The moved entry stays in the stack and does nothing more.
    assert!(!w.plan().await.has_changes());
}

// ------------------------------------------------------------- at scale

/// The tool's own cost of applying N resources from nothing, with the cloud
/// out of the picture: the fake cloud answers at once and the state is the
/// local file backend in a temporary directory. A harness that prints
/// numbers for `bench/run 6` (which runs it with `--ignored`), not a timed
/// test: it asserts only that the apply succeeded and recorded everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn apply_at_scale_on_the_fake_cloud() {
    let sizes = std::env::var("RALPH_BENCH_FAKE_SIZES").unwrap_or_else(|_| "1000,10000".into());
    for n in sizes.split(',').map(|s| s.trim().parse::<usize>().unwrap()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stack.yaml");
        let generated = std::process::Command::new("python3")
            .arg(repo().join("bench/gen_stack.py"))
            .args([n.to_string(), format!("scale-{n}")])
            .output()
            .unwrap();
        assert!(generated.status.success());
        std::fs::write(&path, &generated.stdout).unwrap();
        let kill = Arc::new(Kill::default());
        let cloud = FakeCloud::new(kill.clone());
        let registry = cloud.registry();
        let stack = Stack::load(&path, &LoadOptions::default(), &registry)
            .unwrap_or_else(|d| panic!("{d}"));
        let cx = context(&stack.name, &stack.environment);
        let backend = crate::state::local::LocalBackend::new(
            &dir.path().join("state"),
            &stack.name,
            &stack.environment,
        );
        let s = Session {
            stack,
            backend: Box::new(backend),
            registry,
            lock_timeout: None,
            scope: Default::default(),
        };
        let (cpu0, written0) = (cpu_seconds(), bytes_written());
        let t = std::time::Instant::now();
        let outcome = crate::ops::apply::run(
            &s,
            &cx,
            Request {
                destroy: false,
                saved: None,
                allow_protected: true,
                options: ApplyOptions { parallelism: 32 },
            },
            &Yes,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
        let wall = t.elapsed().as_secs_f64();
        let (cpu, written) = (cpu_seconds() - cpu0, bytes_written() - written0);
        let Outcome::Applied { report, .. } = outcome else {
            panic!("not applied")
        };
        assert!(report.succeeded(), "{report:?}");
        let (st, _) = s.read_state().await.unwrap();
        assert_eq!(st.resources.len(), n);
        println!(
            "fake cloud, N={n}: wall {wall:.2} s, the tool's CPU {cpu:.2} s ({:.2} ms per resource), written {:.1} MB ({:.1} kB per resource), final state {:.1} MB",
            1000.0 * cpu / n as f64,
            written as f64 / 1e6,
            written as f64 / n as f64 / 1e3,
            std::fs::metadata(dir.path().join("state").join(&st.stack).join(&st.environment).join("state.json"))
                .map(|m| m.len() as f64 / 1e6)
                .unwrap_or(0.0),
        );
    }
}

/// This process's user and system CPU time so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Bytes this process has caused to be written to storage.
fn bytes_written() -> u64 {
    std::fs::read_to_string("/proc/self/io")
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| {
                    l.strip_prefix("write_bytes: ")
                        .map(|v| v.trim().parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}
