//! `--target`, `--exclude` and `--var-file` on plan, apply and destroy,
//! against moto with the networking stack.

mod common;

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
