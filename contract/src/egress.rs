//! The egress policy the operator hands the runtime (annotation
//! [`crate::annotations::EGRESS`]), enforced by the shim inside the pod's network namespace.

use serde::{Deserialize, Serialize};

use crate::named_enum;

named_enum! {
    /// Outbound traffic of the sandbox.
    #[derive(Default)]
    pub enum EgressMode {
        // No outbound traffic except what the allow-list (and DNS) permit.
        #[default]
        Deny => "Deny",
        // Unrestricted outbound traffic.
        Allow => "Allow",
    }
}

named_enum! {
    /// A transport protocol.
    #[derive(Default)]
    pub enum Protocol {
        #[default]
        Tcp => "TCP",
        Udp => "UDP",
    }
}

/// The sandbox's egress policy as the runtime enforces it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    pub mode: EgressMode,
    /// Destinations allowed when `mode` is Deny.
    #[serde(default)]
    pub allow: Vec<EgressRule>,
    /// Whether the pod's cluster DNS servers may be queried.
    #[serde(default)]
    pub dns: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressRule {
    /// Destination network in CIDR notation (validated by the API server and by the shim).
    pub cidr: String,
    /// All ports when empty.
    #[serde(default)]
    pub ports: Vec<EgressPort>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct EgressPort {
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

impl EgressPolicy {
    /// What a pod gets when nobody said otherwise: no egress at all.
    pub fn deny_all() -> EgressPolicy {
        EgressPolicy::default()
    }
}
