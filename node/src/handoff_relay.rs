//! The node agent's side of the warm-pool handoff: `POST /v1/handoff/<pod uid>` with a
//! sealed [`agentsandbox_contract::handoff::Handoff`] from the operator. The agent opens it
//! (the key proves it came from the operator, and it opens only for that pod), then passes
//! it to the pod's shim over the shim's root-only socket and answers with the shim's
//! [`HandoffReply`].

use std::path::PathBuf;
use std::sync::Arc;

use agentsandbox_contract::handoff::{HandoffReply, MAX_BYTES};
use agentsandbox_operator::handoff::{unix_now, HandoffKey};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Relay {
    /// None: the chart gave no key; handoffs are refused.
    pub key: Option<HandoffKey>,
    /// Where the shims' handoff sockets are (`<telemetry dir>/handoff`).
    pub socket_dir: PathBuf,
}

pub fn router(relay: Arc<Relay>) -> Router {
    Router::new()
        .route("/v1/handoff/{pod_uid}", post(handoff))
        .with_state(relay)
}

/// A pod UID as the API server writes it (it names a socket file, so nothing else passes).
fn valid_pod_uid(uid: &str) -> bool {
    !uid.is_empty() && uid.len() <= 64 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

async fn handoff(
    State(relay): State<Arc<Relay>>,
    Path(pod_uid): Path<String>,
    body: Bytes,
) -> (StatusCode, String) {
    if !valid_pod_uid(&pod_uid) {
        return (StatusCode::BAD_REQUEST, "not a pod UID".into());
    }
    let Some(key) = &relay.key else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "this node agent has no handoff key (AGENTSANDBOX_HANDOFF_KEY)".into(),
        );
    };
    let handoff = match key.open(&pod_uid, &body, unix_now()) {
        Ok(handoff) => handoff,
        Err(e) => {
            tracing::warn!(pod_uid = %pod_uid, error = %e, "handoff refused");
            return (StatusCode::FORBIDDEN, e.to_string());
        }
    };
    let socket = relay.socket_dir.join(format!("{pod_uid}.sock"));
    match forward(&socket, &handoff).await {
        Ok(reply) => {
            tracing::info!(pod_uid = %pod_uid, sandbox = %handoff.identity.sandbox_name,
                namespace = %handoff.identity.sandbox_namespace, ?reply, "handoff passed to the pod's runtime");
            (
                StatusCode::OK,
                serde_json::to_string(&reply).expect("a reply serialises"),
            )
        }
        Err(e) => (
            StatusCode::NOT_FOUND,
            format!(
                "the pod's runtime did not answer on {}: {e}",
                socket.display()
            ),
        ),
    }
}

async fn forward(
    socket: &std::path::Path,
    handoff: &agentsandbox_contract::handoff::Handoff,
) -> std::io::Result<HandoffReply> {
    let mut stream = tokio::net::UnixStream::connect(socket).await?;
    stream
        .write_all(&serde_json::to_vec(handoff).map_err(std::io::Error::other)?)
        .await?;
    stream.shutdown().await?;
    let mut reply = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        (&mut stream).take(MAX_BYTES as u64).read_to_end(&mut reply),
    )
    .await
    .map_err(|_| std::io::Error::other("no answer within 10s"))??;
    serde_json::from_slice(&reply).map_err(std::io::Error::other)
}

#[cfg(test)]
mod tests {
    use super::valid_pod_uid;

    #[test]
    fn only_uids_name_a_socket() {
        assert!(valid_pod_uid("0f3c2a9e-1b7d-4c5e-9a8b-123456789abc"));
        assert!(!valid_pod_uid("../telemetry"));
        assert!(!valid_pod_uid("a/b"));
        assert!(!valid_pod_uid(""));
    }
}
