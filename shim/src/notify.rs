//! The seccomp notification listener. libcontainer hands it each container's notify fd (the
//! OCI seccomp agent protocol: the container process state as JSON plus the fd by
//! SCM_RIGHTS). Every notified syscall is an escape-relevant call that is always denied: the
//! listener answers EPERM first (the caller is blocked until it does) and records the attempt
//! afterwards. Arguments are never used for the decision (reading them is racy); `clone3`,
//! answered ENOSYS, has its flags read only to tell a namespace request (reported) from libc's
//! first try at a fork or thread (counted, not reported).
//!
//! Memory stays bounded under a flood: the queue from the listeners to the recorder holds at
//! most [`RAW_QUEUE`] attempts; past that an attempt is only counted (per container, syscall
//! and architecture, a map bounded by the number of notified syscalls), so every attempt is
//! still counted exactly while its details are dropped and counted as dropped.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentsandbox_telemetry::v1::{Action, EscapeAttempt};
use libseccomp::{ScmpNotifReq, ScmpNotifResp, ScmpNotifRespFlags};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use serde::Deserialize;
use tokio::sync::mpsc::UnboundedSender;

use crate::policy::seccomp::{category_of, clone3_is_attempt};
use crate::sys::fd_passing::receive_fd;
use crate::telemetry::{summarize, Telemetry};

#[derive(Deserialize)]
struct ProcessState {
    /// The container's name (the shim sets `listenerMetadata` to it), else empty.
    #[serde(default)]
    metadata: String,
    state: ContainerState,
}

#[derive(Deserialize)]
struct ContainerState {
    id: String,
}

/// A denied call as the listener saw it, before it is named and recorded.
struct RawAttempt {
    time_unix_nanos: i64,
    container: Arc<str>,
    host_pid: u32,
    syscall: libseccomp::ScmpSyscall,
    arch: libseccomp::ScmpArch,
    args: [u64; 6],
}

/// Attempts queued for the recorder; past this they are counted without details.
pub const RAW_QUEUE: usize = 4096;

/// Attempts counted without details: (container, syscall, arch) -> count.
type Overflow = HashMap<(Arc<str>, libseccomp::ScmpSyscall, libseccomp::ScmpArch), u64>;

/// Shared by the listener thread and the recorder thread.
struct Shared {
    /// To the recorder thread (bounded).
    raw: Mutex<std::sync::mpsc::SyncSender<RawAttempt>>,
    /// Attempts the full queue could not take.
    overflow: Mutex<Overflow>,
    overflowed: AtomicBool,
    telemetry: Arc<Telemetry>,
    /// The pod's response (an `Action` as i32), set when its sandbox container is created.
    response: AtomicI32,
    /// Where Kill and Quarantine are carried out (the task service).
    responses: UnboundedSender<Action>,
    /// Attempts per (container, syscall), for logging without flooding the log.
    logged: Mutex<HashMap<(String, String), u64>>,
    /// `clone3` on the native architecture, and how many calls without namespace flags were
    /// answered ENOSYS (not attempts: libc's first try at fork or a thread).
    clone3: libseccomp::ScmpSyscall,
    clone3_fallbacks: std::sync::atomic::AtomicU64,
}

pub struct NotifyListener {
    pub path: PathBuf,
    shared: Arc<Shared>,
}

impl NotifyListener {
    /// Listens on `path` (root-only: the directory is 0700) in a background thread.
    pub fn start(
        path: &Path,
        telemetry: Arc<Telemetry>,
        responses: UnboundedSender<Action>,
    ) -> std::io::Result<NotifyListener> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        let (raw, recorded) = std::sync::mpsc::sync_channel::<RawAttempt>(RAW_QUEUE);
        let shared = Arc::new(Shared {
            raw: Mutex::new(raw),
            overflow: Mutex::new(HashMap::new()),
            overflowed: AtomicBool::new(false),
            telemetry,
            response: AtomicI32::new(Action::Denied as i32),
            responses,
            logged: Mutex::new(HashMap::new()),
            clone3: libseccomp::ScmpSyscall::from_name("clone3")
                .unwrap_or_else(|_| libseccomp::ScmpSyscall::from(435)),
            clone3_fallbacks: std::sync::atomic::AtomicU64::new(0),
        });
        let for_recorder = shared.clone();
        std::thread::Builder::new()
            .name("escape-recorder".into())
            .spawn(move || loop {
                match recorded.recv_timeout(Duration::from_millis(100)) {
                    Ok(raw) => {
                        let (attempt, action) = describe(&for_recorder, raw);
                        record(&for_recorder, attempt, action);
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
                }
                if for_recorder.overflowed.swap(false, Ordering::SeqCst) {
                    record_overflow(&for_recorder);
                }
            })?;
        let for_thread = shared.clone();
        std::thread::Builder::new()
            .name("seccomp-listener".into())
            .spawn(move || serve(listener, &for_thread))?;
        Ok(NotifyListener {
            path: path.to_path_buf(),
            shared,
        })
    }

    /// The pod's response to escape attempts.
    pub fn set_response(&self, action: Action) {
        self.shared.response.store(action as i32, Ordering::SeqCst);
    }
}

/// One thread for the whole pod (a shim keeps few threads): accepts each container's notify
/// fd on `listener` and answers the notifications of every container, polling them together.
fn serve(listener: UnixListener, shared: &Shared) {
    let mut containers: Vec<(Arc<str>, OwnedFd)> = Vec::new();
    loop {
        let revents: Vec<PollFlags> = {
            let mut fds = Vec::with_capacity(containers.len() + 1);
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            for (_, fd) in &containers {
                fds.push(PollFd::new(fd.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(err) => {
                    tracing::error!(error = %err, "seccomp listener stopped");
                    return;
                }
            }
            fds.iter()
                .map(|f| f.revents().unwrap_or(PollFlags::empty()))
                .collect()
        };
        // From the end, so that swap_remove only moves entries already looked at.
        for index in (0..containers.len()).rev() {
            let revents = revents[index + 1];
            if revents.contains(PollFlags::POLLIN) {
                let (container, fd) = &containers[index];
                answer(fd.as_raw_fd(), container, shared);
            } else if revents
                .intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL)
            {
                // POLLHUP: every process using this filter is gone.
                containers.swap_remove(index);
            }
        }
        if revents[0].contains(PollFlags::POLLIN) {
            if let Ok((stream, _)) = listener.accept() {
                match handshake(stream) {
                    Ok(container) => containers.push(container),
                    Err(err) => tracing::warn!(error = %err, "seccomp notify handshake failed"),
                }
            }
        }
    }
}

/// A container's name and notify fd, as libcontainer sends them when the container starts.
fn handshake(stream: UnixStream) -> anyhow::Result<(Arc<str>, OwnedFd)> {
    // libcontainer writes right after connecting; a peer that does not must not hold up the
    // other containers' answers for long.
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    let (message, notify_fd) = receive_fd(&stream)?;
    drop(stream);
    let state: ProcessState = serde_json::from_slice(&message)?;
    let container: Arc<str> = if state.metadata.is_empty() {
        state.state.id.into()
    } else {
        state.metadata.into()
    };
    set_sync_wake_up(notify_fd.as_raw_fd());
    Ok((container, notify_fd))
}

/// Answers one pending notification of `container` (deny first) and queues it for the
/// recorder.
fn answer(fd: RawFd, container: &Arc<str>, shared: &Shared) {
    let Ok(request) = ScmpNotifReq::receive(fd) else {
        return;
    };
    let is_clone3 = request.data.syscall == shared.clone3 && request.data.arch == native();
    if is_clone3 {
        // Read before answering: the caller's memory cannot change under a blocked
        // single thread, and the answer is the same either way.
        let flags = read_u64(request.pid, request.data.args[0]);
        let _ = ScmpNotifResp::new_error(request.id, -libc::ENOSYS, ScmpNotifRespFlags::empty())
            .respond(fd);
        if !clone3_is_attempt(flags) {
            let count = shared.clone3_fallbacks.fetch_add(1, Ordering::Relaxed) + 1;
            if count.is_power_of_two() {
                tracing::debug!(%container, count, "clone3 answered ENOSYS (libc falls back to clone)");
            }
            return;
        }
    } else {
        // Deny first: the caller is blocked until we answer.
        let _ = ScmpNotifResp::new_error(request.id, -libc::EPERM, ScmpNotifRespFlags::empty())
            .respond(fd);
    }
    // Everything else happens on the recorder thread: this one goes straight back to
    // answering (a flood is paced by this loop).
    let queued = shared.raw.lock().expect("lock").try_send(RawAttempt {
        time_unix_nanos: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or_default(),
        container: container.clone(),
        host_pid: request.pid,
        syscall: request.data.syscall,
        arch: request.data.arch,
        args: request.data.args,
    });
    if let Err(std::sync::mpsc::TrySendError::Full(raw)) = queued {
        *shared
            .overflow
            .lock()
            .expect("lock")
            .entry((raw.container, raw.syscall, raw.arch))
            .or_default() += 1;
        shared.overflowed.store(true, Ordering::SeqCst);
    }
}

fn native() -> libseccomp::ScmpArch {
    libseccomp::ScmpArch::native()
}

/// Eight bytes of process `pid`'s memory at `address` (the shim is host root).
fn read_u64(pid: u32, address: u64) -> Option<u64> {
    let mut value = [0u8; 8];
    let local = [std::io::IoSliceMut::new(&mut value)];
    let remote = [nix::sys::uio::RemoteIoVec {
        base: address as usize,
        len: 8,
    }];
    let read = nix::sys::uio::process_vm_readv(
        nix::unistd::Pid::from_raw(pid as i32),
        &mut { local },
        &remote,
    )
    .ok()?;
    (read == 8).then(|| u64::from_ne_bytes(value))
}

/// Asks the kernel to hand the CPU straight from the caller to this listener and back
/// (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, Linux 6.6): a notified call then costs a direct
/// switch instead of two cross-CPU wake-ups. Older kernels refuse it; nothing else changes.
fn set_sync_wake_up(fd: std::os::fd::RawFd) {
    const SECCOMP_IOCTL_NOTIF_SET_FLAGS: libc::c_ulong = 0x4008_2104;
    const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;
    // SAFETY: an ioctl on a seccomp notify fd we own, with a u64 flag word as the argument.
    let rc = unsafe {
        libc::ioctl(
            fd,
            SECCOMP_IOCTL_NOTIF_SET_FLAGS,
            SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "seccomp sync wake-up unavailable");
    }
}

/// Names the call, its category and arguments, and the pid as the sandbox sees it.
fn describe(shared: &Shared, raw: RawAttempt) -> (EscapeAttempt, Action) {
    let syscall = raw
        .syscall
        .get_name_by_arch(raw.arch)
        .unwrap_or_else(|_| format!("syscall-{}", i32::from(raw.syscall)));
    let action = Action::try_from(shared.response.load(Ordering::SeqCst)).unwrap_or(Action::Denied);
    let attempt = EscapeAttempt {
        seq: 0,
        time_unix_nanos: raw.time_unix_nanos,
        container: raw.container.to_string(),
        // 0 when the process is already gone: a host pid means nothing to the sandbox's
        // owner and tells it about the node.
        pid: sandbox_pid(raw.host_pid).unwrap_or(0),
        summary: summarize(&syscall, &raw.args),
        syscall_nr: i32::from(raw.syscall),
        category: category_of(&syscall)
            .unwrap_or(agentsandbox_contract::Category::Other)
            .as_str()
            .to_string(),
        syscall,
        action: action as i32,
    };
    (attempt, action)
}

/// The pid as the sandbox sees it (the innermost entry of NSpid).
fn sandbox_pid(host_pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))?
        .split_whitespace()
        .last()?
        .parse()
        .ok()
}

/// Counts the attempts the full queue could not take: exact counts, no details.
fn record_overflow(shared: &Shared) {
    let counted = std::mem::take(&mut *shared.overflow.lock().expect("lock"));
    let action = Action::try_from(shared.response.load(Ordering::SeqCst)).unwrap_or(Action::Denied);
    for ((container, syscall, arch), count) in counted {
        let name = syscall
            .get_name_by_arch(arch)
            .unwrap_or_else(|_| format!("syscall-{}", i32::from(syscall)));
        let category = category_of(&name).unwrap_or(agentsandbox_contract::Category::Other);
        tracing::warn!(%container, syscall = %name, attempts = count, "escape attempts denied faster than they can be described: counted without details");
        shared
            .telemetry
            .record_uncounted_details(category.as_str(), count, action);
    }
    if action != Action::Denied {
        let _ = shared.responses.send(action);
    }
}

fn record(shared: &Shared, attempt: EscapeAttempt, action: Action) {
    let count = {
        let mut logged = shared.logged.lock().expect("lock");
        let count = logged
            .entry((attempt.container.clone(), attempt.syscall.clone()))
            .or_default();
        *count += 1;
        *count
    };
    // The first attempts of each kind, then every power of ten: a flood is not a log flood.
    if count <= 3 || (count as f64).log10().fract() == 0.0 {
        tracing::warn!(
            container = %attempt.container,
            pid = attempt.pid,
            syscall = %attempt.syscall,
            category = %attempt.category,
            summary = %attempt.summary,
            attempts = count,
            action = action.as_str_name(),
            "escape attempt denied"
        );
    }
    shared.telemetry.record(attempt);
    if action != Action::Denied {
        let _ = shared.responses.send(action);
    }
}
