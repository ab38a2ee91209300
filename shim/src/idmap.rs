//! Host uid/gid ranges for pods' user namespaces.
//!
//! Every pod gets its own range of 65,536 host ids starting at 100,000 (slot k owns
//! `100_000 + k * 65_536 ..`), so no two live pods share a host uid and container uid 0 is
//! never host root. Shims are separate processes (one per pod), so the allocation is
//! coordinated through the filesystem: a slot is taken by creating `slot-<k>` with O_EXCL in
//! a root-only directory, holding the owning shim's pid; it is released when the pod's
//! sandbox container is deleted, and reclaimed from a shim that died without releasing it.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

/// First host id handed to sandboxes (ids below are the node's own users).
pub const FIRST_HOST_ID: u32 = 100_000;
/// Ids per pod: the full 16-bit range images expect (nobody = 65534).
pub const RANGE_SIZE: u32 = 65_536;
/// Ids from here up are left to the kubelet's own user namespaces (hostUsers: false pods of
/// other runtimes), when the node gives the kubelet this half in /etc/subuid and /etc/subgid.
pub const KUBELET_RANGE_START: u32 = 1 << 31;
/// Slots that fit below [`KUBELET_RANGE_START`] (32,766 pods).
pub const SLOTS: u32 = (KUBELET_RANGE_START - FIRST_HOST_ID) / RANGE_SIZE;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    pub host_start: u32,
    pub size: u32,
}

pub fn range_for_slot(slot: u32) -> IdRange {
    IdRange {
        host_start: FIRST_HOST_ID + slot * RANGE_SIZE,
        size: RANGE_SIZE,
    }
}

/// The lowest slot not taken, if any is left.
pub fn lowest_free_slot(taken: &BTreeSet<u32>) -> Option<u32> {
    (0..SLOTS).find(|slot| !taken.contains(slot))
}

fn parse_slot_name(name: &str) -> Option<u32> {
    name.strip_prefix("slot-")?.parse().ok()
}

#[derive(Debug, thiserror::Error)]
pub enum IdmapError {
    #[error("cannot use the id range directory {dir}: {source}")]
    Directory {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("all {SLOTS} host id ranges are in use by live pods")]
    Exhausted,
}

/// A slot held by this shim until [`SlotLease::release`].
#[derive(Debug, Clone)]
pub struct SlotLease {
    pub slot: u32,
    pub range: IdRange,
    path: PathBuf,
}

fn holder_is_alive(path: &Path) -> bool {
    let Ok(content) = fs::read_to_string(path) else {
        // Being written right now by its creator: treat as alive.
        return true;
    };
    match content.trim().parse::<i32>() {
        Ok(pid) if pid > 0 => Path::new(&format!("/proc/{pid}")).exists(),
        _ => false,
    }
}

impl SlotLease {
    /// Takes the lowest free slot under `dir` for the process `holder_pid`.
    pub fn acquire(dir: &Path, holder_pid: u32) -> Result<SlotLease, IdmapError> {
        let dir_error = |source| IdmapError::Directory {
            dir: dir.to_path_buf(),
            source,
        };
        fs::create_dir_all(dir).map_err(dir_error)?;
        loop {
            let mut taken = BTreeSet::new();
            for entry in fs::read_dir(dir).map_err(dir_error)? {
                let entry = entry.map_err(dir_error)?;
                let Some(slot) = entry.file_name().to_str().and_then(parse_slot_name) else {
                    continue;
                };
                if holder_is_alive(&entry.path()) {
                    taken.insert(slot);
                } else {
                    // The shim that held it is gone; its pod is gone with it.
                    let _ = fs::remove_file(entry.path());
                }
            }
            let slot = lowest_free_slot(&taken).ok_or(IdmapError::Exhausted)?;
            let path = dir.join(format!("slot-{slot}"));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(holder_pid.to_string().as_bytes())
                        .map_err(dir_error)?;
                    return Ok(SlotLease {
                        slot,
                        range: range_for_slot(slot),
                        path,
                    });
                }
                // Another shim took it between listing and creating: list again.
                Err(err) if err.kind() == ErrorKind::AlreadyExists => continue,
                Err(err) => return Err(dir_error(err)),
            }
        }
    }

    pub fn release(&self) {
        let _ = fs::remove_file(&self.path);
    }
}
