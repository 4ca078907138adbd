//! The portres kernel adapter layer: everything that talks to Linux.
//!
//! This crate owns the system calls and kernel interfaces the daemon needs,
//! each behind a small, typed function or trait:
//!
//! - [`sysctl`]: the reserved-ports list `net.ipv4.ip_local_reserved_ports`
//!   (a trait with a `/proc` implementation and an in-memory fake) and the
//!   dynamic port range;
//! - [`probe`]: "is this port in use right now?" by binding a probe socket;
//! - [`diag`]: which sockets hold which ports, from `NETLINK_SOCK_DIAG`;
//! - [`sock`]: checking a socket received from a client and binding it into
//!   a reserved block, and network-namespace cookies;
//! - [`capability`]: unforgeable session capabilities (anonymous files);
//! - [`process`]: pidfds and the uids of a process named by pid;
//! - [`netns`]: private network namespaces for tests and benchmarks;
//! - [`owner`]: one kernel-syncing daemon per network namespace;
//! - [`bindguard`]: strict mode's cgroup bind hooks (eBPF), which refuse
//!   binds into guarded ports to all but their allowed binders.
//!
//! It knows nothing of reservations, policy or the wire protocol: it depends
//! only on `portres-core` for the domain types (protocols, port sets, error
//! codes). Kernel quirks are handled here, each with a comment saying why.
#![deny(missing_docs)]

pub mod bindguard;
pub mod capability;
pub mod diag;
pub mod netns;
pub mod owner;
pub mod probe;
pub mod process;
pub mod sock;
pub mod sysctl;
