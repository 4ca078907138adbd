//! The varlink names of portres' errors (`io.portres.SharingViolation`):
//! the wire's spelling of each `ErrorCode` (whose snake_case `as_str` is
//! the spelling every other interface uses).

use portres_core::ErrorCode;

/// The varlink error name of `code` on the wire.
pub fn error_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InvalidParameter => "io.portres.InvalidParameter",
        ErrorCode::SharingViolation => "io.portres.SharingViolation",
        ErrorCode::AccessDenied => "io.portres.AccessDenied",
        ErrorCode::NotFound => "io.portres.NotFound",
        ErrorCode::NoFreeBlock => "io.portres.NoFreeBlock",
        ErrorCode::QuotaExceeded => "io.portres.QuotaExceeded",
        ErrorCode::BlockExhausted => "io.portres.BlockExhausted",
        ErrorCode::NotASocket => "io.portres.NotASocket",
        ErrorCode::NotSupported => "io.portres.NotSupported",
        ErrorCode::AlreadyBound => "io.portres.AlreadyBound",
        ErrorCode::WrongNamespace => "io.portres.WrongNamespace",
        ErrorCode::DaemonUnavailable => "io.portres.DaemonUnavailable",
        // Never on the wire (clients make it); named for symmetry.
        ErrorCode::DaemonUntrusted => "io.portres.DaemonUntrusted",
        ErrorCode::StoreUnavailable => "io.portres.StoreUnavailable",
        ErrorCode::Internal => "io.portres.Internal",
        // `ErrorCode` is non-exhaustive; a code added to core without a
        // name here goes out as internal (the test below catches it).
        _ => "io.portres.Internal",
    }
}

/// The code an error name stands for: its varlink name, or its snake_case
/// code.
pub fn error_code(name: &str) -> Option<ErrorCode> {
    ErrorCode::ALL
        .into_iter()
        .find(|&c| error_name(c) == name || c.as_str() == name)
}

/// Whether a daemon may send `code` (the others are made by clients only),
/// so the interface description must declare it.
pub fn sent_by_daemons(code: ErrorCode) -> bool {
    code != ErrorCode::DaemonUntrusted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_both_names() {
        for code in ErrorCode::ALL {
            assert_eq!(error_code(error_name(code)), Some(code));
            assert_eq!(error_code(code.as_str()), Some(code));
        }
        let names: std::collections::HashSet<_> = ErrorCode::ALL.map(error_name).into();
        assert_eq!(
            names.len(),
            ErrorCode::ALL.len(),
            "every code has its own name"
        );
    }
}
