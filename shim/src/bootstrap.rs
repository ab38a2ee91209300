//! How containerd starts the shim (the `start` action). containerd up to 2.2 passes the
//! runtime options (a protobuf `Any`, often nothing) on stdin and reads the shim's bare
//! address from stdout; containerd 2.3 and later write a `BootstrapParams` message on stdin
//! (containerd's `api/runtime/bootstrap/v1`) and read a `BootstrapResult` from stdout. The
//! `containerd-shim` crate this shim serves the task API with speaks only the first, so the
//! shim tells the two apart here and answers each in its own format.

use prost::Message;

/// containerd's `BootstrapParams` (the fields the shim uses; others are skipped).
#[derive(Clone, PartialEq, Message)]
pub struct BootstrapParams {
    #[prost(string, tag = "1")]
    pub instance_id: String,
    #[prost(string, tag = "2")]
    pub namespace: String,
    #[prost(int32, tag = "3")]
    pub log_level: i32,
    #[prost(string, tag = "4")]
    pub containerd_version: String,
    #[prost(string, tag = "5")]
    pub containerd_ttrpc_address: String,
    #[prost(string, tag = "6")]
    pub containerd_grpc_address: String,
    #[prost(string, tag = "7")]
    pub containerd_binary: String,
    #[prost(string, optional, tag = "9")]
    pub socket_dir: Option<String>,
}

/// containerd's `BootstrapResult`.
#[derive(Clone, PartialEq, Message)]
pub struct BootstrapResult {
    /// Version of the task API the shim serves.
    #[prost(int32, tag = "1")]
    pub version: i32,
    #[prost(string, tag = "2")]
    pub address: String,
    #[prost(string, tag = "3")]
    pub protocol: String,
}

/// The task API version this shim serves (containerd-shim 0.11: task v2 over ttrpc).
pub const TASK_API_VERSION: i32 = 2;

/// What containerd sent to `start`.
#[derive(Debug, PartialEq)]
pub enum StartProtocol {
    /// containerd 2.3+.
    Bootstrap(BootstrapParams),
    /// containerd 1.x to 2.2: the runtime options, to be handed on as they came.
    Legacy(Vec<u8>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BootstrapError {
    #[error("bootstrap parameters are for {namespace}/{id}, the command line says {expected_namespace}/{expected_id}")]
    Mismatch {
        namespace: String,
        id: String,
        expected_namespace: String,
        expected_id: String,
    },
    #[error("bootstrap parameters carry no containerd TTRPC address")]
    NoTtrpcAddress,
}

/// Tells the two start protocols apart. A legacy options `Any` can decode as
/// `BootstrapParams` too (type URL and value land in the first two fields, nothing else is
/// set): only a message naming this shim's id and namespace is a bootstrap.
pub fn classify(input: &[u8], id: &str, namespace: &str) -> Result<StartProtocol, BootstrapError> {
    if input.is_empty() {
        return Ok(StartProtocol::Legacy(Vec::new()));
    }
    let Ok(params) = BootstrapParams::decode(input) else {
        return Ok(StartProtocol::Legacy(input.to_vec()));
    };
    if params.instance_id == id && params.namespace == namespace {
        if params.containerd_ttrpc_address.is_empty() {
            return Err(BootstrapError::NoTtrpcAddress);
        }
        return Ok(StartProtocol::Bootstrap(params));
    }
    let identity_only = BootstrapParams {
        instance_id: params.instance_id.clone(),
        namespace: params.namespace.clone(),
        ..BootstrapParams::default()
    };
    if params == identity_only {
        return Ok(StartProtocol::Legacy(input.to_vec()));
    }
    Err(BootstrapError::Mismatch {
        namespace: params.namespace,
        id: params.instance_id,
        expected_namespace: namespace.to_string(),
        expected_id: id.to_string(),
    })
}

/// The reply to a bootstrap `start`.
pub fn encode_result(address: &str) -> Vec<u8> {
    BootstrapResult {
        version: TASK_API_VERSION,
        address: address.to_string(),
        protocol: "ttrpc".to_string(),
    }
    .encode_to_vec()
}
