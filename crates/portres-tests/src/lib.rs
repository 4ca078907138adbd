//! Shared fixtures for portres' integration tests: a private network
//! namespace per test (so the real kernel can be used without touching this
//! machine's settings), the daemon in-process or as a process, paths to the
//! built binaries, running commands as another user with `setpriv`, and the
//! seeded PRNG of the reliability tests and `portres-stress`.
//!
//! Tests that need root call `netns(name)`: without root they print a
//! SKIPPED line saying why — unless `PORTRES_REQUIRE_PRIVILEGED_TESTS=1`
//! (set by `.ci/run`), in which case they fail, so CI never passes a test
//! that did not run.
#![deny(missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use portres_core::PortSet;
use portres_kernel::sysctl::{ProcReservedPorts, ReservedPorts};

mod command;
mod daemon;
mod procstat;
mod raw;
mod rng;

pub use command::{Ran, as_user, cli, run, testkit};
pub use daemon::{InProcessDaemon, ProcessDaemon, daemon_command};
pub use procstat::{cpu_ticks, rss_mib, settled_rss_mib};
pub use raw::{RawClient, frame};
pub use rng::Rng;

/// Proof that the calling thread is in a private network namespace.
#[derive(Debug)]
pub struct Netns(());

/// Whether tests that cannot run here must fail instead of skipping
/// (`PORTRES_REQUIRE_PRIVILEGED_TESTS=1`, set by `.ci/run` as root).
pub fn skips_are_failures() -> bool {
    std::env::var_os("PORTRES_REQUIRE_PRIVILEGED_TESTS").is_some_and(|v| v == "1")
}

/// The skip rule, the one place it lives: `test` cannot run here because
/// of `why`. Prints `SKIPPED <test>: <why>`, or panics with the same text
/// when [`skips_are_failures`]. The caller returns after it.
#[track_caller]
pub fn skip(test: &str, why: impl std::fmt::Display) {
    if skips_are_failures() {
        panic!("{test}: {why} (PORTRES_REQUIRE_PRIVILEGED_TESTS=1: a test that cannot run fails)");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// Moves this test's thread into a fresh network namespace with loopback
/// up. `None` (after [`skip`]) when that needs privileges we lack.
#[track_caller]
pub fn netns(test: &str) -> Option<Netns> {
    match portres_kernel::netns::enter_private_netns() {
        Ok(()) => Some(Netns(())),
        Err(e) => {
            skip(
                test,
                format_args!("needs root for a private network namespace: {e}"),
            );
            None
        }
    }
}

/// The kernel's reserved ports in this thread's namespace.
pub fn kernel_reserved() -> PortSet {
    ProcReservedPorts::new()
        .read()
        .expect("read ip_local_reserved_ports")
}

/// Polls `cond` every 200 µs for up to 5 s; whether it became true. For
/// effects the daemon applies shortly after answering (a released block
/// leaves the kernel's list within `KERNEL_SHRINK_DELAY`).
pub fn eventually(mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Asserts that the kernel's reserved ports become exactly `expected`.
#[track_caller]
pub fn assert_kernel_settles_to(expected: &str) {
    let ok = eventually(|| kernel_reserved().to_string() == expected);
    assert!(
        ok,
        "ip_local_reserved_ports is {:?}, expected {expected:?}",
        kernel_reserved().to_string()
    );
}

/// Sets the kernel's reserved ports in this thread's namespace.
pub fn set_kernel_reserved(text: &str) {
    let set: PortSet = text.parse().expect("valid port set");
    ProcReservedPorts::new()
        .write(&set)
        .expect("write ip_local_reserved_ports");
}

/// Sets ip_local_port_range in this thread's namespace.
pub fn set_local_port_range(lo: u16, hi: u16) {
    std::fs::write(
        "/proc/sys/net/ipv4/ip_local_port_range",
        format!("{lo} {hi}"),
    )
    .expect("write ip_local_port_range");
}

/// A built binary of the workspace (`portres`, `portresd`), found next to
/// the test executable's target directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` before the tests (the README's test command does)",
        path.display()
    );
    path
}

/// A temporary directory others may traverse (the socket lives here and
/// tests run clients as other users).
pub fn open_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("portres-test")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    dir
}

/// The last `n` lines of a file (empty if it cannot be read).
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Opens (creating) a file for appending.
pub fn append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append")
}
