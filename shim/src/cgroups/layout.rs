//! Where a container's cgroup is on this node: which hierarchy (cgroup v1 controllers, or the
//! unified v2 tree) and how the OCI `linux.cgroupsPath` maps onto it under either driver
//! (cgroupfs: an absolute path; systemd: `slice:prefix:name`). Pure path arithmetic over a
//! cgroupfs root, so both versions are tested over fixture trees.

use std::path::{Path, PathBuf};

/// The hierarchy the node mounts at its cgroup root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Hierarchy {
    /// cgroup v1 controllers, one directory each (a hybrid node's v2 `unified` mount carries
    /// no controllers and is ignored).
    V1 { root: PathBuf },
    /// The unified cgroup v2 tree.
    V2 { root: PathBuf },
}

impl Hierarchy {
    /// The node's hierarchy under `root` (normally `/sys/fs/cgroup`): v2 when the root itself
    /// lists controllers.
    pub fn detect(root: &Path) -> Hierarchy {
        if root.join("cgroup.controllers").exists() {
            Hierarchy::V2 {
                root: root.to_path_buf(),
            }
        } else {
            Hierarchy::V1 {
                root: root.to_path_buf(),
            }
        }
    }

    /// The container's directory for `controller` (v1) or in the unified tree (v2).
    pub fn dir(&self, cgroups_path: &str, controller: &str) -> PathBuf {
        let relative = relative_path(cgroups_path);
        match self {
            Hierarchy::V1 { root } => root.join(controller).join(relative),
            Hierarchy::V2 { root } => root.join(relative),
        }
    }
}

/// Whether `cgroups_path` is in the systemd driver's `slice:prefix:name` form.
pub fn is_systemd_path(cgroups_path: &str) -> bool {
    !cgroups_path.starts_with('/') && cgroups_path.split(':').count() == 3
}

/// The path below the hierarchy's root: the cgroupfs driver's absolute path as it is, the
/// systemd driver's `slice:prefix:name` expanded the way systemd lays slices out
/// (`kubepods-burstable-pod1.slice:cri-containerd:abc` ->
/// `kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/cri-containerd-abc.scope`).
pub fn relative_path(cgroups_path: &str) -> PathBuf {
    if !is_systemd_path(cgroups_path) {
        return PathBuf::from(cgroups_path.trim_start_matches('/'));
    }
    let mut parts = cgroups_path.splitn(3, ':');
    let slice = parts.next().unwrap_or_default();
    let prefix = parts.next().unwrap_or_default();
    let name = parts.next().unwrap_or_default();
    let mut path = expand_slice(slice);
    let unit = if name.ends_with(".slice") {
        name.to_string()
    } else if prefix.is_empty() {
        format!("{name}.scope")
    } else {
        format!("{prefix}-{name}.scope")
    };
    path.push(unit);
    path
}

/// `a-b-c.slice` -> `a.slice/a-b.slice/a-b-c.slice`; the root slice `-.slice` is the root.
fn expand_slice(slice: &str) -> PathBuf {
    let mut path = PathBuf::new();
    let Some(stem) = slice
        .strip_suffix(".slice")
        .filter(|s| !s.is_empty() && *s != "-")
    else {
        return path;
    };
    let mut prefix = String::new();
    for part in stem.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push(format!("{prefix}.slice"));
    }
    path
}
