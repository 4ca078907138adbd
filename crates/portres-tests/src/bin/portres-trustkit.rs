//! `portres-trustkit`: the two sides of the client-trust tests
//! (`tests/hardening_clients.rs`), run as separate processes and users.
//!
//! - `relay LISTEN TARGET`: the other user's planted socket. Listens on
//!   LISTEN (making its directory, 0755, if missing; the socket 0777 so
//!   anyone may connect), prints `ready`, then relays every connection to
//!   the daemon at TARGET, bytes and descriptors both ways — keeping a
//!   copy of every descriptor that passes, as the attack did. Prints
//!   `connection` per accepted connection and `client bytes=N fds=M` per
//!   read from the client. Runs until killed.
//! - `probe`: the victim's program. `Client::connect()` like any client
//!   (environment included), then `status`, then acquires a TCP port and
//!   binds a listener into it. Prints `socket PATH`, `kind K`,
//!   `daemon-uid U`, `passed-over N`, `your-uid U`, `bound PORT`; on a
//!   refusal `error CODE` and `message MESSAGE`, exit status 1.

use std::collections::VecDeque;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use portres::{Client, Error, Protocol, SocketKind};
use portres_proto::fdpass::{recv_with_fds, send_with_fds};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Copies `from` → `to` with descriptors; keeps a copy of each descriptor
/// in `kept`. `log` says whether to report reads.
fn pump(from: UnixStream, to: UnixStream, kept: Arc<Mutex<Vec<OwnedFd>>>, log: bool) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut fds = VecDeque::new();
        let got = match recv_with_fds(&from, &mut buf, &mut fds) {
            Ok(g) if g.bytes > 0 => g,
            _ => break,
        };
        if log {
            say(&format!("client bytes={} fds={}", got.bytes, fds.len()));
        }
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        if send_with_fds(to.as_fd(), &buf[..got.bytes], &borrowed).is_err() {
            break;
        }
        kept.lock().unwrap().extend(fds);
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

fn relay(listen: &Path, target: &Path) -> ! {
    if let Some(dir) = listen.parent().filter(|d| !d.exists()) {
        std::fs::create_dir_all(dir).expect("make the relay's directory");
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
    }
    let _ = std::fs::remove_file(listen);
    let listener = UnixListener::bind(listen).expect("bind the relay socket");
    std::fs::set_permissions(listen, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    say("ready");
    let kept = Arc::new(Mutex::new(Vec::new()));
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        say("connection");
        let Ok(daemon) = UnixStream::connect(target) else {
            say("relay: the daemon is unreachable");
            continue;
        };
        let (c2, d2) = (
            client.try_clone().expect("clone"),
            daemon.try_clone().expect("clone"),
        );
        let k = kept.clone();
        std::thread::spawn(move || pump(client, daemon, k, true));
        let k = kept.clone();
        std::thread::spawn(move || pump(d2, c2, k, false));
    }
    unreachable!("incoming() never ends")
}

fn probe() -> Result<(), Error> {
    let client = Client::connect()?;
    say(&format!("socket {}", client.socket_path().display()));
    say(&format!(
        "kind {}",
        match client.socket_kind() {
            SocketKind::Explicit => "explicit",
            SocketKind::User => "user",
            SocketKind::System => "system",
        }
    ));
    say(&format!("daemon-uid {}", client.daemon().uid));
    for p in client.passed_over() {
        say(&format!("passed-over {p}"));
    }
    say(&format!("your-uid {}", client.status()?.your_uid));
    let res = client.acquire(Protocol::Tcp, 0, 1)?;
    let listener = res.bind_tcp("127.0.0.1".parse().expect("address"))?;
    say(&format!(
        "bound {}",
        listener.local_addr().expect("local address").port()
    ));
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("relay") if args.len() == 3 => relay(Path::new(&args[1]), Path::new(&args[2])),
        Some("probe") => match probe() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                say(&format!("error {}", e.code));
                say(&format!("message {}", e.message));
                ExitCode::from(1)
            }
        },
        _ => {
            eprintln!("usage: portres-trustkit relay LISTEN TARGET | probe");
            ExitCode::from(2)
        }
    }
}
