//! The `bind()` interposer: a program linked with libportres calls this
//! `bind` instead of libc's (the executable and libportres come before libc
//! in symbol resolution, whether libportres is linked as `libportres.so` or
//! `libportres.a`). A socket associated with a reservation by
//! `SIO_ASSOCIATE_PORT_RESERVATION` and bound to port 0 is bound by the
//! daemon to a free port of the reservation; every other call goes to the
//! next `bind` in line (libc's), untouched.

use std::ffi::{CStr, c_int, c_void};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::BorrowedFd;
use std::sync::OnceLock;

use portres_client::ErrorCode;

use crate::errors::{errno_for, guard, inside_libportres, set_errno};
use crate::sock;
use crate::state::{self, Assoc, state, with_default};

type BindFn = unsafe extern "C" fn(c_int, *const libc::sockaddr, libc::socklen_t) -> c_int;

/// The definition of a libc function that follows ours in symbol resolution
/// (libc's, or another interposer's), looked up once with
/// `dlsym(RTLD_NEXT)`. `None` when there is none (a fully static program
/// without dlsym): the caller then makes the system call itself.
pub(crate) struct NextSymbol {
    name: &'static CStr,
    found: OnceLock<Option<usize>>,
}

impl NextSymbol {
    pub(crate) const fn new(name: &'static CStr) -> NextSymbol {
        NextSymbol {
            name,
            found: OnceLock::new(),
        }
    }

    /// The address of the next definition; `ours` is this library's own
    /// (never returned, so a lookup that finds ourselves cannot recurse).
    pub(crate) fn get(&self, ours: *mut c_void) -> Option<*mut c_void> {
        let found = *self.found.get_or_init(|| {
            // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name has no
            // other precondition.
            let p = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr()) };
            (!p.is_null() && p != ours).then_some(p as usize)
        });
        found.map(|p| p as *mut c_void)
    }
}

static NEXT_BIND: NextSymbol = NextSymbol::new(c"bind");

fn real_bind(fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> c_int {
    match NEXT_BIND.get(bind as BindFn as *mut c_void) {
        // SAFETY: the symbol named "bind" after ours is libc's bind (or
        // another interposer of it), whose type is BindFn; the caller's
        // arguments are passed on unchanged to it, and it validates them as
        // the kernel does.
        Some(p) => unsafe { std::mem::transmute::<*mut c_void, BindFn>(p)(fd, addr, len) },
        // A fully static program without dlsym: the system call itself.
        // SAFETY: as above; the kernel validates the arguments.
        None => unsafe { libc::syscall(libc::SYS_bind, fd, addr, len) as c_int },
    }
}

/// What an associated socket's bind asks for.
pub(crate) enum Target {
    /// Port 0: a port of the reservation, at this address.
    Reserved(IpAddr),
    /// A specific port, or not an IPv4/IPv6 address: the ordinary bind.
    Ordinary,
}

/// Reads the address the way the kernel would, for the cases we handle.
///
/// # Safety
/// `addr` is NULL or points to `len` readable bytes.
pub(crate) unsafe fn target(
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> Result<Target, c_int> {
    if addr.is_null() {
        return Err(libc::EFAULT);
    }
    let len = len as usize;
    if len < std::mem::size_of::<libc::sa_family_t>() {
        return Err(libc::EINVAL);
    }
    // SAFETY: at least the family's bytes are readable (len checked).
    let family = unsafe { std::ptr::read_unaligned(&raw const (*addr).sa_family) };
    match c_int::from(family) {
        libc::AF_INET => {
            if len < std::mem::size_of::<libc::sockaddr_in>() {
                return Err(libc::EINVAL);
            }
            // SAFETY: a whole sockaddr_in is readable (len checked).
            let sin = unsafe { std::ptr::read_unaligned(addr as *const libc::sockaddr_in) };
            if sin.sin_port != 0 {
                return Ok(Target::Ordinary);
            }
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Ok(Target::Reserved(IpAddr::V4(ip)))
        }
        libc::AF_INET6 => {
            // The kernel accepts the RFC 2133 size (without sin6_scope_id).
            const RFC2133: usize = 24;
            if len < RFC2133 {
                return Err(libc::EINVAL);
            }
            let mut sin6: libc::sockaddr_in6 = {
                // SAFETY: sockaddr_in6 is plain data; all zeroes is valid.
                unsafe { std::mem::zeroed() }
            };
            let n = len.min(std::mem::size_of::<libc::sockaddr_in6>());
            // SAFETY: `n` bytes are readable at addr (n <= len) and fit in sin6.
            unsafe {
                std::ptr::copy_nonoverlapping(addr as *const u8, (&raw mut sin6) as *mut u8, n)
            };
            if sin6.sin6_port != 0 {
                return Ok(Target::Ordinary);
            }
            if sin6.sin6_scope_id != 0 {
                // The daemon binds by address alone: a scoped (link-local)
                // address cannot be honoured.
                return Err(libc::EINVAL);
            }
            Ok(Target::Reserved(IpAddr::V6(Ipv6Addr::from(
                sin6.sin6_addr.s6_addr,
            ))))
        }
        _ => Ok(Target::Ordinary),
    }
}

/// `bind(2)`, interposed. For a socket associated with a reservation by
/// `SIO_ASSOCIATE_PORT_RESERVATION` and an IPv4/IPv6 address with port 0,
/// the daemon binds the socket to that address and a free port of the
/// reservation (read it back with `getsockname`); the association is then
/// used up. Errors (errno; `WSAGetLastError` gives the Winsock code):
/// every port of the block bound → `EADDRINUSE` (`WSAEADDRINUSE`); the
/// reservation no longer exists (released, or its daemon stopped) →
/// `EADDRNOTAVAIL`; not allowed →
/// `EACCES`; the daemon cannot be reached → `ENETDOWN`; a scoped IPv6
/// address → `EINVAL`. On failure the association stays.
///
/// Any other call — a socket never associated, a specific port, another
/// address family — is libc's `bind`, unchanged (a successful bind to a
/// specific port also ends the association).
///
/// # Safety
/// As `bind(2)`: `addr` points to `len` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn bind(
    fd: c_int,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> c_int {
    if !state::any_association() || inside_libportres() {
        return real_bind(fd, addr, len);
    }
    guard(
        || {
            set_errno(libc::EIO);
            -1
        },
        || {
            let Some(assoc) = state().association(fd) else {
                return real_bind(fd, addr, len);
            };
            // SAFETY: the caller's contract for `addr` and `len`.
            let target = match unsafe { target(addr, len) } {
                Ok(t) => t,
                Err(e) => {
                    set_errno(e);
                    return -1;
                }
            };
            let ip = match target {
                Target::Ordinary => {
                    let r = real_bind(fd, addr, len);
                    if r == 0 {
                        state().dissociate(fd);
                    }
                    return r;
                }
                Target::Reserved(ip) => ip,
            };
            let Ok(borrowed) = sock::borrow(fd) else {
                set_errno(libc::EBADF);
                return -1;
            };
            match bind_reserved(fd, assoc, borrowed, ip) {
                Ok(()) => 0,
                Err(e) => {
                    set_errno(e);
                    -1
                }
            }
        },
    )
}

/// Has the daemon bind socket `fd` (associated as `assoc`) to `ip` and a
/// free port of the reservation, and ends the association. The errno
/// values are `bind`'s: every port bound → `EADDRINUSE`; the reservation
/// no longer exists → `EADDRNOTAVAIL`; not allowed → `EACCES`; no daemon →
/// `ENETDOWN`. On failure the association stays.
pub(crate) fn bind_reserved(
    fd: c_int,
    assoc: Assoc,
    borrowed: BorrowedFd<'_>,
    ip: IpAddr,
) -> Result<(), c_int> {
    // The session that acquired the token, else the default connection
    // (persistent reservations; portres exec's).
    let holder = state()
        .holder_of(assoc.token)
        .map(|(fd, s)| (fd, s.client.clone()));
    let result = match holder {
        Some((holder_fd, c)) => {
            let r = c.bind_fd(assoc.token, borrowed, ip);
            if matches!(&r, Err(e) if e.code == ErrorCode::DaemonUnavailable) {
                // That session died with its daemon, and with it the
                // reservation.
                let dead = state().sessions.remove(&holder_fd);
                state::end_sessions(dead.into_iter().collect());
                return Err(libc::EADDRNOTAVAIL);
            }
            r
        }
        None => with_default(|c| c.bind_fd(assoc.token, borrowed, ip)),
    };
    match result {
        Ok(_port) => {
            state().dissociate(fd);
            Ok(())
        }
        Err(e) => Err(match e.code {
            ErrorCode::NotFound => libc::EADDRNOTAVAIL,
            code => errno_for(code),
        }),
    }
}
