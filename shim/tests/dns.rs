//! The resolver's pure parts: reading queries and answers, and what it does with a name.

use agentsandbox_contract::{EgressPolicy, EgressPort, Protocol};
use agentsandbox_shim::dns::{
    answer_addresses, decide, parse_query, refusal_summary, reply_with, Verdict,
};

fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0]);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

fn policy(json: &str) -> EgressPolicy {
    serde_json::from_str(json).unwrap()
}

#[test]
fn a_query_is_read_case_insensitively_and_anything_else_is_not_a_query() {
    let q = parse_query(&query("Allowed.TEST", 1)).unwrap();
    assert_eq!(q.id, 0xabcd);
    assert_eq!(q.name, "allowed.test");
    assert_eq!(q.qtype, 1);
    let mut response = query("a.test", 1);
    response[2] |= 0x80;
    assert_eq!(parse_query(&response), None, "a response is not a query");
    assert_eq!(parse_query(&[0; 5]), None);
    let mut truncated = query("a.test", 1);
    truncated.truncate(15);
    assert_eq!(parse_query(&truncated), None);
}

#[test]
fn answers_yield_their_a_and_aaaa_records_through_compressed_names() {
    let mut msg = query("allowed.test", 1);
    msg[2] = 0x81;
    msg[3] = 0x80;
    msg[7] = 3; // three answers
                // A CNAME (pointer to the question's name), then A and AAAA records.
    msg.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60, 0, 2, 0xc0, 12]);
    msg.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 7, 0, 4, 10, 96, 100, 10]);
    msg.extend_from_slice(&[0xc0, 12, 0, 28, 0, 1, 0, 0, 1, 0, 0, 16]);
    msg.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
    assert_eq!(
        answer_addresses(&msg),
        vec![
            ("10.96.100.10".parse().unwrap(), 7),
            ("fd00::7".parse().unwrap(), 256)
        ]
    );
    // A message cut short yields nothing rather than garbage.
    assert!(answer_addresses(&msg[..msg.len() - 3]).is_empty());
}

#[test]
fn a_refusal_carries_the_question_and_the_rcode_only() {
    let raw = query("denied.test", 16);
    let q = parse_query(&raw).unwrap();
    let reply = reply_with(&raw, &q, 3);
    assert_eq!(reply.len(), raw.len());
    assert_eq!(reply[..2], raw[..2]);
    assert_eq!(reply[2], 0x81, "QR with RD kept");
    assert_eq!(reply[3] & 0x0f, 3);
    assert_eq!(reply[4..6], [0, 1]);
    assert_eq!(reply[6..12], [0; 6]);
}

#[test]
fn host_rules_open_their_ports_and_other_names_are_refused_and_reported() {
    let p = policy(
        r#"{"mode":"Deny","allow":[
            {"host":"allowed.test","ports":[{"port":8080}]},
            {"host":"*.wild.test","ports":[{"port":8080},{"port":53,"protocol":"UDP"}]},
            {"host":"any.test"}]}"#,
    );
    let search = vec!["ns.svc.cluster.local".to_string(), "cluster.local".into()];
    let tcp8080 = EgressPort {
        port: 8080,
        protocol: Protocol::Tcp,
    };
    assert_eq!(
        decide(&p, &search, "allowed.test"),
        Verdict::Open {
            ports: vec![tcp8080],
            any: false
        }
    );
    assert!(
        matches!(decide(&p, &search, "a.wild.test"), Verdict::Open { ports, .. } if ports.len() == 2)
    );
    assert_eq!(
        decide(&p, &search, "any.test"),
        Verdict::Open {
            ports: vec![],
            any: true
        }
    );
    assert_eq!(
        decide(&p, &search, "b.c.wild.test"),
        Verdict::Refuse { report: true }
    );
    assert_eq!(
        decide(&p, &search, "denied.test"),
        Verdict::Refuse { report: true }
    );
    // What a resolver tries first for allowed.test (ndots:5): refused, not reported.
    assert_eq!(
        decide(&p, &search, "allowed.test.ns.svc.cluster.local"),
        Verdict::Refuse { report: false }
    );
    assert_eq!(
        decide(&p, &search, "secret.ns.svc.cluster.local"),
        Verdict::Refuse { report: true }
    );
    // allowDNS forwards other names without opening anything.
    let open = policy(r#"{"mode":"Deny","dns":true}"#);
    assert_eq!(decide(&open, &search, "denied.test"), Verdict::Forward);
}

#[test]
fn a_refused_name_is_reported_without_the_labels_that_would_carry_data() {
    let q = parse_query(&query("c2VjcmV0LWtleQ.exfil.test", 16)).unwrap();
    let summary = refusal_summary(&q);
    assert_eq!(
        summary,
        "DNS TXT query refused: *.exfil.test (25 characters)"
    );
    assert!(!summary.contains("c2VjcmV0"));
    let q = parse_query(&query("denied.test", 1)).unwrap();
    assert_eq!(
        refusal_summary(&q),
        "DNS A query refused: denied.test (11 characters)"
    );
}
