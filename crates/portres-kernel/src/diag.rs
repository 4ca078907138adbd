//! Which sockets hold which local ports, from the kernel's socket
//! diagnostics (`NETLINK_SOCK_DIAG`, the interface `ss` uses).
//!
//! This module owns building the dump requests, reading multipart replies
//! to the end (`NLMSG_DONE`, `NLMSG_ERROR`, truncation) and turning each
//! reply into a [`BoundSocket`]. It sees the calling thread's network
//! namespace (the namespace the netlink socket is created in). Deciding
//! whether a port is free is [`crate::probe`]'s job: a probe bind is faster
//! and sees every kind of holder; this dump says *who* holds a port.
//!
//! What the dumps show (kernel 6.18, measured by this crate's tests):
//! listeners, connections in every state including TIME_WAIT, bound UDP
//! sockets (connected or not), and — because we ask for the pseudo-state
//! `TCP_BOUND_INACTIVE` (13, Linux 6.8 and later) — TCP sockets that are
//! bound but neither listening nor connected, reported with state 7
//! (TCP_CLOSE). Older kernels ignore that request bit and such sockets are
//! then invisible here.
//!
//! Cost (kernel 6.18, 2 cores, release build): a TCP dump walks the
//! kernel's global connection and bind tables once per address family, so
//! [`bound_sockets`] for TCP takes ~2.5 ms even in an empty namespace
//! (~9 ms with 10k listeners); UDP ~25 µs. The source-port filter of
//! [`sockets_on_port`] saves only the copying (~3.8 ms with 10k
//! listeners). Prefer [`crate::probe`] on hot paths.

use std::io;

use netlink_packet_core::{
    DecodeError, NLM_F_DUMP, NLM_F_REQUEST, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, Parseable,
};
use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::constants::{
    AF_INET, AF_INET6, IPPROTO_TCP, IPPROTO_UDP, SOCK_DIAG_BY_FAMILY,
};
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponseHeader, SocketId, StateFlags,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use netlink_sys::{Socket, SocketAddr};
use portres_core::Protocol;

/// A socket holding a local port, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BoundSocket {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Whether the socket is AF_INET6 (including dual-stack sockets that
    /// also serve IPv4).
    pub ipv6: bool,
    /// The local port.
    pub port: u16,
    /// The kernel's TCP state number (`TCP_LISTEN` = 10, `TCP_TIME_WAIT` =
    /// 6, `TCP_CLOSE` = 7 for a bound, inactive TCP socket). UDP sockets
    /// report 7 (TCP_CLOSE) when unconnected and 1 (TCP_ESTABLISHED) when
    /// connected.
    pub state: u8,
    /// The owner's user id (0 for TIME_WAIT entries, which have no owner).
    pub uid: u32,
    /// The socket's inode number (0 for TIME_WAIT entries).
    pub inode: u32,
}

/// The TCP state number of a listening socket.
pub const TCP_LISTEN: u8 = 10;
/// The TCP state number of a TIME_WAIT connection.
pub const TCP_TIME_WAIT: u8 = 6;
/// The TCP state number of a closed socket; also an unconnected UDP socket.
pub const TCP_CLOSE: u8 = 7;

/// Every state bit from TCP_ESTABLISHED (1) to TCP_BOUND_INACTIVE (13).
///
/// Why 13: bound-but-inactive TCP sockets are only dumped when this
/// pseudo-state is asked for explicitly (Linux 6.8+); the crate's
/// `StateFlags::all()` stops at TCP_CLOSING (11) and would miss them and
/// TCP_NEW_SYN_RECV (12). Kernels that do not know a bit ignore it.
const ALL_STATES: u32 = ((1 << 14) - 1) & !1;

/// Receive buffer. Kernel dump datagrams are at most 32 KiB; twice that
/// leaves room, and truncation is detected anyway.
const RECV_BUFFER: usize = 64 * 1024;

/// Every socket of `protocol` holding a local port (TCP: all states incl.
/// LISTEN, TIME_WAIT; UDP: all bound), IPv4 and IPv6.
pub fn bound_sockets(protocol: Protocol) -> io::Result<Vec<BoundSocket>> {
    dump(protocol, 0)
}

/// Same, restricted to local port `port` (0 means every port).
///
/// The kernel is asked to filter by source port (it does so for listeners,
/// connections and UDP sockets); the result is filtered again here, so
/// kernels that filter less give the same answer.
pub fn sockets_on_port(protocol: Protocol, port: u16) -> io::Result<Vec<BoundSocket>> {
    let mut sockets = dump(protocol, port)?;
    if port != 0 {
        sockets.retain(|s| s.port == port);
    }
    Ok(sockets)
}

/// Dumps both address families of `protocol`, optionally asking the kernel
/// for source port `port` only.
fn dump(protocol: Protocol, port: u16) -> io::Result<Vec<BoundSocket>> {
    let mut socket = Socket::new(NETLINK_SOCK_DIAG)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut buf = vec![0u8; RECV_BUFFER];
    let mut out = Vec::new();
    for (sequence, family) in [(1, AF_INET), (2, AF_INET6)] {
        send_request(&socket, sequence, family, protocol, port)?;
        receive_dump(&socket, sequence, protocol, &mut buf, &mut out)?;
    }
    Ok(out)
}

fn send_request(
    socket: &Socket,
    sequence: u32,
    family: u8,
    protocol: Protocol,
    port: u16,
) -> io::Result<()> {
    let mut socket_id = if family == AF_INET6 {
        SocketId::new_v6()
    } else {
        SocketId::new_v4()
    };
    // In a dump the kernel ignores addresses and cookie but honours a
    // non-zero source port.
    socket_id.source_port = port;
    let request = InetRequest {
        family,
        protocol: match protocol {
            Protocol::Tcp => IPPROTO_TCP,
            Protocol::Udp => IPPROTO_UDP,
        },
        extensions: ExtensionFlags::empty(),
        states: StateFlags::from_bits_retain(ALL_STATES),
        socket_id,
    };
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_DUMP;
    header.sequence_number = sequence;
    let mut message = NetlinkMessage::new(header, SockDiagMessage::InetRequest(request).into());
    message.finalize();
    let mut bytes = vec![0u8; message.buffer_len()];
    message.serialize(&mut bytes);
    loop {
        match socket.send(&bytes, 0) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::other(format!(
                    "sock_diag: sent {n} of {} request bytes",
                    bytes.len()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads replies to request `sequence` until NLMSG_DONE, appending the
/// sockets to `out`. One datagram may hold many messages; a dump spans many
/// datagrams.
fn receive_dump(
    socket: &Socket,
    sequence: u32,
    protocol: Protocol,
    buf: &mut [u8],
    out: &mut Vec<BoundSocket>,
) -> io::Result<()> {
    loop {
        // MSG_TRUNC makes recv() return the datagram's real length, so a
        // datagram larger than the buffer is detected instead of silently
        // cut.
        let n = match socket.recv(&mut &mut buf[..], libc::MSG_TRUNC) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n > buf.len() {
            return Err(io::Error::other(format!(
                "sock_diag: a {n}-byte reply exceeds the {}-byte buffer",
                buf.len()
            )));
        }
        if let Dump::Done = parse_datagram(&buf[..n], sequence, protocol, out)? {
            return Ok(());
        }
    }
}

/// Whether a dump has more datagrams to come.
#[derive(Debug, PartialEq, Eq)]
enum Dump {
    More,
    Done,
}

/// Parses one datagram of replies to request `sequence`.
fn parse_datagram(
    mut bytes: &[u8],
    sequence: u32,
    protocol: Protocol,
    out: &mut Vec<BoundSocket>,
) -> io::Result<Dump> {
    while !bytes.is_empty() {
        let message = NetlinkMessage::<Entry>::deserialize(bytes).map_err(invalid_data)?;
        let length = message.header.length as usize;
        // Messages are padded to 4 bytes (NLMSG_ALIGN); the last one of a
        // datagram may lack its padding.
        let advance = length.next_multiple_of(4).min(bytes.len());
        if length == 0 {
            return Err(invalid_data("zero-length netlink message"));
        }
        bytes = &bytes[advance..];
        if message.header.sequence_number != sequence {
            // Not ours (a late reply to an earlier request): skip it.
            continue;
        }
        match message.payload {
            NetlinkPayload::InnerMessage(Entry(header)) if header.socket_id.source_port != 0 => {
                out.push(BoundSocket {
                    protocol,
                    ipv6: header.family == AF_INET6,
                    port: header.socket_id.source_port,
                    state: header.state,
                    uid: header.uid,
                    inode: header.inode,
                });
            }
            NetlinkPayload::Done(done) => {
                // A dump that fails part-way ends with NLMSG_DONE carrying
                // a negative errno.
                if done.code != 0 {
                    return Err(io::Error::from_raw_os_error(done.code.saturating_abs()));
                }
                return Ok(Dump::Done);
            }
            // An NLMSG_ERROR with code 0 is an acknowledgement (ignored
            // below); anything else ends the request (e.g. ENOENT when the
            // udp_diag module is missing).
            NetlinkPayload::Error(error) if error.code.is_some() => {
                let err = error.to_io();
                return Err(io::Error::new(err.kind(), format!("sock_diag: {err}")));
            }
            NetlinkPayload::Overrun(_) => {
                return Err(io::Error::other("sock_diag: netlink overrun"));
            }
            _ => {}
        }
    }
    Ok(Dump::More)
}

fn invalid_data(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("sock_diag: {e}"))
}

/// One `inet_diag_msg`, of which only the fixed header is parsed.
///
/// Why not `SockDiagMessage`: it also parses every attribute, and an
/// attribute a newer kernel adds or formats differently would then fail the
/// whole dump. The fixed header has every field we need.
#[derive(Debug)]
struct Entry(InetResponseHeader);

impl NetlinkDeserializable for Entry {
    type Error = DecodeError;

    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        if header.message_type != SOCK_DIAG_BY_FAMILY {
            return Err(format!("unexpected message type {}", header.message_type).into());
        }
        InetResponseHeader::parse(payload).map(Entry)
    }
}

#[cfg(test)]
mod tests;
