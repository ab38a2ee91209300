//! The agentsandbox runtime (containerd-shim-agentsandbox-v1) driven by the real kubelet and
//! containerd: pods under RuntimeClass `agentsandbox` get the hardening whatever they asked
//! for, escape syscalls fail with EPERM, and nothing of a pod is left after it is deleted.
//! The same attack program under runc shows what the runtime adds.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use agentsandbox_e2e::{
    attack_image, attack_outcomes, busybox_image, busybox_pod, container_host_pid,
    containerd_major, containerd_socket, crictl, main_container, runtime_pod, sandbox_yaml,
    sandbox_yaml_running, state_dir, wait_sandbox_ready, wait_until_sync, Cluster, IDLE_LOOP,
    RUNTIME_CLASS,
};
use agentsandbox_operator::api::AgentSandbox;
use k8s_openapi::api::core::v1::{Pod, ResourceRequirements, SecurityContext};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::Api;

/// The escape techniques the issue names, by the attack program's technique names.
const MUST_BE_EPERM: &[&str] = &[
    "mount-tmpfs",
    "unshare-user-ns",
    "setns-mount-ns",
    "ptrace-attach",
    "bpf-map-create",
    "keyring-read",
    "io-uring-setup",
    "load-kernel-module",
    "open-by-handle-shocker",
    "socket-vsock-to-host",
    "socket-kernel-crypto-alg",
    "raw-socket",
    "packet-socket",
    "firewall-flush",
    "steal-fd-pidfd-getfd",
    "seccomp-listener-hijack",
    "silence-tripwire-filter",
    "chroot",
    "name-to-handle",
    "vmsplice-page-into-pipe",
    "personality-aslr-off",
    "read-kernel-log",
];

fn host_uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("Uid line")
}

fn run_attack(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    runtime_class: Option<&str>,
) -> BTreeMap<String, (String, String)> {
    cluster
        .apply(&runtime_pod(
            namespace,
            name,
            runtime_class,
            &attack_image(),
            "agentsandbox-attack",
        ))
        .unwrap();
    cluster
        .wait_pod(namespace, name, "jsonpath={.status.phase}=Succeeded")
        .unwrap_or_else(|e| panic!("attack pod {name} did not finish: {e}"));
    let logs = cluster
        .kubectl_ok(&["-n", namespace, "logs", name])
        .unwrap();
    let outcomes = attack_outcomes(&logs);
    assert!(outcomes.len() >= 20, "attack output incomplete:\n{logs}");
    outcomes
}

#[tokio::test]
async fn container_root_is_an_unprivileged_host_uid_and_image_files_stay_root_owned() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("rt-uid");
    cluster.idle_sandboxed_pod(&ns.name, "p");

    let (code, uid, _) = cluster.exec(&ns.name, "p", &["id", "-u"]);
    assert_eq!((code, uid.trim()), (0, "0"), "uid inside the sandbox");
    let container = cluster
        .pod_field(&ns.name, "p", "{.status.containerStatuses[0].containerID}")
        .unwrap();
    let pid = container_host_pid(&container).unwrap();
    let host_uid = host_uid_of(pid);
    assert!(host_uid >= 100_000, "container root is host uid {host_uid}");
    let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    assert_eq!(
        fields,
        ["0", &host_uid.to_string(), "65536"],
        "uid_map {uid_map}"
    );

    // Processes started by `kubectl exec` get the same user namespace and seccomp filter.
    let (_, exec_map, _) = cluster.exec(&ns.name, "p", &["cat", "/proc/self/uid_map"]);
    assert_eq!(
        exec_map.split_whitespace().collect::<Vec<_>>(),
        fields,
        "exec'd uid_map"
    );
    let (_, status, _) = cluster.exec(&ns.name, "p", &["cat", "/proc/self/status"]);
    let seccomp_mode = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim);
    assert_eq!(
        seccomp_mode,
        Some("2"),
        "exec'd process is not under the seccomp filter"
    );
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(str::trim);
    assert_eq!(
        cap_eff,
        Some("00000000000004fb"),
        "exec'd process capabilities"
    );

    // Image files owned by root in the image belong to the sandbox's root (idmapped layers),
    // not to the overflow user.
    let (_, owner, _) = cluster.exec(&ns.name, "p", &["stat", "-c", "%u:%g", "/bin/busybox"]);
    assert_eq!(owner.trim(), "0:0");
}

#[tokio::test]
async fn proc_shows_only_the_pods_own_processes() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("rt-proc");
    cluster.idle_sandboxed_pod(&ns.name, "p");
    let (code, listing, err) = cluster.exec(&ns.name, "p", &["ls", "/proc"]);
    assert_eq!(code, 0, "{err}");
    let pids: Vec<u32> = listing
        .split_whitespace()
        .filter_map(|e| e.parse().ok())
        .collect();
    // sh, its sleep, and ls itself; the host has hundreds.
    assert!(!pids.is_empty() && pids.len() <= 4, "/proc lists {pids:?}");
    let (_, init, _) = cluster.exec(&ns.name, "p", &["cat", "/proc/1/cmdline"]);
    assert!(
        init.starts_with("sh"),
        "pid 1 is {init:?}, not the container's command"
    );
}

#[tokio::test]
async fn escape_syscalls_fail_with_eperm_under_agentsandbox_and_partly_succeed_under_runc() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("rt-attack");
    let ours = run_attack(&cluster, &ns.name, "agentsandbox", Some(RUNTIME_CLASS));
    let runc = run_attack(&cluster, &ns.name, "runc", None);

    println!("| technique | syscall | runc (RuntimeDefault) | agentsandbox |");
    println!("|---|---|---|---|");
    for (technique, (syscall, outcome)) in &ours {
        let theirs = runc.get(technique).map(|(_, o)| o.as_str()).unwrap_or("-");
        println!("| {technique} | {syscall} | {theirs} | {outcome} |");
    }

    for technique in MUST_BE_EPERM {
        let (syscall, outcome) = &ours[*technique];
        assert_eq!(
            outcome, "EPERM",
            "{technique} ({syscall}) under agentsandbox"
        );
    }
    let allowed: Vec<&String> = ours
        .iter()
        .filter(|(_, (_, outcome))| outcome == "ALLOWED")
        .map(|(t, _)| t)
        .collect();
    assert!(
        allowed.is_empty(),
        "allowed under agentsandbox: {allowed:?}"
    );
    // What runc's default profile lets through and the agentsandbox runtime does not.
    // containerd 2.x took io_uring out of its RuntimeDefault profile; 1.x allows it.
    if containerd_major() >= 2 {
        assert_ne!(runc["io-uring-setup"].1, "ALLOWED", "io_uring under runc");
    } else {
        assert_eq!(runc["io-uring-setup"].1, "ALLOWED", "io_uring under runc");
    }
    assert_eq!(runc["ptrace-attach"].1, "ALLOWED", "ptrace under runc");
    // The 32-bit ABI is not admitted: the calling thread is killed (SIGSYS), where runc's
    // profile runs it.
    assert_eq!(ours["i386-int80-syscall"].1, "SIGSYS");
    assert_eq!(runc["i386-int80-syscall"].1, "ALLOWED");
    assert!(
        ours.len() >= 25,
        "the battery has {} techniques",
        ours.len()
    );
}

#[tokio::test]
async fn exec_logs_exit_codes_and_delete_work_and_leave_nothing_behind() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("rt-life");
    cluster
        .apply(&runtime_pod(
            &ns.name,
            "p",
            Some(RUNTIME_CLASS),
            &busybox_image(),
            &format!("echo hello-from-the-sandbox; {IDLE_LOOP}"),
        ))
        .unwrap();
    cluster.wait_pod(&ns.name, "p", "condition=Ready").unwrap();

    let logs = cluster.kubectl_ok(&["-n", &ns.name, "logs", "p"]).unwrap();
    assert_eq!(logs.trim(), "hello-from-the-sandbox");
    let (code, out, _) = cluster.exec(&ns.name, "p", &["sh", "-c", "echo exec-works; exit 7"]);
    assert_eq!((code, out.trim()), (7, "exec-works"));
    // An exec whose process outlives it (a detached background job) returns at once: nothing
    // of the runtime's own plumbing is inherited by the exec'd process.
    let started = std::time::Instant::now();
    let (code, _, err) = cluster.exec(
        &ns.name,
        "p",
        &["sh", "-c", "sleep 20 </dev/null >/dev/null 2>&1 &"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "exec took {:?}",
        started.elapsed()
    );

    let container = cluster
        .pod_field(&ns.name, "p", "{.status.containerStatuses[0].containerID}")
        .unwrap();
    let container_id = container.trim_start_matches("containerd://").to_string();
    let pid = container_host_pid(&container).unwrap();
    let pod_uid = cluster.pod_field(&ns.name, "p", "{.metadata.uid}").unwrap();
    let sandbox_id = crictl(&["pods", "-q", "--name", "p", "--namespace", &ns.name])
        .unwrap()
        .trim()
        .to_string();
    let inspect: serde_json::Value =
        serde_json::from_str(&crictl(&["inspectp", &sandbox_id]).unwrap()).unwrap();
    let netns = inspect["info"]["runtimeSpec"]["linux"]["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["type"] == "network")
        .and_then(|n| n["path"].as_str())
        .unwrap()
        .to_string();
    let slots_before = std::fs::read_dir("/run/agentsandbox/idmap")
        .unwrap()
        .count();
    assert!(slots_before >= 1);

    cluster
        .kubectl_ok(&[
            "-n",
            &ns.name,
            "delete",
            "pod",
            "p",
            "--wait=true",
            "--timeout=60s",
        ])
        .unwrap();
    // The kubelet removes the pod sandbox after the API object is gone, at its next garbage
    // collection (once a minute): two periods.
    wait_until_sync(
        "the pod sandbox to be removed",
        Duration::from_secs(130),
        || {
            let left = crictl(&["pods", "-q", "--id", &sandbox_id]).ok()?;
            left.trim().is_empty().then_some(())
        },
    )
    .unwrap();

    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} survived"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let leftover: Vec<&str> = mounts
        .lines()
        .filter(|l| l.contains(&container_id) || l.contains(&sandbox_id))
        .collect();
    assert!(leftover.is_empty(), "mounts left: {leftover:#?}");
    assert!(
        !Path::new(&netns).exists(),
        "network namespace {netns} left"
    );
    for controller in ["memory", "pids", "cpu"] {
        let dir = std::fs::read_dir(format!("/sys/fs/cgroup/{controller}/kubepods"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .flat_map(|qos| {
                let pod = qos.join(format!("pod{pod_uid}"));
                [
                    pod,
                    qos.parent().unwrap().join(format!("kubepods/pod{pod_uid}")),
                ]
            })
            .find(|p| p.exists());
        assert!(dir.is_none(), "cgroup left: {dir:?}");
    }
    assert!(
        !Path::new(&format!(
            "/run/agentsandbox/k8s.io/containers/{container_id}"
        ))
        .exists(),
        "shim state left"
    );
}

/// Applies `pod` (named `name`) and waits until `kubectl describe` shows one of `refusals`;
/// the pod must never run. Returns the description.
fn refused(cluster: &Cluster, namespace: &str, name: &str, pod: &Pod, refusals: &[&str]) -> String {
    cluster.apply(pod).unwrap();
    let message = wait_until_sync("the refusal to show", Duration::from_secs(60), || {
        let describe = cluster
            .kubectl_ok(&["-n", namespace, "describe", "pod", name])
            .ok()?;
        refusals
            .iter()
            .any(|r| describe.contains(r))
            .then_some(describe)
    })
    .unwrap();
    // The container never ran. (Not the pod phase: with containerd 1.7 a refused start is
    // recorded as a terminated container, which the kubelet counts as "restarting", so the
    // phase of a restartPolicy Always pod reads Running.)
    let started = cluster
        .pod_field(
            namespace,
            name,
            "{.status.containerStatuses[*].started}{.status.containerStatuses[*].state.running}",
        )
        .unwrap();
    assert!(
        !started.contains("true") && !started.contains("startedAt"),
        "{started}"
    );
    message
}

#[tokio::test]
async fn privileged_pods_are_refused_with_a_message_kubectl_describe_shows() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("rt-refuse");
    let mut pod = runtime_pod(
        &ns.name,
        "priv",
        Some(RUNTIME_CLASS),
        &busybox_image(),
        IDLE_LOOP,
    );
    main_container(&mut pod).security_context = Some(SecurityContext {
        privileged: Some(true),
        ..SecurityContext::default()
    });
    let message = refused(
        &cluster,
        &ns.name,
        "priv",
        &pod,
        &["agentsandbox refuses privileged containers"],
    );
    assert!(
        message.contains("remove securityContext.privileged"),
        "{message}"
    );
}

#[tokio::test]
async fn host_paths_outside_the_pods_own_volumes_are_refused() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("rt-hostpath");
    // Every sandbox's root filesystem, staged volumes and bundle (env secrets) live in the
    // runtime's state; every pod's volumes in the kubelet's pods directory.
    let kubelet_pods = agentsandbox_e2e::state_dir().join("kubelet/root/pods");
    let kubelet_pods = kubelet_pods.to_string_lossy();
    for (name, path) in [("state", "/run/agentsandbox"), ("kubelet", &*kubelet_pods)] {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": ns.name},
            "spec": {
                "runtimeClassName": RUNTIME_CLASS,
                "volumes": [{"name": "host", "hostPath": {"path": path, "type": "Directory"}}],
                "containers": [{"name": "main", "image": busybox_image(),
                                "command": ["sh", "-c", IDLE_LOOP],
                                "volumeMounts": [{"name": "host", "mountPath": "/host"}]}]
            }
        }))
        .unwrap();
        pod.metadata.namespace = Some(ns.name.clone());
        let message = refused(
            &cluster,
            &ns.name,
            name,
            &pod,
            &[&format!("agentsandbox refuses to mount host path {path}")],
        );
        assert!(message.contains("PersistentVolumeClaim"), "{message}");
    }
}

#[tokio::test]
async fn host_users_false_pods_are_refused_with_what_to_do() {
    // Kubernetes >= 1.36 with containerd 2.x gives such a pod a user namespace from the
    // kubelet's own ranges. containerd 2.4 reports that the agentsandbox handler does not
    // support them, so the kubelet refuses the pod itself; where a runtime stack passes the
    // pod on, the shim refuses it (shim/tests/policy.rs). Either way it never runs, and the
    // message says hostUsers.
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("rt-userns");
    let mut pod = runtime_pod(
        &ns.name,
        "userns",
        Some(RUNTIME_CLASS),
        &busybox_image(),
        IDLE_LOOP,
    );
    pod.spec.as_mut().unwrap().host_users = Some(false);
    let message = refused(
        &cluster,
        &ns.name,
        "userns",
        &pod,
        &[
            "can't set `spec.hostUsers: false`, RuntimeClass handler \"agentsandbox\" does not support user namespaces",
            "agentsandbox refuses pods with hostUsers: false",
        ],
    );
    assert!(message.contains("hostUsers"), "{message}");
}

fn server_pod(namespace: &str, name: &str, greeting: &str) -> Pod {
    busybox_pod(
        namespace,
        name,
        &format!("trap 'exit 0' TERM; nc -ll -p 8080 -e echo {greeting} & wait"),
    )
}

#[tokio::test]
async fn egress_allow_list_is_enforced_inside_the_pod_even_where_the_cni_ignores_network_policy() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("rt-egress");
    cluster
        .apply(&server_pod(&ns.name, "allowed", "allowed-greeting"))
        .unwrap();
    cluster
        .apply(&server_pod(&ns.name, "denied", "denied-greeting"))
        .unwrap();
    cluster
        .wait_pod(&ns.name, "allowed", "condition=Ready")
        .unwrap();
    cluster
        .wait_pod(&ns.name, "denied", "condition=Ready")
        .unwrap();
    let allowed_ip = cluster
        .pod_field(&ns.name, "allowed", "{.status.podIP}")
        .unwrap();
    let denied_ip = cluster
        .pod_field(&ns.name, "denied", "{.status.podIP}")
        .unwrap();

    let extra = format!(
        "  network:\n    egress: Deny\n    egressAllow:\n    - cidr: {allowed_ip}/32\n      ports: [{{port: 8080}}]\n"
    );
    cluster
        .apply(&sandbox_yaml(&ns.name, "agent", &extra))
        .unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let sandbox = wait_sandbox_ready(&api, "agent", Duration::from_secs(90))
        .await
        .unwrap();
    let pod = sandbox.status.unwrap().pod_name.unwrap();
    assert_eq!(
        cluster
            .pod_field(&ns.name, &pod, "{.spec.runtimeClassName}")
            .unwrap(),
        RUNTIME_CLASS
    );

    let (_, reply, err) = cluster.exec(&ns.name, &pod, &["nc", "-w", "3", &allowed_ip, "8080"]);
    assert_eq!(
        reply.trim(),
        "allowed-greeting",
        "allowed destination: {err}"
    );
    let (_, reply, _) = cluster.exec(&ns.name, &pod, &["nc", "-w", "3", &denied_ip, "8080"]);
    assert!(
        !reply.contains("denied-greeting"),
        "a denied destination answered"
    );
    // The allowed server on another port is also out of reach: the rule is per port.
    let (_, reply, _) = cluster.exec(&ns.name, &pod, &["nc", "-w", "3", &allowed_ip, "8081"]);
    assert!(reply.trim().is_empty());
}

#[tokio::test]
async fn terminals_work_for_tty_pods_and_for_kubectl_exec_t() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("rt-tty");
    let mut pod = runtime_pod(
        &ns.name,
        "t",
        Some(RUNTIME_CLASS),
        &busybox_image(),
        &format!("tty; {IDLE_LOOP}"),
    );
    main_container(&mut pod).tty = Some(true);
    main_container(&mut pod).stdin = Some(true);
    cluster.apply(&pod).unwrap();
    cluster.wait_pod(&ns.name, "t", "condition=Ready").unwrap();
    let logs = cluster.kubectl_ok(&["-n", &ns.name, "logs", "t"]).unwrap();
    assert!(
        logs.trim().starts_with("/dev/pts/"),
        "container tty: {logs:?}"
    );

    // kubectl exec -t needs a terminal on its side: `script` gives it one.
    let kubectl = format!(
        "{} --kubeconfig {} -n {} exec -it t -- tty",
        agentsandbox_e2e::state_dir().join("bin/kubectl").display(),
        agentsandbox_e2e::state_dir().join("kubeconfig").display(),
        ns.name
    );
    let output = std::process::Command::new("script")
        .args(["-qec", &kubectl, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("script runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.trim().starts_with("/dev/pts/"),
        "exec tty: {text:?} (exit {:?}, stderr {:?})",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn an_oom_killed_container_is_reported_as_oom_killed() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("rt-oom");
    let mut pod = runtime_pod(
        &ns.name,
        "oom",
        Some(RUNTIME_CLASS),
        &busybox_image(),
        "dd if=/dev/zero of=/dev/null bs=64M count=1",
    );
    main_container(&mut pod).resources = Some(ResourceRequirements {
        limits: Some([("memory".to_string(), Quantity("24Mi".into()))].into()),
        ..ResourceRequirements::default()
    });
    cluster.apply(&pod).unwrap();
    cluster
        .wait_pod(&ns.name, "oom", "jsonpath={.status.phase}=Failed")
        .unwrap();
    let reason = cluster
        .pod_field(
            &ns.name,
            "oom",
            "{.status.containerStatuses[0].state.terminated.reason}",
        )
        .unwrap();
    let code = cluster
        .pod_field(
            &ns.name,
            "oom",
            "{.status.containerStatuses[0].state.terminated.exitCode}",
        )
        .unwrap();
    assert_eq!((reason.as_str(), code.as_str()), ("OOMKilled", "137"));
}

#[tokio::test]
async fn a_sandbox_serves_on_a_low_port_in_its_own_network_namespace() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("rt-port");
    // Inbound traffic reaches only exposed ports: port 80 is exposed.
    cluster
        .apply(&sandbox_yaml_running(
            &ns.name,
            "web",
            "trap 'exit 0' TERM; nc -ll -p 80 -e echo low-port-greeting & wait",
            "  network:\n    expose: [{name: http, port: 80}]\n",
        ))
        .unwrap();
    cluster
        .apply(&busybox_pod(&ns.name, "client", IDLE_LOOP))
        .unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let sandbox = wait_sandbox_ready(&api, "web", Duration::from_secs(90))
        .await
        .unwrap();
    cluster
        .wait_pod(&ns.name, "client", "condition=Ready")
        .unwrap();
    let ip = sandbox.status.unwrap().pod_ip.unwrap();
    let reply = wait_until_sync(
        "the sandbox to answer on port 80",
        Duration::from_secs(30),
        || {
            let (_, out, _) = cluster.exec(&ns.name, "client", &["nc", "-w", "2", &ip, "80"]);
            out.contains("low-port-greeting").then_some(out)
        },
    )
    .unwrap();
    assert_eq!(reply.trim(), "low-port-greeting");
}

#[tokio::test]
async fn a_plain_pod_under_the_runtime_class_fails_closed_with_no_egress_while_runc_reaches() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("rt-plain");
    cluster
        .apply(&server_pod(&ns.name, "server", "server-greeting"))
        .unwrap();
    // Nobody wrote a policy for these pods: no agentsandbox.io/ annotation at all.
    cluster
        .apply(&runtime_pod(
            &ns.name,
            "plain",
            Some(RUNTIME_CLASS),
            &busybox_image(),
            IDLE_LOOP,
        ))
        .unwrap();
    cluster
        .apply(&runtime_pod(
            &ns.name,
            "control",
            None,
            &busybox_image(),
            IDLE_LOOP,
        ))
        .unwrap();
    for pod in ["server", "plain", "control"] {
        cluster.wait_pod(&ns.name, pod, "condition=Ready").unwrap();
    }
    let server_ip = cluster
        .pod_field(&ns.name, "server", "{.status.podIP}")
        .unwrap();
    let reach = |pod: &str| {
        cluster
            .exec(&ns.name, pod, &["nc", "-w", "3", &server_ip, "8080"])
            .1
            .trim()
            .to_string()
    };
    assert_eq!(
        reach("control"),
        "server-greeting",
        "runc: the network works"
    );
    assert_eq!(
        reach("plain"),
        "",
        "agentsandbox without a policy: no egress"
    );
    // The rest of the defaults: Strict (read-only root).
    let (code, _, _) = cluster.exec(&ns.name, "plain", &["touch", "/probe"]);
    assert_ne!(code, 0, "a plain pod's root filesystem is writable");
}

#[tokio::test]
async fn only_the_operator_may_put_policy_annotations_on_pods() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("rt-forged");
    // A forged policy: open egress and no response to escapes, on a pod under the runtime.
    let mut forged = runtime_pod(
        &ns.name,
        "forged",
        Some(RUNTIME_CLASS),
        &busybox_image(),
        IDLE_LOOP,
    );
    forged.metadata.annotations = Some(
        [
            (
                "agentsandbox.io/egress".to_string(),
                r#"{"mode":"Allow"}"#.to_string(),
            ),
            (
                "agentsandbox.io/isolation-profile".to_string(),
                "Standard".to_string(),
            ),
        ]
        .into(),
    );
    let refused = cluster.apply(&forged).unwrap_err().to_string();
    assert!(
        refused.contains("only the agentsandbox operator sets agentsandbox.io/ annotations"),
        "{refused}"
    );

    // Nor can anyone change the policy of a sandbox's pod the operator made.
    cluster.apply(&sandbox_yaml(&ns.name, "agent", "")).unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    wait_sandbox_ready(&api, "agent", Duration::from_secs(90))
        .await
        .unwrap();
    let changed = cluster.kubectl(&[
        "-n",
        &ns.name,
        "annotate",
        "pod",
        "agent",
        "--overwrite",
        "agentsandbox.io/on-escape-attempt=Deny",
        "agentsandbox.io/sandbox-uid=someone-else",
    ]);
    assert!(!changed.status.success(), "a policy annotation was changed");
    assert!(
        String::from_utf8_lossy(&changed.stderr).contains("only the agentsandbox operator"),
        "{}",
        String::from_utf8_lossy(&changed.stderr)
    );
    // Annotations of anyone else's stay writable.
    cluster
        .kubectl_ok(&["-n", &ns.name, "annotate", "pod", "agent", "team=a"])
        .unwrap();
}

#[tokio::test]
async fn the_shims_state_on_the_host_is_root_only_and_the_root_filesystem_mount_nosuid_nodev() {
    use std::os::unix::fs::PermissionsExt;
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("rt-state");
    let mut pod = runtime_pod(
        &ns.name,
        "p",
        Some(RUNTIME_CLASS),
        &busybox_image(),
        IDLE_LOOP,
    );
    main_container(&mut pod).env = Some(vec![k8s_openapi::api::core::v1::EnvVar {
        name: "API_TOKEN".into(),
        value: Some("not-for-host-users".into()),
        ..Default::default()
    }]);
    cluster.apply(&pod).unwrap();
    cluster.wait_pod(&ns.name, "p", "condition=Ready").unwrap();
    let id = cluster
        .pod_field(&ns.name, "p", "{.status.containerStatuses[0].containerID}")
        .unwrap();
    let id = id.trim_start_matches("containerd://");
    let dir = std::path::Path::new("/run/agentsandbox/k8s.io/containers").join(id);
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .permissions()
            .mode()
            & 0o7777
    };
    let spec = std::fs::read_to_string(dir.join("bundle/config.json")).unwrap();
    assert!(
        spec.contains("not-for-host-users"),
        "the spec holds the environment"
    );
    assert_eq!(mode(&dir.join("bundle/config.json")), 0o600);
    assert_eq!(mode(&dir.join("bundle")), 0o700);
    assert_eq!(
        mode(&dir.join("mounts")),
        0o711,
        "traversable, not listable"
    );
    assert_eq!(mode(&dir), 0o711);

    let rootfs = dir.join("rootfs");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let options = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(rootfs.to_str().unwrap()))
        .unwrap_or_else(|| panic!("{} is not a mount point", rootfs.display()))
        .split(' ')
        .nth(5)
        .unwrap()
        .to_string();
    assert!(
        options.split(',').any(|o| o == "nosuid") && options.split(',').any(|o| o == "nodev"),
        "root filesystem mounted {options}"
    );
}

#[tokio::test]
async fn the_node_reports_the_runtimes_features_from_its_info_answer() {
    let cluster = Cluster::connect().await;
    let handlers = cluster
        .kubectl_ok(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[0].status.runtimeHandlers}",
        ])
        .unwrap();
    let handlers: Vec<serde_json::Value> = serde_json::from_str(if handlers.trim().is_empty() {
        "[]"
    } else {
        &handlers
    })
    .unwrap();
    let ours = handlers.iter().find(|h| h["name"] == RUNTIME_CLASS);
    if containerd_major() < 2 {
        // containerd 1.x asks runtimes nothing and reports no features.
        assert!(ours.is_none_or(|h| h["features"]["recursiveReadOnlyMounts"] != true));
        return;
    }
    // containerd 2.x asks the shim (`-info`).
    let ours = ours.unwrap_or_else(|| panic!("no {RUNTIME_CLASS} handler in {handlers:?}"));
    assert_eq!(ours["features"]["recursiveReadOnlyMounts"], true, "{ours}");
    assert_ne!(ours["features"]["userNamespaces"], true, "{ours}");
}

/// A container run straight through containerd (no kubelet, so no pod network namespace to
/// join) gets a namespace of its own from the runtime; its egress firewall must never be
/// installed in the namespace the launcher runs in, the host's: that table (policy drop on
/// input and output) cut this node off from its own API server once.
#[tokio::test]
async fn a_container_without_a_pod_network_namespace_leaves_the_host_firewall_alone() {
    let ctr = |args: &[&str]| {
        std::process::Command::new(state_dir().join("bin/ctr"))
            .args(["-a", &containerd_socket(), "-n", "k8s.io"])
            .args(args)
            .output()
            .expect("ctr runs")
    };
    let id = format!("e2e-no-pod-netns-{}", std::process::id());
    let output = ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.agentsandbox.v1",
        &busybox_image(),
        &id,
        "true",
    ]);
    assert!(output.status.success(), "ctr run: {output:?}");
    let tables = std::process::Command::new("nft")
        .args(["list", "tables"])
        .output()
        .expect("nft runs on the node");
    let tables = String::from_utf8_lossy(&tables.stdout);
    let landed = tables
        .lines()
        .any(|l| l.trim() == "table inet agentsandbox");
    if landed {
        // Give the node its network back before failing.
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", "agentsandbox"])
            .output();
    }
    assert!(
        !landed,
        "the sandbox firewall landed in the host's network namespace:\n{tables}"
    );
}
