//! Unit tests for diag.rs.

use super::*;

/// Builds a netlink message: header, then `payload`, padded to 4.
fn message(kind: u16, sequence: u32, payload: &[u8]) -> Vec<u8> {
    let length = 16 + payload.len();
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&(length as u32).to_ne_bytes());
    bytes.extend_from_slice(&kind.to_ne_bytes());
    bytes.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
    bytes.extend_from_slice(&sequence.to_ne_bytes());
    bytes.extend_from_slice(&0u32.to_ne_bytes());
    bytes.extend_from_slice(payload);
    bytes.resize(length.next_multiple_of(4), 0);
    bytes
}

/// An `inet_diag_msg` for an IPv4 or IPv6 socket.
fn diag_msg(family: u8, state: u8, port: u16, uid: u32, inode: u32) -> Vec<u8> {
    let mut p = vec![family, state, 0, 0];
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&0u16.to_be_bytes());
    p.extend_from_slice(&[0; 32]); // addresses
    p.extend_from_slice(&0u32.to_ne_bytes()); // interface
    p.extend_from_slice(&[0; 8]); // cookie
    for v in [0u32, 0, 0, uid, inode] {
        p.extend_from_slice(&v.to_ne_bytes());
    }
    // An attribute we do not parse: INET_DIAG_SOCKOPT, 2 bytes.
    p.extend_from_slice(&[6, 0, 22, 0, 1, 0, 0, 0]);
    p
}

const DONE: u16 = 3;
const ERROR: u16 = 2;

#[test]
fn parses_several_messages_then_done() {
    let mut bytes = message(20, 7, &diag_msg(AF_INET, 10, 8080, 1000, 42));
    bytes.extend(message(20, 7, &diag_msg(AF_INET6, 7, 53, 0, 43)));
    let mut out = Vec::new();
    assert_eq!(
        parse_datagram(&bytes, 7, Protocol::Udp, &mut out).expect("parses"),
        Dump::More
    );
    let done = message(DONE, 7, &0i32.to_ne_bytes());
    assert_eq!(
        parse_datagram(&done, 7, Protocol::Udp, &mut out).expect("parses"),
        Dump::Done
    );
    assert_eq!(
        out,
        vec![
            BoundSocket {
                protocol: Protocol::Udp,
                ipv6: false,
                port: 8080,
                state: 10,
                uid: 1000,
                inode: 42
            },
            BoundSocket {
                protocol: Protocol::Udp,
                ipv6: true,
                port: 53,
                state: 7,
                uid: 0,
                inode: 43
            },
        ]
    );
}

#[test]
fn empty_done_ends_the_dump() {
    let mut out = Vec::new();
    let done = message(DONE, 1, &[]);
    assert_eq!(
        parse_datagram(&done, 1, Protocol::Tcp, &mut out).expect("parses"),
        Dump::Done
    );
    assert!(out.is_empty());
}

#[test]
fn done_with_an_errno_is_an_error() {
    let done = message(DONE, 1, &(-libc::ENOMEM).to_ne_bytes());
    let err = parse_datagram(&done, 1, Protocol::Tcp, &mut Vec::new()).expect_err("fails");
    assert_eq!(err.raw_os_error(), Some(libc::ENOMEM));
}

#[test]
fn nlmsg_error_is_an_error_and_ack_is_not() {
    let mut nack = (-libc::ENOENT).to_ne_bytes().to_vec();
    nack.extend_from_slice(&[0; 16]);
    let err = parse_datagram(&message(ERROR, 1, &nack), 1, Protocol::Udp, &mut Vec::new())
        .expect_err("fails");
    assert_eq!(err.kind(), io::ErrorKind::NotFound);

    let mut ack = 0i32.to_ne_bytes().to_vec();
    ack.extend_from_slice(&[0; 16]);
    assert_eq!(
        parse_datagram(&message(ERROR, 1, &ack), 1, Protocol::Udp, &mut Vec::new()).expect("ack"),
        Dump::More
    );
}

#[test]
fn other_sequence_numbers_and_port_zero_are_skipped() {
    let mut bytes = message(20, 99, &diag_msg(AF_INET, 10, 80, 0, 1));
    bytes.extend(message(20, 1, &diag_msg(AF_INET, 7, 0, 0, 2)));
    let mut out = Vec::new();
    parse_datagram(&bytes, 1, Protocol::Tcp, &mut out).expect("parses");
    assert!(out.is_empty());
}

#[test]
fn truncated_message_is_an_error() {
    let bytes = message(20, 1, &diag_msg(AF_INET, 10, 80, 0, 1));
    assert!(parse_datagram(&bytes[..40], 1, Protocol::Tcp, &mut Vec::new()).is_err());
    let zero = [0u8; 16];
    assert!(parse_datagram(&zero, 1, Protocol::Tcp, &mut Vec::new()).is_err());
}

#[test]
fn all_states_covers_established_to_bound_inactive() {
    for state in 1..=13 {
        assert_ne!(ALL_STATES & (1 << state), 0, "state {state}");
    }
    assert_eq!(ALL_STATES & 1, 0);
    assert_eq!(ALL_STATES >> 14, 0);
}
