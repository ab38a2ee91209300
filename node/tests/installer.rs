//! The node installer's containerd configuration plan and its file edges.

use std::path::Path;

use agentsandbox_node::installer::{
    config_version, import_dir, install_config, install_shim, plan_config, InstallError,
    BACKUP_SUFFIX, DROP_IN_NAME, SHIM_NAME,
};

/// containerd 2.4's own default configuration (version 4, imports conf.d/*.toml).
const CONTAINERD_2_4_DEFAULT: &str = include_str!("fixtures/containerd-2.4.2-default.toml");

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
    assert!(install_config(&config, &dir, "agentsandbox").unwrap());
    assert!(
        !install_config(&config, &dir, "agentsandbox").unwrap(),
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

#[test]
fn containerd_2_4s_default_configuration_gets_a_drop_in_and_stays_untouched() {
    assert_eq!(config_version(CONTAINERD_2_4_DEFAULT), 4);
    assert_eq!(
        import_dir(CONTAINERD_2_4_DEFAULT).as_deref(),
        Some(Path::new("/etc/containerd/conf.d"))
    );
    // The node's /etc/containerd as the node agent mounts it.
    let mounted = scratch("dropin");
    let config = mounted.join("config.toml");
    std::fs::write(&config, CONTAINERD_2_4_DEFAULT).unwrap();
    assert!(install_config(&config, Path::new("/etc/containerd"), "agentsandbox").unwrap());
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        CONTAINERD_2_4_DEFAULT,
        "the node's own file is never edited"
    );
    assert!(!mounted.join(format!("config.toml{BACKUP_SUFFIX}")).exists());
    let drop_in = std::fs::read_to_string(mounted.join("conf.d").join(DROP_IN_NAME)).unwrap();
    assert!(drop_in.starts_with("version = 4\n"), "{drop_in}");
    assert!(drop_in.contains(
        "[plugins.\"io.containerd.cri.v1.runtime\".containerd.runtimes.agentsandbox]\n  runtime_type = \"io.containerd.agentsandbox.v1\""
    ));
    assert!(
        !install_config(&config, Path::new("/etc/containerd"), "agentsandbox").unwrap(),
        "a rerun changes nothing"
    );
    std::fs::remove_dir_all(&mounted).unwrap();
}

#[test]
fn imports_outside_the_mounted_directory_fall_back_to_the_file_itself() {
    let dir = scratch("imports-elsewhere");
    let config = dir.join("config.toml");
    std::fs::write(&config, "version = 3\nimports = [\"/opt/other/*.toml\"]\n").unwrap();
    assert!(install_config(&config, Path::new("/etc/containerd"), "agentsandbox").unwrap());
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("io.containerd.cri.v1.runtime\".containerd.runtimes.agentsandbox]"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// containerd 1.x replaces a whole plugin section with an imported one: a drop-in holding only
/// the runtime would wipe the node's CRI settings (found by the version matrix on 1.7.32: "no
/// corresponding runtime configured ... for default_runtime_name"). Version 2 configurations
/// are therefore edited in place even when they import a directory.
#[test]
fn a_containerd_1x_configuration_with_imports_is_edited_in_place_not_given_a_drop_in() {
    let dir = scratch("v2-imports");
    let config = dir.join("config.toml");
    let original = format!(
        "version = 2\nimports = [\"{}/conf.d/*.toml\"]\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"\n",
        dir.display()
    );
    std::fs::write(&config, &original).unwrap();
    assert!(install_config(&config, &dir, "agentsandbox").unwrap());
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(
        written.contains("default_runtime_name = \"runc\""),
        "{written}"
    );
    assert!(
        written
            .contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.agentsandbox]"),
        "{written}"
    );
    assert!(
        !dir.join("conf.d").join(DROP_IN_NAME).exists(),
        "no drop-in for 1.x"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
