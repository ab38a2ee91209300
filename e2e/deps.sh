#!/usr/bin/env bash
# Installs and builds everything the local cluster needs, from package registries only:
# Debian packages with apt, Kubernetes/etcd/tools from the Go module proxy, images from
# local binaries. Built artefacts are cached in $CACHE by version, so a warm run only
# checks that they exist.
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

APT_PACKAGES=(
  containernetworking-plugins                 # CNI plugins (containerd and runc are built)
  iptables conntrack ethtool socat iproute2   # kubelet / kube-proxy node requirements
  nftables                                    # the shim's in-pod firewall (nft)
  busybox-static                              # the test image's userland
  openssl curl                                # cluster certificates, health checks
  gcc libc6-dev                               # the static pause binary
  libseccomp-dev pkg-config protobuf-compiler # building the shim and its gRPC contract
  python3                                     # e2e/images/oci_image.py
  shellcheck                                  # `make lint` checks these scripts
)

install_apt_packages() {
  local missing=() p
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    step "system packages present"
    return
  fi
  step "installing system packages: ${missing[*]}"
  [[ $(id -u) == 0 ]] || die "installing packages needs root (apt-get install ${missing[*]})"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

build_kubernetes() {
  local minor=${KUBE_VERSION#v1.}
  minor=${minor%%.*}
  local dir=$E2E_DIR/gomod/kubernetes-v1.$minor out
  [[ -f $dir/go.mod ]] || die "no wrapper module for Kubernetes $KUBE_VERSION (e2e/gomod/kubernetes-v1.$minor)"
  grep -q "^require k8s.io/kubernetes $KUBE_VERSION\$" "$dir/go.mod" ||
    die "e2e/gomod/kubernetes-v1.$minor pins another release than $KUBE_VERSION"
  out=$CACHE/kubernetes-$KUBE_VERSION-$(content_key "$dir")
  KUBERNETES_BIN=$out
  if [[ -x $out/kubelet ]]; then
    step "kubernetes $KUBE_VERSION cached"
    return
  fi
  step "building kubernetes $KUBE_VERSION from the Go module proxy (cold: ~8 min on 2 cores)"
  local ldflags="-s -w
    -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION
    -X k8s.io/component-base/version.gitMajor=1
    -X k8s.io/component-base/version.gitMinor=$minor
    -X k8s.io/component-base/version.gitTreeState=clean
    -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION"
  rm -rf "$out.tmp"
  mkdir -p "$out.tmp"
  (cd "$dir" && go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl)
  publish "$out.tmp" "$out"
}

# runc at RUNC_VERSION (cgo, with seccomp): the baseline OCI runtime under containerd's runc
# shim; Debian 12's 1.1 predates what containerd 2.x and user namespaces expect.
build_runc() {
  local out=$CACHE/runc-$RUNC_VERSION
  RUNC_BIN=$out
  if [[ -x $out/runc ]]; then
    step "runc $RUNC_VERSION cached"
    return
  fi
  step "building runc $RUNC_VERSION from the Go module proxy"
  rm -rf "$out.tmp"
  mkdir -p "$out.tmp"
  GOBIN=$out.tmp CGO_ENABLED=1 go install -trimpath -tags seccomp -ldflags "-s -w" \
    "github.com/opencontainers/runc@$RUNC_VERSION"
  publish "$out.tmp" "$out"
}

build_etcd() {
  local dir=$E2E_DIR/gomod/etcd
  local out
  out=$CACHE/etcd-$ETCD_VERSION-$(content_key "$dir")
  ETCD_BIN=$out
  if [[ -x $out/etcd ]]; then
    step "etcd $ETCD_VERSION cached"
    return
  fi
  step "building etcd $ETCD_VERSION"
  rm -rf "$out.tmp"
  mkdir -p "$out.tmp"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$out.tmp/etcd" .)
  publish "$out.tmp" "$out"
}

build_pause() {
  local src=$E2E_DIR/images/pause.c
  local out
  out=$CACHE/pause-$(sha256sum "$src" | cut -c1-12)
  PAUSE_BIN=$out/pause
  [[ -x $PAUSE_BIN ]] && return
  step "building the static pause binary"
  rm -rf "$out.tmp"
  mkdir -p "$out.tmp"
  gcc -static -Os -Wall -Werror -o "$out.tmp/pause" "$src"
  publish "$out.tmp" "$out"
}

# The escape-attempt test program (e2e/images/attack.c), static so it runs in any image.
build_attack() {
  local src=$E2E_DIR/images/attack.c
  ATTACK_TAG=$(sha256sum "$src" | cut -c1-12)
  local out=$CACHE/attack-$ATTACK_TAG
  ATTACK_BIN=$out/agentsandbox-attack
  [[ -x $ATTACK_BIN ]] && return
  step "building the static escape-attempt test program"
  rm -rf "$out.tmp"
  mkdir -p "$out.tmp"
  gcc -static -O2 -Wall -Werror -o "$out.tmp/agentsandbox-attack" "$src"
  publish "$out.tmp" "$out"
}

# build_image NAME TAG ARGS...: an OCI archive from local files (see e2e/images/oci_image.py),
# cached under a key of its inputs.
build_image() {
  local name=$1 tag=$2
  shift 2
  # The key covers the arguments, the builder and the content of every input file.
  local key arg inputs=("$E2E_DIR/images/oci_image.py")
  for arg in "$@"; do
    case $arg in
      --file=*) inputs+=("$(cut -d: -f1 <<<"${arg#--file=}")") ;;
      --busybox=*) inputs+=("${arg#--busybox=}") ;;
    esac
  done
  key=$( (printf '%s\n' "$name" "$tag" "$@" && cat "${inputs[@]}") | sha256sum | cut -c1-12)
  local out=$CACHE/images/${name##*/}-$tag-$key.tar
  IMAGE_ARCHIVES+=("$out")
  [[ -f $out ]] && return
  step "building image $name:$tag"
  mkdir -p "$CACHE/images"
  python3 "$E2E_DIR/images/oci_image.py" --name "$name:$tag" --output "$out.tmp" "$@"
  mv "$out.tmp" "$out"
}

build_images() {
  IMAGE_ARCHIVES=()
  build_image agentsandbox.local/pause "$PAUSE_TAG" \
    --file="$PAUSE_BIN:/pause:0755" --entrypoint=/pause --user=65535:65535
  build_image agentsandbox.local/busybox "$BUSYBOX_TAG" --busybox=/bin/busybox \
    --cmd=/bin/sh
  build_image agentsandbox.local/coredns "$COREDNS_VERSION" \
    --file="$CACHE/tools/coredns-$COREDNS_VERSION/coredns:/coredns:0755" \
    --entrypoint=/coredns --user=65532:65532
  build_image agentsandbox.local/local-path-provisioner "$LOCAL_PATH_VERSION" \
    --file="$CACHE/tools/local-path-provisioner-$LOCAL_PATH_VERSION/local-path-provisioner:/local-path-provisioner:0755" \
    --entrypoint=/local-path-provisioner
  build_image agentsandbox.local/attack "$ATTACK_TAG" --busybox=/bin/busybox \
    --file="$ATTACK_BIN:/usr/local/bin/agentsandbox-attack:0755" --cmd=/bin/sh
  printf '%s\n' "${IMAGE_ARCHIVES[@]}" >"$STATE/image-archives"
  # Test images whose tags are content hashes, for the e2e tests.
  printf 'ATTACK_IMAGE=agentsandbox.local/attack:%s\n' "$ATTACK_TAG" >"$STATE/test-images.env"
}

main() {
  mkdir -p "$CACHE" "$STATE" "$BIN"
  install_apt_packages
  command -v go >/dev/null || die "Go is needed to build Kubernetes (https://go.dev/doc/install)"
  build_kubernetes
  build_etcd
  local b
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    ln -sfn "$KUBERNETES_BIN/$b" "$BIN/$b"
  done
  ln -sfn "$ETCD_BIN/etcd" "$BIN/etcd"
  # The node's runtime: containerd finds its runc shim and runc on the harness's PATH ($BIN).
  build_containerd "$CONTAINERD_VERSION"
  build_runc
  for b in containerd ctr containerd-shim-runc-v2; do
    ln -sfn "$(containerd_dir "$CONTAINERD_VERSION")/$b" "$BIN/$b"
  done
  ln -sfn "$RUNC_BIN/runc" "$BIN/runc"
  go_install crictl "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
  go_install kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  go_install helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  go_install coredns "github.com/coredns/coredns@$COREDNS_VERSION"
  go_install local-path-provisioner "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION"
  build_pause
  build_attack
  build_images
  step "dependencies ready ($(du -sh "$CACHE" | cut -f1) in $CACHE)"
}

main "$@"
