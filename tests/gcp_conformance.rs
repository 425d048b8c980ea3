//! The Google Cloud test double checked against Google's own Discovery
//! documents (shipped in the PyPI package google-api-python-client): every
//! route it serves exists there with the same HTTP method and path template,
//! and every request the tool sends through an apply, an in-place update, a
//! rotation and a destroy uses query parameters the method declares and a
//! body that validates against the method's request schema, and every
//! answer of the double validates against the method's response schema (or
//! is Google's error object). The checker is shown to fail on deliberately
//! wrong routes, bodies and answers (tests/gcp/).

use crate::common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::{fresh_database, gcp_get, text, World};
use serde_json::Value;

/// The Discovery documents, by the prefix of their method ids.
struct Discovery {
    docs: BTreeMap<&'static str, Value>,
}

impl Discovery {
    fn load() -> Discovery {
        let dir = PathBuf::from(std::env::var("RALPH_TEST_GCP_DISCOVERY").expect(
            "RALPH_TEST_GCP_DISCOVERY is not set: run the tests with scripts/test (scripts/gcp.sh discovery)",
        ));
        let mut docs = BTreeMap::new();
        for (prefix, file) in [
            ("compute", "compute.v1.json"),
            ("container", "container.v1.json"),
            ("sql", "sqladmin.v1.json"),
            ("redis", "redis.v1.json"),
            ("secretmanager", "secretmanager.v1.json"),
            ("iam", "iam.v1.json"),
            ("cloudresourcemanager", "cloudresourcemanager.v3.json"),
            ("servicenetworking", "servicenetworking.v1.json"),
            ("serviceusage", "serviceusage.v1.json"),
            ("logging", "logging.v2.json"),
            ("storage", "storage.v1.json"),
            ("monitoring", "monitoring.v3.json"),
        ] {
            let text =
                std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            docs.insert(prefix, serde_json::from_str(&text).unwrap());
        }
        Discovery { docs }
    }

    fn doc(&self, id: &str) -> Option<&Value> {
        self.docs.get(id.split('.').next()?)
    }

    /// The method `id` (such as `compute.networks.insert`).
    fn method(&self, id: &str) -> Option<&Value> {
        fn find<'a>(res: &'a Value, id: &str) -> Option<&'a Value> {
            for r in res.get("resources")?.as_object()?.values() {
                if let Some(m) = r
                    .get("methods")
                    .and_then(Value::as_object)
                    .and_then(|ms| ms.values().find(|m| m["id"] == id))
                {
                    return Some(m);
                }
                if let Some(m) = find(r, id) {
                    return Some(m);
                }
            }
            None
        }
        find(self.doc(id)?, id)
    }

    /// `METHOD /servicePath/flatPath` with every parameter as `{}`.
    fn route(&self, id: &str) -> Option<(String, String)> {
        let m = self.method(id)?;
        let doc = self.doc(id)?;
        let path = m.get("flatPath").or_else(|| m.get("path"))?.as_str()?;
        let full = format!(
            "/{}{}",
            doc["servicePath"].as_str().unwrap_or_default(),
            path
        );
        Some((m["httpMethod"].as_str()?.to_string(), templated(&full)))
    }

    /// The method's media upload path (`mediaUpload.protocols.simple`),
    /// which the same method id is also served at (Cloud Storage's
    /// `uploadType=media`).
    fn media_route(&self, id: &str) -> Option<(String, String)> {
        let m = self.method(id)?;
        let path = m["mediaUpload"]["protocols"]["simple"]["path"].as_str()?;
        Some((m["httpMethod"].as_str()?.to_string(), templated(path)))
    }
}

/// A path template with every `{name}` (or `{+name}`) as `{}`.
fn templated(path: &str) -> String {
    let mut out = String::new();
    let mut skip = false;
    for c in path.chars() {
        match c {
            '{' => {
                out.push_str("{}");
                skip = true;
            }
            '}' => skip = false,
            _ if skip => {}
            _ => out.push(c),
        }
    }
    out
}

/// What is wrong with the double's routes, one line each.
fn check_routes(d: &Discovery, routes: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for r in routes {
        let ids: Vec<&str> = std::iter::once(r["id"].as_str().unwrap())
            .chain(
                r["aliases"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str),
            )
            .collect();
        let served = (
            r["method"].as_str().unwrap().to_string(),
            templated(r["path"].as_str().unwrap()),
        );
        for id in ids {
            match d.route(id) {
                None => problems.push(format!("{id}: no such method in the Discovery document")),
                Some(want) if want != served && d.media_route(id) != Some(served.clone()) => {
                    problems.push(format!(
                        "{id}: the double serves {} {} but Discovery says {} {}",
                        served.0, served.1, want.0, want.1
                    ))
                }
                Some(_) => {}
            }
        }
    }
    problems
}

/// How Discovery marks a field: its description starts with "Required." or
/// "Output only." (Compute writes "[Output Only]").
fn marked(field: &Value, word: &str) -> bool {
    let d = field["description"]
        .as_str()
        .unwrap_or_default()
        .trim_start();
    let d = d.strip_prefix('[').unwrap_or(d);
    d.len() >= word.len() && d[..word.len()].eq_ignore_ascii_case(word)
}

/// Checks `v` against the Discovery schema `s`; problems go to `out` with
/// the JSON path. Requests carry enums as their names or, with
/// `enum-encoding=int`, as their numbers; 64-bit integers as strings.
/// `strict` (the body of a create or insert) also refuses what Google's
/// server refuses or drops there: a field marked required that is missing
/// (but `name`, which the URL's id gives), and one marked output only.
fn check_value(doc: &Value, s: &Value, v: &Value, at: &str, out: &mut Vec<String>) {
    check_strict(doc, s, v, at, false, out)
}

fn check_strict(doc: &Value, s: &Value, v: &Value, at: &str, strict: bool, out: &mut Vec<String>) {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        match doc["schemas"].get(r) {
            Some(schema) => return check_strict(doc, schema, v, at, strict, out),
            None => return out.push(format!("{at}: schema {r} is not in the document")),
        }
    }
    let ty = s.get("type").and_then(Value::as_str).unwrap_or("any");
    let format = s.get("format").and_then(Value::as_str).unwrap_or_default();
    match (ty, v) {
        // A null on a create is a field the caller meant to set and did not
        // (Google reads it as unset).
        (_, Value::Null) if strict => out.push(format!("{at}: null")),
        (_, Value::Null) => {}
        ("any", _) => {}
        ("object", Value::Object(m)) => {
            let props = s.get("properties").and_then(Value::as_object);
            for (k, fv) in m {
                match props.and_then(|p| p.get(k)) {
                    Some(fs) if strict && marked(fs, "output only") && !fv.is_null() => {
                        out.push(format!("{at}.{k}: output only (the server ignores it)"))
                    }
                    Some(fs) => check_strict(doc, fs, fv, &format!("{at}.{k}"), strict, out),
                    None => match s.get("additionalProperties") {
                        Some(ap) => check_strict(doc, ap, fv, &format!("{at}.{k}"), strict, out),
                        None => out.push(format!("{at}.{k}: no such field")),
                    },
                }
            }
            for (k, fs) in props.into_iter().flatten() {
                let given = m.get(k).is_some_and(|v| !v.is_null());
                if strict && k != "name" && marked(fs, "required") && !given {
                    out.push(format!("{at}.{k}: required, and missing"));
                }
            }
        }
        ("array", Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                check_strict(doc, &s["items"], item, &format!("{at}[{i}]"), strict, out);
            }
        }
        ("string", Value::String(text)) => {
            if let Some(choices) = s.get("enum").and_then(Value::as_array) {
                if !choices.iter().any(|c| c == text) {
                    out.push(format!("{at}: {text:?} is not one of the enum's values"));
                }
            }
            if format == "byte" {
                use base64::Engine as _;
                let ok = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .is_ok()
                    || base64::engine::general_purpose::URL_SAFE
                        .decode(text)
                        .is_ok();
                if !ok {
                    out.push(format!("{at}: not base64"));
                }
            }
        }
        ("string", Value::Number(n))
            if s.get("enum").is_some() || matches!(format, "int64" | "uint64") =>
        {
            if !(n.is_i64() || n.is_u64()) {
                out.push(format!("{at}: {n} is not an integer"));
            }
            // An enum by number (`enum-encoding=int`): Discovery lists the
            // names only, not the protobuf numbers (Memorystore's STANDARD_HA
            // is 3 of 3 names), so the number cannot be checked here.
        }
        ("integer", Value::Number(n)) if n.is_i64() || n.is_u64() => {}
        ("integer", Value::String(t)) if t.parse::<i64>().is_ok() => {}
        ("number", Value::Number(_)) => {}
        ("boolean", Value::Bool(_)) => {}
        (ty, v) => out.push(format!(
            "{at}: {v} is not of type {ty}{}",
            if format.is_empty() {
                String::new()
            } else {
                format!(" ({format})")
            }
        )),
    }
}

/// What is wrong with the logged requests, one line each.
fn check_requests(d: &Discovery, requests: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for r in requests {
        let id = r["id"].as_str().unwrap();
        let (Some(m), Some(doc)) = (d.method(id), d.doc(id)) else {
            problems.push(format!("{id}: no such method"));
            continue;
        };
        let declared = |p: &str| {
            m["parameters"].get(p).is_some() || doc["parameters"].get(p).is_some()
                // system parameters google-cloud-rust sends: the JSON form (enums as
                // numbers) and the API version the client was generated for
                || p == "$alt" || p == "$apiVersion"
        };
        for q in r["query"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            // Nested message fields go in the query as `a.b`.
            let top = q.split('.').next().unwrap_or(q);
            if !declared(q) && !declared(top) {
                problems.push(format!("{id}: query parameter `{q}` is not declared"));
            }
        }
        let body = &r["body"];
        let empty = body.as_object().is_some_and(|o| o.is_empty()) || body.is_null();
        match m.get("request") {
            None if !empty => {
                problems.push(format!("{id}: sends a body, but the method takes none"))
            }
            None => {}
            Some(schema) => {
                let mut out = Vec::new();
                let creates = id.ends_with(".create") || id.ends_with(".insert");
                check_strict(doc, schema, body, "body", creates, &mut out);
                problems.extend(out.into_iter().map(|p| format!("{id}: {p}")));
            }
        }
    }
    problems
}

/// Output-only fields Google's servers fill in on every resource of a kind
/// (read back by a get): what a double that echoes the request would lack.
const ALWAYS_SET: &[(&str, &[&str])] = &[
    (
        "compute.networks.get",
        &["id", "creationTimestamp", "selfLink"],
    ),
    (
        "compute.subnetworks.get",
        &[
            "id",
            "creationTimestamp",
            "selfLink",
            "gatewayAddress",
            "fingerprint",
        ],
    ),
    (
        "compute.firewalls.get",
        &["id", "creationTimestamp", "selfLink"],
    ),
    (
        "compute.routers.get",
        &["id", "creationTimestamp", "selfLink"],
    ),
    (
        "compute.securityPolicies.get",
        &["id", "creationTimestamp", "selfLink", "fingerprint", "type"],
    ),
    (
        "compute.globalAddresses.get",
        &["id", "creationTimestamp", "selfLink", "status"],
    ),
    (
        "container.projects.locations.clusters.get",
        &[
            "id",
            "selfLink",
            "createTime",
            "status",
            "endpoint",
            "currentMasterVersion",
            "currentNodeCount",
            "servicesIpv4Cidr",
            "clusterIpv4Cidr",
            "location",
        ],
    ),
    (
        "container.projects.locations.clusters.nodePools.get",
        &["selfLink", "status", "version", "podIpv4CidrSize", "etag"],
    ),
    (
        "redis.projects.locations.instances.get",
        &[
            "host",
            "port",
            "state",
            "createTime",
            "currentLocationId",
            "nodes",
            "persistenceIamIdentity",
        ],
    ),
    (
        "sql.instances.get",
        &[
            "state",
            "connectionName",
            "selfLink",
            "createTime",
            "databaseInstalledVersion",
            "serviceAccountEmailAddress",
        ],
    ),
    (
        "secretmanager.projects.secrets.get",
        &["name", "createTime"],
    ),
];

/// What is wrong with the double's answers: a 200 must validate against
/// the method's response schema and carry what Google always sets
/// (`ALWAYS_SET`), an error must be Google's error object.
fn check_responses(d: &Discovery, requests: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    for r in requests {
        let id = r["id"].as_str().unwrap();
        let (Some(m), Some(doc)) = (d.method(id), d.doc(id)) else {
            continue;
        };
        let answer = &r["response"];
        if r["status"] == 200 {
            for (_, fields) in ALWAYS_SET.iter().filter(|(m, _)| *m == id) {
                for f in *fields {
                    if answer.get(*f).is_none_or(Value::is_null) {
                        problems.push(format!(
                            "{id}: response.{f}: missing (Google's server always sets it)"
                        ));
                    }
                }
            }
            if let Some(schema) = m.get("response") {
                let mut out = Vec::new();
                check_value(doc, schema, answer, "response", &mut out);
                problems.extend(out.into_iter().map(|p| format!("{id}: {p}")));
            }
        } else {
            let e = &answer["error"];
            if !(e["code"] == r["status"] && e["message"].is_string() && e["status"].is_string()) {
                problems.push(format!(
                    "{id}: the {} answer is not Google's error object: {answer}",
                    r["status"]
                ));
            }
        }
    }
    problems
}

#[test]
fn every_route_of_the_double_is_a_discovery_route() {
    let d = Discovery::load();
    let routes = gcp_get("/__double/routes").expect("the double's routes");
    let routes = routes.as_array().unwrap();
    assert!(routes.len() > 60, "{} routes", routes.len());
    let problems = check_routes(&d, routes);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_wrong_route_fails_the_check() {
    let d = Discovery::load();
    let text = std::fs::read_to_string(common::repo().join("tests/gcp/wrong-routes.json")).unwrap();
    let routes: Vec<Value> = serde_json::from_str(&text).unwrap();
    let problems = check_routes(&d, &routes);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(
        problems[0].contains("serves PUT") && problems[0].contains("Discovery says POST"),
        "{}",
        problems[0]
    );
    assert!(
        problems[1].contains("/instance/{}") && problems[1].contains("/instances/{}"),
        "{}",
        problems[1]
    );
    assert!(problems[2].contains("no such method"), "{}", problems[2]);
}

#[test]
fn a_wrong_body_fails_the_check() {
    let d = Discovery::load();
    let text =
        std::fs::read_to_string(common::repo().join("tests/gcp/wrong-bodies.jsonl")).unwrap();
    let requests: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let problems = check_requests(&d, &requests).join("\n");
    for expected in [
        "compute.subnetworks.insert: body.secondaryRanges: no such field",
        "sql.instances.insert: body.settings.backupConfiguration.enabled: \"yes\" is not of type boolean",
        "container.projects.locations.clusters.create: query parameter `zone` is not declared",
        "container.projects.locations.clusters.create: body.cluster.releaseChannel.channel: \"FASTEST\" is not one of the enum's values",
        // What Google's server refuses or drops on a create.
        "redis.projects.locations.instances.create: body.memorySizeGb: required, and missing",
        "redis.projects.locations.instances.create: body.host: output only (the server ignores it)",
        "redis.projects.locations.instances.create: body.authorizedNetwork: null",
    ] {
        assert!(problems.contains(expected), "missing {expected:?} in:\n{problems}");
    }
    // An integer where Discovery has a string with no enum or int64 format.
    assert!(
        problems.contains("body.settings.tier: 4 is not of type string"),
        "{problems}"
    );
    // Answers: a state Google does not have, a field it does not send, a bare error.
    let answers = check_responses(&d, &requests).join("\n");
    for expected in [
        "container.projects.locations.clusters.create: response.status: \"BOOTING\" is not one of the enum's values",
        "sql.instances.insert: response.progress: no such field",
        "redis.projects.locations.instances.get: response.nodes: missing (Google's server always sets it)",
        "compute.subnetworks.insert: the 400 answer is not Google's error object",
    ] {
        assert!(answers.contains(expected), "missing {expected:?} in:\n{answers}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_request_of_an_apply_update_rotation_and_destroy_validates() {
    let name = format!("tc{}", std::process::id());
    let mut w = World::from_stack("gcp-production.yaml", &name);
    let db = fresh_database(&format!("gcpc_{name}")).await;
    w.env.push((
        "RALPH_DEPLOY_VAR_database_tunnel_url".into(),
        format!("{db}?sslmode=disable"),
    ));
    w.env
        .push(("RALPH_DEPLOY_VAR_image_tag".into(), "1.0.0".into()));
    w.env
        .push(("ANTHROPIC_API_KEY".into(), "sk-ant-conformance".into()));
    let stack = w.stack();
    let run = |w: &World, extra: &[(&str, &str)], args: &[&str]| {
        let mut c = w.cmd(args);
        for (k, v) in extra {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}\n{}",
            text(&out.stderr),
            text(&out.stdout)
        );
    };
    let s = stack.to_str().unwrap();
    run(
        &w,
        &[],
        &["apply", s, "--env", "production", "--auto-approve"],
    );
    // A backup into the stack's Cloud Storage bucket, with Cloud SQL's own.
    run(&w, &[], &["backup", s, "--env", "production", "--snapshot"]);
    // A failover: the replica's lag read from Cloud Monitoring, the
    // promotion, the old primary's labels taken off (nulls in a PATCH).
    let old_primary = common::state_json(&w)["resources"]["db"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    run(
        &w,
        &[],
        &["failover", s, "--env", "production", "--auto-approve"],
    );
    // In-place changes of every updatable kind the stack has.
    run(
        &w,
        &[
            ("RALPH_DEPLOY_VAR_nodes_count", "4"),
            ("RALPH_DEPLOY_VAR_nodes_max", "12"),
            ("RALPH_DEPLOY_VAR_redis_gb", "6"),
            ("RALPH_DEPLOY_VAR_release_channel", "STABLE"),
            ("RALPH_DEPLOY_VAR_db_tier", "db-custom-8-32768"),
            ("RALPH_DEPLOY_VAR_password_rotation", "1"),
        ],
        &["apply", s, "--env", "production", "--auto-approve"],
    );
    // The backups go out of the bucket: destroy keeps a bucket that holds
    // objects. (The retired primary destroy deletes itself.)
    let bucket = format!("{name}-production-backups-example");
    let listed = gcp_get(&format!("/storage/v1/b/{bucket}/o")).expect("the backup bucket");
    for o in listed["items"].as_array().into_iter().flatten() {
        let key = o["name"].as_str().unwrap().replace('/', "%2F");
        ureq::delete(&format!(
            "{}/storage/v1/b/{bucket}/o/{key}",
            common::gcp_endpoint()
        ))
        .call()
        .unwrap();
    }
    run(
        &w,
        &[],
        &[
            "destroy",
            s,
            "--env",
            "production",
            "--auto-approve",
            "--allow-protected",
        ],
    );
    assert!(
        gcp_get(&format!("/v1/projects/{name}/instances/{old_primary}")).is_none(),
        "destroy deletes the primary the failover retired"
    );

    let log = std::fs::read_to_string(
        std::env::var("RALPH_TEST_GCP_REQUEST_LOG").expect("RALPH_TEST_GCP_REQUEST_LOG"),
    )
    .unwrap();
    let mine: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| {
            r["path"].as_str().is_some_and(|p| {
                p.contains(&format!("/projects/{name}/"))
                    || p.contains(&format!("/b/{name}-production-backups"))
                    || p.ends_with(&format!("/projects/{name}:getIamPolicy"))
                    || p.ends_with(&format!("/projects/{name}:setIamPolicy"))
            })
        })
        .collect();
    let ids: std::collections::BTreeSet<&str> =
        mine.iter().filter_map(|r| r["id"].as_str()).collect();
    for id in [
        "compute.networks.insert",
        "compute.subnetworks.insert",
        "compute.firewalls.insert",
        "compute.routers.insert",
        "compute.globalAddresses.insert",
        "compute.globalOperations.get",
        "compute.regionOperations.get",
        "container.projects.locations.clusters.create",
        "container.projects.locations.clusters.update",
        "container.projects.locations.clusters.nodePools.create",
        "container.projects.locations.clusters.nodePools.setSize",
        "container.projects.locations.clusters.nodePools.setAutoscaling",
        "container.projects.locations.clusters.nodePools.delete",
        "sql.instances.insert",
        "sql.instances.patch",
        "sql.instances.delete",
        "sql.databases.insert",
        "sql.users.update",
        "sql.operations.get",
        "redis.projects.locations.instances.create",
        "redis.projects.locations.instances.patch",
        "secretmanager.projects.secrets.create",
        "secretmanager.projects.secrets.addVersion",
        "secretmanager.projects.secrets.patch",
        "secretmanager.projects.secrets.versions.access",
        "iam.projects.serviceAccounts.create",
        "iam.projects.serviceAccounts.getIamPolicy",
        "iam.projects.serviceAccounts.setIamPolicy",
        "iam.projects.serviceAccounts.delete",
        "cloudresourcemanager.projects.getIamPolicy",
        "cloudresourcemanager.projects.setIamPolicy",
        "storage.buckets.delete",
        "storage.objects.insert",
        "storage.objects.compose",
        "storage.objects.list",
        "storage.objects.delete",
        "sql.backupRuns.insert",
        "sql.instances.promoteReplica",
        "sql.instances.list",
        "monitoring.projects.timeSeries.list",
    ] {
        assert!(
            ids.contains(id),
            "the run never called {id}; it called {ids:?}"
        );
    }
    let d = Discovery::load();
    let mut problems = check_requests(&d, &mine);
    problems.extend(check_responses(&d, &mine));
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "{} problems:\n{}",
        problems.len(),
        problems.join("\n")
    );
    // Reads are checked too: refresh's lists and the operations polled.
    assert!(mine
        .iter()
        .any(|r| r["method"] == "GET" && r["status"] == 200));
}
