//! `agentsandbox-wait COMMAND...`: the first process of a warm pool member's agent container.
//! The runtime starts it in place of the agent (hardened exactly as the agent: same user,
//! capabilities, seccomp filter, namespaces), with the container's command as its arguments
//! and a pipe as stdin whose other end the runtime holds. When a claim binds the pod, the
//! runtime writes the claim's [`WarmStart`] and closes the pipe; this process then replaces
//! itself (`execve`, same PID) with the agent: the claim's arguments or the container's
//! command, and the container's environment with the claim's entries set over it.
//!
//! Built statically (`e2e/lib.sh` links it with `crt-static`), because it runs inside any
//! image. It reads nothing but stdin and opens nothing: what it can do, the agent can too.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode};

use agentsandbox_contract::handoff::{WarmStart, MAX_BYTES};

fn main() -> ExitCode {
    let mut bytes = Vec::new();
    let limit = u64::try_from(MAX_BYTES).unwrap_or(u64::MAX) + 1;
    if let Err(e) = std::io::stdin().take(limit).read_to_end(&mut bytes) {
        eprintln!("agentsandbox-wait: reading the handoff: {e}");
        return ExitCode::from(125);
    }
    if bytes.len() > MAX_BYTES {
        eprintln!("agentsandbox-wait: the handoff is larger than {MAX_BYTES} bytes");
        return ExitCode::from(125);
    }
    let start = match WarmStart::decode(&bytes) {
        Ok(start) => start,
        Err(e) => {
            eprintln!("agentsandbox-wait: {e}");
            return ExitCode::from(125);
        }
    };
    let argv: Vec<String> = match &start.args {
        Some(args) => args.clone(),
        None => std::env::args().skip(1).collect(),
    };
    let Some((program, args)) = argv.split_first() else {
        eprintln!("agentsandbox-wait: no command to run (the claim gave no args and the container has no command)");
        return ExitCode::from(125);
    };
    let env = start.environment(std::env::vars().collect());
    // `Command` looks `program` up in the PATH of the environment it is given.
    let error = Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
        .exec();
    eprintln!("agentsandbox-wait: starting {program}: {error}");
    ExitCode::from(if error.kind() == std::io::ErrorKind::NotFound {
        127
    } else {
        126
    })
}
