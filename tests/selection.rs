//! `--target`, `--exclude` and `--var-file` on plan, apply and destroy,
//! against moto with the networking stack.

use crate::common;

use common::{changed, text, World};

fn addresses(plan: &serde_json::Value) -> Vec<String> {
    let mut a: Vec<String> = changed(plan).into_iter().map(|(a, _)| a).collect();
    a.sort();
    a
}

#[test]
fn target_and_exclude_cover_part_of_the_stack_with_what_it_needs() {
    let w = World::from_stack("aws-network.yaml", &format!("sel{}", std::process::id()));
    // A target brings what it needs along, and the run says it is partial.
    let out = w.run("plan", &["--json", "--target", "nat_a"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        addresses(&plan),
        ["eip_nat_a", "igw", "nat_a", "public_a", "vpc"]
    );
    assert_eq!(plan["selection"]["targets"][0], "nat_a");

    let out = w.run("plan", &["--target", "nat_a"]);
    assert!(
        text(&out.stderr).contains("covers part of the stack (--target nat_a)"),
        "{}",
        text(&out.stderr)
    );

    // An exclusion takes what needs it along.
    let plan = w.plan_json(&["--exclude", "nat_a"]);
    let a = addresses(&plan);
    assert!(
        !a.contains(&"nat_a".to_string()) && !a.contains(&"private_routes_a".to_string()),
        "{a:?}"
    );
    assert!(
        a.contains(&"nat_b".to_string()) && a.contains(&"vpc".to_string()),
        "{a:?}"
    );

    // A name that is not in the stack is refused, with a suggestion.
    let out = w.run("plan", &["--target", "nat_c"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr)
            .contains("--target nat_c: the stack has no such resource (did you mean `nat_"),
        "{}",
        text(&out.stderr)
    );

    // A saved partial plan applies exactly its part, and cannot be re-targeted.
    let plan_file = w.dir.path().join("vpc.plan");
    w.ok(
        "plan",
        &["--target", "vpc", "--out", plan_file.to_str().unwrap()],
    );
    let out = w
        .cmd(&[
            "apply",
            plan_file.to_str().unwrap(),
            "--auto-approve",
            "--target",
            "igw",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("cannot be used with a saved plan"),
        "{}",
        text(&out.stderr)
    );
    let out = w
        .cmd(&["apply", plan_file.to_str().unwrap(), "--auto-approve"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let state = common::state_json(&w);
    let recorded: Vec<&String> = state["resources"].as_object().unwrap().keys().collect();
    assert_eq!(recorded, ["vpc"]);

    // Destroy with a target takes its dependents first: nothing else exists here.
    w.ok("apply", &["--auto-approve", "--target", "public_a"]);
    let plan = w.plan_json(&["--destroy", "--target", "vpc"]);
    assert_eq!(addresses(&plan), ["public_a", "vpc"]);
    let plan = w.plan_json(&["--destroy", "--exclude", "public_a"]);
    assert!(
        addresses(&plan).is_empty(),
        "public_a needs vpc: {:?}",
        addresses(&plan)
    );
    w.ok("destroy", &["--auto-approve"]);
}

#[test]
fn var_files_set_variables_and_var_wins() {
    let w = World::from_stack("aws-network.yaml", &format!("vf{}", std::process::id()));
    let file = w.dir.path().join("prod.yaml");
    std::fs::write(&file, "net: \"10.42\"\nowner: platform\n").unwrap();
    let f = file.to_str().unwrap();
    let plan = w.plan_json(&["--var-file", f]);
    let vpc = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "vpc")
        .unwrap();
    assert!(vpc.to_string().contains("10.42.0.0/16"), "{vpc}");
    let plan = w.plan_json(&["--var-file", f, "--var", "net=10.43"]);
    let vpc = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "vpc")
        .unwrap();
    assert!(vpc.to_string().contains("10.43.0.0/16"), "{vpc}");
    // A saved plan records the file's variables.
    let plan_file = w.dir.path().join("p.plan");
    w.ok(
        "plan",
        &["--var-file", f, "--out", plan_file.to_str().unwrap()],
    );
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_file).unwrap()).unwrap();
    assert!(saved.to_string().contains("net=10.42"), "{saved}");

    // Not a mapping, and a file that is not there: clear errors, exit 1.
    std::fs::write(&file, "- net\n").unwrap();
    let out = w.run("plan", &["--var-file", f]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("expected a mapping of variable names to values"),
        "{}",
        text(&out.stderr)
    );
    let out = w.run("plan", &["--var-file", "/nonexistent/vars.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--var-file /nonexistent/vars.yaml"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn replace_refresh_false_and_refresh_only() {
    let w = World::from_stack("aws-network.yaml", &format!("rep{}", std::process::id()));
    w.ok("apply", &["--auto-approve"]);

    // --replace: an existing resource replaced although nothing forces it;
    // what depends on its id follows.
    let plan = w.plan_json(&["--replace", "public_a"]);
    let c = changed(&plan);
    assert!(
        c.contains(&("public_a".to_string(), "replace".to_string())),
        "{c:?}"
    );
    assert!(
        c.contains(&("nat_a".to_string(), "replace".to_string())),
        "{c:?}"
    );
    assert_eq!(plan["replace"][0], "public_a");
    let out = w.run("plan", &["--replace", "public_c"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("did you mean `public_"),
        "{}",
        text(&out.stderr)
    );
    let out = w.run("destroy", &["--replace", "public_a", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    // A saved plan fixes it.
    let pf = w.dir.path().join("r.plan");
    w.ok("plan", &["--out", pf.to_str().unwrap()]);
    let out = w
        .cmd(&[
            "apply",
            pf.to_str().unwrap(),
            "--replace",
            "vpc",
            "--auto-approve",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot be used with a saved plan"));

    // Someone edits a tag and deletes a security group by hand (one no
    // other group's rule names: EC2 refuses that one).
    let ec2 = w.ec2().await;
    let state = common::state_json(&w);
    let subnet = state["resources"]["public_a"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let sg = state["resources"]["db_sg"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    ec2.create_tags()
        .resources(&subnet)
        .tags(
            aws_sdk_ec2::types::Tag::builder()
                .key("tier")
                .value("by-hand")
                .build(),
        )
        .send()
        .await
        .unwrap();
    ec2.delete_security_group()
        .group_id(&sg)
        .send()
        .await
        .unwrap();

    // --refresh=false plans from the state: it does not see them, says so,
    // and costs no request to the cloud.
    let out = w.run("plan", &["--refresh=false", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("planned from the state alone"));
    let plan = w.plan_json(&["--refresh=false"]);
    assert_eq!(plan["requests"], 0, "{}", plan["requests"]);
    assert_eq!(plan["refreshed"], false);

    // A refresh-only plan shows the drift; apply records it, and nothing
    // in the cloud changes.
    let out = w.run("plan", &["--refresh-only", "--detailed-exitcode"]);
    let drift = text(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{drift}");
    assert!(
        drift.contains("~ tier = \"public\" -> \"by-hand\""),
        "{drift}"
    );
    assert!(
        drift.contains(&format!(
            "- db_sg (aws.security_group) {sg}: gone from the cloud"
        )),
        "{drift}"
    );
    let out = w.run("apply", &["--refresh-only", "--auto-approve", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    common::check_event_stream(&text(&out.stdout));
    let state = common::state_json(&w);
    assert!(state["resources"].get("db_sg").is_none(), "db_sg forgotten");
    assert_eq!(
        state["resources"]["public_a"]["attrs"]["tags"]["tier"],
        "by-hand"
    );
    let out = w.run("plan", &["--refresh-only", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // The next plan brings the cloud back to the stack.
    let plan = w.plan_json(&[]);
    let c = changed(&plan);
    assert!(
        c.contains(&("db_sg".to_string(), "create".to_string())),
        "{c:?}"
    );
    assert!(
        c.contains(&("public_a".to_string(), "update".to_string())),
        "{c:?}"
    );
    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
}
