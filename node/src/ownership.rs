//! Which AgentSandbox a pod's reports belong to. Nothing a pod says about itself is trusted
//! (labels and annotations are anyone's to set on a plain pod): the sandbox is named only by
//! the pod's controller owner reference, in the pod's own namespace, and a report is applied
//! only when the sandbox read from the API server has that reference's UID.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use agentsandbox_operator::api::AgentSandbox;

/// The API group of an AgentSandbox (an owner reference's apiVersion is group/version).
const GROUP: &str = "agentsandbox.io";

/// The sandbox a pod's controller owner reference names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SandboxRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// The controller owner reference of kind AgentSandbox, in the pod's namespace (owner
/// references are namespace-local by definition).
pub fn controlling_sandbox(pod: &Pod) -> Option<SandboxRef> {
    let namespace = pod.namespace()?;
    pod.owner_references()
        .iter()
        .find(|o| {
            o.controller == Some(true)
                && o.kind == "AgentSandbox"
                && o.api_version.split('/').next() == Some(GROUP)
                && !o.uid.is_empty()
        })
        .map(|o| SandboxRef {
            namespace,
            name: o.name.clone(),
            uid: o.uid.clone(),
        })
}

/// How a pod relates to the sandbox read from the API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// Not this sandbox (another one of the same name, or no reference at all).
    Stranger,
    /// Owned by it, but not the pod its status names (an earlier pod, or one the status has
    /// not caught up with): its counts are kept, it never sets the response.
    Former,
    /// The pod the sandbox's status names.
    Current,
}

pub fn relation(sandbox: &AgentSandbox, reference: &SandboxRef, pod: &Pod) -> Relation {
    if sandbox.metadata.uid.as_deref() != Some(reference.uid.as_str())
        || sandbox.metadata.namespace.as_deref() != Some(reference.namespace.as_str())
    {
        return Relation::Stranger;
    }
    let current = sandbox
        .status
        .as_ref()
        .and_then(|s| s.pod_name.as_deref())
        .is_some_and(|name| name == pod.name_any());
    if current {
        Relation::Current
    } else {
        Relation::Former
    }
}
