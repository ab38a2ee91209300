#!/usr/bin/env bash
# `make images`: builds the project's images from locally built binaries and imports them into
# the local cluster's containerd. The Dockerfile is the recipe for users with a registry; this
# produces the same images offline. Tags are content hashes, so a new binary means a new tag
# and `helm upgrade` rolls the pods.
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "building release binaries"
(cd "$ROOT" && cargo build --release --locked -p agentsandbox-operator)
operator_bin=$ROOT/target/release/agentsandbox-operator
tag=$(sha256sum "$operator_bin" | cut -c1-12)
archive=$STATE/images/agentsandbox-operator-$tag.tar
mkdir -p "$STATE/images"
if [[ ! -f $archive ]]; then
  step "building image agentsandbox.local/agentsandbox-operator:$tag"
  python3 "$E2E_DIR/images/oci_image.py" --name "agentsandbox.local/agentsandbox-operator:$tag" \
    --output "$archive.tmp" --elf="$operator_bin:/usr/local/bin/agentsandbox-operator" \
    --entrypoint=/usr/local/bin/agentsandbox-operator --user=65532:65532
  mv "$archive.tmp" "$archive"
fi
if [[ -S $CONTAINERD_SOCK ]]; then
  /usr/bin/ctr -a "$CONTAINERD_SOCK" -n k8s.io images import "$archive" >/dev/null
  step "imported agentsandbox.local/agentsandbox-operator:$tag"
fi
printf 'OPERATOR_IMAGE_REPOSITORY=agentsandbox.local/agentsandbox-operator\nOPERATOR_IMAGE_TAG=%s\n' "$tag" >"$STATE/images.env"
