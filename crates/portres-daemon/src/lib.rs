//! portresd, the portres daemon, as a library: `Daemon::start` opens the
//! store, brings the kernel's reserved-ports value in line and binds the
//! socket; `Daemon::run` serves on the calling thread until its
//! `StopHandle` says stop. Tests start it
//! in-process on a temporary socket; the `portresd` binary is a thin
//! command-line wrapper.
//!
//! Layers: `server` (transport: one epoll loop — accept, read frames and
//! descriptors, write replies, connection limits) → `handlers` (one per
//! request family) → `state` (the state owner: table, sessions, store,
//! sysctl).
#![deny(missing_docs)]

pub mod config;
pub mod handlers;
pub mod server;
pub mod state;

pub use config::{Config, KernelSync, Mode};
pub use server::{Daemon, StartError, StopHandle};
