//! The stable error codes every interface (wire, CLI, client library, C API)
//! speaks, each with a human message. (Their varlink names on the wire are
//! `portres_proto::error_name`.)

use std::fmt;
use std::str::FromStr;

/// Why a request was refused. The string forms (`as_str`) are a contract:
/// scripts and other languages' clients match on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// A parameter is out of range or malformed: count 0, start 0 where a
    /// start is required, a block past 65535, an unknown protocol, a bad
    /// address, a malformed request.
    InvalidParameter,
    /// The block overlaps another reservation of the same protocol, or one of
    /// its ports is in use right now (Windows' ERROR_SHARING_VIOLATION).
    SharingViolation,
    /// The caller may not do this: not admin, not the holder, not the owner.
    AccessDenied,
    /// No reservation matches the token or block.
    NotFound,
    /// A wildcard acquire found no free block of that size in the dynamic range.
    NoFreeBlock,
    /// The caller's runtime quota would be exceeded.
    QuotaExceeded,
    /// Every port of the block is bound: nothing left to bind into.
    BlockExhausted,
    /// The descriptor passed for binding is not a socket (or none was passed).
    NotASocket,
    /// The socket is not a TCP or UDP socket of IPv4 or IPv6.
    NotSupported,
    /// The socket is already bound.
    AlreadyBound,
    /// The socket belongs to another network namespace than the daemon's.
    WrongNamespace,
    /// The daemon could not be reached.
    DaemonUnavailable,
    /// Client side only, never sent by a daemon: the socket or the daemon
    /// answering on it failed the client's trust checks (a user-mode socket
    /// or its directory not the caller's, a daemon not running as the
    /// caller or root); the client sent it nothing.
    DaemonUntrusted,
    /// The durable store could not record the change (disk full, read-only);
    /// nothing was changed.
    StoreUnavailable,
    /// An unexpected failure inside the daemon; nothing was changed.
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and exhaustive tests.
    pub const ALL: [ErrorCode; 15] = [
        ErrorCode::InvalidParameter,
        ErrorCode::SharingViolation,
        ErrorCode::AccessDenied,
        ErrorCode::NotFound,
        ErrorCode::NoFreeBlock,
        ErrorCode::QuotaExceeded,
        ErrorCode::BlockExhausted,
        ErrorCode::NotASocket,
        ErrorCode::NotSupported,
        ErrorCode::AlreadyBound,
        ErrorCode::WrongNamespace,
        ErrorCode::DaemonUnavailable,
        ErrorCode::DaemonUntrusted,
        ErrorCode::StoreUnavailable,
        ErrorCode::Internal,
    ];

    /// The stable snake_case string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidParameter => "invalid_parameter",
            ErrorCode::SharingViolation => "sharing_violation",
            ErrorCode::AccessDenied => "access_denied",
            ErrorCode::NotFound => "not_found",
            ErrorCode::NoFreeBlock => "no_free_block",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::BlockExhausted => "block_exhausted",
            ErrorCode::NotASocket => "not_a_socket",
            ErrorCode::NotSupported => "not_supported",
            ErrorCode::AlreadyBound => "already_bound",
            ErrorCode::WrongNamespace => "wrong_namespace",
            ErrorCode::DaemonUnavailable => "daemon_unavailable",
            ErrorCode::DaemonUntrusted => "daemon_untrusted",
            ErrorCode::StoreUnavailable => "store_unavailable",
            ErrorCode::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ErrorCode {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        ErrorCode::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or(())
    }
}

/// A refusal: a stable code and a message for humans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong, for a human.
    pub message: String,
}

impl Error {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Error {
        Error {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_names() {
        for code in ErrorCode::ALL {
            assert_eq!(code.as_str().parse::<ErrorCode>(), Ok(code));
        }
    }
}
