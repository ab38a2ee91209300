//! Spec -> desired objects, field by field.

mod common;

use agentsandbox_contract::annotations::{
    EGRESS as ANNOTATION_EGRESS, ISOLATION as ANNOTATION_ISOLATION,
    ON_ESCAPE as ANNOTATION_ON_ESCAPE, SANDBOX_NAME as ANNOTATION_SANDBOX_NAME,
    SANDBOX_NAMESPACE as ANNOTATION_SANDBOX_NAMESPACE, SANDBOX_UID as ANNOTATION_SANDBOX_UID,
    SECCOMP as ANNOTATION_SECCOMP,
};
use agentsandbox_operator::resources::*;
use common::sandbox;
use k8s_openapi::api::core::v1::Container;
use serde_json::json;

fn settings() -> OperatorSettings {
    OperatorSettings::default()
}

fn agent(pod: &k8s_openapi::api::core::v1::Pod) -> &Container {
    &pod.spec.as_ref().unwrap().containers[0]
}

#[test]
fn minimal_sandbox_gets_a_hardened_pod_named_after_it() {
    let s = sandbox(json!({"image": "agent:1"}));
    let pod = desired_pod(&s, &settings(), NamespaceSecurity::default());
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(pod.metadata.name.as_deref(), Some("coder"));
    assert_eq!(pod.metadata.namespace.as_deref(), Some("agents"));
    assert_eq!(spec.runtime_class_name.as_deref(), Some("agentsandbox"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    assert_eq!(spec.enable_service_links, Some(false));
    assert_eq!(spec.host_network, Some(false));
    assert_eq!(spec.host_pid, Some(false));
    assert_eq!(spec.host_ipc, Some(false));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(
        spec.security_context
            .as_ref()
            .unwrap()
            .seccomp_profile
            .as_ref()
            .unwrap()
            .type_,
        "RuntimeDefault"
    );
    let c = agent(&pod);
    assert_eq!(c.name, "agent");
    assert_eq!(c.image.as_deref(), Some("agent:1"));
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert!(sc.capabilities.as_ref().unwrap().add.is_none());
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    assert_eq!(c.resources, Some(default_resources()));
    let mounts = c.volume_mounts.as_ref().unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].mount_path, "/tmp");
}

#[test]
fn pod_is_controlled_by_the_sandbox_and_labelled_for_selection() {
    let s = sandbox(json!({"image": "agent:1"}));
    let pod = desired_pod(&s, &settings(), NamespaceSecurity::default());
    let owner = &pod.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(owner.kind, "AgentSandbox");
    assert_eq!(owner.name, "coder");
    assert_eq!(owner.uid, "0f0e0d0c-0000-4000-8000-000000000001");
    assert_eq!(owner.controller, Some(true));
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[LABEL_NAME], "coder");
    assert_eq!(labels[LABEL_UID], "0f0e0d0c-0000-4000-8000-000000000001");
    assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY);
}

#[test]
fn runtime_gets_the_sandbox_identity_and_policies_as_annotations() {
    let s = sandbox(json!({
        "image": "agent:1",
        "security": {"onEscapeAttempt": "Quarantine"},
        "isolation": {"seccompProfile": "RuntimeDefault"}
    }));
    let pod = desired_pod(&s, &settings(), NamespaceSecurity::default());
    let a = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(a[ANNOTATION_SANDBOX_NAME], "coder");
    assert_eq!(a[ANNOTATION_SANDBOX_NAMESPACE], "agents");
    assert_eq!(
        a[ANNOTATION_SANDBOX_UID],
        "0f0e0d0c-0000-4000-8000-000000000001"
    );
    assert_eq!(a[ANNOTATION_ON_ESCAPE], "Quarantine");
    assert_eq!(a[ANNOTATION_SECCOMP], "RuntimeDefault");
    assert_eq!(a[ANNOTATION_ISOLATION], "Strict");
    assert_eq!(
        a[ANNOTATION_EGRESS],
        r#"{"mode":"Deny","allow":[],"dns":false}"#
    );
}

#[test]
fn image_command_args_env_and_working_dir_pass_through() {
    let s = sandbox(json!({
        "image": "registry.example/agent@sha256:abc",
        "imagePullPolicy": "Always",
        "command": ["python3"],
        "args": ["-m", "agent"],
        "env": [{"name": "MODE", "value": "plan"}],
        "workingDir": "/src"
    }));
    let pod = desired_pod(&s, &settings(), NamespaceSecurity::default());
    let c = agent(&pod);
    assert_eq!(
        c.image.as_deref(),
        Some("registry.example/agent@sha256:abc")
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("Always"));
    assert_eq!(c.command.as_deref(), Some(&["python3".to_string()][..]));
    assert_eq!(
        c.args.as_ref().unwrap(),
        &["-m".to_string(), "agent".to_string()]
    );
    let env = c.env.as_ref().unwrap();
    assert_eq!(
        (env[0].name.as_str(), env[0].value.as_deref()),
        ("MODE", Some("plan"))
    );
    assert_eq!(c.working_dir.as_deref(), Some("/src"));
}

#[test]
fn explicit_resources_replace_the_defaults() {
    let s = sandbox(json!({
        "image": "agent:1",
        "resources": {"limits": {"memory": "4Gi", "cpu": "2"}, "requests": {"cpu": "1"}}
    }));
    let pod = desired_pod(&s, &settings(), NamespaceSecurity::default());
    let r = agent(&pod).resources.as_ref().unwrap();
    assert_eq!(r.limits.as_ref().unwrap()["memory"].0, "4Gi");
    assert_eq!(r.requests.as_ref().unwrap()["cpu"].0, "1");
    assert!(!r.requests.as_ref().unwrap().contains_key("memory"));
}

#[test]
fn pod_template_is_merged_but_cannot_take_the_operators_labels_or_weaken_hardening() {
    let s = sandbox(json!({
        "image": "agent:1",
        "podTemplate": {
            "labels": {"team": "ml", "agentsandbox.io/name": "hijack"},
            "annotations": {"note": "x", "agentsandbox.io/egress": "{\"mode\":\"Allow\"}"},
            "nodeSelector": {"pool": "agents"},
            "tolerations": [{"key": "agents", "operator": "Exists"}],
            "priorityClassName": "agents-low",
            "serviceAccountName": "agent-sa",
            "imagePullSecrets": [{"name": "pull"}]
        }
    }));
    let pod = desired_pod(&s, &settings(), NamespaceSecurity::default());
    let labels = pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels["team"], "ml");
    assert_eq!(
        labels[LABEL_NAME], "coder",
        "the operator's selector label wins"
    );
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["note"], "x");
    assert!(
        annotations[ANNOTATION_EGRESS].contains("\"Deny\""),
        "a user cannot forge the egress policy"
    );
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_selector.as_ref().unwrap()["pool"], "agents");
    assert_eq!(
        spec.tolerations.as_ref().unwrap()[0].key.as_deref(),
        Some("agents")
    );
    assert_eq!(spec.priority_class_name.as_deref(), Some("agents-low"));
    assert_eq!(spec.service_account_name.as_deref(), Some("agent-sa"));
    assert_eq!(spec.image_pull_secrets.as_ref().unwrap()[0].name, "pull");
    assert_eq!(
        spec.automount_service_account_token,
        Some(false),
        "the token stays unmounted"
    );
}

#[test]
fn standard_profile_has_a_writable_root_and_nothing_else_relaxed() {
    let s = sandbox(json!({"image": "agent:1", "isolation": {"profile": "Standard"}}));
    let pod = desired_pod(&s, &settings(), NamespaceSecurity::default());
    let sc = agent(&pod).security_context.clone().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(false));
    assert_eq!(
        pod.metadata.annotations.as_ref().unwrap()[ANNOTATION_ISOLATION],
        "Standard",
        "the runtime is told too"
    );
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.unwrap().drop.unwrap(),
        vec!["ALL".to_string()]
    );
}

#[test]
fn without_a_runtime_class_the_pod_uses_the_cluster_default() {
    let s = sandbox(json!({"image": "agent:1"}));
    let settings = OperatorSettings {
        runtime_class_name: None,
        ..OperatorSettings::default()
    };
    assert_eq!(
        desired_pod(&s, &settings, NamespaceSecurity::default())
            .spec
            .unwrap()
            .runtime_class_name,
        None
    );
}

#[test]
fn default_egress_is_denied_with_no_exceptions() {
    let s = sandbox(json!({"image": "agent:1"}));
    let policy = desired_network_policy(&s, &settings());
    let spec = policy.spec.unwrap();
    assert_eq!(spec.policy_types.unwrap(), vec!["Ingress", "Egress"]);
    assert_eq!(spec.egress, None, "no egress rule: all egress denied");
    assert_eq!(spec.ingress, None, "no ingress rule: all ingress denied");
    assert_eq!(
        spec.pod_selector.unwrap().match_labels.unwrap()[LABEL_NAME],
        "coder"
    );
    assert_eq!(policy.metadata.owner_references.unwrap()[0].name, "coder");
}

#[test]
fn egress_allow_list_becomes_ip_blocks_with_ports_and_the_runtime_annotation() {
    let s = sandbox(json!({
        "image": "agent:1",
        "network": {
            "egressAllow": [
                {"cidr": "10.20.0.0/16", "ports": [{"port": 443}, {"port": 53, "protocol": "UDP"}]},
                {"cidr": "10.30.0.7/32"}
            ]
        }
    }));
    let egress = desired_network_policy(&s, &settings())
        .spec
        .unwrap()
        .egress
        .unwrap();
    assert_eq!(egress.len(), 2);
    let first = serde_json::to_value(&egress[0]).unwrap();
    assert_eq!(
        first,
        json!({"to": [{"ipBlock": {"cidr": "10.20.0.0/16"}}],
               "ports": [{"port": 443, "protocol": "TCP"}, {"port": 53, "protocol": "UDP"}]})
    );
    assert_eq!(
        egress[1].ports, None,
        "no ports means every port of the CIDR"
    );
    let pod = desired_pod(&s, &settings(), NamespaceSecurity::default());
    assert_eq!(
        pod.metadata.annotations.unwrap()[ANNOTATION_EGRESS],
        r#"{"mode":"Deny","allow":[{"cidr":"10.20.0.0/16","ports":[{"port":443,"protocol":"TCP"},{"port":53,"protocol":"UDP"}]},{"cidr":"10.30.0.7/32","ports":[]}],"dns":false}"#
    );
}

#[test]
fn allow_dns_adds_only_the_cluster_dns_pods_on_port_53() {
    let s = sandbox(json!({"image": "agent:1", "network": {"allowDNS": true}}));
    let egress = desired_network_policy(&s, &settings())
        .spec
        .unwrap()
        .egress
        .unwrap();
    assert_eq!(
        serde_json::to_value(&egress).unwrap(),
        json!([{
            "to": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}
            }],
            "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
        }])
    );
    assert!(desired_pod(&s, &settings(), NamespaceSecurity::default())
        .metadata
        .annotations
        .unwrap()[ANNOTATION_EGRESS]
        .ends_with(r#""dns":true}"#));
}

#[test]
fn host_rules_reach_the_runtime_and_open_their_ports_to_any_address_in_the_network_policy() {
    let s = sandbox(json!({
        "image": "agent:1",
        "network": {
            "egressAllow": [{"host": "*.example.com", "ports": [{"port": 443}]}],
            "hostAddressTTL": {"minSeconds": 5, "maxSeconds": 60},
            "expose": [{"name": "http", "port": 8080}]
        }
    }));
    let egress = desired_network_policy(&s, &settings())
        .spec
        .unwrap()
        .egress
        .unwrap();
    let json = serde_json::to_value(&egress).unwrap();
    assert_eq!(
        json[0],
        json!({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}],
               "ports": [{"port": 443, "protocol": "TCP"}]})
    );
    // The runtime's resolver forwards allowed names to the cluster DNS.
    assert_eq!(json[1]["ports"][0], json!({"port": 53, "protocol": "UDP"}));
    let pod = desired_pod(&s, &settings(), NamespaceSecurity::default());
    let policy: agentsandbox_contract::EgressPolicy =
        serde_json::from_str(&pod.metadata.annotations.unwrap()[ANNOTATION_EGRESS]).unwrap();
    assert_eq!(policy.allow[0].host, "*.example.com");
    assert_eq!(policy.allow[0].cidr, "");
    assert_eq!(policy.ingress[0].port, 8080);
    assert_eq!(policy.host_ttl.min_seconds, 5);
    assert_eq!(policy.host_ttl.max_seconds, 60);
}

#[test]
fn egress_allow_mode_permits_everything() {
    let s = sandbox(json!({"image": "agent:1", "network": {"egress": "Allow"}}));
    let egress = desired_network_policy(&s, &settings())
        .spec
        .unwrap()
        .egress
        .unwrap();
    assert_eq!(serde_json::to_value(&egress).unwrap(), json!([{}]));
    assert!(desired_pod(&s, &settings(), NamespaceSecurity::default())
        .metadata
        .annotations
        .unwrap()[ANNOTATION_EGRESS]
        .contains(r#""mode":"Allow""#));
}

#[test]
fn exposed_ports_get_a_headless_service_ingress_and_container_ports() {
    let s = sandbox(json!({
        "image": "agent:1",
        "network": {"expose": [{"name": "http", "port": 8080}, {"name": "dns", "port": 5353, "protocol": "UDP"}]}
    }));
    let service = desired_service(&s).expect("a service");
    let spec = service.spec.unwrap();
    assert_eq!(service.metadata.name.as_deref(), Some("coder"));
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(spec.selector.unwrap()[LABEL_NAME], "coder");
    let ports = spec.ports.unwrap();
    assert_eq!(
        (ports[0].name.as_deref(), ports[0].port),
        (Some("http"), 8080)
    );
    assert_eq!(ports[1].protocol.as_deref(), Some("UDP"));
    let ingress = desired_network_policy(&s, &settings())
        .spec
        .unwrap()
        .ingress
        .unwrap();
    assert_eq!(
        serde_json::to_value(&ingress).unwrap(),
        json!([{"ports": [{"port": 8080, "protocol": "TCP"}, {"port": 5353, "protocol": "UDP"}]}])
    );
    let pod = desired_pod(&s, &settings(), NamespaceSecurity::default());
    let container_ports = agent(&pod).ports.clone().unwrap();
    assert_eq!(container_ports[0].container_port, 8080);
    assert_eq!(
        service_fqdn(&s, &settings()),
        "coder.agents.svc.cluster.local"
    );
}

#[test]
fn no_exposed_ports_means_no_service() {
    assert!(desired_service(&sandbox(json!({"image": "agent:1"}))).is_none());
    assert!(desired_service(&sandbox(
        json!({"image": "agent:1", "network": {"expose": []}})
    ))
    .is_none());
}

#[test]
fn workspace_becomes_an_owned_claim_mounted_as_the_working_directory() {
    let s = sandbox(json!({
        "image": "agent:1",
        "workspace": {"size": "5Gi", "storageClassName": "fast", "mountPath": "/work"}
    }));
    let claim = desired_workspace_claim(&s).expect("a claim");
    assert_eq!(claim.metadata.name.as_deref(), Some("coder-workspace"));
    assert_eq!(
        claim.metadata.owner_references.as_ref().unwrap()[0].name,
        "coder"
    );
    let spec = claim.spec.unwrap();
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    assert_eq!(spec.access_modes.unwrap(), vec!["ReadWriteOnce"]);
    assert_eq!(
        spec.resources.unwrap().requests.unwrap()["storage"].0,
        "5Gi"
    );
    let pod = desired_pod(&s, &settings(), NamespaceSecurity::default());
    let c = agent(&pod);
    assert!(c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .any(|m| m.mount_path == "/work" && m.name == "workspace"));
    assert_eq!(c.working_dir.as_deref(), Some("/work"));
    let volumes = pod.spec.unwrap().volumes.unwrap();
    let workspace = volumes.iter().find(|v| v.name == "workspace").unwrap();
    assert_eq!(
        workspace
            .persistent_volume_claim
            .as_ref()
            .unwrap()
            .claim_name,
        "coder-workspace"
    );
}

#[test]
fn workspace_defaults_and_retained_claims_have_no_owner() {
    let s = sandbox(json!({"image": "agent:1", "workspace": {"retainOnDelete": true}}));
    let claim = desired_workspace_claim(&s).unwrap();
    assert!(
        claim.metadata.owner_references.is_none(),
        "garbage collection must not take it"
    );
    assert_eq!(
        claim
            .spec
            .as_ref()
            .unwrap()
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap()["storage"]
            .0,
        "1Gi"
    );
    assert_eq!(
        claim.spec.unwrap().storage_class_name,
        None,
        "the cluster's default class"
    );
    let pod = desired_pod(&s, &settings(), NamespaceSecurity::default());
    assert_eq!(agent(&pod).working_dir.as_deref(), Some("/workspace"));
}

#[test]
fn no_workspace_means_no_claim() {
    assert!(desired_workspace_claim(&sandbox(json!({"image": "agent:1"}))).is_none());
}

#[test]
fn pod_hash_is_stable_and_changes_with_the_spec() {
    let s = sandbox(json!({"image": "agent:1"}));
    let a = desired_pod(&s, &settings(), NamespaceSecurity::default());
    let b = desired_pod(&s, &settings(), NamespaceSecurity::default());
    let hash = |p: &k8s_openapi::api::core::v1::Pod| {
        p.metadata.annotations.as_ref().unwrap()[ANNOTATION_POD_HASH].clone()
    };
    assert_eq!(hash(&a), hash(&b));
    assert_eq!(
        hash(&a),
        pod_hash(&a),
        "the hash ignores its own annotation"
    );
    let changed = desired_pod(
        &sandbox(json!({"image": "agent:2"})),
        &settings(),
        NamespaceSecurity::default(),
    );
    assert_ne!(hash(&a), hash(&changed));
    let policy_changed = desired_pod(
        &sandbox(json!({"image": "agent:1", "network": {"allowDNS": true}})),
        &settings(),
        NamespaceSecurity::default(),
    );
    assert_ne!(
        hash(&a),
        hash(&policy_changed),
        "a new egress policy reaches the runtime through a new pod"
    );
}

#[test]
fn hostname_is_set_only_when_the_name_is_a_valid_label() {
    let s = sandbox(json!({"image": "agent:1"}));
    assert_eq!(
        desired_pod(&s, &settings(), NamespaceSecurity::default())
            .spec
            .unwrap()
            .hostname
            .as_deref(),
        Some("coder")
    );
    let mut dotted = s.clone();
    dotted.metadata.name = Some("coder.v2".to_string());
    assert_eq!(
        desired_pod(&dotted, &settings(), NamespaceSecurity::default())
            .spec
            .unwrap()
            .hostname,
        None
    );
}

#[test]
fn root_in_a_standard_sandbox_keeps_the_runtimes_namespaced_capabilities_and_strict_keeps_none() {
    let caps = |spec: serde_json::Value, settings: &OperatorSettings| {
        let pod = desired_pod(&sandbox(spec), settings, NamespaceSecurity::default());
        let sc = pod.spec.unwrap().containers[0]
            .security_context
            .clone()
            .unwrap();
        assert_eq!(sc.run_as_non_root, None, "root inside by default");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let caps = sc.capabilities.unwrap();
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
        caps.add.unwrap_or_default()
    };
    let standard = json!({"image": "agent:1", "isolation": {"profile": "Standard"}});
    let expected: Vec<String> = agentsandbox_contract::NAMESPACED_CAPABILITIES
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(caps(standard.clone(), &settings()), expected);
    assert!(expected.contains(&"SETUID".to_string()) && expected.contains(&"CHOWN".to_string()));
    assert!(
        caps(json!({"image": "agent:1"}), &settings()).is_empty(),
        "Strict"
    );
    // Without the runtime, root inside is host root: no capabilities at all.
    let no_runtime = OperatorSettings {
        runtime_class_name: None,
        ..settings()
    };
    assert!(caps(standard, &no_runtime).is_empty());
}

#[test]
fn a_restricted_namespace_gets_a_non_root_agent_unless_the_sandbox_says_root() {
    let labels = |level: &str| {
        std::collections::BTreeMap::from([(
            POD_SECURITY_ENFORCE_LABEL.to_string(),
            level.to_string(),
        )])
    };
    assert_eq!(
        NamespaceSecurity::from_labels(&labels("restricted")),
        NamespaceSecurity::Restricted
    );
    for level in ["baseline", "privileged"] {
        assert_eq!(
            NamespaceSecurity::from_labels(&labels(level)),
            NamespaceSecurity::RootAdmitted
        );
    }
    let context = |spec: serde_json::Value, ns: NamespaceSecurity| {
        desired_pod(&sandbox(spec), &settings(), ns)
            .spec
            .unwrap()
            .containers[0]
            .security_context
            .clone()
            .unwrap()
    };
    let standard = json!({"image": "agent:1", "isolation": {"profile": "Standard"}});
    let restricted = context(standard.clone(), NamespaceSecurity::Restricted);
    assert_eq!(restricted.run_as_non_root, Some(true));
    assert_eq!(restricted.run_as_user, Some(1000));
    assert_eq!(restricted.run_as_group, Some(1000));
    assert_eq!(
        restricted.capabilities.unwrap().add,
        None,
        "restricted admits no capabilities but NET_BIND_SERVICE; a non-root agent gets none"
    );
    // An explicit choice wins over the namespace.
    let root = context(
        json!({"image": "agent:1", "isolation": {"user": "Root"}}),
        NamespaceSecurity::Restricted,
    );
    assert_eq!(root.run_as_non_root, None);
    let non_root = context(
        json!({"image": "agent:1", "isolation": {"user": "NonRoot"}}),
        NamespaceSecurity::RootAdmitted,
    );
    assert_eq!(non_root.run_as_user, Some(1000));
}

#[test]
fn files_become_read_only_secret_and_config_map_volumes_mounted_as_directories() {
    let s = sandbox(json!({
        "image": "agent:1",
        "files": [
            {"path": "/etc/agent/ssh", "secret": {"name": "keys", "defaultMode": 0o400,
              "items": [{"key": "id", "path": "id_ed25519", "mode": 0o600}], "optional": true}},
            {"path": "/etc/agent/config", "configMap": {"name": "cfg"}}
        ]
    }));
    let pod = desired_pod(&s, &settings(), NamespaceSecurity::default());
    let spec = pod.spec.as_ref().unwrap();
    let volumes = spec.volumes.as_ref().unwrap();
    let secret = volumes.iter().find(|v| v.name == "files-0").unwrap();
    let secret = secret.secret.as_ref().expect("a Secret volume");
    assert_eq!(secret.secret_name.as_deref(), Some("keys"));
    assert_eq!(secret.default_mode, Some(0o400));
    assert_eq!(secret.optional, Some(true));
    let item = &secret.items.as_ref().unwrap()[0];
    assert_eq!(
        (item.key.as_str(), item.path.as_str(), item.mode),
        ("id", "id_ed25519", Some(0o600))
    );
    let config = volumes.iter().find(|v| v.name == "files-1").unwrap();
    let config = config.config_map.as_ref().expect("a ConfigMap volume");
    assert_eq!(config.name, "cfg");
    assert!(config.items.is_none(), "every key when no items are listed");
    let mounts = agent(&pod).volume_mounts.as_ref().unwrap();
    for (name, path) in [
        ("files-0", "/etc/agent/ssh"),
        ("files-1", "/etc/agent/config"),
    ] {
        let mount = mounts.iter().find(|m| m.name == name).unwrap();
        assert_eq!(mount.mount_path, path);
        assert_eq!(mount.read_only, Some(true));
        assert!(
            mount.sub_path.is_none(),
            "a subPath mount would never see the kubelet's updates"
        );
    }
    // A root agent gets no fsGroup unless it asks.
    assert_eq!(spec.security_context.as_ref().unwrap().fs_group, None);
}

#[test]
fn fs_group_defaults_for_a_non_root_agent_with_volumes_and_the_template_wins() {
    let security = |spec: serde_json::Value| {
        desired_pod(&sandbox(spec), &settings(), NamespaceSecurity::default())
            .spec
            .unwrap()
            .security_context
            .unwrap()
    };
    let non_root = json!({"image": "agent:1", "isolation": {"user": "NonRoot"}, "workspace": {}});
    let context = security(non_root);
    assert_eq!(context.fs_group, Some(1000));
    assert_eq!(
        context.fs_group_change_policy.as_deref(),
        Some("OnRootMismatch")
    );
    let without_volumes = security(json!({"image": "agent:1", "isolation": {"user": "NonRoot"}}));
    assert_eq!(
        without_volumes.fs_group, None,
        "no volume, no fsGroup (the pod's hash is unchanged)"
    );
    assert_eq!(without_volumes.fs_group_change_policy, None);
    let chosen = security(json!({
        "image": "agent:1",
        "workspace": {},
        "podTemplate": {"fsGroup": 2000, "supplementalGroups": [3000, 3001]}
    }));
    assert_eq!(chosen.fs_group, Some(2000));
    assert_eq!(chosen.supplemental_groups, Some(vec![3000, 3001]));
    let root_workspace = security(json!({"image": "agent:1", "workspace": {}}));
    assert_eq!(
        root_workspace.fs_group, None,
        "a root agent owns the workspace through the idmap"
    );
}
