//! The lifecycle rules, as a table: what was observed and the time -> what to do and when to
//! look again. No API server, no clock.

use std::time::Duration;

use agentsandbox_operator::api::{ActivityStatus, Lifetime, OperatingMode, ShutdownPolicy};
use agentsandbox_operator::lifecycle::{
    idle_for, parse_duration, plan, requeue_after_finishing, Observed, ObservedPod, Plan,
    PodDeletion, PodStep, SandboxDeletion, RESYNC,
};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

const HASH: &str = "hash-1";

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).unwrap()
}

fn pod() -> ObservedPod {
    ObservedPod {
        owned: true,
        deleting: false,
        spec_hash: Some(HASH.into()),
        quarantined: false,
        start_time: Some(t(0)),
    }
}

fn observed<'a>(lifetime: &'a Lifetime, pod: Option<ObservedPod>) -> Observed<'a> {
    Observed {
        lifetime,
        operating_mode: OperatingMode::Running,
        finished_at: None,
        activity: None,
        pod,
        desired_pod_hash: HASH.into(),
    }
}

fn run(pod: PodStep, requeue: Duration) -> Plan {
    Plan::Run {
        pod,
        shut_down: false,
        requeue,
    }
}

#[test]
fn a_new_sandbox_gets_a_pod_and_a_running_one_is_kept() {
    let lifetime = Lifetime::default();
    assert_eq!(
        plan(&observed(&lifetime, None), t(10)),
        run(PodStep::Create, RESYNC)
    );
    assert_eq!(
        plan(&observed(&lifetime, Some(pod())), t(10)),
        run(PodStep::Keep, RESYNC)
    );
}

#[test]
fn a_changed_spec_replaces_the_pod_and_a_deleting_pod_is_waited_for() {
    let lifetime = Lifetime::default();
    let stale = ObservedPod {
        spec_hash: Some("hash-0".into()),
        ..pod()
    };
    assert_eq!(
        plan(&observed(&lifetime, Some(stale)), t(10)),
        run(PodStep::Replace, Duration::from_secs(1))
    );
    let going = ObservedPod {
        deleting: true,
        spec_hash: Some("hash-0".into()),
        ..pod()
    };
    assert_eq!(
        plan(&observed(&lifetime, Some(going)), t(10)),
        run(PodStep::Keep, Duration::from_secs(1))
    );
}

#[test]
fn a_pod_of_someone_else_is_reported_never_adopted_or_deleted() {
    let lifetime = Lifetime::default();
    let foreign = ObservedPod {
        owned: false,
        ..pod()
    };
    let mut suspended = observed(&lifetime, Some(foreign.clone()));
    suspended.operating_mode = OperatingMode::Suspended;
    for o in [observed(&lifetime, Some(foreign)), suspended] {
        assert_eq!(plan(&o, t(10)), run(PodStep::Foreign, RESYNC));
    }
}

#[test]
fn suspending_deletes_the_pod_once_and_a_suspended_sandbox_stays_without_one() {
    let lifetime = Lifetime::default();
    let mut o = observed(&lifetime, Some(pod()));
    o.operating_mode = OperatingMode::Suspended;
    assert_eq!(
        plan(&o, t(10)),
        run(
            PodStep::Delete(PodDeletion::Suspended),
            Duration::from_secs(2)
        )
    );
    o.pod = Some(ObservedPod {
        deleting: true,
        ..pod()
    });
    assert_eq!(plan(&o, t(10)), run(PodStep::Keep, Duration::from_secs(2)));
    o.pod = None;
    assert_eq!(plan(&o, t(10)), run(PodStep::Keep, RESYNC));
    // Resuming creates a new pod.
    o.operating_mode = OperatingMode::Running;
    assert_eq!(plan(&o, t(10)), run(PodStep::Create, RESYNC));
}

#[test]
fn shutdown_time_ends_the_sandbox_per_its_policy() {
    let retain = Lifetime {
        shutdown_time: Some(Time(t(100))),
        ..Lifetime::default()
    };
    // Before: look again right after the deadline.
    assert_eq!(
        plan(&observed(&retain, Some(pod())), t(40)),
        run(PodStep::Keep, Duration::from_millis(60_100))
    );
    // After, Retain: the pod goes, the sandbox stays (Finished).
    assert_eq!(
        plan(&observed(&retain, Some(pod())), t(100)),
        Plan::Run {
            pod: PodStep::Delete(PodDeletion::ShutdownTime),
            shut_down: true,
            requeue: Duration::from_secs(2),
        }
    );
    // After, Delete: the sandbox itself goes.
    let delete = Lifetime {
        shutdown_policy: ShutdownPolicy::Delete,
        ..retain
    };
    assert_eq!(
        plan(&observed(&delete, Some(pod())), t(101)),
        Plan::DeleteSandbox(SandboxDeletion::ShutdownTime)
    );
}

#[test]
fn a_finished_sandbox_is_deleted_when_its_ttl_runs_out() {
    let lifetime = Lifetime {
        ttl_seconds_after_finished: Some(30),
        ..Lifetime::default()
    };
    let mut o = observed(&lifetime, Some(pod()));
    o.finished_at = Some(t(0));
    assert_eq!(
        plan(&o, t(10)),
        run(PodStep::Keep, Duration::from_millis(20_100))
    );
    assert_eq!(
        plan(&o, t(30)),
        Plan::DeleteSandbox(SandboxDeletion::TtlExpired { ttl_seconds: 30 })
    );
    // Not finished: no TTL.
    o.finished_at = None;
    assert_eq!(plan(&o, t(1000)), run(PodStep::Keep, RESYNC));
}

#[test]
fn the_reconcile_that_finishes_a_sandbox_sets_the_ttl_timer_itself() {
    // Its own status write wakes no reconcile, so the TTL must come from this requeue.
    let lifetime = Lifetime {
        ttl_seconds_after_finished: Some(30),
        ..Lifetime::default()
    };
    assert_eq!(
        requeue_after_finishing(&lifetime, t(0), t(0)),
        Some(Duration::from_millis(30_100))
    );
    assert_eq!(
        requeue_after_finishing(&lifetime, t(0), t(40)),
        Some(Duration::from_millis(100))
    );
    assert_eq!(
        requeue_after_finishing(&Lifetime::default(), t(0), t(0)),
        None
    );
}

fn activity(sampled: i64, active: Option<i64>) -> ActivityStatus {
    ActivityStatus {
        last_active_time: active.map(|s| Time(t(s))),
        last_sample_time: Some(Time(t(sampled))),
    }
}

#[test]
fn idle_timeout_suspends_only_on_fresh_measurements() {
    let lifetime = Lifetime {
        idle_timeout: Some("5m".into()),
        ..Lifetime::default()
    };
    let fresh_idle = activity(590, Some(100));
    let mut o = observed(&lifetime, Some(pod()));
    o.activity = Some(&fresh_idle);
    // Idle since 100 s, timeout 300 s: at 400 s it is suspended.
    assert_eq!(
        plan(&o, t(400)),
        Plan::Suspend {
            idle: Duration::from_secs(300)
        }
    );
    // At 250 s: look again when the timeout would pass.
    let early = activity(240, Some(100));
    o.activity = Some(&early);
    assert_eq!(
        plan(&o, t(250)),
        run(PodStep::Keep, Duration::from_secs(151))
    );
    // Stale measurements (node agent gone): never suspended, looked at again soon.
    let stale = activity(100, Some(100));
    o.activity = Some(&stale);
    assert_eq!(
        plan(&o, t(10_000)),
        run(PodStep::Keep, Duration::from_secs(30))
    );
}

#[test]
fn a_quarantined_or_suspended_sandbox_is_never_suspended_for_idleness() {
    let lifetime = Lifetime {
        idle_timeout: Some("1m".into()),
        ..Lifetime::default()
    };
    let idle = activity(1000, None);
    let mut o = observed(
        &lifetime,
        Some(ObservedPod {
            quarantined: true,
            ..pod()
        }),
    );
    o.activity = Some(&idle);
    assert_eq!(plan(&o, t(1000)), run(PodStep::Keep, RESYNC));
    o.pod = Some(pod());
    o.operating_mode = OperatingMode::Suspended;
    assert_eq!(
        plan(&o, t(1000)),
        run(
            PodStep::Delete(PodDeletion::Suspended),
            Duration::from_secs(2)
        )
    );
}

#[test]
fn idleness_counts_from_the_later_of_pod_start_and_last_activity() {
    let a = activity(500, Some(100));
    assert_eq!(
        idle_for(Some(&a), Some(t(200)), t(500)),
        Some(Duration::from_secs(300))
    );
    assert_eq!(
        idle_for(Some(&a), Some(t(0)), t(500)),
        Some(Duration::from_secs(400))
    );
    assert_eq!(idle_for(None, Some(t(0)), t(500)), None);
    assert_eq!(idle_for(Some(&a), None, t(500)), None);
}

#[test]
fn durations_parse_like_the_crd_pattern() {
    assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
    assert_eq!(parse_duration("1h30m15s"), Some(Duration::from_secs(5415)));
    assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
    assert_eq!(parse_duration(""), None);
    assert_eq!(parse_duration("10"), None);
    assert_eq!(parse_duration("5d"), None);
}
