//! The warm-pool handoff: what a claim gives the warm pod it binds. The operator sends a
//! [`Handoff`] to the node agent of the pod's node (sealed, see the operator's `handoff`
//! module), the node agent passes it to the pod's shim over a root-only unix socket, and the
//! shim applies the claim's egress and escape response and writes the [`WarmStart`] to the
//! waiting process (`agentsandbox-wait`), which `execve`s the agent with it. One handoff per
//! pod: a pod is claimed once, so nothing of one claim is ever seen by another.

use serde::{Deserialize, Serialize};

use crate::{EgressPolicy, EscapeResponse, PodIdentity};

/// Pod annotation marking a warm pool member: its agent container waits for a handoff.
pub const WARM_ANNOTATION: &str = "agentsandbox.io/warm-member";
/// The container of a sandbox's pod that runs the agent (and, in a warm member, waits).
pub const AGENT_CONTAINER: &str = "agent";
/// Where the waiter is mounted (read-only) in a warm member's agent container.
pub const WAITER_PATH: &str = "/dev/.agentsandbox-wait";
/// The waiter's file name next to the shim on the node.
pub const WAITER_NAME: &str = "agentsandbox-wait";
/// The pod's shim listens on `<dir>/<pod uid>.sock`, where dir is this, next to the node
/// agent's telemetry socket.
pub const SOCKET_DIR: &str = "handoff";
/// Largest handoff the shim and node agent accept (env values and args included).
pub const MAX_BYTES: usize = 1 << 20;

/// A claim's inputs for one warm pod.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Handoff {
    /// The pod it is for; the node agent refuses it for any other.
    pub pod_uid: String,
    /// Unix seconds after which it is refused (a captured handoff is useless later).
    pub expires: i64,
    /// The claim, for the runtime's telemetry.
    pub identity: PodIdentity,
    pub on_escape: EscapeResponse,
    pub egress: EgressPolicy,
    pub start: WarmStart,
}

/// How the agent process starts: the container's own command unless `args` replaces it, and
/// the container's environment with `env` added (a name in `env` wins).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct WarmStart {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<String>>,
    #[serde(default)]
    pub env: Vec<(String, String)>,
}

/// The shim's answer.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum HandoffReply {
    /// The agent process was started with this handoff.
    Started,
    /// A handoff was already taken (a retry after a lost answer): nothing was changed.
    AlreadyStarted,
    /// Refused, with the reason.
    Refused(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WarmStartError {
    #[error("the handoff is empty: no claim was handed to this warm pod")]
    Empty,
    #[error("the handoff has a record of unknown kind {0:?}")]
    UnknownRecord(char),
    #[error("the handoff's environment entry {0:?} has no '='")]
    EnvWithoutEquals(String),
    #[error("the handoff is not UTF-8")]
    NotUtf8,
    #[error("a value of the handoff contains a NUL byte")]
    Nul,
}

const MAGIC: &str = "agentsandbox-warm-start-v1";

impl WarmStart {
    /// The bytes the waiter reads from its stdin: NUL-terminated records, `a` one argument,
    /// `e` one `NAME=value`, after a version record. NUL cannot occur in an argument or an
    /// environment entry, so no escaping is needed.
    pub fn encode(&self) -> Result<Vec<u8>, WarmStartError> {
        let mut out = Vec::new();
        let mut record = |kind: char, text: &str| {
            if text.contains('\0') {
                return Err(WarmStartError::Nul);
            }
            out.push(kind as u8);
            out.extend_from_slice(text.as_bytes());
            out.push(0);
            Ok(())
        };
        record('v', MAGIC)?;
        for arg in self.args.iter().flatten() {
            record('a', arg)?;
        }
        for (name, value) in &self.env {
            if name.contains('=') || name.is_empty() {
                return Err(WarmStartError::EnvWithoutEquals(name.clone()));
            }
            record('e', &format!("{name}={value}"))?;
        }
        Ok(out)
    }

    /// The inverse of [`WarmStart::encode`].
    pub fn decode(bytes: &[u8]) -> Result<WarmStart, WarmStartError> {
        let text = std::str::from_utf8(bytes).map_err(|_| WarmStartError::NotUtf8)?;
        let mut records = text.split_terminator('\0');
        match records.next() {
            Some(first) if first.strip_prefix('v') == Some(MAGIC) => {}
            _ => return Err(WarmStartError::Empty),
        }
        let mut start = WarmStart::default();
        for record in records {
            let mut chars = record.chars();
            let kind = chars.next().unwrap_or('\0');
            let body = chars.as_str();
            match kind {
                'a' => start
                    .args
                    .get_or_insert_with(Vec::new)
                    .push(body.to_string()),
                'e' => {
                    let (name, value) = body
                        .split_once('=')
                        .ok_or_else(|| WarmStartError::EnvWithoutEquals(body.to_string()))?;
                    start.env.push((name.to_string(), value.to_string()));
                }
                other => return Err(WarmStartError::UnknownRecord(other)),
            }
        }
        Ok(start)
    }

    /// `current` (the container's environment) with this start's entries set over it.
    pub fn environment(&self, current: Vec<(String, String)>) -> Vec<(String, String)> {
        let mut merged: Vec<(String, String)> = current
            .into_iter()
            .filter(|(name, _)| !self.env.iter().any(|(n, _)| n == name))
            .collect();
        merged.extend(self.env.iter().cloned());
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start(args: Option<&[&str]>, env: &[(&str, &str)]) -> WarmStart {
        WarmStart {
            args: args.map(|a| a.iter().map(|s| s.to_string()).collect()),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_warm_start_survives_encoding_with_newlines_equals_and_unicode() {
        let original = start(
            Some(&["sh", "-c", "echo $A\nexit 3", ""]),
            &[("A", "x=y\nz"), ("EMPTY", ""), ("É", "ü")],
        );
        let bytes = original.encode().unwrap();
        assert_eq!(WarmStart::decode(&bytes).unwrap(), original);
    }

    #[test]
    fn no_args_means_the_containers_own_command() {
        let original = start(None, &[("A", "1")]);
        assert_eq!(
            WarmStart::decode(&original.encode().unwrap()).unwrap().args,
            None
        );
    }

    #[test]
    fn an_empty_or_foreign_handoff_is_refused() {
        assert_eq!(WarmStart::decode(b""), Err(WarmStartError::Empty));
        assert_eq!(WarmStart::decode(b"aecho\0"), Err(WarmStartError::Empty));
        let mut bytes = start(None, &[]).encode().unwrap();
        bytes.extend_from_slice(b"xwhat\0");
        assert_eq!(
            WarmStart::decode(&bytes),
            Err(WarmStartError::UnknownRecord('x'))
        );
    }

    #[test]
    fn nul_bytes_and_names_with_equals_cannot_be_encoded() {
        assert_eq!(
            start(Some(&["a\0b"]), &[]).encode(),
            Err(WarmStartError::Nul)
        );
        assert_eq!(
            start(None, &[("A=B", "c")]).encode(),
            Err(WarmStartError::EnvWithoutEquals("A=B".into()))
        );
    }

    #[test]
    fn the_claims_environment_wins_over_the_containers() {
        let merged = start(None, &[("B", "claim"), ("C", "new")]).environment(vec![
            ("A".into(), "1".into()),
            ("B".into(), "template".into()),
        ]);
        assert_eq!(
            merged,
            vec![
                ("A".to_string(), "1".to_string()),
                ("B".to_string(), "claim".to_string()),
                ("C".to_string(), "new".to_string()),
            ]
        );
    }
}
