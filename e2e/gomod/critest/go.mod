// Wrapper module: builds cri-tools' critest (a test binary, so `go install` cannot) at the
// crictl version from the Go module proxy.
module agentsandbox.io/e2e/critest

go 1.26.6

require sigs.k8s.io/cri-tools v1.37.0
