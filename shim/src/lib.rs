//! The agentsandbox runtime shim (`containerd-shim-agentsandbox-v1`): the shim process
//! (`service`, started through either of containerd's start protocols: `bootstrap`; what it
//! tells containerd's `-info` probe: `info`), containerd's task API as a thin adapter (`task_api`) over the task service
//! (`task`), the per-container state machine (`container`), the pod's resources (`pod`), the
//! escape response (`response`), all cgroup work (`cgroups`), what the launcher does to create
//! and enter containers with libcontainer (`launcher`) in the pod's zygote (`zygote`, the
//! `agentsandbox-launcher` binary), the hardening policy
//! every container goes through (`policy`), per-pod id ranges (`idmap`), the egress firewall
//! (`egress`) and the pod's resolver that opens it by name (`dns`), the seccomp notification listener (`notify`) and the escape-attempt telemetry
//! it feeds (`telemetry`). OS specifics beyond those live in `sys`.

pub mod bootstrap;
pub mod cgroups;
pub mod console;
pub mod container;
pub mod dns;
pub mod egress;
pub mod handoff;
pub mod idmap;
pub mod info;
pub mod launcher;
pub mod notify;
pub mod pod;
pub mod policy;
pub mod response;
pub mod service;
pub mod sys;
pub mod task;
pub mod task_api;
pub mod telemetry;
pub mod zygote;
