//! The chart's node agent installs the runtime on the node (`make up` relies on it: the
//! harness no longer copies the shim or writes the stanza): the shim on containerd's PATH, the
//! managed stanza as a drop-in in the imports directory of containerd 2.x's configuration
//! (the node's own file untouched), the node label; and a second run touches nothing. Its own
//! test binary: it restarts the node agent.

use std::time::Duration;

use agentsandbox_e2e::{
    containerd_major, delete_node_agent, repo_root, state_dir, wait_new_node_agent, wait_until,
    Cluster, AGENTSANDBOX_NAMESPACE,
};

#[tokio::test]
async fn the_node_agent_installs_the_runtime_once_and_a_rerun_changes_nothing() {
    let cluster = Cluster::connect().await;
    let label = cluster
        .kubectl_ok(&[
            "get",
            "nodes",
            "-o",
            "jsonpath={.items[0].metadata.labels.agentsandbox\\.io/runtime}",
        ])
        .unwrap();
    assert_eq!(label.trim(), "installed");

    let installed = std::fs::read(state_dir().join("bin/containerd-shim-agentsandbox-v1"))
        .expect("the shim on containerd's PATH");
    let built =
        std::fs::read(repo_root().join("target/release/containerd-shim-agentsandbox-v1")).unwrap();
    assert!(installed == built, "the installed shim is this build's");
    let installed = std::fs::read(state_dir().join("bin/agentsandbox-launcher"))
        .expect("the shim's launcher next to the shim");
    let built = std::fs::read(repo_root().join("target/release/agentsandbox-launcher")).unwrap();
    assert!(installed == built, "the installed launcher is this build's");

    // containerd 2.x: a drop-in in the imports directory (configuration version 3), the node's
    // own file untouched. containerd 1.x (version 2, where CRI is one plugin) replaces a whole
    // plugin section with an imported one, so there the block goes into the file itself, the
    // original kept once as a backup.
    let main_path = state_dir().join("containerd/config.toml");
    let backup = state_dir().join("containerd/config.toml.agentsandbox.bak");
    let drop_in_path = state_dir().join("containerd/conf.d/agentsandbox.toml");
    let (config_path, schema, plugin) = if containerd_major() >= 2 {
        (drop_in_path.clone(), 3, "io.containerd.cri.v1.runtime")
    } else {
        (main_path.clone(), 2, "io.containerd.grpc.v1.cri")
    };
    let config = std::fs::read_to_string(&config_path).expect("the runtime stanza's file");
    assert_eq!(
        config.matches("# BEGIN agentsandbox runtime").count(),
        1,
        "{config}"
    );
    assert!(
        config.starts_with(&format!("version = {schema}\n"))
            || config.contains(&format!("\nversion = {schema}\n")),
        "{config}"
    );
    let stanza = format!(
        "[plugins.\"{plugin}\".containerd.runtimes.agentsandbox]\n  runtime_type = \"io.containerd.agentsandbox.v1\""
    );
    assert_eq!(config.matches(&stanza).count(), 1, "{config}");
    if containerd_major() >= 2 {
        // The node's own configuration is never edited (so there is nothing to back up).
        let main_config = std::fs::read_to_string(&main_path).unwrap();
        assert!(
            !main_config.contains("# BEGIN agentsandbox runtime"),
            "{main_config}"
        );
        assert!(!backup.exists());
    } else {
        assert!(!drop_in_path.exists(), "no drop-in for containerd 1.x");
        assert!(backup.exists(), "the original configuration kept");
    }
    let modified = std::fs::metadata(&config_path).unwrap().modified().unwrap();

    // A new node agent pod runs the installer again: nothing changes, nothing restarts.
    let old = delete_node_agent(&cluster).unwrap();
    let new = wait_new_node_agent(&cluster, &old).await.unwrap();
    let logs = wait_until("the installer's logs", Duration::from_secs(60), || async {
        let logs = cluster
            .kubectl_ok(&["-n", AGENTSANDBOX_NAMESPACE, "logs", &new, "-c", "install"])
            .ok()?;
        logs.contains("node labelled").then_some(logs)
    })
    .await
    .unwrap();
    assert!(logs.contains("shim unchanged"), "{logs}");
    assert!(
        logs.contains("containerd runtime stanza unchanged"),
        "{logs}"
    );
    assert!(!logs.contains("restarting containerd"), "{logs}");
    assert_eq!(
        std::fs::metadata(&config_path).unwrap().modified().unwrap(),
        modified,
        "the configuration was not rewritten"
    );
    assert!(!state_dir()
        .join("containerd/restart-containerd.request")
        .exists());
}
