//! Harness for the end-to-end tests: a handle on the real local cluster (`make up`), a
//! throw-away namespace per test, `kubectl` for what users do with `kubectl`, polling with
//! deadlines instead of sleeps, and test hosts in network namespaces of our own.
//!
//! The tests never skip: when no cluster is running they fail and say how to start one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{
    Container, Pod, PodSecurityContext, PodSpec, ResourceRequirements, SeccompProfile,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// The repository root (this crate lives in `<root>/e2e`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("e2e crate has a parent directory")
        .to_path_buf()
}

/// The local cluster's state directory (`.e2e/`, or `$E2E_STATE`).
pub fn state_dir() -> PathBuf {
    std::env::var_os("E2E_STATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".e2e"))
}

/// A connection to the local cluster.
pub struct Cluster {
    pub client: kube::Client,
    pub kubeconfig: PathBuf,
}

impl Cluster {
    /// Connects to the cluster `make up` started; fails (never skips) when there is none.
    pub async fn connect() -> Cluster {
        let kubeconfig = state_dir().join("kubeconfig");
        assert!(
            kubeconfig.exists(),
            "no local cluster: {} is missing. Start one with `make up` (or run `make test`, \
             which starts and stops one itself)",
            kubeconfig.display()
        );
        let kubeconfig_yaml = kube::config::Kubeconfig::read_from(&kubeconfig)
            .unwrap_or_else(|e| panic!("reading {}: {e}", kubeconfig.display()));
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig_yaml,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("a usable kubeconfig");
        let client = kube::Client::try_from(config).expect("a Kubernetes client");
        if let Err(e) = client.apiserver_version().await {
            panic!(
                "the local cluster's API server does not answer ({e}); is it running? \
                 `make up` starts it"
            );
        }
        Cluster { client, kubeconfig }
    }

    /// `kubectl` against this cluster (the v1.34 one the harness built, not the machine's).
    pub fn kubectl_command(&self) -> Command {
        let mut command = Command::new(state_dir().join("bin/kubectl"));
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    /// Runs `kubectl ARGS`, returning its output whatever the exit code.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_command()
            .args(args)
            .output()
            .expect("kubectl runs")
    }

    /// Runs `kubectl ARGS` and returns stdout; an error carries stderr.
    pub fn kubectl_ok(&self, args: &[&str]) -> Result<String> {
        let output = self.kubectl(args);
        if !output.status.success() {
            bail!(
                "kubectl {} failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `kubectl apply -f -` of a manifest (server-side, like GitOps tools do).
    pub fn apply(&self, manifest: &(impl Manifest + ?Sized)) -> Result<String> {
        self.kubectl_stdin(
            &["apply", "--server-side", "--field-manager=e2e", "-f", "-"],
            &manifest.to_manifest(),
        )
    }

    /// Runs `kubectl ARGS` with `input` on stdin; returns the whole output, error or not.
    pub fn kubectl_stdin_output(&self, args: &[&str], input: &str) -> Output {
        let mut child = self
            .kubectl_command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl runs");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())
            .expect("writing kubectl's stdin");
        child.wait_with_output().expect("kubectl finishes")
    }

    fn kubectl_stdin(&self, args: &[&str], input: &str) -> Result<String> {
        let output = self.kubectl_stdin_output(args, input);
        if !output.status.success() {
            bail!(
                "kubectl {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A fresh namespace for one test, deleted when the guard drops.
    pub fn namespace(&self, prefix: &str) -> TestNamespace {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "e2e-{prefix}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        self.kubectl_ok(&["create", "namespace", &name])
            .expect("creating a test namespace");
        // The namespace's default service account appears asynchronously; pods are refused
        // until it exists.
        let kubeconfig = self.kubeconfig.clone();
        wait_until_sync(
            "the namespace's default service account",
            Duration::from_secs(30),
            || {
                Command::new(state_dir().join("bin/kubectl"))
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args(["-n", &name, "get", "serviceaccount", "default"])
                    .output()
                    .ok()
                    .filter(|o| o.status.success())
                    .map(|_| ())
            },
        )
        .expect("the default service account");
        TestNamespace {
            name,
            kubeconfig: self.kubeconfig.clone(),
        }
    }
}

/// A namespace owned by one test. Dropping it deletes the namespace without waiting.
pub struct TestNamespace {
    pub name: String,
    kubeconfig: PathBuf,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::env::var_os("E2E_KEEP_NAMESPACES").is_some() {
            return;
        }
        let _ = Command::new(state_dir().join("bin/kubectl"))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}

/// Polls `probe` until it returns `Some`, or fails after `timeout` naming what it waited for.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// [`wait_until`] for probes that block (a `kubectl` call, a socket connect).
pub fn wait_until_sync<T>(
    what: &str,
    timeout: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A test host: a network namespace of our own, joined to this machine by a veth pair, with
/// a TCP server that answers every connection with a fixed line. Egress tests aim at it, never
/// at an outside address. Everything is removed on drop.
pub struct TestHost {
    pub namespace: String,
    pub address: String,
    pub port: u16,
    pub greeting: String,
    host_link: String,
    server: Child,
}

impl TestHost {
    /// Starts host number `index` (0..=63) at 198.18.0.(4*index+2), a benchmarking-range
    /// address (RFC 2544) that is routed nowhere else.
    pub fn start(index: u8, port: u16) -> Result<TestHost> {
        assert!(index < 64, "test host index {index} out of range");
        let namespace = format!("asb-e2e-host{index}");
        let host_link = format!("asbh{index}");
        let peer_link = format!("asbp{index}");
        let base = u32::from(index) * 4;
        let host_side = format!("198.18.0.{}", base + 1);
        let address = format!("198.18.0.{}", base + 2);
        // A stale namespace from a crashed run would make `ip netns add` fail.
        let _ = run("ip", &["netns", "del", &namespace]);
        let _ = run("ip", &["link", "del", &host_link]);
        run("ip", &["netns", "add", &namespace])?;
        run(
            "ip",
            &[
                "link", "add", &host_link, "type", "veth", "peer", "name", &peer_link, "netns",
                &namespace,
            ],
        )?;
        run(
            "ip",
            &["addr", "add", &format!("{host_side}/30"), "dev", &host_link],
        )?;
        run("ip", &["link", "set", &host_link, "up"])?;
        let in_ns = |args: &[&str]| -> Result<()> {
            let mut full = vec!["netns", "exec", namespace.as_str()];
            full.extend_from_slice(args);
            run("ip", &full)
        };
        in_ns(&[
            "ip",
            "addr",
            "add",
            &format!("{address}/30"),
            "dev",
            &peer_link,
        ])?;
        in_ns(&["ip", "link", "set", &peer_link, "up"])?;
        in_ns(&["ip", "link", "set", "lo", "up"])?;
        in_ns(&["ip", "route", "add", "default", "via", &host_side])?;
        let greeting = format!("agentsandbox-test-host-{index}");
        let server = Command::new("ip")
            .args(["netns", "exec", &namespace, "python3", "-c", TEST_SERVER])
            .arg(&address)
            .arg(port.to_string())
            .arg(&greeting)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the test host's server")?;
        let host = TestHost {
            namespace,
            address,
            port,
            greeting,
            host_link,
            server,
        };
        wait_until_sync("the test host's server", Duration::from_secs(10), || {
            host.connect_from_node().ok()
        })?;
        Ok(host)
    }

    /// Connects from this machine (not from a pod) and returns what the server says.
    pub fn connect_from_node(&self) -> Result<String> {
        use std::io::Read;
        let address: std::net::SocketAddr = format!("{}:{}", self.address, self.port).parse()?;
        let mut stream = std::net::TcpStream::connect_timeout(&address, Duration::from_secs(2))?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply)?;
        Ok(reply.trim().to_string())
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = run("ip", &["link", "del", &self.host_link]);
        let _ = run("ip", &["netns", "del", &self.namespace]);
    }
}

/// Answers each connection with one line, forever; stopped by the owning `TestHost`.
const TEST_SERVER: &str = r#"
import socket, sys
address, port, greeting = sys.argv[1], int(sys.argv[2]), sys.argv[3]
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((address, port))
server.listen(16)
while True:
    connection, _ = server.accept()
    connection.sendall((greeting + "\n").encode())
    connection.close()
"#;

fn run(program: &str, args: &[&str]) -> Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program}"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// A value from `e2e/versions.env`, the one list of versions the harness builds. The keys the
/// file lets the environment choose (`KEY=${KEY:-default}`, as the version matrix does) come
/// from the environment when it sets them, so tests check the stack the harness started.
pub fn version(key: &str) -> String {
    let path = repo_root().join("e2e/versions.env");
    let text = std::fs::read_to_string(&path).expect("e2e/versions.env is readable");
    let value = text
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_else(|| panic!("{key} is not set in {}", path.display()));
    match env_default(&value, key) {
        Some(default) => std::env::var(key)
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or(default),
        None => value,
    }
}

/// The major version of the cluster's containerd (CONTAINERD_VERSION).
pub fn containerd_major() -> u32 {
    version("CONTAINERD_VERSION")
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .expect("CONTAINERD_VERSION is vMAJOR.MINOR.PATCH")
}

/// The default of a `${KEY:-default}` value, None for a plain value.
fn env_default(value: &str, key: &str) -> Option<String> {
    value
        .strip_prefix(&format!("${{{key}:-"))?
        .strip_suffix('}')
        .map(str::to_string)
}

/// The locally built busybox test image.
pub fn busybox_image() -> String {
    format!("agentsandbox.local/busybox:{}", version("BUSYBOX_TAG"))
}

/// A busybox pod running `script` with `sh -c`, ending promptly on delete.
pub fn busybox_pod(namespace: &str, name: &str, script: &str) -> Pod {
    script_pod(namespace, name, None, &busybox_image(), script)
}

/// A pod of one container `main` running `script` with `sh -c` in `image`, under
/// `runtime_class` (None: the cluster's default).
fn script_pod(
    namespace: &str,
    name: &str,
    runtime_class: Option<&str>,
    image: &str,
    script: &str,
) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            runtime_class_name: runtime_class.map(String::from),
            automount_service_account_token: Some(false),
            termination_grace_period_seconds: Some(1),
            restart_policy: Some("Never".into()),
            containers: vec![Container {
                name: "main".into(),
                image: Some(image.into()),
                image_pull_policy: Some("IfNotPresent".into()),
                command: Some(vec!["sh".into(), "-c".into(), script.into()]),
                ..Container::default()
            }],
            ..PodSpec::default()
        }),
        ..Pod::default()
    }
}

/// The first container of a pod built here, to adjust before applying it.
pub fn main_container(pod: &mut Pod) -> &mut Container {
    &mut pod.spec.as_mut().expect("a spec").containers[0]
}

/// A pod that idles until deleted, for `kubectl exec` tests.
pub fn idle_pod(namespace: &str, name: &str) -> Pod {
    busybox_pod(namespace, name, IDLE_LOOP)
}

/// What the test sandboxes run by default: idle, ending promptly on SIGTERM.
pub const IDLE_LOOP: &str = "trap 'exit 0' TERM; while true; do sleep 1; done";

/// A sandbox manifest running the local test image idle, with small resources so that many
/// fit on the single node; `extra` is more YAML under `spec:` (indented two spaces).
pub fn sandbox_yaml(namespace: &str, name: &str, extra: &str) -> String {
    sandbox_yaml_running(namespace, name, IDLE_LOOP, extra)
}

/// [`sandbox_yaml`] running `script` with `sh -c`.
pub fn sandbox_yaml_running(namespace: &str, name: &str, script: &str, extra: &str) -> String {
    sandbox_manifest(
        namespace,
        name,
        &busybox_image(),
        &["sh", "-c", script],
        extra,
    )
}

/// An AgentSandbox of `image` running `command`, with small resources so that many fit on the
/// single node; `extra` is more YAML under `spec:` (indented two spaces), merged into the
/// typed base as data, so that tests can also hand the API server specs it must refuse.
pub fn sandbox_manifest(
    namespace: &str,
    name: &str,
    image: &str,
    command: &[&str],
    extra: &str,
) -> String {
    let quantity = |q: &str| Quantity(q.to_string());
    let base = serde_json::json!({
        "apiVersion": "agentsandbox.io/v1alpha1",
        "kind": "AgentSandbox",
        "metadata": ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        },
        "spec": {
            "image": image,
            "command": command,
            "resources": ResourceRequirements {
                requests: Some([("cpu".into(), quantity("5m")), ("memory".into(), quantity("8Mi"))].into()),
                limits: Some([("cpu".into(), quantity("500m")), ("memory".into(), quantity("64Mi"))].into()),
                ..ResourceRequirements::default()
            },
        },
    });
    let mut manifest = base;
    if !extra.trim().is_empty() {
        let extra: serde_json::Value =
            serde_saphyr::from_str(extra).expect("the test's extra spec YAML parses");
        merge(&mut manifest["spec"], extra);
    }
    // JSON is YAML: one document per line, so that manifests can be joined with `---`.
    format!("{manifest}\n")
}

/// Merges `patch` into `target`: objects key by key, anything else replaced.
fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    match (target, patch) {
        (serde_json::Value::Object(target), serde_json::Value::Object(patch)) => {
            for (key, value) in patch {
                merge(target.entry(key).or_insert(serde_json::Value::Null), value);
            }
        }
        (target, patch) => *target = patch,
    }
}

/// What `Cluster::apply` takes: YAML or JSON text, or a typed object.
pub trait Manifest {
    fn to_manifest(&self) -> String;
}

impl Manifest for str {
    fn to_manifest(&self) -> String {
        self.to_string()
    }
}

impl Manifest for String {
    fn to_manifest(&self) -> String {
        self.clone()
    }
}

impl Manifest for Pod {
    fn to_manifest(&self) -> String {
        let mut value = serde_json::to_value(self).expect("a pod serialises");
        value["apiVersion"] = "v1".into();
        value["kind"] = "Pod".into();
        value.to_string()
    }
}

/// Waits until the sandbox `name` is Ready and returns it.
pub async fn wait_sandbox_ready(
    api: &kube::Api<agentsandbox_operator::api::AgentSandbox>,
    name: &str,
    timeout: Duration,
) -> Result<agentsandbox_operator::api::AgentSandbox> {
    wait_until(&format!("sandbox {name} Ready"), timeout, || async {
        let sandbox = api.get(name).await.ok()?;
        (sandbox.condition("Ready")?.status == "True").then_some(sandbox)
    })
    .await
}

/// Names of the operator's pods (the chart runs two replicas).
pub fn operator_pods(cluster: &Cluster) -> Vec<String> {
    cluster
        .kubectl_ok(&[
            "-n",
            AGENTSANDBOX_NAMESPACE,
            "get",
            "pods",
            "-l",
            "app.kubernetes.io/component=operator",
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])
        .expect("listing the operator's pods")
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Waits until the operator's Deployment is fully available again.
pub fn wait_operator_available(cluster: &Cluster) {
    cluster
        .kubectl_ok(&[
            "-n",
            AGENTSANDBOX_NAMESPACE,
            "rollout",
            "status",
            "deployment/agentsandbox-operator",
            "--timeout=120s",
        ])
        .expect("the operator Deployment becomes available");
}

/// The namespace the chart is installed in by `make up`.
pub const AGENTSANDBOX_NAMESPACE: &str = "agentsandbox-system";

/// The RuntimeClass of the agentsandbox shim.
pub const RUNTIME_CLASS: &str = "agentsandbox";

/// The locally built escape-attempt test image (`e2e/images/attack.c` + busybox).
pub fn attack_image() -> String {
    let path = state_dir().join("test-images.env");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{} is missing ({e}): run `make up`", path.display()));
    text.lines()
        .find_map(|l| l.strip_prefix("ATTACK_IMAGE="))
        .map(String::from)
        .expect("ATTACK_IMAGE in test-images.env")
}

/// A pod of `image` running `script`, under `runtime_class` (None: the cluster's default,
/// runc) with the RuntimeDefault seccomp profile, as a careful user would write it.
pub fn runtime_pod(
    namespace: &str,
    name: &str,
    runtime_class: Option<&str>,
    image: &str,
    script: &str,
) -> Pod {
    let mut pod = script_pod(namespace, name, runtime_class, image, script);
    pod.spec.as_mut().expect("a spec").security_context = Some(PodSecurityContext {
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..SeccompProfile::default()
        }),
        ..PodSecurityContext::default()
    });
    pod
}

impl Cluster {
    /// An idle busybox pod `name` under the agentsandbox RuntimeClass, Ready.
    pub fn idle_sandboxed_pod(&self, namespace: &str, name: &str) {
        self.apply(&runtime_pod(
            namespace,
            name,
            Some(RUNTIME_CLASS),
            &busybox_image(),
            IDLE_LOOP,
        ))
        .unwrap();
        self.wait_pod(namespace, name, "condition=Ready").unwrap();
    }

    /// Waits for `kubectl wait --for=<condition>` on a pod.
    pub fn wait_pod(&self, namespace: &str, pod: &str, condition: &str) -> Result<()> {
        self.kubectl_ok(&[
            "-n",
            namespace,
            "wait",
            &format!("--for={condition}"),
            &format!("pod/{pod}"),
            "--timeout=90s",
        ])
        .map(|_| ())
    }

    /// A jsonpath of a pod.
    pub fn pod_field(&self, namespace: &str, pod: &str, jsonpath: &str) -> Result<String> {
        self.kubectl_ok(&[
            "-n",
            namespace,
            "get",
            "pod",
            pod,
            "-o",
            &format!("jsonpath={jsonpath}"),
        ])
        .map(|s| s.trim().to_string())
    }

    /// The host pid of a pod's first container (to enter its namespaces from the node).
    pub fn pod_host_pid(&self, namespace: &str, pod: &str) -> Result<u32> {
        let id = self.pod_field(namespace, pod, "{.status.containerStatuses[0].containerID}")?;
        container_host_pid(&id)
    }

    /// A runc busybox pod `name` that answers `greeting` on TCP 8080, behind a Service of the
    /// same name with the fixed ClusterIP `cluster_ip` (the harness CoreDNS's `test` zone
    /// points names at such addresses); Ready. Creating the Service is retried while a
    /// namespace of an earlier run still holds the address.
    pub fn greeting_service(&self, namespace: &str, name: &str, cluster_ip: &str, greeting: &str) {
        let mut pod = busybox_pod(
            namespace,
            name,
            &format!("trap 'exit 0' TERM; nc -ll -p 8080 -e echo {greeting} & wait"),
        );
        pod.metadata.labels = Some([("target".to_string(), name.to_string())].into());
        self.apply(&pod).unwrap();
        let service = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: {namespace}}}\n\
             spec:\n  clusterIP: {cluster_ip}\n  selector: {{target: {name}}}\n  ports: [{{port: 8080}}]\n"
        );
        wait_until_sync(
            &format!("{cluster_ip} free for the {name} Service"),
            Duration::from_secs(180),
            || self.apply(&service).ok(),
        )
        .unwrap();
        self.wait_pod(namespace, name, "condition=Ready").unwrap();
    }

    /// `kubectl exec POD -- ARGS`: (exit code, stdout, stderr).
    pub fn exec(&self, namespace: &str, pod: &str, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["-n", namespace, "exec", pod, "--"];
        all.extend_from_slice(args);
        let output = self.kubectl(&all);
        (
            output.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    }
}

/// The cluster containerd's CRI socket (from the config up.sh wrote).
pub fn containerd_socket() -> String {
    let config = std::fs::read_to_string(state_dir().join("containerd/config.toml"))
        .expect("containerd config written by e2e/up.sh");
    config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("address = "))
        .map(|v| v.trim_matches('"').to_string())
        .find(|a| !a.ends_with(".ttrpc"))
        .expect("containerd grpc address")
}

/// `crictl ARGS` against the cluster's containerd.
pub fn crictl(args: &[&str]) -> Result<String> {
    let output = Command::new(state_dir().join("bin/crictl"))
        .arg("--runtime-endpoint")
        .arg(format!("unix://{}", containerd_socket()))
        .args(args)
        .output()
        .context("running crictl")?;
    if !output.status.success() {
        bail!(
            "crictl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The host pid of a pod's container (`containerd://ID` from the pod status).
pub fn container_host_pid(container_id: &str) -> Result<u32> {
    let id = container_id.trim_start_matches("containerd://");
    let inspect: serde_json::Value = serde_json::from_str(&crictl(&["inspect", id])?)?;
    inspect["info"]["pid"]
        .as_u64()
        .map(|p| p as u32)
        .context("crictl inspect has no pid")
}

/// One line of the attack program's output: technique -> (syscall, outcome).
pub fn attack_outcomes(output: &str) -> std::collections::BTreeMap<String, (String, String)> {
    output
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            Some((
                words.next()?.to_string(),
                (words.next()?.to_string(), words.next()?.to_string()),
            ))
        })
        .collect()
}

/// An AgentSandbox running the attack program (`agentsandbox-attack ARGS`) in its image;
/// `extra` is more YAML under `spec:` (indented two spaces).
pub fn attack_sandbox_yaml(namespace: &str, name: &str, args: &[&str], extra: &str) -> String {
    let mut command = vec!["agentsandbox-attack"];
    command.extend_from_slice(args);
    sandbox_manifest(namespace, name, &attack_image(), &command, extra)
}

/// The line "done <unix-ns>" the attack program prints after its last attempt, as a time.
pub fn attack_done_at(output: &str) -> Option<std::time::SystemTime> {
    let ns: u64 = output
        .lines()
        .find_map(|l| l.strip_prefix("done "))?
        .trim()
        .parse()
        .ok()?;
    Some(std::time::UNIX_EPOCH + Duration::from_nanos(ns))
}

/// The node agent's pod on the (single) node.
pub fn node_agent_pod(cluster: &Cluster) -> Result<String> {
    let out = cluster.kubectl_ok(&[
        "-n",
        AGENTSANDBOX_NAMESPACE,
        "get",
        "pods",
        "-l",
        "app.kubernetes.io/component=node",
        "--field-selector=status.phase=Running",
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    out.split_whitespace()
        .next()
        .map(String::from)
        .context("no running node agent pod")
}

/// The node agent's /metrics (through the API server's pod proxy).
pub fn node_agent_metrics(cluster: &Cluster) -> Result<String> {
    let pod = node_agent_pod(cluster)?;
    cluster.kubectl_ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{AGENTSANDBOX_NAMESPACE}/pods/{pod}:8081/proxy/metrics"),
    ])
}

/// The sum of the samples of `metric` whose labels include every `label="value"` given.
pub fn metric_sum(metrics: &str, metric: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The Events of `reason` about the AgentSandbox `name`: (count, type, message) each.
pub fn sandbox_events(
    cluster: &Cluster,
    namespace: &str,
    name: &str,
    reason: &str,
) -> Result<Vec<(i64, String, String)>> {
    let out = cluster.kubectl_ok(&[
        "-n",
        namespace,
        "get",
        "events",
        "--field-selector",
        &format!("involvedObject.kind=AgentSandbox,involvedObject.name={name},reason={reason}"),
        "-o",
        "json",
    ])?;
    let list: serde_json::Value = serde_json::from_str(&out)?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["count"].as_i64().unwrap_or(0),
                e["type"].as_str().unwrap_or_default().to_string(),
                e["message"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// Runs the telemetry socket probe (telemetry/testdata/h2_probe.py) against `socket` as
/// `uid`: "h2" (served), "closed" (refused) or "connect-error ERRNO".
pub fn telemetry_socket_probe(socket: &str, uid: u32) -> String {
    use std::os::unix::process::CommandExt;
    let out = Command::new("python3")
        .args(["-c", include_str!("../../telemetry/testdata/h2_probe.py")])
        .arg(socket)
        .uid(uid)
        .gid(uid)
        .output()
        .expect("python3 runs");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Deletes the node agent's pod, waiting until it is gone; returns its name.
pub fn delete_node_agent(cluster: &Cluster) -> Result<String> {
    let old = node_agent_pod(cluster)?;
    cluster.kubectl_ok(&[
        "-n",
        AGENTSANDBOX_NAMESPACE,
        "delete",
        "pod",
        &old,
        "--wait=true",
    ])?;
    Ok(old)
}

/// Waits for the DaemonSet's replacement of node agent pod `old` to be Ready (its installer
/// init container has then finished); returns its name.
pub async fn wait_new_node_agent(cluster: &Cluster, old: &str) -> Result<String> {
    wait_until(
        "a new node agent, Ready",
        Duration::from_secs(90),
        || async {
            let pod = node_agent_pod(cluster).ok()?;
            let ready = cluster
                .pod_field(
                    AGENTSANDBOX_NAMESPACE,
                    &pod,
                    "{.status.containerStatuses[0].ready}",
                )
                .ok()?;
            (pod != old && ready == "true").then_some(pod)
        },
    )
    .await
}

/// `sh -c SCRIPT` in the first container of `pod`: (exit code, stdout, stderr).
pub fn sh(cluster: &Cluster, namespace: &str, pod: &str, script: &str) -> (i32, String, String) {
    cluster.exec(namespace, pod, &["sh", "-c", script])
}

/// A PersistentVolumeClaim of the cluster's default class (local PVs whose root directory is
/// root-owned 0755, as a CSI driver's is).
pub fn claim_yaml(namespace: &str, name: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "16Mi"}},
        },
    })
    .to_string()
}

/// The host directory of a bound claim's local PersistentVolume.
pub fn claim_host_path(cluster: &Cluster, namespace: &str, claim: &str) -> Result<PathBuf> {
    let volume = cluster.kubectl_ok(&[
        "-n",
        namespace,
        "get",
        "pvc",
        claim,
        "-o",
        "jsonpath={.spec.volumeName}",
    ])?;
    let path = cluster.kubectl_ok(&[
        "get",
        "pv",
        volume.trim(),
        "-o",
        "jsonpath={.spec.local.path}{.spec.hostPath.path}",
    ])?;
    let path = path.trim();
    if path.is_empty() {
        bail!("claim {namespace}/{claim} is not bound to a local volume");
    }
    Ok(PathBuf::from(path))
}

/// A file's owner and mode as the host sees it: "uid:gid octal-mode" (mode with its set-id
/// bits, e.g. "0:0 4755").
pub fn host_stat(path: &Path) -> Result<String> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::symlink_metadata(path).with_context(|| format!("stat {}", path.display()))?;
    Ok(format!(
        "{}:{} {:o}",
        meta.uid(),
        meta.gid(),
        meta.mode() & 0o7777
    ))
}

/// One row of the README's table "what works in a volume under agentsandbox vs runc",
/// written by the e2e tests that measured it (`make volume-table` puts them in the README).
/// `order` places the row in the table.
pub fn record_volume_row(order: u32, case: &str, agentsandbox: &str, runc: &str) {
    let dir = state_dir().join("results/volume-table");
    let _ = std::fs::create_dir_all(&dir);
    let slug: String = case
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    let _ = std::fs::write(
        dir.join(format!("{order:03}-{slug}.row")),
        format!("| {case} | {agentsandbox} | {runc} |\n"),
    );
}

/// "ok" for an exit code 0, else what the command said (its last stderr line).
pub fn outcome(result: &(i32, String, String)) -> String {
    if result.0 == 0 {
        "ok".to_string()
    } else {
        let said = result
            .2
            .lines()
            // The command's own last word, not kubectl's "command terminated with exit code N".
            .rfind(|l| !l.trim().is_empty() && !l.starts_with("command terminated"))
            .unwrap_or("")
            .trim();
        let said = said.rsplit(": ").next().unwrap_or(said);
        format!("refused ({said})")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn extra_spec_yaml_merges_into_the_typed_base() {
        let manifest = super::sandbox_manifest(
            "ns",
            "s",
            "img:1",
            &["sh"],
            "  network:\n    egress: Allow\n  resources:\n    limits: {memory: 1Gi}\n",
        );
        let value: serde_json::Value = serde_json::from_str(&manifest).unwrap();
        assert_eq!(value["metadata"]["name"], "s");
        assert_eq!(value["spec"]["network"]["egress"], "Allow");
        assert_eq!(value["spec"]["resources"]["limits"]["memory"], "1Gi");
        assert_eq!(value["spec"]["resources"]["limits"]["cpu"], "500m");
        assert_eq!(value["spec"]["resources"]["requests"]["cpu"], "5m");
    }
}
