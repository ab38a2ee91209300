//! The task service's core: what each task API call does to the pod, over the per-container
//! state machine (`container`), the pod's resources (`pod`), the launcher (the only thing that
//! clones or enters a container) and the cgroup module. `task_api` adapts containerd's ttrpc
//! calls onto this; nothing here speaks ttrpc.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use agentsandbox_contract::{cri, PodPolicy, ResponseTaken};
use async_trait::async_trait;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::events::task::{TaskExit, TaskOOM};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::topics;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::container::{Container, Containers, Process, TransitionError};
use crate::launcher::{LaunchRequest, LaunchResponse, Launcher};
use crate::notify::NotifyListener;
use crate::pod::Pod;
use crate::response::{self, Target};
use crate::telemetry::Telemetry;

mod create;
mod start;

pub use create::{private_dir, read_bundle_spec};
pub use start::release_init;

/// Where the shim keeps its state (root-only).
pub const STATE_ROOT: &str = "/run/agentsandbox";

/// An error for containerd: a ttrpc status code and a message `kubectl describe pod` shows.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Unimplemented(&'static str),
    #[error("{0}")]
    Unknown(String),
    #[error("{0}")]
    Internal(String),
}

impl From<TransitionError> for TaskError {
    fn from(err: TransitionError) -> TaskError {
        match err {
            TransitionError::NotFound(_) | TransitionError::Finished => {
                TaskError::NotFound(err.to_string())
            }
            TransitionError::ExecExists(_) => TaskError::AlreadyExists(err.to_string()),
            TransitionError::NotCreated(_) | TransitionError::NotRunning(_) => {
                TaskError::FailedPrecondition(err.to_string())
            }
        }
    }
}

pub fn internal(err: impl std::fmt::Display) -> TaskError {
    TaskError::Internal(err.to_string())
}

pub type TaskResult<T> = Result<T, TaskError>;

/// Where task events go: containerd's publisher, or a recorder in tests.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>);
}

pub fn now() -> Timestamp {
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = elapsed.as_secs() as i64;
    ts.nanos = elapsed.subsec_nanos() as i32;
    ts
}

/// The pod's containers and the pod itself, behind one lock.
#[derive(Default)]
pub struct PodState {
    pub containers: Containers,
    pub pod: Pod,
}

/// The task service of one pod's shim.
#[derive(Clone)]
pub struct TaskService {
    pub(crate) namespace: String,
    pub(crate) state_root: PathBuf,
    pub(crate) state: Arc<Mutex<PodState>>,
    pub(crate) launcher: Arc<dyn Launcher>,
    pub(crate) events: Arc<dyn EventSink>,
    pub(crate) notify: Option<Arc<NotifyListener>>,
    pub(crate) telemetry: Option<Arc<Telemetry>>,
    pub exit: Arc<ExitSignal>,
}

impl TaskService {
    pub fn new(
        namespace: &str,
        state_root: &Path,
        launcher: Arc<dyn Launcher>,
        events: Arc<dyn EventSink>,
    ) -> TaskService {
        TaskService {
            namespace: namespace.to_string(),
            state_root: state_root.to_path_buf(),
            state: Arc::new(Mutex::new(PodState::default())),
            launcher,
            events,
            notify: None,
            telemetry: None,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    pub fn with_escape_reporting(
        mut self,
        notify: Option<Arc<NotifyListener>>,
        telemetry: Arc<Telemetry>,
    ) -> TaskService {
        self.notify = notify;
        self.telemetry = Some(telemetry);
        self
    }

    pub fn exit_signal(&self) -> Arc<ExitSignal> {
        self.exit.clone()
    }

    /// libcontainer's state directory of the pod's containers.
    pub fn libcontainer_root(&self) -> PathBuf {
        libcontainer_root(&self.state_root, &self.namespace)
    }

    pub fn container_dir(&self, id: &str) -> PathBuf {
        container_dir(&self.state_root, &self.namespace, id)
    }

    /// The shim's root-only socket directory (seccomp listener, console sockets).
    pub fn notify_dir(&self) -> PathBuf {
        self.state_root.join("notify")
    }

    pub async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        self.events.publish(topic, event).await;
    }

    /// A reaped pid: records the exit and tells containerd.
    pub async fn on_exit(&self, pid: i32, code: i32) {
        let exit = self
            .state
            .lock()
            .await
            .containers
            .record_exit(pid, code, now());
        let Some(exit) = exit else { return };
        self.publish(
            topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(TaskExit {
                container_id: exit.container_id.clone(),
                id: exit.exec_id.unwrap_or(exit.container_id),
                pid: exit.pid as u32,
                exit_status: exit.code,
                exited_at: Some(exit.at).into(),
                ..Default::default()
            }),
        )
        .await;
    }

    /// Marks a process running with its pidfd; an exit that raced ahead is applied now.
    pub(crate) async fn register_running(
        &self,
        id: &str,
        exec_id: &str,
        pid: i32,
        terminal: Option<Arc<std::os::fd::OwnedFd>>,
    ) {
        let pidfd = match response::open_pidfd(pid) {
            Ok(fd) => Some(Arc::new(fd)),
            Err(err) => {
                tracing::debug!(pid, error = %err, "no pidfd (the process already exited)");
                None
            }
        };
        let early = self
            .state
            .lock()
            .await
            .containers
            .mark_process_running(id, exec_id, pid, pidfd, terminal);
        if let Some(code) = early {
            self.on_exit(pid, code).await;
        }
    }

    /// Tells containerd about OOM kills in the container (CRI reports reason OOMKilled).
    pub(crate) fn watch_oom(&self, id: &str, cgroup: &crate::cgroups::ContainerCgroup) {
        let service = self.clone();
        let container_id = id.to_string();
        let runtime = tokio::runtime::Handle::current();
        let watched = cgroup.watch_oom(move || {
            let service = service.clone();
            let container_id = container_id.clone();
            runtime.spawn(async move {
                tracing::warn!(container = %container_id, "out of memory: a process was killed");
                let event = TaskOOM {
                    container_id,
                    ..Default::default()
                };
                service
                    .publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(event))
                    .await;
            });
        });
        if let Err(err) = watched {
            tracing::warn!(container = %id, error = %format!("{err:#}"), "no OOM notifications");
        }
    }

    pub(crate) async fn run_launcher(&self, request: LaunchRequest) -> TaskResult<i32> {
        let launcher = self.launcher.clone();
        let response = tokio::task::spawn_blocking(move || launcher.launch(&request))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        match response {
            LaunchResponse::Pid(pid) => Ok(pid),
            LaunchResponse::Failed(message) => Err(TaskError::Unknown(message)),
        }
    }

    /// Remembers the pod's policy (parsed once, from the first container's annotations) and
    /// who the pod is, for telemetry and the escape response.
    pub(crate) async fn learn_pod(
        &self,
        spec: &Value,
        annotations: &std::collections::BTreeMap<String, String>,
        is_sandbox: bool,
    ) -> TaskResult<PodPolicy> {
        let mut state = self.state.lock().await;
        if let Some(policy) = &state.pod.policy {
            return Ok(policy.clone());
        }
        let policy = PodPolicy::from_annotations(annotations)
            .map_err(|e| TaskError::InvalidArgument(format!("agentsandbox pod policy: {e}")))?;
        if let (Some(telemetry), Some(pod_uid)) =
            (&self.telemetry, annotations.get(cri::SANDBOX_UID))
        {
            let field = |key: &str| annotations.get(key).cloned().unwrap_or_default();
            telemetry.set_pod(agentsandbox_telemetry::v1::PodRef {
                pod_uid: pod_uid.clone(),
                pod_namespace: field(cri::SANDBOX_NAMESPACE),
                pod_name: field(cri::SANDBOX_NAME),
                sandbox_uid: policy.identity.sandbox_uid.clone(),
            });
        }
        if let Some(notify) = &self.notify {
            notify.set_response(policy.on_escape.taken().into());
        }
        if is_sandbox {
            state.pod.netns = spec["linux"]["namespaces"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|ns| ns["type"] == "network")
                .and_then(|ns| ns["path"].as_str())
                .map(PathBuf::from);
        }
        state.pod.policy = Some(policy.clone());
        Ok(policy)
    }

    /// Carries out the pod's response to an escape attempt, once.
    pub async fn respond(&self, action: ResponseTaken) {
        let (targets, netns) = {
            let mut state = self.state.lock().await;
            if state.pod.response_applied.is_some() {
                return;
            }
            state.pod.response_applied = Some(action);
            let targets: Vec<Target> = state
                .containers
                .iter()
                .map(|(id, c)| Target {
                    id: id.clone(),
                    init_pidfd: c.init.pidfd.clone(),
                    cgroup: c.cgroup.clone(),
                    is_sandbox: c.is_sandbox,
                })
                .collect();
            (targets, state.pod.netns.clone())
        };
        let carried = tokio::task::spawn_blocking(move || {
            response::carry_out(action, &targets, netns);
        })
        .await;
        if let Err(err) = carried {
            tracing::error!(error = %err, "escape response failed");
        }
    }

    /// Signals a process: every process of the container (`all`, or an init not started
    /// yet) through its cgroup, else the one process through its pidfd.
    pub async fn kill_process(
        &self,
        id: &str,
        exec_id: &str,
        signal: i32,
        all: bool,
    ) -> TaskResult<()> {
        let signal = nix::sys::signal::Signal::try_from(signal)
            .map_err(|_| TaskError::InvalidArgument(format!("signal {signal}")))?;
        let (pid, pidfd, created, cgroup, quarantined) = {
            let state = self.state.lock().await;
            let process = state.containers.signal_target(id, exec_id)?;
            let cgroup = state.containers.get(id)?.cgroup.clone();
            (
                process.pid,
                process.pidfd.clone(),
                process.status == crate::container::ProcessStatus::Created,
                cgroup,
                state.pod.response_applied == Some(ResponseTaken::Quarantined),
            )
        };
        if exec_id.is_empty() && (all || created) {
            let cgroup = cgroup.clone();
            tokio::task::spawn_blocking(move || cgroup.signal_all(signal))
                .await
                .map_err(internal)?
                .map_err(|e| TaskError::Unknown(format!("killing the container: {e:#}")))?;
        } else {
            let sent = match &pidfd {
                Some(fd) => response::signal_pidfd(fd, signal),
                None => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
                    .map_err(std::io::Error::from),
            };
            sent.map_err(|e| TaskError::NotFound(format!("process {pid}: {e}")))?;
        }
        // A frozen process takes SIGKILL only once thawed: deleting a quarantined pod must not
        // hang. Any other signal leaves it frozen.
        if quarantined && signal == nix::sys::signal::Signal::SIGKILL {
            let thawed = tokio::task::spawn_blocking(move || cgroup.set_frozen(false)).await;
            tracing::info!(container = %id, result = ?thawed.map(|r| r.map_err(|e| e.to_string())), "quarantined container thawed to be killed");
        }
        Ok(())
    }

    /// Deletes an exec, or a container with everything the shim made for it.
    pub async fn delete_process(&self, id: &str, exec_id: &str) -> TaskResult<(Process, bool)> {
        if !exec_id.is_empty() {
            let exec = self
                .state
                .lock()
                .await
                .containers
                .remove_exec(id, exec_id)?;
            if let Some(spec) = &exec.spec {
                let _ = std::fs::remove_file(spec);
            }
            return Ok((exec, false));
        }
        let container: Container = self.state.lock().await.containers.remove(id)?;
        let libcontainer_dir = self.libcontainer_root().join(id);
        let cgroup = container.cgroup.clone();
        let still_running = container.init.exited().is_none() && container.init.pid > 0;
        tokio::task::spawn_blocking(move || {
            remove_container_leftovers(&cgroup, &libcontainer_dir, still_running);
        })
        .await
        .map_err(internal)?;
        crate::sys::mounts::unmount_tree(&container.state_dir);
        if container.is_sandbox {
            self.state.lock().await.pod.release();
        }
        tracing::info!(container = %id, bundle = %container.bundle, "container deleted");
        Ok((container.init, true))
    }

    /// Shuts the shim down once the pod has no container left. The answer comes at once
    /// (containerd 2.4 gives Shutdown well under a second); the process then stays until the
    /// node agent has the pod's last escape counts, a bounded wait since it may be away.
    pub async fn shutdown_when_empty(&self) {
        const TELEMETRY_FLUSH: std::time::Duration = std::time::Duration::from_secs(3);
        if !self.state.lock().await.containers.is_empty() {
            return;
        }
        if let Some(notify) = &self.notify {
            let _ = std::fs::remove_file(&notify.path);
        }
        let telemetry = self.telemetry.clone().filter(|t| t.total() > 0);
        let exit = self.exit.clone();
        tokio::spawn(async move {
            if let Some(telemetry) = telemetry {
                if !telemetry.flush(TELEMETRY_FLUSH).await {
                    tracing::warn!(
                        attempts = telemetry.total(),
                        "exiting before the node agent acknowledged every escape attempt"
                    );
                }
            }
            exit.signal();
        });
    }
}

pub fn libcontainer_root(state_root: &Path, namespace: &str) -> PathBuf {
    state_root.join(namespace).join("libcontainer")
}

pub fn container_dir(state_root: &Path, namespace: &str, id: &str) -> PathBuf {
    state_root.join(namespace).join("containers").join(id)
}

/// What a container leaves behind once its processes are gone: its cgroup and libcontainer's
/// state directory (blocking).
pub fn remove_container_leftovers(
    cgroup: &crate::cgroups::ContainerCgroup,
    libcontainer_dir: &Path,
    still_running: bool,
) {
    if still_running {
        let _ = cgroup.signal_all(nix::sys::signal::Signal::SIGKILL);
    }
    if !cgroup.path().is_empty() {
        if let Err(err) = cgroup.remove() {
            tracing::warn!(cgroup = cgroup.path(), error = %format!("{err:#}"), "removing the cgroup");
        }
    }
    let _ = std::fs::remove_dir_all(libcontainer_dir);
}
