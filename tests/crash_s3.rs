//! The kill test with the state in S3, in a fault-proxy lane of its own
//! (its own access key, counter, kill point and account), so it runs beside
//! tests/aws_crash.rs: the state writes go through the proxy too, so a kill can
//! land in the middle of the state store's own writes and locks.

use crate::common;

use std::os::unix::process::ExitStatusExt;

use common::{text, World};
use serde_json::{json, Value};

const LANE: &str = "AKIAS3STATEKILL00001";

fn proxy() -> String {
    std::env::var("RALPH_TEST_FAULT_PROXY")
        .expect("RALPH_TEST_FAULT_PROXY is not set: run scripts/test")
}

fn lane(cfg: Value) -> Value {
    let mut cfg = cfg;
    cfg["lane"] = LANE.into();
    let body = cfg.to_string();
    let url = format!("{}/__faults", proxy());
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap();
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(host).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    serde_json::from_str(out.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("{}")).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn kills_with_the_state_in_s3_are_recovered_too() {
    let name = format!("ts{}", std::process::id());
    let mut w = World::from_stack("aws-production.yaml", &name);
    w.endpoint = proxy();
    let db = common::fresh_database(&name).await;
    w.env.push((
        "RALPH_DEPLOY_VAR_database_tunnel_url".into(),
        format!("{db}?sslmode=disable"),
    ));
    w.env
        .push(("ANTHROPIC_API_KEY".into(), "sk-test-crash".into()));
    w.env.push(("AWS_ACCESS_KEY_ID".into(), LANE.into()));
    let pidfile = w.dir.path().join("apply.pid");
    let stack = w.stack();
    let apply = |w: &World| {
        w.cmd(&[
            "apply",
            stack.to_str().unwrap(),
            "--env",
            "production",
            "--auto-approve",
        ])
        .output()
        .unwrap()
    };
    let mut covered = 0;
    let mut total = 0;
    for round in 0..6u64 {
        let account = format!("{:012}", 300_000_000_000u64 + round);
        lane(json!({"account_id": account}));
        // The state bucket lives in the account the run works in.
        let bucket = format!("crash-state-{}-{round}", std::process::id());
        w.s3_bucket(&bucket).await;
        w.env
            .retain(|(k, _)| k != "RALPH_DEPLOY_STATE" && k != "RALPH_DEPLOY_VAR_bucket_suffix");
        w.env
            .push(("RALPH_DEPLOY_STATE".into(), format!("s3://{bucket}/ci")));
        w.env
            .push(("RALPH_DEPLOY_VAR_bucket_suffix".into(), format!("s{round}")));
        if round == 0 {
            // How many mutating requests a whole apply makes, state writes included.
            lane(json!({"account_id": account}));
            let out = apply(&w);
            assert!(out.status.success(), "{}", text(&out.stderr));
            total = lane(json!({"read": true}))["lane"]["mutating"]
                .as_u64()
                .unwrap();
            assert!(
                total > 60,
                "only {total} mutating requests with the state in S3?"
            );
            continue;
        }
        let k = (total * round / 6).max(1);
        lane(
            json!({"account_id": account, "kill_after": k, "kill_pidfile": pidfile.to_str().unwrap()}),
        );
        let status = common::run_to_be_killed(
            &w,
            &pidfile,
            &format!("apply {} --env production --auto-approve", stack.display()),
        );
        assert_eq!(status.signal(), Some(9), "k={k}: the apply was not killed");
        lane(json!({"account_id": account}));
        let out = apply(&w);
        assert!(
            out.status.success(),
            "k={k}: the apply after the crash failed:\n{}",
            text(&out.stderr)
        );
        // Nothing duplicated or orphaned, and nothing left to do.
        let st = common::state_json(&w);
        let recorded: Vec<String> = st["resources"]
            .as_object()
            .unwrap()
            .values()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        let tagged = w.tagged().await;
        for (kind, id) in &tagged {
            assert!(recorded.contains(id), "k={k}: {kind} {id} is an orphan");
        }
        let mut ids: Vec<&String> = tagged.iter().map(|(_, id)| id).collect();
        let n = ids.len();
        ids.sort();
        ids.dedup();
        assert_eq!(n, ids.len(), "k={k}: duplicates");
        let out = w.run("plan", &["--detailed-exitcode"]);
        assert_eq!(out.status.code(), Some(0), "k={k}: {}", text(&out.stdout));
        covered += 1;
    }
    lane(json!({"remove": true}));
    println!("covered {covered} kill points of {total} mutating requests, state in S3");
    assert_eq!(covered, 5);
}
