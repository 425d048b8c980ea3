"""A stand-in for the kubelets of the local cluster.

The local Kubernetes has an API server and the controllers but no scheduler
and no kubelet, so pods would stay Pending forever. This loop plays the part
of the nodes: every pod gets the status a kubelet would report, which lets the
real Deployment and ReplicaSet controllers drive rollouts (updated and
available replicas, the Progressing condition, ProgressDeadlineExceeded).

Images choose their fate by tag, so tests can stage a bad release:
  tag starting with `broken`  the image cannot be pulled (ImagePullBackOff)
  tag starting with `hang`    the container runs but never becomes ready
  anything else               running and ready

It plays the nodes, not the scheduler: the real kube-scheduler binds pods.
Every EKS managed node group of the local AWS (`/moto-api/eks/nodes` of
each endpoint in RALPH_SIM_AWS_ENDPOINTS) and every GKE node pool of the
Google double (`/__double/nodes`) has as many Nodes as its current size
(the group's desired size; the pool's instance groups' target sizes), each
with the allocatable CPU, memory and pods of its machine type (from
support/machine-types.json, with EKS's and GKE's reservations, the figures
validate uses), and the labels and taints the provider sets (hostname,
instance type, zone, `eks.amazonaws.com/nodegroup` or
`cloud.google.com/gke-nodepool`, the group's own labels and taints). Nodes
appear when their group is active, go when it is resized down or deleted,
and their status is renewed like a kubelet's heartbeat. Six more Nodes,
`ralph-sim-0` to `ralph-sim-5` (64 cores each; RALPH_SIM_DEFAULT_NODES
sets how many), take the pods that name no node group, since one API server
stands in for every cluster of the local clouds. Pods that fit
nowhere stay Pending with the scheduler's own reason. A deleted pod is
ended at once, as a kubelet confirms a pod's termination.

It plays the cluster autoscalers too (`autoscale`): a pod the scheduler
left Unschedulable that names a node group or pool, and would fit a new
node of it, grows the group by one node, when an autoscaler serves it:
GKE's own for a pool with autoscaling enabled (the Google double grows the
pool's smallest zone, never past maxNodeCount), and for an EKS node group a
cluster-autoscaler pod running with `--cloud-provider=aws` and the
cluster's auto-discovery tag, whose service account's IAM role the local
AWS checks as STS and IAM would (trusted through an OIDC provider of the
cluster's issuer, allowed autoscaling:SetDesiredCapacity on the group's
tags) before raising the group's desired size, never past its maximum.
Each decision is an event on the pod (TriggeredScaleUp, NotTriggerScaleUp
with the reason). Nodes are never taken away for being unneeded.

Running pods answer HTTP the way the orchestrator does, so that a request
through the API server's service proxy reaches "a pod": every running pod
gets this machine's own address (the API server refuses to proxy to
loopback), and for each container port named `http` one small server there
answers /health and /ready with 200; a port named `metrics` serves the
application's Prometheus metrics (requests and their 5xx share, a latency
histogram, memory, task durations), which POST /__sim/misbehave on it turns
bad (Traffic). Unready pods are never behind a
Service's endpoints, so one server can answer for all of them.

Pods behave like the application where the network decides: a container
whose environment names DATABASE_URL or REDIS_URL (a value, or a key of a
Secret through env or envFrom) is ready only when each of those stores is
reachable from the nodes. A name of a store in the local AWS
(`*.rds.amazonaws.com`, `*.cache.amazonaws.com`) resolves for pods only and
is judged by the local AWS's network model (`/moto-api/network/reach` of
each endpoint in RALPH_SIM_AWS_ENDPOINTS: the store's security groups
against the groups the cluster's nodes carry); loopback addresses are this
machine's own servers; a private address of a store of the Google double
is judged by its network model (`/__double/network/reach`: peering, cluster,
port, egress firewall rules); other names are not modelled. Before the
network, the pod's own NetworkPolicies decide (egress rules: ports and
ipBlocks), where the pod's cluster enforces them: an EKS cluster whose
vpc-cni add-on has enableNetworkPolicy "true", a GKE cluster with Dataplane
V2 or network policy on, and the default pool; elsewhere they are stored and
ignored, as on those clouds. An unreachable store
keeps the pod unready with the reason in its Ready condition, as a failing
readiness probe would. Reaching is not enough: where the store is one of
the local clouds' (the machine's PostgreSQL or a Redis of local_servers.py),
the pod logs in with the URL's own credentials, as the application does at
start: PostgreSQL's startup with SCRAM-SHA-256, MD5 or a cleartext password
(TLS as `sslmode` asks), Redis AUTH and PING (TLS for rediss://); a refused
login, or a `postgres://` URL (SQLAlchemy 1.4+ has no dialect by that
name), keeps the pod unready with the server's own words. Answers are kept
LOGIN_TTL seconds.

It also plays the kubelet's port-forward endpoint, which the API server
proxies `pods/portforward` to (`kubectl port-forward`, the tool reaching a
private store through a proxy pod): an HTTPS server on the node's address
(its port in the Node's daemonEndpoints) that speaks the websocket
port-forward protocol (v4.channel.k8s.io: per port a data and an error
channel, each opened with the port number). A connection to a pod's port is
what the pod does with it: a container running `socat TCP-LISTEN:PORT,...
TCP:HOST:TARGET` connects on to HOST:TARGET from the pod, judged as the
pod's stores are (its NetworkPolicies, then the cloud's network model); a
store of the local clouds is served by this machine's PostgreSQL or Redis
(RALPH_SIM_RUN_DIR's pg.port and redis.port), which is the only way to it,
since its cloud name resolves for pods only. Anything else is refused on
the port's error channel, as a kubelet reports a failed forward.

Usage: python3 node_sim.py KUBECONFIG
"""

import asyncio
import hashlib
import http.client
import io
import subprocess
import tempfile

import base64
import http.server
import socket
import threading

import ipaddress
import json
import re
import ssl
import sys
import time
import os
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timezone

from local_servers import pg_session
import pod_runner


def read_kubeconfig(path):
    text = open(path).read()
    server = re.search(r"server:\s*(\S+)", text).group(1)
    token = re.search(r"token:\s*(\S+)", text).group(1)
    return server, token


def host_address():
    """This machine's address on its default route (no packet is sent)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))
        return s.getsockname()[0]
    except OSError:
        return "10.1.0.2"
    finally:
        s.close()


# The nodes' address (their InternalIP, the kubelet's, the simulated pods'
# podIP and ports): this machine's, or the first of the pod runner's block
# when it has one (main).
HOST = host_address()
SERVING = {}


class App(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        path = self.path.split("?")[0]
        if path in ("/health", "/ready"):
            body = json.dumps({"status": "ok", "served_by": "node simulator"}).encode()
            self.send_response(200)
        else:
            body = b"not found"
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class Traffic:
    """What the application's metrics report on one metrics port: requests
    at RATE a second since the port was first served, answered 5xx at the
    error share and taking `latency` seconds, which POST /__sim/misbehave
    ({"error_ratio": R, "latency_seconds": S}) changes from then on (both 0
    and 0.05 s to start with: a healthy service)."""
    RATE = 10.0
    BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

    def __init__(self):
        self.lock = threading.Lock()
        self.last = self.born = time.time()
        self.ok = self.errors = 0.0
        self.by_bucket = {b: 0.0 for b in self.BUCKETS}
        self.total_seconds = 0.0
        self.error_ratio, self.latency = 0.0, 0.05

    def advance(self):
        t = time.time()
        n = (t - self.last) * self.RATE
        self.last = t
        self.errors += n * self.error_ratio
        self.ok += n * (1 - self.error_ratio)
        for b in self.BUCKETS:
            if self.latency <= b:
                self.by_bucket[b] += n
        self.total_seconds += n * self.latency

    def misbehave(self, cfg):
        with self.lock:
            self.advance()
            self.error_ratio = float(cfg.get("error_ratio", 0.0))
            self.latency = float(cfg.get("latency_seconds", 0.05))

    def exposition(self):
        with self.lock:
            self.advance()
            count = self.ok + self.errors
            lines = [
                "# TYPE http_requests_total counter",
                'http_requests_total{method="GET",status="200"} %d' % self.ok,
                'http_requests_total{method="GET",status="500"} %d' % self.errors,
                "# TYPE http_request_duration_seconds histogram",
            ]
            lines += ['http_request_duration_seconds_bucket{le="%s"} %d' % (b, self.by_bucket[b]) for b in self.BUCKETS]
            lines += ['http_request_duration_seconds_bucket{le="+Inf"} %d' % count,
                      "http_request_duration_seconds_sum %.3f" % self.total_seconds,
                      "http_request_duration_seconds_count %d" % count,
                      "# TYPE process_cpu_seconds_total counter",
                      "process_cpu_seconds_total %.3f" % (0.2 * (self.last - self.born)),
                      "# TYPE process_resident_memory_bytes gauge",
                      "process_resident_memory_bytes 268435456",
                      "# TYPE ralph_task_duration_seconds gauge",
                      "ralph_task_duration_seconds 30"]
            return ("\n".join(lines) + "\n").encode()


class Metrics(http.server.BaseHTTPRequestHandler):
    """A container port named `metrics`: the application's Prometheus
    metrics (Traffic), and the control that makes it misbehave."""

    def reply(self, code, body, kind="text/plain; version=0.0.4"):
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.split("?")[0] == "/metrics":
            return self.reply(200, self.server.traffic.exposition())
        self.reply(404, b"not found")

    def do_POST(self):
        if self.path == "/__sim/misbehave":
            cfg = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            self.server.traffic.misbehave(cfg)
            return self.reply(200, b"{}", "application/json")
        self.reply(404, b"not found")

    def log_message(self, *args):
        pass


def serve(port, metrics=False):
    """One server per port, started once; a port taken by something else
    leaves that pod unreachable (and says so)."""
    if port in SERVING:
        return
    try:
        srv = http.server.ThreadingHTTPServer((HOST, port), Metrics if metrics else App)
        srv.traffic = Traffic()
    except OSError as e:
        print("node simulator: cannot serve %s:%d: %s" % (HOST, port, e), file=sys.stderr, flush=True)
        SERVING[port] = None
        return
    SERVING[port] = srv
    threading.Thread(target=srv.serve_forever, daemon=True).start()


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def fate(image):
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    if tag.startswith("broken"):
        return "unpullable"
    if tag.startswith("hang"):
        return "unready"
    return "ready"


AWS_ENDPOINTS = [e for e in os.environ.get("RALPH_SIM_AWS_ENDPOINTS", "").split(",") if e]
REACH_TTL = 1.0
_reach_cache = {}


def reach(host, port):
    """(reachable, reason) for a pod connecting to host:port."""
    h = host.strip("[]").lower()
    if h in ("localhost",) or h.startswith("127.") or h == "::1":
        return True, ""
    key = (h, port)
    hit = _reach_cache.get(key)
    if hit and time.time() - hit[0] < REACH_TTL:
        return hit[1]
    if is_address(h):
        answer = gcp_reach(h, port)
        _reach_cache[key] = (time.time(), answer)
        return answer
    if not (h.endswith(".rds.amazonaws.com") or h.endswith(".cache.amazonaws.com")):
        return True, ""
    answer = (False, "%s does not resolve: no store in the local cloud has that name" % host)
    for ep in AWS_ENDPOINTS:
        got, failure = ask_model(ep, "/moto-api/network/reach", h, port)
        if failure:
            answer = (False, failure)
            continue
        if got.get("store") or got.get("reachable"):
            answer = (bool(got.get("reachable")), got.get("reason", ""))
            if got.get("local"):
                LOCAL_SERVERS[(h, port)] = got["local"]
            break
    _reach_cache[key] = (time.time(), answer)
    return answer


def ask_model(endpoint, path, host, port):
    """(answer, None) from a local cloud's network model, or (None, why not)."""
    url = "%s%s?%s" % (endpoint.rstrip("/"), path, urllib.parse.urlencode({"host": host, "port": port}))
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read()), None
    except Exception as e:
        return None, "the local cloud's network model at %s did not answer: %s" % (endpoint, e)


def is_address(h):
    try:
        ipaddress.ip_address(h)
        return True
    except ValueError:
        return False


def gcp_reach(host, port):
    """The Google double's network model on a store's private address
    (Cloud SQL, Memorystore); an address no store of it has is not judged."""
    port_file = os.environ.get("RALPH_SIM_GCP_PORT_FILE", "")
    try:
        with open(port_file) as f:
            ep = "http://127.0.0.1:%s" % f.read().strip()
    except OSError:
        return True, ""
    got, failure = ask_model(ep, "/__double/network/reach", host, port)
    if failure:
        return False, failure
    if not got.get("store"):
        return True, ""
    STORE_LABELS[(host, port)] = got["store"]
    if got.get("ca"):
        STORE_CAS[(host, port)] = got["ca"]
    if got.get("local"):
        LOCAL_SERVERS[(host, port)] = got["local"]
    return bool(got.get("reachable")), got.get("reason", "")


def store_urls(pod, container, secret):
    """DATABASE_URL and REDIS_URL as the container would see them."""
    env = {}
    for src in container.get("envFrom", []) or []:
        ref = (src.get("secretRef") or {}).get("name")
        if ref:
            data = secret(pod["metadata"]["namespace"], ref) or {}
            for k, v in data.items():
                env[(src.get("prefix") or "") + k] = v
    for e in container.get("env", []) or []:
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = (e.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                data = secret(pod["metadata"]["namespace"], ref.get("name")) or {}
                if ref.get("key") in data:
                    env[e["name"]] = data[ref["key"]]
    return {k: env[k] for k in ("DATABASE_URL", "REDIS_URL") if env.get(k)}


def selects(selector, labels):
    """A Kubernetes label selector (matchLabels, matchExpressions) on labels."""
    selector = selector or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def egress_refused(pod, host, port, policies):
    """The NetworkPolicies of the pod's namespace that select it for Egress
    decide a connection to a store outside the cluster, as an enforcing
    cluster (GKE Dataplane V2, the VPC CNI's network policy agent) does: with
    none, anything goes; with some, one of their egress rules must admit the
    port (protocol TCP, `port`..`endPort`) and the peer (no `to`, or an
    ipBlock holding the address; pod and namespace selectors never match a
    store outside the cluster; a cloud name's address is unknown here, so
    only 0.0.0.0/0 holds it). Returns why not, or None."""
    meta = pod["metadata"]
    if not ENFORCING.get(pod["spec"].get("nodeName"), True):
        return None  # the pod's cluster stores its NetworkPolicies and enforces none
    labels = meta.get("labels") or {}
    chosen = []
    for np in policies:
        if np["metadata"].get("namespace") != meta.get("namespace"):
            continue
        spec = np.get("spec") or {}
        types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
        if "Egress" in types and selects(spec.get("podSelector"), labels):
            chosen.append(np)
    if not chosen:
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    for np in chosen:
        for rule in np["spec"].get("egress") or []:
            ports = rule.get("ports") or []
            port_ok = not ports or any(
                (p.get("protocol") or "TCP") == "TCP" and (
                    "port" not in p or (isinstance(p["port"], int) and p["port"] <= port <= (p.get("endPort") or p["port"])))
                for p in ports)
            if not port_ok:
                continue
            peers = rule.get("to") or []
            if not peers:
                return None
            for peer in peers:
                block = peer.get("ipBlock")
                if not block:
                    continue
                net = ipaddress.ip_network(block.get("cidr", "0.0.0.0/0"), strict=False)
                if address is None:
                    if net.prefixlen == 0:
                        return None
                    continue
                if address in net and not any(address in ipaddress.ip_network(x, strict=False)
                                              for x in block.get("except") or []):
                    return None
    names = ", ".join(np["metadata"]["name"] for np in chosen)
    return "NetworkPolicy %s admits no egress to %s:%d" % (names, host, port)


def untrusted(pod, container, url, ca, configmap, secret):
    """Why a TLS client in this container cannot verify a server whose
    certificate only `ca` signs, or None: the url must name a CA file
    (`ssl_ca_certs`) that a volume mount of a ConfigMap or Secret holding
    that CA provides, as a verifying client needs."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    path = (query.get("ssl_ca_certs") or [""])[0]
    why = ("certificate verify failed: the server's certificate is signed by its own CA, which the pod "
           "does not trust (mount the CA and name it in ssl_ca_certs)")
    if not path:
        return why
    volumes = {v.get("name"): v for v in pod["spec"].get("volumes") or []}
    for m in container.get("volumeMounts") or []:
        mount = m.get("mountPath", "").rstrip("/") + "/"
        if not path.startswith(mount):
            continue
        key = path[len(mount):]
        v = volumes.get(m.get("name")) or {}
        if v.get("configMap"):
            data = configmap(pod["metadata"]["namespace"], v["configMap"].get("name")) or {}
        elif v.get("secret"):
            data = secret(pod["metadata"]["namespace"], v["secret"].get("secretName")) or {}
        else:
            data = {}
        held = data.get(key, "")
        if ca.strip() and ca.strip() in held:
            return None
        return "certificate verify failed: %s does not hold the server's CA" % path
    return "certificate verify failed: no volume of the pod provides %s" % path


LOGIN_TTL = 2.0
_login_cache = {}


def store_server(host, port):
    """The local server that plays the store at host:port, as the network
    models named it, or None for a name the local clouds do not serve."""
    h = host.strip("[]").lower()
    store = (STORE_LABELS.get((h, port)) or "") if is_address(h) else ""
    named = LOCAL_SERVERS.get((h, port))
    if named:
        addr, _, p = named.rpartition(":")
        return addr, int(p)
    return local_server(store, h)


def redis_login(server, user, password, tls):
    """None when Redis at `server` answers PING after AUTH, else its reason."""
    sock = socket.create_connection(server, timeout=5)
    try:
        if tls:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
            sock = ctx.wrap_socket(sock)
        reader = sock.makefile("rb")

        def command(*words):
            out = b"*%d\r\n" % len(words)
            for w in words:
                w = w.encode()
                out += b"$%d\r\n%s\r\n" % (len(w), w)
            sock.sendall(out)
            return reader.readline().decode(errors="replace").strip()

        if password is not None:
            answer = command("AUTH", user, password) if user else command("AUTH", password)
            if answer.startswith("-"):
                return answer[1:]
        answer = command("PING")
        return answer[1:] if answer.startswith("-") else None
    finally:
        sock.close()


def login_refused(url, host, port):
    """Why the application cannot log in with the URL's credentials, or None
    (also for a store the local clouds do not serve)."""
    u = urllib.parse.urlsplit(url)
    if u.scheme == "postgres":
        return ("the application cannot use postgres://: SQLAlchemy 1.4+ has no dialect by that name "
                "(NoSuchModuleError: Can't load plugin: sqlalchemy.dialects:postgres); write postgresql://")
    server = store_server(host, port)
    if server is None:
        return None
    key = (url, server)
    hit = _login_cache.get(key)
    if hit and time.time() - hit[0] < LOGIN_TTL:
        return hit[1]
    user = urllib.parse.unquote(u.username or "")
    password = urllib.parse.unquote(u.password) if u.password is not None else None
    query = urllib.parse.parse_qs(u.query)
    try:
        if u.scheme.startswith("postgresql"):
            database = (u.path or "/").lstrip("/") or user
            sslmode = (query.get("sslmode") or query.get("ssl_mode") or ["prefer"])[0]
            why = pg_session(server, user or "postgres", password, database, sslmode)
        elif u.scheme in ("redis", "rediss"):
            why = redis_login(server, user, password, u.scheme == "rediss")
        else:
            why = None
    except (OSError, ssl.SSLError, ValueError, KeyError) as e:
        why = "the login did not finish: %s" % e
    if why:
        why = "cannot log in to %s:%d as %s: %s" % (host, port, user or "(no user)", why)
    _login_cache[key] = (time.time(), why)
    return why


def unreachable_store(pod, container, secret, policies=(), configmap=lambda ns, name: None):
    """Why this container cannot reach one of its stores, or None."""
    for name, url in sorted(store_urls(pod, container, secret).items()):
        try:
            u = urllib.parse.urlsplit(url)
            host, port = u.hostname, u.port
        except ValueError:
            return "%s is not a URL" % name
        if not host:
            continue
        if port is None:
            port = 5432 if u.scheme.startswith("postgres") else 6379
        refused = egress_refused(pod, host, port, policies)
        if refused:
            return "%s: cannot connect to %s:%d: %s" % (name, host, port, refused)
        ok, why = reach(host, port)
        if not ok:
            return "%s: cannot connect to %s:%d: %s" % (name, host, port, why)
        ca = STORE_CAS.get((host, port))
        if ca and u.scheme == "rediss":
            why = untrusted(pod, container, url, ca, configmap, secret)
            if why:
                return "%s: TLS to %s:%d: %s" % (name, host, port, why)
        why = login_refused(url, host, port)
        if why:
            return "%s: %s" % (name, why)
    return None


SERVED_PATHS = ("/health", "/ready")
# What the add-ons' controllers serve, by their image's name.
IMAGE_PATHS = {"aws-load-balancer-controller": ("/healthz", "/readyz"),
               "prometheus": ("/-/ready", "/-/healthy"), "alertmanager": ("/-/ready", "/-/healthy"),
               "grafana": ("/api/health",), "fluent-bit": ("/api/v1/health",)}


def probe_refused(container):
    """Why the container's HTTP probes fail, or None: the application
    answers /health and /ready (App above) and 404 elsewhere, as the
    orchestrator does; the add-ons' controllers answer the paths their
    software serves (IMAGE_PATHS)."""
    repo = container.get("image", "").split("@")[0].rsplit(":", 1)[0].rsplit("/", 1)[-1]
    served = IMAGE_PATHS.get(repo, SERVED_PATHS)
    for kind in ("readinessProbe", "livenessProbe"):
        get = (container.get(kind) or {}).get("httpGet")
        if get and get.get("path", "/").split("?")[0] not in served:
            return "%s failed: HTTP probe failed with statuscode: 404 (GET %s)" % (kind, get.get("path"))
    return None


# The kubelet of pods whose software runs here for real (pod_runner.py);
# set by main().
RUNNER = None


def desired_status(pod, secret=lambda ns, name: None, policies=(), configmap=lambda ns, name: None):
    containers = pod["spec"].get("containers", [])
    statuses = []
    ready_all = True
    blocked = []
    real = RUNNER is not None and RUNNER.program(pod) is not None
    for c in containers:
        f = fate(c.get("image", ""))
        crash = RUNNER.crashed(pod) if real else None
        if crash:
            ready_all = False
            statuses.append({
                "name": c["name"], "image": c.get("image", ""), "imageID": "local://" + c.get("image", ""),
                "ready": False, "restartCount": RUNNER.restarts(pod), "started": False,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": crash}},
            })
            continue
        if f == "ready" and real:
            why = RUNNER.probe(pod, c)
            if why:
                f = "unready"
                blocked.append("%s: %s" % (c["name"], why))
        elif f == "ready":
            why = probe_refused(c) or unreachable_store(pod, c, secret, policies, configmap)
            if why:
                f = "unready"
                blocked.append("%s: %s" % (c["name"], why))
        if f == "unpullable":
            ready_all = False
            statuses.append({
                "name": c["name"], "image": c.get("image", ""), "imageID": "",
                "ready": False, "restartCount": 0, "started": False,
                "state": {"waiting": {"reason": "ImagePullBackOff",
                                      "message": 'Back-off pulling image "%s"' % c.get("image", "")}},
            })
        else:
            ready = f == "ready"
            ready_all = ready_all and ready
            statuses.append({
                "name": c["name"], "image": c.get("image", ""), "imageID": "local://" + c.get("image", ""),
                "ready": ready, "restartCount": RUNNER.restarts(pod) if real else 0, "started": True,
                "state": {"running": {"startedAt": now()}},
            })
    running = all("running" in s["state"] for s in statuses)
    ready_word = "True" if ready_all else "False"
    return {
        "phase": "Running" if running else "Pending",
        "hostIP": HOST,
        "podIP": (RUNNER.address(pod) if real else None) or HOST,
        "startTime": now(),
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now()},
            {"type": "ContainersReady", "status": ready_word, "lastTransitionTime": now()},
            dict({"type": "Ready", "status": ready_word, "lastTransitionTime": now()},
                 **({"reason": "ProbeFailed" if any("probe failed" in b for b in blocked)
                     else "StoreLoginFailed" if any("cannot log in" in b for b in blocked) else "StoreUnreachable",
                     "message": "; ".join(blocked)} if blocked else {})),
        ],
        "containerStatuses": statuses,
    }


NODE = "ralph-sim"
# node name -> whether its cluster enforces NetworkPolicies (EKS: vpc-cni's
# network policy agent; GKE: Dataplane V2 or network policy); the default
# pool's nodes do.
ENFORCING = {}
# The pool for pods that name no node group: enough hosts for the guide's
# three anti-affine replicas and a surge pod per namespace, so a stack
# without a cloud cluster (the Kubernetes-only tests) can roll out.
DEFAULT_NODES = int(os.environ.get("RALPH_SIM_DEFAULT_NODES", "6"))
SIMULATED = "node.ralph-sim/simulated"  # the label on every Node this simulator keeps
SOURCE = "node.ralph-sim/source"  # the annotation naming the cloud a Node's group is in
EKS_CLUSTER = "node.ralph-sim/eks-cluster"  # the label naming an EKS Node's cluster
GKE_PROJECT = "node.ralph-sim/gke-project"  # the label naming a GKE Node's project
MACHINES = json.load(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "support",
                                       "machine-types.json")))
EFFECTS = {"NO_SCHEDULE": "NoSchedule", "PREFER_NO_SCHEDULE": "PreferNoSchedule", "NO_EXECUTE": "NoExecute"}
MIB = 1024 * 1024
GIB = 1024 * MIB


def allocatable(provider, machine_type):
    """What one node offers pods, as crates/core/src/model/capacity.rs computes it:
    {"cpu", "memory", "pods"} as Kubernetes quantities, or None for a machine
    type the table does not know."""
    shape = MACHINES["ec2" if provider == "eks" else "gce"].get(machine_type)
    if shape is None:
        return None
    r = MACHINES["reservations"]
    cores, shares = shape["cores"], r["cpu_per_core"]
    cpu = cores - sum(shares[min(c, len(shares) - 1)] for c in range(cores))
    memory = shape["memory_gib"] * GIB
    if provider == "eks":
        reserved = (r["eks_memory_mib"]["fixed"] + r["eks_memory_mib"]["per_pod"] * shape["max_pods"]) * MIB
    else:
        reserved, left = 0.0, memory
        for size, share in r["gke_memory"]:
            part = left if size is None else min(left, size * GIB)
            reserved += part * share
            left -= part
            if left <= 0:
                break
    reserved += r["eviction_mib"] * MIB
    return {"cpu": "%dm" % round(cpu * 1000), "memory": "%dKi" % ((memory - reserved) // 1024),
            "pods": str(shape["max_pods"]), "capacity": {"cpu": str(cores), "memory": "%dKi" % (memory // 1024),
                                                            "pods": str(shape["max_pods"])}}


def node_status(name=NODE, resources=None):
    resources = resources or {"cpu": "64", "memory": "256Gi", "pods": "1000",
                              "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"}}
    return {
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "node simulator", "lastHeartbeatTime": now(), "lastTransitionTime": now(),
        }],
        "addresses": [{"type": "InternalIP", "address": HOST}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET["port"]}},
        "capacity": resources["capacity"],
        "allocatable": {k: resources[k] for k in ("cpu", "memory", "pods")},
    }


def fetch_json(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def node_name(group, key, i):
    """A node's name: its group's, a short hash of where the group is (two
    accounts may hold groups of one name) and its index."""
    base = re.sub(r"[^a-z0-9-]+", "-", group.lower()).strip("-")[:40] or "node"
    return "%s-%s-%d" % (base, hashlib.sha256(key.encode()).hexdigest()[:6], i)


def wanted_nodes():
    """name -> the Node every node group of the local clouds has now, and
    the sources that did not answer (their Nodes are kept as they are)."""
    want, failed = {}, set()
    GROUPS.clear()

    def add(source, name, provider, machine_type, labels, taints, enforcing):
        resources = allocatable(provider, machine_type)
        if resources is None:
            print("node simulator: no figures for machine type %s (add it to support/machine-types.json); "
                  "its nodes are left out" % machine_type, file=sys.stderr, flush=True)
            return
        labels = dict(labels, **{"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                 "node.kubernetes.io/instance-type": machine_type, SIMULATED: "true"})
        want[name] = {"source": source, "labels": labels, "resources": resources, "enforcing": enforcing,
                      "taints": [{"key": t.get("key", ""), "value": t.get("value", ""),
                                  "effect": EFFECTS.get(t.get("effect"), t.get("effect"))} for t in taints]}

    for ep in AWS_ENDPOINTS:
        source = "aws " + ep
        try:
            groups = fetch_json(ep + "/moto-api/eks/nodes")
        except Exception:
            failed.add(source)
            continue
        for g in groups:
            key = "%s %s %s %s %s" % (ep, g["account"], g["region"], g["cluster"], g["nodegroup"])
            labels = dict(g["labels"], **{
                EKS_CLUSTER: g["cluster"],
                "topology.kubernetes.io/region": g["region"], "eks.amazonaws.com/nodegroup": g["nodegroup"],
                "eks.amazonaws.com/capacityType": g.get("capacity_type") or "ON_DEMAND"})
            for i in range(g["size"]):
                zone = g["zones"][i % len(g["zones"])]
                add(source, node_name(g["nodegroup"], key, i), "eks", g["instance_type"],
                    dict(labels, **{"topology.kubernetes.io/zone": zone}), g["taints"], g.get("network_policy", False))
            GROUPS.append({"pool": (ep, g["account"], g["region"], g["cluster"], g["nodegroup"]),
                           "provider": "eks", "endpoint": ep, "cluster": g["cluster"], "name": g["nodegroup"],
                           "size": g["size"], "labels": labels, "taints": g["taints"],
                           "resources": allocatable("eks", g["instance_type"])})
    port_file = os.environ.get("RALPH_SIM_GCP_PORT_FILE", "")
    if port_file and os.path.exists(port_file):
        source = "gcp"
        try:
            with open(port_file) as f:
                pools = fetch_json("http://127.0.0.1:%s/__double/nodes" % f.read().strip())
        except Exception:
            failed.add(source)
            pools = []
        for g in pools:
            key = "%s %s %s %s" % (g["project"], g["cluster"], g["pool"], g["zone"])
            labels = dict(g["labels"], **{
                "topology.kubernetes.io/zone": g["zone"],
                "topology.kubernetes.io/region": g["zone"].rsplit("-", 1)[0],
                "cloud.google.com/gke-nodepool": g["pool"], GKE_PROJECT: g["project"]})
            for i in range(g["size"]):
                add(source, node_name("gke-%s-%s" % (g["cluster"][:14], g["pool"]), key, i), "gke",
                    g["machine_type"], labels, g["taints"], g.get("network_policy", False))
            if (g.get("autoscaling") or {}).get("enabled") and g.get("group"):
                GROUPS.append({"pool": (g["project"], g["cluster"], g["pool"]), "group": g["group"],
                               "provider": "gke", "name": g["pool"],
                               "size": g["size"], "labels": labels, "taints": g["taints"],
                               "resources": allocatable("gke", g["machine_type"])})
    return want, failed


GROUPS = []  # the node groups an autoscaler may grow, as last listed
POOL_KEYS = ("cloud.google.com/gke-nodepool", "eks.amazonaws.com/nodegroup")
SCALE_UP_COOLDOWN = 10.0  # seconds between two growths of one pool: the new node must register first
# Pools grown whose new Node is not registered yet: their cooldown counts
# from the Node's registration (keep_nodes), not from the request, as an
# autoscaler counts a node it asked for as upcoming until it joins; under
# load the join can take longer than the cooldown, and a second node would
# be asked for the same pod.
AWAITING = set()
# Seconds a pod must have stayed unschedulable: a rollout's next pod waits a
# moment for the node the previous old pod frees, which is no reason to grow.
UNSCHEDULABLE_FOR = 4.0


def quantity(text):
    """A Kubernetes quantity ("500m", "2", "2Gi", "1G") as a float of base units."""
    text = str(text).strip()
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
             "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40}
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[:-len(suffix)]) * units[suffix]
    return float(text)


def tolerated(pod, taint):
    """Whether one of the pod's tolerations matches a taint."""
    for t in pod["spec"].get("tolerations") or []:
        key_ok = t.get("key") == taint.get("key") or (not t.get("key") and t.get("operator") == "Exists")
        value_ok = t.get("operator") == "Exists" or (t.get("value") or "") == (taint.get("value") or "")
        effect_ok = not t.get("effect") or t.get("effect") == taint.get("effect")
        if key_ok and value_ok and effect_ok:
            return True
    return False


def fits_new_node(pod, g):
    """Would the pod schedule on a fresh node of group g? The pod must name
    a node group or pool (one API server plays every cluster, so a pod that
    names none belongs to no cloud's group), and its node selector, its
    tolerations of the group's taints and its requests must all allow it.
    Returns None, or why not."""
    sel = pod["spec"].get("nodeSelector") or {}
    if not any(k in sel for k in POOL_KEYS):
        return "it names no node pool"
    if any(g["labels"].get(k) != v for k, v in sel.items()):
        return "node selector does not match"
    for t in g["taints"]:
        effect = EFFECTS.get(t.get("effect"), t.get("effect"))
        if effect in ("NoSchedule", "NoExecute") and not tolerated(pod, dict(t, effect=effect)):
            return "taint %s not tolerated" % t.get("key")
    res = g["resources"] or {}
    for name in ("cpu", "memory"):
        want = sum(quantity(((c.get("resources") or {}).get("requests") or {}).get(name, 0))
                   for c in pod["spec"].get("containers") or [])
        if res.get(name) and want > quantity(res[name]):
            return "insufficient %s on a new node" % name
    return None


def eks_autoscaler(cluster):
    """The running cluster autoscaler pod that serves an EKS cluster (its
    --cloud-provider=aws and auto-discovery by the cluster's tag), or None:
    EKS has no autoscaler of its own, a stack installs one."""
    tag = "k8s.io/cluster-autoscaler/" + cluster
    for pod in list(SEEN["pods"].values()):
        if (pod.get("status") or {}).get("phase") != "Running" or pod["metadata"].get("deletionTimestamp"):
            continue
        for c in pod["spec"].get("containers") or []:
            repo = c.get("image", "").split("@")[0].rsplit(":", 1)[0]
            if not repo.endswith("/cluster-autoscaler") and repo != "cluster-autoscaler":
                continue
            args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
            discovery = [a.split("=", 1)[1] for a in args if a.startswith("--node-group-auto-discovery=")]
            if "--cloud-provider=aws" in args and any(
                    tag in d.replace("asg:tag=", "").split(",") for d in discovery):
                return pod
    return None


def grow(g, call):
    """One more node in group g: {"grown", "size"} or {"grown": False, "reason"}."""
    if g["provider"] == "gke":
        ordered = sorted((x for x in GROUPS if x["pool"] == g["pool"]), key=lambda x: x["size"])
        answer = {"grown": False, "reason": "no group"}
        for x in ordered:
            answer = post_gcp("/__double/nodes/grow", {"group": x["group"]})
            if answer.get("grown"):
                return dict(answer, zone=x["labels"].get("topology.kubernetes.io/zone"))
        return answer
    pod = eks_autoscaler(g["cluster"])
    if pod is None:
        return None
    ns, sa = pod["metadata"]["namespace"], pod["spec"].get("serviceAccountName") or "default"
    try:
        account = call("GET", "/api/v1/namespaces/%s/serviceaccounts/%s" % (ns, sa))
        role = ((account.get("metadata") or {}).get("annotations") or {}).get("eks.amazonaws.com/role-arn", "")
    except urllib.error.HTTPError:
        role = ""
    return post_json(g["endpoint"] + "/moto-api/eks/autoscale", {
        "cluster": g["cluster"], "nodegroup": g["name"], "role_arn": role, "service_account": "%s/%s" % (ns, sa)})


PENDING_SINCE = {}  # pod uid -> when the autoscaler first saw it unschedulable
# (pool label, its value) -> when a Node of the pool last registered. The
# scheduler tries the pool's pending pods again on the new node; their
# Unschedulable condition until then says nothing about the pool as it is.
JOINED = {}


def freed_by_a_leaving_pod(pod, pods):
    """Whether a pod the pending pod's required anti-affinity keeps it away
    from is being deleted: the place it holds comes free once it is gone
    (a rollout's next pod waits for the old pod it replaces), which a new
    node would not make sooner. The autoscaler's simulation sees the
    cluster as it will be, so this is no reason to grow."""
    terms = (((pod["spec"].get("affinity") or {}).get("podAntiAffinity") or {})
             .get("requiredDuringSchedulingIgnoredDuringExecution") or [])
    ns = pod["metadata"].get("namespace")
    for term in terms:
        spaces = term.get("namespaces") or [ns]
        for other in pods:
            meta = other["metadata"]
            if (meta.get("deletionTimestamp") and other["spec"].get("nodeName")
                    and meta.get("namespace") in spaces
                    and selects(term.get("labelSelector"), meta.get("labels") or {})):
                return True
    return False


def autoscale(call, grown):
    """The cluster autoscalers, from the pods' side: a pod the scheduler left
    Unschedulable that would fit a new node of a group grows that group by
    one node, if an autoscaler serves it: GKE's own for a pool with
    autoscaling (the Google double resizes the pool's smallest zone and
    refuses past its maximum), or for an EKS node group a cluster-autoscaler
    pod running in the cluster (the local AWS checks its IRSA role and the
    group's maximum). An event on the pod says what was done, as the
    autoscaler's TriggeredScaleUp / NotTriggerScaleUp events do."""
    pods = list(SEEN["pods"].values())
    live = {p["metadata"].get("uid") for p in pods if not p["spec"].get("nodeName")}
    for uid in [u for u in PENDING_SINCE if u not in live]:
        PENDING_SINCE.pop(uid, None)
    for pod in pods:
        meta, spec = pod["metadata"], pod["spec"]
        if spec.get("nodeName") or meta.get("deletionTimestamp"):
            continue
        cond = next((c for c in (pod.get("status") or {}).get("conditions") or []
                     if c.get("type") == "PodScheduled"), None)
        if not cond or cond.get("status") != "False" or cond.get("reason") != "Unschedulable":
            continue
        since = PENDING_SINCE.setdefault(meta.get("uid"), time.time())
        sel = spec.get("nodeSelector") or {}
        joined = max([JOINED.get((k, sel[k]), 0) for k in POOL_KEYS if k in sel] or [0])
        if time.time() - max(since, joined) < UNSCHEDULABLE_FOR or freed_by_a_leaving_pod(pod, pods):
            continue
        fitting = [g for g in GROUPS if fits_new_node(pod, g) is None]
        if not fitting:
            continue
        g = fitting[0]
        if time.time() - grown.get(g["pool"], 0) < SCALE_UP_COOLDOWN:
            continue
        answer = grow(g, call)
        if answer is None:
            continue  # no autoscaler serves the group: nothing happens, as on EKS without one
        grown[g["pool"]] = time.time()
        if answer.get("grown"):
            AWAITING.add(g["pool"])
            reason, message = "TriggeredScaleUp", "pod triggered scale-up: node group %s grew to %s%s" % (
                g["name"], answer.get("size"), " in " + answer["zone"] if answer.get("zone") else "")
        else:
            reason, message = "NotTriggerScaleUp", "pod didn't trigger scale-up (node group %s): %s" % (
                g["name"], answer.get("reason"))
        print("node simulator (autoscaler): %s/%s: %s" % (meta["namespace"], meta["name"], message),
              file=sys.stderr, flush=True)
        try:
            call("POST", "/api/v1/namespaces/%s/events" % meta["namespace"], {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"generateName": meta["name"] + "."},
                "involvedObject": {"kind": "Pod", "namespace": meta["namespace"], "name": meta["name"],
                                   "uid": meta.get("uid")},
                "reason": reason, "message": message, "type": "Normal" if answer.get("grown") else "Warning",
                "source": {"component": "cluster-autoscaler"}, "firstTimestamp": now(), "lastTimestamp": now(),
                "count": 1})
        except Exception as e:
            print("node simulator (autoscaler): event: %s" % e, file=sys.stderr, flush=True)


def post_json(url, body):
    try:
        req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())
    except Exception as e:
        return {"grown": False, "reason": "the local cloud at %s did not answer: %s" % (url, e)}


def post_gcp(path, body):
    try:
        with open(os.environ.get("RALPH_SIM_GCP_PORT_FILE", "")) as f:
            return post_json("http://127.0.0.1:%s%s" % (f.read().strip(), path), body)
    except OSError as e:
        return {"grown": False, "reason": "the Google double's port is unknown: %s" % e}


# How often a Node's status is renewed. A kubelet reports it every 5
# minutes when nothing changed (renewing a Lease in between); the local
# controller-manager's node grace period is 10 minutes (scripts/kube.sh), so
# one write per node every 4 minutes keeps them Ready: a suite leaves
# hundreds of nodes, and a renewal every 15 s cost the API server, etcd
# and this simulator about a quarter of a core each.
HEARTBEAT_SECONDS = 240


def keep_nodes(call):
    """Make the Nodes match the node groups, and renew every Node's status
    (the heartbeat the node lifecycle controller watches), forever."""
    beats, grown = {}, {}
    while True:
        try:
            want, failed = wanted_nodes()
            autoscale(call, grown)
            for i in range(DEFAULT_NODES):
                name = "%s-%d" % (NODE, i)
                want[name] = {"source": "", "resources": None, "taints": [], "enforcing": True,
                              "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                                         "node.ralph-sim/pool": "default", SIMULATED: "true"}}
            # Swapped whole: the pod loop and the port-forward thread read it.
            ENFORCING.clear()
            ENFORCING.update({name: node["enforcing"] for name, node in want.items()})
            # Their names, labels and annotations only, from the API
            # server's cache: a suite leaves hundreds of nodes behind, and
            # their whole objects every 2 s cost more than the rest.
            listed = call("GET", "/api/v1/nodes?resourceVersion=0",
                          accept="application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json")
            # (An empty metadata list has `items: null`.)
            have = {n["metadata"]["name"]: n for n in listed.get("items") or []}
            for name, node in want.items():
                if name not in have:
                    call("POST", "/api/v1/nodes", {
                        "apiVersion": "v1", "kind": "Node",
                        "metadata": {"name": name, "labels": node["labels"],
                                     "annotations": {SOURCE: node["source"]} if node["source"] else {}},
                        "spec": {"taints": node["taints"]} if node["taints"] else {},
                    })
                    beats.pop(name, None)
                    for pool in list(AWAITING):
                        grown[pool] = time.time()
                    AWAITING.clear()
                    for key in POOL_KEYS:
                        if key in node["labels"]:
                            JOINED[(key, node["labels"][key])] = time.time()
                if time.time() - beats.get(name, 0) > HEARTBEAT_SECONDS:
                    call("PATCH", "/api/v1/nodes/%s/status" % name,
                         {"status": node_status(name, node["resources"])}, "application/merge-patch+json")
                    beats[name] = time.time()
            for name, node in have.items():
                labels = node["metadata"].get("labels") or {}
                source = (node["metadata"].get("annotations") or {}).get(SOURCE)
                if name not in want and labels.get(SIMULATED) == "true" and source not in failed:
                    # The group shrank or went: its node goes, and the pod
                    # garbage collector ends the pods that were bound to it.
                    call("DELETE", "/api/v1/nodes/" + name)
                    beats.pop(name, None)
        except Exception as e:  # the API server restarts
            print("node simulator (nodes): %s" % e, file=sys.stderr, flush=True)
        time.sleep(2)


KUBELET = {"port": 0}
RUN_DIR = os.environ.get("RALPH_SIM_RUN_DIR", "")
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
SEEN = {"pods": {}, "policies": []}  # the pods ((namespace, name) -> pod) and policies as last listed


def local_server(store, host):
    """This machine's PostgreSQL, which plays every database of the local
    clouds, when the network model did not name a server (local_servers.py
    names one for each Redis), or None."""
    kind = None
    if host.endswith(".rds.amazonaws.com") or store.startswith("Cloud SQL"):
        kind = "pg.port"
    if not kind or not RUN_DIR:
        return None
    try:
        with open(os.path.join(RUN_DIR, kind)) as f:
            return ("127.0.0.1", int(f.read().strip()))
    except (OSError, ValueError):
        return None


def forward_target(pod, port):
    """Where a connection to the pod's port goes: (host, port) from a socat
    container listening on it, or None when nothing in the pod listens."""
    for c in pod["spec"].get("containers", []):
        args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
        listens = any(re.match(r"TCP[46]?-LISTEN:%d(,|$)" % port, a) for a in args)
        if not listens:
            continue
        for a in args:
            m = re.match(r"TCP[46]?:([^:,]+|\[[^\]]+\]):(\d+)", a)
            if m:
                return m.group(1).strip("[]"), int(m.group(2))
    return None


def open_forward(namespace, name, port):
    """(host, port) to connect to for a forward to the pod's port, or why not."""
    pod = SEEN["pods"].get((namespace, name))
    if not pod or (pod.get("status") or {}).get("phase") != "Running":
        # Newer than the last list (its status was written since).
        try:
            pod = SEEN["get"]("/api/v1/namespaces/%s/pods/%s" % (namespace, name))
        except Exception:
            pod = None
    if not pod:
        return None, "pod %s/%s not found" % (namespace, name)
    if (pod.get("status") or {}).get("phase") != "Running":
        return None, "pod %s/%s is not running" % (namespace, name)
    target = forward_target(pod, port)
    if not target:
        return None, "nothing in pod %s/%s listens on port %d" % (namespace, name, port)
    host, tport = target
    refused = egress_refused(pod, host, tport, SEEN["policies"])
    if refused:
        return None, "the pod cannot connect to %s:%d: %s" % (host, tport, refused)
    ok, why = reach(host, tport)
    if not ok:
        return None, "the pod cannot connect to %s:%d: %s" % (host, tport, why)
    h = host.lower()
    server = store_server(h, tport)
    if server:
        return server, None
    if h in ("localhost",) or h.startswith("127."):
        return (h, tport), None
    return None, "%s:%d is not a store of the local cloud" % (host, tport)


STORE_LABELS = {}
STORE_CAS = {}  # (address, port) -> the CA a TLS client must trust (Memorystore's own)
LOCAL_SERVERS = {}  # (cloud name or address, port) -> "127.0.0.1:PORT", as the models name them


def ws_frame(payload, opcode=2):
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 127]) + n.to_bytes(8, "big")
    return head + payload


async def ws_read(reader):
    """One whole message: (opcode, payload); continuation frames joined."""
    data, first = b"", None
    while True:
        b0, b1 = await reader.readexactly(2)
        op, n = b0 & 0x0F, b1 & 0x7F
        if n == 126:
            n = int.from_bytes(await reader.readexactly(2), "big")
        elif n == 127:
            n = int.from_bytes(await reader.readexactly(8), "big")
        mask = await reader.readexactly(4) if b1 & 0x80 else b""
        chunk = await reader.readexactly(n)
        if mask:
            chunk = bytes(c ^ mask[i % 4] for i, c in enumerate(chunk))
        if op >= 8:  # control frames come between fragments
            return op, chunk
        first = op if first is None else first
        data += chunk
        if b0 & 0x80:
            return first, data


async def portforward(reader, writer, namespace, name, ports):
    """The v4.channel.k8s.io streams of one port-forward connection."""
    lock = asyncio.Lock()

    async def send(payload, opcode=2):
        async with lock:
            writer.write(ws_frame(payload, opcode))
            await writer.drain()

    upstream = {}
    for i, p in enumerate(ports):
        for ch in (2 * i, 2 * i + 1):
            await send(bytes([ch]) + p.to_bytes(2, "little"))
    pumps = []

    async def pump(i, r):
        try:
            while True:
                chunk = await r.read(65536)
                if not chunk:
                    break
                await send(bytes([2 * i]) + chunk)
        except (ConnectionError, OSError):
            pass
        try:
            await send(b"", 8)
        except (ConnectionError, OSError):
            pass
        writer.close()

    try:
        # As a kubelet: each port's connection into the pod is made at once.
        for i, p in enumerate(ports):
            target, why = await asyncio.get_running_loop().run_in_executor(None, open_forward, namespace, name, p)
            if why is None:
                try:
                    r, w = await asyncio.open_connection(*target)
                except OSError as e:
                    why = "cannot connect to %s:%d: %s" % (target[0], target[1], e)
            if why is not None:
                print("node simulator: port-forward %s/%s:%d refused: %s" % (namespace, name, p, why),
                      file=sys.stderr, flush=True)
                await send(bytes([2 * i + 1]) + ("error forwarding port %d to pod %s: %s" % (p, name, why)).encode())
                await send(b"", 8)
                return
            upstream[i] = w
            pumps.append(asyncio.ensure_future(pump(i, r)))
        while True:
            op, msg = await ws_read(reader)
            if op == 8:
                break
            if op == 9:
                await send(msg, 10)
                continue
            if op != 2 or not msg:
                continue
            ch, body = msg[0], msg[1:]
            i = ch // 2
            if ch % 2 or i not in upstream:
                continue
            upstream[i].write(body)
            await upstream[i].drain()
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        for w in upstream.values():
            w.close()
        for t in pumps:
            t.cancel()
        writer.close()


async def kubelet_conn(reader, writer):
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        writer.close()
        return
    lines = head.decode("latin-1").split("\r\n")
    method, target = lines[0].split(" ")[:2]
    hdrs = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            hdrs[k.strip().lower()] = v.strip()
    url = urllib.parse.urlsplit(target)
    parts = url.path.strip("/").split("/")
    query = urllib.parse.parse_qs(url.query)
    ports = [int(p) for k in ("port", "ports") for v in query.get(k, []) for p in v.split(",") if p]
    offered = [p.strip() for p in hdrs.get("sec-websocket-protocol", "").split(",")]
    if len(parts) != 3 or parts[0] != "portForward" or "sec-websocket-key" not in hdrs \
            or "v4.channel.k8s.io" not in offered or not ports:
        body = b"the node simulator's kubelet serves websocket port-forwards (v4.channel.k8s.io) only"
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        await writer.drain()
        writer.close()
        return
    accept = base64.b64encode(hashlib.sha1((hdrs["sec-websocket-key"] + WS_GUID).encode()).digest()).decode()
    writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: v4.channel.k8s.io\r\n\r\n" % accept).encode())
    await writer.drain()
    await portforward(reader, writer, parts[1], parts[2], ports)


def start_kubelet():
    """The HTTPS port-forward endpoint on the node's address, with a
    self-signed certificate (the API server has no kubelet CA, so it does
    not verify it, as with a cluster started without one)."""
    d = tempfile.mkdtemp(prefix="node-sim-")
    crt, key = os.path.join(d, "kubelet.crt"), os.path.join(d, "kubelet.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                    "-subj", "/CN=" + NODE, "-addext", "subjectAltName=IP:" + HOST,
                    "-keyout", key, "-out", crt], check=True, capture_output=True)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(crt, key)
    loop = asyncio.new_event_loop()
    srv = loop.run_until_complete(asyncio.start_server(kubelet_conn, HOST, 0, ssl=ctx))
    KUBELET["port"] = srv.sockets[0].getsockname()[1]
    threading.Thread(target=loop.run_forever, daemon=True).start()


def summary(status):
    """What decides whether a pod's status needs writing."""
    if not status:
        return None
    ready = [(c.get("status"), c.get("message")) for c in status.get("conditions", []) if c.get("type") == "Ready"]
    waits = [list(s.get("state", {}).keys()) + [s.get("ready"), s.get("restartCount")]
             for s in status.get("containerStatuses", [])]
    return (status.get("phase"), tuple(ready), json.dumps(waits), status.get("podIP"))


def ingress_class(ing):
    """spec.ingressClassName, or the older annotation GKE still reads."""
    return ((ing.get("spec") or {}).get("ingressClassName")
            or (ing["metadata"].get("annotations") or {}).get("kubernetes.io/ingress.class") or "")


SERVES = "local-cloud/serves"


def serves(pods, nodes, ing):
    """Whether something serves this Ingress: for class `gce`, GKE's own
    controller (on by default), so where its namespace's pods run on GKE
    nodes; for another class, a running controller pod that takes
    `--ingress-class=CLASS`. The local Kubernetes is shared by every stack
    under test, each standing for a cluster of its own: a stand-in
    controller labelled `local-cloud/serves: STACK-ENVIRONMENT` serves only
    that stack's Ingresses (a real controller, unlabelled, serves all)."""
    meta = ing["metadata"]
    cls = ingress_class(ing)
    if cls == "gce":
        gke = {n["metadata"]["name"] for n in nodes
               if "cloud.google.com/gke-nodepool" in (n["metadata"].get("labels") or {})}
        return any(p["metadata"]["namespace"] == meta["namespace"] and p["spec"].get("nodeName") in gke
                   for p in pods)
    labels = meta.get("labels") or {}
    owner = "%s-%s" % (labels.get("ralph-deploy.io/stack"), labels.get("ralph-deploy.io/environment"))
    for p in pods:
        if (p.get("status") or {}).get("phase") != "Running" or p["metadata"].get("deletionTimestamp"):
            continue
        scope = (p["metadata"].get("labels") or {}).get(SERVES)
        if scope is not None and scope != owner:
            continue
        for c in p["spec"].get("containers", []):
            if "--ingress-class=" + cls in (c.get("args") or []) + (c.get("command") or []):
                return True
    return False


def running(p):
    return (p.get("status") or {}).get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")


def alb_answer(call, pods, nodes, ing):
    """The AWS Load Balancer Controller, for an Ingress of class `alb`:
    ([{"hostname"}], None) when a running controller pod of the cluster the
    Ingress's pods run in (its --cluster-name; the one local Kubernetes
    stands for every cluster, so where the controller's own pod runs is
    not asked) could build the load balancer, as the local AWS decides from its IRSA
    role and ACM (/moto-api/elbv2/serve); ([], reason) when it could not;
    ([], None) when no controller serves the class there."""
    meta = ing["metadata"]
    by_name = {n["metadata"]["name"]: n for n in nodes}

    def cluster_of(pod):
        n = by_name.get(pod["spec"].get("nodeName") or "")
        if n is None:
            return None
        cluster = (n["metadata"].get("labels") or {}).get(EKS_CLUSTER)
        source = (n["metadata"].get("annotations") or {}).get(SOURCE) or ""
        return (cluster, source.split(" ", 1)[-1]) if cluster and source.startswith("aws ") else None

    backends = {cluster_of(p) for p in pods if p["metadata"]["namespace"] == meta["namespace"] and running(p)}
    backends.discard(None)
    endpoints = dict(backends)
    for p in pods:
        if not running(p):
            continue
        for c in p["spec"].get("containers") or []:
            repo = c.get("image", "").split("@")[0].rsplit(":", 1)[0]
            if repo.rsplit("/", 1)[-1] != "aws-load-balancer-controller":
                continue
            args = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
            flag = lambda k, d="": next((a.split("=", 1)[1] for a in args if a.startswith(k + "=")), d)
            if flag("--ingress-class", "alb") != "alb" or flag("--cluster-name") not in endpoints:
                continue
            where = (flag("--cluster-name"), endpoints[flag("--cluster-name")])
            ns, sa = p["metadata"]["namespace"], p["spec"].get("serviceAccountName") or "default"
            try:
                account = call("GET", "/api/v1/namespaces/%s/serviceaccounts/%s" % (ns, sa))
                role = ((account.get("metadata") or {}).get("annotations") or {}).get("eks.amazonaws.com/role-arn", "")
            except urllib.error.HTTPError:
                role = ""
            notes = meta.get("annotations") or {}
            answer = post_json(where[1] + "/moto-api/elbv2/serve", {
                "cluster": where[0], "role_arn": role, "service_account": "%s/%s" % (ns, sa),
                "namespace": meta["namespace"], "name": meta["name"],
                "hosts": [r.get("host") for r in (ing.get("spec") or {}).get("rules") or []],
                "certificate_arn": (notes.get("alb.ingress.kubernetes.io/certificate-arn") or "").split(",")[0].strip(),
                "waf_acl_arn": notes.get("alb.ingress.kubernetes.io/wafv2-acl-arn") or ""})
            if answer.get("served"):
                return [{"hostname": answer["hostname"]}], None
            return [], answer.get("reason") or "the controller's call failed"
    return [], None


EDGE_REASONS = {}  # (namespace, name) -> the last refusal an Ingress's event said


def edge_event(call, ing, reason):
    """The controller's Warning event on the Ingress, once per new reason."""
    meta = ing["metadata"]
    key = (meta["namespace"], meta["name"])
    if EDGE_REASONS.get(key) == reason:
        return
    EDGE_REASONS[key] = reason
    if reason is None:
        return
    print("node simulator (load balancer controller): %s/%s: %s" % (key + (reason,)), file=sys.stderr, flush=True)
    # The controller's own wording: a reason, and "Failed ... due to" the
    # AWS error.
    word, _, rest = reason.partition(": ")
    if word == "Sync":
        message = rest  # GKE's controller's wording
    else:
        if word not in ("FailedDeployModel", "FailedBuildModel"):
            word, rest = "FailedDeployModel", reason
        message = ("Failed build model due to " if word == "FailedBuildModel" else "Failed deploy model due to ") + rest
    try:
        call("POST", "/api/v1/namespaces/%s/events" % meta["namespace"], {
            "apiVersion": "v1", "kind": "Event", "metadata": {"generateName": meta["name"] + "."},
            "involvedObject": {"kind": "Ingress", "apiVersion": "networking.k8s.io/v1",
                               "namespace": meta["namespace"], "name": meta["name"], "uid": meta.get("uid")},
            "reason": word, "message": message, "type": "Warning",
            "source": {"component": "loadbalancer-controller" if word == "Sync" else "ingress"}, "firstTimestamp": now(), "lastTimestamp": now(), "count": 1})
    except Exception as e:
        print("node simulator: event: %s" % e, file=sys.stderr, flush=True)


ARMOR = {}  # (namespace, Ingress) -> {(project, policy, backend service), ...} GKE's controller attached
ARMOR_SEEN = {}  # (namespace, Ingress) -> (when, what was asked, the answer): asked again after ARMOR_TTL
ARMOR_TTL = 5.0


def gce_backends(call, pods, nodes, ing):
    """GKE's controller's backend pass for an Ingress it serves: each
    backend Service's BackendConfig (the `cloud.google.com/backend-config`
    annotation) read, and its Cloud Armor policy set on the backend service
    in the project of the nodes the pods run on. (None, {attached}) when it
    could; (reason, {}) when it could not: a BackendConfig that does not
    exist, or a policy the project does not have."""
    meta = ing["metadata"]
    ns = meta["namespace"]
    projects = {(n["metadata"].get("labels") or {}).get(GKE_PROJECT) for n in nodes
                if any(p["spec"].get("nodeName") == n["metadata"]["name"] and p["metadata"]["namespace"] == ns
                       for p in pods)}
    projects.discard(None)
    spec = ing.get("spec") or {}
    services = [(spec.get("defaultBackend") or {}).get("service")] + [
        (path.get("backend") or {}).get("service") for rule in spec.get("rules") or []
        for path in (rule.get("http") or {}).get("paths") or []]
    wanted = []
    for svc in [s for s in services if s]:
        try:
            service = call("GET", "/api/v1/namespaces/%s/services/%s" % (ns, svc["name"]))
        except urllib.error.HTTPError:
            continue
        notes = service["metadata"].get("annotations") or {}
        raw = notes.get("cloud.google.com/backend-config") or notes.get("beta.cloud.google.com/backend-config")
        if not raw:
            continue
        try:
            ref = json.loads(raw)
        except ValueError:
            return "Sync: Error syncing to GCP: invalid backend-config annotation %r on Service %s/%s" % (raw, ns, svc["name"]), set()
        port = (svc.get("port") or {}).get("name") or str((svc.get("port") or {}).get("number"))
        config = (ref.get("ports") or {}).get(port) or ref.get("default")
        if not config:
            continue
        try:
            bc = call("GET", "/apis/cloud.google.com/v1/namespaces/%s/backendconfigs/%s" % (ns, config))
        except urllib.error.HTTPError:
            return "Sync: Translation failed: invalid ingress spec: error getting BackendConfig for port %s on service \"%s/%s\": no BackendConfig for service port exists" % (port, ns, svc["name"]), set()
        policy = (((bc.get("spec") or {}).get("securityPolicy")) or {}).get("name")
        if policy:
            backend = "k8s1-%s-%s-%s-%s" % (hashlib.sha256(ns.encode()).hexdigest()[:8], ns[:16], svc["name"][:16], port)
            wanted += [(project, policy, backend) for project in sorted(projects)]
    for project, policy, backend in wanted:
        answer = post_gcp("/__double/armor/attach", {"project": project, "policy": policy, "backend": backend,
                                                     "attach": True})
        if not answer.get("attached"):
            return ("Sync: Error syncing to GCP: error running backend syncing routine: googleapi: Error 404: %s, notFound"
                    % answer.get("reason", "the policy cannot be set")), set()
    return None, set(wanted)


def armor_release(key, keep):
    """Clears the security policies an Ingress's backend services no longer
    use (their BackendConfig changed, or the Ingress is gone: GKE deletes
    its backend services)."""
    for project, policy, backend in ARMOR.get(key, set()) - keep:
        post_gcp("/__double/armor/attach", {"project": project, "policy": policy, "backend": backend, "attach": False})
    if keep:
        ARMOR[key] = keep
    else:
        ARMOR.pop(key, None)


def serve_ingresses(call, pods, nodes, ingresses):
    """Play the Ingress controllers: an address for each Ingress something
    serves (none otherwise), and GKE's ManagedCertificates Active once
    their Ingress has one."""
    merge = "application/merge-patch+json"
    present = {(i["metadata"]["namespace"], i["metadata"]["name"]) for i in ingresses}
    for key in [k for k in ARMOR if k not in present]:
        armor_release(key, set())
        ARMOR_SEEN.pop(key, None)
    for ing in ingresses:
        meta = ing["metadata"]
        ns, name = meta["namespace"], meta["name"]
        cls = ingress_class(ing)
        if cls == "alb":
            want, reason = alb_answer(call, pods, nodes, ing)
            edge_event(call, ing, reason)
        else:
            want = [{"ip": "127.0.0.1"}] if serves(pods, nodes, ing) else []
        if cls == "gce" and want and os.environ.get("RALPH_SIM_GCP_PORT_FILE"):
            # The backend pass, asked again every ARMOR_TTL seconds (or at
            # once when the Ingress changed).
            last = ARMOR_SEEN.get((ns, name))
            if last and last[1] == meta.get("resourceVersion") and time.time() - last[0] < ARMOR_TTL:
                reason, attached = last[2]
            else:
                reason, attached = gce_backends(call, pods, nodes, ing)
                ARMOR_SEEN[(ns, name)] = (time.time(), meta.get("resourceVersion"), (reason, attached))
            armor_release((ns, name), attached)
            edge_event(call, ing, reason)
            if reason:
                want = []
        have = ((ing.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        if have != want:
            call("PATCH", "/apis/networking.k8s.io/v1/namespaces/%s/ingresses/%s/status" % (ns, name),
                 {"status": {"loadBalancer": {"ingress": want or None}}}, merge)
        if cls != "gce":
            continue
        names = (meta.get("annotations") or {}).get("networking.gke.io/managed-certificates") or ""
        for cert in [c.strip() for c in names.split(",") if c.strip()]:
            path = "/apis/networking.gke.io/v1/namespaces/%s/managedcertificates/%s" % (ns, cert)
            try:
                mc = call("GET", path)
            except urllib.error.HTTPError:
                continue  # not made yet, or no GKE CRDs
            status = "Active" if want else "Provisioning"
            if (mc.get("status") or {}).get("certificateStatus") == status:
                continue
            call("PATCH", path + "/status", {"status": {
                "certificateName": "mcrt-" + cert, "certificateStatus": status,
                "domainStatus": [{"domain": d, "status": status} for d in mc["spec"].get("domains", [])]}}, merge)


class Informer:
    """One kind's objects across the cluster, kept as the API server has them
    by a list and then a watch, as a kubelet's informer keeps them: a round
    reads memory instead of listing and decoding every pod five times a
    second (which cost this process and the API server more than all the
    rest of the suite's use of them)."""

    def __init__(self, server, ctx, headers, path):
        self.target = urllib.parse.urlsplit(server)
        self.ctx, self.headers, self.path = ctx, headers, path
        self.items = {}
        # How many changes have been seen: a controller reconciles when
        # this moves, not only on its resync period.
        self.changes = 0
        self.lock = threading.Lock()
        self.synced = threading.Event()
        threading.Thread(target=self.run, daemon=True).start()

    def snapshot(self):
        self.synced.wait()
        with self.lock:
            return list(self.items.values())

    def get(self, namespace, name):
        self.synced.wait()
        with self.lock:
            return self.items.get((namespace, name))

    @staticmethod
    def key(obj):
        return (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])

    def request(self, conn, query):
        conn.request("GET", self.path + query, headers=self.headers)
        r = conn.getresponse()
        if r.status >= 400:
            raise RuntimeError("%s%s: %s %s" % (self.path, query, r.status, r.read()[:200]))
        return r

    def run(self):
        while True:
            conn = http.client.HTTPSConnection(self.target.hostname, self.target.port, context=self.ctx, timeout=330)
            try:
                listed = json.loads(self.request(conn, "?resourceVersion=0").read())
                with self.lock:
                    self.items = {self.key(o): o for o in listed.get("items") or []}
                    self.changes += 1
                self.synced.set()
                # The server ends a watch after timeoutSeconds (or with an
                # ERROR event when its resourceVersion is too old): list again.
                r = self.request(conn, "?watch=1&allowWatchBookmarks=true&timeoutSeconds=300&resourceVersion="
                                 + listed["metadata"]["resourceVersion"])
                while True:
                    line = r.readline()
                    if not line:
                        break
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        break
                    if kind not in ("ADDED", "MODIFIED", "DELETED"):
                        continue
                    with self.lock:
                        if kind == "DELETED":
                            self.items.pop(self.key(obj), None)
                        else:
                            self.items[self.key(obj)] = obj
                        self.changes += 1
            except Exception as e:  # the API server restarts
                print("node simulator (watch %s): %s" % (self.path, e), file=sys.stderr, flush=True)
                time.sleep(0.5)
            finally:
                conn.close()


def main():
    server, token = read_kubeconfig(sys.argv[1])
    SEEN["get"] = lambda path: call("GET", path)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    headers = {"Authorization": "Bearer " + token}

    target = urllib.parse.urlsplit(server)
    local = threading.local()

    def call(method, path, body=None, content_type="application/json", accept=None):
        """One request to the API server on this thread's kept-alive
        connection (a new TLS handshake per request cost the API server and
        this process more than the requests themselves); an HTTPError for
        an answer of 400 or more, as urllib gives."""
        data = None if body is None else json.dumps(body).encode()
        h = dict(headers)
        if data is not None:
            h["Content-Type"] = content_type
        if accept:
            h["Accept"] = accept
        for attempt in (0, 1):
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = http.client.HTTPSConnection(target.hostname, target.port, context=ctx, timeout=10)
                local.conn = conn
            try:
                conn.request(method, path, body=data, headers=h)
                r = conn.getresponse()
                raw = r.read()
            except (http.client.HTTPException, OSError):
                # The server closed an idle connection (or restarted): once
                # more on a new one.
                conn.close()
                local.conn = None
                if attempt:
                    raise
                continue
            if r.status >= 400:
                raise urllib.error.HTTPError(server + path, r.status, r.reason, r.headers, io.BytesIO(raw))
            return json.loads(raw or b"{}")

    pods_seen = Informer(server, ctx, headers, "/api/v1/pods")
    secrets_seen = Informer(server, ctx, headers, "/api/v1/secrets")
    configmaps_seen = Informer(server, ctx, headers, "/api/v1/configmaps")
    nodes_seen = Informer(server, ctx, headers, "/api/v1/nodes")
    policies_seen = Informer(server, ctx, headers, "/apis/networking.k8s.io/v1/networkpolicies")
    ingresses_seen = Informer(server, ctx, headers, "/apis/networking.k8s.io/v1/ingresses")

    def reader(informer, decode):
        """A getter of one kind's data (Secrets, ConfigMaps) by namespace and
        name, from its informer; None when it is missing."""
        def get(namespace, name):
            obj = informer.get(namespace, name)
            if obj is None:
                return None
            return {k: decode(v) for k, v in (obj.get("data") or {}).items()}
        return get

    secret = reader(secrets_seen, lambda v: base64.b64decode(v).decode("utf-8", "replace"))
    configmap = reader(configmaps_seen, lambda v: v)

    global RUNNER, HOST
    RUNNER = pod_runner.Runner(os.environ.get("RALPH_SIM_RUN_DIR") or tempfile.mkdtemp(), call)
    if RUNNER.enabled:
        # The nodes' address is the first of this cloud's block: the
        # simulated pods' ports (8080, 9090, ...) and the kubelet's are this
        # cloud's own, as on separate machines, so two local clouds on one
        # machine (the tests' and the walkthrough's) do not take each
        # other's ports.
        HOST = RUNNER.dns_address
    start_kubelet()
    threading.Thread(target=keep_nodes, args=(call,), daemon=True).start()
    rounds = 0
    ingress_changes = -1
    while True:
        try:
            pods = pods_seen.snapshot()
            policies = policies_seen.snapshot()
            # Swapped whole: the port-forward thread reads them meanwhile.
            SEEN["pods"] = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
            SEEN["policies"] = policies
            RUNNER.reap({p["metadata"]["uid"] for p in pods
                         if p["spec"].get("nodeName") and not p["metadata"].get("deletionTimestamp")})
            for pod in pods:
                meta = pod["metadata"]
                if meta.get("deletionTimestamp"):
                    # A kubelet confirms a bound pod's end; without it the
                    # pod (and its namespace) would stay Terminating.
                    if pod["spec"].get("nodeName"):
                        try:
                            call("DELETE", "/api/v1/namespaces/%s/pods/%s" % (meta["namespace"], meta["name"]),
                                 {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0})
                        except urllib.error.HTTPError as e:
                            if e.code != 404:
                                raise
                    continue
                if not pod["spec"].get("nodeName"):
                    continue  # the scheduler has not placed it (its PodScheduled condition says why)
                runs = RUNNER.program(pod)
                if runs and fate(runs[0].get("image", "")) != "unpullable":
                    RUNNER.start(pod, runs[0], runs[1], secret, configmap)
                want = desired_status(pod, secret, policies, configmap)
                if want["phase"] == "Running":
                    for c in pod["spec"].get("containers", []):
                        for p in c.get("ports", []):
                            if p.get("name") in ("http", "metrics"):
                                serve(p["containerPort"], p.get("name") == "metrics")
                if summary(pod.get("status")) == summary(want):
                    continue
                call("PATCH", "/api/v1/namespaces/%s/pods/%s/status" % (meta["namespace"], meta["name"]),
                     {"status": want}, "application/merge-patch+json")
            rounds += 1
            # The Ingress controllers: at once when an Ingress changed (a
            # round can take seconds with many pods, and an Ingress that
            # names a pending certificate must be refused before ACM issues
            # it), else every fifth round for what they read elsewhere
            # (pods, certificates, roles).
            seen = ingresses_seen.changes
            if rounds % 5 == 0 or seen != ingress_changes:
                ingress_changes = seen
                serve_ingresses(call, pods, nodes_seen.snapshot(), ingresses_seen.snapshot())
        except Exception as e:  # the API server restarts, a pod went away
            print("node simulator: %s" % e, file=sys.stderr, flush=True)
        time.sleep(0.2)


if __name__ == "__main__":
    main()
