//! The portres client library: what a program uses to reserve ports.
//!
//! ```no_run
//! use portres::{Client, Protocol};
//! let client = Client::connect()?;
//! // Any free block of 3 TCP ports, held as long as `res` (or the process) lives.
//! let res = client.acquire(Protocol::Tcp, 0, 3)?;
//! let listener = res.bind_tcp("127.0.0.1".parse().unwrap())?; // a port of the block
//! println!("listening on {}", listener.local_addr().unwrap());
//! drop(res); // released (also when the process exits)
//! # Ok::<(), portres::Error>(())
//! ```
//!
//! A `Client` is one connection (one session) to the daemon; clones share
//! it. Runtime reservations live as long as the session. Inside
//! `portres exec`, `Client::connect` also presents the inherited session
//! capability (`PORTRES_SESSION_FD`), so it may bind into and release the
//! reservations of the `exec` session.
//!
//! Blocking, std types in and out; no async runtime is imposed.
#![deny(missing_docs)]

mod client;
mod reservation;
mod trust;

pub use client::{Client, CreateOptions, DaemonWatch};
pub use portres_core::{Block, Error, ErrorCode, Kind, Owner, Protocol, Token};
pub use portres_proto::paths::SocketKind;
pub use portres_proto::{
    HolderInfo, HolderOrigin, OwnerInfo, OwnerKind, ReservationInfo, StatusReply,
};
pub use reservation::Reservation;
pub use trust::DaemonIdentity;

/// Results of this library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
