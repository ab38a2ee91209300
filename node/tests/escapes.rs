//! Escape-attempt aggregation: cumulative pod reports -> status.security, exact across
//! resends, node-agent restarts and successive pods.

use std::collections::VecDeque;

use agentsandbox_node::escapes::{
    escape_condition, event_message, merge_security, PodTotals, RECENT_ATTEMPTS,
};
use agentsandbox_operator::api::{EscapeAttempt, ResponseTaken, SecurityStatus};
use agentsandbox_telemetry::v1 as wire;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn at(seconds: i64) -> Time {
    Time(jiff::Timestamp::from_second(1_800_000_000 + seconds).unwrap())
}

fn report(
    total: u64,
    categories: &[(&str, u64)],
    dropped: u64,
    response: wire::Action,
) -> wire::EscapeReport {
    wire::EscapeReport {
        total,
        by_category: categories
            .iter()
            .map(|(c, n)| wire::CategoryCount {
                category: c.to_string(),
                count: *n,
            })
            .collect(),
        dropped_details: dropped,
        response: response as i32,
        ..Default::default()
    }
}

fn totals(reports: &[wire::EscapeReport]) -> PodTotals {
    let mut totals = PodTotals::default();
    for r in reports {
        totals.absorb(r);
    }
    totals
}

fn attempt(syscall: &str, second: i64) -> EscapeAttempt {
    EscapeAttempt {
        time: at(second),
        container: "agent".into(),
        pid: 7,
        syscall: syscall.into(),
        category: "namespace".into(),
        summary: None,
        action: ResponseTaken::Denied,
    }
}

#[test]
fn reports_resent_or_out_of_order_never_count_twice_or_go_backwards() {
    let t = totals(&[
        report(5, &[("namespace", 5)], 0, wire::Action::Denied),
        report(3, &[("namespace", 3)], 0, wire::Action::Denied),
        report(5, &[("namespace", 5)], 0, wire::Action::Denied),
    ]);
    assert_eq!(t.total, 5);
    assert_eq!(t.by_category["namespace"], 5);
}

#[test]
fn a_restarted_node_agent_recomputes_the_same_totals_from_the_status() {
    let first = totals(&[report(40, &[("mount", 40)], 2, wire::Action::Denied)]);
    let written = merge_security(None, "pod-a", &first, &VecDeque::new(), &at(0));
    assert_eq!(written.escape_attempts, 40);
    // After a restart the agent knows nothing but the status; the shim resends its totals.
    let later = totals(&[report(
        55,
        &[("mount", 50), ("bpf", 5)],
        3,
        wire::Action::Denied,
    )]);
    let rewritten = merge_security(Some(&written), "pod-a", &later, &VecDeque::new(), &at(1));
    assert_eq!(rewritten.escape_attempts, 55, "not 40 + 55");
    assert_eq!(rewritten.dropped_events, 3);
    let categories = rewritten.attempts_by_category.unwrap();
    assert_eq!((categories["mount"], categories["bpf"]), (50, 5));
}

#[test]
fn a_new_pod_adds_to_the_counts_of_earlier_pods() {
    let old = merge_security(
        None,
        "pod-a",
        &totals(&[report(10, &[("ptrace", 10)], 0, wire::Action::Denied)]),
        &VecDeque::new(),
        &at(0),
    );
    let new = merge_security(
        Some(&old),
        "pod-b",
        &totals(&[report(
            4,
            &[("ptrace", 1), ("bpf", 3)],
            0,
            wire::Action::Denied,
        )]),
        &VecDeque::new(),
        &at(5),
    );
    assert_eq!(new.escape_attempts, 14);
    let categories = new.attempts_by_category.unwrap();
    assert_eq!((categories["ptrace"], categories["bpf"]), (11, 3));
    assert_eq!(new.current_pod.unwrap().escape_attempts, 4);
}

#[test]
fn recent_attempts_are_newest_first_and_bounded() {
    let fresh: VecDeque<EscapeAttempt> = (0..15).map(|i| attempt(&format!("call{i}"), i)).collect();
    let security = merge_security(
        None,
        "pod-a",
        &totals(&[report(15, &[("namespace", 15)], 0, wire::Action::Denied)]),
        &fresh,
        &at(20),
    );
    let recent = security.recent_attempts.unwrap();
    assert_eq!(recent.len(), RECENT_ATTEMPTS);
    assert_eq!(recent[0].syscall, "call14");
    assert_eq!(security.last_attempt.unwrap().syscall, "call14");
}

#[test]
fn a_kill_or_quarantine_is_recorded_for_the_pod_it_was_carried_out_on() {
    let security = merge_security(
        None,
        "pod-a",
        &totals(&[report(1, &[("mount", 1)], 0, wire::Action::Quarantined)]),
        &VecDeque::new(),
        &at(3),
    );
    let response = security.response.clone().unwrap();
    assert_eq!(
        (response.action, response.pod_uid.as_str()),
        (ResponseTaken::Quarantined, "pod-a")
    );
    let condition = escape_condition(&security, None, Some(2), &at(3));
    assert_eq!(condition.reason, "SandboxQuarantined");
    assert!(event_message(&security).contains("quarantined"));
    // The record keeps its time when later reports repeat it.
    let again = merge_security(
        Some(&security),
        "pod-a",
        &totals(&[report(2, &[("mount", 2)], 0, wire::Action::Quarantined)]),
        &VecDeque::new(),
        &at(9),
    );
    assert_eq!(again.response.unwrap().time, at(3));
}

#[test]
fn the_condition_keeps_its_transition_time_and_says_the_count() {
    let security = SecurityStatus {
        escape_attempts: 12,
        ..Default::default()
    };
    let first = escape_condition(&security, None, Some(1), &at(0));
    let second = escape_condition(&security, Some(&first), Some(1), &at(30));
    assert_eq!(second.last_transition_time, at(0));
    assert_eq!(second.status, "True");
    assert!(
        second.message.starts_with("12 escape attempt(s) denied"),
        "{}",
        second.message
    );
}
