//! The AgentSandbox reconciler: desired objects come from `resources`, status from `status`;
//! this module only reads the cluster, applies (server-side, one field manager), deletes,
//! records Events and decides when to look again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::activity::parse_duration;
use crate::api::{AgentSandbox, OperatingMode, ShutdownPolicy};
use crate::metrics::Metrics;
use crate::resources::{
    desired_network_policy, desired_pod, desired_service, desired_workspace_claim,
    network_policy_name, pod_name, service_name, workspace_claim_name, OperatorSettings,
    ANNOTATION_POD_HASH,
};
use crate::status::{finished_at, observe, Ending, Observation};

pub const FIELD_MANAGER: &str = "agentsandbox-operator";
pub const FINALIZER: &str = "agentsandbox.io/cleanup";
/// How often a sandbox is looked at even when nothing changes (lifetimes, drift).
const RESYNC: Duration = Duration::from_secs(300);
/// Idleness is judged only on node measurements at most this old; without them (no node
/// agent on the node, or it is down) a sandbox is never suspended for being idle.
const ACTIVITY_MAX_AGE: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed: {}", describe_kube_error(.0))]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("sandbox has no namespace")]
    NoNamespace,
}

/// An API error as its message and code, not the whole Status structure.
fn describe_kube_error(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} (HTTP {})", status.message, status.code),
        other => other.to_string(),
    }
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::NoNamespace => "no_namespace",
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    pub client: Client,
    pub settings: OperatorSettings,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
}

impl Context {
    pub fn new(
        client: Client,
        settings: OperatorSettings,
        metrics: Arc<Metrics>,
        instance: String,
    ) -> Context {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: Some(instance),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            settings,
            metrics,
        }
    }

    async fn event(
        &self,
        sandbox: &AgentSandbox,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.to_string(),
            note: Some(note),
            action: action.to_string(),
            secondary: None,
        };
        if let Err(e) = self
            .recorder
            .publish(&event, &sandbox.object_ref(&()))
            .await
        {
            warn!(sandbox = %sandbox.name_any(), error = %e, "publishing event failed");
        }
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Fails with a clear message when the AgentSandbox CRD is not installed.
pub async fn check_crd(client: &Client) -> anyhow::Result<()> {
    let sandboxes: Api<AgentSandbox> = Api::all(client.clone());
    sandboxes
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("cannot list AgentSandboxes ({e}): is the CRD installed (crds/) and may this service account list them?"))
}

/// The controller: AgentSandboxes, and the objects they own (watched by the operator's label).
pub fn controller(client: Client) -> Controller<AgentSandbox> {
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        crate::resources::LABEL_MANAGED_BY,
        crate::resources::MANAGED_BY
    ));
    Controller::new(
        Api::<AgentSandbox>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Pod>::all(client.clone()), owned.clone())
    .owns(Api::<Service>::all(client.clone()), owned.clone())
    .owns(Api::<NetworkPolicy>::all(client.clone()), owned.clone())
    .owns(Api::<PersistentVolumeClaim>::all(client), owned)
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    controller: Controller<AgentSandbox>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

pub async fn reconcile(sandbox: Arc<AgentSandbox>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = sandbox.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<AgentSandbox> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, sandbox, |event| async {
        match event {
            Finalizer::Apply(sandbox) => apply(&sandbox, &ctx).await,
            Finalizer::Cleanup(sandbox) => cleanup(&sandbox, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.as_ref().err());
    result
}

pub fn error_policy(sandbox: Arc<AgentSandbox>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(sandbox = %sandbox.name_any(), namespace = ?sandbox.namespace(), error = %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn until(time: &Time) -> Duration {
    let now = jiff::Timestamp::now();
    if time.0 <= now {
        Duration::ZERO
    } else {
        Duration::from_millis(
            u64::try_from(time.0.duration_since(now).as_millis()).unwrap_or(u64::MAX),
        )
    }
}

async fn delete_if_exists<K>(api: &Api<K>, name: &str) -> Result<bool, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Is `pod` the sandbox's own (its controller owner reference carries the sandbox's UID)?
fn owned_by(pod: &Pod, sandbox: &AgentSandbox) -> bool {
    let uid = sandbox.uid();
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

async fn apply(sandbox: &AgentSandbox, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let namespace = sandbox.namespace().ok_or(Error::NoNamespace)?;
    let name = sandbox.name_any();
    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), &namespace);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &namespace);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let lifetime = sandbox.spec.lifetime.clone().unwrap_or_default();
    let mut requeue = RESYNC;

    // Lifetime: a sandbox past its shutdown time ends, per its policy.
    let shut_down = lifetime
        .shutdown_time
        .as_ref()
        .is_some_and(|t| until(t) == Duration::ZERO);
    if shut_down && lifetime.shutdown_policy == ShutdownPolicy::Delete {
        info!(sandbox = %name, %namespace, "shutdownTime passed: deleting the sandbox");
        ctx.event(
            sandbox,
            EventType::Normal,
            "ShutdownTime",
            "Delete",
            "shutdownTime passed; shutdownPolicy Delete".into(),
        )
        .await;
        delete_if_exists(&sandboxes, &name).await?;
        return Ok(Action::await_change());
    }
    if let Some(t) = lifetime.shutdown_time.as_ref().filter(|_| !shut_down) {
        requeue = requeue.min(until(t) + Duration::from_millis(100));
    }

    // A finished sandbox with a TTL is deleted when the TTL runs out.
    if let (Some(ttl), Some(finished)) = (lifetime.ttl_seconds_after_finished, finished_at(sandbox))
    {
        let expires = Time(finished.0 + jiff::SignedDuration::from_secs(ttl));
        let left = until(&expires);
        if left == Duration::ZERO {
            info!(sandbox = %name, %namespace, "ttlSecondsAfterFinished passed: deleting the sandbox");
            ctx.event(
                sandbox,
                EventType::Normal,
                "TTLExpired",
                "Delete",
                format!("finished {ttl}s ago"),
            )
            .await;
            delete_if_exists(&sandboxes, &name).await?;
            return Ok(Action::await_change());
        }
        requeue = requeue.min(left + Duration::from_millis(100));
    }

    let params = apply_params();
    policies
        .patch(
            &network_policy_name(sandbox),
            &params,
            &Patch::Apply(desired_network_policy(sandbox, &ctx.settings)),
        )
        .await?;
    if let Some(claim) = desired_workspace_claim(sandbox) {
        claims
            .patch(
                &workspace_claim_name(sandbox),
                &params,
                &Patch::Apply(claim),
            )
            .await?;
    }
    match desired_service(sandbox) {
        Some(service) => {
            services
                .patch(&service_name(sandbox), &params, &Patch::Apply(service))
                .await?;
        }
        None => {
            delete_if_exists(&services, &service_name(sandbox)).await?;
        }
    }

    let existing = pods.get_opt(&pod_name(sandbox)).await?;
    let name_conflict = existing.as_ref().is_some_and(|p| !owned_by(p, sandbox));
    let mut pod = existing.filter(|p| owned_by(p, sandbox));
    let suspended = sandbox.spec.operating_mode == OperatingMode::Suspended;

    // A quarantined pod is frozen, hence idle: it is kept for forensics, never suspended.
    let quarantined = pod.as_ref().is_some_and(|p| {
        crate::status::response_on_current_pod(sandbox, Some(p)) == Some("Quarantined")
    });
    if let (Some(timeout), Some(p), false, false, false) = (
        lifetime.idle_timeout.as_deref().and_then(parse_duration),
        pod.as_ref(),
        suspended,
        shut_down,
        quarantined,
    ) {
        match idle_for(sandbox, p) {
            Some(idle) if idle >= timeout => {
                info!(sandbox = %name, %namespace, ?idle, "idle timeout: suspending");
                let patch = json!({"spec": {"operatingMode": "Suspended"}});
                sandboxes
                    .patch(
                        &name,
                        &PatchParams {
                            field_manager: Some(FIELD_MANAGER.into()),
                            ..PatchParams::default()
                        },
                        &Patch::Merge(&patch),
                    )
                    .await?;
                ctx.event(
                    sandbox,
                    EventType::Normal,
                    "IdleTimeout",
                    "Suspend",
                    format!(
                        "no CPU use and no network traffic for {}s (idleTimeout {}): suspended; set spec.operatingMode to Running to resume",
                        idle.as_secs(),
                        lifetime.idle_timeout.as_deref().unwrap_or_default()
                    ),
                )
                .await;
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            Some(idle) => requeue = requeue.min(timeout - idle + Duration::from_secs(1)),
            None => requeue = requeue.min(Duration::from_secs(30)),
        }
    }

    if name_conflict {
        warn!(sandbox = %name, %namespace, "a pod of the sandbox's name is owned by something else");
    } else if shut_down || suspended {
        if let Some(p) = &pod {
            if p.metadata.deletion_timestamp.is_none() {
                let (reason, note) = if suspended {
                    (
                        "Suspended",
                        "operatingMode Suspended: pod deleted, workspace kept",
                    )
                } else {
                    ("ShutdownTime", "shutdownTime passed: pod deleted")
                };
                delete_if_exists(&pods, &p.name_any()).await?;
                ctx.event(
                    sandbox,
                    EventType::Normal,
                    reason,
                    "DeletePod",
                    note.to_string(),
                )
                .await;
            }
            requeue = requeue.min(Duration::from_secs(2));
        }
    } else {
        let desired = desired_pod(sandbox, &ctx.settings);
        let desired_hash = desired.annotations().get(ANNOTATION_POD_HASH).cloned();
        match &pod {
            Some(p) if p.metadata.deletion_timestamp.is_some() => {
                // Replaced or being deleted: create the new one once it is gone.
                requeue = requeue.min(Duration::from_secs(1));
            }
            Some(p) if p.annotations().get(ANNOTATION_POD_HASH) != desired_hash.as_ref() => {
                info!(sandbox = %name, %namespace, "spec changed: replacing the pod");
                delete_if_exists(&pods, &p.name_any()).await?;
                ctx.event(
                    sandbox,
                    EventType::Normal,
                    "PodReplaced",
                    "ReplacePod",
                    "spec changed: pod replaced".into(),
                )
                .await;
                pod = None;
                requeue = requeue.min(Duration::from_secs(1));
            }
            Some(_) => {}
            None => {
                // Create (not apply): if a pod of this name appears meanwhile, creating fails
                // instead of taking it over.
                match pods
                    .create(
                        &PostParams {
                            field_manager: Some(FIELD_MANAGER.into()),
                            ..Default::default()
                        },
                        &desired,
                    )
                    .await
                {
                    Ok(created) => {
                        ctx.event(
                            sandbox,
                            EventType::Normal,
                            "PodCreated",
                            "CreatePod",
                            format!("created pod {}", created.name_any()),
                        )
                        .await;
                        pod = Some(created);
                    }
                    Err(kube::Error::Api(status)) if status.code == 409 => {
                        requeue = requeue.min(Duration::from_secs(1));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }

    let observation = Observation {
        sandbox,
        pod: pod
            .as_ref()
            .filter(|p| p.metadata.deletion_timestamp.is_none() || suspended || shut_down),
        name_conflict,
        ending: if shut_down {
            Ending::ShutdownTime
        } else {
            Ending::None
        },
        settings: &ctx.settings,
        now: now(),
    };
    let status = observe(&observation);
    if sandbox.status.as_ref().and_then(|s| s.phase) != status.phase {
        info!(sandbox = %name, %namespace, phase = ?status.phase, "phase changed");
    }
    let patch = json!({
        "apiVersion": "agentsandbox.io/v1alpha1",
        "kind": "AgentSandbox",
        "status": status,
    });
    sandboxes
        .patch_status(&name, &params, &Patch::Apply(&patch))
        .await?;
    Ok(Action::requeue(requeue))
}

/// How long the sandbox's pod has been idle, from fresh node measurements; `None` when there
/// are none.
fn idle_for(sandbox: &AgentSandbox, pod: &Pod) -> Option<Duration> {
    let activity = sandbox.status.as_ref()?.activity.as_ref()?;
    let sampled = activity.last_sample_time.as_ref()?;
    if elapsed_since(sampled) > ACTIVITY_MAX_AGE {
        return None;
    }
    let started = pod.status.as_ref()?.start_time.as_ref()?;
    let last_active = activity
        .last_active_time
        .as_ref()
        .filter(|a| a.0 > started.0)
        .unwrap_or(started);
    Some(elapsed_since(last_active))
}

fn elapsed_since(time: &Time) -> Duration {
    let now = jiff::Timestamp::now();
    if time.0 >= now {
        Duration::ZERO
    } else {
        Duration::from_millis(
            u64::try_from(now.duration_since(time.0).as_millis()).unwrap_or(u64::MAX),
        )
    }
}

/// On delete: remove what the sandbox owns (the workspace only unless retained), then let the
/// finalizer go.
async fn cleanup(sandbox: &AgentSandbox, ctx: &Context) -> Result<Action, Error> {
    let namespace = sandbox.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    if let Some(pod) = pods.get_opt(&pod_name(sandbox)).await? {
        if owned_by(&pod, sandbox) {
            delete_if_exists(&pods, &pod.name_any()).await?;
        }
    }
    delete_if_exists(
        &Api::<Service>::namespaced(client.clone(), &namespace),
        &service_name(sandbox),
    )
    .await?;
    delete_if_exists(
        &Api::<NetworkPolicy>::namespaced(client.clone(), &namespace),
        &network_policy_name(sandbox),
    )
    .await?;
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), &namespace);
    let claim_name = workspace_claim_name(sandbox);
    let retain = sandbox
        .spec
        .workspace
        .as_ref()
        .is_some_and(|w| w.retain_on_delete);
    if retain {
        // Make sure garbage collection cannot take it either.
        if claims.get_opt(&claim_name).await?.is_some() {
            let patch = json!({"metadata": {"ownerReferences": null}});
            claims
                .patch(&claim_name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    } else {
        delete_if_exists(&claims, &claim_name).await?;
    }
    ctx.event(
        sandbox,
        EventType::Normal,
        "Deleted",
        "Cleanup",
        if retain {
            format!("pod, service and network policy deleted; workspace {claim_name} retained")
        } else {
            "pod, service, network policy and workspace deleted".to_string()
        },
    )
    .await;
    Ok(Action::await_change())
}
