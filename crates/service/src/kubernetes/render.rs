//! From a `kubernetes.orchestrator` resource's properties to Kubernetes
//! objects: the properties become one [`Values`] context, every template of
//! `templates/` is rendered with it (minijinja), and each non-empty result is
//! parsed as one object. Nothing here talks to a cluster; the API versions
//! that differ between Kubernetes releases come in as [`ApiVersions`].

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value as Json};
use sha2::Digest;

use crate::given as set;

/// The templates compiled into the binary, in the order objects are applied
/// (what others refer to first, the Deployment after its config, the
/// autoscaler after the Deployment).
pub const TEMPLATES: &[(&str, &str)] = &[
    (
        "namespace.yaml",
        include_str!("../../../../templates/namespace.yaml"),
    ),
    (
        "serviceaccount.yaml",
        include_str!("../../../../templates/serviceaccount.yaml"),
    ),
    (
        "configmap.yaml",
        include_str!("../../../../templates/configmap.yaml"),
    ),
    (
        "ca-configmap.yaml",
        include_str!("../../../../templates/ca-configmap.yaml"),
    ),
    (
        "secret.yaml",
        include_str!("../../../../templates/secret.yaml"),
    ),
    (
        "service.yaml",
        include_str!("../../../../templates/service.yaml"),
    ),
    (
        "networkpolicy.yaml",
        include_str!("../../../../templates/networkpolicy.yaml"),
    ),
    (
        "poddisruptionbudget.yaml",
        include_str!("../../../../templates/poddisruptionbudget.yaml"),
    ),
    (
        "deployment.yaml",
        include_str!("../../../../templates/deployment.yaml"),
    ),
    (
        "horizontalpodautoscaler.yaml",
        include_str!("../../../../templates/horizontalpodautoscaler.yaml"),
    ),
    (
        "ingress.yaml",
        include_str!("../../../../templates/ingress.yaml"),
    ),
    (
        "managedcertificate.yaml",
        include_str!("../../../../templates/managedcertificate.yaml"),
    ),
    (
        "frontendconfig.yaml",
        include_str!("../../../../templates/frontendconfig.yaml"),
    ),
    (
        "backendconfig.yaml",
        include_str!("../../../../templates/backendconfig.yaml"),
    ),
    (
        "dashboard-configmap.yaml",
        include_str!("../../../../templates/dashboard-configmap.yaml"),
    ),
    (
        "cronjob.yaml",
        include_str!("../../../../templates/cronjob.yaml"),
    ),
    (
        "metrics-service.yaml",
        include_str!("../../../../templates/metrics-service.yaml"),
    ),
    (
        "monitoring-configmap.yaml",
        include_str!("../../../../templates/monitoring-configmap.yaml"),
    ),
    (
        "prometheusrule.yaml",
        include_str!("../../../../templates/prometheusrule.yaml"),
    ),
    (
        "servicemonitor.yaml",
        include_str!("../../../../templates/servicemonitor.yaml"),
    ),
    (
        "monitoring-serviceaccount.yaml",
        include_str!("../../../../templates/monitoring-serviceaccount.yaml"),
    ),
    (
        "prometheus-deployment.yaml",
        include_str!("../../../../templates/prometheus-deployment.yaml"),
    ),
    (
        "prometheus-service.yaml",
        include_str!("../../../../templates/prometheus-service.yaml"),
    ),
    (
        "alertmanager-keys-secret.yaml",
        include_str!("../../../../templates/alertmanager-keys-secret.yaml"),
    ),
    (
        "alertmanager-deployment.yaml",
        include_str!("../../../../templates/alertmanager-deployment.yaml"),
    ),
    (
        "alertmanager-service.yaml",
        include_str!("../../../../templates/alertmanager-service.yaml"),
    ),
    (
        "grafana-configmap.yaml",
        include_str!("../../../../templates/grafana-configmap.yaml"),
    ),
    (
        "grafana-secret.yaml",
        include_str!("../../../../templates/grafana-secret.yaml"),
    ),
    (
        "grafana-deployment.yaml",
        include_str!("../../../../templates/grafana-deployment.yaml"),
    ),
    (
        "grafana-service.yaml",
        include_str!("../../../../templates/grafana-service.yaml"),
    ),
];

/// Ownership labels: prune deletes only objects that carry all three with
/// this stack's values, so it never touches what the tool did not create.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_STACK: &str = "ralph-deploy.io/stack";
pub const LABEL_ENVIRONMENT: &str = "ralph-deploy.io/environment";
pub const LABEL_RESOURCE: &str = "ralph-deploy.io/resource";
pub const MANAGER: &str = "ralph-deploy";

/// API versions that moved between Kubernetes releases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiVersions {
    /// autoscaling/v2 (1.23+) or autoscaling/v2beta2.
    pub hpa: String,
    /// policy/v1 (1.21+) or policy/v1beta1.
    pub pdb: String,
    /// batch/v1 (1.21+) or batch/v1beta1 for CronJob.
    pub cronjob: String,
    /// The Prometheus Operator's monitoring.coreos.com/v1 is served:
    /// alert rules and scraping go in as PrometheusRule and ServiceMonitor,
    /// else as a ConfigMap holding the rule file and the scrape config.
    pub prometheus_operator: bool,
    /// GKE's networking.gke.io (ManagedCertificate, FrontendConfig) is
    /// served: the `gce` Ingress class can have its certificate and redirect.
    pub gke_ingress: bool,
}

impl ApiVersions {
    /// What a current cluster (1.25 and later) serves.
    pub fn modern() -> ApiVersions {
        ApiVersions {
            hpa: "autoscaling/v2".into(),
            pdb: "policy/v1".into(),
            cronjob: "batch/v1".into(),
            prometheus_operator: false,
            gke_ingress: false,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Rollout {
    pub max_surge: i64,
    pub max_unavailable: i64,
    pub progress_deadline_seconds: i64,
}

#[derive(Debug, Serialize)]
pub struct Resources {
    pub cpu_request: String,
    pub memory_request: String,
    pub cpu_limit: String,
    pub memory_limit: String,
}

/// RFC 1918: where a VPC's addresses are, unless it says otherwise.
const PRIVATE_RANGES: [&str; 3] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];

#[derive(Debug, Serialize)]
pub struct Ingress {
    pub host: Option<String>,
    pub class: String,
    pub tls_issuer: String,
    pub rate_limit_rpm: i64,
    pub rate_limit_connections: i64,
    /// `alb`: the ACM certificate the load balancer's HTTPS listener serves.
    pub certificate_arn: Option<String>,
    /// `alb`: where the load balancer's connections to the pods come from.
    pub edge_cidrs: Vec<String>,
    /// `alb`: the AWS WAF web ACL in front of the load balancer.
    pub waf_acl_arn: Option<String>,
    /// `gce`: the Cloud Armor policy on the backend (a BackendConfig).
    pub security_policy: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct NetworkPolicy {
    pub enabled: bool,
    pub ingress_namespace: String,
    pub monitoring_namespace: String,
    /// The ports of the stores the pods' DATABASE_URL and REDIS_URL name
    /// (Memorystore with TLS listens on 6378, not 6379), which egress admits.
    pub store_ports: Vec<u16>,
}

/// The port of a store URL: its own, else its scheme's (PostgreSQL 5432,
/// Redis 6379).
fn store_port(url: &str, default: u16) -> u16 {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.port())
        .unwrap_or(default)
}

#[derive(Debug, Serialize)]
pub struct Autoscaling {
    pub enabled: bool,
    pub min_replicas: i64,
    pub max_replicas: i64,
    pub cpu_percent: i64,
    pub memory_percent: i64,
}

#[derive(Debug, Serialize)]
pub struct Pdb {
    pub min_available: i64,
}

/// The CronJob that keeps the database's monthly partitions ahead.
#[derive(Debug, Serialize)]
pub struct Maintenance {
    pub enabled: bool,
    pub schedule: String,
    pub months_ahead: i64,
    pub image: String,
}

/// Prometheus scraping and the alert rules, rendered here (not in the
/// templates) so that each is a document Prometheus and promtool read.
#[derive(Debug, Serialize)]
pub struct Monitoring {
    pub enabled: bool,
    pub scrape_interval: String,
    /// `{groups: [...]}`, a Prometheus rule file.
    pub rules: Json,
    /// The same, as YAML text (the ConfigMap's `alerts.yml`).
    pub rules_yaml: String,
    /// A Prometheus configuration that scrapes the pods' metrics port and
    /// loads `alerts.yml` (the ConfigMap's `prometheus.yml`).
    pub config_yaml: String,
    /// Alertmanager's routes and receivers (`alertmanager.yml`).
    pub alertmanager_yaml: String,
    /// The Grafana dashboard, as JSON text.
    pub dashboard_json: String,
    /// Prometheus and Alertmanager run beside the pods, on this ConfigMap.
    pub install: MonitoringInstall,
}

/// The Prometheus and Alertmanager the orchestrator brings along
/// (`monitoring_install`), in its namespace, reading its ConfigMap.
#[derive(Debug, Clone, Serialize)]
pub struct MonitoringInstall {
    pub enabled: bool,
    pub prometheus_image: String,
    pub alertmanager_image: String,
    /// How long Prometheus keeps samples.
    pub retention: String,
    /// The ports they listen on (and their Services').
    pub prometheus_port: i64,
    pub alertmanager_port: i64,
    /// Receivers whose key the Secret `NAME-alertmanager-keys` holds.
    pub receiver_keys: Vec<String>,
    pub receiver_keys_dir: &'static str,
    /// A Grafana on this Prometheus, showing the dashboard.
    pub grafana: bool,
    pub grafana_image: String,
    pub grafana_labels: BTreeMap<String, String>,
    pub grafana_selector: BTreeMap<String, String>,
    /// Its provisioning: the data source and the dashboard provider.
    pub grafana_datasources_yaml: String,
    pub grafana_dashboards_yaml: String,
    pub grafana_hash: String,
    pub grafana_dashboards_dir: &'static str,
    /// Hashes of what each reads, so a change restarts it.
    pub prometheus_hash: String,
    pub alertmanager_hash: String,
    /// Their pods' labels (the ownership labels, and a name of their own so
    /// the orchestrator's Services never select them) and selectors.
    pub prometheus_labels: BTreeMap<String, String>,
    pub prometheus_selector: BTreeMap<String, String>,
    pub alertmanager_labels: BTreeMap<String, String>,
    pub alertmanager_selector: BTreeMap<String, String>,
}

/// Where `status` asks Prometheus, as NAMESPACE/SERVICE:PORT: the stack's
/// `prometheus` (for the one `monitoring_install` runs,
/// `NAMESPACE/NAME-prometheus:PORT`), else nowhere.
/// The Prometheus `status` asks: the one `prometheus` names, else the one
/// `monitoring_install` runs (with monitoring on), else none.
pub fn prometheus_target(props: &Map<String, Json>) -> Option<String> {
    let named = s(props, "prometheus", "");
    if !named.is_empty() {
        return Some(named);
    }
    (b(props, "monitoring", true) && b(props, "monitoring_install", false)).then(|| {
        format!(
            "{}/{}-prometheus:{}",
            s(props, "namespace", "ralph"),
            s(props, "name", "ralph-orchestrator"),
            i(props, "prometheus_port", 9090)
        )
    })
}

/// Bytes in a Kubernetes memory quantity such as `8Gi` or `512M`.
pub fn memory_bytes(q: &str) -> Option<u64> {
    let units: [(&str, u64); 8] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
    ];
    for (suffix, factor) in units {
        if let Some(n) = q.strip_suffix(suffix) {
            return n.parse::<u64>().ok()?.checked_mul(factor);
        }
    }
    q.parse().ok()
}

/// The guide's alerts (HighErrorRate, HighMemoryUsage, LongRunningTask),
/// with the stack's thresholds, durations and severities, and the SLO's:
/// error-budget burn rates over two windows each (the availability
/// objective), the 95th percentile latency, and the orchestrator down.
///
/// Series are chosen by the `namespace` and `service` labels, which both
/// ways of scraping set: the Prometheus Operator from the ServiceMonitor's
/// Service, prometheus.yml by relabelling. (DNS discovery knows no pod
/// names, so a `pod` matcher would never match there.)
pub fn alert_rules(props: &Map<String, Json>, name: &str, namespace: &str) -> Json {
    let sel = format!("namespace={namespace:?}, service={name:?}");
    let memory_limit = memory_bytes(&s(props, "memory_limit", "8Gi")).unwrap_or(8 << 30);
    let memory_percent = i(props, "alert_memory_percent", 90);
    let error_ratio = s(props, "alert_error_rate", "0.05");
    let task_seconds = i(props, "alert_task_seconds", 14400);
    let pending = s(props, "alert_for", "5m");
    let objective = s(props, "slo_availability", "99.9")
        .parse::<f64>()
        .unwrap_or(99.9);
    let budget = error_budget(props);
    let latency = i(props, "slo_latency_ms", 500) as f64 / 1000.0;
    let rule = |alert: &str, expr: String, wait: &str, severity: &str, summary: String| {
        serde_json::json!({
            "alert": alert,
            "expr": expr,
            "for": wait,
            "labels": {"severity": severity, "service": name},
            "annotations": {"summary": summary},
        })
    };
    let errors = |window: &str| {
        format!(
            "(sum(rate(http_requests_total{{{sel}, status=~\"5..\"}}[{window}])) / sum(rate(http_requests_total{{{sel}}}[{window}])))"
        )
    };
    let burn = |rate: f64, long: &str, short: &str| {
        let limit = format!("{}", (rate * budget * 1e9).round() / 1e9);
        format!("{} > {limit} and {} > {limit}", errors(long), errors(short))
    };
    serde_json::json!({"groups": [
        {
            "name": format!("{name}.rules"),
            "rules": [
                rule(
                    "HighErrorRate",
                    format!("{} > {error_ratio}", errors("5m")),
                    &pending,
                    &s(props, "alert_error_severity", "critical"),
                    format!("More than {error_ratio} of {name}'s requests fail with 5xx"),
                ),
                rule(
                    "HighMemoryUsage",
                    format!(
                        "max by (instance) (process_resident_memory_bytes{{{sel}}}) > {}",
                        memory_limit / 100 * memory_percent.clamp(1, 100) as u64
                    ),
                    &pending,
                    &s(props, "alert_memory_severity", "warning"),
                    format!("A {name} pod uses more than {memory_percent}% of its memory limit"),
                ),
                rule(
                    "LongRunningTask",
                    format!("max(ralph_task_duration_seconds{{{sel}}}) > {task_seconds}"),
                    &pending,
                    &s(props, "alert_task_severity", "warning"),
                    format!("An orchestration of {name} has run longer than {task_seconds}s"),
                ),
            ],
        },
        {
            "name": format!("{name}.slo"),
            "rules": [
                rule(
                    "ErrorBudgetBurnFast",
                    burn(14.4, "1h", "5m"),
                    "2m",
                    "critical",
                    format!("{name} is spending its {objective}% availability budget 14.4 times too fast: a month's budget in two days"),
                ),
                rule(
                    "ErrorBudgetBurnSlow",
                    burn(6.0, "6h", "30m"),
                    "15m",
                    "warning",
                    format!("{name} is spending its {objective}% availability budget 6 times too fast: a month's budget in five days"),
                ),
                rule(
                    "LatencyP95High",
                    format!(
                        "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{{{sel}}}[5m]))) > {latency}"
                    ),
                    &pending,
                    "warning",
                    format!("{name}'s 95th percentile latency is above {}ms", i(props, "slo_latency_ms", 500)),
                ),
                rule(
                    "OrchestratorDown",
                    format!("absent(up{{{sel}}} == 1)"),
                    &pending,
                    "critical",
                    format!("No {name} pod answers Prometheus's scrape"),
                ),
            ],
        },
    ]})
}

/// A Prometheus configuration for these pods: DNS discovery of every
/// pod's address through the headless `NAME-metrics` Service (one A record
/// per ready pod, re-read every scrape interval), scraped on the metrics port, and alerts sent to
/// `alertmanager`. DNS discovery works with every Prometheus build
/// (distribution packages leave Kubernetes discovery out) and needs no RBAC.
pub fn scrape_config(
    name: &str,
    namespace: &str,
    interval: &str,
    port: i64,
    alertmanager: &str,
) -> Json {
    serde_json::json!({
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": ["alerts.yml"],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]},
        "scrape_configs": [{
            "job_name": name,
            "metrics_path": "/metrics",
            "dns_sd_configs": [{
                "names": [format!("{name}-metrics.{namespace}.svc")],
                "type": "A",
                "port": port,
                // A new pod is scraped within one interval (the default
                // re-reads DNS every 30 s).
                "refresh_interval": interval,
            }],
            "relabel_configs": [
                {"target_label": "namespace", "replacement": namespace},
                {"target_label": "service", "replacement": name},
            ],
        }],
    })
}

/// The share of requests the availability objective lets fail (0.001 for
/// 99.9%), rounded clear of binary fractions.
fn error_budget(props: &Map<String, Json>) -> f64 {
    let objective = s(props, "slo_availability", "99.9")
        .parse::<f64>()
        .unwrap_or(99.9);
    ((100.0 - objective) / 100.0 * 1e9).round() / 1e9
}

/// A Grafana dashboard for this orchestrator (Grafana's dashboard JSON
/// model, its Prometheus data source a variable): traffic by status, the
/// 5xx share against the objective's budget, p50/p95/p99 latency against
/// the latency objective, availability over 30 days, orchestrations, and
/// saturation (memory against the limit, CPU, pods up). Its queries select
/// by the same labels as the alerts.
pub fn dashboard(props: &Map<String, Json>, name: &str, namespace: &str) -> Json {
    let sel = format!("namespace={namespace:?}, service={name:?}");
    let objective = s(props, "slo_availability", "99.9");
    let latency = i(props, "slo_latency_ms", 500) as f64 / 1000.0;
    let memory_limit = memory_bytes(&s(props, "memory_limit", "8Gi")).unwrap_or(8 << 30);
    let panel = |id: u32, title: &str, unit: &str, x: u32, y: u32, targets: Vec<(&str, String)>| {
        serde_json::json!({
            "id": id,
            "type": "timeseries",
            "title": title,
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "targets": targets.into_iter().enumerate().map(|(i, (legend, expr))| serde_json::json!({
                "refId": ((b'A' + i as u8) as char).to_string(),
                "expr": expr,
                "legendFormat": legend,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
            })).collect::<Vec<_>>(),
        })
    };
    let quantile = |q: &str| {
        format!("histogram_quantile({q}, sum by (le) (rate(http_request_duration_seconds_bucket{{{sel}}}[$__rate_interval])))")
    };
    serde_json::json!({
        "uid": format!("ralph-{}", short_hash(&format!("{namespace}/{name}"))),
        "title": format!("{name} ({namespace})"),
        "tags": ["ralph-orchestrator", "ralph-deploy"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{
            "name": "datasource", "type": "datasource", "query": "prometheus",
            "label": "Prometheus", "current": {}, "hide": 0,
        }]},
        "panels": [
            panel(1, "Requests by status", "reqps", 0, 0, vec![
                ("{{status}}", format!("sum by (status) (rate(http_requests_total{{{sel}}}[$__rate_interval]))")),
            ]),
            panel(2, "5xx share (budget: the objective's remainder)", "percentunit", 12, 0, vec![
                ("5xx", format!("sum(rate(http_requests_total{{{sel}, status=~\"5..\"}}[$__rate_interval])) / sum(rate(http_requests_total{{{sel}}}[$__rate_interval]))")),
                ("budget", format!("vector({})", error_budget(props))),
            ]),
            panel(3, "Latency", "s", 0, 8, vec![
                ("p50", quantile("0.5")),
                ("p95", quantile("0.95")),
                ("p99", quantile("0.99")),
                ("objective (p95)", format!("vector({latency})")),
            ]),
            panel(4, &format!("Availability over 30 days (objective {objective}%)"), "percentunit", 12, 8, vec![
                ("availability", format!("1 - (sum(increase(http_requests_total{{{sel}, status=~\"5..\"}}[30d])) / sum(increase(http_requests_total{{{sel}}}[30d])))")),
            ]),
            panel(5, "Orchestrations", "s", 0, 16, vec![
                ("longest running", format!("max(ralph_task_duration_seconds{{{sel}}})")),
            ]),
            panel(6, "Saturation", "percentunit", 12, 16, vec![
                ("memory {{instance}}", format!("process_resident_memory_bytes{{{sel}}} / {memory_limit}")),
                ("cpu {{instance}}", format!("rate(process_cpu_seconds_total{{{sel}}}[$__rate_interval])")),
                ("pods up", format!("sum(up{{{sel}}}) / count(up{{{sel}}})")),
            ]),
        ],
    })
}

/// Where the installed Grafana reads the dashboard ConfigMap from.
pub const GRAFANA_DASHBOARDS_DIR: &str = "/var/lib/grafana/dashboards";

/// Where the installed Alertmanager mounts the receivers' keys
/// (`key_secret`), one file per receiver name.
pub const RECEIVER_KEYS_DIR: &str = "/etc/alertmanager/keys";

/// The receivers whose key comes from the secret store: (receiver name,
/// secret source).
pub fn receiver_keys(props: &Map<String, Json>) -> Vec<(String, String)> {
    props
        .get("alert_receivers")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(|r| {
            let source = r.get("key_secret")?.as_str().filter(|s| !s.is_empty())?;
            Some((r.get("name")?.as_str()?.to_string(), source.to_string()))
        })
        .collect()
}

/// Alertmanager's configuration: one route per receiver in the stack's
/// order, each taking the severities it names (the last without any takes
/// the rest), grouped by alert and service. Keys are `*_file` settings, so
/// the configuration holds no secret.
pub fn alertmanager_config(props: &Map<String, Json>) -> Json {
    let receivers: Vec<&Map<String, Json>> = props
        .get("alert_receivers")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .filter_map(Json::as_object)
        .collect();
    let get = |r: &Map<String, Json>, k: &str| {
        r.get(k)
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let mut out_receivers = vec![serde_json::json!({"name": "none"})];
    let mut routes = Vec::new();
    let mut fallback = "none".to_string();
    for r in &receivers {
        let name = get(r, "name");
        let key_file = match get(r, "key_file") {
            f if f.is_empty() && !get(r, "key_secret").is_empty() => {
                format!("{RECEIVER_KEYS_DIR}/{name}")
            }
            f => f,
        };
        let config = match get(r, "type").as_str() {
            "pagerduty" => {
                let mut c =
                    serde_json::json!({"routing_key_file": key_file, "send_resolved": true});
                if !get(r, "url").is_empty() {
                    c["url"] = Json::from(get(r, "url"));
                }
                serde_json::json!({"pagerduty_configs": [c]})
            }
            "slack" => serde_json::json!({"slack_configs": [{
                "api_url_file": key_file, "channel": get(r, "channel"),
                "send_resolved": true}]}),
            "webhook" => serde_json::json!({"webhook_configs": [{
                "url": get(r, "url"), "send_resolved": true}]}),
            _ => {
                serde_json::json!({"email_configs": [{"to": get(r, "to"), "send_resolved": true}]})
            }
        };
        let mut receiver = serde_json::json!({"name": name});
        if let (Some(m), Some(c)) = (receiver.as_object_mut(), config.as_object()) {
            m.extend(c.clone());
        }
        out_receivers.push(receiver);
        let severities: Vec<String> = r
            .get("severities")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect();
        if severities.is_empty() {
            fallback = name;
        } else {
            let pattern = severities
                .iter()
                .map(|s| regex_escape(s))
                .collect::<Vec<_>>()
                .join("|");
            routes.push(serde_json::json!({
                "receiver": name,
                "matchers": [format!("severity=~\"{pattern}\"")],
            }));
        }
    }
    serde_json::json!({
        "route": {
            "receiver": fallback,
            "group_by": ["alertname", "service"],
            "group_wait": props.get("alert_group_wait").and_then(Json::as_str).unwrap_or("30s"),
            "group_interval": "5m",
            "repeat_interval": "4h",
            "routes": routes,
        },
        "receivers": out_receivers,
    })
}

/// `s` with the characters a Go regular expression treats specially escaped.
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$".contains(c);
            special
                .then_some('\\')
                .into_iter()
                .chain(std::iter::once(c))
        })
        .collect()
}

/// Everything the templates see.
#[derive(Debug, Serialize)]
pub struct Values {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub selector: BTreeMap<String, String>,
    pub image: String,
    /// The Deployment's replicas: the stack's, or with autoscaling, what
    /// is running when that lies within the autoscaler's range.
    pub replicas: i64,
    pub rollout: Rollout,
    pub resources: Resources,
    pub port: i64,
    pub metrics_port: i64,
    /// The container's command and arguments (empty: the image's own).
    pub command: Vec<String>,
    pub args: Vec<String>,
    /// The paths the probes ask.
    pub liveness_path: String,
    pub readiness_path: String,
    pub config: BTreeMap<String, String>,
    pub config_hash: String,
    /// The Redis server's CA (PEM), mounted at REDIS_CA_PATH; empty: none.
    pub redis_ca: String,
    pub secret_keys: Vec<String>,
    /// A hash of the secrets' sources and versions (never of their values).
    pub secrets_hash: String,
    pub ingress: Ingress,
    pub network_policy: NetworkPolicy,
    pub autoscaling: Autoscaling,
    pub pdb: Pdb,
    pub maintenance: Maintenance,
    pub monitoring: Monitoring,
    /// The pods' nodeSelector (empty: any node).
    pub node_selector: BTreeMap<String, String>,
    /// On the pods' ServiceAccount: how a cloud maps it to a cloud identity
    /// (GKE workload identity's `iam.gke.io/gcp-service-account`).
    pub service_account_annotations: BTreeMap<String, String>,
    pub api: ApiVersions,
}

fn s(props: &Map<String, Json>, k: &str, default: &str) -> String {
    match props.get(k) {
        Some(Json::String(v)) => v.clone(),
        Some(Json::Number(n)) => n.to_string(),
        _ => default.to_string(),
    }
}

fn i(props: &Map<String, Json>, k: &str, default: i64) -> i64 {
    props.get(k).and_then(Json::as_i64).unwrap_or(default)
}

fn b(props: &Map<String, Json>, k: &str, default: bool) -> bool {
    props.get(k).and_then(Json::as_bool).unwrap_or(default)
}

fn string_map(props: &Map<String, Json>, k: &str) -> BTreeMap<String, String> {
    props
        .get(k)
        .and_then(Json::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Json::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    (k.clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

fn string_list(props: &Map<String, Json>, k: &str) -> Vec<String> {
    props
        .get(k)
        .and_then(Json::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The image reference: `image` alone when it already carries a tag or a
/// digest, else `image:tag`.
pub fn image_ref(props: &Map<String, Json>) -> Option<String> {
    let image = s(props, "image", "ghcr.io/mikeyobrien/ralph-orchestrator");
    let last = image.rsplit('/').next().unwrap_or_default();
    if last.contains(':') || image.contains('@') {
        return Some(image);
    }
    let tag = props.get("tag").and_then(Json::as_str)?;
    Some(format!("{image}:{tag}"))
}

/// The connections whose url can carry a password from a secret: the
/// url's variable, and the property naming the password's secret.
pub const CONNECTIONS: [(&str, &str); 2] = [
    ("DATABASE_URL", "database_password"),
    ("REDIS_URL", "redis_password"),
];

/// Where the pods find the Redis server's CA (`redis_ca`), mounted from
/// the ConfigMap NAME-ca.
pub const REDIS_CA_PATH: &str = "/etc/ralph/ca/redis-ca.pem";

/// A connection's url as the pods get it: `redis_url`, with
/// `ssl_ca_certs` naming the mounted CA when `redis_ca` is set (a server
/// whose certificate no public CA signs, as Memorystore's).
pub fn connection_url(props: &Map<String, Json>, url_key: &str) -> Option<String> {
    let url = props
        .get(url_key.to_ascii_lowercase().as_str())
        .and_then(Json::as_str)?
        .to_string();
    if url_key != "REDIS_URL" || !has(props, "redis_ca") {
        return Some(url);
    }
    match url::Url::parse(&url) {
        Ok(mut u) => {
            u.query_pairs_mut()
                .append_pair("ssl_ca_certs", REDIS_CA_PATH);
            Some(u.to_string())
        }
        Err(_) => Some(url),
    }
}

fn has(props: &Map<String, Json>, k: &str) -> bool {
    props
        .get(k)
        .and_then(Json::as_str)
        .is_some_and(|v| !v.is_empty())
}

/// The Secret's keys: `secrets`, plus each url with its password and the
/// password alone (`DATABASE_URL`, `DATABASE_PASSWORD`, ...).
pub fn secret_keys(props: &Map<String, Json>) -> Result<Vec<String>, String> {
    let mut keys: Vec<String> = string_map(props, "secrets").into_keys().collect();
    for (url, password) in CONNECTIONS {
        if !has(props, password) {
            continue;
        }
        if !has(props, &url.to_ascii_lowercase()) {
            return Err(format!(
                "`{password}` is set but `{}` is not: give the url the password goes into",
                url.to_ascii_lowercase()
            ));
        }
        let alone = url.replace("_URL", "_PASSWORD");
        for k in [url.to_string(), alone] {
            if keys.contains(&k) {
                return Err(format!(
                    "`secrets` has {k}, which `{password}` makes: remove it from `secrets`"
                ));
            }
            keys.push(k);
        }
    }
    keys.sort();
    Ok(keys)
}

/// The orchestrator's environment: the RALPH_* settings, the application
/// settings, then `config` (which wins on a clash).
pub fn config_entries(props: &Map<String, Json>) -> BTreeMap<String, String> {
    let mut c = BTreeMap::new();
    let mut put = |k: &str, v: String| {
        c.insert(k.to_string(), v);
    };
    put("RALPH_AGENT", s(props, "agent", "auto"));
    put("RALPH_MAX_ITERATIONS", s(props, "max_iterations", "1000"));
    put("RALPH_MAX_RUNTIME", s(props, "max_runtime", "28800"));
    put("RALPH_MAX_TOKENS", s(props, "max_tokens", "5000000"));
    put("RALPH_MAX_COST", s(props, "max_cost", "500.0"));
    put(
        "RALPH_CHECKPOINT_INTERVAL",
        s(props, "checkpoint_interval", "5"),
    );
    // With a password, the url goes to the Secret instead (`secret_keys`).
    for (url, password) in CONNECTIONS {
        if !has(props, password) {
            if let Some(u) = connection_url(props, url) {
                put(url, u);
            }
        }
    }
    if has(props, "redis_ca") {
        put("REDIS_CA_CERT", REDIS_CA_PATH.to_string());
    }
    put("DATABASE_POOL_SIZE", s(props, "database_pool_size", "20"));
    put("REDIS_POOL_SIZE", s(props, "redis_pool_size", "50"));
    put("LOG_LEVEL", s(props, "log_level", "INFO"));
    put("METRICS_PORT", s(props, "metrics_port", "9090"));
    put("PORT", s(props, "port", "8080"));
    put("RATE_LIMIT", s(props, "rate_limit", "100"));
    let hosts = string_list(props, "allowed_hosts");
    if !hosts.is_empty() {
        put("ALLOWED_HOSTS", hosts.join(","));
    }
    let cors = string_list(props, "cors_origins");
    if !cors.is_empty() {
        put("CORS_ORIGINS", cors.join(","));
    }
    c.extend(string_map(props, "config"));
    c
}

fn short_hash(text: &str) -> String {
    hex::encode(sha2::Sha256::digest(text.as_bytes()))[..16].to_string()
}

/// The labels every object carries.
pub fn ownership_labels(
    owner: &ralph_core::driver::Owner,
    address: &str,
    name: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), name.to_string()),
        (
            "app.kubernetes.io/instance".to_string(),
            format!("{}-{}", owner.stack, owner.environment),
        ),
        (LABEL_MANAGED_BY.to_string(), MANAGER.to_string()),
        (LABEL_STACK.to_string(), owner.stack.clone()),
        (LABEL_ENVIRONMENT.to_string(), owner.environment.clone()),
        (
            LABEL_RESOURCE.to_string(),
            ralph_core::model::address::to_label(address),
        ),
    ])
}

/// The label selector that finds this resource's objects.
pub fn ownership_selector(owner: &ralph_core::driver::Owner, address: &str) -> String {
    format!(
        "{LABEL_MANAGED_BY}={MANAGER},{LABEL_STACK}={},{LABEL_ENVIRONMENT}={},{LABEL_RESOURCE}={}",
        owner.stack,
        owner.environment,
        ralph_core::model::address::to_label(address)
    )
}

/// With autoscaling, the replica count the autoscaler chose stands as long
/// as it lies within [replicas, max_replicas]: an apply during a load peak
/// must not scale the fleet down to the stack's minimum.
pub fn effective_replicas(props: &Map<String, Json>, running: Option<i64>) -> i64 {
    let want = i(props, "replicas", 3);
    let max = i(props, "max_replicas", 10).max(want);
    match running {
        Some(r) if b(props, "autoscaling", true) && (want..=max).contains(&r) => r,
        _ => want,
    }
}

/// `secrets_version` is what identifies the secrets' current contents
/// without revealing them (the stores' version ids); `render` passes "".
/// `running`: the replicas the live Deployment has, if it exists.
pub fn values(
    owner: &ralph_core::driver::Owner,
    address: &str,
    props: &Map<String, Json>,
    api: ApiVersions,
    secrets_version: &str,
    running: Option<i64>,
) -> Result<Values, String> {
    let name = s(props, "name", "ralph-orchestrator");
    let image = image_ref(props).ok_or_else(|| {
        "no image tag: set `tag` in the stack, or deploy one with `ralph-deploy deploy --image TAG`"
            .to_string()
    })?;
    let config = config_entries(props);
    let redis_ca = s(props, "redis_ca", "");
    // A new CA restarts the pods, as a new setting does; without one the
    // hash is what it was before the CA existed.
    let config_hash = short_hash(&format!(
        "{}{redis_ca}",
        serde_json::to_string(&config).unwrap_or_default()
    ));
    let secrets = string_map(props, "secrets");
    let secret_keys = secret_keys(props)?;
    let passwords: Vec<String> = CONNECTIONS.iter().map(|(_, p)| s(props, p, "")).collect();
    // Without passwords the hash is what it was before they existed, so
    // upgrading the tool restarts no pods.
    let passwords = if passwords.iter().all(String::is_empty) {
        String::new()
    } else {
        format!("{}|", passwords.join(","))
    };
    let secrets_hash = short_hash(&format!(
        "{}|{}|{passwords}{secrets_version}",
        serde_json::to_string(&secrets).unwrap_or_default(),
        string_list(props, "secret_versions").join(",")
    ));
    let labels = ownership_labels(owner, address, &name);
    let selector = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), name.clone()),
        (
            "app.kubernetes.io/instance".to_string(),
            format!("{}-{}", owner.stack, owner.environment),
        ),
    ]);
    let replicas = i(props, "replicas", 3);
    let deployment_replicas = effective_replicas(props, running);
    Ok(Values {
        namespace: s(props, "namespace", "ralph"),
        labels: labels.clone(),
        selector: selector.clone(),
        image,
        replicas: deployment_replicas,
        rollout: Rollout {
            max_surge: i(props, "max_surge", 1),
            max_unavailable: i(props, "max_unavailable", 0),
            progress_deadline_seconds: i(props, "progress_deadline_seconds", 600),
        },
        resources: Resources {
            cpu_request: s(props, "cpu_request", "2"),
            memory_request: s(props, "memory_request", "4Gi"),
            cpu_limit: s(props, "cpu_limit", "4"),
            memory_limit: s(props, "memory_limit", "8Gi"),
        },
        port: i(props, "port", 8080),
        metrics_port: i(props, "metrics_port", 9090),
        command: string_list(props, "command"),
        args: string_list(props, "args"),
        liveness_path: s(props, "liveness_path", "/health"),
        readiness_path: s(props, "readiness_path", "/ready"),
        service_account_annotations: string_map(props, "service_account_annotations"),
        node_selector: string_map(props, "node_selector"),
        config,
        config_hash,
        redis_ca,
        secret_keys,
        secrets_hash,
        ingress: ingress_values(props),
        network_policy: NetworkPolicy {
            enabled: b(props, "network_policy", true),
            ingress_namespace: s(props, "ingress_namespace", "ingress-nginx"),
            monitoring_namespace: s(props, "monitoring_namespace", "monitoring"),
            store_ports: {
                let mut ports = vec![
                    store_port(&s(props, "database_url", ""), 5432),
                    store_port(&s(props, "redis_url", ""), 6379),
                ];
                ports.sort_unstable();
                ports.dedup();
                ports
            },
        },
        autoscaling: Autoscaling {
            enabled: b(props, "autoscaling", true),
            min_replicas: replicas,
            max_replicas: i(props, "max_replicas", 10).max(replicas),
            cpu_percent: i(props, "target_cpu_percent", 70),
            memory_percent: i(props, "target_memory_percent", 80),
        },
        pdb: Pdb {
            min_available: i(props, "min_available", (replicas - 1).max(1)),
        },
        maintenance: Maintenance {
            enabled: b(props, "partition_maintenance", true),
            schedule: s(props, "maintenance_schedule", "15 3 * * *"),
            months_ahead: i(props, "partition_months_ahead", 3),
            image: s(props, "maintenance_image", "postgres:15-alpine"),
        },
        monitoring: monitoring_values(props, &name, &labels, &selector)?,
        api,
        name,
    })
}

/// The monitoring part of the values: the scrape config, the alert rules,
/// Alertmanager's routes and, when installed, Prometheus, Alertmanager and
/// Grafana with their labels and the hashes that restart them.
fn monitoring_values(
    props: &Map<String, Json>,
    name: &str,
    labels: &BTreeMap<String, String>,
    selector: &BTreeMap<String, String>,
) -> Result<Monitoring, String> {
    let namespace = s(props, "namespace", "ralph");
    let interval = s(props, "scrape_interval", "30s");
    let rules = alert_rules(props, &name, &namespace);
    let install = b(props, "monitoring_install", false);
    let part = |role: &str| {
        let own = format!("{name}-{role}");
        let mut l = labels.clone();
        l.insert("app.kubernetes.io/name".into(), own.clone());
        l.insert("app.kubernetes.io/component".into(), "monitoring".into());
        let mut sel = selector.clone();
        sel.insert("app.kubernetes.io/name".into(), own);
        (l, sel)
    };
    let (prometheus_labels, prometheus_selector) = part("prometheus");
    let (alertmanager_labels, alertmanager_selector) = part("alertmanager");
    let (grafana_labels, grafana_selector) = part("grafana");
    let grafana = install && b(props, "grafana_install", false);
    if grafana && s(props, "grafana_admin_secret", "").is_empty() {
        return Err("`grafana_install` needs `grafana_admin_secret`, the secret holding Grafana's admin password".into());
    }
    if b(props, "grafana_install", false) && !install {
        return Err("`grafana_install` needs `monitoring_install` (its data source is the installed Prometheus)".into());
    }
    let grafana_datasources_yaml = serde_yaml_ng::to_string(&serde_json::json!({
        "apiVersion": 1,
        "datasources": [{
            "name": "Prometheus", "uid": "prometheus", "type": "prometheus", "access": "proxy",
            "url": format!("http://{name}-prometheus.{namespace}.svc:{}", i(props, "prometheus_port", 9090)),
            "isDefault": true, "editable": false,
        }],
    }))
    .map_err(|e| e.to_string())?;
    let grafana_dashboards_yaml = serde_yaml_ng::to_string(&serde_json::json!({
        "apiVersion": 1,
        "providers": [{
            "name": name, "type": "file", "disableDeletion": true, "allowUiUpdates": false,
            "options": {"path": GRAFANA_DASHBOARDS_DIR},
        }],
    }))
    .map_err(|e| e.to_string())?;
    let rules_yaml = serde_yaml_ng::to_string(&rules).map_err(|e| e.to_string())?;
    let config_yaml = serde_yaml_ng::to_string(&scrape_config(
        &name,
        &namespace,
        &interval,
        i(props, "metrics_port", 9090),
        &Some(s(props, "alertmanager", ""))
            .filter(|a| !a.is_empty())
            .unwrap_or_else(|| {
                if install {
                    format!(
                        "{name}-alertmanager.{namespace}.svc:{}",
                        i(props, "alertmanager_port", 9093)
                    )
                } else {
                    format!(
                        "alertmanager.{}.svc:9093",
                        s(props, "monitoring_namespace", "monitoring")
                    )
                }
            }),
    ))
    .map_err(|e| e.to_string())?;
    let alertmanager_yaml =
        serde_yaml_ng::to_string(&alertmanager_config(props)).map_err(|e| e.to_string())?;
    Ok(Monitoring {
        enabled: b(props, "monitoring", true),
        install: MonitoringInstall {
            enabled: install,
            // The kind's defaults: Prometheus's long-term support
            // release and the Alertmanager of its time.
            prometheus_image: s(props, "prometheus_image", ""),
            alertmanager_image: s(props, "alertmanager_image", ""),
            retention: s(props, "prometheus_retention", "15d"),
            prometheus_port: i(props, "prometheus_port", 9090),
            alertmanager_port: i(props, "alertmanager_port", 9093),
            receiver_keys: receiver_keys(props).into_iter().map(|(n, _)| n).collect(),
            receiver_keys_dir: RECEIVER_KEYS_DIR,
            grafana,
            grafana_image: s(props, "grafana_image", ""),
            grafana_labels,
            grafana_selector,
            grafana_hash: short_hash(&format!(
                "{grafana_datasources_yaml}{grafana_dashboards_yaml}"
            )),
            grafana_datasources_yaml,
            grafana_dashboards_yaml,
            grafana_dashboards_dir: GRAFANA_DASHBOARDS_DIR,
            prometheus_hash: short_hash(&format!("{config_yaml}{rules_yaml}")),
            alertmanager_hash: short_hash(&alertmanager_yaml),
            prometheus_labels,
            prometheus_selector,
            alertmanager_labels,
            alertmanager_selector,
        },
        rules_yaml,
        config_yaml,
        alertmanager_yaml,
        dashboard_json: dashboard(props, &name, &namespace).to_string(),
        scrape_interval: interval,
        rules,
    })
}

/// The Ingress part of the values: host, class, TLS, rate limits and, on an
/// ALB, its certificate, WAF and the ranges it admits from.
fn ingress_values(props: &Map<String, Json>) -> Ingress {
    Ingress {
        host: set(props, "ingress_host"),
        class: s(props, "ingress_class", "nginx"),
        tls_issuer: s(props, "tls_issuer", "letsencrypt-prod"),
        rate_limit_rpm: i(props, "rate_limit", 100),
        rate_limit_connections: i(props, "rate_limit_connections", 50),
        certificate_arn: set(props, "certificate_arn"),
        waf_acl_arn: set(props, "waf_acl_arn"),
        security_policy: set(props, "security_policy"),
        edge_cidrs: {
            let set: Vec<String> = props
                .get("edge_cidrs")
                .and_then(Json::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.as_str().map(str::to_string))
                .collect();
            // An ALB's addresses are private ones of its VPC: never an
            // empty `from`, which would admit every source.
            if set.is_empty() {
                PRIVATE_RANGES.iter().map(|c| c.to_string()).collect()
            } else {
                set
            }
        },
    }
}

/// One rendered object, with the template it came from.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub template: &'static str,
    pub object: Json,
}

impl Rendered {
    pub fn kind(&self) -> &str {
        self.object["kind"].as_str().unwrap_or_default()
    }
    pub fn name(&self) -> &str {
        self.object["metadata"]["name"].as_str().unwrap_or_default()
    }
    pub fn api_version(&self) -> &str {
        self.object["apiVersion"].as_str().unwrap_or_default()
    }
}

/// Renders every template. `overrides`: a directory whose files replace the
/// built-in templates of the same name.
pub fn render(values: &Values, overrides: Option<&Path>) -> Result<Vec<Rendered>, String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let mut sources: Vec<(&'static str, String)> = Vec::new();
    for (name, builtin) in TEMPLATES {
        let text = match overrides.map(|d| d.join(name)) {
            Some(p) if p.exists() => std::fs::read_to_string(&p)
                .map_err(|e| format!("reading template {}: {e}", p.display()))?,
            _ => builtin.to_string(),
        };
        sources.push((name, text));
    }
    for (name, text) in &sources {
        env.add_template_owned(name.to_string(), text.clone())
            .map_err(|e| format!("template {name}: {e}"))?;
    }
    let ctx = minijinja::Value::from_serialize(values);
    let mut out = Vec::new();
    for (name, _) in &sources {
        let text = env
            .get_template(name)
            .and_then(|t| t.render(&ctx))
            .map_err(|e| format!("template {name}: {e:#}"))?;
        if text.trim().is_empty() {
            continue;
        }
        let object: Json = serde_yaml_ng::from_str(&text)
            .map_err(|e| format!("template {name} did not render valid YAML: {e}"))?;
        if !object.is_object() || object.get("kind").is_none() {
            return Err(format!(
                "template {name} did not render a Kubernetes object"
            ));
        }
        out.push(Rendered {
            template: name,
            object,
        });
    }
    Ok(out)
}

/// The rendered objects as one multi-document YAML stream.
pub fn to_yaml(objects: &[Rendered]) -> String {
    let mut out = String::new();
    for r in objects {
        out.push_str(&format!("---\n# Source: templates/{}\n", r.template));
        out.push_str(&serde_yaml_ng::to_string(&r.object).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner() -> ralph_core::driver::Owner {
        ralph_core::driver::Owner {
            stack: "ralph".into(),
            environment: "production".into(),
        }
    }

    fn props(extra: Json) -> Map<String, Json> {
        let mut m = serde_json::json!({"tag": "1.2.3", "secrets": {"SECRET_KEY": "arn:aws:secretsmanager:us-east-1:1:secret:k"}})
            .as_object()
            .cloned()
            .unwrap_or_default();
        if let Json::Object(e) = extra {
            m.extend(e);
        }
        m
    }

    fn objects(p: Map<String, Json>, api: ApiVersions) -> Vec<Rendered> {
        render(
            &values(&owner(), "app", &p, api, "", None).expect("values"),
            None,
        )
        .expect("render")
    }

    /// The AWS Load Balancer Controller: class `alb`, an internet-facing ALB
    /// to the pods with the ACM certificate and the redirect, no TLS secret
    /// or cert-manager, and the NetworkPolicy open to the VPC on the app
    /// port only (RFC 1918 when the stack names no range).
    #[test]
    fn the_alb_class_is_an_application_load_balancer_with_an_acm_certificate() {
        let arn = "arn:aws:acm:us-east-1:123456789012:certificate/abc";
        for (cidrs, want) in [
            (serde_json::json!(["10.0.0.0/16"]), vec!["10.0.0.0/16"]),
            (serde_json::json!([]), PRIVATE_RANGES.to_vec()),
        ] {
            let objs = objects(
                props(
                    serde_json::json!({"ingress_host": "ralph.example.com", "ingress_class": "alb",
                    "certificate_arn": arn, "edge_cidrs": cidrs,
                    "waf_acl_arn": "arn:aws:wafv2:us-east-1:123456789012:regional/webacl/edge/1"}),
                ),
                ApiVersions::modern(),
            );
            let get = |kind: &str| {
                objs.iter()
                    .find(|o| o.kind() == kind)
                    .unwrap_or_else(|| panic!("no {kind}"))
                    .object
                    .clone()
            };
            let ing = get("Ingress");
            let notes = &ing["metadata"]["annotations"];
            assert_eq!(ing["spec"]["ingressClassName"], "alb");
            assert!(ing["spec"].get("tls").is_none());
            assert_eq!(notes["alb.ingress.kubernetes.io/certificate-arn"], arn);
            assert_eq!(
                notes["alb.ingress.kubernetes.io/wafv2-acl-arn"],
                "arn:aws:wafv2:us-east-1:123456789012:regional/webacl/edge/1"
            );
            assert_eq!(notes["alb.ingress.kubernetes.io/target-type"], "ip");
            assert_eq!(notes["alb.ingress.kubernetes.io/ssl-redirect"], "443");
            assert_eq!(
                notes["alb.ingress.kubernetes.io/healthcheck-path"],
                "/ready"
            );
            assert!(notes.get("cert-manager.io/cluster-issuer").is_none());
            let np = get("NetworkPolicy");
            let from: Vec<&str> = np["spec"]["ingress"][0]["from"]
                .as_array()
                .expect("from")
                .iter()
                .filter_map(|f| f["ipBlock"]["cidr"].as_str())
                .collect();
            assert_eq!(from, want);
            assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 8080);
        }
    }

    /// GKE's own controller: no IngressClass, TLS or cert-manager; a
    /// Google-managed certificate, the HTTPS redirect, NEGs on the Service,
    /// and the NetworkPolicy open to Google's front ends on the app port.
    #[test]
    fn the_gce_class_is_served_by_gkes_own_load_balancer() {
        let objs = objects(
            props(serde_json::json!({"ingress_host": "ralph.example.com", "ingress_class": "gce"})),
            ApiVersions::modern(),
        );
        let get = |kind: &str| {
            objs.iter()
                .find(|o| o.kind() == kind)
                .unwrap_or_else(|| panic!("no {kind}"))
                .object
                .clone()
        };
        let ing = get("Ingress");
        let notes = &ing["metadata"]["annotations"];
        assert_eq!(notes["kubernetes.io/ingress.class"], "gce");
        assert_eq!(
            notes["networking.gke.io/managed-certificates"],
            "ralph-orchestrator-cert"
        );
        assert_eq!(
            notes["networking.gke.io/v1beta1.FrontendConfig"],
            "ralph-orchestrator"
        );
        assert!(notes.get("cert-manager.io/cluster-issuer").is_none());
        assert!(ing["spec"].get("tls").is_none() && ing["spec"].get("ingressClassName").is_none());
        let cert = get("ManagedCertificate");
        assert_eq!(
            cert["spec"]["domains"],
            serde_json::json!(["ralph.example.com"])
        );
        assert_eq!(
            get("FrontendConfig")["spec"]["redirectToHttps"]["enabled"],
            true
        );
        assert_eq!(
            get("Service")["metadata"]["annotations"]["cloud.google.com/neg"],
            "{\"ingress\": true}"
        );
        let np = get("NetworkPolicy");
        assert_eq!(
            np["spec"]["ingress"][0]["from"][1]["ipBlock"]["cidr"],
            "35.191.0.0/16"
        );
        assert_eq!(np["spec"]["ingress"][0]["ports"][0]["port"], 8080);
        // No policy named: no BackendConfig, and the Service names none.
        assert!(objs.iter().all(|o| o.kind() != "BackendConfig"));
        assert!(get("Service")["metadata"]["annotations"]
            .get("cloud.google.com/backend-config")
            .is_none());
        // A Cloud Armor policy: a BackendConfig of the Service's name that
        // names it, and the Service pointing its backend at that config.
        let objs = objects(
            props(
                serde_json::json!({"ingress_host": "ralph.example.com", "ingress_class": "gce",
                                     "security_policy": "ralph-edge"}),
            ),
            ApiVersions::modern(),
        );
        let bc = objs
            .iter()
            .find(|o| o.kind() == "BackendConfig")
            .expect("a BackendConfig");
        assert_eq!(bc.object["apiVersion"], "cloud.google.com/v1");
        assert_eq!(bc.object["spec"]["securityPolicy"]["name"], "ralph-edge");
        let svc = objs
            .iter()
            .find(|o| o.kind() == "Service")
            .expect("Service");
        let named: serde_json::Value = serde_json::from_str(
            svc.object["metadata"]["annotations"]["cloud.google.com/backend-config"]
                .as_str()
                .expect("the annotation"),
        )
        .expect("JSON");
        assert_eq!(named, serde_json::json!({"default": "ralph-orchestrator"}));
        // Other classes keep cert-manager's certificate and make no GKE objects.
        let objs = objects(
            props(serde_json::json!({"ingress_host": "ralph.example.com"})),
            ApiVersions::modern(),
        );
        assert!(objs
            .iter()
            .all(|o| o.kind() != "ManagedCertificate" && o.kind() != "FrontendConfig"));
        let ing = &objs.iter().find(|o| o.kind() == "Ingress").unwrap().object;
        assert_eq!(ing["spec"]["ingressClassName"], "nginx");
        assert!(ing["metadata"]["annotations"]["cert-manager.io/cluster-issuer"].is_string());
    }

    /// Egress admits the ports the store URLs name (Memorystore with TLS on
    /// 6378), and ingress admits the scrape on the metrics port.
    #[test]
    fn the_network_policy_admits_the_stores_ports_and_the_scrape() {
        let objs = objects(
            props(serde_json::json!({
                "database_url": "postgresql://ralph_app@10.100.0.3/ralph",
                "redis_url": "rediss://10.120.0.4:6378/0",
                "metrics_port": 9102,
            })),
            ApiVersions::modern(),
        );
        let np = &objs
            .iter()
            .find(|o| o.kind() == "NetworkPolicy")
            .expect("a NetworkPolicy")
            .object;
        let egress: Vec<i64> = np["spec"]["egress"][0]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["port"].as_i64().unwrap())
            .collect();
        assert_eq!(egress, [443, 5432, 6378]);
        let scrape = &np["spec"]["ingress"][1];
        assert_eq!(scrape["ports"][0]["port"], 9102);
        assert_eq!(
            scrape["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "monitoring"
        );
    }

    #[test]
    fn the_command_arguments_and_probe_paths_are_settable() {
        let objs = objects(
            props(serde_json::json!({
                "command": ["python", "-m", "ralph_orchestrator"],
                "args": ["serve", "--port", "8080"],
                "liveness_path": "/healthz",
                "readiness_path": "/readyz",
            })),
            ApiVersions::modern(),
        );
        let d = &objs
            .iter()
            .find(|o| o.kind() == "Deployment")
            .unwrap()
            .object;
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            c["command"],
            serde_json::json!(["python", "-m", "ralph_orchestrator"])
        );
        assert_eq!(c["args"], serde_json::json!(["serve", "--port", "8080"]));
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
        // By default: the image's own entrypoint, and the guide's paths.
        let objs = objects(props(serde_json::json!({})), ApiVersions::modern());
        let d = &objs
            .iter()
            .find(|o| o.kind() == "Deployment")
            .unwrap()
            .object;
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert!(c.get("command").is_none() && c.get("args").is_none(), "{c}");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
    }

    #[test]
    fn a_redis_ca_is_mounted_and_named_in_the_url() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let objs = objects(
            props(serde_json::json!({
                "redis_url": "rediss://10.120.0.4:6378/0",
                "redis_ca": pem,
            })),
            ApiVersions::modern(),
        );
        let find = |kind: &str, name: &str| {
            objs.iter()
                .find(|o| o.kind() == kind && o.object["metadata"]["name"] == name)
                .map(|o| o.object.clone())
        };
        let ca = find("ConfigMap", "ralph-orchestrator-ca").expect("the CA's ConfigMap");
        assert_eq!(ca["data"]["redis-ca.pem"], pem);
        let config = find("ConfigMap", "ralph-orchestrator-config").unwrap();
        assert_eq!(
            config["data"]["REDIS_URL"],
            "rediss://10.120.0.4:6378/0?ssl_ca_certs=%2Fetc%2Fralph%2Fca%2Fredis-ca.pem"
        );
        assert_eq!(config["data"]["REDIS_CA_CERT"], REDIS_CA_PATH);
        let d = find("Deployment", "ralph-orchestrator").unwrap();
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            pod["volumes"][1]["configMap"]["name"],
            "ralph-orchestrator-ca"
        );
        assert_eq!(
            pod["containers"][0]["volumeMounts"][1]["mountPath"],
            "/etc/ralph/ca"
        );
        // Without one, nothing of it.
        let plain = objects(
            props(serde_json::json!({"redis_url": "rediss://10.120.0.4:6378/0"})),
            ApiVersions::modern(),
        );
        assert!(!plain
            .iter()
            .any(|o| o.object["metadata"]["name"] == "ralph-orchestrator-ca"));
    }

    #[test]
    fn the_guide_settings_are_rendered() {
        let objs = objects(
            props(serde_json::json!({"ingress_host": "ralph.example.com"})),
            ApiVersions::modern(),
        );
        let kinds: Vec<&str> = objs.iter().map(Rendered::kind).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "ServiceAccount",
                "ConfigMap",
                "Secret",
                "Service",
                "NetworkPolicy",
                "PodDisruptionBudget",
                "Deployment",
                "HorizontalPodAutoscaler",
                "Ingress",
                "ConfigMap",
                "CronJob",
                "Service",
                "ConfigMap"
            ]
        );
        let d = &objs
            .iter()
            .find(|o| o.kind() == "Deployment")
            .expect("deployment")
            .object;
        assert_eq!(d["spec"]["replicas"], 3);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"], 0);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 1);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["image"], "ghcr.io/mikeyobrien/ralph-orchestrator:1.2.3");
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/health");
        assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(c["resources"]["requests"]["memory"], "4Gi");
        assert_eq!(c["resources"]["limits"]["cpu"], "4");
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        let ns = &objs[0].object;
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
        let cm = &objs[2].object;
        assert_eq!(cm["data"]["RALPH_MAX_ITERATIONS"], "1000");
        let secret = &objs[3].object;
        assert_eq!(
            secret["stringData"]["SECRET_KEY"],
            "<from the secret store>"
        );
    }

    #[test]
    fn api_versions_follow_discovery_and_optional_objects_can_be_left_out() {
        let old = ApiVersions {
            hpa: "autoscaling/v2beta2".into(),
            pdb: "policy/v1beta1".into(),
            cronjob: "batch/v1beta1".into(),
            prometheus_operator: false,
            gke_ingress: false,
        };
        let objs = objects(props(serde_json::json!({"network_policy": false})), old);
        assert!(objs
            .iter()
            .all(|o| o.kind() != "NetworkPolicy" && o.kind() != "Ingress"));
        let hpa = objs
            .iter()
            .find(|o| o.kind() == "HorizontalPodAutoscaler")
            .expect("hpa");
        assert_eq!(hpa.api_version(), "autoscaling/v2beta2");
        let pdb = objs
            .iter()
            .find(|o| o.kind() == "PodDisruptionBudget")
            .expect("pdb");
        assert_eq!(pdb.api_version(), "policy/v1beta1");
    }

    #[test]
    fn monitoring_uses_the_prometheus_operator_where_it_runs() {
        let with_operator = ApiVersions {
            prometheus_operator: true,
            ..ApiVersions::modern()
        };
        let objs = objects(
            props(serde_json::json!({"memory_limit": "2Gi"})),
            with_operator,
        );
        let kinds: Vec<&str> = objs.iter().map(Rendered::kind).collect();
        assert!(kinds.contains(&"PrometheusRule") && kinds.contains(&"ServiceMonitor"));
        assert!(!objs
            .iter()
            .any(|o| o.name() == "ralph-orchestrator-monitoring"));
        let rule = objs.iter().find(|o| o.kind() == "PrometheusRule").unwrap();
        let rules = &rule.object["spec"]["groups"][0]["rules"];
        assert_eq!(rules[1]["alert"], "HighMemoryUsage");
        // 90% of 2Gi.
        assert!(rules[1]["expr"].as_str().unwrap().ends_with("> 1932735240"));
        let off = objects(
            props(serde_json::json!({"monitoring": false})),
            ApiVersions::modern(),
        );
        assert!(!off
            .iter()
            .any(|o| o.name() == "ralph-orchestrator-monitoring"));
        assert_eq!(memory_bytes("512Mi"), Some(512 << 20));
        assert_eq!(memory_bytes("1G"), Some(1_000_000_000));
        assert_eq!(memory_bytes("lots"), None);
    }

    /// `monitoring_install`: a Prometheus and an Alertmanager beside the
    /// pods on the ConfigMap, sent to and scraped through their own
    /// Services, admitted by the NetworkPolicy, asked by `status`.
    #[test]
    fn monitoring_install_runs_prometheus_and_alertmanager_on_the_configmap() {
        let p = props(serde_json::json!({"monitoring_install": true,
            "prometheus_image": "prom/prometheus:v3.5.0", "alertmanager_image": "prom/alertmanager:v0.28.1",
            "prometheus_retention": "30d",
            "grafana_install": true, "grafana_image": "grafana/grafana:12.1.0", "grafana_admin_secret": "env:GRAFANA_PASSWORD",
            "alert_receivers": [{"name": "oncall", "type": "pagerduty", "key_secret": "env:PD_KEY", "severities": ["critical"]}]}));
        let objs = objects(p.clone(), ApiVersions::modern());
        let get = |kind: &str, name: &str| {
            objs.iter()
                .find(|o| o.kind() == kind && o.name() == name)
                .unwrap_or_else(|| panic!("{kind} {name}"))
                .object
                .clone()
        };
        let cm = get("ConfigMap", "ralph-orchestrator-monitoring");
        let config: Json =
            serde_yaml_ng::from_str(cm["data"]["prometheus.yml"].as_str().unwrap()).unwrap();
        assert_eq!(
            config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0],
            "ralph-orchestrator-alertmanager.ralph.svc:9093"
        );
        let prom = get("Deployment", "ralph-orchestrator-prometheus");
        let pod = &prom["spec"]["template"]["spec"];
        let c = &pod["containers"][0];
        assert_eq!(c["image"], "prom/prometheus:v3.5.0");
        assert!(
            c["args"]
                .as_array()
                .unwrap()
                .contains(&Json::from("--storage.tsdb.retention.time=30d")),
            "{}",
            c["args"]
        );
        assert_eq!(
            pod["volumes"][0]["configMap"]["name"],
            "ralph-orchestrator-monitoring"
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        // Never selected by the orchestrator's own Services.
        let app = get("Service", "ralph-orchestrator");
        let own = &prom["spec"]["selector"]["matchLabels"];
        assert_ne!(own, &app["spec"]["selector"]);
        assert_eq!(
            get("Service", "ralph-orchestrator-prometheus")["spec"]["selector"],
            *own
        );
        // The receiver's key: a file of the Secret the Alertmanager mounts.
        let routes: Json =
            serde_yaml_ng::from_str(cm["data"]["alertmanager.yml"].as_str().unwrap()).unwrap();
        assert_eq!(
            routes["receivers"][1]["pagerduty_configs"][0]["routing_key_file"],
            "/etc/alertmanager/keys/oncall"
        );
        let keys = get("Secret", "ralph-orchestrator-alertmanager-keys");
        assert_eq!(keys["stringData"]["oncall"], "<from the secret store>");
        let am = get("Deployment", "ralph-orchestrator-alertmanager");
        let am_pod = &am["spec"]["template"]["spec"];
        assert_eq!(
            am_pod["volumes"][2]["secret"]["secretName"],
            "ralph-orchestrator-alertmanager-keys"
        );
        assert_eq!(
            am_pod["containers"][0]["volumeMounts"][2]["mountPath"],
            "/etc/alertmanager/keys"
        );
        get("Service", "ralph-orchestrator-alertmanager");
        let np = get("NetworkPolicy", "ralph-orchestrator");
        assert!(np["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["from"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["podSelector"]["matchLabels"] == *own)));
        // `status` asks the installed Prometheus unless another is named.
        assert_eq!(
            prometheus_target(&p).as_deref(),
            Some("ralph/ralph-orchestrator-prometheus:9090")
        );
        let mut named = p.clone();
        named.insert("prometheus".into(), "monitoring/prometheus-k8s:9090".into());
        assert_eq!(
            prometheus_target(&named).as_deref(),
            Some("monitoring/prometheus-k8s:9090")
        );
        // Grafana: the installed Prometheus as its data source, the
        // dashboard ConfigMap as its dashboards, the password from a Secret.
        let grafana = get("ConfigMap", "ralph-orchestrator-grafana");
        let sources: Json =
            serde_yaml_ng::from_str(grafana["data"]["datasources.yaml"].as_str().unwrap()).unwrap();
        assert_eq!(
            sources["datasources"][0]["url"],
            "http://ralph-orchestrator-prometheus.ralph.svc:9090"
        );
        let g = get("Deployment", "ralph-orchestrator-grafana");
        let g_pod = &g["spec"]["template"]["spec"];
        assert!(g_pod["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["configMap"]["name"] == "ralph-orchestrator-dashboard"));
        assert_eq!(
            g_pod["containers"][0]["env"][1]["valueFrom"]["secretKeyRef"]["name"],
            "ralph-orchestrator-grafana"
        );
        assert_eq!(
            get("Secret", "ralph-orchestrator-grafana")["stringData"]["admin-password"],
            "<from the secret store>"
        );
        get("Service", "ralph-orchestrator-grafana");
        let mut no_password = p.clone();
        no_password.remove("grafana_admin_secret");
        let e = values(
            &owner(),
            "app",
            &no_password,
            ApiVersions::modern(),
            "",
            None,
        )
        .unwrap_err();
        assert!(e.contains("grafana_admin_secret"), "{e}");
        // The Prometheus Operator's Prometheus takes the PrometheusRule instead.
        let with_operator = objects(
            p,
            ApiVersions {
                prometheus_operator: true,
                ..ApiVersions::modern()
            },
        );
        assert!(with_operator
            .iter()
            .all(|o| o.name() != "ralph-orchestrator-prometheus"));
        assert_eq!(prometheus_target(&props(serde_json::json!({}))), None);
    }

    #[test]
    fn the_autoscalers_choice_stands_within_its_range() {
        let p = props(serde_json::json!({}));
        assert_eq!(effective_replicas(&p, None), 3);
        assert_eq!(effective_replicas(&p, Some(7)), 7);
        assert_eq!(effective_replicas(&p, Some(1)), 3);
        assert_eq!(effective_replicas(&p, Some(12)), 3);
        let fixed = props(serde_json::json!({"autoscaling": false}));
        assert_eq!(effective_replicas(&fixed, Some(7)), 3);
    }

    #[test]
    fn values_cannot_break_the_yaml() {
        let objs = objects(
            props(serde_json::json!({"config": {"WEIRD": "a: b\n- c # {{ x }}"}})),
            ApiVersions::modern(),
        );
        assert_eq!(objs[2].object["data"]["WEIRD"], "a: b\n- c # {{ x }}");
    }

    #[test]
    fn a_config_change_changes_the_pod_template() {
        let a = objects(props(serde_json::json!({})), ApiVersions::modern());
        let b = objects(
            props(serde_json::json!({"log_level": "DEBUG"})),
            ApiVersions::modern(),
        );
        let hash = |o: &[Rendered]| {
            o.iter()
                .find(|r| r.kind() == "Deployment")
                .expect("d")
                .object["spec"]["template"]["metadata"]["annotations"]
                ["ralph-deploy.io/config-hash"]
                .clone()
        };
        assert_ne!(hash(&a), hash(&b));
    }
}
