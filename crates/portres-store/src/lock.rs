//! [`StateDirLock`]: one daemon per state directory. An exclusive `flock`
//! on `<state_dir>/portres.lock`, taken before the daemon touches anything
//! else (its socket, the store, the kernel's sysctl) and held for its whole
//! life. After locking, the holder writes its pid and socket path into the
//! file, so a second daemon's refusal can name them.
//!
//! Why `flock` on a file of its own: the kernel drops the lock when the
//! holder dies, so a lock file left by a crashed daemon never blocks the
//! next start (its stale content is overwritten); it is independent of
//! SQLite's own `fcntl` locks on the database, which are per process and
//! dropped when any descriptor of the file closes. On a read-only file
//! system where the lock file cannot be created, the state directory itself
//! is locked (`flock` works on a directory descriptor), so every daemon on
//! that file system still agrees on one object.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::FlockOperation;

use crate::{StoreError, files};

/// The lock file's name inside the state directory.
pub const LOCK_FILE_NAME: &str = "portres.lock";

/// Most bytes of a holder's note read back (the note is a pid and a path).
const MAX_NOTE: u64 = 8192;

/// The held lock; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct StateDirLock {
    _fd: OwnedFd,
    path: PathBuf,
}

/// Why [`StateDirLock::acquire`] failed.
#[derive(Debug)]
pub enum LockError {
    /// Another process holds the lock: what its note says.
    Held {
        /// The lock file.
        path: PathBuf,
        /// The holder's pid, if its note says.
        pid: Option<u32>,
        /// The holder's socket, if its note says.
        socket: Option<String>,
    },
    /// The state directory or the lock file could not be used.
    Store(StoreError),
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Held { path, pid, socket } => {
                let dir = path.parent().unwrap_or(path);
                write!(
                    f,
                    "another portresd is running on the state directory {}",
                    dir.display()
                )?;
                match (pid, socket) {
                    (Some(pid), Some(socket)) => write!(f, " (pid {pid}, socket {socket})")?,
                    (Some(pid), None) => write!(f, " (pid {pid})")?,
                    _ => write!(
                        f,
                        " (its pid and socket could not be read from {})",
                        path.display()
                    )?,
                }
                write!(
                    f,
                    ": it holds the lock on {}; stop it first, or give this one another --state-dir",
                    path.display()
                )
            }
            LockError::Store(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for LockError {}

impl StateDirLock {
    /// Makes sure `state_dir` exists and is private (as [`crate::Store::open`]
    /// does: created 0700, an existing one must be ours and not writable by
    /// group or others), then takes the exclusive lock without waiting and
    /// writes `pid=<our pid>` and `socket=<socket>` into the lock file.
    pub fn acquire(state_dir: &Path, socket: &Path) -> Result<StateDirLock, LockError> {
        files::ensure_state_dir(state_dir).map_err(LockError::Store)?;
        let path = state_dir.join(LOCK_FILE_NAME);
        let locking = "locking the state directory";
        let (fd, writable) = open_lock_target(state_dir, &path)
            .map_err(|e| LockError::Store(StoreError::io(&path, locking, e)))?;
        match lock_within_grace(&fd) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let (pid, socket) = read_note(&path);
                return Err(LockError::Held { path, pid, socket });
            }
            Err(e) => {
                return Err(LockError::Store(StoreError::io(&path, locking, e.into())));
            }
        }
        if writable {
            // Best effort: the note only makes a refusal's message better.
            let mut file = File::from(fd);
            let note = format!("pid={}\nsocket={}\n", std::process::id(), socket.display());
            let _ = file
                .set_len(0)
                .and_then(|()| file.rewind())
                .and_then(|()| file.write_all(note.as_bytes()));
            return Ok(StateDirLock {
                _fd: file.into(),
                path,
            });
        }
        Ok(StateDirLock { _fd: fd, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// How long a held lock is retried before it counts as held by a running
/// daemon. A lock lives as long as any descriptor of its open file: a
/// predecessor that is exiting, or a process the holder forked that has
/// not reached `exec` yet (close-on-exec), holds it for a moment more.
pub const LOCK_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

fn lock_within_grace(fd: &OwnedFd) -> rustix::io::Result<()> {
    let deadline = std::time::Instant::now() + LOCK_GRACE;
    loop {
        match rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
            Err(rustix::io::Errno::WOULDBLOCK) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            other => return other,
        }
    }
}

/// The lock file opened read-write (created 0600), or on a read-only file
/// system the existing lock file read-only, or if there is none the
/// directory itself. Whether the descriptor can write the note.
fn open_lock_target(dir: &Path, path: &Path) -> io::Result<(OwnedFd, bool)> {
    let open = |write: bool| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .create(write)
            .mode(files::FILE_MODE)
            // A symbolic link planted here is refused, never followed.
            .custom_flags(o_nofollow())
            .open(path)
    };
    match open(true) {
        Ok(file) => {
            let meta = file.metadata()?;
            if !meta.is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the lock file is not a regular file",
                ));
            }
            Ok((file.into(), true))
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error()) => {
            match open(false) {
                Ok(file) => Ok((file.into(), false)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let dir = rustix::fs::open(
                        dir,
                        rustix::fs::OFlags::RDONLY
                            | rustix::fs::OFlags::DIRECTORY
                            | rustix::fs::OFlags::CLOEXEC,
                        rustix::fs::Mode::empty(),
                    )?;
                    Ok((dir, false))
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

fn o_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// The pid and socket a holder wrote into the lock file, as far as readable.
fn read_note(path: &Path) -> (Option<u32>, Option<String>) {
    let mut text = String::new();
    let Ok(file) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(o_nofollow())
        .open(path)
    else {
        return (None, None);
    };
    if file.take(MAX_NOTE).read_to_string(&mut text).is_err() {
        return (None, None);
    }
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_string)
    };
    let pid = field("pid").and_then(|p| p.parse().ok());
    (pid, field("socket").filter(|s| !s.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_with_the_holders_note_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let first = StateDirLock::acquire(&state, Path::new("/run/x.sock")).unwrap();
        match StateDirLock::acquire(&state, Path::new("/run/y.sock")) {
            Err(LockError::Held { pid, socket, .. }) => {
                assert_eq!(pid, Some(std::process::id()));
                assert_eq!(socket.as_deref(), Some("/run/x.sock"));
            }
            other => panic!("expected Held, got {other:?}"),
        }
        let text = LockError::Held {
            path: first.path().to_path_buf(),
            pid: Some(7),
            socket: Some("/s".into()),
        }
        .to_string();
        assert!(text.contains("pid 7, socket /s"), "{text}");
        drop(first);
        StateDirLock::acquire(&state, Path::new("/run/y.sock")).unwrap();
    }

    #[test]
    fn a_symbolic_link_as_lock_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), state.join(LOCK_FILE_NAME))
            .unwrap();
        let e = StateDirLock::acquire(&state, Path::new("/s")).unwrap_err();
        assert!(matches!(e, LockError::Store(_)), "{e:?}");
        assert!(!dir.path().join("elsewhere").exists());
    }
}
