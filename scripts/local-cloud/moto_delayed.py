"""moto with the real cloud's slowness, scaled down.

moto makes EKS, RDS, ElastiCache and NAT gateways ready in the create
response and never finishes ElastiCache deletes. Real services pass through
intermediate states for minutes. This launcher patches moto's models before
serving so that resources report their transitional status (CREATING,
creating, modifying, DELETING, pending, ...) for a configurable time, deletes
complete after a delay, and DeleteCacheSubnetGroup (missing in moto) works.
It also mends a few places where moto's answers differ from the services'
(NumCacheClusters ignored, the GetBucketVersioning XML root), and serves
CloudWatch's GetMetricStatistics and PutMetricData in the protocol today's
SDKs speak (Smithy RPC v2 CBOR), which moto 5.2 does not route.

    python moto_delayed.py HOST PORT

Delays, in seconds, come from RALPH_MOTO_DELAYS (a JSON object overriding
DEFAULTS below); RALPH_MOTO_DELAY_SCALE multiplies all of them.
"""
import hashlib
import json
import os
import sys
import threading
import time
import uuid

import local_servers
import store_support

DEFAULTS = {
    "eks_cluster_create": 3.0, "eks_cluster_update": 1.0, "eks_cluster_delete": 2.0,
    "eks_nodegroup_create": 2.0, "eks_nodegroup_update": 1.0, "eks_nodegroup_delete": 2.0,
    "rds_create": 3.0, "rds_replica_create": 2.0, "rds_modify": 1.0, "rds_delete": 2.0,
    "elasticache_create": 3.0, "elasticache_modify": 1.0, "elasticache_delete": 2.0,
    "nat_create": 1.0, "nat_delete": 1.0,
}
DELAYS = dict(DEFAULTS)
DELAYS.update(json.loads(os.environ.get("RALPH_MOTO_DELAYS", "{}") or "{}"))
SCALE = float(os.environ.get("RALPH_MOTO_DELAY_SCALE", "1"))
FOREVER = float("inf")


def delay(key):
    return DELAYS.get(key, 0.0) * SCALE


def timed_attribute(cls, attr):
    """Make `attr` of `cls` report a transitional value while one is set."""
    def get(self):
        override = self.__dict__.get("_rd_override", {}).get(attr)
        if override and time.time() < override[0]:
            return override[1]
        return self.__dict__.get("_rd_value_" + attr)

    def set(self, value):
        self.__dict__["_rd_value_" + attr] = value

    setattr(cls, attr, property(get, set))


def transition(obj, attr, value, seconds):
    """`obj.attr` reads `value` for `seconds` (or until cleared)."""
    if seconds <= 0:
        return
    obj.__dict__.setdefault("_rd_override", {})[attr] = (time.time() + seconds, value)


def clear(obj, attr):
    obj.__dict__.setdefault("_rd_override", {}).pop(attr, None)


def later(seconds, fn):
    t = threading.Timer(seconds, fn)
    t.daemon = True
    t.start()


def slow_init(cls, attr, value, key):
    original = cls.__init__

    def __init__(self, *args, **kwargs):
        original(self, *args, **kwargs)
        transition(self, attr, value, delay(key))

    cls.__init__ = __init__


def wrap(cls, name, before=None, after=None):
    original = getattr(cls, name)

    def method(self, *args, **kwargs):
        if before:
            early = before(self, original, *args, **kwargs)
            if early is not None:
                return early
        result = original(self, *args, **kwargs)
        if after:
            after(self, result, *args, **kwargs)
        return result

    setattr(cls, name, method)


def patch_eks():
    from moto.eks import models as m
    timed_attribute(m.Cluster, "status")
    timed_attribute(m.Nodegroup, "status")
    slow_init(m.Cluster, "status", "CREATING", "eks_cluster_create")
    slow_init(m.Nodegroup, "status", "CREATING", "eks_nodegroup_create")

    def ng_updated(self, result, cluster_name, nodegroup_name, *a, **k):
        ng = self.clusters[cluster_name].nodegroups[nodegroup_name]
        transition(ng, "status", "UPDATING", delay("eks_nodegroup_update"))

    wrap(m.EKSBackend, "update_nodegroup_config", after=ng_updated)

    # moto draws one OIDC issuer id when it is imported and gives it to every
    # cluster of a region; each EKS cluster has an issuer of its own (an IAM
    # OIDC provider per cluster depends on it).
    def own_issuer(self, result, *a, **k):
        issuer = (getattr(self, "identity", None) or {}).get("oidc", {}).get("issuer")
        if issuer:
            self.identity = {"oidc": {"issuer": issuer.rsplit("/", 1)[0] + "/" + uuid.uuid4().hex.upper()}}

    wrap(m.Cluster, "__init__", after=own_issuer)
    for name in ("update_cluster_config", "update_cluster_version"):
        if hasattr(m.EKSBackend, name):
            def cluster_updated(self, result, *a, **k):
                name_ = k.get("name") or (a[0] if a else None)
                cluster = self.clusters.get(name_)
                if cluster is not None:
                    transition(cluster, "status", "UPDATING", delay("eks_cluster_update"))
            wrap(m.EKSBackend, name, after=cluster_updated)

    def delete_cluster(self, original, name, *a, **k):
        cluster = self.clusters.get(name)
        seconds = delay("eks_cluster_delete")
        if cluster is None or seconds <= 0:
            return None
        m.validate_safe_to_delete(cluster)
        transition(cluster, "status", "DELETING", FOREVER)
        later(seconds, lambda: self.clusters.get(name) is cluster and original(self, name))
        return cluster

    wrap(m.EKSBackend, "delete_cluster", before=delete_cluster)

    def delete_nodegroup(self, original, cluster_name, nodegroup_name, *a, **k):
        cluster = self.clusters.get(cluster_name)
        ng = cluster.nodegroups.get(nodegroup_name) if cluster else None
        seconds = delay("eks_nodegroup_delete")
        if ng is None or seconds <= 0:
            return None
        transition(ng, "status", "DELETING", FOREVER)
        later(seconds, lambda: cluster.nodegroups.get(nodegroup_name) is ng and original(self, cluster_name, nodegroup_name))
        return ng

    wrap(m.EKSBackend, "delete_nodegroup", before=delete_nodegroup)


SUPPORT_TABLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "support", "kubernetes-versions.json")


def supported_versions(provider):
    """The minor versions `provider` offers today, from the repository's
    dated support table (the one ralph-deploy validates against)."""
    import datetime as dt
    with open(SUPPORT_TABLE) as f:
        table = json.load(f)[provider]["versions"]
    today = dt.date.today().isoformat()
    return {v: w for v, w in table.items() if w["released"] <= today < w["end_of_support"]}


def minor(version):
    parts = str(version).split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else str(version)


def serve_on_local_kube(cluster):
    """Every local EKS cluster is served by the local kube-apiserver: the
    cluster reports its endpoint and certificateAuthority.data (written by
    scripts/kube.sh into RALPH_SIM_KUBE_DIR), and the API server takes EKS
    tokens for their lifetime only (local-cloud/eks_authenticator.py). So the
    tool reaches it as it reaches EKS, with no kubeconfig. Without a local
    Kubernetes, moto's made-up endpoint stays."""
    kube_dir = os.environ.get("RALPH_SIM_KUBE_DIR")
    if not kube_dir:
        return
    try:
        with open(os.path.join(kube_dir, "kube.endpoint")) as f:
            endpoint = f.read().strip()
        with open(os.path.join(kube_dir, "kube.ca")) as f:
            ca = f.read().strip()
    except OSError:
        return
    cluster.endpoint = endpoint
    cluster.certificate_authority = {"data": ca}


def patch_eks_rules():
    """What EKS refuses and makes that moto does not:
    - a Kubernetes version outside EKS's support (past the end of extended
      support, or not offered yet) is refused at CreateCluster with EKS's
      InvalidParameterException;
    - a cluster security group: EKS creates one in the cluster's VPC
      (`eks-cluster-sg-NAME-...`, admitting itself, tagged with the
      cluster's name), reports it as `resourcesVpcConfig.clusterSecurityGroupId`
      and puts it on the control plane's interfaces and every managed node;
      it goes away with the cluster."""
    from moto.eks import models as m
    from moto.eks.exceptions import InvalidParameterException
    from moto.ec2.models import ec2_backends

    def check_version(version):
        offered = supported_versions("eks")
        if version is None:
            return
        if minor(version) not in offered:
            raise InvalidParameterException(
                clusterName=None, nodegroupName=None, fargateProfileName=None, addonName=None,
                message="unsupported Kubernetes version %s" % version)

    def before_create(self, original, name, role_arn, resources_vpc_config, *a, **k):
        version = k.get("version") if "version" in k else (a[0] if a else None)
        if name not in self.clusters:
            check_version(version)
        return None

    def add_cluster_sg(self, cluster, resources_vpc_config):
        subnets = (resources_vpc_config or {}).get("subnetIds") or []
        ec2 = ec2_backends[self.account_id][self.region_name]
        vpc_id = None
        if subnets:
            try:
                vpc_id = ec2.get_subnet(subnets[0]).vpc_id
            except Exception:
                vpc_id = None
        cfg = dict(resources_vpc_config or {})
        if vpc_id:
            sg_id = cluster.__dict__.get("_rd_cluster_sg")
            if sg_id is None:
                sg = ec2.create_security_group(
                    name="eks-cluster-sg-%s-%s" % (cluster.name, uuid.uuid4().int % 10**10),
                    description="EKS created security group applied to ENI that is attached to EKS Control Plane master nodes, as well as any managed workloads.",
                    vpc_id=vpc_id,
                    tags={"aws:eks:cluster-name": cluster.name, "kubernetes.io/cluster/%s" % cluster.name: "owned",
                          "Name": "eks-cluster-sg-%s" % cluster.name},
                )
                ec2.authorize_security_group_ingress(sg.id, "-1", None, None, [], source_groups=[{"GroupId": sg.id}])
                sg_id = sg.id
                cluster.__dict__["_rd_cluster_sg"] = sg_id
            cfg["clusterSecurityGroupId"] = sg_id
            cfg["vpcId"] = vpc_id
        cluster.resources_vpc_config = cfg

    def after_create(self, cluster, name, role_arn, resources_vpc_config, *a, **k):
        add_cluster_sg(self, cluster, resources_vpc_config)
        serve_on_local_kube(cluster)

    wrap(m.EKSBackend, "create_cluster", before=before_create, after=after_create)

    def before_config(self, original, name, resources_vpc_config=None, *a, **k):
        # EKS changes only the fields a request names (moto replaces the
        # whole resourcesVpcConfig, losing the subnets and groups).
        cluster = self.clusters.get(name)
        if cluster is not None:
            cluster.__dict__["_rd_vpc_before"] = dict(cluster.resources_vpc_config or {})

    def after_config(self, result, name, resources_vpc_config=None, *a, **k):
        cluster = self.clusters.get(name)
        if cluster is not None:
            merged = dict(cluster.__dict__.pop("_rd_vpc_before", None) or {})
            merged.update(resources_vpc_config or {})
            add_cluster_sg(self, cluster, merged)

    wrap(m.EKSBackend, "update_cluster_config", before=before_config, after=after_config)

    # UpdateClusterVersion, which moto lacks, with EKS's rules: an ACTIVE
    # cluster, one minor version up, to a version EKS still offers.
    import uuid as _uuid
    from moto.eks import responses as eks_responses
    from moto.eks import urls as eks_urls
    from moto.eks.exceptions import InvalidRequestException, ResourceNotFoundException

    def update_cluster_version(self, name, version):
        cluster = self.clusters.get(name)
        if cluster is None:
            raise ResourceNotFoundException(clusterName=name, nodegroupName=None, fargateProfileName=None,
                                            addonName=None, message="No cluster found for name: %s." % name)
        if cluster.status != "ACTIVE":
            raise InvalidRequestException(message="Cluster is not in ACTIVE state: %s" % cluster.status)
        check_version(version)
        have = [int(x) for x in minor(cluster.version).split(".")]
        want = [int(x) for x in minor(version).split(".")]
        if want[0] != have[0] or want[1] != have[1] + 1:
            raise InvalidParameterException(
                clusterName=name, nodegroupName=None, fargateProfileName=None, addonName=None,
                message="Unsupported Kubernetes minor version update from %s to %s" % (minor(cluster.version), minor(version)))
        cluster.version = minor(version)
        transition(cluster, "status", "UPDATING", delay("eks_cluster_update"))
        return {"id": str(_uuid.uuid4()), "status": "InProgress", "type": "VersionUpdate",
                "params": [{"type": "Version", "value": minor(version)}, {"type": "PlatformVersion", "value": "eks.1"}],
                "createdAt": time.time(), "errors": []}

    m.EKSBackend.update_cluster_version = update_cluster_version

    def respond(self):
        update = self.eks_backend.update_cluster_version(self._get_param("name"), self._get_param("version"))
        return 200, {"Content-Type": "application/json"}, json.dumps({"update": update})

    eks_responses.EKSResponse.update_cluster_version = respond
    eks_urls.url_paths["{0}/clusters/(?P<name>[^/]+)/updates$"] = eks_urls.response.dispatch

    # DescribeClusterVersions (which moto lacks), answered from the dated
    # support table: by default the versions EKS offers today; with
    # includeAll, the ended ones too (versionStatus UNSUPPORTED).
    def describe_cluster_versions(self):
        import datetime as dt
        qs = self.querystring
        asked = qs.get("clusterVersions", [])
        include_all = (qs.get("includeAll") or ["false"])[0] == "true"
        with open(SUPPORT_TABLE) as f:
            table = json.load(f)["eks"]["versions"]
        today = dt.date.today().isoformat()
        offered = sorted((v for v, w in table.items() if w["released"] <= today < w["end_of_support"]),
                         key=lambda v: [int(x) for x in v.split(".")])
        default = offered[-2] if len(offered) >= 2 else (offered[-1] if offered else None)

        def epoch(day):
            return dt.datetime.fromisoformat(day).replace(tzinfo=dt.timezone.utc).timestamp()
        out = []
        for v, w in sorted(table.items(), key=lambda kv: [int(x) for x in kv[0].split(".")]):
            if w["released"] > today:
                continue
            if asked and v not in [minor(a) for a in asked]:
                continue
            if today >= w["end_of_support"]:
                status = "UNSUPPORTED"
            elif today >= w["end_of_standard"]:
                status = "EXTENDED_SUPPORT"
            else:
                status = "STANDARD_SUPPORT"
            if status == "UNSUPPORTED" and not include_all:
                continue
            out.append({"clusterVersion": v, "clusterType": "eks", "defaultPlatformVersion": "eks.1",
                        "defaultVersion": v == default, "releaseDate": epoch(w["released"]),
                        "endOfStandardSupportDate": epoch(w["end_of_standard"]),
                        "endOfExtendedSupportDate": epoch(w["end_of_support"]),
                        "versionStatus": status, "status": status.lower().replace("_", "-"),
                        "kubernetesPatchVersion": v + ".0"})
        return 200, {"Content-Type": "application/json"}, json.dumps({"clusterVersions": out})

    eks_responses.EKSResponse.describe_cluster_versions = describe_cluster_versions
    eks_urls.url_paths["{0}/cluster-versions$"] = eks_urls.response.dispatch

    # The cluster security group leaves with the cluster (when moto really
    # removes it, after the delete's delay).
    original_delete = m.EKSBackend.delete_cluster

    def remove_sg(backend, cluster):
        sg_id = cluster.__dict__.get("_rd_cluster_sg")
        if sg_id:
            try:
                ec2_backends[backend.account_id][backend.region_name].delete_security_group(group_id=sg_id)
            except Exception as e:
                print("moto_delayed: cluster security group %s not removed: %r" % (sg_id, e), file=sys.stderr)

    def delete_cluster(self, name, *a, **k):
        cluster = self.clusters.get(name)
        result = original_delete(self, name, *a, **k)
        if cluster is not None:
            def gone():
                if self.clusters.get(name) is not cluster:
                    remove_sg(self, cluster)
                else:
                    later(0.5, gone)
            later(0.1, gone)
        return result

    m.EKSBackend.delete_cluster = delete_cluster


def json_body(request, headers):
    """The JSON body of a request to a /moto-api/ handler of ours."""
    if hasattr(request, "environ"):  # the server's (werkzeug) request
        raw = request.environ["wsgi.input"].read(int(headers.get("Content-Length") or 0))
    else:
        raw = request.body
    return json.loads(raw or b"{}")


def each(backends):
    """(account, region, backend) for every backend of one service."""
    for account, by_region in list(backends.items()):
        for region, backend in list(by_region.items()):
            yield account, region, backend


def network_model():
    """Can the pods of a cluster reach HOST:PORT? Answered from the cloud's
    own API state, as AWS's Reachability Analyzer would: the store that owns
    the name (an RDS instance or an ElastiCache replication group, in any
    account), the EKS clusters in the same VPC (their pods run on managed
    nodes, which carry the cluster security group), and the store's security
    groups' ingress rules (protocol, port range, a source group the nodes
    carry or a CIDR that holds the nodes' subnets). One VPC: routes between
    its subnets always exist. Served at /moto-api/network/reach?host=&port=."""
    import ipaddress
    from urllib.parse import parse_qs, urlparse

    from moto.ec2.models import ec2_backends
    from moto.eks.models import eks_backends
    from moto.elasticache.models import elasticache_backends
    from moto.moto_api._internal import urls as api_urls
    from moto.rds.models import rds_backends

    def find_store(host):
        for account, region, rds in each(rds_backends):
            for db in list(rds.databases.values()):
                if db.address == host:
                    subnet_group = db.db_subnet_group
                    vpc = getattr(subnet_group, "vpc_id", None)
                    return dict(kind="RDS instance %s" % db.db_instance_identifier, account=account, region=region,
                                vpc=vpc, groups=list(db.vpc_security_group_ids), local=local_servers.postgres_address(os.environ.get("RALPH_SIM_KUBE_DIR")))
        for account, region, ec in each(elasticache_backends):
            for rg in list(ec.replication_groups.values()):
                names = set()
                for ng in getattr(rg, "node_groups", []) or []:
                    names.add(ng.get("primary_endpoint_address"))
                    names.add(ng.get("reader_endpoint_address"))
                cfg = getattr(rg, "configuration_endpoint", None) or {}
                names.add(cfg.get("address"))
                if host in names:
                    vpc = None
                    sng = ec.cache_subnet_groups.get(rg.cache_subnet_group_name) if rg.cache_subnet_group_name else None
                    if sng is not None:
                        ec2 = ec2_backends[account][region]
                        for sid in sng.subnet_ids:
                            try:
                                vpc = ec2.get_subnet(sid).vpc_id
                                break
                            except Exception:
                                pass
                    return dict(kind="ElastiCache replication group %s" % rg.replication_group_id, account=account,
                                region=region, vpc=vpc, groups=list(rg.security_group_ids or []),
                                local=getattr(rg, "local_server", None))
        return None

    def node_sources(store):
        """The security groups and subnet CIDRs of the managed nodes in the
        store's VPC, cluster by cluster."""
        ec2 = ec2_backends[store["account"]][store["region"]]
        eks = eks_backends[store["account"]][store["region"]]
        out = []
        for cluster in list(eks.clusters.values()):
            cfg = cluster.resources_vpc_config or {}
            if cfg.get("vpcId") != store["vpc"]:
                continue
            for ng in list(cluster.nodegroups.values()):
                if ng.status not in ("ACTIVE", "UPDATING"):
                    continue  # no nodes yet, or none any more
                # A launch template that names security groups replaces the
                # cluster security group on the nodes (EKS adds it only to
                # nodes made without one).
                groups = [cfg["clusterSecurityGroupId"]] if cfg.get("clusterSecurityGroupId") else []
                lt = getattr(ng, "launch_template", None) or {}
                if lt.get("id") or lt.get("name"):
                    try:
                        found = ec2.describe_launch_templates(
                            template_ids=[lt["id"]] if lt.get("id") else None,
                            template_names=None if lt.get("id") else [lt["name"]])
                        version = lt.get("version")
                        tpl = found[0]
                        v = tpl.get_version(version) if version and version not in ("$Default", "$Latest") else (
                            tpl.latest_version() if version == "$Latest" else tpl.default_version())
                        lt_groups = list(v.data.get("SecurityGroupIds") or [])
                        if lt_groups:
                            groups = lt_groups
                    except Exception as e:
                        groups = []
                        print("moto_delayed: launch template of %s unreadable: %r" % (ng.nodegroup_name, e), file=sys.stderr)
                cidrs = []
                for sid in ng.subnets or []:
                    try:
                        cidrs.append(ipaddress.ip_network(ec2.get_subnet(sid).cidr_block))
                    except Exception:
                        pass
                out.append(dict(cluster=cluster.name, nodegroup=ng.nodegroup_name, groups=groups, cidrs=cidrs))
        return out

    def admits(rule, port, groups, cidrs):
        proto = rule.ip_protocol
        if proto not in ("-1", "tcp"):
            return False
        if proto == "tcp" and not (rule.from_port <= port <= rule.to_port):
            return False
        src = (rule.source_group or {}).get("GroupId")
        if src and src in groups:
            return True
        cidr = (rule.ip_range or {}).get("CidrIp")
        if cidr and cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            return all(c.subnet_of(net) for c in cidrs)
        return False

    def reach(host, port):
        store = find_store(host)
        if store is None:
            return dict(reachable=False, reason="%s does not resolve: no store in the local cloud has that name" % host)
        if not store["vpc"]:
            return dict(reachable=False, reason="%s has no subnets, so no network path" % store["kind"])
        sources = node_sources(store)
        if not sources:
            return dict(reachable=False, store=store["kind"],
                        reason="no EKS managed nodes in %s, the VPC of %s" % (store["vpc"], store["kind"]))
        ec2 = ec2_backends[store["account"]][store["region"]]
        tried = []
        for src in sources:
            for gid in store["groups"]:
                try:
                    sg = ec2.get_security_group_from_id(gid)
                except Exception:
                    sg = None
                if sg is None:
                    continue
                for rule in sg.ingress_rules:
                    if admits(rule, port, src["groups"], src["cidrs"]):
                        return dict(reachable=True, store=store["kind"], local=store.get("local"),
                                    reason="%s admits nodegroup %s of cluster %s on port %d" % (gid, src["nodegroup"], src["cluster"], port))
            tried.append("nodegroup %s of cluster %s carries %s" % (
                src["nodegroup"], src["cluster"], ", ".join(src["groups"]) or "no security group"))
        return dict(reachable=False, store=store["kind"],
                    reason="the security groups of %s (%s) admit none of the nodes on port %d: %s" % (
                        store["kind"], ", ".join(store["groups"]) or "none", port, "; ".join(tried)))

    def handler(request, full_url, headers):
        q = parse_qs(urlparse(full_url).query)
        try:
            host = q["host"][0]
            port = int(q["port"][0])
        except (KeyError, ValueError):
            return 400, {"Content-Type": "application/json"}, json.dumps({"error": "host and port"})
        try:
            answer = reach(host, port)
        except Exception as e:  # the model must never take moto down
            answer = dict(reachable=False, reason="network model failed: %r" % e)
        return 200, {"Content-Type": "application/json"}, json.dumps(answer)

    api_urls.url_paths["{0}/moto-api/network/reach$"] = handler


def node_listing():
    """The nodes EKS would run: one entry per managed node group that has
    nodes (ACTIVE or UPDATING), in any account and region, with its current
    size (scalingConfig.desiredSize), instance type, zones (of its subnets),
    labels and taints. The node simulator turns each into that many Nodes.
    Served at /moto-api/eks/nodes."""
    from moto.ec2.models import ec2_backends
    from moto.eks.models import eks_backends
    from moto.moto_api._internal import urls as api_urls

    def listing():
        out = []
        for account, region, eks in each(eks_backends):
            ec2 = ec2_backends[account][region]
            for cluster in list(eks.clusters.values()):
                for ng in list(cluster.nodegroups.values()):
                    if ng.status not in ("ACTIVE", "UPDATING"):
                        continue
                    zones = []
                    for sid in ng.subnets or []:
                        try:
                            zones.append(ec2.get_subnet(sid).availability_zone)
                        except Exception:
                            pass
                    out.append(dict(
                        account=account, region=region, cluster=cluster.name, nodegroup=ng.nodegroup_name,
                        size=int((ng.scaling_config or {}).get("desiredSize") or 0),
                        max_size=int((ng.scaling_config or {}).get("maxSize") or 0),
                        instance_type=(ng.instance_types or ["t3.medium"])[0],
                        capacity_type=ng.capacity_type, zones=zones or [region + "a"],
                        labels=dict(ng.labels or {}), taints=list(ng.taints or []),
                        network_policy=enforces_network_policy(cluster)))
        return out

    def handler(request, full_url, headers):
        try:
            answer = listing()
        except Exception as e:  # never take moto down
            answer = []
            print("moto_delayed: node listing failed: %r" % e, file=sys.stderr)
        return 200, {"Content-Type": "application/json"}, json.dumps(answer)

    api_urls.url_paths["{0}/moto-api/eks/nodes$"] = handler


def listed(v):
    return v if isinstance(v, list) else [v]


def action_allows(statement, action):
    if statement.get("Effect") != "Allow":
        return False
    service = action.split(":")[0] + ":*"
    return any(a in (action, service, "*") for a in listed(statement.get("Action") or []))


def conditions_hold(statement, tags):
    for op, pairs in (statement.get("Condition") or {}).items():
        for key, want in pairs.items():
            if not key.startswith("aws:ResourceTag/"):
                continue
            have = tags.get(key[len("aws:ResourceTag/"):])
            if op == "StringEquals" and have not in listed(want):
                return False
    return True


def role_documents(role):
    for doc in role.policies.values():
        yield doc
    for policy in role.managed_policies.values():
        version = getattr(policy, "default_version", None)
        if version is not None:
            yield version.document


def role_allows(role, action, tags):
    from urllib.parse import unquote
    for doc in role_documents(role):
        parsed = json.loads(unquote(doc)) if isinstance(doc, str) else doc
        for st in listed(parsed.get("Statement") or []):
            if action_allows(st, action) and conditions_hold(st, tags):
                return True
    return False


def irsa(body, who):
    """A pod's AWS identity through IRSA, as STS's AssumeRoleWithWebIdentity
    decides it: body {cluster, role_arn, service_account}. The role must
    exist and trust the cluster's OIDC issuer, as an IAM OIDC provider with
    the sts.amazonaws.com audience, for that service account. Answers
    (iam backend, role, cluster) or the refusal, worded as `who` (the
    controller) would log it."""
    from urllib.parse import unquote

    from moto.eks.models import eks_backends
    from moto.iam.models import iam_backends

    role_arn, sa = body.get("role_arn") or "", body.get("service_account") or ""
    if not role_arn:
        return "WebIdentityErr: the service account %s has no eks.amazonaws.com/role-arn annotation, " \
               "so %s has no AWS credentials" % (sa, who)
    account = role_arn.split(":")[4] if role_arn.count(":") >= 5 else ""
    try:
        iam = iam_backends[account]["global"]
        role = iam.get_role(role_arn.rsplit("/", 1)[-1])
    except Exception:
        return "WebIdentityErr: AccessDenied: role %s does not exist" % role_arn
    cluster = None
    for _, _, eks in each(eks_backends):
        if account in ("", eks.account_id) and body.get("cluster") in eks.clusters:
            cluster = eks.clusters[body["cluster"]]
            break
    if cluster is None:
        return "no EKS cluster %s in the role's account" % body.get("cluster")
    issuer = cluster.identity["oidc"]["issuer"].replace("https://", "", 1)
    trust = json.loads(unquote(role.assume_role_policy_document or "{}"))
    subject = "system:serviceaccount:" + sa.replace("/", ":", 1)
    for st in listed(trust.get("Statement") or []):
        provider_arn = (st.get("Principal") or {}).get("Federated")
        if "sts:AssumeRoleWithWebIdentity" not in listed(st.get("Action") or []) or not provider_arn:
            continue
        provider = iam.open_id_providers.get(provider_arn)
        if provider is None or provider.url != issuer:
            continue
        eq = (st.get("Condition") or {}).get("StringEquals") or {}
        if subject in listed(eq.get(issuer + ":sub", [])) and \
                "sts.amazonaws.com" in listed(eq.get(issuer + ":aud", [])) and \
                "sts.amazonaws.com" in provider.client_id_list:
            return iam, role, cluster
    return ("WebIdentityErr: AccessDenied: Not authorized to perform sts:AssumeRoleWithWebIdentity "
            "(role %s does not trust %s for %s through an IAM OIDC provider of the cluster's issuer %s)"
            % (role_arn, subject, "sts.amazonaws.com", issuer))


def eks_autoscale():
    """The cluster autoscaler's calls to AWS, for the node simulator (which
    plays the autoscaler's pod): POST /moto-api/eks/autoscale with
    {cluster, nodegroup, role_arn, service_account} grows the node group by
    one node when the autoscaler could: its service account's role must be
    its own through IRSA (`irsa`) and allow autoscaling:SetDesiredCapacity
    on the group's Auto Scaling group (whose tags EKS sets:
    k8s.io/cluster-autoscaler/CLUSTER=owned,
    k8s.io/cluster-autoscaler/enabled=true); and the group must be below
    its maximum. Answers {grown, size} or {grown: false, reason}, the reason
    worded as the autoscaler would log it."""
    from moto.moto_api._internal import urls as api_urls

    def grow(body):
        found = irsa(body, "the autoscaler")
        if isinstance(found, str):
            return found
        _, role, cluster = found
        role_arn = body.get("role_arn")
        ng = cluster.nodegroups.get(body.get("nodegroup"))
        if ng is None or ng.status != "ACTIVE":
            return "node group %s is not ACTIVE" % body.get("nodegroup")
        tags = {"k8s.io/cluster-autoscaler/" + cluster.name: "owned", "k8s.io/cluster-autoscaler/enabled": "true",
                "eks:cluster-name": cluster.name, "eks:nodegroup-name": ng.nodegroup_name}
        if not role_allows(role, "autoscaling:SetDesiredCapacity", tags):
            return ("AccessDenied: User: %s is not authorized to perform: autoscaling:SetDesiredCapacity on the "
                    "Auto Scaling group of node group %s" % (role_arn, ng.nodegroup_name))
        scaling = dict(ng.scaling_config or {})
        size, most = int(scaling.get("desiredSize") or 0), int(scaling.get("maxSize") or 0)
        if size >= most:
            return "max node group size reached (node group %s is at %d)" % (ng.nodegroup_name, most)
        scaling["desiredSize"] = size + 1
        ng.scaling_config = scaling
        return size + 1

    def handler(request, full_url, headers):
        try:
            answer = grow(json_body(request, headers))
        except Exception as e:  # never take moto down
            answer = "the autoscaler's call failed: %r" % e
        if isinstance(answer, int):
            answer = {"grown": True, "size": answer}
        else:
            answer = {"grown": False, "reason": answer}
        return 200, {"Content-Type": "application/json"}, json.dumps(answer)

    api_urls.url_paths["{0}/moto-api/eks/autoscale$"] = handler


def elbv2_serve():
    """The AWS Load Balancer Controller's calls to AWS, for the node
    simulator (which plays the controller's pod): POST
    /moto-api/elbv2/serve with {cluster, role_arn, service_account,
    namespace, name, hosts, certificate_arn} answers {served, hostname} when
    the controller could build the Ingress's load balancer: its service
    account's role is its own through IRSA (`irsa`) and allows
    elasticloadbalancing:CreateLoadBalancer, and the HTTPS listener has a
    certificate: the ACM certificate the Ingress names, or (none named) one
    ACM holds for its host, which must exist in the cluster's account and
    region, be ISSUED and cover every host; and the web ACL the Ingress
    names, if any, must exist there and the role may associate it
    (wafv2:AssociateWebACL). Else {served: false, reason},
    worded as the controller's FailedDeployModel / FailedBuildModel event.
    Nothing is created in ELB: the model stops at the decision."""
    from moto.acm.models import acm_backends
    from moto.moto_api._internal import urls as api_urls

    def covers(names, host):
        for n in names:
            if n == host or (n.startswith("*.") and host.split(".", 1)[-1] == n[2:] and host.count(".") == n.count(".")):
                return True
        return False

    def serve(body):
        found = irsa(body, "the load balancer controller")
        if isinstance(found, str):
            return found
        _, role, cluster = found
        if not role_allows(role, "elasticloadbalancing:CreateLoadBalancer", {"elbv2.k8s.aws/cluster": cluster.name}):
            return ("FailedDeployModel: AccessDenied: User: %s is not authorized to perform: "
                    "elasticloadbalancing:CreateLoadBalancer" % body.get("role_arn"))
        account, region = cluster.arn.split(":")[4], cluster.arn.split(":")[3]
        acm = acm_backends[account][region]
        hosts = [h for h in body.get("hosts") or [] if h]
        arn = body.get("certificate_arn") or ""
        if arn:
            cert = acm._certificates.get(arn)
            if cert is None:
                return "FailedDeployModel: CertificateNotFound: Certificate '%s' not found" % arn
            certs = [cert]
        else:
            certs = list(acm._certificates.values())
        usable = []
        for cert in certs:
            cert.check()
            names = set(cert.sans or []) | {cert.common_name}
            if cert.status == "ISSUED" and all(covers(names, h) for h in hosts):
                usable.append(cert)
        if not usable:
            if arn:
                return ("FailedDeployModel: UnsupportedCertificate: The certificate '%s' must have a fully-qualified "
                        "domain name, a supported signature, a supported key size, and be ISSUED for %s (it is %s)"
                        % (arn, ", ".join(hosts), certs[0].status))
            return ("FailedBuildModel: failed to build LoadBalancer configuration due to no certificate found "
                    "for host: %s" % ", ".join(hosts))
        acl = body.get("waf_acl_arn") or ""
        if acl:
            from moto.wafv2.models import wafv2_backends
            if acl not in wafv2_backends[account][region].wacls:
                return ("FailedDeployModel: WAFNonexistentItemException: AWS WAF couldn't perform the operation "
                        "because your resource doesn't exist (web ACL %s)" % acl)
            if not role_allows(role, "wafv2:AssociateWebACL", {}):
                return ("FailedDeployModel: AccessDeniedException: User: %s is not authorized to perform: "
                        "wafv2:AssociateWebACL on resource: %s" % (body.get("role_arn"), acl))
        digest = hashlib.sha256(("%s/%s" % (body.get("namespace"), body.get("name"))).encode()).hexdigest()[:10]
        name = ("k8s-%s-%s" % (body.get("namespace", ""), body.get("name", "")))[:21].rstrip("-")
        return {"served": True, "hostname": "%s-%s.%s.elb.amazonaws.com" % (name, digest, region)}

    def handler(request, full_url, headers):
        try:
            answer = serve(json_body(request, headers))
        except Exception as e:  # never take moto down
            answer = "the controller's call failed: %r" % e
        if isinstance(answer, str):
            answer = {"served": False, "reason": answer}
        return 200, {"Content-Type": "application/json"}, json.dumps(answer)

    api_urls.url_paths["{0}/moto-api/elbv2/serve$"] = handler


def patch_wafv2():
    """WAF names a duplicate name's error WAFDuplicateItemException (moto:
    WafV2DuplicateItem), which a create that finds its own ACL after a
    crash has to recognise."""
    from moto.wafv2 import exceptions

    def init(self):
        exceptions.WAFv2ClientError.__init__(
            self, "WAFDuplicateItemException",
            "AWS WAF couldn't perform the operation because some resource in your request is a duplicate "
            "of an existing one.")
    exceptions.WAFV2DuplicateItemException.__init__ = init


def patch_logs():
    """CloudWatch Logs refuses a retention period it does not offer (moto
    keeps any number)."""
    from moto.logs import models as m
    from moto.logs.exceptions import InvalidParameterException
    periods = {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
               2922, 3288, 3653}
    original = m.LogsBackend.put_retention_policy

    def put_retention_policy(self, log_group_name, retention_in_days):
        if retention_in_days is not None and int(retention_in_days) not in periods:
            raise InvalidParameterException(
                "1 validation error detected: Value '%s' at 'retentionInDays' failed to satisfy constraint: "
                "Member must satisfy enum value set: [%s]" % (retention_in_days, ", ".join(map(str, sorted(periods)))))
        return original(self, log_group_name, retention_in_days)
    m.LogsBackend.put_retention_policy = put_retention_policy


def patch_rds():
    from moto.rds import models as m
    timed_attribute(m.DBInstance, "status")
    original_init = m.DBInstance.__init__

    def __init__(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        replica = bool(getattr(self, "source_db_instance_identifier", None))
        transition(self, "status", "creating", delay("rds_replica_create" if replica else "rds_create"))

    m.DBInstance.__init__ = __init__

    # moto makes a read replica by copying its primary (overrides and all):
    # give the copy its own life.
    def replica_created(self, result, *a, **k):
        if result is not None:
            result.__dict__["_rd_override"] = {}
            transition(result, "status", "creating", delay("rds_replica_create"))

    wrap(m.RDSBackend, "create_db_instance_read_replica", after=replica_created)

    # RDS makes the database DBName names while the instance is created:
    # the local PostgreSQL (which plays every instance) gets it too, so a
    # client that names it can log in.
    # RDS no longer creates a major version past its extended support.
    def supported_engine(self, original, db_kwargs, *a, **k):
        from moto.rds.exceptions import InvalidParameterCombination
        engine, version = db_kwargs.get("engine"), db_kwargs.get("engine_version")
        if engine == "postgres" and store_support.refusal("rds_postgres", version):
            raise InvalidParameterCombination(f"Cannot find version {version} for postgres")
        return None

    def db_created(self, result, *a, **k):
        name = getattr(result, "db_name", None)
        if result is None or not name:
            return

        def create():
            why = local_servers.create_database(os.environ.get("RALPH_SIM_KUBE_DIR"), name)
            if why:
                print("moto_delayed: database %s not made: %s" % (name, why), file=sys.stderr, flush=True)

        threading.Thread(target=create, daemon=True).start()

    wrap(m.RDSBackend, "create_db_instance", before=supported_engine, after=db_created)

    def modified(self, result, *a, **k):
        if result is not None:
            transition(result, "status", "modifying", delay("rds_modify"))

    wrap(m.RDSBackend, "modify_db_instance", after=modified)

    # A promoted replica stops naming its source (moto keeps it, so the
    # instance would read as a replica forever) and leaves the primary's
    # list of replicas; it is `modifying` for a while, as on RDS.
    def promoted(self, result, *a, **k):
        if result is None:
            return
        source = result.source_db_instance_identifier
        primary = self.databases.get(source) if source else None
        if primary is not None and result.db_instance_identifier in primary.replicas:
            primary.replicas = [r for r in primary.replicas if r != result.db_instance_identifier]
        result.replicas = []
        result.source_db_instance_identifier = None
        transition(result, "status", "modifying", delay("rds_modify"))

    wrap(m.RDSBackend, "promote_read_replica", after=promoted)

    def deleted(self, result, db_instance_identifier, *a, **k):
        seconds = delay("rds_delete")
        if seconds <= 0 or result is None:
            return
        # moto drops it at once; keep it visible as `deleting` for a while.
        self.databases[db_instance_identifier] = result
        transition(result, "status", "deleting", FOREVER)
        later(seconds, lambda: self.databases.get(db_instance_identifier) is result and self.databases.pop(db_instance_identifier, None))

    wrap(m.RDSBackend, "delete_db_instance", after=deleted)

    # RDS refuses to delete a subnet group an instance still uses (one being
    # deleted too, until it is gone); moto deletes it regardless.
    def subnet_group_unused(self, original, subnet_name, *a, **k):
        from moto.rds.exceptions import RDSClientError
        # (moto's instance keeps the name write-only, in `_db_subnet_group_name`)
        users = sorted(db.db_instance_identifier for db in self.databases.values()
                       if getattr(db, "_db_subnet_group_name", None) == subnet_name)
        if users:
            raise RDSClientError(
                "InvalidDBSubnetGroupStateFault",
                f"Cannot delete the subnet group '{subnet_name}' because at least one "
                f"database instance: {users[0]} is still using it.")
        return None

    wrap(m.RDSBackend, "delete_subnet_group", before=subnet_group_unused)

    # Likewise a parameter group an instance is a member of.
    def parameter_group_unused(self, original, db_parameter_group_name, *a, **k):
        from moto.rds.exceptions import RDSClientError
        if any(getattr(db, "db_parameter_group_name", None) == db_parameter_group_name
               for db in self.databases.values()):
            raise RDSClientError(
                "InvalidDBParameterGroupState",
                "One or more database instances are still members of this parameter group "
                f"{db_parameter_group_name}, so the group cannot be deleted")
        return None

    wrap(m.RDSBackend, "delete_db_parameter_group", before=parameter_group_unused)

    # moto names an instance's automated snapshot by the minute and keeps
    # it after the instance is deleted (retained automated backups), so
    # creating an instance of the same identifier again within that minute
    # fails with DBSnapshotAlreadyExists. AWS keeps retained backups apart
    # and never fails a create on them: skip the duplicate automated snapshot.
    original_backup = m.DBInstance.save_automated_backup

    def save_automated_backup(self):
        stamp = m.utcnow().strftime("%Y-%m-%d-%H-%M")
        if f"rds:{self.db_instance_identifier}-{stamp}" in self.backend.database_snapshots:
            return
        original_backup(self)

    m.DBInstance.save_automated_backup = save_automated_backup


def _invalid_group_state():
    from moto.elasticache.exceptions import ElastiCacheException

    class InvalidReplicationGroupState(ElastiCacheException):
        code = "InvalidReplicationGroupState"
    return InvalidReplicationGroupState


def patch_elasticache():
    from moto.elasticache import models as m
    from moto.elasticache import responses as r
    timed_attribute(m.ReplicationGroup, "status")

    # moto ignores NumCacheClusters (it only reads ReplicasPerNodeGroup) for
    # groups without cluster mode: honour it, as ElastiCache does.
    original_members = m.ReplicationGroup._set_node_members_clusters_disabled

    def members(self, *args, **kwargs):
        n = kwargs.get("num_cache_clusters") or 1
        if not kwargs.get("replicas_per_node_group") and n > 1:
            kwargs["replicas_per_node_group"] = n - 1
        return original_members(self, *args, **kwargs)

    m.ReplicationGroup._set_node_members_clusters_disabled = members
    slow_init(m.ReplicationGroup, "status", "creating", "elasticache_create")

    def modified(self, result, *a, **k):
        transition(result, "status", "modifying", delay("elasticache_modify"))

    wrap(m.ElastiCacheBackend, "modify_replication_group", after=modified)

    # moto ignores AuthToken on ModifyReplicationGroup. ElastiCache rotates
    # the AUTH token in two steps: ROTATE adds the new token and keeps the
    # old one, SET leaves the new one alone; the Redis behind the group
    # follows (its default user's passwords), so a client holding a token
    # the group no longer has is refused.
    original_modify = r.ElastiCacheResponse.modify_replication_group
    InvalidReplicationGroupState = _invalid_group_state()

    def modify_with_auth(self):
        token = self._get_param("AuthToken")
        strategy = self._get_param("AuthTokenUpdateStrategy")
        if token is None and strategy is None:
            return original_modify(self)
        from moto.elasticache.exceptions import (
            InvalidParameterCombinationException, InvalidParameterValueException, ReplicationGroupNotFound)
        group_id = self._get_param("ReplicationGroupId")
        group = self.elasticache_backend.replication_groups.get(group_id)
        if group is None:
            raise ReplicationGroupNotFound(group_id)
        if not token or strategy not in ("SET", "ROTATE"):
            raise InvalidParameterCombinationException(
                "AuthToken and AuthTokenUpdateStrategy (SET or ROTATE) must be given together.")
        if not 16 <= len(token) <= 128:
            raise InvalidParameterValueException("Passwords length must be between 16-128 characters.")
        if not group.transit_encryption_enabled:
            raise InvalidParameterCombinationException(
                "The AUTH token can only be modified on a replication group with in-transit encryption.")
        if group.status != "available":
            raise InvalidReplicationGroupState(f"Replication group {group_id} is not in available state.")
        tokens = list(getattr(group, "auth_tokens", None) or [])
        current = tokens[-1] if tokens else ""

        if strategy == "ROTATE":
            if not tokens:
                raise InvalidParameterCombinationException(
                    "ROTATE needs an AUTH token to rotate from; use SET to set the first one.")
            tokens = [t for t in tokens[-1:] if t != token] + [token]
        else:
            tokens = [token]
        server = getattr(group, "local_server", None)
        if server:
            # (logged in with the newest token the group has now)
            local_servers.redis_command(server, bool(group.transit_encryption_enabled), current,
                                        "ACL", "SETUSER", "default", "on", "resetpass", *[">" + t for t in tokens])
        group.auth_tokens = tokens
        group.auth_token_enabled = True
        group.auth_token_last_modified_date = m.utcnow()
        return original_modify(self)

    r.ElastiCacheResponse.modify_replication_group = modify_with_auth

    # ElastiCache no longer creates a Redis OSS major past its extended support.
    def supported_engine(self, original, *a, **k):
        from moto.elasticache.exceptions import InvalidParameterValueException
        version = k.get("engine_version")
        why = (k.get("engine") or "redis") == "redis" and store_support.refusal("elasticache_redis", version)
        if why:
            raise InvalidParameterValueException(f"Cache engine version {version} is not supported: {why}.")
        return None

    wrap(m.ElastiCacheBackend, "create_replication_group", before=supported_engine)

    def deleted(self, result, replication_group_id, *a, **k):
        # moto leaves it `deleting` forever; finish the delete, with its clusters.
        def finish():
            group = self.replication_groups.pop(replication_group_id, None)
            for cid in list(getattr(group, "member_clusters", []) or []):
                self.cache_clusters.pop(cid, None)
            for cid, cluster in list(self.cache_clusters.items()):
                if getattr(cluster, "replication_group_id", None) == replication_group_id:
                    self.cache_clusters.pop(cid, None)
        later(max(delay("elasticache_delete"), 0.01), finish)

    wrap(m.ElastiCacheBackend, "delete_replication_group", after=deleted)

    def delete_cache_subnet_group(self, cache_subnet_group_name):
        from moto.elasticache.exceptions import CacheSubnetGroupNotFound, ElastiCacheException
        if cache_subnet_group_name not in self.cache_subnet_groups:
            raise CacheSubnetGroupNotFound(cache_subnet_group_name)
        # ElastiCache refuses while a cache cluster (a group's member, one
        # being deleted too) still uses it.
        holders = list(self.cache_clusters.values()) + list(self.replication_groups.values())
        if any(getattr(h, "cache_subnet_group_name", None) == cache_subnet_group_name for h in holders):
            raise ElastiCacheException(
                "CacheSubnetGroupInUse",
                f"Cache subnet group {cache_subnet_group_name} is currently in use by a cache cluster.")
        return self.cache_subnet_groups.pop(cache_subnet_group_name)

    if not hasattr(m.ElastiCacheBackend, "delete_cache_subnet_group"):
        m.ElastiCacheBackend.delete_cache_subnet_group = delete_cache_subnet_group

        def response(self):
            from moto.core.responses import ActionResult
            self.elasticache_backend.delete_cache_subnet_group(self._get_param("CacheSubnetGroupName"))
            return ActionResult({})

        r.ElastiCacheResponse.delete_cache_subnet_group = response


def patch_elasticache_servers():
    """Every replication group gets a real Redis behind it (local_servers), and
    loses it when deleted; the AUTH token follows ModifyReplicationGroup."""
    from moto.elasticache import models as m
    original_init = m.ReplicationGroup.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        # The tokens the group accepts (ModifyReplicationGroup's ROTATE adds one).
        self.auth_tokens = [kwargs["auth_token"]] if kwargs.get("auth_token") else []
        rg_id = kwargs.get("replication_group_id") or (args[0] if args else "group")
        try:
            self.local_server, self.local_process, _ = local_servers.redis_server(
                os.environ.get("RALPH_SIM_KUBE_DIR"), rg_id, kwargs.get("auth_token"),
                bool(kwargs.get("transit_encryption_enabled")))
        except Exception as e:  # never take moto down
            print("moto_delayed: no local Redis for %s: %r" % (rg_id, e), file=sys.stderr, flush=True)
            self.local_server, self.local_process = None, None

    m.ReplicationGroup.__init__ = init

    def deleted(self, original, replication_group_id, *a, **k):
        group = self.replication_groups.get(replication_group_id)
        proc = getattr(group, "local_process", None)
        if proc is not None:
            later(max(delay("elasticache_delete"), 0.01), proc.terminate)

    wrap(m.ElastiCacheBackend, "delete_replication_group", before=deleted)


def patch_nat():
    from moto.ec2.models import nat_gateways as m
    timed_attribute(m.NatGateway, "state")
    slow_init(m.NatGateway, "state", "pending", "nat_create")

    def deleted(self, result, nat_gateway_id, *a, **k):
        transition(result, "state", "deleting", delay("nat_delete"))
        later(max(delay("nat_delete"), 0.01), lambda: release_nat_address(self, result))

    wrap(m.NatGatewayBackend, "delete_nat_gateway", after=deleted)
    nat_deleted_outside()
    nat_client_tokens()


def nat_client_tokens():
    """EC2's idempotency, which moto leaves out: a CreateNatGateway with a
    ClientToken seen before answers the gateway that token made, whatever
    state it is in now (deleted included), when the parameters are the
    same, and IdempotentParameterMismatch when they differ. EC2 keeps
    tokens far longer than any of our runs."""
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError
    from moto.ec2.responses.nat_gateways import NatGateways

    original = NatGateways.create_nat_gateway
    made = {}  # (account, region, token) -> (parameters, gateway id)

    def create_nat_gateway(self):
        token = self._get_param("ClientToken")
        if not token:
            return original(self)
        key = (self.current_account, self.region, token)
        params = (self._get_param("SubnetId"), self._get_param("AllocationId"),
                  self._get_param("ConnectivityType") or "public")
        if key in made:
            seen, gateway_id = made[key]
            if seen != params:
                raise EC2ClientError(
                    "IdempotentParameterMismatch",
                    "Client token %s was used before with other parameters" % token)
            gateway = self.ec2_backend.nat_gateways.get(gateway_id)
            if gateway is not None:
                return ActionResult({"NatGateway": gateway, "ClientToken": token})
        result = original(self)
        gateway = result.result["NatGateway"] if hasattr(result, "result") else None
        if gateway is not None:
            made[key] = (params, gateway.id)
        return result

    NatGateways.create_nat_gateway = create_nat_gateway


def release_nat_address(backend, gateway):
    """A deleted NAT gateway's Elastic IP is disassociated (not released)
    once EC2 is done deleting it; until then it cannot go to another
    gateway. moto never disassociates it."""
    eni = getattr(gateway, "_eni", None)
    for address in list(backend.addresses):
        if eni is not None and address.eni is not None and address.eni.id == eni.id:
            address.eni = None
            address.instance = None
            address.association_id = None


def nat_deleted_outside():
    """Someone deletes a NAT gateway in the console, and EC2 takes its real
    time over it (about a minute, against our scaled-down second): POST
    /moto-api/ec2/nat/delete with {id, seconds} deletes the gateway, in
    whichever account and region holds it, and keeps it `deleting` for
    `seconds`. The tests' own stand-in for a slow deletion they did not ask
    the tool for; the tool's own deletions keep the usual delay."""
    from moto.ec2.models import ec2_backends
    from moto.moto_api._internal import urls as api_urls

    def delete(body):
        nat_id, seconds = body.get("id"), float(body.get("seconds") or 0)
        for _, _, backend in each(ec2_backends):
            if nat_id in backend.nat_gateways:
                # What moto's delete does, without the tool's short window.
                gateway = backend.nat_gateways[nat_id]
                gateway.state = "deleted"
                transition(gateway, "state", "deleting", seconds)
                later(max(seconds, 0.01), lambda: release_nat_address(backend, gateway))
                return True
        return False

    def handler(request, full_url, headers):
        try:
            found = delete(json_body(request, headers))
        except Exception as e:  # never take moto down
            print("moto_delayed: deleting a NAT gateway failed: %r" % e, file=sys.stderr)
            found = False
        return 200, {"Content-Type": "application/json"}, json.dumps({"deleted": found})

    api_urls.url_paths["{0}/moto-api/ec2/nat/delete$"] = handler


def patch_s3():
    """moto 5.2 answers GetBucketVersioning with a <GetBucketVersioningResponse>
    root; S3 (and the strict Rust SDK) use <VersioningConfiguration>."""
    from moto.s3 import responses as r

    def get_bucket_versioning(self):
        status = self.backend.get_bucket_versioning(self.bucket_name)
        inner = f"<Status>{status}</Status>" if status else ""
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">{inner}</VersioningConfiguration>')
        return 200, {"Content-Type": "application/xml"}, body

    r.S3Response.get_bucket_versioning = get_bucket_versioning

    # S3 decides a conditional write (If-None-Match: *, If-Match) and makes
    # it as one step; moto checks, then writes, on whichever thread serves
    # the request, so two PUTs with If-None-Match: * at the same moment could
    # both win (two runs holding one state lock). Conditional writes here
    # take turns.
    original_put = r.S3Response.put_object
    conditional = threading.Lock()

    def put_object(self):
        if self.headers.get("If-None-Match") or self.headers.get("If-Match"):
            with conditional:
                return original_put(self)
        return original_put(self)

    r.S3Response.put_object = put_object


def patch_cloudwatch():
    """CloudWatch clients send POST /service/GraniteServiceVersion20100801/
    operation/<Operation> with a CBOR body (Smithy RPC v2 CBOR); moto 5.2
    only knows the query protocol on `/`. This route decodes the request,
    calls moto's CloudWatch backend and answers in CBOR, for the two
    operations the tool and its tests use."""
    import datetime as dt
    import re

    import cbor2
    from moto.cloudwatch import urls
    from moto.cloudwatch.models import cloudwatch_backends
    from moto.core import DEFAULT_ACCOUNT_ID

    def naive_utc(t):
        if isinstance(t, (int, float)):
            t = dt.datetime.fromtimestamp(t, dt.timezone.utc)
        if t.tzinfo is not None:
            t = t.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return t

    def epoch(t):
        return cbor2.CBORTag(1, t.replace(tzinfo=dt.timezone.utc).timestamp())

    def reply(status, body):
        return status, {"Content-Type": "application/cbor", "smithy-protocol": "rpc-v2-cbor"}, cbor2.dumps(body)

    def error(status, code, message):
        return reply(status, {"__type": code, "message": message})

    def handler(request, full_url, headers):
        op = full_url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        auth = headers.get("Authorization", "")
        m = re.search(r"Credential=[^/]+/[^/]+/([^/]+)/", auth)
        backend = cloudwatch_backends[DEFAULT_ACCOUNT_ID][m.group(1) if m else "us-east-1"]
        body = request.data if hasattr(request, "data") else request.body
        try:
            req = cbor2.loads(body) if body else {}
        except Exception as e:
            return error(400, "SerializationException", f"not CBOR: {e}")
        if op == "PutMetricData":
            data = []
            for d in req.get("MetricData", []):
                d = dict(d)
                if "Timestamp" in d:
                    d["Timestamp"] = naive_utc(d["Timestamp"])
                if "Value" in d:
                    d["Values"], d["Counts"] = [d.pop("Value")], ["1"]
                data.append(d)
            backend.put_metric_data(req["Namespace"], data)
            return reply(200, {})
        if op == "GetMetricStatistics":
            stats = backend.get_metric_statistics(
                req["Namespace"], req["MetricName"], naive_utc(req["StartTime"]),
                naive_utc(req["EndTime"]), int(req["Period"]), req.get("Statistics", []),
                req.get("Dimensions", []), unit=req.get("Unit"))
            points = []
            for s in stats:
                p = {"Timestamp": epoch(s.timestamp)}
                for name in req.get("Statistics", []):
                    v = s.get_statistics_for_type(name)
                    if v is not None:
                        p[name] = float(v)
                points.append(p)
            return reply(200, {"Label": req["MetricName"], "Datapoints": points})
        return error(400, "UnknownOperationException", f"the local cloud does not serve CloudWatch {op}")

    urls.url_paths["{0}/service/GraniteServiceVersion20100801/operation/(?P<operation>[A-Za-z]+)$"] = handler


def patch_iam():
    """moto builds IAM for every partition (six) of every account it sees,
    each with its 1,500 AWS managed policies parsed from JSON again: about
    0.8 s of the server's one core per new account, which the crash tests
    (an account per kill point) pay 70 times. The tool and its stacks use
    the `aws` partition only: the others get no managed policies, and the
    policies are parsed once and copied per account."""
    import copy

    from moto.iam import models as m

    original = m.IAMBackend._init_aws_policies
    prototypes = {}

    def _init_aws_policies(self):
        if self.region_name != "aws":
            return []
        if "aws" not in prototypes:
            prototypes["aws"] = original(self)
        out = []
        for p in prototypes["aws"]:
            c = copy.copy(p)
            c.account_id = self.account_id
            out.append(c)
        return out

    m.IAMBackend._init_aws_policies = _init_aws_policies


def patch_server():
    """Per request, moto lists its own package directory (to tell a service
    name from a host) under the server's one lock, and logs a line: a tenth
    of its time in the crash tests. The directory does not change while it
    runs; request lines are left out (errors are still logged)."""
    from moto import backends
    from werkzeug.serving import WSGIRequestHandler

    modules = frozenset(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    WSGIRequestHandler.log_request = lambda self, *a, **k: None


EKS_ACCESS_POLICIES = ("AmazonEKSClusterAdminPolicy", "AmazonEKSAdminPolicy", "AmazonEKSEditPolicy",
                       "AmazonEKSViewPolicy", "AmazonEKSAdminViewPolicy")


def patch_eks_access():
    """EKS access entries, which moto lacks, with EKS's rules: the cluster's
    authentication mode (accessConfig at CreateCluster, CONFIG_MAP unless
    asked; UpdateClusterConfig moves it only towards API) must admit them;
    the principal must exist in IAM; one entry per principal; policies are
    EKS's own access policies, scoped to the cluster or to namespaces. An
    entry goes away with its cluster."""
    from urllib.parse import unquote
    from moto.eks import responses as r
    from moto.eks import urls as u
    from moto.eks.exceptions import (InvalidParameterException, InvalidRequestException,
                                     ResourceInUseException, ResourceNotFoundException)
    from moto.iam.models import iam_backends

    modes = ["CONFIG_MAP", "API_AND_CONFIG_MAP", "API"]

    def reply(body):
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    def bad(message):
        return InvalidParameterException(clusterName=None, nodegroupName=None, fargateProfileName=None,
                                         addonName=None, message=message)

    def cluster_of(self):
        name = self._get_param("name") or unquote(self.path.split("/clusters/")[1].split("/")[0].split("?")[0])
        cluster = self.eks_backend.clusters.get(name)
        if cluster is None:
            raise ResourceNotFoundException(clusterName=name, nodegroupName=None, fargateProfileName=None,
                                            addonName=None, message="No cluster found for name: %s." % name)
        if not hasattr(cluster, "access_config"):
            cluster.access_config = {"authenticationMode": "CONFIG_MAP",
                                     "bootstrapClusterCreatorAdminPermissions": True}
        cluster.__dict__.setdefault("_rd_entries", {})
        return cluster

    original_create = r.EKSResponse.create_cluster

    log_types = ("api", "audit", "authenticator", "controllerManager", "scheduler")

    def check_logging(logging):
        """EKS's refusal of an unknown control-plane log type."""
        for setup in (logging or {}).get("clusterLogging") or []:
            for t in setup.get("types") or []:
                if t not in log_types:
                    raise bad("%s is not a valid log type. Valid types: %s" % (t, ", ".join(log_types)))

    def merged_logging(current, logging):
        """What EKS keeps after an update: each type's last setting, every
        type listed (enabled ones first), not the request as sent."""
        state = {}
        for setup in (current or {}).get("clusterLogging") or []:
            for t in setup.get("types") or []:
                state[t] = bool(setup.get("enabled"))
        for setup in (logging or {}).get("clusterLogging") or []:
            for t in setup.get("types") or []:
                state[t] = bool(setup.get("enabled"))
        on = [t for t in log_types if state.get(t)]
        off = [t for t in log_types if not state.get(t)]
        return {"clusterLogging": [s for s in ({"types": on, "enabled": True}, {"types": off, "enabled": False})
                                   if s["types"]]}

    def create_cluster(self):
        asked = self._get_param("accessConfig") or {}
        mode = asked.get("authenticationMode", "CONFIG_MAP")
        if mode not in modes:
            raise bad("Unsupported authentication mode %s" % mode)
        check_logging(self._get_param("logging"))
        result = original_create(self)
        made = self.eks_backend.clusters.get(self._get_param("name"))
        if made is not None:
            made.logging = merged_logging(None, self._get_param("logging"))
        cluster = self.eks_backend.clusters.get(self._get_param("name"))
        if cluster is not None and "_rd_entries" not in cluster.__dict__:
            bootstrap = asked.get("bootstrapClusterCreatorAdminPermissions", True)
            cluster.access_config = {"authenticationMode": mode,
                                     "bootstrapClusterCreatorAdminPermissions": bootstrap}
            cluster.__dict__["_rd_entries"] = {}
            # Who created it: with the bootstrap flag, EKS gives that
            # principal an access entry with the cluster admin policy (in
            # CONFIG_MAP mode an admin no entry shows).
            creator = caller(request_access_key(self.headers))
            cluster.__dict__["_rd_creator"] = creator[1] if creator else None
            if creator and bootstrap and mode != "CONFIG_MAP":
                entry = new_entry(self, cluster, creator[1], [], {}, "STANDARD")
                policy = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
                entry["_policies"][policy] = {"policyArn": policy, "accessScope": {"type": "cluster"},
                                              "associatedAt": entry["createdAt"], "modifiedAt": entry["createdAt"]}
        return result

    r.EKSResponse.create_cluster = create_cluster

    original_update = r.EKSResponse.update_cluster_config

    def update_cluster_config(self):
        # EKS takes one kind of change per update.
        kinds = [k for k in ("resourcesVpcConfig", "logging", "accessConfig", "kubernetesNetworkConfig")
                 if self._get_param(k)]
        if len(kinds) > 1:
            raise bad("Only one type of update can be allowed.")
        if self._get_param("logging"):
            check_logging(self._get_param("logging"))
            cluster = cluster_of(self)
            cluster.logging = merged_logging(cluster.logging, self._get_param("logging"))
            return reply({"update": {"id": str(uuid.uuid4()), "status": "Successful",
                                     "type": "LoggingUpdate", "params": [], "errors": []}})
        asked = self._get_param("accessConfig")
        if asked and asked.get("authenticationMode"):
            cluster = cluster_of(self)
            have, want = cluster.access_config["authenticationMode"], asked["authenticationMode"]
            if want not in modes or modes.index(want) < modes.index(have):
                raise bad("Unsupported authentication mode update from %s to %s" % (have, want))
            cluster.access_config = dict(cluster.access_config, authenticationMode=want)
            if not self._get_param("resourcesVpcConfig") and not self._get_param("logging"):
                return reply({"update": {"id": str(uuid.uuid4()), "status": "Successful",
                                         "type": "AccessConfigUpdate", "params": [], "errors": []}})
        return original_update(self)

    r.EKSResponse.update_cluster_config = update_cluster_config

    def admitting(self):
        cluster = cluster_of(self)
        if cluster.access_config["authenticationMode"] == "CONFIG_MAP":
            raise InvalidRequestException(
                message="The cluster's authentication mode must be set to one of [API, API_AND_CONFIG_MAP] to perform this operation.")
        return cluster

    def entry_of(self, cluster):
        rest = unquote(self.path.split("?")[0].split("/access-entries/", 1)[1])
        principal = rest.split("/access-policies")[0]
        entry = cluster._rd_entries.get(principal)
        if entry is None:
            raise ResourceNotFoundException(clusterName=cluster.name, nodegroupName=None, fargateProfileName=None,
                                            addonName=None, message="The specified access entry resource could not be found.")
        return entry

    def principal_exists(account, arn):
        kind_name = arn.split(":", 5)[-1]
        kind, _, name = kind_name.partition("/")
        iam = iam_backends[account]["global"]
        try:
            if kind == "role":
                iam.get_role(name.split("/")[-1])
            elif kind == "user":
                iam.get_user(name.split("/")[-1])
            else:
                return False
            return True
        except Exception:
            return False

    def public(entry):
        return {k: v for k, v in entry.items() if not k.startswith("_")}

    def new_entry(self, cluster, principal, groups, tags, kind):
        """A new access entry of the cluster for `principal`, recorded."""
        now = time.time()
        entry = {"clusterName": cluster.name, "principalArn": principal, "kubernetesGroups": groups,
                 "accessEntryArn": "arn:aws:eks:%s:%s:access-entry/%s/%s" % (
                     self.region, self.current_account, cluster.name, uuid.uuid4().hex[:12]),
                 "createdAt": now, "modifiedAt": now, "tags": tags, "username": principal, "type": kind,
                 "_policies": {}}
        cluster._rd_entries[principal] = entry
        return entry

    def create_access_entry(self):
        cluster = admitting(self)
        principal = self._get_param("principalArn") or ""
        if not principal_exists(self.current_account, principal):
            raise bad("The specified principalArn could not be found. You can view your available IAM principals in the IAM console.")
        if principal in cluster._rd_entries:
            raise ResourceInUseException(clusterName=cluster.name, nodegroupName=None, addonName=None,
                                         message="The specified access entry resource is already in use on this cluster.")
        entry = new_entry(self, cluster, principal, self._get_param("kubernetesGroups") or [],
                          self._get_param("tags") or {}, self._get_param("type") or "STANDARD")
        return reply({"accessEntry": public(entry)})

    def access_entries(self):
        if self.method == "POST":
            return create_access_entry(self)
        cluster = admitting(self)
        return reply({"accessEntries": sorted(cluster._rd_entries)})

    def access_entry(self):
        cluster = admitting(self)
        entry = entry_of(self, cluster)
        if self.method == "DELETE":
            del cluster._rd_entries[entry["principalArn"]]
            return reply({})
        return reply({"accessEntry": public(entry)})

    def access_policies(self):
        cluster = admitting(self)
        entry = entry_of(self, cluster)
        if self.method == "POST":
            policy = self._get_param("policyArn") or ""
            if policy.rsplit("/", 1)[-1] not in EKS_ACCESS_POLICIES or ":cluster-access-policy/" not in policy:
                raise bad("The specified policyArn is not a valid EKS access policy: %s" % policy)
            scope = self._get_param("accessScope") or {}
            if scope.get("type") not in ("cluster", "namespace"):
                raise bad("accessScope.type must be cluster or namespace")
            if scope.get("type") == "namespace" and not scope.get("namespaces"):
                raise bad("accessScope.namespaces is required for a namespace scope")
            now = time.time()
            entry["_policies"][policy] = {"policyArn": policy, "accessScope": scope,
                                          "associatedAt": now, "modifiedAt": now}
            return reply({"clusterName": cluster.name, "principalArn": entry["principalArn"],
                          "associatedAccessPolicy": entry["_policies"][policy]})
        return reply({"clusterName": cluster.name, "principalArn": entry["principalArn"],
                      "associatedAccessPolicies": list(entry["_policies"].values())})

    def access_policy(self):
        cluster = admitting(self)
        entry = entry_of(self, cluster)
        policy = unquote(self.path.split("?")[0]).split("/access-policies/", 1)[1]
        if entry["_policies"].pop(policy, None) is None:
            raise ResourceNotFoundException(clusterName=cluster.name, nodegroupName=None, fargateProfileName=None,
                                            addonName=None, message="The specified policy is not associated.")
        return reply({})

    def route(resp):
        # Principal and policy ARNs hold slashes (sent as %2F, often decoded
        # before routing): one route, split on the fixed words.
        path = unquote(resp.path.split("?")[0])
        if "/access-entries/" not in path:
            return access_entries(resp)
        if "/access-policies/" in path:
            return access_policy(resp)
        if path.endswith("/access-policies"):
            return access_policies(resp)
        return access_entry(resp)

    def view(request, full_url, headers):
        resp = r.EKSResponse()
        resp.setup_class(request, full_url, headers)
        try:
            return route(resp)
        except Exception as e:
            if hasattr(e, "code") and hasattr(e, "get_body"):
                return e.code, dict(e.get_headers()) if hasattr(e, "get_headers") else {}, e.get_body()
            raise
    u.url_paths["{0}/clusters/(?P<name>[^/]+)/access-entries$"] = view
    u.url_paths["{0}/clusters/(?P<name>[^/]+)/access-entries/(?P<rest>.+)$"] = view


# What the add-ons' configuration schemas admit at the top level (EKS
# validates configurationValues against the add-on version's JSON schema),
# and the properties that are strings there although they read as booleans.
ADDON_SCHEMAS = {
    "vpc-cni": ({"affinity", "env", "init", "nodeAgent", "resources", "tolerations", "enableNetworkPolicy",
                 "enableWindowsIpam", "enableWindowsPrefixDelegation", "eniConfig", "livenessProbeTimeoutSeconds",
                 "readinessProbeTimeoutSeconds", "podAnnotations", "podLabels"},
                {"enableNetworkPolicy", "enableWindowsIpam", "enableWindowsPrefixDelegation"}),
    "coredns": ({"affinity", "autoScaling", "computeType", "corefile", "nodeSelector", "podAnnotations",
                 "podDisruptionBudget", "podLabels", "replicaCount", "resources", "tolerations",
                 "topologySpreadConstraints"}, set()),
    "kube-proxy": ({"ipamMaxAllocation", "ipvs", "mode", "podAnnotations", "podLabels", "resources"}, set()),
    "aws-ebs-csi-driver": ({"controller", "node", "defaultStorageClass", "sidecars", "storageClasses",
                            "volumeSnapshotClasses"}, set()),
    "eks-pod-identity-agent": ({"affinity", "agent", "podAnnotations", "podLabels", "resources",
                                "tolerations"}, set()),
    # Community add-ons (EKS installs and updates them; their schemas follow
    # the upstream charts' values, approximated here at the top level).
    "metrics-server": ({"affinity", "args", "nodeSelector", "podAnnotations", "podLabels", "priorityClassName",
                        "replicas", "resources", "tolerations", "topologySpreadConstraints"}, set()),
    "cert-manager": ({"affinity", "cainjector", "extraArgs", "nodeSelector", "podAnnotations", "podLabels",
                      "prometheus", "replicaCount", "resources", "tolerations", "webhook"}, set()),
}
ADDON_VERSIONS = {"vpc-cni": "v1.20.4-eksbuild.1", "coredns": "v1.12.4-eksbuild.1",
                  "kube-proxy": "v1.35.0-eksbuild.1", "aws-ebs-csi-driver": "v1.50.0-eksbuild.1",
                  "eks-pod-identity-agent": "v1.3.9-eksbuild.1", "metrics-server": "v0.8.0-eksbuild.1",
                  "cert-manager": "v1.18.2-eksbuild.1"}


ROOT_SECRET = os.environ.get("RALPH_SIM_ROOT_SECRET", "testing")


def request_access_key(headers):
    """The access key id a SigV4 request is signed with."""
    auth = headers.get("Authorization") or headers.get("authorization") or ""
    if "Credential=" not in auth:
        return ""
    return auth.split("Credential=", 1)[1].split("/", 1)[0]


def caller(access_key):
    """(account, principal ARN as EKS names it, secret key) of an access key:
    an IAM user's key, an assumed role's session key (EKS names the role), or
    any other key as the default account's root, whose secret here is
    RALPH_SIM_ROOT_SECRET ("testing"); None for a key IAM made inactive."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.iam.models import iam_backends
    if not access_key:
        return None
    for account, by_partition in list(iam_backends.items()):
        iam = by_partition.get("aws") if hasattr(by_partition, "get") else None
        key = getattr(iam, "access_keys", {}).get(access_key) if iam is not None else None
        if key is None:
            continue
        if getattr(key, "status", "Active") != "Active":
            return None
        if getattr(key, "role_arn", None):
            return account, key.role_arn, key.secret_access_key
        if getattr(key, "user_name", None):
            return account, "arn:aws:iam::%s:user/%s" % (account, key.user_name), key.secret_access_key
    return DEFAULT_ACCOUNT_ID, "arn:aws:iam::%s:root" % DEFAULT_ACCOUNT_ID, ROOT_SECRET


def signing_key(url, secret):
    """The SigV4 key of a presigned URL (its credential scope) for `secret`:
    the same for every cluster a token is tried against."""
    import hashlib
    import hmac
    from urllib.parse import parse_qsl, urlsplit
    params = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
    key = ("AWS4" + secret).encode()
    for part in params.get("X-Amz-Credential", "").split("/", 1)[-1].split("/"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return key


def presigned_signature(url, key, cluster, payload_hash):
    """The SigV4 signature (with `signing_key`'s key) of a presigned STS
    GetCallerIdentity URL that signs the headers host and x-k8s-aws-id:
    CLUSTER (as aws eks get-token makes it)."""
    import hashlib
    import hmac
    from urllib.parse import parse_qsl, quote, urlsplit
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "X-Amz-Signature"]
    canonical_query = "&".join("%s=%s" % (quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in sorted(query))
    params = dict(query)
    signed = params.get("X-Amz-SignedHeaders", "")
    values = {"host": parts.netloc, "x-k8s-aws-id": cluster}
    headers = "".join("%s:%s\n" % (h, values.get(h, "")) for h in signed.split(";"))
    request = "\n".join(["GET", parts.path or "/", canonical_query, headers, signed, payload_hash])
    scope = params.get("X-Amz-Credential", "").split("/", 1)[-1]
    to_sign = "\n".join(["AWS4-HMAC-SHA256", params.get("X-Amz-Date", ""), scope,
                         hashlib.sha256(request.encode()).hexdigest()])
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def eks_authenticate():
    """EKS's side of a bearer token, for the local API server's authenticator:
    POST /moto-api/eks/authenticate with {"url": the presigned STS URL}.
    As STS would, the signature must verify with the access key's secret;
    as the EKS authenticator does, the signed x-k8s-aws-id names the
    cluster (tried against every cluster, so a token for another cluster,
    a wrong secret or an inactive key is refused). Then the cluster decides:
    its public endpoint must admit the runner's address
    (RALPH_SIM_RUNNER_ADDRESS; the tool and the tests play a CI runner
    outside the VPC), and in API modes the principal needs an access entry
    (the creator's comes from bootstrapClusterCreatorAdminPermissions); in
    CONFIG_MAP mode only the creator is admitted (the aws-auth ConfigMap is
    not read). The answer names the user, its Kubernetes groups and its
    access policies, which the authorizer applies."""
    import hashlib
    import hmac
    import ipaddress
    from urllib.parse import parse_qsl, urlsplit
    from moto.eks.models import eks_backends
    from moto.moto_api._internal import urls as api_urls

    runner = ipaddress.ip_address(os.environ.get("RALPH_SIM_RUNNER_ADDRESS", "198.51.100.23"))
    empty = hashlib.sha256(b"").hexdigest()

    def decide(url):
        params = dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))
        key = params.get("X-Amz-Credential", "").split("/", 1)[0]
        who = caller(key)
        if who is None:
            return None, "InvalidClientTokenId: the security token included in the request is invalid (access key %s is not active)" % key
        account, principal, secret = who
        given = params.get("X-Amz-Signature", "")
        key = signing_key(url, secret)
        cluster = None
        for _, _, eks in each(eks_backends):
            for c in list(eks.clusters.values()):
                if any(hmac.compare_digest(presigned_signature(url, key, c.name, h), given)
                       for h in (empty, "UNSIGNED-PAYLOAD")):
                    cluster = c
                    break
            if cluster is not None:
                break
        if cluster is None:
            return None, ("SignatureDoesNotMatch: the token of %s is not signed for any cluster of the local "
                          "EKS with that key's secret (a token for another cluster, or the wrong secret)" % principal)
        cfg = cluster.resources_vpc_config or {}
        if cfg.get("endpointPublicAccess") is False:
            return None, ("cluster %s has no public endpoint: only addresses inside its VPC reach it, and the "
                          "runner (%s) is outside" % (cluster.name, runner))
        cidrs = cfg.get("publicAccessCidrs") or ["0.0.0.0/0"]
        if not any(runner in ipaddress.ip_network(c, strict=False) for c in cidrs):
            return None, ("cluster %s's public endpoint admits %s (publicAccessCidrs), not the runner's address %s: "
                          "the connection would time out" % (cluster.name, ", ".join(cidrs), runner))
        mode = (getattr(cluster, "access_config", None) or {}).get("authenticationMode", "CONFIG_MAP")
        creator = cluster.__dict__.get("_rd_creator")
        if mode == "CONFIG_MAP":
            if principal != creator:
                return None, ("%s has no access to cluster %s: its authentication mode is CONFIG_MAP and only "
                              "the creator is mapped (the local cloud reads no aws-auth ConfigMap)" % (principal, cluster.name))
            return {"username": principal, "groups": ["system:masters"], "cluster": cluster.name, "policies": []}, None
        entry = cluster.__dict__.get("_rd_entries", {}).get(principal)
        if entry is None and principal == creator and mode == "API_AND_CONFIG_MAP":
            # A cluster made in CONFIG_MAP mode keeps its creator mapped
            # (invisibly) while the config map still counts.
            return {"username": principal, "groups": ["system:masters"], "cluster": cluster.name, "policies": []}, None
        if entry is None:
            return None, ("%s has no access entry on cluster %s (authentication mode %s): "
                          "error: You must be logged in to the server (Unauthorized)" % (principal, cluster.name, mode))
        policies = []
        for p in entry["_policies"].values():
            scope = p.get("accessScope") or {}
            where = "cluster" if scope.get("type") == "cluster" else "ns:" + ",".join(scope.get("namespaces") or [])
            policies.append("%s|%s" % (p["policyArn"].rsplit("/", 1)[-1], where))
        return {"username": entry.get("username") or principal, "groups": list(entry.get("kubernetesGroups") or []),
                "cluster": cluster.name, "policies": policies}, None

    def handler(request, full_url, headers):
        try:
            user, reason = decide(json_body(request, headers).get("url", ""))
        except Exception as e:  # never take moto down
            user, reason = None, "the local EKS could not judge the token: %r" % e
        return 200, {"Content-Type": "application/json"}, json.dumps({"user": user, "reason": reason})

    api_urls.url_paths["{0}/moto-api/eks/authenticate$"] = handler


# Add-ons that run a Deployment, which needs a node (DaemonSets such as
# vpc-cni and kube-proxy come up with the nodes instead).
ADDONS_WITH_DEPLOYMENTS = {"coredns", "metrics-server", "cert-manager", "aws-ebs-csi-driver"}


def patch_eks_addons():
    """EKS add-ons, which moto lacks (Create/Describe/List/Update/
    DeleteAddon): a known add-on name, configuration values that are a JSON
    object whose keys the add-on's schema has (and whose string properties
    are strings: vpc-cni's enableNetworkPolicy is "true", never true), one
    add-on of a name per cluster; CREATING/UPDATING before ACTIVE; they go
    with their cluster. The node listing reports whether a cluster enforces
    NetworkPolicies (vpc-cni with enableNetworkPolicy "true")."""
    from urllib.parse import unquote
    from moto.eks import responses as r
    from moto.eks import urls as u
    from moto.eks.exceptions import InvalidParameterException, ResourceInUseException, ResourceNotFoundException

    def reply(body):
        return 200, {"Content-Type": "application/json"}, json.dumps(body)

    def bad(message):
        return InvalidParameterException(clusterName=None, nodegroupName=None, fargateProfileName=None,
                                         addonName=None, message=message)

    def cluster_of(resp):
        name = unquote(resp.path.split("/clusters/")[1].split("/")[0].split("?")[0])
        cluster = resp.eks_backend.clusters.get(name)
        if cluster is None:
            raise ResourceNotFoundException(clusterName=name, nodegroupName=None, fargateProfileName=None,
                                            addonName=None, message="No cluster found for name: %s." % name)
        cluster.__dict__.setdefault("_rd_addons", {})
        return cluster

    def check_config(name, text):
        if not text:
            return
        try:
            values = json.loads(text)
        except ValueError as e:
            raise bad("ConfigurationValue provided in request is not supported: Json schema validation failed "
                      "with error: [invalid JSON: %s]" % e)
        if not isinstance(values, dict):
            raise bad("ConfigurationValue provided in request is not supported: Json schema validation failed "
                      "with error: [$: is not an object]")
        keys, strings = ADDON_SCHEMAS[name]
        for k, v in values.items():
            if k not in keys:
                raise bad("ConfigurationValue provided in request is not supported: Json schema validation "
                          "failed with error: [$.%s: is not defined in the schema and the schema does not allow "
                          "additional properties]" % k)
            if k in strings and not isinstance(v, str):
                raise bad("ConfigurationValue provided in request is not supported: Json schema validation "
                          "failed with error: [$.%s: %s found, string expected]" % (k, type(v).__name__))

    def without_nodes(addon):
        """An add-on whose pods have no node to run on (EKS reports it
        DEGRADED, InsufficientNumberOfReplicas, until a node group is up)."""
        cluster = addon.get("_cluster")
        return addon["addonName"] in ADDONS_WITH_DEPLOYMENTS and cluster is not None and not any(
            ng.status == "ACTIVE" for ng in list(cluster.nodegroups.values()))

    def status(addon):
        if time.time() < addon["_ready_at"]:
            return addon["_moving"]
        return "DEGRADED" if without_nodes(addon) else "ACTIVE"

    def public(addon):
        out = {k: v for k, v in addon.items() if not k.startswith("_")}
        out["status"] = status(addon)
        if out["status"] == "DEGRADED":
            out["health"] = {"issues": [{"code": "InsufficientNumberOfReplicas",
                                         "message": "The add-on is unhealthy because it doesn't have the desired "
                                                    "number of replicas.", "resourceIds": []}]}
        return out

    def addon_of(resp, cluster):
        name = unquote(resp.path.split("?")[0].split("/addons/", 1)[1].split("/")[0])
        addon = cluster._rd_addons.get(name)
        if addon is None:
            raise ResourceNotFoundException(clusterName=cluster.name, nodegroupName=None, fargateProfileName=None,
                                            addonName=name, message="No addon: %s found in cluster: %s" % (
                                                name, cluster.name))
        return addon

    def create(resp, cluster):
        name = resp._get_param("addonName") or ""
        if name not in ADDON_SCHEMAS:
            raise bad("Addon %s specified is not supported" % name)
        if name in cluster._rd_addons:
            raise ResourceInUseException(clusterName=cluster.name, nodegroupName=None, addonName=name,
                                         message="Addon already exists.")
        config = resp._get_param("configurationValues") or ""
        check_config(name, config)
        now = time.time()
        addon = {"addonName": name, "clusterName": cluster.name,
                 "addonVersion": resp._get_param("addonVersion") or ADDON_VERSIONS[name],
                 "addonArn": "arn:aws:eks:%s:%s:addon/%s/%s/%s" % (resp.region, resp.current_account, cluster.name,
                                                                   name, uuid.uuid4().hex[:12]),
                 "createdAt": now, "modifiedAt": now, "health": {"issues": []},
                 "serviceAccountRoleArn": resp._get_param("serviceAccountRoleArn") or None,
                 "configurationValues": config, "tags": resp._get_param("tags") or {},
                 "_ready_at": now + delay("eks_nodegroup_update"), "_moving": "CREATING", "_cluster": cluster}
        cluster._rd_addons[name] = addon
        return reply({"addon": public(addon)})

    def update(resp, cluster, addon):
        if status(addon) != "ACTIVE":
            raise ResourceInUseException(clusterName=cluster.name, nodegroupName=None, addonName=addon["addonName"],
                                         message="Addon %s is %s" % (addon["addonName"], status(addon)))
        config = resp._get_param("configurationValues")
        if config is not None:
            check_config(addon["addonName"], config)
            addon["configurationValues"] = config
        for param, key in (("addonVersion", "addonVersion"), ("serviceAccountRoleArn", "serviceAccountRoleArn")):
            if resp._get_param(param) is not None:
                addon[key] = resp._get_param(param) or None
        addon["modifiedAt"] = time.time()
        addon["_ready_at"], addon["_moving"] = time.time() + delay("eks_nodegroup_update"), "UPDATING"
        return reply({"update": {"id": str(uuid.uuid4()), "status": "InProgress", "type": "AddonUpdate",
                                 "params": [], "errors": []}})

    def route(resp):
        cluster = cluster_of(resp)
        path = unquote(resp.path.split("?")[0])
        if "/addons/" not in path:
            if resp.method == "POST":
                return create(resp, cluster)
            return reply({"addons": sorted(cluster._rd_addons)})
        addon = addon_of(resp, cluster)
        if path.endswith("/update"):
            return update(resp, cluster, addon)
        if resp.method == "DELETE":
            del cluster._rd_addons[addon["addonName"]]
            return reply({"addon": dict(public(addon), status="DELETING")})
        return reply({"addon": public(addon)})

    def view(request, full_url, headers):
        resp = r.EKSResponse()
        resp.setup_class(request, full_url, headers)
        try:
            return route(resp)
        except Exception as e:
            if hasattr(e, "code") and hasattr(e, "get_body"):
                return e.code, dict(e.get_headers()) if hasattr(e, "get_headers") else {}, e.get_body()
            raise
    u.url_paths["{0}/clusters/(?P<name>[^/]+)/addons$"] = view
    u.url_paths["{0}/clusters/(?P<name>[^/]+)/addons/(?P<rest>.+)$"] = view


def enforces_network_policy(cluster):
    """Whether an EKS cluster enforces NetworkPolicies: its vpc-cni add-on,
    ACTIVE, with enableNetworkPolicy "true"."""
    addon = (cluster.__dict__.get("_rd_addons") or {}).get("vpc-cni")
    if not addon or time.time() < addon["_ready_at"]:
        return False
    try:
        return json.loads(addon.get("configurationValues") or "{}").get("enableNetworkPolicy") == "true"
    except ValueError:
        return False


def ec2_dependencies():
    """EC2's DependencyViolation where moto has none, so that a destroy in
    the wrong order fails here as on AWS: a security group another group's
    rule names, or that a database, cache group or EKS cluster still uses;
    a subnet a NAT gateway, an EKS cluster or node group, or a database or
    cache group (through its subnet group) still sits in; an internet
    gateway detached while a NAT gateway's public address is mapped in its
    VPC. Whatever is still being deleted counts until it is gone."""
    from moto.ec2.exceptions import DependencyViolationError
    from moto.ec2.models import EC2Backend
    from moto.eks.models import eks_backends
    from moto.elasticache.models import elasticache_backends
    from moto.rds.models import rds_backends

    def same_place(backend, other):
        return other.account_id == backend.account_id and other.region_name == backend.region_name

    def places(backends, backend):
        return [b for _, _, b in each(backends) if same_place(backend, b)]

    def nats(ec2):
        return [n for n in ec2.nat_gateways.values() if n.state != "deleted"]

    def sg_users(ec2, group_id):
        for groups in ec2.groups.values():
            for g in groups.values():
                if g.id != group_id and any((r.source_group or {}).get("GroupId") == group_id
                                            for r in g.ingress_rules + g.egress_rules):
                    return g.id
        for rds in places(rds_backends, ec2):
            for db in rds.databases.values():
                if group_id in (getattr(db, "vpc_security_group_ids", None) or []):
                    return db.db_instance_identifier
        for ec in places(elasticache_backends, ec2):
            for rg in ec.replication_groups.values():
                if group_id in (getattr(rg, "security_group_ids", None) or []):
                    return rg.replication_group_id
        for eks in places(eks_backends, ec2):
            for c in eks.clusters.values():
                if group_id in ((c.resources_vpc_config or {}).get("securityGroupIds") or []):
                    return c.name
        return None

    def sg_free(self, original, *args, **kwargs):
        group_id = kwargs.get("group_id") or (args[1] if len(args) > 1 else None)
        user = group_id and sg_users(self, group_id)
        if user:
            raise DependencyViolationError(f"resource {group_id} has a dependent object ({user})")
        return None

    wrap(EC2Backend, "delete_security_group", before=sg_free)

    def subnet_users(ec2, subnet_id):
        for n in nats(ec2):
            if n.subnet_id == subnet_id:
                return n.id
        for eks in places(eks_backends, ec2):
            for c in eks.clusters.values():
                if subnet_id in ((c.resources_vpc_config or {}).get("subnetIds") or []):
                    return c.name
                for ng in c.nodegroups.values():
                    if subnet_id in (ng.subnets or []):
                        return ng.nodegroup_name
        for rds in places(rds_backends, ec2):
            for db in rds.databases.values():
                # (moto keeps the group's Subnet objects in `_subnets`)
                group = getattr(db, "db_subnet_group", None)
                if subnet_id in [getattr(x, "id", None) for x in getattr(group, "_subnets", None) or []]:
                    return db.db_instance_identifier
        for ec in places(elasticache_backends, ec2):
            for rg in ec.replication_groups.values():
                group = ec.cache_subnet_groups.get(getattr(rg, "cache_subnet_group_name", None) or "")
                if group is not None and subnet_id in (group.subnet_ids or []):
                    return rg.replication_group_id
        return None

    def subnet_free(self, original, subnet_id, *a, **k):
        user = subnet_users(self, subnet_id)
        if user:
            raise DependencyViolationError(
                f"The subnet '{subnet_id}' has dependencies and cannot be deleted. ({user})")
        return None

    wrap(EC2Backend, "delete_subnet", before=subnet_free)

    def unmapped(self, original, internet_gateway_id, vpc_id, *a, **k):
        subnets = {sid for by_zone in self.subnets.values() for sid, sn in by_zone.items() if sn.vpc_id == vpc_id}
        if any(n.subnet_id in subnets and (getattr(n, "connectivity_type", None) or "public") == "public" for n in nats(self)):
            raise DependencyViolationError(
                f"Network {vpc_id} has some mapped public address(es). Please unmap those public "
                "address(es) before detaching the gateway.")
        return None

    wrap(EC2Backend, "detach_internet_gateway", before=unmapped)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    for patch in (patch_eks, patch_eks_rules, patch_eks_access, eks_authenticate, patch_eks_addons, network_model, node_listing, eks_autoscale, elbv2_serve, patch_wafv2, patch_logs, patch_rds, patch_elasticache,
                  patch_elasticache_servers, patch_nat, ec2_dependencies, patch_s3, patch_cloudwatch, patch_iam, patch_server):
        try:
            patch()
        except Exception as e:  # a moto upgrade moved something: say so, keep serving
            print(f"moto_delayed: {patch.__name__} not applied: {e!r}", file=sys.stderr)
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address=host, port=port, verbose=False)
    server.start()
    print(f"moto (with delays x{SCALE}) on {host}:{port}", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
