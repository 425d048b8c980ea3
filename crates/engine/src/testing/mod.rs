//! The engine's test seam (compiled for tests only): an in-memory cloud
//! behind fake drivers that carry the built-in kinds' schemas, and an
//! in-memory state backend. Latency, failures, partial creates and a kill
//! switch (the process "dies" right after the k-th mutating driver call took
//! effect: every later driver call and every state or journal write fails)
//! are configurable, so diff, ordering, partial creates, recovery and crash
//! safety are tested in-process, in milliseconds.

pub mod backups;
pub mod engine_tests;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value as Json};

use crate::state::{Intent, LockInfo, Snapshot, State, StateError};
use ralph_core::driver::{
    Context, Delete, Desired, Driver, DriverError, Known, Observed, Owner, Registry, Update,
    READY_ATTR,
};
use ralph_core::model::{KindSchema, Ty};

/// The process "dies" after this many more mutating calls.
#[derive(Default)]
pub struct Kill {
    left: AtomicI64,
    armed: AtomicBool,
    dead: AtomicBool,
}

impl Kill {
    pub fn after(&self, calls: i64) {
        self.left.store(calls, Ordering::SeqCst);
        self.armed.store(true, Ordering::SeqCst);
        self.dead.store(false, Ordering::SeqCst);
    }
    pub fn revive(&self) {
        self.armed.store(false, Ordering::SeqCst);
        self.dead.store(false, Ordering::SeqCst);
    }
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }
    /// Counts one mutating call that has taken effect; true when it was the
    /// last one the process lives to see the answer of.
    fn count(&self) -> bool {
        if self.armed.load(Ordering::SeqCst) && self.left.fetch_sub(1, Ordering::SeqCst) <= 1 {
            self.dead.store(true, Ordering::SeqCst);
            return true;
        }
        false
    }
}

/// One call the fake cloud served.
#[derive(Debug, Clone)]
pub struct Call {
    pub op: &'static str,
    pub address: String,
    pub started: Instant,
    pub ended: Instant,
}

#[derive(Default)]
pub struct FakeCloud {
    /// kind -> id -> resource.
    pub resources: Mutex<BTreeMap<String, BTreeMap<String, Observed>>>,
    pub calls: Mutex<Vec<Call>>,
    /// Per kind, how long create/update/delete take.
    pub latency: Mutex<BTreeMap<String, Duration>>,
    /// (op, address) that fail without effect.
    pub fail: Mutex<BTreeSet<(String, String)>>,
    /// Addresses whose create makes the resource but never sees it ready.
    pub partial: Mutex<BTreeSet<String>>,
    /// Per (kind, property): what the cloud keeps instead of what was asked
    /// (an engine version completed, a list reordered, a name lowercased),
    /// so that a normalisation, and the permanent diff it may cause, can be
    /// modelled.
    pub normalise: Mutex<BTreeMap<(String, String), Normaliser>>,
    pub kill: Arc<Kill>,
    /// The buckets' objects: (bucket, key) -> bytes.
    pub objects: Mutex<BTreeMap<(String, String), Vec<u8>>>,
    /// The database server's databases and their tables.
    pub databases: Mutex<BTreeMap<String, Vec<ralph_core::driver::capability::TableSum>>>,
    next: AtomicUsize,
    in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

/// What a cloud keeps of a requested value.
pub type Normaliser = fn(&Json) -> Json;

impl FakeCloud {
    /// From now on the cloud keeps `f(value)` for `kind`'s `property`.
    pub fn normalises(&self, kind: &str, property: &str, f: Normaliser) {
        self.normalise
            .lock()
            .unwrap()
            .insert((kind.to_string(), property.to_string()), f);
    }

    /// `props` as the cloud keeps them for `kind`.
    fn kept(&self, kind: &str, props: &Map<String, Json>) -> Map<String, Json> {
        let rules = self.normalise.lock().unwrap();
        props
            .iter()
            .map(|(k, v)| {
                let v = match rules.get(&(kind.to_string(), k.clone())) {
                    Some(f) => f(v),
                    None => v.clone(),
                };
                (k.clone(), v)
            })
            .collect()
    }

    pub fn new(kill: Arc<Kill>) -> Arc<FakeCloud> {
        Arc::new(FakeCloud {
            kill,
            ..Default::default()
        })
    }

    /// A registry with a fake driver for every built-in kind.
    pub fn registry(self: &Arc<Self>) -> Registry {
        Registry::from_drivers(
            builtin()
                .drivers()
                .map(|d| {
                    Box::new(FakeDriver {
                        schema: d.schema(),
                        roles: d.roles(),
                        cloud: self.clone(),
                        promotion: d.promotion().map(|real| FakePromotion {
                            real,
                            kind: d.schema().kind,
                            cloud: self.clone(),
                        }),
                        store: d.object_store(),
                        dumps: d.dumps().is_some(),
                    }) as Box<dyn Driver>
                })
                .collect(),
        )
    }

    /// Every resource, as (kind, id, address).
    pub fn all(&self) -> Vec<(String, String, Option<String>)> {
        let r = self.resources.lock().unwrap();
        r.iter()
            .flat_map(|(k, m)| {
                m.values()
                    .map(move |o| (k.clone(), o.id.clone(), o.address.clone()))
            })
            .collect()
    }

    pub fn count(&self) -> usize {
        self.all().len()
    }

    fn alive(&self) -> Result<(), DriverError> {
        if self.kill.is_dead() {
            Err(DriverError::new("the process was killed"))
        } else {
            Ok(())
        }
    }

    async fn begin(
        &self,
        op: &'static str,
        kind: &str,
        address: &str,
    ) -> Result<Instant, DriverError> {
        self.alive()?;
        if self
            .fail
            .lock()
            .unwrap()
            .contains(&(op.to_string(), address.to_string()))
        {
            return Err(DriverError::new(format!("injected failure of {op}")));
        }
        let n = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(n, Ordering::SeqCst);
        let started = Instant::now();
        let latency = self.latency.lock().unwrap().get(kind).copied();
        if let Some(l) = latency {
            tokio::time::sleep(l).await;
        }
        Ok(started)
    }

    /// After the effect: record the call; fails when the process died now.
    fn end(&self, op: &'static str, address: &str, started: Instant) -> Result<(), DriverError> {
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.calls.lock().unwrap().push(Call {
            op,
            address: address.to_string(),
            started,
            ended: Instant::now(),
        });
        if self.kill.count() {
            return Err(DriverError::new("the process was killed"));
        }
        self.alive()
    }
}

/// The built-in kinds, kept for the life of the tests (the fakes borrow
/// their pure parts: a promotion's naming rules).
fn builtin() -> &'static Registry {
    static BUILTIN: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    BUILTIN.get_or_init(crate::registry)
}

/// A database kind's replica promotion over the fake cloud, each step a
/// mutating call (so a kill can fall between any two), repeatable as the
/// real ones are. Where the real kind renames (RDS), the old primary moves
/// to the aside name and the promoted one to the primary's; where it does
/// not (Cloud SQL), only their ownership moves. The lag reads 0 s.
pub struct FakePromotion {
    real: &'static dyn ralph_core::driver::capability::Promotion,
    kind: &'static str,
    cloud: Arc<FakeCloud>,
}

/// Marks the instance a fake failover promoted.
const PROMOTED_BY: &str = "fake_promoted_by";
/// Marks an old primary a fake failover retired.
pub const RETIRED_BY: &str = "fake_retired_by";
/// And the address it served.
const RETIRED_FROM: &str = "fake_retired_from";

impl FakePromotion {
    /// One mutating step on the resource `id`: `f` changes it (or says
    /// there is nothing to do by returning false before any effect).
    async fn step(
        &self,
        op: &'static str,
        address: &str,
        f: impl FnOnce(&mut BTreeMap<String, Observed>) -> bool,
    ) -> Result<(), DriverError> {
        let started = self.cloud.begin(op, self.kind, address).await?;
        let changed = {
            let mut all = self.cloud.resources.lock().unwrap();
            f(all.entry(self.kind.to_string()).or_default())
        };
        if !changed {
            self.cloud.in_flight.fetch_sub(1, Ordering::SeqCst);
            return Ok(());
        }
        self.cloud.end(op, address, started)
    }

    fn get(&self, id: &str) -> Option<Observed> {
        self.cloud
            .resources
            .lock()
            .unwrap()
            .get(self.kind)
            .and_then(|m| m.get(id).cloned())
    }
}

#[async_trait::async_trait]
impl ralph_core::driver::capability::Promotion for FakePromotion {
    fn primary_of<'a>(&self, inputs: &'a Map<String, Json>) -> Option<&'a str> {
        self.real.primary_of(inputs)
    }
    fn is_named(&self, id: &str, attrs: &Map<String, Json>, source: &str) -> bool {
        self.real.is_named(id, attrs, source)
    }
    fn renames(&self) -> bool {
        self.real.renames()
    }
    fn aside_name(&self, primary_id: &str, now: chrono::DateTime<chrono::Utc>) -> String {
        self.real.aside_name(primary_id, now)
    }
    async fn replica_lag(
        &self,
        _cx: &Context,
        replica_id: &str,
    ) -> Result<ralph_core::driver::capability::Lag, DriverError> {
        self.cloud.alive()?;
        Ok(ralph_core::driver::capability::Lag {
            seconds: Some(0.0),
            source: format!("the fake lag of {replica_id}"),
        })
    }

    async fn retired(
        &self,
        _cx: &Context,
    ) -> Result<Vec<ralph_core::driver::capability::Retired>, DriverError> {
        self.cloud.alive()?;
        let all = self.cloud.resources.lock().unwrap();
        Ok(all
            .get(self.kind)
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(|o| {
                let address = o.attrs.get(RETIRED_FROM)?.as_str()?.to_string();
                Some(ralph_core::driver::capability::Retired {
                    address,
                    observed: o.clone(),
                })
            })
            .collect())
    }

    async fn promote(
        &self,
        cx: &Context,
        p: &ralph_core::driver::capability::PromotionPlan<'_>,
        stopped: &(dyn Fn() -> bool + Send + Sync),
    ) -> Result<ralph_core::driver::capability::Promoted, DriverError> {
        let real = self.real;
        let marker = Json::String(p.marker.to_string());
        // 1. The replica stops replicating (the field naming its primary goes).
        self.step("promote", p.replica, |m| {
            let Some(r) = m.get_mut(p.replica_id) else {
                return false;
            };
            let Some(source) = real.primary_of(&r.attrs).map(str::to_string) else {
                return false;
            };
            r.attrs.retain(|_, v| v.as_str() != Some(source.as_str()));
            r.attrs.insert(PROMOTED_BY.into(), marker.clone());
            true
        })
        .await?;
        if stopped() {
            return Err(DriverError::new("interrupted"));
        }
        // 2. The old primary is no longer the stack's (and moves aside).
        let renames = real.renames();
        self.step("retire", p.primary, |m| {
            let ours = m
                .get(p.primary_id)
                .is_some_and(|o| o.attrs.get(PROMOTED_BY) != Some(&marker) && o.owner.is_some());
            if !ours {
                return false;
            }
            let Some(mut old) = m.remove(p.primary_id) else {
                return false;
            };
            old.owner = None;
            old.address = None;
            old.attrs.insert(RETIRED_BY.into(), marker.clone());
            old.attrs.insert(RETIRED_FROM.into(), p.primary.into());
            let to = if renames { p.old_name } else { p.primary_id };
            old.id = to.to_string();
            m.insert(to.to_string(), old);
            true
        })
        .await?;
        if stopped() {
            return Err(DriverError::new("interrupted"));
        }
        // 3. The promoted one takes the primary's name (where the kind
        //    renames) and its ownership.
        let serving = if renames { p.primary_id } else { p.replica_id };
        self.step("take over", p.primary, |m| {
            let Some(mut r) = m.remove(p.replica_id) else {
                return false;
            };
            if r.address.as_deref() == Some(p.primary) && r.id == serving {
                m.insert(p.replica_id.to_string(), r);
                return false;
            }
            r.id = serving.to_string();
            if let Some(f) = builtin()
                .driver(self.kind)
                .and_then(|d| d.schema().name_field)
            {
                if r.attrs.contains_key(f) {
                    r.attrs
                        .insert(f.to_string(), Json::String(serving.to_string()));
                }
            }
            r.address = Some(p.primary.to_string());
            r.owner = Some(cx.owner.clone());
            m.insert(serving.to_string(), r);
            true
        })
        .await?;
        let observed = self
            .get(serving)
            .ok_or_else(|| DriverError::new(format!("{serving} is gone")))?;
        Ok(ralph_core::driver::capability::Promoted {
            observed,
            old_primary: Some(if renames { p.old_name } else { p.primary_id }.to_string()),
        })
    }
}

#[async_trait::async_trait]
impl ralph_core::driver::capability::Restarts for FakeDriver {
    async fn restart(
        &self,
        _cx: &Context,
        address: &str,
        known: &Known,
        reason: &str,
        _timeout: Duration,
    ) -> Result<Observed, DriverError> {
        let started = self
            .cloud
            .begin("restart", self.schema.kind, address)
            .await?;
        let obs = {
            let mut all = self.cloud.resources.lock().unwrap();
            let Some(o) = all
                .get_mut(self.schema.kind)
                .and_then(|m| m.get_mut(&known.id))
            else {
                self.cloud.in_flight.fetch_sub(1, Ordering::SeqCst);
                return Err(DriverError::new(format!("{} not found", known.id)));
            };
            o.attrs
                .insert("restarted".into(), Json::String(reason.into()));
            o.clone()
        };
        self.cloud.end("restart", address, started)?;
        Ok(obs)
    }
}

/// Kinds whose create is idempotent (server-side apply, migrations).
const IDEMPOTENT: &[&str] = &[
    "kubernetes.orchestrator",
    "kubernetes.manifests",
    "postgres.migrations",
];

/// A driver for `schema` over the fake cloud.
pub struct FakeDriver {
    pub schema: &'static KindSchema,
    /// The built-in kind's roles, so operations find the fakes as they find
    /// the real kinds.
    pub roles: &'static [ralph_core::driver::capability::Role],
    pub cloud: Arc<FakeCloud>,
    /// The fake promotion of a kind whose real driver has one.
    pub promotion: Option<FakePromotion>,
    /// A bucket kind's real store (its pure parts: names, URLs): the fake
    /// keeps the objects.
    pub store: Option<&'static dyn ralph_core::driver::capability::ObjectStore>,
    /// Whether the real kind dumps its database: the fake dumps the fake
    /// server's.
    pub dumps: bool,
}

fn fake_value(ty: &Ty, name: &str, id: &str) -> Json {
    match ty {
        Ty::Int => Json::from(5432),
        Ty::Bool => Json::Bool(true),
        Ty::List(_) | Ty::Set(_) => Json::Array(vec![]),
        Ty::StringMap | Ty::Object(_) => Json::Object(Map::new()),
        _ => Json::String(format!("{name}-of-{id}")),
    }
}

#[async_trait::async_trait]
impl Driver for FakeDriver {
    fn schema(&self) -> &'static KindSchema {
        self.schema
    }

    fn service(&self) -> &'static str {
        "fake"
    }

    fn roles(&self) -> &'static [ralph_core::driver::capability::Role] {
        self.roles
    }

    fn promotion(&self) -> Option<&dyn ralph_core::driver::capability::Promotion> {
        self.promotion
            .as_ref()
            .map(|p| p as &dyn ralph_core::driver::capability::Promotion)
    }

    fn object_store(&self) -> Option<&dyn ralph_core::driver::capability::ObjectStore> {
        self.store
            .map(|_| self as &dyn ralph_core::driver::capability::ObjectStore)
    }

    fn dumps(&self) -> Option<&dyn ralph_core::driver::capability::Dumps> {
        self.dumps
            .then_some(self as &dyn ralph_core::driver::capability::Dumps)
    }

    fn restarts(&self) -> Option<&dyn ralph_core::driver::capability::Restarts> {
        self.roles
            .contains(&ralph_core::driver::capability::Role::Orchestrator)
            .then_some(self as &dyn ralph_core::driver::capability::Restarts)
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        self.cloud.alive()?;
        let all = self.cloud.resources.lock().unwrap();
        let Some(of_kind) = all.get(self.schema.kind) else {
            return Ok(vec![]);
        };
        let forcing: Vec<&str> = self
            .schema
            .fields
            .iter()
            .filter(|f| f.replace)
            .map(|f| f.name)
            .collect();
        Ok(of_kind
            .values()
            .filter(|o| {
                if self.schema.taggable {
                    return o.owner.as_ref() == Some(&cx.owner);
                }
                known.iter().any(|k| {
                    k.id == o.id
                        || (!k.inputs.is_empty()
                            && !forcing.is_empty()
                            && forcing.iter().all(|f| k.inputs.get(*f) == o.attrs.get(*f)))
                })
            })
            .cloned()
            .map(|mut o| {
                if !self.schema.taggable {
                    o.owner = None;
                    o.address = None;
                }
                o
            })
            .collect())
    }

    async fn create(&self, _cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let started = self
            .cloud
            .begin("create", self.schema.kind, want.address)
            .await?;
        let n = self.cloud.next.fetch_add(1, Ordering::SeqCst);
        // Kinds without tags are identified by what they are (a subnet's
        // association, a namespace/name, a database): creating one again is
        // idempotent, as server-side apply and migrations are.
        let forcing: Vec<String> = self
            .schema
            .fields
            .iter()
            .filter(|f| f.replace)
            .map(|f| ralph_core::model::json_to_text(want.props.get(f.name).unwrap_or(&Json::Null)))
            .collect();
        // Server-side apply and migrations are idempotent, named by what
        // they are; other kinds without tags (a route table association)
        // get a fresh id and refuse a second copy, as the cloud does, so
        // only the intent journal finds one an interrupted run made.
        let idempotent = IDEMPOTENT.contains(&self.schema.kind);
        let id = match self.schema.name_field.and_then(|f| want.str(f)) {
            Some(name) => name.to_string(),
            None if idempotent => format!(
                "{}:{}",
                self.schema.kind,
                if forcing.is_empty() {
                    format!(
                        "{}/{}/{}",
                        want.owner.stack, want.owner.environment, want.address
                    )
                } else {
                    forcing.join("/")
                }
            ),
            None => format!("{}-{n}", self.schema.kind.replace('.', "-")),
        };
        if !self.schema.taggable && !idempotent && !forcing.is_empty() {
            let names: Vec<&str> = self
                .schema
                .fields
                .iter()
                .filter(|f| f.replace)
                .map(|f| f.name)
                .collect();
            let all = self.cloud.resources.lock().unwrap();
            let twin = all.get(self.schema.kind).and_then(|m| {
                m.values()
                    .find(|o| names.iter().all(|f| o.attrs.get(*f) == want.props.get(*f)))
            });
            if let Some(t) = twin {
                self.cloud.in_flight.fetch_sub(1, Ordering::SeqCst);
                return Err(DriverError::new(format!("{} already exists", t.id)));
            }
        }
        let mut attrs = self.cloud.kept(self.schema.kind, want.props);
        for a in self.schema.attrs {
            attrs
                .entry(a.name.to_string())
                .or_insert_with(|| fake_value(&a.ty, a.name, &id));
        }
        let partial = self.cloud.partial.lock().unwrap().contains(want.address);
        attrs.insert(READY_ATTR.into(), Json::Bool(!partial));
        if self
            .roles
            .contains(&ralph_core::driver::capability::Role::Orchestrator)
        {
            attrs.insert("last_good".into(), Json::Object(want.props.clone()));
        }
        let obs = Observed {
            address: Some(want.address.to_string()),
            owner: Some(want.owner.clone()),
            id: id.clone(),
            attrs,
        };
        {
            let mut all = self.cloud.resources.lock().unwrap();
            let of_kind = all.entry(self.schema.kind.to_string()).or_default();
            if of_kind.contains_key(&id) && !idempotent {
                self.cloud.in_flight.fetch_sub(1, Ordering::SeqCst);
                return Err(DriverError::new(format!("{id} already exists")));
            }
            of_kind.insert(id, obs.clone());
        }
        self.cloud.end("create", want.address, started)?;
        if partial {
            return Err(DriverError::new("timed out waiting to be ready").with_partial(obs));
        }
        Ok(obs)
    }

    async fn update(&self, _cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        let started = self
            .cloud
            .begin("update", self.schema.kind, want.address)
            .await?;
        let obs = {
            let mut all = self.cloud.resources.lock().unwrap();
            let Some(o) = all
                .get_mut(self.schema.kind)
                .and_then(|m| m.get_mut(&have.id))
            else {
                self.cloud.in_flight.fetch_sub(1, Ordering::SeqCst);
                return Err(DriverError::new(format!("{} not found", have.id)));
            };
            if self
                .roles
                .contains(&ralph_core::driver::capability::Role::Orchestrator)
            {
                // What the release before this one ran, for `rollback`, as
                // the orchestrator records it.
                let good = o.attrs.get("last_good").cloned();
                if good.is_some() && good.as_ref() != Some(&Json::Object(want.props.clone())) {
                    o.attrs
                        .insert("previous_good".into(), good.unwrap_or_default());
                }
                o.attrs
                    .insert("last_good".into(), Json::Object(want.props.clone()));
            }
            for (k, v) in self.cloud.kept(self.schema.kind, want.props) {
                o.attrs.insert(k, v);
            }
            o.attrs.insert(READY_ATTR.into(), Json::Bool(true));
            o.clone()
        };
        self.cloud.end("update", want.address, started)?;
        Ok(obs)
    }

    async fn delete(&self, _cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let address = d.address();
        let started = self
            .cloud
            .begin("delete", self.schema.kind, &address)
            .await?;
        let existed = self
            .cloud
            .resources
            .lock()
            .unwrap()
            .get_mut(self.schema.kind)
            .and_then(|m| m.remove(&d.have.id))
            .is_some();
        let _ = existed; // deleting what is already gone is done
        self.cloud.end("delete", &address, started)
    }
}

/// The state, journal, lock and snapshots, in memory.
pub struct MemoryBackend {
    pub state: Mutex<Option<State>>,
    pub journal: Mutex<Vec<(Intent, bool)>>,
    pub results: Mutex<Vec<crate::state::Entry>>,
    pub lock: Mutex<Option<LockInfo>>,
    pub snapshots: Mutex<Vec<(Snapshot, State)>>,
    /// Whole-state writes so far (shared, so a test keeps a handle).
    pub writes: Arc<AtomicUsize>,
    pub kill: Arc<Kill>,
}

impl MemoryBackend {
    pub fn new(kill: Arc<Kill>) -> MemoryBackend {
        MemoryBackend {
            state: Mutex::new(None),
            journal: Mutex::new(Vec::new()),
            results: Mutex::new(Vec::new()),
            lock: Mutex::new(None),
            snapshots: Mutex::new(Vec::new()),
            writes: Arc::new(AtomicUsize::new(0)),
            kill,
        }
    }

    fn alive(&self) -> Result<(), StateError> {
        if self.kill.is_dead() {
            Err(StateError::Io {
                path: "memory".into(),
                error: std::io::Error::other("the process was killed"),
            })
        } else {
            Ok(())
        }
    }

    /// The last snapshot with the journaled results replayed over it:
    /// what the next run reads.
    pub fn current(&self) -> Option<State> {
        let mut st = self.state.lock().unwrap().clone()?;
        crate::state::replay(&mut st, &self.results.lock().unwrap());
        Some(st)
    }
}

#[async_trait::async_trait]
impl crate::state::StateStore for MemoryBackend {
    async fn read(&self) -> Result<Option<State>, StateError> {
        Ok(self.current())
    }

    async fn write(&self, state: &State) -> Result<(), StateError> {
        self.alive()?;
        self.writes.fetch_add(1, Ordering::SeqCst);
        *self.state.lock().unwrap() = Some(state.clone());
        Ok(())
    }

    fn describe(&self) -> String {
        "memory".into()
    }

    async fn snapshot_before(&self, operation: &str) -> Result<Option<String>, StateError> {
        self.alive()?;
        // A copy of what was last written, as the real stores copy their
        // state object (journaled results are not in it).
        let Some(st) = self.state.lock().unwrap().clone() else {
            return Ok(None);
        };
        let mut snaps = self.snapshots.lock().unwrap();
        let name = format!("{}-{operation}", snaps.len());
        snaps.push((
            Snapshot {
                name: name.clone(),
                operation: operation.into(),
                serial: st.serial,
                taken_at: String::new(),
            },
            st,
        ));
        Ok(Some(name))
    }

    async fn snapshots(&self) -> Result<Vec<Snapshot>, StateError> {
        Ok(self
            .snapshots
            .lock()
            .unwrap()
            .iter()
            .map(|(s, _)| s.clone())
            .collect())
    }

    async fn put_snapshot(
        &self,
        name: &str,
        operation: &str,
        state: &State,
    ) -> Result<(), StateError> {
        self.snapshots.lock().unwrap().push((
            Snapshot {
                name: name.into(),
                operation: operation.into(),
                serial: state.serial,
                taken_at: String::new(),
            },
            state.clone(),
        ));
        Ok(())
    }

    async fn read_snapshot(&self, which: &str) -> Result<State, StateError> {
        self.snapshots
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(s, _)| s.name == which || s.serial.to_string() == which)
            .map(|(_, st)| st.clone())
            .ok_or_else(|| StateError::NotLocked(which.into()))
    }
}

#[async_trait::async_trait]
impl crate::state::Locker for MemoryBackend {
    async fn lock(&self, info: &LockInfo) -> Result<Option<LockInfo>, StateError> {
        self.alive()?;
        let mut l = self.lock.lock().unwrap();
        if let Some(h) = l.as_ref() {
            return Err(StateError::Locked(Box::new(crate::state::LockHeld {
                target: "memory".into(),
                holder: h.clone(),
            })));
        }
        *l = Some(info.clone());
        Ok(None)
    }

    async fn unlock(&self, info: &LockInfo) -> Result<(), StateError> {
        self.alive()?;
        let mut l = self.lock.lock().unwrap();
        if l.as_ref().is_some_and(|h| h.id == info.id) {
            *l = None;
        }
        Ok(())
    }

    async fn holder(&self) -> Result<Option<LockInfo>, StateError> {
        Ok(self.lock.lock().unwrap().clone())
    }

    async fn force_unlock(&self, _id: &str) -> Result<LockInfo, StateError> {
        self.lock
            .lock()
            .unwrap()
            .take()
            .ok_or_else(|| StateError::NotLocked("memory".into()))
    }
}

#[async_trait::async_trait]
impl crate::state::Journal for MemoryBackend {
    async fn open_intent(&self, intent: &Intent) -> Result<(), StateError> {
        self.alive()?;
        self.journal.lock().unwrap().push((intent.clone(), true));
        Ok(())
    }

    async fn close_intent(&self, id: &str) -> Result<(), StateError> {
        self.alive()?;
        for (i, open) in self.journal.lock().unwrap().iter_mut() {
            if i.id == id {
                *open = false;
            }
        }
        Ok(())
    }

    async fn open_intents(&self) -> Result<Vec<Intent>, StateError> {
        Ok(self
            .journal
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, open)| *open)
            .map(|(i, _)| i.clone())
            .collect())
    }

    async fn compact(&self) -> Result<(), StateError> {
        self.alive()?;
        self.journal.lock().unwrap().retain(|(_, open)| *open);
        Ok(())
    }

    async fn record_result(&self, entry: &crate::state::Entry) -> Result<(), StateError> {
        self.alive()?;
        self.results.lock().unwrap().push(entry.clone());
        if let Some(id) = &entry.closes {
            for (i, open) in self.journal.lock().unwrap().iter_mut() {
                if &i.id == id {
                    *open = false;
                }
            }
        }
        Ok(())
    }

    async fn results(&self) -> Result<Vec<crate::state::Entry>, StateError> {
        Ok(self.results.lock().unwrap().clone())
    }

    async fn forget_results(&self, serial: u64) -> Result<(), StateError> {
        self.alive()?;
        self.results.lock().unwrap().retain(|e| e.since >= serial);
        Ok(())
    }
}

/// A context for the fake cloud, reporting nothing.
pub fn context(stack: &str, env: &str) -> Context {
    Context::new(
        Owner {
            stack: stack.into(),
            environment: env.into(),
        },
        std::path::PathBuf::from("."),
        Default::default(),
        Arc::new(ralph_core::events::Silent),
    )
}
