//! The seccomp notification listener. libcontainer hands it each container's notify fd (the
//! OCI seccomp agent protocol: the container process state as JSON plus the fd by
//! SCM_RIGHTS). Every notified syscall is an escape-relevant call that is always denied: the
//! listener answers EPERM first (the caller is blocked until it does) and records the attempt
//! afterwards. Arguments are never used for the decision (reading them is racy).

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use libseccomp::{ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::Deserialize;

use crate::policy::seccomp::category_of;
use crate::sys::fd_passing::receive_fd;

/// One denied attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EscapeAttempt {
    pub container: String,
    pub sandbox: String,
    pub pid: u32,
    pub syscall: String,
    pub category: String,
}

/// Exact counts per (container, syscall), kept for the pod's lifetime.
#[derive(Default, Debug)]
pub struct EscapeAttempts {
    pub counts: BTreeMap<(String, String), u64>,
    pub total: u64,
}

#[derive(Deserialize)]
struct ProcessState {
    #[serde(default)]
    metadata: String,
    state: ContainerState,
}

#[derive(Deserialize)]
struct ContainerState {
    id: String,
}

pub struct NotifyListener {
    pub path: PathBuf,
    pub attempts: Arc<Mutex<EscapeAttempts>>,
}

impl NotifyListener {
    /// Listens on `path` (root-only: the directory is 0700) in a background thread.
    pub fn start(path: &Path) -> std::io::Result<NotifyListener> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let attempts = Arc::new(Mutex::new(EscapeAttempts::default()));
        let shared = attempts.clone();
        std::thread::Builder::new()
            .name("seccomp-listener".into())
            .spawn(move || {
                for stream in listener.incoming().flatten() {
                    let shared = shared.clone();
                    std::thread::spawn(move || {
                        if let Err(err) = serve_container(stream, shared) {
                            tracing::warn!(error = %err, "seccomp notify handshake failed");
                        }
                    });
                }
            })?;
        Ok(NotifyListener {
            path: path.to_path_buf(),
            attempts,
        })
    }
}

fn serve_container(stream: UnixStream, attempts: Arc<Mutex<EscapeAttempts>>) -> anyhow::Result<()> {
    let (message, notify_fd) = receive_fd(&stream)?;
    drop(stream);
    let state: ProcessState = serde_json::from_slice(&message)?;
    let fd = notify_fd.as_raw_fd();
    loop {
        // POLLHUP: every process using this filter is gone.
        let mut fds = [PollFd::new(
            std::os::fd::AsFd::as_fd(&notify_fd),
            PollFlags::POLLIN,
        )];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => return Err(err.into()),
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        if revents.contains(PollFlags::POLLIN) {
            let Ok(request) = ScmpNotifReq::receive(fd) else {
                continue;
            };
            // Deny first: the caller is blocked until we answer.
            let _ = ScmpNotifResp::new_error(request.id, -libc::EPERM, ScmpNotifRespFlags::empty())
                .respond(fd);
            let syscall = request
                .data
                .syscall
                .get_name_by_arch(request.data.arch)
                .unwrap_or_else(|_| format!("syscall-{}", i32::from(request.data.syscall)));
            let attempt = EscapeAttempt {
                container: state.state.id.clone(),
                sandbox: state.metadata.clone(),
                pid: request.pid,
                category: category_of(&syscall).unwrap_or("other").to_string(),
                syscall,
            };
            record(&attempts, &attempt);
        } else if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
        {
            return Ok(());
        }
    }
}

fn record(attempts: &Mutex<EscapeAttempts>, attempt: &EscapeAttempt) {
    let mut attempts = attempts.lock().expect("lock");
    *attempts
        .counts
        .entry((attempt.container.clone(), attempt.syscall.clone()))
        .or_default() += 1;
    attempts.total += 1;
    tracing::warn!(
        sandbox = %attempt.sandbox,
        container = %attempt.container,
        pid = attempt.pid,
        syscall = %attempt.syscall,
        category = %attempt.category,
        "escape attempt denied"
    );
}
