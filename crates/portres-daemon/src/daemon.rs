//! The daemon's life: `Daemon::start` locks the state directory, opens the
//! store, attaches strict mode's bind hooks (`--enforce`), decides kernel
//! sync (claiming the network namespace's sysctl), restores persistent
//! reservations (guarded before anyone can ask) and binds the socket (or
//! takes the one the service manager passed, `systemd::PassedSockets`);
//! `Daemon::run` tells the service manager it is ready
//! (`systemd::Notifier`), serves (`front.rs` and its workers) until a
//! `StopHandle` says stop, then shuts down cleanly and only then lets go
//! of the locks.

use std::fmt;
use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, Enforce, KernelSync, PortserverAddress};
use crate::events::EventFd;
use crate::front::{Front, Listeners, Signals};
use crate::socket::{SocketFile, bind_socket, default_socket, missing_socket_dir};
use crate::state::{State, lock};
use crate::systemd::{CLIENT_SOCKET_NAME, Notifier, PORTSERVER_SOCKET_NAME, PassedSockets};

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
    stop: Arc<EventFd>,
}

impl StopHandle {
    /// Makes `Daemon::run` stop cleanly and return.
    pub fn stop(&self) {
        self.stop.signal();
    }
}

/// Asks a running daemon to re-read its portres.d files, as
/// `io.portres.Reload` does (for SIGHUP). Cheap to clone.
#[derive(Clone, Debug)]
pub struct ReloadHandle {
    reload: Arc<EventFd>,
}

impl ReloadHandle {
    /// Makes the daemon reload soon (on its front thread); several asks
    /// before it gets to it make one reload.
    pub fn reload(&self) {
        self.reload.signal();
    }
}

/// A started daemon: store open, kernel in sync, socket bound.
pub struct Daemon {
    state: State,
    config: Config,
    listener: UnixListener,
    /// The portserver endpoint's listeners (`Config::portserver`).
    portserver: Vec<UnixListener>,
    socket: PathBuf,
    /// Held for the daemon's whole life; released last (see `run`).
    guards: Option<Guards>,
    /// Signalled to stop (`StopHandle`), and by the front to stop the
    /// workers.
    stop: Arc<EventFd>,
    /// Signalled when a release left the kernel a shrink to do.
    shrink: Arc<EventFd>,
    /// The service manager, told READY=1, STATUS= and STOPPING=1.
    notifier: Notifier,
    /// Signalled to re-read the portres.d files (`ReloadHandle`).
    reload: Arc<EventFd>,
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

/// What a daemon holds until it has stopped: the state directory's lock,
/// the claim on the namespace's sysctl, and what it needs to remove its
/// socket file (and only that file) at the end — none for a socket the
/// service manager passed: that one is the manager's, never unlinked.
struct Guards {
    _state_dir: portres_store::StateDirLock,
    _kernel_owner: Option<portres_kernel::owner::KernelOwner>,
    socket_file: Option<SocketFile>,
    /// The portserver endpoint's socket files (abstract names have none).
    portserver_files: Vec<SocketFile>,
}

impl Daemon {
    /// Locks the state directory (before anything else: a second daemon on
    /// it is refused here, naming the first), opens the store, attaches
    /// strict mode's hooks, decides kernel sync (claiming the network
    /// namespace's sysctl), restores persistent reservations (and guards
    /// them), writes the kernel's value, and binds the socket.
    pub fn start(config: Config) -> Result<Daemon, StartError> {
        Daemon::start_with(config, &mut PassedSockets::none())
    }

    /// `start`, serving on the client socket the service manager passed
    /// (`CLIENT_SOCKET_NAME`, see `PassedSockets::take_listener`) if there
    /// is one: then `config.socket` becomes that socket's path, nothing is
    /// bound, made or checked at the configured path, and the socket file
    /// is left in place at the end.
    pub fn start_with(
        mut config: Config,
        passed: &mut PassedSockets,
    ) -> Result<Daemon, StartError> {
        let passed_listener = passed.take_listener(CLIENT_SOCKET_NAME)?;
        if passed_listener.is_none() && !passed.is_empty() {
            log::info!(
                "the service manager passed socket(s) named {:?} but none named {CLIENT_SOCKET_NAME:?} (FileDescriptorName=): binding {} itself",
                passed.untaken(),
                config.socket.display()
            );
        }
        if let Some(listener) = &passed_listener
            && let Ok(addr) = listener.local_addr()
            && let Some(path) = addr.as_pathname()
        {
            if config.socket != path {
                log::info!(
                    "serving on the socket the service manager passed, {}, not {}",
                    path.display(),
                    config.socket.display()
                );
            }
            config.socket = path.to_path_buf();
        }
        // A socket directory we may not create fails before anything is
        // made (the state directory included); `bind_socket` checks again.
        if passed_listener.is_none()
            && let Some(dir) = config.socket.parent().filter(|d| !d.as_os_str().is_empty())
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
        // Before the kernel's list is touched: `--enforce strict` that
        // cannot attach refuses to start having changed nothing.
        let enforcer = decide_enforcement(&config)?;
        let (kernel, kernel_owner) = decide_kernel_sync(&config)?;
        let mut state = State::new(
            config.clone(),
            store,
            Arc::new(crate::kernel::LinuxKernel),
            kernel,
        )
        .map_err(|e| StartError(e.message))?;
        state
            .set_enforcer(enforcer)
            .map_err(|e| StartError(e.message))?;
        let eventfd = || EventFd::new().map_err(|e| StartError(format!("eventfd: {e}")));
        let shrink = Arc::new(eventfd()?);
        let hook = shrink.clone();
        state.set_on_shrink_pending(Box::new(move || hook.signal()));
        // Declared reservations are in place before anyone can connect
        // (after the shrink hook: deleting one leaves the kernel a shrink
        // to do); what cannot be applied is logged and in `status`, never
        // fatal.
        crate::declared::reload_unlocked(&mut state);
        let stop = Arc::new(eventfd()?);
        let reload = Arc::new(eventfd()?);
        // The portserver listeners first: once the main socket accepts
        // (what "ready" means), they do too.
        let (mut portserver, portserver_files) = bind_portserver(&config)?;
        // A portserver socket the service manager passed
        // (FileDescriptorName=portserver) is served as well, and never
        // unlinked.
        if let Some(passed_portserver) = passed.take_listener(PORTSERVER_SOCKET_NAME)? {
            portserver.push(passed_portserver);
        }
        let (listener, socket_file) = match passed_listener {
            Some(listener) => (listener, None),
            None => {
                let (listener, file) =
                    bind_socket(&config.socket, config.mode).inspect_err(|_| {
                        for f in &portserver_files {
                            f.remove();
                        }
                    })?;
                (listener, Some(file))
            }
        };
        let (_, persistent) = state.counts();
        log::info!(
            "portresd {} ({} mode) listening on {}{}; store {}{}; kernel sync {}; enforcement {}; {} persistent reservation(s) restored",
            env!("CARGO_PKG_VERSION"),
            config.mode.as_str(),
            config.socket.display(),
            if socket_file.is_none() {
                " (passed by the service manager)"
            } else {
                ""
            },
            state.store().path().display(),
            if state.store().is_read_only() {
                " (READ-ONLY: persistent changes fail until it is writable)"
            } else {
                ""
            },
            if state.kernel_sync() { "on" } else { "off" },
            state.enforcement_summary(),
            persistent,
        );
        for address in &config.portserver {
            log::info!("portserver endpoint (portpicker's protocol) on {address}");
        }
        Ok(Daemon {
            state,
            socket: config.socket.clone(),
            config,
            listener,
            portserver,
            guards: Some(Guards {
                _state_dir: state_dir_lock,
                _kernel_owner: kernel_owner,
                socket_file,
                portserver_files,
            }),
            stop,
            shrink,
            notifier: Notifier::from_env(),
            reload,
        })
    }

    /// The socket path it listens on.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// A handle that makes `run` return.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            stop: self.stop.clone(),
        }
    }

    /// A handle that makes the running daemon reload its portres.d files.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            reload: self.reload.clone(),
        }
    }

    /// Serves on the calling thread until `StopHandle::stop`, then stops
    /// cleanly: runtime reservations end, the kernel keeps baseline +
    /// persistent blocks, the socket file is removed.
    pub fn run(mut self) -> io::Result<()> {
        let guards = self.guards.take();
        let Daemon {
            state,
            config,
            listener,
            portserver,
            stop,
            shrink,
            notifier,
            reload,
            ..
        } = self;
        let (result, shared) = match Front::new(
            state,
            config,
            Listeners {
                varlink: listener,
                portserver,
            },
            Signals {
                stop,
                shrink,
                reload,
            },
            notifier.clone(),
        ) {
            Ok(mut front) => {
                let result = front.run();
                notifier.stopping();
                (result, front.stop_workers())
            }
            Err((e, shared)) => (Err(e), shared),
        };
        if let Some(g) = &guards {
            if let Some(file) = &g.socket_file {
                file.remove();
            }
            for f in &g.portserver_files {
                f.remove();
            }
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

/// Strict mode, per `--enforce`: `auto` attaches the bind hooks when it
/// can, else goes on without them after one warning saying why; `strict`
/// refuses to start instead; `off` never loads them.
fn decide_enforcement(config: &Config) -> Result<Box<dyn crate::kernel::Enforcer>, StartError> {
    use crate::kernel::{LinuxEnforcer, NoEnforcer};
    if config.enforce == Enforce::Off {
        return Ok(Box::new(NoEnforcer::new("--enforce off")));
    }
    let record = config.state_dir.join("session-cgroups");
    match LinuxEnforcer::attach(config.enforce_cgroup.as_deref(), Some(record)) {
        Ok(enforcer) => Ok(Box::new(enforcer)),
        Err(e) if config.enforce == Enforce::Strict => Err(StartError(format!(
            "--enforce strict, but the bind hooks cannot be attached: {e}"
        ))),
        Err(e) => {
            log::warn!(
                "enforcement off: the bind hooks cannot be attached ({e}); reservations keep the kernel's automatic choice off their ports, but any process may still bind them explicitly"
            );
            Ok(Box::new(NoEnforcer::new(format!(
                "the bind hooks cannot be attached: {e}"
            ))))
        }
    }
}

/// Binds the portserver endpoint's listeners: a path as safely as the
/// main socket (`bind_socket`: same directory rules and file mode), an
/// abstract name as it is (it belongs to the network namespace; nothing to
/// remove at the end).
fn bind_portserver(config: &Config) -> Result<(Vec<UnixListener>, Vec<SocketFile>), StartError> {
    use std::os::linux::net::SocketAddrExt;
    let mut listeners = Vec::new();
    let mut files: Vec<SocketFile> = Vec::new();
    for address in &config.portserver {
        match address {
            PortserverAddress::Path(path) => {
                let (listener, file) = bind_socket(path, config.mode).inspect_err(|_| {
                    for f in &files {
                        f.remove();
                    }
                })?;
                listeners.push(listener);
                files.push(file);
            }
            PortserverAddress::Abstract(name) => {
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .map_err(|e| StartError(format!("--portserver {address}: {e}")))?;
                let listener = UnixListener::bind_addr(&addr).map_err(|e| {
                    for f in &files {
                        f.remove();
                    }
                    StartError(format!(
                        "cannot listen on the abstract socket {address}: {e}{}",
                        if e.kind() == io::ErrorKind::AddrInUse {
                            " (another portserver, or another portresd, holds it in this network namespace)"
                        } else {
                            ""
                        }
                    ))
                })?;
                listeners.push(listener);
                // Node's net.connect (libuv before uv_pipe_connect2) passes
                // an abstract name padded with NULs to the whole sun_path:
                // a different name. Serve that one too, so Node clients
                // reach `@name` (clients/node); best effort.
                let padded = padded_abstract_name(name);
                if padded.len() > name.len() {
                    match std::os::unix::net::SocketAddr::from_abstract_name(&padded)
                        .and_then(|a| UnixListener::bind_addr(&a))
                    {
                        Ok(l) => listeners.push(l),
                        Err(e) => log::warn!(
                            "--portserver {address}: cannot also listen on its NUL-padded form (what Node's net.connect asks for): {e}"
                        ),
                    }
                }
            }
        }
    }
    Ok((listeners, files))
}

/// `name` padded with NULs to the longest abstract name (sun_path's 108
/// bytes less the leading NUL), as libuv sends it.
fn padded_abstract_name(name: &[u8]) -> Vec<u8> {
    const SUN_PATH: usize = 108;
    let mut padded = name.to_vec();
    padded.resize((SUN_PATH - 1).max(name.len()), 0);
    padded
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
