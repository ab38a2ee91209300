//! The agentsandbox runtime shim (`containerd-shim-agentsandbox-v1`). Today: the hardening
//! policy every container's OCI spec goes through (`policy`). The containerd task service,
//! the libcontainer-based container lifecycle and the seccomp notification listener build on
//! it.

pub mod policy;
