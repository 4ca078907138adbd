//! The connection to the daemon and every call it offers. The connection
//! itself is in `conn`, the bind calls in `bind`, [`DaemonWatch`] in `watch`.

use std::collections::VecDeque;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use portres_core::{Error, ErrorCode, Owner, Protocol, Token};
use portres_proto::paths::{SOCKET_ENV, SocketCandidate, SocketKind};
use portres_proto::{
    AcquireParams, AttachReply, BlockParams, CreateParams, Empty, FrameBuffer, ListParams,
    ListReply, MAX_REPLY_BYTES, ReleaseParams, Request, ReservationInfo, ReservationReply,
    StatusReply,
};
use serde::de::DeserializeOwned;

use crate::Reservation;
use crate::trust::{self, DaemonIdentity};

mod bind;
mod conn;
mod watch;

use conn::Conn;
pub use watch::DaemonWatch;

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

    /// Strict mode: moves this process into a cgroup of this session's
    /// (the daemon checks it is the connection's peer, by a pidfd of it);
    /// from then on it and every process it starts may `bind()` this
    /// session's runtime blocks themselves. `portres exec` calls it before
    /// starting the command. With enforcement off the daemon does nothing
    /// and says yes; a daemon from before this call (it has no strict
    /// mode) answers MethodNotFound, which is a yes here too.
    pub fn enter_cgroup(&self) -> Result<(), Error> {
        let pidfd = rustix::process::pidfd_open(
            rustix::process::getpid(),
            rustix::process::PidfdFlags::empty(),
        )
        .map_err(|e| Error::new(ErrorCode::Internal, format!("pidfd_open: {e}")))?;
        match self.call_with_fd::<Empty>(Request::EnterCgroup, pidfd.as_fd()) {
            Ok(_) => Ok(()),
            // Service errors arrive as invalid_parameter: portresd's
            // ("unknown method ...") or a bare varlink one.
            Err(e)
                if e.code == ErrorCode::InvalidParameter
                    && (e.message.contains("unknown method")
                        || e.message.contains("MethodNotFound")) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
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
            address: None,
        }))?;
        Reservation::new(self.clone(), r.reservation)
    }

    /// Releases a runtime reservation by token (held by this session or one
    /// whose capability this connection presented).
    pub fn release(&self, token: Token) -> Result<(), Error> {
        let _: Empty = self.call(Request::Release(ReleaseParams { token }))?;
        Ok(())
    }

    /// Releases a runtime reservation without waiting for the answer (a
    /// oneway call: the daemon sends none, so an error goes unreported).
    /// Every later call on this connection sees it done; another
    /// connection may see it a moment later. Errs only if it could not be
    /// sent.
    pub fn release_oneway(&self, token: Token) -> Result<(), Error> {
        self.lock()
            .send_oneway(&Request::Release(ReleaseParams { token }))
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

    /// Re-reads the daemon's portres.d files and applies them
    /// (administrators): what changed and what could not be applied.
    pub fn reload(&self) -> Result<crate::ReloadReply, Error> {
        self.call(Request::Reload)
    }

    /// Sends a raw request and returns the raw reply parameters (for tools
    /// that speak the wire interface directly).
    pub fn raw_call(&self, req: Request) -> Result<serde_json::Value, Error> {
        self.call(req)
    }
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
