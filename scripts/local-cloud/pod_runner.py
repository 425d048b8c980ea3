"""The node simulator's kubelet for pods whose software this machine has.

Most simulated pods run nothing: the simulator answers their probes and
their ports (node_sim.py). A pod whose image is Prometheus or Alertmanager
runs the real program instead (Debian's prometheus and
prometheus-alertmanager), as a kubelet would:

- the pod gets an address of its own, from 198.18.0.0/16 (a range for
  network tests, which the API server proxies to, unlike loopback), added
  to this machine's loopback interface; the programs listen there, so two
  stacks' Prometheus both use 9090 and the orchestrators' simulated
  metrics on the machine's address keep theirs. Each local cloud on the
  machine (the tests' and the walkthrough's run at once) claims a /24 of
  its own: the first 198.18.B.1 it can add is its DNS server's address,
  and its pods take 198.18.B.2-254;
- its ConfigMap, Secret and emptyDir volumes are made under a directory of
  its own, and the mount paths in its arguments and in those files point
  there (the one liberty: no container filesystem);
- it resolves names through the cluster's DNS: a server on 198.18.B.1:53
  that answers `SERVICE.NAMESPACE.svc[.cluster.local]` with the Service's
  ready endpoints (what kube-dns returns for a headless Service; there is
  no kube-proxy here, so a ClusterIP Service answers the same), through a
  resolv.conf bound over /etc/resolv.conf in a mount namespace of its own;
- it is Ready when the program answers its readiness probe, and restarted
  (restartCount) when it exits; it is stopped when the pod goes.

Where the machine does not allow it (no `ip`, no root, no `unshare`), these
pods fall back to being simulated like the others, and say so in the log.
"""
import os
import shutil
import signal
import socket
import collections
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

POD_NET = "198.18"
# How long a passed readiness probe holds (a kubelet's holds for its period).
PROBE_TTL = 2.0
# Image name -> the program that is that image's software here.
PROGRAMS = {"prometheus": "prometheus", "alertmanager": "prometheus-alertmanager"}


def image_name(image):
    return image.split("@")[0].rsplit(":", 1)[0].rsplit("/", 1)[-1]


def log(msg):
    print("pod runner: %s" % msg, file=sys.stderr, flush=True)


def already_there(stderr):
    """Whether `ip addr add` failed because the address is on the interface
    already (EEXIST: "RTNETLINK answers: File exists" from older iproute2,
    "Error: ipv4: Address already assigned." from newer ones)."""
    return "File exists" in stderr or "already assigned" in stderr


def add_address(addr):
    r = subprocess.run(["ip", "addr", "add", addr + "/32", "dev", "lo"], capture_output=True, text=True)
    return r.returncode == 0 or already_there(r.stderr), r.stderr.strip()


def drop_address(addr):
    subprocess.run(["ip", "addr", "del", addr + "/32", "dev", "lo"], capture_output=True)


class Dns:
    """A DNS server for the cluster's Service names (A records only)."""

    def __init__(self, address, endpoints):
        self.endpoints = endpoints  # (namespace, service) -> [address] or None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((address, 53))
        threading.Thread(target=self.serve, daemon=True).start()

    def lookup(self, name):
        """The addresses of a Service name, [] when it has none ready, None
        when it is no Service's."""
        parts = name.lower().rstrip(".").split(".")
        if parts[-2:] == ["cluster", "local"]:
            parts = parts[:-2]
        if len(parts) != 3 or parts[2] != "svc":
            return None
        return self.endpoints(parts[1], parts[0])

    def serve(self):
        while True:
            try:
                query, peer = self.sock.recvfrom(4096)
                answer = self.answer(query)
                if answer:
                    self.sock.sendto(answer, peer)
            except Exception as e:  # a malformed query
                log("dns: %s" % e)

    def answer(self, query):
        if len(query) < 12:
            return None
        qid, flags, qd = struct.unpack(">HHH", query[:6])
        if qd != 1:
            return None
        at, labels = 12, []
        while query[at]:
            n = query[at]
            labels.append(query[at + 1:at + 1 + n].decode("ascii", "replace"))
            at += 1 + n
        qtype, _ = struct.unpack(">HH", query[at + 1:at + 5])
        question = query[12:at + 5]
        addresses = self.lookup(".".join(labels))
        rd = flags & 0x0100
        if addresses is None:
            header = struct.pack(">HHHHHH", qid, 0x8083 | rd, 1, 0, 0, 0)  # NXDOMAIN
            return header + question
        records = [a for a in addresses if qtype in (1, 255)]
        header = struct.pack(">HHHHHH", qid, 0x8480 | rd, 1, len(records), 0, 0)
        body = b"".join(struct.pack(">HHHIH", 0xC00C, 1, 1, 5, 4) + socket.inet_aton(a) for a in records)
        return header + question + body


class Runner:
    def __init__(self, run_dir, call):
        self.call = call
        self.root = os.path.join(run_dir, "pods")
        self.pods = {}  # uid -> {"address", "proc", "dir", "restarts", "started", "name", ...}
        self.passed = {}  # (uid, container) -> when its readiness probe last passed
        self.block = None
        # Addresses are handed out in turn, oldest freed first, as a CNI's
        # host-local allocator does: an address freed a moment ago is the
        # last to be reused, so a client that still holds it (a test that
        # waits for a deleted pod's server to go) never reaches a new pod.
        self.free = collections.deque()
        self.enabled = False
        why = self.unavailable()
        if why:
            log("pods run simulated only: %s" % why)
            return
        os.makedirs(self.root, exist_ok=True)
        self.resolv = os.path.join(self.root, "resolv.conf")
        with open(self.resolv, "w") as f:
            f.write("search svc.cluster.local cluster.local\nnameserver %s\noptions ndots:5\n" % self.dns_address)
        self.dns = Dns(self.dns_address, self.endpoints)
        self.free = collections.deque("%s.%d.%d" % (POD_NET, self.block, h) for h in range(2, 255))
        self.enabled = True
        log("pods of %s run for real on %s.%d.0/24" % (", ".join(sorted(PROGRAMS)), POD_NET, self.block))
        signal.signal(signal.SIGTERM, lambda *a: (self.stop_all(), os._exit(0)))

    def unavailable(self):
        for tool in ("ip", "unshare"):
            if not shutil.which(tool):
                return "no `%s` on this machine" % tool
        err = ""
        for block in range(1, 255):
            r = subprocess.run(["ip", "addr", "add", "%s.%d.1/32" % (POD_NET, block), "dev", "lo"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                self.block = block
                break
            # Taken: by another local cloud running now, or left by one that
            # was killed before it could remove its addresses.
            err = r.stderr.strip()
            if not already_there(err):
                break
        if self.block is None:
            return "cannot add an address of 198.18.0.0/16 to the loopback interface: %s" % err
        self.dns_address = "%s.%d.1" % (POD_NET, self.block)
        probe = subprocess.run(["unshare", "-m", "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            return "cannot make a mount namespace: %s" % probe.stderr.strip()
        return None

    def endpoints(self, namespace, service):
        try:
            ep = self.call("GET", "/api/v1/namespaces/%s/endpoints/%s" % (namespace, service))
        except urllib.error.HTTPError:
            return None
        return [a["ip"] for s in ep.get("subsets") or [] for a in s.get("addresses") or []]

    def program(self, pod):
        """(container, program) when this pod runs for real here."""
        if not self.enabled:
            return None
        containers = pod["spec"].get("containers", [])
        if len(containers) != 1:
            return None
        c = containers[0]
        program = PROGRAMS.get(image_name(c.get("image", "")))
        if program and shutil.which(program):
            return c, program
        return None

    def address(self, pod):
        uid = pod["metadata"]["uid"]
        run = self.pods.get(uid)
        return run["address"] if run else None

    def allocate(self):
        return self.free.popleft() if self.free else None

    def volumes(self, pod, c, here, secret, configmap):
        """Writes the pod's volumes under `here`; returns [(mountPath, dir)]."""
        ns = pod["metadata"]["namespace"]
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts") or []}
        made = []
        for v in pod["spec"].get("volumes") or []:
            at = mounts.get(v["name"])
            if at is None:
                continue
            place = os.path.join(here, at.lstrip("/"))
            os.makedirs(place, exist_ok=True)
            files = {}
            if "configMap" in v:
                data = configmap(ns, v["configMap"]["name"])
                if data is None:
                    raise RuntimeError("ConfigMap %s not found" % v["configMap"]["name"])
                items = v["configMap"].get("items") or [{"key": k, "path": k} for k in data]
                files = {i["path"]: data[i["key"]] for i in items}
            elif "secret" in v:
                data = secret(ns, v["secret"]["secretName"])
                if data is None:
                    raise RuntimeError("Secret %s not found" % v["secret"]["secretName"])
                files = dict(data)
            for path, text in files.items():
                with open(os.path.join(place, path), "w") as f:
                    f.write(text)
            made.append((at, place))
        # Longest mount path first: /etc/alertmanager/keys before /etc/alertmanager.
        made.sort(key=lambda m: -len(m[0]))
        for at, place in made:
            for name in os.listdir(place):
                f = os.path.join(place, name)
                if os.path.isfile(f):
                    with open(f) as fh:
                        text = fh.read()
                    new = relocate(text, made)
                    if new != text:
                        with open(f, "w") as fh:
                            fh.write(new)
        return made

    def start(self, pod, c, program, secret, configmap):
        uid = pod["metadata"]["uid"]
        run = self.pods.get(uid)
        if run is None:
            addr = self.allocate()
            if addr is None:
                log("no address left for %s/%s" % (pod["metadata"]["namespace"], pod["metadata"]["name"]))
                return
            ok, err = add_address(addr)
            if not ok:
                log("cannot add %s: %s" % (addr, err))
                return
            here = os.path.join(self.root, uid)
            run = {"address": addr, "dir": here, "proc": None, "restarts": 0, "started": None,
                   "name": "%s/%s" % (pod["metadata"]["namespace"], pod["metadata"]["name"])}
            self.pods[uid] = run
        if run["proc"] is not None and run["proc"].poll() is None:
            return
        self.passed.pop((uid, c["name"]), None)
        if run["proc"] is not None:
            if not run.get("counted"):
                run["restarts"] += 1
                run["counted"] = True
                run["exited"] = time.time()
            # The kubelet's back-off: 10 s, doubling (capped here at 80 s).
            if time.time() - run["exited"] < min(10 * 2 ** (run["restarts"] - 1), 80):
                return
        try:
            made = self.volumes(pod, c, run["dir"], secret, configmap)
        except RuntimeError as e:
            log("%s: %s" % (run["name"], e))
            return
        args = [arg_here(a, made, run["address"]) for a in c.get("args") or []]
        script = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        out = open(os.path.join(run["dir"], "container.log"), "a")
        run["proc"] = subprocess.Popen(["unshare", "-m", "sh", "-c", script, self.resolv, program] + args,
                                       cwd=run["dir"], stdout=out, stderr=out, start_new_session=True,
                                       preexec_fn=die_with_parent)
        run["started"] = time.time()
        run["counted"] = False
        log("%s runs %s on %s (pid %d)" % (run["name"], program, run["address"], run["proc"].pid))

    def probe(self, pod, c):
        """Why the running program is not ready, or None (its readiness
        probe answered 2xx)."""
        run = self.pods.get(pod["metadata"]["uid"])
        if run is None or run["proc"] is None:
            return "readiness probe failed: not started yet"
        if run["proc"].poll() is not None:
            return "readiness probe failed: the program exited with %s (see %s)" % (
                run["proc"].returncode, os.path.join(run["dir"], "container.log"))
        get = (c.get("readinessProbe") or {}).get("httpGet")
        if not get:
            return None
        # A passed probe holds for PROBE_TTL seconds, as a kubelet's holds
        # until its next period; a failing one is asked again every round.
        key = (pod["metadata"]["uid"], c["name"])
        if time.time() - self.passed.get(key, 0) < PROBE_TTL:
            return None
        port = get.get("port")
        if not isinstance(port, int):
            port = next((p["containerPort"] for p in c.get("ports") or [] if p.get("name") == port), None)
        try:
            with urllib.request.urlopen("http://%s:%s%s" % (run["address"], port, get.get("path", "/")),
                                        timeout=1) as r:
                if 200 <= r.status < 400:
                    self.passed[key] = time.time()
                    return None
                return "readiness probe: %d" % r.status
        except Exception as e:
            return "readiness probe failed: %s" % e

    def crashed(self, pod):
        """The kubelet's CrashLoopBackOff message when the program exited,
        else None."""
        run = self.pods.get(pod["metadata"]["uid"])
        if run is None or run["proc"] is None or run["proc"].poll() is None:
            return None
        try:
            with open(os.path.join(run["dir"], "container.log")) as f:
                last = [line.strip() for line in f if line.strip()][-1:]
        except OSError:
            last = []
        return "back-off restarting failed container (exit code %d%s)" % (
            run["proc"].returncode, ": " + last[0][-300:] if last else "")

    def restarts(self, pod):
        run = self.pods.get(pod["metadata"]["uid"])
        return run["restarts"] if run else 0

    def reap(self, live):
        """Stops the programs of pods that are gone."""
        for uid in [u for u in self.pods if u not in live]:
            run = self.pods.pop(uid)
            for key in [k for k in self.passed if k[0] == uid]:
                del self.passed[key]
            self.kill(run)
            drop_address(run["address"])
            self.free.append(run["address"])
            shutil.rmtree(run["dir"], ignore_errors=True)
            log("%s stopped" % run["name"])

    @staticmethod
    def kill(run):
        p = run["proc"]
        if p is not None and p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(timeout=5)
            except Exception:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def stop_all(self):
        for run in self.pods.values():
            self.kill(run)
            drop_address(run["address"])
        if self.block is not None:
            drop_address(self.dns_address)


def die_with_parent():
    """The program is killed when the simulator ends, however it ends."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def relocate(text, made):
    """`text` with each mount path (followed by / or its end) under the
    pod's directory instead."""
    for at, place in made:
        out, i = [], 0
        while True:
            j = text.find(at, i)
            if j < 0:
                out.append(text[i:])
                break
            end = j + len(at)
            boundary = end == len(text) or text[end] in "/\"' \n,]"
            before = j == 0 or text[j - 1] in "\"' =:[\n"
            out.append(text[i:j])
            out.append(place if boundary and before else at)
            i = end
        text = "".join(out)
    return text


def arg_here(arg, made, address):
    flag, eq, value = arg.partition("=")
    if eq and value.startswith(":") and value[1:].isdigit():
        return "%s=%s%s" % (flag, address, value)
    if eq:
        return flag + "=" + relocate(value, made)
    return arg
