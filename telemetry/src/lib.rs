//! The escape-attempt telemetry contract, generated from
//! `proto/agentsandbox/telemetry/v1/telemetry.proto` (the one place it is defined).

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("agentsandbox.telemetry.v1");
}

/// Where the node agent listens on each node (a root-only directory).
pub const DEFAULT_SOCKET: &str = "/run/agentsandbox-node/telemetry.sock";

/// Environment variable that overrides [`DEFAULT_SOCKET`] (tests, non-default installs).
pub const SOCKET_ENV: &str = "AGENTSANDBOX_TELEMETRY_SOCKET";

/// The socket path to use: the environment's, else the default.
pub fn socket_path() -> std::path::PathBuf {
    std::env::var_os(SOCKET_ENV)
        .map(Into::into)
        .unwrap_or_else(|| DEFAULT_SOCKET.into())
}
