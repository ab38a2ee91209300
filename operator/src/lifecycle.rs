//! The lifecycle rules of a sandbox, pure: from what the reconciler observed and the time, a
//! [`Plan`] of what to do and when to look again. The reconciler only carries the plan out, so
//! shutdown, TTL, idle suspension, suspend/resume, replacement and quarantine are all tested
//! here without an API server and without a clock.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use crate::api::{ActivityStatus, Lifetime, OperatingMode, ShutdownPolicy};

/// How often a sandbox is looked at even when nothing changes (lifetimes, drift).
pub const RESYNC: Duration = Duration::from_secs(300);
/// Idleness is judged only on node measurements at most this old; without them (no node
/// agent on the node, or it is down) a sandbox is never suspended for being idle.
pub const ACTIVITY_MAX_AGE: Duration = Duration::from_secs(120);
/// How soon to look again when idleness cannot be judged yet.
const IDLE_RECHECK: Duration = Duration::from_secs(30);
/// Margin after a deadline, so the next look finds it passed.
const AFTER_DEADLINE: Duration = Duration::from_millis(100);
/// How soon to look again while a pod is being deleted.
const POD_GONE_RECHECK: Duration = Duration::from_secs(1);
const POD_DELETE_RECHECK: Duration = Duration::from_secs(2);

/// The sandbox's pod as observed.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ObservedPod {
    /// Controlled by this sandbox (its controller owner reference has the sandbox's UID).
    pub owned: bool,
    /// Has a deletion timestamp.
    pub deleting: bool,
    /// Its pod-spec hash annotation.
    pub spec_hash: Option<String>,
    /// The runtime quarantined it (status.security.response names this pod).
    pub quarantined: bool,
    pub start_time: Option<Timestamp>,
}

/// Everything the rules look at.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed<'a> {
    pub lifetime: &'a Lifetime,
    pub operating_mode: OperatingMode,
    /// When the sandbox became Finished, if it did.
    pub finished_at: Option<Timestamp>,
    pub activity: Option<&'a ActivityStatus>,
    pub pod: Option<ObservedPod>,
    /// Hash of the pod the sandbox's spec asks for now.
    pub desired_pod_hash: String,
}

/// Why the sandbox object itself goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SandboxDeletion {
    /// `lifetime.shutdownTime` passed with `shutdownPolicy: Delete`.
    ShutdownTime,
    /// `ttlSecondsAfterFinished` ran out.
    TtlExpired { ttl_seconds: i64 },
}

/// What happens to the pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodStep {
    /// Nothing to do.
    Keep,
    Create,
    /// The spec changed: delete it; the next look creates the new one.
    Replace,
    /// Suspended or shut down: delete it, keep the workspace.
    Delete(PodDeletion),
    /// A pod of the sandbox's name belongs to something else: report, never adopt.
    Foreign,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PodDeletion {
    Suspended,
    ShutdownTime,
}

/// The outcome of the rules.
#[derive(Clone, Debug, PartialEq)]
pub enum Plan {
    DeleteSandbox(SandboxDeletion),
    /// Idle for at least `idleTimeout`: set `spec.operatingMode: Suspended`.
    Suspend {
        idle: Duration,
    },
    /// Keep the owned objects applied, take the pod step, write status, look again in `requeue`.
    Run {
        pod: PodStep,
        /// `lifetime.shutdownTime` has passed (status says Finished).
        shut_down: bool,
        requeue: Duration,
    },
}

fn until(deadline: Timestamp, now: Timestamp) -> Duration {
    now.duration_until(deadline)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

fn since(moment: Timestamp, now: Timestamp) -> Duration {
    until(now, moment)
}

/// How long the pod has been idle, from fresh node measurements; `None` when there are none.
pub fn idle_for(
    activity: Option<&ActivityStatus>,
    pod_started: Option<Timestamp>,
    now: Timestamp,
) -> Option<Duration> {
    let activity = activity?;
    let sampled = activity.last_sample_time.as_ref()?.0;
    if since(sampled, now) > ACTIVITY_MAX_AGE {
        return None;
    }
    let started = pod_started?;
    let last_active = activity
        .last_active_time
        .as_ref()
        .map(|t| t.0)
        .filter(|active| *active > started)
        .unwrap_or(started);
    Some(since(last_active, now))
}

/// Parses a Go-style duration of hours, minutes and seconds (`1h30m`, `45s`), the format
/// `lifetime.idleTimeout` accepts.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let value: u64 = number.parse().ok()?;
        number.clear();
        total += value
            * match c {
                'h' => 3600,
                'm' => 60,
                's' => 1,
                _ => return None,
            };
    }
    (number.is_empty() && !text.is_empty()).then_some(Duration::from_secs(total))
}

/// How long until `ttlSecondsAfterFinished` runs out for a sandbox that finished at
/// `finished` (zero once it has), if it has a TTL and has finished.
pub fn ttl_left(
    lifetime: &Lifetime,
    finished: Option<Timestamp>,
    now: Timestamp,
) -> Option<Duration> {
    let ttl = lifetime.ttl_seconds_after_finished?;
    Some(until(finished? + SignedDuration::from_secs(ttl), now))
}

/// When to look again at a sandbox whose status this reconcile turns Finished: its own
/// status write does not trigger a reconcile (`controller::reconcile_trigger`), so the TTL's
/// deadline must be a timer from here.
pub fn requeue_after_finishing(
    lifetime: &Lifetime,
    finished: Timestamp,
    now: Timestamp,
) -> Option<Duration> {
    ttl_left(lifetime, Some(finished), now).map(|left| left + AFTER_DEADLINE)
}

/// The rules, in order: the sandbox's own end (shutdown with Delete, TTL), idle suspension,
/// then what its pod needs.
pub fn plan(observed: &Observed, now: Timestamp) -> Plan {
    let lifetime = observed.lifetime;
    let mut requeue = RESYNC;

    let shut_down = lifetime.shutdown_time.as_ref().is_some_and(|t| t.0 <= now);
    if shut_down && lifetime.shutdown_policy == ShutdownPolicy::Delete {
        return Plan::DeleteSandbox(SandboxDeletion::ShutdownTime);
    }
    if let Some(t) = lifetime.shutdown_time.as_ref().filter(|_| !shut_down) {
        requeue = requeue.min(until(t.0, now) + AFTER_DEADLINE);
    }

    if let Some(left) = ttl_left(lifetime, observed.finished_at, now) {
        if left == Duration::ZERO {
            let ttl_seconds = lifetime.ttl_seconds_after_finished.unwrap_or_default();
            return Plan::DeleteSandbox(SandboxDeletion::TtlExpired { ttl_seconds });
        }
        requeue = requeue.min(left + AFTER_DEADLINE);
    }

    let suspended = observed.operating_mode == OperatingMode::Suspended;
    let own_pod = observed.pod.as_ref().filter(|p| p.owned);

    // A quarantined pod is frozen, hence idle: it is kept for forensics, never suspended.
    let idle_timeout = lifetime.idle_timeout.as_deref().and_then(parse_duration);
    if let (Some(timeout), Some(pod), false, false) = (idle_timeout, own_pod, suspended, shut_down)
    {
        if !pod.quarantined {
            match idle_for(observed.activity, pod.start_time, now) {
                Some(idle) if idle >= timeout => return Plan::Suspend { idle },
                Some(idle) => requeue = requeue.min(timeout - idle + Duration::from_secs(1)),
                None => requeue = requeue.min(IDLE_RECHECK),
            }
        }
    }

    let pod = match (&observed.pod, own_pod) {
        (Some(_), None) => PodStep::Foreign,
        (_, Some(pod)) if suspended || shut_down => {
            requeue = requeue.min(POD_DELETE_RECHECK);
            if pod.deleting {
                PodStep::Keep
            } else if suspended {
                PodStep::Delete(PodDeletion::Suspended)
            } else {
                PodStep::Delete(PodDeletion::ShutdownTime)
            }
        }
        (_, None) if suspended || shut_down => PodStep::Keep,
        (_, None) => PodStep::Create,
        (_, Some(pod)) if pod.deleting => {
            // Replaced or being deleted: create the new one once it is gone.
            requeue = requeue.min(POD_GONE_RECHECK);
            PodStep::Keep
        }
        (_, Some(pod)) if pod.spec_hash.as_deref() != Some(observed.desired_pod_hash.as_str()) => {
            requeue = requeue.min(POD_GONE_RECHECK);
            PodStep::Replace
        }
        (_, Some(_)) => PodStep::Keep,
    };
    Plan::Run {
        pod,
        shut_down,
        requeue,
    }
}
