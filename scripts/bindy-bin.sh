#!/usr/bin/env bash
# Builds (once) the real Bindy operator the end-to-end tests run beside rndc-warden, from the
# upstream source in ../shared/upstream/bindy (firestoned/bindy 0.6.0 at commit ac9ea2a).
#
# The source is copied to a cache outside the work tree, keyed by that commit
# (${XDG_CACHE_HOME:-$HOME/.cache}/rndc-warden/bindy-ac9ea2a/), and built there with its own
# CARGO_TARGET_DIR (it is its own workspace). The copy gets exactly one change, in
# src/constants.rs: the metrics listener binds 127.0.0.1 (upstream: 0.0.0.0) on the port named by
# the environment variable BINDY_METRICS_PORT at run time (upstream: a fixed 8080; unset: 0, i.e. a
# free port chosen by the kernel), so several operators and the tests' own listeners never collide.
#
# Idempotent: nothing is built when the cached binary exists and its stamp matches the commit, the
# source tree's checksum and this patch. Prints the binary path on its last line (use it as
# BINDY_BIN). A cold debug build takes ~14 min on 2 cores.
#
# Environment: BINDY_SRC (default ../shared/upstream/bindy beside the work tree), BINDY_CACHE
# (default the cache directory above), BINDY_TOOLCHAIN (default stable: bindy's
# rust-toolchain.toml pins 1.94, which cannot be downloaded offline; any installed >= 1.95 works).
set -euo pipefail

BINDY_COMMIT=ac9ea2a
BINDY_VERSION=0.6.0
# Bump when the patch below changes: it is part of the stamp.
PATCH_REVISION=1

root=$(cd "$(dirname "$0")/.." && pwd)
log() { printf 'bindy-bin: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

src=${BINDY_SRC:-$root/../shared/upstream/bindy}
[ -d "$src" ] || die "the Bindy source is not at $src (expected ../shared/upstream/bindy beside the work tree; set BINDY_SRC to its location)"
src=$(cd "$src" && pwd)
stub="$src/../swagger-ui-stub/v5.17.14.zip"
[ -f "$stub" ] || die "the Swagger UI stub is not at $stub (bindy's dependency utoipa-swagger-ui downloads it at build time; see ../shared/upstream/README.md)"
stub=$(cd "$(dirname "$stub")" && pwd)/$(basename "$stub")
grep -q "^version = \"$BINDY_VERSION\"" "$src/Cargo.toml" \
  || die "$src/Cargo.toml is not bindy $BINDY_VERSION (commit $BINDY_COMMIT); this script builds only that version"

cache=${BINDY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rndc-warden/bindy-$BINDY_COMMIT}
bin="$cache/bin/bindy"
stamp="$cache/bin/bindy.stamp"
mkdir -p "$cache/bin"

command -v cargo >/dev/null 2>&1 || die "cargo is not on PATH (bindy needs a Rust toolchain; stable >= 1.95 works)"
toolchain=${BINDY_TOOLCHAIN:-stable}
if command -v rustup >/dev/null 2>&1; then
  # Without the override rustup would try to install the 1.94 that bindy's rust-toolchain.toml pins.
  export RUSTUP_TOOLCHAIN=$toolchain
  rustc_version=$(rustc --version 2>/dev/null) \
    || die "the Rust toolchain '$toolchain' is not installed; set BINDY_TOOLCHAIN to an installed toolchain >= 1.95 (rustup toolchain list)"
else
  rustc_version=$(rustc --version 2>/dev/null) || die "rustc is not on PATH"
fi
command -v sha256sum >/dev/null 2>&1 || die "sha256sum is missing (coreutils)"

# One build at a time (parallel test binaries, CI and a developer may all ask at once).
exec 9>"$cache/lock"
if ! flock -n 9; then
  log "another build holds $cache/lock; waiting for it"
  flock 9
fi

# The checksum of every file of the source (paths and contents), so a changed tree rebuilds.
src_sum=$(cd "$src" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
want="commit=$BINDY_COMMIT version=$BINDY_VERSION patch=$PATCH_REVISION source=$src_sum"

if [ -x "$bin" ] && [ -f "$stamp" ]; then
  have=$(sed -n 1p "$stamp")
  bin_sum=$(sed -n 2p "$stamp")
  if [ "$have" = "$want" ] && [ "$(sha256sum "$bin" | cut -d' ' -f1)" = "$bin_sum" ]; then
    log "cached: $bin ($want)"
    echo "$bin"
    exit 0
  fi
  log "the cached binary does not match ($have); rebuilding"
fi

# Fresh copy of the source (the target directory beside it is kept, so a rebuild is incremental).
work="$cache/src"
rm -rf "$work"
cp -R "$src" "$work"
chmod -R u+w "$work"

# The one change: the metrics listener's address and port (src/constants.rs).
constants="$work/src/constants.rs"
old_port='pub const METRICS_SERVER_PORT: u16 = 8080;'
old_addr='pub const METRICS_SERVER_BIND_ADDRESS: &str = "0.0.0.0";'
grep -qxF "$old_port" "$constants" || die "$constants no longer has the line '$old_port'; update the patch in $0"
grep -qxF "$old_addr" "$constants" || die "$constants no longer has the line '$old_addr'; update the patch in $0"
new_port=$(cat <<'EOF'
// rndc-warden test build (scripts/bindy-bin.sh): the port comes from BINDY_METRICS_PORT at run
// time (unset: 0, a free port). The two uses in main.rs (a `format!` and a tracing field) need a
// `Display` value that tracing accepts without a cast; a `&dyn Error` is one, and needs no unsafe.
/// Port for Prometheus metrics HTTP server (test build: `BINDY_METRICS_PORT`, default 0)
pub static METRICS_SERVER_PORT: &(dyn std::error::Error + Send + Sync) = &MetricsServerPortFromEnv;

/// The metrics port as configured in the environment (`BINDY_METRICS_PORT`, default `0`).
#[derive(Debug)]
pub struct MetricsServerPortFromEnv;

impl std::fmt::Display for MetricsServerPortFromEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match std::env::var("BINDY_METRICS_PORT") {
            Ok(port) if !port.is_empty() => f.write_str(&port),
            _ => f.write_str("0"),
        }
    }
}

impl std::error::Error for MetricsServerPortFromEnv {}
EOF
)
new_addr='pub const METRICS_SERVER_BIND_ADDRESS: &str = "127.0.0.1"; // rndc-warden test build (upstream: 0.0.0.0)'
OLD_PORT=$old_port NEW_PORT=$new_port OLD_ADDR=$old_addr NEW_ADDR=$new_addr \
  perl -0pi -e 's/^\Q$ENV{OLD_PORT}\E$/$ENV{NEW_PORT}/m; s/^\Q$ENV{OLD_ADDR}\E$/$ENV{NEW_ADDR}/m' "$constants"
grep -q 'BINDY_METRICS_PORT' "$constants" && grep -q '"127.0.0.1"' "$constants" || die "patching $constants failed"
(cd "$src" && diff -u src/constants.rs "$constants" >"$cache/metrics-listener.patch") || true

log "building bindy $BINDY_VERSION ($BINDY_COMMIT) with $rustc_version in $work (cold: ~14 min on 2 cores; log: $cache/build.log)"
start=$SECONDS
if ! (
  cd "$work"
  SWAGGER_UI_DOWNLOAD_URL="file://$stub" \
    CARGO_TARGET_DIR="$cache/target" \
    CARGO_TERM_COLOR=never \
    cargo build --locked --bin bindy
) >"$cache/build.log" 2>&1; then
  tail -n 40 "$cache/build.log" >&2
  die "cargo build of bindy failed after $((SECONDS - start)) s; full log: $cache/build.log"
fi
elapsed=$((SECONDS - start))

built="$cache/target/debug/bindy"
[ -x "$built" ] || die "cargo reported success but $built is missing"
version=$("$built" --version 2>&1 || true)
[[ $version == *"$BINDY_VERSION"* ]] || die "$built --version printed '$version', expected $BINDY_VERSION"
cp "$built" "$bin.tmp"
mv -f "$bin.tmp" "$bin"
printf '%s\n%s\n' "$want" "$(sha256sum "$bin" | cut -d' ' -f1)" >"$stamp"
log "built in ${elapsed} s ($((elapsed / 60))m$((elapsed % 60))s); $(du -h "$bin" | cut -f1) ($(stat -c %s "$bin") bytes): $bin"
echo "$bin"
