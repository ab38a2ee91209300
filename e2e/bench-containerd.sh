#!/usr/bin/env bash
# `e2e/bench-containerd.sh start|stop`: a containerd of its own for the bench's CRI section
# (`crictl runp` + create + start per runtime), apart from the cluster's, whose kubelet stops
# any pod sandbox it did not create. Same runtimes and images as the cluster's containerd.
# `start` prints its socket.
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BC_STATE=$STATE/bench-containerd
BC_RUN=$RUN/bench-containerd
BC_SOCK=$BC_RUN/containerd.sock

start() {
  cluster_is_up || die "the bench's containerd needs the local cluster's configuration and images: run \`make up\` first"
  mkdir -p "$BC_STATE" "$BC_RUN"
  private_containerd_config "$BC_STATE" "$BC_RUN" "$BC_SOCK" >"$BC_STATE/config.toml"
  start_daemon bench-containerd "$BIN/containerd" --config "$BC_STATE/config.toml" >&2
  wait_for "the bench's containerd" 60 "$BIN/ctr" -a "$BC_SOCK" version >&2
  local archive
  while read -r archive; do
    "$BIN/ctr" -a "$BC_SOCK" -n k8s.io images import "$archive" >/dev/null
  done <"$STATE/image-archives"
  echo "$BC_SOCK"
}

stop() {
  local pods
  pods=$("$BIN/crictl" --runtime-endpoint "unix://$BC_SOCK" pods -q 2>/dev/null || true)
  if [[ -n $pods ]]; then
    # shellcheck disable=SC2086
    "$BIN/crictl" --runtime-endpoint "unix://$BC_SOCK" rmp -f $pods >/dev/null 2>&1 || true
  fi
  stop_daemon bench-containerd >&2
  local target
  for target in $(findmnt -rn -o TARGET | grep -E "^($BC_STATE|$BC_RUN)(/|$)" | sort -r); do
    umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null
  done
}

case ${1:-} in
start) start ;;
stop) stop ;;
*) die "usage: $0 start|stop" ;;
esac
