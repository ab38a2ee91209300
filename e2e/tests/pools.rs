//! Templates, warm pools and claims on the real cluster: a pool keeps ready hardened pods of a
//! template; an AgentSandbox with `templateRef` takes one, and its env (a Secret's value
//! included), args and egress reach the agent process of that already-running pod; pools
//! scale through the scale subresource, roll only their unclaimed pods when the template
//! changes, and an empty pool starts a sandbox cold and says why.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use agentsandbox_e2e::{busybox_image, sh, wait_sandbox_ready, wait_until, Cluster};
use agentsandbox_operator::api::{AgentSandbox, AgentSandboxPool, ClaimStart};
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::ResourceExt;

fn template_yaml(namespace: &str, marker: &str) -> String {
    serde_json::json!({
        "apiVersion": "agentsandbox.io/v1alpha1",
        "kind": "AgentSandboxTemplate",
        "metadata": {"name": "agent", "namespace": namespace},
        "spec": {"sandbox": {
            "image": busybox_image(),
            "command": ["sh", "-c", "exec sleep 100000"],
            "env": [{"name": "TEMPLATE", "value": marker}],
            "resources": {
                "requests": {"cpu": "5m", "memory": "8Mi"},
                "limits": {"cpu": "500m", "memory": "64Mi"},
            },
        }},
    })
    .to_string()
}

fn pool_yaml(namespace: &str, replicas: i32) -> String {
    serde_json::json!({
        "apiVersion": "agentsandbox.io/v1alpha1",
        "kind": "AgentSandboxPool",
        "metadata": {"name": "warm", "namespace": namespace},
        "spec": {"templateRef": {"name": "agent"}, "replicas": replicas},
    })
    .to_string()
}

fn claim_yaml(namespace: &str, name: &str, spec: serde_json::Value) -> String {
    let mut spec = spec;
    spec["templateRef"] = serde_json::json!({"name": "agent"});
    serde_json::json!({
        "apiVersion": "agentsandbox.io/v1alpha1",
        "kind": "AgentSandbox",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    })
    .to_string()
}

async fn wait_pool(api: &Api<AgentSandboxPool>, replicas: i32, ready: i32) -> AgentSandboxPool {
    wait_until(
        &format!("pool warm with {replicas} pods, {ready} ready"),
        Duration::from_secs(120),
        || async {
            let pool = api.get("warm").await.ok()?;
            let status = pool.status.as_ref()?;
            (status.replicas == replicas
                && status.ready_replicas == ready
                && status.outdated_replicas == 0)
                .then_some(pool)
        },
    )
    .await
    .unwrap()
}

/// The agent process's (PID 1's) environment in `pod`.
fn agent_environment(cluster: &Cluster, namespace: &str, pod: &str) -> BTreeMap<String, String> {
    let (code, out, err) = sh(cluster, namespace, pod, "tr '\\0' '\\n' < /proc/1/environ");
    assert_eq!(code, 0, "reading /proc/1/environ in {pod}: {err}");
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn claims_take_warm_pods_with_their_own_env_secret_and_egress_and_pools_scale_and_roll() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-pools");
    let secret = format!("s3cret-{}", std::process::id());
    cluster
        .kubectl_ok(&[
            "-n",
            &ns.name,
            "create",
            "secret",
            "generic",
            "token",
            &format!("--from-literal=value={secret}"),
        ])
        .unwrap();
    cluster.apply(&template_yaml(&ns.name, "v1")).unwrap();
    cluster.apply(&pool_yaml(&ns.name, 3)).unwrap();
    let pools: Api<AgentSandboxPool> = Api::namespaced(cluster.client.clone(), &ns.name);
    let sandboxes: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pool = wait_pool(&pools, 3, 3).await;
    let condition = pool.status.unwrap().conditions.unwrap();
    assert_eq!(condition[0].status, "True", "pool Ready: {condition:?}");

    // An unclaimed pod waits: its agent has not started, and it has no egress.
    let waiting = pods
        .list(&kube::api::ListParams::default().labels("agentsandbox.io/pool=warm"))
        .await
        .unwrap()
        .items;
    let idle = waiting[0].name_any();
    let (_, cmdline, _) = sh(&cluster, &ns.name, &idle, "tr '\\0' ' ' < /proc/1/cmdline");
    assert!(
        cmdline.starts_with("/dev/.agentsandbox-wait sh -c"),
        "an unclaimed pod runs the waiter: {cmdline}"
    );

    // Ten claims, one after the other, each taking a ready pod.
    let mut latencies = Vec::new();
    for i in 0..10 {
        wait_until(
            "a ready pod in the pool",
            Duration::from_secs(60),
            || async { (pools.get("warm").await.ok()?.status?.ready_replicas >= 1).then_some(()) },
        )
        .await
        .unwrap();
        let name = format!("claim-{i}");
        let mut spec = serde_json::json!({
            "poolRef": {"name": "warm"},
            "env": [{"name": "CLAIM", "value": name}],
        });
        if i == 0 {
            spec["env"].as_array_mut().unwrap().push(serde_json::json!(
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "value"}}}
            ));
        }
        if i == 1 {
            spec["network"] = serde_json::json!({"egressAllow": [{"cidr": "10.123.0.0/16", "ports": [{"port": 443}]}]});
        }
        let started = Instant::now();
        cluster.apply(&claim_yaml(&ns.name, &name, spec)).unwrap();
        let ready = wait_sandbox_ready(&sandboxes, &name, Duration::from_secs(60))
            .await
            .unwrap();
        latencies.push(started.elapsed());
        let claim = ready
            .status
            .as_ref()
            .unwrap()
            .claim
            .clone()
            .expect("status.claim");
        assert_eq!(
            claim.start,
            ClaimStart::Warm,
            "{name} took a warm pod: {claim:?}"
        );
        assert!(claim.handed_off, "{name}: handed off");
        assert_eq!(claim.pool.as_deref(), Some("warm"));
        let pod = ready.status.as_ref().unwrap().pod_name.clone().unwrap();
        assert!(pod.starts_with("warm-"), "{name} runs in a pool pod: {pod}");
    }
    println!("claim create->Ready (kubectl apply included): {latencies:?}");

    // The claim's env and secret reached the agent process of the warm pod; another claim's
    // process has its own and nothing of the first's.
    let pod_of = |s: &AgentSandbox| s.status.as_ref().unwrap().pod_name.clone().unwrap();
    let first = sandboxes.get("claim-0").await.unwrap();
    let second = sandboxes.get("claim-1").await.unwrap();
    let env0 = agent_environment(&cluster, &ns.name, &pod_of(&first));
    assert_eq!(env0.get("CLAIM").map(String::as_str), Some("claim-0"));
    assert_eq!(
        env0.get("TOKEN"),
        Some(&secret),
        "the secret reached the agent"
    );
    assert_eq!(
        env0.get("TEMPLATE").map(String::as_str),
        Some("v1"),
        "the template's env stays"
    );
    let env1 = agent_environment(&cluster, &ns.name, &pod_of(&second));
    assert_eq!(env1.get("CLAIM").map(String::as_str), Some("claim-1"));
    assert!(
        !env1.contains_key("TOKEN"),
        "claim-1 sees no TOKEN: {env1:?}"
    );
    let (_, listing, _) = sh(
        &cluster,
        &ns.name,
        &pod_of(&second),
        "cat /proc/*/environ 2>/dev/null | tr '\\0' '\\n'",
    );
    assert!(
        !listing.contains(&secret),
        "nothing in claim-1's pod holds claim-0's secret"
    );
    let pod_json = cluster
        .kubectl_ok(&["-n", &ns.name, "get", "pod", &pod_of(&first), "-o", "json"])
        .unwrap();
    assert!(
        !pod_json.contains(&secret),
        "the secret is not written into the pod object"
    );
    let (_, cmdline, _) = sh(
        &cluster,
        &ns.name,
        &pod_of(&first),
        "tr '\\0' ' ' < /proc/1/cmdline",
    );
    assert_eq!(
        cmdline.trim(),
        "sleep 100000",
        "the agent replaced the waiter as PID 1"
    );

    // The claim's egress replaced the warm pod's deny-all table.
    let pid = cluster.pod_host_pid(&ns.name, &pod_of(&second)).unwrap();
    let table = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid.to_string(),
            "-n",
            "nft",
            "list",
            "table",
            "inet",
            "agentsandbox",
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("10.123.0.0/16"),
        "claim-1's egress rule is in its table: {table}"
    );

    // kubectl scale drives the pool through the scale subresource.
    cluster
        .kubectl_ok(&[
            "-n",
            &ns.name,
            "scale",
            "agentsandboxpool/warm",
            "--replicas=5",
        ])
        .unwrap();
    wait_pool(&pools, 5, 5).await;

    // A template change rolls the unclaimed pods only.
    let claimed_before: Vec<(String, String)> = sandboxes
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|s| {
            let pod = pod_of(s);
            let uid = cluster
                .pod_field(&ns.name, &pod, "{.metadata.uid}")
                .unwrap();
            (pod, uid)
        })
        .collect();
    let hash_before = pools
        .get("warm")
        .await
        .unwrap()
        .status
        .unwrap()
        .template_hash;
    cluster.apply(&template_yaml(&ns.name, "v2")).unwrap();
    let rolled = wait_until(
        "the pool's pods of template v2",
        Duration::from_secs(120),
        || async {
            let pool = pools.get("warm").await.ok()?;
            let status = pool.status?;
            (status.template_hash != hash_before
                && status.ready_replicas == 5
                && status.replicas == 5)
                .then_some(status.template_hash)
        },
    )
    .await
    .unwrap();
    let members = pods
        .list(&kube::api::ListParams::default().labels("agentsandbox.io/pool=warm"))
        .await
        .unwrap()
        .items;
    assert!(members
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .all(|p| p.labels().get("agentsandbox.io/template-hash") == Some(&rolled)));
    for (pod, uid) in &claimed_before {
        let now = cluster.pod_field(&ns.name, pod, "{.metadata.uid}").unwrap();
        assert_eq!(
            &now, uid,
            "claimed pod {pod} untouched by the template change"
        );
    }
    let (_, template_env, _) = sh(&cluster, &ns.name, &pod_of(&first), "echo $TEMPLATE");
    assert_eq!(
        template_env.trim(),
        "v1",
        "a claimed sandbox keeps the template it started from"
    );

    // An empty pool: a claim starts cold, and says why.
    cluster
        .kubectl_ok(&[
            "-n",
            &ns.name,
            "scale",
            "agentsandboxpool/warm",
            "--replicas=0",
        ])
        .unwrap();
    wait_pool(&pools, 0, 0).await;
    cluster
        .apply(&claim_yaml(
            &ns.name,
            "cold",
            serde_json::json!({"poolRef": {"name": "warm"}}),
        ))
        .unwrap();
    let cold = wait_sandbox_ready(&sandboxes, "cold", Duration::from_secs(120))
        .await
        .unwrap();
    let claim = cold.status.as_ref().unwrap().claim.clone().unwrap();
    assert_eq!(claim.start, ClaimStart::Cold);
    assert_eq!(claim.reason.as_deref(), Some("PoolEmpty"), "{claim:?}");
    assert_eq!(pod_of(&cold), "cold", "a cold sandbox's pod is its own");
    let events = cluster
        .kubectl_ok(&[
            "-n",
            &ns.name,
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=cold,reason=StartedCold",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .unwrap();
    assert!(events.contains("PoolEmpty"), "StartedCold event: {events}");
    let (_, cold_template, _) = sh(&cluster, &ns.name, "cold", "echo $TEMPLATE");
    assert_eq!(
        cold_template.trim(),
        "v2",
        "a cold start uses the template as it is now"
    );

    // Suspend and resume a claimed sandbox: its warm pod goes, it comes back in a pod of its
    // own made from the template it recorded (v1, though the template is v2 now), with its
    // env, and the agent can write.
    let mode = |m: &str| format!(r#"{{"spec":{{"operatingMode":"{m}"}}}}"#);
    let warm_pod_of_third = pod_of(&sandboxes.get("claim-2").await.unwrap());
    cluster
        .kubectl_ok(&[
            "-n",
            &ns.name,
            "patch",
            "agentsandbox",
            "claim-2",
            "--type=merge",
            "-p",
            &mode("Suspended"),
        ])
        .unwrap();
    wait_until(
        "claim-2's warm pod gone",
        Duration::from_secs(60),
        || async {
            pods.get_opt(&warm_pod_of_third)
                .await
                .ok()?
                .is_none()
                .then_some(())
        },
    )
    .await
    .unwrap();
    cluster
        .kubectl_ok(&[
            "-n",
            &ns.name,
            "patch",
            "agentsandbox",
            "claim-2",
            "--type=merge",
            "-p",
            &mode("Running"),
        ])
        .unwrap();
    let resumed = wait_until("claim-2 Ready again", Duration::from_secs(120), || async {
        let s = sandboxes.get("claim-2").await.ok()?;
        (s.condition("Ready")?.status == "True"
            && s.status.as_ref()?.pod_name.as_deref() == Some("claim-2"))
        .then_some(s)
    })
    .await
    .unwrap();
    assert_eq!(
        resumed.status.unwrap().claim.unwrap().start,
        ClaimStart::Warm,
        "status.claim says how it started"
    );
    let env2 = agent_environment(&cluster, &ns.name, "claim-2");
    assert_eq!(env2.get("CLAIM").map(String::as_str), Some("claim-2"));
    assert_eq!(
        env2.get("TEMPLATE").map(String::as_str),
        Some("v1"),
        "resumed from its recorded template"
    );
    let (code, out, err) = sh(
        &cluster,
        &ns.name,
        "claim-2",
        "echo after-resume > /tmp/w && cat /tmp/w",
    );
    assert_eq!(
        (code, out.trim()),
        (0, "after-resume"),
        "write after resume: {err}"
    );

    // A claim cannot move to another template or pool.
    let moved = cluster.kubectl(&[
        "-n",
        &ns.name,
        "patch",
        "agentsandbox",
        "claim-1",
        "--type=merge",
        "-p",
        r#"{"spec":{"templateRef":{"name":"other"}}}"#,
    ]);
    let refusal = String::from_utf8_lossy(&moved.stderr);
    assert!(
        !moved.status.success()
            && refusal.contains("spec.templateRef and spec.poolRef cannot change"),
        "changing templateRef is refused: {refusal}"
    );

    // Deleting a claim frees nothing of another.
    let second_uid = cluster
        .pod_field(&ns.name, &pod_of(&second), "{.metadata.uid}")
        .unwrap();
    cluster
        .kubectl_ok(&[
            "-n",
            &ns.name,
            "delete",
            "agentsandbox",
            "claim-0",
            "--wait=true",
        ])
        .unwrap();
    wait_until("claim-0's pod gone", Duration::from_secs(60), || async {
        pods.get_opt(&pod_of(&first))
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await
    .unwrap();
    let second = sandboxes.get("claim-1").await.unwrap();
    assert_eq!(second.condition("Ready").unwrap().status, "True");
    assert_eq!(
        cluster
            .pod_field(&ns.name, &pod_of(&second), "{.metadata.uid}")
            .unwrap(),
        second_uid
    );
    let env1 = agent_environment(&cluster, &ns.name, &pod_of(&second));
    assert_eq!(env1.get("CLAIM").map(String::as_str), Some("claim-1"));
}
