//! `-info`: containerd 2.x runs the shim binary with `-info` (runtime options on stdin) and
//! reads a `RuntimeInfo` protobuf from stdout before it uses the runtime. CRI takes the
//! runtime's OCI features from it: recursive read-only mounts are offered to the kubelet only
//! when `mountOptions` lists `rro`, and Kubernetes user namespaces only when the runtime
//! supports idmapped mounts for them (it does not: `hostUsers: false` pods are refused, the
//! sandbox gets the runtime's own user namespace instead).

use prost::Message;
use serde_json::{json, Value};

/// The type URL containerd registers for `specs-go/features.Features` (a JSON `Any`).
pub const FEATURES_TYPE_URL: &str =
    "types.containerd.io/opencontainers/runtime-spec/1/features/Features";

#[derive(Clone, PartialEq, Message)]
pub struct ProtoAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RuntimeVersion {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(string, tag = "2")]
    pub revision: String,
}

/// containerd's `types.RuntimeInfo` (api/types/introspection.proto).
#[derive(Clone, PartialEq, Message)]
pub struct RuntimeInfo {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(message, optional, tag = "2")]
    pub version: Option<RuntimeVersion>,
    #[prost(message, optional, tag = "3")]
    pub options: Option<ProtoAny>,
    #[prost(message, optional, tag = "4")]
    pub features: Option<ProtoAny>,
    #[prost(map = "string, string", tag = "5")]
    pub annotations: std::collections::HashMap<String, String>,
}

/// Mount options the runtime recognises (libcontainer's parser), `rro` included.
const MOUNT_OPTIONS: &[&str] = &[
    "defaults",
    "ro",
    "rw",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "sync",
    "async",
    "dirsync",
    "remount",
    "mand",
    "nomand",
    "atime",
    "noatime",
    "diratime",
    "nodiratime",
    "bind",
    "rbind",
    "unbindable",
    "runbindable",
    "private",
    "rprivate",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "rro",
    "rrw",
    "rnosuid",
    "rsuid",
    "rnodev",
    "rdev",
    "rnoexec",
    "rexec",
    "rnodiratime",
    "rdiratime",
    "rrelatime",
    "rnorelatime",
    "rnoatime",
    "ratime",
    "rstrictatime",
    "rnostrictatime",
    "rnosymfollow",
    "rsymfollow",
];

/// The runtime's OCI features (runtime-spec `features.md`), as the runtime enforces them: no
/// hooks (stripped by policy), only the reviewed capabilities, the seccomp actions its agent
/// profile uses, no idmapped mounts for Kubernetes user namespaces.
pub fn features() -> Value {
    let capabilities: Vec<String> = agentsandbox_contract::NAMESPACED_CAPABILITIES
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    json!({
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.2.1",
        "hooks": [],
        "mountOptions": MOUNT_OPTIONS,
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": capabilities,
            "cgroup": {"v1": true, "v2": true, "systemd": false, "systemdUser": false},
            "seccomp": {
                "enabled": true,
                "actions": ["SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO", "SCMP_ACT_NOTIFY"],
                "operators": ["SCMP_CMP_EQ", "SCMP_CMP_MASKED_EQ"],
                "archs": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
            },
            "apparmor": {"enabled": false},
            "selinux": {"enabled": false},
            "intelRdt": {"enabled": false},
            "mountExtensions": {"idmap": {"enabled": false}},
        },
    })
}

/// The `RuntimeInfo` the shim prints for `-info`.
pub fn runtime_info(name: &str) -> RuntimeInfo {
    RuntimeInfo {
        name: name.to_string(),
        version: Some(RuntimeVersion {
            version: env!("CARGO_PKG_VERSION").to_string(),
            revision: String::new(),
        }),
        options: None,
        features: Some(ProtoAny {
            type_url: FEATURES_TYPE_URL.to_string(),
            value: serde_json::to_vec(&features()).expect("features serialise"),
        }),
        annotations: Default::default(),
    }
}

pub fn encode_info(name: &str) -> Vec<u8> {
    runtime_info(name).encode_to_vec()
}
