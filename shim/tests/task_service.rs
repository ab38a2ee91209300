//! The task service through containerd's task API, with a fake launcher instead of
//! libcontainer: what the shim decides (policy, id ranges, the container state machine,
//! events, signals, cleanup) in seconds, without root or containerd. The e2e tests run the
//! same calls through a real containerd with real containers.

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::{Arc, Mutex};

use agentsandbox_contract::{annotations, ResponseTaken};
use agentsandbox_shim::launcher::{LaunchRequest, LaunchResponse, Launcher};
use agentsandbox_shim::notify::NotifyListener;
use agentsandbox_shim::task::{EventSink, TaskService};
use agentsandbox_shim::telemetry::Telemetry;
use async_trait::async_trait;
use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{Code, Error as TtrpcError, MessageHeader};
use serde_json::{json, Value};

/// Stands in for the launcher: a `sleep` child per container or exec, and libcontainer's
/// init socket, which records the start message.
#[derive(Default)]
struct FakeLauncher {
    creates: Mutex<Vec<Value>>,
    children: Mutex<Vec<Child>>,
    started: Arc<Mutex<Vec<String>>>,
    fail_next: Mutex<Option<String>>,
}

impl FakeLauncher {
    fn spawn(&self) -> i32 {
        let child = Command::new("sleep").arg("60").spawn().expect("sleep");
        let pid = child.id() as i32;
        self.children.lock().unwrap().push(child);
        pid
    }

    /// Whether the child `pid` has exited (reaping it).
    fn exited(&self, pid: i32) -> bool {
        let mut children = self.children.lock().unwrap();
        let child = children.iter_mut().find(|c| c.id() as i32 == pid).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if child.try_wait().unwrap().is_some() {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for FakeLauncher {
    fn drop(&mut self) {
        for child in self.children.lock().unwrap().iter_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Launcher for FakeLauncher {
    fn launch(&self, request: &LaunchRequest) -> anyhow::Result<LaunchResponse> {
        if let Some(message) = self.fail_next.lock().unwrap().take() {
            return Ok(LaunchResponse::Failed(message));
        }
        if let LaunchRequest::Create(create) = request {
            self.creates
                .lock()
                .unwrap()
                .push(serde_json::to_value(create.as_ref())?);
            let dir = create.root.join(&create.id);
            std::fs::create_dir_all(&dir)?;
            let socket = UnixListener::bind(dir.join("notify.sock"))?;
            let started = self.started.clone();
            let id = create.id.clone();
            std::thread::spawn(move || {
                if let Ok((mut stream, _)) = socket.accept() {
                    let mut message = String::new();
                    let _ = stream.read_to_string(&mut message);
                    started.lock().unwrap().push(format!("{id}: {message}"));
                }
            });
        }
        Ok(LaunchResponse::Pid(self.spawn()))
    }
}

#[derive(Default)]
struct RecordedEvents(Mutex<Vec<String>>);

#[async_trait]
impl EventSink for RecordedEvents {
    async fn publish(&self, topic: &str, _event: Box<dyn MessageDyn>) {
        self.0.lock().unwrap().push(topic.to_string());
    }
}

struct Harness {
    service: TaskService,
    launcher: Arc<FakeLauncher>,
    events: Arc<RecordedEvents>,
    root: PathBuf,
    telemetry: Arc<Telemetry>,
}

/// The pod's network namespace: a real one (`ip netns`), with loopback up as CNI leaves it,
/// named after the harness's directory.
fn netns_name(root: &Path) -> String {
    root.file_name().unwrap().to_string_lossy().into_owned()
}

fn ip(args: &[&str]) {
    let status = std::process::Command::new("ip")
        .args(args)
        .status()
        .expect("ip (iproute2) is installed");
    assert!(status.success(), "ip {args:?}");
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &netns_name(&self.root)])
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn harness(name: &str) -> Harness {
    let root = std::env::temp_dir().join(format!("asb-task-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let launcher = Arc::new(FakeLauncher::default());
    let events = Arc::new(RecordedEvents::default());
    // A real listener: the shim refuses containers without one.
    let telemetry = Telemetry::new(root.join("telemetry.sock"));
    let (responses, _) = tokio::sync::mpsc::unbounded_channel();
    std::fs::create_dir_all(root.join("notify")).unwrap();
    let listener = NotifyListener::start(
        &root.join("notify/listener.sock"),
        telemetry.clone(),
        responses,
    )
    .unwrap();
    let service = TaskService::new("k8s.io", &root, launcher.clone(), events.clone())
        .with_escape_reporting(Some(Arc::new(listener)), telemetry.clone());
    let netns = netns_name(&root);
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &netns])
        .status();
    ip(&["netns", "add", &netns]);
    ip(&["-n", &netns, "link", "set", "lo", "up"]);
    Harness {
        service,
        launcher,
        events,
        root,
        telemetry,
    }
}

fn ctx() -> TtrpcContext {
    TtrpcContext {
        mh: MessageHeader::default(),
        metadata: HashMap::new(),
        timeout_nano: 0,
    }
}

fn code(err: TtrpcError) -> Code {
    match err {
        TtrpcError::RpcStatus(status) => status.code(),
        other => panic!("not a status: {other:?}"),
    }
}

/// A bundle with a CRI-shaped spec for a container of pod "pod-1".
fn bundle(root: &Path, id: &str, container_type: &str, extra: Value) -> String {
    let dir = root.join("bundles").join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let mut spec = common::cri_spec();
    spec["linux"]["cgroupsPath"] = json!(format!("/agentsandbox-test-absent/{id}"));
    spec["mounts"][4]["source"] =
        json!("/run/containerd/io.containerd.grpc.v1.cri/sandboxes/pod-1/shm");
    // containerd's resolv.conf of the pod, under a CRI-shaped directory of the test's own.
    let cri = root.join("io.containerd.grpc.v1.cri/sandboxes/pod-1");
    std::fs::create_dir_all(&cri).unwrap();
    std::fs::write(cri.join("resolv.conf"), "nameserver 10.96.0.10\n").unwrap();
    spec["mounts"][5]["source"] = json!(cri.join("resolv.conf"));
    spec["linux"]["namespaces"][4]["path"] = json!(format!("/var/run/netns/{}", netns_name(root)));
    let annotations = spec["annotations"].as_object_mut().unwrap();
    annotations.insert(
        "io.kubernetes.cri.container-type".into(),
        json!(container_type),
    );
    annotations.insert("io.kubernetes.cri.sandbox-id".into(), json!("pod-1"));
    annotations.insert("io.kubernetes.cri.container-name".into(), json!(id));
    for (k, v) in extra.as_object().into_iter().flatten() {
        annotations.insert(k.clone(), v.clone());
    }
    std::fs::write(dir.join("config.json"), spec.to_string()).unwrap();
    dir.to_string_lossy().into_owned()
}

fn sigkill(id: &str) -> api::KillRequest {
    api::KillRequest {
        id: id.into(),
        signal: 9,
        ..Default::default()
    }
}

fn create_request(bundle: String, id: &str) -> api::CreateTaskRequest {
    api::CreateTaskRequest {
        id: id.into(),
        bundle,
        ..Default::default()
    }
}

fn slots(root: &Path) -> usize {
    std::fs::read_dir(root.join("idmap"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn egress_policy() -> Value {
    json!({
        annotations::EGRESS: r#"{"mode":"Deny","allow":[{"cidr":"10.1.0.0/16","ports":[{"port":443,"protocol":"TCP"}]}],"dns":false}"#,
        annotations::ON_ESCAPE: "Kill",
    })
}

#[tokio::test]
async fn a_pod_runs_through_create_start_kill_exit_and_delete_with_events_in_order() {
    let h = harness("lifecycle");
    let pause = bundle(&h.root, "pause", "sandbox", egress_policy());
    let agent = bundle(&h.root, "agent", "container", egress_policy());

    let created = h
        .service
        .create(&ctx(), create_request(pause, "pause"))
        .await
        .unwrap();
    assert_eq!(
        slots(&h.root),
        1,
        "the pod's first container claims an id range"
    );
    let agent_pid = h
        .service
        .create(&ctx(), create_request(agent, "agent"))
        .await
        .unwrap()
        .pid;
    assert_eq!(slots(&h.root), 1, "later containers join the pod's range");

    let creates = h.launcher.creates.lock().unwrap().clone();
    assert!(
        creates[0]["pin_user_namespace"].is_array(),
        "the first pins the namespace"
    );
    assert!(
        creates[1]["pin_user_namespace"].is_null(),
        "the second joins it"
    );
    assert!(
        creates[0]["egress"].is_null(),
        "no firewall from the pause container"
    );
    let rules = creates[1]["egress"]["nft"].as_str().unwrap();
    assert!(
        rules.contains("ip daddr 10.1.0.0/16 tcp dport { 443 } accept"),
        "{rules}"
    );
    // The hardened bundle the launcher gets has the policy applied.
    let hardened: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(creates[1]["bundle"].as_str().unwrap()).join("config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(hardened["process"]["noNewPrivileges"], true);
    assert_eq!(hardened["root"]["readonly"], true);

    let start = |id: &str| api::StartRequest {
        id: id.into(),
        ..Default::default()
    };
    h.service.start(&ctx(), start("pause")).await.unwrap();
    h.service.start(&ctx(), start("agent")).await.unwrap();
    let again = h.service.start(&ctx(), start("agent")).await.unwrap_err();
    assert_eq!(code(again), Code::FAILED_PRECONDITION);
    // The fake's socket thread records the message it read: wait for it, with a deadline.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let started = loop {
        let started = h.launcher.started.lock().unwrap().clone();
        if started.contains(&"agent: start container".to_string())
            || std::time::Instant::now() > deadline
        {
            break started;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert!(
        started.contains(&"agent: start container".to_string()),
        "{started:?}"
    );

    let state = h
        .service
        .state(
            &ctx(),
            api::StateRequest {
                id: "agent".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(state.status, api::Status::RUNNING.into());

    h.service.kill(&ctx(), sigkill("agent")).await.unwrap();
    assert!(
        h.launcher.exited(agent_pid as i32),
        "SIGKILL reached the process"
    );
    h.service.on_exit(agent_pid as i32, 137).await;
    let waited = h
        .service
        .wait(
            &ctx(),
            api::WaitRequest {
                id: "agent".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(waited.exit_status, 137);
    let killed_again = h.service.kill(&ctx(), sigkill("agent")).await.unwrap_err();
    assert_eq!(
        code(killed_again),
        Code::NOT_FOUND,
        "an exited process takes no signal"
    );

    let delete = |id: &str| api::DeleteRequest {
        id: id.into(),
        ..Default::default()
    };
    let deleted = h.service.delete(&ctx(), delete("agent")).await.unwrap();
    assert_eq!(deleted.exit_status, 137);
    assert!(!h.root.join("k8s.io/containers/agent").exists());
    assert_eq!(
        slots(&h.root),
        1,
        "the pod keeps its range while its sandbox lives"
    );
    h.service.delete(&ctx(), delete("pause")).await.unwrap();
    assert_eq!(
        slots(&h.root),
        0,
        "deleting the sandbox container frees the range"
    );
    assert!(created.pid > 0);

    let topics = h.events.0.lock().unwrap().clone();
    assert_eq!(
        topics,
        vec![
            "/tasks/create",
            "/tasks/create",
            "/tasks/start",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete",
            "/tasks/delete"
        ]
    );
}

#[tokio::test]
async fn a_refused_container_claims_nothing_and_never_reaches_the_launcher() {
    let h = harness("refused");
    let dir = bundle(&h.root, "pause", "sandbox", json!({}));
    // A privileged container: the full capability set and no masked paths.
    let path = Path::new(&dir).join("config.json");
    let mut spec: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    spec["process"]["capabilities"]["bounding"] = json!(["CAP_SYS_ADMIN"]);
    spec["linux"]["maskedPaths"] = json!([]);
    spec["linux"]["readonlyPaths"] = json!([]);
    std::fs::write(&path, spec.to_string()).unwrap();
    let err = h
        .service
        .create(&ctx(), create_request(dir, "pause"))
        .await
        .unwrap_err();
    assert_eq!(code(err), Code::FAILED_PRECONDITION);
    assert_eq!(slots(&h.root), 0);
    assert!(h.launcher.creates.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_policy_annotation_that_does_not_parse_is_refused_not_weakened() {
    let h = harness("badpolicy");
    let dir = bundle(
        &h.root,
        "pause",
        "sandbox",
        json!({annotations::ON_ESCAPE: "Ignore"}),
    );
    let err = h
        .service
        .create(&ctx(), create_request(dir, "pause"))
        .await
        .unwrap_err();
    assert_eq!(code(err), Code::INVALID_ARGUMENT);
    assert!(h.launcher.creates.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_failed_first_create_gives_the_id_range_and_state_back() {
    let h = harness("failed");
    *h.launcher.fail_next.lock().unwrap() = Some("rootfs: no such layer".into());
    let dir = bundle(&h.root, "pause", "sandbox", json!({}));
    let err = h
        .service
        .create(&ctx(), create_request(dir.clone(), "pause"))
        .await
        .unwrap_err();
    assert_eq!(code(err), Code::UNKNOWN);
    assert_eq!(slots(&h.root), 0, "the range was released");
    assert!(!h.root.join("k8s.io/containers/pause").exists());
    // The next try works and claims a range again.
    h.service
        .create(&ctx(), create_request(dir, "pause"))
        .await
        .unwrap();
    assert_eq!(slots(&h.root), 1);
}

#[tokio::test]
async fn after_a_kill_response_every_container_is_dead_and_no_new_one_starts() {
    let h = harness("kill");
    let pause = bundle(&h.root, "pause", "sandbox", egress_policy());
    let agent = bundle(&h.root, "agent", "container", egress_policy());
    h.service
        .create(&ctx(), create_request(pause, "pause"))
        .await
        .unwrap();
    let agent_pid = h
        .service
        .create(&ctx(), create_request(agent.clone(), "agent"))
        .await
        .unwrap()
        .pid;
    h.service.respond(ResponseTaken::Killed).await;
    assert!(h.launcher.exited(agent_pid as i32), "the agent was killed");
    let refused = h
        .service
        .create(&ctx(), create_request(agent, "agent-2"))
        .await
        .unwrap_err();
    assert_eq!(code(refused), Code::FAILED_PRECONDITION);
    // Nothing is exec'd into the pod either (a kubelet probe, kubectl exec).
    let exec = api::ExecProcessRequest {
        id: "pause".into(),
        exec_id: "probe".into(),
        spec: Some(
            containerd_shim_protos::protobuf::well_known_types::any::Any {
                value: json!({"args": ["true"], "cwd": "/", "user": {"uid": 0, "gid": 0}})
                    .to_string()
                    .into_bytes(),
                ..Default::default()
            },
        )
        .into(),
        ..Default::default()
    };
    let refused = h.service.exec(&ctx(), exec).await.unwrap_err();
    assert_eq!(code(refused), Code::FAILED_PRECONDITION);
}

#[tokio::test]
async fn execs_follow_their_state_machine() {
    let h = harness("exec");
    let pause = bundle(&h.root, "pause", "sandbox", json!({}));
    h.service
        .create(&ctx(), create_request(pause, "pause"))
        .await
        .unwrap();
    let exec = |exec_id: &str, cwd: &str| api::ExecProcessRequest {
        id: "pause".into(),
        exec_id: exec_id.into(),
        spec: Some(
            containerd_shim_protos::protobuf::well_known_types::any::Any {
                value: json!({"args": ["true"], "cwd": cwd, "user": {"uid": 0, "gid": 0}})
                    .to_string()
                    .into_bytes(),
                ..Default::default()
            },
        )
        .into(),
        ..Default::default()
    };
    h.service.exec(&ctx(), exec("e1", "/")).await.unwrap();
    let twice = h.service.exec(&ctx(), exec("e1", "/")).await.unwrap_err();
    assert_eq!(code(twice), Code::ALREADY_EXISTS);
    let proc_fd = h
        .service
        .exec(&ctx(), exec("e2", "/proc/self/fd/3"))
        .await
        .unwrap_err();
    assert_eq!(code(proc_fd), Code::FAILED_PRECONDITION);
    // Not started yet: an exec cannot run in a container that is not running.
    let early = h
        .service
        .start(
            &ctx(),
            api::StartRequest {
                id: "pause".into(),
                exec_id: "e1".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(code(early), Code::FAILED_PRECONDITION);
    let mut elsewhere = exec("e3", "/");
    elsewhere.id = "nope".into();
    let unknown = h.service.exec(&ctx(), elsewhere).await.unwrap_err();
    assert_eq!(code(unknown), Code::NOT_FOUND);
}

/// A DNS query for `name` of type `qtype`, as a stub resolver sends it.
fn dns_query(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

/// Sends `query` to the resolver from inside the pod's network namespace; the reply, if any.
async fn ask_resolver(netns: String, query: Vec<u8>) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let ns = std::fs::File::open(format!("/var/run/netns/{netns}"))?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        socket.send_to(&query, "127.0.0.1:53")?;
        let mut reply = vec![0u8; 512];
        let len = socket.recv(&mut reply)?;
        reply.truncate(len);
        Ok(reply)
    })
    .await
    .unwrap()
}

/// [`ask_resolver`] over TCP.
async fn ask_resolver_tcp(netns: String, query: Vec<u8>) -> std::io::Result<Vec<u8>> {
    use std::io::{Read, Write};
    tokio::task::spawn_blocking(move || {
        let ns = std::fs::File::open(format!("/var/run/netns/{netns}"))?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let mut stream = std::net::TcpStream::connect("127.0.0.1:53")?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(2)))?;
        stream.write_all(&(query.len() as u16).to_be_bytes())?;
        stream.write_all(&query)?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len)?;
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        stream.read_exact(&mut reply)?;
        Ok(reply)
    })
    .await
    .unwrap()
}

/// The egress policy of the resolver tests: one host rule, allowed.test:8080.
fn host_rule_policy() -> Value {
    json!({
        annotations::EGRESS: r#"{"mode":"Deny","allow":[{"host":"allowed.test","ports":[{"port":8080,"protocol":"TCP"}]}]}"#,
    })
}

/// Creates the pod's sandbox container, then (unless `pause_only`) its first application
/// container, both under `policy`.
async fn create_pod(h: &Harness, policy: Value, pause_only: bool) {
    let pause = bundle(&h.root, "pause", "sandbox", policy.clone());
    h.service
        .create(&ctx(), create_request(pause, "pause"))
        .await
        .unwrap();
    if !pause_only {
        create_agent(h, policy).await;
    }
}

async fn create_agent(h: &Harness, policy: Value) {
    let agent = bundle(&h.root, "agent", "container", policy);
    h.service
        .create(&ctx(), create_request(agent, "agent"))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_pods_resolver_refuses_names_no_rule_allows_and_counts_them_as_network_events() {
    let h = harness("resolver");
    create_pod(&h, host_rule_policy(), true).await;
    // No resolver before the first application container: nothing listens yet.
    assert!(ask_resolver(netns_name(&h.root), dns_query("x.test", 1))
        .await
        .is_err());
    create_agent(&h, host_rule_policy()).await;
    let creates = h.launcher.creates.lock().unwrap().clone();
    assert_eq!(creates[1]["egress"]["resolver"], true);

    let before = h.telemetry.total();
    let reply = ask_resolver(netns_name(&h.root), dns_query("c2VjcmV0.exfil.test", 16))
        .await
        .expect("the resolver answers in the pod's network namespace");
    assert_eq!(&reply[..2], &[0x12, 0x34], "same id");
    assert_eq!(reply[2] & 0x80, 0x80, "a response");
    assert_eq!(reply[3] & 0x0f, 3, "NXDOMAIN");
    assert_eq!(h.telemetry.total(), before + 1, "counted once");
    // Over TCP (length-prefixed) the same.
    let tcp = ask_resolver_tcp(netns_name(&h.root), dns_query("denied.test", 1))
        .await
        .expect("the resolver answers over TCP");
    assert_eq!((&tcp[..2], tcp[3] & 0x0f), (&[0x12u8, 0x34][..], 3));
    assert_eq!(h.telemetry.total(), before + 2, "counted over TCP too");
    // Not a query: dropped, not counted.
    assert!(ask_resolver(netns_name(&h.root), vec![0xff; 5])
        .await
        .is_err());
    assert_eq!(h.telemetry.total(), before + 2);
}

#[tokio::test]
async fn a_flood_of_allowed_names_while_the_cluster_dns_is_silent_gets_servfail_past_the_bound() {
    use agentsandbox_shim::dns::MAX_IN_FLIGHT;
    let h = harness("dnsflood");
    create_pod(&h, host_rule_policy(), false).await;
    // The cluster DNS (10.96.0.10) is on a link where nobody answers (not even ARP).
    let netns = netns_name(&h.root);
    ip(&[
        "-n", &netns, "link", "add", "v0", "type", "veth", "peer", "name", "v1",
    ]);
    ip(&["-n", &netns, "addr", "add", "10.96.0.1/24", "dev", "v0"]);
    ip(&["-n", &netns, "link", "set", "v0", "up"]);
    ip(&["-n", &netns, "link", "set", "v1", "up"]);

    const QUERIES: usize = 200;
    let servfails = tokio::task::spawn_blocking(move || {
        let ns = std::fs::File::open(format!("/var/run/netns/{netns}")).unwrap();
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        for i in 0..QUERIES {
            let mut q = dns_query("allowed.test", 1);
            q[..2].copy_from_slice(&(i as u16).to_be_bytes());
            socket.send_to(&q, "127.0.0.1:53").unwrap();
        }
        // Within 2 s (the forwards wait 5 s for the silent server), only refusals arrive.
        let mut servfails = 0;
        let mut reply = [0u8; 512];
        while let Ok(len) = socket.recv(&mut reply) {
            assert!(len >= 4);
            assert_eq!(reply[3] & 0x0f, 2, "SERVFAIL");
            servfails += 1;
        }
        servfails
    })
    .await
    .unwrap();
    assert_eq!(servfails, QUERIES - MAX_IN_FLIGHT);
}
