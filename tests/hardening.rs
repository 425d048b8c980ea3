//! Hardening against the local cloud: saved plans treated as untrusted input,
//! a destroy that always finishes, a hanging endpoint, hostile stack files.

use crate::common;

use std::time::{Duration, Instant};

use common::{text, World};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn state_of(w: &World) -> Value {
    common::state_json(w)
}

/// Writes `plan` as a plan file whose digest matches its (edited) content,
/// as someone who knows the format could: only the re-derivation at apply
/// time (or a signature) can catch such an edit.
fn write_redigested(path: &std::path::Path, mut file: Value) {
    let obj = file.as_object_mut().unwrap();
    obj.remove("digest");
    obj.remove("signature");
    fn sorted(v: Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut entries: Vec<(String, Value)> = m.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
            }
            Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
            other => other,
        }
    }
    let body = serde_json::to_vec(&sorted(file.clone())).unwrap();
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&body)));
    file["digest"] = json!(digest);
    std::fs::write(path, serde_json::to_vec_pretty(&file).unwrap()).unwrap();
}

const ACTIONS: [&str; 5] = ["no_op", "create", "update", "replace", "delete"];

#[tokio::test(flavor = "multi_thread")]
async fn a_tampered_saved_plan_is_refused_or_does_exactly_what_the_original_would() {
    let w = World::from_stack(
        "aws-network.yaml",
        &format!("t-tamper-{}", std::process::id()),
    );
    w.ok("apply", &["--auto-approve"]);
    // A plan with an update (a tag), two replacements (a subnet's CIDR and
    // the association that follows it), no-ops and a protected resource.
    w.edit("default: platform", "default: data-team");
    w.edit("${var.net}.11.0/24", "${var.net}.12.0/24");
    let plan_path = w.dir.path().join("prod.plan");
    w.ok("plan", &["--out", plan_path.to_str().unwrap()]);
    let original: Value = serde_json::from_slice(&std::fs::read(&plan_path).unwrap()).unwrap();
    let changes = original["plan"]["changes"].as_array().unwrap().clone();
    assert!(changes.len() > 15, "{}", changes.len());
    assert!(changes.iter().any(|c| c["protect"] == true));

    let cloud_before = w.tagged().await;
    let serial_before = state_of(&w)["serial"].clone();
    let tampered = w.dir.path().join("tampered.plan");
    let mut mutations: Vec<(String, Value)> = Vec::new();
    let n = changes.len();
    for (i, c) in changes.iter().enumerate() {
        let addr = c["address"].as_str().unwrap().to_string();
        let action = c["action"].as_str().unwrap();
        for other in ACTIONS.iter().filter(|a| **a != action) {
            let mut f = original.clone();
            f["plan"]["changes"][i]["action"] = json!(other);
            mutations.push((format!("{addr}: action {action} -> {other}"), f));
        }
        let mut f = original.clone();
        f["plan"]["changes"][i]["protect"] = json!(!c["protect"].as_bool().unwrap_or(false));
        mutations.push((format!("{addr}: protect flipped"), f));
        let j = (i + 1) % n;
        let mut f = original.clone();
        f["plan"]["changes"][i]["id"] = changes[j]["id"].clone();
        mutations.push((format!("{addr}: id of {}", changes[j]["address"]), f));
        let mut f = original.clone();
        f["plan"]["changes"][i]["address"] = changes[j]["address"].clone();
        f["plan"]["changes"][j]["address"] = json!(addr);
        mutations.push((
            format!("{addr}: address swapped with {}", changes[j]["address"]),
            f,
        ));
        if let Some(first) = c["attributes"].as_array().and_then(|a| a.first()) {
            let mut f = original.clone();
            f["plan"]["changes"][i]["attributes"][0]["after"] = json!("tampered");
            mutations.push((format!("{addr}: value of {}", first["name"]), f));
        }
    }
    let mut f = original.clone();
    f["plan"]["environment"] = json!("staging");
    mutations.push(("environment".into(), f));
    let mut f = original.clone();
    f["plan"]["destroy"] = json!(true);
    mutations.push(("destroy flag".into(), f));
    let mut f = original.clone();
    f["plan"]["changes"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["address"] != "private_b_routes");
    mutations.push(("a change dropped".into(), f));

    // Every change has its four other actions, a flipped protection, a
    // foreign id and a swapped address at least: the corpus cannot shrink
    // unnoticed.
    assert!(
        mutations.len() >= 7 * n + 3,
        "{} mutations",
        mutations.len()
    );
    let started = Instant::now();
    for (what, file) in &mutations {
        // As edited (the digest no longer matches) and with a recomputed digest.
        for redigest in [false, true] {
            if redigest {
                write_redigested(&tampered, file.clone());
            } else {
                std::fs::write(&tampered, serde_json::to_vec_pretty(file).unwrap()).unwrap();
            }
            let out = w
                .cmd(&["apply", tampered.to_str().unwrap(), "--auto-approve"])
                .output()
                .unwrap();
            let err = text(&out.stderr);
            assert_eq!(
                out.status.code(),
                Some(1),
                "{what} (redigested: {redigest}) was applied:\n{err}\n{}",
                text(&out.stdout)
            );
            assert!(
                err.contains("nothing was") || err.contains("Nothing was") || err.contains("stale"),
                "{what}: the refusal must say nothing was changed: {err}"
            );
            if !redigest {
                assert!(err.contains("was changed after"), "{what}: {err}");
            }
            if std::env::var_os("SHOW_REFUSALS").is_some() {
                eprintln!("{what} ({redigest}): {}", err.lines().last().unwrap_or(""));
            }
        }
    }
    println!(
        "{} tampered plans refused in {:.1}s",
        mutations.len() * 2,
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        state_of(&w)["serial"],
        serial_before,
        "the state was written"
    );
    assert_eq!(w.tagged().await, cloud_before, "the cloud was changed");

    // Flags that a saved plan fixes are refused, not ignored.
    for extra in [["--env", "staging"], ["--var", "net=10.9"]] {
        let out = w
            .cmd(&[
                "apply",
                plan_path.to_str().unwrap(),
                extra[0],
                extra[1],
                "--auto-approve",
            ])
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("cannot be used with a saved plan"), "{err}");
    }

    // Edits that do not change what apply does (the reason, the cloud's
    // report of current values) apply exactly as the original plan.
    let mut harmless = original.clone();
    for c in harmless["plan"]["changes"].as_array_mut().unwrap() {
        c["reason"] = json!("edited");
        if let Some(cur) = c.get_mut("current").and_then(Value::as_object_mut) {
            cur.insert("cidr_block".into(), json!("10.99.0.0/16"));
        }
    }
    write_redigested(&tampered, harmless);
    let out = w
        .cmd(&["apply", tampered.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "a saved plan is its own approval, and this one is the original's: {}",
        text(&out.stderr)
    );
    let after = w.tagged().await;
    let subnets = |v: &Vec<(String, String)>| {
        v.iter()
            .filter(|(k, _)| k == "subnet")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(subnets(&after).len(), 4);
    assert_ne!(
        subnets(&after),
        subnets(&cloud_before),
        "private_b was replaced"
    );
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_plans_need_the_key_and_destroy_plans_need_destroy() {
    let mut w = World::from_stack(
        "aws-network.yaml",
        &format!("t-signed-{}", std::process::id()),
    );
    w.env
        .push(("RALPH_DEPLOY_PLAN_KEY".into(), "first key".into()));
    let plan_path = w.dir.path().join("signed.plan");
    w.ok("plan", &["--out", plan_path.to_str().unwrap()]);
    let file: Value = serde_json::from_slice(&std::fs::read(&plan_path).unwrap()).unwrap();
    assert!(file["signature"]
        .as_str()
        .unwrap()
        .starts_with("hmac-sha256:"));

    // An edit with a recomputed digest but no key cannot be signed.
    let tampered = w.dir.path().join("tampered.plan");
    let mut edited = file.clone();
    edited["plan"]["changes"][0]["action"] = json!("no_op");
    write_redigested(&tampered, edited);
    let out = w
        .cmd(&["apply", tampered.to_str().unwrap(), "--auto-approve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is not signed"),
        "{}",
        text(&out.stderr)
    );

    // Another key: refused.
    let out = w
        .cmd(&["apply", plan_path.to_str().unwrap(), "--auto-approve"])
        .env("RALPH_DEPLOY_PLAN_KEY", "second key")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("does not match"),
        "{}",
        text(&out.stderr)
    );
    assert!(w.tagged().await.is_empty());

    // A destroy plan is applied by destroy only.
    let dplan = w.dir.path().join("destroy.plan");
    w.ok("plan", &["--destroy", "--out", dplan.to_str().unwrap()]);
    let out = w
        .cmd(&["apply", dplan.to_str().unwrap(), "--auto-approve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is a destroy plan"),
        "{}",
        text(&out.stderr)
    );

    // The right key: applied, without asking (the plan is the approval).
    let out = w
        .cmd(&["apply", plan_path.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!w.tagged().await.is_empty());
    // The old destroy plan was made against an empty state: stale now.
    let out = w
        .cmd(&["destroy", dplan.to_str().unwrap(), "--auto-approve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("made before the state"),
        "{}",
        text(&out.stderr)
    );
    w.ok("plan", &["--destroy", "--out", dplan.to_str().unwrap()]);
    // The same plan against another state (another lineage): refused,
    // saying so (not "the serial changed").
    let elsewhere = w.dir.path().join("other-state");
    let out = w
        .cmd(&["destroy", dplan.to_str().unwrap(), "--auto-approve"])
        .env("RALPH_DEPLOY_STATE_DIR", &elsewhere)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("made against another state"),
        "{}",
        text(&out.stderr)
    );
    let out = w
        .cmd(&["destroy", dplan.to_str().unwrap(), "--allow-protected"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(w.tagged().await.is_empty());
}

/// A TCP listener that accepts connections and never answers.
fn silent_endpoint() -> (std::net::TcpListener, String) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    (l, url)
}

/// Keeps a silent endpoint's accepted sockets open for `secs`.
fn hold_silent(listener: std::net::TcpListener, secs: u64) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut socks = Vec::new();
        listener.set_nonblocking(true).unwrap();
        let until = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < until {
            if let Ok((s, _)) = listener.accept() {
                socks.push(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })
}

/// Runs `cmd` (bound 12 s) against a party that never answers: the first
/// line comes within 10 s, the failure within the bound (plus the time to
/// say so), and the messages name `named` and the setting; no library's
/// log line and no other cloud's knob appear.
fn speaks_and_fails_within_the_bound(mut cmd: std::process::Command, named: &str, not: &[&str]) {
    let started = Instant::now();
    let mut child = cmd
        .env("RALPH_DEPLOY_API_TIMEOUT", "12")
        .env_remove("RALPH_DEPLOY_LOG")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut first_line_at = None;
    let mut all = String::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        if first_line_at.is_none() && !line.trim().is_empty() {
            first_line_at = Some(started.elapsed());
        }
        all.push_str(&line);
        all.push('\n');
    }
    let status = child.wait().unwrap();
    let total = started.elapsed();
    println!("first line after {first_line_at:?}, failed after {total:?}:\n{all}");
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(first_line_at.unwrap() < Duration::from_secs(10), "{all}");
    assert!(total < Duration::from_secs(25), "took {total:?}: {all}");
    assert!(all.contains(named), "the endpoint is named: {all}");
    assert!(all.contains("RALPH_DEPLOY_API_TIMEOUT"), "{all}");
    // The failure itself (not only the progress lines) names both.
    let last = all
        .lines()
        .filter(|l| l.contains("error"))
        .last()
        .unwrap_or_default();
    assert!(
        last.contains(named) && last.contains("RALPH_DEPLOY_API_TIMEOUT"),
        "{all}"
    );
    for word in not {
        assert!(!all.contains(word), "`{word}` has no place here: {all}");
    }
    // Libraries' own log lines (tracing's level and target) stay out.
    for level in [" ERROR ", " WARN ", "kube_client", "hyper"] {
        assert!(!all.contains(level), "a library log line: {all}");
    }
}

#[test]
fn plan_against_a_hanging_endpoint_speaks_within_seconds_and_fails_within_the_bound() {
    let (listener, url) = silent_endpoint();
    let held = hold_silent(listener, 40);
    let w = World::from_stack(
        "aws-network.yaml",
        &format!("t-hang-{}", std::process::id()),
    );
    let stack = w.stack();
    speaks_and_fails_within_the_bound(
        w.cmd_at(
            &url,
            &["plan", stack.to_str().unwrap(), "--env", "production"],
        ),
        &url,
        &[],
    );
    drop(held);
}

#[test]
fn a_hanging_google_cloud_endpoint_is_named_with_its_own_setting() {
    let (listener, url) = silent_endpoint();
    let held = hold_silent(listener, 40);
    let w = World::from_stack(
        "gcp-production.yaml",
        &format!("t-hg-{}", std::process::id() % 10000),
    );
    let stack = w.stack();
    let mut cmd = w.cmd(&["plan", stack.to_str().unwrap(), "--env", "production"]);
    cmd.env("RALPH_DEPLOY_GCP_ENDPOINT", &url);
    // Nothing about AWS: the stack uses Google Cloud only.
    speaks_and_fails_within_the_bound(cmd, &url, &["AWS_ENDPOINT_URL", "the AWS API"]);
    drop(held);
}

#[test]
fn a_hanging_kubernetes_api_server_is_named_with_the_setting() {
    let (listener, url) = silent_endpoint();
    let held = hold_silent(listener, 40);
    let w = World::from_stack(
        "kubernetes-app.yaml",
        &format!("t-hang-kube-{}", std::process::id()),
    );
    let kubeconfig = w.dir.path().join("silent-kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: silent\n  cluster:\n    server: {url}\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: silent\n  context:\n    cluster: silent\n    user: u\ncurrent-context: silent\n"
        ),
    )
    .unwrap();
    let stack = w.stack();
    let mut cmd = w.cmd(&[
        "render",
        stack.to_str().unwrap(),
        "--env",
        "production",
        "--discover",
    ]);
    cmd.env("RALPH_DEPLOY_VAR_kubeconfig", &kubeconfig);
    speaks_and_fails_within_the_bound(cmd, &url, &["ServiceError", "SendRequest"]);
    drop(held);
}

#[test]
fn a_hanging_postgresql_state_store_is_named_with_the_setting() {
    let (listener, url) = silent_endpoint();
    let held = hold_silent(listener, 40);
    let w = World::from_stack(
        "aws-network.yaml",
        &format!("t-hang-pg-{}", std::process::id()),
    );
    let address = url.trim_start_matches("http://");
    let state = format!("postgresql://deployer:hunter2secret@{address}/state");
    let stack = w.stack();
    let mut cmd = w.cmd(&["plan", stack.to_str().unwrap(), "--env", "production"]);
    cmd.env("RALPH_DEPLOY_STATE", &state);
    speaks_and_fails_within_the_bound(
        cmd,
        &format!("postgresql://deployer@{address}/state"),
        &["hunter2secret", "pool timed out"],
    );
    drop(held);
}

#[test]
fn a_wrong_service_is_named_not_dumped() {
    // An HTTP server that answers 501 to everything.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 65536];
            let _ = s.read(&mut buf);
            let body = "<html><body>Not Implemented</body></html>";
            let _ = write!(
                s,
                "HTTP/1.1 501 Not Implemented\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    let w = World::from_stack("aws-network.yaml", &format!("t-501-{}", std::process::id()));
    let stack = w.stack();
    let out = w
        .cmd_at(
            &url,
            &["plan", stack.to_str().unwrap(), "--env", "production"],
        )
        .env("AWS_MAX_ATTEMPTS", "2")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("HTTP 501"), "{err}");
    assert!(err.contains(&url), "{err}");
    assert!(
        !err.contains("SdkError") && !err.contains("ServiceError {"),
        "{err}"
    );
    // With --json the stream on stdout ends with an error event saying why.
    let out = w
        .cmd_at(
            &url,
            &[
                "plan",
                stack.to_str().unwrap(),
                "--env",
                "production",
                "--json",
            ],
        )
        .env("AWS_MAX_ATTEMPTS", "2")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let last: serde_json::Value =
        serde_json::from_str(text(&out.stdout).lines().last().unwrap_or("{}")).unwrap();
    assert_eq!(last["event"], "error", "{}", text(&out.stdout));
    assert!(
        last["message"].as_str().unwrap().contains("HTTP 501"),
        "{last}"
    );
    assert!(last["time"].is_string(), "{last}");
}

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Runs `validate` on `path`: no panic, no signal, an answer within a
/// second; returns the child's peak memory in KiB.
fn validate_survives(path: &std::path::Path, what: &str) -> i64 {
    validate_survives_timed(path, what).0
}

/// Peak memory (KiB) and wall time of one `validate`.
fn validate_survives_timed(path: &std::path::Path, what: &str) -> (i64, Duration) {
    let started = Instant::now();
    let mut child = std::process::Command::new(common::BIN)
        .args(["validate", path.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = String::new();
    use std::io::Read;
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    // wait4 gives this child's own peak memory.
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    let elapsed = started.elapsed();
    assert!(libc::WIFEXITED(status), "{what}: killed by a signal: {err}");
    let code = libc::WEXITSTATUS(status);
    assert!(
        code == 0 || code == 1,
        "{what}: exit {code} (a panic is 101):\n{}",
        &err[..err.len().min(2000)]
    );
    assert!(
        !err.contains("panicked"),
        "{what}: {}",
        &err[..err.len().min(2000)]
    );
    assert!(elapsed < Duration::from_secs(1), "{what}: took {elapsed:?}");
    assert!(
        err.len() < 64 * 1024,
        "{what}: {} bytes of error output",
        err.len()
    );
    SLOWEST.fetch_max(
        elapsed.as_micros() as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    (usage.ru_maxrss, elapsed)
}

/// The slowest validate of the hostile-input test, in microseconds.
static SLOWEST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[test]
fn validate_never_panics_hangs_or_grows_on_hostile_input() {
    let dir = tempfile::tempdir().unwrap();
    let valid = std::fs::read(common::repo().join("stacks/aws-production.yaml")).unwrap();
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let mut peak = 0i64;
    let mut cases = 0;
    let file = dir.path().join("case.yaml");
    // Random bytes.
    for round in 0..40 {
        let len = [0, 1, 7, 100, 4096, 70_000][round % 6];
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        std::fs::write(&file, &bytes).unwrap();
        peak = peak.max(validate_survives(&file, &format!("random bytes #{round}")));
        cases += 1;
    }
    // A valid stack, mutated: flipped bytes, cuts, insertions.
    for round in 0..60 {
        let mut bytes = valid.clone();
        for _ in 0..1 + rng.below(8) {
            let at = rng.below(bytes.len());
            match rng.below(4) {
                0 => bytes[at] = rng.next() as u8,
                1 => bytes.truncate(at),
                2 => {
                    let piece: Vec<u8> = b"{}[]:-\"'${}\n\t!&*#|>%@`"
                        .iter()
                        .map(|_| b"{}[]:-\"'${}\n\t!&*#|>%@`"[rng.below(22)])
                        .collect();
                    bytes.splice(at..at, piece);
                }
                _ => {
                    let from = rng.below(bytes.len().max(1));
                    let chunk = bytes[from..(from + 50).min(bytes.len())].to_vec();
                    bytes.splice(at.min(bytes.len())..at.min(bytes.len()), chunk);
                }
            }
            if bytes.is_empty() {
                break;
            }
        }
        std::fs::write(&file, &bytes).unwrap();
        peak = peak.max(validate_survives(&file, &format!("mutated stack #{round}")));
        cases += 1;
    }
    // Huge keys and values where a message quotes them.
    let huge = |n: usize| "k".repeat(n);
    let shapes = [
        format!("name: s\nresources:\n  {}:\n    kind: aws.vpc\n    properties: {{ cidr_block: 10.0.0.0/16 }}\n", huge(70_000)),
        format!("name: s\nresources:\n  vpc:\n    kind: aws.vpc\n    properties:\n      cidr_block: 10.0.0.0/16\n      {}: 1\n", huge(100_000)),
        format!("name: s\nresources:\n  vpc:\n    kind: {}\n", huge(100_000)),
        format!("name: s\nresources:\n  vpc:\n    kind: aws.vpc\n    properties: {{ cidr_block: \"{}\" }}\n", huge(200_000)),
        format!("name: {}\nresources: {{}}\n", huge(100_000)),
        format!("name: s\nresources:\n  a:\n    kind: aws.vpc\n    depends_on: [{}]\n", huge(100_000)),
        format!("name: s\n{}: 1\n", huge(65_536)),
        format!("name: s\nresources:\n  sg:\n    kind: aws.security_group\n    properties: {{ name: x, vpc_id: vpc-1, description: \"{}\" }}\n", huge(100_000)),
    ];
    for (i, text) in shapes.iter().enumerate() {
        std::fs::write(&file, text).unwrap();
        peak = peak.max(validate_survives(&file, &format!("huge shape #{i}")));
        cases += 1;
    }
    // Files that are not regular files.
    let fifo = dir.path().join("fifo.yaml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (p, what) in [
        (std::path::PathBuf::from("/dev/zero"), "/dev/zero"),
        (std::path::PathBuf::from("/dev/urandom"), "/dev/urandom"),
        (std::path::PathBuf::from("/dev/null"), "/dev/null"),
        (fifo.clone(), "a FIFO with no writer"),
        (dir.path().to_path_buf(), "a directory"),
        (dir.path().join("missing.yaml"), "a missing file"),
    ] {
        peak = peak.max(validate_survives(&p, what));
        cases += 1;
    }
    println!(
        "{cases} hostile inputs; peak memory of one validate: {} MiB; slowest answer: {} ms",
        peak / 1024,
        SLOWEST.load(std::sync::atomic::Ordering::Relaxed) / 1000
    );
    assert!(peak < 200 * 1024, "validate used {} MiB", peak / 1024);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_state_before_each_command_is_kept_with_outputs_and_can_be_restored() {
    let w = World::from_stack(
        "aws-network.yaml",
        &format!("t-snap-{}", std::process::id()),
    );
    w.ok("apply", &["--auto-approve"]);
    let first = state_of(&w);
    assert!(!first["outputs"].as_object().unwrap().is_empty());
    // A change that rewrites the state many times (a replace and its
    // dependents), then more applies.
    w.edit("${var.net}.11.0/24", "${var.net}.12.0/24");
    w.ok("apply", &["--auto-approve"]);
    w.edit("default: platform", "default: data-team");
    w.ok("apply", &["--auto-approve"]);
    let list = w
        .cmd(&[
            "state",
            "snapshots",
            w.stack().to_str().unwrap(),
            "--env",
            "production",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", text(&list.stderr));
    let list: Value = serde_json::from_slice(&list.stdout).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2, "{list:?}");
    assert_eq!(list[0]["operation"], "apply");
    assert_eq!(list[0]["serial"], first["serial"]);
    let out = w
        .cmd(&[
            "state",
            "restore",
            w.stack().to_str().unwrap(),
            "--env",
            "production",
            list[0]["name"].as_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let restored = state_of(&w);
    assert_eq!(restored["resources"], first["resources"]);
    assert_eq!(restored["outputs"], first["outputs"]);
    assert!(restored["serial"].as_u64() > first["serial"].as_u64());
    // The restored state names the old subnet: plan sees the difference.
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    w.ok("apply", &["--auto-approve"]);
    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
}

/// Every lock file under a world's state directory.
fn lock_files(w: &World) -> Vec<std::path::PathBuf> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.file_name().is_some_and(|n| n == "lock.json") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(&w.state_dir(), &mut out);
    out
}

#[test]
fn a_reader_that_closes_stdout_ends_the_output_not_the_apply() {
    use std::io::BufRead;
    let w = World::from_stack("aws-network.yaml", &format!("hpipe{}", std::process::id()));
    let stack = w.stack();
    // `ralph-deploy apply --json | head -1`: one line read, then the pipe closes.
    let mut child = w
        .cmd(&[
            "apply",
            stack.to_str().unwrap(),
            "--env",
            "production",
            "--auto-approve",
            "--json",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("\"event\""), "{first}");
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the apply must finish although nobody reads its output: {:?}\n{}",
        out.status,
        text(&out.stderr)
    );
    assert!(
        lock_files(&w).is_empty(),
        "a lock was left: {:?}",
        lock_files(&w)
    );
    let plan = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan.stderr));
    assert!(
        !text(&plan.stderr).contains("stale lock"),
        "{}",
        text(&plan.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_or_two_interrupts_in_a_long_wait_leave_no_lock_on_any_store() {
    use std::io::BufRead;
    for (store, interrupts) in [
        ("local", 1),
        ("local", 2),
        ("postgres", 1),
        ("postgres", 2),
        ("s3", 1),
        ("s3", 2),
    ] {
        let name = format!("hint{}{interrupts}x{}", &store[..2], std::process::id());
        let mut w = World::from_stack("aws-network.yaml", &name);
        match store {
            "postgres" => {
                let db = common::fresh_database(&name).await;
                w.env.push(("RALPH_DEPLOY_STATE".into(), db));
            }
            "s3" => {
                w.s3_bucket(&name).await;
                w.env
                    .push(("RALPH_DEPLOY_STATE".into(), format!("s3://{name}/ci")));
            }
            _ => {}
        }
        // Every request a little slow, so the apply is mid-way when stopped.
        let proxy = common::SlowProxy::start(&w.endpoint, Duration::from_millis(150));
        let stack = w.stack();
        let mut child = w
            .cmd_at(
                &proxy.endpoint,
                &[
                    "apply",
                    stack.to_str().unwrap(),
                    "--env",
                    "production",
                    "--auto-approve",
                    "--json",
                ],
            )
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        // Wait until some resources are being made, then interrupt.
        let mut started = 0;
        for line in lines.by_ref() {
            let line = line.unwrap();
            if line.contains("\"resource_started\"") {
                started += 1;
                if started == 3 {
                    break;
                }
            }
        }
        assert_eq!(started, 3, "{store}: the apply never got going");
        if store == "local" {
            assert!(
                !lock_files(&w).is_empty(),
                "the running apply holds the lock"
            );
        }
        for _ in 0..interrupts {
            // SAFETY: signalling the child this test started.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            std::thread::sleep(Duration::from_millis(100));
        }
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let status = child.wait().unwrap();
        assert_eq!(
            status.code(),
            Some(130),
            "{store}, {interrupts} interrupt(s): {status:?}\n{}",
            rest.join("\n")
        );
        assert!(
            lock_files(&w).is_empty(),
            "{interrupts} interrupt(s) left a lock: {:?}",
            lock_files(&w)
        );
        // The next run starts cleanly on every store: a lock left behind
        // would either be live (a lease: "is locked by") or be taken over
        // from a dead holder ("stale lock"). It finishes what was
        // interrupted.
        let out = w.run("apply", &["--auto-approve"]);
        let err = text(&out.stderr);
        assert!(out.status.success(), "{store}, {interrupts}: {err}");
        assert!(!err.contains("stale lock"), "{store}, {interrupts}: {err}");
        assert!(
            !err.contains("is locked by"),
            "{store}, {interrupts}: {err}"
        );
        drop(proxy);
    }
}

#[test]
fn an_empty_secret_is_refused_by_name_before_anything_is_sent() {
    let project = format!("hsec{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let stack = dir.path().join("stack.yaml");
    std::fs::write(
        &stack,
        format!(
            "name: sec\ncloud:\n  gcp: {{ project: {project}, region: us-central1 }}\nresources:\n  db:\n    kind: gcp.sql_instance\n    properties:\n      name: db\n      tier: db-custom-1-3840\n  admin:\n    kind: gcp.sql_user\n    properties:\n      instance: ${{db.name}}\n      name: admin\n      password_secret: env:RALPH_TEST_EMPTY_PASSWORD\nwaivers:\n  - {{ rule: stores.high-availability, reason: a test database }}\n  - {{ rule: stores.backups, reason: a test database }}\n  - {{ rule: stores.deletion-protection, reason: a test database }}\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(common::BIN)
        .args(["apply", stack.to_str().unwrap(), "--auto-approve"])
        .env("RALPH_DEPLOY_GCP_ENDPOINT", common::gcp_endpoint())
        .env("RALPH_DEPLOY_STATE_DIR", dir.path().join("state"))
        .env("RALPH_TEST_EMPTY_PASSWORD", "")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the password of database user admin: `env:RALPH_TEST_EMPTY_PASSWORD` holds an empty value"),
        "{err}"
    );
    // The instance was made; no user was ever asked for.
    let users = common::gcp_get(&format!("/v1/projects/{project}/instances/db/users")).unwrap();
    let names: Vec<&str> = users["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u["name"].as_str())
        .collect();
    assert!(!names.contains(&"admin"), "{names:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_binary_secret_is_refused_not_read_as_empty() {
    let name = format!("hbin{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let conf = w.aws_conf().await;
    let sm = aws_sdk_secretsmanager::Client::new(&conf);
    let arn = sm
        .create_secret()
        .name(format!("{name}/binary"))
        .secret_binary(aws_sdk_secretsmanager::primitives::Blob::new(vec![
            0u8, 159, 146, 150,
        ]))
        .send()
        .await
        .unwrap()
        .arn()
        .unwrap()
        .to_string();
    let stack = w.dir.path().join("role.yaml");
    std::fs::write(
        &stack,
        format!(
            "name: {name}\nresources:\n  role:\n    kind: postgres.role\n    properties:\n      name: {name}_app\n      password_secret: {arn}\n      url: {}/postgres?sslmode=disable\n",
            common::pg_server()
        ),
    )
    .unwrap();
    let out = w
        .cmd(&["apply", stack.to_str().unwrap(), "--auto-approve"])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("holds binary data, not text"), "{err}");
}

/// A TLS endpoint with a certificate from a CA of its own (made with the
/// `openssl` command): a private API endpoint, or a proxy that intercepts
/// TLS. Returns its URL, the CA's PEM file and the server process.
fn tls_endpoint(dir: &std::path::Path) -> (String, std::path::PathBuf, std::process::Child) {
    let sh = |script: &str| {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 1 -subj '/CN=private CA' \
        && openssl req -newkey rsa:2048 -nodes -keyout leaf.key -out leaf.csr -subj '/CN=127.0.0.1' \
        && printf 'subjectAltName=IP:127.0.0.1\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > ext.cnf \
        && openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out leaf.pem -days 1 -extfile ext.cnf");
    // Answers every request 403 with an AWS-looking body that is not what
    // the call expects: reaching it at all is what the test looks for.
    let server = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length") or 0))
        body = b"<ErrorResponse><Error><Type>Sender</Type><Message>the private endpoint</Message></Error></ErrorResponse>"
        self.send_response(403); self.send_header("content-length", str(len(body))); self.end_headers(); self.wfile.write(body)
    do_GET = do_POST
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer.request_queue_size = 256
s = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain("leaf.pem", "leaf.key")
s.socket = ctx.wrap_socket(s.socket, server_side=True)
print(s.server_address[1], flush=True)
s.serve_forever()
"#;
    let mut child = std::process::Command::new("python3")
        .arg("-c")
        .arg(server)
        .current_dir(dir)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    (
        format!("https://127.0.0.1:{}", port.trim()),
        dir.join("ca.pem"),
        child,
    )
}

#[test]
fn an_endpoint_whose_certificate_is_not_trusted_is_named_and_its_ca_can_be_given() {
    let w = World::from_stack("aws-network.yaml", &format!("t-tls-{}", std::process::id()));
    let stack = w.stack();
    let tmp = tempfile::tempdir().unwrap();
    let (url, ca, server) = tls_endpoint(tmp.path());
    // Stopped however the test ends.
    struct Stop(std::process::Child);
    impl Drop for Stop {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Stop(server);
    // (The SDK retries a refused certificate as a transient failure: one
    // attempt keeps the test short.)
    let plan = || {
        let mut c = w.cmd_at(
            &url,
            &["plan", stack.to_str().unwrap(), "--env", "production"],
        );
        c.env("AWS_MAX_ATTEMPTS", "1");
        c
    };
    // The platform's roots do not vouch for it: refused, and said so.
    let out = plan().env_remove("SSL_CERT_FILE").output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_ne!(out.status.code(), Some(0), "{all}");
    assert!(
        all.contains("refused its certificate (invalid peer certificate: UnknownIssuer)"),
        "{all}"
    );
    assert!(all.contains("SSL_CERT_FILE"), "{all}");
    // Its CA given: the TLS connection is made and the endpoint answers.
    let out = plan().env("SSL_CERT_FILE", &ca).output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("answered HTTP 403"), "{all}");
    assert!(!all.contains("certificate"), "{all}");
}
