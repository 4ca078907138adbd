//! The listening socket: its directory (created only for the mode's
//! default socket, refused if others could tamper with it), binding it with
//! its mode set without following a path someone else could change, and
//! removing the socket file at the end (only if it is still ours).

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::config::Mode;
use crate::daemon::StartError;

/// The socket path of the mode's defaults (`portres_proto::paths`), whose
/// directory alone portresd may create.
pub(crate) fn default_socket(mode: Mode) -> PathBuf {
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

pub(crate) fn missing_socket_dir(dir: &Path, mode: Mode) -> StartError {
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
pub(crate) struct SocketFile {
    dir: OwnedFd,
    name: OsString,
    dev_ino: (u64, u64),
}

impl SocketFile {
    pub(crate) fn remove(&self) {
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
pub(crate) fn bind_socket(
    path: &Path,
    mode: Mode,
) -> Result<(UnixListener, SocketFile), StartError> {
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
