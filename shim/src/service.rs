//! The containerd task service (task API v2): a thin adapter over the pod's containers. One
//! shim process serves one pod (containers are grouped by CRI's sandbox id). Container
//! creation goes through the hardening policy and the launcher; start, kill and delete use
//! libcontainer's state in-process; exits come from the shim's reaper.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::monitor::monitor_subscribe;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error as ShimError, Flags, StartOpts, TtrpcResult};
use containerd_shim_protos::api;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{Message, MessageDyn};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::context::Context;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self, Code};
use serde_json::Value;
use tokio::sync::{watch, Mutex};

use crate::console::{self, ConsoleSocket};
use crate::egress;
use crate::idmap::SlotLease;
use crate::launcher::{
    self, CreateRequest, ExecRequest, LaunchRequest, LaunchResponse, StdioPaths,
};
use crate::notify::{response_action, NotifyListener};
use crate::policy::{self, SandboxSettings};
use crate::sys::mounts::{self, IdmapPlan, RootfsMount};
use crate::sys::{namespaces, oom, stats};
use crate::telemetry::Telemetry;
use agentsandbox_telemetry::v1::{Action, PodRef};

/// Where the shim keeps its state (root-only).
pub const STATE_ROOT: &str = "/run/agentsandbox";
const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
const SANDBOX_UID: &str = "io.kubernetes.cri.sandbox-uid";
const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
const ANNOTATION_SANDBOX_UID: &str = "agentsandbox.io/sandbox-uid";
const ANNOTATION_ON_ESCAPE: &str = "agentsandbox.io/on-escape-attempt";
/// How long the shim waits, when it exits, for the node agent to take its last counts.
const TELEMETRY_FLUSH: std::time::Duration = std::time::Duration::from_secs(3);

/// libcontainer changes directory while it talks to a container's notify socket; keep those
/// calls from running concurrently with each other.
static LIBCONTAINER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn status_error(code: Code, message: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message.into()))
}

fn internal(err: impl std::fmt::Display) -> ttrpc::Error {
    status_error(Code::INTERNAL, err.to_string())
}

fn not_found(what: &str) -> ttrpc::Error {
    status_error(Code::NOT_FOUND, format!("{what} not found"))
}

fn now() -> Timestamp {
    let elapsed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = elapsed.as_secs() as i64;
    ts.nanos = elapsed.subsec_nanos() as i32;
    ts
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ProcessStatus {
    Created,
    Running,
    Stopped,
}

/// A process containerd knows: a container's init or an exec.
struct Process {
    pid: i32,
    status: ProcessStatus,
    stdio: StdioPaths,
    exit: watch::Sender<Option<(u32, Timestamp)>>,
    /// For execs: the hardened OCI process, until started.
    spec: Option<PathBuf>,
    /// Whether the process has a terminal, and its master once it runs.
    wants_terminal: bool,
    terminal: Option<Arc<std::os::fd::OwnedFd>>,
}

impl Process {
    fn new(pid: i32, stdio: StdioPaths) -> Process {
        Process {
            pid,
            status: ProcessStatus::Created,
            stdio,
            exit: watch::channel(None).0,
            spec: None,
            wants_terminal: false,
            terminal: None,
        }
    }

    fn exited(&self) -> Option<(u32, Timestamp)> {
        self.exit.borrow().clone()
    }

    fn api_status(&self) -> api::Status {
        match self.status {
            ProcessStatus::Created => api::Status::CREATED,
            ProcessStatus::Running => api::Status::RUNNING,
            ProcessStatus::Stopped => api::Status::STOPPED,
        }
    }
}

struct Container {
    bundle: String,
    state_dir: PathBuf,
    cgroups_path: String,
    is_sandbox: bool,
    init: Process,
    execs: HashMap<String, Process>,
}

/// What belongs to the pod as a whole.
#[derive(Default)]
struct Pod {
    lease: Option<SlotLease>,
    user_namespace: Option<PathBuf>,
    egress_installed: bool,
    /// The pod's network namespace (from its sandbox container), for quarantine.
    netns: Option<PathBuf>,
    /// Kill or Quarantine, once carried out after an escape attempt.
    response_applied: Option<Action>,
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Container>,
    /// pid -> (container id, exec id)
    pids: HashMap<i32, (String, Option<String>)>,
    /// Exits of pids not (yet) registered: an exec may exit before its pid is recorded.
    early_exits: BTreeMap<i32, i32>,
    pod: Pod,
}

#[derive(Clone)]
pub struct Service {
    namespace: String,
    exit: Arc<ExitSignal>,
    state: Arc<Mutex<State>>,
    publisher: Option<Arc<RemotePublisher>>,
    notify: Option<Arc<NotifyListener>>,
    telemetry: Option<Arc<Telemetry>>,
}

impl Service {
    fn libcontainer_root(&self) -> PathBuf {
        Path::new(STATE_ROOT)
            .join(&self.namespace)
            .join("libcontainer")
    }

    fn container_dir(&self, id: &str) -> PathBuf {
        Path::new(STATE_ROOT)
            .join(&self.namespace)
            .join("containers")
            .join(id)
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Some(publisher) = &self.publisher {
            if let Err(err) = publisher
                .publish(Context::default(), topic, &self.namespace, event)
                .await
            {
                tracing::warn!(error = %err, topic, "publishing event failed");
            }
        }
    }

    /// Records an exit and tells containerd.
    async fn on_exit(&self, pid: i32, code: i32) {
        let event = {
            let mut state = self.state.lock().await;
            let Some((id, exec_id)) = state.pids.remove(&pid) else {
                state.early_exits.insert(pid, code);
                while state.early_exits.len() > 1024 {
                    state.early_exits.pop_first();
                }
                return;
            };
            let Some(container) = state.containers.get_mut(&id) else {
                return;
            };
            let process = match &exec_id {
                Some(exec_id) => match container.execs.get_mut(exec_id) {
                    Some(p) => p,
                    None => return,
                },
                None => &mut container.init,
            };
            let at = now();
            process.status = ProcessStatus::Stopped;
            process.exit.send_replace(Some((code as u32, at.clone())));
            TaskExit {
                container_id: id.clone(),
                id: exec_id.unwrap_or(id),
                pid: pid as u32,
                exit_status: code as u32,
                exited_at: Some(at).into(),
                ..Default::default()
            }
        };
        self.publish(
            containerd_shim_protos::topics::TASK_EXIT_EVENT_TOPIC,
            Box::new(event),
        )
        .await;
    }

    /// Tells containerd about OOM kills in the container (CRI reports reason OOMKilled).
    fn watch_oom(&self, id: &str, cgroups_path: &str) {
        let service = self.clone();
        let container_id = id.to_string();
        let runtime = tokio::runtime::Handle::current();
        let watched = oom::watch(cgroups_path, move || {
            let service = service.clone();
            let container_id = container_id.clone();
            runtime.spawn(async move {
                tracing::warn!(container = %container_id, "out of memory: a process was killed");
                service
                    .publish(
                        containerd_shim_protos::topics::TASK_OOM_EVENT_TOPIC,
                        Box::new(TaskOOM {
                            container_id,
                            ..Default::default()
                        }),
                    )
                    .await;
            });
        });
        if let Err(err) = watched {
            tracing::warn!(container = %id, error = %format!("{err:#}"), "no OOM notifications");
        }
    }

    /// Registers a pid, applying an exit that raced ahead of the registration.
    async fn register_pid(&self, pid: i32, id: &str, exec_id: Option<String>) {
        let early = {
            let mut state = self.state.lock().await;
            state.pids.insert(pid, (id.to_string(), exec_id));
            state.early_exits.remove(&pid)
        };
        if let Some(code) = early {
            self.on_exit(pid, code).await;
        }
    }

    async fn run_launcher(request: LaunchRequest) -> Result<LaunchResponse, ttrpc::Error> {
        tokio::task::spawn_blocking(move || launcher::launch(&request))
            .await
            .map_err(internal)?
            .map_err(internal)
    }

    /// The pod's user namespace: its path, the host uid of its root, and, for the pod's first
    /// container, the pinning the launcher must do (the id range is claimed here).
    async fn pod_user_namespace(
        &self,
        pod_key: &str,
    ) -> Result<(PathBuf, u32, Option<(PathBuf, (u32, u32))>), ttrpc::Error> {
        let mut state = self.state.lock().await;
        if let (Some(path), Some(lease)) = (&state.pod.user_namespace, &state.pod.lease) {
            return Ok((path.clone(), lease.range.host_start, None));
        }
        let pod_dir = Path::new(STATE_ROOT)
            .join(&self.namespace)
            .join("pods")
            .join(pod_key);
        std::fs::create_dir_all(&pod_dir).map_err(internal)?;
        let lease = SlotLease::acquire(&Path::new(STATE_ROOT).join("idmap"), std::process::id())
            .map_err(|e| status_error(Code::RESOURCE_EXHAUSTED, e.to_string()))?;
        let path = pod_dir.join("userns");
        tracing::info!(
            host_uid = lease.range.host_start,
            slot = lease.slot,
            "pod id range claimed"
        );
        let range = (lease.range.host_start, lease.range.size);
        state.pod.lease = Some(lease);
        state.pod.user_namespace = Some(path.clone());
        Ok((path.clone(), range.0, Some((path, range))))
    }

    async fn release_pod(&self) {
        let mut state = self.state.lock().await;
        if let Some(path) = state.pod.user_namespace.take() {
            namespaces::unpin_user_namespace(&path);
            if let Some(dir) = path.parent() {
                let _ = std::fs::remove_dir(dir);
            }
        }
        if let Some(lease) = state.pod.lease.take() {
            lease.release();
        }
        state.pod.egress_installed = false;
    }

    fn egress_rules(
        spec: &Value,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<egress::EgressRules>, ttrpc::Error> {
        let Some(policy) = annotations.get(egress::ANNOTATION_EGRESS) else {
            return Ok(None);
        };
        let resolv_conf = spec["mounts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["destination"] == "/etc/resolv.conf")
            .and_then(|m| m["source"].as_str())
            .and_then(|source| launcher::read_optional(Path::new(source)))
            .unwrap_or_default();
        egress::render(policy, &egress::nameservers(&resolv_conf))
            .map_err(|e| status_error(Code::INVALID_ARGUMENT, e.to_string()))
    }

    /// Remembers who the pod is (for telemetry), its response policy and its network namespace.
    async fn learn_pod(
        &self,
        spec: &Value,
        annotations: &BTreeMap<String, String>,
        is_sandbox: bool,
    ) {
        if let (Some(telemetry), Some(pod_uid)) = (&self.telemetry, annotations.get(SANDBOX_UID)) {
            let field = |key: &str| annotations.get(key).cloned().unwrap_or_default();
            telemetry.set_pod(PodRef {
                pod_uid: pod_uid.clone(),
                pod_namespace: field(SANDBOX_NAMESPACE),
                pod_name: field(SANDBOX_NAME),
                sandbox_uid: field(ANNOTATION_SANDBOX_UID),
            });
        }
        if let Some(notify) = &self.notify {
            notify.set_response(response_action(
                annotations.get(ANNOTATION_ON_ESCAPE).map(String::as_str),
            ));
        }
        if is_sandbox {
            let netns = spec["linux"]["namespaces"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|ns| ns["type"] == "network")
                .and_then(|ns| ns["path"].as_str())
                .map(PathBuf::from);
            self.state.lock().await.pod.netns = netns;
        }
    }

    /// Carries out the pod's response to an escape attempt, once: Kill stops every container
    /// of the pod (the pod, restartPolicy Never, ends Failed); Quarantine freezes every process
    /// and cuts the network, keeping everything as it is for forensics.
    async fn respond(&self, action: Action) {
        let (targets, netns) = {
            let mut state = self.state.lock().await;
            if state.pod.response_applied.is_some() {
                return;
            }
            state.pod.response_applied = Some(action);
            let targets: Vec<(String, i32, String, bool)> = state
                .containers
                .iter()
                .map(|(id, c)| (id.clone(), c.init.pid, c.cgroups_path.clone(), c.is_sandbox))
                .collect();
            (targets, state.pod.netns.clone())
        };
        match action {
            Action::Killed => {
                for (id, pid, _, is_sandbox) in &targets {
                    if *is_sandbox || *pid <= 0 {
                        continue;
                    }
                    // The container's init is its pid namespace's init: every process in it
                    // (execs included) dies with it.
                    let killed = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                    tracing::warn!(container = %id, pid, result = ?killed, "escape response: container killed");
                }
            }
            Action::Quarantined => {
                let cgroups: Vec<String> = targets.iter().map(|t| t.2.clone()).collect();
                let frozen = tokio::task::spawn_blocking(move || {
                    cgroups
                        .iter()
                        .map(|path| set_frozen(path, true))
                        .collect::<anyhow::Result<Vec<()>>>()
                })
                .await;
                tracing::warn!(result = ?frozen.map(|r| r.map(|_| ())), "escape response: processes frozen");
                let cut = match netns {
                    Some(netns) => tokio::task::spawn_blocking(move || {
                        egress::apply_rules(&egress::quarantine_rules(), Some(&netns))
                    })
                    .await
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r),
                    None => Err(anyhow::anyhow!("the pod's network namespace is unknown")),
                };
                match cut {
                    Ok(()) => tracing::warn!("escape response: network cut"),
                    Err(err) => {
                        tracing::error!(error = %format!("{err:#}"), "escape response: cutting the network failed")
                    }
                }
            }
            Action::Denied | Action::Unspecified => {}
        }
    }

    /// The container's absolute cgroup path (the spec's linux.cgroupsPath).
    async fn cgroups_path(&self, id: &str) -> Result<String, ttrpc::Error> {
        let state = self.state.lock().await;
        Ok(state
            .containers
            .get(id)
            .ok_or_else(|| not_found(id))?
            .cgroups_path
            .clone())
    }

    fn find<'a>(state: &'a State, id: &str, exec_id: &str) -> Result<&'a Process, ttrpc::Error> {
        let container = state.containers.get(id).ok_or_else(|| not_found(id))?;
        if exec_id.is_empty() {
            Ok(&container.init)
        } else {
            container
                .execs
                .get(exec_id)
                .ok_or_else(|| not_found(exec_id))
        }
    }
}

/// Freezes or thaws the processes of one container cgroup.
fn set_frozen(cgroups_path: &str, frozen: bool) -> anyhow::Result<()> {
    use libcgroups::common::{CgroupConfig, CgroupManager, FreezerState};
    let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
        cgroup_path: PathBuf::from(cgroups_path),
        systemd_cgroup: false,
        container_name: String::new(),
    })?;
    manager.freeze(if frozen {
        FreezerState::Frozen
    } else {
        FreezerState::Thawed
    })?;
    Ok(())
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The shim's root-only socket directory (seccomp listener, console sockets).
fn notify_dir() -> PathBuf {
    Path::new(STATE_ROOT).join("notify")
}

/// The terminal master of a process just launched, attached to its FIFOs.
async fn receive_terminal(
    console: ConsoleSocket,
    stdio: &StdioPaths,
) -> Result<Arc<std::os::fd::OwnedFd>, ttrpc::Error> {
    let stdio = stdio.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<Arc<std::os::fd::OwnedFd>> {
        let master = console.receive_master(std::time::Duration::from_secs(10))?;
        console::attach(&master, &stdio.stdin, &stdio.stdout)?;
        Ok(Arc::new(master))
    })
    .await
    .map_err(internal)?
    .map_err(|e| status_error(Code::UNKNOWN, format!("terminal: {e:#}")))
}

/// Creates `dir` with every directory from the state root down traversable (0711) but not
/// listable by others.
fn create_traversable_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    let mut current = Some(dir);
    while let Some(path) = current {
        if !path.starts_with(STATE_ROOT) {
            break;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o711))?;
        current = path.parent();
    }
    Ok(())
}

fn read_bundle_spec(bundle: &Path) -> std::io::Result<Value> {
    let text = std::fs::read_to_string(bundle.join("config.json"))?;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}

#[async_trait]
impl Shim for Service {
    type T = Service;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
            state: Arc::new(Mutex::new(State::default())),
            publisher: None,
            notify: None,
            telemetry: None,
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, ShimError> {
        // One shim per pod: CRI marks every container with its pod's sandbox id.
        let grouping = read_bundle_spec(Path::new("."))
            .ok()
            .and_then(|spec| spec["annotations"][SANDBOX_ID].as_str().map(String::from))
            .unwrap_or_else(|| opts.id.clone());
        let address = spawn(opts, &grouping, Vec::new()).await?;
        std::fs::write("address", &address)
            .map_err(|e| ShimError::Other(format!("writing address: {e}")))?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<api::DeleteResponse, ShimError> {
        // containerd cleans up after a shim that is gone: the cwd is the bundle.
        let bundle = std::env::current_dir().map_err(|e| ShimError::Other(e.to_string()))?;
        let id = bundle
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let root = Path::new(STATE_ROOT)
            .join(&self.namespace)
            .join("libcontainer");
        let _guard = LIBCONTAINER.lock();
        if let Ok(mut container) = libcontainer::container::Container::load(root.join(&id)) {
            let _ = container.delete(true);
        }
        let dir = Path::new(STATE_ROOT)
            .join(&self.namespace)
            .join("containers")
            .join(&id);
        mounts::unmount_tree(&dir);
        let mut response = api::DeleteResponse::new();
        response.exit_status = 128 + libc::SIGKILL as u32;
        response.exited_at = Some(now()).into();
        Ok(response)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let mut service = self.clone();
        service.publisher = Some(Arc::new(publisher));
        let notify_dir = notify_dir();
        let _ = std::fs::create_dir_all(&notify_dir);
        // The notify socket is root's only.
        let _ = std::fs::set_permissions(
            &notify_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        );
        let telemetry = Telemetry::new(agentsandbox_telemetry::socket_path());
        tokio::spawn(telemetry.clone().run());
        service.telemetry = Some(telemetry.clone());
        let (responses, mut requested) = tokio::sync::mpsc::unbounded_channel();
        match NotifyListener::start(
            &notify_dir.join(format!("{}.sock", std::process::id())),
            telemetry,
            responses,
        ) {
            Ok(listener) => service.notify = Some(Arc::new(listener)),
            Err(err) => tracing::error!(error = %err, "seccomp listener failed to start"),
        }
        let responder = service.clone();
        tokio::spawn(async move {
            while let Some(action) = requested.recv().await {
                responder.respond(action).await;
            }
        });
        let exits = service.clone();
        match monitor_subscribe(Topic::Pid).await {
            Ok(mut subscription) => {
                tokio::spawn(async move {
                    while let Some(event) = subscription.rx.recv().await {
                        if let Subject::Pid(pid) = event.subject {
                            exits.on_exit(pid, event.exit_code).await;
                        }
                    }
                });
            }
            Err(err) => tracing::error!(error = %err, "cannot watch process exits"),
        }
        service
    }
}

#[async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        if !req.checkpoint.is_empty() {
            return Err(status_error(
                Code::UNIMPLEMENTED,
                "checkpoint/restore is not supported",
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let mut spec = read_bundle_spec(&bundle).map_err(internal)?;
        let annotations = string_map(&spec["annotations"]);
        let is_sandbox = annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox");
        let pod_key = annotations
            .get(SANDBOX_ID)
            .cloned()
            .unwrap_or_else(|| req.id.clone());

        // Everything that can refuse the container comes before the pod's id range is
        // claimed. The egress rules read the pod's resolv.conf before mounts are staged.
        policy::check_refusals(&spec)
            .map_err(|e| status_error(Code::FAILED_PRECONDITION, e.to_string()))?;
        if let Some(applied) = self.state.lock().await.pod.response_applied {
            return Err(status_error(
                Code::FAILED_PRECONDITION,
                format!(
                    "the sandbox was {} after an escape attempt: no new container starts in this pod",
                    if applied == Action::Killed { "killed" } else { "quarantined" }
                ),
            ));
        }
        self.learn_pod(&spec, &annotations, is_sandbox).await;
        let egress = {
            let state = self.state.lock().await;
            if is_sandbox || state.pod.egress_installed {
                None
            } else {
                Self::egress_rules(&spec, &annotations)?
            }
        };

        let (user_namespace, host_root, pin_user_namespace) =
            self.pod_user_namespace(&pod_key).await?;
        let pinning = pin_user_namespace.is_some();
        let mut settings = SandboxSettings::from_annotations(&annotations);
        settings.user_namespace = Some(user_namespace.to_string_lossy().into_owned());
        settings.notify_socket = self
            .notify
            .as_ref()
            .map(|n| n.path.to_string_lossy().into_owned());
        if let Err(err) = policy::apply_hardening(&mut spec, &settings) {
            if pinning {
                self.release_pod().await;
            }
            return Err(status_error(Code::FAILED_PRECONDITION, err.to_string()));
        }
        let joins = policy::take_namespace_joins(&mut spec);

        // Everything the container's (unprivileged) root must reach lives below its state
        // directory, whose parents it may traverse but not list.
        let state_dir = self.container_dir(&req.id);
        let rootfs_target = state_dir.join("rootfs");
        if let Err(err) = create_traversable_dir(&rootfs_target) {
            if pinning {
                self.release_pod().await;
            }
            return Err(internal(err));
        }
        spec["root"]["path"] = Value::String(rootfs_target.to_string_lossy().into_owned());
        let binds = mounts::stage_binds(&mut spec, &state_dir.join("mounts"));
        let cgroups_path = spec["linux"]["cgroupsPath"]
            .as_str()
            .unwrap_or_default()
            .to_string();

        let install_egress = egress.is_some();
        let cgroups_path_for_oom = cgroups_path.clone();

        let my_bundle = state_dir.join("bundle");
        let written = std::fs::create_dir_all(&my_bundle).and_then(|_| {
            std::fs::write(
                my_bundle.join("config.json"),
                serde_json::to_vec(&spec).map_err(std::io::Error::other)?,
            )
        });

        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        };
        let mut rootfs: Vec<RootfsMount> = req
            .rootfs
            .iter()
            .map(|m| RootfsMount {
                fs_type: m.type_.clone(),
                source: m.source.clone(),
                options: m.options.clone(),
            })
            .collect();
        if rootfs.is_empty() {
            // containerd mounted the root filesystem in the bundle itself.
            rootfs.push(RootfsMount {
                fs_type: "bind".into(),
                source: bundle.join("rootfs").to_string_lossy().into_owned(),
                options: vec!["rbind".into()],
            });
        }
        let console = if req.terminal {
            Some(ConsoleSocket::bind(&notify_dir()).map_err(internal)?)
        } else {
            None
        };
        let request = CreateRequest {
            console_socket: console.as_ref().map(|c| c.path.clone()),
            id: req.id.clone(),
            pin_user_namespace,
            root: self.libcontainer_root(),
            bundle: my_bundle,
            stdio: stdio.clone(),
            joins,
            rootfs,
            rootfs_target: rootfs_target.clone(),
            idmap: Some(IdmapPlan {
                user_namespace,
                host_root,
                staging: state_dir.join("layers"),
            }),
            binds,
            state_dir: state_dir.clone(),
            egress,
        };
        let launched = match written {
            Ok(()) => Self::run_launcher(LaunchRequest::Create(Box::new(request))).await,
            Err(err) => Err(internal(err)),
        };
        let failure = match launched {
            Ok(LaunchResponse::Pid(pid)) => Ok(pid),
            Ok(LaunchResponse::Failed(message)) => Err(status_error(Code::UNKNOWN, message)),
            Err(err) => Err(err),
        };
        let failure = match (failure, console) {
            (Ok(pid), Some(console)) => receive_terminal(console, &stdio)
                .await
                .map(|master| (pid, Some(master))),
            (Ok(pid), None) => Ok((pid, None)),
            (Err(err), _) => Err(err),
        };
        let (pid, terminal) = match failure {
            Ok(launched) => launched,
            Err(err) => {
                mounts::unmount_tree(&state_dir);
                if pinning || is_sandbox {
                    self.release_pod().await;
                }
                return Err(err);
            }
        };
        {
            let mut state = self.state.lock().await;
            if install_egress {
                state.pod.egress_installed = true;
            }
            state.containers.insert(
                req.id.clone(),
                Container {
                    bundle: req.bundle.clone(),
                    state_dir,
                    cgroups_path,
                    is_sandbox: is_sandbox || !annotations.contains_key(SANDBOX_ID),
                    init: Process {
                        wants_terminal: terminal.is_some(),
                        terminal,
                        ..Process::new(pid, stdio)
                    },
                    execs: HashMap::new(),
                },
            );
        }
        self.register_pid(pid, &req.id, None).await;
        tracing::info!(container = %req.id, pid, sandbox = is_sandbox, "container created");
        self.watch_oom(&req.id, &cgroups_path_for_oom);

        self.publish(
            containerd_shim_protos::topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                pid: pid as u32,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        if req.exec_id.is_empty() {
            let (pid, status) = {
                let state = self.state.lock().await;
                let p = Self::find(&state, &req.id, "")?;
                (p.pid, p.status)
            };
            if status != ProcessStatus::Created {
                return Err(status_error(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is not in the created state", req.id),
                ));
            }
            let root = self.libcontainer_root().join(&req.id);
            tokio::task::spawn_blocking(move || {
                let _guard = LIBCONTAINER.lock();
                let mut container = libcontainer::container::Container::load(root)?;
                container.start()
            })
            .await
            .map_err(internal)?
            .map_err(|e| status_error(Code::UNKNOWN, format!("starting the container: {e}")))?;
            {
                let mut state = self.state.lock().await;
                if let Some(c) = state.containers.get_mut(&req.id) {
                    if c.init.status == ProcessStatus::Created {
                        c.init.status = ProcessStatus::Running;
                    }
                }
            }
            self.publish(
                containerd_shim_protos::topics::TASK_START_EVENT_TOPIC,
                Box::new(TaskStart {
                    container_id: req.id.clone(),
                    pid: pid as u32,
                    ..Default::default()
                }),
            )
            .await;
            return Ok(api::StartResponse {
                pid: pid as u32,
                ..Default::default()
            });
        }

        let (request_process, stdio, init_pid, wants_terminal) = {
            let state = self.state.lock().await;
            let container = state
                .containers
                .get(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            let exec = container
                .execs
                .get(&req.exec_id)
                .ok_or_else(|| not_found(&req.exec_id))?;
            if container.init.status != ProcessStatus::Running {
                return Err(status_error(
                    Code::FAILED_PRECONDITION,
                    format!("container {} is not running", req.id),
                ));
            }
            (
                exec.spec
                    .clone()
                    .ok_or_else(|| internal("exec has no process"))?,
                exec.stdio.clone(),
                container.init.pid,
                exec.wants_terminal,
            )
        };
        let console = if wants_terminal {
            Some(ConsoleSocket::bind(&notify_dir()).map_err(internal)?)
        } else {
            None
        };
        tracing::info!(container = %req.id, exec = %req.exec_id, terminal = wants_terminal, "starting exec");
        let response = Self::run_launcher(LaunchRequest::Exec(ExecRequest {
            id: req.id.clone(),
            bundle: self.container_dir(&req.id).join("bundle"),
            process: request_process,
            stdio: stdio.clone(),
            init_pid,
            console_socket: console.as_ref().map(|c| c.path.clone()),
        }))
        .await?;
        let pid = match response {
            LaunchResponse::Pid(pid) => pid,
            LaunchResponse::Failed(message) => return Err(status_error(Code::UNKNOWN, message)),
        };
        let terminal = match console {
            Some(console) => Some(receive_terminal(console, &stdio).await?),
            None => None,
        };
        {
            let mut state = self.state.lock().await;
            if let Some(exec) = state
                .containers
                .get_mut(&req.id)
                .and_then(|c| c.execs.get_mut(&req.exec_id))
            {
                exec.pid = pid;
                exec.status = ProcessStatus::Running;
                exec.terminal = terminal;
            }
        }
        self.register_pid(pid, &req.id, Some(req.exec_id.clone()))
            .await;
        self.publish(
            containerd_shim_protos::topics::TASK_EXEC_STARTED_EVENT_TOPIC,
            Box::new(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: pid as u32,
                ..Default::default()
            }),
        )
        .await;
        Ok(api::StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let mut process: Value = serde_json::from_slice(&req.spec.value)
            .map_err(|e| status_error(Code::INVALID_ARGUMENT, format!("exec process: {e}")))?;
        policy::harden_exec_process(&mut process)
            .map_err(|e| status_error(Code::FAILED_PRECONDITION, e.to_string()))?;
        let path = {
            let state = self.state.lock().await;
            let container = state
                .containers
                .get(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            if container.execs.contains_key(&req.exec_id) {
                return Err(status_error(
                    Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            container
                .state_dir
                .join(format!("exec-{}.json", req.exec_id))
        };
        std::fs::write(&path, serde_json::to_vec(&process).map_err(internal)?).map_err(internal)?;
        {
            let mut state = self.state.lock().await;
            let container = state
                .containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            let mut exec = Process::new(
                0,
                StdioPaths {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                },
            );
            exec.spec = Some(path);
            exec.wants_terminal = req.terminal;
            container.execs.insert(req.exec_id.clone(), exec);
        }
        self.publish(
            containerd_shim_protos::topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        )
        .await;
        Ok(api::Empty::new())
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let signal = nix::sys::signal::Signal::try_from(req.signal as i32)
            .map_err(|_| status_error(Code::INVALID_ARGUMENT, format!("signal {}", req.signal)))?;
        let (pid, exited, status) = {
            let state = self.state.lock().await;
            let p = Self::find(&state, &req.id, &req.exec_id)?;
            (p.pid, p.exited().is_some(), p.status)
        };
        if exited || pid == 0 {
            return Err(status_error(Code::NOT_FOUND, "process already finished"));
        }
        if req.exec_id.is_empty() && (req.all || status == ProcessStatus::Created) {
            let root = self.libcontainer_root().join(&req.id);
            let all = req.all;
            tokio::task::spawn_blocking(move || {
                let _guard = LIBCONTAINER.lock();
                let mut container = libcontainer::container::Container::load(root)?;
                container.kill(signal, all)
            })
            .await
            .map_err(internal)?
            .map_err(|e| status_error(Code::UNKNOWN, format!("killing the container: {e}")))?;
        } else {
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal)
                .map_err(|e| status_error(Code::NOT_FOUND, format!("process {pid}: {e}")))?;
        }
        // A frozen process takes SIGKILL only once thawed: deleting a quarantined pod must not
        // hang. Any other signal leaves it frozen.
        let quarantined = self.state.lock().await.pod.response_applied == Some(Action::Quarantined);
        if quarantined && signal == nix::sys::signal::Signal::SIGKILL {
            let cgroups_path = self.cgroups_path(&req.id).await?;
            let thawed =
                tokio::task::spawn_blocking(move || set_frozen(&cgroups_path, false)).await;
            tracing::info!(container = %req.id, result = ?thawed.map(|r| r.map_err(|e| e.to_string())), "quarantined container thawed to be killed");
        }
        Ok(api::Empty::new())
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        if !req.exec_id.is_empty() {
            let mut state = self.state.lock().await;
            let container = state
                .containers
                .get_mut(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            let exec = container
                .execs
                .remove(&req.exec_id)
                .ok_or_else(|| not_found(&req.exec_id))?;
            if let Some(spec) = &exec.spec {
                let _ = std::fs::remove_file(spec);
            }
            let (code, at) = exec.exited().unwrap_or((0, now()));
            return Ok(api::DeleteResponse {
                pid: exec.pid as u32,
                exit_status: code,
                exited_at: Some(at).into(),
                ..Default::default()
            });
        }

        let root = self.libcontainer_root().join(&req.id);
        tokio::task::spawn_blocking(move || {
            let _guard = LIBCONTAINER.lock();
            if let Ok(mut container) = libcontainer::container::Container::load(root) {
                if let Err(err) = container.delete(true) {
                    tracing::warn!(error = %err, "libcontainer delete");
                }
            }
        })
        .await
        .map_err(internal)?;

        let container = {
            let mut state = self.state.lock().await;
            let container = state
                .containers
                .remove(&req.id)
                .ok_or_else(|| not_found(&req.id))?;
            state.pids.retain(|_, (id, _)| id != &req.id);
            container
        };
        mounts::unmount_tree(&container.state_dir);
        if container.is_sandbox {
            self.release_pod().await;
        }
        let (code, at) = container.init.exited().unwrap_or((128 + 9, now()));
        self.publish(
            containerd_shim_protos::topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(TaskDelete {
                container_id: req.id.clone(),
                pid: container.init.pid as u32,
                exit_status: code,
                exited_at: Some(at.clone()).into(),
                id: req.id.clone(),
                ..Default::default()
            }),
        )
        .await;
        tracing::info!(container = %req.id, bundle = %container.bundle, "container deleted");
        Ok(api::DeleteResponse {
            pid: container.init.pid as u32,
            exit_status: code,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let state = self.state.lock().await;
        let container = state
            .containers
            .get(&req.id)
            .ok_or_else(|| not_found(&req.id))?;
        let process = Self::find(&state, &req.id, &req.exec_id)?;
        let (exit_status, exited_at) = match process.exited() {
            Some((code, at)) => (code, Some(at)),
            None => (0, None),
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: container.bundle.clone(),
            pid: process.pid as u32,
            status: process.api_status().into(),
            stdin: process.stdio.stdin.clone(),
            stdout: process.stdio.stdout.clone(),
            stderr: process.stdio.stderr.clone(),
            terminal: process.wants_terminal,
            exit_status,
            exited_at: exited_at.into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let mut exit = {
            let state = self.state.lock().await;
            Self::find(&state, &req.id, &req.exec_id)?.exit.subscribe()
        };
        let (code, at) = loop {
            if let Some(done) = exit.borrow_and_update().clone() {
                break done;
            }
            if exit.changed().await.is_err() {
                return Err(status_error(Code::NOT_FOUND, "process was deleted"));
            }
        };
        Ok(api::WaitResponse {
            exit_status: code,
            exited_at: Some(at).into(),
            ..Default::default()
        })
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let cgroups_path = self.cgroups_path(&req.id).await?;
        let procs = std::fs::read_to_string(
            Path::new("/sys/fs/cgroup/pids")
                .join(cgroups_path.trim_start_matches('/'))
                .join("cgroup.procs"),
        )
        .unwrap_or_default();
        Ok(api::PidsResponse {
            processes: procs
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .map(|pid| api::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let cgroups_path = self.cgroups_path(&req.id).await?;
        let metrics = stats::cgroup_v1_metrics(&cgroups_path);
        Ok(api::StatsResponse {
            stats: Some(Any {
                type_url: stats::METRICS_TYPE_URL.to_string(),
                value: metrics.write_to_bytes().map_err(internal)?,
                ..Default::default()
            })
            .into(),
            ..Default::default()
        })
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let cgroups_path = self.cgroups_path(&req.id).await?;
        let mut resources: Value = serde_json::from_slice(&req.resources.value)
            .map_err(|e| status_error(Code::INVALID_ARGUMENT, format!("resources: {e}")))?;
        // The pids limit never rises above the policy's.
        let requested = resources["pids"]["limit"].as_i64().filter(|l| *l > 0);
        resources["pids"]["limit"] =
            Value::from(requested.map_or(policy::DEFAULT_PIDS_LIMIT, |r| {
                r.min(policy::DEFAULT_PIDS_LIMIT)
            }));
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_value(resources)
            .map_err(|e| status_error(Code::INVALID_ARGUMENT, format!("resources: {e}")))?;
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            use libcgroups::common::{CgroupConfig, CgroupManager, ControllerOpt};
            let manager = libcgroups::common::create_cgroup_manager(CgroupConfig {
                cgroup_path: PathBuf::from(cgroups_path),
                systemd_cgroup: false,
                container_name: String::new(),
            })?;
            manager.apply(&ControllerOpt {
                resources: &resources,
                disable_oom_killer: false,
                oom_score_adj: None,
                freezer_state: None,
            })?;
            Ok(())
        })
        .await
        .map_err(internal)?
        .map_err(|e| status_error(Code::UNKNOWN, format!("updating resources: {e:#}")))?;
        Ok(api::Empty::new())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let state = self.state.lock().await;
        let task_pid = state
            .containers
            .get(&req.id)
            .map(|c| c.init.pid as u32)
            .unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        // Shut down only once the pod has no container left, and the node agent has the
        // pod's last escape counts (bounded wait: it may be away).
        if self.state.lock().await.containers.is_empty() {
            if let Some(telemetry) = self.telemetry.as_ref().filter(|t| t.total() > 0) {
                if !telemetry.flush(TELEMETRY_FLUSH).await {
                    tracing::warn!(
                        attempts = telemetry.total(),
                        "exiting before the node agent acknowledged every escape attempt"
                    );
                }
            }
            if let Some(notify) = &self.notify {
                let _ = std::fs::remove_file(&notify.path);
            }
            self.exit.signal();
        }
        Ok(api::Empty::new())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let state = self.state.lock().await;
        let process = Self::find(&state, &req.id, &req.exec_id)?;
        if let Some(master) = &process.terminal {
            console::resize(master, req.width as u16, req.height as u16).map_err(internal)?;
        }
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        // The container holds containerd's stdin FIFO itself; containerd closing its end is
        // what the process sees as end of input.
        let state = self.state.lock().await;
        Self::find(&state, &req.id, &req.exec_id)?;
        Ok(api::Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Err(status_error(Code::UNIMPLEMENTED, "pause is not supported"))
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(status_error(Code::UNIMPLEMENTED, "resume is not supported"))
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(status_error(
            Code::UNIMPLEMENTED,
            "checkpoint is not supported",
        ))
    }
}
