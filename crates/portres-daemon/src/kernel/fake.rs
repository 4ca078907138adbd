//! `FakeKernel`: the `Kernel` interface in memory, for unit tests of the
//! handlers (netavark's `fwnone` in spirit): sysctl values a test sets,
//! ports a test marks in use, client sockets a test describes, and the
//! reserved-ports list as `portres_kernel::sysctl::FakeReservedPorts`
//! (which models the kernel's write rules and keeps every value it held).
//!
//! Descriptors are real, since handlers take and hand out `OwnedFd`s:
//! a "socket" is any file a test registers with `add_socket`, and a
//! capability is a real anonymous file (memfd_create needs no privilege);
//! both are told apart by their file identity. A pidfd is an eventfd,
//! made readable when the test makes its process `exit`.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use portres_core::{BindOrder, Error, ErrorCode, PortSet, Protocol};
use portres_kernel::capability::FileId;
use portres_kernel::sock::SocketInfo;
use portres_kernel::sysctl::{FakeReservedPorts, ReservedPorts};

use super::{Kernel, ProcessIds};

/// A client socket as the fake describes it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FakeSocket {
    pub info: SocketInfo,
    pub netns_cookie: u64,
    /// The port it was bound to, once bound.
    pub bound: Option<u16>,
}

/// What the fake kernel holds; see the field docs.
#[derive(Debug)]
pub(crate) struct FakeKernelState {
    pub port_range: (u16, u16),
    pub unprivileged_port_start: u32,
    pub netns_cookie: u64,
    /// Ports some (non-portres) socket holds, per protocol.
    pub busy: HashMap<Protocol, BTreeSet<u16>>,
    /// How many in-use probes were made.
    pub probes: usize,
    /// How many socket-table dumps were made.
    pub dumps: usize,
    pub sockets: HashMap<FileId, FakeSocket>,
    pub reserved: FakeReservedPorts,
    /// Called (without the fake's lock) before each in-use probe, with the
    /// port: lets a test act while a handler is between two locks.
    pub on_probe: Option<ProbeHook>,
    /// When set, every bind fails with this code (as a real bind can fail
    /// on a port the probe found free: another socket took it meanwhile).
    pub bind_refusal: Option<ErrorCode>,
    /// Processes a pidfd may be opened for, by pid, with the eventfds
    /// standing for their pidfds (signalled by `exit`).
    pub processes: HashMap<i32, (ProcessIds, Vec<OwnedFd>)>,
}

/// See `FakeKernelState::on_probe`.
#[derive(Clone)]
pub(crate) struct ProbeHook(pub Arc<dyn Fn(u16) + Send + Sync>);

impl std::fmt::Debug for ProbeHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProbeHook")
    }
}

/// The fake kernel; clones share one state.
#[derive(Clone, Debug)]
pub(crate) struct FakeKernel(Arc<Mutex<FakeKernelState>>);

impl Default for FakeKernel {
    fn default() -> Self {
        FakeKernel(Arc::new(Mutex::new(FakeKernelState {
            port_range: (32768, 60999),
            unprivileged_port_start: 1024,
            netns_cookie: 4096,
            busy: HashMap::new(),
            probes: 0,
            dumps: 0,
            sockets: HashMap::new(),
            reserved: FakeReservedPorts::default(),
            on_probe: None,
            bind_refusal: None,
            processes: HashMap::new(),
        })))
    }
}

impl FakeKernel {
    /// The state, to set up or inspect.
    pub fn state(&self) -> MutexGuard<'_, FakeKernelState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A handle on the fake reserved-ports list, to give `State::new`.
    pub fn reserved_ports(&self) -> Box<dyn ReservedPorts> {
        Box::new(FakeList(self.clone()))
    }

    /// The reserved-ports list's value.
    pub fn reserved(&self) -> PortSet {
        self.state().reserved.value.clone()
    }

    /// How many writes the reserved-ports list took.
    pub fn reserved_writes(&self) -> usize {
        self.state().reserved.writes
    }

    /// Marks `port` held by some other socket.
    pub fn hold(&self, protocol: Protocol, port: u16) {
        self.state().busy.entry(protocol).or_default().insert(port);
    }

    /// A new "socket" of `protocol` in namespace `netns_cookie`.
    pub fn add_socket(&self, protocol: Protocol, netns_cookie: u64) -> OwnedFd {
        let fd = rustix::fs::memfd_create("fake-socket", rustix::fs::MemfdFlags::CLOEXEC)
            .expect("memfd_create");
        let id = portres_kernel::capability::file_id(fd.as_fd()).expect("fstat");
        let socket = FakeSocket {
            info: SocketInfo {
                protocol,
                ipv6: false,
            },
            netns_cookie,
            bound: None,
        };
        self.state().sockets.insert(id, socket);
        fd
    }

    /// A process `pid` of `uid` (real and effective) that pidfds may be
    /// opened for.
    pub fn spawn(&self, pid: i32, uid: u32) {
        let ids = ProcessIds {
            real_uid: uid,
            effective_uid: uid,
            ns_pid: pid,
        };
        self.state().processes.insert(pid, (ids, Vec::new()));
    }

    /// Process `pid` exits: its pidfds become readable.
    pub fn exit(&self, pid: i32) {
        if let Some((_, fds)) = self.state().processes.remove(&pid) {
            for fd in fds {
                let _ = rustix::io::write(&fd, &1u64.to_ne_bytes());
            }
        }
    }

    fn socket(&self, fd: BorrowedFd<'_>) -> Result<(FileId, FakeSocket), Error> {
        let id = portres_kernel::capability::file_id(fd)
            .map_err(|e| Error::new(ErrorCode::NotASocket, e.to_string()))?;
        let socket = self.state().sockets.get(&id).copied();
        socket
            .map(|s| (id, s))
            .ok_or_else(|| Error::new(ErrorCode::NotASocket, "not a socket (fake)"))
    }
}

impl Kernel for FakeKernel {
    fn local_port_range(&self) -> io::Result<(u16, u16)> {
        Ok(self.state().port_range)
    }

    fn unprivileged_port_start(&self) -> io::Result<u32> {
        Ok(self.state().unprivileged_port_start)
    }

    fn port_in_use(&self, protocol: Protocol, port: u16) -> io::Result<bool> {
        let hook = self.state().on_probe.clone();
        if let Some(ProbeHook(hook)) = hook {
            hook(port);
        }
        let mut state = self.state();
        state.probes += 1;
        Ok(state.busy.get(&protocol).is_some_and(|b| b.contains(&port)))
    }

    fn bound_ports(&self, protocol: Protocol) -> io::Result<Vec<u16>> {
        let mut state = self.state();
        state.dumps += 1;
        let mut ports: Vec<u16> = state
            .busy
            .get(&protocol)
            .map(|b| b.iter().copied().collect())
            .unwrap_or_default();
        ports.extend(
            state
                .sockets
                .values()
                .filter(|s| s.info.protocol == protocol)
                .filter_map(|s| s.bound),
        );
        Ok(ports)
    }

    fn current_netns_cookie(&self) -> io::Result<u64> {
        Ok(self.state().netns_cookie)
    }

    fn inspect_socket(&self, fd: BorrowedFd<'_>) -> Result<SocketInfo, Error> {
        let (_, socket) = self.socket(fd)?;
        if socket.bound.is_some() {
            return Err(Error::new(ErrorCode::AlreadyBound, "already bound (fake)"));
        }
        Ok(socket.info)
    }

    fn socket_netns_cookie(&self, fd: BorrowedFd<'_>) -> io::Result<u64> {
        self.socket(fd)
            .map(|(_, s)| s.netns_cookie)
            .map_err(|e| io::Error::other(e.message))
    }

    fn bind_socket(
        &self,
        fd: BorrowedFd<'_>,
        info: &SocketInfo,
        _address: IpAddr,
        mut order: BindOrder,
    ) -> Result<u16, Error> {
        let (id, _) = self.socket(fd)?;
        let mut state = self.state();
        if let Some(code) = state.bind_refusal {
            return Err(Error::new(code, "bind refused (fake)"));
        }
        let taken = |state: &FakeKernelState, port: u16| {
            state
                .busy
                .get(&info.protocol)
                .is_some_and(|b| b.contains(&port))
                || state
                    .sockets
                    .values()
                    .any(|s| s.info.protocol == info.protocol && s.bound == Some(port))
        };
        let port = order
            .find(|&port| !taken(&state, port))
            .ok_or_else(|| Error::new(ErrorCode::BlockExhausted, "every port is in use (fake)"))?;
        if let Some(socket) = state.sockets.get_mut(&id) {
            socket.bound = Some(port);
        }
        Ok(port)
    }

    fn new_capability(&self) -> io::Result<OwnedFd> {
        portres_kernel::capability::new_capability()
    }

    fn file_id(&self, fd: BorrowedFd<'_>) -> io::Result<FileId> {
        portres_kernel::capability::file_id(fd)
    }

    fn open_pidfd(&self, pid: i32) -> io::Result<OwnedFd> {
        let mut state = self.state();
        let (_, fds) = state
            .processes
            .get_mut(&pid)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
        let fd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC)?;
        fds.push(fd.try_clone()?);
        Ok(fd)
    }

    fn pidfd_exited(&self, pidfd: BorrowedFd<'_>) -> bool {
        portres_kernel::process::pidfd_exited(pidfd)
    }

    fn process_ids(&self, pid: i32) -> io::Result<ProcessIds> {
        let state = self.state();
        let (ids, _) = state
            .processes
            .get(&pid)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
        Ok(*ids)
    }
}

/// The fake's reserved-ports list as a `ReservedPorts` handle.
struct FakeList(FakeKernel);

impl ReservedPorts for FakeList {
    fn read(&self) -> io::Result<PortSet> {
        self.0.state().reserved.read()
    }

    fn add(&mut self, ports: &PortSet) -> io::Result<()> {
        self.0.state().reserved.add(ports)
    }

    fn replace(&mut self, ports: &PortSet) -> io::Result<()> {
        self.0.state().reserved.replace(ports)
    }
}
