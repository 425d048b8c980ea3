"""Prints a free TCP port on 127.0.0.1 below the kernel's ephemeral range
(32768 and up), so that no outgoing connection (the API server opens many to
etcd while it starts; the tests open many to moto) can take it between
choosing it and binding it."""
import random
import socket

for _ in range(500):
    port = random.randint(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free port between 20000 and 32000")
