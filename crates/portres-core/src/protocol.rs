//! The transport protocol a reservation belongs to. TCP and UDP port spaces
//! are separate: a TCP reservation never conflicts with a UDP one.

use std::fmt;
use std::str::FromStr;

use crate::{Error, ErrorCode};

/// A transport protocol whose ports can be reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP (SOCK_STREAM, IPPROTO_TCP).
    Tcp,
    /// UDP (SOCK_DGRAM, IPPROTO_UDP).
    Udp,
}

impl Protocol {
    /// Both protocols, in a stable order.
    pub const ALL: [Protocol; 2] = [Protocol::Tcp, Protocol::Udp];

    /// The lowercase name used on the wire, in the CLI and in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Protocol {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "tcp" | "TCP" => Ok(Protocol::Tcp),
            "udp" | "UDP" => Ok(Protocol::Udp),
            other => Err(Error::new(
                ErrorCode::InvalidParameter,
                format!("unknown protocol {other:?}: expected \"tcp\" or \"udp\""),
            )),
        }
    }
}
