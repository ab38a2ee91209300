//! Ways around the runtime's policy, tried on the real cluster (issue 14): a pod that claims
//! another team's sandbox, an exec weaker than the container's init, a working directory
//! under /proc.

use std::time::Duration;

use agentsandbox_e2e::{
    attack_done_at, attack_image, attack_sandbox_yaml, containerd_socket, sandbox_yaml, state_dir,
    wait_sandbox_ready, wait_until, Cluster, RUNTIME_CLASS,
};
use agentsandbox_operator::api::AgentSandbox;
use kube::Api;

/// The operator's service account: the only one the chart's admission policy lets set
/// agentsandbox.io/ annotations and AgentSandbox owner references on pods.
const OPERATOR: &str = "system:serviceaccount:agentsandbox-system:agentsandbox-operator";

fn plain_pod_json(namespace: &str, name: &str, metadata: serde_json::Value) -> String {
    let mut pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "runtimeClassName": RUNTIME_CLASS,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "agent", "image": attack_image(),
                            "imagePullPolicy": "IfNotPresent",
                            "command": ["sh", "-c", "agentsandbox-attack; sleep 3600"]}]
        }
    });
    for (key, value) in metadata.as_object().into_iter().flatten() {
        pod["metadata"][key] = value.clone();
    }
    pod.to_string()
}

#[tokio::test]
async fn a_pod_cannot_report_into_or_claim_another_sandbox() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("sec-spoof");
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    cluster
        .apply(&sandbox_yaml(&ns.name, "victim", ""))
        .unwrap();
    let victim = wait_sandbox_ready(&api, "victim", Duration::from_secs(90))
        .await
        .unwrap();
    let victim_uid = victim.metadata.uid.clone().unwrap();

    // A controller owner reference to the victim: refused at admission.
    let owned = plain_pod_json(
        &ns.name,
        "owned",
        serde_json::json!({"ownerReferences": [{
            "apiVersion": "agentsandbox.io/v1alpha1", "kind": "AgentSandbox",
            "name": "victim", "uid": victim_uid, "controller": true}]}),
    );
    let refused = cluster.kubectl_stdin_output(&["create", "-f", "-"], &owned);
    assert!(
        !refused.status.success(),
        "a spoofed owner reference was admitted"
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("only the agentsandbox operator makes pods owned by an AgentSandbox"),
        "{stderr}"
    );

    // Past admission (as the operator's account could), a pod that names the victim in the
    // annotations and label the node agent used to trust, with a (non-controller) owner
    // reference to it, and attacks: nothing of it lands on the victim.
    let spoof = plain_pod_json(
        &ns.name,
        "spoof",
        serde_json::json!({
            "labels": {"app.kubernetes.io/managed-by": "agentsandbox-operator"},
            "annotations": {"agentsandbox.io/sandbox-name": "victim",
                            "agentsandbox.io/sandbox-namespace": ns.name},
            "ownerReferences": [{
                "apiVersion": "agentsandbox.io/v1alpha1", "kind": "AgentSandbox",
                "name": "victim", "uid": victim_uid}]
        }),
    );
    let created = cluster.kubectl_stdin_output(&["--as", OPERATOR, "create", "-f", "-"], &spoof);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let spoof_done = wait_until("the spoof's attack", Duration::from_secs(90), || async {
        let logs = cluster
            .kubectl_ok(&["-n", &ns.name, "logs", "spoof"])
            .ok()?;
        attack_done_at(&logs).map(|_| logs)
    })
    .await
    .unwrap();
    assert!(
        spoof_done.contains("unshare-user-ns unshare EPERM"),
        "{spoof_done}"
    );

    // A real sandbox attacking after it: once its attempts are on its own status, the node
    // agent has handled the spoof's earlier reports.
    cluster
        .apply(&attack_sandbox_yaml(
            &ns.name,
            "control",
            &["unshare-user-ns"],
            "",
        ))
        .unwrap();
    wait_until(
        "the control's attempt",
        Duration::from_secs(120),
        || async {
            let s = api.get("control").await.ok()?;
            (s.status?.security?.escape_attempts == 1).then_some(())
        },
    )
    .await
    .unwrap();
    let victim = api.get("victim").await.unwrap();
    let security = victim.status.unwrap().security;
    assert!(
        security.as_ref().is_none_or(|s| s.escape_attempts == 0),
        "the spoof's attempts reached the victim: {security:?}"
    );
}

#[tokio::test]
async fn an_exec_gets_what_the_init_gets() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("sec-exec");
    cluster.idle_sandboxed_pod(&ns.name, "p");
    let read = |path: &str| {
        let (code, out, err) = cluster.exec(&ns.name, "p", &["cat", path]);
        assert_eq!(code, 0, "{path}: {err}");
        out
    };
    // The OOM score (not the shim's, which the OOM killer spares) and the resource limits.
    let init_score = read("/proc/1/oom_score_adj");
    assert_eq!(read("/proc/self/oom_score_adj"), init_score);
    let init_limits = read("/proc/1/limits");
    assert_eq!(read("/proc/self/limits"), init_limits);
    // No descriptor of the runtime's crosses into it: stdio and ls's own directory only.
    let (code, fds, err) = cluster.exec(&ns.name, "p", &["ls", "/proc/self/fd"]);
    assert_eq!(code, 0, "{err}");
    let fds: Vec<&str> = fds.split_whitespace().collect();
    assert_eq!(fds, ["0", "1", "2", "3"], "descriptors of the exec'd ls");
}

/// `ctr task exec` with a working directory (the CRI has none for exec; containerd's task API
/// does).
fn ctr_exec(container: &str, exec_id: &str, cwd: &str) -> std::process::Output {
    std::process::Command::new(state_dir().join("bin/ctr"))
        .args(["--address", &containerd_socket(), "--namespace", "k8s.io"])
        .args([
            "task",
            "exec",
            "--exec-id",
            exec_id,
            "--cwd",
            cwd,
            container,
        ])
        .args(["sh", "-c", "pwd"])
        .output()
        .expect("ctr runs")
}

#[tokio::test]
async fn an_exec_cannot_start_in_a_directory_under_proc() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("sec-cwd");
    cluster.idle_sandboxed_pod(&ns.name, "p");
    let container = cluster
        .pod_field(&ns.name, "p", "{.status.containerStatuses[0].containerID}")
        .unwrap()
        .trim_start_matches("containerd://")
        .to_string();
    let ok = ctr_exec(&container, "cwd-ok", "/tmp");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "/tmp");
    for (index, cwd) in ["/proc/1/fd/0", "/proc/self/cwd", "/proc/1/root/tmp"]
        .iter()
        .enumerate()
    {
        let refused = ctr_exec(&container, &format!("cwd-{index}"), cwd);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{cwd} ran");
        assert!(
            stderr.contains("agentsandbox refuses working directory"),
            "{cwd}: {stderr}"
        );
    }
}
