//! The agentsandbox operator: reconciles `AgentSandbox` resources into hardened pods, services,
//! network policies and workspace volumes. The API types (`api`) are also what the node agent
//! (`node/`) writes status with.

pub mod api;
pub mod claim;
pub mod controller;
pub mod handoff;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod pool;
pub mod resources;
pub mod status;
pub mod template;

/// The AgentSandbox CRD, with descriptions unfolded into paragraphs.
pub fn crd() -> serde_json::Value {
    crd_of("agentsandboxes")
}

/// A CRD of the API by plural (agentsandboxes, agentsandboxtemplates, agentsandboxpools).
pub fn crd_of(plural: &str) -> serde_json::Value {
    use kube::CustomResourceExt;
    let crd = match plural {
        "agentsandboxtemplates" => api::AgentSandboxTemplate::crd(),
        "agentsandboxpools" => api::AgentSandboxPool::crd(),
        _ => api::AgentSandbox::crd(),
    };
    let mut crd = serde_json::to_value(crd).expect("the CRD serialises");
    unfold_descriptions(&mut crd);
    crd
}

/// The plurals of the API's CRDs (file `crds/agentsandbox.io_<plural>.yaml` each).
pub const CRD_PLURALS: [&str; 3] = [
    "agentsandboxes",
    "agentsandboxtemplates",
    "agentsandboxpools",
];

/// The AgentSandbox CRD as YAML, exactly as committed in `crds/`.
pub fn crd_yaml() -> String {
    crd_yaml_of("agentsandboxes")
}

/// A CRD as YAML, exactly as committed in `crds/`.
pub fn crd_yaml_of(plural: &str) -> String {
    format!(
        "# Generated from operator/src/api.rs by `make crds`; do not edit.\n{}",
        serde_saphyr::to_string(&crd_of(plural)).expect("the CRD serialises to YAML")
    )
}

/// Doc comments wrap at ~100 columns; `kubectl explain` wraps again. Join wrapped lines so
/// that only paragraph breaks remain.
fn unfold_descriptions(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    serde_json::Value::String(text) if key == "description" => {
                        *text = text
                            .split("\n\n")
                            .map(|paragraph| {
                                paragraph
                                    .split('\n')
                                    .map(str::trim)
                                    .collect::<Vec<_>>()
                                    .join(" ")
                            })
                            .collect::<Vec<_>>()
                            .join("\n\n");
                    }
                    _ => unfold_descriptions(child),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unfold_descriptions),
        _ => {}
    }
}
