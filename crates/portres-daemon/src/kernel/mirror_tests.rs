//! Tests of `KernelMirror` alone, on the fake reserved-ports list (which
//! keeps every value the list held, so "no port went missing in between"
//! can be checked).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use portres_core::{Block, PortSet};

use super::KernelMirror;
use crate::kernel::fake::FakeKernel;

fn set(text: &str) -> PortSet {
    text.parse().unwrap()
}

fn block(start: u32, count: u32) -> Block {
    Block::new(start, count).unwrap()
}

/// A mirror synced to `start`, and the fake kernel behind it.
fn mirror_at(start: &str) -> (KernelMirror, FakeKernel) {
    let kernel = FakeKernel::default();
    let mut mirror = KernelMirror::new(Some(kernel.reserved_ports()));
    mirror.sync(set(start)).unwrap();
    kernel.state().reserved.history.clear();
    (mirror, kernel)
}

fn never() -> PortSet {
    panic!("the desired value was not needed here")
}

#[test]
fn growth_is_one_adding_write_of_just_the_new_block() {
    let (mut mirror, kernel) = mirror_at("1000,40000");
    let writes = kernel.reserved_writes();
    mirror.cover(block(41000, 10), never).unwrap();
    assert_eq!(kernel.reserved().to_string(), "1000,40000,41000-41009");
    assert_eq!(kernel.reserved_writes(), writes + 1);
    let history = kernel.state().reserved.history.clone();
    assert!(history.iter().all(|v| v.covers(&set("1000,40000"))));
    assert_eq!(mirror.value_text(), "1000,40000,41000-41009");
}

#[test]
fn a_block_the_list_already_holds_writes_nothing() {
    let (mut mirror, kernel) = mirror_at("40000-40099");
    let writes = kernel.reserved_writes();
    let generation = mirror.generation();
    mirror.cover(block(40010, 5), never).unwrap();
    assert_eq!(kernel.reserved_writes(), writes);
    assert_eq!(mirror.generation(), generation);
}

#[test]
fn a_released_block_leaves_only_after_a_whole_quiet_window() {
    let (mut mirror, kernel) = mirror_at("");
    mirror.cover(block(40000, 2), never).unwrap();
    mirror.release([block(40000, 2)]);
    assert!(mirror.shrink_pending());
    // First flush: released within this window, so kept one more.
    assert!(mirror.flush(PortSet::new), "another flush is due");
    assert_eq!(kernel.reserved().to_string(), "40000-40001");
    // Second flush: quiet for a whole window, gone; nothing more due.
    assert!(!mirror.flush(PortSet::new));
    assert_eq!(kernel.reserved().to_string(), "");
    assert!(!mirror.flush(never), "no shrink pending: nothing asked");
}

#[test]
fn churn_within_every_window_writes_nothing() {
    let (mut mirror, kernel) = mirror_at("");
    mirror.cover(block(40000, 2), never).unwrap();
    let writes = kernel.reserved_writes();
    for _ in 0..5 {
        mirror.release([block(40000, 2)]);
        mirror.cover(block(40000, 2), never).unwrap();
        assert!(mirror.flush(|| set("40000-40001")));
    }
    assert_eq!(kernel.reserved_writes(), writes);
}

#[test]
fn the_shrink_hook_fires_once_per_pending_shrink() {
    let (mut mirror, _kernel) = mirror_at("");
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    mirror.set_on_shrink_pending(Box::new(move || {
        counted.fetch_add(1, Ordering::Relaxed);
    }));
    mirror.release([block(40000, 1)]);
    mirror.release([block(40001, 1)]);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    mirror.flush(PortSet::new);
    mirror.flush(PortSet::new);
    mirror.release([block(40002, 1)]);
    assert_eq!(calls.load(Ordering::Relaxed), 2);
}

#[test]
fn a_shrink_of_a_long_list_is_one_replacing_write_that_fits() {
    let every_third = PortSet::from_ranges((20000..=44000).step_by(3).map(|p| (p, p)).collect());
    assert!(every_third.to_string().len() > portres_kernel::sysctl::MAX_WRITE);
    let (mut mirror, kernel) = mirror_at("");
    mirror.write(every_third.clone()).unwrap();
    assert_eq!(
        kernel.reserved(),
        every_third,
        "growth is exact at any length"
    );
    mirror.release([block(20000, 1)]);
    kernel.state().reserved.history.clear();
    let writes = kernel.reserved_writes();
    let desired = every_third.difference(&set("20000"));
    mirror.flush(|| desired.clone());
    mirror.flush(|| desired.clone());
    assert_eq!(kernel.reserved_writes(), writes + 1, "one write");
    let held = kernel.reserved();
    assert!(held.covers(&desired) && !held.contains(20000));
    assert!(held.to_string().len() <= portres_kernel::sysctl::MAX_WRITE);
}

#[test]
fn a_failed_write_leaves_the_value_unknown_and_the_next_change_writes_it_whole() {
    let (mut mirror, kernel) = mirror_at("1000");
    kernel.state().reserved.fail_writes = true;
    assert!(mirror.cover(block(40000, 1), never).is_err());
    assert_eq!(kernel.reserved().to_string(), "1000", "nothing written");
    // Unknown now: Status reads the list.
    assert_eq!(mirror.value_text(), "1000");
    kernel.state().reserved.fail_writes = false;
    mirror
        .cover(block(41000, 1), || set("1000,40000,41000"))
        .unwrap();
    assert_eq!(kernel.reserved().to_string(), "1000,40000,41000");
}

#[test]
fn a_check_of_an_unchanged_list_writes_nothing() {
    let (mut mirror, kernel) = mirror_at("1000,40000-40009");
    let writes = kernel.reserved_writes();
    mirror.check(never);
    assert_eq!(kernel.reserved_writes(), writes);
}

#[test]
fn a_list_someone_else_rewrote_is_restored_with_pending_releases_once() {
    let (mut mirror, kernel) = mirror_at("1000,40000-40009,41000");
    mirror.release([block(41000, 1)]);
    // `sysctl --system` puts the admin's value back.
    kernel.state().reserved.value = set("1000,2000");
    mirror.check(|| set("1000,40000-40009"));
    assert_eq!(
        kernel.reserved().to_string(),
        "1000,40000-40009,41000",
        "baseline, reservations and the port whose shrink is pending"
    );
    let writes = kernel.reserved_writes();
    mirror.check(never);
    assert_eq!(kernel.reserved_writes(), writes, "restored once");
}

#[test]
fn a_check_with_text_read_before_our_own_write_is_skipped() {
    let (mut mirror, kernel) = mirror_at("1000");
    let generation = mirror.generation();
    let stale = Ok("1000".to_string());
    mirror.cover(block(40000, 1), never).unwrap();
    mirror.check_text(generation, stale, never);
    assert_eq!(kernel.reserved().to_string(), "1000,40000");
    // Read at the current generation, a real change is seen.
    let now = mirror.generation();
    mirror.check_text(now, Ok("1000".to_string()), || set("1000,40000"));
    assert_eq!(kernel.reserved().to_string(), "1000,40000");
}

#[test]
fn an_unreadable_or_unparsable_list_is_left_alone() {
    let (mut mirror, kernel) = mirror_at("1000");
    let writes = kernel.reserved_writes();
    let generation = mirror.generation();
    mirror.check_text(generation, Err(std::io::Error::other("EIO")), never);
    mirror.check_text(generation, Ok("not ports".into()), never);
    assert_eq!(kernel.reserved_writes(), writes);
}

#[test]
fn a_candidate_is_taken_back_only_when_the_list_may_hold_it() {
    let (mut mirror, _kernel) = mirror_at("1000");
    mirror.forget_candidate(block(40000, 1));
    assert!(
        !mirror.shrink_pending(),
        "never written: nothing to take back"
    );
    mirror.forget_candidate(block(1000, 1));
    assert!(mirror.shrink_pending(), "the list holds it");
}

#[test]
fn without_kernel_sync_the_mirror_writes_and_reports_nothing() {
    let mut mirror = KernelMirror::new(None);
    assert!(!mirror.is_on());
    mirror.cover(block(40000, 1), never).unwrap();
    mirror.release([block(40000, 1)]);
    assert!(!mirror.flush(never));
    mirror.check(never);
    assert_eq!(mirror.value_text(), "");
    assert!(mirror.read().is_none() && mirror.text_reader().is_none());
}
