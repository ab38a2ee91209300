//! Everything the operator tells the runtime about one pod, as pod annotations: written by
//! [`PodPolicy::to_annotations`], read back once by [`PodPolicy::from_annotations`].

use std::collections::BTreeMap;

use crate::{annotations, named_enum, EgressPolicy, EscapeResponse};

named_enum! {
    /// How much of the container's filesystem the sandbox may change.
    #[derive(Default)]
    pub enum IsolationProfile {
        // Read-only root filesystem; only the workspace and /tmp are writable.
        #[default]
        Strict => "Strict",
        // Writable root filesystem (agents that install packages); otherwise as Strict.
        Standard => "Standard",
    }
}

named_enum! {
    /// The seccomp profile the pod asks for (the agentsandbox runtime applies its own anyway).
    #[derive(Default)]
    pub enum SeccompProfileChoice {
        #[default]
        Agent => "Agent",
        RuntimeDefault => "RuntimeDefault",
    }
}

/// Why the pod's annotations cannot be taken as they are.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("{kind} {value:?} is not one of {expected}")]
    UnknownValue {
        kind: &'static str,
        value: String,
        expected: String,
    },
    #[error("annotation {key} is not valid: {reason}")]
    Annotation { key: &'static str, reason: String },
}

/// Which AgentSandbox a pod belongs to, as the operator wrote it (the node agent never
/// trusts this: it resolves the sandbox from the pod's owner reference).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodIdentity {
    pub sandbox_name: String,
    pub sandbox_namespace: String,
    pub sandbox_uid: String,
}

/// The runtime's view of one pod's policy.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodPolicy {
    pub identity: PodIdentity,
    pub isolation: IsolationProfile,
    pub seccomp: SeccompProfileChoice,
    pub on_escape: EscapeResponse,
    /// No egress annotation (a pod the operator did not make) is no egress at all: a plain pod
    /// under the RuntimeClass fails closed, like an AgentSandbox that says nothing.
    pub egress: EgressPolicy,
    /// A warm pool member: its agent container waits for a claim's handoff
    /// ([`crate::handoff`]) before the agent starts.
    pub warm: bool,
}

impl PodPolicy {
    /// The annotations the operator puts on the pod.
    pub fn to_annotations(&self) -> BTreeMap<String, String> {
        let mut written = BTreeMap::from([
            (
                annotations::SANDBOX_NAME.to_string(),
                self.identity.sandbox_name.clone(),
            ),
            (
                annotations::SANDBOX_NAMESPACE.to_string(),
                self.identity.sandbox_namespace.clone(),
            ),
            (
                annotations::SANDBOX_UID.to_string(),
                self.identity.sandbox_uid.clone(),
            ),
            (
                annotations::ON_ESCAPE.to_string(),
                self.on_escape.as_str().to_string(),
            ),
            (
                annotations::ISOLATION.to_string(),
                self.isolation.as_str().to_string(),
            ),
            (
                annotations::SECCOMP.to_string(),
                self.seccomp.as_str().to_string(),
            ),
        ]);
        written.insert(
            annotations::EGRESS.to_string(),
            serde_json::to_string(&self.egress).expect("the egress policy serialises"),
        );
        if self.warm {
            written.insert(
                crate::handoff::WARM_ANNOTATION.to_string(),
                "true".to_string(),
            );
        }
        written
    }

    /// Reads the policy from a pod's annotations. A missing key takes its default, the one an
    /// AgentSandbox gets (Strict, Agent, Deny, no egress); a present but unparsable one is an
    /// error, so that a typo never silently weakens a sandbox.
    pub fn from_annotations(
        pod_annotations: &BTreeMap<String, String>,
    ) -> Result<PodPolicy, PolicyError> {
        let text = |key: &str| pod_annotations.get(key).cloned().unwrap_or_default();
        let parsed = |key: &str| pod_annotations.get(key).map(String::as_str);
        let egress = pod_annotations
            .get(annotations::EGRESS)
            .map(|json| {
                serde_json::from_str(json).map_err(|e| PolicyError::Annotation {
                    key: annotations::EGRESS,
                    reason: e.to_string(),
                })
            })
            .transpose()?
            .unwrap_or_else(EgressPolicy::deny_all);
        Ok(PodPolicy {
            identity: PodIdentity {
                sandbox_name: text(annotations::SANDBOX_NAME),
                sandbox_namespace: text(annotations::SANDBOX_NAMESPACE),
                sandbox_uid: text(annotations::SANDBOX_UID),
            },
            isolation: parsed(annotations::ISOLATION)
                .map(str::parse)
                .transpose()?
                .unwrap_or_default(),
            seccomp: parsed(annotations::SECCOMP)
                .map(str::parse)
                .transpose()?
                .unwrap_or_default(),
            on_escape: parsed(annotations::ON_ESCAPE)
                .map(str::parse)
                .transpose()?
                .unwrap_or_default(),
            egress,
            warm: match parsed(crate::handoff::WARM_ANNOTATION) {
                None => false,
                Some("true") => true,
                Some(other) => {
                    return Err(PolicyError::Annotation {
                        key: crate::handoff::WARM_ANNOTATION,
                        reason: format!("{other:?} is not \"true\""),
                    })
                }
            },
        })
    }
}
