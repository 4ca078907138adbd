//! The process-global state behind the C interface:
//!
//! - **sessions**: for each socket that acquired runtime reservations, its
//!   own daemon connection (one portres session per acquiring socket) and
//!   the tokens acquired on it. Closing the socket with `closesocket` (or
//!   releasing its last reservation) ends the session, and with it the
//!   reservations: Windows' "a runtime reservation lives as long as the
//!   socket it was acquired on".
//! - **associations**: socket → token, set by `SIO_ASSOCIATE_PORT_RESERVATION`
//!   and consumed by the next `bind()` to port 0 (or implicit bind:
//!   `connect`, `listen`, a UDP send).
//! - **the default client**: one shared connection for everything else
//!   (persistent reservations, binding into tokens this process did not
//!   acquire, e.g. under `portres exec`), made on first use and remade when
//!   the daemon went away.
//!
//! Entries are keyed by descriptor number and remember the socket's
//! identity (`SockId`): an entry whose descriptor now refers to something
//! else (the program used plain `close()`) is stale and is dropped — its
//! session ended — the next time libportres looks at it or sweeps.
//! After `fork()`, the child forgets the parent's sessions (they stay the
//! parent's) on its first call.
//!
//! Locks: `OPS` serialises the operations that create or end sessions
//! (held across their daemon calls); `STATE` guards the maps and is only
//! held for map updates, never across a daemon call. Order: `OPS`, then
//! `STATE`.

use std::collections::BTreeMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use portres_client::{Client, Error, ErrorCode, Protocol, Token};

use crate::sock::{SockId, sock_id};

/// A socket's runtime session.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) id: SockId,
    pub(crate) client: Client,
    pub(crate) held: Vec<(Token, Protocol)>,
}

/// A socket's association with a reservation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Assoc {
    pub(crate) id: SockId,
    pub(crate) token: Token,
}

#[derive(Debug)]
pub(crate) struct State {
    pid: i32,
    pub(crate) sessions: BTreeMap<c_int, Session>,
    assocs: BTreeMap<c_int, Assoc>,
    default: Option<Client>,
    /// `WSAStartup` calls not yet matched by `WSACleanup`.
    pub(crate) startups: u32,
}

static STATE: Mutex<State> = Mutex::new(State {
    pid: 0,
    sessions: BTreeMap::new(),
    assocs: BTreeMap::new(),
    default: None,
    startups: 0,
});

/// How many associations exist: lets `bind` skip the lock when none does.
static ASSOCIATIONS: AtomicUsize = AtomicUsize::new(0);

static OPS: Mutex<()> = Mutex::new(());

/// Serialises session-changing operations.
pub(crate) fn ops() -> MutexGuard<'static, ()> {
    OPS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The state, with the parent's sessions forgotten if this is a forked
/// child's first look.
pub(crate) fn state() -> MutexGuard<'static, State> {
    let mut st = STATE.lock().unwrap_or_else(|e| e.into_inner());
    let pid = rustix::process::getpid().as_raw_nonzero().get();
    if st.pid != pid {
        if st.pid != 0 {
            // A forked child: the sessions and the default connection are
            // the parent's. Dropping our copies of their descriptors does
            // not end them (the parent still holds its copies).
            st.sessions.clear();
            st.default = None;
        }
        st.pid = pid;
    }
    st
}

/// Whether any socket is associated (a lock-free hint for `bind`).
pub(crate) fn any_association() -> bool {
    ASSOCIATIONS.load(Ordering::Acquire) != 0
}

impl State {
    fn sync_count(&self) {
        ASSOCIATIONS.store(self.assocs.len(), Ordering::Release);
    }

    /// Associates socket `fd` with `token` (replacing any earlier one).
    pub(crate) fn associate(&mut self, fd: c_int, id: SockId, token: Token) {
        self.assocs.insert(fd, Assoc { id, token });
        self.sync_count();
    }

    /// The live association of `fd`, dropping a stale one.
    pub(crate) fn association(&mut self, fd: c_int) -> Option<Assoc> {
        let a = *self.assocs.get(&fd)?;
        if sock_id(fd) == Some(a.id) {
            Some(a)
        } else {
            self.assocs.remove(&fd);
            self.sync_count();
            None
        }
    }

    /// Forgets the association of `fd` (consumed by a bind, or the socket
    /// is being closed).
    pub(crate) fn dissociate(&mut self, fd: c_int) {
        if self.assocs.remove(&fd).is_some() {
            self.sync_count();
        }
    }

    /// The session holding runtime reservation `token`, if this process
    /// acquired it.
    pub(crate) fn holder_of(&self, token: Token) -> Option<(c_int, &Session)> {
        self.sessions
            .iter()
            .find(|(_, s)| s.held.iter().any(|(t, _)| *t == token))
            .map(|(fd, s)| (*fd, s))
    }

    /// Removes and returns every session and association whose descriptor
    /// no longer refers to the socket it was made for.
    pub(crate) fn take_stale(&mut self) -> Vec<Session> {
        let stale: Vec<c_int> = self
            .sessions
            .iter()
            .filter(|(fd, s)| sock_id(**fd) != Some(s.id))
            .map(|(fd, _)| *fd)
            .collect();
        let gone = stale
            .into_iter()
            .filter_map(|fd| self.sessions.remove(&fd))
            .collect();
        let before = self.assocs.len();
        self.assocs.retain(|fd, a| sock_id(*fd) == Some(a.id));
        if self.assocs.len() != before {
            self.sync_count();
        }
        gone
    }

    /// Removes and returns everything (final `WSACleanup`).
    pub(crate) fn take_all(&mut self) -> Vec<Session> {
        self.assocs.clear();
        self.sync_count();
        self.default = None;
        std::mem::take(&mut self.sessions).into_values().collect()
    }
}

/// Ends sessions taken out of the state: releases each reservation
/// explicitly (so it is free when this returns, not merely soon), then
/// closes the connection. Errors are ignored: closing the connection ends
/// the session in any case.
pub(crate) fn end_sessions(sessions: Vec<Session>) {
    for s in sessions {
        for (token, _) in &s.held {
            let _ = s.client.release(*token);
        }
        drop(s.client);
    }
}

/// Drops the stale entries (sockets closed without `closesocket`), ending
/// their sessions.
pub(crate) fn sweep() {
    let stale = state().take_stale();
    end_sessions(stale);
}

fn cached_default() -> Option<Client> {
    state().default.clone()
}

fn connect_default() -> Result<Client, Error> {
    let c = Client::connect()?;
    let mut st = state();
    Ok(st.default.get_or_insert(c).clone())
}

/// Runs `f` on the default client, connecting first if needed. If a cached
/// connection turns out dead (the daemon restarted), reconnects and tries
/// once more.
pub(crate) fn with_default<T>(f: impl Fn(&Client) -> Result<T, Error>) -> Result<T, Error> {
    if let Some(c) = cached_default() {
        match f(&c) {
            // Forget it (another thread may have replaced it meanwhile:
            // then we only cost it a reconnection).
            Err(e) if e.code == ErrorCode::DaemonUnavailable => state().default = None,
            r => return r,
        }
    }
    let c = connect_default()?;
    let r = f(&c);
    if matches!(&r, Err(e) if e.code == ErrorCode::DaemonUnavailable) {
        state().default = None;
    }
    r
}

/// A new connection to the same daemon as the default client: the session
/// of one acquiring socket. Checked as the default one was (a user-mode
/// socket must still be the caller's own daemon's).
pub(crate) fn new_session_client() -> Result<Client, Error> {
    with_default(Client::connect_again)
}
