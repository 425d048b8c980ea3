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

Usage: python3 node_sim.py KUBECONFIG
"""

import json
import re
import ssl
import sys
import time
import urllib.request
from datetime import datetime, timezone


def read_kubeconfig(path):
    text = open(path).read()
    server = re.search(r"server:\s*(\S+)", text).group(1)
    token = re.search(r"token:\s*(\S+)", text).group(1)
    return server, token


def now():
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def fate(image):
    tag = image.rsplit("/", 1)[-1].partition(":")[2]
    if tag.startswith("broken"):
        return "unpullable"
    if tag.startswith("hang"):
        return "unready"
    return "ready"


def desired_status(pod):
    containers = pod["spec"].get("containers", [])
    statuses = []
    ready_all = True
    for c in containers:
        f = fate(c.get("image", ""))
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
                "ready": ready, "restartCount": 0, "started": True,
                "state": {"running": {"startedAt": now()}},
            })
    running = all("running" in s["state"] for s in statuses)
    ready_word = "True" if ready_all else "False"
    return {
        "phase": "Running" if running else "Pending",
        "hostIP": "10.0.0.1",
        "podIP": "10.1.0.%d" % (hash(pod["metadata"]["name"]) % 250 + 2),
        "startTime": now(),
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": now()},
            {"type": "Initialized", "status": "True", "lastTransitionTime": now()},
            {"type": "ContainersReady", "status": ready_word, "lastTransitionTime": now()},
            {"type": "Ready", "status": ready_word, "lastTransitionTime": now()},
        ],
        "containerStatuses": statuses,
    }


def summary(status):
    """What decides whether a pod's status needs writing."""
    if not status:
        return None
    ready = [c.get("status") for c in status.get("conditions", []) if c.get("type") == "Ready"]
    waits = [list(s.get("state", {}).keys()) + [s.get("ready")] for s in status.get("containerStatuses", [])]
    return (status.get("phase"), tuple(ready), json.dumps(waits))


def main():
    server, token = read_kubeconfig(sys.argv[1])
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    headers = {"Authorization": "Bearer " + token}

    def call(method, path, body=None, content_type="application/json"):
        data = None if body is None else json.dumps(body).encode()
        h = dict(headers)
        if data is not None:
            h["Content-Type"] = content_type
        req = urllib.request.Request(server + path, data=data, method=method, headers=h)
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return json.loads(r.read() or b"{}")

    while True:
        try:
            pods = call("GET", "/api/v1/pods")["items"]
            for pod in pods:
                meta = pod["metadata"]
                if meta.get("deletionTimestamp"):
                    continue
                want = desired_status(pod)
                if summary(pod.get("status")) == summary(want):
                    continue
                call("PATCH", "/api/v1/namespaces/%s/pods/%s/status" % (meta["namespace"], meta["name"]),
                     {"status": want}, "application/merge-patch+json")
        except Exception as e:  # the API server restarts, a pod went away
            print("node simulator: %s" % e, file=sys.stderr, flush=True)
        time.sleep(0.2)


if __name__ == "__main__":
    main()
