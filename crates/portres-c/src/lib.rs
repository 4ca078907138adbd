//! libportres: the Windows port reservation API for C programs on Linux,
//! built as `libportres.so` and `libportres.a`, declared by
//! `include/portres/winsock.h` (generated from this crate by cbindgen; see
//! `tests/header.rs`).
//!
//! - `types`: the Windows types, structures and constants;
//! - `winsock`: `WSAStartup`, `WSACleanup`, `WSAGetLastError`,
//!   `WSASetLastError`, `WSASocketW`/`WSASocketA`, `closesocket`,
//!   `WSAIoctl` (acquire, release, associate, and the socket controls
//!   Windows code relies on);
//! - `bind`: the `bind()` interposer that binds associated sockets into
//!   their reservation; `implicit`: the same for the calls that bind a
//!   socket implicitly (`connect`, `listen`, `sendto`, `sendmsg`,
//!   `sendmmsg`);
//! - `persistent`: `Create/Delete/LookupPersistent{Tcp,Udp}PortReservation`;
//! - `state`: sessions per acquiring socket, associations, the default
//!   connection; `sock`: inspecting descriptors; `errors`: errno, Winsock
//!   and Win32 codes, and the panic guard that keeps panics out of C.
//!
//! Every call goes to `portresd` through the client library (`PORTRES_SOCKET`,
//! else the default sockets). Every exported function catches panics.

#![allow(non_snake_case)]

mod bind;
mod errors;
mod implicit;
mod persistent;
mod sock;
mod state;
pub mod types;
mod winsock;

pub use bind::bind;
pub use implicit::{connect, listen, sendmmsg, sendmsg, sendto};
pub use persistent::*;
pub use winsock::*;
