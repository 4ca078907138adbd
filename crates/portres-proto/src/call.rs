//! The call envelope (varlink's `method`/`parameters`/`oneway`): decoding
//! a frame into a `Request` through the method table (`method.rs`),
//! encoding one, and refusing calls the daemon cannot take.
//!
//! Calls the daemon cannot take are refused with varlink's own error names
//! (`org.varlink.service.MethodNotFound`, `InterfaceNotFound`,
//! `InvalidParameter`, see [`ServiceError`]) so that generic varlink tools
//! understand them; every error reply still carries portres' `code` and
//! `message`, so clients that match on `code` see `invalid_parameter` as
//! before.

use portres_core::{Error, ErrorCode};
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::message::*;
use crate::method::Method;

/// One request, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// io.portres.Acquire
    Acquire(AcquireParams),
    /// io.portres.Release
    Release(ReleaseParams),
    /// io.portres.Bind (+1 descriptor)
    Bind(BindParams),
    /// io.portres.Create
    Create(CreateParams),
    /// io.portres.Delete
    Delete(BlockParams),
    /// io.portres.Lookup
    Lookup(BlockParams),
    /// io.portres.List
    List(ListParams),
    /// io.portres.Status
    Status,
    /// io.portres.GetCapability: reply carries one descriptor, the session's
    /// capability.
    GetCapability,
    /// io.portres.Attach (+1 descriptor: a session capability): this
    /// connection may from now on bind into and release that session's
    /// runtime reservations.
    Attach,
    /// org.varlink.service.GetInfo
    GetInfo,
    /// org.varlink.service.GetInterfaceDescription
    GetInterfaceDescription {
        /// The interface asked about.
        interface: String,
    },
    /// io.portres.EnterCgroup (+1 descriptor: a pidfd of the caller
    /// itself): strict mode moves the caller into a cgroup of this
    /// session's; its processes may bind the session's runtime blocks.
    EnterCgroup,
    /// io.portres.Reload (admin): re-read the portres.d files and apply
    /// them.
    Reload,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    method: String,
    /// Kept as raw text and parsed once, straight into the method's typed
    /// parameters (parsing into a `Value` first cost a map per request).
    #[serde(default, borrow)]
    parameters: Option<&'a RawValue>,
    #[serde(default)]
    oneway: bool,
    /// Accepted and otherwise ignored: no method streams, so a call that
    /// allows several replies gets its one reply (without `continues`),
    /// which varlink permits.
    #[serde(default)]
    #[allow(dead_code)]
    more: bool,
    /// Placement hint (see `Call::cpu`).
    #[serde(default)]
    cpu: Option<u32>,
}

/// `Envelope` with every value ignored but the typed ones: parsed only
/// after `Envelope` failed, through `serde_path_to_error`, to name the key
/// that was wrong (a borrowed `RawValue` cannot go through that wrapper).
#[derive(Deserialize)]
#[allow(dead_code)]
struct EnvelopeCheck {
    method: String,
    #[serde(default)]
    parameters: Option<IgnoredAny>,
    #[serde(default)]
    oneway: bool,
    #[serde(default)]
    more: bool,
    #[serde(default)]
    cpu: Option<u32>,
}

#[derive(Serialize)]
struct OutCall<'a, T> {
    method: &'a str,
    parameters: &'a T,
    #[serde(skip_serializing_if = "Option::is_none")]
    cpu: Option<u32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    oneway: bool,
}

/// A decoded call: the request and what the envelope said about it.
#[derive(Debug)]
pub struct Call {
    /// The request.
    pub request: Request,
    /// The caller wants no reply (varlink `oneway`).
    pub oneway: bool,
    /// The CPU the calling thread ran on when it sent the call, if it said
    /// (the optional `"cpu"` key of the call object). Only a placement
    /// hint: the daemon may move the connection to a worker on that CPU,
    /// and the answer never depends on it.
    pub cpu: Option<u32>,
}

/// A refusal in varlink's own terms (the errors of the
/// `org.varlink.service` interface every varlink service speaks), for calls
/// that name no method the daemon serves or whose parameters do not decode.
/// Sent with portres' `code` (`invalid_parameter`) and `message` as well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServiceError {
    /// `org.varlink.service.InterfaceNotFound`: the call (or
    /// `GetInterfaceDescription`) names an interface not served here.
    InterfaceNotFound {
        /// The interface, as given.
        interface: String,
    },
    /// `org.varlink.service.MethodNotFound`: a served interface has no
    /// such method.
    MethodNotFound {
        /// The fully qualified method, as given.
        method: String,
    },
    /// `org.varlink.service.InvalidParameter`: a key of the call or of its
    /// parameters is missing, of the wrong type or out of its type's range.
    InvalidParameter {
        /// The key: a parameter's name (`"count"`), or a key of the call
        /// object itself (`"method"`, `"parameters"`, `"cpu"`).
        parameter: String,
    },
}

impl ServiceError {
    /// The varlink error name.
    pub fn varlink_name(&self) -> &'static str {
        match self {
            ServiceError::InterfaceNotFound { .. } => "org.varlink.service.InterfaceNotFound",
            ServiceError::MethodNotFound { .. } => "org.varlink.service.MethodNotFound",
            ServiceError::InvalidParameter { .. } => "org.varlink.service.InvalidParameter",
        }
    }

    /// The error's own parameter: its name and value.
    pub(crate) fn parameter(&self) -> (&'static str, &str) {
        match self {
            ServiceError::InterfaceNotFound { interface } => ("interface", interface),
            ServiceError::MethodNotFound { method } => ("method", method),
            ServiceError::InvalidParameter { parameter } => ("parameter", parameter),
        }
    }
}

/// Why a frame was not taken as a call: portres' error (always
/// `invalid_parameter`) and, when the frame was a call object at all, the
/// varlink error to send in its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    /// Code and message.
    pub error: Error,
    /// The `org.varlink.service` error; `None` for a frame that is not a
    /// JSON object (nothing to name), sent as `io.portres.InvalidParameter`.
    pub service: Option<ServiceError>,
    /// The call's `oneway` flag when the call object could be read, else
    /// `false`.
    pub oneway: bool,
}

impl CallError {
    fn new(service: Option<ServiceError>, message: String, oneway: bool) -> CallError {
        CallError {
            error: invalid(message),
            service,
            oneway,
        }
    }

    /// `GetInterfaceDescription` of an interface not served here.
    pub fn interface_not_found(interface: &str) -> CallError {
        CallError::new(
            Some(ServiceError::InterfaceNotFound {
                interface: interface.to_string(),
            }),
            format!("interface {interface:?} is not served here"),
            false,
        )
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for CallError {}

impl From<CallError> for Error {
    fn from(e: CallError) -> Error {
        e.error
    }
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidParameter, msg)
}

/// The interfaces whose methods `decode_call` knows.
const SERVED_INTERFACES: [&str; 2] = ["org.varlink.service", crate::INTERFACE];

/// Parses a method's parameters. Successful calls take the fast path; only
/// a refusal is parsed again to name the parameter that was wrong.
pub(crate) fn params<T: DeserializeOwned>(
    method: &str,
    v: Option<&RawValue>,
    oneway: bool,
) -> Result<T, CallError> {
    let text = v.map_or("{}", RawValue::get);
    serde_json::from_str(text).map_err(|e| {
        let parameter = faulty_key::<T>(text).unwrap_or_else(|| "parameters".to_string());
        CallError::new(
            Some(ServiceError::InvalidParameter {
                parameter: parameter.clone(),
            }),
            format!("{method}: parameter {parameter:?}: {e}"),
            oneway,
        )
    })
}

/// The top-level key of `text` that made decoding it as `T` fail: the
/// path's first segment, or the field named by serde's "missing field" /
/// "duplicate field" message (those fail at the object, not at a key).
/// `None` when the value itself is wrong (not an object).
fn faulty_key<T: DeserializeOwned>(text: &str) -> Option<String> {
    let mut de = serde_json::Deserializer::from_str(text);
    let err = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(_) => return None,
        Err(err) => err,
    };
    if let Some(serde_path_to_error::Segment::Map { key }) = err.path().iter().next() {
        return Some(key.clone());
    }
    let message = err.inner().to_string();
    ["missing field `", "duplicate field `"]
        .iter()
        .find_map(|prefix| {
            let rest = message.strip_prefix(prefix)?;
            Some(rest[..rest.find('`')?].to_string())
        })
}

/// Why `frame` is not a call object: the key at fault, if it is a JSON
/// object at all.
fn envelope_error(frame: &[u8], e: serde_json::Error) -> CallError {
    let message = format!("malformed request: {e}");
    if e.is_syntax() || e.is_eof() || !frame.trim_ascii_start().starts_with(b"{") {
        return CallError::new(None, message, false);
    }
    let key = std::str::from_utf8(frame)
        .ok()
        .and_then(faulty_key::<EnvelopeCheck>)
        .unwrap_or_else(|| "method".to_string());
    CallError::new(
        Some(ServiceError::InvalidParameter { parameter: key }),
        message,
        false,
    )
}

/// The refusal of a method name no served interface has.
fn unknown_method(method: &str, oneway: bool) -> CallError {
    let Some((interface, _)) = method
        .rsplit_once('.')
        .filter(|(i, m)| !i.is_empty() && !m.is_empty())
    else {
        return CallError::new(
            Some(ServiceError::InvalidParameter {
                parameter: "method".to_string(),
            }),
            format!("{method:?} is not a varlink method name (interface.Method)"),
            oneway,
        );
    };
    if SERVED_INTERFACES.contains(&interface) {
        CallError::new(
            Some(ServiceError::MethodNotFound {
                method: method.to_string(),
            }),
            format!("unknown method {method:?}"),
            oneway,
        )
    } else {
        CallError::new(
            Some(ServiceError::InterfaceNotFound {
                interface: interface.to_string(),
            }),
            format!(
                "unknown interface {interface:?} (method {method:?}); served: {}",
                SERVED_INTERFACES.join(", ")
            ),
            oneway,
        )
    }
}

impl Request {
    /// The method table's entry for this request.
    pub fn spec(&self) -> &'static Method {
        use crate::method as m;
        match self {
            Request::Acquire(p) if p.address.is_some() => &m::ACQUIRE_WITH_SOCKET,
            Request::Acquire(_) => &m::ACQUIRE,
            Request::Release(_) => &m::RELEASE,
            Request::Bind(_) => &m::BIND,
            Request::Create(_) => &m::CREATE,
            Request::Delete(_) => &m::DELETE,
            Request::Lookup(_) => &m::LOOKUP,
            Request::List(_) => &m::LIST,
            Request::Status => &m::STATUS,
            Request::GetCapability => &m::GET_CAPABILITY,
            Request::Attach => &m::ATTACH,
            Request::GetInfo => &m::GET_INFO,
            Request::GetInterfaceDescription { .. } => &m::GET_INTERFACE_DESCRIPTION,
            Request::EnterCgroup => &m::ENTER_CGROUP,
            Request::Reload => &m::RELOAD,
        }
    }

    /// The varlink method name.
    pub fn method(&self) -> &'static str {
        self.spec().name
    }

    /// Whether `received` descriptors are what this request must carry
    /// (`Method::fds`); the refusal names the method and the count.
    pub fn check_fds(&self, received: usize) -> Result<(), Error> {
        self.spec().check_fds(received)
    }

    /// Decodes one frame. `Ok((request, oneway))`.
    pub fn decode(frame: &[u8]) -> Result<(Request, bool), Error> {
        Request::decode_call(frame)
            .map(|c| (c.request, c.oneway))
            .map_err(Error::from)
    }

    /// Decodes one frame into a `Call` (the request, `oneway` and the
    /// placement hint), or says why it is not one in varlink's terms.
    pub fn decode_call(frame: &[u8]) -> Result<Call, CallError> {
        let env: Envelope = serde_json::from_slice(frame).map_err(|e| envelope_error(frame, e))?;
        let m = env.method.as_str();
        let Some(method) = crate::method::METHODS.iter().find(|spec| spec.name == m) else {
            return Err(unknown_method(m, env.oneway));
        };
        let req = (method.decode)(method.name, env.parameters, env.oneway)?;
        Ok(Call {
            request: req,
            oneway: env.oneway,
            cpu: env.cpu,
        })
    }

    /// Encodes the request as one frame (JSON + NUL).
    pub fn encode(&self) -> Vec<u8> {
        self.encode_with_cpu(None)
    }

    /// Encodes the request as one frame, with the placement hint `cpu`
    /// (the CPU the calling thread runs on) if given.
    pub fn encode_with_cpu(&self, cpu: Option<u32>) -> Vec<u8> {
        self.encode_call(cpu, false)
    }

    /// Encodes the request as one frame with the placement hint `cpu` and,
    /// when `oneway`, varlink's `"oneway": true` (the daemon sends no reply,
    /// not even an error).
    pub fn encode_call(&self, cpu: Option<u32>, oneway: bool) -> Vec<u8> {
        fn frame<T: Serialize>(
            method: &str,
            parameters: &T,
            cpu: Option<u32>,
            oneway: bool,
        ) -> Vec<u8> {
            let mut v = serde_json::to_vec(&OutCall {
                method,
                parameters,
                cpu,
                oneway,
            })
            .expect("request types always serialize");
            v.push(0);
            v
        }
        let m = self.method();
        match self {
            Request::Acquire(p) => frame(m, p, cpu, oneway),
            Request::Release(p) => frame(m, p, cpu, oneway),
            Request::Bind(p) => frame(m, p, cpu, oneway),
            Request::Create(p) => frame(m, p, cpu, oneway),
            Request::Delete(p) | Request::Lookup(p) => frame(m, p, cpu, oneway),
            Request::List(p) => frame(m, p, cpu, oneway),
            Request::Status
            | Request::GetCapability
            | Request::Attach
            | Request::GetInfo
            | Request::Reload => frame(m, &Empty {}, cpu, oneway),
            Request::EnterCgroup => frame(m, &Empty {}, cpu, oneway),
            Request::GetInterfaceDescription { interface } => frame(
                m,
                &serde_json::json!({ "interface": interface }),
                cpu,
                oneway,
            ),
        }
    }
}

#[cfg(test)]
mod tests;
