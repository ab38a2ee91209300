//! cgroup v2 (unified hierarchy): statistics in containerd's `io.containerd.cgroups.v2.Metrics`
//! shape, OOM kills from `memory.events`, and `cgroup.kill`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use containerd_shim_protos::cgroups_v2::metrics::{
    CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat,
};

use super::{key_values, read_u64};

pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v2.Metrics";

/// A v2 limit file: a number, or "max" (no limit).
fn read_limit(path: &Path) -> u64 {
    match fs::read_to_string(path) {
        Ok(text) if text.trim() == "max" => u64::MAX,
        Ok(text) => text.trim().parse().unwrap_or(0),
        Err(_) => 0,
    }
}

/// Metrics of the cgroup directory `dir`.
pub fn metrics(dir: &Path) -> Metrics {
    let mut cpu = CPUStat::new();
    for (key, value) in key_values(&dir.join("cpu.stat")) {
        match key.as_str() {
            "usage_usec" => cpu.usage_usec = value,
            "user_usec" => cpu.user_usec = value,
            "system_usec" => cpu.system_usec = value,
            "nr_periods" => cpu.nr_periods = value,
            "nr_throttled" => cpu.nr_throttled = value,
            "throttled_usec" => cpu.throttled_usec = value,
            _ => {}
        }
    }
    let mut memory = MemoryStat::new();
    for (key, value) in key_values(&dir.join("memory.stat")) {
        match key.as_str() {
            "anon" => memory.anon = value,
            "file" => memory.file = value,
            "kernel_stack" => memory.kernel_stack = value,
            "slab" => memory.slab = value,
            "sock" => memory.sock = value,
            "shmem" => memory.shmem = value,
            "file_mapped" => memory.file_mapped = value,
            "file_dirty" => memory.file_dirty = value,
            "inactive_anon" => memory.inactive_anon = value,
            "active_anon" => memory.active_anon = value,
            "inactive_file" => memory.inactive_file = value,
            "active_file" => memory.active_file = value,
            "unevictable" => memory.unevictable = value,
            "pgfault" => memory.pgfault = value,
            "pgmajfault" => memory.pgmajfault = value,
            _ => {}
        }
    }
    memory.usage = read_u64(&dir.join("memory.current"));
    memory.usage_limit = read_limit(&dir.join("memory.max"));
    memory.max_usage = read_u64(&dir.join("memory.peak"));
    memory.swap_usage = read_u64(&dir.join("memory.swap.current"));
    memory.swap_limit = read_limit(&dir.join("memory.swap.max"));
    let mut pids = PidsStat::new();
    pids.current = read_u64(&dir.join("pids.current"));
    pids.limit = read_limit(&dir.join("pids.max"));
    let mut metrics = Metrics::new();
    metrics.cpu = Some(cpu).into();
    metrics.memory = Some(memory).into();
    metrics.pids = Some(pids).into();
    metrics.memory_events = Some(memory_events(dir)).into();
    metrics
}

pub fn memory_events(dir: &Path) -> MemoryEvents {
    let mut events = MemoryEvents::new();
    for (key, value) in key_values(&dir.join("memory.events")) {
        match key.as_str() {
            "low" => events.low = value,
            "high" => events.high = value,
            "max" => events.max = value,
            "oom" => events.oom = value,
            "oom_kill" => events.oom_kill = value,
            "oom_group_kill" => events.oom_group_kill = value,
            _ => {}
        }
    }
    events
}

/// Calls `on_oom` for every OOM kill in the cgroup `dir`, as `memory.events`' `oom_kill`
/// count grows, from a task on the current tokio runtime that ends when the cgroup is removed.
pub fn watch_oom(dir: &Path, on_oom: impl Fn() + Send + 'static) -> Result<()> {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
    let events_file: PathBuf = dir.join("memory.events");
    let inotify =
        Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).context("inotify")?;
    inotify
        .add_watch(
            &events_file,
            AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_DELETE_SELF,
        )
        .with_context(|| format!("watching {}", events_file.display()))?;
    let dir = dir.to_path_buf();
    let mut seen = memory_events(&dir).oom_kill;
    super::oom::on_readable(InotifyFd(inotify), move |inotify| {
        let events = inotify.0.read_events().map_err(std::io::Error::from)?;
        if events.iter().any(|e| {
            e.mask
                .intersects(AddWatchFlags::IN_IGNORED | AddWatchFlags::IN_DELETE_SELF)
        }) || !dir.exists()
        {
            return Ok(std::ops::ControlFlow::Break(()));
        }
        let now = memory_events(&dir).oom_kill;
        for _ in seen..now {
            on_oom();
        }
        seen = seen.max(now);
        Ok(std::ops::ControlFlow::Continue(()))
    })
}

/// An inotify instance as tokio's AsyncFd wants it.
struct InotifyFd(nix::sys::inotify::Inotify);

impl std::os::fd::AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsFd::as_fd(&self.0).as_raw_fd()
    }
}

/// Kills every process of the cgroup at once (`cgroup.kill`, Linux 5.14+): nothing forked
/// away from the container's init survives it. `Ok(false)` when the kernel has no
/// `cgroup.kill`.
pub fn kill_all(dir: &Path) -> Result<bool> {
    let kill = dir.join("cgroup.kill");
    if !kill.exists() {
        return Ok(false);
    }
    fs::write(&kill, "1").with_context(|| format!("writing {}", kill.display()))?;
    Ok(true)
}
