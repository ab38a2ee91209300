//! Warm pool members in the shim. A warm pod's agent container starts `agentsandbox-wait`
//! (bind-mounted read-only, not idmapped, from next to the shim) in place of its command,
//! with a FIFO as stdin whose only writer is this shim. The pod's shim listens on a
//! root-only socket (`<telemetry dir>/handoff/<pod uid>.sock`) for the node agent; the first
//! [`Handoff`] replaces the pod's egress table with the claim's, gives the resolver the
//! claim's policy, takes the claim's escape response and identity, then writes the
//! [`agentsandbox_contract::handoff::WarmStart`] into the FIFO and closes it: the waiter
//! `execve`s the agent. A second handoff changes nothing.

use std::fs::File;
use std::path::{Path, PathBuf};

use agentsandbox_contract::handoff::{
    Handoff, HandoffReply, MAX_BYTES, SOCKET_DIR, WAITER_NAME, WAITER_PATH,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::egress;
use crate::task::{TaskError, TaskResult, TaskService};

/// The shim's side of a warm member's agent container.
pub struct WarmMember {
    pub pod_uid: String,
    /// The write end of the waiter's stdin (None once handed off).
    pub writer: Option<File>,
    pub taken: bool,
    /// The pod's resolv.conf (its nameservers are where the claim's DNS goes).
    pub resolv_conf: String,
    pub container: String,
    pub socket: PathBuf,
    pub listener: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for WarmMember {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Where pods' handoff sockets live: next to the node agent's telemetry socket.
pub fn socket_dir() -> PathBuf {
    agentsandbox_telemetry::socket_path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/run/agentsandbox-node"))
        .join(SOCKET_DIR)
}

/// The waiter on the node: next to the shim binary.
pub fn waiter_on_node() -> TaskResult<PathBuf> {
    let path = std::env::current_exe()
        .map_err(|e| TaskError::Internal(format!("the shim's own path: {e}")))?
        .with_file_name(WAITER_NAME);
    if !path.is_file() {
        return Err(TaskError::FailedPrecondition(format!(
            "a warm pool member needs {} next to the runtime shim (the node agent's installer puts it there)",
            path.display()
        )));
    }
    Ok(path)
}

/// Makes the hardened spec of a warm member's agent container run the waiter: its command
/// becomes the waiter's arguments, and the waiter is bind-mounted read-only (and not
/// idmapped: it stays root's, so not even the sandbox's root can write to it).
pub fn run_waiter(spec: &mut Value, waiter: &Path) {
    let args = spec["process"]["args"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut waiting = vec![Value::String(WAITER_PATH.to_string())];
    waiting.extend(args);
    spec["process"]["args"] = Value::Array(waiting);
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        mounts.push(json!({
            "destination": WAITER_PATH,
            "type": "bind",
            "source": waiter.to_string_lossy(),
            "options": ["bind", "ro", "nosuid", "nodev"],
        }));
    }
}

/// Creates the waiter's stdin FIFO (root-only) and opens it for reading and writing, so that
/// the waiter blocks until this end writes and closes.
pub fn open_stdin_fifo(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(std::io::Error::from)?;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

/// Binds the pod's handoff socket (root-only) and serves it.
pub fn listen(service: TaskService, socket: &Path) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = socket.parent() {
        crate::task::private_dir(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = tokio::net::UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = service.clone();
            tokio::spawn(async move {
                if let Err(err) = serve(service, stream).await {
                    tracing::warn!(error = %err, "handoff connection failed");
                }
            });
        }
    }))
}

async fn serve(service: TaskService, mut stream: tokio::net::UnixStream) -> std::io::Result<()> {
    let mut request = Vec::new();
    (&mut stream)
        .take(MAX_BYTES as u64 + 1)
        .read_to_end(&mut request)
        .await?;
    let reply = match serde_json::from_slice::<Handoff>(&request) {
        _ if request.len() > MAX_BYTES => {
            HandoffReply::Refused(format!("the handoff is larger than {MAX_BYTES} bytes"))
        }
        Ok(handoff) => service.take_handoff(handoff).await,
        Err(e) => HandoffReply::Refused(format!("the handoff is not valid: {e}")),
    };
    stream
        .write_all(&serde_json::to_vec(&reply).map_err(std::io::Error::other)?)
        .await?;
    stream.shutdown().await
}

impl TaskService {
    /// Applies a claim's handoff to this warm pod, once.
    pub async fn take_handoff(&self, handoff: Handoff) -> HandoffReply {
        let started = std::time::Instant::now();
        let bytes = match handoff.start.encode() {
            Ok(bytes) => bytes,
            Err(e) => return HandoffReply::Refused(e.to_string()),
        };
        let mut state = self.state.lock().await;
        let netns = state.pod.netns.clone();
        let Some(warm) = state.pod.warm.as_mut() else {
            return HandoffReply::Refused("this pod is not a warm pool member".into());
        };
        if warm.taken {
            return HandoffReply::AlreadyStarted;
        }
        if warm.pod_uid != handoff.pod_uid {
            return HandoffReply::Refused(format!(
                "the handoff is for pod {}, this is pod {}",
                handoff.pod_uid, warm.pod_uid
            ));
        }
        let rules = match egress::render(&handoff.egress, &egress::nameservers(&warm.resolv_conf)) {
            Ok(rules) => rules,
            Err(e) => return HandoffReply::Refused(e.to_string()),
        };
        // One nft transaction: the warm table goes and the claim's comes, with no moment
        // without a table.
        let script = format!("delete table inet {}\n{}", egress::TABLE, rules.nft);
        let applied =
            tokio::task::spawn_blocking(move || egress::run_nft(&script, netns.as_deref())).await;
        match applied {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return HandoffReply::Refused(format!("the claim's egress: {e:#}")),
            Err(e) => return HandoffReply::Refused(format!("the claim's egress: {e}")),
        }
        warm.taken = true;
        let writer = warm.writer.take();
        let container = warm.container.clone();
        let resolv_conf = warm.resolv_conf.clone();
        if rules.resolver {
            match &state.pod.resolver {
                Some(resolver) => resolver.set_policy(handoff.egress.clone(), container.clone()),
                None => {
                    match self.start_resolver(&state.pod, &handoff.egress, &resolv_conf, &container)
                    {
                        Ok(resolver) => state.pod.resolver = Some(resolver),
                        Err(e) => return HandoffReply::Refused(e.to_string()),
                    }
                }
            }
        }
        if let Some(policy) = state.pod.policy.as_mut() {
            policy.identity = handoff.identity.clone();
            policy.on_escape = handoff.on_escape;
            policy.egress = handoff.egress.clone();
        }
        if let Some(notify) = &self.notify {
            notify.set_response(handoff.on_escape.taken().into());
        }
        if let Some(telemetry) = &self.telemetry {
            telemetry.set_sandbox_uid(&handoff.identity.sandbox_uid);
        }
        drop(state);
        let Some(mut writer) = writer else {
            return HandoffReply::Refused("the waiter's stdin is gone".into());
        };
        let written = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            writer.write_all(&bytes)
            // Dropping the writer closes the FIFO's last write end: the waiter reads EOF.
        })
        .await;
        match written {
            Ok(Ok(())) => {
                tracing::info!(
                    sandbox = %handoff.identity.sandbox_name,
                    namespace = %handoff.identity.sandbox_namespace,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "warm pod handed to its claim"
                );
                HandoffReply::Started
            }
            Ok(Err(e)) => HandoffReply::Refused(format!("writing to the waiter: {e}")),
            Err(e) => HandoffReply::Refused(format!("writing to the waiter: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_warm_container_runs_the_waiter_read_only_with_its_command_as_arguments() {
        let mut spec = json!({
            "process": {"args": ["python3", "-m", "agent"]},
            "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
        });
        run_waiter(&mut spec, Path::new("/usr/local/bin/agentsandbox-wait"));
        assert_eq!(
            spec["process"]["args"],
            json!([WAITER_PATH, "python3", "-m", "agent"])
        );
        let mount = &spec["mounts"][1];
        assert_eq!(mount["destination"], WAITER_PATH);
        assert_eq!(mount["source"], "/usr/local/bin/agentsandbox-wait");
        let options: Vec<&str> = mount["options"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_str().unwrap())
            .collect();
        assert!(
            options.contains(&"ro") && options.contains(&"nosuid"),
            "{options:?}"
        );
    }

    #[test]
    fn the_waiters_stdin_blocks_until_the_shim_writes_and_closes() {
        use std::io::{Read, Write};
        let dir = std::env::temp_dir().join(format!("asb-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("handoff.fifo");
        let mut writer = open_stdin_fifo(&fifo).unwrap();
        let mut reader = std::fs::File::open(&fifo).unwrap();
        writer.write_all(b"start").unwrap();
        drop(writer);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"start");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
