//! The transport: the listening socket, one task per connection, framing,
//! descriptor bookkeeping, connection limits and clean shutdown. It decodes
//! requests and hands them to the state owner under one lock; it decides
//! nothing itself.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use portres_core::{Caller, Error, ErrorCode, SessionId};
use portres_proto::fdpass::{recv_with_fds, send_with_fds};
use portres_proto::{FrameBuffer, MAX_FDS_PER_MESSAGE, MAX_REQUEST_BYTES, Request, encode_error};
use tokio::io::Interest;
use tokio::net::UnixStream;

use crate::config::{Config, KernelSync, Mode};
use crate::handlers::{Outcome, dispatch, fill_in_use};
use crate::state::State;

/// Why the daemon could not start.
#[derive(Debug)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// How long a release may leave its ports reserved in the kernel before the
/// smaller value is written (one write covers every release meanwhile).
pub const KERNEL_SHRINK_DELAY: Duration = Duration::from_millis(5);

struct Shared {
    state: Mutex<State>,
    shrink_pending: Arc<tokio::sync::Notify>,
    config: Config,
    connections: AtomicUsize,
    per_uid: Mutex<HashMap<u32, usize>>,
    last_limit_log: Mutex<Option<Instant>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A handler that panicked mid-request would poison the lock; the
        // state it left is still consistent at the granularity we care about
        // (every handler validates before mutating), so keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A started daemon: store open, kernel in sync, socket bound.
pub struct Daemon {
    shared: Arc<Shared>,
    listener: std::os::unix::net::UnixListener,
    socket: PathBuf,
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

impl Daemon {
    /// Opens the store, decides kernel sync, restores persistent
    /// reservations, writes the kernel's value, and binds the socket.
    pub fn start(config: Config) -> Result<Daemon, StartError> {
        raise_fd_limit();
        let store = portres_store::Store::open(&config.state_dir).map_err(|e| {
            StartError(format!(
                "cannot open the store in {}: {e}",
                config.state_dir.display()
            ))
        })?;
        let kernel = decide_kernel_sync(config.kernel_sync)?;
        let cookie = portres_kernel::sock::current_netns_cookie()
            .map_err(|e| StartError(format!("cannot read our network namespace cookie: {e}")))?;
        let mut state = State::new(
            config.clone(),
            store,
            kernel,
            Box::new(portres_kernel::probe::port_in_use),
            cookie,
        )
        .map_err(|e| StartError(e.message))?;
        let shrink_pending = Arc::new(tokio::sync::Notify::new());
        let notify = shrink_pending.clone();
        state.set_on_shrink_pending(Box::new(move || notify.notify_one()));
        let listener = bind_socket(&config.socket, config.mode)?;
        let (_, persistent) = state.counts();
        log::info!(
            "portresd {} ({} mode) listening on {}; store {}; kernel sync {}; {} persistent reservation(s) restored",
            env!("CARGO_PKG_VERSION"),
            config.mode.as_str(),
            config.socket.display(),
            state.store.path().display(),
            if state.kernel.is_some() { "on" } else { "off" },
            persistent,
        );
        Ok(Daemon {
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                shrink_pending,
                config: config.clone(),
                connections: AtomicUsize::new(0),
                per_uid: Mutex::new(HashMap::new()),
                last_limit_log: Mutex::new(None),
            }),
            listener,
            socket: config.socket,
        })
    }

    /// The socket path it listens on.
    pub fn socket_path(&self) -> &Path {
        &self.socket
    }

    /// Serves until `shutdown` completes, then stops cleanly: runtime
    /// reservations end, the kernel keeps baseline + persistent blocks, the
    /// socket file is removed. Must be called inside a tokio runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        self.listener.set_nonblocking(true)?;
        let listener = tokio::net::UnixListener::from_std(self.listener)?;
        let shared = self.shared.clone();
        let flusher = shared.clone();
        tokio::spawn(async move {
            loop {
                flusher.shrink_pending.notified().await;
                tokio::time::sleep(KERNEL_SHRINK_DELAY).await;
                flusher.state().flush_kernel();
            }
        });
        let accept_loop = async {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => accept(&shared, stream),
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        log::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        tokio::select! {
            _ = accept_loop => {}
            _ = shutdown => {}
        }
        drop(listener);
        let _ = std::fs::remove_file(&self.socket);
        let mut state = self.shared.state();
        state.shutdown();
        log::info!("portresd stopped");
        Ok(())
    }
}

fn decide_kernel_sync(
    mode: KernelSync,
) -> Result<Option<Box<dyn portres_kernel::sysctl::ReservedPorts>>, StartError> {
    use portres_kernel::sysctl::ProcReservedPorts;
    let sysctl = ProcReservedPorts::new();
    match mode {
        KernelSync::Off => {
            log::info!(
                "kernel sync off (--kernel-sync off): ip_local_reserved_ports is left alone"
            );
            Ok(None)
        }
        KernelSync::On => match sysctl.check_writable() {
            Ok(()) => Ok(Some(Box::new(sysctl))),
            Err(e) => Err(StartError(format!(
                "--kernel-sync on, but {} is not writable: {e} (run as root, or in a network namespace you own)",
                ProcReservedPorts::DEFAULT_PATH
            ))),
        },
        KernelSync::Auto => match sysctl.check_writable() {
            Ok(()) => Ok(Some(Box::new(sysctl))),
            Err(e) => {
                log::warn!(
                    "kernel sync off: cannot write {} ({e}); reservations still arbitrate between portres users, but the kernel's bind(0)/connect() may hand out reserved ports",
                    ProcReservedPorts::DEFAULT_PATH
                );
                Ok(None)
            }
        },
    }
}

fn bind_socket(path: &Path, mode: Mode) -> Result<std::os::unix::net::UnixListener, StartError> {
    let err = |what: &str, e: io::Error| StartError(format!("{what} {}: {e}", path.display()));
    if let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty() && !d.exists())
    {
        std::fs::create_dir_all(dir).map_err(|e| err("cannot create the directory of", e))?;
        // System mode: anyone may reach the socket (permissions are judged
        // per request from peer credentials). User mode: only us.
        let perm = if mode == Mode::System { 0o755 } else { 0o700 };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(perm))
            .map_err(|e| err("cannot set permissions on the directory of", e))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(StartError(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(StartError(format!(
                "another portresd is already listening on {}",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(|e| err("cannot remove the stale socket", e))?;
    }
    let listener =
        std::os::unix::net::UnixListener::bind(path).map_err(|e| err("cannot listen on", e))?;
    let perm = if mode == Mode::System { 0o666 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(perm))
        .map_err(|e| err("cannot set permissions on", e))?;
    Ok(listener)
}

fn accept(shared: &Arc<Shared>, stream: UnixStream) {
    let creds = match portres_kernel::creds::peer_creds(stream.as_fd()) {
        Ok(c) => c,
        Err(e) => {
            log::warn!("dropping a connection whose credentials cannot be read: {e}");
            return;
        }
    };
    let total = shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let per_uid = {
        let mut m = shared.per_uid.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(creds.uid).or_default();
        *n += 1;
        *n
    };
    let over_total = total > shared.config.max_connections;
    let over_uid = creds.uid != 0 && per_uid > shared.config.max_connections_per_uid;
    if over_total || over_uid {
        release_slot(shared, creds.uid);
        let why = if over_total {
            format!(
                "connection limit reached ({} connections)",
                shared.config.max_connections
            )
        } else {
            format!(
                "per-user connection limit reached (uid {} holds {} connections)",
                creds.uid, shared.config.max_connections_per_uid
            )
        };
        {
            let mut last = shared
                .last_limit_log
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
                log::warn!(
                    "{why}: refusing a connection from uid {} pid {}",
                    creds.uid,
                    creds.pid
                );
                *last = Some(Instant::now());
            }
        }
        let _ = stream.try_write(&encode_error(&Error::new(
            ErrorCode::DaemonUnavailable,
            why,
        )));
        return;
    }
    let caller = Caller {
        admin: State::is_admin(&shared.config, creds.uid, creds.gid, &creds.groups),
        uid: creds.uid,
        gid: creds.gid,
        groups: creds.groups,
        pid: creds.pid,
    };
    let uid = caller.uid;
    let session = shared.state().open_session(caller);
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Err(e) = serve(&shared, &stream, session).await {
            log::debug!("session {} ended: {e}", session.0);
        }
        shared.state().close_session(session);
        release_slot(&shared, uid);
    });
}

fn release_slot(shared: &Shared, uid: u32) {
    shared.connections.fetch_sub(1, Ordering::SeqCst);
    let mut m = shared.per_uid.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = m.get_mut(&uid) {
        *n -= 1;
        if *n == 0 {
            m.remove(&uid);
        }
    }
}

/// Descriptors received, each tagged with the stream offset of the first
/// byte that came with it: the kernel delivers SCM_RIGHTS with the bytes of
/// the sendmsg() that carried them, so the frame containing that byte is the
/// request they belong to.
type PendingFds = VecDeque<(u64, OwnedFd)>;

/// Most descriptors queued on one connection before it is dropped.
const MAX_PENDING_FDS: usize = 16;

async fn serve(shared: &Shared, stream: &UnixStream, session: SessionId) -> io::Result<()> {
    let mut frames = FrameBuffer::new(MAX_REQUEST_BYTES);
    let mut received: u64 = 0;
    let mut frame_end: u64 = 0;
    let mut pending: PendingFds = VecDeque::new();
    let mut chunk_fds: VecDeque<OwnedFd> = VecDeque::new();
    loop {
        // Answer every whole request already buffered, in order.
        loop {
            let (request, oneway, mut fds) = match frames.next_frame() {
                Ok(None) => break,
                Err(e) => {
                    let _ = write_frame(
                        stream,
                        &encode_error(&Error::new(ErrorCode::InvalidParameter, e.to_string())),
                    )
                    .await;
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                }
                Ok(Some(frame)) => {
                    frame_end += frame.len() as u64 + 1;
                    // Descriptors that arrived with this frame's bytes.
                    let mut fds = Vec::new();
                    while pending.front().is_some_and(|(off, _)| *off < frame_end) {
                        fds.push(pending.pop_front().expect("checked").1);
                    }
                    match Request::decode(frame) {
                        Ok((req, oneway)) => (Ok(req), oneway, fds),
                        Err(e) => (Err(e), false, fds),
                    }
                }
            };
            let outcome = match request {
                Err(e) => Outcome::Reply(encode_error(&e)),
                Ok(req) => {
                    let expected = req.fds_expected();
                    if fds.len() > expected {
                        let extra = fds.len() - expected;
                        fds.truncate(expected);
                        let e = Error::new(
                            ErrorCode::InvalidParameter,
                            format!(
                                "{} takes {expected} descriptor(s); {extra} more were sent",
                                req.method()
                            ),
                        );
                        write_frame(stream, &encode_error(&e)).await?;
                        continue;
                    }
                    let fd = fds.pop();
                    let mut state = shared.state();
                    dispatch(&mut state, session, req, fd)
                }
            };
            if oneway {
                continue;
            }
            match outcome {
                Outcome::Reply(bytes) => write_frame(stream, &bytes).await?,
                Outcome::ReplyWithFd(bytes, fd) => write_frame_with_fd(stream, &bytes, fd).await?,
                Outcome::List(mut list) => {
                    let filled =
                        tokio::task::spawn_blocking(move || fill_in_use(&mut list).map(|()| list))
                            .await
                            .unwrap_or_else(|e| {
                                Err(Error::new(ErrorCode::Internal, e.to_string()))
                            });
                    let bytes = match filled {
                        Ok(list) => portres_proto::encode_reply(&portres_proto::ListReply {
                            reservations: list,
                        }),
                        Err(e) => encode_error(&e),
                    };
                    write_frame(stream, &bytes).await?;
                }
            }
        }
        // Read more.
        let got = loop {
            stream.readable().await?;
            let spare_len = 16 * 1024;
            let spare = frames.spare(spare_len);
            match stream.try_io(Interest::READABLE, || {
                recv_with_fds(stream, spare, &mut chunk_fds)
            }) {
                Ok(got) => {
                    frames.commit(got.bytes, spare_len);
                    break got;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    frames.commit(0, spare_len);
                    continue;
                }
                Err(e) => return Err(e),
            }
        };
        if got.bytes == 0 {
            return Ok(());
        }
        for fd in chunk_fds.drain(..) {
            pending.push_back((received, fd));
        }
        received += got.bytes as u64;
        if got.fds_truncated || pending.len() > MAX_PENDING_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "more than {MAX_FDS_PER_MESSAGE} descriptors per message or {MAX_PENDING_FDS} pending"
                ),
            ));
        }
    }
}

async fn write_frame(stream: &UnixStream, bytes: &[u8]) -> io::Result<()> {
    let mut written = 0;
    while written < bytes.len() {
        stream.writable().await?;
        match stream.try_write(&bytes[written..]) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

async fn write_frame_with_fd(stream: &UnixStream, bytes: &[u8], fd: OwnedFd) -> io::Result<()> {
    loop {
        stream.writable().await?;
        match stream.try_io(Interest::WRITABLE, || {
            send_with_fds(stream.as_fd(), bytes, &[fd.as_fd()])
        }) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
}
