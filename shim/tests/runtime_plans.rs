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
fn render(policy_json: &str, dns: &[std::net::IpAddr]) -> Result<Option<EgressRules>, EgressError> {
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

#[test]
fn deny_mode_allows_only_listed_destinations_loopback_replies_and_cluster_dns() {
    let policy = r#"{"mode":"Deny","allow":[{"cidr":"10.0.0.0/8","ports":[{"port":443,"protocol":"TCP"}]},{"cidr":"fd00::1","ports":[]}],"dns":true}"#;
    let rules = render(policy, &nameservers("search x\nnameserver 10.96.0.10\n"))
        .unwrap()
        .unwrap();
    for expected in [
        "-A AGENTSANDBOX-EGRESS -o lo -j ACCEPT",
        "--ctstate ESTABLISHED,RELATED -j ACCEPT",
        "-A AGENTSANDBOX-EGRESS -d 10.96.0.10/32 -p udp --dport 53 -j ACCEPT",
        "-A AGENTSANDBOX-EGRESS -d 10.0.0.0/8 -p tcp --dport 443 -j ACCEPT",
        "-A AGENTSANDBOX-EGRESS -j REJECT --reject-with icmp-port-unreachable",
    ] {
        assert!(
            rules.ipv4.contains(expected),
            "missing {expected:?} in\n{}",
            rules.ipv4
        );
    }
    assert!(rules
        .ipv6
        .contains("-A AGENTSANDBOX-EGRESS -d fd00::1/128 -j ACCEPT"));
    assert!(!rules.ipv4.contains("fd00::1"));
    assert!(rules.ipv4.ends_with("COMMIT\n"));
}

#[test]
fn dns_is_closed_unless_asked_and_allow_mode_installs_nothing() {
    let rules = render(
        r#"{"mode":"Deny","allow":[],"dns":false}"#,
        &nameservers("nameserver 10.96.0.10"),
    )
    .unwrap()
    .unwrap();
    assert!(!rules.ipv4.contains("--dport 53"));
    assert_eq!(
        render(r#"{"mode":"Allow","allow":[],"dns":false}"#, &[]).unwrap(),
        None
    );
}

#[test]
fn bad_egress_policies_are_errors_not_open_doors() {
    assert_eq!(
        render(r#"{"mode":"Deny","allow":[{"cidr":"10.0.0.0/33"}]}"#, &[]),
        Err(EgressError::Cidr("10.0.0.0/33".into()))
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
