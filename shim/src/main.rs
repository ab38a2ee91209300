//! containerd-shim-agentsandbox-v1: the containerd runtime shim (task API v2) that runs
//! agentsandbox pods with youki's libcontainer and enforced hardening.

use agentsandbox_shim::launcher::{run_launcher, LAUNCH_ARG};
use agentsandbox_shim::service::Service;

/// containerd's runtime type for this shim.
const RUNTIME_ID: &str = "io.containerd.agentsandbox.v1";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(LAUNCH_ARG) {
        // The launcher and the processes it forks are the only ones that enter containers:
        // they run from a sealed in-memory copy of the binary, so nothing inside a container
        // can reach the shim's file on the host through /proc/<pid>/exe (CVE-2019-5736).
        // The long-lived shim process never enters a container and runs from the file.
        if let Err(err) = pentacle::ensure_sealed() {
            eprintln!("{RUNTIME_ID}: cannot seal the launcher: {err}");
            std::process::exit(1);
        }
        std::process::exit(run_launcher());
    }
    // One pod's worth of requests: a single-threaded runtime is plenty (blocking work goes to
    // tokio's blocking pool).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(containerd_shim::asynchronous::run::<Service>(
        RUNTIME_ID, None,
    ));
}
