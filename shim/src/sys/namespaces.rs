//! User namespaces pinned to a file, and joining a pod's namespaces.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::fcntl::OFlag;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, pipe2, ForkResult};

use crate::idmap::IdRange;
use crate::policy::NamespaceJoins;

/// Creates a user namespace mapping container ids 0.. onto `range` and keeps it alive by
/// bind-mounting it onto `path`, so containers can join it and mounts can be idmapped with
/// it. Must run in a single-threaded process (it forks).
pub fn pin_user_namespace(path: &Path, range: IdRange) -> Result<()> {
    File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let (ready_read, ready_write) = pipe2(OFlag::O_CLOEXEC)?;
    let (done_read, done_write) = pipe2(OFlag::O_CLOEXEC)?;
    // SAFETY: the launcher is single-threaded; the child only makes raw syscalls and exits.
    match unsafe { fork() }? {
        ForkResult::Child => {
            drop(ready_read);
            drop(done_write);
            let ok = unshare(CloneFlags::CLONE_NEWUSER).is_ok();
            let _ = File::from(ready_write).write_all(if ok { b"1" } else { b"0" });
            let mut byte = [0u8; 1];
            let _ = File::from(done_read).read(&mut byte);
            // SAFETY: exit without running the parent's destructors.
            unsafe { libc::_exit(0) }
        }
        ForkResult::Parent { child } => {
            drop(ready_write);
            drop(done_read);
            let mut byte = [0u8; 1];
            File::from(ready_read).read_exact(&mut byte)?;
            let result = (|| -> Result<()> {
                if byte[0] != b'1' {
                    bail!("unshare(CLONE_NEWUSER) failed in the pinning process");
                }
                let map = format!("0 {} {}\n", range.host_start, range.size);
                fs::write(format!("/proc/{child}/uid_map"), &map).context("writing uid_map")?;
                fs::write(format!("/proc/{child}/gid_map"), &map).context("writing gid_map")?;
                mount(
                    Some(format!("/proc/{child}/ns/user").as_str()),
                    path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .context("bind-mounting the user namespace")?;
                Ok(())
            })();
            drop(done_write);
            waitpid(child, None)?;
            result
        }
    }
}

pub fn unpin_user_namespace(path: &Path) {
    let _ = umount2(path, MntFlags::MNT_DETACH);
    let _ = fs::remove_file(path);
}

/// Enters the pod's network, IPC and UTS namespaces (as host root, before any new user
/// namespace exists).
pub fn join(joins: &NamespaceJoins) -> Result<()> {
    for (path, flag) in [
        (&joins.network, CloneFlags::CLONE_NEWNET),
        (&joins.ipc, CloneFlags::CLONE_NEWIPC),
        (&joins.uts, CloneFlags::CLONE_NEWUTS),
    ] {
        if let Some(path) = path {
            let file = File::open(path).with_context(|| format!("opening namespace {path}"))?;
            setns(file.as_fd(), flag).with_context(|| format!("joining namespace {path}"))?;
        }
    }
    Ok(())
}
