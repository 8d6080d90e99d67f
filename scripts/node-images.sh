#!/usr/bin/env bash
# Assembles (once) the container images of the node end-to-end tests without a registry:
# - pause: a static C program (tools/images/pause.c), the pods' sandbox image;
# - bind9: Debian bookworm (debootstrap --variant=minbase) with bind9, bind9-utils and procps
#   (BIND 9.18: named, rndc, and the sha256sum/kill the signal strategy execs).
# Each is one uncompressed layer plus an OCI config, manifest and index, written as an OCI layout
# tar that `ctr images import` takes. Cached outside the work tree, keyed by IMAGES_VERSION and the
# Debian suite; needs root (debootstrap, chroot), gcc (static glibc) and debootstrap.
# Prints the image directory on its last line (use it as NODE_IMAGE_DIR).
set -euo pipefail

IMAGES_VERSION=${IMAGES_VERSION:-1}
SUITE=${DEBIAN_SUITE:-bookworm}
root=$(cd "$(dirname "$0")/.." && pwd)
out=${NODE_IMAGE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rndc-warden/node-images-v$IMAGES_VERSION-$SUITE}
log() { printf 'node-images: %s\n' "$*" >&2; }

# The mirror apt already uses here (deb822 or one-line sources), else deb.debian.org.
mirror() {
  local m
  m=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null |
    grep -v security | sed -E 's/^URIs:[[:space:]]*//; s/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?//' |
    awk '{print $1}' | grep -E '^https?://' | head -n 1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}

# shellcheck source=lib/oci.sh
. "$root/scripts/lib/oci.sh"

mkdir -p "$out"

if [ ! -s "$out/pause.tar" ]; then
  command -v gcc >/dev/null 2>&1 || { log "the pause image needs gcc with static glibc: apt-get install gcc libc6-dev"; exit 1; }
  start=$SECONDS
  rootfs=$(mktemp -d)
  gcc -Os -static -o "$rootfs/pause" "$root/tools/images/pause.c"
  strip "$rootfs/pause"
  oci_tar "$rootfs" "rndc-warden.invalid/pause:$IMAGES_VERSION" '{"Entrypoint":["/pause"]}' "$out/pause.tar"
  rm -rf "$rootfs"
  log "pause image built in $((SECONDS - start)) s"
fi

if [ ! -s "$out/bind9.tar" ]; then
  if [ "$(id -u)" -ne 0 ]; then log "building the bind9 image needs root (debootstrap, chroot)"; exit 1; fi
  command -v debootstrap >/dev/null 2>&1 || { log "building the bind9 image needs debootstrap: apt-get install debootstrap"; exit 1; }
  start=$SECONDS
  rootfs=$(mktemp -d /var/tmp/rndc-warden-bind9-rootfs.XXXXXX)
  trap 'umount -l "$rootfs/proc" 2>/dev/null || true; rm -rf --one-file-system "$rootfs"' EXIT
  src=$(mirror)
  log "debootstrap $SUITE from $src"
  debootstrap --variant=minbase "$SUITE" "$rootfs" "$src" >"$out/debootstrap.log" 2>&1 ||
    { tail -n 30 "$out/debootstrap.log" >&2; exit 1; }
  log "debootstrap done in $((SECONDS - start)) s"
  printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
  chmod +x "$rootfs/usr/sbin/policy-rc.d"
  # A private mount namespace keeps /proc (and anything apt mounts) off the host's mount table.
  unshare --mount --propagation private sh -euc '
    mount -t proc proc "$1/proc"
    chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    chroot "$1" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bind9 bind9-utils procps
    umount "$1/proc"
  ' sh "$rootfs" >"$out/apt.log" 2>&1 || { tail -n 30 "$out/apt.log" >&2; exit 1; }
  rm -f "$rootfs/usr/sbin/policy-rc.d"
  rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/usr/share/doc/* \
    "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/* "$rootfs"/usr/share/info/*
  mkdir -p "$rootfs/etc/bind/keys" "$rootfs/var/cache/bind" "$rootfs/run/named"
  version=$(chroot "$rootfs" /usr/sbin/named -v)
  log "$version"
  oci_tar "$rootfs" "rndc-warden.invalid/bind9:$IMAGES_VERSION" \
    '{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":["/usr/sbin/named","-g","-c","/etc/bind/named.conf"],"WorkingDir":"/"}' \
    "$out/bind9.tar"
  echo "$version" >"$out/bind9.version"
  log "bind9 image built in $((SECONDS - start)) s ($(du -sh "$out/bind9.tar" | cut -f1))"
fi

echo "$out"
