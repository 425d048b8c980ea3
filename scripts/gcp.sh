#!/usr/bin/env bash
# The local Google Cloud: the project's test double of the REST APIs the tool
# calls (scripts/local-cloud/gcp_double.py, standard library only), and
# Google's Discovery documents (from the PyPI package google-api-python-client,
# in a virtualenv cached outside the repository) that the conformance test
# checks the double against.
#   scripts/gcp.sh install          create the virtualenv (once per version)
#   scripts/gcp.sh discovery        print the Discovery documents' directory
#   scripts/gcp.sh start STATEDIR   start the double on a free loopback port;
#                                   writes STATEDIR/gcp.port and STATEDIR/gcp.pid,
#                                   logs request bodies to STATEDIR/gcp-requests.jsonl
#   scripts/gcp.sh stop STATEDIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
CLIENT_VERSION="${GOOGLE_API_PYTHON_CLIENT_VERSION:-2.202.0}"
venv="$RALPH_CACHE/gcp-discovery-$CLIENT_VERSION"

install() {
  if [ -f "$venv/.complete" ]; then return 0; fi
  echo "installing google-api-python-client $CLIENT_VERSION into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "google-api-python-client==$CLIENT_VERSION"
  touch "$venv/.complete"
}

discovery() {
  install
  "$venv/bin/python" -c 'import googleapiclient, os; print(os.path.join(os.path.dirname(googleapiclient.__file__), "discovery_cache", "documents"))'
}

start() {
  local dir="$1"; mkdir -p "$dir"
  local port; port="$(python3 "$here/local-cloud/free_port.py")"
  RALPH_GCP_REQUEST_LOG="$dir/gcp-requests.jsonl" \
    RALPH_SIM_RUN_DIR="$dir" python3 "$here/local-cloud/gcp_double.py" 127.0.0.1 "$port" >"$dir/gcp.log" 2>&1 &
  echo $! >"$dir/gcp.pid"
  for _ in $(seq 1 100); do
    if curl -fsS "http://127.0.0.1:$port/__double/stats" >/dev/null 2>&1; then
      echo "$port" >"$dir/gcp.port"; echo "gcp double listening on 127.0.0.1:$port" >&2; return 0
    fi
    sleep 0.1
  done
  echo "the gcp double did not start; see $dir/gcp.log" >&2; cat "$dir/gcp.log" >&2; return 1
}

stop() {
  local dir="$1"
  if [ -f "$dir/gcp.pid" ]; then kill "$(cat "$dir/gcp.pid")" 2>/dev/null || true; rm -f "$dir/gcp.pid"; fi
}

case "${1:-}" in
  install) install ;;
  discovery) discovery ;;
  start) start "$2" ;;
  stop) stop "$2" ;;
  *) echo "usage: $0 install|discovery|start DIR|stop DIR" >&2; exit 2 ;;
esac
