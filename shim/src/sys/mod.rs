//! Linux specifics the shim needs beyond libcontainer: pinned user namespaces, idmapped
//! image layers, joining the pod's namespaces, timed nftables set elements over netlink.

pub mod exec;
pub mod fd_passing;
pub mod mounts;
pub mod namespaces;
pub mod nft_sets;
