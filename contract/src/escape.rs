//! Escape responses and categories: what the user asks for (`spec.security.onEscapeAttempt`),
//! what the runtime did (`status.security...action`), and under which category an attempt is
//! counted (`status.security.attemptsByCategory`).

use crate::named_enum;

named_enum! {
    /// What happens when the agent tries to escape (`spec.security.onEscapeAttempt`).
    #[derive(Default)]
    pub enum EscapeResponse {
        // Deny the syscall and record it.
        #[default]
        Deny => "Deny",
        // Also stop the sandbox (phase Failed).
        Kill => "Kill",
        // Also freeze its processes and cut its network, keeping everything for forensics.
        Quarantine => "Quarantine",
    }
}

named_enum! {
    /// What the runtime did about an attempt. Ordered by strength: a pod's response is the
    /// strongest one taken.
    #[derive(Default)]
    pub enum ResponseTaken {
        #[default]
        Denied => "Denied",
        Killed => "Killed",
        Quarantined => "Quarantined",
    }
}

impl EscapeResponse {
    /// What the runtime records for an attempt under this response.
    pub fn taken(self) -> ResponseTaken {
        match self {
            EscapeResponse::Deny => ResponseTaken::Denied,
            EscapeResponse::Kill => ResponseTaken::Killed,
            EscapeResponse::Quarantine => ResponseTaken::Quarantined,
        }
    }
}

impl ResponseTaken {
    /// The response the user asked for that leads to this.
    pub fn requested(self) -> EscapeResponse {
        match self {
            ResponseTaken::Denied => EscapeResponse::Deny,
            ResponseTaken::Killed => EscapeResponse::Kill,
            ResponseTaken::Quarantined => EscapeResponse::Quarantine,
        }
    }
}

named_enum! {
    /// The category an escape attempt is counted under.
    pub enum Category {
        // unshare/setns/clone with namespace flags.
        Namespace => "namespace",
        // mount, the new mount API, pivot_root, chroot, listmount/statmount.
        Mount => "mount",
        // ptrace, process_vm_*, kcmp, pidfd_getfd.
        Ptrace => "ptrace",
        Bpf => "bpf",
        // Module load, kexec, perf, reboot, swap, port I/O, the kernel log, accounting,
        // clock setting, personality changes (ASLR off), vmsplice, fanotify, quotas.
        Kernel => "kernel",
        // keyctl, add_key, request_key.
        Keyring => "keyring",
        // open_by_handle_at (the "shocker" escape), name_to_handle_at.
        FsHandle => "fs-handle",
        Userfaultfd => "userfaultfd",
        IoUring => "io_uring",
        // Socket families beyond UNIX/INET/INET6/NETLINK (AF_VSOCK, AF_ALG, AF_PACKET, ...),
        // raw sockets, firewall table writes.
        Network => "network",
        // Installing a seccomp filter of one's own (it could silence the runtime's tripwire).
        Seccomp => "seccomp",
        // A set-user-id or set-group-id mode bit on a file (it would be set-id to host ids on
        // the sandbox's idmapped volumes).
        SetId => "set-id",
        // Anything the runtime could not name.
        Other => "other",
    }
}
