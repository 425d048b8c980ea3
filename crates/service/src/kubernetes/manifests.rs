//! `kubernetes.manifests`: a set of Kubernetes objects from YAML files
//! (cluster add-ons: an ingress controller, cert-manager and its
//! ClusterIssuer, metrics-server, Prometheus), applied server-side in three
//! phases: namespaces and CRDs (then waiting until the CRDs are
//! established), the built-in kinds (then waiting until Deployments,
//! StatefulSets and DaemonSets are available, so webhooks answer), and last
//! the custom resources. Every object carries the stack's ownership labels;
//! objects the set no longer has are pruned; delete removes everything in
//! the reverse order and waits until each object is gone, which includes
//! Services whose cloud load balancer a controller still has to remove.
//!
//! Files ending in `.j2` are minijinja templates over `values` (an ACME
//! email, a host name); the others are used as they are. An upstream
//! release's manifest can be named by URL, pinned by its SHA-256
//! (`ralph_core::download`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde::Deserialize;
use serde_json::{Map, Value as Json};

use super::render::{LABEL_ENVIRONMENT, LABEL_RESOURCE, LABEL_STACK, MANAGER};
use super::{connect, count, is_not_found, kube_error};
use ralph_core::driver::{
    Context, Delete, Desired, Driver, DriverError, Known, Observed, Owner, Update,
};
use ralph_core::model::kinds::{Attr, Field, KindSchema, Ty};

/// URLs in `files` must be pinned (and https, but for this machine).
fn sources(v: &Json) -> Result<(), String> {
    for entry in v.as_array().into_iter().flatten().filter_map(Json::as_str) {
        if ralph_core::download::is_url(entry) {
            ralph_core::download::parse(entry)?;
        }
    }
    Ok(())
}

fn computed(_: &Json) -> Result<(), String> {
    Err("computed from `files`; do not set it".into())
}

static SCHEMA: KindSchema = KindSchema::new("kubernetes.manifests", "kubernetes", "Kubernetes objects from YAML files (cluster add-ons), applied server-side: namespaces and CRDs first, custom resources last, waited on, pruned when removed.")
    .fields(&super::with_cluster_fields![
        Field::new("files", Ty::List(&Ty::String), "YAML files or directories (every .yaml, .yml and .j2 file in them, in name order), relative to the stack file, or an upstream release's manifest by URL pinned to its SHA-256 (`https://.../deploy.yaml#sha256=...`, downloaded once into the cache and refused when it does not match)").required().check(sources),
        Field::new("values", Ty::StringMap, "what `.j2` files can use, as `{{ values.acme_email }}`").default("{}"),
        Field::new("wait", Ty::Bool, "wait until CRDs are established and Deployments, StatefulSets and DaemonSets are available").default("true"),
        Field::new("objects", Ty::Set(&Ty::String), "computed: every object, as `apiVersion Kind namespace/name`").check(computed),
        Field::new("digest", Ty::String, "computed: a digest of every object's content (a change re-applies the set)").check(computed),
    ])
    .attrs(&[Attr::string("id", "stack/environment/address")]);

pub struct Manifests;

/// One object of the set.
#[derive(Debug, Clone)]
struct Object {
    api_version: String,
    kind: String,
    namespace: String,
    name: String,
    body: Json,
}

impl Object {
    fn id(&self) -> String {
        if self.namespace.is_empty() {
            format!("{} {} {}", self.api_version, self.kind, self.name)
        } else {
            format!(
                "{} {} {}/{}",
                self.api_version, self.kind, self.namespace, self.name
            )
        }
    }

    /// 0: namespaces and CRDs; 1: built-in kinds; 2: custom resources.
    fn phase(&self) -> u8 {
        phase(&self.api_version, &self.kind)
    }
}

fn phase(api_version: &str, kind: &str) -> u8 {
    if kind == "Namespace" || kind == "CustomResourceDefinition" {
        return 0;
    }
    let group = api_version.split_once('/').map(|x| x.0).unwrap_or("");
    // The core group, groups without a dot (apps, batch, policy, ...) and
    // the *.k8s.io groups are Kubernetes' own.
    if group.is_empty() || !group.contains('.') || group.ends_with(".k8s.io") {
        1
    } else {
        2
    }
}

/// `apiVersion Kind namespace/name` back into its parts.
fn parse_id(id: &str) -> Option<(String, String, String, String)> {
    let mut parts = id.splitn(3, ' ');
    let api_version = parts.next()?.to_string();
    let kind = parts.next()?.to_string();
    let rest = parts.next()?;
    let (namespace, name) = match rest.split_once('/') {
        Some((ns, n)) => (ns.to_string(), n.to_string()),
        None => (String::new(), rest.to_string()),
    };
    Some((api_version, kind, namespace, name))
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = Path::new(p);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// The files in order: each named file, or a directory's manifests by name.
fn manifest_files(base: &Path, props: &Map<String, Json>) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for f in props
        .get("files")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(Json::as_str)
    {
        if ralph_core::download::is_url(f) {
            out.push(ralph_core::download::fetch(&ralph_core::download::parse(
                f,
            )?)?);
            continue;
        }
        let path = resolve(base, f);
        if path.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(&path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    let n = p.to_string_lossy();
                    n.ends_with(".yaml") || n.ends_with(".yml") || n.ends_with(".j2")
                })
                .collect();
            in_dir.sort();
            if in_dir.is_empty() {
                return Err(format!(
                    "{} has no .yaml, .yml or .j2 files",
                    path.display()
                ));
            }
            out.extend(in_dir);
        } else if path.is_file() {
            out.push(path);
        } else {
            return Err(format!(
                "{} does not exist (paths are relative to the stack file)",
                path.display()
            ));
        }
    }
    Ok(out)
}

/// Every object of the files, in file order, with `values` rendered into
/// the `.j2` files.
fn load(base: &Path, props: &Map<String, Json>) -> Result<Vec<Object>, String> {
    let values: BTreeMap<String, String> = props
        .get("values")
        .and_then(Json::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::new();
    let mut seen = BTreeSet::new();
    for path in manifest_files(base, props)? {
        let raw = ralph_core::files::read_text_bounded(&path, 64 << 20)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let text = if path.to_string_lossy().ends_with(".j2") {
            let mut env = minijinja::Environment::new();
            env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
            env.render_str(&raw, minijinja::context! { values => &values })
                .map_err(|e| format!("{}: {e}", path.display()))?
        } else {
            raw
        };
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let body = Json::deserialize(doc)
                .map_err(|e| format!("{} (document {}): {e}", path.display(), i + 1))?;
            if body.is_null() {
                continue;
            }
            let s = |k: &str| body[k].as_str().unwrap_or_default().to_string();
            let (api_version, kind) = (s("apiVersion"), s("kind"));
            let name = body["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if api_version.is_empty() || kind.is_empty() || name.is_empty() {
                return Err(format!(
                    "{} (document {}): every object needs apiVersion, kind and metadata.name",
                    path.display(),
                    i + 1
                ));
            }
            if kind == "List" {
                return Err(format!(
                    "{} (document {}): a List; write its items as separate documents",
                    path.display(),
                    i + 1
                ));
            }
            let namespace = body["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let o = Object {
                api_version,
                kind,
                namespace,
                name,
                body,
            };
            if !seen.insert(o.id()) {
                return Err(format!("{}: {} appears twice", path.display(), o.id()));
            }
            out.push(o);
        }
    }
    if out.is_empty() {
        return Err("the files hold no objects".into());
    }
    Ok(out)
}

/// The object ids a resource recorded (its `objects`).
fn recorded_ids(props: &Map<String, Json>) -> Vec<String> {
    props
        .get("objects")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect()
}

fn labels(owner: &Owner, address: &str) -> [(String, String); 3] {
    [
        (LABEL_STACK.to_string(), owner.stack.clone()),
        (LABEL_ENVIRONMENT.to_string(), owner.environment.clone()),
        (
            LABEL_RESOURCE.to_string(),
            ralph_core::model::address::to_label(address),
        ),
    ]
}

fn selector(owner: &Owner, address: &str) -> String {
    labels(owner, address)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// What the API server calls this kind, and whether it is namespaced: one
/// discovery request per group version, remembered for the run.
struct Discovery<'a> {
    client: &'a kube::Client,
    cx: &'a Context,
    known: BTreeMap<(String, String), Option<(ApiResource, ApiCapabilities)>>,
}

impl Discovery<'_> {
    async fn resource(
        &mut self,
        api_version: &str,
        kind: &str,
    ) -> Result<Option<(ApiResource, ApiCapabilities)>, DriverError> {
        let key = (api_version.to_string(), kind.to_string());
        if let Some(r) = self.known.get(&key) {
            return Ok(r.clone());
        }
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        count(self.cx);
        let found = match kube::discovery::pinned_kind(
            self.client,
            &GroupVersionKind::gvk(group, version, kind),
        )
        .await
        {
            Ok(r) => Some(r),
            Err(kube::Error::Api(e)) if e.code == 404 => None,
            Err(kube::Error::Discovery(_)) => None,
            Err(e) => return Err(kube_error(&format!("discovering {api_version} {kind}"), e)),
        };
        self.known.insert(key, found.clone());
        Ok(found)
    }

    async fn api(
        &mut self,
        api_version: &str,
        kind: &str,
        namespace: &str,
    ) -> Result<Api<DynamicObject>, DriverError> {
        let (ar, caps) = self.resource(api_version, kind).await?.ok_or_else(|| {
            DriverError::new(format!(
                "the cluster does not serve {api_version} {kind} (is the CRD that defines it in the files, before it?)"
            ))
        })?;
        Ok(match caps.scope {
            Scope::Namespaced => Api::namespaced_with(
                self.client.clone(),
                if namespace.is_empty() {
                    "default"
                } else {
                    namespace
                },
                &ar,
            ),
            Scope::Cluster => Api::all_with(self.client.clone(), &ar),
        })
    }
}

/// The objects of the set the cluster has (found by the ownership labels),
/// among the kinds `ids` names.
async fn observe(
    cx: &Context,
    props: &Map<String, Json>,
    ids: &[String],
    owner: &Owner,
    address: &str,
) -> Result<BTreeSet<String>, DriverError> {
    let client = connect(cx, props).await?;
    let mut d = Discovery {
        client: &client,
        cx,
        known: BTreeMap::new(),
    };
    let kinds: BTreeSet<(String, String)> = ids
        .iter()
        .filter_map(|id| parse_id(id).map(|(v, k, _, _)| (v, k)))
        .collect();
    let mut found = BTreeSet::new();
    let lp = ListParams::default().labels(&selector(owner, address));
    for (api_version, kind) in kinds {
        let Some((ar, caps)) = d.resource(&api_version, &kind).await? else {
            continue;
        };
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
        count(cx);
        let list = match api.list(&lp).await {
            Ok(l) => l,
            Err(e) if is_not_found(&e) => continue,
            Err(e) => return Err(kube_error(&format!("listing {kind}"), e)),
        };
        for o in list.items {
            let namespace = match caps.scope {
                Scope::Namespaced => o.metadata.namespace.clone().unwrap_or_default(),
                Scope::Cluster => String::new(),
            };
            found.insert(
                Object {
                    api_version: api_version.clone(),
                    kind: kind.clone(),
                    namespace,
                    name: o.metadata.name.clone().unwrap_or_default(),
                    body: Json::Null,
                }
                .id(),
            );
        }
    }
    Ok(found)
}

fn observed(
    address: &str,
    owner: &Owner,
    props: &Map<String, Json>,
    objects: BTreeSet<String>,
) -> Observed {
    let id = format!("{}/{}/{}", owner.stack, owner.environment, address);
    // How to reach the cluster, so that delete can from what refresh saw.
    let mut attrs: Map<String, Json> = props
        .iter()
        .filter(|(k, _)| super::CLUSTER_FIELDS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    attrs.insert("id".into(), Json::String(id.clone()));
    attrs.insert(
        "objects".into(),
        Json::Array(objects.into_iter().map(Json::String).collect()),
    );
    Observed {
        address: None,
        owner: None,
        id,
        attrs,
    }
}

async fn crd_established(
    client: &kube::Client,
    cx: &Context,
    name: &str,
) -> Result<bool, DriverError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    count(cx);
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get_opt(name)
        .await
        .map_err(|e| kube_error(&format!("reading CRD {name}"), e))?;
    Ok(crd
        .and_then(|c| c.status)
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True"))
}

/// Whether a workload is available; None when it is not a workload.
async fn workload_available(
    client: &kube::Client,
    cx: &Context,
    o: &Object,
) -> Result<Option<bool>, DriverError> {
    let ns = if o.namespace.is_empty() {
        "default"
    } else {
        &o.namespace
    };
    let err = |e| kube_error(&format!("reading {} {ns}/{}", o.kind, o.name), e);
    let ready = match (o.api_version.as_str(), o.kind.as_str()) {
        ("apps/v1", "Deployment") => {
            count(cx);
            let d = Api::<Deployment>::namespaced(client.clone(), ns)
                .get(&o.name)
                .await
                .map_err(err)?;
            let st = d.status.unwrap_or_default();
            st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
                && st.available_replicas.unwrap_or(0) >= d.spec.replicas.unwrap_or(1)
                && st.updated_replicas.unwrap_or(0) >= d.spec.replicas.unwrap_or(1)
        }
        ("apps/v1", "StatefulSet") => {
            count(cx);
            let s = Api::<StatefulSet>::namespaced(client.clone(), ns)
                .get(&o.name)
                .await
                .map_err(err)?;
            let st = s.status.unwrap_or_default();
            st.ready_replicas.unwrap_or(0) >= s.spec.replicas.unwrap_or(1)
        }
        ("apps/v1", "DaemonSet") => {
            count(cx);
            let s = Api::<DaemonSet>::namespaced(client.clone(), ns)
                .get(&o.name)
                .await
                .map_err(err)?;
            let st = s.status.unwrap_or_default();
            st.number_unavailable.unwrap_or(0) == 0
                && st.updated_number_scheduled.unwrap_or(0) >= st.desired_number_scheduled
        }
        _ => return Ok(None),
    };
    Ok(Some(ready))
}

/// Applies the set in its three phases and prunes what `before` had that
/// the set no longer has.
async fn apply_set(
    cx: &Context,
    want: &Desired<'_>,
    before: &BTreeSet<String>,
    timeout: Duration,
) -> Result<Observed, DriverError> {
    let objects = load(&cx.base_dir, want.props).map_err(DriverError::new)?;
    let client = connect(cx, want.props).await?;
    let wait = want.bool("wait").unwrap_or(true);
    let mut d = Discovery {
        client: &client,
        cx,
        known: BTreeMap::new(),
    };
    let own = labels(want.owner, want.address);
    for phase in 0..=2u8 {
        let batch: Vec<&Object> = objects.iter().filter(|o| o.phase() == phase).collect();
        for o in &batch {
            let mut body = o.body.clone();
            let meta = body["metadata"].as_object_mut().ok_or_else(|| {
                DriverError::new(format!("{}: metadata is not a mapping", o.id()))
            })?;
            let labels = meta
                .entry("labels")
                .or_insert_with(|| Json::Object(Map::new()));
            let labels = labels.as_object_mut().ok_or_else(|| {
                DriverError::new(format!("{}: metadata.labels is not a mapping", o.id()))
            })?;
            for (k, v) in &own {
                labels.insert(k.clone(), Json::String(v.clone()));
            }
            let api = d.api(&o.api_version, &o.kind, &o.namespace).await?;
            let dynamic: DynamicObject = serde_json::from_value(body)
                .map_err(|e| DriverError::new(format!("{}: {e}", o.id())))?;
            count(cx);
            api.patch(
                &o.name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&dynamic),
            )
            .await
            .map_err(|e| kube_error(&format!("applying {}", o.id()), e))?;
        }
        if !wait {
            continue;
        }
        for o in &batch {
            if o.kind == "CustomResourceDefinition" {
                cx.wait_until(
                    want.address,
                    &format!("CRD {}", o.name),
                    timeout,
                    || async {
                        Ok(if crd_established(&client, cx, &o.name).await? {
                            (Some(()), "established".to_string())
                        } else {
                            (None, format!("CRD {} not established yet", o.name))
                        })
                    },
                )
                .await?;
            }
        }
        for o in &batch {
            if workload_available(&client, cx, o).await?.is_none() {
                continue;
            }
            cx.wait_until(
                want.address,
                &format!("{} {}", o.kind, o.name),
                timeout,
                || async {
                    Ok(match workload_available(&client, cx, o).await? {
                        Some(true) => (Some(()), "available".to_string()),
                        _ => (None, format!("{} {} not available yet", o.kind, o.name)),
                    })
                },
            )
            .await?;
        }
        // Discovery of custom kinds only after their CRDs exist.
        if phase == 0 {
            d.known.clear();
        }
    }
    let now: BTreeSet<String> = objects.iter().map(Object::id).collect();
    let gone: Vec<String> = before.difference(&now).cloned().collect();
    if !gone.is_empty() {
        delete_objects(cx, &client, want.address, &gone, timeout).await?;
        for id in &gone {
            cx.reporter.report(ralph_core::events::Event::Warning {
                message: format!(
                    "{}: pruned {id}, which the files no longer have",
                    want.address
                ),
            });
        }
    }
    Ok(observed(want.address, want.owner, want.props, now))
}

/// Deletes objects (custom resources first, namespaces and CRDs last) and
/// waits until each is gone: finalizers done, load balancers released.
async fn delete_objects(
    cx: &Context,
    client: &kube::Client,
    address: &str,
    ids: &[String],
    timeout: Duration,
) -> Result<(), DriverError> {
    let mut parsed: Vec<(u8, String, String, String, String)> = ids
        .iter()
        .filter_map(|id| parse_id(id).map(|(v, k, ns, n)| (phase(&v, &k), v, k, ns, n)))
        .collect();
    parsed.sort_by(|a, b| b.0.cmp(&a.0));
    let mut d = Discovery {
        client,
        cx,
        known: BTreeMap::new(),
    };
    for phase in [2u8, 1, 0] {
        let batch: Vec<_> = parsed.iter().filter(|p| p.0 == phase).collect();
        let mut pending = Vec::new();
        for (_, v, k, ns, n) in &batch {
            if d.resource(v, k).await?.is_none() {
                continue; // its CRD is gone, and the object with it
            }
            let api = d.api(v, k, ns).await?;
            count(cx);
            match api.delete(n, &DeleteParams::background()).await {
                Ok(_) => pending.push((api, format!("{k} {n}"), n.clone())),
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(kube_error(&format!("deleting {k} {n}"), e)),
            }
        }
        for (api, what, name) in &pending {
            cx.wait_until(
                address,
                &format!("{what} to be deleted"),
                timeout,
                || async {
                    count(cx);
                    match api.get_opt(name).await {
                        Ok(None) => Ok((Some(()), "deleted".to_string())),
                        Ok(Some(_)) => Ok((None, format!("{what} is being deleted"))),
                        Err(e) => Err(kube_error(&format!("reading {what}"), e)),
                    }
                },
            )
            .await?;
        }
    }
    Ok(())
}

/// `status`: every recorded object is there, and the workloads among them
/// are available. Returns (healthy, what was found).
pub async fn health(
    cx: &Context,
    props: &Map<String, Json>,
    address: &str,
) -> Result<(bool, String), DriverError> {
    let ids: Vec<String> = recorded_ids(props);
    let found = observe(cx, props, &ids, &cx.owner, address).await?;
    let missing: Vec<&String> = ids.iter().filter(|i| !found.contains(*i)).collect();
    let client = connect(cx, props).await?;
    let mut unavailable = Vec::new();
    let mut workloads = 0;
    for id in &ids {
        let Some((api_version, kind, namespace, name)) = parse_id(id) else {
            continue;
        };
        if missing.contains(&id) {
            continue;
        }
        let o = Object {
            api_version,
            kind,
            namespace,
            name,
            body: Json::Null,
        };
        match workload_available(&client, cx, &o).await? {
            Some(true) => workloads += 1,
            Some(false) => unavailable.push(id.clone()),
            None => {}
        }
    }
    if missing.is_empty() && unavailable.is_empty() {
        return Ok((
            true,
            format!(
                "{} objects present, {workloads} workloads available",
                ids.len()
            ),
        ));
    }
    let mut why = Vec::new();
    if !missing.is_empty() {
        why.push(format!(
            "missing: {}",
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !unavailable.is_empty() {
        why.push(format!("not available: {}", unavailable.join(", ")));
    }
    Ok((false, why.join("; ")))
}

#[async_trait::async_trait]
impl Driver for Manifests {
    fn roles(&self) -> &'static [ralph_core::driver::capability::Role] {
        &[ralph_core::driver::capability::Role::AddOns]
    }

    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    fn normalize(&self, base_dir: &Path, props: &mut Map<String, Json>) -> Result<(), String> {
        use sha2::Digest;
        let objects = load(base_dir, props)?;
        let mut digest = sha2::Sha256::new();
        for o in &objects {
            digest.update(
                serde_json::to_string(&o.body)
                    .unwrap_or_default()
                    .as_bytes(),
            );
            digest.update(b"\n");
        }
        props.insert(
            "objects".into(),
            Json::Array(objects.iter().map(|o| Json::String(o.id())).collect()),
        );
        props.insert(
            "digest".into(),
            Json::String(hex::encode(digest.finalize())[..16].to_string()),
        );
        Ok(())
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let mut out = Vec::new();
        for k in known.iter().filter(|k| !k.inputs.is_empty()) {
            let Some(address) = k.id.splitn(3, '/').nth(2) else {
                continue;
            };
            let ids: Vec<String> = recorded_ids(&k.inputs);
            let found = observe(cx, &k.inputs, &ids, &cx.owner, address).await?;
            let mut o = observed(address, &cx.owner, &k.inputs, found);
            o.id = k.id.clone();
            out.push(o);
        }
        Ok(out)
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let t = want.timeouts.create_or(Duration::from_secs(600));
        apply_set(cx, want, &BTreeSet::new(), t).await
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        let before: BTreeSet<String> = recorded_ids(&have.attrs).into_iter().collect();
        let t = want.timeouts.update_or(Duration::from_secs(600));
        apply_set(cx, want, &before, t).await
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let ids: Vec<String> = recorded_ids(&d.have.attrs);
        if ids.is_empty() {
            return Ok(());
        }
        let client = connect(cx, &d.have.attrs).await?;
        let address = d
            .have
            .id
            .splitn(3, '/')
            .nth(2)
            .unwrap_or(&d.have.id)
            .to_string();
        delete_objects(
            cx,
            &client,
            &address,
            &ids,
            d.timeouts.delete.unwrap_or(Duration::from_secs(900)),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_put_crds_first_and_custom_resources_last() {
        assert_eq!(phase("v1", "Namespace"), 0);
        assert_eq!(
            phase("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
            0
        );
        assert_eq!(phase("apps/v1", "Deployment"), 1);
        assert_eq!(phase("networking.k8s.io/v1", "Ingress"), 1);
        assert_eq!(
            phase(
                "admissionregistration.k8s.io/v1",
                "ValidatingWebhookConfiguration"
            ),
            1
        );
        assert_eq!(phase("cert-manager.io/v1", "ClusterIssuer"), 2);
        assert_eq!(phase("monitoring.coreos.com/v1", "ServiceMonitor"), 2);
        for id in ["apps/v1 Deployment web/api", "v1 Namespace web"] {
            let (v, k, ns, n) = parse_id(id).unwrap();
            let o = Object {
                api_version: v,
                kind: k,
                namespace: ns,
                name: n,
                body: Json::Null,
            };
            assert_eq!(o.id(), id);
        }
    }
}
