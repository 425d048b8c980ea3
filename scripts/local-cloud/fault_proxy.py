"""A fault-injecting HTTP proxy in front of the local cloud.

    python fault_proxy.py LISTEN_PORT UPSTREAM_URL

It forwards every request to UPSTREAM_URL (moto) and, as configured:
  * answers a share of requests with a throttling error, a 500 or a 503, in
    the protocol's own format (EC2 query XML, the other query services' XML,
    JSON with x-amzn-ErrorType, REST-JSON, S3 XML), without forwarding them;
  * resets a share of connections before forwarding;
  * delays a share of requests before forwarding;
  * kills a process (SIGKILL) right after the k-th mutating request has
    reached the cloud and been answered, before the answer is relayed.
Nothing in the tool knows about it: the tool only sees AWS_ENDPOINT_URL.

Control: GET /__faults returns counters; POST /__faults with a JSON object
sets {"rate": 0.2, "kinds": ["throttle", "500", "503", "reset", "slow"],
"slow_ms": 500, "kill_after": k, "kill_pidfile": path, "seed": n,
"account_id": "123456789012", "reset_counters": true}. With `account_id` set,
requests carry moto's `x-moto-account-id` header: each test can have an
account of its own (an empty cloud) without a reset, which is slow in moto.

Lanes: POST {"lane": "AKID...", "kill_after": k, "kill_pidfile": path,
"account_id": "..."} configures a lane for requests signed with that access
key id: its own account, mutating-request counter and kill point, so several
runs can be killed at their own k at the same time. {"lane": "AKID...",
"remove": true} drops it; {"lane": "AKID...", "read": true} returns its counters. A lane's counter starts at 0 when it is set.
"""
import http.client
import http.server
import json
import os
import random
import signal
import socket
import sys
import threading
import time
import urllib.parse

LOCK = threading.Lock()
CONFIG = {"rate": 0.0, "kinds": ["throttle", "500", "503"], "slow_ms": 300, "kill_after": 0, "kill_pidfile": "", "account_id": ""}
STATS = {"requests": 0, "mutating": 0, "faults": {}, "killed": 0}
LANES = {}
RNG = random.Random(1)

READ_PREFIXES = ("Describe", "List", "Get", "Head")


def classify(method, path, headers, body):
    """(service protocol, action name, mutating)"""
    target = headers.get("X-Amz-Target")
    if target:
        action = target.split(".")[-1]
        return "json", action, not action.startswith(READ_PREFIXES)
    ctype = headers.get("Content-Type", "")
    if method == "POST" and "x-www-form-urlencoded" in ctype:
        form = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
        action = (form.get("Action") or [""])[0]
        version = (form.get("Version") or [""])[0]
        proto = "ec2" if version == "2016-11-15" else "query"
        return proto, action, not action.startswith(READ_PREFIXES)
    if path.startswith("/clusters"):
        return "rest-json", f"{method} {path}", method not in ("GET", "HEAD")
    return "s3", f"{method} {path}", method not in ("GET", "HEAD")


def error_response(proto, kind):
    code, status, message = {
        "throttle": ({"ec2": "RequestLimitExceeded", "query": "Throttling", "json": "ThrottlingException",
                      "rest-json": "TooManyRequestsException", "s3": "SlowDown"}[proto],
                     {"ec2": 503, "query": 400, "json": 400, "rest-json": 429, "s3": 503}[proto], "Rate exceeded"),
        "500": ("InternalError" if proto in ("ec2", "s3") else "InternalFailure", 500, "We encountered an internal error."),
        "503": ("ServiceUnavailable", 503, "The service is unavailable."),
    }[kind]
    rid = "%032x" % RNG.getrandbits(128)
    if proto == "ec2":
        body = (f'<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error><Code>{code}</Code>'
                f'<Message>{message}</Message></Error></Errors><RequestID>{rid}</RequestID></Response>')
        return status, {"Content-Type": "text/xml"}, body
    if proto == "query":
        body = (f'<ErrorResponse xmlns="https://iam.amazonaws.com/doc/2010-05-08/"><Error><Type>Sender</Type>'
                f'<Code>{code}</Code><Message>{message}</Message></Error><RequestId>{rid}</RequestId></ErrorResponse>')
        return status, {"Content-Type": "text/xml"}, body
    if proto == "s3":
        body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message><RequestId>{rid}</RequestId></Error>'
        return status, {"Content-Type": "application/xml"}, body
    body = json.dumps({"__type": code, "message": message})
    ctype = "application/x-amz-json-1.1" if proto == "json" else "application/json"
    return status, {"Content-Type": ctype, "x-amzn-ErrorType": code, "x-amzn-RequestId": rid}, body


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    upstream = None

    def log_message(self, *args):
        pass

    def reply(self, status, headers, body):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        for k, v in headers.items():
            if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        self.close_connection = True

    def control(self, body):
        with LOCK:
            if self.command == "POST":
                cfg = json.loads(body or b"{}")
                if "lane" in cfg:
                    key = cfg.pop("lane")
                    if cfg.get("remove"):
                        LANES.pop(key, None)
                    elif cfg.get("read"):
                        pass
                    else:
                        lane = {"kill_after": 0, "kill_pidfile": "", "account_id": ""}
                        lane.update(cfg)
                        lane["mutating"] = 0
                        lane["killed"] = 0
                        LANES[key] = lane
                    out = json.dumps({"lane": LANES.get(key)})
                    self.reply(200, {"Content-Type": "application/json"}, out)
                    return
                if cfg.pop("reset_counters", False):
                    STATS.update({"requests": 0, "mutating": 0, "faults": {}, "killed": 0})
                if "seed" in cfg:
                    RNG.seed(cfg.pop("seed"))
                CONFIG.update(cfg)
            out = json.dumps({"config": CONFIG, "stats": STATS})
        self.reply(200, {"Content-Type": "application/json"}, out)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path.startswith("/__faults"):
            return self.control(body)
        if self.path.startswith("/moto-api"):
            return self.forward(body, counted=False)
        proto, _action, mutating = classify(self.command, self.path, self.headers, body)
        with LOCK:
            STATS["requests"] += 1
            rate, kinds = CONFIG["rate"], list(CONFIG["kinds"])
            fault = RNG.choice(kinds) if kinds and RNG.random() < rate else None
            if fault:
                STATS["faults"][fault] = STATS["faults"].get(fault, 0) + 1
        if fault == "reset":
            # Before forwarding: the request never reached the cloud.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()
            self.close_connection = True
            return
        if fault in ("throttle", "500", "503"):
            return self.reply(*error_response(proto, fault))
        if fault == "slow":
            time.sleep(CONFIG["slow_ms"] / 1000.0)
        self.forward(body, counted=mutating)

    def forward(self, body, counted):
        conn = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
        auth = self.headers.get("Authorization") or ""
        akid = auth.split("Credential=", 1)[1].split("/", 1)[0] if "Credential=" in auth else ""
        with LOCK:
            lane = LANES.get(akid)
            account = lane["account_id"] if lane else CONFIG["account_id"]
        if account:
            headers["x-moto-account-id"] = account
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        if counted:
            with LOCK:
                counter = lane if lane else STATS
                conf = lane if lane else CONFIG
                counter["mutating"] += 1
                kill = conf["kill_after"] and counter["mutating"] == conf["kill_after"]
                pidfile = conf["kill_pidfile"]
            if kill and pidfile:
                try:
                    with open(pidfile) as f:
                        os.kill(int(f.read().strip()), signal.SIGKILL)
                    with LOCK:
                        counter["killed"] += 1
                except (OSError, ValueError):
                    pass
        self.reply(resp.status, dict(resp.getheaders()), data)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = handle_any


def main():
    port, upstream = int(sys.argv[1]), sys.argv[2]
    Handler.upstream = urllib.parse.urlparse(upstream)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"fault proxy on 127.0.0.1:{port} -> {upstream}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
