//! portres scenarios against a real `portresd` process (the release build
//! next to this binary), kernel sync on, in this process's private network
//! namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portres::{Client, CreateOptions, Protocol};

use crate::stats::{Samples, timed};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// A running daemon.
pub struct Daemon {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
    /// How long from spawn until the socket accepted a connection.
    pub start_to_ready: Duration,
}

impl Daemon {
    /// Starts `portresd` on `dir` (socket and state inside), strict mode
    /// off, and waits until its socket accepts.
    pub fn start(dir: &Path) -> Daemon {
        Daemon::start_with(dir, &[]).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `start` with more flags for portresd (strict mode off unless they
    /// say `--enforce`); `Err` says why it did not come up (it exited: the
    /// first line of its stderr, e.g. a flag this build does not know).
    pub fn start_with(dir: &Path, extra: &[&str]) -> Result<Daemon, String> {
        let socket = dir.join("portres.sock");
        // portresd creates no directory for a --socket outside its defaults.
        std::fs::create_dir_all(dir).expect("the daemon's directory");
        let exe = std::env::current_exe().expect("current_exe");
        let portresd = exe.with_file_name("portresd");
        assert!(
            portresd.exists(),
            "{} missing: build it (bench/run does)",
            portresd.display()
        );
        // With extra flags, stderr goes to a file, to tell why it exited.
        let log = dir.join("portresd.err");
        let stderr = if extra.is_empty() {
            Stdio::inherit()
        } else {
            std::fs::File::create(&log)
                .map(Stdio::from)
                .map_err(|e| format!("{}: {e}", log.display()))?
        };
        let t = Instant::now();
        let mut child = Command::new(portresd)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--kernel-sync")
            .arg("on")
            .arg("--max-connections-per-user")
            .arg("100000")
            .args(extra)
            .args(if extra.contains(&"--enforce") {
                &[][..]
            } else {
                &["--enforce", "off"][..]
            })
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn portresd");
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let why = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
                return Err(format!("portresd exited ({status}): {}", why.trim()));
            }
            if t.elapsed() > Duration::from_secs(60) {
                let _ = child.kill();
                let _ = child.wait();
                return Err("portresd did not start within 60 s".into());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(Daemon {
            child,
            socket,
            start_to_ready: t.elapsed(),
        })
    }

    /// Its process id (for profiling: `perf record -p`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A new session.
    pub fn client(&self) -> Client {
        Client::connect_to(&self.socket).expect("connect")
    }

    /// Resident set size of the daemon, in bytes.
    pub fn rss(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .expect("VmRSS")
    }

    /// Stops it (SIGTERM) and waits.
    pub fn stop(mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `op` in a loop on `clients` threads (each its own session) for `dur`.
pub fn run_clients(
    d: &Daemon,
    clients: usize,
    dur: Duration,
    op: impl Fn(&Client) + Send + Sync + Clone + 'static,
) -> Samples {
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(clients + 1));
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let c = d.client();
            let op = op.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                // Warm up the connection, then start together.
                op(&c);
                barrier.wait();
                timed(dur, || op(&c))
            })
        })
        .collect();
    barrier.wait();
    let start = Instant::now();
    Samples::join(handles, start)
}

/// acquire(1 port) + bind a TCP listener into it + release: three round trips.
pub fn acquire_bind_release(c: &Client) {
    let r = c.acquire(Protocol::Tcp, 0, 1).expect("acquire");
    let l = r.bind_tcp(LOCALHOST).expect("bind");
    r.release().expect("release");
    drop(l);
}

/// acquire(1 port) + release: two round trips.
pub fn acquire_release(c: &Client) {
    c.acquire(Protocol::Tcp, 0, 1)
        .expect("acquire")
        .release()
        .expect("release");
}

/// Binds into an already-held block, repeatedly (one round trip each).
pub fn bind_held(d: &Daemon, dur: Duration) -> Samples {
    let c = d.client();
    let r = c.acquire(Protocol::Tcp, 0, 64).expect("acquire");
    let token = r.token();
    let _keep = r.keep();
    run_clients_single(c, dur, move |c| {
        let l = c.bind_tcp(token, LOCALHOST).expect("bind");
        drop(l);
    })
}

/// Durable create + delete of a persistent reservation (two fsyncs).
pub fn create_delete(d: &Daemon, dur: Duration) -> Samples {
    let c = d.client();
    let mut port = 20000u16;
    let start = Instant::now();
    let lat = timed(dur, || {
        port = if port >= 29999 { 20000 } else { port + 1 };
        c.create(Protocol::Udp, port, 1, CreateOptions::default())
            .expect("create");
        c.delete(Protocol::Udp, port, 1).expect("delete");
    });
    Samples::merge(vec![lat], start.elapsed())
}

fn run_clients_single(c: Client, dur: Duration, op: impl Fn(&Client)) -> Samples {
    op(&c);
    let start = Instant::now();
    let lat = timed(dur, || op(&c));
    Samples::merge(vec![lat], start.elapsed())
}

/// What the "many" scenario measured.
pub struct Many {
    /// RSS with the reservations and sessions held.
    pub rss: u64,
    /// `list` latency with every reservation and socket present.
    pub list: Samples,
    /// How many reservations and sockets were present.
    pub reservations: usize,
    /// Sockets bound.
    pub sockets: usize,
    /// Time to set it all up.
    pub setup: Duration,
}

/// `sessions` sessions each holding `per_session` one-port runtime
/// reservations, one TCP listener bound into each; then RSS and `list`.
pub fn many(d: &Daemon, sessions: usize, per_session: usize) -> Many {
    let t = Instant::now();
    let mut clients = Vec::with_capacity(sessions);
    let mut sockets = Vec::with_capacity(sessions * per_session);
    for _ in 0..sessions {
        let c = d.client();
        for _ in 0..per_session {
            let r = c.acquire(Protocol::Tcp, 0, 1).expect("acquire");
            sockets.push(r.bind_tcp(LOCALHOST).expect("bind"));
            let _ = r.keep();
        }
        clients.push(c);
    }
    let setup = t.elapsed();
    let rss = d.rss();
    let observer = d.client();
    let reservations = observer.list(None).expect("list").len();
    let mut lat = Vec::new();
    let start = Instant::now();
    for _ in 0..20 {
        let t = Instant::now();
        let l = observer.list(None).expect("list");
        lat.push(t.elapsed());
        assert_eq!(l.len(), reservations);
    }
    let list = Samples::merge(vec![lat], start.elapsed());
    Many {
        rss,
        list,
        reservations,
        sockets: sockets.len(),
        setup,
    }
}

/// Creates `n` persistent one-port reservations (durably, through the
/// daemon) so a restart has them to restore.
pub fn fill_persistent(d: &Daemon, n: usize) -> Duration {
    let t = Instant::now();
    let workers = 8;
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let c = d.client();
            std::thread::spawn(move || {
                let mut i = w;
                while i < n {
                    // Every other port from 2000 so blocks do not merge.
                    let port = 2000 + 2 * i as u32;
                    c.create(Protocol::Tcp, port as u16, 1, CreateOptions::default())
                        .expect("create");
                    i += workers;
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("filler");
    }
    t.elapsed()
}

/// What the "busy ports" scenario measured.
pub struct BusyPorts {
    /// Ordinary sockets bound at the bottom of the dynamic range.
    pub busy: usize,
    /// `acquire(tcp, any, 1)` latency, each search walking past all of them.
    pub acquire: Samples,
    /// Another client's `status` latency meanwhile.
    pub status: Samples,
}

/// `busy` TCP listeners (not through portres) on the lowest ports of the
/// dynamic range, then wildcard acquire + release in a loop for `dur`
/// while another session asks for `status` (served by another worker, or
/// the same one: whichever the daemon picked).
pub fn busy_ports(d: &Daemon, busy: usize, dur: Duration) -> BusyPorts {
    let (lo, _) = portres_kernel::sysctl::local_port_range().expect("port range");
    let sockets: Vec<_> = (0..busy)
        .map(|i| std::net::TcpListener::bind((LOCALHOST, lo + i as u16)).expect("bind a busy port"))
        .collect();
    let c = d.client();
    let first = c.acquire(Protocol::Tcp, 0, 1).expect("acquire");
    assert_eq!(
        first.start() as usize,
        lo as usize + busy,
        "past the busy ports"
    );
    first.release().expect("release");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let observer = {
        let o = d.client();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut lat = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                o.status().expect("status");
                lat.push(t.elapsed());
                std::thread::sleep(Duration::from_millis(1));
            }
            Samples::merge(vec![lat], start.elapsed())
        })
    };
    let start = Instant::now();
    let lat = timed(dur, || {
        c.acquire(Protocol::Tcp, 0, 1)
            .expect("acquire")
            .release()
            .expect("release");
    });
    let acquire = Samples::merge(vec![lat], start.elapsed());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let status = observer.join().expect("observer");
    drop(sockets);
    BusyPorts {
        busy,
        acquire,
        status,
    }
}
