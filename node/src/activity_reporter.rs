//! The node agent's activity reporter: samples every sandbox pod on this node (CPU of its
//! cgroup, TCP/UDP traffic of its network namespace) and reports when it was last active in the
//! sandbox's `status.activity`, under its own field manager.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};

use kube::{Client, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::activity_sampling::{
    parse_cpu_stat, parse_cpuacct_usage, parse_snmp, parse_snmp6, pod_cgroup_candidates,
    was_active, Sample,
};
use crate::ownership::{controlling_sandbox, relation, Relation, SandboxRef};
use agentsandbox_operator::api::AgentSandbox;
use agentsandbox_operator::resources::{LABEL_MANAGED_BY, MANAGED_BY};

pub const FIELD_MANAGER: &str = "agentsandbox-node";

#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub node_name: String,
    /// The host's cgroup hierarchy as mounted in the agent's container.
    pub cgroup_root: PathBuf,
    /// A /proc that shows the host's processes (the agent runs with hostPID).
    pub proc_root: PathBuf,
    pub sample_interval: Duration,
    pub report_period: Duration,
}

/// Reads the current counters of the pod with `uid`, if its cgroup is found.
pub fn read_sample(settings: &NodeSettings, uid: &str) -> Option<Sample> {
    let (dir, v2) = pod_cgroup_candidates(&settings.cgroup_root, uid)
        .into_iter()
        .find(|(dir, _)| dir.is_dir())?;
    let cpu_ns = if v2 {
        parse_cpu_stat(&std::fs::read_to_string(dir.join("cpu.stat")).ok()?)?
    } else {
        parse_cpuacct_usage(&std::fs::read_to_string(dir.join("cpuacct.usage")).ok()?)?
    };
    let net = settings
        .proc_root
        .join(first_pid(&dir)?.to_string())
        .join("net");
    let snmp = parse_snmp(&std::fs::read_to_string(net.join("snmp")).ok()?)?;
    let snmp6 = std::fs::read_to_string(net.join("snmp6"))
        .map(|t| parse_snmp6(&t))
        .unwrap_or(0);
    Some(Sample {
        cpu_ns,
        net_packets: snmp + snmp6,
    })
}

/// Any process of the pod (its containers' cgroups are children of the pod's): they all share
/// the pod's network namespace.
fn first_pid(dir: &Path) -> Option<u32> {
    let own = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    if let Some(pid) = own.lines().find_map(|l| l.trim().parse().ok()) {
        return Some(pid);
    }
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .find_map(|e| first_pid(&e.path()))
}

struct Tracked {
    sandbox: SandboxRef,
    previous: Sample,
    last_active: Time,
    last_report: Option<tokio::time::Instant>,
}

/// The sandbox pods on this node, as a store kept current by a watch (run the returned
/// future).
pub fn sandbox_pods(
    client: &Client,
    node_name: &str,
) -> (
    Store<Pod>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let pods: Api<Pod> = Api::all(client.clone());
    let config = watcher::Config::default()
        .fields(&format!("spec.nodeName={node_name}"))
        .labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    let (store, writer) = reflector::store();
    let reflector = reflector::reflector(writer, watcher(pods, config))
        .default_backoff()
        .touched_objects()
        .for_each(|_| futures::future::ready(()));
    (store, reflector)
}

/// Runs until the process ends.
pub async fn run_activity_reporter(client: Client, settings: NodeSettings, store: Store<Pod>) {
    info!(node = %settings.node_name, interval = ?settings.sample_interval, "sampling sandbox activity");
    let mut tracked: HashMap<String, Tracked> = HashMap::new();
    let mut ticker = tokio::time::interval(settings.sample_interval);
    loop {
        ticker.tick().await;
        sample_once(&client, &settings, &store, &mut tracked).await;
    }
}

async fn sample_once(
    client: &Client,
    settings: &NodeSettings,
    store: &Store<Pod>,
    tracked: &mut HashMap<String, Tracked>,
) {
    let now = Time(jiff::Timestamp::now());
    let mut seen = Vec::new();
    for pod in store.state() {
        let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        let (Some(uid), true) = (pod.uid(), running) else {
            continue;
        };
        // Only the controller owner reference names the sandbox (see `ownership`).
        let Some(reference) = controlling_sandbox(&pod) else {
            continue;
        };
        let Some(sample) = read_sample(settings, &uid) else {
            debug!(pod = %pod.name_any(), "no cgroup or network counters found yet");
            continue;
        };
        seen.push(uid.clone());
        let entry = tracked.entry(uid).or_insert_with(|| Tracked {
            sandbox: reference,
            previous: sample,
            // A pod first seen counts as active now: starting is activity.
            last_active: now.clone(),
            last_report: None,
        });
        if was_active(entry.previous, sample) {
            entry.last_active = now.clone();
        }
        entry.previous = sample;
        let due = entry
            .last_report
            .is_none_or(|t| t.elapsed() >= settings.report_period);
        if due {
            let api: Api<AgentSandbox> = Api::namespaced(client.clone(), &entry.sandbox.namespace);
            // Activity decides idle suspension: only the sandbox's current pod reports it.
            match api.get_opt(&entry.sandbox.name).await {
                Ok(Some(sandbox))
                    if relation(&sandbox, &entry.sandbox, &pod) == Relation::Current => {}
                Ok(_) => {
                    debug!(pod = %pod.name_any(), sandbox = %entry.sandbox.name, "not the sandbox's current pod: no activity reported");
                    entry.last_report = Some(tokio::time::Instant::now());
                    continue;
                }
                Err(e) => {
                    warn!(sandbox = %entry.sandbox.name, namespace = %entry.sandbox.namespace, error = %e, "reading the sandbox failed");
                    continue;
                }
            }
            let patch = json!({
                "apiVersion": "agentsandbox.io/v1alpha1",
                "kind": "AgentSandbox",
                "status": {"activity": {"lastActiveTime": entry.last_active, "lastSampleTime": now}},
            });
            match api
                .patch_status(
                    &entry.sandbox.name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                Ok(_) => entry.last_report = Some(tokio::time::Instant::now()),
                Err(e) => {
                    warn!(sandbox = %entry.sandbox.name, namespace = %entry.sandbox.namespace, error = %e, "reporting activity failed")
                }
            }
        }
    }
    tracked.retain(|uid, _| seen.contains(uid));
}
