//! GetCapability and Attach: a session's capability lets another
//! connection release and bind into that session's runtime reservations;
//! nothing else grants that, and it grants nothing more.

use std::os::fd::OwnedFd;

use portres_core::{Error, ErrorCode, Owner, SessionId};

use super::{Harness, unit};
use crate::kernel::Kernel;
use crate::state::lock;

fn capability(h: &Harness, session: SessionId) -> OwnedFd {
    lock(&h.state).get_capability(session).unwrap()
}

fn attach(h: &Harness, session: SessionId, fd: OwnedFd) -> Result<usize, Error> {
    lock(&h.state).attach(session, fd).map(|r| r.reservations)
}

#[test]
fn anyone_gets_a_capability_and_the_same_one_each_time() {
    let h = Harness::new();
    for session in [h.root(), h.stranger()] {
        let first = capability(&h, session);
        let again = capability(&h, session);
        let id = |fd: &OwnedFd| h.kernel.file_id(std::os::fd::AsFd::as_fd(fd)).unwrap();
        assert_eq!(id(&first), id(&again));
    }
}

#[test]
fn an_attached_session_may_release_and_bind_the_holders_reservations() {
    let h = Harness::new();
    let holder = h.stranger();
    let a = h.acquire_token(holder, 40000, 2);
    let b = h.acquire_token(holder, 41000, 2);
    let other = h.owner_user();
    assert_eq!(attach(&h, other, capability(&h, holder)).unwrap(), 2);
    assert_eq!(h.bind(other, a, h.socket()).unwrap(), 40000);
    h.release(other, b).unwrap();
    // And attaching twice is harmless.
    assert_eq!(attach(&h, other, capability(&h, holder)).unwrap(), 1);
}

#[test]
fn a_descriptor_that_is_no_live_capability_is_refused_and_grants_nothing() {
    let h = Harness::new();
    let holder = h.stranger();
    let token = h.acquire_token(holder, 40000, 2);
    let other = h.owner_user();
    let forged = h.kernel.new_capability().unwrap();
    let err = h.refused(ErrorCode::AccessDenied, || unit(attach(&h, other, forged)));
    assert!(err.message.contains("not the capability"), "{err}");
    h.refused(ErrorCode::AccessDenied, || h.release(other, token));
}

#[test]
fn the_capability_of_a_closed_session_is_refused() {
    let h = Harness::new();
    let gone = h.stranger();
    let fd = capability(&h, gone);
    lock(&h.state).close_session(gone);
    let other = h.stranger();
    h.refused(ErrorCode::AccessDenied, || unit(attach(&h, other, fd)));
}

#[test]
fn a_capability_grants_no_persistent_rights() {
    let h = Harness::new();
    h.persistent(5000, 2, Some(Owner::User(super::OWNER_UID)));
    let owner = h.owner_user();
    let stranger = h.stranger();
    attach(&h, stranger, capability(&h, owner)).unwrap();
    h.refused(ErrorCode::AccessDenied, || {
        unit(h.lookup(stranger, 5000, 2))
    });
    h.refused(ErrorCode::AccessDenied, || h.delete(stranger, 5000, 2));
    h.refused(ErrorCode::AccessDenied, || {
        unit(h.create(stranger, 6000, 1, None))
    });
}

#[test]
fn attaching_does_not_let_the_holder_use_the_attachers_reservations() {
    let h = Harness::new();
    let holder = h.stranger();
    let attacher = h.owner_user();
    let own = h.acquire_token(attacher, 42000, 1);
    attach(&h, attacher, capability(&h, holder)).unwrap();
    h.refused(ErrorCode::AccessDenied, || h.release(holder, own));
}
