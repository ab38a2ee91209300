//! The node agent's escape-attempt edge: the telemetry gRPC server the shims stream to (a
//! root-only unix socket), and the writer that turns the aggregated reports into each
//! sandbox's `status.security`, its `EscapeAttempted` condition, one aggregated Warning Event
//! and Prometheus counters. The aggregation itself is pure (`escapes`).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentsandbox_telemetry::v1 as wire;
use agentsandbox_telemetry::v1::telemetry_server::{Telemetry, TelemetryServer};
use futures::Stream;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Client, ResourceExt};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::{mpsc, Notify};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

use crate::escapes::{
    escape_condition, event_message, merge_security, to_api_attempt, PodTotals, ESCAPE_ATTEMPTED,
    EVENT_REASON, RECENT_ATTEMPTS,
};
use crate::ownership::{controlling_sandbox, relation, Relation};
use agentsandbox_operator::api::{AgentSandbox, EscapeAttempt, EscapeResponse};

/// Field manager of `status.security` and the EscapeAttempted condition (apart from the
/// activity reporter's, so neither apply removes the other's fields).
pub const FIELD_MANAGER: &str = "agentsandbox-node-escapes";
/// Writes of one pod's reports: a burst of WRITE_BURST at once (a first attempt is written
/// without delay), then WRITES_PER_SECOND during a flood.
pub const WRITE_BURST: f64 = 3.0;
pub const WRITES_PER_SECOND: f64 = 4.0;
/// How long reports of a pod the agent cannot find are kept before they are let go.
const UNKNOWN_POD_GRACE: Duration = Duration::from_secs(15);

type AckSender = mpsc::Sender<Result<wire::ReportAck, Status>>;

/// One pod's reports since the agent started.
struct PodEntry {
    totals: PodTotals,
    /// Attempts received since the last status write, oldest first (bounded).
    fresh: VecDeque<EscapeAttempt>,
    ingested: u64,
    written: u64,
    /// Acknowledgements owed once the report they answer is written.
    acks: Vec<(u64, wire::ReportAck, AckSender)>,
    first_seen: Instant,
    /// Token bucket of writes.
    tokens: f64,
    refilled: Instant,
}

impl PodEntry {
    /// Takes a write token if one is there.
    fn take_token(&mut self) -> bool {
        let now = Instant::now();
        let earned = now.duration_since(self.refilled).as_secs_f64() * WRITES_PER_SECOND;
        self.tokens = (self.tokens + earned).min(WRITE_BURST);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Default)]
struct Aggregator {
    pods: HashMap<String, PodEntry>,
}

/// Shared by the gRPC streams and the writer.
#[derive(Clone)]
pub struct EscapeReporter {
    aggregator: Arc<Mutex<Aggregator>>,
    wake: Arc<Notify>,
    metrics: EscapeMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabels {
    namespace: String,
    sandbox: String,
    category: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SandboxLabels {
    namespace: String,
    sandbox: String,
}

/// `agentsandbox_escape_attempts_total{namespace,sandbox,category}` and
/// `agentsandbox_escape_details_dropped_total{namespace,sandbox}`: the sandbox's totals as
/// written to its status.
#[derive(Clone, Default)]
pub struct EscapeMetrics {
    attempts: Family<CategoryLabels, Counter>,
    dropped: Family<SandboxLabels, Counter>,
}

impl EscapeMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "escape_attempts",
            "Escape attempts the runtime denied, by sandbox and category",
            self.attempts.clone(),
        );
        registry.register(
            "escape_details_dropped",
            "Escape attempts whose details were dropped (always counted)",
            self.dropped.clone(),
        );
    }

    fn raise(counter: &Counter, to: i64) {
        let to = u64::try_from(to).unwrap_or_default();
        let now = counter.get();
        if to > now {
            counter.inc_by(to - now);
        }
    }
}

impl Default for EscapeReporter {
    fn default() -> Self {
        EscapeReporter {
            aggregator: Arc::new(Mutex::new(Aggregator::default())),
            wake: Arc::new(Notify::new()),
            metrics: EscapeMetrics::default(),
        }
    }
}

impl EscapeReporter {
    pub fn metrics(&self) -> &EscapeMetrics {
        &self.metrics
    }

    fn ingest(&self, report: wire::EscapeReport, acks: &AckSender) {
        let Some(pod) = report.pod.as_ref().filter(|p| !p.pod_uid.is_empty()) else {
            debug!("telemetry report without a pod uid ignored");
            return;
        };
        let mut aggregator = self.aggregator.lock().expect("lock");
        let entry = aggregator
            .pods
            .entry(pod.pod_uid.clone())
            .or_insert_with(|| PodEntry {
                totals: PodTotals::default(),
                fresh: VecDeque::new(),
                ingested: 0,
                written: 0,
                acks: Vec::new(),
                first_seen: Instant::now(),
                tokens: WRITE_BURST,
                refilled: Instant::now(),
            });
        entry.totals.absorb(&report);
        for attempt in &report.attempts {
            entry.fresh.push_back(to_api_attempt(attempt));
            if entry.fresh.len() > RECENT_ATTEMPTS {
                entry.fresh.pop_front();
            }
        }
        entry.ingested += 1;
        let ack = wire::ReportAck {
            report_seq: report.report_seq,
            attempts_through: report.attempts.iter().map(|a| a.seq).max().unwrap_or(0),
        };
        entry.acks.push((entry.ingested, ack, acks.clone()));
        drop(aggregator);
        self.wake.notify_one();
    }

    /// Sends the acknowledgements of everything written for `pod_uid`.
    fn settle(&self, pod_uid: &str, written: u64, forget: bool) {
        let mut aggregator = self.aggregator.lock().expect("lock");
        let Some(entry) = aggregator.pods.get_mut(pod_uid) else {
            return;
        };
        entry.written = entry.written.max(written);
        let (ready, owed): (Vec<_>, Vec<_>) = entry
            .acks
            .drain(..)
            .partition(|(generation, _, _)| *generation <= written);
        entry.acks = owed;
        for (_, ack, sender) in ready {
            // A full or closed stream: the shim resends on its next connection.
            let _ = sender.try_send(Ok(ack));
        }
        if forget {
            aggregator.pods.remove(pod_uid);
        }
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct TelemetryService {
    reporter: EscapeReporter,
}

impl TelemetryService {
    pub fn new(reporter: EscapeReporter) -> TelemetryService {
        TelemetryService { reporter }
    }
}

#[tonic::async_trait]
impl Telemetry for TelemetryService {
    type ReportStream = Pin<Box<dyn Stream<Item = Result<wire::ReportAck, Status>> + Send>>;

    async fn report(
        &self,
        request: Request<Streaming<wire::EscapeReport>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let reporter = self.reporter.clone();
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(report)) => reporter.ingest(report, &tx),
                    Ok(None) => break,
                    Err(status) => {
                        debug!(error = %status, "telemetry stream ended");
                        break;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Binds the telemetry socket: its directory and the socket are root's only, and every
/// accepted connection's peer must be uid 0 (checked with SO_PEERCRED) or it is closed.
pub fn bind_socket(path: &Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepted connections whose peer is root; others are closed at once (and logged).
pub fn root_peers(
    listener: tokio::net::UnixListener,
) -> impl Stream<Item = std::io::Result<tokio::net::UnixStream>> {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => match stream.peer_cred() {
                    Ok(cred) if cred.uid() == 0 => return Some((Ok(stream), listener)),
                    Ok(cred) => {
                        warn!(
                            uid = cred.uid(),
                            pid = ?cred.pid(),
                            "telemetry connection refused: only root (the runtime shim) may report"
                        )
                    }
                    Err(e) => {
                        warn!(error = %e, "telemetry connection without peer credentials refused")
                    }
                },
                Err(e) => return Some((Err(e), listener)),
            }
        }
    })
}

/// Serves the telemetry socket until the process ends.
pub async fn serve(reporter: EscapeReporter, socket: PathBuf) -> anyhow::Result<()> {
    let listener = bind_socket(&socket)?;
    info!(socket = %socket.display(), "telemetry socket listening (root only)");
    tonic::transport::Server::builder()
        .add_service(TelemetryServer::new(TelemetryService { reporter }))
        .serve_with_incoming(root_peers(listener))
        .await?;
    Ok(())
}

/// Writes the aggregated reports to the API until the process ends, rate-limited per pod
/// ([`WRITE_BURST`], [`WRITES_PER_SECOND`]); the last report is always written.
pub async fn run_writer(reporter: EscapeReporter, client: Client, pods: Store<Pod>, node: String) {
    let mut ticker = tokio::time::interval(Duration::from_millis(20));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // The ticker only matters while something waits for a write token (or for its pod to
        // appear); otherwise the agent sleeps until a report arrives (a wake sent meanwhile is
        // kept by Notify, not lost).
        let pending = reporter
            .aggregator
            .lock()
            .expect("lock")
            .pods
            .values()
            .any(|e| e.ingested > e.written);
        if pending {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = reporter.wake.notified() => {}
            }
        } else {
            reporter.wake.notified().await;
        }
        let due: Vec<(String, PodTotals, VecDeque<EscapeAttempt>, u64, Instant)> = {
            let mut aggregator = reporter.aggregator.lock().expect("lock");
            aggregator
                .pods
                .iter_mut()
                .filter(|(_, e)| e.ingested > e.written)
                .filter_map(|(uid, e)| {
                    e.take_token().then(|| {
                        (
                            uid.clone(),
                            e.totals.clone(),
                            std::mem::take(&mut e.fresh),
                            e.ingested,
                            e.first_seen,
                        )
                    })
                })
                .collect()
        };
        for (uid, totals, fresh, generation, first_seen) in due {
            let pod = pods
                .state()
                .into_iter()
                .find(|p| p.uid().as_deref() == Some(&uid));
            let Some(pod) = pod else {
                if first_seen.elapsed() > UNKNOWN_POD_GRACE {
                    debug!(pod_uid = %uid, "reports of a pod that is not a sandbox on this node let go");
                    reporter.settle(&uid, generation, true);
                } else {
                    restore_fresh(&reporter, &uid, fresh);
                }
                continue;
            };
            match write_sandbox(&reporter, &client, &pod, &uid, &totals, &fresh, &node).await {
                Ok(()) => reporter.settle(&uid, generation, false),
                Err(e) => {
                    warn!(pod = %pod.name_any(), error = %e, "writing escape attempts failed; retrying");
                    // Retried when the pod's next write token comes.
                    restore_fresh(&reporter, &uid, fresh);
                }
            }
        }
    }
}

fn restore_fresh(reporter: &EscapeReporter, uid: &str, fresh: VecDeque<EscapeAttempt>) {
    if let Some(entry) = reporter.aggregator.lock().expect("lock").pods.get_mut(uid) {
        let newer = std::mem::replace(&mut entry.fresh, fresh);
        entry.fresh.extend(newer);
        while entry.fresh.len() > RECENT_ATTEMPTS {
            entry.fresh.pop_front();
        }
    }
}

async fn write_sandbox(
    reporter: &EscapeReporter,
    client: &Client,
    pod: &Pod,
    pod_uid: &str,
    totals: &PodTotals,
    fresh: &VecDeque<EscapeAttempt>,
    node: &str,
) -> Result<(), kube::Error> {
    // Only the pod's controller owner reference names its sandbox (a plain pod's labels and
    // annotations are its own to choose).
    let Some(reference) = controlling_sandbox(pod) else {
        debug!(pod = %pod.name_any(), "reports of a pod no AgentSandbox controls let go");
        return Ok(());
    };
    let (name, namespace) = (&reference.name, &reference.namespace);
    let api: Api<AgentSandbox> = Api::namespaced(client.clone(), namespace);
    // The status as it is now (not a cache): the totals are computed from it.
    let Some(sandbox) = api.get_opt(name).await? else {
        return Ok(());
    };
    let relation = relation(&sandbox, &reference, pod);
    if relation == Relation::Stranger {
        warn!(pod = %pod.name_any(), sandbox = %name, namespace = %namespace, "a pod's owner reference does not match the sandbox's UID: its reports are not applied");
        return Ok(());
    }
    // A pod other than the sandbox's current one keeps its counts but never records (or
    // lifts) the sandbox's response.
    let totals = match relation {
        Relation::Current => totals.clone(),
        _ => PodTotals {
            response: None,
            ..totals.clone()
        },
    };
    let now = Time(jiff::Timestamp::now());
    let existing = sandbox.status.as_ref().and_then(|s| s.security.as_ref());
    let security = merge_security(existing, pod_uid, &totals, fresh, &now);
    let condition = escape_condition(
        &security,
        sandbox.condition(ESCAPE_ATTEMPTED),
        sandbox.metadata.generation,
        &now,
    );
    let patch = json!({
        "apiVersion": "agentsandbox.io/v1alpha1",
        "kind": "AgentSandbox",
        "status": {"security": security, "conditions": [condition]},
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;

    let labels = |category: &str| CategoryLabels {
        namespace: namespace.clone(),
        sandbox: name.clone(),
        category: category.to_string(),
    };
    for (category, count) in security.attempts_by_category.iter().flatten() {
        EscapeMetrics::raise(
            &reporter.metrics.attempts.get_or_create(&labels(category)),
            *count,
        );
    }
    EscapeMetrics::raise(
        &reporter.metrics.dropped.get_or_create(&SandboxLabels {
            namespace: namespace.clone(),
            sandbox: name.clone(),
        }),
        security.dropped_events,
    );

    // One Event per sandbox, its count the sandbox's total: a flood is one line in
    // `kubectl describe`, and it agrees with the status and the metric.
    let sandbox_uid = sandbox.metadata.uid.clone().unwrap_or_default();
    let event_name = format!(
        "{name}.escape-attempt.{}",
        sandbox_uid.chars().take(8).collect::<String>()
    );
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name, "namespace": namespace},
        "involvedObject": {
            "apiVersion": "agentsandbox.io/v1alpha1",
            "kind": "AgentSandbox",
            "name": name,
            "namespace": namespace,
            "uid": sandbox_uid,
        },
        "type": "Warning",
        "reason": EVENT_REASON,
        "action": security
            .response
            .as_ref()
            .map_or(EscapeResponse::Deny, |r| r.action.requested())
            .as_str(),
        "message": event_message(&security),
        "count": security.escape_attempts,
        "firstTimestamp": condition.last_transition_time,
        "lastTimestamp": now,
        "source": {"component": "agentsandbox-node", "host": node},
        "reportingComponent": "agentsandbox.io/node",
        "reportingInstance": node,
    });
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), namespace);
    if let Err(e) = events
        .patch(
            &event_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&event),
        )
        .await
    {
        // The status is written; an Event is best effort.
        warn!(sandbox = %name, namespace = %namespace, error = %e, "publishing the EscapeAttempt event failed");
    }
    debug!(sandbox = %name, namespace = %namespace, attempts = security.escape_attempts, "escape attempts written");
    Ok(())
}
