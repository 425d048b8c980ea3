//! The Google Cloud production stack against the test double: everything
//! provisioned in graph order and the orchestrator rolled out on the local
//! Kubernetes in the same apply, a second plan that changes nothing for a
//! handful of list calls, in-place updates (node pool size, Redis size), a
//! replacement (subnetwork range), protection on destroy, and secret values
//! that reach neither the state nor the plan nor the events.

use crate::common;

use common::{changed, fresh_database, gcp_get, gcp_requests, text, World};
use serde_json::Value;

const KEY: &str = "sk-ant-gcp-test-0123456789abcdef";

fn events(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn position(ev: &[Value], kind: &str, address: &str) -> usize {
    ev.iter()
        .position(|e| e["event"] == kind && e["address"] == address)
        .unwrap_or_else(|| panic!("no {kind} event for {address}"))
}

fn apply(w: &World, extra: &[&str]) -> (std::process::Output, Vec<Value>) {
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
    let ev = events(&text(&out.stdout));
    (out, ev)
}

/// Every file under the state directory, as text.
fn state_text(w: &World) -> String {
    let mut all = String::new();
    let mut dirs = vec![w.state_dir()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                all.push_str(&String::from_utf8_lossy(
                    &std::fs::read(&p).unwrap_or_default(),
                ));
            }
        }
    }
    all
}

/// `status`'s edge check.
fn edge(w: &World) -> Value {
    let out = w.run("status", &["--json"]);
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("{}{}", text(&out.stdout), text(&out.stderr)));
    report["services"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["checks"].as_array().unwrap().clone())
        .find(|c| c["check"] == "edge")
        .unwrap_or_else(|| panic!("no edge check: {report}"))
}

/// The edge check once the local controllers (which look every second)
/// have served the Ingress, or taken its address away: waited for on the
/// Ingress itself, since a `status` also logs in to the stores.
async fn edge_settled(
    ingresses: &kube::Api<k8s_openapi::api::networking::v1::Ingress>,
    w: &World,
    served: bool,
) -> Value {
    // The local controller looks at a served Ingress's backends every 5 s;
    // under a full test run's load a pass can take several.
    for _ in 0..150 {
        let ing = ingresses.get("ralph-orchestrator").await.unwrap();
        let address = ing
            .status
            .and_then(|s| s.load_balancer)
            .and_then(|l| l.ingress)
            .is_some_and(|i| !i.is_empty());
        if address == served {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The certificate turns Active in the same pass as the address.
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    edge(w)
}

/// How far the local Cloud SQL replica lags (Cloud Monitoring's
/// `replica_lag` in the double).
fn set_lag(project: &str, instance: &str, seconds: f64) {
    ureq::post(&format!("{}/__double/sql/lag", common::gcp_endpoint()))
        .send_string(
            &serde_json::json!({"database_id": format!("{project}:{instance}"), "seconds": seconds})
                .to_string(),
        )
        .unwrap();
}

fn sql_instance(project: &str, id: &str) -> Option<Value> {
    gcp_get(&format!("/v1/projects/{project}/instances/{id}"))
}

/// `failover` on Cloud SQL: the replica's lag (Cloud Monitoring) is held
/// against the RPO; Cloud SQL renames nothing, so the promoted replica is
/// recorded, under its own (generated) name, as `db`, and the database, the
/// user and the pods follow it; the old primary is retired, not deleted;
/// the next plan only makes a new replica, of the promoted one. Returns
/// the retired primary's name.
fn failover_follows_the_promoted_replica(w: &World, project: &str) -> String {
    let st = common::state_json(w);
    let id = |a: &str| st["resources"][a]["id"].as_str().unwrap().to_string();
    let (primary_id, replica_id) = (id("db"), id("db_replica"));
    assert!(
        primary_id.starts_with(&format!("{project}-production-postgres-"))
            && primary_id.len() == format!("{project}-production-postgres-").len() + 8,
        "a generated name: {primary_id}"
    );
    let database = id("ralph_db");

    set_lag(project, &replica_id, 7200.0);
    let out = w.run("failover", &["--auto-approve"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!("{replica_id} lags 7200s")) && err.contains("RPO of 3600s"),
        "{err}"
    );
    let replica = sql_instance(project, &replica_id).unwrap();
    assert!(
        replica["masterInstanceName"]
            .as_str()
            .unwrap()
            .ends_with(&primary_id),
        "a refused failover changed nothing: {replica}"
    );

    set_lag(project, &replica_id, 2.0);
    let out = w.run("failover", &["--auto-approve", "--json"]);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let summary: Value = serde_json::from_str(text(&out.stdout).lines().last().unwrap()).unwrap();
    let report = &summary["failover"];
    assert_eq!(report["instance"], replica_id.as_str(), "{report}");
    assert_eq!(report["old_primary"], primary_id.as_str(), "{report}");
    assert_eq!(report["lag_seconds"], 2.0, "{report}");
    assert_eq!(
        report["rolled"],
        serde_json::json!(["app.orchestrator"]),
        "{report}"
    );

    // The promoted replica is a primary owned as `db`, with the primary's
    // settings; the old one is retired, still protected, its data kept.
    let promoted = sql_instance(project, &replica_id).unwrap();
    assert!(promoted.get("masterInstanceName").is_none(), "{promoted}");
    let labels = &promoted["settings"]["userLabels"];
    assert_eq!(labels["ralph-deploy-address"], "db", "{labels}");
    // (REGIONAL: 2, as the client sends enums)
    let availability = &promoted["settings"]["availabilityType"];
    assert!(
        availability == "REGIONAL" || availability == 2,
        "{promoted}"
    );
    assert_eq!(promoted["settings"]["backupConfiguration"]["enabled"], true);
    let old = sql_instance(project, &primary_id).unwrap();
    let labels = &old["settings"]["userLabels"];
    assert!(labels.get("ralph-deploy-stack").is_none(), "{labels}");
    assert_eq!(labels["ralph-deploy-retired"], "db", "{labels}");
    assert_eq!(old["settings"]["deletionProtectionEnabled"], true);

    // The state follows: `db` is the promoted instance, the database lives
    // in it, the replica is gone from the state.
    let st = common::state_json(w);
    assert_eq!(st["resources"]["db"]["id"], replica_id.as_str());
    assert_eq!(
        st["resources"]["ralph_db"]["id"],
        database.replacen(&primary_id, &replica_id, 1).as_str()
    );
    assert!(st["resources"].get("db_replica").is_none());
    let c = changed(&w.plan_json(&[]));
    assert_eq!(
        c,
        vec![("db_replica".to_string(), "create".to_string())],
        "after a failover only a new replica is planned"
    );
    w.ok("apply", &["--auto-approve"]);
    assert!(changed(&w.plan_json(&[])).is_empty());
    let st = common::state_json(w);
    let new_replica = sql_instance(project, &id_of(&st, "db_replica")).unwrap();
    assert!(
        new_replica["masterInstanceName"]
            .as_str()
            .unwrap()
            .ends_with(&replica_id),
        "{new_replica}"
    );
    assert_ne!(id_of(&st, "db_replica"), replica_id);

    // The retired primary stays (it holds the network's peering): destroy
    // deletes it first.
    assert!(sql_instance(project, &primary_id).is_some());
    primary_id
}

fn id_of(st: &Value, address: &str) -> String {
    st["resources"][address]["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn gcp_production_end_to_end() {
    let name = format!("tg{}", std::process::id());
    let mut w = World::from_stack("gcp-production.yaml", &name);
    // No tunnel: Cloud SQL and Memorystore have private addresses only,
    // and the tool reaches them through the cluster. Behind the local Cloud
    // SQL is the local PostgreSQL, where this test has a database of its own.
    fresh_database(&format!("gcp_{name}")).await;
    w.env.push((
        "RALPH_DEPLOY_VAR_database_name".into(),
        format!("gcp_{name}"),
    ));
    w.env
        .push(("RALPH_DEPLOY_VAR_image_tag".into(), "1.0.0".into()));

    // ---- apply: everything, in graph order, the orchestrator included,
    // through throttling (429 RESOURCE_EXHAUSTED) and unavailability (503),
    // on a new project: every API the stack calls is off until it enables
    // it (403 SERVICE_DISABLED before).
    ureq::post(&format!("{}/__double/project", common::gcp_endpoint()))
        .send_string(
            &serde_json::json!({"project": name, "throttle": 6, "error": 3, "fresh": true})
                .to_string(),
        )
        .unwrap();
    let (out, ev) = apply(&w, &[]);
    assert!(
        out.status.success(),
        "apply failed:\n{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    // The whole production apply's event stream validates against the
    // documented schema (schema/events.schema.json).
    common::check_event_stream(&text(&out.stdout));
    let summary = ev
        .iter()
        .rev()
        .find(|e| e["event"] == "summary")
        .expect("a summary");
    assert_eq!(summary["created"], 46, "{summary}");
    assert_eq!(summary["v"], 1);
    assert_eq!(summary["version"], env!("CARGO_PKG_VERSION"));
    assert!(summary["retries"].as_u64().unwrap() >= 9, "{summary}");
    let throttled: Vec<&str> = summary["throttled"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t[0].as_str().or(t["service"].as_str()))
        .collect();
    assert!(
        !throttled.is_empty(),
        "throttling reached no service's limiter: {summary}"
    );
    for (before, after) in [
        ("apis[\"compute\"]", "vpc"),
        ("apis[\"iam\"]", "app_sa"),
        ("apis[\"secretmanager\"]", "secrets.secret_key"),
        ("vpc", "nodes_subnet"),
        ("nodes_subnet", "gke"),
        ("router", "gke"),
        ("gke", "nodes"),
        ("private_services", "private_services_access"),
        ("private_services_access", "db"),
        ("private_services_access", "redis"),
        ("db", "ralph_db"),
        ("admin_password", "db_admin"),
        ("db_admin", "app.schema"),
        ("nodes", "app.orchestrator"),
        ("redis", "app.orchestrator"),
    ] {
        assert!(
            position(&ev, "resource_finished", before) < position(&ev, "resource_started", after),
            "{after} started before {before} finished"
        );
    }
    // Independent branches overlap: the database and the cluster are made at once.
    assert!(position(&ev, "resource_started", "db") < position(&ev, "resource_finished", "gke"));

    // The orchestrator runs on the local Kubernetes.
    let client = common::kube_client().await;
    let deploys: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(client, &name);
    let d = deploys.get("ralph-orchestrator").await.unwrap();
    assert_eq!(d.status.clone().unwrap().available_replicas, Some(3));

    // The edge: GKE's own Ingress controller serves class `gce` (the local
    // Kubernetes plays it where the pods run on GKE nodes), with a
    // Google-managed certificate and an HTTPS redirect; `status` checks
    // that the Ingress has an address and the certificate is Active.
    let ingresses: kube::Api<k8s_openapi::api::networking::v1::Ingress> =
        kube::Api::namespaced(common::kube_client().await, &name);
    let served = edge_settled(&ingresses, &w, true).await;
    assert_eq!(served["healthy"], true, "{served}");
    assert!(
        served["detail"]
            .as_str()
            .unwrap()
            .contains("certificate ralph-orchestrator-cert Active"),
        "{served}"
    );
    // Before, the stack rendered an nginx-class Ingress that nothing on GKE
    // serves: it never gets an address, and `status` says so.
    w.edit("      ingress_class: gce\n", "      ingress_class: nginx\n");
    let (out, _) = apply(&w, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let unserved = edge_settled(&ingresses, &w, false).await;
    assert_eq!(unserved["healthy"], false, "{unserved}");
    assert!(
        unserved["detail"]
            .as_str()
            .unwrap()
            .contains("no controller serves Ingress class `nginx`"),
        "{unserved}"
    );
    w.edit("      ingress_class: nginx\n", "      ingress_class: gce\n");
    let (out, _) = apply(&w, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // GKE's controller takes the Ingress back (a pass of its own, as on
    // GKE): wait for it, or a later `status` can come first.
    let again = edge_settled(&ingresses, &w, true).await;
    assert_eq!(again["healthy"], true, "{again}");

    // Cloud Armor: the policy holds the WAF rules, then the rate limit, then
    // the default rule; GKE's controller (the node simulator) set it on the
    // backend service from the BackendConfig, so Compute refuses to delete
    // it while the Ingress stands.
    let policy = common::gcp_get(&format!(
        "/compute/v1/projects/{name}/global/securityPolicies/{name}-production-edge"
    ))
    .expect("the security policy");
    let rules: Vec<(i64, String)> = policy["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["priority"].as_i64().unwrap(),
                r["action"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(rules.len(), 9, "{rules:?}");
    assert_eq!(rules[0], (1000, "deny(403)".to_string()));
    assert_eq!(rules[7], (2000, "throttle".to_string()));
    assert_eq!(rules[8], (2147483647, "allow".to_string()));
    let refused = ureq::delete(&format!(
        "{}/compute/v1/projects/{name}/global/securityPolicies/{name}-production-edge",
        common::gcp_endpoint()
    ))
    .call();
    match refused {
        Err(ureq::Error::Status(400, r)) => {
            let body = r.into_string().unwrap();
            assert!(body.contains("already being used"), "{body}");
        }
        other => panic!("deleting a policy in use: {other:?}"),
    }
    // The stand-in says no: a BackendConfig naming a policy the project does
    // not have leaves the Ingress without a load balancer, and `status`
    // repeats GKE's controller's complaint.
    w.edit(
        "      security_policy: ${edge_armor.name}\n",
        "      security_policy: no-such-policy\n",
    );
    let (out, _) = apply(&w, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let refused = edge_settled(&ingresses, &w, false).await;
    assert_eq!(refused["healthy"], false, "{refused}");
    assert!(
        refused["detail"]
            .as_str()
            .unwrap()
            .contains("securityPolicies/no-such-policy' was not found"),
        "{refused}"
    );
    w.edit(
        "      security_policy: no-such-policy\n",
        "      security_policy: ${edge_armor.name}\n",
    );
    let (out, _) = apply(&w, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let again = edge_settled(&ingresses, &w, true).await;
    assert_eq!(again["healthy"], true, "{again}");
    // They became ready because the double's network model admits their
    // stores: DATABASE_URL and REDIS_URL (from their Secret) name Cloud SQL's
    // and Memorystore's private addresses, which a VPC-native cluster on the
    // peered network reaches, on the ports they listen on (Memorystore's TLS
    // port is 6378).
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(common::kube_client().await, &name);
    let spec = d.spec.template.spec.unwrap();
    let mut urls = std::collections::BTreeMap::new();
    for c in &spec.containers {
        let names = c
            .env_from
            .iter()
            .flatten()
            .filter_map(|e| e.secret_ref.as_ref().map(|r| r.name.to_string()));
        let keyed = c.env.iter().flatten().filter_map(|e| {
            e.value_from
                .as_ref()?
                .secret_key_ref
                .as_ref()
                .map(|r| r.name.to_string())
        });
        for secret in names.chain(keyed) {
            let data = secrets.get(&secret).await.unwrap().data.unwrap_or_default();
            for key in ["DATABASE_URL", "REDIS_URL"] {
                if let Some(v) = data.get(key) {
                    urls.insert(key, String::from_utf8(v.0.clone()).unwrap());
                }
            }
        }
    }
    assert_eq!(urls.len(), 2, "the pods' store URLs: {urls:?}");
    for (key, url) in &urls {
        let u = url::Url::parse(url).unwrap();
        let judged = common::gcp_get(&format!(
            "/__double/network/reach?host={}&port={}",
            u.host_str().unwrap(),
            u.port().unwrap()
        ))
        .unwrap();
        assert!(
            !judged["store"].is_null(),
            "{key} names no store of the double: {judged}"
        );
        assert_eq!(judged["reachable"], true, "{key}: {judged}");
    }

    // The pods act as the app's service account (workload identity), which
    // may read secrets and reach Cloud SQL; the project's owner is untouched.
    let sas: kube::Api<k8s_openapi::api::core::v1::ServiceAccount> =
        kube::Api::namespaced(common::kube_client().await, &name);
    let ksa = sas.get("ralph-orchestrator").await.unwrap();
    let email = format!("{name}-production-app@{name}.iam.gserviceaccount.com");
    assert_eq!(
        ksa.metadata
            .annotations
            .unwrap_or_default()
            .get("iam.gke.io/gcp-service-account"),
        Some(&email)
    );
    let policy = |path: &str| -> Value {
        let r = ureq::post(&format!("{}{path}", common::gcp_endpoint()))
            .send_string("{}")
            .unwrap();
        serde_json::from_str(&r.into_string().unwrap()).unwrap()
    };
    let members = |p: &Value, role: &str| -> Vec<String> {
        p["bindings"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["role"] == role)
            .flat_map(|b| {
                b["members"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| m.as_str().unwrap().to_string())
            })
            .collect()
    };
    let project_policy = policy(&format!("/v3/projects/{name}:getIamPolicy"));
    assert_eq!(
        members(&project_policy, "roles/owner"),
        vec!["user:owner@example.com"]
    );
    assert_eq!(
        members(&project_policy, "roles/cloudsql.client"),
        vec![format!("serviceAccount:{email}")]
    );
    assert_eq!(
        members(&project_policy, "roles/logging.logWriter"),
        vec![format!(
            "serviceAccount:{name}-production-nodes@{name}.iam.gserviceaccount.com"
        )]
    );
    let sa_policy = policy(&format!(
        "/v1/projects/{name}/serviceAccounts/{email}:getIamPolicy"
    ));
    assert_eq!(
        members(&sa_policy, "roles/iam.workloadIdentityUser"),
        vec![format!(
            "serviceAccount:{name}.svc.id.goog[{name}/ralph-orchestrator]"
        )]
    );

    // What the double holds is what the stack says.
    let project = name.as_str();
    let pool = gcp_get(&format!(
        "/v1/projects/{project}/locations/us-central1/clusters/{name}-production/nodePools/{name}-production-nodes"
    ))
    .expect("the node pool");
    assert_eq!(pool["config"]["machineType"], "n2-standard-4");
    assert_eq!(pool["autoscaling"]["minNodeCount"], 2);
    assert_eq!(pool["autoscaling"]["maxNodeCount"], 10);
    let cluster = gcp_get(&format!(
        "/v1/projects/{project}/locations/us-central1/clusters/{name}-production"
    ))
    .unwrap();
    assert_eq!(
        cluster["nodePools"].as_array().unwrap().len(),
        1,
        "the bootstrap pool is gone"
    );
    // Who may reach the control plane: the stack's ranges (open by default,
    // visibly so).
    assert_eq!(
        cluster["masterAuthorizedNetworksConfig"]["cidrBlocks"][0]["cidrBlock"], "0.0.0.0/0",
        "{cluster}"
    );
    // NetworkPolicies are enforced (Dataplane V2), and the orchestrator's
    // admitted its stores (the pods are ready, above).
    assert_eq!(
        cluster["networkConfig"]["datapathProvider"], "ADVANCED_DATAPATH",
        "{cluster}"
    );
    let sql = sql_instance(project, &id_of(&common::state_json(&w), "db")).unwrap();
    assert_eq!(sql["state"], "RUNNABLE");
    assert_eq!(sql["settings"]["backupConfiguration"]["startTime"], "03:00");

    // ---- no secret value in the state, the plan or the events
    let secrets = gcp_get(&format!("/v1/projects/{project}/secrets")).unwrap();
    let mut values = Vec::new();
    for s in secrets["secrets"].as_array().unwrap() {
        let v = gcp_get(&format!(
            "/v1/{}/versions/latest:access",
            s["name"].as_str().unwrap()
        ))
        .unwrap();
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v["payload"]["data"].as_str().unwrap())
            .unwrap();
        values.push(String::from_utf8(bytes).unwrap());
    }
    assert_eq!(
        values.len(),
        7,
        "six application secrets (Grafana's admin password among them) and the database's admin password"
    );
    assert!(values.iter().any(|v| v == KEY));
    let plan_text = w.ok("plan", &["--json"]);
    let state = state_text(&w);
    for v in &values {
        assert!(
            !state.contains(v.as_str()),
            "a secret value is in the state"
        );
        assert!(
            !plan_text.contains(v.as_str()),
            "a secret value is in the plan"
        );
        assert!(
            !text(&out.stdout).contains(v.as_str()),
            "a secret value is in the events"
        );
        assert!(
            !text(&out.stderr).contains(v.as_str()),
            "a secret value is in the log"
        );
    }

    // ---- a second plan changes nothing, for a handful of list calls
    let before = gcp_requests(project);
    let plan: Value = serde_json::from_str(&plan_text).unwrap();
    assert!(changed(&plan).is_empty(), "{:?}", changed(&plan));
    w.ok("plan", &["--detailed-exitcode"]);
    let after = gcp_requests(project);
    let cost = after["requests"].as_u64().unwrap() - before["requests"].as_u64().unwrap();
    // One paged list per kind (GKE clusters twice: clusters and node pools),
    // one per Cloud SQL instance for its databases and users, one policy
    // read per resource that bindings are in, the private service
    // connection's list and the project's number it is named by, one
    // aggregated list of the node pools' instance groups (their sizes), one
    // list of the enabled APIs, the log buckets' and sinks' lists, and the
    // storage buckets' list: 25 for the 46 resources.
    assert!(
        cost <= 25,
        "a no-op plan made {cost} requests to Google Cloud"
    );
    assert_eq!(after["mutations"], before["mutations"]);

    // ---- the service works, checked from outside the VPC: the pods' own
    // credentials log in to Cloud SQL and to Memorystore (its AUTH string,
    // over TLS on 6378) through the cluster.
    let report = common::healthy_through_the_cluster(&w).await;
    // The Prometheus the stack installed runs (a real one, on the node
    // simulator), loaded the rules, and nothing fires.
    assert!(
        report
            .to_string()
            .contains("2 rule groups loaded, no alert firing"),
        "{report}"
    );

    // ---- node pool size and Redis size change in place
    w.env
        .push(("RALPH_DEPLOY_VAR_nodes_count".into(), "4".into()));
    w.env
        .push(("RALPH_DEPLOY_VAR_nodes_max".into(), "12".into()));
    w.env.push(("RALPH_DEPLOY_VAR_redis_gb".into(), "6".into()));
    // and the team narrows who reaches the control plane, in place too
    w.env.push((
        "RALPH_DEPLOY_VAR_api_allowed_cidrs".into(),
        "[\"198.18.0.0/15\"]".into(),
    ));
    let plan = w.plan_json(&[]);
    let mut c = changed(&plan);
    c.sort();
    assert_eq!(
        c,
        vec![
            ("gke".to_string(), "update".to_string()),
            ("nodes".to_string(), "update".to_string()),
            ("redis".to_string(), "update".to_string())
        ]
    );
    let (out, _) = apply(&w, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pool = gcp_get(&format!(
        "/v1/projects/{project}/locations/us-central1/clusters/{name}-production/nodePools/{name}-production-nodes"
    ))
    .unwrap();
    // As on GKE, a resize changes the pool's instance groups, never its
    // initialNodeCount; the next plan reads the size from the groups.
    assert_ne!(pool["initialNodeCount"], 4, "{pool}");
    let groups = pool["instanceGroupUrls"].as_array().unwrap();
    assert!(!groups.is_empty(), "{pool}");
    let all = gcp_get(&format!(
        "/compute/v1/projects/{project}/aggregated/instanceGroupManagers"
    ))
    .unwrap();
    let sizes: Vec<i64> = all["items"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|z| z["instanceGroupManagers"].as_array().unwrap().clone())
        .filter(|m| groups.contains(&m["selfLink"]))
        .map(|m| m["targetSize"].as_i64().unwrap())
        .collect();
    assert_eq!(sizes, vec![4; groups.len()], "{all}");
    assert_eq!(pool["autoscaling"]["maxNodeCount"], 12);
    let redis = gcp_get(&format!(
        "/v1/projects/{project}/locations/us-central1/instances/{name}-production-redis"
    ))
    .unwrap();
    assert_eq!(redis["memorySizeGb"], 6);
    assert_eq!(redis["state"], "READY");
    let cluster = gcp_get(&format!(
        "/v1/projects/{project}/locations/us-central1/clusters/{name}-production"
    ))
    .unwrap();
    assert_eq!(
        cluster["masterAuthorizedNetworksConfig"]["cidrBlocks"][0]["cidrBlock"], "198.18.0.0/15",
        "{cluster}"
    );
    assert!(changed(&w.plan_json(&[])).is_empty());

    // ---- GKE's autoscaler grows a zone within min..max: not drift, and
    // the next plan does not size the pool back (that would take the node
    // the autoscaler added for a pending pod)
    let grown: Value = serde_json::from_str(
        &ureq::post(&format!("{}/__double/nodes/grow", common::gcp_endpoint()))
            .send_string(&serde_json::json!({"group": groups[0]}).to_string())
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(grown["grown"], true, "{grown}");
    let c = changed(&w.plan_json(&[]));
    assert!(
        c.is_empty(),
        "an autoscaled size planned as a change: {c:?}"
    );

    // ---- failover
    let retired = failover_follows_the_promoted_replica(&w, &name);

    // ---- a subnetwork range is a replacement (and so is what sits in it)
    let replan = {
        let mut c = w.cmd(&[
            "plan",
            w.stack().to_str().unwrap(),
            "--env",
            "production",
            "--json",
        ]);
        c.env("RALPH_DEPLOY_VAR_net", "10.30");
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_str::<Value>(&text(&out.stdout)).unwrap()
    };
    let c = changed(&replan);
    assert!(
        c.contains(&("nodes_subnet".to_string(), "replace".to_string())),
        "{c:?}"
    );

    // ---- destroy refuses the protected database and cache, touching nothing
    let db_id = id_of(&common::state_json(&w), "db");
    let stack = w.stack();
    let out = w
        .cmd(&[
            "destroy",
            stack.to_str().unwrap(),
            "--env",
            "production",
            "--auto-approve",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("db (delete)")
            && err.contains("redis (delete)")
            && err.contains(&format!("db~retired:{retired} (delete)"))
            && err.contains("--allow-protected"),
        "{err}"
    );
    assert!(sql_instance(project, &db_id).is_some());
    assert!(gcp_get(&format!(
        "/compute/v1/projects/{project}/global/networks/{name}-production"
    ))
    .is_some());

    // ---- with --allow-protected everything goes, deletion protection lifted first
    let out = w
        .cmd(&[
            "destroy",
            stack.to_str().unwrap(),
            "--env",
            "production",
            "--auto-approve",
            "--allow-protected",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    assert!(sql_instance(project, &db_id).is_none());
    assert!(sql_instance(project, &retired).is_none());
    assert!(gcp_get(&format!(
        "/v1/projects/{project}/locations/us-central1/clusters/{name}-production"
    ))
    .is_none());
    let nets = gcp_get(&format!("/compute/v1/projects/{project}/global/networks")).unwrap();
    assert!(
        nets.get("items")
            .and_then(Value::as_array)
            .is_none_or(|i| i.is_empty()),
        "{nets}"
    );
    let secrets = gcp_get(&format!("/v1/projects/{project}/secrets")).unwrap();
    assert!(secrets["secrets"].as_array().unwrap().is_empty());
    let accounts = gcp_get(&format!("/v1/projects/{project}/serviceAccounts")).unwrap();
    assert!(accounts["accounts"].as_array().unwrap().is_empty());
    // Only what the stack added left the project's policy: its owner stays.
    let project_policy = policy(&format!("/v3/projects/{name}:getIamPolicy"));
    assert_eq!(
        project_policy["bindings"].as_array().unwrap().len(),
        1,
        "{project_policy}"
    );
    assert_eq!(
        members(&project_policy, "roles/owner"),
        vec!["user:owner@example.com"]
    );
}

/// `gcp.security_policy` alone against the double: rules change one call
/// per rule (patchRule, removeRule, addRule; `patch` never carries them), a
/// rule added by hand is a difference the apply takes away, and a delete
/// waits while GKE's controller still has the policy on a backend service.
#[test]
fn cloud_armor_rules_change_one_by_one_and_the_delete_waits_for_the_load_balancer() {
    let name = format!("ta{}", std::process::id());
    let mut w = World::from_stack("tests/fixtures/gcp-armor.yaml", &name);
    let (out, _) = apply(&w, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = format!("/compute/v1/projects/{name}/global/securityPolicies/{name}-edge");
    let priorities = || -> Vec<(i64, String)> {
        common::gcp_get(&path).expect("the policy")["rules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["priority"].as_i64().unwrap(),
                    r["description"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        priorities().iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![1000, 1001, 1002, 2000, 2147483647]
    );
    assert!(changed(&w.plan_json(&[])).is_empty());

    // A rule added by hand shows in the plan and goes at the next apply;
    // the rate limit changes in place, one rule set goes.
    let added = ureq::post(&format!("{}{path}/addRule", common::gcp_endpoint())).send_string(
        &serde_json::json!({"priority": 10, "action": "deny(403)", "description": "by hand",
                            "match": {"versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["203.0.113.0/24"]}}})
        .to_string(),
    );
    assert!(added.is_ok(), "{added:?}");
    assert_eq!(
        changed(&w.plan_json(&[])),
        vec![("edge".to_string(), "update".to_string())]
    );
    w.env
        .push(("RALPH_DEPLOY_VAR_rate_limit".into(), "50".into()));
    w.edit(
        "[sqli-v33-stable, xss-v33-stable, lfi-v33-stable]",
        "[sqli-v33-stable, lfi-v33-stable]",
    );
    let before = common::gcp_requests(&name);
    let (out, _) = apply(&w, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let after = common::gcp_requests(&name);
    let rules = priorities();
    assert_eq!(
        rules.iter().map(|p| p.0).collect::<Vec<_>>(),
        vec![1000, 1001, 2000, 2147483647],
        "{rules:?}"
    );
    assert_eq!(rules[1].1, "preconfigured WAF rules lfi-v33-stable");
    let policy = common::gcp_get(&path).unwrap();
    assert_eq!(
        policy["rules"][2]["rateLimitOptions"]["rateLimitThreshold"]["count"],
        50
    );
    // Four rule calls (remove 10 and 1002, patch 1001 and 2000): exactly
    // the rules that differ.
    let mutations = after["mutations"].as_u64().unwrap() - before["mutations"].as_u64().unwrap();
    assert_eq!(mutations, 4, "{before} {after}");
    assert!(changed(&w.plan_json(&[])).is_empty());

    // Attached to a backend service (as GKE's controller does for a
    // BackendConfig), the policy cannot go: destroy waits, and finishes
    // once the load balancer lets it go.
    fn attach(project: &str, on: bool) {
        ureq::post(&format!("{}/__double/armor/attach", common::gcp_endpoint()))
            .send_string(
                &serde_json::json!({"project": project, "policy": format!("{project}-edge"),
                                    "backend": "k8s1-test-backend", "attach": on})
                .to_string(),
            )
            .unwrap();
    }
    attach(&name, true);
    let release = {
        let name = name.clone();
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_secs(3));
            attach(&name, false);
        })
    };
    let started = std::time::Instant::now();
    let stack = w.stack();
    let out = w
        .cmd(&[
            "destroy",
            stack.to_str().unwrap(),
            "--env",
            "production",
            "--auto-approve",
        ])
        .output()
        .unwrap();
    release.join().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(started.elapsed() >= std::time::Duration::from_secs(3));
    assert!(common::gcp_get(&path).is_none());
}

/// The orchestrator's logs kept as long as the stack says: a log bucket and
/// the sink that fills it, changed in place, a hand edit taken back, and a
/// destroyed bucket (which Google keeps DELETE_REQUESTED for 7 days, its id
/// still taken) brought back by the next apply. The double refuses what
/// Cloud Logging refuses.
#[test]
fn log_bucket_and_sink_keep_the_orchestrators_logs_as_the_stack_says() {
    let name = format!("tl{}", std::process::id());
    let mut w = World::from_stack("tests/fixtures/gcp-logs.yaml", &name);
    let bucket = format!("/v2/projects/{name}/locations/us-central1/buckets/{name}-orchestrator");
    let sink = format!("/v2/projects/{name}/sinks/{name}-orchestrator");
    let endpoint = common::gcp_endpoint();
    // The stand-in says no: retention out of range, a sink into a bucket
    // that does not exist, Google's own ids.
    let refused = |method: &str, path: &str, body: Value| -> u16 {
        match ureq::request(method, &format!("{endpoint}{path}")).send_string(&body.to_string()) {
            Ok(r) => r.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(e) => panic!("{e}"),
        }
    };
    let parent = format!("/v2/projects/{name}/locations/global/buckets");
    assert_eq!(
        refused(
            "POST",
            &format!("{parent}?bucketId=x"),
            serde_json::json!({"retentionDays": 0})
        ),
        400
    );
    assert_eq!(
        refused(
            "POST",
            &format!("{parent}?bucketId=_Mine"),
            serde_json::json!({})
        ),
        400
    );
    assert_eq!(
        refused(
            "POST",
            &format!("/v2/projects/{name}/sinks"),
            serde_json::json!({"name": "s", "destination": format!("logging.googleapis.com{parent}/missing")})
        ),
        400
    );
    assert_eq!(
        refused(
            "DELETE",
            &format!("{parent}/_Default"),
            serde_json::json!({})
        ),
        400
    );

    let (out, _) = apply(&w, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let b = common::gcp_get(&bucket).expect("the bucket");
    assert_eq!(b["retentionDays"], 90);
    assert_eq!(b["lifecycleState"], "ACTIVE");
    let s = common::gcp_get(&sink).expect("the sink");
    assert_eq!(
        s["destination"],
        format!("logging.googleapis.com/projects/{name}/locations/us-central1/buckets/{name}-orchestrator")
    );
    assert!(s["filter"]
        .as_str()
        .unwrap()
        .contains("resource.labels.namespace_name=\"ralph\""));
    assert!(s["writerIdentity"]
        .as_str()
        .unwrap()
        .starts_with("serviceAccount:service-"));
    assert!(changed(&w.plan_json(&[])).is_empty());

    // Retention changes in place; a filter edited by hand is taken back.
    w.env
        .push(("RALPH_DEPLOY_VAR_log_retention_days".into(), "400".into()));
    let edited = ureq::request("PATCH", &format!("{endpoint}{sink}?updateMask=filter"))
        .send_string(&serde_json::json!({"filter": "severity>=ERROR"}).to_string());
    assert!(edited.is_ok(), "{edited:?}");
    let mut plan = changed(&w.plan_json(&[]));
    plan.sort();
    assert_eq!(
        plan,
        vec![
            ("app_log_route".to_string(), "update".to_string()),
            ("app_logs".to_string(), "update".to_string())
        ]
    );
    let (out, _) = apply(&w, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(common::gcp_get(&bucket).unwrap()["retentionDays"], 400);
    assert!(common::gcp_get(&sink).unwrap()["filter"]
        .as_str()
        .unwrap()
        .starts_with("resource.type=\"k8s_container\""));
    assert!(changed(&w.plan_json(&[])).is_empty());

    // Destroyed: the sink goes, the bucket waits out Google's 7 days with
    // its id taken; the next apply undeletes it rather than failing.
    let stack = w.stack();
    let out = w
        .cmd(&[
            "destroy",
            stack.to_str().unwrap(),
            "--env",
            "production",
            "--auto-approve",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(common::gcp_get(&sink).is_none());
    assert_eq!(
        common::gcp_get(&bucket).unwrap()["lifecycleState"],
        "DELETE_REQUESTED"
    );
    let plan = changed(&w.plan_json(&[]));
    assert!(
        plan.contains(&("app_logs".to_string(), "create".to_string())),
        "{plan:?}"
    );
    let (out, _) = apply(&w, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let b = common::gcp_get(&bucket).unwrap();
    assert_eq!(b["lifecycleState"], "ACTIVE");
    assert_eq!(b["retentionDays"], 400);
    assert!(common::gcp_get(&sink).is_some());
    assert!(changed(&w.plan_json(&[])).is_empty());
}
