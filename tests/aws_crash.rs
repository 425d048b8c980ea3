//! Crash safety against the local cloud behind the fault proxy
//! (scripts/test starts a dedicated moto and the proxy): a kill at every
//! mutating request, injected faults, Ctrl-C, and a stale lock.

use crate::common;

use std::io::{BufRead, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::sync::Mutex;
use std::time::Duration;

use common::{text, World};
use serde_json::{json, Value};

/// The proxy and its moto are shared: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Kill points run this many at a time (each in its own proxy lane).
const KILL_LANES: usize = 5;

fn proxy() -> String {
    std::env::var("RALPH_TEST_FAULT_PROXY")
        .expect("RALPH_TEST_FAULT_PROXY is not set: run scripts/test")
}

fn faulty_moto() -> String {
    std::env::var("RALPH_TEST_FAULT_MOTO")
        .expect("RALPH_TEST_FAULT_MOTO is not set: run scripts/test")
}

/// A minimal HTTP POST (no client library needed for two control calls).
fn post(url: &str, body: &str) -> String {
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default()
}

fn faults(cfg: Value) -> Value {
    serde_json::from_str(&post(&format!("{}/__faults", proxy()), &cfg.to_string())).unwrap()
}

fn reset_cloud() {
    post(&format!("{}/moto-api/reset", faulty_moto()), "");
}

async fn world(tag: &str) -> World {
    let name = format!("{tag}{}", std::process::id());
    let mut w = World::from_stack("aws-production.yaml", &name);
    w.endpoint = proxy();
    let db = common::fresh_database(&name).await;
    w.env.push((
        "RALPH_DEPLOY_VAR_database_tunnel_url".into(),
        format!("{db}?sslmode=disable"),
    ));
    w.env
        .push(("ANTHROPIC_API_KEY".into(), "sk-test-crash".into()));
    w
}

fn state(w: &World) -> Value {
    common::state_json(w)
}

/// No duplicates, no orphans: every EC2 resource tagged with the stack is
/// in the state (once per address), and every recorded resource exists.
async fn assert_consistent(w: &World, context: &str) {
    let st = state(w);
    let recorded: Vec<String> = st["resources"]
        .as_object()
        .unwrap()
        .values()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    // Through the proxy: it carries the account the test runs in.
    let mut inspect = World {
        dir: tempfile::tempdir().unwrap(),
        stack_name: w.stack_name.clone(),
        endpoint: proxy(),
        env: vec![("AWS_ACCESS_KEY_ID".into(), w.access_key_id())],
    };
    inspect.stack_name = w.stack_name.clone();
    let tagged = inspect.tagged().await;
    for (kind, id) in &tagged {
        assert!(
            recorded.contains(id),
            "{context}: {kind} {id} is tagged with the stack but not in the state (an orphan)"
        );
    }
    let ids: Vec<&String> = tagged.iter().map(|(_, id)| id).collect();
    let mut dedup = ids.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(ids.len(), dedup.len(), "{context}: duplicates");
    // Everything beyond EC2 is named; the names must be exactly the state's.
    for entry in inspect.tagged_beyond_ec2().await {
        let id = entry.split_once(' ').map(|x| x.1).unwrap_or_default();
        assert!(
            recorded
                .iter()
                .any(|r| r == id || r.ends_with(&format!(":{id}")) || r.contains(id)),
            "{context}: {entry} is not in the state"
        );
    }
    // And every recorded resource exists: the plan would recreate it otherwise.
    let out = w.run("plan", &["--detailed-exitcode", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{context}: the final plan is not empty:\n{}",
        text(&out.stdout)
    );
}

fn apply_cmd(w: &World) -> std::process::Command {
    let stack = w.stack();
    w.cmd(&[
        "apply",
        stack.to_str().unwrap(),
        "--env",
        "production",
        "--auto-approve",
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_at_every_mutating_request_is_recovered_without_duplicates_or_orphans() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = world("tk").await;
    // How many mutating requests a full apply makes.
    reset_cloud();
    faults(json!({"rate": 0.0, "kill_after": 0, "reset_counters": true}));
    let out = apply_cmd(&w).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let total = faults(json!({}))["stats"]["mutating"].as_u64().unwrap();
    assert!(total > 30, "only {total} mutating requests?");

    // Kill points run in lanes at once: each lane signs with its own access
    // key, which the proxy maps to its own counter, kill point and AWS
    // account (an empty cloud per kill point, without a slow moto reset).
    let lanes = KILL_LANES;
    let points = common::kill_points(total);
    let points = &points;
    let mut worlds = vec![w];
    for lane in 1..lanes {
        worlds.push(world(&format!("tk{lane}x")).await);
    }
    let covered = std::sync::atomic::AtomicU64::new(0);
    let covered_ref = &covered;
    std::thread::scope(|scope| {
        for (lane, w) in worlds.iter_mut().enumerate() {
            scope.spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                let key = format!("AKIALANE{lane:08}");
                w.env.push(("AWS_ACCESS_KEY_ID".into(), key.clone()));
                let pidfile = w.dir.path().join("apply.pid");
                for &k in points.iter().skip(lane).step_by(lanes) {
                    let _ = std::fs::remove_dir_all(w.state_dir());
                    w.env
                        .retain(|(name, _)| name != "RALPH_DEPLOY_VAR_bucket_suffix");
                    w.env
                        .push(("RALPH_DEPLOY_VAR_bucket_suffix".into(), format!("k{k}")));
                    faults(json!({"lane": key, "kill_after": k, "kill_pidfile": pidfile.to_str().unwrap(), "account_id": format!("{:012}", 200_000_000_000u64 + k)}));
                    // The pid is written before exec, so the proxy can never miss it.
                    let stack = w.stack();
                    let status = common::run_to_be_killed(
                        w,
                        &pidfile,
                        &format!("apply {} --env production --auto-approve", stack.display()),
                    );
                    assert_eq!(status.signal(), Some(9), "k={k}: the apply was not killed");
                    faults(json!({"lane": key, "kill_after": 0, "account_id": format!("{:012}", 200_000_000_000u64 + k)}));
                    let out = apply_cmd(w).output().unwrap();
                    assert!(
                        out.status.success(),
                        "k={k}: the apply after the crash failed:\n{}",
                        text(&out.stderr)
                    );
                    rt.block_on(assert_consistent(w, &format!("k={k}")));
                    covered_ref.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                faults(json!({"lane": key, "remove": true}));
            });
        }
    });
    let covered = covered.into_inner();
    faults(json!({"account_id": ""}));
    println!("covered {covered} kill points of {total} mutating requests");
    assert_eq!(covered, points.len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn twenty_percent_injected_faults_still_converge_and_retries_are_reported() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = world("tf").await;
    reset_cloud();
    faults(
        json!({"rate": 0.2, "kinds": ["throttle", "500", "503"], "seed": 42, "kill_after": 0, "reset_counters": true}),
    );
    let stack = w.stack();
    let out = w
        .cmd(&[
            "apply",
            stack.to_str().unwrap(),
            "--env",
            "production",
            "--auto-approve",
            "--json",
        ])
        .output()
        .unwrap();
    let stats = faults(json!({"rate": 0.0}));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary: Value = text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "summary")
        .unwrap();
    let injected: u64 = stats["stats"]["faults"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    println!(
        "injected {injected} faults; the apply retried {} requests",
        summary["retries"]
    );
    assert!(injected > 10);
    assert!(
        summary["retries"].as_u64().unwrap()
            >= injected.min(summary["requests"].as_u64().unwrap()) / 2,
        "{summary}"
    );
    assert_eq!(summary["created"], 62);
    // The services that throttled were slowed down, each on its own.
    let throttled = summary["throttled"].as_array().unwrap();
    println!("throttled services (service, throttles, concurrency at the end): {throttled:?}");
    assert!(!throttled.is_empty(), "{summary}");
    assert!(
        throttled
            .iter()
            .all(|t| t[2].as_f64().unwrap() < 10.0 || t[1].as_u64().unwrap() == 0),
        "{summary}"
    );
    assert_consistent(&w, "20% faults").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_exits_130_with_a_consistent_state_and_the_next_apply_finishes() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = world("tc").await;
    reset_cloud();
    // Every request a little slow, so the apply is still running when interrupted.
    faults(
        json!({"rate": 1.0, "kinds": ["slow"], "slow_ms": 60, "kill_after": 0, "reset_counters": true}),
    );
    let stack = w.stack();
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
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let mut finished = 0;
    while let Some(Ok(line)) = lines.next() {
        if line.contains("\"resource_finished\"") {
            finished += 1;
            if finished == 5 {
                unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
                break;
            }
        }
    }
    for _ in lines {}
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    faults(json!({"rate": 0.0}));
    let st = state(&w);
    let n = st["resources"].as_object().map(|m| m.len()).unwrap_or(0);
    assert!(n >= 5 && n < 50, "{n} resources recorded");
    assert!(
        !w.state_dir()
            .join(&w.stack_name)
            .join("production")
            .join("lock.json")
            .exists(),
        "the lock is released"
    );
    let out = apply_cmd(&w).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_consistent(&w, "after Ctrl-C").await;
    let _ = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_lock_holder_is_detected_as_stale() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = world("ts").await;
    reset_cloud();
    let pidfile = w.dir.path().join("apply.pid");
    faults(
        json!({"rate": 0.0, "kill_after": 5, "kill_pidfile": pidfile.to_str().unwrap(), "reset_counters": true}),
    );
    let stack = w.stack();
    let status = common::run_to_be_killed(
        &w,
        &pidfile,
        &format!("apply {} --env production --auto-approve", stack.display()),
    );
    assert_eq!(status.signal(), Some(9));
    faults(json!({"kill_after": 0}));
    assert!(
        w.state_dir()
            .join(&w.stack_name)
            .join("production")
            .join("lock.json")
            .exists(),
        "a SIGKILL leaves the lock behind"
    );
    let out = apply_cmd(&w).output().unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("took over a stale lock") && err.contains("no longer holds it"),
        "{err}"
    );
    assert!(
        err.contains("adopted") || err.contains("recovering"),
        "the open intent was recovered: {err}"
    );
    assert_consistent(&w, "stale lock").await;
}

/// A small stack with every kind whose delete has a trap: secrets with and
/// without a recovery window, a database keeping a final snapshot, a bucket.
fn destroy_stack(name: &str) -> String {
    format!(
        r#"name: {name}
cloud:
  aws: {{ region: us-east-1 }}
resources:
  vpc:
    kind: aws.vpc
    properties: {{ cidr_block: 10.40.0.0/16 }}
  a:
    kind: aws.subnet
    properties: {{ vpc_id: "${{vpc.id}}", cidr_block: 10.40.1.0/24, availability_zone: us-east-1a }}
  b:
    kind: aws.subnet
    properties: {{ vpc_id: "${{vpc.id}}", cidr_block: 10.40.2.0/24, availability_zone: us-east-1b }}
  db_sg:
    kind: aws.security_group
    properties: {{ name: "{name}-db", vpc_id: "${{vpc.id}}" }}
  db_subnets:
    kind: aws.rds_subnet_group
    properties: {{ name: "{name}-db", subnet_ids: ["${{a.id}}", "${{b.id}}"] }}
  db:
    kind: aws.rds_instance
    properties:
      identifier: {name}-postgres
      engine: postgres
      engine_version: "15"
      instance_class: db.t3.medium
      allocated_storage: 20
      db_subnet_group_name: ${{db_subnets.name}}
      vpc_security_group_ids: ["${{db_sg.id}}"]
      master_username: ralph_admin
      deletion_protection: false
  secret_key:
    kind: aws.secret
    properties:
      name: {name}/secret-key
      generate: {{ bytes: 16, encoding: hex }}
  token:
    kind: aws.secret
    properties:
      name: {name}/token
      recovery_window_days: 0
      generate: {{ bytes: 16, encoding: hex }}
  backups:
    kind: aws.s3_bucket
    properties: {{ name: "{name}-backups", force_destroy: true }}
waivers:
  - {{ rule: stores.high-availability, reason: a test database }}
  - {{ rule: stores.backups, reason: a test database }}
  - {{ rule: stores.encryption, reason: a test database }}
  - {{ rule: stores.deletion-protection, reason: destroyed by the test }}
"#
    )
}

fn destroy_world(name: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stack.yaml"), destroy_stack(name)).unwrap();
    World {
        dir,
        stack_name: name.to_string(),
        endpoint: proxy(),
        env: vec![],
    }
}

async fn nothing_left(w: &World, context: &str) {
    let inspect = World {
        dir: tempfile::tempdir().unwrap(),
        stack_name: w.stack_name.clone(),
        endpoint: faulty_moto(),
        env: vec![],
    };
    assert_eq!(inspect.tagged().await, vec![], "{context}: EC2 left behind");
    assert_eq!(
        inspect.tagged_beyond_ec2().await,
        Vec::<String>::new(),
        "{context}: left behind"
    );
}

fn run_quiet(w: &World, args: &[&str]) -> std::process::Output {
    w.cmd(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_at_every_mutating_request_of_destroy_still_ends_with_nothing_left() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    reset_cloud();
    let id = std::process::id();
    // How many mutating requests a destroy makes.
    let w = destroy_world(&format!("dk{id}-count"));
    let stack = w.stack();
    let s = stack.to_str().unwrap();
    faults(json!({"rate": 0.0, "kill_after": 0}));
    let out = run_quiet(&w, &["apply", s, "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    faults(json!({"reset_counters": true}));
    let out = run_quiet(&w, &["destroy", s, "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let total = faults(json!({}))["stats"]["mutating"].as_u64().unwrap();
    assert!(total >= 8, "only {total} mutating requests?");
    nothing_left(&w, "plain destroy").await;
    // Destroy then apply of the same stack: the secrets in their recovery
    // window are restored and reused, not refused.
    let out = run_quiet(&w, &["apply", s, "--auto-approve"]);
    assert!(
        out.status.success(),
        "apply after destroy: {}",
        text(&out.stderr)
    );
    let out = run_quiet(&w, &["plan", s, "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let out = run_quiet(&w, &["destroy", s, "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mut covered = 0;
    let points = common::kill_points(total);
    for &k in &points {
        // A stack of its own per kill point: no cloud reset needed.
        let w = destroy_world(&format!("dk{id}-{k}"));
        let stack = w.stack();
        let s = stack.to_str().unwrap();
        faults(json!({"rate": 0.0, "kill_after": 0}));
        let out = run_quiet(&w, &["apply", s, "--auto-approve"]);
        assert!(out.status.success(), "k={k}: {}", text(&out.stderr));
        let pidfile = w.dir.path().join("destroy.pid");
        faults(
            json!({"kill_after": k, "kill_pidfile": pidfile.to_str().unwrap(), "reset_counters": true}),
        );
        let status = common::run_to_be_killed(&w, &pidfile, &format!("destroy {s} --auto-approve"));
        assert_eq!(
            status.signal(),
            Some(9),
            "k={k}: the destroy was not killed"
        );
        faults(json!({"kill_after": 0}));
        let out = run_quiet(&w, &["destroy", s, "--auto-approve"]);
        assert!(
            out.status.success(),
            "k={k}: the destroy after the crash failed:\n{}",
            text(&out.stderr)
        );
        nothing_left(&w, &format!("k={k}")).await;
        // And once more: a destroy of nothing finishes too.
        let out = run_quiet(&w, &["destroy", s, "--auto-approve"]);
        assert!(out.status.success(), "k={k}: {}", text(&out.stderr));
        covered += 1;
    }
    println!("covered {covered} kill points of {total} mutating requests of destroy");
    assert_eq!(covered, points.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_deleted_by_hand_does_not_block_destroy() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let w = destroy_world(&format!("dh{}", std::process::id()));
    let stack = w.stack();
    let s = stack.to_str().unwrap();
    faults(json!({"rate": 0.0, "kill_after": 0}));
    let out = run_quiet(&w, &["apply", s, "--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let conf = ralph_core::remote::aws_defaults()
        .endpoint_url(faulty_moto())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_ec2::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .load()
        .await;
    let sm = aws_sdk_secretsmanager::Client::new(&conf);
    sm.delete_secret()
        .secret_id(format!("{}/secret-key", w.stack_name))
        .send()
        .await
        .unwrap();
    for round in 0..2 {
        let out = run_quiet(&w, &["destroy", s, "--auto-approve"]);
        assert!(out.status.success(), "round {round}: {}", text(&out.stderr));
    }
    nothing_left(&w, "after a secret deleted by hand").await;
}
