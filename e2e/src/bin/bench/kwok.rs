//! The operator at scale: kwok fakes nodes (and marks the pods bound to them Running and
//! Ready), so the API server, the scheduler and the operator do all their work for thousands
//! of sandboxes while no container runs. Measured, in one run on the same API server:
//!
//! - the floor: a plain client creates bare pods on the fake nodes (32 requests in flight);
//!   pods Ready per second from the first create to the last Ready;
//! - AgentSandboxes created the same way: time until all are Ready, sandboxes Ready per
//!   second, the ratio to the floor, the operator leader's RSS (peak) and CPU time, and API
//!   requests per object from the API server's own `apiserver_request_total`.

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentsandbox_e2e::{busybox_image, busybox_pod, state_dir, wait_until, Cluster, IDLE_LOOP};
use agentsandbox_operator::api::AgentSandbox;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;

/// Label and taint of the fake nodes; kwok manages the nodes with this annotation.
const KWOK_KEY: &str = "kwok.x-k8s.io/node";
const IN_FLIGHT: usize = 32;

fn toleration() -> serde_json::Value {
    serde_json::json!({"key": KWOK_KEY, "operator": "Exists", "effect": "NoSchedule"})
}

fn fake_node(name: &str) -> Node {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_KEY: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                // What the agentsandbox RuntimeClass schedules onto (the node agent sets it on
                // a real node).
                "agentsandbox.io/runtime": "installed",
            },
        },
        "spec": {"taints": [{"key": KWOK_KEY, "value": "fake", "effect": "NoSchedule"}]},
        "status": {
            "allocatable": {"cpu": "1000", "memory": "4Ti", "pods": "250"},
            "capacity": {"cpu": "1000", "memory": "4Ti", "pods": "250"},
        },
    }))
    .expect("a valid node")
}

/// kwok, started for the bench and stopped (by its pid) when dropped.
struct Kwok(Child);

impl Kwok {
    fn start() -> Kwok {
        let binary = state_dir().join("bin/kwok");
        let log = std::fs::File::create(state_dir().join("kwok.log")).expect("kwok's log");
        let mut command = Command::new(&binary);
        // kwok goes when the bench goes, however it ends.
        // SAFETY: prctl only, in the child before exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command
            .arg("--kubeconfig")
            .arg(state_dir().join("kubeconfig"))
            // Its stages, written by e2e/bench-deps.sh.
            .arg("--config")
            .arg(state_dir().join("kwok-stages.yaml"))
            .args([
                "--manage-all-nodes=false",
                &format!("--manage-nodes-with-annotation-selector={KWOK_KEY}=fake"),
                // Pod addresses only on paper: nothing is routed to them.
                "--cidr=10.250.0.0/16",
                "--node-ip=10.250.255.254",
                "--node-lease-duration-seconds=40",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("starting {} (make bench builds it): {e}", binary.display())
            });
        Kwok(child)
    }
}

impl Drop for Kwok {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Counts the objects of a namespace seen Ready by a watch started before any is created.
#[derive(Clone, Default)]
struct ReadyCount {
    ready: Arc<Mutex<HashSet<String>>>,
}

impl ReadyCount {
    fn watch<K>(api: Api<K>, ready: fn(&K) -> bool) -> ReadyCount
    where
        K: kube::Resource
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let count = ReadyCount::default();
        let writer = count.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(event) = events.next().await {
                if let Ok(object) = event {
                    if ready(&object) {
                        writer.ready.lock().unwrap().insert(object.name_any());
                    }
                }
            }
        });
        count
    }

    fn get(&self) -> usize {
        self.ready.lock().unwrap().len()
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn sandbox_ready(sandbox: &AgentSandbox) -> bool {
    sandbox
        .condition("Ready")
        .is_some_and(|c| c.status == "True")
}

/// `apiserver_request_total` summed by "VERB resource[/subresource]".
fn api_requests(cluster: &Cluster) -> BTreeMap<String, f64> {
    let text = cluster
        .kubectl_ok(&["get", "--raw", "/metrics"])
        .unwrap_or_default();
    let mut sums = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split(',')
                .find_map(|l| l.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let mut key = format!("{} {}", label("verb"), label("resource"));
        let sub = label("subresource");
        if !sub.is_empty() {
            key = format!("{key}/{sub}");
        }
        *sums.entry(key).or_insert(0.0) += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    sums
}

fn requests_between(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> Vec<(String, f64)> {
    let mut delta: Vec<(String, f64)> = after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, v)| *v > 0.0)
        .collect();
    delta.sort_by(|a, b| b.1.total_cmp(&a.1));
    delta
}

fn print_requests(what: &str, objects: usize, delta: &[(String, f64)]) -> f64 {
    let total: f64 = delta.iter().map(|(_, v)| v).sum();
    println!(
        "API requests during {what}: {total:.0} ({:.1} per object); largest:",
        total / objects as f64
    );
    for (key, value) in delta.iter().take(8) {
        println!(
            "  {key:<40} {value:>9.0} ({:.2} per object)",
            value / objects as f64
        );
    }
    total
}

/// (RSS MiB, CPU seconds) of the operator leader (the replica that reconciles).
fn operator_figures(cluster: &Cluster) -> Option<(f64, f64)> {
    let (_, values) = super::leader_metrics(
        cluster,
        &[
            "agentsandbox_operator_resident_memory_bytes",
            "agentsandbox_operator_cpu_seconds",
        ],
    )?;
    Some((values[0] / (1024.0 * 1024.0), values[1]))
}

/// Creates `count` objects, `IN_FLIGHT` requests at a time; returns how long the creates took.
async fn create_all<K>(api: &Api<K>, objects: Vec<K>) -> Duration
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    let started = Instant::now();
    let params = PostParams::default();
    futures::stream::iter(objects)
        .map(|object| {
            let api = api.clone();
            let params = params.clone();
            async move { api.create(&params, &object).await.map(|_| ()) }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<()>>()
        .await
        .expect("every create accepted");
    started.elapsed()
}

/// Waits until `count` reports `target`, sampling the operator's RSS peak meanwhile.
async fn wait_ready(
    cluster: &Cluster,
    count: &ReadyCount,
    target: usize,
    timeout: Duration,
    rss_peak: &mut f64,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut sampled = Instant::now() - Duration::from_secs(10);
    while Instant::now() < deadline {
        if count.get() >= target {
            return true;
        }
        if sampled.elapsed() >= Duration::from_secs(5) {
            if let Some((rss, _)) = operator_figures(cluster) {
                *rss_peak = rss_peak.max(rss);
            }
            sampled = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

async fn wait_gone<K>(api: &Api<K>, what: &str, timeout: Duration)
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let gone = wait_until(what, timeout, || async {
        api.list(&ListParams::default().limit(1))
            .await
            .ok()
            .filter(|l| l.items.is_empty())
            .map(|_| ())
    })
    .await;
    if let Err(err) = gone {
        println!("cleanup: {err}");
    }
}

pub async fn kwok_bench(cluster: &Cluster, nodes: usize, sandboxes: usize, floor_pods: usize) {
    println!(
        "== operator at scale: {sandboxes} AgentSandboxes on {nodes} kwok nodes, against {floor_pods} bare pods created by a plain client ({IN_FLIGHT} requests in flight)"
    );
    // A quiet API server: the sections before leave namespaces terminating (the operator
    // cleans up their sandboxes), which would be counted here.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cluster.client.clone());
    let quiet = wait_until(
        "earlier bench namespaces gone",
        Duration::from_secs(900),
        || async {
            let list = namespaces.list(&ListParams::default()).await.ok()?;
            (!list.items.iter().any(|n| {
                n.name_any().starts_with("e2e-bench-") && n.metadata.deletion_timestamp.is_some()
            }))
            .then_some(())
        },
    )
    .await;
    if let Err(err) = quiet {
        println!("(measured on a busy API server: {err})");
    }
    let _kwok = Kwok::start();
    let node_api: Api<Node> = Api::all(cluster.client.clone());
    let names: Vec<String> = (0..nodes).map(|i| format!("kwok-node-{i:03}")).collect();
    for name in &names {
        let _ = node_api.delete(name, &DeleteParams::default()).await;
    }
    create_all(&node_api, names.iter().map(|n| fake_node(n)).collect()).await;
    wait_until("the kwok nodes Ready", Duration::from_secs(120), || async {
        let list = node_api
            .list(&ListParams::default().labels("type=kwok"))
            .await
            .ok()?;
        let ready = list
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        (ready == nodes).then_some(())
    })
    .await
    .expect("kwok marks its nodes Ready (see .e2e/kwok.log)");

    // The floor: bare pods.
    let floor = {
        let ns = cluster.namespace("bench-kwok-pods");
        let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
        let count = ReadyCount::watch(pods.clone(), pod_ready);
        let objects: Vec<Pod> = (0..floor_pods)
            .map(|i| {
                let mut pod = busybox_pod(&ns.name, &format!("p{i:05}"), IDLE_LOOP);
                let spec = pod.spec.as_mut().unwrap();
                spec.node_selector = Some([("type".to_string(), "kwok".to_string())].into());
                spec.tolerations = Some(vec![serde_json::from_value(toleration()).unwrap()]);
                spec.runtime_class_name = None;
                pod
            })
            .collect();
        let before = api_requests(cluster);
        let started = Instant::now();
        let created = create_all(&pods, objects).await;
        let mut unused = 0.0;
        let all = wait_ready(
            cluster,
            &count,
            floor_pods,
            Duration::from_secs(900),
            &mut unused,
        )
        .await;
        let took = started.elapsed();
        let after = api_requests(cluster);
        let rate = floor_pods as f64 / took.as_secs_f64();
        println!(
            "bare pods: {floor_pods} created in {:.1} s ({:.0}/s), {} Ready after {:.1} s: {rate:.0} pods Ready/s",
            created.as_secs_f64(),
            floor_pods as f64 / created.as_secs_f64(),
            if all { "all" } else { "NOT all" },
            took.as_secs_f64()
        );
        print_requests(
            "the bare pods",
            floor_pods,
            &requests_between(&before, &after),
        );
        let _ = pods
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await;
        wait_gone(&pods, "the bare pods deleted", Duration::from_secs(600)).await;
        rate
    };

    // The sandboxes.
    let ns = cluster.namespace("bench-kwok");
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let count = ReadyCount::watch(api.clone(), sandbox_ready);
    let objects: Vec<AgentSandbox> = (0..sandboxes)
        .map(|i| {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "agentsandbox.io/v1alpha1",
                "kind": "AgentSandbox",
                "metadata": {"name": format!("s{i:05}"), "namespace": ns.name},
                "spec": {
                    "image": busybox_image(),
                    "command": ["sh", "-c", IDLE_LOOP],
                    "resources": {
                        "requests": {"cpu": "5m", "memory": "8Mi"},
                        "limits": {"cpu": "500m", "memory": "64Mi"},
                    },
                    "podTemplate": {
                        "nodeSelector": {"type": "kwok"},
                        "tolerations": [toleration()],
                    },
                },
            }))
            .expect("a valid AgentSandbox")
        })
        .collect();
    let operator_before = operator_figures(cluster);
    let before = api_requests(cluster);
    let started = Instant::now();
    let created = create_all(&api, objects).await;
    let mut rss_peak = operator_before.map(|(rss, _)| rss).unwrap_or(0.0);
    let all = wait_ready(
        cluster,
        &count,
        sandboxes,
        Duration::from_secs(1800),
        &mut rss_peak,
    )
    .await;
    let took = started.elapsed();
    let after = api_requests(cluster);
    let operator_after = operator_figures(cluster);
    if let Some((rss, _)) = operator_after {
        rss_peak = rss_peak.max(rss);
    }
    let rate = count.get() as f64 / took.as_secs_f64();
    println!(
        "AgentSandboxes: {sandboxes} created in {:.1} s ({:.0}/s); {} of {sandboxes} Ready after {:.1} s: {rate:.0} sandboxes Ready/s",
        created.as_secs_f64(),
        sandboxes as f64 / created.as_secs_f64(),
        count.get(),
        took.as_secs_f64()
    );
    println!(
        "ratio to the bare-pod floor: {:.2}x (goal >= 0.5x){}",
        rate / floor,
        if all {
            ""
        } else {
            " - NOT all Ready within 30 min"
        }
    );
    match (operator_before, operator_after) {
        (Some((rss0, cpu0)), Some((rss1, cpu1))) => println!(
            "operator leader: RSS {rss0:.1} MiB before, peak {rss_peak:.1} MiB, {rss1:.1} MiB at the end (goal <= 100 MiB); CPU {:.1} s ({:.2} ms per sandbox, {:.0}% of one core)",
            cpu1 - cpu0,
            (cpu1 - cpu0) * 1000.0 / sandboxes as f64,
            (cpu1 - cpu0) * 100.0 / took.as_secs_f64()
        ),
        _ => println!("operator figures unavailable (metrics not reachable)"),
    }
    print_requests(
        "the sandboxes",
        sandboxes,
        &requests_between(&before, &after),
    );

    // Cleanup: the sandboxes (the operator removes its finalizers), then the nodes.
    let _ = api
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await;
    wait_gone(&api, "the sandboxes deleted", Duration::from_secs(1200)).await;
    for name in &names {
        let _ = node_api.delete(name, &DeleteParams::default()).await;
    }
}
