//! `kubernetes.orchestrator`: the Ralph Orchestrator on a cluster. Its
//! objects are rendered from templates/ (see [`super::render`]), applied
//! server-side, pruned by ownership labels, and the Deployment's rollout is
//! awaited the way `kubectl rollout status` does it. A rollout that fails
//! (progress deadline exceeded, an image that cannot be pulled, a crash loop)
//! is rolled back to the last good release recorded in the state, and the
//! apply fails saying why.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::{Map, Value as Json};

use super::render::{self, ApiVersions};
use super::{
    connect, discover, is_not_found, owned_objects, prune, read_secrets, server_side_apply,
};
use ralph_core::driver::{
    Context, Delete, Desired, Driver, DriverError, Known, Observed, Owner, Update,
    STACK_VALUES_ATTR,
};
use ralph_core::model::kinds::{checks, Attr, Field, KindSchema, Ty};

fn computed(_: &Json) -> Result<(), String> {
    Err("`objects` is computed from the templates; do not set it".into())
}

fn dns_label(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    checks::require(ok, || {
        format!("`{s}` is not a valid Kubernetes name: lower-case letters, digits and `-`, at most 63, starting and ending with a letter or digit")
    })
}

fn image_tag(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let ok = checks::name_of(s, 1..=128, "_.-") && !s.starts_with(['.', '-']);
    checks::require(ok, || {
        format!("`{s}` is not an image tag: letters, digits, `_`, `.`, `-`, at most 128")
    })
}

fn prometheus_duration(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    let ok = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit())
        && matches!(unit, "ms" | "s" | "m" | "h" | "d" | "w" | "y");
    checks::require(ok, || {
        format!("`{s}` is not a Prometheus duration such as 30s, 5m or 1h")
    })
}

/// An availability objective in percent, below 100 (100 leaves no error
/// budget to burn).
fn percent_objective(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 && x < 100.0 => Ok(()),
        _ => Err(format!(
            "`{s}` is not an objective in percent below 100, such as 99.9"
        )),
    }
}

static RECEIVER: &[Field] = &[
    Field::new("name", Ty::String, "the receiver's name").required(),
    Field::new("type", Ty::String, "pagerduty, slack, webhook or email").required(),
    Field::new("severities", Ty::List(&Ty::String), "the severity labels it takes (empty: every alert no earlier receiver took)").default("[]"),
    Field::new("key_file", Ty::String, "pagerduty: the file holding the Events API v2 routing key; slack: the file holding the incoming-webhook URL (default with `key_secret`: where the installed Alertmanager mounts it)").default("\"\""),
    Field::new("key_secret", Ty::String, "pagerduty, slack: the secret holding the key or URL (a Secrets Manager ARN, optionally `#key`, a Secret Manager version, or `env:VARIABLE`): copied at apply into the Secret NAME-alertmanager-keys, which `monitoring_install`'s Alertmanager mounts at /etc/alertmanager/keys (never into the state or the ConfigMap)").default("\"\""),
    Field::new("channel", Ty::String, "slack: the channel").default("\"\""),
    Field::new("url", Ty::String, "webhook: where alerts are posted (SNS or Pub/Sub through a webhook bridge); pagerduty: the Events API v2 endpoint, for an account in PagerDuty's EU service region https://events.eu.pagerduty.com/v2/enqueue (default: Alertmanager's, the US one)").default("\"\""),
    Field::new("to", Ty::String, "email: the address").default("\"\""),
];

/// Alert receivers Alertmanager can use: a known type with what it needs,
/// and no secret written into the stack.
fn receivers(v: &Json) -> Result<(), String> {
    for (i, r) in v.as_array().into_iter().flatten().enumerate() {
        let n = i + 1;
        let get = |k: &str| r.get(k).and_then(Json::as_str).unwrap_or_default();
        let need = |k: &str, what: &str| {
            if get(k).is_empty() {
                Err(format!(
                    "receiver {n} (`{}`): a {} receiver needs `{k}`, {what}",
                    get("name"),
                    get("type")
                ))
            } else {
                Ok(())
            }
        };
        let key = |what: &str| {
            if get("key_secret").is_empty() {
                need(
                    "key_file",
                    &format!(
                        "the file {what} is mounted at (or `key_secret`, the secret holding it)"
                    ),
                )
            } else if !get("name")
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                Err(format!(
                    "receiver {n}: `{}` cannot name a key file (letters, digits, -, _ and . only)",
                    get("name")
                ))
            } else {
                Ok(())
            }
        };
        let http_url = || {
            if get("url").starts_with("http://") || get("url").starts_with("https://") {
                Ok(())
            } else {
                Err(format!(
                    "receiver {n}: `{}` is not an http(s) URL",
                    get("url")
                ))
            }
        };
        match get("type") {
            "pagerduty" => {
                key("its routing key")?;
                if !get("url").is_empty() {
                    http_url()?
                }
            }
            "slack" => {
                key("its webhook URL")?;
                need("channel", "the channel")?
            }
            "webhook" => {
                need("url", "the URL alerts are posted to")?;
                http_url()?
            }
            "email" => need("to", "the address")?,
            other => {
                return Err(format!(
                    "receiver {n}: type `{other}` is not pagerduty, slack, webhook or email"
                ))
            }
        }
    }
    Ok(())
}

fn ratio(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(()),
        _ => Err(format!(
            "`{s}` is not a share between 0 and 1, such as 0.05"
        )),
    }
}

fn probe_path(v: &Json) -> Result<(), String> {
    match v.as_str() {
        Some(p) if p.starts_with('/') && !p.chars().any(char::is_whitespace) => Ok(()),
        other => Err(format!(
            "{} is not an HTTP path: write it from the root, such as /health",
            ralph_core::model::kinds::shown(other)
        )),
    }
}

fn no_password_in_redis_url(v: &Json) -> Result<(), String> {
    let s = v.as_str().unwrap_or_default();
    if s.is_empty() {
        return Ok(());
    }
    match url::Url::parse(s) {
        Err(e) => Err(format!("not a Redis url: {e}")),
        Ok(u) if !matches!(u.scheme(), "redis" | "rediss") => Err(format!(
            "a Redis url starts with redis:// or rediss://, not {}://",
            u.scheme()
        )),
        Ok(u) if u.password().is_some() => Err(
            "the url carries a password, which would land in the state: use `redis_password`"
                .into(),
        ),
        Ok(_) => Ok(()),
    }
}

fn secret_sources(v: &Json) -> Result<(), String> {
    for (k, src) in v.as_object().into_iter().flatten() {
        let src = src.as_str().unwrap_or_default();
        if src.is_empty() {
            return Err(format!("secret {k} has no source: give a Secrets Manager ARN (optionally `#key`) or `env:VARIABLE`"));
        }
        if !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("secret `{k}` is not an environment variable name"));
        }
    }
    Ok(())
}

static SCHEMA: KindSchema = KindSchema::new("kubernetes.orchestrator", "kubernetes", "The Ralph Orchestrator on Kubernetes: Deployment, config, secrets, Service, Ingress, NetworkPolicy, PDB, HPA.")
    .fields(&super::with_cluster_fields![
        Field::new("namespace", Ty::String, "the namespace, created with Pod Security `restricted`").default("\"ralph\"").check(dns_label).forces_replace(),
        Field::new("name", Ty::String, "the name of the Deployment and its objects").default("\"ralph-orchestrator\"").check(dns_label).forces_replace(),
        Field::new("image", Ty::String, "the image repository (or a full reference with tag or digest)").default("\"ghcr.io/mikeyobrien/ralph-orchestrator\"").released(),
        Field::new("tag", Ty::String, "the image tag: a new value rolls out; a release `ralph-deploy deploy --image` made since stands until the stack changes it").check(image_tag).released(),
        Field::new("replicas", Ty::Int, "pods (and the autoscaler's minimum)").default("3").check(checks::range::<1, 1000>),
        Field::new("max_surge", Ty::Int, "extra pods during a rollout").default("1").check(checks::range::<0, 1000>),
        Field::new("max_unavailable", Ty::Int, "pods that may be missing during a rollout").default("0").check(checks::range::<0, 1000>),
        Field::new("progress_deadline_seconds", Ty::Int, "a rollout that makes no progress this long has failed and is rolled back").default("600").check(checks::range::<1, 86400>),
        Field::new("cpu_request", Ty::String, "CPU request per pod").default("\"2\"").check(checks::quantity),
        Field::new("memory_request", Ty::String, "memory request per pod").default("\"4Gi\"").check(checks::quantity),
        Field::new("cpu_limit", Ty::String, "CPU limit per pod").default("\"4\"").check(checks::quantity),
        Field::new("memory_limit", Ty::String, "memory limit per pod").default("\"8Gi\"").check(checks::quantity),
        Field::new("port", Ty::Int, "the HTTP port (/health, /ready)").default("8080").check(checks::tcp_port),
        Field::new("metrics_port", Ty::Int, "the Prometheus metrics port").default("9090").check(checks::tcp_port),
        Field::new("command", Ty::List(&Ty::String), "the container's command (default: the image's entrypoint)"),
        Field::new("args", Ty::List(&Ty::String), "the container's arguments (default: the image's)"),
        Field::new("liveness_path", Ty::String, "the path the liveness probe asks").default("\"/health\"").check(probe_path),
        Field::new("readiness_path", Ty::String, "the path the readiness probe asks").default("\"/ready\"").check(probe_path),
        Field::new("agent", Ty::String, "RALPH_AGENT (`auto` picks the agent whose credentials the pod has)").default("\"auto\""),
        Field::new("max_iterations", Ty::Int, "RALPH_MAX_ITERATIONS").default("1000"),
        Field::new("max_runtime", Ty::Int, "RALPH_MAX_RUNTIME, seconds").default("28800"),
        Field::new("max_tokens", Ty::Int, "RALPH_MAX_TOKENS").default("5000000"),
        Field::new("max_cost", Ty::String, "RALPH_MAX_COST, dollars").default("\"500.0\""),
        Field::new("checkpoint_interval", Ty::Int, "RALPH_CHECKPOINT_INTERVAL, iterations").default("5"),
        Field::new("database_url", Ty::String, "DATABASE_URL, without a password (`database_password` adds it)").check(crate::postgres::no_password_in_url),
        Field::new("database_password", Ty::String, "the database password's secret (a Secrets Manager ARN, `#key` picks a JSON key, or `env:VARIABLE`): DATABASE_URL then goes to the Secret with the password in it, and DATABASE_PASSWORD beside it").check(ralph_core::driver::secret_value::secret_source),
        Field::new("redis_url", Ty::String, "REDIS_URL, without a password (`redis_password` adds it)").check(no_password_in_redis_url),
        Field::new("redis_password", Ty::String, "the Redis AUTH token's secret (same forms as `database_password`): REDIS_URL then goes to the Secret with the token in it, and REDIS_PASSWORD beside it").check(ralph_core::driver::secret_value::secret_source),
        Field::new("database_pool_size", Ty::Int, "DATABASE_POOL_SIZE").default("20").check(checks::range::<1, 10000>),
        Field::new("redis_ca", Ty::String, "the Redis server's CA certificates (PEM) when no public CA signs its certificate, usually `${redis.server_ca}` on Memorystore: mounted at /etc/ralph/ca/redis-ca.pem and named in REDIS_URL (`ssl_ca_certs`) and REDIS_CA_CERT"),
        Field::new("redis_pool_size", Ty::Int, "REDIS_POOL_SIZE").default("50").check(checks::range::<1, 10000>),
        Field::new("log_level", Ty::String, "LOG_LEVEL").default("\"INFO\""),
        Field::new("rate_limit", Ty::Int, "RATE_LIMIT: requests per minute from one client, also the limit at the Ingress").default("100"),
        Field::new("rate_limit_connections", Ty::Int, "concurrent connections per client at the Ingress").default("50"),
        Field::new("allowed_hosts", Ty::List(&Ty::String), "ALLOWED_HOSTS"),
        Field::new("cors_origins", Ty::List(&Ty::String), "CORS_ORIGINS"),
        Field::new("config", Ty::StringMap, "more environment for the ConfigMap (wins over the settings above)"),
        Field::new("secrets", Ty::StringMap, "environment from secrets: NAME: a Secrets Manager ARN (`#key` picks a JSON key) or `env:VARIABLE`; values go to the cluster, never to the state").check(secret_sources),
        Field::new("secret_versions", Ty::List(&Ty::String), "the secrets' current version ids, such as `${secret_key.version_id}`: a rotation then shows in plan, and apply copies the new values and restarts the pods"),
        Field::new("ingress_host", Ty::String, "the public host name; when set, an Ingress with TLS is made"),
        Field::new("node_selector", Ty::StringMap, "labels of the nodes the pods run on (their node group: EKS `eks.amazonaws.com/nodegroup`, GKE `cloud.google.com/gke-nodepool`)"),
        Field::new("service_account_annotations", Ty::StringMap, "annotations of the pods' ServiceAccount: the cloud identity they act as (GKE: iam.gke.io/gcp-service-account: EMAIL; EKS: eks.amazonaws.com/role-arn: ARN)"),
        Field::new("ingress_class", Ty::String, "the Ingress's class: `gce` is GKE's own controller (an external Application Load Balancer with a Google-managed certificate, an HTTPS redirect and container-native load balancing; nothing to install); `alb` is the AWS Load Balancer Controller (an internet-facing ALB sending to the pods, TLS 1.2+ with the ACM `certificate_arn`, an HTTPS redirect; admitted from `edge_cidrs`); any other class is served by the controller the stack installs, with the certificate from cert-manager's `tls_issuer` (`nginx` adds ingress-nginx's redirect and rate limits)").default("\"nginx\""),
        Field::new("certificate_arn", Ty::String, "class `alb`: the ACM certificate the load balancer serves (an aws.acm_certificate's arn); without it the controller looks for an issued ACM certificate of the host").default("\"\""),
        Field::new("waf_acl_arn", Ty::String, "class `alb`: the AWS WAF web ACL in front of the load balancer (an aws.wafv2_web_acl's arn)").default("\"\""),
        Field::new("security_policy", Ty::String, "class `gce`: the Cloud Armor security policy (a gcp.security_policy's name) GKE's load balancer applies to the orchestrator's backend, through a BackendConfig").default("\"\""),
        Field::new("edge_cidrs", Ty::Set(&Ty::Cidr), "class `alb`: the ranges the load balancer's connections to the pods come from (the VPC's), which the NetworkPolicy admits on the app port; empty means the private ranges of RFC 1918").default("[]"),
        Field::new("tls_issuer", Ty::String, "the cert-manager ClusterIssuer").default("\"letsencrypt-prod\""),
        Field::new("ingress_namespace", Ty::String, "the ingress controller's namespace, the only source of traffic the NetworkPolicy admits").default("\"ingress-nginx\""),
        Field::new("monitoring_namespace", Ty::String, "the namespace of the Prometheus that scrapes the pods: the NetworkPolicy admits it on the metrics port").default("\"monitoring\""),
        Field::new("network_policy", Ty::Bool, "make the NetworkPolicy").default("true"),
        Field::new("autoscaling", Ty::Bool, "make the HorizontalPodAutoscaler").default("true"),
        Field::new("max_replicas", Ty::Int, "the autoscaler's maximum").default("10").check(checks::range::<1, 1000>),
        Field::new("target_cpu_percent", Ty::Int, "the autoscaler's CPU target").default("70").check(checks::percent),
        Field::new("target_memory_percent", Ty::Int, "the autoscaler's memory target").default("80").check(checks::percent),
        Field::new("min_available", Ty::Int, "the PodDisruptionBudget's minimum (default: replicas - 1)"),
        Field::new("partition_maintenance", Ty::Bool, "a CronJob that keeps the database's monthly partitions created ahead (ralph.maintain_partitions)").default("true"),
        Field::new("maintenance_schedule", Ty::String, "when it runs (cron syntax, the cluster's time zone)").default("\"15 3 * * *\"").check(checks::cron),
        Field::new("partition_months_ahead", Ty::Int, "how many months ahead it keeps").default("3"),
        Field::new("maintenance_image", Ty::String, "the image with psql it runs").default("\"postgres:15-alpine\""),
        Field::new("monitoring", Ty::Bool, "alert rules and scraping: a PrometheusRule and a ServiceMonitor where the Prometheus Operator runs, else a ConfigMap with alerts.yml and prometheus.yml").default("true"),
        Field::new("scrape_interval", Ty::String, "how often Prometheus scrapes the metrics port").default("\"30s\"").check(prometheus_duration),
        Field::new("alert_for", Ty::String, "how long a condition must hold before an alert fires").default("\"5m\"").check(prometheus_duration),
        Field::new("alert_error_rate", Ty::String, "HighErrorRate: the share of requests answered 5xx over 5 minutes, 0 to 1").default("\"0.05\"").check(ratio),
        Field::new("alert_error_severity", Ty::String, "HighErrorRate's severity label").default("\"critical\""),
        Field::new("alert_memory_percent", Ty::Int, "HighMemoryUsage: a pod's resident memory, in percent of its limit").default("90").check(checks::percent),
        Field::new("alert_memory_severity", Ty::String, "HighMemoryUsage's severity label").default("\"warning\""),
        Field::new("alert_task_seconds", Ty::Int, "LongRunningTask: an orchestration running longer than this").default("14400").check(checks::range::<1, 604800>),
        Field::new("alert_task_severity", Ty::String, "LongRunningTask's severity label").default("\"warning\""),
        Field::new("slo_availability", Ty::String, "the availability objective in percent (the guide's SLA: 99.9); the error-budget burn-rate alerts page when it is being spent 14.4 times too fast (1 h and 5 min windows) and warn at 6 times (6 h and 30 min)").default("\"99.9\"").check(percent_objective),
        Field::new("slo_latency_ms", Ty::Int, "the latency objective: the 95th percentile of request durations in milliseconds (the guide's 500); LatencyP95High warns above it").default("500").check(checks::range::<1, 600000>),
        Field::new("prometheus", Ty::String, "the Prometheus `status` asks, as NAMESPACE/SERVICE:PORT (through the API server's service proxy): whether it loaded the rules, and which alerts fire; empty: the one `monitoring_install` runs, else none").default("\"\""),
        Field::new("alertmanager", Ty::String, "host:port of the Alertmanager prometheus.yml sends alerts to (default: the one `monitoring_install` runs, else alertmanager.MONITORING_NAMESPACE.svc:9093)").default("\"\""),
        Field::new("monitoring_install", Ty::Bool, "run a Prometheus (NAME-prometheus, port 9090) and an Alertmanager (NAME-alertmanager, 9093) in the orchestrator's namespace on the monitoring ConfigMap, under restricted pod security; `status` checks their Deployments and asks that Prometheus which rules it loaded and which alerts fire. Not where the Prometheus Operator runs (its Prometheus takes the PrometheusRule)").default("false"),
        Field::new("prometheus_image", Ty::String, "the image `monitoring_install` runs Prometheus from (pin a digest: `prom/prometheus:v3.5.0@sha256:...`)").default("\"prom/prometheus:v3.5.0\""),
        Field::new("alertmanager_image", Ty::String, "the image `monitoring_install` runs Alertmanager from").default("\"prom/alertmanager:v0.28.1\""),
        Field::new("grafana_install", Ty::Bool, "with `monitoring_install`: a Grafana (NAME-grafana, port 3000) whose data source is the installed Prometheus and which shows the orchestrator's dashboard from its ConfigMap; the `admin` password comes from `grafana_admin_secret`").default("false"),
        Field::new("grafana_image", Ty::String, "the image `grafana_install` runs").default("\"grafana/grafana:12.1.0\""),
        Field::new("grafana_admin_secret", Ty::String, "the secret holding Grafana's admin password (a Secrets Manager ARN, optionally `#key`, a Secret Manager version, or `env:VARIABLE`): copied at apply into the Secret NAME-grafana, never into the state").default("\"\""),
        Field::new("prometheus_port", Ty::Int, "the port the installed Prometheus listens on, and its Service's").default("9090").check(checks::port),
        Field::new("alertmanager_port", Ty::Int, "the port the installed Alertmanager listens on, and its Service's").default("9093").check(checks::port),
        Field::new("prometheus_retention", Ty::String, "how long the installed Prometheus keeps samples").default("\"15d\"").check(prometheus_duration),
        Field::new("alert_group_wait", Ty::String, "how long Alertmanager waits to group a new alert's first notification").default("\"30s\"").check(prometheus_duration),
        Field::new("alert_receivers", Ty::List(&Ty::Object(RECEIVER)), "where Alertmanager sends alerts (the ConfigMap's alertmanager.yml, without the Prometheus Operator): each receiver takes the severities it names, in order; keys are files the Alertmanager mounts from the secret store, never values").default("[]").check(receivers),
        Field::new("templates", Ty::String, "a directory whose files replace the built-in templates of the same name"),
        Field::new("objects", Ty::Set(&Ty::String), "computed: the objects the templates make, as Kind/name").check(computed),
    ])
    .attrs(&[
        Attr::string("id", "namespace/name of the Deployment"),
        Attr::string("image_ref", "the image the Deployment runs"),
        Attr::string("revision", "the Deployment's revision"),
        Attr::string("namespace", "the namespace"),
    ])
    .ordered(&[
        ("replicas", "max_replicas"),
        ("cpu_request", "cpu_limit"),
        ("memory_request", "memory_limit"),
    ]);

pub struct Orchestrator;

fn ns_name(props: &Map<String, Json>) -> (String, String) {
    let get = |k: &str, d: &str| props.get(k).and_then(Json::as_str).unwrap_or(d).to_string();
    (get("namespace", "ralph"), get("name", "ralph-orchestrator"))
}

fn templates_dir(base: &Path, props: &Map<String, Json>) -> Option<std::path::PathBuf> {
    let t = props.get("templates").and_then(Json::as_str)?;
    let p = Path::new(t);
    Some(if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    })
}

/// The objects a resource makes, rendered without a cluster (`render`,
/// and the plan's `objects`): secrets are placeholders.
pub fn render_offline(
    owner: &Owner,
    address: &str,
    base_dir: &Path,
    props: &Map<String, Json>,
    api: ApiVersions,
) -> Result<Vec<render::Rendered>, String> {
    let values = render::values(owner, address, props, api, "", None)?;
    render::render(&values, templates_dir(base_dir, props).as_deref())
}

/// The tag part of an image reference (`repo:tag`), if any.
fn tag_of(image: &str) -> Option<&str> {
    let last = image.rsplit('/').next()?;
    last.split_once(':').map(|x| x.1)
}

/// The stack, environment and address in a Deployment's ownership labels.
fn ownership(d: &Deployment) -> (Option<Owner>, Option<String>) {
    let labels = d.metadata.labels.clone().unwrap_or_default();
    if labels.get(render::LABEL_MANAGED_BY).map(String::as_str) != Some(render::MANAGER) {
        return (None, None);
    }
    let owner = match (
        labels.get(render::LABEL_STACK),
        labels.get(render::LABEL_ENVIRONMENT),
    ) {
        (Some(s), Some(e)) => Some(Owner {
            stack: s.clone(),
            environment: e.clone(),
        }),
        _ => None,
    };
    (
        owner,
        labels
            .get(render::LABEL_RESOURCE)
            .map(|l| ralph_core::model::address::from_label(l)),
    )
}

/// What is left of a rollout, if it has not finished: pods of an older
/// release remain, or the controller says the rollout is under way or
/// stuck. (Scaling alone is not a rollout: all pods belong to the current
/// release, and the Progressing reason stays NewReplicaSetAvailable.)
fn unfinished_rollout(d: &Deployment) -> Option<String> {
    let st = d.status.clone().unwrap_or_default();
    let updated = st.updated_replicas.unwrap_or(0);
    let total = st.replicas.unwrap_or(0);
    let progressing = st
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_.as_deref() == Some("Progressing"))
        .and_then(|c| c.reason);
    if total > updated {
        Some(format!(
            "rollout unfinished: {} old replica(s) left",
            total - updated
        ))
    } else if let Some(r @ ("ReplicaSetUpdated" | "ProgressDeadlineExceeded")) =
        progressing.as_deref()
    {
        Some(format!("rollout unfinished: {r}"))
    } else {
        None
    }
}

/// Refuses to take over a Deployment that another stack, environment or
/// resource deployed (same namespace and name).
async fn check_not_taken(
    cx: &Context,
    client: &kube::Client,
    owner: &Owner,
    address: &str,
    props: &Map<String, Json>,
) -> Result<(), DriverError> {
    let (namespace, name) = ns_name(props);
    super::count(cx);
    let d = match Api::<Deployment>::namespaced(client.clone(), &namespace)
        .get(&name)
        .await
    {
        Ok(d) => d,
        Err(e) if is_not_found(&e) => return Ok(()),
        Err(e) => {
            return Err(super::kube_error(
                &format!("reading Deployment {namespace}/{name}"),
                e,
            ))
        }
    };
    match ownership(&d) {
        (Some(o), Some(a)) if &o == owner && a == address => Ok(()),
        (Some(o), a) => Err(DriverError::new(format!(
            "Deployment {namespace}/{name} belongs to stack `{}` environment `{}` (resource {}): choose another `namespace` or `name`",
            o.stack, o.environment, a.unwrap_or_default()
        ))),
        (None, _) => Ok(()),
    }
}

/// What the cluster runs now, in the shape of the kind's fields: `base` (the
/// props of the last good release) with the live replicas, tag and objects.
async fn observe(
    cx: &Context,
    client: &kube::Client,
    api: &ApiVersions,
    owner: &Owner,
    address: &str,
    base: &Map<String, Json>,
    last_good: Option<&Map<String, Json>>,
) -> Result<Option<Observed>, DriverError> {
    let (namespace, name) = ns_name(base);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    super::count(cx);
    let d = match deployments.get(&name).await {
        Ok(d) => d,
        Err(e) if is_not_found(&e) => return Ok(None),
        Err(e) => {
            return Err(super::kube_error(
                &format!("reading Deployment {namespace}/{name}"),
                e,
            ))
        }
    };
    // A run that died before recording the resource does not know its
    // address: the Deployment's ownership label does.
    let (label_owner, label_address) = ownership(&d);
    let label_address = label_address.unwrap_or_default();
    let address = if address.is_empty() {
        label_address.as_str()
    } else {
        address
    };
    let objects = owned_objects(
        cx,
        client,
        api,
        &namespace,
        &render::ownership_selector(owner, address),
    )
    .await?;
    let mut attrs = base.clone();
    // Carried by the record, not read from the release (see `carry`).
    attrs.remove(STACK_VALUES_ATTR);
    let spec = &d.spec;
    if let Some(r) = spec.replicas {
        // The autoscaler's choice within its range is not drift.
        let r = i64::from(r);
        let shown = if render::effective_replicas(base, Some(r)) == r {
            base.get("replicas").cloned().unwrap_or(Json::from(r))
        } else {
            Json::from(r)
        };
        attrs.insert("replicas".into(), shown);
        attrs.insert("running_replicas".into(), Json::from(r));
    }
    let image = running_image(&d);
    if base.contains_key("tag") || !image.is_empty() {
        if let Some(t) = tag_of(&image) {
            attrs.insert("tag".into(), Json::String(t.to_string()));
        }
    }
    // Objects: the Namespace is not listed by label (it is cluster-wide).
    let mut ids: std::collections::BTreeSet<String> = objects.into_keys().collect();
    ids.insert(format!("Namespace/{namespace}"));
    attrs.insert(
        "objects".into(),
        Json::Array(ids.into_iter().map(Json::String).collect()),
    );
    attrs.insert("id".into(), Json::String(format!("{namespace}/{name}")));
    attrs.insert("image_ref".into(), Json::String(image));
    attrs.insert("namespace".into(), Json::String(namespace.clone()));
    attrs.insert("address".into(), Json::String(address.to_string()));
    let revision = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("deployment.kubernetes.io/revision"))
        .cloned()
        .unwrap_or_default();
    attrs.insert("revision".into(), Json::String(revision));
    // A rollout left unfinished (an apply or deploy killed while waiting)
    // reads as not ready: the plan shows it and the next apply finishes or
    // rolls back that rollout. Pods that come and go later do not count.
    match unfinished_rollout(&d) {
        Some(status) => {
            attrs.insert(ralph_core::driver::READY_ATTR.into(), Json::Bool(false));
            attrs.insert(ralph_core::driver::STATUS_ATTR.into(), Json::String(status));
        }
        None => {
            attrs.insert(ralph_core::driver::READY_ATTR.into(), Json::Bool(true));
        }
    }
    if let Some(good) = last_good {
        attrs.insert("last_good".into(), Json::Object(good.clone()));
    }
    Ok(Some(Observed {
        address: (!label_address.is_empty()).then(|| label_address.clone()),
        owner: label_owner,
        id: format!("{namespace}/{name}"),
        attrs,
    }))
}

/// The image of the Deployment's `orchestrator` container.
fn running_image(d: &Deployment) -> String {
    d.spec
        .template
        .spec
        .as_ref()
        .and_then(|p| p.containers.iter().find(|c| c.name == "orchestrator"))
        .and_then(|c| c.image.clone())
        .unwrap_or_default()
}

/// Container states that will not fix themselves within a rollout.
const STUCK: &[&str] = &[
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// Why a rollout cannot finish, from the Deployment's conditions and its
/// new pods' container states.
async fn rollout_problem(
    cx: &Context,
    client: &kube::Client,
    d: &Deployment,
    image: &str,
) -> Result<Option<String>, DriverError> {
    let conditions = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if let Some(c) = conditions.iter().find(|c| {
        c.type_.as_deref() == Some("Progressing")
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return Ok(Some(format!(
            "ProgressDeadlineExceeded: {}",
            c.message.clone().unwrap_or_default().trim_end_matches('.')
        )));
    }
    let namespace = d.metadata.namespace.clone().unwrap_or_default();
    let selector = d
        .spec
        .selector
        .match_labels
        .clone()
        .unwrap_or_default()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    // Read only when a pod is stuck: a healthy rollout's polls ask nothing more.
    let mut current: Option<Option<String>> = None;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    super::count(cx);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| super::kube_error("listing the rollout's pods", e))?;
    for p in &list.items {
        for cs in p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default()
        {
            if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
                let reason = w.reason.clone().unwrap_or_default();
                if !STUCK.contains(&reason.as_str()) {
                    continue;
                }
                // Only the pods of the Deployment's current template count
                // (an old one, still terminating, may run the same image: a
                // rollback, a change of configuration only); by image where
                // the template cannot be told.
                if current.is_none() {
                    current = Some(current_template_hash(cx, client, d, &selector).await?);
                }
                let runs_new = match current.as_ref().and_then(Option::as_ref) {
                    Some(hash) => {
                        p.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get("pod-template-hash"))
                            == Some(hash)
                    }
                    None => p.spec.as_ref().is_some_and(|s| {
                        s.containers
                            .iter()
                            .any(|c| c.image.as_deref() == Some(image))
                    }),
                };
                if runs_new {
                    return Ok(Some(format!(
                        "pod {} is {reason}: {}",
                        p.metadata.name.clone().unwrap_or_default(),
                        w.message
                            .clone()
                            .unwrap_or_else(|| format!("image {image}"))
                    )));
                }
            }
        }
    }
    Ok(None)
}

/// The `pod-template-hash` of the Deployment's current ReplicaSet (the one
/// of its revision), if the controller has made it.
async fn current_template_hash(
    cx: &Context,
    client: &kube::Client,
    d: &Deployment,
    selector: &str,
) -> Result<Option<String>, DriverError> {
    use k8s_openapi::api::apps::v1::ReplicaSet;
    const REVISION: &str = "deployment.kubernetes.io/revision";
    let Some(revision) = d
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
    else {
        return Ok(None);
    };
    let namespace = d.metadata.namespace.clone().unwrap_or_default();
    super::count(cx);
    let sets = Api::<ReplicaSet>::namespaced(client.clone(), &namespace)
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| super::kube_error("listing the rollout's ReplicaSets", e))?;
    Ok(sets
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| Some(&o.uid) == d.metadata.uid.as_ref())
        })
        .find(|rs| {
            rs.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION))
                == Some(revision)
        })
        .and_then(|rs| rs.metadata.labels?.remove("pod-template-hash")))
}

/// How often a rollout's wait looks again without a change of its Deployment.
const ROLLOUT_RECHECK: Duration = Duration::from_secs(1);

/// Waits until the Deployment's generation `generation` is rolled out:
/// the controller has seen it, every replica is updated and available, and
/// no old replica remains. Fails at once on a rollout that cannot finish.
async fn wait_rollout(
    cx: &Context,
    client: &kube::Client,
    address: &str,
    namespace: &str,
    name: &str,
    generation: i64,
    image: &str,
    timeout: Duration,
) -> Result<(), DriverError> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    // The Deployment's changes end each pause at once (the controller
    // writes its status as replicas move); a look each second catches a pod
    // stuck on its image or its configuration, which the Deployment does
    // not show until its progress deadline.
    let wake = super::changes(cx, deployments.clone(), name);
    let what = format!("the rollout of {image}");
    cx.wait_until_woken(address, &what, timeout, ROLLOUT_RECHECK, wake, || {
        let deployments = deployments.clone();
        async move {
            super::count(cx);
            let d = deployments.get(name).await.map_err(|e| {
                super::kube_error(&format!("reading Deployment {namespace}/{name}"), e)
            })?;
            let st = d.status.clone().unwrap_or_default();
            if st.observed_generation.unwrap_or(0) < generation {
                return Ok((None, "waiting for the deployment controller".to_string()));
            }
            if let Some(problem) = rollout_problem(cx, client, &d, image).await? {
                return Err(DriverError::new(problem));
            }
            let want = d.spec.replicas.unwrap_or(1);
            let updated = st.updated_replicas.unwrap_or(0);
            let available = st.available_replicas.unwrap_or(0);
            let total = st.replicas.unwrap_or(0);
            let status = format!("{updated}/{want} updated, {available}/{want} available");
            if updated < want || total > updated || available < updated {
                let status = if total > updated && updated >= want {
                    format!("{} old replica(s) terminating", total - updated)
                } else {
                    status
                };
                return Ok((None, status));
            }
            Ok((Some(()), status))
        }
    })
    .await
}

/// One release, rendered and with its secrets read, ready to apply.
struct Release {
    api: ApiVersions,
    values: render::Values,
    objects: Vec<render::Rendered>,
}

/// Everything that can fail before the cluster is touched: the secrets,
/// the templates.
async fn prepare(
    cx: &Context,
    api: &ApiVersions,
    owner: &Owner,
    address: &str,
    props: &Map<String, Json>,
    running: Option<i64>,
) -> Result<Release, DriverError> {
    // The orchestrator's secrets and the alert receivers' keys, all read at once.
    let receivers = render::receiver_keys(props);
    let ((secret_values, secrets_version), keys) = futures::future::try_join(
        read_secrets(cx, props),
        futures::future::try_join_all(receivers.iter().map(|(receiver, source)| async move {
            let what = format!("the key of alert receiver `{receiver}`");
            let (value, _) = crate::read_secret_source(cx, &what, source).await?;
            Ok::<_, DriverError>((receiver.clone(), value))
        })),
    )
    .await?;
    let values = render::values(
        owner,
        address,
        props,
        api.clone(),
        &secrets_version,
        running,
    )
    .map_err(DriverError::new)?;
    let mut objects = render::render(&values, templates_dir(&cx.base_dir, props).as_deref())
        .map_err(DriverError::new)?;
    let receiver_keys: std::collections::BTreeMap<String, String> = keys.into_iter().collect();
    let mut grafana = std::collections::BTreeMap::new();
    if values.monitoring.install.grafana {
        let source = props
            .get("grafana_admin_secret")
            .and_then(Json::as_str)
            .unwrap_or_default();
        let (value, _) = crate::read_secret_source(cx, "Grafana's admin password", source).await?;
        grafana.insert("admin-password".to_string(), value);
    }
    let keys_secret = format!("{}-alertmanager-keys", values.name);
    let grafana_secret = format!("{}-grafana", values.name);
    for o in objects.iter_mut().filter(|o| o.kind() == "Secret") {
        let from = if o.name() == keys_secret {
            &receiver_keys
        } else if o.name() == grafana_secret {
            &grafana
        } else {
            &secret_values
        };
        let data: Map<String, Json> = from
            .iter()
            .map(|(k, v)| (k.clone(), Json::String(v.clone())))
            .collect();
        o.object["stringData"] = Json::Object(data);
    }
    Ok(Release {
        api: api.clone(),
        values,
        objects,
    })
}

/// Applies every object of a release, prunes what it no longer has, and
/// waits for the rollout: the orchestrator's Deployment first, then the
/// others the release has (monitoring_install's Prometheus, Alertmanager
/// and Grafana), so a release whose Prometheus cannot start (a rule it
/// refuses, an image it cannot pull) fails and is rolled back whole.
async fn roll_out(
    cx: &Context,
    client: &kube::Client,
    owner: &Owner,
    address: &str,
    release: &Release,
    timeout: Duration,
) -> Result<(), DriverError> {
    let mut generation = 0;
    let mut others = Vec::new();
    // In three waves, each applied at once: the namespace; what the pods
    // read (accounts, configuration, secrets) and everything else; then
    // the workloads, whose first pods find all of it there.
    let wave = |o: &render::Rendered| match o.kind() {
        "Namespace" => 0,
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "CronJob"
        | "Job"
        | "HorizontalPodAutoscaler" => 2,
        _ => 1,
    };
    for w in 0..3 {
        let applied =
            futures::future::try_join_all(release.objects.iter().filter(|o| wave(o) == w).map(
                |o| async move {
                    Ok::<_, DriverError>((o, server_side_apply(cx, client, &o.object).await?))
                },
            ))
            .await?;
        for (o, applied) in applied {
            if o.kind() != "Deployment" {
                continue;
            }
            let g = applied.metadata.generation.unwrap_or(0);
            if o.name() == release.values.name {
                generation = g;
            } else {
                let image = o.object["spec"]["template"]["spec"]["containers"][0]["image"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                others.push((o.name().to_string(), g, image));
            }
        }
    }
    let keep = super::object_ids(&release.objects);
    let values = &release.values;
    let selector = render::ownership_selector(owner, address);
    for id in prune(
        cx,
        client,
        &release.api,
        &values.namespace,
        &selector,
        &keep,
    )
    .await?
    {
        cx.reporter.report(ralph_core::events::Event::Warning {
            message: format!("{address}: pruned {id}, which the stack no longer declares"),
        });
    }
    wait_rollout(
        cx,
        client,
        address,
        &values.namespace,
        &values.name,
        generation,
        &values.image,
        timeout,
    )
    .await?;
    for (name, generation, image) in others {
        wait_rollout(
            cx,
            client,
            address,
            &values.namespace,
            &name,
            generation,
            &image,
            timeout,
        )
        .await?;
    }
    Ok(())
}

/// `ingress_class: gce` with a host needs GKE's own Ingress controller,
/// which only a GKE cluster serves.
fn gke_ingress_served(
    api: &ApiVersions,
    props: &Map<String, Json>,
    address: &str,
) -> Result<(), DriverError> {
    let gce = props.get("ingress_class").and_then(Json::as_str) == Some("gce");
    if gce
        && !api.gke_ingress
        && props
            .get("ingress_host")
            .and_then(Json::as_str)
            .is_some_and(|h| !h.is_empty())
    {
        return Err(DriverError::new(format!(
            "{}: ingress_class `gce` is GKE's own Ingress controller, but this cluster does not serve networking.gke.io (ManagedCertificate, FrontendConfig): it is not a GKE cluster. Set ingress_class to the class of the controller the stack installs",
            address
        )));
    }
    Ok(())
}

/// The release `props` (completing the tag from the one running), rolled
/// back to `last_good` when its rollout fails.
/// What the Deployment does not hold and the record carries from one
/// reading to the next: the release before the last good one (for
/// `rollback`) and the stack values a release stands over.
fn carry(o: &mut Observed, recorded: &Map<String, Json>) {
    for key in ["previous_good", STACK_VALUES_ATTR] {
        if let Some(v) = recorded.get(key) {
            o.attrs.insert(key.into(), v.clone());
        }
    }
}

/// A release (`deploy --image`, `rollback`) stands over the image the
/// stack still asks for ([`STACK_VALUES_ATTR`]): an apply of other changes
/// keeps the release's image. A release's own props already say so.
fn keep_release(props: &mut Map<String, Json>, have: Option<&Observed>) {
    if props.contains_key(STACK_VALUES_ATTR) {
        return;
    }
    let Some(have) = have else { return };
    let wanted = props.clone();
    // Unless the stack set an image of its own: that one rolls out.
    let Some(over) = ralph_core::driver::standing_release(&have.attrs, |f| wanted.get(f)) else {
        return;
    };
    for field in over.keys() {
        let released = last_good_of(have)
            .and_then(|g| g.get(field))
            .or(have.attrs.get(field));
        if let Some(v) = released {
            props.insert(field.clone(), v.clone());
        }
    }
    props.insert(STACK_VALUES_ATTR.into(), Json::Object(over.clone()));
}

fn last_good_of(have: &Observed) -> Option<&Map<String, Json>> {
    have.attrs.get("last_good").and_then(Json::as_object)
}

async fn deploy(
    cx: &Context,
    want: &Desired<'_>,
    have: Option<&Observed>,
    timeout: Duration,
) -> Result<Observed, DriverError> {
    let mut props = want.props.clone();
    keep_release(&mut props, have);
    if !props.contains_key("tag") {
        if let Some(t) = have
            .and_then(|h| h.attrs.get("tag"))
            .filter(|t| t.is_string())
        {
            props.insert("tag".into(), t.clone());
        }
    }
    if render::image_ref(&props).is_none() {
        return Err(DriverError::new("no image tag to deploy: set `tag` in the stack, or run `ralph-deploy deploy STACK --image TAG`"));
    }
    let last_good: Option<Map<String, Json>> = have
        .and_then(|h| h.attrs.get("last_good"))
        .and_then(Json::as_object)
        .cloned();
    let running = have
        .and_then(|h| h.attrs.get("running_replicas"))
        .and_then(Json::as_i64);
    let client = connect(cx, &props).await?;
    // A recorded release is ours whatever its labels say (they name the
    // address it had before a `moved`, until this apply relabels it).
    if have.is_none() {
        check_not_taken(cx, &client, want.owner, want.address, &props).await?;
    }
    // One discovery serves the release, a rollback and the read-back.
    let api = discover(cx, &client).await?;
    gke_ingress_served(&api, &props, want.address)?;
    let next = prepare(cx, &api, want.owner, want.address, &props, running).await?;
    let outcome = roll_out(cx, &client, want.owner, want.address, &next, timeout).await;
    let failure = match outcome {
        Ok(()) => {
            let mut o = observe(
                cx,
                &client,
                &api,
                want.owner,
                want.address,
                &props,
                Some(&props),
            )
            .await?
            .ok_or_else(|| {
                DriverError::new("the Deployment disappeared right after its rollout")
            })?;
            // The release before this one, for `ralph-deploy rollback`.
            let previous = match &last_good {
                Some(good) if good != &props => Some(Json::Object(good.clone())),
                _ => have.and_then(|h| h.attrs.get("previous_good")).cloned(),
            };
            if let Some(p) = previous {
                o.attrs.insert("previous_good".into(), p);
            }
            if let Some(over) = props.get(STACK_VALUES_ATTR) {
                o.attrs.insert(STACK_VALUES_ATTR.into(), over.clone());
            }
            return Ok(o);
        }
        Err(e) => e,
    };
    let image = render::image_ref(&props).unwrap_or_default();
    let interrupted = cx.stop.load(std::sync::atomic::Ordering::SeqCst);
    let (message, base) = match &last_good {
        _ if interrupted => (failure.message.clone(), last_good.clone()),
        Some(good) if good != &props => {
            let previous = render::image_ref(good).unwrap_or_default();
            cx.reporter.report(ralph_core::events::Event::Warning {
                message: format!("{}: the rollout of {image} failed ({}); rolling back to {previous}", want.address, failure.message),
            });
            let back = match prepare(cx, &api, want.owner, want.address, good, running).await {
                Ok(back) => roll_out(cx, &client, want.owner, want.address, &back, timeout).await,
                Err(e) => Err(e),
            };
            match back {
                Ok(()) => (
                    format!("the rollout of {image} failed: {}. Rolled back to the last good release ({previous}), which is available again", failure.message),
                    Some(good.clone()),
                ),
                Err(e) => (
                    format!("the rollout of {image} failed: {}; the rollback to {previous} failed too: {}", failure.message, e.message),
                    Some(good.clone()),
                ),
            }
        }
        _ => (
            format!("the rollout of {image} failed: {}; there is no earlier good release to roll back to", failure.message),
            None,
        ),
    };
    let base_props = base.clone().unwrap_or_else(|| props.clone());
    let mut err = DriverError::new(message);
    if let Some(mut obs) = observe(
        cx,
        &client,
        &api,
        want.owner,
        want.address,
        &base_props,
        base.as_ref(),
    )
    .await?
    {
        if let Some(h) = have {
            carry(&mut obs, &h.attrs);
        }
        err = err.with_partial(obs);
    }
    Err(err)
}

#[async_trait::async_trait]
impl Driver for Orchestrator {
    fn roles(&self) -> &'static [ralph_core::driver::capability::Role] {
        &[ralph_core::driver::capability::Role::Orchestrator]
    }

    fn restarts(&self) -> Option<&dyn ralph_core::driver::capability::Restarts> {
        Some(self)
    }

    fn schema(&self) -> &'static KindSchema {
        &SCHEMA
    }

    fn typical_seconds(&self) -> u64 {
        120
    }

    fn normalize(&self, base_dir: &Path, props: &mut Map<String, Json>) -> Result<(), String> {
        // The objects the templates make (their kinds and names do not
        // depend on the tag or on the cluster's API versions).
        let mut p = props.clone();
        p.entry("tag").or_insert(Json::String("0".into()));
        let owner = Owner {
            stack: String::new(),
            environment: String::new(),
        };
        let objects = render_offline(&owner, "", base_dir, &p, ApiVersions::modern())
            .map_err(|e| e.to_string())?;
        props.insert(
            "objects".into(),
            Json::Array(
                super::object_ids(&objects)
                    .into_iter()
                    .map(Json::String)
                    .collect(),
            ),
        );
        Ok(())
    }

    async fn refresh(&self, cx: &Context, known: &[Known]) -> Result<Vec<Observed>, DriverError> {
        let mut out = Vec::new();
        for k in known.iter().filter(|k| !k.inputs.is_empty()) {
            // What is live is the last good release (a failed rollout was
            // rolled back), so that is what the stack is compared with.
            let last_good = k.attrs.get("last_good").and_then(Json::as_object);
            let base = last_good.unwrap_or(&k.inputs);
            let address = k
                .attrs
                .get("address")
                .and_then(Json::as_str)
                .unwrap_or_default();
            let client = connect(cx, &k.inputs).await?;
            let api = discover(cx, &client).await?;
            if let Some(mut o) =
                observe(cx, &client, &api, &cx.owner, address, base, last_good).await?
            {
                // `o.id` is namespace/name, as recorded (recovery has no id).
                carry(&mut o, &k.attrs);
                out.push(o);
            }
        }
        Ok(out)
    }

    async fn create(&self, cx: &Context, want: &Desired<'_>) -> Result<Observed, DriverError> {
        let timeout = want.timeouts.create_or(Duration::from_secs(20 * 60));
        deploy(cx, want, None, timeout).await
    }

    async fn update(&self, cx: &Context, u: Update<'_>) -> Result<Observed, DriverError> {
        let Update { want, have, .. } = u;
        let timeout = want.timeouts.update_or(Duration::from_secs(20 * 60));
        deploy(cx, want, Some(have), timeout).await
    }

    async fn delete(&self, cx: &Context, d: Delete<'_>) -> Result<(), DriverError> {
        let client = connect(cx, &d.have.attrs).await?;
        let address = d
            .have
            .attrs
            .get("address")
            .and_then(Json::as_str)
            .unwrap_or_default();
        let (namespace, _) = ns_name(&d.have.attrs);
        let api = discover(cx, &client).await?;
        let selector = render::ownership_selector(&cx.owner, address);
        prune(
            cx,
            &client,
            &api,
            &namespace,
            &selector,
            &Default::default(),
        )
        .await?;
        // The namespace goes too, when this resource made it.
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        super::count(cx);
        let ns = match namespaces.get(&namespace).await {
            Ok(ns) => ns,
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => {
                return Err(super::kube_error(
                    &format!("reading namespace {namespace}"),
                    e,
                ))
            }
        };
        let labels = ns.metadata.labels.unwrap_or_default();
        let ours = labels.get(render::LABEL_STACK) == Some(&cx.owner.stack)
            && labels.get(render::LABEL_ENVIRONMENT) == Some(&cx.owner.environment)
            && labels.get(render::LABEL_RESOURCE)
                == Some(&ralph_core::model::address::to_label(address));
        if !ours {
            return Ok(());
        }
        super::count(cx);
        match namespaces
            .delete(&namespace, &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            Err(e) => {
                return Err(super::kube_error(
                    &format!("deleting namespace {namespace}"),
                    e,
                ))
            }
        }
        let timeout = d.timeouts.delete_or(Duration::from_secs(10 * 60));
        cx.wait_until(
            address,
            &format!("namespace {namespace} to be gone"),
            timeout,
            || {
                let namespaces = namespaces.clone();
                let namespace = namespace.clone();
                async move {
                    super::count(cx);
                    match namespaces.get(&namespace).await {
                        Err(e) if is_not_found(&e) => Ok((Some(()), "gone".to_string())),
                        Err(e) => Err(super::kube_error(
                            &format!("reading namespace {namespace}"),
                            e,
                        )),
                        Ok(_) => Ok((None, "terminating".to_string())),
                    }
                }
            },
        )
        .await
    }
}

/// The field manager of restarts: the annotation it sets is not the stack's,
/// so the next server-side apply of the release leaves it (and the pods) be.
const RESTART_MANAGER: &str = "ralph-deploy-restart";
/// Pod template annotation whose change rolls the pods (what
/// `kubectl rollout restart` does with its own).
pub const RESTARTED_AT: &str = "ralph-deploy.io/restarted-at";

/// Rolls the recorded release's pods without changing the release (after a
/// database failover: every pod reconnects to the new primary) and waits
/// for the rollout. `known` is the resource as the state records it.
#[async_trait::async_trait]
impl ralph_core::driver::capability::Restarts for Orchestrator {
    async fn restart(
        &self,
        cx: &Context,
        address: &str,
        known: &Known,
        reason: &str,
        timeout: Duration,
    ) -> Result<Observed, DriverError> {
        restart(cx, address, known, reason, timeout).await
    }
}

async fn restart(
    cx: &Context,
    address: &str,
    known: &Known,
    reason: &str,
    timeout: Duration,
) -> Result<Observed, DriverError> {
    let last_good = known.attrs.get("last_good").and_then(Json::as_object);
    let base = last_good.unwrap_or(&known.inputs);
    let (namespace, name) = ns_name(base);
    let client = connect(cx, &known.inputs).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let patch = serde_json::json!({
        "spec": {"template": {"metadata": {"annotations": {
            RESTARTED_AT: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "ralph-deploy.io/restart-reason": reason,
        }}}}
    });
    super::count(cx);
    let d = deployments
        .patch(
            &name,
            &kube::api::PatchParams {
                field_manager: Some(RESTART_MANAGER.into()),
                ..Default::default()
            },
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .map_err(|e| super::kube_error(&format!("restarting Deployment {namespace}/{name}"), e))?;
    let image = running_image(&d);
    wait_rollout(
        cx,
        &client,
        address,
        &namespace,
        &name,
        d.metadata.generation.unwrap_or(0),
        &image,
        timeout,
    )
    .await?;
    let api = discover(cx, &client).await?;
    let mut o = observe(cx, &client, &api, &cx.owner, address, base, last_good)
        .await?
        .ok_or_else(|| {
            DriverError::new(format!(
                "Deployment {namespace}/{name} disappeared during its restart"
            ))
        })?;
    carry(&mut o, &known.attrs);
    Ok(o)
}
