//! The shim's telemetry buffer: exact cumulative counts, bounded details, resend after a
//! reconnect, and the argument summaries.

use agentsandbox_shim::telemetry::{summarize, TelemetryBuffer};
use agentsandbox_telemetry::v1::{Action, EscapeAttempt, PodRef, ReportAck};

fn attempt(syscall: &str, category: &str) -> EscapeAttempt {
    EscapeAttempt {
        container: "agent".into(),
        syscall: syscall.into(),
        category: category.into(),
        action: Action::Denied as i32,
        ..Default::default()
    }
}

fn pod() -> PodRef {
    PodRef {
        pod_uid: "uid-1".into(),
        ..Default::default()
    }
}

#[test]
fn counts_are_exact_and_cumulative_in_every_report() {
    let mut buffer = TelemetryBuffer::new(8);
    buffer.record(attempt("unshare", "namespace"));
    buffer.record(attempt("mount", "mount"));
    let first = buffer.next_report(&pod()).expect("a report");
    assert_eq!(first.total, 2);
    assert_eq!(first.attempts.len(), 2);
    buffer.record(attempt("unshare", "namespace"));
    let second = buffer.next_report(&pod()).expect("a report");
    assert_eq!(second.total, 3, "totals are cumulative, not deltas");
    assert_eq!(
        second.attempts.len(),
        1,
        "details go out once per connection"
    );
    let namespace = second
        .by_category
        .iter()
        .find(|c| c.category == "namespace")
        .unwrap();
    assert_eq!(namespace.count, 2);
    assert!(
        buffer.next_report(&pod()).is_none(),
        "nothing new: no report"
    );
}

#[test]
fn a_full_buffer_drops_the_oldest_details_and_counts_them_but_never_the_counts() {
    let mut buffer = TelemetryBuffer::new(4);
    for _ in 0..10 {
        buffer.record(attempt("unshare", "namespace"));
    }
    let report = buffer.next_report(&pod()).unwrap();
    assert_eq!(report.total, 10);
    assert_eq!(report.dropped_details, 6);
    assert_eq!(
        report.attempts.iter().map(|a| a.seq).collect::<Vec<_>>(),
        vec![7, 8, 9, 10],
        "the newest details are kept"
    );
}

#[test]
fn unacknowledged_details_are_resent_after_a_reconnect_and_acknowledged_ones_are_not() {
    let mut buffer = TelemetryBuffer::new(16);
    for _ in 0..3 {
        buffer.record(attempt("ptrace", "ptrace"));
    }
    let report = buffer.next_report(&pod()).unwrap();
    buffer.acknowledge(&ReportAck {
        report_seq: report.report_seq,
        attempts_through: 2,
    });
    assert!(!buffer.settled(), "attempt 3 is not acknowledged");
    buffer.reconnected();
    let resent = buffer.next_report(&pod()).unwrap();
    assert_eq!(resent.total, 3);
    assert_eq!(
        resent.attempts.iter().map(|a| a.seq).collect::<Vec<_>>(),
        vec![3]
    );
    buffer.acknowledge(&ReportAck {
        report_seq: resent.report_seq,
        attempts_through: 3,
    });
    assert!(buffer.settled());
}

#[test]
fn after_a_reconnect_the_counts_are_sent_again_even_without_new_details() {
    let mut buffer = TelemetryBuffer::new(2);
    for _ in 0..5 {
        buffer.record(attempt("bpf", "bpf"));
    }
    let report = buffer.next_report(&pod()).unwrap();
    buffer.acknowledge(&ReportAck {
        report_seq: report.report_seq,
        attempts_through: 5,
    });
    assert!(buffer.settled());
    buffer.reconnected();
    let again = buffer.next_report(&pod()).expect("the totals again");
    assert_eq!((again.total, again.dropped_details), (5, 3));
    assert!(again.attempts.is_empty());
}

#[test]
fn the_strongest_response_is_reported() {
    let mut buffer = TelemetryBuffer::new(4);
    let mut quarantined = attempt("unshare", "namespace");
    quarantined.action = Action::Quarantined as i32;
    buffer.record(quarantined);
    buffer.record(attempt("mount", "mount"));
    let report = buffer.next_report(&pod()).unwrap();
    assert_eq!(report.response, Action::Quarantined as i32);
}

#[test]
fn summaries_name_namespace_flags_and_never_follow_pointers() {
    assert_eq!(
        summarize("unshare", &[0x1000_0000 | 0x0002_0000, 0, 0, 0, 0, 0]),
        "flags=CLONE_NEWNS|CLONE_NEWUSER"
    );
    assert_eq!(
        summarize("setns", &[3, 0x4000_0000, 0, 0, 0, 0]),
        "nstype=CLONE_NEWNET"
    );
    assert_eq!(
        summarize("ptrace", &[16, 42, 0x7fff_0000, 0, 0, 0]),
        "request=16 pid=42"
    );
    assert_eq!(
        summarize("fsopen", &[0x7fff_1234, 0, 0, 0, 0, 0]),
        "",
        "a pointer argument is not shown"
    );
}

#[test]
fn attempts_counted_without_details_keep_the_counts_exact_and_count_the_details_dropped() {
    let mut buffer = TelemetryBuffer::new(4);
    buffer.record(attempt("unshare", "namespace"));
    buffer.record_uncounted_details("namespace", 1_000_000, Action::Denied);
    buffer.record_uncounted_details("mount", 7, Action::Killed);
    assert_eq!(buffer.total(), 1_000_008);
    assert_eq!(buffer.dropped(), 1_000_007);
    let report = buffer.next_report(&pod()).expect("a report");
    assert_eq!(report.total, 1_000_008);
    let count = |category: &str| {
        report
            .by_category
            .iter()
            .find(|c| c.category == category)
            .map(|c| c.count)
    };
    assert_eq!(count("namespace"), Some(1_000_001));
    assert_eq!(count("mount"), Some(7));
    assert_eq!(report.dropped_details, 1_000_007);
    assert_eq!(report.attempts.len(), 1, "only the one kept detail");
    assert_eq!(
        report.response,
        Action::Killed as i32,
        "the strongest response taken"
    );
}
