#!/usr/bin/env bash
# Starts a real single-node Kubernetes cluster on this machine: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, containerd, kubelet, kube-proxy, CoreDNS and a
# local-path StorageClass. State lives in .e2e/, the admin kubeconfig at .e2e/kubeconfig.
# Running it again is harmless: what runs is left running, what is missing is started.
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $(id -u) == 0 ]] || die "the local cluster runs a kubelet and containerd, which need root"

NODE_IP=$(node_ip)
NODE_NAME=$(node_name)
CNI_BRIDGE=asbe2e0

# --- certificates -------------------------------------------------------------------------

# issue_cert NAME SUBJECT EXTENSIONS: a key and certificate signed by the cluster CA.
issue_cert() {
  local name=$1 subject=$2 extensions=$3
  [[ -f $PKI/$name.crt ]] && return
  openssl genrsa -out "$PKI/$name.key" 2048 2>/dev/null
  openssl req -new -key "$PKI/$name.key" -subj "$subject" -out "$PKI/$name.csr" 2>/dev/null
  printf '%s\n' "$extensions" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
    -days 365 -sha256 -extfile "$PKI/$name.ext" -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

write_certificates() {
  # Certificates name the node IP; a machine with a new address gets new certificates.
  if [[ -f $PKI/node-ip && $(cat "$PKI/node-ip") != "$NODE_IP" ]]; then
    step "node IP changed to $NODE_IP: issuing new certificates"
    rm -rf "$PKI"
  fi
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  echo "$NODE_IP" >"$PKI/node-ip"
  if [[ ! -f $PKI/ca.crt ]]; then
    step "writing certificates"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout "$PKI/ca.key" -out "$PKI/ca.crt" \
      -days 365 -subj "/CN=agentsandbox-e2e-ca" 2>/dev/null
  fi
  local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  local server="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth"
  issue_cert kube-apiserver "/CN=kube-apiserver" "$server
subjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.$CLUSTER_DOMAIN,DNS:localhost,IP:127.0.0.1,IP:$KUBERNETES_SERVICE_IP,IP:$NODE_IP"
  issue_cert kubelet-serving "/CN=$NODE_NAME" "$server
subjectAltName=DNS:$NODE_NAME,IP:$NODE_IP"
  issue_cert admin "/O=system:masters/CN=agentsandbox-e2e-admin" "$client"
  issue_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
  issue_cert kube-controller-manager "/CN=system:kube-controller-manager" "$client"
  issue_cert kube-scheduler "/CN=system:kube-scheduler" "$client"
  issue_cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" "$client"
  issue_cert kube-proxy "/CN=system:kube-proxy" "$client"
  if [[ ! -f $PKI/service-account.key ]]; then
    openssl genrsa -out "$PKI/service-account.key" 2048 2>/dev/null
    openssl rsa -in "$PKI/service-account.key" -pubout -out "$PKI/service-account.pub" 2>/dev/null
  fi
  chmod 600 "$PKI"/*.key
}

# write_kubeconfig FILE CERT_NAME: a kubeconfig for one client certificate, certs embedded.
write_kubeconfig() {
  local file=$1 name=$2
  write_if_changed "$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: agentsandbox-e2e
  cluster:
    server: https://$NODE_IP:6443
    certificate-authority-data: $(base64 -w0 "$PKI/ca.crt")
users:
- name: $name
  user:
    client-certificate-data: $(base64 -w0 "$PKI/$name.crt")
    client-key-data: $(base64 -w0 "$PKI/$name.key")
contexts:
- name: agentsandbox-e2e
  context:
    cluster: agentsandbox-e2e
    user: $name
current-context: agentsandbox-e2e
EOF
  chmod 600 "$file"
}

write_kubeconfigs() {
  mkdir -p "$STATE/kubeconfigs"
  local c
  for c in kube-controller-manager kube-scheduler kubelet kube-proxy; do
    write_kubeconfig "$STATE/kubeconfigs/$c.kubeconfig" "$c"
  done
  write_kubeconfig "$KUBECONFIG_ADMIN" admin
}

# --- host settings the node needs, recorded so that `make down` restores them ------------------

# Values the kubelet and the pod bridge change (the kubelet sets the vm/kernel ones itself
# unless protectKernelDefaults is on).
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes)

configure_host() {
  if [[ ! -f $STATE/sysctl.orig ]]; then
    local s
    for s in "${SYSCTLS[@]}"; do
      [[ -e /proc/sys/${s//.//} ]] && printf '%s=%s\n' "$s" "$(cat "/proc/sys/${s//.//}")"
    done >"$STATE/sysctl.orig.tmp"
    mv "$STATE/sysctl.orig.tmp" "$STATE/sysctl.orig"
  fi
  [[ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]] ||
    die "br_netfilter is not available: pod-to-service traffic on the bridge would bypass kube-proxy"
  prepare_netns_dir
  echo 1 >/proc/sys/net/ipv4/ip_forward
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
  echo 1 >/proc/sys/net/bridge/bridge-nf-call-ip6tables
  install_network_guard
}

# `ip netns add` (tests' own hosts, or anyone on the machine) turns /run/netns into a shared
# bind mount of itself the first time it runs. If that happens after containerd has created pod
# namespaces there, their mounts end up hidden underneath and can no longer be removed. So do
# it first, the way iproute2 does, and remember to undo it.
prepare_netns_dir() {
  mkdir -p /run/netns
  if ! mountpoint -q /run/netns; then
    mount --bind /run/netns /run/netns
    mount --make-shared /run/netns
    touch "$STATE/netns-dir-mounted"
  fi
}

# The pod network reaches this machine and its own pods, nothing else: forwarded packets from
# the pod CIDR (or the pod bridge) to any other address are dropped. The chain sits in the
# mangle table, which runs before the filter rules kube-proxy and the kubelet manage.
install_network_guard() {
  local ipt
  iptables -t mangle -N "$GUARD_CHAIN" 2>/dev/null || iptables -t mangle -F "$GUARD_CHAIN"
  iptables -t mangle -A "$GUARD_CHAIN" -s "$POD_CIDR" -d "$POD_CIDR" -j RETURN
  iptables -t mangle -A "$GUARD_CHAIN" -s "$POD_CIDR" -j DROP \
    -m comment --comment "agentsandbox e2e: pod traffic stays on this machine"
  iptables -t mangle -A "$GUARD_CHAIN" -i "$CNI_BRIDGE" ! -o "$CNI_BRIDGE" -j DROP
  ip6tables -t mangle -N "$GUARD_CHAIN" 2>/dev/null || ip6tables -t mangle -F "$GUARD_CHAIN"
  ip6tables -t mangle -A "$GUARD_CHAIN" -s "$POD_SUBNET6" -d "$POD_SUBNET6" -j RETURN
  # Neighbour discovery between pods on the bridge (link-scope multicast never leaves it).
  ip6tables -t mangle -A "$GUARD_CHAIN" -d ff02::/16 -j RETURN
  ip6tables -t mangle -A "$GUARD_CHAIN" -i "$CNI_BRIDGE" -j DROP
  for ipt in iptables ip6tables; do
    $ipt -t mangle -C FORWARD -j "$GUARD_CHAIN" 2>/dev/null || $ipt -t mangle -I FORWARD 1 -j "$GUARD_CHAIN"
  done
  step "network guard installed (forwarded traffic from $POD_CIDR leaves only to $POD_CIDR)"
}

# --- control plane -----------------------------------------------------------------------------

start_etcd() {
  mkdir -p "$STATE/etcd"
  chmod 700 "$STATE/etcd"
  start_daemon etcd "$BIN/etcd" --name default --data-dir "$STATE/etcd" \
    --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
    --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
    --initial-cluster default=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
    --unsafe-no-fsync --log-level warn
  wait_for "etcd health" 60 curl -fsS http://127.0.0.1:2381/health
}

start_apiserver() {
  start_daemon kube-apiserver "$BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 \
    --advertise-address="$NODE_IP" --bind-address="$NODE_IP" --secure-port=6443 \
    --tls-cert-file="$PKI/kube-apiserver.crt" --tls-private-key-file="$PKI/kube-apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" \
    --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" \
    --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-account-key-file="$PKI/service-account.pub" \
    --service-account-signing-key-file="$PKI/service-account.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" \
    --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --allow-privileged=true --profiling=false --v=1
  wait_for "kube-apiserver /readyz" 120 kubectl_admin get --raw=/readyz
}

start_controllers() {
  start_daemon kube-controller-manager "$BIN/kube-controller-manager" \
    --kubeconfig="$STATE/kubeconfigs/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$STATE/kubeconfigs/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$STATE/kubeconfigs/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/service-account.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" --cluster-cidr="$POD_CIDR" \
    --allocate-node-cidrs=false --profiling=false --v=1
  start_daemon kube-scheduler "$BIN/kube-scheduler" \
    --kubeconfig="$STATE/kubeconfigs/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$STATE/kubeconfigs/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$STATE/kubeconfigs/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=1
}

# --- node -------------------------------------------------------------------------------------

write_containerd_config() {
  mkdir -p "$STATE/containerd" "$STATE/cni/net.d" "$RUN"
  chmod 700 "$RUN"
  mkdir -p "$STATE/containerd/conf.d"
  # On containerd 1.x the node agent's installer adds its runtime stanza to this file itself
  # (1.x replaces whole plugin sections from imports, so it gets no drop-in): once the file
  # carries that block it is the installer's, kept as it is (its original is in the backup).
  if ! grep -qs '# BEGIN agentsandbox runtime' "$STATE/containerd/config.toml"; then
    containerd_base_config | write_if_changed "$STATE/containerd/config.toml"
  fi
  write_if_changed "$STATE/cni/net.d/10-agentsandbox-e2e.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "agentsandbox-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$CNI_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$STATE/cni/ipam",
        "ranges": [
          [{"subnet": "$POD_SUBNET"}],
          [{"subnet": "$POD_SUBNET6", "rangeStart": "$POD_POOL6_START", "rangeEnd": "$POD_POOL6_END"}]
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
      }
    }
  ]
}
EOF
}

# What every containerd configuration of this cluster says, whatever its version: its own root,
# state and sockets, and the drop-in directory.
containerd_common_config() {
  cat <<EOF
root = "$STATE/containerd/root"
state = "$RUN/containerd-state"
imports = ["$STATE/containerd/conf.d/*.toml"]

[grpc]
  address = "$CONTAINERD_SOCK"

[ttrpc]
  address = "$RUN/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
EOF
}

containerd_base_config() {
  if [[ $CONTAINERD_VERSION == v1.* ]]; then
    containerd_v1_config
    return
  fi
  cat <<EOF
# Generated by e2e/up.sh: a containerd of this cluster's own (root, state and socket apart
# from any other containerd on the machine). Like containerd 2.x's default configuration it
# imports drop-ins: the chart's node agent installs the agentsandbox runtime as one, in conf.d.
version = 3
$(containerd_common_config)

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"

  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "agentsandbox.local/pause:$PAUSE_TAG"

[plugins."io.containerd.cri.v1.runtime"]
  # This machine cannot raise its own priority (no CAP_SYS_RESOURCE in the bounding set):
  # never ask the runtime to lower oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true

  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"

    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        SystemdCgroup = false

    # A peer for \`make bench\` only (which installs Debian's crun and its wrapper,
    # e2e/bench/crun-bench.c): crun under the runc shim.
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.crun]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.crun.options]
        BinaryName = "$BIN/crun-bench"
        SystemdCgroup = false

  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$STATE/cni/net.d"
EOF
}

# containerd 1.x (the version matrix's oldest row) reads configuration version 2, where CRI is
# one plugin; the same settings as above.
containerd_v1_config() {
  cat <<EOF
# Generated by e2e/up.sh for containerd $CONTAINERD_VERSION (configuration version 2).
version = 2
$(containerd_common_config)

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "agentsandbox.local/pause:$PAUSE_TAG"
  restrict_oom_score_adj = true
  enable_selinux = false
  disable_apparmor = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false

    # A peer for \`make bench\` only (which installs Debian's crun and its wrapper,
    # e2e/bench/crun-bench.c): crun under the runc shim.
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.crun.options]
        BinaryName = "$BIN/crun-bench"
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
}

restart_containerd() {
  stop_daemon containerd
  start_containerd
}

start_containerd() {
  write_containerd_config
  start_daemon containerd "$BIN/containerd" --config "$STATE/containerd/config.toml"
  wait_for "containerd socket" 60 "$BIN/ctr" -a "$CONTAINERD_SOCK" version
}

import_images() {
  local archive
  while read -r archive; do
    "$BIN/ctr" -a "$CONTAINERD_SOCK" -n k8s.io images import "$archive" >/dev/null
  done <"$STATE/image-archives"
  step "images imported: $("$BIN/ctr" -a "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -c agentsandbox.local) local images"
}

start_kubelet() {
  mkdir -p "$STATE/kubelet"
  # Eviction thresholds are absolute: the node's disk is the developer's disk, shared with
  # cargo's build trees, and a percentage of a large disk can evict the product mid-test (the
  # likely cause of a red CI: a cold build beside a stale target/ left 2% free, and every
  # Deployment pod was gone when helm --wait gave up).
  # Pods with dnsPolicy Default get this file instead of the machine's resolver, so no pod is
  # handed a name server outside the cluster.
  printf 'nameserver %s\nsearch %s\n' "$CLUSTER_DNS_IP" "$CLUSTER_DOMAIN" | write_if_changed "$STATE/kubelet/resolv.conf"
  write_if_changed "$STATE/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: $PKI/kubelet-serving.crt
tlsPrivateKeyFile: $PKI/kubelet-serving.key
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
containerRuntimeEndpoint: unix://$CONTAINERD_SOCK
clusterDNS: [$CLUSTER_DNS_IP]
clusterDomain: $CLUSTER_DOMAIN
resolvConf: $STATE/kubelet/resolv.conf
serializeImagePulls: false
evictionHard: {memory.available: 100Mi, nodefs.available: 1Gi, imagefs.available: 1Gi, nodefs.inodesFree: 2%}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
EOF
  start_daemon kubelet "$BIN/kubelet" --config="$STATE/kubelet/config.yaml" \
    --kubeconfig="$STATE/kubeconfigs/kubelet.kubeconfig" --root-dir="$STATE/kubelet/root" \
    --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" --v=1
  wait_for "node $NODE_NAME Ready" 180 \
    kubectl_admin wait --for=condition=Ready "node/$NODE_NAME" --timeout=2s
}

start_kube_proxy() {
  write_if_changed "$STATE/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
clientConnection: {kubeconfig: $STATE/kubeconfigs/kube-proxy.kubeconfig}
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
iptables: {localhostNodePorts: false}
# Leave the machine's conntrack settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  start_daemon kube-proxy "$BIN/kube-proxy" --config="$STATE/kube-proxy.yaml" --v=1
  wait_for "kube-proxy health" 60 curl -fsS http://127.0.0.1:10256/healthz
}

# --- add-ons ----------------------------------------------------------------------------------

apply_addons() {
  mkdir -p "$STATE/local-path"
  local manifest
  for manifest in "$E2E_DIR"/manifests/*.yaml; do
    sed -e "s|@STATE@|$STATE|g" -e "s|@CLUSTER_DNS_IP@|$CLUSTER_DNS_IP|g" \
      -e "s|@CLUSTER_DOMAIN@|$CLUSTER_DOMAIN|g" -e "s|@COREDNS_VERSION@|$COREDNS_VERSION|g" \
      -e "s|@LOCAL_PATH_VERSION@|$LOCAL_PATH_VERSION|g" -e "s|@BUSYBOX_TAG@|$BUSYBOX_TAG|g" \
      "$manifest" | kubectl_admin apply --server-side --field-manager=agentsandbox-e2e -f - >/dev/null
  done
  kubectl_admin -n kube-system rollout status deployment/coredns --timeout=120s >/dev/null
  kubectl_admin -n local-path-storage rollout status deployment/local-path-provisioner --timeout=120s >/dev/null
  step "add-ons ready: CoreDNS ($CLUSTER_DNS_IP), StorageClass local-path (default)"
}

# The product, installed the way users install it: images, `helm upgrade --install`, and the
# quickstart sandbox applied with kubectl.
install_agentsandbox() {
  "$E2E_DIR/images.sh"
  # shellcheck source=/dev/null
  source "$STATE/images.env"
  step "helm upgrade --install agentsandbox (namespace $AGENTSANDBOX_NAMESPACE)"
  # The node agent installs the runtime on this node: the shim into containerd's PATH, the
  # stanza into containerd's configuration. This node's service manager is this script: the
  # installer asks for a containerd restart with a request file, acted on below.
  local request_name=restart-containerd.request
  "$BIN/helm" upgrade --install agentsandbox "$ROOT/charts/agentsandbox" \
    --kubeconfig "$KUBECONFIG_ADMIN" --namespace "$AGENTSANDBOX_NAMESPACE" --create-namespace \
    --set image.repository="$OPERATOR_IMAGE_REPOSITORY" --set image.tag="$OPERATOR_IMAGE_TAG" \
    --set node.image.repository="$NODE_IMAGE_REPOSITORY" --set node.image.tag="$NODE_IMAGE_TAG" \
    --set operator.runtimeClassName="$SANDBOX_RUNTIME_CLASS" \
    --set node.installer.hostBinDir="$BIN" \
    --set node.installer.containerdConfig="$STATE/containerd/config.toml" \
    --set node.installer.restartRequestFile="$request_name" \
    --set-json 'node.installer.restartCommand=[]' \
    --set node.installer.privileged=false >/dev/null
  local deadline=$((SECONDS + 300)) request=$STATE/containerd/$request_name
  until [[ ! -f $request ]] && kubectl_admin -n "$AGENTSANDBOX_NAMESPACE" rollout status \
    daemonset/agentsandbox-node --timeout=2s >/dev/null 2>&1; do
    if [[ -f $request ]]; then
      step "the node agent installed the runtime and asks for a containerd restart"
      restart_containerd
      rm -f "$request"
    fi
    ((SECONDS < deadline)) || die "the node agent did not become ready (kubectl -n $AGENTSANDBOX_NAMESPACE logs ds/agentsandbox-node -c install)"
    sleep 1
  done
  kubectl_admin -n "$AGENTSANDBOX_NAMESPACE" rollout status deployment/agentsandbox-operator --timeout=180s >/dev/null
  step "node agent ready: node label agentsandbox.io/runtime=$(kubectl_admin get node -o jsonpath='{.items[0].metadata.labels.agentsandbox\.io/runtime}')"
  step "applying examples/quickstart.yaml"
  kubectl_admin apply --server-side --field-manager=agentsandbox-e2e -f "$ROOT/examples/quickstart.yaml" >/dev/null
  kubectl_admin wait --for=condition=Ready agentsandbox/quickstart --timeout=120s >/dev/null
}

main() {
  mkdir -p "$STATE" "$LOGS" "$PIDS"
  step "dependencies"
  "$E2E_DIR/deps.sh"
  write_certificates
  write_kubeconfigs
  configure_host
  start_etcd
  start_apiserver
  start_controllers
  build_release_binaries
  start_containerd
  import_images
  start_kubelet
  start_kube_proxy
  apply_addons
  install_agentsandbox
  step "cluster up: export KUBECONFIG=$KUBECONFIG_ADMIN PATH=$BIN:\$PATH"
  kubectl_admin get nodes -o wide
  kubectl_admin get pods -A
  kubectl_admin get agentsandboxes -A
}

main "$@"
