//! The core engine against the local AWS (moto), through the real binary.

use crate::common;

use std::time::{Duration, Instant};

use common::{changed, text, wait_for_file, SlowProxy, World};
use serde_json::Value;

fn action_of(plan: &Value, address: &str) -> String {
    plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == address)
        .map(|c| c["action"].as_str().unwrap().to_string())
        .unwrap_or_else(|| panic!("{address} not in plan"))
}

/// The id the state records for `address` (`state show`).
fn recorded_id(w: &World, address: &str) -> String {
    let stack = w.stack();
    let show = w
        .cmd(&[
            "state",
            "show",
            stack.to_str().unwrap(),
            "--env",
            "production",
            address,
        ])
        .output()
        .unwrap();
    let state: Value = serde_json::from_str(&text(&show.stdout)).unwrap();
    state["id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_creates_everything_then_plan_is_empty_then_destroy_leaves_nothing() {
    let w = World::from_stack("aws-network.yaml", "t-lifecycle");
    w.ok("apply", &["--auto-approve"]);

    let tagged = w.tagged().await;
    let count = |t: &str| tagged.iter().filter(|(k, _)| k == t).count();
    assert_eq!(count("vpc"), 1, "{tagged:?}");
    assert_eq!(count("subnet"), 4);
    assert_eq!(count("igw"), 1);
    assert_eq!(count("nat"), 2);
    assert_eq!(count("eip"), 2);
    assert_eq!(count("rtb"), 3);
    assert_eq!(count("sg"), 2);

    // The VPC is really configured as declared.
    let ec2 = w.ec2().await;
    let vpc = &tagged.iter().find(|(k, _)| k == "vpc").unwrap().1;
    let dns = ec2
        .describe_vpc_attribute()
        .vpc_id(vpc)
        .attribute(aws_sdk_ec2::types::VpcAttributeName::EnableDnsHostnames)
        .send()
        .await
        .unwrap();
    assert_eq!(
        dns.enable_dns_hostnames().and_then(|a| a.value()),
        Some(true)
    );

    // No perpetual diffs.
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("No changes"));

    // Outputs are recorded.
    let vpc_out = w.ok("output", &["vpc_id"]);
    assert_eq!(vpc_out.trim(), vpc);

    // Destroy refuses the protected security group without the override.
    let out = w.run("destroy", &["--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("db_sg"), "{}", text(&out.stderr));
    assert_eq!(
        w.tagged().await.len(),
        tagged.len(),
        "a refused destroy must touch nothing"
    );

    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
    assert_eq!(
        w.tagged().await,
        vec![],
        "destroy must leave nothing tagged with the stack"
    );
    let list = w
        .cmd(&[
            "state",
            "list",
            w.stack().to_str().unwrap(),
            "--env",
            "production",
        ])
        .output()
        .unwrap();
    assert!(list.status.success());
    assert_eq!(text(&list.stdout).trim(), "");
}

#[tokio::test(flavor = "multi_thread")]
async fn tag_change_is_an_update_cidr_change_is_a_replace() {
    let w = World::from_stack("aws-network.yaml", "t-diffs");
    w.ok("apply", &["--auto-approve"]);

    // A tag: in place.
    w.edit("default: platform", "default: data-team");
    let plan = w.plan_json(&[]);
    assert_eq!(
        changed(&plan),
        vec![("vpc".to_string(), "update".to_string())]
    );
    let vpc = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "vpc")
        .unwrap();
    assert_eq!(vpc["attributes"][0]["name"], "tags");
    assert_eq!(vpc["attributes"][0]["forces_replace"], false);
    w.ok("apply", &["--auto-approve"]);
    let ec2 = w.ec2().await;
    let vpcs = ec2
        .describe_vpcs()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:ralph-deploy:stack")
                .values("t-diffs")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let owner = vpcs.vpcs()[0]
        .tags()
        .iter()
        .find(|t| t.key() == Some("owner"))
        .and_then(|t| t.value())
        .map(str::to_string);
    assert_eq!(owner.as_deref(), Some("data-team"));

    // A subnet's CIDR: replace, and the association that points at it follows.
    w.edit("${var.net}.11.0/24", "${var.net}.12.0/24");
    let plan = w.plan_json(&[]);
    assert_eq!(action_of(&plan, "private_b"), "replace");
    let sub = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "private_b")
        .unwrap();
    assert!(
        sub["reason"].as_str().unwrap().contains("cidr_block"),
        "{sub}"
    );
    assert_eq!(action_of(&plan, "private_b_routes"), "replace");
    assert_eq!(action_of(&plan, "vpc"), "no_op");
    let old_id = sub["id"].as_str().unwrap().to_string();
    let events: Vec<serde_json::Value> = w
        .ok("apply", &["--auto-approve", "--json"])
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // The two halves of the replacement are told apart, old one first.
    let phases: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "resource_started" && e["address"] == "private_b")
        .map(|e| e["phase"].as_str().unwrap_or("none"))
        .collect();
    assert_eq!(phases, ["delete", "create"], "{events:?}");
    let subnets: Vec<String> = w
        .tagged()
        .await
        .into_iter()
        .filter(|(k, _)| k == "subnet")
        .map(|(_, id)| id)
        .collect();
    assert_eq!(subnets.len(), 4);
    assert!(!subnets.contains(&old_id));
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resource_deleted_behind_the_tools_back_is_recreated() {
    let w = World::from_stack("aws-network.yaml", "t-drift");
    w.ok("apply", &["--auto-approve"]);
    let sg = recorded_id(&w, "db_sg");
    w.ec2()
        .await
        .delete_security_group()
        .group_id(&sg)
        .send()
        .await
        .unwrap();

    let plan = w.plan_json(&[]);
    assert_eq!(
        changed(&plan),
        vec![("db_sg".to_string(), "create".to_string())]
    );
    let reason = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "db_sg")
        .unwrap()["reason"]
        .clone();
    assert!(
        reason.as_str().unwrap().contains("deleted outside"),
        "{reason}"
    );
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2));

    w.ok("apply", &["--auto-approve"]);
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_apply_fails_at_once_naming_the_lock_holder() {
    let w = World::from_stack("aws-network.yaml", "t-lock");
    // The first apply talks to the cloud through a proxy that slows every
    // request, so it holds the lock for many seconds.
    let proxy = SlowProxy::start(&w.endpoint, Duration::from_millis(150));
    let stack = w.stack();
    let mut first = w
        .cmd_at(
            &proxy.endpoint,
            &[
                "apply",
                stack.to_str().unwrap(),
                "--env",
                "production",
                "--auto-approve",
            ],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let lock = w
        .state_dir()
        .join("t-lock")
        .join("production")
        .join("lock.json");
    assert!(
        wait_for_file(&lock, Duration::from_secs(20)),
        "the first apply never took the lock"
    );

    let started = Instant::now();
    let out = w.run("apply", &["--auto-approve"]);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        took < Duration::from_secs(1),
        "the second apply took {took:?}"
    );
    assert!(err.contains(&format!("pid {}", first.id())), "{err}");
    assert!(err.contains("apply"), "{err}");

    assert!(first.wait().unwrap().success());
    assert!(!lock.exists(), "the lock must be released");
    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn saved_plans_apply_exactly_and_stale_ones_are_refused() {
    let w = World::from_stack("aws-network.yaml", "t-saved");
    let plan_file = w.dir.path().join("first.plan");
    w.ok("plan", &["--out", plan_file.to_str().unwrap()]);
    // A second plan saved from the same state.
    let second = w.dir.path().join("second.plan");
    w.ok("plan", &["--out", second.to_str().unwrap()]);

    // Applying the first plan works and changes the state ...
    let out = w
        .cmd(&["apply", plan_file.to_str().unwrap(), "--auto-approve"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        w.tagged().await.iter().filter(|(k, _)| k == "vpc").count(),
        1
    );

    // ... so the second, made against the old state, is stale.
    let out = w
        .cmd(&["apply", second.to_str().unwrap(), "--auto-approve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("stale"), "{}", text(&out.stderr));
    assert_eq!(
        w.tagged().await.iter().filter(|(k, _)| k == "vpc").count(),
        1,
        "a stale plan must create nothing"
    );

    // A plan made, then the stack edited: refused too.
    w.edit("default: platform", "default: other-team");
    w.ok("plan", &["--out", plan_file.to_str().unwrap()]);
    w.edit("default: other-team", "default: third-team");
    let out = w
        .cmd(&["apply", plan_file.to_str().unwrap(), "--auto-approve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("changed since the plan was made"),
        "{}",
        text(&out.stderr)
    );
    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn apply_without_a_terminal_or_approval_changes_nothing() {
    let w = World::from_stack("aws-network.yaml", "t-confirm");
    let out = w
        .cmd(&["apply", w.stack().to_str().unwrap(), "--env", "production"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--auto-approve"),
        "{}",
        text(&out.stderr)
    );
    assert!(w.tagged().await.is_empty());
}

/// Someone deletes a NAT gateway in the console. EC2 takes about a minute
/// over it (`deleting`), then lists it as `deleted` for an hour: for the
/// stack it is gone from the first moment, so the plan makes a new one
/// and points the routes at it, rather than reporting nothing to do while
/// the private subnets lose their way out.
#[tokio::test(flavor = "multi_thread")]
async fn a_nat_gateway_deleted_outside_is_gone_while_ec2_is_still_deleting_it() {
    let w = World::from_stack("aws-network.yaml", "t-natgone");
    w.ok("apply", &["--auto-approve"]);
    let nat = recorded_id(&w, "nat_a");
    let url = format!("{}/moto-api/ec2/nat/delete", common::aws_endpoint());
    let body = serde_json::json!({"id": nat, "seconds": 15}).to_string();
    let answer: Value = serde_json::from_str(
        &ureq::post(&url)
            .set("Content-Type", "application/json")
            .send_string(&body)
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(answer["deleted"], true, "{answer}");
    let listed = w
        .ec2()
        .await
        .describe_nat_gateways()
        .nat_gateway_ids(&nat)
        .send()
        .await
        .unwrap();
    assert_eq!(
        listed.nat_gateways()[0].state().map(|s| s.as_str()),
        Some("deleting"),
        "the stand-in must hold the gateway in `deleting`"
    );

    let plan = w.plan_json(&[]);
    assert_eq!(action_of(&plan, "nat_a"), "create", "{plan}");
    w.ok("apply", &["--auto-approve"]);
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
}

/// A certificate for another host replaces the first. ACM answers a
/// RequestCertificate whose idempotency token it saw within the hour with
/// the first certificate's ARN: a token that names only the address would
/// get the old host's certificate back (or, once that is deleted, an ARN
/// that no longer exists) instead of a new one.
#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_for_another_host_is_a_new_certificate() {
    let w = World::from_stack("tests/fixtures/aws-certificate.yaml", "t-cert");
    w.ok("apply", &["--auto-approve"]);
    let arn_of = || recorded_id(&w, "edge_cert");
    let first = arn_of();

    w.edit(
        "default: ralph.example.com",
        "default: orchestrator.example.com",
    );
    let plan = w.plan_json(&[]);
    assert_eq!(action_of(&plan, "edge_cert"), "replace", "{plan}");
    w.ok("apply", &["--auto-approve"]);
    let second = arn_of();
    assert_ne!(
        first, second,
        "the new host must get a certificate of its own"
    );
    let acm = aws_sdk_acm::Client::new(&w.aws_conf().await);
    let cert = acm
        .describe_certificate()
        .certificate_arn(&second)
        .send()
        .await
        .unwrap();
    assert_eq!(
        cert.certificate().and_then(|c| c.domain_name()),
        Some("orchestrator.example.com")
    );
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    // And back: the first host's certificate is gone, so it is requested
    // anew, not answered with the deleted one.
    w.edit(
        "default: orchestrator.example.com",
        "default: ralph.example.com",
    );
    w.ok("apply", &["--auto-approve"]);
    let third = arn_of();
    assert_ne!(third, first);
    assert_ne!(third, second);
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    w.ok("destroy", &["--auto-approve"]);
}
