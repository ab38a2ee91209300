//! The pod's containers and their processes as the task API sees them: an explicit state
//! machine per process (Created -> Running -> Stopped), and the table that maps the pids the
//! shim reaps to the process they belong to. Pure bookkeeping: no I/O, no locks.

use std::collections::{BTreeMap, HashMap};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

use crate::cgroups::ContainerCgroup;
use crate::launcher::StdioPaths;

/// Exits of pids that are not (yet) registered are kept for this many pids at most.
const EARLY_EXITS_KEPT: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessStatus {
    Created,
    Running,
    Stopped,
}

/// Why a transition was refused; the message reaches containerd.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TransitionError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("container {0} is not in the created state")]
    NotCreated(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("exec {0} already exists")]
    ExecExists(String),
    #[error("process already finished")]
    Finished,
}

/// An exit as the task API reports it.
pub type ExitStatus = (u32, Timestamp);

/// A process containerd knows: a container's init or an exec.
pub struct Process {
    pub pid: i32,
    /// Taken when the process started: signals go to this process even after its pid is
    /// reused (an exited process's pidfd signals nothing).
    pub pidfd: Option<Arc<OwnedFd>>,
    pub status: ProcessStatus,
    pub stdio: StdioPaths,
    exit: watch::Sender<Option<ExitStatus>>,
    /// For execs: the hardened OCI process, until started.
    pub spec: Option<PathBuf>,
    pub wants_terminal: bool,
    /// The terminal's master once the process runs.
    pub terminal: Option<Arc<OwnedFd>>,
}

impl Process {
    pub fn new(stdio: StdioPaths, wants_terminal: bool) -> Process {
        Process {
            pid: 0,
            pidfd: None,
            status: ProcessStatus::Created,
            stdio,
            exit: watch::channel(None).0,
            spec: None,
            wants_terminal,
            terminal: None,
        }
    }

    pub fn exited(&self) -> Option<ExitStatus> {
        self.exit.borrow().clone()
    }

    /// Waits for the exit (from `Task::wait`).
    pub fn subscribe_exit(&self) -> watch::Receiver<Option<ExitStatus>> {
        self.exit.subscribe()
    }

    pub fn api_status(&self) -> api::Status {
        match self.status {
            ProcessStatus::Created => api::Status::CREATED,
            ProcessStatus::Running => api::Status::RUNNING,
            ProcessStatus::Stopped => api::Status::STOPPED,
        }
    }

    fn stop(&mut self, exit: ExitStatus) {
        self.status = ProcessStatus::Stopped;
        self.exit.send_replace(Some(exit));
    }
}

pub struct Container {
    pub bundle: String,
    /// Everything the shim made for the container (rootfs, staged binds, hardened bundle).
    pub state_dir: PathBuf,
    pub cgroup: ContainerCgroup,
    /// The pod's sandbox (pause) container.
    pub is_sandbox: bool,
    pub init: Process,
    pub execs: HashMap<String, Process>,
}

impl Container {
    pub fn process(&self, exec_id: &str) -> Result<&Process, TransitionError> {
        if exec_id.is_empty() {
            Ok(&self.init)
        } else {
            self.execs
                .get(exec_id)
                .ok_or_else(|| TransitionError::NotFound(exec_id.to_string()))
        }
    }

    fn process_mut(&mut self, exec_id: &str) -> Result<&mut Process, TransitionError> {
        if exec_id.is_empty() {
            Ok(&mut self.init)
        } else {
            self.execs
                .get_mut(exec_id)
                .ok_or_else(|| TransitionError::NotFound(exec_id.to_string()))
        }
    }
}

/// The pod's containers, and which container process each reaped pid was.
#[derive(Default)]
pub struct Containers {
    containers: HashMap<String, Container>,
    /// pid -> (container id, exec id)
    pids: HashMap<i32, (String, Option<String>)>,
    /// Exits of pids not registered yet: an exec may exit before its pid is recorded.
    early_exits: BTreeMap<i32, i32>,
}

/// A process exit for containerd's TaskExit event.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedExit {
    pub container_id: String,
    pub exec_id: Option<String>,
    pub pid: i32,
    pub code: u32,
    pub at: Timestamp,
}

impl Containers {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }

    pub fn get(&self, id: &str) -> Result<&Container, TransitionError> {
        self.containers
            .get(id)
            .ok_or_else(|| TransitionError::NotFound(id.to_string()))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Container)> {
        self.containers.iter()
    }

    pub fn process(&self, id: &str, exec_id: &str) -> Result<&Process, TransitionError> {
        self.get(id)?.process(exec_id)
    }

    /// A container whose init was just created (pid known, not started).
    pub fn insert_created(&mut self, id: &str, mut container: Container, pid: i32) {
        container.init.pid = pid;
        self.containers.insert(id.to_string(), container);
    }

    /// Created -> Running for a container's init.
    pub fn check_startable(&self, id: &str) -> Result<i32, TransitionError> {
        let init = &self.get(id)?.init;
        if init.status != ProcessStatus::Created {
            return Err(TransitionError::NotCreated(id.to_string()));
        }
        Ok(init.pid)
    }

    pub fn mark_started(&mut self, id: &str) {
        if let Some(c) = self.containers.get_mut(id) {
            if c.init.status == ProcessStatus::Created {
                c.init.status = ProcessStatus::Running;
            }
        }
    }

    /// Registers an exec (not started yet).
    pub fn add_exec(
        &mut self,
        id: &str,
        exec_id: &str,
        exec: Process,
    ) -> Result<(), TransitionError> {
        let container = self
            .containers
            .get_mut(id)
            .ok_or_else(|| TransitionError::NotFound(id.to_string()))?;
        if container.execs.contains_key(exec_id) {
            return Err(TransitionError::ExecExists(exec_id.to_string()));
        }
        container.execs.insert(exec_id.to_string(), exec);
        Ok(())
    }

    /// An exec may start only in a running container.
    pub fn check_exec_startable(
        &self,
        id: &str,
        exec_id: &str,
    ) -> Result<(&Container, &Process), TransitionError> {
        let container = self.get(id)?;
        let exec = container.process(exec_id)?;
        if container.init.status != ProcessStatus::Running {
            return Err(TransitionError::NotRunning(id.to_string()));
        }
        Ok((container, exec))
    }

    /// A process started: Running, with its pid and pidfd. Returns an exit that raced ahead
    /// of this registration, which the caller must then record.
    pub fn mark_process_running(
        &mut self,
        id: &str,
        exec_id: &str,
        pid: i32,
        pidfd: Option<Arc<OwnedFd>>,
        terminal: Option<Arc<OwnedFd>>,
    ) -> Option<i32> {
        if let Some(process) = self
            .containers
            .get_mut(id)
            .and_then(|c| c.process_mut(exec_id).ok())
        {
            process.pid = pid;
            process.pidfd = pidfd;
            if !exec_id.is_empty() {
                process.status = ProcessStatus::Running;
            }
            if terminal.is_some() {
                process.terminal = terminal;
            }
        }
        let exec = (!exec_id.is_empty()).then(|| exec_id.to_string());
        self.pids.insert(pid, (id.to_string(), exec));
        self.early_exits.remove(&pid)
    }

    /// A reaped pid: the process it was, now Stopped; `None` when the pid is not (yet) one of
    /// ours (kept for a registration that may follow).
    pub fn record_exit(&mut self, pid: i32, code: i32, at: Timestamp) -> Option<RecordedExit> {
        let Some((id, exec_id)) = self.pids.remove(&pid) else {
            self.early_exits.insert(pid, code);
            while self.early_exits.len() > EARLY_EXITS_KEPT {
                self.early_exits.pop_first();
            }
            return None;
        };
        let container = self.containers.get_mut(&id)?;
        let process = container
            .process_mut(exec_id.as_deref().unwrap_or_default())
            .ok()?;
        process.stop((code as u32, at.clone()));
        Some(RecordedExit {
            container_id: id,
            exec_id,
            pid,
            code: code as u32,
            at,
        })
    }

    /// Only a running process can take a signal.
    pub fn signal_target(&self, id: &str, exec_id: &str) -> Result<&Process, TransitionError> {
        let process = self.process(id, exec_id)?;
        if process.exited().is_some() || process.pid == 0 {
            return Err(TransitionError::Finished);
        }
        Ok(process)
    }

    pub fn remove_exec(&mut self, id: &str, exec_id: &str) -> Result<Process, TransitionError> {
        self.containers
            .get_mut(id)
            .ok_or_else(|| TransitionError::NotFound(id.to_string()))?
            .execs
            .remove(exec_id)
            .ok_or_else(|| TransitionError::NotFound(exec_id.to_string()))
    }

    pub fn remove(&mut self, id: &str) -> Result<Container, TransitionError> {
        let container = self
            .containers
            .remove(id)
            .ok_or_else(|| TransitionError::NotFound(id.to_string()))?;
        self.pids.retain(|_, (owner, _)| owner != id);
        Ok(container)
    }
}
