//! The database schema as migrations, against a real PostgreSQL server
//! (scripts/test starts one).

use crate::common;

use std::path::PathBuf;

use common::{text, BIN};
use sqlx::{Connection, PgConnection, Row};

/// A fresh database, a copy of migrations/, and a stack that applies them.
struct Db {
    dir: tempfile::TempDir,
    name: String,
    url: String,
}

impl Db {
    async fn new(tag: &str) -> Db {
        let name = format!("{tag}_{}", std::process::id());
        let url = common::fresh_database(&name).await;
        let dir = tempfile::tempdir().unwrap();
        let migrations = dir.path().join("migrations");
        std::fs::create_dir(&migrations).unwrap();
        for e in std::fs::read_dir(common::repo().join("migrations")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), migrations.join(e.file_name())).unwrap();
        }
        let stack = format!(
            "name: {}\nresources:\n  schema:\n    kind: postgres.migrations\n    properties:\n      directory: migrations\n      url: {url}\n      ssl_mode: disable\n",
            name.replace('_', "-")
        );
        std::fs::write(dir.path().join("stack.yaml"), stack).unwrap();
        Db { dir, name, url }
    }

    fn migrations(&self) -> PathBuf {
        self.dir.path().join("migrations")
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        // The stack file goes after the (one- or two-word) command.
        let words = if matches!(args[0], "migrate" | "db" | "state") {
            2
        } else {
            1
        };
        let mut all = args[..words].to_vec();
        all.push("stack.yaml");
        all.extend_from_slice(&args[words..]);
        std::process::Command::new(BIN)
            .args(&all)
            .current_dir(self.dir.path())
            .env("RALPH_DEPLOY_STATE_DIR", self.dir.path().join("state"))
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
        text(&out.stdout)
    }

    async fn conn(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.unwrap()
    }

    /// Logs in as `user` (the server asks every role but the superuser for
    /// a password, so the superuser gives it one first; no other test logs
    /// in as these roles).
    async fn conn_as(&self, user: &str) -> PgConnection {
        let password = format!("test-{}", std::process::id());
        sqlx::query(&format!("ALTER ROLE {user} PASSWORD '{password}'"))
            .execute(&mut self.conn().await)
            .await
            .unwrap();
        let url = self
            .url
            .replacen("postgres@", &format!("{user}:{password}@"), 1);
        PgConnection::connect(&url).await.unwrap()
    }
}

async fn exists(c: &mut PgConnection, regclass: &str) -> bool {
    let r: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(regclass)
        .fetch_one(c)
        .await
        .unwrap();
    r.is_some()
}

#[tokio::test(flavor = "multi_thread")]
async fn fresh_database_gets_the_whole_schema_and_a_second_run_does_nothing() {
    let db = Db::new("mig_fresh").await;
    let plan = db.ok(&["plan"]);
    assert!(
        plan.contains("20260101000002 orchestrations"),
        "the plan lists pending migrations:\n{plan}"
    );
    db.ok(&["apply", "--auto-approve"]);

    let mut c = db.conn().await;
    for t in [
        "ralph.orchestrations",
        "ralph.orchestrations_default",
        "ralph.task_ids",
        "audit.activity_log",
        "ralph.orchestrations_agent_status_created_idx",
        "audit.activity_log_action_idx",
    ] {
        assert!(exists(&mut c, t).await, "{t} missing");
    }
    let exts: Vec<String> = sqlx::query_scalar("SELECT extname::text FROM pg_extension ORDER BY 1")
        .fetch_all(&mut c)
        .await
        .unwrap();
    assert!(
        exts.contains(&"uuid-ossp".to_string()) && exts.contains(&"pg_stat_statements".to_string()),
        "{exts:?}"
    );
    let cols: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indexrelid = 'ralph.orchestrations_agent_status_created_idx'::regclass ORDER BY array_position(i.indkey, a.attnum)",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(cols, ["agent_type", "status", "created_at"]);
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(applied, 7);

    // A second run applies nothing.
    let out = db.run(&["plan", "--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let status = db.ok(&["migrate", "status"]);
    assert_eq!(status.matches("applied").count(), 7, "{status}");
}

#[tokio::test(flavor = "multi_thread")]
async fn new_files_are_planned_and_applied_edited_ones_refused() {
    let db = Db::new("mig_change").await;
    db.ok(&["apply", "--auto-approve"]);

    std::fs::write(
        db.migrations()
            .join("20260101000008_orchestration_priority.sql"),
        "ALTER TABLE ralph.orchestrations ADD COLUMN priority integer NOT NULL DEFAULT 0;\n",
    )
    .unwrap();
    let plan = db.ok(&["plan"]);
    assert!(
        plan.contains("+ \"20260101000008 orchestration priority"),
        "{plan}"
    );
    assert_eq!(
        db.run(&["plan", "--detailed-exitcode"]).status.code(),
        Some(2)
    );
    let out = db.run(&["migrate", "status"]);
    assert!(
        text(&out.stdout).contains("pending  20260101000008"),
        "{}",
        text(&out.stdout)
    );
    db.ok(&["apply", "--auto-approve"]);
    let mut c = db.conn().await;
    let has: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema='ralph' AND table_name='orchestrations' AND column_name='priority')")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(has);

    // Editing an applied file: refused, with a message that says what to do.
    let f = db.migrations().join("20260101000003_audit_log.sql");
    let mut sql = std::fs::read_to_string(&f).unwrap();
    sql.push_str("\n-- an innocent-looking edit\n");
    std::fs::write(&f, sql).unwrap();
    for verb in ["plan", "apply"] {
        let out = db.run(
            &[verb, "--auto-approve"]
                .iter()
                .copied()
                .filter(|a| verb == "apply" || *a != "--auto-approve")
                .collect::<Vec<_>>(),
        );
        assert_eq!(out.status.code(), Some(1), "{verb}");
        let err = text(&out.stderr);
        assert!(
            err.contains("20260101000003") && err.contains("edited after it was applied"),
            "{verb}: {err}"
        );
    }
    let out = db.run(&["migrate", "status"]);
    assert!(
        text(&out.stdout).contains("edited   20260101000003"),
        "{}",
        text(&out.stdout)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_migration_leaves_the_database_as_it_was_and_the_state_names_it() {
    let db = Db::new("mig_fail").await;
    db.ok(&["apply", "--auto-approve"]);
    // The first statement would succeed; the second fails: nothing may stay.
    std::fs::write(
        db.migrations().join("20260101000009_broken.sql"),
        "CREATE TABLE ralph.half_done (id int);\nALTER TABLE ralph.no_such_table ADD COLUMN x int;\n",
    )
    .unwrap();
    let out = db.run(&["apply", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("20260101000009 broken"),
        "{}",
        text(&out.stderr)
    );
    let mut c = db.conn().await;
    assert!(
        !exists(&mut c, "ralph.half_done").await,
        "the failed migration was not rolled back"
    );
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(applied, 7);
    let show = db.ok(&["state", "show", "schema"]);
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    assert!(
        v["attrs"]["failed"]
            .as_str()
            .unwrap_or_default()
            .contains("20260101000009 broken"),
        "{v}"
    );
    // Fixing the file lets the next apply through.
    std::fs::write(
        db.migrations().join("20260101000009_broken.sql"),
        "CREATE TABLE ralph.half_done (id int);\n",
    )
    .unwrap();
    db.ok(&["apply", "--auto-approve"]);
    assert!(exists(&mut c, "ralph.half_done").await);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_application_role_reads_and_writes_but_cannot_change_the_schema() {
    let db = Db::new("mig_role").await;
    db.ok(&["apply", "--auto-approve"]);
    let mut app = db.conn_as("ralph_app").await;
    let search_path: String = sqlx::query_scalar("SHOW search_path")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert!(search_path.starts_with("ralph"), "{search_path}");
    sqlx::query("INSERT INTO orchestrations (task_id, agent_type, status) VALUES ('t-1', 'claude', 'running')").execute(&mut app).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM orchestrations")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert_eq!(n, 1);
    sqlx::query("INSERT INTO audit.activity_log (user_name, action, resource, ip) VALUES ('ops', 'start', 't-1', '10.0.0.1')").execute(&mut app).await.unwrap();
    for forbidden in [
        "DROP TABLE ralph.orchestrations",
        "CREATE TABLE ralph.sneaky (id int)",
        "CREATE TABLE public.sneaky (id int)",
        "ALTER TABLE ralph.orchestrations ADD COLUMN x int",
        "DELETE FROM audit.activity_log",
        "UPDATE audit.activity_log SET action = 'forged'",
        "TRUNCATE ralph.orchestrations",
    ] {
        let err = sqlx::query(forbidden)
            .execute(&mut app)
            .await
            .expect_err(forbidden)
            .to_string();
        assert!(
            err.contains("permission denied") || err.contains("must be owner"),
            "{forbidden}: {err}"
        );
    }
    // Partition maintenance: through the SECURITY DEFINER wrapper only.
    let created: i32 = sqlx::query_scalar("SELECT ralph.maintain_partitions(6)")
        .fetch_one(&mut app)
        .await
        .unwrap();
    assert!(created >= 1, "months 4 to 6 ahead were missing");
    let err = sqlx::query("SELECT ralph.ensure_partitions(8)")
        .execute(&mut app)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("permission denied"), "{err}");
    // A task_id is unique across all partitions.
    let dup = sqlx::query("INSERT INTO orchestrations (task_id, agent_type, created_at) VALUES ('t-1', 'claude', now() - interval '400 days')").execute(&mut app).await;
    assert!(dup.unwrap_err().to_string().contains("duplicate key"));
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_land_in_their_monthly_partitions_and_maintenance_adds_months() {
    let db = Db::new("mig_parts").await;
    db.ok(&["apply", "--auto-approve"]);
    let mut c = db.conn().await;
    // This month, next month, and far in the future (default partition).
    for (task, when) in [
        ("a", "now()"),
        (
            "b",
            "date_trunc('month', now()) + interval '1 month' + interval '1 hour'",
        ),
        ("c", "now() + interval '2 years'"),
    ] {
        sqlx::query(&format!("INSERT INTO ralph.orchestrations (task_id, agent_type, created_at) VALUES ('{task}', 'claude', {when})")).execute(&mut c).await.unwrap();
    }
    let rows = sqlx::query("SELECT task_id, tableoid::regclass::text AS part FROM ralph.orchestrations ORDER BY task_id").fetch_all(&mut c).await.unwrap();
    let parts: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r.get("task_id"), r.get("part")))
        .collect();
    let this_month: String = sqlx::query_scalar(
        "SELECT 'ralph.orchestrations_y' || to_char(now(), 'YYYY') || 'm' || to_char(now(), 'MM')",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_eq!(parts[0], ("a".to_string(), this_month));
    assert_ne!(
        parts[1].1, parts[0].1,
        "next month has a partition of its own"
    );
    assert!(parts[1].1.starts_with("ralph.orchestrations_y"));
    assert_eq!(parts[2].1, "ralph.orchestrations_default");

    // Maintenance creates months ahead and moves the parked row out of DEFAULT.
    let out = db.ok(&["db", "partitions", "--months-ahead", "30"]);
    assert!(out.contains("partition(s) created"), "{out}");
    let part: String = sqlx::query_scalar(
        "SELECT tableoid::regclass::text FROM ralph.orchestrations WHERE task_id = 'c'",
    )
    .fetch_one(&mut c)
    .await
    .unwrap();
    assert_ne!(
        part, "ralph.orchestrations_default",
        "the far-future row moved to its month"
    );
    // And it is idempotent.
    let out = db.ok(&["db", "partitions", "--months-ahead", "30"]);
    assert!(out.contains(": 0 partition(s) created"), "{out}");
    let _ = &db.name;
}

/// A private database is reached through the cluster when the stack names
/// one (a proxy pod and a port-forward through the API server), and only
/// as the cluster's network allows: a name no store has does not resolve
/// from the pod, a NetworkPolicy of the proxies' namespace is obeyed, and
/// the proxy pods are gone when the command ends.
#[tokio::test(flavor = "multi_thread")]
async fn a_private_database_is_reached_through_the_cluster_as_its_network_allows() {
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let db = Db::new("fwd").await;
    let pg = url::Url::parse(&common::pg_server()).unwrap();
    let kubeconfig = std::env::var("RALPH_TEST_KUBECONFIG").unwrap();
    let namespace = format!("fwd-{}", std::process::id());
    let stack = |host: &str| {
        format!(
            "name: {}\nresources:\n  schema:\n    kind: postgres.migrations\n    properties:\n      directory: migrations\n      host: {host}\n      port: {}\n      database: {}\n      username: postgres\n      ssl_mode: require\n      kubeconfig: {kubeconfig}\n      forward_namespace: {namespace}\n",
            db.name.replace('_', "-"),
            pg.port().unwrap(),
            db.name
        )
    };
    let write = |host: &str| std::fs::write(db.dir.path().join("stack.yaml"), stack(host)).unwrap();
    let pods = kube::Api::<Pod>::namespaced(common::kube_client().await, &namespace);
    let proxies = || async {
        // Deleted pods linger until the node confirms: count the live ones.
        let mut live = 0;
        for _ in 0..40 {
            live = pods
                .list(&Default::default())
                .await
                .map(|l| {
                    l.items
                        .iter()
                        .filter(|p| p.metadata.deletion_timestamp.is_none())
                        .count()
                })
                .unwrap_or(0);
            if live == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        live
    };

    // A name that no store of the local cloud has resolves nowhere, from
    // the pod either: refused, with the cluster's reason, nothing recorded.
    write("nowhere.c0ffee.us-east-1.rds.amazonaws.com");
    let out = db.run(&["apply", "--auto-approve"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr) + &text(&out.stdout);
    assert!(err.contains("(through the cluster)"), "{err}");
    assert!(err.contains("does not resolve"), "{err}");
    assert!(!db.dir.path().join("state").exists() || !db.ok(&["state", "list"]).contains("schema"));
    assert_eq!(proxies().await, 0, "a proxy pod was left behind");

    // The database's address as the nodes see it: migrated through the
    // cluster, with TLS (the server's certificate, not verified).
    write("127.0.0.1");
    let out = db.ok(&["apply", "--auto-approve"]);
    assert!(out.contains("schema"), "{out}");
    let mut c = db.conn().await;
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert!(applied > 0);
    assert!(db.ok(&["migrate", "status"]).contains("applied"));
    assert_eq!(proxies().await, 0, "a proxy pod was left behind");

    // A NetworkPolicy that lets the proxies' namespace reach nothing is
    // obeyed, as on a cluster that enforces policies.
    let deny: NetworkPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": { "name": "deny-egress", "namespace": namespace },
        "spec": { "podSelector": {}, "policyTypes": ["Egress"] },
    }))
    .unwrap();
    let policies = kube::Api::<NetworkPolicy>::namespaced(common::kube_client().await, &namespace);
    policies.create(&Default::default(), &deny).await.unwrap();
    // Policies take effect a moment after they are made, on a cluster as
    // on the node simulator (which reads them once per round, slower when
    // the machine is busy): the next commands are refused within seconds.
    let started = std::time::Instant::now();
    let err = loop {
        let out = db.run(&["migrate", "status"]);
        let err = text(&out.stderr) + &text(&out.stdout);
        if out.status.code() != Some(0) || started.elapsed().as_secs() > 20 {
            assert_ne!(out.status.code(), Some(0), "never refused: {err}");
            break err;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    assert!(
        err.contains("NetworkPolicy deny-egress admits no egress"),
        "{err}"
    );
    let _ = kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(common::kube_client().await)
        .delete(&namespace, &Default::default())
        .await;
}
