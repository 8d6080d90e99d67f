#!/usr/bin/env bash
# Builds (once) cert-manager's controller and cainjector for the cert-manager end-to-end test, from
# the Go module proxy: github.com/cert-manager/cert-manager, pinned in tools/cert-manager/go.mod
# (with go.sum). cert-manager's own cmd/* modules are not served by the proxy, so
# tools/cert-manager/{controller,cainjector} are small mains over cert-manager's packages.
# The binaries are cached outside the work tree, keyed by version, and rebuilt only when missing.
# Beside them, crds.yaml: cert-manager's CRDs of that version.
# Prints the binary directory on its last line (use it as CERT_MANAGER_BIN_DIR).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mod="$root/tools/cert-manager"
version=$(awk '$1 == "github.com/cert-manager/cert-manager" { print $2 }' "$mod/go.mod")
out=${CERT_MANAGER_BIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rndc-warden/cert-manager-$version}
log() { printf 'cert-manager-bins: %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
  log "Go is not installed. The cert-manager end-to-end test needs Go >= 1.26 to build cert-manager."
  log "Install it (https://go.dev/doc/install) or put it on PATH, then run this again."
  exit 1
fi
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$out"
cd "$mod"
# The stamp names the version and the sources of the mains, so a changed main is rebuilt.
stamp="$version $(cat go.mod go.sum ./*/main.go | sha256sum | cut -c1-16)"
for bin in controller cainjector; do
  # The stamp file is written last, so a build that was cut short is redone.
  if [ -x "$out/$bin" ] && [ "$(cat "$out/$bin.version" 2>/dev/null)" = "$stamp" ]; then
    continue
  fi
  log "building cert-manager $bin $version (cold: several minutes)"
  start=$SECONDS
  /usr/bin/time -f "cert-manager-bins: $bin peak RSS %M KiB, %e s wall" \
    go build -trimpath -ldflags "-s -w" -o "$out/$bin" "./$bin"
  echo "$stamp" >"$out/$bin.version"
  log "$bin built in $((SECONDS - start)) s"
done
# The CRDs of the same version, from the module the binaries were built from.
if ! [ -s "$out/crds.yaml" ]; then
  dir=$(go list -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)
  cat "$dir"/deploy/crds/*.yaml >"$out/crds.yaml.tmp"
  mv "$out/crds.yaml.tmp" "$out/crds.yaml"
fi
echo "$out"
