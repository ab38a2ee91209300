# syntax=docker/dockerfile:1
# The project's two images, for users with a registry (`make images` builds the same images
# offline from locally built binaries for the local cluster):
#   docker build --target operator -t <registry>/agentsandbox-operator:<tag> .
#   docker build --target node     -t <registry>/agentsandbox-node:<tag> .
# then install the chart with image.repository / node.image.repository pointing at them.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
ARG RUNTIME_IMAGE=debian:12-slim

FROM ${RUST_IMAGE} AS build
# libseccomp: the shim's seccomp filters and notifications; protoc: the telemetry contract.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libseccomp-dev pkg-config protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p agentsandbox-operator -p agentsandbox-node -p agentsandbox-shim \
 && cargo rustc --release --locked -p agentsandbox-wait --bin agentsandbox-wait -- -C target-feature=+crt-static \
 && mkdir -p /out \
 && cp target/release/agentsandbox-operator target/release/agentsandbox-node \
       target/release/containerd-shim-agentsandbox-v1 target/release/agentsandbox-launcher \
       target/release/agentsandbox-wait /out/

# The operator: one static-enough binary, nothing else, never root.
FROM ${RUNTIME_IMAGE} AS operator
COPY --from=build /out/agentsandbox-operator /usr/local/bin/agentsandbox-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/agentsandbox-operator"]

# The node agent, carrying the runtime shim it installs on the node (the shim runs on the
# host, which needs libseccomp2: every Debian/Ubuntu node has it).
FROM ${RUNTIME_IMAGE} AS node
RUN apt-get update \
 && apt-get install -y --no-install-recommends libseccomp2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/agentsandbox-node /usr/local/bin/agentsandbox-node
COPY --from=build /out/containerd-shim-agentsandbox-v1 /usr/local/share/agentsandbox/containerd-shim-agentsandbox-v1
# The shim's launcher (the pod's zygote) and the warm-pool waiter (static), installed next to
# the shim.
COPY --from=build /out/agentsandbox-launcher /usr/local/share/agentsandbox/agentsandbox-launcher
COPY --from=build /out/agentsandbox-wait /usr/local/share/agentsandbox/agentsandbox-wait
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/agentsandbox-node"]
