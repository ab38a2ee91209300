//! containerd-shim-agentsandbox-v1: the containerd runtime shim (task API v2) that runs
//! agentsandbox pods with youki's libcontainer and enforced hardening.

use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsRawFd;

use agentsandbox_shim::bootstrap::{self, StartProtocol};
use agentsandbox_shim::service::{start_shim_server, Service};
use containerd_shim::StartOpts;

/// containerd's runtime type for this shim.
const RUNTIME_ID: &str = "io.containerd.agentsandbox.v1";

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args[1..].iter().any(|a| a == "-info" || a == "--info") {
        // containerd 2.x's introspection: runtime options on stdin (not needed), the runtime's
        // info and OCI features on stdout.
        let mut options = Vec::new();
        let _ = std::io::stdin().lock().read_to_end(&mut options);
        let encoded = agentsandbox_shim::info::encode_info(RUNTIME_ID);
        let written = std::io::stdout()
            .lock()
            .write_all(&encoded)
            .and_then(|_| std::io::stdout().lock().flush());
        std::process::exit(if written.is_ok() { 0 } else { 1 });
    }
    // One pod's worth of requests: a single-threaded runtime is plenty (blocking work goes to
    // tokio's blocking pool).
    let runtime = tokio::runtime::Builder::new_current_thread()
        // Blocking work (a launch, a cgroup read) comes in short bursts: its threads leave
        // soon after, so that an idle shim keeps three (this, the seccomp listener, the
        // escape recorder).
        .thread_keep_alive(std::time::Duration::from_millis(500))
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Ok(flags) = containerd_shim::parse(&args[1..]) {
        if flags.action == "start" {
            if let Some(code) = start_by_protocol(&runtime, flags) {
                std::process::exit(code);
            }
        }
    }
    runtime.block_on(containerd_shim::asynchronous::run::<Service>(
        RUNTIME_ID, None,
    ));
}

/// Answers containerd 2.3's bootstrap `start` here (Some: the exit code); for the older
/// protocol, puts the runtime options back on stdin for containerd-shim and returns None.
fn start_by_protocol(
    runtime: &tokio::runtime::Runtime,
    flags: containerd_shim::Flags,
) -> Option<i32> {
    let mut input = Vec::new();
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        if let Err(err) = stdin.lock().read_to_end(&mut input) {
            eprintln!("{RUNTIME_ID}: reading start parameters: {err}");
            return Some(1);
        }
    }
    let params = match bootstrap::classify(&input, &flags.id, &flags.namespace) {
        Ok(StartProtocol::Legacy(options)) => {
            if let Err(err) = replace_stdin(&options) {
                eprintln!("{RUNTIME_ID}: {err}");
                return Some(1);
            }
            return None;
        }
        Ok(StartProtocol::Bootstrap(params)) => params,
        Err(err) => {
            eprintln!("{RUNTIME_ID}: {err}");
            return Some(1);
        }
    };
    // The shim server reads containerd's addresses from its environment (it is spawned with
    // this process's), and nothing of the parameters is runtime options.
    std::env::set_var("TTRPC_ADDRESS", &params.containerd_ttrpc_address);
    if let Err(err) = replace_stdin(&[]) {
        eprintln!("{RUNTIME_ID}: {err}");
        return Some(1);
    }
    let opts = StartOpts {
        id: flags.id,
        publish_binary: if params.containerd_binary.is_empty() {
            flags.publish_binary
        } else {
            params.containerd_binary
        },
        address: if params.containerd_grpc_address.is_empty() {
            flags.address
        } else {
            params.containerd_grpc_address
        },
        ttrpc_address: params.containerd_ttrpc_address,
        namespace: flags.namespace,
        debug: flags.debug,
    };
    match runtime.block_on(start_shim_server(opts)) {
        Ok(address) => {
            let mut stdout = std::io::stdout();
            let written = stdout
                .write_all(&bootstrap::encode_result(&address))
                .and_then(|_| stdout.flush());
            Some(if written.is_ok() { 0 } else { 1 })
        }
        Err(err) => {
            eprintln!("{RUNTIME_ID}: {err}");
            Some(1)
        }
    }
}

/// Makes `bytes` this process's stdin (what containerd-shim reads the runtime options from).
fn replace_stdin(bytes: &[u8]) -> std::io::Result<()> {
    let (read, write) = nix::unistd::pipe()?;
    let mut write = std::fs::File::from(write);
    // Runtime options are a few hundred bytes: far below a pipe's buffer.
    write.write_all(bytes)?;
    drop(write);
    nix::unistd::dup2(read.as_raw_fd(), 0)?;
    Ok(())
}
