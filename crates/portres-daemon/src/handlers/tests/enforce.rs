//! Strict mode in the handlers (on `FakeEnforcer`): every request that
//! reserves ports guards them before it is answered, with the allowed
//! binders its kind and owner call for; every way a reservation ends
//! unguards it; a guard the map refuses refuses the request and changes
//! nothing; EnterCgroup lets the session's cgroup bind its blocks.

use std::sync::{Arc, Mutex};

use portres_core::{ErrorCode, Owner, Protocol};

use super::{Harness, OWNER_GID, OWNER_UID, unit};
use crate::kernel::enforce::{AllowedBinders, FakeEnforcer, FakeEnforcerState};
use crate::state::lock;

/// Installs a `FakeEnforcer`; its state.
fn strict(h: &Harness) -> Arc<Mutex<FakeEnforcerState>> {
    let fake = FakeEnforcer::default();
    let state = fake.state.clone();
    lock(&h.state).set_enforcer(Box::new(fake)).unwrap();
    state
}

fn guarded(e: &Mutex<FakeEnforcerState>) -> Vec<((Protocol, u16, u16), AllowedBinders)> {
    e.lock()
        .unwrap()
        .guarded
        .iter()
        .map(|(k, v)| (*k, *v))
        .collect()
}

fn daemon_only() -> AllowedBinders {
    AllowedBinders {
        tgid: Some(std::process::id()),
        ..AllowedBinders::default()
    }
}

#[test]
fn acquire_guards_its_block_for_the_daemon_before_the_answer_and_release_unguards_it() {
    let h = Harness::new();
    let e = strict(&h);
    let s = h.stranger();
    let token = h.acquire_token(s, 40000, 4);
    assert_eq!(
        guarded(&e),
        vec![((Protocol::Tcp, 40000, 4), daemon_only())]
    );
    h.release(s, token).unwrap();
    assert_eq!(guarded(&e), vec![]);
}

#[test]
fn a_closed_session_and_shutdown_unguard_runtime_blocks() {
    let h = Harness::new();
    let e = strict(&h);
    let a = h.stranger();
    h.acquire(a, 40000, 2).unwrap();
    lock(&h.state).close_session(a);
    assert_eq!(guarded(&e), vec![]);
    let b = h.stranger();
    h.acquire(b, 40010, 2).unwrap();
    h.persistent(5000, 1, None);
    lock(&h.state).shutdown();
    assert_eq!(
        guarded(&e),
        vec![((Protocol::Tcp, 5000, 1), daemon_only())],
        "persistent blocks stay guarded until the guard is dropped"
    );
}

#[test]
fn a_persistent_owner_may_bind_without_privilege_and_delete_unguards() {
    let h = Harness::new();
    let e = strict(&h);
    h.persistent(80, 1, Some(Owner::User(OWNER_UID)));
    h.persistent(443, 1, Some(Owner::Group(OWNER_GID)));
    h.persistent(5000, 1, None);
    let user = AllowedBinders {
        uid: Some(OWNER_UID),
        skip_bind_service_cap: true,
        ..daemon_only()
    };
    let group = AllowedBinders {
        gid: Some(OWNER_GID),
        skip_bind_service_cap: true,
        ..daemon_only()
    };
    assert_eq!(
        guarded(&e),
        vec![
            ((Protocol::Tcp, 80, 1), user),
            ((Protocol::Tcp, 443, 1), group),
            ((Protocol::Tcp, 5000, 1), daemon_only()),
        ]
    );
    h.delete(h.root(), 80, 1).unwrap();
    assert_eq!(guarded(&e).len(), 2);
}

#[test]
fn a_guard_the_map_refuses_refuses_acquire_and_create_changing_nothing() {
    let h = Harness::new();
    let e = strict(&h);
    e.lock().unwrap().fail = true;
    let s = h.stranger();
    let err = h.refused(ErrorCode::Internal, || unit(h.acquire(s, 40000, 1)));
    assert!(err.message.contains("bind guard"), "{err}");
    h.refused(ErrorCode::Internal, || unit(h.acquire(s, 0, 1)));
    h.refused(ErrorCode::Internal, || {
        unit(h.create(h.root(), 5000, 1, None))
    });
    assert_eq!(guarded(&e), vec![]);
    e.lock().unwrap().fail = false;
    h.acquire(s, 40000, 1).unwrap();
    h.create(h.root(), 5000, 1, None).unwrap();
}

#[test]
fn installing_the_enforcer_guards_the_reservations_already_there() {
    let h = Harness::new();
    h.persistent(6000, 3, Some(Owner::User(OWNER_UID)));
    let e = strict(&h);
    assert_eq!(guarded(&e).len(), 1);
    assert_eq!(guarded(&e)[0].1.uid, Some(OWNER_UID));
}

#[test]
fn enter_cgroup_allows_the_sessions_cgroup_on_its_blocks_and_closing_removes_it() {
    let h = Harness::new();
    let e = strict(&h);
    let s = h.stranger();
    let other = h.stranger();
    h.acquire(s, 40000, 2).unwrap();
    h.acquire(other, 40010, 2).unwrap();
    let pidfd = h.socket(); // the fake ignores what it is
    lock(&h.state).enter_cgroup(s, pidfd).unwrap();
    let g = guarded(&e);
    assert_eq!(g[0].1.cgroup.map(|c| c.id), Some(1000 + s.0));
    assert_eq!(
        g[1].1,
        daemon_only(),
        "another session's block is untouched"
    );
    // Blocks acquired afterwards allow the cgroup too.
    h.acquire(s, 40020, 1).unwrap();
    assert!(guarded(&e)[2].1.cgroup.is_some());
    let again = h.socket();
    h.refused(ErrorCode::InvalidParameter, || {
        unit(lock(&h.state).enter_cgroup(s, again))
    });
    lock(&h.state).close_session(s);
    assert!(e.lock().unwrap().cgroups.is_empty());
    assert_eq!(guarded(&e).len(), 1);
}

#[test]
fn enter_cgroup_whose_guard_update_fails_leaves_the_block_guarded_as_before() {
    // A failed map update deletes what it wrote, a replaced entry too:
    // the held block must not be left open to strangers.
    let h = Harness::new();
    let e = strict(&h);
    let s = h.stranger();
    h.acquire(s, 40000, 2).unwrap();
    e.lock().unwrap().fail_next = 1;
    lock(&h.state).enter_cgroup(s, h.socket()).unwrap();
    assert_eq!(
        guarded(&e),
        vec![((Protocol::Tcp, 40000, 2), daemon_only())]
    );
}

#[test]
fn enter_cgroup_is_a_no_op_success_when_enforcement_is_off() {
    let h = Harness::new();
    let s = h.stranger();
    lock(&h.state).enter_cgroup(s, h.socket()).unwrap();
}

#[test]
fn status_says_whether_binds_are_enforced_and_why_not() {
    let h = Harness::new();
    let s = h.stranger();
    let off = lock(&h.state).status(s).unwrap();
    assert_eq!(off.enforcement, "off");
    assert_eq!(off.enforcement_reason.as_deref(), Some("not configured"));
    strict(&h);
    let on = lock(&h.state).status(s).unwrap();
    assert_eq!(on.enforcement, "strict");
    assert_eq!(on.enforcement_reason, None);
}

#[test]
fn a_declared_owner_change_moves_the_guard_to_the_new_owner() {
    let h = Harness::with("", |c| c.daemon_uid = rustix::process::geteuid().as_raw());
    let e = strict(&h);
    let dir = h.dir.path().join("etc.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("a.conf"), format!("tcp 8080 owner={OWNER_UID}\n")).unwrap();
    crate::declared::reload(&h.state, "test");
    let user = |uid| AllowedBinders {
        uid: Some(uid),
        skip_bind_service_cap: true,
        ..daemon_only()
    };
    assert_eq!(
        guarded(&e),
        vec![((Protocol::Tcp, 8080, 1), user(OWNER_UID))]
    );
    std::fs::write(
        dir.join("a.conf"),
        format!("tcp 8080 owner={}\n", OWNER_UID + 1),
    )
    .unwrap();
    let r = crate::declared::reload(&h.state, "test");
    assert_eq!(r.updated, 1, "{r:?}");
    assert_eq!(
        guarded(&e),
        vec![((Protocol::Tcp, 8080, 1), user(OWNER_UID + 1))],
        "the new owner may bind, the old one no longer"
    );
    // A guard the map refuses changes nothing: not the owner, not the guard
    // (which the failed update deleted, as the real map does, and which is
    // written back).
    e.lock().unwrap().fail_next = 1;
    std::fs::write(dir.join("a.conf"), "tcp 8080\n").unwrap();
    let r = crate::declared::reload(&h.state, "test");
    assert_eq!((r.updated, r.problems.len()), (0, 1), "{r:?}");
    assert_eq!(r.problems[0].kind, "failed");
    assert_eq!(
        h.snapshot().store[0].owner,
        Some(Owner::User(OWNER_UID + 1))
    );
    assert_eq!(
        guarded(&e),
        vec![((Protocol::Tcp, 8080, 1), user(OWNER_UID + 1))]
    );
}
