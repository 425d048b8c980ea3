//! The CI examples in docs/ci run as written: the GitHub Actions workflow
//! passes actionlint (with shellcheck on its scripts), the GitLab pipeline
//! passes GitLab's own schema, and then the jobs each event selects run
//! their scripts in order against the local cloud, the way a runner would:
//! a pull request posts the Markdown plan, a merge applies it, a tag rolls
//! out the tagged image; then the same through the GitLab pipeline.
//!
//! What a hosted runner provides is provided here: a checkout, the
//! runner's files (GITHUB_PATH, GITHUB_STEP_SUMMARY, RUNNER_TEMP), the
//! contexts the workflow reads (secrets, vars, github), cloud credentials
//! in the environment (what configure-aws-credentials would export), and
//! stand-ins for the code hosts' APIs (`gh`, the GitLab notes endpoint).
//! `uses:` steps are not run.

use crate::common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{repo, text, World};
use serde_yaml_ng::Value as Yaml;

fn lint_bin(name: &str) -> PathBuf {
    let dir = std::env::var("RALPH_TEST_CI_LINT")
        .expect("RALPH_TEST_CI_LINT is not set: run the tests with scripts/test");
    PathBuf::from(dir).join(name)
}

fn actionlint(file: &Path) -> std::process::Output {
    let bin = lint_bin("actionlint");
    // shellcheck from the same place checks the `run:` scripts.
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(&bin)
        .arg(file)
        .env("PATH", path)
        .output()
        .unwrap()
}

#[test]
fn the_ci_examples_pass_their_linters_and_the_linters_catch_mistakes() {
    let gh = repo().join("docs/ci/github-deploy.yml");
    let out = actionlint(&gh);
    assert!(
        out.status.success(),
        "actionlint: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let gl = repo().join("docs/ci/gitlab-ci.yml");
    let out = Command::new(lint_bin("check-jsonschema"))
        .args(["--builtin-schema", "vendor.gitlab-ci"])
        .arg(&gl)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // The linters are not rubber stamps: a typo in a context, a step
    // input that does not exist, a script bug, a stage that does not exist.
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(&gh).unwrap();
    for (from, to) in [
        ("github.ref_name", "github.ref_nam"),
        ("role-to-assume:", "role-to-asume:"),
        ("\"${TAG#v}\"", "${TAG#v}"),
    ] {
        assert!(original.contains(from), "{from}");
        let bad = dir.path().join("bad.yml");
        std::fs::write(&bad, original.replacen(from, to, 1)).unwrap();
        assert!(!actionlint(&bad).status.success(), "actionlint missed {to}");
    }
    let bad = dir.path().join("bad-gitlab.yml");
    let gl_text = std::fs::read_to_string(&gl).unwrap();
    std::fs::write(
        &bad,
        gl_text.replacen("    when: always", "    when: sometimes", 1),
    )
    .unwrap();
    let out = Command::new(lint_bin("check-jsonschema"))
        .args(["--builtin-schema", "vendor.gitlab-ci"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "the GitLab schema missed a bad `when`"
    );
}

/// A checkout of the repository, as actions/checkout leaves it: the
/// repository's files (linked), and room for what the jobs write.
fn checkout() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo()).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if name == ".git" || name == "target" {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), dir.path().join(&name)).unwrap();
    }
    dir
}

/// `${{ ... }}` with what the workflow reads: paths into `ctx`, quoted
/// strings, `a || b`, `==`, `&&` and `startsWith(a, 'b')`.
fn eval(expr: &str, ctx: &BTreeMap<String, String>) -> String {
    let expr = expr.trim();
    if let Some((a, b)) = split_top(expr, "&&") {
        let t = truthy(&eval(a, ctx)) && truthy(&eval(b, ctx));
        return if t { "true".into() } else { String::new() };
    }
    if let Some((a, b)) = split_top(expr, "||") {
        let a = eval(a, ctx);
        return if truthy(&a) { a } else { eval(b, ctx) };
    }
    if let Some((a, b)) = split_top(expr, "==") {
        return if eval(a, ctx) == eval(b, ctx) {
            "true".into()
        } else {
            String::new()
        };
    }
    if let Some(args) = expr
        .strip_prefix("startsWith(")
        .and_then(|r| r.strip_suffix(')'))
    {
        let (a, b) = args.split_once(',').unwrap();
        return if eval(a, ctx).starts_with(&eval(b, ctx)) {
            "true".into()
        } else {
            String::new()
        };
    }
    if let Some(s) = expr.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return s.to_string();
    }
    ctx.get(expr).cloned().unwrap_or_else(|| {
        panic!("the workflow reads `{expr}`, which this runner does not provide")
    })
}

fn split_top<'a>(s: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let mut depth = 0i32;
    let mut quoted = false;
    let b = s.as_bytes();
    for i in 0..b.len() {
        match b[i] {
            b'\'' => quoted = !quoted,
            b'(' if !quoted => depth += 1,
            b')' if !quoted => depth -= 1,
            _ if !quoted && depth == 0 && s[i..].starts_with(op) => {
                return Some((&s[..i], &s[i + op.len()..]));
            }
            _ => {}
        }
    }
    None
}

fn truthy(s: &str) -> bool {
    !s.is_empty() && s != "false"
}

/// Replaces every `${{ ... }}` in `s`.
fn interpolate(s: &str, ctx: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${{") {
        out.push_str(&rest[..i]);
        let end = rest[i..].find("}}").expect("closed expression") + i;
        out.push_str(&eval(&rest[i + 3..end], ctx));
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

fn env_of(node: &Yaml, ctx: &BTreeMap<String, String>) -> Vec<(String, String)> {
    node.get("env")
        .and_then(Yaml::as_mapping)
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Yaml::String(s) => s.clone(),
                        other => serde_yaml_ng::to_string(other).unwrap().trim().to_string(),
                    };
                    (k.as_str().unwrap().to_string(), interpolate(&v, ctx))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What every job gets from the "runner": the local cloud's settings (as
/// a configured runner or configure-aws-credentials would give them) and
/// the stand-in tools first on PATH.
struct Runner {
    checkout: tempfile::TempDir,
    base: Vec<(String, String)>,
    tools: tempfile::TempDir,
}

impl Runner {
    fn command(
        &self,
        script: &Path,
        extra: &[(String, String)],
        path_prefix: &[String],
    ) -> Command {
        let mut c = Command::new("bash");
        c.args(["--noprofile", "--norc", "-eo", "pipefail"])
            .arg(script)
            .current_dir(self.checkout.path());
        let mut path: Vec<String> = path_prefix.to_vec();
        path.push(self.tools.path().display().to_string());
        path.push(std::env::var("PATH").unwrap_or_default());
        c.env("PATH", path.join(":"));
        for (k, v) in self.base.iter().chain(extra) {
            c.env(k, v);
        }
        c
    }

    /// Runs the workflow's jobs whose `if:` holds in `ctx`; returns their names.
    fn github(&self, workflow: &Yaml, ctx: &BTreeMap<String, String>) -> Vec<String> {
        let wf_env = env_of(workflow, ctx);
        let mut ran = Vec::new();
        for (name, job) in workflow["jobs"].as_mapping().unwrap() {
            let name = name.as_str().unwrap();
            if let Some(cond) = job.get("if").and_then(Yaml::as_str) {
                if !truthy(&eval(cond, ctx)) {
                    continue;
                }
            }
            ran.push(name.to_string());
            let temp = tempfile::tempdir().unwrap();
            let files: Vec<(String, String)> = [
                "GITHUB_PATH",
                "GITHUB_ENV",
                "GITHUB_STEP_SUMMARY",
                "GITHUB_OUTPUT",
            ]
            .iter()
            .map(|f| {
                let p = temp.path().join(f.to_lowercase());
                std::fs::write(&p, "").unwrap();
                (f.to_string(), p.display().to_string())
            })
            .collect();
            let mut env: Vec<(String, String)> = wf_env.clone();
            env.extend(env_of(job, ctx));
            env.extend(files.clone());
            env.push(("RUNNER_TEMP".into(), temp.path().display().to_string()));
            env.push(("GITHUB_REF".into(), ctx["github.ref"].clone()));
            env.push(("GITHUB_REF_NAME".into(), ctx["github.ref_name"].clone()));
            env.push(("GITHUB_EVENT_NAME".into(), ctx["github.event_name"].clone()));
            env.push(("CI".into(), "true".into()));
            for (i, step) in job["steps"].as_sequence().unwrap().iter().enumerate() {
                let Some(run) = step.get("run").and_then(Yaml::as_str) else {
                    continue;
                };
                let mut step_env = env.clone();
                step_env.extend(env_of(step, ctx));
                // What earlier steps added to PATH and the environment.
                let path_prefix: Vec<String> = std::fs::read_to_string(&files[0].1)
                    .unwrap()
                    .lines()
                    .rev()
                    .map(str::to_string)
                    .collect();
                for line in std::fs::read_to_string(&files[1].1).unwrap().lines() {
                    if let Some((k, v)) = line.split_once('=') {
                        step_env.push((k.into(), v.into()));
                    }
                }
                let script = temp.path().join(format!("step{i}.sh"));
                std::fs::write(&script, interpolate(run, ctx)).unwrap();
                let started = std::time::Instant::now();
                let out = self
                    .command(&script, &step_env, &path_prefix)
                    .output()
                    .unwrap();
                let label = step.get("name").and_then(Yaml::as_str).unwrap_or("run");
                println!(
                    "github {name} / {label}: {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                assert!(
                    out.status.success(),
                    "{name} / {label} failed ({:?}):\n{}\n{}",
                    out.status.code(),
                    text(&out.stdout),
                    text(&out.stderr)
                );
            }
            // The job summary is what a reviewer sees on the run's page.
            let summary = std::fs::read_to_string(&files[2].1).unwrap();
            if name == "plan" {
                assert!(summary.contains("### ralph-deploy plan"), "{summary}");
            }
        }
        ran
    }

    /// Runs the pipeline's jobs whose `rules:` match `vars`, GitLab style:
    /// before_script then script, one shell, stop at the first failure.
    fn gitlab(&self, pipeline: &Yaml, vars: &BTreeMap<String, String>) -> Vec<String> {
        let expand = |s: &str, known: &BTreeMap<String, String>| -> String {
            let mut out = s.to_string();
            for (k, v) in known {
                out = out.replace(&format!("${{{k}}}"), v);
            }
            out
        };
        let mut env = vars.clone();
        for (k, v) in pipeline["variables"].as_mapping().unwrap() {
            let v = expand(v.as_str().unwrap(), vars);
            env.insert(k.as_str().unwrap().to_string(), v);
        }
        let before: Vec<String> = pipeline["default"]["before_script"]
            .as_sequence()
            .map(|s| s.iter().map(|l| l.as_str().unwrap().to_string()).collect())
            .unwrap_or_default();
        let mut ran = Vec::new();
        for (name, job) in pipeline.as_mapping().unwrap() {
            let name = name.as_str().unwrap();
            let Some(rules) = job.get("rules").and_then(Yaml::as_sequence) else {
                continue;
            };
            let matches = rules
                .iter()
                .any(|r| gitlab_if(r["if"].as_str().unwrap(), &env));
            if !matches {
                continue;
            }
            ran.push(name.to_string());
            let mut script = String::new();
            for line in before.iter().chain(
                job["script"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|l| l.as_str().unwrap())
                    .map(str::to_string)
                    .collect::<Vec<_>>()
                    .iter(),
            ) {
                script.push_str(line);
                script.push('\n');
            }
            let temp = tempfile::tempdir().unwrap();
            let file = temp.path().join("job.sh");
            std::fs::write(&file, script).unwrap();
            let extra: Vec<(String, String)> = env.clone().into_iter().collect();
            let started = std::time::Instant::now();
            let out = self.command(&file, &extra, &[]).output().unwrap();
            println!("gitlab {name}: {:.1}s", started.elapsed().as_secs_f64());
            assert!(
                out.status.success(),
                "gitlab {name} failed ({:?}):\n{}\n{}",
                out.status.code(),
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        ran
    }
}

/// GitLab's `rules: if:` in the forms the pipeline uses.
fn gitlab_if(cond: &str, vars: &BTreeMap<String, String>) -> bool {
    let value = |t: &str| -> String {
        let t = t.trim();
        if let Some(name) = t.strip_prefix('$') {
            vars.get(name).cloned().unwrap_or_default()
        } else {
            t.trim_matches('"').to_string()
        }
    };
    if let Some((a, re)) = cond.split_once("=~") {
        let re = re.trim().trim_matches('/');
        let prefix = re.strip_prefix('^').expect("an anchored pattern");
        return value(a).starts_with(prefix);
    }
    let (a, b) = cond.split_once("==").expect("a comparison");
    let a = value(a);
    !a.is_empty() && a == value(b)
}

/// A stand-in for the GitLab API: records the notes posted to it.
fn gitlab_api() -> (String, std::sync::mpsc::Receiver<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/api/v4", listener.local_addr().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            // Headers, then as much body as Content-Length says.
            loop {
                let n = conn.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let t = String::from_utf8_lossy(&buf).to_string();
                if let Some(h) = t.find("\r\n\r\n") {
                    let len = t[..h]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if buf.len() >= h + 4 + len {
                        break;
                    }
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&buf).to_string());
            let _ = conn.write_all(b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{\"id\":1}\n");
        }
    });
    (url, rx)
}

/// `gh`, as far as the workflow uses it: `pr comment N [--edit-last]
/// --body-file F`. Editing fails when there is no comment yet, as it does.
fn gh_stub(dir: &Path, record: &Path) {
    let script = format!(
        "#!/usr/bin/env bash\nset -e\n[ \"$1 $2\" = \"pr comment\" ] || {{ echo \"gh stand-in: $* is not supported\" >&2; exit 2; }}\nbody=\"\"\nedit=0\nwhile [ $# -gt 0 ]; do case \"$1\" in --body-file) body=\"$2\"; shift;; --edit-last) edit=1;; esac; shift; done\nif [ \"$edit\" = 1 ] && [ ! -f '{rec}' ]; then echo 'no comments found for current user' >&2; exit 1; fi\n[ -n \"$GH_TOKEN\" ] || {{ echo 'gh: no GH_TOKEN' >&2; exit 4; }}\ncp \"$body\" '{rec}'\n",
        rec = record.display()
    );
    let p = dir.join("gh");
    std::fs::write(&p, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

const STATE_KEY: &str = "3c1f9a7e5b2d4c6a8e0f1b3d5a7c9e2f4b6d8a0c2e4f6b8d0a2c4e6f8b0d2a4c";
const API_KEY: &str = "ci-example-anthropic-key-not-real";

#[tokio::test(flavor = "multi_thread")]
async fn the_ci_examples_plan_apply_and_release_against_the_local_cloud() {
    let name = format!("ci{}", std::process::id());
    // The per-test settings a World gives a stack (its namespace, its
    // database role, the local cluster's kubeconfig), for the shipped file.
    let world = World::from_stack("aws-production.yaml", &name);
    let db = common::fresh_database(&name).await;
    let bucket = format!("{name}-state");
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&world.sdk_config().await)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket().bucket(&bucket).send().await.unwrap();

    let tools = tempfile::tempdir().unwrap();
    let comment = tools.path().join("comment.md");
    gh_stub(tools.path(), &comment);
    let install_dir = tools.path().join("bin");
    let mut base: Vec<(String, String)> = world.env.clone();
    base.extend([
        ("AWS_ENDPOINT_URL".into(), world.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
        (
            "RALPH_DEPLOY_VAR_database_tunnel_url".into(),
            format!("{db}?sslmode=disable"),
        ),
        ("RALPH_DEPLOY_VAR_bucket_suffix".into(), name.clone()),
        ("RALPH_DEPLOY_VAR_image_tag".into(), "1.0.0".into()),
        // The tests built a debug binary already: install links that one.
        ("RALPH_DEPLOY_BUILD_PROFILE".into(), "dev".into()),
        (
            "RALPH_DEPLOY_INSTALL_DIR".into(),
            install_dir.display().to_string(),
        ),
    ]);
    let runner = Runner {
        checkout: checkout(),
        base,
        tools,
    };

    // ---- GitHub Actions
    let workflow: Yaml = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("docs/ci/github-deploy.yml")).unwrap(),
    )
    .unwrap();
    let ctx = |event: &str, git_ref: &str| -> BTreeMap<String, String> {
        let ref_name = git_ref.rsplit('/').next().unwrap().to_string();
        [
            ("github.event_name", event.to_string()),
            ("github.ref", git_ref.to_string()),
            ("github.ref_name", ref_name),
            ("github.token", "gh-token".into()),
            ("github.event.pull_request.number", "17".into()),
            ("vars.STATE_BUCKET", bucket.clone()),
            ("vars.API_ALLOWED_CIDRS", "[\"0.0.0.0/0\"]".into()),
            (
                "vars.AWS_ROLE_ARN",
                "arn:aws:iam::123456789012:role/deploy".into(),
            ),
            ("secrets.RALPH_DEPLOY_STATE_KEY", STATE_KEY.into()),
            ("secrets.ANTHROPIC_API_KEY", API_KEY.into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    };

    // A pull request: the plan is posted, with everything to create.
    let ran = runner.github(&workflow, &ctx("pull_request", "refs/pull/17/merge"));
    assert_eq!(ran, ["plan"]);
    let posted = std::fs::read_to_string(&comment).expect("a comment was posted");
    assert!(
        posted.starts_with("### ralph-deploy plan: `ralph` / `production`"),
        "{posted}"
    );
    assert!(posted.contains("<details>"), "{posted}");
    assert!(!posted.contains(API_KEY), "the API key in the comment");
    // A Markdown parser reads it as a heading, a summary table, collapsed
    // sections (HTML) and `diff` code blocks.
    let mut heading = false;
    let mut table_cells = 0;
    let mut html = 0;
    let mut diff_blocks = 0;
    for event in pulldown_cmark::Parser::new_ext(&posted, pulldown_cmark::Options::ENABLE_TABLES) {
        use pulldown_cmark::{CodeBlockKind, Event, Tag};
        match event {
            Event::Start(Tag::Heading { .. }) => heading = true,
            Event::Start(Tag::TableCell) => table_cells += 1,
            Event::Html(h) | Event::InlineHtml(h) if h.contains("details") => html += 1,
            Event::Start(Tag::CodeBlock(CodeBlockKind::Fenced(lang))) if &*lang == "diff" => {
                diff_blocks += 1
            }
            _ => {}
        }
    }
    assert!(heading && table_cells >= 14, "{posted}");
    assert!(
        html >= 40 && diff_blocks >= 40,
        "{html} {diff_blocks}: {posted}"
    );

    // Merged: applied behind the environment, then nothing is left to do.
    let ran = runner.github(&workflow, &ctx("push", "refs/heads/main"));
    assert_eq!(ran, ["apply"]);
    let listed = s3.list_objects_v2().bucket(&bucket).send().await.unwrap();
    let keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    assert!(keys.iter().any(|k| k.ends_with("state.json")), "{keys:?}");

    // A release tag: the tagged image is rolled out.
    let ran = runner.github(&workflow, &ctx("push", "refs/tags/v1.1.0"));
    assert_eq!(ran, ["release"]);
    assert_eq!(image(&name).await, "1.1.0");
    let ran = runner.github(&workflow, &ctx("push", "refs/heads/main"));
    assert_eq!(ran, ["apply"]);
    assert_eq!(
        image(&name).await,
        "1.1.0",
        "the merge rolled the release back"
    );

    // ---- GitLab CI, on the same state
    let pipeline: Yaml = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join("docs/ci/gitlab-ci.yml")).unwrap(),
    )
    .unwrap();
    let (api, notes) = gitlab_api();
    let vars = |source: &str, branch: &str, tag: &str| -> BTreeMap<String, String> {
        [
            ("CI_PIPELINE_SOURCE", source),
            ("CI_COMMIT_BRANCH", branch),
            ("CI_COMMIT_TAG", tag),
            ("CI_DEFAULT_BRANCH", "main"),
            ("CI_API_V4_URL", api.as_str()),
            ("CI_PROJECT_ID", "42"),
            ("CI_MERGE_REQUEST_IID", "7"),
            ("GITLAB_API_TOKEN", "gl-token"),
            ("STATE_BUCKET", bucket.as_str()),
            ("API_ALLOWED_CIDRS", "[\"0.0.0.0/0\"]"),
            ("RALPH_DEPLOY_STATE_KEY", STATE_KEY),
            ("ANTHROPIC_API_KEY", API_KEY),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    let ran = runner.gitlab(&pipeline, &vars("merge_request_event", "", ""));
    assert_eq!(ran, ["plan"]);
    let note = notes
        .recv_timeout(std::time::Duration::from_secs(5))
        .unwrap();
    assert!(
        note.starts_with("POST /api/v4/projects/42/merge_requests/7/notes"),
        "{note}"
    );
    assert!(note.contains("PRIVATE-TOKEN: gl-token"), "{note}");
    assert!(
        note.contains("ralph-deploy+plan"),
        "the plan is the note's body: {note}"
    );
    // An infrastructure change merged after a release keeps the release.
    let ran = runner.gitlab(&pipeline, &vars("push", "main", ""));
    assert_eq!(ran, ["apply"]);
    assert_eq!(
        image(&name).await,
        "1.1.0",
        "the merge rolled the release back"
    );
    let ran = runner.gitlab(&pipeline, &vars("push", "", "v1.2.0"));
    assert_eq!(ran, ["release"]);
    assert_eq!(image(&name).await, "1.2.0");

    // Leave nothing behind in the shared local cloud.
    let mut c = Command::new(install_dir.join("ralph-deploy"));
    c.args([
        "destroy",
        "stacks/aws-production.yaml",
        "--auto-approve",
        "--allow-protected",
    ])
    .current_dir(runner.checkout.path())
    .env("RALPH_DEPLOY_ENV", "production")
    .env("RALPH_DEPLOY_STATE", format!("s3://{bucket}/ralph-deploy"))
    .env("RALPH_DEPLOY_STATE_KEY", STATE_KEY)
    .env("ANTHROPIC_API_KEY", API_KEY)
    .env("AWS_REGION", "us-east-1");
    for (k, v) in &runner.base {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// The orchestrator's image tag in the stack's namespace.
async fn image(namespace: &str) -> String {
    let api = kube::api::Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(
        common::kube_client().await,
        namespace,
    );
    let list = api.list(&Default::default()).await.unwrap();
    let images: Vec<String> = list
        .items
        .iter()
        .flat_map(|d| d.spec.template.spec.as_ref().unwrap().containers.iter())
        .filter_map(|c| c.image.clone())
        .filter(|i| i.contains("ralph-orchestrator"))
        .collect();
    assert_eq!(images.len(), 1, "{images:?}");
    images[0].rsplit(':').next().unwrap().to_string()
}
