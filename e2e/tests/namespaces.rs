//! AgentSandboxes in locked-down namespaces on the real cluster: Pod Security "restricted",
//! a ResourceQuota and an admission policy that refuse the sandbox's pod (reported on the
//! sandbox, cleared by themselves), root's namespaced capabilities in Standard, the chart's
//! own pods' Pod Security levels, and tenants who hold only the built-in `edit` role.

use std::time::Duration;

use agentsandbox_e2e::{
    attack_sandbox_yaml, busybox_pod, sandbox_events, sandbox_yaml, wait_sandbox_ready, wait_until,
    Cluster, TestNamespace, AGENTSANDBOX_NAMESPACE,
};
use agentsandbox_operator::api::{AgentSandbox, Phase};
use kube::Api;

const READY: Duration = Duration::from_secs(120);

fn label_namespace(cluster: &Cluster, ns: &TestNamespace, level: &str) {
    cluster
        .kubectl_ok(&[
            "label",
            "namespace",
            &ns.name,
            &format!("pod-security.kubernetes.io/enforce={level}"),
        ])
        .unwrap();
}

/// Waits until the sandbox's Ready condition is False with `reason`; returns its message.
async fn wait_refused(
    api: &Api<AgentSandbox>,
    name: &str,
    reason: &str,
    within: Duration,
) -> String {
    wait_until(
        &format!("sandbox {name} Ready=False {reason}"),
        within,
        || async {
            let s = api.get(name).await.ok()?;
            let ready = s.condition("Ready")?;
            (ready.status == "False" && ready.reason == reason).then(|| {
                assert_eq!(s.status.as_ref().unwrap().phase, Some(Phase::Pending));
                ready.message.clone()
            })
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

#[tokio::test]
async fn a_plain_sandbox_in_a_restricted_namespace_is_ready_as_uid_1000_with_telemetry_egress_and_workspace(
) {
    let cluster = Cluster::connect().await;
    // The egress target runs as root in a namespace of its own (restricted would refuse it).
    let targets = cluster.namespace("restricted-target");
    cluster
        .apply(&busybox_pod(
            &targets.name,
            "target",
            "trap 'exit 0' TERM; nc -ll -p 8080 -e echo target-greeting & nc -ll -p 8081 -e echo other & wait",
        ))
        .unwrap();
    let ns = cluster.namespace("restricted");
    label_namespace(&cluster, &ns, "restricted");
    cluster
        .wait_pod(&targets.name, "target", "condition=Ready")
        .unwrap();
    let target_ip = cluster
        .pod_field(&targets.name, "target", "{.status.podIP}")
        .unwrap();

    // No user choice in the spec: the operator sees the namespace's level.
    let extra = format!(
        "  workspace: {{size: 64Mi}}\n  network:\n    egressAllow:\n    - cidr: {target_ip}/32\n      ports: [{{port: 8080}}]\n"
    );
    cluster
        .apply(&attack_sandbox_yaml(
            &ns.name,
            "agent",
            &["flood", "0", "0"],
            &extra,
        ))
        .unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let sandbox = wait_sandbox_ready(&api, "agent", READY).await.unwrap();
    assert_eq!(sandbox.status.unwrap().phase, Some(Phase::Running));

    let (code, out, err) = cluster.exec(&ns.name, "agent", &["sh", "-c", "id -u; id -g"]);
    assert_eq!(
        (code, out.split_whitespace().collect::<Vec<_>>()),
        (0, vec!["1000", "1000"]),
        "{err}"
    );
    let (code, out, err) = cluster.exec(
        &ns.name,
        "agent",
        &["sh", "-c", "echo kept > /workspace/f && cat /workspace/f"],
    );
    assert_eq!((code, out.trim()), (0, "kept"), "workspace write: {err}");

    let nc = |port: &str| {
        cluster
            .exec(&ns.name, "agent", &["nc", "-w", "3", &target_ip, port])
            .1
            .trim()
            .to_string()
    };
    assert_eq!(nc("8080"), "target-greeting", "the allowed destination");
    assert_eq!(nc("8081"), "", "a port egressAllow does not name");

    let (code, out, _) = cluster.exec(
        &ns.name,
        "agent",
        &["agentsandbox-attack", "unshare-user-ns"],
    );
    assert!(
        !out.contains("ALLOWED"),
        "unshare as uid 1000: {code} {out}"
    );
    let security = wait_until(
        "the attempt on status.security",
        Duration::from_secs(30),
        || async {
            let s = api.get("agent").await.ok()?;
            let security = s.status?.security?;
            (security.escape_attempts >= 1).then_some(security)
        },
    )
    .await
    .unwrap();
    assert_eq!(security.escape_attempts, 1);
    assert_eq!(security.last_attempt.unwrap().syscall, "unshare");
}

#[tokio::test]
async fn a_quota_refusal_is_on_the_sandbox_with_one_warning_and_clears_when_the_quota_is_raised() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("quota");
    let quota = |pods: u32| {
        format!(
            "{{\"apiVersion\": \"v1\", \"kind\": \"ResourceQuota\", \"metadata\": {{\"name\": \"pods\", \"namespace\": \"{}\"}}, \"spec\": {{\"hard\": {{\"pods\": \"{pods}\"}}}}}}\n",
            ns.name
        )
    };
    cluster.apply(&quota(0)).unwrap();
    wait_until("the quota's status", Duration::from_secs(30), || async {
        let hard = cluster
            .kubectl_ok(&[
                "-n",
                &ns.name,
                "get",
                "resourcequota",
                "pods",
                "-o",
                "jsonpath={.status.hard.pods}",
            ])
            .ok()?;
        (hard.trim() == "0").then_some(())
    })
    .await
    .unwrap();

    let started = std::time::Instant::now();
    cluster.apply(&sandbox_yaml(&ns.name, "agent", "")).unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let message = wait_refused(&api, "agent", "QuotaExceeded", Duration::from_secs(10)).await;
    assert!(message.contains("exceeded quota"), "{message}");
    assert!(started.elapsed() <= Duration::from_secs(10));

    // Retries back off but happen (5 s, then 10 s): after two of them, still one Warning.
    wait_until("two retries", Duration::from_secs(30), || async {
        (started.elapsed() >= Duration::from_secs(17)).then_some(())
    })
    .await
    .unwrap();
    let events = sandbox_events(&cluster, &ns.name, "agent", "QuotaExceeded").unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1, "Warning");
    assert_eq!(
        events[0].0.max(1),
        1,
        "one Warning, not one per retry: {events:?}"
    );

    cluster.apply(&quota(5)).unwrap();
    wait_sandbox_ready(&api, "agent", Duration::from_secs(90))
        .await
        .unwrap();
}

/// A ValidatingAdmissionPolicy and binding (cluster-scoped) the test installs, deleted on drop.
struct AdmissionPolicy<'a> {
    cluster: &'a Cluster,
    name: String,
}

impl Drop for AdmissionPolicy<'_> {
    fn drop(&mut self) {
        let _ = self.cluster.kubectl(&[
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            &self.name,
            "--ignore-not-found",
        ]);
    }
}

#[tokio::test]
async fn an_admission_policy_denial_is_reported_the_same_way_and_clears_when_lifted() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("vap");
    let policy = AdmissionPolicy {
        cluster: &cluster,
        name: ns.name.clone(),
    };
    let manifest = format!(
        r#"{{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
  "metadata": {{"name": "{name}"}},
  "spec": {{"failurePolicy": "Fail",
    "matchConstraints": {{"resourceRules": [{{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}}]}},
    "validations": [{{"expression": "false", "message": "pods in this namespace need the platform team's approval"}}]}}}}
---
{{"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
  "metadata": {{"name": "{name}"}},
  "spec": {{"policyName": "{name}", "validationActions": ["Deny"],
    "matchResources": {{"namespaceSelector": {{"matchLabels": {{"kubernetes.io/metadata.name": "{name}"}}}}}}}}}}
"#,
        name = policy.name
    );
    cluster.apply(&manifest).unwrap();
    // Policies take effect asynchronously: wait until a plain pod is refused.
    let probe = busybox_pod(&ns.name, "probe", "true");
    wait_until("the policy in force", Duration::from_secs(30), || async {
        let out = cluster.kubectl_stdin_output(
            &["create", "--dry-run=server", "-f", "-"],
            &agentsandbox_e2e::Manifest::to_manifest(&probe),
        );
        (!out.status.success()).then_some(())
    })
    .await
    .unwrap();

    cluster.apply(&sandbox_yaml(&ns.name, "agent", "")).unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let message = wait_refused(&api, "agent", "PodRejected", Duration::from_secs(10)).await;
    assert!(
        message.contains("need the platform team's approval"),
        "{message}"
    );
    let events = sandbox_events(&cluster, &ns.name, "agent", "PodRejected").unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].1, "Warning");

    drop(policy);
    wait_sandbox_ready(&api, "agent", Duration::from_secs(90))
        .await
        .unwrap();
}

#[tokio::test]
async fn root_in_a_standard_sandbox_chowns_switches_uid_and_adds_a_user_and_strict_root_cannot() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("caps");
    cluster
        .apply(&format!(
            "{}---\n{}",
            sandbox_yaml(&ns.name, "standard", "  isolation: {profile: Standard}\n"),
            sandbox_yaml(&ns.name, "strict", "")
        ))
        .unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    wait_sandbox_ready(&api, "standard", READY).await.unwrap();
    wait_sandbox_ready(&api, "strict", READY).await.unwrap();

    // What a package manager does: files handed to a helper user, a new system user, work
    // done as that user.
    let script = "set -e; touch /tmp/z; chown 1000:1000 /tmp/z; stat -c %u:%g /tmp/z; \
                  echo 'builder:x:1234:1234::/tmp:/bin/sh' >> /etc/passwd; \
                  echo 'builder:x:1234:' >> /etc/group; \
                  su builder -c 'id -u; touch /tmp/by-builder'; stat -c %u /tmp/by-builder";
    let (code, out, err) = cluster.exec(&ns.name, "standard", &["sh", "-c", script]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        out.split_whitespace().collect::<Vec<_>>(),
        vec!["1000:1000", "1234", "1234"],
        "{err}"
    );

    // Strict keeps no capabilities: root cannot give files away.
    let (code, _, err) = cluster.exec(
        &ns.name,
        "strict",
        &["sh", "-c", "touch /tmp/z; chown 1000 /tmp/z"],
    );
    assert_ne!(code, 0, "chown in Strict");
    assert!(err.contains("not permitted"), "{err}");
}

#[tokio::test]
async fn the_operator_runs_in_a_restricted_namespace_and_the_node_agent_needs_privileged() {
    let cluster = Cluster::connect().await;
    let template = |kind: &str| {
        let json = cluster
            .kubectl_ok(&["-n", AGENTSANDBOX_NAMESPACE, "get", kind, "-o", "json"])
            .unwrap();
        let object: serde_json::Value = serde_json::from_str(&json).unwrap();
        object["spec"]["template"].clone()
    };
    let as_pod = |template: &serde_json::Value, ns: &str| {
        // The chart's service account exists only in its own namespace.
        let mut spec = template["spec"].clone();
        spec.as_object_mut().unwrap().remove("serviceAccountName");
        spec.as_object_mut().unwrap().remove("serviceAccount");
        serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "template", "namespace": ns, "labels": template["metadata"]["labels"]},
            "spec": spec,
        })
        .to_string()
    };
    let admitted = |manifest: String| {
        let out =
            cluster.kubectl_stdin_output(&["create", "--dry-run=server", "-f", "-"], &manifest);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let operator = template("deployment/agentsandbox-operator");
    let node = template("daemonset/agentsandbox-node");
    let restricted = cluster.namespace("chart-restricted");
    label_namespace(&cluster, &restricted, "restricted");
    let baseline = cluster.namespace("chart-baseline");
    label_namespace(&cluster, &baseline, "baseline");

    let (ok, err) = admitted(as_pod(&operator, &restricted.name));
    assert!(ok, "the operator's pod under restricted: {err}");
    let (ok, err) = admitted(as_pod(&node, &baseline.name));
    assert!(
        !ok && err.contains("violates PodSecurity"),
        "the node agent under baseline: {err}"
    );
}

#[tokio::test]
async fn a_tenant_with_only_edit_manages_sandboxes_in_its_namespace_and_nowhere_else() {
    let cluster = Cluster::connect().await;
    let own = cluster.namespace("tenant");
    let other = cluster.namespace("tenant-other");
    let user = format!("tenant-{}", std::process::id());
    cluster
        .kubectl_ok(&[
            "-n",
            &own.name,
            "create",
            "rolebinding",
            "tenant-edit",
            "--clusterrole=edit",
            &format!("--user={user}"),
        ])
        .unwrap();
    let as_tenant = |args: &[&str]| {
        let mut all = vec!["--as", user.as_str()];
        all.extend_from_slice(args);
        cluster.kubectl(&all)
    };
    let can = |verb: &str, resource: &str, ns: &str| {
        let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
        let subresource = format!("--subresource={subresource}");
        let mut args = vec!["auth", "can-i", verb, resource, "-n", ns];
        if subresource != "--subresource=" {
            args.push(&subresource);
        }
        String::from_utf8_lossy(&as_tenant(&args).stdout)
            .trim()
            .to_string()
    };
    // The aggregation controller adds the chart's rules to edit asynchronously.
    wait_until(
        "edit aggregates agentsandboxes",
        Duration::from_secs(30),
        || async {
            (can("create", "agentsandboxes.agentsandbox.io", &own.name) == "yes").then_some(())
        },
    )
    .await
    .unwrap();
    assert_eq!(
        can("patch", "agentsandboxes.agentsandbox.io/status", &own.name),
        "no"
    );
    assert_eq!(
        can("list", "agentsandboxes.agentsandbox.io", &other.name),
        "no"
    );

    let create = |ns: &str| {
        let manifest = sandbox_yaml(ns, "mine", "");
        cluster.kubectl_stdin_output(&["--as", &user, "create", "-f", "-"], &manifest)
    };
    let created = create(&own.name);
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    let refused = create(&other.name);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("forbidden"));

    let got = as_tenant(&["-n", &own.name, "get", "agentsandbox", "mine", "-o", "name"]);
    assert!(
        got.status.success(),
        "{}",
        String::from_utf8_lossy(&got.stderr)
    );
    let patched = as_tenant(&[
        "-n",
        &own.name,
        "patch",
        "agentsandbox",
        "mine",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status": {"phase": "Running"}}"#,
    ]);
    assert!(!patched.status.success(), "a tenant wrote the status");
    let deleted = as_tenant(&[
        "-n",
        &own.name,
        "delete",
        "agentsandbox",
        "mine",
        "--wait=false",
    ]);
    assert!(
        deleted.status.success(),
        "{}",
        String::from_utf8_lossy(&deleted.stderr)
    );
}
