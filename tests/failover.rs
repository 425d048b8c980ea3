//! `failover` on the production stack against the local cloud: refused when
//! the replica's lag is unknown or beyond the RPO; killed half-way, every
//! other command refuses and a second `failover` finishes it; afterwards the
//! promoted replica serves under the primary's name, the old primary is
//! moved aside untagged, the orchestrator's pods were rolled, and the next
//! plan only creates the new replica.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use common::{state_json, text, World};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

const KEY: &str = "sk-ant-test-failover";

async fn put_lag(cw: &aws_sdk_cloudwatch::Client, id: &str, seconds: f64, ago_s: u64) {
    use aws_sdk_cloudwatch::primitives::DateTime;
    use aws_sdk_cloudwatch::types::{Dimension, MetricDatum};
    let at = std::time::SystemTime::now() - std::time::Duration::from_secs(ago_s);
    cw.put_metric_data()
        .namespace("AWS/RDS")
        .metric_data(
            MetricDatum::builder()
                .metric_name("ReplicaLag")
                .dimensions(
                    Dimension::builder()
                        .name("DBInstanceIdentifier")
                        .value(id)
                        .build(),
                )
                .timestamp(DateTime::from(at))
                .value(seconds)
                .build(),
        )
        .send()
        .await
        .unwrap();
}

async fn instance(rds: &aws_sdk_rds::Client, id: &str) -> Option<aws_sdk_rds::types::DbInstance> {
    rds.describe_db_instances()
        .db_instance_identifier(id)
        .send()
        .await
        .ok()
        .and_then(|o| o.db_instances().first().cloned())
}

fn tags(i: &aws_sdk_rds::types::DbInstance) -> std::collections::BTreeMap<String, String> {
    i.tag_list()
        .iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value()?.to_string())))
        .collect()
}

async fn deployment(ns: &str) -> Deployment {
    Api::<Deployment>::namespaced(common::kube_client().await, ns)
        .get("ralph-orchestrator")
        .await
        .unwrap()
}

fn failover(w: &World, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["--auto-approve"];
    args.extend_from_slice(extra);
    w.run("failover", &args)
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_promotes_the_replica_rolls_the_pods_and_the_next_plan_only_adds_a_replica() {
    let name = format!("fo{}", std::process::id());
    let mut w = World::from_stack("aws-production.yaml", &name);
    let db = common::fresh_database(&name).await;
    w.env.push((
        "RALPH_DEPLOY_VAR_database_tunnel_url".into(),
        format!("{db}?sslmode=disable"),
    ));
    w.env.push(("ANTHROPIC_API_KEY".into(), KEY.into()));
    w.ok("apply", &["--auto-approve"]);
    let primary_id = format!("{name}-production-postgres");
    let replica_id = format!("{primary_id}-replica");
    let ns = state_json(&w)["resources"]["app.orchestrator"]["attrs"]["namespace"]
        .as_str()
        .unwrap()
        .to_string();
    let before = deployment(&ns).await;
    let conf = w.sdk_config().await;
    let rds = aws_sdk_rds::Client::new(&conf);
    let cw = aws_sdk_cloudwatch::Client::new(&conf);

    // ---- refused while how much would be lost is unknown, or too much.
    let out = failover(&w, &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("ReplicaLag") && text(&out.stderr).contains("no reading"),
        "{}",
        text(&out.stderr)
    );
    put_lag(&cw, &replica_id, 7200.0, 120).await;
    let out = failover(&w, &[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("lags 7200s") && err.contains("RPO of 3600s"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    let replica = instance(&rds, &replica_id).await.unwrap();
    assert_eq!(
        replica.read_replica_source_db_instance_identifier(),
        Some(primary_id.as_str()),
        "a refused failover changed nothing"
    );

    // ---- the lag catches up (the latest minute counts); killed half-way.
    put_lag(&cw, &replica_id, 3.0, 0).await;
    let stack = w.stack();
    let mut child = w
        .cmd(&[
            "failover",
            stack.to_str().unwrap(),
            "--env",
            "production",
            "--auto-approve",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        let killed = line.contains("renaming the old primary");
        seen.push(line);
        if killed {
            child.kill().unwrap();
            break;
        }
    }
    let _ = child.wait();
    assert!(
        seen.iter().any(|l| l.contains("renaming the old primary")),
        "{seen:?}"
    );
    let out = w.run("apply", &["--auto-approve"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("did not finish") && err.contains("ralph-deploy failover"),
        "{err}"
    );

    // ---- run again: finished.
    let out = failover(&w, &["--json"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    common::check_event_stream(&text(&out.stdout));
    let last: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "summary", "{last}");
    let last = &last["failover"];
    assert_eq!(last["resumed"], true, "{last}");
    assert_eq!(
        last["rolled"],
        serde_json::json!(["app.orchestrator"]),
        "{last}"
    );
    let old_name = last["old_primary"].as_str().unwrap().to_string();
    assert!(
        old_name.starts_with(&format!("{primary_id}-old-")),
        "{old_name}"
    );

    // The promoted replica serves under the primary's name, owned as `db`.
    let primary = instance(&rds, &primary_id).await.unwrap();
    assert_eq!(primary.read_replica_source_db_instance_identifier(), None);
    let t = tags(&primary);
    assert_eq!(
        t.get("ralph-deploy:address").map(String::as_str),
        Some("db"),
        "{t:?}"
    );
    assert!(!t.contains_key("ralph-deploy-failover"), "{t:?}");
    assert_eq!(primary.backup_retention_period(), Some(30));
    assert!(
        instance(&rds, &replica_id).await.is_none(),
        "the replica's name is free"
    );
    // The old primary is aside: not the stack's any more, still protected.
    let old = instance(&rds, &old_name).await.unwrap();
    let t = tags(&old);
    assert!(!t.keys().any(|k| k.starts_with("ralph-deploy:")), "{t:?}");
    assert!(t["ralph-deploy-retired"].contains("/db"), "{t:?}");
    assert_eq!(t["ralph-deploy-retired-stack"], name, "{t:?}");
    assert_eq!(t["ralph-deploy-retired-address"], "db", "{t:?}");
    assert_eq!(old.deletion_protection(), Some(true));

    // The pods were rolled, with DATABASE_URL at the primary's endpoint.
    let after = deployment(&ns).await;
    assert!(
        after.metadata.generation > before.metadata.generation,
        "the Deployment was not rolled"
    );
    let annotations = after.spec.template.metadata.unwrap().annotations.unwrap();
    assert!(
        annotations.contains_key("ralph-deploy.io/restarted-at"),
        "{annotations:?}"
    );
    let status = after.status.unwrap();
    assert_eq!(
        status.updated_replicas, status.replicas,
        "the rollout finished"
    );
    let secret = Api::<Secret>::namespaced(common::kube_client().await, &ns)
        .get("ralph-orchestrator-secrets")
        .await
        .unwrap();
    let url = String::from_utf8(secret.data.unwrap()["DATABASE_URL"].0.clone()).unwrap();
    let endpoint = primary.endpoint().unwrap().address().unwrap().to_string();
    assert!(url.contains(&format!("@{endpoint}:")), "{url}");

    // The state: the primary is the promoted instance, the replica is gone.
    let st = state_json(&w);
    assert!(st["resources"].get("db_replica").is_none());
    assert_eq!(
        st["resources"]["db"]["attrs"]["replicate_source_db"],
        serde_json::Value::Null
    );

    // ---- the next plan: only the new replica.
    let plan = w.plan_json(&[]);
    let changes = common::changed(&plan);
    assert_eq!(
        changes,
        vec![("db_replica".to_string(), "create".to_string())],
        "{plan}"
    );
    // Applied, it replicates from the new primary; then nothing to do.
    w.ok("apply", &["--auto-approve"]);
    let replica = instance(&rds, &replica_id).await.unwrap();
    assert_eq!(
        replica.read_replica_source_db_instance_identifier(),
        Some(primary_id.as_str())
    );
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // ---- destroy: the retired primary holds the subnet group, so it goes
    // too, before it; protected, it needs --allow-protected like `db`.
    let retired = format!("db~retired:{old_name}");
    let out = w.run("destroy", &["--auto-approve"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{retired} (delete)")) && err.contains("--allow-protected"),
        "{err}"
    );
    assert!(
        instance(&rds, &old_name).await.is_some(),
        "refused: untouched"
    );
    let out = w.run("destroy", &["--auto-approve", "--allow-protected"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    assert!(instance(&rds, &old_name).await.is_none());
    assert!(instance(&rds, &primary_id).await.is_none());
    let groups = rds.describe_db_subnet_groups().send().await.unwrap();
    assert!(
        !groups.db_subnet_groups().iter().any(|g| g
            .db_subnet_group_name()
            .unwrap_or_default()
            .starts_with(&name)),
        "{groups:?}"
    );
}
