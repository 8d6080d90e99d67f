#!/usr/bin/env bash
# Builds (once) the binaries of a real Kubernetes node for the node end-to-end tests, from the Go
# module proxy: kube-controller-manager, kube-scheduler and kubelet (k8s.io/kubernetes), containerd,
# ctr and containerd-shim-runc-v2, runc (cgo: needs gcc and libseccomp-dev) and the CNI loopback,
# bridge and host-local plugins. They are cached outside the work tree, keyed by version, and
# rebuilt only when missing.
# Prints the binary directory on its last line (use it as NODE_BIN_DIR).
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}
RUNC_VERSION=${RUNC_VERSION:-v1.5.3}
CNI_VERSION=${CNI_VERSION:-v1.10.0}

root=$(cd "$(dirname "$0")/.." && pwd)
out=${NODE_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rndc-warden/node-bins-k8s-$K8S_VERSION-containerd-$CONTAINERD_VERSION-runc-$RUNC_VERSION-cni-$CNI_VERSION}
log() { printf 'node-bins: %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
  log "Go is not installed. The node tests need Go >= 1.26 to build the kubelet, containerd and runc."
  log "Install it (https://go.dev/doc/install) or put it on PATH, then run this again."
  exit 1
fi
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
mkdir -p "$out"

k8s_minor=$(echo "$K8S_VERSION" | cut -d. -f2)

# A binary is current when a stamp beside it names the version it was built from (some of these
# print no version without a running daemon, so the stamp is the record).
have() { [ -x "$out/$1" ] && [ "$(cat "$out/$1.version" 2>/dev/null)" = "$2" ]; }
stamp() { echo "$2" >"$out/$1.version"; }

timed() { # name, command...
  local name=$1; shift
  local start=$SECONDS
  /usr/bin/time -f "node-bins: $name peak RSS %M KiB, %e s wall" "$@"
  log "$name built in $((SECONDS - start)) s"
}

cd "$root/tools/k8s-bins"
ld="-s -w"
for kv in buildDate=2026-01-01T00:00:00Z gitCommit=0000000000000000000000000000000000000000 \
  gitTreeState=clean gitVersion=$K8S_VERSION gitMajor=1 gitMinor=$k8s_minor; do
  ld="$ld -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
done
for bin in kube-scheduler kube-controller-manager kubelet; do
  if ! have "$bin" "$K8S_VERSION"; then
    log "building $bin $K8S_VERSION (cold: several minutes)"
    CGO_ENABLED=0 timed "$bin" go build -trimpath -ldflags "$ld" -o "$out/$bin" "k8s.io/kubernetes/cmd/$bin"
    stamp "$bin" "$K8S_VERSION"
  fi
done

cd "$root/tools/containerd"
cp=github.com/containerd/containerd/v2
cld="-s -w -X $cp/version.Version=$CONTAINERD_VERSION -X $cp/version.Revision=0000000"
for bin in ctr containerd-shim-runc-v2 containerd; do
  if ! have "$bin" "$CONTAINERD_VERSION"; then
    tags="no_btrfs urfave_cli_no_docs"
    [ "$bin" = containerd-shim-runc-v2 ] && tags="$tags no_grpc"
    log "building $bin $CONTAINERD_VERSION"
    CGO_ENABLED=0 timed "$bin" go build -trimpath -tags "$tags" -ldflags "$cld" -o "$out/$bin" "$cp/cmd/$bin"
    stamp "$bin" "$CONTAINERD_VERSION"
  fi
done

if ! have runc "$RUNC_VERSION"; then
  if ! command -v gcc >/dev/null 2>&1 || [ ! -e /usr/include/seccomp.h ]; then
    log "runc needs cgo with libseccomp: install gcc and libseccomp-dev (apt-get install gcc libseccomp-dev)"
    exit 1
  fi
  cd "$root/tools/runc"
  log "building runc $RUNC_VERSION"
  CGO_ENABLED=1 timed runc go build -trimpath -tags "seccomp urfave_cli_no_docs" \
    -ldflags "-s -w -X main.version=${RUNC_VERSION#v}" -o "$out/runc" github.com/opencontainers/runc
  stamp runc "$RUNC_VERSION"
fi

# loopback for every pod; bridge and host-local for the pod network of a node that runs in a
# network namespace of its own (testkit NodeOptions::pod_network, tests/e2e_stack.rs).
for plugin in main/loopback main/bridge ipam/host-local; do
  bin=${plugin#*/}
  if ! have "$bin" "$CNI_VERSION"; then
    cd "$root/tools/cni-plugins"
    log "building the CNI $bin plugin $CNI_VERSION"
    CGO_ENABLED=0 timed "$bin" go build -trimpath -ldflags "-s -w" -o "$out/$bin" \
      "github.com/containernetworking/plugins/plugins/$plugin"
    stamp "$bin" "$CNI_VERSION"
  fi
done

echo "$out"
