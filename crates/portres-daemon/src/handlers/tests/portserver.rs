//! The portserver request on the fake kernel: a port on both protocols for
//! a named process, who may name whom, the quota, one holder per process,
//! first fit around ports taken on either protocol, and the end when the
//! process exits (not when anything else happens).

use portres_core::{Caller, ErrorCode, Protocol};

use std::sync::Mutex;

use super::super::portserver::{Endpoint, PORTSERVER_LABEL, Served};
use super::Harness;
use crate::state::{State, lock};

const ALICE: u32 = 1000;
const BOB: u32 = 1001;

fn peer(uid: u32, pid: i32) -> Caller {
    Caller {
        uid,
        gid: uid,
        groups: Vec::new(),
        pid,
        admin: uid == 0,
    }
}

/// One request, with a worker's `Endpoint` that remembers nothing.
fn serve(state: &Mutex<State>, from: &Caller, pid: i32) -> Served {
    let mut endpoint = Endpoint::new(lock(state).kernel());
    super::super::portserver::serve(state, &mut endpoint, from, pid, true)
}

fn ask(h: &Harness, from: &Caller, pid: i32) -> Result<u16, portres_core::Error> {
    serve(&h.state, from, pid).result
}

/// The ports the table holds, per protocol, with their holder's pid.
fn held(h: &Harness) -> Vec<(Protocol, u16, i32)> {
    let state = lock(&h.state);
    state
        .table()
        .iter()
        .map(|r| (r.protocol, r.block.start(), r.holder.unwrap().pid))
        .collect()
}

#[test]
fn a_port_on_both_protocols_for_the_named_process_until_it_exits() {
    let h = Harness::new();
    h.kernel.spawn(500, ALICE);
    h.kernel.spawn(501, ALICE);
    let alice = peer(ALICE, 500);
    let first = serve(&h.state, &alice, 500);
    assert!(first.new_holder);
    let port = first.result.unwrap();
    assert_eq!(port, 32768);
    // Another process of hers, named by her.
    let other = ask(&h, &alice, 501).unwrap();
    assert_eq!(other, 32769);
    // The same process again: a second port on the same holder.
    let again = serve(&h.state, &alice, 500);
    assert!(!again.new_holder);
    assert_eq!(again.result.unwrap(), 32770);
    assert_eq!(
        held(&h),
        vec![
            (Protocol::Tcp, 32768, 500),
            (Protocol::Tcp, 32769, 501),
            (Protocol::Tcp, 32770, 500),
            (Protocol::Udp, 32768, 500),
            (Protocol::Udp, 32769, 501),
            (Protocol::Udp, 32770, 500),
        ]
    );
    assert!(h.kernel.reserved().contains(32768) && h.kernel.reserved().contains(32770));
    let list = h.list(h.root());
    assert!(
        list.iter()
            .all(|r| r.label.as_deref() == Some(PORTSERVER_LABEL)
                && r.holder.unwrap().origin == Some(portres_proto::HolderOrigin::Portserver)
                && r.holder.unwrap().uid == ALICE)
    );

    // Nothing but the exit ends them.
    assert!(lock(&h.state).reap_exited_holders(16).is_empty());
    h.kernel.exit(500);
    assert_eq!(lock(&h.state).reap_exited_holders(16), vec![ALICE]);
    assert_eq!(
        held(&h),
        vec![(Protocol::Tcp, 32769, 501), (Protocol::Udp, 32769, 501)]
    );
    h.settle();
    assert!(!h.kernel.reserved().contains(32768));
}

#[test]
fn a_port_free_on_one_protocol_only_is_passed_over() {
    let h = Harness::new();
    h.kernel.spawn(500, ALICE);
    h.kernel.hold(Protocol::Udp, 32768);
    h.kernel.hold(Protocol::Tcp, 32769);
    let udp_elsewhere = h.session(BOB, BOB, &[]);
    let acquired = super::runtime::acquire(
        &h.state,
        udp_elsewhere,
        portres_proto::AcquireParams {
            protocol: Protocol::Udp,
            start: 32770,
            count: 1,
            label: None,
            address: None,
        },
        None,
    );
    acquired.unwrap();
    assert_eq!(ask(&h, &peer(ALICE, 500), 500).unwrap(), 32771);
}

#[test]
fn who_may_name_whom() {
    let h = Harness::new();
    h.kernel.spawn(500, ALICE);
    h.kernel.spawn(600, BOB);
    let alice = peer(ALICE, 500);
    for (pid, code) in [
        (600, ErrorCode::AccessDenied),
        (0, ErrorCode::InvalidParameter),
        (1, ErrorCode::InvalidParameter),
        (-5, ErrorCode::InvalidParameter),
        (777, ErrorCode::NotFound),
    ] {
        let served = std::cell::Cell::new(true);
        h.refused(code, || {
            let s = serve(&h.state, &alice, pid);
            served.set(s.new_holder);
            s.result.map(drop)
        });
        assert!(!served.get(), "a refusal keeps no holder");
    }
    // Root names anyone; the ports are charged to root (the asker).
    let port = ask(&h, &peer(0, 1), 600).unwrap();
    let state = lock(&h.state);
    let r = state
        .table()
        .iter()
        .find(|r| r.block.start() == port)
        .unwrap();
    assert_eq!((r.holder.unwrap().uid, r.holder.unwrap().pid), (0, 600));
}

#[test]
fn the_quota_counts_both_ports_and_a_refusal_keeps_no_holder() {
    let h = Harness::with("", |c| c.quota = 3);
    h.kernel.spawn(500, ALICE);
    h.kernel.spawn(501, ALICE);
    let alice = peer(ALICE, 500);
    ask(&h, &alice, 500).unwrap();
    let refused = serve(&h.state, &alice, 501);
    assert_eq!(refused.result.unwrap_err().code, ErrorCode::QuotaExceeded);
    assert!(!refused.new_holder);
    h.kernel.exit(501);
    // 501's holder was dropped with the refusal: nothing to reap.
    assert!(lock(&h.state).reap_exited_holders(16).is_empty());
}

#[test]
fn a_process_that_exited_before_the_request_gets_nothing() {
    let h = Harness::new();
    h.kernel.spawn(500, ALICE);
    let alice = peer(ALICE, 500);
    ask(&h, &alice, 500).unwrap();
    h.kernel.exit(500);
    // Its pid comes back as a new process before the reaping: a new
    // holder, not the dead one's.
    h.kernel.spawn(500, ALICE);
    let served = serve(&h.state, &alice, 500);
    assert!(served.new_holder);
    served.result.unwrap();
    assert_eq!(lock(&h.state).reap_exited_holders(16), vec![ALICE]);
    assert_eq!(held(&h).len(), 2);
}

#[test]
fn a_peer_whose_pid_went_to_another_users_process_may_not_name_it() {
    // Alice's process 500 connected, handed the socket to a child and
    // exited; pid 500 is now Bob's when the line "500" arrives. Her
    // SO_PEERCRED pid is still 500: it proves nothing about process 500.
    let h = Harness::new();
    h.kernel.spawn(500, BOB);
    let stale = serve(&h.state, &peer(ALICE, 500), 500);
    assert_eq!(stale.result.unwrap_err().code, ErrorCode::AccessDenied);
    assert!(!stale.new_holder);
    assert!(held(&h).is_empty());
    // A setuid-root program she started (real uid hers) is hers to name:
    // the ports are charged to her, and end when it does.
    let ids = portres_kernel::process::ProcessIds {
        real_uid: ALICE,
        effective_uid: 0,
        ns_pid: 700,
    };
    h.kernel.state().processes.insert(700, (ids, Vec::new()));
    ask(&h, &peer(ALICE, 600), 700).unwrap();
    assert_eq!(
        lock(&h.state).table().runtime_ports_of(ALICE),
        2,
        "charged to the asker"
    );
}

#[test]
fn a_containers_first_process_naming_itself_pid_1_is_understood() {
    // `docker run image pytest`: pytest is pid 1 of its pid namespace and
    // portpicker sends its own pid, "1". The daemon sees it as pid 900.
    let h = Harness::new();
    let ids = portres_kernel::process::ProcessIds {
        real_uid: ALICE,
        effective_uid: ALICE,
        ns_pid: 1,
    };
    h.kernel.state().processes.insert(900, (ids, Vec::new()));
    let port = ask(&h, &peer(ALICE, 900), 1).unwrap();
    assert_eq!(
        held(&h),
        vec![(Protocol::Tcp, port, 900), (Protocol::Udp, port, 900)]
    );
    // Anyone else sending 1 (its own pid is not 1 anywhere) is refused,
    // as before.
    h.kernel.spawn(500, ALICE);
    let other = serve(&h.state, &peer(ALICE, 500), 1);
    assert_eq!(other.result.unwrap_err().code, ErrorCode::InvalidParameter);
}

#[test]
fn a_remembered_peer_namespace_is_forgotten_when_the_peer_exits() {
    // One worker's endpoint across requests: peer 900 is in the daemon's
    // pid namespace and says so once; it exits, and pid 900 goes to a
    // container's first process, which names itself "1". The endpoint must
    // ask again rather than trust what it knew of the old process.
    let h = Harness::new();
    let mut endpoint = Endpoint::new(lock(&h.state).kernel());
    h.kernel.spawn(900, ALICE);
    h.kernel.spawn(500, ALICE);
    let first =
        super::super::portserver::serve(&h.state, &mut endpoint, &peer(ALICE, 900), 500, true);
    first.result.unwrap();
    h.kernel.exit(900);
    let ids = portres_kernel::process::ProcessIds {
        real_uid: ALICE,
        effective_uid: ALICE,
        ns_pid: 1,
    };
    h.kernel.state().processes.insert(900, (ids, Vec::new()));
    let again =
        super::super::portserver::serve(&h.state, &mut endpoint, &peer(ALICE, 900), 1, true);
    let port = again
        .result
        .expect("the new process 900 naming itself is understood");
    assert!(held(&h).contains(&(Protocol::Tcp, port, 900)));
}

#[test]
fn a_reaped_holder_leaves_the_watch_while_the_endpoint_remembers_its_process() {
    // The endpoint keeps a pidfd of process 500 after the holder of its
    // ports is reaped. The holder's own pidfd must not be a duplicate of
    // it: an epoll registration lasts while any descriptor of the file is
    // open, and the exited process's pidfd, readable for good, would wake
    // the front's loop forever.
    let h = Harness::new();
    let mut endpoint = Endpoint::new(lock(&h.state).kernel());
    h.kernel.spawn(500, ALICE);
    let alice = peer(ALICE, 500);
    super::super::portserver::serve(&h.state, &mut endpoint, &alice, 500, true)
        .result
        .unwrap();
    h.kernel.exit(500);
    assert_eq!(lock(&h.state).reap_exited_holders(16), vec![ALICE]);
    let watch = lock(&h.state).holder_watch().unwrap();
    let mut events = Vec::with_capacity(4);
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    let n = rustix::event::epoll::wait(
        &watch,
        rustix::buffer::spare_capacity(&mut events),
        Some(&zero),
    )
    .unwrap();
    assert_eq!(n, 0, "the watch still reports the reaped holder");
    drop(endpoint);
}

#[test]
fn at_the_holder_cap_a_process_already_holding_is_still_served() {
    // The asker may make no more holders (its pidfd cap is reached): the
    // process that has one gets another port, a new process none, and
    // nothing is left behind for it.
    let h = Harness::new();
    let mut endpoint = Endpoint::new(lock(&h.state).kernel());
    h.kernel.spawn(500, ALICE);
    h.kernel.spawn(501, ALICE);
    let alice = peer(ALICE, 500);
    let serve = super::super::portserver::serve;
    serve(&h.state, &mut endpoint, &alice, 500, true)
        .result
        .unwrap();
    let again = serve(&h.state, &mut endpoint, &alice, 500, false);
    assert!(!again.new_holder);
    again
        .result
        .expect("a process with a live holder needs no new pidfd");
    let new = serve(&h.state, &mut endpoint, &alice, 501, false);
    assert_eq!(new.result.unwrap_err().code, ErrorCode::QuotaExceeded);
    assert!(!new.new_holder);
    assert_eq!(held(&h).len(), 4);
    assert!(held(&h).iter().all(|&(_, _, pid)| pid == 500));
}

#[test]
fn at_its_quota_a_request_makes_no_holder_to_drop() {
    // A user at its quota asking again and again for a process with no
    // ports must not make the daemon open, watch, and drop a holder (and
    // look through the table for what it holds) under the state lock each
    // time: the quota is checked before a holder is made.
    let h = Harness::with("", |c| c.quota = 2);
    let mut endpoint = Endpoint::new(lock(&h.state).kernel());
    h.kernel.spawn(500, ALICE);
    h.kernel.spawn(501, ALICE);
    let alice = peer(ALICE, 500);
    let serve = super::super::portserver::serve;
    serve(&h.state, &mut endpoint, &alice, 500, true)
        .result
        .unwrap();
    let sessions = lock(&h.state).session_count();
    let pidfds_of_501 = || h.kernel.state().processes[&501].1.len();
    for _ in 0..3 {
        let refused = serve(&h.state, &mut endpoint, &alice, 501, true);
        assert_eq!(refused.result.unwrap_err().code, ErrorCode::QuotaExceeded);
        assert!(!refused.new_holder);
    }
    assert_eq!(lock(&h.state).session_count(), sessions);
    // The endpoint's own (kept) pidfd only: no holder ever opened one.
    assert_eq!(pidfds_of_501(), 1);
}

#[test]
fn a_request_that_unwinds_after_making_a_holder_says_so() {
    // A bug that panics between making the holder and answering: the
    // holder stays (its process runs) and will be reaped, giving its
    // pidfd's charge back then; so the worker must know it was made and
    // not give the charge back at once as well (twice in all).
    let h = Harness::new();
    let mut endpoint = Endpoint::new(lock(&h.state).kernel());
    h.kernel.spawn(500, ALICE);
    h.kernel.state().on_probe = Some(crate::kernel::fake::ProbeHook(std::sync::Arc::new(|_| {
        panic!("a bug in the probe")
    })));
    let mut new_holder = false;
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        super::super::portserver::serve_recording(
            &h.state,
            &mut endpoint,
            &peer(ALICE, 500),
            500,
            true,
            &mut new_holder,
        )
    }));
    assert!(unwound.is_err());
    assert!(
        new_holder,
        "the holder made before the panic was not reported"
    );
    h.kernel.state().on_probe = None;
    h.kernel.exit(500);
    assert_eq!(lock(&h.state).reap_exited_holders(16), vec![ALICE]);
}

#[test]
fn a_request_refused_for_want_of_a_free_port_keeps_no_holder() {
    // The holder is made before the search; when no port is free on both
    // protocols it holds nothing and is dropped again (found empty by the
    // table's per-session index).
    let h = Harness::new();
    h.kernel.state().port_range = (40000, 40001);
    h.kernel.hold(Protocol::Tcp, 40000);
    h.kernel.hold(Protocol::Udp, 40001);
    h.kernel.spawn(500, ALICE);
    let sessions = lock(&h.state).session_count();
    let refused = serve(&h.state, &peer(ALICE, 500), 500);
    assert_eq!(refused.result.unwrap_err().code, ErrorCode::NoFreeBlock);
    assert!(!refused.new_holder);
    assert_eq!(lock(&h.state).session_count(), sessions);
    h.kernel.exit(500);
    assert!(lock(&h.state).reap_exited_holders(16).is_empty());
}
