//! A pod's sandbox comes from its controller owner reference only, checked against the
//! sandbox's UID; the pod the sandbox's status names is its current one.

use agentsandbox_node::ownership::{controlling_sandbox, relation, Relation, SandboxRef};
use agentsandbox_operator::api::AgentSandbox;
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

fn pod(name: &str, owners: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "labels": {"app.kubernetes.io/managed-by": "agentsandbox"},
            "annotations": {
                "agentsandbox.io/sandbox-name": "victim",
                "agentsandbox.io/sandbox-namespace": "team-b"
            },
            "ownerReferences": owners
        },
        "spec": {"containers": [{"name": "agent", "image": "x"}]}
    }))
    .unwrap()
}

fn sandbox(namespace: &str, uid: &str, pod_name: Option<&str>) -> AgentSandbox {
    serde_json::from_value(json!({
        "apiVersion": "agentsandbox.io/v1alpha1",
        "kind": "AgentSandbox",
        "metadata": {"name": "agent", "namespace": namespace, "uid": uid},
        "spec": {"image": "x"},
        "status": {"podName": pod_name}
    }))
    .unwrap()
}

fn owner(kind: &str, api_version: &str, controller: bool) -> serde_json::Value {
    json!([{"apiVersion": api_version, "kind": kind, "name": "agent", "uid": "u-1", "controller": controller}])
}

#[test]
fn labels_and_annotations_name_no_sandbox() {
    assert_eq!(controlling_sandbox(&pod("p", json!([]))), None);
    assert_eq!(
        controlling_sandbox(&pod(
            "p",
            owner("AgentSandbox", "agentsandbox.io/v1alpha1", false)
        )),
        None,
        "not the controller"
    );
    assert_eq!(
        controlling_sandbox(&pod("p", owner("AgentSandbox", "example.com/v1", true))),
        None,
        "another group's kind of the same name"
    );
    assert_eq!(
        controlling_sandbox(&pod("p", owner("ReplicaSet", "apps/v1", true))),
        None
    );
}

#[test]
fn the_controller_reference_names_the_sandbox_in_the_pods_own_namespace() {
    let reference = controlling_sandbox(&pod(
        "p",
        owner("AgentSandbox", "agentsandbox.io/v1alpha1", true),
    ))
    .unwrap();
    assert_eq!(
        reference,
        SandboxRef {
            namespace: "team-a".into(),
            name: "agent".into(),
            uid: "u-1".into()
        }
    );
}

#[test]
fn a_report_applies_only_to_the_sandbox_with_the_references_uid() {
    let p = pod(
        "agent-pod",
        owner("AgentSandbox", "agentsandbox.io/v1alpha1", true),
    );
    let reference = controlling_sandbox(&p).unwrap();
    assert_eq!(
        relation(&sandbox("team-a", "u-2", Some("agent-pod")), &reference, &p),
        Relation::Stranger,
        "a sandbox recreated under the same name"
    );
    assert_eq!(
        relation(&sandbox("team-b", "u-1", Some("agent-pod")), &reference, &p),
        Relation::Stranger
    );
    assert_eq!(
        relation(&sandbox("team-a", "u-1", Some("agent-pod")), &reference, &p),
        Relation::Current
    );
    assert_eq!(
        relation(
            &sandbox("team-a", "u-1", Some("agent-pod-2")),
            &reference,
            &p
        ),
        Relation::Former,
        "an earlier pod of the sandbox"
    );
    assert_eq!(
        relation(&sandbox("team-a", "u-1", None), &reference, &p),
        Relation::Former
    );
}
