//! The shim's cgroup module over fixture trees shaped like a node's cgroupfs: cgroup v2
//! (unified) and v1, the cgroupfs and systemd drivers' paths. This machine is a hybrid v1
//! host, so the v2 paths are proven here, on files laid out as the kernel lays them out.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentsandbox_shim::cgroups::layout::{relative_path, Hierarchy};
use agentsandbox_shim::cgroups::{v2, ContainerCgroup, ContainerMetrics};

fn fixture(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("asb-cgroupfs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

fn write(dir: &Path, file: &str, content: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(file), content).unwrap();
}

/// A unified tree with one container, as the kubelet's systemd driver lays it out.
fn v2_tree(root: &Path) -> PathBuf {
    write(
        root,
        "cgroup.controllers",
        "cpuset cpu io memory hugetlb pids rdma misc\n",
    );
    let dir = root.join(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope",
    );
    write(&dir, "cpu.stat", "usage_usec 52000\nuser_usec 40000\nsystem_usec 12000\nnr_periods 10\nnr_throttled 2\nthrottled_usec 900\n");
    write(&dir, "memory.current", "8388608\n");
    write(&dir, "memory.max", "67108864\n");
    write(&dir, "memory.peak", "9437184\n");
    write(&dir, "memory.swap.current", "0\n");
    write(&dir, "memory.swap.max", "max\n");
    write(
        &dir,
        "memory.stat",
        "anon 4194304\nfile 2097152\nkernel_stack 16384\nshmem 0\npgfault 1200\npgmajfault 3\n",
    );
    write(
        &dir,
        "memory.events",
        "low 0\nhigh 0\nmax 4\noom 1\noom_kill 1\noom_group_kill 0\n",
    );
    write(&dir, "pids.current", "3\n");
    write(&dir, "pids.max", "1024\n");
    write(&dir, "cgroup.procs", "4242\n");
    dir
}

const SYSTEMD_PATH: &str = "kubepods-burstable-pod1.slice:cri-containerd:abc";

#[test]
fn both_drivers_paths_resolve_to_the_directory_the_kubelet_made() {
    assert_eq!(
        relative_path(SYSTEMD_PATH),
        Path::new("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope")
    );
    assert_eq!(
        relative_path("/kubepods/burstable/pod1/abc"),
        Path::new("kubepods/burstable/pod1/abc")
    );
    assert_eq!(
        relative_path("system.slice:docker:abc"),
        Path::new("system.slice/docker-abc.scope")
    );
    assert_eq!(relative_path("-.slice::abc"), Path::new("abc.scope"));
}

#[test]
fn the_hierarchy_is_v2_only_where_the_root_lists_controllers() {
    let v2 = fixture("detect-v2");
    v2_tree(&v2);
    assert_eq!(Hierarchy::detect(&v2), Hierarchy::V2 { root: v2.clone() });
    // A hybrid host: v1 controllers plus an empty `unified` mount.
    let hybrid = fixture("detect-hybrid");
    write(&hybrid.join("unified"), "cgroup.controllers", "");
    write(&hybrid.join("memory"), "memory.usage_in_bytes", "0\n");
    assert_eq!(
        Hierarchy::detect(&hybrid),
        Hierarchy::V1 {
            root: hybrid.clone()
        }
    );
    assert_eq!(
        Hierarchy::V1 {
            root: hybrid.clone()
        }
        .dir("/kubepods/pod1/abc", "memory"),
        hybrid.join("memory/kubepods/pod1/abc")
    );
    std::fs::remove_dir_all(v2).unwrap();
    std::fs::remove_dir_all(hybrid).unwrap();
}

#[test]
fn v2_statistics_come_from_cpu_stat_memory_and_pids_files() {
    let root = fixture("stats");
    v2_tree(&root);
    let cgroup = ContainerCgroup::on(SYSTEMD_PATH, Hierarchy::V2 { root: root.clone() });
    let ContainerMetrics::V2(metrics) = cgroup.metrics() else {
        panic!("v1 metrics from a v2 tree");
    };
    assert_eq!(metrics.cpu.usage_usec, 52000);
    assert_eq!(metrics.cpu.nr_throttled, 2);
    assert_eq!(metrics.memory.usage, 8_388_608);
    assert_eq!(metrics.memory.usage_limit, 67_108_864);
    assert_eq!(metrics.memory.swap_limit, u64::MAX, "\"max\" is no limit");
    assert_eq!(metrics.memory.anon, 4_194_304);
    assert_eq!(metrics.memory.max_usage, 9_437_184);
    assert_eq!(metrics.pids.current, 3);
    assert_eq!(metrics.pids.limit, 1024);
    assert_eq!(metrics.memory_events.oom_kill, 1);
    let (type_url, bytes) = cgroup.metrics().encode().unwrap();
    assert_eq!(type_url, "io.containerd.cgroups.v2.Metrics");
    assert!(!bytes.is_empty());
    std::fs::remove_dir_all(root).unwrap();
}

#[tokio::test]
async fn v2_oom_kills_are_reported_once_each_as_memory_events_counts_them() {
    let root = fixture("oom");
    let dir = v2_tree(&root);
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    v2::watch_oom(&dir, move || {
        counter.fetch_add(1, Ordering::SeqCst);
    })
    .unwrap();
    // The kernel bumps oom_kill from 1 to 3: two kills.
    write(
        &dir,
        "memory.events",
        "low 0\nhigh 0\nmax 9\noom 3\noom_kill 3\noom_group_kill 0\n",
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while seen.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    // A change that is not a kill reports nothing more.
    write(
        &dir,
        "memory.events",
        "low 0\nhigh 1\nmax 9\noom 3\noom_kill 3\noom_group_kill 0\n",
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn v2_kill_writes_cgroup_kill_and_says_when_the_kernel_has_none() {
    let root = fixture("kill");
    let dir = v2_tree(&root);
    assert!(!v2::kill_all(&dir).unwrap(), "no cgroup.kill: not done");
    write(&dir, "cgroup.kill", "");
    assert!(v2::kill_all(&dir).unwrap());
    assert_eq!(
        std::fs::read_to_string(dir.join("cgroup.kill")).unwrap(),
        "1"
    );
    std::fs::remove_dir_all(root).unwrap();
}

#[test]
fn v1_statistics_carry_kernel_memory_swap_and_oom_kills_as_cri_expects() {
    let root = fixture("stats-v1");
    let memory = root.join("memory/kubepods/pod1/abc");
    write(&memory, "memory.stat", "cache 4096\nrss 8192\n");
    write(&memory, "memory.usage_in_bytes", "12288\n");
    write(&memory, "memory.kmem.usage_in_bytes", "2048\n");
    write(&memory, "memory.kmem.tcp.usage_in_bytes", "0\n");
    write(&memory, "memory.memsw.usage_in_bytes", "16384\n");
    write(
        &memory,
        "memory.oom_control",
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    );
    write(&root.join("pids/kubepods/pod1/abc"), "pids.current", "3\n");
    let cgroup = ContainerCgroup::on("/kubepods/pod1/abc", Hierarchy::V1 { root: root.clone() });
    let ContainerMetrics::V1(metrics) = cgroup.metrics() else {
        panic!("v2 metrics from a v1 tree");
    };
    assert_eq!(metrics.memory.rss, 8192);
    assert_eq!(metrics.memory.kernel.usage, 2048);
    assert_eq!(metrics.memory.swap.usage, 16384);
    assert_eq!(metrics.memory_oom_control.oom_kill, 2);
    assert_eq!(metrics.pids.current, 3);
    std::fs::remove_dir_all(root).unwrap();
}
