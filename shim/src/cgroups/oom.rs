//! OOM kills of a container (cgroup v1 memory.oom_control notifications), so that containerd
//! can report `OOMKilled` (the TaskOOM event).

use std::fs::{self, File};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// None once the cgroup is gone.
fn oom_kill_enabled(dir: &Path) -> Option<bool> {
    let control = fs::read_to_string(dir.join("memory.oom_control")).ok()?;
    Some(control.lines().any(|l| l.trim() == "oom_kill_disable 0"))
}

/// Calls `on_oom` (from a thread of its own) every time the kernel OOM-kills a process of the
/// v1 memory cgroup `dir`; the thread ends when the cgroup is removed.
pub fn watch(dir: &Path, on_oom: impl Fn() + Send + 'static) -> Result<()> {
    let dir: PathBuf = dir.to_path_buf();
    let control = File::open(dir.join("memory.oom_control")).context("memory.oom_control")?;
    // SAFETY: eventfd with valid flags; the descriptor is owned by `events` right away.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error()).context("eventfd");
    }
    // SAFETY: a fresh descriptor we own.
    let mut events = unsafe { File::from_raw_fd(raw) };
    fs::write(
        dir.join("cgroup.event_control"),
        format!("{} {}", events.as_raw_fd(), control.as_raw_fd()),
    )
    .context("cgroup.event_control")?;
    std::thread::Builder::new()
        .name("oom-watch".into())
        .spawn(move || {
            let _control = control;
            let mut counter = [0u8; 8];
            // The kernel notifies when the cgroup hits OOM (before the kill is counted in
            // oom_kill) and when the cgroup is removed.
            while events.read_exact(&mut counter).is_ok() {
                if oom_kill_enabled(&dir).is_none() {
                    break;
                }
                on_oom();
            }
        })?;
    Ok(())
}
