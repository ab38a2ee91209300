//! Sandbox activity as the node sees it, for `lifetime.idleTimeout`: CPU time of the pod's
//! cgroup and the transport traffic of its network namespace (TCP segments and UDP datagrams,
//! in either direction, IPv4 and IPv6). A sandbox is idle only when both stand still over a
//! whole sampling interval, so an agent that computes without talking, or traffic in either
//! direction, both count as activity. Link-level housekeeping does not: interface byte counters
//! also move for ARP and IPv6 neighbour discovery, broadcast from neighbours on the pod bridge,
//! and the kernel's own router solicitations (sent with exponential backoff for the life of the
//! interface), none of which is the sandbox doing anything.
//! Parsing and the idle decision are pure; the node agent reads the files.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// CPU below this per sampling interval is noise (kernel accounting of a sleeping process),
/// not work.
pub const CPU_NOISE_FLOOR: Duration = Duration::from_millis(5);

/// One reading of a pod's counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Cumulative CPU time of the pod's cgroup, nanoseconds.
    pub cpu_ns: u64,
    /// Cumulative TCP segments and UDP datagrams received and sent in the pod's network
    /// namespace (loopback included: it is the sandbox's own processes talking).
    pub net_packets: u64,
}

/// Did the pod do anything between two samples?
pub fn was_active(previous: Sample, current: Sample) -> bool {
    let cpu = current.cpu_ns.saturating_sub(previous.cpu_ns);
    // Counters that went backwards mean a new pod or a reset: treat as activity.
    current.cpu_ns < previous.cpu_ns
        || current.net_packets < previous.net_packets
        || cpu > CPU_NOISE_FLOOR.as_nanos() as u64
        || current.net_packets > previous.net_packets
}

/// cgroup v1 `cpuacct.usage`: one number, nanoseconds.
pub fn parse_cpuacct_usage(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// cgroup v2 `cpu.stat`: the `usage_usec` line, converted to nanoseconds.
pub fn parse_cpu_stat(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|usec| usec * 1000)
}

/// `/proc/<pid>/net/snmp`: TCP segments in and out plus UDP datagrams in and out (IPv4; TCP
/// counters cover IPv6 too).
pub fn parse_snmp(text: &str) -> Option<u64> {
    let mut total = 0;
    let mut found = 0;
    for (protocol, fields) in [
        ("Tcp:", ["InSegs", "OutSegs"]),
        ("Udp:", ["InDatagrams", "OutDatagrams"]),
    ] {
        let mut lines = text.lines().filter(|l| l.starts_with(protocol));
        let header: Vec<&str> = lines.next()?.split_whitespace().collect();
        let values: Vec<&str> = lines.next()?.split_whitespace().collect();
        for field in fields {
            let index = header.iter().position(|h| *h == field)?;
            total += values.get(index)?.parse::<u64>().ok()?;
            found += 1;
        }
    }
    (found == 4).then_some(total)
}

/// `/proc/<pid>/net/snmp6`: UDP datagrams in and out over IPv6 (0 when IPv6 is off).
pub fn parse_snmp6(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once(char::is_whitespace)?;
            matches!(name, "Udp6InDatagrams" | "Udp6OutDatagrams")
                .then(|| value.trim().parse::<u64>().ok())?
        })
        .sum()
}

/// Where a pod's cgroup may be, for the kubelet's cgroupfs and systemd drivers, on cgroup v1
/// (`cpuacct` controller) and v2. Returns the directory and whether it is v2.
pub fn pod_cgroup_candidates(cgroup_root: &Path, pod_uid: &str) -> Vec<(PathBuf, bool)> {
    let cgroupfs = format!("pod{pod_uid}");
    let systemd_uid = pod_uid.replace('-', "_");
    let mut candidates = Vec::new();
    for (base, v2) in [
        (cgroup_root.join("cpuacct"), false),
        (cgroup_root.join("cpu,cpuacct"), false),
        (cgroup_root.to_path_buf(), true),
    ] {
        for qos in ["", "burstable", "besteffort"] {
            let cgroupfs_dir = if qos.is_empty() {
                base.join("kubepods").join(&cgroupfs)
            } else {
                base.join("kubepods").join(qos).join(&cgroupfs)
            };
            candidates.push((cgroupfs_dir, v2));
            let slice = if qos.is_empty() {
                base.join("kubepods.slice")
                    .join(format!("kubepods-pod{systemd_uid}.slice"))
            } else {
                base.join("kubepods.slice")
                    .join(format!("kubepods-{qos}.slice"))
                    .join(format!("kubepods-{qos}-pod{systemd_uid}.slice"))
            };
            candidates.push((slice, v2));
        }
    }
    candidates
}

#[cfg(test)]
mod tests {
    use super::*;

    const SNMP: &str = "Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 12
Icmp: InMsgs InErrors
Icmp: 3 0
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails EstabResets CurrEstab InSegs OutSegs RetransSegs InErrs OutRsts InCsumErrors
Tcp: 1 200 120000 -1 2 1 0 0 1 40 38 0 0 0 0
Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors InCsumErrors IgnoredMulti MemErrors
Udp: 5 2 0 6 0 0 0 0 0
";

    #[test]
    fn snmp_counts_tcp_segments_and_udp_datagrams_both_ways() {
        assert_eq!(parse_snmp(SNMP), Some(40 + 38 + 5 + 6));
        assert_eq!(
            parse_snmp("Tcp: InSegs\nTcp: 1\n"),
            None,
            "missing counters are an error, not zero"
        );
    }

    #[test]
    fn snmp6_counts_udp_datagrams_and_tolerates_ipv6_off() {
        let text = "Ip6InReceives                   \t9\nIcmp6OutRouterSolicits          \t3\nUdp6InDatagrams                 \t4\nUdp6OutDatagrams                \t2\n";
        assert_eq!(
            parse_snmp6(text),
            6,
            "router solicitations are not the sandbox's traffic"
        );
        assert_eq!(parse_snmp6(""), 0);
    }

    #[test]
    fn cpu_usage_parses_in_both_cgroup_versions() {
        assert_eq!(parse_cpuacct_usage("123456789\n"), Some(123_456_789));
        assert_eq!(
            parse_cpu_stat("usage_usec 2500\nuser_usec 2000\nsystem_usec 500\n"),
            Some(2_500_000)
        );
        assert_eq!(parse_cpu_stat("user_usec 1\n"), None);
    }

    #[test]
    fn idle_means_no_network_bytes_and_cpu_within_the_noise_floor() {
        let base = Sample {
            cpu_ns: 1_000_000_000,
            net_packets: 5000,
        };
        assert!(!was_active(base, base));
        assert!(!was_active(
            base,
            Sample {
                cpu_ns: base.cpu_ns + 1_000_000,
                ..base
            }
        ));
        assert!(
            was_active(
                base,
                Sample {
                    cpu_ns: base.cpu_ns + 50_000_000,
                    ..base
                }
            ),
            "computing is activity"
        );
        assert!(
            was_active(
                base,
                Sample {
                    net_packets: 5001,
                    ..base
                }
            ),
            "one byte of traffic is activity"
        );
        assert!(
            was_active(
                base,
                Sample {
                    cpu_ns: 0,
                    net_packets: 0
                }
            ),
            "a reset counter is a new pod"
        );
    }

    #[test]
    fn cgroup_candidates_cover_cgroupfs_and_systemd_layouts() {
        let root = Path::new("/sys/fs/cgroup");
        let candidates = pod_cgroup_candidates(root, "1234-ab");
        let paths: Vec<String> = candidates
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        assert!(paths.contains(&"/sys/fs/cgroup/cpuacct/kubepods/burstable/pod1234-ab".to_string()));
        assert!(paths.contains(&"/sys/fs/cgroup/cpuacct/kubepods/pod1234-ab".to_string()));
        assert!(paths.contains(&"/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1234_ab.slice".to_string()));
        assert!(candidates
            .iter()
            .any(|(p, v2)| *v2 && p.ends_with("kubepods/burstable/pod1234-ab")));
    }
}
