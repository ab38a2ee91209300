# agentsandbox: `make up` starts a local single-node cluster with everything installed;
# `make test` runs every test tier. Both install what they need (root, Debian, Go, Rust).
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: critest test-matrix volume-table help up down deps test test-unit test-e2e lint lint-chart build bench crds images

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

up: ## build everything, start the local cluster, install agentsandbox, show a sandbox Ready
	e2e/up.sh

down: ## stop the local cluster and remove everything it left on the machine
	e2e/down.sh

deps: ## install system packages and build/cache the cluster's binaries and images
	e2e/deps.sh

images: ## build the project's images from local binaries and import them into the local cluster
	e2e/images.sh

build: ## build the Rust workspace (release)
	cargo build --release --workspace --locked

lint: ## formatting, clippy and shellcheck, warnings are errors
	cargo fmt --all -- --check
	shellcheck -x -P SCRIPTDIR e2e/*.sh .ci/run
	cargo clippy --workspace --all-targets --locked -- -D warnings

lint-chart: ## helm lint --strict + kubeconform of the chart and examples/ (schemas from the local cluster; needs `make up`)
	e2e/chart-check.sh

test-unit: ## unit tests (no cluster)
	cargo test --workspace --locked --exclude agentsandbox-e2e

test-e2e: ## e2e tests against the running local cluster (fails if none is up)
	cargo test --locked -p agentsandbox-e2e -- --test-threads=2

test: ## every tier: lint, unit, e2e (starts the cluster if none runs, stops it after)
	e2e/test.sh

bench: ## measurements against baselines on the local cluster (starts/updates it; never gates CI)
	e2e/up.sh
	e2e/bench-deps.sh
	cargo run -q --locked -p agentsandbox-e2e --bin bench

crds: ## regenerate crds/ from the Rust API types
	for plural in agentsandboxes agentsandboxtemplates agentsandboxpools; do \
	  cargo run -q --locked -p agentsandbox-operator --bin crdgen $$plural > crds/agentsandbox.io_$$plural.yaml && \
	  cp crds/agentsandbox.io_$$plural.yaml charts/agentsandbox/files/crds/ || exit 1; \
	done

test-matrix: ## e2e (cluster, runtime, escapes, installer) on every containerd+Kubernetes of VERSION_MATRIX (e2e/versions.env); needs no cluster up
	bash e2e/runtime-matrix.sh

volume-table: ## the README's volume table (agentsandbox vs runc) from the last e2e run's measurements
	e2e/volume-table.sh --readme

critest: ## CRI conformance (cri-tools' critest) of the agentsandbox runtime vs runc, on its own containerd (needs `make up`)
	bash e2e/critest.sh
