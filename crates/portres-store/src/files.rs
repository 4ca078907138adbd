//! The store's files on disk, apart from what SQLite writes into them: the
//! state directory (created 0700; an existing one must be ours and not
//! writable by group or others), the database file (created 0600 before
//! SQLite opens it, so its `-wal` and `-shm`, which SQLite creates with the
//! database file's mode, are 0600 too), directory fsyncs that make a new
//! file's name durable, and telling a read-only file system.

use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
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
/// mode 0700 if it does not exist. An existing directory is used as it is
/// if only we control it (see [`check_private_dir`]).
pub(crate) fn ensure_state_dir(dir: &Path) -> Result<(), StoreError> {
    match fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => return check_private_dir(dir, &meta),
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

/// Refuses an existing state directory that someone else could change
/// files in: one owned by another user than ours, or writable by its group
/// or by others (sticky or not — in a sticky directory another user can
/// still create `portres.db` or its `-wal` before us). Whoever can write
/// there can replace the database, or plant a symbolic link where we would
/// write.
pub(crate) fn check_private_dir(dir: &Path, meta: &fs::Metadata) -> Result<(), StoreError> {
    let us = rustix::process::geteuid().as_raw();
    let using = "using the state directory";
    if meta.uid() != us {
        return Err(StoreError::io(
            dir,
            using,
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "it is owned by uid {}, not by the daemon's uid {us}, so that user could \
                     replace the database (chown it to uid {us}, or choose another directory)",
                    meta.uid()
                ),
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(StoreError::io(
            dir,
            using,
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "it is writable by {} (mode {mode:04o}), who could replace the database \
                     (chmod 0700 it, or choose another directory)",
                    if mode & 0o002 != 0 {
                        "everyone"
                    } else {
                        "its group"
                    }
                ),
            ),
        ));
    }
    Ok(())
}

/// Gives `db` and its companions that exist mode 0600, refusing any that is
/// not a regular file of ours (a symbolic link, say).
pub(crate) fn tighten_modes(db: &Path) -> Result<(), StoreError> {
    check_files(db, true)
}

/// Refuses `db` or a companion that is not a regular file of ours; with
/// `fix_modes`, gives each mode 0600.
pub(crate) fn check_files(db: &Path, fix_modes: bool) -> Result<(), StoreError> {
    let [wal, shm] = companions(db);
    let us = rustix::process::geteuid().as_raw();
    for path in [db.to_path_buf(), wal, shm] {
        let meta = match fs::symlink_metadata(&path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound && path != db => continue,
            Err(e) => return Err(StoreError::io(&path, "checking the file's mode", e)),
        };
        if !meta.is_file() {
            let what = if meta.file_type().is_symlink() {
                "it is a symbolic link, not a regular file"
            } else {
                "it is not a regular file"
            };
            return Err(StoreError::io(
                &path,
                "checking the file",
                io::Error::new(io::ErrorKind::InvalidInput, what),
            ));
        }
        if meta.uid() != us {
            return Err(StoreError::io(
                &path,
                "checking the file",
                io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "it is owned by uid {}, not by the daemon's uid {us}",
                        meta.uid()
                    ),
                ),
            ));
        }
        if fix_modes && meta.permissions().mode() & 0o7777 != FILE_MODE {
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
