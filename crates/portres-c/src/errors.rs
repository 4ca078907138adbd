//! Error reporting across the C boundary: the thread's last error (kept in
//! `errno`, so libc's socket calls and ours share one per-thread value), the
//! Linux errno → Winsock code table behind `WSAGetLastError`, and the
//! mapping of the daemon's error codes to errno values (Winsock functions,
//! `bind`) and to Win32 `ERROR_*` codes (persistent-reservation functions).

use std::cell::Cell;
use std::ffi::c_int;
use std::panic::{AssertUnwindSafe, catch_unwind};

use portres_client::ErrorCode;

use crate::types::*;

/// Sets the calling thread's `errno`.
pub(crate) fn set_errno(code: c_int) {
    errno::set_errno(errno::Errno(code));
}

/// The calling thread's `errno`.
pub(crate) fn get_errno() -> c_int {
    errno::errno().0
}

/// The Winsock code for a Linux errno value. Values from `WSABASEERR` up
/// (set by `WSASetLastError` or by libportres itself) pass unchanged; errno
/// values with no Winsock counterpart become `WSASYSCALLFAILURE`.
pub(crate) fn wsa_code(errno: c_int) -> c_int {
    if errno == 0 || errno >= WSABASEERR {
        return errno;
    }
    match errno {
        libc::EINTR => WSAEINTR,
        libc::EBADF | libc::ENOTSOCK => WSAENOTSOCK,
        libc::EACCES | libc::EPERM => WSAEACCES,
        libc::EFAULT => WSAEFAULT,
        libc::EINVAL => WSAEINVAL,
        libc::EMFILE | libc::ENFILE => WSAEMFILE,
        libc::EAGAIN => WSAEWOULDBLOCK,
        libc::EINPROGRESS => WSAEINPROGRESS,
        libc::EALREADY => WSAEALREADY,
        libc::EDESTADDRREQ => WSAEDESTADDRREQ,
        libc::EMSGSIZE => WSAEMSGSIZE,
        libc::EPROTOTYPE => WSAEPROTOTYPE,
        libc::ENOPROTOOPT => WSAENOPROTOOPT,
        libc::EPROTONOSUPPORT => WSAEPROTONOSUPPORT,
        libc::ESOCKTNOSUPPORT => WSAESOCKTNOSUPPORT,
        libc::EOPNOTSUPP => WSAEOPNOTSUPP,
        libc::EPFNOSUPPORT => WSAEPFNOSUPPORT,
        libc::EAFNOSUPPORT => WSAEAFNOSUPPORT,
        libc::EADDRINUSE => WSAEADDRINUSE,
        libc::EADDRNOTAVAIL => WSAEADDRNOTAVAIL,
        libc::ENETDOWN => WSAENETDOWN,
        libc::ENETUNREACH => WSAENETUNREACH,
        libc::ENETRESET => WSAENETRESET,
        libc::ECONNABORTED => WSAECONNABORTED,
        libc::ECONNRESET | libc::EPIPE => WSAECONNRESET,
        libc::ENOBUFS | libc::ENOMEM => WSAENOBUFS,
        libc::EISCONN => WSAEISCONN,
        libc::ENOTCONN => WSAENOTCONN,
        libc::ESHUTDOWN => WSAESHUTDOWN,
        libc::ETOOMANYREFS => WSAETOOMANYREFS,
        libc::ETIMEDOUT => WSAETIMEDOUT,
        libc::ECONNREFUSED => WSAECONNREFUSED,
        libc::ELOOP => WSAELOOP,
        libc::ENAMETOOLONG => WSAENAMETOOLONG,
        libc::EHOSTDOWN => WSAEHOSTDOWN,
        libc::EHOSTUNREACH => WSAEHOSTUNREACH,
        libc::ENOTEMPTY => WSAENOTEMPTY,
        libc::EUSERS => WSAEUSERS,
        libc::EDQUOT => WSAEDQUOT,
        libc::ESTALE => WSAESTALE,
        libc::EREMOTE => WSAEREMOTE,
        _ => WSASYSCALLFAILURE,
    }
}

/// The errno value a Winsock function (or `bind`) reports for a daemon
/// error. `WSAGetLastError` turns it into the Winsock code noted.
pub(crate) fn errno_for(code: ErrorCode) -> c_int {
    match code {
        // WSAEINVAL
        ErrorCode::InvalidParameter | ErrorCode::NotFound | ErrorCode::AlreadyBound => libc::EINVAL,
        // WSAEADDRINUSE
        ErrorCode::SharingViolation | ErrorCode::NoFreeBlock | ErrorCode::BlockExhausted => {
            libc::EADDRINUSE
        }
        // WSAEACCES
        ErrorCode::AccessDenied => libc::EACCES,
        // WSAENOBUFS
        ErrorCode::QuotaExceeded => libc::ENOBUFS,
        // WSAENOTSOCK
        ErrorCode::NotASocket => libc::ENOTSOCK,
        // WSAEOPNOTSUPP
        ErrorCode::NotSupported | ErrorCode::WrongNamespace => libc::EOPNOTSUPP,
        // WSAENETDOWN: no daemon this process may talk to
        ErrorCode::DaemonUnavailable | ErrorCode::DaemonUntrusted => libc::ENETDOWN,
        // WSASYSCALLFAILURE (codes added to the wire later included)
        _ => libc::EIO,
    }
}

/// The `ERROR_*` code a persistent-reservation function returns for a
/// daemon error.
pub(crate) fn win32_code(code: ErrorCode) -> ULONG {
    match code {
        ErrorCode::InvalidParameter => ERROR_INVALID_PARAMETER,
        ErrorCode::SharingViolation => ERROR_SHARING_VIOLATION,
        ErrorCode::AccessDenied => ERROR_ACCESS_DENIED,
        ErrorCode::NotFound => ERROR_NOT_FOUND,
        ErrorCode::DaemonUnavailable | ErrorCode::DaemonUntrusted => ERROR_SERVICE_NOT_ACTIVE,
        ErrorCode::StoreUnavailable => ERROR_WRITE_FAULT,
        // Internal, and codes that cannot come from these calls.
        _ => ERROR_INTERNAL_ERROR,
    }
}

thread_local! {
    /// How many exported libportres functions this thread is inside.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Whether this thread is running libportres code: then a call of one of
/// the interposed socket functions (`connect`, `sendmsg`, ... on the daemon
/// connection) comes from libportres itself and must go straight to libc.
pub(crate) fn inside_libportres() -> bool {
    DEPTH.with(|d| d.get() != 0)
}

/// Runs `f`, never letting a panic cross into C: a panic yields
/// `on_panic()` instead (a bug in libportres; the panic message has already
/// gone to stderr). While `f` runs, `inside_libportres()` is true on this
/// thread.
pub(crate) fn guard<R>(on_panic: impl FnOnce() -> R, f: impl FnOnce() -> R) -> R {
    struct Inside;
    impl Drop for Inside {
        fn drop(&mut self) {
            DEPTH.with(|d| d.set(d.get() - 1));
        }
    }
    DEPTH.with(|d| d.set(d.get() + 1));
    let inside = Inside;
    let r = catch_unwind(AssertUnwindSafe(f));
    drop(inside);
    match r {
        Ok(r) => r,
        Err(_) => on_panic(),
    }
}

/// The `on_panic` of Winsock-style functions: `SOCKET_ERROR` with
/// `WSASYSCALLFAILURE`.
pub(crate) fn socket_error_on_panic() -> c_int {
    set_errno(WSASYSCALLFAILURE);
    SOCKET_ERROR
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_errno_we_set_maps_to_a_winsock_code() {
        let codes: Vec<c_int> = ErrorCode::ALL
            .into_iter()
            .map(|c| wsa_code(errno_for(c)))
            .collect();
        for c in &codes {
            assert!(*c >= WSABASEERR, "{c}");
        }
        assert_eq!(wsa_code(libc::EINVAL), WSAEINVAL);
        assert_eq!(wsa_code(libc::EADDRINUSE), WSAEADDRINUSE);
        assert_eq!(wsa_code(libc::EACCES), WSAEACCES);
        assert_eq!(wsa_code(libc::EFAULT), WSAEFAULT);
        assert_eq!(wsa_code(libc::ENOTSOCK), WSAENOTSOCK);
        assert_eq!(wsa_code(libc::EBADF), WSAENOTSOCK);
        assert_eq!(wsa_code(libc::EOPNOTSUPP), WSAEOPNOTSUPP);
        assert_eq!(wsa_code(libc::ENETDOWN), WSAENETDOWN);
        assert_eq!(wsa_code(WSANOTINITIALISED), WSANOTINITIALISED);
        assert_eq!(wsa_code(0), 0);
        assert_eq!(wsa_code(libc::EIO), WSASYSCALLFAILURE);
    }

    #[test]
    fn persistent_codes_are_windows_codes() {
        assert_eq!(win32_code(ErrorCode::AccessDenied), 5);
        assert_eq!(win32_code(ErrorCode::SharingViolation), 32);
        assert_eq!(win32_code(ErrorCode::InvalidParameter), 87);
        assert_eq!(win32_code(ErrorCode::NotFound), 1168);
    }

    #[test]
    fn guard_turns_a_panic_into_the_error_value() {
        let r = guard(|| -7, || -> i32 { panic!("boom") });
        assert_eq!(r, -7);
        assert!(!inside_libportres(), "a panic leaves the thread outside");
        assert!(guard(|| false, || guard(|| false, inside_libportres)));
        assert!(!inside_libportres());
    }
}
