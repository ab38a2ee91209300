//! The container's root filesystem, with image layers idmapped into the pod's user namespace
//! so that files owned by root in the image belong to the sandbox's root (not to "nobody"),
//! without touching the shared layers on disk.
//!
//! overlayfs itself cannot be idmapped, but its layers can: every lower layer is cloned as an
//! idmapped mount, the container's own (empty, per-container) upper directory is chowned to
//! the pod's root, and the overlay is assembled from those.

use std::ffi::CString;
use std::fs;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{chown, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use serde::{Deserialize, Serialize};

/// One mount of containerd's `CreateTaskRequest.rootfs`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RootfsMount {
    pub fs_type: String,
    pub source: String,
    pub options: Vec<String>,
}

/// Where to idmap layers to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct IdmapPlan {
    pub user_namespace: PathBuf,
    pub host_root: u32,
    pub staging: PathBuf,
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

fn cstring(path: &Path) -> Result<CString> {
    Ok(CString::new(path.as_os_str().as_encoded_bytes())?)
}

/// A detached clone of a mount tree (`open_tree(OPEN_TREE_CLONE)`): attributes are set on it
/// before anything can see it, then it is attached somewhere.
struct DetachedTree {
    fd: OwnedFd,
    recursive: libc::c_uint,
}

impl DetachedTree {
    /// Clones the mount at the opened `source` (the object itself, not a path to it).
    fn clone_of(source: &OwnedFd, recursive: bool) -> Result<DetachedTree> {
        let empty = CString::new("")?;
        let recursive = if recursive { AT_RECURSIVE } else { 0 };
        // SAFETY: open_tree on a descriptor we own with an empty, NUL-terminated path.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                source.as_raw_fd(),
                empty.as_ptr(),
                OPEN_TREE_CLONE
                    | OPEN_TREE_CLOEXEC
                    | libc::AT_EMPTY_PATH as libc::c_uint
                    | recursive,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("open_tree");
        }
        // SAFETY: open_tree returned a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(DetachedTree { fd, recursive })
    }

    /// Sets `attr_set` on the clone (and below it, for a recursive clone); `userns` is the
    /// user namespace of MOUNT_ATTR_IDMAP.
    fn set(&self, attr_set: u64, userns: Option<&OwnedFd>) -> std::io::Result<()> {
        let empty = c"";
        let attr = MountAttr {
            attr_set,
            attr_clr: 0,
            propagation: 0,
            userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64),
        };
        // SAFETY: mount_setattr on our descriptor with a correctly sized attribute structure.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_mount_setattr,
                self.fd.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_EMPTY_PATH as libc::c_uint | self.recursive,
                &attr as *const MountAttr,
                std::mem::size_of::<MountAttr>(),
            )
        };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Attaches the clone at `target`.
    fn attach(self, target: &Path) -> Result<()> {
        let target_c = cstring(target)?;
        let empty = c"";
        // SAFETY: move_mount of our descriptor to a NUL-terminated path.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.fd.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                target_c.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("move_mount to {}", target.display()));
        }
        Ok(())
    }
}

/// Mounts `source` again at `target`, with ids shifted by the user namespace's mapping.
fn idmapped_clone(source: &Path, target: &Path, user_namespace: &OwnedFd) -> Result<()> {
    // O_PATH: the layer directory itself (following symlinks, as open_tree of the path did).
    let opened: OwnedFd = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(source)
        .with_context(|| format!("opening {}", source.display()))?
        .into();
    let tree = DetachedTree::clone_of(&opened, false)
        .with_context(|| format!("cloning {}", source.display()))?;
    tree.set(MOUNT_ATTR_IDMAP, Some(user_namespace))
        .with_context(|| format!("idmapping {}", source.display()))?;
    tree.attach(target)
}

/// Mounts the container's root filesystem at `target`. Runs in the single-threaded launcher
/// (it changes directory to keep overlay option strings short).
pub fn mount_rootfs(
    mounts: &[RootfsMount],
    target: &Path,
    idmap: Option<&IdmapPlan>,
) -> Result<()> {
    for m in mounts {
        match (m.fs_type.as_str(), idmap) {
            ("overlay", Some(plan)) => mount_idmapped_overlay(m, target, plan)?,
            ("bind", _) => {
                mount(
                    Some(m.source.as_str()),
                    target,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .with_context(|| format!("binding the root filesystem {}", m.source))?;
                mount(
                    None::<&str>,
                    target,
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    None::<&str>,
                )
                .with_context(|| format!("remounting {} nosuid,nodev", target.display()))?;
            }
            _ => containerd_shim::mount::mount_rootfs(
                Some(m.fs_type.as_str()).filter(|t| !t.is_empty()),
                Some(m.source.as_str()),
                &m.options,
                target,
            )
            .with_context(|| format!("mounting the root filesystem ({})", m.fs_type))?,
        }
    }
    Ok(())
}

fn mount_idmapped_overlay(m: &RootfsMount, target: &Path, plan: &IdmapPlan) -> Result<()> {
    let user_namespace: OwnedFd = fs::File::open(&plan.user_namespace)
        .with_context(|| format!("opening {}", plan.user_namespace.display()))?
        .into();
    // Traversable, not listable by host users (like the container's state directory).
    let traversable = |dir: &Path| {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(dir)
    };
    traversable(&plan.staging)?;
    let mut options = Vec::new();
    let mut lowers = Vec::new();
    for option in &m.options {
        if let Some(list) = option.strip_prefix("lowerdir=") {
            for (index, layer) in list.split(':').enumerate() {
                let staged = plan.staging.join(index.to_string());
                traversable(&staged)?;
                idmapped_clone(Path::new(layer), &staged, &user_namespace)?;
                lowers.push(index.to_string());
            }
            options.push(format!("lowerdir={}", lowers.join(":")));
        } else if let Some(upper) = option.strip_prefix("upperdir=") {
            // The container's own writable layer, empty at this point.
            chown(upper, Some(plan.host_root), Some(plan.host_root))
                .with_context(|| format!("chown {upper}"))?;
            options.push(option.clone());
        } else {
            options.push(option.clone());
        }
    }
    if lowers.is_empty() {
        bail!("overlay root filesystem without lowerdir");
    }
    let previous = std::env::current_dir()?;
    std::env::set_current_dir(&plan.staging)?;
    // nosuid, nodev: the host-side view of the sandbox's root never honours a set-id bit or a
    // device node it made (inside, no_new_privs already does the former).
    let result = mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options.join(",").as_str()),
    )
    .context("mounting the overlay root filesystem");
    std::env::set_current_dir(previous)?;
    result
}

/// A bind mount's source, re-exposed below the container's state directory.
///
/// The container's root is an unprivileged host uid: it cannot traverse root-only
/// directories such as containerd's state or the kubelet's pod directories to reach a volume.
/// The launcher (still host root) clones each source to a path it can reach, `nosuid,nodev`,
/// and idmapped into the pod's user namespace (`idmap`): ids on the volume are the ids seen
/// inside (a root-owned 0755 workspace belongs to the sandbox's root, a 0400 Secret file is
/// readable by it, `fsGroup` 2000 is group 2000 inside), whatever host range the pod's slot
/// has, so a workspace keeps its ownership from one pod to the next. What that costs: a file
/// the sandbox's root creates is owned by uid 0 on the volume, so a set-id bit on it would be
/// set-id to host root for a reader without a user namespace; the seccomp profile denies
/// every mode with a set-id bit (`policy::seccomp::MODE_SETTING`) and the sandbox has no
/// CAP_SETFCAP for file capabilities.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedBind {
    pub source: String,
    pub staged: PathBuf,
    pub recursive: bool,
    /// Idmapped into the pod's user namespace (every volume; not the read-only /sys view,
    /// whose filesystem cannot be idmapped and whose ids mean nothing to the sandbox).
    pub idmap: bool,
}

/// Rewrites the spec's bind mounts to staged paths under `dir` and returns what to bind.
pub fn stage_binds(spec: &mut serde_json::Value, dir: &Path) -> Vec<StagedBind> {
    let mut staged = Vec::new();
    let Some(mounts) = spec["mounts"].as_array_mut() else {
        return staged;
    };
    for (index, mount) in mounts.iter_mut().enumerate() {
        let options: Vec<&str> = mount["options"]
            .as_array()
            .map(|a| a.iter().filter_map(|o| o.as_str()).collect())
            .unwrap_or_default();
        let is_bind =
            mount["type"] == "bind" || options.iter().any(|o| *o == "bind" || *o == "rbind");
        let Some(source) = mount["source"].as_str().filter(|s| s.starts_with('/')) else {
            continue;
        };
        if !is_bind {
            continue;
        }
        let recursive = options.contains(&"rbind");
        let path = dir.join(index.to_string());
        staged.push(StagedBind {
            source: source.to_string(),
            staged: path.clone(),
            recursive,
            idmap: source != "/sys",
        });
        mount["source"] = serde_json::Value::String(path.to_string_lossy().into_owned());
    }
    staged
}

/// Opens a bind mount's source without following any symlink (CVE-2021-25741: a volume
/// whose path is swapped for a symlink between the check and the mount). The policy checked
/// the path as written; this opens exactly that path or fails, and the mount then binds the
/// opened object (through its /proc/self/fd link), not whatever the path names by then.
pub fn open_bind_source(source: &str) -> Result<OwnedFd> {
    use nix::fcntl::{openat2, OpenHow, ResolveFlag};
    let how = OpenHow::new()
        .flags(nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    let fd = openat2(libc::AT_FDCWD, source, how).map_err(|errno| {
        if errno == nix::errno::Errno::ELOOP {
            anyhow::anyhow!(
                "bind mount source {source} has a symbolic link in its path: refused (the sandbox's volumes are mounted only through real directories)"
            )
        } else {
            anyhow::anyhow!("bind mount source {source}: {errno}")
        }
    })?;
    // SAFETY: openat2 returned a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Performs [`stage_binds`]' binds (in the launcher, as host root), idmapped into
/// `user_namespace` when there is one.
pub fn bind_staged(binds: &[StagedBind], user_namespace: Option<&Path>) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    let user_namespace: Option<OwnedFd> = match user_namespace {
        Some(path) => Some(
            fs::File::open(path)
                .with_context(|| format!("opening {}", path.display()))?
                .into(),
        ),
        None => None,
    };
    for bind in binds {
        if let Some(parent) = bind.staged.parent() {
            // Traversable (the container's unprivileged root reaches its binds through here)
            // but not listable by host users.
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(parent)?;
        }
        let source = open_bind_source(&bind.source)?;
        let is_dir = nix::sys::stat::fstat(source.as_raw_fd())
            .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
            .with_context(|| format!("bind mount source {}", bind.source))?;
        if is_dir {
            fs::create_dir_all(&bind.staged)?;
        } else {
            fs::File::create(&bind.staged)?;
        }
        let idmap = user_namespace.as_ref().filter(|_| bind.idmap);
        clone_to(&source, bind, idmap)
            .with_context(|| format!("staging bind mount {}", bind.source))?;
    }
    Ok(())
}

const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;

/// Clones the mount tree at the opened `source` (the object checked, not a path), sets
/// `nosuid,nodev` (and the idmap) on the detached clone, then attaches it at the staged path.
/// A filesystem that cannot be idmapped (NFS, for one) is staged without the idmap, with a
/// warning: its ids show inside as they are on the host, as before idmapping.
fn clone_to(source: &OwnedFd, bind: &StagedBind, idmap: Option<&OwnedFd>) -> Result<()> {
    let tree = DetachedTree::clone_of(source, bind.recursive)?;
    let plain = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
    match idmap {
        Some(userns) => {
            if let Err(error) = tree.set(plain | MOUNT_ATTR_IDMAP, Some(userns)) {
                tracing::warn!(
                    source = %bind.source,
                    %error,
                    "this volume's filesystem cannot be idmapped: staged without the idmap (its files show inside with their host ids)"
                );
                tree.set(plain, None).context("setting nosuid,nodev")?;
            }
        }
        None => tree.set(plain, None).context("setting nosuid,nodev")?,
    }
    tree.attach(&bind.staged)
}

/// Unmounts everything mounted at or below `dir` (deepest first) and removes it: what a
/// container's state directory holds (root filesystem, idmapped layers, staged binds).
pub fn unmount_tree(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let mut targets: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(String::from))
        .filter(|t| t == &prefix || t.starts_with(&format!("{prefix}/")))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for target in targets {
        let _ = umount2(Path::new(&target), MntFlags::MNT_DETACH);
    }
    let _ = fs::remove_dir_all(dir);
}
