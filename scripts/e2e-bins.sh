#!/usr/bin/env bash
# Builds (once) the real Kubernetes binaries the end-to-end tests run against, from the Go module
# proxy: kube-apiserver and kubectl (k8s.io/kubernetes), etcd (go.etcd.io/etcd/server/v3) and helm.
# They are cached outside the work tree, keyed by version, and rebuilt only when missing.
# Prints the binary directory on its last line (use it as E2E_BIN_DIR).
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.7.3}
HELM_VERSION=${HELM_VERSION:-v3.22.0}

root=$(cd "$(dirname "$0")/.." && pwd)
out=${E2E_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rndc-warden/bins-k8s-$K8S_VERSION-etcd-$ETCD_VERSION-helm-$HELM_VERSION}
log() { printf 'e2e-bins: %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
  log "Go is not installed. The end-to-end tests need Go >= 1.26 to build kube-apiserver, etcd, kubectl and helm."
  log "Install it (https://go.dev/doc/install) or put it on PATH, then run this again."
  exit 1
fi
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$out"

k8s_minor=$(echo "$K8S_VERSION" | cut -d. -f2)
staging="v0.${K8S_VERSION#v1.}"

# Reports whether a binary exists and its version output mentions the wanted version.
# (Captured first: `| grep -q` under pipefail fails at random when grep exits before the
# producer's last write, which SIGPIPEs it -- kubectl prints two lines.)
have() {
  local version
  [ -x "$out/$1" ] && version=$("$out/$1" "${@:3}" 2>/dev/null) && [[ $version == *"$2"* ]]
}

timed() { # name, command...
  local name=$1; shift
  local start=$SECONDS
  /usr/bin/time -f "e2e-bins: $name peak RSS %M KiB, %e s wall" "$@"
  log "$name built in $((SECONDS - start)) s"
}

if ! have kube-apiserver "$K8S_VERSION" --version || ! have kubectl "$K8S_VERSION" version --client; then
  mod="$root/tools/k8s-bins"
  cd "$mod"
  ld="-s -w"
  for kv in buildDate=2026-01-01T00:00:00Z gitCommit=0000000000000000000000000000000000000000 \
    gitTreeState=clean gitVersion=$K8S_VERSION gitMajor=1 gitMinor=$k8s_minor; do
    ld="$ld -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
  done
  log "building kube-apiserver and kubectl $K8S_VERSION (cold: several minutes)"
  timed kube-apiserver go build -trimpath -ldflags "$ld" -o "$out/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  timed kubectl go build -trimpath -ldflags "$ld" -o "$out/kubectl" k8s.io/kubernetes/cmd/kubectl
fi

if ! have etcd "${ETCD_VERSION#v}" --version; then
  cd "$root/tools/etcd"
  log "building etcd $ETCD_VERSION"
  timed etcd go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
fi

if ! have helm "$HELM_VERSION" version --short; then
  cd "$root/tools/helm"
  log "building helm $HELM_VERSION"
  hp=helm.sh/helm/v3
  timed helm go build -trimpath -ldflags "-s -w -X $hp/internal/version.version=$HELM_VERSION \
    -X $hp/internal/version.gitTreeState=clean \
    -X $hp/pkg/chartutil.k8sVersionMajor=1 -X $hp/pkg/chartutil.k8sVersionMinor=$k8s_minor \
    -X $hp/pkg/lint/rules.k8sVersionMajor=1 -X $hp/pkg/lint/rules.k8sVersionMinor=$k8s_minor" \
    -o "$out/helm" $hp/cmd/helm
fi

echo "$out"
