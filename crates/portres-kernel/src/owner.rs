//! One kernel owner per network namespace: [`KernelOwner::claim`] makes sure
//! no other portres daemon keeps `net.ipv4.ip_local_reserved_ports` of this
//! namespace, and holds that claim until it is dropped or the process dies.
//!
//! Two locks, because neither alone covers every case:
//!
//! - an open-file-description (`F_OFD_SETLK`) write lock on the sysctl file
//!   itself. A write lock needs a descriptor opened for writing, so only a
//!   process that could write the sysctl can take it: an ordinary user
//!   cannot squat it to keep the daemon from syncing. It is per open file
//!   description (unlike a classic `fcntl` lock, closing another descriptor
//!   of the file does not drop it) and dies with the process. It is keyed on
//!   the file's inode, which is per `/proc` mount: two daemons that see
//!   different `/proc` instances (a container with its own `/proc` sharing
//!   the host's network) would not see each other's lock;
//! - so also the abstract Unix socket [`OWNER_SOCKET_NAME`]. The abstract
//!   socket namespace belongs to the network namespace, whatever `/proc`
//!   is mounted, and the kernel frees the name when its holder dies. A
//!   thread answers each connection with a one-line note (pid, socket,
//!   state directory) and closes it; `SO_PEERCRED` of such a connection
//!   names the holder's pid and uid. Anyone may bind an abstract name, so a
//!   holder whose uid is not the sysctl's owner (a user who cannot write it)
//!   is reported as a squatter and otherwise ignored: the file lock, which
//!   no such user can take, still keeps out every daemon that shares our
//!   `/proc`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::time::{Duration, Instant};

use crate::sysctl::ProcReservedPorts;

/// The abstract socket name (without the leading NUL) a kernel owner holds.
pub const OWNER_SOCKET_NAME: &str = "portres/kernel-owner";

/// Most bytes of a holder's note read back.
const MAX_NOTE: usize = 1024;

/// How long a held lock or name is retried before it counts as another
/// owner's: both live as long as any descriptor of them, so an owner that is
/// exiting, or a process it forked that has not reached `exec` yet
/// (close-on-exec), holds them for a moment more.
pub const GRACE: Duration = Duration::from_millis(300);

/// How long to wait for a holder's note.
const NOTE_WAIT: Duration = Duration::from_millis(500);

/// Who holds a claim we could not take (as far as could be told).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OtherOwner {
    /// Its pid in our pid namespace (0 if it is not visible here), from
    /// `SO_PEERCRED` of a connection to its abstract socket.
    pub pid: Option<i32>,
    /// Its effective uid, likewise.
    pub uid: Option<u32>,
    /// What its note says (pid, socket, state directory), as it sent it.
    pub note: Option<String>,
}

impl std::fmt::Display for OtherOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.pid, self.uid) {
            (Some(pid), Some(uid)) => write!(f, "pid {pid}, uid {uid}")?,
            _ => f.write_str("its pid could not be read")?,
        }
        if let Some(note) = &self.note {
            write!(f, "; it says: {note}")?;
        }
        Ok(())
    }
}

/// Why [`KernelOwner::claim`] failed.
#[derive(Debug)]
pub enum ClaimError {
    /// Another process keeps the sysctl of this namespace.
    Held(OtherOwner),
    /// The sysctl could not be opened for writing or locked, or the socket
    /// could not be set up.
    Io(io::Error),
}

impl std::fmt::Display for ClaimError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClaimError::Held(other) => write!(
                f,
                "another portresd already keeps {} in this network namespace ({other})",
                ProcReservedPorts::DEFAULT_PATH
            ),
            ClaimError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for ClaimError {}

/// The claim: held until dropped (then both locks are released before
/// `drop` returns) or until the process ends.
#[derive(Debug)]
pub struct KernelOwner {
    _sysctl_lock: OwnedFd,
    answerer: Option<Answerer>,
    squatter: Option<OtherOwner>,
}

/// The thread answering connections to the abstract socket.
#[derive(Debug)]
struct Answerer {
    stop: OwnedFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Answerer {
    fn drop(&mut self) {
        let _ = rustix::io::write(&self.stop, &1u64.to_ne_bytes());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl KernelOwner {
    /// Claims the reserved-ports sysctl of the calling thread's network
    /// namespace. `note` is what other daemons are told about us (say, our
    /// pid, socket and state directory).
    pub fn claim(note: &str) -> Result<KernelOwner, ClaimError> {
        let sysctl = std::fs::OpenOptions::new()
            .write(true)
            .open(ProcReservedPorts::DEFAULT_PATH)
            .map_err(ClaimError::Io)?;
        let sysctl: OwnedFd = sysctl.into();
        // Root of the namespace's owning user namespace: who can write it.
        let sysctl_owner = rustix::fs::fstat(&sysctl)
            .map_err(|e| ClaimError::Io(e.into()))?
            .st_uid;
        let deadline = Instant::now() + GRACE;
        let in_grace = || {
            let wait = Instant::now() < deadline;
            if wait {
                std::thread::sleep(Duration::from_millis(5));
            }
            wait
        };
        let locked = loop {
            match ofd_write_lock(&sysctl) {
                Err(e) if is_held(&e) && in_grace() => {}
                other => break other,
            }
        };
        match locked {
            Ok(()) => {}
            Err(e) if is_held(&e) => {
                // Only a holder that could write the sysctl is believed;
                // a squatter of the name must not be named as the owner.
                let other = ask_owner()
                    .filter(|o| o.uid == Some(sysctl_owner))
                    .unwrap_or_default();
                return Err(ClaimError::Held(other));
            }
            Err(e) => return Err(ClaimError::Io(e)),
        }
        let addr = SocketAddr::from_abstract_name(OWNER_SOCKET_NAME).map_err(ClaimError::Io)?;
        let bound = loop {
            match UnixListener::bind_addr(&addr) {
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && in_grace() => {}
                other => break other,
            }
        };
        match bound {
            Ok(listener) => {
                let answerer =
                    Answerer::start(listener, note.to_string()).map_err(ClaimError::Io)?;
                Ok(KernelOwner {
                    _sysctl_lock: sysctl,
                    answerer: Some(answerer),
                    squatter: None,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                let other = ask_owner().unwrap_or_default();
                if other.uid == Some(sysctl_owner) {
                    // A daemon that could write the sysctl but does not
                    // share our /proc (else the file lock had refused us).
                    return Err(ClaimError::Held(other));
                }
                Ok(KernelOwner {
                    _sysctl_lock: sysctl,
                    answerer: None,
                    squatter: Some(other),
                })
            }
            Err(e) => Err(ClaimError::Io(e)),
        }
    }

    /// A process that holds the abstract name without being able to write
    /// the sysctl (so it cannot be a portres daemon keeping it), if one did
    /// when we claimed: the caller should log it.
    pub fn squatter(&self) -> Option<&OtherOwner> {
        self.squatter.as_ref()
    }

    /// Whether we hold the abstract name too (not only the file lock).
    pub fn holds_name(&self) -> bool {
        self.answerer.is_some()
    }
}

fn is_held(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EACCES))
}

/// `F_OFD_SETLK` of a write lock on the whole file, without waiting.
fn ofd_write_lock(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: an all-zero `flock` is a valid value of this plain C struct.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start = l_len = 0: the whole file; l_pid must be 0 for OFD locks.
    // SAFETY: `fd` is open for the call and `lock` is a live, initialised
    // `flock` the kernel only reads for F_OFD_SETLK.
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Connects to the abstract name and reads who holds it: `SO_PEERCRED` and
/// its note. `None` if nobody listens or it cannot be asked (a full queue).
fn ask_owner() -> Option<OtherOwner> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let fd = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )
    .ok()?;
    let addr = rustix::net::SocketAddrUnix::new_abstract_name(OWNER_SOCKET_NAME.as_bytes()).ok()?;
    rustix::net::connect(&fd, &addr).ok()?;
    let creds = portres_proto::peer::peer_process(fd.as_fd()).ok();
    let mut other = OtherOwner {
        pid: creds.as_ref().map(|c| c.pid),
        uid: creds.as_ref().map(|c| c.uid),
        note: None,
    };
    let stream = UnixStream::from(fd);
    let _ = stream.set_nonblocking(false);
    let deadline = Instant::now() + NOTE_WAIT;
    let mut note = Vec::new();
    let mut buf = [0u8; 256];
    while note.len() < MAX_NOTE {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match io::Read::read(&mut &stream, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => note.extend_from_slice(&buf[..n]),
        }
    }
    note.truncate(MAX_NOTE);
    let text: String = String::from_utf8_lossy(&note)
        .trim()
        .chars()
        // The note is the holder's word: keep it to one printable line.
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if !text.is_empty() {
        other.note = Some(text);
    }
    Some(other)
}

impl Answerer {
    fn start(listener: UnixListener, note: String) -> io::Result<Answerer> {
        use rustix::event::EventfdFlags;
        listener.set_nonblocking(true)?;
        let stop = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        let stop_watch = stop.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("portres-kernel-owner".into())
            .spawn(move || answer(&listener, &stop_watch, note.as_bytes()))?;
        Ok(Answerer {
            stop,
            thread: Some(thread),
        })
    }
}

/// Until `stop` is readable: accepts each connection, sends `note` without
/// waiting (a peer that does not read misses it) and closes it. One
/// connection at a time, nothing buffered: asking costs us nothing more.
fn answer(listener: &UnixListener, stop: &OwnedFd, note: &[u8]) {
    use rustix::event::{PollFd, PollFlags};
    loop {
        let mut fds = [
            PollFd::new(listener, PollFlags::IN),
            PollFd::new(stop, PollFlags::IN),
        ];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = rustix::net::send(
                        &stream,
                        note,
                        rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // EMFILE and friends: the connection stays queued and the
                // listener readable; pause rather than spin on it.
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(100));
                    break;
                }
            }
        }
    }
}
