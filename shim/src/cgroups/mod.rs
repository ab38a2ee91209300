//! All of the shim's cgroup work for one container, in one place: statistics, OOM events,
//! freezing (Quarantine), the pid list, resource updates, signalling every process (Kill) and
//! removal, on cgroup v1 and v2 and under either cgroup driver (`layout`). Freeze, pids,
//! update and removal go through libcgroups' managers on the container's filesystem path;
//! statistics and OOM events read the version's own files (`stats`/`oom` for v1, `v2`).

pub mod layout;
pub mod oom;
pub mod stats;
pub mod v2;

use std::path::Path;

use layout::Hierarchy;

use anyhow::{Context, Result};
use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
    FreezerState,
};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// A cgroup file holding one number (0 when absent or unreadable: the cgroup may be gone).
fn read_u64(path: &Path) -> u64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// A cgroup file of `key value` lines (cpu.stat, memory.stat, memory.events).
fn key_values(path: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Where the node mounts its cgroup hierarchy.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// One container's cgroup: the OCI spec's `linux.cgroupsPath` on the node's hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerCgroup {
    path: String,
    hierarchy: Hierarchy,
}

/// Statistics in the shape containerd decodes for the node's cgroup version.
pub enum ContainerMetrics {
    V1(containerd_shim_protos::cgroups::metrics::Metrics),
    V2(containerd_shim_protos::cgroups_v2::metrics::Metrics),
}

impl ContainerMetrics {
    /// The type URL and the encoded message, for the task API's Stats.
    pub fn encode(&self) -> Result<(&'static str, Vec<u8>)> {
        use containerd_shim_protos::protobuf::Message;
        Ok(match self {
            ContainerMetrics::V1(m) => (stats::METRICS_TYPE_URL, m.write_to_bytes()?),
            ContainerMetrics::V2(m) => (v2::METRICS_TYPE_URL, m.write_to_bytes()?),
        })
    }
}

impl ContainerCgroup {
    /// The cgroup `path` on this node's hierarchy.
    pub fn new(path: impl Into<String>) -> ContainerCgroup {
        ContainerCgroup::on(path, Hierarchy::detect(Path::new(CGROUP_ROOT)))
    }

    /// The cgroup `path` on `hierarchy` (tests use fixture trees).
    pub fn on(path: impl Into<String>, hierarchy: Hierarchy) -> ContainerCgroup {
        ContainerCgroup {
            path: path.into(),
            hierarchy,
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn manager(&self) -> Result<AnyCgroupManager> {
        // Always the filesystem manager, on the path the driver's form resolves to: the
        // shim only freezes, lists, updates and removes, all plain cgroupfs operations.
        let relative = layout::relative_path(&self.path);
        create_cgroup_manager(CgroupConfig {
            cgroup_path: Path::new("/").join(relative),
            systemd_cgroup: false,
            container_name: String::new(),
        })
        .with_context(|| format!("cgroup {}", self.path))
    }

    /// The container's statistics.
    pub fn metrics(&self) -> ContainerMetrics {
        match &self.hierarchy {
            Hierarchy::V1 { .. } => {
                ContainerMetrics::V1(stats::cgroup_v1_metrics(&self.hierarchy, &self.path))
            }
            Hierarchy::V2 { .. } => {
                ContainerMetrics::V2(v2::metrics(&self.hierarchy.dir(&self.path, "")))
            }
        }
    }

    /// Calls `on_oom` every time the kernel OOM-kills a process of the container.
    pub fn watch_oom(&self, on_oom: impl Fn() + Send + 'static) -> Result<()> {
        match &self.hierarchy {
            Hierarchy::V1 { .. } => oom::watch(&self.hierarchy.dir(&self.path, "memory"), on_oom),
            Hierarchy::V2 { .. } => v2::watch_oom(&self.hierarchy.dir(&self.path, ""), on_oom),
        }
    }

    /// Freezes (Quarantine) or thaws every process of the container.
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        self.manager()?.freeze(if frozen {
            FreezerState::Frozen
        } else {
            FreezerState::Thawed
        })?;
        Ok(())
    }

    /// Every process of the container, as host pids.
    pub fn pids(&self) -> Result<Vec<Pid>> {
        Ok(self.manager()?.get_all_pids()?)
    }

    /// Applies new resource limits (the task API's Update).
    pub fn update(&self, resources: &oci_spec::runtime::LinuxResources) -> Result<()> {
        self.manager()?.apply(&ControllerOpt {
            resources,
            disable_oom_killer: false,
            oom_score_adj: None,
            freezer_state: None,
        })?;
        Ok(())
    }

    /// Sends `signal` to every process of the container. SIGKILL goes through `cgroup.kill`
    /// on v2, else is sent with the cgroup frozen, so that no process can fork a child that
    /// outlives the kill.
    pub fn signal_all(&self, signal: Signal) -> Result<()> {
        if signal == Signal::SIGKILL
            && matches!(self.hierarchy, Hierarchy::V2 { .. })
            && v2::kill_all(&self.hierarchy.dir(&self.path, ""))?
        {
            return Ok(());
        }
        let manager = self.manager()?;
        let freeze = signal == Signal::SIGKILL;
        if freeze {
            manager.freeze(FreezerState::Frozen)?;
        }
        let result = manager.get_all_pids().map(|pids| {
            for pid in pids {
                // A process that exited meanwhile is not an error.
                let _ = nix::sys::signal::kill(pid, signal);
            }
        });
        if freeze {
            manager.freeze(FreezerState::Thawed)?;
        }
        Ok(result?)
    }

    /// Removes the cgroup (its processes must be gone).
    pub fn remove(&self) -> Result<()> {
        self.manager()?.remove()?;
        Ok(())
    }
}
