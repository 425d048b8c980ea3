//! A newcomer's first hour, item by item: the CLI's answers where a first
//! user stumbled (fmt from the repository root, problems reported in
//! rounds, a state that followed the current directory, lists hidden in the
//! first plan, a wrong lead from an overlay, a polluted PR comment, status
//! with nothing to check, unknown words, silent or stale answers), and the
//! language reference: generated, every example a valid stack, and a first
//! stack written from docs/ alone that validates, plans and applies.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{text, BIN};

/// A scratch directory with files, and the binary run in it against the
/// local AWS (only the variables a user sets: an endpoint and credentials).
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new(files: &[(&str, &str)]) -> Dir {
        let dir = tempfile::tempdir().unwrap();
        for (name, body) in files {
            let p = dir.path().join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, body).unwrap();
        }
        Dir { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The command in `sub` (relative to the directory), with no cloud.
    fn offline(&self, sub: &str, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.args(args)
            .current_dir(self.path().join(sub))
            .env_remove("RALPH_DEPLOY_STATE_DIR")
            .env_remove("RALPH_DEPLOY_STATE")
            .env_remove("RALPH_DEPLOY_ENV")
            .env_remove("RALPH_DEPLOY_VAR_FILE");
        c
    }

    /// The command in `sub`, pointed at the local AWS.
    fn aws(&self, sub: &str, args: &[&str]) -> Command {
        let mut c = self.offline(sub, args);
        c.env("AWS_ENDPOINT_URL", common::aws_endpoint())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "us-east-1")
            .env_remove("AWS_PROFILE");
        c
    }
}

fn run(mut c: Command) -> Output {
    c.output().unwrap()
}

fn ok(c: Command) -> String {
    let out = run(c);
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A stack name of this run's own: the local cloud is shared, and adoption
/// goes by the ownership tags.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", std::process::id())
}

fn tiny(name: &str) -> String {
    format!(
        "name: {name}\ncloud:\n  aws: {{ region: us-east-1 }}\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: {{ cidr_block: 10.40.0.0/16 }}\n"
    )
}

// 1. fmt from the repository root, and fmt's own output.

#[test]
fn fmt_check_from_the_repository_root_passes_and_says_what_it_looked_at() {
    let out = Command::new(BIN)
        .args(["fmt", "--check"])
        .current_dir(common::repo())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(!err.contains("left as it is"), "{err}");
    assert_eq!(err.lines().count(), 1, "one summary line: {err}");
    assert!(
        err.contains("stack and component file(s): all formatted")
            && err.contains("other YAML file(s) skipped"),
        "{err}"
    );
}

#[test]
fn fmt_skips_what_is_not_a_stack_lists_or_diffs_what_is_and_exits_3() {
    let d = Dir::new(&[
        (
            "stacks/ok.yaml",
            "name: ok\nresources:\n  vpc:\n    kind: aws.vpc\n",
        ),
        (
            "stacks/messy.yaml",
            "name: messy\nresources:\n    vpc:\n        kind: aws.vpc   \n",
        ),
        (
            "templates/t.yaml",
            "{%- if x %}\nkind: Ingress\n{%- endif %}\n",
        ),
        (".github/workflows/ci.yml", "on: push\njobs: {}\n"),
        ("ci.yml", "on: push\njobs: {}\n"),
    ]);
    let out = run(d.offline("", &["fmt", "--check"]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
    assert_eq!(stdout.trim(), "./stacks/messy.yaml");
    assert!(
        stderr.contains("2 stack and component file(s): 1 not formatted")
            && stderr.contains("2 other YAML file(s) skipped"),
        "{stderr}"
    );
    let out = run(d.offline("", &["fmt", "--check", "--diff"]));
    let diff = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        diff.contains("--- ./stacks/messy.yaml")
            && diff.contains("-    vpc:")
            && diff.contains("+  vpc:"),
        "{diff}"
    );
    // --check changed nothing; without it the file is rewritten.
    assert!(std::fs::read_to_string(d.path().join("stacks/messy.yaml"))
        .unwrap()
        .contains("    vpc:"));
    ok(d.offline("", &["fmt"]));
    assert_eq!(
        run(d.offline("", &["fmt", "--check"])).status.code(),
        Some(0)
    );
    // A file named on the command line is always read: not YAML is an error.
    let out = run(d.offline("", &["fmt", "--check", "templates/t.yaml"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("left as it is"));
}

// 2. validate reports every problem of a file in one run.

const ROUNDS: &str = "name: rounds
cloud: {aws: {region: us-east-1}}
resources:
  vpc:
    kind: aws.vpc
    properties:
      cidr_blok: 10.0.0.0/16
  thing:
    kind: aws.vpcc
    properties:
      cidr_block: 10.0.0.0/16
  sub:
    kind: aws.subnet
    depends_on: [thing]
    properties:
      vpc_id: ${vpcx.id}
      cidr_block: 10.0.1.0/24
      availability_zone: 7
      bogus: 1
";

#[test]
fn validate_reports_every_problem_of_a_file_at_once_and_a_typo_once() {
    let d = Dir::new(&[("rounds.yaml", ROUNDS)]);
    let out = run(d.offline("", &["validate", "rounds.yaml", "--json"]));
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let found: Vec<(u64, String)> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["line"].as_u64().unwrap(),
                p["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let lines: Vec<u64> = found.iter().map(|f| f.0).collect();
    assert_eq!(lines, vec![7, 9, 16, 18, 19], "in file order: {found:#?}");
    let all = format!("{found:?}");
    for expected in [
        "unknown property `cidr_blok`",
        "unknown resource kind `aws.vpcc`",
        "reference to `vpcx`",
        "`availability_zone` expects a string",
        "unknown property `bogus`",
    ] {
        assert!(all.contains(expected), "{expected} missing: {found:#?}");
    }
    // Not reported: the missing `cidr_block` the typo stands for, the
    // unloaded `thing` that `sub` depends on, `vpc_id` left unread.
    assert!(!all.contains("needs the property"), "{found:#?}");
    assert!(!all.contains("`depends_on` names"), "{found:#?}");
}

// 3. The state follows the stack file, not the current directory.

#[test]
fn the_state_follows_the_stack_file_from_any_directory() {
    let name = unique("fh-state");
    let d = Dir::new(&[("mine/tiny.yaml", &tiny(&name))]);
    ok(d.aws("", &["apply", "mine/tiny.yaml", "--auto-approve"]));
    assert!(d
        .path()
        .join(format!(
            "mine/.ralph-deploy/state/{name}/default/state.json"
        ))
        .exists());
    let out = run(d.aws("mine", &["plan", "tiny.yaml"]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains("No changes") && stdout.contains("1 unchanged"),
        "{stdout}"
    );
    assert!(!stdout.contains("adopt"), "{stdout}");
    ok(d.aws("mine", &["state", "list", "tiny.yaml"]))
        .contains("vpc\taws.vpc\tvpc-")
        .then_some(())
        .expect("state list from inside mine/");
    // A state an older version left relative to the current directory is
    // named, not silently replaced.
    let old = d.path().join(format!(".ralph-deploy/state/{name}/default"));
    std::fs::create_dir_all(&old).unwrap();
    std::fs::copy(
        d.path().join(format!(
            "mine/.ralph-deploy/state/{name}/default/state.json"
        )),
        old.join("state.json"),
    )
    .unwrap();
    let out = run(d.aws("", &["plan", "mine/tiny.yaml"]));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "has a state at .ralph-deploy/state/{name}/default (relative to the current directory)"
        )),
        "{stderr}"
    );
    ok(d.aws("", &["destroy", "mine/tiny.yaml", "--auto-approve"]));
}

#[test]
fn resources_adopted_as_they_are_are_counted_once() {
    let name = unique("fh-adopt");
    let d = Dir::new(&[("tiny.yaml", &tiny(&name))]);
    ok(d.aws("", &["apply", "tiny.yaml", "--auto-approve"]));
    std::fs::remove_dir_all(d.path().join(".ralph-deploy")).unwrap();
    let plan = ok(d.aws("", &["plan", "tiny.yaml"]));
    assert!(plan.contains("1 to adopt, 0 unchanged."), "{plan}");
    ok(d.aws("", &["destroy", "tiny.yaml", "--auto-approve"]));
}

// 4. Lists in the first plan, in their known parts.

#[test]
fn the_first_plan_shows_each_rules_known_fields() {
    let name = unique("fh-sg");
    let stack = format!(
        "name: {name}
cloud: {{aws: {{region: us-east-1}}}}
resources:
  vpc:
    kind: aws.vpc
    properties: {{ cidr_block: 10.41.0.0/16 }}
  web:
    kind: aws.security_group
    properties: {{ vpc_id: \"${{vpc.id}}\", name: web, description: web }}
  db:
    kind: aws.security_group
    properties:
      vpc_id: ${{vpc.id}}
      name: db
      description: db
      ingress:
        - {{ protocol: tcp, from_port: 5432, to_port: 5432, source_security_group_id: \"${{web.id}}\" }}
        - {{ protocol: tcp, from_port: 443, to_port: 443, cidr_block: 0.0.0.0/0 }}
"
    );
    let d = Dir::new(&[("sg.yaml", &stack)]);
    let plan = ok(d.aws("", &["plan", "sg.yaml"]));
    for shown in [
        "+ from_port = 5432",
        "+ source_security_group_id = (known after apply: web.id)",
        "+ cidr_block = \"0.0.0.0/0\"",
    ] {
        assert!(plan.contains(shown), "{shown} missing:\n{plan}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&ok(d.aws("", &["plan", "sg.yaml", "--json"]))).unwrap();
    let db = json["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "db")
        .unwrap();
    let ingress = db["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "ingress")
        .unwrap();
    assert_eq!(ingress["after_unknown"], true);
    assert_eq!(ingress["after_partial"][0]["from_port"], 5432);
    assert_eq!(
        ingress["after_partial"][0]["source_security_group_id"]["$unknown"],
        "web.id"
    );
    assert_eq!(ingress["after_partial"][1]["cidr_block"], "0.0.0.0/0");
}

// 5. A resource disabled in the environment is named as such.

#[test]
fn a_reference_to_a_disabled_resource_says_it_is_disabled() {
    let stack = "name: dis
cloud: {aws: {region: us-east-1}}
environments:
  staging:
    resources:
      replcia: { enabled: false }
      replica: { enabled: false }
resources:
  vpc:
    kind: aws.vpc
    properties: { cidr_block: 10.0.0.0/16 }
  replica:
    kind: aws.vpc
    properties: { cidr_block: 10.1.0.0/16 }
  user:
    kind: aws.subnet
    depends_on: [replica]
    properties:
      vpc_id: ${replica.id}
      cidr_block: 10.1.1.0/24
      availability_zone: us-east-1a
";
    let d = Dir::new(&[("dis.yaml", stack)]);
    let out = run(d.offline("", &["validate", "dis.yaml", "--env", "staging"]));
    let all = text(&out.stderr) + &text(&out.stdout);
    assert!(
        all.contains("overrides resource `replcia`") && all.contains("did you mean `replica`?"),
        "{all}"
    );
    assert!(
        all.contains("resource `replica` is disabled (`enabled: false`) in environment `staging`"),
        "{all}"
    );
    assert!(!all.contains("not a resource in this stack"), "{all}");
    assert!(all.contains("2 problem(s)"), "{all}");
}

// 6, 8, 9. Saved plans: the PR comment, RALPH_DEPLOY_ENV, applied twice.

#[test]
fn saved_plans_make_a_clean_comment_name_the_environment_variable_and_are_applied_once() {
    let name = unique("fh-plan");
    let stack = format!(
        "name: {name}\ncloud:\n  aws: {{ region: us-east-1 }}\nenvironments:\n  production: {{}}\n  staging: {{}}\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: {{ cidr_block: 10.42.0.0/16 }}\n"
    );
    let d = Dir::new(&[("s.yaml", &stack)]);
    let out = run(d.aws(
        "",
        &[
            "plan",
            "s.yaml",
            "--env",
            "production",
            "--format",
            "markdown",
            "--out",
            "prod.plan",
        ],
    ));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains("Saved the plan"));
    assert!(text(&out.stderr).contains("Saved the plan to prod.plan"));

    let mut c = d.aws("", &["apply", "prod.plan"]);
    c.env("RALPH_DEPLOY_ENV", "staging");
    let out = run(c);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(
            "RALPH_DEPLOY_ENV=staging is set, but this saved plan is for environment `production`"
        ),
        "{err}"
    );
    assert!(!err.contains("--env staging cannot be used"), "{err}");

    ok(d.aws("", &["apply", "prod.plan"]));
    let out = run(d.aws("", &["apply", "prod.plan"]));
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("was applied already"), "{err}");
    assert!(!err.contains("stale"), "{err}");
    ok(d.aws(
        "",
        &["destroy", "s.yaml", "--env", "production", "--auto-approve"],
    ));
}

// 7. status with nothing to check.

#[test]
fn status_with_nothing_to_check_says_so_and_succeeds() {
    let d = Dir::new(&[("tiny.yaml", &tiny("fh-status"))]);
    let out = run(d.offline("", &["status", "tiny.yaml"]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout)
        .starts_with("Nothing to check: tiny.yaml declares no kubernetes.orchestrator"));
    let out = run(d.offline("", &["status", "tiny.yaml", "--json"]));
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["healthy"], true);
    assert_eq!(v["services"], serde_json::json!([]));
    assert!(v["note"].as_str().unwrap().starts_with("Nothing to check"));
}

// 8. Unknown words.

#[test]
fn unknown_words_get_this_tools_spelling() {
    let d = Dir::new(&[("tiny.yaml", &tiny("fh-words"))]);
    let out = run(d.offline("", &["chek", "tiny.yaml"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("'check'"),
        "{}",
        text(&out.stderr)
    );

    for word in ["--yes", "-y", "--force"] {
        let out = run(d.offline("", &["apply", "tiny.yaml", word]));
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{err}");
        assert!(err.contains("write `--auto-approve`"), "{word}: {err}");
        assert!(!err.contains("-- --yes"), "{err}");
    }
    let out = run(d.offline("", &["plan", "tiny.yaml", "--dry-run"]));
    assert!(text(&out.stderr).contains("ralph-deploy plan STACK"));

    let out = run(d.offline("", &["completions"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("bash, elvish, fish, powershell, zsh"),
        "{}",
        text(&out.stderr)
    );
    for verb in ["apply", "destroy"] {
        let help = ok(d.offline("", &[verb, "--help"]));
        assert!(
            help.contains(&format!("ralph-deploy {verb} [OPTIONS] <STACK|PLANFILE>")),
            "{help}"
        );
    }
}

// 9. Silent or stale answers.

#[test]
fn no_state_and_no_file_are_answered_plainly() {
    let d = Dir::new(&[("tiny.yaml", &tiny("fh-silent"))]);
    let out = run(d.offline("", &["state", "list", "tiny.yaml"]));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout), "");
    assert!(
        text(&out.stderr).starts_with(
            "There is no state at .ralph-deploy/state/fh-silent/default/state.json yet"
        ),
        "{}",
        text(&out.stderr)
    );
    let out = run(d.offline("", &["validate", "nothere.yaml"]));
    let err = text(&out.stderr) + &text(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("nothere.yaml: cannot read the stack file"),
        "{err}"
    );
    assert!(!err.contains("nothere.yaml:1:1"), "{err}");
}

// 10. The language reference.

/// The examples of docs/language.md: each stack file with the component
/// files shown after it.
fn examples(page: &str) -> Vec<Vec<(String, String)>> {
    let mut out: Vec<Vec<(String, String)>> = Vec::new();
    let mut lines = page.lines().peekable();
    let mut pending_path: Option<String> = None;
    while let Some(line) = lines.next() {
        if let Some(p) = line.strip_prefix('`').and_then(|l| l.strip_suffix("`:")) {
            pending_path = Some(p.to_string());
            continue;
        }
        if line != "```yaml" {
            continue;
        }
        let mut body = String::new();
        for l in lines.by_ref() {
            if l == "```" {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        match pending_path.take() {
            Some(path) => out.last_mut().unwrap().push((path, body)),
            None if body.starts_with("name:") => out.push(vec![("stack.yaml".into(), body)]),
            None => {}
        }
    }
    out
}

#[test]
fn every_example_of_the_language_reference_is_a_valid_stack() {
    let page = std::fs::read_to_string(common::repo().join("docs/language.md")).unwrap();
    let all = examples(&page);
    assert!(all.len() >= 60, "{} examples", all.len());
    for files in all {
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(p, b)| (p.as_str(), b.as_str()))
            .collect();
        let d = Dir::new(&refs);
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&files[0].1).unwrap();
        let envs: Vec<String> = doc
            .get("environments")
            .and_then(|e| e.as_mapping())
            .map(|m| m.keys().map(|k| k.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        let runs: Vec<Vec<&str>> = if envs.is_empty() {
            vec![vec!["validate", "stack.yaml"]]
        } else {
            envs.iter()
                .map(|e| vec!["validate", "stack.yaml", "--env", e.as_str()])
                .collect()
        };
        for args in runs {
            let out = run(d.offline("", &args));
            assert!(
                out.status.success(),
                "an example of docs/language.md does not validate ({args:?}):\n{}\n{}",
                files[0].1,
                text(&out.stderr)
            );
        }
    }
}

#[test]
fn a_first_stack_from_the_docs_alone_validates_plans_and_applies() {
    let page = std::fs::read_to_string(common::repo().join("docs/language.md")).unwrap();
    let first = page
        .split("## Your first stack")
        .nth(1)
        .expect("the page has a first stack");
    let yaml = first
        .split("```yaml\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .unwrap();
    let commands: Vec<Vec<String>> = first
        .split("```sh\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().skip(1).map(str::to_string).collect())
        .collect();
    assert_eq!(commands.len(), 4);
    // Another name than the page's, so that runs do not share tags.
    let name = unique("first");
    let d = Dir::new(&[(
        "first.yaml",
        &yaml.replacen("name: first", &format!("name: {name}"), 1),
    )]);
    let mut outputs = Vec::new();
    for args in &commands {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(d.aws("", &args));
        let both = text(&out.stdout) + &text(&out.stderr);
        assert!(out.status.success(), "{args:?}: {both}");
        outputs.push(both);
    }
    assert!(outputs[1].contains("Plan: 3 to create"), "{}", outputs[1]);
    assert!(outputs[2].contains("3 created"), "{}", outputs[2]);
    assert!(outputs[3].contains("subnet-"), "{}", outputs[3]);
    assert!(PathBuf::from(d.path())
        .join(format!(".ralph-deploy/state/{name}/default/state.json"))
        .exists());
    ok(d.aws("", &["destroy", "first.yaml", "--auto-approve"]));
}
