#!/usr/bin/env bash
# `make test-matrix`: the product on every row of VERSION_MATRIX (e2e/versions.env), each a
# containerd and a Kubernetes built from the Go module proxy and cached like the default stack.
# Per row: a real single-node cluster of its own (state in .e2e-matrix/<row>/, started with
# e2e/up.sh, so the chart's node agent installs the shim into that containerd's configuration),
# then the e2e tests of the cluster versions, the runtime, the escape telemetry, egress by name and the
# installer against it, then `make down` for that cluster and a leftovers check. Prints one
# table row per stack; a failing row fails the run but the other rows still run.
#
# The clusters listen on the same ports as `make up`'s: stop that one first (`make down`).
# MATRIX_ROWS="v2.3.7" (containerd versions) runs a subset.
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MATRIX_DIR=$ROOT/.e2e-matrix
E2E_TESTS=(cluster runtime escapes egress_names pools telemetry_socket installer)

# row_env CONTAINERD KUBERNETES: the environment one row's scripts and tests run with.
row_env() {
  printf '%s\n' "E2E_STATE=$MATRIX_DIR/containerd-$1" "CONTAINERD_VERSION=$1" "KUBE_VERSION=$2"
}

# stop_row CONTAINERD KUBERNETES: stop the row's cluster and check it left nothing.
stop_row() {
  local env
  mapfile -t env < <(row_env "$1" "$2")
  env "${env[@]}" "$E2E_DIR/down.sh" >>"$MATRIX_DIR/logs/$1.log" 2>&1
  env "${env[@]}" "$E2E_DIR/leftovers.sh" >>"$MATRIX_DIR/logs/$1.log" 2>&1
}

# test_result LOG: "passed/total" of one cargo test binary's summary line, "no result" if none.
test_result() {
  awk '/^test result:/ {
    for (i = 1; i <= NF; i++) { if ($(i + 1) ~ /^passed/) p = $i; if ($(i + 1) ~ /^failed/) f = $i }
    found = 1 }
    END { if (found) printf "%d/%d", p, p + f; else printf "no result" }' "$1"
}

# run_row CONTAINERD KUBERNETES: prints the row's table line; returns non-zero when any part fails.
run_row() {
  local containerd=$1 kube=$2 env log=$MATRIX_DIR/logs/$1.log ok=0
  mapfile -t env < <(row_env "$containerd" "$kube")
  : >"$log"
  local cells=("containerd $containerd" "Kubernetes $kube")
  if env "${env[@]}" "$E2E_DIR/up.sh" >>"$log" 2>&1; then
    local node
    node=$(env "${env[@]}" bash -c "source '$E2E_DIR/lib.sh'; kubectl_admin get nodes \
      -o jsonpath='{.items[0].status.nodeInfo.kubeletVersion} {.items[0].status.nodeInfo.containerRuntimeVersion}'")
    cells+=("up: $node")
    local t out
    for t in "${E2E_TESTS[@]}"; do
      out=$MATRIX_DIR/logs/$containerd-$t.log
      if env "${env[@]}" cargo test -q --locked -p agentsandbox-e2e --test "$t" -- --test-threads=2 >"$out" 2>&1; then
        cells+=("ok $(test_result "$out")")
      else
        cells+=("FAILED $(test_result "$out")")
        ok=1
      fi
    done
  else
    cells+=("FAILED to start (see $log)")
    ok=1
  fi
  stop_row "$containerd" "$kube" || {
    cells+=("leftovers after make down")
    ok=1
  }
  local line="|" c
  for c in "${cells[@]}"; do line+=" $c |"; done
  printf '%s\n' "$line"
  return "$ok"
}

main() {
  [[ $(id -u) == 0 ]] || die "the matrix runs clusters: run it as root"
  cluster_is_up && die "the local cluster ($STATE) is running on the ports the matrix needs: make down first"
  mkdir -p "$MATRIX_DIR/logs"
  local rows=() row containerd kube
  for row in $VERSION_MATRIX; do
    containerd=${row%%:*}
    [[ -z ${MATRIX_ROWS:-} || " $MATRIX_ROWS " == *" $containerd "* ]] && rows+=("$row")
  done
  ((${#rows[@]})) || die "no row of VERSION_MATRIX ($VERSION_MATRIX) matches MATRIX_ROWS=$MATRIX_ROWS"
  # Build every row's stack first, so a build failure shows before any cluster starts.
  for row in "${rows[@]}"; do
    env CONTAINERD_VERSION="${row%%:*}" KUBE_VERSION="${row##*:}" E2E_STATE="$MATRIX_DIR/containerd-${row%%:*}" \
      "$E2E_DIR/deps.sh"
  done
  cargo test --no-run -q --locked -p agentsandbox-e2e
  local header="| containerd | Kubernetes | cluster (kubelet, runtime) |" sep="|---|---|---|" t
  for t in "${E2E_TESTS[@]}"; do
    header+=" e2e $t |"
    sep+="---|"
  done
  local table=("$header" "$sep") failed=()
  for row in "${rows[@]}"; do
    containerd=${row%%:*}
    kube=${row##*:}
    step "row: containerd $containerd, Kubernetes $kube (log $MATRIX_DIR/logs/$containerd.log)"
    trap 'stop_row "$containerd" "$kube"' EXIT
    row=$(run_row "$containerd" "$kube") || failed+=("$containerd")
    trap - EXIT
    table+=("$row")
    step "$row"
  done
  printf '%s\n' "${table[@]}" | tee "$MATRIX_DIR/result.md"
  ((${#failed[@]} == 0)) || die "rows failing: ${failed[*]} (logs in $MATRIX_DIR/logs)"
  step "every row of the matrix passes"
}

main "$@"
