//! What the daemon says to and takes from a service manager (systemd):
//! `sd_notify` messages (`Notifier`: READY=1, STATUS=, RELOADING=1,
//! STOPPING=1) and sockets passed by socket activation (`PassedSockets`:
//! `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`). Both are a few lines over
//! the documented protocols (sd_notify(3), sd_listen_fds(3)) rather than
//! the `sd-notify` crate, which does not reach an abstract (`@…`)
//! `NOTIFY_SOCKET`. Without a service manager (the variables unset) both
//! do nothing.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::daemon::StartError;
use crate::state::State;

/// The name (`FileDescriptorName=`) of the passed socket the daemon serves
/// its clients on (`contrib/portresd.socket`), as systemd's own varlink
/// services name theirs.
pub const CLIENT_SOCKET_NAME: &str = "varlink";

/// The `LISTEN_FDNAMES` name of a passed portserver endpoint socket
/// (`FileDescriptorName=portserver` in a socket unit).
pub const PORTSERVER_SOCKET_NAME: &str = "portserver";

/// The names a passed socket has when nobody named it: `LISTEN_FDNAMES`
/// unset (sd_listen_fds_with_names says "unknown"), or the socket unit's
/// name, systemd's default `FileDescriptorName=`. Such a socket is taken
/// as the client socket.
const UNNAMED: &[&str] = &["unknown", "portresd.socket"];

/// Where `sd_notify` messages go: the `NOTIFY_SOCKET` the service manager
/// set, or nowhere. Cheap to clone; sending never fails the caller (a
/// service manager that went away is logged at debug level).
#[derive(Clone, Debug, Default)]
pub struct Notifier {
    addr: Option<SocketAddr>,
}

impl Notifier {
    /// The `NOTIFY_SOCKET` of this process's environment: a path, or an
    /// abstract address written `@name`. Unset, empty or of a kind we do
    /// not speak (`vsock:`): a notifier that sends nothing.
    pub fn from_env() -> Notifier {
        let Some(value) = std::env::var_os("NOTIFY_SOCKET").filter(|v| !v.is_empty()) else {
            return Notifier::default();
        };
        let addr = notify_addr(&value);
        if addr.is_none() {
            log::warn!(
                "NOTIFY_SOCKET={} is neither a path nor an abstract @name; not notifying the service manager",
                value.to_string_lossy()
            );
        }
        Notifier { addr }
    }

    /// Whether there is a service manager to tell anything.
    pub fn is_active(&self) -> bool {
        self.addr.is_some()
    }

    fn send(&self, message: &str) {
        let Some(addr) = &self.addr else { return };
        let sent = UnixDatagram::unbound().and_then(|s| s.send_to_addr(message.as_bytes(), addr));
        if let Err(e) = sent {
            log::debug!("sd_notify {message:?}: {e}");
        }
    }

    /// `READY=1` with a `STATUS=` line: the socket accepts and the kernel
    /// holds baseline ∪ persistent. Also ends a reload (after
    /// `reloading`).
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STATUS=`: the one-line summary `systemctl status` shows.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// `RELOADING=1` with `MONOTONIC_USEC=` (systemd ≥ 253 ignores a
    /// reload notification without it; 252 ignores the field): a reload
    /// starts; `ready` ends it.
    pub fn reloading(&self) {
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let usec = (now.tv_sec as u64)
            .saturating_mul(1_000_000)
            .saturating_add(now.tv_nsec as u64 / 1000);
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS=reloading"
        ));
    }

    /// `STOPPING=1`: a clean stop has begun.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }
}

/// The one-line STATUS= summary (`systemctl status`): how many
/// reservations of each kind the daemon holds and whether the kernel
/// honours them. Sent with READY=1, then by the front when it changed
/// (at most every `front::STATUS_REFRESH`); a reload's READY=1 sends it
/// too.
pub(crate) fn status_summary(state: &State) -> String {
    let (runtime, persistent) = state.counts();
    let problems = state.declared_problems().len();
    format!(
        "{persistent} persistent and {runtime} runtime reservation(s); kernel sync {}{}",
        if state.kernel_sync() {
            "on"
        } else {
            "off (not kernel-reserved)"
        },
        if problems > 0 {
            format!("; {problems} portres.d problem(s), see portres status")
        } else {
            String::new()
        }
    )
}

/// A STATUS= value must not break the message's `KEY=value` lines.
fn one_line(text: &str) -> String {
    text.replace('\n', " ")
}

/// The socket address of a `NOTIFY_SOCKET` value (`/path` or `@abstract`).
fn notify_addr(value: &std::ffi::OsStr) -> Option<SocketAddr> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'/') => SocketAddr::from_pathname(value).ok(),
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]).ok(),
        _ => None,
    }
}

/// Sockets the service manager passed (socket activation), each under its
/// `LISTEN_FDNAMES` name, to be taken once by whoever serves on it:
/// `take_listener(CLIENT_SOCKET_NAME)` for the client socket; another
/// endpoint takes its own name the same way. Descriptors nobody took are
/// closed when this is dropped (with a warning naming them).
#[derive(Debug, Default)]
pub struct PassedSockets {
    fds: Vec<(String, Option<OwnedFd>)>,
}

/// The first passed descriptor (sd_listen_fds(3): `SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// `PassedSockets::from_env` was called: the descriptors are owned once.
static TAKEN: AtomicBool = AtomicBool::new(false);

impl PassedSockets {
    /// No passed sockets (the daemon binds its own).
    pub fn none() -> PassedSockets {
        PassedSockets::default()
    }

    /// The sockets this process was passed: `LISTEN_FDS` descriptors from 3
    /// on, named by `LISTEN_FDNAMES` (colon-separated), if `LISTEN_PID` is
    /// this process (else they were meant for a parent: ignored, left
    /// alone). Call it first thing in `main`, before anything else opens a
    /// descriptor: the numbers are only ours to take while nothing else in
    /// the process could hold them. A second call in the same process
    /// passes nothing. The descriptors are made close-on-exec.
    pub fn from_env() -> PassedSockets {
        let var = |name: &str| std::env::var_os(name).map(OsString::into_string);
        let Some(Ok(fds)) = var("LISTEN_FDS") else {
            return PassedSockets::none();
        };
        let pid = std::process::id();
        match var("LISTEN_PID") {
            Some(Ok(p)) if p.trim().parse::<u32>() == Ok(pid) => {}
            other => {
                log::info!(
                    "LISTEN_FDS={fds} is not for this process (LISTEN_PID={}, ours is {pid}): ignored",
                    match other {
                        Some(Ok(p)) => p,
                        _ => "unset".into(),
                    }
                );
                return PassedSockets::none();
            }
        }
        let Ok(count) = fds.trim().parse::<RawFd>() else {
            log::warn!("LISTEN_FDS={fds} is not a number: ignored");
            return PassedSockets::none();
        };
        if TAKEN.swap(true, Ordering::SeqCst) {
            return PassedSockets::none();
        }
        let names: Vec<String> = match var("LISTEN_FDNAMES") {
            Some(Ok(n)) => n.split(':').map(str::to_owned).collect(),
            _ => Vec::new(),
        };
        let mut out = PassedSockets::none();
        for i in 0..count.clamp(0, 1024) {
            let raw = LISTEN_FDS_START + i;
            // SAFETY: F_GETFD only reads the descriptor's flags; on a
            // number that is not open it fails with EBADF and does nothing.
            let flags = unsafe { libc::fcntl(raw, libc::F_GETFD) };
            if flags < 0 {
                log::warn!("LISTEN_FDS={count}, but descriptor {raw} is not open: ignored");
                continue;
            }
            // SAFETY: the service manager passed `raw` to this process
            // (LISTEN_PID is ours) and nothing in it owns the number yet:
            // this runs once (TAKEN), before anything else opens a
            // descriptor (see the doc), and we just saw it open.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let _ = rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC);
            let name = names
                .get(i as usize)
                .filter(|n| !n.is_empty())
                .cloned()
                .unwrap_or_else(|| "unknown".into());
            out.fds.push((name, Some(fd)));
        }
        out
    }

    /// The passed listening socket named `name` (for the client socket,
    /// `CLIENT_SOCKET_NAME`, or a socket nobody named), taken out: `None`
    /// if there is none. A passed socket that is not a listening `AF_UNIX`
    /// stream socket is refused: the daemon would otherwise serve nobody.
    pub fn take_listener(&mut self, name: &str) -> Result<Option<UnixListener>, StartError> {
        let named = self
            .fds
            .iter()
            .position(|(n, fd)| n == name && fd.is_some())
            .or_else(|| {
                (name == CLIENT_SOCKET_NAME)
                    .then(|| {
                        self.fds
                            .iter()
                            .position(|(n, fd)| UNNAMED.contains(&n.as_str()) && fd.is_some())
                    })
                    .flatten()
            });
        let Some(i) = named else { return Ok(None) };
        let (name, slot) = &mut self.fds[i];
        let fd = slot.take().expect("a descriptor not yet taken");
        check_unix_listener(&fd).map_err(|why| {
            StartError(format!(
                "the socket passed by the service manager as {name:?} (descriptor {}) {why}",
                LISTEN_FDS_START + i as RawFd
            ))
        })?;
        Ok(Some(UnixListener::from(fd)))
    }

    /// Whether any socket was passed.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// The names of the passed sockets nobody has taken yet.
    pub fn untaken(&self) -> Vec<&str> {
        self.fds
            .iter()
            .filter(|(_, fd)| fd.is_some())
            .map(|(n, _)| n.as_str())
            .collect()
    }
}

impl Drop for PassedSockets {
    fn drop(&mut self) {
        let left = self.untaken();
        if !left.is_empty() {
            log::warn!(
                "the service manager passed socket(s) named {left:?} that portresd does not serve; closed"
            );
        }
    }
}

/// Why `fd` is not a listening `AF_UNIX` stream socket (as a phrase that
/// follows "the socket … "), if it is not.
fn check_unix_listener(fd: &OwnedFd) -> Result<(), String> {
    use rustix::net::{AddressFamily, SocketType, sockopt};
    let fd = fd.as_fd();
    let why = |e: io::Error| format!("is not a socket ({e})");
    let domain = sockopt::socket_domain(fd).map_err(|e| why(e.into()))?;
    if domain != AddressFamily::UNIX {
        return Err(format!(
            "is not an AF_UNIX socket (family {}): ListenStream= must name a path",
            domain.as_raw()
        ));
    }
    if sockopt::socket_type(fd).map_err(|e| why(e.into()))? != SocketType::STREAM {
        return Err("is not a stream socket (use ListenStream=)".into());
    }
    if !sockopt::socket_acceptconn(fd).map_err(|e| why(e.into()))? {
        return Err("is not listening (Accept=no is needed)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_addresses_are_paths_or_abstract_names() {
        let path = notify_addr("/run/systemd/notify".as_ref()).expect("a path");
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let abs = notify_addr("@/org/example/notify".as_ref()).expect("abstract");
        assert_eq!(abs.as_abstract_name(), Some(&b"/org/example/notify"[..]));
        assert!(notify_addr("vsock:2:1234".as_ref()).is_none());
    }

    #[test]
    fn notifier_sends_to_an_abstract_socket() {
        let name = format!("portres-notify-test-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
        let rx = UnixDatagram::bind_addr(&addr).expect("bind");
        let n = Notifier { addr: Some(addr) };
        n.ready("line one\nline two");
        let mut buf = [0u8; 256];
        let len = rx.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=line one line two");
        n.reloading();
        let len = rx.recv(&mut buf).expect("recv");
        let text = std::str::from_utf8(&buf[..len]).expect("utf-8");
        assert!(text.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{text:?}");
    }

    #[test]
    fn no_notify_socket_sends_nothing() {
        let n = Notifier::default();
        assert!(!n.is_active());
        n.ready("nobody listens");
    }
}
