//! Timed set elements of the pod's nftables table, written over nf_tables netlink: what the
//! resolver does for every allowed answer, in microseconds instead of the ~15 ms an `nft`
//! process takes (loading libnftables and its ruleset cache).
//!
//! One batch (one transaction) per update: for every element, create (no error if it exists),
//! delete, create with the new timeout, so that the timer restarts without a moment in which
//! the element is missing.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use agentsandbox_contract::{EgressPort, Protocol};

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;
const NLA_F_NESTED: u16 = 0x8000;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;

/// One element: the set it goes into, its key as nf_tables lays it out, its timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedElement {
    pub set: &'static str,
    pub key: Vec<u8>,
    pub timeout_ms: u64,
}

/// The elements that open `addr` for `ports` (all ports when empty) for `seconds`, in the
/// sets `crate::egress::render` declares.
pub fn elements(addr: IpAddr, ports: &[EgressPort], seconds: u32) -> Vec<TimedElement> {
    let address = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let v4 = addr.is_ipv4();
    let timeout_ms = u64::from(seconds.max(1)) * 1000;
    if ports.is_empty() {
        return vec![TimedElement {
            set: if v4 { "host4_any" } else { "host6_any" },
            key: address,
            timeout_ms,
        }];
    }
    ports
        .iter()
        .map(|port| {
            // A concatenation: every field padded to 4 bytes; the protocol is one byte, the
            // port two in network order.
            let mut key = address.clone();
            let proto = match port.protocol {
                Protocol::Tcp => libc::IPPROTO_TCP as u8,
                Protocol::Udp => libc::IPPROTO_UDP as u8,
            };
            key.extend_from_slice(&[proto, 0, 0, 0]);
            key.extend_from_slice(&port.port.to_be_bytes());
            key.extend_from_slice(&[0, 0]);
            TimedElement {
                set: if v4 { "host4" } else { "host6" },
                key,
                timeout_ms,
            }
        })
        .collect()
}

fn attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    buf.resize(buf.len() + (4 - len % 4) % 4, 0);
}

fn nested(buf: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = vec![];
    fill(&mut inner);
    attr(buf, kind | NLA_F_NESTED, &inner);
}

fn cstring(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn message(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32, res_id: u16, body: &[u8]) {
    let len = 16 + 4 + body.len();
    buf.extend_from_slice(&(len as u32).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family, version, resource id (big endian).
    let family = if kind == NFNL_MSG_BATCH_BEGIN || kind == NFNL_MSG_BATCH_END {
        0
    } else {
        NFPROTO_INET
    };
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
    buf.extend_from_slice(body);
}

fn element_list(table: &str, element: &TimedElement, with_timeout: bool) -> Vec<u8> {
    let mut body = vec![];
    attr(&mut body, NFTA_SET_ELEM_LIST_TABLE, &cstring(table));
    attr(&mut body, NFTA_SET_ELEM_LIST_SET, &cstring(element.set));
    nested(&mut body, NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
        nested(list, NFTA_LIST_ELEM, |elem| {
            nested(elem, NFTA_SET_ELEM_KEY, |key| {
                attr(key, NFTA_DATA_VALUE, &element.key)
            });
            if with_timeout {
                attr(
                    elem,
                    NFTA_SET_ELEM_TIMEOUT,
                    &element.timeout_ms.to_be_bytes(),
                );
            }
        });
    });
    body
}

/// The batch that (re)opens `elements` in `table` (family inet); sequence numbers start at
/// `seq`. Returns the batch and the sequence number of its last message.
pub fn batch(table: &str, elements: &[TimedElement], seq: u32) -> (Vec<u8>, u32) {
    let mut buf = vec![];
    let mut seq = seq;
    message(
        &mut buf,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    let new = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM;
    let del = (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_DELSETELEM;
    for element in elements {
        for (kind, flags, timeout) in [
            (new, NLM_F_CREATE, true),
            (del, 0, false),
            (new, NLM_F_CREATE, true),
        ] {
            seq += 1;
            message(
                &mut buf,
                kind,
                NLM_F_REQUEST | NLM_F_ACK | flags,
                seq,
                0,
                &element_list(table, element, timeout),
            );
        }
    }
    let last = seq;
    seq += 1;
    message(
        &mut buf,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    (buf, last)
}

/// A netfilter netlink socket, bound in the network namespace of the thread that opens it.
pub struct NftSocket {
    fd: OwnedFd,
    seq: u32,
}

impl NftSocket {
    pub fn open() -> io::Result<NftSocket> {
        // SAFETY: plain socket calls; the fd is owned right after.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_NETFILTER,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just created and is not owned elsewhere.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: valid fd and option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(NftSocket { fd, seq: 1 })
    }

    /// Applies `elements` to `table` as one transaction; the kernel's error if it refused.
    pub fn open_elements(&mut self, table: &str, elements: &[TimedElement]) -> io::Result<()> {
        if elements.is_empty() {
            return Ok(());
        }
        let first = self.seq;
        let (buf, last) = batch(table, elements, first);
        self.seq = last.wrapping_add(2);
        // SAFETY: sending a buffer we own to the kernel (destination: the zeroed default).
        let sent = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        // Every message asked for an ack: read until the last one's, or the first error.
        let mut reply = vec![0u8; 8192];
        loop {
            // SAFETY: receiving into a buffer we own.
            let got = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    reply.as_mut_ptr().cast(),
                    reply.len(),
                    0,
                )
            };
            if got < 0 {
                return Err(io::Error::last_os_error());
            }
            let mut at = 0usize;
            let got = got as usize;
            while at + 16 <= got {
                let len =
                    u32::from_ne_bytes(reply[at..at + 4].try_into().expect("4 bytes")) as usize;
                let kind = u16::from_ne_bytes(reply[at + 4..at + 6].try_into().expect("2"));
                let seq = u32::from_ne_bytes(reply[at + 8..at + 12].try_into().expect("4"));
                if len < 16 || at + len > got {
                    return Err(io::Error::other("malformed netlink reply"));
                }
                // Replies to an earlier batch that failed part-way are not this one's.
                let ours = seq > first && seq <= last;
                if kind == NLMSG_ERROR && len >= 20 && ours {
                    let errno = i32::from_ne_bytes(reply[at + 16..at + 20].try_into().expect("4"));
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                    if seq == last {
                        return Ok(());
                    }
                }
                at += (len + 3) & !3;
            }
        }
    }
}
