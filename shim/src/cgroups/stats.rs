//! Container statistics from cgroup v1 controllers,
//! in containerd's `io.containerd.cgroups.v1.Metrics` shape that CRI and `ctr task metrics`
//! decode.

use std::fs;

use super::layout::Hierarchy;
use super::{key_values, read_u64};

use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryOomControl, MemoryStat, Metrics, PidsStat, Throttle,
};

pub const METRICS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

/// Metrics of the cgroup at `cgroups_path` (the spec's absolute `linux.cgroupsPath`).
pub fn cgroup_v1_metrics(hierarchy: &Hierarchy, cgroups_path: &str) -> Metrics {
    let dir = |controller: &str| hierarchy.dir(cgroups_path, controller);

    let memory_dir = dir("memory");
    let mut memory = MemoryStat::new();
    for (key, value) in key_values(&memory_dir.join("memory.stat")) {
        match key.as_str() {
            "cache" => memory.cache = value,
            "rss" => memory.rss = value,
            "mapped_file" => memory.mapped_file = value,
            "inactive_anon" => memory.inactive_anon = value,
            "active_anon" => memory.active_anon = value,
            "inactive_file" => memory.inactive_file = value,
            "active_file" => memory.active_file = value,
            "pgfault" => memory.pg_fault = value,
            "pgmajfault" => memory.pg_maj_fault = value,
            "hierarchical_memory_limit" => memory.hierarchical_memory_limit = value,
            "total_cache" => memory.total_cache = value,
            "total_rss" => memory.total_rss = value,
            "total_inactive_file" => memory.total_inactive_file = value,
            "total_active_file" => memory.total_active_file = value,
            _ => {}
        }
    }
    let mut usage = MemoryEntry::new();
    usage.usage = read_u64(&memory_dir.join("memory.usage_in_bytes"));
    usage.max = read_u64(&memory_dir.join("memory.max_usage_in_bytes"));
    usage.limit = read_u64(&memory_dir.join("memory.limit_in_bytes"));
    usage.failcnt = read_u64(&memory_dir.join("memory.failcnt"));
    memory.usage = Some(usage).into();
    // Kernel memory and swap (memsw counts memory plus swap), as runc's shim reports them:
    // CRI's pod sandbox metrics expect both, and OOM kills from memory.oom_control.
    let entry = |prefix: &str| {
        let mut entry = MemoryEntry::new();
        entry.usage = read_u64(&memory_dir.join(format!("{prefix}.usage_in_bytes")));
        entry.max = read_u64(&memory_dir.join(format!("{prefix}.max_usage_in_bytes")));
        entry.limit = read_u64(&memory_dir.join(format!("{prefix}.limit_in_bytes")));
        entry.failcnt = read_u64(&memory_dir.join(format!("{prefix}.failcnt")));
        entry
    };
    memory.kernel = Some(entry("memory.kmem")).into();
    memory.kernel_tcp = Some(entry("memory.kmem.tcp")).into();
    memory.swap = Some(entry("memory.memsw")).into();
    let mut oom_control = MemoryOomControl::new();
    for (key, value) in key_values(&memory_dir.join("memory.oom_control")) {
        match key.as_str() {
            "oom_kill_disable" => oom_control.oom_kill_disable = value,
            "under_oom" => oom_control.under_oom = value,
            "oom_kill" => oom_control.oom_kill = value,
            _ => {}
        }
    }

    let cpuacct = dir("cpuacct");
    let mut cpu_usage = CPUUsage::new();
    cpu_usage.total = read_u64(&cpuacct.join("cpuacct.usage"));
    cpu_usage.user = read_u64(&cpuacct.join("cpuacct.usage_user"));
    cpu_usage.kernel = read_u64(&cpuacct.join("cpuacct.usage_sys"));
    cpu_usage.per_cpu = fs::read_to_string(cpuacct.join("cpuacct.usage_percpu"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|v| v.parse().ok())
        .collect();
    let mut throttling = Throttle::new();
    for (key, value) in key_values(&dir("cpu").join("cpu.stat")) {
        match key.as_str() {
            "nr_periods" => throttling.periods = value,
            "nr_throttled" => throttling.throttled_periods = value,
            "throttled_time" => throttling.throttled_time = value,
            _ => {}
        }
    }
    let mut cpu = CPUStat::new();
    cpu.usage = Some(cpu_usage).into();
    cpu.throttling = Some(throttling).into();

    let pids_dir = dir("pids");
    let mut pids = PidsStat::new();
    pids.current = read_u64(&pids_dir.join("pids.current"));
    pids.limit = read_u64(&pids_dir.join("pids.max"));

    let mut metrics = Metrics::new();
    metrics.memory = Some(memory).into();
    metrics.cpu = Some(cpu).into();
    metrics.pids = Some(pids).into();
    metrics.memory_oom_control = Some(oom_control).into();
    metrics
}
