# Shared by the image scripts (node-images.sh, warden-image.sh, bindcar-image.sh): an image is one
# uncompressed layer (GNU tar, numeric owners, sorted names) plus an OCI config, manifest and
# index, written as an OCI layout tar that `ctr images import` takes.

sha() { sha256sum "$1" | cut -d' ' -f1; }

# oci_tar <rootfs dir> <image name> <config "config" JSON object> <output tar>
oci_tar() {
  local rootfs=$1 name=$2 config=$3 tar_out=$4
  local work
  work=$(mktemp -d)
  mkdir -p "$work/blobs/sha256"
  # The root directory is recorded too: a mktemp -d root (0700) would lock out non-root users.
  chmod 0755 "$rootfs"
  tar --numeric-owner --xattrs --sort=name -C "$rootfs" -cf "$work/layer.tar" .
  local layer layer_size cfg cfg_size man man_size
  layer=$(sha "$work/layer.tar"); layer_size=$(stat -c %s "$work/layer.tar")
  mv "$work/layer.tar" "$work/blobs/sha256/$layer"
  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"rndc-warden scripts/lib/oci.sh"}]}' \
    "$config" "$layer" >"$work/config.json"
  cfg=$(sha "$work/config.json"); cfg_size=$(stat -c %s "$work/config.json")
  mv "$work/config.json" "$work/blobs/sha256/$cfg"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cfg" "$cfg_size" "$layer" "$layer_size" >"$work/manifest.json"
  man=$(sha "$work/manifest.json"); man_size=$(stat -c %s "$work/manifest.json")
  mv "$work/manifest.json" "$work/blobs/sha256/$man"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$man" "$man_size" "$name" "${name##*:}" >"$work/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"
  tar -C "$work" -cf "$tar_out.tmp" oci-layout index.json blobs
  mv "$tar_out.tmp" "$tar_out"
  rm -rf "$work"
}
