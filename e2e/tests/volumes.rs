//! Volumes under the sandbox's user namespace (issue 18), each case next to the same pod under
//! runc as the control: a workspace whose root is root-owned 0755 (the harness's StorageClass
//! makes them so, as CSI drivers do), Secret/ConfigMap/projected files with their modes and
//! fsGroup, a ConfigMap update, and set-id files. Every test writes its rows of the README's
//! table (`record_volume_row`); e2e/tests/volumes_slots.rs covers the pod changing id slot.

use std::time::{Duration, Instant};

use agentsandbox_e2e::{
    busybox_image, claim_host_path, claim_yaml, host_stat, outcome, record_volume_row,
    sandbox_yaml, sh, wait_sandbox_ready, wait_until, wait_until_sync, Cluster, IDLE_LOOP,
    RUNTIME_CLASS,
};
use agentsandbox_operator::api::AgentSandbox;
use kube::api::Api;
use serde_json::{json, Value};

const READY: Duration = Duration::from_secs(120);

/// An idle busybox pod `name` with `volumes` mounted per `mounts` and the pod security
/// context `security`, under `runtime` (None: runc, the cluster's default).
fn pod(
    ns: &str,
    name: &str,
    runtime: Option<&str>,
    volumes: Value,
    mounts: Value,
    security: Value,
) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "runtimeClassName": runtime,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 1,
            "restartPolicy": "Never",
            "securityContext": security,
            "volumes": volumes,
            "containers": [{
                "name": "main",
                "image": busybox_image(),
                "imagePullPolicy": "IfNotPresent",
                "command": ["sh", "-c", IDLE_LOOP],
                "volumeMounts": mounts,
            }],
        },
    })
    .to_string()
}

fn claim_pod(ns: &str, name: &str, claim: &str, security: Value) -> String {
    pod(
        ns,
        name,
        None,
        json!([{"name": "workspace", "persistentVolumeClaim": {"claimName": claim}}]),
        json!([{"name": "workspace", "mountPath": "/workspace"}]),
        security,
    )
}

fn ready(cluster: &Cluster, ns: &str, pod: &str) {
    cluster
        .wait_pod(ns, pod, "condition=Ready")
        .unwrap_or_else(|e| panic!("pod {pod} Ready: {e}"));
}

async fn sandbox_ready(cluster: &Cluster, ns: &str, name: &str) {
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), ns);
    wait_sandbox_ready(&api, name, READY)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

fn ok(result: (i32, String, String), what: &str) -> String {
    assert_eq!(result.0, 0, "{what}: {result:?}");
    result.1.trim().to_string()
}

#[tokio::test]
async fn a_root_owned_0755_workspace_is_writable_as_under_runc() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-vol-ws");
    let n = ns.name.as_str();
    cluster
        .apply(&sandbox_yaml(n, "root", "workspace: {size: 16Mi}"))
        .unwrap();
    cluster
        .apply(&sandbox_yaml(
            n,
            "nonroot",
            "workspace: {size: 16Mi}\nisolation: {user: NonRoot}",
        ))
        .unwrap();
    cluster.apply(&claim_yaml(n, "runc-root")).unwrap();
    cluster.apply(&claim_yaml(n, "runc-nonroot")).unwrap();
    cluster
        .apply(&claim_pod(n, "runc-root", "runc-root", json!({})))
        .unwrap();
    cluster
        .apply(&claim_pod(
            n,
            "runc-nonroot",
            "runc-nonroot",
            json!({"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000, "fsGroupChangePolicy": "OnRootMismatch"}),
        ))
        .unwrap();
    sandbox_ready(&cluster, n, "root").await;
    sandbox_ready(&cluster, n, "nonroot").await;
    ready(&cluster, n, "runc-root");
    ready(&cluster, n, "runc-nonroot");

    // The harness's volumes look like a CSI driver's: a root-owned 0755 root.
    let host_root = claim_host_path(&cluster, n, "root-workspace").unwrap();
    assert_eq!(
        host_stat(&host_root).unwrap(),
        "0:0 755",
        "the StorageClass makes root-owned 0755 volumes"
    );
    let inside = ok(
        sh(&cluster, n, "root", "stat -c '%u:%g %a' /workspace"),
        "stat",
    );
    let runc_inside = ok(
        sh(&cluster, n, "runc-root", "stat -c '%u:%g %a' /workspace"),
        "stat",
    );
    assert_eq!(inside, "0:0 755", "the sandbox's root owns its workspace");
    assert_eq!(inside, runc_inside);
    record_volume_row(
        10,
        "workspace root (root-owned 0755 on the node), seen inside",
        &inside,
        &runc_inside,
    );

    let write = "echo one > /workspace/private && chmod 600 /workspace/private && \
                 echo one > /workspace/shared && chmod 644 /workspace/shared && mkdir /workspace/dir";
    let ours = sh(&cluster, n, "root", write);
    let runc = sh(&cluster, n, "runc-root", write);
    assert_eq!(
        ours.0, 0,
        "the sandbox's root writes its workspace: {ours:?}"
    );
    assert_eq!(runc.0, 0, "{runc:?}");
    record_volume_row(
        11,
        "root agent writes files and directories in it",
        &outcome(&ours),
        &outcome(&runc),
    );
    let runc_root = claim_host_path(&cluster, n, "runc-root").unwrap();
    let host = |root: &std::path::Path| {
        format!(
            "{}, {}",
            host_stat(&root.join("private")).unwrap(),
            host_stat(&root.join("shared")).unwrap()
        )
    };
    assert_eq!(
        host(&host_root),
        "0:0 600, 0:0 644",
        "ids on the volume are the ids inside"
    );
    record_volume_row(
        12,
        "files it wrote (0600, 0644), seen from the node",
        &host(&host_root),
        &host(&runc_root),
    );

    let touch = "touch /workspace/by-1000 && stat -c '%u:%g' /workspace/by-1000";
    let ours = sh(&cluster, n, "nonroot", touch);
    let runc = sh(&cluster, n, "runc-nonroot", touch);
    assert_eq!(
        ours.0, 0,
        "a NonRoot agent writes through fsGroup 1000: {ours:?}"
    );
    assert_eq!(ours.1.trim(), "1000:1000");
    assert_eq!(runc.0, 0, "{runc:?}");
    record_volume_row(
        13,
        "uid 1000 with fsGroup 1000 (a NonRoot agent's default) writes in it",
        &format!("{} (file {})", outcome(&ours), ours.1.trim()),
        &format!("{} (file {})", outcome(&runc), runc.1.trim()),
    );
}

#[tokio::test]
async fn a_set_id_file_cannot_be_made_in_a_volume_and_the_attempt_is_reported() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-vol-setid");
    let n = ns.name.as_str();
    cluster
        .apply(&sandbox_yaml(n, "agent", "workspace: {size: 16Mi}"))
        .unwrap();
    cluster.apply(&claim_yaml(n, "runc")).unwrap();
    cluster
        .apply(&claim_pod(n, "runc", "runc", json!({})))
        .unwrap();
    sandbox_ready(&cluster, n, "agent").await;
    ready(&cluster, n, "runc");

    let copy = "cp /bin/busybox /workspace/tool && chmod 755 /workspace/tool";
    ok(sh(&cluster, n, "agent", copy), "copy in the sandbox");
    ok(sh(&cluster, n, "runc", copy), "copy under runc");
    let setuid = "chmod 4755 /workspace/tool";
    let setgid = "chmod 2755 /workspace/tool";
    let ours = (
        sh(&cluster, n, "agent", setuid),
        sh(&cluster, n, "agent", setgid),
    );
    assert_ne!(ours.0 .0, 0, "chmod 4755 is refused: {:?}", ours.0);
    assert_ne!(ours.1 .0, 0, "chmod 2755 is refused: {:?}", ours.1);
    assert!(
        ours.0 .2.contains("Operation not permitted"),
        "EPERM: {:?}",
        ours.0
    );
    // A mode without set-id bits still works.
    ok(
        sh(
            &cluster,
            n,
            "agent",
            "chmod 700 /workspace/tool && chmod 755 /workspace/tool",
        ),
        "chmod 700",
    );
    let runc = sh(&cluster, n, "runc", setuid);
    assert_eq!(runc.0, 0, "runc's root makes setuid files: {runc:?}");

    let ours_host = host_stat(
        &claim_host_path(&cluster, n, "agent-workspace")
            .unwrap()
            .join("tool"),
    )
    .unwrap();
    let runc_host = host_stat(&claim_host_path(&cluster, n, "runc").unwrap().join("tool")).unwrap();
    assert_eq!(
        ours_host, "0:0 755",
        "no set-id bit reaches the node from the sandbox"
    );
    assert_eq!(runc_host, "0:0 4755", "the control made a setuid-root file");
    record_volume_row(
        50,
        "`chmod 4755` / `chmod 2755` on a file in it",
        &format!(
            "{} / {}, reported as `set-id`",
            outcome(&ours.0),
            outcome(&ours.1)
        ),
        &format!("{} / ok", outcome(&runc)),
    );
    record_volume_row(
        51,
        "that file, seen from the node",
        &format!("{ours_host} (not set-id)"),
        &format!("{runc_host} (setuid root)"),
    );

    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), n);
    let counted = wait_until("set-id attempts on the sandbox's status", READY, || async {
        let sandbox = api.get("agent").await.ok()?;
        let count = *sandbox
            .status?
            .security?
            .attempts_by_category?
            .get("set-id")?;
        (count >= 2).then_some(count)
    })
    .await
    .unwrap();
    assert_eq!(counted, 2, "exactly the two set-id chmods");
}

#[tokio::test]
async fn secret_and_projected_files_are_readable_as_their_modes_and_fs_group_say() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-vol-files");
    let n = ns.name.as_str();
    cluster
        .kubectl_ok(&[
            "-n",
            n,
            "create",
            "secret",
            "generic",
            "creds",
            "--from-literal=key=s3cret",
        ])
        .unwrap();
    cluster
        .kubectl_ok(&[
            "-n",
            n,
            "create",
            "configmap",
            "settings",
            "--from-literal=setting=on",
        ])
        .unwrap();
    // (sandbox extra spec, runc pod security context, secret defaultMode, case)
    let cases: [(&str, Value, i32, &str); 3] = [
        ("", json!({}), 0o400, "Secret file 0400, read by root"),
        (
            "isolation: {user: NonRoot}\npodTemplate: {fsGroup: 2000}",
            json!({"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000}),
            0o440,
            "Secret file 0440 with fsGroup 2000, read by uid 1000",
        ),
        (
            "isolation: {user: NonRoot}",
            json!({"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}),
            0o400,
            "Secret defaultMode 0400 with fsGroup 1000 (the kubelet adds g+r), read by uid 1000",
        ),
    ];
    for (i, (extra, security, mode, _)) in cases.iter().enumerate() {
        let files = format!(
            "files: [{{path: /etc/agent/creds, secret: {{name: creds, defaultMode: {mode}}}}}]"
        );
        cluster
            .apply(&sandbox_yaml(
                n,
                &format!("s{i}"),
                &format!("{extra}\n{files}"),
            ))
            .unwrap();
        cluster
            .apply(&pod(
                n,
                &format!("runc{i}"),
                None,
                json!([{"name": "creds", "secret": {"secretName": "creds", "defaultMode": mode}}]),
                json!([{"name": "creds", "mountPath": "/etc/agent/creds", "readOnly": true}]),
                security.clone(),
            ))
            .unwrap();
    }
    // Projected (Secret + ConfigMap + downward API), 0440 with fsGroup 2000, as a plain pod
    // under the RuntimeClass next to the same pod under runc.
    let projected = |runtime: Option<&str>, name: &str| {
        pod(
            n,
            name,
            runtime,
            json!([{"name": "all", "projected": {"defaultMode": 0o440, "sources": [
                {"secret": {"name": "creds"}},
                {"configMap": {"name": "settings"}},
                {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}},
            ]}}]),
            json!([{"name": "all", "mountPath": "/etc/all", "readOnly": true}]),
            json!({"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000, "seccompProfile": {"type": "RuntimeDefault"}}),
        )
    };
    cluster
        .apply(&projected(Some(RUNTIME_CLASS), "projected"))
        .unwrap();
    cluster.apply(&projected(None, "projected-runc")).unwrap();

    for (i, (_, _, mode, case)) in cases.iter().enumerate() {
        sandbox_ready(&cluster, n, &format!("s{i}")).await;
        ready(&cluster, n, &format!("runc{i}"));
        let read = "cat /etc/agent/creds/key";
        let ours = sh(&cluster, n, &format!("s{i}"), read);
        let runc = sh(&cluster, n, &format!("runc{i}"), read);
        let stat = "stat -L -c '%u:%g %a' /etc/agent/creds/key";
        let ours_stat = ok(sh(&cluster, n, &format!("s{i}"), stat), "stat");
        let runc_stat = ok(sh(&cluster, n, &format!("runc{i}"), stat), "stat");
        assert_eq!(
            (ours.0 == 0, ours_stat.as_str()),
            (runc.0 == 0, runc_stat.as_str()),
            "{case}: the same outcome and owner as under runc ({ours:?} vs {runc:?})"
        );
        if *mode == 0o440 || i == 0 {
            assert_eq!(ours.1.trim(), "s3cret", "{case}: {ours:?}");
        }
        record_volume_row(
            30 + i as u32,
            case,
            &format!("{} (file {ours_stat})", outcome(&ours)),
            &format!("{} (file {runc_stat})", outcome(&runc)),
        );
    }
    ready(&cluster, n, "projected");
    ready(&cluster, n, "projected-runc");
    let read_all =
        "cat /etc/all/key /etc/all/setting /etc/all/name && echo && stat -L -c '%u:%g %a' /etc/all/key";
    let ours = sh(&cluster, n, "projected", read_all);
    let runc = sh(&cluster, n, "projected-runc", read_all);
    assert_eq!(
        ours.0, 0,
        "projected files under the RuntimeClass: {ours:?}"
    );
    assert!(
        ours.1.contains("s3cret") && ours.1.contains("projected"),
        "{ours:?}"
    );
    assert_eq!(ours.1.lines().last(), Some("0:2000 440"));
    assert_eq!(runc.0, 0, "{runc:?}");
    record_volume_row(
        33,
        "projected volume (Secret, ConfigMap, downward API) 0440, fsGroup 2000, read by uid 1000",
        &format!(
            "{} (file {})",
            outcome(&ours),
            ours.1.lines().last().unwrap_or("")
        ),
        &format!(
            "{} (file {})",
            outcome(&runc),
            runc.1.lines().last().unwrap_or("")
        ),
    );
}

#[tokio::test]
async fn a_config_map_update_reaches_the_file() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-vol-cm");
    let n = ns.name.as_str();
    cluster
        .kubectl_ok(&[
            "-n",
            n,
            "create",
            "configmap",
            "cfg",
            "--from-literal=setting=v1",
        ])
        .unwrap();
    cluster
        .apply(&sandbox_yaml(
            n,
            "agent",
            "files: [{path: /etc/agent/config, configMap: {name: cfg}}]",
        ))
        .unwrap();
    cluster
        .apply(&pod(
            n,
            "runc",
            None,
            json!([{"name": "cfg", "configMap": {"name": "cfg"}}]),
            json!([{"name": "cfg", "mountPath": "/etc/agent/config", "readOnly": true}]),
            json!({}),
        ))
        .unwrap();
    sandbox_ready(&cluster, n, "agent").await;
    ready(&cluster, n, "runc");
    let read = "cat /etc/agent/config/setting";
    assert_eq!(ok(sh(&cluster, n, "agent", read), "read"), "v1");
    assert_eq!(ok(sh(&cluster, n, "runc", read), "read"), "v1");
    // Read-only, as the API says.
    let write = sh(&cluster, n, "agent", "echo x > /etc/agent/config/setting");
    assert_ne!(write.0, 0, "files are read-only: {write:?}");

    cluster
        .kubectl_ok(&[
            "-n",
            n,
            "patch",
            "configmap",
            "cfg",
            "--type=merge",
            "-p",
            r#"{"data":{"setting":"v2"}}"#,
        ])
        .unwrap();
    let changed = Instant::now();
    // The kubelet syncs a pod's ConfigMap volumes at its sync period (1 min) plus its cache
    // TTL: up to about two minutes.
    let mut seen: [Option<u64>; 2] = [None, None];
    wait_until_sync("the update in both pods", Duration::from_secs(180), || {
        for (index, pod) in ["agent", "runc"].iter().enumerate() {
            if seen[index].is_none() && sh(&cluster, n, pod, read).1.trim() == "v2" {
                seen[index] = Some(changed.elapsed().as_secs());
            }
        }
        seen.iter().all(Option::is_some).then_some(())
    })
    .unwrap();
    record_volume_row(
        40,
        "ConfigMap update reaches the file",
        &format!("ok (after {} s)", seen[0].unwrap()),
        &format!("ok (after {} s)", seen[1].unwrap()),
    );
}
