//! The committed CRD (`crds/`) is exactly what the Rust types generate.

#[test]
fn committed_crd_matches_the_rust_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/agentsandbox.io_agentsandboxes.yaml"
    );
    let committed =
        std::fs::read_to_string(path).expect("crds/agentsandbox.io_agentsandboxes.yaml exists");
    assert!(
        committed == agentsandbox_operator::crd_yaml(),
        "crds/agentsandbox.io_agentsandboxes.yaml is out of date with operator/src/api.rs: run `make crds`"
    );
}

#[test]
fn chart_ships_the_same_crd() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let committed =
        std::fs::read_to_string(format!("{root}/crds/agentsandbox.io_agentsandboxes.yaml"))
            .unwrap();
    let chart = std::fs::read_to_string(format!(
        "{root}/charts/agentsandbox/files/crds/agentsandbox.io_agentsandboxes.yaml"
    ))
    .expect("the chart carries the CRD");
    assert!(
        committed == chart,
        "charts/agentsandbox/files/crds/ differs from crds/: run `make crds`"
    );
}

#[test]
fn every_spec_and_status_field_has_a_description() {
    let crd = agentsandbox_operator::crd();
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut missing = Vec::new();
    fn walk(node: &serde_json::Value, path: String, missing: &mut Vec<String>) {
        if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
            for (name, child) in props {
                let child_path = format!("{path}.{name}");
                // Kubernetes' own types (env, resources, tolerations, conditions) carry their
                // upstream descriptions; ours must carry one everywhere.
                if child.get("description").is_none() && !path.contains("env") {
                    missing.push(child_path.clone());
                }
                walk(child, child_path, missing);
            }
        }
        if let Some(items) = node.get("items") {
            walk(items, format!("{path}[]"), missing);
        }
    }
    walk(&schema["properties"]["spec"], "spec".into(), &mut missing);
    walk(
        &schema["properties"]["status"],
        "status".into(),
        &mut missing,
    );
    assert!(
        missing.is_empty(),
        "fields without a description (kubectl explain shows nothing): {missing:?}"
    );
}
