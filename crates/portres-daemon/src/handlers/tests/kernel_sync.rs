//! The kernel's reserved-ports list as requests change it: covered before
//! each answer, shrunk after the quiet window, restored after someone
//! else's change, never lacking a reserved port in between; sessions that
//! end and a clean shutdown.

use std::sync::{Arc, OnceLock};

use portres_core::{ErrorCode, PortSet, Protocol};

use super::Harness;
use crate::kernel::fake::ProbeHook;
use crate::state::lock;

#[test]
fn a_released_port_leaves_the_kernel_after_a_whole_quiet_window_and_churn_writes_nothing() {
    let h = Harness::new();
    let s = h.root();
    let cycle = || {
        let token = h.acquire_token(s, 40000, 2);
        h.release(s, token).unwrap();
    };
    let held = || h.kernel.reserved().to_string();
    cycle();
    assert_eq!(held(), "40000-40001", "covered before the answer");
    let after_first = h.kernel.reserved_writes();
    // Churn: acquired and released again within every window.
    for _ in 0..5 {
        cycle();
        assert!(lock(&h.state).flush_kernel(), "another flush is due");
        assert_eq!(held(), "40000-40001");
    }
    assert_eq!(
        h.kernel.reserved_writes(),
        after_first,
        "steady churn writes nothing"
    );
    // Quiet for a whole window: gone at the next flush, and nothing more
    // is due.
    assert!(!lock(&h.state).flush_kernel());
    assert_eq!(held(), "");
    assert!(!lock(&h.state).flush_kernel());
    assert_eq!(h.kernel.reserved_writes(), after_first + 1);
}

#[test]
fn a_long_list_never_lacks_a_reserved_port_while_it_grows_and_shrinks() {
    let h = Harness::with("1000-1009", |_| {});
    let s = h.root();
    // 4000 scattered one-port reservations: ~24 KB of text, six write
    // pieces.
    let tokens: Vec<_> = (0..4000u32)
        .map(|i| h.acquire_token(s, 20000 + 3 * i, 1))
        .collect();
    assert!(h.kernel.reserved().to_string().len() > 5 * 4092);
    let must_hold = || lock(&h.state).desired_kernel_value(false);
    h.kernel.state().reserved.history.clear();
    // Release every other one and acquire others, flushing meanwhile:
    // every value the kernel ever holds covers what is reserved.
    for (round, token) in tokens.iter().enumerate().filter(|(i, _)| i % 2 == 0) {
        h.release(s, *token).unwrap();
        let reserved = must_hold();
        if round % 100 == 0 {
            h.acquire(s, 33000 + round as u32, 1).unwrap();
            lock(&h.state).flush_kernel();
            lock(&h.state).flush_kernel();
        }
        let history = std::mem::take(&mut h.kernel.state().reserved.history);
        for value in history {
            assert!(value.covers(&reserved), "a reserved port left the kernel");
        }
    }
    lock(&h.state).flush_kernel();
    lock(&h.state).flush_kernel();
    let held = h.kernel.reserved();
    assert!(held.covers(&must_hold()));
    // 2000 scattered ports are too long for one write: the kernel holds
    // a coarser superset that fits one, no coarser than needed.
    let len = held.to_string().len();
    let max = portres_kernel::sysctl::MAX_WRITE;
    assert!(max - 12 < len && len <= max, "{len} bytes");
}

#[test]
fn a_refused_acquire_whose_block_a_flush_wrote_meanwhile_leaves_the_kernel() {
    // The candidate is in the table while it is probed; a flush then
    // (another session's release) writes it into the kernel. The probe
    // finds a port in use: the block must still leave the kernel.
    let h = Harness::new();
    let shared: Arc<OnceLock<Arc<std::sync::Mutex<crate::state::State>>>> =
        Arc::new(OnceLock::new());
    let inside = shared.clone();
    h.kernel.state().on_probe = Some(ProbeHook(Arc::new(move |port| {
        if port == 45000
            && let Some(state) = inside.get()
        {
            lock(state).flush_kernel();
        }
    })));
    shared.set(h.state.clone()).ok().unwrap();
    h.kernel.hold(Protocol::Tcp, 45099);
    let s = h.root();
    // A release leaves a shrink pending.
    let token = h.acquire_token(s, 50000, 1);
    h.release(s, token).unwrap();
    lock(&h.state).flush_kernel();
    let err = h.acquire(s, 45000, 100).unwrap_err();
    assert_eq!(err.code, ErrorCode::SharingViolation);
    assert!(
        h.kernel.reserved().contains(45000),
        "the flush wrote the candidate"
    );
    lock(&h.state).flush_kernel();
    lock(&h.state).flush_kernel();
    assert_eq!(
        h.kernel.reserved().to_string(),
        "",
        "converged to the baseline"
    );
    assert_eq!(lock(&h.state).kernel_value(), "", "and Status says so");
}

#[test]
fn a_list_someone_else_rewrote_is_restored_at_the_next_check() {
    let h = Harness::with("1000", |_| {});
    let s = h.root();
    h.acquire(s, 40000, 10).unwrap();
    let token = h.acquire_token(s, 41000, 1);
    h.release(s, token).unwrap();
    let writes = h.kernel.reserved_writes();
    lock(&h.state).check_kernel();
    assert_eq!(
        h.kernel.reserved_writes(),
        writes,
        "nothing changed: nothing written"
    );
    // `sysctl --system` puts the admin's value back.
    h.kernel.state().reserved.value = "1000,2000".parse().unwrap();
    lock(&h.state).check_kernel();
    assert_eq!(
        h.kernel.reserved().to_string(),
        "1000,40000-40009,41000",
        "baseline, reservations and the port whose shrink is pending"
    );
    let writes = h.kernel.reserved_writes();
    lock(&h.state).check_kernel();
    assert_eq!(h.kernel.reserved_writes(), writes, "restored once");
}

#[test]
fn a_closed_session_ends_its_runtime_reservations_only() {
    let h = Harness::new();
    let (a, b) = (h.stranger(), h.stranger());
    h.acquire(a, 40000, 2).unwrap();
    h.acquire(b, 41000, 2).unwrap();
    h.persistent(5000, 1, None);
    lock(&h.state).close_session(a);
    assert_eq!(lock(&h.state).counts(), (1, 1));
    lock(&h.state).flush_kernel();
    lock(&h.state).flush_kernel();
    assert_eq!(h.kernel.reserved().to_string(), "5000,41000-41001");
}

#[test]
fn a_clean_shutdown_leaves_the_baseline_and_persistent_blocks() {
    let h = Harness::with("1000", |_| {});
    h.acquire(h.stranger(), 40000, 2).unwrap();
    h.persistent(5000, 1, None);
    lock(&h.state).shutdown();
    assert_eq!(h.kernel.reserved().to_string(), "1000,5000");
}

#[test]
fn a_restart_drops_runtime_blocks_a_crashed_daemon_left() {
    let h = Harness::with("1000", |_| {});
    // What a crashed predecessor left: its runtime block 40000.
    h.kernel.state().reserved.value = "1000,40000".parse().unwrap();
    let dir = h.dir.path().join("state");
    let config = lock(&h.state).config().clone();
    let store = portres_store::Store::open(&dir).unwrap();
    let kernel = h.kernel.clone();
    crate::state::State::new(
        config,
        store,
        Arc::new(kernel.clone()),
        Some(kernel.reserved_ports()),
    )
    .unwrap();
    assert_eq!(h.kernel.reserved().to_string(), "1000");
}

#[test]
fn without_kernel_sync_requests_work_and_the_kernel_list_is_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = crate::config::Config::for_current_user();
    config.state_dir = dir.path().join("state");
    config.mode = crate::config::Mode::System;
    let store = portres_store::Store::open(&config.state_dir).unwrap();
    let kernel = crate::kernel::fake::FakeKernel::default();
    kernel.state().reserved.value = "7".parse().unwrap();
    let state = crate::state::State::new(config, store, Arc::new(kernel.clone()), None).unwrap();
    let state = std::sync::Mutex::new(state);
    let s = lock(&state).open_session(portres_core::Caller {
        uid: 1002,
        gid: 1002,
        groups: vec![],
        pid: 1,
        admin: false,
    });
    let r = super::runtime::acquire(&state, s, super::tcp(0, 4), None).unwrap();
    assert_eq!(r.reservation.start, 32768);
    let status = lock(&state).status(s).unwrap();
    assert!(!status.kernel_sync);
    assert_eq!(
        (status.reserved_ports.as_str(), status.baseline.as_str()),
        ("", "")
    );
    assert_eq!(kernel.reserved(), "7".parse::<PortSet>().unwrap());
    assert_eq!(kernel.reserved_writes(), 0);
}
