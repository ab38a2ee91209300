//! Escape-attempt telemetry from the shim to the node agent (`proto/.../telemetry.proto`).
//!
//! The seccomp listener records every denied attempt here (after answering EPERM). The
//! counts are exact and cumulative and every report carries them whole, so a report lost with
//! a restarting node agent is repaired by the next one. Details go into a bounded buffer until
//! the node agent acknowledges them; when it is away long enough for the buffer to fill, the
//! oldest details are dropped and counted.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentsandbox_telemetry::v1::telemetry_client::TelemetryClient;
use agentsandbox_telemetry::v1::{
    Action, CategoryCount, EscapeAttempt, EscapeReport, PodRef, ReportAck,
};
use tokio::sync::Notify;

/// Details kept while the node agent has not acknowledged them.
pub const DETAIL_CAPACITY: usize = 1024;
/// Details per report, so one message stays small.
const DETAILS_PER_REPORT: usize = 256;

/// The pure part: counts, the detail buffer and the acknowledgement bookkeeping.
#[derive(Debug)]
pub struct TelemetryBuffer {
    capacity: usize,
    total: u64,
    by_category: BTreeMap<String, u64>,
    dropped: u64,
    response: Action,
    details: VecDeque<EscapeAttempt>,
    next_seq: u64,
    /// Details with seq <= this went out on the current connection.
    sent_through: u64,
    report_seq: u64,
    /// (report seq, total it carried) of reports not yet acknowledged.
    in_flight: VecDeque<(u64, u64, Action)>,
    acked_total: u64,
    acked_response: Action,
    /// What the last report sent carried, to skip reports that would say nothing new.
    last_sent: Option<(u64, u64, Action)>,
}

impl TelemetryBuffer {
    pub fn new(capacity: usize) -> TelemetryBuffer {
        TelemetryBuffer {
            capacity,
            total: 0,
            by_category: BTreeMap::new(),
            dropped: 0,
            response: Action::Denied,
            details: VecDeque::new(),
            next_seq: 1,
            sent_through: 0,
            report_seq: 0,
            in_flight: VecDeque::new(),
            acked_total: 0,
            acked_response: Action::Denied,
            last_sent: None,
        }
    }

    /// Counts one attempt and keeps its detail (dropping the oldest when full). Returns its
    /// sequence number.
    pub fn record(&mut self, mut attempt: EscapeAttempt) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.total += 1;
        *self
            .by_category
            .entry(attempt.category.clone())
            .or_default() += 1;
        if Action::try_from(attempt.action).unwrap_or(Action::Denied) > self.response {
            self.response = Action::try_from(attempt.action).unwrap_or(Action::Denied);
        }
        attempt.seq = seq;
        if self.details.len() >= self.capacity {
            self.details.pop_front();
            self.dropped += 1;
        }
        self.details.push_back(attempt);
        seq
    }

    /// Counts `count` attempts of `category` whose details were never kept (the listener's
    /// queue was full): the counts stay exact, the details are counted as dropped.
    pub fn record_uncounted_details(&mut self, category: &str, count: u64, action: Action) {
        self.total += count;
        *self.by_category.entry(category.to_string()).or_default() += count;
        self.dropped += count;
        if action > self.response {
            self.response = action;
        }
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The next report for `pod`, or None when it would tell nothing new.
    pub fn next_report(&mut self, pod: &PodRef) -> Option<EscapeReport> {
        let unsent: Vec<EscapeAttempt> = self
            .details
            .iter()
            .filter(|d| d.seq > self.sent_through)
            .take(DETAILS_PER_REPORT)
            .cloned()
            .collect();
        let summary = (self.total, self.dropped, self.response);
        if unsent.is_empty() && self.last_sent == Some(summary) {
            return None;
        }
        if let Some(last) = unsent.last() {
            self.sent_through = last.seq;
        }
        self.report_seq += 1;
        self.last_sent = Some(summary);
        self.in_flight
            .push_back((self.report_seq, self.total, self.response));
        Some(EscapeReport {
            pod: Some(pod.clone()),
            report_seq: self.report_seq,
            total: self.total,
            by_category: self
                .by_category
                .iter()
                .map(|(category, count)| CategoryCount {
                    category: category.clone(),
                    count: *count,
                })
                .collect(),
            dropped_details: self.dropped,
            attempts: unsent,
            response: self.response as i32,
        })
    }

    /// The node agent took a report into account.
    pub fn acknowledge(&mut self, ack: &ReportAck) {
        self.details.retain(|d| d.seq > ack.attempts_through);
        while let Some(&(seq, total, response)) = self.in_flight.front() {
            if seq > ack.report_seq {
                break;
            }
            self.acked_total = self.acked_total.max(total);
            self.acked_response = self.acked_response.max(response);
            self.in_flight.pop_front();
        }
    }

    /// A new connection: everything not acknowledged goes out again.
    pub fn reconnected(&mut self) {
        self.sent_through = 0;
        self.in_flight.clear();
        self.last_sent = None;
    }

    /// Whether the node agent has taken every count and detail.
    pub fn settled(&self) -> bool {
        self.acked_total == self.total
            && self.acked_response == self.response
            && self.details.is_empty()
    }
}

/// The shim's telemetry: the buffer behind a lock (the seccomp listener's threads record into
/// it) and the task that streams it to the node agent.
pub struct Telemetry {
    buffer: Mutex<TelemetryBuffer>,
    pod: Mutex<Option<PodRef>>,
    changed: Notify,
    settled: Notify,
    socket: PathBuf,
}

impl Telemetry {
    pub fn new(socket: PathBuf) -> Arc<Telemetry> {
        Arc::new(Telemetry {
            buffer: Mutex::new(TelemetryBuffer::new(DETAIL_CAPACITY)),
            pod: Mutex::new(None),
            changed: Notify::new(),
            settled: Notify::new(),
            socket,
        })
    }

    /// Which pod this shim serves (from the pod sandbox container's annotations).
    pub fn set_pod(&self, pod: PodRef) {
        *self.pod.lock().expect("lock") = Some(pod);
        self.changed.notify_one();
    }

    /// The sandbox that claimed this (warm) pod, for the reports from now on.
    pub fn set_sandbox_uid(&self, sandbox_uid: &str) {
        if let Some(pod) = self.pod.lock().expect("lock").as_mut() {
            pod.sandbox_uid = sandbox_uid.to_string();
        }
        self.changed.notify_one();
    }

    pub fn record(&self, attempt: EscapeAttempt) -> u64 {
        let seq = self.buffer.lock().expect("lock").record(attempt);
        self.changed.notify_one();
        seq
    }

    /// See [`TelemetryBuffer::record_uncounted_details`].
    pub fn record_uncounted_details(&self, category: &str, count: u64, action: Action) {
        self.buffer
            .lock()
            .expect("lock")
            .record_uncounted_details(category, count, action);
        self.changed.notify_one();
    }

    pub fn total(&self) -> u64 {
        self.buffer.lock().expect("lock").total()
    }

    /// Waits until the node agent has everything, or `deadline` passes. Returns whether it
    /// has.
    pub async fn flush(&self, deadline: Duration) -> bool {
        let wait = async {
            loop {
                let settled = self.settled.notified();
                if self.buffer.lock().expect("lock").settled() {
                    return;
                }
                self.changed.notify_one();
                settled.await;
            }
        };
        tokio::time::timeout(deadline, wait).await.is_ok()
    }

    /// Streams reports to the node agent for the shim's lifetime, reconnecting with backoff.
    /// Connects only once there is something to report.
    pub async fn run(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let pending = {
                let pod = self.pod.lock().expect("lock").clone();
                let buffer = self.buffer.lock().expect("lock");
                pod.filter(|_| buffer.total() > 0 && !buffer.settled())
            };
            let Some(pod) = pending else {
                self.changed.notified().await;
                continue;
            };
            match self.stream(&pod).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(err) => {
                    tracing::debug!(error = %err, socket = %self.socket.display(), "telemetry stream ended");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// One connection: sends whatever changed, takes acknowledgements, until the stream ends.
    async fn stream(&self, pod: &PodRef) -> anyhow::Result<()> {
        let socket = self.socket.clone();
        let channel = tonic::transport::Endpoint::try_from("http://agentsandbox-node")?
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(socket).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await?;
        let mut client = TelemetryClient::new(channel);
        let (tx, rx) = tokio::sync::mpsc::channel::<EscapeReport>(16);
        self.buffer.lock().expect("lock").reconnected();
        let mut acks = client
            .report(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await?
            .into_inner();
        tracing::info!(socket = %self.socket.display(), "telemetry connected to the node agent");
        loop {
            // Send everything there is before waiting again.
            loop {
                let report = self.buffer.lock().expect("lock").next_report(pod);
                match report {
                    Some(report) => tx.send(report).await?,
                    None => break,
                }
            }
            tokio::select! {
                _ = self.changed.notified() => {}
                ack = acks.message() => {
                    let Some(ack) = ack? else {
                        anyhow::bail!("the node agent closed the stream");
                    };
                    let settled = {
                        let mut buffer = self.buffer.lock().expect("lock");
                        buffer.acknowledge(&ack);
                        buffer.settled()
                    };
                    if settled {
                        self.settled.notify_waiters();
                    }
                }
            }
        }
    }
}

/// A short, safe description of a notified call's arguments: flag words and small integers
/// only (pointers are the sandbox's memory and are never followed).
pub fn summarize(syscall: &str, args: &[u64; 6]) -> String {
    const NAMESPACE_FLAGS: [(u64, &str); 8] = [
        (0x0002_0000, "CLONE_NEWNS"),
        (0x0200_0000, "CLONE_NEWCGROUP"),
        (0x0400_0000, "CLONE_NEWUTS"),
        (0x0800_0000, "CLONE_NEWIPC"),
        (0x1000_0000, "CLONE_NEWUSER"),
        (0x2000_0000, "CLONE_NEWPID"),
        (0x4000_0000, "CLONE_NEWNET"),
        (0x0000_0080, "CLONE_NEWTIME"),
    ];
    let namespace_flags = |word: u64| {
        let names: Vec<&str> = NAMESPACE_FLAGS
            .iter()
            .filter(|(bit, _)| word & bit != 0)
            .map(|(_, name)| *name)
            .collect();
        if names.is_empty() {
            format!("{word:#x}")
        } else {
            names.join("|")
        }
    };
    match syscall {
        "unshare" | "clone" => format!("flags={}", namespace_flags(args[0])),
        "setns" => format!("nstype={}", namespace_flags(args[1])),
        "mount" => format!("flags={:#x}", args[3]),
        "umount2" => format!("flags={:#x}", args[1]),
        "ptrace" => format!("request={} pid={}", args[0] as i64, args[1] as i32),
        "process_vm_readv" | "process_vm_writev" | "pidfd_getfd" | "kcmp" => {
            format!("pid={}", args[0] as i32)
        }
        "bpf" => format!("cmd={}", args[0] as i32),
        "keyctl" => format!("operation={}", args[0] as i32),
        "perf_event_open" => format!("pid={} cpu={}", args[1] as i32, args[2] as i32),
        "init_module" => format!("length={}", args[1]),
        "finit_module" | "open_by_handle_at" => format!("fd={}", args[0] as i32),
        "io_uring_setup" => format!("entries={}", args[0] as u32),
        "reboot" => format!("cmd={:#x}", args[2] as u32),
        _ => String::new(),
    }
}
