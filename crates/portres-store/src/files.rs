//! The store's files on disk, apart from what SQLite writes into them: the
//! state directory (created 0700), the database file (created 0600 before
//! SQLite opens it, so its `-wal` and `-shm`, which SQLite creates with the
//! database file's mode, are 0600 too), directory fsyncs that make a new
//! file's name durable, and telling a read-only file system.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::StoreError;

/// The mode of the state directory when the store creates it.
pub(crate) const DIR_MODE: u32 = 0o700;
/// The mode of the database file and its `-wal` and `-shm` companions.
pub(crate) const FILE_MODE: u32 = 0o600;

/// The `-wal` and `-shm` files SQLite keeps beside `db` in WAL mode.
pub(crate) fn companions(db: &Path) -> [PathBuf; 2] {
    ["-wal", "-shm"].map(|suffix| {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    })
}

/// Makes sure `dir` is a directory, creating it (and missing parents) with
/// mode 0700 if it does not exist. An existing directory is left as it is.
pub(crate) fn ensure_state_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(StoreError::io(
                dir,
                "using the state directory",
                io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "it exists but is not a directory",
                ),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(StoreError::io(dir, "using the state directory", e)),
    }
    let creating = "creating the state directory";
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|e| StoreError::io(dir, creating, e))?;
    // The umask may have taken bits away from DIR_MODE; set it exactly.
    fs::set_permissions(dir, Permissions::from_mode(DIR_MODE))
        .map_err(|e| StoreError::io(dir, creating, e))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent).map_err(|e| StoreError::io(parent, creating, e))?;
    }
    Ok(())
}

/// Creates the database file empty with mode 0600 if it does not exist (an
/// empty file is a new database to SQLite), durably; then gives the file and
/// any `-wal`/`-shm` beside it mode 0600.
pub(crate) fn prepare_db_file(db: &Path) -> Result<(), StoreError> {
    let creating = "creating the database file";
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(db)
    {
        Ok(file) => {
            file.set_permissions(Permissions::from_mode(FILE_MODE))
                .and_then(|()| file.sync_all())
                .map_err(|e| StoreError::io(db, creating, e))?;
            if let Some(dir) = db.parent().filter(|p| !p.as_os_str().is_empty()) {
                sync_dir(dir).map_err(|e| StoreError::io(dir, creating, e))?;
            }
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(StoreError::io(db, creating, e)),
    }
    tighten_modes(db)
}

/// Gives `db` and its companions that exist mode 0600.
pub(crate) fn tighten_modes(db: &Path) -> Result<(), StoreError> {
    let [wal, shm] = companions(db);
    for path in [db.to_path_buf(), wal, shm] {
        let meta = match fs::metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound && path != db => continue,
            Err(e) => return Err(StoreError::io(&path, "checking the file's mode", e)),
        };
        if !meta.is_file() {
            return Err(StoreError::io(
                &path,
                "checking the file",
                io::Error::new(io::ErrorKind::InvalidInput, "it is not a regular file"),
            ));
        }
        if meta.permissions().mode() & 0o7777 != FILE_MODE {
            fs::set_permissions(&path, Permissions::from_mode(FILE_MODE))
                .map_err(|e| StoreError::io(&path, "setting the file's mode to 0600", e))?;
        }
    }
    Ok(())
}

/// Whether `dir` is on a file system mounted read-only (statvfs ST_RDONLY:
/// the mount or the whole file system). False if it cannot be told.
pub(crate) fn on_read_only_fs(dir: &Path) -> bool {
    rustix::fs::statvfs(dir).is_ok_and(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY))
}

/// Flushes a directory, so that names created in it survive a crash.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
