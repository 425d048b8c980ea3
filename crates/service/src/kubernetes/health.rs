//! Is a deployed orchestrator actually serving? Checked the way an operator
//! would find out: the Deployment available at the recorded release, its
//! /health answering through the cluster (the API server's service proxy),
//! and the credentials the pods get (their Secret and ConfigMap) logging in
//! to the database as the application's role and to Redis with AUTH.
//! Nothing here changes a resource; the database check appends one line to
//! the audit log, which is what proves the role can write.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use serde_json::{Map, Value as Json};

use super::{connect, is_not_found};
use ralph_core::driver::Context;

/// How long one check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The outcome of one check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Probe {
    /// deployment, health, edge, monitoring, database, redis
    pub check: &'static str,
    /// What was checked (never a credential).
    pub target: String,
    pub healthy: bool,
    pub detail: String,
    pub elapsed_ms: u64,
}

/// A database reachable only through a tunnel: connections for `role`
/// go to this url's host and port instead of DATABASE_URL's.
pub struct Tunnel {
    pub role: String,
    pub url: String,
}

async fn timed<F, T>(f: F) -> (Result<T, String>, u64)
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let t = Instant::now();
    let r = match tokio::time::timeout(CHECK_TIMEOUT, f).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
    };
    (r, t.elapsed().as_millis() as u64)
}

fn probe(check: &'static str, target: String, outcome: (Result<String, String>, u64)) -> Probe {
    let (r, elapsed_ms) = outcome;
    let (healthy, detail) = match r {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    Probe {
        check,
        target,
        healthy,
        detail,
        elapsed_ms,
    }
}

/// Every check of one `kubernetes.orchestrator` resource. `props` are its
/// properties as applied, `image_ref` the release the state records.
pub async fn check(
    cx: &Context,
    props: &Map<String, Json>,
    image_ref: Option<&str>,
    tunnels: &[Tunnel],
) -> Vec<Probe> {
    let namespace = props
        .get("namespace")
        .and_then(Json::as_str)
        .unwrap_or("ralph");
    let name = props
        .get("name")
        .and_then(Json::as_str)
        .unwrap_or("ralph-orchestrator");
    let mut out = Vec::new();
    let client = match connect(cx, props).await {
        Ok(c) => c,
        Err(e) => {
            out.push(probe(
                "deployment",
                format!("{namespace}/{name}"),
                (Err(format!("cannot reach the cluster: {}", e.message)), 0),
            ));
            return out;
        }
    };
    out.push(probe(
        "deployment",
        format!("{namespace}/{name}"),
        timed(deployment(&client, namespace, name, image_ref)).await,
    ));
    out.push(probe(
        "health",
        format!("service {namespace}/{name}, GET /health"),
        timed(health(&client, namespace, name)).await,
    ));
    if let Some(host) = props
        .get("ingress_host")
        .and_then(Json::as_str)
        .filter(|h| !h.is_empty())
    {
        let class = props
            .get("ingress_class")
            .and_then(Json::as_str)
            .unwrap_or("nginx");
        out.push(probe(
            "edge",
            format!("ingress {namespace}/{name}, https://{host}"),
            timed(edge(&client, namespace, name, class)).await,
        ));
    }
    monitoring_probes(cx, &client, props, namespace, name, &mut out).await;
    let env = match pod_environment(&client, namespace, name).await {
        Ok(env) => env,
        Err(e) => {
            for check in ["database", "redis"] {
                out.push(probe(
                    check,
                    format!("{namespace}/{name}"),
                    (Err(e.clone()), 0),
                ));
            }
            return out;
        }
    };
    store_probes(cx, props, &env, tunnels, &mut out).await;
    out
}

/// The installed Prometheus, Alertmanager and Grafana, and the Prometheus
/// that loads the rules (installed, or named in `prometheus`).
async fn monitoring_probes(
    cx: &Context,
    client: &kube::Client,
    props: &Map<String, Json>,
    namespace: &str,
    name: &str,
    out: &mut Vec<Probe>,
) {
    let flag = |k: &str, default: bool| props.get(k).and_then(Json::as_bool).unwrap_or(default);
    // Where the Prometheus Operator runs, `monitoring_install` makes nothing
    // (the Operator's Prometheus takes the PrometheusRule): there is no
    // installed Prometheus to check or to ask.
    let installs = flag("monitoring", true)
        && flag("monitoring_install", false)
        && !super::discover(cx, client)
            .await
            .is_ok_and(|api| api.prometheus_operator);
    let named = props
        .get("prometheus")
        .and_then(Json::as_str)
        .is_some_and(|p| !p.is_empty());
    if installs {
        let mut parts = vec!["prometheus", "alertmanager"];
        if flag("grafana_install", false) {
            parts.push("grafana");
        }
        out.push(probe(
            "monitoring-install",
            format!("{namespace}/{name}-{{{}}}", parts.join(",")),
            timed(installed(client, namespace, name, &parts)).await,
        ));
    }
    if let Some(target) = super::render::prometheus_target(props).filter(|_| named || installs) {
        out.push(probe(
            "monitoring",
            format!("prometheus {target}, rules and alerts of {name}"),
            timed(monitoring(client, &target, namespace, name)).await,
        ));
    }
}

/// The database and Redis the pods are given, reached as the pods reach
/// them (through a tunnel the caller opened, or through the cluster).
async fn store_probes(
    cx: &Context,
    props: &Map<String, Json>,
    env: &BTreeMap<String, String>,
    tunnels: &[Tunnel],
    out: &mut Vec<Probe>,
) {
    match env.get("DATABASE_URL") {
        None => out.push(probe(
            "database",
            "DATABASE_URL".into(),
            (Err("the pods get no DATABASE_URL".into()), 0),
        )),
        Some(url) => {
            let (target, attempt) = match database_target(url, tunnels) {
                Some((target, url)) => (target, Ok(url)),
                None => through_cluster(cx, props, url, 5432).await,
            };
            let outcome = match attempt {
                Ok(url) => timed(database(url)).await,
                Err(e) => (Err(e), 0),
            };
            out.push(probe("database", target, outcome));
        }
    }
    match env.get("REDIS_URL") {
        None => out.push(probe(
            "redis",
            "REDIS_URL".into(),
            (Err("the pods get no REDIS_URL".into()), 0),
        )),
        Some(url) => {
            let (target, attempt) = through_cluster(cx, props, url, 6379).await;
            let outcome = match attempt {
                Ok(url) => timed(redis_ping(url)).await,
                Err(e) => (Err(e), 0),
            };
            out.push(probe("redis", target, outcome));
        }
    }
}

/// `scheme://user@host:port/path`: a url without its password.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_password(None);
            u.to_string()
        }
        Err(_) => "(not a url)".into(),
    }
}

/// The Ingress is served: a controller of its class gave it an address,
/// and (GKE's own controller) its Google-managed certificate is active.
async fn edge(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    class: &str,
) -> Result<String, String> {
    use k8s_openapi::api::networking::v1::Ingress;
    let ing = match Api::<Ingress>::namespaced(client.clone(), namespace)
        .get(name)
        .await
    {
        Ok(i) => i,
        Err(e) if is_not_found(&e) => return Err("the Ingress does not exist".into()),
        Err(e) => return Err(format!("reading the Ingress: {e}")),
    };
    let address = ing
        .status
        .and_then(|s| s.load_balancer)
        .and_then(|lb| lb.ingress)
        .and_then(|i| i.into_iter().next())
        .and_then(|i| i.ip.or(i.hostname));
    let Some(address) = address else {
        // GKE's and the AWS controller's last complaint, when they made
        // one, says why.
        if class == "gce" || class == "alb" {
            if let Some(warning) = last_warning(client, namespace, name).await {
                return Err(format!("it has no address; {warning}"));
            }
        }
        return Err(if class == "gce" {
            "GKE's Ingress controller has given it no address yet (a new load balancer takes a few minutes)".into()
        } else {
            format!("no controller serves Ingress class `{class}`: it has no address. Install one with the stack's `cluster_addons` (on GKE, `ingress_class: gce` is GKE's own controller; on EKS, `alb` is the AWS Load Balancer Controller, whose events on the Ingress say why it made no load balancer)")
        });
    };
    if class == "alb" {
        return Ok(format!(
            "served at {address} by the AWS Load Balancer Controller's ALB"
        ));
    }
    if class != "gce" {
        return Ok(format!("served at {address} (class {class})"));
    }
    let cert = format!("{name}-cert");
    let api = super::dynamic_api(
        client,
        "networking.gke.io/v1",
        "ManagedCertificate",
        namespace,
    );
    let status = match api.get(&cert).await {
        Ok(o) => o.data["status"]["certificateStatus"]
            .as_str()
            .unwrap_or("not reported yet")
            .to_string(),
        Err(e) if is_not_found(&e) => {
            return Err(format!(
                "served at {address}, but the ManagedCertificate {cert} does not exist"
            ))
        }
        Err(e) => return Err(format!("reading the ManagedCertificate {cert}: {e}")),
    };
    if status == "Active" {
        Ok(format!(
            "served at {address} by GKE's load balancer, certificate {cert} Active"
        ))
    } else {
        Err(format!(
            "served at {address}, but certificate {cert} is {status} (Google provisions it once the host's DNS points at that address)"
        ))
    }
}

/// The newest Warning event about the Ingress (its controller's: a load
/// balancer it could not make, a BackendConfig or security policy it could
/// not find), with when it was said.
async fn last_warning(client: &kube::Client, namespace: &str, name: &str) -> Option<String> {
    use k8s_openapi::api::core::v1::Event;
    let fields = format!("involvedObject.kind=Ingress,involvedObject.name={name},type=Warning");
    let events = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&kube::api::ListParams::default().fields(&fields))
        .await
        .ok()?;
    let when = |e: &Event| {
        e.last_timestamp
            .as_ref()
            .map(|t| t.0)
            .or(e.event_time.as_ref().map(|t| t.0))
    };
    let newest = events.items.into_iter().max_by_key(when)?;
    let at = when(&newest)
        .map(|t| format!(" at {t}"))
        .unwrap_or_default();
    Some(format!(
        "its controller said{at}: {}",
        newest.message.as_deref().unwrap_or("(no message)")
    ))
}

async fn deployment(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    image_ref: Option<&str>,
) -> Result<String, String> {
    let d = match Api::<Deployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await
    {
        Ok(d) => d,
        Err(e) if is_not_found(&e) => return Err("the Deployment does not exist".into()),
        Err(e) => return Err(format!("reading the Deployment: {e}")),
    };
    let want = d.spec.replicas.unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let available = st.available_replicas.unwrap_or(0);
    let updated = st.updated_replicas.unwrap_or(0);
    let image = d
        .spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.first())
        .and_then(|c| c.image.clone())
        .unwrap_or_default();
    let generation_seen = st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let summary = format!("{available}/{want} available, {updated} updated, image {image}");
    if let Some(recorded) = image_ref {
        if recorded != image {
            return Err(format!("{summary}; the state records release {recorded}"));
        }
    }
    if available < want || updated < want || !generation_seen {
        return Err(summary);
    }
    Ok(summary)
}

/// The Deployments of `monitoring_install` (NAME-PART each), available.
async fn installed(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    parts: &[&str],
) -> Result<String, String> {
    let mut seen = Vec::new();
    for part in parts {
        let deployment_name = format!("{name}-{part}");
        match deployment(client, namespace, &deployment_name, None).await {
            Ok(summary) => seen.push(format!("{part} {summary}")),
            Err(e) => return Err(format!("{part}: {e}")),
        }
    }
    Ok(seen.join("; "))
}

/// GET `path` of Prometheus's HTTP API through the API server's service
/// proxy, its `data`.
async fn prometheus_api(client: &kube::Client, base: &str, path: &str) -> Result<Json, String> {
    let req = http::Request::get(format!("{base}{path}"))
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    let text = match client.request_text(req).await {
        Ok(t) => t,
        Err(kube::Error::Api(e)) => return Err(format!("{path}: {} {}", e.code, e.message)),
        Err(e) => return Err(format!("{path}: {e}")),
    };
    let v: Json = serde_json::from_str(&text)
        .map_err(|e| format!("{path}: not Prometheus's answer ({e})"))?;
    if v["status"] != "success" {
        return Err(format!(
            "{path}: {}",
            v["error"].as_str().unwrap_or("failed")
        ));
    }
    Ok(v["data"].clone())
}

/// Monitoring works: the Prometheus at `target` (NAMESPACE/SERVICE:PORT,
/// asked through the API server's service proxy, as the cluster's own
/// Prometheus is private) has loaded this orchestrator's rule groups, and
/// none of its critical alerts fires (the firing ones are listed).
async fn monitoring(
    client: &kube::Client,
    target: &str,
    namespace: &str,
    name: &str,
) -> Result<String, String> {
    let (ns, rest) = target
        .split_once('/')
        .ok_or_else(|| format!("`{target}` is not NAMESPACE/SERVICE:PORT"))?;
    let (service, port) = rest.split_once(':').unwrap_or((rest, "9090"));
    let base = format!("/api/v1/namespaces/{ns}/services/{service}:{port}/proxy");
    let rules = prometheus_api(client, &base, "/api/v1/rules").await?;
    let loaded: Vec<&str> = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["name"].as_str())
        .collect();
    let missing: Vec<String> = [format!("{name}.rules"), format!("{name}.slo")]
        .into_iter()
        .filter(|g| !loaded.contains(&g.as_str()))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "Prometheus has not loaded the rule groups {}: give it the ConfigMap {name}-monitoring's alerts.yml, or run the Prometheus Operator (the PrometheusRule)",
            missing.join(", ")
        ));
    }
    let alerts = prometheus_api(client, &base, "/api/v1/alerts").await?;
    let mut firing: Vec<(String, String)> = alerts["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing" && a["labels"]["service"] == name)
        .filter(|a| {
            a["labels"]["namespace"]
                .as_str()
                .is_none_or(|n| n == namespace)
        })
        .map(|a| {
            (
                a["labels"]["alertname"].as_str().unwrap_or("?").to_string(),
                a["labels"]["severity"]
                    .as_str()
                    .unwrap_or("none")
                    .to_string(),
            )
        })
        .collect();
    firing.sort();
    firing.dedup();
    let shown = firing
        .iter()
        .map(|(a, s)| format!("{a} ({s})"))
        .collect::<Vec<_>>()
        .join(", ");
    if firing.iter().any(|(_, s)| s == "critical") {
        return Err(format!("firing: {shown}"));
    }
    Ok(if firing.is_empty() {
        "2 rule groups loaded, no alert firing".to_string()
    } else {
        format!("rule groups loaded; firing: {shown}")
    })
}

async fn health(client: &kube::Client, namespace: &str, name: &str) -> Result<String, String> {
    let path = format!("/api/v1/namespaces/{namespace}/services/{name}:http/proxy/health");
    let req = http::Request::get(&path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    match client.request_text(req).await {
        Ok(body) => Ok(format!(
            "200: {}",
            body.chars().take(80).collect::<String>()
        )),
        Err(kube::Error::Api(e)) => Err(format!("{} {}", e.code, e.message)),
        Err(e) => Err(e.to_string()),
    }
}

/// What the pods' environment holds: the ConfigMap, then the Secret.
async fn pod_environment(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<BTreeMap<String, String>, String> {
    let mut env = BTreeMap::new();
    let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(&format!("{name}-config"))
        .await
        .map_err(|e| format!("reading the ConfigMap: {e}"))?;
    env.extend(cm.and_then(|c| c.data).unwrap_or_default());
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(&format!("{name}-secrets"))
        .await
        .map_err(|e| format!("reading the Secret: {e}"))?;
    for (k, v) in secret.and_then(|s| s.data).unwrap_or_default() {
        env.insert(k, String::from_utf8_lossy(&v.0).into_owned());
    }
    Ok(env)
}

/// A store's url as the pods have it, reached from here through the
/// cluster (a proxy pod and a port-forward, `forward`): what to show, and
/// the url to connect to. A store the cluster cannot be asked about is
/// tried straight.
async fn through_cluster(
    cx: &Context,
    props: &Map<String, Json>,
    url: &str,
    default_port: u16,
) -> (String, Result<String, String>) {
    let Ok(parsed) = url::Url::parse(url) else {
        return ("(not a url)".into(), Ok(url.to_string()));
    };
    let Some(host) = parsed.host_str().map(str::to_string) else {
        return (redacted(url), Ok(url.to_string()));
    };
    let port = parsed.port().unwrap_or(default_port);
    match super::forward::shared(cx, props, host.trim_matches(['[', ']']), port).await {
        Ok(f) => {
            let mut via = parsed.clone();
            let _ = via.set_host(Some("127.0.0.1"));
            let _ = via.set_port(Some(f.local_addr().port()));
            // TLS still runs end to end through the forward, but the
            // certificate names the store, not the local port.
            if via.scheme() == "rediss" {
                via.set_fragment(Some("insecure"));
            }
            (
                format!("{} (through the cluster)", redacted(url)),
                Ok(via.to_string()),
            )
        }
        Err(e) => (redacted(url), Err(e.message)),
    }
}

/// Where the database check connects: its credentials through the tunnel
/// the stack gives for its role, if it gives one.
fn database_target(url: &str, tunnels: &[Tunnel]) -> Option<(String, String)> {
    let Ok(parsed) = url::Url::parse(url) else {
        return Some(("DATABASE_URL".into(), url.to_string()));
    };
    let user = parsed.username().to_string();
    if let Some(t) = tunnels.iter().find(|t| t.role == user) {
        if let Ok(tunnel) = url::Url::parse(&t.url) {
            let mut via = parsed.clone();
            let same = tunnel.host_str() == parsed.host_str() && tunnel.port() == parsed.port();
            if !same
                && via.set_host(tunnel.host_str()).is_ok()
                && via.set_port(tunnel.port()).is_ok()
            {
                // The tunnel's TLS setting: a local forward rarely speaks it.
                let query: Vec<(String, String)> = tunnel
                    .query_pairs()
                    .filter(|(k, _)| k == "sslmode")
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                if !query.is_empty() {
                    via.query_pairs_mut().clear().extend_pairs(query);
                }
                return Some((
                    format!(
                        "{} (through the tunnel {})",
                        redacted(url),
                        redacted(&via.to_string())
                    ),
                    via.to_string(),
                ));
            }
        }
    }
    None
}

/// Logs in, runs SELECT 1, and appends to the audit log as the role.
async fn database(url: String) -> Result<String, String> {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&url)
        .await
        .map_err(|e| format!("cannot log in: {e}"))?;
    let who: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut c)
        .await
        .map_err(|e| format!("SELECT failed: {e}"))?;
    sqlx::query(
        "INSERT INTO audit.activity_log (user_name, action, resource) VALUES ($1, 'health-check', 'ralph-deploy status')",
    )
    .bind(&who)
    .execute(&mut c)
    .await
    .map_err(|e| format!("logged in as {who}, but cannot write to the audit log: {e}"))?;
    let _ = c.close().await;
    Ok(format!("logged in as {who}, wrote to audit.activity_log"))
}

async fn redis_ping(url: String) -> Result<String, String> {
    let client = redis::Client::open(url.as_str()).map_err(|e| format!("not a Redis url: {e}"))?;
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let pong: String = redis::cmd("PING")
        .query_async(&mut c)
        .await
        .map_err(|e| format!("PING failed: {e}"))?;
    Ok(format!("AUTH and PING answered {pong}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_never_show_a_password() {
        // No tunnel for the role: the check goes through the cluster.
        assert!(database_target(
            "postgres://app:s3cret@db.internal:5432/ralph?sslmode=require",
            &[],
        )
        .is_none());
        let tunnels = [Tunnel {
            role: "app".into(),
            url: "postgres://postgres@127.0.0.1:15432/ralph?sslmode=disable".into(),
        }];
        let (target, url) = database_target(
            "postgres://app:s3cret@db.internal:5432/ralph?sslmode=require",
            &tunnels,
        )
        .expect("through the tunnel");
        assert!(!target.contains("s3cret"), "{target}");
        assert_eq!(
            url,
            "postgres://app:s3cret@127.0.0.1:15432/ralph?sslmode=disable"
        );
        assert_eq!(redacted("rediss://:tok@r:6379/0"), "rediss://r:6379/0");
    }
}
