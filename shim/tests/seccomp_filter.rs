//! The agent profile compiled by libcontainer's libseccomp and loaded into a real process:
//! the argument rules decide as intended (allowed calls run, the others reach the
//! notification action). NOTIFY is swapped for a distinctive errno here (no listener in a
//! unit test); everything else is the profile the shim writes.
//!
//! One test in this binary: it forks, and a child of a multi-threaded test harness must not
//! find another test holding the allocator's lock.

use agentsandbox_shim::policy::seccomp;
use oci_spec::runtime::LinuxSeccomp;

/// What the child sees as "notified".
const NOTIFIED_ERRNO: i64 = 77;

/// A call, and whether the profile must let it run.
struct Probe {
    what: &'static str,
    call: fn() -> i64,
    allowed: bool,
}

fn errno_of(rc: i64) -> i64 {
    if rc < 0 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as i64
    } else {
        0
    }
}

fn socket(family: i32, kind: i32, protocol: i32) -> i64 {
    // SAFETY: plain syscall; the descriptor is closed.
    let fd = unsafe { libc::socket(family, kind, protocol) };
    let result = errno_of(fd as i64);
    if fd >= 0 {
        // SAFETY: our own descriptor.
        unsafe { libc::close(fd) };
    }
    result
}

const PROBES: &[Probe] = &[
    Probe {
        what: "socket(AF_UNIX, SOCK_STREAM)",
        call: || socket(libc::AF_UNIX, libc::SOCK_STREAM, 0),
        allowed: true,
    },
    Probe {
        what: "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC)",
        call: || socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0),
        allowed: true,
    },
    Probe {
        what: "socket(AF_INET6, SOCK_DGRAM|SOCK_NONBLOCK)",
        call: || socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0),
        allowed: true,
    },
    Probe {
        what: "socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE)",
        call: || socket(libc::AF_NETLINK, libc::SOCK_RAW, 0),
        allowed: true,
    },
    Probe {
        what: "socket(AF_VSOCK, SOCK_STREAM)",
        call: || socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0),
        allowed: false,
    },
    Probe {
        what: "socket(AF_ALG, SOCK_SEQPACKET)",
        call: || socket(libc::AF_ALG, libc::SOCK_SEQPACKET, 0),
        allowed: false,
    },
    Probe {
        what: "socket(AF_PACKET, SOCK_RAW)",
        call: || socket(libc::AF_PACKET, libc::SOCK_RAW, 0),
        allowed: false,
    },
    Probe {
        what: "socket(AF_INET, SOCK_RAW)",
        call: || socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW),
        allowed: false,
    },
    Probe {
        what: "prctl(PR_GET_DUMPABLE)",
        // SAFETY: a query.
        call: || errno_of(unsafe { libc::prctl(libc::PR_GET_DUMPABLE) } as i64),
        allowed: true,
    },
    Probe {
        what: "prctl(PR_SET_SECCOMP, FILTER) with the upper half of the option set",
        call: || {
            // SAFETY: the raw syscall with a bogus filter pointer; it never gets that far.
            errno_of(unsafe {
                libc::syscall(libc::SYS_prctl, 0x1_0000_0016u64, 2u64, 0u64, 0u64, 0u64)
            })
        },
        allowed: false,
    },
    Probe {
        what: "seccomp(SECCOMP_SET_MODE_FILTER)",
        // SAFETY: a null filter; it never gets that far.
        call: || errno_of(unsafe { libc::syscall(libc::SYS_seccomp, 1u64, 0u64, 0u64) }),
        allowed: false,
    },
    Probe {
        what: "seccomp(SECCOMP_GET_ACTION_AVAIL)",
        call: || {
            let action: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
                                           // SAFETY: a query with a valid pointer.
            errno_of(unsafe { libc::syscall(libc::SYS_seccomp, 2u64, 0u64, &action) })
        },
        allowed: true,
    },
    Probe {
        what: "personality(0xffffffff) (query)",
        // SAFETY: a query.
        call: || errno_of(unsafe { libc::personality(0xffff_ffff) } as i64),
        allowed: true,
    },
    Probe {
        what: "personality(ADDR_NO_RANDOMIZE)",
        // SAFETY: would only change this child.
        call: || errno_of(unsafe { libc::personality(0x0040000) } as i64),
        allowed: false,
    },
    Probe {
        what: "setsockopt(SOL_IP, IPT_SO_SET_REPLACE)",
        call: || {
            // SAFETY: a UDP socket and a bogus option buffer; the filter answers first.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                let buffer = [0u8; 16];
                let rc = libc::setsockopt(fd, libc::SOL_IP, 64, buffer.as_ptr().cast(), 16);
                let result = errno_of(rc as i64);
                libc::close(fd);
                result
            }
        },
        allowed: false,
    },
    Probe {
        what: "setsockopt(SOL_SOCKET, SO_REUSEADDR)",
        call: || {
            // SAFETY: a UDP socket and a valid option.
            unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
                let one: libc::c_int = 1;
                let rc = libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_REUSEADDR,
                    (&one as *const libc::c_int).cast(),
                    4,
                );
                let result = errno_of(rc as i64);
                libc::close(fd);
                result
            }
        },
        allowed: true,
    },
];

#[test]
fn the_argument_rules_decide_as_intended_in_a_real_filter() {
    let mut profile = seccomp::agent_profile("/unused", "m");
    let text = serde_json::to_string(&profile)
        .unwrap()
        .replace("SCMP_ACT_NOTIFY", "SCMP_ACT_ERRNO");
    profile = serde_json::from_str(&text).unwrap();
    for rule in profile["syscalls"].as_array_mut().unwrap() {
        if rule["action"] == "SCMP_ACT_ERRNO" {
            rule["errnoRet"] = NOTIFIED_ERRNO.into();
        }
    }
    let object = profile.as_object_mut().unwrap();
    object.remove("listenerPath");
    object.remove("listenerMetadata");
    let seccomp: LinuxSeccomp = serde_json::from_value(profile).unwrap();

    let (read, write) = nix::unistd::pipe().unwrap();
    // SAFETY: the child only makes syscalls, writes to a pipe and exits.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            // SAFETY: plain prctl.
            unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
            let loaded = libcontainer::seccomp::initialize_seccomp(&seccomp).is_ok();
            let mut out = vec![u8::from(loaded)];
            for probe in PROBES {
                out.push((probe.call)() as u8);
            }
            let _ = nix::unistd::write(&write, &out);
            // SAFETY: leave without running the harness's destructors.
            unsafe { libc::_exit(0) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(write);
            let mut out = Vec::new();
            std::io::Read::read_to_end(&mut std::fs::File::from(read), &mut out).unwrap();
            nix::sys::wait::waitpid(child, None).unwrap();
            assert_eq!(out.first(), Some(&1), "the profile loads");
            let mut wrong = Vec::new();
            for (probe, errno) in PROBES.iter().zip(&out[1..]) {
                let errno = *errno as i64;
                let ok = if probe.allowed {
                    errno != NOTIFIED_ERRNO && errno != libc::EPERM as i64
                } else {
                    errno == NOTIFIED_ERRNO
                };
                if !ok {
                    wrong.push(format!("{}: errno {errno}", probe.what));
                }
            }
            assert!(wrong.is_empty(), "decided wrongly: {wrong:#?}");
        }
    }
}
