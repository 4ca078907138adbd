//! Replies: encoding a successful reply or an error reply as one frame,
//! and decoding a reply into its type or the daemon's error.

use portres_core::{Error, ErrorCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::call::{CallError, ServiceError};
use crate::errors::{error_code, error_name};

#[derive(Serialize)]
struct OkReply<'a, T> {
    parameters: &'a T,
}

#[derive(Serialize, Deserialize)]
struct ErrorParams {
    code: String,
    message: String,
}

/// Something sent as an error reply: a portres [`Error`]
/// (`io.portres.<Name>` with `code` and `message`) or a [`CallError`]
/// (the `org.varlink.service` error with its own parameter, plus `code`
/// and `message`).
pub trait ErrorReply {
    /// The portres error: code and message.
    fn portres_error(&self) -> &Error;
    /// The varlink service error to send instead of `io.portres.<Name>`.
    fn service_error(&self) -> Option<&ServiceError> {
        None
    }
}

impl ErrorReply for Error {
    fn portres_error(&self) -> &Error {
        self
    }
}

impl ErrorReply for CallError {
    fn portres_error(&self) -> &Error {
        &self.error
    }
    fn service_error(&self) -> Option<&ServiceError> {
        self.service.as_ref()
    }
}

/// Encodes a successful reply as one frame.
pub fn encode_reply<T: Serialize>(parameters: &T) -> Vec<u8> {
    let mut v = serde_json::to_vec(&OkReply { parameters }).expect("replies always serialize");
    v.push(0);
    v
}

/// Encodes an error reply as one frame.
pub fn encode_error<E: ErrorReply + ?Sized>(err: &E) -> Vec<u8> {
    let e = err.portres_error();
    let mut parameters = serde_json::Map::new();
    let name = match err.service_error() {
        Some(service) => {
            let (key, value) = service.parameter();
            parameters.insert(key.to_string(), value.into());
            service.varlink_name()
        }
        None => error_name(e.code),
    };
    parameters.insert("code".to_string(), e.code.as_str().into());
    parameters.insert("message".to_string(), e.message.as_str().into());
    let mut v = serde_json::to_vec(&serde_json::json!({
        "error": name,
        "parameters": parameters,
    }))
    .expect("errors always serialize");
    v.push(0);
    v
}

#[derive(Deserialize)]
struct ReplyEnvelope<'a> {
    /// Kept raw so a large reply (a `List`) is parsed once, straight into
    /// its type.
    #[serde(default, borrow)]
    parameters: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    error: Option<String>,
}

/// Decodes a reply frame into `T`, or the daemon's error.
pub fn decode_reply<T: DeserializeOwned>(frame: &[u8]) -> Result<T, Error> {
    let env: ReplyEnvelope<'_> = serde_json::from_slice(frame)
        .map_err(|e| Error::new(ErrorCode::Internal, format!("malformed reply: {e}")))?;
    let params = env.parameters.map_or("{}", |p| p.get());
    if let Some(name) = env.error {
        let (code, message) = match serde_json::from_str::<ErrorParams>(params) {
            Ok(p) => (
                p.code
                    .parse()
                    .ok()
                    .or_else(|| error_code(&name))
                    .unwrap_or(ErrorCode::Internal),
                p.message,
            ),
            // A varlink service error without portres' parameters (from a
            // varlink bridge or another service on the socket): the call was
            // not one the service takes.
            Err(_) if name.starts_with("org.varlink.service.") => (
                ErrorCode::InvalidParameter,
                format!("daemon error {name} {params}"),
            ),
            Err(_) => (
                error_code(&name).unwrap_or(ErrorCode::Internal),
                format!("daemon error {name}"),
            ),
        };
        return Err(Error::new(code, message));
    }
    serde_json::from_str(params)
        .map_err(|e| Error::new(ErrorCode::Internal, format!("unexpected reply: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Empty, ReleaseParams, Request};
    use portres_core::Token;
    use serde_json::Value;

    #[test]
    fn portres_errors_keep_their_names_and_codes() {
        let frame = encode_error(&Error::new(ErrorCode::SharingViolation, "busy"));
        let v: Value = serde_json::from_slice(&frame[..frame.len() - 1]).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"error":"io.portres.SharingViolation","parameters":{"code":"sharing_violation","message":"busy"}})
        );
    }

    #[test]
    fn clients_read_service_errors_as_invalid_parameter() {
        let err = Request::decode_call(br#"{"method":"io.portres.Nope"}"#).unwrap_err();
        let frame = encode_error(&err);
        let got = decode_reply::<Empty>(&frame[..frame.len() - 1]).unwrap_err();
        assert_eq!(got, err.error);
        // Without portres' parameters (another varlink service, a bridge).
        let got = decode_reply::<Empty>(
            br#"{"error":"org.varlink.service.MethodNotFound","parameters":{"method":"io.portres.X"}}"#,
        )
        .unwrap_err();
        assert_eq!(got.code, ErrorCode::InvalidParameter);
        assert!(got.message.contains("io.portres.X"), "{got}");
    }

    #[test]
    fn errors_round_trip() {
        let e = Error::new(ErrorCode::SharingViolation, "busy");
        let frame = encode_error(&e);
        let got = decode_reply::<Empty>(&frame[..frame.len() - 1]).unwrap_err();
        assert_eq!(got, e);
        let token_json = serde_json::to_string(&ReleaseParams {
            token: Token::new(18446744073709551615).unwrap(),
        })
        .unwrap();
        assert_eq!(token_json, "{\"token\":\"18446744073709551615\"}");
    }
}
