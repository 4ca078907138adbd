//! The daemon's life: `Daemon::start` locks the state directory, opens the
//! store, decides kernel sync (claiming the network namespace's sysctl),
//! restores persistent reservations and binds the socket; `Daemon::run`
//! serves (`front.rs` and its workers) until a `StopHandle` says stop, then
//! shuts down cleanly and only then lets go of the locks.

use std::fmt;
use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, KernelSync, PortserverAddress};
use crate::events::EventFd;
use crate::front::Front;
use crate::socket::{SocketFile, bind_socket, default_socket, missing_socket_dir};
use crate::state::{State, lock};

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
/// socket file (and only that file) at the end.
struct Guards {
    _state_dir: portres_store::StateDirLock,
    _kernel_owner: Option<portres_kernel::owner::KernelOwner>,
    socket_file: SocketFile,
    /// The portserver endpoint's socket files (abstract names have none).
    portserver_files: Vec<SocketFile>,
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
        let eventfd = || EventFd::new().map_err(|e| StartError(format!("eventfd: {e}")));
        let shrink = Arc::new(eventfd()?);
        let hook = shrink.clone();
        state.set_on_shrink_pending(Box::new(move || hook.signal()));
        let stop = Arc::new(eventfd()?);
        // The portserver listeners first: once the main socket accepts
        // (what "ready" means), they do too.
        let (portserver, portserver_files) = bind_portserver(&config)?;
        let (listener, socket_file) =
            bind_socket(&config.socket, config.mode).inspect_err(|_| {
                for f in &portserver_files {
                    f.remove();
                }
            })?;
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
            ..
        } = self;
        let (result, shared) = match Front::new(state, config, listener, portserver, stop, shrink) {
            Ok(mut front) => {
                let result = front.run();
                (result, front.stop_workers())
            }
            Err((e, shared)) => (Err(e), shared),
        };
        if let Some(g) = &guards {
            g.socket_file.remove();
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
