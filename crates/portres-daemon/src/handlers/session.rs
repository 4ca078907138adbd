//! Session capabilities: GetCapability hands out a descriptor that stands for
//! this session; Attach, on another connection, presents one so that
//! connection may bind into and release the session's runtime reservations.
//! Possession is permission: nobody can present a descriptor they do not hold.

use std::os::fd::{AsFd, OwnedFd};

use portres_core::{Error, ErrorCode, SessionId};
use portres_proto::AttachReply;

use crate::state::State;

impl State {
    /// Returns (a duplicate of) this session's capability, creating it on
    /// first use.
    pub fn get_capability(&mut self, session: SessionId) -> Result<OwnedFd, Error> {
        let internal = |e: std::io::Error| {
            Error::new(
                ErrorCode::Internal,
                format!("creating the session capability: {e}"),
            )
        };
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or_else(|| Error::new(ErrorCode::Internal, "unknown session"))?;
        if s.capability.is_none() {
            let fd = portres_kernel::capability::new_capability().map_err(internal)?;
            let id = portres_kernel::capability::file_id(fd.as_fd()).map_err(internal)?;
            s.capability = Some((fd, id));
            self.capabilities.insert(id, session);
        }
        let (fd, _) = s.capability.as_ref().expect("set above");
        fd.try_clone().map_err(internal)
    }

    /// Presents a capability: this connection now speaks for its session.
    pub fn attach(&mut self, session: SessionId, fd: OwnedFd) -> Result<AttachReply, Error> {
        let id = portres_kernel::capability::file_id(fd.as_fd()).map_err(|e| {
            Error::new(
                ErrorCode::InvalidParameter,
                format!("not a capability: {e}"),
            )
        })?;
        let Some(&owner) = self.capabilities.get(&id) else {
            return Err(Error::new(
                ErrorCode::AccessDenied,
                "this descriptor is not the capability of a live session",
            ));
        };
        let s = self
            .sessions
            .get_mut(&session)
            .ok_or_else(|| Error::new(ErrorCode::Internal, "unknown session"))?;
        if !s.speaks_for.contains(&owner) {
            s.speaks_for.push(owner);
        }
        let reservations = self
            .table
            .iter()
            .filter(|r| r.holder.is_some_and(|h| h.session == owner))
            .count();
        Ok(AttachReply { reservations })
    }
}
