//! Crash safety: killing the operator while it reconciles loses no sandbox and leaves no
//! orphan pod.

use std::collections::BTreeSet;
use std::time::Duration;

use agentsandbox_e2e::{
    operator_pods, sandbox_yaml, wait_operator_available, wait_sandbox_ready, wait_until, Cluster,
    AGENTSANDBOX_NAMESPACE,
};
use agentsandbox_operator::api::AgentSandbox;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
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
    cluster.apply(&manifest.join("---\n")).unwrap();

    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    // Kill every operator replica (no grace period) once it is part-way through.
    wait_until(
        "the operator to have created some pods",
        Duration::from_secs(60),
        || async {
            let n = pods.list(&ListParams::default()).await.ok()?.items.len();
            (n >= 3).then_some(())
        },
    )
    .await
    .unwrap();
    let created_before_kill = pods.list(&ListParams::default()).await.unwrap().items.len();
    cluster
        .kubectl_ok(&[
            "-n",
            AGENTSANDBOX_NAMESPACE,
            "delete",
            "pod",
            "-l",
            "app.kubernetes.io/component=operator",
            "--grace-period=0",
            "--force",
        ])
        .unwrap();
    assert!(
        created_before_kill < SANDBOXES,
        "the kill must land mid-reconcile (had {created_before_kill} pods)"
    );

    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
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
