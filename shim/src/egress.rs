//! The sandbox's egress policy as firewall rules inside the pod's network namespace, so that
//! it holds on CNIs that ignore NetworkPolicy. The operator writes the policy
//! ([`agentsandbox_contract::EgressPolicy`]) into a pod annotation; the rules are installed (iptables-restore, one table
//! per address family) before the pod's first container starts. The sandbox cannot change
//! them: its root has no capabilities over the network namespace, which the host owns.

use std::net::IpAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use agentsandbox_contract::{EgressMode, EgressPolicy, Protocol};

const CHAIN: &str = "AGENTSANDBOX-EGRESS";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EgressError {
    #[error("egress rule has an invalid CIDR {0:?}")]
    Cidr(String),
}

/// iptables-restore input for IPv4 and IPv6.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EgressRules {
    pub ipv4: String,
    pub ipv6: String,
}

/// What a quarantined pod's network namespace gets: nothing in or out but loopback
/// (established connections included: no conntrack exception).
pub fn quarantine_rules() -> EgressRules {
    let table = "*filter\n:INPUT DROP [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT DROP [0:0]\n\
                 -A INPUT -i lo -j ACCEPT\n-A OUTPUT -o lo -j ACCEPT\nCOMMIT\n";
    EgressRules {
        ipv4: table.to_string(),
        ipv6: table.to_string(),
    }
}

/// Installs `rules` (replacing the filter table) in the current network namespace, or in
/// `netns` when given (entered by the iptables child only).
pub fn apply_rules(rules: &EgressRules, netns: Option<&Path>) -> anyhow::Result<()> {
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
    for (binary, input) in [
        ("iptables-restore", &rules.ipv4),
        ("ip6tables-restore", &rules.ipv6),
    ] {
        let mut command = Command::new(binary);
        command
            .arg("-w")
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
            .with_context(|| format!("running {binary} (is iptables installed on the node?)"))?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(input.as_bytes())?;
        let output = child.wait_with_output()?;
        if !output.status.success() {
            anyhow::bail!(
                "{binary} refused the rules: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
    }
    Ok(())
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

/// Rules for the pod's egress policy, or None when egress is unrestricted.
pub fn render(
    policy: &EgressPolicy,
    dns_servers: &[IpAddr],
) -> Result<Option<EgressRules>, EgressError> {
    if policy.mode == EgressMode::Allow {
        return Ok(None);
    }
    let mut v4 = vec![];
    let mut v6 = vec![];
    let mut push = |is_v4: bool, rule: String| {
        if is_v4 { &mut v4 } else { &mut v6 }.push(format!("-A {CHAIN} {rule} -j ACCEPT"));
    };
    if policy.dns {
        for server in dns_servers {
            let len = if server.is_ipv4() { 32 } else { 128 };
            for proto in ["udp", "tcp"] {
                push(
                    server.is_ipv4(),
                    format!("-d {server}/{len} -p {proto} --dport 53"),
                );
            }
        }
    }
    for rule in &policy.allow {
        let (addr, len) = parse_cidr(&rule.cidr)?;
        if rule.ports.is_empty() {
            push(addr.is_ipv4(), format!("-d {addr}/{len}"));
        }
        for port in &rule.ports {
            let proto = protocol(port.protocol);
            push(
                addr.is_ipv4(),
                format!("-d {addr}/{len} -p {proto} --dport {}", port.port),
            );
        }
    }
    let table = |allowed: &[String], reject: &str, extra: &[&str]| {
        let mut lines = vec![
            "*filter".to_string(),
            ":INPUT ACCEPT [0:0]".to_string(),
            ":FORWARD ACCEPT [0:0]".to_string(),
            ":OUTPUT ACCEPT [0:0]".to_string(),
            format!(":{CHAIN} - [0:0]"),
            format!("-A OUTPUT -j {CHAIN}"),
            format!("-A {CHAIN} -o lo -j ACCEPT"),
            // Replies to connections the sandbox accepted (exposed ports, probes).
            format!("-A {CHAIN} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT"),
        ];
        lines.extend(extra.iter().map(|l| format!("-A {CHAIN} {l}")));
        lines.extend(allowed.iter().cloned());
        lines.push(format!("-A {CHAIN} -j REJECT --reject-with {reject}"));
        lines.push("COMMIT".to_string());
        lines.join("\n") + "\n"
    };
    Ok(Some(EgressRules {
        ipv4: table(&v4, "icmp-port-unreachable", &[]),
        // Neighbour discovery keeps IPv6 working on the pod's own link.
        ipv6: table(
            &v6,
            "icmp6-port-unreachable",
            &[
                "-p ipv6-icmp --icmpv6-type neighbour-solicitation -j ACCEPT",
                "-p ipv6-icmp --icmpv6-type neighbour-advertisement -j ACCEPT",
                "-p ipv6-icmp --icmpv6-type router-solicitation -j ACCEPT",
            ],
        ),
    }))
}
