//! A workspace keeps its ownership, as seen from inside, when the sandbox's next pod runs in
//! another host id range: after suspend/resume, a spec change and a node drain, each time with
//! another pod holding the slot the previous pod had. Its own file (and one test) because it
//! cordons the node, which would stall tests running beside it.

use std::path::Path;
use std::time::Duration;

use agentsandbox_e2e::{
    busybox_image, claim_yaml, outcome, record_volume_row, runtime_pod, sandbox_yaml, sh,
    wait_sandbox_ready, wait_until, wait_until_sync, Cluster, IDLE_LOOP, RUNTIME_CLASS,
};
use agentsandbox_operator::api::AgentSandbox;
use kube::api::Api;
use serde_json::json;

const READY: Duration = Duration::from_secs(120);
/// The kubelet removes a deleted pod's sandbox (and the shim releases its id slot) within
/// two of its garbage-collection periods of a minute.
const SLOT_RELEASED: Duration = Duration::from_secs(240);

/// Uncordons the node when dropped, so that a failing test never leaves it unschedulable.
struct Uncordon<'a>(&'a Cluster, String);

impl Drop for Uncordon<'_> {
    fn drop(&mut self) {
        let _ = self.0.kubectl_ok(&["uncordon", &self.1]);
    }
}

/// The id slot of a pod from its `/proc/self/uid_map` ("0 <host start> 65536").
fn slot_of(cluster: &Cluster, ns: &str, pod: &str) -> u32 {
    let (code, map, err) = sh(cluster, ns, pod, "cat /proc/self/uid_map");
    assert_eq!(code, 0, "uid_map of {pod}: {err}");
    let start: u32 = map
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("uid_map of {pod}: {map:?}"));
    (start - 100_000) / 65_536
}

fn pod_uid(cluster: &Cluster, ns: &str, pod: &str) -> String {
    cluster
        .pod_field(ns, pod, "{.metadata.uid}")
        .unwrap_or_default()
}

/// Takes `slot` with holder pods placed on `node` directly (past a cordon): once the shim has
/// released it, holders take the lowest free slots until one gets it. Returns the holders.
fn hold_slot(cluster: &Cluster, ns: &str, node: &str, slot: u32, round: usize) -> Vec<String> {
    let file = format!("/run/agentsandbox/idmap/slot-{slot}");
    wait_until_sync(&format!("slot {slot} released"), SLOT_RELEASED, || {
        (!Path::new(&file).exists()).then_some(())
    })
    .unwrap();
    let mut holders = Vec::new();
    for index in 0..=slot + 1 {
        let name = format!("holder-{round}-{index}");
        let mut pod = runtime_pod(ns, &name, Some(RUNTIME_CLASS), &busybox_image(), IDLE_LOOP);
        pod.spec.as_mut().unwrap().node_name = Some(node.to_string());
        cluster.apply(&pod).unwrap();
        cluster.wait_pod(ns, &name, "condition=Ready").unwrap();
        let got = slot_of(cluster, ns, &name);
        holders.push(name);
        if got == slot {
            return holders;
        }
    }
    panic!("no holder got slot {slot} (holders: {holders:?})");
}

#[tokio::test]
async fn a_workspace_keeps_its_ownership_when_the_next_pod_has_another_id_slot() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-vol-slots");
    let n = ns.name.as_str();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), n);
    let spec = |mode: &str, generation: u32| {
        sandbox_yaml(
            n,
            "agent",
            &format!(
                "workspace: {{size: 16Mi}}\noperatingMode: {mode}\nenv: [{{name: GENERATION, value: \"{generation}\"}}]"
            ),
        )
    };
    cluster.apply(&spec("Running", 0)).unwrap();
    let sandbox = wait_sandbox_ready(&api, "agent", READY).await.unwrap();
    let node = sandbox.status.unwrap().node_name.expect("status.nodeName");
    let _uncordon = Uncordon(&cluster, node.clone());
    let first = sh(
        &cluster,
        n,
        "agent",
        "echo pod-0 > /workspace/private && chmod 600 /workspace/private && \
         echo pod-0 > /workspace/shared && chmod 644 /workspace/shared",
    );
    assert_eq!(first.0, 0, "{first:?}");

    // The control: the next runc pod on the same claim.
    cluster.apply(&claim_yaml(n, "runc")).unwrap();
    let runc_pod = |name: &str| {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": n},
            "spec": {
                "automountServiceAccountToken": false, "terminationGracePeriodSeconds": 1,
                "volumes": [{"name": "w", "persistentVolumeClaim": {"claimName": "runc"}}],
                "containers": [{"name": "main", "image": busybox_image(), "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", IDLE_LOOP], "volumeMounts": [{"name": "w", "mountPath": "/workspace"}]}],
            },
        })
        .to_string()
    };
    cluster.apply(&runc_pod("runc-0")).unwrap();
    cluster.wait_pod(n, "runc-0", "condition=Ready").unwrap();
    let runc_first = sh(
        &cluster,
        n,
        "runc-0",
        "echo pod-0 > /workspace/private && chmod 600 /workspace/private",
    );
    assert_eq!(runc_first.0, 0, "{runc_first:?}");
    cluster
        .kubectl_ok(&["-n", n, "delete", "pod", "runc-0", "--wait=true"])
        .unwrap();
    cluster.apply(&runc_pod("runc-1")).unwrap();
    cluster.wait_pod(n, "runc-1", "condition=Ready").unwrap();
    let next_pod = "cat /workspace/private && echo next >> /workspace/private && \
                    stat -c '%u:%g %a' /workspace/private";
    let runc_next = sh(&cluster, n, "runc-1", next_pod);
    assert_eq!(runc_next.0, 0, "{runc_next:?}");

    let mut slot = slot_of(&cluster, n, "agent");
    let mut all_holders = Vec::new();
    for (generation, change) in [(1, "suspend/resume"), (2, "spec change"), (3, "node drain")] {
        let old_uid = pod_uid(&cluster, n, "agent");
        match change {
            "suspend/resume" => {
                cluster.apply(&spec("Suspended", generation - 1)).unwrap();
            }
            "spec change" => {
                cluster.kubectl_ok(&["cordon", &node]).unwrap();
                cluster.apply(&spec("Running", generation)).unwrap();
            }
            _ => {
                cluster
                    .kubectl_ok(&[
                        "drain",
                        &node,
                        "--pod-selector=agentsandbox.io/name=agent",
                        "--ignore-daemonsets",
                        "--delete-emptydir-data",
                        "--timeout=120s",
                    ])
                    .unwrap();
            }
        }
        wait_until_sync(&format!("{change}: the old pod gone"), READY, || {
            (pod_uid(&cluster, n, "agent") != old_uid).then_some(())
        })
        .unwrap();
        all_holders.extend(hold_slot(&cluster, n, &node, slot, generation as usize));
        match change {
            "suspend/resume" => {
                cluster.apply(&spec("Running", generation - 1)).unwrap();
            }
            _ => {
                cluster.kubectl_ok(&["uncordon", &node]).unwrap();
            }
        }
        wait_until(&format!("{change}: the next pod Ready"), READY, || async {
            let uid = pod_uid(&cluster, n, "agent");
            let ready = cluster
                .pod_field(
                    n,
                    "agent",
                    "{.status.conditions[?(@.type==\"Ready\")].status}",
                )
                .ok()?;
            (!uid.is_empty() && uid != old_uid && ready == "True").then_some(())
        })
        .await
        .unwrap();
        let next_slot = slot_of(&cluster, n, "agent");
        assert_ne!(
            next_slot, slot,
            "{change}: the next pod has another id slot"
        );
        let result = sh(
            &cluster,
            n,
            "agent",
            &format!(
                "cat /workspace/private /workspace/shared && echo pod-{generation} >> /workspace/private && \
                 echo pod-{generation} >> /workspace/shared && stat -c '%u:%g %a' /workspace/private /workspace/shared && \
                 touch /workspace/new-{generation}"
            ),
        );
        assert_eq!(
            result.0, 0,
            "{change}: slot {slot} -> {next_slot}, the files are readable and writable: {result:?}"
        );
        let lines: Vec<&str> = result.1.lines().collect();
        assert_eq!(
            &lines[lines.len() - 2..],
            &["0:0 600", "0:0 644"],
            "{change}: the same owner inside: {result:?}"
        );
        record_volume_row(
            20 + generation,
            &format!("0600 and 0644 files of the previous pod, read and appended after {change} (next pod in another id slot)"),
            &format!("{} (slot {slot} -> {next_slot}, files {} / {})", outcome(&result), lines[lines.len() - 2], lines[lines.len() - 1]),
            &format!("{} (the next pod on the claim, file {})", outcome(&runc_next), runc_next.1.lines().last().unwrap_or("")),
        );
        slot = next_slot;
    }
    for holder in all_holders {
        let _ = cluster.kubectl_ok(&["-n", n, "delete", "pod", &holder, "--wait=false"]);
    }
}
