//! Prometheus metrics of the operator: reconciles, errors by kind, reconcile durations and
//! sandboxes by phase (counted from the controller's cache at scrape time).

use std::time::Duration;

use kube::runtime::reflector::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::api::{AgentSandbox, Phase};
use crate::controller::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    pub phase: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClaimLabels {
    /// warm or cold.
    pub start: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    pub namespace: String,
    pub pool: String,
}

pub struct Metrics {
    registry: Registry,
    claim_latency: Family<ClaimLabels, Histogram>,
    pool_pods: Family<PoolLabels, Gauge>,
    pool_ready_pods: Family<PoolLabels, Gauge>,
    reconciles: Counter,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Histogram,
    sandboxes: Family<PhaseLabels, Gauge>,
    resident_memory: Gauge,
    cpu_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("agentsandbox_operator");
        let reconciles = Counter::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration =
            Histogram::new([0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]);
        let sandboxes = Family::<PhaseLabels, Gauge>::default();
        registry.register("reconciles", "Reconciliations run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciliations that failed, by kind of error",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time one reconciliation took",
            reconcile_duration.clone(),
        );
        registry.register("sandboxes", "AgentSandboxes by phase", sandboxes.clone());
        let resident_memory = Gauge::default();
        registry.register(
            "resident_memory_bytes",
            "Resident memory of the operator process",
            resident_memory.clone(),
        );
        let cpu_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "cpu_seconds",
            "CPU time (user + system) the operator process has used",
            cpu_seconds.clone(),
        );
        let claim_latency = Family::<ClaimLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
        });
        registry.register(
            "claim_latency_seconds",
            "Time from a templated AgentSandbox's creation to Ready, by start (warm: a pool pod; cold: a new pod)",
            claim_latency.clone(),
        );
        let pool_pods = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_pods",
            "Unclaimed pods of the current template, by pool",
            pool_pods.clone(),
        );
        let pool_ready_pods = Family::<PoolLabels, Gauge>::default();
        registry.register(
            "pool_ready_pods",
            "Unclaimed ready pods (claimable now), by pool",
            pool_ready_pods.clone(),
        );
        Metrics {
            registry,
            claim_latency,
            pool_pods,
            pool_ready_pods,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            sandboxes,
            resident_memory,
            cpu_seconds,
        }
    }
}

impl Metrics {
    pub fn observe_reconcile(&self, took: Duration, error: Option<&Error>) {
        self.reconciles.inc();
        self.reconcile_duration.observe(took.as_secs_f64());
        if let Some(error) = error {
            self.reconcile_errors
                .get_or_create(&ErrorLabels {
                    error: error.metric_label(),
                })
                .inc();
        }
    }

    /// A templated sandbox became Ready `took` after its creation.
    pub fn observe_claim(&self, warm: bool, took: Duration) {
        self.claim_latency
            .get_or_create(&ClaimLabels {
                start: if warm { "warm" } else { "cold" },
            })
            .observe(took.as_secs_f64());
    }

    pub fn observe_pool(&self, namespace: &str, pool: &str, pods: i64, ready: i64) {
        let labels = PoolLabels {
            namespace: namespace.to_string(),
            pool: pool.to_string(),
        };
        self.pool_pods.get_or_create(&labels).set(pods);
        self.pool_ready_pods.get_or_create(&labels).set(ready);
    }

    /// Recounts sandboxes by phase (sandboxes with no status yet count as Pending).
    pub fn count_phases(&self, store: &Store<AgentSandbox>) {
        let mut counts = [0i64; Phase::ALL.len()];
        for sandbox in store.state() {
            let phase = sandbox
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .unwrap_or(Phase::Pending);
            let index = Phase::ALL.iter().position(|p| *p == phase).unwrap_or(0);
            counts[index] += 1;
        }
        for (phase, count) in Phase::ALL.iter().zip(counts) {
            self.sandboxes
                .get_or_create(&PhaseLabels {
                    phase: phase.as_str(),
                })
                .set(count);
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        if let Some(bytes) = resident_memory_bytes() {
            self.resident_memory.set(bytes);
        }
        if let Some(seconds) = cpu_seconds() {
            self.cpu_seconds.set(seconds);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// utime + stime of this process, from /proc/self/stat (in clock ticks of 1/100 s: the value
/// of sysconf(_SC_CLK_TCK) on every Linux architecture this runs on).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_seconds_of_stat(&stat)
}

/// utime + stime (fields 14 and 15) of a /proc/<pid>/stat line, in seconds. The command name
/// (field 2) may hold spaces and parentheses: fields are counted after its closing one.
pub fn cpu_seconds_of_stat(stat: &str) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// VmRSS of this process, from /proc/self/status.
fn resident_memory_bytes() -> Option<i64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: i64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}
