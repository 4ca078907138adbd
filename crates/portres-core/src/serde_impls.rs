//! Serialized forms of core types, shared by the wire interface and the
//! CLI's `--json`: a protocol is "tcp"/"udp"; a token is a decimal string
//! (numbers above 2^53 do not survive JSON in many languages), though a JSON
//! number is accepted on input.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Protocol, Token};

impl Serialize for Protocol {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Protocol, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse()
            .map_err(|e: crate::Error| de::Error::custom(e.message))
    }
}

impl Serialize for Token {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Token {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Token, D::Error> {
        struct TokenVisitor;
        impl Visitor<'_> for TokenVisitor {
            type Value = Token;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-zero 64-bit token as a decimal string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Token, E> {
                v.parse().map_err(|e: crate::Error| E::custom(e.message))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Token, E> {
                Token::new(v).ok_or_else(|| E::custom("0 is not a token"))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Token, E> {
                u64::try_from(v)
                    .ok()
                    .and_then(Token::new)
                    .ok_or_else(|| E::custom("a token is a non-zero unsigned 64-bit number"))
            }
        }
        d.deserialize_any(TokenVisitor)
    }
}

impl Serialize for crate::Kind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for crate::Kind {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<crate::Kind, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        match &*s {
            "runtime" => Ok(crate::Kind::Runtime),
            "persistent" => Ok(crate::Kind::Persistent),
            other => Err(de::Error::custom(format!(
                "unknown kind {other:?}: expected \"runtime\" or \"persistent\""
            ))),
        }
    }
}
