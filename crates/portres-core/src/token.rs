//! Reservation tokens: opaque, non-zero 64-bit values. The core never makes
//! them up; the caller supplies randomness from the OS (see `Table::insert`).

use std::fmt;
use std::num::NonZeroU64;
use std::str::FromStr;

use crate::{Error, ErrorCode};

/// An opaque reservation token. Printed and sent as a decimal string because
/// JSON numbers lose precision above 2^53 in many languages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(NonZeroU64);

impl Token {
    /// Wraps a raw value; `None` for 0, which is never a token.
    pub fn new(raw: u64) -> Option<Token> {
        NonZeroU64::new(raw).map(Token)
    }

    /// The raw value.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Token {
    type Err = Error;

    fn from_str(s: &str) -> Result<Token, Error> {
        s.trim()
            .parse::<u64>()
            .ok()
            .and_then(Token::new)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidParameter,
                    format!("{s:?} is not a token: expected a non-zero decimal 64-bit number"),
                )
            })
    }
}
