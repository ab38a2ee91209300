#!/usr/bin/env bash
# `make critest`: cri-tools' critest, the CRI conformance suite, against a containerd of its
# own (root, state and socket apart from the cluster's: the kubelet would garbage-collect the
# suite's pods), once with runc and once with the agentsandbox runtime, on the same images.
# The result is the comparison: every spec runc passes must pass under agentsandbox, except
# the ones the hardening refuses on purpose (EXPECTED_REFUSALS below, each with its reason).
#
# The suite pulls its images from registry.k8s.io and gcr.io. Nothing leaves the machine:
# look-alike images are built locally (busybox based) and served by a registry on 127.0.0.1,
# and this containerd resolves both registry names to it (hosts.toml), never upstream.
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CT_STATE=$STATE/critest
CT_RUN=$RUN/critest
CT_SOCK=$CT_RUN/containerd.sock
REGISTRY_ADDR=127.0.0.1:5000

# Specs the agentsandbox runtime fails on purpose (a regex of spec texts), and why.
EXPECTED_REFUSALS=(
  # Host namespaces are refused: a sandbox never shares the node's network, PID or IPC.
  'HostNetwork is true|HostPID is true|HostIpc is true|host network|hostNetwork'
  # Privileged containers are refused (this includes the mount propagation specs, which
  # need a privileged container for rshared/rslave mounts).
  'Privileged is true|privileged|Mount Propagation'
  # The agent seccomp profile is enforced whatever the pod asks (Unconfined, a localhost
  # profile, none).
  'SeccompProfilePath|seccomp'
  # Capabilities beyond the reviewed set are dropped.
  'adding ALL capabilities|adding capability'
  # Pods without the operator's isolation profile get the Strict profile: read-only root.
  'ReadOnlyRootfs is false'
  # Kubernetes user namespaces (CRI NamespaceMode POD/NODE with the caller's id mappings):
  # the runtime always gives a pod its own user namespace and range, never the kubelet's, so
  # it tells containerd it has no idmapped mounts for them (-info) and containerd refuses
  # those specs ("no runtime handler found which supports user namespaces"); see the README
  # on hostUsers: false.
  'UserNamespaces'
  # A container bind-mounts only its own pod's host paths (the kubelet's pod directory,
  # containerd's directories of its sandbox and container): the suite's volume and read-only
  # mount specs bind directories under /tmp, refused like any hostPath volume (the other
  # recursive specs that refuse rro with propagation pass, since the shim's -info offers rro;
  # that /sys is recursively read-only is shown by the e2e battery instead).
  'starting container with volume|readonly mounts should support (non-)?recursive readonly mounts'
)

build_tools() {
  local out
  grep -q "^require sigs.k8s.io/cri-tools $CRICTL_VERSION\$" "$E2E_DIR/gomod/critest/go.mod" ||
    die "e2e/gomod/critest pins another cri-tools than CRICTL_VERSION=$CRICTL_VERSION"
  out=$CACHE/tools/critest-$CRICTL_VERSION-$(content_key "$E2E_DIR/gomod/critest")
  if [[ ! -x $out/critest ]]; then
    step "building critest $CRICTL_VERSION"
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    (cd "$E2E_DIR/gomod/critest" && go test -c -trimpath -o "$out.tmp/critest" sigs.k8s.io/cri-tools/cmd/critest)
    publish "$out.tmp" "$out"
  fi
  CRITEST=$out/critest
  out=$CACHE/tools/registry-$REGISTRY_VERSION
  if [[ ! -x $out/registry ]]; then
    step "building the image registry $REGISTRY_VERSION"
    rm -rf "$out.tmp" && mkdir -p "$out.tmp"
    GOBIN=$out.tmp go install -trimpath "github.com/distribution/distribution/v3/cmd/registry@$REGISTRY_VERSION"
    publish "$out.tmp" "$out"
  fi
  REGISTRY=$out/registry
}

# look_alike NAME(with registry host) ARGS...: a busybox image pushed under NAME.
look_alike() {
  local name=$1
  shift
  local archive
  archive=$CT_STATE/images/$(tr '/:@' '___' <<<"$name").tar
  python3 "$E2E_DIR/images/oci_image.py" --name "$name" --output "$archive" \
    --busybox=/bin/busybox "$@"
  local local_name=$REGISTRY_ADDR/${name#*/}
  ctr_ct images import "$archive" >/dev/null
  ctr_ct images tag --force "$name" "$local_name" >/dev/null
  ctr_ct images push --plain-http "$local_name" >/dev/null
}

ctr_ct() { "$BIN/ctr" -a "$CT_SOCK" -n k8s.io "$@"; }

start_registry() {
  mkdir -p "$CT_STATE/registry"
  cat >"$CT_STATE/registry.yml" <<YML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $CT_STATE/registry}}
http: {addr: $REGISTRY_ADDR}
YML
  start_daemon critest-registry "$REGISTRY" serve "$CT_STATE/registry.yml"
  wait_for "the local registry" 30 curl -fsS "http://$REGISTRY_ADDR/v2/"
}

start_containerd() {
  mkdir -p "$CT_RUN" "$CT_STATE/certs.d/registry.k8s.io" "$CT_STATE/certs.d/gcr.io"
  local host
  for host in registry.k8s.io gcr.io; do
    cat >"$CT_STATE/certs.d/$host/hosts.toml" <<TOML
# Never upstream: the suite's images come from the local look-alike registry.
server = "http://$REGISTRY_ADDR"
[host."http://$REGISTRY_ADDR"]
  capabilities = ["pull", "resolve"]
TOML
  done
  private_containerd_config "$CT_STATE" "$CT_RUN" "$CT_SOCK" >"$CT_STATE/config.toml"
  cat >>"$CT_STATE/config.toml" <<TOML

[plugins."io.containerd.cri.v1.images".registry]
  config_path = "$CT_STATE/certs.d"
TOML
  start_daemon critest-containerd "$BIN/containerd" --config "$CT_STATE/config.toml"
  wait_for "the critest containerd" 60 "$BIN/ctr" -a "$CT_SOCK" version
  ctr_ct images import "$(grep /pause- "$STATE/image-archives")" >/dev/null
}

build_images() {
  mkdir -p "$CT_STATE/images" "$CT_STATE/www"
  echo "<h1>Welcome to nginx!</h1>" >"$CT_STATE/www/index.html"
  local e2e=registry.k8s.io/e2e-test-images gcr=gcr.io/k8s-staging-cri-tools
  look_alike "$e2e/busybox:1.29-2" --cmd=/bin/sh
  look_alike "$e2e/nginx:1.14-2" --file="$CT_STATE/www/index.html:/usr/share/nginx/html/index.html:0644" \
    --entrypoint="/bin/busybox httpd -f -p 80 -h /usr/share/nginx/html"
  look_alike "$e2e/httpd:2.4.39-4" --file="$CT_STATE/www/index.html:/htdocs/index.html:0644" \
    --entrypoint="/bin/busybox httpd -f -p 80 -h /htdocs"
  look_alike "$e2e/nonewprivs:1.3" --cmd=/bin/sh
  look_alike "$gcr/test-image-user-uid:latest" --user=1002 --cmd=/bin/sh
  look_alike "$gcr/test-image-user-username:latest" --user=33 --cmd=/bin/sh
  look_alike "$gcr/test-image-user-uid-group:latest" --user=1003:1003 --cmd=/bin/sh
  look_alike "$gcr/test-image-user-username-group:latest" --user=33:33 --cmd=/bin/sh
  look_alike "$gcr/test-image-predefined-group:latest" --user=1000:50000 --cmd=/bin/sh
  look_alike "$gcr/hostnet-nginx-amd64:latest" --file="$CT_STATE/www/index.html:/www/index.html:0644" \
    --entrypoint="/bin/busybox httpd -f -p 12003 -h /www"
}

# run_suite NAME HANDLER: the suite's passed and failed spec texts in $CT_STATE/NAME.{passed,failed}.
run_suite() {
  local name=$1 handler=$2 report=$CT_STATE/$1.json
  step "critest under $name"
  (cd "$CT_STATE" && "$CRITEST" -runtime-endpoint "unix://$CT_SOCK" -image-endpoint "unix://$CT_SOCK" \
    ${handler:+-runtime-handler "$handler"} \
    -ginkgo.skip 'Image Manager|AppArmor|SELinux' -ginkgo.json-report "$report" \
    >"$LOGS/critest-$name.log" 2>&1) || true
  python3 - "$report" "$CT_STATE/$name" <<'PY'
import json, sys
report, prefix = sys.argv[1], sys.argv[2]
specs = [s for suite in json.load(open(report)) for s in suite.get("SpecReports") or []]
def text(s):
    return " ".join(s.get("ContainerHierarchyTexts") or []) + " " + s.get("LeafNodeText", "")
ran = [s for s in specs if s.get("State") in ("passed", "failed", "panicked", "timedout")]
with open(prefix + ".passed", "w") as f:
    f.writelines(sorted(text(s) + "\n" for s in ran if s["State"] == "passed"))
with open(prefix + ".failed", "w") as f:
    f.writelines(sorted(text(s) + "\n" for s in ran if s["State"] != "passed"))
PY
  step "$name: $(wc -l <"$CT_STATE/$name.passed") passed, $(wc -l <"$CT_STATE/$name.failed") failed (log $LOGS/critest-$name.log)"
}

stop_all() {
  # The suite's own pods, then our daemons, then their mounts.
  local pods
  pods=$("$BIN/crictl" --runtime-endpoint "unix://$CT_SOCK" pods -q 2>/dev/null || true)
  if [[ -n $pods ]]; then
    # shellcheck disable=SC2086
    "$BIN/crictl" --runtime-endpoint "unix://$CT_SOCK" rmp -f $pods >/dev/null 2>&1 || true
  fi
  stop_daemon critest-containerd
  stop_daemon critest-registry
  local target
  for target in $(findmnt -rn -o TARGET | grep -E "^($CT_STATE|$CT_RUN)(/|$)" | sort -r); do
    umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null
  done
}

main() {
  cluster_is_up || die "critest needs the local cluster's CNI, images and shim: run \`make up\` first"
  build_tools
  trap stop_all EXIT
  mkdir -p "$CT_STATE" "$CT_RUN"
  start_registry
  start_containerd
  build_images
  run_suite runc ""
  run_suite agentsandbox agentsandbox
  local expected unexpected
  expected=$(IFS='|'; echo "${EXPECTED_REFUSALS[*]}")
  comm -23 "$CT_STATE/runc.passed" "$CT_STATE/agentsandbox.passed" >"$CT_STATE/regressions"
  unexpected=$(grep -Ev -- "$expected" "$CT_STATE/regressions" || true)
  step "passed under runc but not agentsandbox, refused on purpose:"
  grep -E -- "$expected" "$CT_STATE/regressions" | sed 's/^/    /' || true
  if [[ -n $unexpected ]]; then
    step "passed under runc but FAILED under agentsandbox:"
    printf '    %s\n' "$unexpected"
    exit 1
  fi
  step "critest: agentsandbox passes every spec runc passes, except the refusals above"
}

main "$@"
