//! Sandboxes made from an `AgentSandboxTemplate` (`spec.templateRef`): how the template and
//! the sandbox's own fields combine, and what the operator records on the sandbox when it
//! starts. Pure functions; the reconciler (`claim`) reads and writes the cluster.
//!
//! At its first reconcile a templated sandbox records the template's spec as it was then
//! (annotation [`ANNOTATION_TEMPLATE`]): from then on the sandbox is made from that record,
//! so changing or deleting the template never touches a sandbox that exists (a resumed one
//! included).

use std::collections::BTreeMap;

use agentsandbox_contract::EgressMode;
use k8s_openapi::api::core::v1::EnvVar;
use kube::ResourceExt;

use crate::api::{AgentSandbox, AgentSandboxSpec, ClaimStart, ClaimStatus, HostAddressTtl};

/// The template spec the sandbox was made from (JSON of an `AgentSandboxSpec`).
pub const ANNOTATION_TEMPLATE: &str = "agentsandbox.io/template-spec";
/// How the sandbox started (JSON of a [`ClaimStatus`] without `handedOff`).
pub const ANNOTATION_CLAIM: &str = "agentsandbox.io/claim";
/// The warm pool pod the sandbox runs in (absent: its pod is named after it).
pub const ANNOTATION_WARM_POD: &str = "agentsandbox.io/warm-pod";
/// Label of a pool's unclaimed pods: the pool's name.
pub const LABEL_POOL: &str = "agentsandbox.io/pool";
/// Label of a pool's pods: the hash of the template spec they were made from.
pub const LABEL_TEMPLATE_HASH: &str = "agentsandbox.io/template-hash";

/// Why a templated sandbox starts cold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ColdReason {
    pub reason: &'static str,
    pub message: String,
}

impl ColdReason {
    pub fn new(reason: &'static str, message: impl Into<String>) -> ColdReason {
        ColdReason {
            reason,
            message: message.into(),
        }
    }
}

/// The sandbox's spec from its template's: the template decides the image and everything
/// about the pod; the sandbox adds env (its names win), may replace command/args, adds egress
/// (`Allow` if either says so, allow rules of both, allowDNS if either), takes its own
/// lifetime when it has one, and gets the stricter escape response of the two.
pub fn effective_spec(template: &AgentSandboxSpec, claim: &AgentSandboxSpec) -> AgentSandboxSpec {
    let mut spec = template.clone();
    spec.template_ref = claim.template_ref.clone();
    spec.pool_ref = claim.pool_ref.clone();
    if claim.command.is_some() {
        spec.command = claim.command.clone();
        spec.args = claim.args.clone();
    } else if claim.args.is_some() {
        spec.args = claim.args.clone();
    }
    spec.env = merge_env(template.env.as_deref(), claim.env.as_deref());
    let (t, c) = (&template.network, &claim.network);
    spec.network.egress = if t.egress == EgressMode::Allow || c.egress == EgressMode::Allow {
        EgressMode::Allow
    } else {
        EgressMode::Deny
    };
    spec.network.egress_allow = match spec.network.egress {
        EgressMode::Allow => None,
        EgressMode::Deny => {
            let rules: Vec<_> = t
                .egress_allow
                .iter()
                .flatten()
                .chain(c.egress_allow.iter().flatten())
                .cloned()
                .collect();
            (!rules.is_empty()).then_some(rules)
        }
    };
    spec.network.allow_dns = t.allow_dns || c.allow_dns;
    if c.host_address_ttl != HostAddressTtl::default() {
        spec.network.host_address_ttl = c.host_address_ttl.clone();
    }
    if claim.lifetime.is_some() {
        spec.lifetime = claim.lifetime.clone();
    }
    spec.operating_mode = claim.operating_mode;
    spec.security.on_escape_attempt = template
        .security
        .on_escape_attempt
        .max(claim.security.on_escape_attempt);
    spec
}

fn merge_env(template: Option<&[EnvVar]>, claim: Option<&[EnvVar]>) -> Option<Vec<EnvVar>> {
    let claim = claim.unwrap_or_default();
    let mut env: Vec<EnvVar> = template
        .unwrap_or_default()
        .iter()
        .filter(|e| !claim.iter().any(|c| c.name == e.name))
        .cloned()
        .collect();
    env.extend(claim.iter().cloned());
    (!env.is_empty()).then_some(env)
}

/// The command line a warm pod's agent starts with: None keeps the pod's own (the
/// template's). Args without a command replace the image's CMD, which the operator cannot
/// know, unless the template names the command.
pub fn warm_args(
    template: &AgentSandboxSpec,
    claim: &AgentSandboxSpec,
) -> Result<Option<Vec<String>>, ColdReason> {
    match (&claim.command, &claim.args, &template.command) {
        (None, None, _) => Ok(None),
        (Some(command), args, _) => Ok(Some(
            command
                .iter()
                .chain(args.iter().flatten())
                .cloned()
                .collect(),
        )),
        (None, Some(args), Some(command)) => {
            Ok(Some(command.iter().chain(args.iter()).cloned().collect()))
        }
        (None, Some(_), None) => Err(ColdReason::new(
            "ArgsNeedTemplateCommand",
            "spec.args without spec.command replaces the image's CMD, which a warm pod cannot \
             know: give spec.command too, or set command in the template",
        )),
    }
}

/// A stable hash of a template's sandbox spec (the pods a pool made from it carry it).
pub fn template_hash(spec: &AgentSandboxSpec) -> String {
    let bytes = serde_json::to_vec(spec).expect("a spec serialises");
    format!("{:016x}", crate::resources::fnv1a(&bytes))
}

/// The template spec recorded on the sandbox, if any (and readable).
pub fn recorded_template(sandbox: &AgentSandbox) -> Option<AgentSandboxSpec> {
    serde_json::from_str(sandbox.annotations().get(ANNOTATION_TEMPLATE)?).ok()
}

/// How the sandbox started, as recorded.
pub fn recorded_claim(sandbox: &AgentSandbox) -> Option<ClaimStatus> {
    serde_json::from_str(sandbox.annotations().get(ANNOTATION_CLAIM)?).ok()
}

/// The sandbox as the reconciler works on it: a templated sandbox with its recorded
/// template applied; any other sandbox as it is.
pub fn effective_sandbox(sandbox: &AgentSandbox) -> AgentSandbox {
    match (&sandbox.spec.template_ref, recorded_template(sandbox)) {
        (Some(_), Some(template)) => {
            let mut effective = sandbox.clone();
            effective.spec = effective_spec(&template, &sandbox.spec);
            effective
        }
        _ => sandbox.clone(),
    }
}

/// The annotations a templated sandbox records when it starts.
pub fn record(
    template: &AgentSandboxSpec,
    template_name: &str,
    start: ClaimStart,
    pool: Option<&str>,
    cold: Option<&ColdReason>,
    warm_pod: Option<&str>,
) -> BTreeMap<String, String> {
    let claim = ClaimStatus {
        template: template_name.to_string(),
        start,
        pool: pool.map(str::to_string),
        reason: cold.map(|c| c.reason.to_string()),
        message: cold.map(|c| c.message.clone()),
        handed_off: false,
    };
    let mut annotations = BTreeMap::from([
        (
            ANNOTATION_TEMPLATE.to_string(),
            serde_json::to_string(template).expect("a spec serialises"),
        ),
        (
            ANNOTATION_CLAIM.to_string(),
            serde_json::to_string(&claim).expect("a claim serialises"),
        ),
    ]);
    if let Some(pod) = warm_pod {
        annotations.insert(ANNOTATION_WARM_POD.to_string(), pod.to_string());
    }
    annotations
}
