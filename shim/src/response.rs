//! The pod's response to an escape attempt, carried out once per pod: Kill stops every
//! container (the pod, restartPolicy Never, ends Failed); Quarantine freezes every process and
//! cuts the network, keeping everything as it is for forensics.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use agentsandbox_contract::ResponseTaken;
use nix::sys::signal::Signal;

use crate::cgroups::ContainerCgroup;
use crate::egress;

/// One container the response acts on.
pub struct Target {
    pub id: String,
    pub init_pidfd: Option<Arc<OwnedFd>>,
    pub cgroup: ContainerCgroup,
    pub is_sandbox: bool,
}

/// Sends `signal` through a pidfd: it reaches the process it was taken for, or nothing.
pub fn signal_pidfd(pidfd: &OwnedFd, signal: Signal) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal with a pidfd we own, no siginfo, no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A pidfd for `pid` (a child of this shim, so the pid cannot be reused before it is reaped).
pub fn open_pidfd(pid: i32) -> std::io::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open with no flags returns a new descriptor we own, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Carries out `action` (blocking: call from a blocking thread).
pub fn carry_out(action: ResponseTaken, targets: &[Target], netns: Option<PathBuf>) {
    match action {
        ResponseTaken::Killed => {
            for target in targets.iter().filter(|t| !t.is_sandbox) {
                // The container's init is its pid namespace's init: every process in it dies
                // with it; the cgroup catches anything that raced the kill.
                let by_pidfd = target
                    .init_pidfd
                    .as_ref()
                    .map(|fd| signal_pidfd(fd, Signal::SIGKILL));
                let by_cgroup = target.cgroup.signal_all(Signal::SIGKILL);
                tracing::warn!(container = %target.id, ?by_pidfd, by_cgroup = ?by_cgroup.map_err(|e| e.to_string()), "escape response: container killed");
            }
        }
        ResponseTaken::Quarantined => {
            let frozen: anyhow::Result<()> =
                targets.iter().try_for_each(|t| t.cgroup.set_frozen(true));
            tracing::warn!(result = ?frozen.map_err(|e| e.to_string()), "escape response: processes frozen");
            let cut = match netns {
                Some(netns) => egress::apply_rules(&egress::quarantine_rules(), Some(&netns)),
                None => Err(anyhow::anyhow!("the pod's network namespace is unknown")),
            };
            match cut {
                Ok(()) => tracing::warn!("escape response: network cut"),
                Err(err) => {
                    tracing::error!(error = %format!("{err:#}"), "escape response: cutting the network failed")
                }
            }
        }
        ResponseTaken::Denied => {}
    }
}
