//! The Google Cloud apply killed (SIGKILL) right after each of its mutating
//! requests, then run again: every run ends with the whole stack in the
//! cloud exactly once, all of it recorded in the state, and a plan with
//! nothing to do. The double kills the tool itself (scripts/local-cloud/
//! gcp_double.py, `/__double/project`); each kill point is a project of its
//! own, so kill points run side by side without resetting anything.

use crate::common;

use std::os::unix::process::ExitStatusExt;

use common::{changed, fresh_database, gcp_get, gcp_requests, text, World};
use serde_json::{json, Value};

const LANES: usize = 3;

/// The project's delays and kill point; `fresh` makes it a new project,
/// whose APIs are off until the stack enables them.
fn configure(project: &str, kill_after: u64, pidfile: &str, fresh: bool) {
    let body = json!({"project": project, "delay_scale": 0.05, "kill_after": kill_after, "pidfile": pidfile, "fresh": fresh});
    ureq::post(&format!("{}/__double/project", common::gcp_endpoint()))
        .send_string(&body.to_string())
        .unwrap();
}

fn set_project(w: &mut World, project: &str) {
    w.env.retain(|(k, _)| k != "RALPH_DEPLOY_VAR_project");
    w.env
        .push(("RALPH_DEPLOY_VAR_project".into(), project.into()));
}

fn apply(w: &World) -> std::process::Output {
    w.run("apply", &["--auto-approve"])
}

fn count(path: &str, field: &str) -> usize {
    gcp_get(path)
        .and_then(|v| v.get(field).and_then(Value::as_array).map(Vec::len))
        .unwrap_or(0)
}

/// The whole stack is there once, recorded, and a plan has nothing to do.
fn assert_consistent(w: &World, project: &str, context: &str) {
    let n = &w.stack_name;
    // The primary's name is generated: the state has it.
    let db = common::state_json(w)["resources"]["db"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    for (path, field, want) in [
        (
            format!("/compute/v1/projects/{project}/global/networks"),
            "items",
            1,
        ),
        (
            format!("/compute/v1/projects/{project}/regions/us-central1/subnetworks"),
            "items",
            1,
        ),
        (
            format!("/compute/v1/projects/{project}/global/firewalls"),
            "items",
            2,
        ),
        (
            format!("/compute/v1/projects/{project}/regions/us-central1/routers"),
            "items",
            1,
        ),
        (
            format!("/compute/v1/projects/{project}/global/addresses"),
            "items",
            1,
        ),
        (
            format!("/compute/v1/projects/{project}/global/securityPolicies"),
            "items",
            1,
        ),
        (
            format!("/v1/projects/{project}/locations/-/clusters"),
            "clusters",
            1,
        ),
        (
            format!(
                "/v1/projects/{project}/locations/us-central1/clusters/{n}-production/nodePools"
            ),
            "nodePools",
            1,
        ),
        // The primary and its read replica.
        (format!("/v1/projects/{project}/instances"), "items", 2),
        (
            format!("/v1/projects/{project}/instances/{db}/databases"),
            "items",
            2,
        ),
        (
            format!("/v1/projects/{project}/locations/-/instances"),
            "instances",
            1,
        ),
        (format!("/v1/projects/{project}/secrets"), "secrets", 7),
        // The five a new project has, and the seven more the stack enables.
        (
            format!("/v1/projects/{project}/services?filter=state:ENABLED"),
            "services",
            12,
        ),
        (
            format!("/v1/projects/{project}/serviceAccounts"),
            "accounts",
            2,
        ),
    ] {
        assert_eq!(count(&path, field), want, "{context}: {path}");
    }
    // Every secret has a value.
    for s in gcp_get(&format!("/v1/projects/{project}/secrets")).unwrap()["secrets"]
        .as_array()
        .unwrap()
    {
        assert!(
            gcp_get(&format!(
                "/v1/{}/versions/latest:access",
                s["name"].as_str().unwrap()
            ))
            .is_some(),
            "{context}: {} has no version",
            s["name"]
        );
    }
    let state = common::state_json(w);
    assert_eq!(
        state["resources"].as_object().map(|r| r.len()).unwrap_or(0),
        46,
        "{context}: the state"
    );
    let plan = w.plan_json(&[]);
    assert!(changed(&plan).is_empty(), "{context}: {:?}", changed(&plan));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kill_after_every_mutating_request_of_the_gcp_apply_is_recovered() {
    let name = format!("tx{}", std::process::id());
    let db = fresh_database(&format!("gcpx_{name}")).await;
    let mut worlds = Vec::new();
    for lane in 0..LANES {
        let mut w = World::from_stack("gcp-production.yaml", &name);
        w.env.push((
            "RALPH_DEPLOY_VAR_database_tunnel_url".into(),
            format!("{db}?sslmode=disable"),
        ));
        w.env
            .push(("RALPH_DEPLOY_VAR_image_tag".into(), "1.0.0".into()));
        w.env
            .push(("ANTHROPIC_API_KEY".into(), "sk-ant-crash".into()));
        w.env.retain(|(k, _)| k != "RALPH_DEPLOY_VAR_namespace");
        w.env.push((
            "RALPH_DEPLOY_VAR_namespace".into(),
            format!("{name}-{lane}"),
        ));
        // One database role per lane: lanes share the server.
        w.env.retain(|(k, _)| k != "RALPH_DEPLOY_VAR_app_role");
        w.env.push((
            "RALPH_DEPLOY_VAR_app_role".into(),
            format!("app_{name}_{lane}"),
        ));
        worlds.push(w);
    }
    // How many mutating requests a whole apply makes.
    let first = format!("{name}-all");
    configure(&first, 0, "", true);
    set_project(&mut worlds[0], &first);
    let out = apply(&worlds[0]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let total = gcp_requests(&first)["mutations"].as_u64().unwrap();
    assert!(total >= 25, "only {total} mutating requests?");
    assert_consistent(&worlds[0], &first, "the uninterrupted apply");

    let points = common::kill_points(total);
    let points = &points;
    let covered = std::sync::atomic::AtomicU64::new(0);
    let unreached = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|scope| {
        for (lane, w) in worlds.iter_mut().enumerate() {
            let covered = &covered;
            let unreached = &unreached;
            scope.spawn(move || {
                let pidfile = w.dir.path().join("apply.pid");
                for &k in points.iter().skip(lane).step_by(LANES) {
                    let project = format!("{}-k{k}", w.stack_name);
                    let _ = std::fs::remove_dir_all(w.state_dir());
                    set_project(w, &project);
                    configure(&project, k, pidfile.to_str().unwrap(), true);
                    let stack = w.stack();
                    let status = common::run_to_be_killed(
                        w,
                        &pidfile,
                        &format!("apply {} --env production --auto-approve", stack.display()),
                    );
                    if status.success() {
                        // This run made fewer mutating requests than the
                        // first (a retried write or two fewer): no kill point k.
                        let made = gcp_requests(&project)["mutations"].as_u64().unwrap();
                        assert!(
                            made < k,
                            "k={k}: the apply made {made} mutating requests and was not killed"
                        );
                        unreached.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    } else {
                        assert_eq!(status.signal(), Some(9), "k={k}: the apply was not killed");
                    }
                    configure(&project, 0, "", false);
                    let out = apply(w);
                    assert!(
                        out.status.success(),
                        "k={k}: the apply after the kill failed:\n{}",
                        text(&out.stderr)
                    );
                    assert_consistent(w, &project, &format!("k={k}"));
                    covered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            });
        }
    });
    let covered = covered.into_inner();
    let unreached = unreached.into_inner();
    println!("covered {covered} kill points of {total} mutating requests ({unreached} not reached: that run made fewer)");
    let visited = points.len() as u64;
    assert_eq!(covered, visited);
    // (Against all the points: those a shorter run does not reach are at
    // its end, and the last is always visited.)
    assert!(
        unreached * 10 <= total,
        "{unreached} of {visited} kill points (of {total}) were never reached"
    );
}

/// The instances a failover retired (no longer the stack's), deleted as
/// their operator would.
fn delete_retired(project: &str) {
    let all = gcp_get(&format!("/v1/projects/{project}/instances")).unwrap();
    for i in all["items"].as_array().into_iter().flatten() {
        if i["settings"]["userLabels"]
            .get("ralph-deploy-retired")
            .is_none()
        {
            continue;
        }
        common::gcp_delete_sql_instance(project, i["name"].as_str().unwrap());
    }
}

fn failover(w: &World) -> std::process::Output {
    w.run("failover", &["--auto-approve"])
}

/// Cloud SQL's failover killed after each of its mutating requests
/// (promoteReplica, the old primary's labels, the promoted one's, its
/// settings): every other command refuses, the next `failover` finishes
/// it, and an apply then leaves the stack whole (one primary and a new
/// replica, the primary's databases, an empty plan).
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_after_every_mutating_request_of_a_gcp_failover_is_finished_by_the_next() {
    let name = format!("tf{}", std::process::id());
    let db = fresh_database(&format!("gcpf_{name}")).await;
    let mut w = World::from_stack("gcp-production.yaml", &name);
    w.env.push((
        "RALPH_DEPLOY_VAR_database_tunnel_url".into(),
        format!("{db}?sslmode=disable"),
    ));
    w.env
        .push(("RALPH_DEPLOY_VAR_image_tag".into(), "1.0.0".into()));
    w.env
        .push(("ANTHROPIC_API_KEY".into(), "sk-ant-crash".into()));
    let project = format!("{name}-fo");
    set_project(&mut w, &project);
    configure(&project, 0, "", true);
    let out = apply(&w);
    assert!(out.status.success(), "{}", text(&out.stderr));

    // How many mutating requests a whole failover makes.
    let before = gcp_requests(&project)["mutations"].as_u64().unwrap();
    let out = failover(&w);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let total = gcp_requests(&project)["mutations"].as_u64().unwrap() - before;
    assert!(total >= 3, "only {total} mutating requests?");

    let pidfile = w.dir.path().join("failover.pid");
    let mut killed = 0;
    // Every point: a failover makes a handful of mutating requests.
    for k in 1..=total {
        // Back to a primary and its replica.
        let out = apply(&w);
        assert!(out.status.success(), "k={k}: {}", text(&out.stderr));
        delete_retired(&project);
        assert_consistent(&w, &project, &format!("before k={k}"));

        configure(&project, k, pidfile.to_str().unwrap(), false);
        let stack = w.stack();
        let status = common::run_to_be_killed(
            &w,
            &pidfile,
            &format!(
                "failover {} --env production --auto-approve",
                stack.display()
            ),
        );
        configure(&project, 0, "", false);
        if status.success() {
            continue;
        }
        assert_eq!(
            status.signal(),
            Some(9),
            "k={k}: the failover was not killed"
        );
        killed += 1;
        let out = apply(&w);
        assert!(
            !out.status.success(),
            "k={k}: apply ran with a failover unfinished"
        );
        assert!(
            text(&out.stderr).contains("ralph-deploy failover"),
            "k={k}: {}",
            text(&out.stderr)
        );
        let out = failover(&w);
        assert!(
            out.status.success(),
            "k={k}: the failover after the kill failed:\n{}",
            text(&out.stderr)
        );
        let out = apply(&w);
        assert!(out.status.success(), "k={k}: {}", text(&out.stderr));
        delete_retired(&project);
        assert_consistent(&w, &project, &format!("after k={k}"));
    }
    println!("killed {killed} of {total} failovers at a mutating request");
    assert!(
        killed * 10 >= total * 8,
        "only {killed} of {total} kill points reached"
    );
}
