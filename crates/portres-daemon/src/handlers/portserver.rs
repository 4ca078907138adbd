//! The portserver endpoint's one request (portpicker's protocol, served by
//! `worker::portserver`): a port free on both TCP and UDP, reserved for a
//! process named by pid until that process exits.
//!
//! Who may name a process: a process whose real or effective uid is the
//! peer's (the peer itself, unless its pid now belongs to someone else),
//! or any process when the peer is root
//! (portserver.py believes any pid; portres does not). A peer in another
//! pid namespace that names itself by its own namespace's pid is
//! understood (its `NSpid`); other pids it sends are taken as pids of the
//! daemon's namespace, and refused unless they pass the check above.
//!
//! The ports go on the process's holder session (`state::holders`): both
//! reservations, TCP and UDP, one port each at the same number, first fit
//! in the dynamic range like a wildcard Acquire, probed for sockets outside
//! the lock the same way, in the kernel's reserved list before the answer.

use std::collections::HashMap;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use portres_core::{
    Block, Caller, Error, ErrorCode, Holder, Protocol, Reservation, SessionId, Token,
};

use super::runtime::{EXTRA_PROBES_PER_ACQUIRE, probe_block};
use crate::kernel::Kernel;
use crate::state::{State, lock};

/// The label of every reservation the endpoint makes (`portres list`
/// shows it; the holder says `"origin":"portserver"` too).
pub(crate) const PORTSERVER_LABEL: &str = "portserver";

/// What a portserver request came to (`serve`, for tests; the worker
/// calls `serve_recording`).
#[cfg(test)]
pub(crate) struct Served {
    /// The port, or why none (the client is told nothing either way but
    /// the port).
    pub(crate) result: Result<u16, Error>,
    /// A new holder (a pidfd the daemon keeps) exists because of this
    /// request: it stays charged to the peer until the front reaps it.
    pub(crate) new_holder: bool,
}

/// How many processes an `Endpoint` remembers (a pidfd each); past that
/// it forgets them all and starts again.
pub(crate) const PROCESSES_REMEMBERED: usize = 64;

/// What one worker keeps between portserver requests: the kernel, and a
/// pidfd of each process recently seen (a peer, or a process named), with
/// whether it is in the daemon's pid namespace once asked. Each request
/// comes on a new connection, but mostly from the same few processes
/// naming the same few: a kept pidfd spares opening (and closing) one per
/// request, and the namespace answer a walk of `/proc/<pid>/ns/pid` (a
/// `stat` that was ~9% of the daemon's time per request). A process never
/// changes its own pid namespace (`unshare` and `setns` move only its
/// children), so the answer holds as long as that process runs, which its
/// pidfd tells in one `poll`. At most `PROCESSES_REMEMBERED` pidfds per
/// worker, whoever connects.
pub(crate) struct Endpoint {
    kernel: Arc<dyn Kernel>,
    processes: HashMap<i32, Known>,
}

/// A process an `Endpoint` remembers.
struct Known {
    pidfd: OwnedFd,
    /// Whether it is in the daemon's pid namespace, once asked.
    own_namespace: Option<bool>,
}

impl Endpoint {
    pub(crate) fn new(kernel: Arc<dyn Kernel>) -> Endpoint {
        Endpoint {
            kernel,
            processes: HashMap::new(),
        }
    }

    /// The remembered pidfd of `pid`, or a new one (remembered): of the
    /// process that has that pid now, or of one that had it and has
    /// exited since (its caller checks it runs, after reading what it
    /// needs).
    fn pidfd(&mut self, pid: i32) -> std::io::Result<&Known> {
        if !self.processes.contains_key(&pid) {
            let pidfd = self.kernel.open_pidfd(pid)?;
            if self.processes.len() >= PROCESSES_REMEMBERED {
                self.processes.clear();
            }
            self.processes.insert(
                pid,
                Known {
                    pidfd,
                    own_namespace: None,
                },
            );
        }
        Ok(&self.processes[&pid])
    }

    /// Whether peer process `pid` is surely in the daemon's pid namespace.
    fn peer_in_own_namespace(&mut self, pid: i32) -> bool {
        let kernel = self.kernel.clone();
        if let Some(known) = self.processes.get(&pid) {
            if kernel.pidfd_exited(known.pidfd.as_fd()) {
                self.processes.remove(&pid);
            } else if let Some(own) = known.own_namespace {
                return own;
            }
        }
        // pidfd first, namespace second, still running third (as for the
        // named process): then the answer is that process's.
        if self.pidfd(pid).is_err() {
            return kernel.in_own_pid_namespace(pid);
        }
        let own = kernel.in_own_pid_namespace(pid);
        if let Some(known) = self.processes.get_mut(&pid) {
            if kernel.pidfd_exited(known.pidfd.as_fd()) {
                self.processes.remove(&pid);
            } else {
                known.own_namespace = Some(own);
            }
        }
        own
    }

    /// A pidfd of process `pid` and its real and effective uid, read from
    /// it while it ran: pidfd first, identity second, still running third
    /// (a pid is only reused after its process exited, which the pidfd
    /// shows). A remembered pidfd whose process has exited is forgotten and
    /// the pid asked for again, once.
    fn named(&mut self, pid: i32) -> std::io::Result<(BorrowedFd<'_>, (u32, u32))> {
        let kernel = self.kernel.clone();
        for _ in 0..2 {
            let known = self.pidfd(pid)?;
            let uids = kernel.process_uids(pid, known.pidfd.as_fd());
            if let Ok(uids) = uids
                && !kernel.pidfd_exited(known.pidfd.as_fd())
            {
                return Ok((self.processes[&pid].pidfd.as_fd(), uids));
            }
            self.processes.remove(&pid);
        }
        Err(std::io::Error::from_raw_os_error(libc::ESRCH))
    }
}

/// Serves one request from `peer` naming process `pid`. `may_hold`: a new
/// holder (a pidfd more) may be made; if not, only a process that has a
/// live holder is served (QuotaExceeded otherwise).
#[cfg(test)]
pub(crate) fn serve(
    shared: &Mutex<State>,
    endpoint: &mut Endpoint,
    peer: &Caller,
    pid: i32,
    may_hold: bool,
) -> Served {
    let mut new_holder = false;
    let result = serve_recording(shared, endpoint, peer, pid, may_hold, &mut new_holder);
    Served { result, new_holder }
}

/// `serve`, telling through `new_holder` whether a new holder exists
/// because of this request as soon as it does: also when the request
/// unwinds (a bug) after making one, which then stays until its process
/// exits and is reaped, and must stay charged until then.
pub(crate) fn serve_recording(
    shared: &Mutex<State>,
    endpoint: &mut Endpoint,
    peer: &Caller,
    pid: i32,
    may_hold: bool,
    new_holder: &mut bool,
) -> Result<u16, Error> {
    let kernel = endpoint.kernel.clone();
    // First: the peer naming itself in its own pid namespace (a test
    // runner started as a container's first process sends "1"). A peer in
    // the daemon's pid namespace is its own ns_pid, the common case, known
    // without reading its status.
    let pid = if pid > 0
        && pid != peer.pid
        && peer.pid > 0
        && !endpoint.peer_in_own_namespace(peer.pid)
        && kernel
            .process_ids(peer.pid)
            .is_ok_and(|ids| ids.ns_pid == pid && ids.ns_pid != peer.pid)
    {
        peer.pid
    } else {
        // portserver.py's rule: 0 and negative pids name nobody; pid 1 is
        // what a process reparented to init would send instead of its
        // parent.
        if pid <= 1 {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!("pid {pid} names no process a port can belong to"),
            ));
        }
        pid
    };
    let gone = || Error::new(ErrorCode::NotFound, format!("no process {pid}"));
    let (pidfd, (real_uid, effective_uid)) = endpoint.named(pid).map_err(|_| gone())?;
    // The peer's own pid is checked like any other: `SO_PEERCRED`'s pid
    // is the connecting process's, and that process may have exited and
    // its pid gone to another user's process before the line was sent
    // (the socket lives on in a child). A process still running as the
    // peer's uid passes anyway.
    let allowed = peer.uid == 0 || real_uid == peer.uid || effective_uid == peer.uid;
    if !allowed {
        return Err(Error::new(
            ErrorCode::AccessDenied,
            format!(
                "uid {} may not reserve ports for process {pid} (uid {})",
                peer.uid, real_uid
            ),
        ));
    }
    let holder_caller = Caller {
        uid: peer.uid,
        gid: peer.gid,
        groups: peer.groups.clone(),
        pid,
        admin: peer.admin,
    };
    // The holder and the first candidate pair under one lock. The quota
    // first: a user at its quota would otherwise have a holder made (a
    // pidfd opened and watched) and dropped again, and the table searched
    // for what it holds, at every request.
    let (session, first) = {
        let mut state = lock(shared);
        state.check_pair_quota(&holder_caller)?;
        let (session, created) = state.holder_for(holder_caller, peer.uid, pidfd, may_hold)?;
        *new_holder = created;
        (session, state.reserve_pair_candidate(session, 0))
    };
    let created = *new_holder;
    let result = reserve_pair(shared, session, first);
    if result.is_err() && created && lock(shared).drop_holder_if_empty(session) {
        *new_holder = false;
    }
    result
}

/// Reserves one port on both protocols for holder `session`: a candidate
/// pair goes in the table under the lock, is probed outside it, and is
/// then covered in the kernel, or given back and the search resumed past
/// the busy port. `first`: the first candidate, from port 0 (taken under
/// the lock that found the holder).
fn reserve_pair(
    shared: &Mutex<State>,
    session: SessionId,
    first: Result<Candidate, Error>,
) -> Result<u16, Error> {
    let mut probes_left = EXTRA_PROBES_PER_ACQUIRE + 2;
    let mut candidate = Some(first);
    let mut from = 0;
    loop {
        let (tokens, port, kernel) = match candidate.take() {
            Some(first) => first?,
            None => lock(shared).reserve_pair_candidate(session, from)?,
        };
        let block = Block::new(port as u32, 1)?;
        let mut busy = None;
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            match probe_block(&*kernel, protocol, block, &mut probes_left) {
                Ok(None) => {}
                Ok(Some(p)) => {
                    busy = Some(p);
                    break;
                }
                Err(e) => {
                    lock(shared).withdraw_pair(tokens);
                    return Err(e);
                }
            }
        }
        let mut state = lock(shared);
        match busy {
            None => return state.finish_pair(tokens, block).map(|()| port),
            Some(p) => {
                state.withdraw_pair(tokens);
                from = p.checked_add(1).ok_or_else(|| {
                    Error::new(
                        ErrorCode::NoFreeBlock,
                        "no port free on both TCP and UDP: the last port of the range is in use",
                    )
                })?;
            }
        }
    }
}

/// A candidate pair: its TCP and UDP tokens, the port, the kernel to probe
/// it with.
type Candidate = ([Token; 2], u16, Arc<dyn Kernel>);

impl State {
    /// Under the lock: checks the quota (two ports: one TCP, one UDP) and
    /// puts the lowest port at or above `from` free on both protocols in
    /// the table for `session`, once per protocol.
    fn reserve_pair_candidate(
        &mut self,
        session: SessionId,
        from: u16,
    ) -> Result<Candidate, Error> {
        let caller = &self.session(session)?.caller;
        let (uid, pid) = (caller.uid, caller.pid);
        self.check_pair_quota(caller)?;
        let range = self.dynamic_range().map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("reading ip_local_port_range: {e}"),
            )
        })?;
        let none = || {
            Error::new(
                ErrorCode::NoFreeBlock,
                format!(
                    "no port free on both TCP and UDP in the dynamic range {}-{}",
                    range.0, range.1
                ),
            )
        };
        // Alternate between the protocols until both agree: each step only
        // moves up, so this ends.
        let mut at = from;
        let port = loop {
            let tcp = self
                .find_free_block(Protocol::Tcp, 1, range, at)
                .ok_or_else(none)?;
            let udp = self
                .find_free_block(Protocol::Udp, 1, range, tcp.start())
                .ok_or_else(none)?;
            if udp.start() == tcp.start() {
                break tcp.start();
            }
            at = udp.start();
        };
        let block = Block::new(port as u32, 1)?;
        let holder = Holder { session, uid, pid };
        let tcp = self.reserve_one(Protocol::Tcp, block, holder)?;
        let udp = match self.reserve_one(Protocol::Udp, block, holder) {
            Ok(t) => t,
            Err(e) => {
                self.withdraw(tcp);
                return Err(e);
            }
        };
        Ok(([tcp, udp], port, self.kernel()))
    }

    /// Whether `caller`'s quota has room for a pair more (one TCP port, one
    /// UDP port); QuotaExceeded if not.
    fn check_pair_quota(&self, caller: &Caller) -> Result<(), Error> {
        if !caller.quota_applies() {
            return Ok(());
        }
        let uid = caller.uid;
        let held = self.table().runtime_ports_of(uid);
        let quota = self.config().quota;
        if held as u64 + 2 > quota as u64 {
            return Err(Error::new(
                ErrorCode::QuotaExceeded,
                format!(
                    "uid {uid} holds {held} runtime port(s); a portserver port (TCP and UDP) would pass the quota of {quota}"
                ),
            ));
        }
        Ok(())
    }

    /// One reservation of the pair, labelled as the endpoint's.
    fn reserve_one(
        &mut self,
        protocol: Protocol,
        block: Block,
        holder: Holder,
    ) -> Result<Token, Error> {
        let token = self.new_token()?;
        let mut res = Reservation::runtime(token, protocol, block, holder);
        res.label = Some(PORTSERVER_LABEL.to_string());
        self.reserve(res)?;
        Ok(token)
    }

    /// Takes a refused candidate pair back.
    fn withdraw_pair(&mut self, tokens: [Token; 2]) {
        for t in tokens {
            self.withdraw(t);
        }
    }

    /// Under the lock, after the probe: the pair goes into the kernel's
    /// list before the answer (unless its holder ended meanwhile).
    fn finish_pair(&mut self, tokens: [Token; 2], block: Block) -> Result<(), Error> {
        if !tokens.iter().all(|&t| self.table().contains_token(t)) {
            self.withdraw_pair(tokens);
            return Err(Error::new(
                ErrorCode::Internal,
                "the process exited during the request",
            ));
        }
        if let Err(e) = self.cover(block) {
            self.withdraw_pair(tokens);
            return Err(e);
        }
        Ok(())
    }
}
