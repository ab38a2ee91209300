//! The node agent's telemetry socket: root-only by file mode, and by peer credentials even
//! when the mode is loosened. Runs the real gRPC server; needs root (to switch a client to
//! an unprivileged uid) and python3, so it runs with the e2e tests, not the unit tests.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use agentsandbox_e2e::telemetry_socket_probe;
use agentsandbox_node::escape_reporter::{bind_socket, root_peers, TelemetryService};
use agentsandbox_telemetry::v1::telemetry_server::TelemetryServer;

const NOBODY: u32 = 65534;

fn probe(socket: &Path, uid: u32) -> String {
    telemetry_socket_probe(&socket.to_string_lossy(), uid)
}

#[tokio::test]
async fn only_root_may_connect_to_the_telemetry_socket() {
    assert_eq!(
        effective_uid(),
        0,
        "this test switches a client to uid {NOBODY}: run it as root (make test does)"
    );
    let dir = tempdir();
    let socket = dir.join("agent").join("telemetry.sock");
    let listener = bind_socket(&socket).expect("bind");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(socket.parent().unwrap()), 0o700);
    assert_eq!(mode(&socket), 0o600);
    let service = TelemetryService::new(Default::default());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TelemetryServer::new(service))
            .serve_with_incoming(root_peers(listener)),
    );

    let socket_for = socket.clone();
    let root = tokio::task::spawn_blocking(move || probe(&socket_for, 0))
        .await
        .unwrap();
    assert_eq!(root, "h2", "root (the shim) is served");

    let socket_for = socket.clone();
    let nobody = tokio::task::spawn_blocking(move || probe(&socket_for, NOBODY))
        .await
        .unwrap();
    assert!(
        nobody.starts_with("connect-error 13"),
        "a non-root client cannot even connect (EACCES): {nobody}"
    );

    // Even if the directory and socket were opened up (a careless hostPath), the peer check
    // closes the connection before any request is read.
    std::fs::set_permissions(
        socket.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777)).unwrap();
    let socket_for = socket.clone();
    let nobody = tokio::task::spawn_blocking(move || probe(&socket_for, NOBODY))
        .await
        .unwrap();
    assert!(
        nobody.starts_with("closed"),
        "a non-root peer is refused by its credentials: {nobody}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The effective uid of this process (the owner of its /proc entry).
fn effective_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").expect("/proc").uid()
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("asb-telemetry-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}
