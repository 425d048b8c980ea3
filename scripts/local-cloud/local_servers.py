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

import ctypes
import os
import shutil
import signal
import socket
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
