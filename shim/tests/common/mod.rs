//! Specs shared by the shim's tests.

use serde_json::{json, Value};

/// A container spec as containerd 1.6 CRI writes it for an ordinary pod container.
pub fn cri_spec() -> Value {
    json!({
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["sh", "-c", "sleep 1000"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"],
                "effective": ["CAP_CHOWN", "CAP_KILL"],
                "permitted": ["CAP_CHOWN", "CAP_KILL"],
                "inheritable": ["CAP_CHOWN"],
                "ambient": ["CAP_CHOWN"]
            },
            "noNewPrivileges": false,
            "oomScoreAdj": 1000
        },
        "root": {"path": "rootfs", "readonly": false},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
            {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/kubelet/pods/abc/etc-hosts", "options": ["rbind", "rprivate", "rw"]},
            {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/io.containerd.grpc.v1.cri/sandboxes/x/shm", "options": ["rbind", "ro"]},
            {"destination": "/etc/resolv.conf", "type": "bind", "source": "/var/lib/containerd/io.containerd.grpc.v1.cri/sandboxes/x/resolv.conf", "options": ["rbind", "ro"]}
        ],
        "linux": {
            "resources": {"pids": {"limit": 0}},
            "cgroupsPath": "/kubepods/burstable/podabc/c1",
            "namespaces": [
                {"type": "pid"}, {"type": "ipc", "path": "/proc/42/ns/ipc"}, {"type": "uts", "path": "/proc/42/ns/uts"},
                {"type": "mount"}, {"type": "network", "path": "/var/run/netns/cni-1"}
            ],
            "maskedPaths": ["/proc/acpi", "/proc/kcore"],
            "readonlyPaths": ["/proc/bus", "/proc/sys"],
            "seccomp": {"defaultAction": "SCMP_ACT_ALLOW"}
        },
        "annotations": {
            "io.kubernetes.cri.container-type": "container",
            "io.kubernetes.cri.sandbox-id": "x",
            "io.kubernetes.cri.sandbox-uid": "abc"
        }
    })
}
