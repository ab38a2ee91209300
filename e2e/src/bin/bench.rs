//! `make bench`: measurements on the local cluster, printed side by side with a baseline run
//! in the same session. Never part of `make test`, never a pass/fail gate.
//!
//! - apply -> Ready latency: a bare Pod (what the sandbox's pod costs by itself) vs an
//!   AgentSandbox (operator + pod), sequentially, median and p90 over N;
//! - operator memory (VmRSS of the leader, from its /metrics) idle and with M sandboxes.

use std::time::{Duration, Instant};

use agentsandbox_e2e::{
    busybox_pod, operator_pods, sandbox_yaml, wait_sandbox_ready, wait_until, Cluster,
    AGENTSANDBOX_NAMESPACE, IDLE_LOOP,
};
use agentsandbox_operator::api::AgentSandbox;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

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

/// The leader's VmRSS, from the `agentsandbox_operator_resident_memory_bytes` gauge of
/// whichever replica reports reconciles (the standby reports none).
fn leader_rss(cluster: &Cluster) -> Option<(String, f64)> {
    let pods = operator_pods(cluster);
    let mut best: Option<(String, f64, f64)> = None;
    for pod in &pods {
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
        let rss = value("agentsandbox_operator_resident_memory_bytes")?;
        if best.as_ref().is_none_or(|(_, r, _)| reconciles > *r) {
            best = Some((pod.to_string(), reconciles, rss));
        }
    }
    best.map(|(pod, _, rss)| (pod, rss / (1024.0 * 1024.0)))
}

#[tokio::main]
async fn main() {
    let cluster = Cluster::connect().await;
    let n = env_usize("BENCH_SANDBOXES", 20);
    let m = env_usize("BENCH_SCALE", 500);

    println!("== apply -> Ready, sequential, n={n} (runc; same node, same image)");
    let mut pods = bare_pod_latencies(&cluster, n).await;
    let mut sandboxes = sandbox_latencies(&cluster, n).await;
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
    let before = leader_rss(&cluster);
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
    let after = leader_rss(&cluster);
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
