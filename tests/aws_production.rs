//! The full AWS production stack against the local cloud with its delay
//! layer: parallel provisioning, no perpetual diffs, in-place updates,
//! protection, reverse-order destroy, and secrets that never reach the state.

use crate::common;

use std::collections::BTreeMap;

use common::{text, World};
use serde_json::Value;

const KEY: &str = "sk-ant-test-0123456789abcdef";

/// One at a time: the local Kubernetes stands for both tests' clusters,
/// so a proxy pod of one can land on a node of the other, which that test
/// then scales away ("port-forward to pod ...: pods \"...-nodes-...-3\" not
/// found"). On a real account each cluster has its own nodes.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

struct Events(Vec<Value>);

impl Events {
    fn parse(stdout: &str) -> Events {
        Events(
            stdout
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
        )
    }
    /// Index of the first event of `kind` for `address`.
    fn at(&self, kind: &str, address: &str) -> usize {
        self.0
            .iter()
            .position(|e| e["event"] == kind && e["address"] == address)
            .unwrap_or_else(|| panic!("no {kind} for {address}"))
    }
    fn summary(&self) -> &Value {
        self.0
            .iter()
            .rev()
            .find(|e| e["event"] == "summary")
            .expect("a summary")
    }
}

/// The stack's nodegroup, as EKS describes it.
async fn nodegroup(
    eks: &aws_sdk_eks::Client,
    name: &str,
) -> aws_sdk_eks::operation::describe_nodegroup::DescribeNodegroupOutput {
    eks.describe_nodegroup()
        .cluster_name(format!("{name}-production"))
        .nodegroup_name(format!("{name}-production-nodes"))
        .send()
        .await
        .unwrap()
}

fn apply_json(w: &World, extra: &[&str]) -> Events {
    let stack = w.stack();
    let mut args = vec![
        "apply",
        stack.to_str().unwrap(),
        "--env",
        "production",
        "--auto-approve",
        "--json",
    ];
    args.extend_from_slice(extra);
    let out = w.cmd(&args).env("ANTHROPIC_API_KEY", KEY).output().unwrap();
    assert!(
        out.status.success(),
        "apply failed:\n{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    Events::parse(&text(&out.stdout))
}

#[tokio::test(flavor = "multi_thread")]
async fn production_stack_end_to_end() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = format!("tp{}", std::process::id());
    let mut w = World::from_stack("aws-production.yaml", &name);
    // No tunnel: the stores are private (their names resolve for pods
    // only), and the tool reaches the database through the cluster. Behind
    // the local RDS is the local PostgreSQL, where this test has a database
    // of its own; its superuser plays RDS's master user.
    common::fresh_database(&name).await;
    w.env
        .push(("RALPH_DEPLOY_VAR_database_name".into(), name.clone()));
    w.env.push((
        "RALPH_DEPLOY_VAR_database_admin_user".into(),
        "postgres".into(),
    ));

    // No stand-in add-on: the edge is the stack's own AWS Load Balancer
    // Controller, which the local cloud lets serve only through its IRSA
    // role and an issued ACM certificate.
    let edge = "lb_controller";
    // The only world of the production stack at this time: it installs the
    // controller's cluster-wide objects too.
    w.env
        .retain(|(k, _)| k != "RALPH_DEPLOY_VAR_lb_controller_crds");
    // A second administrator, through an EKS access entry.
    let alice = aws_sdk_iam::Client::new(&w.aws_conf().await)
        .create_role()
        .role_name(format!("admin-alice-{name}"))
        .assume_role_policy_document("{}")
        .send()
        .await
        .unwrap()
        .role
        .unwrap()
        .arn;
    w.env.push((
        "RALPH_DEPLOY_VAR_cluster_admins".into(),
        serde_json::json!({ "alice": alice }).to_string(),
    ));

    // ---- apply: every resource, in dependency order, branches in parallel.
    let ev = apply_json(&w, &[]);
    let s = ev.summary();
    assert_eq!(s["created"], 63, "{s}");
    // The edge between the nodes and the orchestrator, and available.
    assert!(ev.at("resource_finished", "nodes") < ev.at("resource_started", edge));
    // EKS's own metrics-server and cert-manager after the nodes (before,
    // they would be DEGRADED), cert-manager before the add-ons that name
    // its issuers (the controller's webhook certificate).
    for eks_addon in ["metrics_server", "cert_manager"] {
        assert!(ev.at("resource_finished", "nodes") < ev.at("resource_started", eks_addon));
    }
    assert!(ev.at("resource_finished", "cert_manager") < ev.at("resource_started", edge));
    assert!(ev.at("resource_finished", edge) < ev.at("resource_started", "app.orchestrator"));
    let controller = kube::api::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(
        common::kube_client().await,
        &format!("{name}-system"),
    )
    .get("aws-load-balancer-controller")
    .await
    .unwrap();
    assert_eq!(controller.status.unwrap().available_replicas, Some(2));
    assert_eq!(s["failed"], 0, "{s}");
    // RDS, ElastiCache and EKS are all creating at the same time: each
    // starts before any of the three finishes.
    let first_finish = ["db", "redis", "eks"]
        .iter()
        .map(|a| ev.at("resource_finished", a))
        .min()
        .unwrap();
    for a in ["db", "redis", "eks"] {
        assert!(
            ev.at("resource_started", a) < first_finish,
            "{a} did not start while the others were creating"
        );
    }
    // Waiting is visible: the delay layer makes them pass through CREATING.
    assert!(ev
        .0
        .iter()
        .any(|e| e["event"] == "resource_waiting" && e["address"] == "eks"));
    // Dependency order.
    assert!(ev.at("resource_finished", "vpc") < ev.at("resource_started", "private[\"a\"]"));
    assert!(ev.at("resource_finished", "db") < ev.at("resource_started", "db_replica"));
    assert!(ev.at("resource_finished", "eks") < ev.at("resource_started", "nodes"));
    assert!(ev.at("resource_finished", "secrets.redis_auth") < ev.at("resource_started", "redis"));
    assert!(
        ev.at("resource_finished", "db") < ev.at("resource_started", "app.schema"),
        "migrations run once the database is up"
    );
    for before in ["app.schema", "nodes", "secrets.secret_key"] {
        assert!(
            ev.at("resource_finished", before) < ev.at("resource_started", "app.orchestrator"),
            "the orchestrator rolls out after {before}"
        );
    }

    // ---- what exists is what the guide asks for.
    let c = w.sdk_config().await;
    let rds = aws_sdk_rds::Client::new(&c);
    let db = rds
        .describe_db_instances()
        .db_instance_identifier(format!("{name}-production-postgres"))
        .send()
        .await
        .unwrap();
    let db = &db.db_instances()[0];
    assert_eq!(db.multi_az(), Some(true));
    assert_eq!(db.backup_retention_period(), Some(30));
    assert_eq!(db.allocated_storage(), Some(100));
    assert_eq!(db.deletion_protection(), Some(true));
    assert!(
        db.master_user_secret()
            .and_then(|s| s.secret_arn())
            .is_some(),
        "the master password is managed in Secrets Manager"
    );
    let replica = rds
        .describe_db_instances()
        .db_instance_identifier(format!("{name}-production-postgres-replica"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        replica.db_instances()[0].read_replica_source_db_instance_identifier(),
        Some(format!("{name}-production-postgres").as_str())
    );
    let eks = aws_sdk_eks::Client::new(&c);
    let entries = eks
        .list_access_entries()
        .cluster_name(format!("{name}-production"))
        .send()
        .await
        .unwrap();
    // The stack's administrator, beside the entry EKS made for the
    // principal that created the cluster (the key the tests apply with).
    assert_eq!(
        entries.access_entries(),
        [alice.clone(), "arn:aws:iam::123456789012:root".to_string()]
    );
    let ng = nodegroup(&eks, &name).await;
    let sc = ng.nodegroup().unwrap().scaling_config().unwrap();
    assert_eq!(
        (sc.min_size(), sc.max_size(), sc.desired_size()),
        (Some(2), Some(10), Some(3))
    );
    // NetworkPolicies enforced: the VPC CNI's network policy agent is on.
    let cni = eks
        .describe_addon()
        .cluster_name(format!("{name}-production"))
        .addon_name("vpc-cni")
        .send()
        .await
        .unwrap();
    let cni = cni.addon().unwrap();
    assert_eq!(cni.status().map(|s| s.as_str()), Some("ACTIVE"));
    let values: Value = serde_json::from_str(cni.configuration_values().unwrap()).unwrap();
    assert_eq!(values["enableNetworkPolicy"], "true");
    // IRSA for the cluster autoscaler: the cluster's issuer as an IAM OIDC
    // provider, a role only its service account may assume, and the
    // add-on running with that role.
    let iam = aws_sdk_iam::Client::new(&c);
    let issuer = eks
        .describe_cluster()
        .name(format!("{name}-production"))
        .send()
        .await
        .unwrap()
        .cluster()
        .unwrap()
        .identity()
        .unwrap()
        .oidc()
        .unwrap()
        .issuer()
        .unwrap()
        .trim_start_matches("https://")
        .to_string();
    let providers = iam.list_open_id_connect_providers().send().await.unwrap();
    let provider = providers
        .open_id_connect_provider_list()
        .iter()
        .filter_map(|p| p.arn())
        .find(|a| a.ends_with(&issuer))
        .expect("an OIDC provider for the cluster's issuer");
    let role = iam
        .get_role()
        .role_name(format!("{name}-production-cluster-autoscaler"))
        .send()
        .await
        .unwrap();
    let trust = role.role().unwrap().assume_role_policy_document().unwrap();
    let trust = trust.replace("%3A", ":").replace("%2F", "/");
    assert!(
        trust.contains(provider)
            && trust.contains(&format!(
                "system:serviceaccount:{name}-system:cluster-autoscaler"
            )),
        "{trust}"
    );
    let sa: k8s_openapi::api::core::v1::ServiceAccount =
        kube::Api::namespaced(common::kube_client().await, &format!("{name}-system"))
            .get("cluster-autoscaler")
            .await
            .unwrap();
    assert_eq!(
        sa.metadata.annotations.unwrap()["eks.amazonaws.com/role-arn"],
        role.role().unwrap().arn()
    );
    assert_eq!(
        ng.nodegroup().unwrap().instance_types(),
        ["m5.xlarge".to_string()]
    );
    let ec = aws_sdk_elasticache::Client::new(&c);
    let g = ec
        .describe_replication_groups()
        .replication_group_id(format!("{name}-production-redis"))
        .send()
        .await
        .unwrap();
    assert_eq!(g.replication_groups()[0].member_clusters().len(), 3);

    // ---- secrets never reach the state or any output.
    let sm = aws_sdk_secretsmanager::Client::new(&c);
    let mut values = vec![KEY.to_string()];
    for s in ["secret-key", "encryption-key", "redis-auth-token"] {
        let v = sm
            .get_secret_value()
            .secret_id(format!("{name}/production/{s}"))
            .send()
            .await
            .unwrap();
        values.push(v.secret_string().unwrap().to_string());
    }
    assert_eq!(values[1].len(), 64, "32 random bytes, hex");
    let state_text = std::fs::read_to_string(
        w.state_dir()
            .join(&name)
            .join("production")
            .join("state.json"),
    )
    .unwrap();
    let plan_text = text(&w.run("plan", &["--json"]).stdout);
    let events_text = serde_json::to_string(&ev.0).unwrap();
    for v in &values {
        assert!(
            !state_text.contains(v.as_str()),
            "a secret value is in the state"
        );
        assert!(
            !plan_text.contains(v.as_str()),
            "a secret value is in the plan"
        );
        assert!(
            !events_text.contains(v.as_str()),
            "a secret value is in the events"
        );
    }

    // ---- no perpetual diffs, for any kind.
    let out = w.run("plan", &["--detailed-exitcode", "--json"]);
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let changed: Vec<&Value> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] != "no_op")
        .collect();
    assert!(changed.is_empty(), "second plan is not empty: {changed:#?}");
    assert_eq!(out.status.code(), Some(0));

    // ---- the edge: an ALB the controller built with the ACM certificate
    // (issued once its DNS records exist: the local ACM's wait).
    let ingresses = kube::api::Api::<k8s_openapi::api::networking::v1::Ingress>::namespaced(
        common::kube_client().await,
        &name,
    );
    let mut hostname = None;
    for _ in 0..150 {
        hostname = ingresses
            .get("ralph-orchestrator")
            .await
            .unwrap()
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .and_then(|i| i.into_iter().next())
            .and_then(|i| i.hostname);
        if hostname.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    let hostname = hostname.expect("the controller never served the Ingress");
    // Behind the stack's web ACL (the local AWS checked it exists and that
    // the controller's role may associate it).
    let ing = ingresses.get("ralph-orchestrator").await.unwrap();
    let acl =
        &ing.metadata.annotations.unwrap_or_default()["alb.ingress.kubernetes.io/wafv2-acl-arn"];
    assert!(
        acl.starts_with("arn:aws:wafv2:us-east-1:") && acl.contains(":regional/webacl/"),
        "{acl}"
    );
    assert!(
        hostname.ends_with(".us-east-1.elb.amazonaws.com"),
        "{hostname}"
    );

    // ---- the service works, checked from outside the VPC: the pods' own
    // credentials log in to PostgreSQL and Redis (with its AUTH token,
    // over TLS) through the cluster, and the edge is served.
    let report = common::healthy_through_the_cluster(&w).await;
    assert!(
        report
            .to_string()
            .contains("AWS Load Balancer Controller's ALB"),
        "{report}"
    );
    // The Prometheus the stack installed runs (a real one, on the node
    // simulator), loaded the rules, and nothing fires.
    assert!(
        report
            .to_string()
            .contains("2 rule groups loaded, no alert firing"),
        "{report}"
    );

    // ---- rotating the Redis AUTH token: the group takes the new token
    // beside the old one (ROTATE) before the pods roll onto it, and keeps
    // it alone (SET) only once they have: no pod ever holds a token the
    // group refuses (the local group's Redis drops the old one on SET).
    w.env
        .push(("RALPH_DEPLOY_VAR_redis_auth_rotation".into(), "1".into()));
    let ev = apply_json(&w, &[]);
    let rotated = ev.summary();
    assert!(ev.at("resource_finished", "secrets.redis_auth") < ev.at("resource_started", "redis"));
    assert!(ev.at("resource_finished", "redis") < ev.at("resource_started", "app.orchestrator"));
    assert!(
        ev.at("resource_finished", "app.orchestrator")
            < ev.at("resource_started", "redis_auth_rotation")
    );
    assert_eq!(rotated["replaced"], 0, "{rotated}");
    let report = common::healthy_through_the_cluster(&w).await;
    assert!(
        report.to_string().contains("AUTH and PING answered PONG"),
        "{report}"
    );
    assert!(common::changed(&w.plan_json(&[])).is_empty());

    // The control plane's API, audit and authenticator logs are on.
    let logs = |eks: aws_sdk_eks::Client, cluster: String| async move {
        let c = eks.describe_cluster().name(cluster).send().await.unwrap();
        let mut on: Vec<String> = c
            .cluster()
            .unwrap()
            .logging()
            .unwrap()
            .cluster_logging()
            .iter()
            .filter(|s| s.enabled() == Some(true))
            .flat_map(|s| s.types().iter().map(|t| t.as_str().to_string()))
            .collect();
        on.sort();
        on
    };
    assert_eq!(
        logs(eks.clone(), format!("{name}-production")).await,
        ["api", "audit", "authenticator"]
    );
    // Into a log group the stack made first, with its retention.
    let cwl = aws_sdk_cloudwatchlogs::Client::new(&c);
    let group = format!("/aws/eks/{name}-production/cluster");
    let groups = cwl
        .describe_log_groups()
        .log_group_name_prefix(&group)
        .send()
        .await
        .unwrap();
    assert_eq!(groups.log_groups().len(), 1);
    assert_eq!(groups.log_groups()[0].retention_in_days(), Some(90));

    // ---- scaling the nodegroup, changing backup retention and adding the
    // scheduler's logs are in place (the logs an update of their own: EKS
    // takes one kind of change per UpdateClusterConfig).
    let vars = [
        "--var",
        "nodes_desired=5",
        "--var",
        "db_backup_days=14",
        "--var",
        "control_plane_logs=[\"api\", \"audit\", \"authenticator\", \"scheduler\"]",
    ];
    let plan = w.plan_json(&vars);
    let actions: BTreeMap<String, String> = common::changed(&plan).into_iter().collect();
    assert_eq!(
        actions,
        BTreeMap::from([
            ("db".to_string(), "update".to_string()),
            ("eks".to_string(), "update".to_string()),
            ("nodes".to_string(), "update".to_string())
        ])
    );
    apply_json(&w, &vars);
    assert_eq!(
        logs(eks.clone(), format!("{name}-production")).await,
        ["api", "audit", "authenticator", "scheduler"]
    );
    let ng = nodegroup(&eks, &name).await;
    assert_eq!(
        ng.nodegroup()
            .unwrap()
            .scaling_config()
            .unwrap()
            .desired_size(),
        Some(5)
    );
    let db = rds
        .describe_db_instances()
        .db_instance_identifier(format!("{name}-production-postgres"))
        .send()
        .await
        .unwrap();
    assert_eq!(db.db_instances()[0].backup_retention_period(), Some(14));
    let mut args = vec!["--detailed-exitcode"];
    args.extend_from_slice(&vars);
    assert_eq!(w.run("plan", &args).status.code(), Some(0));

    // ---- the cluster autoscaler moves the desired size within [min, max]:
    // not drift, and a later change of max keeps its choice.
    eks.update_nodegroup_config()
        .cluster_name(format!("{name}-production"))
        .nodegroup_name(format!("{name}-production-nodes"))
        .scaling_config(
            aws_sdk_eks::types::NodegroupScalingConfig::builder()
                .min_size(2)
                .max_size(10)
                .desired_size(7)
                .build(),
        )
        .send()
        .await
        .unwrap();
    // (the delay layer keeps it UPDATING for a moment, as EKS does)
    let mut active = false;
    for _ in 0..100 {
        let ng = nodegroup(&eks, &name).await;
        if ng.nodegroup().unwrap().status() == Some(&aws_sdk_eks::types::NodegroupStatus::Active) {
            active = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(
        active,
        "the nodegroup never became ACTIVE again after the resize"
    );
    let out = w.run("plan", &args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let vars = [
        "--var",
        "nodes_desired=5",
        "--var",
        "db_backup_days=14",
        "--var",
        "nodes_max=8",
    ];
    apply_json(&w, &vars);
    let ng = nodegroup(&eks, &name).await;
    let sc = ng.nodegroup().unwrap().scaling_config().unwrap();
    assert_eq!((sc.max_size(), sc.desired_size()), (Some(8), Some(7)));

    // ---- destroy refuses protected resources without the override.
    let before = w.tagged().await.len() + w.tagged_beyond_ec2().await.len();
    let out = w.run("destroy", &["--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    for a in ["db", "redis", "backups"] {
        assert!(err.contains(a), "{err}");
    }
    assert_eq!(
        w.tagged().await.len() + w.tagged_beyond_ec2().await.len(),
        before,
        "a refused destroy touched something"
    );

    // ---- with it, everything goes, dependents first.
    let stack = w.stack();
    let out = w
        .cmd(&[
            "destroy",
            stack.to_str().unwrap(),
            "--env",
            "production",
            "--auto-approve",
            "--allow-protected",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let ev = Events::parse(&text(&out.stdout));
    assert_eq!(ev.summary()["deleted"], 63);
    for (dependent, dependency) in [
        (edge, "nodes"),
        ("app.orchestrator", edge),
        ("app.orchestrator", "edge_cert"),
        ("app.orchestrator", "edge_waf"),
        ("nodes", "eks"),
        ("db_replica", "db"),
        ("private[\"a\"]", "vpc"),
        ("db", "db_subnets"),
        ("redis", "secrets.redis_auth"),
    ] {
        assert!(
            ev.at("resource_finished", dependent) < ev.at("resource_started", dependency),
            "{dependent} must be gone before {dependency} is deleted"
        );
    }
    assert_eq!(w.tagged().await, vec![]);
    assert_eq!(w.tagged_beyond_ec2().await, Vec::<String>::new());
}

/// The production stack was rewritten with `for_each` and components; a
/// state made by the flat stack it replaced plans only moves, and applying
/// them renames the state's entries without touching the cloud.
#[tokio::test(flavor = "multi_thread")]
async fn the_rewritten_stack_only_moves_what_the_flat_one_made() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let name = format!("tm{}", std::process::id());
    let mut w = World::from_stack("tests/fixtures/aws-production-flat.yaml", &name);
    let db = common::fresh_database(&name).await;
    w.env.push((
        "RALPH_DEPLOY_VAR_database_tunnel_url".into(),
        format!("{db}?sslmode=disable"),
    ));
    let ev = apply_json(&w, &[]);
    assert_eq!(ev.summary()["created"], 44);
    let token_version = |w: &World, address: &str| {
        common::state_json(w)["resources"][address]["attrs"]["version_id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let token_before = token_version(&w, "redis_auth");
    let ids_before: BTreeMap<String, String> = common::state_json(&w)["resources"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();

    w.replace_stack("aws-production.yaml");
    // The token is rotated in the same apply that first records its
    // version on the group: the group must take the new token before the
    // pods do, though it has no version on record to compare.
    w.env
        .push(("RALPH_DEPLOY_VAR_redis_auth_rotation".into(), "1".into()));
    w.env
        .push(("RALPH_DEPLOY_VAR_app_role".into(), format!("app_{name}")));
    w.env.push((
        "RALPH_DEPLOY_VAR_app_role_member_of".into(),
        "[\"ralph_app\"]".into(),
    ));
    let out = w
        .cmd(&[
            "plan",
            w.stack().to_str().unwrap(),
            "--env",
            "production",
            "--json",
            "--detailed-exitcode",
        ])
        .env("ANTHROPIC_API_KEY", KEY)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "moves are changes:\n{}",
        text(&out.stderr)
    );
    let plan: Value = serde_json::from_str(&text(&out.stdout)).unwrap();
    let moves = plan["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 27, "{plan}");
    assert!(moves
        .iter()
        .any(|m| m["from"] == "private_a" && m["to"] == "private[\"a\"]"));
    assert!(moves
        .iter()
        .any(|m| m["from"] == "orchestrator" && m["to"] == "app.orchestrator"));
    // Besides the moves: the application's database password and role,
    // Grafana's admin password,
    // and the cluster autoscaler with its IAM role and the cluster's OIDC
    // provider, and the VPC CNI add-on, which the flat stack did not have (and so the node group
    // now starts at 3, the autoscaler adding the rollout's fourth), the
    // orchestrator taking them, and
    // the schema now reached through the cluster (only how it is reached
    // changes: the cluster's settings).
    let through_cluster = |c: &Value| {
        c["address"] == "app.schema"
            && c["action"] == "update"
            && c["attributes"].as_array().unwrap().iter().all(|a| {
                [
                    "kubeconfig",
                    "context",
                    "cluster_endpoint",
                    "cluster_ca",
                    "cluster_name",
                    "cluster_auth",
                    "forward_image",
                ]
                .contains(&a["name"].as_str().unwrap())
            })
    };
    let added: Vec<String> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] != "no_op" || c["adopt"] == true)
        .filter(|c| !through_cluster(c))
        .map(|c| format!("{} {} {}", c["address"], c["action"], c["attributes"]))
        .filter(|c| {
            !(c.starts_with("\"secrets.database_password\" \"create\"")
                || c.starts_with("\"secrets.grafana_admin_password\" \"create\"")
                || c.starts_with("\"app.app_role\" \"create\"")
                || c.starts_with("\"oidc\" \"create\"")
                || c.starts_with("\"autoscaler_role\" \"create\"")
                || c.starts_with("\"autoscaler\" \"create\"")
                || c.starts_with("\"vpc_cni\" \"create\"")
                || c.starts_with("\"metrics_server\" \"create\"")
                || c.starts_with("\"cert_manager\" \"create\"")
                || c.starts_with("\"edge_cert\" \"create\"")
                || c.starts_with("\"eks_logs\" \"create\"")
                || c.starts_with("\"app_logs\" \"create\"")
                || c.starts_with("\"log_shipper_role\" \"create\"")
                || c.starts_with("\"log_shipper\" \"create\"")
                || c.starts_with("\"edge_waf\" \"create\"")
                || c.starts_with("\"lb_controller_role\" \"create\"")
                || c.starts_with("\"lb_controller\" \"create\"")
                || c.starts_with(
                    "\"nodes\" \"update\" [{\"name\":\"desired_size\",\"before\":4,\"after\":3,",
                )
                || c.starts_with("\"app.orchestrator\" \"update\"")
                // the AUTH token's version, recorded, and the rotation's
                // second half
                || c.starts_with("\"redis\" \"update\" [{\"name\":\"auth_token_version\"")
                || c.starts_with("\"redis_auth_rotation\" \"create\"")
                // the token's secret takes the rotation counter, a new value
                || c.starts_with("\"secrets.redis_auth\" \"update\" [{\"name\":\"rotation\",\"before\":null,\"after\":\"1\"")
                // the control plane's logs, which the flat stack left off
                || c.starts_with("\"eks\" \"update\" [{\"name\":\"control_plane_logs\""))
        })
        .collect();
    assert!(
        added.is_empty(),
        "only moves and the new credentials, but: {added:?}"
    );
    let human = w.ok("plan", &[]);
    assert!(
        human.contains("private_a has moved to private[\"a\"]"),
        "{human}"
    );
    assert!(human.contains("27 to move"), "{human}");

    let ev = apply_json(&w, &[]);
    // The Redis token's secret took a new value, which the group took
    // beside the old one before the pods rolled onto it (their readiness
    // logs in: the rollout would not finish), then alone: the old one is
    // refused. (The edge's certificate is not validated in this test, so
    // `status` would not be healthy as a whole.)
    assert_ne!(token_version(&w, "secrets.redis_auth"), token_before);
    let token = |stage: &'static str| {
        let w = &w;
        async move {
            let arn = common::state_json(w)["resources"]["secrets.redis_auth"]["attrs"]["arn"]
                .as_str()
                .unwrap()
                .to_string();
            aws_sdk_secretsmanager::Client::new(&w.sdk_config().await)
                .get_secret_value()
                .secret_id(arn)
                .version_stage(stage)
                .send()
                .await
                .unwrap()
                .secret_string()
                .unwrap()
                .to_string()
        }
    };
    let group = common::state_json(&w)["resources"]["redis"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let port = common::group_redis_port(&group);
    assert_eq!(
        common::redis_ping(&port, &token("AWSCURRENT").await),
        "PONG"
    );
    assert!(
        common::redis_ping(&port, &token("AWSPREVIOUS").await).contains("WRONGPASS"),
        "the token before the rotation still gets in"
    );
    let s = ev.summary();
    assert_eq!(
        (s["created"].as_u64(), s["deleted"].as_u64()),
        (Some(18), Some(0)),
        "only the new passwords (the role's, Grafana's) and role, the autoscaler's three, the log shipper's three, EKS's vpc-cni, metrics-server and cert-manager add-ons, the edge's four (certificate, web ACL, controller role, controller), the control plane's log group and the Redis AUTH rotation's second half are created: {s}"
    );
    assert_eq!(
        ev.0.iter()
            .filter(|e| e["event"] == "resource_moved")
            .count(),
        27
    );
    let st = common::state_json(&w);
    let ids_after: BTreeMap<String, String> = st["resources"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_string(),
                r["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let ids_after: BTreeMap<String, String> = ids_after
        .into_iter()
        .filter(|(id, kind)| {
            kind != "postgres.role"
                && !id.contains("/database-password-")
                && !id.contains("/grafana-admin-password-")
                && !id.ends_with("-fluent-bit")
                && !kind.starts_with("aws.iam_oidc")
                && kind != "aws.eks_addon"
                && !id.ends_with("-cluster-autoscaler")
                && !id.ends_with("-lb-controller")
                && kind != "aws.acm_certificate"
                && kind != "aws.wafv2_web_acl"
                && kind != "aws.cloudwatch_log_group"
                && kind != "aws.elasticache_auth_rotation"
                && !(kind == "kubernetes.manifests" && !ids_before.contains_key(id))
        })
        .collect();
    assert_eq!(ids_before, ids_after, "the same resources, renamed");
    assert!(st["resources"]["nat[\"b\"]"].is_object());
    assert!(st["resources"]["app.orchestrator"].is_object());
    // Nothing left to do, moved entries still in the stack.
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
}
