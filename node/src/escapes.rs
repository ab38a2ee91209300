//! Escape-attempt aggregation, pure: what the node agent writes into `status.security`, the
//! `EscapeAttempted` condition and the `EscapeAttempt` Event, from the cumulative reports of
//! the runtime shims (`proto/agentsandbox/telemetry/v1/telemetry.proto`).
//!
//! Counts stay exact across node-agent restarts because every report is cumulative for its
//! pod, and the status remembers which pod's counts it already includes (`currentPod`): the
//! sandbox's totals are "earlier pods" + "this pod's latest report", never a sum of deltas.

use std::collections::{BTreeMap, VecDeque};

use agentsandbox_telemetry::v1 as wire;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use agentsandbox_operator::api::{
    EscapeAttempt, EscapeResponseRecord, PodEscapeCounts, ResponseTaken, SecurityStatus,
};

/// Attempts kept in `status.security.recentAttempts`.
pub const RECENT_ATTEMPTS: usize = 10;
pub const ESCAPE_ATTEMPTED: &str = "EscapeAttempted";
/// Reason of the Kubernetes Event.
pub const EVENT_REASON: &str = "EscapeAttempt";

/// What one pod's runtime reported so far (cumulative; only ever grows).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodTotals {
    pub total: u64,
    pub by_category: BTreeMap<String, u64>,
    pub dropped: u64,
    /// Kill or Quarantine, once the runtime carried it out.
    pub response: Option<ResponseTaken>,
}

impl PodTotals {
    /// Takes a report in. Reports can arrive twice or out of order (a shim resends after a
    /// reconnect): each figure keeps its maximum.
    pub fn absorb(&mut self, report: &wire::EscapeReport) {
        self.total = self.total.max(report.total);
        for c in &report.by_category {
            let count = self.by_category.entry(c.category.clone()).or_default();
            *count = (*count).max(c.count);
        }
        self.dropped = self.dropped.max(report.dropped_details);
        let response = wire::Action::taken_from_wire(report.response);
        if response != ResponseTaken::Denied && self.response.is_none_or(|r| response > r) {
            self.response = Some(response);
        }
    }
}

/// One wire attempt as the API shows it.
pub fn to_api_attempt(attempt: &wire::EscapeAttempt) -> EscapeAttempt {
    let time = jiff::Timestamp::from_nanosecond(i128::from(attempt.time_unix_nanos))
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    EscapeAttempt {
        time: Time(time),
        container: attempt.container.chars().take(63).collect(),
        pid: i64::from(attempt.pid),
        syscall: attempt.syscall.clone(),
        category: attempt.category.clone(),
        summary: (!attempt.summary.is_empty()).then(|| attempt.summary.clone()),
        action: wire::Action::taken_from_wire(attempt.action),
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The new `status.security` of a sandbox: `existing` (what the status says now) with the
/// latest totals of pod `pod_uid` and the attempts received since the last write (`fresh`,
/// oldest first).
pub fn merge_security(
    existing: Option<&SecurityStatus>,
    pod_uid: &str,
    totals: &PodTotals,
    fresh: &VecDeque<EscapeAttempt>,
    now: &Time,
) -> SecurityStatus {
    let empty = SecurityStatus::default();
    let existing = existing.unwrap_or(&empty);
    let same_pod = existing
        .current_pod
        .as_ref()
        .filter(|p| p.pod_uid == pod_uid);
    // Earlier pods' share of the totals.
    let mut base_total = existing.escape_attempts;
    let mut base_categories = existing.attempts_by_category.clone().unwrap_or_default();
    let mut base_dropped = existing.dropped_events;
    let mut pod_total = to_i64(totals.total);
    let mut pod_categories: BTreeMap<String, i64> = totals
        .by_category
        .iter()
        .map(|(k, v)| (k.clone(), to_i64(*v)))
        .collect();
    let mut pod_dropped = to_i64(totals.dropped);
    if let Some(pod) = same_pod {
        base_total -= pod.escape_attempts;
        base_dropped -= pod.dropped_events;
        for (category, count) in pod.attempts_by_category.iter().flatten() {
            *base_categories.entry(category.clone()).or_default() -= count;
            let mine = pod_categories.entry(category.clone()).or_default();
            *mine = (*mine).max(*count);
        }
        // A pod's counts never go backwards (a restarted shim would start from 0).
        pod_total = pod_total.max(pod.escape_attempts);
        pod_dropped = pod_dropped.max(pod.dropped_events);
    }
    let mut categories = base_categories;
    for (category, count) in &pod_categories {
        *categories.entry(category.clone()).or_default() += count;
    }
    categories.retain(|_, v| *v > 0);

    let mut recent: Vec<EscapeAttempt> = fresh.iter().rev().cloned().collect();
    recent.extend(existing.recent_attempts.iter().flatten().cloned());
    recent.truncate(RECENT_ATTEMPTS);

    let response = match totals.response {
        Some(action) => Some(
            existing
                .response
                .clone()
                .filter(|r| r.pod_uid == pod_uid && r.action == action)
                .unwrap_or_else(|| EscapeResponseRecord {
                    action,
                    pod_uid: pod_uid.into(),
                    time: now.clone(),
                }),
        ),
        None => existing.response.clone(),
    };

    SecurityStatus {
        escape_attempts: base_total + pod_total,
        attempts_by_category: (!categories.is_empty()).then_some(categories),
        last_attempt: recent.first().cloned().or(existing.last_attempt.clone()),
        recent_attempts: (!recent.is_empty()).then_some(recent),
        dropped_events: base_dropped + pod_dropped,
        current_pod: Some(PodEscapeCounts {
            pod_uid: pod_uid.into(),
            escape_attempts: pod_total,
            attempts_by_category: (!pod_categories.is_empty()).then_some(pod_categories),
            dropped_events: pod_dropped,
        }),
        response,
    }
}

/// One line naming the last attempt, for the condition and the Event.
fn last_attempt_text(security: &SecurityStatus) -> String {
    match &security.last_attempt {
        Some(a) => format!(
            "last: {}{} ({}) by container {} pid {}",
            a.syscall,
            a.summary
                .as_deref()
                .map(|s| format!(" {s}"))
                .unwrap_or_default(),
            a.category,
            a.container,
            a.pid
        ),
        None => "no detail kept".into(),
    }
}

/// The `EscapeAttempted` condition (True once any attempt was denied).
pub fn escape_condition(
    security: &SecurityStatus,
    previous: Option<&Condition>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let reason = match security.response.as_ref().map(|r| r.action) {
        Some(ResponseTaken::Killed) => "SandboxKilled",
        Some(ResponseTaken::Quarantined) => "SandboxQuarantined",
        Some(ResponseTaken::Denied) | None => "AttemptsDenied",
    };
    let last_transition_time = previous
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: ESCAPE_ATTEMPTED.into(),
        status: "True".into(),
        reason: reason.into(),
        message: format!(
            "{} escape attempt(s) denied by the runtime; {}",
            security.escape_attempts,
            last_attempt_text(security)
        ),
        observed_generation: generation,
        last_transition_time,
    }
}

/// The message of the sandbox's aggregated `EscapeAttempt` Event (its count is the total).
pub fn event_message(security: &SecurityStatus) -> String {
    let categories = security
        .attempts_by_category
        .iter()
        .flatten()
        .map(|(c, n)| format!("{c}={n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let response = match security.response.as_ref().map(|r| r.action) {
        Some(ResponseTaken::Killed) => "; the sandbox was killed",
        Some(ResponseTaken::Quarantined) => "; the sandbox is quarantined (frozen, network cut)",
        Some(ResponseTaken::Denied) | None => "",
    };
    format!(
        "{} escape attempt(s) denied ({categories}); {}{response}",
        security.escape_attempts,
        last_attempt_text(security)
    )
}
