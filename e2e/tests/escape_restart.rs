//! The node agent restarts in the middle of a flood of 10,000 escape attempts: once it is
//! back, the sandbox's count is exactly the number of attempts made. Its own test binary
//! (cargo runs test binaries one after another) so the restart disturbs no other test.

use std::time::{Duration, Instant, SystemTime};

use agentsandbox_e2e::{
    attack_done_at, attack_sandbox_yaml, delete_node_agent, metric_sum, node_agent_metrics,
    sandbox_events, wait_new_node_agent, wait_until, Cluster,
};
use agentsandbox_operator::api::AgentSandbox;
use kube::Api;

const FLOOD: i64 = 10_000;

#[tokio::test]
async fn restarting_the_node_agent_during_a_flood_loses_no_count() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("esc-flood");
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    // 10,000 attempts, 1 ms apart: ~12 s of flood, then the program waits.
    cluster
        .apply(&attack_sandbox_yaml(
            &ns.name,
            "flooder",
            &["flood", &FLOOD.to_string(), "1000"],
            "",
        ))
        .unwrap();
    let count = |s: &AgentSandbox| {
        s.status
            .as_ref()
            .and_then(|s| s.security.as_ref())
            .map_or(0, |s| s.escape_attempts)
    };
    wait_until(
        "a thousand attempts on the status",
        Duration::from_secs(90),
        || async {
            let s = api.get("flooder").await.ok()?;
            (count(&s) >= 1000).then_some(())
        },
    )
    .await
    .unwrap();

    let restarted_at = SystemTime::now();
    let old_agent = delete_node_agent(&cluster).unwrap();
    let during_restart = count(&api.get("flooder").await.unwrap());
    let new_agent = wait_new_node_agent(&cluster, &old_agent).await.unwrap();

    let logs = wait_until("the flood's end", Duration::from_secs(120), || async {
        let logs = cluster
            .kubectl_ok(&["-n", &ns.name, "logs", "flooder"])
            .ok()?;
        logs.contains("done ").then_some(logs)
    })
    .await
    .unwrap();
    assert!(
        logs.contains(&format!("flood {FLOOD} denied {FLOOD}")),
        "every attempt denied with EPERM: {logs}"
    );
    let done = attack_done_at(&logs).unwrap();
    assert!(
        restarted_at < done && during_restart < FLOOD,
        "the agent restarted after the flood ended ({during_restart} counted): the test proved nothing"
    );

    let started = Instant::now();
    let sandbox = wait_until("the exact count", Duration::from_secs(30), || async {
        let s = api.get("flooder").await.ok()?;
        (count(&s) >= FLOOD).then_some(s)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; new agent {new_agent}"));
    let security = sandbox.status.unwrap().security.unwrap();
    assert_eq!(security.escape_attempts, FLOOD, "exactly the attempts made");
    assert_eq!(
        security.attempts_by_category.unwrap().get("namespace"),
        Some(&FLOOD)
    );
    assert!(
        (0..FLOOD).contains(&security.dropped_events),
        "droppedEvents says how many details were not kept: {}",
        security.dropped_events
    );
    eprintln!(
        "flood: {FLOOD} attempts, {during_restart} counted when the agent was deleted, exact count {:?} after the new agent was Ready; {} details dropped",
        started.elapsed(),
        security.dropped_events
    );
    let events = wait_until("the Event's count", Duration::from_secs(10), || async {
        let events = sandbox_events(&cluster, &ns.name, "flooder", "EscapeAttempt").ok()?;
        (events.len() == 1 && events[0].0 == FLOOD).then_some(events)
    })
    .await;
    assert!(
        events.is_ok(),
        "{:?}",
        sandbox_events(&cluster, &ns.name, "flooder", "EscapeAttempt")
    );
    let metrics = node_agent_metrics(&cluster).unwrap();
    assert_eq!(
        metric_sum(
            &metrics,
            "agentsandbox_escape_attempts_total",
            &[("namespace", &ns.name), ("sandbox", "flooder")]
        ) as i64,
        FLOOD,
        "the restarted agent's metric starts from the status, not from zero"
    );
}
