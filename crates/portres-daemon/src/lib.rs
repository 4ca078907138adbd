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
//! sysctl) → `kernel` (the `Kernel` interface every kernel call goes
//! through, and `KernelMirror`, the reserved-ports list's keeper).
#![deny(missing_docs)]

pub mod baseline;
pub mod config;
pub mod handlers;
pub mod kernel;
pub mod server;
pub mod state;
mod worker;

pub use config::{Config, KernelSync, Mode};
pub use server::{Daemon, StartError, StopHandle};
