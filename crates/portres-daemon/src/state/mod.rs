//! The state owner: the one place that decides. It holds the reservation
//! table, the sessions, the durable store and the kernel (the `Kernel`
//! interface, and the reserved-ports list through `KernelMirror`), and
//! keeps them consistent: a request either changes all of them (store
//! first for persistent changes, kernel list before the answer) or none.
//!
//! The transport (`front`, `worker`) decodes requests and calls in here
//! under one mutex (`lock`); handlers live in `handlers/`, one file per
//! request family, and reach the state only through the methods here.
//! Slow kernel calls that need no state (the in-use probe, binding a
//! client's socket) run outside the mutex, through `State::kernel`: see
//! `handlers::runtime`.
//!
//! Split: `open` (building the state: baseline, restored reservations),
//! `holders` (sessions that belong to a process named by pid, for the
//! portserver endpoint, watched through pidfds),
//! `checks` (request checks that need no state, tokens), `sync` (the
//! front's side of the kernel mirror: flush, check, shutdown), `declared`
//! (applying the portres.d files).

mod checks;
mod declared;
mod enforce;
mod holders;
mod open;
mod sync;

pub(crate) use declared::{Access, apply_declared};

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use portres_core::{
    Block, Caller, Error, ErrorCode, Kind, PortSet, Reservation, SessionId, Table, Token,
};
use portres_kernel::capability::FileId;
use portres_proto::{HolderInfo, HolderOrigin, OwnerInfo, ReservationInfo};
use portres_store::Store;

use crate::config::{Config, Mode};
use crate::kernel::enforce::CgroupRef;
use crate::kernel::{Enforcer, Kernel, KernelMirror};

#[cfg(test)]
pub use checks::MAX_LABEL_BYTES;
use checks::TokenPool;
pub(crate) use checks::{check_label, check_not_in_use, first_port_in_use};

/// Locks the state. A handler that panicked while holding the lock leaves
/// the mutex poisoned; the daemon keeps serving (its invariants are
/// restored by the table's own checks, and one bad request must not stop
/// everyone), so poison is ignored.
pub fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where a session comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A client connection: the session ends when the connection does.
    Client,
    /// The portserver endpoint: the session holds ports for process `pid`
    /// (of the daemon's pid namespace) and ends when it exits; `uid` is the
    /// uid of the peer that asked (the process's own uid, or root's). Strict
    /// mode lets `uid` bind these ports.
    Portserver {
        /// The process the ports belong to.
        pid: i32,
        /// The uid that asked for them.
        uid: u32,
    },
}

/// One client connection, or one process's portserver ports.
#[derive(Debug)]
pub struct Session {
    /// Who is on the other end, per the kernel (for a portserver holder:
    /// the asking peer's credentials with the named process's pid).
    pub caller: Caller,
    /// Where it comes from.
    pub origin: Origin,
    /// A portserver holder's pidfd (registered in `holders`' watch).
    pub pidfd: Option<OwnedFd>,
    /// The capability handed out for this session, if asked for.
    pub capability: Option<(OwnedFd, FileId)>,
    /// This session's id followed by every session whose capability this
    /// connection presented (their runtime reservations are usable here).
    pub speaks_for: Vec<SessionId>,
    /// The cgroup this session's exec command runs in (strict mode:
    /// its processes may bind the session's runtime blocks).
    pub cgroup: Option<CgroupRef>,
}

/// The daemon's whole state. Not thread-safe by itself: the daemon keeps it
/// behind one mutex, locked with `lock`.
pub struct State {
    config: Config,
    table: Table,
    store: Store,
    kernel: Arc<dyn Kernel>,
    /// The kernel's reserved-ports list (inert when kernel sync is off).
    mirror: KernelMirror,
    /// Strict mode's bind guard (`NoEnforcer` when off).
    enforcer: Box<dyn Enforcer>,
    baseline: PortSet,
    /// Where the baseline came from (empty when kernel sync is off).
    baseline_origin: String,
    sessions: portres_core::FastMap<SessionId, Session>,
    capabilities: HashMap<FileId, SessionId>,
    next_session: u64,
    netns_cookie: u64,
    started: Instant,
    tokens: TokenPool,
    /// ip_local_port_range and when it was read.
    range_cache: Option<(Instant, (u16, u16))>,
    /// What the last reading of the portres.d files could not apply.
    declared_problems: Vec<portres_proto::DeclaredProblem>,
    /// The portserver endpoint's per-process sessions.
    holders: holders::Holders,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("reservations", &self.table.len())
            .field("sessions", &self.sessions.len())
            .field("kernel_sync", &self.mirror.is_on())
            .finish()
    }
}

impl State {
    /// A fresh random token no live reservation has.
    pub(crate) fn new_token(&mut self) -> Result<Token, Error> {
        loop {
            if let Some(t) = Token::new(self.tokens.next()?)
                && !self.table.contains_token(t)
            {
                return Ok(t);
            }
        }
    }

    /// Registers a new connection.
    pub fn open_session(&mut self, caller: Caller) -> SessionId {
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions.insert(
            id,
            Session {
                caller,
                origin: Origin::Client,
                pidfd: None,
                capability: None,
                speaks_for: vec![id],
                cgroup: None,
            },
        );
        id
    }

    /// Ends a connection: its runtime reservations go, and the kernel is
    /// told before this returns.
    pub fn close_session(&mut self, id: SessionId) {
        if let Some(session) = self.sessions.remove(&id) {
            if let Some((_, file_id)) = session.capability {
                self.capabilities.remove(&file_id);
            }
            if session.cgroup.is_some() {
                self.enforcer.remove_session_cgroup(id.0);
            }
            if let Origin::Portserver { pid, uid } = session.origin {
                self.holders.forget(pid, uid, id);
            }
        }
        let gone = self.table.remove_session(id);
        self.unguard_all(&gone);
        if !gone.is_empty() {
            log::debug!(
                "session {} closed, released {} reservation(s)",
                id.0,
                gone.len()
            );
            self.mirror.release(gone.iter().map(|r| r.block));
        }
    }

    /// Number of open sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Whether `caller` is an administrator under this configuration.
    pub fn is_admin(config: &Config, uid: u32, gid: u32, groups: &[u32]) -> bool {
        uid == 0
            || (config.mode == Mode::User && uid == config.daemon_uid)
            || config
                .admin_gid
                .is_some_and(|g| gid == g || groups.contains(&g))
    }

    pub(crate) fn session(&self, id: SessionId) -> Result<&Session, Error> {
        self.sessions
            .get(&id)
            .ok_or_else(|| Error::new(ErrorCode::Internal, "unknown session"))
    }

    pub(crate) fn session_mut(&mut self, id: SessionId) -> Result<&mut Session, Error> {
        self.sessions
            .get_mut(&id)
            .ok_or_else(|| Error::new(ErrorCode::Internal, "unknown session"))
    }

    /// Records `session`'s new capability, known by `id`.
    pub(crate) fn register_capability(&mut self, id: FileId, session: SessionId) {
        self.capabilities.insert(id, session);
    }

    /// The live session whose capability has identity `id`.
    pub(crate) fn capability_owner(&self, id: &FileId) -> Option<SessionId> {
        self.capabilities.get(id).copied()
    }

    /// The configuration it runs with.
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// The reservations (read only: changes go through `reserve`, `end`,
    /// `withdraw`, which keep the kernel in step).
    pub(crate) fn table(&self) -> &Table {
        &self.table
    }

    /// The durable store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub(crate) fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// The kernel, to call outside the lock.
    pub(crate) fn kernel(&self) -> Arc<dyn Kernel> {
        self.kernel.clone()
    }

    /// The admin's own reserved ports, never handed out.
    pub(crate) fn baseline(&self) -> &PortSet {
        &self.baseline
    }

    /// Where the baseline came from.
    pub(crate) fn baseline_origin(&self) -> &str {
        &self.baseline_origin
    }

    /// When the state was built.
    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// The daemon's network namespace cookie.
    pub(crate) fn netns_cookie(&self) -> u64 {
        self.netns_cookie
    }

    /// What the kernel's reserved-ports value must be now.
    pub(crate) fn desired_kernel_value(&self, persistent_only: bool) -> PortSet {
        self.baseline
            .union(&self.table.reserved_ports(persistent_only))
    }

    /// Puts `res` in the table and guards its block (strict mode) before
    /// anything can answer with it; the kernel's list learns of it by
    /// `cover`. A refused guard takes it out again: nothing changed.
    pub(crate) fn reserve(&mut self, res: Reservation) -> Result<(), Error> {
        let token = res.token;
        self.table.insert(res)?;
        let res = self.table.get(token).expect("just inserted");
        if let Err(e) = self.guard(res) {
            self.table.remove(token);
            return Err(e);
        }
        Ok(())
    }

    /// Before answering a request that reserved `block`: the kernel
    /// reserves it (see `KernelMirror::cover`).
    pub(crate) fn cover(&mut self, block: Block) -> Result<(), Error> {
        let (table, baseline) = (&self.table, &self.baseline);
        self.mirror
            .cover(block, || baseline.union(&table.reserved_ports(false)))
            .map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("could not update ip_local_reserved_ports: {e}"),
                )
            })
    }

    /// Ends a reservation: out of the table, and out of the kernel after
    /// the quiet window.
    pub(crate) fn end(&mut self, token: Token) -> Option<Reservation> {
        let gone = self.table.remove(token)?;
        self.unguard_all(std::slice::from_ref(&gone));
        self.mirror.release([gone.block]);
        Some(gone)
    }

    /// Takes back a reservation that was never answered (a refused
    /// request's candidate): out of the table, and out of the kernel should
    /// a flush have written it meanwhile.
    pub(crate) fn withdraw(&mut self, token: Token) {
        if let Some(gone) = self.table.remove(token) {
            self.unguard_all(std::slice::from_ref(&gone));
            self.mirror.forget_candidate(gone.block);
        }
    }

    /// The first free block of `count` ports at or above `from` in
    /// `range`, around the baseline (see `Table::find_free_block`).
    pub(crate) fn find_free_block(
        &mut self,
        protocol: portres_core::Protocol,
        count: u16,
        range: (u16, u16),
        from: u16,
    ) -> Option<Block> {
        self.table
            .find_free_block(protocol, count, range, &self.baseline, from, |_| false)
    }

    /// Bind's ports to try in `token`'s block, the cursor already moved
    /// past the first (`Reservation::claim_bind_order`).
    pub(crate) fn claim_bind_order(&mut self, token: Token) -> Option<portres_core::BindOrder> {
        self.table.get_mut(token).map(|res| res.claim_bind_order())
    }

    /// A claimed bind into `token`'s block that tried `first` first got
    /// `port` (`Reservation::bound`).
    pub(crate) fn bound(&mut self, token: Token, first: u16, port: u16) {
        if let Some(res) = self.table.get_mut(token) {
            res.bound(first, port);
        }
    }

    /// The kernel's dynamic port range, re-read at most once a second (it
    /// costs a file read; admins change it rarely).
    pub(crate) fn dynamic_range(&mut self) -> std::io::Result<(u16, u16)> {
        if let Some((at, range)) = self.range_cache
            && at.elapsed() < std::time::Duration::from_secs(1)
        {
            return Ok(range);
        }
        let range = self.kernel.local_port_range()?;
        self.range_cache = Some((Instant::now(), range));
        Ok(range)
    }

    /// The wire form of a reservation, with the token only if `viewer` may
    /// use it.
    pub(crate) fn describe(&self, res: &Reservation, viewer: SessionId) -> ReservationInfo {
        let show_token = self
            .sessions
            .get(&viewer)
            .is_some_and(|s| res.usable_by(&s.caller, &s.speaks_for));
        ReservationInfo {
            protocol: res.protocol,
            start: res.block.start(),
            count: res.block.count(),
            kind: res.kind,
            token: show_token.then_some(res.token),
            owner: res.owner.map(OwnerInfo::from),
            holder: res.holder.map(|h| HolderInfo {
                uid: h.uid,
                pid: h.pid,
                origin: self.sessions.get(&h.session).and_then(|s| match s.origin {
                    Origin::Client => None,
                    Origin::Portserver { .. } => Some(HolderOrigin::Portserver),
                }),
            }),
            label: res.label.clone(),
            in_use: None,
            source: res.source.clone(),
        }
    }

    /// Checks that no port of the block is in use right now.
    pub(crate) fn check_not_in_use(
        &self,
        protocol: portres_core::Protocol,
        block: Block,
    ) -> Result<(), Error> {
        check_not_in_use(&*self.kernel, protocol, block)
    }

    /// Number of reservations of each kind.
    pub fn counts(&self) -> (usize, usize) {
        let persistent = self
            .table
            .iter()
            .filter(|r| r.kind == Kind::Persistent)
            .count();
        (self.table.len() - persistent, persistent)
    }
}
