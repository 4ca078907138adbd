//! The permission matrix of runtime reservations and of what anyone may
//! read: who may Acquire, Release, Bind, List and Status. A runtime
//! reservation belongs to its session (and sessions that presented its
//! capability), not to its uid: root in another session is a stranger
//! to it too.

use portres_core::{ErrorCode, Owner, Protocol};

use super::{Harness, unit};

#[test]
fn anyone_may_acquire_an_unprivileged_block() {
    let h = Harness::new();
    for session in [h.root(), h.admin_member(), h.owner_user(), h.stranger()] {
        let r = h.acquire(session, 0, 4).unwrap();
        assert!(r.token.is_some());
    }
    assert_eq!(lock_counts(&h), (4, 0));
}

#[test]
fn only_an_administrator_may_acquire_below_the_unprivileged_port_start() {
    let h = Harness::new();
    let stranger = h.stranger();
    let err = h.refused(ErrorCode::AccessDenied, || unit(h.acquire(stranger, 80, 1)));
    assert!(err.message.contains("below 1024"), "{err}");
    h.acquire(h.root(), 80, 1).unwrap();
    h.acquire(h.admin_member(), 443, 1).unwrap();
}

#[test]
fn the_unprivileged_port_start_is_the_kernels() {
    let h = Harness::new();
    h.kernel.state().unprivileged_port_start = 80;
    let stranger = h.stranger();
    h.acquire(stranger, 80, 1).unwrap();
    h.refused(ErrorCode::AccessDenied, || unit(h.acquire(stranger, 79, 1)));
}

#[test]
fn the_holding_session_may_release_its_reservation() {
    let h = Harness::new();
    let holder = h.stranger();
    let token = h.acquire_token(holder, 40000, 2);
    h.release(holder, token).unwrap();
    assert_eq!(lock_counts(&h), (0, 0));
}

#[test]
fn another_session_may_not_release_it_even_of_the_same_uid_or_root() {
    let h = Harness::new();
    let holder = h.owner_user();
    let token = h.acquire_token(holder, 40000, 2);
    for other in [h.owner_user(), h.stranger(), h.admin_member(), h.root()] {
        let err = h.refused(ErrorCode::AccessDenied, || h.release(other, token));
        assert!(err.message.contains("another session"), "{err}");
    }
}

#[test]
fn release_of_an_unknown_token_is_not_found() {
    let h = Harness::new();
    let holder = h.stranger();
    let token = h.acquire_token(holder, 40000, 1);
    h.release(holder, token).unwrap();
    h.refused(ErrorCode::NotFound, || h.release(holder, token));
}

#[test]
fn a_persistent_reservation_is_not_released_even_by_root() {
    let h = Harness::new();
    let token = h.persistent(5000, 2, None);
    let root = h.root();
    let err = h.refused(ErrorCode::InvalidParameter, || h.release(root, token));
    assert!(err.message.contains("persistent"), "{err}");
}

#[test]
fn the_holding_session_may_bind_into_its_reservation_in_rotation() {
    let h = Harness::new();
    let holder = h.stranger();
    let token = h.acquire_token(holder, 40000, 2);
    assert_eq!(h.bind(holder, token, h.socket()).unwrap(), 40000);
    assert_eq!(h.bind(holder, token, h.socket()).unwrap(), 40001);
    // Both bound: the block is exhausted.
    let err = h.bind(holder, token, h.socket()).unwrap_err();
    assert_eq!(err.code, ErrorCode::BlockExhausted);
}

#[test]
fn another_session_may_not_bind_into_a_runtime_reservation() {
    let h = Harness::new();
    let token = h.acquire_token(h.owner_user(), 40000, 2);
    for other in [h.owner_user(), h.stranger(), h.root()] {
        let socket = h.socket();
        let err = h.refused(ErrorCode::AccessDenied, || {
            unit(h.bind(other, token, socket))
        });
        assert!(err.message.contains("another session"), "{err}");
    }
}

#[test]
fn bind_refuses_a_socket_of_another_namespace_protocol_or_kind() {
    let h = Harness::new();
    let holder = h.stranger();
    let token = h.acquire_token(holder, 40000, 2);
    let elsewhere = h.kernel.add_socket(Protocol::Tcp, 1);
    h.refused(ErrorCode::WrongNamespace, || {
        unit(h.bind(holder, token, elsewhere))
    });
    let cookie = h.kernel.state().netns_cookie;
    let udp = h.kernel.add_socket(Protocol::Udp, cookie);
    let err = h.refused(ErrorCode::InvalidParameter, || {
        unit(h.bind(holder, token, udp))
    });
    assert!(err.message.contains("udp"), "{err}");
    let not_a_socket = crate::kernel::Kernel::new_capability(&h.kernel).unwrap();
    h.refused(ErrorCode::NotASocket, || {
        unit(h.bind(holder, token, not_a_socket))
    });
}

#[test]
fn bind_skips_ports_other_sockets_hold() {
    let h = Harness::new();
    let holder = h.stranger();
    let token = h.acquire_token(holder, 40000, 3);
    h.kernel.hold(Protocol::Tcp, 40000);
    assert_eq!(h.bind(holder, token, h.socket()).unwrap(), 40001);
}

#[test]
fn everyone_lists_everything_but_sees_only_the_tokens_it_may_use() {
    let h = Harness::new();
    let holder = h.stranger();
    h.acquire(holder, 40000, 2).unwrap();
    h.persistent(5000, 1, Some(Owner::User(super::OWNER_UID)));
    h.persistent(5001, 1, Some(Owner::Group(super::OWNER_GID)));
    h.persistent(5002, 1, None);
    let tokens = |session| {
        let mut list = h.list(session);
        list.sort_by_key(|r| r.start);
        list.iter()
            .map(|r| (r.start, r.token.is_some()))
            .collect::<Vec<_>>()
    };
    let all = |runtime, user, group, none| {
        vec![(5000, user), (5001, group), (5002, none), (40000, runtime)]
    };
    assert_eq!(tokens(holder), all(true, false, false, false));
    assert_eq!(tokens(h.root()), all(false, true, true, true));
    assert_eq!(tokens(h.admin_member()), all(false, true, true, true));
    assert_eq!(tokens(h.owner_user()), all(false, true, false, false));
    assert_eq!(
        tokens(h.owner_group_member()),
        all(false, false, true, false)
    );
    assert_eq!(tokens(h.stranger()), all(false, false, false, false));
}

#[test]
fn list_shows_the_ports_sockets_hold_from_one_dump_per_protocol() {
    let h = Harness::new();
    let holder = h.stranger();
    let token = h.acquire_token(holder, 40000, 4);
    h.bind(holder, token, h.socket()).unwrap();
    h.kernel.hold(Protocol::Tcp, 40003);
    let list = h.list(h.stranger());
    assert_eq!(list[0].in_use, Some(vec![40000, 40003]));
    assert_eq!(h.kernel.state().dumps, 1, "no UDP reservation, no UDP dump");
}

#[test]
fn status_answers_everyone_and_says_who_is_admin() {
    let h = Harness::with("1000-1009", |_| {});
    h.acquire(h.stranger(), 40000, 2).unwrap();
    h.persistent(5000, 1, None);
    for (session, admin, uid) in [
        (h.root(), true, 0),
        (h.admin_member(), true, 2000),
        (h.owner_user(), false, super::OWNER_UID),
        (h.stranger(), false, 1002),
    ] {
        let status = crate::state::lock(&h.state).status(session).unwrap();
        assert_eq!((status.you_are_admin, status.your_uid), (admin, uid));
        assert_eq!((status.runtime, status.persistent), (1, 1));
        assert_eq!(status.baseline, "1000-1009");
        assert_eq!(status.reserved_ports, "1000-1009,5000,40000-40001");
        assert_eq!(status.dynamic_range, [32768, 60999]);
        assert!(status.kernel_sync);
        assert_eq!(status.mode, "system");
    }
}

#[test]
fn in_user_mode_the_daemons_own_user_is_an_administrator() {
    let h = Harness::with("", |c| {
        c.mode = crate::config::Mode::User;
        c.daemon_uid = 1002;
        c.admin_gid = None;
    });
    h.create(h.stranger(), 5000, 1, None).unwrap();
    let other = h.owner_user();
    h.refused(ErrorCode::AccessDenied, || {
        unit(h.create(other, 5001, 1, None))
    });
    h.refused(ErrorCode::AccessDenied, || {
        unit(h.create(h.admin_member(), 5001, 1, None))
    });
}

fn lock_counts(h: &Harness) -> (usize, usize) {
    crate::state::lock(&h.state).counts()
}
