//! `backup` and `restore` against the real local PostgreSQL and moto's S3:
//! a restored database has the same rows, table by table (checked here
//! independently of the tool's own manifest), retention removes only our
//! expired backups, and a restore that does not match is refused.

use crate::common;

use common::{text, World};
use sqlx::Connection;

/// Every ordinary table's row count and an order-independent checksum.
async fn sums(url: &str) -> Vec<(String, i64, String)> {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relkind = 'r' AND n.nspname IN ('ralph', 'audit', 'public') ORDER BY 1",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    let mut out = Vec::new();
    for t in tables {
        let (n, sum): (i64, String) = sqlx::query_as(&format!(
            "SELECT count(*), coalesce(sum(hashtext(x::text)::bigint), 0)::text FROM {t} x"
        ))
        .fetch_one(&mut c)
        .await
        .unwrap();
        out.push((t, n, sum));
    }
    out
}

/// `status` says there is no backup yet, and fails.
fn no_backup_yet(w: &World) {
    let out = w.run("status", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("no backup yet (RPO 1h)"),
        "{}",
        text(&out.stdout)
    );
}

/// 3,000 orchestrations across three monthly partitions; the connection.
async fn orchestrations(db_url: &str) -> sqlx::PgConnection {
    let mut c = sqlx::PgConnection::connect(db_url).await.unwrap();
    sqlx::query(
        "INSERT INTO ralph.orchestrations (task_id, agent_type, status, created_at)
         SELECT 't-' || i, 'claude', 'completed', now() - (i % 3) * interval '20 days'
           FROM generate_series(1, 3000) i",
    )
    .execute(&mut c)
    .await
    .unwrap();
    c
}

/// No database `into` on the server at `base`; an admin connection.
async fn fresh_target(base: &str, into: &str) -> sqlx::PgConnection {
    let mut admin = sqlx::PgConnection::connect(&format!("{base}/postgres"))
        .await
        .unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {into} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    admin
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_restores_to_the_same_rows_and_retention_removes_only_expired_backups() {
    let pid = std::process::id();
    let name = format!("bk{pid}");
    let db_url = common::fresh_database(&name).await;
    let w = World::from_stack("kubernetes-app.yaml", &name);
    let bucket = format!("{name}-backups");
    std::fs::write(
        w.stack(),
        format!(
            "name: {name}\n\
             variables:\n  db_url: {{ type: string }}\n\
             environments:\n  production: {{}}\n\
             recovery:\n  rpo: 1h\n\
             resources:\n  backups:\n    kind: aws.s3_bucket\n    properties:\n      name: {bucket}\n      expire_after_days: 30\n\
             \x20 schema:\n    kind: postgres.migrations\n    properties:\n      directory: {}\n      url: ${{var.db_url}}\n",
            common::repo().join("migrations").display()
        ),
    )
    .unwrap();
    let mut w = w;
    w.env.push((
        "RALPH_DEPLOY_VAR_db_url".into(),
        format!("{db_url}?sslmode=disable"),
    ));
    w.ok("apply", &["--auto-approve"]);

    // No backup yet: `status` holds that against the RPO.
    no_backup_yet(&w);

    // Rows across several monthly partitions, and an audit trail.
    let mut c = orchestrations(&db_url).await;
    sqlx::query(
        "INSERT INTO audit.activity_log (user_name, action, resource, details)
         SELECT 'ops', 'start', 't-' || i, jsonb_build_object('n', i) FROM generate_series(1, 2000) i",
    )
    .execute(&mut c)
    .await
    .unwrap();

    // What retention must and must not touch.
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&w.sdk_config().await)
            .force_path_style(true)
            .build(),
    );
    let prefix = format!("backups/{name}/production/");
    let expired = format!("{prefix}20200101T000000Z.dump");
    // A backup killed between its dump and its manifest: a minute old,
    // but nothing `status` may count or `restore` could check.
    let unfinished = format!(
        "{prefix}{}.dump",
        (chrono::Utc::now() - chrono::Duration::minutes(1)).format("%Y%m%dT%H%M%SZ")
    );
    let keep = [
        format!("{prefix}README.txt"),
        format!("backups/{name}/staging/20200101T000000Z.dump"),
        unfinished.clone(),
    ];
    for k in std::iter::once(&expired).chain(keep.iter()) {
        s3.put_object()
            .bucket(&bucket)
            .key(k)
            .body(b"old".to_vec().into())
            .send()
            .await
            .unwrap();
    }

    // Only dumps without a manifest: none is a backup (the recent one
    // would pass the RPO if it counted).
    no_backup_yet(&w);
    let report = json(&w.run("backup", &["--json"]));
    let out = w.run("status", &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("old (RPO 1h)"),
        "{}",
        text(&out.stdout)
    );
    let key = report["key"].as_str().unwrap().to_string();
    assert!(
        key.starts_with(&prefix) && key.ends_with(".dump"),
        "{report}"
    );
    assert_eq!(report["removed"], serde_json::json!([expired]), "{report}");
    let listed: Vec<String> = s3
        .list_objects_v2()
        .bucket(&bucket)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    for k in keep.iter().chain([&key, &format!("{key}.json")]) {
        assert!(listed.contains(k), "{k} is gone: {listed:?}");
    }
    assert!(!listed.contains(&expired));
    let manifest = &report["manifest"];
    let rows: i64 = manifest["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["rows"].as_i64().unwrap())
        .sum();
    assert!(rows >= 5000, "{manifest}");

    // Restore into a new database: the same rows, by our own count.
    let into = format!("{name}_restored");
    let base = common::pg_server();
    let mut admin = fresh_target(&base, &into).await;
    let restored = json(&w.run("restore", &[&key, "--into", &into, "--json"]));
    assert_eq!(restored["database"], into.as_str());
    let before = sums(&db_url).await;
    let after = sums(&format!("{base}/{into}")).await;
    assert!(before
        .iter()
        .any(|(t, n, _)| t == "audit.activity_log" && *n == 2000));
    assert_eq!(before, after, "the restored database differs");

    // Never over an existing database.
    let out = w.run("restore", &[&key, "--into", &into]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("exists already"),
        "{}",
        text(&out.stderr)
    );

    // A backup that does not hold what its manifest says is not reported
    // as restored.
    let manifest_key = format!("{key}.json");
    let mut m: serde_json::Value = serde_json::from_slice(
        &s3.get_object()
            .bucket(&bucket)
            .key(&manifest_key)
            .send()
            .await
            .unwrap()
            .body
            .collect()
            .await
            .unwrap()
            .into_bytes(),
    )
    .unwrap();
    let t = m["tables"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|t| t["table"] == "audit.activity_log")
        .unwrap();
    t["rows"] = serde_json::json!(2001);
    s3.put_object()
        .bucket(&bucket)
        .key(&manifest_key)
        .body(serde_json::to_vec(&m).unwrap().into())
        .send()
        .await
        .unwrap();
    let other = format!("{name}_tampered");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {other} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .unwrap();
    let out = w.run("restore", &[&key, "--into", &other]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("audit.activity_log: 2001 rows in the backup, 2000 restored"),
        "{}",
        text(&out.stderr)
    );
}

/// The objects of a bucket in the Google Cloud double.
fn gcs_keys(bucket: &str) -> Vec<String> {
    common::gcp_get(&format!("/storage/v1/b/{bucket}/o")).expect("the bucket's objects")["items"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|o| o["name"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_to_cloud_storage_restores_the_same_rows_and_the_full_bucket_is_kept() {
    let pid = std::process::id();
    let name = format!("gbk{pid}");
    let db_url = common::fresh_database(&name).await;
    let mut w = World::from_stack("kubernetes-app.yaml", &name);
    let bucket = format!("{name}-backups");
    std::fs::write(
        w.stack(),
        format!(
            "name: {name}\n\
             variables:\n  db_url: {{ type: string }}\n\
             cloud:\n  gcp:\n    project: {name}-project\n    region: europe-west1\n\
             environments:\n  production:\n    waivers: [{{ rule: stores.replica, reason: the test reads no replica }}]\n\
             recovery:\n  rpo: 1h\n\
             resources:\n  backups:\n    kind: gcp.storage_bucket\n    properties:\n      name: {bucket}\n      location: europe-west1\n      expire_after_days: 30\n      labels: {{ purpose: backups }}\n\
             \x20 db:\n    kind: gcp.sql_instance\n    protect: true\n    properties:\n      name: {name}-postgres\n      database_version: POSTGRES_15\n      tier: db-custom-1-3840\n      availability_type: REGIONAL\n      ipv4_enabled: true\n      deletion_protection: true\n\
             \x20 schema:\n    kind: postgres.migrations\n    properties:\n      directory: {}\n      url: ${{var.db_url}}\n",
            common::repo().join("migrations").display()
        ),
    )
    .unwrap();
    w.env.push((
        "RALPH_DEPLOY_VAR_db_url".into(),
        format!("{db_url}?sslmode=disable"),
    ));
    let project = format!("{name}-project");
    ureq::post(&format!("{}/__double/project", common::gcp_endpoint()))
        .send_string(&serde_json::json!({"project": project, "delay_scale": 0.05}).to_string())
        .unwrap();
    w.ok("apply", &["--auto-approve"]);
    // The bucket as Google reports it is the bucket as the stack says.
    let plan = w.plan_json(&[]);
    assert!(
        common::changed(&plan).is_empty(),
        "{:?}",
        common::changed(&plan)
    );
    let held = common::gcp_get(&format!("/storage/v1/b/{bucket}")).unwrap();
    assert_eq!(
        held["iamConfiguration"]["publicAccessPrevention"],
        "enforced"
    );
    assert_eq!(
        held["iamConfiguration"]["uniformBucketLevelAccess"]["enabled"],
        true
    );
    assert_eq!(held["versioning"]["enabled"], true);

    no_backup_yet(&w);

    orchestrations(&db_url).await;

    // An expired backup of ours, and an object that is not one.
    let prefix = format!("backups/{name}/production/");
    let expired = format!("{prefix}20200101T000000Z.dump");
    let other = format!("{prefix}README.txt");
    for k in [&expired, &other] {
        ureq::post(&format!(
            "{}/upload/storage/v1/b/{bucket}/o?uploadType=media&name={}",
            common::gcp_endpoint(),
            k.replace('/', "%2F")
        ))
        .send_bytes(b"old")
        .unwrap();
    }

    // With the cloud's own backup of the primary: an on-demand backup run.
    let report = json(&w.run("backup", &["--json", "--snapshot"]));
    assert!(
        report["snapshot"]
            .as_str()
            .unwrap_or_default()
            .contains("on-demand backup"),
        "{report}"
    );
    let runs = common::gcp_get(&format!(
        "/v1/projects/{project}/instances/{name}-postgres/backupRuns"
    ))
    .unwrap();
    assert_eq!(runs["items"][0]["type"], "ON_DEMAND", "{runs}");
    assert_eq!(runs["items"][0]["status"], "SUCCESSFUL", "{runs}");
    let key = report["key"].as_str().unwrap().to_string();
    assert_eq!(report["removed"], serde_json::json!([expired]), "{report}");
    assert_eq!(
        report["url"],
        format!("gs://{bucket}/{key}").as_str(),
        "{report}"
    );
    let keys = gcs_keys(&bucket);
    for k in [&key, &format!("{key}.json"), &other] {
        assert!(keys.contains(k), "{k} is not in the bucket: {keys:?}");
    }
    assert!(!keys.contains(&expired), "{keys:?}");
    assert!(
        !keys.iter().any(|k| k.contains(".part-")),
        "the upload's parts were left behind: {keys:?}"
    );
    let out = w.run("status", &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // Restored from Cloud Storage: the same rows, by our own count.
    let into = format!("{name}_restored");
    let base = common::pg_server();
    fresh_target(&base, &into).await;
    json(&w.run("restore", &[&key, "--into", &into, "--json"]));
    assert_eq!(sums(&db_url).await, sums(&format!("{base}/{into}")).await);

    // A bucket that holds backups is not destroyed unless the stack says
    // so (the protected database goes: destroy is told it may).
    let out = w.run("destroy", &["--auto-approve", "--allow-protected"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        text(&out.stderr).contains("still holds") || text(&out.stdout).contains("still holds"),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(common::gcp_get(&format!("/storage/v1/b/{bucket}")).is_some());
}
