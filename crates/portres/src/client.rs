//! The connection to the daemon and every call it offers.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use portres_core::{Error, ErrorCode, Owner, Protocol, Token};
use portres_proto::fdpass::{send_with_fds, try_recv_with_fds};
use portres_proto::paths::{SOCKET_ENV, SocketCandidate, SocketKind};
use portres_proto::{
    AcquireParams, AttachReply, BindParams, BindReply, BlockParams, CreateParams, Empty,
    FrameBuffer, ListParams, ListReply, MAX_REPLY_BYTES, ReleaseParams, Request, ReservationInfo,
    ReservationReply, StatusReply, decode_reply,
};
use serde::de::DeserializeOwned;
use socket2::{Domain, Socket, Type};

use crate::Reservation;
use crate::trust::{self, DaemonIdentity, unavailable};

struct Conn {
    stream: UnixStream,
    frames: FrameBuffer,
    fds: VecDeque<OwnedFd>,
    path: PathBuf,
    kind: SocketKind,
    daemon: DaemonIdentity,
    /// Default sockets tried before this one, each with why it was not used.
    passed_over: Vec<String>,
}

impl Conn {
    /// An error reply already sent by a daemon that then closed the
    /// connection, if there is one.
    fn parting_words(&mut self) -> Option<Error> {
        loop {
            if let Ok(Some(frame)) = self.frames.next_frame() {
                return decode_reply::<Empty>(frame).err();
            }
            let spare = self.frames.spare(4096);
            match try_recv_with_fds(&self.stream, spare, &mut self.fds) {
                Ok(got) if got.bytes > 0 => self.frames.commit(got.bytes, 4096),
                _ => {
                    self.frames.commit(0, 4096);
                    return None;
                }
            }
        }
    }

    fn call<T: DeserializeOwned>(
        &mut self,
        req: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(T, Option<OwnedFd>), Error> {
        let bytes = req.encode_with_cpu(current_cpu());
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        if let Err(e) = send_with_fds(self.stream.as_fd(), &bytes, &fds) {
            // The daemon may have refused the connection (e.g. a connection
            // limit) and closed it; its reason is waiting to be read.
            return Err(self
                .parting_words()
                .unwrap_or_else(|| unavailable(&self.path, e)));
        }
        self.fds.clear();
        loop {
            match self.frames.next_frame() {
                Ok(Some(frame)) => {
                    let v = decode_reply::<T>(frame)?;
                    return Ok((v, self.fds.pop_front()));
                }
                Ok(None) => {}
                Err(e) => return Err(unavailable(&self.path, e)),
            }
            let spare_len = 16 * 1024;
            let spare = self.frames.spare(spare_len);
            let got = recv_when_readable(&self.stream, spare, &mut self.fds);
            let got = match got {
                Ok(g) => {
                    self.frames.commit(g.bytes, spare_len);
                    g
                }
                Err(e) => {
                    self.frames.commit(0, spare_len);
                    return Err(unavailable(&self.path, e));
                }
            };
            if got.bytes == 0 {
                return Err(unavailable(&self.path, "the daemon closed the connection"));
            }
        }
    }
}

/// Waits for the reply with poll(POLLIN), then reads without blocking.
///
/// Why not a blocking recv: a reader blocked in recvmsg() sleeps on the
/// socket's one wait queue and is woken by *every* wakeup on it — including
/// the "write space" wakeup the kernel sends when the daemon consumes our
/// request. poll()'s waiter is filtered by event mask, so only the reply
/// wakes us. On a 2-vCPU VM each spurious wakeup is an inter-processor
/// interrupt; avoiding it measurably raised throughput (bench/README.md).
fn recv_when_readable(
    stream: &UnixStream,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
) -> io::Result<portres_proto::fdpass::Received> {
    use rustix::event::{PollFd, PollFlags, poll};
    loop {
        let mut pfd = [PollFd::new(stream, PollFlags::IN)];
        match poll(&mut pfd, None) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        match try_recv_with_fds(stream, buf, fds) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            other => return other,
        }
    }
}

/// The CPU the calling thread runs on, sent with each call as a placement
/// hint: the daemon serves the connection from a worker pinned to that CPU,
/// so the request and its reply wake threads on one CPU instead of crossing
/// to the other (bench/README.md: 2.2x more CPU per operation when every
/// round trip crosses).
fn current_cpu() -> Option<u32> {
    // SAFETY: sched_getcpu takes no arguments and has no preconditions; it
    // returns -1 on failure. glibc reads it from the thread's rseq area, so
    // it costs no system call (rustix's version makes one).
    let cpu = unsafe { libc::sched_getcpu() };
    u32::try_from(cpu).ok()
}

/// Options of a persistent reservation.
#[derive(Clone, Debug, Default)]
pub struct CreateOptions {
    /// A user or group that may look it up and bind into it without being
    /// an administrator.
    pub owner: Option<Owner>,
    /// Free text shown in `list`.
    pub label: Option<String>,
}

/// A connection (session) to portresd. Cheap to clone; clones share the
/// connection, and calls from several threads are serialised on it.
#[derive(Clone)]
pub struct Client {
    conn: Arc<Mutex<Conn>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let conn = self.lock();
        f.debug_struct("Client")
            .field("socket", &conn.path)
            .field("kind", &conn.kind)
            .field("daemon", &conn.daemon)
            .finish()
    }
}

impl Client {
    /// Connects to the default daemon (`PORTRES_SOCKET`, else the user's
    /// own daemon, else the system daemon) and, if `PORTRES_SESSION_FD` is
    /// set, presents that inherited session capability. In a setuid or
    /// setcap process both variables are ignored.
    ///
    /// A default socket is used only if it passes its trust checks (your own
    /// daemon: socket and directory yours, directory writable by nobody
    /// else, daemon running as you; the system daemon: running as root);
    /// one that fails is passed over, and if none is usable the error
    /// (`daemon_untrusted` if any was refused, else `daemon_unavailable`)
    /// lists every socket tried and why. `PORTRES_SOCKET` is used whoever
    /// answers on it (see `daemon`).
    pub fn connect() -> Result<Client, Error> {
        let c = Client::connect_first(&portres_proto::paths::client_sockets())?;
        c.attach_inherited()?;
        Ok(c)
    }

    /// The first of `candidates` that can be reached and passes its checks.
    fn connect_first(candidates: &[SocketCandidate]) -> Result<Client, Error> {
        let mut tried = Vec::new();
        let mut refused = false;
        for cand in candidates {
            match Client::connect_checked(&cand.path, cand.kind) {
                Ok(c) => {
                    c.lock().passed_over = tried;
                    return Ok(c);
                }
                // A socket the caller named: its own error says it all.
                Err(e) if cand.kind == SocketKind::Explicit => return Err(e),
                Err(e) => {
                    refused |= e.code == ErrorCode::DaemonUntrusted;
                    tried.push(format!(
                        "{} ({}): {}: {}",
                        cand.path.display(),
                        cand.kind.describe(),
                        e.code,
                        e.message
                    ));
                }
            }
        }
        Err(Error::new(
            if refused {
                ErrorCode::DaemonUntrusted
            } else {
                ErrorCode::DaemonUnavailable
            },
            format!(
                "no portres daemon to talk to; tried: {}. Start one: `portresd` as yourself \
                 (your own daemon), or the system service as root (`systemctl start portresd`); \
                 or name a daemon's socket with {SOCKET_ENV} or --socket",
                if tried.is_empty() {
                    "nothing".to_string()
                } else {
                    tried.join("; ")
                }
            ),
        ))
    }

    /// Connects to the daemon at `path`, whoever runs it (`daemon` tells
    /// who answered). Does not look at the environment.
    pub fn connect_to(path: impl AsRef<Path>) -> Result<Client, Error> {
        Client::connect_checked(path.as_ref(), SocketKind::Explicit)
    }

    /// Connects to the daemon at `path` with the trust checks of `kind`
    /// (`SocketKind::User`: the caller's own daemon; `System`: root's);
    /// refusals are `daemon_untrusted`, and nothing was sent on the refused
    /// socket. Does not look at the environment.
    pub fn connect_checked(path: impl AsRef<Path>, kind: SocketKind) -> Result<Client, Error> {
        let path = path.as_ref();
        let (stream, daemon) = trust::connect(path, kind)?;
        Ok(Client {
            conn: Arc::new(Mutex::new(Conn {
                stream,
                frames: FrameBuffer::new(MAX_REPLY_BYTES),
                fds: VecDeque::new(),
                path: path.to_path_buf(),
                kind,
                daemon,
                passed_over: Vec::new(),
            })),
        })
    }

    /// A new connection (a new session) to the socket this client uses,
    /// checked as it was, and answered by the same user.
    pub fn connect_again(&self) -> Result<Client, Error> {
        let (path, kind, daemon) = {
            let conn = self.lock();
            (conn.path.clone(), conn.kind, conn.daemon)
        };
        let again = Client::connect_checked(&path, kind)?;
        let now = again.daemon();
        if now.uid != daemon.uid {
            return Err(Error::new(
                ErrorCode::DaemonUntrusted,
                format!(
                    "refusing the socket {}: now answered by {}, before by uid {}",
                    path.display(),
                    now.describe(trust::my_uid()),
                    daemon.uid
                ),
            ));
        }
        Ok(again)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Conn> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Who answered on the socket, as the kernel recorded it
    /// (`SO_PEERCRED`).
    pub fn daemon(&self) -> DaemonIdentity {
        self.lock().daemon
    }

    /// How this client came to its socket, i.e. which checks it passed.
    pub fn socket_kind(&self) -> SocketKind {
        self.lock().kind
    }

    /// The default sockets `connect` tried and did not use before this one,
    /// each as "PATH (what it is): code: why".
    pub fn passed_over(&self) -> Vec<String> {
        self.lock().passed_over.clone()
    }

    fn call<T: DeserializeOwned>(&self, req: Request) -> Result<T, Error> {
        let mut conn = self.lock();
        conn.call(&req, None).map(|(v, _)| v)
    }

    fn call_with_fd<T: DeserializeOwned>(
        &self,
        req: Request,
        fd: BorrowedFd<'_>,
    ) -> Result<T, Error> {
        let mut conn = self.lock();
        conn.call(&req, Some(fd)).map(|(v, _)| v)
    }

    /// A watch on this session's connection that tells when the daemon has
    /// gone (stopped, crashed, or closed the session), which ends every
    /// runtime reservation of the session. It holds a duplicate of the
    /// connection's descriptor, used only to wait for the hang-up: poll it
    /// (it is [`AsFd`]) for `POLLRDHUP`, or call [`DaemonWatch::wait`].
    pub fn daemon_watch(&self) -> Result<DaemonWatch, Error> {
        let conn = self.lock();
        let fd = conn.stream.as_fd().try_clone_to_owned().map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("duplicating the session's descriptor: {e}"),
            )
        })?;
        Ok(DaemonWatch { fd })
    }

    /// The socket this client is connected to.
    pub fn socket_path(&self) -> PathBuf {
        self.lock().path.clone()
    }

    /// Presents the capability named by `PORTRES_SESSION_FD`, if set.
    /// Returns whether one was presented.
    /// Ignored (false) in a setuid or setcap process: there the variable is
    /// whoever started the program's, not the program's.
    pub fn attach_inherited(&self) -> Result<bool, Error> {
        let Some(raw) = portres_proto::paths::client_env(portres_proto::paths::SESSION_FD_ENV)
        else {
            return Ok(false);
        };
        let fd: RawFd = raw
            .to_str()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::InvalidParameter,
                    format!(
                        "{} is not a descriptor number: {raw:?}",
                        portres_proto::paths::SESSION_FD_ENV
                    ),
                )
            })?;
        // Only use the number if it is an open descriptor of ours.
        if fd < 0 || rustix::io::fcntl_getfd(unsafe_borrow(fd)).is_err() {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!(
                    "{}={fd} is not an open descriptor in this process",
                    portres_proto::paths::SESSION_FD_ENV
                ),
            ));
        }
        self.attach(unsafe_borrow(fd))?;
        Ok(true)
    }

    /// Presents a session capability: this connection may then bind into
    /// and release that session's runtime reservations. Returns how many it
    /// holds.
    pub fn attach(&self, capability: BorrowedFd<'_>) -> Result<usize, Error> {
        let r: AttachReply = self.call_with_fd(Request::Attach, capability)?;
        Ok(r.reservations)
    }

    /// A descriptor standing for this session, to hand to child processes
    /// (clear its close-on-exec flag first). Whoever holds it may `attach`.
    pub fn capability(&self) -> Result<OwnedFd, Error> {
        let mut conn = self.lock();
        let (_, fd) = conn.call::<Empty>(&Request::GetCapability, None)?;
        fd.ok_or_else(|| Error::new(ErrorCode::Internal, "the daemon sent no capability"))
    }

    /// Acquires a runtime reservation of `count` ports starting at `start`
    /// (0: any free block in the kernel's dynamic range). Dropping the
    /// returned handle releases it.
    pub fn acquire(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
    ) -> Result<Reservation, Error> {
        self.acquire_labeled(protocol, start, count, None)
    }

    /// `acquire` with a label shown in `list`.
    pub fn acquire_labeled(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        label: Option<String>,
    ) -> Result<Reservation, Error> {
        let r: ReservationReply = self.call(Request::Acquire(AcquireParams {
            protocol,
            start: start as u32,
            count: count as u32,
            label,
        }))?;
        Reservation::new(self.clone(), r.reservation)
    }

    /// Releases a runtime reservation by token (held by this session or one
    /// whose capability this connection presented).
    pub fn release(&self, token: Token) -> Result<(), Error> {
        let _: Empty = self.call(Request::Release(ReleaseParams { token }))?;
        Ok(())
    }

    /// Has the daemon bind `socket` (unbound TCP or UDP, IPv4 or IPv6) to
    /// `address` and a free port of the reservation `token`; returns the
    /// port.
    pub fn bind_fd(
        &self,
        token: Token,
        socket: BorrowedFd<'_>,
        address: IpAddr,
    ) -> Result<u16, Error> {
        let r: BindReply =
            self.call_with_fd(Request::Bind(BindParams { token, address }), socket)?;
        Ok(r.port)
    }

    /// `bind_fd` for a `socket2::Socket`.
    pub fn bind_socket(
        &self,
        token: Token,
        socket: &Socket,
        address: IpAddr,
    ) -> Result<u16, Error> {
        self.bind_fd(token, socket.as_fd(), address)
    }

    /// A TCP listener on `address` and a port of the reservation (with
    /// SO_REUSEADDR, as std's `TcpListener::bind` sets it).
    pub fn bind_tcp(&self, token: Token, address: IpAddr) -> Result<TcpListener, Error> {
        let sock = new_socket(address, Type::STREAM)?;
        sock.set_reuse_address(true).map_err(io_err)?;
        self.bind_socket(token, &sock, address)?;
        sock.listen(1024).map_err(io_err)?;
        Ok(sock.into())
    }

    /// A UDP socket bound to `address` and a port of the reservation.
    pub fn bind_udp(&self, token: Token, address: IpAddr) -> Result<UdpSocket, Error> {
        let sock = new_socket(address, Type::DGRAM)?;
        self.bind_socket(token, &sock, address)?;
        Ok(sock.into())
    }

    /// Creates a persistent reservation (administrators only).
    pub fn create(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
        options: CreateOptions,
    ) -> Result<ReservationInfo, Error> {
        let r: ReservationReply = self.call(Request::Create(CreateParams {
            protocol,
            start: start as u32,
            count: count as u32,
            owner: options.owner.map(Into::into),
            label: options.label,
        }))?;
        Ok(r.reservation)
    }

    /// Deletes the persistent reservation of exactly this block
    /// (administrators only).
    pub fn delete(&self, protocol: Protocol, start: u16, count: u16) -> Result<(), Error> {
        let _: Empty = self.call(Request::Delete(BlockParams {
            protocol,
            start: start as u32,
            count: count as u32,
        }))?;
        Ok(())
    }

    /// Looks up the persistent reservation of exactly this block
    /// (administrators and its owner), token included.
    pub fn lookup(
        &self,
        protocol: Protocol,
        start: u16,
        count: u16,
    ) -> Result<ReservationInfo, Error> {
        let r: ReservationReply = self.call(Request::Lookup(BlockParams {
            protocol,
            start: start as u32,
            count: count as u32,
        }))?;
        Ok(r.reservation)
    }

    /// Every reservation (optionally of one protocol), with the ports in use.
    pub fn list(&self, protocol: Option<Protocol>) -> Result<Vec<ReservationInfo>, Error> {
        let r: ListReply = self.call(Request::List(ListParams { protocol }))?;
        Ok(r.reservations)
    }

    /// The daemon's configuration and counts.
    pub fn status(&self) -> Result<StatusReply, Error> {
        self.call(Request::Status)
    }

    /// Sends a raw request and returns the raw reply parameters (for tools
    /// that speak the wire interface directly).
    pub fn raw_call(&self, req: Request) -> Result<serde_json::Value, Error> {
        self.call(req)
    }
}

fn io_err(e: io::Error) -> Error {
    Error::new(ErrorCode::Internal, format!("socket: {e}"))
}

fn new_socket(address: IpAddr, ty: Type) -> Result<Socket, Error> {
    let domain = if address.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let proto = if ty == Type::STREAM {
        socket2::Protocol::TCP
    } else {
        socket2::Protocol::UDP
    };
    Socket::new(domain, ty.cloexec(), Some(proto)).map_err(io_err)
}

/// Borrows a descriptor number taken from the environment. The caller has
/// checked that it is open; it stays open for the duration of the borrow
/// because nothing in this library closes it.
fn unsafe_borrow<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: `fd` is non-negative and was checked to be open with F_GETFD
    // (or is about to be, and a closed number only makes the syscall fail
    // with EBADF); we never close it, so it outlives the borrow.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Tells when the daemon hangs up a session (see [`Client::daemon_watch`]).
/// Dropping it closes only its duplicate descriptor; the session lives on
/// in its `Client`.
#[derive(Debug)]
pub struct DaemonWatch {
    fd: OwnedFd,
}

impl DaemonWatch {
    /// The poll events that mean the daemon has gone.
    pub const EVENTS: rustix::event::PollFlags = rustix::event::PollFlags::RDHUP;

    /// Whether `revents` (from a poll of this watch's descriptor with
    /// [`DaemonWatch::EVENTS`]) says the daemon has gone.
    pub fn gone_in(revents: rustix::event::PollFlags) -> bool {
        use rustix::event::PollFlags;
        revents.intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR)
    }

    /// Whether the daemon has gone already (does not wait).
    pub fn is_gone(&self) -> bool {
        self.poll(Some(std::time::Duration::ZERO))
    }

    /// Waits until the daemon has gone (`true`) or `timeout` passed
    /// (`false`; `None` waits for ever).
    pub fn wait(&self, timeout: Option<std::time::Duration>) -> bool {
        self.poll(timeout)
    }

    fn poll(&self, timeout: Option<std::time::Duration>) -> bool {
        use rustix::event::{PollFd, PollFlags, Timespec, poll};
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            let left = deadline.map(|d| {
                let left = d.saturating_duration_since(std::time::Instant::now());
                Timespec {
                    tv_sec: left.as_secs() as _,
                    tv_nsec: left.subsec_nanos() as _,
                }
            });
            let mut pfd = [PollFd::new(&self.fd, Self::EVENTS)];
            match poll(&mut pfd, left.as_ref()) {
                Ok(0) => return false,
                Ok(_) => {
                    let revents = pfd[0].revents();
                    if Self::gone_in(revents) {
                        return true;
                    }
                    // Woken without a hang-up (cannot happen for RDHUP alone,
                    // but never spin): treat as not gone yet.
                    if revents == PollFlags::empty() {
                        continue;
                    }
                    return false;
                }
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return true,
            }
        }
    }
}

impl AsFd for DaemonWatch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
