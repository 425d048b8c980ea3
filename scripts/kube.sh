#!/usr/bin/env bash
# The local Kubernetes: etcd, kube-apiserver, kube-controller-manager and
# kube-scheduler 1.20.2 (built once by scripts/local-cloud/build-kube.sh), on
# free loopback ports, and a node simulator (local-cloud/node_sim.py) in
# place of the kubelets: a Node per node of every EKS node group and GKE node
# pool of the local clouds, and pod status (ready or not, by image tag and by
# what the network lets the pod reach).
#   scripts/kube.sh start DIR    writes DIR/kubeconfig
#   scripts/kube.sh stop DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
free_port() { python3 "$here/local-cloud/free_port.py"; }

start() {
  local dir="$1"; mkdir -p "$dir/kube"
  local bin; bin="$("$here/local-cloud/build-kube.sh")/bin"
  local k="$dir/kube" ep pp ap
  ep="$(free_port)"; pp="$(free_port)"; ap="$(free_port)"; wp="$(free_port)"
  openssl genrsa -out "$k/sa.key" 2048 2>/dev/null
  openssl rsa -in "$k/sa.key" -pubout -out "$k/sa.pub" 2>/dev/null
  echo "local-admin-token,admin,admin,system:masters" >"$k/tokens.csv"
  "$bin/etcd" --data-dir "$k/etcd" --listen-client-urls "http://127.0.0.1:$ep" --advertise-client-urls "http://127.0.0.1:$ep" \
    --listen-peer-urls "http://127.0.0.1:$pp" --initial-advertise-peer-urls "http://127.0.0.1:$pp" \
    --initial-cluster "default=http://127.0.0.1:$pp" >"$k/etcd.log" 2>&1 &
  echo $! >"$k/etcd.pid"
  # Every moto started in this directory before the cluster: the local AWS
  # whose EKS and network the cluster and its pods answer to.
  local aws=""
  for f in moto.port moto-faulty.port; do
    [ -f "$dir/$f" ] && aws="${aws:+$aws,}http://127.0.0.1:$(cat "$dir/$f")"
  done
  # EKS tokens (k8s-aws-v1.) are judged by a stand-in for EKS's
  # authenticator, for their lifetime only (RALPH_SIM_EKS_TOKEN_SECONDS,
  # 900 as on EKS by default), and the local EKS decides who gets in (the
  # signature, the endpoint's ranges, access entries) and what they may do
  # (access policies); the static admin token never expires.
  RALPH_SIM_AWS_ENDPOINTS="$aws" python3 "$here/local-cloud/eks_authenticator.py" "$wp" >"$k/authenticator.log" 2>&1 &
  echo $! >"$k/authenticator.pid"
  cat >"$k/authenticator.kubeconfig" <<WH
apiVersion: v1
kind: Config
clusters:
- name: eks-authenticator
  cluster: { server: "http://127.0.0.1:$wp/authenticate" }
users:
- name: apiserver
  user: {}
contexts:
- name: webhook
  context: { cluster: eks-authenticator, user: apiserver }
current-context: webhook
WH
  sed "s#/authenticate#/authorize#; s#eks-authenticator#eks-authorizer#g" "$k/authenticator.kubeconfig" >"$k/authorizer.kubeconfig"
  "$bin/kube-apiserver" --etcd-servers "http://127.0.0.1:$ep" --bind-address 127.0.0.1 --advertise-address 127.0.0.1 \
    --secure-port "$ap" --insecure-port 0 --token-auth-file "$k/tokens.csv" \
    --authorization-mode Webhook,AlwaysAllow --authorization-webhook-config-file "$k/authorizer.kubeconfig" \
    --authorization-webhook-version v1 --authorization-webhook-cache-authorized-ttl 5s \
    --authorization-webhook-cache-unauthorized-ttl 1s \
    --authentication-token-webhook-config-file "$k/authenticator.kubeconfig" \
    --authentication-token-webhook-version v1 --authentication-token-webhook-cache-ttl 0s \
    --service-account-key-file "$k/sa.pub" --service-account-signing-key-file "$k/sa.key" \
    --service-account-issuer https://kubernetes.default.svc --cert-dir "$k/certs" \
    --service-cluster-ip-range 10.96.0.0/12 --allow-privileged=true \
    --kubelet-preferred-address-types InternalIP >"$k/apiserver.log" 2>&1 &
  echo $! >"$k/apiserver.pid"
  cat >"$dir/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$ap
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: local-admin-token
contexts:
- name: local
  context: { cluster: local, user: admin }
current-context: local
KC
  for _ in $(seq 1 150); do
    if curl -ksf -H "Authorization: Bearer local-admin-token" "https://127.0.0.1:$ap/readyz" >/dev/null 2>&1; then break; fi
    sleep 0.2
  done
  curl -ksf -H "Authorization: Bearer local-admin-token" "https://127.0.0.1:$ap/readyz" >/dev/null \
    || { echo "kube-apiserver did not become ready; see $k/apiserver.log" >&2; tail -20 "$k/apiserver.log" >&2; return 1; }
  # GKE's own CRDs (ManagedCertificate, FrontendConfig, BackendConfig), as a GKE cluster
  # has them, and cert-manager's, as its add-on installs them.
  python3 - "https://127.0.0.1:$ap" "$here/local-cloud/gke-crds.yaml" "$here/local-cloud/cert-manager-crds.yaml" <<'PY'
import json, ssl, sys, urllib.request
docs = [d for f in sys.argv[2:] for d in open(f).read().split("\n---\n")]
ctx = ssl._create_unverified_context()
for doc in docs:
    req = urllib.request.Request(sys.argv[1] + "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                 data=doc.encode(), method="POST",
                                 headers={"Authorization": "Bearer local-admin-token", "Content-Type": "application/yaml"})
    try:
        urllib.request.urlopen(req, context=ctx, timeout=10).read()
    except urllib.error.HTTPError as e:
        if e.code != 409:
            sys.exit("installing the CRDs: %s %s" % (e.code, e.read()[:300]))
PY
  # A node's status is renewed every 4 minutes (node_sim.py's heartbeat):
  # the grace period before a node is NotReady is 10 minutes, not 40 s.
  "$bin/kube-controller-manager" --kubeconfig "$dir/kubeconfig" --leader-elect=false \
    --node-monitor-grace-period 10m \
    --service-account-private-key-file "$k/sa.key" --use-service-account-credentials=false \
    --bind-address 127.0.0.1 --secure-port 0 --port 0 >"$k/controller-manager.log" 2>&1 &
  echo $! >"$k/controller-manager.pid"
  # The real scheduler binds every pod: requests against the nodes'
  # allocatable, anti-affinity, node selectors and taints, with its own
  # reasons on the pods it cannot place.
  "$bin/kube-scheduler" --kubeconfig "$dir/kubeconfig" --leader-elect=false \
    --port 0 --secure-port 0 >"$k/scheduler.log" 2>&1 &
  echo $! >"$k/scheduler.pid"
  # The pods judge their stores' reachability by the local AWS's network
  # model.
  # ... and by the Google double's (started in this directory, before or after).
  # A port-forward to a store reaches this directory's PostgreSQL and Redis.
  RALPH_SIM_RUN_DIR="$dir" RALPH_SIM_GCP_PORT_FILE="$dir/gcp.port" RALPH_SIM_AWS_ENDPOINTS="$aws" python3 "$here/local-cloud/node_sim.py" "$dir/kubeconfig" >"$k/node-sim.log" 2>&1 &
  echo $! >"$k/node-sim.pid"
  # Whether Prometheus and Alertmanager pods run for real (pod_runner.py);
  # the monitoring tests need them to, so say it where the run's log shows.
  for _ in $(seq 100); do
    grep -q "^pod runner: pods" "$k/node-sim.log" 2>/dev/null && break
    sleep 0.1
  done
  grep "^pod runner: pods" "$k/node-sim.log" >&2 || echo "the node simulator has not said how it runs pods: see $k/node-sim.log" >&2
  # What an EKS cluster reports as its endpoint and certificateAuthority.data.
  echo "https://127.0.0.1:$ap" >"$dir/kube.endpoint"
  base64 -w0 "$k/certs/apiserver.crt" >"$dir/kube.ca"
  echo "kube-apiserver ready on 127.0.0.1:$ap" >&2
}

stop() {
  local k="$1/kube" pids=() pid i
  for p in node-sim scheduler controller-manager apiserver authenticator etcd; do
    if [ -f "$k/$p.pid" ]; then
      pid="$(cat "$k/$p.pid")"
      kill "$pid" 2>/dev/null && pids+=("$pid")
    fi
  done
  # Return only once they are gone (a port or etcd's data directory is
  # free for the next start); whatever still runs after 10 s is killed.
  for pid in "${pids[@]}"; do
    for i in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  done
}

case "${1:-}" in
  start) start "${2:?dir}" ;;
  stop) stop "${2:?dir}" ;;
  *) echo "usage: $0 start DIR|stop DIR" >&2; exit 2 ;;
esac
