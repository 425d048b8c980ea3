"""ralph-deploy benchmarks: prints one table, each figure with its target.

Run through bench/run, which builds the release binary, starts the local
clouds and passes their addresses in the environment:
  RD_BIN            the ralph-deploy binary
  BENCH_MOTO_SLOW   moto with the fixed latency profile (bench 1)
  BENCH_MOTO_FAST   moto without delays (benches 2 and 3)
  BENCH_PROXY       fault proxy in front of BENCH_MOTO_FAST (40 ms per request)
  BENCH_PROFILE     the latency profile (JSON, seconds per operation)
  BENCH_GCP         the Google Cloud test double with BENCH_GCP_PROFILE (bench 1)
  BENCH_RUNS        runs per figure (median reported)
  BENCH_SIZES       stack sizes for benches 2 and 3 (default 100,1000,5000)
  BENCH_APPLY_SIZES stack sizes for bench 6 (default 250,1000,2000,5000)
"""
import concurrent.futures
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import boto3

RD = os.environ["RD_BIN"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("BENCH_RUNS", "3"))
PROFILE = json.loads(os.environ["BENCH_PROFILE"])
ROWS = []


def row(name, value, unit, target=""):
    ROWS.append((name, value, unit, target))
    print(f"  {name}: {value} {unit} {('(target ' + target + ')') if target else ''}", file=sys.stderr, flush=True)


def post(url, body=b""):
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read() or b"{}")


def reset(moto):
    urllib.request.urlopen(urllib.request.Request(moto + "/moto-api/reset", data=b"", method="POST")).read()


def run(args, endpoint, state, env=None, check=True):
    """Runs the tool; returns (seconds, peak RSS in MB, stdout)."""
    e = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
             AWS_REGION="us-east-1", RALPH_DEPLOY_STATE_DIR=state, ANTHROPIC_API_KEY="bench-not-a-key")
    e.update(env or {})
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t = time.monotonic()
    p = subprocess.run([RD] + args, env=e, capture_output=True, text=True, cwd=REPO)
    dt = time.monotonic() - t
    if os.environ.get("BENCH_TRACE"):  # each run's progress, to see where the time went
        with open(os.environ["BENCH_TRACE"], "a") as f:
            f.write(f"==== {' '.join(args)} ({dt:.2f} s)\n{p.stderr}")
    if check and p.returncode not in (0, 2):
        raise SystemExit(f"{' '.join(args)} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return dt, max(peak, before) / 1024.0, p.stdout


def peak_rss(args, endpoint="http://127.0.0.1:9"):
    """Peak RSS of one command, measured alone (GNU time's %M via /proc)."""
    e = dict(os.environ, AWS_ENDPOINT_URL=endpoint)
    t = time.monotonic()
    p = subprocess.Popen([RD] + args, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode not in (0, 2):
        raise SystemExit(f"{args} failed: {p.stderr.read().decode()[-2000:]}")
    return time.monotonic() - t, usage.ru_maxrss / 1024.0


GCP_WEIGHTS = {
    # the cluster's own provisioning, then removing the node pool GKE insists on creating it with
    "gcp.gke_cluster": ["gke_cluster_create", "gke_pool_delete"], "gcp.gke_node_pool": ["gke_pool_create"],
    "gcp.sql_instance": ["sql_create"], "gcp.redis_instance": ["redis_create"],
    "gcp.network": ["compute"], "gcp.subnetwork": ["compute"], "gcp.firewall": ["compute"],
    "gcp.router": ["compute"], "gcp.global_address": ["compute"],
    "gcp.sql_database": ["sql_child"], "gcp.sql_user": ["sql_child"],
    # private services access: the peering Cloud SQL's private address waits for
    "gcp.service_networking_connection": ["sn_connect"],
}


def critical_path(stack, env, profile=None):
    """The longest chain of provisioning delays through the stack's graph."""
    profile = profile or PROFILE
    _, _, out = run(["graph", stack, "--env", env, "--format", "json"], "http://127.0.0.1:9", "/tmp/unused")
    nodes = {n["address"]: n for n in json.loads(out)["nodes"]}
    weight_of = {
        "aws.eks_cluster": "eks_cluster_create", "aws.eks_nodegroup": "eks_nodegroup_create",
        "aws.elasticache_replication_group": "elasticache_create", "aws.nat_gateway": "nat_create",
    }
    def weight(n):
        if n["kind"] == "aws.rds_instance":
            return profile["rds_replica_create" if "replica" in n["address"] else "rds_create"]
        if n["kind"] == "gcp.sql_instance" and "replica" in n["address"]:
            return profile["sql_replica_create"]
        if n["kind"] in GCP_WEIGHTS:
            return sum(profile.get(k, 0.0) for k in GCP_WEIGHTS[n["kind"]])
        return profile.get(weight_of.get(n["kind"], ""), 0.0)
    memo = {}
    def finish(a):
        if a not in memo:
            n = nodes[a]
            memo[a] = weight(n) + max([finish(d) for d in n["depends_on"]] or [0.0])
        return memo[a]
    return max(finish(a) for a in nodes)


_RUN = [0]


def drop_namespaces():
    """Deletes the namespaces earlier runs made: their pods (the
    orchestrator's, a real Prometheus and Alertmanager each) would
    otherwise pile up on the node simulator, which looks at every pod each
    round, and slow the later runs' rollouts."""
    import re
    import ssl
    text = open(os.environ["BENCH_KUBECONFIG"]).read()
    server = re.search(r"server:\s*(\S+)", text).group(1)
    token = re.search(r"token:\s*(\S+)", text).group(1)
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    for n in range(1, _RUN[0] + 1):
        req = urllib.request.Request(f"{server}/api/v1/namespaces/bench-{os.getpid()}-{n}", method="DELETE",
                                     headers={"Authorization": "Bearer " + token})
        try:
            urllib.request.urlopen(req, context=ctx, timeout=10).read()
        except urllib.error.HTTPError:
            pass  # not made (a run that made no namespace) or gone


def production_vars():
    """Variables of an aws-production run: the database through its tunnel
    url, the cluster through the local kubeconfig, a fresh namespace (the
    earlier runs' are deleted first)."""
    drop_namespaces()
    _RUN[0] += 1
    return {
        "RALPH_DEPLOY_VAR_database_tunnel_url": os.environ["BENCH_PG_URL"],
        "RALPH_DEPLOY_VAR_kubeconfig": os.environ["BENCH_KUBECONFIG"],
        "RALPH_DEPLOY_VAR_namespace": f"bench-{os.getpid()}-{_RUN[0]}",
        # Upstream add-ons need the network and a cluster that runs containers.
        "RALPH_DEPLOY_VAR_cluster_addons": "{}",
    }


def warm(moto, stack, env, st):
    """After a reset moto builds its backends lazily on first use (IAM loads
    ~1,000 managed policies, EC2 its AMIs): seconds that belong to the local
    cloud, not to the apply. An untimed plan touches every service first."""
    run(["plan", stack, "--env", env], moto, st, env=production_vars())


def bench_critical_path():
    moto = os.environ["BENCH_MOTO_SLOW"]
    stack, env = "stacks/aws-production.yaml", "production"
    cp = critical_path(stack, env)
    row("1. critical path of aws-production (delay profile)", f"{cp:.2f}", "s")
    times = []
    for _ in range(RUNS):
        reset(moto)
        with tempfile.TemporaryDirectory() as st:
            warm(moto, stack, env, st)
            dt, _, _ = run(["apply", stack, "--env", env, "--auto-approve"], moto, st,
                           env=production_vars())
            times.append(dt)
    wall = statistics.median(times)
    row("1. apply wall time, parallelism 10 (median)", f"{wall:.2f}", "s")
    row("1. apply / critical path", f"{wall / cp:.3f}", "x", "<= 1.05")
    reset(moto)
    with tempfile.TemporaryDirectory() as st:
        warm(moto, stack, env, st)
        dt, _, _ = run(["apply", stack, "--env", env, "--auto-approve", "--parallelism", "1"], moto, st,
                       env=production_vars())
    row("1. apply wall time, parallelism 1 (a hand-run script)", f"{dt:.2f}", "s")
    row("1. parallelism 1 / critical path", f"{dt / cp:.3f}", "x")


def bench_gcp_critical_path():
    """Bench 1 on Google Cloud: gcp-production against the double with the
    same latency scale; every run in a project of its own (an empty cloud)."""
    endpoint = os.environ["BENCH_GCP"]
    profile = json.loads(os.environ["BENCH_GCP_PROFILE"])
    stack, env = "stacks/gcp-production.yaml", "production"
    cp = critical_path(stack, env, profile)
    row("1. critical path of gcp-production (delay profile)", f"{cp:.2f}", "s")

    def gcp_vars(parallelism_tag):
        v = production_vars()
        v["RALPH_DEPLOY_GCP_ENDPOINT"] = endpoint
        v["RALPH_DEPLOY_VAR_project"] = f"bench-{os.getpid()}-{_RUN[0]}-{parallelism_tag}"
        return v

    times = []
    for _ in range(RUNS):
        with tempfile.TemporaryDirectory() as st:
            v = gcp_vars("p10")
            dt, _, _ = run(["apply", stack, "--env", env, "--auto-approve"], "http://127.0.0.1:9", st, env=v)
            times.append(dt)
    wall = statistics.median(times)
    row("1. gcp apply wall time, parallelism 10 (median)", f"{wall:.2f}", "s")
    row("1. gcp apply / critical path", f"{wall / cp:.3f}", "x", "<= 1.05")
    with tempfile.TemporaryDirectory() as st:
        v = gcp_vars("p1")
        dt, _, _ = run(["apply", stack, "--env", env, "--auto-approve", "--parallelism", "1"],
                       "http://127.0.0.1:9", st, env=v)
    row("1. gcp apply wall time, parallelism 1 (a hand-run script)", f"{dt:.2f}", "s")
    row("1. gcp parallelism 1 / critical path", f"{dt / cp:.3f}", "x")


def proxy_count():
    return json.loads(urllib.request.urlopen(os.environ["BENCH_PROXY"] + "/__faults").read())["stats"]["requests"]


def bench_scale():
    fast, proxy = os.environ["BENCH_MOTO_FAST"], os.environ["BENCH_PROXY"]
    for n in [int(x) for x in os.environ.get("BENCH_SIZES", "100,1000,5000").split(",")]:
        reset(fast)
        with tempfile.TemporaryDirectory() as tmp:
            stack = os.path.join(tmp, "stack.yaml")
            with open(stack, "w") as f:
                subprocess.run([sys.executable, os.path.join(REPO, "bench", "gen_stack.py"), str(n), f"bench-{n}"], stdout=f, check=True)
            st = os.path.join(tmp, "state")
            post(proxy + "/__faults", json.dumps({"rate": 0.0}).encode())
            dt, _, out = run(["apply", stack, "--auto-approve", "--json", "--parallelism", "32"], fast, st)
            summary = [json.loads(l) for l in out.splitlines() if '"summary"' in l][-1]
            if n == 1000:
                cap = capacity(fast)
                floor = summary["requests"] / cap
                row("3. apply of N=1000 from nothing", f"{dt:.2f}", "s")
                row("3. its requests / local cloud capacity (the floor)", f"{summary['requests']} / {cap:.0f} per s = {floor:.2f}", "s")
                row("3. apply / floor", f"{dt / floor:.2f}", "x")
            # The no-op plan, every request 40 ms away.
            post(proxy + "/__faults", json.dumps({"rate": 1.0, "kinds": ["slow"], "slow_ms": 40}).encode())
            walls, peaks, reqs, seen, cpus, direct = [], [], [], [], [], []
            for _ in range(RUNS):
                before = proxy_count()
                t = time.monotonic()
                p = subprocess.Popen([RD, "plan", stack, "--json", "--detailed-exitcode"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     env=dict(os.environ, AWS_ENDPOINT_URL=proxy, AWS_ACCESS_KEY_ID="b", AWS_SECRET_ACCESS_KEY="b",
                                              AWS_REGION="us-east-1", RALPH_DEPLOY_STATE_DIR=st, RALPH_DEPLOY_API_TIMEOUT="1800"))
                stdout = p.stdout.read()
                _, status, usage = os.wait4(p.pid, 0)
                walls.append(time.monotonic() - t)
                code = os.waitstatus_to_exitcode(status)
                if code != 0:
                    raise SystemExit(f"the no-op plan of N={n} was not empty (exit {code}): {p.stderr.read().decode()[-2000:]}")
                plan = json.loads(stdout)
                reqs.append(plan["requests"])
                seen.append(proxy_count() - before)
                peaks.append(usage.ru_maxrss / 1024.0)
                cpus.append(usage.ru_utime + usage.ru_stime)
            # The same plan straight to the local cloud: what the cloud itself costs.
            for _ in range(RUNS):
                t = time.monotonic()
                subprocess.run([RD, "plan", stack, "--json"], cwd=REPO, capture_output=True,
                               env=dict(os.environ, AWS_ENDPOINT_URL=fast, AWS_ACCESS_KEY_ID="b", AWS_SECRET_ACCESS_KEY="b",
                                        AWS_REGION="us-east-1", RALPH_DEPLOY_STATE_DIR=st, RALPH_DEPLOY_API_TIMEOUT="1800"))
                direct.append(time.monotonic() - t)
            post(proxy + "/__faults", json.dumps({"rate": 0.0}).encode())
            tgt = n == 1000
            row(f"2. no-op plan N={n}: wall (40 ms per request)", f"{statistics.median(walls):.2f}", "s", "< 2" if tgt else "")
            row(f"2. no-op plan N={n}: requests (tool / local cloud)", f"{statistics.median(reqs):.0f} / {statistics.median(seen):.0f}", "", "<= 50" if tgt else "")
            row(f"2. no-op plan N={n}: peak memory", f"{statistics.median(peaks):.1f}", "MB", "< 100" if tgt else "")
            row(f"2. no-op plan N={n}: the tool's own CPU time", f"{statistics.median(cpus):.2f}", "s")
            row(f"2. no-op plan N={n}: wall with no added latency (the local cloud's own time)", f"{statistics.median(direct):.2f}", "s")


def capacity(moto, seconds=3.0, threads=8):
    """The local cloud's own request rate, measured with a plain client."""
    c = boto3.client("ec2", endpoint_url=moto, region_name="us-east-1", aws_access_key_id="b", aws_secret_access_key="b")
    stop = time.monotonic() + seconds
    def worker():
        n = 0
        while time.monotonic() < stop:
            c.describe_vpcs(Filters=[{"Name": "tag:nothing", "Values": ["x"]}])
            n += 1
        return n
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        total = sum(ex.map(lambda _: worker(), range(threads)))
    return total / seconds


def bench_offline():
    with tempfile.TemporaryDirectory() as tmp:
        stack = os.path.join(tmp, "stack.yaml")
        with open(stack, "w") as f:
            subprocess.run([sys.executable, os.path.join(REPO, "bench", "gen_stack.py"), "10000", "bench-offline"], stdout=f, check=True)
        for verb, extra in (("validate", []), ("graph", ["--format", "dot"])):
            results = [peak_rss([verb, stack] + extra) for _ in range(RUNS)]
            row(f"4. {verb} of 10,000 resources: time", f"{statistics.median(r[0] for r in results):.3f}", "s", "< 0.5")
            row(f"4. {verb} of 10,000 resources: peak memory", f"{statistics.median(r[1] for r in results):.1f}", "MB", "< 200")


def run_measured(args, env):
    """As `measured`, with the child's rusage read by wait4 itself."""
    t = time.monotonic()
    with open(os.devnull, "wb") as null, tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen([RD] + args, env=env, cwd=REPO, stdout=out, stderr=err, stdin=null)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.monotonic() - t
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code not in (0, 2):
            raise SystemExit(f"{' '.join(args)} failed ({code}):\n{err.read().decode()[-3000:]}")
        return wall, usage.ru_utime + usage.ru_stime, usage.ru_oublock * 512, out.read().decode()


def bench_apply_fake_cloud():
    """6. The engine alone: apply of N resources (default 1,000, 5,000 and
    10,000) on the in-process fake cloud with the local state store. A test
    harness of the crate (debug build, as the test suite builds it) prints
    one line per size; the numbers are for their ratio across sizes."""
    sizes = os.environ.get("BENCH_FAKE_SIZES", "1000,5000,10000")
    p = subprocess.run(["cargo", "test", "--locked", "--quiet", "--lib", "apply_at_scale_on_the_fake_cloud", "--",
                        "--ignored", "--nocapture"], cwd=REPO, capture_output=True, text=True,
                       env=dict(os.environ, RALPH_BENCH_FAKE_SIZES=sizes))
    lines = [l for l in p.stdout.splitlines() if l.startswith("fake cloud, N=")]
    if p.returncode != 0 or not lines:
        raise SystemExit(f"the fake-cloud harness failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    for l in lines:
        head, rest = l.split(": ", 1)
        row(f"6. apply on the in-process fake cloud, {head[len('fake cloud, '):]} (debug build)", rest, "")


def bench_apply_scale():
    """6. Apply from nothing at N resources on the local AWS with no delays:
    the tool's own CPU and the bytes it writes, per resource, on the local
    and the S3 state store; then the no-op plan of the same stack."""
    fast = os.environ["BENCH_MOTO_FAST"]
    base = dict(os.environ, AWS_ENDPOINT_URL=fast, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                AWS_REGION="us-east-1", RALPH_DEPLOY_API_TIMEOUT="1800")
    stores = os.environ.get("BENCH_STORES", "local,s3").split(",")
    for n in [int(x) for x in os.environ.get("BENCH_APPLY_SIZES", "250,1000,2000,5000").split(",")]:
        for store in stores:
            reset(fast)
            with tempfile.TemporaryDirectory() as tmp:
                stack = os.path.join(tmp, "stack.yaml")
                with open(stack, "w") as f:
                    subprocess.run([sys.executable, os.path.join(REPO, "bench", "gen_stack.py"), str(n), f"scale-{n}"],
                                   stdout=f, check=True)
                env = dict(base, RALPH_DEPLOY_STATE_DIR=os.path.join(tmp, "state"))
                if store == "s3":
                    boto3.client("s3", endpoint_url=fast, region_name="us-east-1", aws_access_key_id="bench",
                                 aws_secret_access_key="bench").create_bucket(Bucket="bench-state")
                    env["RALPH_DEPLOY_STATE"] = f"s3://bench-state/n{n}"
                wall, cpu, written, out = run_measured(["apply", stack, "--auto-approve", "--json", "--parallelism", "32"], env)
                summary = [json.loads(l) for l in out.splitlines() if '"summary"' in l][-1]
                made = summary.get("created", n)
                row(f"6. apply of N={n} from nothing, {store} state: wall", f"{wall:.1f}", "s")
                row(f"6. apply of N={n}, {store} state: the tool's CPU", f"{cpu:.2f} s, {1000 * cpu / made:.2f} ms per resource", "")
                if store == "local":
                    row(f"6. apply of N={n}, {store} state: bytes written to disk", f"{written / 1e6:.1f} MB, {written / made / 1e3:.1f} kB per resource", "")
                row(f"6. apply of N={n}, {store} state: requests to the cloud", f"{summary['requests']}", "")
                if store == stores[0]:
                    wall, cpu, _, _ = run_measured(["plan", stack, "--json", "--detailed-exitcode"], env)
                    row(f"6. no-op plan of N={n}: wall (the local cloud's own time, no added latency)", f"{wall:.1f}", "s")
                    row(f"6. no-op plan of N={n}: the tool's CPU", f"{cpu:.2f}", "s")


def psql(url, sql):
    out = subprocess.run(["psql", url, "-XAtqc", sql], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"psql failed: {out.stderr}")
    return out.stdout.strip()


def bench_backup():
    """5. Peak memory of `backup` as the database grows: it streams, so a
    database 50 times larger must not need more memory."""
    server = os.environ["BENCH_PG_URL"].rsplit("/", 1)[0]
    admin = server + "/postgres?sslmode=disable"
    psql(admin, "DROP DATABASE IF EXISTS bench_backup WITH (FORCE)")
    psql(admin, "CREATE DATABASE bench_backup")
    db = server + "/bench_backup?sslmode=disable"
    endpoint = os.environ["BENCH_MOTO_FAST"]
    reset(endpoint)
    with tempfile.TemporaryDirectory() as tmp:
        stack = os.path.join(tmp, "stack.yaml")
        with open(stack, "w") as f:
            f.write(
                "name: bench-backup\nvariables:\n  db: { type: string }\nenvironments:\n  production: {}\n"
                "resources:\n  backups:\n    kind: aws.s3_bucket\n    properties:\n      name: bench-backup-bucket\n"
                "  schema:\n    kind: postgres.migrations\n    properties:\n"
                f"      directory: {os.path.join(REPO, 'migrations')}\n      url: ${{var.db}}\n"
            )
        env = dict(os.environ, AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                   AWS_REGION="us-east-1", RALPH_DEPLOY_STATE_DIR=os.path.join(tmp, "state"), RALPH_DEPLOY_VAR_db=db)
        subprocess.run([RD, "apply", stack, "--env", "production", "--auto-approve"], env=env, check=True,
                       capture_output=True)
        for target_mb in (10, 500):
            # Rows of about 1 KB of random hex (compressible about 2:1)
            # until the database reaches the target size.
            while int(psql(db, "SELECT pg_database_size(current_database())")) < target_mb << 20:
                psql(db, "INSERT INTO audit.activity_log (user_name, action, details) "
                         "SELECT 'bench', 'fill', jsonb_build_object('pad', "
                         "(SELECT string_agg(md5(i::text || g::text || random()::text), '') "
                         "FROM generate_series(1, 30) g)) "
                         "FROM generate_series(1, 5000) i")
            size = int(psql(db, "SELECT pg_database_size(current_database())")) / 1048576
            t = time.monotonic()
            p = subprocess.Popen([RD, "backup", stack, "--env", "production", "--json"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
            out = p.stdout.read()
            _, status, usage = os.wait4(p.pid, 0)
            if os.waitstatus_to_exitcode(status) != 0:
                raise SystemExit(f"backup failed: {p.stderr.read().decode()[-2000:]}")
            dumped = json.loads(out)["manifest"]["bytes"] / 1048576
            row(f"5. backup of a {size:.0f} MB database ({dumped:.0f} MB dump): peak memory",
                f"{usage.ru_maxrss / 1024.0:.1f}", "MB", "flat")
            row(f"5. backup of a {size:.0f} MB database: time", f"{time.monotonic() - t:.1f}", "s")
    psql(admin, "DROP DATABASE IF EXISTS bench_backup WITH (FORCE)")


def main():
    which = sys.argv[1:] or ["1", "2", "4", "5", "6"]
    if "5" in which:
        bench_backup()
    if "4" in which:
        bench_offline()
    if "1" in which:
        bench_critical_path()
    if "1" in which or "1g" in which:
        bench_gcp_critical_path()
    if "2" in which:
        bench_scale()
    if "6" in which:
        bench_apply_scale()
        bench_apply_fake_cloud()
    print()
    print(f"| benchmark | result | unit | target |")
    print(f"|---|---|---|---|")
    for name, value, unit, target in ROWS:
        print(f"| {name} | {value} | {unit} | {target} |")


if __name__ == "__main__":
    main()
