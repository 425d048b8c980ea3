//! A private store reached through the cluster the stack built, from a
//! machine outside its network (a CI runner, a laptop): a short-lived proxy
//! pod that listens on a port and connects on to the store (socat), and a
//! local listener whose every connection becomes a port-forward to that pod
//! through the API server (the websocket `pods/portforward` subresource,
//! as `kubectl port-forward` does). The store's address only has to be
//! reachable from the nodes, which is what the stack's network rules are
//! for; the tool needs nothing but the cluster's API endpoint and
//! credentials it already uses.
//!
//! The pod is deleted when the forward is closed or dropped; a killed run
//! leaves it behind for at most [`POD_DEADLINE`] (its
//! `activeDeadlineSeconds`), and the next forward deletes finished ones.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{json, Map, Value as Json};
use tokio::sync::watch;

use super::{count, kube_error, prop};
use ralph_core::driver::{Context, DriverError};

/// The proxy's image: socat, nothing else (override with `forward_image`).
pub const DEFAULT_IMAGE: &str = "alpine/socat:1.8.0.3";
/// The namespace the proxy pods run in (override with `forward_namespace`).
pub const DEFAULT_NAMESPACE: &str = "ralph-deploy";
/// How long a proxy pod may live (a run killed before it deleted the pod).
pub const POD_DEADLINE: Duration = Duration::from_secs(3600);
const COMPONENT: &str = "store-forward";
/// How long a failed connection waits for the cluster's reason.
const SETTLE_WAIT: Duration = Duration::from_secs(2);

/// An open forward: connect to [`Forward::local_addr`] to reach the store.
pub struct Forward {
    local: SocketAddr,
    target: String,
    pods: Api<Pod>,
    nodes: Api<Node>,
    pod: String,
    accept: tokio::task::JoinHandle<()>,
    outcomes: Arc<watch::Sender<Outcomes>>,
    closed: bool,
}

/// What the connections through the pod have told so far: how many have
/// not yet learnt whether the cluster refused them, and the last refusal.
#[derive(Default)]
struct Outcomes {
    undecided: usize,
    last_error: Option<String>,
}

/// One connection's part in [`Outcomes`]: undecided from accept until the
/// port-forward reports an error or ends; settled once, also when dropped.
struct Pending(Option<Arc<watch::Sender<Outcomes>>>);

impl Pending {
    fn new(outcomes: &Arc<watch::Sender<Outcomes>>) -> Self {
        outcomes.send_modify(|o| o.undecided += 1);
        Pending(Some(outcomes.clone()))
    }

    fn settled(&self) -> bool {
        self.0.is_none()
    }

    fn settle(&mut self, error: Option<String>) {
        if let Some(outcomes) = self.0.take() {
            outcomes.send_modify(|o| {
                o.undecided -= 1;
                if error.is_some() {
                    o.last_error = error;
                }
            });
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.settle(None);
    }
}

impl Forward {
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// `host:port` of the store, for messages.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// What the last failed connection through the pod reported (the
    /// cluster's reason: the pod cannot reach the store, the pod is gone).
    /// A client sees the connection end a moment before the port-forward's
    /// error is read, so this waits (briefly) until every connection made
    /// so far has its answer.
    pub async fn last_error(&self) -> Option<String> {
        let mut answers = self.outcomes.subscribe();
        let _ = tokio::time::timeout(SETTLE_WAIT, answers.wait_for(|o| o.undecided == 0)).await;
        let last = self.outcomes.borrow().last_error.clone();
        last
    }

    /// Whether the proxy pod can no longer serve: it is gone, has ended, or
    /// the node it ran on is (a node scaled away under it). A forward that
    /// has lost its pod is [`forget`]-ten and opened again.
    pub async fn lost(&self) -> bool {
        let pod = match self.pods.get_opt(&self.pod).await {
            Ok(Some(p)) => p,
            Ok(None) => return true,
            Err(_) => return false,
        };
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Failed" | "Succeeded")) {
            return true;
        }
        match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
            Some(node) => matches!(self.nodes.get_opt(node).await, Ok(None)),
            None => false,
        }
    }

    /// Stops listening and deletes the proxy pod.
    pub async fn close(mut self) {
        self.accept.abort();
        let _ = self
            .pods
            .delete(&self.pod, &DeleteParams::default().grace_period(0))
            .await;
        self.closed = true;
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.accept.abort();
        if self.closed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let (pods, pod) = (self.pods.clone(), self.pod.clone());
            rt.spawn(async move {
                let _ = pods
                    .delete(&pod, &DeleteParams::default().grace_period(0))
                    .await;
            });
        }
    }
}

/// The proxy pod's settings from a resource's properties.
pub fn settings(props: &Map<String, Json>) -> (String, String) {
    (
        prop(props, "forward_namespace")
            .unwrap_or(DEFAULT_NAMESPACE)
            .to_string(),
        prop(props, "forward_image")
            .unwrap_or(DEFAULT_IMAGE)
            .to_string(),
    )
}

/// Does this resource name a cluster to reach its store through?
pub fn names_a_cluster(props: &Map<String, Json>) -> bool {
    prop(props, "kubeconfig").is_some() || prop(props, "cluster_endpoint").is_some()
}

/// The port the proxy listens on: the store's own, or above 1024 for a
/// privileged one (the pod runs as nobody).
fn listen_port(port: u16) -> u16 {
    if port < 1024 {
        port + 10000
    } else {
        port
    }
}

fn proxy_pod(name: &str, namespace: &str, image: &str, host: &str, port: u16) -> Json {
    let lp = listen_port(port);
    let host_arg = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "ralph-deploy",
                "app.kubernetes.io/component": COMPONENT,
            },
            "annotations": { "ralph-deploy/target": format!("{host}:{port}") },
        },
        "spec": {
            "activeDeadlineSeconds": POD_DEADLINE.as_secs(),
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 0,
            "securityContext": {
                "runAsNonRoot": true,
                "runAsUser": 65534,
                "runAsGroup": 65534,
                "seccompProfile": { "type": "RuntimeDefault" },
            },
            "containers": [{
                "name": "forward",
                "image": image,
                "args": [format!("TCP-LISTEN:{lp},fork,reuseaddr"), format!("TCP:{host_arg}:{port}")],
                "ports": [{ "name": "forward", "containerPort": lp }],
                "readinessProbe": { "tcpSocket": { "port": lp }, "periodSeconds": 1 },
                "resources": {
                    "requests": { "cpu": "10m", "memory": "16Mi" },
                    "limits": { "cpu": "500m", "memory": "64Mi" },
                },
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "readOnlyRootFilesystem": true,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
        },
    })
}

/// Makes sure the proxies' namespace exists (restricted pod security) and
/// deletes proxy pods of earlier runs that have ended.
async fn prepare(cx: &Context, client: &kube::Client, namespace: &str) -> Result<(), DriverError> {
    let namespaces = Api::<Namespace>::all(client.clone());
    count(cx);
    let existing = namespaces
        .get_opt(namespace)
        .await
        .map_err(|e| kube_error(&format!("reading namespace {namespace}"), e))?;
    if existing.is_none() {
        let ns: Namespace = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": namespace,
                "labels": {
                    "app.kubernetes.io/managed-by": "ralph-deploy",
                    "pod-security.kubernetes.io/enforce": "restricted",
                },
            },
        }))
        .map_err(|e| DriverError::new(format!("the forward namespace: {e}")))?;
        count(cx);
        match namespaces.create(&PostParams::default(), &ns).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => return Err(kube_error(&format!("creating namespace {namespace}"), e)),
        }
    }
    let pods = Api::<Pod>::namespaced(client.clone(), namespace);
    count(cx);
    let old = pods
        .list(&ListParams::default().labels(&format!("app.kubernetes.io/component={COMPONENT}")))
        .await
        .map_err(|e| kube_error("listing earlier proxy pods", e))?;
    for p in old.items {
        let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Failed" | "Succeeded")) {
            if let Some(name) = p.metadata.name {
                count(cx);
                let _ = pods
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
            }
        }
    }
    Ok(())
}

/// Why a proxy pod is not ready yet, or that it never will be.
fn pod_progress(p: &Pod) -> Result<bool, String> {
    let Some(st) = &p.status else {
        return Ok(false);
    };
    if st.phase.as_deref() == Some("Failed") {
        return Err(st
            .message
            .clone()
            .unwrap_or_else(|| "the proxy pod failed".into()));
    }
    for c in st.container_statuses.iter().flatten() {
        if let Some(w) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            if let Some(
                reason @ ("ImagePullBackOff"
                | "ErrImagePull"
                | "InvalidImageName"
                | "CreateContainerConfigError"),
            ) = w.reason.as_deref()
            {
                return Err(format!(
                    "{reason}: {} (set `forward_image` to an image the nodes can pull)",
                    w.message.clone().unwrap_or_default()
                ));
            }
        }
    }
    Ok(st
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The forwards this process has open, one per cluster, namespace and
/// store: the migrations, the role and refresh of one run share one pod.
static OPEN: LazyLock<tokio::sync::Mutex<HashMap<String, Arc<Forward>>>> =
    LazyLock::new(Default::default);

/// A forward to `host:port` through the cluster the properties name: the
/// one this process already has open, or a new one.
pub async fn shared(
    cx: &Context,
    props: &Map<String, Json>,
    host: &str,
    port: u16,
) -> Result<Arc<Forward>, DriverError> {
    let (namespace, image) = settings(props);
    let key = format!(
        "{}|{namespace}|{image}|{host}:{port}",
        super::describe_access(props)
    );
    let mut open_now = OPEN.lock().await;
    if let Some(f) = open_now.get(&key) {
        return Ok(f.clone());
    }
    let client = super::connect(cx, props).await?;
    let f = Arc::new(open(cx, &client, props, host, port).await?);
    open_now.insert(key, f.clone());
    Ok(f)
}

/// Drops a forward that has [`Forward::lost`] its pod from the open ones
/// (its pod deleted once the last user lets it go), so that the next
/// [`shared`] opens another.
pub async fn forget(lost: &Arc<Forward>) {
    OPEN.lock().await.retain(|_, f| !Arc::ptr_eq(f, lost));
}

/// Closes every forward of this process (their proxy pods are deleted):
/// called once the command has finished.
pub async fn close_all() {
    let all: Vec<Arc<Forward>> = OPEN.lock().await.drain().map(|(_, f)| f).collect();
    for f in all {
        match Arc::try_unwrap(f) {
            Ok(f) => f.close().await,
            Err(f) => {
                let _ = f
                    .pods
                    .delete(&f.pod, &DeleteParams::default().grace_period(0))
                    .await;
            }
        }
    }
}

/// Starts a proxy pod for `host:port` and a local listener that forwards
/// each connection to it. Ready to connect to when it returns.
pub async fn open(
    cx: &Context,
    client: &kube::Client,
    props: &Map<String, Json>,
    host: &str,
    port: u16,
) -> Result<Forward, DriverError> {
    let (namespace, image) = settings(props);
    let target = format!("{host}:{port}");
    let what = |e: String| {
        DriverError::new(format!(
            "reaching {target} through the cluster ({}): {e}",
            super::describe_access(props)
        ))
    };
    prepare(cx, client, &namespace)
        .await
        .map_err(|e| what(e.message))?;
    let name = format!(
        "forward-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    let pod: Pod = serde_json::from_value(proxy_pod(&name, &namespace, &image, host, port))
        .map_err(|e| what(e.to_string()))?;
    count(cx);
    pods.create(&PostParams::default(), &pod)
        .await
        .map_err(|e| what(kube_error("creating the proxy pod", e).message))?;
    // From here on a failure deletes the pod (Drop).
    let mut forward = Forward {
        local: SocketAddr::from(([127, 0, 0, 1], 0)),
        target: target.clone(),
        pods: pods.clone(),
        nodes: Api::<Node>::all(client.clone()),
        pod: name.clone(),
        accept: tokio::spawn(async {}),
        outcomes: Arc::new(watch::channel(Outcomes::default()).0),
        closed: false,
    };
    let bound = ralph_core::remote::api_timeout();
    let started = Instant::now();
    loop {
        count(cx);
        let p = pods
            .get(&name)
            .await
            .map_err(|e| what(kube_error("reading the proxy pod", e).message))?;
        match pod_progress(&p) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(what(format!("proxy pod {namespace}/{name}: {e}"))),
        }
        if started.elapsed() > bound {
            return Err(what(format!(
                "proxy pod {namespace}/{name} was not ready after {}s; {}=SECONDS waits longer",
                bound.as_secs(),
                ralph_core::remote::API_TIMEOUT_ENV
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .map_err(|e| what(format!("a local port: {e}")))?;
    forward.local = listener.local_addr().map_err(|e| what(e.to_string()))?;
    let lp = listen_port(port);
    let outcomes = forward.outcomes.clone();
    forward.accept = tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (pods, name) = (pods.clone(), name.clone());
            let mut pending = Pending::new(&outcomes);
            tokio::spawn(async move {
                let mut pf = match pods.portforward(&name, &[lp]).await {
                    Ok(pf) => pf,
                    Err(e) => {
                        return pending.settle(Some(format!("port-forward to pod {name}: {e}")));
                    }
                };
                let (Some(mut stream), Some(failed)) = (pf.take_stream(lp), pf.take_error(lp))
                else {
                    return pending.settle(Some("the port-forward opened no stream".into()));
                };
                tokio::pin!(failed);
                {
                    // The pod's error message comes before its stream ends,
                    // so when both are ready the error is the answer.
                    let copy = tokio::io::copy_bidirectional(&mut socket, &mut stream);
                    tokio::pin!(copy);
                    tokio::select! {
                        biased;
                        e = &mut failed => pending.settle(e),
                        _ = &mut copy => {}
                    }
                }
                drop(stream);
                drop(socket);
                let _ = pf.join().await;
                if !pending.settled() {
                    if let Ok(e) = tokio::time::timeout(SETTLE_WAIT, failed).await {
                        pending.settle(e);
                    }
                }
            });
        }
    });
    Ok(forward)
}
