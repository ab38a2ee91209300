//! The agentsandbox node agent (`agentsandbox-node`, a DaemonSet): installs the runtime on its
//! node (`installer`), serves the shims' escape-attempt telemetry and writes it into the
//! sandboxes' status, Events and metrics (`escape_reporter` over the pure `escapes`), and
//! measures sandbox activity for idle timeouts (`activity_reporter` over the pure
//! `activity_sampling`).

pub mod activity_reporter;
pub mod activity_sampling;
pub mod escape_reporter;
pub mod escapes;
pub mod handoff_relay;
pub mod installer;
pub mod ownership;
