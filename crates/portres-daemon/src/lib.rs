//! portresd, the portres daemon, as a library: `Daemon::start` opens the
//! store, brings the kernel's reserved-ports value in line and binds the
//! socket; `Daemon::run` serves on the calling thread until its
//! `StopHandle` says stop. Tests start it
//! in-process on a temporary socket; the `portresd` binary is a thin
//! command-line wrapper.
//!
//! Layers: `server` (the front: accept, connection limits, the deferred
//! kernel write, stop) and `worker` (epoll loops reading frames and
//! descriptors and writing replies) → `handlers` (one per request family)
//! → `state` (the state owner behind one mutex: table, sessions, store,
//! sysctl).
#![deny(missing_docs)]

mod baseline;
mod config;
mod handlers;
mod server;
mod state;
mod worker;

pub use baseline::reset as reset_baseline;
pub use config::{Config, KernelSync, Mode};
pub use server::{Daemon, StartError, StopHandle};
