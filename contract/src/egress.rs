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

/// The sandbox's network policy as the runtime enforces it: outbound (`mode`, `allow`, `dns`)
/// and inbound (`ingress`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    pub mode: EgressMode,
    /// Destinations allowed when `mode` is Deny.
    #[serde(default)]
    pub allow: Vec<EgressRule>,
    /// Whether the sandbox may resolve any name (through the runtime's resolver, which still
    /// opens addresses only for `host` rules). Without it only `host` rules' names resolve.
    #[serde(default)]
    pub dns: bool,
    /// Ports the sandbox accepts connections (and datagrams) on; everything else inbound is
    /// refused, except replies to the sandbox's own allowed flows. Left out of the JSON when
    /// empty (as `hostTTL` at its default), so that a sandbox that uses neither keeps the
    /// annotation, and its pod, of the version before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ingress: Vec<EgressPort>,
    /// How long an address a `host` rule resolved to stays open: the record's TTL, bounded.
    #[serde(
        default,
        rename = "hostTTL",
        skip_serializing_if = "TtlBounds::is_default"
    )]
    pub host_ttl: TtlBounds,
}

/// Bounds on the time a resolved address stays in the sandbox's allow set.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TtlBounds {
    pub min_seconds: u32,
    pub max_seconds: u32,
}

impl Default for TtlBounds {
    fn default() -> TtlBounds {
        TtlBounds {
            min_seconds: TtlBounds::DEFAULT_MIN_SECONDS,
            max_seconds: TtlBounds::DEFAULT_MAX_SECONDS,
        }
    }
}

impl TtlBounds {
    /// Clients that cache an answer for about this long (the JVM's default) keep working.
    pub const DEFAULT_MIN_SECONDS: u32 = 30;
    pub const DEFAULT_MAX_SECONDS: u32 = 3600;

    pub fn is_default(&self) -> bool {
        *self == TtlBounds::default()
    }

    /// The time an address answered with `ttl` stays open.
    pub fn clamp(&self, ttl: u32) -> u32 {
        ttl.max(self.min_seconds)
            .min(self.max_seconds.max(self.min_seconds))
    }
}

/// One allowed destination: a network (`cidr`) or a name (`host`), never both.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct EgressRule {
    /// Destination network in CIDR notation (validated by the API server and by the shim).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cidr: String,
    /// Destination name: exact (`pypi.org`) or one-label wildcard (`*.example.com`),
    /// lowercase, no trailing dot.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
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

/// Whether `name` (a queried name, any case, with or without the trailing dot) is what
/// `pattern` allows: the same name, or for `*.suffix` exactly one label before `suffix`.
pub fn host_matches(pattern: &str, name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    match pattern.strip_prefix("*.") {
        Some(suffix) => name
            .len()
            .checked_sub(suffix.len() + 1)
            .filter(|&split| split > 0)
            .is_some_and(|split| {
                name.as_bytes()[split] == b'.'
                    && name[split + 1..].eq_ignore_ascii_case(suffix)
                    && !name[..split].contains('.')
            }),
        None => name.eq_ignore_ascii_case(pattern),
    }
}
