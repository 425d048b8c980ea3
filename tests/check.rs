//! `ralph-deploy check`: the shipped stacks pass with no error, and each
//! defect the real-account review found is caught again when it is put back
//! into them, at the line of the property to change. No cloud is contacted.

use crate::common;

use std::path::{Path, PathBuf};

use serde_json::Value;

/// A copy of a shipped stack with `edits` made (each must match once),
/// beside links to the directories it refers to; and its text.
struct Variant {
    _dir: tempfile::TempDir,
    stack: PathBuf,
    text: String,
}

fn variant(stack: &str, edits: &[(&str, &str)]) -> Variant {
    let repo = common::repo();
    let dir = tempfile::tempdir().unwrap();
    for d in ["components", "addons", "migrations"] {
        std::os::unix::fs::symlink(repo.join(d), dir.path().join(d)).unwrap();
    }
    std::fs::create_dir(dir.path().join("stacks")).unwrap();
    let mut text = std::fs::read_to_string(repo.join("stacks").join(stack)).unwrap();
    for (from, to) in edits {
        assert_eq!(
            text.matches(from).count(),
            1,
            "`{from}` is not once in {stack}"
        );
        text = text.replace(from, to);
    }
    let path = dir.path().join("stacks").join(stack);
    std::fs::write(&path, &text).unwrap();
    Variant {
        _dir: dir,
        stack: path,
        text,
    }
}

/// `check --format json` of a stack: its exit code and findings.
fn check(stack: &Path, args: &[&str], vars: &[(&str, &str)]) -> (Option<i32>, Vec<Value>) {
    let mut cmd = std::process::Command::new(common::BIN);
    cmd.arg("check")
        .arg(stack)
        .args(["--format", "json"])
        .args(args)
        .env("RALPH_DEPLOY_VAR_api_allowed_cidrs", "[\"10.99.0.0/16\"]")
        .env_remove("RALPH_DEPLOY_ENV");
    for (k, v) in vars {
        cmd.env(format!("RALPH_DEPLOY_VAR_{k}"), v);
    }
    let out = cmd.output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            common::text(&out.stdout),
            common::text(&out.stderr)
        )
    });
    (
        out.status.code(),
        report["findings"].as_array().unwrap().clone(),
    )
}

/// The 1-based lines of `text` that contain `needle`.
fn lines_of(text: &str, needle: &str) -> Vec<u64> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .map(|(i, _)| i as u64 + 1)
        .collect()
}

/// The line of the only line of `text` that contains `needle`.
fn line_of(text: &str, needle: &str) -> u64 {
    let lines = lines_of(text, needle);
    assert_eq!(lines.len(), 1, "`{needle}` is on lines {lines:?}");
    lines[0]
}

fn component_line(needle: &str) -> u64 {
    line_of(
        &std::fs::read_to_string(common::repo().join("components/orchestrator.yaml")).unwrap(),
        needle,
    )
}

/// The unwaived findings of `rule`, as (severity, file name, line, address).
fn of(findings: &[Value], rule: &str) -> Vec<(String, String, u64, String)> {
    findings
        .iter()
        .filter(|f| f["rule"] == rule && f.get("waived").is_none())
        .map(|f| {
            (
                f["severity"].as_str().unwrap().to_string(),
                Path::new(f["file"].as_str().unwrap())
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                f["line"].as_u64().unwrap(),
                f["address"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn errors(findings: &[Value]) -> Vec<&Value> {
    findings
        .iter()
        .filter(|f| f["severity"] == "error" && f.get("waived").is_none())
        .collect()
}

fn e(file: &str, line: u64, address: &str) -> (String, String, u64, String) {
    ("error".into(), file.into(), line, address.into())
}

#[test]
fn the_shipped_stacks_pass_with_no_error() {
    let repo = common::repo();
    for stack in ["aws-production.yaml", "gcp-production.yaml"] {
        for env in ["production", "staging"] {
            let (code, findings) = check(&repo.join("stacks").join(stack), &["--env", env], &[]);
            assert!(errors(&findings).is_empty(), "{stack} {env}: {findings:#?}");
            assert_eq!(code, Some(0), "{stack} {env}");
        }
    }
    for stack in [
        "kubernetes-app.yaml",
        "existing-cluster.yaml",
        "aws-network.yaml",
    ] {
        let (code, findings) = check(
            &repo.join("stacks").join(stack),
            &["--env", "production"],
            &[],
        );
        assert!(errors(&findings).is_empty(), "{stack}: {findings:#?}");
        assert_eq!(code, Some(0));
    }
}

/// Issue item 1: the stores admit a group the managed nodes do not carry.
#[test]
fn stores_behind_a_group_the_nodes_do_not_carry_are_unreachable() {
    let v = variant(
        "aws-production.yaml",
        &[(
            "      security_group_ids: [\"${nodes_sg.id}\", \"${eks.cluster_security_group_id}\"]\n",
            "",
        )],
    );
    let (code, findings) = check(&v.stack, &["--env", "production"], &[]);
    assert_eq!(code, Some(1));
    let mut found = of(&findings, "network.store-unreachable");
    found.sort_by_key(|f| f.2);
    let db = lines_of(&v.text, "vpc_security_group_ids: [\"${db_sg.id}\"]");
    assert_eq!(
        found,
        vec![
            e("aws-production.yaml", db[0], "db"),
            e("aws-production.yaml", db[1], "db_replica"),
            e(
                "aws-production.yaml",
                line_of(&v.text, "security_group_ids: [\"${redis_sg.id}\"]"),
                "redis"
            ),
        ],
        "{findings:#?}"
    );
    let message = findings.iter().find(|f| f["address"] == "db").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("cluster security group of `eks`"),
        "{message}"
    );
    // The stores admitting the cluster security group instead: reachable.
    let fixed = variant(
        "aws-production.yaml",
        &[
            (
                "      security_group_ids: [\"${nodes_sg.id}\", \"${eks.cluster_security_group_id}\"]\n",
                "",
            ),
            (
                "from_port: 5432\n          source_security_group_id: ${nodes_sg.id}",
                "from_port: 5432\n          cidr_block: ${var.net}.0.0/16",
            ),
        ],
    );
    let (_, findings) = check(&fixed.stack, &["--env", "production"], &[]);
    assert_eq!(
        of(&findings, "network.store-unreachable")
            .iter()
            .map(|f| f.3.as_str())
            .collect::<Vec<_>>(),
        vec!["redis"],
        "a range holding the nodes' subnets admits them: {findings:#?}"
    );
}

/// Google Cloud: a private address needs a private services connection
/// on the cluster's network.
#[test]
fn a_private_cloud_sql_address_without_private_services_access_is_caught() {
    let v = variant(
        "gcp-production.yaml",
        &[(
            "private_network: ${vpc.id}",
            "private_network: projects/other/global/networks/elsewhere",
        )],
    );
    let (code, findings) = check(&v.stack, &["--env", "production"], &[]);
    assert_eq!(code, Some(1));
    let line = line_of(&v.text, "private_network: projects/other");
    // The read replica is on the primary's network (`${db.private_network}`,
    // followed to it), on its own line.
    let replica = line_of(&v.text, "private_network: ${db.private_network}");
    assert_eq!(
        of(&findings, "network.store-unreachable"),
        vec![
            e("gcp-production.yaml", line, "db"),
            e("gcp-production.yaml", line, "db"),
            e("gcp-production.yaml", replica, "db_replica"),
            e("gcp-production.yaml", replica, "db_replica")
        ],
        "no connection on that network, and not the cluster's: {findings:#?}"
    );
}

/// Issue item 2: a version whose support ends (warning ahead, error after).
#[test]
fn kubernetes_versions_are_held_against_the_support_table_at_a_date() {
    let table: Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("support/kubernetes-versions.json")).unwrap(),
    )
    .unwrap();
    let text = std::fs::read_to_string(common::repo().join("stacks/aws-production.yaml")).unwrap();
    let version = text
        .split("kubernetes_version:")
        .nth(1)
        .unwrap()
        .split("default: \"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let end = chrono::NaiveDate::parse_from_str(
        table["eks"]["versions"][&version]["end_of_support"]
            .as_str()
            .unwrap(),
        "%Y-%m-%d",
    )
    .unwrap();
    let stack = common::repo().join("stacks/aws-production.yaml");
    let line = line_of(&text, "version: ${var.kubernetes_version}");
    for (days, severity, code) in [
        (-120, None, 0),
        (-30, Some("warning"), 0),
        (1, Some("error"), 1),
    ] {
        let date = (end + chrono::Duration::days(days)).to_string();
        let (exit, findings) = check(&stack, &["--env", "production", "--date", &date], &[]);
        let found = of(&findings, "versions.kubernetes-support");
        match severity {
            None => assert!(found.is_empty(), "{date}: {found:?}"),
            Some(s) => assert_eq!(
                found,
                vec![(
                    s.to_string(),
                    "aws-production.yaml".to_string(),
                    line,
                    "eks".to_string()
                )],
                "{date}"
            ),
        }
        assert_eq!(exit, Some(code), "{date}");
    }
}

/// Support windows of the stores (support/store-versions.json): charged
/// extended support and a standard support about to end are warnings, past
/// all support an error, each on the line of the version.
#[test]
fn store_versions_are_held_against_the_support_table_at_a_date() {
    let aws = variant(
        "aws-production.yaml",
        &[
            ("engine_version: \"15\"", "engine_version: \"13.20\""),
            ("engine_version: \"7.1\"", "engine_version: \"6.2\""),
        ],
    );
    let db_line = line_of(&aws.text, "engine_version: \"13.20\"");
    let redis_line = line_of(&aws.text, "engine_version: \"6.2\"");
    let file = "aws-production.yaml";
    for (date, db, redis, code) in [
        // RDS 13 in extended support; ElastiCache 6's standard ends in 56 days.
        ("2026-12-06", "warning", Some("warning"), 0),
        // Standard support of Redis 6 ends more than 90 days later.
        ("2026-10-01", "warning", None, 0),
        // RDS 13's extended support ended on 2029-02-28.
        ("2029-03-01", "error", Some("warning"), 1),
    ] {
        let (exit, findings) = check(&aws.stack, &["--env", "production", "--date", date], &[]);
        let mut want = vec![(db.to_string(), file.to_string(), db_line, "db".to_string())];
        if let Some(r) = redis {
            want.push((
                r.to_string(),
                file.to_string(),
                redis_line,
                "redis".to_string(),
            ));
        }
        assert_eq!(of(&findings, "versions.store-support"), want, "{date}");
        assert_eq!(exit, Some(code), "{date}");
    }
    let (_, findings) = check(
        &aws.stack,
        &["--env", "production", "--date", "2029-03-01"],
        &[],
    );
    let message = findings
        .iter()
        .find(|f| f["rule"] == "versions.store-support" && f["address"] == "db")
        .unwrap();
    assert!(
        message["message"].as_str().unwrap().contains("2029-02-28")
            && message["help"]
                .as_str()
                .unwrap()
                .ends_with("on 2029-03-01: 17"),
        "{message}"
    );
    // Cloud SQL: PostgreSQL 12 was deprecated on 2028-02-01; 9.6 is older
    // than RDS's whole table.
    let gcp = variant(
        "gcp-production.yaml",
        &[(
            "database_version: POSTGRES_15",
            "database_version: POSTGRES_12",
        )],
    );
    let (exit, findings) = check(
        &gcp.stack,
        &["--env", "production", "--date", "2028-02-01"],
        &[],
    );
    assert_eq!(
        of(&findings, "versions.store-support"),
        vec![e(
            "gcp-production.yaml",
            line_of(&gcp.text, "database_version: POSTGRES_12"),
            "db"
        )]
    );
    assert_eq!(exit, Some(1));
    let old = variant(
        "aws-production.yaml",
        &[("engine_version: \"15\"", "engine_version: \"9.6\"")],
    );
    let (_, findings) = check(&old.stack, &["--env", "production"], &[]);
    assert_eq!(
        of(&findings, "versions.store-support"),
        vec![e(file, line_of(&old.text, "engine_version: \"9.6\""), "db")]
    );
}

/// The application's database password rotates on a stated schedule: the
/// shipped component states one; a secret a role logs in with and no
/// schedule is a warning on that secret's line, and the schedule is held
/// to a year.
#[test]
fn a_database_password_without_a_rotation_schedule_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let stack = |every: &str| {
        format!(
            "name: rot\ncloud:\n  aws: {{ region: us-east-1 }}\nresources:\n  app_password:\n    kind: aws.secret\n    properties:\n      name: rot/app-password\n      generate: {{ bytes: 40, encoding: alphanumeric }}\n{every}  app_role:\n    kind: postgres.role\n    properties:\n      name: ralph_app\n      password_secret: ${{app_password.ref}}\n      url: postgresql://postgres@db.internal:5432/ralph\n"
        )
    };
    let path = dir.path().join("rot.yaml");
    std::fs::write(&path, stack("")).unwrap();
    let (exit, findings) = check(&path, &[], &[]);
    assert_eq!(
        of(&findings, "secrets.rotation"),
        vec![(
            "warning".to_string(),
            "rot.yaml".to_string(),
            5,
            "app_password".to_string()
        )]
    );
    assert_eq!(exit, Some(0));
    std::fs::write(&path, stack("      rotate_every_days: 90\n")).unwrap();
    let (_, findings) = check(&path, &[], &[]);
    assert!(of(&findings, "secrets.rotation").is_empty(), "{findings:?}");
    std::fs::write(&path, stack("      rotate_every_days: 400\n")).unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["check", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = common::text(&out.stderr);
    assert!(
        err.contains("rot.yaml:10") && err.contains("rotate_every_days"),
        "{err}"
    );
}

/// Alert rules nothing loads: the shipped stacks run their own Prometheus
/// (`monitoring_install`); without it the orchestrator is found, at its
/// `monitoring` line in the component.
#[test]
fn alert_rules_without_a_prometheus_are_found() {
    let v = variant(
        "aws-production.yaml",
        &[("      monitoring_install: true\n", "")],
    );
    let (exit, findings) = check(&v.stack, &["--env", "production"], &[]);
    assert_eq!(
        of(&findings, "monitoring.prometheus"),
        vec![(
            "warning".to_string(),
            "orchestrator.yaml".to_string(),
            component_line("    kind: kubernetes.orchestrator") - 1,
            "app.orchestrator".to_string()
        )]
    );
    assert_eq!(exit, Some(0));
    // A Prometheus named for `status` is one that loads them.
    let named = variant(
        "aws-production.yaml",
        &[(
            "      monitoring_install: true\n",
            "      prometheus: monitoring/prometheus-operated:9090\n",
        )],
    );
    let (_, findings) = check(&named.stack, &["--env", "production"], &[]);
    assert!(of(&findings, "monitoring.prometheus").is_empty());
}

/// Logs that nothing ships off EKS are found at the orchestrator; the shipped
/// AWS stack's Fluent Bit add-on is what ships them.
#[test]
fn container_logs_nothing_ships_off_eks_are_found() {
    let repo = common::repo();
    let text = std::fs::read_to_string(repo.join("stacks/aws-production.yaml")).unwrap();
    let start = text.find("  log_shipper:\n").unwrap();
    let end = start + text[start..].find("\n\n").unwrap() + 1;
    let v = variant("aws-production.yaml", &[(&text[start..end], "")]);
    let (exit, findings) = check(&v.stack, &["--env", "production"], &[]);
    assert_eq!(
        of(&findings, "logs.shipped"),
        vec![(
            "warning".to_string(),
            "orchestrator.yaml".to_string(),
            component_line("    kind: kubernetes.orchestrator") + 5,
            "app.orchestrator".to_string()
        )]
    );
    assert_eq!(exit, Some(0));
}

/// Issue item 7: NetworkPolicies nobody enforces; and anything but the
/// edge open to the internet.
#[test]
fn unenforced_network_policies_and_open_ports_are_caught() {
    let v = variant(
        "aws-production.yaml",
        &[
            ("      configuration: '{\"enableNetworkPolicy\": \"true\"}'\n", ""),
            (
                "          from_port: 6379\n",
                "          from_port: 6379\n        - protocol: tcp\n          from_port: 6379\n          cidr_block: 0.0.0.0/0\n          description: for a laptop\n",
            ),
        ],
    );
    let (code, findings) = check(&v.stack, &["--env", "production"], &[]);
    assert_eq!(code, Some(1));
    let orchestrator = component_line("  orchestrator:");
    assert_eq!(
        of(&findings, "cluster.network-policy"),
        vec![e("orchestrator.yaml", orchestrator, "app.orchestrator")]
    );
    // The added rule is the second of redis_sg's ingress list.
    let open = of(&findings, "network.open-to-internet");
    assert_eq!(open.len(), 1, "{findings:#?}");
    assert_eq!(open[0].3, "redis_sg");
    assert_eq!(open[0].2, line_of(&v.text, "description: for a laptop") - 3);

    let g = variant(
        "gcp-production.yaml",
        &[("dataplane_v2: true", "dataplane_v2: false")],
    );
    let (_, findings) = check(&g.stack, &["--env", "production"], &[]);
    assert_eq!(
        of(&findings, "cluster.network-policy"),
        vec![e("orchestrator.yaml", orchestrator, "app.orchestrator")]
    );
}

/// Issue item 4: no metrics for the autoscaler on EKS.
#[test]
fn an_autoscaler_without_metrics_server_is_caught() {
    let v = variant(
        "aws-production.yaml",
        &[("name: metrics-server", "name: coredns")],
    );
    let (code, findings) = check(&v.stack, &["--env", "production"], &[]);
    assert_eq!(code, Some(1));
    assert_eq!(
        of(&findings, "cluster.metrics"),
        vec![e(
            "orchestrator.yaml",
            component_line("  orchestrator:"),
            "app.orchestrator"
        )]
    );
}

/// Issue item 9: the application's image and URL scheme.
#[test]
fn a_floating_image_and_a_postgres_scheme_are_caught() {
    let stack = common::repo().join("stacks/aws-production.yaml");
    let (code, findings) = check(&stack, &["--env", "production"], &[("image_tag", "latest")]);
    assert_eq!(code, Some(1));
    assert_eq!(
        of(&findings, "app.image-pinned"),
        vec![e(
            "orchestrator.yaml",
            component_line("tag: ${input.image_tag}"),
            "app.orchestrator"
        )]
    );
    let app = common::repo().join("stacks/kubernetes-app.yaml");
    let text = std::fs::read_to_string(&app).unwrap();
    let (code, findings) = check(
        &app,
        &["--env", "production"],
        &[("database_url", "postgres://ralph_app@db:5432/ralph")],
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        of(&findings, "app.database-url"),
        vec![e(
            "kubernetes-app.yaml",
            line_of(&text, "database_url: ${var.database_url}"),
            "orchestrator"
        )]
    );
}

/// The guide's checklist on the stores, one property at a time.
#[test]
fn the_guides_checklist_on_the_stores() {
    let stack = common::repo().join("stacks/aws-production.yaml");
    let text = std::fs::read_to_string(&stack).unwrap();
    for (var, value, rule, needle) in [
        (
            "db_multi_az",
            "false",
            "stores.high-availability",
            "multi_az: ${var.db_multi_az}",
        ),
        (
            "db_backup_days",
            "3",
            "stores.backups",
            "backup_retention_days: ${var.db_backup_days}",
        ),
    ] {
        let (code, findings) = check(&stack, &["--env", "production"], &[(var, value)]);
        assert_eq!(code, Some(1), "{var}");
        assert_eq!(
            of(&findings, rule),
            vec![e("aws-production.yaml", line_of(&text, needle), "db")],
            "{var}"
        );
    }
    let v = variant(
        "aws-production.yaml",
        &[
            ("storage_encrypted: true", "storage_encrypted: false"),
            (
                "kind: aws.rds_instance\n    protect: true\n",
                "kind: aws.rds_instance\n",
            ),
        ],
    );
    let (_, findings) = check(&v.stack, &["--env", "production"], &[]);
    assert_eq!(
        of(&findings, "stores.encryption"),
        vec![e(
            "aws-production.yaml",
            line_of(&v.text, "storage_encrypted: false"),
            "db"
        )]
    );
    let db_line = v.text.lines().position(|l| l == "  db:").unwrap() as u64 + 1;
    assert_eq!(
        of(&findings, "stores.deletion-protection"),
        vec![e("aws-production.yaml", db_line, "db")]
    );
}

/// Issue item 5's companion: a disruption budget that blocks every drain.
#[test]
fn a_disruption_budget_that_blocks_drains_is_caught() {
    let v = variant(
        "kubernetes-app.yaml",
        &[(
            "      replicas: ${var.replicas}\n",
            "      replicas: ${var.replicas}\n      min_available: ${var.replicas}\n",
        )],
    );
    let (code, findings) = check(&v.stack, &["--env", "production"], &[]);
    assert_eq!(code, Some(1));
    assert_eq!(
        of(&findings, "scheduling.drain"),
        vec![e(
            "kubernetes-app.yaml",
            line_of(&v.text, "min_available:"),
            "orchestrator"
        )]
    );
}

/// Waivers accept a finding with a reason, end on their date, and must
/// name a rule and a resource that exist.
#[test]
fn waivers_accept_findings_until_they_end() {
    let waiver = |rule: &str, address: &str, until: &str| {
        format!("waivers:\n  - {{ rule: {rule}, address: {address}, reason: the ADR says so, until: {until} }}\n")
    };
    let stack = "aws-production.yaml";
    let tag = [("image_tag", "latest")];
    let v = variant(
        stack,
        &[(
            "\nrecovery:\n",
            &format!(
                "\n{}recovery:\n",
                waiver("app.image-pinned", "app", "2030-01-31")
            ),
        )],
    );
    let (code, findings) = check(&v.stack, &["--env", "production"], &tag);
    assert_eq!(code, Some(0), "{findings:#?}");
    let pinned = findings
        .iter()
        .find(|f| f["rule"] == "app.image-pinned")
        .unwrap();
    assert_eq!(pinned["waived"], "the ADR says so (until 2030-01-31)");
    // After its day it no longer covers, and is a finding itself.
    let (code, findings) = check(
        &v.stack,
        &["--env", "production", "--date", "2030-02-01"],
        &tag,
    );
    assert_eq!(code, Some(1));
    assert_eq!(of(&findings, "app.image-pinned").len(), 1);
    assert_eq!(
        of(&findings, "waivers.valid"),
        vec![e(stack, line_of(&v.text, "until: 2030-01-31"), "stack")]
    );
    // A misspelt rule and an address the stack does not have.
    let v = variant(
        stack,
        &[(
            "\nrecovery:\n",
            &format!(
                "\n{}recovery:\n",
                waiver("app.image-pined", "ap", "2030-01-31")
            ),
        )],
    );
    let (code, findings) = check(&v.stack, &["--env", "production"], &[]);
    assert_eq!(code, Some(1));
    let messages: Vec<&str> = findings
        .iter()
        .filter(|f| f["rule"] == "waivers.valid")
        .map(|f| f["help"].as_str().unwrap())
        .collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("did you mean `app.image-pinned`")),
        "{messages:?}"
    );
    assert_eq!(of(&findings, "waivers.valid").len(), 2);
    // A malformed date is a problem of the stack file, like any other.
    let v = variant(
        stack,
        &[(
            "\nrecovery:\n",
            &format!("\n{}recovery:\n", waiver("edge.waf", "app", "next-week")),
        )],
    );
    let out = std::process::Command::new(common::BIN)
        .args(["check", v.stack.to_str().unwrap(), "--env", "production"])
        .env("RALPH_DEPLOY_VAR_api_allowed_cidrs", "[\"10.99.0.0/16\"]")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(common::text(&out.stderr).contains("`until` `next-week` is not a date"));
}

/// SARIF 2.1.0 for code scanning: every rule described, each finding on its
/// file and line, a waived one suppressed with the waiver's reason.
#[test]
fn sarif_output_places_findings_on_the_stack_files_lines() {
    // Without the stack's web ACL in front of the load balancer.
    let v = variant(
        "aws-production.yaml",
        &[
            (
                "\nrecovery:\n",
                "\nwaivers:\n  - { rule: edge.waf, reason: a CDN's WAF fronts the host }\nrecovery:\n",
            ),
            ("      waf_acl_arn: ${edge_waf.arn}\n", ""),
        ],
    );
    let out = std::process::Command::new(common::BIN)
        .args([
            "check",
            v.stack.to_str().unwrap(),
            "--env",
            "production",
            "--format",
            "sarif",
        ])
        .env("RALPH_DEPLOY_VAR_api_allowed_cidrs", "[\"10.99.0.0/16\"]")
        .env("RALPH_DEPLOY_VAR_image_tag", "latest")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(log["version"], "2.1.0");
    conforms_to_sarif_schema(&log);
    let run = &log["runs"][0];
    let rules = run["tool"]["driver"]["rules"].as_array().unwrap();
    assert!(rules.len() >= 15);
    for r in rules {
        assert!(r["id"].is_string() && r["shortDescription"]["text"].is_string());
        assert!(
            ["error", "warning"].contains(&r["defaultConfiguration"]["level"].as_str().unwrap())
        );
    }
    let results = run["results"].as_array().unwrap();
    for r in results {
        let i = r["ruleIndex"].as_u64().unwrap() as usize;
        assert_eq!(rules[i]["id"], r["ruleId"]);
        let loc = &r["locations"][0]["physicalLocation"];
        assert!(loc["region"]["startLine"].as_u64().unwrap() >= 1);
        assert!(!loc["artifactLocation"]["uri"]
            .as_str()
            .unwrap()
            .contains('\\'));
    }
    let pinned = results
        .iter()
        .find(|r| r["ruleId"] == "app.image-pinned")
        .unwrap();
    assert_eq!(pinned["level"], "error");
    assert!(
        pinned["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            .as_str()
            .unwrap()
            .ends_with("components/orchestrator.yaml")
    );
    let waf = results.iter().find(|r| r["ruleId"] == "edge.waf").unwrap();
    assert_eq!(waf["suppressions"][0]["kind"], "inSource");
    assert_eq!(
        waf["suppressions"][0]["justification"],
        "a CDN's WAF fronts the host"
    );
}

/// Holds a SARIF log to the OASIS SARIF 2.1.0 JSON Schema (check-jsonschema
/// from the CI linters, the schema fetched by scripts/setup.sh), after
/// making sure the validator refuses a log the schema forbids.
fn conforms_to_sarif_schema(log: &Value) {
    let schema = std::env::var("RALPH_TEST_SARIF_SCHEMA")
        .expect("RALPH_TEST_SARIF_SCHEMA is not set: run the tests with scripts/test");
    let bin = PathBuf::from(
        std::env::var("RALPH_TEST_CI_LINT")
            .expect("RALPH_TEST_CI_LINT is not set: run the tests with scripts/test"),
    )
    .join("check-jsonschema");
    let dir = tempfile::tempdir().unwrap();
    let validate = |name: &str, log: &Value| {
        let file = dir.path().join(name);
        std::fs::write(&file, serde_json::to_vec_pretty(log).unwrap()).unwrap();
        std::process::Command::new(&bin)
            // The OASIS schema's `language` pattern has a stray `]`, which
            // ECMAScript's unicode mode refuses; Python's reading of it is
            // the one its authors tested.
            .args(["--regex-variant", "python", "--schemafile", &schema])
            .arg(&file)
            .output()
            .unwrap()
    };
    let mut broken = log.clone();
    broken["runs"][0]["results"][0]["level"] = Value::from("fatal");
    broken["runs"][0]["tool"]["driver"]["rules"][0]["id"] = Value::from(7);
    let refused = validate("broken.sarif", &broken);
    assert!(
        !refused.status.success(),
        "the validator must refuse a level and a rule id the schema forbids: {}",
        common::text(&refused.stdout)
    );
    let out = validate("check.sarif", log);
    assert!(
        out.status.success(),
        "SARIF 2.1.0 schema: {}{}",
        common::text(&out.stdout),
        common::text(&out.stderr)
    );
}

/// The rule reference in docs/ is what the binary prints.
#[test]
fn the_rule_reference_is_current() {
    let out = std::process::Command::new(common::BIN)
        .args(["reference", "rules"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let committed = std::fs::read_to_string(common::repo().join("docs/check-rules.md")).unwrap();
    assert_eq!(
        common::text(&out.stdout),
        committed,
        "regenerate with `ralph-deploy reference rules > docs/check-rules.md`"
    );
}

/// A team's own rules in Rego (docs/policies): `deny` is an error on the
/// resource it names, waivable as `policy.NAME`; a package outside `ralph`
/// and a syntax error are refused with the file's name.
#[test]
fn rego_policies_add_the_teams_own_rules() {
    let stack = common::repo().join("stacks/aws-network.yaml");
    let text = std::fs::read_to_string(&stack).unwrap();
    let policies = common::repo().join("docs/policies");
    let policy = policies.to_str().unwrap();
    let (code, findings) = check(&stack, &["--env", "production", "--policy", policy], &[]);
    assert_eq!(code, Some(1), "{findings:#?}");
    let vpc_line = text.lines().position(|l| l == "  vpc:").unwrap() as u64 + 1;
    assert_eq!(
        of(&findings, "policy.tagging"),
        vec![e("aws-network.yaml", vpc_line, "vpc")]
    );
    // Without the policy, nothing is found; with a waiver, it passes.
    let (code, _) = check(&stack, &["--env", "production"], &[]);
    assert_eq!(code, Some(0));
    let dir = tempfile::tempdir().unwrap();
    let waived = dir.path().join("aws-network.yaml");
    std::fs::write(
        &waived,
        format!("{text}\nwaivers:\n  - {{ rule: policy.tagging, address: vpc, reason: tagged by the account's SCP }}\n"),
    )
    .unwrap();
    let (code, findings) = check(&waived, &["--env", "production", "--policy", policy], &[]);
    assert_eq!(code, Some(0), "{findings:#?}");
    // Broken policies are refused, naming the file.
    for (body, says) in [
        (
            "package other\nimport rego.v1\ndeny contains \"x\" if { true }\n",
            "is not under `ralph`",
        ),
        ("package ralph.broken\ndeny contains if {\n", "broken.rego"),
    ] {
        let bad = dir.path().join("broken.rego");
        std::fs::write(&bad, body).unwrap();
        let out = std::process::Command::new(common::BIN)
            .args([
                "check",
                stack.to_str().unwrap(),
                "--env",
                "production",
                "--policy",
            ])
            .arg(&bad)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = common::text(&out.stderr);
        assert!(err.contains(says), "{err}");
    }
}

/// GKE's edge without its Cloud Armor policy: the Ingress names no
/// BackendConfig policy, and `edge.waf` says where to set one.
#[test]
fn a_gke_edge_without_its_cloud_armor_policy_is_found() {
    let (_, findings) = check(
        &common::repo().join("stacks/gcp-production.yaml"),
        &["--env", "production"],
        &[],
    );
    assert!(of(&findings, "edge.waf").is_empty(), "{findings:#?}");
    let v = variant(
        "gcp-production.yaml",
        &[("      security_policy: ${edge_armor.name}\n", "")],
    );
    let (_, findings) = check(&v.stack, &["--env", "production"], &[]);
    let found: Vec<&Value> = findings
        .iter()
        .filter(|f| f["rule"] == "edge.waf")
        .collect();
    assert_eq!(found.len(), 1, "{findings:#?}");
    assert_eq!(found[0]["address"], "app.orchestrator");
    assert_eq!(
        found[0]["line"].as_u64(),
        Some(component_line("ingress_host: ${input.ingress_host}"))
    );
    assert!(found[0]["help"]
        .as_str()
        .unwrap()
        .contains("gcp.security_policy"));
}
