//! Crash safety: killing the operator while it reconciles loses no sandbox and leaves no
//! orphan pod.

use std::collections::BTreeSet;
use std::time::Duration;

use agentsandbox_e2e::{
    operator_pods, sandbox_yaml, wait_operator_available, wait_sandbox_ready, wait_until, Cluster,
    AGENTSANDBOX_NAMESPACE,
};
use agentsandbox_operator::api::AgentSandbox;
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::ResourceExt;

const SANDBOXES: usize = 50;

/// Both tests disrupt the operator; they must not overlap.
static OPERATOR_DISRUPTION: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn lease_holder(cluster: &Cluster) -> String {
    cluster
        .kubectl_ok(&[
            "-n",
            AGENTSANDBOX_NAMESPACE,
            "get",
            "lease",
            "agentsandbox-operator",
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test]
async fn when_the_leader_goes_away_the_standby_takes_over() {
    let _serial = OPERATOR_DISRUPTION.lock().await;
    let cluster = Cluster::connect().await;
    let replicas = operator_pods(&cluster);
    assert_eq!(replicas.len(), 2, "the chart runs two replicas");
    let leader = wait_until("a lease holder", Duration::from_secs(60), || async {
        let holder = lease_holder(&cluster);
        replicas.contains(&holder).then_some(holder)
    })
    .await
    .unwrap();

    cluster
        .kubectl_ok(&[
            "-n",
            AGENTSANDBOX_NAMESPACE,
            "delete",
            "pod",
            &leader,
            "--wait=false",
        ])
        .unwrap();
    // The lease is released on shutdown; the standby or the Deployment's replacement pod,
    // whichever asks first, takes it. Either way it must be a live replica, not the old one.
    wait_until(
        "another live replica to take the lease",
        Duration::from_secs(60),
        || async {
            let holder = lease_holder(&cluster);
            (holder != leader && operator_pods(&cluster).contains(&holder)).then_some(holder)
        },
    )
    .await
    .unwrap();

    // The new leader reconciles.
    let ns = cluster.namespace("asb-failover");
    cluster
        .apply(&sandbox_yaml(&ns.name, "after-failover", ""))
        .unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    wait_sandbox_ready(&api, "after-failover", Duration::from_secs(120))
        .await
        .unwrap();
    wait_operator_available(&cluster);
}

#[tokio::test]
async fn killing_the_operator_mid_reconcile_of_50_sandboxes_loses_nothing() {
    let _serial = OPERATOR_DISRUPTION.lock().await;
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-crash");
    let manifest: Vec<String> = (0..SANDBOXES)
        .map(|i| sandbox_yaml(&ns.name, &format!("s{i:02}"), ""))
        .collect();
    let manifest = manifest.join("---\n");

    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    // Kill every operator replica (no grace period) once it is part-way through: a watch sees
    // the pods as they are created, and the kill goes straight to the API (polling and a
    // kubectl process were slow enough, once, for the operator to finish first).
    let mut created = watcher(pods.clone(), watcher::Config::default())
        .applied_objects()
        .boxed();
    // The watch's first request goes out before the sandboxes are applied; they are applied
    // while it runs.
    let mut seen = BTreeSet::new();
    if let Some(Ok(pod)) = created.next().now_or_never().flatten() {
        seen.insert(pod.name_any());
    }
    let applying = {
        let kubeconfig = cluster.kubeconfig.clone();
        tokio::task::spawn_blocking(move || {
            let mut child =
                std::process::Command::new(agentsandbox_e2e::state_dir().join("bin/kubectl"))
                    .arg("--kubeconfig")
                    .arg(kubeconfig)
                    .args(["apply", "-f", "-"])
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::null())
                    .spawn()
                    .expect("kubectl runs");
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(manifest.as_bytes())
                .unwrap();
            child.wait().unwrap().success()
        })
    };
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(pod)) = created.next().await {
            seen.insert(pod.name_any());
            if seen.len() >= 3 {
                break;
            }
        }
    })
    .await
    .expect("the operator to have created some pods");
    drop(created);
    let operators: Api<Pod> = Api::namespaced(cluster.client.clone(), AGENTSANDBOX_NAMESPACE);
    operators
        .delete_collection(
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
            &ListParams::default().labels("app.kubernetes.io/component=operator"),
        )
        .await
        .unwrap();
    // Mid-reconcile: some sandbox still lacked its pod or its first status. (Pods can all
    // exist already: the operator creates them in one concurrent burst.)
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let created_before_kill = pods.list(&ListParams::default()).await.unwrap().items.len();
    let observed_before_kill = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter(|s| {
            s.status
                .as_ref()
                .is_some_and(|st| st.observed_generation.is_some())
        })
        .count();
    eprintln!(
        "at the kill: {created_before_kill} pods, {observed_before_kill} sandboxes with a status"
    );
    assert!(
        created_before_kill < SANDBOXES || observed_before_kill < SANDBOXES,
        "the kill must land mid-reconcile (had {created_before_kill} pods and \
         {observed_before_kill} statuses of {SANDBOXES})"
    );
    assert!(applying.await.unwrap(), "kubectl apply of the sandboxes");

    wait_until(
        "all sandboxes Ready after the restart",
        Duration::from_secs(420),
        || async {
            let sandboxes = api.list(&ListParams::default()).await.ok()?.items;
            let ready = sandboxes
                .iter()
                .filter(|s| s.condition("Ready").is_some_and(|c| c.status == "True"))
                .count();
            (ready == SANDBOXES).then_some(())
        },
    )
    .await
    .unwrap();

    let sandboxes = api.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(sandboxes.len(), SANDBOXES, "no sandbox lost");
    let uids: BTreeSet<String> = sandboxes.iter().filter_map(|s| s.uid()).collect();
    let all_pods = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(all_pods.len(), SANDBOXES, "exactly one pod per sandbox");
    for pod in &all_pods {
        let owner = pod
            .owner_references()
            .iter()
            .find(|o| o.controller == Some(true));
        assert!(
            owner.is_some_and(|o| o.kind == "AgentSandbox" && uids.contains(&o.uid)),
            "orphan pod {}",
            pod.name_any()
        );
    }
    // The replacement operator is back: its Deployment is fully available again.
    wait_operator_available(&cluster);
}
