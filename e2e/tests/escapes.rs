//! Escape-attempt telemetry on the real cluster: the attack program inside an AgentSandbox,
//! the shim's seccomp listener, the node agent's socket, and what lands on the AgentSandbox
//! (status.security, condition, Event, metric), plus the Kill and Quarantine responses.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use agentsandbox_e2e::{
    attack_done_at, attack_outcomes, attack_sandbox_yaml, busybox_pod, container_host_pid, crictl,
    metric_sum, node_agent_metrics, sandbox_events, telemetry_socket_probe, wait_sandbox_ready,
    wait_until, Cluster,
};
use agentsandbox_operator::api::{AgentSandbox, Phase, ResponseTaken};
use kube::Api;

/// What the runtime must report each escape-relevant syscall as (the categories);
/// calls not listed here (plain `open`s of protected files) are refused by other means and
/// are not escape attempts the runtime reports.
const CATEGORIES: &[(&str, &str)] = &[
    ("unshare", "namespace"),
    ("setns", "namespace"),
    ("clone", "namespace"),
    ("mount", "mount"),
    ("pivot_root", "mount"),
    ("fsopen", "mount"),
    ("ptrace", "ptrace"),
    ("process_vm_readv", "ptrace"),
    ("bpf", "bpf"),
    ("keyctl", "keyring"),
    ("add_key", "keyring"),
    ("io_uring_setup", "io_uring"),
    ("init_module", "kernel"),
    ("finit_module", "kernel"),
    ("kexec_load", "kernel"),
    ("perf_event_open", "kernel"),
    ("open_by_handle_at", "fs-handle"),
    ("userfaultfd", "userfaultfd"),
    ("socket", "network"),
    ("setsockopt", "network"),
    ("pidfd_getfd", "ptrace"),
    ("seccomp", "seccomp"),
    ("prctl", "seccomp"),
    ("chroot", "mount"),
    ("name_to_handle_at", "fs-handle"),
    ("vmsplice", "kernel"),
    ("personality", "kernel"),
    ("syslog", "kernel"),
    // Answered ENOSYS (libc falls back to clone) and reported when it asks for a namespace.
    ("clone3", "namespace"),
];

/// What a reported call returns to the caller.
fn denial(syscall: &str) -> &'static str {
    if syscall == "clone3" {
        "ENOSYS"
    } else {
        "EPERM"
    }
}

fn category(syscall: &str) -> Option<&'static str> {
    CATEGORIES
        .iter()
        .find(|(s, _)| *s == syscall)
        .map(|(_, c)| *c)
}

#[tokio::test]
async fn every_attack_is_denied_and_counted_exactly_on_status_event_and_metric_within_two_seconds()
{
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("esc-count");
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    cluster
        .apply(&attack_sandbox_yaml(&ns.name, "attacker", &[], ""))
        .unwrap();

    // Watch the count while the attack runs: the first time each value is seen.
    let mut first_seen: BTreeMap<i64, SystemTime> = BTreeMap::new();
    let mut expected: Option<(BTreeMap<String, i64>, SystemTime, String)> = None;
    let started = Instant::now();
    let sandbox = loop {
        let sandbox = api.get("attacker").await.unwrap();
        let status = sandbox.status.clone().unwrap_or_default();
        let count = status.security.as_ref().map_or(0, |s| s.escape_attempts);
        first_seen.entry(count).or_insert_with(SystemTime::now);
        if expected.is_none() && status.phase == Some(Phase::Finished) {
            let logs = cluster
                .kubectl_ok(&["-n", &ns.name, "logs", "attacker"])
                .unwrap();
            let mut by_category = BTreeMap::new();
            for (technique, (syscall, outcome)) in attack_outcomes(&logs) {
                if technique == "done" {
                    continue;
                }
                assert_ne!(
                    outcome, "ALLOWED",
                    "{technique} ({syscall}) succeeded:\n{logs}"
                );
                if let Some(c) = category(&syscall) {
                    assert_eq!(
                        outcome,
                        denial(&syscall),
                        "{technique} ({syscall}):\n{logs}"
                    );
                    *by_category.entry(c.to_string()).or_insert(0) += 1;
                }
            }
            let done = attack_done_at(&logs).expect("the attack program's done line");
            expected = Some((by_category, done, logs));
        }
        if let Some((by_category, _, _)) = &expected {
            if count == by_category.values().sum::<i64>() {
                break sandbox;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "status.security never reached the attack's count: {:?} (expected {:?})",
            status.security,
            expected.as_ref().map(|e| &e.0)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (by_category, done, logs) = expected.unwrap();
    let total: i64 = by_category.values().sum();
    assert!(
        by_category.len() >= 11 && total >= 30,
        "the attack made at least 30 reportable attempts in 11 categories: {by_category:?}\n{logs}"
    );
    let security = sandbox.status.clone().unwrap().security.unwrap();
    assert_eq!(security.escape_attempts, total);
    assert_eq!(security.attempts_by_category.clone().unwrap(), by_category);
    assert_eq!(security.dropped_events, 0);
    let latency = first_seen[&total]
        .duration_since(done)
        .unwrap_or(Duration::ZERO);
    assert!(
        latency <= Duration::from_secs(2),
        "the status showed the last attempt {latency:?} after it was made"
    );
    let last = security.last_attempt.clone().unwrap();
    assert_eq!(last.container, "agent");
    assert_eq!(last.action, ResponseTaken::Denied);
    let condition = sandbox.condition("EscapeAttempted").unwrap();
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "AttemptsDenied")
    );

    // The Event and the metric agree with the status.
    let events = wait_until(
        "the EscapeAttempt event's count",
        Duration::from_secs(10),
        || async {
            let events = sandbox_events(&cluster, &ns.name, "attacker", "EscapeAttempt").ok()?;
            (events.len() == 1 && events[0].0 == total).then_some(events)
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}: {:?}",
            sandbox_events(&cluster, &ns.name, "attacker", "EscapeAttempt")
        )
    });
    assert_eq!(events[0].1, "Warning");
    let metrics = node_agent_metrics(&cluster).unwrap();
    for (category, count) in &by_category {
        let value = metric_sum(
            &metrics,
            "agentsandbox_escape_attempts_total",
            &[
                ("namespace", &ns.name),
                ("sandbox", "attacker"),
                ("category", category),
            ],
        );
        assert_eq!(value as i64, *count, "metric for {category}:\n{metrics}");
    }
}

#[tokio::test]
async fn kill_response_stops_the_sandbox_at_its_first_attempt() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("esc-kill");
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    // One attempt every 500 ms, for ever unless stopped.
    cluster
        .apply(&attack_sandbox_yaml(
            &ns.name,
            "killme",
            &["paced", "100000", "500"],
            "  security:\n    onEscapeAttempt: Kill\n",
        ))
        .unwrap();
    let sandbox = wait_until("phase Failed", Duration::from_secs(90), || async {
        let s = api.get("killme").await.ok()?;
        (s.status.as_ref()?.phase == Some(Phase::Failed)).then_some(s)
    })
    .await
    .unwrap();
    let ready = sandbox.condition("Ready").unwrap();
    assert_eq!(ready.reason, "EscapeAttempt", "{}", ready.message);
    let security = sandbox.status.clone().unwrap().security.unwrap();
    assert_eq!(security.escape_attempts, 1, "killed at the first attempt");
    assert_eq!(security.response.unwrap().action, ResponseTaken::Killed);
    cluster
        .wait_pod(&ns.name, "killme", "jsonpath={.status.phase}=Failed")
        .unwrap();
    let exit = cluster
        .pod_field(
            &ns.name,
            "killme",
            "{.status.containerStatuses[0].state.terminated.exitCode}",
        )
        .unwrap();
    assert_eq!(exit, "137", "SIGKILL");
    let logs = cluster
        .kubectl_ok(&["-n", &ns.name, "logs", "killme"])
        .unwrap();
    assert!(
        logs.contains("attempt 1 ") && !logs.contains("attempt 2 "),
        "{logs}"
    );
}

/// `busybox nc` from inside the network namespace of process `pid` (not frozen: it is not in
/// the sandbox's cgroup), to the test's own server.
fn reach_from_netns_of(pid: u32, ip: &str) -> String {
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["busybox", "nc", "-w", "2", ip, "8080"])
        .stdin(Stdio::null())
        .output()
        .expect("nsenter runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The freezer state of a container's cgroup (v1 freezer, else cgroup v2's cgroup.freeze).
fn frozen(container_id: &str) -> bool {
    let id = container_id.trim_start_matches("containerd://");
    let inspect: serde_json::Value =
        serde_json::from_str(&crictl(&["inspect", id]).unwrap()).unwrap();
    let path = inspect["info"]["runtimeSpec"]["linux"]["cgroupsPath"]
        .as_str()
        .expect("cgroupsPath")
        .trim_start_matches('/')
        .to_string();
    let v1 = std::path::Path::new("/sys/fs/cgroup/freezer")
        .join(&path)
        .join("freezer.state");
    if let Ok(state) = std::fs::read_to_string(&v1) {
        return state.trim() == "FROZEN";
    }
    std::fs::read_to_string(
        std::path::Path::new("/sys/fs/cgroup")
            .join(&path)
            .join("cgroup.freeze"),
    )
    .map(|s| s.trim() == "1")
    .unwrap_or(false)
}

#[tokio::test]
async fn quarantine_freezes_the_sandbox_cuts_its_network_and_deleting_the_pod_releases_it() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("esc-quar");
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    cluster
        .apply(&busybox_pod(
            &ns.name,
            "target",
            "trap 'exit 0' TERM; nc -ll -p 8080 -e echo target-greeting & wait",
        ))
        .unwrap();
    cluster
        .wait_pod(&ns.name, "target", "condition=Ready")
        .unwrap();
    let target_ip = cluster
        .pod_field(&ns.name, "target", "{.status.podIP}")
        .unwrap();
    // Idle (`flood 0 0` makes no attempt and waits), allowed to reach the target.
    let extra = format!(
        "  security:\n    onEscapeAttempt: Quarantine\n  network:\n    egress: Deny\n    egressAllow:\n    - cidr: {target_ip}/32\n      ports: [{{port: 8080}}]\n"
    );
    cluster
        .apply(&attack_sandbox_yaml(
            &ns.name,
            "suspect",
            &["flood", "0", "0"],
            &extra,
        ))
        .unwrap();
    let sandbox = wait_sandbox_ready(&api, "suspect", Duration::from_secs(90))
        .await
        .unwrap();
    let pod = sandbox.status.unwrap().pod_name.unwrap();
    let container = cluster
        .pod_field(&ns.name, &pod, "{.status.containerStatuses[0].containerID}")
        .unwrap();
    let pid = container_host_pid(&container).unwrap();
    assert_eq!(
        reach_from_netns_of(pid, &target_ip),
        "target-greeting",
        "before quarantine"
    );
    assert!(!frozen(&container));

    // The agent tries to leave its user namespace (kubectl exec hangs: the process is frozen
    // before it can report back).
    let mut exec = cluster
        .kubectl_command()
        .args([
            "-n",
            &ns.name,
            "exec",
            &pod,
            "--",
            "agentsandbox-attack",
            "unshare-user-ns",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let quarantined = wait_until("phase Quarantined", Duration::from_secs(30), || async {
        let s = api.get("suspect").await.ok()?;
        (s.status.as_ref()?.phase == Some(Phase::Quarantined)).then_some(s)
    })
    .await;
    let _ = exec.kill();
    let _ = exec.wait();
    let sandbox = quarantined.unwrap();
    assert!(frozen(&container), "the agent's processes are frozen");
    assert_eq!(
        reach_from_netns_of(pid, &target_ip),
        "",
        "the network is cut"
    );
    let ready = sandbox.condition("Ready").unwrap();
    assert!(
        ready.message.contains(&format!("kubectl delete pod {pod}")),
        "{}",
        ready.message
    );
    assert_eq!(
        sandbox.condition("EscapeAttempted").unwrap().reason,
        "SandboxQuarantined"
    );
    let security = sandbox.status.unwrap().security.unwrap();
    assert_eq!(security.escape_attempts, 1);
    assert_eq!(security.last_attempt.unwrap().syscall, "unshare");
    // Nothing more runs in it: an exec is refused at once, not left hanging in the frozen
    // cgroup.
    let started = Instant::now();
    let (code, _, err) = cluster.exec(&ns.name, &pod, &["true"]);
    assert_ne!(code, 0);
    assert!(err.contains("quarantined after an escape attempt"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the refused exec took {:?}",
        started.elapsed()
    );
    // Kept for forensics: the pod is still there, frozen, after a while.
    assert_eq!(
        cluster
            .pod_field(&ns.name, &pod, "{.status.phase}")
            .unwrap(),
        "Running"
    );

    // The documented release: delete the pod; a fresh one replaces it and runs normally.
    let old_uid = cluster
        .pod_field(&ns.name, &pod, "{.metadata.uid}")
        .unwrap();
    cluster
        .kubectl_ok(&["-n", &ns.name, "delete", "pod", &pod, "--timeout=60s"])
        .expect("a quarantined pod can be deleted (its processes are thawed to die)");
    let sandbox = wait_until("a fresh pod, Ready", Duration::from_secs(90), || async {
        let s = api.get("suspect").await.ok()?;
        let new_uid = cluster.pod_field(&ns.name, &pod, "{.metadata.uid}").ok()?;
        (new_uid != old_uid && s.condition("Ready")?.status == "True").then_some(s)
    })
    .await
    .unwrap();
    assert_eq!(sandbox.status.unwrap().phase, Some(Phase::Running));
}

#[tokio::test]
async fn a_non_root_client_on_the_node_cannot_reach_the_telemetry_socket() {
    // The socket the chart's node agent serves on this node (the shim's default).
    let socket = agentsandbox_telemetry::DEFAULT_SOCKET;
    let _cluster = Cluster::connect().await;
    assert_eq!(
        telemetry_socket_probe(socket, 0),
        "h2",
        "root (the shim) is served"
    );
    let nobody = telemetry_socket_probe(socket, 65534);
    assert_eq!(nobody, "connect-error 13", "uid 65534 gets EACCES");
}
