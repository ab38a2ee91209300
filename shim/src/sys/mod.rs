//! Linux specifics the shim needs beyond libcontainer: pinned user namespaces, idmapped
//! image layers, joining the pod's namespaces.

pub mod exec;
pub mod fd_passing;
pub mod mounts;
pub mod namespaces;
