//! The launcher: a short-lived, single-threaded child of the shim that does what must not
//! happen in the multi-threaded shim process. libcontainer creates processes with raw
//! `clone3`, and entering namespaces or changing directory is process-wide. The shim
//! re-executes its own (sealed) binary with [`LAUNCH_ARG`], writes one JSON request to its
//! stdin and reads one JSON response from its stdout. Containers are created "as siblings",
//! so their processes are children of the shim (a subreaper), which reaps them.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as ProcessStdio};

use anyhow::{anyhow, bail, Context, Result};
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

use crate::egress::EgressRules;
use crate::idmap::IdRange;
use crate::policy::NamespaceJoins;
use crate::sys::mounts::{self, IdmapPlan, RootfsMount};
use crate::sys::namespaces;

/// First argument that turns the shim binary into the launcher.
pub const LAUNCH_ARG: &str = "launch";

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

/// Where container processes come from: the launcher process ([`ProcessLauncher`]), or a
/// fake in the task service's tests. Blocking: called from a blocking thread.
pub trait Launcher: Send + Sync + 'static {
    fn launch(&self, request: &LaunchRequest) -> Result<LaunchResponse>;
}

/// Runs each request in a fresh launcher process (the shim's own binary, sealed).
pub struct ProcessLauncher;

impl Launcher for ProcessLauncher {
    fn launch(&self, request: &LaunchRequest) -> Result<LaunchResponse> {
        launch(request)
    }
}

/// Runs one request in a fresh launcher process (blocking: call from a blocking thread).
pub fn launch(request: &LaunchRequest) -> Result<LaunchResponse> {
    let mut child = Command::new("/proc/self/exe")
        .arg(LAUNCH_ARG)
        .stdin(ProcessStdio::piped())
        .stdout(ProcessStdio::piped())
        .stderr(ProcessStdio::piped())
        .spawn()
        .context("starting the launcher")?;
    // libcontainer's own error reports, kept for the failure message.
    let mut stderr = child.stderr.take().expect("piped");
    let diagnostics = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut stdin = child.stdin.take().expect("piped");
    stdin.write_all(&serde_json::to_vec(request)?)?;
    drop(stdin);
    let mut output = Vec::new();
    child
        .stdout
        .take()
        .expect("piped")
        .read_to_end(&mut output)?;
    // The launcher's exit status is collected by the shim's reaper, not here.
    // A created container holds a copy of the diagnostics pipe until it execs: read it only
    // when the launch failed (then nothing of the container is alive).
    let response: Option<LaunchResponse> = serde_json::from_slice(&output).ok();
    match response {
        Some(LaunchResponse::Failed(message)) => {
            let diagnostics = diagnostics.join().unwrap_or_default();
            let errors: Vec<&str> = diagnostics
                .lines()
                .filter(|l| l.contains("ERROR"))
                .take(8)
                .collect();
            if errors.is_empty() {
                Ok(LaunchResponse::Failed(message))
            } else {
                Ok(LaunchResponse::Failed(format!(
                    "{message} ({})",
                    errors.join("; ")
                )))
            }
        }
        Some(response) => Ok(response),
        None => {
            let diagnostics = diagnostics.join().unwrap_or_default();
            bail!(
                "the launcher exited without an answer: {}",
                diagnostics.trim()
            )
        }
    }
}

/// The launcher's main: one request from stdin, one response to stdout.
pub fn run_launcher() -> i32 {
    // A private copy of stderr (close-on-exec): the container's processes get their own
    // stdio on fd 2 before they exec, and libcontainer's diagnostics must not end up there.
    let diagnostics = nix::fcntl::fcntl(2, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
        .map(|fd| {
            // SAFETY: a fresh descriptor we own.
            File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
        })
        .ok();
    let writer = std::sync::Mutex::new(
        diagnostics.unwrap_or_else(|| File::create("/dev/null").expect("/dev/null")),
    );
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(tracing::Level::WARN)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .init();
    let mut input = Vec::new();
    let response = match std::io::stdin().read_to_end(&mut input) {
        Ok(_) => match serde_json::from_slice::<LaunchRequest>(&input) {
            Ok(request) => match handle(request) {
                Ok(response) => response,
                Err(err) => LaunchResponse::Failed(format!("{err:#}")),
            },
            Err(err) => LaunchResponse::Failed(format!("bad launcher request: {err}")),
        },
        Err(err) => LaunchResponse::Failed(format!("reading launcher request: {err}")),
    };
    let mut stdout = std::io::stdout();
    let _ = stdout.write_all(&serde_json::to_vec(&response).unwrap_or_default());
    let _ = stdout.flush();
    0
}

fn handle(request: LaunchRequest) -> Result<LaunchResponse> {
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
    if let Some(rules) = &request.egress {
        crate::egress::apply_rules(rules, None).context("installing the egress firewall")?;
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
        .as_sibling(true)
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
