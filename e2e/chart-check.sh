#!/usr/bin/env bash
# `make lint-chart` (part of `make test`): `helm lint --strict` of the chart (values checked
# against values.schema.json) and kubeconform of what it renders and of examples/, against
# schemas written offline from the local cluster's API server (its Kubernetes version, with
# the chart's CRD installed: e2e/openapi_schemas.py). Needs `make up`.
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

cluster_is_up || die "no local cluster: the schemas come from its API server; run \`make up\` first"
[[ -x $BIN/kubeconform ]] || die "kubeconform is missing: run \`make deps\`"
CHART=charts/agentsandbox
KUBE_VERSION_PLAIN=${KUBE_VERSION#v}
SCHEMAS=$STATE/schemas

step "schemas from the API server ($KUBE_VERSION) into $SCHEMAS"
rm -rf "$SCHEMAS"
mkdir -p "$SCHEMAS"
"$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" get --raw /openapi/v2 >"$SCHEMAS/openapi.json"
python3 "$E2E_DIR/openapi_schemas.py" "$SCHEMAS/openapi.json" "$SCHEMAS"

kubeconform() {
  "$BIN/kubeconform" -strict -summary -kubernetes-version "$KUBE_VERSION_PLAIN" \
    -schema-location "$SCHEMAS/{{ .ResourceKind }}{{ .KindSuffix }}.json" "$@"
}

# Every optional part on (the ServiceMonitor's CRD is not in this cluster: it is rendered and
# linted, not schema-checked).
ALL_ON=(--set metrics.serviceMonitor.enabled=true --set imagePullSecrets[0].name=pull)

step "helm lint --strict"
"$BIN/helm" lint --strict "$CHART"
"$BIN/helm" lint --strict "$CHART" "${ALL_ON[@]}"

step "kubeconform: the chart as rendered (defaults, and every option on)"
"$BIN/helm" template agentsandbox "$CHART" -n agentsandbox-system --kube-version "$KUBE_VERSION" | kubeconform
"$BIN/helm" template agentsandbox "$CHART" -n agentsandbox-system --kube-version "$KUBE_VERSION" "${ALL_ON[@]}" |
  kubeconform -skip ServiceMonitor

step "kubeconform: examples/"
kubeconform examples/
