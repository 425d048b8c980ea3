#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager and kube-scheduler 1.20.2 from Debian's
# source package, and unpacks etcd, into a cache outside the repository:
#   $RALPH_CACHE/kube-1.20.2-r5/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,etcd}
# Everything comes from the Debian archive the machine already uses
# (deb-src lines are derived in a private APT configuration; /etc is not
# touched). About 2 minutes on 2 cores, once per machine.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
. "$here/env.sh"
KUBE_DEB_VERSION="${KUBE_DEB_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}"
KUBE_VERSION=v1.20.2
# -r3: with the reflect2 fix below (a build without it crashes on custom
# resources); -r4: with kube-scheduler; -r5: without the in-tree cloud
# providers.
out="$RALPH_CACHE/kube-1.20.2-r5"
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
# Go's build cache in the work directory too: removed with it, so
# ~/.cache/go-build does not keep a gigabyte of objects after the build.
export GOPATH="$work/gopath" GOCACHE="$work/gocache" GO111MODULE=off GOPROXY=off CGO_ENABLED=0 GOFLAGS=
cd "$GOPATH/src/k8s.io/kubernetes"

# The vendored github.com/modern-go/reflect2 1.0.1 links to the runtime's
# reflect.mapiterinit with its pre-Go-1.18 signature (returning the
# iterator), and declares only the first two fields of the runtime's
# iterator; Go 1.18 changed mapiterinit to fill an iterator the caller
# passes. Built with Go 1.19 as is, every map that json-iterator encodes
# through it (custom resources, pretty-printed lists) crashes the API
# server with SIGSEGV. Call it the Go 1.18 way with the whole iterator, as
# reflect2 1.0.2 does.
python3 - vendor/github.com/modern-go/reflect2 <<'PY'
import pathlib, re, sys
d = pathlib.Path(sys.argv[1])
decl = re.compile(r"func mapiterinit\(rtype unsafe\.Pointer, m unsafe\.Pointer\) \*hiter")
struct = re.compile(r"type hiter struct \{.*?\n\}", re.S)
# The runtime's hash iteration structure (runtime/map.go, Go 1.18 and 1.19).
layout = "\n".join([
    "type hiter struct {",
    "\tkey         unsafe.Pointer",
    "\tvalue       unsafe.Pointer",
    "\tt           unsafe.Pointer",
    "\th           unsafe.Pointer",
    "\tbuckets     unsafe.Pointer",
    "\tbptr        unsafe.Pointer",
    "\toverflow    *[]unsafe.Pointer",
    "\toldoverflow *[]unsafe.Pointer",
    "\tstartBucket uintptr",
    "\toffset      uint8",
    "\twrapped     bool",
    "\tB           uint8",
    "\ti           uint8",
    "\tbucket      uintptr",
    "\tcheckBucket uintptr",
    "}",
])
call = "mapiterinit(type2.rtype, *(*unsafe.Pointer)(obj))"
found_decl = found_call = False
for f in sorted(d.glob("*.go")):
    text = f.read_text()
    new = text
    if decl.search(new):
        if not struct.search(new):
            sys.exit("reflect2: hiter is not declared beside mapiterinit")
        new = struct.sub(lambda m: layout, new)
        new = decl.sub("func mapiterinit(rtype unsafe.Pointer, m unsafe.Pointer, it *hiter)", new)
        new += (
            "\n// newHiter starts an iteration the Go 1.18 way: the caller owns the iterator.\n"
            "func newHiter(rtype unsafe.Pointer, m unsafe.Pointer) *hiter {\n"
            "\tit := new(hiter)\n\tmapiterinit(rtype, m, it)\n\treturn it\n}\n"
        )
        found_decl = True
    if call in new:
        new = new.replace(call, "newHiter(type2.rtype, *(*unsafe.Pointer)(obj))")
        found_call = True
    if new != text:
        f.write_text(new)
if not (found_decl and found_call):
    sys.exit("reflect2: the code to fix was not found (declaration %s, call %s)" % (found_decl, found_call))
PY

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
# One build of the three: the packages they share are compiled once and
# the three links run side by side (-o DIR/ names each after its package).
# `providerless` leaves out the in-tree cloud providers (AWS, Azure, GCE,
# OpenStack, vSphere) and their SDKs, which a cluster without
# --cloud-provider never calls: measured cold, 1 min 49 s and 197 CPU
# seconds instead of 3 min 6 s and 332.
go build -tags providerless -ldflags "$ld" -o "$out/bin/" ./cmd/kube-apiserver ./cmd/kube-controller-manager ./cmd/kube-scheduler
cp "$work/etcd/usr/bin/etcd" "$out/bin/etcd"
touch "$out/.complete"
rm -rf "$work"
echo "$out"
