#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager 1.20.2 from Debian's
# source package, and unpacks etcd, into a cache outside the repository:
#   $RALPH_CACHE/kube-1.20.2/bin/{kube-apiserver,kube-controller-manager,etcd}
# Everything comes from the Debian archive the machine already uses
# (deb-src lines are derived in a private APT configuration; /etc is not
# touched). About 3 minutes on 2 cores, once per machine.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
. "$here/env.sh"
KUBE_DEB_VERSION="${KUBE_DEB_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}"
KUBE_VERSION=v1.20.2
out="$RALPH_CACHE/kube-1.20.2"
[ -f "$out/.complete" ] && { echo "$out"; exit 0; }
work="$RALPH_CACHE/kube-build"
rm -rf "$work" && mkdir -p "$work" && cd "$work"

# A private APT configuration with deb-src twins of the machine's sources.
mkdir -p apt/lists/partial apt/cache/archives/partial apt/sources.list.d
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  sed -e 's/^Types: *deb *$/Types: deb deb-src/' "$f" >"apt/sources.list.d/$(basename "$f")"
done
if [ -f /etc/apt/sources.list ]; then
  grep -E '^deb ' /etc/apt/sources.list | sed 's/^deb /deb-src /' >apt/sources.list || true
  cat /etc/apt/sources.list >>apt/sources.list
else
  : >apt/sources.list
fi
cat >apt/apt.conf <<CONF
Dir::Etc::sourcelist "$work/apt/sources.list";
Dir::Etc::sourceparts "$work/apt/sources.list.d";
Dir::State::Lists "$work/apt/lists";
Dir::Cache "$work/apt/cache";
CONF
export APT_CONFIG="$work/apt/apt.conf"
apt-get update -qq
apt-get source --download-only -qq "kubernetes=$KUBE_DEB_VERSION"
apt-get download -qq golang-1.19-go golang-1.19-src etcd-server
unset APT_CONFIG

# Go toolchain and etcd, unpacked (not installed).
mkdir -p go etcd
for d in golang-1.19-go_*.deb golang-1.19-src_*.deb; do dpkg-deb -x "$d" go; done
dpkg-deb -x etcd-server_*.deb etcd
export GOROOT="$work/go/usr/lib/go-1.19"
export PATH="$GOROOT/bin:$PATH"

# The source tree in GOPATH layout.
mkdir -p gopath/src/k8s.io
tar -xf kubernetes_*.orig.tar.* -C gopath/src/k8s.io
src="$(ls -d gopath/src/k8s.io/*/ | head -1)"
[ "$src" != "gopath/src/k8s.io/kubernetes/" ] && mv "$src" gopath/src/k8s.io/kubernetes
export GOPATH="$work/gopath" GO111MODULE=off GOPROXY=off CGO_ENABLED=0 GOFLAGS=
cd "$GOPATH/src/k8s.io/kubernetes"

# pkg/generated/openapi is generated, not shipped: build openapi-gen from
# vendor/ and run it over every package that asks for it.
go build -o "$work/openapi-gen" ./vendor/k8s.io/kube-openapi/cmd/openapi-gen
pkgs=$(grep -rl --include='*.go' '+k8s:openapi-gen=' pkg staging/src vendor/k8s.io 2>/dev/null \
  | xargs -n1 dirname | sort -u \
  | sed -e 's#^staging/src/#k8s.io/kubernetes/vendor/#' -e 's#^vendor/#k8s.io/kubernetes/vendor/#' -e 's#^pkg/#k8s.io/kubernetes/pkg/#' \
  | sort -u | paste -sd, -)
"$work/openapi-gen" --input-dirs "$pkgs" --output-package k8s.io/kubernetes/pkg/generated/openapi \
  -O zz_generated.openapi --go-header-file hack/boilerplate/boilerplate.generatego.txt \
  --output-base "$GOPATH/src" --report-filename /dev/null >/dev/null

ld="-X k8s.io/kubernetes/vendor/k8s.io/component-base/version.gitVersion=$KUBE_VERSION -s -w"
mkdir -p "$out/bin"
go build -ldflags "$ld" -o "$out/bin/kube-apiserver" ./cmd/kube-apiserver
go build -ldflags "$ld" -o "$out/bin/kube-controller-manager" ./cmd/kube-controller-manager
cp "$work/etcd/usr/bin/etcd" "$out/bin/etcd"
touch "$out/.complete"
rm -rf "$work"
echo "$out"
