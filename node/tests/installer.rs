//! The node installer's containerd configuration plan and its file edges.

use agentsandbox_node::installer::{
    config_version, install_config, install_shim, plan_config, InstallError, BACKUP_SUFFIX,
    SHIM_NAME,
};

const V2: &str = "version = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n";

#[test]
fn the_stanza_is_appended_once_and_a_second_run_changes_nothing() {
    let once = plan_config(V2, "agentsandbox").unwrap().expect("a change");
    assert!(
        once.starts_with(V2),
        "the existing configuration is kept as is"
    );
    assert!(once.contains(
        "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.agentsandbox]\n  runtime_type = \"io.containerd.agentsandbox.v1\"\n  pod_annotations = [\"agentsandbox.io/*\"]"
    ));
    assert_eq!(plan_config(&once, "agentsandbox").unwrap(), None);
}

#[test]
fn containerd_2_configurations_get_the_new_plugin_name() {
    let planned = plan_config("version = 3\n", "agentsandbox")
        .unwrap()
        .unwrap();
    assert!(planned
        .contains("[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.agentsandbox]"));
}

#[test]
fn an_outdated_managed_block_is_replaced_in_place() {
    let once = plan_config(V2, "agentsandbox").unwrap().unwrap();
    let edited = once.replace("agentsandbox.io/*", "agentsandbox.io/egress") + "# after\n";
    let repaired = plan_config(&edited, "agentsandbox").unwrap().unwrap();
    assert_eq!(repaired, once.clone() + "# after\n");
}

#[test]
fn a_stanza_someone_else_wrote_is_an_error_not_a_duplicate_table() {
    let foreign = format!(
        "{V2}[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.agentsandbox]\n  runtime_type = \"x\"\n"
    );
    let err = plan_config(&foreign, "agentsandbox").unwrap_err();
    assert!(matches!(err, InstallError::ForeignStanza(_)), "{err}");
    assert!(err
        .to_string()
        .contains("outside agentsandbox's managed block"));
}

#[test]
fn version_1_configurations_are_refused_with_what_to_do() {
    assert_eq!(config_version("# no version\n[plugins.cri]\n"), 1);
    assert_eq!(config_version("version = 2 # comment\n"), 2);
    let err = plan_config("[plugins.cri]\n", "agentsandbox").unwrap_err();
    assert!(
        err.to_string().contains("containerd config migrate"),
        "{err}"
    );
}

fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("asb-installer-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_original_configuration_is_backed_up_once() {
    let dir = scratch("config");
    let config = dir.join("config.toml");
    std::fs::write(&config, V2).unwrap();
    assert!(install_config(&config, "agentsandbox").unwrap());
    assert!(
        !install_config(&config, "agentsandbox").unwrap(),
        "idempotent"
    );
    let backup = dir.join(format!("config.toml{BACKUP_SUFFIX}"));
    assert_eq!(std::fs::read_to_string(&backup).unwrap(), V2);
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("runtimes.agentsandbox]"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_shim_is_copied_only_when_it_differs() {
    let dir = scratch("shim");
    let source = dir.join("source");
    std::fs::write(&source, b"binary v1").unwrap();
    let bin = dir.join("bin");
    assert!(install_shim(&source, &bin).unwrap());
    assert!(!install_shim(&source, &bin).unwrap());
    std::fs::write(&source, b"binary v2").unwrap();
    assert!(install_shim(&source, &bin).unwrap());
    assert_eq!(std::fs::read(bin.join(SHIM_NAME)).unwrap(), b"binary v2");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(bin.join(SHIM_NAME))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    std::fs::remove_dir_all(&dir).unwrap();
}
