//! What one user can make the daemon hold, and the caps on it: connections
//! (total, per user), descriptors kept out of unprivileged reach, and per
//! non-root user the bytes of unfinished requests, of unsent replies, the
//! parked descriptors, the job threads and the portserver endpoint's
//! pidfd holders. The front admits connections
//! here; the workers charge and uncharge what their connections hold.
//!
//! Lock rule: the limits lock is private to `Limits` and taken only inside
//! its methods, which take no other lock and do no I/O but a log line. It
//! is a leaf: never taken while the state lock is held (no code holding
//! the state lock can reach a `Limits`), and nothing is locked under it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::config::Config;

/// Most descriptors one non-root user's connections may have the daemon
/// hold besides the connections themselves: received and not yet taken by
/// their request, or riding on unsent replies.
pub(crate) const PER_UID_PARKED_FDS: usize = 256;

/// Most bytes of unsent replies one non-root user's connections may make
/// the daemon hold. Past it, that user's connections are neither read nor
/// answered until their replies drain (thousands of connections that never
/// read, each under their own cap, would otherwise pin gigabytes).
pub(crate) const PER_UID_UNSENT_BUDGET: usize = 4 << 20;

/// Most bytes of partly received requests one non-root user's connections
/// may make the daemon hold, beyond a small allowance per connection. A
/// connection that would pass it is refused and closed, so thousands of
/// connections each holding a never-finished large request cannot pin the
/// daemon's memory.
pub(crate) const PER_UID_BUFFER_BUDGET: usize = 8 << 20;

/// Most job threads (`handlers::Job`, e.g. the `List` dump) one user's
/// calls may run at once; more run on their worker (a user with thousands
/// of connections cannot make the daemon start thousands of threads).
pub(crate) const MAX_JOBS_PER_UID: usize = 4;

/// Most portserver holders (a pidfd each: one per process a user asked
/// ports for, however many ports) one non-root user may make the daemon
/// keep at once. Past it, requests naming a new process are closed
/// unanswered; the runtime quota bounds the ports themselves.
pub(crate) const PER_UID_PIDFD_HOLDERS: usize = 1024;

/// What a connection can hold, charged to its (non-root) user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Held {
    /// Bytes of requests received and not yet complete (beyond the
    /// allowance), against `PER_UID_BUFFER_BUDGET`: past it, refused.
    RequestBytes,
    /// Bytes of replies not yet sent, against `PER_UID_UNSENT_BUDGET`:
    /// past it, the user's connections pause.
    ReplyBytes,
    /// Descriptors received and not yet taken, or on unsent replies,
    /// against `PER_UID_PARKED_FDS` and the unprivileged budget: past
    /// either, refused.
    ParkedFds,
}

/// What one connection has charged, per kind (kept by the connection, so
/// that closing it gives back exactly that).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Charged {
    pub(crate) request_bytes: usize,
    pub(crate) reply_bytes: usize,
    pub(crate) parked_fds: usize,
}

impl Charged {
    fn of(&mut self, held: Held) -> &mut usize {
        match held {
            Held::RequestBytes => &mut self.request_bytes,
            Held::ReplyBytes => &mut self.reply_bytes,
            Held::ParkedFds => &mut self.parked_fds,
        }
    }

    /// Brings this connection's charge of `held` to `now`, charging or
    /// uncharging the difference. `Err` (why) when a charge passes a cap
    /// that refuses: the caller closes the connection (whose close gives
    /// the charge back).
    pub(crate) fn settle(
        &mut self,
        limits: &Limits,
        uid: u32,
        held: Held,
        now: usize,
    ) -> Result<(), String> {
        let before = std::mem::replace(self.of(held), now);
        if now > before {
            limits.charge(uid, held, now - before)
        } else {
            if now < before {
                limits.uncharge(uid, held, before - now);
            }
            Ok(())
        }
    }
}

/// A connection the front may not admit: the kind of limit (for the log's
/// rate limit) and why, for the client.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) kind: &'static str,
    pub(crate) why: String,
}

/// The daemon's limits and what is charged against them.
pub(crate) struct Limits {
    counts: Mutex<Counts>,
    /// Users over `PER_UID_UNSENT_BUDGET`: while 0, nobody needs the lock
    /// to know that no user is.
    unsent_over: AtomicUsize,
    max_connections: usize,
    max_connections_per_uid: usize,
    /// What non-root users may make the daemon hold: RLIMIT_NOFILE less
    /// the descriptors open at start and a reserve for root and for the
    /// daemon's own work (sysctl writes, probes, dumps), so that no
    /// unprivileged flood can lock root out (see `unprivileged_fd_budget`).
    fd_budget: usize,
}

#[derive(Default)]
struct Counts {
    /// Open connections.
    total: usize,
    /// Open connections per uid.
    per_uid: HashMap<u32, usize>,
    /// Per non-root uid, what its connections hold.
    request_bytes: HashMap<u32, usize>,
    reply_bytes: HashMap<u32, usize>,
    parked_fds: HashMap<u32, usize>,
    /// Per uid: job threads running.
    jobs: HashMap<u32, usize>,
    /// Per non-root uid: portserver holders (pidfds) kept.
    pidfd_holders: HashMap<u32, usize>,
    /// Descriptors held for all non-root users together: their
    /// connections and parked descriptors, against `fd_budget`.
    fds_unprivileged: usize,
    /// When each kind of refusal was last logged.
    last_log: HashMap<&'static str, Instant>,
}

impl Counts {
    fn per_user(&mut self, held: Held) -> &mut HashMap<u32, usize> {
        match held {
            Held::RequestBytes => &mut self.request_bytes,
            Held::ReplyBytes => &mut self.reply_bytes,
            Held::ParkedFds => &mut self.parked_fds,
        }
    }

    /// Logs `msg` at most once a second per `kind` of refusal, so a flood
    /// cannot fill the log and no kind hides another.
    fn log_limited(&mut self, kind: &'static str, msg: impl FnOnce() -> String) {
        if self
            .last_log
            .get(kind)
            .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
        {
            log::warn!("{}", msg());
            self.last_log.insert(kind, Instant::now());
        }
    }
}

/// Adds `delta` to (or takes it from) `uid`'s entry, dropping it at 0;
/// returns the new value.
fn adjust(map: &mut HashMap<u32, usize>, uid: u32, add: usize, sub: usize) -> usize {
    let n = map.entry(uid).or_default();
    *n = (*n + add).saturating_sub(sub);
    let n = *n;
    if n == 0 {
        map.remove(&uid);
    }
    n
}

impl Limits {
    /// `kept_by_daemon`: descriptors the daemon will hold that are charged
    /// to nobody (the portserver endpoints' remembered pidfds, at most
    /// `PROCESSES_REMEMBERED` per worker, whoever named the processes):
    /// taken from the unprivileged budget, not from root's reserve.
    pub(crate) fn new(config: &Config, kept_by_daemon: usize) -> Limits {
        Limits {
            counts: Mutex::new(Counts::default()),
            unsent_over: AtomicUsize::new(0),
            max_connections: config.max_connections,
            max_connections_per_uid: config.max_connections_per_uid,
            fd_budget: unprivileged_fd_budget(kept_by_daemon),
        }
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs `msg` at most once a second per `kind` (see `Counts::log_limited`).
    pub(crate) fn log_limited(&self, kind: &'static str, msg: impl FnOnce() -> String) {
        self.counts().log_limited(kind, msg);
    }

    /// Admits a connection of `uid` and counts it, or says which limit it
    /// hits (root passes the per-user and descriptor limits).
    pub(crate) fn admit(&self, uid: u32) -> Result<(), Refusal> {
        let mut c = self.counts();
        let per_uid = c.per_uid.get(&uid).copied().unwrap_or(0);
        if c.total >= self.max_connections {
            let why = format!(
                "connection limit reached ({} connections)",
                self.max_connections
            );
            return Err(Refusal { kind: "total", why });
        }
        if uid != 0 && per_uid >= self.max_connections_per_uid {
            let why = format!(
                "per-user connection limit reached (uid {uid} holds {} connections)",
                self.max_connections_per_uid
            );
            return Err(Refusal {
                kind: "per-user",
                why,
            });
        }
        if uid != 0 && c.fds_unprivileged >= self.fd_budget {
            let why = format!(
                "descriptor limit for unprivileged users reached ({} held, the rest is kept for root)",
                self.fd_budget
            );
            return Err(Refusal {
                kind: "descriptors",
                why,
            });
        }
        if uid != 0 {
            c.fds_unprivileged += 1;
        }
        c.total += 1;
        *c.per_uid.entry(uid).or_default() += 1;
        Ok(())
    }

    /// A connection of `uid` ended, giving back what it had `charged`.
    pub(crate) fn connection_closed(&self, uid: u32, charged: Charged) {
        let mut c = self.counts();
        c.total = c.total.saturating_sub(1);
        if uid != 0 {
            c.fds_unprivileged = c.fds_unprivileged.saturating_sub(1);
        }
        adjust(&mut c.per_uid, uid, 0, 1);
        drop(c);
        self.uncharge(uid, Held::RequestBytes, charged.request_bytes);
        self.uncharge(uid, Held::ReplyBytes, charged.reply_bytes);
        self.uncharge(uid, Held::ParkedFds, charged.parked_fds);
    }

    /// Charges `n` more of `held` to non-root `uid` (root is exempt).
    /// `Err` (why, already logged) if that passes a cap that refuses; the
    /// charge stands until uncharged.
    pub(crate) fn charge(&self, uid: u32, held: Held, n: usize) -> Result<(), String> {
        if uid == 0 || n == 0 {
            return Ok(());
        }
        let mut c = self.counts();
        let c = &mut *c;
        let total = adjust(c.per_user(held), uid, n, 0);
        match held {
            Held::RequestBytes => {
                if total <= PER_UID_BUFFER_BUDGET {
                    return Ok(());
                }
                let why = format!(
                    "uid {uid}'s connections hold more than {} MiB of unfinished requests",
                    PER_UID_BUFFER_BUDGET >> 20
                );
                c.log_limited("buffers", || format!("{why}: closing one of them"));
                Err(why)
            }
            Held::ReplyBytes => {
                if total > PER_UID_UNSENT_BUDGET && total - n <= PER_UID_UNSENT_BUDGET {
                    self.unsent_over.fetch_add(1, Ordering::Relaxed);
                    c.log_limited("unsent", || {
                        format!(
                            "uid {uid}'s connections hold more than {} MiB of unread replies: pausing them until they read",
                            PER_UID_UNSENT_BUDGET >> 20
                        )
                    });
                }
                Ok(())
            }
            Held::ParkedFds => {
                c.fds_unprivileged += n;
                let why = if total > PER_UID_PARKED_FDS {
                    format!(
                        "uid {uid}'s connections hold more than {PER_UID_PARKED_FDS} descriptors"
                    )
                } else if c.fds_unprivileged > self.fd_budget {
                    format!(
                        "descriptor limit for unprivileged users reached ({} held, the rest is kept for root)",
                        self.fd_budget
                    )
                } else {
                    return Ok(());
                };
                c.log_limited("descriptors", || {
                    format!("{why}: closing one of uid {uid}'s connections")
                });
                Err(why)
            }
        }
    }

    /// Gives back `n` of `held` charged to `uid`.
    pub(crate) fn uncharge(&self, uid: u32, held: Held, n: usize) {
        if uid == 0 || n == 0 {
            return;
        }
        let mut c = self.counts();
        let before = c.per_user(held).get(&uid).copied().unwrap_or(0);
        let total = adjust(c.per_user(held), uid, 0, n);
        match held {
            Held::RequestBytes => {}
            Held::ReplyBytes => {
                if before > PER_UID_UNSENT_BUDGET && total <= PER_UID_UNSENT_BUDGET {
                    self.unsent_over.fetch_sub(1, Ordering::Relaxed);
                }
            }
            Held::ParkedFds => c.fds_unprivileged = c.fds_unprivileged.saturating_sub(n),
        }
    }

    /// Whether non-root `uid`'s unsent replies are past the per-user
    /// budget. Cheap (no lock) unless some user is.
    pub(crate) fn unsent_over_budget(&self, uid: u32) -> bool {
        uid != 0
            && self.unsent_over.load(Ordering::Relaxed) > 0
            && self
                .counts()
                .reply_bytes
                .get(&uid)
                .is_some_and(|&n| n > PER_UID_UNSENT_BUDGET)
    }

    /// The users whose unsent replies are past the budget now.
    pub(crate) fn users_over_unsent(&self) -> HashSet<u32> {
        self.counts()
            .reply_bytes
            .iter()
            .filter(|&(_, &n)| n > PER_UID_UNSENT_BUDGET)
            .map(|(&uid, _)| uid)
            .collect()
    }

    /// Counts a job thread for `uid`, unless it has its share running
    /// already (`false`: run the job on the worker instead).
    pub(crate) fn start_job(&self, uid: u32) -> bool {
        let mut c = self.counts();
        let n = c.jobs.entry(uid).or_default();
        if *n >= MAX_JOBS_PER_UID {
            return false;
        }
        *n += 1;
        true
    }

    /// Counts a portserver holder's pidfd for non-root `uid` (against
    /// `PER_UID_PIDFD_HOLDERS` and the unprivileged descriptor budget),
    /// before the request that may make one; `Err` (why; the caller logs it) past
    /// either, charging nothing.
    pub(crate) fn hold_pidfd(&self, uid: u32) -> Result<(), String> {
        if uid == 0 {
            return Ok(());
        }
        let mut c = self.counts();
        let held = c.pidfd_holders.get(&uid).copied().unwrap_or(0);
        let why = if held >= PER_UID_PIDFD_HOLDERS {
            format!("uid {uid} holds portserver ports for {PER_UID_PIDFD_HOLDERS} processes")
        } else if c.fds_unprivileged >= self.fd_budget {
            format!(
                "descriptor limit for unprivileged users reached ({} held, the rest is kept for root)",
                self.fd_budget
            )
        } else {
            c.fds_unprivileged += 1;
            adjust(&mut c.pidfd_holders, uid, 1, 0);
            return Ok(());
        };
        // Not logged here: a request for a process that already has a
        // holder needs no new pidfd, and is served anyway.
        Err(why)
    }

    /// A portserver holder of `uid` ended (or the request counted by
    /// `hold_pidfd` made none).
    pub(crate) fn pidfd_released(&self, uid: u32) {
        if uid == 0 {
            return;
        }
        let mut c = self.counts();
        if c.pidfd_holders.contains_key(&uid) {
            adjust(&mut c.pidfd_holders, uid, 0, 1);
            c.fds_unprivileged = c.fds_unprivileged.saturating_sub(1);
        }
    }

    /// Portserver holders `uid` has the daemon keep now.
    #[cfg(test)]
    pub(crate) fn pidfd_holders(&self, uid: u32) -> usize {
        self.counts().pidfd_holders.get(&uid).copied().unwrap_or(0)
    }

    /// A job thread of `uid` is done (or never started).
    pub(crate) fn end_job(&self, uid: u32) {
        adjust(&mut self.counts().jobs, uid, 0, 1);
    }
}

/// How many descriptors non-root users may make the daemon hold (see
/// `Limits::fd_budget`): RLIMIT_NOFILE less what is open now, what the
/// daemon will keep on nobody's account (`kept`), and a reserve of an
/// eighth (at least 64) for root and the daemon's own work.
fn unprivileged_fd_budget(kept: usize) -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let open = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count());
    let budget = fd_budget_of(limit, open, kept);
    log::info!(
        "descriptors: limit {limit}, {open} open, {kept} kept for the portserver endpoint, {budget} for unprivileged users' connections, parked descriptors and portserver holders, the rest kept for root"
    );
    budget
}

/// `unprivileged_fd_budget` without the system calls.
fn fd_budget_of(limit: usize, open: usize, kept: usize) -> usize {
    let reserve = (limit / 8).max(64);
    limit
        .saturating_sub(open)
        .saturating_sub(kept)
        .saturating_sub(reserve)
}

#[cfg(test)]
mod tests;
