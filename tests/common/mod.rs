//! Shared helpers for integration tests: run the real binary against the
//! local cloud that scripts/test starts (moto), with a private state dir.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_ralph-deploy");

/// The moto endpoint started by scripts/test.
pub fn aws_endpoint() -> String {
    std::env::var("RALPH_TEST_AWS_ENDPOINT").expect(
        "RALPH_TEST_AWS_ENDPOINT is not set: run the tests with scripts/test, which starts the local cloud",
    )
}

/// The checkout under test. Read at run time (cargo sets it for test
/// processes): the compile-time value can name another clone when a shared
/// target directory reuses a test binary built there.
pub fn repo() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A client of the local Kubernetes that scripts/test starts.
pub async fn kube_client() -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let path = std::env::var("RALPH_TEST_KUBECONFIG").expect(
        "RALPH_TEST_KUBECONFIG is not set: run the tests with scripts/test, which starts the local Kubernetes",
    );
    let kc = kube::config::Kubeconfig::read_from(path).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(cfg).unwrap()
}

/// The local PostgreSQL server started by scripts/test (no database part).
pub fn pg_server() -> String {
    std::env::var("RALPH_TEST_PG_URL").expect(
        "RALPH_TEST_PG_URL is not set: run the tests with scripts/test, which starts PostgreSQL",
    )
}

/// `status` of a deployed stack: every check healthy (the backup's age
/// aside), and the pods' own
/// DATABASE_URL and REDIS_URL checked through the cluster (their stores'
/// names resolve for pods only, as in a VPC); then no proxy pod of those
/// stores is left once the command has ended. Returns the report.
pub async fn healthy_through_the_cluster(w: &World) -> serde_json::Value {
    use k8s_openapi::api::core::v1::Pod;
    let out = w.run("status", &["--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)));
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "status: {report:#}"
    );
    let mut stores = Vec::new();
    for service in report["services"].as_array().unwrap() {
        for c in service["checks"].as_array().unwrap() {
            // The age of the latest backup is not this helper's business.
            if c["check"] == "backup" {
                continue;
            }
            assert_eq!(c["healthy"], true, "{c:#}");
            if c["check"] == "database" || c["check"] == "redis" {
                let target = c["target"].as_str().unwrap();
                assert!(target.ends_with(" (through the cluster)"), "{c:#}");
                let url =
                    url::Url::parse(target.trim_end_matches(" (through the cluster)")).unwrap();
                stores.push(format!(
                    "{}:{}",
                    url.host_str().unwrap(),
                    url.port()
                        .unwrap_or(if c["check"] == "database" { 5432 } else { 6379 })
                ));
            }
        }
    }
    assert_eq!(stores.len(), 2, "{report:#}");
    let pods = kube::api::Api::<Pod>::namespaced(kube_client().await, "ralph-deploy");
    let mut left = Vec::new();
    for _ in 0..40 {
        left = pods
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| {
                let target = p
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("ralph-deploy/target"))
                    .cloned()
                    .unwrap_or_default();
                stores.contains(&target)
            })
            .filter_map(|p| p.metadata.name)
            .collect::<Vec<_>>();
        if left.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(left.is_empty(), "proxy pods left after status: {left:?}");
    report
}

/// An empty database `name` on the local server (dropped first if a test
/// run before left it); returns its url.
pub async fn fresh_database(name: &str) -> String {
    use sqlx::Connection;
    let pg = pg_server();
    let mut admin = sqlx::PgConnection::connect(&format!("{pg}/postgres"))
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .unwrap();
    format!("{pg}/{name}")
}

/// One test's world: a temp dir with its own stack file and state.
pub struct World {
    pub dir: tempfile::TempDir,
    pub stack_name: String,
    pub endpoint: String,
    /// Extra environment for every command (RALPH_DEPLOY_VAR_..., keys).
    pub env: Vec<(String, String)>,
}

impl World {
    /// Copies `stacks/<file>` with the stack renamed to `name`.
    /// A copy of `stacks/FILE` (or of FILE relative to the repository when
    /// it has a `/`) named `name`, with paths pointing into the repository.
    pub fn from_stack(file: &str, name: &str) -> World {
        let path = if file.contains('/') {
            repo().join(file)
        } else {
            repo().join("stacks").join(file)
        };
        let text = std::fs::read_to_string(path).unwrap();
        let first_name = text
            .lines()
            .find(|l| l.starts_with("name: "))
            .expect("stack has a name line")
            .to_string();
        let text = text.replacen(&first_name, &format!("name: {name}"), 1);
        // The copy lives elsewhere: point it at the repository's migrations.
        let text = text.replace(
            "directory: ../migrations",
            &format!("directory: {}", repo().join("migrations").display()),
        );
        // And at the repository's add-on manifests.
        let text = text.replace(
            "files: [../addons/",
            &format!("files: [{}/", repo().join("addons").display()),
        );
        // And at the repository's components.
        let text = text.replace(
            "source: ../components/",
            &format!("source: {}/", repo().join("components").display()),
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("stack.yaml"), &text).unwrap();
        // Stacks that deploy the orchestrator do it on the local cluster,
        // in a namespace of the test's own.
        let mut env = Vec::new();
        // A stack that makes its EKS cluster reaches it as on AWS: the local
        // EKS reports the local API server as its endpoint, which takes EKS
        // tokens for their lifetime only. Others get the kubeconfig.
        if let Ok(kubeconfig) = std::env::var("RALPH_TEST_KUBECONFIG") {
            if !text.contains("kind: aws.eks_cluster") {
                env.push(("RALPH_DEPLOY_VAR_kubeconfig".to_string(), kubeconfig));
            }
        }
        env.push(("RALPH_DEPLOY_VAR_namespace".to_string(), name.to_string()));
        // The cluster's own add-ons (the cluster autoscaler) too: every test
        // shares one API server.
        if text.contains("\n  system_namespace:") {
            env.push((
                "RALPH_DEPLOY_VAR_system_namespace".to_string(),
                format!("{name}-system"),
            ));
        }
        if text.contains("\n  logging_namespace:") {
            env.push((
                "RALPH_DEPLOY_VAR_logging_namespace".to_string(),
                format!("{name}-logging"),
            ));
        }
        // Cluster-wide objects of the AWS stack's edge (the load balancer
        // controller's CRDs and IngressClass) have one owner per cluster,
        // and worlds run side by side in one: none of them installs them,
        // unless a test that is alone says otherwise.
        if text.contains("\n  lb_controller_crds:") {
            env.push((
                "RALPH_DEPLOY_VAR_lb_controller_crds".to_string(),
                "false".to_string(),
            ));
        }
        // The production stacks leave the API endpoint's ranges to the user
        // (their placeholder is refused): the local cloud opens them.
        if text.contains("\n  api_allowed_cidrs:") {
            env.push((
                "RALPH_DEPLOY_VAR_api_allowed_cidrs".to_string(),
                "[\"0.0.0.0/0\"]".to_string(),
            ));
        }
        // Database roles are server-wide and every test shares one server:
        // each world logs in as a role of its own, with ralph_app's rights.
        if text.contains("\n  app_role:") {
            env.push((
                "RALPH_DEPLOY_VAR_app_role".to_string(),
                format!("app_{}", name.replace('-', "_")),
            ));
            env.push((
                "RALPH_DEPLOY_VAR_app_role_member_of".to_string(),
                "[\"ralph_app\"]".to_string(),
            ));
        }
        // The production stack's add-ons are upstream releases by URL: the
        // local cluster runs no containers (their webhooks could not
        // answer) and there is no network. None, unless a test sets some.
        // (A variable the stack does not declare is ignored.)
        env.push((
            "RALPH_DEPLOY_VAR_cluster_addons".to_string(),
            "{}".to_string(),
        ));
        // Google Cloud stacks reach the test double through the endpoint
        // setting a user has; each world is a project of its own.
        // A Google Cloud stack without the double would go to Google's own
        // endpoints: that is a set-up error, never a fallback.
        let uses_gcp = text.contains("kind: gcp.") || text.contains("\n  gcp:");
        let gcp = if uses_gcp {
            Some(gcp_endpoint())
        } else {
            std::env::var("RALPH_TEST_GCP_ENDPOINT").ok()
        };
        if let Some(gcp) = gcp {
            env.push(("RALPH_DEPLOY_GCP_ENDPOINT".to_string(), gcp));
            env.push(("RALPH_DEPLOY_VAR_project".to_string(), name.to_string()));
        }
        World {
            dir,
            stack_name: name.to_string(),
            endpoint: aws_endpoint(),
            env,
        }
    }

    /// Replaces the stack file with another one, prepared the same way;
    /// the settings the other stack needs that this world lacks are added.
    pub fn replace_stack(&mut self, file: &str) {
        let other = World::from_stack(file, &self.stack_name);
        std::fs::copy(other.stack(), self.stack()).unwrap();
        for (k, v) in other.env {
            if !self.env.iter().any(|(have, _)| *have == k) {
                self.env.push((k, v));
            }
        }
    }

    pub fn stack(&self) -> PathBuf {
        self.dir.path().join("stack.yaml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn edit(&self, from: &str, to: &str) {
        let p = self.stack();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains(from), "stack has no `{from}`");
        std::fs::write(&p, text.replacen(from, to, 1)).unwrap();
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        self.cmd_at(&self.endpoint, args)
    }

    pub fn cmd_at(&self, endpoint: &str, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .env("AWS_ENDPOINT_URL", endpoint)
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE")
            .env("RALPH_DEPLOY_STATE_DIR", self.state_dir())
            .current_dir(self.dir.path());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    /// Runs `ralph-deploy <verb> <stack> --env production <extra...>`.
    pub fn run(&self, verb: &str, extra: &[&str]) -> Output {
        let stack = self.stack();
        let mut args = vec![verb, stack.to_str().unwrap(), "--env", "production"];
        args.extend_from_slice(extra);
        self.cmd(&args).output().unwrap()
    }

    pub fn ok(&self, verb: &str, extra: &[&str]) -> String {
        let out = self.run(verb, extra);
        assert!(
            out.status.success(),
            "{verb} failed: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        text(&out.stdout)
    }

    /// `plan --json` as a value.
    pub fn plan_json(&self, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["--json"];
        args.extend_from_slice(extra);
        let out = self.ok("plan", &args);
        serde_json::from_str(&out).unwrap()
    }

    /// Makes the S3 bucket `name` in the world's account (a state store).
    pub async fn s3_bucket(&self, name: &str) {
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&self.aws_conf().await)
                .force_path_style(true)
                .build(),
        );
        s3.create_bucket().bucket(name).send().await.unwrap();
    }

    /// SDK settings that reach this world's local AWS.
    pub async fn aws_conf(&self) -> aws_config::SdkConfig {
        ralph_core::remote::aws_defaults()
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                self.access_key_id(),
                "testing",
                None,
                None,
                "test",
            ))
            .load()
            .await
    }

    pub async fn ec2(&self) -> aws_sdk_ec2::Client {
        let conf = self.aws_conf().await;
        aws_sdk_ec2::Client::new(&conf)
    }

    /// Everything in the cloud tagged with this test's stack, as (type, id).
    pub async fn tagged(&self) -> Vec<(String, String)> {
        let ec2 = self.ec2().await;
        let f = || {
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:ralph-deploy:stack")
                .values(&self.stack_name)
                .build()
        };
        let mut out = Vec::new();
        for v in ec2
            .describe_vpcs()
            .filters(f())
            .send()
            .await
            .unwrap()
            .vpcs()
        {
            out.push(("vpc".into(), v.vpc_id().unwrap().to_string()));
        }
        for s in ec2
            .describe_subnets()
            .filters(f())
            .send()
            .await
            .unwrap()
            .subnets()
        {
            out.push(("subnet".into(), s.subnet_id().unwrap().to_string()));
        }
        for g in ec2
            .describe_internet_gateways()
            .filters(f())
            .send()
            .await
            .unwrap()
            .internet_gateways()
        {
            out.push(("igw".into(), g.internet_gateway_id().unwrap().to_string()));
        }
        for g in ec2
            .describe_nat_gateways()
            .filter(f())
            .send()
            .await
            .unwrap()
            .nat_gateways()
        {
            // moto ignores tag filters on NAT gateways: check the tag here.
            let ours = g.tags().iter().any(|t| {
                t.key() == Some("ralph-deploy:stack") && t.value() == Some(self.stack_name.as_str())
            });
            let state = g
                .state()
                .map(|s| s.as_str().to_string())
                .unwrap_or_default();
            if ours && state != "deleted" {
                out.push(("nat".into(), g.nat_gateway_id().unwrap().to_string()));
            }
        }
        for a in ec2
            .describe_addresses()
            .filters(f())
            .send()
            .await
            .unwrap()
            .addresses()
        {
            out.push(("eip".into(), a.allocation_id().unwrap().to_string()));
        }
        for t in ec2
            .describe_route_tables()
            .filters(f())
            .send()
            .await
            .unwrap()
            .route_tables()
        {
            out.push(("rtb".into(), t.route_table_id().unwrap().to_string()));
        }
        for g in ec2
            .describe_security_groups()
            .filters(f())
            .send()
            .await
            .unwrap()
            .security_groups()
        {
            out.push(("sg".into(), g.group_id().unwrap().to_string()));
        }
        out
    }
}

impl World {
    /// The access key this world's commands sign with (a fault-proxy lane
    /// is chosen by it).
    pub fn access_key_id(&self) -> String {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == "AWS_ACCESS_KEY_ID")
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| "testing".into())
    }

    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        let w = self;
        ralph_core::remote::aws_defaults()
            .endpoint_url(&w.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                self.access_key_id(),
                "testing",
                None,
                None,
                "test",
            ))
            .load()
            .await
    }

    /// Everything outside EC2 that carries this stack's ownership tag (or,
    /// for buckets and roles, this stack's name), as "kind id".
    pub async fn tagged_beyond_ec2(&self) -> Vec<String> {
        let w = self;
        let c = self.sdk_config().await;
        let ours = |k: Option<&str>, v: Option<&str>| {
            k == Some("ralph-deploy:stack") && v == Some(w.stack_name.as_str())
        };
        let mut found = Vec::new();
        let rds = aws_sdk_rds::Client::new(&c);
        for d in rds
            .describe_db_instances()
            .send()
            .await
            .unwrap()
            .db_instances()
        {
            if d.tag_list().iter().any(|t| ours(t.key(), t.value())) {
                found.push(format!(
                    "rds {}",
                    d.db_instance_identifier().unwrap_or_default()
                ));
            }
        }
        let ec = aws_sdk_elasticache::Client::new(&c);
        for g in ec
            .describe_replication_groups()
            .send()
            .await
            .unwrap()
            .replication_groups()
        {
            let tags = ec
                .list_tags_for_resource()
                .resource_name(g.arn().unwrap_or_default())
                .send()
                .await
                .unwrap();
            if tags.tag_list().iter().any(|t| ours(t.key(), t.value())) {
                found.push(format!(
                    "redis {}",
                    g.replication_group_id().unwrap_or_default()
                ));
            }
        }
        let sm = aws_sdk_secretsmanager::Client::new(&c);
        for s in sm.list_secrets().send().await.unwrap().secret_list() {
            if s.deleted_date().is_none() && s.tags().iter().any(|t| ours(t.key(), t.value())) {
                found.push(format!("secret {}", s.name().unwrap_or_default()));
            }
        }
        let eks = aws_sdk_eks::Client::new(&c);
        for name in eks.list_clusters().send().await.unwrap().clusters() {
            if let Ok(d) = eks.describe_cluster().name(name).send().await {
                let tags = d
                    .cluster()
                    .and_then(|c| c.tags())
                    .cloned()
                    .unwrap_or_default();
                if tags.get("ralph-deploy:stack").map(String::as_str) == Some(w.stack_name.as_str())
                {
                    found.push(format!("eks {name}"));
                }
            }
        }
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&c)
                .force_path_style(true)
                .build(),
        );
        for b in s3.list_buckets().send().await.unwrap().buckets() {
            let name = b.name().unwrap_or_default();
            if name.starts_with(&w.stack_name) {
                found.push(format!("bucket {name}"));
            }
        }
        let iam = aws_sdk_iam::Client::new(&c);
        for r in iam.list_roles().send().await.unwrap().roles() {
            if r.role_name().starts_with(&w.stack_name) {
                found.push(format!("role {}", r.role_name()));
            }
        }
        found
    }
}

/// The world's recorded state for `production`, or `{}` when there is none.
pub fn state_json(w: &World) -> serde_json::Value {
    // A shared store: read it as a user would.
    if w.env.iter().any(|(k, _)| k == "RALPH_DEPLOY_STATE") {
        let stack = w.stack();
        let out = w
            .cmd(&[
                "state",
                "pull",
                stack.to_str().unwrap(),
                "--env",
                "production",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "state pull failed: {}",
            text(&out.stderr)
        );
        return serde_json::from_slice(&out.stdout).unwrap_or_else(|_| serde_json::json!({}));
    }
    let p = w
        .state_dir()
        .join(&w.stack_name)
        .join("production")
        .join("state.json");
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|_| "{}".into())).unwrap()
}

/// Every how many kill points a process-level kill test visits by default.
pub const KILL_STRIDE: u64 = 3;

/// The kill points (the k-th mutating request, 1-based) that a kill test
/// against the local cloud visits of the `total` an uninterrupted run makes.
///
/// `RALPH_TEST_KILL_POINTS=all` visits every one: `.ci/run` sets it, so every
/// landing is checked at every point. Otherwise (a developer's
/// `scripts/test`) every third point is visited, plus the first and the
/// last, from an offset that moves each day, so that three days' runs cover
/// them all; `RALPH_TEST_KILL_OFFSET=N` repeats a given run. What is skipped
/// here is still covered on every run in-process: the engine's kill test
/// (`ralph-engine`'s testing module) kills after every driver call.
pub fn kill_points(total: u64) -> Vec<u64> {
    match std::env::var("RALPH_TEST_KILL_POINTS").as_deref() {
        Ok("all") => return (1..=total).collect(),
        Ok("") | Err(_) => {}
        Ok(other) => panic!(
            "RALPH_TEST_KILL_POINTS={other}: set it to `all` to visit every kill point, \
             or leave it unset for every {KILL_STRIDE}rd"
        ),
    }
    let offset = match std::env::var("RALPH_TEST_KILL_OFFSET") {
        Ok(v) => v.trim().parse::<u64>().unwrap_or_else(|_| {
            panic!(
                "RALPH_TEST_KILL_OFFSET={v}: a whole number (0 to {})",
                KILL_STRIDE - 1
            )
        }),
        Err(_) => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs();
            secs / 86_400
        }
    } % KILL_STRIDE;
    let points: Vec<u64> = (1..=total)
        .filter(|k| k % KILL_STRIDE == offset || *k == 1 || *k == total)
        .collect();
    eprintln!(
        "kill points: {} of {total} (every {KILL_STRIDE}rd, offset {offset}: \
         RALPH_TEST_KILL_OFFSET={offset} repeats this run, RALPH_TEST_KILL_POINTS=all visits every one)",
        points.len()
    );
    points
}

/// Runs `ralph-deploy ARGS` in the world through a shell that writes its
/// pid to `pidfile` before exec, so the fault proxy can SIGKILL it after the
/// k-th mutating request; returns how it ended.
pub fn run_to_be_killed(w: &World, pidfile: &Path, args: &str) -> std::process::ExitStatus {
    let mut sh = Command::new("sh");
    sh.args([
        "-c",
        &format!("echo $$ > {}; exec {BIN} {args}", pidfile.display()),
    ]);
    for (k, v) in w.cmd(&[]).get_envs() {
        if let Some(v) = v {
            sh.env(k, v);
        }
    }
    sh.env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(w.dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
}

/// A plan's changes (address, action), no-ops left out.
pub fn changed(plan: &serde_json::Value) -> Vec<(String, String)> {
    plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] != "no_op")
        .map(|c| {
            (
                c["address"].as_str().unwrap().to_string(),
                c["action"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The Google Cloud test double started by scripts/test.
pub fn gcp_endpoint() -> String {
    std::env::var("RALPH_TEST_GCP_ENDPOINT").expect(
        "RALPH_TEST_GCP_ENDPOINT is not set: run the tests with scripts/test, which starts the Google Cloud test double",
    )
}

/// A GET on the Google Cloud test double, as JSON (`None` on 404).
/// Deletes a Cloud SQL instance of the local Google Cloud as its operator
/// would (its deletion protection lifted first) and waits until it is gone.
pub fn gcp_delete_sql_instance(project: &str, instance: &str) {
    let url = format!(
        "{}/v1/projects/{project}/instances/{instance}",
        gcp_endpoint()
    );
    ureq::request("PATCH", &url)
        .send_string(r#"{"settings": {"deletionProtectionEnabled": false}}"#)
        .unwrap();
    let pause = || std::thread::sleep(std::time::Duration::from_millis(50));
    // Once the PATCH's operation is done, and then the delete's.
    let deleted = (0..200).any(|_| {
        pause();
        ureq::delete(&url).call().is_ok()
    });
    assert!(deleted, "{url} could not be deleted");
    let gone = (0..200).any(|_| {
        pause();
        matches!(ureq::get(&url).call(), Err(ureq::Error::Status(404, _)))
    });
    assert!(gone, "{url} is still there");
}

pub fn gcp_get(path: &str) -> Option<serde_json::Value> {
    match ureq::get(&format!("{}{path}", gcp_endpoint())).call() {
        Ok(r) => Some(serde_json::from_str(&r.into_string().unwrap()).unwrap()),
        Err(ureq::Error::Status(404, _)) => None,
        Err(e) => panic!("GET {path}: {e}"),
    }
}

/// Requests the double has answered so far for one project, by type
/// (`requests`, `lists`, `gets`, `mutations`).
pub fn gcp_requests(project: &str) -> serde_json::Value {
    gcp_get(&format!("/__double/stats?project={project}")).unwrap()
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A TCP proxy in front of the local cloud that holds every new connection
/// for `delay` before passing it on, and counts connections. moto closes the
/// connection after each response, so this delays (and counts) requests.
pub struct SlowProxy {
    pub endpoint: String,
    pub connections: Arc<AtomicU64>,
    /// While false, new connections are closed at once (the service looks
    /// down); connections already open go on.
    pub up: Arc<std::sync::atomic::AtomicBool>,
}

impl SlowProxy {
    pub fn start(upstream: &str, delay: Duration) -> SlowProxy {
        let upstream = upstream.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicU64::new(0));
        let counter = connections.clone();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let serving = up.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if !serving.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                counter.fetch_add(1, Ordering::SeqCst);
                let upstream = upstream.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(delay);
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        return;
                    };
                    pipe(client, server);
                });
            }
        });
        SlowProxy {
            endpoint,
            connections,
            up,
        }
    }

    pub fn count(&self) -> u64 {
        self.connections.load(Ordering::SeqCst)
    }

    /// Takes the service behind the proxy down (`false`) or up again.
    pub fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::SeqCst);
    }

    pub fn port(&self) -> u16 {
        self.endpoint.rsplit(':').next().unwrap().parse().unwrap()
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (mut a2, mut b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    let t = std::thread::spawn(move || copy(&mut a2, &mut b2));
    let (mut a, mut b) = (a, b);
    copy(&mut b, &mut a);
    let _ = t.join();
}

fn copy(from: &mut TcpStream, to: &mut TcpStream) {
    let mut buf = [0u8; 16384];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = to.shutdown(std::net::Shutdown::Write);
                return;
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

pub fn wait_for_file(p: &Path, timeout: Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if p.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// What is wrong with `v` under the JSON Schema `s` (the subset the event
/// schema uses: type, const, enum, required, properties,
/// additionalProperties, items, prefixItems, oneOf, minimum, $ref to $defs).
pub fn schema_problems(
    root: &serde_json::Value,
    s: &serde_json::Value,
    v: &serde_json::Value,
    at: &str,
) -> Vec<String> {
    use serde_json::Value;
    let mut out = Vec::new();
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        return schema_problems(root, &root["$defs"][name], v, at);
    }
    if let Some(c) = s.get("const") {
        if c != v {
            out.push(format!("{at}: {v} is not {c}"));
        }
    }
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        if !e.contains(v) {
            out.push(format!(
                "{at}: {v} is not one of {}",
                Value::Array(e.clone())
            ));
        }
    }
    if let Some(ty) = s.get("type").and_then(Value::as_str) {
        let ok = match ty {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            _ => true,
        };
        if !ok {
            out.push(format!("{at}: {v} is not of type {ty}"));
            return out;
        }
    }
    if let (Some(min), Some(n)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < min {
            out.push(format!("{at}: {n} < {min}"));
        }
    }
    if let Some(one) = s.get("oneOf").and_then(Value::as_array) {
        let matching = one
            .iter()
            .filter(|o| schema_problems(root, o, v, at).is_empty())
            .count();
        if matching != 1 {
            out.push(format!(
                "{at}: {v} matches {matching} of the schema's alternatives, not exactly one"
            ));
        }
    }
    if let Some(m) = v.as_object() {
        for r in s
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !m.contains_key(r.as_str().unwrap_or_default()) {
                out.push(format!("{at}: `{r}` is missing"));
            }
        }
        let props = s.get("properties").and_then(Value::as_object);
        for (k, fv) in m {
            match props.and_then(|p| p.get(k)) {
                Some(ps) => out.extend(schema_problems(root, ps, fv, &format!("{at}.{k}"))),
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    out.push(format!("{at}.{k}: not in the schema"))
                }
                None => {}
            }
        }
    }
    if let Some(items) = v.as_array() {
        let prefix = s
            .get("prefixItems")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        for (i, item) in items.iter().enumerate() {
            match prefix.get(i) {
                Some(ps) => out.extend(schema_problems(root, ps, item, &format!("{at}[{i}]"))),
                None => match s.get("items") {
                    Some(Value::Bool(false)) => {
                        out.push(format!("{at}[{i}]: no more items allowed"))
                    }
                    Some(is) if is.is_object() => {
                        out.extend(schema_problems(root, is, item, &format!("{at}[{i}]")))
                    }
                    _ => {}
                },
            }
        }
    }
    out
}

/// Checks a JSON event stream (apply/destroy --json) against
/// schema/events.schema.json: every line validates, and the last one ends
/// the run (`summary` or `error`).
pub fn check_event_stream(stdout: &str) {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("schema/events.schema.json")).unwrap(),
    )
    .unwrap();
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "no events");
    let mut problems = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => problems.extend(schema_problems(
                &schema,
                &schema,
                &v,
                &format!("line {}", i + 1),
            )),
            Err(e) => problems.push(format!("line {}: not JSON: {e}", i + 1)),
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    let last: serde_json::Value = serde_json::from_str(lines[lines.len() - 1]).unwrap();
    assert!(
        last["event"] == "summary" || last["event"] == "error",
        "the stream ends with {last}"
    );
}

/// A VPC `10.N.0.0/16` with one /24 subnet per zone: (vpc id, subnet ids).
pub async fn vpc_with_subnets(
    ec2: &aws_sdk_ec2::Client,
    n: u8,
    zones: &[&str],
) -> (String, Vec<String>) {
    let vpc_id = ec2
        .create_vpc()
        .cidr_block(format!("10.{n}.0.0/16"))
        .send()
        .await
        .unwrap()
        .vpc()
        .unwrap()
        .vpc_id()
        .unwrap()
        .to_string();
    let mut subnets = vec![];
    for (i, zone) in zones.iter().enumerate() {
        let s = ec2
            .create_subnet()
            .vpc_id(&vpc_id)
            .cidr_block(format!("10.{n}.{}.0/24", i + 1))
            .availability_zone(*zone)
            .send()
            .await
            .unwrap();
        subnets.push(s.subnet().unwrap().subnet_id().unwrap().to_string());
    }
    (vpc_id, subnets)
}

/// The TLS port of the Redis behind the local ElastiCache group `id` (in
/// the run directory's stores, next to the kubeconfig).
pub fn group_redis_port(id: &str) -> String {
    let stores = std::path::PathBuf::from(
        std::env::var("RALPH_TEST_KUBECONFIG")
            .expect("RALPH_TEST_KUBECONFIG: run the tests with scripts/test"),
    )
    .parent()
    .unwrap()
    .join("stores");
    let conf = std::fs::read_dir(&stores)
        .unwrap()
        .filter_map(Result::ok)
        .find(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{id}-"))
        })
        .unwrap_or_else(|| panic!("no local Redis for group {id} in {}", stores.display()))
        .path()
        .join("redis.conf");
    std::fs::read_to_string(conf)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("tls-port ").map(str::to_string))
        .unwrap()
}

/// PING through `redis-cli` with `password`, over TLS (the local
/// ElastiCache's Redis takes any certificate's client): "PONG", or the
/// server's refusal.
pub fn redis_ping(port: &str, password: &str) -> String {
    let out = std::process::Command::new("redis-cli")
        .args([
            "--tls",
            "--insecure",
            "--no-auth-warning",
            "-p",
            port,
            "-a",
            password,
            "PING",
        ])
        .output()
        .expect("redis-cli (installed with redis-server)");
    format!("{}{}", text(&out.stdout), text(&out.stderr))
        .trim()
        .to_string()
}
