//! A worker: one epoll loop serving the connections the front handed it —
//! framing, descriptor bookkeeping, per-connection limits, replies in
//! order, and `List` dumps completed off the loop. Requests go to
//! `handlers::dispatch`, which takes the state mutex; a worker decides
//! nothing itself.
//!
//! A connection is registered for EPOLLIN only (EPOLLOUT just while a reply
//! is stuck), so a client reading its reply never wakes the worker, and
//! nothing but the request itself costs a wakeup.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use portres_core::{Error, ErrorCode, SessionId};
use portres_proto::fdpass::try_recv_with_fds;
use portres_proto::{
    FrameBuffer, ListReply, MAX_FDS_PER_MESSAGE, MAX_REQUEST_BYTES, Request, encode_error,
    encode_reply,
};
use rustix::event::epoll;

use crate::handlers::{Outcome, dispatch, fill_in_use};
use crate::server::{Shared, TOKEN_STOP, log_limited, send_parting_error};
use crate::state::lock;

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
pub(crate) const PER_UID_BUFFER_BUDGET: usize = 8 << 20;

/// Buffer memory per connection not counted against the budget.
const BUFFER_ALLOWANCE: usize = 8 * 1024;

/// Bytes read per receive call.
const READ_CHUNK: usize = 4096;

/// Stack of a worker thread: requests are shallow (the JSON nesting is
/// capped, SQLite needs far less), and threads beyond the CPUs are the norm.
const WORKER_STACK: usize = 512 * 1024;

/// Wakes the worker: new connections or finished `List` dumps are waiting.
const TOKEN_WAKE: u64 = 2;
const FIRST_CONN_TOKEN: u64 = 16;

/// A connection the front accepted, with its session already open.
pub(crate) struct NewConn {
    pub(crate) stream: UnixStream,
    pub(crate) session: SessionId,
    pub(crate) uid: u32,
}

/// The front's handle on one worker thread.
pub(crate) struct WorkerHandle {
    thread: JoinHandle<()>,
    inbox: Mutex<mpsc::Sender<NewConn>>,
    wake_fd: Arc<OwnedFd>,
    /// Connections it serves.
    load: Arc<AtomicUsize>,
}

impl WorkerHandle {
    /// Starts worker number `index`, pinned to `cpu` if given; it stops
    /// when `stop_fd` is readable.
    pub(crate) fn spawn(
        index: usize,
        cpu: Option<usize>,
        shared: Arc<Shared>,
        stop_fd: Arc<OwnedFd>,
    ) -> io::Result<WorkerHandle> {
        let (tx, rx) = mpsc::channel();
        let wake_fd = Arc::new(rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )?);
        let load = Arc::new(AtomicUsize::new(0));
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        for (fd, token) in [(stop_fd.as_fd(), TOKEN_STOP), (wake_fd.as_fd(), TOKEN_WAKE)] {
            epoll::add(
                &epoll,
                fd,
                epoll::EventData::new_u64(token),
                epoll::EventFlags::IN,
            )?;
        }
        let mut worker = Worker {
            shared,
            epoll,
            _stop_fd: stop_fd,
            wake_fd: wake_fd.clone(),
            inbox: rx,
            load: load.clone(),
            conns: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            list_results: mpsc::channel(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .stack_size(WORKER_STACK)
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to(cpu);
                }
                worker.run()
            })?;
        Ok(WorkerHandle {
            thread,
            inbox: Mutex::new(tx),
            wake_fd,
            load,
        })
    }

    /// How many connections it serves.
    pub(crate) fn load(&self) -> usize {
        self.load.load(Ordering::Relaxed)
    }

    /// Gives it a new connection to serve; gives the connection back if
    /// the worker is gone (it only stops when the daemon does, or after a
    /// bug made it panic).
    pub(crate) fn hand_over(&self, conn: NewConn) -> Result<(), NewConn> {
        // Counted before the send: the worker may take and end it at once.
        self.load.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .inbox
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(conn);
        if let Err(unsent) = sent {
            self.load.fetch_sub(1, Ordering::Relaxed);
            return Err(unsent.0);
        }
        let _ = rustix::io::write(&*self.wake_fd, &1u64.to_ne_bytes());
        Ok(())
    }

    /// Waits until it has stopped (the stop descriptor must be readable).
    pub(crate) fn join(self) {
        if self.thread.join().is_err() {
            log::error!("a worker thread panicked");
        }
    }
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

/// The CPUs this process may run on, if more than one (pinning workers to
/// one CPU makes no difference).
pub(crate) fn cpus_to_pin() -> Vec<usize> {
    let Ok(set) = rustix::thread::sched_getaffinity(None) else {
        return Vec::new();
    };
    let cpus: Vec<usize> = (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect();
    if cpus.len() > 1 { cpus } else { Vec::new() }
}

/// Pins the calling thread to `cpu`. Why: a worker that stays on one CPU
/// draws its clients there (the kernel wakes a thread near its waker), so
/// most request/reply wakeups stay on one CPU instead of costing an
/// inter-processor interrupt each; bench/README.md has the figures.
fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        log::warn!("could not pin a worker to CPU {cpu}: {e}");
    }
}

struct Worker {
    shared: Arc<Shared>,
    epoll: OwnedFd,
    /// Registered with epoll; kept open for as long as we wait on it.
    _stop_fd: Arc<OwnedFd>,
    wake_fd: Arc<OwnedFd>,
    inbox: mpsc::Receiver<NewConn>,
    load: Arc<AtomicUsize>,
    conns: HashMap<u64, Conn>,
    next_token: u64,
    list_results: (mpsc::Sender<ListResult>, mpsc::Receiver<ListResult>),
}

impl Worker {
    fn run(&mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        loop {
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                None,
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    log::error!("a worker stopped: epoll_wait: {e}");
                    break;
                }
            }
            for ev in &events {
                match ev.data.u64() {
                    TOKEN_STOP => {
                        self.close_all();
                        return;
                    }
                    TOKEN_WAKE => self.wake(),
                    token => self.serve(token, ev.flags),
                }
            }
        }
        self.close_all();
    }

    /// Ends every connection it serves (at stop; the sessions end with the
    /// state's shutdown).
    fn close_all(&mut self) {
        let tokens: Vec<u64> = self.conns.keys().copied().collect();
        for token in tokens {
            self.close(token, "daemon stopping");
        }
        // Connections handed over but never taken.
        while let Ok(new) = self.inbox.try_recv() {
            lock(&self.shared.state).close_session(new.session);
            self.shared.limits().connection_closed(new.uid, 0);
        }
    }

    fn wake(&mut self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&*self.wake_fd, &mut buf);
        while let Ok(new) = self.inbox.try_recv() {
            self.take(new);
        }
        self.finish_lists();
    }

    /// Starts serving a connection the front handed over.
    fn take(&mut self, new: NewConn) {
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = epoll::add(
            &self.epoll,
            &new.stream,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN | epoll::EventFlags::RDHUP,
        ) {
            log::warn!("dropping a connection: epoll: {e}");
            self.load.fetch_sub(1, Ordering::Relaxed);
            lock(&self.shared.state).close_session(new.session);
            self.shared.limits().connection_closed(new.uid, 0);
            return;
        }
        self.conns.insert(
            token,
            Conn {
                stream: new.stream,
                session: new.session,
                uid: new.uid,
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
        self.load.fetch_sub(1, Ordering::Relaxed);
        lock(&self.shared.state).close_session(conn.session);
        self.shared
            .limits()
            .connection_closed(conn.uid, conn.charged);
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

    /// Charges a connection's buffer growth to its user; refuses (and the
    /// caller closes) a non-root connection that would pass the budget.
    fn charge_buffers(&mut self, token: u64) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Ok(());
        };
        let now = conn.frames.memory().saturating_sub(BUFFER_ALLOWANCE);
        let (uid, before) = (conn.uid, conn.charged);
        if now == before {
            // The common case: nothing beyond the allowance, before or now.
            return Ok(());
        }
        conn.charged = now;
        let mut limits = self.shared.limits();
        let limits = &mut *limits;
        let total = limits.buffered_by_uid.entry(uid).or_default();
        *total = (*total + now).saturating_sub(before);
        if uid != 0 && *total > PER_UID_BUFFER_BUDGET {
            let why = format!(
                "uid {uid}'s connections hold more than {} MiB of unfinished requests",
                PER_UID_BUFFER_BUDGET >> 20
            );
            log_limited(&mut limits.last_log, "buffers", || {
                format!("{why}: closing one of them")
            });
            send_parting_error(&conn.stream, ErrorCode::DaemonUnavailable, why.clone());
            return Err(why);
        }
        if *total == 0 {
            limits.buffered_by_uid.remove(&uid);
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
                        dispatch(&self.shared.state, session, req, fds.pop())
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
