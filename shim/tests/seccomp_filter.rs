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

/// What the profile must do with a call.
enum Expect {
    Allowed,
    Notified,
    Errno(i64),
}
use Expect::*;

/// A call, and what the profile must do with it.
struct Probe {
    what: &'static str,
    call: fn() -> i64,
    expect: Expect,
}

/// A scratch path for the mode probes (set by the test before it forks).
fn scratch(name: &str) -> std::ffi::CString {
    let dir = std::env::var("SECCOMP_FILTER_SCRATCH").unwrap();
    std::ffi::CString::new(format!("{dir}/{name}")).unwrap()
}

fn chmod(mode: libc::mode_t) -> i64 {
    // SAFETY: a valid path; changes only the scratch file.
    errno_of(unsafe { libc::chmod(scratch("file").as_ptr(), mode) } as i64)
}

fn create(name: &str, mode: libc::mode_t) -> i64 {
    // SAFETY: a valid path; the descriptor is closed.
    unsafe {
        let fd = libc::openat(
            libc::AT_FDCWD,
            scratch(name).as_ptr(),
            libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
            mode as libc::c_uint,
        );
        closed(fd as i64)
    }
}

/// The errno of an open (0 on success), closing the descriptor it returned.
fn closed(fd: i64) -> i64 {
    let result = errno_of(fd);
    if fd >= 0 {
        // SAFETY: the probe's own descriptor.
        unsafe { libc::close(fd as i32) };
    }
    result
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
    closed(unsafe { libc::socket(family, kind, protocol) } as i64)
}

const PROBES: &[Probe] = &[
    Probe {
        what: "socket(AF_UNIX, SOCK_STREAM)",
        call: || socket(libc::AF_UNIX, libc::SOCK_STREAM, 0),
        expect: Allowed,
    },
    Probe {
        what: "socket(AF_INET, SOCK_STREAM|SOCK_CLOEXEC)",
        call: || socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0),
        expect: Allowed,
    },
    Probe {
        what: "socket(AF_INET6, SOCK_DGRAM|SOCK_NONBLOCK)",
        call: || socket(libc::AF_INET6, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0),
        expect: Allowed,
    },
    Probe {
        what: "socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE)",
        call: || socket(libc::AF_NETLINK, libc::SOCK_RAW, 0),
        expect: Allowed,
    },
    Probe {
        what: "socket(AF_VSOCK, SOCK_STREAM)",
        call: || socket(libc::AF_VSOCK, libc::SOCK_STREAM, 0),
        expect: Notified,
    },
    Probe {
        what: "socket(AF_ALG, SOCK_SEQPACKET)",
        call: || socket(libc::AF_ALG, libc::SOCK_SEQPACKET, 0),
        expect: Notified,
    },
    Probe {
        what: "socket(AF_PACKET, SOCK_RAW)",
        call: || socket(libc::AF_PACKET, libc::SOCK_RAW, 0),
        expect: Notified,
    },
    Probe {
        what: "socket(AF_INET, SOCK_RAW)",
        call: || socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW),
        expect: Notified,
    },
    Probe {
        what: "prctl(PR_GET_DUMPABLE)",
        // SAFETY: a query.
        call: || errno_of(unsafe { libc::prctl(libc::PR_GET_DUMPABLE) } as i64),
        expect: Allowed,
    },
    Probe {
        what: "prctl(PR_SET_SECCOMP, FILTER) with the upper half of the option set",
        call: || {
            // SAFETY: the raw syscall with a bogus filter pointer; it never gets that far.
            errno_of(unsafe {
                libc::syscall(libc::SYS_prctl, 0x1_0000_0016u64, 2u64, 0u64, 0u64, 0u64)
            })
        },
        expect: Notified,
    },
    Probe {
        what: "seccomp(SECCOMP_SET_MODE_FILTER)",
        // SAFETY: a null filter; it never gets that far.
        call: || errno_of(unsafe { libc::syscall(libc::SYS_seccomp, 1u64, 0u64, 0u64) }),
        expect: Notified,
    },
    Probe {
        what: "seccomp(SECCOMP_GET_ACTION_AVAIL)",
        call: || {
            let action: u32 = 0x7fff_0000; // SECCOMP_RET_ALLOW
                                           // SAFETY: a query with a valid pointer.
            errno_of(unsafe { libc::syscall(libc::SYS_seccomp, 2u64, 0u64, &action) })
        },
        expect: Allowed,
    },
    Probe {
        what: "personality(0xffffffff) (query)",
        // SAFETY: a query.
        call: || errno_of(unsafe { libc::personality(0xffff_ffff) } as i64),
        expect: Allowed,
    },
    Probe {
        what: "personality(ADDR_NO_RANDOMIZE)",
        // SAFETY: would only change this child.
        call: || errno_of(unsafe { libc::personality(0x0040000) } as i64),
        expect: Notified,
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
        expect: Notified,
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
        expect: Allowed,
    },
    Probe {
        what: "chmod(0644)",
        call: || chmod(0o644),
        expect: Allowed,
    },
    Probe {
        what: "chmod(01777) (sticky)",
        call: || chmod(0o1777),
        expect: Allowed,
    },
    Probe {
        what: "chmod(04755) (set-user-id)",
        call: || chmod(0o4755),
        expect: Notified,
    },
    Probe {
        what: "chmod(02775) (set-group-id)",
        call: || chmod(0o2775),
        expect: Notified,
    },
    Probe {
        what: "fchmodat(04755)",
        // SAFETY: a valid path.
        call: || {
            errno_of(
                unsafe { libc::fchmodat(libc::AT_FDCWD, scratch("file").as_ptr(), 0o4755, 0) }
                    as i64,
            )
        },
        expect: Notified,
    },
    Probe {
        what: "openat(O_CREAT, 0644)",
        call: || create("plain", 0o644),
        expect: Allowed,
    },
    Probe {
        what: "openat(O_CREAT, 04755)",
        call: || create("setuid", 0o4755),
        expect: Notified,
    },
    Probe {
        what: "mknodat(S_IFREG | 02755)",
        // SAFETY: a valid path.
        call: || {
            errno_of(unsafe {
                libc::mknodat(
                    libc::AT_FDCWD,
                    scratch("node").as_ptr(),
                    libc::S_IFREG | 0o2755,
                    0,
                )
            } as i64)
        },
        expect: Notified,
    },
    Probe {
        what: "openat(O_RDONLY) with set-id bits left in the unused mode register",
        // SAFETY: a valid path; the descriptor is closed.
        call: || unsafe {
            let fd = libc::syscall(
                libc::SYS_openat,
                libc::AT_FDCWD,
                scratch("file").as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
                0o6755u64,
            );
            closed(fd as i64)
        },
        expect: Allowed,
    },
    Probe {
        what: "openat(O_TMPFILE, 04755)",
        // SAFETY: a valid directory; the descriptor is closed.
        call: || unsafe {
            let dir = std::env::var("SECCOMP_FILTER_SCRATCH").unwrap();
            let dir = std::ffi::CString::new(dir).unwrap();
            let fd = libc::openat(
                libc::AT_FDCWD,
                dir.as_ptr(),
                libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
                0o4755 as libc::c_uint,
            );
            closed(fd as i64)
        },
        expect: Notified,
    },
    Probe {
        what: "open(O_CREAT, 02755) (the legacy call)",
        // SAFETY: a valid path; the descriptor is closed.
        call: || unsafe {
            let fd = libc::syscall(
                libc::SYS_open,
                scratch("legacy").as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o2755u64,
            );
            closed(fd as i64)
        },
        expect: Notified,
    },
    Probe {
        what: "creat(0600)",
        // SAFETY: a valid path; the descriptor is closed.
        call: || unsafe {
            let fd = libc::creat(scratch("created").as_ptr(), 0o600);
            closed(fd as i64)
        },
        expect: Allowed,
    },
    Probe {
        what: "openat2 (answered ENOSYS: callers fall back to openat)",
        // SAFETY: a valid path and a zeroed open_how of the right size.
        call: || {
            let how = [0u64; 3];
            errno_of(unsafe {
                libc::syscall(
                    libc::SYS_openat2,
                    libc::AT_FDCWD,
                    scratch("file").as_ptr(),
                    how.as_ptr(),
                    24usize,
                )
            })
        },
        expect: Errno(libc::ENOSYS as i64),
    },
];

#[test]
fn the_argument_rules_decide_as_intended_in_a_real_filter() {
    let mut profile = seccomp::agent_profile("/unused", "m");
    for rule in profile["syscalls"].as_array_mut().unwrap() {
        if rule["action"] == "SCMP_ACT_NOTIFY" {
            rule["action"] = "SCMP_ACT_ERRNO".into();
            rule["errnoRet"] = NOTIFIED_ERRNO.into();
        }
    }
    let scratch = std::env::temp_dir().join(format!("seccomp-filter-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    std::fs::write(scratch.join("file"), "").unwrap();
    std::env::set_var("SECCOMP_FILTER_SCRATCH", &scratch);
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
                let ok = match probe.expect {
                    Allowed => errno != NOTIFIED_ERRNO && errno != libc::EPERM as i64,
                    Notified => errno == NOTIFIED_ERRNO,
                    Errno(expected) => errno == expected,
                };
                if !ok {
                    wrong.push(format!("{}: errno {errno}", probe.what));
                }
            }
            let _ = std::fs::remove_dir_all(&scratch);
            assert!(wrong.is_empty(), "decided wrongly: {wrong:#?}");
        }
    }
}
