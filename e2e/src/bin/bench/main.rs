//! `make bench`: measurements on the local cluster, printed side by side with a baseline run
//! in the same session. Never part of `make test`, never a pass/fail gate.
//!
//! - apply -> Ready latency: a bare Pod (what the sandbox's pod costs by itself) vs an
//!   AgentSandbox (operator + pod), sequentially, median and p90 over N;
//! - operator memory (VmRSS of the leader, from its /metrics) idle and with M sandboxes;
//! - the runtime: container start latency (create -> start -> exit of `true`, through
//!   containerd, `ctr run --rm`) and shim memory per pod, containerd-shim-runc-v2 vs
//!   containerd-shim-agentsandbox-v1 on the same containerd, interleaved;
//! - escape attempts: attempt -> status.security latency (p50/p99; the time the attack
//!   program made attempt k vs the time a watch saw the count reach k), and the cost of one
//!   notified (denied + reported) syscall vs an errno-only deny, in the sandbox and under runc;
//! - warm pools: create -> Ready of a bare Pod, a cold AgentSandbox and a warm claim (timed
//!   by a watch), and a burst of concurrent claims;
//! - an escape flood (512 threads x 60 s): shim RSS before/max/after, the exact count on the
//!   status, the rate of status writes, attempts per second vs runc.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentsandbox_e2e::{
    attack_image, attack_sandbox_yaml, busybox_image, busybox_pod, containerd_socket,
    operator_pods, runtime_pod, sandbox_yaml, wait_sandbox_ready, wait_until, Cluster,
    AGENTSANDBOX_NAMESPACE, IDLE_LOOP,
};
use agentsandbox_operator::api::AgentSandbox;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::{watcher, WatchStreamExt};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn bare_pod_latencies(cluster: &Cluster, n: usize) -> Vec<Duration> {
    let ns = cluster.namespace("bench-pods");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut samples = Vec::new();
    for i in 0..n {
        let name = format!("p{i:03}");
        let manifest = busybox_pod(&ns.name, &name, IDLE_LOOP);
        let started = Instant::now();
        cluster.apply(&manifest).unwrap();
        wait_until("pod Ready", Duration::from_secs(120), || async {
            let pod = pods.get(&name).await.ok()?;
            pod.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        })
        .await
        .unwrap();
        samples.push(started.elapsed());
    }
    samples
}

async fn sandbox_latencies(cluster: &Cluster, n: usize) -> Vec<Duration> {
    let ns = cluster.namespace("bench-asb");
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut samples = Vec::new();
    for i in 0..n {
        let name = format!("s{i:03}");
        let started = Instant::now();
        cluster.apply(&sandbox_yaml(&ns.name, &name, "")).unwrap();
        wait_sandbox_ready(&api, &name, Duration::from_secs(120))
            .await
            .unwrap();
        samples.push(started.elapsed());
    }
    samples
}

/// The operator leader's gauges `names`, from the /metrics of whichever replica reports the
/// most reconciles (the standby reports none): (pod, values in the order asked).
pub(crate) fn leader_metrics(cluster: &Cluster, names: &[&str]) -> Option<(String, Vec<f64>)> {
    let mut best: Option<(String, f64, Vec<f64>)> = None;
    for pod in operator_pods(cluster) {
        let path =
            format!("/api/v1/namespaces/{AGENTSANDBOX_NAMESPACE}/pods/{pod}:8080/proxy/metrics");
        let Ok(text) = cluster.kubectl_ok(&["get", "--raw", &path]) else {
            continue;
        };
        let value = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().last()?.parse::<f64>().ok())
        };
        let reconciles = value("agentsandbox_operator_reconciles_total").unwrap_or(0.0);
        let Some(values) = names.iter().map(|n| value(n)).collect::<Option<Vec<f64>>>() else {
            continue;
        };
        if best.as_ref().is_none_or(|(_, r, _)| reconciles > *r) {
            best = Some((pod.to_string(), reconciles, values));
        }
    }
    best.map(|(pod, _, values)| (pod, values))
}

/// The leader's VmRSS in MiB.
fn leader_rss(cluster: &Cluster) -> Option<(String, f64)> {
    let (pod, values) = leader_metrics(cluster, &["agentsandbox_operator_resident_memory_bytes"])?;
    Some((pod, values[0] / (1024.0 * 1024.0)))
}

/// A runtime under test: its name, containerd's runtime type, the OCI runtime the runc shim
/// runs (`ctr run --runc-binary`) and the CRI runtime handler.
struct Runtime {
    name: &'static str,
    runtime_type: &'static str,
    runc_binary: Option<fn() -> String>,
    handler: &'static str,
}

/// Debian's crun (which `make bench` installs) through its wrapper
/// (e2e/bench/crun-bench.c); the harness's containerd has a `crun` handler for the same.
fn crun() -> String {
    agentsandbox_e2e::state_dir()
        .join("bin/crun-bench")
        .display()
        .to_string()
}

const RUNTIMES: [Runtime; 3] = [
    Runtime {
        name: "runc (containerd-shim-runc-v2)",
        runtime_type: "io.containerd.runc.v2",
        runc_binary: None,
        handler: "runc",
    },
    Runtime {
        name: "crun (containerd-shim-runc-v2)",
        runtime_type: "io.containerd.runc.v2",
        runc_binary: Some(crun),
        handler: "crun",
    },
    Runtime {
        name: "agentsandbox",
        runtime_type: "io.containerd.agentsandbox.v1",
        runc_binary: None,
        handler: "agentsandbox",
    },
];
const AGENTSANDBOX: usize = 2;

fn ctr(args: &[&str]) -> std::process::Output {
    std::process::Command::new(agentsandbox_e2e::state_dir().join("bin/ctr"))
        .args(["-a", &containerd_socket(), "-n", "k8s.io"])
        .args(args)
        .output()
        .expect("ctr runs")
}

/// `ctr run` of `image` as `id` under `runtime`, with `extra` options before the image.
fn ctr_run(runtime: &Runtime, extra: &[&str], id: &str, command: &[&str]) -> std::process::Output {
    let image = busybox_image();
    let binary = runtime.runc_binary.map(|path| path());
    let mut args = vec!["run", "--runtime", runtime.runtime_type];
    if let Some(binary) = &binary {
        args.extend(["--runc-binary", binary.as_str()]);
    }
    args.extend(extra);
    args.extend([image.as_str(), id]);
    args.extend(command);
    ctr(&args)
}

/// Why each runtime cannot run here (None: it can), from one `ctr run --rm true`.
fn probe_runtimes() -> Vec<Option<String>> {
    RUNTIMES
        .iter()
        .enumerate()
        .map(|(index, runtime)| {
            let output = ctr_run(
                runtime,
                &["--rm"],
                &format!("bench-probe-{index}"),
                &["true"],
            );
            (!output.status.success()).then(|| {
                let stderr = String::from_utf8_lossy(&output.stderr);
                let reason = stderr.lines().last().unwrap_or("").trim().to_string();
                println!("{}: unavailable on this machine: {reason}", runtime.name);
                reason
            })
        })
        .collect()
}

/// create -> start -> exit of `true` -> delete, through containerd, per available runtime.
fn runtime_start_latencies(n: usize, unavailable: &[Option<String>]) -> Vec<Vec<Duration>> {
    let mut samples = vec![Vec::new(); RUNTIMES.len()];
    // Two warm-up rounds, then n measured ones, the runtimes interleaved.
    for round in 0..n + 2 {
        for (index, runtime) in RUNTIMES.iter().enumerate() {
            if unavailable[index].is_some() {
                continue;
            }
            let id = format!("bench-start-{index}-{round}");
            let started = Instant::now();
            let output = ctr_run(runtime, &["--rm"], &id, &["true"]);
            let elapsed = started.elapsed();
            assert!(
                output.status.success(),
                "ctr run under {}: {output:?}",
                runtime.name
            );
            if round >= 2 {
                samples[index].push(elapsed);
            }
        }
    }
    samples
}

fn kib_field(text: &str, field: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// A process's (RSS, PSS) in MiB and its threads. PSS divides pages shared with other
/// processes (the shim binary's code, mapped by every shim on the node) among them: the
/// per-pod cost.
fn process_memory(pid: &str) -> Option<(f64, f64, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some((
        kib_field(&status, "VmRSS:")? / 1024.0,
        kib_field(&rollup, "Pss:")? / 1024.0,
        kib_field(&status, "Threads:")? as u32,
    ))
}

/// Children of `pid`, from every thread (a child belongs to the thread that forked it).
fn children(pid: &str) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect()
}

/// The sealed memfds a process maps (the launcher zygote runs from one): (inode, bytes).
fn mapped_memfds(pid: &str) -> Vec<(u64, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    let mut found: Vec<(u64, u64)> = Vec::new();
    for line in maps.lines().filter(|l| l.contains("/memfd:")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let Some(inode) = fields.get(4).and_then(|i| i.parse::<u64>().ok()) else {
            continue;
        };
        if found.iter().any(|(i, _)| *i == inode) {
            continue;
        }
        // The file's size, through the mapping (map_files needs root, which the bench has).
        let range = fields[0];
        let size = std::fs::metadata(format!("/proc/{pid}/map_files/{range}"))
            .map(|m| m.len())
            .unwrap_or(0);
        found.push((inode, size));
    }
    found
}

fn shim_pid(id: &str) -> Option<String> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        name.parse::<u32>().ok()?;
        let cmdline = std::fs::read(format!("/proc/{name}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args.iter().any(|a| *a == b"-address")
            && args
                .windows(2)
                .any(|w| w[0] == b"-id" && w[1] == id.as_bytes());
        is_shim.then_some(name)
    })
}

/// Per pod: the shim's memory and that of its helper processes (the agentsandbox launcher
/// zygote with its sealed memfd; runc's shim has none once the container runs).
#[derive(Clone, Copy, Default)]
struct ShimMemory {
    rss: f64,
    pss: f64,
    /// Threads of the shim process itself.
    threads: f64,
    /// PSS of the shim's helper processes (the launcher zygote), counted in `pss_total`.
    helpers: f64,
    /// The helpers' sealed memfds: shmem the node holds whether mapped or not, divided by
    /// the pods that share it; counted in `pss_total` (on top of the mapped part the PSS
    /// already has: an overcount, against us).
    memfd: f64,
}

impl ShimMemory {
    fn pss_total(&self) -> f64 {
        self.pss + self.helpers + self.memfd
    }
}

/// A shim's memory, and its helpers' memfds by inode.
fn shim_memory_of(pid: &str) -> Option<(ShimMemory, Vec<(u64, u64)>)> {
    let (rss, pss, threads) = process_memory(pid)?;
    // Only helpers: the container's own processes are not the shim's cost.
    let helpers: Vec<String> = children(pid)
        .into_iter()
        .filter(|child| {
            std::fs::read(format!("/proc/{child}/cmdline"))
                .is_ok_and(|c| c.starts_with(b"agentsandbox-launcher"))
        })
        .collect();
    let helper_pss = helpers
        .iter()
        .filter_map(|child| Some(process_memory(child)?.1))
        .sum();
    let memfds = helpers
        .iter()
        .flat_map(|child| mapped_memfds(child))
        .collect();
    Some((
        ShimMemory {
            rss,
            pss,
            threads: threads as f64,
            helpers: helper_pss,
            memfd: 0.0,
        },
        memfds,
    ))
}

/// Average memory of the shims serving `pods` running containers (one pod each).
fn shim_memory(runtime: &Runtime, tag: usize, pods: usize) -> Option<ShimMemory> {
    let ids: Vec<String> = (0..pods).map(|i| format!("bench-mem-{tag}-{i}")).collect();
    for id in &ids {
        let output = ctr_run(runtime, &["-d"], id, &["sleep", "600"]);
        assert!(
            output.status.success(),
            "ctr run -d under {}: {output:?}",
            runtime.name
        );
    }
    let measured: Vec<(ShimMemory, Vec<(u64, u64)>)> = ids
        .iter()
        .filter_map(|id| shim_pid(id).as_deref().and_then(shim_memory_of))
        .collect();
    let mut memfds: Vec<(u64, u64)> = measured.iter().flat_map(|(_, m)| m.clone()).collect();
    memfds.sort();
    memfds.dedup();
    let memfd_mib = memfds.iter().map(|(_, size)| *size as f64).sum::<f64>() / (1024.0 * 1024.0);
    let samples: Vec<ShimMemory> = measured.into_iter().map(|(m, _)| m).collect();
    for id in &ids {
        let _ = ctr(&["task", "kill", "-s", "SIGKILL", id]);
        let _ = wait_until_exit(id);
        let _ = ctr(&["task", "rm", "-f", id]);
        let _ = ctr(&["container", "rm", id]);
    }
    (samples.len() == pods).then(|| {
        let n = pods as f64;
        let mean = |f: fn(&ShimMemory) -> f64| samples.iter().map(f).sum::<f64>() / n;
        ShimMemory {
            rss: mean(|s| s.rss),
            pss: mean(|s| s.pss),
            threads: mean(|s| s.threads),
            helpers: mean(|s| s.helpers),
            memfd: memfd_mib / n,
        }
    })
}

fn wait_until_exit(id: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let out = ctr(&["task", "ls"]);
        let listing = String::from_utf8_lossy(&out.stdout);
        if !listing
            .lines()
            .any(|l| l.starts_with(id) && l.contains("RUNNING"))
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `crictl` against the bench's own containerd (`socket`).
fn crictl_at(socket: &str, args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new(agentsandbox_e2e::state_dir().join("bin/crictl"))
        .arg("--runtime-endpoint")
        .arg(format!("unix://{socket}"))
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "crictl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// The bench's own containerd (e2e/bench-containerd.sh): the kubelet stops pod sandboxes it
/// did not create on the cluster's.
fn bench_containerd(action: &str) -> String {
    let output =
        std::process::Command::new(agentsandbox_e2e::repo_root().join("e2e/bench-containerd.sh"))
            .arg(action)
            .output()
            .expect("e2e/bench-containerd.sh runs");
    assert!(
        output.status.success(),
        "e2e/bench-containerd.sh {action}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// `crictl runp` + `create` + `start` of a pod with one `sleep` container, per runtime handler
/// (the kubelet's own sequence, without the kubelet), interleaved; each pod removed after.
fn cri_start_latencies(n: usize, unavailable: &[Option<String>]) -> Vec<Vec<Duration>> {
    let socket = bench_containerd("start");
    let dir = std::env::temp_dir().join(format!("agentsandbox-bench-cri-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let container = dir.join("container.json");
    std::fs::write(
        &container,
        serde_json::json!({
            "metadata": {"name": "main"},
            "image": {"image": busybox_image()},
            "command": ["sleep", "600"],
            "linux": {},
        })
        .to_string(),
    )
    .unwrap();
    let mut samples = vec![Vec::new(); RUNTIMES.len()];
    for round in 0..n + 2 {
        for (index, runtime) in RUNTIMES.iter().enumerate() {
            if unavailable[index].is_some() {
                continue;
            }
            let pod = dir.join(format!("pod-{index}-{round}.json"));
            std::fs::write(
                &pod,
                serde_json::json!({
                    "metadata": {
                        "name": format!("bench-cri-{index}-{round}"),
                        "namespace": "bench-cri",
                        "uid": format!("bench-cri-{}-{index}-{round}", std::process::id()),
                    },
                    "log_directory": dir.join("logs").display().to_string(),
                    "linux": {},
                })
                .to_string(),
            )
            .unwrap();
            let (pod, container) = (pod.display().to_string(), container.display().to_string());
            let started = Instant::now();
            let started_pod = (|| {
                let pod_id = crictl_at(&socket, &["runp", "--runtime", runtime.handler, &pod])?;
                let container_id = crictl_at(&socket, &["create", &pod_id, &container, &pod])
                    .and_then(|id| crictl_at(&socket, &["start", &id]));
                Ok::<_, String>((pod_id, container_id))
            })();
            let elapsed = started.elapsed();
            let (pod_id, container) =
                started_pod.unwrap_or_else(|e| panic!("{}: {e}", runtime.name));
            let _ = crictl_at(&socket, &["stopp", &pod_id]);
            let _ = crictl_at(&socket, &["rmp", "-f", &pod_id]);
            container.unwrap_or_else(|e| panic!("{}: {e}", runtime.name));
            if round >= 2 {
                samples[index].push(elapsed);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    bench_containerd("stop");
    samples
}

/// The ratios a goal is stated in (n/a where a runtime did not run here).
fn print_ratios(what: &str, values: &[Option<f64>]) {
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}x", a / b),
        _ => "n/a".to_string(),
    };
    let ours = values[AGENTSANDBOX];
    println!(
        "{what}: agentsandbox / runc {}, agentsandbox / crun {}, crun / runc {}",
        ratio(ours, values[0]),
        ratio(ours, values[1]),
        ratio(values[1], values[0])
    );
}

fn print_medians(samples: &mut [Vec<Duration>]) -> Vec<Option<f64>> {
    let medians: Vec<Option<f64>> = samples
        .iter_mut()
        .map(|s| (!s.is_empty()).then(|| ms(percentile(s, 0.5))))
        .collect();
    println!("{:<32} {:>10}", "", "p50 ms");
    for (runtime, median) in RUNTIMES.iter().zip(&medians) {
        match median {
            Some(median) => println!("{:<32} {median:>10.1}", runtime.name),
            None => println!("{:<32} {:>10}", runtime.name, "n/a"),
        }
    }
    medians
}

fn runtime_bench(n: usize) {
    println!("== runtime: create -> start -> exit of `true` (ctr run --rm), n={n}, interleaved");
    let unavailable = probe_runtimes();
    let medians = print_medians(&mut runtime_start_latencies(n, &unavailable));
    print_ratios(
        "container start p50 (goal: agentsandbox <= 0.5x runc and below crun)",
        &medians,
    );

    let pods = 20;
    println!(
        "\n== runtime: shim memory per pod, {pods} pods running per runtime (averages; agentsandbox's PSS includes its launcher zygote and the zygote's sealed memfd)"
    );
    let memory: Vec<Option<ShimMemory>> = RUNTIMES
        .iter()
        .enumerate()
        .map(|(i, runtime)| {
            unavailable[i]
                .is_none()
                .then(|| shim_memory(runtime, i, pods))
                .flatten()
        })
        .collect();
    for (runtime, value) in RUNTIMES.iter().zip(&memory) {
        match value {
            Some(m) => println!(
                "{:<32} RSS {:>6.1} MiB   PSS {:>6.1} MiB (shim {:.1}, helpers {:.1}, memfd {:.1})   threads {:.1}",
                runtime.name,
                m.rss,
                m.pss_total(),
                m.pss,
                m.helpers,
                m.memfd,
                m.threads
            ),
            None => println!("{:<32} unavailable", runtime.name),
        }
    }
    let pss: Vec<Option<f64>> = memory.iter().map(|m| m.map(|m| m.pss_total())).collect();
    print_ratios(
        "shim PSS per pod (goal: agentsandbox <= 0.25x runc, <= 4 threads)",
        &pss,
    );

    println!("\n== runtime: CRI pod + container start (crictl runp + create + start), n={n}, interleaved");
    let medians = print_medians(&mut cri_start_latencies(n, &unavailable));
    print_ratios(
        "CRI pod + container start p50 (goal: agentsandbox <= 0.7x runc)",
        &medians,
    );
}

/// Lines "attempt K <unix-ns>" of the attack program's `paced` mode.
fn attempt_times(logs: &str) -> Vec<SystemTime> {
    logs.lines()
        .filter_map(|l| l.strip_prefix("attempt "))
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map(|ns| UNIX_EPOCH + Duration::from_nanos(ns))
        .collect()
}

/// "cost calls N notified_ns A errno_ns B" of the attack program's `cost` mode.
fn cost_line(logs: &str) -> Option<(f64, f64)> {
    let words: Vec<&str> = logs
        .lines()
        .find(|l| l.starts_with("cost "))?
        .split_whitespace()
        .collect();
    Some((words.get(4)?.parse().ok()?, words.get(6)?.parse().ok()?))
}

async fn escapes_bench(cluster: &Cluster) {
    let attempts = env_usize("BENCH_ESCAPES_N", 40);
    println!(
        "== escape attempt -> status.security.escapeAttempts, {attempts} attempts 250 ms apart"
    );
    let ns = cluster.namespace("bench-escapes");
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    // A watch sees each status write as it happens.
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(SystemTime, i64)>>> = Default::default();
    let recorder = seen.clone();
    let watch = tokio::spawn(
        watcher(
            api.clone(),
            watcher::Config::default().fields("metadata.name=paced"),
        )
        .applied_objects()
        .for_each(move |s| {
            if let Ok(s) = s {
                let count = s
                    .status
                    .and_then(|st| st.security)
                    .map_or(0, |sec| sec.escape_attempts);
                recorder.lock().unwrap().push((SystemTime::now(), count));
            }
            futures::future::ready(())
        }),
    );
    cluster
        .apply(&attack_sandbox_yaml(
            &ns.name,
            "paced",
            &["paced", &attempts.to_string(), "250"],
            "",
        ))
        .unwrap();
    let logs = wait_until(
        "the paced attack's end",
        Duration::from_secs(180),
        || async {
            let logs = cluster
                .kubectl_ok(&["-n", &ns.name, "logs", "paced"])
                .ok()?;
            logs.contains("done ").then_some(logs)
        },
    )
    .await
    .unwrap();
    let made = attempt_times(&logs);
    let _ = wait_until("the last count", Duration::from_secs(10), || async {
        let last = seen.lock().unwrap().last().map(|(_, c)| *c);
        (last >= Some(made.len() as i64)).then_some(())
    })
    .await;
    watch.abort();
    let seen = seen.lock().unwrap().clone();
    let mut latencies: Vec<Duration> = made
        .iter()
        .enumerate()
        .filter_map(|(k, at)| {
            let (when, _) = seen.iter().find(|(_, c)| *c > k as i64)?;
            Some(when.duration_since(*at).unwrap_or(Duration::ZERO))
        })
        .collect();
    if latencies.len() == made.len() && !latencies.is_empty() {
        let (p50, p99) = (
            percentile(&mut latencies, 0.5),
            percentile(&mut latencies, 0.99),
        );
        println!("{:<36} {:>10} {:>10}", "", "p50 ms", "p99 ms");
        println!(
            "{:<36} {:>10.1} {:>10.1}",
            "agentsandbox (shim -> node agent)",
            ms(p50),
            ms(p99)
        );
        println!("runc / agent-sandbox: no escape reporting at all (nothing to compare)");
    } else {
        println!(
            "only {} of {} attempts were seen on the status",
            latencies.len(),
            made.len()
        );
    }

    println!("\n== cost of one denied syscall, ns per call (mean of 2000 each, in a pod)");
    let calls = "2000";
    cluster
        .apply(&attack_sandbox_yaml(&ns.name, "cost", &["cost", calls], ""))
        .unwrap();
    cluster
        .apply(&runtime_pod(
            &ns.name,
            "cost-runc",
            None,
            &attack_image(),
            &format!("agentsandbox-attack cost {calls}"),
        ))
        .unwrap();
    let cost_of = |pod: &'static str| {
        let ns = ns.name.clone();
        async move {
            wait_until(
                &format!("{pod}'s figures"),
                Duration::from_secs(120),
                || async {
                    let logs = cluster.kubectl_ok(&["-n", &ns, "logs", pod]).ok()?;
                    cost_line(&logs)
                },
            )
            .await
            .ok()
        }
    };
    let ours = cost_of("cost").await;
    let runc = cost_of("cost-runc").await;
    println!("{:<36} {:>14} {:>14}", "", "unshare(USER)", "mbind");
    if let Some((notified, errno)) = ours {
        println!(
            "{:<36} {:>11.1} us {:>11.1} us",
            "agentsandbox (notify / errno)",
            notified / 1000.0,
            errno / 1000.0
        );
        println!(
            "added cost of reporting one attempt: {:.1} us ({:.0}x an errno-only deny)",
            (notified - errno) / 1000.0,
            notified / errno
        );
    }
    if let Some((unshare, errno_only)) = runc {
        println!(
            "{:<36} {:>11.1} us {:>11.1} us",
            "runc RuntimeDefault (errno / errno)",
            unshare / 1000.0,
            errno_only / 1000.0
        );
    }
}

/// The pod sandbox id of a pod (its shim's `-id`).
fn pod_sandbox_id(namespace: &str, pod: &str) -> Option<String> {
    let out =
        agentsandbox_e2e::crictl(&["pods", "-q", "--name", pod, "--namespace", namespace]).ok()?;
    out.split_whitespace().next().map(String::from)
}

/// What one flood did: attempts made, seconds, shim RSS (MiB) before, at most and after.
struct Flood {
    attempts: u64,
    seconds: f64,
    rss: Option<(f64, f64, f64)>,
}

/// Runs `pod` (the attack program's flood-threads mode) and samples its shim's RSS until the
/// program prints its total.
async fn flood(cluster: &Cluster, namespace: &str, pod: &str, budget: Duration) -> Option<Flood> {
    let shim = wait_until("the flood's shim", Duration::from_secs(120), || async {
        let id = pod_sandbox_id(namespace, pod)?;
        shim_pid(&id)
    })
    .await
    .ok()?;
    let rss = || process_memory(&shim).map(|(rss, _, _)| rss);
    let before = rss();
    let mut max = before.unwrap_or(0.0);
    let deadline = Instant::now() + budget;
    let line = loop {
        if let Some(now) = rss() {
            max = max.max(now);
        }
        let logs = cluster
            .kubectl_ok(&["-n", namespace, "logs", pod])
            .unwrap_or_default();
        if let Some(line) = logs.lines().find(|l| l.starts_with("flood-threads ")) {
            break line.to_string();
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let words: Vec<&str> = line.split_whitespace().collect();
    let attempts = words
        .windows(2)
        .find(|w| w[0] == "attempts")
        .and_then(|w| w[1].parse().ok())?;
    let seconds: f64 = words
        .windows(2)
        .find(|w| w[0] == "seconds")
        .and_then(|w| w[1].parse().ok())?;
    Some(Flood {
        attempts,
        seconds,
        rss: before.map(|b| (b, max, rss().unwrap_or(0.0))),
    })
}

/// Issue 14's flood: THREADS threads of a denied, reported call for SECONDS, under the
/// agentsandbox runtime and under runc; the shim's memory, the exact count on the status and
/// the rate of status writes.
async fn flood_bench(cluster: &Cluster) {
    let threads = env_usize("BENCH_FLOOD_THREADS", 512).to_string();
    let seconds = env_usize("BENCH_FLOOD_SECONDS", 60);
    println!(
        "== escape flood: {threads} threads x {seconds} s of unshare(CLONE_NEWUSER) per runtime"
    );
    let ns = cluster.namespace("bench-flood");
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let writes: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String)>>> = Default::default();
    let recorder = writes.clone();
    let watch = tokio::spawn(
        watcher(
            api.clone(),
            watcher::Config::default().fields("metadata.name=flood"),
        )
        .applied_objects()
        .for_each(move |s| {
            if let Ok(s) = s {
                let version = s.metadata.resource_version.unwrap_or_default();
                let mut seen = recorder.lock().unwrap();
                if seen.last().is_none_or(|(_, v)| *v != version) {
                    seen.push((Instant::now(), version));
                }
            }
            futures::future::ready(())
        }),
    );
    let args = ["flood-threads", threads.as_str(), &seconds.to_string()];
    let budget = Duration::from_secs(seconds as u64 + 240);
    cluster
        .apply(&attack_sandbox_yaml(&ns.name, "flood", &args, ""))
        .unwrap();
    let started = Instant::now();
    let ours = flood(cluster, &ns.name, "flood", budget).await;
    let flood_end = Instant::now();
    let exact = match &ours {
        Some(f) => wait_until(
            "the exact count on the status",
            Duration::from_secs(300),
            || async {
                let s = api.get("flood").await.ok()?;
                let count = s.status?.security?.escape_attempts;
                (count as u64 == f.attempts).then(Instant::now)
            },
        )
        .await
        .ok(),
        None => None,
    };
    watch.abort();
    let status_writes = writes
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t >= started)
        .count();
    cluster
        .kubectl_ok(&[
            "-n",
            &ns.name,
            "delete",
            "agentsandbox",
            "flood",
            "--wait=true",
        ])
        .ok();

    cluster
        .apply(&runtime_pod(
            &ns.name,
            "flood-runc",
            None,
            &attack_image(),
            &format!("agentsandbox-attack {}", args.join(" ")),
        ))
        .unwrap();
    let runc = flood(cluster, &ns.name, "flood-runc", budget).await;

    println!(
        "{:<30} {:>12} {:>10} {:>28}",
        "", "attempts", "per s", "shim RSS MiB before/max/after"
    );
    for (name, result) in [
        ("agentsandbox (notify+report)", &ours),
        ("runc RuntimeDefault (errno)", &runc),
    ] {
        match result {
            Some(f) => println!(
                "{name:<30} {:>12} {:>10.0} {:>28}",
                f.attempts,
                f.attempts as f64 / f.seconds,
                f.rss.map_or("unavailable".into(), |(b, m, a)| format!(
                    "{b:.1} / {m:.1} / {a:.1}"
                ))
            ),
            None => println!("{name:<30} did not finish within its budget"),
        }
    }
    if let (Some(o), Some(r)) = (&ours, &runc) {
        println!(
            "ratio agentsandbox / runc attempts per s: {:.4}x (each of ours is a round trip to the shim's listener and a record; runc's is an errno in the kernel)",
            (o.attempts as f64 / o.seconds) / (r.attempts as f64 / r.seconds)
        );
    }
    match (&ours, exact) {
        (Some(f), Some(at)) => println!(
            "status.security.escapeAttempts == {} (exact) {:.1} s after the flood ended",
            f.attempts,
            at.saturating_duration_since(flood_end).as_secs_f64()
        ),
        (Some(f), None) => println!(
            "status.security.escapeAttempts did NOT reach {} within 300 s",
            f.attempts
        ),
        _ => {}
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "status writes to the sandbox: {status_writes} in {elapsed:.0} s ({:.2}/s; the node agent's limit is a burst of 3, then 4/s)",
        status_writes as f64 / elapsed
    );
}

mod dns;
mod kwok;
mod pools;

#[tokio::main]
async fn main() {
    let sections = std::env::var("BENCH_SECTIONS")
        .unwrap_or_else(|_| "runtime,escapes,flood,dns,pools,cluster,kwok".into());
    if sections.contains("runtime") {
        runtime_bench(env_usize("BENCH_RUNTIME_N", 30));
        println!();
    }
    if sections.contains("escapes") {
        escapes_bench(&Cluster::connect().await).await;
        println!();
    }
    if sections.contains("flood") {
        flood_bench(&Cluster::connect().await).await;
        println!();
    }
    if sections.contains("dns") {
        dns::dns_bench(
            &Cluster::connect().await,
            env_usize("BENCH_DNS_SANDBOXES", 100),
            10,
        )
        .await;
        println!();
    }
    if sections.contains("pools") {
        pools::pools_bench(
            &Cluster::connect().await,
            env_usize("BENCH_CLAIMS", 20),
            env_usize("BENCH_BURST", 50),
        )
        .await;
        println!();
    }
    if sections.contains("cluster") {
        cluster_bench(&Cluster::connect().await).await;
        println!();
    }
    if sections.contains("kwok") {
        kwok::kwok_bench(
            &Cluster::connect().await,
            env_usize("BENCH_KWOK_NODES", 100),
            env_usize("BENCH_KWOK_SANDBOXES", 10_000),
            env_usize("BENCH_KWOK_FLOOR_PODS", 2_000),
        )
        .await;
        println!();
    }
}

/// apply -> Ready of bare Pods vs AgentSandboxes, and the operator's memory with many
/// suspended sandboxes.
async fn cluster_bench(cluster: &Cluster) {
    let n = env_usize("BENCH_SANDBOXES", 20);
    let m = env_usize("BENCH_SCALE", 500);

    println!("== apply -> Ready, sequential, n={n} (runc; same node, same image)");
    let mut pods = bare_pod_latencies(cluster, n).await;
    let mut sandboxes = sandbox_latencies(cluster, n).await;
    let (pod50, pod90) = (percentile(&mut pods, 0.5), percentile(&mut pods, 0.9));
    let (asb50, asb90) = (
        percentile(&mut sandboxes, 0.5),
        percentile(&mut sandboxes, 0.9),
    );
    println!("{:<28} {:>10} {:>10}", "", "p50 ms", "p90 ms");
    println!("{:<28} {:>10.0} {:>10.0}", "bare Pod", ms(pod50), ms(pod90));
    println!(
        "{:<28} {:>10.0} {:>10.0}",
        "AgentSandbox (operator)",
        ms(asb50),
        ms(asb90)
    );
    println!(
        "ratio AgentSandbox / Pod: p50 {:.2}x",
        ms(asb50) / ms(pod50)
    );

    println!("\n== operator memory with {m} sandboxes (Suspended: objects, policies, no pods)");
    let before = leader_rss(cluster);
    let ns = cluster.namespace("bench-scale");
    let manifests: Vec<String> = (0..m)
        .map(|i| {
            sandbox_yaml(
                &ns.name,
                &format!("m{i:04}"),
                "  operatingMode: Suspended\n",
            )
        })
        .collect();
    let started = Instant::now();
    for chunk in manifests.chunks(100) {
        cluster.apply(&chunk.join("---\n")).unwrap();
    }
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    wait_until(
        "every sandbox reconciled",
        Duration::from_secs(600),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?.items;
            let done = list
                .iter()
                .filter(|s| s.status.as_ref().and_then(|st| st.phase).is_some())
                .count();
            (done == m).then_some(())
        },
    )
    .await
    .unwrap();
    let converged = started.elapsed();
    let after = leader_rss(cluster);
    match (before, after) {
        (Some((_, b)), Some((pod, a))) => {
            println!("leader {pod}: RSS {b:.1} MiB idle -> {a:.1} MiB with {m} sandboxes");
        }
        _ => println!("operator RSS unavailable (metrics not reachable)"),
    }
    println!(
        "{m} sandboxes reconciled to a phase in {:.1} s",
        converged.as_secs_f64()
    );
}
