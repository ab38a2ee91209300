#!/usr/bin/env bash
# What `make bench` needs beyond `make deps`: Debian's crun (a peer runtime under the runc
# shim; the local containerd has a `crun` handler for it, through the wrapper below) and kwok (fake nodes for the
# operator-at-scale section), built from the Go module proxy and cached.
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $(id -u) == 0 ]] || die "installing packages needs root"

if [[ ! -x /usr/bin/crun ]]; then
  step "installing crun (Debian)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q crun >/dev/null
fi
mkdir -p "$BIN"
# Debian 12's crun accepts only ociVersion 1.0.x; containerd 2.x writes 1.3.0 (see the source).
if [[ ! -x $BIN/crun-bench || $E2E_DIR/bench/crun-bench.c -nt $BIN/crun-bench ]]; then
  step "building the crun wrapper (crun-bench)"
  gcc -O2 -Wall -Werror -o "$BIN/crun-bench" "$E2E_DIR/bench/crun-bench.c"
fi
go_install kwok "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
# kwok only fakes what its stages say: the module's own "fast" stages (a node Ready at once;
# a pod bound to a fake node Running and Ready, deleted when asked), as its configuration.
kwok_dir=$(go mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
[[ -d $kwok_dir ]] || die "the kwok module $KWOK_VERSION is not in the Go module cache"
{
  for stage in node/fast/node-initialize pod/fast/pod-ready pod/fast/pod-complete pod/fast/pod-delete; do
    echo "---"
    cat "$kwok_dir/kustomize/stage/$stage.yaml"
  done
} >"$STATE/kwok-stages.yaml"
