//! Helpers shared by the reliability tests (crash, client death,
//! concurrency, hostile input, store faults, privilege): the seeded PRNG
//! (from the library; its seed is printed so a failure can be replayed),
//! the scale knobs of the long runs, and overlap checks. The daemon fixture
//! is the library's (`portres_tests::ProcessDaemon`).
#![allow(dead_code)]

use portres::ReservationInfo;

#[allow(unused_imports)] // not every test file draws random numbers
pub use portres_tests::Rng;

/// A scale knob of the long runs: the environment variable `name` as a
/// number, else `default`.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Every reservation that shares a port with an earlier one (by start) of
/// the same protocol, described.
pub fn overlaps(list: &[ReservationInfo]) -> Vec<String> {
    let mut v: Vec<&ReservationInfo> = list.iter().collect();
    v.sort_by_key(|r| (r.protocol.as_str(), r.start));
    let mut out = Vec::new();
    // The reservation reaching furthest so far, per protocol.
    let mut reach: Option<&ReservationInfo> = None;
    for r in v {
        let end = |x: &ReservationInfo| u32::from(x.start) + u32::from(x.count);
        match reach {
            Some(prev) if prev.protocol == r.protocol && end(prev) > u32::from(r.start) => {
                out.push(format!(
                    "{} {}+{} overlaps {}+{}",
                    r.protocol, prev.start, prev.count, r.start, r.count
                ));
                if end(r) > end(prev) {
                    reach = Some(r);
                }
            }
            _ => reach = Some(r),
        }
    }
    out
}

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of the
/// machine, so events logged by separate client processes can be ordered.
pub fn mono_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}
