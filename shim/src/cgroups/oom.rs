//! OOM kills of a container (cgroup v1 memory.oom_control notifications), so that containerd
//! can report `OOMKilled` (the TaskOOM event).

use std::fs::{self, File};
use std::io::Read;
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// None once the cgroup is gone.
fn oom_kill_enabled(dir: &Path) -> Option<bool> {
    let control = fs::read_to_string(dir.join("memory.oom_control")).ok()?;
    Some(control.lines().any(|l| l.trim() == "oom_kill_disable 0"))
}

/// Calls `on_oom` every time the kernel OOM-kills a process of the v1 memory cgroup `dir`,
/// from a task on the current tokio runtime (no thread of its own: a shim has few), which ends
/// when the cgroup is removed.
pub fn watch(dir: &Path, on_oom: impl Fn() + Send + 'static) -> Result<()> {
    let dir: PathBuf = dir.to_path_buf();
    let control = File::open(dir.join("memory.oom_control")).context("memory.oom_control")?;
    // SAFETY: eventfd with valid flags; the descriptor is owned right away.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("eventfd");
    }
    // SAFETY: a fresh descriptor we own.
    let events = unsafe { OwnedFd::from_raw_fd(raw) };
    fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", events.as_raw_fd(), control.as_raw_fd()),
    )
    .context("cgroup.event_control")?;
    on_readable(events, move |events| {
        let _control = &control;
        let mut counter = [0u8; 8];
        File::from(events.try_clone()?).read_exact(&mut counter)?;
        // The kernel notifies when the cgroup hits OOM (before the kill is counted in
        // oom_kill) and when the cgroup is removed.
        if oom_kill_enabled(&dir).is_none() {
            return Ok(ControlFlow::Break(()));
        }
        on_oom();
        Ok(ControlFlow::Continue(()))
    })
}

/// Runs `step` on the current tokio runtime each time the non-blocking `fd` has something to
/// read, until it breaks or fails with anything but "nothing to read" (EAGAIN).
pub(crate) fn on_readable<T, F>(fd: T, mut step: F) -> Result<()>
where
    T: AsRawFd + Send + Sync + 'static,
    F: FnMut(&T) -> std::io::Result<ControlFlow<()>> + Send + 'static,
{
    tokio::runtime::Handle::try_current().context("watching outside the shim's runtime")?;
    // SAFETY: `fd` owns its descriptor and keeps it open, unchanged, until it is dropped
    // with the AsyncFd (OwnedFd, or the inotify instance).
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
    }
    .map_err(|e| e.into_parts().1)
    .context("registering a notification descriptor")?;
    tokio::spawn(async move {
        loop {
            let Ok(mut ready) = fd.readable().await else {
                return;
            };
            match ready.try_io(|inner| step(inner.get_ref())) {
                Ok(Ok(ControlFlow::Continue(()))) | Err(_) => {}
                Ok(Ok(ControlFlow::Break(()))) | Ok(Err(_)) => return,
            }
        }
    });
    Ok(())
}
