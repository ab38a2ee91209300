//! The AgentSandboxPool reconciler: keeps `replicas` unclaimed pods of the pool's template
//! running, hardened as any sandbox, with no egress (their runtime policy denies everything,
//! and a NetworkPolicy per pool says the same), each waiting for a claim (see
//! [`crate::claim`]). A claimed pod leaves the pool (its pool label and owner change) and
//! the pool starts another. Pods of an older template are replaced while unclaimed
//! (`updateStrategy: ReplaceIdle`); claimed pods are never touched.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agentsandbox_contract::{annotations, EgressMode, EgressPolicy};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, ObjectMeta, Time};
use kube::api::{Api, ListParams, Patch, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use crate::api::{
    AgentSandbox, AgentSandboxPool, AgentSandboxPoolStatus, AgentSandboxSpec, AgentSandboxTemplate,
    PoolUpdateType,
};
use crate::controller::{Context, Error, FIELD_MANAGER};
use crate::resources::{
    desired_pod, runtime_pod_policy, NamespaceSecurity, OperatorSettings, ANNOTATION_POD_HASH,
    LABEL_NAME, LABEL_UID,
};
use crate::template::{template_hash, LABEL_POOL, LABEL_TEMPLATE_HASH};

/// A pool pod of `template`, as created (the API server picks its name).
pub fn desired_member(
    pool: &AgentSandboxPool,
    template: &AgentSandboxSpec,
    settings: &OperatorSettings,
    namespace: NamespaceSecurity,
) -> Pod {
    let mut shape = AgentSandbox::new(&pool.name_any(), template.clone());
    shape.metadata.namespace = pool.namespace();
    shape.metadata.uid = pool.uid();
    let mut pod = desired_pod(&shape, settings, namespace);
    let pool_name = pool.name_any();
    pod.metadata.name = None;
    pod.metadata.generate_name = Some(format!("{pool_name}-"));
    pod.metadata.owner_references = pool.controller_owner_ref(&()).map(|r| vec![r]);
    let labels = pod.metadata.labels.get_or_insert_with(BTreeMap::new);
    labels.remove(LABEL_NAME);
    labels.remove(LABEL_UID);
    labels.insert(LABEL_POOL.to_string(), pool_name);
    labels.insert(LABEL_TEMPLATE_HASH.to_string(), template_hash(template));
    let mut policy = runtime_pod_policy(&shape);
    // Nothing out until a claim hands its egress over; inbound as the template exposes.
    policy.egress = EgressPolicy {
        mode: EgressMode::Deny,
        ingress: policy.egress.ingress,
        ..EgressPolicy::default()
    };
    policy.warm = true;
    let pod_annotations = pod.metadata.annotations.get_or_insert_with(BTreeMap::new);
    pod_annotations.remove(ANNOTATION_POD_HASH);
    pod_annotations.retain(|k, _| !k.starts_with(annotations::PREFIX));
    pod_annotations.extend(policy.to_annotations());
    if let Some(spec) = pod.spec.as_mut() {
        // The pod's name is its hostname: it is not the claim's name.
        spec.hostname = None;
    }
    pod
}

/// Denies all traffic of the pool's unclaimed pods (the runtime does too).
pub fn desired_pool_network_policy(pool: &AgentSandboxPool) -> NetworkPolicy {
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(pool_network_policy_name(pool)),
            namespace: pool.namespace(),
            labels: Some(BTreeMap::from([(
                crate::resources::LABEL_MANAGED_BY.to_string(),
                crate::resources::MANAGED_BY.to_string(),
            )])),
            owner_references: pool.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(LABEL_POOL.to_string(), pool.name_any())])),
                ..LabelSelector::default()
            }),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: None,
            egress: None,
        }),
    }
}

pub fn pool_network_policy_name(pool: &AgentSandboxPool) -> String {
    format!("{}-pool", pool.name_any())
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The controller of pools: pools, their pods, and the templates they use.
pub fn controller(client: kube::Client) -> Controller<AgentSandboxPool> {
    let members = watcher::Config::default().labels(LABEL_POOL);
    let pools: Api<AgentSandboxPool> = Api::all(client.clone());
    let controller = Controller::new(pools, watcher::Config::default());
    let store = controller.store();
    controller
        .owns(Api::<Pod>::all(client.clone()), members)
        .watches(
            Api::<AgentSandboxTemplate>::all(client),
            watcher::Config::default(),
            move |template| {
                let namespace = template.namespace();
                let name = template.name_any();
                store
                    .state()
                    .into_iter()
                    .filter(|p| p.namespace() == namespace && p.spec.template_ref.name == name)
                    .map(|p| ObjectRef::from_obj(&*p))
                    .collect::<Vec<_>>()
            },
        )
}

/// Runs the pool controller until `shutdown`; `refill` carries pools a claim just took a pod
/// from.
pub async fn run(
    controller: Controller<AgentSandboxPool>,
    ctx: Arc<Context>,
    refill: impl futures::Stream<Item = ObjectRef<AgentSandboxPool>> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .reconcile_on(refill)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

fn error_policy(pool: Arc<AgentSandboxPool>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(pool = %pool.name_any(), namespace = ?pool.namespace(), error = %error, "pool reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(pool: Arc<AgentSandboxPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = pool.namespace().ok_or(Error::NoNamespace)?;
    let name = pool.name_any();
    let client = &ctx.client;
    let pools: Api<AgentSandboxPool> = Api::namespaced(client.clone(), &namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let templates: Api<AgentSandboxTemplate> = Api::namespaced(client.clone(), &namespace);
    let desired = pool.spec.replicas.max(0) as usize;
    let selector = format!("{LABEL_POOL}={name}");
    let uid = pool.uid();
    let members: Vec<Pod> = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| {
            p.owner_references()
                .iter()
                .any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
        })
        .collect();

    let template = templates.get_opt(&pool.spec.template_ref.name).await?;
    let Some(template) = template else {
        let status = pool_status(
            &pool,
            &selector,
            "",
            0,
            0,
            0,
            Some((
                "TemplateNotFound",
                format!(
                    "AgentSandboxTemplate {} does not exist in namespace {namespace}",
                    pool.spec.template_ref.name
                ),
            )),
        );
        write_status(&pools, &name, status).await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    };
    let hash = template_hash(&template.spec.sandbox);
    if template.spec.sandbox.workspace.is_some() {
        let status = pool_status(&pool, &selector, &hash, 0, 0, 0, Some((
            "TemplateHasWorkspace",
            "a pool keeps pods of templates without a workspace (a workspace belongs to one sandbox); sandboxes of this template start cold".to_string(),
        )));
        write_status(&pools, &name, status).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    }

    let live: Vec<&Pod> = members
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let mut delete: Vec<String> = Vec::new();
    let mut current: Vec<&Pod> = Vec::new();
    let mut outdated = 0;
    for pod in live {
        let pod_hash = pod.labels().get(LABEL_TEMPLATE_HASH).map(String::as_str);
        if is_finished(pod) {
            delete.push(pod.name_any());
        } else if pod_hash != Some(hash.as_str()) {
            match pool.spec.update_strategy.type_ {
                PoolUpdateType::ReplaceIdle => delete.push(pod.name_any()),
                PoolUpdateType::OnDelete => outdated += 1,
            }
        } else {
            current.push(pod);
        }
    }
    // Scale down: not-ready pods go first.
    if current.len() > desired {
        current.sort_by_key(|p| is_ready(p));
        let extra = current.len() - desired;
        delete.extend(current.drain(..extra).map(|p| p.name_any()));
    }
    for pod in &delete {
        match pods.delete(pod, &Default::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let missing = desired.saturating_sub(current.len());
    if missing > 0 {
        policies_applied(&pool, &ctx, &namespace).await?;
        let security =
            crate::controller::namespace_security_of(&template.spec.sandbox, &ctx, &namespace)
                .await?;
        let member = desired_member(&pool, &template.spec.sandbox, &ctx.settings, security);
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PostParams::default()
        };
        for _ in 0..missing {
            pods.create(&params, &member).await?;
        }
        info!(pool = %name, %namespace, created = missing, deleted = delete.len(), "pool pods started");
    }
    let ready = current.iter().filter(|p| is_ready(p)).count();
    ctx.metrics
        .observe_pool(&namespace, &name, current.len() as i64, ready as i64);
    let status = pool_status(
        &pool,
        &selector,
        &hash,
        current.len() as i32,
        ready as i32,
        outdated,
        None,
    );
    write_status(&pools, &name, status).await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

async fn policies_applied(
    pool: &AgentSandboxPool,
    ctx: &Context,
    namespace: &str,
) -> Result<(), Error> {
    let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), namespace);
    policies
        .patch(
            &pool_network_policy_name(pool),
            &crate::controller::apply_params(),
            &Patch::Apply(desired_pool_network_policy(pool)),
        )
        .await?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn pool_status(
    pool: &AgentSandboxPool,
    selector: &str,
    hash: &str,
    replicas: i32,
    ready: i32,
    outdated: i32,
    problem: Option<(&'static str, String)>,
) -> AgentSandboxPoolStatus {
    let (status, reason, message) = match problem {
        Some((reason, message)) => (false, reason, message),
        None if ready >= pool.spec.replicas => (
            true,
            "PodsReady",
            format!("{ready} of {} pods ready to be claimed", pool.spec.replicas),
        ),
        None => (
            false,
            "PodsStarting",
            format!("{ready} of {} pods ready to be claimed", pool.spec.replicas),
        ),
    };
    let previous = pool
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
    let status_text = if status { "True" } else { "False" };
    let last_transition_time = match previous {
        Some(c) if c.status == status_text => c.last_transition_time.clone(),
        _ => Time(jiff::Timestamp::now()),
    };
    AgentSandboxPoolStatus {
        replicas,
        ready_replicas: ready,
        outdated_replicas: outdated,
        selector: selector.to_string(),
        template_hash: hash.to_string(),
        observed_generation: pool.metadata.generation,
        conditions: Some(vec![Condition {
            type_: "Ready".into(),
            status: status_text.into(),
            reason: reason.into(),
            message,
            last_transition_time,
            observed_generation: pool.metadata.generation,
        }]),
    }
}

async fn write_status(
    pools: &Api<AgentSandboxPool>,
    name: &str,
    status: AgentSandboxPoolStatus,
) -> Result<(), Error> {
    let patch = json!({
        "apiVersion": "agentsandbox.io/v1alpha1",
        "kind": "AgentSandboxPool",
        "status": status,
    });
    pools
        .patch_status(
            name,
            &crate::controller::apply_params(),
            &Patch::Apply(&patch),
        )
        .await?;
    Ok(())
}
