//! The transport's front: one epoll loop on the daemon's own thread that
//! accepts connections, admits them against the connection limits
//! (`Limits::admit`), opens each one's session and hands it to a worker
//! (`worker::Workers`), runs the kernel timers (`kernel_timer.rs`) and
//! sees the stop. The portserver endpoint's listeners (`--portserver`)
//! are the workers' own (`worker/portserver.rs`); the front reaps the
//! portserver holders whose processes
//! exited (their pidfds' epoll set, `State::reap_exited_holders`), and
//! starts SIGHUP's reloads on a thread of their own. It decides nothing
//! about reservations itself.
//!
//! Threads: this loop and the worker loops (by default one per CPU,
//! pinned), each an epoll loop over its own connections; a connection
//! starts on the least busy worker and moves to one on its client's CPU
//! (`worker/placement.rs`). Why hand-written loops rather than an async
//! runtime: see ARCHITECTURE.md. Measured figures are in bench/README.md.
//!
//! It also tells the service manager (`systemd::Notifier`) READY=1 once
//! the loop and its workers run, and refreshes STATUS= when the summary
//! changed, at most every `STATUS_REFRESH` (not per request).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::event::epoll;

use crate::config::Config;
use crate::events::{EventFd, epoll_watching, timeout_until};
use crate::kernel_timer::KernelTimer;
use crate::limits::{Charged, Limits};
use crate::state::{State, lock};
use crate::systemd::{Notifier, status_summary};
use crate::worker::{NewConn, Shared, Workers, usable_cpus};

/// How long accepting pauses when the process (EMFILE) or the system
/// (ENFILE) is out of descriptors: connections wait in the backlog instead
/// of the loop spinning on a listener that stays readable.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// How often the service manager's STATUS= line is brought up to date (if
/// it changed): `systemctl status` is read by people, not polled per
/// request.
pub(crate) const STATUS_REFRESH: Duration = Duration::from_secs(10);

/// How often the front looks whether every worker has died. A varlink
/// connection finds out at once (no worker takes it); the portserver
/// endpoint's connections are the workers' own, so a daemon serving only
/// those would otherwise never notice.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// The front's epoll keys.
const KEY_LISTENER: u64 = 0;
const KEY_STOP: u64 = 1;
const KEY_SHRINK: u64 = 2;
const KEY_RELOAD: u64 = 3;
const KEY_HOLDERS: u64 = 4;

/// Holders reaped per wakeup (the watch stays readable while more are
/// left, so a mass exit cannot keep the loop from the rest).
const REAP_BATCH: usize = 256;

/// What the daemon listens on: the varlink socket (the front accepts on
/// it) and the portserver endpoint's listeners (the workers accept on
/// them).
pub(crate) struct Listeners {
    pub(crate) varlink: UnixListener,
    pub(crate) portserver: Vec<UnixListener>,
}

/// The eventfds that wake the front: a stop (`StopHandle`), a deferred
/// shrink of the kernel's list, a reload (`ReloadHandle`, SIGHUP).
pub(crate) struct Signals {
    pub(crate) stop: Arc<EventFd>,
    pub(crate) shrink: Arc<EventFd>,
    pub(crate) reload: Arc<EventFd>,
}

/// Whether a SIGHUP's reload runs, and whether another SIGHUP came since
/// it started (it then runs once more).
#[derive(Default)]
struct Reloads {
    running: bool,
    again: bool,
}

/// The accepting loop and its workers.
pub(crate) struct Front {
    shared: Arc<Shared>,
    listener: UnixListener,
    /// The epoll set of portserver holders' pidfds (see `KEY_HOLDERS`);
    /// kept open for as long as we wait on it.
    _holders: OwnedFd,
    epoll: OwnedFd,
    stop: Arc<EventFd>,
    /// Signalled to re-read the portres.d files (SIGHUP).
    reload: Arc<EventFd>,
    /// SIGHUP's reloads, run off this loop (see `reload_in_background`).
    reloads: Arc<Mutex<Reloads>>,
    reload_thread: Option<std::thread::JoinHandle<()>>,
    kernel: KernelTimer,
    workers: Workers,
    /// No worker is left to serve (each died of a bug): stop.
    workers_gone: bool,
    /// Accepting is paused until then (out of descriptors).
    accept_resume: Option<Instant>,
    /// A stop was found asked for while accepting (the workers had already
    /// ended): return as if its event had come.
    stop_seen: bool,
    /// The service manager, and the STATUS= it was last told and when it is
    /// next looked at (`None`: no service manager).
    notifier: Notifier,
    status_sent: String,
    status_due: Option<Instant>,
    /// When `LIVENESS_CHECK` is due next.
    liveness_due: Instant,
}

impl Front {
    /// Sets up the loop and starts the workers. On failure the state comes
    /// back, so the caller can still shut it down cleanly.
    // Each argument is one of the daemon's start-up parts, handed over
    // once; a struct for them would only rename this list.
    pub(crate) fn new(
        state: State,
        config: Config,
        listeners: Listeners,
        signals: Signals,
        notifier: Notifier,
    ) -> Result<Front, (io::Error, Arc<Shared>)> {
        let Listeners {
            varlink: listener,
            portserver,
        } = listeners;
        let Signals {
            stop,
            shrink,
            reload,
        } = signals;
        let usable = usable_cpus();
        let count = config.workers.unwrap_or(usable.len()).max(1);
        // Each worker's portserver endpoint remembers some pidfds, charged
        // to no user (`handlers::portserver::Endpoint`).
        let remembered = if portserver.is_empty() {
            0
        } else {
            count * crate::handlers::portserver::PROCESSES_REMEMBERED
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            limits: Limits::new(&config, remembered),
            config: config.clone(),
            portserver,
        });
        let setup = || -> io::Result<(OwnedFd, OwnedFd, Workers)> {
            listener.set_nonblocking(true)?;
            for l in &shared.portserver {
                l.set_nonblocking(true)?;
            }
            let holders = lock(&shared.state).holder_watch()?;
            let watched = [
                (listener.as_fd(), KEY_LISTENER),
                (stop.as_fd(), KEY_STOP),
                (shrink.as_fd(), KEY_SHRINK),
                (reload.as_fd(), KEY_RELOAD),
                (holders.as_fd(), KEY_HOLDERS),
            ];
            let epoll = epoll_watching(&watched)?;
            let cpus = if config.pin_workers && usable.len() > 1 {
                usable.clone()
            } else {
                Vec::new()
            };
            if cpus.is_empty() {
                log::info!("{count} worker thread(s), not pinned");
            } else {
                log::info!("{count} worker thread(s), pinned round-robin to CPUs {cpus:?}");
            }
            let workers = Workers::start(count, &cpus, shared.clone(), stop.clone())?;
            Ok((epoll, holders, workers))
        };
        let kernel_sync = lock(&shared.state).kernel_sync();
        match setup() {
            Ok((epoll, holders, workers)) => Ok(Front {
                kernel: KernelTimer::new(shrink, kernel_sync),
                shared,
                listener,
                _holders: holders,
                epoll,
                stop,
                reload,
                reloads: Arc::default(),
                reload_thread: None,
                workers,
                workers_gone: false,
                accept_resume: None,
                stop_seen: false,
                notifier,
                status_sent: String::new(),
                status_due: None,
                liveness_due: Instant::now() + LIVENESS_CHECK,
            }),
            Err(e) => Err((e, shared)),
        }
    }

    pub(crate) fn run(&mut self) -> io::Result<()> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(16);
        // The socket accepts (connections wait in its backlog for this
        // loop), the workers run, and `Daemon::start` has written baseline
        // ∪ persistent to the kernel: ready.
        if self.notifier.is_active() {
            self.status_sent = status_summary(&lock(&self.shared.state));
            self.notifier.ready(&self.status_sent);
            self.status_due = Some(Instant::now() + STATUS_REFRESH);
        }
        loop {
            let next = [
                self.kernel.next_deadline(),
                self.accept_resume,
                self.status_due,
                Some(self.liveness_due),
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = next.map(timeout_until);
            if !crate::events::wait(&self.epoll, &mut events, timeout.as_ref())? {
                continue;
            }
            // A stop comes first, whatever else is ready with it: the
            // workers are stopping too and take no new connections.
            if events.iter().any(|ev| ev.data.u64() == KEY_STOP) {
                return Ok(());
            }
            for ev in &events {
                match ev.data.u64() {
                    KEY_LISTENER => self.accept_all(),
                    KEY_SHRINK => self.kernel.shrink_asked(),
                    KEY_RELOAD => {
                        self.reload.clear();
                        self.reload_in_background();
                    }
                    KEY_HOLDERS => self.reap_holders(),
                    _ => {}
                }
            }
            if Instant::now() >= self.liveness_due {
                self.liveness_due = Instant::now() + LIVENESS_CHECK;
                if self.workers.all_dead() {
                    self.workers_ended("");
                }
            }
            if self.stop_seen {
                return Ok(());
            }
            if self.workers_gone {
                return Err(io::Error::other("every worker thread died"));
            }
            if self.accept_resume.is_some_and(|t| Instant::now() >= t) {
                self.accept_resume = None;
                self.watch_listener(true);
                self.accept_all();
            }
            self.kernel.run_due(&self.shared.state);
            self.refresh_status();
        }
    }

    /// Tells the service manager the summary if it changed, when due.
    fn refresh_status(&mut self) {
        let Some(due) = self.status_due else { return };
        let now = Instant::now();
        if now < due {
            return;
        }
        self.status_due = Some(now + STATUS_REFRESH);
        let summary = status_summary(&lock(&self.shared.state));
        if summary != self.status_sent {
            self.notifier.status(&summary);
            self.status_sent = summary;
        }
    }

    /// Makes every worker stop and waits for them; gives back the shared
    /// part for the final shutdown.
    pub(crate) fn stop_workers(mut self) -> Arc<Shared> {
        self.stop.signal();
        self.workers.join();
        // A reload under way finishes its change in hand and the rest (each
        // durable on its own) before the state is shut down.
        if let Some(t) = self.reload_thread.take() {
            let _ = t.join();
        }
        self.shared
    }

    /// Runs a SIGHUP's reload on a thread of its own: a reload of many
    /// lines takes seconds (a durable write each), during which this loop
    /// must go on accepting, reaping holders, keeping the kernel's list and
    /// seeing a stop. SIGHUPs arriving while one runs make it run once more
    /// when it ends (however many came), never a thread each.
    fn reload_in_background(&mut self) {
        {
            let mut q = self.reloads.lock().unwrap_or_else(|p| p.into_inner());
            if q.running {
                q.again = true;
                return;
            }
            q.running = true;
        }
        if let Some(t) = self.reload_thread.take() {
            let _ = t.join(); // Ended: it cleared `running`.
        }
        let (shared, reloads) = (self.shared.clone(), self.reloads.clone());
        let spawned = std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                loop {
                    crate::declared::reload(&shared.state, "SIGHUP");
                    let mut q = reloads.lock().unwrap_or_else(|p| p.into_inner());
                    if !std::mem::take(&mut q.again) {
                        q.running = false;
                        return;
                    }
                }
            });
        match spawned {
            Ok(t) => self.reload_thread = Some(t),
            Err(e) => {
                log::warn!("cannot start a thread for the reload ({e}); reloading on the front");
                self.reloads
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .running = false;
                crate::declared::reload(&self.shared.state, "SIGHUP");
            }
        }
    }

    /// Accepts what is waiting on the varlink listener, at most
    /// `ACCEPT_BATCH` at a time (the level-triggered listener brings us
    /// back), so a stream of connects cannot keep the loop from its timers
    /// and from seeing a stop.
    fn accept_all(&mut self) {
        const ACCEPT_BATCH: usize = 256;
        for _ in 0..ACCEPT_BATCH {
            if self.workers_gone || self.stop_seen || self.accept_resume.is_some() {
                return;
            }
            match self.listener.accept() {
                Ok((stream, _)) => self.accept(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the listener stays
                    // readable, so retrying at once would spin. Leave the
                    // rest in the backlog and look again shortly.
                    self.shared.limits.log_limited("accept", || {
                        format!(
                            "accept failed: {e}; pausing new connections for {} ms at a time until descriptors free up",
                            ACCEPT_PAUSE.as_millis()
                        )
                    });
                    self.watch_listener(false);
                    self.accept_resume = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
            }
        }
    }

    /// Every worker refused a connection: the daemon is stopping (fine) or
    /// every worker died (stop, for the service manager to restart us).
    fn no_worker_took(&mut self, uid: u32) {
        self.workers_ended(&format!("dropping a connection from uid {uid} and "));
    }

    /// Every worker has ended: the daemon is stopping (fine) or they all
    /// died (stop, for the service manager to restart us; `doing` says
    /// what else is done about it, in the log line).
    fn workers_ended(&mut self, doing: &str) {
        // The workers also end when the daemon is asked to stop, which
        // this loop may not have seen yet: that is no failure.
        if self.stop.is_signalled() {
            self.stop_seen = true;
        } else {
            log::error!(
                "every worker thread died; {doing}stopping, for the service manager to restart portresd"
            );
            self.workers_gone = true;
        }
    }

    /// Starts or stops watching the listener for connections.
    fn watch_listener(&self, on: bool) {
        let flags = if on {
            epoll::EventFlags::IN
        } else {
            epoll::EventFlags::empty()
        };
        let _ = epoll::modify(
            &self.epoll,
            &self.listener,
            epoll::EventData::new_u64(KEY_LISTENER),
            flags,
        );
    }

    /// Ends the portserver holders whose processes exited, and gives back
    /// their pidfds' charge.
    fn reap_holders(&mut self) {
        let uids = lock(&self.shared.state).reap_exited_holders(REAP_BATCH);
        for uid in uids {
            self.shared.limits.pidfd_released(uid);
        }
    }

    fn accept(&mut self, stream: UnixStream) {
        let Some(caller) = self.shared.admit(&stream, false) else {
            return;
        };
        let uid = caller.uid;
        let session = lock(&self.shared.state).open_session(caller);
        if let Err(lost) = self.workers.hand_over(NewConn {
            stream,
            session,
            uid,
        }) {
            lock(&self.shared.state).close_session(lost.session);
            self.shared
                .limits
                .connection_closed(uid, Charged::default());
            self.no_worker_took(uid);
        }
    }
}
