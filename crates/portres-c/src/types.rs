//! The Windows types, structures and constants of the C interface, with
//! Windows' names and layouts (the header `include/portres/winsock.h` is
//! generated from this file and the function signatures).
//!
//! Integer widths are Windows' (LLP64): `DWORD` and `ULONG` are 32 bits
//! (`unsigned int` here, since `unsigned long` is 64 bits on Linux),
//! `ULONG64` is 64 bits. `SOCKET` is a file descriptor (`int`).
#![allow(non_camel_case_types, non_snake_case)]

use std::ffi::{c_char, c_int, c_uchar, c_uint, c_ulonglong, c_ushort, c_void};

// The base types below are written in the header by hand (header/prelude.h,
// Windows' forms and order); cbindgen.toml excludes them.

/// An unsigned 8-bit integer.
pub type BYTE = c_uchar;
/// An unsigned 16-bit integer.
pub type WORD = c_ushort;
/// An unsigned 16-bit integer.
pub type USHORT = c_ushort;
/// An unsigned 32-bit integer (Windows' `DWORD`; `unsigned long` there,
/// which is 32 bits on Windows).
pub type DWORD = c_uint;
/// An unsigned 32-bit integer (Windows' `ULONG`).
pub type ULONG = c_uint;
/// An unsigned 64-bit integer.
pub type ULONG64 = c_ulonglong;
/// A pointer to a `ULONG64`.
pub type PULONG64 = *mut ULONG64;
/// A pointer to anything.
pub type LPVOID = *mut c_void;
/// A pointer to a `DWORD`.
pub type LPDWORD = *mut DWORD;
/// A socket: on Linux, a file descriptor.
pub type SOCKET = c_int;
/// An event handle of an overlapped operation (unused on Linux).
pub type WSAEVENT = *mut c_void;
/// A handle (unused on Linux but for its width).
pub type HANDLE = *mut c_void;
/// A pointer-sized unsigned integer.
pub type ULONG_PTR = usize;
/// A socket group of `WSASocket` (only 0, no group, is accepted).
pub type GROUP = c_uint;
/// `WSASocketW`'s protocol information: only NULL is accepted, so the
/// header declares the structure without its members.
pub type LPWSAPROTOCOL_INFOW = *mut c_void;
/// `WSASocketA`'s protocol information (see `LPWSAPROTOCOL_INFOW`).
pub type LPWSAPROTOCOL_INFOA = *mut c_void;

/// What `socket()` returns on failure. (In the header: header/prelude.h.)
pub const INVALID_SOCKET: SOCKET = -1;
/// What a Winsock function returns on failure (then see `WSAGetLastError`).
/// (In the header: header/prelude.h.)
pub const SOCKET_ERROR: c_int = -1;

/// Length of `WSADATA.szDescription` without its terminating NUL.
pub const WSADESCRIPTION_LEN: usize = 256;
/// Length of `WSADATA.szSystemStatus` without its terminating NUL.
pub const WSASYS_STATUS_LEN: usize = 128;

/// What `WSAStartup` reports (64-bit Windows layout).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct WSADATA {
    /// The Winsock version the caller should use (low byte major, high byte
    /// minor): the lower of the one requested and 2.2.
    pub wVersion: WORD,
    /// The highest version supported: 2.2.
    pub wHighVersion: WORD,
    /// Unused (0), as in Winsock 2.
    pub iMaxSockets: c_ushort,
    /// Unused (0), as in Winsock 2.
    pub iMaxUdpDg: c_ushort,
    /// Unused (NULL), as in Winsock 2.
    pub lpVendorInfo: *mut c_char,
    /// A NUL-terminated description of the implementation.
    pub szDescription: [c_char; 257],
    /// A NUL-terminated status string.
    pub szSystemStatus: [c_char; 129],
}

/// A pointer to a `WSADATA`.
pub type LPWSADATA = *mut WSADATA;

/// The overlapped-operation structure, with Win64's 32-byte layout (in
/// the header, `Offset`/`OffsetHigh` share an anonymous union with
/// `Pointer`, as in Windows). libportres completes every call synchronously
/// and never reads or writes it (see `WSAIoctl`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct OVERLAPPED {
    /// Reserved.
    pub Internal: ULONG_PTR,
    /// Reserved.
    pub InternalHigh: ULONG_PTR,
    /// Reserved (a file offset on Windows).
    pub Offset: DWORD,
    /// Reserved.
    pub OffsetHigh: DWORD,
    /// An event to signal at completion (not supported on Linux).
    pub hEvent: HANDLE,
}

/// Winsock's name of `OVERLAPPED`.
pub type WSAOVERLAPPED = OVERLAPPED;
/// A pointer to a `WSAOVERLAPPED`.
pub type LPWSAOVERLAPPED = *mut WSAOVERLAPPED;

/// A completion routine for overlapped operations (not supported: passing
/// one to `WSAIoctl` fails with `WSAEOPNOTSUPP`).
pub type LPWSAOVERLAPPED_COMPLETION_ROUTINE = Option<
    unsafe extern "C" fn(
        dwError: DWORD,
        cbTransferred: DWORD,
        lpOverlapped: LPWSAOVERLAPPED,
        dwFlags: DWORD,
    ),
>;

/// A block of ports: the input of `SIO_ACQUIRE_PORT_RESERVATION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct INET_PORT_RANGE {
    /// The first port, in network byte order (`htons(port)`); 0 asks for
    /// any free block.
    pub StartPort: USHORT,
    /// How many consecutive ports (host byte order).
    pub NumberOfPorts: USHORT,
}

/// A reserved block of ports (the same structure as `INET_PORT_RANGE`).
pub type INET_PORT_RESERVATION = INET_PORT_RANGE;

/// A reservation token: the input of `SIO_ASSOCIATE_PORT_RESERVATION` and
/// `SIO_RELEASE_PORT_RESERVATION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct INET_PORT_RESERVATION_TOKEN {
    /// The opaque, non-zero token.
    pub Token: ULONG64,
}

/// A reservation and its token: the output of
/// `SIO_ACQUIRE_PORT_RESERVATION` (16 bytes, the token at offset 8). The
/// header declares it as the Windows SDK does (header/trailer.h): named
/// members `Reservation` and `Token` in C++, anonymous ones in C (so C code
/// writes `res.StartPort`, `res.NumberOfPorts` and `res.Token`, a
/// `ULONG64`); cbindgen.toml excludes this definition.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct INET_PORT_RESERVATION_INSTANCE {
    /// The block reserved (`StartPort` in network byte order).
    pub Reservation: INET_PORT_RESERVATION,
    /// Its token.
    pub Token: INET_PORT_RESERVATION_TOKEN,
}

/// Information about a runtime reservation, as the Windows SDK declares
/// it (no libportres call fills it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct INET_PORT_RESERVATION_INFORMATION {
    /// The process that holds the reservation.
    pub OwningPid: ULONG,
}

const _: () = {
    assert!(std::mem::size_of::<INET_PORT_RANGE>() == 4);
    assert!(std::mem::size_of::<INET_PORT_RESERVATION_TOKEN>() == 8);
    assert!(std::mem::size_of::<INET_PORT_RESERVATION_INSTANCE>() == 16);
    assert!(std::mem::offset_of!(INET_PORT_RESERVATION_INSTANCE, Token) == 8);
    assert!(std::mem::size_of::<WSADATA>() == 408);
    // Win64: 32 bytes, hEvent at 24.
    assert!(std::mem::size_of::<WSAOVERLAPPED>() == 4 * std::mem::size_of::<usize>());
    assert!(std::mem::offset_of!(WSAOVERLAPPED, hEvent) == 3 * std::mem::size_of::<usize>());
    assert!(std::mem::size_of::<INET_PORT_RESERVATION_INFORMATION>() == 4);
};

// The WSAIoctl codes, TRUE/FALSE, INVALID_PORT_RESERVATION_TOKEN and the
// WSA_FLAG_* values are written in the header by hand (header/prelude.h, in
// Windows' form: _WSAIOW(IOC_VENDOR, 100) and so on); cbindgen.toml
// excludes them.

/// The token no reservation has.
pub const INVALID_PORT_RESERVATION_TOKEN: ULONG64 = 0;
/// `BOOL` true.
pub const TRUE: c_int = 1;
/// `BOOL` false.
pub const FALSE: c_int = 0;

/// `WSAIoctl` code: acquire a runtime reservation that lives as long as the
/// socket (`_WSAIOW(IOC_VENDOR, 100)`).
pub const SIO_ACQUIRE_PORT_RESERVATION: DWORD = 0x9800_0064;
/// `WSAIoctl` code: release a runtime reservation (`_WSAIOW(IOC_VENDOR, 101)`).
pub const SIO_RELEASE_PORT_RESERVATION: DWORD = 0x9800_0065;
/// `WSAIoctl` code: have the next `bind()` of the socket to port 0 take a
/// port of a reservation (`_WSAIOW(IOC_VENDOR, 102)`).
pub const SIO_ASSOCIATE_PORT_RESERVATION: DWORD = 0x9800_0066;
/// `WSAIoctl` code: TCP keep-alive on/off, idle time and interval in
/// milliseconds (`_WSAIOW(IOC_VENDOR, 4)`, input `struct tcp_keepalive`).
pub const SIO_KEEPALIVE_VALS: DWORD = 0x9800_0004;
/// `WSAIoctl` code: whether an ICMP port unreachable fails the next receive
/// of an unconnected UDP socket (`_WSAIOW(IOC_VENDOR, 12)`, input `BOOL`).
pub const SIO_UDP_CONNRESET: DWORD = 0x9800_000C;
/// `WSAIoctl` code: the same for an ICMP time exceeded
/// (`_WSAIOW(IOC_VENDOR, 15)`).
pub const SIO_UDP_NETRESET: DWORD = 0x9800_000F;
/// `WSAIoctl` code: the TCP loopback fast path (`_WSAIOW(IOC_VENDOR, 16)`).
pub const SIO_LOOPBACK_FAST_PATH: DWORD = 0x9800_0010;
/// `WSAIoctl` code: the processor whose queue should receive the socket's
/// packets (`_WSAIOW(IOC_VENDOR, 21)`, input `USHORT`); older SDKs call it
/// `SIO_SET_PORT_SHARING_PER_PROC_SOCKET`.
pub const SIO_CPU_AFFINITY: DWORD = 0x9800_0015;
/// `WSAIoctl` code: the base provider's socket (`_WSAIOR(IOC_WS2, 34)`).
pub const SIO_BASE_HANDLE: DWORD = 0x4800_0022;
/// `FIONBIO` as Windows numbers it (`_IOW('f', 126, u_long)`). The header
/// gives C Linux's `FIONBIO` (<sys/ioctl.h>), so that `ioctl()` keeps
/// working in the same program; `WSAIoctl` and `ioctlsocket` take both.
pub(crate) const FIONBIO_WINDOWS: DWORD = 0x8004_667E;
/// `FIONREAD` as Windows numbers it (`_IOR('f', 127, u_long)`).
pub(crate) const FIONREAD_WINDOWS: DWORD = 0x4004_667F;
/// Linux's `FIONBIO`.
pub(crate) const FIONBIO_LINUX: DWORD = libc::FIONBIO as DWORD;
/// Linux's `FIONREAD`.
pub(crate) const FIONREAD_LINUX: DWORD = libc::FIONREAD as DWORD;

/// `WSASocket` flag: the socket may be used for overlapped I/O (accepted
/// and ignored: every call here completes before it returns).
pub const WSA_FLAG_OVERLAPPED: DWORD = 0x01;
/// `WSASocket` flag: the socket is not inherited (`SOCK_CLOEXEC`).
pub const WSA_FLAG_NO_HANDLE_INHERIT: DWORD = 0x80;

/// Success (the persistent-reservation functions).
pub const NO_ERROR: ULONG = 0;
/// Not an administrator (nor, for lookups, the reservation's owner).
pub const ERROR_ACCESS_DENIED: ULONG = 5;
/// The daemon could not write the change to its store; nothing changed.
pub const ERROR_WRITE_FAULT: ULONG = 29;
/// The block overlaps a reservation or one of its ports is in use.
pub const ERROR_SHARING_VIOLATION: ULONG = 32;
/// A zero start port or count, a block past 65535, or a NULL token pointer.
pub const ERROR_INVALID_PARAMETER: ULONG = 87;
/// The portres daemon could not be reached.
pub const ERROR_SERVICE_NOT_ACTIVE: ULONG = 1062;
/// No persistent reservation of exactly this block.
pub const ERROR_NOT_FOUND: ULONG = 1168;
/// An unexpected failure.
pub const ERROR_INTERNAL_ERROR: ULONG = 1359;

/// Base of the Winsock error codes.
pub const WSABASEERR: c_int = 10000;
/// Interrupted function call.
pub const WSAEINTR: c_int = 10004;
/// Bad file handle.
pub const WSAEBADF: c_int = 10009;
/// Permission denied: a reservation of another session, a privileged port,
/// or a persistent reservation one may not use.
pub const WSAEACCES: c_int = 10013;
/// A bad pointer: NULL input or output buffer, NULL `lpcbBytesReturned`.
pub const WSAEFAULT: c_int = 10014;
/// An invalid argument: buffer too small, count 0, unknown token, socket
/// already bound, token of the other protocol.
pub const WSAEINVAL: c_int = 10022;
/// Too many open files.
pub const WSAEMFILE: c_int = 10024;
/// The operation would block.
pub const WSAEWOULDBLOCK: c_int = 10035;
/// An operation is in progress.
pub const WSAEINPROGRESS: c_int = 10036;
/// An operation is already in progress.
pub const WSAEALREADY: c_int = 10037;
/// Not a socket.
pub const WSAENOTSOCK: c_int = 10038;
/// Destination address required.
pub const WSAEDESTADDRREQ: c_int = 10039;
/// Message too long.
pub const WSAEMSGSIZE: c_int = 10040;
/// Wrong protocol type for socket.
pub const WSAEPROTOTYPE: c_int = 10041;
/// Bad protocol option.
pub const WSAENOPROTOOPT: c_int = 10042;
/// Protocol not supported.
pub const WSAEPROTONOSUPPORT: c_int = 10043;
/// Socket type not supported.
pub const WSAESOCKTNOSUPPORT: c_int = 10044;
/// Not supported: an unknown `WSAIoctl` code, a socket that is not TCP or
/// UDP over IPv4/IPv6, a completion routine.
pub const WSAEOPNOTSUPP: c_int = 10045;
/// Protocol family not supported.
pub const WSAEPFNOSUPPORT: c_int = 10046;
/// Address family not supported.
pub const WSAEAFNOSUPPORT: c_int = 10047;
/// Address in use: the block overlaps a reservation or a port in use, no
/// free block exists, or (from `bind`) every port of the block is bound.
pub const WSAEADDRINUSE: c_int = 10048;
/// Cannot assign the address: (from `bind`) the associated reservation no
/// longer exists.
pub const WSAEADDRNOTAVAIL: c_int = 10049;
/// The portres daemon could not be reached.
pub const WSAENETDOWN: c_int = 10050;
/// Network unreachable.
pub const WSAENETUNREACH: c_int = 10051;
/// Network dropped connection on reset.
pub const WSAENETRESET: c_int = 10052;
/// Software caused connection abort.
pub const WSAECONNABORTED: c_int = 10053;
/// Connection reset by peer.
pub const WSAECONNRESET: c_int = 10054;
/// No buffer space: the per-user quota of runtime ports would be exceeded.
pub const WSAENOBUFS: c_int = 10055;
/// Socket is already connected.
pub const WSAEISCONN: c_int = 10056;
/// Socket is not connected.
pub const WSAENOTCONN: c_int = 10057;
/// Cannot send after socket shutdown.
pub const WSAESHUTDOWN: c_int = 10058;
/// Too many references.
pub const WSAETOOMANYREFS: c_int = 10059;
/// Connection timed out.
pub const WSAETIMEDOUT: c_int = 10060;
/// Connection refused.
pub const WSAECONNREFUSED: c_int = 10061;
/// Cannot translate name.
pub const WSAELOOP: c_int = 10062;
/// Name too long.
pub const WSAENAMETOOLONG: c_int = 10063;
/// Host is down.
pub const WSAEHOSTDOWN: c_int = 10064;
/// No route to host.
pub const WSAEHOSTUNREACH: c_int = 10065;
/// Directory not empty.
pub const WSAENOTEMPTY: c_int = 10066;
/// Too many users.
pub const WSAEUSERS: c_int = 10068;
/// Disk quota exceeded.
pub const WSAEDQUOT: c_int = 10069;
/// Stale file handle reference.
pub const WSAESTALE: c_int = 10070;
/// Item is remote.
pub const WSAEREMOTE: c_int = 10071;
/// `WSAStartup`: the requested version is below 1.0.
pub const WSAVERNOTSUPPORTED: c_int = 10092;
/// `WSACleanup` without a matching `WSAStartup`.
pub const WSANOTINITIALISED: c_int = 10093;
/// A call that should never fail failed (an unexpected internal error).
pub const WSASYSCALLFAILURE: c_int = 10107;

/// An overlapped operation will complete later (never returned here: every
/// call completes before it returns).
pub const WSA_IO_PENDING: c_int = 997;
/// An overlapped operation is not complete yet (never returned here).
pub const WSA_IO_INCOMPLETE: c_int = 996;
/// An overlapped operation was cancelled (never returned here).
pub const WSA_OPERATION_ABORTED: c_int = 995;
