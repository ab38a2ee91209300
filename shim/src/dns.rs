//! The pod's resolver: the only DNS server a sandbox with egress Deny can reach. The egress
//! table ([`crate::egress`]) redirects DNS to the pod's cluster nameservers here; the
//! resolver listens on 127.0.0.1:53 and [::1]:53 of the pod's network namespace, with sockets
//! the shim (host root) created before the sandbox's first process existed, so the sandbox can
//! neither take its port nor reach the cluster DNS around it (only sockets carrying
//! [`crate::egress::RESOLVER_MARK`] may, and setting a mark needs capabilities over the
//! network namespace the sandbox does not have).
//!
//! A query for a name a `host` rule allows is forwarded to the cluster DNS; the A/AAAA
//! addresses in its answer are added to the pod's allow set for the rule's ports, for the
//! record's TTL within the policy's bounds, before the answer reaches the sandbox (so its
//! first connection finds the address open). Any other name is answered NXDOMAIN without
//! leaving the pod and counted as a `network` event in `status.security` (unless it is a
//! search-list expansion of an allowed name, which every resolver tries first), or, when
//! the policy allows all DNS (`allowDNS`), forwarded without opening anything.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use agentsandbox_contract::{host_matches, Category, EgressPolicy, EgressPort};
use agentsandbox_telemetry::v1::{Action, EscapeAttempt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::egress::{RESOLVER_MARK, RESOLVER_PORT, TABLE};
use crate::sys::nft_sets::{elements, NftSocket, TimedElement};
use crate::telemetry::Telemetry;

const TYPE_A: u16 = 1;
const TYPE_AAAA: u16 = 28;
const RCODE_NXDOMAIN: u8 = 3;
const RCODE_SERVFAIL: u8 = 2;
/// How long the cluster DNS gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message the resolver handles (EDNS sizes are below it).
const MAX_MESSAGE: usize = 65_535;
/// Largest UDP answer taken from the cluster DNS (EDNS buffers are at most this; a longer
/// answer is truncated upstream and the client retries over TCP).
const MAX_UDP_ANSWER: usize = 4096;
/// Queries forwarded at once per pod: a sandbox flooding allowed names while the cluster DNS
/// is slow gets SERVFAIL past this, instead of growing the shim by a task per query.
pub const MAX_IN_FLIGHT: usize = 64;

/// The question of a standard query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub id: u16,
    /// Lowercase, no trailing dot.
    pub name: String,
    pub qtype: u16,
    /// Offset just past the question section.
    pub end: usize,
}

fn u16_at(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]))
}

fn u32_at(msg: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(msg.get(at..at + 4)?.try_into().ok()?))
}

/// Skips a (possibly compressed) name; returns the offset after it.
fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)? as usize;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2),
            l if l < 64 => at += 1 + l,
            _ => return None,
        }
    }
}

/// Parses a query: one question, an uncompressed name (what every stub resolver sends).
pub fn parse_query(msg: &[u8]) -> Option<Question> {
    let id = u16_at(msg, 0)?;
    let flags = u16_at(msg, 2)?;
    // QR=0 (a query), opcode 0 (standard), exactly one question.
    if flags & 0x8000 != 0 || (flags >> 11) & 0xf != 0 || u16_at(msg, 4)? != 1 {
        return None;
    }
    let mut at = 12;
    let mut labels: Vec<String> = vec![];
    loop {
        let len = *msg.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        if len >= 64 {
            return None;
        }
        let label = msg.get(at..at + len)?;
        at += len;
        labels.push(String::from_utf8_lossy(label).to_ascii_lowercase());
    }
    let qtype = u16_at(msg, at)?;
    u16_at(msg, at + 2)?;
    Some(Question {
        id,
        name: labels.join("."),
        qtype,
        end: at + 4,
    })
}

/// The A and AAAA records of a response's answer section, with their TTLs.
pub fn answer_addresses(msg: &[u8]) -> Vec<(IpAddr, u32)> {
    let parse = || -> Option<Vec<(IpAddr, u32)>> {
        let questions = u16_at(msg, 4)?;
        let answers = u16_at(msg, 6)?;
        let mut at = 12;
        for _ in 0..questions {
            at = skip_name(msg, at)? + 4;
        }
        let mut found = vec![];
        for _ in 0..answers {
            at = skip_name(msg, at)?;
            let rtype = u16_at(msg, at)?;
            let ttl = u32_at(msg, at + 4)?;
            let len = u16_at(msg, at + 8)? as usize;
            let data = msg.get(at + 10..at + 10 + len)?;
            at += 10 + len;
            match (rtype, len) {
                (TYPE_A, 4) => found.push((
                    IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?)),
                    ttl,
                )),
                (TYPE_AAAA, 16) => found.push((
                    IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?)),
                    ttl,
                )),
                _ => {}
            }
        }
        Some(found)
    };
    parse().unwrap_or_default()
}

/// A reply to `query` that carries only its question and `rcode`.
pub fn reply_with(query: &[u8], question: &Question, rcode: u8) -> Vec<u8> {
    let mut reply = query[..question.end].to_vec();
    // QR=1, keep opcode and RD, RA=1, rcode.
    let rd = query[2] & 0x01;
    reply[2] = 0x80 | rd;
    reply[3] = 0x80 | (rcode & 0x0f);
    reply[6..12].fill(0);
    reply
}

/// What the resolver does with a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Forward; open the answered addresses for these ports (all ports when `any`).
    Open { ports: Vec<EgressPort>, any: bool },
    /// Forward, open nothing (`allowDNS`).
    Forward,
    /// NXDOMAIN; `report` when it is not a search-list expansion of an allowed name.
    Refuse { report: bool },
}

pub fn decide(policy: &EgressPolicy, search: &[String], name: &str) -> Verdict {
    let mut ports: Vec<EgressPort> = vec![];
    let mut any = false;
    let mut matched = false;
    for rule in policy.allow.iter().filter(|r| !r.host.is_empty()) {
        if host_matches(&rule.host, name) {
            matched = true;
            any |= rule.ports.is_empty();
            for port in &rule.ports {
                if !ports.contains(port) {
                    ports.push(*port);
                }
            }
        }
    }
    if matched {
        return Verdict::Open { ports, any };
    }
    if policy.dns {
        return Verdict::Forward;
    }
    let expansion = search.iter().any(|domain| {
        name.strip_suffix(domain.as_str())
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|prefix| {
                policy
                    .allow
                    .iter()
                    .any(|r| !r.host.is_empty() && host_matches(&r.host, prefix))
            })
    });
    Verdict::Refuse { report: !expansion }
}

/// What a refused query looks like in `status.security`: the query type and the last two
/// labels of the name with its length. The rest of the name is what an exfiltration would
/// carry, so it is never recorded.
pub fn refusal_summary(question: &Question) -> String {
    let qtype = match question.qtype {
        TYPE_A => "A".to_string(),
        TYPE_AAAA => "AAAA".to_string(),
        5 => "CNAME".to_string(),
        15 => "MX".to_string(),
        16 => "TXT".to_string(),
        33 => "SRV".to_string(),
        65 => "HTTPS".to_string(),
        other => format!("type {other}"),
    };
    let labels: Vec<&str> = question.name.split('.').collect();
    let shown = if labels.len() <= 2 {
        question.name.clone()
    } else {
        format!("*.{}", labels[labels.len() - 2..].join("."))
    };
    format!(
        "DNS {qtype} query refused: {shown} ({} characters)",
        question.name.len()
    )
}

/// Runs `f` on a short-lived thread inside the network namespace `netns` (sockets created
/// there stay there).
fn in_netns<T: Send + 'static>(
    netns: &Arc<std::fs::File>,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let netns = netns.clone();
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only, with an fd that lives as long as the Arc.
        if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("netns thread panicked"))?
}

fn socket(addr: &SocketAddr, stream: bool, mark: bool) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType};
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let kind = if stream {
        SockType::Stream
    } else {
        SockType::Datagram
    };
    let fd = socket(family, kind, SockFlag::SOCK_CLOEXEC, None)?;
    if mark {
        setsockopt(&fd, sockopt::Mark, &RESOLVER_MARK)?;
    }
    Ok(fd)
}

/// The resolver of one pod; its tasks stop when it is dropped.
pub struct Resolver {
    tasks: Vec<tokio::task::JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Resolver {
    /// Answers by `policy` from now on (a warm pod taking its claim's policy; the sets keep
    /// nothing of the warm policy, which opened nothing).
    pub fn set_policy(&self, policy: EgressPolicy, container: String) {
        *self.shared.policy.write().expect("resolver policy") = policy;
        *self.shared.container.write().expect("resolver container") = container;
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Shared {
    netns: Arc<std::fs::File>,
    /// nf_tables netlink, in the pod's network namespace: where answers open addresses.
    nft: std::sync::Mutex<NftSocket>,
    upstream: SocketAddr,
    policy: std::sync::RwLock<EgressPolicy>,
    search: Vec<String>,
    telemetry: Option<Arc<Telemetry>>,
    container: std::sync::RwLock<String>,
    refused: std::sync::atomic::AtomicU64,
    in_flight: tokio::sync::Semaphore,
}

impl Resolver {
    /// Binds the resolver's sockets in `netns` (before the sandbox runs) and serves them.
    pub fn start(
        netns: &Path,
        upstream: IpAddr,
        policy: EgressPolicy,
        search: Vec<String>,
        telemetry: Option<Arc<Telemetry>>,
        container: String,
    ) -> anyhow::Result<Resolver> {
        use anyhow::Context;
        let netns_file = Arc::new(
            std::fs::File::open(netns)
                .with_context(|| format!("opening the network namespace {}", netns.display()))?,
        );
        let listen: Vec<SocketAddr> = vec![
            (Ipv4Addr::LOCALHOST, RESOLVER_PORT).into(),
            (Ipv6Addr::LOCALHOST, RESOLVER_PORT).into(),
        ];
        let bound = in_netns(&netns_file, move || {
            let mut bound = vec![];
            for addr in listen {
                let udp = std::net::UdpSocket::bind(addr);
                let tcp = std::net::TcpListener::bind(addr);
                match (udp, tcp) {
                    (Ok(udp), Ok(tcp)) => {
                        udp.set_nonblocking(true)?;
                        tcp.set_nonblocking(true)?;
                        bound.push((udp, tcp));
                    }
                    // No IPv6 in the pod (disabled or no ::1): IPv4 only.
                    (Err(_), _) | (_, Err(_)) if addr.is_ipv6() => {}
                    (Err(err), _) | (_, Err(err)) => return Err(err),
                }
            }
            Ok(bound)
        })
        .context("binding the pod's resolver on port 53")?;
        let nft = in_netns(&netns_file, NftSocket::open)
            .context("opening nf_tables netlink in the pod's network namespace")?;
        let shared = Arc::new(Shared {
            netns: netns_file,
            nft: std::sync::Mutex::new(nft),
            upstream: SocketAddr::new(upstream, 53),
            policy: std::sync::RwLock::new(policy),
            search,
            telemetry,
            container: std::sync::RwLock::new(container),
            refused: Default::default(),
            in_flight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
        });
        let mut tasks = vec![];
        for (udp, tcp) in bound {
            let udp = Arc::new(tokio::net::UdpSocket::from_std(udp)?);
            let tcp = tokio::net::TcpListener::from_std(tcp)?;
            tasks.push(tokio::spawn(serve_udp(shared.clone(), udp)));
            tasks.push(tokio::spawn(serve_tcp(shared.clone(), tcp)));
        }
        Ok(Resolver { tasks, shared })
    }
}

async fn serve_udp(shared: Arc<Shared>, socket: Arc<tokio::net::UdpSocket>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let Ok((len, client)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let query = buf[..len].to_vec();
        let (shared, socket) = (shared.clone(), socket.clone());
        tokio::spawn(async move {
            if let Some(reply) = answer(shared, &query, false).await {
                let _ = socket.send_to(&reply, client).await;
            }
        });
    }
}

async fn serve_tcp(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let serve = async {
                loop {
                    let len = stream.read_u16().await? as usize;
                    let mut query = vec![0u8; len];
                    stream.read_exact(&mut query).await?;
                    let Some(reply) = answer(shared.clone(), &query, true).await else {
                        return Ok::<(), std::io::Error>(());
                    };
                    stream.write_u16(reply.len() as u16).await?;
                    stream.write_all(&reply).await?;
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(30), serve).await;
        });
    }
}

/// The reply to one query (None: not a query; dropped).
async fn answer(shared: Arc<Shared>, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let question = parse_query(query)?;
    let (verdict, ttl_bounds) = {
        let policy = shared.policy.read().expect("resolver policy");
        (
            decide(&policy, &shared.search, &question.name),
            policy.host_ttl,
        )
    };
    match verdict {
        Verdict::Refuse { report } => {
            if report {
                report_refusal(&shared, &question);
            }
            Some(reply_with(query, &question, RCODE_NXDOMAIN))
        }
        verdict => {
            let Ok(_permit) = shared.in_flight.try_acquire() else {
                return Some(reply_with(query, &question, RCODE_SERVFAIL));
            };
            let reply = match forward(&shared, query, tcp).await {
                Ok(reply) => reply,
                Err(err) => {
                    tracing::debug!(error = %err, "cluster DNS did not answer");
                    return Some(reply_with(query, &question, RCODE_SERVFAIL));
                }
            };
            if let Verdict::Open { ports, any } = verdict {
                let ports = if any { vec![] } else { ports };
                let opened: Vec<TimedElement> = answer_addresses(&reply)
                    .into_iter()
                    .flat_map(|(addr, ttl)| elements(addr, &ports, ttl_bounds.clamp(ttl)))
                    .collect();
                if !opened.is_empty() {
                    let nft = shared.clone();
                    let done = tokio::task::spawn_blocking(move || {
                        nft.nft.lock().expect("lock").open_elements(TABLE, &opened)
                    })
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r);
                    if let Err(err) = done {
                        tracing::warn!(error = %err, "opening resolved addresses failed");
                        return Some(reply_with(query, &question, RCODE_SERVFAIL));
                    }
                }
            }
            Some(reply)
        }
    }
}

async fn forward(shared: &Shared, query: &[u8], tcp: bool) -> std::io::Result<Vec<u8>> {
    let upstream = shared.upstream;
    let fd = in_netns(&shared.netns, move || socket(&upstream, tcp, true))?;
    let exchange = async {
        if tcp {
            let std_stream = std::net::TcpStream::from(fd);
            std_stream.set_nonblocking(true)?;
            let socket = tokio::net::TcpSocket::from_std_stream(std_stream);
            let mut stream = socket.connect(upstream).await?;
            stream.write_u16(query.len() as u16).await?;
            stream.write_all(query).await?;
            let len = stream.read_u16().await? as usize;
            let mut reply = vec![0u8; len];
            stream.read_exact(&mut reply).await?;
            Ok(reply)
        } else {
            let std_socket = std::net::UdpSocket::from(fd);
            std_socket.set_nonblocking(true)?;
            let socket = tokio::net::UdpSocket::from_std(std_socket)?;
            socket.connect(upstream).await?;
            socket.send(query).await?;
            let mut reply = vec![0u8; MAX_UDP_ANSWER];
            loop {
                let len = socket.recv(&mut reply).await?;
                // Only the answer to this query (same id) counts.
                if len >= 2 && reply[..2] == query[..2] {
                    reply.truncate(len);
                    return Ok(reply);
                }
            }
        }
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

fn report_refusal(shared: &Shared, question: &Question) {
    let summary = refusal_summary(question);
    let count = shared
        .refused
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    if count <= 3 || (count as f64).log10().fract() == 0.0 {
        tracing::warn!(%summary, refused = count, "DNS query for a name the policy does not allow");
    }
    if let Some(telemetry) = &shared.telemetry {
        telemetry.record(EscapeAttempt {
            seq: 0,
            time_unix_nanos: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or_default(),
            container: shared.container.read().expect("resolver container").clone(),
            pid: 0,
            syscall: "dns".to_string(),
            syscall_nr: -1,
            category: Category::Network.as_str().to_string(),
            summary,
            action: Action::Denied.into(),
        });
    }
}
