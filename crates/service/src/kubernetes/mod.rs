//! Kubernetes: how a stack reaches a cluster (a kubeconfig and context, or
//! an EKS cluster's endpoint, CA and a token made as `aws eks get-token`
//! makes it), which API versions the cluster serves (discovery), and the
//! operations the orchestrator kind is built from: server-side apply with the
//! field manager `ralph-deploy`, and pruning by ownership labels.

pub mod forward;
pub mod health;
pub mod manifests;
pub mod orchestrator;
pub mod render;
pub mod token;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::Ordering;

use base64::Engine;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use serde_json::{Map, Value as Json};

use ralph_core::driver::{Context, DriverError};
use render::{ApiVersions, Rendered, MANAGER};

/// Counts one API request (the summaries report them with the clouds').
fn count(cx: &Context) {
    cx.requests.fetch_add(1, Ordering::Relaxed);
    cx.operations.fetch_add(1, Ordering::Relaxed);
}

/// A wake-up for each change of the object `name` that `api` sees, from a
/// watch (one request, held open) instead of polls: kept open again when
/// the server ends it or the connection drops, a second later after an
/// error. Each (re)opening counts as a request.
fn changes<K>(cx: &Context, api: Api<K>, name: &str) -> impl futures::Stream<Item = ()> + Send
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    use futures::StreamExt;
    use kube::api::{WatchEvent, WatchParams};
    type Events<K> = futures::stream::BoxStream<'static, kube::Result<WatchEvent<K>>>;
    // Under the client's read timeout: a quiet watch ends on the server's
    // side first, and bookmarks keep it from looking idle.
    let held = ralph_core::remote::api_timeout()
        .as_secs()
        .saturating_sub(5)
        .clamp(1, 240) as u32;
    let params = WatchParams::default()
        .fields(&format!("metadata.name={name}"))
        .timeout(held);
    let (requests, operations) = (cx.requests.clone(), cx.operations.clone());
    futures::stream::unfold(None::<Events<K>>, move |mut open| {
        let (api, params) = (api.clone(), params.clone());
        let (requests, operations) = (requests.clone(), operations.clone());
        async move {
            loop {
                let Some(events) = open.as_mut() else {
                    requests.fetch_add(1, Ordering::Relaxed);
                    operations.fetch_add(1, Ordering::Relaxed);
                    // From "0": the object as it is now comes first, which
                    // only costs one extra look.
                    match api.watch(&params, "0").await {
                        Ok(events) => open = Some(events.boxed()),
                        Err(_) => tokio::time::sleep(std::time::Duration::from_secs(1)).await,
                    }
                    continue;
                };
                match events.next().await {
                    Some(Ok(
                        WatchEvent::Added(_) | WatchEvent::Modified(_) | WatchEvent::Deleted(_),
                    )) => return Some(((), open)),
                    Some(Ok(WatchEvent::Bookmark(_))) => {}
                    Some(Ok(WatchEvent::Error(_)) | Err(_)) => {
                        open = None;
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                    None => open = None,
                }
            }
        }
    })
}

fn kube_error(what: &str, e: kube::Error) -> DriverError {
    let detail = match &e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => return unreachable(what, other),
    };
    DriverError::new(format!("{what}: {detail}"))
}

/// A call that got no answer from the API server (a timeout, a refused or
/// reset connection, a TLS failure): named with the server and the settings.
pub fn unreachable(what: &str, e: &kube::Error) -> DriverError {
    // The innermost cause says what happened (the outer ones say "client error").
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let timed_out = cause.to_string().to_lowercase().contains("timed out")
        || cause.to_string().to_lowercase().contains("timeout");
    let party = ralph_core::remote::Party::Kubernetes;
    let servers = ralph_core::remote::kube_servers();
    if timed_out {
        return DriverError::new(ralph_core::remote::no_answer(party, &servers, what));
    }
    DriverError::new(format!(
        "{what}: could not talk to {} at {servers}: {cause}. Check {} and the network; {}=SECONDS bounds each call",
        party.name(),
        party.set_by(),
        ralph_core::remote::API_TIMEOUT_ENV,
    ))
}

pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

fn prop<'a>(props: &'a Map<String, Json>, k: &str) -> Option<&'a str> {
    props
        .get(k)
        .and_then(Json::as_str)
        .filter(|s| !s.is_empty())
}

/// The DER certificates of a PEM bundle (EKS reports its CA as base64 PEM;
/// a plain base64 DER is accepted too).
fn ca_certificates(encoded: &str) -> Result<Vec<Vec<u8>>, String> {
    let b64 = base64::engine::general_purpose::STANDARD;
    let decoded = b64
        .decode(encoded.trim())
        .map_err(|e| format!("`cluster_ca` is not base64: {e}"))?;
    let text = String::from_utf8_lossy(&decoded);
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Ok(vec![decoded]);
    }
    let mut out = Vec::new();
    for block in text.split("-----BEGIN CERTIFICATE-----").skip(1) {
        let body: String = block
            .split("-----END CERTIFICATE-----")
            .next()
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        out.push(
            b64.decode(body)
                .map_err(|e| format!("`cluster_ca` holds a malformed certificate: {e}"))?,
        );
    }
    Ok(out)
}

/// Where the cluster is, as a short description for messages.
pub fn describe_access(props: &Map<String, Json>) -> String {
    match (prop(props, "kubeconfig"), prop(props, "cluster_endpoint")) {
        (Some(k), _) => format!(
            "kubeconfig {k}{}",
            prop(props, "context")
                .map(|c| format!(" (context {c})"))
                .unwrap_or_default()
        ),
        (None, Some(e)) => format!("cluster {e}"),
        _ => "no cluster".into(),
    }
}

/// A client for the cluster the properties name: `kubeconfig` (+ `context`)
/// when set, else `cluster_endpoint` + `cluster_ca` with an EKS token for
/// `cluster_name`.
pub async fn connect(cx: &Context, props: &Map<String, Json>) -> Result<kube::Client, DriverError> {
    let mut tokens = None;
    let mut config = if let Some(path) = prop(props, "kubeconfig") {
        let p = Path::new(path);
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            cx.base_dir.join(p)
        };
        let kc = kube::config::Kubeconfig::read_from(&p)
            .map_err(|e| DriverError::new(format!("reading kubeconfig {}: {e}", p.display())))?;
        let options = kube::config::KubeConfigOptions {
            context: prop(props, "context").map(str::to_string),
            ..Default::default()
        };
        kube::Config::from_custom_kubeconfig(kc, &options)
            .await
            .map_err(|e| DriverError::new(format!("kubeconfig {}: {e}", p.display())))?
    } else if let Some(endpoint) = prop(props, "cluster_endpoint") {
        let uri: http::Uri = endpoint
            .parse()
            .map_err(|e| DriverError::new(format!("`cluster_endpoint` `{endpoint}`: {e}")))?;
        let mut config = kube::Config::new(uri);
        if let Some(ca) = prop(props, "cluster_ca") {
            config.root_cert = Some(ca_certificates(ca).map_err(DriverError::new)?);
        }
        let source = if prop(props, "cluster_auth") == Some("gke") {
            token::Source::gke()?
        } else {
            let cluster = prop(props, "cluster_name").ok_or_else(|| {
                DriverError::new(
                    "`cluster_name` is needed with `cluster_endpoint` (the token names the cluster)",
                )
            })?;
            token::Source::eks(ralph_aws::clients(cx).await?, cluster)
        };
        // The first token now, so that missing credentials fail here with
        // their own message rather than inside the first request.
        source.token().await?;
        tokens = Some(source);
        config
    } else {
        return Err(DriverError::new(
            "no cluster to deploy to: set `kubeconfig` (and `context`), or `cluster_endpoint`, `cluster_ca` and `cluster_name`",
        ));
    };
    // One bound for every call (ralph_core::remote).
    let bound = ralph_core::remote::api_timeout();
    config.connect_timeout = Some(std::time::Duration::from_secs(10).min(bound));
    config.read_timeout = Some(bound);
    config.write_timeout = Some(bound);
    ralph_core::remote::note_kube_server(&config.cluster_url.to_string());
    let builder = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| DriverError::new(format!("connecting to {}: {e}", describe_access(props))))?;
    Ok(match tokens {
        // Every request carries a token made for it (token::Source): a wait
        // longer than a token's life never finds the cluster shut.
        // (The filter waits for a token before it calls the stack beneath,
        // so that stack is shared through a buffer.)
        Some(source) => builder
            .with_layer(&tower::buffer::BufferLayer::new(64))
            .with_layer(&source.layer())
            .build(),
        None => builder.build(),
    })
}

/// The fields that say how to reach the cluster, shared by every
/// `kubernetes.*` kind.
pub const CLUSTER_FIELDS: [&str; 6] = [
    "cluster_auth",
    "kubeconfig",
    "context",
    "cluster_endpoint",
    "cluster_ca",
    "cluster_name",
];

/// A kind's fields: the cluster fields (`CLUSTER_FIELDS`), then its own.
macro_rules! with_cluster_fields {
    ($($own:expr),* $(,)?) => {
        [
            ::ralph_core::model::kinds::Field::new("kubeconfig", ::ralph_core::model::kinds::Ty::String, "a kubeconfig file (relative to the stack file); when not empty it wins over `cluster_endpoint`"),
            ::ralph_core::model::kinds::Field::new("context", ::ralph_core::model::kinds::Ty::String, "the kubeconfig context (default: its current context)"),
            ::ralph_core::model::kinds::Field::new("cluster_endpoint", ::ralph_core::model::kinds::Ty::String, "the API server, usually `${eks.endpoint}`"),
            ::ralph_core::model::kinds::Field::new("cluster_ca", ::ralph_core::model::kinds::Ty::String, "the cluster's CA (base64 PEM), usually `${eks.certificate_authority}`"),
            ::ralph_core::model::kinds::Field::new("cluster_name", ::ralph_core::model::kinds::Ty::String, "the EKS cluster's name, for its token, usually `${eks.name}`"),
            ::ralph_core::model::kinds::Field::new("cluster_auth", ::ralph_core::model::kinds::Ty::String, "how to log in at `cluster_endpoint`: eks (a token from the AWS credentials) or gke (a Google OAuth token from Application Default Credentials); default eks").check($crate::kubernetes::cluster_auth),
            $($own),*
        ]
    };
}
pub(crate) use with_cluster_fields;

pub fn cluster_auth(v: &Json) -> Result<(), String> {
    match v.as_str() {
        Some("eks" | "gke" | "") | None => Ok(()),
        other => Err(format!(
            "cluster_auth {} is not eks or gke",
            ralph_core::model::kinds::shown(other)
        )),
    }
}

/// Picks the API versions the cluster serves, newest first: one request.
pub async fn discover(cx: &Context, client: &kube::Client) -> Result<ApiVersions, DriverError> {
    count(cx);
    let what = "discovering the cluster's API versions";
    let groups = ralph_core::remote::bounded(
        ralph_core::remote::Party::Kubernetes,
        &ralph_core::remote::kube_servers(),
        what,
        client.list_api_groups(),
    )
    .await
    .map_err(DriverError::new)?
    .map_err(|e| kube_error(what, e))?;
    let served: BTreeSet<String> = groups
        .groups
        .iter()
        .flat_map(|g| g.versions.iter().map(|v| v.group_version.clone()))
        .collect();
    let pick = |choices: &[&str]| -> Result<String, DriverError> {
        choices
            .iter()
            .find(|c| served.contains(**c))
            .map(|c| c.to_string())
            .ok_or_else(|| {
                DriverError::new(format!(
                    "the cluster serves none of {}: it is too old or too new for this release of ralph-deploy",
                    choices.join(", ")
                ))
            })
    };
    // batch/v1 is older than its CronJob (1.21): ask for the resource.
    let cronjob = if served.contains("batch/v1") && {
        count(cx);
        client
            .list_api_group_resources("batch/v1")
            .await
            .map_err(|e| kube_error("discovering batch/v1", e))?
            .resources
            .iter()
            .any(|r| r.kind == "CronJob")
    } {
        "batch/v1".to_string()
    } else {
        pick(&["batch/v1beta1"])?
    };
    Ok(ApiVersions {
        hpa: pick(&["autoscaling/v2", "autoscaling/v2beta2"])?,
        pdb: pick(&["policy/v1", "policy/v1beta1"])?,
        cronjob,
        prometheus_operator: served.contains("monitoring.coreos.com/v1"),
        gke_ingress: served.contains("networking.gke.io/v1")
            && served.contains("networking.gke.io/v1beta1"),
    })
}

fn api_resource(api_version: &str, kind: &str) -> ApiResource {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind))
}

fn dynamic_api(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
    namespace: &str,
) -> Api<DynamicObject> {
    let ar = api_resource(api_version, kind);
    if kind == "Namespace" {
        Api::all_with(client.clone(), &ar)
    } else {
        Api::namespaced_with(client.clone(), namespace, &ar)
    }
}

/// Server-side apply of one object with the field manager `ralph-deploy`,
/// taking over fields another manager set (the stack is the authority).
pub async fn server_side_apply(
    cx: &Context,
    client: &kube::Client,
    object: &Json,
) -> Result<DynamicObject, DriverError> {
    let kind = object["kind"].as_str().unwrap_or_default();
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let namespace = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let api = dynamic_api(
        client,
        object["apiVersion"].as_str().unwrap_or_default(),
        kind,
        namespace,
    );
    let dynamic: DynamicObject = serde_json::from_value(object.clone())
        .map_err(|e| DriverError::new(format!("{kind}/{name}: {e}")))?;
    count(cx);
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&dynamic),
    )
    .await
    .map_err(|e| kube_error(&format!("applying {kind} {namespace}/{name}"), e))
}

/// The namespaced kinds the orchestrator kind manages, with the API version
/// to list them by.
pub fn managed_kinds(api: &ApiVersions) -> Vec<(String, &'static str)> {
    let mut kinds = vec![
        ("v1".into(), "ServiceAccount"),
        ("v1".into(), "ConfigMap"),
        ("v1".into(), "Secret"),
        ("v1".into(), "Service"),
        ("networking.k8s.io/v1".into(), "NetworkPolicy"),
        (api.pdb.clone(), "PodDisruptionBudget"),
        ("apps/v1".into(), "Deployment"),
        (api.hpa.clone(), "HorizontalPodAutoscaler"),
        ("networking.k8s.io/v1".into(), "Ingress"),
        (api.cronjob.clone(), "CronJob"),
    ];
    if api.gke_ingress {
        kinds.push(("networking.gke.io/v1".into(), "ManagedCertificate"));
        kinds.push(("networking.gke.io/v1beta1".into(), "FrontendConfig"));
        kinds.push(("cloud.google.com/v1".into(), "BackendConfig"));
    }
    if api.prometheus_operator {
        kinds.push(("monitoring.coreos.com/v1".into(), "PrometheusRule"));
        kinds.push(("monitoring.coreos.com/v1".into(), "ServiceMonitor"));
    }
    kinds
}

/// Every object in `namespace` that carries this resource's ownership
/// labels, as `Kind/name`, per kind.
pub async fn owned_objects(
    cx: &Context,
    client: &kube::Client,
    api: &ApiVersions,
    namespace: &str,
    selector: &str,
) -> Result<BTreeMap<String, (String, &'static str)>, DriverError> {
    // One list per kind, all at once.
    let lists = futures::future::try_join_all(managed_kinds(api).into_iter().map(
        |(api_version, kind)| async move {
            let list_api = dynamic_api(client, &api_version, kind, namespace);
            count(cx);
            let list = list_api
                .list_metadata(&ListParams::default().labels(selector))
                .await
                .map_err(|e| kube_error(&format!("listing {kind} in {namespace}"), e))?;
            Ok::<_, DriverError>((api_version, kind, list.items))
        },
    ))
    .await?;
    let mut out = BTreeMap::new();
    for (api_version, kind, items) in lists {
        for o in items {
            if let Some(name) = o.metadata.name {
                out.insert(format!("{kind}/{name}"), (api_version.clone(), kind));
            }
        }
    }
    Ok(out)
}

/// Deletes this resource's objects that `keep` does not name. Only objects
/// with all the ownership labels are ever candidates.
pub async fn prune(
    cx: &Context,
    client: &kube::Client,
    api: &ApiVersions,
    namespace: &str,
    selector: &str,
    keep: &BTreeSet<String>,
) -> Result<Vec<String>, DriverError> {
    let mut pruned = Vec::new();
    for (id, (api_version, kind)) in owned_objects(cx, client, api, namespace, selector).await? {
        if keep.contains(&id) {
            continue;
        }
        let name = id.split_once('/').map(|x| x.1).unwrap_or_default();
        count(cx);
        match dynamic_api(client, &api_version, kind, namespace)
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => pruned.push(id),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(kube_error(&format!("pruning {id}"), e)),
        }
    }
    Ok(pruned)
}

/// `Kind/name` of each rendered object.
pub fn object_ids(objects: &[Rendered]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| format!("{}/{}", o.kind(), o.name()))
        .collect()
}

/// Reads what the orchestrator's Secret holds: the `secrets` property
/// (`ENV_NAME: source`, see `crate::read_secret_source`), and for each
/// connection with a password secret (`render::CONNECTIONS`) the url with
/// the password in it and the password alone. Returns the values and a
/// string that changes when any secret gets a new version (version ids,
/// never values), so that pods restart on rotation.
pub async fn read_secrets(
    cx: &Context,
    props: &Map<String, Json>,
) -> Result<(BTreeMap<String, String>, String), DriverError> {
    use crate::read_secret_source as read_source;
    // Every source at once (each is a call to a secret store): a release
    // waits for the slowest read, not for their sum.
    let plain: Vec<(&String, &str)> = props
        .get("secrets")
        .and_then(Json::as_object)
        .into_iter()
        .flatten()
        .map(|(key, source)| (key, source.as_str().unwrap_or_default()))
        .collect();
    let passwords: Vec<(&str, &str, &str)> = render::CONNECTIONS
        .iter()
        .filter_map(|(url_key, password_field)| {
            let source = props
                .get(*password_field)
                .and_then(Json::as_str)
                .filter(|s| !s.is_empty())?;
            Some((*url_key, *password_field, source))
        })
        .collect();
    let (plain_read, passwords_read) = futures::future::try_join(
        futures::future::try_join_all(plain.iter().map(|(key, source)| async move {
            read_source(cx, &format!("secret {key}"), source).await
        })),
        futures::future::try_join_all(passwords.iter().map(|(_, field, source)| async move {
            read_source(cx, &format!("`{field}`"), source).await
        })),
    )
    .await?;
    let mut values = BTreeMap::new();
    let mut versions = Vec::new();
    for ((key, _), (value, version)) in plain.iter().zip(plain_read) {
        values.insert(key.to_string(), value);
        versions.push(format!("{key}={version}"));
    }
    for ((url_key, password_field, _), (password, version)) in passwords.iter().zip(passwords_read)
    {
        let url_field = url_key.to_ascii_lowercase();
        let url = render::connection_url(props, url_key).unwrap_or_default();
        let mut parsed = url::Url::parse(&url)
            .map_err(|e| DriverError::new(format!("`{url_field}` is not a url: {e}")))?;
        parsed.set_password(Some(&password)).map_err(|()| {
            DriverError::new(format!(
                "`{url_field}` cannot carry a password (it has no host)"
            ))
        })?;
        values.insert(url_key.to_string(), parsed.to_string());
        values.insert(url_key.replace("_URL", "_PASSWORD"), password);
        versions.push(format!("{password_field}={version}"));
    }
    Ok((values, versions.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_bundles_decode_to_der() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            b64.encode(b"der-one")
        );
        assert_eq!(
            ca_certificates(&b64.encode(pem)).expect("pem"),
            vec![b"der-one".to_vec()]
        );
        assert_eq!(
            ca_certificates(&b64.encode(b"raw")).expect("der"),
            vec![b"raw".to_vec()]
        );
        assert!(ca_certificates("%%").is_err());
    }
}
