//! Persistent reservations: Create, Delete and Lookup (the seeds'
//! Create/Delete/LookupPersistent{Tcp,Udp}PortReservation), and Reload
//! (the portres.d files' declared ones). A change is acknowledged only
//! after the store has it on disk; a declared reservation is not deleted
//! through the API (its file is where it changes).

use std::time::{SystemTime, UNIX_EPOCH};

use portres_core::{Block, Error, ErrorCode, Kind, Reservation, SessionId};
use portres_proto::{BlockParams, CreateParams, Empty, ReservationReply};
use portres_store::StoredReservation;

use crate::state::{State, check_label};

impl State {
    fn require_admin(&self, session: SessionId, what: &str) -> Result<u32, Error> {
        let caller = &self.session(session)?.caller;
        if caller.admin {
            Ok(caller.uid)
        } else {
            Err(Error::new(
                ErrorCode::AccessDenied,
                format!(
                    "{what} persistent reservations is for administrators (root or the admin group); uid {} is not one",
                    caller.uid
                ),
            ))
        }
    }

    /// Create: admin only; durable before it is answered.
    pub fn create(
        &mut self,
        session: SessionId,
        p: CreateParams,
    ) -> Result<ReservationReply, Error> {
        let uid = self.require_admin(session, "creating")?;
        let block = Block::new(p.start, p.count)?;
        check_label(&p.label)?;
        self.table().check_free(p.protocol, block)?;
        self.check_not_in_use(p.protocol, block)?;
        let owner = p.owner.map(Into::into);
        let row = StoredReservation {
            protocol: p.protocol,
            block,
            owner,
            label: p.label.clone(),
            created_by: uid,
            created_at: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            source: None,
        };
        let token = self.new_token()?;
        self.store_mut().insert(&row).map_err(Error::from)?;
        let res = Reservation::persistent(token, p.protocol, block, owner, p.label);
        if let Err(e) = self.reserve(res) {
            // Cannot happen (checked under the same lock), but never leave
            // the store and the table disagreeing.
            let _ = self.store_mut().delete(p.protocol, block);
            return Err(e);
        }
        if let Err(e) = self.cover(block) {
            self.withdraw(token);
            if let Err(undo) = self.store_mut().delete(p.protocol, block) {
                log::error!(
                    "could not undo create of {} {block} after a sysctl failure: {undo}",
                    p.protocol
                );
            }
            return Err(e);
        }
        log::info!("uid {uid} created persistent {} {block}", p.protocol);
        let res = self.table().get(token).expect("just inserted");
        Ok(ReservationReply {
            reservation: self.describe(res, session),
            port: None,
        })
    }

    fn persistent_by_block(&self, p: &BlockParams) -> Result<&Reservation, Error> {
        let block = Block::new(p.start, p.count)?;
        self.table()
            .by_block(p.protocol, block)
            .filter(|r| r.kind == Kind::Persistent)
            .ok_or_else(|| {
                Error::new(
                    ErrorCode::NotFound,
                    format!(
                        "no persistent {} reservation of exactly {block}",
                        p.protocol
                    ),
                )
            })
    }

    /// Delete: admin only; by the exact block; durable before it is answered.
    pub fn delete(&mut self, session: SessionId, p: BlockParams) -> Result<Empty, Error> {
        let uid = self.require_admin(session, "deleting")?;
        let res = self.persistent_by_block(&p)?;
        if let Some(file) = &res.source {
            // Why: the file would bring it back at the next reload; the
            // file is where it is changed.
            return Err(Error::new(
                ErrorCode::AccessDenied,
                format!(
                    "{} {} is declared in {file}: remove its line there and run `portres reload`",
                    p.protocol, res.block
                ),
            ));
        }
        let (token, block) = (res.token, res.block);
        self.store_mut()
            .delete(p.protocol, block)
            .map_err(Error::from)?;
        self.end(token);
        log::info!("uid {uid} deleted persistent {} {block}", p.protocol);
        Ok(Empty {})
    }

    /// Reload's permission check: admin only.
    pub(crate) fn check_reload(&self, session: SessionId) -> Result<(), Error> {
        let caller = &self.session(session)?.caller;
        if caller.admin {
            return Ok(());
        }
        Err(Error::new(
            ErrorCode::AccessDenied,
            format!(
                "reloading the portres.d files is for administrators (root or the admin group); uid {} is not one",
                caller.uid
            ),
        ))
    }

    /// Lookup: admin or the reservation's owner; by the exact block.
    pub fn lookup(
        &mut self,
        session: SessionId,
        p: BlockParams,
    ) -> Result<ReservationReply, Error> {
        let block = Block::new(p.start, p.count)?;
        let s = self.session(session)?;
        let res = self.persistent_by_block(&p)?;
        if !res.usable_by(&s.caller, &s.speaks_for) {
            return Err(Error::new(
                ErrorCode::AccessDenied,
                format!(
                    "only an administrator or the owner may look up persistent {} {block}",
                    p.protocol
                ),
            ));
        }
        Ok(ReservationReply {
            reservation: self.describe(res, session),
            port: None,
        })
    }
}
