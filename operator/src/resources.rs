//! Pure functions from an `AgentSandbox` to the objects it owns: Pod, Service, NetworkPolicy
//! and workspace PersistentVolumeClaim. The reconciler only diffs and applies what these
//! return, so every rule about what a sandbox looks like is tested here without a cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource, KeyToPath,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PersistentVolumeClaimVolumeSource, Pod,
    PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use agentsandbox_contract::{
    EgressPolicy, EgressPort, EgressRule, PodIdentity, PodPolicy, TtlBounds,
};

use crate::api::{
    AgentSandbox, AgentUser, EgressMode, FileSource, ImagePullPolicy, IsolationProfile, Protocol,
    LABEL_PREFIX, NON_ROOT_UID,
};

/// Label carrying the sandbox's name on every object it owns; the Service and the
/// NetworkPolicy select pods by it. Users cannot set it (CEL on podTemplate.labels).
pub use agentsandbox_contract::annotations::LABEL_NAME;
/// Label carrying the sandbox's UID on its pod: the owner UID is authoritative.
pub use agentsandbox_contract::annotations::LABEL_UID;
/// Hash of everything in the desired pod; a different hash means the pod must be replaced.
pub use agentsandbox_contract::annotations::POD_SPEC_HASH as ANNOTATION_POD_HASH;
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "agentsandbox-operator";

pub const CONTAINER_NAME: &str = agentsandbox_contract::handoff::AGENT_CONTAINER;
const TMP_VOLUME: &str = "tmp";
const WORKSPACE_VOLUME: &str = "workspace";

/// Settings of the operator process that shape every sandbox.
#[derive(Clone, Debug)]
pub struct OperatorSettings {
    /// RuntimeClass of sandbox pods; `None` runs them on the cluster's default runtime with
    /// pod-level hardening only (and says so in the Hardened condition).
    pub runtime_class_name: Option<String>,
    pub cluster_domain: String,
    /// Where cluster DNS runs, for `network.allowDNS`.
    pub dns_namespace: String,
    pub dns_pod_labels: BTreeMap<String, String>,
    /// Size limit of the writable /tmp.
    pub tmp_size: String,
    /// Where the node agents run and how their pods are labelled (warm pool handoffs go to
    /// the agent on the pod's node).
    pub node_agent_namespace: String,
    pub node_agent_selector: String,
}

impl Default for OperatorSettings {
    fn default() -> Self {
        OperatorSettings {
            runtime_class_name: Some("agentsandbox".to_string()),
            cluster_domain: "cluster.local".to_string(),
            dns_namespace: "kube-system".to_string(),
            dns_pod_labels: BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]),
            tmp_size: "1Gi".to_string(),
            node_agent_namespace: "agentsandbox-system".to_string(),
            node_agent_selector: "app.kubernetes.io/component=node".to_string(),
        }
    }
}

/// The Pod Security level a namespace enforces (its `pod-security.kubernetes.io/enforce`
/// label), as far as the sandbox's pod is concerned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NamespaceSecurity {
    /// Not labelled, `privileged` or `baseline`: root inside the sandbox is admitted.
    #[default]
    RootAdmitted,
    /// `restricted`: pods must run as non-root with no capabilities but NET_BIND_SERVICE.
    Restricted,
}

pub const POD_SECURITY_ENFORCE_LABEL: &str = "pod-security.kubernetes.io/enforce";

impl NamespaceSecurity {
    pub fn from_labels(labels: &BTreeMap<String, String>) -> NamespaceSecurity {
        match labels.get(POD_SECURITY_ENFORCE_LABEL).map(String::as_str) {
            Some("restricted") => NamespaceSecurity::Restricted,
            _ => NamespaceSecurity::RootAdmitted,
        }
    }
}

/// Who the agent runs as: `spec.isolation.user` with Auto resolved against the namespace.
pub fn run_as_root(sandbox: &AgentSandbox, namespace: NamespaceSecurity) -> bool {
    match sandbox.spec.isolation.user {
        AgentUser::Root => true,
        AgentUser::NonRoot => false,
        AgentUser::Auto => namespace == NamespaceSecurity::RootAdmitted,
    }
}

/// The capabilities root inside the sandbox keeps: the agentsandbox runtime's reviewed set,
/// each acting only inside the sandbox's user namespace, given to Standard sandboxes whose
/// agent runs as root under that runtime. Strict sandboxes, non-root agents and sandboxes
/// without the runtime (where root would be host root) get none.
pub fn sandbox_capabilities(
    sandbox: &AgentSandbox,
    settings: &OperatorSettings,
    root: bool,
) -> Vec<String> {
    if !root
        || settings.runtime_class_name.is_none()
        || sandbox.spec.isolation.profile != IsolationProfile::Standard
    {
        return Vec::new();
    }
    agentsandbox_contract::NAMESPACED_CAPABILITIES
        .iter()
        .map(|c| c.to_string())
        .collect()
}

/// The sandbox's pod: named after it, or the warm pool pod it took.
pub fn pod_name(sandbox: &AgentSandbox) -> String {
    sandbox
        .annotations()
        .get(crate::template::ANNOTATION_WARM_POD)
        .cloned()
        .unwrap_or_else(|| sandbox.name_any())
}

pub fn service_name(sandbox: &AgentSandbox) -> String {
    sandbox.name_any()
}

pub fn network_policy_name(sandbox: &AgentSandbox) -> String {
    sandbox.name_any()
}

pub fn workspace_claim_name(sandbox: &AgentSandbox) -> String {
    format!("{}-workspace", sandbox.name_any())
}

pub fn service_fqdn(sandbox: &AgentSandbox, settings: &OperatorSettings) -> String {
    format!(
        "{}.{}.svc.{}",
        service_name(sandbox),
        sandbox.namespace().unwrap_or_default(),
        settings.cluster_domain
    )
}

/// Labels every owned object carries; they override anything a user supplies.
pub fn owned_labels(sandbox: &AgentSandbox) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_string(), sandbox.name_any()),
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
    ])
}

/// The selector of the sandbox's pod.
pub fn pod_selector(sandbox: &AgentSandbox) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_NAME.to_string(), sandbox.name_any())])
}

fn owner_reference(sandbox: &AgentSandbox) -> OwnerReference {
    sandbox
        .controller_owner_ref(&())
        .expect("a sandbox read from the API server has a name and UID")
}

fn metadata(sandbox: &AgentSandbox, name: String, owned: bool) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: sandbox.namespace(),
        labels: Some(owned_labels(sandbox)),
        owner_references: owned.then(|| vec![owner_reference(sandbox)]),
        ..ObjectMeta::default()
    }
}

/// The egress policy handed to the runtime (the shim enforces it in the pod's network
/// namespace, which holds on CNIs that ignore NetworkPolicy).
pub fn runtime_egress_policy(sandbox: &AgentSandbox) -> EgressPolicy {
    let network = &sandbox.spec.network;
    let allow = match network.egress {
        EgressMode::Allow => Vec::new(),
        EgressMode::Deny => network
            .egress_allow
            .iter()
            .flatten()
            .map(|rule| EgressRule {
                cidr: rule.cidr.clone().unwrap_or_default(),
                host: rule.host.clone().unwrap_or_default(),
                ports: rule
                    .ports
                    .iter()
                    .flatten()
                    .filter_map(|p| egress_port(p.port, p.protocol))
                    .collect(),
            })
            .collect(),
    };
    EgressPolicy {
        mode: network.egress,
        allow,
        dns: network.allow_dns,
        ingress: network
            .expose
            .iter()
            .flatten()
            .filter_map(|p| egress_port(p.port, p.protocol))
            .collect(),
        host_ttl: TtlBounds {
            min_seconds: network.host_address_ttl.min_seconds,
            max_seconds: network.host_address_ttl.max_seconds,
        },
    }
}

fn egress_port(port: i32, protocol: Protocol) -> Option<EgressPort> {
    Some(EgressPort {
        // The schema bounds it to 1..=65535.
        port: u16::try_from(port).ok()?,
        protocol,
    })
}

/// Everything the runtime is told about the sandbox's pod.
pub fn runtime_pod_policy(sandbox: &AgentSandbox) -> PodPolicy {
    PodPolicy {
        identity: PodIdentity {
            sandbox_name: sandbox.name_any(),
            sandbox_namespace: sandbox.namespace().unwrap_or_default(),
            sandbox_uid: sandbox.uid().unwrap_or_default(),
        },
        isolation: sandbox.spec.isolation.profile,
        seccomp: sandbox.spec.isolation.seccomp_profile,
        on_escape: sandbox.spec.security.on_escape_attempt,
        egress: runtime_egress_policy(sandbox),
        warm: false,
    }
}

/// Default resources when a sandbox sets none: nothing runs unbounded.
pub fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("250m".to_string())),
            ("memory".to_string(), Quantity("256Mi".to_string())),
        ])),
        limits: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity("1".to_string())),
            ("memory".to_string(), Quantity("1Gi".to_string())),
        ])),
        ..ResourceRequirements::default()
    }
}

/// The sandbox's pod. Hardening set here is the pod-level floor; the agentsandbox runtime
/// enforces its own on top whatever this says.
pub fn desired_pod(
    sandbox: &AgentSandbox,
    settings: &OperatorSettings,
    namespace: NamespaceSecurity,
) -> Pod {
    let spec = &sandbox.spec;
    let root = run_as_root(sandbox, namespace);
    let capabilities = sandbox_capabilities(sandbox, settings, root);
    let template = spec.pod_template.clone().unwrap_or_default();

    let mut labels = template.labels.unwrap_or_default();
    labels.extend(owned_labels(sandbox));
    if let Some(uid) = sandbox.uid() {
        labels.insert(LABEL_UID.to_string(), uid);
    }

    let mut annotations = template.annotations.unwrap_or_default();
    annotations.retain(|k, _| !k.starts_with(LABEL_PREFIX));
    annotations.extend(runtime_pod_policy(sandbox).to_annotations());

    let mut volumes = vec![Volume {
        name: TMP_VOLUME.to_string(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(settings.tmp_size.clone())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }];
    let mut mounts = vec![VolumeMount {
        name: TMP_VOLUME.to_string(),
        mount_path: "/tmp".to_string(),
        ..VolumeMount::default()
    }];
    if let Some(workspace) = &spec.workspace {
        volumes.push(Volume {
            name: WORKSPACE_VOLUME.to_string(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: workspace_claim_name(sandbox),
                read_only: None,
            }),
            ..Volume::default()
        });
        mounts.push(VolumeMount {
            name: WORKSPACE_VOLUME.to_string(),
            mount_path: workspace.mount_path.clone(),
            ..VolumeMount::default()
        });
    }

    for (index, files) in spec.files.iter().flatten().enumerate() {
        let name = format!("files-{index}");
        let items = |source: &FileSource| {
            source.items.as_ref().map(|items| {
                items
                    .iter()
                    .map(|item| KeyToPath {
                        key: item.key.clone(),
                        path: item.path.clone(),
                        mode: item.mode,
                        ..KeyToPath::default()
                    })
                    .collect()
            })
        };
        let mut volume = Volume {
            name: name.clone(),
            ..Volume::default()
        };
        if let Some(secret) = &files.secret {
            volume.secret = Some(SecretVolumeSource {
                secret_name: Some(secret.name.clone()),
                items: items(secret),
                default_mode: secret.default_mode,
                optional: secret.optional,
                ..SecretVolumeSource::default()
            });
        } else if let Some(config_map) = &files.config_map {
            volume.config_map = Some(ConfigMapVolumeSource {
                name: config_map.name.clone(),
                items: items(config_map),
                default_mode: config_map.default_mode,
                optional: config_map.optional,
                ..ConfigMapVolumeSource::default()
            });
        }
        volumes.push(volume);
        // The whole directory, never a subPath: the kubelet swaps the directory's contents
        // atomically when the object changes, which a subPath mount would never see.
        mounts.push(VolumeMount {
            name,
            mount_path: files.path.clone(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
    }
    let has_volumes =
        spec.workspace.is_some() || spec.files.as_ref().is_some_and(|f| !f.is_empty());
    // A NonRoot agent (uid 1000) writes a workspace whose root directory is root's (most
    // storage classes) and reads group-readable files through its fsGroup.
    let fs_group = template
        .fs_group
        .or_else(|| (!root && has_volumes).then_some(NON_ROOT_UID));

    let ports: Vec<ContainerPort> = spec
        .network
        .expose
        .iter()
        .flatten()
        .map(|p| ContainerPort {
            name: Some(p.name.clone()),
            container_port: p.port,
            protocol: Some(p.protocol.as_str().to_string()),
            ..ContainerPort::default()
        })
        .collect();

    let runtime_default = || SeccompProfile {
        type_: "RuntimeDefault".to_string(),
        localhost_profile: None,
    };

    let container = Container {
        name: CONTAINER_NAME.to_string(),
        image: Some(spec.image.clone()),
        image_pull_policy: Some(
            spec.image_pull_policy
                .unwrap_or(ImagePullPolicy::IfNotPresent)
                .as_str()
                .to_string(),
        ),
        command: spec.command.clone(),
        args: spec.args.clone(),
        env: spec.env.clone(),
        working_dir: spec
            .working_dir
            .clone()
            .or_else(|| spec.workspace.as_ref().map(|w| w.mount_path.clone())),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        ports: (!ports.is_empty()).then_some(ports),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            read_only_root_filesystem: Some(spec.isolation.profile == IsolationProfile::Strict),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_string()]),
                add: (!capabilities.is_empty()).then_some(capabilities),
            }),
            seccomp_profile: Some(runtime_default()),
            run_as_non_root: (!root).then_some(true),
            run_as_user: (!root).then_some(NON_ROOT_UID),
            run_as_group: (!root).then_some(NON_ROOT_UID),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    };

    let mut pod = Pod {
        metadata: ObjectMeta {
            name: Some(pod_name(sandbox)),
            namespace: sandbox.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            owner_references: Some(vec![owner_reference(sandbox)]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            runtime_class_name: settings.runtime_class_name.clone(),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            host_network: Some(false),
            host_pid: Some(false),
            host_ipc: Some(false),
            share_process_namespace: Some(false),
            restart_policy: Some("Never".to_string()),
            termination_grace_period_seconds: Some(10),
            hostname: Some(sandbox.name_any()).filter(|n| n.len() <= 63 && !n.contains('.')),
            service_account_name: template.service_account_name,
            node_selector: template.node_selector,
            tolerations: template.tolerations,
            priority_class_name: template.priority_class_name,
            image_pull_secrets: template.image_pull_secrets,
            security_context: Some(PodSecurityContext {
                seccomp_profile: Some(runtime_default()),
                fs_group,
                // Only when the volume's root does not already have the group: a large
                // workspace is not walked again on every start.
                fs_group_change_policy: fs_group.map(|_| "OnRootMismatch".to_string()),
                supplemental_groups: template.supplemental_groups.clone(),
                ..PodSecurityContext::default()
            }),
            containers: vec![container],
            volumes: Some(volumes),
            ..PodSpec::default()
        }),
        status: None,
    };
    let hash = pod_hash(&pod);
    pod.metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(ANNOTATION_POD_HASH.to_string(), hash);
    pod
}

/// A stable hash (FNV-1a, 64 bit) of the pod's desired metadata and spec. Stable across
/// operator builds, so upgrading the operator does not replace pods whose spec is unchanged.
pub fn pod_hash(pod: &Pod) -> String {
    let mut hashed = pod.clone();
    if let Some(annotations) = hashed.metadata.annotations.as_mut() {
        annotations.remove(ANNOTATION_POD_HASH);
    }
    let bytes = serde_json::to_vec(&(
        &hashed.metadata.labels,
        &hashed.metadata.annotations,
        &hashed.spec,
    ))
    .expect("a pod serialises");
    format!("{:016x}", fnv1a(&bytes))
}

/// FNV-1a, 64 bit: stable across builds and platforms (the operator's hashes are written
/// into objects and compared by later versions).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The headless Service, when the sandbox exposes ports.
pub fn desired_service(sandbox: &AgentSandbox) -> Option<Service> {
    let exposed = sandbox
        .spec
        .network
        .expose
        .as_ref()
        .filter(|e| !e.is_empty())?;
    Some(Service {
        metadata: metadata(sandbox, service_name(sandbox), true),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_string()),
            selector: Some(pod_selector(sandbox)),
            ports: Some(
                exposed
                    .iter()
                    .map(|p| ServicePort {
                        name: Some(p.name.clone()),
                        port: p.port,
                        target_port: Some(IntOrString::Int(p.port)),
                        protocol: Some(p.protocol.as_str().to_string()),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

fn policy_port(port: i32, protocol: Protocol) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some(protocol.as_str().to_string()),
        end_port: None,
    }
}

/// The NetworkPolicy: inbound only to exposed ports, outbound denied except the allow-list
/// (and cluster DNS when names are resolved), or unrestricted when egress is Allow.
pub fn desired_network_policy(
    sandbox: &AgentSandbox,
    settings: &OperatorSettings,
) -> NetworkPolicy {
    let network = &sandbox.spec.network;
    let ingress: Vec<NetworkPolicyIngressRule> = network
        .expose
        .as_ref()
        .filter(|e| !e.is_empty())
        .map(|exposed| NetworkPolicyIngressRule {
            from: None,
            ports: Some(
                exposed
                    .iter()
                    .map(|p| policy_port(p.port, p.protocol))
                    .collect(),
            ),
        })
        .into_iter()
        .collect();

    let egress: Vec<NetworkPolicyEgressRule> = match network.egress {
        EgressMode::Allow => vec![NetworkPolicyEgressRule::default()],
        EgressMode::Deny => {
            let mut rules: Vec<NetworkPolicyEgressRule> = network
                .egress_allow
                .iter()
                .flatten()
                .map(|rule| NetworkPolicyEgressRule {
                    // A NetworkPolicy cannot name hosts: a host rule's ports are open to any
                    // address here, and the runtime narrows them to the answered addresses.
                    to: Some(match &rule.cidr {
                        Some(cidr) => vec![ip_block(cidr)],
                        None => vec![ip_block("0.0.0.0/0"), ip_block("::/0")],
                    }),
                    ports: rule.ports.as_ref().filter(|p| !p.is_empty()).map(|ports| {
                        ports
                            .iter()
                            .map(|p| policy_port(p.port, p.protocol))
                            .collect()
                    }),
                })
                .collect();
            let names = network.allow_dns
                || network
                    .egress_allow
                    .iter()
                    .flatten()
                    .any(|r| r.host.is_some());
            if names {
                rules.push(NetworkPolicyEgressRule {
                    to: Some(vec![NetworkPolicyPeer {
                        namespace_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(
                                "kubernetes.io/metadata.name".to_string(),
                                settings.dns_namespace.clone(),
                            )])),
                            match_expressions: None,
                        }),
                        pod_selector: Some(LabelSelector {
                            match_labels: Some(settings.dns_pod_labels.clone()),
                            match_expressions: None,
                        }),
                        ip_block: None,
                    }]),
                    ports: Some(vec![
                        policy_port(53, Protocol::Udp),
                        policy_port(53, Protocol::Tcp),
                    ]),
                });
            }
            rules
        }
    };

    NetworkPolicy {
        metadata: metadata(sandbox, network_policy_name(sandbox), true),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(pod_selector(sandbox)),
                match_expressions: None,
            }),
            policy_types: Some(vec!["Ingress".to_string(), "Egress".to_string()]),
            // An empty rule list is sent as absent: the API server drops `[]`, and applying
            // `[]` against a stored "absent" counts as a change on every apply (a new
            // generation, a watch event, another reconcile: a hot loop). Absent rules with
            // both policy types listed deny everything, which is what empty means here.
            ingress: (!ingress.is_empty()).then_some(ingress),
            egress: (!egress.is_empty()).then_some(egress),
        }),
    }
}

fn ip_block(cidr: &str) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.to_string(),
            except: None,
        }),
        ..NetworkPolicyPeer::default()
    }
}

/// The workspace claim, when the sandbox asks for one. Owned by the sandbox (deleted with it)
/// unless `retainOnDelete`.
pub fn desired_workspace_claim(sandbox: &AgentSandbox) -> Option<PersistentVolumeClaim> {
    let workspace = sandbox.spec.workspace.as_ref()?;
    Some(PersistentVolumeClaim {
        metadata: metadata(
            sandbox,
            workspace_claim_name(sandbox),
            !workspace.retain_on_delete,
        ),
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".to_string()]),
            storage_class_name: workspace.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(workspace.size.clone()),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    })
}
