//! Google Cloud: the official google-cloud-rust clients (Compute networking,
//! GKE, Cloud SQL Admin, Memorystore Redis, Secret Manager, IAM and Resource
//! Manager for service accounts and role bindings), built once per
//! run, and what every `gcp.*` kind shares: ownership labels (or, for the
//! Compute kinds that have no labels, a marker in the description), calls
//! counted and retried on throttling (429 RESOURCE_EXHAUSTED feeds the
//! service's adaptive concurrency), errors as one line, and long-running
//! operations polled through `Context::wait_until`.
//!
//! Requests are built from and read into JSON in the REST field names
//! (camelCase, enum names as strings), then converted to and from the
//! clients' typed messages with their own serde, so a kind reads like the
//! API reference.

pub mod compute;
pub mod gke;
pub mod iam;
pub mod logging;
pub mod project_service;
pub mod redis;
pub mod rest;
pub mod secret;
pub mod security_policy;
pub mod service_networking;
pub mod sql;
pub mod sql_failover;
pub mod storage;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Map, Value as Json};

use ralph_core::driver::{Context, DriverError, Observed, Owner};
use ralph_core::model::GcpSettings;

pub const LABEL_STACK: &str = "ralph-deploy-stack";
pub const LABEL_ENVIRONMENT: &str = "ralph-deploy-environment";
pub const LABEL_ADDRESS: &str = "ralph-deploy-address";

use ralph_core::remote::GCP_ENDPOINT_ENV as ENDPOINT_ENV;

/// A regional kind's `region`: fixed once made, the stack's
/// `cloud.gcp.region` when not given.
pub const fn region_field() -> ralph_core::model::kinds::Field {
    use ralph_core::model::kinds::{Field, Ty};
    Field::new(
        "region",
        Ty::String,
        "the region (default: cloud.gcp.region)",
    )
    .forces_replace()
}

/// A kind's `network`, the VPC network it stands in, fixed once made.
pub const fn network_field() -> ralph_core::model::kinds::Field {
    use ralph_core::model::kinds::{Field, Ty};
    Field::fixed("network", Ty::String, "the network, usually `${vpc.id}`")
}

/// Whether Google Cloud holds what a secret source names: a Secret Manager
/// secret (`projects/P/secrets/S`) or a Memorystore instance's AUTH string
/// (`memorystore:NAME`).
pub fn holds_secret_source(source: &str) -> bool {
    secret::is_source(source) || source.starts_with(redis::AUTH_SOURCE)
}

/// The value a secret source names and what identifies its version: a
/// Google Cloud one ([`holds_secret_source`]) or `env:NAME`. `#key` picks
/// one key of a JSON secret. `what` names the value in errors; the value
/// itself never appears in one.
pub async fn read_secret_source(
    cx: &Context,
    what: &str,
    source: &str,
) -> Result<(String, String), DriverError> {
    let read = if let Some(read) = ralph_core::driver::secret_value::read_env(what, source) {
        read?
    } else if secret::is_source(source) {
        secret::read_source(cx, what, source).await?
    } else if source.starts_with(redis::AUTH_SOURCE) {
        redis::read_auth(cx, what, source).await?
    } else {
        return Err(DriverError::new(format!(
            "{what}: `{source}` is not a Secret Manager name (projects/P/secrets/S), a `memorystore:NAME` AUTH string or `env:VARIABLE`"
        )));
    };
    ralph_core::driver::nonempty_secret(what, source, read)
}

/// This run's Google Cloud clients, built on the first call.
pub async fn clients(cx: &Context) -> Result<&GcpClients, DriverError> {
    cx.clients(ralph_core::driver::Clients::Gcp, || {
        GcpClients::connect(cx.cloud.gcp.clone().unwrap_or_default())
    })
    .await
}

pub struct GcpClients {
    pub project: String,
    pub region: String,
    pub endpoint: Option<String>,
    pub networks: google_cloud_compute_v1::client::Networks,
    pub subnetworks: google_cloud_compute_v1::client::Subnetworks,
    pub firewalls: google_cloud_compute_v1::client::Firewalls,
    pub routers: google_cloud_compute_v1::client::Routers,
    pub addresses: google_cloud_compute_v1::client::GlobalAddresses,
    pub security_policies: google_cloud_compute_v1::client::SecurityPolicies,
    /// The managed instance groups behind GKE node pools: a pool's size is
    /// its groups' target size (GKE never changes `initialNodeCount`).
    pub instance_groups: google_cloud_compute_v1::client::InstanceGroupManagers,
    pub global_ops: google_cloud_compute_v1::client::GlobalOperations,
    pub region_ops: google_cloud_compute_v1::client::RegionOperations,
    pub gke: google_cloud_container_v1::client::ClusterManager,
    pub sql: google_cloud_sql_v1::client::SqlInstancesService,
    pub sql_databases: google_cloud_sql_v1::client::SqlDatabasesService,
    pub sql_users: google_cloud_sql_v1::client::SqlUsersService,
    pub sql_ops: google_cloud_sql_v1::client::SqlOperationsService,
    pub sql_backup_runs: google_cloud_sql_v1::client::SqlBackupRunsService,
    pub redis: google_cloud_redis_v1::client::CloudRedis,
    pub secrets: google_cloud_secretmanager_v1::client::SecretManagerService,
    pub iam: google_cloud_iam_admin_v1::client::Iam,
    pub projects: google_cloud_resourcemanager_v3::client::Projects,
    /// Credentials for the REST calls without a client (built on first use).
    tokens: tokio::sync::OnceCell<google_cloud_auth::credentials::AccessTokenCredentials>,
}

/// A plain-http endpoint on this machine (an emulator): no credentials are
/// looked up or sent there, so nothing reaches the metadata server or
/// Google's token endpoint.
pub fn is_local(endpoint: &str) -> bool {
    url::Url::parse(endpoint).is_ok_and(|u| {
        u.scheme() == "http"
            && matches!(
                u.host_str(),
                Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
            )
    })
}

impl GcpClients {
    /// An OAuth access token from Application Default Credentials, for the
    /// APIs google-cloud-rust has no client for (Service Networking). The
    /// credentials are built once per run and keep their token until it
    /// nears its expiry.
    pub async fn access_token(&self) -> Result<String, DriverError> {
        let creds = self
            .tokens
            .get_or_try_init(|| async { default_credentials() })
            .await?;
        let token = creds
            .access_token()
            .await
            .map_err(|e| DriverError::new(format!("getting a Google access token: {e}")))?;
        Ok(token.token)
    }
}

/// Application Default Credentials with the cloud-platform scope (a service
/// account key, workload identity, or `gcloud auth application-default
/// login`); they hand out their cached token until shortly before it
/// expires, then fetch the next.
pub fn default_credentials(
) -> Result<google_cloud_auth::credentials::AccessTokenCredentials, DriverError> {
    google_cloud_auth::credentials::Builder::default()
        .with_scopes(["https://www.googleapis.com/auth/cloud-platform"])
        .build_access_token_credentials()
        .map_err(|e| DriverError::new(format!("Google Cloud credentials: {e}. Set up Application Default Credentials (`gcloud auth application-default login`, or GOOGLE_APPLICATION_CREDENTIALS)")))
}

macro_rules! build_client {
    ($ty:ty, $endpoint:expr) => {{
        let mut b = <$ty>::builder();
        if let Some(e) = $endpoint {
            b = b.with_endpoint(e.clone());
            if is_local(e) {
                b = b.with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
            }
        }
        b.build().await.map_err(|e| {
            DriverError::new(format!(
                "cannot set up the Google Cloud client ({}): {e}. Set up Application Default Credentials (`gcloud auth application-default login`, or GOOGLE_APPLICATION_CREDENTIALS)",
                stringify!($ty)
            ))
        })?
    }};
}

impl GcpClients {
    pub async fn connect(settings: GcpSettings) -> Result<GcpClients, DriverError> {
        let project = settings
            .project
            .clone()
            .or_else(|| std::env::var("GOOGLE_CLOUD_PROJECT").ok())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| DriverError::new("no Google Cloud project: set `cloud.gcp.project` in the stack, or GOOGLE_CLOUD_PROJECT"))?;
        let region = settings
            .region
            .clone()
            .or_else(|| std::env::var("GOOGLE_CLOUD_REGION").ok())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| DriverError::new("no Google Cloud region: set `cloud.gcp.region` in the stack, or GOOGLE_CLOUD_REGION"))?;
        let endpoint = ralph_core::remote::gcp_endpoint(&settings);
        let e = endpoint.as_ref();
        use google_cloud_compute_v1::client as compute;
        Ok(GcpClients {
            networks: build_client!(compute::Networks, e),
            subnetworks: build_client!(compute::Subnetworks, e),
            firewalls: build_client!(compute::Firewalls, e),
            routers: build_client!(compute::Routers, e),
            addresses: build_client!(compute::GlobalAddresses, e),
            security_policies: build_client!(compute::SecurityPolicies, e),
            instance_groups: build_client!(compute::InstanceGroupManagers, e),
            global_ops: build_client!(compute::GlobalOperations, e),
            region_ops: build_client!(compute::RegionOperations, e),
            gke: build_client!(google_cloud_container_v1::client::ClusterManager, e),
            sql: build_client!(google_cloud_sql_v1::client::SqlInstancesService, e),
            sql_databases: build_client!(google_cloud_sql_v1::client::SqlDatabasesService, e),
            sql_users: build_client!(google_cloud_sql_v1::client::SqlUsersService, e),
            sql_ops: build_client!(google_cloud_sql_v1::client::SqlOperationsService, e),
            sql_backup_runs: build_client!(google_cloud_sql_v1::client::SqlBackupRunsService, e),
            redis: build_client!(google_cloud_redis_v1::client::CloudRedis, e),
            secrets: build_client!(
                google_cloud_secretmanager_v1::client::SecretManagerService,
                e
            ),
            iam: build_client!(google_cloud_iam_admin_v1::client::Iam, e),
            projects: build_client!(google_cloud_resourcemanager_v3::client::Projects, e),
            tokens: tokio::sync::OnceCell::new(),
            project,
            region,
            endpoint,
        })
    }

    pub fn location_path(&self, location: &str) -> String {
        format!("projects/{}/locations/{location}", self.project)
    }
}

/// Where Google Cloud requests go, for messages.
fn endpoint(cx: &Context) -> String {
    cx.party_of("gcp.").1
}

/// The HTTP status of a failed call, if the service answered.
pub fn status_code(e: &google_cloud_gax::error::Error) -> Option<u16> {
    e.http_status_code().or_else(|| {
        use google_cloud_gax::error::rpc::Code;
        e.status().map(|s| match s.code {
            Code::NotFound => 404,
            Code::AlreadyExists | Code::Aborted => 409,
            Code::ResourceExhausted => 429,
            Code::Unavailable => 503,
            Code::InvalidArgument | Code::FailedPrecondition => 400,
            _ => 500,
        })
    })
}

pub fn is_not_found(e: &google_cloud_gax::error::Error) -> bool {
    status_code(e) == Some(404)
}

pub fn is_conflict(e: &google_cloud_gax::error::Error) -> bool {
    status_code(e) == Some(409)
}

/// A failed call as one line: what was called, the service's status and
/// message (field violations included), or what could not be reached.
pub fn api_error(cx: &Context, what: &str, e: &google_cloud_gax::error::Error) -> DriverError {
    let endpoint = endpoint(cx);
    if let Some(s) = e.status() {
        let mut text = format!("{what}: {:?}: {}", s.code, s.message);
        let mut disabled = false;
        for d in &s.details {
            match d {
                google_cloud_gax::error::rpc::StatusDetails::BadRequest(b) => {
                    for v in &b.field_violations {
                        text.push_str(&format!(" [{}: {}]", v.field, v.description));
                    }
                }
                google_cloud_gax::error::rpc::StatusDetails::ErrorInfo(i) => {
                    disabled |= i.reason == "SERVICE_DISABLED";
                }
                _ => {}
            }
        }
        let mut err = DriverError::new(text);
        err.api_disabled = disabled;
        return err;
    }
    if e.is_connect() || e.is_io() || e.is_timeout() {
        return DriverError::new(format!(
            "{what}: could not reach {endpoint}: {e}. Check cloud.gcp.endpoint / {ENDPOINT_ENV}, proxies and the network"
        ));
    }
    if e.is_authentication() {
        return DriverError::new(format!(
            "{what}: no usable Google Cloud credentials: {e}. Run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
        ));
    }
    DriverError::new(format!("{what}: {e}"))
}

/// Runs one API call, counted; throttling (429) and unavailability (503)
/// are retried with backoff and jitter, and a throttle halves the
/// service's concurrency (drivers::limits). The call, retries included,
/// is bounded by RALPH_DEPLOY_API_TIMEOUT (ralph_core::remote).
/// Where a long-running operation stands, as one read of it says.
pub enum OpState {
    /// Not finished; the status to show.
    Running(String),
    Done,
    /// Finished with an error: what the service said.
    Failed(String),
}

/// Waits for a long-running operation of any Google Cloud API: `read` reads
/// it once. `what` names it in progress lines and in the error when it
/// fails.
pub async fn wait_operation<F, Fut>(
    cx: &Context,
    address: &str,
    what: &str,
    timeout: Duration,
    read: F,
) -> Result<(), DriverError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<OpState, DriverError>>,
{
    cx.wait_until(address, what, timeout, || {
        let state = read();
        async move {
            match state.await? {
                OpState::Running(status) => Ok((None, status)),
                OpState::Done => Ok((Some(()), "DONE".into())),
                OpState::Failed(message) => {
                    Err(DriverError::new(format!("{what} failed: {message}")))
                }
            }
        }
    })
    .await
}

/// Whether what a listing found is this stack and environment's.
pub fn ours(cx: &Context, o: &Observed) -> bool {
    o.owner.as_ref() == Some(&cx.owner)
}

/// Every item of a paged listing. `page` is given the page token (empty
/// for the first page) and answers that page's items and the next token
/// (empty or none on the last page).
pub async fn every_page<T, F, Fut>(page: F) -> Result<Vec<T>, DriverError>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<String>), DriverError>>,
{
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = page(token).await?;
        out.extend(items);
        match next.filter(|t| !t.is_empty()) {
            Some(t) => token = t,
            None => return Ok(out),
        }
    }
}

pub async fn call<T, F, Fut>(
    cx: &Context,
    service: &str,
    what: &str,
    mut f: F,
) -> Result<T, DriverError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, google_cloud_gax::error::Error>>,
{
    cx.operations.fetch_add(1, Ordering::Relaxed);
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0;
    let deadline = tokio::time::Instant::now() + ralph_core::remote::api_timeout();
    loop {
        cx.requests.fetch_add(1, Ordering::Relaxed);
        let Ok(answer) = tokio::time::timeout_at(deadline, f()).await else {
            return Err(DriverError::new(ralph_core::remote::no_answer(
                ralph_core::remote::Party::Gcp,
                &endpoint(cx),
                what,
            )));
        };
        match answer {
            Ok(v) => return Ok(v),
            Err(e) => {
                let code = status_code(&e);
                let retryable = matches!(code, Some(429 | 503)) || e.is_connect();
                if code == Some(429) {
                    cx.limits.service(service).throttled();
                }
                attempt += 1;
                if !retryable || attempt >= 10 || cx.stop.load(Ordering::SeqCst) {
                    return Err(api_error(cx, what, &e));
                }
                let jitter = rand::random::<u64>() % (backoff.as_millis() as u64 + 1);
                let wake =
                    tokio::time::Instant::now() + backoff / 2 + Duration::from_millis(jitter / 2);
                if wake >= deadline {
                    return Err(api_error(cx, what, &e));
                }
                tokio::time::sleep_until(wake).await;
                backoff = (backoff * 2).min(Duration::from_secs(20));
            }
        }
    }
}

/// Like [`call`], but a 404 is `None`.
pub async fn call_opt<T, F, Fut>(
    cx: &Context,
    service: &str,
    what: &str,
    f: F,
) -> Result<Option<T>, DriverError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, google_cloud_gax::error::Error>>,
{
    call_unless(cx, service, what, 404, f).await
}

/// Like [`call`], but a 409 (the resource exists already: a run killed
/// after asking for it, or an operation still making it) is `None`.
pub async fn call_create<T, F, Fut>(
    cx: &Context,
    service: &str,
    what: &str,
    f: F,
) -> Result<Option<T>, DriverError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, google_cloud_gax::error::Error>>,
{
    call_unless(cx, service, what, 409, f).await
}

/// [`call`], with one HTTP status answered as `None`.
async fn call_unless<T, F, Fut>(
    cx: &Context,
    service: &str,
    what: &str,
    code: u16,
    mut f: F,
) -> Result<Option<T>, DriverError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, google_cloud_gax::error::Error>>,
{
    let hit = std::sync::atomic::AtomicBool::new(false);
    let out = call(cx, service, what, || {
        let fut = f();
        let hit = &hit;
        async move {
            match fut.await {
                Err(e) if status_code(&e) == Some(code) => {
                    hit.store(true, Ordering::SeqCst);
                    Err(e)
                }
                other => other,
            }
        }
    })
    .await;
    match out {
        Ok(v) => Ok(Some(v)),
        Err(_) if hit.load(Ordering::SeqCst) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A create answered "already exists": it is this resource when it carries
/// this stack's ownership for this address (a run killed after asking for
/// it), and someone else's otherwise.
pub fn take_over(
    cx: &Context,
    address: &str,
    what: &str,
    found: Option<Observed>,
) -> Result<Observed, DriverError> {
    match found {
        Some(o)
            if o.owner.as_ref() == Some(&cx.owner) && o.address.as_deref() == Some(address) =>
        {
            Ok(o)
        }
        Some(_) => Err(DriverError::new(format!(
            "{what} exists already and is not this resource's (other or no ownership labels): choose another name, or `ralph-deploy import` it"
        ))),
        None => Err(DriverError::new(format!(
            "{what} exists already, but cannot be read"
        ))),
    }
}

/// Reads `id` with `read` until it reports `ready: true`, showing its
/// `status` while waiting; a resource that disappears fails the wait.
pub async fn wait_ready<F, Fut>(
    cx: &Context,
    address: &str,
    id: &str,
    timeout: std::time::Duration,
    read: F,
) -> Result<Observed, DriverError>
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<Option<Observed>, DriverError>>,
{
    cx.wait_until(address, &format!("{id} to be ready"), timeout, || {
        let fut = read();
        async move {
            let o = fut
                .await?
                .ok_or_else(|| DriverError::new(format!("{id} is gone")))?;
            let status = o
                .attrs
                .get(ralph_core::driver::STATUS_ATTR)
                .and_then(Json::as_str)
                .unwrap_or_default()
                .to_string();
            let ready = o.attrs.get(ralph_core::driver::READY_ATTR) == Some(&Json::Bool(true));
            Ok((ready.then_some(o), status))
        }
    })
    .await
}

/// A typed request message from JSON in the API's field names.
pub fn message<T: serde::de::DeserializeOwned>(what: &str, v: Json) -> Result<T, DriverError> {
    serde_json::from_value(v)
        .map_err(|e| DriverError::new(format!("building the {what} request: {e}")))
}

/// A typed answer as JSON in the API's field names.
pub fn json<T: serde::Serialize>(v: &T) -> Json {
    serde_json::to_value(v).unwrap_or(Json::Null)
}

/// A label value: lowercase letters, digits and `_` as they are, anything
/// else as `-` and two hex digits (Google allows only [a-z0-9_-] in labels).
pub fn label_value(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
            out.push(c);
        } else {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("-{b:02x}"));
            }
        }
    }
    out
}

/// The reverse of [`label_value`]; `None` when it is not one.
pub fn label_text(s: &str) -> Option<String> {
    let mut bytes = Vec::new();
    let mut it = s.bytes();
    while let Some(b) = it.next() {
        if b == b'-' {
            let hi = it.next()?;
            let lo = it.next()?;
            bytes.push(u8::from_str_radix(std::str::from_utf8(&[hi, lo]).ok()?, 16).ok()?);
        } else {
            bytes.push(b);
        }
    }
    String::from_utf8(bytes).ok()
}

/// The ownership labels of a resource, plus the user's.
pub fn labels(owner: &Owner, address: &str, user: Option<&Json>) -> Map<String, Json> {
    let mut m = Map::new();
    if let Some(Json::Object(u)) = user {
        for (k, v) in u {
            m.insert(k.clone(), v.clone());
        }
    }
    m.insert(LABEL_STACK.into(), Json::String(label_value(&owner.stack)));
    m.insert(
        LABEL_ENVIRONMENT.into(),
        Json::String(label_value(&owner.environment)),
    );
    m.insert(LABEL_ADDRESS.into(), Json::String(label_value(address)));
    m
}

/// The label filter that finds an owner's resources (Secret Manager's and
/// Cloud SQL's filter syntax; `prefix` is `labels.` or `settings.userLabels.`).
pub fn label_filter(owner: &Owner, prefix: &str) -> String {
    owner_filter(owner, prefix, [LABEL_STACK, LABEL_ENVIRONMENT])
}

/// The filter for an owner's stack and environment under other label keys
/// (a retired instance's, say).
pub fn owner_filter(owner: &Owner, prefix: &str, [stack, environment]: [&str; 2]) -> String {
    format!(
        "{prefix}{stack}:{} AND {prefix}{environment}:{}",
        label_value(&owner.stack),
        label_value(&owner.environment)
    )
}

/// Owner and address from a label map; the user's labels without ours.
pub fn from_labels(labels: Option<&Json>) -> (Option<Owner>, Option<String>, Map<String, Json>) {
    let empty = Map::new();
    let m = labels.and_then(Json::as_object).unwrap_or(&empty);
    let get = |k: &str| m.get(k).and_then(Json::as_str).and_then(label_text);
    let owner = match (get(LABEL_STACK), get(LABEL_ENVIRONMENT)) {
        (Some(stack), Some(environment)) => Some(Owner { stack, environment }),
        _ => None,
    };
    let user = m
        .iter()
        .filter(|(k, _)| !k.starts_with("ralph-deploy-"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    (owner, get(LABEL_ADDRESS), user)
}

/// Compute networking resources carry no labels: ownership goes at the end
/// of the description, and refresh lists with a filter on it.
const MARKER: &str = "ralph-deploy:stack=";

pub fn describe(owner: &Owner, address: &str, description: &str) -> String {
    let mark = format!(
        "{MARKER}{},environment={},address={address}",
        owner.stack, owner.environment
    );
    if description.is_empty() {
        mark
    } else {
        format!("{description} | {mark}")
    }
}

/// Compute's list filter for an owner's description marker (RE2).
pub fn description_filter(owner: &Owner) -> String {
    let esc = |s: &str| {
        s.chars()
            .flat_map(|c| {
                if r"\.+*?()|[]{}^$".contains(c) {
                    vec!['\\', c]
                } else {
                    vec![c]
                }
            })
            .collect::<String>()
    };
    format!(
        "description eq \".*{}{},environment={},address=.*\"",
        MARKER,
        esc(&owner.stack),
        esc(&owner.environment)
    )
}

/// Owner, address and the user's description from a described resource.
pub fn from_description(d: &str) -> (Option<Owner>, Option<String>, String) {
    let (user, mark) = match d.rfind(MARKER) {
        Some(i) => (
            d[..i].trim_end_matches(" | ").trim_end(),
            &d[i + MARKER.len()..],
        ),
        None => return (None, None, d.to_string()),
    };
    let mut stack = None;
    let mut environment = None;
    let mut address = None;
    if let Some((s, rest)) = mark.split_once(",environment=") {
        stack = Some(s.to_string());
        if let Some((e, a)) = rest.split_once(",address=") {
            environment = Some(e.to_string());
            address = Some(a.to_string());
        }
    }
    let owner = match (stack, environment) {
        (Some(stack), Some(environment)) => Some(Owner { stack, environment }),
        _ => None,
    };
    (owner, address, user.to_string())
}

/// An observed resource from its owner, address, id and attributes.
pub fn observed(
    id: impl Into<String>,
    owner: Option<Owner>,
    address: Option<String>,
    attrs: Vec<(&str, Json)>,
) -> Observed {
    Observed {
        address,
        owner,
        id: id.into(),
        attrs: attrs.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
    }
}

/// The last path segment of a resource URL or name.
pub fn short_name(link: &str) -> &str {
    link.rsplit('/').next().unwrap_or(link)
}

/// A string field of an answer, `null` when absent.
pub fn s(v: &Json, path: &str) -> Json {
    let mut cur = v;
    for part in path.split('.') {
        match cur.get(part) {
            Some(next) => cur = next,
            None => return Json::Null,
        }
    }
    cur.clone()
}

/// String keys to strings (labels) from an answer's field.
pub fn string_map(v: &Json) -> HashMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), ralph_core::model::json_to_text(v)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages are read in order, each with the token the one before gave,
    /// until a page gives none (or an empty one).
    #[tokio::test]
    async fn every_page_follows_the_tokens_to_the_end() {
        let asked = std::sync::Mutex::new(Vec::new());
        let items = every_page(|token| {
            asked.lock().unwrap().push(token.clone());
            async move {
                Ok(match token.as_str() {
                    "" => (vec![1, 2], Some("b".to_string())),
                    "b" => (vec![3], Some("c".to_string())),
                    _ => (vec![4], Some(String::new())),
                })
            }
        })
        .await
        .unwrap();
        assert_eq!(items, vec![1, 2, 3, 4]);
        assert_eq!(*asked.lock().unwrap(), vec!["", "b", "c"]);
        let failed = every_page::<i32, _, _>(|_| async { Err(DriverError::new("denied")) }).await;
        assert_eq!(failed.unwrap_err().message, "denied");
    }

    #[test]
    fn label_values_round_trip() {
        for s in [
            "ralph",
            "app.orchestrator",
            "private[\"a\"]",
            "Prod-1",
            "x_y",
        ] {
            let v = label_value(s);
            assert!(v
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-'));
            assert_eq!(label_text(&v).as_deref(), Some(s));
        }
    }

    #[test]
    fn description_marker_round_trips() {
        let owner = Owner {
            stack: "ralph".into(),
            environment: "production".into(),
        };
        let d = describe(&owner, "private[\"a\"]", "the nodes' subnet");
        let (o, a, user) = from_description(&d);
        assert_eq!(o, Some(owner.clone()));
        assert_eq!(a.as_deref(), Some("private[\"a\"]"));
        assert_eq!(user, "the nodes' subnet");
        assert_eq!(from_description("hand made").0, None);
        assert!(description_filter(&owner)
            .contains("ralph-deploy:stack=ralph,environment=production,address=.*"));
    }
}

/// Every Google Cloud kind.
pub fn drivers() -> Vec<Box<dyn ralph_core::driver::Driver>> {
    let mut d = compute::drivers();
    d.extend(gke::drivers());
    d.extend(sql::drivers());
    d.push(Box::new(redis::RedisInstance));
    d.push(Box::new(secret::Secret));
    d.push(Box::new(security_policy::SecurityPolicy));
    d.push(Box::new(service_networking::ServiceNetworkingConnection));
    d.push(Box::new(project_service::ProjectService));
    d.extend(logging::drivers());
    d.push(Box::new(storage::StorageBucket));
    d.extend(iam::drivers());
    d
}
