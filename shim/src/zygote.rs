//! The zygote: one launcher process per pod, started once from a sealed in-memory copy of
//! the small launcher binary (`agentsandbox-launcher`), that forks a worker for each launch
//! request. Creating or entering a container then costs a `fork` of a small single-threaded
//! process instead of an `exec` of a large binary and a copy of it into a sealed memfd.
//!
//! - The shim sends a request as one message on a SOCK_SEQPACKET pair, with two descriptors:
//!   the worker's reply socket and a pipe for libcontainer's diagnostics.
//! - The worker handles the request ([`crate::launcher::handle`]), sends one reply and exits.
//!   Containers and exec'd processes it creates are its children until then; when it exits
//!   they are re-parented to the shim (a child subreaper), whose reaper collects their exit.
//! - Everything that enters a container is a fork of the zygote, which runs from the sealed
//!   copy: nothing inside a container can reach a binary on the host through
//!   `/proc/<pid>/exe` (CVE-2019-5736).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::{fork, pipe2, ForkResult};

use crate::launcher::{LaunchRequest, LaunchResponse, Launcher};
use crate::sys::fd_passing::{receive_with_fds, send_with_fds};

/// The launcher binary, installed next to the shim.
pub const LAUNCHER_NAME: &str = "agentsandbox-launcher";

/// First argument that makes the launcher binary a zygote (its only mode).
pub const ZYGOTE_ARG: &str = "zygote";

/// Largest launch request or reply (a create request with many binds and egress rules is a
/// few KiB; a SOCK_SEQPACKET message must fit the socket's send buffer).
const MAX_MESSAGE: usize = 128 * 1024;

/// How long the shim waits for a worker's reply. A create that mounts a large image with an
/// idmapped layer per directory takes well under a second; this only bounds a hung worker.
const REPLY_TIMEOUT: Duration = Duration::from_secs(120);

/// Where the shims register their zygotes (root only), so that a new zygote runs from the
/// same sealed memfd as a running one: the launcher's pages are then shared by every pod on
/// the node instead of copied per pod. One file per zygote, named by its pid, holding its
/// start time (against pid reuse) and the installed launcher it was copied from.
pub const ZYGOTE_REGISTRY: &str = "/run/agentsandbox/zygotes";

/// The shim's side: starts the zygote (once per shim, again if it died) and sends it requests.
pub struct ZygoteLauncher {
    program: PathBuf,
    registry: PathBuf,
    zygote: Mutex<Option<Zygote>>,
}

struct Zygote {
    child: Child,
    control: OwnedFd,
}

impl ZygoteLauncher {
    /// The launcher binary at `program` (see [`launcher_beside`]); zygotes registered in
    /// `registry` ([`ZYGOTE_REGISTRY`]).
    pub fn new(program: PathBuf, registry: PathBuf) -> Self {
        Self {
            program,
            registry,
            zygote: Mutex::new(None),
        }
    }

    /// Starts the zygote now, so that the pod's first container does not wait for it
    /// (blocking: call from a blocking thread).
    pub fn prestart(&self) -> Result<()> {
        let mut zygote = self.zygote.lock().unwrap_or_else(|e| e.into_inner());
        if zygote.is_none() {
            *zygote = Some(self.spawn()?);
        }
        Ok(())
    }

    /// The zygote's pid, if one runs.
    pub fn pid(&self) -> Option<u32> {
        let zygote = self.zygote.lock().unwrap_or_else(|e| e.into_inner());
        zygote.as_ref().map(|z| z.child.id())
    }

    fn spawn(&self) -> Result<Zygote> {
        let key = launcher_key(&self.program).with_context(|| {
            format!(
                "the launcher {} (the node agent installs it next to the shim)",
                self.program.display()
            )
        })?;
        // A running zygote's sealed copy of the same launcher, else a copy of our own.
        let shared = self.registered_copy(&key);
        let mut own_copy;
        let mut from_shared;
        let command: &mut Command = match &shared {
            Some(copy) => {
                from_shared = Command::new(format!("/proc/self/fd/{}", copy.as_raw_fd()));
                &mut from_shared
            }
            None => {
                let mut file = File::open(&self.program)
                    .with_context(|| format!("opening the launcher {}", self.program.display()))?;
                own_copy = sealed_copy(&mut file)?;
                &mut own_copy
            }
        };
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .context("creating the zygote's control socket")?;
        std::os::unix::process::CommandExt::arg0(command, LAUNCHER_NAME);
        let child = command
            .arg(ZYGOTE_ARG)
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the launcher zygote")?;
        drop(shared);
        self.register(child.id(), &key);
        tracing::debug!(pid = child.id(), "launcher zygote started");
        Ok(Zygote {
            child,
            control: ours,
        })
    }

    /// The sealed memfd a registered zygote of the same launcher runs from, opened through
    /// its /proc/<pid>/exe and checked: the process is the one registered (same start time)
    /// and the file is sealed. Stale entries are removed.
    fn registered_copy(&self, key: &str) -> Option<File> {
        let entries = std::fs::read_dir(&self.registry).ok()?;
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let recorded = std::fs::read_to_string(&path).unwrap_or_default();
            let Some((started, recorded_key)) = recorded.trim().split_once(' ') else {
                let _ = std::fs::remove_file(&path);
                continue;
            };
            if process_start_time(pid).as_deref() != Some(started) {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if recorded_key != key {
                continue;
            }
            let Ok(exe) = File::open(format!("/proc/{pid}/exe")) else {
                continue;
            };
            // Still the registered process after the open: the file is its executable.
            if process_start_time(pid).as_deref() != Some(started) {
                continue;
            }
            if pentacle::SealOptions::new()
                .executable(true)
                .is_sealed(&exe)
            {
                return Some(exe);
            }
        }
        None
    }

    fn register(&self, pid: u32, key: &str) {
        let Some(started) = process_start_time(pid) else {
            return;
        };
        let written = std::fs::create_dir_all(&self.registry)
            .and_then(|_| {
                std::fs::set_permissions(
                    &self.registry,
                    std::os::unix::fs::PermissionsExt::from_mode(0o700),
                )
            })
            .and_then(|_| {
                std::fs::write(
                    self.registry.join(pid.to_string()),
                    format!("{started} {key}\n"),
                )
            });
        if let Err(err) = written {
            tracing::debug!(error = %err, "zygote not registered (the next pod copies the launcher again)");
        }
    }

    /// Hands one request to the zygote (starting it if needed, once more if it had died).
    fn send(&self, request: &[u8], fds: &[BorrowedFd<'_>]) -> Result<()> {
        let mut zygote = self.zygote.lock().unwrap_or_else(|e| e.into_inner());
        for attempt in 0..2 {
            if zygote.is_none() {
                *zygote = Some(self.spawn()?);
            }
            let control = zygote.as_ref().expect("just set").control.as_fd();
            match send_with_fds(control, request, fds) {
                Ok(()) => return Ok(()),
                Err(nix::Error::EMSGSIZE) => {
                    bail!("the launch request ({} bytes) is too large", request.len())
                }
                Err(err) => {
                    tracing::warn!(error = %err, attempt, "the launcher zygote is gone; starting another");
                    if let Some(mut gone) = zygote.take() {
                        let _ = gone.child.kill();
                    }
                }
            }
        }
        bail!("the launcher zygote does not take requests")
    }
}

impl Launcher for ZygoteLauncher {
    fn launch(&self, request: &LaunchRequest) -> Result<LaunchResponse> {
        let bytes = serde_json::to_vec(request)?;
        if bytes.len() > MAX_MESSAGE {
            bail!("the launch request ({} bytes) is too large", bytes.len());
        }
        let (reply, worker_reply) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let (diagnostics, worker_diagnostics) = pipe2(OFlag::O_CLOEXEC)?;
        self.send(&bytes, &[worker_reply.as_fd(), worker_diagnostics.as_fd()])?;
        // Only the worker holds the other ends now: its exit without a reply is an EOF.
        drop(worker_reply);
        drop(worker_diagnostics);
        let reply = std::os::unix::net::UnixDatagram::from(reply);
        reply.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let (answer, _) = receive_with_fds(reply.as_raw_fd(), MAX_MESSAGE)
            .map_err(|e| anyhow!("no answer from the launcher within {REPLY_TIMEOUT:?}: {e}"))?;
        let response = match serde_json::from_slice::<LaunchResponse>(&answer) {
            Ok(response) => response,
            Err(_) => bail!(
                "the launcher exited without an answer: {}",
                available_diagnostics(diagnostics).trim()
            ),
        };
        // A created container holds a copy of the diagnostics pipe until it execs: read what
        // is there (the worker wrote it before replying), never wait for the end.
        Ok(match response {
            LaunchResponse::Failed(message) => {
                let text = available_diagnostics(diagnostics);
                let errors: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains("ERROR"))
                    .take(8)
                    .collect();
                if errors.is_empty() {
                    LaunchResponse::Failed(message)
                } else {
                    LaunchResponse::Failed(format!("{message} ({})", errors.join("; ")))
                }
            }
            response => response,
        })
    }
}

/// Which installed launcher a copy was made from: its file's identity (the node agent
/// replaces it by rename, so a new launcher is a new inode) and modification time.
fn launcher_key(program: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(program)?;
    Ok(format!(
        "{}:{}:{}:{}.{}",
        meta.dev(),
        meta.ino(),
        meta.size(),
        meta.mtime(),
        meta.mtime_nsec()
    ))
}

/// Field 22 of /proc/<pid>/stat: when the process started (clock ticks after boot).
fn process_start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(String::from)
}

/// The launcher as a command that runs a sealed in-memory copy of it. Sealing can fail with
/// EBUSY while the kernel still holds references to the copy's pages from the splice that
/// filled it (seen under load in critest); that is transient, so it is retried.
fn sealed_copy(file: &mut File) -> Result<pentacle::SealedCommand> {
    use std::io::{Seek, SeekFrom};
    let mut attempt = 0u32;
    loop {
        match pentacle::SealedCommand::new(file) {
            Ok(command) => return Ok(command),
            Err(err) if err.raw_os_error() == Some(libc::EBUSY) && attempt < 10 => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(5 * u64::from(attempt)));
                file.seek(SeekFrom::Start(0))?;
            }
            Err(err) => {
                return Err(
                    anyhow::Error::new(err).context("copying the launcher into a sealed memfd")
                )
            }
        }
    }
}

/// The launcher binary next to the running shim's own file.
pub fn launcher_beside(shim: &Path) -> PathBuf {
    shim.parent().unwrap_or(Path::new("/")).join(LAUNCHER_NAME)
}

fn available_diagnostics(pipe: OwnedFd) -> String {
    let _ = fcntl(pipe.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let mut text = Vec::new();
    let _ = File::from(pipe).read_to_end(&mut text);
    String::from_utf8_lossy(&text).into_owned()
}

/// Where a worker's diagnostics go (-1: nowhere, in the zygote itself).
static DIAGNOSTICS_FD: AtomicI32 = AtomicI32::new(-1);

/// Writes tracing output to the current worker's diagnostics pipe.
struct DiagnosticsWriter;

impl Write for DiagnosticsWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let fd = DIAGNOSTICS_FD.load(Ordering::Relaxed);
        if fd < 0 {
            return Ok(buf.len());
        }
        // SAFETY: the worker keeps this descriptor open until it exits.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        nix::unistd::write(fd, buf).map_err(std::io::Error::from)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The zygote's main: serves requests from the control socket on stdin until the shim closes
/// it. Single-threaded, so that its forks may do anything.
pub fn run_zygote() -> i32 {
    tracing_subscriber::fmt()
        .with_writer(|| DiagnosticsWriter)
        .with_max_level(tracing::Level::WARN)
        .without_time()
        .with_target(false)
        .with_ansi(false)
        .init();
    // The control socket moves off stdin: a worker's children get their own stdio there.
    let control: RawFd = match fcntl(0, FcntlArg::F_DUPFD_CLOEXEC(3)) {
        Ok(fd) => fd,
        Err(err) => {
            eprintln!("{LAUNCHER_NAME}: no control socket on stdin: {err}");
            return 1;
        }
    };
    if let Ok(null) = File::open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
    }
    // Workers are reaped by the kernel; each worker restores the default for libcontainer,
    // which waits for its own children.
    // SAFETY: no handler is installed, only the disposition changes.
    unsafe {
        let _ = nix::sys::signal::signal(
            nix::sys::signal::Signal::SIGCHLD,
            nix::sys::signal::SigHandler::SigIgn,
        );
    }
    loop {
        let (request, fds) = match receive_with_fds(control, MAX_MESSAGE) {
            Ok(message) => message,
            Err(nix::Error::EINTR) => continue,
            Err(err) => {
                eprintln!("{LAUNCHER_NAME}: reading the control socket: {err}");
                return 1;
            }
        };
        if request.is_empty() && fds.is_empty() {
            // The shim is gone.
            return 0;
        }
        let mut fds = fds.into_iter();
        let (Some(reply), Some(diagnostics)) = (fds.next(), fds.next()) else {
            eprintln!("{LAUNCHER_NAME}: a request without its reply channel");
            continue;
        };
        // SAFETY: this process is single-threaded.
        match unsafe { fork() } {
            Ok(ForkResult::Child) => {
                let _ = nix::unistd::close(control);
                // SAFETY: as above, the default disposition.
                unsafe {
                    let _ = nix::sys::signal::signal(
                        nix::sys::signal::Signal::SIGCHLD,
                        nix::sys::signal::SigHandler::SigDfl,
                    );
                }
                DIAGNOSTICS_FD.store(diagnostics.as_raw_fd(), Ordering::Relaxed);
                let response = match serde_json::from_slice::<LaunchRequest>(&request) {
                    Ok(request) => crate::launcher::handle(request)
                        .unwrap_or_else(|err| LaunchResponse::Failed(format!("{err:#}"))),
                    Err(err) => LaunchResponse::Failed(format!("bad launcher request: {err}")),
                };
                let bytes = serde_json::to_vec(&response).unwrap_or_default();
                let _ = send_with_fds(reply.as_fd(), &bytes, &[]);
                drop(diagnostics);
                // SAFETY: leave without running the zygote's destructors.
                unsafe { libc::_exit(0) }
            }
            Ok(ForkResult::Parent { .. }) => {}
            Err(err) => {
                let message = LaunchResponse::Failed(format!("forking a launcher worker: {err}"));
                let bytes = serde_json::to_vec(&message).unwrap_or_default();
                let _ = send_with_fds(reply.as_fd(), &bytes, &[]);
            }
        }
    }
}
