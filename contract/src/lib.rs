//! The contract between the operator and the runtime: every value that crosses from the
//! AgentSandbox into the shim (pod annotations, passed by containerd's `pod_annotations`), and
//! every name both sides use for an escape response or category. Both sides import these types;
//! nothing here is spelled anywhere else. The shim parses the annotations once, at container
//! create, into a [`PodPolicy`].

mod egress;
mod escape;
pub mod handoff;
mod pod_policy;

pub use egress::{
    host_matches, EgressMode, EgressPolicy, EgressPort, EgressRule, Protocol, TtlBounds,
};
pub use escape::{Category, EscapeResponse, ResponseTaken};
pub use pod_policy::{IsolationProfile, PodIdentity, PodPolicy, PolicyError, SeccompProfileChoice};

/// Pod annotation and label keys. Users cannot set keys under [`annotations::PREFIX`] on an
/// AgentSandbox (CEL), and the operator overrides them anyway.
/// Capabilities a sandbox's root may keep, as Kubernetes spells them (no `CAP_` prefix). Each
/// acts only inside the sandbox's user namespace (its root is an unprivileged host user), and
/// each is something ordinary tools need: file ownership and permission fixes, signalling own
/// processes, switching own users (package managers drop to helper users), binding ports
/// below 1024. The runtime drops anything else a pod asks for; the operator gives this set to
/// Standard sandboxes whose agent runs as root. All are in Pod Security "baseline"'s list.
pub const NAMESPACED_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "NET_BIND_SERVICE",
];

pub mod annotations {
    /// Prefix of every key the operator owns.
    pub const PREFIX: &str = "agentsandbox.io/";
    /// The sandbox's egress policy as JSON ([`crate::EgressPolicy`]).
    pub const EGRESS: &str = "agentsandbox.io/egress";
    pub const SANDBOX_NAME: &str = "agentsandbox.io/sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "agentsandbox.io/sandbox-namespace";
    pub const SANDBOX_UID: &str = "agentsandbox.io/sandbox-uid";
    /// [`crate::EscapeResponse`].
    pub const ON_ESCAPE: &str = "agentsandbox.io/on-escape-attempt";
    /// [`crate::SeccompProfileChoice`].
    pub const SECCOMP: &str = "agentsandbox.io/seccomp-profile";
    /// [`crate::IsolationProfile`].
    pub const ISOLATION: &str = "agentsandbox.io/isolation-profile";
    /// Hash of the desired pod; a different hash means the pod is replaced (operator only).
    pub const POD_SPEC_HASH: &str = "agentsandbox.io/pod-spec-hash";
    /// Label with the sandbox's name on every object it owns.
    pub const LABEL_NAME: &str = "agentsandbox.io/name";
    /// Label with the sandbox's UID on its pod.
    pub const LABEL_UID: &str = "agentsandbox.io/uid";
}

/// Keys CRI (containerd) sets on every container's OCI spec.
pub mod cri {
    pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
    pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
    pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
    pub const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
    pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
    pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
}

/// Defines a fieldless enum whose serde name is its variant name, with `as_str`, `ALL` and
/// `FromStr`: the names are the contract, so they are written once.
macro_rules! named_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(serde::Serialize, serde::Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        $vis enum $name {
            $($(#[$vmeta])* #[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = crate::PolicyError;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err(crate::PolicyError::UnknownValue {
                        kind: stringify!($name),
                        value: text.to_string(),
                        expected: [$($text),+].join(", "),
                    }),
                }
            }
        }
    };
}
pub(crate) use named_enum;
