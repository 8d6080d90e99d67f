#!/usr/bin/env bash
# Assembles (once per binary) the rndc-warden container image without a container engine, the
# way the Dockerfile's final stage builds it: the static release binary at /rndc-warden on a
# distroless/static-like base (/etc/passwd and /etc/group with nonroot 65532, /tmp, /home/nonroot,
# CA certificates; no shell, no libc), user 65532:65532, entrypoint /rndc-warden, command serve,
# the mimalloc environment, ports 8443 and 8080. tests/image.rs checks that it agrees with the
# Dockerfile; tests/e2e_stack.rs imports it into the node and installs the chart with it.
#
# The Dockerfile links against musl on Alpine; the musl target cannot be installed here, so the
# binary is glibc linked statically (`-C target-feature=+crt-static`): just as static, no loader,
# no shared libraries. The build is the CI's one release build (tests/image.rs runs this binary).
# Output: <cache>/warden-image-v1/<binary sha256 prefix>/{rndc-warden,image.tar,image.name}; prints
# that directory on its last line (use it as WARDEN_IMAGE_DIR).
set -euo pipefail

IMAGE_VERSION=1
TARGET=${WARDEN_TARGET:-x86_64-unknown-linux-gnu}
root=$(cd "$(dirname "$0")/.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/rndc-warden/warden-image-v$IMAGE_VERSION
log() { printf 'warden-image: %s\n' "$*" >&2; }
# shellcheck source=lib/oci.sh
. "$root/scripts/lib/oci.sh"

target_dir=${CARGO_TARGET_DIR:-$root/target}
start=$SECONDS
log "cargo build --release --locked --bin rndc-warden --target $TARGET (static; cold: several minutes)"
# --target keeps the static flag off build scripts and proc macros (they cannot be static).
(cd "$root" && RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" \
  cargo build --release --locked --bin rndc-warden --target "$TARGET" >&2)
bin="$target_dir/$TARGET/release/rndc-warden"
log "release binary ready in $((SECONDS - start)) s"
if readelf -l "$bin" | grep -q INTERP || readelf -d "$bin" | grep -q NEEDED; then
  log "$bin is not static (it has a program interpreter or needs shared libraries)"
  exit 1
fi

digest=$(sha "$bin")
out="$cache/${digest:0:12}"
version=$(awk -F'"' '/^version = / { print $2; exit }' "$root/Cargo.toml")
name="ghcr.io/firestoned/rndc-warden:$version"
if ! [ -s "$out/image.tar" ] || [ "$(cat "$out/image.name" 2>/dev/null)" != "$name" ]; then
  mkdir -p "$out"
  rootfs=$(mktemp -d)
  trap 'rm -rf "$rootfs"' EXIT
  install -m 0755 "$bin" "$rootfs/rndc-warden"
  mkdir -p "$rootfs/etc/ssl/certs" "$rootfs/home/nonroot" "$rootfs/tmp"
  chmod 1777 "$rootfs/tmp"
  chown 65532:65532 "$rootfs/home/nonroot"
  chmod 0700 "$rootfs/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' \
    >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
  if [ -s /etc/ssl/certs/ca-certificates.crt ]; then
    install -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  fi
  oci_tar "$rootfs" "$name" \
    '{"User":"65532:65532","Env":["PATH=/usr/local/bin:/usr/bin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt","MIMALLOC_ARENA_EAGER_COMMIT=0","MIMALLOC_PURGE_DELAY=0"],"Entrypoint":["/rndc-warden"],"Cmd":["serve"],"ExposedPorts":{"8443/tcp":{},"8080/tcp":{}},"WorkingDir":"/"}' \
    "$out/image.tar"
  install -m 0755 "$bin" "$out/rndc-warden"
  echo "$name" >"$out/image.name"
  log "image $name assembled ($(du -h "$out/image.tar" | cut -f1))"
fi
echo "$out"
