//! A real Prometheus and Alertmanager (Debian's packages) as the stack
//! installs them: the orchestrator applied to the local Kubernetes with
//! `monitoring_install`, whose simulated pods serve the application's
//! metrics. The node simulator runs the two Deployments' pods for real
//! (scripts/local-cloud/pod_runner.py): each on an address of its own,
//! their ConfigMap and Secret volumes where they mount them, the cluster's
//! DNS for the Service names in the rendered configuration, Ready when
//! the program answers its probe. `status` asks that Prometheus through
//! its Service. A healthy service raises nothing; an injected burst of
//! 5xx reaches the stack's PagerDuty receiver (its Events API pointed at a
//! local webhook, with the routing key from the secret store) within the
//! rule's `for`, scaled down to seconds, and nothing reaches the ticket one.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::World;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Pod};
use kube::api::{Api, ListParams};
use serde_json::Value;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A webhook receiver: every request's path and body.
fn webhook() -> (u16, Arc<Mutex<Vec<(String, String)>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let mut length = 0;
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            seen.lock()
                .unwrap()
                .push((path, String::from_utf8_lossy(&body).into_owned()));
            let _ = reader
                .get_mut()
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        }
    });
    (port, got)
}

fn query(at: &str, q: &str) -> Vec<Value> {
    let url = format!("http://{at}/api/v1/query");
    match ureq::get(&url).query("query", q).call() {
        Ok(r) => {
            let v: Value = serde_json::from_str(&r.into_string().unwrap()).unwrap();
            v["data"]["result"].as_array().cloned().unwrap_or_default()
        }
        Err(_) => Vec::new(),
    }
}

/// A PagerDuty routing key the operator keeps in the secret store.
const PAGERDUTY_KEY: &str = "R0UT1NGKEY0123456789abcdefabcdef";

/// The address of the ready pod behind Service `name`, once there is one.
async fn ready_address(client: &kube::Client, ns: &str, name: &str) -> String {
    let endpoints = Api::<Endpoints>::namespaced(client.clone(), ns);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = endpoints
            .get_opt(name)
            .await
            .unwrap()
            .and_then(|e| e.subsets)
            .into_iter()
            .flatten()
            .flat_map(|s| s.addresses.unwrap_or_default())
            .map(|a| a.ip)
            .next();
        if let Some(ip) = ready {
            return ip;
        }
        assert!(
            Instant::now() < deadline,
            "{name}'s pod never became ready (the node simulator's log says why)"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_burst_pages_through_alertmanager_and_a_healthy_service_pages_no_one() {
    let ns = format!("k-alerts-{}", std::process::id());
    let mut w = World::from_stack("kubernetes-app.yaml", &ns);
    let (hook, notifications) = webhook();
    // The simulated orchestrators share one address, so this stack's
    // metrics get a port of their own (it is told to misbehave below).
    let metrics = free_port();
    for (k, v) in [
        ("RALPH_DEPLOY_VAR_image_tag", "1.0.0".to_string()),
        (
            "ANTHROPIC_API_KEY",
            "sk-ant-test-0123456789abcdef".to_string(),
        ),
        ("PAGERDUTY_ROUTING_KEY", PAGERDUTY_KEY.to_string()),
    ] {
        w.env.push((k.into(), v));
    }
    // The scale: a 1 s scrape, 3 s `for`, 1 s group wait. Prometheus and
    // Alertmanager keep their default ports: every pod that runs for real
    // has an address of its own.
    w.edit(
        "      ingress_host: ${var.ingress_host}\n",
        &format!(
            "      ingress_host: ${{var.ingress_host}}\n      metrics_port: {metrics}\n      scrape_interval: 1s\n      alert_for: 3s\n      alert_group_wait: 1s\n      monitoring_install: true\n      alert_receivers:\n        - {{ name: oncall, type: pagerduty, key_secret: \"env:PAGERDUTY_ROUTING_KEY\", url: \"http://127.0.0.1:{hook}/page\", severities: [critical] }}\n        - {{ name: tickets, type: webhook, url: \"http://127.0.0.1:{hook}/ticket\" }}\n"
        ),
    );
    w.ok("apply", &["--auto-approve"]);

    let client = common::kube_client().await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels("app.kubernetes.io/name=ralph-orchestrator"))
        .await
        .unwrap();
    let app_ip = pods
        .items
        .iter()
        .find_map(|p| p.status.as_ref()?.pod_ip.clone())
        .expect("a running pod");
    // Ready means the programs answer their probes, on addresses of their own.
    let prometheus_ip = ready_address(&client, &ns, "ralph-orchestrator-prometheus").await;
    let alertmanager_ip = ready_address(&client, &ns, "ralph-orchestrator-alertmanager").await;
    assert_ne!(prometheus_ip, app_ip);
    assert_ne!(prometheus_ip, alertmanager_ip);
    let at = format!("{prometheus_ip}:9090");
    let am: Value = serde_json::from_str(
        &ureq::get(&format!("http://{alertmanager_ip}:9093/api/v2/status"))
            .call()
            .unwrap()
            .into_string()
            .unwrap(),
    )
    .unwrap();
    let loaded = am["config"]["original"].as_str().unwrap();
    assert!(loaded.contains("routing_key_file:"), "{loaded}");
    assert!(!loaded.contains(PAGERDUTY_KEY));
    let state = w
        .cmd(&[
            "state",
            "pull",
            w.stack().to_str().unwrap(),
            "--env",
            "production",
        ])
        .output()
        .unwrap();
    assert!(state.status.success(), "{}", common::text(&state.stderr));
    assert!(
        !common::text(&state.stdout).contains(PAGERDUTY_KEY),
        "the receiver's key is in the state"
    );
    let monitoring_status = || -> Value {
        let out = w.run("status", &["--json"]);
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        report["services"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| s["checks"].as_array().unwrap().clone())
            .find(|c| c["check"] == "monitoring")
            .unwrap_or_else(|| panic!("no monitoring check: {report}"))
    };

    // Prometheus finds the pods through the cluster's DNS and scrapes them,
    // with the labels the rules select on.
    let selector = format!("{{namespace=\"{ns}\",service=\"ralph-orchestrator\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while query(&at, &format!("up{selector} == 1")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the pods: {:?}",
            query(&at, "up")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!query(&at, &format!("http_requests_total{selector}")).is_empty());
    // ... and sends to the Alertmanager by its Service's name (the page
    // below shows the name resolved).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer: Value = serde_json::from_str(
            &ureq::get(&format!("http://{at}/api/v1/alertmanagers"))
                .call()
                .unwrap()
                .into_string()
                .unwrap(),
        )
        .unwrap();
        let active = answer["data"]["activeAlertmanagers"].as_array().unwrap();
        let by_name = format!("http://ralph-orchestrator-alertmanager.{ns}.svc:9093/");
        if active
            .iter()
            .any(|a| a["url"].as_str().unwrap_or_default().starts_with(&by_name))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no Alertmanager found: {answer}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // Every query of the generated Grafana dashboard is PromQL this
    // Prometheus runs, over series the pods export.
    let dashboards = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("ralph-orchestrator-dashboard")
        .await
        .unwrap();
    assert_eq!(
        dashboards.metadata.labels.unwrap()["grafana_dashboard"],
        "1"
    );
    let board: Value =
        serde_json::from_str(&dashboards.data.unwrap()["ralph-orchestrator.json"]).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let mut asked = 0;
    for panel in board["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("[30d]", "[1m]");
            let url = format!("http://{at}/api/v1/query");
            let answer: Value = serde_json::from_str(
                &ureq::get(&url)
                    .query("query", &expr)
                    .call()
                    .unwrap_or_else(|e| panic!("{}: {expr}: {e}", panel["title"]))
                    .into_string()
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(answer["status"], "success", "{expr}: {answer}");
            assert!(
                !answer["data"]["result"].as_array().unwrap().is_empty(),
                "{}: `{expr}` has no data",
                panel["title"]
            );
            asked += 1;
        }
    }
    assert_eq!(asked, 12);

    // Healthy: several `for` windows pass and no one is notified.
    std::thread::sleep(Duration::from_secs(10));
    let firing = query(&at, "ALERTS{alertstate=\"firing\"}");
    assert!(firing.is_empty(), "a healthy service fires: {firing:?}");
    assert!(
        notifications.lock().unwrap().is_empty(),
        "{:?}",
        notifications.lock().unwrap()
    );
    // `status` finds the rules loaded and nothing firing.
    let quiet = monitoring_status();
    assert_eq!(quiet["healthy"], true, "{quiet}");
    assert!(
        quiet["detail"]
            .as_str()
            .unwrap()
            .contains("no alert firing"),
        "{quiet}"
    );

    // A burst of 5xx: half the requests fail from now on.
    ureq::post(&format!("http://{app_ip}:{metrics}/__sim/misbehave"))
        .send_string(r#"{"error_ratio": 0.5}"#)
        .unwrap();
    let started = Instant::now();
    let paged = loop {
        let page = notifications
            .lock()
            .unwrap()
            .iter()
            .find(|(path, body)| path == "/page" && body.contains("HighErrorRate"))
            .cloned();
        if let Some((_, body)) = page {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "no page within 40 s: {:?}",
            notifications.lock().unwrap(),
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = started.elapsed();
    // `status` names the critical alert that fires.
    let loud = monitoring_status();
    assert_eq!(loud["healthy"], false, "{loud}");
    assert!(
        loud["detail"]
            .as_str()
            .unwrap()
            .contains("HighErrorRate (critical)"),
        "{loud}"
    );
    ureq::post(&format!("http://{app_ip}:{metrics}/__sim/misbehave"))
        .send_string(r#"{"error_ratio": 0}"#)
        .unwrap();
    // A PagerDuty Events API v2 trigger, with the routing key the
    // Alertmanager read from the Secret the secret store filled.
    let page: Value = serde_json::from_str(&paged).unwrap();
    assert_eq!(page["routing_key"], PAGERDUTY_KEY, "{page}");
    assert_eq!(page["event_action"], "trigger", "{page}");
    assert!(
        page["payload"]["summary"]
            .as_str()
            .unwrap_or_default()
            .contains("HighErrorRate"),
        "{page}"
    );
    // The rule's 3 s `for`, a 1 s scrape and evaluation, a 1 s group wait:
    // well within 15 s.
    assert!(elapsed < Duration::from_secs(15), "paged after {elapsed:?}");
    eprintln!("paged {elapsed:?} after the burst began");
    // Nothing critical reached the ticket receiver.
    let tickets: Vec<String> = notifications
        .lock()
        .unwrap()
        .iter()
        .filter(|(path, _)| path == "/ticket")
        .map(|(_, b)| b.clone())
        .collect();
    assert!(
        tickets.iter().all(|b| !b.contains("\"critical\"")),
        "{tickets:?}"
    );

    // The stack's teardown stops them: their pods go, and with them the
    // programs and their addresses.
    w.ok("destroy", &["--auto-approve"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(1))
        .build();
    while agent.get(&format!("http://{at}/-/healthy")).call().is_ok() {
        assert!(
            Instant::now() < deadline,
            "Prometheus still runs after destroy"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The release is the orchestrator and its monitoring together: a
/// Prometheus that refuses to start (here a flag it does not have, through
/// a template override) fails the apply with the program's own words, and
/// the whole release goes back to the last good one, whose Prometheus
/// answers again.
#[tokio::test(flavor = "multi_thread")]
async fn a_prometheus_that_will_not_start_fails_the_release_and_rolls_it_back() {
    let ns = format!("k-promfail-{}", std::process::id());
    let mut w = World::from_stack("kubernetes-app.yaml", &ns);
    let metrics = free_port();
    for (k, v) in [
        ("RALPH_DEPLOY_VAR_image_tag", "1.0.0"),
        ("ANTHROPIC_API_KEY", "sk-ant-test-0123456789abcdef"),
    ] {
        w.env.push((k.into(), v.into()));
    }
    w.edit(
        "      ingress_host: ${var.ingress_host}\n",
        &format!(
            "      ingress_host: ${{var.ingress_host}}\n      metrics_port: {metrics}\n      monitoring_install: true\n"
        ),
    );
    w.ok("apply", &["--auto-approve"]);
    let client = common::kube_client().await;
    let good = ready_address(&client, &ns, "ralph-orchestrator-prometheus").await;

    // The built-in Prometheus Deployment, with one flag Prometheus refuses.
    let custom = w.stack().parent().unwrap().join("custom");
    std::fs::create_dir_all(&custom).unwrap();
    let builtin =
        std::fs::read_to_string(common::repo().join("templates/prometheus-deployment.yaml"))
            .unwrap();
    let broken = builtin.replacen(
        "            - --storage.tsdb.path=/prometheus\n",
        "            - --storage.tsdb.path=/prometheus\n            - --no-such-flag\n",
        1,
    );
    assert_ne!(broken, builtin);
    std::fs::write(custom.join("prometheus-deployment.yaml"), broken).unwrap();
    w.edit(
        "      monitoring_install: true\n",
        "      monitoring_install: true\n      templates: custom\n",
    );
    let out = w.run("apply", &["--auto-approve"]);
    let err = common::text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("CrashLoopBackOff"), "{err}");
    assert!(err.contains("no-such-flag"), "{err}");
    assert!(
        err.contains("Rolled back to the last good release"),
        "{err}"
    );
    // The last good release's Prometheus runs again.
    let deployments =
        Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns);
    let args = deployments
        .get("ralph-orchestrator-prometheus")
        .await
        .unwrap()
        .spec
        .template
        .spec
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap();
    assert!(!args.iter().any(|a| a == "--no-such-flag"), "{args:?}");
    let again = ready_address(&client, &ns, "ralph-orchestrator-prometheus").await;
    let up = ureq::get(&format!("http://{again}:9090/-/ready")).call();
    assert!(up.is_ok(), "{up:?} (before: {good})");
    w.ok("destroy", &["--auto-approve"]);
}
