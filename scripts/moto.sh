#!/usr/bin/env bash
# The local AWS: moto in a virtualenv cached outside the repository.
#   scripts/moto.sh install          create the virtualenv (once per moto version)
#   scripts/moto.sh start STATEDIR   start moto (with the delay layer) on a free loopback port;
#                                    writes STATEDIR/moto.port and STATEDIR/moto.pid
#   scripts/moto.sh stop STATEDIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
MOTO_VERSION="${MOTO_VERSION:-5.2.5}"
CBOR2_VERSION="${CBOR2_VERSION:-6.3.0}"
venv="$RALPH_CACHE/moto-$MOTO_VERSION-cbor2-$CBOR2_VERSION"

install() {
  # the marker file is written last, so an interrupted install is redone
  if [ -f "$venv/.complete" ]; then return 0; fi
  echo "installing moto $MOTO_VERSION into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" "cbor2==$CBOR2_VERSION"
  touch "$venv/.complete"
}

free_port() {
  python3 "$here/local-cloud/free_port.py"
}

start() {
  local dir="$1"; mkdir -p "$dir"
  install
  local port; port="$(free_port)"
  # moto behind a delay layer: resources pass through their real
  # intermediate states (see scripts/local-cloud/moto_delayed.py).
  # AWS managed IAM policies (AmazonEKSClusterPolicy, ...) exist, as in AWS.
  # Its EKS clusters are served by the local Kubernetes started in DIR, if any.
  # ACM issues a DNS-validated certificate after MOTO_ACM_VALIDATION_WAIT
  # seconds, standing for the time until its DNS records are made.
  RALPH_SIM_KUBE_DIR="$dir" MOTO_IAM_LOAD_MANAGED_POLICIES=true MOTO_ACM_VALIDATION_WAIT="${MOTO_ACM_VALIDATION_WAIT:-25}" "$venv/bin/python" "$here/local-cloud/moto_delayed.py" 127.0.0.1 "$port" >"$dir/moto.log" 2>&1 &
  echo $! >"$dir/moto.pid"
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$port/moto-api/" >/dev/null 2>&1; then
      echo "$port" >"$dir/moto.port"; echo "moto listening on 127.0.0.1:$port" >&2; return 0
    fi
    sleep 0.1
  done
  echo "moto did not start; see $dir/moto.log" >&2; cat "$dir/moto.log" >&2; return 1
}

stop() {
  local dir="$1"
  for p in moto moto-faulty proxy; do
    if [ -f "$dir/$p.pid" ]; then kill "$(cat "$dir/$p.pid")" 2>/dev/null || true; rm -f "$dir/$p.pid"; fi
  done
}

# A second moto with its own delays, behind the fault proxy.
start_faulty() {
  local dir="$1"; mkdir -p "$dir"
  install
  local mport pport; mport="$(free_port)"; pport="$(free_port)"
  RALPH_SIM_KUBE_DIR="$dir" MOTO_IAM_LOAD_MANAGED_POLICIES=true MOTO_ACM_VALIDATION_WAIT="${MOTO_ACM_VALIDATION_WAIT:-25}" RALPH_MOTO_DELAY_SCALE="${RALPH_FAULT_DELAY_SCALE:-0.05}" \
    "$venv/bin/python" "$here/local-cloud/moto_delayed.py" 127.0.0.1 "$mport" >"$dir/moto-faulty.log" 2>&1 &
  echo $! >"$dir/moto-faulty.pid"
  "$venv/bin/python" "$here/local-cloud/fault_proxy.py" "$pport" "http://127.0.0.1:$mport" >"$dir/proxy.log" 2>&1 &
  echo $! >"$dir/proxy.pid"
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$pport/__faults" >/dev/null 2>&1 && curl -fsS "http://127.0.0.1:$mport/moto-api/" >/dev/null 2>&1; then
      echo "$mport" >"$dir/moto-faulty.port"; echo "$pport" >"$dir/proxy.port"; return 0
    fi
    sleep 0.1
  done
  echo "the fault proxy did not start; see $dir/proxy.log" >&2; return 1
}

case "${1:-}" in
  install) install ;;
  start-faulty) start_faulty "${2:?state dir}" ;;
  start) start "${2:?state dir}" ;;
  stop) stop "${2:?state dir}" ;;
  *) echo "usage: $0 install|start DIR|stop DIR" >&2; exit 2 ;;
esac
