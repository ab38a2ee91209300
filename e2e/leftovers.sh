#!/usr/bin/env bash
# Lists what the local cluster could leave on the machine after `make down`: processes of its
# binaries, mounts, network namespaces and links, cgroups, iptables chains, sysctls it changed.
# Prints nothing and exits 0 when the machine is clean; otherwise prints each leftover and
# exits 1. `make test` runs it after stopping a cluster it started.
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
set +e

leftovers=()
found() { leftovers+=("$*"); }

# Processes whose executable is one of the harness's binaries (cached, or installed into its
# bin directory, like the agentsandbox shim), containerd, its shims or runc.
for exe in /proc/[0-9]*/exe; do
  target=$(readlink "$exe" 2>/dev/null) || continue
  pid=${exe#/proc/}
  pid=${pid%/exe}
  case $target in
    "$CACHE"/* | "$BIN"/* | /usr/bin/containerd | /usr/bin/containerd-shim* | /usr/sbin/runc | /usr/bin/runc)
      found "process $pid: $target $(tr '\0' ' ' <"/proc/$pid/cmdline" | cut -c1-120)"
      ;;
    /memfd:*)
      # The agentsandbox shim runs from a sealed in-memory copy of itself.
      cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)
      [[ $cmdline == *containerd-shim-agentsandbox* ]] && found "process $pid: sealed shim $(cut -c1-120 <<<"$cmdline")"
      ;;
  esac
done

while read -r target; do
  found "mount: $target"
done < <(findmnt -rn -o TARGET | grep -E "^($STATE|$RUN|/run/agentsandbox)(/|$)|^/run/netns/cni-")

for dir in /run/agentsandbox /run/agentsandbox-node; do
  [[ -e $dir ]] && found "runtime state: $dir"
done

while read -r ns; do
  found "network namespace: $ns"
done < <(ip netns list 2>/dev/null | awk '$1 ~ /^(cni-|asb-e2e-)/ {print $1}')

while read -r link; do
  found "network link: $link"
done < <(ip -o link show 2>/dev/null | awk -F': ' '$2 ~ /^(asbe2e0|asbh[0-9]+@)/ {print $2}')

for root in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
  [[ -d $root/kubepods ]] && found "cgroup: ${root%/}/kubepods"
done

for ipt in iptables ip6tables; do
  for table in filter nat mangle; do
    while read -r chain; do
      found "$ipt -t $table chain $chain"
    done < <($ipt -t "$table" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^(KUBE-|CNI-)/ || $2 == "'"$GUARD_CHAIN"'") {print $2}')
  done
done

[[ -e $STATE/sysctl.orig ]] && found "sysctls not restored (see $STATE/sysctl.orig)"
[[ -d $RUN ]] && found "run directory: $RUN"

if ((${#leftovers[@]})); then
  printf 'left on the machine by the local cluster:\n'
  printf '  %s\n' "${leftovers[@]}"
  exit 1
fi
