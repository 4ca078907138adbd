//! Acquire: first fit in the dynamic range, the quota, the baseline, the
//! in-use probe and its budget; each refusal changes nothing.

use portres_core::{ErrorCode, Protocol};

use super::super::runtime::EXTRA_PROBES_PER_ACQUIRE;
use super::{Harness, unit};

#[test]
fn a_wildcard_acquire_takes_the_first_free_block_of_the_dynamic_range() {
    let h = Harness::new();
    let s = h.stranger();
    assert_eq!(h.acquire(s, 0, 4).unwrap().start, 32768);
    assert_eq!(h.acquire(s, 0, 1).unwrap().start, 32772);
    h.acquire(s, 32780, 5).unwrap();
    // 32773..32779 holds 7: a block of 8 goes after 32784.
    assert_eq!(h.acquire(s, 0, 8).unwrap().start, 32785);
    assert_eq!(h.acquire(s, 0, 7).unwrap().start, 32773);
}

#[test]
fn a_released_block_is_first_fit_again() {
    let h = Harness::new();
    let s = h.stranger();
    let first = h.acquire_token(s, 0, 4);
    h.acquire(s, 0, 4).unwrap();
    h.release(s, first).unwrap();
    assert_eq!(h.acquire(s, 0, 4).unwrap().start, 32768);
}

#[test]
fn the_dynamic_range_is_the_kernels() {
    let h = Harness::new();
    h.kernel.state().port_range = (50000, 50009);
    let s = h.stranger();
    assert_eq!(h.acquire(s, 0, 10).unwrap().start, 50000);
    let err = h.refused(ErrorCode::NoFreeBlock, || unit(h.acquire(s, 0, 1)));
    assert!(err.message.contains("50000-50009"), "{err}");
}

#[test]
fn the_quota_counts_runtime_ports_per_uid_across_sessions() {
    let h = Harness::with("", |c| c.quota = 10);
    let (a, b) = (h.stranger(), h.stranger());
    h.acquire(a, 0, 6).unwrap();
    h.acquire(b, 0, 4).unwrap();
    let err = h.refused(ErrorCode::QuotaExceeded, || unit(h.acquire(b, 0, 1)));
    assert!(err.message.contains("holds 10"), "{err}");
    // Another uid has its own quota; persistent blocks count for nobody.
    h.acquire(h.owner_user(), 0, 10).unwrap();
    h.persistent(5000, 100, Some(portres_core::Owner::User(1002)));
    h.refused(ErrorCode::QuotaExceeded, || unit(h.acquire(a, 0, 1)));
}

#[test]
fn releasing_gives_quota_back() {
    let h = Harness::with("", |c| c.quota = 4);
    let s = h.stranger();
    let token = h.acquire_token(s, 0, 4);
    h.refused(ErrorCode::QuotaExceeded, || unit(h.acquire(s, 0, 1)));
    h.release(s, token).unwrap();
    h.acquire(s, 0, 4).unwrap();
}

#[test]
fn the_quota_applies_to_admin_group_members_but_not_root() {
    let h = Harness::with("", |c| c.quota = 2);
    let member = h.admin_member();
    h.acquire(member, 0, 2).unwrap();
    h.refused(ErrorCode::QuotaExceeded, || unit(h.acquire(member, 0, 1)));
    h.acquire(h.root(), 0, 100).unwrap();
}

#[test]
fn the_quota_closes_a_session_ending_its_reservations() {
    let h = Harness::with("", |c| c.quota = 4);
    let s = h.stranger();
    h.acquire(s, 0, 4).unwrap();
    crate::state::lock(&h.state).close_session(s);
    h.acquire(h.stranger(), 0, 4).unwrap();
}

#[test]
fn a_bad_count_or_range_is_invalid_and_changes_nothing() {
    let h = Harness::new();
    let s = h.stranger();
    for (start, count) in [(40000, 0), (40000, 65536), (65535, 2), (70000, 1)] {
        h.refused(ErrorCode::InvalidParameter, || {
            unit(h.acquire(s, start, count))
        });
    }
}

#[test]
fn an_overlap_with_another_reservation_is_a_sharing_violation() {
    let h = Harness::new();
    h.acquire(h.owner_user(), 40000, 10).unwrap();
    let s = h.stranger();
    h.refused(ErrorCode::SharingViolation, || unit(h.acquire(s, 40009, 2)));
    // Another protocol is another port space.
    let p = super::tcp(40000, 10);
    let udp = portres_proto::AcquireParams {
        protocol: Protocol::Udp,
        ..p
    };
    super::runtime::acquire(&h.state, s, udp, None).unwrap();
}

#[test]
fn the_baselines_ports_are_refused_to_an_explicit_start() {
    let h = Harness::with("33000-33009", |_| {});
    let s = h.root();
    let err = h.refused(ErrorCode::SharingViolation, || {
        unit(h.acquire(s, 32995, 10))
    });
    assert!(err.message.contains("33000-33004"), "{err}");
    // Next to it is fine; a wildcard search goes around it.
    h.acquire(s, 33010, 1).unwrap();
    assert_eq!(h.acquire(s, 32999, 1).unwrap().start, 32999);
    assert_eq!(h.acquire(s, 0, 300).unwrap().start, 33011);
}

#[test]
fn a_port_in_use_refuses_an_explicit_start_and_is_skipped_by_a_wildcard() {
    let h = Harness::new();
    h.kernel.hold(Protocol::Tcp, 40005);
    let s = h.stranger();
    let err = h.refused(ErrorCode::SharingViolation, || {
        unit(h.acquire(s, 40000, 10))
    });
    assert!(err.message.contains("40005 is in use"), "{err}");
    h.kernel.state().port_range = (40000, 40100);
    assert_eq!(h.acquire(s, 0, 10).unwrap().start, 40006);
}

#[test]
fn a_wildcard_search_past_8000_busy_ports_probes_each_port_once() {
    let h = Harness::new();
    // 8000 ordinary sockets at the bottom of the dynamic range.
    for port in 32768..40768 {
        h.kernel.hold(Protocol::Tcp, port);
    }
    let s = h.root();
    assert_eq!(h.acquire(s, 0, 1).unwrap().start, 40768);
    assert_eq!(std::mem::take(&mut h.kernel.state().probes), 8001);
    // The next search skips the reserved 40768 without probing ports
    // whose blocks would hold it (40753..40767).
    assert_eq!(h.acquire(s, 0, 16).unwrap().start, 40769);
    assert_eq!(h.kernel.state().probes, 7985 + 16);
}

#[test]
fn a_wildcard_block_search_past_scattered_busy_ports_probes_each_port_at_most_once() {
    let h = Harness::new();
    // Every 10th port busy up to 36760: no block of 16 fits below.
    for port in (32770..=36760).step_by(10) {
        h.kernel.hold(Protocol::Tcp, port);
    }
    assert_eq!(h.acquire(h.root(), 0, 16).unwrap().start, 36761);
    assert_eq!(h.kernel.state().probes, 36776 - 32768 + 1);
}

#[test]
fn a_wildcard_search_through_a_range_full_of_sockets_gives_up_within_its_probe_budget() {
    let h = Harness::new();
    for port in 32768..=60999 {
        h.kernel.hold(Protocol::Tcp, port);
    }
    let s = h.root();
    let err = h.refused(ErrorCode::NoFreeBlock, || unit(h.acquire(s, 0, 4)));
    assert!(err.message.contains("gave up"), "{err}");
    assert_eq!(h.kernel.state().probes, EXTRA_PROBES_PER_ACQUIRE + 4);
}

#[test]
fn an_acquire_is_in_the_kernel_before_it_is_answered() {
    let h = Harness::with("1000", |_| {});
    h.acquire(h.stranger(), 40000, 3).unwrap();
    assert_eq!(h.kernel.reserved().to_string(), "1000,40000-40002");
}

#[test]
fn an_acquire_the_kernel_refuses_is_taken_back() {
    let h = Harness::new();
    h.kernel.state().reserved.fail_writes = true;
    let s = h.stranger();
    let before = h.snapshot();
    let err = h.acquire(s, 40000, 1).unwrap_err();
    assert_eq!(err.code, ErrorCode::Internal);
    assert_eq!(h.snapshot().table, before.table);
    // The kernel works again: the next acquire writes the whole value.
    h.kernel.state().reserved.fail_writes = false;
    h.acquire(s, 40000, 1).unwrap();
    assert_eq!(h.kernel.reserved().to_string(), "40000");
}

#[test]
fn a_label_with_control_characters_is_refused() {
    let h = Harness::new();
    let s = h.stranger();
    let p = portres_proto::AcquireParams {
        label: Some("a\nb".into()),
        ..super::tcp(40000, 1)
    };
    h.refused(ErrorCode::InvalidParameter, || {
        unit(super::runtime::acquire(&h.state, s, p, None))
    });
    let long = portres_proto::AcquireParams {
        label: Some("x".repeat(crate::state::MAX_LABEL_BYTES + 1)),
        ..super::tcp(40000, 1)
    };
    h.refused(ErrorCode::InvalidParameter, || {
        unit(super::runtime::acquire(&h.state, s, long, None))
    });
}
