//! Task API Start and Exec: releasing a created container's init, and running a process in a
//! running container (through the launcher, which gives it the init's namespaces, seccomp
//! filter and capabilities).

use std::path::PathBuf;

use containerd_shim_protos::api;
use serde_json::Value;

use super::create::receive_terminal;
use super::{internal, TaskError, TaskResult, TaskService};
use crate::console::ConsoleSocket;
use crate::container::Process;
use crate::launcher::{ExecRequest, LaunchRequest, StdioPaths};
use crate::policy;

/// libcontainer's init waits on this socket in the container's state directory until told to
/// exec the container's process.
const INIT_SOCKET: &str = "notify.sock";
const START_MESSAGE: &[u8] = b"start container";

/// Tells a created container's init to exec the container's process (blocking). The socket
/// is reached through a directory descriptor: its full path can exceed a socket address, and
/// changing directory is process-wide.
pub fn release_init(container_state_dir: &std::path::Path) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(container_state_dir)?;
    let path = format!("/proc/self/fd/{}/{INIT_SOCKET}", dir.as_raw_fd());
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.write_all(START_MESSAGE)
}

impl TaskService {
    /// Starts a created container's init; returns its pid.
    pub async fn start_init(&self, id: &str) -> TaskResult<i32> {
        let pid = self.state.lock().await.containers.check_startable(id)?;
        let dir = self.libcontainer_root().join(id);
        tokio::task::spawn_blocking(move || release_init(&dir))
            .await
            .map_err(internal)?
            .map_err(|e| TaskError::Unknown(format!("starting the container: {e}")))?;
        self.state.lock().await.containers.mark_started(id);
        Ok(pid)
    }

    /// Registers an exec: its process hardened like the init's, kept until started.
    pub async fn add_exec(&self, req: &api::ExecProcessRequest) -> TaskResult<()> {
        self.refuse_after_response().await?;
        let mut process: Value = serde_json::from_slice(&req.spec.value)
            .map_err(|e| TaskError::InvalidArgument(format!("exec process: {e}")))?;
        policy::harden_exec_process(&mut process)
            .map_err(|e| TaskError::FailedPrecondition(e.to_string()))?;
        let path: PathBuf = {
            let state = self.state.lock().await;
            let container = state.containers.get(&req.id)?;
            container
                .state_dir
                .join(format!("exec-{}.json", req.exec_id))
        };
        // The exec's process spec holds its environment: root only.
        super::create::write_private(&path, &serde_json::to_vec(&process).map_err(internal)?)
            .map_err(internal)?;
        let mut exec = Process::new(
            StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
            },
            req.terminal,
        );
        exec.spec = Some(path.clone());
        let added = self
            .state
            .lock()
            .await
            .containers
            .add_exec(&req.id, &req.exec_id, exec);
        if added.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        Ok(added?)
    }

    /// No process enters a pod the runtime killed or quarantined: a frozen cgroup would hold
    /// the launcher (and the kubelet's probe) for ever, and a quarantine keeps the pod as the
    /// attempt left it.
    async fn refuse_after_response(&self) -> TaskResult<()> {
        match self.state.lock().await.pod.response_applied {
            Some(taken) => Err(TaskError::FailedPrecondition(format!(
                "the sandbox was {} after an escape attempt: nothing more runs in this pod; delete the pod to get a fresh one",
                match taken {
                    agentsandbox_contract::ResponseTaken::Killed => "killed",
                    _ => "quarantined",
                }
            ))),
            None => Ok(()),
        }
    }

    /// Starts a registered exec; returns its pid.
    pub async fn start_exec(&self, id: &str, exec_id: &str) -> TaskResult<i32> {
        self.refuse_after_response().await?;
        let (process, stdio, init_pid, wants_terminal) = {
            let state = self.state.lock().await;
            let (container, exec) = state.containers.check_exec_startable(id, exec_id)?;
            (
                exec.spec
                    .clone()
                    .ok_or_else(|| internal("exec has no process"))?,
                exec.stdio.clone(),
                container.init.pid,
                exec.wants_terminal,
            )
        };
        let console = match wants_terminal {
            true => Some(ConsoleSocket::bind(&self.notify_dir()).map_err(internal)?),
            false => None,
        };
        tracing::info!(container = %id, exec = %exec_id, terminal = wants_terminal, "starting exec");
        let console_socket = console.as_ref().map(|c| c.path.clone());
        // The terminal is attached while the launcher waits for it, before the process runs.
        let terminal = console.map(|console| {
            let stdio = stdio.clone();
            tokio::spawn(async move { receive_terminal(console, &stdio).await })
        });
        let launched = self
            .run_launcher(LaunchRequest::Exec(ExecRequest {
                id: id.to_string(),
                bundle: self.container_dir(id).join("bundle"),
                process,
                stdio: stdio.clone(),
                init_pid,
                console_socket,
            }))
            .await;
        let pid = match launched {
            Ok(pid) => pid,
            Err(err) => {
                if let Some(terminal) = terminal {
                    terminal.abort();
                }
                return Err(err);
            }
        };
        let terminal = match terminal {
            Some(terminal) => Some(terminal.await.map_err(internal)??),
            None => None,
        };
        self.register_running(id, exec_id, pid, terminal).await;
        Ok(pid)
    }
}
