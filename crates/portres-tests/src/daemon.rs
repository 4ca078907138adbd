//! The daemon under test: in-process on its own thread ([`InProcessDaemon`])
//! or as a process ([`ProcessDaemon`]), and reading its log.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portres::Client;
use portres_daemon::{Config, Daemon, KernelSync};

use crate::command::Ran;
use crate::{append, bin, log_tail, open_tempdir};

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
    /// Starts a daemon with kernel sync on, strict mode off and default limits, tweaked by
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
        // Never the machine's root cgroup: strict mode's tests say where.
        config.enforce = portres_daemon::Enforce::Off;
        // Never the machine's own /etc/portres.d.
        config.config_dirs = vec![dir.join("portres.d")];
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
/// state `dir/state`, log appended to `dir/portresd.log`, declared
/// reservations from `dir/portres.d`), kernel sync on unless `extra` says
/// otherwise, strict mode off unless `extra` has `--enforce`, and
/// `--config-dir` as `extra` says, if it does.
pub fn daemon_command(dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(bin("portresd"));
    cmd.arg("--socket")
        .arg(dir.join("portres.sock"))
        .arg("--state-dir")
        .arg(dir.join("state"));
    if !extra.contains(&"--kernel-sync") {
        cmd.args(["--kernel-sync", "on"]);
    }
    // Never the machine's root cgroup: strict mode's tests say where.
    if !extra.contains(&"--enforce") {
        cmd.args(["--enforce", "off"]);
    }
    if !extra.contains(&"--config-dir") {
        cmd.arg("--config-dir").arg(dir.join("portres.d"));
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
