//! The Winsock functions: `WSAStartup`, `WSACleanup`, `WSAGetLastError`,
//! `WSASetLastError`, `closesocket`, `ioctlsocket`, `WSASocketA`/`W`; and
//! (in `ioctl`) `WSAIoctl` with the three port reservation control codes.

use std::ffi::{c_char, c_int, c_long, c_ulong};
use std::ptr;

use portres_client::Error;

use crate::errors::{errno_for, get_errno, guard, set_errno, socket_error_on_panic, wsa_code};
use crate::sock;
use crate::state::{self, end_sessions, ops, state};
use crate::types::*;

mod ioctl;
mod reservation;

pub use ioctl::WSAIoctl;

/// Marks an errno value < `WSABASEERR` that `WSASetLastError` stored
/// verbatim, so `WSAGetLastError` returns it unchanged.
const VERBATIM: c_int = 0x4000_0000;

fn errno_of(e: Error) -> c_int {
    errno_for(e.code)
}

/// Initialises Winsock use by the program. Negotiates the version (the
/// lower of `wVersionRequested` and 2.2; below 1.0 fails with
/// `WSAVERNOTSUPPORTED`) and fills `*lpWSAData`. Returns 0, or the error
/// code itself (`WSAEFAULT` for a NULL `lpWSAData`); it does not set the
/// last error. Does not contact the daemon (that happens on first use).
///
/// # Safety
/// `lpWSAData` is NULL or points to a writable `WSADATA`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSAStartup(wVersionRequested: WORD, lpWSAData: LPWSADATA) -> c_int {
    guard(
        || WSASYSCALLFAILURE,
        || {
            if lpWSAData.is_null() {
                return WSAEFAULT;
            }
            let [major, minor] = wVersionRequested.to_le_bytes();
            let (major, minor) = if (major, minor) > (2, 2) {
                (2, 2)
            } else {
                (major, minor)
            };
            let mut data = WSADATA {
                wVersion: WORD::from_le_bytes([major, minor]),
                wHighVersion: WORD::from_le_bytes([2, 2]),
                iMaxSockets: 0,
                iMaxUdpDg: 0,
                lpVendorInfo: ptr::null_mut(),
                szDescription: [0; 257],
                szSystemStatus: [0; 129],
            };
            copy_c_str(
                &mut data.szDescription,
                concat!(
                    "portres ",
                    env!("CARGO_PKG_VERSION"),
                    ": the Windows port reservation API on Linux"
                ),
            );
            copy_c_str(&mut data.szSystemStatus, "Running");
            // SAFETY: non-NULL (checked) and, by the caller's contract,
            // points to a writable WSADATA; unaligned writes are allowed.
            unsafe { ptr::write_unaligned(lpWSAData, data) };
            if (major, minor) < (1, 0) {
                return WSAVERNOTSUPPORTED;
            }
            state().startups += 1;
            0
        },
    )
}

fn copy_c_str(dst: &mut [c_char], s: &str) {
    let room = dst.len() - 1;
    for (d, b) in dst.iter_mut().zip(s.bytes().take(room)) {
        *d = b as c_char;
    }
}

/// Ends a `WSAStartup`. The call matching the first `WSAStartup` ends every
/// runtime reservation the program acquired (as Windows does by closing
/// every socket) and forgets every association; the sockets themselves stay
/// open. Without a matching `WSAStartup`: `SOCKET_ERROR`,
/// `WSANOTINITIALISED`.
#[unsafe(no_mangle)]
pub extern "C" fn WSACleanup() -> c_int {
    guard(socket_error_on_panic, || {
        let _ops = ops();
        let ended = {
            let mut st = state();
            if st.startups == 0 {
                drop(st);
                set_errno(WSANOTINITIALISED);
                return SOCKET_ERROR;
            }
            st.startups -= 1;
            if st.startups == 0 {
                st.take_all()
            } else {
                Vec::new()
            }
        };
        end_sessions(ended);
        0
    })
}

/// The calling thread's last error as a Winsock code. It is kept in
/// `errno`, so it also reports failures of libc's socket functions
/// (`socket`, `bind`, `getsockname`, ...): Linux errno values are translated
/// to their `WSAE*` counterparts (`EINVAL` → `WSAEINVAL`, `EBADF` and
/// `ENOTSOCK` → `WSAENOTSOCK`, ...); values set with `WSASetLastError` are
/// returned as set; errno values without a counterpart give
/// `WSASYSCALLFAILURE`.
#[unsafe(no_mangle)]
pub extern "C" fn WSAGetLastError() -> c_int {
    guard(
        || WSASYSCALLFAILURE,
        || {
            let e = get_errno();
            if e > 0 && e & VERBATIM != 0 {
                e & !VERBATIM
            } else if e < 0 {
                e
            } else {
                wsa_code(e)
            }
        },
    )
}

/// Sets the calling thread's last error (its `errno`).
#[unsafe(no_mangle)]
pub extern "C" fn WSASetLastError(iError: c_int) {
    guard(
        || (),
        || {
            if iError > 0 && iError < WSABASEERR {
                set_errno(iError | VERBATIM);
            } else {
                set_errno(iError);
            }
        },
    )
}

/// libportres' own extension (Windows has no such call): acquires a
/// runtime reservation of one port for socket `s` — as
/// `SIO_ACQUIRE_PORT_RESERVATION` with `StartPort` 0 and `NumberOfPorts` 1
/// on `s`, so it lives as long as `s` — and has the daemon bind `s` to the
/// address in `name` (port 0; IPv4 or IPv6, the socket's family) and that
/// port, in one call to the daemon instead of three (acquire, associate,
/// bind). Writes the reservation to `*lpReservation` unless it is NULL.
/// Returns 0, or `SOCKET_ERROR` with `WSAGetLastError`: `WSAENOTSOCK` (not
/// an open socket), `WSAEOPNOTSUPP` (not TCP/UDP), `WSAEFAULT` (`name`
/// NULL), `WSAEINVAL` (`name` too short, a port other than 0, another
/// family than IPv4/IPv6 or than the socket's, a scoped IPv6 address, not
/// an address of this host, the socket already bound), `WSAEADDRINUSE`
/// (no free port), `WSAEACCES`, `WSAENOBUFS` (quota), `WSAENETDOWN` (no
/// daemon). On failure nothing is reserved and `s` is left unbound.
///
/// # Safety
/// `name` is NULL or points to `namelen` readable bytes; `lpReservation`
/// is NULL or points to a writable `INET_PORT_RESERVATION_INSTANCE`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn PortresAcquireAndBind(
    s: SOCKET,
    name: *const libc::sockaddr,
    namelen: c_int,
    lpReservation: *mut std::ffi::c_void,
) -> c_int {
    guard(socket_error_on_panic, || {
        let run = || -> Result<INET_PORT_RESERVATION_INSTANCE, c_int> {
            let (fd, id) = sock::socket(s)?;
            let protocol = sock::protocol(fd)?;
            let len = libc::socklen_t::try_from(namelen).map_err(|_| libc::EINVAL)?;
            // SAFETY: the caller's contract for `name` and `namelen`.
            let ip = match unsafe { crate::bind::target(name, len) }? {
                crate::bind::Target::Reserved(ip) => ip,
                crate::bind::Target::Ordinary => return Err(libc::EINVAL),
            };
            if sock::is_bound(fd) {
                return Err(libc::EINVAL);
            }
            state::sweep();
            reservation::acquire_and_bind(s, id, protocol, fd, ip)
        };
        match run() {
            Ok(out) => {
                if !lpReservation.is_null() {
                    // SAFETY: the caller's contract: writable when not NULL.
                    unsafe {
                        ptr::write_unaligned(
                            lpReservation.cast::<INET_PORT_RESERVATION_INSTANCE>(),
                            out,
                        )
                    };
                }
                0
            }
            Err(e) => {
                set_errno(e);
                SOCKET_ERROR
            }
        }
    })
}

/// Closes socket `s`. Runtime reservations acquired on `s` end first
/// (released by the time this returns), and any association of `s` is
/// forgotten. Not a socket (or not open): `SOCKET_ERROR`, `WSAENOTSOCK`,
/// and nothing is closed.
///
/// Use it, not `close()`, for sockets passed to `WSAIoctl`: after a plain
/// `close()` the reservations acquired on the socket are only released the
/// next time libportres notices (its next `WSAIoctl` or `closesocket` call)
/// or at process exit.
#[unsafe(no_mangle)]
pub extern "C" fn closesocket(s: SOCKET) -> c_int {
    guard(socket_error_on_panic, || {
        if let Err(e) = sock::socket(s) {
            set_errno(e);
            return SOCKET_ERROR;
        }
        {
            let _ops = ops();
            let ended = {
                let mut st = state();
                st.dissociate(s);
                st.sessions.remove(&s)
            };
            end_sessions(ended.into_iter().collect());
        }
        // Sockets closed with close() since: end their sessions too.
        state::sweep();
        // SAFETY: close takes no pointer; `s` is the caller's descriptor,
        // which the caller asked us to close.
        if unsafe { libc::close(s) } < 0 {
            return SOCKET_ERROR; // errno set by close
        }
        0
    })
}

/// Controls socket `s` the BSD way: `FIONBIO` (non-blocking mode on if
/// `*argp` is not 0) and `FIONREAD` (`*argp` = the bytes ready to read),
/// with Linux's values of the codes (<sys/ioctl.h>) or Windows'. Returns 0,
/// or `SOCKET_ERROR` with `WSAENOTSOCK` (not an open socket), `WSAEFAULT`
/// (`argp` NULL) or `WSAEOPNOTSUPP` (another code).
///
/// # Safety
/// `argp` is NULL or points to a readable and writable `u_long`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn ioctlsocket(s: SOCKET, cmd: c_long, argp: *mut c_ulong) -> c_int {
    guard(socket_error_on_panic, || {
        let result = (|| {
            let (fd, _) = sock::socket(s)?;
            // Windows' long is 32 bits: its codes arrive sign-extended.
            let code = cmd as DWORD;
            if !matches!(
                code,
                FIONBIO_WINDOWS | FIONBIO_LINUX | FIONREAD_WINDOWS | FIONREAD_LINUX
            ) {
                return Err(libc::EOPNOTSUPP);
            }
            if argp.is_null() {
                return Err(libc::EFAULT);
            }
            let os = |e: rustix::io::Errno| e.raw_os_error();
            if code == FIONBIO_WINDOWS || code == FIONBIO_LINUX {
                // SAFETY: non-NULL (checked) and, by the caller's contract,
                // a readable u_long; unaligned reads are allowed.
                let on = unsafe { ptr::read_unaligned(argp) } != 0;
                rustix::io::ioctl_fionbio(fd, on).map_err(os)
            } else {
                let n = rustix::io::ioctl_fionread(fd).map_err(os)?;
                // SAFETY: non-NULL (checked) and, by the caller's contract,
                // a writable u_long; unaligned writes are allowed.
                unsafe { ptr::write_unaligned(argp, n as c_ulong) };
                Ok(())
            }
        })();
        match result {
            Ok(()) => 0,
            Err(e) => {
                set_errno(e);
                SOCKET_ERROR
            }
        }
    })
}

/// Creates a socket, as `socket(af, type, protocol)`. `dwFlags`:
/// `WSA_FLAG_OVERLAPPED` is accepted and ignored (every call here completes
/// before it returns, as for `lpOverlapped`); `WSA_FLAG_NO_HANDLE_INHERIT`
/// makes the socket close-on-exec. Fails with `INVALID_SOCKET` and
/// `WSAEINVAL` for a non-NULL `lpProtocolInfo`, a group other than 0 or any
/// other flag; otherwise as `socket()` (`WSAEAFNOSUPPORT`, ...).
/// `lpProtocolInfo` is only compared with NULL.
#[unsafe(no_mangle)]
pub extern "C" fn WSASocketW(
    af: c_int,
    r#type: c_int,
    protocol: c_int,
    lpProtocolInfo: LPWSAPROTOCOL_INFOW,
    g: GROUP,
    dwFlags: DWORD,
) -> SOCKET {
    wsa_socket(af, r#type, protocol, lpProtocolInfo.is_null(), g, dwFlags)
}

/// `WSASocketW` (the protocol information, which would differ, must be
/// NULL).
#[unsafe(no_mangle)]
pub extern "C" fn WSASocketA(
    af: c_int,
    r#type: c_int,
    protocol: c_int,
    lpProtocolInfo: LPWSAPROTOCOL_INFOA,
    g: GROUP,
    dwFlags: DWORD,
) -> SOCKET {
    wsa_socket(af, r#type, protocol, lpProtocolInfo.is_null(), g, dwFlags)
}

fn wsa_socket(
    af: c_int,
    ty: c_int,
    protocol: c_int,
    no_info: bool,
    group: GROUP,
    flags: DWORD,
) -> SOCKET {
    guard(
        || {
            set_errno(WSASYSCALLFAILURE);
            INVALID_SOCKET
        },
        || {
            let known = WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT;
            if !no_info || group != 0 || flags & !known != 0 {
                set_errno(libc::EINVAL);
                return INVALID_SOCKET;
            }
            let cloexec = if flags & WSA_FLAG_NO_HANDLE_INHERIT != 0 {
                libc::SOCK_CLOEXEC
            } else {
                0
            };
            // SAFETY: socket takes no pointers.
            unsafe { libc::socket(af, ty | cloexec, protocol) }
        },
    )
}
