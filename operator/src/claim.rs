//! Starting a sandbox from its template (`spec.templateRef`): record the template, take a
//! ready pool pod if one fits (else start cold and say why), and hand the sandbox's inputs
//! to the pod it took.
//!
//! Taking a pod is one patch with the pod's `resourceVersion` as precondition: its pool
//! label goes, the sandbox's labels come and the sandbox becomes its controller owner. Two
//! claims racing for one pod: one patch wins, the other gets 409 and tries the next pod.
//! The pool sees the pod leave and starts another.

use std::collections::BTreeMap;

use agentsandbox_contract::handoff::{Handoff, WarmStart};
use agentsandbox_contract::PodIdentity;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, EnvVar, Pod, Secret};
use kube::api::{Api, ListParams, Patch};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use crate::api::{AgentSandbox, AgentSandboxPool, AgentSandboxTemplate, ClaimStart, OperatingMode};
use crate::controller::{merge_params, Context, Error};
use crate::handoff::{unix_now, HandoffError, VALIDITY};
use crate::pool::is_ready;
use crate::resources::{
    desired_pod, runtime_egress_policy, ANNOTATION_POD_HASH, LABEL_NAME, LABEL_UID,
};
use crate::template::{
    self, effective_sandbox, record, template_hash, warm_args, ColdReason, LABEL_POOL,
    LABEL_TEMPLATE_HASH,
};

/// Watched copies of templates, pools, pool pods and node agents: a claim reads them
/// without a round trip to the API server. A copy can lag a watch event behind: a pod
/// another claim just took fails the bind's resourceVersion precondition and the next one is
/// tried, and an object not in the copy yet is read from the API server.
#[derive(Clone)]
pub struct Caches {
    pub templates: Store<AgentSandboxTemplate>,
    pub pools: Store<AgentSandboxPool>,
    pub pool_pods: Store<Pod>,
    pub node_agents: Store<Pod>,
}

impl Caches {
    /// Starts the watches (they run until the process ends); ready once each listed once.
    pub async fn start(
        client: &kube::Client,
        pools: Store<AgentSandboxPool>,
        settings: &crate::resources::OperatorSettings,
    ) -> Caches {
        fn cached<K>(api: Api<K>, config: watcher::Config) -> Store<K>
        where
            K: kube::Resource
                + Clone
                + std::fmt::Debug
                + serde::de::DeserializeOwned
                + Send
                + Sync
                + 'static,
            K::DynamicType: Default + Eq + std::hash::Hash + Clone,
        {
            let (reader, writer) = kube::runtime::reflector::store();
            let stream = kube::runtime::reflector(
                writer,
                watcher(api, config).modify(|o| o.managed_fields_mut().clear()),
            )
            .default_backoff()
            .touched_objects()
            .for_each(|_| futures::future::ready(()));
            tokio::spawn(stream);
            reader
        }
        let caches = Caches {
            templates: cached(Api::all(client.clone()), watcher::Config::default()),
            pools,
            pool_pods: cached(
                Api::all(client.clone()),
                watcher::Config::default().labels(LABEL_POOL),
            ),
            node_agents: cached(
                Api::namespaced(client.clone(), &settings.node_agent_namespace),
                watcher::Config::default().labels(&settings.node_agent_selector),
            ),
        };
        for ready in [
            caches.templates.wait_until_ready().await.is_ok(),
            caches.pool_pods.wait_until_ready().await.is_ok(),
            caches.node_agents.wait_until_ready().await.is_ok(),
        ] {
            if !ready {
                tracing::warn!("a claim cache did not start: claims read from the API server");
            }
        }
        caches
    }
}

/// What starting from the template came to.
pub enum Started {
    /// The sandbox as stored now, with its template recorded.
    Recorded(Box<AgentSandbox>),
    /// The template does not exist (yet).
    TemplateNotFound(String),
}

/// Records the template on a templated sandbox that has none recorded yet, taking a warm pod
/// when one fits.
pub async fn start(sandbox: &AgentSandbox, ctx: &Context) -> Result<Started, Error> {
    let namespace = sandbox.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;
    let template_name = sandbox
        .spec
        .template_ref
        .as_ref()
        .map(|r| r.name.clone())
        .unwrap_or_default();
    let cached = ctx.caches.as_ref().and_then(|c| {
        c.templates
            .get(&ObjectRef::new(&template_name).within(&namespace))
            .map(|t| (*t).clone())
    });
    let template = match cached {
        Some(template) => template,
        None => {
            let templates: Api<AgentSandboxTemplate> = Api::namespaced(client.clone(), &namespace);
            match templates.get_opt(&template_name).await? {
                Some(template) => template,
                None => return Ok(Started::TemplateNotFound(template_name)),
            }
        }
    };
    let template_spec = &template.spec.sandbox;
    let (pool, cold) = match choose_pool(sandbox, ctx, &namespace, &template_name).await? {
        Err(cold) => (None, Some(cold)),
        Ok(pool) => match warm_blocker(sandbox, template_spec) {
            Some(cold) => (Some(pool), Some(cold)),
            None => (Some(pool), None),
        },
    };
    let pool_name = pool.as_ref().map(|p| p.name_any());
    let mut taken = None;
    let mut cold = cold;
    if let (Some(pool), None) = (&pool, &cold) {
        taken = take_pod(sandbox, ctx, &namespace, pool, template_spec).await?;
        if taken.is_none() {
            cold = Some(ColdReason::new(
                "PoolEmpty",
                format!(
                    "pool {} had no ready pod of the current template: started cold",
                    pool.name_any()
                ),
            ));
        } else if let Some(refill) = &ctx.pool_refill {
            let _ = refill.send(ObjectRef::from_obj(pool));
        }
    }
    let start = if taken.is_some() {
        ClaimStart::Warm
    } else {
        ClaimStart::Cold
    };
    let annotations = record(
        template_spec,
        &template_name,
        start,
        pool_name.as_deref(),
        cold.as_ref(),
        taken.as_deref(),
    );
    let sandboxes: Api<AgentSandbox> = Api::namespaced(client.clone(), &namespace);
    let patch = json!({"metadata": {"annotations": annotations}});
    let stored = sandboxes
        .patch(&sandbox.name_any(), &merge_params(), &Patch::Merge(&patch))
        .await?;
    match (&taken, &cold) {
        (Some(pod), _) => {
            info!(sandbox = %sandbox.name_any(), %namespace, pod, pool = ?pool_name, "took a warm pod");
            ctx.event_for(
                &stored,
                "ClaimedWarm",
                "Claim",
                format!(
                    "took ready pod {pod} of pool {}",
                    pool_name.unwrap_or_default()
                ),
            )
            .await;
        }
        (None, Some(cold)) => {
            info!(sandbox = %sandbox.name_any(), %namespace, reason = cold.reason, "starting cold from the template");
            ctx.event_for(
                &stored,
                "StartedCold",
                "Claim",
                format!("{}: {}", cold.reason, cold.message),
            )
            .await;
        }
        (None, None) => {}
    }
    Ok(Started::Recorded(Box::new(stored)))
}

/// The pool to take a pod from: `spec.poolRef`, else the namespace's pool of the template.
async fn choose_pool(
    sandbox: &AgentSandbox,
    ctx: &Context,
    namespace: &str,
    template_name: &str,
) -> Result<Result<AgentSandboxPool, ColdReason>, Error> {
    if sandbox.spec.operating_mode == OperatingMode::Suspended {
        return Ok(Err(ColdReason::new(
            "Suspended",
            "created Suspended: no pod until it runs",
        )));
    }
    let pools: Api<AgentSandboxPool> = Api::namespaced(ctx.client.clone(), namespace);
    let cached = ctx.caches.as_ref().map(|c| &c.pools);
    let pool = match (&sandbox.spec.pool_ref, cached) {
        (Some(pool_ref), Some(store)) => {
            match store.get(&ObjectRef::new(&pool_ref.name).within(namespace)) {
                Some(pool) => Some((*pool).clone()),
                None => pools.get_opt(&pool_ref.name).await?,
            }
        }
        (Some(pool_ref), None) => pools.get_opt(&pool_ref.name).await?,
        (None, Some(store)) => match store.state().into_iter().find(|p| {
            p.namespace().as_deref() == Some(namespace) && p.spec.template_ref.name == template_name
        }) {
            Some(pool) => Some((*pool).clone()),
            None => pools
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find(|p| p.spec.template_ref.name == template_name),
        },
        (None, None) => pools
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .find(|p| p.spec.template_ref.name == template_name),
    };
    Ok(match pool {
        Some(pool) if pool.spec.template_ref.name == template_name => Ok(pool),
        Some(pool) => Err(ColdReason::new(
            "PoolOfAnotherTemplate",
            format!(
                "pool {} keeps pods of template {}, not {template_name}",
                pool.name_any(),
                pool.spec.template_ref.name
            ),
        )),
        None => Err(ColdReason::new(
            "NoPool",
            match &sandbox.spec.pool_ref {
                Some(r) => format!("pool {} does not exist", r.name),
                None => format!("no pool of template {template_name} in this namespace"),
            },
        )),
    })
}

/// Why the sandbox cannot take a warm pod even from a full pool.
fn warm_blocker(
    sandbox: &AgentSandbox,
    template: &crate::api::AgentSandboxSpec,
) -> Option<ColdReason> {
    if template.workspace.is_some() {
        return Some(ColdReason::new(
            "TemplateHasWorkspace",
            "the template has a workspace, which pools do not keep",
        ));
    }
    if let Err(cold) = warm_args(template, &sandbox.spec) {
        return Some(cold);
    }
    let unwarmable = sandbox.spec.env.iter().flatten().find(|e| {
        e.value_from.as_ref().is_some_and(|from| {
            from.resource_field_ref.is_some()
                || from
                    .field_ref
                    .as_ref()
                    .is_some_and(|f| !FIELD_REFS.contains(&f.field_path.as_str()))
        })
    });
    unwarmable.map(|e| {
        ColdReason::new(
            "EnvNotWarmable",
            format!(
                "env {} uses a resourceFieldRef or a fieldRef other than {}: only a new pod can resolve it",
                e.name,
                FIELD_REFS.join(", ")
            ),
        )
    })
}

/// Downward API fields a handoff fills in.
const FIELD_REFS: &[&str] = &[
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "status.podIP",
];

/// Binds a ready pod of `pool` (current template) to the sandbox; its name, or None when
/// none could be taken. A pod already bound to the sandbox (a reconcile that stopped before
/// recording it) is taken again.
async fn take_pod(
    sandbox: &AgentSandbox,
    ctx: &Context,
    namespace: &str,
    pool: &AgentSandboxPool,
    template: &crate::api::AgentSandboxSpec,
) -> Result<Option<String>, Error> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let uid = sandbox.uid().unwrap_or_default();
    let bound = pods
        .list(&ListParams::default().labels(&format!("{LABEL_UID}={uid},{LABEL_TEMPLATE_HASH}")))
        .await?;
    if let Some(pod) = bound
        .items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
    {
        return Ok(Some(pod.name_any()));
    }
    let hash = template_hash(template);
    let pool_name = pool.name_any();
    let security = crate::controller::namespace_security_of(template, ctx, namespace).await?;
    // The cached pods first; if none could be taken (the copy lags behind a pod another claim
    // just took), the API server's list once.
    for from_cache in [true, false] {
        let listed: Vec<Pod> = match (&ctx.caches, from_cache) {
            (Some(caches), true) => caches
                .pool_pods
                .state()
                .into_iter()
                .filter(|p| {
                    p.namespace().as_deref() == Some(namespace)
                        && p.labels().get(LABEL_POOL) == Some(&pool_name)
                        && p.labels().get(LABEL_TEMPLATE_HASH) == Some(&hash)
                })
                .map(|p| (*p).clone())
                .collect(),
            (None, true) => continue,
            (_, false) => {
                pods.list(&ListParams::default().labels(&format!(
                    "{LABEL_POOL}={pool_name},{LABEL_TEMPLATE_HASH}={hash}"
                )))
                .await?
                .items
            }
        };
        if let Some(taken) =
            bind_first(sandbox, ctx, &pods, pool, template, security, listed).await?
        {
            return Ok(Some(taken));
        }
    }
    Ok(None)
}

/// How many pods one pass tries before giving up (each failure is a 409 from the API server).
const MAX_BIND_ATTEMPTS: usize = 16;

/// A claim's preference for a pod (FNV-1a of both names): stable per pair, spread across
/// claims.
fn preference(claim_uid: &str, pod: &str) -> u64 {
    crate::resources::fnv1a(format!("{claim_uid}\0{pod}").as_bytes())
}

/// Binds the first of `listed` that is a ready, operator-made pod of `pool` and that no other
/// claim took meanwhile.
async fn bind_first(
    sandbox: &AgentSandbox,
    ctx: &Context,
    pods: &Api<Pod>,
    pool: &AgentSandboxPool,
    template: &crate::api::AgentSandboxSpec,
    security: crate::resources::NamespaceSecurity,
    listed: Vec<Pod>,
) -> Result<Option<String>, Error> {
    let uid = sandbox.uid().unwrap_or_default();
    let mut candidates: Vec<Pod> = listed
        .into_iter()
        .filter(|p| {
            // Only the operator can have made a pod with the warm annotation (the admission
            // policy refuses agentsandbox.io/ annotations from anyone else): a look-alike pod
            // with the pool's labels and owner is never handed a claim's secrets.
            p.metadata.deletion_timestamp.is_none()
                && is_ready(p)
                && p.annotations()
                    .get(agentsandbox_contract::handoff::WARM_ANNOTATION)
                    .map(String::as_str)
                    == Some("true")
                && p.owner_references()
                    .iter()
                    .any(|o| o.controller == Some(true) && Some(&o.uid) == pool.uid().as_ref())
        })
        .collect();
    // Each claim its own order (rendezvous hashing on the claim's UID and the pod's name):
    // claims arriving together try different pods instead of all racing for the same one.
    candidates.sort_by_key(|p| preference(&uid, &p.name_any()));
    for pod in candidates.iter().take(MAX_BIND_ATTEMPTS) {
        let name = pod.name_any();
        let mut as_bound = sandbox.clone();
        as_bound.annotations_mut().extend(record(
            template,
            "",
            ClaimStart::Warm,
            None,
            None,
            Some(&name),
        ));
        let hash = desired_pod(&effective_sandbox(&as_bound), &ctx.settings, security)
            .annotations()
            .get(ANNOTATION_POD_HASH)
            .cloned()
            .unwrap_or_default();
        let owner = sandbox
            .controller_owner_ref(&())
            .expect("a stored sandbox has a name and UID");
        let patch = json!({
            "metadata": {
                "resourceVersion": pod.resource_version(),
                "labels": {
                    LABEL_POOL: null,
                    LABEL_NAME: sandbox.name_any(),
                    LABEL_UID: uid,
                },
                "annotations": { ANNOTATION_POD_HASH: hash },
                "ownerReferences": [owner],
            }
        });
        match pods
            .patch(&name, &merge_params(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(Some(name)),
            // Another claim took it first, or it is going away.
            Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// Hands the sandbox's env, args, egress and escape response to the warm pod it took.
pub async fn hand_off(
    sandbox: &AgentSandbox,
    pod: &Pod,
    ctx: &Context,
) -> Result<(), HandoffError> {
    let client = ctx.handoff.as_ref().ok_or_else(|| {
        HandoffError::Refused("the operator has no handoff key (AGENTSANDBOX_HANDOFF_KEY)".into())
    })?;
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    let agent_ip = node_agent_ip(ctx, &node).await?;
    let namespace = sandbox.namespace().unwrap_or_default();
    let template = template::recorded_template(sandbox).unwrap_or_default();
    let effective = effective_sandbox(sandbox);
    let env = resolve_env(
        sandbox.spec.env.as_deref().unwrap_or_default(),
        pod,
        ctx,
        &namespace,
    )
    .await?;
    let handoff = Handoff {
        pod_uid: pod.uid().unwrap_or_default(),
        expires: unix_now() + VALIDITY.as_secs() as i64,
        identity: PodIdentity {
            sandbox_name: sandbox.name_any(),
            sandbox_namespace: namespace,
            sandbox_uid: sandbox.uid().unwrap_or_default(),
        },
        on_escape: effective.spec.security.on_escape_attempt,
        egress: runtime_egress_policy(&effective),
        start: WarmStart {
            args: warm_args(&template, &sandbox.spec)
                .map_err(|c| HandoffError::Refused(c.message))?,
            env,
        },
    };
    client.deliver(&agent_ip, &handoff).await.map(|_| ())
}

async fn node_agent_ip(ctx: &Context, node: &str) -> Result<String, HandoffError> {
    if let Some(caches) = &ctx.caches {
        let cached = caches.node_agents.state().into_iter().find_map(|p| {
            let on_node = p.spec.as_ref()?.node_name.as_deref() == Some(node);
            (on_node && is_ready(&p)).then(|| p.status.as_ref()?.pod_ip.clone())?
        });
        if let Some(ip) = cached {
            return Ok(ip);
        }
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.settings.node_agent_namespace);
    let agents = pods
        .list(
            &ListParams::default()
                .labels(&ctx.settings.node_agent_selector)
                .fields(&format!("spec.nodeName={node}")),
        )
        .await
        .map_err(|e| HandoffError::Transport(e.to_string()))?;
    agents
        .items
        .into_iter()
        .filter(is_ready)
        .find_map(|p| p.status?.pod_ip)
        .ok_or_else(|| HandoffError::NoNodeAgent(node.to_string()))
}

/// The sandbox's own env entries as values (secrets and config maps read now; the pod's
/// downward API fields filled in). Never logged.
async fn resolve_env(
    env: &[EnvVar],
    pod: &Pod,
    ctx: &Context,
    namespace: &str,
) -> Result<Vec<(String, String)>, HandoffError> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let mut secret_cache: BTreeMap<String, Option<Secret>> = BTreeMap::new();
    let mut resolved = Vec::new();
    for entry in env {
        let Some(from) = &entry.value_from else {
            resolved.push((entry.name.clone(), entry.value.clone().unwrap_or_default()));
            continue;
        };
        let value = if let Some(key) = &from.secret_key_ref {
            if !secret_cache.contains_key(&key.name) {
                let secret = secrets
                    .get_opt(&key.name)
                    .await
                    .map_err(|e| HandoffError::Transport(e.to_string()))?;
                secret_cache.insert(key.name.clone(), secret);
            }
            secret_cache[&key.name]
                .as_ref()
                .and_then(|s| s.data.as_ref()?.get(&key.key))
                .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
                .ok_or((
                    key.optional == Some(true),
                    format!("secret {} has no key {}", key.name, key.key),
                ))
        } else if let Some(key) = &from.config_map_key_ref {
            let map = config_maps
                .get_opt(&key.name)
                .await
                .map_err(|e| HandoffError::Transport(e.to_string()))?;
            map.and_then(|m| m.data?.get(&key.key).cloned()).ok_or((
                key.optional == Some(true),
                format!("config map {} has no key {}", key.name, key.key),
            ))
        } else if let Some(field) = &from.field_ref {
            let status = pod.status.as_ref();
            Ok(match field.field_path.as_str() {
                "metadata.name" => pod.name_any(),
                "metadata.namespace" => namespace.to_string(),
                "metadata.uid" => pod.uid().unwrap_or_default(),
                "spec.nodeName" => pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default(),
                "status.podIP" => status.and_then(|s| s.pod_ip.clone()).unwrap_or_default(),
                other => {
                    return Err(HandoffError::Refused(format!(
                        "env {}: fieldRef {other} is not filled in by a handoff",
                        entry.name
                    )))
                }
            })
        } else {
            return Err(HandoffError::Refused(format!(
                "env {}: this valueFrom is not filled in by a handoff",
                entry.name
            )));
        };
        match value {
            Ok(value) => resolved.push((entry.name.clone(), value)),
            Err((true, _)) => {}
            Err((false, missing)) => {
                return Err(HandoffError::Refused(format!(
                    "env {}: {missing}",
                    entry.name
                )))
            }
        }
    }
    Ok(resolved)
}
