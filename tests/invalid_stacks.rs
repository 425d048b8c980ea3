//! Every malformed stack under tests/invalid/ fails validation with the
//! right file:line:column and message, and touches neither cloud nor state:
//! `plan` is pointed at a counting proxy that must see no connection.

use crate::common;

use std::time::Duration;

use common::{text, SlowProxy, BIN};

/// (file, line, column, part of the message)
const CASES: &[(&str, usize, usize, &str)] = &[
    ("yaml-syntax.yaml", 6, 1, "YAML syntax error"),
    (
        "unknown-kind.yaml",
        4,
        11,
        "unknown resource kind `aws.vcp`",
    ),
    ("unknown-property.yaml", 6, 7, "unknown property `cidr`"),
    ("unknown-top-level.yaml", 2, 1, "unknown field `resource`"),
    ("wrong-type-bool.yaml", 7, 27, "expects a boolean"),
    (
        "wrong-type-int.yaml",
        14,
        22,
        "`from_port` expects an integer",
    ),
    ("bad-cidr-syntax.yaml", 6, 19, "is not an IPv4 CIDR block"),
    ("cidr-host-bits.yaml", 6, 19, "has host bits set"),
    (
        "cidr-outside-vpc.yaml",
        11,
        19,
        "is not inside `10.0.0.0/16`",
    ),
    ("cidr-overlap.yaml", 17, 19, "overlaps `10.0.0.0/23`"),
    ("vpc-prefix.yaml", 6, 19, "prefix between /16 and /28"),
    ("dangling-reference.yaml", 10, 15, "reference to `vcp`"),
    ("unknown-attribute.yaml", 10, 15, "has no attribute `idd`"),
    ("duplicate-address.yaml", 7, 3, "`vpc` is declared twice"),
    ("cycle.yaml", 3, 3, "dependency cycle: a -> b -> c -> a"),
    (
        "dangling-depends-on.yaml",
        5,
        18,
        "`depends_on` names `igw`",
    ),
    (
        "missing-required.yaml",
        7,
        3,
        "needs the property `cidr_block`",
    ),
    ("sg-name-rule.yaml", 10, 13, "must not start with `sg-`"),
    (
        "eks-desired-above-max.yaml",
        13,
        21,
        "`desired_size` is 7, more than `max_size` (5)",
    ),
    (
        "int-does-not-fit.yaml",
        9,
        26,
        "`allocated_storage` is 99999999999999999999, which does not fit an integer",
    ),
    (
        "orchestrator-replicas-above-max.yaml",
        8,
        17,
        "`replicas` is 12, more than `max_replicas` (10)",
    ),
    (
        "port-out-of-range.yaml",
        8,
        13,
        "`port`: 70000 is out of range: expected 1 to 65535",
    ),
    (
        "rds-backup-window-too-short.yaml",
        10,
        22,
        "is 10 minutes long; RDS needs at least 30",
    ),
    (
        "sg-description-too-long.yaml",
        11,
        20,
        "300 characters long; EC2 allows at most 255",
    ),
    (
        "sg-rule-description-charset.yaml",
        15,
        24,
        "the description contains `<`",
    ),
    ("reserved-tag.yaml", 8, 38, "prefix `aws:`"),
    (
        "bad-availability-zone.yaml",
        12,
        26,
        "not an availability zone",
    ),
    (
        "undeclared-variable.yaml",
        9,
        19,
        "variable `vpc_cdir` is not declared",
    ),
    ("variable-type.yaml", 5, 14, "must be of type number"),
    (
        "overlay-unknown-resource.yaml",
        5,
        7,
        "overrides resource `vcp`",
    ),
    (
        "yaml-alias.yaml",
        4,
        9,
        "anchors and aliases are not accepted",
    ),
    ("deep-nesting.yaml", 6, 61, "nests more than"),
    (
        "bad-address.yaml",
        3,
        3,
        "resource address `My VPC` is not valid",
    ),
    ("unclosed-reference.yaml", 10, 15, "is not closed"),
    ("bad-protocol.yaml", 13, 21, "protocol `tcpp`"),
    ("assigned-attribute.yaml", 7, 7, "assigned by the cloud"),
    ("bad-region.yaml", 4, 13, "not an AWS region"),
    ("reference-type.yaml", 7, 27, "but `${vpc2.id}` is a string"),
    (
        "bad-stack-name.yaml",
        1,
        7,
        "stack name `Ralph_Stack` is not valid",
    ),
    (
        "k8s-bad-namespace.yaml",
        7,
        18,
        "is not a valid Kubernetes name",
    ),
    ("k8s-bad-tag.yaml", 7, 12, "is not an image tag"),
    (
        "k8s-not-a-quantity.yaml",
        7,
        20,
        "`two` is not a Kubernetes quantity",
    ),
    (
        "k8s-limit-below-request.yaml",
        7,
        20,
        "`cpu_request` is 2, more than `cpu_limit` (500m)",
    ),
    (
        "k8s-bad-cron.yaml",
        7,
        29,
        "the minute `61` is outside 0-59",
    ),
    (
        "sg-port-range-backwards.yaml",
        13,
        9,
        "`from_port` must not be above `to_port`",
    ),
    (
        "sql-bad-tier.yaml",
        9,
        13,
        "`db-custom-3-4096` is not a Cloud SQL tier",
    ),
    (
        "sql-bad-version.yaml",
        9,
        25,
        "`POSTGRES_8` is not a Cloud SQL for PostgreSQL version",
    ),
    (
        "duplicate-cloud-name.yaml",
        6,
        13,
        "would both be the aws.s3_bucket named `app-backups-example`",
    ),
    (
        "gke-pool-count-outside-bounds.yaml",
        11,
        19,
        "`node_count` is 5, more than `max_nodes` (3)",
    ),
    (
        "gke-bad-channel.yaml",
        14,
        24,
        "release_channel `BLEEDING` is not one of",
    ),
    (
        "eks-unsupported-version.yaml",
        7,
        16,
        "Kubernetes 1.28 is past its end of support at Amazon EKS (2025-11-26)",
    ),
    ("manifests-unpinned-url.yaml", 7, 14, "is not pinned"),
    (
        "subnet-zone-of-another-region.yaml",
        14,
        26,
        "availability zone `eu-west-1a` is in eu-west-1, and the stack's region (cloud.aws.region) is us-east-1",
    ),
    (
        "eks-subnets-in-one-zone.yaml",
        21,
        19,
        "EKS needs subnets in at least two availability zones",
    ),
    (
        "gcp-secondary-range-overlaps.yaml",
        18,
        21,
        "overlaps secondary range `pods` (10.20.0.0/16)",
    ),
    (
        "gcp-secondary-range-inside-primary.yaml",
        16,
        21,
        "overlaps the primary range 10.10.0.0/16",
    ),
    (
        "firewall-bad-protocol.yaml",
        15,
        9,
        "protocol `http` is not one of tcp, udp",
    ),
    (
        "firewall-bad-port.yaml",
        15,
        9,
        "`70000` is not a port (0-65535)",
    ),
    (
        "rollout-cannot-schedule.yaml",
        18,
        17,
        "`orchestrator` cannot roll out: a rollout runs 3 replicas and 1 extra pod(s) at once",
    ),
    (
        "pod-larger-than-node.yaml",
        19,
        20,
        "a t3.large node offers pods 1.93",
    ),
    (
        "api-placeholder-range.yaml",
        9,
        28,
        "`192.0.2.0/24` is a documentation range, the shipped stacks' placeholder",
    ),
    (
        "gke-bad-machine-type.yaml",
        10,
        21,
        "`N2 Standard 4` is not a Compute Engine machine type",
    ),
    (
        "redis-bad-version.yaml",
        10,
        22,
        "redis_version `REDIS_9` is not one of",
    ),
    (
        "gke-location-outside-subnet-region.yaml",
        24,
        17,
        "location `europe-west1-b` is outside us-central1",
    ),
];

#[test]
fn every_malformed_stack_is_listed() {
    let dir = common::repo().join("tests/invalid");
    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut listed: Vec<String> = CASES.iter().map(|c| c.0.to_string()).collect();
    listed.sort();
    assert_eq!(files, listed);
    assert!(CASES.len() >= 20);
}

#[test]
fn malformed_stacks_fail_with_location_and_touch_nothing() {
    // Nothing listens behind this proxy's upstream; any connection is counted.
    let proxy = SlowProxy::start("127.0.0.1:9", Duration::ZERO);
    let state = tempfile::tempdir().unwrap();
    for (file, line, column, message) in CASES {
        let path = format!("tests/invalid/{file}");
        for verb in ["validate", "plan", "apply"] {
            let mut cmd = std::process::Command::new(BIN);
            cmd.current_dir(common::repo()).arg(verb).arg(&path);
            if verb == "apply" {
                cmd.arg("--auto-approve");
            }
            let out = cmd
                .env("AWS_ENDPOINT_URL", &proxy.endpoint)
                .env("AWS_ACCESS_KEY_ID", "testing")
                .env("AWS_SECRET_ACCESS_KEY", "testing")
                .env("AWS_REGION", "us-east-1")
                .env("RALPH_DEPLOY_STATE_DIR", state.path())
                .output()
                .unwrap();
            let err = text(&out.stderr);
            // People read these: no Rust Debug forms (`Some("x")`, `"x"` with
            // escapes, `Ok(..)`) in any message.
            for debug in ["Some(", "Ok(", "Err(", "\\\""] {
                assert!(
                    !err.contains(debug),
                    "{verb} {file}: Rust's Debug form `{debug}` in a message:\n{err}"
                );
            }
            assert_eq!(
                out.status.code(),
                Some(1),
                "{verb} {file}: expected exit 1\n{err}"
            );
            let at = format!("{path}:{line}:{column}: ");
            let found = err.lines().any(|l| l.contains(&at) && l.contains(message));
            assert!(
                found,
                "{verb} {file}: expected `{at}...{message}` in:\n{err}"
            );
        }
        // The JSON form carries the same location.
        let out = std::process::Command::new(BIN)
            .current_dir(common::repo())
            .args(["validate", &path, "--json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["valid"], false);
        assert!(
            v["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["line"] == *line && p["column"] == *column),
            "{file}: {v}"
        );
    }
    assert_eq!(proxy.count(), 0, "validation must not contact the cloud");
    assert_eq!(
        std::fs::read_dir(state.path()).unwrap().count(),
        0,
        "validation must not create state or locks"
    );
}

#[test]
fn the_shipped_stacks_are_valid_in_every_environment() {
    let mut stacks: Vec<String> = std::fs::read_dir(common::repo().join("stacks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    stacks.sort();
    assert!(stacks.len() >= 3, "{stacks:?}");
    for stack in &stacks {
        // Who may reach the API endpoint is the user's choice: the shipped
        // placeholder is refused until it is made.
        let asks_ranges = std::fs::read_to_string(common::repo().join("stacks").join(stack))
            .unwrap()
            .contains("\n  api_allowed_cidrs:");
        for env in ["production", "staging"] {
            let validate = || {
                let mut cmd = std::process::Command::new(BIN);
                cmd.current_dir(common::repo()).args([
                    "validate",
                    &format!("stacks/{stack}"),
                    "--env",
                    env,
                ]);
                cmd
            };
            if asks_ranges {
                let out = validate().output().unwrap();
                assert_eq!(out.status.code(), Some(1), "{stack} {env}");
                assert!(
                    text(&out.stderr).contains("`192.0.2.0/24` is a documentation range"),
                    "{stack} {env}: {}",
                    text(&out.stderr)
                );
            }
            let out = validate()
                .env("RALPH_DEPLOY_VAR_api_allowed_cidrs", "[\"0.0.0.0/0\"]")
                .output()
                .unwrap();
            assert!(out.status.success(), "{stack} {env}: {}", text(&out.stderr));
        }
    }
    // Choosing no environment where several exist is an error that lists them.
    let out = std::process::Command::new(BIN)
        .current_dir(common::repo())
        .args(["validate", "stacks/aws-network.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("--env production"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn schema_is_json_and_names_every_kind() {
    let out = std::process::Command::new(BIN)
        .arg("schema")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds = v["$defs"]["resource"]["properties"]["kind"]["enum"]
        .as_array()
        .unwrap();
    for k in [
        "aws.vpc",
        "aws.subnet",
        "aws.nat_gateway",
        "aws.security_group",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} missing");
    }
    // A replace-forcing property says so.
    let vpc = v["$defs"]["resource"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["properties"]["kind"]["const"] == "aws.vpc")
        .unwrap();
    assert!(
        vpc["properties"]["properties"]["properties"]["cidr_block"]["description"]
            .as_str()
            .unwrap()
            .contains("replaces")
    );
}

#[test]
fn graph_renders_dot_and_mermaid() {
    let out = std::process::Command::new(BIN)
        .current_dir(common::repo())
        .args(["graph", "stacks/aws-network.yaml", "--env", "production"])
        .output()
        .unwrap();
    let dot = text(&out.stdout);
    assert!(dot.starts_with("digraph"));
    assert!(dot.contains("\"vpc\" -> \"public_a\""));
    assert!(
        dot.contains("\"igw\" -> \"nat_a\""),
        "depends_on is an edge"
    );
    let out = std::process::Command::new(BIN)
        .current_dir(common::repo())
        .args([
            "graph",
            "stacks/aws-network.yaml",
            "--env",
            "staging",
            "--format",
            "mermaid",
        ])
        .output()
        .unwrap();
    let m = text(&out.stdout);
    assert!(m.starts_with("graph LR"));
    assert!(!m.contains("nat_b"), "staging disables nat_b");
}

/// The schemas editors read (`schema/*.json`, named by the shipped files'
/// `yaml-language-server` line) are what the binary prints.
#[test]
fn the_committed_schemas_are_the_binarys() {
    for (file, args) in [
        ("schema/stack.schema.json", vec!["schema"]),
        (
            "schema/component.schema.json",
            vec!["schema", "--component"],
        ),
        ("docs/commands.md", vec!["reference", "commands"]),
        ("docs/stack-reference.md", vec!["reference", "stack"]),
        ("docs/language.md", vec!["reference", "language"]),
    ] {
        let out = std::process::Command::new(BIN)
            .args(&args)
            .output()
            .unwrap();
        let committed = std::fs::read_to_string(common::repo().join(file)).unwrap();
        assert_eq!(
            text(&out.stdout),
            committed,
            "{file} is stale: run `ralph-deploy {} > {file}`",
            args.join(" ")
        );
    }
    for dir in ["stacks", "components"] {
        for e in std::fs::read_dir(common::repo().join(dir)).unwrap() {
            let p = e.unwrap().path();
            let first = std::fs::read_to_string(&p).unwrap();
            assert!(
                first.starts_with("# yaml-language-server: $schema=../schema/"),
                "{} does not name its schema",
                p.display()
            );
        }
    }
}

/// Every shipped stack and component validates against the shipped JSON
/// Schema (with the jsonschema library of the kubernetes-validate venv the
/// test setup installs).
#[test]
fn the_shipped_files_validate_against_the_json_schema() {
    let validate = std::env::var("RALPH_TEST_KUBE_VALIDATE")
        .expect("RALPH_TEST_KUBE_VALIDATE is not set: run scripts/test");
    let python = std::path::Path::new(&validate).with_file_name("python");
    let script = r#"
import glob, json, sys, yaml, jsonschema
root = sys.argv[1]
bad = 0
for schema, pattern in (("stack", "stacks/*.yaml"), ("component", "components/*.yaml")):
    v = jsonschema.Draft202012Validator(json.load(open(f"{root}/schema/{schema}.schema.json")))
    for f in sorted(glob.glob(f"{root}/{pattern}")):
        for e in v.iter_errors(yaml.safe_load(open(f))):
            bad += 1
            print(f, list(e.path), e.message[:200])
print("checked")
sys.exit(1 if bad else 0)
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script, common::repo().to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out.stdout).contains("checked"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Small things a first-time user meets: `output` before any apply, a
/// mistyped output name, a missing stack file, a missing `--env`.
#[test]
fn first_run_mistakes_get_short_clear_answers() {
    let state = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .current_dir(common::repo())
            .args(args)
            .env("RALPH_DEPLOY_STATE_DIR", state.path())
            .output()
            .unwrap()
    };
    let out = run(&["output", "stacks/aws-network.yaml", "--env", "production"]);
    assert_eq!(out.status.code(), Some(1), "output with no state exits 0");
    assert!(
        text(&out.stderr).contains("no state at"),
        "{}",
        text(&out.stderr)
    );
    // With a state (written by hand), a mistyped name gets a suggestion.
    let dir = state.path().join("ralph-network").join("production");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("state.json"),
        r#"{"format_version":1,"lineage":"l","serial":1,"stack":"ralph-network","environment":"production","resources":{},"outputs":{"vpc_id":"vpc-1"}}"#,
    )
    .unwrap();
    let out = run(&[
        "output",
        "stacks/aws-network.yaml",
        "--env",
        "production",
        "vpc_idd",
    ]);
    assert!(
        text(&out.stderr).contains("did you mean `vpc_id`?"),
        "{}",
        text(&out.stderr)
    );
    // A missing file: one line, no empty snippet box.
    let out = run(&["validate", "stacks/nope.yaml"]);
    let err = text(&out.stderr);
    assert!(err.contains("cannot read the stack file"), "{err}");
    assert!(!err.contains('╭'), "an empty snippet box: {err}");
    // No --env with several environments: a short excerpt.
    let out = run(&["validate", "stacks/aws-network.yaml"]);
    let err = text(&out.stderr);
    assert!(err.contains("pass --env production"), "{err}");
    assert!(
        err.lines().count() <= 10,
        "{} lines:\n{err}",
        err.lines().count()
    );
    // An environment the stack does not declare: short too.
    let out = run(&["validate", "stacks/aws-network.yaml", "--env", "dev"]);
    let err = text(&out.stderr);
    assert!(err.contains("choose one of: production, staging"), "{err}");
    assert!(
        err.lines().count() <= 10,
        "{} lines:\n{err}",
        err.lines().count()
    );
    // Terraform's one-dash spelling is named, not answered with a tip about -o.
    let out = run(&["plan", "-out=prod.plan", "stacks/aws-network.yaml"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "a usage error, as clap's");
    assert!(err.contains("write `--out=prod.plan`"), "{err}");
    let out = run(&["apply", "stacks/aws-network.yaml", "-auto-approve"]);
    assert!(
        text(&out.stderr).contains("write `--auto-approve`"),
        "{}",
        text(&out.stderr)
    );
    // Validation problems as JSON: one line of the event stream.
    let out = run(&[
        "validate",
        "tests/invalid/assigned-attribute.yaml",
        "--json",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["event"], "error");
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"][0]["line"], 7);
    common::check_event_stream(&stdout);
    // No AWS credentials: one sentence naming the profile, no SDK warnings.
    let out = std::process::Command::new(BIN)
        .current_dir(common::repo())
        .args(["plan", "stacks/aws-network.yaml", "--env", "production"])
        .env("RALPH_DEPLOY_STATE_DIR", state.path())
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_PROFILE", "nonexistent")
        .env("AWS_CONFIG_FILE", state.path().join("no-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            state.path().join("no-credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no AWS credentials were found"), "{err}");
    assert!(
        err.contains("the profile `nonexistent` (from AWS_PROFILE) is not in"),
        "{err}"
    );
    assert!(!err.contains("WARN") && !err.contains('\u{1b}'), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn fmt_lays_files_out_keeps_their_meaning_and_checks_for_ci() {
    let dir = tempfile::tempdir().unwrap();
    let messy = "# yaml-language-server: $schema=../schema/stack.schema.json   \nname: fmt-demo\ncloud:\n    aws:\n        region: us-east-1\n\n\n\nresources:\n    vpc:\n          # the network's range\n        kind: aws.vpc\n        properties:\n            cidr_block: 10.0.0.0/16\n            tags: {tier: \"core\",\n                   team: platform}\n";
    let file = dir.path().join("stack.yaml");
    std::fs::write(&file, messy).unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(BIN)
            .args(args)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let before = run(&["validate", "stack.yaml", "--json"]);
    // --check changes nothing, names the file and exits 3.
    let out = run(&["fmt", "--check"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "./stack.yaml");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), messy);
    // fmt rewrites it: two spaces a level, one blank line, comments kept
    // at the indentation of what they describe.
    assert!(run(&["fmt"]).status.success());
    let formatted = std::fs::read_to_string(&file).unwrap();
    assert_eq!(
        formatted,
        "# yaml-language-server: $schema=../schema/stack.schema.json\nname: fmt-demo\ncloud:\n  aws:\n    region: us-east-1\n\nresources:\n  vpc:\n    # the network's range\n    kind: aws.vpc\n    properties:\n      cidr_block: 10.0.0.0/16\n      tags: {tier: \"core\",\n             team: platform}\n"
    );
    assert_eq!(run(&["fmt", "--check"]).status.code(), Some(0));
    assert_eq!(
        run(&["validate", "stack.yaml", "--json"]).stdout,
        before.stdout
    );
    // A layout it cannot keep is left alone, with the reason.
    let odd = dir.path().join("two.yaml");
    std::fs::write(&odd, "a: 1\n---\nb: 2\n").unwrap();
    let out = run(&["fmt", "two.yaml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("two.yaml: left as it is: several documents"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&odd).unwrap(), "a: 1\n---\nb: 2\n");
    // The shipped files are formatted.
    let out = std::process::Command::new(BIN)
        .args(["fmt", "--check", "stacks", "components", "docs/ci"])
        .current_dir(common::repo())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}
