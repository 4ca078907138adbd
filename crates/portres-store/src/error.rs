//! The store's one error type: what the store was doing, on which file, and
//! why it failed (SQLite, the file system, or invalid content), rendered as a
//! sentence an operator can act on.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use portres_core::{Error, ErrorCode};
use rusqlite::ffi;

/// A store failure. Callers turn it into [`ErrorCode::StoreUnavailable`]
/// (see the `From` impl); its `Display` names the database path, what the
/// store was doing and the SQLite or I/O error (for instance "database or
/// disk is full", "attempt to write a readonly database"), with a hint when
/// there is an obvious remedy.
#[derive(Debug)]
pub struct StoreError {
    path: PathBuf,
    action: String,
    cause: Cause,
}

#[derive(Debug)]
pub(crate) enum Cause {
    /// SQLite refused or failed.
    Sqlite(rusqlite::Error),
    /// A file-system operation around SQLite failed.
    Io(io::Error),
    /// The row to insert collides with one already stored.
    Duplicate(rusqlite::Error),
    /// The file's content is damaged or not what this schema allows.
    Invalid(String),
}

impl StoreError {
    pub(crate) fn new(path: &Path, action: impl Into<String>, cause: Cause) -> StoreError {
        StoreError {
            path: path.to_path_buf(),
            action: action.into(),
            cause,
        }
    }

    pub(crate) fn sqlite(path: &Path, action: impl Into<String>, e: rusqlite::Error) -> StoreError {
        StoreError::new(path, action, Cause::Sqlite(e))
    }

    pub(crate) fn io(path: &Path, action: impl Into<String>, e: io::Error) -> StoreError {
        StoreError::new(path, action, Cause::Io(e))
    }

    pub(crate) fn invalid(path: &Path, action: impl Into<String>, why: String) -> StoreError {
        StoreError::new(path, action, Cause::Invalid(why))
    }

    /// The whole human message (the same text as `Display`).
    pub fn message(&self) -> String {
        self.to_string()
    }

    /// The file (database or directory) the failure concerns.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an insert failed because a row with the same protocol and
    /// start port is already stored (the table is unchanged).
    pub fn is_duplicate(&self) -> bool {
        matches!(self.cause, Cause::Duplicate(_))
    }

    /// Whether the database file is damaged or is not a portres store
    /// (a failed integrity check, a row that is not a valid reservation, a
    /// file that is not SQLite, or an unknown schema version).
    pub fn is_corrupt(&self) -> bool {
        match &self.cause {
            Cause::Invalid(_) => true,
            Cause::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(ffi::ErrorCode::DatabaseCorrupt | ffi::ErrorCode::NotADatabase)
            ),
            Cause::Io(_) | Cause::Duplicate(_) => false,
        }
    }
}

impl StoreError {
    /// Why the content is invalid, if that is the cause.
    pub(crate) fn invalid_reason(&self) -> Option<&str> {
        match &self.cause {
            Cause::Invalid(why) => Some(why),
            _ => None,
        }
    }
}

/// SQLite's own words for `e`, without rusqlite's "Error code N:" prefix.
fn sqlite_words(e: &rusqlite::Error) -> String {
    match e {
        rusqlite::Error::SqliteFailure(err, msg) => {
            let base = msg
                .clone()
                .unwrap_or_else(|| ffi::code_to_str(err.extended_code).to_string());
            if err.code == ffi::ErrorCode::SystemIoFailure {
                // "disk I/O error" alone does not say which call failed.
                format!("{base} (SQLite extended code {})", err.extended_code)
            } else {
                base
            }
        }
        other => other.to_string(),
    }
}

/// What an operator can do about `e`, if anything obvious.
fn sqlite_hint(e: &rusqlite::Error) -> Option<&'static str> {
    match e.sqlite_error_code()? {
        ffi::ErrorCode::DiskFull => Some("free space on its file system"),
        ffi::ErrorCode::ReadOnly => Some(
            "the file system may be mounted read-only, or the file or its directory is not writable by the daemon",
        ),
        ffi::ErrorCode::CannotOpen | ffi::ErrorCode::PermissionDenied => Some(
            "check that the state directory and the file exist and are writable by the daemon, on a file system that is not read-only",
        ),
        ffi::ErrorCode::DatabaseCorrupt | ffi::ErrorCode::NotADatabase => Some(
            "the file is damaged or is not a portres store; restore it from a backup, or move it aside to start with an empty store",
        ),
        ffi::ErrorCode::SystemIoFailure => Some(
            "the file system failed the operation: it may have turned read-only after an error, or the disk is failing; see the kernel log",
        ),
        ffi::ErrorCode::DatabaseBusy | ffi::ErrorCode::DatabaseLocked => {
            Some("another process holds the database locked; is a second portresd running?")
        }
        _ => None,
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "store {}: {}: ", self.path.display(), self.action)?;
        match &self.cause {
            Cause::Sqlite(e) => {
                write!(f, "{}", sqlite_words(e))?;
                if let Some(hint) = sqlite_hint(e) {
                    write!(f, " ({hint})")?;
                }
                Ok(())
            }
            Cause::Io(e) => write!(f, "{e}"),
            Cause::Duplicate(e) => write!(
                f,
                "a reservation with that protocol and start port is already stored ({})",
                sqlite_words(e)
            ),
            Cause::Invalid(why) => write!(f, "{why}"),
        }
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.cause {
            Cause::Sqlite(e) | Cause::Duplicate(e) => Some(e),
            Cause::Io(e) => Some(e),
            Cause::Invalid(_) => None,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        Error::new(ErrorCode::StoreUnavailable, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_send_sync_and_converts_to_store_unavailable() {
        fn send_sync<T: Send + Sync + 'static>() {}
        send_sync::<StoreError>();
        let e = StoreError::sqlite(
            Path::new("/var/lib/portres/portres.db"),
            "recording tcp 5000-5009",
            rusqlite::Error::SqliteFailure(ffi::Error::new(ffi::SQLITE_FULL), None),
        );
        let text = e.message();
        assert!(text.contains("/var/lib/portres/portres.db"), "{text}");
        assert!(text.contains("recording tcp 5000-5009"), "{text}");
        assert!(text.contains("database or disk is full"), "{text}");
        let core: Error = e.into();
        assert_eq!(core.code, ErrorCode::StoreUnavailable);
        assert_eq!(core.message, text);
    }

    #[test]
    fn read_only_message_is_sqlite_own_words() {
        let e = StoreError::sqlite(
            Path::new("/x/portres.db"),
            "deleting udp 53",
            rusqlite::Error::SqliteFailure(
                ffi::Error::new(ffi::SQLITE_READONLY),
                Some("attempt to write a readonly database".into()),
            ),
        );
        assert!(e.to_string().starts_with(
            "store /x/portres.db: deleting udp 53: attempt to write a readonly database ("
        ));
        assert!(!e.is_duplicate() && !e.is_corrupt());
    }
}
