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
        if self.session(session)?.capability.is_none() {
            let kernel = self.kernel();
            let fd = kernel.new_capability().map_err(internal)?;
            let id = kernel.file_id(fd.as_fd()).map_err(internal)?;
            self.session_mut(session)?.capability = Some((fd, id));
            self.register_capability(id, session);
        }
        let s = self.session(session)?;
        let (fd, _) = s.capability.as_ref().expect("set above");
        fd.try_clone().map_err(internal)
    }

    /// Presents a capability: this connection now speaks for its session.
    pub fn attach(&mut self, session: SessionId, fd: OwnedFd) -> Result<AttachReply, Error> {
        let id = self.kernel().file_id(fd.as_fd()).map_err(|e| {
            Error::new(
                ErrorCode::InvalidParameter,
                format!("not a capability: {e}"),
            )
        })?;
        let Some(owner) = self.capability_owner(&id) else {
            return Err(Error::new(
                ErrorCode::AccessDenied,
                "this descriptor is not the capability of a live session",
            ));
        };
        let s = self.session_mut(session)?;
        if !s.speaks_for.contains(&owner) {
            s.speaks_for.push(owner);
        }
        let reservations = self
            .table()
            .iter()
            .filter(|r| r.holder.is_some_and(|h| h.session == owner))
            .count();
        Ok(AttachReply { reservations })
    }
}
