//! `plan --format markdown` (a pull-request comment) and `show PLANFILE`.

use crate::common;

use common::{text, World};

#[test]
fn markdown_plans_and_show_of_a_saved_plan() {
    let w = World::from_stack("aws-network.yaml", &format!("md{}", std::process::id()));
    let md = w.ok("plan", &["--format", "markdown"]);
    assert!(
        md.starts_with(&format!(
            "### ralph-deploy plan: `{}` / `production`",
            w.stack_name
        )),
        "{md}"
    );
    assert!(md.contains("| create | update | replace | delete | adopt | move | unchanged |"));
    assert!(
        md.contains("<details><summary><code>+ vpc</code> (aws.vpc) create</summary>"),
        "{md}"
    );
    assert!(
        md.contains("```diff\n+ cidr_block = \"10.0.0.0/16\""),
        "{md}"
    );
    assert!(!md.contains('\u{1b}'), "no escape codes in markdown");

    // A saved plan shows the same, in every format, without the cloud.
    let file = w.dir.path().join("p.plan");
    w.ok("plan", &["--out", file.to_str().unwrap()]);
    let shown = w
        .cmd(&["show", file.to_str().unwrap(), "--format", "markdown"])
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .output()
        .unwrap();
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    assert_eq!(text(&shown.stdout), md);
    let json = w
        .cmd(&["show", file.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(v["counts"]["create"].as_u64().unwrap() > 5, "{v}");
    let plain = w.cmd(&["show", file.to_str().unwrap()]).output().unwrap();
    assert!(
        text(&plain.stdout).contains("+ vpc (aws.vpc) will be created"),
        "{}",
        text(&plain.stdout)
    );

    // An edited plan file is refused by show as by apply.
    let edited = std::fs::read_to_string(&file)
        .unwrap()
        .replace("10.0.0.0/16", "10.9.0.0/16");
    std::fs::write(&file, edited).unwrap();
    let out = w.cmd(&["show", file.to_str().unwrap()]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));

    // Replacements and deletions come first, protected ones flagged.
    w.ok("apply", &["--auto-approve", "--target", "public_a"]);
    let md = w.ok(
        "plan",
        &[
            "--format", "markdown", "--target", "public_a", "--var", "net=10.7",
        ],
    );
    assert!(
        md.contains("> **Partial plan** (`--target public_a`)"),
        "{md}"
    );
    let risky = md
        .find("**Deletions and replacements**")
        .expect("a risky section");
    let first_details = md.find("<details>").unwrap();
    assert!(risky < first_details);
    assert!(md.contains("- replace `public_a` (aws.subnet)"), "{md}");
    assert!(md.contains("# forces replacement"), "{md}");
    w.ok("destroy", &["--auto-approve"]);
}

#[test]
fn the_event_schema_refuses_what_it_does_not_document() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::repo().join("schema/events.schema.json")).unwrap(),
    )
    .unwrap();
    let check = |line: serde_json::Value| common::schema_problems(&schema, &schema, &line, "line");
    let good = serde_json::json!({"event": "warning", "v": 1, "time": "2026-11-27T03:00:00.000Z", "message": "m"});
    assert!(check(good).is_empty());
    for bad in [
        serde_json::json!({"event": "warning", "v": 2, "time": "t", "message": "m"}),
        serde_json::json!({"event": "warning", "v": 1, "time": "t"}),
        serde_json::json!({"event": "warning", "v": 1, "time": "t", "message": "m", "value": "secret"}),
        serde_json::json!({"event": "resource_started", "v": 1, "time": "t", "address": "a", "kind": "k", "action": "explode"}),
        serde_json::json!({"event": "teleported", "v": 1, "time": "t"}),
    ] {
        assert!(!check(bad.clone()).is_empty(), "{bad} passed");
    }
}

#[test]
fn graph_colours_nodes_by_a_saved_plan_and_svg_needs_graphviz() {
    let w = World::from_stack("aws-network.yaml", &format!("gr{}", std::process::id()));
    let file = w.dir.path().join("g.plan");
    w.ok("plan", &["--out", file.to_str().unwrap()]);
    let stack = w.stack();
    let s = stack.to_str().unwrap();
    let dot = w
        .cmd(&[
            "graph",
            s,
            "--env",
            "production",
            "--plan",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(dot.status.success(), "{}", text(&dot.stderr));
    let dot = text(&dot.stdout);
    assert!(
        dot.contains("\"vpc\" [label=\"+ vpc\\naws.vpc\", style=filled, fillcolor=\"#c8f0c8\"]"),
        "{dot}"
    );
    let mermaid = w
        .cmd(&[
            "graph",
            s,
            "--env",
            "production",
            "--plan",
            file.to_str().unwrap(),
            "--format",
            "mermaid",
        ])
        .output()
        .unwrap();
    assert!(
        text(&mermaid.stdout).contains("classDef create fill:#c8f0c8"),
        "{}",
        text(&mermaid.stdout)
    );
    let json = w
        .cmd(&[
            "graph",
            s,
            "--env",
            "production",
            "--plan",
            file.to_str().unwrap(),
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(
        v["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["action"] == "create"),
        "{v}"
    );
    // A plan of another environment is refused.
    let out = w
        .cmd(&[
            "graph",
            s,
            "--env",
            "staging",
            "--plan",
            file.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is a plan of"),
        "{}",
        text(&out.stderr)
    );
    // SVG through Graphviz when it is installed; a clear error when it is not.
    let svg = w
        .cmd(&["graph", s, "--env", "production", "--format", "svg"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(svg.status.code(), Some(1));
    assert!(
        text(&svg.stderr).contains("needs Graphviz's `dot` on PATH"),
        "{}",
        text(&svg.stderr)
    );
    if std::process::Command::new("dot").arg("-V").output().is_ok() {
        let svg = w
            .cmd(&["graph", s, "--env", "production", "--format", "svg"])
            .output()
            .unwrap();
        assert!(text(&svg.stdout).contains("<svg"), "{}", text(&svg.stderr));
    }
}

#[test]
fn a_bare_out_name_works_and_a_copied_stack_is_told_whose_resources_it_plans() {
    let w = World::from_stack("aws-network.yaml", &format!("cp{}", std::process::id()));
    let stack = w.stack();
    // `--out prod.plan`, as README writes it: relative to the working directory.
    let out = w
        .cmd(&[
            "plan",
            stack.to_str().unwrap(),
            "--env",
            "production",
            "--out",
            "prod.plan",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(w.dir.path().join("prod.plan").is_file());
    // Unknown is not unset: a value known only after apply has no `after`
    // and says so, in the plan and in the saved plan alike.
    let attr = |plan: &serde_json::Value| {
        plan["changes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["address"] == "public_a")
            .unwrap()["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "vpc_id")
            .unwrap()
            .clone()
    };
    let fresh = attr(&w.plan_json(&[]));
    assert_eq!(fresh["after_unknown"], true, "{fresh}");
    assert!(fresh.get("after").is_none(), "{fresh}");
    let shown = w
        .cmd(&["show", "prod.plan", "--format", "json"])
        .output()
        .unwrap();
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(attr(&shown), fresh);

    w.ok("apply", &["--auto-approve", "--target", "vpc"]);
    let quiet = w.run("plan", &[]);
    assert!(
        !text(&quiet.stderr).contains("was last applied from"),
        "{}",
        text(&quiet.stderr)
    );
    // The same stack under another path, same `name:`: it plans against
    // the same state, and says so.
    let copy_dir = w.dir.path().join("copy");
    std::fs::create_dir_all(&copy_dir).unwrap();
    let copy = copy_dir.join("network.yaml");
    std::fs::copy(&stack, &copy).unwrap();
    let out = w
        .cmd(&["plan", copy.to_str().unwrap(), "--env", "production"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("was last applied from"), "{err}");
    assert!(err.contains("give it another `name:`"), "{err}");
    w.ok("destroy", &["--auto-approve"]);
}
