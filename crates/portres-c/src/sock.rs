//! Looking at the descriptors C hands us: is it an open socket, which one is
//! it (so a closed and reused descriptor number is never mistaken for the
//! socket it used to be), is it TCP or UDP over IPv4/IPv6, is it bound.

use std::ffi::c_int;
use std::os::fd::BorrowedFd;

use portres_client::Protocol;
use rustix::fs::FileType;
use rustix::net::{AddressFamily, SocketType, ipproto};

/// The identity of an open socket: its inode in the socket filesystem.
/// Unlike the descriptor number, it is not reused while we remember it
/// under a descriptor that still refers to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SockId {
    dev: u64,
    ino: u64,
}

/// Borrows descriptor `fd` for the duration of one call from C; `ENOTSOCK`
/// if it is not an open descriptor (Winsock reports an invalid handle as
/// not a socket).
pub(crate) fn borrow(fd: c_int) -> Result<BorrowedFd<'static>, c_int> {
    if fd < 0 {
        return Err(libc::ENOTSOCK);
    }
    // SAFETY: F_GETFD takes no pointer; any integer is a valid argument and
    // an unopened one only yields EBADF.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(libc::ENOTSOCK);
    }
    // SAFETY: `fd` is open (checked just above). It belongs to the C caller,
    // who passed it to us for the duration of this call and, as with any
    // system call on a descriptor, must not close it concurrently; we never
    // close it through this borrow nor keep the borrow past the call.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

/// The identity of `fd` if it is an open socket, `None` otherwise.
pub(crate) fn sock_id(fd: c_int) -> Option<SockId> {
    let b = borrow(fd).ok()?;
    let st = rustix::fs::fstat(b).ok()?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
        return None;
    }
    Some(SockId {
        dev: st.st_dev,
        ino: st.st_ino,
    })
}

/// An open socket: its borrow and identity, or `ENOTSOCK`.
pub(crate) fn socket(fd: c_int) -> Result<(BorrowedFd<'static>, SockId), c_int> {
    let b = borrow(fd)?;
    let id = sock_id(fd).ok_or(libc::ENOTSOCK)?;
    Ok((b, id))
}

/// The reservation protocol of a TCP or UDP socket over IPv4 or IPv6;
/// `EOPNOTSUPP` for any other socket (Unix, raw, SCTP, MPTCP, ...).
pub(crate) fn protocol(fd: BorrowedFd<'_>) -> Result<Protocol, c_int> {
    let unsupported = |_| libc::EOPNOTSUPP;
    let domain = rustix::net::sockopt::socket_domain(fd).map_err(unsupported)?;
    if domain != AddressFamily::INET && domain != AddressFamily::INET6 {
        return Err(libc::EOPNOTSUPP);
    }
    let ty = rustix::net::sockopt::socket_type(fd).map_err(unsupported)?;
    let proto = rustix::net::sockopt::socket_protocol(fd).map_err(unsupported)?;
    match (ty, proto) {
        (SocketType::STREAM, Some(p)) if p == ipproto::TCP => Ok(Protocol::Tcp),
        (SocketType::DGRAM, Some(p)) if p == ipproto::UDP => Ok(Protocol::Udp),
        _ => Err(libc::EOPNOTSUPP),
    }
}

/// Whether an IPv4/IPv6 socket is bound to a port already.
pub(crate) fn is_bound(fd: BorrowedFd<'_>) -> bool {
    rustix::net::getsockname(fd)
        .ok()
        .and_then(|a| std::net::SocketAddr::try_from(a).ok())
        .is_some_and(|a| a.port() != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn classifies_descriptors() {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let udp = std::net::UdpSocket::bind("[::1]:0").unwrap();
        let (unix, _) = std::os::unix::net::UnixStream::pair().unwrap();
        let file = std::fs::File::open("/dev/null").unwrap();
        let (b, id) = socket(tcp.as_raw_fd()).unwrap();
        assert_eq!(protocol(b), Ok(Protocol::Tcp));
        assert!(is_bound(b));
        assert_ne!(Some(id), sock_id(udp.as_raw_fd()));
        assert_eq!(
            protocol(borrow(udp.as_raw_fd()).unwrap()),
            Ok(Protocol::Udp)
        );
        assert_eq!(
            protocol(borrow(unix.as_raw_fd()).unwrap()),
            Err(libc::EOPNOTSUPP)
        );
        assert_eq!(socket(file.as_raw_fd()).err(), Some(libc::ENOTSOCK));
        assert_eq!(socket(-1).err(), Some(libc::ENOTSOCK));
        assert_eq!(socket(1 << 20).err(), Some(libc::ENOTSOCK));
    }
}
