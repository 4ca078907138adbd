//! The portres durable store: the persistent reservations (and the admin's
//! baseline of `net.ipv4.ip_local_reserved_ports`) kept in one SQLite file,
//! `<state_dir>/portres.db`.
//!
//! The store runs SQLite in WAL journal mode with `synchronous=FULL`, and
//! every change ([`Store::insert`], [`Store::update`], [`Store::delete`],
//! [`Store::set_baseline`], [`Store::record_baseline`]) is its own
//! transaction: when such a call returns `Ok`, the commit is on disk, so
//! the daemon may acknowledge the request. When it returns `Err`, nothing
//! was changed.
//!
//! The store does not judge reservations (overlaps, permissions): the daemon
//! does that against its table before calling in. It only keeps rows valid
//! (a row that is not a valid [`portres_core::Block`] is refused on load, with
//! an error that names it) and never panics on a damaged or unexpected file.
//!
//! The schema is documented at [`schema`]. [`StateDirLock`] keeps a second
//! daemon off a state directory in use.
#![deny(missing_docs)]

mod error;
mod files;
mod lock;
pub mod schema;
mod store;

pub use error::StoreError;
pub use lock::{LOCK_FILE_NAME, LockError, StateDirLock};
pub use store::{BaselineRecord, Store, StoredReservation};
