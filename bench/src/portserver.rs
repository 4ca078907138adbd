//! Google's portserver (portpicker 1.6.0, `portserver.py`), installed from
//! PyPI into a private virtualenv and started on a private socket, driven
//! the way portpicker's client drives it: connect, send our pid, read a
//! port, close.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::stats::Samples;

/// The pinned version compared against.
pub const VERSION: &str = "1.6.0";

/// A running portserver.
pub struct PortServer {
    child: Child,
    socket: PathBuf,
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

/// Creates `dir/venv` and installs portpicker there; returns the venv.
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

    /// One request as portpicker's client makes it; returns the port.
    fn request(socket: &Path, pid: u32) -> u16 {
        let mut s = UnixStream::connect(socket).expect("connect portserver");
        s.write_all(format!("{pid}\n").as_bytes()).expect("send");
        let mut buf = String::new();
        s.read_to_string(&mut buf).expect("recv");
        buf.trim().parse().unwrap_or(0)
    }

    /// `clients` threads making requests for `dur`.
    pub fn measure(&self, clients: usize, dur: Duration) -> Samples {
        let pid = std::process::id();
        let start = Instant::now();
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                let socket = self.socket.clone();
                std::thread::spawn(move || {
                    crate::stats::timed(dur, || {
                        let port = PortServer::request(&socket, pid);
                        assert!(port != 0, "portserver ran out of ports");
                    })
                })
            })
            .collect();
        Samples::join(handles, start)
    }
}

impl Drop for PortServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
