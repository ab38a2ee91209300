//! The hardening policy on OCI specs shaped like the ones containerd's CRI writes.

mod common;

use std::collections::BTreeMap;

use agentsandbox_contract::{annotations, Category, PodPolicy};
use agentsandbox_shim::policy::seccomp::{self, category_of, NOTIFIED};
use agentsandbox_shim::policy::*;
use common::cri_spec;
use serde_json::{json, Value};

fn settings() -> SandboxSettings {
    SandboxSettings {
        read_only_root: true,
        pids_limit: DEFAULT_PIDS_LIMIT,
        user_namespace: Some("/run/agentsandbox/pods/p1/userns".into()),
        notify_socket: Some("/run/agentsandbox/notify.sock".into()),
        notify_metadata: "agent".into(),
        container_id: "c1".into(),
    }
}

fn hardened() -> Value {
    let mut spec = cri_spec();
    apply_hardening(&mut spec, &settings()).expect("an ordinary container is accepted");
    spec
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn capabilities_are_cut_to_the_reviewed_set_and_nothing_is_inherited() {
    let spec = hardened();
    let caps = &spec["process"]["capabilities"];
    let bounding = strings(&caps["bounding"]);
    for cap in [
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_SYS_CHROOT",
        "CAP_AUDIT_WRITE",
    ] {
        assert!(!bounding.contains(&cap.to_string()), "{cap} kept");
    }
    assert!(bounding.iter().all(|c| capability_allowed(c)));
    assert!(bounding.contains(&"CAP_CHOWN".to_string()));
    assert_eq!(caps["effective"], caps["bounding"]);
    assert_eq!(caps["inheritable"], json!([]));
    assert_eq!(caps["ambient"], json!([]));
}

#[test]
fn a_pod_that_dropped_all_capabilities_keeps_none() {
    let mut spec = cri_spec();
    spec["process"]["capabilities"] = json!({"bounding": [], "effective": [], "permitted": []});
    apply_hardening(&mut spec, &settings()).unwrap();
    assert_eq!(spec["process"]["capabilities"]["bounding"], json!([]));
}

#[test]
fn no_new_privileges_and_read_only_root_are_forced() {
    let spec = hardened();
    assert_eq!(spec["process"]["noNewPrivileges"], json!(true));
    assert_eq!(spec["root"]["readonly"], json!(true));
    let mut standard = cri_spec();
    let settings = SandboxSettings {
        read_only_root: false,
        ..settings()
    };
    apply_hardening(&mut standard, &settings).unwrap();
    assert_eq!(
        standard["root"]["readonly"],
        json!(false),
        "Standard profile: writable root"
    );
}

#[test]
fn host_revealing_proc_and_sys_paths_are_masked_or_read_only() {
    let spec = hardened();
    let masked = strings(&spec["linux"]["maskedPaths"]);
    for path in [
        "/proc/kcore",
        "/proc/keys",
        "/proc/timer_list",
        "/sys/firmware",
        "/proc/acpi",
        "/sys/kernel/tracing",
        "/sys/kernel/debug",
        "/sys/fs/bpf",
        "/sys/kernel/config",
        "/sys/fs/pstore",
        "/sys/kernel/uevent_helper",
    ] {
        assert!(masked.contains(&path.to_string()), "{path} not masked");
    }
    assert_eq!(
        masked.iter().filter(|p| *p == "/proc/acpi").count(),
        1,
        "no duplicates"
    );
    let readonly = strings(&spec["linux"]["readonlyPaths"]);
    for path in ["/proc/sysrq-trigger", "/proc/sys", "/sys"] {
        assert!(readonly.contains(&path.to_string()), "{path} not read-only");
    }
}

#[test]
fn pids_are_limited_and_a_lower_pod_limit_is_kept() {
    assert_eq!(
        hardened()["linux"]["resources"]["pids"]["limit"],
        json!(DEFAULT_PIDS_LIMIT)
    );
    let mut spec = cri_spec();
    spec["linux"]["resources"]["pids"]["limit"] = json!(64);
    apply_hardening(&mut spec, &settings()).unwrap();
    assert_eq!(spec["linux"]["resources"]["pids"]["limit"], json!(64));
    let mut spec = cri_spec();
    spec["linux"]["resources"]["pids"]["limit"] = json!(1_000_000);
    apply_hardening(&mut spec, &settings()).unwrap();
    assert_eq!(
        spec["linux"]["resources"]["pids"]["limit"],
        json!(DEFAULT_PIDS_LIMIT)
    );
}

#[test]
fn every_container_joins_the_pods_pinned_user_namespace_without_own_mappings() {
    let spec = hardened();
    let users: Vec<&Value> = spec["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["type"] == "user")
        .collect();
    assert_eq!(
        users,
        [&json!({"type": "user", "path": "/run/agentsandbox/pods/p1/userns"})]
    );
    assert!(spec["linux"].get("uidMappings").is_none());
    assert!(spec["linux"].get("gidMappings").is_none());
}

#[test]
fn sysfs_becomes_a_recursively_read_only_bind_and_the_cgroup_tree_is_masked_in_a_user_namespace() {
    let spec = hardened();
    let mounts = spec["mounts"].as_array().unwrap();
    assert!(!mounts
        .iter()
        .any(|m| m["type"] == "sysfs" || m["type"] == "cgroup"));
    let sys = mounts.iter().find(|m| m["destination"] == "/sys").unwrap();
    assert_eq!(sys["type"], "bind");
    assert_eq!(sys["source"], "/sys");
    assert!(strings(&sys["options"]).contains(&"ro".to_string()));
    // Recursively: the host's mounts below /sys (tracefs, bpffs, configfs) too.
    assert!(strings(&sys["options"]).contains(&"rro".to_string()));
    assert!(strings(&sys["options"]).contains(&"rbind".to_string()));
    assert!(strings(&spec["linux"]["maskedPaths"]).contains(&"/sys/fs/cgroup".to_string()));
}

#[test]
fn oom_score_protection_is_never_granted() {
    for (asked, got) in [(-997, 0), (0, 0), (1000, 1000)] {
        let mut spec = cri_spec();
        spec["process"]["oomScoreAdj"] = json!(asked);
        apply_hardening(&mut spec, &settings()).unwrap();
        assert_eq!(spec["process"]["oomScoreAdj"], json!(got), "asked {asked}");
    }
}

#[test]
fn pod_namespaces_with_paths_are_joined_before_the_user_namespace() {
    let mut spec = hardened();
    let joins = take_namespace_joins(&mut spec);
    assert_eq!(
        joins,
        NamespaceJoins {
            network: Some("/var/run/netns/cni-1".into()),
            ipc: Some("/proc/42/ns/ipc".into()),
            uts: Some("/proc/42/ns/uts".into()),
            sysctls: BTreeMap::new(),
        }
    );
    let left: Vec<&str> = spec["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["type"].as_str().unwrap())
        .collect();
    assert_eq!(left, ["pid", "mount", "user"]);
}

#[test]
fn namespaces_without_paths_are_created_by_the_container_itself() {
    let mut spec = cri_spec();
    spec["linux"]["namespaces"] = json!([{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]);
    apply_hardening(&mut spec, &settings()).unwrap();
    assert_eq!(take_namespace_joins(&mut spec), NamespaceJoins::default());
    assert_eq!(spec["linux"]["namespaces"].as_array().unwrap().len(), 6);
}

#[test]
fn sysctls_of_joined_namespaces_move_to_the_launcher_and_others_stay() {
    let mut spec = hardened();
    spec["linux"]["sysctl"] = json!({
        "net.ipv4.ip_unprivileged_port_start": "0",
        "net.ipv4.ping_group_range": "0 2147483647",
        "kernel.shmmax": "1000000",
        "vm.overcommit_memory": "1",
        "net.ipv4.conf.all..x": "1",
        "net/ipv4/../../kernel/x": "1"
    });
    let joins = take_namespace_joins(&mut spec);
    assert_eq!(
        joins.sysctls,
        BTreeMap::from([
            ("kernel.shmmax".to_string(), "1000000".to_string()),
            (
                "net.ipv4.ip_unprivileged_port_start".to_string(),
                "0".to_string()
            ),
            (
                "net.ipv4.ping_group_range".to_string(),
                "0 2147483647".to_string()
            ),
        ])
    );
    // Not a namespaced sysctl, or not a plain name: left for libcontainer, which refuses
    // what it cannot apply inside the container.
    let left: Vec<&String> = spec["linux"]["sysctl"]
        .as_object()
        .unwrap()
        .keys()
        .collect();
    assert_eq!(
        left,
        [
            "net.ipv4.conf.all..x",
            "net/ipv4/../../kernel/x",
            "vm.overcommit_memory"
        ]
    );
    assert_eq!(
        sysctl_path("net.ipv4.ping_group_range"),
        std::path::Path::new("/proc/sys/net/ipv4/ping_group_range")
    );
}

#[test]
fn a_kubernetes_user_namespace_is_refused_with_what_to_do() {
    // hostUsers: false: the kubelet's mappings come from its own range (by default every id
    // above 65535), which the runtime's per-pod ranges cannot be kept apart from.
    for user_namespace in [
        json!({"type": "user"}),
        json!({"type": "user", "path": "/proc/7/ns/user"}),
    ] {
        let mut spec = cri_spec();
        spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(user_namespace);
        spec["linux"]["uidMappings"] =
            json!([{"containerID": 0, "hostID": 1_000_000, "size": 65_536}]);
        let refused = apply_hardening(&mut spec, &settings());
        assert_eq!(refused, Err(PolicyError::KubernetesUserNamespace));
        assert!(PolicyError::KubernetesUserNamespace
            .to_string()
            .contains("remove hostUsers"));
    }
}

#[test]
fn the_pods_seccomp_profile_is_replaced_by_the_agent_profile() {
    let spec = hardened();
    let profile = &spec["linux"]["seccomp"];
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    assert_eq!(profile["defaultErrnoRet"], json!(seccomp::EPERM));
    assert_eq!(profile["listenerPath"], "/run/agentsandbox/notify.sock");
    assert_eq!(profile["listenerMetadata"], "agent");
}

fn action_for(profile: &Value, syscall: &str) -> Vec<String> {
    profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| strings(&r["names"]).iter().any(|n| n == syscall))
        .map(|r| r["action"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn escape_syscalls_are_notified_and_never_allowed() {
    let profile = seccomp::agent_profile("/run/notify.sock", "m");
    for syscall in [
        "mount",
        "umount2",
        "unshare",
        "setns",
        "ptrace",
        "bpf",
        "keyctl",
        "add_key",
        "request_key",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "init_module",
        "finit_module",
        "open_by_handle_at",
        "perf_event_open",
        "userfaultfd",
        "process_vm_readv",
        "process_vm_writev",
        "kexec_load",
        "pivot_root",
        "fsopen",
        "move_mount",
        "open_tree",
        "pidfd_getfd",
        "kcmp",
    ] {
        assert_eq!(
            action_for(&profile, syscall),
            vec!["SCMP_ACT_NOTIFY"],
            "{syscall}"
        );
        assert!(category_of(syscall).is_some(), "{syscall} has a category");
    }
}

#[test]
fn a_container_is_refused_while_the_listener_is_not_running() {
    let mut spec = cri_spec();
    let before = spec.clone();
    let mut without = settings();
    without.notify_socket = None;
    let refused = apply_hardening(&mut spec, &without).unwrap_err();
    assert_eq!(refused, PolicyError::NoListener);
    assert!(refused.to_string().contains("listener is not running"));
    assert_eq!(spec, before, "nothing changed");
}

#[test]
fn calls_denied_silently_before_are_reported_and_only_numa_placement_stays_silent() {
    let profile = seccomp::agent_profile("/run/notify.sock", "m");
    for (syscall, category) in [
        ("name_to_handle_at", Category::FsHandle),
        ("vmsplice", Category::Kernel),
        ("chroot", Category::Mount),
        ("acct", Category::Kernel),
        ("syslog", Category::Kernel),
        ("fanotify_init", Category::Kernel),
        ("quotactl", Category::Kernel),
        ("settimeofday", Category::Kernel),
        ("clock_settime", Category::Kernel),
        ("process_madvise", Category::Ptrace),
    ] {
        assert_eq!(
            action_for(&profile, syscall),
            vec!["SCMP_ACT_NOTIFY"],
            "{syscall}"
        );
        assert_eq!(category_of(syscall), Some(category), "{syscall}");
    }
    for syscall in seccomp::DENIED_SILENTLY {
        assert!(action_for(&profile, syscall).is_empty(), "{syscall}");
        assert!(!seccomp::ALLOWED.contains(syscall));
    }
}

#[test]
fn only_64_bit_abis_are_admitted() {
    let profile = seccomp::agent_profile("/run/notify.sock", "m");
    assert_eq!(
        profile["architectures"],
        json!(["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"])
    );
    assert!(action_for(&profile, "socketcall").is_empty());
}

#[test]
fn argument_rules_put_the_catch_all_last() {
    let profile = seccomp::agent_profile("/run/notify.sock", "m");
    for (syscall, last, category) in [
        ("socket", "SCMP_ACT_NOTIFY", Category::Network),
        ("setsockopt", "SCMP_ACT_ALLOW", Category::Network),
        ("prctl", "SCMP_ACT_ALLOW", Category::Seccomp),
        ("seccomp", "SCMP_ACT_ALLOW", Category::Seccomp),
        ("personality", "SCMP_ACT_NOTIFY", Category::Kernel),
        ("chmod", "SCMP_ACT_NOTIFY", Category::SetId),
        ("fchmodat2", "SCMP_ACT_NOTIFY", Category::SetId),
        ("openat", "SCMP_ACT_NOTIFY", Category::SetId),
        ("mknodat", "SCMP_ACT_NOTIFY", Category::SetId),
    ] {
        let rules: Vec<&Value> = profile["syscalls"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["names"] == json!([syscall]))
            .collect();
        assert!(rules.len() >= 2, "{syscall}");
        for rule in &rules {
            assert!(
                !rule["args"].as_array().unwrap().is_empty(),
                "{syscall}: a rule without arguments overrides the conditional ones"
            );
        }
        let catch_all = rules.last().unwrap();
        assert_eq!(catch_all["action"], last, "{syscall}");
        assert_eq!(catch_all["args"][0]["op"], "SCMP_CMP_GE", "{syscall}");
        assert_eq!(catch_all["args"][0]["value"], json!(0), "{syscall}");
        assert_eq!(category_of(syscall), Some(category), "{syscall}");
        assert!(!seccomp::ALLOWED.contains(&syscall), "{syscall}");
    }
}

#[test]
fn clone_is_allowed_only_without_namespace_flags_and_clone3_falls_back() {
    let profile = seccomp::agent_profile("/run/notify.sock", "m");
    let clone_rules: Vec<&Value> = profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["names"] == json!(["clone"]))
        .collect();
    let allow = clone_rules
        .iter()
        .find(|r| r["action"] == "SCMP_ACT_ALLOW")
        .unwrap();
    assert_eq!(allow["args"][0]["op"], "SCMP_CMP_MASKED_EQ");
    assert_eq!(allow["args"][0]["value"], json!(0));
    assert_eq!(
        allow["args"][0]["valueTwo"],
        json!(0x7E02_0000u64),
        "CLONE_NEW* mask"
    );
    assert_eq!(
        clone_rules
            .iter()
            .filter(|r| r["action"] == "SCMP_ACT_NOTIFY")
            .count(),
        7
    );
    assert_eq!(category_of("clone"), Some(Category::Namespace));
    // clone3 is notified; the listener answers ENOSYS and reports only namespace requests.
    assert_eq!(action_for(&profile, "clone3"), vec!["SCMP_ACT_NOTIFY"]);
    assert!(
        !seccomp::clone3_is_attempt(Some(0x3d0f00)),
        "glibc's pthread_create flags"
    );
    assert!(
        !seccomp::clone3_is_attempt(Some(0x1200011)),
        "glibc's fork flags"
    );
    assert!(
        seccomp::clone3_is_attempt(Some(0x1000_0000)),
        "CLONE_NEWUSER"
    );
    assert!(seccomp::clone3_is_attempt(Some(0x80)), "CLONE_NEWTIME");
    assert!(seccomp::clone3_is_attempt(None), "unreadable arguments");
}

#[test]
fn allowlist_and_notify_list_do_not_overlap_and_everyday_calls_are_allowed() {
    for n in NOTIFIED {
        assert!(
            !seccomp::ALLOWED.contains(&n.syscall),
            "{} both allowed and notified",
            n.syscall
        );
    }
    let mut sorted = seccomp::ALLOWED.to_vec();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        sorted.len(),
        seccomp::ALLOWED.len(),
        "duplicates in the allowlist"
    );
    let mode_setting: Vec<&str> = seccomp::MODE_SETTING.iter().map(|(s, _)| *s).collect();
    for conditional in &mode_setting {
        assert!(
            !seccomp::ALLOWED.contains(conditional),
            "{conditional} is allowed unconditionally, so set-id modes would pass"
        );
    }
    assert!(
        !seccomp::ALLOWED.contains(&"openat2"),
        "openat2 carries its mode in a struct seccomp cannot read: it must be answered ENOSYS"
    );
    for everyday_with_mode in ["openat", "open", "creat", "chmod", "fchmod", "fchmodat"] {
        assert!(
            mode_setting.contains(&everyday_with_mode),
            "{everyday_with_mode} must be allowed for modes without set-id bits"
        );
    }
    for everyday in [
        "read",
        "write",
        "execve",
        "mmap",
        "futex",
        "connect",
        "epoll_wait",
        "exit_group",
        "wait4",
        "getrandom",
    ] {
        assert!(
            seccomp::ALLOWED.contains(&everyday),
            "{everyday} must be allowed"
        );
    }
}

#[test]
fn privileged_containers_are_refused() {
    let mut spec = cri_spec();
    spec["process"]["capabilities"]["bounding"] = json!(["CAP_SYS_ADMIN", "CAP_NET_ADMIN"]);
    spec["linux"]["maskedPaths"] = json!([]);
    spec["linux"]["readonlyPaths"] = json!([]);
    let before = spec.clone();
    assert_eq!(
        apply_hardening(&mut spec, &settings()),
        Err(PolicyError::Privileged)
    );
    assert_eq!(spec, before, "a refused spec is left untouched");
}

#[test]
fn cap_sys_admin_requested_by_an_unprivileged_pod_is_dropped_not_refused() {
    let mut spec = cri_spec();
    spec["process"]["capabilities"]["bounding"] = json!(["CAP_SYS_ADMIN", "CAP_CHOWN"]);
    apply_hardening(&mut spec, &settings()).unwrap();
    assert_eq!(
        spec["process"]["capabilities"]["bounding"],
        json!(["CAP_CHOWN"])
    );
}

#[test]
fn host_namespaces_are_refused() {
    for shared in ["network", "pid", "ipc", "uts", "mount"] {
        let mut spec = cri_spec();
        spec["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .retain(|n| n["type"] != shared);
        assert_eq!(
            apply_hardening(&mut spec, &settings()),
            Err(PolicyError::HostNamespace(shared.to_string())),
            "{shared}"
        );
    }
}

#[test]
fn only_the_pods_own_host_paths_may_be_mounted() {
    // cri_spec's pod: UID "abc", sandbox "x"; the container is "c1".
    let refused = [
        "/",
        "/etc",
        "/etc/shadow",
        "/proc",
        "/proc/1/root",
        "/sys/fs/cgroup",
        "/dev/sda",
        "/root/.ssh",
        "/var/lib/kubelet",
        "/var/lib/kubelet/pki",
        "/var/run/docker.sock",
        "/run/containerd/containerd.sock",
        "/var/lib/containerd/io.containerd.content.v1.content",
        "/usr/bin",
        "/var",
        "/run",
        "/home",
        "/srv/data",
        // The runtime's own state: every sandbox's rootfs, staged volumes and bundle.
        "/run/agentsandbox",
        "/run/agentsandbox/pods/x",
        // Another pod's kubelet directory, or this pod's outside its volumes.
        "/var/lib/kubelet/pods/other/volumes/kubernetes.io~empty-dir/tmp",
        "/var/lib/kubelet/pods/abc",
        "/var/lib/kubelet/pods/abc/plugins/secret",
        // Another pod's CRI shm, another container's CRI directory.
        "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/y/shm",
        "/var/lib/containerd/io.containerd.grpc.v1.cri/containers/c2/volumes/v",
        "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/x",
        "/run/containerd/io.containerd.grpc.v1.cri/image-volumes/y/sha256abc",
        // Climbing out lexically.
        "/var/lib/kubelet/pods/abc/volumes/../../other/volumes/v",
        "/var/lib/kubelet/pods/abc/volumes/./x/..",
        "relative/pods/abc/volumes/v",
    ];
    for source in refused {
        let mut spec = cri_spec();
        spec["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/host", "type": "bind", "source": source, "options": ["rbind", "rw"]
        }));
        assert!(
            matches!(
                apply_hardening(&mut spec, &settings()),
                Err(PolicyError::SensitiveHostPath { .. })
            ),
            "{source} was accepted"
        );
    }
    for accepted in [
        "/var/lib/kubelet/pods/abc/volumes/kubernetes.io~empty-dir/tmp",
        "/var/lib/kubelet/pods/abc/volumes/kubernetes.io~local-volume/pvc-1",
        "/var/lib/kubelet/pods/abc/volume-subpaths/data/agent/0",
        "/var/lib/kubelet/pods/abc/etc-hosts",
        "/var/lib/kubelet/pods/abc/containers/agent/1234",
        // A kubelet or containerd with another root directory.
        "/data/kubelet/pods/abc/volumes/kubernetes.io~csi/pvc-2/mount",
        "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/x/shm",
        "/srv/containerd/io.containerd.grpc.v1.cri/sandboxes/x/hostname",
        "/var/lib/containerd/io.containerd.grpc.v1.cri/containers/c1/volumes/v",
        "/run/containerd/io.containerd.grpc.v1.cri/image-volumes/x/sha256abc/etc",
    ] {
        let mut spec = cri_spec();
        spec["mounts"].as_array_mut().unwrap().push(json!({
            "destination": "/data", "type": "bind", "source": accepted, "options": ["rbind"]
        }));
        assert!(
            apply_hardening(&mut spec, &settings()).is_ok(),
            "{accepted} was refused"
        );
    }
    // Without CRI's annotations nothing of a pod's is recognised.
    let mut spec = cri_spec();
    spec["annotations"] = json!({});
    assert!(matches!(
        apply_hardening(&mut spec, &settings()),
        Err(PolicyError::SensitiveHostPath { .. })
    ));
}

#[test]
fn refusal_messages_tell_the_user_what_to_change() {
    let message = PolicyError::SensitiveHostPath {
        host_path: "/etc".into(),
        destination: "/host".into(),
    }
    .to_string();
    assert!(
        message.contains("/etc") && message.contains("PersistentVolumeClaim"),
        "{message}"
    );
    assert!(PolicyError::HostNamespace("network".into())
        .to_string()
        .contains("hostNetwork"));
}

#[test]
fn host_devices_are_refused() {
    let mut spec = cri_spec();
    spec["linux"]["devices"] =
        json!([{"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0}]);
    assert_eq!(
        apply_hardening(&mut spec, &settings()),
        Err(PolicyError::HostDevice("/dev/nvidia0".into()))
    );
}

#[test]
fn a_working_directory_under_proc_is_refused_however_it_is_spelled() {
    for cwd in [
        "/proc/self/fd/7",
        "/proc/1/fd/3",
        "//proc/./1/cwd",
        "/proc/self/root/etc",
        "/tmp/../proc/1/fd/3",
        "/proc",
    ] {
        let mut spec = cri_spec();
        spec["process"]["cwd"] = json!(cwd);
        assert!(
            matches!(
                apply_hardening(&mut spec, &settings()),
                Err(PolicyError::WorkingDirectoryInProcFd(_))
            ),
            "{cwd}"
        );
    }
    for cwd in ["/", "/workspace", "/processes", "/srv/proc"] {
        let mut spec = cri_spec();
        spec["process"]["cwd"] = json!(cwd);
        assert!(apply_hardening(&mut spec, &settings()).is_ok(), "{cwd}");
    }
}

#[test]
fn unknown_fields_of_the_spec_survive() {
    let mut spec = cri_spec();
    spec["linux"]["intelRdt"] = json!({"closID": "x"});
    spec["annotations"]["example.com/x"] = json!("y");
    apply_hardening(&mut spec, &settings()).unwrap();
    assert_eq!(spec["linux"]["intelRdt"]["closID"], "x");
    assert_eq!(spec["annotations"]["example.com/x"], "y");
    assert_eq!(
        spec["linux"]["cgroupsPath"],
        "/kubepods/burstable/podabc/c1"
    );
}

#[test]
fn oci_hooks_are_removed_because_they_would_run_as_host_root() {
    let mut spec = cri_spec();
    spec["hooks"] = json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "id"]}]});
    apply_hardening(&mut spec, &settings()).unwrap();
    assert_eq!(spec.get("hooks"), None);
}

#[test]
fn settings_come_from_the_pod_policy_and_default_to_strict() {
    let defaults = PodPolicy::from_annotations(&BTreeMap::new()).unwrap();
    let strict = SandboxSettings::for_container(&defaults, "agent");
    assert!(strict.read_only_root);
    let pod = PodPolicy::from_annotations(&BTreeMap::from([(
        annotations::ISOLATION.to_string(),
        "Standard".to_string(),
    )]))
    .unwrap();
    let standard = SandboxSettings::for_container(&pod, "agent");
    assert!(!standard.read_only_root);
    assert_eq!(standard.notify_metadata, "agent");
}

#[test]
fn exec_processes_lose_capabilities_and_may_not_start_in_proc_self_fd() {
    let mut process = json!({
        "args": ["sh"], "cwd": "/",
        "capabilities": {"bounding": ["CAP_SYS_ADMIN", "CAP_KILL"], "effective": ["CAP_SYS_ADMIN"], "ambient": ["CAP_SYS_ADMIN"]},
        "noNewPrivileges": false
    });
    harden_exec_process(&mut process).unwrap();
    assert_eq!(process["capabilities"]["effective"], json!(["CAP_KILL"]));
    assert_eq!(process["capabilities"]["ambient"], json!([]));
    assert_eq!(process["noNewPrivileges"], json!(true));
    assert_eq!(process["args"], json!(["sh"]));

    for cwd in ["/proc/self/fd/7", "/proc/1/fd/4"] {
        let mut escaping = json!({"args": ["sh"], "cwd": cwd});
        assert_eq!(
            harden_exec_process(&mut escaping),
            Err(PolicyError::WorkingDirectoryInProcFd(cwd.into()))
        );
    }
}
