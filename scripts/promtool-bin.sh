#!/usr/bin/env bash
# Fetches (once) Prometheus' promtool for the alert-rule and metrics tests (tests/monitoring.rs)
# from the Debian archive: the `prometheus` package's /usr/bin/promtool, unpacked into the cache
# with `apt-get download` + `dpkg-deb -x` (nothing is installed, no service is started). Building
# it from the Go module proxy instead cost 10-25 min of every cold CI run. Cached outside the
# work tree, keyed by the package version apt offers. Prints the binary's path on its last line
# (use it as PROMTOOL).
set -euo pipefail

log() { printf 'promtool-bin: %s\n' "$*" >&2; }
for tool in apt-cache apt-get dpkg-deb; do
  command -v "$tool" >/dev/null 2>&1 || {
    log "$tool is missing: promtool comes from Debian's prometheus package (a Debian/Ubuntu machine),"
    log "or set PROMTOOL to a promtool binary (Prometheus >= 2.42)."
    exit 1
  }
done

candidate() { apt-cache policy prometheus 2>/dev/null | awk '$1 == "Candidate:" { print $2 }'; }
version=$(candidate)
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
  log "no prometheus package in the apt lists; running apt-get update"
  apt-get update -qq >&2
  version=$(candidate)
fi
if [ -z "$version" ] || [ "$version" = "(none)" ]; then
  log "apt offers no prometheus package: add a Debian/Ubuntu archive that has it, or set PROMTOOL"
  exit 1
fi

out=${XDG_CACHE_HOME:-$HOME/.cache}/rndc-warden/promtool-deb-${version//[:+~]/_}
# The version file is written last, so an unpack that was cut short is redone.
if ! [ -x "$out/promtool" ] || [ "$(cat "$out/promtool.version" 2>/dev/null)" != "$version" ]; then
  start=$SECONDS
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  log "fetching prometheus $version from the Debian archive"
  # apt's download sandbox user must be able to write the directory.
  chmod 0777 "$work"
  (cd "$work" && apt-get download -qq "prometheus=$version" >&2)
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  mkdir -p "$out"
  install -m 0755 "$work/root/usr/bin/promtool" "$out/promtool"
  "$out/promtool" --version >&2
  echo "$version" >"$out/promtool.version"
  log "promtool unpacked in $((SECONDS - start)) s"
fi
echo "$out/promtool"
