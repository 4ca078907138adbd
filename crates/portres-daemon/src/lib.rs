//! portresd, the portres daemon, as a library: `Daemon::start` opens the
//! store, brings the kernel's reserved-ports value in line and binds the
//! socket; `Daemon::run` serves on the calling thread until its
//! `StopHandle` says stop. Tests start it
//! in-process on a temporary socket; the `portresd` binary is a thin
//! command-line wrapper.
//!
//! Layers, each depending only on those after it: `daemon` (start, run,
//! stop) → `front` (accept, admission, kernel timers) → `worker` (the
//! pool; per worker an epoll loop, per connection the protocol engine:
//! framing, descriptor attribution, replies) → `handlers` (one per request
//! family; the one entry `handle`) → `state` (the state owner behind one
//! mutex: table, sessions, store, sysctl) → `kernel` (the `Kernel`
//! interface every kernel call goes through, and `KernelMirror`, the
//! reserved-ports list's keeper). Beside them: `limits` (what one
//! user may make the daemon hold: charge/uncharge), `socket` (binding the
//! listening socket safely), `systemd` (sd_notify, sockets passed by
//! socket activation), `kernel_timer`, `events` (eventfd, epoll).
//!
//! Lock rule: two mutexes, the state's and the limits'; never hold both
//! (see `worker::Shared`).
#![deny(missing_docs)]

mod baseline;
mod config;
mod daemon;
mod declared;
mod events;
mod fault;
mod front;
mod handlers;
mod kernel;
mod kernel_timer;
mod limits;
mod socket;
mod state;
mod systemd;
mod worker;

pub use baseline::reset as reset_baseline;
pub use config::{Config, Enforce, KernelSync, Mode, PortserverAddress};
pub use daemon::{Daemon, ReloadHandle, StartError, StopHandle};
pub use systemd::{CLIENT_SOCKET_NAME, Notifier, PassedSockets};
