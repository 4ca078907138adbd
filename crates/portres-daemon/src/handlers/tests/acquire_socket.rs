//! Acquire with a socket: the block and the bound socket in one request;
//! every refusal (of the socket, or of the bind) leaves no reservation, no
//! quota used and no kernel write.

use std::os::fd::OwnedFd;

use portres_core::{Error, ErrorCode, Protocol, SessionId};
use portres_proto::{AcquireParams, ReservationReply};

use super::super::runtime;
use super::{Harness, tcp, unit};

impl Harness {
    fn acquire_with(
        &self,
        session: SessionId,
        p: AcquireParams,
        fd: OwnedFd,
    ) -> Result<ReservationReply, Error> {
        let p = AcquireParams {
            address: Some("127.0.0.1".parse().unwrap()),
            ..p
        };
        runtime::acquire(&self.state, session, p, Some(fd))
    }
}

#[test]
fn an_acquire_with_a_socket_answers_the_block_and_the_bound_port() {
    let h = Harness::new();
    let s = h.stranger();
    let r = h.acquire_with(s, tcp(0, 3), h.socket()).unwrap();
    assert_eq!((r.reservation.start, r.reservation.count), (32768, 3));
    assert_eq!(r.port, Some(32768));
    assert!(
        h.kernel.reserved().contains(32768),
        "covered before the answer"
    );
    // The rotation cursor moved: a later Bind into the block starts after it.
    let token = r.reservation.token.unwrap();
    assert_eq!(h.bind(s, token, h.socket()).unwrap(), 32769);
    // The next Acquire finds the block taken.
    assert_eq!(h.acquire(s, 0, 1).unwrap().start, 32771);
}

#[test]
fn a_busy_first_port_is_skipped_by_the_bind_and_the_cursor_follows() {
    let h = Harness::new();
    let s = h.stranger();
    let r = h.acquire_with(s, tcp(40000, 3), h.socket()).unwrap();
    h.kernel.hold(Protocol::Tcp, 40001);
    let token = r.reservation.token.unwrap();
    assert_eq!(h.bind(s, token, h.socket()).unwrap(), 40002);
}

#[test]
fn a_refused_socket_leaves_nothing() {
    let h = Harness::new();
    let s = h.stranger();
    let elsewhere = h.kernel.add_socket(Protocol::Tcp, 1);
    h.refused(ErrorCode::WrongNamespace, || {
        unit(h.acquire_with(s, tcp(0, 2), elsewhere))
    });
    let cookie = h.kernel.state().netns_cookie;
    let udp = h.kernel.add_socket(Protocol::Udp, cookie);
    let err = h.refused(ErrorCode::InvalidParameter, || {
        unit(h.acquire_with(s, tcp(0, 2), udp))
    });
    assert!(err.message.contains("udp"), "{err}");
    let not_a_socket = crate::kernel::Kernel::new_capability(&h.kernel).unwrap();
    h.refused(ErrorCode::NotASocket, || {
        unit(h.acquire_with(s, tcp(40000, 1), not_a_socket))
    });
}

#[test]
fn a_failed_bind_leaves_no_reservation_and_no_quota_used() {
    let h = Harness::with("", |c| c.quota = 4);
    let s = h.stranger();
    h.kernel.state().bind_refusal = Some(ErrorCode::BlockExhausted);
    for p in [tcp(0, 4), tcp(40000, 4)] {
        h.refused(ErrorCode::BlockExhausted, || {
            unit(h.acquire_with(s, p, h.socket()))
        });
    }
    h.kernel.state().bind_refusal = None;
    // The whole quota is still there, and the first block too.
    let r = h.acquire_with(s, tcp(0, 4), h.socket()).unwrap();
    assert_eq!((r.reservation.start, r.port), (32768, Some(32768)));
}

#[test]
fn the_quota_and_the_search_refuse_before_the_socket_is_looked_at() {
    let h = Harness::with("", |c| c.quota = 2);
    let s = h.stranger();
    h.refused(ErrorCode::QuotaExceeded, || {
        unit(h.acquire_with(s, tcp(0, 3), h.socket()))
    });
}
