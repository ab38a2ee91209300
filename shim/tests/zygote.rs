//! The launcher zygote as a real process (the `agentsandbox-launcher` binary of this build):
//! it runs from a sealed memfd, answers each request from a fresh worker while it stays the
//! same process, and a zygote that died is replaced on the next request. Creating and
//! entering real containers through it is what every e2e runtime test does.

use std::path::PathBuf;

use agentsandbox_shim::launcher::{
    ExecRequest, LaunchRequest, LaunchResponse, Launcher, StdioPaths,
};
use agentsandbox_shim::zygote::ZygoteLauncher;

/// A launcher of this build, registering its zygotes in this test's own `registry`.
fn launcher_with(registry: &str) -> ZygoteLauncher {
    ZygoteLauncher::new(
        PathBuf::from(env!("CARGO_BIN_EXE_agentsandbox-launcher")),
        std::env::temp_dir().join(format!("asb-zygotes-{registry}-{}", std::process::id())),
    )
}

fn launcher() -> ZygoteLauncher {
    launcher_with("own")
}

/// (device, inode) of the file a process runs from.
fn exe_identity(pid: u32) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(format!("/proc/{pid}/exe")).unwrap();
    (meta.dev(), meta.ino())
}

/// An exec whose process file does not exist: the worker fails before touching anything.
fn missing_exec(dir: &std::path::Path) -> LaunchRequest {
    LaunchRequest::Exec(ExecRequest {
        id: "c1".into(),
        bundle: dir.join("bundle"),
        process: dir.join("no-such-process.json"),
        stdio: StdioPaths::default(),
        init_pid: 1,
        console_socket: None,
    })
}

/// A directory path of this test process (never created: the requests only name files in it).
fn scratch() -> PathBuf {
    std::env::temp_dir().join(format!("asb-zygote-{}", std::process::id()))
}

fn failure(response: LaunchResponse) -> String {
    match response {
        LaunchResponse::Failed(message) => message,
        LaunchResponse::Pid(pid) => panic!("expected a failure, got pid {pid}"),
    }
}

#[test]
fn the_zygote_runs_from_a_sealed_memfd_and_serves_every_request_itself() {
    let dir = scratch();
    let launcher = launcher();
    launcher.prestart().unwrap();
    let zygote = launcher.pid().expect("a zygote after prestart");
    let exe = std::fs::read_link(format!("/proc/{zygote}/exe")).unwrap();
    assert!(
        exe.to_string_lossy().starts_with("/memfd:"),
        "the zygote runs from {exe:?}, not a sealed copy"
    );
    for _ in 0..3 {
        let message = failure(launcher.launch(&missing_exec(&dir)).unwrap());
        assert!(message.contains("reading the exec process"), "{message}");
    }
    assert_eq!(
        launcher.pid(),
        Some(zygote),
        "one zygote served all requests"
    );
}

#[test]
fn a_zygote_that_died_is_replaced_on_the_next_request() {
    let dir = scratch();
    let launcher = launcher();
    launcher.prestart().unwrap();
    let first = launcher.pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(first as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(first as i32), None);
    let message = failure(launcher.launch(&missing_exec(&dir)).unwrap());
    assert!(message.contains("reading the exec process"), "{message}");
    let second = launcher.pid().unwrap();
    assert_ne!(second, first, "a new zygote answered");
}

#[test]
fn a_missing_launcher_binary_is_named_in_the_error() {
    let launcher = ZygoteLauncher::new(
        PathBuf::from("/nonexistent/agentsandbox-launcher"),
        std::env::temp_dir().join(format!("asb-zygotes-none-{}", std::process::id())),
    );
    let err = launcher.prestart().unwrap_err();
    assert!(
        format!("{err:#}").contains("/nonexistent/agentsandbox-launcher"),
        "{err:#}"
    );
}

#[test]
fn a_second_pod_s_zygote_runs_from_the_first_one_s_sealed_copy() {
    let dir = scratch();
    let first = launcher_with("shared");
    first.prestart().unwrap();
    let second = launcher_with("shared");
    second.prestart().unwrap();
    let (a, b) = (first.pid().unwrap(), second.pid().unwrap());
    assert_ne!(a, b);
    assert_eq!(
        exe_identity(a),
        exe_identity(b),
        "both zygotes run from one memfd (its pages are shared, not copied per pod)"
    );
    let exe = std::fs::read_link(format!("/proc/{b}/exe")).unwrap();
    assert!(exe.to_string_lossy().starts_with("/memfd:"), "{exe:?}");
    let message = failure(second.launch(&missing_exec(&dir)).unwrap());
    assert!(message.contains("reading the exec process"), "{message}");
}

#[test]
fn a_registered_pid_that_is_another_process_now_is_not_trusted() {
    let registry = std::env::temp_dir().join(format!("asb-zygotes-stale-{}", std::process::id()));
    std::fs::create_dir_all(&registry).unwrap();
    // This test process, registered with a start time it does not have: its executable (a
    // plain file, not a sealed copy) must not be run.
    let stale = registry.join(std::process::id().to_string());
    std::fs::write(&stale, "1 any-key\n").unwrap();
    let launcher = ZygoteLauncher::new(
        PathBuf::from(env!("CARGO_BIN_EXE_agentsandbox-launcher")),
        registry.clone(),
    );
    launcher.prestart().unwrap();
    let zygote = launcher.pid().unwrap();
    assert_ne!(
        exe_identity(zygote),
        exe_identity(std::process::id()),
        "the zygote does not run this test's binary"
    );
    assert!(!stale.exists(), "the stale entry was removed");
}
