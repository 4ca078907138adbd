//! [`Store`]: the open database and its operations (open with checks and
//! migrations, load, insert, delete). The kernel baseline is in `baseline`,
//! the row type and reading rows back in `rows`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use portres_core::{Block, Owner, Protocol};
use rusqlite::{Connection, OpenFlags, ffi, params};

use crate::error::Cause;
use crate::schema::{self, MigrateError};
use crate::{StoreError, files};

mod baseline;
mod rows;

pub use baseline::BaselineRecord;
pub use rows::StoredReservation;
use rows::{SELECT_ALL, load_rows, quick_check};

/// The open store: one SQLite connection to `<state_dir>/portres.db`.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The connection can only read (the file system was read-only at open);
    /// writes first try to reopen it read-write.
    read_only: bool,
}

const INSERT: &str = "INSERT INTO persistent \
     (protocol, start, count, owner_kind, owner_id, label, created_by, created_at, source) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";
const UPDATE: &str = "UPDATE persistent SET owner_kind = ?4, owner_id = ?5, label = ?6, source = ?7 \
     WHERE protocol = ?1 AND start = ?2 AND count = ?3";
const DELETE: &str = "DELETE FROM persistent WHERE protocol = ?1 AND start = ?2 AND count = ?3";
const GET_META: &str = "SELECT value FROM meta WHERE key = ?1";
const SET_META: &str = "INSERT INTO meta (key, value) VALUES (?1, ?2) \
     ON CONFLICT (key) DO UPDATE SET value = excluded.value";

/// How long a statement waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    /// The database file's name inside the state directory.
    pub const FILE_NAME: &'static str = "portres.db";

    /// Opens or creates `<state_dir>/portres.db`.
    ///
    /// Creates `state_dir` (mode 0700) if it is missing, and the database
    /// file with mode 0600 (its `-wal` and `-shm` get 0600 too; existing
    /// files are set to 0600). Sets `journal_mode=WAL`, `synchronous=FULL`
    /// and a 5 s busy timeout, runs `PRAGMA quick_check` and fails if the file
    /// is damaged, then migrates the schema to [`schema::SCHEMA_VERSION`]
    /// (refusing a file written by a newer schema).
    ///
    /// On a file system mounted read-only (say, one that came up read-only
    /// after a reboot) an existing store is opened read-only instead, so
    /// the daemon can still restore its persistent reservations and serve
    /// runtime ones: [`Store::is_read_only`] says so, reads work, and every
    /// change fails with "attempt to write a readonly database" — after
    /// first trying to reopen read-write, so changes work again as soon as
    /// the file system is writable.
    pub fn open(state_dir: &Path) -> Result<Store, StoreError> {
        match Self::open_writable(state_dir) {
            Err(e) if files::on_read_only_fs(state_dir) => {
                // Report the read-write failure if reading fails too: it
                // says what is wrong with the file system.
                Self::open_read_only(state_dir).map_err(|_| e)
            }
            other => other,
        }
    }

    /// Whether the store can only read: the file system was read-only when
    /// it was (re)opened. Changes first try to reopen it read-write.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// `open` on a writable file system (see there).
    fn open_writable(state_dir: &Path) -> Result<Store, StoreError> {
        files::ensure_state_dir(state_dir)?;
        let path = state_dir.join(Self::FILE_NAME);
        files::prepare_db_file(&path)?;

        let opening = "opening the database";
        let sql_err = |action: &str, e| StoreError::sqlite(&path, action, e);
        // No SQLITE_OPEN_CREATE: prepare_db_file made the file with the
        // right mode; if it vanished since, failing is better than a 0644 one.
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_EXRESCODE;
        let mut conn =
            Connection::open_with_flags(&path, flags).map_err(|e| sql_err(opening, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sql_err(opening, e))?;

        // The first statement that reads the file: a file that is not SQLite
        // fails here with "file is not a database".
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| sql_err("setting journal_mode=WAL", e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::invalid(
                &path,
                "setting journal_mode=WAL",
                format!("SQLite kept journal mode {mode:?}"),
            ));
        }
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(|e| sql_err("setting synchronous=FULL", e))?;
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .map_err(|e| sql_err("setting synchronous=FULL", e))?;
        if sync != 2 {
            return Err(StoreError::invalid(
                &path,
                "setting synchronous=FULL",
                format!("SQLite kept synchronous={sync}"),
            ));
        }

        quick_check(&conn, &path)?;

        match schema::migrate(&mut conn) {
            Ok(()) => {}
            Err(MigrateError::Sqlite(e)) => return Err(sql_err("migrating the schema", e)),
            Err(MigrateError::Version(why)) => {
                return Err(StoreError::invalid(
                    &path,
                    "checking the schema version",
                    why,
                ));
            }
        }
        // Compile every statement now: a file whose tables do not have the
        // expected columns fails at startup rather than on the first request.
        for sql in [SELECT_ALL, INSERT, UPDATE, DELETE, GET_META, SET_META] {
            conn.prepare_cached(sql)
                .map_err(|e| sql_err("checking the schema", e))?;
        }
        // SQLite created -wal and -shm with the database file's mode; make sure.
        files::tighten_modes(&path)?;
        // SQLite opens a file it cannot write read-only without saying so
        // (a read-only mount where the -wal and -shm already exist).
        let read_only = conn.is_readonly(rusqlite::MAIN_DB).unwrap_or(false);
        Ok(Store {
            conn,
            path,
            read_only,
        })
    }

    /// Opens an existing store read-only, on a read-only file system where
    /// SQLite cannot create the `-wal`/`-shm` files a WAL database needs.
    /// With a `-wal` file present (the last daemon did not stop cleanly)
    /// SQLite reads it with the `-shm` in place; without one, every commit
    /// is in the main file and the file is opened `immutable` (no WAL, no
    /// locks: nothing can change it on a read-only mount). Checks integrity
    /// and the schema version as `open` does, but migrates nothing.
    fn open_read_only(state_dir: &Path) -> Result<Store, StoreError> {
        let path = state_dir.join(Self::FILE_NAME);
        let opening = "opening the database read-only (its file system is read-only)";
        let sql_err = |action: &str, e| StoreError::sqlite(&path, action, e);
        // The same checks as a writable open, minus fixing modes.
        files::ensure_state_dir(state_dir)?;
        files::check_files(&path, false)?;
        let [wal, _] = files::companions(&path);
        let mode = if wal.exists() {
            "mode=ro"
        } else {
            "immutable=1"
        };
        let uri = format!("file:{}?{mode}", uri_path(&path));
        let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_EXRESCODE
            | OpenFlags::SQLITE_OPEN_URI;
        let conn = Connection::open_with_flags(&uri, flags).map_err(|e| sql_err(opening, e))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sql_err(opening, e))?;
        quick_check(&conn, &path)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|e| sql_err("checking the schema version", e))?;
        if version != schema::SCHEMA_VERSION {
            return Err(StoreError::invalid(
                &path,
                "checking the schema version",
                format!(
                    "the store has schema version {version}, this portres needs {} and cannot \
                     migrate a store on a read-only file system",
                    schema::SCHEMA_VERSION
                ),
            ));
        }
        for sql in [SELECT_ALL, INSERT, UPDATE, DELETE, GET_META, SET_META] {
            conn.prepare_cached(sql)
                .map_err(|e| sql_err("checking the schema", e))?;
        }
        Ok(Store {
            conn,
            path,
            read_only: true,
        })
    }

    /// Before a change: a store opened read-only tries to become writable
    /// again (its file system may have been remounted read-write). If it
    /// cannot, the change runs on the read-only connection and fails with
    /// SQLite's "attempt to write a readonly database".
    fn reopen_if_read_only(&mut self) {
        if !self.read_only {
            return;
        }
        let Some(dir) = self.path.parent() else {
            return;
        };
        if files::on_read_only_fs(dir) {
            return;
        }
        // Close the read-only connection first: after a crash its shared
        // hold on the -shm keeps a writer from recovering the -wal.
        let Ok(placeholder) = Connection::open_in_memory() else {
            return;
        };
        drop(std::mem::replace(&mut self.conn, placeholder));
        let dir = dir.to_path_buf();
        // If the file vanished or broke meanwhile, the in-memory placeholder
        // stays (its missing tables make every call fail) and the next
        // change tries again.
        if let Ok(store) = Self::open(&dir).or_else(|_| Self::open_read_only(&dir)) {
            *self = store;
        }
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every persistent reservation, ordered by protocol (TCP first) then
    /// start port. A row that is not a valid reservation is an error naming
    /// the row (it is never skipped: the daemon must not silently forget a
    /// reservation).
    pub fn load(&self) -> Result<Vec<StoredReservation>, StoreError> {
        load_rows(&self.conn, &self.path)
    }

    /// Inserts one row in its own transaction: durable when this returns
    /// `Ok`. A row with the same (protocol, start) must not exist; if one
    /// does, the error says so ([`StoreError::is_duplicate`]) and nothing
    /// changes. Overlaps with other rows are the caller's to check.
    pub fn insert(&mut self, r: &StoredReservation) -> Result<(), StoreError> {
        self.reopen_if_read_only();
        let action = format!("recording {} {}", r.protocol, r.block);
        let (owner_kind, owner_id) = owner_columns(r.owner);
        let result = self.conn.prepare_cached(INSERT).and_then(|mut stmt| {
            stmt.execute(params![
                r.protocol.as_str(),
                i64::from(r.block.start()),
                i64::from(r.block.count()),
                owner_kind,
                owner_id,
                r.label.as_deref(),
                i64::from(r.created_by),
                r.created_at,
                r.source.as_deref(),
            ])
        });
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.sqlite_extended_error_code() == Some(ffi::SQLITE_CONSTRAINT_PRIMARYKEY) => {
                Err(StoreError::new(&self.path, action, Cause::Duplicate(e)))
            }
            Err(e) => Err(StoreError::sqlite(&self.path, action, e)),
        }
    }

    /// Sets the owner, label and source of the row of exactly (`protocol`,
    /// `block`), in its own transaction: `Ok(true)` if a row was changed
    /// (durable when it returns), `Ok(false)` if none matched.
    pub fn update(
        &mut self,
        protocol: Protocol,
        block: Block,
        owner: Option<Owner>,
        label: Option<&str>,
        source: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.reopen_if_read_only();
        let (owner_kind, owner_id) = owner_columns(owner);
        let changed = self
            .conn
            .prepare_cached(UPDATE)
            .and_then(|mut stmt| {
                stmt.execute(params![
                    protocol.as_str(),
                    i64::from(block.start()),
                    i64::from(block.count()),
                    owner_kind,
                    owner_id,
                    label,
                    source,
                ])
            })
            .map_err(|e| {
                StoreError::sqlite(&self.path, format!("updating {protocol} {block}"), e)
            })?;
        Ok(changed > 0)
    }

    /// Deletes the row of exactly (`protocol`, `block`): `Ok(true)` if a row
    /// was deleted, `Ok(false)` if none matched (a row with the same start
    /// but another count is not deleted). Durable when it returns.
    pub fn delete(&mut self, protocol: Protocol, block: Block) -> Result<bool, StoreError> {
        self.reopen_if_read_only();
        let changed = self
            .conn
            .prepare_cached(DELETE)
            .and_then(|mut stmt| {
                stmt.execute(params![
                    protocol.as_str(),
                    i64::from(block.start()),
                    i64::from(block.count()),
                ])
            })
            .map_err(|e| {
                StoreError::sqlite(&self.path, format!("deleting {protocol} {block}"), e)
            })?;
        Ok(changed > 0)
    }
}

/// The `owner_kind` and `owner_id` columns of an owner.
fn owner_columns(owner: Option<Owner>) -> (Option<&'static str>, Option<i64>) {
    match owner {
        None => (None, None),
        Some(Owner::User(uid)) => (Some("user"), Some(i64::from(uid))),
        Some(Owner::Group(gid)) => (Some("group"), Some(i64::from(gid))),
    }
}

/// `path` for an SQLite `file:` URI: every byte but unreserved ones and
/// `/` percent-encoded (so `?`, `#` and `%` in a path mean themselves).
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut out = String::new();
    for &b in path.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
