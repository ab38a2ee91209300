//! The AgentSandbox reconciler: desired objects come from `resources`, status from `status`;
//! this module only reads the cluster, applies (server-side, one field manager), deletes,
//! records Events and decides when to look again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{finalizer, Event as Finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::utils::PredicateConfig;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::api::{AgentSandbox, AgentUser, Lifetime, OperatingMode, ResponseTaken, ShutdownPolicy};
use crate::claim;
use crate::lifecycle::{self, Observed, ObservedPod, Plan, PodDeletion, PodStep, SandboxDeletion};
use crate::metrics::Metrics;
use crate::resources::{
    desired_network_policy, desired_pod, desired_service, desired_workspace_claim,
    network_policy_name, pod_name, service_name, workspace_claim_name, NamespaceSecurity,
    OperatorSettings, ANNOTATION_POD_HASH,
};
use crate::status::{finished_at, observe, Ending, Observation, Refusal, READY};
use crate::template::{self, ANNOTATION_WARM_POD};

pub const FIELD_MANAGER: &str = "agentsandbox-operator";
pub const FINALIZER: &str = "agentsandbox.io/cleanup";

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
    /// Consecutive refusals per sandbox UID: the retry delay backs off on them.
    refusals: Mutex<HashMap<String, u32>>,
    /// Pools a claim just took a pod from (the pool controller refills them).
    pub pool_refill:
        Option<tokio::sync::mpsc::UnboundedSender<ObjectRef<crate::api::AgentSandboxPool>>>,
    /// Sends claims' handoffs to node agents (None: no key, claims start cold).
    pub handoff: Option<crate::handoff::HandoffClient>,
    /// Watched copies of what a claim reads (None: read from the API server).
    pub caches: Option<crate::claim::Caches>,
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
            refusals: Mutex::new(HashMap::new()),
            pool_refill: None,
            handoff: None,
            caches: None,
        }
    }

    /// A Normal Event on `sandbox`.
    pub async fn event_for(
        &self,
        sandbox: &AgentSandbox,
        reason: &str,
        action: &str,
        note: String,
    ) {
        self.event(sandbox, EventType::Normal, reason, action, note)
            .await;
    }

    /// How long to wait before trying a refused object again: 5 s, doubling per consecutive
    /// refusal, at most 30 s (the cause, a quota or a policy, is fixed by someone else and
    /// nothing the operator watches tells it when).
    fn refused_again(&self, sandbox: &AgentSandbox) -> Duration {
        let mut refusals = self.refusals.lock().expect("refusal counts");
        let count = refusals
            .entry(sandbox.uid().unwrap_or_default())
            .or_insert(0);
        *count = count.saturating_add(1);
        Duration::from_secs((5u64 << (*count - 1).min(3)).min(30))
    }

    fn admitted(&self, sandbox: &AgentSandbox) {
        if let Some(uid) = sandbox.uid() {
            self.refusals.lock().expect("refusal counts").remove(&uid);
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

/// Server-side apply under the operator's field manager.
pub(crate) fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// A merge patch under the operator's field manager.
pub(crate) fn merge_params() -> PatchParams {
    PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    }
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

/// What of an AgentSandbox asks for a reconcile: its identity, spec (generation), deletion,
/// finalizers, labels, annotations and the escape response the node agent recorded (it
/// quarantines or kills the pod). The rest of the status is written by the operator itself or
/// reported by the node agent (activity, escape counts): those changes need no decision, and
/// deadlines that depend on them (idle timeout, TTL) are requeue timers.
pub fn reconcile_trigger(sandbox: &AgentSandbox) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let meta = &sandbox.metadata;
    meta.uid.hash(&mut hasher);
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    sandbox
        .status
        .as_ref()
        .and_then(|s| s.security.as_ref())
        .and_then(|s| serde_json::to_string(&s.response).ok())
        .hash(&mut hasher);
    Some(hasher.finish())
}

/// Reconciles in flight at most.
pub const RECONCILE_CONCURRENCY: u16 = 16;

/// The controller: AgentSandboxes, and the objects they own (watched by the operator's label).
pub fn controller(client: Client) -> Controller<AgentSandbox> {
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        crate::resources::LABEL_MANAGED_BY,
        crate::resources::MANAGED_BY
    ));
    // The store sees every change (so a reconcile reads the newest status); only changes
    // that need a decision trigger one (`reconcile_trigger`).
    let (reader, writer) = kube::runtime::reflector::store();
    let trigger = watcher::watcher(
        Api::<AgentSandbox>::all(client.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    // The store keeps every sandbox: without managedFields (which nothing here reads) it
    // is a fraction of the size.
    .modify(|sandbox| sandbox.managed_fields_mut().clear())
    .reflect(writer)
    .applied_objects()
    .predicate_filter(reconcile_trigger, PredicateConfig::default());
    Controller::for_stream(trigger, reader)
        // Bounded: thousands of sandboxes created at once must not become thousands of
        // reconciles in flight (each with its requests and responses in memory).
        .with_config(
            kube::runtime::controller::Config::default().concurrency(RECONCILE_CONCURRENCY),
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

/// The lifecycle rules' view of the sandbox and its pod.
fn observe_lifecycle<'a>(
    sandbox: &'a AgentSandbox,
    pod: Option<&Pod>,
    desired_pod_hash: String,
) -> Observed<'a> {
    Observed {
        lifetime: sandbox.spec.lifetime.as_ref().unwrap_or(&NO_LIFETIME),
        operating_mode: sandbox.spec.operating_mode,
        finished_at: finished_at(sandbox).map(|t| t.0),
        activity: sandbox.status.as_ref().and_then(|s| s.activity.as_ref()),
        pod: pod.map(|p| ObservedPod {
            owned: owned_by(p, sandbox),
            deleting: p.metadata.deletion_timestamp.is_some(),
            spec_hash: p.annotations().get(ANNOTATION_POD_HASH).cloned(),
            quarantined: crate::status::response_on_current_pod(sandbox, Some(p))
                == Some(ResponseTaken::Quarantined),
            start_time: p
                .status
                .as_ref()
                .and_then(|s| s.start_time.as_ref())
                .map(|t| t.0),
        }),
        desired_pod_hash,
    }
}

static NO_LIFETIME: Lifetime = Lifetime {
    shutdown_time: None,
    shutdown_policy: ShutdownPolicy::Retain,
    ttl_seconds_after_finished: None,
    idle_timeout: None,
};

/// Observes, plans (`lifecycle::plan`) and carries the plan out.
async fn apply(stored: &AgentSandbox, ctx: &Context) -> Result<Action, Error> {
    let client = &ctx.client;
    let namespace = stored.namespace().ok_or(Error::NoNamespace)?;
    let name = stored.name_any();
    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);

    let mut stored = stored.clone();
    if stored.spec.template_ref.is_some() && template::recorded_template(&stored).is_none() {
        match claim::start(&stored, ctx).await? {
            claim::Started::Recorded(recorded) => stored = *recorded,
            claim::Started::TemplateNotFound(template) => {
                return template_not_found(&stored, ctx, &sandboxes, &template).await;
            }
        }
    }
    if stored.annotations().contains_key(ANNOTATION_WARM_POD) {
        let warm = pods.get_opt(&pod_name(&stored)).await?;
        if !warm.as_ref().is_some_and(|p| owned_by(p, &stored)) {
            // The warm pod it took is gone: its next pod is its own, started cold.
            stored = forget_warm_pod(&sandboxes, &name).await?;
        }
    }
    let sandbox = &template::effective_sandbox(&stored);

    let namespace_security = namespace_security(sandbox, ctx, &namespace).await?;
    let desired = desired_pod(sandbox, &ctx.settings, namespace_security);
    let desired_hash = desired
        .annotations()
        .get(ANNOTATION_POD_HASH)
        .cloned()
        .unwrap_or_default();
    let existing = pods.get_opt(&pod_name(sandbox)).await?;
    let observed = observe_lifecycle(sandbox, existing.as_ref(), desired_hash);
    let now = jiff::Timestamp::now();
    let (step, shut_down, mut requeue) = match lifecycle::plan(&observed, now) {
        Plan::DeleteSandbox(why) => {
            let (reason, note) = match why {
                SandboxDeletion::ShutdownTime => (
                    "ShutdownTime",
                    "shutdownTime passed; shutdownPolicy Delete".to_string(),
                ),
                SandboxDeletion::TtlExpired { ttl_seconds } => {
                    ("TTLExpired", format!("finished {ttl_seconds}s ago"))
                }
            };
            info!(sandbox = %name, %namespace, reason, "deleting the sandbox");
            ctx.event(sandbox, EventType::Normal, reason, "Delete", note)
                .await;
            delete_if_exists(&sandboxes, &name).await?;
            return Ok(Action::await_change());
        }
        Plan::Suspend { idle } => {
            info!(sandbox = %name, %namespace, ?idle, "idle timeout: suspending");
            let patch = json!({"spec": {"operatingMode": "Suspended"}});
            sandboxes
                .patch(&name, &merge_params(), &Patch::Merge(&patch))
                .await?;
            let timeout = observed
                .lifetime
                .idle_timeout
                .as_deref()
                .unwrap_or_default();
            ctx.event(
                sandbox,
                EventType::Normal,
                "IdleTimeout",
                "Suspend",
                format!(
                    "no CPU use and no network traffic for {}s (idleTimeout {timeout}): suspended; set spec.operatingMode to Running to resume",
                    idle.as_secs(),
                ),
            )
            .await;
            return Ok(Action::requeue(Duration::from_secs(1)));
        }
        Plan::Run {
            pod,
            shut_down,
            requeue,
        } => (pod, shut_down, requeue),
    };

    let mut refusal = apply_owned_objects(sandbox, ctx, &namespace).await?;

    let suspended = sandbox.spec.operating_mode == OperatingMode::Suspended;
    let mut pod = existing.filter(|p| owned_by(p, sandbox));
    match step {
        PodStep::Keep => {}
        PodStep::Foreign => {
            warn!(sandbox = %name, %namespace, "a pod of the sandbox's name is owned by something else");
        }
        PodStep::Delete(why) => {
            let (reason, note) = match why {
                PodDeletion::Suspended => (
                    "Suspended",
                    "operatingMode Suspended: pod deleted, workspace kept",
                ),
                PodDeletion::ShutdownTime => ("ShutdownTime", "shutdownTime passed: pod deleted"),
            };
            delete_if_exists(&pods, &pod_name(sandbox)).await?;
            if sandbox.annotations().contains_key(ANNOTATION_WARM_POD) {
                forget_warm_pod(&sandboxes, &name).await?;
            }
            ctx.event(sandbox, EventType::Normal, reason, "DeletePod", note.into())
                .await;
        }
        PodStep::Replace => {
            info!(sandbox = %name, %namespace, "spec changed: replacing the pod");
            delete_if_exists(&pods, &pod_name(sandbox)).await?;
            if sandbox.annotations().contains_key(ANNOTATION_WARM_POD) {
                forget_warm_pod(&sandboxes, &name).await?;
            }
            ctx.event(
                sandbox,
                EventType::Normal,
                "PodReplaced",
                "ReplacePod",
                "spec changed: pod replaced".into(),
            )
            .await;
            pod = None;
        }
        // Its NetworkPolicy, workspace or Service was refused: no pod without them.
        PodStep::Create if refusal.is_some() => {}
        PodStep::Create => {
            // Create (not apply): if a pod of this name appears meanwhile, creating fails
            // instead of taking it over.
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            match pods.create(&params, &desired).await {
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
                Err(e) => refusal = Some(Refusal::of("Pod", e)?),
            }
        }
    }
    match &refusal {
        Some(refused) => {
            requeue = requeue.min(ctx.refused_again(sandbox));
            report_refusal(sandbox, ctx, refused).await;
        }
        None => ctx.admitted(sandbox),
    }

    let warm_pod = pod
        .as_ref()
        .filter(|_| sandbox.annotations().contains_key(ANNOTATION_WARM_POD));
    let mut claim_status = template::recorded_claim(sandbox);
    let mut handoff_pending = false;
    if let Some(claim) = claim_status.as_mut() {
        claim.handed_off = sandbox
            .status
            .as_ref()
            .and_then(|s| s.claim.as_ref())
            .is_some_and(|c| c.handed_off);
        if let Some(warm_pod) = warm_pod.filter(|_| !claim.handed_off) {
            let running =
                warm_pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
            if running {
                match claim::hand_off(&stored, warm_pod, ctx).await {
                    Ok(()) => claim.handed_off = true,
                    Err(e) => {
                        let message = format!(
                            "handing the sandbox's inputs to pod {}: {e}",
                            warm_pod.name_any()
                        );
                        if sandbox
                            .status
                            .as_ref()
                            .and_then(|s| s.claim.as_ref())
                            .and_then(|c| c.message.as_ref())
                            != Some(&message)
                        {
                            warn!(sandbox = %name, %namespace, error = %e, "handoff failed");
                            ctx.event(
                                sandbox,
                                EventType::Warning,
                                "HandoffFailed",
                                "Claim",
                                message.clone(),
                            )
                            .await;
                        }
                        claim.message = Some(message);
                        requeue = requeue.min(Duration::from_secs(2));
                    }
                }
            }
            handoff_pending = !claim.handed_off;
        }
    }

    let observation = Observation {
        sandbox,
        claim: claim_status,
        handoff_pending,
        pod: pod
            .as_ref()
            .filter(|p| p.metadata.deletion_timestamp.is_none() || suspended || shut_down),
        name_conflict: step == PodStep::Foreign,
        refusal: refusal.as_ref(),
        ending: if shut_down {
            Ending::ShutdownTime
        } else {
            Ending::None
        },
        settings: &ctx.settings,
        now: Time(now),
    };
    let status = observe(&observation);
    if observed.finished_at.is_none() {
        let finished = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == crate::status::FINISHED && c.status == "True");
        if let Some(left) = finished.and_then(|c| {
            lifecycle::requeue_after_finishing(observed.lifetime, c.last_transition_time.0, now)
        }) {
            requeue = requeue.min(left);
        }
    }
    if sandbox.status.as_ref().and_then(|s| s.phase) != status.phase {
        info!(sandbox = %name, %namespace, phase = ?status.phase, "phase changed");
    }
    let was_ready = sandbox.condition(READY).is_some_and(|c| c.status == "True");
    let is_ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == READY && c.status == "True");
    if let (Some(claim), false, true) = (&status.claim, was_ready, is_ready) {
        if let Some(created) = sandbox.metadata.creation_timestamp.as_ref() {
            let took = now.duration_since(created.0);
            if let Ok(took) = Duration::try_from(took) {
                // A resumed sandbox turns Ready again much later: that is no claim latency.
                if took < Duration::from_secs(600) {
                    ctx.metrics
                        .observe_claim(claim.start == crate::api::ClaimStart::Warm, took);
                }
            }
        }
    }
    let patch = json!({
        "apiVersion": "agentsandbox.io/v1alpha1",
        "kind": "AgentSandbox",
        "status": status,
    });
    sandboxes
        .patch_status(&name, &apply_params(), &Patch::Apply(&patch))
        .await?;
    Ok(Action::requeue(requeue))
}

/// Drops the record of the warm pod the sandbox took (its pod is gone); the sandbox as stored
/// then.
async fn forget_warm_pod(sandboxes: &Api<AgentSandbox>, name: &str) -> Result<AgentSandbox, Error> {
    let patch = json!({"metadata": {"annotations": {ANNOTATION_WARM_POD: null}}});
    Ok(sandboxes
        .patch(name, &merge_params(), &Patch::Merge(&patch))
        .await?)
}

/// A templated sandbox whose template does not exist: Pending, Ready False, looked at again.
async fn template_not_found(
    sandbox: &AgentSandbox,
    ctx: &Context,
    sandboxes: &Api<AgentSandbox>,
    template: &str,
) -> Result<Action, Error> {
    let message = format!(
        "AgentSandboxTemplate {template} does not exist in namespace {}; create it (the sandbox starts then)",
        sandbox.namespace().unwrap_or_default()
    );
    let already = sandbox
        .condition(READY)
        .is_some_and(|c| c.reason == "TemplateNotFound" && c.message == message);
    if !already {
        ctx.event(
            sandbox,
            EventType::Warning,
            "TemplateNotFound",
            "Claim",
            message.clone(),
        )
        .await;
    }
    let status = crate::status::template_not_found(sandbox, message, Time(jiff::Timestamp::now()));
    let patch = json!({
        "apiVersion": "agentsandbox.io/v1alpha1",
        "kind": "AgentSandbox",
        "status": status,
    });
    sandboxes
        .patch_status(&sandbox.name_any(), &apply_params(), &Patch::Apply(&patch))
        .await?;
    Ok(Action::requeue(Duration::from_secs(10)))
}

/// The NetworkPolicy, workspace claim and Service, applied before the pod exists. The first
/// one the API server refuses (admission, quota, validation) is returned, the rest skipped.
async fn apply_owned_objects(
    sandbox: &AgentSandbox,
    ctx: &Context,
    namespace: &str,
) -> Result<Option<Refusal>, Error> {
    let client = &ctx.client;
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), namespace);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(client.clone(), namespace);
    let params = apply_params();
    let applied = policies
        .patch(
            &network_policy_name(sandbox),
            &params,
            &Patch::Apply(desired_network_policy(sandbox, &ctx.settings)),
        )
        .await;
    if let Err(e) = applied {
        return Ok(Some(Refusal::of("NetworkPolicy", e)?));
    }
    if let Some(claim) = desired_workspace_claim(sandbox) {
        let applied = claims
            .patch(
                &workspace_claim_name(sandbox),
                &params,
                &Patch::Apply(claim),
            )
            .await;
        if let Err(e) = applied {
            return Ok(Some(Refusal::of("PersistentVolumeClaim", e)?));
        }
    }
    match desired_service(sandbox) {
        Some(service) => {
            let applied = services
                .patch(&service_name(sandbox), &params, &Patch::Apply(service))
                .await;
            if let Err(e) = applied {
                return Ok(Some(Refusal::of("Service", e)?));
            }
        }
        None => {
            delete_if_exists(&services, &service_name(sandbox)).await?;
        }
    }
    Ok(None)
}

/// The Pod Security level of the sandbox's namespace, read only when the sandbox leaves the
/// choice of its user to it (`spec.isolation.user: Auto`).
async fn namespace_security(
    sandbox: &AgentSandbox,
    ctx: &Context,
    namespace: &str,
) -> Result<NamespaceSecurity, Error> {
    namespace_security_of(&sandbox.spec, ctx, namespace).await
}

/// [`namespace_security`] for a spec (a template's, for the pods of a pool).
pub async fn namespace_security_of(
    spec: &crate::api::AgentSandboxSpec,
    ctx: &Context,
    namespace: &str,
) -> Result<NamespaceSecurity, Error> {
    if spec.isolation.user != AgentUser::Auto {
        return Ok(NamespaceSecurity::default());
    }
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let labels = namespaces
        .get_opt(namespace)
        .await?
        .map(|ns| ns.labels().clone())
        .unwrap_or_default();
    Ok(NamespaceSecurity::from_labels(&labels))
}

/// One Warning Event per refusal, not one per retry: published when the Ready condition does
/// not already carry this refusal.
async fn report_refusal(sandbox: &AgentSandbox, ctx: &Context, refused: &Refusal) {
    let already = sandbox
        .condition(READY)
        .is_some_and(|c| c.reason == refused.reason && c.message == refused.message());
    if already {
        return;
    }
    warn!(sandbox = %sandbox.name_any(), namespace = ?sandbox.namespace(), kind = refused.kind, reason = refused.reason, "the API server refused an object of the sandbox");
    ctx.event(
        sandbox,
        EventType::Warning,
        refused.reason,
        "Create",
        refused.message(),
    )
    .await;
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
