//! The transport's front: the listening socket, connection limits, handing
//! each connection to a worker (`worker.rs`), the deferred kernel write and
//! clean shutdown. It decides nothing about reservations itself.
//!
//! Threads: this loop (accept, timers, stop) and the worker loops (by
//! default one per CPU, pinned), each an epoll loop over its own
//! connections; a connection starts on the least busy worker and moves to
//! one on its client's CPU (`worker::Worker::follow_client`). The state is
//! one mutex (`state::lock`), held for microseconds per request. Why: a
//! reply wakes the client's thread, and a wakeup on another CPU costs an
//! inter-processor interrupt (several µs in a VM); with client and worker
//! on one CPU a round trip costs less than half. Why hand-written loops
//! rather than an async runtime: see ARCHITECTURE.md. Measured figures are
//! in bench/README.md.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use portres_core::{Caller, Error, ErrorCode};
use portres_proto::encode_error;
use rustix::event::epoll;

use crate::config::{Config, KernelSync, Mode};
use crate::state::{State, lock};
use crate::worker::{NewConn, Workers};

/// The kernel shrink window: released ports leave the kernel's list at the
/// first flush after they have been free for a whole window, so within one
/// to two windows (one write covers every release meanwhile; see
/// `State::flush_kernel`).
pub const KERNEL_SHRINK_DELAY: Duration = Duration::from_millis(5);

/// How often the front thread checks that nobody else changed the kernel's
/// list (`State::check_kernel`: one read of the sysctl and a text
/// comparison). Half a second, so a change is undone within a second.
pub const KERNEL_CHECK_INTERVAL: Duration = Duration::from_millis(500);

/// How long accepting pauses when the process (EMFILE) or the system
/// (ENFILE) is out of descriptors: connections wait in the backlog instead
/// of the loop spinning on a listener that stays readable.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Most descriptors one non-root user's connections may have the daemon
/// hold besides the connections themselves: received and not yet taken by
/// their request, or riding on unsent replies.
pub(crate) const PER_UID_PARKED_FDS: usize = 256;

const TOKEN_LISTENER: u64 = 0;
pub(crate) const TOKEN_STOP: u64 = 1;
const TOKEN_SHRINK: u64 = 2;

/// Why the daemon could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// Asks a running daemon to stop (from a signal handler thread, a test).
/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct StopHandle {
    fd: Arc<OwnedFd>,
}

impl StopHandle {
    /// Makes `Daemon::run` stop cleanly and return.
    pub fn stop(&self) {
        let _ = rustix::io::write(&*self.fd, &1u64.to_ne_bytes());
    }
}

/// A started daemon: store open, kernel in sync, socket bound.
pub struct Daemon {
    state: State,
    config: Config,
    listener: UnixListener,
    socket: PathBuf,
    /// Held for the daemon's whole life; released last (see `run`).
    guards: Option<Guards>,
    stop_fd: Arc<OwnedFd>,
    /// Readable when a release left the kernel a shrink to do.
    shrink_fd: Arc<OwnedFd>,
}

impl fmt::Debug for Daemon {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Daemon")
            .field("socket", &self.socket)
            .finish()
    }
}

fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

fn eventfd() -> io::Result<OwnedFd> {
    use rustix::event::EventfdFlags;
    Ok(rustix::event::eventfd(
        0,
        EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK,
    )?)
}

/// What a daemon holds until it has stopped: the state directory's lock,
/// the claim on the namespace's sysctl, and what it needs to remove its
/// socket file (and only that file) at the end.
struct Guards {
    _state_dir: portres_store::StateDirLock,
    _kernel_owner: Option<portres_kernel::owner::KernelOwner>,
    socket_file: SocketFile,
}

impl Daemon {
    /// Locks the state directory (before anything else: a second daemon on
    /// it is refused here, naming the first), opens the store, decides
    /// kernel sync (claiming the network namespace's sysctl), restores
    /// persistent reservations, writes the kernel's value, and binds the
    /// socket.
    pub fn start(config: Config) -> Result<Daemon, StartError> {
        // A socket directory we may not create fails before anything is
        // made (the state directory included); `bind_socket` checks again.
        if let Some(dir) = config.socket.parent().filter(|d| !d.as_os_str().is_empty())
            && !dir.exists()
            && config.socket != default_socket(config.mode)
        {
            return Err(missing_socket_dir(dir, config.mode));
        }
        let state_dir_lock =
            portres_store::StateDirLock::acquire(&config.state_dir, &config.socket).map_err(
                |e| match e {
                    portres_store::LockError::Store(e) => StartError(format!(
                        "cannot open the store in {}: {e}",
                        config.state_dir.display()
                    )),
                    held => StartError(held.to_string()),
                },
            )?;
        raise_fd_limit();
        let store = portres_store::Store::open(&config.state_dir).map_err(|e| {
            StartError(format!(
                "cannot open the store in {}: {e}",
                config.state_dir.display()
            ))
        })?;
        let (kernel, kernel_owner) = decide_kernel_sync(&config)?;
        let mut state = State::new(
            config.clone(),
            store,
            Arc::new(crate::kernel::LinuxKernel),
            kernel,
        )
        .map_err(|e| StartError(e.message))?;
        let shrink_fd = Arc::new(eventfd().map_err(|e| StartError(format!("eventfd: {e}")))?);
        let hook_fd = shrink_fd.clone();
        state.set_on_shrink_pending(Box::new(move || {
            let _ = rustix::io::write(&*hook_fd, &1u64.to_ne_bytes());
        }));
        let stop_fd = Arc::new(eventfd().map_err(|e| StartError(format!("eventfd: {e}")))?);
        let (listener, socket_file) = bind_socket(&config.socket, config.mode)?;
        let (_, persistent) = state.counts();
        log::info!(
            "portresd {} ({} mode) listening on {}; store {}{}; kernel sync {}; {} persistent reservation(s) restored",
            env!("CARGO_PKG_VERSION"),
            config.mode.as_str(),
            config.socket.display(),
            state.store().path().display(),
            if state.store().is_read_only() {
                " (READ-ONLY: persistent changes fail until it is writable)"
            } else {
                ""
            },
            if state.kernel_sync() { "on" } else { "off" },
            persistent,
        );
        Ok(Daemon {
            state,
            socket: config.socket.clone(),
            config,
            listener,
            guards: Some(Guards {
                _state_dir: state_dir_lock,
                _kernel_owner: kernel_owner,
                socket_file,
            }),
            stop_fd,
            shrink_fd,
        })
    }

    /// The socket path it listens on.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// A handle that makes `run` return.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            fd: self.stop_fd.clone(),
        }
    }

    /// Serves on the calling thread until `StopHandle::stop`, then stops
    /// cleanly: runtime reservations end, the kernel keeps baseline +
    /// persistent blocks, the socket file is removed.
    pub fn run(mut self) -> io::Result<()> {
        let guards = self.guards.take();
        let (result, shared) = match Front::new(self) {
            Ok(mut front) => {
                let result = front.run();
                (result, front.stop_workers())
            }
            Err((e, shared)) => (Err(e), shared),
        };
        if let Some(g) = &guards {
            g.socket_file.remove();
        }
        lock(&shared.state).shutdown();
        log::info!("portresd stopped");
        // Only now may another daemon take the state directory and the
        // namespace's sysctl: ours has its final value.
        drop(shared);
        drop(guards);
        result
    }
}

type KernelChoice = (
    Option<Box<dyn portres_kernel::sysctl::ReservedPorts>>,
    Option<portres_kernel::owner::KernelOwner>,
);

/// Whether to keep the sysctl, per `--kernel-sync`: `auto` keeps it when
/// it is writable and no other portres daemon keeps it in this network
/// namespace (else off, with a warning); `on` refuses to start in either
/// case; `off` never touches it. The claim (`owner::KernelOwner`) is taken
/// before the sysctl is first read, so a second daemon never mistakes the
/// first one's blocks for the admin's baseline.
fn decide_kernel_sync(config: &Config) -> Result<KernelChoice, StartError> {
    use portres_kernel::owner::{ClaimError, KernelOwner};
    use portres_kernel::sysctl::ProcReservedPorts;
    let path = ProcReservedPorts::DEFAULT_PATH;
    let sysctl = ProcReservedPorts::new();
    let mode = config.kernel_sync;
    if mode == KernelSync::Off {
        log::info!("kernel sync off (--kernel-sync off): ip_local_reserved_ports is left alone");
        return Ok((None, None));
    }
    let not_writable = |e: &dyn fmt::Display| {
        if mode == KernelSync::On {
            return Err(StartError(format!(
                "--kernel-sync on, but {path} is not writable: {e} (run as root, or in a network namespace you own)"
            )));
        }
        log::warn!(
            "kernel sync off: cannot write {path} ({e}); reservations still arbitrate between portres users, but the kernel's bind(0)/connect() may hand out reserved ports"
        );
        Ok((None, None))
    };
    if let Err(e) = sysctl.check_writable() {
        return not_writable(&e);
    }
    let note = format!(
        "portresd pid {}, socket {}, state directory {}",
        std::process::id(),
        config.socket.display(),
        config.state_dir.display()
    );
    match KernelOwner::claim(&note) {
        Ok(owner) => {
            if let Some(squatter) = owner.squatter() {
                log::warn!(
                    "the abstract socket @{} is held by a process that cannot write {path} ({squatter}), so it is not a portres daemon keeping it; ignored (the lock on {path} itself keeps other daemons out)",
                    portres_kernel::owner::OWNER_SOCKET_NAME
                );
            }
            Ok((Some(Box::new(sysctl)), Some(owner)))
        }
        Err(ClaimError::Held(other)) => {
            let why = format!(
                "another portresd already keeps {path} in this network namespace ({other})"
            );
            if mode == KernelSync::On {
                return Err(StartError(format!(
                    "--kernel-sync on, but {why}; one daemon per network namespace keeps the kernel's list: stop it, or run this one with --kernel-sync off or in another network namespace"
                )));
            }
            log::warn!(
                "kernel sync off: {why}; this daemon's reservations arbitrate between its own clients only, and the kernel's list is left to the other daemon"
            );
            Ok((None, None))
        }
        Err(ClaimError::Io(e)) => not_writable(&e),
    }
}

/// The socket path of the mode's defaults (`portres_proto::paths`), whose
/// directory alone portresd may create.
fn default_socket(mode: Mode) -> PathBuf {
    match mode {
        Mode::System => PathBuf::from(portres_proto::paths::SYSTEM_SOCKET),
        Mode::User => portres_proto::paths::user_socket(),
    }
}

/// The mode of a socket directory portresd creates, and of the socket.
fn modes(mode: Mode) -> (u32, u32) {
    // System mode: anyone may reach the socket (permissions are judged per
    // request from peer credentials). User mode: only us.
    match mode {
        Mode::System => (0o755, 0o666),
        Mode::User => (0o700, 0o600),
    }
}

fn open_dir(dir: &Path, flags: rustix::fs::OFlags) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode as FileMode, OFlags};
    Ok(rustix::fs::open(
        dir,
        flags | OFlags::DIRECTORY | OFlags::CLOEXEC,
        FileMode::empty(),
    )?)
}

fn missing_socket_dir(dir: &Path, mode: Mode) -> StartError {
    let me = rustix::process::geteuid().as_raw();
    StartError(format!(
        "the socket's directory {} does not exist; portresd creates only the directory of its default socket {}: create it first (owned by uid {me}, not writable by others), or choose another --socket",
        dir.display(),
        default_socket(mode).display()
    ))
}

/// Opens the socket's directory. Only the directory of the mode's default
/// socket is created when missing (one level, with the mode's permissions):
/// a directory named by `--socket` or `PORTRES_SOCKET` must exist.
fn open_socket_dir(dir: &Path, socket: &Path, mode: Mode) -> Result<OwnedFd, StartError> {
    use rustix::fs::OFlags;
    let cannot = |e: io::Error| {
        StartError(format!(
            "cannot open the socket's directory {}: {e}",
            dir.display()
        ))
    };
    match open_dir(dir, OFlags::PATH) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(cannot(e)),
        Err(_) => {}
    }
    if socket != default_socket(mode) {
        return Err(missing_socket_dir(dir, mode));
    }
    let (dir_mode, _) = modes(mode);
    match rustix::fs::mkdir(dir, rustix::fs::Mode::from_raw_mode(dir_mode)) {
        Ok(()) => {
            // Only we could have made it (or nobody can be trusted): set the
            // exact mode the umask may have trimmed, on the directory opened
            // without following a link.
            let fd = open_dir(dir, OFlags::RDONLY | OFlags::NOFOLLOW).map_err(cannot)?;
            rustix::fs::fchmod(&fd, rustix::fs::Mode::from_raw_mode(dir_mode))
                .map_err(|e| cannot(e.into()))?;
        }
        // Made meanwhile (by whom: check_socket_dir tells).
        Err(rustix::io::Errno::EXIST) => {}
        Err(e) => {
            return Err(StartError(format!(
                "cannot create the socket's directory {}: {e}",
                dir.display()
            )));
        }
    }
    open_dir(dir, OFlags::PATH).map_err(cannot)
}

/// Refuses a socket directory someone else could tamper with, in system
/// and user mode alike: it must be owned by our uid (root in system mode)
/// and not writable by group or others unless sticky (in a sticky
/// directory nobody else can rename or remove our socket). Whoever can
/// write there could replace the socket with their own and answer our
/// clients, or swap names under us. Checked on the opened directory, so a
/// later rename of a path component cannot change what was checked.
fn check_socket_dir(dir_fd: &OwnedFd, dir: &Path) -> Result<(), StartError> {
    let st = rustix::fs::fstat(dir_fd)
        .map_err(|e| StartError(format!("cannot inspect {}: {e}", dir.display())))?;
    let me = rustix::process::geteuid().as_raw();
    let mode = st.st_mode & 0o7777;
    let writable_by_others = mode & 0o022 != 0 && mode & 0o1000 == 0;
    if st.st_uid != me || writable_by_others {
        return Err(StartError(format!(
            "refusing to put the socket in {}: it is owned by uid {} with mode {mode:o}; it must be owned by uid {me} and not writable by others",
            dir.display(),
            st.st_uid,
        )));
    }
    Ok(())
}

/// `name` inside the directory `dir_fd`, as a path that resolves through
/// the open descriptor rather than the directory's name again.
fn via_fd(dir_fd: &OwnedFd, name: &std::ffi::OsStr) -> PathBuf {
    Path::new(&format!("/proc/self/fd/{}", dir_fd.as_raw_fd())).join(name)
}

/// The socket file we made, to remove at the end (only if it is still ours).
struct SocketFile {
    dir: OwnedFd,
    name: OsString,
    dev_ino: (u64, u64),
}

impl SocketFile {
    fn remove(&self) {
        use rustix::fs::AtFlags;
        if let Ok(st) = rustix::fs::statat(&self.dir, &self.name, AtFlags::SYMLINK_NOFOLLOW)
            && (st.st_dev, st.st_ino) == self.dev_ino
        {
            let _ = rustix::fs::unlinkat(&self.dir, &self.name, AtFlags::empty());
        }
    }
}

/// Binds the listening socket at `path` with its mode set, never following
/// a path someone else could change: the directory is opened and checked
/// once (`check_socket_dir`) and everything after goes through that
/// descriptor. The socket is bound inside a fresh directory only we can
/// enter, its mode set there (`fchmod` on a socket descriptor does not
/// change the file's mode on Linux; the file is only reachable by name),
/// and then renamed into place without replacing anything.
fn bind_socket(path: &Path, mode: Mode) -> Result<(UnixListener, SocketFile), StartError> {
    use rustix::fs::{AtFlags, FileType, OFlags, RenameFlags};
    let err = |what: &str, e: io::Error| StartError(format!("{what} {}: {e}", path.display()));
    let Some(name) = path.file_name().map(|n| n.to_os_string()) else {
        return Err(StartError(format!(
            "the socket path {} does not name a file",
            path.display()
        )));
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir_fd = open_socket_dir(dir, path, mode)?;
    check_socket_dir(&dir_fd, dir)?;
    match rustix::fs::statat(&dir_fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => {
            if FileType::from_raw_mode(st.st_mode) != FileType::Socket {
                return Err(StartError(format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                )));
            }
            if UnixStream::connect(via_fd(&dir_fd, &name)).is_ok() {
                return Err(StartError(format!(
                    "another portresd is already listening on {}",
                    path.display()
                )));
            }
            rustix::fs::unlinkat(&dir_fd, &name, AtFlags::empty())
                .map_err(|e| err("cannot remove the stale socket", e.into()))?;
        }
        Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(err("cannot inspect", e.into())),
    }

    let private = format!(".portresd-bind.{}", std::process::id());
    let open_private = || -> io::Result<OwnedFd> {
        let fd = rustix::fs::openat(
            &dir_fd,
            &private,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )?;
        let me = rustix::process::geteuid().as_raw();
        if rustix::fs::fstat(&fd)?.st_uid != me {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "it exists and belongs to another user",
            ));
        }
        Ok(fd)
    };
    let make_private = || -> io::Result<OwnedFd> {
        let mode = rustix::fs::Mode::from_raw_mode(0o700);
        match rustix::fs::mkdirat(&dir_fd, &private, mode) {
            // Left by a daemon with our pid that died binding (a container's
            // pid 1, say): if it is ours, clear it and make it anew.
            Err(rustix::io::Errno::EXIST) => {
                let old = open_private()?;
                let _ = rustix::fs::unlinkat(&old, "s", AtFlags::empty());
                rustix::fs::unlinkat(&dir_fd, &private, AtFlags::REMOVEDIR)?;
                rustix::fs::mkdirat(&dir_fd, &private, mode)?;
            }
            other => other?,
        }
        let fd = open_private()?;
        rustix::fs::fchmod(&fd, mode)?;
        Ok(fd)
    };
    let private_fd = make_private().map_err(|e| {
        err(
            &format!("cannot make the private directory {private} to bind"),
            e,
        )
    })?;
    let (_, socket_mode) = modes(mode);
    let bound = (|| -> Result<(UnixListener, (u64, u64)), StartError> {
        let inner = Path::new("s");
        let listener = UnixListener::bind(via_fd(&private_fd, inner.as_os_str()))
            .map_err(|e| err("cannot listen on", e))?;
        // Nobody else can enter the private directory: "s" is our socket.
        rustix::fs::chmodat(
            &private_fd,
            inner,
            rustix::fs::Mode::from_raw_mode(socket_mode),
            AtFlags::empty(),
        )
        .map_err(|e| err("cannot set permissions on", e.into()))?;
        let st = rustix::fs::statat(&private_fd, inner, AtFlags::SYMLINK_NOFOLLOW)
            .map_err(|e| err("cannot inspect", e.into()))?;
        match rustix::fs::renameat_with(&private_fd, inner, &dir_fd, &name, RenameFlags::NOREPLACE)
        {
            Ok(()) => Ok((listener, (st.st_dev, st.st_ino))),
            Err(rustix::io::Errno::EXIST) => Err(StartError(format!(
                "{} appeared while portresd was binding it (another portresd starting?); refusing to replace it",
                path.display()
            ))),
            Err(e) => Err(err("cannot move the bound socket to", e.into())),
        }
    })();
    let _ = rustix::fs::unlinkat(&private_fd, "s", AtFlags::empty());
    let _ = rustix::fs::unlinkat(&dir_fd, &private, AtFlags::REMOVEDIR);
    let (listener, dev_ino) = bound?;
    Ok((
        listener,
        SocketFile {
            dir: dir_fd,
            name,
            dev_ino,
        },
    ))
}

/// What every thread of the daemon shares.
pub(crate) struct Shared {
    pub(crate) state: Mutex<State>,
    pub(crate) config: Config,
    pub(crate) limits: Mutex<Limits>,
    /// Users over `worker::PER_UID_UNSENT_BUDGET` (kept by
    /// `Limits::move_unsent`): while 0, nobody needs the limits lock to
    /// know that no user is.
    pub(crate) unsent_over: AtomicUsize,
}

impl Shared {
    pub(crate) fn limits(&self) -> MutexGuard<'_, Limits> {
        self.limits.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Connection and buffer accounting, shared by the front (which admits
/// connections) and the workers (which end them).
#[derive(Default)]
pub(crate) struct Limits {
    /// Open connections.
    pub(crate) total: usize,
    /// Open connections per uid.
    pub(crate) per_uid: HashMap<u32, usize>,
    /// Per non-root uid: buffer bytes charged against
    /// `worker::PER_UID_BUFFER_BUDGET`.
    pub(crate) buffered_by_uid: HashMap<u32, usize>,
    /// Per non-root uid: bytes of unsent replies, against
    /// `worker::PER_UID_UNSENT_BUDGET`.
    pub(crate) unsent_by_uid: HashMap<u32, usize>,
    /// Per uid: `List` dump threads running (see
    /// `worker::MAX_LIST_DUMPS_PER_UID`).
    pub(crate) list_dumps_by_uid: HashMap<u32, usize>,
    /// Per non-root uid: descriptors parked (see `PER_UID_PARKED_FDS`).
    pub(crate) parked_by_uid: HashMap<u32, usize>,
    /// Descriptors held for all non-root users together: their
    /// connections and parked descriptors, against `fd_budget`.
    pub(crate) fds_unprivileged: usize,
    /// What non-root users may make the daemon hold: RLIMIT_NOFILE less
    /// the descriptors open at start and a reserve for root and for the
    /// daemon's own work (sysctl writes, probes, dumps), so that no
    /// unprivileged flood can lock root out (see `unprivileged_fd_budget`).
    pub(crate) fd_budget: usize,
    /// When each kind of refusal was last logged (at most once a second per
    /// kind, so a flood cannot fill the log, yet no kind hides another).
    pub(crate) last_log: HashMap<&'static str, Instant>,
}

impl Limits {
    /// A connection of `uid` ended, holding `charged` buffer bytes.
    pub(crate) fn connection_closed(&mut self, uid: u32, charged: usize) {
        self.total = self.total.saturating_sub(1);
        if uid != 0 {
            self.fds_unprivileged = self.fds_unprivileged.saturating_sub(1);
        }
        if let Some(n) = self.per_uid.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.per_uid.remove(&uid);
            }
        }
        self.uncharge(uid, charged);
    }

    /// `uid`'s unsent replies went from `before` to `now` bytes on one
    /// connection; `over` counts the users past the budget.
    pub(crate) fn move_unsent(&mut self, uid: u32, before: usize, now: usize, over: &AtomicUsize) {
        if before == now {
            return;
        }
        let budget = crate::worker::PER_UID_UNSENT_BUDGET;
        let total = self.unsent_by_uid.entry(uid).or_default();
        let was_over = *total > budget;
        *total = (*total + now).saturating_sub(before);
        let is_over = *total > budget;
        if *total == 0 {
            self.unsent_by_uid.remove(&uid);
        }
        match (was_over, is_over) {
            (false, true) => {
                over.fetch_add(1, Ordering::Relaxed);
                log_limited(&mut self.last_log, "unsent", || {
                    format!(
                        "uid {uid}'s connections hold more than {} MiB of unread replies: pausing them until they read",
                        budget >> 20
                    )
                });
            }
            (true, false) => {
                over.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
    }

    /// A connection of non-root `uid` went from `before` to `now` parked
    /// descriptors. `Err` (why) if that passes its user's cap or the
    /// unprivileged budget: the caller closes the connection.
    pub(crate) fn move_parked(
        &mut self,
        uid: u32,
        before: usize,
        now: usize,
    ) -> Result<(), String> {
        let user = self.parked_by_uid.entry(uid).or_default();
        *user = (*user + now).saturating_sub(before);
        let user = *user;
        if user == 0 {
            self.parked_by_uid.remove(&uid);
        }
        self.fds_unprivileged = (self.fds_unprivileged + now).saturating_sub(before);
        if now <= before {
            return Ok(());
        }
        let why = if user > PER_UID_PARKED_FDS {
            format!("uid {uid}'s connections hold more than {PER_UID_PARKED_FDS} descriptors")
        } else if self.fds_unprivileged > self.fd_budget {
            format!(
                "descriptor limit for unprivileged users reached ({} held, the rest is kept for root)",
                self.fd_budget
            )
        } else {
            return Ok(());
        };
        log_limited(&mut self.last_log, "descriptors", || {
            format!("{why}: closing one of uid {uid}'s connections")
        });
        Err(why)
    }

    /// Counts a `List` dump thread for `uid`, unless it has its share
    /// running already (`false`: dump on the worker instead).
    pub(crate) fn start_list_dump(&mut self, uid: u32) -> bool {
        let n = self.list_dumps_by_uid.entry(uid).or_default();
        if *n >= crate::worker::MAX_LIST_DUMPS_PER_UID {
            return false;
        }
        *n += 1;
        true
    }

    /// A `List` dump thread of `uid` is done (or never started).
    pub(crate) fn end_list_dump(&mut self, uid: u32) {
        if let Some(n) = self.list_dumps_by_uid.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.list_dumps_by_uid.remove(&uid);
            }
        }
    }

    /// Whether `uid`'s unsent replies are past the per-user budget.
    pub(crate) fn unsent_over_budget(&self, uid: u32) -> bool {
        self.unsent_by_uid
            .get(&uid)
            .is_some_and(|&n| n > crate::worker::PER_UID_UNSENT_BUDGET)
    }

    pub(crate) fn uncharge(&mut self, uid: u32, bytes: usize) {
        if let Some(n) = self.buffered_by_uid.get_mut(&uid) {
            *n = n.saturating_sub(bytes);
            if *n == 0 {
                self.buffered_by_uid.remove(&uid);
            }
        }
    }
}

/// The accepting loop and its workers.
struct Front {
    shared: Arc<Shared>,
    listener: UnixListener,
    epoll: OwnedFd,
    stop_fd: Arc<OwnedFd>,
    shrink_fd: Arc<OwnedFd>,
    shrink_deadline: Option<Instant>,
    /// When to check the kernel's list next; `None` without kernel sync.
    check_deadline: Option<Instant>,
    workers: Workers,
    /// No worker is left to serve (each died of a bug): stop.
    workers_gone: bool,
    /// Accepting is paused until then (out of descriptors).
    accept_resume: Option<Instant>,
    /// A stop was found asked for while accepting (the workers had already
    /// ended): return as if its event had come.
    stop_seen: bool,
}

impl Front {
    /// Sets up the loop and starts the workers. On failure the state comes
    /// back, so the caller can still shut it down cleanly.
    fn new(d: Daemon) -> Result<Front, (io::Error, Arc<Shared>)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(d.state),
            config: d.config,
            limits: Mutex::new(Limits {
                fd_budget: unprivileged_fd_budget(),
                ..Limits::default()
            }),
            unsent_over: AtomicUsize::new(0),
        });
        let setup = || -> io::Result<(OwnedFd, Workers)> {
            d.listener.set_nonblocking(true)?;
            let epoll = crate::worker::epoll_watching(&[
                (d.listener.as_fd(), TOKEN_LISTENER),
                (d.stop_fd.as_fd(), TOKEN_STOP),
                (d.shrink_fd.as_fd(), TOKEN_SHRINK),
            ])?;
            let usable = crate::worker::usable_cpus();
            let cpus = if shared.config.pin_workers && usable.len() > 1 {
                usable.clone()
            } else {
                Vec::new()
            };
            let count = shared.config.workers.unwrap_or(usable.len()).max(1);
            if cpus.is_empty() {
                log::info!("{count} worker thread(s), not pinned");
            } else {
                log::info!("{count} worker thread(s), pinned round-robin to CPUs {cpus:?}");
            }
            let workers = Workers::start(count, &cpus, shared.clone(), d.stop_fd.clone())?;
            Ok((epoll, workers))
        };
        let kernel_sync = lock(&shared.state).kernel_sync();
        match setup() {
            Ok((epoll, workers)) => Ok(Front {
                check_deadline: kernel_sync.then(|| Instant::now() + KERNEL_CHECK_INTERVAL),
                shared,
                listener: d.listener,
                epoll,
                stop_fd: d.stop_fd,
                shrink_fd: d.shrink_fd,
                shrink_deadline: None,
                workers,
                workers_gone: false,
                accept_resume: None,
                stop_seen: false,
            }),
            Err(e) => Err((e, shared)),
        }
    }

    fn run(&mut self) -> io::Result<()> {
        let mut events: Vec<epoll::Event> = Vec::with_capacity(16);
        loop {
            let next = [
                self.shrink_deadline,
                self.check_deadline,
                self.accept_resume,
            ]
            .into_iter()
            .flatten()
            .min();
            let timeout = next.map(|d| {
                let left = d.saturating_duration_since(Instant::now());
                rustix::event::Timespec {
                    tv_sec: left.as_secs() as i64,
                    tv_nsec: left.subsec_nanos() as i64,
                }
            });
            events.clear();
            match epoll::wait(
                &self.epoll,
                rustix::buffer::spare_capacity(&mut events),
                timeout.as_ref(),
            ) {
                Ok(_) => {}
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
            // A stop comes first, whatever else is ready with it: the
            // workers are stopping too and take no new connections.
            if events.iter().any(|ev| ev.data.u64() == TOKEN_STOP) {
                return Ok(());
            }
            for ev in &events {
                match ev.data.u64() {
                    TOKEN_STOP => return Ok(()),
                    TOKEN_LISTENER => self.accept_all(),
                    TOKEN_SHRINK => {
                        let mut buf = [0u8; 8];
                        let _ = rustix::io::read(&*self.shrink_fd, &mut buf);
                        if self.shrink_deadline.is_none() {
                            self.shrink_deadline = Some(Instant::now() + KERNEL_SHRINK_DELAY);
                        }
                    }
                    _ => {}
                }
            }
            if self.stop_seen {
                return Ok(());
            }
            if self.workers_gone {
                return Err(io::Error::other("every worker thread died"));
            }
            if self.accept_resume.is_some_and(|t| Instant::now() >= t) {
                self.accept_resume = None;
                self.watch_listener(true);
                self.accept_all();
            }
            if self.shrink_deadline.is_some_and(|d| Instant::now() >= d) {
                let again = lock(&self.shared.state).flush_kernel();
                self.shrink_deadline = again.then(|| Instant::now() + KERNEL_SHRINK_DELAY);
            }
            if let Some(d) = self.check_deadline
                && Instant::now() >= d
            {
                self.check_kernel();
                self.check_deadline = Some(Instant::now() + KERNEL_CHECK_INTERVAL);
            }
        }
    }

    /// Checks that nobody else changed the kernel's list, reading it
    /// without the state lock (see `State::check_kernel_text`).
    fn check_kernel(&self) {
        let (generation, reader) = {
            let state = lock(&self.shared.state);
            (state.kernel_generation(), state.kernel_text_reader())
        };
        match reader {
            Some(read) => {
                let text = read();
                lock(&self.shared.state).check_kernel_text(generation, text);
            }
            None => lock(&self.shared.state).check_kernel(),
        }
    }

    /// Makes every worker stop and waits for them; gives back the shared
    /// part for the final shutdown.
    fn stop_workers(self) -> Arc<Shared> {
        let _ = rustix::io::write(&*self.stop_fd, &1u64.to_ne_bytes());
        self.workers.join();
        self.shared
    }

    /// Accepts what is waiting, at most `ACCEPT_BATCH` at a time (the
    /// level-triggered listener brings us back), so a stream of connects
    /// cannot keep the loop from its timers and from seeing a stop.
    fn accept_all(&mut self) {
        const ACCEPT_BATCH: usize = 256;
        for _ in 0..ACCEPT_BATCH {
            if self.workers_gone || self.stop_seen {
                return;
            }
            match self.listener.accept() {
                Ok((stream, _)) => self.accept(stream),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the listener stays
                    // readable, so retrying at once would spin. Leave the
                    // rest in the backlog and look again shortly.
                    log_limited(&mut self.shared.limits().last_log, "accept", || {
                        format!(
                            "accept failed: {e}; pausing new connections for {} ms at a time until descriptors free up",
                            ACCEPT_PAUSE.as_millis()
                        )
                    });
                    self.watch_listener(false);
                    self.accept_resume = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
            }
        }
    }

    /// Whether a stop was asked for (the stop descriptor stays readable).
    fn stopping(&self) -> bool {
        let mut fds = [rustix::event::PollFd::new(
            &*self.stop_fd,
            rustix::event::PollFlags::IN,
        )];
        let zero = rustix::event::Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        rustix::event::poll(&mut fds, Some(&zero)).is_ok_and(|n| n > 0)
    }

    /// Starts or stops watching the listener for connections.
    fn watch_listener(&self, on: bool) {
        let flags = if on {
            epoll::EventFlags::IN
        } else {
            epoll::EventFlags::empty()
        };
        let _ = epoll::modify(
            &self.epoll,
            &self.listener,
            epoll::EventData::new_u64(TOKEN_LISTENER),
            flags,
        );
    }

    fn refuse(&self, kind: &'static str, stream: &UnixStream, uid: u32, pid: i32, why: String) {
        log_limited(&mut self.shared.limits().last_log, kind, || {
            format!("{why}: refusing a connection from uid {uid} pid {pid}")
        });
        send_parting_error(stream, ErrorCode::DaemonUnavailable, why);
    }

    fn accept(&mut self, stream: UnixStream) {
        let creds = match portres_kernel::creds::peer_creds(stream.as_fd()) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("dropping a connection whose credentials cannot be read: {e}");
                return;
            }
        };
        let config = &self.shared.config;
        {
            let mut limits = self.shared.limits();
            let per_uid = limits.per_uid.get(&creds.uid).copied().unwrap_or(0);
            if limits.total >= config.max_connections {
                drop(limits);
                let why = format!(
                    "connection limit reached ({} connections)",
                    config.max_connections
                );
                return self.refuse("total", &stream, creds.uid, creds.pid, why);
            }
            if creds.uid != 0 && per_uid >= config.max_connections_per_uid {
                drop(limits);
                let why = format!(
                    "per-user connection limit reached (uid {} holds {} connections)",
                    creds.uid, config.max_connections_per_uid
                );
                return self.refuse("per-user", &stream, creds.uid, creds.pid, why);
            }
            if creds.uid != 0 && limits.fds_unprivileged >= limits.fd_budget {
                let why = format!(
                    "descriptor limit for unprivileged users reached ({} held, the rest is kept for root)",
                    limits.fd_budget
                );
                drop(limits);
                return self.refuse("descriptors", &stream, creds.uid, creds.pid, why);
            }
            if creds.uid != 0 {
                limits.fds_unprivileged += 1;
            }
            limits.total += 1;
            *limits.per_uid.entry(creds.uid).or_default() += 1;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            log::warn!("dropping a connection: {e}");
            self.shared.limits().connection_closed(creds.uid, 0);
            return;
        }
        let caller = Caller {
            admin: State::is_admin(config, creds.uid, creds.gid, &creds.groups),
            uid: creds.uid,
            gid: creds.gid,
            groups: creds.groups,
            pid: creds.pid,
        };
        let uid = caller.uid;
        let session = lock(&self.shared.state).open_session(caller);
        if let Err(lost) = self.workers.hand_over(NewConn {
            stream,
            session,
            uid,
        }) {
            lock(&self.shared.state).close_session(lost.session);
            self.shared.limits().connection_closed(uid, 0);
            // The workers also end when the daemon is asked to stop, which
            // this loop may not have seen yet: that is no failure.
            if self.stopping() {
                self.stop_seen = true;
            } else {
                log::error!(
                    "every worker thread died; dropping a connection from uid {uid} and stopping, for the service manager to restart portresd"
                );
                self.workers_gone = true;
            }
        }
    }
}

/// How many descriptors non-root users may make the daemon hold (see
/// `Limits::fd_budget`): RLIMIT_NOFILE less what is open now and a reserve
/// of an eighth (at least 64) for root and the daemon's own work.
fn unprivileged_fd_budget() -> usize {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(usize::MAX, |n| usize::try_from(n).unwrap_or(usize::MAX));
    let open = std::fs::read_dir("/proc/self/fd").map_or(64, |d| d.count());
    let reserve = (limit / 8).max(64);
    let budget = limit.saturating_sub(open).saturating_sub(reserve);
    log::info!(
        "descriptors: limit {limit}, {open} open, {budget} for unprivileged users' connections and parked descriptors, the rest kept for root"
    );
    budget
}

/// Logs `msg` at most once a second per `kind` of refusal, so a flood
/// cannot fill the log and no kind hides another.
pub(crate) fn log_limited(
    last: &mut HashMap<&'static str, Instant>,
    kind: &'static str,
    msg: impl FnOnce() -> String,
) {
    if last
        .get(kind)
        .is_none_or(|t| t.elapsed() > Duration::from_secs(1))
    {
        log::warn!("{}", msg());
        last.insert(kind, Instant::now());
    }
}

/// Best-effort error reply to a connection about to be closed (never
/// blocks: a peer that does not read just misses it).
pub(crate) fn send_parting_error(stream: &UnixStream, code: ErrorCode, message: String) {
    let _ = rustix::net::send(
        stream,
        &encode_error(&Error::new(code, message)),
        rustix::net::SendFlags::DONTWAIT | rustix::net::SendFlags::NOSIGNAL,
    );
}
