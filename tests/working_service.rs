//! A deployment is done when the service works: the orchestrator's pods get
//! DATABASE_URL and REDIS_URL with their passwords from their Secret, and
//! those log in to the real PostgreSQL (as the application's role) and the
//! real Redis (with AUTH) that scripts/test starts. Checked the way an
//! operator would: read the Secret the pods get and connect with it.

use crate::common;

use common::{text, World};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::Api;
use sqlx::Connection;

fn need(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!("{var} is not set: run the tests with scripts/test, which starts the local cloud")
    })
}

async fn kube_client() -> kube::Client {
    common::kube_client().await
}

/// The Secret's values, as the pods get them.
async fn pod_env(ns: &str) -> std::collections::BTreeMap<String, String> {
    let s = Api::<Secret>::namespaced(kube_client().await, ns)
        .get("ralph-orchestrator-secrets")
        .await
        .unwrap();
    s.data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8(v.0).unwrap()))
        .collect()
}

async fn secrets_hash(ns: &str) -> String {
    let d = Api::<Deployment>::namespaced(kube_client().await, ns)
        .get("ralph-orchestrator")
        .await
        .unwrap();
    d.spec.template.metadata.unwrap().annotations.unwrap()["ralph-deploy.io/secrets-hash"].clone()
}

/// Logs in with `url` and writes to the audit log as the application would.
async fn log_in_and_write(url: &str) -> Result<String, sqlx::Error> {
    let mut c = sqlx::PgConnection::connect(url).await?;
    let who: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(&mut c)
        .await?;
    // Unqualified: the role's search_path finds the application's schema.
    sqlx::query("SELECT count(*) FROM orchestrations")
        .execute(&mut c)
        .await?;
    sqlx::query("INSERT INTO audit.activity_log (user_name, action, resource) VALUES ($1, 'login-check', 'tests')")
        .bind(&who)
        .execute(&mut c)
        .await?;
    Ok(who)
}

async fn redis_ping(url: &str) -> redis::RedisResult<String> {
    let client = redis::Client::open(url)?;
    let mut c = client.get_multiplexed_async_connection().await?;
    redis::cmd("PING").query_async(&mut c).await
}

fn exit_code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

#[tokio::test]
async fn the_pods_credentials_log_in_to_postgres_and_redis_and_a_rotation_replaces_them() {
    let pid = std::process::id();
    let ns = format!("ws-{pid}");
    let db = format!("ws_{pid}");
    // World gives each test a login role of its own (roles are server-wide).
    let role = format!("app_ws_{pid}");
    common::fresh_database(&db).await;
    let pg = url::Url::parse(&common::pg_server()).unwrap();
    let redis = url::Url::parse(&need("RALPH_TEST_REDIS_URL")).unwrap();
    // Both reached through proxies that the test can take down, as an
    // outage would (the servers themselves are shared with other tests).
    let zero = std::time::Duration::ZERO;
    let pg_proxy = common::SlowProxy::start(&format!("127.0.0.1:{}", pg.port().unwrap()), zero);
    let redis_proxy =
        common::SlowProxy::start(&format!("127.0.0.1:{}", redis.port().unwrap()), zero);
    let admin_url = format!("postgres://postgres@127.0.0.1:{}/{db}", pg_proxy.port());
    let redis_password = need("RALPH_TEST_REDIS_PASSWORD");

    let mut w = World::from_stack("existing-cluster.yaml", &ns);
    for (k, v) in [
        ("RALPH_DEPLOY_VAR_image_tag", "1.0.0".to_string()),
        ("RALPH_DEPLOY_VAR_database_host", "127.0.0.1".to_string()),
        (
            "RALPH_DEPLOY_VAR_database_port",
            pg_proxy.port().to_string(),
        ),
        ("RALPH_DEPLOY_VAR_database_name", db.clone()),
        // No public host: this is about the stores; nothing here serves an
        // Ingress (`status` would rightly report the edge unserved).
        ("RALPH_DEPLOY_VAR_ingress_host", String::new()),
        ("RALPH_DEPLOY_VAR_database_ssl_mode", "disable".to_string()),
        (
            "RALPH_DEPLOY_VAR_database_admin_url",
            format!("{admin_url}?sslmode=disable"),
        ),
        (
            "RALPH_DEPLOY_VAR_database_admin_password_env",
            String::new(),
        ),
        ("RALPH_DEPLOY_VAR_redis_host", "127.0.0.1".to_string()),
        (
            "RALPH_DEPLOY_VAR_redis_port",
            redis_proxy.port().to_string(),
        ),
        ("RALPH_DEPLOY_VAR_redis_scheme", "redis".to_string()),
        ("REDIS_PASSWORD", redis_password.clone()),
        (
            "ANTHROPIC_API_KEY",
            "sk-ant-test-working-service".to_string(),
        ),
    ] {
        w.env.push((k.to_string(), v));
    }
    // The local PostgreSQL speaks no TLS: the test accepts what `check`
    // refuses in production, as a team would, in the stack.
    let stack = std::fs::read_to_string(w.stack()).unwrap();
    std::fs::write(
        w.stack(),
        format!("{stack}\nwaivers:\n  - {{ rule: stores.encryption, reason: the local PostgreSQL has no TLS }}\n"),
    )
    .unwrap();
    let out = w.run("apply", &["--auto-approve"]);
    let all_output = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{all_output}");

    // What the pods get: the urls with their passwords, in the Secret only.
    let env = pod_env(&ns).await;
    let database_url = env["DATABASE_URL"].clone();
    let redis_url = env["REDIS_URL"].clone();
    let db_password = env["DATABASE_PASSWORD"].clone();
    assert_eq!(db_password.len(), 40, "a generated password");
    assert!(database_url.contains(&format!("{role}:{db_password}@127.0.0.1")));
    assert_eq!(env["REDIS_PASSWORD"], redis_password);
    let cm = Api::<ConfigMap>::namespaced(kube_client().await, &ns)
        .get("ralph-orchestrator-config")
        .await
        .unwrap()
        .data
        .unwrap();
    assert!(
        !cm.contains_key("DATABASE_URL") && !cm.contains_key("REDIS_URL"),
        "{cm:?}"
    );

    // They work: the role logs in and writes, Redis takes the AUTH.
    assert_eq!(log_in_and_write(&database_url).await.unwrap(), role);
    assert_eq!(redis_ping(&redis_url).await.unwrap(), "PONG");
    let without_password = redis_url.replacen(&format!(":{redis_password}@"), "@", 1);
    assert!(
        redis_ping(&without_password).await.is_err(),
        "Redis took a client without AUTH"
    );

    // No password anywhere but the secret store and the cluster.
    let state = std::fs::read_dir(w.state_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    for secret in [db_password.as_str(), redis_password.as_str()] {
        assert!(!state.contains(secret), "a password is in the state");
        assert!(!all_output.contains(secret), "a password is in the output");
    }

    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(
        exit_code(&out),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // `status` finds it healthy, and says which part is not when the
    // database or Redis is down.
    let all_up = [
        ("deployment", true),
        ("health", true),
        ("database", true),
        ("redis", true),
    ];
    let (code, report) = status(&w);
    assert_eq!(code, Some(0), "{report}");
    assert_eq!(checks(&report), all_up, "{report}");
    let human = w.run("status", &[]);
    assert!(
        text(&human.stdout).contains("Healthy."),
        "{}",
        text(&human.stdout)
    );
    for secret in [db_password.as_str(), redis_password.as_str()] {
        assert!(!report.to_string().contains(secret));
        assert!(!text(&human.stdout).contains(secret));
    }
    pg_proxy.set_up(false);
    let (code, report) = status(&w);
    pg_proxy.set_up(true);
    assert_eq!(code, Some(1), "{report}");
    let mut want = all_up;
    want[2].1 = false;
    assert_eq!(checks(&report), want, "{report}");
    redis_proxy.set_up(false);
    let (code, report) = status(&w);
    redis_proxy.set_up(true);
    assert_eq!(code, Some(1), "{report}");
    let mut want = all_up;
    want[3].1 = false;
    assert_eq!(checks(&report), want, "{report}");

    // Rotation: a new secret version, the role's password, the pods' Secret.
    let hash_before = secrets_hash(&ns).await;
    w.env
        .push(("RALPH_DEPLOY_VAR_password_rotation".into(), "1".into()));
    let plan: serde_json::Value = serde_json::from_str(&w.ok("plan", &["--json"])).unwrap();
    let changed: Vec<&str> = plan["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["action"] != "no_op")
        .map(|c| c["address"].as_str().unwrap())
        .collect();
    for address in [
        "secrets.database_password",
        "app.app_role",
        "app.orchestrator",
    ] {
        assert!(
            changed.contains(&address),
            "{address} not in the plan: {plan}"
        );
    }
    let out = w.run("apply", &["--auto-approve"]);
    let rotate_output = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{rotate_output}");
    let env = pod_env(&ns).await;
    assert_ne!(
        env["DATABASE_PASSWORD"], db_password,
        "the password did not change: {rotate_output}"
    );
    assert!(!rotate_output.contains(&env["DATABASE_PASSWORD"]));
    assert_eq!(log_in_and_write(&env["DATABASE_URL"]).await.unwrap(), role);
    let old = log_in_and_write(&database_url).await;
    assert!(
        matches!(&old, Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("28P01")),
        "the old password still logs in: {old:?}"
    );
    assert_ne!(
        secrets_hash(&ns).await,
        hash_before,
        "the pods were not restarted"
    );

    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(exit_code(&out), Some(0), "{}", text(&out.stdout));
    assert_eq!(status(&w).0, Some(0), "unhealthy after the rotation");

    // A release that is not the recorded one, and cannot start: unhealthy.
    let patch = serde_json::json!({"spec": {"template": {"spec": {"containers": [
        {"name": "orchestrator", "image": "ghcr.io/mikeyobrien/ralph-orchestrator:broken-by-hand"}
    ]}}}});
    Api::<Deployment>::namespaced(kube_client().await, &ns)
        .patch(
            "ralph-orchestrator",
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Strategic(patch),
        )
        .await
        .unwrap();
    let (code, report) = status(&w);
    assert_eq!(code, Some(1), "{report}");
    assert_eq!(checks(&report)[0], ("deployment", false), "{report}");
}

/// `status --json`: its exit code and report.
fn status(w: &World) -> (Option<i32>, serde_json::Value) {
    let out = w.run("status", &["--json"]);
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code(), report)
}

/// Each check's name and whether it passed.
fn checks(report: &serde_json::Value) -> Vec<(&str, bool)> {
    report["services"][0]["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["check"].as_str().unwrap(),
                c["healthy"].as_bool().unwrap(),
            )
        })
        .collect()
}
