#!/usr/bin/env bash
# `make test`: every tier. Unit tests need nothing; e2e tests need the local cluster, which is
# started here when none is running and then stopped at the end, also on failure.
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

step "dependencies (system packages, cached builds)"
"$E2E_DIR/deps.sh"
step "lint"
make --no-print-directory lint
step "unit tests"
make --no-print-directory test-unit

# What a failed run needs to tell eviction from a product fault: the node's pressure
# conditions and the free space of the disk the node and the builds share.
node_pressure_report() {
  [[ -z ${PRESSURE_REPORTED:-} ]] || return 0
  PRESSURE_REPORTED=1
  step "node conditions and free space at the failure"
  kubectl_admin get node -o jsonpath='{range .items[*].status.conditions[*]}{.type}={.status} {end}{"\n"}' || true
  df -h "$ROOT" "$STATE" || true
}

# Stops the cluster this run started and checks the machine is clean; keeps the exit code
# of the tests unless cleaning up fails.
stop_cluster() {
  local rc=$?
  if [[ $rc -ne 0 ]]; then
    node_pressure_report
  fi
  step "stopping the cluster this run started"
  "$E2E_DIR/down.sh" || rc=1
  "$E2E_DIR/leftovers.sh" || rc=1
  exit "$rc"
}

if cluster_is_up; then
  step "using the running cluster ($KUBECONFIG_ADMIN); updating what it runs"
else
  step "no cluster running: starting one for this run"
  trap stop_cluster EXIT
fi
# Idempotent: starts what is not running, and always installs the current build.
"$E2E_DIR/up.sh"
step "chart: helm lint and kubeconform"
"$E2E_DIR/chart-check.sh"
step "e2e tests ($(df -h --output=avail "$ROOT" | tail -1 | tr -d ' ') free on the node's disk)"
rm -rf "$STATE/results/volume-table"
make --no-print-directory test-e2e || { rc=$?; node_pressure_report; exit "$rc"; }
step "volumes under agentsandbox vs runc, as measured by this run"
"$E2E_DIR/volume-table.sh"
step "all tests passed"
