//! One module per subcommand, plus the argument checks they share.

pub mod acquire;
pub mod exec;
pub mod list;
pub mod persistent;
pub mod release;
pub mod status;

use portres::{Error, ErrorCode, Protocol};

/// Parses a protocol argument; an unknown one is the daemon's own
/// `invalid_parameter`.
pub fn protocol(s: &str) -> Result<Protocol, Error> {
    s.parse()
}

/// Checks that a port-ish number fits the wire's range (the daemon judges
/// the rest, e.g. start 0 or a block past 65535).
pub fn number(what: &str, v: i64) -> Result<u32, Error> {
    u32::try_from(v).map_err(|_| {
        Error::new(
            ErrorCode::InvalidParameter,
            format!("{what} {v} is out of range"),
        )
    })
}
