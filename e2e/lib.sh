# shellcheck shell=bash disable=SC2034 # variables here are used by the scripts that source it
# Shared helpers for the local-cluster scripts (sourced, not run).
# Layout:
#   $CACHE  built artefacts keyed by version, outside the checkout, survives clones;
#   $STATE  this checkout's cluster: certificates, configs, data, logs, PIDs (.e2e/);
#   $RUN    sockets, kept short because unix socket paths are limited to 108 bytes.
set -euo pipefail

E2E_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$E2E_DIR/.." && pwd)
# shellcheck source=versions.env
source "$E2E_DIR/versions.env"

CACHE=${AGENTSANDBOX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/agentsandbox}
STATE=${E2E_STATE:-$ROOT/.e2e}
RUN=/run/agentsandbox-e2e-$(printf '%s' "$STATE" | sha256sum | cut -c1-8)
BIN=$STATE/bin
PIDS=$STATE/pids
LOGS=$STATE/logs
PKI=$STATE/pki
KUBECONFIG_ADMIN=$STATE/kubeconfig
CONTAINERD_SOCK=$RUN/containerd.sock
GUARD_CHAIN=AGENTSANDBOX-E2E-GUARD
AGENTSANDBOX_NAMESPACE=agentsandbox-system
# RuntimeClass the operator gives sandbox pods: the agentsandbox shim, which up.sh installs
# into this cluster's containerd. Set it empty to run sandboxes under runc with pod-level
# hardening only (their Hardened condition then says so).
SANDBOX_RUNTIME_CLASS=${SANDBOX_RUNTIME_CLASS-agentsandbox}

export PATH="$BIN:$PATH"
export GOFLAGS=-buildvcs=false
export CGO_ENABLED=0

SCRIPT_START=${SCRIPT_START:-$(date +%s)}
export SCRIPT_START

# step NAME...: announce a step with the time elapsed since the script started.
step() {
  printf '==> [%4ss] %s\n' "$(($(date +%s) - SCRIPT_START))" "$*"
}

die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}

# wait_for DESCRIPTION SECONDS COMMAND...: poll COMMAND until it succeeds or the deadline passes.
wait_for() {
  local what=$1 seconds=$2
  shift 2
  local deadline=$(($(date +%s) + seconds))
  until "$@" >/dev/null 2>&1; do
    if (($(date +%s) >= deadline)); then
      printf 'error: timed out after %ss waiting for %s\n' "$seconds" "$what" >&2
      return 1
    fi
    sleep 0.5
  done
}

pid_of() {
  local file=$PIDS/$1.pid
  [[ -f $file ]] && cat "$file"
}

# is_running NAME: the daemon NAME that we started is alive.
is_running() {
  local pid
  pid=$(pid_of "$1") || return 1
  [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

# start_daemon NAME COMMAND...: start COMMAND detached, log to $LOGS/NAME.log, record its PID.
start_daemon() {
  local name=$1
  shift
  if is_running "$name"; then
    step "$name already running (pid $(pid_of "$name"))"
    return 0
  fi
  mkdir -p "$PIDS" "$LOGS"
  (cd "$STATE" && exec setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null) &
  echo $! >"$PIDS/$name.pid"
  step "$name started (pid $!, log $LOGS/$name.log)"
}

# stop_daemon NAME: SIGTERM the recorded PID, SIGKILL after a grace period.
stop_daemon() {
  local name=$1 pid
  pid=$(pid_of "$name") || return 0
  if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$(($(date +%s) + 15))
    while kill -0 "$pid" 2>/dev/null && (($(date +%s) < deadline)); do sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
    step "stopped $name (pid $pid)"
  fi
  rm -f "$PIDS/$name.pid"
}

# write_if_changed FILE: stdin becomes FILE only if the content differs. Running daemons watch
# their configuration files (kube-proxy exits when its file is rewritten), so a second
# `make up` must leave identical files untouched.
write_if_changed() {
  local file=$1 tmp
  tmp=$(mktemp "$file.XXXXXX")
  cat >"$tmp"
  if [[ -f $file ]] && cmp -s "$tmp" "$file"; then
    rm -f "$tmp"
  else
    mv "$tmp" "$file"
  fi
}

# content_key DIR: a short hash of a wrapper module's files, so editing it rebuilds.
content_key() {
  (cd "$1" && cat go.mod go.sum ./*.go | sha256sum | cut -c1-12)
}

# publish TMP DEST: move a finished build into place atomically; partial builds never count.
publish() {
  rm -rf "$2"
  mv "$1" "$2"
}

node_ip() {
  local dev
  dev=$(ip -4 route show default | awk '{for (i = 1; i < NF; i++) if ($i == "dev") {print $(i + 1); exit}}')
  [[ -n $dev ]] || die "no IPv4 default route: the kubelet needs a non-loopback node IP"
  ip -4 -o addr show dev "$dev" | awk '{split($4, a, "/"); print a[1]; exit}'
}

node_name() {
  hostname | tr '[:upper:]' '[:lower:]'
}

kubectl_admin() {
  "$BIN/kubectl" --kubeconfig "$KUBECONFIG_ADMIN" "$@"
}

# cluster_is_up: every daemon we start is alive and the API server answers.
cluster_is_up() {
  local d
  for d in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy; do
    is_running "$d" || return 1
  done
  kubectl_admin get --raw=/readyz >/dev/null 2>&1
}

# The product's release binaries (operator, node agent, shim), always built as one set: cargo
# unifies features across the packages of one invocation, so building a subset would rebuild
# the shared dependencies with other features.
build_release_binaries() {
  step "building release binaries (operator, node agent, shim, warm-pool waiter)"
  (cd "$ROOT" && cargo build --release --locked -p agentsandbox-operator -p agentsandbox-node -p agentsandbox-shim)
  # The waiter runs inside any image: linked statically (glibc's crt-static), and kept under
  # its own name so that a workspace build cannot overwrite it with a dynamic one.
  (cd "$ROOT" && cargo rustc -q --release --locked -p agentsandbox-wait --bin agentsandbox-wait \
    -- -C target-feature=+crt-static &&
    cp target/release/agentsandbox-wait target/release/agentsandbox-wait-static)
}

# go_install NAME MODULE_PATH@VERSION: a tool whose module has no replace lines.
go_install() {
  local name=$1 target=$2
  local out=$CACHE/tools/$name-${target##*@}
  if [[ -x $out/$name ]]; then
    step "$name ${target##*@} cached"
  else
    step "building $name ${target##*@}"
    rm -rf "$out.tmp"
    mkdir -p "$out.tmp"
    GOBIN=$out.tmp go install -trimpath -ldflags "-s -w" "$target"
    publish "$out.tmp" "$out"
  fi
  ln -sfn "$out/$name" "$BIN/$name"
}

# private_containerd_config STATE RUN SOCK: the cluster's containerd configuration (its
# runtimes, drop-ins included) for a containerd of its own, whose pods the kubelet never sees
# (it would stop and garbage-collect them): root and state under STATE and RUN, socket SOCK.
private_containerd_config() {
  local state=$1 run=$2 sock=$3
  sed -e "s|^root = .*|root = \"$state/root\"|" \
    -e "s|^state = .*|state = \"$run/state\"|" \
    -e "s|address = \".*containerd.sock\"|address = \"$sock\"|" \
    -e "s|address = \".*containerd.sock.ttrpc\"|address = \"$sock.ttrpc\"|" \
    -e "s|path = \".*containerd/opt\"|path = \"$state/opt\"|" \
    "$STATE/containerd/config.toml"
}

# containerd_dir VERSION: where VERSION's containerd, ctr and runc shim are cached.
containerd_dir() {
  local version=$1
  case $version in
  v1.*) echo "$CACHE/containerd-$version-$(content_key "$E2E_DIR/gomod/containerd-v1.7")" ;;
  *) echo "$CACHE/containerd-$version" ;;
  esac
}

# build_containerd VERSION: containerd, ctr and containerd-shim-runc-v2 at VERSION, from the Go
# module proxy, cached.
build_containerd() {
  local version=$1 out
  out=$(containerd_dir "$version")
  # `containerd --version` says the release (CRI reports it as the node's runtime version).
  if [[ -x $out/containerd && -x $out/ctr && -x $out/containerd-shim-runc-v2 ]] &&
    "$out/containerd" --version | grep -q " ${version#v} "; then
    step "containerd $version cached"
    return
  fi
  step "building containerd $version from the Go module proxy"
  rm -rf "$out.tmp"
  mkdir -p "$out.tmp"
  case $version in
  v1.*)
    # containerd 1.x's go.mod has exclude directives: built through a wrapper module.
    grep -q "github.com/containerd/containerd $version\$" "$E2E_DIR/gomod/containerd-v1.7/go.mod" ||
      die "e2e/gomod/containerd-v1.7 pins another 1.x than $version"
    (cd "$E2E_DIR/gomod/containerd-v1.7" && go build -trimpath -o "$out.tmp/" \
      -ldflags "-s -w -X github.com/containerd/containerd/version.Version=${version#v}" \
      github.com/containerd/containerd/cmd/containerd github.com/containerd/containerd/cmd/ctr \
      github.com/containerd/containerd/cmd/containerd-shim-runc-v2)
    ;;
  *)
    local cmd
    for cmd in containerd ctr containerd-shim-runc-v2; do
      GOBIN=$out.tmp go install -trimpath \
        -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=${version#v}" \
        "github.com/containerd/containerd/v2/cmd/$cmd@$version"
    done
    ;;
  esac
  publish "$out.tmp" "$out"
}
