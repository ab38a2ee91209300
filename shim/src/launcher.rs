//! What the launcher does: the work that must not happen in the multi-threaded shim process.
//! libcontainer creates processes with raw `clone3`, and entering namespaces or changing
//! directory is process-wide. Each request runs in a single-threaded worker that the pod's
//! zygote forks ([`crate::zygote`]); the containers and processes a worker creates are its
//! children until it exits, then the shim's (a child subreaper), which reaps them.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context, Result};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use crate::egress::EgressRules;
use crate::idmap::IdRange;
use crate::policy::NamespaceJoins;
use crate::sys::mounts::{self, IdmapPlan, RootfsMount};
use crate::sys::namespaces;

/// containerd's FIFOs for a process (empty: none).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct CreateRequest {
    pub id: String,
    /// The pod's first container pins the pod's user namespace here, mapping container ids
    /// 0.. onto (host start, size).
    pub pin_user_namespace: Option<(PathBuf, (u32, u32))>,
    /// libcontainer's state directory.
    pub root: PathBuf,
    /// Directory holding the hardened config.json.
    pub bundle: PathBuf,
    pub stdio: StdioPaths,
    pub joins: NamespaceJoins,
    pub rootfs: Vec<RootfsMount>,
    pub rootfs_target: PathBuf,
    pub idmap: Option<IdmapPlan>,
    pub binds: Vec<mounts::StagedBind>,
    /// Where to send the container's terminal (tty: true).
    pub console_socket: Option<PathBuf>,
    /// Everything the launcher mounts is below this directory (cleaned up on failure).
    pub state_dir: PathBuf,
    pub egress: Option<EgressRules>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ExecRequest {
    pub id: String,
    /// Directory holding the container's hardened config.json (its seccomp filter).
    pub bundle: PathBuf,
    /// JSON file with the (hardened) OCI process.
    pub process: PathBuf,
    pub stdio: StdioPaths,
    pub init_pid: i32,
    /// Where to send the process's terminal (kubectl exec -t).
    pub console_socket: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum LaunchRequest {
    Create(Box<CreateRequest>),
    Exec(ExecRequest),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum LaunchResponse {
    Pid(i32),
    Failed(String),
}

/// Where container processes come from: the pod's zygote ([`crate::zygote::ZygoteLauncher`]),
/// or a fake in the task service's tests. Blocking: called from a blocking thread.
pub trait Launcher: Send + Sync + 'static {
    fn launch(&self, request: &LaunchRequest) -> Result<LaunchResponse>;
}

/// Handles one request in this (single-threaded) process: a worker forked by the zygote.
pub fn handle(request: LaunchRequest) -> Result<LaunchResponse> {
    match request {
        LaunchRequest::Create(request) => {
            let result = create(&request);
            if result.is_err() {
                mounts::unmount_tree(&request.state_dir);
            }
            Ok(LaunchResponse::Pid(result?))
        }
        LaunchRequest::Exec(request) => Ok(LaunchResponse::Pid(exec(&request)?)),
    }
}

fn open_stdio(path: &str, for_writing: bool) -> Result<OwnedFd> {
    let path = if path.is_empty() { "/dev/null" } else { path };
    let file = if for_writing {
        OpenOptions::new().write(true).open(path)
    } else {
        // A FIFO opened for reading would block until containerd opens its end.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)?;
        nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::empty()),
        )?;
        Ok(file)
    }
    .with_context(|| format!("opening stdio {path}"))?;
    Ok(file.into())
}

fn create(request: &CreateRequest) -> Result<i32> {
    if let Some((path, (host_start, size))) = &request.pin_user_namespace {
        namespaces::pin_user_namespace(
            path,
            IdRange {
                host_start: *host_start,
                size: *size,
            },
        )
        .context("creating the pod's user namespace")?;
    }
    mounts::mount_rootfs(
        &request.rootfs,
        &request.rootfs_target,
        request.idmap.as_ref(),
    )?;
    mounts::bind_staged(
        &request.binds,
        request
            .idmap
            .as_ref()
            .map(|plan| plan.user_namespace.as_path()),
    )?;
    namespaces::join(&request.joins)?;
    if request.pin_user_namespace.is_some() && request.joins.network.is_some() {
        // Ports below 1024 are "privileged" in a network namespace the host owns, which the
        // sandbox's root (root of its own user namespace only) is not: in the pod's own
        // network namespace every port is the pod's to bind (nginx on 80).
        std::fs::write("/proc/sys/net/ipv4/ip_unprivileged_port_start", "0")
            .context("opening low ports to the pod's own network namespace")?;
    }
    for (key, value) in &request.joins.sysctls {
        std::fs::write(crate::policy::sysctl_path(key), value)
            .with_context(|| format!("setting sysctl {key} in the pod's namespaces"))?;
    }
    match (&request.egress, &request.joins.network) {
        (Some(rules), Some(_)) => {
            crate::egress::apply_rules(rules, None).context("installing the egress firewall")?;
        }
        // No pod network namespace to join (a container run straight through containerd,
        // not by the kubelet): libcontainer gives it a fresh one of its own, loopback only.
        // The rules must never land in this process's namespace: the host's.
        (Some(_), None) => {
            tracing::info!(container = %request.id, "no pod network namespace: the container's own has nothing to filter")
        }
        (None, _) => {}
    }
    let mut builder = ContainerBuilder::new(request.id.clone(), SyscallType::default())
        .with_root_path(&request.root)?;
    if request.console_socket.is_some() {
        builder = builder.with_console_socket(request.console_socket.as_ref());
    } else {
        builder = builder
            .with_stdin(open_stdio(&request.stdio.stdin, false)?)
            .with_stdout(open_stdio(&request.stdio.stdout, true)?)
            .with_stderr(open_stdio(&request.stdio.stderr, true)?);
    }
    let container = builder
        .as_init(&request.bundle)
        .with_systemd(false)
        .with_detach(true)
        // A child of this worker, re-parented to the shim when the worker exits (as a sibling
        // it would be the zygote's child, and the zygote reaps nothing for the shim).
        .as_sibling(false)
        .build()
        .map_err(|e| anyhow::Error::new(e).context("creating the container"))?;
    container
        .pid()
        .map(|p| p.as_raw())
        .ok_or_else(|| anyhow!("libcontainer returned a container without a pid"))
}

fn exec(request: &ExecRequest) -> Result<i32> {
    let process: oci_spec::runtime::Process = serde_json::from_str(
        &std::fs::read_to_string(&request.process).context("reading the exec process")?,
    )
    .context("parsing the exec process")?;
    let spec = oci_spec::runtime::Spec::load(request.bundle.join("config.json"))
        .map_err(|e| anyhow!("reading the container's spec: {e}"))?;
    let seccomp = spec.linux().as_ref().and_then(|l| l.seccomp().clone());
    let rlimits = process
        .rlimits()
        .clone()
        .or_else(|| spec.process().as_ref().and_then(|p| p.rlimits().clone()))
        .unwrap_or_default();
    crate::sys::exec::exec_in_container(
        &process,
        crate::sys::exec::ExecContext {
            container_id: &request.id,
            init_pid: request.init_pid,
            seccomp: seccomp.as_ref(),
            rlimits: &rlimits,
            console_socket: request.console_socket.as_deref(),
            stdio: [
                open_stdio(&request.stdio.stdin, false)?,
                open_stdio(&request.stdio.stdout, true)?,
                open_stdio(&request.stdio.stderr, true)?,
            ],
        },
    )
}

/// Reads a file that may not exist (yet).
pub fn read_optional(path: &Path) -> Option<String> {
    let mut s = String::new();
    File::open(path).ok()?.read_to_string(&mut s).ok()?;
    Some(s)
}
