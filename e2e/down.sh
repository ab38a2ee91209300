#!/usr/bin/env bash
# Stops the local cluster that e2e/up.sh started and puts the machine back as it was:
# processes (by recorded PID), pod sandboxes, mounts, network namespaces, cgroups, iptables
# rules, the pod bridge and the sysctls the node changed. Logs are kept in .e2e/logs.
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
set +e

CNI_BRIDGE=asbe2e0

# Pods are torn down through the runtime while it still runs, so that CNI releases their
# addresses and network namespaces and the shims exit by themselves.
remove_pods() {
  is_running containerd || return 0
  if is_running kubelet; then
    stop_daemon kubelet
  fi
  local crictl=(crictl --runtime-endpoint "unix://$CONTAINERD_SOCK" --timeout 20s)
  local pods
  pods=$("${crictl[@]}" pods -q 2>/dev/null)
  if [[ -n $pods ]]; then
    step "removing $(wc -w <<<"$pods") pod sandboxes"
    # Remember their network namespaces: any CNI fails to remove is removed below.
    # shellcheck disable=SC2086
    "${crictl[@]}" inspectp -o json $pods 2>/dev/null | python3 -c '
import json, sys
text = sys.stdin.read()
decoder, i = json.JSONDecoder(), 0
while i < len(text):
    if text[i].isspace():
        i += 1
        continue
    doc, i = decoder.raw_decode(text, i)
    spec = doc.get("info", {}).get("runtimeSpec", {})
    for ns in spec.get("linux", {}).get("namespaces", []):
        if ns.get("type") == "network" and ns.get("path"):
            print(ns["path"])
' >>"$STATE/pod-netns" 2>/dev/null
    # shellcheck disable=SC2086
    "${crictl[@]}" stopp $pods >/dev/null 2>&1
    # shellcheck disable=SC2086
    "${crictl[@]}" rmp -f $pods >/dev/null 2>&1
  fi
}

# Shims outlive containerd by design. Any still running that were started by OUR containerd
# (their command line names our socket) are stopped by PID.
stop_leftover_shims() {
  local pid
  for pid in $(pgrep -d ' ' -f -- "-address $CONTAINERD_SOCK" 2>/dev/null); do
    [[ $pid == "$$" ]] && continue
    step "stopping leftover shim pid $pid"
    kill -KILL "$pid" 2>/dev/null
  done
}

remove_iptables_rules() {
  if [[ -x $BIN/kube-proxy ]]; then
    "$BIN/kube-proxy" --cleanup >/dev/null 2>&1
  fi
  local ipt table rule chain
  for ipt in iptables ip6tables; do
    for table in filter nat mangle; do
      # Jumps into the chains the kubelet, kube-proxy, CNI and this harness own...
      $ipt -t "$table" -S 2>/dev/null | grep -E -- '-j (KUBE-|CNI-|'"$GUARD_CHAIN"')' | grep -- '^-A' |
        while read -r rule; do
          # shellcheck disable=SC2086
          $ipt -t "$table" ${rule/-A/-D} 2>/dev/null
        done
      # ...then the chains themselves.
      for chain in $($ipt -t "$table" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^(KUBE-|CNI-)/ || $2 == "'"$GUARD_CHAIN"'") {print $2}'); do
        $ipt -t "$table" -F "$chain" 2>/dev/null
      done
      for chain in $($ipt -t "$table" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^(KUBE-|CNI-)/ || $2 == "'"$GUARD_CHAIN"'") {print $2}'); do
        $ipt -t "$table" -X "$chain" 2>/dev/null
      done
    done
  done
}

unmount_state() {
  local target
  # Deepest first; the state directory and the run directory hold every mount we made.
  # /run/agentsandbox is the shim's own state (pinned user namespaces, idmapped layers).
  for target in $(findmnt -rn -o TARGET | grep -E "^($STATE|$RUN|/run/agentsandbox)(/|$)" | sort -r); do
    umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null
  done
}

remove_network() {
  local path ns link
  # Pod namespaces our containerd created and CNI did not remove.
  if [[ -f $STATE/pod-netns ]]; then
    while read -r path; do
      [[ -e $path ]] || continue
      umount "$path" 2>/dev/null
      ip netns del "$(basename "$path")" 2>/dev/null || rm -f "$path"
    done <"$STATE/pod-netns"
  fi
  # Test hosts the e2e tests create (named asb-e2e-*, links asbh*) if a test crashed.
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^asb-e2e-/ {print $1}'); do
    ip netns del "$ns" 2>/dev/null
  done
  for link in $(ip -o link show 2>/dev/null | awk -F': ' '$2 ~ /^asbh[0-9]+@/ {split($2, a, "@"); print a[1]}'); do
    ip link del "$link" 2>/dev/null
  done
  ip link show "$CNI_BRIDGE" >/dev/null 2>&1 && ip link del "$CNI_BRIDGE"
  if [[ -f $STATE/netns-dir-mounted ]] && ! ls /run/netns/* >/dev/null 2>&1; then
    umount /run/netns 2>/dev/null && rmdir /run/netns 2>/dev/null
  fi
}

# The kubelet (cgroupfs driver) creates /kubepods under every controller; remove it deepest
# first. The hierarchy itself is never remounted.
remove_cgroups() {
  local root dir
  for root in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
    [[ -d $root/kubepods ]] || [[ -d $root/kubepods.slice ]] || continue
    find "$root/kubepods" -depth -type d 2>/dev/null | while read -r dir; do rmdir "$dir" 2>/dev/null; done
  done
}

restore_sysctls() {
  [[ -f $STATE/sysctl.orig ]] || return 0
  local key value
  while IFS='=' read -r key value; do
    [[ -n $key ]] && echo "$value" >"/proc/sys/${key//.//}" 2>/dev/null
  done <"$STATE/sysctl.orig"
  rm -f "$STATE/sysctl.orig"
  step "sysctls restored"
}

main() {
  [[ -d $STATE ]] || {
    step "no cluster state in $STATE: nothing to stop"
    exit 0
  }
  remove_pods
  local d
  for d in kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver containerd etcd; do
    stop_daemon "$d"
  done
  # Anything else the harness or the tests started and recorded.
  for d in "$PIDS"/*.pid; do
    [[ -f $d ]] && stop_daemon "$(basename "$d" .pid)"
  done
  stop_leftover_shims
  remove_iptables_rules
  unmount_state
  remove_network
  remove_cgroups
  restore_sysctls
  # Keep logs for a post-mortem and the results the tests measured (make volume-table reads
  # them); everything else goes.
  find "$STATE" -mindepth 1 -maxdepth 1 ! -name logs ! -name results -exec rm -rf {} +
  # /run/agentsandbox-node: the node agent's telemetry socket directory (a hostPath).
  rm -rf "$RUN" /run/agentsandbox /run/agentsandbox-node
  # Directories containerd's runc shims create under /run/containerd whatever our state path
  # is; removed only when empty (another containerd may use them).
  rmdir /run/containerd/runc/k8s.io /run/containerd/runc /run/containerd/s /run/containerd 2>/dev/null
  step "cluster stopped; logs kept in $LOGS"
}

main "$@"
