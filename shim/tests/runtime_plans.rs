//! Pure parts of the runtime: id range allocation, the egress firewall rules, and how bind
//! mounts are staged where the sandbox's unprivileged root can reach them.

use std::collections::BTreeSet;
use std::path::Path;

use agentsandbox_contract::EgressPolicy;
use agentsandbox_shim::egress::{nameservers, EgressError, EgressRules};
use agentsandbox_shim::idmap::{
    lowest_free_slot, range_for_slot, SlotLease, FIRST_HOST_ID, KUBELET_RANGE_START, SLOTS,
};
use agentsandbox_shim::sys::mounts::stage_binds;
use serde_json::json;

/// The egress rules for a policy as the operator writes it (JSON in the pod annotation).
fn render(policy_json: &str, dns: &[std::net::IpAddr]) -> Result<EgressRules, EgressError> {
    let policy: EgressPolicy = serde_json::from_str(policy_json).expect("a valid policy");
    agentsandbox_shim::egress::render(&policy, dns)
}

#[test]
fn id_ranges_never_overlap_and_start_above_the_nodes_own_users() {
    let first = range_for_slot(0);
    let second = range_for_slot(1);
    assert_eq!(first.host_start, FIRST_HOST_ID);
    assert_eq!(first.host_start + first.size, second.host_start);
    assert_eq!(lowest_free_slot(&BTreeSet::from([0, 1, 3])), Some(2));
    assert_eq!(lowest_free_slot(&BTreeSet::new()), Some(0));
    // The last range ends below the half left to the kubelet's own user namespaces.
    let last = range_for_slot(SLOTS - 1);
    assert!(u64::from(last.host_start) + u64::from(last.size) <= u64::from(KUBELET_RANGE_START));
    assert_eq!(lowest_free_slot(&(0..SLOTS).collect()), None);
}

#[test]
fn slots_are_exclusive_between_live_holders_and_reclaimed_from_dead_ones() {
    let dir = std::env::temp_dir().join(format!("asb-idmap-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let me = std::process::id();
    let a = SlotLease::acquire(&dir, me).unwrap();
    let b = SlotLease::acquire(&dir, me).unwrap();
    assert_ne!(a.slot, b.slot);
    a.release();
    assert_eq!(SlotLease::acquire(&dir, me).unwrap().slot, a.slot);
    // A slot whose holder is gone (pid that cannot exist) is taken over.
    std::fs::write(dir.join("slot-7"), "999999999").unwrap();
    let leases: Vec<u32> = (0..6)
        .map(|_| SlotLease::acquire(&dir, me).unwrap().slot)
        .collect();
    assert!(leases.contains(&7), "{leases:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Whether nft accepts the script (`nft -c`: parsed and checked by the kernel, not applied).
fn nft_accepts(script: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-c", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("nft is installed (make deps)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    out.status
        .success()
        .then_some(())
        .ok_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn deny_mode_allows_only_listed_destinations_loopback_replies_and_the_resolver() {
    let policy = r#"{"mode":"Deny","allow":[{"cidr":"10.0.0.0/8","ports":[{"port":443,"protocol":"TCP"}]},{"cidr":"fd00::1","ports":[]},{"host":"*.example.com","ports":[{"port":443}]}],"dns":true,"ingress":[{"port":8080,"protocol":"TCP"},{"port":9000,"protocol":"UDP"}]}"#;
    let rules = render(
        policy,
        &nameservers("search x\nnameserver 10.96.0.10\nnameserver fd00::10\n"),
    )
    .unwrap();
    assert!(rules.resolver);
    for expected in [
        "chain output {\n\t\ttype filter hook output priority filter; policy drop;",
        "oif lo accept",
        "ct state established,related accept",
        "meta mark 0x41530035 ip daddr 10.96.0.10 meta l4proto { tcp, udp } th dport 53 accept",
        "meta mark 0x41530035 ip6 daddr fd00::10 meta l4proto { tcp, udp } th dport 53 accept",
        "ip daddr 127.0.0.1 meta l4proto { tcp, udp } th dport 53 accept",
        "meta l4proto { tcp, udp } th dport 53 reject",
        "ip daddr . meta l4proto . th dport @host4 accept",
        "ip daddr 10.0.0.0/8 tcp dport { 443 } accept",
        "ip6 daddr fd00::1/128 accept",
        "reject with icmpx port-unreachable",
        "meta mark != 0x41530035 ip daddr 10.96.0.10 meta l4proto { tcp, udp } th dport 53 redirect to :53",
        // Inbound: the exposed ports only.
        "chain input {\n\t\ttype filter hook input priority filter; policy drop;",
        "tcp dport { 8080 } accept",
        "udp dport { 9000 } accept",
        "meta l4proto tcp reject with tcp reset",
    ] {
        assert!(
            rules.nft.contains(expected),
            "missing {expected:?} in\n{}",
            rules.nft
        );
    }
    // DNS to any other server is refused before any CIDR rule could allow it.
    let dns_reject = rules.nft.find("th dport 53 reject").unwrap();
    assert!(dns_reject < rules.nft.find("ip daddr 10.0.0.0/8").unwrap());
    nft_accepts(&rules.nft).unwrap();
}

#[test]
fn allow_mode_still_limits_inbound_and_runs_no_resolver() {
    let rules = render(
        r#"{"mode":"Allow","allow":[],"dns":false}"#,
        &nameservers("nameserver 10.96.0.10"),
    )
    .unwrap();
    assert!(!rules.resolver);
    assert!(rules
        .nft
        .contains("type filter hook output priority filter; policy accept;"));
    assert!(rules
        .nft
        .contains("type filter hook input priority filter; policy drop;"));
    assert!(!rules.nft.contains("redirect"));
    nft_accepts(&rules.nft).unwrap();
    nft_accepts(&agentsandbox_shim::egress::quarantine_rules().nft).unwrap();
}

#[test]
fn resolved_addresses_are_opened_over_netlink_with_a_fresh_timer() {
    use agentsandbox_contract::{EgressPort, Protocol};
    use agentsandbox_shim::sys::nft_sets::{elements, NftSocket};
    let tcp8080 = [EgressPort {
        port: 8080,
        protocol: Protocol::Tcp,
    }];
    let v4 = elements("10.96.200.10".parse().unwrap(), &tcp8080, 30);
    assert_eq!(v4[0].set, "host4");
    assert_eq!(v4[0].key, [10, 96, 200, 10, 6, 0, 0, 0, 0x1f, 0x90, 0, 0]);
    assert_eq!(v4[0].timeout_ms, 30_000);
    let v6 = elements("fd00::7".parse().unwrap(), &[], 5);
    assert_eq!((v6[0].set, v6[0].key.len()), ("host6_any", 16));

    // Applied in a real network namespace, to the table the shim renders.
    let netns = format!("asb-nftsets-{}", std::process::id());
    let ip = |args: &[&str]| {
        std::process::Command::new("ip")
            .args(args)
            .status()
            .unwrap()
    };
    assert!(ip(&["netns", "add", &netns]).success());
    let path = std::path::PathBuf::from(format!("/var/run/netns/{netns}"));
    let table = render(r#"{"mode":"Deny"}"#, &nameservers("nameserver 10.96.0.10")).unwrap();
    let result = std::panic::catch_unwind(|| {
        agentsandbox_shim::egress::apply_rules(&table, Some(&path)).unwrap();
        let path2 = path.clone();
        let mut socket = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path2).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            NftSocket::open().unwrap()
        })
        .join()
        .unwrap();
        let list = |set: &str| {
            let out = std::process::Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &netns,
                    "nft",
                    "list",
                    "set",
                    "inet",
                    "agentsandbox",
                    set,
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        socket.open_elements("agentsandbox", &v4).unwrap();
        socket.open_elements("agentsandbox", &v6).unwrap();
        assert!(
            list("host4").contains("10.96.200.10 . tcp . 8080 timeout 30s"),
            "{}",
            list("host4")
        );
        assert!(
            list("host6_any").contains("fd00::7 timeout 5s"),
            "{}",
            list("host6_any")
        );
        // Again with another timeout: the element is replaced, not kept.
        let longer = elements("10.96.200.10".parse().unwrap(), &tcp8080, 90);
        socket.open_elements("agentsandbox", &longer).unwrap();
        assert!(list("host4").contains("timeout 1m30s"), "{}", list("host4"));
        // A table that is not there: the kernel's error, and the socket still works after it.
        let err = socket.open_elements("absent", &v4).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT), "{err}");
        socket.open_elements("agentsandbox", &v6).unwrap();
    });
    assert!(ip(&["netns", "del", &netns]).success());
    result.unwrap();
}

#[test]
fn bad_egress_policies_are_errors_not_open_doors() {
    assert_eq!(
        render(r#"{"mode":"Deny","allow":[{"cidr":"10.0.0.0/33"}]}"#, &[]),
        Err(EgressError::Cidr("10.0.0.0/33".into()))
    );
    assert_eq!(
        render(r#"{"mode":"Deny","allow":[{"host":"Exa mple.com"}]}"#, &[]),
        Err(EgressError::Host("Exa mple.com".into()))
    );
    assert_eq!(
        render(r#"{"mode":"Deny","allow":[{"ports":[]}]}"#, &[]),
        Err(EgressError::Empty)
    );
    // Unparsable policies never reach the renderer: the shim refuses the pod when it reads
    // its annotations (agentsandbox-contract's tests).
    assert!(serde_json::from_str::<EgressPolicy>(r#"{"mode":"Sometimes"}"#).is_err());
}

#[test]
fn bind_mounts_are_staged_below_the_container_directory_and_other_mounts_kept() {
    let mut spec = json!({"mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/kubelet/pods/u/etc-hosts", "options": ["rbind", "rw"]},
        {"destination": "/data", "type": "none", "source": "/var/lib/kubelet/pods/u/volumes/v", "options": ["bind"]},
    ]});
    let staged = stage_binds(
        &mut spec,
        Path::new("/run/agentsandbox/k8s.io/containers/c/mounts"),
    );
    assert_eq!(staged.len(), 2);
    assert_eq!(staged[0].source, "/var/lib/kubelet/pods/u/etc-hosts");
    assert!(staged[0].recursive);
    assert!(!staged[1].recursive);
    assert_eq!(spec["mounts"][0]["source"], "proc");
    assert_eq!(
        spec["mounts"][1]["source"],
        "/run/agentsandbox/k8s.io/containers/c/mounts/1"
    );
    assert_eq!(
        spec["mounts"][2]["source"],
        "/run/agentsandbox/k8s.io/containers/c/mounts/2"
    );
}

#[test]
fn bind_sources_are_opened_without_following_symlinks() {
    use agentsandbox_shim::sys::mounts::open_bind_source;
    let dir = std::env::temp_dir().join(format!("asb-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("pods/abc/volumes/v")).unwrap();
    std::fs::create_dir_all(dir.join("host-secret")).unwrap();
    // A volume directory swapped for a symlink to somewhere else (CVE-2021-25741).
    std::os::unix::fs::symlink(dir.join("host-secret"), dir.join("pods/abc/volumes/w")).unwrap();
    let real = dir.join("pods/abc/volumes/v");
    assert!(open_bind_source(real.to_str().unwrap()).is_ok());
    for swapped in [
        dir.join("pods/abc/volumes/w"),
        dir.join("pods/abc/volumes/w/."),
    ] {
        let error = open_bind_source(swapped.to_str().unwrap()).unwrap_err();
        assert!(
            error.to_string().contains("symbolic link"),
            "{}: {error}",
            swapped.display()
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
