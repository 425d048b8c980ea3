//! State in PostgreSQL (the local server scripts/test starts): an apply
//! whose state lives in the database, leases on the lock, writes that
//! refuse to overwrite a newer state, and client-side encryption.

mod common;

use common::{text, World};
use ralph_deploy::state::postgres::PostgresBackend;
use ralph_deploy::state::{LockInfo, Locker, State, StateStore};
use sqlx::Connection;

const KEY_A: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

async fn store(name: &str) -> String {
    common::fresh_database(name).await
}

fn network(name: &str, db: &str) -> World {
    let mut w = World::from_stack("aws-network.yaml", name);
    w.env.push(("RALPH_DEPLOY_STATE".into(), db.into()));
    w
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apply_keeps_its_state_in_postgres_encrypted_and_the_next_plan_reads_it() {
    let name = format!("sp{}", std::process::id());
    let db = store(&name).await;
    let mut w = network(&name, &db);
    w.env.push(("RALPH_DEPLOY_STATE_KEY".into(), KEY_A.into()));
    w.ok("apply", &["--auto-approve"]);
    // No state file on the runner: it is in the database, as ciphertext.
    assert!(!w.state_dir().exists(), "a local state was written");
    let mut c = sqlx::PgConnection::connect(&db).await.unwrap();
    let bodies: Vec<Vec<u8>> = sqlx::query_scalar("SELECT body FROM ralph_deploy.states")
        .fetch_all(&mut c)
        .await
        .unwrap();
    assert!(bodies.len() > 5, "one row per serial: {}", bodies.len());
    for b in &bodies {
        let t = String::from_utf8_lossy(b);
        assert!(
            !t.contains("vpc-") && !t.contains("lineage"),
            "plaintext in the store"
        );
    }
    // Another runner with the same key sees no changes.
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // Without the key, or with another, the state cannot be read; nothing is written.
    let mut no_key = network(&name, &db);
    no_key
        .env
        .push(("RALPH_DEPLOY_STATE_KEY".into(), "".into()));
    let out = no_key.run("plan", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("the stored state is encrypted"),
        "{}",
        text(&out.stderr)
    );
    let mut wrong = network(&name, &db);
    wrong
        .env
        .push(("RALPH_DEPLOY_STATE_KEY".into(), "ab".repeat(32)));
    let out = wrong.run("apply", &["--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("not the key it was written with"),
        "{}",
        text(&out.stderr)
    );
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM ralph_deploy.states")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(
        after as usize,
        bodies.len(),
        "a failed read wrote something"
    );
    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_lease_blocks_an_expired_one_is_taken_over_with_a_warning() {
    let name = format!("sl{}", std::process::id());
    let db = store(&name).await;
    let w = network(&name, &db);
    let b = PostgresBackend::new(&db, &name, "production").unwrap();
    // A holder on another machine, alive.
    let mut holder = LockInfo::for_operation("apply");
    holder.host = "ci-runner-7".into();
    holder.pid = 4242;
    b.lock(&holder).await.unwrap();
    let out = w.run("apply", &["--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("locked by `apply`") && err.contains("ci-runner-7"),
        "{err}"
    );
    // Its lease runs out (the runner vanished): the next run takes over.
    let mut c = sqlx::PgConnection::connect(&db).await.unwrap();
    sqlx::query("UPDATE ralph_deploy.locks SET expires_at = now() - interval '1 second'")
        .execute(&mut c)
        .await
        .unwrap();
    drop(b); // stops renewing
    let out = w.run("apply", &["--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("took over a stale lock") && err.contains("ci-runner-7"),
        "{err}"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM ralph_deploy.locks")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(left, 0, "the run released its lock");
    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_writer_that_read_an_older_serial_never_overwrites_a_newer_state() {
    let name = format!("sc{}", std::process::id());
    let db = store(&name).await;
    let a = PostgresBackend::new(&db, "s", "prod").unwrap();
    let b = PostgresBackend::new(&db, "s", "prod").unwrap();
    assert!(a.read().await.unwrap().is_none());
    let mut st = State::new("s", "prod");
    st.serial = 1;
    a.write(&st).await.unwrap();
    // b reads serial 1; a moves on to 2; b (its lock lost) tries 2 as well.
    let mut seen_by_b = b.read().await.unwrap().unwrap();
    st.serial = 2;
    st.outputs.insert("by".into(), "a".into());
    a.write(&st).await.unwrap();
    seen_by_b.serial = 2;
    seen_by_b.outputs.insert("by".into(), "b".into());
    let err = b.write(&seen_by_b).await.unwrap_err().to_string();
    assert!(err.contains("another run wrote serial 2"), "{err}");
    let now = a.read().await.unwrap().unwrap();
    assert_eq!(now.outputs["by"], "a");
    // Another lineage is refused outright.
    let mut other = State::new("s", "prod");
    other.serial = 3;
    let err = a.write(&other).await.unwrap_err().to_string();
    assert!(err.contains("lineage"), "{err}");
    // History: every serial written is there.
    assert_eq!(a.read_serial(1).await.unwrap().serial, 1);
}

/// `state pull|push|mv|rm|migrate` on the network stack.
#[tokio::test(flavor = "multi_thread")]
async fn state_commands_pull_push_mv_rm_and_migrate_to_postgres() {
    let name = format!("sx{}", std::process::id());
    let db = store(&name).await;
    let w = World::from_stack("aws-network.yaml", &name);
    w.ok("apply", &["--auto-approve"]);
    let stack = w.stack();
    let stack = stack.to_str().unwrap();
    let state_cmd = |args: &[&str]| {
        let mut all = vec!["state", args[0], stack, "--env", "production"];
        all.extend_from_slice(&args[1..]);
        w.cmd(&all).output().unwrap()
    };
    // pull, then push: an older copy is refused, a forced one accepted.
    let pulled = state_cmd(&["pull"]);
    assert!(pulled.status.success(), "{}", text(&pulled.stderr));
    let old: serde_json::Value = serde_json::from_slice(&pulled.stdout).unwrap();
    let file = w.dir.path().join("pulled.json");
    std::fs::write(&file, &pulled.stdout).unwrap();
    let out = state_cmd(&["mv", "igw", "gateway"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("moved igw to gateway"));
    let out = state_cmd(&["push", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("older than the stored serial"),
        "{}",
        text(&out.stderr)
    );
    let out = state_cmd(&["push", file.to_str().unwrap(), "--force"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let now: serde_json::Value = serde_json::from_slice(&state_cmd(&["pull"]).stdout).unwrap();
    assert!(
        now["resources"]["igw"].is_object(),
        "the pushed copy is current"
    );
    assert!(now["serial"].as_u64() > old["serial"].as_u64());
    // Another lineage is refused.
    let mut foreign = old.clone();
    foreign["lineage"] = "someone-else".into();
    foreign["serial"] = 999.into();
    std::fs::write(&file, foreign.to_string()).unwrap();
    let out = state_cmd(&["push", file.to_str().unwrap()]);
    assert!(
        text(&out.stderr).contains("another lineage"),
        "{}",
        text(&out.stderr)
    );
    // rm forgets; the ownership tags bring it back as an adoption.
    let out = state_cmd(&["rm", "igw"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan = w.plan_json(&[]);
    let igw = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "igw")
        .unwrap()
        .clone();
    assert_eq!(igw["adopt"], true, "{igw}");
    w.ok("apply", &["--auto-approve"]);
    // migrate to PostgreSQL: the next run there sees no changes.
    let out = state_cmd(&["migrate", "--to", &db]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut there = World::from_stack("aws-network.yaml", &name);
    there.env.push(("RALPH_DEPLOY_STATE".into(), db.clone()));
    let out = there.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // Migrating again finds the target holding the state, and refuses.
    let out = state_cmd(&["migrate", "--to", &db]);
    assert!(
        text(&out.stderr).contains("already holds a state"),
        "{}",
        text(&out.stderr)
    );
    there.ok("destroy", &["--auto-approve", "--allow-protected"]);
}
