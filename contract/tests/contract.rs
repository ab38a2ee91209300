//! The contract round-trips: what the operator writes, the shim reads back unchanged.

use std::collections::BTreeMap;

use agentsandbox_contract::{
    annotations, Category, EgressMode, EgressPolicy, EgressPort, EgressRule, EscapeResponse,
    IsolationProfile, PodIdentity, PodPolicy, PolicyError, Protocol, ResponseTaken,
    SeccompProfileChoice, TtlBounds,
};

fn full_policy() -> PodPolicy {
    PodPolicy {
        identity: PodIdentity {
            sandbox_name: "coder".into(),
            sandbox_namespace: "team-a".into(),
            sandbox_uid: "6f1c".into(),
        },
        isolation: IsolationProfile::Standard,
        seccomp: SeccompProfileChoice::RuntimeDefault,
        on_escape: EscapeResponse::Quarantine,
        egress: EgressPolicy {
            mode: EgressMode::Deny,
            allow: vec![
                EgressRule {
                    cidr: "10.20.0.0/16".into(),
                    ports: vec![EgressPort {
                        port: 443,
                        protocol: Protocol::Udp,
                    }],
                    ..EgressRule::default()
                },
                EgressRule {
                    host: "*.example.com".into(),
                    ports: vec![EgressPort {
                        port: 443,
                        protocol: Protocol::Tcp,
                    }],
                    ..EgressRule::default()
                },
            ],
            dns: true,
            ingress: vec![EgressPort {
                port: 8080,
                protocol: Protocol::Tcp,
            }],
            host_ttl: TtlBounds {
                min_seconds: 5,
                max_seconds: 600,
            },
        },
        warm: true,
    }
}

#[test]
fn pod_policy_round_trips_through_annotations() {
    let policy = full_policy();
    let written = policy.to_annotations();
    assert!(written.keys().all(|k| k.starts_with(annotations::PREFIX)));
    assert_eq!(PodPolicy::from_annotations(&written), Ok(policy));
}

#[test]
fn egress_json_is_the_documented_shape() {
    let json = &full_policy().to_annotations()[annotations::EGRESS];
    assert_eq!(
        json,
        concat!(
            r#"{"mode":"Deny","allow":[{"cidr":"10.20.0.0/16","ports":[{"port":443,"protocol":"UDP"}]},"#,
            r#"{"host":"*.example.com","ports":[{"port":443,"protocol":"TCP"}]}],"dns":true,"#,
            r#""ingress":[{"port":8080,"protocol":"TCP"}],"hostTTL":{"minSeconds":5,"maxSeconds":600}}"#
        )
    );
}

#[test]
fn missing_annotations_take_the_defaults_of_an_agent_sandbox_and_fail_closed() {
    let policy = PodPolicy::from_annotations(&BTreeMap::new()).unwrap();
    assert_eq!(policy.isolation, IsolationProfile::Strict);
    assert_eq!(policy.on_escape, EscapeResponse::Deny);
    assert_eq!(policy.seccomp, SeccompProfileChoice::Agent);
    // A plain pod under the RuntimeClass gets no egress at all, not an open network.
    assert_eq!(policy.egress, EgressPolicy::deny_all());
    assert_eq!(policy.egress.mode, EgressMode::Deny);
    assert!(policy.egress.allow.is_empty() && !policy.egress.dns);
}

#[test]
fn unknown_values_are_refused_not_weakened() {
    for (key, value) in [
        (annotations::ISOLATION, "strict"),
        (annotations::ON_ESCAPE, "Ignore"),
        (annotations::SECCOMP, "Unconfined"),
        (annotations::EGRESS, "{\"mode\":\"Open\"}"),
        (annotations::EGRESS, "not json"),
    ] {
        let pod = BTreeMap::from([(key.to_string(), value.to_string())]);
        let refused = PodPolicy::from_annotations(&pod);
        assert!(refused.is_err(), "{key}={value} was accepted: {refused:?}");
    }
    assert_eq!(
        "Ignore".parse::<EscapeResponse>(),
        Err(PolicyError::UnknownValue {
            kind: "EscapeResponse",
            value: "Ignore".into(),
            expected: "Deny, Kill, Quarantine".into(),
        })
    );
}

#[test]
fn every_name_parses_back_to_itself() {
    for c in Category::ALL {
        assert_eq!(c.as_str().parse::<Category>(), Ok(*c));
        assert_eq!(serde_json::to_string(c).unwrap(), format!("\"{c}\""));
    }
    for r in EscapeResponse::ALL {
        assert_eq!(r.as_str().parse::<EscapeResponse>(), Ok(*r));
        assert_eq!(r.taken().requested(), *r);
    }
    for r in ResponseTaken::ALL {
        assert_eq!(r.as_str().parse::<ResponseTaken>(), Ok(*r));
    }
}

#[test]
fn responses_are_ordered_by_strength() {
    assert!(ResponseTaken::Denied < ResponseTaken::Killed);
    assert!(ResponseTaken::Killed < ResponseTaken::Quarantined);
}

#[test]
fn a_host_pattern_matches_its_name_or_exactly_one_label_more() {
    use agentsandbox_contract::host_matches;
    assert!(host_matches("pypi.org", "pypi.org"));
    assert!(host_matches("pypi.org", "PyPI.org."));
    assert!(!host_matches("pypi.org", "files.pypi.org"));
    assert!(!host_matches("pypi.org", "xpypi.org"));
    assert!(host_matches("*.wild.test", "a.wild.test"));
    assert!(host_matches("*.wild.test", "A.WILD.test."));
    assert!(!host_matches("*.wild.test", "b.c.wild.test"));
    assert!(!host_matches("*.wild.test", "wild.test"));
    assert!(!host_matches("*.wild.test", ".wild.test"));
    assert!(!host_matches("*.wild.test", "awild.test"));
}

#[test]
fn a_resolved_address_stays_open_for_its_ttl_within_the_bounds() {
    let bounds = TtlBounds {
        min_seconds: 5,
        max_seconds: 600,
    };
    assert_eq!(bounds.clamp(0), 5);
    assert_eq!(bounds.clamp(60), 60);
    assert_eq!(bounds.clamp(86_400), 600);
    // A minimum above the maximum wins (the API server refuses it; the shim stays safe).
    let odd = TtlBounds {
        min_seconds: 50,
        max_seconds: 10,
    };
    assert_eq!(odd.clamp(1), 50);
}
