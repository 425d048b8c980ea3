//! The orchestrator on a real kube-apiserver and kube-controller-manager
//! (1.20.2, started by scripts/test with a node simulator that marks pods
//! ready, or not: image tags `broken*` cannot be pulled, `hang*` never get
//! ready). Secrets come from the local AWS (moto).

use crate::common;

use common::{text, World};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde::Deserialize;

fn kubeconfig() -> String {
    std::env::var("RALPH_TEST_KUBECONFIG").expect(
        "RALPH_TEST_KUBECONFIG is not set: run the tests with scripts/test, which starts the local Kubernetes",
    )
}

async fn client() -> kube::Client {
    common::kube_client().await
}

/// A name of its own per test run: the local cluster outlives a test's state.
fn unique(base: &str) -> String {
    format!("{base}-{}", std::process::id())
}

const API_KEY: &str = "sk-ant-test-0123456789abcdef";

/// The shipped kubernetes-app stack in namespace `name`, image `tag`.
fn world(name: &str, tag: &str) -> World {
    let mut w = World::from_stack("kubernetes-app.yaml", name);
    for (k, v) in [
        ("RALPH_DEPLOY_VAR_kubeconfig", kubeconfig()),
        ("RALPH_DEPLOY_VAR_namespace", name.to_string()),
        ("RALPH_DEPLOY_VAR_image_tag", tag.to_string()),
        // Room for a loaded machine (CI's streams): 8 s was too little for
        // three pods to become ready there. The tests of the deadline set
        // their own.
        ("RALPH_DEPLOY_VAR_progress_deadline", "60".to_string()),
        ("ANTHROPIC_API_KEY", API_KEY.to_string()),
    ] {
        w.env.push((k.to_string(), v));
    }
    w
}

fn set_var(w: &mut World, name: &str, value: &str) {
    let key = format!("RALPH_DEPLOY_VAR_{name}");
    w.env.retain(|(k, _)| k != &key);
    w.env.push((key, value.to_string()));
}

async fn deployment(ns: &str) -> Deployment {
    Api::<Deployment>::namespaced(client().await, ns)
        .get("ralph-orchestrator")
        .await
        .unwrap()
}

fn image_of(d: &Deployment) -> String {
    d.spec.template.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap()
}

fn available(d: &Deployment) -> i32 {
    d.status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0)
}

/// The orchestrator's change in a plan.
fn orchestrator_change(plan: &serde_json::Value) -> serde_json::Value {
    plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "orchestrator")
        .cloned()
        .unwrap_or_else(|| panic!("no orchestrator change in {plan}"))
}

/// The names of the attributes a planned change changes.
fn attribute_names(change: &serde_json::Value) -> Vec<&str> {
    change["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect()
}

fn exit_code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

async fn exists(api_version: &str, kind: &str, ns: &str, name: &str) -> bool {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let ar =
        kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(group, version, kind));
    Api::<DynamicObject>::namespaced_with(client().await, ns, &ar)
        .get_opt(name)
        .await
        .unwrap()
        .is_some()
}

fn state_text(w: &World) -> String {
    let mut all = String::new();
    for e in walk(&w.state_dir()) {
        all.push_str(&std::fs::read_to_string(e).unwrap_or_default());
    }
    all
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn first_deploy_creates_every_object_waits_until_available_and_keeps_secrets_out_of_state() {
    let ns = &unique("k-first");
    let w = world(ns, "1.0.0");
    let out = w.run("apply", &["--auto-approve"]);
    let all_output = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{all_output}");

    let d = deployment(ns).await;
    assert_eq!(image_of(&d), "ghcr.io/mikeyobrien/ralph-orchestrator:1.0.0");
    assert_eq!(
        available(&d),
        3,
        "the apply returned before the rollout was available"
    );
    let managers: Vec<String> = d
        .metadata
        .managed_fields
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(
        managers.contains(&"ralph-deploy".to_string()),
        "{managers:?}"
    );

    // Every object, at the API versions this 1.20 cluster serves.
    for (v, kind, name) in [
        ("v1", "ServiceAccount", "ralph-orchestrator"),
        ("v1", "ConfigMap", "ralph-orchestrator-config"),
        ("v1", "Secret", "ralph-orchestrator-secrets"),
        ("v1", "Service", "ralph-orchestrator"),
        (
            "networking.k8s.io/v1",
            "NetworkPolicy",
            "ralph-orchestrator",
        ),
        ("networking.k8s.io/v1", "Ingress", "ralph-orchestrator"),
        (
            "policy/v1beta1",
            "PodDisruptionBudget",
            "ralph-orchestrator",
        ),
        (
            "autoscaling/v2beta2",
            "HorizontalPodAutoscaler",
            "ralph-orchestrator",
        ),
        ("batch/v1beta1", "CronJob", "ralph-orchestrator-partitions"),
    ] {
        assert!(exists(v, kind, ns, name).await, "{kind} {name} missing");
    }
    let namespace = Api::<Namespace>::all(client().await).get(ns).await.unwrap();
    assert_eq!(
        namespace.metadata.labels.unwrap()["pod-security.kubernetes.io/enforce"],
        "restricted"
    );
    let cm = Api::<ConfigMap>::namespaced(client().await, ns)
        .get("ralph-orchestrator-config")
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["RALPH_AGENT"], "auto");

    // The Secret holds the values from Secrets Manager; state and output do not.
    let secret = Api::<Secret>::namespaced(client().await, ns)
        .get("ralph-orchestrator-secrets")
        .await
        .unwrap();
    let data = secret.data.unwrap();
    assert_eq!(
        String::from_utf8(data["ANTHROPIC_API_KEY"].0.clone()).unwrap(),
        API_KEY
    );
    let secret_key = String::from_utf8(data["SECRET_KEY"].0.clone()).unwrap();
    assert_eq!(secret_key.len(), 64, "32 random bytes as hex");
    let state = state_text(&w);
    for v in [API_KEY, secret_key.as_str()] {
        assert!(!state.contains(v), "a secret value is in the state");
        assert!(
            !all_output.contains(v),
            "a secret value is in the apply output"
        );
    }
    let render = w.ok("render", &[]);
    assert!(!render.contains(API_KEY) && !render.contains(&secret_key));

    // Nothing left to do.
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(
        exit_code(&out),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[tokio::test]
async fn image_changes_roll_out_and_a_broken_image_rolls_back_with_a_failing_exit() {
    let ns = &unique("k-rollout");
    let mut w = world(ns, "1.0.0");
    w.ok("apply", &["--auto-approve"]);

    set_var(&mut w, "image_tag", "1.1.0");
    w.ok("apply", &["--auto-approve"]);
    let d = deployment(ns).await;
    assert_eq!(image_of(&d), "ghcr.io/mikeyobrien/ralph-orchestrator:1.1.0");
    assert_eq!(available(&d), 3);

    set_var(&mut w, "image_tag", "broken-1.2.0");
    let out = w.run("apply", &["--auto-approve"]);
    let err = text(&out.stderr);
    assert_eq!(exit_code(&out), Some(1), "{err}");
    assert!(err.contains("ImagePullBackOff"), "{err}");
    assert!(
        err.contains("Rolled back to the last good release"),
        "{err}"
    );
    let d = deployment(ns).await;
    assert_eq!(image_of(&d), "ghcr.io/mikeyobrien/ralph-orchestrator:1.1.0");
    assert_eq!(available(&d), 3);
    // The plan still wants the broken release: the stack asks for it.
    let plan = w.plan_json(&[]);
    let change = &orchestrator_change(&plan);
    assert_eq!(change["action"], "update", "{plan}");
    assert_eq!(change["attributes"][0]["name"], "tag");
    assert_eq!(change["attributes"][0]["before"], "1.1.0");
}

#[tokio::test]
async fn a_rollout_past_its_progress_deadline_is_rolled_back() {
    let ns = &unique("k-deadline");
    let mut w = world(ns, "1.0.0");
    w.ok("apply", &["--auto-approve"]);
    set_var(&mut w, "image_tag", "hang-2.0.0");
    set_var(&mut w, "progress_deadline", "8");
    let started = std::time::Instant::now();
    let out = w.run("apply", &["--auto-approve"]);
    let err = text(&out.stderr);
    assert_eq!(exit_code(&out), Some(1), "{err}");
    assert!(err.contains("ProgressDeadlineExceeded"), "{err}");
    assert!(started.elapsed().as_secs() < 60, "the deadline is 8 s");
    let d = deployment(ns).await;
    assert_eq!(image_of(&d), "ghcr.io/mikeyobrien/ralph-orchestrator:1.0.0");
}

/// The local API server takes an EKS token for RALPH_SIM_EKS_TOKEN_SECONDS
/// after it was signed (20 s under scripts/test; 15 minutes on EKS). A
/// rollout that waits 30 s for its deadline must still read the cluster and
/// roll back afterwards: only a token made after the wait gets in.
#[tokio::test]
async fn a_wait_longer_than_an_eks_token_lives_still_reaches_the_cluster() {
    let endpoint = std::env::var("RALPH_TEST_KUBE_ENDPOINT")
        .expect("RALPH_TEST_KUBE_ENDPOINT is not set: run the tests with scripts/test");
    let ca = std::env::var("RALPH_TEST_KUBE_CA").expect("RALPH_TEST_KUBE_CA is not set");
    let ns = &unique("k-token");
    let mut w = world(ns, "1.0.0");
    // The cluster by its endpoint, CA and name, as EKS reports them: no
    // kubeconfig, an EKS token from the AWS credentials.
    set_var(&mut w, "kubeconfig", "");
    set_var(&mut w, "cluster_endpoint", &endpoint);
    set_var(&mut w, "cluster_ca", &ca);
    // An EKS cluster of the local AWS by that name: the local EKS judges a
    // token by the cluster it was signed for (its creator, the key the
    // tests use, gets in).
    let conf = w.aws_conf().await;
    let ec2 = aws_sdk_ec2::Client::new(&conf);
    let (_, subnets) = common::vpc_with_subnets(&ec2, 60, &["us-east-1a", "us-east-1b"]).await;
    let eks = aws_sdk_eks::Client::new(&conf);
    eks.create_cluster()
        .name(ns)
        .version("1.35")
        .role_arn("arn:aws:iam::123456789012:role/eks")
        .resources_vpc_config(
            aws_sdk_eks::types::VpcConfigRequest::builder()
                .set_subnet_ids(Some(subnets))
                .build(),
        )
        .send()
        .await
        .unwrap();
    set_var(&mut w, "eks_cluster", ns);
    w.ok("apply", &["--auto-approve"]);
    set_var(&mut w, "image_tag", "hang-2.0.0");
    set_var(&mut w, "progress_deadline", "30");
    let started = std::time::Instant::now();
    let out = w.run("apply", &["--auto-approve"]);
    let err = text(&out.stderr);
    assert!(
        started.elapsed().as_secs() >= 25,
        "the wait must outlive a 20 s token: {err}"
    );
    assert_eq!(exit_code(&out), Some(1), "{err}");
    assert!(err.contains("ProgressDeadlineExceeded"), "{err}");
    assert!(
        !err.contains("Unauthorized") && !err.contains("401"),
        "{err}"
    );
    let d = deployment(ns).await;
    assert_eq!(image_of(&d), "ghcr.io/mikeyobrien/ralph-orchestrator:1.0.0");
    // A token of 40 s ago is refused: the authenticator does judge age.
    let old = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import base64,datetime;t=(datetime.datetime.utcnow()-datetime.timedelta(seconds=40)).strftime('%Y%m%dT%H%M%SZ');\
             u='https://sts.us-east-1.amazonaws.com/?Action=GetCallerIdentity&X-Amz-Credential=testing%2Fx&X-Amz-Date='+t+'&X-Amz-Expires=60&X-Amz-SignedHeaders=host%3Bx-k8s-aws-id';\
             print('k8s-aws-v1.'+base64.urlsafe_b64encode(u.encode()).decode().rstrip('='))",
        )
        .output()
        .unwrap();
    let token = text(&old.stdout).trim().to_string();
    let status = std::process::Command::new("curl")
        .args(["-ks", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .arg(format!("{endpoint}/api/v1/namespaces/{ns}"))
        .output()
        .unwrap();
    assert_eq!(text(&status.stdout), "401");
    let _ = eks.delete_cluster().name(ns).send().await;
}

#[tokio::test]
async fn deploy_changes_only_the_image_and_rollback_returns_to_the_previous_release() {
    let ns = &unique("k-deploy");
    let w = world(ns, "1.0.0");
    w.ok("apply", &["--auto-approve"]);
    // A stack edit that `deploy` must not apply.
    w.edit("replicas: ${var.replicas}", "replicas: 4");

    // The JSON stream ends with a summary naming what was rolled out.
    let stream = w.ok("deploy", &["--image", "1.1.0", "--auto-approve", "--json"]);
    common::check_event_stream(&stream);
    let last: serde_json::Value = serde_json::from_str(stream.lines().last().unwrap()).unwrap();
    assert_eq!(last["event"], "summary", "{last}");
    assert_eq!(last["changes"], 1, "{last}");
    assert!(
        last["released"][0]["image"]
            .as_str()
            .unwrap()
            .ends_with(":1.1.0"),
        "{last}"
    );
    let d = deployment(ns).await;
    assert_eq!(image_of(&d), "ghcr.io/mikeyobrien/ralph-orchestrator:1.1.0");
    assert_eq!(
        d.spec.replicas,
        Some(3),
        "deploy applied more than the image"
    );
    assert_eq!(
        w.ok("output", &["image"]).trim(),
        "ghcr.io/mikeyobrien/ralph-orchestrator:1.1.0",
        "outputs follow a deploy"
    );

    let out = w.run(
        "deploy",
        &["--image", "broken-1.2.0", "--auto-approve", "--json"],
    );
    assert_eq!(exit_code(&out), Some(1), "{}", text(&out.stderr));
    let stream = text(&out.stdout);
    common::check_event_stream(&stream);
    let last: serde_json::Value = serde_json::from_str(stream.lines().last().unwrap()).unwrap();
    assert_eq!(last["failed"], 1, "{last}");
    assert!(last["released"][0]["error"].is_string(), "{last}");
    assert_eq!(
        image_of(&deployment(ns).await),
        "ghcr.io/mikeyobrien/ralph-orchestrator:1.1.0"
    );

    w.ok("rollback", &["--auto-approve"]);
    let d = deployment(ns).await;
    assert_eq!(image_of(&d), "ghcr.io/mikeyobrien/ralph-orchestrator:1.0.0");
    assert_eq!(available(&d), 3);
}

/// A release `deploy --image` rolled out stands until the stack changes
/// its own tag: someone's apply of an unrelated change does not roll it
/// back, and a new tag in the stack does roll out.
#[tokio::test]
async fn a_release_stands_until_the_stack_changes_its_own_tag() {
    let ns = &unique("k-stands");
    let mut w = world(ns, "1.0.0");
    w.ok("apply", &["--auto-approve"]);
    w.ok("deploy", &["--image", "1.1.0", "--auto-approve"]);
    let image = |tag: &str| format!("ghcr.io/mikeyobrien/ralph-orchestrator:{tag}");

    // The stack still says 1.0.0, as at its last apply: nothing to do, and
    // the plan says why it leaves 1.1.0 running.
    let out = w.run("plan", &["--detailed-exitcode"]);
    let shown = text(&out.stdout);
    assert_eq!(exit_code(&out), Some(0), "{shown}");
    assert!(
        shown.contains(
            r#"runs a release made by `deploy` or `rollback`: tag "1.1.0" (the stack says "1.0.0")"#
        ),
        "{shown}"
    );

    // An unrelated change, applied by someone else: the release stays.
    set_var(&mut w, "replicas", "4");
    let plan = w.plan_json(&[]);
    let change = &orchestrator_change(&plan);
    let names = attribute_names(&change);
    assert_eq!(names, ["replicas"], "{plan}");
    let held = serde_json::json!([{"name": "tag", "before": "1.1.0", "after": "1.0.0", "forces_replace": false}]);
    assert_eq!(change["release_holds"], held, "{plan}");
    w.ok("apply", &["--auto-approve"]);
    let d = deployment(ns).await;
    assert_eq!(
        image_of(&d),
        image("1.1.0"),
        "an apply rolled the release back"
    );
    assert_eq!(d.spec.replicas, Some(4));
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(exit_code(&out), Some(0), "{}", text(&out.stdout));
    assert_eq!(w.ok("output", &["image"]).trim(), image("1.1.0"));

    // A tag of the stack's own rolls out, from the release that runs.
    set_var(&mut w, "image_tag", "1.2.0");
    let plan = w.plan_json(&[]);
    let change = &orchestrator_change(&plan);
    let tag = change["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "tag")
        .cloned()
        .unwrap_or_else(|| panic!("no tag change in {plan}"));
    assert_eq!(tag["before"], "1.1.0", "{plan}");
    assert_eq!(tag["after"], "1.2.0", "{plan}");
    w.ok("apply", &["--auto-approve"]);
    assert_eq!(image_of(&deployment(ns).await), image("1.2.0"));

    // And a release after it stands over the stack's new tag in turn.
    w.ok("deploy", &["--image", "1.3.0", "--auto-approve"]);
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(exit_code(&out), Some(0), "{}", text(&out.stdout));
    w.ok("rollback", &["--auto-approve"]);
    assert_eq!(image_of(&deployment(ns).await), image("1.2.0"));
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(exit_code(&out), Some(0), "{}", text(&out.stdout));

    // A stack that catches up with a release takes it over: applied once
    // naming what runs, its next tag rolls out, even the one it had before.
    w.ok("deploy", &["--image", "1.4.0", "--auto-approve"]);
    set_var(&mut w, "image_tag", "1.4.0");
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(exit_code(&out), Some(0), "{}", text(&out.stdout));
    w.ok("apply", &["--auto-approve"]);
    set_var(&mut w, "image_tag", "1.2.0");
    let out = w.run("plan", &["--detailed-exitcode"]);
    let shown = text(&out.stdout);
    assert_eq!(exit_code(&out), Some(2), "{shown}");
    assert!(shown.contains(r#"tag = "1.4.0" -> "1.2.0""#), "{shown}");
    let applied = w.ok("apply", &["--auto-approve"]);
    assert_eq!(
        image_of(&deployment(ns).await),
        image("1.2.0"),
        "{shown}\n{applied}"
    );

    // A stack that moves to another repository rolls out its own image
    // and tag, and the plan shows both.
    w.ok("deploy", &["--image", "1.5.0", "--auto-approve"]);
    let mirror = "registry.example.com/ralph/orchestrator";
    set_var(&mut w, "image", mirror);
    let plan = w.plan_json(&[]);
    let change = &orchestrator_change(&plan);
    assert_eq!(attribute_names(change), ["image", "tag"], "{plan}");
    assert!(change.get("release_holds").is_none(), "{plan}");
    w.ok("apply", &["--auto-approve"]);
    assert_eq!(image_of(&deployment(ns).await), format!("{mirror}:1.2.0"));
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(exit_code(&out), Some(0), "{}", text(&out.stdout));
}

async fn scale(ns: &str, replicas: i32) {
    Api::<Deployment>::namespaced(client().await, ns)
        .patch(
            "ralph-orchestrator",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": replicas}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn replicas_scaled_by_hand_show_in_plan_and_apply_restores_them() {
    let ns = &unique("k-drift");
    let w = world(ns, "1.0.0");
    w.ok("apply", &["--auto-approve"]);

    // Within the autoscaler's range (3..=10) the count is the autoscaler's
    // business: no drift, and an apply keeps it.
    scale(ns, 6).await;
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(exit_code(&out), Some(0), "{}", text(&out.stdout));

    // Below the floor, by hand: drift, and apply restores the stack's count.
    scale(ns, 1).await;
    let plan = w.plan_json(&[]);
    let change = &orchestrator_change(&plan);
    assert_eq!(change["action"], "update", "{plan}");
    assert_eq!(change["attributes"][0]["name"], "replicas");
    assert_eq!(change["attributes"][0]["before"], 1);
    assert_eq!(change["attributes"][0]["after"], 3);
    w.ok("apply", &["--auto-approve"]);
    assert_eq!(deployment(ns).await.spec.replicas, Some(3));
}

#[tokio::test]
async fn objects_the_stack_drops_are_pruned_and_nothing_else_is_touched() {
    let ns = &unique("k-prune");
    let mut w = world(ns, "1.0.0");
    w.ok("apply", &["--auto-approve"]);
    // Made by hand in the same namespace: not ours.
    let hand = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("made-by-hand".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<ConfigMap>::namespaced(client().await, ns)
        .create(&PostParams::default(), &hand)
        .await
        .unwrap();

    set_var(&mut w, "ingress_host", "");
    w.edit(
        "replicas: ${var.replicas}",
        "replicas: ${var.replicas}\n      network_policy: false",
    );
    let plan = w.plan_json(&[]);
    assert_eq!(orchestrator_change(&plan)["action"], "update", "{plan}");
    let out = w.ok("apply", &["--auto-approve"]);
    let _ = out;
    assert!(!exists("networking.k8s.io/v1", "Ingress", ns, "ralph-orchestrator").await);
    assert!(
        !exists(
            "networking.k8s.io/v1",
            "NetworkPolicy",
            ns,
            "ralph-orchestrator"
        )
        .await
    );
    assert!(exists("v1", "Service", ns, "ralph-orchestrator").await);
    assert!(exists("v1", "ConfigMap", ns, "made-by-hand").await);
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(exit_code(&out), Some(0), "{}", text(&out.stdout));

    // Destroy removes the Deployment and the namespace the stack made.
    w.ok("destroy", &["--auto-approve"]);
    assert!(Api::<Namespace>::all(client().await)
        .get_opt(ns)
        .await
        .unwrap()
        .is_none());
}

#[test]
fn rendered_manifests_validate_against_the_kubernetes_1_28_schemas() {
    let validate = std::env::var("RALPH_TEST_KUBE_VALIDATE").expect(
        "RALPH_TEST_KUBE_VALIDATE is not set: run the tests with scripts/test, which installs kubernetes-validate",
    );
    let w = world(&unique("k-render"), "1.0.0");
    // With the Prometheus, Alertmanager and Grafana of `monitoring_install`.
    w.edit(
        "      ingress_host: ${var.ingress_host}\n",
        "      ingress_host: ${var.ingress_host}\n      monitoring_install: true\n      grafana_install: true\n      grafana_admin_secret: env:GRAFANA_ADMIN_PASSWORD\n",
    );
    let yaml = w.ok("render", &[]);
    for kind in [
        "Deployment",
        "Ingress",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "CronJob",
    ] {
        assert!(
            yaml.contains(&format!("kind: {kind}")),
            "{kind} not rendered"
        );
    }
    assert!(
        yaml.contains("apiVersion: autoscaling/v2\n"),
        "a current cluster gets autoscaling/v2"
    );
    assert!(
        yaml.contains("apiVersion: batch/v1\n"),
        "and batch/v1 CronJobs"
    );
    let file = w.dir.path().join("manifests.yaml");
    std::fs::write(&file, &yaml).unwrap();
    let out = std::process::Command::new(validate)
        .args(["-k", "1.28.0", "--strict"])
        .arg(&file)
        .output()
        .unwrap();
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{report}");
    // 14 objects, monitoring_install's ServiceAccount, two Deployments and
    // two Services, and Grafana's ConfigMap, Secret, Deployment and Service.
    assert_eq!(report.matches("passed").count(), 23, "{report}");
}

/// The alert rules and scrape config the stack renders (without the
/// Prometheus Operator: a ConfigMap with both files) pass promtool, which
/// does catch a broken rule.
#[test]
fn rendered_alert_rules_and_scrape_config_pass_promtool() {
    let w = world(&unique("k-prom"), "1.0.0");
    let yaml = w.ok("render", &[]);
    let mut files = None;
    for doc in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let v = serde_json::Value::deserialize(doc).unwrap();
        if v["kind"] == "ConfigMap" && v["metadata"]["name"] == "ralph-orchestrator-monitoring" {
            files = Some(v["data"].clone());
        }
    }
    let files = files.expect("no monitoring ConfigMap rendered");
    let dir = w.dir.path();
    for f in ["alerts.yml", "prometheus.yml", "alertmanager.yml"] {
        std::fs::write(dir.join(f), files[f].as_str().unwrap()).unwrap();
    }
    let rules = files["alerts.yml"].as_str().unwrap();
    for alert in [
        "HighErrorRate",
        "HighMemoryUsage",
        "LongRunningTask",
        "ErrorBudgetBurnFast",
        "ErrorBudgetBurnSlow",
        "LatencyP95High",
        "OrchestratorDown",
    ] {
        assert!(rules.contains(alert), "{rules}");
    }
    // No matcher on `pod`: DNS discovery never sets it.
    assert!(!rules.contains("pod="), "{rules}");
    let promtool = |args: &[&str]| {
        let out = std::process::Command::new("promtool")
            .args(args)
            .current_dir(dir)
            .output()
            .expect(
                "promtool is missing: scripts/setup.sh installs it (Debian package prometheus)",
            );
        (
            out.status.success(),
            format!("{}{}", text(&out.stdout), text(&out.stderr)),
        )
    };
    let (ok, report) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(ok && report.contains("7 rules found"), "{report}");
    let (ok, report) = promtool(&["check", "config", "prometheus.yml"]);
    assert!(ok, "{report}");
    let amtool = std::process::Command::new("amtool")
        .args(["check-config", "alertmanager.yml"])
        .current_dir(dir)
        .output()
        .expect("amtool is missing: scripts/setup.sh installs it (Debian package prometheus-alertmanager)");
    assert!(
        amtool.status.success(),
        "{}{}",
        text(&amtool.stdout),
        text(&amtool.stderr)
    );
    // The check is real: a rule that is not PromQL fails it.
    std::fs::write(dir.join("alerts.yml"), rules.replacen(" > ", " > > ", 1)).unwrap();
    let (ok, report) = promtool(&["check", "rules", "alerts.yml"]);
    assert!(!ok, "promtool took a broken rule: {report}");
}

#[tokio::test]
async fn a_deployment_of_another_stack_is_never_taken_over() {
    let ns = &unique("k-owner");
    let w = world(ns, "1.0.0");
    w.ok("apply", &["--auto-approve"]);
    let mut other = world(&unique("k-intruder"), "2.0.0");
    set_var(&mut other, "namespace", ns);
    let out = other.run("apply", &["--auto-approve"]);
    let err = text(&out.stderr);
    assert_eq!(exit_code(&out), Some(1), "{err}");
    assert!(err.contains(&format!("belongs to stack `{ns}`")), "{err}");
    assert_eq!(
        image_of(&deployment(ns).await),
        "ghcr.io/mikeyobrien/ralph-orchestrator:1.0.0"
    );
}

#[tokio::test]
async fn a_rollout_killed_midway_shows_in_plan_and_the_next_apply_settles_it() {
    let ns = &unique("k-killed");
    let mut w = world(ns, "1.0.0");
    set_var(&mut w, "progress_deadline", "600");
    w.ok("apply", &["--auto-approve"]);
    let stack = w.stack();
    let mut child = w
        .cmd(&[
            "deploy",
            stack.to_str().unwrap(),
            "--env",
            "production",
            "--image",
            "hang-9",
            "--auto-approve",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once the new release is on the cluster and being waited for.
    let mut seen = false;
    for _ in 0..100 {
        if image_of(&deployment(ns).await).ends_with(":hang-9") {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(seen, "the deploy never reached the cluster");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    child.kill().unwrap();
    child.wait().unwrap();

    let plan = w.plan_json(&[]);
    let change = orchestrator_change(&plan);
    assert_eq!(change["action"], "update", "{plan}");
    let names = attribute_names(&change);
    assert!(names.contains(&"ready"), "{names:?}");
    w.ok("apply", &["--auto-approve"]);
    let d = deployment(ns).await;
    assert_eq!(image_of(&d), "ghcr.io/mikeyobrien/ralph-orchestrator:1.0.0");
    assert_eq!(available(&d), 3);
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(exit_code(&out), Some(0), "{}", text(&out.stdout));
}

#[tokio::test]
async fn a_rotated_secret_shows_in_plan_and_apply_copies_it_and_restarts_the_pods() {
    let ns = &unique("k-rotate");
    let w = world(ns, "1.0.0");
    w.ok("apply", &["--auto-approve"]);
    let before = deployment(ns).await;
    let conf = w.aws_conf().await;
    let rotated = "sk-ant-rotated-fedcba9876543210";
    aws_sdk_secretsmanager::Client::new(&conf)
        .put_secret_value()
        .secret_id(format!("{ns}/production/anthropic-api-key"))
        .secret_string(rotated)
        .send()
        .await
        .unwrap();

    let plan = w.plan_json(&[]);
    let change = orchestrator_change(&plan);
    assert_eq!(change["action"], "update", "{plan}");
    assert_eq!(
        change["attributes"][0]["name"], "secret_versions",
        "{change}"
    );
    let out = w.run("apply", &["--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains(rotated) && !text(&out.stderr).contains(rotated));
    assert!(!state_text(&w).contains(rotated));

    let secret = Api::<Secret>::namespaced(client().await, ns)
        .get("ralph-orchestrator-secrets")
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8(secret.data.unwrap()["ANTHROPIC_API_KEY"].0.clone()).unwrap(),
        rotated
    );
    let after = deployment(ns).await;
    let hash = |d: &Deployment| {
        d.spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["ralph-deploy.io/secrets-hash"]
            .clone()
    };
    assert_ne!(hash(&before), hash(&after), "the pods were not restarted");
    assert_eq!(available(&after), 3);
}

/// The rendered alerts fire on the series they watch and stay quiet on a
/// healthy service: `promtool test rules` feeds each rule series that must
/// fire and series that must not (the scrape's own labels: namespace and
/// service, no pod).
#[test]
fn rendered_alerts_fire_on_bad_series_and_stay_quiet_on_good_ones() {
    let w = world(&unique("k-promtest"), "1.0.0");
    let yaml = w.ok("render", &[]);
    let mut files = None;
    for doc in serde_yaml_ng::Deserializer::from_str(&yaml) {
        let v = serde_json::Value::deserialize(doc).unwrap();
        if v["kind"] == "ConfigMap" && v["metadata"]["name"] == "ralph-orchestrator-monitoring" {
            files = Some(v["data"].clone());
        }
    }
    let rules_text = files.expect("the monitoring ConfigMap")["alerts.yml"]
        .as_str()
        .unwrap()
        .to_string();
    let rules: serde_json::Value = serde_yaml_ng::from_str(&rules_text).unwrap();
    let summary = |alert: &str| -> String {
        rules["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .find(|r| r["alert"] == alert)
            .unwrap_or_else(|| panic!("no rule {alert}"))["annotations"]["summary"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let ns = &w.stack_name;
    let sel = format!("namespace=\"{ns}\",service=\"ralph-orchestrator\"");
    // Requests at 10 a second (600 a minute); `bad` of them fail.
    let requests = |bad: u32| {
        serde_json::json!([
            {"series": format!("http_requests_total{{{sel},status=\"200\"}}"),
             "values": format!("0+{}x480", 600 - bad)},
            {"series": format!("http_requests_total{{{sel},status=\"500\"}}"),
             "values": format!("0+{bad}x480")},
        ])
    };
    // Request durations: all within `le`'s bucket and above the one before.
    let latency = |slow: bool| {
        let mut s = Vec::new();
        for (le, count) in [
            ("0.25", if slow { 0 } else { 600 }),
            ("0.5", if slow { 0 } else { 600 }),
            ("1", 600),
            ("+Inf", 600),
        ] {
            s.push(serde_json::json!({
                "series": format!("http_request_duration_seconds_bucket{{{sel},le=\"{le}\"}}"),
                "values": format!("0+{count}x120"),
            }));
        }
        serde_json::Value::Array(s)
    };
    let gauge = |metric: &str, value: u64| {
        serde_json::json!([{"series": format!("{metric}{{{sel},instance=\"10.0.0.7:9090\"}}"),
                            "values": format!("{value}x120")}])
    };
    let firing = |alert: &str, extra: serde_json::Value, severity: &str| {
        let mut labels = serde_json::json!({"severity": severity, "service": "ralph-orchestrator"});
        if let (Some(l), Some(e)) = (labels.as_object_mut(), extra.as_object()) {
            l.extend(e.clone());
        }
        serde_json::json!([{"exp_labels": labels, "exp_annotations": {"summary": summary(alert)}}])
    };
    let case = |series: serde_json::Value, alert: &str, at: &str, exp: serde_json::Value| {
        serde_json::json!({"interval": "1m", "input_series": series,
                           "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": exp}]})
    };
    let none = serde_json::json!([]);
    let no_extra = serde_json::json!({});
    let tests = serde_json::json!({
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [
            // 10% of requests fail: the guide's 5% threshold, and the 99.9%
            // objective's budget spent 100 times too fast.
            case(requests(60), "HighErrorRate", "15m", firing("HighErrorRate", no_extra.clone(), "critical")),
            case(requests(0), "HighErrorRate", "15m", none.clone()),
            case(requests(60), "ErrorBudgetBurnFast", "70m", firing("ErrorBudgetBurnFast", no_extra.clone(), "critical")),
            // 1% failing is 10 times the budget: above the slow burn's 6,
            // below the fast burn's 14.4; 0.5% (5 times) is below both.
            case(requests(6), "ErrorBudgetBurnFast", "70m", none.clone()),
            case(requests(6), "ErrorBudgetBurnSlow", "7h", firing("ErrorBudgetBurnSlow", no_extra.clone(), "warning")),
            case(requests(3), "ErrorBudgetBurnSlow", "7h", none.clone()),
            case(latency(true), "LatencyP95High", "15m", firing("LatencyP95High", no_extra.clone(), "warning")),
            case(latency(false), "LatencyP95High", "15m", none.clone()),
            case(gauge("up", 0), "OrchestratorDown", "15m", firing("OrchestratorDown", no_extra.clone(), "critical")),
            case(gauge("up", 1), "OrchestratorDown", "15m", none.clone()),
            // 90% of the 8Gi limit is 7730941080 bytes.
            case(gauge("process_resident_memory_bytes", 8_000_000_000), "HighMemoryUsage", "15m",
                 firing("HighMemoryUsage", serde_json::json!({"instance": "10.0.0.7:9090"}), "warning")),
            case(gauge("process_resident_memory_bytes", 1_000_000_000), "HighMemoryUsage", "15m", none.clone()),
            case(gauge("ralph_task_duration_seconds", 20_000), "LongRunningTask", "15m",
                 firing("LongRunningTask", no_extra.clone(), "warning")),
            case(gauge("ralph_task_duration_seconds", 60), "LongRunningTask", "15m", none.clone()),
        ],
    });
    let dir = w.dir.path();
    std::fs::write(dir.join("alerts.yml"), &rules_text).unwrap();
    std::fs::write(dir.join("tests.yml"), tests.to_string()).unwrap();
    let run = || {
        let out = std::process::Command::new("promtool")
            .args(["test", "rules", "tests.yml"])
            .current_dir(dir)
            .output()
            .expect(
                "promtool is missing: scripts/setup.sh installs it (Debian package prometheus)",
            );
        (
            out.status.success(),
            format!("{}{}", text(&out.stdout), text(&out.stderr)),
        )
    };
    let (ok, report) = run();
    assert!(ok, "{report}");
    // The test is real: with the old rules' `pod` matcher, which no series
    // of the scrape carries, HighErrorRate never fires and promtool says so.
    let old = serde_json::to_string(&rules).unwrap().replace(
        "service=\\\"ralph-orchestrator\\\"",
        "pod=~\\\"ralph-orchestrator-.*\\\"",
    );
    assert_ne!(old, serde_json::to_string(&rules).unwrap());
    std::fs::write(dir.join("alerts.yml"), old).unwrap();
    let (ok, report) = run();
    assert!(!ok && report.contains("HighErrorRate"), "{report}");
}
