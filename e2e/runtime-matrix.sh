#!/usr/bin/env bash
# `make test-matrix`: the runtime shim against every containerd of the version matrix
# (CONTAINERD_MATRIX in e2e/versions.env), each built from the Go module proxy and cached like
# the other artefacts. Per containerd: a private daemon (its own root, state and sockets, no
# CRI plugin) with this build's shim on its PATH, one container run with `ctr run`, and three
# checks that fail the row: the shim starts through that containerd's start protocol (2.3+
# bootstraps it with a protobuf on stdin), the container's root is an unprivileged host uid,
# and an escape syscall (unshare of a user namespace) is denied.
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MATRIX_STATE=$STATE/matrix
MATRIX_RUN=$RUN-matrix
NAMESPACE=agentsandbox-matrix

# config VERSION DIR: a containerd configuration with nothing but what `ctr run` needs.
config() {
  local version=$1 dir=$2 schema=3
  [[ $version == v1.* ]] && schema=2
  cat <<TOML
version = $schema
root = "$MATRIX_STATE/$version/root"
state = "$dir/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.nri.v1.nri"]

[grpc]
  address = "$dir/containerd.sock"

[ttrpc]
  address = "$dir/containerd.sock.ttrpc"
TOML
}

stop_row() {
  local version=$1
  stop_daemon "matrix-containerd-$version"
  rm -rf "${MATRIX_RUN:?}/$version" "${MATRIX_STATE:?}/$version"
}

# run_row VERSION: prints "start uid denied" outcomes; returns non-zero when one fails.
run_row() {
  local version=$1 bin dir
  bin=$(containerd_dir "$version")
  dir=$MATRIX_RUN/$version
  mkdir -p "$dir" "$MATRIX_STATE/$version"
  config "$version" "$dir" >"$MATRIX_STATE/$version/config.toml"
  PATH=$ROOT/target/release:$PATH start_daemon "matrix-containerd-$version" \
    "$bin/containerd" --config "$MATRIX_STATE/$version/config.toml"
  local ctr=("$bin/ctr" -a "$dir/containerd.sock" -n "$NAMESPACE")
  wait_for "containerd $version" 60 "${ctr[@]}" version || return 1
  local archive image
  archive=$(grep /busybox- "$STATE/image-archives")
  image=$("${ctr[@]}" images import "$archive" | awk '/^unpacking/ {print $2; exit}')
  [[ -n $image ]] || image=$("${ctr[@]}" images ls -q | head -n 1)
  local output rc=0
  output=$(timeout 120 "${ctr[@]}" run --rm --runtime io.containerd.agentsandbox.v1 "$image" \
    "matrix-$$" sh -c 'cat /proc/self/uid_map; unshare -U true 2>&1; echo "unshare-exit=$?"' 2>&1) || rc=$?
  printf '%s\n' "$output" >"$LOGS/matrix-$version.log"
  local host_uid started=fail uid=fail denied=fail
  host_uid=$(awk '$1 == 0 {print $2; exit}' <<<"$output")
  ((rc == 0)) && [[ -n $host_uid ]] && started=ok
  [[ -n $host_uid ]] && ((host_uid >= 100000)) && uid="ok ($host_uid)"
  grep -q 'unshare-exit=[1-9]' <<<"$output" && grep -qi 'not permitted' <<<"$output" && denied=ok
  printf '| containerd %s | %s | %s | %s |\n' "$version" "$started" "$uid" "$denied"
  [[ $started == ok && $uid == ok* && $denied == ok ]]
}

main() {
  [[ $(id -u) == 0 ]] || die "the matrix runs containerd daemons: run it as root"
  "$E2E_DIR/deps.sh"
  build_release_binaries
  local version failed=()
  for version in $CONTAINERD_MATRIX; do
    build_containerd "$version"
  done
  local table=("| containerd | shim starts (ctr run) | root is an unprivileged host uid | unshare(CLONE_NEWUSER) denied |" "|---|---|---|---|")
  for version in $CONTAINERD_MATRIX; do
    local row
    trap 'stop_row "$version"' EXIT
    row=$(run_row "$version") || failed+=("$version")
    stop_row "$version"
    trap - EXIT
    table+=("$row")
    step "containerd $version: ${row:-failed to start} (log $LOGS/matrix-$version.log)"
  done
  printf '%s\n' "${table[@]}"
  ((${#failed[@]} == 0)) || die "rows failing: ${failed[*]}"
  step "every containerd of the matrix runs the shim"
}

main "$@"
