//! Handing a claim's inputs to the warm pod it binds ([`agentsandbox_contract::handoff`]).
//! The operator POSTs a sealed [`Handoff`] to the node agent of the pod's node
//! (`http://<agent pod IP>:8081/v1/handoff/<pod uid>`); the node agent opens it and passes it
//! to the pod's shim over a root-only socket.
//!
//! Sealed with ChaCha20-Poly1305 under a key both sides derive from the release's handoff
//! Secret (`AGENTSANDBOX_HANDOFF_KEY`), with the pod's UID as associated data: nobody without
//! the key can read a claim's environment (its secrets) on the wire or forge a handoff, a
//! sealed handoff opens only for its pod, and it expires. A replay changes nothing (a pod
//! takes one handoff). Each node agent only ever sees the handoffs of its own node's pods.

use std::time::Duration;

use agentsandbox_contract::handoff::{Handoff, HandoffReply, MAX_BYTES};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// Environment variable holding the shared secret (from the chart's Secret).
pub const KEY_ENV: &str = "AGENTSANDBOX_HANDOFF_KEY";
/// How long a sealed handoff stays valid.
pub const VALIDITY: Duration = Duration::from_secs(60);
/// The node agent's HTTP port.
pub const NODE_AGENT_PORT: u16 = 8081;

#[derive(Debug, thiserror::Error)]
pub enum HandoffError {
    #[error(
        "the handoff key must be at least 32 characters (set {KEY_ENV} from the chart's Secret)"
    )]
    ShortKey,
    #[error("the handoff could not be opened: wrong key, wrong pod or altered")]
    Unopenable,
    #[error("the handoff expired")]
    Expired,
    #[error("the handoff is not valid: {0}")]
    Invalid(String),
    #[error("no node agent is known on node {0}: is the agentsandbox DaemonSet running there?")]
    NoNodeAgent(String),
    #[error("the node agent did not take the handoff: {0}")]
    Transport(String),
    #[error("the node agent refused the handoff: {0}")]
    Refused(String),
}

/// The shared key.
#[derive(Clone)]
pub struct HandoffKey {
    key: std::sync::Arc<LessSafeKey>,
}

impl std::fmt::Debug for HandoffKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HandoffKey(..)")
    }
}

impl HandoffKey {
    /// The key derived (SHA-256) from the shared secret.
    pub fn from_secret(secret: &[u8]) -> Result<HandoffKey, HandoffError> {
        let secret = secret.trim_ascii();
        if secret.len() < 32 {
            return Err(HandoffError::ShortKey);
        }
        let digest = ring::digest::digest(&ring::digest::SHA256, secret);
        let key = UnboundKey::new(&CHACHA20_POLY1305, digest.as_ref())
            .expect("a SHA-256 digest is a ChaCha20 key");
        Ok(HandoffKey {
            key: std::sync::Arc::new(LessSafeKey::new(key)),
        })
    }

    /// From [`KEY_ENV`], if set.
    pub fn from_env() -> Result<Option<HandoffKey>, HandoffError> {
        match std::env::var_os(KEY_ENV) {
            Some(value) if !value.is_empty() => {
                HandoffKey::from_secret(value.as_encoded_bytes()).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// nonce || ciphertext+tag of the handoff's JSON, bound to its pod.
    pub fn seal(&self, handoff: &Handoff) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .expect("the system's random source");
        let mut sealed = serde_json::to_vec(handoff).expect("a handoff serialises");
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(handoff.pod_uid.as_bytes()),
                &mut sealed,
            )
            .expect("sealing cannot fail for a message this size");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        out
    }

    /// The handoff sealed for `pod_uid`, if it is genuine, for that pod and not expired.
    pub fn open(
        &self,
        pod_uid: &str,
        sealed: &[u8],
        now_unix: i64,
    ) -> Result<Handoff, HandoffError> {
        if sealed.len() < NONCE_LEN || sealed.len() > MAX_BYTES {
            return Err(HandoffError::Unopenable);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| HandoffError::Unopenable)?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(pod_uid.as_bytes()), &mut body)
            .map_err(|_| HandoffError::Unopenable)?;
        let handoff: Handoff =
            serde_json::from_slice(plain).map_err(|e| HandoffError::Invalid(e.to_string()))?;
        if handoff.pod_uid != pod_uid {
            return Err(HandoffError::Unopenable);
        }
        if handoff.expires < now_unix {
            return Err(HandoffError::Expired);
        }
        Ok(handoff)
    }
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Posts sealed handoffs to node agents (one pooled HTTP/1 client).
#[derive(Clone)]
pub struct HandoffClient {
    key: HandoffKey,
    http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
}

impl HandoffClient {
    pub fn new(key: HandoffKey) -> HandoffClient {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_nodelay(true);
        HandoffClient {
            key,
            http: hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(connector),
        }
    }

    /// Delivers `handoff` to the node agent at `agent_ip`; Ok once the pod's agent started
    /// with it (or had already).
    pub async fn deliver(
        &self,
        agent_ip: &str,
        handoff: &Handoff,
    ) -> Result<HandoffReply, HandoffError> {
        let host = match agent_ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
            _ => agent_ip.to_string(),
        };
        let uri = format!(
            "http://{host}:{NODE_AGENT_PORT}/v1/handoff/{}",
            handoff.pod_uid
        );
        let request = hyper::Request::post(uri)
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from(self.key.seal(handoff))))
            .map_err(|e| HandoffError::Transport(e.to_string()))?;
        let response = tokio::time::timeout(Duration::from_secs(10), self.http.request(request))
            .await
            .map_err(|_| HandoffError::Transport("no answer within 10s".into()))?
            .map_err(|e| HandoffError::Transport(e.to_string()))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| HandoffError::Transport(e.to_string()))?
            .to_bytes();
        if !status.is_success() {
            return Err(HandoffError::Refused(format!(
                "HTTP {}: {}",
                status.as_u16(),
                String::from_utf8_lossy(&body).trim()
            )));
        }
        let reply: HandoffReply = serde_json::from_slice(&body)
            .map_err(|e| HandoffError::Transport(format!("unreadable answer: {e}")))?;
        match reply {
            HandoffReply::Refused(why) => Err(HandoffError::Refused(why)),
            started => Ok(started),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentsandbox_contract::handoff::WarmStart;

    fn handoff(pod_uid: &str, expires: i64) -> Handoff {
        Handoff {
            pod_uid: pod_uid.into(),
            expires,
            identity: Default::default(),
            on_escape: Default::default(),
            egress: Default::default(),
            start: WarmStart {
                args: None,
                env: vec![("TOKEN".into(), "s3cret".into())],
            },
        }
    }

    fn key(secret: &str) -> HandoffKey {
        HandoffKey::from_secret(secret.as_bytes()).unwrap()
    }

    const SECRET: &str = "0123456789abcdefghijklmnopqrstuvwxyz";

    #[test]
    fn a_sealed_handoff_opens_for_its_pod_only_and_hides_the_environment() {
        let sealed = key(SECRET).seal(&handoff("pod-a", 100));
        assert!(!sealed.windows(6).any(|w| w == b"s3cret"));
        assert_eq!(
            key(SECRET).open("pod-a", &sealed, 50).unwrap(),
            handoff("pod-a", 100)
        );
        assert!(matches!(
            key(SECRET).open("pod-b", &sealed, 50),
            Err(HandoffError::Unopenable)
        ));
    }

    #[test]
    fn another_key_an_altered_byte_or_a_late_arrival_is_refused() {
        let sealed = key(SECRET).seal(&handoff("pod-a", 100));
        assert!(matches!(
            key("another-secret-of-enough-length-000").open("pod-a", &sealed, 50),
            Err(HandoffError::Unopenable)
        ));
        let mut altered = sealed.clone();
        let last = altered.len() - 1;
        altered[last] ^= 1;
        assert!(matches!(
            key(SECRET).open("pod-a", &altered, 50),
            Err(HandoffError::Unopenable)
        ));
        assert!(matches!(
            key(SECRET).open("pod-a", &sealed, 101),
            Err(HandoffError::Expired)
        ));
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert!(matches!(
            HandoffKey::from_secret(b"short"),
            Err(HandoffError::ShortKey)
        ));
    }
}
