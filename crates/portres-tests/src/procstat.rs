//! A process's memory and CPU use, read from `/proc`.

use std::time::{Duration, Instant};

/// The daemon's resident memory in MiB.
pub fn rss_mib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|k| k.parse::<u64>().ok())
        .unwrap()
        / 1024
}

/// The daemon's CPU time so far, in clock ticks (utime + stime).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Polls until the daemon is done with what it was sent: over the last
/// second (five samples 200 ms apart) its RSS moved by at most 1 MiB and it
/// used under a quarter of a CPU; or 60 s pass. Its RSS then, in MiB.
pub fn settled_rss_mib(pid: u32) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut samples = vec![(rss_mib(pid), cpu_ticks(pid))];
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        samples.push((rss_mib(pid), cpu_ticks(pid)));
        let last = &samples[samples.len().saturating_sub(6)..];
        let rss = last.iter().map(|s| s.0);
        let spread = rss.clone().max().unwrap() - rss.min().unwrap();
        let ticks = last.last().unwrap().1 - last[0].1;
        if last.len() == 6 && spread <= 1 && ticks < 25 {
            break;
        }
    }
    samples.last().unwrap().0
}
