//! The portres wire interface, version 1: the contract between the daemon and
//! every client (this workspace's client library, other languages' clients,
//! `varlinkctl`).
//!
//! It is varlink (<https://varlink.org>): each message is one JSON object
//! followed by a NUL byte on a Unix stream socket. A request names a method
//! of the `io.portres` interface and carries parameters; the reply carries
//! parameters or an error name with `{code, message}`. A descriptor passed
//! with a request (a socket to bind, a session capability) travels as
//! SCM_RIGHTS ancillary data on the bytes of that request. The full contract
//! is written out in `docs/wire.md`; this crate is its Rust form.
//!
//! This crate owns the wire's vocabulary (the method table, the message
//! types, the error names), the framing and the descriptor-passing
//! send/receive calls. It knows nothing of sessions or state.
#![deny(missing_docs)]

pub mod call;
pub mod errors;
pub mod fdpass;
pub mod frame;
pub mod message;
pub mod method;
pub mod paths;
pub mod peer;
pub mod reply;

pub use call::*;
pub use errors::{error_code, error_name};
pub use frame::{FrameBuffer, FrameError};
pub use message::*;
pub use method::{METHODS, Method};
pub use reply::*;

/// The version of this wire interface. Bumped only on incompatible change;
/// additions (new optional fields, new methods) keep it.
pub const WIRE_VERSION: u32 = 1;

/// The varlink interface name.
pub const INTERFACE: &str = "io.portres";

/// Largest request the daemon accepts; a longer one closes the connection.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Largest reply a client accepts (a `List` of every reservation fits).
pub const MAX_REPLY_BYTES: usize = 256 * 1024 * 1024;

/// Most descriptors one request may carry.
pub const MAX_FDS_PER_MESSAGE: usize = 4;
