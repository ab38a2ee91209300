//! containerd-shim-agentsandbox-v1: the containerd runtime shim (task API v2) that runs
//! agentsandbox pods with youki's libcontainer and enforced hardening.

use agentsandbox_shim::launcher::{run_launcher, LAUNCH_ARG};
use agentsandbox_shim::service::Service;

/// containerd's runtime type for this shim.
const RUNTIME_ID: &str = "io.containerd.agentsandbox.v1";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let action_start = args.iter().any(|a| a == "start");
    // Run from a sealed copy of the binary so no container can overwrite the shim on the
    // host (CVE-2019-5736). The `start` action only spawns the daemon from the real path.
    if !action_start {
        if let Err(err) = pentacle::ensure_sealed() {
            eprintln!("{RUNTIME_ID}: cannot seal the shim binary: {err}");
            std::process::exit(1);
        }
    }
    if args.get(1).map(String::as_str) == Some(LAUNCH_ARG) {
        std::process::exit(run_launcher());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(containerd_shim::asynchronous::run::<Service>(
        RUNTIME_ID, None,
    ));
}
