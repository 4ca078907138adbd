//! The calls that bind a socket implicitly, interposed like `bind`:
//! `connect`, `listen`, and (on a UDP socket, or with `MSG_FASTOPEN`)
//! `sendto`, `sendmsg` and `sendmmsg`. On Windows a socket associated with
//! a reservation by `SIO_ASSOCIATE_PORT_RESERVATION` takes its port from
//! the reservation however it gets bound, explicitly or not: a program may
//! associate and then connect, and its source port is one of the block (a
//! Windows NFS client reserves 600–1023 that way). Here an associated,
//! still unbound socket is first bound by the daemon into the reservation,
//! at the wildcard address of its family, then the call proceeds to libc.
//! Every other call goes to libc untouched; with no association in the
//! process that costs one atomic load.

use std::ffi::{c_int, c_uint, c_void};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustix::net::{AddressFamily, SocketType};

use crate::bind::{NextSymbol, bind_reserved};
use crate::errors::{guard, inside_libportres, set_errno};
use crate::sock;
use crate::state::{self, state};

/// Which sockets a call binds implicitly.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Binds {
    /// Any socket (`connect`, `listen`).
    Any,
    /// Only a datagram socket; a stream socket only when sending with
    /// `MSG_FASTOPEN` (which connects it). A send on an unconnected TCP
    /// socket fails without binding, so it must not use the association up.
    Datagram { fastopen: bool },
}

impl Binds {
    /// What a send with `flags` binds.
    fn send(flags: c_int) -> Binds {
        Binds::Datagram {
            fastopen: flags & libc::MSG_FASTOPEN != 0,
        }
    }
}

/// Binds socket `fd` into its associated reservation if it has one and is
/// still unbound. `Err(errno)` as `bind`'s (then the call must fail without
/// reaching libc); `Ok` when done or when there was nothing to do (not
/// associated, already bound, not IPv4/IPv6: the call proceeds unchanged).
fn bind_if_associated(fd: c_int, binds: Binds) -> Result<(), c_int> {
    let Some(assoc) = state().association(fd) else {
        return Ok(());
    };
    // An invalid descriptor is the real call's to report.
    let Ok(borrowed) = sock::borrow(fd) else {
        return Ok(());
    };
    if sock::is_bound(borrowed) {
        return Ok(());
    }
    if let Binds::Datagram { fastopen } = binds {
        let stream =
            rustix::net::sockopt::socket_type(borrowed).is_ok_and(|t| t == SocketType::STREAM);
        if stream && !fastopen {
            return Ok(());
        }
    }
    let ip = match rustix::net::sockopt::socket_domain(borrowed) {
        Ok(AddressFamily::INET) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Ok(AddressFamily::INET6) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        _ => return Ok(()),
    };
    bind_reserved(fd, assoc, borrowed, ip)
}

/// Runs `real` after binding `fd` into its association if `binds` says the
/// call would bind it; fails with `bind`'s errno (returning `failed`)
/// otherwise.
fn after_implicit_bind<R: Copy>(fd: c_int, binds: Binds, failed: R, real: impl FnOnce() -> R) -> R {
    guard(
        || {
            set_errno(libc::EIO);
            failed
        },
        || match bind_if_associated(fd, binds) {
            Ok(()) => real(),
            Err(e) => {
                set_errno(e);
                failed
            }
        },
    )
}

/// Whether the call must go straight to libc: no association in the
/// process (one atomic load), or libportres itself is calling (its daemon
/// connection).
fn passthrough() -> bool {
    !state::any_association() || inside_libportres()
}

type ConnectFn = unsafe extern "C" fn(c_int, *const libc::sockaddr, libc::socklen_t) -> c_int;
type ListenFn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type SendtoFn = unsafe extern "C" fn(
    c_int,
    *const c_void,
    libc::size_t,
    c_int,
    *const libc::sockaddr,
    libc::socklen_t,
) -> libc::ssize_t;
type SendmsgFn = unsafe extern "C" fn(c_int, *const libc::msghdr, c_int) -> libc::ssize_t;
type SendmmsgFn = unsafe extern "C" fn(c_int, *mut libc::mmsghdr, c_uint, c_int) -> c_int;

static NEXT_CONNECT: NextSymbol = NextSymbol::new(c"connect");
static NEXT_LISTEN: NextSymbol = NextSymbol::new(c"listen");
static NEXT_SENDTO: NextSymbol = NextSymbol::new(c"sendto");
static NEXT_SENDMSG: NextSymbol = NextSymbol::new(c"sendmsg");
static NEXT_SENDMMSG: NextSymbol = NextSymbol::new(c"sendmmsg");

fn real_connect(fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> c_int {
    match NEXT_CONNECT.get(connect as ConnectFn as *mut c_void) {
        // SAFETY: the next "connect" has connect's type; the caller's
        // arguments pass unchanged to it, which validates them as the
        // kernel does.
        Some(p) => unsafe { std::mem::transmute::<*mut c_void, ConnectFn>(p)(fd, addr, len) },
        // SAFETY: as above; the kernel validates the arguments.
        None => unsafe { libc::syscall(libc::SYS_connect, fd, addr, len) as c_int },
    }
}

fn real_listen(fd: c_int, backlog: c_int) -> c_int {
    match NEXT_LISTEN.get(listen as ListenFn as *mut c_void) {
        // SAFETY: the next "listen" has listen's type; no pointers.
        Some(p) => unsafe { std::mem::transmute::<*mut c_void, ListenFn>(p)(fd, backlog) },
        // SAFETY: no pointers; the kernel validates the arguments.
        None => unsafe { libc::syscall(libc::SYS_listen, fd, backlog) as c_int },
    }
}

fn real_sendto(
    fd: c_int,
    buf: *const c_void,
    len: libc::size_t,
    flags: c_int,
    addr: *const libc::sockaddr,
    addrlen: libc::socklen_t,
) -> libc::ssize_t {
    match NEXT_SENDTO.get(sendto as SendtoFn as *mut c_void) {
        // SAFETY: the next "sendto" has sendto's type; the caller's
        // arguments pass unchanged to it.
        Some(p) => unsafe {
            std::mem::transmute::<*mut c_void, SendtoFn>(p)(fd, buf, len, flags, addr, addrlen)
        },
        // SAFETY: as above; the kernel validates the arguments.
        None => unsafe {
            libc::syscall(libc::SYS_sendto, fd, buf, len, flags, addr, addrlen) as libc::ssize_t
        },
    }
}

fn real_sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> libc::ssize_t {
    match NEXT_SENDMSG.get(sendmsg as SendmsgFn as *mut c_void) {
        // SAFETY: the next "sendmsg" has sendmsg's type; the caller's
        // arguments pass unchanged to it.
        Some(p) => unsafe { std::mem::transmute::<*mut c_void, SendmsgFn>(p)(fd, msg, flags) },
        // SAFETY: as above; the kernel validates the arguments.
        None => unsafe { libc::syscall(libc::SYS_sendmsg, fd, msg, flags) as libc::ssize_t },
    }
}

fn real_sendmmsg(fd: c_int, msgs: *mut libc::mmsghdr, vlen: c_uint, flags: c_int) -> c_int {
    match NEXT_SENDMMSG.get(sendmmsg as SendmmsgFn as *mut c_void) {
        // SAFETY: the next "sendmmsg" has sendmmsg's type; the caller's
        // arguments pass unchanged to it.
        Some(p) => unsafe {
            std::mem::transmute::<*mut c_void, SendmmsgFn>(p)(fd, msgs, vlen, flags)
        },
        // SAFETY: as above; the kernel validates the arguments.
        None => unsafe { libc::syscall(libc::SYS_sendmmsg, fd, msgs, vlen, flags) as c_int },
    }
}

/// `connect(2)`, interposed. A socket associated with a reservation and
/// still unbound is first bound by the daemon to the wildcard address of
/// its family and a free port of the reservation (the association is then
/// used up), so the connection's source port is one of the block. If that
/// bind fails, `connect` fails with `bind`'s errno (`EADDRINUSE`,
/// `EADDRNOTAVAIL`, `EACCES`, `ENETDOWN`; `WSAGetLastError` gives the
/// Winsock code) and the association stays. A NULL or short address,
/// `AF_UNSPEC` (dissolving a UDP socket's association with its peer) and
/// every other socket go to libc unchanged.
///
/// # Safety
/// As `connect(2)`: `addr` points to `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect(
    fd: c_int,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> c_int {
    if passthrough() {
        return real_connect(fd, addr, len);
    }
    // No address (the kernel's EFAULT/EINVAL to report) or AF_UNSPEC: the
    // call binds nothing, so it must not use the association up.
    if addr.is_null() || (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return real_connect(fd, addr, len);
    }
    // SAFETY: the family's bytes are readable (len checked), by the
    // caller's contract.
    let family = unsafe { std::ptr::read_unaligned(&raw const (*addr).sa_family) };
    if c_int::from(family) == libc::AF_UNSPEC {
        return real_connect(fd, addr, len);
    }
    after_implicit_bind(fd, Binds::Any, -1, || real_connect(fd, addr, len))
}

/// `listen(2)`, interposed: an associated, still unbound socket is first
/// bound into its reservation, as by `connect`.
#[unsafe(no_mangle)]
pub extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    if passthrough() {
        return real_listen(fd, backlog);
    }
    after_implicit_bind(fd, Binds::Any, -1, || real_listen(fd, backlog))
}

/// `sendto(2)`, interposed: an associated, still unbound UDP socket (or a
/// TCP socket sending with `MSG_FASTOPEN`) is first bound into its
/// reservation, as by `connect`.
///
/// # Safety
/// As `sendto(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: libc::size_t,
    flags: c_int,
    addr: *const libc::sockaddr,
    addrlen: libc::socklen_t,
) -> libc::ssize_t {
    if passthrough() {
        return real_sendto(fd, buf, len, flags, addr, addrlen);
    }
    after_implicit_bind(fd, Binds::send(flags), -1, || {
        real_sendto(fd, buf, len, flags, addr, addrlen)
    })
}

/// `sendmsg(2)`, interposed, as `sendto`.
///
/// # Safety
/// As `sendmsg(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmsg(
    fd: c_int,
    msg: *const libc::msghdr,
    flags: c_int,
) -> libc::ssize_t {
    if passthrough() {
        return real_sendmsg(fd, msg, flags);
    }
    after_implicit_bind(fd, Binds::send(flags), -1, || real_sendmsg(fd, msg, flags))
}

/// `sendmmsg(2)`, interposed, as `sendto`.
///
/// # Safety
/// As `sendmmsg(2)`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sendmmsg(
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    vlen: c_uint,
    flags: c_int,
) -> c_int {
    if passthrough() {
        return real_sendmmsg(fd, msgs, vlen, flags);
    }
    after_implicit_bind(fd, Binds::send(flags), -1, || {
        real_sendmmsg(fd, msgs, vlen, flags)
    })
}
