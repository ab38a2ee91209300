//! The agentsandbox operator: reconciles `AgentSandbox` resources into hardened pods, services,
//! network policies and workspace volumes. The API types (`api`) are also what the node agent
//! (`node/`) writes status with.

pub mod api;
pub mod controller;
pub mod leader;
pub mod lifecycle;
pub mod metrics;
pub mod resources;
pub mod status;

/// The CRD, with descriptions unfolded into paragraphs.
pub fn crd() -> serde_json::Value {
    use kube::CustomResourceExt;
    let mut crd = serde_json::to_value(api::AgentSandbox::crd()).expect("the CRD serialises");
    unfold_descriptions(&mut crd);
    crd
}

/// The CRD as YAML, exactly as committed in `crds/`.
pub fn crd_yaml() -> String {
    format!(
        "# Generated from operator/src/api.rs by `make crds`; do not edit.\n{}",
        serde_saphyr::to_string(&crd()).expect("the CRD serialises to YAML")
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
