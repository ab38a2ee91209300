//! The escape-attempt telemetry contract, generated from
//! `proto/agentsandbox/telemetry/v1/telemetry.proto` (the one place it is defined).

pub mod v1 {
    #![allow(clippy::all, clippy::pedantic)]
    tonic::include_proto!("agentsandbox.telemetry.v1");
}

use agentsandbox_contract::ResponseTaken;

impl From<ResponseTaken> for v1::Action {
    fn from(taken: ResponseTaken) -> v1::Action {
        match taken {
            ResponseTaken::Denied => v1::Action::Denied,
            ResponseTaken::Killed => v1::Action::Killed,
            ResponseTaken::Quarantined => v1::Action::Quarantined,
        }
    }
}

impl v1::Action {
    /// The contract's name of a wire action; an unknown or unspecified one was a denial.
    pub fn taken(self) -> ResponseTaken {
        match self {
            v1::Action::Killed => ResponseTaken::Killed,
            v1::Action::Quarantined => ResponseTaken::Quarantined,
            v1::Action::Denied | v1::Action::Unspecified => ResponseTaken::Denied,
        }
    }

    /// The action in a message's `i32` field.
    pub fn taken_from_wire(value: i32) -> ResponseTaken {
        v1::Action::try_from(value).unwrap_or_default().taken()
    }
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
