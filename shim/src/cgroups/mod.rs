//! All of the shim's cgroup work for one container, in one place: statistics, OOM events,
//! freezing (Quarantine), the pid list, resource updates, signalling every process (Kill) and
//! removal. Freeze, pids, update and removal go through libcgroups' managers, which pick the
//! node's cgroup version; statistics and OOM events read cgroup v1 files (this project's
//! nodes are hybrid: v1 controllers).

pub mod oom;
pub mod stats;

use std::path::PathBuf;

use anyhow::{Context, Result};
use libcgroups::common::{
    create_cgroup_manager, AnyCgroupManager, CgroupConfig, CgroupManager, ControllerOpt,
    FreezerState,
};
use nix::sys::signal::Signal;
use nix::unistd::Pid;

/// One container's cgroup: the OCI spec's absolute `linux.cgroupsPath`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerCgroup {
    path: String,
}

impl ContainerCgroup {
    pub fn new(path: impl Into<String>) -> ContainerCgroup {
        ContainerCgroup { path: path.into() }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    fn manager(&self) -> Result<AnyCgroupManager> {
        create_cgroup_manager(CgroupConfig {
            cgroup_path: PathBuf::from(&self.path),
            systemd_cgroup: false,
            container_name: String::new(),
        })
        .with_context(|| format!("cgroup {}", self.path))
    }

    /// containerd's `io.containerd.cgroups.v1.Metrics` for the container.
    pub fn metrics(&self) -> containerd_shim_protos::cgroups::metrics::Metrics {
        stats::cgroup_v1_metrics(&self.path)
    }

    /// Calls `on_oom` every time the kernel OOM-kills a process of the container.
    pub fn watch_oom(&self, on_oom: impl Fn() + Send + 'static) -> Result<()> {
        oom::watch(&self.path, on_oom)
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

    /// Sends `signal` to every process of the container. SIGKILL is sent with the cgroup
    /// frozen, so that no process can fork a child that outlives the kill.
    pub fn signal_all(&self, signal: Signal) -> Result<()> {
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
