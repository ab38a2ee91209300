//! The shim process: what containerd's shim protocol asks of it besides the task API (start
//! a shim per pod, clean up after a dead one, serve until told to exit), and the wiring of one
//! pod's task service to containerd's events, the process reaper, the seccomp listener and
//! the escape-attempt telemetry.

use std::path::Path;
use std::sync::Arc;

use agentsandbox_contract::{cri, ResponseTaken};
use async_trait::async_trait;
use containerd_shim::asynchronous::monitor::monitor_subscribe;
use containerd_shim::asynchronous::{spawn, Shim};
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error as ShimError, Flags, StartOpts};
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::ttrpc::context::Context;

use crate::cgroups::ContainerCgroup;
use crate::notify::NotifyListener;
use crate::task::{
    container_dir, libcontainer_root, now, remove_container_leftovers, EventSink, TaskService,
    STATE_ROOT,
};
use crate::telemetry::Telemetry;
use crate::zygote::{launcher_beside, ZygoteLauncher, ZYGOTE_REGISTRY};

/// containerd's event publisher for one namespace.
struct ContainerdEvents {
    publisher: RemotePublisher,
    namespace: String,
}

#[async_trait]
impl EventSink for ContainerdEvents {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(err) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            tracing::warn!(error = %err, topic, "publishing event failed");
        }
    }
}

pub struct Service {
    namespace: String,
    exit: Arc<containerd_shim::asynchronous::ExitSignal>,
}

fn read_bundle_spec(bundle: &Path) -> std::io::Result<serde_json::Value> {
    crate::task::read_bundle_spec(bundle)
}

/// The `start` action, whichever protocol containerd used: starts (or finds) the pod's shim
/// server and returns its address. The cwd is the container's bundle.
pub async fn start_shim_server(opts: StartOpts) -> Result<String, ShimError> {
    // One shim per pod: CRI marks every container with its pod's sandbox id.
    let grouping = read_bundle_spec(Path::new("."))
        .ok()
        .and_then(|spec| {
            spec["annotations"][cri::SANDBOX_ID]
                .as_str()
                .map(String::from)
        })
        .unwrap_or_else(|| opts.id.clone());
    let address = spawn(opts, &grouping, Vec::new()).await?;
    std::fs::write("address", &address)
        .map_err(|e| ShimError::Other(format!("writing address: {e}")))?;
    Ok(address)
}

#[async_trait]
impl Shim for Service {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            namespace: args.namespace.clone(),
            exit: Arc::new(Default::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, ShimError> {
        start_shim_server(opts).await
    }

    async fn delete_shim(&mut self) -> Result<api::DeleteResponse, ShimError> {
        // containerd cleans up after a shim that is gone: the cwd is the bundle.
        let bundle = std::env::current_dir().map_err(|e| ShimError::Other(e.to_string()))?;
        let id = bundle
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let root = Path::new(STATE_ROOT);
        let dir = container_dir(root, &self.namespace, &id);
        // The hardened spec the shim wrote names the container's cgroup.
        let cgroup = read_bundle_spec(&dir.join("bundle"))
            .ok()
            .and_then(|spec| spec["linux"]["cgroupsPath"].as_str().map(String::from))
            .unwrap_or_default();
        remove_container_leftovers(
            &ContainerCgroup::new(cgroup),
            &libcontainer_root(root, &self.namespace).join(&id),
            true,
        );
        crate::sys::mounts::unmount_tree(&dir);
        let mut response = api::DeleteResponse::new();
        response.exit_status = 128 + libc::SIGKILL as u32;
        response.exited_at = Some(now()).into();
        Ok(response)
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        let events = Arc::new(ContainerdEvents {
            publisher,
            namespace: self.namespace.clone(),
        });
        let state_root = Path::new(STATE_ROOT);
        let shim = std::env::current_exe().unwrap_or_default();
        let launcher = Arc::new(ZygoteLauncher::new(
            launcher_beside(&shim),
            std::path::PathBuf::from(ZYGOTE_REGISTRY),
        ));
        // The zygote starts while containerd is still preparing the first container.
        let prestarted = launcher.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(err) = prestarted.prestart() {
                tracing::error!(error = %format!("{err:#}"), "the launcher zygote did not start");
            }
        });
        let mut service = TaskService::new(&self.namespace, state_root, launcher, events);
        service.exit = self.exit.clone();
        let notify_dir = service.notify_dir();
        let _ = std::fs::create_dir_all(&notify_dir);
        // The notify socket is root's only.
        let _ = std::fs::set_permissions(
            &notify_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        );
        let telemetry = Telemetry::new(agentsandbox_telemetry::socket_path());
        tokio::spawn(telemetry.clone().run());
        let (responses, mut requested) = tokio::sync::mpsc::unbounded_channel();
        let listener = NotifyListener::start(
            &notify_dir.join(format!("{}.sock", std::process::id())),
            telemetry.clone(),
            responses,
        );
        let listener = match listener {
            Ok(listener) => Some(Arc::new(listener)),
            Err(err) => {
                tracing::error!(error = %err, "seccomp listener failed to start");
                None
            }
        };
        let service = service.with_escape_reporting(listener, telemetry);
        let responder = service.clone();
        tokio::spawn(async move {
            while let Some(action) = requested.recv().await {
                let action: agentsandbox_telemetry::v1::Action = action;
                let taken: ResponseTaken = action.taken();
                responder.respond(taken).await;
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
