//! The launcher's volume staging on this machine's real filesystems (ext4 and tmpfs), as host
//! root, in a private mount namespace: every staged volume is idmapped into the pod's user
//! namespace and mounted nosuid,nodev, so that ids on the volume are the ids seen inside.
//! The e2e tests (e2e/tests/volumes.rs) prove the same through a real kubelet and containerd.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agentsandbox_shim::idmap::IdRange;
use agentsandbox_shim::sys::mounts::{bind_staged, StagedBind};
use agentsandbox_shim::sys::namespaces::pin_user_namespace;
use nix::mount::{mount, MsFlags};

const HOST_START: u32 = 3_000_000;

/// Runs `body` in a forked child and returns the failures it reported (empty: none).
fn in_child(body: impl FnOnce() -> String) -> String {
    let (read, write) = nix::unistd::pipe().unwrap();
    // SAFETY: the child makes syscalls, writes to a pipe and exits.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            drop(read);
            let _ = nix::unistd::write(&write, body().as_bytes());
            // SAFETY: leave without running the harness's destructors.
            unsafe { libc::_exit(0) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(write);
            let mut out = String::new();
            std::io::Read::read_to_string(&mut fs::File::from(read), &mut out).unwrap();
            nix::sys::wait::waitpid(child, None).unwrap();
            out
        }
    }
}

/// Runs `check` in a child that takes host ids `uid`/`gid` (plus `groups`), as the sandbox's
/// processes have.
fn as_host_ids(
    uid: u32,
    gid: u32,
    groups: &[u32],
    check: impl FnOnce() -> Result<(), String>,
) -> Result<(), String> {
    let out = in_child(|| {
        // SAFETY: plain id changes in this child.
        let dropped = unsafe {
            libc::setgroups(groups.len(), groups.as_ptr()) == 0
                && libc::setresgid(gid, gid, gid) == 0
                && libc::setresuid(uid, uid, uid) == 0
        };
        let result = if dropped {
            check()
        } else {
            Err("could not take the sandbox's host ids".into())
        };
        result.err().unwrap_or_default()
    });
    if out.is_empty() {
        Ok(())
    } else {
        Err(out)
    }
}

fn errno_of<T>(result: std::io::Result<T>) -> i32 {
    match result {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn expect(what: &str, ok: bool, detail: impl std::fmt::Debug) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(format!("{what}: {detail:?}\n"))
    }
}

/// The whole scenario, in a child with its own mount namespace (the host's mount table is
/// never touched). Returns the failures.
fn scenario(base: &Path) -> Vec<String> {
    let mut failures = Vec::new();
    let mut check = |r: Result<(), String>| {
        if let Err(e) = r {
            failures.push(e);
        }
    };
    // A CSI-like volume: a root-owned 0755 directory with a 0600 root file in it.
    let disk = base.join("disk");
    fs::create_dir_all(&disk).unwrap();
    fs::set_permissions(&disk, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(disk.join("private"), "written by the previous pod").unwrap();
    fs::set_permissions(disk.join("private"), fs::Permissions::from_mode(0o600)).unwrap();
    // A Secret-like tmpfs: 0400 root, and 0440 root:2000 (fsGroup).
    let secret = base.join("secret");
    fs::create_dir_all(&secret).unwrap();
    mount(
        Some("tmpfs"),
        &secret,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .unwrap();
    fs::write(secret.join("key"), "0400").unwrap();
    fs::set_permissions(secret.join("key"), fs::Permissions::from_mode(0o400)).unwrap();
    fs::write(secret.join("group"), "0440").unwrap();
    std::os::unix::fs::chown(secret.join("group"), Some(0), Some(2000)).unwrap();
    fs::set_permissions(secret.join("group"), fs::Permissions::from_mode(0o440)).unwrap();

    let userns = base.join("userns");
    pin_user_namespace(
        &userns,
        IdRange {
            host_start: HOST_START,
            size: 65536,
        },
    )
    .unwrap();
    let stage = base.join("stage");
    let staged = |index: usize| stage.join(index.to_string());
    let binds = vec![
        StagedBind {
            source: disk.to_string_lossy().into_owned(),
            staged: staged(0),
            recursive: true,
            idmap: true,
        },
        StagedBind {
            source: secret.to_string_lossy().into_owned(),
            staged: staged(1),
            recursive: true,
            idmap: true,
        },
        StagedBind {
            source: disk.to_string_lossy().into_owned(),
            staged: staged(2),
            recursive: false,
            idmap: false,
        },
    ];
    if let Err(e) = bind_staged(&binds, Some(&userns)) {
        return vec![format!("staging: {e:#}")];
    }

    for index in 0..3 {
        let flags = nix::sys::statvfs::statvfs(&staged(index)).unwrap().flags();
        check(expect(
            &format!("staged mount {index} is nosuid,nodev"),
            flags.contains(nix::sys::statvfs::FsFlags::ST_NOSUID)
                && flags.contains(nix::sys::statvfs::FsFlags::ST_NODEV),
            flags,
        ));
    }
    let owner = fs::metadata(staged(0)).unwrap();
    check(expect(
        "the volume's root-owned directory belongs to the pod's root (host view of the idmap)",
        owner.uid() == HOST_START && owner.gid() == HOST_START,
        (owner.uid(), owner.gid()),
    ));
    let plain = fs::metadata(staged(2)).unwrap();
    check(expect(
        "without the idmap it stays host root's",
        plain.uid() == 0,
        plain.uid(),
    ));

    // The sandbox's root (host uid HOST_START): writes the root-owned 0755 volume, reads and
    // appends to the 0600 file an earlier pod wrote, reads a 0400 Secret file.
    let (w, p, k) = (
        staged(0).join("new"),
        staged(0).join("private"),
        staged(1).join("key"),
    );
    check(as_host_ids(HOST_START, HOST_START, &[], move || {
        fs::write(&w, "x").map_err(|e| format!("writing a new file: {e}\n"))?;
        fs::read_to_string(&p).map_err(|e| format!("reading a 0600 file: {e}\n"))?;
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .map_err(|e| format!("appending to a 0600 file: {e}\n"))?;
        fs::read_to_string(&k).map_err(|e| format!("reading a 0400 Secret file: {e}\n"))?;
        Ok(())
    }));
    let created = fs::metadata(disk.join("new"));
    check(expect(
        "a file the sandbox's root creates is uid 0 / gid 0 on the volume",
        created.as_ref().is_ok_and(|m| m.uid() == 0 && m.gid() == 0),
        created.map(|m| (m.uid(), m.gid())),
    ));
    // Without the idmap, the same write is refused (what sessions before idmapping saw).
    let unmapped = staged(2).join("refused");
    check(as_host_ids(HOST_START, HOST_START, &[], move || {
        let errno = errno_of(fs::write(&unmapped, "x"));
        expect(
            "a plain bind of a root-owned 0755 directory is not writable",
            errno == libc::EACCES,
            errno,
        )
    }));
    // A non-root user inside (uid 1000) in fsGroup 2000 reads a 0440 root:2000 file; without
    // the group it cannot.
    let group = staged(1).join("group");
    let group_again = group.clone();
    check(as_host_ids(
        HOST_START + 1000,
        HOST_START + 1000,
        &[HOST_START + 2000],
        move || {
            fs::read_to_string(&group)
                .map(|_| ())
                .map_err(|e| format!("fsGroup 2000 reading a 0440 root:2000 file: {e}\n"))
        },
    ));
    check(as_host_ids(
        HOST_START + 1000,
        HOST_START + 1000,
        &[],
        move || {
            let errno = errno_of(fs::read_to_string(&group_again));
            expect(
                "without fsGroup the 0440 file is unreadable",
                errno == libc::EACCES,
                errno,
            )
        },
    ));
    // A host uid outside the pod's range gets nothing through the idmapped view that it
    // would not get on the volume itself: the 0600 file stays closed to it.
    let foreign = staged(0).join("private");
    check(as_host_ids(
        HOST_START - 1,
        HOST_START - 1,
        &[],
        move || {
            let errno = errno_of(fs::read_to_string(&foreign));
            expect(
                "another host uid cannot read the 0600 file",
                errno == libc::EACCES,
                errno,
            )
        },
    ));
    failures
}

#[test]
fn staged_volumes_are_idmapped_into_the_pod_and_nosuid_nodev() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "mounting needs root: run as root (make test does)"
    );
    let base: PathBuf = std::env::temp_dir().join(format!("staged-volumes-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base).unwrap();
    // The child unshares its mount namespace: every mount dies with it.
    let out = in_child(|| {
        let private = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).is_ok()
            && mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .is_ok();
        if private {
            scenario(&base).concat()
        } else {
            "could not make a private mount namespace".into()
        }
    });
    let _ = fs::remove_dir_all(&base);
    assert!(out.is_empty(), "{out}");
}
