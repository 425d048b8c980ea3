//! `check`: the deployment guide's production checklist and the clouds' own
//! rules as policy over a loaded stack, before any cloud call.
//!
//! Every rule reads the stack as written (variables substituted, references
//! kept as references: `${nodes_sg.id}` names the group, whatever its id will
//! be), so a finding points at the property to change, with its file, line
//! and column. Rules that need the plan (a replacement of a data store) read
//! its changes. `validate` refuses what can never work (a malformed CIDR, a
//! rollout that cannot schedule); `check` judges what works but should not
//! reach production, and a team can waive a finding in the stack with a
//! reason and a date.

pub mod rego;
mod rules;
pub mod sarif;

use chrono::NaiveDate;
use serde::Serialize;

use ralph_core::model::Action;
use ralph_stack::{Diagnostics, Span, Stack};

/// How much a finding weighs: errors stop `apply` unless waived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

impl Severity {
    pub fn label(self) -> &'static str {
        match self {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One built-in rule, as the rule reference lists it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Rule {
    pub id: &'static str,
    pub severity: Severity,
    /// What the rule holds true, in one line.
    pub title: &'static str,
    /// Why it matters in production.
    pub why: &'static str,
}

/// Every built-in rule.
pub const RULES: &[Rule] = &[
    Rule {
        id: "network.store-unreachable",
        severity: Severity::Error,
        title: "Every data store admits the cluster's nodes: an AWS store's security groups admit, on its port, a group the node groups' instances really carry (their `security_group_ids`, else the cluster security group EKS makes) or a range holding their subnets; a Google Cloud store with a private address has a private services connection on the cluster's network.",
        why: "The orchestrator's pods run on the nodes and connect from there; a store they cannot reach leaves every pod unready.",
    },
    Rule {
        id: "network.open-to-internet",
        severity: Severity::Error,
        title: "Nothing is open to 0.0.0.0/0 but the edge (TCP 80 and 443): security group and firewall ingress rules, and no database is publicly accessible.",
        why: "A database, cache or node port open to the internet is scanned within minutes.",
    },
    Rule {
        id: "network.api-endpoint-open",
        severity: Severity::Warning,
        title: "The cluster's public API endpoint admits named ranges only (EKS `public_access_cidrs`, GKE `authorized_networks`).",
        why: "An API server reachable from anywhere is one leaked credential away from the whole cluster.",
    },
    Rule {
        id: "versions.kubernetes-support",
        severity: Severity::Error,
        title: "The Kubernetes version is inside the provider's support at the check's date (support/kubernetes-versions.json); a warning 90 days before it ends.",
        why: "Past its end of support a provider stops patching the version and upgrades the cluster on its own schedule (EKS) or refuses to create it.",
    },
    Rule {
        id: "versions.store-support",
        severity: Severity::Error,
        title: "PostgreSQL and Redis major versions are inside the provider's support at the check's date (support/store-versions.json): an error past the end of all support, a warning in charged extended support and 90 days before standard support ends.",
        why: "Past standard support RDS, Cloud SQL and ElastiCache charge for extended support; past that they upgrade the store in a maintenance window, a major upgrade the application was never tested on, and refuse to create the version.",
    },
    Rule {
        id: "monitoring.prometheus",
        severity: Severity::Warning,
        title: "The orchestrator's alert rules have a Prometheus that loads them: `monitoring_install`, the Prometheus Operator among the stack's manifests, or a Prometheus named in `prometheus`.",
        why: "Rules that no Prometheus evaluates never fire: the guide's alerts exist on paper only.",
    },
    Rule {
        id: "logs.shipped",
        severity: Severity::Warning,
        title: "On EKS the orchestrator's container logs are shipped (Fluent Bit or the amazon-cloudwatch-observability add-on); GKE sends them to Cloud Logging itself.",
        why: "A pod's logs live on its node and go with the pod: after a crash, a rollback or a scale-down nothing is left to read.",
    },
    Rule {
        id: "secrets.rotation",
        severity: Severity::Warning,
        title: "The application's database password (the secret a `postgres.role` logs in with) rotates on a schedule: `rotate_every_days` on its secret.",
        why: "The guide's checklist asks for rotated keys; a password that only changes when someone remembers outlives the people who knew it.",
    },
    Rule {
        id: "scheduling.drain",
        severity: Severity::Error,
        title: "The PodDisruptionBudget lets a node drain: `min_available` is below `replicas`.",
        why: "A budget that allows no eviction blocks every node upgrade and every scale-down.",
    },
    Rule {
        id: "stores.high-availability",
        severity: Severity::Error,
        title: "Data stores survive a zone: RDS Multi-AZ, Cloud SQL REGIONAL, ElastiCache Multi-AZ with automatic failover, Memorystore STANDARD_HA.",
        why: "The guide's checklist: a single-zone store is an outage whenever its zone has one.",
    },
    Rule {
        id: "stores.replica",
        severity: Severity::Warning,
        title: "The primary database has a read replica in the stack.",
        why: "The guide asks for one: reads scale out, and failover has a warm target.",
    },
    Rule {
        id: "recovery.failover-name",
        severity: Severity::Warning,
        title: "A Cloud SQL primary with a read replica lets the tool choose its name (`name_prefix`).",
        why: "Cloud SQL renames no instance: after `failover` the promoted replica serves under its own name, which only a generated name can follow; with a fixed `name` failover refuses, and the next plan would replace the promoted primary.",
    },
    Rule {
        id: "stores.backups",
        severity: Severity::Error,
        title: "Databases keep backups at least 7 days with point-in-time recovery; caches keep snapshots.",
        why: "Without them a bad migration or a deleted row cannot be undone.",
    },
    Rule {
        id: "stores.encryption",
        severity: Severity::Error,
        title: "Data is encrypted at rest and in transit: RDS storage, ElastiCache at rest and TLS, Memorystore TLS, and the application's database connection never `sslmode=disable`.",
        why: "The guide's checklist; credentials and task data cross the network.",
    },
    Rule {
        id: "stores.deletion-protection",
        severity: Severity::Error,
        title: "Databases have the cloud's deletion protection on, and every data store is `protect: true`.",
        why: "One mistaken destroy or rename must not take the data with it.",
    },
    Rule {
        id: "cluster.network-policy",
        severity: Severity::Error,
        title: "The orchestrator's NetworkPolicy is enforced by its cluster: EKS with the vpc-cni add-on's network policy agent on, GKE with Dataplane V2.",
        why: "Without an enforcing network plugin the policy is stored and ignored, and every pod can reach the stores.",
    },
    Rule {
        id: "cluster.metrics",
        severity: Severity::Error,
        title: "The orchestrator's autoscaler has a metrics source: metrics-server on EKS (GKE runs its own).",
        why: "A HorizontalPodAutoscaler without metrics never scales.",
    },
    Rule {
        id: "edge.tls",
        severity: Severity::Warning,
        title: "A public host name has a certificate issuer the stack installs (a cert-manager ClusterIssuer among its manifests), a Google-managed certificate (Ingress class `gce` on GKE), or an ACM certificate on an ALB (class `alb` with `certificate_arn`).",
        why: "Without an issuer the Ingress's TLS secret never exists and the edge serves no valid certificate.",
    },
    Rule {
        id: "edge.waf",
        severity: Severity::Warning,
        title: "A public host name is protected by a web application firewall (AWS WAF, Cloud Armor).",
        why: "The guide's architecture puts a WAF in front of the load balancer for DDoS and abuse protection.",
    },
    Rule {
        id: "app.image-pinned",
        severity: Severity::Error,
        title: "The orchestrator's image is a pinned release, never `latest`.",
        why: "A restarted pod would pull whatever `latest` is that day: two releases in one Deployment, and no rollback.",
    },
    Rule {
        id: "app.database-url",
        severity: Severity::Error,
        title: "DATABASE_URL uses the `postgresql://` scheme.",
        why: "SQLAlchemy 1.4 and later have no dialect named `postgres`: the application cannot start.",
    },
    Rule {
        id: "recovery.objectives",
        severity: Severity::Warning,
        title: "A stack with a database declares its recovery objectives (`recovery: { rpo, rto }`).",
        why: "The guide's SLA (recovery under 4 hours) is only held if `status` can hold the backups against it.",
    },
    Rule {
        id: "recovery.backup-bucket",
        severity: Severity::Error,
        title: "A stack with a recovery point objective has a bucket for `ralph-deploy backup` (`aws.s3_bucket`, `gcp.storage_bucket`).",
        why: "`backup` has nowhere to write and `status` can only ever report the RPO as missed.",
    },
    Rule {
        id: "plan.replaces-data",
        severity: Severity::Error,
        title: "A plan does not replace or delete a data store (a database, a cache, a backup bucket) except in a destroy.",
        why: "A replacement is a new, empty store: the data of the old one is gone.",
    },
    Rule {
        id: "waivers.valid",
        severity: Severity::Error,
        title: "Every waiver names a rule that exists and an address the stack declares, and has not expired.",
        why: "An expired or misspelt waiver silently stops covering what it was written for.",
    },
];

pub fn rule(id: &str) -> Option<&'static Rule> {
    RULES.iter().find(|r| r.id == id)
}

/// One finding: a rule that does not hold at one place of the stack.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// A built-in rule's id, or `policy.NAME` for a Rego package's.
    pub rule: String,
    pub severity: Severity,
    /// The resource (or `stack` for the stack as a whole).
    pub address: String,
    pub message: String,
    pub help: String,
    pub file: String,
    pub line: usize,
    pub column: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The reason of the waiver that accepts it, if one does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waived: Option<String>,
}

/// What `check` found, in source order.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub date: Option<NaiveDate>,
    pub findings: Vec<Finding>,
}

impl Report {
    /// Errors no waiver accepts: `apply` refuses while there are any.
    pub fn blocking(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error && f.waived.is_none())
    }

    pub fn count(&self, severity: Severity) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == severity && f.waived.is_none())
            .count()
    }

    pub fn waived(&self) -> usize {
        self.findings.iter().filter(|f| f.waived.is_some()).count()
    }

    /// One line: "2 errors, 3 warnings, 1 waived".
    pub fn summary(&self) -> String {
        format!(
            "{} error(s), {} warning(s), {} waived",
            self.count(Severity::Error),
            self.count(Severity::Warning),
            self.waived()
        )
    }

    /// The findings as text, one block each.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let via = f
                .via
                .as_ref()
                .map(|v| format!(" (in {v})"))
                .unwrap_or_default();
            match &f.waived {
                Some(reason) => out.push_str(&format!(
                    "{}:{}:{}: waived {}[{}] {}{via}\n  waived because: {reason}\n",
                    f.file,
                    f.line,
                    f.column,
                    f.severity.label(),
                    f.rule,
                    f.message
                )),
                None => out.push_str(&format!(
                    "{}:{}:{}: {}[{}] {}{via}\n  help: {}\n",
                    f.file,
                    f.line,
                    f.column,
                    f.severity.label(),
                    f.rule,
                    f.message,
                    f.help
                )),
            }
        }
        out
    }
}

/// Collects findings with the locations of one stack's files.
pub struct Findings<'a> {
    stack: &'a Stack,
    out: Vec<Finding>,
}

impl<'a> Findings<'a> {
    fn new(stack: &'a Stack) -> Self {
        Findings {
            stack,
            out: Vec::new(),
        }
    }

    pub fn add(
        &mut self,
        rule: &'static str,
        address: &str,
        span: Span,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        let severity = self::rule(rule).map_or(Severity::Error, |r| r.severity);
        self.add_as(rule, severity, address, span, message, help);
    }

    /// A finding of a custom rule (a Rego package's `deny` or `warn`),
    /// placed on its resource when it names one the stack declares.
    fn add_custom(&mut self, c: rego::Custom) {
        let address = c.address.unwrap_or_else(|| "stack".to_string());
        let span = self
            .stack
            .resources
            .get(&address)
            .map_or(Span::default(), |r| r.span);
        let help = format!("a rule of the team's policies (`{}`)", c.rule);
        self.push(c.rule, c.severity, &address, span, c.message, help);
    }

    /// A finding of another severity than its rule's (a support window
    /// that ends soon rather than one that has ended).
    pub fn add_as(
        &mut self,
        rule: &'static str,
        severity: Severity,
        address: &str,
        span: Span,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.push(rule.to_string(), severity, address, span, message, help);
    }

    fn push(
        &mut self,
        rule: String,
        severity: Severity,
        address: &str,
        span: Span,
        message: impl Into<String>,
        help: impl Into<String>,
    ) {
        // Diagnostics turns a span into a file, line and column (and the
        // component use a component file's span came through).
        let mut d = Diagnostics::with_files(self.stack.files.clone());
        d.error_help(span, message, help);
        let p = d.problems.pop().expect("one problem was just pushed");
        self.out.push(Finding {
            rule,
            severity,
            address: address.to_string(),
            message: p.message,
            help: p.help.unwrap_or_default(),
            file: p.file,
            line: p.line,
            column: p.column,
            via: p.via,
            waived: None,
        });
    }
}

/// The custom rules of a stack (its `policies:`, relative to the stack
/// file) and of `check --policy`.
pub fn policies(stack: &Stack, extra: &[std::path::PathBuf]) -> Result<rego::Policies, String> {
    let base = stack.base_dir();
    let paths: Vec<std::path::PathBuf> = stack
        .policies
        .iter()
        .map(|p| base.join(&p.value))
        .chain(extra.iter().cloned())
        .collect();
    rego::Policies::read(&paths)
}

/// Checks `stack` at `date` (support windows, waivers' ends); with `plan`,
/// also what the plan would do; with `policies`, the team's own rules too.
/// Err: a policy that cannot be evaluated.
pub fn check(
    stack: &Stack,
    date: NaiveDate,
    plan: Option<&[(String, String, Action)]>,
    policies: &rego::Policies,
) -> Result<Report, String> {
    let mut f = Findings::new(stack);
    rules::all(stack, date, &mut f);
    if let Some(changes) = plan {
        rules::plan(stack, changes, &mut f);
    }
    if !policies.is_empty() {
        for c in policies.eval(&rego::input(stack, date, plan))? {
            f.add_custom(c);
        }
    }
    waivers(stack, date, &policies.rules, &mut f);
    let mut findings = f.out;
    for finding in &mut findings {
        if finding.rule == "waivers.valid" {
            continue;
        }
        if let Some(w) = stack
            .waivers
            .iter()
            .filter(|w| w.until.as_ref().is_none_or(|u| u.value >= date))
            .find(|w| w.covers(&finding.rule, &finding.address))
        {
            finding.waived = Some(match &w.until {
                Some(u) => format!("{} (until {})", w.reason, u.value),
                None => w.reason.clone(),
            });
        }
    }
    findings.sort_by(|a, b| {
        (&a.file, a.line, a.column, &a.rule).cmp(&(&b.file, b.line, b.column, &b.rule))
    });
    findings.dedup_by(|a, b| a.rule == b.rule && a.address == b.address && a.message == b.message);
    Ok(Report {
        date: Some(date),
        findings,
    })
}

/// Waivers that name no rule or no resource, or have ended.
fn waivers(stack: &Stack, date: NaiveDate, custom: &[String], f: &mut Findings) {
    for w in &stack.waivers {
        if rule(&w.rule.value).is_none() && !custom.contains(&w.rule.value) {
            let known = RULES
                .iter()
                .map(|r| r.id)
                .chain(custom.iter().map(String::as_str));
            let hint = ralph_core::model::kinds::did_you_mean(&w.rule.value, known)
                .map(|s| format!("did you mean `{s}`? "))
                .unwrap_or_default();
            f.add(
                "waivers.valid",
                "stack",
                w.rule.span,
                format!("the waiver names `{}`, which is not a rule", w.rule.value),
                format!("{hint}`ralph-deploy reference rules` lists them"),
            );
        }
        if let Some(a) = &w.address {
            let known = stack.resources.keys().any(|r| {
                r == &a.value
                    || r.strip_prefix(a.value.as_str())
                        .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
            });
            if !known {
                f.add(
                    "waivers.valid",
                    "stack",
                    a.span,
                    format!("the waiver's address `{}` is not a resource of this stack", a.value),
                    "write a resource's address as `plan` shows it (a component use or a for_each name covers everything under it)",
                );
            }
        }
        if let Some(u) = &w.until {
            if u.value < date {
                f.add(
                    "waivers.valid",
                    "stack",
                    u.span,
                    format!(
                        "the waiver of `{}` ended on {}; the findings it accepted count again",
                        w.rule.value, u.value
                    ),
                    "fix what it accepted, or review the reason and set a new `until`",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn production(name: &str) -> Stack {
        let options = ralph_stack::LoadOptions {
            environment: Some("production".into()),
            env_variables: vec![("api_allowed_cidrs".into(), "[\"10.99.0.0/16\"]".into())],
            ..Default::default()
        };
        let path = crate::testing::engine_tests::repo()
            .join("stacks")
            .join(name);
        Stack::load(&path, &options, &crate::registry()).unwrap_or_else(|d| panic!("{d}"))
    }

    #[test]
    fn a_plan_that_replaces_or_deletes_a_store_is_an_error_unless_it_destroys() {
        let stack = production("aws-production.yaml");
        let today = NaiveDate::from_ymd_opt(2026, 12, 5).unwrap();
        let changes = vec![
            (
                "db".to_string(),
                "aws.rds_instance".to_string(),
                Action::Replace,
            ),
            (
                "redis".to_string(),
                "aws.elasticache_replication_group".to_string(),
                Action::Update,
            ),
            (
                "old".to_string(),
                "gcp.sql_instance".to_string(),
                Action::Delete,
            ),
            ("vpc".to_string(), "aws.vpc".to_string(), Action::Replace),
        ];
        let none = rego::Policies::default();
        let report = check(&stack, today, Some(&changes), &none).unwrap();
        let found: Vec<(&str, usize)> = report
            .findings
            .iter()
            .filter(|f| f.rule == "plan.replaces-data")
            .map(|f| (f.address.as_str(), f.line))
            .collect();
        let db_line = stack.source.lines().position(|l| l == "  db:").unwrap() + 1;
        // A store no longer declared is placed at the top of the stack file.
        assert_eq!(found, vec![("old", 1), ("db", db_line)]);
        assert!(report.blocking().any(|f| f.rule == "plan.replaces-data"));
        // Without a plan (check itself, a destroy) there is nothing to judge.
        let report = check(&stack, today, None, &none).unwrap();
        assert!(report
            .findings
            .iter()
            .all(|f| f.rule != "plan.replaces-data"));
    }

    #[test]
    fn rule_ids_are_unique_and_dotted() {
        let mut ids: Vec<_> = RULES.iter().map(|r| r.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len());
        assert!(RULES.iter().all(|r| r.id.contains('.')
            && r.id
                .chars()
                .all(|c| c.is_ascii_lowercase() || c == '.' || c == '-')));
    }
}
