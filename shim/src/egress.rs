//! The sandbox's network policy as an nftables table inside the pod's network namespace, so
//! that it holds on CNIs that ignore NetworkPolicy. The operator writes the policy
//! ([`agentsandbox_contract::EgressPolicy`]) into a pod annotation; the table is installed
//! (`nft -f`, one `inet` table for IPv4 and IPv6 alike) before the pod's first container
//! starts. The sandbox cannot change it: its root has no capabilities over the network
//! namespace, which the host owns.
//!
//! - Inbound: only the exposed ports, replies to the sandbox's own allowed flows, and the
//!   neighbour discovery IPv6 needs. Everything else is refused (TCP reset) or dropped, so
//!   no conntrack entry is ever created for it: a peer that connects in or sends a datagram
//!   opens no `ESTABLISHED` way out.
//! - Outbound (egress Deny): loopback, continuations of allowed flows, ICMP errors that
//!   belong to them (path MTU discovery), the CIDR rules, and the addresses the runtime's
//!   resolver ([`crate::dns`]) added for `host` rules, each for its bounded TTL. DNS to the
//!   pod's cluster nameservers is redirected to that resolver; DNS to anything else is
//!   refused, and only the resolver's own (marked) sockets reach the cluster DNS.

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use agentsandbox_contract::{EgressMode, EgressPolicy, EgressPort, Protocol};

/// The table the policy lives in.
pub const TABLE: &str = "agentsandbox";
/// The table a quarantine adds (drop beats any accept in another table).
const QUARANTINE_TABLE: &str = "agentsandbox_quarantine";
/// Packet mark of the resolver's upstream sockets (SO_MARK needs CAP_NET_ADMIN over the
/// network namespace, which only the host has).
pub const RESOLVER_MARK: u32 = 0x4153_0035;
/// The port the resolver listens on, on 127.0.0.1 and ::1 of the pod's network namespace.
pub const RESOLVER_PORT: u16 = 53;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EgressError {
    #[error("egress rule has an invalid CIDR {0:?}")]
    Cidr(String),
    #[error("egress rule has an invalid host {0:?}")]
    Host(String),
    #[error("egress rule needs a cidr or a host")]
    Empty,
}

/// An nftables script (`nft -f` input) for the pod's network namespace.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EgressRules {
    pub nft: String,
    /// Whether the table redirects DNS to the runtime's resolver (which must then run).
    pub resolver: bool,
}

/// What a quarantined pod's network namespace gets: nothing in or out but loopback
/// (established connections included: no conntrack exception).
pub fn quarantine_rules() -> EgressRules {
    EgressRules {
        nft: format!(
            "table inet {QUARANTINE_TABLE} {{\n\
             \tchain input {{ type filter hook input priority -10; policy drop; iif lo accept; }}\n\
             \tchain forward {{ type filter hook forward priority -10; policy drop; }}\n\
             \tchain output {{ type filter hook output priority -10; policy drop; oif lo accept; }}\n\
             }}\n"
        ),
        resolver: false,
    }
}

/// Runs `nft -f -` with `script` in the current network namespace, or in `netns` when given
/// (entered by the nft child only).
pub fn run_nft(script: &str, netns: Option<&Path>) -> anyhow::Result<()> {
    use anyhow::Context;
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let netns = netns
        .map(|path| {
            std::fs::File::open(path)
                .with_context(|| format!("opening the network namespace {}", path.display()))
        })
        .transpose()?;
    let mut command = Command::new("nft");
    command
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(netns) = &netns {
        let fd = netns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the child is single-threaded after fork.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let mut child = command
        .spawn()
        .context("running nft (is nftables installed on the node?)")?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(script.as_bytes())?;
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("piped"), &mut stderr)?;
    match child.wait() {
        Ok(status) if status.success() => Ok(()),
        Ok(_) => anyhow::bail!("nft refused the rules: {}", stderr.trim()),
        // In the shim, a subreaper whose reaper collects every child, the status may be gone
        // (ECHILD): `nft -f` reports every error on stderr, so silence is success.
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) && stderr.trim().is_empty() => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {
            anyhow::bail!("nft refused the rules: {}", stderr.trim())
        }
        Err(e) => Err(e.into()),
    }
}

/// Installs `rules` in the current network namespace, or in `netns` when given.
pub fn apply_rules(rules: &EgressRules, netns: Option<&Path>) -> anyhow::Result<()> {
    run_nft(&rules.nft, netns)
}

fn parse_cidr(cidr: &str) -> Result<(IpAddr, u8), EgressError> {
    let bad = || EgressError::Cidr(cidr.to_string());
    let (addr, len) = cidr.split_once('/').unwrap_or((cidr, ""));
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = if len.is_empty() {
        max
    } else {
        len.parse::<u8>().map_err(|_| bad())?
    };
    if len > max {
        return Err(bad());
    }
    Ok((addr, len))
}

/// A host pattern as the API server admits it: lowercase labels, optionally `*.` first.
pub fn valid_host(host: &str) -> bool {
    let name = host.strip_prefix("*.").unwrap_or(host);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn protocol(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
    }
}

/// Nameservers of a resolv.conf (the cluster DNS the pod was given).
pub fn nameservers(resolv_conf: &str) -> Vec<IpAddr> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next()?.parse().ok())
                .flatten()
        })
        .collect()
}

/// Search domains of a resolv.conf, without trailing dots.
pub fn search_domains(resolv_conf: &str) -> Vec<String> {
    resolv_conf
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("search")).then(|| {
                words
                    .map(|w| w.trim_end_matches('.').to_ascii_lowercase())
                    .collect::<Vec<_>>()
            })
        })
        .next_back()
        .unwrap_or_default()
}

fn family(addr: &IpAddr) -> &'static str {
    if addr.is_ipv4() {
        "ip"
    } else {
        "ip6"
    }
}

fn port_matches(ports: &[EgressPort], protocol_filter: Protocol) -> Option<String> {
    let ports: Vec<String> = ports
        .iter()
        .filter(|p| p.protocol == protocol_filter)
        .map(|p| p.port.to_string())
        .collect();
    (!ports.is_empty()).then(|| format!("{{ {} }}", ports.join(", ")))
}

/// The table for the pod's policy. Returns None only for a pod whose policy leaves both
/// directions open, which no AgentSandbox does (inbound is always limited).
pub fn render(policy: &EgressPolicy, dns_servers: &[IpAddr]) -> Result<EgressRules, EgressError> {
    let deny = policy.mode == EgressMode::Deny;
    let resolver = deny && !dns_servers.is_empty();
    let mut out = vec![
        // Declare, then delete, then define: a re-install replaces the table atomically.
        format!("table inet {TABLE} {{}}"),
        format!("delete table inet {TABLE}"),
        format!("table inet {TABLE} {{"),
    ];
    for (name, key) in [
        ("host4", "ipv4_addr . inet_proto . inet_service"),
        ("host6", "ipv6_addr . inet_proto . inet_service"),
        ("host4_any", "ipv4_addr"),
        ("host6_any", "ipv6_addr"),
    ] {
        out.push(format!("\tset {name} {{ type {key}; flags timeout; }}"));
    }

    // Inbound.
    out.push("\tchain input {".into());
    out.push("\t\ttype filter hook input priority filter; policy drop;".into());
    out.push("\t\tiif lo accept".into());
    out.push("\t\tct state established,related accept".into());
    out.push(
        "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-advert } accept"
            .into(),
    );
    for proto in [Protocol::Tcp, Protocol::Udp] {
        if let Some(set) = port_matches(&policy.ingress, proto) {
            out.push(format!("\t\t{} dport {set} accept", protocol(proto)));
        }
    }
    out.push("\t\tmeta l4proto tcp reject with tcp reset".into());
    out.push("\t}".into());

    // Outbound.
    out.push("\tchain output {".into());
    out.push(format!(
        "\t\ttype filter hook output priority filter; policy {};",
        if deny { "drop" } else { "accept" }
    ));
    if deny {
        out.push("\t\toif lo accept".into());
        out.push("\t\tct state established,related accept".into());
        out.push(
            "\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept"
                .into(),
        );
        for server in dns_servers {
            out.push(format!(
                "\t\tmeta mark {RESOLVER_MARK:#x} {} daddr {server} meta l4proto {{ tcp, udp }} th dport 53 accept",
                family(server)
            ));
        }
        if resolver {
            // Redirected queries: the chain still sees the original interface (the hook's
            // `oif` is fixed before the redirect reroutes the packet to loopback).
            out.push(format!(
                "\t\tip daddr 127.0.0.1 meta l4proto {{ tcp, udp }} th dport {RESOLVER_PORT} accept"
            ));
            out.push(format!(
                "\t\tip6 daddr ::1 meta l4proto {{ tcp, udp }} th dport {RESOLVER_PORT} accept"
            ));
        }
        // No other way to a DNS server, whatever the CIDR rules say.
        out.push(
            "\t\tmeta l4proto { tcp, udp } th dport 53 reject with icmpx admin-prohibited".into(),
        );
        out.push("\t\tip daddr . meta l4proto . th dport @host4 accept".into());
        out.push("\t\tip6 daddr . meta l4proto . th dport @host6 accept".into());
        out.push("\t\tip daddr @host4_any accept".into());
        out.push("\t\tip6 daddr @host6_any accept".into());
        for rule in &policy.allow {
            if !rule.host.is_empty() {
                if !valid_host(&rule.host) {
                    return Err(EgressError::Host(rule.host.clone()));
                }
                continue;
            }
            if rule.cidr.is_empty() {
                return Err(EgressError::Empty);
            }
            let (addr, len) = parse_cidr(&rule.cidr)?;
            let dest = format!("{} daddr {addr}/{len}", family(&addr));
            if rule.ports.is_empty() {
                out.push(format!("\t\t{dest} accept"));
            }
            for proto in [Protocol::Tcp, Protocol::Udp] {
                if let Some(set) = port_matches(&rule.ports, proto) {
                    out.push(format!("\t\t{dest} {} dport {set} accept", protocol(proto)));
                }
            }
        }
        out.push("\t\treject with icmpx port-unreachable".into());
    }
    out.push("\t}".into());

    if resolver {
        out.push("\tchain resolver {".into());
        out.push("\t\ttype nat hook output priority -100; policy accept;".into());
        for server in dns_servers {
            out.push(format!(
                "\t\tmeta mark != {RESOLVER_MARK:#x} {} daddr {server} meta l4proto {{ tcp, udp }} th dport 53 redirect to :{RESOLVER_PORT}",
                family(server)
            ));
        }
        out.push("\t}".into());
    }
    out.push("}".into());
    Ok(EgressRules {
        nft: out.join("\n") + "\n",
        resolver,
    })
}
