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

# Stops the cluster this run started and checks the machine is clean; keeps the exit code
# of the tests unless cleaning up fails.
stop_cluster() {
  local rc=$?
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
step "e2e tests"
rm -rf "$STATE/results/volume-table"
make --no-print-directory test-e2e
step "volumes under agentsandbox vs runc, as measured by this run"
"$E2E_DIR/volume-table.sh"
step "all tests passed"
