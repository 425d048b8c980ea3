//! Cluster add-ons (`kubernetes.manifests`) on the local Kubernetes: a set
//! of manifests applied with CRDs established before the custom resources
//! that need them and the controller available before them too, pruned when
//! a file goes, re-applied when a value changes, and deleted by destroy.

use crate::common;

use common::{text, World};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject};

async fn client() -> kube::Client {
    common::kube_client().await
}

fn widgets(ns: &str, c: kube::Client) -> Api<DynamicObject> {
    let ar = ApiResource {
        group: "test.ralph-deploy.io".into(),
        version: "v1".into(),
        api_version: "test.ralph-deploy.io/v1".into(),
        kind: "Widget".into(),
        plural: "widgets".into(),
    };
    Api::namespaced_with(c, ns, &ar)
}

fn events(out: &std::process::Output) -> Vec<serde_json::Value> {
    text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test]
async fn addons_apply_crds_first_prune_removed_files_and_go_with_destroy() {
    let ns = format!("addons-{}", std::process::id());
    let w = World::from_stack("kubernetes-app.yaml", &ns);
    let files = w.dir.path().join("addons");
    std::fs::create_dir(&files).unwrap();
    for f in std::fs::read_dir(common::repo().join("tests/fixtures/addons")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), files.join(f.file_name())).unwrap();
    }
    let stack = format!(
        "name: {ns}\n\
         variables:\n  kubeconfig: {{ type: string }}\n  namespace: {{ type: string }}\n  email: {{ type: string, default: ops@example.com }}\n\
         environments:\n  production: {{}}\n\
         resources:\n  addons:\n    kind: kubernetes.manifests\n    properties:\n      kubeconfig: ${{var.kubeconfig}}\n      files: [addons]\n      values:\n        namespace: ${{var.namespace}}\n        email: ${{var.email}}\n"
    );
    std::fs::write(w.stack(), stack).unwrap();

    let out = w.run("apply", &["--auto-approve"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    let c = client().await;
    let crd = Api::<CustomResourceDefinition>::all(c.clone())
        .get("widgets.test.ralph-deploy.io")
        .await
        .unwrap();
    assert!(crd
        .status
        .unwrap()
        .conditions
        .unwrap()
        .iter()
        .any(|c| c.type_ == "Established"));
    let d = Api::<Deployment>::namespaced(c.clone(), &ns)
        .get("widget-controller")
        .await
        .unwrap();
    assert_eq!(
        d.status.unwrap().available_replicas,
        Some(2),
        "not waited for"
    );
    let widget = widgets(&ns, c.clone()).get("main").await.unwrap();
    assert_eq!(widget.data["spec"]["email"], "ops@example.com");
    assert_eq!(
        widget.metadata.labels.unwrap()["ralph-deploy.io/resource"],
        "addons",
        "no ownership labels"
    );

    // `status` finds the add-ons there and available.
    let out = w.run("status", &["--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // Nothing to do; then a value change re-applies, in place.
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    let out = w.run("plan", &["--var", "email=oncall@example.com", "--json"]);
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let change = &plan["changes"][0];
    assert_eq!(change["action"], "update", "{plan}");
    assert!(change["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["name"] == "digest"));

    // A file removed: its object is pruned, nothing else is touched.
    std::fs::remove_file(files.join("30-widget.yaml.j2")).unwrap();
    let out = w.run("plan", &[]);
    assert!(
        text(&out.stdout).contains("Widget"),
        "{}",
        text(&out.stdout)
    );
    let out = w.run("apply", &["--auto-approve", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    // Every event says when it happened.
    assert!(events(&out).iter().all(|e| e["time"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(t).is_ok())));
    assert!(
        events(&out)
            .iter()
            .any(|e| e["event"] == "warning"
                && e["message"].as_str().unwrap_or("").contains("pruned"))
    );
    assert!(widgets(&ns, c.clone())
        .get_opt("main")
        .await
        .unwrap()
        .is_none());
    assert!(Api::<Deployment>::namespaced(c.clone(), &ns)
        .get_opt("widget-controller")
        .await
        .unwrap()
        .is_some());

    // Deleted by hand: the plan sees it and apply puts it back.
    Api::<Deployment>::namespaced(c.clone(), &ns)
        .delete("widget-controller", &Default::default())
        .await
        .unwrap();
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    let out = w.run("status", &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout).contains("missing: apps/v1 Deployment"),
        "{}",
        text(&out.stdout)
    );
    w.ok("apply", &["--auto-approve"]);

    // Destroy removes everything, namespace and CRD included, and waits.
    let out = w.run("destroy", &["--auto-approve"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stderr),
        text(&out.stdout)
    );
    assert!(Api::<Namespace>::all(c.clone())
        .get_opt(&ns)
        .await
        .unwrap()
        .is_none());
    assert!(Api::<CustomResourceDefinition>::all(c)
        .get_opt("widgets.test.ralph-deploy.io")
        .await
        .unwrap()
        .is_none());
}

/// One file over plain HTTP on this machine (a local mirror): its content
/// can be swapped, and requests are counted.
struct Mirror {
    port: u16,
    body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Mirror {
    fn start(body: &str) -> Mirror {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let body = std::sync::Arc::new(std::sync::Mutex::new(body.as_bytes().to_vec()));
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        std::thread::spawn(move || {
            for mut s in listener.incoming().flatten() {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let body = b.lock().unwrap().clone();
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = s.write_all(&body);
            }
        });
        Mirror { port, body, hits }
    }

    fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn sha256(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

#[tokio::test]
async fn a_manifest_by_url_is_pinned_downloaded_once_and_refused_when_it_changes() {
    let ns = format!("pinned-{}", std::process::id());
    let upstream = format!(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: upstream\n  namespace: {ns}\ndata:\n  release: v1.0.0\n"
    );
    let mirror = Mirror::start(&upstream);
    let mut w = World::from_stack("kubernetes-app.yaml", &ns);
    let cache = w.dir.path().join("cache");
    w.env
        .push(("RALPH_DEPLOY_CACHE".into(), cache.display().to_string()));
    let write_stack = |pin: &str| {
        std::fs::write(
            w.stack(),
            format!(
                "name: {ns}\n\
                 variables:\n  kubeconfig: {{ type: string }}\n  namespace: {{ type: string }}\n\
                 environments:\n  production: {{}}\n\
                 resources:\n  upstream:\n    kind: kubernetes.manifests\n    properties:\n      kubeconfig: ${{var.kubeconfig}}\n      files:\n        - http://127.0.0.1:{}/deploy.yaml#sha256={pin}\n",
                mirror.port
            ),
        )
        .unwrap();
    };
    let namespaces = Api::<Namespace>::all(client().await);

    // A pin that is not the file's: refused before the cluster is touched.
    write_stack(&sha256("something else"));
    let out = w.run("apply", &["--auto-approve"]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("has SHA-256 {}", sha256(&upstream)))
            && err.contains(&format!("pins {}", sha256("something else"))),
        "{err}"
    );
    assert!(namespaces.get_opt(&ns).await.unwrap().is_none());
    assert!(!cache
        .join("downloads")
        .join(sha256("something else"))
        .exists());

    // The right pin: downloaded once, applied.
    write_stack(&sha256(&upstream));
    let out = w.run("apply", &["--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let cm = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client().await, &ns)
        .get("upstream")
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["release"], "v1.0.0");
    let downloads = mirror.hits();
    assert_eq!(downloads, 2, "one refused download, one kept");

    // From the cache from now on: no download, nothing to do, even when the
    // file at the source changes.
    *mirror.body.lock().unwrap() = upstream.replace("v1.0.0", "v1.0.1-tampered").into_bytes();
    let out = w.run("plan", &["--detailed-exitcode"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(mirror.hits(), downloads);
    // A fresh machine downloads again, and refuses the changed file.
    std::fs::remove_dir_all(&cache).unwrap();
    let out = w.run("plan", &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("the file changed at its source"),
        "{}",
        text(&out.stderr)
    );

    *mirror.body.lock().unwrap() = upstream.clone().into_bytes();
    let out = w.run("destroy", &["--auto-approve"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A one-file HTTP server on this machine: GET /FILE answers `body`,
/// anything else 404.
fn serve_file(file: &'static str, body: &'static [u8]) -> String {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", l.local_addr().unwrap());
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
            let (status, content): (&str, &[u8]) = if path == format!("/{file}") {
                ("200 OK", body)
            } else {
                ("404 Not Found", b"missing")
            };
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                content.len()
            );
            let _ = s.write_all(content);
        }
    });
    base
}

#[test]
fn addons_pin_downloads_once_and_prints_the_pinned_entry() {
    use sha2::Digest;
    const BODY: &[u8] = b"apiVersion: v1\nkind: Namespace\nmetadata: { name: pinned-addon }\n";
    let base = serve_file("deploy.yaml", BODY);
    let cache = tempfile::tempdir().unwrap();
    let url = format!("{base}/deploy.yaml");
    let out = std::process::Command::new(common::BIN)
        .args(["addons", "pin", &url])
        .env("RALPH_DEPLOY_CACHE", cache.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::text(&out.stderr));
    let sha = hex::encode(sha2::Sha256::digest(BODY));
    assert_eq!(common::text(&out.stdout), format!("{url}#sha256={sha}\n"));
    let kept = cache.path().join("downloads").join(&sha);
    assert_eq!(std::fs::read(&kept).unwrap(), BODY);
    assert!(common::text(&out.stderr).contains(&kept.display().to_string()));
    // What it printed is what a stack takes: the pin parses and matches.
    let pinned = ralph_core::download::parse(&format!("{url}#sha256={sha}")).unwrap();
    assert_eq!(pinned.sha256, sha);

    // Failures are named, the others still pinned, the exit is 1.
    let out = std::process::Command::new(common::BIN)
        .args([
            "addons",
            "pin",
            &format!("{base}/gone.yaml"),
            "http://example.org/a.yaml",
            &url,
        ])
        .env("RALPH_DEPLOY_CACHE", cache.path())
        .output()
        .unwrap();
    let err = common::text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("404"), "{err}");
    assert!(err.contains("plain http"), "{err}");
    assert_eq!(common::text(&out.stdout), format!("{url}#sha256={sha}\n"));
}

#[test]
fn the_shipped_stacks_name_no_retired_add_on() {
    for stack in ["aws-production.yaml", "gcp-production.yaml"] {
        let text = std::fs::read_to_string(common::repo().join("stacks").join(stack)).unwrap();
        // ingress-nginx was retired by the Kubernetes project in March 2026.
        assert!(
            !text.contains("ingress-nginx/controller"),
            "{stack} installs ingress-nginx"
        );
    }
}
