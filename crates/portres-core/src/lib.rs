//! The portres domain core: what a port reservation *is*, independent of how
//! it is stored, transported or enforced.
//!
//! This crate owns protocols, port blocks, port sets (and the kernel's text
//! form of them), tokens, reservations, the reservation table with its
//! invariant (no two reservations of one protocol overlap), the first-fit
//! allocator, who-may-do-what, the characters a label may hold, the
//! `portres.d` file format (`declared`), and the stable error codes. It does no I/O:
//! randomness, time, the kernel and the disk are all supplied by callers.
#![deny(missing_docs)]

mod block;
pub mod declared;
mod error;
mod label;
mod policy;
mod portset;
mod protocol;
mod serde_impls;
mod table;
mod token;

pub use block::Block;
pub use error::{Error, ErrorCode};
pub use label::{escape_label, first_refused_in_label, label_refuses};
pub use policy::{Caller, Owner};
pub use portset::PortSet;
pub use protocol::Protocol;
pub use table::{BindOrder, FastMap, Holder, Kind, Reservation, SessionId, Table};
pub use token::Token;
