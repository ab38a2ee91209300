//! The hardening policy, as data: what the runtime refuses and what it enforces on every
//! container's OCI spec, whatever the pod asked for. Pure functions over the spec containerd
//! hands the shim (`config.json`), edited as JSON so that fields this code does not know are
//! kept as they are. Nothing else in the shim decides security.

pub mod seccomp;

use agentsandbox_contract::{IsolationProfile, PodPolicy};
use serde_json::{json, Value};

/// Whether a sandbox may keep `capability` (OCI spelling, `CAP_CHOWN`): the contract's
/// reviewed set of capabilities that act only inside the sandbox's user namespace. Anything
/// else requested is dropped.
pub fn capability_allowed(capability: &str) -> bool {
    capability
        .strip_prefix("CAP_")
        .is_some_and(|name| agentsandbox_contract::NAMESPACED_CAPABILITIES.contains(&name))
}

/// Paths under /proc and /sys that reveal the host or reach the kernel: hidden.
pub const MASKED_PATHS: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
    "/sys/fs/cgroup/release_agent",
    "/sys/kernel/debug",
    "/sys/kernel/security",
];

/// Paths that stay visible but read-only (writing /proc/sysrq-trigger would reach the host).
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/sys",
];

/// Namespaces every container must have of its own (or its pod's): a missing entry means the
/// host's is shared (hostNetwork, hostPID, hostIPC).
pub const REQUIRED_NAMESPACES: &[&str] = &["pid", "network", "ipc", "uts", "mount"];

/// Host paths that may never be bind-mounted into a sandbox, exactly or anything below them.
pub const FORBIDDEN_HOST_PATHS: &[&str] = &[
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/root",
    "/etc",
    "/usr",
    "/lib",
    "/lib64",
    "/bin",
    "/sbin",
    "/var/lib/kubelet/pki",
    "/var/lib/docker",
    "/etc/kubernetes",
    "/var/run/docker.sock",
    "/run/docker.sock",
];

/// containerd's root and state directories: refused, except the per-sandbox and
/// per-container files CRI itself bind-mounts from below them (/dev/shm, hostname,
/// resolv.conf).
pub const CONTAINERD_DIRS: &[&str] = &[
    "/var/lib/containerd",
    "/run/containerd",
    "/var/run/containerd",
];
const CRI_OWN_FILES: &[&str] = &[
    "io.containerd.grpc.v1.cri/sandboxes/",
    "io.containerd.grpc.v1.cri/containers/",
];

/// Host paths that may not be mounted themselves (their subdirectories may: the kubelet
/// mounts volumes from below /var/lib/kubelet/pods, containerd from below /run/containerd/...
/// is refused above).
pub const FORBIDDEN_EXACT_HOST_PATHS: &[&str] = &[
    "/",
    "/var",
    "/var/lib",
    "/var/lib/kubelet",
    "/run",
    "/var/run",
    "/home",
];

/// Default limit on the number of processes in a sandbox (fork bombs).
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;

/// Why a container cannot be run safely. The message reaches `kubectl describe pod`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("agentsandbox refuses privileged containers: remove securityContext.privileged (the sandbox runtime cannot make a privileged container safe)")]
    Privileged,
    #[error("agentsandbox refuses containers sharing the host's {0} namespace: remove hostNetwork/hostPID/hostIPC from the pod")]
    HostNamespace(String),
    #[error("agentsandbox refuses to mount host path {host_path} at {destination}: it exposes the node; use a PersistentVolumeClaim or emptyDir instead")]
    SensitiveHostPath {
        host_path: String,
        destination: String,
    },
    #[error("agentsandbox refuses host device {0}: sandboxes get no host devices")]
    HostDevice(String),
    #[error("agentsandbox refuses pods with hostUsers: false: the runtime gives every pod a user namespace of its own (its root is already an unprivileged host uid, from a range that cannot collide with another pod's); remove hostUsers from the pod spec")]
    KubernetesUserNamespace,
    #[error("agentsandbox refuses working directory {0}: a directory under /proc/self/fd can reach the host (CVE-2024-21626)")]
    WorkingDirectoryInProcFd(String),
    #[error("the OCI spec has no {0} section")]
    MissingSection(&'static str),
}

/// Settings of one sandbox, from the pod annotations the operator wrote (passed to the shim by
/// containerd's `pod_annotations`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxSettings {
    /// Strict: read-only root filesystem. Standard: writable root.
    pub read_only_root: bool,
    pub pids_limit: i64,
    /// The pod's user namespace, pinned by the shim (container uid 0 = an unprivileged host
    /// uid, see `idmap`). Every container of the pod joins it.
    pub user_namespace: Option<String>,
    /// The shim's seccomp notification socket, if it listens.
    pub notify_socket: Option<String>,
    /// Names the container in notifications (`listenerMetadata`): the pod spec's container
    /// name, which is what users know (the id is containerd's).
    pub notify_metadata: String,
}

impl SandboxSettings {
    /// The settings of one container of a pod with `policy` (the pod's annotations, parsed
    /// once by the shim); `container_name` is the pod spec's name of the container.
    pub fn for_container(policy: &PodPolicy, container_name: &str) -> SandboxSettings {
        SandboxSettings {
            read_only_root: policy.isolation == IsolationProfile::Strict,
            pids_limit: DEFAULT_PIDS_LIMIT,
            user_namespace: None,
            notify_socket: None,
            notify_metadata: container_name.to_string(),
        }
    }
}

/// Resources of a task API Update as the policy allows them: the pids limit never rises
/// above the policy's.
pub fn clamp_resources(resources: &mut Value) {
    let requested = resources["pids"]["limit"].as_i64().filter(|l| *l > 0);
    resources["pids"]["limit"] =
        Value::from(requested.map_or(DEFAULT_PIDS_LIMIT, |r| r.min(DEFAULT_PIDS_LIMIT)));
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn is_bind(mount: &Value) -> bool {
    mount["type"].as_str() == Some("bind")
        || strings(&mount["options"])
            .iter()
            .any(|o| o == "bind" || o == "rbind")
}

fn forbidden_host_path(source: &str) -> bool {
    let source = source.trim_end_matches('/');
    let source = if source.is_empty() { "/" } else { source };
    let within = |dir: &str| source == dir || source.starts_with(&format!("{dir}/"));
    let containerd_internal = CONTAINERD_DIRS.iter().any(|dir| {
        within(dir)
            && !CRI_OWN_FILES
                .iter()
                .any(|own| source.starts_with(&format!("{dir}/{own}")))
    });
    FORBIDDEN_EXACT_HOST_PATHS.contains(&source)
        || containerd_internal
        || FORBIDDEN_HOST_PATHS.iter().any(|p| within(p))
}

/// Refusals first (nothing is changed when one applies), then enforcement.
pub fn apply_hardening(spec: &mut Value, settings: &SandboxSettings) -> Result<(), PolicyError> {
    check_refusals(spec)?;
    enforce(spec, settings);
    Ok(())
}

/// What cannot be made safe.
pub fn check_refusals(spec: &Value) -> Result<(), PolicyError> {
    let linux = spec
        .get("linux")
        .ok_or(PolicyError::MissingSection("linux"))?;
    let process = spec
        .get("process")
        .ok_or(PolicyError::MissingSection("process"))?;

    // Kubernetes' privileged mode shows as: no masked paths, no read-only paths, and the full
    // capability set including CAP_SYS_ADMIN.
    let bounding = strings(&process["capabilities"]["bounding"]);
    if bounding.iter().any(|c| c == "CAP_SYS_ADMIN")
        && strings(&linux["maskedPaths"]).is_empty()
        && strings(&linux["readonlyPaths"]).is_empty()
    {
        return Err(PolicyError::Privileged);
    }

    let present: Vec<String> = linux["namespaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n["type"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for required in REQUIRED_NAMESPACES {
        if !present.iter().any(|p| p == required) {
            return Err(PolicyError::HostNamespace((*required).to_string()));
        }
    }
    // The kubelet's user namespaces (hostUsers: false) take host ids from the kubelet's own
    // range, which by default is every id above 65535: refused rather than half-honoured.
    if present.iter().any(|p| p == "user") {
        return Err(PolicyError::KubernetesUserNamespace);
    }

    for mount in spec["mounts"].as_array().into_iter().flatten() {
        if !is_bind(mount) {
            continue;
        }
        let source = mount["source"].as_str().unwrap_or_default();
        // What `enforce` makes of sysfs in a user namespace (read-only /sys at /sys).
        let read_only_sys = source == "/sys"
            && mount["destination"] == "/sys"
            && strings(&mount["options"]).iter().any(|o| o == "ro");
        if forbidden_host_path(source) && !read_only_sys {
            return Err(PolicyError::SensitiveHostPath {
                host_path: source.to_string(),
                destination: mount["destination"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            });
        }
    }

    if let Some(device) = linux["devices"].as_array().and_then(|d| d.first()) {
        return Err(PolicyError::HostDevice(
            device["path"].as_str().unwrap_or("?").to_string(),
        ));
    }

    let cwd = process["cwd"].as_str().unwrap_or("/");
    if cwd.starts_with("/proc/self/fd") || cwd.starts_with("/proc/thread-self/fd") {
        return Err(PolicyError::WorkingDirectoryInProcFd(cwd.to_string()));
    }
    Ok(())
}

fn union(existing: &Value, ours: &[&str]) -> Value {
    let mut all = strings(existing);
    for path in ours {
        if !all.iter().any(|p| p == path) {
            all.push((*path).to_string());
        }
    }
    json!(all)
}

/// What is enforced whatever the pod asked for.
fn enforce(spec: &mut Value, settings: &SandboxSettings) {
    // OCI hooks run as host root in the runtime's namespaces: a sandbox gets none. (CRI sets
    // none itself; NRI plugins or a hand-made spec could.)
    if let Some(spec) = spec.as_object_mut() {
        spec.remove("hooks");
    }
    let process = &mut spec["process"];
    process["noNewPrivileges"] = json!(true);
    let kept: Vec<String> = strings(&process["capabilities"]["bounding"])
        .into_iter()
        .filter(|c| capability_allowed(c))
        .collect();
    process["capabilities"] = json!({
        "bounding": kept,
        "effective": kept,
        "permitted": kept,
        "inheritable": [],
        "ambient": [],
    });

    if settings.read_only_root {
        spec["root"]["readonly"] = json!(true);
    }

    let linux = &mut spec["linux"];
    linux["maskedPaths"] = union(&linux["maskedPaths"], MASKED_PATHS);
    linux["readonlyPaths"] = union(&linux["readonlyPaths"], READONLY_PATHS);
    linux["devices"] = json!([]);

    let requested = linux["resources"]["pids"]["limit"]
        .as_i64()
        .filter(|l| *l > 0);
    linux["resources"]["pids"]["limit"] =
        json!(requested.map_or(settings.pids_limit, |r| r.min(settings.pids_limit)));

    linux["seccomp"] =
        seccomp::agent_profile(settings.notify_socket.as_deref(), &settings.notify_metadata);

    // Lowering the OOM score would need CAP_SYS_RESOURCE on the host: a sandbox is never
    // protected from the OOM killer at the expense of the node.
    if let Some(adj) = spec["process"]["oomScoreAdj"].as_i64() {
        spec["process"]["oomScoreAdj"] = json!(adj.max(0));
    }

    if let Some(user_namespace) = &settings.user_namespace {
        let linux = &mut spec["linux"];
        let namespaces = linux["namespaces"]
            .as_array_mut()
            .expect("checked in check_refusals");
        // A spec's own user namespace was refused in check_refusals.
        namespaces.push(json!({"type": "user", "path": user_namespace}));
        if let Some(obj) = linux.as_object_mut() {
            obj.remove("uidMappings");
            obj.remove("gidMappings");
        }
        linux["maskedPaths"] = union(&linux["maskedPaths"], &["/sys/fs/cgroup"]);
        rewrite_mounts_for_user_namespace(spec);
    }
}

/// sysfs and cgroupfs can only be mounted by the owner of the network namespace, which for a
/// pod is the host: /sys becomes a read-only bind of the host's (host-owned files stay
/// unwritable to the sandbox, whose root is not host root) and the cgroup tree is masked.
fn rewrite_mounts_for_user_namespace(spec: &mut Value) {
    let Some(mounts) = spec["mounts"].as_array_mut() else {
        return;
    };
    mounts.retain(|m| m["type"] != "cgroup" && m["type"] != "cgroup2");
    for mount in mounts.iter_mut() {
        if mount["type"] == "sysfs" {
            *mount = json!({
                "destination": mount["destination"],
                "type": "bind",
                "source": "/sys",
                "options": ["rbind", "nosuid", "noexec", "nodev", "ro"],
            });
        }
    }
}

/// Namespaces a container must enter while its creator is still host root: the pod's
/// network, IPC and UTS namespaces belong to the host's user namespace (or to the pod's, for
/// IPC and UTS), and cannot be joined from inside a new user namespace. The entries are taken
/// out of the spec (the container inherits them from its creator) and returned.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NamespaceJoins {
    pub network: Option<String>,
    pub ipc: Option<String>,
    pub uts: Option<String>,
    /// The spec's sysctls of the joined namespaces (key -> value), written by the launcher
    /// once it is in them: libcontainer sees no network/IPC/UTS namespace of the container's
    /// own and would refuse them as the host's. containerd 2.x's CRI asks for
    /// `net.ipv4.ip_unprivileged_port_start` and `net.ipv4.ping_group_range` on every pod.
    #[serde(default)]
    pub sysctls: std::collections::BTreeMap<String, String>,
}

/// Whether `key` is a sysctl of the namespace the launcher joined for the container (only
/// those move to the launcher; anything else stays for libcontainer to judge). Keys are
/// plain dotted names: a path separator or `..` never reaches /proc/sys.
fn joined_namespace_sysctl(key: &str, joins: &NamespaceJoins) -> bool {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !key.split('.').any(|part| part.is_empty());
    let network = key.starts_with("net.") && joins.network.is_some();
    let ipc = (key.starts_with("kernel.shm")
        || key.starts_with("kernel.msg")
        || key == "kernel.sem"
        || key.starts_with("fs.mqueue."))
        && joins.ipc.is_some();
    let uts = matches!(key, "kernel.hostname" | "kernel.domainname") && joins.uts.is_some();
    plain && (network || ipc || uts)
}

/// The /proc/sys file of a sysctl key taken by [`take_namespace_joins`].
pub fn sysctl_path(key: &str) -> std::path::PathBuf {
    std::path::Path::new("/proc/sys").join(key.replace('.', "/"))
}

pub fn take_namespace_joins(spec: &mut Value) -> NamespaceJoins {
    let mut joins = NamespaceJoins::default();
    let uses_user_namespace = spec["linux"]["namespaces"]
        .as_array()
        .is_some_and(|a| a.iter().any(|n| n["type"] == "user"));
    if !uses_user_namespace {
        return joins;
    }
    if let Some(namespaces) = spec["linux"]["namespaces"].as_array_mut() {
        namespaces.retain(|n| {
            let path = n["path"]
                .as_str()
                .filter(|p| !p.is_empty())
                .map(String::from);
            let slot = match (n["type"].as_str(), &path) {
                (Some("network"), Some(_)) => &mut joins.network,
                (Some("ipc"), Some(_)) => &mut joins.ipc,
                (Some("uts"), Some(_)) => &mut joins.uts,
                _ => return true,
            };
            *slot = path;
            false
        });
    }
    if let Some(sysctls) = spec["linux"]["sysctl"].as_object_mut() {
        let taken: Vec<String> = sysctls
            .keys()
            .filter(|k| joined_namespace_sysctl(k, &joins))
            .cloned()
            .collect();
        for key in taken {
            if let Some(value) = sysctls
                .remove(&key)
                .and_then(|v| v.as_str().map(String::from))
            {
                joins.sysctls.insert(key, value);
            }
        }
    }
    joins
}

/// An exec'd process (kubectl exec, exec probes) gets the same treatment as the container's
/// own: containerd copies the pod's requested capabilities into it.
pub fn harden_exec_process(process: &mut Value) -> Result<(), PolicyError> {
    let cwd = process["cwd"].as_str().unwrap_or("/");
    if cwd.starts_with("/proc/self/fd") || cwd.starts_with("/proc/thread-self/fd") {
        return Err(PolicyError::WorkingDirectoryInProcFd(cwd.to_string()));
    }
    let mut wrapper = json!({ "process": process.take(), "linux": {} });
    let kept: Vec<String> = strings(&wrapper["process"]["capabilities"]["bounding"])
        .into_iter()
        .filter(|c| capability_allowed(c))
        .collect();
    wrapper["process"]["noNewPrivileges"] = json!(true);
    wrapper["process"]["capabilities"] = json!({
        "bounding": kept,
        "effective": kept,
        "permitted": kept,
        "inheritable": [],
        "ambient": [],
    });
    *process = wrapper["process"].take();
    Ok(())
}
