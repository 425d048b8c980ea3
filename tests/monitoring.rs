//! A real Prometheus and Alertmanager (Debian's packages) as the stack
//! installs them: the orchestrator applied to the local Kubernetes with
//! `monitoring_install`, whose simulated pods serve the application's
//! metrics. The test is the kubelet of the two Deployments the stack makes:
//! their ConfigMap and Secret volumes written at their mount paths, their
//! own arguments (DNS names swapped for the pods' address: the machine has
//! no cluster DNS); `status` asks that Prometheus through its Service. A healthy service raises nothing; an injected burst of
//! 5xx reaches the stack's paging receiver (a local webhook) within the
//! rule's `for`, scaled down to seconds, and nothing reaches the ticket one.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::World;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams};
use serde_json::Value;

/// Children killed when the test ends, however it ends.
struct Running(Vec<Child>);

impl Drop for Running {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

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

/// Plays the kubelet for the pod of Deployment `name`: writes its
/// ConfigMap and Secret volumes' items under `root` at their mount paths, makes its
/// emptyDir volumes there, and returns its container's arguments with those
/// paths under `root` and its listen address on `ip` (the pods' address).
async fn kubelet(
    client: &kube::Client,
    ns: &str,
    name: &str,
    root: &std::path::Path,
    ip: &str,
) -> Vec<String> {
    use k8s_openapi::api::apps::v1::Deployment;
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap_or_else(|e| panic!("the stack made no Deployment {name}: {e}"));
    let pod = d.spec.template.spec.unwrap();
    let c = &pod.containers[0];
    let mounts: Vec<(String, String)> = c
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| (m.name.clone(), m.mount_path.clone()))
        .collect();
    let configmaps = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns);
    for v in pod.volumes.iter().flatten() {
        let (_, at) = mounts
            .iter()
            .find(|(n, _)| *n == v.name)
            .unwrap_or_else(|| panic!("{name}: volume {} is not mounted", v.name));
        let place = root.join(at.trim_start_matches('/'));
        std::fs::create_dir_all(&place).unwrap();
        if let Some(source) = &v.config_map {
            let data = configmaps
                .get(&source.name)
                .await
                .unwrap_or_else(|e| panic!("{name} mounts ConfigMap {}: {e}", source.name))
                .data
                .unwrap_or_default();
            for item in source.items.iter().flatten() {
                let text = data.get(&item.key).unwrap_or_else(|| {
                    panic!("{name}: ConfigMap {} has no {}", source.name, item.key)
                });
                std::fs::write(place.join(&item.path), text).unwrap();
            }
        }
        if let Some(source) = &v.secret {
            let name = source.secret_name.clone().unwrap();
            let data = secrets.get(&name).await.unwrap().data.unwrap_or_default();
            for (key, value) in data {
                std::fs::write(place.join(key), value.0).unwrap();
            }
        }
    }
    c.args
        .iter()
        .flatten()
        .map(|a| {
            let (flag, value) = a.split_once('=').unwrap_or((a.as_str(), ""));
            if let Some(port) = value.strip_prefix(':') {
                return format!("{flag}={ip}:{port}");
            }
            match mounts.iter().find(|(_, m)| value.starts_with(m.as_str())) {
                Some(_) => format!(
                    "{flag}={}",
                    root.join(value.trim_start_matches('/')).display()
                ),
                None => a.clone(),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_burst_pages_through_alertmanager_and_a_healthy_service_pages_no_one() {
    let ns = format!("k-alerts-{}", std::process::id());
    let mut w = World::from_stack("kubernetes-app.yaml", &ns);
    let (hook, notifications) = webhook();
    let (metrics, alertmanager, prometheus) = (free_port(), free_port(), free_port());
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
    // The scale: a 1 s scrape, 3 s `for`, 1 s group wait. The stack runs
    // its own Prometheus and Alertmanager (`monitoring_install`), on ports
    // free on this machine: every simulated pod has its address.
    w.edit(
        "      ingress_host: ${var.ingress_host}\n",
        &format!(
            "      ingress_host: ${{var.ingress_host}}\n      metrics_port: {metrics}\n      scrape_interval: 1s\n      alert_for: 3s\n      alert_group_wait: 1s\n      monitoring_install: true\n      prometheus: {ns}/ralph-orchestrator-prometheus:{prometheus}\n      prometheus_port: {prometheus}\n      alertmanager_port: {alertmanager}\n      alert_receivers:\n        - {{ name: oncall, type: webhook, url: \"http://127.0.0.1:{hook}/page\", severities: [critical] }}\n        - {{ name: pager, type: pagerduty, key_secret: \"env:PAGERDUTY_ROUTING_KEY\", severities: [never-sent] }}\n        - {{ name: tickets, type: webhook, url: \"http://127.0.0.1:{hook}/ticket\" }}\n"
        ),
    );
    w.ok("apply", &["--auto-approve"]);

    let client = common::kube_client().await;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels("app.kubernetes.io/name=ralph-orchestrator"))
        .await
        .unwrap();
    let ip = pods
        .items
        .iter()
        .find_map(|p| p.status.as_ref()?.pod_ip.clone())
        .expect("a running pod");
    let dir = tempfile::tempdir().unwrap();
    // This test is the kubelet of the two Deployments the stack made: their
    // pods' ConfigMap volumes written where they mount them, their own
    // arguments, Debian's binaries. The one liberty: no cluster DNS, so the
    // Service names in prometheus.yml become the pods' address.
    let prometheus_args = kubelet(
        &client,
        &ns,
        "ralph-orchestrator-prometheus",
        dir.path(),
        &ip,
    )
    .await;
    let alertmanager_args = kubelet(
        &client,
        &ns,
        "ralph-orchestrator-alertmanager",
        dir.path(),
        &ip,
    )
    .await;
    // The PagerDuty receiver's key came from the secret store into the file
    // alertmanager.yml names, and into nothing the tool keeps.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("etc/alertmanager/keys/pager")).unwrap(),
        PAGERDUTY_KEY
    );
    let routes =
        std::fs::read_to_string(dir.path().join("etc/alertmanager/alertmanager.yml")).unwrap();
    assert!(
        routes.contains("routing_key_file: /etc/alertmanager/keys/pager"),
        "{routes}"
    );
    assert!(!routes.contains(PAGERDUTY_KEY));
    std::fs::write(
        dir.path().join("etc/alertmanager/alertmanager.yml"),
        routes.replace(
            "/etc/alertmanager/keys",
            &dir.path()
                .join("etc/alertmanager/keys")
                .display()
                .to_string(),
        ),
    )
    .unwrap();
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
    let config_file = dir.path().join("etc/prometheus/prometheus.yml");
    let mut config: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&config_file).unwrap()).unwrap();
    let job = &mut config["scrape_configs"][0];
    assert_eq!(
        job["dns_sd_configs"][0]["names"][0],
        format!("ralph-orchestrator-metrics.{ns}.svc")
    );
    job.as_object_mut().unwrap().remove("dns_sd_configs");
    job["static_configs"] = serde_json::json!([{"targets": [format!("{ip}:{metrics}")]}]);
    let sent_to = &mut config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"][0];
    assert_eq!(
        *sent_to,
        format!("ralph-orchestrator-alertmanager.{ns}.svc:{alertmanager}")
    );
    *sent_to = Value::from(format!("{ip}:{alertmanager}"));
    std::fs::write(&config_file, config.to_string()).unwrap();

    let spawn = |program: &str, args: Vec<String>| {
        Command::new(program)
            .args(args)
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join(format!("{program}.log"))).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program}: {e} (scripts/setup.sh installs Debian's prometheus and prometheus-alertmanager)")
            })
    };
    let _running = Running(vec![
        spawn("prometheus-alertmanager", alertmanager_args),
        spawn("prometheus", prometheus_args),
    ]);
    let log = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let at = format!("{ip}:{prometheus}");
    // `status` asks the installed Prometheus through its Service, which
    // the API server proxies to its ready pod.
    let endpoints = Api::<k8s_openapi::api::core::v1::Endpoints>::namespaced(client.clone(), &ns);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = endpoints
            .get_opt("ralph-orchestrator-prometheus")
            .await
            .unwrap()
            .and_then(|e| e.subsets)
            .is_some_and(|s| {
                s.iter()
                    .any(|s| !s.addresses.clone().unwrap_or_default().is_empty())
            });
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the installed Prometheus's pod never became ready"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
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

    // Prometheus scrapes the pods, with the labels the rules select on.
    let selector = format!("{{namespace=\"{ns}\",service=\"ralph-orchestrator\"}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while query(&at, &format!("up{selector} == 1")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the pods:\n{}",
            log("prometheus.log")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(!query(&at, &format!("http_requests_total{selector}")).is_empty());

    // Every query of the generated Grafana dashboard is PromQL this
    // Prometheus runs, over series the pods export.
    let dashboards = Api::<ConfigMap>::namespaced(common::kube_client().await, &ns)
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
    ureq::post(&format!("http://{ip}:{metrics}/__sim/misbehave"))
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
            "no page within 40 s: {:?}\n{}\n{}",
            notifications.lock().unwrap(),
            log("prometheus.log"),
            log("prometheus-alertmanager.log")
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
    ureq::post(&format!("http://{ip}:{metrics}/__sim/misbehave"))
        .send_string(r#"{"error_ratio": 0}"#)
        .unwrap();
    let page: Value = serde_json::from_str(&paged).unwrap();
    assert_eq!(page["receiver"], "oncall");
    assert_eq!(page["status"], "firing");
    assert_eq!(page["commonLabels"]["severity"], "critical");
    assert_eq!(page["commonLabels"]["service"], "ralph-orchestrator");
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
}
