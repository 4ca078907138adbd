//! The transport: the listening socket and one single-threaded epoll loop
//! serving every connection — framing, descriptor bookkeeping, connection
//! limits, the deferred kernel write and clean shutdown. It decodes requests
//! and hands them to the state owner; it decides nothing itself.
//!
//! Why a hand-written loop rather than an async runtime: every request is
//! microseconds of work on one shared state, so one thread serves them
//! best; the loop registers a connection for EPOLLIN only (EPOLLOUT just
//! while a reply is stuck), so a client reading its reply never wakes the
//! daemon, and nothing but the request itself costs a wakeup. Measured
//! figures are in bench/README.md.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use portres_core::{Caller, Error, ErrorCode, SessionId};
use portres_proto::fdpass::try_recv_with_fds;
use portres_proto::{
    FrameBuffer, ListReply, MAX_FDS_PER_MESSAGE, MAX_REQUEST_BYTES, Request, encode_error,
    encode_reply,
};
use rustix::event::epoll;

use crate::config::{Config, KernelSync, Mode};
use crate::handlers::{Outcome, dispatch, fill_in_use};
use crate::state::State;

/// How long a release may leave its ports reserved in the kernel before the
/// smaller value is written (one write covers every release meanwhile).
pub const KERNEL_SHRINK_DELAY: Duration = Duration::from_millis(5);

/// Most descriptors queued on one connection before it is dropped.
const MAX_PENDING_FDS: usize = 16;

/// Stop reading requests from a connection whose unsent replies pass this
/// (a client that sends without reading cannot make us buffer without bound).
const MAX_UNSENT_BYTES: usize = 1 << 20;

/// Most bytes of partly received requests one non-root user's connections
/// may make the daemon hold, beyond a small allowance per connection. A
/// connection that would pass it is refused and closed, so thousands of
/// connections each holding a never-finished large request cannot pin the
/// daemon's memory.
const PER_UID_BUFFER_BUDGET: usize = 8 << 20;

/// Buffer memory per connection not counted against the budget.
const BUFFER_ALLOWANCE: usize = 8 * 1024;

/// Bytes read per receive call.
const READ_CHUNK: usize = 4096;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_STOP: u64 = 1;
const TOKEN_WAKE: u64 = 2;
const FIRST_CONN_TOKEN: u64 = 16;

/// Why the daemon could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Asks a running daemon to stop (from a signal handler thread, a test).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct StopHandle {
    fd: Arc<OwnedFd>,
}

impl StopHandle {
    /// Makes `Daemon::run` stop cleanly and return.
    pub fn stop(&self) {
        let _ = rustix::io::write(&*self.fd, &1u64.to_ne_bytes());
    }
}

/// A started daemon: store open, kernel in sync, socket bound.
pub struct Daemon {
    state: State,
    config: Config,
    listener: UnixListener,
    socket: PathBuf,
    stop_fd: Arc<OwnedFd>,
    shrink_pending: Arc<AtomicBool>,
}

impl fmt::Debug for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Daemon")
            .field("socket", &self.socket)
            .finish()
    }
}

fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    use rustix::event::EventfdFlags;
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?)
}

impl Daemon {
    /// Opens the store, decides kernel sync, restores persistent
    /// reservations, writes the kernel's value, and binds the socket.
    pub fn start(config: Config) -> Result<Daemon, StartError> {
        raise_fd_limit();
        let store = portres_store::Store::open(&config.state_dir).map_err(|e| {
            StartError(format!(
                "cannot open the store in {}: {e}",
                config.state_dir.display()
            ))
        })?;
        let kernel = decide_kernel_sync(config.kernel_sync)?;
        let cookie = portres_kernel::sock::current_netns_cookie()
            .map_err(|e| StartError(format!("cannot read our network namespace cookie: {e}")))?;
        let mut state = State::new(
            config.clone(),
            store,
            kernel,
            Box::new(portres_kernel::probe::port_in_use),
            cookie,
        )
        .map_err(|e| StartError(e.message))?;
        let shrink_pending = Arc::new(AtomicBool::new(false));
        let flag = shrink_pending.clone();
        state.set_on_shrink_pending(Box::new(move || flag.store(true, Ordering::Relaxed)));
        let stop_fd = Arc::new(eventfd().map_err(|e| StartError(format!("eventfd: {e}")))?);
        let listener = bind_socket(&config.socket, config.mode)?;
        let (_, persistent) = state.counts();
        log::info!(
            "portresd {} ({} mode) listening on {}; store {}{}; kernel sync {}; {} persistent reservation(s) restored",
            env!("CARGO_PKG_VERSION"),
            config.mode.as_str(),
            config.socket.display(),
            state.store.path().display(),
            if state.store.is_read_only() {
                " (READ-ONLY: persistent changes fail until it is writable)"
            } else {
                ""
            },
            if state.kernel.is_some() { "on" } else { "off" },
            persistent,
        );
        Ok(Daemon {
            state,
            socket: config.socket.clone(),
            config,
            listener,
            stop_fd,
            shrink_pending,
        })
    }

    /// The socket path it listens on.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// A handle that makes `run` return.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            fd: self.stop_fd.clone(),
        }
    }

    /// Serves on the calling thread until `StopHandle::stop`, then stops
    /// cleanly: runtime reservations end, the kernel keeps baseline +
    /// persistent blocks, the socket file is removed.
    pub fn run(self) -> io::Result<()> {
        let mut server = Server::new(self)?;
        let result = server.run();
        let _ = std::fs::remove_file(&server.socket);
        server.state.shutdown();
        log::info!("portresd stopped");
        result
    }
}

fn decide_kernel_sync(
    mode: KernelSync,
) -> Result<Option<Box<dyn portres_kernel::sysctl::ReservedPorts>>, StartError> {
    use portres_kernel::sysctl::ProcReservedPorts;
    let sysctl = ProcReservedPorts::new();
    match mode {
        KernelSync::Off => {
            log::info!(
                "kernel sync off (--kernel-sync off): ip_local_reserved_ports is left alone"
            );
            Ok(None)
        }
        KernelSync::On => match sysctl.check_writable() {
            Ok(()) => Ok(Some(Box::new(sysctl))),
            Err(e) => Err(StartError(format!(
                "--kernel-sync on, but {} is not writable: {e} (run as root, or in a network namespace you own)",
                ProcReservedPorts::DEFAULT_PATH
            ))),
        },
        KernelSync::Auto => match sysctl.check_writable() {
            Ok(()) => Ok(Some(Box::new(sysctl))),
            Err(e) => {
                log::warn!(
                    "kernel sync off: cannot write {} ({e}); reservations still arbitrate between portres users, but the kernel's bind(0)/connect() may hand out reserved ports",
                    ProcReservedPorts::DEFAULT_PATH
                );
                Ok(None)
            }
        },
    }
}

/// Refuses a socket directory someone else could tamper with: in user mode
/// (often under /tmp) it must be ours and writable by nobody else.
fn check_socket_dir(dir: &Path, mode: Mode) -> Result<(), StartError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(dir)
        .map_err(|e| StartError(format!("cannot inspect {}: {e}", dir.display())))?;
    let me = rustix::process::geteuid().as_raw();
    let writable_by_others = meta.mode() & 0o022 != 0 && meta.mode() & 0o1000 == 0;
    if mode == Mode::User && (meta.uid() != me || writable_by_others) {
        return Err(StartError(format!(
            "refusing to put the socket in {}: it is owned by uid {} with mode {:o}; it must be owned by uid {me} and not writable by others",
            dir.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

fn bind_socket(path: &Path, mode: Mode) -> Result<UnixListener, StartError> {
    let err = |what: &str, e: io::Error| StartError(format!("{what} {}: {e}", path.display()));
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir).map_err(|e| err("cannot create the directory of", e))?;
        // System mode: anyone may reach the socket (permissions are judged
        // per request from peer credentials). User mode: only us.
        let perm = if mode == Mode::System { 0o755 } else { 0o700 };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(perm))
            .map_err(|e| err("cannot set permissions on the directory of", e))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        check_socket_dir(dir, mode)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(StartError(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )));
        }
        if UnixStream::connect(path).is_ok() {
            return Err(StartError(format!(
                "another portresd is already listening on {}",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| err("cannot remove the stale socket", e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| err("cannot listen on", e))?;
    let perm = if mode == Mode::System { 0o666 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(perm))
        .map_err(|e| err("cannot set permissions on", e))?;
    Ok(listener)
}

/// A finished `List` reply: (connection token, encoded frame).
type ListResult = (u64, Vec<u8>);

/// A reply waiting to be sent, possibly with a descriptor attached to its
/// first byte.
struct Unsent {
    bytes: Vec<u8>,
    sent: usize,
    fd: Option<OwnedFd>,
}

/// One client connection.
struct Conn {
    stream: UnixStream,
    session: SessionId,
    uid: u32,
    frames: FrameBuffer,
    /// Bytes received so far (stream offset of the next byte).
    received: u64,
    /// Stream offset just past the last frame taken.
    frame_end: u64,
    /// Descriptors received, each tagged with the stream offset of the
    /// first byte that came with it: the kernel delivers SCM_RIGHTS with the
    /// bytes of the sendmsg() that carried them, so the frame containing
    /// that byte is the request they belong to.
    pending_fds: VecDeque<(u64, OwnedFd)>,
    unsent: VecDeque<Unsent>,
    unsent_bytes: usize,
    /// A `List` is being completed off-thread; later requests wait for it so
    /// replies stay in order.
    list_in_flight: bool,
    /// EPOLLOUT is registered.
    want_write: bool,
    /// Peer finished sending; close once replies are out.
    read_closed: bool,
    /// Buffer bytes charged to this connection's user.
    charged: usize,
}

struct Server {
    state: State,
    config: Config,
    listener: UnixListener,
    socket: PathBuf,
    /// Registered with epoll; kept open for as long as we wait on it.
    _stop_fd: Arc<OwnedFd>,
    shrink_pending: Arc<AtomicBool>,
    shrink_deadline: Option<Instant>,
    epoll: OwnedFd,
    wake_fd: Arc<OwnedFd>,
    conns: HashMap<u64, Conn>,
    next_token: u64,
    per_uid: HashMap<u32, usize>,
    /// When each kind of refusal was last logged (at most once a second per
    /// kind, so a flood cannot fill the log, yet no kind hides another).
    last_limit_log: HashMap<&'static str, Instant>,
    /// Per non-root uid: buffer bytes charged against PER_UID_BUFFER_BUDGET.
    buffered_by_uid: HashMap<u32, usize>,
    list_results: (mpsc::Sender<ListResult>, mpsc::Receiver<ListResult>),
}

impl Server {
    fn new(d: Daemon) -> io::Result<Server> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        d.listener.set_nonblocking(true)?;
        let wake_fd = Arc::new(eventfd()?);
        epoll::add(
            &epoll,
            &d.listener,
            epoll::EventData::new_u64(TOKEN_LISTENER),
            epoll::EventFlags::IN,
        )?;
        epoll::add(
            &epoll,
            &*d.stop_fd,
            epoll::EventData::new_u64(TOKEN_STOP),
            epoll::EventFlags::IN,
        )?;
        epoll::add(
            &epoll,
            &*wake_fd,
            epoll::EventData::new_u64(TOKEN_WAKE),
            epoll::EventFlags::IN,
        )?;
        Ok(Server {
            state: d.state,
            config: d.config,
            listener: d.listener,
            socket: d.socket,
            _stop_fd: d.stop_fd,
            shrink_pending: d.shrink_pending,
            shrink_deadline: None,
            epoll,
            wake_fd,
            conns: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            per_uid: HashMap::new(),
            last_limit_log: HashMap::new(),
            buffered_by_uid: HashMap::new(),
            list_results: mpsc::channel(),
        })
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        loop {
            let timeout = self.shrink_deadline.map(|d| {
                let left = d.saturating_duration_since(Instant::now());
                rustix::event::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: left.subsec_nanos() as i64,
                }
            });
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            for ev in &events {
                let token = ev.data.u64();
                let flags = ev.flags;
                match token {
                    TOKEN_STOP => return Ok(()),
                    TOKEN_LISTENER => self.accept_all(),
                    TOKEN_WAKE => self.finish_lists(),
                    _ => self.serve(token, flags),
                }
            }
            self.schedule_kernel_shrink();
        }
    }

    /// Turns a pending shrink into a deadline; writes it when due.
    fn schedule_kernel_shrink(&mut self) {
        if self.shrink_pending.swap(false, Ordering::Relaxed) && self.shrink_deadline.is_none() {
            self.shrink_deadline = Some(Instant::now() + KERNEL_SHRINK_DELAY);
        }
        if self.shrink_deadline.is_some_and(|d| Instant::now() >= d) {
            self.shrink_deadline = None;
            self.state.flush_kernel();
            // flush_kernel clears the pending mark it set; a release racing
            // in between would have set the flag again.
            self.shrink_pending.store(false, Ordering::Relaxed);
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.accept(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog;
                    // level-triggered epoll retries on the next round.
                    log::warn!("accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn refuse(&mut self, kind: &'static str, stream: &UnixStream, uid: u32, pid: i32, why: String) {
        log_limited(&mut self.last_limit_log, kind, || {
            format!("{why}: refusing a connection from uid {uid} pid {pid}")
        });
        send_parting_error(stream, ErrorCode::DaemonUnavailable, why);
    }

    fn accept(&mut self, stream: UnixStream) {
        let creds = match portres_kernel::creds::peer_creds(stream.as_fd()) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("dropping a connection whose credentials cannot be read: {e}");
                return;
            }
        };
        let per_uid = self.per_uid.get(&creds.uid).copied().unwrap_or(0);
        if self.conns.len() >= self.config.max_connections {
            let why = format!(
                "connection limit reached ({} connections)",
                self.config.max_connections
            );
            return self.refuse("total", &stream, creds.uid, creds.pid, why);
        }
        if creds.uid != 0 && per_uid >= self.config.max_connections_per_uid {
            let why = format!(
                "per-user connection limit reached (uid {} holds {} connections)",
                creds.uid, self.config.max_connections_per_uid
            );
            return self.refuse("per-user", &stream, creds.uid, creds.pid, why);
        }
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("dropping a connection: {e}");
            return;
        }
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = epoll::add(
            &self.epoll,
            &stream,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        ) {
            log::warn!("dropping a connection: epoll: {e}");
            return;
        }
        let caller = Caller {
            admin: State::is_admin(&self.config, creds.uid, creds.gid, &creds.groups),
            uid: creds.uid,
            gid: creds.gid,
            groups: creds.groups,
            pid: creds.pid,
        };
        let uid = caller.uid;
        let session = self.state.open_session(caller);
        *self.per_uid.entry(uid).or_default() += 1;
        self.conns.insert(
            token,
            Conn {
                stream,
                session,
                uid,
                frames: FrameBuffer::new(MAX_REQUEST_BYTES),
                received: 0,
                frame_end: 0,
                pending_fds: VecDeque::new(),
                unsent: VecDeque::new(),
                unsent_bytes: 0,
                list_in_flight: false,
                want_write: false,
                read_closed: false,
                charged: 0,
            },
        );
    }

    fn close(&mut self, token: u64, why: &str) {
        let Some(conn) = self.conns.remove(&token) else {
            return;
        };
        let _ = epoll::delete(&self.epoll, &conn.stream);
        log::debug!("session {} ended: {why}", conn.session.0);
        self.uncharge(conn.uid, conn.charged);
        self.state.close_session(conn.session);
        if let Some(n) = self.per_uid.get_mut(&conn.uid) {
            *n -= 1;
            if *n == 0 {
                self.per_uid.remove(&conn.uid);
            }
        }
    }

    fn serve(&mut self, token: u64, flags: epoll::EventFlags) {
        if flags.contains(epoll::EventFlags::OUT) && !self.flush(token) {
            return;
        }
        if flags.intersects(
            epoll::EventFlags::IN
                | epoll::EventFlags::HUP
                | epoll::EventFlags::RDHUP
                | epoll::EventFlags::ERR,
        ) && let Err(why) = self.read(token)
        {
            return self.close(token, &why);
        }
        if let Err(why) = self.process(token) {
            return self.close(token, &why);
        }
        if let Err(why) = self.charge_buffers(token) {
            return self.close(token, &why);
        }
        self.after_io(token);
    }

    fn uncharge(&mut self, uid: u32, bytes: usize) {
        if let Some(n) = self.buffered_by_uid.get_mut(&uid) {
            *n = n.saturating_sub(bytes);
            if *n == 0 {
                self.buffered_by_uid.remove(&uid);
            }
        }
    }

    /// Charges a connection's buffer growth to its user; refuses (and the
    /// caller closes) a non-root connection that would pass the budget.
    fn charge_buffers(&mut self, token: u64) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Ok(());
        };
        let now = conn.frames.memory().saturating_sub(BUFFER_ALLOWANCE);
        let (uid, before) = (conn.uid, conn.charged);
        conn.charged = now;
        let total = self.buffered_by_uid.entry(uid).or_default();
        *total = (*total + now).saturating_sub(before);
        if uid != 0 && *total > PER_UID_BUFFER_BUDGET {
            let why = format!(
                "uid {uid}'s connections hold more than {} MiB of unfinished requests",
                PER_UID_BUFFER_BUDGET >> 20
            );
            log_limited(&mut self.last_limit_log, "buffers", || {
                format!("{why}: closing one of them")
            });
            send_parting_error(&conn.stream, ErrorCode::DaemonUnavailable, why.clone());
            return Err(why);
        }
        if *total == 0 {
            self.buffered_by_uid.remove(&uid);
        }
        Ok(())
    }

    /// One receive (level-triggered epoll brings us back if more is there).
    fn read(&mut self, token: u64) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Ok(());
        };
        if conn.read_closed {
            return Ok(());
        }
        let mut fds = VecDeque::new();
        let spare = conn.frames.spare(READ_CHUNK);
        let got = match try_recv_with_fds(&conn.stream, spare, &mut fds) {
            Ok(got) => {
                conn.frames.commit(got.bytes, READ_CHUNK);
                got
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                conn.frames.commit(0, READ_CHUNK);
                return Ok(());
            }
            Err(e) => return Err(e.to_string()),
        };
        if got.bytes == 0 {
            conn.read_closed = true;
            return Ok(());
        }
        for fd in fds {
            conn.pending_fds.push_back((conn.received, fd));
        }
        conn.received += got.bytes as u64;
        if got.fds_truncated || conn.pending_fds.len() > MAX_PENDING_FDS {
            return Err(format!(
                "more than {MAX_FDS_PER_MESSAGE} descriptors per message or {MAX_PENDING_FDS} pending"
            ));
        }
        Ok(())
    }

    /// Answers every whole request buffered, in order, unless a `List` is in
    /// flight or too many replies are unsent.
    fn process(&mut self, token: u64) -> Result<(), String> {
        loop {
            let Some(conn) = self.conns.get_mut(&token) else {
                return Ok(());
            };
            if conn.list_in_flight || conn.unsent_bytes > MAX_UNSENT_BYTES {
                return Ok(());
            }
            let session = conn.session;
            let (request, oneway, mut fds) = match conn.frames.next_frame() {
                Ok(None) => return Ok(()),
                Err(e) => {
                    send_parting_error(&conn.stream, ErrorCode::InvalidParameter, e.to_string());
                    return Err(e.to_string());
                }
                Ok(Some(frame)) => {
                    conn.frame_end += frame.len() as u64 + 1;
                    let mut fds = Vec::new();
                    while conn
                        .pending_fds
                        .front()
                        .is_some_and(|(off, _)| *off < conn.frame_end)
                    {
                        fds.push(conn.pending_fds.pop_front().expect("checked").1);
                    }
                    match Request::decode(frame) {
                        Ok((req, oneway)) => (Ok(req), oneway, fds),
                        Err(e) => (Err(e), false, fds),
                    }
                }
            };
            let outcome = match request {
                Err(e) => Outcome::Reply(encode_error(&e)),
                Ok(req) => {
                    let expected = req.fds_expected();
                    if fds.len() > expected {
                        let extra = fds.len() - expected;
                        Outcome::Reply(encode_error(&Error::new(
                            ErrorCode::InvalidParameter,
                            format!(
                                "{} takes {expected} descriptor(s); {extra} more were sent",
                                req.method()
                            ),
                        )))
                    } else {
                        dispatch(&mut self.state, session, req, fds.pop())
                    }
                }
            };
            if oneway {
                continue;
            }
            let conn = self.conns.get_mut(&token).expect("present above");
            match outcome {
                Outcome::Reply(bytes) => conn.queue(bytes, None),
                Outcome::ReplyWithFd(bytes, fd) => conn.queue(bytes, Some(fd)),
                Outcome::List(mut list) => {
                    // The socket-table dump takes milliseconds: do it off the
                    // loop, keep this connection's later requests waiting.
                    conn.list_in_flight = true;
                    let tx = self.list_results.0.clone();
                    let wake = self.wake_fd.clone();
                    std::thread::spawn(move || {
                        let bytes = match fill_in_use(&mut list) {
                            Ok(()) => encode_reply(&ListReply { reservations: list }),
                            Err(e) => encode_error(&e),
                        };
                        let _ = tx.send((token, bytes));
                        let _ = rustix::io::write(&*wake, &1u64.to_ne_bytes());
                    });
                    return Ok(());
                }
            }
            if !self.flush(token) {
                return Err("send failed".into());
            }
        }
    }

    /// Sends what can be sent now. `false` if the connection broke (closed).
    fn flush(&mut self, token: u64) -> bool {
        let Some(conn) = self.conns.get_mut(&token) else {
            return false;
        };
        match conn.send_pending() {
            Ok(()) => true,
            Err(e) => {
                self.close(token, &format!("send: {e}"));
                false
            }
        }
    }

    /// Registers EPOLLOUT only while replies are stuck; closes a connection
    /// whose peer is gone once nothing is left to say.
    fn after_io(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let stuck = !conn.unsent.is_empty();
        if conn.read_closed && !stuck && !conn.list_in_flight {
            return self.close(token, "peer closed");
        }
        if stuck != conn.want_write {
            conn.want_write = stuck;
            let mut flags = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
            if stuck {
                flags |= epoll::EventFlags::OUT;
            }
            if conn.read_closed {
                flags.remove(epoll::EventFlags::IN | epoll::EventFlags::RDHUP);
            }
            let _ = epoll::modify(
                &self.epoll,
                &conn.stream,
                epoll::EventData::new_u64(token),
                flags,
            );
        } else if conn.read_closed && stuck {
            // Stop level-triggered EPOLLIN/RDHUP from spinning while the
            // last replies drain.
            let _ = epoll::modify(
                &self.epoll,
                &conn.stream,
                epoll::EventData::new_u64(token),
                epoll::EventFlags::OUT,
            );
        }
    }

    fn finish_lists(&mut self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&*self.wake_fd, &mut buf);
        while let Ok((token, bytes)) = self.list_results.1.try_recv() {
            let Some(conn) = self.conns.get_mut(&token) else {
                continue;
            };
            conn.list_in_flight = false;
            conn.queue(bytes, None);
            if !self.flush(token) {
                continue;
            }
            if let Err(why) = self.process(token) {
                self.close(token, &why);
                continue;
            }
            self.after_io(token);
        }
    }
}

impl Conn {
    fn queue(&mut self, bytes: Vec<u8>, fd: Option<OwnedFd>) {
        self.unsent_bytes += bytes.len();
        self.unsent.push_back(Unsent { bytes, sent: 0, fd });
    }

    fn send_pending(&mut self) -> io::Result<()> {
        use rustix::net::SendFlags;
        while let Some(front) = self.unsent.front_mut() {
            let rest = &front.bytes[front.sent..];
            let result = match front.fd.take() {
                Some(fd) => {
                    // The descriptor rides on the reply's first bytes.
                    match send_with_fds_nonblocking(&self.stream, rest, &fd) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            front.fd = Some(fd);
                            Err(e)
                        }
                        other => other,
                    }
                }
                None => rustix::net::send(
                    &self.stream,
                    rest,
                    SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
                )
                .map_err(io::Error::from),
            };
            match result {
                Ok(n) => {
                    front.sent += n;
                    self.unsent_bytes -= n;
                    if front.sent == front.bytes.len() {
                        self.unsent.pop_front();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Logs `msg` at most once a second per `kind` of refusal, so a flood
/// cannot fill the log and no kind hides another.
fn log_limited(
    last: &mut HashMap<&'static str, Instant>,
    kind: &'static str,
    msg: impl FnOnce() -> String,
) {
    if last
        .get(kind)
        .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
    {
        log::warn!("{}", msg());
        last.insert(kind, Instant::now());
    }
}

/// Best-effort error reply to a connection about to be closed (never
/// blocks: a peer that does not read just misses it).
fn send_parting_error(stream: &UnixStream, code: ErrorCode, message: String) {
    let _ = rustix::net::send(
        stream,
        &encode_error(&Error::new(code, message)),
        rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
    );
}

/// One non-blocking sendmsg carrying `fd`; returns bytes sent.
fn send_with_fds_nonblocking(stream: &UnixStream, bytes: &[u8], fd: &OwnedFd) -> io::Result<usize> {
    use std::mem::MaybeUninit;
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    let fds = [fd.as_fd()];
    control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds));
    Ok(rustix::net::sendmsg(
        stream,
        &[io::IoSlice::new(bytes)],
        &mut control,
        rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
    )?)
}
