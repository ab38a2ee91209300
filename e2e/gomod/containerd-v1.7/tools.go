//go:build tools

// Package tools pins the containerd 1.7 commands that e2e/runtime-matrix.sh builds:
// containerd's own go.mod has exclude directives, so `go install module@version` refuses it.
package tools

import (
	_ "github.com/containerd/containerd/cmd/containerd"
	_ "github.com/containerd/containerd/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/cmd/ctr"
)
