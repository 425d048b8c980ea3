//! State in PostgreSQL (the local server scripts/test starts): an apply
//! whose state lives in the database, leases on the lock, writes that
//! refuse to overwrite a newer state, and client-side encryption.

use crate::common;

use common::{text, World};
use ralph_engine::state::postgres::PostgresBackend;
use ralph_engine::state::{LockInfo, Locker, State, StateStore};
use sqlx::Connection;

/// No encryption, for the tests that use the backends directly.
fn plain() -> std::sync::Arc<ralph_engine::state::codec::Sealer> {
    std::sync::Arc::new(ralph_engine::state::codec::Sealer::none())
}

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
    // A row per whole-state write: the new state, then the last write of
    // the apply (results in between are journaled, and dropped once the
    // last write holds them).
    assert!(bodies.len() >= 2, "one row per serial: {}", bodies.len());
    let journaled: i64 = sqlx::query_scalar("SELECT count(*) FROM ralph_deploy.results")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(journaled, 0, "results left in the journal after the apply");
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
    let b = PostgresBackend::new(&db, &name, "production", plain()).unwrap();
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
    let a = PostgresBackend::new(&db, "s", "prod", plain()).unwrap();
    let b = PostgresBackend::new(&db, "s", "prod", plain()).unwrap();
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

// ------------------------------------------------------------------- S3

/// The S3 tests talk to the local cloud's S3 from this process too.
fn s3_env() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ENDPOINT_URL", common::aws_endpoint());
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_REGION", "us-east-1");
    });
}

async fn bucket(name: &str) -> String {
    s3_env();
    let w = World::from_stack("aws-network.yaml", name);
    w.s3_bucket(name).await;
    name.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn state_in_s3_with_a_leased_lock_and_compare_and_swap_writes() {
    use ralph_engine::state::s3::S3Backend;
    let name = format!("s3s{}", std::process::id());
    let b = bucket(&name).await;
    let url = format!("s3://{b}/teams/platform");
    let mut w = World::from_stack("aws-network.yaml", &name);
    w.env.push(("RALPH_DEPLOY_STATE".into(), url.clone()));
    w.env.push(("RALPH_DEPLOY_STATE_KEY".into(), KEY_A.into()));
    w.ok("apply", &["--auto-approve"]);
    assert!(!w.state_dir().exists(), "a local state was written");
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));

    // The object is ciphertext.
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&w.aws_conf().await)
            .force_path_style(true)
            .build(),
    );
    let key = format!("teams/platform/{name}/production/state.json");
    let body = s3.get_object().bucket(&b).key(&key).send().await.unwrap();
    let body = body.body.collect().await.unwrap().into_bytes();
    assert!(!String::from_utf8_lossy(&body).contains("lineage"));

    // A live lease elsewhere blocks; an expired one is taken over.
    let other = S3Backend::new(&url, &name, "production", None, plain()).unwrap();
    let mut holder = LockInfo::for_operation("apply");
    holder.host = "ci-runner-9".into();
    other.lock(&holder).await.unwrap();
    let out = w.run("apply", &["--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("ci-runner-9"),
        "{}",
        text(&out.stderr)
    );
    drop(other);
    let expired = serde_json::json!({
        "id": holder.id, "operation": "apply", "pid": 1, "host": "ci-runner-9", "user": "ci",
        "since": "2026-01-01T00:00:00Z", "version": "0", "expires_at": "2026-01-01T00:01:00Z"
    });
    s3.put_object()
        .bucket(&b)
        .key(format!("teams/platform/{name}/production/lock.json"))
        .body(expired.to_string().into_bytes().into())
        .send()
        .await
        .unwrap();
    let out = w.run("apply", &["--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("took over a stale lock"),
        "{}",
        text(&out.stderr)
    );

    w.ok("destroy", &["--auto-approve", "--allow-protected"]);

    // Two writers that read the same state: the second write is refused.
    let cas = format!("s3://{b}/cas");
    let x = S3Backend::new(&cas, "s", "prod", None, plain()).unwrap();
    let y = S3Backend::new(&cas, "s", "prod", None, plain()).unwrap();
    assert!(x.read().await.unwrap().is_none());
    assert!(y.read().await.unwrap().is_none());
    let mut st = State::new("s", "prod");
    st.serial = 1;
    x.write(&st).await.unwrap();
    let err = y.write(&st).await.unwrap_err().to_string();
    assert!(
        err.contains("the state changed since this run read it"),
        "{err}"
    );
    let mut seen = y.read().await.unwrap().unwrap();
    st.serial = 2;
    x.write(&st).await.unwrap();
    seen.serial = 2;
    let err = y.write(&seen).await.unwrap_err().to_string();
    assert!(err.contains("nothing was overwritten"), "{err}");
}

// ---------------------------------------------------------------- import

#[tokio::test(flavor = "multi_thread")]
async fn a_vpc_made_by_hand_is_imported_then_tagged_and_nothing_is_duplicated() {
    let name = format!("im{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let ec2 = w.ec2().await;
    let made = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap();
    let id = made.vpc().unwrap().vpc_id().unwrap().to_string();
    let stack = w.stack();
    let stack = stack.to_str().unwrap();
    let import = |args: &[&str]| {
        let mut all = vec!["import", stack, "--env", "production"];
        all.extend_from_slice(args);
        w.cmd(&all).output().unwrap()
    };
    // Mistakes first: nothing is recorded.
    let out = import(&["vcp", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("did you mean `vpc`?"),
        "{}",
        text(&out.stderr)
    );
    let out = import(&["vpc", "vpc-0000000000000dead"]);
    assert!(
        text(&out.stderr).contains("no aws.vpc with id"),
        "{}",
        text(&out.stderr)
    );
    // The real thing.
    let out = import(&["vpc", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = import(&["vpc", &id]);
    assert!(
        text(&out.stderr).contains("already in the state"),
        "{}",
        text(&out.stderr)
    );
    // The plan updates it (its ownership tags, and what differs), creates the rest.
    let plan = w.plan_json(&[]);
    let vpc = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "vpc")
        .unwrap()
        .clone();
    assert_eq!(vpc["action"], "update", "{vpc}");
    assert_eq!(vpc["id"], id.as_str());
    assert!(vpc["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["name"] == "tags"));
    w.ok("apply", &["--auto-approve"]);
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // One VPC for the stack: the imported one, now tagged.
    let tagged: Vec<(String, String)> = w
        .tagged()
        .await
        .into_iter()
        .filter(|(k, _)| k == "vpc")
        .collect();
    assert_eq!(tagged, vec![("vpc".to_string(), id.clone())]);
    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
}

// ------------------------------------------------------------ encryption

#[tokio::test(flavor = "multi_thread")]
async fn local_state_is_sealed_then_rekeyed_then_kms_enveloped() {
    let name = format!("en{}", std::process::id());
    let key_b = "cd".repeat(32);
    let mut w = World::from_stack("aws-network.yaml", &name);
    w.env.push(("RALPH_DEPLOY_STATE_KEY".into(), KEY_A.into()));
    w.ok("apply", &["--auto-approve"]);
    let file = w
        .state_dir()
        .join(&name)
        .join("production")
        .join("state.json");
    let stored = std::fs::read(&file).unwrap();
    assert!(
        !String::from_utf8_lossy(&stored).contains("lineage"),
        "plaintext on disk"
    );
    let stack = w.stack();
    let stack = stack.to_str().unwrap();
    let with_env = |vars: &[(&str, &str)], args: &[&str]| {
        let mut c = w.cmd(args);
        for (k, v) in vars {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let plan = ["plan", stack, "--env", "production", "--detailed-exitcode"];
    let rekey = ["state", "rekey", stack, "--env", "production"];
    // Rotate A -> B: B alone cannot read it before, A is the old key during.
    let out = with_env(&[("RALPH_DEPLOY_STATE_KEY", &key_b)], &plan);
    assert!(
        text(&out.stderr).contains("RALPH_DEPLOY_STATE_OLD_KEY"),
        "{}",
        text(&out.stderr)
    );
    let out = with_env(
        &[
            ("RALPH_DEPLOY_STATE_KEY", &key_b),
            ("RALPH_DEPLOY_STATE_OLD_KEY", KEY_A),
        ],
        &rekey,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = with_env(&[("RALPH_DEPLOY_STATE_KEY", &key_b)], &plan);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = with_env(&[], &plan);
    assert_eq!(
        out.status.code(),
        Some(1),
        "the old key still opens the current state"
    );
    // Envelope encryption with a KMS key (the local cloud's KMS).
    let kms = aws_sdk_kms::Client::new(&w.aws_conf().await);
    let key = kms.create_key().send().await.unwrap();
    let key_id = key.key_metadata().unwrap().key_id().to_string();
    let out = with_env(
        &[
            ("RALPH_DEPLOY_STATE_KEY", ""),
            ("RALPH_DEPLOY_STATE_OLD_KEY", &key_b),
            ("RALPH_DEPLOY_STATE_KMS_KEY", &key_id),
        ],
        &rekey,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(std::fs::read(&file).unwrap().starts_with(b"RDKMS1"));
    let out = with_env(
        &[
            ("RALPH_DEPLOY_STATE_KEY", ""),
            ("RALPH_DEPLOY_STATE_KMS_KEY", &key_id),
        ],
        &plan,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    w.env.retain(|(k, _)| k != "RALPH_DEPLOY_STATE_KEY");
    w.env.push(("RALPH_DEPLOY_STATE_KMS_KEY".into(), key_id));
    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
}

#[test]
fn the_stack_names_its_state_store_without_credentials_and_can_require_encryption() {
    let dir = tempfile::tempdir().unwrap();
    let write = |state: &str| {
        let p = dir.path().join("s.yaml");
        std::fs::write(
            &p,
            format!("name: s\ncloud: {{ aws: {{ region: us-east-1 }} }}\nstate: {state}\nresources:\n  vpc: {{ kind: aws.vpc, properties: {{ cidr_block: 10.0.0.0/16 }} }}\n"),
        )
        .unwrap();
        p
    };
    let run = |p: &std::path::Path, verb: &str| {
        std::process::Command::new(common::BIN)
            .args([verb, p.to_str().unwrap()])
            .env_remove("RALPH_DEPLOY_STATE_KEY")
            .env_remove("RALPH_DEPLOY_STATE_KMS_KEY")
            .env("RALPH_DEPLOY_STATE_DIR", dir.path().join("st"))
            .output()
            .unwrap()
    };
    let p = write("{ url: 'postgres://admin:hunter2@db.internal/state' }");
    let out = run(&p, "validate");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("s.yaml:3:15: the state url carries a password"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "the password was echoed: {err}");
    let p = write("{ url: 'ftp://x' }");
    assert!(text(&run(&p, "validate").stderr).contains("is not a state store"));
    let p = write("{ encrypt: true }");
    let out = run(&p, "plan");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no key is set: set RALPH_DEPLOY_STATE_KEY"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_entry_in_the_stack_is_planned_as_an_adoption_and_applied() {
    let name = format!("ie{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let ec2 = w.ec2().await;
    let made = ec2
        .create_vpc()
        .cidr_block("10.0.0.0/16")
        .send()
        .await
        .unwrap();
    let id = made.vpc().unwrap().vpc_id().unwrap().to_string();
    let text_now = std::fs::read_to_string(w.stack()).unwrap();
    std::fs::write(
        w.stack(),
        format!("{text_now}\nimport:\n  - {{ to: vpc, id: {id} }}\n"),
    )
    .unwrap();
    let plan = w.plan_json(&[]);
    let vpc = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "vpc")
        .unwrap()
        .clone();
    assert_eq!(vpc["adopt"], true, "{vpc}");
    assert_eq!(vpc["id"], id.as_str());
    assert_ne!(vpc["action"], "create");
    w.ok("apply", &["--auto-approve"]);
    let st = common::state_json(&w);
    assert_eq!(st["resources"]["vpc"]["id"], id.as_str());
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    // A wrong id is a plan error that names the entry; nothing is recorded.
    let other = World::from_stack("aws-network.yaml", &format!("{name}b"));
    let base = std::fs::read_to_string(other.stack()).unwrap();
    std::fs::write(
        other.stack(),
        format!("{base}\nimport:\n  - {{ to: vpc, id: vpc-0000000000000dead }}\n"),
    )
    .unwrap();
    let out = other.run("plan", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("import of `vpc`: no aws.vpc with id `vpc-0000000000000dead`"),
        "{}",
        text(&out.stderr)
    );
    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
}

// ----------------------------------------------------- runs at one time

/// Two applies at the same moment, a killed holder, for each backend.
async fn two_runs_and_a_killed_one(w: &World, store: &str) {
    let stack = w.stack();
    let stack = stack.to_str().unwrap();
    let apply = |extra: &[&str]| {
        let mut args = vec!["apply", stack, "--env", "production", "--auto-approve"];
        args.extend_from_slice(extra);
        w.cmd(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // At once: exactly one proceeds, the other fails naming the holder.
    let (a, b) = (apply(&[]), apply(&[]));
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    let ok = [&a, &b].iter().filter(|o| o.status.success()).count();
    assert_eq!(ok, 1, "{store}: {}\n{}", text(&a.stderr), text(&b.stderr));
    let failed = if a.status.success() { &b } else { &a };
    assert!(
        text(&failed.stderr).contains("is locked by `apply`"),
        "{store}: {}",
        text(&failed.stderr)
    );
    // With --lock-timeout the second waits, says for whom, then proceeds.
    w.edit(
        "owner: ${var.owner}",
        "owner: ${var.owner}\n        wave: two",
    );
    let (a, b) = (
        apply(&["--lock-timeout", "2m"]),
        apply(&["--lock-timeout", "2m"]),
    );
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(
        a.status.success() && b.status.success(),
        "{store}: {}\n{}",
        text(&a.stderr),
        text(&b.stderr)
    );
    let waited = [&a, &b]
        .iter()
        .any(|o| text(&o.stderr).contains("waiting for the lock"));
    assert!(waited, "{store}: neither run waited");
    // A holder killed mid-apply: the next run takes the lock over and
    // settles what it left open.
    w.edit("wave: two", "wave: three");
    let mut victim = apply(&["--json"]);
    // Killed (SIGKILL: no unlock) once it holds the lock and has begun a
    // change: its event stream says so.
    {
        use std::io::BufRead;
        let lines = std::io::BufReader::new(victim.stdout.take().unwrap()).lines();
        let mut began = false;
        for line in lines {
            let line = line.unwrap();
            if line.contains("\"resource_started\"") {
                began = true;
                break;
            }
        }
        assert!(began, "{store}: the victim never began a change");
    }
    let _ = victim.kill();
    let _ = victim.wait();
    let out = w
        .cmd(&["apply", stack, "--env", "production", "--auto-approve"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{store}: {}", text(&out.stderr));
    // The next run says it took the dead holder's lock over.
    assert!(
        text(&out.stderr).contains("took over a stale lock"),
        "{store}: {}",
        text(&out.stderr)
    );
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{store}: {}", text(&out.stdout));
    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_run_at_a_time_on_every_backend() {
    let pid = std::process::id();
    let local = World::from_stack("aws-network.yaml", &format!("cl{pid}"));
    two_runs_and_a_killed_one(&local, "local").await;

    let db = store(&format!("cp{pid}")).await;
    let mut pg = World::from_stack("aws-network.yaml", &format!("cp{pid}"));
    pg.env.push(("RALPH_DEPLOY_STATE".into(), db));
    two_runs_and_a_killed_one(&pg, "postgres").await;

    let b = bucket(&format!("cs{pid}")).await;
    let mut s3 = World::from_stack("aws-network.yaml", &format!("cs{pid}"));
    s3.env
        .push(("RALPH_DEPLOY_STATE".into(), format!("s3://{b}/ci")));
    two_runs_and_a_killed_one(&s3, "s3").await;
}

/// A database and a secret made with the SDK, imported: no changes but the
/// ownership tags when the stack matches them, the right updates when not.
#[tokio::test(flavor = "multi_thread")]
async fn a_database_and_a_secret_made_by_hand_are_imported() {
    let name = format!("ir{}", std::process::id());
    let w = World::from_stack("aws-network.yaml", &name);
    let conf = w.aws_conf().await;
    let rds = aws_sdk_rds::Client::new(&conf);
    let made = rds
        .create_db_instance()
        .db_instance_identifier(format!("{name}-db"))
        .engine("postgres")
        .engine_version("15.4")
        .db_instance_class("db.t3.micro")
        .allocated_storage(20)
        .storage_type("gp3")
        .master_username("app")
        .master_user_password("only-for-this-test")
        .backup_retention_period(7)
        .send()
        .await
        .unwrap();
    let sg = made.db_instance().unwrap().vpc_security_groups()[0]
        .vpc_security_group_id()
        .unwrap()
        .to_string();
    let sm = aws_sdk_secretsmanager::Client::new(&conf);
    sm.create_secret()
        .name(format!("{name}/app-key"))
        .secret_string("made-by-hand")
        .description("made by hand")
        .send()
        .await
        .unwrap();
    let stack = format!(
        r#"name: {name}
cloud: {{ aws: {{ region: us-east-1 }} }}
resources:
  db:
    kind: aws.rds_instance
    properties:
      identifier: {name}-db
      engine: postgres
      engine_version: "15.4"
      instance_class: db.t3.micro
      allocated_storage: 20
      storage_type: gp3
      storage_encrypted: false
      deletion_protection: false
      vpc_security_group_ids: [{sg}]
      master_username: app
      backup_retention_days: 7
  key:
    kind: aws.secret
    properties:
      name: {name}/app-key
      description: made by hand
      value_from_env: APP_KEY
waivers:
  - {{ rule: stores.high-availability, address: db, reason: adopted as it was made by hand }}
  - {{ rule: stores.encryption, address: db, reason: adopted as it was made by hand }}
  - {{ rule: stores.deletion-protection, address: db, reason: adopted as it was made by hand }}
"#
    );
    std::fs::write(w.stack(), &stack).unwrap();
    let path = w.stack();
    let path = path.to_str().unwrap();
    for (address, id) in [
        ("db", format!("{name}-db")),
        ("key", format!("{name}/app-key")),
    ] {
        let out = w.cmd(&["import", path, address, &id]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let plan_of = |w: &World| -> serde_json::Value {
        let out = w.cmd(&["plan", path, "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // The stack matches them: only the ownership tags are to be added.
    let plan = plan_of(&w);
    for c in plan["changes"].as_array().unwrap() {
        let names: Vec<&str> = c["attributes"]
            .as_array()
            .map(|a| a.iter().filter_map(|x| x["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(c["action"], "update", "{c}");
        // (`ready`: the database made a moment ago is still being created;
        // the apply waits for it.)
        let names: Vec<&str> = names.into_iter().filter(|n| *n != "ready").collect();
        assert_eq!(names, vec!["tags"], "{}: {c}", c["address"]);
    }
    let out = w.cmd(&["apply", path, "--auto-approve"]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let plan = plan_of(&w);
    assert_eq!(plan["counts"]["update"], 0, "{plan}");
    // Where the stack differs, the plan says exactly that.
    std::fs::write(
        w.stack(),
        stack.replace("backup_retention_days: 7", "backup_retention_days: 14"),
    )
    .unwrap();
    let plan = plan_of(&w);
    let db = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "db")
        .unwrap()
        .clone();
    assert_eq!(db["action"], "update");
    assert_eq!(db["attributes"][0]["name"], "backup_retention_days", "{db}");
    assert_eq!(db["attributes"].as_array().unwrap().len(), 1, "{db}");
}

/// local -> S3 -> PostgreSQL -> local: the state byte for byte, and the
/// before-command snapshots with it.
#[tokio::test(flavor = "multi_thread")]
async fn state_migrate_round_trips_through_every_backend() {
    let name = format!("mr{}", std::process::id());
    let b = bucket(&name).await;
    let db = store(&name).await;
    let mut w = World::from_stack("aws-network.yaml", &name);
    w.ok("apply", &["--auto-approve"]);
    w.edit(
        "owner: ${var.owner}",
        "owner: ${var.owner}\n        wave: two",
    );
    w.ok("apply", &["--auto-approve"]);
    let stack = w.stack();
    let stack = stack.to_str().unwrap().to_string();
    let snapshots = |w: &World| -> Vec<(String, u64)> {
        let out = w
            .cmd(&[
                "state",
                "snapshots",
                &stack,
                "--env",
                "production",
                "--json",
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["name"]
                        .as_str()
                        .unwrap()
                        .trim_end_matches(".json")
                        .to_string(),
                    s["serial"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    let pull = |w: &World| -> Vec<u8> {
        let out = w
            .cmd(&["state", "pull", &stack, "--env", "production"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        out.stdout
    };
    let original = pull(&w);
    let original_snaps = snapshots(&w);
    assert!(!original_snaps.is_empty());
    let other_dir = tempfile::tempdir().unwrap();
    let stores = [
        format!("s3://{b}/migrated"),
        db.clone(),
        other_dir.path().display().to_string(),
    ];
    for to in &stores {
        let out = w
            .cmd(&[
                "state",
                "migrate",
                &stack,
                "--env",
                "production",
                "--to",
                to,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "to {to}: {}", text(&out.stderr));
        // The source keeps a snapshot from before the migration as well.
        let source_snaps = snapshots(&w);
        assert!(!source_snaps.is_empty());
        w.env
            .retain(|(k, _)| k != "RALPH_DEPLOY_STATE" && k != "RALPH_DEPLOY_STATE_DIR");
        if to.contains("://") {
            w.env.push(("RALPH_DEPLOY_STATE".into(), to.clone()));
        } else {
            w.env.push(("RALPH_DEPLOY_STATE_DIR".into(), to.clone()));
        }
        assert_eq!(pull(&w), original, "the state changed on the way to {to}");
        assert_eq!(snapshots(&w), source_snaps, "snapshots on the way to {to}");
    }
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    w.ok("destroy", &["--auto-approve", "--allow-protected"]);
}
