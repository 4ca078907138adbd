//! Sockets received from clients: checking what they are, binding them
//! into a reserved block, and telling which network namespace a socket
//! belongs to.
//!
//! This module owns the checks and the bind, and the translation of their
//! errno values into portres error codes with messages a user can act on.
//! Which block a client may bind into is the daemon's decision.
//!
//! Why binding a received socket works: a socket passed over SCM_RIGHTS is
//! the same open socket in both processes, so a bind by the daemon is a bind
//! for the client too, in the socket's own network namespace (compare
//! [`netns_cookie`] with [`current_netns_cookie`] to refuse foreign ones).

use std::io;
use std::mem;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd};

use portres_core::{Error, ErrorCode, Protocol};
use rustix::fs::FileType;
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType, ipproto, sockopt};

/// What kind of socket a received descriptor is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketInfo {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Whether the socket is AF_INET6 (it then takes IPv6 addresses only;
    /// whether it also serves IPv4 depends on its IPV6_V6ONLY).
    pub ipv6: bool,
}

/// SO_NETNS_COOKIE (SOL_SOCKET, 71) of a socket: a number that identifies
/// the socket's network namespace for the life of the system (Linux 5.14+).
pub fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `cookie` is a live, writable u64 and `len` is its size, so the
    // kernel writes at most 8 bytes into it; `fd` is a valid descriptor for
    // the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != mem::size_of::<u64>() {
        return Err(io::Error::other(format!(
            "SO_NETNS_COOKIE returned {len} bytes, expected 8"
        )));
    }
    Ok(cookie)
}

/// The cookie of the calling thread's network namespace (from a throwaway
/// socket, which is created in the thread's namespace).
pub fn current_netns_cookie() -> io::Result<u64> {
    // A Unix datagram socket: always available, touches no port.
    let socket = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    netns_cookie(std::os::fd::AsFd::as_fd(&socket))
}

/// Checks a received descriptor: fstat says not a socket =>
/// ErrorCode::NotASocket; SO_DOMAIN not AF_INET/AF_INET6, or (SO_TYPE,
/// SO_PROTOCOL) not (SOCK_STREAM, TCP) / (SOCK_DGRAM, UDP) =>
/// ErrorCode::NotSupported; already bound, listening or connected
/// (getsockname gives a port, or an address with IP_BIND_ADDRESS_NO_PORT)
/// => ErrorCode::AlreadyBound.
pub fn inspect(fd: BorrowedFd<'_>) -> Result<SocketInfo, Error> {
    let internal = |what: &str, e: Errno| {
        Error::new(
            ErrorCode::Internal,
            format!("cannot read the socket's {what}: {}", errno_text(e)),
        )
    };
    // getsockname answers "is it a socket" (ENOTSOCK), "which family" and
    // "is it bound" in one call — this runs for every Bind request, so the
    // fstat that names what a non-socket is happens only on that path.
    let local = match rustix::net::getsockname(fd) {
        Ok(any) => any,
        // EBADF on a descriptor we hold: an O_PATH reference, which fstat()s
        // like the socket file it names but is no socket to socket calls.
        Err(Errno::NOTSOCK | Errno::BADF) => return Err(not_a_socket(fd)),
        Err(e) => return Err(internal("local address", e)),
    };
    let domain = local.address_family();
    let ipv6 = match domain {
        AddressFamily::INET => false,
        AddressFamily::INET6 => true,
        other => {
            return Err(Error::new(
                ErrorCode::NotSupported,
                format!(
                    "the socket is of address family {} ({}), not IPv4 or IPv6",
                    family_name(other),
                    other.as_raw()
                ),
            ));
        }
    };
    let local =
        SocketAddr::try_from(local).map_err(|_| internal("local address", Errno::AFNOSUPPORT))?;
    let unbound = local.port() == 0 && local.ip().is_unspecified();
    let proto = sockopt::socket_protocol(fd).map_err(|e| internal("protocol", e))?;
    // SO_TYPE is asked, not inferred from the protocol: a SOCK_RAW socket
    // of protocol TCP or UDP shows that number as its local port only until
    // a connect(AF_UNSPEC), which sets it to 0, and then looks unbound like
    // a fresh TCP or UDP socket (kernel test
    // `inspect_refuses_a_disconnected_raw_socket_of_protocol_tcp_or_udp`).
    let kind = sockopt::socket_type(fd).map_err(|e| internal("type", e))?;
    let protocol = match (kind, proto) {
        (SocketType::STREAM, Some(ipproto::TCP)) => Protocol::Tcp,
        (SocketType::DGRAM, Some(ipproto::UDP)) => Protocol::Udp,
        (kind, proto) => {
            return Err(Error::new(
                ErrorCode::NotSupported,
                format!(
                    "the socket is {} with protocol {}, not TCP (SOCK_STREAM) or UDP (SOCK_DGRAM)",
                    type_name(kind),
                    proto.map_or(0, |p| p.as_raw().get())
                ),
            ));
        }
    };
    if !unbound {
        return Err(Error::new(
            ErrorCode::AlreadyBound,
            format!(
                "the {} socket is already bound to {local}; pass a socket fresh from socket()",
                protocol.as_str().to_uppercase()
            ),
        ));
    }
    Ok(SocketInfo { protocol, ipv6 })
}

/// Why a descriptor is not a socket, in words (fstat names what it is).
fn not_a_socket(fd: BorrowedFd<'_>) -> Error {
    if rustix::fs::fcntl_getfl(fd).is_ok_and(|f| f.contains(rustix::fs::OFlags::PATH)) {
        return Error::new(
            ErrorCode::NotASocket,
            "the descriptor is an O_PATH reference to a file, not a socket",
        );
    }
    match rustix::fs::fstat(fd) {
        Ok(stat) => Error::new(
            ErrorCode::NotASocket,
            format!(
                "the descriptor is {}, not a socket",
                file_type_name(FileType::from_raw_mode(stat.st_mode))
            ),
        ),
        Err(e) => Error::new(
            ErrorCode::NotASocket,
            format!("cannot examine the descriptor: {}", errno_text(e)),
        ),
    }
}

/// Binds the socket to (addr, port) for each port from `ports` in turn
/// until one succeeds; EADDRINUSE moves on to the next port. Returns the
/// bound port.
///
/// Errors: every port in use (or no ports given) => BlockExhausted; `addr`
/// of the other family than the socket (IPv4 on IPv6 is not mapped) or
/// port 0 among `ports` => InvalidParameter; `addr` not an address of this
/// host (EADDRNOTAVAIL) => InvalidParameter; a v4-mapped `addr` on an
/// IPV6_V6ONLY socket, or a link-local IPv6 `addr` (needs a scope id) =>
/// InvalidParameter; EACCES/EPERM (privileged port,
/// BPF bind hook) => AccessDenied; the socket already bound (EINVAL) =>
/// AlreadyBound; anything else => Internal naming the errno.
///
/// Leaves the client's socket options as it set them (IPV6_V6ONLY, etc.
/// apply to the bind). One exception, undone before returning: the bind
/// itself is made with SO_REUSEADDR off (see `bind_in_domain`).
pub fn bind_into(
    fd: BorrowedFd<'_>,
    addr: IpAddr,
    ports: impl Iterator<Item = u16>,
) -> Result<u16, Error> {
    let domain = sockopt::socket_domain(fd).map_err(|e| {
        Error::new(
            ErrorCode::NotASocket,
            format!("cannot read the socket's address family: {}", errno_text(e)),
        )
    })?;
    let protocol = match sockopt::socket_type(fd) {
        Ok(SocketType::STREAM) => Protocol::Tcp,
        _ => Protocol::Udp,
    };
    bind_in_domain(fd, domain, protocol, addr, ports)
}

/// `bind_into` for a socket `inspect` has already described (saves asking
/// the kernel for its family again).
pub fn bind_inspected(
    fd: BorrowedFd<'_>,
    info: &SocketInfo,
    addr: IpAddr,
    ports: impl Iterator<Item = u16>,
) -> Result<u16, Error> {
    let domain = if info.ipv6 {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    bind_in_domain(fd, domain, info.protocol, addr, ports)
}

/// How many busy ports of a block the TIME_WAIT fallback examines (one
/// port-filtered sock_diag dump each, tens of µs): bounds the work one
/// Bind into a fully bound, large block can cause.
const TIME_WAIT_CHECKS: usize = 64;

/// The bind loop. The bind is made with SO_REUSEADDR *off*, and the
/// client's setting is put back afterwards, whatever the outcome.
///
/// Why: with SO_REUSEADDR on both, Linux lets a second TCP socket bind a
/// port another socket holds as long as neither listens, and UDP lets any
/// number of SO_REUSEADDR sockets share a port. Either way the bind would
/// succeed on a port of the block someone else already holds (for TCP the
/// second `listen()` then fails with EADDRINUSE; for UDP the two sockets
/// share the port's datagrams). With the flag off every bound socket makes
/// its port busy and the next port of the block is tried. Restoring the flag
/// afterwards keeps what the client asked for at `listen()` time.
///
/// The cost: a port in TIME_WAIT is busy too. When every port of the block
/// was busy, the client had SO_REUSEADDR on and the socket is TCP, each busy
/// port (up to [`TIME_WAIT_CHECKS`]) whose only sockets are TIME_WAIT
/// entries is tried again with the flag on — reusing a TIME_WAIT port is
/// what SO_REUSEADDR is for; a port some live socket holds is never taken.
fn bind_in_domain(
    fd: BorrowedFd<'_>,
    domain: AddressFamily,
    protocol: Protocol,
    addr: IpAddr,
    ports: impl Iterator<Item = u16>,
) -> Result<u16, Error> {
    match (domain, addr) {
        (AddressFamily::INET, IpAddr::V4(_)) | (AddressFamily::INET6, IpAddr::V6(_)) => {}
        (AddressFamily::INET | AddressFamily::INET6, _) => {
            let (sock, want) = if domain == AddressFamily::INET {
                ("an IPv4", "IPv4")
            } else {
                (
                    "an IPv6",
                    "IPv6 (use ::ffff:a.b.c.d for IPv4 on a dual-stack socket)",
                )
            };
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!("address {addr} does not fit {sock} socket: give an {want} address"),
            ));
        }
        (other, _) => {
            return Err(Error::new(
                ErrorCode::NotSupported,
                format!(
                    "the socket is of address family {}, not IPv4 or IPv6",
                    family_name(other)
                ),
            ));
        }
    }
    let reuse = sockopt::socket_reuseaddr(fd).map_err(|e| {
        Error::new(
            ErrorCode::Internal,
            format!("cannot read the socket's SO_REUSEADDR: {}", errno_text(e)),
        )
    })?;
    if !reuse {
        return bind_first_free(fd, addr, ports, None);
    }
    set_reuseaddr(fd, false)?;
    let mut busy = Vec::new();
    let collect = (protocol == Protocol::Tcp).then_some(&mut busy);
    let mut result = bind_first_free(fd, addr, ports, collect);
    if matches!(&result, Err(e) if e.code == ErrorCode::BlockExhausted) && !busy.is_empty() {
        set_reuseaddr(fd, true)?;
        let only_time_wait = busy
            .into_iter()
            .filter(|&port| held_only_in_time_wait(port));
        if let Ok(port) = bind_first_free(fd, addr, only_time_wait, None) {
            result = Ok(port);
        }
    }
    // Put the client's flag back. It cannot fail on a socket whose option
    // was just read and written; if it somehow did, the socket would listen
    // without SO_REUSEADDR, which is only stricter.
    let _ = sockopt::set_socket_reuseaddr(fd, true);
    result
}

/// Whether every socket holding TCP `port` is a TIME_WAIT entry (and the
/// dump could be read at all).
fn held_only_in_time_wait(port: u16) -> bool {
    const TCP_TIME_WAIT: u8 = 6;
    crate::diag::sockets_on_port(Protocol::Tcp, port)
        .is_ok_and(|s| !s.is_empty() && s.iter().all(|s| s.state == TCP_TIME_WAIT))
}

fn set_reuseaddr(fd: BorrowedFd<'_>, on: bool) -> Result<(), Error> {
    sockopt::set_socket_reuseaddr(fd, on).map_err(|e| {
        Error::new(
            ErrorCode::Internal,
            format!("cannot set the socket's SO_REUSEADDR: {}", errno_text(e)),
        )
    })
}

/// Binds to the first port of `ports` the kernel accepts (EADDRINUSE moves
/// on, recording the port in `busy` if given).
fn bind_first_free(
    fd: BorrowedFd<'_>,
    addr: IpAddr,
    ports: impl Iterator<Item = u16>,
    mut busy: Option<&mut Vec<u16>>,
) -> Result<u16, Error> {
    let mut tried = 0usize;
    for port in ports {
        if port == 0 {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                "port 0 cannot be bound into: it would pick any free port",
            ));
        }
        let target = match addr {
            IpAddr::V4(a) => SocketAddr::V4(SocketAddrV4::new(a, port)),
            IpAddr::V6(a) => SocketAddr::V6(SocketAddrV6::new(a, port, 0, 0)),
        };
        tried += 1;
        match bind_retrying(fd, &target) {
            Ok(()) => return Ok(port),
            Err(Errno::ADDRINUSE) => {
                if let Some(busy) = busy.as_deref_mut().filter(|b| b.len() < TIME_WAIT_CHECKS) {
                    busy.push(port);
                }
                continue;
            }
            Err(e) => return Err(bind_error(fd, &target, e)),
        }
    }
    Err(Error::new(
        ErrorCode::BlockExhausted,
        if tried == 0 {
            "no ports to bind into".to_owned()
        } else {
            format!("all {tried} ports of the block are in use on {addr}")
        },
    ))
}

/// bind(), again on EINTR (a bind that was interrupted did nothing).
fn bind_retrying(fd: BorrowedFd<'_>, target: &SocketAddr) -> Result<(), Errno> {
    loop {
        match rustix::net::bind(fd, target) {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// Translates a bind() failure other than EADDRINUSE.
fn bind_error(fd: BorrowedFd<'_>, target: &SocketAddr, e: Errno) -> Error {
    let (code, why) = match e {
        Errno::ACCESS => (
            ErrorCode::AccessDenied,
            "permission denied (a port below net.ipv4.ip_unprivileged_port_start needs privilege)",
        ),
        Errno::PERM => (
            ErrorCode::AccessDenied,
            "operation not permitted (refused by a security policy or BPF hook)",
        ),
        Errno::ADDRNOTAVAIL => (
            ErrorCode::InvalidParameter,
            "the address is not an address of this host",
        ),
        // Why: bind() gives EINVAL when the socket already has a local
        // address, e.g. the client bound it after inspect().
        Errno::INVAL if local_address(fd).is_ok_and(|a| a.port() != 0) => {
            (ErrorCode::AlreadyBound, "the socket is already bound")
        }
        // The kernel refuses a v4-mapped address on an IPv6-only socket
        // with a bare EINVAL: the client's choice of address, not a fault.
        Errno::INVAL if is_v4_mapped(target) && sockopt::ipv6_v6only(fd).unwrap_or(false) => (
            ErrorCode::InvalidParameter,
            "the socket is IPv6-only (IPV6_V6ONLY is set), so it cannot take a v4-mapped \
             address (::ffff:a.b.c.d); give an IPv6 address, clear IPV6_V6ONLY before \
             passing the socket, or pass an IPv4 socket",
        ),
        // A link-local IPv6 address needs an interface (scope id), which a
        // Bind's address cannot carry: EINVAL again.
        Errno::INVAL if is_link_local_v6(target) => (
            ErrorCode::InvalidParameter,
            "a link-local IPv6 address (fe80::/10) needs an interface, which Bind cannot take; \
             give :: or a global address",
        ),
        _ => (ErrorCode::Internal, "unexpected failure"),
    };
    Error::new(
        code,
        format!("binding {target} failed: {why} ({})", errno_text(e)),
    )
}

/// Whether `target` is an IPv4 address written as IPv6 (::ffff:a.b.c.d).
fn is_v4_mapped(target: &SocketAddr) -> bool {
    matches!(target, SocketAddr::V6(a) if a.ip().to_ipv4_mapped().is_some())
}

/// Whether `target` is an IPv6 link-local address (fe80::/10).
fn is_link_local_v6(target: &SocketAddr) -> bool {
    matches!(target, SocketAddr::V6(a) if a.ip().segments()[0] & 0xffc0 == 0xfe80)
}

/// The socket's local address (port 0 and an unspecified address when
/// unbound).
fn local_address(fd: BorrowedFd<'_>) -> Result<SocketAddr, Errno> {
    let any = rustix::net::getsockname(fd)?;
    SocketAddr::try_from(any).map_err(|_| Errno::AFNOSUPPORT)
}

/// "EACCES: Permission denied (os error 13)".
fn errno_text(e: Errno) -> String {
    let name = errno_name(e);
    let text = io::Error::from(e);
    if name.is_empty() {
        text.to_string()
    } else {
        format!("{name}: {text}")
    }
}

fn errno_name(e: Errno) -> &'static str {
    match e {
        Errno::ACCESS => "EACCES",
        Errno::PERM => "EPERM",
        Errno::ADDRINUSE => "EADDRINUSE",
        Errno::ADDRNOTAVAIL => "EADDRNOTAVAIL",
        Errno::INVAL => "EINVAL",
        Errno::BADF => "EBADF",
        Errno::NOTSOCK => "ENOTSOCK",
        Errno::AFNOSUPPORT => "EAFNOSUPPORT",
        Errno::NOPROTOOPT => "ENOPROTOOPT",
        Errno::NOMEM => "ENOMEM",
        Errno::NOBUFS => "ENOBUFS",
        _ => "",
    }
}

fn file_type_name(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a pipe or FIFO",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Socket => "a socket",
        _ => "an unknown kind of file",
    }
}

fn family_name(f: AddressFamily) -> &'static str {
    match f {
        AddressFamily::UNIX => "AF_UNIX",
        AddressFamily::INET => "AF_INET",
        AddressFamily::INET6 => "AF_INET6",
        AddressFamily::NETLINK => "AF_NETLINK",
        AddressFamily::PACKET => "AF_PACKET",
        AddressFamily::VSOCK => "AF_VSOCK",
        _ => "other",
    }
}

fn type_name(t: SocketType) -> &'static str {
    match t {
        SocketType::STREAM => "SOCK_STREAM",
        SocketType::DGRAM => "SOCK_DGRAM",
        SocketType::RAW => "SOCK_RAW",
        SocketType::SEQPACKET => "SOCK_SEQPACKET",
        SocketType::RDM => "SOCK_RDM",
        _ => "a socket of unknown type",
    }
}

#[cfg(test)]
mod tests;
