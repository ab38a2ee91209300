#!/usr/bin/env bash
# `make images`: builds the project's images from locally built binaries and imports them into
# the local cluster's containerd. The Dockerfile is the recipe for users with a registry; this
# produces the same images offline. Tags are content hashes, so a new binary means a new tag
# and `helm upgrade` rolls the pods.
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

build_release_binaries

# build_binary_image NAME [EXTRA_ELF...]: agentsandbox.local/NAME:<hash>, the release binary
# NAME (plus SOURCE:DESTINATION extras) with the shared libraries they load, laid out as the
# Dockerfile's targets do; prints the tag.
build_binary_image() {
  local name=$1 bin=$ROOT/target/release/$1 tag archive extra=()
  shift
  local e
  for e in "$@"; do extra+=("--elf=$e"); done
  tag=$(cat "$bin" "${@%%:*}" | sha256sum | cut -c1-12)
  archive=$STATE/images/$name-$tag.tar
  mkdir -p "$STATE/images"
  if [[ ! -f $archive ]]; then
    step "building image agentsandbox.local/$name:$tag" >&2
    python3 "$E2E_DIR/images/oci_image.py" --name "agentsandbox.local/$name:$tag" \
      --output "$archive.tmp" --elf="$bin:/usr/local/bin/$name" "${extra[@]}" \
      --entrypoint="/usr/local/bin/$name" --user=65532:65532
    mv "$archive.tmp" "$archive"
  fi
  if [[ -S $CONTAINERD_SOCK ]]; then
    "$BIN/ctr" -a "$CONTAINERD_SOCK" -n k8s.io images import "$archive" >/dev/null
    step "imported agentsandbox.local/$name:$tag" >&2
  fi
  echo "$tag"
}

operator_tag=$(build_binary_image agentsandbox-operator)
# The node image carries the shim and its launcher it installs (Dockerfile target `node`).
node_tag=$(build_binary_image agentsandbox-node \
  "$ROOT/target/release/containerd-shim-agentsandbox-v1:/usr/local/share/agentsandbox/containerd-shim-agentsandbox-v1" \
  "$ROOT/target/release/agentsandbox-launcher:/usr/local/share/agentsandbox/agentsandbox-launcher" \
  "$ROOT/target/release/agentsandbox-wait-static:/usr/local/share/agentsandbox/agentsandbox-wait")
cat >"$STATE/images.env" <<ENV
OPERATOR_IMAGE_REPOSITORY=agentsandbox.local/agentsandbox-operator
OPERATOR_IMAGE_TAG=$operator_tag
NODE_IMAGE_REPOSITORY=agentsandbox.local/agentsandbox-node
NODE_IMAGE_TAG=$node_tag
ENV
