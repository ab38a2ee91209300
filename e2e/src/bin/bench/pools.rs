//! Warm pools: create -> Ready of a bare Pod, a cold AgentSandbox and a claim of a warm pod
//! (AgentSandbox with templateRef/poolRef), in one run on the same cluster, each created
//! through the API and timed by a watch (the first event that shows it Ready), not by
//! polling; then a burst of concurrent claims against a pool as large as the burst.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentsandbox_e2e::{busybox_image, busybox_pod, wait_until, Cluster, IDLE_LOOP};
use agentsandbox_operator::api::{AgentSandbox, AgentSandboxPool, ClaimStart};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;

use super::{ms, percentile};

/// When each object of a namespace was first seen Ready, by a watch started before any is
/// created.
#[derive(Clone, Default)]
struct ReadyClock {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    changed: Arc<tokio::sync::Notify>,
}

impl ReadyClock {
    fn watch<K>(api: Api<K>, ready: fn(&K) -> bool) -> ReadyClock
    where
        K: kube::Resource
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned
            + Send
            + Sync
            + 'static,
    {
        let clock = ReadyClock::default();
        let writer = clock.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(Ok(object)) = events.next().await {
                if ready(&object) {
                    writer
                        .seen
                        .lock()
                        .unwrap()
                        .entry(object.name_any())
                        .or_insert_with(Instant::now);
                    writer.changed.notify_waiters();
                }
            }
        });
        clock
    }

    async fn ready_at(&self, name: &str, timeout: Duration) -> Instant {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            if let Some(at) = self.seen.lock().unwrap().get(name) {
                return *at;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{name} not Ready within {timeout:?}");
            let _ = tokio::time::timeout(left, notified).await;
        }
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

fn object<K: serde::de::DeserializeOwned>(value: serde_json::Value) -> K {
    serde_json::from_value(value).expect("a valid object")
}

fn spec_resources() -> serde_json::Value {
    serde_json::json!({
        "requests": {"cpu": "5m", "memory": "8Mi"},
        "limits": {"cpu": "500m", "memory": "64Mi"},
    })
}

async fn wait_pool_ready(pools: &Api<AgentSandboxPool>, ready: i32) {
    wait_until("pool ready", Duration::from_secs(600), || async {
        (pools.get("warm").await.ok()?.status?.ready_replicas >= ready).then_some(())
    })
    .await
    .unwrap();
}

fn report(name: &str, samples: &mut [Duration]) -> (f64, f64) {
    let (p50, p90) = (ms(percentile(samples, 0.5)), ms(percentile(samples, 0.9)));
    println!("{name:<36} {p50:>10.1} {p90:>10.1}");
    (p50, p90)
}

pub async fn pools_bench(cluster: &Cluster, n: usize, burst: usize) {
    let ns = cluster.namespace("bench-pools");
    let params = PostParams::default();
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let sandboxes: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pools: Api<AgentSandboxPool> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pod_clock = ReadyClock::watch(pods.clone(), pod_ready);
    let sandbox_clock = ReadyClock::watch(sandboxes.clone(), sandbox_ready);
    cluster
        .apply(
            &serde_json::json!({
                "apiVersion": "agentsandbox.io/v1alpha1",
                "kind": "AgentSandboxTemplate",
                "metadata": {"name": "agent", "namespace": ns.name},
                "spec": {"sandbox": {
                    "image": busybox_image(),
                    "command": ["sh", "-c", IDLE_LOOP],
                    "resources": spec_resources(),
                }},
            })
            .to_string(),
        )
        .unwrap();
    cluster
        .apply(
            &serde_json::json!({
                "apiVersion": "agentsandbox.io/v1alpha1",
                "kind": "AgentSandboxPool",
                "metadata": {"name": "warm", "namespace": ns.name},
                "spec": {"templateRef": {"name": "agent"}, "replicas": 3},
            })
            .to_string(),
        )
        .unwrap();

    println!("== create -> Ready (API create, timed by a watch), sequential, n={n}");
    let mut bare = Vec::new();
    for i in 0..n {
        let pod = busybox_pod(&ns.name, &format!("p{i:03}"), IDLE_LOOP);
        let started = Instant::now();
        pods.create(&params, &pod).await.unwrap();
        bare.push(
            pod_clock
                .ready_at(&pod.name_any(), Duration::from_secs(120))
                .await
                - started,
        );
    }
    let mut cold = Vec::new();
    for i in 0..n {
        let name = format!("c{i:03}");
        let sandbox: AgentSandbox = object(serde_json::json!({
            "apiVersion": "agentsandbox.io/v1alpha1", "kind": "AgentSandbox",
            "metadata": {"name": name, "namespace": ns.name},
            "spec": {"image": busybox_image(), "command": ["sh", "-c", IDLE_LOOP], "resources": spec_resources()},
        }));
        let started = Instant::now();
        sandboxes.create(&params, &sandbox).await.unwrap();
        cold.push(
            sandbox_clock
                .ready_at(&name, Duration::from_secs(120))
                .await
                - started,
        );
    }
    let mut warm = Vec::new();
    let mut started_cold = 0;
    for i in 0..n {
        // A refilled pool (its status drops below 3 as soon as a claim took a pod).
        wait_pool_ready(&pools, 3).await;
        let name = format!("w{i:03}");
        let claim: AgentSandbox = object(serde_json::json!({
            "apiVersion": "agentsandbox.io/v1alpha1", "kind": "AgentSandbox",
            "metadata": {"name": name, "namespace": ns.name},
            "spec": {"templateRef": {"name": "agent"}, "poolRef": {"name": "warm"},
                     "env": [{"name": "CLAIM", "value": name}]},
        }));
        let started = Instant::now();
        sandboxes.create(&params, &claim).await.unwrap();
        warm.push(
            sandbox_clock
                .ready_at(&name, Duration::from_secs(120))
                .await
                - started,
        );
        let claimed = sandboxes.get(&name).await.unwrap();
        if claimed.status.and_then(|s| s.claim).map(|c| c.start) != Some(ClaimStart::Warm) {
            started_cold += 1;
        }
    }
    println!("{:<36} {:>10} {:>10}", "", "p50 ms", "p90 ms");
    let (bare50, _) = report("bare Pod (runc)", &mut bare);
    report("AgentSandbox, cold", &mut cold);
    let (warm50, warm90) = report("claim of a warm pool pod", &mut warm);
    println!(
        "claim / bare Pod p50: {:.3}x (goal <= 0.05x); {started_cold} of {n} claims started cold",
        warm50 / bare50
    );

    println!("\n== burst: {burst} concurrent claims against a pool of {burst} ready pods");
    // The node takes 110 pods: make room first.
    let delete_params = kube::api::DeleteParams::default();
    for i in 0..n {
        let _ = pods.delete(&format!("p{i:03}"), &delete_params).await;
        let _ = sandboxes.delete(&format!("c{i:03}"), &delete_params).await;
        let _ = sandboxes.delete(&format!("w{i:03}"), &delete_params).await;
    }
    wait_until(
        "the sequential part's pods gone",
        Duration::from_secs(300),
        || async {
            let left = pods.list(&Default::default()).await.ok()?.items;
            left.iter()
                .all(|p| p.labels().contains_key("agentsandbox.io/pool"))
                .then_some(())
        },
    )
    .await
    .unwrap();
    cluster
        .kubectl_ok(&[
            "-n",
            &ns.name,
            "scale",
            "agentsandboxpool/warm",
            &format!("--replicas={burst}"),
        ])
        .unwrap();
    wait_pool_ready(&pools, burst as i32).await;
    let started = Instant::now();
    let creates = (0..burst).map(|i| {
        let sandboxes = sandboxes.clone();
        let ns = ns.name.clone();
        async move {
            let claim: AgentSandbox = object(serde_json::json!({
                "apiVersion": "agentsandbox.io/v1alpha1", "kind": "AgentSandbox",
                "metadata": {"name": format!("b{i:03}"), "namespace": ns},
                "spec": {"templateRef": {"name": "agent"}, "poolRef": {"name": "warm"}},
            }));
            sandboxes
                .create(&PostParams::default(), &claim)
                .await
                .unwrap();
        }
    });
    futures::future::join_all(creates).await;
    let mut last = started;
    for i in 0..burst {
        last = last.max(
            sandbox_clock
                .ready_at(&format!("b{i:03}"), Duration::from_secs(300))
                .await,
        );
    }
    let all = ms(last - started);
    let mut burst_cold = 0;
    for s in sandboxes.list(&Default::default()).await.unwrap().items {
        if s.name_any().starts_with('b')
            && s.status.and_then(|st| st.claim).map(|c| c.start) != Some(ClaimStart::Warm)
        {
            burst_cold += 1;
        }
    }
    println!(
        "all {burst} Ready after {all:.0} ms = {:.1}x the single-claim p90 ({warm90:.1} ms; goal <= 2x); {burst_cold} started cold",
        all / warm90
    );
}
