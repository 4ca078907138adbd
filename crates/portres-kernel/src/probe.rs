//! "Is this port in use right now?" — answered by asking the kernel to bind
//! a probe socket to it, which is exact and takes a few microseconds.
//!
//! This module owns the probe and its fallbacks. It answers for the calling
//! thread's network namespace. It does not say *who* holds a port; that is
//! [`crate::diag`].
//!
//! Why a bind and not a socket dump: a bind to the IPv6 wildcard `[::]:P`
//! with IPV6_V6ONLY off and neither SO_REUSEADDR nor SO_REUSEPORT conflicts
//! with every holder of P (checked on kernel 6.18): IPv4-only and IPv6-only
//! listeners, listeners on one address, SO_REUSEPORT listeners, sockets
//! bound but not listening (even with SO_REUSEADDR), TIME_WAIT connections,
//! and, for UDP, bound UDP sockets. A dump of all TCP states costs ~0.5 ms
//! even in an empty namespace.

use std::cell::RefCell;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::OwnedFd;

use portres_core::Protocol;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType, ipproto, sockopt};

use crate::diag;

/// Whether some socket holds local port `port` for `protocol` right now
/// (listening, connected, TIME_WAIT, bound UDP; IPv4 or IPv6).
///
/// Method: bind a fresh probe socket (SOCK_CLOEXEC) of that protocol to
/// `[::]:port` with IPV6_V6ONLY off and no SO_REUSEADDR/SO_REUSEPORT;
/// EADDRINUSE => true, success => false (the socket is closed). A probe
/// socket whose bind failed is still unbound and is kept for the calling
/// thread's next probe.
///
/// Fallbacks: if AF_INET6 is unavailable (EAFNOSUPPORT) the probe binds
/// `0.0.0.0:port` with AF_INET instead; if the bind fails with EACCES or
/// EPERM (an unprivileged daemon and a port below
/// `net.ipv4.ip_unprivileged_port_start`, or a BPF bind hook) the answer is
/// whether [`diag::sockets_on_port`] lists a socket — which, on kernels
/// before 6.8, misses TCP sockets bound but not listening.
///
/// Port 0 is refused with `ErrorKind::InvalidInput`: binding it would pick
/// a free port, so "in use" has no meaning for it.
pub fn port_in_use(protocol: Protocol, port: u16) -> io::Result<bool> {
    if port == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "port 0 cannot be probed",
        ));
    }
    let result = match spare_or_new_v6(protocol) {
        Ok(socket) => {
            let addr = SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, port, 0, 0);
            let bound = rustix::net::bind(&socket, &SocketAddr::V6(addr));
            if bound == Err(Errno::ADDRINUSE) {
                // A failed bind leaves the socket unbound: keep it for this
                // thread's next probe (saves a socket() and a close()).
                SPARE_V6.with(|spare| spare.borrow_mut()[protocol_index(protocol)] = Some(socket));
            }
            bound
        }
        // Why: a kernel booted with ipv6.disable=1 has no AF_INET6; IPv4 is
        // then the only port space.
        Err(Errno::AFNOSUPPORT) => {
            let socket = probe_socket(AddressFamily::INET, protocol)?;
            let addr = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port);
            rustix::net::bind(&socket, &SocketAddr::V4(addr))
        }
        Err(e) => return Err(e.into()),
    };
    match result {
        Ok(()) => Ok(false),
        Err(Errno::ADDRINUSE) => Ok(true),
        Err(Errno::ACCESS | Errno::PERM) => Ok(!diag::sockets_on_port(protocol, port)?.is_empty()),
        Err(e) => Err(io::Error::from(e)),
    }
}

thread_local! {
    /// Per thread and protocol: an unbound IPv6 probe socket left over from
    /// a probe that found its port in use.
    static SPARE_V6: RefCell<[Option<OwnedFd>; 2]> = const { RefCell::new([None, None]) };
}

fn protocol_index(protocol: Protocol) -> usize {
    match protocol {
        Protocol::Tcp => 0,
        Protocol::Udp => 1,
    }
}

/// An unbound IPv6 probe socket with IPV6_V6ONLY off: this thread's spare
/// one, or a new one.
fn spare_or_new_v6(protocol: Protocol) -> Result<OwnedFd, Errno> {
    if let Some(socket) = SPARE_V6.with(|spare| spare.borrow_mut()[protocol_index(protocol)].take())
    {
        return Ok(socket);
    }
    let socket = probe_socket(AddressFamily::INET6, protocol)?;
    // Why explicitly: net.ipv6.bindv6only may make new sockets IPv6-only,
    // and then IPv4 holders would not conflict.
    sockopt::set_ipv6_v6only(&socket, false)?;
    Ok(socket)
}

/// A fresh, unbound, close-on-exec socket. It is closed when dropped, which
/// releases the port if the probe bind succeeded.
fn probe_socket(family: AddressFamily, protocol: Protocol) -> Result<OwnedFd, Errno> {
    let (kind, proto) = match protocol {
        Protocol::Tcp => (SocketType::STREAM, ipproto::TCP),
        Protocol::Udp => (SocketType::DGRAM, ipproto::UDP),
    };
    rustix::net::socket_with(family, kind, SocketFlags::CLOEXEC, Some(proto))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_socket_that_found_its_port_busy_is_reused_and_still_exact() {
        // Loopback binds to an ephemeral port only: harmless anywhere.
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let busy = held.local_addr().unwrap().port();
        assert!(port_in_use(Protocol::Tcp, busy).unwrap());
        let spare_fd = SPARE_V6.with(|s| {
            use std::os::fd::AsRawFd;
            s.borrow()[0].as_ref().map(|f| f.as_raw_fd())
        });
        assert!(spare_fd.is_some(), "kept after EADDRINUSE");
        // The kept socket answers again, for a busy port and a free one.
        assert!(port_in_use(Protocol::Tcp, busy).unwrap());
        drop(held);
        // Another test thread that forks a child (process.rs's tests) copies
        // every descriptor, ours too, until the child's exec closes them:
        // the listener may outlive `drop` for a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while port_in_use(Protocol::Tcp, busy).unwrap() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert!(!port_in_use(Protocol::Tcp, busy).unwrap());
        assert!(
            SPARE_V6.with(|s| s.borrow()[0].is_none()),
            "a successful probe consumes its socket"
        );
        // And the port it probed is free again afterwards (the probe
        // socket, too, may live on for a moment in a forked child).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while let Err(e) = std::net::TcpListener::bind(("127.0.0.1", busy)) {
            assert!(std::time::Instant::now() < deadline, "still in use: {e}");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn port_zero_is_refused() {
        let err = port_in_use(Protocol::Tcp, 0).expect_err("port 0");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
