//! The driver interface: one driver per resource kind, implemented in the
//! cloud crates (ralph-aws, ralph-gcp, ralph-service). Every kind implements
//! the same small [`Driver`] trait (refresh, create, update in place, delete;
//! each create/update/delete returns only once the cloud reports the resource
//! ready or gone), so the engine never names a cloud. A new kind is one file
//! in its cloud's crate plus a line in that crate's `drivers()`.

pub mod capability;
pub mod limits;
pub mod secret_value;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Map, Value as Json};

use crate::events::{Event, Reporter};
use crate::model::{CloudSettings, KindSchema};

pub use crate::model::{Timeouts, OWNER_TAG_PREFIX, TAG_ADDRESS, TAG_ENVIRONMENT, TAG_STACK};

/// Whose resources these are: the stack and environment in the ownership tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub stack: String,
    pub environment: String,
}

/// A resource as the cloud reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// From the ownership tag, for kinds that carry tags.
    pub address: Option<String>,
    /// From the ownership tags. Refresh drops anything owned by another stack
    /// or environment, even when an API ignores the tag filter it was given.
    pub owner: Option<Owner>,
    pub id: String,
    /// Properties as the cloud reports them (same names and shapes as the
    /// kind's fields) plus the attributes it assigned.
    pub attrs: Map<String, Json>,
}

impl Observed {
    /// With the cloud's `status` recorded ([`STATUS_ATTR`]), ready
    /// ([`READY_ATTR`]) when it is `ready_when` ("ACTIVE", "available").
    pub fn with_status(mut self, status: &str, ready_when: &str) -> Observed {
        self.attrs
            .insert(STATUS_ATTR.into(), Json::String(status.to_string()));
        self.attrs
            .insert(READY_ATTR.into(), Json::Bool(status == ready_when));
        self
    }
}

impl Known {
    /// What the state recorded under `name`: the attribute, else the input
    /// it was applied with.
    pub fn recorded(&self, name: &str) -> Option<&Json> {
        self.attrs.get(name).or_else(|| self.inputs.get(name))
    }
}

/// A resource refresh should look for: a recorded one (with the inputs it
/// was applied with, for kinds that need them to reach the resource at all)
/// or a name the stack declares (`inputs` empty).
#[derive(Debug, Clone, Default)]
pub struct Known {
    pub id: String,
    pub inputs: Map<String, Json>,
    /// The attributes recorded with it (empty when the state has none).
    pub attrs: Map<String, Json>,
}

/// Whether a secret's changed `rotation` asks for a new value: any change
/// but the first setting of the initial "0" on a secret that had none (a
/// stack that starts passing its rotation counter rotates nothing).
pub fn rotation_requested(have: &Observed, want: &Desired<'_>, changed: &[String]) -> bool {
    if !changed.iter().any(|c| c == "rotation") {
        return false;
    }
    let before = have
        .attrs
        .get("rotation")
        .and_then(Json::as_str)
        .unwrap_or_default();
    !(before.is_empty() && want.str("rotation") == Some("0"))
}

/// What the stack wants, references resolved and defaults filled in.
#[derive(Debug, Clone)]
pub struct Desired<'a> {
    pub address: &'a str,
    pub props: &'a Map<String, Json>,
    pub owner: &'a Owner,
    pub timeouts: Timeouts,
    /// The id the state records at this address when a create runs: the
    /// resource a replacement makes way for, or one deleted outside.
    /// `None` for a first create. Two creates of one address differ in it,
    /// and a create repeated after a killed run does not.
    pub replaces: Option<&'a str>,
}

impl Desired<'_> {
    pub fn str(&self, name: &str) -> Option<&str> {
        self.props.get(name).and_then(Json::as_str)
    }
    pub fn bool(&self, name: &str) -> Option<bool> {
        self.props.get(name).and_then(Json::as_bool)
    }
    /// An integer property in the type the cloud API takes; a value that
    /// does not fit is an error naming the property, never a silent wrap
    /// (validation refuses such values first).
    pub fn int<T: TryFrom<i64>>(&self, name: &str) -> Result<Option<T>, DriverError> {
        match self.props.get(name).and_then(Json::as_i64) {
            None => Ok(None),
            Some(v) => T::try_from(v).map(Some).map_err(|_| {
                DriverError::new(format!(
                    "`{name}` is {v}, which is out of range for the cloud API"
                ))
            }),
        }
    }

    pub fn required_str(&self, name: &str) -> Result<&str, DriverError> {
        self.str(name)
            .ok_or_else(|| DriverError::new(format!("`{name}` has no value")))
    }
}

/// A resource read back after the tool made or changed it: `None` means it
/// was deleted meanwhile (by hand, or by another run), an error naming
/// it: `what` in words ("bucket") and its `id`.
pub fn found_again(found: Option<Observed>, what: &str, id: &str) -> Result<Observed, DriverError> {
    found.ok_or_else(|| {
        DriverError::new(format!(
            "{what} {id} vanished right after it was made or changed"
        ))
    })
}

/// What an update is asked to do: the resource as the stack wants it, as
/// it was last observed, and the names of the fields that differ.
#[derive(Debug, Clone, Copy)]
pub struct Update<'a> {
    pub want: &'a Desired<'a>,
    pub have: &'a Observed,
    pub changed: &'a [String],
}

impl Update<'_> {
    /// Whether `field` is one of those that differ.
    pub fn changes(&self, field: &str) -> bool {
        self.changed.iter().any(|c| c == field)
    }
}

/// What a delete is asked to do: the resource as last observed, and the
/// stack's timeouts for it (how long a delete may wait for the cloud).
#[derive(Debug, Clone, Copy)]
pub struct Delete<'a> {
    pub have: &'a Observed,
    pub timeouts: &'a Timeouts,
}

impl Delete<'_> {
    /// Where progress is reported: the resource's address, else its id.
    pub fn address(&self) -> &str {
        self.have.address.as_deref().unwrap_or(&self.have.id)
    }
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct DriverError {
    pub message: String,
    /// The resource was created but did not become ready (a wait timed out):
    /// it is recorded so that the next apply resumes waiting instead of
    /// creating a second one.
    pub partial: Option<Box<Observed>>,
    /// The cloud refused because the API is not enabled on the project
    /// (Google's SERVICE_DISABLED): nothing of that API can exist there.
    pub api_disabled: bool,
}

impl DriverError {
    pub fn new(message: impl Into<String>) -> Self {
        DriverError {
            message: message.into(),
            partial: None,
            api_disabled: false,
        }
    }

    pub fn with_partial(mut self, created: Observed) -> Self {
        self.partial = Some(Box::new(created));
        self
    }
}

/// The attribute a driver sets to `false` while the cloud still reports a
/// transitional status (CREATING, modifying); the plan then waits for it.
pub const READY_ATTR: &str = "ready";
/// The cloud's own status word, shown while waiting.
pub const STATUS_ATTR: &str = "status";

/// The attribute that holds, while a release stands over them, the stack's
/// values of the fields it set ([`crate::model::Field::released`]): a plan
/// leaves such a field alone while the stack still has the value the
/// release overrode.
pub const STACK_VALUES_ATTR: &str = "stack_values";

/// The stack values a release stands over (`attrs` of the resource), when
/// the stack (`stack_value` of a field) still has every one of them: the
/// one rule the plan and a driver's apply both follow.
pub fn standing_release<'a>(
    attrs: &'a Map<String, Json>,
    stack_value: impl Fn(&str) -> Option<&'a Json>,
) -> Option<&'a Map<String, Json>> {
    let over = attrs.get(STACK_VALUES_ATTR)?.as_object()?;
    let stands = !over.is_empty() && over.iter().all(|(f, v)| stack_value(f) == Some(v));
    stands.then_some(over)
}

/// Everything a driver call needs from outside: the owner, cloud settings,
/// lazily built cloud clients, a reporter for progress, and a count of the
/// API requests made (reported in summaries and benchmarks).
pub struct Context {
    pub owner: Owner,
    /// The stack file's directory: relative paths in properties start here.
    pub base_dir: std::path::PathBuf,
    pub cloud: CloudSettings,
    pub reporter: Arc<dyn Reporter>,
    pub requests: Arc<AtomicU64>,
    /// API operations; `requests - operations` is the number of retries.
    pub operations: Arc<AtomicU64>,
    /// Operations in flight per cloud service, adapting to throttling.
    pub limits: Arc<limits::ServiceLimits>,
    /// Set by the first Ctrl-C / SIGTERM: waits stop (the resource is
    /// recorded as not ready yet) and nothing new starts.
    pub stop: Arc<std::sync::atomic::AtomicBool>,
    /// Each cloud's clients, built on first use by that cloud's crate
    /// ([`Context::clients`]).
    clients: [tokio::sync::OnceCell<Box<dyn std::any::Any + Send + Sync>>; 2],
}

/// Which cloud's clients a [`Context`] caches.
#[derive(Debug, Clone, Copy)]
pub enum Clients {
    Aws = 0,
    Gcp = 1,
}

impl Context {
    /// Reports one step of a day-2 operation (`failover`'s promotion, ...).
    pub fn step(&self, address: &str, message: String) {
        self.reporter.report(crate::events::Event::Step {
            address: address.to_string(),
            message,
        });
    }

    pub fn new(
        owner: Owner,
        base_dir: std::path::PathBuf,
        cloud: CloudSettings,
        reporter: Arc<dyn Reporter>,
    ) -> Context {
        Context {
            owner,
            base_dir,
            cloud,
            reporter,
            requests: Arc::new(AtomicU64::new(0)),
            operations: Arc::new(AtomicU64::new(0)),
            limits: Arc::new(limits::ServiceLimits::new(10)),
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            clients: Default::default(),
        }
    }

    /// A cloud's clients: built by `connect` on the first call, the same
    /// ones afterwards. The cloud crates wrap this (`ralph_aws::clients`).
    pub async fn clients<T, F, Fut>(&self, which: Clients, connect: F) -> Result<&T, DriverError>
    where
        T: Send + Sync + 'static,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, DriverError>>,
    {
        let slot = self.clients[which as usize]
            .get_or_try_init(|| async {
                connect()
                    .await
                    .map(|c| Box::new(c) as Box<dyn std::any::Any + Send + Sync>)
            })
            .await?;
        slot.downcast_ref::<T>().ok_or_else(|| {
            DriverError::new(format!("internal error: {which:?} clients of two types"))
        })
    }

    /// Where AWS requests go, for messages about a cloud that does not answer.
    pub fn endpoint_description(&self) -> String {
        crate::remote::aws_endpoint(&self.cloud.aws.clone().unwrap_or_default())
    }

    /// Where requests for resources of `kind` go: the party and its address.
    pub fn party_of(&self, kind: &str) -> (crate::remote::Party, String) {
        use crate::remote::Party;
        let party = Party::of_kind(kind);
        let at = match party {
            Party::Aws => self.endpoint_description(),
            Party::Gcp => self
                .cloud
                .gcp
                .as_ref()
                .and_then(crate::remote::gcp_endpoint)
                .unwrap_or_else(|| "Google's endpoints".into()),
            Party::Kubernetes => crate::remote::kube_servers(),
            _ => "the database the resource names".into(),
        };
        (party, at)
    }

    pub fn request_count(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests sent again after a throttle, a 5xx, a timeout or a reset.
    pub fn retry_count(&self) -> u64 {
        self.requests
            .load(Ordering::Relaxed)
            .saturating_sub(self.operations.load(Ordering::Relaxed))
    }

    /// Polls `check` until it returns `Some`, reporting the cloud's status
    /// while waiting, or fails after `timeout`.
    pub async fn wait_until<T, F, Fut>(
        &self,
        address: &str,
        what: &str,
        timeout: Duration,
        check: F,
    ) -> Result<T, DriverError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(Option<T>, String), DriverError>>,
    {
        // Poll at a fraction of the time already spent, so the time lost
        // between "ready" and noticing it stays under 0.5% (a 20-minute
        // cluster is polled every ~6 s, well inside the services' rate
        // limits), from sub-second local waits to 20-minute clusters.
        let every = |spent: Duration| (spent / 200).clamp(POLL_FLOOR, Duration::from_secs(15));
        self.wait_loop(
            address,
            what,
            timeout,
            check,
            every,
            futures::stream::pending(),
        )
        .await
    }

    /// Like [`Context::wait_until`], for a cloud that says when something
    /// changed (a Kubernetes watch): `check` runs again as soon as `wake`
    /// yields, and at least every `recheck` for what the stream does not
    /// see, instead of polling. Should `wake` end, the wait goes on
    /// rechecking at that pace.
    pub async fn wait_until_woken<T, F, Fut, S>(
        &self,
        address: &str,
        what: &str,
        timeout: Duration,
        recheck: Duration,
        wake: S,
        check: F,
    ) -> Result<T, DriverError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(Option<T>, String), DriverError>>,
        S: futures::Stream<Item = ()>,
    {
        self.wait_loop(address, what, timeout, check, |_| recheck, wake)
            .await
    }

    async fn wait_loop<T, F, Fut, S>(
        &self,
        address: &str,
        what: &str,
        timeout: Duration,
        mut check: F,
        every: impl Fn(Duration) -> Duration,
        wake: S,
    ) -> Result<T, DriverError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(Option<T>, String), DriverError>>,
        S: futures::Stream<Item = ()>,
    {
        use futures::{FutureExt, StreamExt};
        let start = Instant::now();
        let mut wake = std::pin::pin!(wake);
        let mut listening = true;
        let mut last_status = String::new();
        loop {
            let (done, status) = check().await?;
            if let Some(v) = done {
                return Ok(v);
            }
            if status != last_status {
                self.reporter.report(Event::ResourceWaiting {
                    address: address.to_string(),
                    status: status.clone(),
                    elapsed_s: start.elapsed().as_secs(),
                });
                last_status = status.clone();
            }
            if self.stop.load(Ordering::SeqCst) {
                return Err(DriverError::new(format!("interrupted while waiting for {what} (last status: {status}); the next apply waits for it")));
            }
            if start.elapsed() >= timeout {
                return Err(DriverError::new(format!(
                    "timed out after {}s waiting for {what} (last status: {status})",
                    timeout.as_secs()
                )));
            }
            // Sleep in short steps so an interruption is noticed quickly;
            // a change the cloud announces ends the sleep at once.
            let until = Instant::now() + every(start.elapsed());
            while Instant::now() < until && !self.stop.load(Ordering::SeqCst) {
                let nap =
                    tokio::time::sleep(Duration::from_millis(100).min(until - Instant::now()));
                if !listening {
                    nap.await;
                    continue;
                }
                tokio::select! {
                    _ = nap => {}
                    event = wake.next() => match event {
                        Some(()) => {
                            // A burst of changes is one look.
                            while let Some(Some(())) = wake.next().now_or_never() {}
                            break;
                        }
                        None => listening = false,
                    },
                }
            }
        }
    }
}

/// The shortest pause between two polls of a wait.
const POLL_FLOOR: Duration = Duration::from_millis(50);

#[async_trait::async_trait]
pub trait Driver: Send + Sync {
    fn schema(&self) -> &'static KindSchema;

    /// The cloud service this kind's operations count against
    /// (`KindSchema::service`).
    fn service(&self) -> &'static str {
        self.schema().service
    }

    /// How long a create typically takes on the real cloud, in seconds. The
    /// apply starts resources on the longest expected chain first.
    fn typical_seconds(&self) -> u64 {
        1
    }

    /// Puts desired properties in the form the cloud reports them, so that
    /// equivalent spellings (protocol `all` and `-1`) never show as changes.
    /// `base_dir` is the stack file's directory (for kinds that read files).
    /// An error means the properties cannot be what the kind needs (a
    /// migrations directory that cannot be read, templates that do not
    /// render); it is reported when every property is known.
    fn normalize(
        &self,
        _base_dir: &std::path::Path,
        _props: &mut Map<String, Json>,
    ) -> Result<(), String> {
        Ok(())
    }

    /// Everything of this kind that the owner has in the cloud, found by the
    /// ownership tags in as few (paged) calls as the API allows. `ids` holds
    /// the ids recorded in the state and, for kinds whose id is a name the
    /// stack chooses (`KindSchema::name_field`), the declared names: kinds
    /// that cannot be listed by tag read those.
    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError>;

    /// One resource by its cloud id, whoever made it (`import`, and a
    /// recorded resource the tag listing did not return: its tags were
    /// removed, or it was imported and not tagged yet). `None`: it does not
    /// exist. Kinds whose refresh looks up known ids get this for free.
    async fn lookup(&self, cx: &Context, id: &str) -> Result<Option<Observed>, DriverError> {
        let known = [Known {
            id: id.to_string(),
            ..Default::default()
        }];
        Ok(self
            .refresh(cx, &known)
            .await?
            .into_iter()
            .find(|o| o.id == id))
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError>;

    /// Changes the fields that differ ([`Update::changed`]) in place.
    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError>;

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError>;

    /// Asked while planning, for each change of this kind that creates,
    /// replaces or updates something: whether the provider will take it,
    /// by the provider's own listings (EKS's offered Kubernetes versions).
    /// An error refuses the plan before anything is changed. Most kinds
    /// have nothing to ask; a no-op plan asks nothing.
    async fn preflight(
        &self,
        _cx: &Context,
        _change: &crate::change::Change,
    ) -> Result<(), DriverError> {
        Ok(())
    }

    /// What the day-2 operations find this kind by (`capability::Role`).
    fn roles(&self) -> &'static [capability::Role] {
        &[]
    }

    /// A database kind's read-replica promotion (`failover`).
    fn promotion(&self) -> Option<&dyn capability::Promotion> {
        None
    }

    /// A workload kind's in-place restart (`failover`'s pods).
    fn restarts(&self) -> Option<&dyn capability::Restarts> {
        None
    }

    /// A database kind's snapshots on request (`backup --snapshot`).
    fn snapshots(&self) -> Option<&dyn capability::Snapshots> {
        None
    }

    /// A bucket kind's objects (`backup`, `restore`, `status`'s RPO).
    fn dumps(&self) -> Option<&dyn capability::Dumps> {
        None
    }

    fn object_store(&self) -> Option<&dyn capability::ObjectStore> {
        None
    }

    /// The recorded resource as it is once the resource it lives in, named
    /// `from`, is served by `to` with the same data (a failover that
    /// promoted a replica under its own name: the databases and users are
    /// the promoted instance's now, nothing to create). `None`: it does not
    /// live in `from`.
    fn moved_parent(&self, _known: &Known, _from: &str, _to: &str) -> Option<Known> {
        None
    }
}

/// The resource kinds this build knows.
pub struct Registry {
    drivers: Vec<Box<dyn Driver>>,
}

impl Registry {
    /// A registry of these drivers (the engine's `registry()` has the
    /// built-in ones; its tests use fakes with their schemas).
    pub fn from_drivers(drivers: Vec<Box<dyn Driver>>) -> Registry {
        Registry { drivers }
    }

    /// Every driver, in registration order.
    pub fn drivers(&self) -> impl Iterator<Item = &dyn Driver> + '_ {
        self.drivers.iter().map(|d| d.as_ref())
    }

    pub fn driver(&self, kind: &str) -> Option<&dyn Driver> {
        self.drivers
            .iter()
            .find(|d| d.schema().kind == kind)
            .map(|d| d.as_ref())
    }

    pub fn schema(&self, kind: &str) -> Option<&'static KindSchema> {
        self.driver(kind).map(|d| d.schema())
    }

    /// Whether `kind` offers `role`.
    pub fn offers(&self, kind: &str, role: capability::Role) -> bool {
        self.driver(kind)
            .is_some_and(|d| capability::offers(d, role))
    }

    /// What offers `role`, for messages: "backup bucket (aws.s3_bucket or
    /// gcp.storage_bucket)".
    pub fn role_text(&self, role: capability::Role) -> String {
        let kinds: Vec<&str> = self
            .drivers()
            .filter(|d| capability::offers(*d, role))
            .map(|d| d.schema().kind)
            .collect();
        format!("{} ({})", role.noun(), kinds.join(" or "))
    }
}

impl crate::model::Catalog for Registry {
    fn schema(&self, kind: &str) -> Option<&'static KindSchema> {
        Registry::schema(self, kind)
    }

    fn schemas(&self) -> Vec<&'static KindSchema> {
        self.drivers.iter().map(|d| d.schema()).collect()
    }
}

/// Refuses an empty value read from a secret source (`ralph_service::read_secret_source`
/// and the clouds' readers): a password, token or key that is empty is a
/// mistake (a secret created without its value), never something to send
/// on. The value itself is never named.
pub fn nonempty_secret(
    what: &str,
    source: &str,
    (value, version): (String, String),
) -> Result<(String, String), DriverError> {
    if value.trim().is_empty() {
        return Err(DriverError::new(format!(
            "{what}: `{}` holds an empty value; put the value in it (or point at the secret that has it). Nothing was sent",
            source.split('#').next().unwrap_or(source)
        )));
    }
    Ok((value, version))
}

/// A node group's size moved within [min, max] by an autoscaler is not
/// drift: `size` reads as the recorded input, and the live one stays in
/// `running` (an update keeps it unless the stack changes `size` itself).
/// Outside that range the live size is shown as it is.
pub fn autoscaled_size(
    mut o: Observed,
    recorded: Option<&Known>,
    [size, min, max, running]: [&str; 4],
) -> Observed {
    let num = |k: &str| o.attrs.get(k).and_then(Json::as_i64);
    let (Some(live), Some(lo), Some(hi)) = (num(size), num(min), num(max)) else {
        return o;
    };
    o.attrs.insert(running.into(), Json::from(live));
    if let Some(want) = recorded
        .and_then(|k| k.inputs.get(size))
        .and_then(Json::as_i64)
    {
        if (lo..=hi).contains(&live) && (lo..=hi).contains(&want) {
            o.attrs.insert(size.into(), Json::from(want));
        }
    }
    o
}

/// What one delete attempt of [`delete_once_released`] found.
pub enum DeleteAttempt {
    /// Deleted, or already gone.
    Gone,
    /// Refused because something still uses it: try again.
    InUse,
}

/// Deletes through `attempt` until it is gone, retrying while the cloud
/// refuses because something still uses the resource (a load balancer
/// holding a certificate, a web ACL or a Cloud Armor policy, which its
/// controller lets go after the Ingress is deleted). `what` names the users in the progress line;
/// the wait ends at the delete timeout (20 minutes unless the stack says).
pub async fn delete_once_released<F, Fut>(
    cx: &Context,
    d: Delete<'_>,
    what: &str,
    attempt: F,
) -> Result<(), DriverError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<DeleteAttempt, DriverError>>,
{
    cx.wait_until(
        d.address(),
        &format!("{what} to let it go"),
        d.timeouts
            .delete_or(std::time::Duration::from_secs(20 * 60)),
        || async {
            Ok(match attempt().await? {
                DeleteAttempt::Gone => (Some(()), String::new()),
                DeleteAttempt::InUse => (None, "in use".to_string()),
            })
        },
    )
    .await
}

#[cfg(test)]
mod wait_tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn context() -> Context {
        Context::new(
            Owner {
                stack: "s".into(),
                environment: "e".into(),
            },
            std::path::PathBuf::from("."),
            Default::default(),
            Arc::new(crate::events::Silent),
        )
    }

    /// `check` returns done on its `n`th call; counts the calls.
    fn done_on(
        n: usize,
        calls: &AtomicUsize,
    ) -> impl FnMut() -> std::future::Ready<Result<(Option<()>, String), DriverError>> + '_ {
        move || {
            let i = calls.fetch_add(1, Ordering::SeqCst) + 1;
            std::future::ready(Ok(((i >= n).then_some(()), format!("look {i}"))))
        }
    }

    #[tokio::test]
    async fn a_change_is_looked_at_at_once_and_a_burst_of_them_once() {
        let cx = context();
        let looks = std::sync::Mutex::new(Vec::new());
        let (tx, rx) = futures::channel::mpsc::unbounded();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(150)).await;
            for _ in 0..3 {
                tx.unbounded_send(()).unwrap();
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let start = Instant::now();
        cx.wait_until_woken(
            "a",
            "it",
            Duration::from_secs(30),
            Duration::from_secs(1),
            rx,
            || {
                let mut l = looks.lock().unwrap();
                l.push(start.elapsed());
                std::future::ready(Ok::<_, DriverError>((
                    (l.len() == 3).then_some(()),
                    String::new(),
                )))
            },
        )
        .await
        .unwrap();
        let l = looks.into_inner().unwrap();
        // The second look follows the burst at once; the burst's other two
        // changes are not looks of their own: the third waits for the
        // recheck a second later.
        assert!(
            l[1] >= Duration::from_millis(150) && l[1] < Duration::from_millis(600),
            "{l:?}"
        );
        assert!(l[2] - l[1] >= Duration::from_millis(900), "{l:?}");
    }

    #[tokio::test]
    async fn a_wake_stream_that_ends_leaves_the_rechecks_not_a_busy_loop() {
        let cx = context();
        let calls = AtomicUsize::new(0);
        let start = Instant::now();
        let ended = futures::stream::empty::<()>();
        let err = cx
            .wait_until_woken(
                "a",
                "it",
                Duration::from_millis(700),
                Duration::from_millis(200),
                ended,
                done_on(usize::MAX, &calls),
            )
            .await
            .unwrap_err();
        assert!(err.message.contains("timed out"), "{}", err.message);
        let looks = calls.load(Ordering::SeqCst);
        assert!(
            (3..=6).contains(&looks),
            "{looks} looks in {:?}",
            start.elapsed()
        );
    }
}
