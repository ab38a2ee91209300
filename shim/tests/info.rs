//! What the shim answers containerd 2.x's `-info` probe: a `RuntimeInfo` protobuf whose
//! features offer recursive read-only mounts and no idmapped mounts for Kubernetes user
//! namespaces (CRI then reports the handler's features from it).

use agentsandbox_shim::info::{encode_info, RuntimeInfo, FEATURES_TYPE_URL};
use prost::Message;

#[test]
fn the_info_protobuf_carries_the_oci_features_containerd_reads() {
    let info =
        RuntimeInfo::decode(encode_info("io.containerd.agentsandbox.v1").as_slice()).unwrap();
    assert_eq!(info.name, "io.containerd.agentsandbox.v1");
    let features = info.features.expect("features");
    assert_eq!(features.type_url, FEATURES_TYPE_URL);
    let features: serde_json::Value = serde_json::from_slice(&features.value).unwrap();
    let options = features["mountOptions"].as_array().unwrap();
    assert!(
        options.iter().any(|o| o == "rro"),
        "recursive read-only mounts"
    );
    assert_eq!(
        features["hooks"],
        serde_json::json!([]),
        "hooks are stripped"
    );
    assert_eq!(
        features["linux"]["mountExtensions"]["idmap"]["enabled"], false,
        "no CRI user namespaces: hostUsers: false pods are refused"
    );
    let capabilities = features["linux"]["capabilities"].as_array().unwrap();
    assert!(capabilities
        .iter()
        .all(|c| c.as_str().unwrap().starts_with("CAP_")));
    assert!(!capabilities.iter().any(|c| c == "CAP_SYS_ADMIN"));
}
