//! A create whose wait times out is recorded; the next apply waits for the
//! same resource instead of creating another.

use crate::common;

use common::{text, World};

const STACK: &str = r#"name: NAME
resources:
  vpc:
    kind: aws.vpc
    properties:
      cidr_block: 10.9.0.0/16
  a:
    kind: aws.subnet
    properties: { vpc_id: "${vpc.id}", cidr_block: 10.9.1.0/24, availability_zone: us-east-1a }
  b:
    kind: aws.subnet
    properties: { vpc_id: "${vpc.id}", cidr_block: 10.9.2.0/24, availability_zone: us-east-1b }
  role:
    kind: aws.iam_role
    properties:
      name: NAME-cluster
      assume_role_service: eks.amazonaws.com
  eks:
    kind: aws.eks_cluster
    properties:
      name: NAME
      role_arn: ${role.arn}
      subnet_ids: ["${a.id}", "${b.id}"]
    timeouts: { create: 1s }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_timed_out_create_is_resumed_not_repeated() {
    let name = format!("tw{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    std::fs::write(w.stack(), STACK.replace("NAME", &name)).unwrap();

    // The local cloud keeps a new cluster CREATING for longer than 1s.
    let out = w.run("apply", &["--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("timed out") && err.contains("eks"), "{err}");

    // Recorded, and the next plan waits for it rather than creating it.
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
    assert!(
        text(&list.stdout).contains(&format!("eks\taws.eks_cluster\t{name}")),
        "{}",
        text(&list.stdout)
    );
    let plan = w.plan_json(&[]);
    let eks = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "eks")
        .unwrap()
        .clone();
    assert_eq!(eks["action"], "update", "{eks}");
    assert_eq!(eks["attributes"][0]["name"], "ready");

    // Without the short timeout, the apply waits it out.
    w.edit("    timeouts: { create: 1s }\n", "");
    w.ok("apply", &["--auto-approve"]);
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    w.ok("destroy", &["--auto-approve"]);
}
