//! What the operator reports: phase and conditions computed from the observed pod and the
//! spec, as a pure function. Conditions follow the metav1.Condition conventions: a condition's
//! `lastTransitionTime` moves only when its status changes, and each carries the generation it
//! was computed for.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::api::{
    AgentSandbox, AgentSandboxStatus, ClaimStatus, OperatingMode, Phase, ResponseTaken,
};
use crate::resources::{service_fqdn, OperatorSettings};

pub const READY: &str = "Ready";
pub const HARDENED: &str = "Hardened";
pub const SUSPENDED: &str = "Suspended";
pub const FINISHED: &str = "Finished";

/// Why the sandbox has no running pod, decided by the reconciler before observing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The sandbox runs (or should).
    None,
    /// `lifetime.shutdownTime` passed.
    ShutdownTime,
}

/// An object of the sandbox that the API server refused to create: Pod Security admission,
/// a ResourceQuota or LimitRange, an admission webhook or policy, or validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    /// The refused object's kind.
    pub kind: &'static str,
    /// The Ready condition's reason: QuotaExceeded, or <what>Rejected.
    pub reason: &'static str,
    /// The API server's message.
    pub api_message: String,
}

impl Refusal {
    /// The refusal in an API error, or the error itself when it is not one (a refusal is an
    /// answer about the object: 400 Bad Request, 403 Forbidden, 422 Invalid).
    pub fn of(kind: &'static str, error: kube::Error) -> Result<Refusal, kube::Error> {
        match error {
            kube::Error::Api(status) if matches!(status.code, 400 | 403 | 422) => {
                Ok(Refusal::new(kind, status.message))
            }
            other => Err(other),
        }
    }

    pub fn new(kind: &'static str, api_message: String) -> Refusal {
        let reason =
            if api_message.contains("exceeded quota") || api_message.contains("failed quota") {
                "QuotaExceeded"
            } else {
                match kind {
                    "Pod" => "PodRejected",
                    "PersistentVolumeClaim" => "WorkspaceRejected",
                    "Service" => "ServiceRejected",
                    "NetworkPolicy" => "NetworkPolicyRejected",
                    _ => "Rejected",
                }
            };
        Refusal {
            kind,
            reason,
            api_message,
        }
    }

    /// What the Ready condition and the Warning Event say.
    pub fn message(&self) -> String {
        format!(
            "the API server refused the sandbox's {}: {}",
            self.kind, self.api_message
        )
    }
}

/// Everything the status is computed from.
pub struct Observation<'a> {
    pub sandbox: &'a AgentSandbox,
    /// The sandbox's own pod (owner UID checked), if it exists.
    pub pod: Option<&'a Pod>,
    /// A pod of the sandbox's name exists but belongs to something else.
    pub name_conflict: bool,
    /// An object of the sandbox the API server refused in this reconcile.
    pub refusal: Option<&'a Refusal>,
    pub ending: Ending,
    pub settings: &'a OperatorSettings,
    pub now: Time,
    /// How a templated sandbox started (None: not from a template).
    pub claim: Option<ClaimStatus>,
    /// It runs in a warm pod that has not taken its inputs yet.
    pub handoff_pending: bool,
}

struct ConditionSpec {
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: String,
}

fn condition(
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: impl Into<String>,
) -> ConditionSpec {
    ConditionSpec {
        type_,
        status,
        reason,
        message: message.into(),
    }
}

/// The operator's part of the status. `security` and the EscapeAttempted condition belong to
/// the node agent and are left out (server-side apply keeps them).
pub fn observe(obs: &Observation) -> AgentSandboxStatus {
    let sandbox = obs.sandbox;
    let generation = sandbox.metadata.generation;
    let pod_phase = obs
        .pod
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let pod_ready = obs
        .pod
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));

    let suspended = sandbox.spec.operating_mode == OperatingMode::Suspended;
    let (phase, ready) = if obs.name_conflict {
        (
            Phase::Pending,
            condition(
                READY,
                false,
                "PodNameConflict",
                format!(
                    "a pod named {} exists and is not owned by this sandbox; delete or rename it",
                    sandbox.name_any()
                ),
            ),
        )
    } else if obs.ending == Ending::ShutdownTime {
        (
            Phase::Finished,
            condition(
                READY,
                false,
                "ShutdownTime",
                "spec.lifetime.shutdownTime has passed",
            ),
        )
    } else if suspended {
        if obs.pod.is_some() {
            (
                Phase::Suspended,
                condition(
                    READY,
                    false,
                    "Suspending",
                    "the sandbox's pod is being deleted",
                ),
            )
        } else {
            (
                Phase::Suspended,
                condition(
                    READY,
                    false,
                    "Suspended",
                    "operatingMode is Suspended; the workspace is kept",
                ),
            )
        }
    } else if let Some(refused) = obs.refusal {
        (
            Phase::Pending,
            condition(READY, false, refused.reason, refused.message()),
        )
    } else if let Some(action) = response_on_current_pod(sandbox, obs.pod) {
        let pod_name = obs.pod.map(|p| p.name_any()).unwrap_or_default();
        if action == ResponseTaken::Quarantined {
            (
                Phase::Quarantined,
                condition(
                    READY,
                    false,
                    "Quarantined",
                    format!(
                        "an escape attempt was answered with Quarantine: the pod's processes are \
                         frozen and its network is cut, everything kept for forensics; release \
                         with `kubectl delete pod {pod_name}` (a fresh pod replaces it) or delete \
                         the sandbox"
                    ),
                ),
            )
        } else {
            (
                Phase::Failed,
                condition(
                    READY,
                    false,
                    "EscapeAttempt",
                    "an escape attempt was answered with Kill: the sandbox's containers were \
                     stopped (see status.security)",
                ),
            )
        }
    } else {
        match (obs.pod, pod_phase.as_str()) {
            (None, _) => (
                Phase::Pending,
                condition(
                    READY,
                    false,
                    "PodCreating",
                    "the sandbox's pod is being created",
                ),
            ),
            (Some(pod), "Succeeded") => (
                Phase::Finished,
                condition(READY, false, "AgentExited", exit_message(pod)),
            ),
            (Some(pod), "Failed") => (
                Phase::Failed,
                condition(READY, false, "AgentFailed", exit_message(pod)),
            ),
            (Some(_), "Running") if pod_ready && handoff_pending(obs) => (
                Phase::Running,
                condition(
                    READY,
                    false,
                    "HandingOff",
                    obs.claim
                        .as_ref()
                        .and_then(|c| c.message.clone())
                        .unwrap_or_else(|| {
                            "the warm pod is taking the sandbox's env, args and egress".into()
                        }),
                ),
            ),
            (Some(_), "Running") if pod_ready => (
                Phase::Running,
                condition(
                    READY,
                    true,
                    "PodReady",
                    "the sandbox's pod is running and ready",
                ),
            ),
            (Some(pod), "Running") => (
                Phase::Running,
                condition(READY, false, "PodNotReady", waiting_message(pod)),
            ),
            (Some(pod), _) => (
                Phase::Pending,
                condition(READY, false, "PodPending", waiting_message(pod)),
            ),
        }
    };

    let hardened = match &obs.settings.runtime_class_name {
        Some(class) => condition(
            HARDENED,
            true,
            "RuntimeEnforced",
            format!(
                "the pod runs under RuntimeClass {class}, which enforces the sandbox hardening"
            ),
        ),
        None => condition(
            HARDENED,
            false,
            "NoHardenedRuntime",
            "the operator runs without a runtime class: pod-level hardening only, no user \
             namespace, agent seccomp profile or escape reporting",
        ),
    };
    let suspended_condition = if suspended {
        condition(
            SUSPENDED,
            true,
            "OperatingModeSuspended",
            "operatingMode is Suspended",
        )
    } else {
        condition(
            SUSPENDED,
            false,
            "OperatingModeRunning",
            "operatingMode is Running",
        )
    };
    let finished = match phase {
        Phase::Finished | Phase::Failed => {
            condition(FINISHED, true, ready.reason, ready.message.clone())
        }
        _ => condition(
            FINISHED,
            false,
            "NotFinished",
            "the sandbox has not finished",
        ),
    };

    let previous = sandbox.status.as_ref().and_then(|s| s.conditions.as_ref());
    let conditions = [ready, hardened, suspended_condition, finished]
        .into_iter()
        .map(|spec| to_condition(spec, previous, generation, &obs.now))
        .collect();

    let pod_status = obs.pod.and_then(|p| p.status.as_ref());
    AgentSandboxStatus {
        phase: Some(phase),
        conditions: Some(conditions),
        observed_generation: generation,
        pod_name: obs.pod.map(|p| p.name_any()),
        node_name: obs.pod.and_then(|p| p.spec.as_ref()?.node_name.clone()),
        pod_ip: pod_status.and_then(|s| s.pod_ip.clone()),
        service_fqdn: sandbox
            .spec
            .network
            .expose
            .as_ref()
            .filter(|e| !e.is_empty())
            .map(|_| service_fqdn(sandbox, obs.settings)),
        start_time: pod_status.and_then(|s| s.start_time.clone()),
        security: None,
        activity: None,
        claim: obs.claim.clone(),
    }
}

/// A warm pod bound to the sandbox whose agent has not started yet.
fn handoff_pending(obs: &Observation) -> bool {
    obs.handoff_pending
}

/// The status of a templated sandbox whose template does not exist.
pub fn template_not_found(
    sandbox: &AgentSandbox,
    message: String,
    now: Time,
) -> AgentSandboxStatus {
    let previous = sandbox.status.as_ref().and_then(|s| s.conditions.as_ref());
    let ready = to_condition(
        condition(READY, false, "TemplateNotFound", message),
        previous,
        sandbox.metadata.generation,
        &now,
    );
    AgentSandboxStatus {
        phase: Some(Phase::Pending),
        conditions: Some(vec![ready]),
        observed_generation: sandbox.metadata.generation,
        ..AgentSandboxStatus::default()
    }
}

/// Killed or Quarantined, when the runtime carried that response out on the sandbox's
/// current pod (the node agent records it in status.security.response).
pub fn response_on_current_pod(sandbox: &AgentSandbox, pod: Option<&Pod>) -> Option<ResponseTaken> {
    let response = sandbox
        .status
        .as_ref()?
        .security
        .as_ref()?
        .response
        .as_ref()?;
    let pod_uid = pod?.metadata.uid.as_deref()?;
    (response.pod_uid == pod_uid).then_some(response.action)
}

fn to_condition(
    spec: ConditionSpec,
    previous: Option<&Vec<Condition>>,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    let status = if spec.status { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .and_then(|cs| cs.iter().find(|c| c.type_ == spec.type_))
        .filter(|c| c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: spec.type_.to_string(),
        status,
        reason: spec.reason.to_string(),
        message: spec.message,
        observed_generation: generation,
        last_transition_time,
    }
}

fn exit_message(pod: &Pod) -> String {
    let terminated = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find_map(|c| c.state.as_ref()?.terminated.clone()));
    match terminated {
        Some(t) => format!(
            "the agent exited with code {}{}",
            t.exit_code,
            t.reason.map(|r| format!(" ({r})")).unwrap_or_default()
        ),
        None => "the agent's pod has ended".to_string(),
    }
}

fn waiting_message(pod: &Pod) -> String {
    let waiting = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find_map(|c| c.state.as_ref()?.waiting.clone()));
    match waiting {
        Some(w) => format!(
            "container waiting: {}{}",
            w.reason.unwrap_or_default(),
            w.message.map(|m| format!(": {m}")).unwrap_or_default()
        ),
        None => {
            let scheduled = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"));
            match scheduled {
                Some(c) if c.status != "True" => format!(
                    "pod not scheduled: {}",
                    c.message.clone().unwrap_or_default()
                ),
                _ => "the sandbox's pod is starting".to_string(),
            }
        }
    }
}

/// When the sandbox finished (its Finished condition turned True), if it has.
pub fn finished_at(sandbox: &AgentSandbox) -> Option<Time> {
    sandbox
        .condition(FINISHED)
        .filter(|c| c.status == "True")
        .map(|c| c.last_transition_time.clone())
}
