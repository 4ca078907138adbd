//! Private network namespaces, for tests (here and in other crates) and
//! benchmarks that must bind ports and write sysctls without touching the
//! machine's real network settings.
//!
//! This module owns entering a fresh namespace and making it usable
//! (loopback up). It is not used by the daemon in production.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use rustix::net::{AddressFamily, SocketFlags, SocketType};

/// Moves the CALLING THREAD into a fresh network namespace and brings
/// loopback up.
///
/// `unshare(CLONE_NEWNET)` acts on the calling thread only: network
/// namespaces are per thread, so threads and processes started afterwards
/// by this thread inherit the namespace, while other threads stay where
/// they were. Files under `/proc/sys/net` opened by this thread afterwards
/// are the new namespace's (but `/proc/net`, a link to `/proc/self/net`,
/// shows the main thread's). Each call makes another fresh namespace.
///
/// Needs CAP_SYS_ADMIN (root). Returns Err when not permitted so callers
/// can print a clear skip message.
pub fn enter_private_netns() -> io::Result<()> {
    // SAFETY: unshare(2) with only CLONE_NEWNET changes which network
    // namespace new sockets of this thread are created in. It does not
    // touch memory, and existing descriptors (including other threads')
    // keep working in the namespace they were created in.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("unshare(CLONE_NEWNET): {err}"),
        ));
    }
    loopback_up()
}

/// Sets IFF_UP on "lo". A new namespace has only loopback, and it is down:
/// binds to 127.0.0.1 fail and connections to it time out until it is up.
fn loopback_up() -> io::Result<()> {
    // The socket must be created after unshare: an ioctl acts on the
    // namespace of the socket, not of the thread.
    let socket: OwnedFd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::DGRAM,
        SocketFlags::CLOEXEC,
        None,
    )?;
    // SAFETY: ifreq is plain old data (a name array and a union of plain
    // fields); all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the interface named in `req.ifr_name`
    // (NUL-terminated) and writes its flags into `req`, which is a live,
    // writable ifreq; the socket is a valid descriptor.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut req) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("SIOCGIFFLAGS lo: {err}"),
        ));
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so the union holds the flags field.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the name and flags from `req`, a live,
    // initialised ifreq; the socket is a valid descriptor.
    let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &raw const req) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        return Err(io::Error::new(
            err.kind(),
            format!("SIOCSIFFLAGS lo: {err}"),
        ));
    }
    Ok(())
}
