//! agentsandbox-launcher: the pod's zygote (see `agentsandbox_shim::zygote`). The shim starts
//! it from a sealed in-memory copy; run any other way, it seals itself first.

use agentsandbox_shim::zygote::{run_zygote, LAUNCHER_NAME, ZYGOTE_ARG};

fn main() {
    if std::env::args().nth(1).as_deref() != Some(ZYGOTE_ARG) {
        eprintln!("{LAUNCHER_NAME}: started by the agentsandbox shim only (`{LAUNCHER_NAME} {ZYGOTE_ARG}`, a control socket on stdin)");
        std::process::exit(2);
    }
    // Its forks enter containers: they must run from a sealed copy, so that nothing inside a
    // container can reach this file on the host through /proc/<pid>/exe (CVE-2019-5736).
    if let Err(err) = ensure_sealed() {
        eprintln!("{LAUNCHER_NAME}: cannot seal the launcher: {err}");
        std::process::exit(1);
    }
    std::process::exit(run_zygote());
}

/// Re-executes from a sealed in-memory copy unless already running from one. Sealing can fail
/// with EBUSY while the kernel still holds references to the copy's pages from the splice
/// that filled it (seen under load in critest); that is transient, so it is retried.
fn ensure_sealed() -> std::io::Result<()> {
    let mut attempt = 0u32;
    loop {
        // Returns only on failure: on success it executes the sealed copy.
        let err = match pentacle::ensure_sealed() {
            Ok(()) => return Ok(()),
            Err(err) => err,
        };
        attempt += 1;
        if err.raw_os_error() != Some(libc::EBUSY) || attempt >= 10 {
            return Err(err);
        }
        std::thread::sleep(std::time::Duration::from_millis(5 * u64::from(attempt)));
    }
}
