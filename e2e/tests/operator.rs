//! The operator on the real cluster, installed by the chart (`make up`): sandboxes applied with
//! kubectl, asserted through the API.

use std::time::Duration;

use agentsandbox_e2e::{
    sandbox_yaml, sandbox_yaml_running, wait_sandbox_ready, wait_until, Cluster,
    AGENTSANDBOX_NAMESPACE,
};
use agentsandbox_operator::api::{AgentSandbox, Phase};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ListParams};
use kube::ResourceExt;

const READY: Duration = Duration::from_secs(120);

fn condition(sandbox: &AgentSandbox, type_: &str) -> Option<(String, String)> {
    sandbox
        .condition(type_)
        .map(|c| (c.status.clone(), c.reason.clone()))
}

async fn wait_ready(api: &Api<AgentSandbox>, name: &str) -> AgentSandbox {
    wait_sandbox_ready(api, name, READY)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn wait_phase(api: &Api<AgentSandbox>, name: &str, phase: Phase) -> AgentSandbox {
    wait_until(
        &format!("sandbox {name} in phase {phase:?}"),
        READY,
        || async {
            let s = api.get(name).await.ok()?;
            (s.status.as_ref()?.phase? == phase).then_some(s)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn wait_gone<K>(api: &Api<K>, name: &str, what: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    wait_until(&format!("{what} {name} to be deleted"), READY, || async {
        matches!(api.get_opt(name).await, Ok(None)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

fn exec(cluster: &Cluster, ns: &str, pod: &str, script: &str) -> String {
    cluster
        .kubectl_ok(&["-n", ns, "exec", pod, "--", "sh", "-c", script])
        .unwrap_or_else(|e| panic!("exec in {pod}: {e}"))
}

#[tokio::test]
async fn sandbox_becomes_running_and_ready_with_a_hardened_pod_on_the_node() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-ready");
    cluster.apply(&sandbox_yaml(&ns.name, "agent", "")).unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let sandbox = wait_ready(&api, "agent").await;
    let status = sandbox.status.clone().unwrap();
    assert_eq!(status.phase, Some(Phase::Running));
    assert_eq!(status.observed_generation, sandbox.metadata.generation);
    assert_eq!(status.pod_name.as_deref(), Some("agent"));
    assert!(status.pod_ip.is_some(), "pod IP reported");
    assert!(
        condition(&sandbox, "Hardened").is_some(),
        "Hardened condition reported"
    );

    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let pod = pods.get("agent").await.unwrap();
    let nodes = cluster
        .kubectl_ok(&["get", "nodes", "-o", "jsonpath={.items[0].metadata.name}"])
        .unwrap();
    assert_eq!(status.node_name.as_deref(), Some(nodes.trim()));
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(nodes.trim())
    );
    let owner = &pod.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid)),
        ("AgentSandbox", sandbox.uid().as_ref())
    );

    // The hardening is real, not just written down: root filesystem read-only, no token.
    let write = cluster.kubectl(&[
        "-n",
        &ns.name,
        "exec",
        "agent",
        "--",
        "sh",
        "-c",
        "touch /probe",
    ]);
    assert!(!write.status.success(), "root filesystem is writable");
    let token = cluster.kubectl(&[
        "-n",
        &ns.name,
        "exec",
        "agent",
        "--",
        "ls",
        "/var/run/secrets/kubernetes.io/serviceaccount",
    ]);
    assert!(
        !token.status.success(),
        "a service account token is mounted"
    );
    exec(&cluster, &ns.name, "agent", "touch /tmp/probe");

    let policies: Api<NetworkPolicy> = Api::namespaced(cluster.client.clone(), &ns.name);
    let policy = policies.get("agent").await.expect("a NetworkPolicy");
    let spec = policy.spec.unwrap();
    assert!(spec.policy_types.unwrap().contains(&"Egress".to_string()));
    assert!(
        spec.egress.unwrap_or_default().is_empty(),
        "egress denied by default"
    );

    let events = cluster
        .kubectl_ok(&[
            "-n",
            &ns.name,
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=agent,involvedObject.kind=AgentSandbox",
            "-o",
            "jsonpath={.items[*].reason}",
        ])
        .unwrap();
    assert!(
        events.contains("PodCreated"),
        "PodCreated event, got: {events}"
    );

    // Reconciling is idempotent: once Ready, nothing the operator owns keeps changing. (A
    // fixed observation window: absence of change cannot be waited for. The sandbox itself is
    // left out: the node agent reports its activity.)
    let versions = || {
        cluster
            .kubectl_ok(&[
                "-n",
                &ns.name,
                "get",
                "networkpolicy/agent",
                "pod/agent",
                "-o",
                "jsonpath={.items[*].metadata.resourceVersion}",
            ])
            .unwrap()
    };
    let before = versions();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(
        versions(),
        before,
        "owned objects keep changing: the reconcile loop is not idempotent"
    );

    let listed = cluster.kubectl_ok(&["-n", &ns.name, "get", "asb"]).unwrap();
    assert!(
        listed.contains("PHASE") && listed.contains("ESCAPES") && listed.contains("Running"),
        "printer columns: {listed}"
    );
}

#[tokio::test]
async fn changing_the_spec_replaces_the_pod_and_observed_generation_follows() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-update");
    cluster.apply(&sandbox_yaml(&ns.name, "agent", "")).unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    wait_ready(&api, "agent").await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let first = pods.get("agent").await.unwrap().uid().unwrap();

    cluster
        .apply(&sandbox_yaml(
            &ns.name,
            "agent",
            "  env: [{name: MODE, value: second}]\n",
        ))
        .unwrap();
    let updated = wait_until("the pod to be replaced and Ready", READY, || async {
        let s = api.get("agent").await.ok()?;
        let pod = pods.get("agent").await.ok()?;
        let replaced = pod.uid()? != first;
        let ready = condition(&s, "Ready")?.0 == "True";
        let observed = s.status.as_ref()?.observed_generation == s.metadata.generation;
        (replaced && ready && observed).then_some(s)
    })
    .await
    .unwrap();
    assert_eq!(updated.metadata.generation, Some(2));
    assert_eq!(
        exec(&cluster, &ns.name, "agent", "echo $MODE").trim(),
        "second"
    );
    for c in updated.status.unwrap().conditions.unwrap() {
        assert_eq!(
            c.observed_generation,
            Some(2),
            "condition {} follows the generation",
            c.type_
        );
    }
}

#[tokio::test]
async fn suspend_deletes_the_pod_keeps_the_workspace_and_resume_finds_the_data() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-suspend");
    let with_workspace = |mode: &str| {
        sandbox_yaml(
            &ns.name,
            "agent",
            &format!("  workspace: {{size: 16Mi}}\n  operatingMode: {mode}\n"),
        )
    };
    cluster.apply(&with_workspace("Running")).unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    wait_ready(&api, "agent").await;
    exec(
        &cluster,
        &ns.name,
        "agent",
        "echo kept-across-suspend > /workspace/proof",
    );

    cluster.apply(&with_workspace("Suspended")).unwrap();
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    wait_gone(&pods, "agent", "pod").await;
    let suspended = wait_until("Ready=False reason Suspended", READY, || async {
        let s = api.get("agent").await.ok()?;
        (condition(&s, "Ready")? == ("False".into(), "Suspended".into())).then_some(s)
    })
    .await
    .unwrap();
    assert_eq!(
        suspended.status.as_ref().unwrap().phase,
        Some(Phase::Suspended)
    );
    assert_eq!(condition(&suspended, "Suspended").unwrap().0, "True");
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &ns.name);
    assert!(
        claims.get_opt("agent-workspace").await.unwrap().is_some(),
        "workspace kept"
    );

    cluster.apply(&with_workspace("Running")).unwrap();
    wait_ready(&api, "agent").await;
    assert_eq!(
        exec(&cluster, &ns.name, "agent", "cat /workspace/proof").trim(),
        "kept-across-suspend"
    );
}

#[tokio::test]
async fn past_shutdown_time_ends_the_sandbox_per_its_policy() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-shutdown");
    let past = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(60);
    cluster
        .apply(&sandbox_yaml(
            &ns.name,
            "retained",
            &format!("  lifetime: {{shutdownTime: \"{past}\"}}\n"),
        ))
        .unwrap();
    cluster
        .apply(&sandbox_yaml(
            &ns.name,
            "deleted",
            &format!("  lifetime: {{shutdownTime: \"{past}\", shutdownPolicy: Delete}}\n"),
        ))
        .unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let retained = wait_phase(&api, "retained", Phase::Finished).await;
    assert_eq!(
        condition(&retained, "Finished").unwrap(),
        ("True".into(), "ShutdownTime".into())
    );
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    assert!(
        pods.get_opt("retained").await.unwrap().is_none(),
        "no pod after shutdown"
    );
    wait_gone(&api, "deleted", "sandbox").await;
}

#[tokio::test]
async fn a_finished_sandbox_is_deleted_after_its_ttl() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-ttl");
    let manifest = sandbox_yaml_running(
        &ns.name,
        "oneshot",
        "echo done",
        "  lifetime: {ttlSecondsAfterFinished: 3}\n",
    );
    cluster.apply(&manifest).unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let finished = wait_phase(&api, "oneshot", Phase::Finished).await;
    assert_eq!(
        condition(&finished, "Finished").unwrap(),
        ("True".into(), "AgentExited".into())
    );
    wait_gone(&api, "oneshot", "sandbox").await;
}

#[tokio::test]
async fn deleting_a_sandbox_removes_everything_it_owns_unless_the_workspace_is_retained() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-delete");
    let exposed = "  network: {expose: [{name: http, port: 8080}]}\n";
    cluster
        .apply(&sandbox_yaml(
            &ns.name,
            "gone",
            &format!("{exposed}  workspace: {{size: 16Mi}}\n"),
        ))
        .unwrap();
    cluster
        .apply(&sandbox_yaml(
            &ns.name,
            "kept",
            "  workspace: {size: 16Mi, retainOnDelete: true}\n",
        ))
        .unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let gone = wait_ready(&api, "gone").await;
    wait_ready(&api, "kept").await;
    assert_eq!(
        gone.status.unwrap().service_fqdn.as_deref(),
        Some(format!("gone.{}.svc.cluster.local", ns.name).as_str())
    );
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), &ns.name);
    let policies: Api<NetworkPolicy> = Api::namespaced(cluster.client.clone(), &ns.name);
    let claims: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &ns.name);
    assert!(services.get_opt("gone").await.unwrap().is_some());

    cluster
        .kubectl_ok(&[
            "-n",
            &ns.name,
            "delete",
            "asb",
            "gone",
            "kept",
            "--wait=false",
        ])
        .unwrap();
    wait_gone(&api, "gone", "sandbox").await;
    wait_gone(&api, "kept", "sandbox").await;
    wait_gone(&pods, "gone", "pod").await;
    wait_gone(&pods, "kept", "pod").await;
    wait_gone(&services, "gone", "service").await;
    wait_gone(&policies, "gone", "network policy").await;
    wait_gone(&policies, "kept", "network policy").await;
    wait_gone(&claims, "gone-workspace", "workspace claim").await;
    let kept = claims
        .get_opt("kept-workspace")
        .await
        .unwrap()
        .expect("retained workspace survives");
    assert!(kept.metadata.deletion_timestamp.is_none());
    assert!(
        kept.owner_references().is_empty(),
        "no owner left to garbage-collect it"
    );
}

#[tokio::test]
async fn invalid_sandboxes_are_refused_by_the_api_server_naming_the_field() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-invalid");
    let cases: &[(&str, &str, &str)] = &[
        (
            "no image",
            "spec: {}",
            "spec needs exactly one of image (a sandbox of its own) or templateRef",
        ),
        (
            "image and templateRef",
            "spec: {image: a:1, templateRef: {name: t}}",
            "spec needs exactly one of image (a sandbox of its own) or templateRef",
        ),
        (
            "poolRef without templateRef",
            "spec: {image: a:1, poolRef: {name: p}}",
            "spec.poolRef needs spec.templateRef",
        ),
        (
            "a template's field on a claim",
            "spec: {templateRef: {name: t}, workspace: {size: 1Gi}}",
            "spec.templateRef: imagePullPolicy, workingDir, resources, podTemplate, workspace, files and network.expose come from the template",
        ),
        (
            "isolation on a claim",
            "spec: {templateRef: {name: t}, isolation: {profile: Standard}}",
            "spec.isolation comes from the template when spec.templateRef is set",
        ),
        ("empty image", "spec: {image: \"\"}", "spec.image"),
        (
            "image with spaces",
            "spec: {image: \"agent 1\"}",
            "spec.image must be an image reference",
        ),
        (
            "allow-list with egress Allow",
            "spec: {image: a:1, network: {egress: Allow, egressAllow: [{cidr: 10.0.0.0/8}]}}",
            "spec.network.egressAllow only applies when spec.network.egress is Deny",
        ),
        (
            "bad CIDR",
            "spec: {image: a:1, network: {egressAllow: [{cidr: 10.0.0.0/33}]}}",
            "spec.network.egressAllow[].cidr must be a CIDR",
        ),
        (
            "rule with both cidr and host",
            "spec: {image: a:1, network: {egressAllow: [{cidr: 10.0.0.0/8, host: pypi.org}]}}",
            "spec.network.egressAllow[] needs exactly one of cidr",
        ),
        (
            "rule with neither cidr nor host",
            "spec: {image: a:1, network: {egressAllow: [{ports: [{port: 443}]}]}}",
            "spec.network.egressAllow[] needs exactly one of cidr",
        ),
        (
            "uppercase host",
            "spec: {image: a:1, network: {egressAllow: [{host: PyPI.org}]}}",
            "spec.network.egressAllow[].host must be a lowercase DNS name",
        ),
        (
            "two-label wildcard",
            "spec: {image: a:1, network: {egressAllow: [{host: \"*.*.example.com\"}]}}",
            "spec.network.egressAllow[].host must be a lowercase DNS name",
        ),
        (
            "single-label host",
            "spec: {image: a:1, network: {egressAllow: [{host: localhost}]}}",
            "spec.network.egressAllow[].host must be a lowercase DNS name",
        ),
        (
            "TTL bounds reversed",
            "spec: {image: a:1, network: {hostAddressTTL: {minSeconds: 60, maxSeconds: 10}}}",
            "spec.network.hostAddressTTL.minSeconds must not exceed maxSeconds",
        ),
        (
            "port out of range",
            "spec: {image: a:1, network: {expose: [{name: http, port: 70000}]}}",
            "spec.network.expose[0].port",
        ),
        (
            "duplicate exposed port",
            "spec: {image: a:1, network: {expose: [{name: a, port: 80}, {name: b, port: 80}]}}",
            "Duplicate value",
        ),
        (
            "unknown operating mode",
            "spec: {image: a:1, operatingMode: Paused}",
            "spec.operatingMode: Unsupported value: \"Paused\"",
        ),
        (
            "unknown escape response",
            "spec: {image: a:1, security: {onEscapeAttempt: Ignore}}",
            "spec.security.onEscapeAttempt: Unsupported value",
        ),
        (
            "zero workspace",
            "spec: {image: a:1, workspace: {size: \"0\"}}",
            "spec.workspace.size must be a positive quantity",
        ),
        (
            "relative mount path",
            "spec: {image: a:1, workspace: {mountPath: work}}",
            "spec.workspace.mountPath must be an absolute path",
        ),
        (
            "relative working directory",
            "spec: {image: a:1, workingDir: src}",
            "spec.workingDir must be an absolute path",
        ),
        (
            "idle timeout too short",
            "spec: {image: a:1, lifetime: {idleTimeout: 10s}}",
            "spec.lifetime.idleTimeout must be a duration of at least 1m",
        ),
        (
            "negative ttl",
            "spec: {image: a:1, lifetime: {ttlSecondsAfterFinished: -1}}",
            "spec.lifetime.ttlSecondsAfterFinished",
        ),
        (
            "reserved label",
            "spec: {image: a:1, podTemplate: {labels: {agentsandbox.io/name: x}}}",
            "keys under agentsandbox.io/ are reserved",
        ),
        (
            "files with both sources",
            "spec: {image: a:1, files: [{path: /etc/agent, secret: {name: s}, configMap: {name: c}}]}",
            "each entry takes exactly one of secret or configMap",
        ),
        (
            "files with no source",
            "spec: {image: a:1, files: [{path: /etc/agent}]}",
            "each entry takes exactly one of secret or configMap",
        ),
        (
            "files at a relative path",
            "spec: {image: a:1, files: [{path: etc/agent, secret: {name: s}}]}",
            "spec.files[].path must be an absolute, normalized path",
        ),
        (
            "files at a path with ..",
            "spec: {image: a:1, files: [{path: /etc/agent/../../proc, secret: {name: s}}]}",
            "spec.files[].path must be an absolute, normalized path",
        ),
        (
            "files under /proc",
            "spec: {image: a:1, files: [{path: /proc/self, secret: {name: s}}]}",
            "cannot be under /proc, /sys or /dev",
        ),
        (
            "files over /etc",
            "spec: {image: a:1, files: [{path: /etc, configMap: {name: c}}]}",
            "cannot replace a system directory",
        ),
        (
            "files inside the workspace",
            "spec: {image: a:1, workspace: {}, files: [{path: /workspace/creds, secret: {name: s}}]}",
            "a path cannot be the workspace's mountPath, inside it or above it",
        ),
        (
            "files above the workspace",
            "spec: {image: a:1, workspace: {mountPath: /data/work}, files: [{path: /data, secret: {name: s}}]}",
            "a path cannot be the workspace's mountPath, inside it or above it",
        ),
        (
            "files inside other files",
            "spec: {image: a:1, files: [{path: /etc/agent, secret: {name: s}}, {path: /etc/agent/ca, configMap: {name: c}}]}",
            "one entry's path cannot be inside another's",
        ),
        (
            "files twice at one path",
            "spec: {image: a:1, files: [{path: /etc/agent, secret: {name: s}}, {path: /etc/agent, configMap: {name: c}}]}",
            "Duplicate value",
        ),
        (
            "file item escaping its directory",
            "spec: {image: a:1, files: [{path: /etc/agent, secret: {name: s, items: [{key: k, path: ../k}]}}]}",
            "spec.files[].items[].path must be relative and cannot contain '..'",
        ),
        (
            "file mode above 0777",
            "spec: {image: a:1, files: [{path: /etc/agent, secret: {name: s, defaultMode: 4589}}]}",
            "defaultMode",
        ),
        (
            "fsGroup outside the sandbox's ids",
            "spec: {image: a:1, podTemplate: {fsGroup: 70000}}",
            "spec.podTemplate.fsGroup",
        ),
        (
            "supplemental group outside the sandbox's ids",
            "spec: {image: a:1, podTemplate: {supplementalGroups: [100, 65536]}}",
            "each group must be between 0 and 65535",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, spec, expected)) in cases.iter().enumerate() {
        let manifest = format!(
            "apiVersion: agentsandbox.io/v1alpha1\nkind: AgentSandbox\nmetadata: {{name: bad-{i}, namespace: {}}}\n{spec}\n",
            ns.name
        );
        let output = cluster.kubectl_stdin_output(&["create", "-f", "-"], &manifest);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() || !stderr.contains(expected) {
            failures.push(format!(
                "{what}: expected refusal containing {expected:?}, got: {stderr}"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "nothing was stored"
    );
    // What the rules must still accept (a server-side dry run: validated, not stored).
    let valid = format!(
        "apiVersion: agentsandbox.io/v1alpha1\nkind: AgentSandbox\nmetadata: {{name: good, namespace: {}}}\n\
         spec: {{image: a:1, workspace: {{}}, podTemplate: {{fsGroup: 2000, supplementalGroups: [3000]}}, \
         files: [{{path: /etc/agent, secret: {{name: creds, defaultMode: 256, items: [{{key: id, path: ssh/id_ed25519, mode: 384}}]}}}}, \
         {{path: /home/agent/.config/tool, configMap: {{name: cfg.v1}}}}, {{path: /workspace-ca, configMap: {{name: ca}}}}]}}\n",
        ns.name
    );
    let output = cluster.kubectl_stdin_output(&["create", "--dry-run=server", "-f", "-"], &valid);
    assert!(
        output.status.success(),
        "a valid spec with files is accepted: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn workspace_storage_class_cannot_change_after_creation() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("asb-immutable");
    cluster
        .apply(&sandbox_yaml(
            &ns.name,
            "agent",
            "  operatingMode: Suspended\n  workspace: {storageClassName: local-path}\n",
        ))
        .unwrap();
    let changed = sandbox_yaml(
        &ns.name,
        "agent",
        "  operatingMode: Suspended\n  workspace: {storageClassName: other}\n",
    );
    let output = cluster.kubectl_stdin_output(
        &["apply", "--server-side", "--field-manager=e2e", "-f", "-"],
        &changed,
    );
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("storageClassName cannot change"),
        "{output:?}"
    );
}

#[tokio::test]
async fn operator_serves_metrics_for_prometheus() {
    let cluster = Cluster::connect().await;
    let path = format!(
        "/api/v1/namespaces/{AGENTSANDBOX_NAMESPACE}/services/agentsandbox-operator-metrics:8080/proxy/metrics"
    );
    let metrics = cluster.kubectl_ok(&["get", "--raw", &path]).unwrap();
    for name in [
        "agentsandbox_operator_reconciles_total",
        "agentsandbox_operator_reconcile_duration_seconds_bucket",
        "agentsandbox_operator_sandboxes{phase=\"Running\"}",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
}
