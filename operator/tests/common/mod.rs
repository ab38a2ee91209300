//! Builders shared by the operator's unit tests.

use agentsandbox_operator::api::AgentSandbox;

/// A sandbox as the API server would hand it over: named, namespaced, with a UID and a
/// generation, and the given spec (as JSON, the way users write it).
pub fn sandbox(spec: serde_json::Value) -> AgentSandbox {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "agentsandbox.io/v1alpha1",
        "kind": "AgentSandbox",
        "metadata": {
            "name": "coder",
            "namespace": "agents",
            "uid": "0f0e0d0c-0000-4000-8000-000000000001",
            "generation": 3
        },
        "spec": spec
    }))
    .expect("a valid AgentSandbox")
}
