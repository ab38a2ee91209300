//! Processes started in a running container (kubectl exec, exec probes).
//!
//! Not libcontainer's tenant builder: in libcontainer 0.7 an exec'd process joins neither
//! the container's user namespace nor its seccomp filter (measured: it ran as host root,
//! unfiltered). Here the launcher (host root) enters the container's cgroups and its network,
//! IPC and UTS namespaces, then its user, mount and PID namespaces, forks, and the child
//! applies the container's identity, capabilities, no_new_privs and seccomp filter before it
//! execs. The child is re-parented to the shim (a subreaper) when the launcher exits.

use std::ffi::CString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::OFlag;
use nix::sched::{setns, CloneFlags};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
use nix::unistd::{fork, pipe2, ForkResult, Gid, Uid};
use oci_spec::runtime::{LinuxSeccomp, Process};

/// What the child needs besides the process itself.
pub struct ExecContext<'a> {
    pub container_id: &'a str,
    pub init_pid: i32,
    pub seccomp: Option<&'a LinuxSeccomp>,
    /// The exec's resource limits (containerd copies the container's).
    pub rlimits: &'a [oci_spec::runtime::PosixRlimit],
    /// When set, the process gets a new terminal whose master is sent here.
    pub console_socket: Option<&'a Path>,
    pub stdio: [OwnedFd; 3],
}

/// A new pseudo-terminal from the container's own devpts (a host one would not resolve to a
/// name inside the container), its master sent to the shim over `console`; returns the slave.
fn terminal_for(console: &UnixStream) -> Result<OwnedFd> {
    let pty = nix::pty::openpty(None, None).context("openpty in the container")?;
    nix::fcntl::fcntl(
        pty.slave.as_raw_fd(),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    let stream = console;
    let fds = [pty.master.as_raw_fd()];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &[std::io::IoSlice::new(b"/dev/ptmx")],
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )
    .context("sending the terminal to the shim")?;
    crate::console::wait_acknowledged(stream, std::time::Duration::from_secs(10))?;
    Ok(pty.slave)
}

fn join_cgroups(init_pid: i32) -> Result<()> {
    let me = std::process::id().to_string();
    let cgroups = fs::read_to_string(format!("/proc/{init_pid}/cgroup"))?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let hierarchy = match controllers {
            "" => "unified".to_string(),
            c => c.strip_prefix("name=").unwrap_or(c).to_string(),
        };
        let mut dir = Path::new("/sys/fs/cgroup").join(&hierarchy);
        if !dir.exists() && controllers.is_empty() {
            dir = Path::new("/sys/fs/cgroup").to_path_buf();
        }
        let procs = dir.join(path.trim_start_matches('/')).join("cgroup.procs");
        if procs.exists() {
            fs::write(&procs, &me).with_context(|| format!("joining {}", procs.display()))?;
        }
    }
    Ok(())
}

fn resolve(program: &str, env: &[String]) -> Option<String> {
    if program.contains('/') {
        return Some(program.to_string());
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    path.split(':')
        .map(|dir| format!("{dir}/{program}"))
        .find(|candidate| {
            fs::metadata(candidate)
                .map(|m| {
                    m.is_file()
                        && std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 != 0
                })
                .unwrap_or(false)
        })
}

/// Starts `process` in the container; returns its host pid once it has exec'd.
pub fn exec_in_container(process: &Process, context: ExecContext) -> Result<i32> {
    let pid = context.init_pid;
    // Host paths: reached before leaving the host's mounts.
    let console = match context.console_socket {
        Some(path) => Some(UnixStream::connect(path).context("connecting to the console socket")?),
        None => None,
    };
    join_cgroups(pid).context("joining the container's cgroups")?;
    // What the init has, the exec'd process has: the same OOM score (not the shim's, which
    // the OOM killer spares) and the same resource limits. Both are set while the launcher is
    // still host root (raising a hard limit needs CAP_SYS_RESOURCE there) and inherited.
    let oom_score = fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))
        .context("reading the container's OOM score")?;
    fs::write("/proc/self/oom_score_adj", oom_score.trim())
        .context("setting the exec's OOM score")?;
    for rlimit in context.rlimits {
        set_rlimit(rlimit)?;
    }
    let open_ns = |kind: &str| -> Result<File> {
        File::open(format!("/proc/{pid}/ns/{kind}")).with_context(|| format!("namespace {kind}"))
    };
    let namespaces = [
        (open_ns("net")?, CloneFlags::CLONE_NEWNET),
        (open_ns("ipc")?, CloneFlags::CLONE_NEWIPC),
        (open_ns("uts")?, CloneFlags::CLONE_NEWUTS),
        (open_ns("user")?, CloneFlags::CLONE_NEWUSER),
        (open_ns("mnt")?, CloneFlags::CLONE_NEWNS),
        (open_ns("pid")?, CloneFlags::CLONE_NEWPID),
    ];
    // The listener's socket is a host path: connect before leaving the host's mounts.
    let listener = match context.seccomp.and_then(|s| s.listener_path().clone()) {
        Some(path) => {
            Some(UnixStream::connect(&path).context("connecting to the seccomp listener")?)
        }
        None => None,
    };
    for (file, flag) in &namespaces {
        // Entering one's own namespace again is refused for user namespaces; skip those.
        if let (Ok(theirs), Ok(ours)) = (
            fs::read_link(format!("/proc/{pid}/ns/{}", ns_name(*flag))),
            fs::read_link(format!("/proc/self/ns/{}", ns_name(*flag))),
        ) {
            if theirs == ours {
                continue;
            }
        }
        setns(file, *flag).with_context(|| format!("entering the {} namespace", ns_name(*flag)))?;
    }
    drop(namespaces);
    let terminal = match &console {
        Some(stream) => Some(terminal_for(stream)?),
        None => None,
    };

    let (error_read, error_write) = pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: the launcher is single-threaded.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(error_read);
            let error = become_process(process, &context, listener, terminal).unwrap_err();
            let _ = File::from(error_write).write_all(format!("{error:#}").as_bytes());
            // SAFETY: leave without running destructors of the launcher's state.
            unsafe { libc::_exit(127) }
        }
        ForkResult::Parent { child } => {
            drop(error_write);
            let mut message = String::new();
            File::from(error_read).read_to_string(&mut message)?;
            if !message.is_empty() {
                let _ = nix::sys::wait::waitpid(child, None);
                bail!("{message}");
            }
            Ok(child.as_raw())
        }
    }
}

fn set_rlimit(rlimit: &oci_spec::runtime::PosixRlimit) -> Result<()> {
    use oci_spec::runtime::PosixRlimitType as T;
    let kind = match rlimit.typ() {
        T::RlimitCpu => libc::RLIMIT_CPU,
        T::RlimitFsize => libc::RLIMIT_FSIZE,
        T::RlimitData => libc::RLIMIT_DATA,
        T::RlimitStack => libc::RLIMIT_STACK,
        T::RlimitCore => libc::RLIMIT_CORE,
        T::RlimitRss => libc::RLIMIT_RSS,
        T::RlimitNproc => libc::RLIMIT_NPROC,
        T::RlimitNofile => libc::RLIMIT_NOFILE,
        T::RlimitMemlock => libc::RLIMIT_MEMLOCK,
        T::RlimitAs => libc::RLIMIT_AS,
        T::RlimitLocks => libc::RLIMIT_LOCKS,
        T::RlimitSigpending => libc::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => libc::RLIMIT_MSGQUEUE,
        T::RlimitNice => libc::RLIMIT_NICE,
        T::RlimitRtprio => libc::RLIMIT_RTPRIO,
        T::RlimitRttime => libc::RLIMIT_RTTIME,
    };
    let limit = libc::rlimit {
        rlim_cur: rlimit.soft(),
        rlim_max: rlimit.hard(),
    };
    // SAFETY: setrlimit with a valid struct.
    if unsafe { libc::setrlimit(kind, &limit) } != 0 {
        bail!(
            "setting {:?}: {}",
            rlimit.typ(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn ns_name(flag: CloneFlags) -> &'static str {
    match flag {
        CloneFlags::CLONE_NEWNET => "net",
        CloneFlags::CLONE_NEWIPC => "ipc",
        CloneFlags::CLONE_NEWUTS => "uts",
        CloneFlags::CLONE_NEWUSER => "user",
        CloneFlags::CLONE_NEWNS => "mnt",
        _ => "pid",
    }
}

/// In the forked child: only returns on failure.
fn become_process(
    process: &Process,
    context: &ExecContext,
    listener: Option<UnixStream>,
    terminal: Option<OwnedFd>,
) -> Result<std::convert::Infallible> {
    if let Some(slave) = &terminal {
        nix::unistd::setsid().context("setsid")?;
        // SAFETY: TIOCSCTTY on our own terminal descriptor.
        if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } != 0 {
            bail!("TIOCSCTTY: {}", std::io::Error::last_os_error());
        }
        for target in 0..3 {
            nix::unistd::dup2(slave.as_raw_fd(), target)?;
        }
    } else {
        for (fd, target) in context.stdio.iter().zip(0..3) {
            nix::unistd::dup2(fd.as_raw_fd(), target)?;
        }
    }
    let user = process.user();
    let gids: Vec<Gid> = user
        .additional_gids()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(Gid::from_raw)
        .collect();
    nix::unistd::setgroups(&gids).context("setgroups")?;
    let syscall = libcontainer::syscall::syscall::create_syscall();
    syscall
        .set_id(Uid::from_raw(user.uid()), Gid::from_raw(user.gid()))
        .map_err(|e| anyhow!("switching to uid {}: {e}", user.uid()))?;
    if let Some(caps) = process.capabilities() {
        libcontainer::capabilities::drop_privileges(caps, syscall.as_ref())
            .map_err(|e| anyhow!("dropping capabilities: {e}"))?;
    }
    // SAFETY: plain prctl.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        bail!("no_new_privs: {}", std::io::Error::last_os_error());
    }
    let cwd = process.cwd();
    std::env::set_current_dir(cwd)
        .with_context(|| format!("working directory {}", cwd.display()))?;
    // The directory reached must be one the container's root reaches: the kernel spells any
    // other (a host directory through a leaked descriptor) "(unreachable)/...".
    let reached = std::env::current_dir().context("reading the working directory back")?;
    if !reached.starts_with("/") || reached.starts_with("/proc") {
        bail!(
            "working directory {} resolves outside the container ({}): refused",
            cwd.display(),
            reached.display()
        );
    }
    let env = process.env().clone().unwrap_or_default();
    let args = process.args().clone().unwrap_or_default();
    let program = args
        .first()
        .ok_or_else(|| anyhow!("exec without a command"))?;
    let path = resolve(program, &env)
        .ok_or_else(|| anyhow!("exec: {program:?}: executable file not found in $PATH"))?;
    if let Some(seccomp) = context.seccomp {
        let notify_fd = libcontainer::seccomp::initialize_seccomp(seccomp)
            .map_err(|e| anyhow!("loading the seccomp filter: {e}"))?;
        if let (Some(fd), Some(stream)) = (notify_fd, listener) {
            let state = serde_json::json!({
                "ociVersion": "1.0.2",
                "fds": ["seccompFd"],
                "pid": std::process::id(),
                "metadata": seccomp.listener_metadata().clone().unwrap_or_default(),
                "state": {"ociVersion": "1.0.2", "id": context.container_id, "status": "running",
                          "pid": std::process::id(), "bundle": ""},
            });
            let bytes = serde_json::to_vec(&state)?;
            let fds = [fd];
            sendmsg::<()>(
                stream.as_raw_fd(),
                &[std::io::IoSlice::new(&bytes)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::empty(),
                None,
            )
            .context("handing the seccomp fd to the listener")?;
            // SAFETY: our own descriptor, no longer needed.
            unsafe { libc::close(fd) };
        }
    }
    let c_path = CString::new(path)?;
    let c_args: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_str()))
        .collect::<Result<_, _>>()?;
    let c_env: Vec<CString> = env
        .iter()
        .map(|e| CString::new(e.as_str()))
        .collect::<Result<_, _>>()?;
    // Nothing of the launcher's crosses into the process: every descriptor above stdio is
    // closed at exec (marked rather than closed now, so a failing execve can still report).
    // SAFETY: close_range on our own descriptor table.
    if unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3u32,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    } != 0
    {
        bail!("close_range: {}", std::io::Error::last_os_error());
    }
    let error = nix::unistd::execve(&c_path, &c_args, &c_env).unwrap_err();
    bail!("exec {program:?}: {error}")
}
