//! The operator's own process figures in /metrics.

use agentsandbox_operator::metrics::{cpu_seconds_of_stat, Metrics};

#[test]
fn cpu_seconds_are_utime_plus_stime_counted_after_the_command_name() {
    // A command name with a space and a parenthesis must not shift the fields.
    let stat =
        "4242 (agent (x) op) S 1 4242 4242 0 -1 4194560 5000 0 0 0 1234 566 0 0 20 0 9 0 100 0 0";
    assert_eq!(cpu_seconds_of_stat(stat), Some(18.0));
    assert_eq!(cpu_seconds_of_stat("4242 (op) S 1"), None);
}

#[test]
fn the_exposition_carries_the_process_cpu_time() {
    let text = Metrics::default().encode();
    let line = text
        .lines()
        .find(|l| l.starts_with("agentsandbox_operator_cpu_seconds "))
        .expect("a cpu_seconds sample");
    let value: f64 = line.split_whitespace().last().unwrap().parse().unwrap();
    assert!(value >= 0.0, "{line}");
}
