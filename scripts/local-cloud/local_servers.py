"""The servers behind the local clouds' data stores, shared by the local AWS
(moto_delayed.py) and the Google double (gcp_double.py).

A managed store of a real cloud is a server reachable from inside its
network only. Locally, every RDS instance and Cloud SQL instance is played
by the run directory's PostgreSQL (scripts/postgres.sh), and every
ElastiCache replication group and Memorystore instance gets a redis-server
of its own, configured as the cloud configures it: the group's AUTH token
(or the instance's AUTH string) as its password, TLS when in-transit
encryption is on. The network models name these servers only in a
reachable answer, and only the node simulator connects to them, for a pod
(a proxy pod's port-forward): the tool itself never learns their ports.
Standard library only (the double runs on the system Python).
"""

import base64
import ctypes
import hashlib
import hmac
import os
import shutil
import signal
import socket
import ssl
import queue
import subprocess
import threading
import uuid


def postgres_address(run_dir):
    """host:port of the run directory's PostgreSQL, or None."""
    try:
        with open(os.path.join(run_dir or "", "pg.port")) as f:
            return "127.0.0.1:%d" % int(f.read().strip())
    except (OSError, ValueError):
        return None


def _die_with_parent():
    # PR_SET_PDEATHSIG: the server ends with the local cloud that started it.
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)


_REQUESTS = queue.Queue()


def _spawner():
    while True:
        argv, answer = _REQUESTS.get()
        try:
            answer.put(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        preexec_fn=_die_with_parent))
        except Exception as e:
            answer.put(e)


_SPAWNER = []


def _spawn(argv):
    """Popen from one thread that lives as long as the process: the death
    signal is sent when the *thread* that forked ends, and the clouds
    answer each request on a thread of its own."""
    if not _SPAWNER:
        t = threading.Thread(target=_spawner, daemon=True)
        t.start()
        _SPAWNER.append(t)
    answer = queue.Queue()
    _REQUESTS.put((argv, answer))
    got = answer.get()
    if isinstance(got, Exception):
        raise got
    return got


_CERT_LOCK = threading.Lock()


def _recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def pg_session(server, user, password, database, sslmode, statements=()):
    """Logs in to PostgreSQL at `server` (host, port) as a client library
    does (TLS as `sslmode` asks, without verifying the certificate; then
    SCRAM-SHA-256, MD5 or a cleartext password) and runs `statements` (the
    simple query protocol). None when all went through, else the server's
    reason (or the client's, as libpq words it)."""
    sock = socket.create_connection(server, timeout=5)
    try:
        if sslmode != "disable":
            sock.sendall((8).to_bytes(4, "big") + (80877103).to_bytes(4, "big"))
            if _recv_exact(sock, 1) == b"S":
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
                sock = ctx.wrap_socket(sock)
            elif sslmode in ("require", "verify-ca", "verify-full"):
                return "server does not support SSL, but SSL was required"
        params = b"user\0" + user.encode() + b"\0database\0" + database.encode() + b"\0\0"
        body = (196608).to_bytes(4, "big") + params
        sock.sendall((len(body) + 4).to_bytes(4, "big") + body)

        def send(kind, payload):
            sock.sendall(kind + (len(payload) + 4).to_bytes(4, "big") + payload)

        pending = list(statements)
        nonce = base64.b64encode(os.urandom(18)).decode()
        first_bare = "n=,r=" + nonce
        while True:
            kind = _recv_exact(sock, 1)
            payload = _recv_exact(sock, int.from_bytes(_recv_exact(sock, 4), "big") - 4)
            if kind == b"E":
                fields = dict((f[:1], f[1:].decode(errors="replace")) for f in payload.split(b"\0") if f)
                return "%s: %s" % (fields.get(b"S", "FATAL"), fields.get(b"M", "refused"))
            if kind == b"Z":
                if pending:
                    send(b"Q", pending.pop(0).encode() + b"\0")
                    continue
                send(b"X", b"")
                return None
            if kind != b"R":
                continue
            code = int.from_bytes(payload[:4], "big")
            if code in (3, 5, 10) and password is None:
                return "fe_sendauth: no password supplied"
            if code == 3:
                send(b"p", password.encode() + b"\0")
            elif code == 5:
                inner = hashlib.md5((password + user).encode()).hexdigest().encode()
                send(b"p", b"md5" + hashlib.md5(inner + payload[4:8]).hexdigest().encode() + b"\0")
            elif code == 10:
                first = ("n,," + first_bare).encode()
                send(b"p", b"SCRAM-SHA-256\0" + len(first).to_bytes(4, "big") + first)
            elif code == 11:
                server_first = payload[4:].decode()
                attrs = dict(a.split("=", 1) for a in server_first.split(","))
                salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
                client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
                without_proof = "c=biws,r=" + attrs["r"]
                message = ",".join([first_bare, server_first, without_proof]).encode()
                signature = hmac.new(hashlib.sha256(client_key).digest(), message, hashlib.sha256).digest()
                proof = bytes(a ^ b for a, b in zip(client_key, signature))
                send(b"p", (without_proof + ",p=" + base64.b64encode(proof).decode()).encode())
    finally:
        sock.close()


def create_database(run_dir, name):
    """Creates database `name` on the run directory's PostgreSQL unless it
    exists (RDS's DBName, Cloud SQL's databases.insert), as its superuser.
    None, or why not."""
    address = postgres_address(run_dir)
    if not address or not name:
        return "no PostgreSQL in %s" % run_dir
    if not name.replace("_", "").isalnum():
        return "%r is not a database name the local cloud makes" % name
    host, port = address.rsplit(":", 1)
    why = pg_session((host, int(port)), "postgres", None, "postgres", "disable",
                     ["CREATE DATABASE %s" % name])
    if why and ("already exists" in why or "pg_database_datname_index" in why):  # or made at the same moment
        return None
    return why


def certificate(run_dir):
    """One self-signed certificate for every store of the run directory,
    made once (a key per store would slow each create by a key generation)."""
    d = os.path.join(run_dir, "stores")
    crt, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
    with _CERT_LOCK:
        if not os.path.exists(crt):
            os.makedirs(d, exist_ok=True)
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
                            "-subj", "/CN=local-store", "-keyout", key + ".new", "-out", crt + ".new"],
                           check=True, capture_output=True)
            os.replace(key + ".new", key)
            os.replace(crt + ".new", crt)
    return crt, key


def redis_command(server, tls, password, *args):
    """One command to a store's Redis (AUTH first with `password`), in
    RESP; returns the reply's first line. Raises on an error reply."""
    host, port = server.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = ctx.wrap_socket(sock)

    def send(*words):
        out = b"*%d\r\n" % len(words)
        for w in words:
            b = w.encode() if isinstance(w, str) else w
            out += b"$%d\r\n%s\r\n" % (len(b), b)
        sock.sendall(out)
        line = b""
        while not line.endswith(b"\r\n"):
            line += _recv_exact(sock, 1)
        if line.startswith(b"-"):
            raise RuntimeError(line[1:].decode().strip())
        return line.decode().strip()
    try:
        if password:
            send("AUTH", password)
        return send(*args)
    finally:
        sock.close()


def redis_server(run_dir, name, password, tls):
    """Starts a redis-server for one store. Returns (host:port, process, the
    TLS certificate in PEM or None), or (None, None, None) without a run
    directory or redis-server."""
    if not run_dir or not shutil.which("redis-server"):
        return None, None, None
    d = os.path.join(run_dir, "stores", "%s-%s" % (name, uuid.uuid4().hex[:6]))
    os.makedirs(d, exist_ok=True)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing written into the directory once started (no log file, no
    # dumps): the run directory is removed as the local cloud stops.
    conf = ["bind 127.0.0.1", 'save ""', "appendonly no", "dir " + d, 'logfile ""']
    pem = None
    if tls:
        crt, key = certificate(run_dir)
        conf += ["port 0", "tls-port %d" % port, "tls-cert-file " + crt,
                 "tls-key-file " + key, "tls-auth-clients no"]
        with open(crt) as f:
            pem = f.read()
    else:
        conf.append("port %d" % port)
    if password:
        conf.append("requirepass " + password)
    path = os.path.join(d, "redis.conf")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(conf) + "\n")
    proc = _spawn(["redis-server", path])
    return "127.0.0.1:%d" % port, proc, pem
