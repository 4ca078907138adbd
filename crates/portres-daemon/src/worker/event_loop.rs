//! One worker's epoll loop: takes connections from its mailbox, reads them,
//! hands each whole call to `handlers::handle` and queues the answer, and
//! ends connections (closing their sessions). Charging and pausing are in
//! `backpressure.rs`, the jobs handlers return in `jobs.rs`, moving a
//! connection to its client's CPU in `placement.rs`.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use portres_core::FastMap;
use portres_proto::{Request, encode_error};
use rustix::event::epoll;

use super::conn::Conn;
use super::jobs::JobResult;
use super::placement::pin_to;
use super::{Arrival, Mailbox, Shared};
use crate::events::{EventFd, epoll_watching, timespec};
use crate::fault::fault;
use crate::handlers::{self, Outcome};
use crate::limits::Held;
use crate::state::lock;

/// A connection's key in its worker's table and epoll set (distinct from
/// reservation tokens, and meaningful only inside one worker).
pub(super) type ConnId = u64;

/// The epoll keys of what is not a connection.
const KEY_STOP: u64 = 1;
const KEY_WAKE: u64 = 2;
/// Portserver listener `i` (`Shared::portserver`) has key
/// `KEY_PORTSERVER_LISTENER + i`, above every connection id.
pub(super) const KEY_PORTSERVER_LISTENER: u64 = 1 << 62;
const FIRST_CONN_ID: ConnId = 16;

/// How often connections paused by their user's unsent budget, with
/// nothing of their own to send (so no EPOLLOUT to wake them), look again.
const PAUSED_RECHECK: Duration = Duration::from_millis(20);

/// Stack of a worker thread: requests are shallow (the JSON nesting is
/// capped, SQLite needs far less), and threads beyond the CPUs are the norm.
const WORKER_STACK: usize = 512 * 1024;

pub(super) struct Worker {
    pub(super) shared: Arc<Shared>,
    /// Its place in `mailboxes`.
    pub(super) index: usize,
    pub(super) mailboxes: Arc<Vec<Mailbox>>,
    pub(super) epoll: OwnedFd,
    /// Registered with epoll; kept open for as long as we wait on it.
    _stop: Arc<EventFd>,
    inbox: mpsc::Receiver<Arrival>,
    /// By daemon-made id, so hashed with foldhash, not SipHash (no
    /// client chooses the keys).
    pub(super) conns: FastMap<ConnId, Conn>,
    next_id: ConnId,
    pub(super) job_results: (mpsc::Sender<JobResult>, mpsc::Receiver<JobResult>),
    /// Connections paused by their user's unsent budget with nothing of
    /// their own to send: looked at again every `PAUSED_RECHECK`.
    /// By uid: a recheck costs one look per user, not per connection.
    pub(super) waiting: HashMap<u32, HashSet<ConnId>>,
    /// Bytes released by closed connections since the last `maybe_trim`.
    freed_since_trim: usize,
    last_trim: Option<Instant>,
    /// Portserver connections (`portserver.rs`).
    pub(super) portserver: super::portserver::PortserverConns,
    /// What its portserver requests share (`handlers::portserver`).
    pub(super) endpoint: handlers::portserver::Endpoint,
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
        self.mailbox().close();
        self.close_all();
    }
}

impl Worker {
    /// Starts worker `index` on its own thread (pinned if its mailbox says
    /// so).
    pub(super) fn spawn(
        index: usize,
        inbox: mpsc::Receiver<Arrival>,
        mailboxes: Arc<Vec<Mailbox>>,
        shared: &Arc<Shared>,
        stop: &Arc<EventFd>,
    ) -> io::Result<JoinHandle<()>> {
        let epoll = epoll_watching(&[
            (stop.as_fd(), KEY_STOP),
            (mailboxes[index].wake.as_fd(), KEY_WAKE),
        ])?;
        super::portserver::watch_listeners(&epoll, &shared.portserver, true)?;
        let cpu = mailboxes[index].cpu;
        let mut worker = Worker {
            shared: shared.clone(),
            index,
            mailboxes,
            epoll,
            _stop: stop.clone(),
            inbox,
            conns: FastMap::default(),
            next_id: FIRST_CONN_ID,
            job_results: mpsc::channel(),
            waiting: HashMap::new(),
            freed_since_trim: 0,
            last_trim: None,
            portserver: Default::default(),
            endpoint: handlers::portserver::Endpoint::new(lock(&shared.state).kernel()),
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

    pub(super) fn mailbox(&self) -> &Mailbox {
        &self.mailboxes[self.index]
    }

    fn run(&mut self) {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
        let mut last_recheck = Instant::now();
        loop {
            let recheck = (!self.waiting.is_empty()).then_some(PAUSED_RECHECK);
            let now = Instant::now();
            let expiry = self
                .portserver
                .next_deadline()
                .map(|at| at.saturating_duration_since(now));
            let resume = self
                .portserver
                .accept_resume
                .map(|at| at.saturating_duration_since(now));
            let timeout = [recheck, expiry, resume]
                .into_iter()
                .flatten()
                .min()
                .map(timespec);
            match crate::events::wait(&self.epoll, &mut events, timeout.as_ref()) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    log::error!("a worker stopped: epoll_wait: {e}");
                    break;
                }
            }
            if !self.waiting.is_empty() && last_recheck.elapsed() >= PAUSED_RECHECK {
                last_recheck = Instant::now();
                self.recheck_paused();
            }
            for ev in &events {
                match ev.data.u64() {
                    KEY_STOP => {
                        self.close_all();
                        return;
                    }
                    KEY_WAKE => self.wake(),
                    key if key >= KEY_PORTSERVER_LISTENER => {
                        self.accept_portserver((key - KEY_PORTSERVER_LISTENER) as usize)
                    }
                    id if self.is_portserver(id) => self.serve_portserver(id),
                    id => self.serve(id, ev.flags),
                }
            }
            self.expire_portserver();
            self.resume_portserver_accepts();
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
        self.last_trim = Some(Instant::now());
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
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id, "daemon stopping");
        }
        self.close_all_portserver();
        // Connections handed over but never taken.
        while let Ok(arrival) = self.inbox.try_recv() {
            match arrival {
                Arrival::New(new) => self.drop_unserved(new.session, new.uid, Default::default()),
                Arrival::Moved(conn) => self.drop_unserved(conn.session, conn.uid, conn.charged),
            }
        }
    }

    /// Ends the session of a connection never served here, giving back
    /// what it had charged.
    fn drop_unserved(
        &self,
        session: portres_core::SessionId,
        uid: u32,
        charged: crate::limits::Charged,
    ) {
        lock(&self.shared.state).close_session(session);
        self.shared.limits.connection_closed(uid, charged);
    }

    fn wake(&mut self) {
        self.mailbox().wake.clear();
        while let Ok(arrival) = self.inbox.try_recv() {
            let conn = match arrival {
                Arrival::New(new) => Box::new(Conn::new(new)),
                Arrival::Moved(conn) => conn,
            };
            self.take(*conn);
        }
        self.finish_jobs();
    }

    /// Starts serving a connection (new, or moved here by another worker).
    /// A key for a connection taken now.
    pub(super) fn new_conn_id(&mut self) -> ConnId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub(super) fn take(&mut self, mut conn: Conn) {
        let id = self.new_conn_id();
        conn.away = 0;
        conn.registered = epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
        if let Err(e) = epoll::add(
            &self.epoll,
            &conn.stream,
            epoll::EventData::new_u64(id),
            conn.registered,
        ) {
            log::warn!("dropping a connection: epoll: {e}");
            self.mailbox().load.fetch_sub(1, Ordering::Relaxed);
            self.drop_unserved(conn.session, conn.uid, conn.charged);
            return;
        }
        self.conns.insert(id, conn);
        // Bytes may have arrived while it moved: level-triggered epoll
        // reports them on the next wait.
    }

    pub(super) fn close(&mut self, id: ConnId, why: &str) {
        let Some(conn) = self.conns.remove(&id) else {
            return;
        };
        let _ = epoll::delete(&self.epoll, &conn.stream);
        self.unpause(conn.uid, id);
        // What it held: buffers, unsent replies, and its own bookkeeping.
        self.freed_since_trim +=
            conn.frames.memory() + conn.unsent_bytes + std::mem::size_of::<Conn>();
        log::debug!("session {} ended: {why}", conn.session.0);
        self.mailbox().load.fetch_sub(1, Ordering::Relaxed);
        lock(&self.shared.state).close_session(conn.session);
        self.shared.limits.connection_closed(conn.uid, conn.charged);
    }

    /// Serves what epoll reported for connection `id`.
    pub(super) fn serve(&mut self, id: ConnId, flags: epoll::EventFlags) {
        use epoll::EventFlags as F;
        if flags.contains(F::OUT) && !self.flush(id) {
            return;
        }
        let _ = self.settle(id, Held::ReplyBytes);
        let hup = flags.intersects(F::HUP | F::ERR);
        let mut steps = || -> Result<(), String> {
            if flags.intersects(F::IN | F::HUP | F::RDHUP | F::ERR) {
                self.read(id, hup)?;
            }
            self.settle(id, Held::ParkedFds)?;
            self.process(id)?;
            self.settle(id, Held::RequestBytes)?;
            self.settle(id, Held::ParkedFds)
        };
        if let Err(why) = steps() {
            return self.close(id, &why);
        }
        self.after_io(id);
        self.follow_client(id);
    }

    /// One receive (level-triggered epoll brings us back if more is there),
    /// unless the connection is paused by its unsent replies; `hup`: the
    /// peer is gone (then a paused connection just ends).
    fn read(&mut self, id: ConnId, hup: bool) -> Result<(), String> {
        let Some(conn) = self.conns.get(&id) else {
            return Ok(());
        };
        if conn.read_closed {
            return Ok(());
        }
        if self.paused(conn) {
            return if hup {
                Err("peer gone with replies unread".into())
            } else {
                Ok(())
            };
        }
        self.conns.get_mut(&id).expect("present above").receive()
    }

    /// Answers every whole request buffered, in order, unless a job is in
    /// flight or too many replies are unsent.
    pub(super) fn process(&mut self, id: ConnId) -> Result<(), String> {
        loop {
            let Some(conn) = self.conns.get(&id) else {
                return Ok(());
            };
            if conn.job_in_flight || self.paused(conn) {
                return Ok(());
            }
            let mine = self.mailbox().cpu;
            let conn = self.conns.get_mut(&id).expect("present above");
            let Some(call) = conn.next_call()? else {
                return Ok(());
            };
            let (session, uid) = (conn.session, conn.uid);
            let outcome = match call.request {
                Err(e) => Outcome::Reply(encode_error(&e)),
                Ok(req) => {
                    conn.note_cpu(call.cpu, mine);
                    if fault("worker-panic") && matches!(req, Request::Lookup(_)) {
                        panic!("fault injection: a worker panics outside a handler");
                    }
                    handlers::handle(&self.shared.state, session, req, call.fds)
                }
            };
            // A oneway call is never answered, not even with an error: a
            // reply would be taken for the answer to the client's next call.
            if call.oneway {
                continue;
            }
            let conn = self.conns.get_mut(&id).expect("present above");
            match outcome {
                Outcome::Reply(bytes) => conn.queue(bytes, None),
                Outcome::ReplyWithFd(bytes, fd) => conn.queue(bytes, Some(fd)),
                Outcome::Job(job) => {
                    if self.start_job(id, uid, job) {
                        // Off the loop; its result comes by the mailbox.
                        return Ok(());
                    }
                }
            }
            if !self.flush(id) {
                return Err("send failed".into());
            }
            let _ = self.settle(id, Held::ReplyBytes);
        }
    }

    /// Sends what can be sent now. `false` if the connection broke (closed).
    pub(super) fn flush(&mut self, id: ConnId) -> bool {
        let Some(conn) = self.conns.get_mut(&id) else {
            return false;
        };
        match conn.send_pending() {
            Ok(()) => true,
            Err(e) => {
                self.close(id, &format!("send: {e}"));
                false
            }
        }
    }
}
