//! The Winsock functions: `WSAStartup`, `WSACleanup`, `WSAGetLastError`,
//! `WSASetLastError`, `closesocket`, and `WSAIoctl` with the three port
//! reservation control codes.

use std::ffi::{c_char, c_int, c_long, c_ulong};
use std::os::fd::BorrowedFd;
use std::ptr;

use portres_client::{Error, ErrorCode, Protocol, Token};

use crate::errors::{errno_for, get_errno, guard, set_errno, socket_error_on_panic, wsa_code};
use crate::sock::{self, SockId};
use crate::state::{self, Session, end_sessions, new_session_client, ops, state, with_default};
use crate::types::*;

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

/// Performs a control operation on socket `s`: the port reservation codes
/// `SIO_ACQUIRE_PORT_RESERVATION`, `SIO_RELEASE_PORT_RESERVATION` and
/// `SIO_ASSOCIATE_PORT_RESERVATION`, as Windows documents them; and the
/// socket controls Windows code relies on, done the Linux way: `FIONBIO`,
/// `FIONREAD`, `SIO_KEEPALIVE_VALS` (TCP: `SO_KEEPALIVE`, `TCP_KEEPIDLE`,
/// `TCP_KEEPINTVL` in whole seconds), `SIO_CPU_AFFINITY` (`SO_INCOMING_CPU`),
/// `SIO_BASE_HANDLE` (`s` itself), and `SIO_UDP_CONNRESET`,
/// `SIO_UDP_NETRESET` (UDP) and `SIO_LOOPBACK_FAST_PATH` (TCP), accepted
/// with nothing to do on Linux. For those: `WSAEFAULT` without the input
/// or output buffer they need, `WSAEINVAL` for one too small or a socket
/// of another protocol; the byte count is the output's size (0 without
/// output).
///
/// For the port reservation codes, returns 0, or `SOCKET_ERROR` with the
/// error for `WSAGetLastError`:
/// - `WSAENOTSOCK`: `s` is not an open socket;
/// - `WSAEOPNOTSUPP`: another control code; `s` is not a TCP or UDP socket
///   over IPv4/IPv6; a completion routine was given;
/// - `WSAEFAULT`: `lpcbBytesReturned` is NULL (without `lpOverlapped`),
///   `lpvInBuffer` is NULL, or (acquire) `lpvOutBuffer` is NULL;
/// - `WSAEINVAL`: `cbInBuffer` smaller than the input structure; (acquire)
///   `cbOutBuffer` smaller than `INET_PORT_RESERVATION_INSTANCE`;
///   (associate, release) `cbOutBuffer` not 0; a count of 0 or a block past
///   65535; token 0, released (also: ended with a stopped daemon) or
///   unknown (associate: as an administrator);
///   (associate) `s` is already bound, or the token is of the other
///   protocol; (release) a persistent reservation's token;
/// - `WSAEADDRINUSE`: (acquire) the block overlaps a reservation or a port
///   in use, or no free block of that size exists;
/// - `WSAEACCES`: a runtime block below the unprivileged port start without
///   being an administrator; (release) a reservation of another process;
///   (associate, not an administrator) a token this user may not use or
///   that does not exist: the daemon does not tell which;
/// - `WSAENOBUFS`: the per-user runtime quota would be exceeded;
/// - `WSAENETDOWN`: the portres daemon cannot be reached.
///
/// On failure `*lpcbBytesReturned` is 0. On success it is the number of
/// bytes of the structure used: 16 (`INET_PORT_RESERVATION_INSTANCE`
/// written) for acquire, 8 (the token read) for release and associate —
/// never 0.
///
/// A runtime reservation lives as long as socket `s`: until
/// `SIO_RELEASE_PORT_RESERVATION`, `closesocket(s)`, the final
/// `WSACleanup`, or process exit. Its StartPort is in network byte order.
///
/// Overlapped I/O: every call completes before returning. `lpOverlapped`
/// is ignored (as for a socket without the overlapped attribute: no event
/// is signalled and the structure is not touched); a completion routine
/// cannot be honoured and fails with `WSAEOPNOTSUPP`.
///
/// # Safety
/// As on Windows: `lpvInBuffer` points to `cbInBuffer` readable bytes,
/// `lpvOutBuffer` to `cbOutBuffer` writable bytes, `lpcbBytesReturned` to a
/// writable `DWORD` (each may be NULL, which is reported as above).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn WSAIoctl(
    s: SOCKET,
    dwIoControlCode: DWORD,
    lpvInBuffer: LPVOID,
    cbInBuffer: DWORD,
    lpvOutBuffer: LPVOID,
    cbOutBuffer: DWORD,
    lpcbBytesReturned: LPDWORD,
    lpOverlapped: LPWSAOVERLAPPED,
    lpCompletionRoutine: LPWSAOVERLAPPED_COMPLETION_ROUTINE,
) -> c_int {
    let report = |n: DWORD| {
        if !lpcbBytesReturned.is_null() {
            // SAFETY: non-NULL and, by the caller's contract, a writable
            // DWORD; unaligned writes are allowed.
            unsafe { ptr::write_unaligned(lpcbBytesReturned, n) };
        }
    };
    let on_panic = || {
        report(0);
        socket_error_on_panic()
    };
    guard(on_panic, || {
        report(0);
        let input: Option<[u8; 16]> = (!lpvInBuffer.is_null()).then(|| {
            let mut buf = [0u8; 16];
            let n = (cbInBuffer as usize).min(buf.len());
            // SAFETY: non-NULL and, by the caller's contract, cbInBuffer
            // readable bytes; we read at most that many.
            unsafe { ptr::copy_nonoverlapping(lpvInBuffer as *const u8, buf.as_mut_ptr(), n) };
            buf
        });
        let call = Ioctl {
            s,
            code: dwIoControlCode,
            input,
            cb_in: cbInBuffer,
            has_out: !lpvOutBuffer.is_null(),
            cb_out: cbOutBuffer,
            has_count: !lpcbBytesReturned.is_null(),
            overlapped: !lpOverlapped.is_null(),
            completion: lpCompletionRoutine.is_some(),
        };
        match call.run() {
            Ok((n, out)) => {
                // `run` returns output only after checking that
                // lpvOutBuffer is non-NULL and cbOutBuffer is at least the
                // output's size.
                match out {
                    Out::None => {}
                    // SAFETY: as just said; unaligned writes are allowed.
                    Out::Instance(out) => unsafe {
                        ptr::write_unaligned(
                            lpvOutBuffer as *mut INET_PORT_RESERVATION_INSTANCE,
                            out,
                        )
                    },
                    // SAFETY: as just said; unaligned writes are allowed.
                    Out::U32(v) => unsafe { ptr::write_unaligned(lpvOutBuffer as *mut u32, v) },
                    // SAFETY: as just said; unaligned writes are allowed.
                    Out::U64(v) => unsafe { ptr::write_unaligned(lpvOutBuffer as *mut u64, v) },
                    // SAFETY: as just said; unaligned writes are allowed.
                    Out::Socket(v) => unsafe {
                        ptr::write_unaligned(lpvOutBuffer as *mut SOCKET, v)
                    },
                }
                report(n);
                0
            }
            Err(e) => {
                set_errno(e);
                SOCKET_ERROR
            }
        }
    })
}

/// One `WSAIoctl` call, its pointers already read or checked.
struct Ioctl {
    s: SOCKET,
    code: DWORD,
    /// The first (up to) 16 bytes of the input buffer, if not NULL.
    input: Option<[u8; 16]>,
    cb_in: DWORD,
    has_out: bool,
    cb_out: DWORD,
    has_count: bool,
    overlapped: bool,
    completion: bool,
}

const INSTANCE_SIZE: DWORD = std::mem::size_of::<INET_PORT_RESERVATION_INSTANCE>() as DWORD;
const RANGE_SIZE: DWORD = std::mem::size_of::<INET_PORT_RANGE>() as DWORD;
const TOKEN_SIZE: DWORD = std::mem::size_of::<INET_PORT_RESERVATION_TOKEN>() as DWORD;

/// What a successful call writes to the output buffer.
enum Out {
    None,
    Instance(INET_PORT_RESERVATION_INSTANCE),
    U32(u32),
    U64(u64),
    Socket(SOCKET),
}

/// The byte count for `*lpcbBytesReturned`, and the output.
type Output = (DWORD, Out);

/// `struct tcp_keepalive`: on/off, idle time and interval (milliseconds).
const KEEPALIVE_SIZE: DWORD = 12;

impl Ioctl {
    fn run(&self) -> Result<Output, c_int> {
        let (fd, id) = sock::socket(self.s)?;
        if !matches!(
            self.code,
            SIO_ACQUIRE_PORT_RESERVATION
                | SIO_RELEASE_PORT_RESERVATION
                | SIO_ASSOCIATE_PORT_RESERVATION
        ) {
            return self.socket_control(fd);
        }
        let need_in = match self.code {
            SIO_ACQUIRE_PORT_RESERVATION => RANGE_SIZE,
            SIO_RELEASE_PORT_RESERVATION | SIO_ASSOCIATE_PORT_RESERVATION => TOKEN_SIZE,
            _ => return Err(libc::EOPNOTSUPP),
        };
        if self.completion {
            return Err(libc::EOPNOTSUPP);
        }
        let protocol = sock::protocol(fd)?;
        if !self.has_count && !self.overlapped {
            return Err(libc::EFAULT);
        }
        let Some(input) = self.input else {
            return Err(libc::EFAULT);
        };
        if self.cb_in < need_in {
            return Err(libc::EINVAL);
        }
        if self.code == SIO_ACQUIRE_PORT_RESERVATION {
            if self.cb_out < INSTANCE_SIZE {
                return Err(libc::EINVAL);
            }
            if !self.has_out {
                return Err(libc::EFAULT);
            }
        } else if self.cb_out != 0 {
            return Err(libc::EINVAL);
        }
        state::sweep();
        match self.code {
            SIO_ACQUIRE_PORT_RESERVATION => {
                let start = u16::from_be_bytes([input[0], input[1]]);
                let count = u16::from_ne_bytes([input[2], input[3]]);
                let out = acquire(self.s, id, protocol, start, count)?;
                Ok((INSTANCE_SIZE, Out::Instance(out)))
            }
            SIO_RELEASE_PORT_RESERVATION => {
                release(token(input)?)?;
                Ok((TOKEN_SIZE, Out::None))
            }
            _ => {
                if sock::is_bound(fd) {
                    return Err(libc::EINVAL);
                }
                associate(self.s, id, protocol, token(input)?)?;
                Ok((TOKEN_SIZE, Out::None))
            }
        }
    }

    /// The other control codes: those Windows code commonly treats as fatal
    /// when they fail, each done the Linux way or, where Linux has nothing
    /// to do, accepted; every other code is `EOPNOTSUPP`.
    fn socket_control(&self, fd: BorrowedFd<'_>) -> Result<Output, c_int> {
        // (input bytes needed, output bytes needed)
        let (need_in, need_out) = match self.code {
            FIONBIO_WINDOWS | FIONBIO_LINUX => (4, 0),
            FIONREAD_WINDOWS | FIONREAD_LINUX | SIO_BASE_HANDLE => (0, 4),
            SIO_KEEPALIVE_VALS => (KEEPALIVE_SIZE, 0),
            SIO_CPU_AFFINITY => (2, 0),
            SIO_UDP_CONNRESET | SIO_UDP_NETRESET | SIO_LOOPBACK_FAST_PATH => (1, 0),
            _ => return Err(libc::EOPNOTSUPP),
        };
        if self.completion {
            return Err(libc::EOPNOTSUPP);
        }
        if !self.has_count && !self.overlapped {
            return Err(libc::EFAULT);
        }
        let input = self.input.unwrap_or_default();
        if need_in > 0 {
            if self.input.is_none() {
                return Err(libc::EFAULT);
            }
            if self.cb_in < need_in {
                return Err(libc::EINVAL);
            }
        }
        if need_out > 0 {
            if !self.has_out {
                return Err(libc::EFAULT);
            }
            if self.cb_out < need_out {
                return Err(libc::EINVAL);
            }
        }
        let word = |at: usize| {
            u32::from_ne_bytes([input[at], input[at + 1], input[at + 2], input[at + 3]])
        };
        let os = |e: rustix::io::Errno| e.raw_os_error();
        match self.code {
            FIONBIO_WINDOWS | FIONBIO_LINUX => {
                // A u_long: 32 bits on Windows, 64 here; any non-zero byte
                // of it is "on", whatever the size and byte order.
                let size = (self.cb_in as usize).min(8);
                let on = input[..size].iter().any(|b| *b != 0);
                rustix::io::ioctl_fionbio(fd, on).map_err(os)?;
                Ok((0, Out::None))
            }
            FIONREAD_WINDOWS | FIONREAD_LINUX => {
                let n = rustix::io::ioctl_fionread(fd).map_err(os)?;
                if self.cb_out >= 8 {
                    // Room for a Linux u_long.
                    Ok((8, Out::U64(n)))
                } else {
                    Ok((4, Out::U32(u32::try_from(n).unwrap_or(u32::MAX))))
                }
            }
            // There is no layered provider: the socket is its own base.
            SIO_BASE_HANDLE => Ok((4, Out::Socket(self.s))),
            SIO_KEEPALIVE_VALS => {
                if sock::protocol(fd)? != Protocol::Tcp {
                    return Err(libc::EINVAL);
                }
                keepalive(fd, word(0) != 0, word(4), word(8)).map_err(os)?;
                Ok((0, Out::None))
            }
            SIO_CPU_AFFINITY => {
                // Windows steers the socket's packets to this processor's
                // queue (per-processor sockets sharing a port); Linux's
                // counterpart is SO_INCOMING_CPU, which also picks the
                // member of a SO_REUSEPORT group.
                sock::protocol(fd)?;
                let cpu = u16::from_ne_bytes([input[0], input[1]]);
                rustix::net::sockopt::set_socket_incoming_cpu(fd, u32::from(cpu)).map_err(os)?;
                Ok((0, Out::None))
            }
            // Linux never fails an unconnected UDP socket's receive because
            // of an ICMP error (Windows' behaviour with FALSE); nothing to do.
            SIO_UDP_CONNRESET | SIO_UDP_NETRESET => {
                if sock::protocol(fd)? != Protocol::Udp {
                    return Err(libc::EINVAL);
                }
                Ok((0, Out::None))
            }
            // Linux's loopback needs no fast path to be fast; nothing to do.
            _ => {
                if sock::protocol(fd)? != Protocol::Tcp {
                    return Err(libc::EINVAL);
                }
                Ok((0, Out::None))
            }
        }
    }
}

/// `SIO_KEEPALIVE_VALS` the Linux way: `SO_KEEPALIVE`, and the idle time
/// and interval (milliseconds there, whole seconds here, at least 1 and at
/// most Linux's 32767).
fn keepalive(
    fd: BorrowedFd<'_>,
    on: bool,
    idle_ms: u32,
    interval_ms: u32,
) -> rustix::io::Result<()> {
    use rustix::net::sockopt;
    let secs =
        |ms: u32| std::time::Duration::from_secs(u64::from(ms.div_ceil(1000).clamp(1, 32767)));
    if on {
        sockopt::set_tcp_keepidle(fd, secs(idle_ms))?;
        sockopt::set_tcp_keepintvl(fd, secs(interval_ms))?;
    }
    sockopt::set_socket_keepalive(fd, on)
}

fn token(input: [u8; 16]) -> Result<Token, c_int> {
    let [a, b, c, d, e, f, g, h, ..] = input;
    Token::new(u64::from_ne_bytes([a, b, c, d, e, f, g, h])).ok_or(libc::EINVAL)
}

fn acquire(
    s: SOCKET,
    id: SockId,
    protocol: Protocol,
    start: u16,
    count: u16,
) -> Result<INET_PORT_RESERVATION_INSTANCE, c_int> {
    if count == 0 || u32::from(start) + u32::from(count) - 1 > 65535 {
        return Err(libc::EINVAL);
    }
    let _ops = ops();
    let existing = state()
        .sessions
        .get(&s)
        .filter(|x| x.id == id)
        .map(|x| x.client.clone());
    let attempt = |client: &portres_client::Client| client.acquire(protocol, start, count);
    let (client, res) = match existing {
        Some(c) => match attempt(&c) {
            // The daemon went away (and its reservations with it): this
            // socket's session is over; start a new one.
            Err(e) if e.code == ErrorCode::DaemonUnavailable => {
                let dead = state().sessions.remove(&s);
                drop(dead);
                let c = new_session_client().map_err(errno_of)?;
                let r = attempt(&c);
                (c, r)
            }
            r => (c, r),
        },
        None => {
            let c = new_session_client().map_err(errno_of)?;
            let r = attempt(&c);
            (c, r)
        }
    };
    let res = res.map_err(errno_of)?;
    let (start, count) = (res.start(), res.count());
    let token = res.keep();
    let replaced = {
        let mut st = state();
        let fresh = || Session {
            id,
            client: client.clone(),
            held: Vec::new(),
        };
        let session = st.sessions.entry(s).or_insert_with(fresh);
        // An entry for an earlier socket under this number (closed with
        // close() since the sweep) must not adopt the new reservation.
        let replaced = (session.id != id).then(|| std::mem::replace(session, fresh()));
        session.held.push((token, protocol));
        replaced
    };
    end_sessions(replaced.into_iter().collect());
    Ok(INET_PORT_RESERVATION_INSTANCE {
        Reservation: INET_PORT_RANGE {
            StartPort: start.to_be(),
            NumberOfPorts: count,
        },
        Token: INET_PORT_RESERVATION_TOKEN { Token: token.get() },
    })
}

fn release(token: Token) -> Result<(), c_int> {
    let _ops = ops();
    let holder = state()
        .holder_of(token)
        .map(|(fd, s)| (fd, s.client.clone()));
    let Some((fd, client)) = holder else {
        // Not acquired by this process: perhaps one of a session whose
        // capability we hold (portres exec).
        return with_default(|c| c.release(token)).map_err(errno_of);
    };
    let result = client.release(token);
    let failure = result.as_ref().err().map(|e| e.code);
    let ended = {
        let mut st = state();
        match failure {
            // The session's connection is dead (the daemon stopped or
            // restarted): so are all its reservations.
            Some(ErrorCode::DaemonUnavailable) => st.sessions.remove(&fd),
            // Released now, or gone already: forget it.
            None | Some(ErrorCode::NotFound) => {
                let empty = st.sessions.get_mut(&fd).is_some_and(|s| {
                    s.held.retain(|(t, _)| *t != token);
                    s.held.is_empty()
                });
                if empty { st.sessions.remove(&fd) } else { None }
            }
            Some(_) => None,
        }
    };
    end_sessions(ended.into_iter().collect());
    match result {
        Ok(()) => Ok(()),
        // The reservation no longer exists.
        Err(e) if e.code == ErrorCode::DaemonUnavailable || e.code == ErrorCode::NotFound => {
            Err(libc::EINVAL)
        }
        Err(e) => Err(errno_of(e)),
    }
}

fn associate(s: SOCKET, id: SockId, protocol: Protocol, token: Token) -> Result<(), c_int> {
    let local = state()
        .holder_of(token)
        .and_then(|(_, sess)| sess.held.iter().find(|(t, _)| *t == token).map(|(_, p)| *p));
    let found = match local {
        Some(p) => p,
        None => {
            // Not ours: the daemon shows a reservation's token only to those
            // who may use it (an administrator or the owner for persistent
            // ones, the session or holders of its capability for runtime).
            let all = with_default(|c| c.list(None)).map_err(errno_of)?;
            match all.into_iter().find(|r| r.token == Some(token)) {
                Some(r) => r.protocol,
                None => {
                    // Either no such reservation or not ours to use; the
                    // daemon does not tell a non-administrator which.
                    let admin = with_default(|c| c.status())
                        .map_err(errno_of)?
                        .you_are_admin;
                    return Err(if admin { libc::EINVAL } else { libc::EACCES });
                }
            }
        }
    };
    if found != protocol {
        return Err(libc::EINVAL);
    }
    state().associate(s, id, token);
    Ok(())
}
