//! Both of containerd's start protocols are told apart and answered in their own format.

use agentsandbox_shim::bootstrap::{
    classify, encode_result, BootstrapError, BootstrapParams, BootstrapResult, StartProtocol,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::Message as _;
use prost::Message as _;

fn params(id: &str, namespace: &str) -> BootstrapParams {
    BootstrapParams {
        instance_id: id.into(),
        namespace: namespace.into(),
        containerd_version: "v2.4.2".into(),
        containerd_ttrpc_address: "/run/containerd/containerd.sock.ttrpc".into(),
        containerd_grpc_address: "/run/containerd/containerd.sock".into(),
        containerd_binary: "/usr/bin/containerd".into(),
        ..BootstrapParams::default()
    }
}

#[test]
fn containerd_2_3_bootstrap_parameters_are_recognised() {
    let sent = params("c1", "k8s.io");
    let input = sent.encode_to_vec();
    assert_eq!(
        classify(&input, "c1", "k8s.io"),
        Ok(StartProtocol::Bootstrap(sent))
    );
}

#[test]
fn older_containerds_runtime_options_are_handed_on_unchanged() {
    assert_eq!(
        classify(&[], "c1", "k8s.io"),
        Ok(StartProtocol::Legacy(Vec::new()))
    );
    // What containerd 1.x-2.2 writes: the runtime options as a protobuf Any.
    let options = Any {
        type_url: "containerd.runc.v1.Options".into(),
        value: vec![0x52, 0x04, b'/', b'c', b'g', b'1'],
        ..Default::default()
    }
    .write_to_bytes()
    .unwrap();
    assert_eq!(
        classify(&options, "c1", "k8s.io"),
        Ok(StartProtocol::Legacy(options.clone()))
    );
}

#[test]
fn bootstrap_parameters_for_another_shim_or_without_an_address_are_refused() {
    let other = params("c2", "k8s.io").encode_to_vec();
    assert!(matches!(
        classify(&other, "c1", "k8s.io"),
        Err(BootstrapError::Mismatch { .. })
    ));
    let mut no_address = params("c1", "k8s.io");
    no_address.containerd_ttrpc_address.clear();
    assert_eq!(
        classify(&no_address.encode_to_vec(), "c1", "k8s.io"),
        Err(BootstrapError::NoTtrpcAddress)
    );
}

#[test]
fn the_bootstrap_reply_names_task_api_v2_over_ttrpc() {
    let reply =
        BootstrapResult::decode(encode_result("unix:///run/containerd/s/abc").as_slice()).unwrap();
    assert_eq!(reply.version, 2);
    assert_eq!(reply.address, "unix:///run/containerd/s/abc");
    assert_eq!(reply.protocol, "ttrpc");
}
