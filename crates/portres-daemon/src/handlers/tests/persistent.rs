//! Persistent reservations: Create and Delete are for administrators,
//! Lookup and Bind also for the owner (a user, or a group's members);
//! a change is in the store and the kernel before it is answered, and a
//! refusal changes none of them.

use portres_core::{ErrorCode, Owner, Protocol};

use super::{Harness, OWNER_GID, OWNER_UID, unit};

#[test]
fn root_and_admin_group_members_may_create_and_it_is_durable_and_reserved() {
    let h = Harness::new();
    h.create(h.root(), 5000, 2, None).unwrap();
    h.create(h.admin_member(), 6000, 1, Some(Owner::User(OWNER_UID)))
        .unwrap();
    let snapshot = h.snapshot();
    assert_eq!(snapshot.store.len(), 2, "in the store before the answer");
    assert_eq!(snapshot.kernel.to_string(), "5000-5001,6000");
}

#[test]
fn owners_and_strangers_may_not_create() {
    let h = Harness::new();
    for session in [h.owner_user(), h.owner_group_member(), h.stranger()] {
        let err = h.refused(ErrorCode::AccessDenied, || {
            unit(h.create(session, 5000, 1, None))
        });
        assert!(err.message.contains("administrators"), "{err}");
    }
}

#[test]
fn create_refuses_an_overlap_and_a_port_in_use_changing_nothing() {
    let h = Harness::new();
    h.persistent(5000, 10, None);
    let root = h.root();
    h.acquire(root, 40000, 1).unwrap();
    h.refused(ErrorCode::SharingViolation, || {
        unit(h.create(root, 5005, 10, None))
    });
    h.refused(ErrorCode::SharingViolation, || {
        unit(h.create(root, 40000, 1, None))
    });
    h.kernel.hold(Protocol::Tcp, 7003);
    let err = h.refused(ErrorCode::SharingViolation, || {
        unit(h.create(root, 7000, 5, None))
    });
    assert!(err.message.contains("7003 is in use"), "{err}");
}

#[test]
fn create_refuses_bad_blocks_and_labels() {
    let h = Harness::new();
    let root = h.root();
    h.refused(ErrorCode::InvalidParameter, || {
        unit(h.create(root, 0, 1, None))
    });
    h.refused(ErrorCode::InvalidParameter, || {
        unit(h.create(root, 65535, 2, None))
    });
    let p = portres_proto::CreateParams {
        protocol: Protocol::Tcp,
        start: 5000,
        count: 1,
        owner: None,
        label: Some("a\u{202e}b".into()),
    };
    h.refused(ErrorCode::InvalidParameter, || {
        unit(crate::state::lock(&h.state).create(root, p))
    });
}

#[test]
fn a_create_the_kernel_refuses_is_undone_in_the_store() {
    let h = Harness::new();
    let root = h.root();
    h.kernel.state().reserved.fail_writes = true;
    let before = h.snapshot();
    let err = h.create(root, 5000, 1, None).unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal);
    assert!(err.message.contains("ip_local_reserved_ports"), "{err}");
    let after = h.snapshot();
    assert_eq!((after.table, after.store), (before.table, before.store));
}

#[test]
fn only_administrators_may_delete_and_the_port_leaves_after_the_window() {
    let h = Harness::new();
    h.persistent(5000, 2, Some(Owner::User(OWNER_UID)));
    for session in [h.owner_user(), h.owner_group_member(), h.stranger()] {
        h.refused(ErrorCode::AccessDenied, || h.delete(session, 5000, 2));
    }
    h.delete(h.admin_member(), 5000, 2).unwrap();
    let snapshot = h.snapshot();
    assert!(snapshot.store.is_empty() && snapshot.table.is_empty());
    assert_eq!(snapshot.kernel.to_string(), "5000-5001", "kept one window");
    let mut state = crate::state::lock(&h.state);
    state.flush_kernel();
    state.flush_kernel();
    drop(state);
    assert_eq!(h.kernel.reserved().to_string(), "");
}

#[test]
fn delete_and_lookup_go_by_the_exact_block() {
    let h = Harness::new();
    h.persistent(5000, 2, None);
    let root = h.root();
    h.refused(ErrorCode::NotFound, || h.delete(root, 5000, 1));
    h.refused(ErrorCode::NotFound, || unit(h.lookup(root, 5001, 1)));
    // A runtime block is not a persistent one.
    h.acquire(root, 40000, 1).unwrap();
    h.refused(ErrorCode::NotFound, || h.delete(root, 40000, 1));
}

#[test]
fn lookup_is_for_administrators_and_the_owning_user() {
    let h = Harness::new();
    h.persistent(5000, 2, Some(Owner::User(OWNER_UID)));
    for session in [h.root(), h.admin_member(), h.owner_user()] {
        let r = h.lookup(session, 5000, 2).unwrap();
        assert!(r.token.is_some(), "who may look it up may use it");
    }
    for session in [h.owner_group_member(), h.stranger()] {
        h.refused(ErrorCode::AccessDenied, || unit(h.lookup(session, 5000, 2)));
    }
}

#[test]
fn lookup_is_for_members_of_the_owning_group_primary_or_supplementary() {
    let h = Harness::new();
    h.persistent(5000, 2, Some(Owner::Group(OWNER_GID)));
    h.lookup(h.owner_group_member(), 5000, 2).unwrap();
    h.lookup(h.session(1003, OWNER_GID, &[]), 5000, 2).unwrap();
    for session in [h.owner_user(), h.stranger()] {
        h.refused(ErrorCode::AccessDenied, || unit(h.lookup(session, 5000, 2)));
    }
}

#[test]
fn administrators_and_owners_may_bind_into_a_persistent_reservation() {
    let h = Harness::new();
    let user_owned = h.persistent(5000, 4, Some(Owner::User(OWNER_UID)));
    let group_owned = h.persistent(6000, 4, Some(Owner::Group(OWNER_GID)));
    h.bind(h.root(), user_owned, h.socket()).unwrap();
    h.bind(h.admin_member(), user_owned, h.socket()).unwrap();
    h.bind(h.owner_user(), user_owned, h.socket()).unwrap();
    h.bind(h.owner_group_member(), group_owned, h.socket())
        .unwrap();
    for (session, token) in [
        (h.stranger(), user_owned),
        (h.owner_group_member(), user_owned),
        (h.owner_user(), group_owned),
    ] {
        let socket = h.socket();
        let err = h.refused(ErrorCode::AccessDenied, || {
            unit(h.bind(session, token, socket))
        });
        assert!(err.message.contains("owner"), "{err}");
    }
}

#[test]
fn persistent_reservations_survive_a_restart_with_fresh_tokens() {
    let h = Harness::new();
    let old = h.persistent(5000, 2, Some(Owner::User(OWNER_UID)));
    let dir = h.dir.path().join("state");
    let store = portres_store::Store::open(&dir).unwrap();
    let config = crate::state::lock(&h.state).config().clone();
    let kernel = h.kernel.clone();
    let restarted = crate::state::State::new(
        config,
        store,
        std::sync::Arc::new(kernel.clone()),
        Some(kernel.reserved_ports()),
    );
    // The restored table has the block under a new token.
    let restarted = restarted.unwrap();
    let tokens: Vec<_> = restarted.table().iter().map(|r| r.token).collect();
    assert_eq!(tokens.len(), 1);
    assert_ne!(tokens[0], old);
    assert_eq!(kernel.reserved().to_string(), "5000-5001");
}
