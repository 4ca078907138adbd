//! Which daemon a client may talk to. Owns connecting to one socket
//! candidate with the checks its kind (`SocketKind`) demands, and reading
//! who answered (`SO_PEERCRED`).
//!
//! - A user-mode socket (the caller's own daemon at its default path, often
//!   under a world-writable `/tmp`) is used only when its directory is owned
//!   by the caller and writable by nobody else and the socket is the
//!   caller's. The directory is opened once (`O_PATH|O_NOFOLLOW`), checked
//!   with `fstat`, and the client connects *through that descriptor*
//!   (`/proc/self/fd/N/portres.sock`), so the object checked is the one
//!   connected to: nobody can swap the directory in between, and nobody but
//!   the caller can change what is inside it.
//! - After connecting, the daemon's credentials decide: a user-mode socket
//!   must be answered by the caller's uid, the system socket by root. This is
//!   the real guarantee (the kernel recorded who listens); the path checks
//!   keep the client from even connecting to a planted socket.
//! - An explicit socket (`PORTRES_SOCKET`, `--socket`, a path handed to the
//!   library) is used whoever answers; who did is kept for `status`.
//!
//! A refusal is `daemon_untrusted` saying what was wrong; the client sent
//! nothing on that socket.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use portres_core::{Error, ErrorCode};
use portres_proto::paths::SocketKind;
use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// Who answered on a daemon socket, as the kernel recorded it when the
/// daemon called `listen()` (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DaemonIdentity {
    /// The daemon's process id in our pid namespace; 0 when its process is
    /// not visible from here (another pid namespace).
    pub pid: i32,
    /// The daemon's effective user id.
    pub uid: u32,
    /// The daemon's effective group id.
    pub gid: u32,
}

impl DaemonIdentity {
    /// "pid 812, uid 0 (root)", "… (you)", "… (not root, not you)" — from
    /// the point of view of a caller with effective uid `me`.
    pub fn describe(&self, me: u32) -> String {
        let who = if self.uid == 0 {
            "root"
        } else if self.uid == me {
            "you"
        } else {
            "not root, not you"
        };
        format!("pid {}, uid {} ({who})", self.pid, self.uid)
    }
}

/// The caller's effective uid: what a daemon sees of us, and what our own
/// daemon must run as.
pub(crate) fn my_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

pub(crate) fn unavailable(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::DaemonUnavailable,
        format!("cannot reach portresd at {}: {e}", path.display()),
    )
}

fn untrusted(path: &Path, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorCode::DaemonUntrusted,
        format!("refusing the socket {}: {why}", path.display()),
    )
}

/// Connects to `path` with the checks `kind` demands; returns the stream
/// and who answered. Nothing has been sent on the stream.
pub(crate) fn connect(
    path: &Path,
    kind: SocketKind,
) -> Result<(UnixStream, DaemonIdentity), Error> {
    let me = my_uid();
    let stream = match kind {
        SocketKind::User => connect_user_socket(path, me)?,
        SocketKind::Explicit => UnixStream::connect(path).map_err(|e| {
            unavailable(
                path,
                format!(
                    "{e} (named by PORTRES_SOCKET or --socket; start a daemon there with `portresd --socket {}`)",
                    path.display()
                ),
            )
        })?,
        SocketKind::System => UnixStream::connect(path).map_err(|e| unavailable(path, e))?,
    };
    let daemon = peer_identity(stream.as_fd())
        .map_err(|e| untrusted(path, format!("cannot tell who answered: {e}")))?;
    match kind {
        SocketKind::User if daemon.uid != me => Err(untrusted(
            path,
            format!(
                "answered by {}, but your own daemon runs as you (uid {me})",
                daemon.describe(me)
            ),
        )),
        SocketKind::System if daemon.uid != 0 => Err(untrusted(
            path,
            format!(
                "answered by {}, but the system daemon runs as root",
                daemon.describe(me)
            ),
        )),
        _ => Ok((stream, daemon)),
    }
}

/// The user-mode checks on the directory and the socket, then the connect
/// through the checked directory's descriptor.
fn connect_user_socket(path: &Path, me: u32) -> Result<UnixStream, Error> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(untrusted(path, "not a path to a socket in a directory"));
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let dir_fd = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::NOENT => unavailable(path, format!("no directory {}", dir.display())),
        rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP => untrusted(
            path,
            format!("{} is not a directory (a symbolic link?)", dir.display()),
        ),
        e => unavailable(path, format!("cannot open {}: {e}", dir.display())),
    })?;
    let st = rustix::fs::fstat(&dir_fd)
        .map_err(|e| unavailable(path, format!("cannot inspect {}: {e}", dir.display())))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return Err(untrusted(
            path,
            format!("{} is not a directory", dir.display()),
        ));
    }
    let mode = st.st_mode & 0o7777;
    if st.st_uid != me || mode & 0o022 != 0 {
        return Err(untrusted(
            path,
            format!(
                "its directory {} is owned by uid {} with mode {mode:o}; a user-mode socket's directory must be owned by you (uid {me}) and writable by nobody else",
                dir.display(),
                st.st_uid
            ),
        ));
    }
    // Only we can change what is in the directory now, so what we check
    // here is what we connect to below.
    let sock = rustix::fs::statat(&dir_fd, name, AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| unavailable(path, io::Error::from(e)))?;
    if FileType::from_raw_mode(sock.st_mode) != FileType::Socket {
        return Err(unavailable(path, "not a socket"));
    }
    if sock.st_uid != me {
        return Err(untrusted(
            path,
            format!(
                "the socket is owned by uid {}, not you (uid {me})",
                sock.st_uid
            ),
        ));
    }
    // Through the descriptor when /proc is there (the directory checked
    // is the one used); otherwise by path, and the credentials check
    // after connecting still holds.
    let via_fd = PathBuf::from(format!("/proc/self/fd/{}", dir_fd.as_raw_fd())).join(name);
    let target = if Path::new("/proc/self/fd").is_dir() {
        via_fd.as_path()
    } else {
        path
    };
    UnixStream::connect(target).map_err(|e| unavailable(path, e))
}

/// SO_PEERCRED of a connected Unix socket.
fn peer_identity(fd: BorrowedFd<'_>) -> io::Result<DaemonIdentity> {
    let peer = portres_proto::peer::peer_process(fd)?;
    Ok(DaemonIdentity {
        pid: peer.pid,
        uid: peer.uid,
        gid: peer.gid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixListener;

    fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("portres-trust-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[test]
    fn own_socket_in_own_private_directory_is_used() {
        let dir = tempdir("own");
        let path = dir.join("portres.sock");
        let _l = UnixListener::bind(&path).unwrap();
        let (_s, who) = connect(&path, SocketKind::User).unwrap();
        assert_eq!(who.uid, my_uid());
        assert_eq!(who.pid, std::process::id() as i32);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writable_by_others_or_symlinked_directory_is_refused() {
        let dir = tempdir("loose");
        let path = dir.join("portres.sock");
        let _l = UnixListener::bind(&path).unwrap();
        for mode in [0o770, 0o702, 0o1777] {
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = connect(&path, SocketKind::User).unwrap_err();
            assert_eq!(e.code, ErrorCode::DaemonUntrusted, "{mode:o}: {e}");
            assert!(e.message.contains("writable by nobody else"), "{e}");
            // Explicitly named: used.
            connect(&path, SocketKind::Explicit).unwrap();
        }
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let link = dir.with_extension("link");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let e = connect(&link.join("portres.sock"), SocketKind::User).unwrap_err();
        assert_eq!(e.code, ErrorCode::DaemonUntrusted, "{e}");
        std::fs::remove_file(&link).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_socket_or_directory_is_unavailable_not_untrusted() {
        let dir = tempdir("missing");
        let e = connect(&dir.join("portres.sock"), SocketKind::User).unwrap_err();
        assert_eq!(e.code, ErrorCode::DaemonUnavailable, "{e}");
        let e = connect(&dir.join("nodir/portres.sock"), SocketKind::User).unwrap_err();
        assert_eq!(e.code, ErrorCode::DaemonUnavailable, "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn describe_names_who_answered() {
        let d = DaemonIdentity {
            pid: 7,
            uid: 1000,
            gid: 1000,
        };
        assert_eq!(d.describe(1000), "pid 7, uid 1000 (you)");
        assert_eq!(d.describe(0), "pid 7, uid 1000 (not root, not you)");
        let root = DaemonIdentity { uid: 0, ..d };
        assert_eq!(root.describe(1000), "pid 7, uid 0 (root)");
    }
}
