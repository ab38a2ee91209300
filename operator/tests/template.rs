//! How a template and a sandbox made from it combine, what a pool's pod looks like, and when
//! a claim cannot take a warm pod: pure functions, no cluster.

use agentsandbox_contract::{annotations, handoff, EgressMode, EscapeResponse, PodPolicy};
use agentsandbox_operator::api::{
    AgentSandboxPool, AgentSandboxPoolSpec, AgentSandboxSpec, EgressRule, LocalRef, Network,
    SecurityPolicy,
};
use agentsandbox_operator::pool::desired_member;
use agentsandbox_operator::resources::{NamespaceSecurity, OperatorSettings};
use agentsandbox_operator::template::{
    effective_spec, template_hash, warm_args, LABEL_POOL, LABEL_TEMPLATE_HASH,
};
use k8s_openapi::api::core::v1::EnvVar;

fn env(pairs: &[(&str, &str)]) -> Option<Vec<EnvVar>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| EnvVar {
                name: k.to_string(),
                value: Some(v.to_string()),
                ..EnvVar::default()
            })
            .collect(),
    )
}

fn strings(items: &[&str]) -> Option<Vec<String>> {
    Some(items.iter().map(|s| s.to_string()).collect())
}

fn template() -> AgentSandboxSpec {
    AgentSandboxSpec {
        image: "agent:1".into(),
        command: strings(&["python3", "-m", "agent"]),
        env: env(&[("MODE", "template"), ("KEEP", "1")]),
        network: Network {
            egress_allow: Some(vec![EgressRule {
                host: Some("pypi.org".into()),
                ..EgressRule::default()
            }]),
            ..Network::default()
        },
        security: SecurityPolicy {
            on_escape_attempt: EscapeResponse::Kill,
        },
        ..AgentSandboxSpec::default()
    }
}

fn claim() -> AgentSandboxSpec {
    AgentSandboxSpec {
        template_ref: Some(LocalRef {
            name: "coder".into(),
        }),
        ..AgentSandboxSpec::default()
    }
}

#[test]
fn the_claims_env_is_added_and_wins_by_name() {
    let mut c = claim();
    c.env = env(&[("MODE", "claim"), ("TASK", "7")]);
    let spec = effective_spec(&template(), &c);
    let env: Vec<(String, String)> = spec
        .env
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.value.unwrap()))
        .collect();
    assert_eq!(
        env,
        vec![
            ("KEEP".to_string(), "1".to_string()),
            ("MODE".to_string(), "claim".to_string()),
            ("TASK".to_string(), "7".to_string()),
        ]
    );
    assert_eq!(spec.image, "agent:1");
}

#[test]
fn egress_rules_of_both_apply_and_the_stricter_escape_response_wins() {
    let mut c = claim();
    c.network.egress_allow = Some(vec![EgressRule {
        cidr: Some("10.0.0.0/8".into()),
        ..EgressRule::default()
    }]);
    c.security.on_escape_attempt = EscapeResponse::Deny;
    let spec = effective_spec(&template(), &c);
    let rules = spec.network.egress_allow.unwrap();
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert_eq!(spec.security.on_escape_attempt, EscapeResponse::Kill);
    c.security.on_escape_attempt = EscapeResponse::Quarantine;
    c.network.egress = EgressMode::Allow;
    let spec = effective_spec(&template(), &c);
    assert_eq!(spec.security.on_escape_attempt, EscapeResponse::Quarantine);
    assert_eq!(spec.network.egress, EgressMode::Allow);
    assert_eq!(spec.network.egress_allow, None, "Allow has no allow list");
}

#[test]
fn args_replace_the_templates_and_keep_its_command() {
    let mut c = claim();
    assert_eq!(warm_args(&template(), &c), Ok(None));
    c.args = strings(&["--task", "7"]);
    assert_eq!(
        warm_args(&template(), &c).unwrap(),
        strings(&["python3", "-m", "agent", "--task", "7"])
    );
    c.command = strings(&["bash"]);
    c.args = None;
    assert_eq!(warm_args(&template(), &c).unwrap(), strings(&["bash"]));
    let spec = effective_spec(&template(), &c);
    assert_eq!((spec.command, spec.args), (strings(&["bash"]), None));
}

#[test]
fn args_without_any_command_cannot_start_warm() {
    let mut t = template();
    t.command = None;
    let mut c = claim();
    c.args = strings(&["--task", "7"]);
    let cold = warm_args(&t, &c).unwrap_err();
    assert_eq!(cold.reason, "ArgsNeedTemplateCommand");
}

#[test]
fn the_template_hash_changes_with_the_template_only() {
    let mut changed = template();
    assert_eq!(template_hash(&template()), template_hash(&changed));
    changed.image = "agent:2".into();
    assert_ne!(template_hash(&template()), template_hash(&changed));
}

fn pool() -> AgentSandboxPool {
    let mut pool = AgentSandboxPool::new(
        "coder",
        AgentSandboxPoolSpec {
            template_ref: LocalRef {
                name: "coder".into(),
            },
            replicas: 3,
            ..AgentSandboxPoolSpec::default()
        },
    );
    pool.metadata.namespace = Some("team".into());
    pool.metadata.uid = Some("pool-uid".into());
    pool
}

#[test]
fn a_pool_pod_waits_hardened_with_no_egress_and_no_claims_identity() {
    let pod = desired_member(
        &pool(),
        &template(),
        &OperatorSettings::default(),
        NamespaceSecurity::default(),
    );
    let meta = &pod.metadata;
    assert_eq!(meta.name, None);
    assert_eq!(meta.generate_name.as_deref(), Some("coder-"));
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels[LABEL_POOL], "coder");
    assert_eq!(labels[LABEL_TEMPLATE_HASH], template_hash(&template()));
    assert!(!labels.contains_key(annotations::LABEL_NAME));
    assert!(!labels.contains_key(annotations::LABEL_UID));
    let owner = &meta.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.uid.as_str()),
        ("AgentSandboxPool", "pool-uid")
    );
    let policy = PodPolicy::from_annotations(meta.annotations.as_ref().unwrap()).unwrap();
    assert!(policy.warm);
    assert_eq!(policy.egress.mode, EgressMode::Deny);
    assert!(policy.egress.allow.is_empty(), "no egress before a claim");
    assert!(!policy.egress.dns);
    assert_eq!(policy.on_escape, EscapeResponse::Kill);
    let spec = pod.spec.unwrap();
    assert_eq!(spec.runtime_class_name.as_deref(), Some("agentsandbox"));
    assert_eq!(spec.hostname, None);
    assert_eq!(spec.containers[0].name, handoff::AGENT_CONTAINER);
    assert_eq!(
        spec.containers[0].env.as_ref().unwrap().len(),
        2,
        "the template's env only"
    );
}
