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
//!
//! // One port and a listener on it in one round trip with the daemon.
//! let (listener, res) = client.listen_tcp("127.0.0.1".parse().unwrap())?;
//! assert_eq!(listener.local_addr().unwrap().port(), res.start());
//! # Ok::<(), portres::Error>(())
//! ```
//!
//! Dropping a [`Reservation`] releases it without waiting for the daemon
//! (a oneway call); later calls on the same `Client` see it released.
//! [`Reservation::release`] waits and reports errors.
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
    DeclaredProblem, HolderInfo, HolderOrigin, OwnerInfo, OwnerKind, ReloadReply, ReservationInfo,
    StatusReply,
};
pub use reservation::Reservation;
pub use trust::DaemonIdentity;

/// Results of this library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
