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
    "/sys/fs/bpf",
    "/sys/fs/cgroup/release_agent",
    "/sys/fs/fuse/connections",
    "/sys/fs/pstore",
    "/sys/kernel/config",
    "/sys/kernel/debug",
    "/sys/kernel/security",
    "/sys/kernel/tracing",
    "/sys/kernel/uevent_helper",
    "/sys/power",
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

/// What a pod's kubelet directory (`<kubelet root>/pods/<pod uid>/`) holds that containers
/// bind-mount: volumes (PVCs, emptyDirs, projected tokens, local volumes), subPaths,
/// /etc/hosts and termination logs.
pub const KUBELET_POD_ENTRIES: &[&str] = &["volumes", "volume-subpaths", "etc-hosts", "containers"];
/// containerd's CRI plugin directory (under its root and its state directory).
const CRI_DIR: &str = "io.containerd.grpc.v1.cri";

/// Whose host paths a container may bind-mount: its own pod's and its own (the allow-list).
/// containerd's sandbox directories, image volumes of the sandbox and the container's own
/// directory (image VOLUMEs) are the CRI's; the pod's kubelet directory is the kubelet's.
/// Any other host path, hostPath volumes included, is refused. The kubelet's and
/// containerd's roots are configurable, so they are recognised by their layout: a pod's
/// directory is named by the pod's UID (which nobody knows before the pod exists, so no
/// hostPath can be made to look like it), containerd's by the sandbox or container id.
#[derive(Clone, Copy, Debug)]
pub struct OwnHostPaths<'a> {
    /// `io.kubernetes.cri.sandbox-uid`: the pod's UID.
    pub pod_uid: Option<&'a str>,
    /// `io.kubernetes.cri.sandbox-id`: the pod sandbox's id.
    pub sandbox_id: Option<&'a str>,
    pub container_id: &'a str,
}

impl<'a> OwnHostPaths<'a> {
    /// From the CRI annotations of `spec`.
    pub fn of(spec: &'a Value, container_id: &'a str) -> OwnHostPaths<'a> {
        let annotation = |key: &str| {
            spec["annotations"][key]
                .as_str()
                .filter(|v| !v.is_empty() && !v.contains('/'))
        };
        OwnHostPaths {
            pod_uid: annotation("io.kubernetes.cri.sandbox-uid"),
            sandbox_id: annotation("io.kubernetes.cri.sandbox-id"),
            container_id,
        }
    }

    /// Whether `source` (a bind mount's host path, as written) is one of these. Lexical: the
    /// launcher then opens it without following any symlink and mounts what it opened.
    pub fn allow(&self, source: &str) -> bool {
        if !source.starts_with('/') {
            return false;
        }
        let parts: Vec<&str> = source.split('/').filter(|c| !c.is_empty()).collect();
        if parts.iter().any(|c| *c == "." || *c == "..") {
            return false;
        }
        // `<prefix>/<a>/<b>/<entry>/...`: a, b, and an entry (when given) right after.
        let has = |a: &str, b: Option<&str>, entries: Option<&[&str]>| {
            let Some(b) = b else { return false };
            parts.windows(3).any(|w| {
                w[0] == a && w[1] == b && entries.is_none_or(|entries| entries.contains(&w[2]))
            })
        };
        let pods = has("pods", self.pod_uid, Some(KUBELET_POD_ENTRIES));
        // The sandbox's files (hostname, resolv.conf, shm) and its image volumes (Kubernetes'
        // ImageVolume: an image mounted read-only, `image-volumes/<sandbox id>/<image>`).
        let sandbox = parts.windows(4).any(|w| {
            w[0] == CRI_DIR
                && (w[1] == "sandboxes" || w[1] == "image-volumes")
                && Some(w[2]) == self.sandbox_id
        });
        let container = !self.container_id.is_empty()
            && parts
                .windows(4)
                .any(|w| w[0] == CRI_DIR && w[1] == "containers" && w[2] == self.container_id);
        pods || sandbox || container
    }
}

/// Default limit on the number of processes in a sandbox (fork bombs).
pub const DEFAULT_PIDS_LIMIT: i64 = 1024;

/// Why a container cannot be run safely. The message reaches `kubectl describe pod`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("agentsandbox refuses privileged containers: remove securityContext.privileged (the sandbox runtime cannot make a privileged container safe)")]
    Privileged,
    #[error("agentsandbox refuses containers sharing the host's {0} namespace: remove hostNetwork/hostPID/hostIPC from the pod")]
    HostNamespace(String),
    #[error("agentsandbox refuses to mount host path {host_path} at {destination}: a sandbox mounts only its own pod's volumes (hostPath volumes expose the node); use a PersistentVolumeClaim or an emptyDir instead")]
    SensitiveHostPath {
        host_path: String,
        destination: String,
    },
    #[error("agentsandbox refuses host device {0}: sandboxes get no host devices")]
    HostDevice(String),
    #[error("agentsandbox refuses pods with hostUsers: false: the runtime gives every pod a user namespace of its own (its root is already an unprivileged host uid, from a range that cannot collide with another pod's); remove hostUsers from the pod spec")]
    KubernetesUserNamespace,
    #[error("agentsandbox refuses working directory {0}: a directory under /proc (or reached through ..) can resolve outside the container (CVE-2024-21626); use a path in the container's filesystem")]
    WorkingDirectoryInProcFd(String),
    #[error("agentsandbox refuses to start a container while its escape-attempt listener is not running (the shim's seccomp notification socket failed to start; see the shim's log): without it escape attempts would be denied unreported")]
    NoListener,
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
    /// The shim's seccomp notification socket; a container is refused without one.
    pub notify_socket: Option<String>,
    /// Names the container in notifications (`listenerMetadata`): the pod spec's container
    /// name, which is what users know (the id is containerd's).
    pub notify_metadata: String,
    /// containerd's id of the container (its own CRI directory may be bind-mounted).
    pub container_id: String,
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
            container_id: String::new(),
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

/// Refusals first (nothing is changed when one applies), then enforcement.
pub fn apply_hardening(spec: &mut Value, settings: &SandboxSettings) -> Result<(), PolicyError> {
    check_refusals(spec, &settings.container_id)?;
    let listener = settings
        .notify_socket
        .as_deref()
        .ok_or(PolicyError::NoListener)?;
    enforce(spec, settings, listener);
    Ok(())
}

/// What cannot be made safe. `container_id` is containerd's id of the container.
pub fn check_refusals(spec: &Value, container_id: &str) -> Result<(), PolicyError> {
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

    let own = OwnHostPaths::of(spec, container_id);
    for mount in spec["mounts"].as_array().into_iter().flatten() {
        if !is_bind(mount) {
            continue;
        }
        let source = mount["source"].as_str().unwrap_or_default();
        // What `enforce` makes of sysfs in a user namespace (read-only /sys at /sys).
        let read_only_sys = source == "/sys"
            && mount["destination"] == "/sys"
            && strings(&mount["options"]).iter().any(|o| o == "ro");
        if !own.allow(source) && !read_only_sys {
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

    check_working_directory(process)
}

/// A working directory under /proc (`/proc/self/fd/N`, `/proc/1/fd/N`, `/proc/<pid>/cwd`,
/// `.../root`) can resolve to a directory outside the container (CVE-2024-21626): refused
/// whatever the path looks like below /proc. The launcher checks the directory it reached as
/// well (a path the kernel cannot reach from the container's root is refused).
fn check_working_directory(process: &Value) -> Result<(), PolicyError> {
    let cwd = process["cwd"].as_str().unwrap_or("/");
    let normal: Vec<&str> = cwd
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if normal.first() == Some(&"proc") || normal.contains(&"..") {
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
fn enforce(spec: &mut Value, settings: &SandboxSettings, listener: &str) {
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

    linux["seccomp"] = seccomp::agent_profile(listener, &settings.notify_metadata);

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
/// pod is the host: /sys becomes a recursively read-only bind of the host's (`rro`: the
/// host's own mounts below /sys, tracefs, bpffs, configfs, pstore, are read-only too, and the
/// masked paths hide them) and the cgroup tree is masked.
fn rewrite_mounts_for_user_namespace(spec: &mut Value) {
    let Some(mounts) = spec["mounts"].as_array_mut() else {
        return;
    };
    mounts.retain(|m| m["type"] != "cgroup" && m["type"] != "cgroup2");
    for mount in mounts.iter_mut() {
        // The launcher stages every bind nosuid,nodev; inside the sandbox's user namespace
        // those flags are locked, so the container's own (re)mount must ask for them too.
        if is_bind(mount) {
            let mut options = strings(&mount["options"]);
            for flag in ["nosuid", "nodev"] {
                if !options.iter().any(|o| o == flag) {
                    options.push(flag.to_string());
                }
            }
            mount["options"] = json!(options);
        }
        if mount["type"] == "sysfs" {
            *mount = json!({
                "destination": mount["destination"],
                "type": "bind",
                "source": "/sys",
                "options": ["rbind", "nosuid", "noexec", "nodev", "ro", "rro"],
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
    check_working_directory(process)?;
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
