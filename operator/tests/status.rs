//! Observed pod + spec -> phase and conditions.

mod common;

use agentsandbox_operator::api::{AgentSandbox, Phase};
use agentsandbox_operator::resources::OperatorSettings;
use agentsandbox_operator::status::{observe, Ending, Observation};
use common::sandbox;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::json;

fn at(seconds: i64) -> Time {
    Time(jiff::Timestamp::from_second(1_800_000_000 + seconds).unwrap())
}

fn pod(status: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": "coder", "namespace": "agents"},
        "spec": {"nodeName": "node-1", "containers": [{"name": "agent"}]},
        "status": status
    }))
    .unwrap()
}

fn running_ready() -> Pod {
    pod(json!({
        "phase": "Running", "podIP": "10.244.0.9", "startTime": "2027-01-15T08:00:00Z",
        "conditions": [{"type": "Ready", "status": "True"}]
    }))
}

fn observation<'a>(
    s: &'a AgentSandbox,
    pod: Option<&'a Pod>,
    settings: &'a OperatorSettings,
    now: Time,
) -> Observation<'a> {
    Observation {
        sandbox: s,
        pod,
        name_conflict: false,
        refusal: None,
        ending: Ending::None,
        settings,
        now,
        claim: None,
        handoff_pending: false,
    }
}

fn condition(
    status: &agentsandbox_operator::api::AgentSandboxStatus,
    type_: &str,
) -> (String, String) {
    let c = status
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("condition {type_}"));
    (c.status.clone(), c.reason.clone())
}

#[test]
fn no_pod_yet_is_pending_and_not_ready() {
    let s = sandbox(json!({"image": "agent:1"}));
    let settings = OperatorSettings::default();
    let status = observe(&observation(&s, None, &settings, at(0)));
    assert_eq!(status.phase, Some(Phase::Pending));
    assert_eq!(
        condition(&status, "Ready"),
        ("False".into(), "PodCreating".into())
    );
    assert_eq!(
        condition(&status, "Hardened"),
        ("True".into(), "RuntimeEnforced".into())
    );
    assert_eq!(status.observed_generation, Some(3));
    for c in status.conditions.as_ref().unwrap() {
        assert_eq!(
            c.observed_generation,
            Some(3),
            "{} carries the generation",
            c.type_
        );
    }
}

#[test]
fn ready_pod_makes_the_sandbox_running_and_ready_with_pod_details() {
    let s = sandbox(json!({"image": "agent:1"}));
    let settings = OperatorSettings::default();
    let p = running_ready();
    let status = observe(&observation(&s, Some(&p), &settings, at(0)));
    assert_eq!(status.phase, Some(Phase::Running));
    assert_eq!(
        condition(&status, "Ready"),
        ("True".into(), "PodReady".into())
    );
    assert_eq!(status.pod_name.as_deref(), Some("coder"));
    assert_eq!(status.node_name.as_deref(), Some("node-1"));
    assert_eq!(status.pod_ip.as_deref(), Some("10.244.0.9"));
    assert!(status.start_time.is_some());
    assert_eq!(status.service_fqdn, None);
}

#[test]
fn running_but_unready_pod_is_not_ready() {
    let s = sandbox(json!({"image": "agent:1"}));
    let settings = OperatorSettings::default();
    let p = pod(json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}));
    let status = observe(&observation(&s, Some(&p), &settings, at(0)));
    assert_eq!(status.phase, Some(Phase::Running));
    assert_eq!(
        condition(&status, "Ready"),
        ("False".into(), "PodNotReady".into())
    );
}

#[test]
fn pending_pod_explains_what_the_container_waits_for() {
    let s = sandbox(json!({"image": "agent:1"}));
    let settings = OperatorSettings::default();
    let p = pod(json!({"phase": "Pending", "containerStatuses": [{
        "name": "agent", "image": "agent:1", "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "image not present"}}
    }]}));
    let status = observe(&observation(&s, Some(&p), &settings, at(0)));
    assert_eq!(status.phase, Some(Phase::Pending));
    let ready = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "PodPending");
    assert_eq!(
        ready.message,
        "container waiting: ErrImageNeverPull: image not present"
    );
}

#[test]
fn agent_exit_finishes_the_sandbox_with_its_exit_code() {
    let s = sandbox(json!({"image": "agent:1"}));
    let settings = OperatorSettings::default();
    let terminated = |phase: &str, code: i32| {
        pod(json!({"phase": phase, "containerStatuses": [{
            "name": "agent", "image": "agent:1", "imageID": "", "ready": false, "restartCount": 0,
            "state": {"terminated": {"exitCode": code}}
        }]}))
    };
    let ok = terminated("Succeeded", 0);
    let status = observe(&observation(&s, Some(&ok), &settings, at(0)));
    assert_eq!(status.phase, Some(Phase::Finished));
    assert_eq!(
        condition(&status, "Finished"),
        ("True".into(), "AgentExited".into())
    );
    let failed = terminated("Failed", 3);
    let status = observe(&observation(&s, Some(&failed), &settings, at(0)));
    assert_eq!(status.phase, Some(Phase::Failed));
    let finished = status
        .conditions
        .unwrap()
        .into_iter()
        .find(|c| c.type_ == "Finished")
        .unwrap();
    assert_eq!(
        (finished.status.as_str(), finished.reason.as_str()),
        ("True", "AgentFailed")
    );
    assert_eq!(finished.message, "the agent exited with code 3");
}

#[test]
fn suspended_sandbox_reports_suspending_then_suspended() {
    let s = sandbox(json!({"image": "agent:1", "operatingMode": "Suspended"}));
    let settings = OperatorSettings::default();
    let p = running_ready();
    let status = observe(&observation(&s, Some(&p), &settings, at(0)));
    assert_eq!(status.phase, Some(Phase::Suspended));
    assert_eq!(
        condition(&status, "Ready"),
        ("False".into(), "Suspending".into())
    );
    let status = observe(&observation(&s, None, &settings, at(0)));
    assert_eq!(status.phase, Some(Phase::Suspended));
    assert_eq!(
        condition(&status, "Ready"),
        ("False".into(), "Suspended".into())
    );
    assert_eq!(
        condition(&status, "Suspended"),
        ("True".into(), "OperatingModeSuspended".into())
    );
}

#[test]
fn passed_shutdown_time_finishes_the_sandbox() {
    let s = sandbox(json!({"image": "agent:1"}));
    let settings = OperatorSettings::default();
    let mut obs = observation(&s, None, &settings, at(0));
    obs.ending = Ending::ShutdownTime;
    let status = observe(&obs);
    assert_eq!(status.phase, Some(Phase::Finished));
    assert_eq!(
        condition(&status, "Finished"),
        ("True".into(), "ShutdownTime".into())
    );
}

#[test]
fn a_foreign_pod_with_the_sandbox_name_is_reported_not_adopted() {
    let s = sandbox(json!({"image": "agent:1"}));
    let settings = OperatorSettings::default();
    let mut obs = observation(&s, None, &settings, at(0));
    obs.name_conflict = true;
    let status = observe(&obs);
    assert_eq!(
        condition(&status, "Ready"),
        ("False".into(), "PodNameConflict".into())
    );
}

#[test]
fn without_a_runtime_class_the_sandbox_says_it_is_not_hardened() {
    let s = sandbox(json!({"image": "agent:1"}));
    let settings = OperatorSettings {
        runtime_class_name: None,
        ..OperatorSettings::default()
    };
    let status = observe(&observation(&s, None, &settings, at(0)));
    assert_eq!(
        condition(&status, "Hardened"),
        ("False".into(), "NoHardenedRuntime".into())
    );
}

#[test]
fn exposed_sandbox_reports_its_service_name() {
    let s =
        sandbox(json!({"image": "agent:1", "network": {"expose": [{"name": "http", "port": 80}]}}));
    let settings = OperatorSettings::default();
    let status = observe(&observation(&s, None, &settings, at(0)));
    assert_eq!(
        status.service_fqdn.as_deref(),
        Some("coder.agents.svc.cluster.local")
    );
}

#[test]
fn transition_time_moves_only_when_a_condition_changes() {
    let settings = OperatorSettings::default();
    let mut s = sandbox(json!({"image": "agent:1"}));
    let p = running_ready();
    let first = observe(&observation(&s, Some(&p), &settings, at(0)));
    s.status = Some(first);
    let again = observe(&observation(&s, Some(&p), &settings, at(60)));
    let ready = |st: &agentsandbox_operator::api::AgentSandboxStatus| {
        st.conditions
            .as_ref()
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .last_transition_time
            .clone()
    };
    assert_eq!(
        ready(&again),
        at(0),
        "unchanged status keeps its transition time"
    );
    s.status = Some(again);
    let unready = observe(&observation(&s, None, &settings, at(120)));
    assert_eq!(
        ready(&unready),
        at(120),
        "a status flip records the new time"
    );
}

fn with_response(mut s: AgentSandbox, action: &str, pod_uid: &str) -> AgentSandbox {
    s.status = Some(
        serde_json::from_value(json!({
            "security": {
                "escapeAttempts": 1,
                "response": {"action": action, "podUID": pod_uid, "time": "2027-01-15T08:00:00Z"}
            }
        }))
        .unwrap(),
    );
    s
}

#[test]
fn a_quarantined_pod_makes_the_sandbox_quarantined_and_says_how_to_release_it() {
    let s = with_response(
        sandbox(json!({"image": "agent:1"})),
        "Quarantined",
        "pod-uid-1",
    );
    let mut p = running_ready();
    p.metadata.uid = Some("pod-uid-1".into());
    let settings = OperatorSettings::default();
    let status = observe(&observation(&s, Some(&p), &settings, at(0)));
    assert_eq!(status.phase, Some(Phase::Quarantined));
    let ready = status
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready.reason, "Quarantined");
    assert!(
        ready.message.contains("kubectl delete pod coder"),
        "{}",
        ready.message
    );
}

#[test]
fn a_killed_sandbox_is_failed_with_reason_escape_attempt() {
    let s = with_response(sandbox(json!({"image": "agent:1"})), "Killed", "pod-uid-1");
    let mut p = pod(json!({"phase": "Failed"}));
    p.metadata.uid = Some("pod-uid-1".into());
    let settings = OperatorSettings::default();
    let status = observe(&observation(&s, Some(&p), &settings, at(0)));
    assert_eq!(status.phase, Some(Phase::Failed));
    assert_eq!(
        condition(&status, "Ready"),
        ("False".into(), "EscapeAttempt".into())
    );
    assert_eq!(
        condition(&status, "Finished"),
        ("True".into(), "EscapeAttempt".into())
    );
}

#[test]
fn a_response_recorded_for_an_earlier_pod_does_not_touch_the_new_one() {
    let s = with_response(
        sandbox(json!({"image": "agent:1"})),
        "Quarantined",
        "old-pod",
    );
    let mut p = running_ready();
    p.metadata.uid = Some("new-pod".into());
    let settings = OperatorSettings::default();
    let status = observe(&observation(&s, Some(&p), &settings, at(0)));
    assert_eq!(status.phase, Some(Phase::Running));
}
