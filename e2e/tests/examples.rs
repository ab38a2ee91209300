//! Every manifest in examples/ is accepted by the API server (schema and CEL rules) and does
//! what its comment says on the real cluster, under the agentsandbox runtime.

use std::time::Duration;

use agentsandbox_e2e::{repo_root, wait_sandbox_ready, wait_until, Cluster};
use agentsandbox_operator::api::{AgentSandbox, Phase};
use kube::Api;

#[tokio::test]
async fn the_examples_run_as_documented() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("examples");
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut names = Vec::new();
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        let yaml = std::fs::read_to_string(&path).unwrap();
        assert!(yaml.contains("namespace: default"), "{}", path.display());
        cluster
            .apply(&yaml.replace("namespace: default", &format!("namespace: {}", ns.name)))
            .unwrap_or_else(|e| panic!("{} refused: {e}", path.display()));
        let name = yaml
            .lines()
            .find_map(|l| l.trim().strip_prefix("name: "))
            .unwrap()
            .to_string();
        names.push(name);
    }
    assert!(names.len() >= 4, "{names:?}");
    for name in &names {
        if name == "code-runner" {
            let sandbox = wait_until("code-runner Finished", Duration::from_secs(120), || async {
                let s = api.get(name).await.ok()?;
                (s.status.as_ref()?.phase == Some(Phase::Finished)).then_some(s)
            })
            .await
            .unwrap();
            let logs = cluster.kubectl_ok(&["-n", &ns.name, "logs", name]).unwrap();
            assert_eq!(logs.trim(), "print(1 + 1)");
            assert!(
                sandbox.status.unwrap().security.is_none(),
                "no escape attempt"
            );
        } else {
            let sandbox = wait_sandbox_ready(&api, name, Duration::from_secs(120))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let pod = sandbox.status.unwrap().pod_name.unwrap();
            assert_eq!(
                cluster
                    .pod_field(&ns.name, &pod, "{.spec.runtimeClassName}")
                    .unwrap(),
                "agentsandbox"
            );
        }
    }
}
