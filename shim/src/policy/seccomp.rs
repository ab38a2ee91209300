//! The agent seccomp profile: deny by default, an allowlist of what ordinary programs need
//! (derived from Docker's default profile), and the escape-relevant calls routed to the shim's
//! listener with `SCMP_ACT_NOTIFY`, which always answers EPERM and reports the attempt.
//!
//! Notified calls are only ever denied: the listener never lets one continue (NOTIFY+CONTINUE
//! is not a security decision, the kernel documentation says so), so the race between the
//! notification and the arguments it carries cannot turn a denial into an allowance.

use agentsandbox_contract::Category;
use serde_json::{json, Value};

/// errno returned for everything outside the allowlist.
pub const EPERM: u32 = 1;
/// errno for clone3: libc then falls back to clone, whose flags seccomp can inspect.
pub const ENOSYS: u32 = 38;

/// Namespace-creating clone flags (CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID,
/// NEWNET). clone with any of them is an escape attempt; without them it is fork/thread.
pub const CLONE_NAMESPACE_FLAGS: [u64; 7] = [
    0x0002_0000,
    0x0200_0000,
    0x0400_0000,
    0x0800_0000,
    0x1000_0000,
    0x2000_0000,
    0x4000_0000,
];

/// An escape-relevant syscall and the category it is reported under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notified {
    pub syscall: &'static str,
    pub category: Category,
}

const fn n(syscall: &'static str, category: Category) -> Notified {
    Notified { syscall, category }
}

/// Denied and reported. Categories are what `status.security.attemptsByCategory` counts.
pub const NOTIFIED: &[Notified] = &[
    n("unshare", Category::Namespace),
    n("setns", Category::Namespace),
    n("mount", Category::Mount),
    n("umount2", Category::Mount),
    n("pivot_root", Category::Mount),
    n("fsopen", Category::Mount),
    n("fsconfig", Category::Mount),
    n("fsmount", Category::Mount),
    n("fspick", Category::Mount),
    n("move_mount", Category::Mount),
    n("open_tree", Category::Mount),
    n("mount_setattr", Category::Mount),
    n("ptrace", Category::Ptrace),
    n("process_vm_readv", Category::Ptrace),
    n("process_vm_writev", Category::Ptrace),
    n("kcmp", Category::Ptrace),
    n("pidfd_getfd", Category::Ptrace),
    n("bpf", Category::Bpf),
    n("perf_event_open", Category::Kernel),
    n("init_module", Category::Kernel),
    n("finit_module", Category::Kernel),
    n("delete_module", Category::Kernel),
    n("kexec_load", Category::Kernel),
    n("kexec_file_load", Category::Kernel),
    n("keyctl", Category::Keyring),
    n("add_key", Category::Keyring),
    n("request_key", Category::Keyring),
    n("open_by_handle_at", Category::FsHandle),
    n("userfaultfd", Category::Userfaultfd),
    n("io_uring_setup", Category::IoUring),
    n("io_uring_enter", Category::IoUring),
    n("io_uring_register", Category::IoUring),
    n("reboot", Category::Kernel),
    n("swapon", Category::Kernel),
    n("swapoff", Category::Kernel),
    n("iopl", Category::Kernel),
    n("ioperm", Category::Kernel),
    // Denied before this list existed, silently; only an escape or a probe makes them.
    n("name_to_handle_at", Category::FsHandle),
    n("chroot", Category::Mount),
    n("listmount", Category::Mount),
    n("statmount", Category::Mount),
    n("process_madvise", Category::Ptrace),
    n("vmsplice", Category::Kernel),
    n("acct", Category::Kernel),
    n("syslog", Category::Kernel),
    n("fanotify_init", Category::Kernel),
    n("quotactl", Category::Kernel),
    n("quotactl_fd", Category::Kernel),
    n("modify_ldt", Category::Kernel),
    n("uselib", Category::Kernel),
    n("lookup_dcookie", Category::Kernel),
    n("settimeofday", Category::Kernel),
    n("clock_settime", Category::Kernel),
    n("sethostname", Category::Kernel),
    n("setdomainname", Category::Kernel),
    // The listener answers ENOSYS (glibc then falls back to clone, whose flags the filter
    // sees) and reports only calls that asked for a namespace (see `clone3_is_attempt`).
    n("clone3", Category::Namespace),
];

/// Denied (EPERM) and not reported: NUMA placement calls ordinary programs make (libnuma,
/// some JVM options) that need CAP_SYS_NICE on the host. Everything else outside
/// [`ALLOWED`] and [`NOTIFIED`] is a call the kernel no longer has or that no supported
/// architecture names.
pub const DENIED_SILENTLY: &[&str] = &["mbind", "migrate_pages", "move_pages"];

/// Calls that set a file's mode, with the index of their mode argument. A mode with the
/// set-user-id or set-group-id bit is denied and reported: the sandbox's volumes are
/// idmapped (a file its root creates is owned by uid 0 on the volume), so a set-id file it
/// made there would be set-id to host root for whoever mounts the volume without a user
/// namespace (a runc pod sharing the claim, the node). Inside the sandbox the bits mean
/// nothing anyway (volumes are nosuid, and no_new_privs is set).
pub const MODE_SETTING: [(&str, u32); 9] = [
    ("chmod", 1),
    ("fchmod", 1),
    ("fchmodat", 2),
    ("fchmodat2", 2),
    ("creat", 1),
    ("open", 2),
    ("openat", 3),
    ("mknod", 1),
    ("mknodat", 2),
];
/// S_ISUID | S_ISGID.
pub const SET_ID_BITS: u64 = 0o6000;

/// `open` and `openat` with the index of their flags argument: without O_CREAT or O_TMPFILE
/// the kernel ignores the mode argument (callers may leave anything in that register), so
/// such opens are allowed whatever it holds.
pub const OPEN_FLAGS: [(&str, u32); 2] = [("open", 1), ("openat", 2)];
/// O_CREAT | __O_TMPFILE (the same values on x86_64 and aarch64).
pub const CREATING_OPEN_FLAGS: u64 = 0o100 | 0o20000000;

/// Calls answered ENOSYS, as if the kernel were older, so that programs take their fallback:
/// `openat2` passes its mode inside a structure the filter cannot read (and the listener
/// could read only racily), and every caller falls back to `openat` on ENOSYS.
pub const ANSWERED_ENOSYS: &[&str] = &["openat2"];

/// Address families a sandbox may open sockets of: local, IPv4, IPv6 and netlink (routing
/// information, used by ordinary resolvers and `ip`). Every other family (AF_VSOCK reaches
/// host and VM services, AF_ALG and AF_PACKET are kernel attack surface) is denied and
/// reported; so are raw and packet-type sockets of IPv4/IPv6.
pub const SOCKET_FAMILIES_ALLOWED: [u64; 2] = [1 /* AF_UNIX */, 16 /* AF_NETLINK */];
/// IPv4 and IPv6, for the socket types below only.
pub const INET_FAMILIES: [u64; 2] = [2 /* AF_INET */, 10 /* AF_INET6 */];
/// SOCK_STREAM, SOCK_DGRAM (ICMP echo sockets included), SOCK_SEQPACKET (SCTP).
pub const INET_SOCKET_TYPES: [u64; 3] = [1, 2, 5];
/// The socket type without SOCK_NONBLOCK/SOCK_CLOEXEC.
const SOCK_TYPE_MASK: u64 = 0xf;

/// `setsockopt` (level, option) pairs that write firewall tables (iptables/ip6tables
/// IPT_SO_SET_REPLACE and _ADD_COUNTERS): denied and reported (the kernel would refuse them
/// too, the pod's network namespace belonging to the host).
pub const FIREWALL_SOCKOPTS: [(u64, u64); 4] = [(0, 64), (0, 65), (41, 64), (41, 65)];

/// `prctl(PR_SET_SECCOMP)` and `seccomp(SECCOMP_SET_MODE_FILTER)`: a filter of the sandbox's
/// own would outrank the runtime's notifications (an ERRNO beats a NOTIFY), silencing the
/// tripwire. Denied and reported; the other `seccomp` operations (action and size queries,
/// strict mode) stay allowed.
const PR_SET_SECCOMP: u64 = 22;
const SECCOMP_SET_MODE_FILTER: u64 = 1;

/// The lower 32 bits of an argument whose kernel type is a 32-bit int: the upper half of the
/// register is ignored by the kernel, so a rule must ignore it too.
const LOW32: u64 = 0xffff_ffff;

/// Architectures the profile admits. Calls through the 32-bit (`int 0x80`) and x32 ABIs are
/// not: libseccomp's bad-architecture action kills the calling thread (SIGSYS). Their syscall
/// numbers differ from the native ones (a second table the allowlist would have to get right,
/// `socketcall` hides the socket family), no agent needs them, and seccomp gives a filter no
/// way to notify a wrong-architecture call, so these are denied and not reported.
pub const ARCHITECTURES: [&str; 2] = ["SCMP_ARCH_X86_64", "SCMP_ARCH_AARCH64"];

/// Category of namespace-flagged clone calls.
pub const CLONE_CATEGORY: Category = Category::Namespace;

/// What ordinary programs need: processes, files, memory, signals, time, sockets, polling.
/// Everything not here and not notified gets EPERM.
pub const ALLOWED: &[&str] = &[
    "accept",
    "accept4",
    "access",
    "adjtimex",
    "alarm",
    "bind",
    "brk",
    "cachestat",
    "capget",
    "capset",
    "chdir",
    "chown",
    "chown32",
    "clock_adjtime",
    "clock_getres",
    "clock_gettime",
    "clock_nanosleep",
    "close",
    "close_range",
    "connect",
    "copy_file_range",
    "dup",
    "dup2",
    "dup3",
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_ctl_old",
    "epoll_pwait",
    "epoll_pwait2",
    "epoll_wait",
    "epoll_wait_old",
    "eventfd",
    "eventfd2",
    "execve",
    "execveat",
    "exit",
    "exit_group",
    "faccessat",
    "faccessat2",
    "fadvise64",
    "fadvise64_64",
    "fallocate",
    "fanotify_mark",
    "fchdir",
    "fchown",
    "fchown32",
    "fchownat",
    "fcntl",
    "fcntl64",
    "fdatasync",
    "fgetxattr",
    "flistxattr",
    "flock",
    "fork",
    "fremovexattr",
    "fsetxattr",
    "fstat",
    "fstat64",
    "fstatat64",
    "fstatfs",
    "fstatfs64",
    "fsync",
    "ftruncate",
    "ftruncate64",
    "futex",
    "futex_requeue",
    "futex_time64",
    "futex_wait",
    "futex_waitv",
    "futex_wake",
    "futimesat",
    "get_mempolicy",
    "get_robust_list",
    "get_thread_area",
    "getcpu",
    "getcwd",
    "getdents",
    "getdents64",
    "getegid",
    "getegid32",
    "geteuid",
    "geteuid32",
    "getgid",
    "getgid32",
    "getgroups",
    "getgroups32",
    "getitimer",
    "getpeername",
    "getpgid",
    "getpgrp",
    "getpid",
    "getppid",
    "getpriority",
    "getrandom",
    "getresgid",
    "getresgid32",
    "getresuid",
    "getresuid32",
    "getrlimit",
    "getrusage",
    "getsid",
    "getsockname",
    "getsockopt",
    "gettid",
    "gettimeofday",
    "getuid",
    "getuid32",
    "getxattr",
    "inotify_add_watch",
    "inotify_init",
    "inotify_init1",
    "inotify_rm_watch",
    "io_cancel",
    "io_destroy",
    "io_getevents",
    "io_pgetevents",
    "io_setup",
    "io_submit",
    "ioctl",
    "ioprio_get",
    "ioprio_set",
    "kill",
    "landlock_add_rule",
    "landlock_create_ruleset",
    "landlock_restrict_self",
    "lchown",
    "lchown32",
    "lgetxattr",
    "link",
    "linkat",
    "listen",
    "listxattr",
    "llistxattr",
    "lremovexattr",
    "lseek",
    "lsetxattr",
    "lstat",
    "lstat64",
    "madvise",
    "map_shadow_stack",
    "membarrier",
    "memfd_create",
    "memfd_secret",
    "mincore",
    "mkdir",
    "mkdirat",
    "mlock",
    "mlock2",
    "mlockall",
    "mmap",
    "mmap2",
    "mprotect",
    "mq_getsetattr",
    "mq_notify",
    "mq_open",
    "mq_timedreceive",
    "mq_timedsend",
    "mq_unlink",
    "mremap",
    "mseal",
    "msgctl",
    "msgget",
    "msgrcv",
    "msgsnd",
    "msync",
    "munlock",
    "munlockall",
    "munmap",
    "nanosleep",
    "newfstatat",
    "pause",
    "pidfd_open",
    "pidfd_send_signal",
    "pipe",
    "pipe2",
    "pkey_alloc",
    "pkey_free",
    "pkey_mprotect",
    "poll",
    "ppoll",
    "ppoll_time64",
    "pread64",
    "preadv",
    "preadv2",
    "prlimit64",
    "process_mrelease",
    "pselect6",
    "pselect6_time64",
    "pwrite64",
    "pwritev",
    "pwritev2",
    "read",
    "readahead",
    "readlink",
    "readlinkat",
    "readv",
    "recv",
    "recvfrom",
    "recvmmsg",
    "recvmmsg_time64",
    "recvmsg",
    "remap_file_pages",
    "removexattr",
    "rename",
    "renameat",
    "renameat2",
    "restart_syscall",
    "rmdir",
    "rseq",
    "rt_sigaction",
    "rt_sigpending",
    "rt_sigprocmask",
    "rt_sigqueueinfo",
    "rt_sigreturn",
    "rt_sigsuspend",
    "rt_sigtimedwait",
    "rt_sigtimedwait_time64",
    "rt_tgsigqueueinfo",
    "sched_get_priority_max",
    "sched_get_priority_min",
    "sched_getaffinity",
    "sched_getattr",
    "sched_getparam",
    "sched_getscheduler",
    "sched_rr_get_interval",
    "sched_rr_get_interval_time64",
    "sched_setaffinity",
    "sched_setattr",
    "sched_setparam",
    "sched_setscheduler",
    "sched_yield",
    "select",
    "semctl",
    "semget",
    "semop",
    "semtimedop",
    "semtimedop_time64",
    "send",
    "sendfile",
    "sendfile64",
    "sendmmsg",
    "sendmsg",
    "sendto",
    "set_mempolicy",
    "set_robust_list",
    "set_thread_area",
    "set_tid_address",
    "setfsgid",
    "setfsgid32",
    "setfsuid",
    "setfsuid32",
    "setgid",
    "setgid32",
    "setgroups",
    "setgroups32",
    "setitimer",
    "setpgid",
    "setpriority",
    "setregid",
    "setregid32",
    "setresgid",
    "setresgid32",
    "setresuid",
    "setresuid32",
    "setreuid",
    "setreuid32",
    "setrlimit",
    "setsid",
    "setuid",
    "setuid32",
    "setxattr",
    "shmat",
    "shmctl",
    "shmdt",
    "shmget",
    "shutdown",
    "sigaltstack",
    "signalfd",
    "signalfd4",
    "sigprocmask",
    "sigreturn",
    "socketpair",
    "splice",
    "stat",
    "stat64",
    "statfs",
    "statfs64",
    "statx",
    "symlink",
    "symlinkat",
    "sync",
    "sync_file_range",
    "syncfs",
    "sysinfo",
    "tee",
    "tgkill",
    "time",
    "timer_create",
    "timer_delete",
    "timer_getoverrun",
    "timer_gettime",
    "timer_gettime64",
    "timer_settime",
    "timer_settime64",
    "timerfd_create",
    "timerfd_gettime",
    "timerfd_gettime64",
    "timerfd_settime",
    "timerfd_settime64",
    "times",
    "tkill",
    "truncate",
    "truncate64",
    "ugetrlimit",
    "umask",
    "uname",
    "unlink",
    "unlinkat",
    "utime",
    "utimensat",
    "utimensat_time64",
    "utimes",
    "vfork",
    "wait4",
    "waitid",
    "waitpid",
    "write",
    "writev",
    "arch_prctl",
];

/// `personality` values ordinary programs use (Linux default, 32-bit emulation, and queries);
/// anything else (e.g. ADDR_NO_RANDOMIZE to defeat ASLR) is denied.
pub const PERSONALITY_ALLOWED: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The profile as an OCI `linux.seccomp` object. `listener_path` is the shim's notification
/// socket. There is no profile without one: notified calls would become plain errors (the
/// tripwire silently gone), and libcontainer drops rules whose action equals the default,
/// which would leave the catch-all allowances of the conditional rules alone.
pub fn agent_profile(listener_path: &str, listener_metadata: &str) -> Value {
    let notify_action = "SCMP_ACT_NOTIFY";
    let mut rules = vec![json!({
        "names": ALLOWED,
        "action": "SCMP_ACT_ALLOW",
    })];
    rules.push(json!({
        "names": NOTIFIED.iter().map(|n| n.syscall).collect::<Vec<_>>(),
        "action": notify_action,
        "errnoRet": EPERM,
    }));
    // clone: allowed without namespace flags, notified with any of them (one rule per flag,
    // since seccomp compares masked values for equality only).
    let mask: u64 = CLONE_NAMESPACE_FLAGS.iter().sum();
    rules.push(json!({
        "names": ["clone"],
        "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": 0, "valueTwo": mask, "op": "SCMP_CMP_MASKED_EQ"}],
    }));
    for flag in CLONE_NAMESPACE_FLAGS {
        rules.push(json!({
            "names": ["clone"],
            "action": notify_action,
            "errnoRet": EPERM,
            "args": [{"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}],
        }));
    }
    rules.extend(conditional_rules(notify_action));
    rules.push(json!({
        "names": ANSWERED_ENOSYS,
        "action": "SCMP_ACT_ERRNO",
        "errnoRet": ENOSYS,
    }));
    let mut profile = json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ARCHITECTURES,
        "syscalls": rules,
    });
    profile["listenerPath"] = json!(listener_path);
    profile["listenerMetadata"] = json!(listener_metadata);
    // No SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: it needs libseccomp >= 2.6 and the nodes we
    // support ship 2.5 (Debian 12). Without it a signal interrupts a pending notification and
    // the syscall is restarted, i.e. denied again: no decision changes.
    profile
}

fn rule(name: &str, action: &str, args: Vec<Value>) -> Value {
    let mut rule = json!({"names": [name], "action": action, "args": args});
    if action != "SCMP_ACT_ALLOW" {
        rule["errnoRet"] = json!(EPERM);
    }
    rule
}

fn eq(index: u32, value: u64) -> Value {
    json!({"index": index, "value": value, "op": "SCMP_CMP_EQ"})
}

fn masked(index: u32, mask: u64, value: u64) -> Value {
    json!({"index": index, "value": value, "valueTwo": mask, "op": "SCMP_CMP_MASKED_EQ"})
}

/// Always true: a catch-all that, unlike a rule without arguments, does not override the
/// syscall's other rules (libseccomp lets an unconditional rule win outright, and checks an
/// argument's equality comparisons before its range comparisons, so this applies only when
/// no specific rule matched; shim/tests/seccomp_filter.rs loads the profile to prove it).
fn any(index: u32) -> Value {
    json!({"index": index, "value": 0, "op": "SCMP_CMP_GE"})
}

/// Rules that look at arguments. Order matters: for each syscall the specific rules come
/// first and the catch-all last.
fn conditional_rules(notify: &str) -> Vec<Value> {
    let mut rules = Vec::new();
    for family in SOCKET_FAMILIES_ALLOWED {
        rules.push(rule("socket", "SCMP_ACT_ALLOW", vec![eq(0, family)]));
    }
    for family in INET_FAMILIES {
        for kind in INET_SOCKET_TYPES {
            rules.push(rule(
                "socket",
                "SCMP_ACT_ALLOW",
                vec![eq(0, family), masked(1, SOCK_TYPE_MASK, kind)],
            ));
        }
    }
    rules.push(rule("socket", notify, vec![any(0)]));
    for (level, option) in FIREWALL_SOCKOPTS {
        rules.push(rule(
            "setsockopt",
            notify,
            vec![masked(1, LOW32, level), masked(2, LOW32, option)],
        ));
    }
    rules.push(rule("setsockopt", "SCMP_ACT_ALLOW", vec![any(1)]));
    rules.push(rule(
        "prctl",
        notify,
        vec![masked(0, LOW32, PR_SET_SECCOMP)],
    ));
    rules.push(rule("prctl", "SCMP_ACT_ALLOW", vec![any(0)]));
    rules.push(rule(
        "seccomp",
        notify,
        vec![masked(0, LOW32, SECCOMP_SET_MODE_FILTER)],
    ));
    rules.push(rule("seccomp", "SCMP_ACT_ALLOW", vec![any(0)]));
    // open/openat: the flags decide first (so that every rule starts at the same argument,
    // which is what libseccomp orders correctly): not creating, allowed; creating with a
    // mode without set-id bits, allowed; anything else, notified.
    for (syscall, flags) in OPEN_FLAGS {
        let mode = flags + 1;
        rules.push(rule(
            syscall,
            "SCMP_ACT_ALLOW",
            vec![masked(flags, CREATING_OPEN_FLAGS, 0)],
        ));
        for creating in [0o100, 0o20000000] {
            rules.push(rule(
                syscall,
                "SCMP_ACT_ALLOW",
                vec![
                    masked(flags, creating, creating),
                    masked(mode, SET_ID_BITS, 0),
                ],
            ));
        }
        rules.push(rule(syscall, notify, vec![any(flags)]));
    }
    for (syscall, mode) in MODE_SETTING {
        if OPEN_FLAGS.iter().any(|(open, _)| *open == syscall) {
            continue;
        }
        rules.push(rule(
            syscall,
            "SCMP_ACT_ALLOW",
            vec![masked(mode, SET_ID_BITS, 0)],
        ));
        rules.push(rule(syscall, notify, vec![any(mode)]));
    }
    for value in PERSONALITY_ALLOWED {
        rules.push(rule("personality", "SCMP_ACT_ALLOW", vec![eq(0, value)]));
    }
    rules.push(rule("personality", notify, vec![any(0)]));
    rules
}

/// Whether a notified `clone3` is an escape attempt: its `clone_args.flags` (the first field
/// of the structure it points to, read by the listener) ask for a namespace. Other calls are
/// glibc's first try at fork or a thread, answered ENOSYS so that it falls back to clone.
pub fn clone3_is_attempt(flags: Option<u64>) -> bool {
    // CLONE_NEWTIME exists only for clone3 (in clone's flags the bit is the exit signal).
    const CLONE_NEWTIME: u64 = 0x80;
    // Unreadable arguments are reported: a caller that hides them is not glibc.
    flags.is_none_or(|f| f & (CLONE_NAMESPACE_FLAGS.iter().sum::<u64>() | CLONE_NEWTIME) != 0)
}

/// Categories of the calls the conditional rules notify.
const CONDITIONAL: &[Notified] = &[
    n("socket", Category::Network),
    n("setsockopt", Category::Network),
    n("prctl", Category::Seccomp),
    n("seccomp", Category::Seccomp),
    n("personality", Category::Kernel),
    n("chmod", Category::SetId),
    n("fchmod", Category::SetId),
    n("fchmodat", Category::SetId),
    n("fchmodat2", Category::SetId),
    n("creat", Category::SetId),
    n("open", Category::SetId),
    n("openat", Category::SetId),
    n("mknod", Category::SetId),
    n("mknodat", Category::SetId),
];

/// The category a notified syscall is reported under (`clone` with namespace flags included).
pub fn category_of(syscall: &str) -> Option<Category> {
    if syscall == "clone" {
        return Some(CLONE_CATEGORY);
    }
    NOTIFIED
        .iter()
        .chain(CONDITIONAL)
        .find(|n| n.syscall == syscall)
        .map(|n| n.category)
}
