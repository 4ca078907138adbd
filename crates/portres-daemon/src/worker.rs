//! A worker: one epoll loop serving the connections the front handed it —
//! framing, descriptor bookkeeping, per-connection limits, replies in
//! order, and `List` dumps completed off the loop. Requests go to
//! `handlers::dispatch`, which takes the state mutex; a worker decides
//! nothing itself.
//!
//! A connection is registered for EPOLLIN only (EPOLLOUT just while a reply
//! is stuck), so a client reading its reply never wakes the worker, and
//! nothing but the request itself costs a wakeup. Workers are pinned to
//! CPUs; a connection whose client keeps calling from another CPU (the
//! `"cpu"` hint) is handed, between requests, to a worker pinned there
//! (`Worker::follow_client`), so request and reply stay on one CPU.
//!
//! Panic policy: nothing a request does takes its worker down. A handler
//! that panics answers `internal` for that call (`dispatch` runs under
//! `catch_unwind`; the state mutex tolerates poisoning); a thread the OS
//! refuses (the `List` dump) answers `internal` for that call. Should a
//! worker die anyway (a bug in this file), its `Drop` closes every session
//! it served, so their reservations end, and marks its mailbox dead so the
//! front and the other workers skip it; once every worker is dead the
//! front stops the daemon (non-zero exit) at the next connection, for its
//! service manager to restart it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use portres_core::{Error, ErrorCode, SessionId};
use portres_proto::fdpass::try_recv_with_fds;
use portres_proto::{
    FrameBuffer, ListReply, MAX_FDS_PER_MESSAGE, MAX_REQUEST_BYTES, Request, encode_error,
    encode_reply,
};
use rustix::event::epoll;

use crate::handlers::{Outcome, dispatch, fill_in_use};
use crate::server::{Shared, TOKEN_STOP, log_limited, send_parting_error};
use crate::state::{State, lock};

/// Most descriptors queued on one connection before it is dropped.
const MAX_PENDING_FDS: usize = 16;

/// Stop reading and answering a connection whose unsent replies pass this,
/// until they drain (a client that sends without reading cannot make us
/// buffer without bound). Its later requests wait in the kernel, charged
/// to the client's own send buffer.
const MAX_UNSENT_BYTES: usize = 64 * 1024;

/// Likewise for descriptors riding on unsent replies (`GetCapability`):
/// each is an open file of ours until the client reads it.
const MAX_UNSENT_FDS: usize = 4;

/// Most bytes of unsent replies one non-root user's connections may make
/// the daemon hold. Past it, that user's connections are neither read nor
/// answered until their replies drain (thousands of connections that never
/// read, each under `MAX_UNSENT_BYTES`, would otherwise pin gigabytes).
pub(crate) const PER_UID_UNSENT_BUDGET: usize = 4 << 20;

/// Most `List` dump threads one user's calls may run at once; more run on
/// their worker (a user with thousands of connections cannot make the
/// daemon start thousands of threads).
pub(crate) const MAX_LIST_DUMPS_PER_UID: usize = 4;

/// How often connections paused by their user's unsent budget, with
/// nothing of their own to send (so no EPOLLOUT to wake them), look again.
const PAUSED_RECHECK: Duration = Duration::from_millis(20);

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

/// Consecutive requests hinting another CPU after which a connection moves
/// to a worker pinned there (a client the scheduler moved for a moment
/// does not drag its connection along).
const MOVE_AFTER: u8 = 4;

/// What arrives in a worker's inbox.
enum Arrival {
    /// A connection the front just accepted.
    New(NewConn),
    /// A connection another worker hands over (its client runs on this
    /// worker's CPU now).
    Moved(Box<Conn>),
}

/// How the front and the other workers reach one worker.
struct Mailbox {
    inbox: Mutex<mpsc::Sender<Arrival>>,
    /// Readable when something arrived (or a `List` dump finished).
    wake_fd: OwnedFd,
    /// Connections it serves.
    load: AtomicUsize,
    /// The CPU it is pinned to, if pinned.
    cpu: Option<usize>,
    /// False once its worker died: nothing is delivered any more (changed
    /// under the `inbox` lock, so no delivery slips past the final drain).
    alive: AtomicBool,
}

impl Mailbox {
    /// Delivers `arrival`; gives it back if the worker is gone (it only
    /// stops when the daemon does, or after a bug made it panic), and from
    /// then on counts it as dead.
    fn deliver(&self, arrival: Arrival) -> Result<(), Arrival> {
        let inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        if !self.alive.load(Ordering::Acquire) {
            return Err(arrival);
        }
        // Counted before the send: the worker may take and end it at once.
        self.load.fetch_add(1, Ordering::Relaxed);
        if let Err(unsent) = inbox.send(arrival) {
            // Its thread ended (the daemon is stopping): never choose it again.
            self.alive.store(false, Ordering::Release);
            self.load.fetch_sub(1, Ordering::Relaxed);
            return Err(unsent.0);
        }
        drop(inbox);
        let _ = rustix::io::write(&self.wake_fd, &1u64.to_ne_bytes());
        Ok(())
    }
}

/// The worker threads, as the front sees them.
pub(crate) struct Workers {
    mailboxes: Arc<Vec<Mailbox>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers, pinned round-robin to `cpus` (none if
    /// empty); they stop when `stop_fd` is readable. If one cannot start,
    /// those that did are stopped (via `stop_fd`) before the error returns.
    pub(crate) fn start(
        count: usize,
        cpus: &[usize],
        shared: Arc<Shared>,
        stop_fd: Arc<OwnedFd>,
    ) -> io::Result<Workers> {
        let mut mailboxes = Vec::with_capacity(count);
        let mut inboxes = Vec::with_capacity(count);
        for i in 0..count {
            let (tx, rx) = mpsc::channel();
            mailboxes.push(Mailbox {
                inbox: Mutex::new(tx),
                wake_fd: rustix::event::eventfd(
                    0,
                    rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
                )?,
                load: AtomicUsize::new(0),
                cpu: (!cpus.is_empty()).then(|| cpus[i % cpus.len()]),
                alive: AtomicBool::new(true),
            });
            inboxes.push(rx);
        }
        let mut workers = Workers {
            mailboxes: Arc::new(mailboxes),
            threads: Vec::with_capacity(count),
        };
        for (index, inbox) in inboxes.into_iter().enumerate() {
            match Worker::spawn(index, inbox, workers.mailboxes.clone(), &shared, &stop_fd) {
                Ok(thread) => workers.threads.push(thread),
                Err(e) => {
                    let _ = rustix::io::write(&*stop_fd, &1u64.to_ne_bytes());
                    workers.join();
                    return Err(e);
                }
            }
        }
        Ok(workers)
    }

    /// Gives a new connection to the live worker serving the fewest; gives
    /// the connection back if every worker is gone.
    pub(crate) fn hand_over(&self, conn: NewConn) -> Result<(), NewConn> {
        let mut arrival = Arrival::New(conn);
        loop {
            let Some(least_busy) = self
                .mailboxes
                .iter()
                .filter(|m| m.alive.load(Ordering::Acquire))
                .min_by_key(|m| m.load.load(Ordering::Relaxed))
            else {
                return Err(match arrival {
                    Arrival::New(conn) => conn,
                    Arrival::Moved(_) => unreachable!("delivered a new connection"),
                });
            };
            // It may die between the choice and the delivery: choose again.
            match least_busy.deliver(arrival) {
                Ok(()) => return Ok(()),
                Err(back) => arrival = back,
            }
        }
    }

    /// Waits until every worker has stopped (the stop descriptor must be
    /// readable).
    pub(crate) fn join(self) {
        for thread in self.threads {
            if thread.join().is_err() {
                log::error!("a worker thread panicked");
            }
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
    /// Descriptors received, each tagged with a stream offset inside the
    /// request they belong to (see `owner_offset`): the frame containing
    /// that byte takes them.
    pending_fds: VecDeque<(u64, OwnedFd)>,
    unsent: VecDeque<Unsent>,
    unsent_bytes: usize,
    /// Descriptors attached to unsent replies.
    unsent_fds: usize,
    /// Unsent bytes charged to this connection's (non-root) user.
    unsent_charged: usize,
    /// Parked descriptors (pending and on unsent replies) charged to this
    /// connection's (non-root) user.
    fds_charged: usize,
    /// A `List` is being completed off-thread; later requests wait for it so
    /// replies stay in order.
    list_in_flight: bool,
    /// What epoll watches for it now.
    registered: epoll::EventFlags,
    /// Peer finished sending; close once replies are out.
    read_closed: bool,
    /// Buffer bytes charged to this connection's user.
    charged: usize,
    /// Consecutive requests whose client said it ran on `away_cpu`, not on
    /// this worker's CPU (see `Worker::follow_client`).
    away: u8,
    away_cpu: u32,
}

/// A new epoll instance watching each descriptor for input, tagged with its
/// token (level-triggered).
pub(crate) fn epoll_watching(fds: &[(BorrowedFd<'_>, u64)]) -> io::Result<OwnedFd> {
    let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
    for &(fd, token) in fds {
        epoll::add(
            &epoll,
            fd,
            epoll::EventData::new_u64(token),
            epoll::EventFlags::IN,
        )?;
    }
    Ok(epoll)
}

/// The CPUs this process may run on (by its affinity mask; empty if that
/// cannot be read).
pub(crate) fn usable_cpus() -> Vec<usize> {
    let Ok(set) = rustix::thread::sched_getaffinity(None) else {
        return Vec::new();
    };
    (0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect()
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
    /// Its place in `mailboxes`.
    index: usize,
    mailboxes: Arc<Vec<Mailbox>>,
    epoll: OwnedFd,
    /// Registered with epoll; kept open for as long as we wait on it.
    _stop_fd: Arc<OwnedFd>,
    inbox: mpsc::Receiver<Arrival>,
    conns: HashMap<u64, Conn>,
    next_token: u64,
    list_results: (mpsc::Sender<ListResult>, mpsc::Receiver<ListResult>),
    /// Connections paused by their user's unsent budget with nothing of
    /// their own to send: looked at again every `PAUSED_RECHECK`.
    /// By uid: a recheck costs one look per user, not per connection.
    paused: HashMap<u32, HashSet<u64>>,
    /// Bytes released by closed connections since the last `maybe_trim`.
    freed_since_trim: usize,
    last_trim: Option<std::time::Instant>,
}

/// A worker that unwinds (a bug: requests cannot make it panic) ends its
/// sessions and leaves the rotation, instead of keeping their reservations
/// forever and being handed new connections it never serves.
impl Drop for Worker {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        log::error!(
            "worker {} died (a bug); closing the {} session(s) it served; the other workers go on",
            self.index,
            self.conns.len()
        );
        {
            let _inbox = self
                .mailbox()
                .inbox
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            self.mailbox().alive.store(false, Ordering::Release);
        }
        self.close_all();
    }
}

impl Worker {
    /// Starts worker `index` on its own thread (pinned if its mailbox says
    /// so).
    fn spawn(
        index: usize,
        inbox: mpsc::Receiver<Arrival>,
        mailboxes: Arc<Vec<Mailbox>>,
        shared: &Arc<Shared>,
        stop_fd: &Arc<OwnedFd>,
    ) -> io::Result<JoinHandle<()>> {
        let epoll = epoll_watching(&[
            (stop_fd.as_fd(), TOKEN_STOP),
            (mailboxes[index].wake_fd.as_fd(), TOKEN_WAKE),
        ])?;
        let cpu = mailboxes[index].cpu;
        let mut worker = Worker {
            shared: shared.clone(),
            index,
            mailboxes,
            epoll,
            _stop_fd: stop_fd.clone(),
            inbox,
            conns: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            list_results: mpsc::channel(),
            paused: HashMap::new(),
            freed_since_trim: 0,
            last_trim: None,
        };
        std::thread::Builder::new()
            .name(format!("worker-{index}"))
            .stack_size(WORKER_STACK)
            .spawn(move || {
                if let Some(cpu) = cpu {
                    pin_to(cpu);
                }
                worker.run()
            })
    }

    fn mailbox(&self) -> &Mailbox {
        &self.mailboxes[self.index]
    }

    fn run(&mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        let mut last_recheck = std::time::Instant::now();
        loop {
            events.clear();
            let recheck = (!self.paused.is_empty()).then_some(rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: PAUSED_RECHECK.as_nanos() as i64,
            });
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                recheck.as_ref(),
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    log::error!("a worker stopped: epoll_wait: {e}");
                    break;
                }
            }
            if !self.paused.is_empty() && last_recheck.elapsed() >= PAUSED_RECHECK {
                // See whether paused connections may go on (their user's
                // replies drained meanwhile, perhaps on another worker).
                // One look at the budget for all of them: thousands may
                // wait, and most for a user still over it.
                last_recheck = std::time::Instant::now();
                let over: HashSet<u32> = {
                    let limits = self.shared.limits();
                    limits
                        .unsent_by_uid
                        .iter()
                        .filter(|&(_, &n)| n > PER_UID_UNSENT_BUDGET)
                        .map(|(&uid, _)| uid)
                        .collect()
                };
                let ready: Vec<u32> = self
                    .paused
                    .keys()
                    .copied()
                    .filter(|uid| !over.contains(uid))
                    .collect();
                for uid in ready {
                    for token in self.paused.remove(&uid).unwrap_or_default() {
                        self.serve(token, epoll::EventFlags::IN);
                    }
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
            self.maybe_trim();
        }
        self.close_all();
    }

    /// Hands freed memory back to the OS after many connections (or much
    /// buffered data) went away: the allocator keeps it otherwise, and a
    /// flood that left would keep the daemon's RSS at its peak. At most
    /// once a second.
    fn maybe_trim(&mut self) {
        const TRIM_AFTER: usize = 4 << 20;
        if self.freed_since_trim < TRIM_AFTER
            || self
                .last_trim
                .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.freed_since_trim = 0;
        self.last_trim = Some(std::time::Instant::now());
        #[cfg(target_env = "gnu")]
        // SAFETY: malloc_trim only returns free heap pages to the kernel;
        // it touches no memory in use.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    /// Ends every connection it serves (at stop; the sessions end with the
    /// state's shutdown).
    fn close_all(&mut self) {
        let tokens: Vec<u64> = self.conns.keys().copied().collect();
        for token in tokens {
            self.close(token, "daemon stopping");
        }
        // Connections handed over but never taken.
        while let Ok(arrival) = self.inbox.try_recv() {
            let (session, uid, charged, unsent, parked) = match arrival {
                Arrival::New(new) => (new.session, new.uid, 0, 0, 0),
                Arrival::Moved(conn) => (
                    conn.session,
                    conn.uid,
                    conn.charged,
                    conn.unsent_charged,
                    conn.fds_charged,
                ),
            };
            lock(&self.shared.state).close_session(session);
            let mut limits = self.shared.limits();
            limits.connection_closed(uid, charged);
            limits.move_unsent(uid, unsent, 0, &self.shared.unsent_over);
            let _ = limits.move_parked(uid, parked, 0);
        }
    }

    fn wake(&mut self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(&self.mailbox().wake_fd, &mut buf);
        while let Ok(arrival) = self.inbox.try_recv() {
            let conn = match arrival {
                Arrival::New(new) => Box::new(Conn::new(new)),
                Arrival::Moved(conn) => conn,
            };
            self.take(*conn);
        }
        self.finish_lists();
    }

    /// Starts serving a connection (new, or moved here by another worker).
    fn take(&mut self, mut conn: Conn) {
        let token = self.next_token;
        self.next_token += 1;
        conn.away = 0;
        conn.registered = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
        if let Err(e) = epoll::add(
            &self.epoll,
            &conn.stream,
            epoll::EventData::new_u64(token),
            conn.registered,
        ) {
            log::warn!("dropping a connection: epoll: {e}");
            self.mailbox().load.fetch_sub(1, Ordering::Relaxed);
            lock(&self.shared.state).close_session(conn.session);
            let mut limits = self.shared.limits();
            limits.connection_closed(conn.uid, conn.charged);
            limits.move_unsent(conn.uid, conn.unsent_charged, 0, &self.shared.unsent_over);
            let _ = limits.move_parked(conn.uid, conn.fds_charged, 0);
            return;
        }
        self.conns.insert(token, conn);
        // Bytes may have arrived while it moved: level-triggered epoll
        // reports them on the next wait.
    }

    /// Hands a connection whose client keeps running on another CPU to the
    /// least busy worker pinned there. Only between requests: nothing
    /// buffered, unsent or in flight, so replies stay in order.
    fn follow_client(&mut self, token: u64) {
        let Some(conn) = self.conns.get(&token) else {
            return;
        };
        if conn.away < MOVE_AFTER
            || conn.list_in_flight
            || conn.read_closed
            || !conn.unsent.is_empty()
            || !conn.pending_fds.is_empty()
            || conn.frames.has_partial()
        {
            return;
        }
        let target = conn.away_cpu as usize;
        let Some((to, _)) = self
            .mailboxes
            .iter()
            .enumerate()
            .filter(|(i, m)| *i != self.index && m.cpu == Some(target))
            .min_by_key(|(_, m)| m.load.load(Ordering::Relaxed))
        else {
            return;
        };
        let conn = self.conns.remove(&token).expect("present above");
        self.unpause(conn.uid, token);
        log::debug!(
            "session {} follows its client to CPU {target} (worker {} -> {to})",
            conn.session.0,
            self.index
        );
        let _ = epoll::delete(&self.epoll, &conn.stream);
        self.mailbox().load.fetch_sub(1, Ordering::Relaxed);
        if let Err(Arrival::Moved(conn)) =
            self.mailboxes[to].deliver(Arrival::Moved(Box::new(conn)))
        {
            // That worker is gone; keep serving it here.
            self.mailbox().load.fetch_add(1, Ordering::Relaxed);
            self.take(*conn);
        }
    }
}

impl Conn {
    fn new(new: NewConn) -> Conn {
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
            unsent_fds: 0,
            unsent_charged: 0,
            fds_charged: 0,
            list_in_flight: false,
            registered: epoll::EventFlags::empty(),
            read_closed: false,
            charged: 0,
            away: 0,
            away_cpu: 0,
        }
    }

    /// Notes the CPU a request came from (the client's hint); `mine` is the
    /// serving worker's CPU.
    fn note_cpu(&mut self, hint: Option<u32>, mine: Option<usize>) {
        let (Some(hint), Some(mine)) = (hint, mine) else {
            return;
        };
        if hint as usize == mine {
            self.away = 0;
        } else if self.away > 0 && hint == self.away_cpu {
            self.away = self.away.saturating_add(1);
        } else {
            self.away = 1;
            self.away_cpu = hint;
        }
    }
}

impl Worker {
    fn close(&mut self, token: u64, why: &str) {
        let Some(conn) = self.conns.remove(&token) else {
            return;
        };
        let _ = epoll::delete(&self.epoll, &conn.stream);
        self.unpause(conn.uid, token);
        // What it held: buffers, unsent replies, and its own bookkeeping.
        self.freed_since_trim +=
            conn.frames.memory() + conn.unsent_bytes + std::mem::size_of::<Conn>();
        log::debug!("session {} ended: {why}", conn.session.0);
        self.mailbox().load.fetch_sub(1, Ordering::Relaxed);
        lock(&self.shared.state).close_session(conn.session);
        let mut limits = self.shared.limits();
        limits.connection_closed(conn.uid, conn.charged);
        limits.move_unsent(conn.uid, conn.unsent_charged, 0, &self.shared.unsent_over);
        let _ = limits.move_parked(conn.uid, conn.fds_charged, 0);
    }

    /// Charges a connection's change in parked descriptors (received and
    /// not yet taken, or on unsent replies) to its non-root user; refuses
    /// (and the caller closes) one that would pass the user's cap or the
    /// descriptors kept out of unprivileged reach.
    fn charge_fds(&mut self, token: u64) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Ok(());
        };
        let now = conn.pending_fds.len() + conn.unsent_fds;
        if conn.uid == 0 || now == conn.fds_charged {
            return Ok(());
        }
        let before = conn.fds_charged;
        conn.fds_charged = now;
        let charged = self.shared.limits().move_parked(conn.uid, before, now);
        if let Err(why) = &charged {
            send_parting_error(&conn.stream, ErrorCode::DaemonUnavailable, why.clone());
        }
        charged
    }

    /// Charges a connection's change in unsent replies to its (non-root)
    /// user; takes the limits lock only when the amount changed.
    fn charge_unsent(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.uid == 0 || conn.unsent_bytes == conn.unsent_charged {
            return;
        }
        let (before, now) = (conn.unsent_charged, conn.unsent_bytes);
        conn.unsent_charged = now;
        self.shared
            .limits()
            .move_unsent(conn.uid, before, now, &self.shared.unsent_over);
    }

    fn serve(&mut self, token: u64, flags: epoll::EventFlags) {
        if flags.contains(epoll::EventFlags::OUT) && !self.flush(token) {
            return;
        }
        self.charge_unsent(token);
        let hup = flags.intersects(epoll::EventFlags::HUP | epoll::EventFlags::ERR);
        if flags.intersects(
            epoll::EventFlags::IN
                | epoll::EventFlags::HUP
                | epoll::EventFlags::RDHUP
                | epoll::EventFlags::ERR,
        ) && let Err(why) = self.read(token, hup)
        {
            return self.close(token, &why);
        }
        if let Err(why) = self.charge_fds(token) {
            return self.close(token, &why);
        }
        if let Err(why) = self.process(token) {
            return self.close(token, &why);
        }
        if let Err(why) = self.charge_buffers(token) {
            return self.close(token, &why);
        }
        if let Err(why) = self.charge_fds(token) {
            return self.close(token, &why);
        }
        self.after_io(token);
        self.follow_client(token);
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

    /// One receive (level-triggered epoll brings us back if more is there),
    /// unless the connection is paused by its unsent replies; `hup`: the
    /// peer is gone (then a paused connection just ends).
    fn read(&mut self, token: u64, hup: bool) -> Result<(), String> {
        let Some(conn) = self.conns.get_mut(&token) else {
            return Ok(());
        };
        if conn.read_closed {
            return Ok(());
        }
        if paused(&self.shared, conn) {
            return if hup {
                Err("peer gone with replies unread".into())
            } else {
                Ok(())
            };
        }
        let mut fds = VecDeque::new();
        let spare = conn.frames.spare(READ_CHUNK);
        let (got, owner) = match try_recv_with_fds(&conn.stream, spare, &mut fds) {
            Ok(got) => {
                let owner = conn.received + owner_offset(&spare[..got.bytes]);
                conn.frames.commit(got.bytes, READ_CHUNK);
                (got, owner)
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
            conn.pending_fds.push_back((owner, fd));
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
            if conn.list_in_flight || paused(&self.shared, conn) {
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
                    match Request::decode_call(frame) {
                        Ok(call) => {
                            let mine = self.mailboxes[self.index].cpu;
                            conn.note_cpu(call.cpu, mine);
                            (Ok(call.request), call.oneway, fds)
                        }
                        Err(e) => (Err(e), asks_no_reply(frame), fds),
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
                        if fault("worker-panic") && matches!(req, Request::Lookup(_)) {
                            panic!("fault injection: a worker panics outside a handler");
                        }
                        dispatch_guarded(&self.shared.state, session, req, fds.pop())
                    }
                }
            };
            // A oneway call is never answered, not even with an error: a
            // reply would be taken for the answer to the client's next call.
            if oneway {
                continue;
            }
            let conn = self.conns.get_mut(&token).expect("present above");
            match outcome {
                Outcome::Reply(bytes) => conn.queue(bytes, None),
                Outcome::ReplyWithFd(bytes, fd) => conn.queue(bytes, Some(fd)),
                Outcome::List(list, kernel) => {
                    let uid = conn.uid;
                    if !self.shared.limits().start_list_dump(uid) {
                        // The user already has its share of dump threads:
                        // this one runs here, holding up this worker only.
                        conn.queue(list_reply(&*kernel, list), None);
                        if !self.flush(token) {
                            return Err("send failed".into());
                        }
                        self.charge_unsent(token);
                        continue;
                    }
                    // The socket-table dump takes milliseconds: do it off the
                    // loop, keep this connection's later requests waiting.
                    conn.list_in_flight = true;
                    let tx = self.list_results.0.clone();
                    let mailboxes = self.mailboxes.clone();
                    let shared = self.shared.clone();
                    let index = self.index;
                    let spawned = if fault("list-thread") {
                        Err(io::Error::other("fault injection: thread refused"))
                    } else {
                        std::thread::Builder::new()
                            .name("list-dump".into())
                            .spawn(move || {
                                let bytes =
                                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                        list_reply(&*kernel, list)
                                    }))
                                    .unwrap_or_else(|_| {
                                        encode_error(&Error::new(
                                            ErrorCode::Internal,
                                            "the socket-table dump failed unexpectedly (a bug)",
                                        ))
                                    });
                                shared.limits().end_list_dump(uid);
                                let _ = tx.send((token, bytes));
                                let _ = rustix::io::write(
                                    &mailboxes[index].wake_fd,
                                    &1u64.to_ne_bytes(),
                                );
                            })
                    };
                    match spawned {
                        Ok(_) => return Ok(()),
                        Err(e) => {
                            // Under a pids limit, say: this call fails, the
                            // worker goes on.
                            conn.list_in_flight = false;
                            self.shared.limits().end_list_dump(uid);
                            log_limited(&mut self.shared.limits().last_log, "thread", || {
                                format!("cannot start a thread for a List dump: {e}")
                            });
                            conn.queue(
                                encode_error(&Error::new(
                                    ErrorCode::Internal,
                                    format!("cannot start a thread for the socket-table dump: {e}"),
                                )),
                                None,
                            );
                        }
                    }
                }
            }
            if !self.flush(token) {
                return Err("send failed".into());
            }
            self.charge_unsent(token);
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

    /// Registers EPOLLOUT only while replies are stuck, EPOLLIN only while
    /// the connection may be read; closes a connection whose peer is gone
    /// once nothing is left to say.
    fn after_io(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        let stuck = !conn.unsent.is_empty();
        if conn.read_closed && !stuck && !conn.list_in_flight {
            return self.close(token, "peer closed");
        }
        let paused = paused(&self.shared, conn);
        let mut flags = epoll::EventFlags::empty();
        if !conn.read_closed && !paused {
            flags |= epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
        }
        if stuck {
            flags |= epoll::EventFlags::OUT;
        }
        if flags != conn.registered {
            conn.registered = flags;
            let _ = epoll::modify(
                &self.epoll,
                &conn.stream,
                epoll::EventData::new_u64(token),
                flags,
            );
        }
        // Paused with nothing to send: no event will come; look again soon.
        let uid = conn.uid;
        if paused && !stuck {
            self.paused.entry(uid).or_default().insert(token);
        } else {
            self.unpause(uid, token);
        }
    }

    fn unpause(&mut self, uid: u32, token: u64) {
        if let Some(tokens) = self.paused.get_mut(&uid) {
            tokens.remove(&token);
            if tokens.is_empty() {
                self.paused.remove(&uid);
            }
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
            self.charge_unsent(token);
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
        self.unsent_fds += usize::from(fd.is_some());
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
                        other => {
                            self.unsent_fds -= 1;
                            other
                        }
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

/// A `List` reply: the reservations with their `in_use` ports filled in
/// from a socket-table dump (milliseconds).
fn list_reply(
    kernel: &dyn crate::kernel::Kernel,
    mut list: Vec<portres_proto::ReservationInfo>,
) -> Vec<u8> {
    if fault("slow-list") {
        std::thread::sleep(Duration::from_millis(200));
    }
    match fill_in_use(kernel, &mut list) {
        Ok(()) => encode_reply(&ListReply { reservations: list }),
        Err(e) => encode_error(&e),
    }
}

/// Whether a connection must wait (neither read nor answered) until its
/// unsent replies drain: past its own limits, or its non-root user past
/// the per-user budget. Cheap unless some user is over the budget.
fn paused(shared: &Shared, conn: &Conn) -> bool {
    conn.unsent_bytes > MAX_UNSENT_BYTES
        || conn.unsent_fds >= MAX_UNSENT_FDS
        || (conn.uid != 0
            && shared.unsent_over.load(Ordering::Relaxed) > 0
            && shared.limits().unsent_over_budget(conn.uid))
}

/// `dispatch`, with a panic in a handler (a bug) turned into `internal`
/// for that call: the worker and every other connection go on (panic
/// policy, see the top of this file).
fn dispatch_guarded(
    state: &Mutex<State>,
    session: SessionId,
    req: Request,
    fd: Option<OwnedFd>,
) -> Outcome {
    let method = req.method();
    let run = std::panic::AssertUnwindSafe(|| {
        if fault("handler-panic") && matches!(req, Request::Lookup(_)) {
            panic!("fault injection: a handler panics");
        }
        dispatch(state, session, req, fd)
    });
    match std::panic::catch_unwind(run) {
        Ok(outcome) => outcome,
        Err(_) => {
            log::error!("{method} panicked (a bug); answering internal");
            Outcome::Reply(encode_error(&Error::new(
                ErrorCode::Internal,
                format!(
                    "{method} failed unexpectedly (the daemon hit a bug; nothing is known to have changed)"
                ),
            )))
        }
    }
}

/// Test-only fault injection: `PORTRES_TEST_FAULT` (read once at the first
/// use), a comma-separated list of `list-thread` (the OS refuses every
/// `List` dump thread), `slow-list` (every dump takes 200 ms more),
/// `handler-panic` (a handler panics on `Lookup`),
/// `worker-panic` (the worker panics outside a handler on `Lookup`). It
/// lets the tests prove the panic policy; unset in production.
fn fault(name: &str) -> bool {
    static FAULTS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    FAULTS
        .get_or_init(|| {
            std::env::var("PORTRES_TEST_FAULT")
                .map(|v| v.split(',').map(str::to_owned).collect())
                .unwrap_or_default()
        })
        .iter()
        .any(|f| f == name)
}

/// Whether a call that could not be decoded still said `"oneway": true`
/// (an unknown method, bad parameters, `"more"`): then it gets no reply
/// either. Only what cannot be read as a JSON object is answered regardless.
fn asks_no_reply(frame: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Oneway {
        #[serde(default)]
        oneway: bool,
    }
    serde_json::from_slice::<Oneway>(frame).is_ok_and(|o| o.oneway)
}

/// Where in one receive's `bytes` the request its descriptors belong to
/// lies: the start of the last request that starts in them (the byte after
/// the last NUL but the final one), or their first byte if none starts
/// there (it continues the request in progress).
///
/// Why the last: Linux's stream receive glues queued bytes that came
/// without descriptors in front of a following message that carries some,
/// and stops right after that message (so one receive holds at most one
/// message's descriptors, at its end). A sender puts a request's
/// descriptors on the sendmsg() that starts it, so they belong to the last
/// request starting in the receive, not the first (issue 9.5).
fn owner_offset(bytes: &[u8]) -> u64 {
    let body = &bytes[..bytes.len().saturating_sub(1)];
    body.iter()
        .rposition(|&b| b == 0)
        .map_or(0, |nul| nul as u64 + 1)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> Conn {
        let (stream, _peer) = UnixStream::pair().unwrap();
        Conn::new(NewConn {
            stream,
            session: SessionId(1),
            uid: 0,
        })
    }

    #[test]
    fn descriptors_belong_to_the_last_request_starting_in_a_receive() {
        // Nothing starts here: the request in progress.
        assert_eq!(owner_offset(b""), 0);
        assert_eq!(owner_offset(b"{\"me"), 0);
        // A NUL at the very end starts the next receive's request.
        assert_eq!(owner_offset(b"{}\0"), 0);
        assert_eq!(owner_offset(b"ab\0{}\0"), 3);
        assert_eq!(owner_offset(b"a\0b\0{\"c"), 4);
        assert_eq!(owner_offset(b"\0\0\0"), 2);
    }

    #[test]
    fn only_a_steady_other_cpu_counts_toward_a_move() {
        let mut c = conn();
        // Unpinned worker or no hint: nothing counts.
        c.note_cpu(Some(1), None);
        c.note_cpu(None, Some(0));
        assert_eq!(c.away, 0);
        // Another CPU, again and again.
        for n in 1..=3 {
            c.note_cpu(Some(1), Some(0));
            assert_eq!((c.away, c.away_cpu), (n, 1));
        }
        // Back home resets; a different other CPU starts over.
        c.note_cpu(Some(0), Some(0));
        assert_eq!(c.away, 0);
        c.note_cpu(Some(2), Some(0));
        c.note_cpu(Some(3), Some(0));
        assert_eq!((c.away, c.away_cpu), (1, 3));
        // The count saturates instead of wrapping.
        for _ in 0..300 {
            c.note_cpu(Some(3), Some(0));
        }
        assert_eq!(c.away, u8::MAX);
    }
}
