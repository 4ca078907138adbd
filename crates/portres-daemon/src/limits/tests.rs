//! `Limits` on its own: admission caps, charges past a budget, and that
//! closing a connection gives back everything it charged.

use super::*;

const USER: u32 = 1000;

fn limits(max_connections: usize, per_uid: usize) -> Limits {
    let mut config = Config::for_current_user();
    config.max_connections = max_connections;
    config.max_connections_per_uid = per_uid;
    Limits::new(&config, 0)
}

#[test]
fn admission_counts_connections_total_and_per_user_root_exempt_from_the_latter() {
    let l = limits(3, 1);
    l.admit(USER).unwrap();
    assert_eq!(l.admit(USER).unwrap_err().kind, "per-user");
    l.admit(0).unwrap();
    l.admit(0).unwrap();
    assert_eq!(l.admit(0).unwrap_err().kind, "total");
    l.connection_closed(USER, Charged::default());
    l.admit(USER).unwrap();
}

#[test]
fn request_bytes_past_the_budget_refuse_and_root_is_exempt() {
    let l = limits(10, 10);
    let mut a = Charged::default();
    let mut b = Charged::default();
    a.settle(&l, USER, Held::RequestBytes, PER_UID_BUFFER_BUDGET)
        .unwrap();
    let why = b
        .settle(&l, USER, Held::RequestBytes, 1)
        .expect_err("one byte past the budget");
    assert!(why.contains("unfinished requests"), "{why}");
    // The refused connection closes and gives its charge back; the other
    // shrinks: room again.
    l.connection_closed(USER, b);
    a.settle(&l, USER, Held::RequestBytes, 0).unwrap();
    b = Charged::default();
    b.settle(&l, USER, Held::RequestBytes, 1).unwrap();
    let mut root = Charged::default();
    root.settle(&l, 0, Held::RequestBytes, 4 * PER_UID_BUFFER_BUDGET)
        .unwrap();
}

#[test]
fn unsent_replies_past_the_budget_pause_the_user_until_they_drain() {
    let l = limits(10, 10);
    let mut c = Charged::default();
    c.settle(&l, USER, Held::ReplyBytes, PER_UID_UNSENT_BUDGET)
        .unwrap();
    assert!(!l.unsent_over_budget(USER));
    c.settle(&l, USER, Held::ReplyBytes, PER_UID_UNSENT_BUDGET + 1)
        .unwrap();
    assert!(l.unsent_over_budget(USER));
    assert!(!l.unsent_over_budget(USER + 1));
    assert_eq!(l.users_over_unsent(), HashSet::from([USER]));
    l.connection_closed(USER, c);
    assert!(!l.unsent_over_budget(USER));
    assert!(l.users_over_unsent().is_empty());
}

#[test]
fn parked_descriptors_past_the_per_user_cap_refuse() {
    let l = limits(10, 10);
    let mut c = Charged::default();
    c.settle(&l, USER, Held::ParkedFds, PER_UID_PARKED_FDS)
        .unwrap();
    let why = c
        .settle(&l, USER, Held::ParkedFds, PER_UID_PARKED_FDS + 1)
        .expect_err("one past the cap");
    assert!(why.contains("descriptors"), "{why}");
    c.settle(&l, USER, Held::ParkedFds, 0).unwrap();
    c.settle(&l, USER, Held::ParkedFds, PER_UID_PARKED_FDS)
        .unwrap();
}

#[test]
fn job_threads_are_capped_per_user() {
    let l = limits(10, 10);
    for _ in 0..MAX_JOBS_PER_UID {
        assert!(l.start_job(USER));
    }
    assert!(!l.start_job(USER));
    assert!(l.start_job(USER + 1));
    l.end_job(USER);
    assert!(l.start_job(USER));
}

#[test]
fn pidfd_holders_are_capped_per_user_and_root_is_exempt() {
    let l = limits(10, 10);
    for _ in 0..PER_UID_PIDFD_HOLDERS {
        l.hold_pidfd(USER).unwrap();
    }
    let why = l.hold_pidfd(USER).expect_err("one past the cap");
    assert!(why.contains("processes"), "{why}");
    assert_eq!(l.pidfd_holders(USER), PER_UID_PIDFD_HOLDERS);
    l.hold_pidfd(0).unwrap();
    l.pidfd_released(USER);
    l.hold_pidfd(USER).unwrap();
    for _ in 0..PER_UID_PIDFD_HOLDERS + 5 {
        l.pidfd_released(USER);
    }
    assert_eq!(l.pidfd_holders(USER), 0);
    // Released more often than held: nothing goes below zero.
    l.hold_pidfd(USER).unwrap();
    assert_eq!(l.pidfd_holders(USER), 1);
}

#[test]
fn what_the_daemon_keeps_on_nobodys_account_comes_out_of_the_unprivileged_budget() {
    // 1024 descriptors, 40 open: 128 (an eighth) stay root's whatever the
    // portserver endpoints of 4 workers remember (64 pidfds each).
    assert_eq!(fd_budget_of(1024, 40, 0), 1024 - 40 - 128);
    assert_eq!(fd_budget_of(1024, 40, 4 * 64), 1024 - 40 - 256 - 128);
    assert_eq!(fd_budget_of(256, 40, 16 * 64), 0);
}
