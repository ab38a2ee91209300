//! What belongs to the pod as a whole rather than to one container: its host id range and
//! pinned user namespace (held by [`PodResources`], released when the guard is dropped), its
//! policy as the operator wrote it (parsed once, from the first container's annotations), its
//! network namespace, and the escape response once carried out.

use std::path::{Path, PathBuf};

use agentsandbox_contract::{PodPolicy, ResponseTaken};

use crate::idmap::{IdRange, IdmapError, SlotLease};
use crate::sys::namespaces;

/// The pod's host id range and user namespace. Dropping it unpins the namespace and frees the
/// range for another pod: every path that gives a pod up (sandbox container deleted, a failed
/// first create) does so by dropping this guard, never by hand.
pub struct PodResources {
    lease: SlotLease,
    user_namespace: PathBuf,
}

impl PodResources {
    /// Claims the lowest free id range under `state_root`/idmap for `holder_pid` (this shim),
    /// and chooses where the pod's user namespace will be pinned.
    pub fn claim(state_root: &Path, pod_key: &str, holder_pid: u32) -> Result<Self, IdmapError> {
        let pod_dir = state_root.join("pods").join(pod_key);
        std::fs::create_dir_all(&pod_dir).map_err(|source| IdmapError::Directory {
            dir: pod_dir.clone(),
            source,
        })?;
        let lease = SlotLease::acquire(&state_root.join("idmap"), holder_pid)?;
        tracing::info!(
            host_uid = lease.range.host_start,
            slot = lease.slot,
            "pod id range claimed"
        );
        Ok(PodResources {
            lease,
            user_namespace: pod_dir.join("userns"),
        })
    }

    pub fn range(&self) -> IdRange {
        self.lease.range
    }

    pub fn slot(&self) -> u32 {
        self.lease.slot
    }

    /// Where the pod's user namespace is pinned (a bind mount of its nsfs file).
    pub fn user_namespace(&self) -> &Path {
        &self.user_namespace
    }
}

impl Drop for PodResources {
    fn drop(&mut self) {
        namespaces::unpin_user_namespace(&self.user_namespace);
        if let Some(dir) = self.user_namespace.parent() {
            let _ = std::fs::remove_dir(dir);
        }
        self.lease.release();
    }
}

/// The pod's state in the shim.
#[derive(Default)]
pub struct Pod {
    pub resources: Option<PodResources>,
    /// The operator's policy for the pod (None until the first container is created).
    pub policy: Option<PodPolicy>,
    pub egress_installed: bool,
    /// The pod's resolver, when its egress table sends DNS to it.
    pub resolver: Option<crate::dns::Resolver>,
    /// The pod's network namespace (from its sandbox container), for quarantine.
    pub netns: Option<PathBuf>,
    /// Kill or Quarantine, once carried out after an escape attempt.
    pub response_applied: Option<ResponseTaken>,
    /// A warm pool member's handoff state (its agent waits for a claim).
    pub warm: Option<crate::handoff::WarmMember>,
}

impl Pod {
    /// Gives up the id range and user namespace (the sandbox container is gone).
    pub fn release(&mut self) {
        self.resources = None;
        self.egress_installed = false;
        self.resolver = None;
        self.warm = None;
    }
}
