//! Strict mode in the state owner: who may explicitly bind a reservation's
//! block (`allowed_binders`, the one place that decides it), guarding a
//! block when it is reserved and unguarding it when the reservation ends
//! (called by `reserve`, `end`, `withdraw`, `close_session`, `shutdown`),
//! installing the enforcer at start over the restored reservations, and
//! EnterCgroup (an exec session's processes may bind its blocks).

use std::os::fd::{AsFd, OwnedFd};

use portres_core::{Error, ErrorCode, Kind, Owner, Reservation, SessionId};
use portres_proto::Empty;

use super::{Origin, State};
use crate::kernel::enforce::AllowedBinders;
use crate::kernel::{Enforcement, Enforcer};

/// The daemon's pid, asked of the kernel once: `std::process::id()` is a
/// getpid() system call each time, and every reservation made asks (the
/// daemon never forks without exec, so it cannot change).
fn own_pid() -> u32 {
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *PID.get_or_init(std::process::id)
}

impl State {
    /// Who may `bind()` the ports of `res` explicitly, besides nobody:
    /// - always the daemon itself (its Bind of a client's socket);
    /// - persistent, user owner: that uid; group owner: that primary gid;
    ///   both without CAP_NET_BIND_SERVICE (an owner binds its port 80);
    /// - runtime: the processes of the holding session's exec cgroup, if
    ///   it has one (`EnterCgroup`); for the portserver endpoint's ports,
    ///   the processes of the uid that asked.
    pub(crate) fn allowed_binders(&self, res: &Reservation) -> AllowedBinders {
        let mut allowed = AllowedBinders {
            tgid: Some(own_pid()),
            ..AllowedBinders::default()
        };
        match (res.kind, res.owner) {
            (Kind::Persistent, Some(Owner::User(uid))) => {
                allowed.uid = Some(uid);
                allowed.skip_bind_service_cap = true;
            }
            (Kind::Persistent, Some(Owner::Group(gid))) => {
                allowed.gid = Some(gid);
                allowed.skip_bind_service_cap = true;
            }
            (Kind::Persistent, None) => {}
            (Kind::Runtime, _) => {
                let holder = res.holder.and_then(|h| self.sessions.get(&h.session));
                if let Some(session) = holder {
                    allowed.cgroup = session.cgroup;
                    // A portserver port is for the requesting user's test
                    // processes (portpicker hands the number on to them).
                    if let Origin::Portserver { uid, .. } = session.origin {
                        allowed.uid = Some(uid);
                    }
                }
            }
        }
        allowed
    }

    /// Guards `res`'s block for its allowed binders; a refusal is the
    /// request's refusal.
    pub(super) fn guard(&self, res: &Reservation) -> Result<(), Error> {
        let allowed = self.allowed_binders(res);
        self.enforcer
            .guard(res.protocol, res.block, self.netns_cookie, &allowed)
            .map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!(
                        "could not enforce {} {} in the bind guard: {e}",
                        res.protocol, res.block
                    ),
                )
            })
    }

    /// Stops guarding the blocks of reservations that ended.
    pub(super) fn unguard_all(&self, gone: &[Reservation]) {
        for res in gone {
            self.enforcer
                .unguard(res.protocol, res.block, self.netns_cookie);
        }
    }

    /// Installs strict mode's enforcer (at start, before the socket is
    /// bound) and guards every reservation the table holds (the restored
    /// persistent ones).
    pub fn set_enforcer(&mut self, enforcer: Box<dyn Enforcer>) -> Result<(), Error> {
        self.enforcer = enforcer;
        for res in self.table.iter() {
            self.guard(res)?;
        }
        Ok(())
    }

    /// Whether binds are enforced, and why not.
    pub(crate) fn enforcement(&self) -> &Enforcement {
        self.enforcer.enforcement()
    }

    /// "strict (cgroup DIR)" or "off (REASON)", for the start's log line.
    pub fn enforcement_summary(&self) -> String {
        match self.enforcement() {
            Enforcement::Strict { cgroup } => format!("strict (cgroup {})", cgroup.display()),
            Enforcement::Off { reason } => format!("off ({reason})"),
        }
    }

    /// EnterCgroup: moves the caller (the process `pidfd` names, which
    /// must be the connection's peer) into a cgroup of this session's own;
    /// from then on the processes of that cgroup and below may bind the
    /// session's runtime blocks. With enforcement off: nothing to do.
    pub fn enter_cgroup(&mut self, session: SessionId, pidfd: OwnedFd) -> Result<Empty, Error> {
        if matches!(self.enforcement(), Enforcement::Off { .. }) {
            return Ok(Empty {});
        }
        let s = self.session(session)?;
        if s.cgroup.is_some() {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                "this session already has its cgroup",
            ));
        }
        let peer = (s.caller.pid, s.caller.uid);
        let cgroup = self
            .enforcer
            .enter_session_cgroup(session.0, pidfd.as_fd(), peer)
            .map_err(|e| Error::new(ErrorCode::AccessDenied, format!("EnterCgroup: {e}")))?;
        // The session's blocks, with who may bind them until now.
        let held: Vec<_> = self
            .table
            .iter()
            .filter(|r| r.holder.is_some_and(|h| h.session == session))
            .map(|r| (r.token, self.allowed_binders(r)))
            .collect();
        self.session_mut(session)?.cgroup = Some(cgroup);
        // The session's blocks now allow its cgroup too.
        for (token, before) in held {
            let res = self.table.get(token).expect("listed above");
            if let Err(e) = self.guard(res) {
                // A failed update takes out what it wrote (the map has no
                // "as before" for an entry it replaced): write the old
                // allowance back, failing closed for the session only.
                log::warn!("{}", e.message);
                if let Err(e) =
                    self.enforcer
                        .guard(res.protocol, res.block, self.netns_cookie, &before)
                {
                    log::error!(
                        "strict mode: {} {} may be unguarded (bind guard: {e})",
                        res.protocol,
                        res.block
                    );
                }
            }
        }
        Ok(Empty {})
    }

    /// At shutdown: the exec sessions' cgroups go.
    pub(super) fn remove_session_cgroups(&mut self) {
        for (id, s) in &self.sessions {
            if s.cgroup.is_some() {
                self.enforcer.remove_session_cgroup(id.0);
            }
        }
    }
}
