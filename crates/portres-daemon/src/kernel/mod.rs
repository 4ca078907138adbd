//! The daemon's view of the kernel: one `Kernel` interface for every call
//! a handler makes into Linux (sysctls it reads, the in-use probe, the
//! socket-table dump, checking and binding a client's socket, network
//! namespace cookies, session capabilities, pidfds and the uids of a
//! process the portserver endpoint is asked about), `LinuxKernel` delegating to
//! `portres-kernel`, and (tests only) `FakeKernel`, in memory. The
//! reserved-ports list, which the daemon writes, is mirrored by
//! `KernelMirror` (see `mirror`).
//!
//! Why an interface: handler behaviour (who may do what, quotas, first
//! fit, refusals that change nothing) then has unit tests that run in
//! milliseconds without root; the real kernel is tested by the namespace
//! integration tests. Modelled on netavark's `FirewallDriver` and its
//! `fwnone` driver. Strict mode's enforcement adapter (BPF) sits beside it,
//! behind the sibling interface `Enforcer` (see `enforce`).
//!
//! Owns no state and decides nothing: it answers and does what it is told.

pub(crate) mod enforce;
#[cfg(test)]
pub(crate) mod fake;
pub(crate) mod mirror;

use std::io;
use std::net::IpAddr;
use std::os::fd::{BorrowedFd, OwnedFd};

use portres_core::{BindOrder, Error, Protocol};
use portres_kernel::capability::FileId;
pub use portres_kernel::process::ProcessIds;
use portres_kernel::sock::SocketInfo;

pub use enforce::{Enforcement, Enforcer, LinuxEnforcer, NoEnforcer};
pub use mirror::KernelMirror;

/// Every kernel call the handlers make, for the daemon's own network
/// namespace. `Send + Sync` and `&self` throughout: handlers call it
/// outside the state mutex (the probe and the bind are the slow parts).
pub trait Kernel: Send + Sync + std::fmt::Debug {
    /// `net.ipv4.ip_local_port_range`: the dynamic range a wildcard
    /// Acquire searches.
    fn local_port_range(&self) -> io::Result<(u16, u16)>;

    /// `net.ipv4.ip_unprivileged_port_start`: ports below it are
    /// privileged.
    fn unprivileged_port_start(&self) -> io::Result<u32>;

    /// Whether some socket holds `port` for `protocol` right now.
    fn port_in_use(&self, protocol: Protocol, port: u16) -> io::Result<bool>;

    /// The local ports of every socket of `protocol` (sock_diag dump),
    /// in any order, repeats allowed.
    fn bound_ports(&self, protocol: Protocol) -> io::Result<Vec<u16>>;

    /// The network namespace cookie of the calling thread (the daemon's).
    fn current_netns_cookie(&self) -> io::Result<u64>;

    /// Checks a descriptor a client passed for Bind: an unbound TCP or UDP
    /// socket (named errors otherwise).
    fn inspect_socket(&self, fd: BorrowedFd<'_>) -> Result<SocketInfo, Error>;

    /// The network namespace cookie of a client's socket.
    fn socket_netns_cookie(&self, fd: BorrowedFd<'_>) -> io::Result<u64>;

    /// Binds an inspected socket to `address` and the first free port of
    /// `order`; returns the port.
    fn bind_socket(
        &self,
        fd: BorrowedFd<'_>,
        info: &SocketInfo,
        address: IpAddr,
        order: BindOrder,
    ) -> Result<u16, Error>;

    /// A new session capability (an anonymous file).
    fn new_capability(&self) -> io::Result<OwnedFd>;

    /// The file identity of a descriptor (equal for every descriptor of
    /// one capability).
    fn file_id(&self, fd: BorrowedFd<'_>) -> io::Result<FileId>;

    /// A pidfd for process `pid`: readable once it has exited.
    fn open_pidfd(&self, pid: i32) -> io::Result<OwnedFd>;

    /// Whether the process of a pidfd has exited.
    fn pidfd_exited(&self, pidfd: BorrowedFd<'_>) -> bool;

    /// Who process `pid` is (uids, its pid in its own pid namespace).
    fn process_ids(&self, pid: i32) -> io::Result<ProcessIds>;

    /// The real and effective uid of process `pid`, whose pidfd is
    /// `pidfd`: from the pidfd where the kernel can say (cheaper, and
    /// surely that process), else as `process_ids` reads them.
    fn process_uids(&self, pid: i32, pidfd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
        let _ = pidfd;
        self.process_ids(pid)
            .map(|ids| (ids.real_uid, ids.effective_uid))
    }

    /// Whether process `pid` is surely in the daemon's pid namespace (its
    /// pid there is its `ns_pid`); `false` when it cannot tell. A cheaper
    /// question than `process_ids` for the kernel.
    fn in_own_pid_namespace(&self, pid: i32) -> bool {
        self.process_ids(pid).is_ok_and(|ids| ids.ns_pid == pid)
    }
}

/// The real kernel, through `portres-kernel`.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinuxKernel;

impl Kernel for LinuxKernel {
    fn local_port_range(&self) -> io::Result<(u16, u16)> {
        portres_kernel::sysctl::local_port_range()
    }

    fn unprivileged_port_start(&self) -> io::Result<u32> {
        portres_kernel::sysctl::unprivileged_port_start()
    }

    fn port_in_use(&self, protocol: Protocol, port: u16) -> io::Result<bool> {
        portres_kernel::probe::port_in_use(protocol, port)
    }

    fn bound_ports(&self, protocol: Protocol) -> io::Result<Vec<u16>> {
        let sockets = portres_kernel::diag::bound_sockets(protocol)?;
        Ok(sockets.iter().map(|s| s.port).collect())
    }

    fn current_netns_cookie(&self) -> io::Result<u64> {
        portres_kernel::sock::current_netns_cookie()
    }

    fn inspect_socket(&self, fd: BorrowedFd<'_>) -> Result<SocketInfo, Error> {
        portres_kernel::sock::inspect(fd)
    }

    fn socket_netns_cookie(&self, fd: BorrowedFd<'_>) -> io::Result<u64> {
        portres_kernel::sock::netns_cookie(fd)
    }

    fn bind_socket(
        &self,
        fd: BorrowedFd<'_>,
        info: &SocketInfo,
        address: IpAddr,
        order: BindOrder,
    ) -> Result<u16, Error> {
        portres_kernel::sock::bind_inspected(fd, info, address, order)
    }

    fn new_capability(&self) -> io::Result<OwnedFd> {
        portres_kernel::capability::new_capability()
    }

    fn file_id(&self, fd: BorrowedFd<'_>) -> io::Result<FileId> {
        portres_kernel::capability::file_id(fd)
    }

    fn open_pidfd(&self, pid: i32) -> io::Result<OwnedFd> {
        portres_kernel::process::open_pidfd(pid)
    }

    fn pidfd_exited(&self, pidfd: BorrowedFd<'_>) -> bool {
        portres_kernel::process::pidfd_exited(pidfd)
    }

    fn process_ids(&self, pid: i32) -> io::Result<ProcessIds> {
        portres_kernel::process::process_ids(pid)
    }

    fn process_uids(&self, pid: i32, pidfd: BorrowedFd<'_>) -> io::Result<(u32, u32)> {
        match portres_kernel::process::pidfd_uids(pidfd)? {
            Some(uids) => Ok(uids),
            None => self
                .process_ids(pid)
                .map(|ids| (ids.real_uid, ids.effective_uid)),
        }
    }

    fn in_own_pid_namespace(&self, pid: i32) -> bool {
        portres_kernel::process::in_own_pid_namespace(pid)
    }
}
