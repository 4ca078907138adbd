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
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use portres::Client;
use portres_core::PortSet;
use portres_daemon::{Config, Daemon, KernelSync};
use portres_kernel::sysctl::{ProcReservedPorts, ReservedPorts};

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

/// The daemon running inside this test process, on its own thread (which
/// inherits the test thread's network namespace).
#[derive(Debug)]
pub struct InProcessDaemon {
    /// Its socket.
    pub socket: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
    stop: Option<portres_daemon::StopHandle>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl InProcessDaemon {
    /// Starts a daemon with kernel sync on and default limits, tweaked by
    /// `tweak`.
    pub fn start(tweak: impl FnOnce(&mut Config)) -> InProcessDaemon {
        let dir = open_tempdir();
        let mut d = InProcessDaemon::start_in(dir.path(), tweak);
        d._dir = Some(dir);
        d
    }

    /// Starts a daemon whose socket and state live in `dir` (kept by the
    /// caller, e.g. to restart on the same store).
    pub fn start_in(dir: &Path, tweak: impl FnOnce(&mut Config)) -> InProcessDaemon {
        let mut config = Config::for_current_user();
        config.socket = dir.join("portres.sock");
        config.state_dir = dir.join("state");
        config.kernel_sync = KernelSync::On;
        tweak(&mut config);
        let socket = config.socket.clone();
        let state_dir = config.state_dir.clone();
        let daemon = Daemon::start(config).expect("daemon starts");
        let tx = daemon.stop_handle();
        let thread = std::thread::spawn(move || daemon.run().expect("daemon runs"));
        InProcessDaemon {
            socket,
            state_dir,
            stop: Some(tx),
            thread: Some(thread),
            _dir: None,
        }
    }

    /// A new client session.
    pub fn client(&self) -> Client {
        Client::connect_to(&self.socket).expect("connect")
    }

    /// Stops it cleanly and waits.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop.stop();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for InProcessDaemon {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// `portresd` as a child of this thread (so it inherits the thread's
/// private network namespace), its stderr appended to `DIR/portresd.log`
/// (a file, not a pipe: nobody reads a pipe while the daemon runs, and a
/// full one would stall its logging). Every incarnation in one directory
/// appends to the same log. Dropping it kills it.
#[derive(Debug)]
pub struct ProcessDaemon {
    /// The child.
    pub child: Child,
    /// Its socket, `DIR/portres.sock`.
    pub socket: PathBuf,
    /// Its state directory, `DIR/state`.
    pub state_dir: PathBuf,
    /// Its log, `DIR/portresd.log`.
    pub log: PathBuf,
}

/// The command line of a daemon living in `dir` (socket `dir/portres.sock`,
/// state `dir/state`, log appended to `dir/portresd.log`), kernel sync on
/// unless `extra` says otherwise.
pub fn daemon_command(dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("portresd"));
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
        .stderr(append(&dir.join("portresd.log")));
    cmd
}

impl ProcessDaemon {
    /// Starts `portresd` in `dir` with `extra` flags (see
    /// [`daemon_command`]) and waits until its socket accepts.
    pub fn start(dir: &Path, extra: &[&str]) -> ProcessDaemon {
        ProcessDaemon::spawn(daemon_command(dir, extra), dir)
    }

    /// Spawns `cmd`, a daemon living in `dir` (built from
    /// [`daemon_command`], perhaps wrapped or with a fault injected), and
    /// waits until its socket accepts.
    pub fn spawn(mut cmd: Command, dir: &Path) -> ProcessDaemon {
        let child = cmd.spawn().expect("spawn portresd");
        let mut d = ProcessDaemon::adopt(child, dir);
        d.wait_ready(Duration::from_secs(20));
        d
    }

    /// The daemon `child`, living in `dir`, started by the caller.
    pub fn adopt(child: Child, dir: &Path) -> ProcessDaemon {
        ProcessDaemon {
            child,
            socket: dir.join("portres.sock"),
            state_dir: dir.join("state"),
            log: dir.join("portresd.log"),
        }
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

    /// SIGKILL: a crash.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL `after` later if it is still there (a crash
    /// in the middle of a clean stop).
    pub fn term_then_kill(mut self, after: Duration) {
        self.sigterm();
        std::thread::sleep(after);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM and wait: a clean stop. Returns its whole log.
    pub fn terminate(mut self) -> String {
        self.sigterm();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn sigterm(&self) {
        let pid = i32::try_from(self.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .expect("pid");
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        log_tail(&self.log, n)
    }

    /// Runs `cmd` (a client of this daemon) to its end; on failure
    /// [`Ran::success`] shows this daemon's log tail with the command.
    pub fn run(&self, cmd: Command) -> Ran {
        let mut ran = Ran::of(cmd);
        ran.daemon_log = Some(self.log.clone());
        ran
    }
}

impl Drop for ProcessDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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

/// A command that has run: what it was, how it ended, what it printed,
/// and (from [`ProcessDaemon::run`]) the log of the daemon it talked to.
/// Its `Display` shows all of it, so `assert!(…, "{ran}")` explains a
/// failure on its own.
#[derive(Debug)]
pub struct Ran {
    /// The command line, as run.
    pub command: String,
    /// Exit status and raw output.
    pub out: Output,
    /// Its stdout, as text.
    pub stdout: String,
    /// Its stderr, as text.
    pub stderr: String,
    /// The log of the daemon it talked to, if known.
    pub daemon_log: Option<PathBuf>,
}

impl Ran {
    /// Runs `cmd` to its end (stdin closed unless the caller set it).
    pub fn of(mut cmd: Command) -> Ran {
        let command = format!("{cmd:?}");
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
        Ran {
            command,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            out,
            daemon_log: None,
        }
    }

    /// Asserts that it exited 0; otherwise panics showing everything.
    #[track_caller]
    pub fn success(self) -> Ran {
        assert!(self.out.status.success(), "command failed: {self}");
        self
    }

    /// Asserts that it exited with `code`; otherwise panics showing
    /// everything.
    #[track_caller]
    pub fn code(self, code: i32) -> Ran {
        assert_eq!(self.out.status.code(), Some(code), "{self}");
        self
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n{}\nstdout:\n{}\nstderr:\n{}",
            self.command, self.out.status, self.stdout, self.stderr
        )?;
        if let Some(log) = &self.daemon_log {
            write!(
                f,
                "\nlast lines of the daemon's log ({}):\n{}",
                log.display(),
                log_tail(log, 30)
            )?;
        }
        Ok(())
    }
}

/// The `portres` CLI pointed at `socket`.
pub fn cli(socket: &Path) -> Command {
    let mut cmd = Command::new(bin("portres"));
    cmd.arg("--socket")
        .arg(socket)
        .env_remove("PORTRES_SOCKET")
        .env_remove("PORTRES_SESSION_FD")
        .stdin(Stdio::null());
    cmd
}

/// `cmd` run as `uid`/`gid` with exactly `groups` as supplementary groups,
/// via setpriv (root only).
pub fn as_user(cmd: &Command, uid: u32, gid: u32, groups: &[u32]) -> Command {
    let mut out = Command::new("setpriv");
    out.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        out.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        out.arg(format!("--groups={}", list.join(",")));
    }
    out.arg("--").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => out.env(k, v),
            None => out.env_remove(k),
        };
    }
    out.stdin(Stdio::null());
    // Keep the child out of our process group's terminal signals.
    out.process_group(0);
    out
}

/// Runs and returns the output, with stdout/stderr as strings.
pub fn run(mut cmd: Command) -> (Output, String, String) {
    let out = cmd.output().expect("run command");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// The `portres-testkit` helper binary of this package.
pub fn testkit() -> PathBuf {
    bin("portres-testkit")
}

/// xorshift64*: small, fast, good enough to pick operations and delays.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced, xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1) ^ 0x9E37_79B9_7F4A_7C15)
    }

    /// The seed for a run: `PORTRES_RELIABILITY_SEED` if set, else the
    /// clock. Printed by the caller so a failing run can be repeated.
    pub fn seed_from_env() -> u64 {
        std::env::var("PORTRES_RELIABILITY_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
    }

    /// The next 64 random bits.
    #[allow(clippy::should_implement_trait)] // an endless generator, not an iterator
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// True with probability `per_mille`/1000.
    pub fn chance_per_mille(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }
}

/// One connection speaking the wire by hand, for tests of what the client
/// library would never send: odd framing, descriptors with the wrong
/// request, pipelining, floods. Replies are read byte by byte (up to the
/// NUL), with a 10 s read timeout so a silent daemon fails the test.
#[derive(Debug)]
pub struct RawClient(pub std::os::unix::net::UnixStream);

impl RawClient {
    /// Connects to `socket`.
    pub fn connect(socket: &Path) -> RawClient {
        let s = std::os::unix::net::UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connect {}: {e}", socket.display()));
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        RawClient(s)
    }

    /// One sendmsg() of `bytes` with `fds` attached (to the first byte).
    pub fn send(&self, bytes: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) {
        use std::os::fd::AsFd;
        portres_proto::fdpass::send_with_fds(self.0.as_fd(), bytes, fds).expect("sendmsg");
    }

    /// Sends `bytes` with `fds` and reads one reply; `None` if sending
    /// failed or the daemon closed the connection instead.
    pub fn request(
        &mut self,
        bytes: &[u8],
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> Option<serde_json::Value> {
        use std::os::fd::AsFd;
        portres_proto::fdpass::send_with_fds(self.0.as_fd(), bytes, fds).ok()?;
        self.reply()
    }

    /// The next reply; `None` if the daemon closed the connection (or the
    /// read timed out).
    pub fn reply(&mut self) -> Option<serde_json::Value> {
        use std::io::Read;
        let mut buf = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.0.read(&mut byte) {
                Ok(1) if byte[0] == 0 => break,
                Ok(1) => buf.push(byte[0]),
                _ => return None,
            }
        }
        Some(serde_json::from_slice(&buf).expect("replies are JSON"))
    }

    /// Calls `method` with `params` and returns the reply.
    #[track_caller]
    pub fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.call_with_fds(method, params, &[])
    }

    /// Calls `method` with `params` and `fds` attached; the reply.
    #[track_caller]
    pub fn call_with_fds(
        &mut self,
        method: &str,
        params: serde_json::Value,
        fds: &[std::os::fd::BorrowedFd<'_>],
    ) -> serde_json::Value {
        self.request(&frame(method, params, false), fds)
            .expect("the daemon answered")
    }
}

/// One call as a frame (JSON + NUL).
pub fn frame(method: &str, params: serde_json::Value, oneway: bool) -> Vec<u8> {
    let mut call = serde_json::json!({"method": method, "parameters": params});
    if oneway {
        call["oneway"] = serde_json::json!(true);
    }
    let mut v = serde_json::to_vec(&call).expect("JSON");
    v.push(0);
    v
}

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
