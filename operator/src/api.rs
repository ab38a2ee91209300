//! The `AgentSandbox` API (`agentsandbox.io/v1alpha1`): the CRD is generated from these types
//! (`cargo run -p agentsandbox-operator --bin crdgen`), never written by hand.
//!
//! Every field carries a doc comment because it becomes the field's description in
//! `kubectl explain`. Cross-field rules are CEL (`x-kubernetes-validations`) so that the API
//! server itself refuses a bad spec with a message naming the field.

// Each `printcolumn(...)` in the `#[kube]` attribute repeats keys such as `type_`, which
// clippy mistakes for duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvVar, LocalObjectReference, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use agentsandbox_contract::{
    annotations::PREFIX as LABEL_PREFIX, EgressMode, EscapeResponse, IsolationProfile, Protocol,
    ResponseTaken, SeccompProfileChoice,
};

pub const GROUP: &str = "agentsandbox.io";

/// An isolated environment for one AI agent: a pod run by the agentsandbox runtime, which
/// enforces a user namespace, an agent seccomp profile, dropped capabilities and a read-only
/// root whatever the pod asks for, plus its network policy, optional workspace volume and
/// lifecycle. Escape attempts the runtime catches are reported in `status.security`.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "agentsandbox.io",
    version = "v1alpha1",
    kind = "AgentSandbox",
    plural = "agentsandboxes",
    shortname = "asb",
    category = "agentsandbox",
    namespaced,
    status = "AgentSandboxStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "An isolated, hardened environment for one AI agent, with escape attempts reported on its status.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Escapes",
        type_ = "integer",
        json_path = ".status.security.escapeAttempts",
        description = "escape attempts the runtime denied"
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".status.nodeName",
        priority = 1
    ),
    printcolumn(
        name = "IP",
        type_ = "string",
        json_path = ".status.podIP",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.files) || !has(self.workspace) || self.files.all(f, f.path != self.workspace.mountPath && !f.path.startsWith(self.workspace.mountPath + '/') && !self.workspace.mountPath.startsWith(f.path + '/'))").message("spec.files: a path cannot be the workspace's mountPath, inside it or above it (the workspace is writable, files are read-only); choose another directory"))]
#[x_kube(validation = Rule::new("has(self.image) != has(self.templateRef)").message("spec needs exactly one of image (a sandbox of its own) or templateRef (a sandbox from an AgentSandboxTemplate of this namespace)"))]
#[x_kube(validation = Rule::new("!has(self.poolRef) || has(self.templateRef)").message("spec.poolRef needs spec.templateRef (the pool's template)"))]
#[x_kube(validation = Rule::new("!has(self.templateRef) || (!has(self.imagePullPolicy) && !has(self.workingDir) && !has(self.resources) && !has(self.podTemplate) && !has(self.workspace) && !has(self.files) && !has(self.network.expose))").message("spec.templateRef: imagePullPolicy, workingDir, resources, podTemplate, workspace, files and network.expose come from the template; set them in the AgentSandboxTemplate"))]
#[x_kube(validation = Rule::new("!has(self.templateRef) || (self.isolation.profile == 'Strict' && self.isolation.seccompProfile == 'Agent' && self.isolation.user == 'Auto')").message("spec.isolation comes from the template when spec.templateRef is set; set it in the AgentSandboxTemplate"))]
#[x_kube(validation = Rule::new("has(self.templateRef) == has(oldSelf.templateRef) && (!has(self.templateRef) || (self.templateRef == oldSelf.templateRef && ((has(self.poolRef) == has(oldSelf.poolRef)) && (!has(self.poolRef) || self.poolRef == oldSelf.poolRef))))").message("spec.templateRef and spec.poolRef cannot change; create a new sandbox"))]
pub struct AgentSandboxSpec {
    /// Start from this AgentSandboxTemplate (of the sandbox's namespace) instead of giving an
    /// image: the template's spec, with this sandbox's env (added), command/args, network
    /// egress (added), lifetime and security (the stricter) on top. Fixed once set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template_ref: Option<LocalRef>,

    /// Take a ready pod from this AgentSandboxPool (which must use templateRef's template):
    /// the sandbox is Ready in milliseconds, with its env, command/args and egress handed to
    /// the waiting pod. Without a ready pod it starts cold, and status.claim says why. When
    /// omitted, a pool of the namespace that uses the same template is taken if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_ref: Option<LocalRef>,

    /// Container image the agent runs in. Give an explicit tag or digest. Required unless
    /// templateRef is set (the template's image is used then).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.trim() == self && !self.contains(' ')").message("spec.image must be an image reference without spaces, e.g. registry.example/agent:1.2"))]
    pub image: String,

    /// When the kubelet pulls the image: Always, IfNotPresent (default) or Never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<ImagePullPolicy>,

    /// Entrypoint of the agent's container (replaces the image's ENTRYPOINT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,

    /// Arguments to the entrypoint (replaces the image's CMD).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,

    /// Environment variables of the agent's container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<EnvVar>>,

    /// Working directory of the agent's container (defaults to the workspace mount when a
    /// workspace is requested, else the image's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("spec.workingDir must be an absolute path"))]
    pub working_dir: Option<String>,

    /// CPU and memory for the agent's container. Defaults to requests 250m / 256Mi and limits
    /// 1 CPU / 1Gi when omitted, so that no sandbox runs unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Pod-level settings merged into the sandbox's pod. The hardening always wins: nothing
    /// here can turn off the runtime class, the security context or the token opt-out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_template: Option<PodTemplate>,

    /// How the sandbox is isolated.
    #[serde(default)]
    pub isolation: Isolation,

    /// Network access of the sandbox: egress is denied unless allowed here.
    #[serde(default)]
    pub network: Network,

    /// A persistent volume mounted into the sandbox, kept across suspend/resume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<Workspace>,

    /// Files from Secrets and ConfigMaps, mounted read-only at directories you choose
    /// (credential files, CA bundles, configuration). The kubelet keeps them up to date as
    /// the Secret or ConfigMap changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(
        merge_strategy = ListMerge::Map(vec!["path".into()]),
        validation = Rule::new("self.all(a, self.all(b, !b.path.startsWith(a.path + '/')))").message("spec.files: one entry's path cannot be inside another's; give them separate directories")
    )]
    pub files: Option<Vec<FileMount>>,

    /// When the sandbox ends by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetime: Option<Lifetime>,

    /// Running (default) keeps a pod running; Suspended deletes the pod and keeps the
    /// workspace, so that switching back to Running resumes with the same data.
    #[serde(default)]
    pub operating_mode: OperatingMode,

    /// What happens when the agent tries to escape.
    #[serde(default)]
    pub security: SecurityPolicy,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl ImagePullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ImagePullPolicy::Always => "Always",
            ImagePullPolicy::IfNotPresent => "IfNotPresent",
            ImagePullPolicy::Never => "Never",
        }
    }
}

/// Pod-level settings merged into the sandbox's pod.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    /// Extra labels on the pod. Keys under agentsandbox.io/ are reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('agentsandbox.io/'))").message("spec.podTemplate.labels: keys under agentsandbox.io/ are reserved for the operator"))]
    pub labels: Option<BTreeMap<String, String>>,

    /// Extra annotations on the pod. Keys under agentsandbox.io/ are reserved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('agentsandbox.io/'))").message("spec.podTemplate.annotations: keys under agentsandbox.io/ are reserved for the operator"))]
    pub annotations: Option<BTreeMap<String, String>>,

    /// Node labels the pod must match (in addition to the runtime's own node selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,

    /// Tolerations of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,

    /// Priority class of the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Service account the pod runs as. Its token is still not mounted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,

    /// Secrets used to pull the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secrets: Option<Vec<LocalObjectReference>>,

    /// Group that owns the workspace and `files` (the kubelet's pod `fsGroup`), also added to
    /// the agent's groups. It means the same inside the sandbox as under any runtime (volumes
    /// are idmapped into the sandbox's user namespace). Defaults to 1000 for a NonRoot agent
    /// with a workspace or files, so that it can write the one and read the other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 65535))]
    pub fs_group: Option<i64>,

    /// Further groups of the agent's process (the pod's `supplementalGroups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(g, g >= 0 && g <= 65535)").message("spec.podTemplate.supplementalGroups: each group must be between 0 and 65535 (the ids a sandbox has)"))]
    pub supplemental_groups: Option<Vec<i64>>,
}

/// Files from one Secret or ConfigMap, mounted read-only as a directory.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secret) != has(self.configMap)").message("spec.files: each entry takes exactly one of secret or configMap"))]
pub struct FileMount {
    /// Directory in the container where the files appear, read-only, e.g. /etc/agent/creds.
    /// Absolute and normalized; not under /proc, /sys or /dev, not a top-level system
    /// directory (/etc, /usr, /tmp, ...) and not the workspace.
    #[schemars(length(min = 2, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.endsWith('/') && !self.contains('//') && !self.matches('/\\\\.\\\\.?(/|$)')").message("spec.files[].path must be an absolute, normalized path (no trailing slash, no // and no . or .. segments), e.g. /etc/agent/creds"))]
    #[x_kube(validation = Rule::new("!['/proc', '/sys', '/dev'].exists(p, self == p || self.startsWith(p + '/'))").message("spec.files[].path cannot be under /proc, /sys or /dev"))]
    #[x_kube(validation = Rule::new("!(self in ['/bin', '/boot', '/etc', '/home', '/lib', '/lib32', '/lib64', '/libx32', '/opt', '/root', '/run', '/sbin', '/srv', '/tmp', '/usr', '/var', '/etc/hosts', '/etc/hostname', '/etc/resolv.conf'])").message("spec.files[].path cannot replace a system directory or a file the kubelet manages; use a directory below it, e.g. /etc/agent"))]
    pub path: String,

    /// Files from a Secret in the sandbox's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<FileSource>,

    /// Files from a ConfigMap in the sandbox's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<FileSource>,
}

/// Which object, which keys and which modes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileSource {
    /// Name of the Secret or ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("spec.files[].name must be the name of a Secret or ConfigMap (lowercase DNS subdomain)"))]
    pub name: String,

    /// Keys to mount, each as a file at its own path; all keys (each as a file named after
    /// it) when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub items: Option<Vec<FileItem>>,

    /// Mode of the files, as an integer: 0644 (420) when omitted; 0400 (256) for a key only
    /// its owner may read. With fsGroup, group-readable modes (0440 = 288) let a NonRoot
    /// agent read them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 511))]
    pub default_mode: Option<i32>,

    /// Start the sandbox even if the object (or a listed key) does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// One key of a Secret or ConfigMap, as a file.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FileItem {
    /// The key in the Secret or ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,

    /// The file's path relative to the entry's directory, e.g. id_ed25519 or ssh/config.
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("!self.startsWith('/') && !self.matches('(^|/)\\\\.\\\\.(/|$)')").message("spec.files[].items[].path must be relative and cannot contain '..'"))]
    pub path: String,

    /// Mode of this file (overrides defaultMode), as an integer, e.g. 256 for 0400.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 511))]
    pub mode: Option<i32>,
}

/// How the sandbox is isolated.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Isolation {
    /// Strict (default): read-only root filesystem, writable only the workspace and /tmp.
    /// Standard: writable root filesystem (for agents that install packages); everything
    /// else is as hardened as Strict.
    #[serde(default)]
    pub profile: IsolationProfile,

    /// Agent (default): the agentsandbox runtime's profile, which denies and reports escape
    /// syscalls. RuntimeDefault: the container runtime's default profile (still denied by the
    /// agentsandbox runtime, which always applies its own profile on top).
    #[serde(default)]
    pub seccomp_profile: SeccompProfileChoice,

    /// Who the agent runs as inside the sandbox. Auto (default): root, except in a namespace
    /// labelled `pod-security.kubernetes.io/enforce: restricted`, where it is NonRoot. Root:
    /// uid 0 inside the sandbox; under the agentsandbox runtime that root is an unprivileged
    /// host uid, and with the Standard profile it keeps the runtime's namespaced capabilities
    /// (chown, setuid/setgid, ...) so package managers work. NonRoot: uid and gid 1000 and no
    /// capabilities, which satisfies Pod Security "restricted" (the agent cannot install system
    /// packages or switch users).
    #[serde(default)]
    pub user: AgentUser,
}

/// Who the agent runs as inside the sandbox (`spec.isolation.user`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum AgentUser {
    #[default]
    Auto,
    Root,
    NonRoot,
}

/// The uid and gid a NonRoot agent runs as.
pub const NON_ROOT_UID: i64 = 1000;

/// Network access of the sandbox.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.egress == 'Deny' || !has(self.egressAllow) || size(self.egressAllow) == 0").message("spec.network.egressAllow only applies when spec.network.egress is Deny"))]
pub struct Network {
    /// Deny (default): no outbound traffic except what egressAllow (and allowDNS) permit.
    /// Allow: unrestricted outbound traffic.
    #[serde(default)]
    pub egress: EgressMode,

    /// Destinations the sandbox may reach when egress is Deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub egress_allow: Option<Vec<EgressRule>>,

    /// Resolve any name (off by default: DNS is a classic exfiltration channel). With egress
    /// Deny every query goes through the runtime's resolver, which otherwise answers only
    /// names that `host` rules allow (others get NXDOMAIN and are counted as `network`
    /// events); allowDNS makes it forward every name, still opening addresses only for
    /// `host` rules.
    #[serde(default, rename = "allowDNS")]
    pub allow_dns: bool,

    /// How long an address a `host` rule resolved to stays reachable: the DNS record's TTL,
    /// raised to `minSeconds` (clients that cache answers keep working) and cut to
    /// `maxSeconds`. Connections opened meanwhile outlive it.
    #[serde(default, rename = "hostAddressTTL")]
    pub host_address_ttl: HostAddressTtl,

    /// Ports of the sandbox reachable from inside the cluster, through a headless Service
    /// named after the sandbox. All other inbound traffic is denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["port".into(), "protocol".into()]))]
    pub expose: Option<Vec<ExposedPort>>,
}

/// One allowed destination: a network (`cidr`) or a name (`host`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.cidr) != has(self.host)").message("spec.network.egressAllow[] needs exactly one of cidr (e.g. 10.0.0.0/8) or host (e.g. pypi.org)"))]
pub struct EgressRule {
    /// Destination network in CIDR notation, e.g. 10.20.0.0/16 or 10.20.0.7/32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("isCIDR(self)").message("spec.network.egressAllow[].cidr must be a CIDR such as 10.0.0.0/8"))]
    pub cidr: Option<String>,

    /// Destination name: exact (`pypi.org`) or a wildcard for exactly one more label
    /// (`*.githubusercontent.com` matches `raw.githubusercontent.com`, not
    /// `a.b.githubusercontent.com`). The runtime's resolver answers only allowed names and
    /// opens the addresses it answered, for the record's TTL within `hostAddressTTL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(r"self.matches('^(\\*\\.)?([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\\.)+[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$')").message("spec.network.egressAllow[].host must be a lowercase DNS name with at least two labels, such as pypi.org, or *. followed by one, such as *.githubusercontent.com"))]
    pub host: Option<String>,

    /// Destination ports; all ports of the CIDR (or of the host's addresses) when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    pub ports: Option<Vec<PortRule>>,
}

/// Bounds on how long a resolved address stays open.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minSeconds <= self.maxSeconds").message("spec.network.hostAddressTTL.minSeconds must not exceed maxSeconds"))]
pub struct HostAddressTtl {
    /// Shortest time an answered address stays open, in seconds (default 30).
    #[serde(default = "default_min_ttl")]
    #[schemars(range(min = 1, max = 86400))]
    pub min_seconds: u32,
    /// Longest time an answered address stays open, in seconds (default 3600).
    #[serde(default = "default_max_ttl")]
    #[schemars(range(min = 1, max = 86400))]
    pub max_seconds: u32,
}

impl Default for HostAddressTtl {
    fn default() -> HostAddressTtl {
        HostAddressTtl {
            min_seconds: default_min_ttl(),
            max_seconds: default_max_ttl(),
        }
    }
}

fn default_min_ttl() -> u32 {
    agentsandbox_contract::TtlBounds::DEFAULT_MIN_SECONDS
}

fn default_max_ttl() -> u32 {
    agentsandbox_contract::TtlBounds::DEFAULT_MAX_SECONDS
}

/// A destination port.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PortRule {
    /// Port number.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// TCP (default) or UDP.
    #[serde(default)]
    pub protocol: Protocol,
}

/// A port exposed through the sandbox's Service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExposedPort {
    /// Port name (DNS label), unique in the list.
    #[schemars(
        length(min = 1, max = 15),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Container port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// TCP (default) or UDP.
    #[serde(default)]
    pub protocol: Protocol,
}

/// A persistent workspace volume.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Workspace {
    /// Size of the volume, e.g. 10Gi.
    #[serde(default = "default_workspace_size")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("quantity(self).isGreaterThan(quantity('0'))").message("spec.workspace.size must be a positive quantity such as 10Gi"))]
    pub size: String,

    /// Storage class of the volume; the cluster's default class when omitted. Fixed once the
    /// volume exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("spec.workspace.storageClassName cannot change once set; create a new sandbox"))]
    pub storage_class_name: Option<String>,

    /// Where the workspace is mounted in the container.
    #[serde(default = "default_mount_path")]
    #[schemars(length(max = 4096))]
    #[x_kube(validation = Rule::new("self.startsWith('/') && self != '/'").message("spec.workspace.mountPath must be an absolute path other than /"))]
    pub mount_path: String,

    /// Keep the volume when the sandbox is deleted (default false: deleted with it).
    #[serde(default)]
    pub retain_on_delete: bool,
}

impl Default for Workspace {
    fn default() -> Self {
        Workspace {
            size: default_workspace_size(),
            storage_class_name: None,
            mount_path: default_mount_path(),
            retain_on_delete: false,
        }
    }
}

fn default_workspace_size() -> String {
    "1Gi".to_string()
}

fn default_mount_path() -> String {
    "/workspace".to_string()
}

/// When the sandbox ends by itself.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Lifetime {
    /// Absolute time (RFC 3339) at which the sandbox is shut down: its pod is deleted and it
    /// becomes Finished (or is deleted, per shutdownPolicy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_time: Option<Time>,

    /// At shutdownTime: Retain (default) keeps the AgentSandbox object, Finished; Delete
    /// deletes it (and its workspace unless retained).
    #[serde(default)]
    pub shutdown_policy: ShutdownPolicy,

    /// Seconds after the sandbox finished (its agent exited or it was shut down) after which
    /// the AgentSandbox is deleted. Kept forever when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: Option<i64>,

    /// Suspend the sandbox after it has been idle this long, e.g. 30m or 1h30m. Idle means no
    /// CPU use and no network traffic in either direction over the whole window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32), regex(pattern = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"))]
    #[x_kube(validation = Rule::new("self != '' && duration(self) >= duration('1m')").message("spec.lifetime.idleTimeout must be a duration of at least 1m, e.g. 30m"))]
    pub idle_timeout: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ShutdownPolicy {
    #[default]
    Retain,
    Delete,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OperatingMode {
    #[default]
    Running,
    Suspended,
}

/// What happens when the agent tries to escape.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityPolicy {
    /// Deny (default): deny the syscall and record it. Kill: also stop the sandbox (phase
    /// Failed). Quarantine: also freeze its processes and cut its network, keeping everything
    /// for forensics (phase Quarantined).
    #[serde(default)]
    pub on_escape_attempt: EscapeResponse,
}

/// What the operator and the node agent observed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSandboxStatus {
    /// Pending, Running, Suspended, Finished, Failed or Quarantined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,

    /// Ready, Hardened, Suspended, Finished and EscapeAttempted, following the
    /// metav1.Condition conventions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Option<Vec<Condition>>,

    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Name of the sandbox's pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,

    /// Node the pod runs on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,

    /// The pod's IP address.
    #[serde(default, rename = "podIP", skip_serializing_if = "Option::is_none")]
    pub pod_ip: Option<String>,

    /// DNS name of the sandbox's headless Service, when it exposes ports.
    #[serde(
        default,
        rename = "serviceFQDN",
        skip_serializing_if = "Option::is_none"
    )]
    pub service_fqdn: Option<String>,

    /// When the current pod started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,

    /// Escape attempts the runtime denied (written by the node agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security: Option<SecurityStatus>,

    /// Activity of the sandbox's processes as its node measures it (written by the node
    /// agent), used for lifetime.idleTimeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<ActivityStatus>,

    /// How a sandbox with spec.templateRef started: from a warm pool pod or cold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<ClaimStatus>,
}

/// A reference to an object of the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
pub struct LocalRef {
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$')").message("a reference must name an object (lowercase DNS subdomain)"))]
    pub name: String,
}

/// How a sandbox made from a template started.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimStatus {
    /// The template it was made from.
    pub template: String,
    /// Warm: it took a ready pod of `pool`. Cold: it started a pod of its own (`reason`
    /// says why).
    pub start: ClaimStart,
    /// The pool whose pod it took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Why it started cold: NoPool, PoolEmpty, Suspended, ArgsNeedTemplateCommand,
    /// EnvNotWarmable, HandoffFailed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The same in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The warm pod took the sandbox's env, args and egress (its agent started).
    #[serde(default)]
    pub handed_off: bool,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ClaimStart {
    #[default]
    Cold,
    Warm,
}

/// A reusable sandbox spec: what `spec.templateRef` of an AgentSandbox starts from and what
/// an AgentSandboxPool keeps warm pods of.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "agentsandbox.io",
    version = "v1alpha1",
    kind = "AgentSandboxTemplate",
    plural = "agentsandboxtemplates",
    shortname = "asbt",
    namespaced,
    derive = "PartialEq",
    derive = "Default",
    doc = "A reusable AgentSandbox spec, for spec.templateRef and AgentSandboxPools.",
    printcolumn(name = "Image", type_ = "string", json_path = ".spec.sandbox.image"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AgentSandboxTemplateSpec {
    /// The sandbox (validated as an AgentSandbox's spec; it cannot itself use a template).
    #[x_kube(validation = Rule::new("!has(self.templateRef) && !has(self.poolRef)").message("spec.sandbox of a template cannot use templateRef or poolRef"))]
    pub sandbox: AgentSandboxSpec,
}

/// Ready pods of a template, waiting for AgentSandboxes to claim them.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "agentsandbox.io",
    version = "v1alpha1",
    kind = "AgentSandboxPool",
    plural = "agentsandboxpools",
    shortname = "asbp",
    namespaced,
    status = "AgentSandboxPoolStatus",
    derive = "PartialEq",
    derive = "Default",
    doc = "Warm, hardened, network-denied pods of an AgentSandboxTemplate that AgentSandboxes claim.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Template",
        type_ = "string",
        json_path = ".spec.templateRef.name"
    ),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct AgentSandboxPoolSpec {
    /// The template whose pods the pool keeps.
    pub template_ref: LocalRef,
    /// How many unclaimed pods to keep (claimed ones leave the pool and are replaced).
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// What happens to unclaimed pods when the template changes. Claimed pods are never
    /// touched: they belong to their sandbox.
    #[serde(default)]
    pub update_strategy: PoolUpdateStrategy,
}

/// What happens to unclaimed pods when the template changes.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolUpdateStrategy {
    /// ReplaceIdle (default): unclaimed pods of the old template are deleted and new ones
    /// started at once. OnDelete: they stay until deleted (a claim never takes one, because
    /// its pod would not match the template).
    #[serde(default, rename = "type")]
    pub type_: PoolUpdateType,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PoolUpdateType {
    #[default]
    ReplaceIdle,
    OnDelete,
}

/// What the operator observed of the pool.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentSandboxPoolStatus {
    /// Unclaimed pods of the current template.
    #[serde(default)]
    pub replicas: i32,
    /// Of those, the ready ones (what a claim can take now).
    #[serde(default)]
    pub ready_replicas: i32,
    /// Unclaimed pods of an older template (OnDelete, or being replaced).
    #[serde(default)]
    pub outdated_replicas: i32,
    /// Label selector of the pool's unclaimed pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    /// Hash of the template spec the pool's pods are made from.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template_hash: String,
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready: every desired pod is ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Option<Vec<Condition>>,
}

/// Activity of the sandbox's processes, measured on its node.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ActivityStatus {
    /// Last time the sandbox used CPU or moved network traffic (in either direction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active_time: Option<Time>,
    /// Last time the node agent measured the sandbox; idleness is only judged on fresh
    /// measurements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sample_time: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    Pending,
    Running,
    Suspended,
    Finished,
    Failed,
    Quarantined,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Running => "Running",
            Phase::Suspended => "Suspended",
            Phase::Finished => "Finished",
            Phase::Failed => "Failed",
            Phase::Quarantined => "Quarantined",
        }
    }

    pub const ALL: [Phase; 6] = [
        Phase::Pending,
        Phase::Running,
        Phase::Suspended,
        Phase::Finished,
        Phase::Failed,
        Phase::Quarantined,
    ];
}

/// Escape attempts the runtime denied.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecurityStatus {
    /// Total escape attempts denied since the sandbox was created.
    #[serde(default)]
    pub escape_attempts: i64,
    /// Attempts by category (namespace, mount, ptrace, kernel, bpf, keyring, fs-handle,
    /// userfaultfd, io_uring, network, seccomp, other).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts_by_category: Option<BTreeMap<String, i64>>,
    /// The most recent attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<EscapeAttempt>,
    /// The most recent attempts, newest first (bounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent_attempts: Option<Vec<EscapeAttempt>>,
    /// Attempts whose details were dropped under load (always counted above).
    #[serde(default)]
    pub dropped_events: i64,
    /// The counts of the current pod as its runtime reported them; the totals above add the
    /// counts of the sandbox's earlier pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_pod: Option<PodEscapeCounts>,
    /// The response carried out under spec.security.onEscapeAttempt (Kill or Quarantine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<EscapeResponseRecord>,
}

/// Escape attempts of one pod of the sandbox.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodEscapeCounts {
    /// UID of the pod.
    #[serde(rename = "podUID")]
    pub pod_uid: String,
    /// Attempts its runtime denied.
    #[serde(default)]
    pub escape_attempts: i64,
    /// The same by category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts_by_category: Option<BTreeMap<String, i64>>,
    /// Details its runtime dropped.
    #[serde(default)]
    pub dropped_events: i64,
}

/// A response the runtime carried out.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EscapeResponseRecord {
    /// Killed or Quarantined.
    pub action: ResponseTaken,
    /// The pod it was carried out on.
    #[serde(rename = "podUID")]
    pub pod_uid: String,
    /// When the node agent learnt of it.
    pub time: Time,
}

/// One denied escape attempt.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EscapeAttempt {
    /// When it happened.
    pub time: Time,
    /// Container that made it.
    pub container: String,
    /// Process ID inside the sandbox (0 when the process was gone before it was named).
    #[serde(default)]
    pub pid: i64,
    /// System call, e.g. unshare.
    pub syscall: String,
    /// Category, e.g. namespace.
    pub category: String,
    /// A safe summary of the arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// What was done: Denied, Killed or Quarantined.
    pub action: ResponseTaken,
}

impl AgentSandbox {
    /// The condition of `type_`, if present.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.status
            .as_ref()?
            .conditions
            .as_ref()?
            .iter()
            .find(|c| c.type_ == type_)
    }
}
