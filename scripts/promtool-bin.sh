#!/usr/bin/env bash
# Builds (once) Prometheus' promtool for the alert-rule and metrics tests (tests/monitoring.rs),
# from the Go module proxy: github.com/prometheus/prometheus, pinned in tools/promtool/go.mod
# (with go.sum). Cached outside the work tree, keyed by version, rebuilt only when missing.
# Prints the binary's path on its last line (use it as PROMTOOL).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
mod="$root/tools/promtool"
version=$(awk '$1 == "github.com/prometheus/prometheus" { print $2 }' "$mod/go.mod")
out=${XDG_CACHE_HOME:-$HOME/.cache}/rndc-warden/promtool-$version
log() { printf 'promtool-bin: %s\n' "$*" >&2; }

if ! command -v go >/dev/null 2>&1; then
  log "Go is not installed. The monitoring tests need Go >= 1.26 to build promtool."
  log "Install it (https://go.dev/doc/install) or put it on PATH, then run this again."
  exit 1
fi
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
# The version file is written last, so a build that was cut short is redone.
if ! [ -x "$out/promtool" ] || [ "$(cat "$out/promtool.version" 2>/dev/null)" != "$version" ]; then
  mkdir -p "$out"
  cd "$mod"
  log "building promtool $version (cold: several minutes)"
  start=$SECONDS
  /usr/bin/time -f "promtool-bin: peak RSS %M KiB, %e s wall" \
    go build -trimpath -ldflags "-s -w" -o "$out/promtool" github.com/prometheus/prometheus/cmd/promtool
  echo "$version" >"$out/promtool.version"
  log "promtool built in $((SECONDS - start)) s"
fi
echo "$out/promtool"
