//! The agentsandbox runtime shim (`containerd-shim-agentsandbox-v1`): the containerd task
//! service (`service`), the single-threaded launcher that creates containers with
//! libcontainer (`launcher`), the hardening policy every container goes through (`policy`),
//! per-pod user namespaces and id ranges (`idmap`, `sys`), the egress firewall (`egress`) , the
//! seccomp notification listener (`notify`) and the escape-attempt telemetry it feeds
//! (`telemetry`).

pub mod console;
pub mod egress;
pub mod idmap;
pub mod launcher;
pub mod notify;
pub mod policy;
pub mod service;
pub mod sys;
pub mod telemetry;
