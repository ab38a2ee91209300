//! The committed CRDs (`crds/`) are exactly what the Rust types generate.

use agentsandbox_operator::{crd_of, crd_yaml_of, CRD_PLURALS};

fn root() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/..")
}

#[test]
fn committed_crds_match_the_rust_types() {
    for plural in CRD_PLURALS {
        let path = format!("{}/crds/agentsandbox.io_{plural}.yaml", root());
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == crd_yaml_of(plural),
            "{path} is out of date with operator/src/api.rs: run `make crds`"
        );
    }
}

#[test]
fn chart_ships_the_same_crds() {
    for plural in CRD_PLURALS {
        let committed =
            std::fs::read_to_string(format!("{}/crds/agentsandbox.io_{plural}.yaml", root()))
                .unwrap();
        let chart = std::fs::read_to_string(format!(
            "{}/charts/agentsandbox/files/crds/agentsandbox.io_{plural}.yaml",
            root()
        ))
        .unwrap_or_default();
        assert!(
            committed == chart,
            "charts/agentsandbox/files/crds/ differs from crds/ for {plural}: run `make crds`"
        );
    }
}

#[test]
fn every_spec_and_status_field_has_a_description() {
    for plural in CRD_PLURALS {
        let crd = crd_of(plural);
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        fn walk(node: &serde_json::Value, path: String, missing: &mut Vec<String>) {
            if let Some(props) = node.get("properties").and_then(|p| p.as_object()) {
                for (name, child) in props {
                    let child_path = format!("{path}.{name}");
                    // Kubernetes' own types (env, resources, tolerations, conditions) carry
                    // their upstream descriptions; ours must carry one everywhere.
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
            "{plural}: fields without a description (kubectl explain shows nothing): {missing:?}"
        );
    }
}
