//! The worker pool: threads each running an epoll loop over its own
//! connections (`event_loop`, with `backpressure` and `jobs`), each
//! connection's protocol engine (`conn`: framing, descriptor attribution,
//! replies in order) and where connections run (`placement`: CPU pinning,
//! following the client). The
//! front (`front.rs`) hands it accepted varlink connections; portserver
//! connections (`portserver`) the workers accept themselves. Requests go to
//! `handlers::handle`, which decides. Nothing here refers to the front.
//!
//! A connection is registered for EPOLLIN only (EPOLLOUT just while a reply
//! is stuck), so a client reading its reply never wakes the worker, and
//! nothing but the request itself costs a wakeup. Workers are pinned to
//! CPUs; a connection whose client keeps calling from another CPU (the
//! `"cpu"` hint) is handed, between requests, to a worker pinned there
//! (`Worker::follow_client`), so request and reply stay on one CPU.
//!
//! Panic policy: nothing a request does takes its worker down. A handler
//! that panics answers `internal` for that call (`handlers::handle` runs
//! under `catch_unwind`; the state mutex tolerates poisoning); so does a
//! job (`handlers::Job`) that panics or whose thread the OS refuses.
//! Should a worker die anyway (a bug in this module), its `Drop` closes
//! every session it served, so their reservations end, and marks its
//! mailbox dead so the front and the other workers skip it; once every
//! worker is dead the front stops the daemon (non-zero exit) at the next
//! varlink connection or within a second (`front.rs`'s liveness check),
//! for its service manager to restart it.

mod backpressure;
mod conn;
mod event_loop;
mod jobs;
mod placement;
mod portserver;

use std::io;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;

use portres_core::{Caller, ErrorCode, SessionId};

use crate::config::Config;
use crate::events::EventFd;
use crate::limits::{Charged, Limits};
use crate::state::State;

pub(crate) use conn::send_parting_error;
pub(crate) use placement::usable_cpus;

use conn::Conn;
use event_loop::Worker;

/// What the front and every worker share.
///
/// Lock rule: two mutexes exist, the state (`state`, taken through
/// `state::lock`) and the limits (inside `limits`, taken only by its own
/// methods). Never hold both: the limits lock is a leaf (its methods lock
/// nothing else and do no I/O but a log line), and no code holding the
/// state lock reaches `limits` (handlers get the state alone). Neither is
/// held across I/O on a client's socket; the state lock is held for one
/// decision at a time (Acquire and Bind drop it around their kernel calls).
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) limits: Limits,
    /// Who is an administrator (`State::is_admin`) when a connection is
    /// admitted.
    pub(crate) config: Config,
    /// The portserver endpoint's listeners (`--portserver`), non-blocking:
    /// every worker accepts on them itself (`portserver.rs`), so a request
    /// is served on the thread that wakes for it.
    pub(crate) portserver: Vec<UnixListener>,
}

impl Shared {
    /// The peer of a new connection, admitted against the connection
    /// limits (and counted), a varlink one made non-blocking (a portserver
    /// one is accepted so); `None` (logged) if it is refused or cannot be
    /// set up. A refused varlink connection is told why; a portserver one
    /// gets nothing (its protocol has no errors).
    pub(crate) fn admit(&self, stream: &UnixStream, portserver: bool) -> Option<Caller> {
        // A portserver peer's groups decide nothing but whether it is an
        // administrator, which without `--admin-group` they cannot make
        // it: one getsockopt (SO_PEERGROUPS) fewer per request then.
        let creds = if portserver && self.config.admin_gid.is_none() {
            portres_proto::peer::peer_process(stream.as_fd()).map(|p| {
                portres_proto::peer::PeerCreds {
                    uid: p.uid,
                    gid: p.gid,
                    pid: p.pid,
                    groups: Vec::new(),
                }
            })
        } else {
            portres_proto::peer::peer_creds(stream.as_fd())
        };
        let creds = match creds {
            Ok(c) => c,
            Err(e) => {
                log::warn!("dropping a connection whose credentials cannot be read: {e}");
                return None;
            }
        };
        let (uid, pid) = (creds.uid, creds.pid);
        let what = if portserver {
            "portserver connection"
        } else {
            "connection"
        };
        if let Err(refusal) = self.limits.admit(uid) {
            self.limits.log_limited(refusal.kind, || {
                format!(
                    "{}: refusing a {what} from uid {uid} pid {pid}",
                    refusal.why
                )
            });
            if !portserver {
                send_parting_error(stream, ErrorCode::DaemonUnavailable, refusal.why);
            }
            return None;
        }
        if !portserver && let Err(e) = stream.set_nonblocking(true) {
            log::warn!("dropping a {what}: {e}");
            self.limits.connection_closed(uid, Charged::default());
            return None;
        }
        Some(Caller {
            admin: State::is_admin(&self.config, uid, creds.gid, &creds.groups),
            uid,
            gid: creds.gid,
            groups: creds.groups,
            pid,
        })
    }
}

/// A connection the front accepted, with its session already open.
pub(crate) struct NewConn {
    pub(crate) stream: UnixStream,
    pub(crate) session: SessionId,
    pub(crate) uid: u32,
}

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
    /// Signalled when something arrived (or a job finished).
    wake: EventFd,
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
        self.wake.signal();
        Ok(())
    }

    /// Marks it dead (its worker is dying), under the inbox lock.
    fn close(&self) {
        let _inbox = self.inbox.lock().unwrap_or_else(|p| p.into_inner());
        self.alive.store(false, Ordering::Release);
    }
}

/// The worker threads, as the front sees them.
pub(crate) struct Workers {
    mailboxes: Arc<Vec<Mailbox>>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers, pinned round-robin to `cpus` (none if
    /// empty); they stop when `stop` is signalled. If one cannot start,
    /// those that did are stopped (via `stop`) before the error returns.
    pub(crate) fn start(
        count: usize,
        cpus: &[usize],
        shared: Arc<Shared>,
        stop: Arc<EventFd>,
    ) -> io::Result<Workers> {
        let mut mailboxes = Vec::with_capacity(count);
        let mut inboxes = Vec::with_capacity(count);
        for i in 0..count {
            let (tx, rx) = mpsc::channel();
            mailboxes.push(Mailbox {
                inbox: Mutex::new(tx),
                wake: EventFd::new()?,
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
            match Worker::spawn(index, inbox, workers.mailboxes.clone(), &shared, &stop) {
                Ok(thread) => workers.threads.push(thread),
                Err(e) => {
                    stop.signal();
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
        self.deliver_least_busy(Arrival::New(conn))
            .map_err(|back| match back {
                Arrival::New(conn) => conn,
                _ => unreachable!("delivered a new connection"),
            })
    }

    /// Whether every worker has died (only a bug makes one die).
    pub(crate) fn all_dead(&self) -> bool {
        self.mailboxes
            .iter()
            .all(|m| !m.alive.load(Ordering::Acquire))
    }

    fn deliver_least_busy(&self, mut arrival: Arrival) -> Result<(), Arrival> {
        loop {
            let Some(least_busy) = self
                .mailboxes
                .iter()
                .filter(|m| m.alive.load(Ordering::Acquire))
                .min_by_key(|m| m.load.load(Ordering::Relaxed))
            else {
                return Err(arrival);
            };
            // It may die between the choice and the delivery: choose again.
            match least_busy.deliver(arrival) {
                Ok(()) => return Ok(()),
                Err(back) => arrival = back,
            }
        }
    }

    /// Waits until every worker has stopped (the stop descriptor must be
    /// signalled).
    pub(crate) fn join(self) {
        for thread in self.threads {
            if thread.join().is_err() {
                log::error!("a worker thread panicked");
            }
        }
    }
}
