//! The chart's lifecycle on the real cluster: `helm upgrade` with a changed CRD applies the
//! new schema (the CRD is a template, not Helm's never-upgraded crds/ folder), and `helm
//! uninstall` leaves no workload behind while the CRD and the users' sandboxes stay (the
//! documented policy). The release is reinstalled with its values at the end. Its own test
//! binary: it takes the product away from the cluster for a while.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use agentsandbox_e2e::{
    repo_root, state_dir, wait_sandbox_ready, wait_until_sync, Cluster, AGENTSANDBOX_NAMESPACE,
};
use agentsandbox_operator::api::AgentSandbox;
use kube::Api;

const RELEASE: &str = "agentsandbox";
const CRD: &str = "agentsandboxes.agentsandbox.io";

fn helm(args: &[&str]) -> String {
    let output = Command::new(state_dir().join("bin/helm"))
        .arg("--kubeconfig")
        .arg(state_dir().join("kubeconfig"))
        .args(["--namespace", AGENTSANDBOX_NAMESPACE])
        .args(args)
        .output()
        .expect("helm runs");
    assert!(
        output.status.success(),
        "helm {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `helm upgrade|install RELEASE CHART -f VALUES --wait`.
fn helm_with_values(verb: &str, chart: &Path, values: &str) {
    helm(&[
        verb,
        RELEASE,
        chart.to_str().unwrap(),
        "-f",
        values,
        "--wait",
        "--timeout",
        "5m",
    ]);
}

fn scratch() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("asb-chart-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of the chart whose CRD has one more optional field, spec.e2eUpgradeProbe.
fn chart_with_extra_field(cluster: &Cluster, dir: &Path) -> PathBuf {
    let chart = dir.join("agentsandbox");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(repo_root().join("charts/agentsandbox"))
        .arg(&chart)
        .status()
        .unwrap();
    assert!(copied.success());
    let crd_file = chart.join("files/crds/agentsandbox.io_agentsandboxes.yaml");
    let as_json = cluster
        .kubectl_ok(&[
            "create",
            "--dry-run=client",
            "-o",
            "json",
            "-f",
            crd_file.to_str().unwrap(),
        ])
        .unwrap();
    let mut crd: serde_json::Value = serde_json::from_str(&as_json).unwrap();
    crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        ["e2eUpgradeProbe"] = serde_json::json!({
        "type": "string",
        "description": "Added by the chart lifecycle test."
    });
    // JSON is YAML: the chart's template reads it with fromYaml.
    std::fs::write(&crd_file, serde_json::to_string_pretty(&crd).unwrap()).unwrap();
    chart
}

fn crd_has_probe_field(cluster: &Cluster) -> bool {
    cluster
        .kubectl_ok(&[
            "get",
            "crd",
            CRD,
            "-o",
            "jsonpath={.spec.versions[0].schema.openAPIV3Schema.properties.spec.properties.e2eUpgradeProbe.type}",
        ])
        .unwrap()
        .trim()
        == "string"
}

fn release_objects(cluster: &Cluster) -> String {
    let selector = format!("app.kubernetes.io/instance={RELEASE}");
    let namespaced = cluster
        .kubectl_ok(&[
            "-n",
            AGENTSANDBOX_NAMESPACE,
            "get",
            "deployments,daemonsets,pods,services,serviceaccounts,roles,rolebindings,leases",
            "-l",
            &selector,
            "-o",
            "name",
        ])
        .unwrap();
    let cluster_scoped = cluster
        .kubectl_ok(&[
            "get",
            "clusterroles,clusterrolebindings,runtimeclasses",
            "-l",
            &selector,
            "-o",
            "name",
        ])
        .unwrap();
    format!("{namespaced}{cluster_scoped}").trim().to_string()
}

#[tokio::test]
async fn upgrade_applies_a_changed_crd_and_uninstall_leaves_only_the_crd_and_the_sandboxes() {
    let cluster = Cluster::connect().await;
    let dir = scratch();
    let values = dir.join("values.yaml");
    std::fs::write(&values, helm(&["get", "values", RELEASE, "-o", "yaml"])).unwrap();
    let values = values.to_str().unwrap();

    // Pod Security: the operator meets "restricted"; only the node agent (hostPID, host
    // paths, root for the root-only socket) needs more. The API server evaluates the running
    // pods against the level on a dry-run label change and warns about each violator.
    let output = cluster.kubectl(&[
        "label",
        "--dry-run=server",
        "--overwrite",
        "namespace",
        AGENTSANDBOX_NAMESPACE,
        "pod-security.kubernetes.io/enforce=restricted",
    ]);
    let warnings = String::from_utf8_lossy(&output.stderr);
    assert!(warnings.contains("agentsandbox-node"), "{warnings}");
    assert!(!warnings.contains("agentsandbox-operator"), "{warnings}");

    // helm upgrade with a CRD change: the new field exists, and is accepted without an
    // unknown-field warning.
    assert!(!crd_has_probe_field(&cluster));
    let chart = chart_with_extra_field(&cluster, &dir);
    helm_with_values("upgrade", &chart, values);
    assert!(
        crd_has_probe_field(&cluster),
        "helm upgrade applied the new CRD schema"
    );
    let probe = "apiVersion: agentsandbox.io/v1alpha1\nkind: AgentSandbox\nmetadata: {name: probe, namespace: default}\nspec:\n  image: agentsandbox.local/busybox:1.35.0\n  e2eUpgradeProbe: x\n";
    let output = cluster.kubectl_stdin_output(&["apply", "--dry-run=server", "-f", "-"], probe);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && !stderr.contains("unknown field"),
        "{stderr}"
    );
    helm_with_values("upgrade", &repo_root().join("charts/agentsandbox"), values);
    assert!(
        !crd_has_probe_field(&cluster),
        "and the upgrade back removed it"
    );

    // helm uninstall: no workload, RBAC or RuntimeClass left; the CRD and the sandboxes stay.
    let sandboxes_before = cluster
        .kubectl_ok(&["get", "agentsandboxes", "-A", "-o", "name"])
        .unwrap();
    assert!(sandboxes_before.contains("quickstart"));
    helm(&["uninstall", RELEASE, "--wait", "--timeout", "3m"]);
    let left = wait_until_sync(
        "the release's objects gone",
        Duration::from_secs(120),
        || {
            let left = release_objects(&cluster);
            left.is_empty().then_some(())
        },
    );
    assert!(left.is_ok(), "left behind:\n{}", release_objects(&cluster));
    cluster
        .kubectl_ok(&["get", "crd", CRD])
        .expect("the CRD is kept on uninstall");
    assert_eq!(
        cluster
            .kubectl_ok(&["get", "agentsandboxes", "-A", "-o", "name"])
            .unwrap(),
        sandboxes_before,
        "uninstalling deletes no sandbox"
    );

    // Back as it was (later test binaries need the product).
    helm_with_values("install", &repo_root().join("charts/agentsandbox"), values);
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), "default");
    wait_sandbox_ready(&api, "quickstart", Duration::from_secs(120))
        .await
        .expect("the reinstalled operator takes the quickstart sandbox back");
    std::fs::remove_dir_all(&dir).ok();
}
