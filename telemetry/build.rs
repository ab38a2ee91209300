fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/agentsandbox/telemetry/v1/telemetry.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Transports are the users' choice: the shim dials a unix socket, the node agent serves one.
        .build_transport(false)
        .compile_protos(&[proto], &["../proto"])?;
    Ok(())
}
