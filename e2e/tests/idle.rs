//! `lifetime.idleTimeout`: a sandbox with no CPU use and no network traffic over the window is
//! suspended; one that works is not. Activity is measured on the node by the node agent.

use std::time::Duration;

use agentsandbox_e2e::{sandbox_yaml_running, wait_until, Cluster};
use agentsandbox_operator::api::{AgentSandbox, OperatingMode, Phase};
use kube::api::Api;

#[tokio::test]
async fn idle_timeout_suspends_a_sandbox_that_does_nothing_and_spares_one_that_works() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-idle");
    let idle = sandbox_yaml_running(
        &ns.name,
        "idle",
        "exec sleep 100000",
        "  lifetime: {idleTimeout: 1m}\n  workspace: {size: 16Mi}\n",
    );
    // Computes a little every second: never idle, whatever its network does.
    let busy = sandbox_yaml_running(
        &ns.name,
        "busy",
        "trap 'exit 0' TERM; while true; do i=0; while [ $i -lt 3000 ]; do i=$((i+1)); done; sleep 1; done",
        "  lifetime: {idleTimeout: 1m}\n",
    );
    cluster.apply(&idle).unwrap();
    cluster.apply(&busy).unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);

    let suspended = wait_until(
        "the idle sandbox to be suspended",
        Duration::from_secs(180),
        || async {
            let s = api.get("idle").await.ok()?;
            (s.spec.operating_mode == OperatingMode::Suspended
                && s.status.as_ref()?.phase? == Phase::Suspended)
                .then_some(s)
        },
    )
    .await
    .unwrap();
    let activity = suspended
        .status
        .unwrap()
        .activity
        .expect("the node agent reported activity");
    assert!(activity.last_sample_time.is_some());
    let events = cluster
        .kubectl_ok(&[
            "-n",
            &ns.name,
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=idle,reason=IdleTimeout",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .unwrap();
    assert!(
        events.contains("no CPU use and no network traffic"),
        "IdleTimeout event: {events}"
    );
    let claims: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(cluster.client.clone(), &ns.name);
    assert!(
        claims.get_opt("idle-workspace").await.unwrap().is_some(),
        "workspace kept while suspended"
    );

    let busy = api.get("busy").await.unwrap();
    assert_eq!(
        busy.spec.operating_mode,
        OperatingMode::Running,
        "a working sandbox is not suspended"
    );
    assert_eq!(busy.status.as_ref().unwrap().phase, Some(Phase::Running));
    let last_active = busy
        .status
        .unwrap()
        .activity
        .and_then(|a| a.last_active_time)
        .expect("busy sandbox measured");
    let age = jiff::Timestamp::now().duration_since(last_active.0);
    assert!(
        age < jiff::SignedDuration::from_secs(45),
        "busy sandbox last active {age:?} ago"
    );
}
