"""A test double of the Google Cloud REST APIs ralph-deploy calls.

No emulator covers Compute networking, GKE, Cloud SQL Admin, Memorystore and
Secret Manager together, so this serves exactly the routes the tool's
google-cloud-rust clients call, on one loopback port:

- Compute (networks, subnetworks, firewalls, routers, global addresses,
  Cloud Armor security policies and their rules, global and region
  operations), under /compute/v1/;
- GKE (clusters, node pools, operations), Memorystore Redis (instances,
  operations, AUTH string) and Secret Manager (secrets, versions), under
  /v1/projects/{project}/...;
- Cloud SQL Admin (instances, read replicas and their promotion, databases,
  users, on-demand backups, operations), and Cloud Monitoring's time series
  for a replica's lag;
- IAM service accounts and their policies, and the project's IAM policy
  (Resource Manager v3);
- Cloud Logging log buckets and project sinks (v2), with each project's
  `_Default` and `_Required` ones;
- Cloud Storage buckets and objects (JSON API v1: media uploads, `alt=media`
  downloads, compose), refusing what Google refuses (a bucket name taken by
  anyone, a non-empty bucket's delete, an object held by the retention
  policy, a compose of more than 32).

Behaviour kept from the real services: long-running operations stay
PENDING/RUNNING for a configurable time and resources pass through their
states (PROVISIONING, RECONCILING, PENDING_CREATE, RUNNABLE, CREATING,
UPDATING, READY, ...); a GKE cluster refuses a second operation while one
runs; list calls take label (or description) filters and are paged; errors
come in Google's JSON error format (409 ALREADY_EXISTS, 404 NOT_FOUND, 429
RESOURCE_EXHAUSTED, 400 INVALID_ARGUMENT with field violations, and Compute's
and Cloud SQL's `errors[]` list). Secret values are kept in memory only.

ROUTES below names each route by its Discovery method id; the conformance
test (tests/gcp_conformance.rs) checks every route against Google's
Discovery documents, and every request body the tool sent (logged to
RALPH_GCP_REQUEST_LOG, bodies only, secret payloads masked) against the
method's request schema.

    python gcp_double.py HOST PORT

Delays, in seconds, come from RALPH_GCP_DELAYS (JSON overriding DEFAULTS);
RALPH_GCP_DELAY_SCALE multiplies them; RALPH_GCP_MAX_PAGE caps page sizes.
Control: POST /__double/faults {"throttle": N, "error": N} makes the next N
mutating requests answer 429 (or 503); POST /__double/project {"project",
"delay_scale", "kill_after": K, "pidfile", "throttle": N, "error": N,
"fresh": true} scales
one project's delays, SIGKILLs the process in PIDFILE right after answering
that project's K-th mutating request, and throttles (or fails) its next N;
`fresh` makes it a new project whose APIs are disabled (403 SERVICE_DISABLED)
until Service Usage enables them; GET /__double/stats[?project=P] counts requests;
POST /__double/sql/lag {"database_id": "P:I", "seconds": N} is how far a Cloud
SQL replica lags (Cloud Monitoring's replica_lag; 0 otherwise).
"""
import base64
import ipaddress
import json
import os
import re
import signal
import sys
import threading
import time
import uuid

import local_servers
import store_support
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit, unquote

DEFAULTS = {
    "compute": 0.3, "gke_cluster_create": 4.0, "gke_cluster_update": 1.0, "gke_cluster_delete": 2.0,
    "gke_pool_create": 3.0, "gke_pool_update": 1.0, "gke_pool_delete": 1.5,
    "sql_create": 4.0, "sql_replica_create": 3.0, "sql_update": 1.0, "sql_delete": 1.5, "sql_child": 0.3,
    "redis_create": 3.0, "sn_connect": 1.0, "redis_update": 1.0, "redis_delete": 1.5,
}
DELAYS = dict(DEFAULTS)
DELAYS.update(json.loads(os.environ.get("RALPH_GCP_DELAYS", "{}") or "{}"))
SCALE = float(os.environ.get("RALPH_GCP_DELAY_SCALE", "1"))
MAX_PAGE = int(os.environ.get("RALPH_GCP_MAX_PAGE", "500"))
REQUEST_LOG = os.environ.get("RALPH_GCP_REQUEST_LOG", "")
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")

LOCK = threading.RLock()
STORE = {}       # collection path -> {name: resource}
SECRETS = {}     # secret path -> [payload bytes, ...] (versions 1..n)
OPS = {}         # operation name -> op record
PENDING = []     # (when, fn) finishing work, run by tick()
FAULTS = {"throttle": 0, "error": 0}
STATS = {"requests": 0, "mutations": 0, "lists": 0, "gets": 0}
BY_PROJECT = {}  # project -> the same counts, for one test's (or run's) share


CURRENT = {"project": None, "route": None}   # the request being answered
PROJECT_SCALE = {}            # project -> delay scale (kill tests run fast)
KILLS = {}                    # project -> {"after": k, "seen": n, "pidfile": path}
PROJECT_FAULTS = {}           # project -> {"throttle": n, "error": n}


def delay(key):
    return DELAYS.get(key, 0.0) * PROJECT_SCALE.get(CURRENT["project"], SCALE)


def now_rfc3339(t=None):
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


def parse_rfc3339(text):
    """Seconds since the epoch of an RFC 3339 time (Z or an offset); a
    400 when it is not one."""
    import datetime
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise invalid([("interval", f"{text!r} is not an RFC 3339 time")])


def later(seconds, fn):
    PENDING.append((time.time() + seconds, fn))


def tick():
    """Runs the finishing work that is due (operations complete lazily)."""
    t = time.time()
    due = [p for p in PENDING if p[0] <= t]
    for p in due:
        PENDING.remove(p)
    for _, fn in sorted(due, key=lambda p: p[0]):
        fn()


def coll(path):
    return STORE.setdefault(path, {})


class ApiError(Exception):
    def __init__(self, code, status, message, reason=None, violations=None, legacy=False):
        super().__init__(message)
        self.code, self.status, self.message = code, status, message
        self.reason, self.violations, self.legacy = reason, violations or [], legacy

    def body(self):
        err = {"code": self.code, "message": self.message, "status": self.status}
        if self.violations:
            err["details"] = [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                               "fieldViolations": [{"field": f, "description": d} for f, d in self.violations]}]
        if self.legacy:  # Compute and Cloud SQL also answer with errors[]
            err["errors"] = [{"domain": "global", "reason": self.reason or self.status.lower(),
                              "message": self.message}]
        return {"error": err}


def not_found(what, legacy=False):
    return ApiError(404, "NOT_FOUND", f"The resource '{what}' was not found", "notFound", legacy=legacy)


def exists(what, legacy=False):
    return ApiError(409, "ALREADY_EXISTS", f"The resource '{what}' already exists", "alreadyExists", legacy=legacy)


def invalid(violations, legacy=False):
    msg = "; ".join(f"Invalid value for field '{f}': {d}" for f, d in violations)
    return ApiError(400, "INVALID_ARGUMENT", msg, "invalid", violations, legacy)


def precondition(message, legacy=False):
    return ApiError(400, "FAILED_PRECONDITION", message, "failedPrecondition", legacy=legacy)


# ---------------------------------------------------------------- filters

def label_value(res, key):
    for labels in (res.get("labels"), res.get("resourceLabels"), (res.get("settings") or {}).get("userLabels")):
        if isinstance(labels, dict) and key in labels:
            return labels[key]
    return None


# What Python's re takes and RE2 (Compute's filter syntax) refuses:
# lookaround, back references, atomic groups and possessive quantifiers.
NOT_RE2 = re.compile(r"\(\?[=!>]|\(\?<[=!]|\\[1-9]|\(\?P=|[*+?}][+]")


def re2(pattern):
    """The pattern, if RE2 would compile it; else Compute's 400."""
    bad = NOT_RE2.search(pattern)
    if bad:
        raise invalid([("filter", "Invalid value for field 'filter': the regular expression %r uses %r, "
                                  "which RE2 does not support" % (pattern, bad.group(0)))])
    try:
        re.compile(pattern)
    except re.error as e:
        raise invalid([("filter", "Invalid value for field 'filter': %s" % e)])
    return pattern


def matches(res, expr):
    """The filter forms the tool uses: `labels.K=V` / `labels.K:V` terms
    joined by AND or spaces (Secret Manager, Cloud SQL's
    `settings.userLabels.K:V`), and Compute's `FIELD eq "RE2"`."""
    if not expr:
        return True
    m = re.fullmatch(r'\s*(\w+)\s+eq\s+"(.*)"\s*', expr)
    if m:
        return re.fullmatch(re2(m.group(2)), str(res.get(m.group(1), ""))) is not None
    for term in re.split(r"\s+AND\s+|\s+", expr.strip()):
        if not term:
            continue
        t = re.fullmatch(r'(?:labels|settings\.userLabels|resourceLabels)\.([\w-]+)\s*[:=]\s*"?([^"]*)"?', term)
        if not t:
            raise invalid([("filter", f"unsupported filter term {term!r}")])
        if label_value(res, t.group(1)) != t.group(2):
            return False
    return True


def page(items, query, size_param, default):
    size = int((query.get(size_param) or [default])[0] or default)
    size = max(1, min(size, MAX_PAGE))
    start = int((query.get("pageToken") or ["0"])[0] or 0)
    chunk = items[start:start + size]
    token = str(start + size) if start + size < len(items) else None
    return chunk, token


# ---------------------------------------------------------------- Compute

COMPUTE = "https://compute.googleapis.com/compute/v1/"
COMPUTE_KINDS = {"networks": "network", "subnetworks": "subnetwork", "firewalls": "firewall",
                 "routers": "router", "addresses": "address", "securityPolicies": "securityPolicy"}


def compute_op(project, region, target, op_type, seconds, finish):
    name = "operation-%d-%s" % (int(time.time() * 1000), uuid.uuid4().hex[:12])
    scope = f"projects/{project}/regions/{region}" if region else f"projects/{project}/global"
    rec = {"kind": "compute#operation", "id": str(uuid.uuid4().int % 10**18), "name": name,
           "operationType": op_type, "targetLink": target, "status": "RUNNING", "progress": 0,
           "insertTime": now_rfc3339(), "startTime": now_rfc3339(),
           "selfLink": f"{COMPUTE}{scope}/operations/{name}", "user": "ralph-deploy@local"}
    if region:
        rec["region"] = f"{COMPUTE}projects/{project}/regions/{region}"
    OPS[name] = {"style": "compute", "rec": rec}

    def done():
        failure = finish()
        rec.update(status="DONE", progress=100, endTime=now_rfc3339())
        if failure:
            rec["error"] = {"errors": [{"code": failure[0], "message": failure[1]}]}
    if seconds <= 0:
        done()
    else:
        later(seconds, done)
    return dict(rec)


def compute_scope(p):
    return (f"projects/{p['project']}/regions/{p['region']}" if "region" in p
            else f"projects/{p['project']}/global")


def link_name(link):
    return link.rstrip("/").rsplit("/", 1)[-1] if link else ""


def check_compute_body(collection, body, p):
    v = []
    name = body.get("name", "")
    if not NAME_RE.match(name or ""):
        v.append(("resource.name", "must match [a-z]([-a-z0-9]{0,61}[a-z0-9])?"))
    if collection in ("subnetworks", "firewalls", "routers") or (collection == "addresses" and body.get("network")):
        net = link_name(body.get("network", ""))
        if not net:
            v.append(("resource.network", "is required"))
        elif net not in coll(f"compute/projects/{p['project']}/global/networks"):
            raise ApiError(404, "NOT_FOUND", f"The resource 'projects/{p['project']}/global/networks/{net}' was not found",
                           "notFound", legacy=True)
    if collection == "subnetworks":
        for field, cidr in [("resource.ipCidrRange", body.get("ipCidrRange"))] + [
                (f"resource.secondaryIpRanges[{i}].ipCidrRange", r.get("ipCidrRange"))
                for i, r in enumerate(body.get("secondaryIpRanges") or [])]:
            try:
                ipaddress.ip_network(cidr or "")
            except ValueError:
                v.append((field, f"{cidr!r} is not a CIDR range"))
    if collection == "firewalls" and not (body.get("allowed") or body.get("denied")):
        v.append(("resource.allowed", "a firewall needs allowed or denied rules"))
    if v:
        raise invalid(v, legacy=True)


def compute_insert(collection):
    def h(p, q, body):
        check_compute_body(collection, body, p)
        scope = compute_scope(p)
        c = coll(f"compute/{scope}/{collection}")
        link = f"{COMPUTE}{scope}/{collection}/{body['name']}"
        if body["name"] in c or any(o["style"] == "compute" and o["rec"]["targetLink"] == link
                                    and o["rec"]["status"] != "DONE" and o["rec"]["operationType"] == "insert"
                                    for o in OPS.values()):
            raise exists(f"{scope}/{collection}/{body['name']}", legacy=True)
        res = dict(body)
        res.update(kind="compute#" + COMPUTE_KINDS[collection], id=str(uuid.uuid4().int % 10**18),
                   creationTimestamp=now_rfc3339(), selfLink=link)
        if "region" in p:
            res["region"] = f"{COMPUTE}projects/{p['project']}/regions/{p['region']}"
        if collection == "networks":
            res.setdefault("routingConfig", {"routingMode": "REGIONAL"})
            res.setdefault("autoCreateSubnetworks", False)
            res.setdefault("mtu", 1460)
        if collection == "subnetworks":
            net = ipaddress.ip_network(body["ipCidrRange"])
            res["gatewayAddress"] = str(net.network_address + 1)
            res["fingerprint"] = base64.urlsafe_b64encode(os.urandom(8)).decode()
        if collection == "addresses" and body.get("purpose") == "VPC_PEERING":
            res.setdefault("address", "10.%d.0.0" % (len(c) + 100))
            res["status"] = "RESERVED"

        def finish():
            c[body["name"]] = res
        return compute_op(p["project"], p.get("region"), link, "insert", delay("compute"), finish)
    return h


def compute_get(collection, key):
    def h(p, q, body):
        res = coll(f"compute/{compute_scope(p)}/{collection}").get(p[key])
        if res is None:
            raise not_found(f"{compute_scope(p)}/{collection}/{p[key]}", legacy=True)
        return res
    return h


def compute_list(collection):
    def h(p, q, body):
        items = [r for r in coll(f"compute/{compute_scope(p)}/{collection}").values()
                 if matches(r, (q.get("filter") or [""])[0])]
        chunk, token = page(items, q, "maxResults", 500)
        out = {"kind": "compute#%sList" % COMPUTE_KINDS[collection], "items": chunk}
        if collection != "securityPolicies":  # SecurityPolicyList has no selfLink
            out["selfLink"] = f"{COMPUTE}{compute_scope(p)}/{collection}"
        if token:
            out["nextPageToken"] = token
        return out
    return h


def compute_patch(collection, key):
    def h(p, q, body):
        c = coll(f"compute/{compute_scope(p)}/{collection}")
        res = c.get(p[key])
        if res is None:
            raise not_found(f"{compute_scope(p)}/{collection}/{p[key]}", legacy=True)
        if collection == "subnetworks" and body.get("fingerprint") not in (None, res.get("fingerprint")):
            raise precondition("Supplied fingerprint does not match current resource fingerprint.", legacy=True)
        for k in ("name", "network", "ipCidrRange"):
            if k in body and body[k] not in (res.get(k),) and not (k == "network" and link_name(body[k]) == link_name(res.get(k))):
                raise invalid([(f"resource.{k}", "cannot be changed")], legacy=True)

        def finish():
            res.update({k: v for k, v in body.items() if k not in ("fingerprint", "kind", "id", "selfLink")})
            if collection == "subnetworks":
                res["fingerprint"] = base64.urlsafe_b64encode(os.urandom(8)).decode()
        return compute_op(p["project"], p.get("region"), res["selfLink"], "patch", delay("compute"), finish)
    return h


def compute_delete(collection, key):
    def h(p, q, body):
        scope = compute_scope(p)
        c = coll(f"compute/{scope}/{collection}")
        res = c.get(p[key])
        if res is None:
            raise not_found(f"{scope}/{collection}/{p[key]}", legacy=True)
        if collection == "subnetworks":
            # Google refuses while instances sit in it: a GKE cluster's nodes
            # (until the cluster is gone, a deleting one too).
            users = [c["name"] for path, items in STORE.items()
                     if path.startswith(f"gke/projects/{p['project']}/locations/") and path.endswith("/clusters")
                     for c in items.values()
                     if link_name(c.get("subnetwork") or "") == p[key]
                     and path.split("/")[4].startswith(p.get("region", ""))]
            if users:
                raise ApiError(400, "FAILED_PRECONDITION",
                               f"The subnetwork resource '{scope}/subnetworks/{p[key]}' is already being used by "
                               f"'projects/{p['project']}/zones/{p.get('region', '')}-a/instances/gke-{users[0]}-node'",
                               "resourceInUseByAnotherResource", legacy=True)
        if collection == "networks":
            users = [r["name"] for path, items in STORE.items() if path.startswith(f"compute/projects/{p['project']}/")
                     and not path.endswith("/networks") for r in items.values()
                     if link_name(r.get("network", "")) == p[key]]
            if users:
                raise ApiError(400, "FAILED_PRECONDITION",
                               f"The network resource '{scope}/networks/{p[key]}' is already being used by '{users[0]}'",
                               "resourceInUseByAnotherResource", legacy=True)

        def finish():
            c.pop(p[key], None)
        return compute_op(p["project"], p.get("region"), res["selfLink"], "delete", delay("compute"), finish)
    return h


def compute_op_get(p, q, body):
    op = OPS.get(p["operation"])
    if op is None or op["style"] != "compute":
        raise not_found(f"operations/{p['operation']}", legacy=True)
    return op["rec"]


# ---------------------------------------------------------------- GKE

def gke_op(p, op_type, target, seconds, finish):
    name = "operation-%d-%s" % (int(time.time() * 1000), uuid.uuid4().hex[:8])
    base = f"projects/{p['project']}/locations/{p['location']}"
    rec = {"name": name, "operationType": op_type, "status": "RUNNING", "zone": p["location"],
           "location": p["location"], "startTime": now_rfc3339(),
           "selfLink": f"https://container.googleapis.com/v1/{base}/operations/{name}",
           "targetLink": f"https://container.googleapis.com/v1/{base}/{target}"}
    OPS[f"{base}/operations/{name}"] = {"style": "gke", "rec": rec}

    def done():
        finish()
        rec.update(status="DONE", endTime=now_rfc3339())
    later(seconds, done)
    return dict(rec)


SUPPORT_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "support", "kubernetes-versions.json")


def gke_offered():
    """GKE's minor versions offered today, oldest first, from the
    repository's dated support table (what ralph-deploy validates against)."""
    import datetime as dt
    with open(SUPPORT_TABLE) as f:
        table = json.load(f)["gke"]["versions"]
    today = dt.date.today().isoformat()
    ok = [v for v, w in table.items() if w["released"] <= today < w["end_of_support"]]
    return sorted(ok, key=lambda v: tuple(int(x) for x in v.split(".")))


def gke_patch_version(minor):
    return minor + ".5-gke.1000"


def gke_minor(version):
    parts = str(version).replace("-", ".").split(".")
    return ".".join(parts[:2])


def gke_version_or_refuse(version, field):
    """The full version GKE would run for `version` ("-" or empty: the
    default), or Google's 400 for a version no channel offers."""
    offered = gke_offered()
    if not version or version in ("-", "latest"):
        return gke_patch_version(offered[-1])
    if gke_minor(version) not in offered:
        raise ApiError(400, "INVALID_ARGUMENT", f'Master version "{version}" is unsupported.', "invalid",
                       [(field, f"unsupported version; valid minor versions: {', '.join(offered)}")])
    return version if version.count(".") >= 2 else gke_patch_version(version)


def gke_server_config(p, q, body):
    offered = gke_offered()
    full = [gke_patch_version(v) for v in reversed(offered)]
    channel = {"defaultVersion": full[0] if full else "", "validVersions": full}
    return {"defaultClusterVersion": full[0] if full else "", "validMasterVersions": full,
            "validNodeVersions": full, "defaultImageType": "COS_CONTAINERD",
            "validImageTypes": ["COS_CONTAINERD", "UBUNTU_CONTAINERD"],
            "channels": [dict(channel, channel=c) for c in ("RAPID", "REGULAR", "STABLE", "EXTENDED")]}


def gke_clusters(p):
    return coll(f"gke/projects/{p['project']}/locations/{p['location']}/clusters")


def gke_cluster(p):
    c = gke_clusters(p).get(p["cluster"])
    if c is None:
        raise not_found(f"projects/{p['project']}/locations/{p['location']}/clusters/{p['cluster']}")
    return c


def gke_busy(cluster):
    if cluster.get("_busy"):
        raise precondition(f"Cluster is running incompatible operation {cluster['_busy']}.")


def gke_pool_defaults(pool, master=None):
    """What GKE fills in on a node pool it takes (output only)."""
    pool.setdefault("status", "PROVISIONING")
    pool.setdefault("podIpv4CidrSize", 24)
    pool["etag"] = uuid.uuid4().hex
    pool.setdefault("version", master or gke_patch_version(gke_offered()[-1]))
    pool.setdefault("management", {"autoRepair": True, "autoUpgrade": True})
    pool.setdefault("config", {})
    return pool


def gke_create(p, q, body):
    cl = body.get("cluster") or {}
    v = []
    if not NAME_RE.match(cl.get("name", "") or ""):
        v.append(("cluster.name", "must match [a-z]([-a-z0-9]{0,38}[a-z0-9])?"))
    if not cl.get("nodePools") and not cl.get("initialNodeCount"):
        v.append(("cluster.node_pools", "a cluster needs node pools or an initial node count"))
    if v:
        raise invalid(v)
    master = gke_version_or_refuse(cl.get("initialClusterVersion"), "cluster.initial_cluster_version")
    clusters = gke_clusters(p)
    if cl["name"] in clusters:
        raise exists(f"projects/{p['project']}/locations/{p['location']}/clusters/{cl['name']}")
    res = dict(cl)
    # Google answers enums by name, however they were sent.
    if isinstance((res.get("networkConfig") or {}).get("datapathProvider"), int):
        res["networkConfig"] = dict(res["networkConfig"], datapathProvider={
            0: "DATAPATH_PROVIDER_UNSPECIFIED", 1: "LEGACY_DATAPATH", 2: "ADVANCED_DATAPATH"}.get(
                res["networkConfig"]["datapathProvider"], "DATAPATH_PROVIDER_UNSPECIFIED"))
    base = f"projects/{p['project']}/locations/{p['location']}"
    res.update(status="PROVISIONING", location=p["location"], zone=p["location"],
               selfLink=f"https://container.googleapis.com/v1/{base}/clusters/{cl['name']}",
               createTime=now_rfc3339(), endpoint="34.118.%d.%d" % (len(clusters) + 1, 10),
               currentMasterVersion=master, currentNodeVersion=master, id=uuid.uuid4().hex,
               clusterIpv4Cidr=(cl.get("ipAllocationPolicy") or {}).get("clusterIpv4CidrBlock")
               or "10.%d.0.0/14" % (4 * (len(clusters) % 60) + 8),
               servicesIpv4Cidr=(cl.get("ipAllocationPolicy") or {}).get("servicesIpv4CidrBlock")
               or "34.118.%d.0/20" % (224 + 16 * (len(clusters) % 2)),
               masterAuth={"clusterCaCertificate": base64.b64encode(
                   b"-----BEGIN CERTIFICATE-----\nTUlJQmxvY2FsLWRvdWJsZS1jYQ==\n-----END CERTIFICATE-----\n").decode()},
               _busy="CREATE_CLUSTER")
    res["nodePools"] = [gke_pool_defaults(dict(np), master) for np in cl.get("nodePools") or []]
    clusters[cl["name"]] = res

    def finish():
        res.update(status="RUNNING")
        res.pop("_busy", None)
        for np in res["nodePools"]:
            np["status"] = "RUNNING"
            make_groups(p["project"], p["location"], cl["name"], np)
    pc = dict(p, cluster=cl["name"])
    return gke_op(pc, "CREATE_CLUSTER", f"clusters/{cl['name']}", delay("gke_cluster_create"), finish)


def visible(res):
    return {k: v for k, v in res.items() if not k.startswith("_")}


def cluster_view(cl):
    """A cluster as GKE answers it: its nodes counted from its pools'
    instance groups (their current size, whatever resized them)."""
    out = visible(cl)
    out["currentNodeCount"] = sum(int((c.get(name) or {}).get("targetSize") or 0)
                                  for np in cl.get("nodePools") or [] for c, name in groups_of(np))
    return out


def gke_get(p, q, body):
    return cluster_view(gke_cluster(p))


def every_location(p, service, kind):
    """`-` as the location: every location's resources, as Google answers."""
    if p["location"] != "-":
        return list(coll(f"{service}/projects/{p['project']}/locations/{p['location']}/{kind}").values())
    prefix = f"{service}/projects/{p['project']}/locations/"
    return [r for path, items in sorted(STORE.items()) if path.startswith(prefix) and path.endswith("/" + kind)
            for r in items.values()]


def gke_list(p, q, body):
    return {"clusters": [cluster_view(c) for c in every_location(p, "gke", "clusters")]}


def gke_update(p, q, body):
    cl = gke_cluster(p)
    gke_busy(cl)
    upd = body.get("update") or {}
    if "desiredMasterVersion" in upd:
        # One minor version at a time, never down (GKE's rule for masters).
        want = gke_version_or_refuse(upd["desiredMasterVersion"], "update.desired_master_version")
        have = gke_minor(cl.get("currentMasterVersion", ""))
        a, b = (tuple(int(x) for x in v.split(".")) for v in (have, gke_minor(want)))
        if b < a or b[1] - a[1] > 1 or b[0] != a[0]:
            raise ApiError(400, "INVALID_ARGUMENT",
                           f"Master cannot be upgraded from {cl.get('currentMasterVersion')} to {want}: "
                           "one minor version at a time, and never down.", "invalid",
                           [("update.desired_master_version", "not the next minor version")])
        upd = dict(upd, desiredMasterVersion=want)
    cl.update(status="RECONCILING", _busy="UPDATE_CLUSTER")

    def finish():
        if "desiredReleaseChannel" in upd:
            cl["releaseChannel"] = upd["desiredReleaseChannel"]
        if "desiredMasterVersion" in upd:
            cl["currentMasterVersion"] = upd["desiredMasterVersion"]
        if "desiredMasterAuthorizedNetworksConfig" in upd:
            cl["masterAuthorizedNetworksConfig"] = upd["desiredMasterAuthorizedNetworksConfig"]
        cl.update(status="RUNNING")
        cl.pop("_busy", None)
    return gke_op(p, "UPDATE_CLUSTER", f"clusters/{p['cluster']}", delay("gke_cluster_update"), finish)


def gke_labels(p, q, body):
    cl = gke_cluster(p)
    gke_busy(cl)
    cl["_busy"] = "SET_LABELS"

    def finish():
        cl["resourceLabels"] = body.get("resourceLabels") or {}
        cl.pop("_busy", None)
    return gke_op(p, "SET_LABELS", f"clusters/{p['cluster']}", delay("compute"), finish)


def gke_delete(p, q, body):
    cl = gke_cluster(p)
    gke_busy(cl)
    cl.update(status="STOPPING", _busy="DELETE_CLUSTER")

    def finish():
        for np in cl.get("nodePools") or []:
            drop_groups(np)
        gke_clusters(p).pop(p["cluster"], None)
    return gke_op(p, "DELETE_CLUSTER", f"clusters/{p['cluster']}", delay("gke_cluster_delete"), finish)


def gke_pool(cl, p):
    for np in cl["nodePools"]:
        if np["name"] == p["pool"]:
            return np
    raise not_found(f"projects/{p['project']}/locations/{p['location']}/clusters/{p['cluster']}/nodePools/{p['pool']}")


def pool_create(p, q, body):
    cl = gke_cluster(p)
    np = dict(body.get("nodePool") or {})
    if not NAME_RE.match(np.get("name", "") or ""):
        raise invalid([("node_pool.name", "must match [a-z]([-a-z0-9]{0,38}[a-z0-9])?")])
    if any(x["name"] == np["name"] for x in cl["nodePools"]):
        raise exists(f"clusters/{p['cluster']}/nodePools/{np['name']}")
    gke_busy(cl)
    np = gke_pool_defaults(np, cl.get("currentMasterVersion"))
    np["selfLink"] = f"{cl['selfLink']}/nodePools/{np['name']}"
    cl["nodePools"].append(np)
    cl.update(status="RECONCILING", _busy="CREATE_NODE_POOL")

    def finish():
        np["status"] = "RUNNING"
        make_groups(p["project"], p["location"], p["cluster"], np)
        cl.update(status="RUNNING")
        cl.pop("_busy", None)
    return gke_op(p, "CREATE_NODE_POOL", f"clusters/{p['cluster']}/nodePools/{np['name']}",
                  delay("gke_pool_create"), finish)


def pool_get(p, q, body):
    return gke_pool(gke_cluster(p), p)


def pool_list(p, q, body):
    return {"nodePools": gke_cluster(p)["nodePools"]}


def pool_change(op_type, apply):
    def h(p, q, body):
        cl = gke_cluster(p)
        np = gke_pool(cl, p)
        gke_busy(cl)
        np["status"] = "RECONCILING"
        cl["_busy"] = op_type

        def finish():
            apply(np, body)
            np["status"] = "RUNNING"
            cl.pop("_busy", None)
        return gke_op(p, op_type, f"clusters/{p['cluster']}/nodePools/{p['pool']}",
                      delay("gke_pool_update"), finish)
    return h


def make_groups(project, location, cluster, np):
    """The managed instance groups GKE makes for a running pool, one per
    zone, sized by the initial count; the pool names them in
    instanceGroupUrls. A resize (setSize, the autoscaler) changes their
    target size, never the pool's initialNodeCount."""
    if np.get("instanceGroupUrls"):
        return
    zones = np.get("locations") or ([location] if re.search(r"-[a-z]$", location)
                                    else [f"{location}-{z}" for z in "abc"])
    urls = []
    for z in zones:
        name = "gke-%s-%s-%s-grp" % (cluster[:14], np["name"][:10], uuid.uuid4().hex[:8])
        link = f"{COMPUTE}projects/{project}/zones/{z}/instanceGroupManagers/{name}"
        coll(f"compute/projects/{project}/zones/{z}/instanceGroupManagers")[name] = {
            "kind": "compute#instanceGroupManager", "name": name, "zone": f"{COMPUTE}projects/{project}/zones/{z}",
            "selfLink": link, "id": str(uuid.uuid4().int % 10**18), "creationTimestamp": now_rfc3339(),
            "baseInstanceName": name[:-4], "targetSize": int(np.get("initialNodeCount") or 0),
            "instanceGroup": link.replace("instanceGroupManagers", "instanceGroups")}
        urls.append(link)
    np["instanceGroupUrls"] = urls


def groups_of(np):
    for url in np.get("instanceGroupUrls") or []:
        m = re.search(r"projects/([^/]+)/zones/([^/]+)/instanceGroupManagers/([^/]+)$", url)
        if m:
            c = coll(f"compute/projects/{m.group(1)}/zones/{m.group(2)}/instanceGroupManagers")
            yield c, m.group(3)


def drop_groups(np):
    for c, name in list(groups_of(np)):
        c.pop(name, None)


def set_size(np, body):
    for c, name in groups_of(np):
        if name in c:
            c[name]["targetSize"] = int(body.get("nodeCount", 0))


def igm_aggregated_list(p, q, body):
    prefix = f"compute/projects/{p['project']}/zones/"
    items = {}
    for path, groups in sorted(STORE.items()):
        if path.startswith(prefix) and path.endswith("/instanceGroupManagers") and groups:
            zone = path[len(prefix):].split("/")[0]
            items[f"zones/{zone}"] = {"instanceGroupManagers": list(groups.values())}
    return {"kind": "compute#instanceGroupManagerAggregatedList", "id": f"projects/{p['project']}/aggregated/instanceGroupManagers",
            "items": items, "selfLink": f"{COMPUTE}projects/{p['project']}/aggregated/instanceGroupManagers"}


def set_autoscaling(np, body):
    np["autoscaling"] = body.get("autoscaling") or {}


def set_management(np, body):
    np["management"] = body.get("management") or {}


def pool_update(np, body):
    if "labels" in body:
        np.setdefault("config", {})["labels"] = (body.get("labels") or {}).get("labels", {})
    if body.get("machineType"):
        np.setdefault("config", {})["machineType"] = body["machineType"]


def pool_delete(p, q, body):
    cl = gke_cluster(p)
    np = gke_pool(cl, p)
    gke_busy(cl)
    np["status"] = "STOPPING"
    cl["_busy"] = "DELETE_NODE_POOL"

    def finish():
        cl["nodePools"] = [x for x in cl["nodePools"] if x is not np]
        drop_groups(np)
        cl.pop("_busy", None)
    return gke_op(p, "DELETE_NODE_POOL", f"clusters/{p['cluster']}/nodePools/{p['pool']}",
                  delay("gke_pool_delete"), finish)


def gke_op_get(p, q, body):
    op = OPS.get(f"projects/{p['project']}/locations/{p['location']}/operations/{p['operation']}")
    if op is None or op["style"] != "gke":
        raise not_found(f"operations/{p['operation']}")
    return op["rec"]


# ---------------------------------------------------------------- Cloud SQL

def sql_op(p, op_type, target, seconds, finish):
    name = str(uuid.uuid4())
    rec = {"kind": "sql#operation", "name": name, "operationType": op_type, "status": "PENDING",
           "targetId": target, "targetProject": p["project"], "insertTime": now_rfc3339(),
           "targetLink": f"https://sqladmin.googleapis.com/v1/projects/{p['project']}/instances/{target}",
           "selfLink": f"https://sqladmin.googleapis.com/v1/projects/{p['project']}/operations/{name}"}
    OPS[f"sql/{p['project']}/{name}"] = {"style": "sql", "rec": rec}
    later(min(seconds / 4, 0.2), lambda: rec.update(status="RUNNING", startTime=now_rfc3339())
          if rec["status"] == "PENDING" else None)

    def done():
        failure = finish()
        rec.update(status="DONE", endTime=now_rfc3339())
        if failure:
            rec["error"] = {"kind": "sql#operationErrors", "errors": [{"kind": "sql#operationError",
                                                                       "code": failure[0], "message": failure[1]}]}
    later(seconds, done)
    return dict(rec)


ADDRESSES = {"sql": 0, "redis": 0}


def next_address(kind):
    """A private address no other store of the double has (the network model
    finds a store by its address alone)."""
    ADDRESSES[kind] += 1
    n = ADDRESSES[kind]
    return "10.%d.%d.%d" % (100 if kind == "sql" else 120, n // 250, n % 250 + 3)


def network_of(project, network):
    """The network key of a GKE cluster's or store's network (a name in the
    resource's project, a relative name or a link)."""
    if not network:
        return f"projects/{project}/global/networks/default"
    if "/" not in network:
        return f"projects/{project}/global/networks/{network}"
    return network_key(network)


def stores_at(host):
    """(project, kind, resource) of the store that answers at this address."""
    for path, items in list(STORE.items()):
        parts = path.split("/")
        if path.startswith("sql/projects/") and path.endswith("/instances") and len(parts) == 4:
            for inst in items.values():
                for a in inst.get("ipAddresses") or []:
                    if a.get("ipAddress") == host:
                        yield parts[2], "sql", inst, a.get("type")
        if path.startswith("redis/projects/") and path.endswith("/instances"):
            for inst in items.values():
                if inst.get("host") == host:
                    yield parts[2], "redis", inst, "PRIVATE"


def egress_verdict(project, network, pool, host, port):
    """The firewall rule that decides a node's connection, Google's way:
    EGRESS rules of the network that apply to the node (no target, its
    network tags, or its service account), lowest priority number first,
    deny before allow at the same priority; none means the implied allow."""
    tags = set(((pool.get("config") or {}).get("tags")) or [])
    account = (pool.get("config") or {}).get("serviceAccount") or "default"
    rules = []
    for r in coll(f"compute/projects/{project}/global/firewalls").values():
        if r.get("disabled") or (r.get("direction") or "INGRESS") != "EGRESS":
            continue
        if network_key(r.get("network") or "") != network:
            continue
        targets, accounts = r.get("targetTags") or [], r.get("targetServiceAccounts") or []
        if targets and not tags.intersection(targets):
            continue
        if accounts and account not in accounts:
            continue
        ranges = r.get("destinationRanges") or ["0.0.0.0/0"]
        if not any(ipaddress.ip_address(host) in ipaddress.ip_network(c, strict=False) for c in ranges):
            continue
        for verdict, key in (("deny", "denied"), ("allow", "allowed")):
            for rule in r.get(key) or []:
                proto = str(rule.get("IPProtocol", "")).lower()
                if proto not in ("all", "tcp", "6"):
                    continue
                ports = rule.get("ports") or []
                if ports and not any(
                        (int(x.split("-")[0]) <= port <= int(x.split("-")[-1])) for x in ports):
                    continue
                rules.append((int(r.get("priority", 1000)), 0 if verdict == "deny" else 1, verdict, r["name"]))
    if not rules:
        return "allow", None
    rules.sort()
    return rules[0][2], rules[0][3]


def network_reach(host, port):
    """Whether a pod on a GKE node reaches HOST:PORT, judged from the
    double's own state as a connectivity test would: the store at that
    address; a RUNNING VPC-native cluster of its project on the store's
    network (pods' alias addresses are what the peering exports; a
    routes-based cluster's pods are not); for private services access, the
    Service Networking connection of that network; the port the store
    listens on; and the network's EGRESS firewall rules for the nodes."""
    found = list(stores_at(host))
    if not found:
        return {"store": None, "reachable": False, "reason": f"no store of the local Google Cloud has the address {host}"}
    project, kind, inst, addr_type = found[0]
    label = f"{'Cloud SQL' if kind == 'sql' else 'Memorystore'} {inst.get('name', '').rsplit('/', 1)[-1]}"
    answer = {"store": label, "reachable": False}
    if kind == "sql":
        ipc = (inst.get("settings") or {}).get("ipConfiguration") or {}
        if addr_type != "PRIVATE":
            answer["reason"] = f"{label} answers at {host} only on its public address, which admits no pod"
            return answer
        network, listens, peered = network_of(project, ipc.get("privateNetwork")), 5432, True
    else:
        network = network_of(project, inst.get("authorizedNetwork"))
        listens = inst.get("port") or 6379
        peered = inst.get("connectMode") in (2, "PRIVATE_SERVICE_ACCESS")
    if inst.get("state") not in ("RUNNABLE", "READY", "UPDATING", "MAINTENANCE"):
        answer["reason"] = f"{label} is {inst.get('state')}"
        return answer
    if port != listens:
        answer["reason"] = f"{label} listens on {listens}, not {port}"
        return answer
    if peered and network not in sn_connections():
        answer["reason"] = f"{network} has no private services connection, so {host} is not routed"
        return answer
    why = f"no running GKE cluster of project {project} is on {network}"
    for path, clusters in list(STORE.items()):
        if not (path.startswith(f"gke/projects/{project}/") and path.endswith("/clusters")):
            continue
        for cl in clusters.values():
            # A cluster being updated (RECONCILING) keeps its nodes serving.
            if cl.get("status") not in ("RUNNING", "RECONCILING") or network_of(project, cl.get("network")) != network:
                continue
            if not (cl.get("ipAllocationPolicy") or {}).get("useIpAliases"):
                why = f"cluster {cl['name']} is routes-based: the peering does not carry its pods' addresses"
                continue
            for pool in cl.get("nodePools") or []:
                if pool.get("status") not in ("RUNNING", "RECONCILING", "RUNNING_WITH_ERROR"):
                    continue
                verdict, rule = egress_verdict(project, network, pool, host, port)
                if verdict == "allow":
                    answer.update(reachable=True, reason=f"from node pool {pool['name']} of cluster {cl['name']}",
                                  local=(local_servers.postgres_address(os.environ.get("RALPH_SIM_RUN_DIR"))
                                         if kind == "sql" else inst.get("_local")))
                    # What a TLS client must trust to verify the server.
                    if kind != "sql" and listens == 6378 and inst.get("serverCaCerts"):
                        answer["ca"] = inst["serverCaCerts"][0]["cert"]
                    return answer
                why = f"the egress firewall rule {rule} denies node pool {pool['name']} of cluster {cl['name']}"
    answer["reason"] = why
    return answer


def node_listing():
    """The nodes GKE would run: per node pool with nodes (RUNNING, or being
    updated) of a serving cluster, per zone, the target size of the pool's
    managed instance group there (what a resize changes), with the pool's
    machine type, labels, taints and autoscaling limits, and the group's
    link (what `/__double/nodes/grow` takes). The node simulator turns each
    into that many Nodes. Served at /__double/nodes."""
    out = []
    for path, clusters in list(STORE.items()):
        m = re.match(r"gke/projects/([^/]+)/locations/([^/]+)/clusters$", path)
        if not m:
            continue
        for cl in list(clusters.values()):
            if cl.get("status") not in ("RUNNING", "RECONCILING"):
                continue
            for pool in list(cl.get("nodePools") or []):
                if pool.get("status") not in ("RUNNING", "RECONCILING", "RUNNING_WITH_ERROR"):
                    continue
                config = pool.get("config") or {}
                for groups, name in groups_of(pool):
                    mig = groups.get(name) or {}
                    out.append({
                        "project": m.group(1), "cluster": cl["name"], "pool": pool["name"],
                        "zone": (mig.get("zone") or "").rsplit("/", 1)[-1],
                        "size": int(mig.get("targetSize") or 0),
                        "machine_type": config.get("machineType") or "e2-medium",
                        "labels": dict(config.get("labels") or {}),
                        "taints": list(config.get("taints") or []),
                        "autoscaling": dict(pool.get("autoscaling") or {}),
                        # Dataplane V2 (or Calico's network policy) enforces
                        # NetworkPolicies; without it they are stored only.
                        "network_policy": ((cl.get("networkConfig") or {}).get("datapathProvider")
                                           == "ADVANCED_DATAPATH"
                                           or bool((cl.get("networkPolicy") or {}).get("enabled"))),
                        "group": mig.get("selfLink", ""),
                    })
    return out


def autoscaler_grow(link):
    """GKE's cluster autoscaler adding a node: the node simulator, which
    sees the pods, asks for one more node in a pool's zone (a group link of
    `/__double/nodes`) when a pod naming that pool cannot be scheduled; the
    pool decides, as GKE's autoscaler would: only with autoscaling enabled,
    and never past maxNodeCount per zone (or totalMaxNodeCount across its
    zones). The group's target size grows; initialNodeCount never moves."""
    for path, clusters in list(STORE.items()):
        if not re.match(r"gke/projects/[^/]+/locations/[^/]+/clusters$", path):
            continue
        for cl in list(clusters.values()):
            for pool in list(cl.get("nodePools") or []):
                if link not in (pool.get("instanceGroupUrls") or []):
                    continue
                auto = pool.get("autoscaling") or {}
                if not auto.get("enabled"):
                    return {"grown": False, "reason": "node pool %s has no autoscaling" % pool["name"]}
                sizes = {name: int((c.get(name) or {}).get("targetSize") or 0) for c, name in groups_of(pool)}
                mig = link.rsplit("/", 1)[-1]
                per_zone = auto.get("maxNodeCount")
                total = auto.get("totalMaxNodeCount")
                if per_zone is not None and sizes.get(mig, 0) >= int(per_zone):
                    return {"grown": False, "reason": "node pool %s is at its maximum (%s per zone)" % (pool["name"], per_zone)}
                if total is not None and sum(sizes.values()) >= int(total):
                    return {"grown": False, "reason": "node pool %s is at its maximum (%s in all)" % (pool["name"], total)}
                for c, name in groups_of(pool):
                    if name == mig:
                        c[name]["targetSize"] = sizes.get(mig, 0) + 1
                        return {"grown": True, "size": c[name]["targetSize"]}
    return {"grown": False, "reason": "no node pool has the group %s" % link}


def sql_instances(p):
    return coll(f"sql/projects/{p['project']}/instances")


def sql_instance(p):
    i = sql_instances(p).get(p["instance"])
    if i is None:
        raise ApiError(404, "NOT_FOUND", "The Cloud SQL instance does not exist.", "instanceDoesNotExist", legacy=True)
    return i


# SqlDatabaseVersion's numbers (requests with enum-encoding=int) for the
# PostgreSQL majors.
SQL_POSTGRES = {9: "POSTGRES_9_6", 18: "POSTGRES_10", 10: "POSTGRES_11", 19: "POSTGRES_12", 23: "POSTGRES_13",
                110: "POSTGRES_14", 172: "POSTGRES_15", 272: "POSTGRES_16", 408: "POSTGRES_17", 557: "POSTGRES_18"}


def installed_version(version):
    """The minor version Cloud SQL installs for a major one (a string field,
    such as POSTGRES_15_10), whichever way the major was named."""
    name = SQL_POSTGRES.get(version, "POSTGRES_15") if isinstance(version, int) else (version or "POSTGRES_15")
    return name if re.search(r"_\d+_\d+$", name) else name + "_10"


def primary_name(inst):
    """The primary a replica names in masterInstanceName (PROJECT:NAME or NAME); "" for a primary."""
    return (inst.get("masterInstanceName") or "").split(":")[-1]


def invalid_operation(message):
    """Cloud SQL's INVALID_OPERATION: the operation is not valid for this instance."""
    return ApiError(400, "FAILED_PRECONDITION", message, "invalidOperation", legacy=True)


def replica_primary(p, body):
    """The primary a read-replica insert names (masterInstanceName, which
    GET reports as PROJECT:NAME), checked as Cloud SQL checks it: it exists
    and is running, the replica runs its major version, and the replica
    asks for no backups of its own."""
    name = primary_name(body)
    primary = sql_instances(p).get(name)
    if primary is None:
        raise ApiError(404, "NOT_FOUND", f"The Cloud SQL instance {name} (the replica's primary) does not exist.",
                       "instanceDoesNotExist", legacy=True)
    if primary.get("masterInstanceName"):
        raise invalid_operation(f"{name} is itself a read replica: a replica's primary must be a primary instance.")
    if primary["state"] != "RUNNABLE":
        raise ApiError(409, "ABORTED", f"The primary {name} is {primary['state']}: a replica can be made of a running instance only.",
                       "operationInProgress", legacy=True)
    if installed_version(body.get("databaseVersion")).rsplit("_", 1)[0] != primary["databaseInstalledVersion"].rsplit("_", 1)[0]:
        raise invalid([("databaseVersion", f"a read replica runs its primary's major version ({primary['databaseVersion']})")],
                      legacy=True)
    backups = (body.get("settings") or {}).get("backupConfiguration") or {}
    if backups.get("enabled") or backups.get("pointInTimeRecoveryEnabled"):
        raise invalid([("settings.backupConfiguration", "backups and point-in-time recovery are not supported on a read replica")],
                      legacy=True)
    return primary


def sql_insert(p, q, body):
    v = []
    if not NAME_RE.match(body.get("name", "") or ""):
        v.append(("name", "must match [a-z]([-a-z0-9]{0,61}[a-z0-9])?"))
    if not (body.get("settings") or {}).get("tier"):
        v.append(("settings.tier", "is required"))
    if v:
        raise invalid(v, legacy=True)
    inst = sql_instances(p)
    if body["name"] in inst:
        raise ApiError(409, "ALREADY_EXISTS", "The Cloud SQL instance already exists.", "instanceAlreadyExists", legacy=True)
    primary = replica_primary(p, body) if body.get("masterInstanceName") else None
    why = store_support.refusal("cloudsql_postgres", body.get("databaseVersion"))
    if why:
        raise ApiError(400, "INVALID_ARGUMENT", f"Invalid request: Database version {body.get('databaseVersion')} is not supported ({why}).",
                       "invalid", legacy=True)
    private = ((body.get("settings") or {}).get("ipConfiguration") or {}).get("privateNetwork")
    if private:
        require_private_access(private, "Cloud SQL private IP", legacy=True)
    res = {k: v for k, v in body.items() if k != "rootPassword"}
    s = res.setdefault("settings", {})
    s["settingsVersion"] = "1"
    ipc = s.get("ipConfiguration") or {}
    addrs = []
    if ipc.get("privateNetwork"):
        addrs.append({"type": "PRIVATE", "ipAddress": next_address("sql")})
    if ipc.get("ipv4Enabled", True) and not ipc.get("privateNetwork"):
        addrs.append({"type": "PRIMARY", "ipAddress": "35.200.0.%d" % (len(inst) + 2)})
    res.update(kind="sql#instance", state="PENDING_CREATE", project=p["project"], backendType="SECOND_GEN",
               connectionName=f"{p['project']}:{body.get('region', 'us-central1')}:{body['name']}",
               ipAddresses=addrs, createTime=now_rfc3339(),
               instanceType="READ_REPLICA_INSTANCE" if primary else "CLOUD_SQL_INSTANCE",
               selfLink=f"https://sqladmin.googleapis.com/v1/projects/{p['project']}/instances/{body['name']}",
               serviceAccountEmailAddress=f"p{abs(hash(body['name'])) % 10**12}@gcp-sa-cloud-sql.iam.gserviceaccount.com",
               databaseInstalledVersion=installed_version(body.get("databaseVersion")))
    inst[body["name"]] = res
    if primary is not None:
        # A replica's databases and users are its primary's, replicated.
        res["masterInstanceName"] = f"{p['project']}:{primary['name']}"
        res["replicaConfiguration"] = {"kind": "sql#replicaConfiguration", "failoverTarget": False}
        primary.setdefault("replicaNames", []).append(body["name"])

        def made():
            res["state"] = "RUNNABLE"
        return sql_op(p, "CREATE_REPLICA", body["name"], delay("sql_replica_create"), made)
    coll(f"sql/projects/{p['project']}/instances/{body['name']}/databases")["postgres"] = {
        "kind": "sql#database", "name": "postgres", "instance": body["name"], "project": p["project"],
        "charset": "UTF8", "collation": "en_US.UTF8"}
    coll(f"sql/projects/{p['project']}/instances/{body['name']}/users")["postgres"] = {
        "kind": "sql#user", "name": "postgres", "instance": body["name"], "project": p["project"], "type": "BUILT_IN"}

    def finish():
        res["state"] = "RUNNABLE"
    return sql_op(p, "CREATE", body["name"], delay("sql_create"), finish)


def sql_get(p, q, body):
    return sql_instance(p)


def sql_list(p, q, body):
    items = [i for i in sql_instances(p).values() if matches(i, (q.get("filter") or [""])[0])]
    chunk, token = page(items, q, "maxResults", 500)
    out = {"kind": "sql#instancesList", "items": chunk}
    if token:
        out["nextPageToken"] = token
    return out


def merge(dst, src):
    """A PATCH body merged in (JSON merge patch: a null removes the key,
    as a label set to null in Cloud SQL's PATCH is removed)."""
    for k, v in src.items():
        if v is None:
            dst.pop(k, None)
        elif isinstance(v, dict) and isinstance(dst.get(k), dict):
            merge(dst[k], v)
        else:
            dst[k] = v


def sql_patch(p, q, body):
    inst = sql_instance(p)
    backups = (body.get("settings") or {}).get("backupConfiguration") or {}
    if inst.get("masterInstanceName") and (backups.get("enabled") or backups.get("pointInTimeRecoveryEnabled")):
        raise invalid([("settings.backupConfiguration", "backups and point-in-time recovery are not supported on a read replica")],
                      legacy=True)
    if inst["state"] != "RUNNABLE":
        raise ApiError(409, "ABORTED", "Operation failed because another operation was already in progress.",
                       "operationInProgress", legacy=True)
    inst["state"] = "MAINTENANCE"

    def finish():
        merge(inst, {k: v for k, v in body.items() if k not in ("name", "kind", "settingsVersion")})
        inst["settings"]["settingsVersion"] = str(int(inst["settings"].get("settingsVersion", "1")) + 1)
        inst["state"] = "RUNNABLE"
    return sql_op(p, "UPDATE", p["instance"], delay("sql_update"), finish)


def sql_delete(p, q, body):
    inst = sql_instance(p)
    if (inst.get("settings") or {}).get("deletionProtectionEnabled"):
        raise ApiError(400, "FAILED_PRECONDITION",
                       "The instance is protected. Please disable the deletion protection and try again.",
                       "deletionProtectionEnabled", legacy=True)
    if inst.get("replicaNames"):
        raise invalid_operation("The instance has read replicas (%s): delete or promote them first."
                                % ", ".join(inst["replicaNames"]))
    inst["state"] = "PENDING_DELETE"

    def finish():
        primary = sql_instances(p).get(primary_name(inst))
        if primary is not None and p["instance"] in primary.get("replicaNames", []):
            primary["replicaNames"].remove(p["instance"])
            if not primary["replicaNames"]:
                primary.pop("replicaNames")
        sql_instances(p).pop(p["instance"], None)
        for path in [k for k in STORE if k.startswith(f"sql/projects/{p['project']}/instances/{p['instance']}/")]:
            STORE.pop(path)
    return sql_op(p, "DELETE", p["instance"], delay("sql_delete"), finish)


def sql_promote(p, q, body):
    """promoteReplica: a read replica becomes a standalone primary under its
    own name (Cloud SQL renames no instance), with its primary's databases
    and users as they were replicated. Refused on an instance that is not a
    replica and while another operation runs."""
    inst = sql_instance(p)
    if not inst.get("masterInstanceName"):
        raise invalid_operation(f"{p['instance']} is not a read replica: only a replica can be promoted.")
    if inst["state"] != "RUNNABLE":
        raise ApiError(409, "ABORTED", "Operation failed because another operation was already in progress.",
                       "operationInProgress", legacy=True)
    inst["state"] = "MAINTENANCE"

    def finish():
        primary_key = primary_name(inst)
        primary = sql_instances(p).get(primary_key)
        for kind in ("databases", "users"):
            src = coll(f"sql/projects/{p['project']}/instances/{primary_key}/{kind}")
            dst = coll(f"sql/projects/{p['project']}/instances/{p['instance']}/{kind}")
            for name, res in src.items():
                dst[name] = dict(res, instance=p["instance"])
        if primary is not None and p["instance"] in primary.get("replicaNames", []):
            primary["replicaNames"].remove(p["instance"])
            if not primary["replicaNames"]:
                primary.pop("replicaNames")
        for k in ("masterInstanceName", "replicaConfiguration"):
            inst.pop(k, None)
        inst.update(instanceType="CLOUD_SQL_INSTANCE", state="RUNNABLE")
        SQL_LAG.pop(f"{p['project']}:{p['instance']}", None)
    return sql_op(p, "PROMOTE_REPLICA", p["instance"], delay("sql_update"), finish)


# ---------------------------------------------------------------- Cloud Monitoring

# A replica's replication lag in seconds, by PROJECT:INSTANCE, as Cloud SQL
# reports it to Cloud Monitoring (0 unless a test says the replica is
# behind: POST /__double/sql/lag {"database_id": "P:I", "seconds": N}).
SQL_LAG = {}
REPLICA_LAG = "cloudsql.googleapis.com/database/replication/replica_lag"


def filter_term(flt, key):
    m = re.search(re.escape(key) + r'\s*=\s*"([^"]*)"', flt)
    return m.group(1) if m else None


def time_series_list(p, q, body):
    """timeSeries.list, for the Cloud SQL replica-lag gauge: one point in
    the interval for each running read replica the filter names, none for
    a primary (the metric exists for replicas only). Refuses what Cloud
    Monitoring refuses: no filter, a filter naming no metric type, no end
    of the interval."""
    flt = (q.get("filter") or [""])[0]
    metric = filter_term(flt, "metric.type")
    if not flt or metric is None:
        raise invalid([("filter", "must name exactly one metric.type")])
    end = (q.get("interval.endTime") or [""])[0]
    if not end:
        raise invalid([("interval.endTime", "is required")])
    start = (q.get("interval.startTime") or [end])[0]
    if metric != REPLICA_LAG:
        return {}
    wanted = filter_term(flt, "resource.labels.database_id")
    at = min(parse_rfc3339(end), time.time() - 5)
    if at < parse_rfc3339(start):
        return {}
    series = []
    for key, inst in sql_instances(p).items():
        database_id = f"{p['project']}:{key}"
        if (wanted and wanted != database_id) or not inst.get("masterInstanceName") or inst["state"] != "RUNNABLE":
            continue
        series.append({
            "metric": {"type": REPLICA_LAG},
            "resource": {"type": "cloudsql_database",
                         "labels": {"project_id": p["project"], "database_id": database_id,
                                    "region": inst.get("region", "us-central1")}},
            "metricKind": "GAUGE", "valueType": "DOUBLE",
            "points": [{"interval": {"startTime": now_rfc3339(at), "endTime": now_rfc3339(at)},
                        "value": {"doubleValue": float(SQL_LAG.get(database_id, 0.0))}}]})
    return {"timeSeries": series} if series else {}


def backup_runs(p):
    return coll(f"sql/projects/{p['project']}/instances/{p['instance']}/backupRuns")


def backup_run_insert(p, q, body):
    """An on-demand backup: refused on a replica (its backups are its
    primary's) and while another operation runs; listed once it is done."""
    inst = sql_instance(p)
    if inst.get("masterInstanceName"):
        raise invalid_operation("Backups are not supported for read replica instances.")
    if inst["state"] != "RUNNABLE":
        raise ApiError(409, "ABORTED", "Operation failed because another operation was already in progress.",
                       "operationInProgress", legacy=True)
    run_id = str(int(time.time() * 1000))
    run = {"kind": "sql#backupRun", "id": run_id, "instance": p["instance"], "type": "ON_DEMAND",
           "status": "RUNNING", "description": body.get("description", ""), "enqueuedTime": now_rfc3339(),
           "selfLink": f"https://sqladmin.googleapis.com/v1/projects/{p['project']}/instances/{p['instance']}/backupRuns/{run_id}"}
    backup_runs(p)[run_id] = run

    def finish():
        run.update(status="SUCCESSFUL", endTime=now_rfc3339())
    return sql_op(p, "BACKUP_VOLUME", p["instance"], delay("sql_child"), finish)


def backup_run_list(p, q, body):
    sql_instance(p)
    items = sorted(backup_runs(p).values(), key=lambda r: r["id"], reverse=True)
    return {"kind": "sql#backupRunsList", "items": items}


def sql_children(kind):
    def path(p):
        # A read replica reads its primary's.
        inst = sql_instances(p).get(p["instance"]) or {}
        owner = primary_name(inst) or p["instance"]
        return f"sql/projects/{p['project']}/instances/{owner}/{kind}"

    def replica_refuses(p):
        inst = sql_instance(p)
        if inst.get("masterInstanceName"):
            raise invalid_operation(f"{p['instance']} is a read replica: its {kind} are its primary's "
                                    f"({inst['masterInstanceName']}); change them there.")
        return inst

    def insert(p, q, body):
        replica_refuses(p)
        name = body.get("name", "")
        if not name:
            raise invalid([("name", "is required")], legacy=True)
        c = coll(path(p))
        if name in c:
            raise ApiError(409, "ALREADY_EXISTS", f"{kind[:-1].capitalize()} '{name}' already exists.",
                           "alreadyExists", legacy=True)
        res = {k: v for k, v in body.items() if k != "password"}
        res.update(kind=f"sql#{kind[:-1]}", instance=p["instance"], project=p["project"])

        def finish():
            c[name] = res
            if kind == "databases":
                # The local PostgreSQL plays every Cloud SQL instance: the
                # database exists there too, so a client naming it gets in.
                why = local_servers.create_database(os.environ.get("RALPH_SIM_RUN_DIR"), name)
                if why:
                    print("gcp double: database %s not made: %s" % (name, why), file=sys.stderr, flush=True)
        return sql_op(p, "CREATE_" + kind[:-1].upper(), p["instance"], delay("sql_child"), finish)

    def get(p, q, body):
        sql_instance(p)
        res = coll(path(p)).get(p.get("name") or p.get("database"))
        if res is None:
            raise not_found(f"{kind}/{p.get('name') or p.get('database')}", legacy=True)
        return res

    def lst(p, q, body):
        sql_instance(p)
        return {"kind": f"sql#{kind}List" if kind == "databases" else "sql#usersList",
                "items": list(coll(path(p)).values())}

    def update(p, q, body):
        replica_refuses(p)
        name = (q.get("name") or [body.get("name", "")])[0]
        c = coll(path(p))
        if name not in c:
            raise not_found(f"{kind}/{name}", legacy=True)

        def finish():
            c[name].update({k: v for k, v in body.items() if k not in ("password", "name")})
        return sql_op(p, "UPDATE_USER", p["instance"], delay("sql_child"), finish)

    def delete(p, q, body):
        replica_refuses(p)
        name = p.get("database") or (q.get("name") or [""])[0]
        c = coll(path(p))
        if name not in c:
            raise not_found(f"{kind}/{name}", legacy=True)

        def finish():
            c.pop(name, None)
        return sql_op(p, "DELETE_" + kind[:-1].upper(), p["instance"], delay("sql_child"), finish)
    return insert, get, lst, update, delete


DB_INSERT, DB_GET, DB_LIST, _, DB_DELETE = sql_children("databases")
USER_INSERT, USER_GET, USER_LIST, USER_UPDATE, USER_DELETE = sql_children("users")


def sql_op_get(p, q, body):
    op = OPS.get(f"sql/{p['project']}/{p['operation']}")
    if op is None:
        raise not_found(f"operations/{p['operation']}", legacy=True)
    return op["rec"]


# ---------------------------------------------------------------- Memorystore

def lro(p, service, verb, target, seconds, finish, response_type):
    base = f"projects/{p['project']}/locations/{p['location']}"
    name = f"{base}/operations/operation-%d-%s" % (int(time.time() * 1000), uuid.uuid4().hex[:12])
    rec = {"name": name, "done": False,
           "metadata": {"@type": f"type.googleapis.com/google.cloud.{service}.v1.OperationMetadata",
                        "createTime": now_rfc3339(), "target": target, "verb": verb, "apiVersion": "v1"}}
    OPS[name] = {"style": "lro", "rec": rec}

    def done():
        resp = finish()
        rec["done"] = True
        rec["metadata"]["endTime"] = now_rfc3339()
        rec["response"] = dict(resp or {}, **{"@type": response_type})
    later(seconds, done)
    return dict(rec)


def redis_instances(p):
    return coll(f"redis/projects/{p['project']}/locations/{p['location']}/instances")


def redis_instance(p):
    i = redis_instances(p).get(p["instance"])
    if i is None:
        raise not_found(f"projects/{p['project']}/locations/{p['location']}/instances/{p['instance']}")
    return i


REDIS_TYPE = "type.googleapis.com/google.cloud.redis.v1.Instance"
EMPTY_TYPE = "type.googleapis.com/google.protobuf.Empty"


def redis_create(p, q, body):
    iid = (q.get("instanceId") or [""])[0]
    v = []
    if not NAME_RE.match(iid):
        v.append(("instance_id", "must match [a-z]([-a-z0-9]{0,38}[a-z0-9])?"))
    if not body.get("memorySizeGb"):
        v.append(("instance.memory_size_gb", "must be set"))
    if body.get("tier") in (None, 0, "TIER_UNSPECIFIED"):
        v.append(("instance.tier", "must be BASIC or STANDARD_HA"))
    if v:
        raise invalid(v)
    inst = redis_instances(p)
    if iid in inst:
        raise exists(f"projects/{p['project']}/locations/{p['location']}/instances/{iid}")
    if body.get("connectMode") in (2, "PRIVATE_SERVICE_ACCESS"):
        require_private_access(body.get("authorizedNetwork"), "Memorystore PRIVATE_SERVICE_ACCESS")
    name = f"projects/{p['project']}/locations/{p['location']}/instances/{iid}"
    res = dict(body)
    tls = body.get("transitEncryptionMode") in (1, "SERVER_AUTHENTICATION")
    zone = body.get("locationId") or p["location"] + "-a"
    ha = body.get("tier") in (3, "STANDARD_HA")
    res.update(name=name, state="CREATING", createTime=now_rfc3339(), host=next_address("redis"),
               port=6378 if tls else 6379, currentLocationId=zone, locationId=zone,
               # the nodes Memorystore runs (a replica in a second zone for
               # STANDARD_HA) and the identity it exports RDB snapshots as
               nodes=[{"id": "node-0", "zone": zone}] + ([{
                   "id": "node-1", "zone": body.get("alternativeLocationId") or p["location"] + "-b"}] if ha else []),
               persistenceIamIdentity="serviceAccount:service-%d@cloud-redis.iam.gserviceaccount.com"
               % (abs(hash(p["project"])) % 10**12))
    inst[iid] = res

    def finish():
        res["state"] = "READY"
        if res.get("authEnabled"):
            res["_auth"] = uuid.uuid4().hex
        # A real Redis behind it, for the pods (local_servers).
        try:
            res["_local"], res["_process"], pem = local_servers.redis_server(
                os.environ.get("RALPH_SIM_RUN_DIR"), iid, res.get("_auth"), tls)
            if pem:
                res["serverCaCerts"] = [{"serialNumber": "1", "cert": pem, "createTime": now_rfc3339(),
                                         "expireTime": "2036-01-01T00:00:00Z", "sha1Fingerprint": ""}]
        except Exception as e:  # never take the double down
            print("gcp double: no local Redis for %s: %r" % (iid, e), file=sys.stderr, flush=True)
        return visible(res)
    return lro(p, "redis", "create", name, delay("redis_create"), finish, REDIS_TYPE)


def redis_get(p, q, body):
    return visible(redis_instance(p))


def redis_list(p, q, body):
    items = [visible(i) for i in every_location(p, "redis", "instances")]
    chunk, token = page(items, q, "pageSize", 1000)
    out = {"instances": chunk}
    if token:
        out["nextPageToken"] = token
    return out


def redis_patch(p, q, body):
    inst = redis_instance(p)
    if inst["state"] != "READY":
        raise precondition(f"Instance {inst['name']} is in state {inst['state']}; try again later.")
    mask = [m for m in (q.get("updateMask") or [""])[0].split(",") if m]
    allowed = {"memorySizeGb", "labels", "displayName", "redisConfigs", "replicaCount", "authEnabled",
               "maintenancePolicy", "persistenceConfig", "readReplicasMode"}
    bad = [m for m in mask if m not in allowed]
    if not mask or bad:
        raise invalid([("update_mask", f"cannot update {bad or 'nothing'}")])
    inst["state"] = "UPDATING"

    def finish():
        for m in mask:
            inst[m] = body.get(m)
        if inst.get("authEnabled") and not inst.get("_auth"):
            inst["_auth"] = uuid.uuid4().hex
        inst["state"] = "READY"
        return visible(inst)
    return lro(p, "redis", "update", inst["name"], delay("redis_update"), finish, REDIS_TYPE)


def redis_delete(p, q, body):
    inst = redis_instance(p)
    inst["state"] = "DELETING"

    def finish():
        gone = redis_instances(p).pop(p["instance"], None) or {}
        if gone.get("_process") is not None:
            gone["_process"].terminate()
        return {}
    return lro(p, "redis", "delete", inst["name"], delay("redis_delete"), finish, EMPTY_TYPE)


def redis_auth(p, q, body):
    inst = redis_instance(p)
    return {"authString": inst.get("_auth", "")}


def lro_get(p, q, body):
    name = f"projects/{p['project']}/locations/{p['location']}/operations/{p['operation']}"
    op = OPS.get(name)
    if op is None:
        raise not_found(name)
    return op["rec"]


# ---------------------------------------------------------------- Secret Manager

def secrets(p):
    return coll(f"secretmanager/projects/{p['project']}/secrets")


def secret(p):
    s = secrets(p).get(p["secret"])
    if s is None:
        raise not_found(f"projects/{p['project']}/secrets/{p['secret']}")
    return s


def secret_create(p, q, body):
    sid = (q.get("secretId") or [""])[0]
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", sid):
        raise invalid([("secret_id", "must be 1-255 letters, digits, _ or -")])
    if not body.get("replication"):
        raise invalid([("secret.replication", "is required")])
    c = secrets(p)
    if sid in c:
        raise exists(f"projects/{p['project']}/secrets/{sid}")
    res = dict(body)
    res.update(name=f"projects/{p['project']}/secrets/{sid}", createTime=now_rfc3339(), etag='"%x"' % time.time_ns())
    c[sid] = res
    SECRETS[res["name"]] = []
    return res


def secret_get(p, q, body):
    return secret(p)


def secret_list(p, q, body):
    items = [s for s in secrets(p).values() if matches(s, (q.get("filter") or [""])[0])]
    chunk, token = page(items, q, "pageSize", 25000)
    out = {"secrets": chunk, "totalSize": len(items)}
    if token:
        out["nextPageToken"] = token
    return out


def secret_patch(p, q, body):
    s = secret(p)
    mask = [m for m in (q.get("updateMask") or [""])[0].split(",") if m]
    if not mask:
        raise invalid([("update_mask", "is required")])
    for m in mask:
        s[m] = body.get(m)
    s["etag"] = '"%x"' % time.time_ns()
    return s


def secret_delete(p, q, body):
    s = secret(p)
    secrets(p).pop(p["secret"], None)
    SECRETS.pop(s["name"], None)
    return {}


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def version_rec(s, n):
    return {"name": f"{s['name']}/versions/{n}", "state": "ENABLED", "createTime": now_rfc3339(),
            "replicationStatus": {"automatic": {}}, "etag": '"%d"' % n}


def secret_add_version(p, q, body):
    s = secret(p)
    try:
        data = base64.b64decode((body.get("payload") or {}).get("data", ""), validate=True)
    except ValueError:
        raise invalid([("payload.data", "is not base64")])
    want = (body.get("payload") or {}).get("dataCrc32c")
    if want is not None and int(want) != crc32c(data):
        raise invalid([("payload.data_crc32c", "does not match the data")])
    SECRETS[s["name"]].append(data)
    return version_rec(s, len(SECRETS[s["name"]]))


def version_number(s, v):
    versions = SECRETS[s["name"]]
    n = len(versions) if v == "latest" else int(v) if v.isdigit() else 0
    if n < 1 or n > len(versions):
        raise not_found(f"{s['name']}/versions/{v}")
    return n


def secret_access(p, q, body):
    s = secret(p)
    n = version_number(s, p["version"])
    data = SECRETS[s["name"]][n - 1]
    return {"name": f"{s['name']}/versions/{n}",
            "payload": {"data": base64.b64encode(data).decode(), "dataCrc32c": str(crc32c(data))}}


def secret_version_get(p, q, body):
    s = secret(p)
    return version_rec(s, version_number(s, p["version"]))


def secret_version_list(p, q, body):
    s = secret(p)
    items = [version_rec(s, n) for n in range(len(SECRETS[s["name"]]), 0, -1)]
    chunk, token = page(items, q, "pageSize", 25000)
    out = {"versions": chunk, "totalSize": len(items)}
    if token:
        out["nextPageToken"] = token
    return out


# ---------------------------------------------------------------- IAM

POLICIES = {}    # resource -> IAM policy


def accounts(p):
    return coll(f"iam/projects/{p['project']}/serviceAccounts")


def account(p):
    a = accounts(p).get(p["account"])
    if a is None:
        a = next((x for x in accounts(p).values() if x["uniqueId"] == p["account"]), None)
    if a is None:
        raise not_found(f"projects/{p['project']}/serviceAccounts/{p['account']}")
    return a


def account_create(p, q, body):
    aid = body.get("accountId", "")
    if not re.fullmatch(r"[a-z]([-a-z0-9]{4,28}[a-z0-9])", aid or ""):
        raise invalid([("account_id", "must be 6-30 lowercase letters, digits or hyphens, starting with a letter")])
    email = f"{aid}@{p['project']}.iam.gserviceaccount.com"
    c = accounts(p)
    if email in c:
        raise exists(f"projects/{p['project']}/serviceAccounts/{email}")
    sa = body.get("serviceAccount") or {}
    uid = str(10**20 + len(STORE) * 1000 + len(c))
    res = {"name": f"projects/{p['project']}/serviceAccounts/{email}", "projectId": p["project"], "uniqueId": uid,
           "email": email, "displayName": sa.get("displayName", ""), "description": sa.get("description", ""),
           "etag": base64.b64encode(b"sa-1").decode(), "oauth2ClientId": uid}
    c[email] = res
    return res


def account_get(p, q, body):
    return account(p)


def account_list(p, q, body):
    chunk, token = page(list(accounts(p).values()), q, "pageSize", 100)
    out = {"accounts": chunk}
    if token:
        out["nextPageToken"] = token
    return out


def account_patch(p, q, body):
    a = account(p)
    sa = body.get("serviceAccount") or {}
    mask = body.get("updateMask") or ""
    for field in [m for m in mask.split(",") if m]:
        key = {"display_name": "displayName"}.get(field, field)
        if key not in ("displayName", "description"):
            raise invalid([("update_mask", f"cannot update {field}")])
        a[key] = sa.get(key, "")
    return a


def account_delete(p, q, body):
    a = account(p)
    accounts(p).pop(a["email"], None)
    POLICIES.pop(a["name"], None)
    return {}


def policy_of(resource, default_bindings):
    return POLICIES.setdefault(resource, {"version": 1, "etag": base64.b64encode(b"etag-0").decode(),
                                          "bindings": default_bindings})


def set_policy(resource, body, default_bindings):
    current = policy_of(resource, default_bindings)
    new = body.get("policy") or {}
    if new.get("etag") not in (None, "", current["etag"]):
        raise ApiError(409, "ABORTED", "There were concurrent policy changes. Please retry the whole "
                       "read-modify-write with exponential backoff.", "aborted")
    for b in new.get("bindings") or []:
        if not b.get("role") or not b.get("members"):
            raise invalid([("policy.bindings", "a binding needs a role and members")])
    n = int(base64.b64decode(current["etag"]).decode().split("-")[1]) + 1
    POLICIES[resource] = {"version": new.get("version") or 1, "etag": base64.b64encode(f"etag-{n}".encode()).decode(),
                          "bindings": new.get("bindings") or []}
    return POLICIES[resource]


def account_get_policy(p, q, body):
    return policy_of(account(p)["name"], [])


def account_set_policy(p, q, body):
    return set_policy(account(p)["name"], body, [])


# A project starts with its owner, whom the tool must never remove.
PROJECT_OWNER = [{"role": "roles/owner", "members": ["user:owner@example.com"]}]


def project_get_policy(p, q, body):
    return policy_of(f"projects/{p['project']}", json.loads(json.dumps(PROJECT_OWNER)))


def project_set_policy(p, q, body):
    return set_policy(f"projects/{p['project']}", body, json.loads(json.dumps(PROJECT_OWNER)))


# ---------------------------------------------------------------- Service Networking
# Private services access: a peering between a consumer network and Google's
# producers over reserved ranges. Cloud SQL private IP and Memorystore's
# PRIVATE_SERVICE_ACCESS are refused until it exists, as Google refuses them.
# Networks are named by project number here, as Google documents it.

def project_number(project):
    import hashlib
    return str(int(hashlib.sha256(project.encode()).hexdigest(), 16) % 10**12 + 10**11)


def project_of(ident):
    """A project id from an id or a number (numbers of projects seen so far)."""
    if not ident.isdigit():
        return ident
    for known in list(BY_PROJECT) + list(PROJECTS_SEEN):
        if project_number(known) == ident:
            return known
    return ident


PROJECTS_SEEN = set()

# Which APIs a project has enabled: absent, every API (a project made before
# the double tracked them); a set, exactly those (a fresh project, as
# POST /__double/project {"fresh": true} makes it: only the APIs Google
# enables on every new project, Service Usage among them).
PROJECT_SERVICES = {}
DEFAULT_SERVICES = {"serviceusage.googleapis.com", "cloudresourcemanager.googleapis.com",
                    "logging.googleapis.com", "monitoring.googleapis.com", "storage.googleapis.com"}
# A route's API, by the first part of its Discovery method id.
API_OF = {"compute": "compute.googleapis.com", "container": "container.googleapis.com",
          "sql": "sqladmin.googleapis.com", "redis": "redis.googleapis.com",
          "secretmanager": "secretmanager.googleapis.com", "iam": "iam.googleapis.com",
          "servicenetworking": "servicenetworking.googleapis.com",
          "cloudresourcemanager": "cloudresourcemanager.googleapis.com",
          "serviceusage": "serviceusage.googleapis.com", "logging": "logging.googleapis.com",
          "storage": "storage.googleapis.com"}
API_TITLES = {"compute.googleapis.com": "Compute Engine API", "container.googleapis.com": "Kubernetes Engine API",
              "sqladmin.googleapis.com": "Cloud SQL Admin API", "redis.googleapis.com": "Google Cloud Memorystore for Redis API",
              "secretmanager.googleapis.com": "Secret Manager API", "iam.googleapis.com": "Identity and Access Management (IAM) API",
              "servicenetworking.googleapis.com": "Service Networking API"}


def service_disabled(project, route_id):
    """Google's 403 SERVICE_DISABLED when the route's API is not enabled on
    the project, else None."""
    enabled = PROJECT_SERVICES.get(project_of(project or ""))
    api = API_OF.get(route_id.split(".")[0])
    if enabled is None or api is None or api in enabled:
        return None
    number = project_number(project_of(project))
    title = API_TITLES.get(api, api)
    e = ApiError(403, "PERMISSION_DENIED",
                 f"{title} has not been used in project {number} before or it is disabled. Enable it by visiting "
                 f"https://console.developers.google.com/apis/api/{api}/overview?project={number} then retry. "
                 "If you enabled this API recently, wait a few minutes for the action to propagate to our systems and retry.",
                 "accessNotConfigured", legacy=route_id.startswith(("compute.", "sql.")))
    body = e.body()
    body["error"].setdefault("details", []).append({
        "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "SERVICE_DISABLED",
        "domain": "googleapis.com", "metadata": {"service": api, "consumer": f"projects/{number}"}})
    return body


def usage_service(p):
    project = project_of(p["project"])
    enabled = PROJECT_SERVICES.get(project)
    state = "ENABLED" if enabled is None or p["service"] in enabled else "DISABLED"
    number = project_number(project)
    return {"name": f"projects/{number}/services/{p['service']}", "parent": f"projects/{number}",
            "config": {"name": p["service"], "title": API_TITLES.get(p["service"], p["service"])}, "state": state}


def usage_check(p):
    if p["kind"] != "projects":
        raise invalid([("name", "must be projects/PROJECT/services/SERVICE")])
    if not re.match(r"^[a-z][a-z0-9-]*\.googleapis\.com$", p.get("service", "x.googleapis.com")):
        raise ApiError(403, "PERMISSION_DENIED", f"Not found or permission denied for service(s): {p['service']}.",
                       "forbidden")


def usage_get(p, q, body):
    usage_check(p)
    return usage_service(p)


def usage_list(p, q, body):
    usage_check(p)
    project = project_of(p["project"])
    enabled = PROJECT_SERVICES.get(project)
    names = sorted(enabled if enabled is not None else set(API_OF.values()) | DEFAULT_SERVICES)
    items = [usage_service(dict(p, service=n)) for n in names]
    flt = (q.get("filter") or [""])[0]
    if flt == "state:ENABLED":
        items = [i for i in items if i["state"] == "ENABLED"]
    elif flt and flt != "state:DISABLED":
        raise invalid([("filter", "must be state:ENABLED or state:DISABLED")])
    elif flt == "state:DISABLED":
        items = []
    return {"services": items}


def usage_set(enable):
    def handler(p, q, body):
        usage_check(p)
        project = project_of(p["project"])
        enabled = PROJECT_SERVICES.get(project)
        if enabled is not None:
            if enable:
                enabled.add(p["service"])
            else:
                enabled.discard(p["service"])
        # Enabling answers with an operation that is already done, as
        # Service Usage does for an API it enables at once.
        return {"name": f"operations/noop.DONE_OPERATION.{uuid.uuid4().hex[:8]}", "done": True,
                "response": {"@type": "type.googleapis.com/google.api.serviceusage.v1.%s" %
                             ("EnableServiceResponse" if enable else "DisableServiceResponse"),
                             "service": usage_service(p)}}
    return handler


def project_get(p, q, body):
    PROJECTS_SEEN.add(p["project"])
    return {"name": f"projects/{project_number(p['project'])}", "projectId": p["project"],
            "state": "ACTIVE", "displayName": p["project"], "parent": "organizations/1",
            "createTime": "2020-01-01T00:00:00Z"}


def network_key(network):
    """projects/ID/global/networks/NAME from a link or a name with an id or a number."""
    m = re.search(r"projects/([^/]+)/global/networks/([^/]+)$", network or "")
    if not m:
        return None
    return f"projects/{project_of(m.group(1))}/global/networks/{m.group(2)}"


def sn_connections():
    return coll("servicenetworking/connections")


def sn_op(finish, seconds):
    name = "operations/pssn.p24-%d-%s" % (int(time.time() * 1000), uuid.uuid4().hex[:12])
    rec = {"name": name, "done": False}
    OPS[name] = {"style": "sn", "rec": rec}

    def done():
        try:
            resp = finish()
            rec["response"] = dict(resp or {}, **{"@type": "type.googleapis.com/google.cloud.servicenetworking.v1.Connection"})
        except ApiError as e:
            rec["error"] = {"code": e.code, "message": e.message}
        rec["done"] = True
    later(seconds, done)
    return dict(rec)


def sn_check(network, ranges):
    key = network_key(network)
    v = []
    if key is None:
        v.append(("connection.network", "must be projects/{project}/global/networks/{network}"))
    if not ranges:
        v.append(("connection.reserved_peering_ranges", "at least one allocated range is required"))
    if v:
        raise invalid(v)
    project = key.split("/")[1]
    addrs = coll(f"compute/projects/{project}/global/addresses")
    for r in ranges:
        a = addrs.get(r)
        if a is None or a.get("purpose") != "VPC_PEERING" or network_key(a.get("network", "")) != key:
            raise ApiError(400, "FAILED_PRECONDITION",
                           f"Allocated IP range '{r}' not found in network '{key}' (a global address with purpose VPC_PEERING).",
                           "failedPrecondition")
    return key


def sn_create(p, q, body):
    if p["service"] != "servicenetworking.googleapis.com":
        raise not_found(f"services/{p['service']}")
    key = sn_check(body.get("network"), body.get("reservedPeeringRanges") or [])
    conns = sn_connections()
    have = conns.get(key)
    if have is not None and sorted(have["reservedPeeringRanges"]) != sorted(body["reservedPeeringRanges"]):
        raise ApiError(400, "FAILED_PRECONDITION", "Cannot modify allocated ranges in CreateConnection. "
                       "Please use UpdateConnection.", "failedPrecondition")

    def finish():
        conns[key] = {"network": body["network"], "reservedPeeringRanges": list(body["reservedPeeringRanges"]),
                      "peering": "servicenetworking-googleapis-com", "service": "services/servicenetworking.googleapis.com"}
        return conns[key]
    return sn_op(finish, delay("sn_connect"))


def sn_list(p, q, body):
    key = network_key((q.get("network") or [""])[0])
    if key is None:
        raise invalid([("network", "is required: projects/{project}/global/networks/{network}")])
    c = sn_connections().get(key)
    return {"connections": [c]} if c else {}


def sn_patch(p, q, body):
    key = sn_check(body.get("network"), body.get("reservedPeeringRanges") or [])
    conns = sn_connections()
    if key not in conns:
        raise not_found(f"services/{p['service']}/connections/{p['connection']}")

    def finish():
        conns[key]["reservedPeeringRanges"] = list(body["reservedPeeringRanges"])
        return conns[key]
    return sn_op(finish, delay("sn_connect"))


def sn_delete(p, q, body):
    key = network_key(body.get("consumerNetwork"))
    if key is None:
        raise invalid([("consumer_network", "must be projects/{project}/global/networks/{network}")])
    conns = sn_connections()
    if key not in conns:
        raise not_found(f"services/{p['service']}/connections/{p['connection']}")
    project = key.split("/")[1]
    users = [i["name"] for i in sql_instances({"project": project}).values()
             if network_key(((i.get("settings") or {}).get("ipConfiguration") or {}).get("privateNetwork", "")) == key]
    if users:
        raise ApiError(400, "FAILED_PRECONDITION", "Producer services (e.g. CloudSQL, Cloud Memstore, etc.) are still "
                       f"using this connection: {', '.join(users)}", "failedPrecondition")

    def finish():
        conns.pop(key, None)
        return {}
    return sn_op(finish, delay("sn_connect"))


def sn_op_get(p, q, body):
    name = f"operations/{p['operation']}"
    op = OPS.get(name)
    if op is None or op["style"] != "sn":
        raise not_found(name)
    return op["rec"]


def require_private_access(network, what, legacy=False):
    """Google's refusal of a private address without the peering."""
    key = network_key(network or "")
    if key is None or key not in sn_connections():
        raise ApiError(400, "FAILED_PRECONDITION",
                       f"{what}: private services access is not configured for network '{network}': create a "
                       "connection with service 'servicenetworking.googleapis.com' over an allocated range first.",
                       "failedPrecondition", legacy=legacy)


# ---------------------------------------------------------------- Cloud Armor

ARMOR_SETS = {b + s for b in ("sqli", "xss", "lfi", "rfi", "rce", "methodenforcement", "scannerdetection",
                              "protocolattack", "php", "sessionfixation")
              for s in ("-v33-stable", "-v33-canary", "-stable", "-canary")}
ARMOR_SETS |= {"java-v33-stable", "java-v33-canary", "nodejs-v33-stable", "nodejs-v33-canary",
               "cve-canary", "json-sqli-canary"}
ARMOR_WINDOWS = {10, 30, 60, 120, 180, 240, 300, 600, 900, 1200, 1800, 2700, 3600}
ARMOR_KEYS = {"ALL", "IP", "HTTP_HEADER", "XFF_IP", "HTTP_COOKIE", "HTTP_PATH", "SNI", "REGION_CODE",
              "TLS_JA3_FINGERPRINT", "USER_IP"}
DEFAULT_RULE = 2147483647
ARMOR_USERS = {}  # "projects/P/global/securityPolicies/N" -> {backend service, ...} (GKE's controller's)


def armor_path(p):
    return f"projects/{p['project']}/global/securityPolicies"


def armor_rule_check(rule, field):
    """Cloud Armor's own refusals of a rule: actions, matches, the
    preconfigured WAF sets and the rate limit's options."""
    v = []
    try:
        priority = int(rule.get("priority"))
    except (TypeError, ValueError):
        priority = -1
    if not 0 <= priority <= DEFAULT_RULE:
        v.append((f"{field}.priority", "must be 0 to 2147483647"))
    action = rule.get("action") or ""
    match = rule.get("match") or {}
    if action not in ("allow", "deny(403)", "deny(404)", "deny(502)", "throttle", "rate_based_ban", "redirect"):
        v.append((f"{field}.action", f"'{action}' is not an action Cloud Armor takes"))
    expr = (match.get("expr") or {}).get("expression")
    if expr:
        for name in re.findall(r"evaluatePreconfigured(?:Waf|Expr)\(\s*'([^']*)'", expr):
            if name not in ARMOR_SETS:
                v.append((f"{field}.match.expr.expression", f"'{name}' is not a preconfigured expression set"))
    elif match.get("versionedExpr") == "SRC_IPS_V1":
        ranges = (match.get("config") or {}).get("srcIpRanges") or []
        if not ranges or len(ranges) > 10:
            v.append((f"{field}.match.config.srcIpRanges", "needs 1 to 10 ranges"))
    else:
        v.append((f"{field}.match", "needs an expr or a versionedExpr with its config"))
    if priority == DEFAULT_RULE and (expr or (match.get("config") or {}).get("srcIpRanges") != ["*"]):
        v.append((f"{field}.match", "the default rule must match every source ('*')"))
    options = rule.get("rateLimitOptions")
    if action in ("throttle", "rate_based_ban"):
        o = options or {}
        threshold = o.get("rateLimitThreshold") or {}
        try:
            count, interval = int(threshold.get("count", 0)), int(threshold.get("intervalSec", 0))
        except (TypeError, ValueError):
            count, interval = 0, 0
        if count <= 0:
            v.append((f"{field}.rateLimitOptions.rateLimitThreshold.count", "must be positive"))
        if interval not in ARMOR_WINDOWS:
            v.append((f"{field}.rateLimitOptions.rateLimitThreshold.intervalSec",
                      f"{interval} is not one of {sorted(ARMOR_WINDOWS)}"))
        if o.get("conformAction") != "allow":
            v.append((f"{field}.rateLimitOptions.conformAction", "must be 'allow'"))
        if o.get("exceedAction") not in ("deny(403)", "deny(404)", "deny(429)", "deny(502)", "redirect"):
            v.append((f"{field}.rateLimitOptions.exceedAction", "must be deny(STATUS) or redirect"))
        if o.get("enforceOnKey", "ALL") not in ARMOR_KEYS:
            v.append((f"{field}.rateLimitOptions.enforceOnKey", f"'{o.get('enforceOnKey')}' is not a key"))
    elif options:
        v.append((f"{field}.rateLimitOptions", "is only for the throttle and rate_based_ban actions"))
    return v, priority


def armor_rule(rule, priority):
    out = dict(rule, kind="compute#securityPolicyRule", priority=priority)
    out.setdefault("preview", False)
    return out


def armor_fingerprint():
    return base64.urlsafe_b64encode(os.urandom(8)).decode()


def armor_get_policy(p):
    res = coll("compute/" + armor_path(p)).get(p["securityPolicy"])
    if res is None:
        raise not_found(f"{armor_path(p)}/{p['securityPolicy']}", legacy=True)
    return res


def armor_insert(p, q, body):
    v = []
    if not NAME_RE.match(body.get("name") or ""):
        v.append(("resource.name", "must match [a-z]([-a-z0-9]{0,61}[a-z0-9])?"))
    if body.get("type", "CLOUD_ARMOR") not in ("CLOUD_ARMOR", "CLOUD_ARMOR_EDGE"):
        v.append(("resource.type", "a global policy is CLOUD_ARMOR or CLOUD_ARMOR_EDGE"))
    rules, seen = [], set()
    for i, r in enumerate(body.get("rules") or []):
        rv, priority = armor_rule_check(r, f"resource.rules[{i}]")
        v += rv
        if priority in seen:
            v.append((f"resource.rules[{i}].priority", "Cannot have rules with the same priorities."))
        seen.add(priority)
        rules.append(armor_rule(r, priority))
    if v:
        raise invalid(v, legacy=True)
    if DEFAULT_RULE not in seen:
        rules.append(armor_rule({"action": "allow", "description": "default rule", "match": {
            "versionedExpr": "SRC_IPS_V1", "config": {"srcIpRanges": ["*"]}}}, DEFAULT_RULE))
    c = coll("compute/" + armor_path(p))
    link = f"{COMPUTE}{armor_path(p)}/{body['name']}"
    if body["name"] in c:
        raise exists(f"{armor_path(p)}/{body['name']}", legacy=True)
    res = dict(body, kind="compute#securityPolicy", id=str(uuid.uuid4().int % 10**18),
               creationTimestamp=now_rfc3339(), selfLink=link, type=body.get("type", "CLOUD_ARMOR"),
               rules=sorted(rules, key=lambda r: r["priority"]), fingerprint=armor_fingerprint())
    c[body["name"]] = res  # reserved at once: a second insert of the name is refused
    return compute_op(p["project"], None, link, "insert", delay("compute"), lambda: None)


def armor_patch(p, q, body):
    res = armor_get_policy(p)
    if "rules" in body:
        raise invalid([("resource.rules", "rules cannot be changed by patch; use addRule, patchRule and removeRule")],
                      legacy=True)
    if body.get("fingerprint") != res["fingerprint"]:
        raise precondition("Supplied fingerprint does not match current resource fingerprint.", legacy=True)
    for k in ("name", "type"):
        if k in body and body[k] != res.get(k):
            raise invalid([(f"resource.{k}", "cannot be changed")], legacy=True)
    res.update({k: v for k, v in body.items() if k not in ("fingerprint", "kind", "id", "selfLink")})
    res["fingerprint"] = armor_fingerprint()
    return compute_op(p["project"], None, res["selfLink"], "patch", delay("compute"), lambda: None)


def armor_priority(q):
    try:
        return int((q.get("priority") or [""])[0])
    except ValueError:
        raise invalid([("priority", "is required")], legacy=True)


def armor_add_rule(p, q, body):
    res = armor_get_policy(p)
    v, priority = armor_rule_check(body, "resource")
    if v:
        raise invalid(v, legacy=True)
    if any(r["priority"] == priority for r in res["rules"]):
        raise invalid([("resource.priority", "Cannot have rules with the same priorities.")], legacy=True)
    res["rules"] = sorted(res["rules"] + [armor_rule(body, priority)], key=lambda r: r["priority"])
    res["fingerprint"] = armor_fingerprint()
    return compute_op(p["project"], None, res["selfLink"], "addSecurityPolicyRule", delay("compute"), lambda: None)


def armor_patch_rule(p, q, body):
    res = armor_get_policy(p)
    priority = armor_priority(q)
    old = next((r for r in res["rules"] if r["priority"] == priority), None)
    if old is None:
        raise invalid([("priority", f"no rule has priority {priority}")], legacy=True)
    merged = dict(old, **body)
    v, new_priority = armor_rule_check(merged, "resource")
    if v:
        raise invalid(v, legacy=True)
    res["rules"] = sorted([r for r in res["rules"] if r is not old] + [armor_rule(merged, new_priority)],
                          key=lambda r: r["priority"])
    res["fingerprint"] = armor_fingerprint()
    return compute_op(p["project"], None, res["selfLink"], "patchSecurityPolicyRule", delay("compute"), lambda: None)


def armor_remove_rule(p, q, body):
    res = armor_get_policy(p)
    priority = armor_priority(q)
    if priority == DEFAULT_RULE:
        raise invalid([("priority", "the default rule cannot be removed")], legacy=True)
    if not any(r["priority"] == priority for r in res["rules"]):
        raise invalid([("priority", f"no rule has priority {priority}")], legacy=True)
    res["rules"] = [r for r in res["rules"] if r["priority"] != priority]
    res["fingerprint"] = armor_fingerprint()
    return compute_op(p["project"], None, res["selfLink"], "removeSecurityPolicyRule", delay("compute"), lambda: None)


def armor_get_rule(p, q, body):
    res = armor_get_policy(p)
    priority = armor_priority(q)
    rule = next((r for r in res["rules"] if r["priority"] == priority), None)
    if rule is None:
        raise invalid([("priority", f"no rule has priority {priority}")], legacy=True)
    return rule


def armor_delete(p, q, body):
    res = armor_get_policy(p)
    path = f"{armor_path(p)}/{p['securityPolicy']}"
    users = sorted(ARMOR_USERS.get(path) or ())
    if users:
        raise ApiError(400, "FAILED_PRECONDITION",
                       f"The security_policy resource '{path}' is already being used by "
                       f"'projects/{p['project']}/global/backendServices/{users[0]}'",
                       "resourceInUseByAnotherResource", legacy=True)

    def finish():
        coll("compute/" + armor_path(p)).pop(p["securityPolicy"], None)
    return compute_op(p["project"], None, res["selfLink"], "delete", delay("compute"), finish)


def armor_attach(cfg):
    """GKE's Ingress controller setting (or clearing) a BackendConfig's
    security policy on the backend service it made: refused, as the
    controller's sync is, when the policy does not exist."""
    scope = f"projects/{cfg.get('project')}/global/securityPolicies"
    path = f"{scope}/{cfg.get('policy')}"
    with LOCK:
        users = ARMOR_USERS.setdefault(path, set())
        if not cfg.get("attach"):
            users.discard(cfg.get("backend"))
            return {"attached": False}
        if cfg.get("policy") not in coll(f"compute/{scope}"):
            return {"attached": False, "reason": f"The resource '{path}' was not found"}
        users.add(cfg.get("backend"))
        return {"attached": True}


# ---------------------------------------------------------------- Cloud Storage
#
# Buckets and their objects (JSON API v1). What Google refuses is refused:
# a bucket name taken (names are global, whoever holds them), a name outside
# the naming rules, deleting a bucket that still holds objects, deleting or
# overwriting an object younger than the bucket's retention period, a
# composite of more than 32 sources. Objects are kept in memory.

STORAGE = "https://storage.googleapis.com/storage/v1/"
BUCKETS = {}     # name -> bucket resource
OBJECTS = {}     # (bucket, name) -> {"meta": object resource, "data": bytes}
BUCKET_NAME_RE = re.compile(r"^[a-z0-9][-a-z0-9_.]{1,61}[a-z0-9]$")
STORAGE_CLASSES = {"STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE"}


class Media:
    """An answer that is the object's bytes, not JSON (`alt=media`)."""

    def __init__(self, data):
        self.data = data


def storage_error(code, message, reason):
    status = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND",
              409: "ALREADY_EXISTS", 412: "FAILED_PRECONDITION"}.get(code, "UNKNOWN")
    return ApiError(code, status, message, reason, legacy=True)


def bucket_of(name):
    b = BUCKETS.get(name)
    if b is None:
        raise storage_error(404, "The specified bucket does not exist.", "notFound")
    return b


def bucket_settle(b, body):
    """The bucket's settings from `body` (insert or patch), checked."""
    for key in ("labels", "versioning", "lifecycle", "retentionPolicy", "iamConfiguration", "storageClass"):
        if key in body:
            b[key] = body[key]
    sc = b.get("storageClass", "STANDARD")
    if sc not in STORAGE_CLASSES:
        raise storage_error(400, f"Invalid argument: storage class {sc}", "invalid")
    retention = b.get("retentionPolicy") or {}
    if retention:
        try:
            seconds = int(retention.get("retentionPeriod", "0"))
        except ValueError:
            raise storage_error(400, "Invalid argument: retentionPeriod", "invalid")
        if seconds <= 0 or seconds > 3155760000:
            raise storage_error(400, "The retention period must be between 1 second and 100 years.", "invalid")
        retention.setdefault("effectiveTime", now_rfc3339())
        retention["retentionPeriod"] = str(seconds)
    for rule in (b.get("lifecycle") or {}).get("rule") or []:
        kind = (rule.get("action") or {}).get("type")
        if kind not in ("Delete", "SetStorageClass", "AbortIncompleteMultipartUpload"):
            raise storage_error(400, f"Invalid argument: lifecycle action {kind}", "invalid")
        if not rule.get("condition"):
            raise storage_error(400, "A lifecycle rule needs a condition.", "invalid")
    iam = b.setdefault("iamConfiguration", {})
    ubla = iam.get("uniformBucketLevelAccess") or iam.get("bucketPolicyOnly") or {"enabled": False}
    iam["uniformBucketLevelAccess"] = {"enabled": bool(ubla.get("enabled"))}
    iam["bucketPolicyOnly"] = {"enabled": bool(ubla.get("enabled"))}
    iam["publicAccessPrevention"] = iam.get("publicAccessPrevention") or "inherited"
    if iam["publicAccessPrevention"] not in ("inherited", "enforced"):
        raise storage_error(400, "Invalid argument: publicAccessPrevention", "invalid")
    b["metageneration"] = str(int(b.get("metageneration", "0")) + 1)
    b["updated"] = now_rfc3339()


def bucket_insert(p, q, body):
    project = (q.get("project") or [""])[0]
    if not project:
        raise storage_error(400, "Required parameter: project", "required")
    name = body.get("name", "")
    if not BUCKET_NAME_RE.match(name) or ".." in name or name.startswith("goog"):
        raise storage_error(400, f"Invalid bucket name: '{name}'", "invalid")
    if name in BUCKETS:
        if BUCKETS[name]["_project"] == project_of(project):
            raise storage_error(409, "Your previous request to create the named bucket succeeded and you already own it.", "conflict")
        raise storage_error(409, "The requested bucket name is not available. The bucket namespace is shared by all users "
                                 "of the system. Please select a different name and try again.", "conflict")
    b = {"kind": "storage#bucket", "id": name, "name": name, "selfLink": STORAGE + "b/" + name,
         "projectNumber": project_number(project_of(project)), "location": (body.get("location") or "US").upper(),
         "locationType": "region" if "-" in (body.get("location") or "") else "multi-region",
         "timeCreated": now_rfc3339(), "etag": uuid.uuid4().hex[:8], "_project": project_of(project)}
    bucket_settle(b, body)
    BUCKETS[name] = b
    return bucket_view(b)


def bucket_view(b):
    return {k: v for k, v in b.items() if not k.startswith("_")}


def bucket_get(p, q, body):
    return bucket_view(bucket_of(p["bucket"]))


def bucket_list(p, q, body):
    project = project_of((q.get("project") or [""])[0])
    items = [bucket_view(b) for n, b in sorted(BUCKETS.items()) if b["_project"] == project]
    prefix = (q.get("prefix") or [""])[0]
    items = [b for b in items if b["name"].startswith(prefix)]
    chunk, token = page(items, q, "maxResults", 1000)
    out = {"kind": "storage#buckets", "items": chunk}
    if token:
        out["nextPageToken"] = token
    return out


def bucket_patch(p, q, body):
    b = bucket_of(p["bucket"])
    if "name" in body and body["name"] != b["name"]:
        raise storage_error(400, "A bucket cannot be renamed.", "invalid")
    if (b.get("retentionPolicy") or {}).get("isLocked") and "retentionPolicy" in body:
        raise storage_error(403, "Cannot reduce retention duration of a locked retention policy.", "forbidden")
    bucket_settle(b, body)
    return bucket_view(b)


def bucket_delete(p, q, body):
    b = bucket_of(p["bucket"])
    if any(key[0] == b["name"] for key in OBJECTS):
        raise storage_error(409, "The bucket you tried to delete is not empty.", "conflict")
    del BUCKETS[b["name"]]
    return {}


def object_held(b, obj):
    """Google's 403 when the bucket's retention still holds the object."""
    period = int((b.get("retentionPolicy") or {}).get("retentionPeriod") or 0)
    if period and time.time() < obj["_created"] + period:
        until = now_rfc3339(obj["_created"] + period)
        raise storage_error(403, f"Object '{b['name']}/{obj['name']}' is subject to bucket's retention policy or "
                                 f"object retention and cannot be deleted or overwritten until {until}", "retentionPolicyNotMet")


def object_put(b, name, data, content_type):
    if not name or len(name.encode()) > 1024 or "\n" in name or "\r" in name:
        raise storage_error(400, "The object name is not valid.", "invalid")
    old = OBJECTS.get((b["name"], name))
    if old is not None:
        object_held(b, old["meta"])
    created = time.time()
    meta = {"kind": "storage#object", "id": f"{b['name']}/{name}/{int(created * 1e6)}", "name": name,
            "bucket": b["name"], "generation": str(int(created * 1e6)), "metageneration": "1",
            "contentType": content_type or "application/octet-stream", "size": str(len(data)),
            "timeCreated": now_rfc3339(created), "updated": now_rfc3339(created),
            "storageClass": b.get("storageClass", "STANDARD"), "selfLink": f"{STORAGE}b/{b['name']}/o/{name}",
            "_created": created}
    OBJECTS[(b["name"], name)] = {"meta": meta, "data": data}
    return object_view(meta)


def object_view(meta):
    return {k: v for k, v in meta.items() if not k.startswith("_")}


def object_insert(p, q, body):
    """The media upload (`uploadType=media`): the request's bytes are the object."""
    b = bucket_of(p["bucket"])
    if (q.get("uploadType") or [""])[0] != "media":
        raise storage_error(400, "Only uploadType=media is served by the test double.", "invalid")
    return object_put(b, (q.get("name") or [""])[0], CURRENT.pop("media", b""), CURRENT.pop("content_type", ""))


def object_of(p):
    b = bucket_of(p["bucket"])
    o = OBJECTS.get((b["name"], p["object"]))
    if o is None:
        raise storage_error(404, "No such object: %s/%s" % (b["name"], p["object"]), "notFound")
    return b, o


def object_get(p, q, body):
    _, o = object_of(p)
    if (q.get("alt") or ["json"])[0] == "media":
        return Media(o["data"])
    return object_view(o["meta"])


def object_list(p, q, body):
    b = bucket_of(p["bucket"])
    prefix = (q.get("prefix") or [""])[0]
    items = [object_view(o["meta"]) for (bn, n), o in sorted(OBJECTS.items()) if bn == b["name"] and n.startswith(prefix)]
    chunk, token = page(items, q, "maxResults", 1000)
    out = {"kind": "storage#objects", "items": chunk}
    if token:
        out["nextPageToken"] = token
    return out


def object_delete(p, q, body):
    b, o = object_of(p)
    object_held(b, o["meta"])
    del OBJECTS[(b["name"], p["object"])]
    return {}


def object_compose(p, q, body):
    b = bucket_of(p["destinationBucket"])
    sources = body.get("sourceObjects") or []
    if not sources:
        raise storage_error(400, "Required: sourceObjects", "required")
    if len(sources) > 32:
        raise storage_error(400, "The number of source components provided (%d) exceeds the maximum (32)" % len(sources),
                            "invalid")
    data = b""
    for s in sources:
        o = OBJECTS.get((b["name"], s.get("name", "")))
        if o is None:
            raise storage_error(404, "Object %s/%s not found" % (b["name"], s.get("name")), "notFound")
        data += o["data"]
    content_type = (body.get("destination") or {}).get("contentType", "")
    return object_put(b, p["destinationObject"], data, content_type)


# ---------------------------------------------------------------- routes

G = "/compute/v1/projects/{project}/global"
R = "/compute/v1/projects/{project}/regions/{region}"
L = "/v1/projects/{project}/locations/{location}"
C = L + "/clusters/{cluster}"
S = "/v1/projects/{project}/instances/{instance}"

# (Discovery method id, HTTP method, path template, handler)
# ---------------------------------------------------------------- Cloud Logging
# Every project has the `_Default` bucket (30 days) and sink, and the locked
# `_Required` ones (400 days). A deleted bucket stays DELETE_REQUESTED (7
# days on Google): its id is still taken and `undelete` brings it back.

LOG_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
LOG_LOCATION_RE = re.compile(r"^(global|[a-z]+(-[a-z]+)+[0-9]+|us|eu)$")


def log_buckets(p):
    c = coll(f"logging/projects/{p['project']}/buckets")
    if not c:
        for bid, days in (("_Default", 30), ("_Required", 400)):
            c[f"global/{bid}"] = {"name": f"projects/{p['project']}/locations/global/buckets/{bid}",
                                  "retentionDays": days, "lifecycleState": "ACTIVE",
                                  "locked": bid == "_Required", "createTime": now_rfc3339(),
                                  "updateTime": now_rfc3339()}
    return c


def log_bucket(p):
    b = log_buckets(p).get(f"{p['location']}/{p['bucket']}")
    if b is None:
        raise not_found(f"projects/{p['project']}/locations/{p['location']}/buckets/{p['bucket']}")
    return b


def check_retention(body):
    days = body.get("retentionDays")
    if days is not None and not (isinstance(days, int) and 1 <= days <= 3650):
        raise invalid([("retention_days", "must be between 1 and 3650 days")])


def log_bucket_create(p, q, body):
    bid = (q.get("bucketId") or [""])[0]
    if not LOG_ID_RE.match(bid):
        raise invalid([("bucket_id", "must be 1-100 letters, digits, underscores, hyphens or periods, "
                                     "starting with a letter or digit")])
    if not LOG_LOCATION_RE.match(p["location"]):
        raise invalid([("parent", f"location '{p['location']}' is not a supported location")])
    check_retention(body)
    c = log_buckets(p)
    key = f"{p['location']}/{bid}"
    if key in c:
        raise exists(f"projects/{p['project']}/locations/{p['location']}/buckets/{bid}")
    res = dict(body, name=f"projects/{p['project']}/locations/{p['location']}/buckets/{bid}",
               lifecycleState="ACTIVE", createTime=now_rfc3339(), updateTime=now_rfc3339())
    res.setdefault("retentionDays", 30)
    c[key] = res
    return res


def log_bucket_get(p, q, body):
    return log_bucket(p)


def log_bucket_list(p, q, body):
    items = [b for k, b in sorted(log_buckets(p).items()) if p["location"] in ("-", k.split("/")[0])]
    chunk, token = page(items, q, "pageSize", 50)
    out = {"buckets": chunk}
    if token:
        out["nextPageToken"] = token
    return out


def log_bucket_patch(p, q, body):
    b = log_bucket(p)
    mask = [m for m in (q.get("updateMask") or [""])[0].split(",") if m]
    if not mask:
        raise invalid([("update_mask", "is required")])
    if b["lifecycleState"] != "ACTIVE":
        raise precondition(f"Bucket {b['name']} is not active (it is {b['lifecycleState']})")
    if b.get("locked") and "retentionDays" in mask and body.get("retentionDays", 0) < b["retentionDays"]:
        raise precondition(f"Bucket {b['name']} is locked: its retention cannot be reduced")
    for m in mask:
        if m not in ("description", "retentionDays", "locked", "analyticsEnabled", "restrictedFields",
                     "indexConfigs", "cmekSettings"):
            raise invalid([("update_mask", f"field '{m}' cannot be updated")])
        check_retention(body)
        b[m] = body.get(m)
    b["updateTime"] = now_rfc3339()
    return b


def log_bucket_delete(p, q, body):
    b = log_bucket(p)
    if p["bucket"].startswith("_") or b.get("locked"):
        raise precondition(f"Bucket {b['name']} cannot be deleted")
    if b["lifecycleState"] == "DELETE_REQUESTED":
        raise not_found(b["name"])
    b["lifecycleState"] = "DELETE_REQUESTED"
    b["updateTime"] = now_rfc3339()
    return {}


def log_bucket_undelete(p, q, body):
    b = log_bucket(p)
    if b["lifecycleState"] != "DELETE_REQUESTED":
        raise precondition(f"Bucket {b['name']} is not deleted")
    b["lifecycleState"] = "ACTIVE"
    b["updateTime"] = now_rfc3339()
    return {}


def log_sinks(p):
    c = coll(f"logging/projects/{p['project']}/sinks")
    if not c:
        for sid, flt in (("_Default", 'NOT LOG_ID("cloudaudit.googleapis.com/activity") AND NOT '
                                      'LOG_ID("externalaudit.googleapis.com/activity")'),
                         ("_Required", 'LOG_ID("cloudaudit.googleapis.com/activity")')):
            c[sid] = {"name": sid, "filter": flt, "createTime": now_rfc3339(), "updateTime": now_rfc3339(),
                      "destination": f"logging.googleapis.com/projects/{p['project']}/locations/global/buckets/{sid}"}
    return c


def log_sink(p):
    s = log_sinks(p).get(p["sink"])
    if s is None:
        raise not_found(f"projects/{p['project']}/sinks/{p['sink']}")
    return s


def check_sink(p, body):
    dest = body.get("destination") or ""
    m = re.match(r"^logging\.googleapis\.com/projects/([^/]+)/locations/([^/]+)/buckets/([^/]+)$", dest)
    if m:
        b = log_buckets({"project": m.group(1)}).get(f"{m.group(2)}/{m.group(3)}")
        if b is None or b["lifecycleState"] != "ACTIVE":
            raise invalid([("sink.destination", f"log bucket '{dest}' does not exist")])
    elif not re.match(r"^(storage|bigquery|pubsub)\.googleapis\.com/.+", dest):
        raise invalid([("sink.destination", f"'{dest}' is not a valid destination")])
    flt = body.get("filter") or ""
    if flt.count('"') % 2 or flt.count("(") != flt.count(")"):
        raise invalid([("sink.filter", f"Unparseable filter: {flt}")])


def log_sink_create(p, q, body):
    sid = body.get("name") or ""
    if not LOG_ID_RE.match(sid):
        raise invalid([("sink.name", "must be 1-100 letters, digits, underscores, hyphens or periods")])
    check_sink(p, body)
    c = log_sinks(p)
    if sid in c:
        raise exists(f"projects/{p['project']}/sinks/{sid}")
    res = dict(body, createTime=now_rfc3339(), updateTime=now_rfc3339(),
               writerIdentity=f"serviceAccount:service-{project_number(p['project'])}@gcp-sa-logging.iam.gserviceaccount.com")
    c[sid] = res
    return res


def log_sink_get(p, q, body):
    return log_sink(p)


def log_sink_list(p, q, body):
    items = [s for _, s in sorted(log_sinks(p).items())]
    chunk, token = page(items, q, "pageSize", 50)
    out = {"sinks": chunk}
    if token:
        out["nextPageToken"] = token
    return out


def log_sink_patch(p, q, body):
    s = log_sink(p)
    # Google: an empty mask means destination, filter and includeChildren.
    mask = [m for m in (q.get("updateMask") or [""])[0].split(",") if m] or \
        ["destination", "filter", "includeChildren"]
    if p["sink"] == "_Required":
        raise precondition("The _Required sink cannot be changed")
    check_sink(p, dict(s, **{m: body.get(m) for m in mask}))
    for m in mask:
        if m not in ("destination", "filter", "description", "disabled", "exclusions", "includeChildren",
                     "bigqueryOptions", "outputVersionFormat"):
            raise invalid([("update_mask", f"field '{m}' cannot be updated")])
        s[m] = body.get(m)
    s["updateTime"] = now_rfc3339()
    return s


def log_sink_delete(p, q, body):
    log_sink(p)
    if p["sink"] == "_Required":
        raise precondition("The _Required sink cannot be deleted")
    log_sinks(p).pop(p["sink"])
    return {}



LB = "/v2/projects/{project}/locations/{location}/buckets"

ROUTES = [
    ("compute.networks.insert", "POST", G + "/networks", compute_insert("networks")),
    ("compute.networks.list", "GET", G + "/networks", compute_list("networks")),
    ("compute.networks.get", "GET", G + "/networks/{network}", compute_get("networks", "network")),
    ("compute.networks.patch", "PATCH", G + "/networks/{network}", compute_patch("networks", "network")),
    ("compute.networks.delete", "DELETE", G + "/networks/{network}", compute_delete("networks", "network")),
    ("compute.subnetworks.insert", "POST", R + "/subnetworks", compute_insert("subnetworks")),
    ("compute.subnetworks.list", "GET", R + "/subnetworks", compute_list("subnetworks")),
    ("compute.subnetworks.get", "GET", R + "/subnetworks/{subnetwork}", compute_get("subnetworks", "subnetwork")),
    ("compute.subnetworks.patch", "PATCH", R + "/subnetworks/{subnetwork}", compute_patch("subnetworks", "subnetwork")),
    ("compute.subnetworks.delete", "DELETE", R + "/subnetworks/{subnetwork}", compute_delete("subnetworks", "subnetwork")),
    ("compute.firewalls.insert", "POST", G + "/firewalls", compute_insert("firewalls")),
    ("compute.firewalls.list", "GET", G + "/firewalls", compute_list("firewalls")),
    ("compute.firewalls.get", "GET", G + "/firewalls/{firewall}", compute_get("firewalls", "firewall")),
    ("compute.firewalls.patch", "PATCH", G + "/firewalls/{firewall}", compute_patch("firewalls", "firewall")),
    ("compute.firewalls.delete", "DELETE", G + "/firewalls/{firewall}", compute_delete("firewalls", "firewall")),
    ("compute.routers.insert", "POST", R + "/routers", compute_insert("routers")),
    ("compute.routers.list", "GET", R + "/routers", compute_list("routers")),
    ("compute.routers.get", "GET", R + "/routers/{router}", compute_get("routers", "router")),
    ("compute.routers.patch", "PATCH", R + "/routers/{router}", compute_patch("routers", "router")),
    ("compute.routers.delete", "DELETE", R + "/routers/{router}", compute_delete("routers", "router")),
    ("compute.globalAddresses.insert", "POST", G + "/addresses", compute_insert("addresses")),
    ("compute.globalAddresses.list", "GET", G + "/addresses", compute_list("addresses")),
    ("compute.globalAddresses.get", "GET", G + "/addresses/{address}", compute_get("addresses", "address")),
    ("compute.globalAddresses.delete", "DELETE", G + "/addresses/{address}", compute_delete("addresses", "address")),
    ("compute.securityPolicies.insert", "POST", G + "/securityPolicies", armor_insert),
    ("compute.securityPolicies.list", "GET", G + "/securityPolicies", compute_list("securityPolicies")),
    ("compute.securityPolicies.get", "GET", G + "/securityPolicies/{securityPolicy}", lambda p, q, b: armor_get_policy(p)),
    ("compute.securityPolicies.patch", "PATCH", G + "/securityPolicies/{securityPolicy}", armor_patch),
    ("compute.securityPolicies.delete", "DELETE", G + "/securityPolicies/{securityPolicy}", armor_delete),
    ("compute.securityPolicies.addRule", "POST", G + "/securityPolicies/{securityPolicy}/addRule", armor_add_rule),
    ("compute.securityPolicies.patchRule", "POST", G + "/securityPolicies/{securityPolicy}/patchRule", armor_patch_rule),
    ("compute.securityPolicies.removeRule", "POST", G + "/securityPolicies/{securityPolicy}/removeRule", armor_remove_rule),
    ("compute.securityPolicies.getRule", "GET", G + "/securityPolicies/{securityPolicy}/getRule", armor_get_rule),
    ("compute.globalOperations.get", "GET", G + "/operations/{operation}", compute_op_get),
    ("compute.regionOperations.get", "GET", R + "/operations/{operation}", compute_op_get),

    ("container.projects.locations.getServerConfig", "GET", L + "/serverConfig", gke_server_config),
    ("container.projects.locations.clusters.create", "POST", L + "/clusters", gke_create),
    ("container.projects.locations.clusters.list", "GET", L + "/clusters", gke_list),
    ("container.projects.locations.clusters.get", "GET", C, gke_get),
    ("container.projects.locations.clusters.update", "PUT", C, gke_update),
    ("container.projects.locations.clusters.setResourceLabels", "POST", C + ":setResourceLabels", gke_labels),
    ("container.projects.locations.clusters.delete", "DELETE", C, gke_delete),
    ("container.projects.locations.clusters.nodePools.create", "POST", C + "/nodePools", pool_create),
    ("compute.instanceGroupManagers.aggregatedList", "GET", "/compute/v1/projects/{project}/aggregated/instanceGroupManagers", igm_aggregated_list),
    ("container.projects.locations.clusters.nodePools.list", "GET", C + "/nodePools", pool_list),
    ("container.projects.locations.clusters.nodePools.get", "GET", C + "/nodePools/{pool}", pool_get),
    ("container.projects.locations.clusters.nodePools.setSize", "POST", C + "/nodePools/{pool}:setSize",
     pool_change("SET_NODE_POOL_SIZE", set_size)),
    ("container.projects.locations.clusters.nodePools.setAutoscaling", "POST", C + "/nodePools/{pool}:setAutoscaling",
     pool_change("UPDATE_CLUSTER", set_autoscaling)),
    ("container.projects.locations.clusters.nodePools.setManagement", "POST", C + "/nodePools/{pool}:setManagement",
     pool_change("SET_NODE_POOL_MANAGEMENT", set_management)),
    ("container.projects.locations.clusters.nodePools.update", "PUT", C + "/nodePools/{pool}",
     pool_change("UPGRADE_NODES", pool_update)),
    ("container.projects.locations.clusters.nodePools.delete", "DELETE", C + "/nodePools/{pool}", pool_delete),

    ("redis.projects.locations.instances.create", "POST", L + "/instances", redis_create),
    ("redis.projects.locations.instances.list", "GET", L + "/instances", redis_list),
    ("redis.projects.locations.instances.get", "GET", L + "/instances/{instance}", redis_get),
    ("redis.projects.locations.instances.patch", "PATCH", L + "/instances/{instance}", redis_patch),
    ("redis.projects.locations.instances.delete", "DELETE", L + "/instances/{instance}", redis_delete),
    ("redis.projects.locations.instances.getAuthString", "GET", L + "/instances/{instance}/authString", redis_auth),
    # GKE's and Memorystore's operations share one path template; the name says whose it is
    ("container.projects.locations.operations.get", "GET", L + "/operations/{operation}", None),

    ("logging.projects.locations.buckets.create", "POST", LB, log_bucket_create),
    ("logging.projects.locations.buckets.list", "GET", LB, log_bucket_list),
    ("logging.projects.locations.buckets.get", "GET", LB + "/{bucket}", log_bucket_get),
    ("logging.projects.locations.buckets.patch", "PATCH", LB + "/{bucket}", log_bucket_patch),
    ("logging.projects.locations.buckets.delete", "DELETE", LB + "/{bucket}", log_bucket_delete),
    ("logging.projects.locations.buckets.undelete", "POST", LB + "/{bucket}:undelete", log_bucket_undelete),
    ("logging.projects.sinks.create", "POST", "/v2/projects/{project}/sinks", log_sink_create),
    ("logging.projects.sinks.list", "GET", "/v2/projects/{project}/sinks", log_sink_list),
    ("logging.projects.sinks.get", "GET", "/v2/projects/{project}/sinks/{sink}", log_sink_get),
    ("logging.projects.sinks.patch", "PATCH", "/v2/projects/{project}/sinks/{sink}", log_sink_patch),
    ("logging.projects.sinks.delete", "DELETE", "/v2/projects/{project}/sinks/{sink}", log_sink_delete),

    ("secretmanager.projects.secrets.create", "POST", "/v1/projects/{project}/secrets", secret_create),
    ("secretmanager.projects.secrets.list", "GET", "/v1/projects/{project}/secrets", secret_list),
    ("secretmanager.projects.secrets.get", "GET", "/v1/projects/{project}/secrets/{secret}", secret_get),
    ("secretmanager.projects.secrets.patch", "PATCH", "/v1/projects/{project}/secrets/{secret}", secret_patch),
    ("secretmanager.projects.secrets.delete", "DELETE", "/v1/projects/{project}/secrets/{secret}", secret_delete),
    ("secretmanager.projects.secrets.addVersion", "POST", "/v1/projects/{project}/secrets/{secret}:addVersion",
     secret_add_version),
    ("secretmanager.projects.secrets.versions.list", "GET", "/v1/projects/{project}/secrets/{secret}/versions",
     secret_version_list),
    ("secretmanager.projects.secrets.versions.get", "GET",
     "/v1/projects/{project}/secrets/{secret}/versions/{version}", secret_version_get),
    ("secretmanager.projects.secrets.versions.access", "GET",
     "/v1/projects/{project}/secrets/{secret}/versions/{version}:access", secret_access),

    ("sql.instances.insert", "POST", "/v1/projects/{project}/instances", sql_insert),
    ("sql.instances.list", "GET", "/v1/projects/{project}/instances", sql_list),
    ("sql.instances.get", "GET", S, sql_get),
    ("sql.instances.patch", "PATCH", S, sql_patch),
    ("sql.instances.delete", "DELETE", S, sql_delete),
    ("sql.instances.promoteReplica", "POST", S + "/promoteReplica", sql_promote),
    ("sql.backupRuns.insert", "POST", S + "/backupRuns", backup_run_insert),
    ("sql.backupRuns.list", "GET", S + "/backupRuns", backup_run_list),
    ("sql.databases.insert", "POST", S + "/databases", DB_INSERT),
    ("sql.databases.list", "GET", S + "/databases", DB_LIST),
    ("sql.databases.get", "GET", S + "/databases/{database}", DB_GET),
    ("sql.databases.delete", "DELETE", S + "/databases/{database}", DB_DELETE),
    ("sql.users.insert", "POST", S + "/users", USER_INSERT),
    ("sql.users.list", "GET", S + "/users", USER_LIST),
    ("sql.users.update", "PUT", S + "/users", USER_UPDATE),
    ("sql.users.delete", "DELETE", S + "/users", USER_DELETE),
    ("sql.operations.get", "GET", "/v1/projects/{project}/operations/{operation}", sql_op_get),

    ("iam.projects.serviceAccounts.create", "POST", "/v1/projects/{project}/serviceAccounts", account_create),
    ("iam.projects.serviceAccounts.list", "GET", "/v1/projects/{project}/serviceAccounts", account_list),
    ("iam.projects.serviceAccounts.get", "GET", "/v1/projects/{project}/serviceAccounts/{account}", account_get),
    ("iam.projects.serviceAccounts.patch", "PATCH", "/v1/projects/{project}/serviceAccounts/{account}", account_patch),
    ("iam.projects.serviceAccounts.delete", "DELETE", "/v1/projects/{project}/serviceAccounts/{account}",
     account_delete),
    ("iam.projects.serviceAccounts.getIamPolicy", "POST",
     "/v1/projects/{project}/serviceAccounts/{account}:getIamPolicy", account_get_policy),
    ("iam.projects.serviceAccounts.setIamPolicy", "POST",
     "/v1/projects/{project}/serviceAccounts/{account}:setIamPolicy", account_set_policy),
    ("cloudresourcemanager.projects.get", "GET", "/v3/projects/{project}", project_get),
    ("servicenetworking.services.connections.create", "POST", "/v1/services/{service}/connections", sn_create),
    ("servicenetworking.services.connections.list", "GET", "/v1/services/{service}/connections", sn_list),
    ("servicenetworking.services.connections.patch", "PATCH", "/v1/services/{service}/connections/{connection}", sn_patch),
    ("servicenetworking.services.connections.deleteConnection", "POST", "/v1/services/{service}/connections/{connection}", sn_delete),
    ("servicenetworking.operations.get", "GET", "/v1/operations/{operation}", sn_op_get),
    # Service Usage names its parent in two segments (projects/P).
    ("serviceusage.services.get", "GET", "/v1/{kind}/{project}/services/{service}", usage_get),
    ("serviceusage.services.list", "GET", "/v1/{kind}/{project}/services", usage_list),
    ("serviceusage.services.enable", "POST", "/v1/{kind}/{project}/services/{service}:enable", usage_set(True)),
    ("serviceusage.services.disable", "POST", "/v1/{kind}/{project}/services/{service}:disable", usage_set(False)),
    ("cloudresourcemanager.projects.getIamPolicy", "POST", "/v3/projects/{project}:getIamPolicy", project_get_policy),
    ("cloudresourcemanager.projects.setIamPolicy", "POST", "/v3/projects/{project}:setIamPolicy", project_set_policy),
    ("monitoring.projects.timeSeries.list", "GET", "/v3/projects/{project}/timeSeries", time_series_list),
    ("storage.buckets.insert", "POST", "/storage/v1/b", bucket_insert),
    ("storage.buckets.list", "GET", "/storage/v1/b", bucket_list),
    ("storage.buckets.get", "GET", "/storage/v1/b/{bucket}", bucket_get),
    ("storage.buckets.patch", "PATCH", "/storage/v1/b/{bucket}", bucket_patch),
    ("storage.buckets.delete", "DELETE", "/storage/v1/b/{bucket}", bucket_delete),
    # The media upload's own path (Discovery's mediaUpload.protocols.simple).
    ("storage.objects.insert", "POST", "/upload/storage/v1/b/{bucket}/o", object_insert),
    ("storage.objects.list", "GET", "/storage/v1/b/{bucket}/o", object_list),
    ("storage.objects.compose", "POST", "/storage/v1/b/{destinationBucket}/o/{destinationObject}/compose", object_compose),
    ("storage.objects.get", "GET", "/storage/v1/b/{bucket}/o/{object}", object_get),
    ("storage.objects.delete", "DELETE", "/storage/v1/b/{bucket}/o/{object}", object_delete),
]


def operation_get(p, q, body):
    name = f"projects/{p['project']}/locations/{p['location']}/operations/{p['operation']}"
    op = OPS.get(name)
    if op is not None and op["style"] == "gke":
        return gke_op_get(p, q, body)
    CURRENT["route"] = "redis.projects.locations.operations.get"  # logged under its own method
    return lro_get(p, q, body)


# The shared operations route answers for both services.
ROUTES = [(i, m, t, h if h is not None else operation_get) for i, m, t, h in ROUTES]
# Memorystore's own name for that route, for the conformance check.
ALIASES = {"container.projects.locations.operations.get": ["redis.projects.locations.operations.get"]}


def compile_template(t):
    rx = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/:]+)", re.escape(t))
    # Cloud Storage's object names hold slashes (the request escapes them).
    rx = rx.replace("(?P<object>[^/:]+)", "(?P<object>.+)")
    rx = rx.replace("(?P<destinationObject>[^/:]+)", "(?P<destinationObject>.+)")
    return re.compile("^" + rx + "$")


COMPILED = [(i, m, compile_template(t), h) for i, m, t, h in ROUTES]


def masked(obj):
    """A copy with secret values replaced: the log never holds one."""
    out = json.loads(json.dumps(obj))
    if isinstance(out, dict):
        if isinstance(out.get("payload"), dict) and "data" in out["payload"]:
            out["payload"]["data"] = "bWFza2Vk"
        for key in ("password", "rootPassword", "authString"):
            if key in out:
                out[key] = "masked"
    return out


def log_request(route_id, method, path, query, body, code, answer):
    if not REQUEST_LOG:
        return
    with LOCK, open(REQUEST_LOG, "a") as f:
        f.write(json.dumps({"id": route_id, "method": method, "path": path, "query": sorted(query),
                            "body": masked(body), "status": code, "response": masked(answer)}) + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_media(self, data):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def handle_any(self, method):
        url = urlsplit(self.path)
        path = unquote(url.path)
        q = parse_qs(url.query, keep_blank_values=True)
        n = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(n) if n else b""
        if path.startswith("/__double/"):
            return self.control(method, path, raw)
        media = None
        if path.startswith("/upload/"):
            # A media upload: the body is the object's bytes.
            media, raw = (raw, self.headers.get("Content-Type", "")), b""
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            return self.send(400, invalid([("body", "is not JSON")]).body())
        in_project = re.search(r"/projects/([^/:]+)(?:[/:]|$)", path)
        project = in_project.group(1) if in_project else None
        in_bucket = re.match(r"^(?:/upload)?/storage/v1/b(?:/([^/]+))?", path)
        if in_bucket:
            # Cloud Storage names the project in the query, or through the bucket.
            held = BUCKETS.get(in_bucket.group(1) or "")
            project = held["_project"] if held else (q.get("project") or [None])[0]
        if project is None:
            # Service Networking names the project in the network it is given.
            named = body.get("network") or body.get("consumerNetwork") or (q.get("network") or [""])[0] \
                if isinstance(body, dict) else None
            key = network_key(named) if named else None
            project = key.split("/")[1] if key else None
        counts = [STATS]
        with LOCK:
            if project:
                counts.append(BY_PROJECT.setdefault(project, {"requests": 0, "mutations": 0, "lists": 0, "gets": 0}))
            for c in counts:
                c["requests"] += 1
            tick()
            for route_id, route_method, rx, h in COMPILED:
                if route_method != method:
                    continue
                match = rx.match(path)
                if not match:
                    continue
                legacy = route_id.startswith(("compute.", "sql."))
                # getIamPolicy is a POST that changes nothing
                reads = method == "GET" or route_id.endswith(".getIamPolicy")
                kind = "mutations" if not reads else "lists" if route_id.endswith(".list") else "gets"
                for c in counts:
                    c[kind] += 1
                faults = PROJECT_FAULTS.get(project, FAULTS)
                if not reads:
                    if faults["throttle"] > 0:
                        faults["throttle"] -= 1
                        return self.send(429, ApiError(
                            429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Write requests' "
                            "and limit 'Write requests per minute'.", "rateLimitExceeded", legacy=legacy).body())
                    if faults["error"] > 0:
                        faults["error"] -= 1
                        return self.send(503, ApiError(503, "UNAVAILABLE", "The service is currently unavailable.",
                                                       "backendError", legacy=legacy).body())
                CURRENT["project"] = project
                if media is not None:
                    CURRENT["media"], CURRENT["content_type"] = media
                try:
                    disabled = service_disabled(project, route_id)
                    if disabled is not None:
                        code, answer = 403, disabled
                    else:
                        code, answer = 200, h(match.groupdict(), q, body)
                except ApiError as e:
                    code, answer = e.code, e.body()
                finally:
                    CURRENT["project"] = None
                CURRENT.pop("media", None)
                CURRENT.pop("content_type", None)
                if isinstance(answer, Media):
                    log_request(route_id, method, path, q, body, code, {"media": len(answer.data)})
                    self.send_media(answer.data)
                else:
                    log_request(CURRENT.pop("route", None) or route_id, method, path, q, body, code, answer)
                    self.send(code, answer)
                if not reads and project in KILLS:
                    kill = KILLS[project]
                    kill["seen"] += 1
                    if kill["seen"] == kill["after"]:
                        # SIGKILL right after the answer: the tool dies with the
                        # change made and not recorded, as a crash would leave it.
                        try:
                            with open(kill["pidfile"]) as f:
                                os.kill(int(f.read().strip()), signal.SIGKILL)
                        except (OSError, ValueError):
                            pass
                return
        self.send(404, ApiError(404, "NOT_FOUND", f"no route for {method} {path} in the test double",
                                "notFound").body())

    def control(self, method, path, raw):
        with LOCK:
            if path == "/__double/faults" and method == "POST":
                FAULTS.update(json.loads(raw or b"{}"))
                return self.send(200, FAULTS)
            if path == "/__double/project" and method == "POST":
                # per project: {"project", "delay_scale", "kill_after", "pidfile", "throttle", "error"}
                cfg = json.loads(raw or b"{}")
                if "delay_scale" in cfg:
                    PROJECT_SCALE[cfg["project"]] = float(cfg["delay_scale"])
                if "throttle" in cfg or "error" in cfg:
                    PROJECT_FAULTS[cfg["project"]] = {"throttle": int(cfg.get("throttle", 0)), "error": int(cfg.get("error", 0))}
                if cfg.get("fresh"):
                    PROJECT_SERVICES[cfg["project"]] = set(DEFAULT_SERVICES)
                if cfg.get("kill_after"):
                    KILLS[cfg["project"]] = {"after": int(cfg["kill_after"]), "seen": 0, "pidfile": cfg["pidfile"]}
                else:
                    KILLS.pop(cfg["project"], None)
                return self.send(200, cfg)
            if path == "/__double/network/reach":
                q = parse_qs(urlsplit(self.path).query)
                try:
                    port = int((q.get("port") or ["0"])[0])
                except ValueError:
                    port = 0
                return self.send(200, network_reach((q.get("host") or [""])[0], port))
            if path == "/__double/armor/attach" and method == "POST":
                return self.send(200, armor_attach(json.loads(raw or b"{}")))
            if path == "/__double/sql/lag" and method == "POST":
                cfg = json.loads(raw or b"{}")
                SQL_LAG[cfg["database_id"]] = float(cfg["seconds"])
                return self.send(200, cfg)
            if path == "/__double/nodes":
                return self.send(200, node_listing())
            if path == "/__double/nodes/grow" and method == "POST":
                return self.send(200, autoscaler_grow(json.loads(raw or b"{}").get("group", "")))
            if path == "/__double/stats":
                project = parse_qs(urlsplit(self.path).query).get("project")
                if project:
                    return self.send(200, BY_PROJECT.get(project[0], {"requests": 0, "mutations": 0, "lists": 0, "gets": 0}))
                return self.send(200, STATS)
            if path == "/__double/reset" and method == "POST":
                STORE.clear(); SECRETS.clear(); OPS.clear(); PENDING.clear(); POLICIES.clear(); ARMOR_USERS.clear()
                BUCKETS.clear(); OBJECTS.clear()
                return self.send(200, {})
            if path == "/__double/routes":
                return self.send(200, [{"id": i, "method": m, "path": t, "aliases": ALIASES.get(i, [])}
                                       for i, m, t, _ in ROUTES])
        self.send(404, {"error": {"code": 404, "message": "unknown control route", "status": "NOT_FOUND"}})

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_PATCH(self):
        self.handle_any("PATCH")

    def do_DELETE(self):
        self.handle_any("DELETE")


class Server(ThreadingHTTPServer):
    # The clients open many connections at once (one pool per service); the
    # default backlog of 5 drops SYNs, which TCP retries only after a second.
    request_queue_size = 256
    daemon_threads = True


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    server = Server((host, port), Handler)
    server.daemon_threads = True
    print(f"gcp double on {host}:{port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
