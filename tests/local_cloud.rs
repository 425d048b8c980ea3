//! The local cloud says no where the real clouds do. Each test here shows
//! one refusal of a stand-in, reached only through the clouds' own APIs
//! (and the local network model a pod would meet), never through the tool:
//! - Kubernetes versions past their support are refused by the local EKS
//!   and GKE (from support/kubernetes-versions.json), and by `validate`;
//! - the local EKS makes a cluster security group, which managed nodes carry;
//! - RDS, ElastiCache and Cloud SQL refuse store versions past their support
//!   (support/store-versions.json);
//! - a store is reachable from the pods only when its security groups admit
//!   what the nodes carry, and a pod whose store is unreachable never
//!   becomes ready;
//! - the real kube-scheduler places pods on Nodes that follow the node
//!   groups' sizes: the guide's rollout cannot place its surge pod on three
//!   nodes and finishes on four.
use crate::common;

use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{IpPermission, UserIdGroupPair};
use common::{text, vpc_with_subnets, World};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

fn sdk(w: &World) -> impl std::future::Future<Output = aws_config::SdkConfig> + '_ {
    w.aws_conf()
}

#[tokio::test(flavor = "multi_thread")]
async fn local_eks_refuses_a_version_past_its_support_and_makes_a_cluster_security_group() {
    let name = format!("lcv{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let conf = sdk(&w).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let eks = aws_sdk_eks::Client::new(&conf);
    let (vpc_id, subnets) = vpc_with_subnets(&ec2, 40, &["us-east-1a"]).await;
    let subnet_id = subnets[0].clone();
    let vpc_config = aws_sdk_eks::types::VpcConfigRequest::builder()
        .subnet_ids(&subnet_id)
        .build();
    let role = "arn:aws:iam::123456789012:role/eks";

    // 1.28 left EKS's extended support on 2025-11-26: refused, as on AWS.
    let err = eks
        .create_cluster()
        .name(format!("{name}-old"))
        .version("1.28")
        .role_arn(role)
        .resources_vpc_config(vpc_config.clone())
        .send()
        .await
        .expect_err("the local EKS must refuse Kubernetes 1.28");
    let svc = err.into_service_error();
    assert!(svc.is_invalid_parameter_exception(), "{svc:?}");
    assert!(
        svc.to_string().contains("unsupported Kubernetes version"),
        "{svc}"
    );

    // A supported version is made, with a cluster security group in the VPC.
    let made = eks
        .create_cluster()
        .name(format!("{name}-new"))
        .version("1.35")
        .role_arn(role)
        .resources_vpc_config(vpc_config)
        .send()
        .await
        .unwrap();
    let cfg = made.cluster().unwrap().resources_vpc_config().unwrap();
    let sg = cfg
        .cluster_security_group_id()
        .expect("EKS reports the cluster security group")
        .to_string();
    assert_eq!(cfg.vpc_id(), Some(vpc_id.as_str()));
    let groups = ec2
        .describe_security_groups()
        .group_ids(&sg)
        .send()
        .await
        .unwrap();
    let group = &groups.security_groups()[0];
    assert_eq!(group.vpc_id(), Some(vpc_id.as_str()));
    assert!(group.group_name().unwrap().starts_with("eks-cluster-sg-"));
    // It admits itself (node to node, node to control plane).
    assert!(group.ip_permissions().iter().any(|p| p
        .user_id_group_pairs()
        .iter()
        .any(|g| g.group_id() == Some(sg.as_str()))));
}

#[test]
fn local_gke_refuses_a_version_no_channel_offers_and_lists_what_it_offers() {
    let project = format!("lcv-{}", std::process::id());
    let base = format!(
        "{}/v1/projects/{project}/locations/us-central1",
        common::gcp_endpoint()
    );
    let body = serde_json::json!({"cluster": {
        "name": "old", "initialClusterVersion": "1.28", "initialNodeCount": 1}});
    match ureq::post(&format!("{base}/clusters"))
        .set("Content-Type", "application/json")
        .send_string(&body.to_string())
    {
        Err(ureq::Error::Status(400, r)) => {
            let e: serde_json::Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
            assert_eq!(e["error"]["status"], "INVALID_ARGUMENT", "{e}");
            assert!(
                e["error"]["message"].as_str().unwrap().contains("1.28"),
                "{e}"
            );
        }
        other => panic!("the local GKE must refuse 1.28, answered {other:?}"),
    }
    let config = common::gcp_get(&format!(
        "/v1/projects/{project}/locations/us-central1/serverConfig"
    ))
    .unwrap();
    let valid: Vec<&str> = config["validMasterVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(valid.iter().all(|v| !v.starts_with("1.28.")), "{valid:?}");
    assert!(valid.iter().any(|v| v.starts_with("1.35.")), "{valid:?}");
}

#[test]
fn validate_refuses_a_kubernetes_version_past_its_end_of_support() {
    for (stack, cloud) in [
        ("aws-production.yaml", "Amazon EKS"),
        ("gcp-production.yaml", "GKE"),
    ] {
        let w = World::from_stack(stack, &format!("lcval{}", std::process::id()));
        let out = w
            .cmd(&[
                "validate",
                w.stack().to_str().unwrap(),
                "--env",
                "production",
            ])
            .env("RALPH_DEPLOY_VAR_kubernetes_version", "1.28")
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{stack}: 1.28 passed validate");
        assert!(
            err.contains("past its end of support") && err.contains(cloud),
            "{stack}: {err}"
        );
        assert!(
            err.contains("1.35"),
            "{stack}: names a version to choose: {err}"
        );
        // The stacks' own default is inside its window.
        let ok = w
            .cmd(&[
                "validate",
                w.stack().to_str().unwrap(),
                "--env",
                "production",
            ])
            .output()
            .unwrap();
        assert!(ok.status.success(), "{stack}: {}", text(&ok.stderr));
    }
}

/// The local EKS lists the versions it offers (DescribeClusterVersions,
/// which moto lacks), from the dated table; a plan asks it, so a version
/// the table does not know (newer than it) is refused at plan by EKS's own
/// listing, before anything is changed.
#[tokio::test(flavor = "multi_thread")]
async fn local_eks_lists_its_versions_and_a_plan_asks_it() {
    use aws_sdk_eks::types::VersionStatus;
    let w = World::from_stack(
        "aws-production.yaml",
        &format!("lcver{}", std::process::id()),
    );
    let eks = aws_sdk_eks::Client::new(&sdk(&w).await);
    let offered = eks.describe_cluster_versions().send().await.unwrap();
    let versions: Vec<&str> = offered
        .cluster_versions()
        .iter()
        .filter_map(|v| v.cluster_version())
        .collect();
    assert!(versions.contains(&"1.35"), "{versions:?}");
    assert!(!versions.contains(&"1.28"), "{versions:?}");
    let all = eks
        .describe_cluster_versions()
        .include_all(true)
        .cluster_versions("1.28")
        .send()
        .await
        .unwrap();
    assert_eq!(
        all.cluster_versions()[0].version_status(),
        Some(&VersionStatus::Unsupported)
    );

    let plan = |version: &str| {
        w.cmd(&["plan", w.stack().to_str().unwrap(), "--env", "production"])
            .env("RALPH_DEPLOY_VAR_kubernetes_version", version)
            .output()
            .unwrap()
    };
    let out = plan("1.36");
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "1.36 was planned: {err}");
    assert!(
        err.contains("Amazon EKS does not offer Kubernetes 1.36")
            && err.contains("not listed")
            && err.contains("1.35")
            && err.contains("nothing was changed"),
        "{err}"
    );
    let out = plan("1.35");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // The same on Google Cloud, by getServerConfig.
    let g = World::from_stack(
        "gcp-production.yaml",
        &format!("lcgv{}", std::process::id() % 100000),
    );
    let out = g
        .cmd(&["plan", g.stack().to_str().unwrap(), "--env", "production"])
        .env("RALPH_DEPLOY_VAR_kubernetes_version", "1.36")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "1.36 was planned: {err}");
    assert!(
        err.contains("GKE does not offer Kubernetes 1.36 in us-central1") && err.contains("1.35"),
        "{err}"
    );
}

/// The local AWS's network model, as a pod would meet it.
fn reach(host: &str, port: u16) -> serde_json::Value {
    let url = format!(
        "{}/moto-api/network/reach?host={host}&port={port}",
        common::aws_endpoint()
    );
    serde_json::from_str(&ureq::get(&url).call().unwrap().into_string().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_is_reachable_only_through_the_groups_the_nodes_really_carry() {
    let name = format!("lcn{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let conf = sdk(&w).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let eks = aws_sdk_eks::Client::new(&conf);
    let rds = aws_sdk_rds::Client::new(&conf);
    let (vpc_id, subnets) = vpc_with_subnets(&ec2, 41, &["us-east-1a", "us-east-1b"]).await;
    let group = |n: &str| {
        let ec2 = ec2.clone();
        let vpc_id = vpc_id.clone();
        let n = format!("{name}-{n}");
        async move {
            ec2.create_security_group()
                .group_name(&n)
                .description(&n)
                .vpc_id(vpc_id)
                .send()
                .await
                .unwrap()
                .group_id()
                .unwrap()
                .to_string()
        }
    };
    let control_plane_sg = group("nodes").await;
    let db_sg = group("db").await;
    let admit = |from: String| {
        IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(5432)
            .to_port(5432)
            .user_id_group_pairs(UserIdGroupPair::builder().group_id(from).build())
            .build()
    };
    // The shipped stack's old mistake: the database admits a group only the
    // control plane's interfaces carry.
    ec2.authorize_security_group_ingress()
        .group_id(&db_sg)
        .ip_permissions(admit(control_plane_sg.clone()))
        .send()
        .await
        .unwrap();
    rds.create_db_subnet_group()
        .db_subnet_group_name(format!("{name}-db"))
        .db_subnet_group_description("db")
        .set_subnet_ids(Some(subnets.clone()))
        .send()
        .await
        .unwrap();
    let db = rds
        .create_db_instance()
        .db_instance_identifier(format!("{name}-pg"))
        .engine("postgres")
        .db_instance_class("db.t3.micro")
        .allocated_storage(20)
        .master_username("admin_user")
        .master_user_password("not-a-secret-1")
        .db_subnet_group_name(format!("{name}-db"))
        .vpc_security_group_ids(&db_sg)
        .send()
        .await
        .unwrap();
    let host = db
        .db_instance()
        .unwrap()
        .endpoint()
        .and_then(|e| e.address())
        .map(str::to_string)
        .unwrap_or_else(|| format!("{name}-pg.aaaaaaaaaa.us-east-1.rds.amazonaws.com"));

    // No cluster in the VPC yet: no nodes, no path.
    let r = reach(&host, 5432);
    assert_eq!(r["reachable"], false, "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("no EKS managed nodes"),
        "{r}"
    );

    let cluster = format!("{name}-eks");
    let made = eks
        .create_cluster()
        .name(&cluster)
        .version("1.35")
        .role_arn("arn:aws:iam::123456789012:role/eks")
        .resources_vpc_config(
            aws_sdk_eks::types::VpcConfigRequest::builder()
                .set_subnet_ids(Some(subnets.clone()))
                .security_group_ids(&control_plane_sg)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let cluster_sg = made
        .cluster()
        .unwrap()
        .resources_vpc_config()
        .unwrap()
        .cluster_security_group_id()
        .unwrap()
        .to_string();
    let active = |what: &'static str| {
        let eks = eks.clone();
        let cluster = cluster.clone();
        async move {
            let deadline = deadline_in(30);
            loop {
                let status = if what == "cluster" {
                    eks.describe_cluster()
                        .name(&cluster)
                        .send()
                        .await
                        .unwrap()
                        .cluster()
                        .and_then(|c| c.status().cloned())
                        .map(|s| s.as_str().to_string())
                } else {
                    eks.describe_nodegroup()
                        .cluster_name(&cluster)
                        .nodegroup_name("nodes")
                        .send()
                        .await
                        .unwrap()
                        .nodegroup()
                        .and_then(|n| n.status().cloned())
                        .map(|s| s.as_str().to_string())
                };
                if status.as_deref() == Some("ACTIVE") {
                    return;
                }
                assert!(Instant::now() < deadline, "{what} never ACTIVE");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    active("cluster").await;
    eks.create_nodegroup()
        .cluster_name(&cluster)
        .nodegroup_name("nodes")
        .node_role("arn:aws:iam::123456789012:role/nodes")
        .set_subnets(Some(subnets.clone()))
        .send()
        .await
        .unwrap();

    // Nodes exist once the node group is active.
    let r = reach(&host, 5432);
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("no EKS managed nodes"),
        "{r}"
    );
    active("nodegroup").await;

    // The nodes carry the cluster security group, not the control plane's
    // extra group: refused, and the answer says what the nodes carry.
    let r = reach(&host, 5432);
    assert_eq!(r["reachable"], false, "{r}");
    let why = r["reason"].as_str().unwrap();
    assert!(why.contains(&db_sg) && why.contains(&cluster_sg), "{r}");

    // A pod that needs the database stays unready, with the reason.
    let ns = format!("{name}-pods");
    let client = common::kube_client().await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "app"},
        "spec": {"automountServiceAccountToken": false, "containers": [{"name": "app", "image": "example/app:1.0.0",
            "env": [{"name": "DATABASE_URL", "value": format!("postgresql://app@{host}:5432/ralph")}]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready").cloned())
    };
    let deadline = deadline_in(20);
    let cond = loop {
        let p = pods.get("app").await.unwrap();
        if let Some(c) = ready(&p) {
            if c.message.is_some() || Instant::now() > deadline {
                break c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the node simulator never reported the pod"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(cond.status, "False", "{cond:?}");
    assert_eq!(cond.reason.as_deref(), Some("StoreUnreachable"), "{cond:?}");
    assert!(cond.message.unwrap().contains(&host));

    // The fix: admit the cluster security group. Reachable, and the pod
    // becomes ready; another port stays closed.
    ec2.authorize_security_group_ingress()
        .group_id(&db_sg)
        .ip_permissions(admit(cluster_sg.clone()))
        .send()
        .await
        .unwrap();
    let r = reach(&host, 5432);
    assert_eq!(r["reachable"], true, "{r}");
    assert_eq!(reach(&host, 6379)["reachable"], false);

    // Reaching is not logging in: the pod's URL names no password, and the
    // database refuses it, as it would the application at start.
    let cond = eventually(20, "the pod's login was never judged", || async {
        ready(&pods.get("app").await.unwrap())
            .filter(|c| c.reason.as_deref() == Some("StoreLoginFailed"))
    })
    .await;
    assert_eq!(cond.status, "False", "{cond:?}");
    assert!(
        cond.message
            .as_deref()
            .unwrap()
            .contains("no password supplied"),
        "{cond:?}"
    );
    // A role of the database with its own password: a wrong password and
    // the `postgres://` spelling (which the application's SQLAlchemy
    // refuses) stay unready; the right credentials become ready.
    let role = format!("app_{name}");
    let password = "pod-password-1";
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&common::pg_server())
        .await
        .unwrap();
    sqlx::query(&format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        .execute(&mut admin)
        .await
        .unwrap();
    let app_pod = |pod: &str, url: String| -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": pod},
            "spec": {"automountServiceAccountToken": false, "containers": [{"name": "app", "image": "example/app:1.0.0",
                "env": [{"name": "DATABASE_URL", "value": url}]}]}
        }))
        .unwrap()
    };
    let at = format!("{host}:5432/postgres?sslmode=require");
    for (pod, url) in [
        ("wrong", format!("postgresql://{role}:guessed@{at}")),
        ("spelling", format!("postgres://{role}:{password}@{at}")),
        ("right", format!("postgresql://{role}:{password}@{at}")),
    ] {
        pods.create(&PostParams::default(), &app_pod(pod, url))
            .await
            .unwrap();
    }
    let judged = |pod: &'static str| {
        let pods = pods.clone();
        async move {
            eventually(20, &format!("pod {pod} was never judged"), || async {
                ready(&pods.get(pod).await.unwrap())
                    .filter(|c| c.status == "True" || c.message.is_some())
            })
            .await
        }
    };
    for (pod, why) in [
        ("wrong", "password authentication failed"),
        ("spelling", "write postgresql://"),
    ] {
        let cond = judged(pod).await;
        assert_eq!(cond.status, "False", "{cond:?}");
        assert!(cond.message.as_deref().unwrap().contains(why), "{cond:?}");
    }
    assert_eq!(judged("right").await.status, "True");
    let _ = nss.delete(&ns, &Default::default()).await;
    let _ = sqlx::query(&format!("DROP ROLE {role}"))
        .execute(&mut admin)
        .await;

    // A name no store has does not resolve.
    let r = reach("nothing.aaaaaaaaaa.us-east-1.rds.amazonaws.com", 5432);
    assert_eq!(r["reachable"], false);
    assert!(
        r["reason"].as_str().unwrap().contains("does not resolve"),
        "{r}"
    );
}

/// A POST to the Google Cloud double: (status, JSON answer).
fn gcp_post(path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    gcp_call("POST", path, Some(body))
}

/// A request to the Google Cloud double: (status, JSON answer).
fn gcp_call(method: &str, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    let req = ureq::request(method, &format!("{}{path}", common::gcp_endpoint()));
    let r = match body {
        Some(b) => req
            .set("Content-Type", "application/json")
            .send_string(&b.to_string()),
        None => req.call(),
    };
    let (code, resp) = match r {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(c, r)) => (c, r),
        Err(e) => panic!("{method} {path}: {e}"),
    };
    (
        code,
        serde_json::from_str(&resp.into_string().unwrap()).unwrap(),
    )
}

/// RDS, ElastiCache and Cloud SQL no longer create a major version past all
/// of its support (support/store-versions.json); one inside it is made.
#[tokio::test(flavor = "multi_thread")]
async fn local_stores_refuse_major_versions_past_their_support() {
    let name = format!("lcsv{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let conf = sdk(&w).await;
    let rds = aws_sdk_rds::Client::new(&conf);
    let create = |id: String, version: &'static str| {
        rds.create_db_instance()
            .db_instance_identifier(id)
            .engine("postgres")
            .engine_version(version)
            .db_instance_class("db.t3.micro")
            .allocated_storage(20)
            .master_username("ralph")
            .master_user_password("not-a-real-password-1")
            .send()
    };
    let err = create(format!("{name}-old"), "10.21")
        .await
        .expect_err("the local RDS must refuse PostgreSQL 10");
    let svc = err.into_service_error();
    assert_eq!(
        svc.meta().code(),
        Some("InvalidParameterCombination"),
        "{svc:?}"
    );
    assert!(
        svc.meta()
            .message()
            .unwrap_or_default()
            .contains("Cannot find version 10.21 for postgres"),
        "{svc:?}"
    );
    let made = create(format!("{name}-new"), "15.7").await.unwrap();
    assert_eq!(
        made.db_instance().and_then(|d| d.engine_version()),
        Some("15.7")
    );
    rds.delete_db_instance()
        .db_instance_identifier(format!("{name}-new"))
        .skip_final_snapshot(true)
        .send()
        .await
        .unwrap();

    let cache = aws_sdk_elasticache::Client::new(&conf);
    let err = cache
        .create_replication_group()
        .replication_group_id(format!("{name}-r3"))
        .replication_group_description("Redis 3")
        .engine("redis")
        .engine_version("3.2.10")
        .cache_node_type("cache.t3.micro")
        .num_cache_clusters(1)
        .send()
        .await
        .expect_err("the local ElastiCache must refuse Redis 3.2");
    let svc = err.into_service_error();
    assert_eq!(svc.meta().code(), Some("InvalidParameterValue"), "{svc:?}");

    let p = format!("lcsv-{}", std::process::id());
    let sql = |version: &str| {
        serde_json::json!({"name": "db", "region": "us-central1", "databaseVersion": version,
            "settings": {"tier": "db-custom-2-7680"}})
    };
    let (code, e) = gcp_post(&format!("/v1/projects/{p}/instances"), sql("POSTGRES_9_5"));
    assert_eq!(code, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("POSTGRES_9_5 is not supported"),
        "{e}"
    );
    let (code, e) = gcp_post(&format!("/v1/projects/{p}/instances"), sql("POSTGRES_15"));
    assert_eq!(code, 200, "{e}");
}

/// The local Cloud SQL's read replicas behave as Google's: made of a running
/// primary of the same major, with no backups of their own; their
/// databases and users are the primary's and cannot be changed on them; a
/// primary with a replica cannot be deleted, and the replica's delete
/// releases it.
#[test]
fn local_cloud_sql_replicas_are_refused_what_google_refuses() {
    let p = format!("lcrr-{}", std::process::id());
    ureq::post(&format!("{}/__double/project", common::gcp_endpoint()))
        .send_string(&serde_json::json!({"project": p, "delay_scale": 0}).to_string())
        .unwrap();
    let instances = format!("/v1/projects/{p}/instances");
    let instance = |name: &str, version: &str, master: Option<&str>, backups: bool| {
        let mut body = serde_json::json!({"name": name, "region": "us-central1", "databaseVersion": version,
            "settings": {"tier": "db-custom-2-7680", "backupConfiguration": {"enabled": backups}}});
        if let Some(m) = master {
            body["masterInstanceName"] = m.into();
        }
        body
    };
    // An answer with this code whose error message says `words`.
    let answered = |(c, e): (u16, serde_json::Value), code: u16, words: &str| {
        assert_eq!(c, code, "{e}");
        let message = e["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{e}");
    };
    let refused = |body: serde_json::Value, code: u16, words: &str| {
        answered(gcp_post(&instances, body), code, words)
    };
    // Until `path`'s answer passes `done` (the double's operations end at once here).
    let until = |path: String, done: &dyn Fn(&(u16, serde_json::Value)) -> bool| {
        for _ in 0..100 {
            if done(&gcp_call_get(&path)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!("{path} never got there");
    };
    refused(
        instance("r0", "POSTGRES_15", Some("nowhere"), false),
        404,
        "does not exist",
    );
    let (code, e) = gcp_post(&instances, instance("primary", "POSTGRES_15", None, true));
    assert_eq!(code, 200, "{e}");
    until(format!("{instances}/primary"), &|(_, i)| {
        i["state"] == "RUNNABLE"
    });
    refused(
        instance("r1", "POSTGRES_15", Some("primary"), true),
        400,
        "not supported on a read replica",
    );
    refused(
        instance("r2", "POSTGRES_14", Some("primary"), false),
        400,
        "its primary's major version",
    );
    let (code, e) = gcp_post(
        &instances,
        instance("replica", "POSTGRES_15", Some("primary"), false),
    );
    assert_eq!(code, 200, "{e}");
    let (_, replica) = gcp_call_get(&format!("{instances}/replica"));
    assert_eq!(replica["masterInstanceName"], format!("{p}:primary"));
    assert_eq!(replica["instanceType"], "READ_REPLICA_INSTANCE");
    // Its databases are the primary's; none can be made on it.
    let (_, listed) = gcp_call_get(&format!("{instances}/replica/databases"));
    assert_eq!(listed["items"][0]["name"], "postgres", "{listed}");
    answered(
        gcp_post(
            &format!("{instances}/replica/databases"),
            serde_json::json!({"name": "app"}),
        ),
        400,
        "is a read replica",
    );
    // The primary stays while the replica does.
    answered(
        gcp_call("DELETE", &format!("{instances}/primary"), None),
        400,
        "has read replicas (replica)",
    );
    let (code, e) = gcp_call("DELETE", &format!("{instances}/replica"), None);
    assert_eq!(code, 200, "{e}");
    until(format!("{instances}/replica"), &|(code, _)| *code == 404);
    let (code, e) = gcp_call("DELETE", &format!("{instances}/primary"), None);
    assert_eq!(code, 200, "{e}");
}

#[test]
fn local_google_refuses_private_addresses_until_private_services_access_exists() {
    let p = format!("lcsn-{}", std::process::id());
    let network = format!("projects/{p}/global/networks/vpc");
    let sql = serde_json::json!({"name": "db", "region": "us-central1", "databaseVersion": "POSTGRES_15",
        "settings": {"tier": "db-custom-2-7680", "ipConfiguration": {"ipv4Enabled": false, "privateNetwork": network}}});
    let (code, e) = gcp_post(&format!("/v1/projects/{p}/instances"), sql.clone());
    assert_eq!(code, 400, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("private services access"),
        "{e}"
    );
    let redis = serde_json::json!({"tier": "STANDARD_HA", "memorySizeGb": 1, "authorizedNetwork": network,
        "connectMode": "PRIVATE_SERVICE_ACCESS"});
    let (code, e) = gcp_post(
        &format!("/v1/projects/{p}/locations/us-central1/instances?instanceId=cache"),
        redis,
    );
    assert_eq!(code, 400, "{e}");

    // A connection needs a reserved range with purpose VPC_PEERING in that network.
    let connect = serde_json::json!({"network": network, "reservedPeeringRanges": ["services"]});
    let (code, e) = gcp_post(
        "/v1/services/servicenetworking.googleapis.com/connections",
        connect.clone(),
    );
    assert_eq!(code, 400, "{e}");
    assert!(
        e["error"]["message"].as_str().unwrap().contains("services"),
        "{e}"
    );
    let (code, _) = gcp_post(
        &format!("/compute/v1/projects/{p}/global/networks"),
        serde_json::json!({"name": "vpc", "autoCreateSubnetworks": false}),
    );
    assert_eq!(code, 200);
    gcp_wait(&format!("/compute/v1/{network}"), "the network", |_| true);
    let (code, e) = gcp_post(
        &format!("/compute/v1/projects/{p}/global/addresses"),
        serde_json::json!({
        "name": "services", "purpose": "VPC_PEERING", "addressType": "INTERNAL", "prefixLength": 16,
        "network": format!("https://www.googleapis.com/compute/v1/{network}")}),
    );
    assert_eq!(code, 200, "{e}");
    gcp_wait(
        &format!("/compute/v1/projects/{p}/global/addresses/services"),
        "the range",
        |_| true,
    );
    let (code, op) = gcp_post(
        "/v1/services/servicenetworking.googleapis.com/connections",
        connect,
    );
    assert_eq!(code, 200, "{op}");
    gcp_wait(
        &format!("/v1/{}", op["name"].as_str().unwrap()),
        "the connection",
        |v| v["done"] == true,
    );
    // Now Google makes the instance.
    let (code, e) = gcp_post(&format!("/v1/projects/{p}/instances"), sql);
    assert_eq!(code, 200, "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn local_eks_upgrades_one_minor_version_at_a_time() {
    let name = format!("lcu{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let conf = sdk(&w).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let eks = aws_sdk_eks::Client::new(&conf);
    let (_, subnets) = vpc_with_subnets(&ec2, 42, &["us-east-1a"]).await;
    let subnet_id = subnets[0].clone();
    eks.create_cluster()
        .name(&name)
        .version("1.33")
        .role_arn("arn:aws:iam::123456789012:role/eks")
        .resources_vpc_config(
            aws_sdk_eks::types::VpcConfigRequest::builder()
                .subnet_ids(&subnet_id)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let wait_active = || async {
        let deadline = deadline_in(30);
        loop {
            let c = eks.describe_cluster().name(&name).send().await.unwrap();
            let c = c.cluster().unwrap().clone();
            if c.status().map(|s| s.as_str()) == Some("ACTIVE") {
                return c;
            }
            assert!(Instant::now() < deadline, "never ACTIVE");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    wait_active().await;
    // Two minor versions at once: refused, as EKS refuses it.
    let err = eks
        .update_cluster_version()
        .name(&name)
        .version("1.35")
        .send()
        .await
        .unwrap_err();
    let svc = err.into_service_error();
    assert!(svc.is_invalid_parameter_exception(), "{svc:?}");
    assert!(svc.to_string().contains("from 1.33 to 1.35"), "{svc}");
    // One step: in place, through UPDATING.
    let up = eks
        .update_cluster_version()
        .name(&name)
        .version("1.34")
        .send()
        .await
        .unwrap();
    assert_eq!(
        up.update().and_then(|u| u.r#type()).map(|t| t.as_str()),
        Some("VersionUpdate")
    );
    let c = wait_active().await;
    assert_eq!(c.version(), Some("1.34"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kubernetes_upgrade_is_planned_in_place_and_applied_one_step() {
    let name = format!("lcup{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let stack = w.dir.path().join("eks.yaml");
    std::fs::write(
        &stack,
        format!(
            "name: {name}\ncloud:\n  aws: {{ region: us-east-1 }}\nvariables:\n  k8s: {{ type: string, default: \"1.34\" }}\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: {{ cidr_block: 10.43.0.0/16 }}\n  a:\n    kind: aws.subnet\n    properties: {{ vpc_id: \"${{vpc.id}}\", cidr_block: 10.43.1.0/24, availability_zone: us-east-1a }}\n  b:\n    kind: aws.subnet\n    properties: {{ vpc_id: \"${{vpc.id}}\", cidr_block: 10.43.2.0/24, availability_zone: us-east-1b }}\n  role:\n    kind: aws.iam_role\n    properties: {{ name: {name}-eks, assume_role_service: eks.amazonaws.com }}\n  eks:\n    kind: aws.eks_cluster\n    properties:\n      name: {name}\n      version: ${{var.k8s}}\n      role_arn: ${{role.arn}}\n      subnet_ids: [\"${{a.id}}\", \"${{b.id}}\"]\n"
        ),
    )
    .unwrap();
    let run = |args: &[&str], k8s: &str| {
        let mut all = vec![args[0], stack.to_str().unwrap()];
        all.extend_from_slice(&args[1..]);
        w.cmd(&all)
            .env("RALPH_DEPLOY_VAR_k8s", k8s)
            .output()
            .unwrap()
    };
    let out = run(&["apply", "--auto-approve"], "1.34");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan = run(&["plan", "--json"], "1.35");
    assert!(plan.status.success(), "{}", text(&plan.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    assert_eq!(
        common::changed(&plan),
        vec![("eks".to_string(), "update".to_string())],
        "{plan}"
    );
    let out = run(&["apply", "--auto-approve"], "1.35");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let eks = aws_sdk_eks::Client::new(&sdk(&w).await);
    let c = eks.describe_cluster().name(&name).send().await.unwrap();
    assert_eq!(c.cluster().unwrap().version(), Some("1.35"));
    // The cluster now is what the stack says: nothing left to do.
    let out = run(&["plan", "--detailed-exitcode"], "1.35");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

/// An EKS token for `cluster` signed with these credentials, as the tool
/// and `aws eks get-token` make it.
fn eks_token(key: &str, secret: &str, session: Option<String>, cluster: &str) -> String {
    let creds = aws_credential_types::Credentials::new(key, secret, session, None, "test");
    ralph_aws::eks_token::presigned_token(
        &creds,
        "us-east-1",
        cluster,
        std::time::SystemTime::now(),
    )
    .unwrap()
}

/// The local EKS's answer about a token, with its reason (the API server
/// only says 401).
fn eks_judgement(token: &str) -> serde_json::Value {
    use base64::Engine;
    let body = token.strip_prefix("k8s-aws-v1.").unwrap();
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(body)
        .unwrap();
    let answer = ureq::post(&format!(
        "{}/moto-api/eks/authenticate",
        common::aws_endpoint()
    ))
    .send_string(&serde_json::json!({"url": String::from_utf8(url).unwrap()}).to_string())
    .unwrap();
    serde_json::from_str(&answer.into_string().unwrap()).unwrap()
}

/// The status code a request to the cluster's endpoint gets with a bearer
/// token: listing pods in `default`, or creating a ConfigMap there. The
/// token is made a second after the last one: the API server remembers
/// what it learnt of a token (as EKS's does), and tokens signed within the
/// same second are the same token.
async fn kube_as(endpoint: &str, token: impl Fn() -> String, create: bool) -> u16 {
    use k8s_openapi::api::core::v1::ConfigMap;
    tokio::time::sleep(Duration::from_millis(1050)).await;
    let token = token();
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut config = kube::Config::new(endpoint.parse().unwrap());
    config.accept_invalid_certs = true;
    config.auth_info.token = Some(token.into());
    let client = kube::Client::try_from(config).unwrap();
    let result = if create {
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"generateName": "access-check-"}, "data": {"a": "b"}
        }))
        .unwrap();
        Api::<ConfigMap>::namespaced(client, "default")
            .create(&PostParams::default(), &cm)
            .await
            .map(|_| ())
    } else {
        Api::<Pod>::namespaced(client, "default")
            .list(&Default::default())
            .await
            .map(|_| ())
    };
    match result {
        Ok(()) => 200,
        Err(kube::Error::Api(e)) => {
            eprintln!("the cluster answered {}: {}", e.code, e.message);
            e.code
        }
        Err(e) => panic!("{e}"),
    }
}

/// A second person gets into the cluster through an EKS access entry, and
/// only through one. The local EKS refuses entries on a cluster whose
/// authentication mode is CONFIG_MAP (EKS's own default, which the tool no
/// longer asks for), refuses a principal IAM does not know, and keeps the
/// entry and its policy; a policy change is in place. The cluster's API
/// server asks the local EKS about every token: the signature (the key's
/// secret, the cluster it names), the endpoint's public ranges, the entry,
/// and its access policy for each request.
#[tokio::test(flavor = "multi_thread")]
async fn a_second_administrator_gets_in_through_an_access_entry() {
    let name = format!("lcae{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let conf = sdk(&w).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let iam = aws_sdk_iam::Client::new(&conf);
    let eks = aws_sdk_eks::Client::new(&conf);
    let (_, subnets) = vpc_with_subnets(&ec2, 43, &["us-east-1a", "us-east-1b"]).await;
    let alice = iam
        .create_role()
        .role_name(format!("{name}-alice"))
        .assume_role_policy_document("{}")
        .send()
        .await
        .unwrap()
        .role
        .unwrap()
        .arn
        .clone();
    let stack = |mode: &str, policy: &str, principal: &str| {
        format!(
            r#"name: {name}
cloud: {{ aws: {{ region: us-east-1 }} }}
environments: {{ production: {{}} }}
resources:
  eks:
    kind: aws.eks_cluster
    properties:
      name: {name}
      role_arn: arn:aws:iam::123456789012:role/eks
      subnet_ids: ["{}", "{}"]
      authentication_mode: {mode}
  alice:
    kind: aws.eks_access_entry
    properties:
      cluster_name: ${{eks.name}}
      principal_arn: {principal}
      policy: {policy}
"#,
            subnets[0], subnets[1]
        )
    };
    let apply = |text: String| {
        std::fs::write(w.stack(), text).unwrap();
        w.run("apply", &["--auto-approve"])
    };
    // The cluster as EKS makes it unless asked: aws-auth only. The entry is refused.
    let out = apply(stack("CONFIG_MAP", "AmazonEKSViewPolicy", &alice));
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("authentication mode must be set to one of [API, API_AND_CONFIG_MAP]"),
        "{err}"
    );
    // Who may use the cluster: its creator (the key that applied), not
    // alice, who has no entry yet.
    let endpoint = eks
        .describe_cluster()
        .name(&name)
        .send()
        .await
        .unwrap()
        .cluster
        .unwrap()
        .endpoint
        .unwrap();
    let creator = || eks_token(&w.access_key_id(), "testing", None, &name);
    let session = aws_sdk_sts::Client::new(&conf)
        .assume_role()
        .role_arn(&alice)
        .role_session_name("alice")
        .send()
        .await
        .unwrap()
        .credentials
        .unwrap();
    let as_alice = |cluster: &str| {
        eks_token(
            session.access_key_id(),
            session.secret_access_key(),
            Some(session.session_token().to_string()),
            cluster,
        )
    };
    assert_eq!(kube_as(&endpoint, || creator(), true).await, 200);
    assert_eq!(kube_as(&endpoint, || as_alice(&name), false).await, 401);
    let judged = eks_judgement(&as_alice(&name));
    assert!(
        judged["reason"]
            .as_str()
            .unwrap()
            .contains("only the creator is mapped"),
        "{judged}"
    );
    // A wrong secret, or a token signed for another cluster, is nobody's.
    assert_eq!(
        kube_as(
            &endpoint,
            || eks_token(&w.access_key_id(), "guessed", None, &name),
            false
        )
        .await,
        401
    );
    let elsewhere = as_alice(&format!("{name}-elsewhere"));
    assert!(eks_judgement(&elsewhere)["reason"]
        .as_str()
        .unwrap()
        .contains("SignatureDoesNotMatch"));
    // Moving it towards API is in place, and then the entry is made.
    let out = apply(stack("API_AND_CONFIG_MAP", "AmazonEKSViewPolicy", &alice));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let entries = eks
        .list_access_entries()
        .cluster_name(&name)
        .send()
        .await
        .unwrap();
    assert_eq!(entries.access_entries(), [alice.clone()]);
    let policy = |policies: aws_sdk_eks::operation::list_associated_access_policies::ListAssociatedAccessPoliciesOutput| {
        policies.associated_access_policies()[0]
            .policy_arn()
            .unwrap()
            .to_string()
    };
    let listed = eks
        .list_associated_access_policies()
        .cluster_name(&name)
        .principal_arn(&alice)
        .send()
        .await
        .unwrap();
    assert!(policy(listed).ends_with("/AmazonEKSViewPolicy"));
    // Alice is in now, and may look but not change.
    assert_eq!(kube_as(&endpoint, || as_alice(&name), false).await, 200);
    assert_eq!(kube_as(&endpoint, || as_alice(&name), true).await, 403);
    // Nothing left to do; then a wider policy is an update in place.
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    std::fs::write(
        w.stack(),
        stack("API_AND_CONFIG_MAP", "AmazonEKSClusterAdminPolicy", &alice),
    )
    .unwrap();
    let plan = w.plan_json(&[]);
    assert_eq!(
        common::changed(&plan),
        vec![("alice".to_string(), "update".to_string())]
    );
    let out = apply(stack(
        "API_AND_CONFIG_MAP",
        "AmazonEKSClusterAdminPolicy",
        &alice,
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let listed = eks
        .list_associated_access_policies()
        .cluster_name(&name)
        .principal_arn(&alice)
        .send()
        .await
        .unwrap();
    assert!(policy(listed).ends_with("/AmazonEKSClusterAdminPolicy"));
    assert_eq!(kube_as(&endpoint, || as_alice(&name), true).await, 200);
    // An endpoint whose public ranges leave out the runner is not reached
    // from it, whoever holds the token.
    eks.update_cluster_config()
        .name(&name)
        .resources_vpc_config(
            aws_sdk_eks::types::VpcConfigRequest::builder()
                .public_access_cidrs("203.0.113.0/24")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let judged = eks_judgement(&creator());
    assert!(
        judged["reason"]
            .as_str()
            .unwrap()
            .contains("not the runner's address"),
        "{judged}"
    );
    assert_eq!(kube_as(&endpoint, || as_alice(&name), false).await, 401);
    // A principal IAM does not know is refused by EKS.
    let out = apply(stack(
        "API_AND_CONFIG_MAP",
        "AmazonEKSClusterAdminPolicy",
        "arn:aws:iam::123456789012:role/nobody-here",
    ));
    assert!(
        text(&out.stderr).contains("principalArn could not be found"),
        "{}",
        text(&out.stderr)
    );
    let out = w.run("destroy", &["--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The Google double's network model: `/__double/network/reach`.
fn gcp_reach(host: &str, port: u16) -> serde_json::Value {
    common::gcp_get(&format!("/__double/network/reach?host={host}&port={port}")).unwrap()
}

/// Polls a GET on the double until `done` says so.
fn gcp_wait(
    path: &str,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = deadline_in(30);
    loop {
        if let Some(v) = common::gcp_get(path) {
            if done(&v) {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "{what} never happened");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A pod reaches Cloud SQL's private address only from a running VPC-native
/// GKE cluster on the instance's network, on the port it listens on, unless
/// an egress firewall rule for the nodes denies it: the double judges this
/// from its own resources, as Google's connectivity tests would.
#[test]
fn local_google_judges_a_pods_path_to_a_private_store_from_its_own_resources() {
    let p = format!("lcgr-{}", std::process::id());
    let network = format!("projects/{p}/global/networks/vpc");
    let link = format!("https://www.googleapis.com/compute/v1/{network}");
    let (code, e) = gcp_post(
        &format!("/compute/v1/projects/{p}/global/networks"),
        serde_json::json!({"name": "vpc", "autoCreateSubnetworks": false}),
    );
    assert_eq!(code, 200, "{e}");
    gcp_wait(&format!("/compute/v1/{network}"), "the network", |_| true);
    let (code, e) = gcp_post(
        &format!("/compute/v1/projects/{p}/global/addresses"),
        serde_json::json!({"name": "services", "purpose": "VPC_PEERING", "addressType": "INTERNAL",
            "prefixLength": 16, "network": link}),
    );
    assert_eq!(code, 200, "{e}");
    gcp_wait(
        &format!("/compute/v1/projects/{p}/global/addresses/services"),
        "the range",
        |_| true,
    );
    let (code, op) = gcp_post(
        "/v1/services/servicenetworking.googleapis.com/connections",
        serde_json::json!({"network": network, "reservedPeeringRanges": ["services"]}),
    );
    assert_eq!(code, 200, "{op}");
    gcp_wait(
        &format!("/v1/{}", op["name"].as_str().unwrap()),
        "the connection",
        |v| v["done"] == true,
    );
    let (code, e) = gcp_post(
        &format!("/v1/projects/{p}/instances"),
        serde_json::json!({"name": "db", "region": "us-central1", "databaseVersion": "POSTGRES_15",
            "settings": {"tier": "db-custom-2-7680",
                "ipConfiguration": {"ipv4Enabled": false, "privateNetwork": network}}}),
    );
    assert_eq!(code, 200, "{e}");
    let db = gcp_wait(
        &format!("/v1/projects/{p}/instances/db"),
        "Cloud SQL RUNNABLE",
        |v| v["state"] == "RUNNABLE",
    );
    let ip = db["ipAddresses"][0]["ipAddress"]
        .as_str()
        .unwrap()
        .to_string();

    // No cluster on that network yet.
    let r = gcp_reach(&ip, 5432);
    assert_eq!(r["reachable"], false, "{r}");
    assert!(
        r["reason"]
            .as_str()
            .unwrap()
            .contains("no running GKE cluster"),
        "{r}"
    );

    // A routes-based cluster's pods are not carried by the peering.
    let cluster = |name: &str, aliases: bool| {
        let (code, e) = gcp_post(
            &format!("/v1/projects/{p}/locations/us-central1/clusters"),
            serde_json::json!({"cluster": {"name": name, "network": "vpc",
                "ipAllocationPolicy": {"useIpAliases": aliases},
                "nodePools": [{"name": "nodes", "initialNodeCount": 1,
                    "config": {"machineType": "e2-standard-4", "tags": ["nodes"]}}]}}),
        );
        assert_eq!(code, 200, "{e}");
        gcp_wait(
            &format!("/v1/projects/{p}/locations/us-central1/clusters/{name}"),
            "the cluster RUNNING",
            |v| v["status"] == "RUNNING",
        );
    };
    cluster("routes", false);
    let r = gcp_reach(&ip, 5432);
    assert_eq!(r["reachable"], false, "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("routes-based"),
        "{r}"
    );

    // A VPC-native cluster on the network reaches it, on its port only.
    cluster("native", true);
    let r = gcp_reach(&ip, 5432);
    assert_eq!(r["reachable"], true, "{r}");
    let r = gcp_reach(&ip, 6379);
    assert_eq!(r["reachable"], false, "{r}");
    assert!(
        r["reason"].as_str().unwrap().contains("listens on 5432"),
        "{r}"
    );

    // An egress rule for the nodes' tag that denies the address wins over
    // the implied allow; one for another tag changes nothing.
    for (name, tag) in [("deny-other", "others"), ("deny-db", "nodes")] {
        let (code, e) = gcp_post(
            &format!("/compute/v1/projects/{p}/global/firewalls"),
            serde_json::json!({"name": name, "network": link, "direction": "EGRESS", "priority": 100,
                "denied": [{"IPProtocol": "tcp", "ports": ["5432"]}],
                "destinationRanges": [format!("{ip}/32")], "targetTags": [tag]}),
        );
        assert_eq!(code, 200, "{e}");
        gcp_wait(
            &format!("/compute/v1/projects/{p}/global/firewalls/{name}"),
            "the rule",
            |_| true,
        );
        let r = gcp_reach(&ip, 5432);
        if tag == "others" {
            assert_eq!(r["reachable"], true, "{r}");
        } else {
            assert_eq!(r["reachable"], false, "{r}");
            assert!(r["reason"].as_str().unwrap().contains("deny-db"), "{r}");
        }
    }
    // An address no store has is not the double's to judge.
    assert!(gcp_reach("10.250.250.250", 5432)["store"].is_null());
}

/// A GET to the Google Cloud double: (status, JSON answer).
fn gcp_call_get(path: &str) -> (u16, serde_json::Value) {
    gcp_call("GET", path, None)
}

/// A new project has its APIs off, as on Google Cloud: every call to one
/// answers 403 PERMISSION_DENIED with SERVICE_DISABLED (and the service) in
/// its ErrorInfo, until Service Usage enables it; Service Usage itself is
/// on, and what it lists and reports follows the enabling.
#[test]
fn local_google_refuses_an_api_a_new_project_has_not_enabled() {
    let project = format!("apis{}", std::process::id());
    let (code, _) = gcp_post(
        "/__double/project",
        serde_json::json!({"project": project, "fresh": true}),
    );
    assert_eq!(code, 200);
    let networks = format!("/compute/v1/projects/{project}/global/networks");
    let (code, answer) = gcp_call_get(&networks);
    assert_eq!(code, 403, "{answer}");
    let err = &answer["error"];
    assert_eq!(err["status"], "PERMISSION_DENIED", "{answer}");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("has not been used in project"),
        "{answer}"
    );
    let info = err["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        .expect("an ErrorInfo");
    assert_eq!(info["reason"], "SERVICE_DISABLED");
    assert_eq!(info["metadata"]["service"], "compute.googleapis.com");
    // Writes are refused the same way, and change nothing.
    let (code, _) = gcp_post(
        &networks,
        serde_json::json!({"name": "n1", "autoCreateSubnetworks": false}),
    );
    assert_eq!(code, 403);

    let svc = format!("/v1/projects/{project}/services/compute.googleapis.com");
    let (code, got) = gcp_call_get(&svc);
    assert_eq!(
        (code, got["state"].as_str()),
        (200, Some("DISABLED")),
        "{got}"
    );
    let (code, listed) = gcp_call_get(&format!(
        "/v1/projects/{project}/services?filter=state:ENABLED"
    ));
    assert_eq!(code, 200);
    let names: Vec<&str> = listed["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["config"]["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"serviceusage.googleapis.com"), "{names:?}");
    assert!(!names.contains(&"compute.googleapis.com"), "{names:?}");

    let (code, op) = gcp_post(&format!("{svc}:enable"), serde_json::json!({}));
    assert_eq!((code, op["done"].as_bool()), (200, Some(true)), "{op}");
    assert_eq!(gcp_call_get(&svc).1["state"], "ENABLED");
    let (code, answer) = gcp_call_get(&networks);
    assert_eq!(code, 200, "{answer}");
    // Another API of the project is still off.
    let (code, _) = gcp_call_get(&format!("/v1/projects/{project}/instances"));
    assert_eq!(code, 403);
    // A name that is no API is refused as Google does.
    let (code, _) = gcp_post(
        &format!("/v1/projects/{project}/services/not-an-api:enable"),
        serde_json::json!({}),
    );
    assert_eq!(code, 403);
}

/// Memorystore's TLS certificate is signed by the instance's own CA, which
/// no public root holds: the local Memorystore reports it in
/// `serverCaCerts` (the certificate of the real Redis behind it), and a
/// pod whose REDIS_URL is `rediss://` becomes ready only when the url names
/// a CA file (`ssl_ca_certs`) that a mounted ConfigMap holding that CA
/// provides, as a verifying client needs.
#[tokio::test(flavor = "multi_thread")]
async fn a_pod_verifies_memorystore_tls_only_with_the_instance_ca_mounted() {
    let p = format!("lcca-{}", std::process::id());
    let network = format!("projects/{p}/global/networks/vpc");
    let link = format!("https://www.googleapis.com/compute/v1/{network}");
    let post = |path: String, body: serde_json::Value| {
        let (code, e) = gcp_post(&path, body);
        assert_eq!(code, 200, "{path}: {e}");
        e
    };
    post(
        format!("/compute/v1/projects/{p}/global/networks"),
        serde_json::json!({"name": "vpc", "autoCreateSubnetworks": false}),
    );
    gcp_wait(&format!("/compute/v1/{network}"), "the network", |_| true);
    post(
        format!("/compute/v1/projects/{p}/global/addresses"),
        serde_json::json!({"name": "services", "purpose": "VPC_PEERING", "addressType": "INTERNAL", "prefixLength": 16, "network": link}),
    );
    gcp_wait(
        &format!("/compute/v1/projects/{p}/global/addresses/services"),
        "the range",
        |_| true,
    );
    let op = post(
        "/v1/services/servicenetworking.googleapis.com/connections".into(),
        serde_json::json!({"network": network, "reservedPeeringRanges": ["services"]}),
    );
    gcp_wait(
        &format!("/v1/{}", op["name"].as_str().unwrap()),
        "the connection",
        |v| v["done"] == true,
    );
    post(
        format!("/v1/projects/{p}/locations/us-central1/clusters"),
        serde_json::json!({"cluster": {"name": "native", "network": "vpc", "ipAllocationPolicy": {"useIpAliases": true},
            "nodePools": [{"name": "nodes", "initialNodeCount": 1, "config": {"machineType": "e2-standard-4"}}]}}),
    );
    gcp_wait(
        &format!("/v1/projects/{p}/locations/us-central1/clusters/native"),
        "the cluster RUNNING",
        |v| v["status"] == "RUNNING",
    );
    post(
        format!("/v1/projects/{p}/locations/us-central1/instances?instanceId=cache"),
        serde_json::json!({"tier": "BASIC", "memorySizeGb": 1, "authorizedNetwork": network,
            "connectMode": "PRIVATE_SERVICE_ACCESS", "transitEncryptionMode": "SERVER_AUTHENTICATION"}),
    );
    let inst = gcp_wait(
        &format!("/v1/projects/{p}/locations/us-central1/instances/cache"),
        "Memorystore READY",
        |v| v["state"] == "READY",
    );
    let (host, port) = (
        inst["host"].as_str().unwrap().to_string(),
        inst["port"].as_u64().unwrap(),
    );
    assert_eq!(port, 6378, "{inst}");
    let ca = inst["serverCaCerts"][0]["cert"]
        .as_str()
        .expect("the instance's CA")
        .to_string();
    assert!(ca.contains("BEGIN CERTIFICATE"), "{inst}");

    let ns = format!("{p}-pods");
    let client = common::kube_client().await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .unwrap();
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(
            serde_json::json!({"metadata": {"name": "ca"}, "data": {"redis-ca.pem": ca}}),
        )
        .unwrap(),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let url = format!("rediss://{host}:{port}/0");
    let with_ca = format!("{url}?ssl_ca_certs=/etc/ralph/ca/redis-ca.pem");
    for (name, url, mounted) in [
        ("plain", url.as_str(), false),
        ("verifying", with_ca.as_str(), true),
    ] {
        let mut spec = serde_json::json!({"automountServiceAccountToken": false, "containers": [{"name": "app", "image": "example/app:1.0.0",
            "env": [{"name": "REDIS_URL", "value": url}]}]});
        if mounted {
            spec["containers"][0]["volumeMounts"] =
                serde_json::json!([{"name": "ca", "mountPath": "/etc/ralph/ca", "readOnly": true}]);
            spec["volumes"] = serde_json::json!([{"name": "ca", "configMap": {"name": "ca"}}]);
        }
        let pod: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))
                .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready").cloned())
    };
    let deadline = deadline_in(20);
    let (plain, verifying) = loop {
        let a = ready(&pods.get("plain").await.unwrap());
        let b = ready(&pods.get("verifying").await.unwrap());
        if let (Some(a), Some(b)) = (&a, &b) {
            if a.message.is_some() && b.status == "True" {
                break (a.clone(), b.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "the pods were never judged: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(plain.status, "False", "{plain:?}");
    assert!(plain.message.unwrap().contains("certificate verify failed"));
    assert_eq!(verifying.status, "True", "{verifying:?}");
    let _ = nss.delete(&ns, &Default::default()).await;
}

/// The simulated application answers /health and /ready only, as the
/// orchestrator does: a pod whose probes ask another path is never ready,
/// with the kubelet's reason.
#[tokio::test(flavor = "multi_thread")]
async fn a_probe_on_a_path_the_application_does_not_serve_keeps_the_pod_unready() {
    let ns = format!("probes-{}", std::process::id());
    let client = common::kube_client().await;
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for (name, path) in [("guide", "/ready"), ("wrong", "/readyz")] {
        let pod: Pod =
            serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": {
            "automountServiceAccountToken": false,
            "containers": [{"name": "app", "image": "example/app:1.0.0",
                "readinessProbe": {"httpGet": {"path": path, "port": 8080}}}]}}))
            .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let ready = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|c| c.iter().find(|c| c.type_ == "Ready").cloned())
    };
    let deadline = deadline_in(20);
    let (guide, wrong) = loop {
        let a = ready(&pods.get("guide").await.unwrap());
        let b = ready(&pods.get("wrong").await.unwrap());
        if let (Some(a), Some(b)) = (&a, &b) {
            if a.status == "True" && b.message.is_some() {
                break (a.clone(), b.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "the pods were never judged: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(guide.status, "True");
    assert_eq!(wrong.status, "False");
    assert_eq!(wrong.reason.as_deref(), Some("ProbeFailed"), "{wrong:?}");
    assert!(wrong.message.unwrap().contains("404 (GET /readyz)"));
    let _ = nss.delete(&ns, &Default::default()).await;
}

/// How much longer than its usual time a stand-in may take to react: the
/// waits below return as soon as what they wait for holds, so a generous
/// bound costs nothing when things work, and a loaded machine (CI runs
/// every kill point beside this file) does not fail a reaction that came.
const PATIENCE: u32 = 3;

/// The instant `secs` (times [`PATIENCE`]) from now.
fn deadline_in(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs) * PATIENCE
}

/// Waits up to `secs` (times [`PATIENCE`]) for `check` to give a value;
/// panics with `what`.
async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = deadline_in(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// An ACTIVE EKS cluster `name` (Kubernetes 1.35) in the subnets: its OIDC issuer.
async fn active_cluster(eks: &aws_sdk_eks::Client, name: &str, subnets: &[String]) -> String {
    let made = eks
        .create_cluster()
        .name(name)
        .version("1.35")
        .role_arn("arn:aws:iam::123456789012:role/eks")
        .resources_vpc_config(
            aws_sdk_eks::types::VpcConfigRequest::builder()
                .set_subnet_ids(Some(subnets.to_vec()))
                .build(),
        )
        .send()
        .await
        .unwrap();
    eventually(30, "the cluster never became ACTIVE", || async {
        let c = eks.describe_cluster().name(name).send().await.unwrap();
        (c.cluster().and_then(|c| c.status()).map(|s| s.as_str()) == Some("ACTIVE")).then_some(())
    })
    .await;
    made.cluster()
        .and_then(|c| c.identity())
        .and_then(|i| i.oidc())
        .and_then(|o| o.issuer())
        .unwrap_or_default()
        .to_string()
}

/// An m5.xlarge managed node group of `min..=max` nodes, `desired` now.
async fn node_group(
    eks: &aws_sdk_eks::Client,
    cluster: &str,
    group: &str,
    subnets: &[String],
    (min, max, desired): (i32, i32, i32),
) {
    eks.create_nodegroup()
        .cluster_name(cluster)
        .nodegroup_name(group)
        .node_role("arn:aws:iam::123456789012:role/nodes")
        .set_subnets(Some(subnets.to_vec()))
        .instance_types("m5.xlarge")
        .scaling_config(
            aws_sdk_eks::types::NodegroupScalingConfig::builder()
                .min_size(min)
                .max_size(max)
                .desired_size(desired)
                .build(),
        )
        .send()
        .await
        .unwrap();
}

/// A namespace of the test's own.
async fn new_namespace(
    client: &kube::Client,
    ns: &str,
) -> Api<k8s_openapi::api::core::v1::Namespace> {
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
    )
    .await
    .unwrap();
    nss
}

/// The guide's Deployment `ralph`: `replicas`, one per node (required
/// anti-affinity), surge 1 and nothing unavailable, 1 CPU and 2 GiB asked
/// per pod, pinned to a node group by the provider's label `key`.
fn guide_deployment(
    key: &str,
    group: &str,
    replicas: i32,
) -> k8s_openapi::api::apps::v1::Deployment {
    let labels = serde_json::json!({"app": "ralph-orchestrator"});
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "ralph"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": labels}, "spec": {
                "automountServiceAccountToken": false,
                "nodeSelector": {key: group},
                "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                    "labelSelector": {"matchLabels": labels},
                    "topologyKey": "kubernetes.io/hostname"}]}},
                "containers": [{"name": "app", "image": "example/app:1.0.0",
                    "resources": {"requests": {"cpu": "1", "memory": "2Gi"},
                                  "limits": {"cpu": "2", "memory": "4Gi"}}}]}}}
    }))
    .unwrap()
}

/// The cluster autoscaler's events in a namespace: (reason, message).
async fn autoscaler_events(
    events: &Api<k8s_openapi::api::core::v1::Event>,
) -> Vec<(String, String)> {
    events
        .list(&kube::api::ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("cluster-autoscaler")
        })
        .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_guides_rollout_cannot_schedule_its_surge_pod_on_three_nodes_and_can_on_four() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Node;
    use kube::api::{ListParams, Patch, PatchParams};

    let name = format!("lcs{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let conf = sdk(&w).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let eks = aws_sdk_eks::Client::new(&conf);
    let (_, subnets) =
        vpc_with_subnets(&ec2, 42, &["us-east-1a", "us-east-1b", "us-east-1c"]).await;
    let cluster = format!("{name}-eks");
    let nodegroup = format!("{name}-nodes");
    active_cluster(&eks, &cluster, &subnets).await;
    // The guide's node group, at the three nodes it runs today.
    node_group(&eks, &cluster, &nodegroup, &subnets, (2, 10, 3)).await;
    let status = || {
        let (eks, cluster, nodegroup) = (eks.clone(), cluster.clone(), nodegroup.clone());
        async move {
            let n = eks
                .describe_nodegroup()
                .cluster_name(&cluster)
                .nodegroup_name(&nodegroup)
                .send()
                .await
                .unwrap();
            (n.nodegroup().and_then(|n| n.status()).map(|s| s.as_str()) == Some("ACTIVE"))
                .then_some(())
        }
    };
    eventually(30, "the node group never became ACTIVE", status).await;

    let client = common::kube_client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let of_group =
        ListParams::default().labels(&format!("eks.amazonaws.com/nodegroup={nodegroup}"));
    let count = |want: usize| {
        let (nodes, lp) = (nodes.clone(), of_group.clone());
        async move {
            let got = nodes.list(&lp).await.unwrap().items;
            // A Node is written first and its status (allocatable) in a
            // second request: count only Nodes with both.
            let ready = got.iter().all(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.allocatable.as_ref())
                    .is_some()
            });
            (got.len() == want && ready).then_some(got)
        }
    };
    let three = eventually(30, "the node group's 3 Nodes never appeared", || count(3)).await;
    // Each has what an m5.xlarge offers pods on EKS, in the group's zones.
    for n in &three {
        let labels = n.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["node.kubernetes.io/instance-type"], "m5.xlarge");
        assert!(labels["topology.kubernetes.io/zone"].starts_with("us-east-1"));
        let alloc = n.status.as_ref().unwrap().allocatable.as_ref().unwrap();
        assert_eq!(alloc["cpu"].0, "3920m", "{alloc:?}");
        assert_eq!(alloc["pods"].0, "58", "{alloc:?}");
    }

    // The guide's Deployment: 3 replicas, one per node (required
    // anti-affinity), surge 1 and nothing unavailable, pinned to the group.
    let ns = format!("{name}-app");
    let nss = new_namespace(&client, &ns).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(
            &PostParams::default(),
            &guide_deployment("eks.amazonaws.com/nodegroup", &nodegroup, 3),
        )
        .await
        .unwrap();
    let settled = || {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("ralph").await.unwrap();
            let s = d.status.unwrap_or_default();
            (s.observed_generation == d.metadata.generation
                && s.updated_replicas == Some(3)
                && s.available_replicas == Some(3)
                && s.replicas == Some(3))
            .then_some(())
        }
    };
    eventually(
        40,
        "the first 3 replicas never became available on 3 nodes",
        settled,
    )
    .await;

    // A new release needs a fourth host for its surge pod: the scheduler
    // leaves it Pending, and the rollout cannot make progress.
    deployments
        .patch(
            "ralph",
            &PatchParams::default(),
            &Patch::Strategic(serde_json::json!({"spec": {"template": {"spec": {
                "containers": [{"name": "app", "image": "example/app:1.1.0"}]}}}})),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let why = eventually(30, "the surge pod was never judged unschedulable", || {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default())
                .await
                .unwrap()
                .items
                .iter()
                .find_map(|p| {
                    let image = p.spec.as_ref()?.containers[0].image.clone()?;
                    let c = p
                        .status
                        .as_ref()?
                        .conditions
                        .as_ref()?
                        .iter()
                        .find(|c| c.type_ == "PodScheduled")?;
                    (image.ends_with(":1.1.0") && c.status == "False").then(|| c.clone())
                })
        }
    })
    .await;
    assert_eq!(why.reason.as_deref(), Some("Unschedulable"), "{why:?}");
    let message = why.message.unwrap_or_default();
    assert!(message.contains("anti-affinity"), "{message}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let s = deployments.get("ralph").await.unwrap().status.unwrap();
    assert_eq!(s.updated_replicas, Some(1), "{s:?}");
    assert_eq!(
        s.available_replicas,
        Some(3),
        "the old release keeps serving: {s:?}"
    );

    // A fourth node (what an autoscaler, or desired 4, gives): the surge
    // pod lands and the rollout finishes.
    eks.update_nodegroup_config()
        .cluster_name(&cluster)
        .nodegroup_name(&nodegroup)
        .scaling_config(
            aws_sdk_eks::types::NodegroupScalingConfig::builder()
                .min_size(2)
                .max_size(10)
                .desired_size(4)
                .build(),
        )
        .send()
        .await
        .unwrap();
    eventually(40, "the node group's fourth Node never appeared", || {
        count(4)
    })
    .await;
    eventually(60, "the rollout never finished on 4 nodes", settled).await;
    let images: Vec<String> = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.spec.as_ref()?.containers[0].image.clone())
        .collect();
    assert!(images.iter().all(|i| i.ends_with(":1.1.0")), "{images:?}");

    let _ = nss.delete(&ns, &Default::default()).await;
    let _ = eks
        .delete_nodegroup()
        .cluster_name(&cluster)
        .nodegroup_name(&nodegroup)
        .send()
        .await;
}

/// The guide's Deployment on an autoscaled GKE pool of one node per zone:
/// the rollout's surge pod makes GKE's autoscaler (the node simulator
/// watching the pods, the double resizing the pool's zone) add a fourth
/// node, and the rollout finishes; at the pool's maximum a pod stays
/// Pending and says why no node was added.
#[tokio::test(flavor = "multi_thread")]
async fn an_autoscaled_gke_pool_grows_for_the_surge_pod_up_to_its_maximum() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Event, Node};
    use kube::api::{ListParams, Patch, PatchParams};

    let p = format!("lcas-{}", std::process::id());
    let pool = format!("auto-{}", std::process::id());
    let (code, e) = gcp_post(
        &format!("/v1/projects/{p}/locations/us-central1/clusters"),
        serde_json::json!({"cluster": {"name": "c", "network": "default",
            "ipAllocationPolicy": {"useIpAliases": true},
            "nodePools": [{"name": pool, "initialNodeCount": 1,
                "autoscaling": {"enabled": true, "minNodeCount": 1, "maxNodeCount": 2},
                "config": {"machineType": "e2-standard-4"}}]}}),
    );
    assert_eq!(code, 200, "{e}");
    let cluster_path = format!("/v1/projects/{p}/locations/us-central1/clusters/c");
    gcp_wait(&cluster_path, "the cluster RUNNING", |v| {
        v["status"] == "RUNNING"
    });

    let client = common::kube_client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let of_pool = ListParams::default().labels(&format!("cloud.google.com/gke-nodepool={pool}"));
    let count = |want: usize| {
        let (nodes, lp) = (nodes.clone(), of_pool.clone());
        async move { (nodes.list(&lp).await.unwrap().items.len() == want).then_some(()) }
    };
    eventually(
        30,
        "the pool's 3 Nodes (one per zone) never appeared",
        || count(3),
    )
    .await;

    let ns = format!("{p}-app");
    let nss = new_namespace(&client, &ns).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(
            &PostParams::default(),
            &guide_deployment("cloud.google.com/gke-nodepool", &pool, 3),
        )
        .await
        .unwrap();
    let settled = |replicas: i32| {
        let deployments = deployments.clone();
        async move {
            let d = deployments.get("ralph").await.unwrap();
            let s = d.status.unwrap_or_default();
            (s.observed_generation == d.metadata.generation
                && s.updated_replicas == Some(replicas)
                && s.available_replicas == Some(replicas)
                && s.replicas == Some(replicas))
            .then_some(())
        }
    };
    eventually(40, "the first 3 replicas never became available", || {
        settled(3)
    })
    .await;

    // A new release: the surge pod finds no fourth host, the autoscaler
    // adds one in a zone, and the rollout finishes.
    deployments
        .patch(
            "ralph",
            &PatchParams::default(),
            &Patch::Strategic(serde_json::json!({"spec": {"template": {"spec": {
                "containers": [{"name": "app", "image": "example/app:1.1.0"}]}}}})),
        )
        .await
        .unwrap();
    eventually(60, "the rollout never finished on the grown pool", || {
        settled(3)
    })
    .await;
    let grown = nodes.list(&of_pool).await.unwrap().items.len();
    assert!((4..=5).contains(&grown), "{grown} nodes after one rollout");
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let reasons = || autoscaler_events(&events);
    let seen = reasons().await;
    assert!(
        seen.iter()
            .any(|(r, m)| r == "TriggeredScaleUp" && m.contains(&pool)),
        "{seen:?}"
    );
    // GKE's way: one zone's instance group grew; the pool's initial count
    // did not move.
    let c = common::gcp_get(&cluster_path).unwrap();
    assert_eq!(c["nodePools"][0]["initialNodeCount"], 1, "{c}");

    // Seven replicas on a pool of at most two nodes per zone (six): the
    // seventh stays Pending, and says why no node came.
    deployments
        .patch(
            "ralph",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    eventually(60, "the pool never reached its maximum of 6 Nodes", || {
        count(6)
    })
    .await;
    let at_max = eventually(40, "no event said the pool was at its maximum", || {
        let reasons = reasons();
        async move {
            reasons
                .await
                .into_iter()
                .find(|(r, m)| r == "NotTriggerScaleUp" && m.contains("maximum"))
        }
    })
    .await;
    assert!(at_max.1.contains(&pool), "{at_max:?}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(count(6).await.is_some(), "the pool grew past its maximum");
    // The sixth Node's pod becomes available in its own time (at CI's load
    // after the event above); the seventh never does.
    eventually(40, "six replicas never became available", || async {
        let s = deployments.get("ralph").await.ok()?.status?;
        (s.available_replicas == Some(6)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s = deployments.get("ralph").await.unwrap().status.unwrap();
    assert_eq!(s.available_replicas, Some(6), "{s:?}");

    let _ = nss.delete(&ns, &Default::default()).await;
    let _ = gcp_call("DELETE", &cluster_path, None);
}

/// EKS has no autoscaler of its own: a node group grows for a pending pod
/// only when a cluster-autoscaler pod serves the cluster, and only through
/// an IAM role its service account may assume (an OIDC provider of the
/// cluster's issuer trusted for that account) that allows
/// SetDesiredCapacity on the group; never past the group's maximum.
#[tokio::test(flavor = "multi_thread")]
async fn an_eks_node_group_grows_only_through_an_autoscaler_with_a_trusted_role() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Event, Node};
    use kube::api::{ListParams, Patch, PatchParams};

    let name = format!("lca{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let conf = sdk(&w).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let eks = aws_sdk_eks::Client::new(&conf);
    let iam = aws_sdk_iam::Client::new(&conf);
    let (_, subnets) = vpc_with_subnets(&ec2, 43, &["us-east-1a", "us-east-1b"]).await;
    let cluster = format!("{name}-eks");
    let nodegroup = format!("{name}-nodes");
    let issuer = active_cluster(&eks, &cluster, &subnets).await;
    node_group(&eks, &cluster, &nodegroup, &subnets, (1, 4, 3)).await;
    let client = common::kube_client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let of_group =
        ListParams::default().labels(&format!("eks.amazonaws.com/nodegroup={nodegroup}"));
    let count = |want: usize| {
        let (nodes, lp) = (nodes.clone(), of_group.clone());
        async move { (nodes.list(&lp).await.unwrap().items.len() == want).then_some(()) }
    };
    eventually(40, "the node group's 3 Nodes never appeared", || count(3)).await;

    let ns = format!("{name}-app");
    let nss = new_namespace(&client, &ns).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(
            &PostParams::default(),
            &guide_deployment("eks.amazonaws.com/nodegroup", &nodegroup, 4),
        )
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let autoscaler_events = || autoscaler_events(&events);
    let available = |n: i32| {
        let deployments = deployments.clone();
        async move {
            let s = deployments
                .get("ralph")
                .await
                .unwrap()
                .status
                .unwrap_or_default();
            (s.available_replicas == Some(n)).then_some(())
        }
    };
    // Four replicas, one per node, on three nodes and no autoscaler: the
    // fourth stays Pending and nothing grows.
    eventually(30, "three replicas never became available", || available(3)).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        count(3).await.is_some(),
        "a node group grew with no autoscaler"
    );
    assert!(autoscaler_events().await.is_empty());

    // An autoscaler whose role does not trust the cluster's issuer: it has
    // no credentials, and says so.
    let trust = |provider: &str, subject: &str| {
        let issuer = issuer.trim_start_matches("https://");
        serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"Federated": provider}, "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {format!("{issuer}:sub"): subject,
                format!("{issuer}:aud"): "sts.amazonaws.com"}}}]})
        .to_string()
    };
    let subject = format!("system:serviceaccount:{ns}:cluster-autoscaler");
    let role = iam
        .create_role()
        .role_name(format!("{name}-autoscaler"))
        .assume_role_policy_document(trust(
            "arn:aws:iam::123456789012:oidc-provider/nowhere.example.com",
            &subject,
        ))
        .send()
        .await
        .unwrap();
    let role_arn = role.role().unwrap().arn().to_string();
    let objects: Vec<serde_json::Value> = vec![
        serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {
            "name": "cluster-autoscaler", "namespace": ns,
            "annotations": {"eks.amazonaws.com/role-arn": role_arn}}}),
        serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {
            "name": "cluster-autoscaler", "namespace": ns}, "spec": {
            "selector": {"matchLabels": {"app": "ca"}},
            "template": {"metadata": {"labels": {"app": "ca"}}, "spec": {
                "serviceAccountName": "cluster-autoscaler", "automountServiceAccountToken": false,
                "containers": [{"name": "ca", "image": "example/autoscaling/cluster-autoscaler:v1.35.0",
                    "command": ["./cluster-autoscaler", "--cloud-provider=aws",
                        format!("--node-group-auto-discovery=asg:tag=k8s.io/cluster-autoscaler/enabled,k8s.io/cluster-autoscaler/{cluster}")]}]}}}}),
    ];
    for o in objects {
        let ar = if o["kind"] == "Deployment" {
            kube::api::ApiResource::erase::<Deployment>(&())
        } else {
            kube::api::ApiResource::erase::<k8s_openapi::api::core::v1::ServiceAccount>(&())
        };
        let api: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
        api.create(&PostParams::default(), &serde_json::from_value(o).unwrap())
            .await
            .unwrap();
    }
    let refused = eventually(40, "the autoscaler never reported its credentials", || {
        let ev = autoscaler_events();
        async move {
            ev.await
                .into_iter()
                .find(|(r, m)| r == "NotTriggerScaleUp" && m.contains("WebIdentityErr"))
        }
    })
    .await;
    assert!(refused.1.contains(&subject), "{refused:?}");
    assert!(count(3).await.is_some());

    // The cluster's issuer as an OIDC provider, trusted for the autoscaler's
    // account: now it assumes the role, but the role may not resize.
    let provider = iam
        .create_open_id_connect_provider()
        .url(&issuer)
        .client_id_list("sts.amazonaws.com")
        .send()
        .await
        .unwrap()
        .open_id_connect_provider_arn()
        .unwrap()
        .to_string();
    iam.update_assume_role_policy()
        .role_name(format!("{name}-autoscaler"))
        .policy_document(trust(&provider, &subject))
        .send()
        .await
        .unwrap();
    eventually(
        40,
        "a role without SetDesiredCapacity was not refused",
        || {
            let ev = autoscaler_events();
            async move {
                ev.await.into_iter().find(|(r, m)| {
                    r == "NotTriggerScaleUp"
                        && m.contains("not authorized to perform: autoscaling:SetDesiredCapacity")
                })
            }
        },
    )
    .await;

    // A policy for another cluster's groups does not do either.
    let policy = |cluster: &str| {
        serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Action": ["autoscaling:SetDesiredCapacity"], "Resource": "*",
            "Condition": {"StringEquals": {
                format!("aws:ResourceTag/k8s.io/cluster-autoscaler/{cluster}"): "owned"}}}]})
        .to_string()
    };
    iam.put_role_policy()
        .role_name(format!("{name}-autoscaler"))
        .policy_name("autoscaler")
        .policy_document(policy("another"))
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(
        count(3).await.is_some(),
        "a policy for another cluster resized this one"
    );
    iam.put_role_policy()
        .role_name(format!("{name}-autoscaler"))
        .policy_name("autoscaler")
        .policy_document(policy(&cluster))
        .send()
        .await
        .unwrap();
    eventually(40, "the node group never grew to 4", || count(4)).await;
    eventually(40, "the fourth replica never became available", || {
        available(4)
    })
    .await;
    let seen = autoscaler_events().await;
    assert!(
        seen.iter()
            .any(|(r, m)| r == "TriggeredScaleUp" && m.contains(&nodegroup)),
        "{seen:?}"
    );
    let ng = eks
        .describe_nodegroup()
        .cluster_name(&cluster)
        .nodegroup_name(&nodegroup)
        .send()
        .await
        .unwrap();
    assert_eq!(
        ng.nodegroup()
            .unwrap()
            .scaling_config()
            .unwrap()
            .desired_size(),
        Some(4)
    );

    // A fifth replica: the group is at its maximum.
    deployments
        .patch(
            "ralph",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": 5}})),
        )
        .await
        .unwrap();
    eventually(40, "no event said the group was at its maximum", || {
        let ev = autoscaler_events();
        async move {
            ev.await.into_iter().find(|(r, m)| {
                r == "NotTriggerScaleUp" && m.contains("max node group size reached")
            })
        }
    })
    .await;
    assert!(count(4).await.is_some());

    let _ = nss.delete(&ns, &Default::default()).await;
    let _ = eks
        .delete_nodegroup()
        .cluster_name(&cluster)
        .nodegroup_name(&nodegroup)
        .send()
        .await;
}

/// NetworkPolicies bind only where the cluster enforces them: on EKS, its
/// vpc-cni add-on with the network policy agent on (a string "true", as the
/// add-on's schema has it); before that, a pod whose policy denies every
/// egress still reaches its store.
#[tokio::test(flavor = "multi_thread")]
async fn network_policies_bind_only_once_the_vpc_cni_enforces_them() {
    let name = format!("lcp{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let conf = sdk(&w).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let eks = aws_sdk_eks::Client::new(&conf);
    let (_, subnets) = vpc_with_subnets(&ec2, 44, &["us-east-1a"]).await;
    let cluster = format!("{name}-eks");
    let nodegroup = format!("{name}-nodes");
    active_cluster(&eks, &cluster, &subnets).await;
    node_group(&eks, &cluster, &nodegroup, &subnets, (1, 1, 1)).await;
    let client = common::kube_client().await;
    let ns = format!("{name}-app");
    let nss = new_namespace(&client, &ns).await;
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> =
        Api::namespaced(client.clone(), &ns);
    policies
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "deny-egress"},
                "spec": {"podSelector": {}, "policyTypes": ["Egress"], "egress": []}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "app"},
        "spec": {"automountServiceAccountToken": false,
            "nodeSelector": {"eks.amazonaws.com/nodegroup": nodegroup},
            "containers": [{"name": "app", "image": "example/app:1.0.0",
                "env": [{"name": "DATABASE_URL", "value": "postgresql://app@127.0.0.1:5432/ralph"}]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let ready = |want: &'static str| {
        let pods = pods.clone();
        async move {
            let p = pods.get("app").await.unwrap();
            p.status
                .and_then(|s| s.conditions)
                .and_then(|c| c.into_iter().find(|c| c.type_ == "Ready"))
                .filter(|c| c.status == want)
        }
    };
    // Not enforced: the deny-all policy is stored and ignored.
    eventually(
        40,
        "the pod never became ready on a cluster that enforces nothing",
        || ready("True"),
    )
    .await;

    // The agent's switch is a string in vpc-cni's schema: a boolean is refused.
    let err = eks
        .create_addon()
        .cluster_name(&cluster)
        .addon_name("vpc-cni")
        .configuration_values(r#"{"enableNetworkPolicy": true}"#)
        .send()
        .await
        .expect_err("a boolean enableNetworkPolicy must be refused");
    let svc = err.into_service_error();
    assert!(svc.is_invalid_parameter_exception(), "{svc:?}");
    assert!(svc.to_string().contains("string expected"), "{svc}");
    let made = eks
        .create_addon()
        .cluster_name(&cluster)
        .addon_name("vpc-cni")
        .configuration_values(r#"{"enableNetworkPolicy": "true"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        made.addon().and_then(|a| a.status()).map(|s| s.as_str()),
        Some("CREATING")
    );
    // Enforced: the same pod loses its store, and says which policy.
    let cond = eventually(40, "the policy never took effect", || ready("False")).await;
    assert_eq!(cond.reason.as_deref(), Some("StoreUnreachable"), "{cond:?}");
    assert!(
        cond.message
            .unwrap_or_default()
            .contains("NetworkPolicy deny-egress"),
        "the reason names the policy"
    );

    let _ = nss.delete(&ns, &Default::default()).await;
    let _ = eks
        .delete_nodegroup()
        .cluster_name(&cluster)
        .nodegroup_name(&nodegroup)
        .send()
        .await;
}

/// Compute's list filters are RE2: a pattern Python's regular expressions
/// take but RE2 does not (lookahead, back references) is refused with
/// Compute's 400, as Google refuses it.
#[test]
fn local_compute_filters_are_re2() {
    let p = format!("lcre-{}", std::process::id());
    let (code, e) = gcp_post(
        &format!("/compute/v1/projects/{p}/global/networks"),
        serde_json::json!({"name": "ralph-vpc", "autoCreateSubnetworks": false}),
    );
    assert_eq!(code, 200, "{e}");
    gcp_wait(
        &format!("/compute/v1/projects/{p}/global/networks/ralph-vpc"),
        "the network",
        |_| true,
    );
    let list = |filter: &str| {
        let q: String = url_escape(filter);
        gcp_call_get(&format!(
            "/compute/v1/projects/{p}/global/networks?filter={q}"
        ))
    };
    let (code, found) = list(r#"name eq "ralph-.*""#);
    assert_eq!(code, 200, "{found}");
    assert_eq!(found["items"][0]["name"], "ralph-vpc", "{found}");
    for pattern in [r#"name eq "(?!x)ralph-.*""#, r#"name eq "(r)alph-vpc\1""#] {
        let (code, e) = list(pattern);
        assert_eq!(code, 400, "{pattern}: {e}");
        assert!(e.to_string().contains("RE2"), "{e}");
    }
}

/// Percent-encodes a query value.
fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// EKS's community add-ons (metrics-server, cert-manager) are installed
/// through EKS, with nothing downloaded; like any add-on that runs a
/// Deployment, one created before a node group is up reports DEGRADED
/// (InsufficientNumberOfReplicas), and ACTIVE once nodes exist. That is
/// why the production stack orders them after its nodes.
#[tokio::test(flavor = "multi_thread")]
async fn an_add_on_with_pods_is_degraded_until_the_cluster_has_nodes() {
    let name = format!("lcd{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let conf = sdk(&w).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let eks = aws_sdk_eks::Client::new(&conf);
    let (_, subnets) = vpc_with_subnets(&ec2, 44, &["us-east-1a", "us-east-1b"]).await;
    let cluster = format!("{name}-eks");
    active_cluster(&eks, &cluster, &subnets).await;
    let refused = eks
        .create_addon()
        .cluster_name(&cluster)
        .addon_name("ingress-nginx")
        .send()
        .await
        .unwrap_err();
    assert!(
        format!("{:?}", refused).contains("not supported"),
        "{refused:?}"
    );
    for addon in ["metrics-server", "cert-manager"] {
        eks.create_addon()
            .cluster_name(&cluster)
            .addon_name(addon)
            .send()
            .await
            .unwrap();
    }
    let status = |addon: &'static str| {
        let (eks, cluster) = (eks.clone(), cluster.clone());
        async move {
            let a = eks
                .describe_addon()
                .cluster_name(&cluster)
                .addon_name(addon)
                .send()
                .await
                .unwrap()
                .addon
                .unwrap();
            let issues: Vec<String> = a
                .health()
                .map(|h| {
                    h.issues()
                        .iter()
                        .filter_map(|i| i.code().map(|c| c.as_str().to_string()))
                        .collect()
                })
                .unwrap_or_default();
            (a.status().unwrap().as_str().to_string(), issues)
        }
    };
    for addon in ["metrics-server", "cert-manager"] {
        let (s, issues) = eventually(30, "the add-on never settled", || async {
            let got = status(addon).await;
            (got.0 != "CREATING").then_some(got)
        })
        .await;
        assert_eq!(s, "DEGRADED", "{addon}");
        assert_eq!(issues, ["InsufficientNumberOfReplicas"], "{addon}");
    }
    node_group(&eks, &cluster, "nodes", &subnets, (1, 2, 1)).await;
    for addon in ["metrics-server", "cert-manager"] {
        eventually(30, "the add-on never became ACTIVE", || async {
            (status(addon).await.0 == "ACTIVE").then_some(())
        })
        .await;
    }
}

/// `scripts/kube.sh stop` returns only once the local Kubernetes is gone
/// (before, it returned while the API server was still shutting down, and a
/// start right after could meet its ports and etcd's data in use).
#[test]
fn kube_sh_stop_returns_once_its_processes_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let script = common::repo().join("scripts/kube.sh");
    let started = std::process::Command::new("bash")
        .arg(&script)
        .arg("start")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(started.status.success(), "{}", text(&started.stderr));
    let pids: Vec<u32> = [
        "node-sim",
        "scheduler",
        "controller-manager",
        "apiserver",
        "etcd",
    ]
    .iter()
    .map(|p| {
        std::fs::read_to_string(dir.path().join(format!("kube/{p}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    })
    .collect();
    // Alive, or a zombie waiting for its reaper (it has exited).
    let running = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
        })
    };
    assert!(
        pids.iter().all(|p| running(*p)),
        "not all started: {pids:?}"
    );
    let stopped = std::process::Command::new("bash")
        .arg(&script)
        .arg("stop")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(stopped.status.success(), "{}", text(&stopped.stderr));
    let left: Vec<u32> = pids.into_iter().filter(|p| running(*p)).collect();
    assert!(
        left.is_empty(),
        "still running after stop returned: {left:?}"
    );
}

/// EKS serves no Ingress by itself: one of class `alb` gets a load
/// balancer only from a running AWS Load Balancer Controller of its
/// cluster, which acts through its IRSA role (trusted for its service
/// account, allowed to create load balancers) and serves an ACM
/// certificate of the host once ACM has issued it; each refusal is the
/// controller's Warning event on the Ingress.
#[tokio::test(flavor = "multi_thread")]
async fn an_alb_ingress_is_served_only_through_a_trusted_role_and_an_issued_certificate() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Event, Node};
    use k8s_openapi::api::networking::v1::Ingress;
    use kube::api::{ListParams, Patch, PatchParams};

    let name = format!("lcb{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let conf = sdk(&w).await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let eks = aws_sdk_eks::Client::new(&conf);
    let iam = aws_sdk_iam::Client::new(&conf);
    let acm = aws_sdk_acm::Client::new(&conf);
    let (_, subnets) = vpc_with_subnets(&ec2, 44, &["us-east-1a", "us-east-1b"]).await;
    let cluster = format!("{name}-eks");
    let nodegroup = format!("{name}-nodes");
    let issuer = active_cluster(&eks, &cluster, &subnets).await;
    node_group(&eks, &cluster, &nodegroup, &subnets, (1, 2, 1)).await;
    let client = common::kube_client().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let of_group =
        ListParams::default().labels(&format!("eks.amazonaws.com/nodegroup={nodegroup}"));
    eventually(40, "the node group's Node never appeared", || {
        let (nodes, lp) = (nodes.clone(), of_group.clone());
        async move { (!nodes.list(&lp).await.unwrap().items.is_empty()).then_some(()) }
    })
    .await;

    let ns = format!("{name}-app");
    let nss = new_namespace(&client, &ns).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    deployments
        .create(
            &PostParams::default(),
            &guide_deployment("eks.amazonaws.com/nodegroup", &nodegroup, 1),
        )
        .await
        .unwrap();
    let host = format!("{name}.example.com");
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    ingresses
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "ralph"},
                "spec": {"ingressClassName": "alb", "rules": [{"host": host, "http": {"paths": [{
                    "path": "/", "pathType": "Prefix",
                    "backend": {"service": {"name": "ralph", "port": {"number": 80}}}}]}}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let address = || {
        let ingresses = ingresses.clone();
        async move {
            ingresses
                .get("ralph")
                .await
                .unwrap()
                .status
                .and_then(|s| s.load_balancer)
                .and_then(|l| l.ingress)
                .and_then(|i| i.into_iter().next())
                .and_then(|i| i.hostname)
        }
    };
    let events: Api<Event> = Api::namespaced(client.clone(), &ns);
    let warned = |text: &'static str| {
        let events = events.clone();
        async move {
            events
                .list(&ListParams::default())
                .await
                .unwrap()
                .items
                .into_iter()
                .filter(|e| e.involved_object.kind.as_deref() == Some("Ingress"))
                .find(|e| e.message.as_deref().unwrap_or_default().contains(text))
                .map(|e| e.message.unwrap_or_default())
        }
    };

    // The controller, with a role that trusts no provider of this cluster.
    let subject = format!("system:serviceaccount:{ns}:aws-load-balancer-controller");
    let trust = |provider: &str| {
        let issuer = issuer.trim_start_matches("https://");
        serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"Federated": provider}, "Action": "sts:AssumeRoleWithWebIdentity",
            "Condition": {"StringEquals": {format!("{issuer}:sub"): subject.clone(),
                format!("{issuer}:aud"): "sts.amazonaws.com"}}}]})
        .to_string()
    };
    let role_name = format!("{name}-lbc");
    let role_arn = iam
        .create_role()
        .role_name(&role_name)
        .assume_role_policy_document(trust(
            "arn:aws:iam::123456789012:oidc-provider/nowhere.example.com",
        ))
        .send()
        .await
        .unwrap()
        .role
        .unwrap()
        .arn;
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> = Api::namespaced(client.clone(), &ns);
    sa.create(
        &PostParams::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {
            "name": "aws-load-balancer-controller",
            "annotations": {"eks.amazonaws.com/role-arn": role_arn}}}))
        .unwrap(),
    )
    .await
    .unwrap();
    deployments
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": "lbc"}, "spec": {
                "selector": {"matchLabels": {"app": "lbc"}},
                "template": {"metadata": {"labels": {"app": "lbc"}}, "spec": {
                    "serviceAccountName": "aws-load-balancer-controller",
                    "automountServiceAccountToken": false,
                    "containers": [{"name": "controller",
                        "image": "example/eks/aws-load-balancer-controller:v2.17.1",
                        "args": [format!("--cluster-name={cluster}"), "--ingress-class=alb"],
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": 61779}}}]}}}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let refused = eventually(40, "the controller never reported its credentials", || {
        warned("WebIdentityErr")
    })
    .await;
    assert!(refused.contains(&subject), "{refused}");
    assert_eq!(address().await, None);

    // Trusted through an OIDC provider of the cluster's issuer, but not
    // allowed to create load balancers.
    let provider = iam
        .create_open_id_connect_provider()
        .url(&issuer)
        .client_id_list("sts.amazonaws.com")
        .send()
        .await
        .unwrap()
        .open_id_connect_provider_arn()
        .unwrap()
        .to_string();
    iam.update_assume_role_policy()
        .role_name(&role_name)
        .policy_document(trust(&provider))
        .send()
        .await
        .unwrap();
    eventually(
        40,
        "a role without CreateLoadBalancer was not refused",
        || warned("not authorized to perform: elasticloadbalancing:CreateLoadBalancer"),
    )
    .await;
    assert_eq!(address().await, None);

    // Allowed, but ACM holds no certificate of the host ...
    iam.put_role_policy()
        .role_name(&role_name)
        .policy_name("lbc")
        .policy_document(
            serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Action": ["elasticloadbalancing:CreateLoadBalancer"], "Resource": "*"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    let refused = eventually(40, "an Ingress with no certificate was served", || {
        warned("no certificate found for host")
    })
    .await;
    assert!(refused.contains(&host), "{refused}");
    // ... and the one the Ingress names is pending validation (its DNS
    // records do not exist yet: the local ACM issues it after a wait) ...
    let cert = acm
        .request_certificate()
        .domain_name(&host)
        .validation_method(aws_sdk_acm::types::ValidationMethod::Dns)
        .send()
        .await
        .unwrap()
        .certificate_arn()
        .unwrap()
        .to_string();
    let named = serde_json::json!({"metadata": {"annotations": {
        "alb.ingress.kubernetes.io/certificate-arn": cert}}});
    ingresses
        .patch("ralph", &PatchParams::default(), &Patch::Merge(&named))
        .await
        .unwrap();
    // (ACM issues it 25 s after the request: the refusal must come first.)
    let refused = eventually(20, "a pending certificate was not refused", || {
        warned("UnsupportedCertificate")
    })
    .await;
    assert!(refused.contains("PENDING_VALIDATION"), "{refused}");
    assert_eq!(address().await, None);
    // ... until ACM issues it.
    let hostname = eventually(90, "the Ingress was never served", address).await;
    assert!(
        hostname.ends_with(".us-east-1.elb.amazonaws.com"),
        "{hostname}"
    );

    // A web ACL in front: one that does not exist is refused, and the
    // load balancer goes with it ...
    let acl_arn = "arn:aws:wafv2:us-east-1:123456789012:regional/webacl/nowhere/0000";
    let guarded = serde_json::json!({"metadata": {"annotations": {
        "alb.ingress.kubernetes.io/wafv2-acl-arn": acl_arn}}});
    ingresses
        .patch("ralph", &PatchParams::default(), &Patch::Merge(&guarded))
        .await
        .unwrap();
    eventually(20, "a web ACL that does not exist was not refused", || {
        warned("WAFNonexistentItemException")
    })
    .await;
    eventually(20, "the load balancer outlived its refusal", || {
        let address = address();
        async move { address.await.is_none().then_some(()) }
    })
    .await;
    // ... one that exists needs the role's wafv2:AssociateWebACL ...
    let waf = aws_sdk_wafv2::Client::new(&conf);
    let visibility = aws_sdk_wafv2::types::VisibilityConfig::builder()
        .sampled_requests_enabled(true)
        .cloud_watch_metrics_enabled(true)
        .metric_name("edge")
        .build()
        .unwrap();
    let acl = waf
        .create_web_acl()
        .name(format!("{name}-edge"))
        .scope(aws_sdk_wafv2::types::Scope::Regional)
        .default_action(
            aws_sdk_wafv2::types::DefaultAction::builder()
                .allow(aws_sdk_wafv2::types::AllowAction::builder().build())
                .build(),
        )
        .visibility_config(visibility)
        .send()
        .await
        .unwrap()
        .summary
        .unwrap()
        .arn
        .unwrap();
    let guarded = serde_json::json!({"metadata": {"annotations": {
        "alb.ingress.kubernetes.io/wafv2-acl-arn": acl}}});
    ingresses
        .patch("ralph", &PatchParams::default(), &Patch::Merge(&guarded))
        .await
        .unwrap();
    eventually(20, "a role without AssociateWebACL was not refused", || {
        warned("not authorized to perform: wafv2:AssociateWebACL")
    })
    .await;
    // ... and then the load balancer is back, behind it.
    iam.put_role_policy()
        .role_name(&role_name)
        .policy_name("lbc")
        .policy_document(
            serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Action": ["elasticloadbalancing:CreateLoadBalancer", "wafv2:AssociateWebACL"],
                "Resource": "*"}]})
            .to_string(),
        )
        .send()
        .await
        .unwrap();
    eventually(30, "the Ingress was not served behind its web ACL", address).await;

    // An Ingress of another class is not this controller's: nothing serves
    // it here, and its address goes.
    let other: serde_json::Value = serde_json::json!({"spec": {"ingressClassName": "nginx"}});
    ingresses
        .patch("ralph", &PatchParams::default(), &Patch::Merge(&other))
        .await
        .unwrap();
    eventually(
        20,
        "an nginx-class Ingress was served with no controller",
        || {
            let address = address();
            async move { address.await.is_none().then_some(()) }
        },
    )
    .await;
    nss.delete(&ns, &Default::default()).await.unwrap();
}

/// The local Cloud Storage refuses what Google's does: a bucket name held by
/// anyone (names are global), a name outside the rules, deleting a bucket
/// that holds objects, deleting an object its bucket's retention policy
/// still holds, composing more than 32 objects; and a download is the
/// object's bytes.
#[test]
fn local_cloud_storage_refuses_what_google_refuses() {
    let pid = std::process::id();
    let bucket = format!("lcs-{pid}");
    let answered = |(c, e): (u16, serde_json::Value), code: u16, words: &str| {
        assert_eq!(c, code, "{e}");
        let message = e["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{e}");
    };
    let body = serde_json::json!({"name": bucket, "location": "europe-west1",
        "retentionPolicy": {"retentionPeriod": "3600"}});
    let (code, b) = gcp_post(&format!("/storage/v1/b?project=lcs-a-{pid}"), body.clone());
    assert_eq!(code, 200, "{b}");
    assert_eq!(b["location"], "EUROPE-WEST1");
    answered(
        gcp_post(&format!("/storage/v1/b?project=lcs-b-{pid}"), body),
        409,
        "not available",
    );
    answered(
        gcp_post(
            &format!("/storage/v1/b?project=lcs-a-{pid}"),
            serde_json::json!({"name": "Not_A-Bucket!"}),
        ),
        400,
        "Invalid bucket name",
    );
    let upload = |name: &str, bytes: &[u8]| {
        ureq::post(&format!(
            "{}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}",
            common::gcp_endpoint(),
            name.replace('/', "%2F")
        ))
        .send_bytes(bytes)
        .unwrap();
    };
    upload("a/one", b"first ");
    upload("a/two", b"second");
    let (code, o) = gcp_post(
        &format!("/storage/v1/b/{bucket}/o/a%2Fboth/compose"),
        serde_json::json!({"sourceObjects": [{"name": "a/one"}, {"name": "a/two"}]}),
    );
    assert_eq!(code, 200, "{o}");
    let bytes = ureq::get(&format!(
        "{}/storage/v1/b/{bucket}/o/a%2Fboth?alt=media",
        common::gcp_endpoint()
    ))
    .call()
    .unwrap()
    .into_string()
    .unwrap();
    assert_eq!(bytes, "first second");
    let many: Vec<serde_json::Value> = (0..33)
        .map(|_| serde_json::json!({"name": "a/one"}))
        .collect();
    answered(
        gcp_post(
            &format!("/storage/v1/b/{bucket}/o/a%2Fmany/compose"),
            serde_json::json!({"sourceObjects": many}),
        ),
        400,
        "exceeds the maximum (32)",
    );
    answered(
        gcp_call("DELETE", &format!("/storage/v1/b/{bucket}/o/a%2Fone"), None),
        403,
        "retention policy",
    );
    answered(
        gcp_call("DELETE", &format!("/storage/v1/b/{bucket}"), None),
        409,
        "not empty",
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn local_elasticache_rotates_an_auth_token_as_elasticache_does() {
    let name = format!("lcra{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let ec = aws_sdk_elasticache::Client::new(&sdk(&w).await);
    let (old, new) = ("old-token-0123456789", "new-token-0123456789");
    let available = |id: String| {
        let ec = ec.clone();
        async move {
            for _ in 0..200 {
                let g = ec
                    .describe_replication_groups()
                    .replication_group_id(&id)
                    .send()
                    .await
                    .unwrap();
                if g.replication_groups()[0].status() == Some("available") {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{id} never became available");
        }
    };
    let group = |id: &str, tls: bool| {
        ec.create_replication_group()
            .replication_group_id(id)
            .replication_group_description("rotation")
            .engine("redis")
            .cache_node_type("cache.t3.micro")
            .num_cache_clusters(1)
            .transit_encryption_enabled(tls)
            .set_auth_token(tls.then(|| old.to_string()))
            .send()
    };
    let modify = |id: &str, token: &str, strategy: &str| {
        ec.modify_replication_group()
            .replication_group_id(id)
            .apply_immediately(true)
            .auth_token(token)
            .auth_token_update_strategy(strategy.into())
            .send()
    };
    let code = |e: aws_sdk_elasticache::error::SdkError<
        aws_sdk_elasticache::operation::modify_replication_group::ModifyReplicationGroupError,
    >| {
        e.into_service_error()
            .meta()
            .code()
            .unwrap_or_default()
            .to_string()
    };

    let id = format!("{name}-tls");
    group(&id, true).await.unwrap();
    available(id.clone()).await;
    let port = common::group_redis_port(&id);
    assert_eq!(common::redis_ping(&port, old), "PONG");

    // ROTATE: a second change waits for the first (asked at once: the
    // local group is `modifying` for a scaled-down moment); both tokens get in.
    modify(&id, new, "ROTATE").await.unwrap();
    let busy = modify(&id, new, "SET").await.unwrap_err();
    assert_eq!(code(busy), "InvalidReplicationGroupState");
    assert_eq!(common::redis_ping(&port, old), "PONG");
    assert_eq!(common::redis_ping(&port, new), "PONG");
    // SET: only the new one.
    available(id.clone()).await;
    modify(&id, new, "SET").await.unwrap();
    assert!(
        common::redis_ping(&port, old).contains("WRONGPASS"),
        "{}",
        common::redis_ping(&port, old)
    );
    assert_eq!(common::redis_ping(&port, new), "PONG");
    // A token without its strategy, or on a group without TLS, is refused.
    available(id.clone()).await;
    let lone = ec
        .modify_replication_group()
        .replication_group_id(&id)
        .apply_immediately(true)
        .auth_token(new)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(lone), "InvalidParameterCombination");
    let plain = format!("{name}-plain");
    group(&plain, false).await.unwrap();
    available(plain.clone()).await;
    let err = modify(&plain, new, "ROTATE").await.unwrap_err();
    assert_eq!(code(err), "InvalidParameterCombination");
    for g in [id, plain] {
        let _ = ec
            .delete_replication_group()
            .replication_group_id(g)
            .send()
            .await;
    }
}

/// S3's conditional writes are decided and made as one step: of many PUTs
/// with `If-None-Match: *` to one key at the same moment, exactly one
/// succeeds and the rest get 412 (the state lock on S3 rests on it; moto
/// checked, then wrote, so two could win).
#[tokio::test(flavor = "multi_thread")]
async fn local_s3_lets_one_of_simultaneous_conditional_writes_win() {
    let name = format!("lcs3{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk(&w).await)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket(&name).send().await.unwrap();
    for round in 0..5 {
        let key = format!("lock-{round}.json");
        let mut puts = tokio::task::JoinSet::new();
        for i in 0..12 {
            let put = s3
                .put_object()
                .bucket(&name)
                .key(&key)
                .if_none_match("*")
                .body(aws_sdk_s3::primitives::ByteStream::from(
                    format!("holder {i}").into_bytes(),
                ));
            puts.spawn(async move { put.send().await.is_ok() });
        }
        let won = puts.join_all().await.into_iter().filter(|ok| *ok).count();
        assert_eq!(won, 1, "round {round}: {won} writers won one key");
    }
}
