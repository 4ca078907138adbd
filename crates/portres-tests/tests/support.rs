//! Helpers shared by the reliability tests (crash, client death,
//! concurrency, hostile input, store faults, privilege): the seeded PRNG
//! (from the library; its seed is printed so a failure can be replayed),
//! `portresd` as a child whose log goes to a file (a pipe nobody reads would
//! stall a chatty daemon), the scale knobs of the long runs, and overlap
//! checks.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portres::{Client, ReservationInfo};

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

/// `portresd` as a child of this thread (so it inherits the thread's
/// private network namespace), its stderr appended to a log file.
#[derive(Debug)]
pub struct Daemon {
    /// The child process.
    pub child: Child,
    /// Its socket.
    pub socket: PathBuf,
    /// Its log file (every incarnation in `dir` appends to it).
    pub log: PathBuf,
}

/// The command line of a daemon living in `dir` (socket `dir/portres.sock`,
/// state `dir/state`, log `dir/portresd.log`), kernel sync on unless
/// `extra` says otherwise.
pub fn daemon_command(dir: &Path, extra: &[&str]) -> Command {
    let log = dir.join("portresd.log");
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
        .expect("open daemon log");
    let mut cmd = Command::new(portres_tests::bin("portresd"));
    cmd.arg("--socket")
        .arg(dir.join("portres.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"));
    if !extra.contains(&"--kernel-sync") {
        cmd.args(["--kernel-sync", "on"]);
    }
    cmd.args(extra)
        .env_remove("PORTRES_SOCKET")
        .env_remove("PORTRES_SESSION_FD")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    cmd
}

impl Daemon {
    /// Starts a daemon in `dir` and waits until its socket accepts.
    pub fn start(dir: &Path, extra: &[&str]) -> Daemon {
        let child = daemon_command(dir, extra).spawn().expect("spawn portresd");
        let mut d = Daemon {
            child,
            socket: dir.join("portres.sock"),
            log: dir.join("portresd.log"),
        };
        d.wait_ready(Duration::from_secs(20));
        d
    }

    /// Waits until the socket accepts, panicking (with the log) if the
    /// daemon exits or `limit` passes.
    pub fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if std::os::unix::net::UnixStream::connect(&self.socket).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "portresd exited at start ({status}); log:\n{}",
                    self.log_tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "portresd did not become ready; log:\n{}",
                self.log_tail(40)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// A new client session.
    pub fn client(&self) -> Client {
        Client::connect_to(&self.socket).expect("connect to portresd")
    }

    /// SIGKILL and reap.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL `after` later if it is still there (a crash
    /// in the middle of a clean stop).
    pub fn term_then_kill(mut self, after: Duration) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        std::thread::sleep(after);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(mut self) {
        let pid = rustix::process::Pid::from_raw(self.child.id() as i32).expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }

    /// The last `n` lines of the log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `n` lines of a file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Opens (creating) a file for appending.
pub fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open for append")
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
