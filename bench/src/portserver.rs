//! Google's portserver (portpicker 1.6.0, `portserver.py`), installed from
//! PyPI into a private virtualenv and started on a private socket, driven
//! the way portpicker's client drives it: connect, send a pid, read a
//! port, close. The same driver measures portres' endpoint for that
//! protocol (`portresd --portserver @name`), so both are timed alike.

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::stats::Samples;

/// The pinned version compared against.
pub const VERSION: &str = "1.6.0";

/// A running portserver.
pub struct PortServer {
    child: Child,
    /// Its socket.
    pub socket: PathBuf,
}

/// Where a portserver listens: a path, or `@name` (abstract), as
/// `PORTSERVER_ADDRESS` writes it.
#[derive(Clone, Debug)]
pub struct Address(pub String);

impl Address {
    fn connect(&self) -> std::io::Result<UnixStream> {
        match self.0.strip_prefix('@') {
            Some(name) => UnixStream::connect_addr(&SocketAddr::from_abstract_name(name)?),
            None => UnixStream::connect(&self.0),
        }
    }

    /// Waits until something accepts here (a daemon may open its varlink
    /// socket first); `Err` after `limit`.
    pub fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        let t = Instant::now();
        loop {
            match self.connect() {
                Ok(_) => return Ok(()),
                Err(e) if t.elapsed() > limit => {
                    return Err(format!("{} does not accept: {e}", self.0));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    }
}

/// Requests made for one holder process before the next replaces it.
/// portserver.py and portres both keep a pid's ports until it exits; a
/// holder that exits every so often keeps the pool from running dry
/// (portres' dynamic range is ~28k ports) the way test processes ending
/// do. Spawning and reaping the holders is in the measured time.
pub const PER_HOLDER: usize = 1000;

/// A process whose pid the requests name; killed and reaped on drop.
pub struct Holder(Child);

impl Holder {
    /// A fresh holder (`sleep`).
    pub fn spawn() -> Holder {
        Holder(
            Command::new("sleep")
                .arg("3600")
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn a holder process"),
        )
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a run of requests measured: latencies of answered requests and
/// how many went unanswered (the server closed without a port).
pub struct Requests {
    /// Answered requests.
    pub samples: Samples,
    /// Unanswered ones.
    pub unanswered: usize,
}

/// One request as portpicker's client makes it — send the pid, read once
/// (not to the end: the answer is one write), parse the first line; the
/// port, or `None` if the server closed without answering.
fn request(address: &Address, pid: u32) -> Option<u16> {
    let mut s = address.connect().ok()?;
    s.write_all(format!("{pid}\n").as_bytes()).ok()?;
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).ok()?;
    let text = std::str::from_utf8(&buf[..n]).ok()?;
    text.lines().next()?.trim().parse().ok().filter(|&p| p != 0)
}

/// `clients` threads making requests to `address` for `dur`, each naming
/// its own holder process, replaced every [`PER_HOLDER`] requests.
pub fn measure(address: &Address, clients: usize, dur: Duration) -> Requests {
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let address = address.clone();
            std::thread::spawn(move || {
                let mut holder = Holder::spawn();
                let mut made = 0;
                let mut unanswered = 0;
                let mut lat = Vec::with_capacity(100_000);
                while start.elapsed() < dur {
                    if made == PER_HOLDER {
                        holder = Holder::spawn();
                        made = 0;
                    }
                    let t = Instant::now();
                    let answered = request(&address, holder.pid()).is_some();
                    let took = t.elapsed();
                    made += 1;
                    if answered {
                        lat.push(took);
                    } else {
                        unanswered += 1;
                    }
                }
                (lat, unanswered)
            })
        })
        .collect();
    let mut parts = Vec::new();
    let mut unanswered = 0;
    for h in handles {
        let (lat, u) = h.join().expect("client");
        parts.push(lat);
        unanswered += u;
    }
    Requests {
        samples: Samples::merge(parts, start.elapsed()),
        unanswered,
    }
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Creates `dir/venv` and installs portpicker and clients/python there;
/// returns the venv.
pub fn install(dir: &Path) -> Result<PathBuf, String> {
    let venv = dir.join("venv");
    run(
        Command::new("python3").arg("-m").arg("venv").arg(&venv),
        "python3 -m venv",
    )?;
    run(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("portpicker=={VERSION}")),
        "pip install portpicker",
    )?;
    // The Python rows' portres package, from this checkout, offline.
    let package = Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/python");
    run(
        Command::new(venv.join("bin/pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-index",
                "--no-deps",
            ])
            .arg(&package),
        "pip install clients/python",
    )?;
    Ok(venv)
}

impl PortServer {
    /// Starts `venv`'s portserver.py on `dir/portserver.sock` with a pool of
    /// ports 10000-65000.
    pub fn start(venv: &Path, dir: &Path) -> Result<PortServer, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let socket = dir.join("portserver.sock");
        let child = Command::new(venv.join("bin/python"))
            .arg(venv.join("bin/portserver.py"))
            .arg(format!("--portserver_address={}", socket.display()))
            .arg("--portserver_static_pool=10000-65000")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting portserver.py: {e}"))?;
        let t = Instant::now();
        while UnixStream::connect(&socket).is_err() {
            if t.elapsed() > Duration::from_secs(30) {
                return Err("portserver.py did not start".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(PortServer { child, socket })
    }

    /// `clients` threads making requests for `dur` (see [`measure`]).
    pub fn measure(&self, clients: usize, dur: Duration) -> Samples {
        let r = measure(
            &Address(self.socket.to_string_lossy().into_owned()),
            clients,
            dur,
        );
        assert_eq!(r.unanswered, 0, "portserver.py left requests unanswered");
        r.samples
    }
}

impl Drop for PortServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
