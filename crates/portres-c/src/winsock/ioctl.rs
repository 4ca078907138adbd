//! `WSAIoctl`: one control call read and checked (`Ioctl`), then run:
//! the three port reservation codes (done in `reservation`) and the socket
//! controls Windows code relies on, the Linux way.

use std::ffi::c_int;
use std::os::fd::BorrowedFd;
use std::ptr;

use portres_client::Protocol;

use super::reservation::{acquire, associate, release, token};
use crate::errors::{guard, set_errno, socket_error_on_panic};
use crate::sock;
use crate::state;
use crate::types::*;

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
