//! The local cluster itself (`make up`): what every other e2e test stands on.

use std::time::Duration;

use agentsandbox_e2e::{
    busybox_pod, idle_pod, main_container, state_dir, version, Cluster, TestHost,
};
use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod};
use k8s_openapi::api::core::v1::{PersistentVolumeClaimVolumeSource, Volume, VolumeMount};
use kube::api::{Api, ListParams};

const POD_READY: Duration = Duration::from_secs(90);

fn wait_ready(cluster: &Cluster, namespace: &str, pod: &str) {
    cluster
        .kubectl_ok(&[
            "-n",
            namespace,
            "wait",
            "--for=condition=Ready",
            &format!("pod/{pod}"),
            &format!("--timeout={}s", POD_READY.as_secs()),
        ])
        .unwrap_or_else(|e| panic!("pod {namespace}/{pod} did not become Ready: {e}"));
}

fn wait_succeeded(cluster: &Cluster, namespace: &str, pod: &str) {
    cluster
        .kubectl_ok(&[
            "-n",
            namespace,
            "wait",
            "--for=jsonpath={.status.phase}=Succeeded",
            &format!("pod/{pod}"),
            &format!("--timeout={}s", POD_READY.as_secs()),
        ])
        .unwrap_or_else(|e| panic!("pod {namespace}/{pod} did not succeed: {e}"));
}

#[tokio::test]
async fn node_is_ready_and_runs_the_kubernetes_and_containerd_versions_the_harness_built() {
    let cluster = Cluster::connect().await;
    let expected = version("KUBE_VERSION");

    let server = cluster.client.apiserver_version().await.unwrap();
    assert_eq!(server.git_version, expected, "kube-apiserver version");

    // The kubelet reports "Unknown" while the runtime does not answer (make up restarts
    // containerd once the node agent installed the runtime) until its next status update.
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let nodes = agentsandbox_e2e::wait_until(
        "the node's runtime version reported",
        std::time::Duration::from_secs(90),
        || async {
            let nodes = nodes.list(&ListParams::default()).await.ok()?.items;
            let known = nodes.iter().all(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.node_info.as_ref())
                    .is_some_and(|i| !i.container_runtime_version.ends_with("://Unknown"))
            });
            known.then_some(nodes)
        },
    )
    .await
    .unwrap();
    assert_eq!(nodes.len(), 1, "a single-node cluster");
    let status = nodes[0].status.as_ref().unwrap();
    let info = status.node_info.as_ref().unwrap();
    assert_eq!(info.kubelet_version, expected);
    // The runtime the harness built, not whatever containerd the machine has.
    let containerd = version("CONTAINERD_VERSION");
    assert_eq!(
        info.container_runtime_version,
        format!("containerd://{}", containerd.trim_start_matches('v'))
    );
    let ready = status
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    assert_eq!(ready.status, "True", "node Ready: {:?}", ready.message);
}

#[tokio::test]
async fn pods_run_and_logs_exec_and_exit_codes_work() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("pods");
    cluster.apply(&idle_pod(&ns.name, "idle")).unwrap();
    cluster
        .apply(&busybox_pod(
            &ns.name,
            "hello",
            "echo hello-from-e2e; exit 3",
        ))
        .unwrap();
    wait_ready(&cluster, &ns.name, "idle");

    let exec = cluster.kubectl(&["-n", &ns.name, "exec", "idle", "--", "id", "-u"]);
    assert!(exec.status.success(), "kubectl exec: {exec:?}");
    assert_eq!(String::from_utf8_lossy(&exec.stdout).trim(), "0");

    let failing = cluster.kubectl(&["-n", &ns.name, "exec", "idle", "--", "sh", "-c", "exit 7"]);
    assert_eq!(failing.status.code(), Some(7), "exec exit code propagates");

    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let terminated = agentsandbox_e2e::wait_until("pod hello to exit", POD_READY, || async {
        let pod = pods.get("hello").await.ok()?;
        let state = pod.status?.container_statuses?.first()?.state.clone()?;
        state.terminated
    })
    .await
    .unwrap();
    assert_eq!(terminated.exit_code, 3, "container exit code propagates");
    let logs = cluster
        .kubectl_ok(&["-n", &ns.name, "logs", "hello"])
        .unwrap();
    assert_eq!(logs.trim(), "hello-from-e2e");
}

#[tokio::test]
async fn cluster_dns_resolves_services_and_nothing_outside_the_cluster() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("dns");
    cluster.apply(&idle_pod(&ns.name, "client")).unwrap();
    wait_ready(&cluster, &ns.name, "client");

    let lookup = cluster.kubectl(&[
        "-n",
        &ns.name,
        "exec",
        "client",
        "--",
        "nslookup",
        "kubernetes.default.svc.cluster.local",
    ]);
    let out = String::from_utf8_lossy(&lookup.stdout);
    assert!(lookup.status.success(), "nslookup failed: {lookup:?}");
    assert!(
        out.contains(&version("KUBERNETES_SERVICE_IP")),
        "kubernetes service address in: {out}"
    );

    // CoreDNS has no upstream: a name outside the cluster does not resolve (and no query
    // leaves the machine). `.invalid` is reserved and can never exist.
    let outside = cluster.kubectl(&[
        "-n",
        &ns.name,
        "exec",
        "client",
        "--",
        "nslookup",
        "agentsandbox-e2e.invalid",
    ]);
    assert!(
        !outside.status.success(),
        "an outside name resolved: {outside:?}"
    );
}

#[tokio::test]
async fn pods_reach_the_api_server_through_the_kubernetes_service() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("svc");
    cluster.apply(&idle_pod(&ns.name, "client")).unwrap();
    wait_ready(&cluster, &ns.name, "client");
    let target = format!("{} 443", version("KUBERNETES_SERVICE_IP"));
    let connect = cluster.kubectl(&[
        "-n",
        &ns.name,
        "exec",
        "client",
        "--",
        "sh",
        "-c",
        &format!("echo | nc -w 5 {target}"),
    ]);
    assert!(
        connect.status.success(),
        "pod could not open {target} (kube-proxy ClusterIP): {connect:?}"
    );
}

#[tokio::test]
async fn default_storage_class_provisions_a_volume_that_keeps_data() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("pvc");
    cluster
        .apply(&format!(
            r#"apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  name: data
  namespace: {ns}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 16Mi}}}}
"#,
            ns = ns.name
        ))
        .unwrap();
    let with_volume = |name: &str, script: &str| {
        let mut pod = busybox_pod(&ns.name, name, script);
        pod.spec.as_mut().unwrap().volumes = Some(vec![Volume {
            name: "data".into(),
            persistent_volume_claim: Some(PersistentVolumeClaimVolumeSource {
                claim_name: "data".into(),
                ..Default::default()
            }),
            ..Volume::default()
        }]);
        main_container(&mut pod).volume_mounts = Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: "/data".into(),
            ..VolumeMount::default()
        }]);
        pod
    };
    cluster
        .apply(&with_volume("writer", "echo kept > /data/proof"))
        .unwrap();
    wait_succeeded(&cluster, &ns.name, "writer");
    cluster
        .apply(&with_volume("reader", "cat /data/proof"))
        .unwrap();
    wait_succeeded(&cluster, &ns.name, "reader");
    let read = cluster
        .kubectl_ok(&["-n", &ns.name, "logs", "reader"])
        .unwrap();
    assert_eq!(read.trim(), "kept");

    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &ns.name);
    let claim = claims.get("data").await.unwrap();
    assert_eq!(
        claim.spec.as_ref().unwrap().storage_class_name.as_deref(),
        Some("local-path"),
        "the default StorageClass was applied"
    );
    let volume_name = claim.spec.unwrap().volume_name.expect("claim is bound");
    let volumes: Api<PersistentVolume> = Api::all(cluster.client.clone());
    let volume = volumes.get(&volume_name).await.unwrap();
    let host_path = volume
        .spec
        .and_then(|s| s.host_path.map(|h| h.path).or(s.local.map(|l| l.path)))
        .expect("a local volume path");
    assert!(
        host_path.starts_with(&state_dir().join("local-path").to_string_lossy().to_string()),
        "volumes live under the harness's state directory, not {host_path}"
    );
    assert_eq!(
        std::fs::read_to_string(format!("{host_path}/proof"))
            .unwrap()
            .trim(),
        "kept"
    );
}

#[tokio::test]
async fn pod_traffic_to_an_address_off_the_pod_network_is_dropped() {
    let cluster = Cluster::connect().await;
    let host = TestHost::start(0, 8080).unwrap();
    // The target is alive: the node itself reaches it.
    assert_eq!(host.connect_from_node().unwrap(), host.greeting);

    let ns = cluster.namespace("egress");
    cluster.apply(&idle_pod(&ns.name, "client")).unwrap();
    cluster
        .apply(&busybox_pod(
            &ns.name,
            "peer",
            "trap 'exit 0' TERM; nc -ll -p 8080 -e echo peer-greeting & wait",
        ))
        .unwrap();
    wait_ready(&cluster, &ns.name, "client");
    wait_ready(&cluster, &ns.name, "peer");

    // Pod-to-pod TCP flows and `nc` works in the pod, so a failure below is the guard, not a
    // broken network or tool.
    let peer_ip = cluster
        .kubectl_ok(&[
            "-n",
            &ns.name,
            "get",
            "pod",
            "peer",
            "-o",
            "jsonpath={.status.podIP}",
        ])
        .unwrap();
    let control = cluster.kubectl(&[
        "-n",
        &ns.name,
        "exec",
        "client",
        "--",
        "nc",
        "-w",
        "3",
        peer_ip.trim(),
        "8080",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&control.stdout).trim(),
        "peer-greeting",
        "pod-to-pod TCP failed: {control:?}"
    );

    let escape = cluster.kubectl(&[
        "-n",
        &ns.name,
        "exec",
        "client",
        "--",
        "nc",
        "-w",
        "3",
        &host.address,
        &host.port.to_string(),
    ]);
    let reply = String::from_utf8_lossy(&escape.stdout);
    assert!(
        !reply.contains(&host.greeting),
        "a pod reached {} off the pod network: {escape:?}",
        host.address
    );
}
