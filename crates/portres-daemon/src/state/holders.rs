//! Pid holders: sessions that belong to a process named by pid (the
//! portserver endpoint's requests, `handlers::portserver`) rather than to a
//! connection. Each holds a pidfd of its process, registered in one epoll
//! set (`Holders::watch`) that the front waits on; when the process exits,
//! the front calls `reap_exited_holders`, which ends the session exactly as
//! a connection's end does (its runtime reservations go, the kernel list
//! follows). One holder per (process, asking uid): a process asking many
//! times holds one pidfd for all its ports.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use portres_core::{Caller, Error, ErrorCode, SessionId};
use rustix::event::epoll;

use super::{Origin, Session, State};

/// The holder sessions, by process and asking uid, and the epoll set of
/// their pidfds (keyed by session id; a pidfd leaves the set by itself when
/// its session, the only owner of the descriptor, is dropped).
pub(crate) struct Holders {
    watch: OwnedFd,
    by_pid: HashMap<(i32, u32), SessionId>,
}

impl Holders {
    pub(super) fn new() -> io::Result<Holders> {
        Ok(Holders {
            watch: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            by_pid: HashMap::new(),
        })
    }

    /// `id` (process `pid`, asked for by `uid`) ended.
    pub(super) fn forget(&mut self, pid: i32, uid: u32, id: SessionId) {
        if self.by_pid.get(&(pid, uid)) == Some(&id) {
            self.by_pid.remove(&(pid, uid));
        }
    }
}

impl State {
    /// The epoll set of the holders' pidfds, readable when a holder's
    /// process has exited: a duplicate, for the front's loop.
    pub fn holder_watch(&self) -> io::Result<OwnedFd> {
        self.holders.watch.try_clone()
    }

    /// The live holder of process `caller.pid` for `uid`, or a new one
    /// holding a pidfd of its own for that process. `running`: a pidfd of
    /// that process, checked to be running by the caller (a portserver
    /// endpoint's, which it keeps: not a duplicate of it, since a holder's
    /// pidfd leaves the watch only once no descriptor of it is left open).
    /// `may_create`: false when the asker is at its cap of holders
    /// (QuotaExceeded if a new one would be needed). `true` with a new one (its pidfd is the daemon's to
    /// account for until it is reaped or dropped).
    pub(crate) fn holder_for(
        &mut self,
        caller: Caller,
        uid: u32,
        running: BorrowedFd<'_>,
        may_create: bool,
    ) -> Result<(SessionId, bool), Error> {
        let pid = caller.pid;
        if let Some(&id) = self.holders.by_pid.get(&(pid, uid))
            && let Some(session) = self.sessions.get(&id)
            && let Some(old) = &session.pidfd
            && !self.kernel.pidfd_exited(old.as_fd())
        {
            return Ok((id, false));
        }
        if !may_create {
            return Err(Error::new(
                ErrorCode::QuotaExceeded,
                format!("uid {uid} may hold portserver ports for no more processes"),
            ));
        }
        // A new pidfd for pid `pid`, then `running` still running: the
        // pid was not reused in between, so both stand for one process.
        let gone = || Error::new(ErrorCode::NotFound, format!("process {pid} exited"));
        let pidfd = self.kernel.open_pidfd(pid).map_err(|_| gone())?;
        if self.kernel.pidfd_exited(running) {
            return Err(gone());
        }
        let id = SessionId(self.next_session);
        epoll::add(
            &self.holders.watch,
            &pidfd,
            epoll::EventData::new_u64(id.0),
            epoll::EventFlags::IN,
        )
        .map_err(|e| {
            Error::new(
                ErrorCode::Internal,
                format!("cannot watch the process's pidfd: {e}"),
            )
        })?;
        self.next_session += 1;
        self.sessions.insert(
            id,
            Session {
                caller,
                origin: Origin::Portserver { pid, uid },
                pidfd: Some(pidfd),
                capability: None,
                speaks_for: vec![id],
                cgroup: None,
            },
        );
        // An older holder of a process with this pid that exited stays
        // until it is reaped; this one replaces it here.
        self.holders.by_pid.insert((pid, uid), id);
        Ok((id, true))
    }

    /// Ends holder `id` if it holds nothing (a request that made it was
    /// refused, and no other request put a reservation on it meanwhile);
    /// `true` if it was ended.
    pub(crate) fn drop_holder_if_empty(&mut self, id: SessionId) -> bool {
        if self.table.session_holds_any(id) || !self.sessions.contains_key(&id) {
            return false;
        }
        self.close_session(id);
        true
    }

    /// Ends the holders whose processes have exited (at most `max` per
    /// call; the watch stays readable while more are left); returns the
    /// asking uid of each one ended, for `Limits::pidfd_released`.
    pub fn reap_exited_holders(&mut self, max: usize) -> Vec<u32> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(max.max(1));
        let zero = crate::events::timespec(std::time::Duration::ZERO);
        if epoll::wait(
            &self.holders.watch,
            rustix::buffer::spare_capacity(&mut events),
            Some(&zero),
        )
        .is_err()
        {
            return Vec::new();
        }
        let mut uids = Vec::with_capacity(events.len());
        for ev in &events {
            let id = SessionId(ev.data.u64());
            if let Some(Session {
                origin: Origin::Portserver { pid, uid },
                ..
            }) = self.sessions.get(&id)
            {
                log::debug!("process {pid} exited: its portserver ports (asked by uid {uid}) end");
                uids.push(*uid);
                self.close_session(id);
            }
        }
        uids
    }
}
