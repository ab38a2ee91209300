//! Egress by name: what the pod's resolver adds to a sandbox's first connection, and the
//! queries per second it sustains with 100 sandboxes on the node. Measured from inside the
//! sandboxes' network namespaces (a bench thread enters them), so the path is the sandbox's:
//! the nft redirect, the resolver, the cluster DNS, the set update.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agentsandbox_e2e::{sandbox_yaml, wait_sandbox_ready, Cluster};
use agentsandbox_operator::api::AgentSandbox;
use kube::Api;

/// The `test` zone's addresses (e2e/manifests/coredns.yaml).
const ALLOWED_IP: &str = "10.96.200.10";
const CIDR_IP: &str = "10.96.200.11";
const CLUSTER_DNS: &str = "10.96.0.10:53";

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// Runs `f` on a thread inside the network namespace of host process `pid`.
fn in_netns<T: Send + 'static>(pid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/net")).expect("the sandbox's netns");
        // SAFETY: setns on this thread only.
        let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("bench thread")
}

/// One DNS exchange; the reply's rcode, or None on timeout.
fn ask(socket: &UdpSocket, id: u16, name: &str) -> Option<u8> {
    socket.send(&query(id, name)).ok()?;
    let mut reply = [0u8; 512];
    loop {
        let len = socket.recv(&mut reply).ok()?;
        if len >= 4 && reply[..2] == id.to_be_bytes() {
            return Some(reply[3] & 0x0f);
        }
    }
}

fn greet(addr: &str) -> Option<Duration> {
    let started = Instant::now();
    let addr: SocketAddr = format!("{addr}:8080").parse().ok()?;
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).ok()?;
    (n > 0).then(|| started.elapsed())
}

fn median(samples: &mut [Duration]) -> f64 {
    samples.sort();
    samples
        .get(samples.len() / 2)
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

pub async fn dns_bench(cluster: &Cluster, sandboxes: usize, seconds: u64) {
    let ns = cluster.namespace("bench-dns");
    cluster.greeting_service(&ns.name, "allowed", ALLOWED_IP, "hi");
    cluster.greeting_service(&ns.name, "cidr", CIDR_IP, "hi");
    let extra = format!(
        "  network:\n    egressAllow:\n    - {{host: allowed.test, ports: [{{port: 8080}}]}}\n\
         \x20   - {{cidr: {CIDR_IP}/32, ports: [{{port: 8080}}]}}\n\
         \x20   hostAddressTTL: {{minSeconds: 1, maxSeconds: 1}}\n"
    );
    let names: Vec<String> = (0..sandboxes).map(|i| format!("d{i:03}")).collect();
    let manifests: Vec<String> = names
        .iter()
        .map(|n| sandbox_yaml(&ns.name, n, &extra))
        .collect();
    for chunk in manifests.chunks(20) {
        cluster.apply(&chunk.join("---\n")).unwrap();
    }
    let api: Api<AgentSandbox> = Api::namespaced(cluster.client.clone(), &ns.name);
    let mut pids = vec![];
    for name in &names {
        let sandbox = wait_sandbox_ready(&api, name, Duration::from_secs(600))
            .await
            .unwrap();
        let pod = sandbox.status.unwrap().pod_name.unwrap();
        pids.push(cluster.pod_host_pid(&ns.name, &pod).unwrap());
    }

    println!(
        "== egress by name: first connection (30 rounds, 1 s TTL so every round starts closed)"
    );
    let first = pids[0];
    let (mut cidr, mut resolve, mut by_name, mut direct) = (vec![], vec![], vec![], vec![]);
    for round in 0..30u16 {
        // The floor: the same query straight to the cluster DNS from the node (no resolver).
        let started = Instant::now();
        if let Ok(socket) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)) {
            let _ = socket.set_read_timeout(Some(Duration::from_secs(2)));
            if socket.connect(CLUSTER_DNS).is_ok() && ask(&socket, round, "allowed.test") == Some(0)
            {
                direct.push(started.elapsed());
            }
        }
        // Wait out the TTL: every round's name lookup opens the address anew.
        std::thread::sleep(Duration::from_millis(1100));
        let sample = in_netns(first, move || {
            let c = greet(CIDR_IP)?;
            let started = Instant::now();
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).ok()?;
            socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
            socket.connect(CLUSTER_DNS).ok()?;
            (ask(&socket, round, "allowed.test")? == 0).then_some(())?;
            let r = started.elapsed();
            greet(ALLOWED_IP)?;
            Some((c, r, started.elapsed()))
        });
        if let Some((c, r, n)) = sample {
            cidr.push(c);
            resolve.push(r);
            by_name.push(n);
        }
    }
    let (c, r, n) = (
        median(&mut cidr),
        median(&mut resolve),
        median(&mut by_name),
    );
    let d = median(&mut direct);
    println!("{:<44} {:>10}", "", "p50 ms");
    println!(
        "{:<44} {d:>10.2}",
        "resolve via the cluster DNS from the node"
    );
    println!("{:<44} {c:>10.2}", "connect + greeting, CIDR rule");
    println!(
        "{:<44} {r:>10.2}",
        "resolve allowed name (resolver + nft set)"
    );
    println!(
        "{:<44} {n:>10.2}",
        "resolve + connect + greeting, host rule"
    );
    println!(
        "added by the name: {:.2} ms over the CIDR rule ({:.2} ms of it the resolver over a direct lookup); {} of 30 rounds completed",
        n - c,
        r - d,
        by_name.len()
    );

    println!(
        "\n== resolver throughput: {sandboxes} sandboxes, {seconds} s, one querying thread each"
    );
    for (label, name) in [
        ("refused name (answered in the pod)", "nope.test"),
        ("allowed name (forwarded, set updated)", "allowed.test"),
    ] {
        let answered = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let threads: Vec<_> = pids
            .iter()
            .map(|&pid| {
                let answered = answered.clone();
                std::thread::spawn(move || {
                    in_netns(pid, move || {
                        let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
                        socket
                            .set_read_timeout(Some(Duration::from_secs(2)))
                            .unwrap();
                        socket.connect(CLUSTER_DNS).unwrap();
                        let deadline = Instant::now() + Duration::from_secs(seconds);
                        let mut id = 0u16;
                        while Instant::now() < deadline {
                            id = id.wrapping_add(1);
                            if ask(&socket, id, name).is_some() {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total = answered.load(Ordering::Relaxed);
        println!(
            "{label:<44} {:>10.0} queries/s ({total} answered in {:.1} s)",
            total as f64 / started.elapsed().as_secs_f64(),
            started.elapsed().as_secs_f64()
        );
    }
    let _ = std::io::stdout().flush();
}
