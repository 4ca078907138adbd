//! The store's SQL schema, its version and its migrations.
//!
//! The schema version lives in SQLite's `PRAGMA user_version`: 0 is a new,
//! empty file; version `n` is reached by running [`MIGRATIONS`]`[0..n]` in
//! order, all inside one transaction together with the new `user_version`.
//! A file with a version newer than [`SCHEMA_VERSION`] is refused (it was
//! written by a newer portres), never downgraded.
//!
//! # Version 1
//!
//! ```sql
//! -- One row per persistent reservation; (protocol, start) identifies it.
//! CREATE TABLE persistent (
//!     protocol   TEXT    NOT NULL CHECK (protocol IN ('tcp', 'udp')),
//!     start      INTEGER NOT NULL CHECK (start BETWEEN 1 AND 65535),
//!     count      INTEGER NOT NULL CHECK (count >= 1 AND start + count - 1 <= 65535),
//!     owner_kind TEXT             CHECK (owner_kind IN ('user', 'group')),  -- NULL: no owner
//!     owner_id   INTEGER,                                                  -- uid or gid; NULL iff owner_kind is
//!     label      TEXT,                                                     -- free text, NULL: none
//!     created_by INTEGER NOT NULL,                                         -- uid of the admin who created it
//!     created_at INTEGER NOT NULL,                                         -- unix seconds
//!     PRIMARY KEY (protocol, start)
//! );
//! -- Small key/value facts about this daemon's state.
//! CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
//! ```
//!
//! `meta` keys:
//! - [`BASELINE_KEY`]: the admin's own value of
//!   `net.ipv4.ip_local_reserved_ports` recorded the first time the daemon
//!   started, in the kernel's text form (`"1,5-7"`; `""` for none).
//! - [`BASELINE_AT_KEY`]: when the baseline was recorded, unix seconds
//!   (absent in stores written before provenance was kept).
//! - [`BASELINE_ORIGIN_KEY`]: how it was recorded, a sentence for the admin
//!   ("read from the kernel at the first start of portresd 0.1.0 pid 42",
//!   "set by portresd --reset-baseline"); absent like the time.
//!
//! # Version 2
//!
//! ```sql
//! -- Where a persistent reservation comes from: NULL for one created
//! -- through the API (`portres create`), else the path of the portres.d
//! -- file that declares it (the daemon adds, updates and deletes those).
//! ALTER TABLE persistent ADD COLUMN source TEXT;
//! ```
//!
//! New `meta` keys need no migration: the table is key/value, and a build
//! that does not know a key ignores it.

use rusqlite::{Connection, TransactionBehavior};

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: i64 = 2;

/// The `meta` key under which the kernel baseline is kept.
pub const BASELINE_KEY: &str = "baseline.ip_local_reserved_ports";

/// The `meta` key under which the time the baseline was recorded is kept.
pub const BASELINE_AT_KEY: &str = "baseline.recorded_at";

/// The `meta` key under which how the baseline was recorded is kept.
pub const BASELINE_ORIGIN_KEY: &str = "baseline.origin";

/// Schema version 1 (see the module documentation).
pub const SCHEMA_V1: &str = "
CREATE TABLE persistent (
    protocol   TEXT    NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    start      INTEGER NOT NULL CHECK (start BETWEEN 1 AND 65535),
    count      INTEGER NOT NULL CHECK (count >= 1 AND start + count - 1 <= 65535),
    owner_kind TEXT             CHECK (owner_kind IN ('user', 'group')),
    owner_id   INTEGER,
    label      TEXT,
    created_by INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (protocol, start)
);
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
";

/// Schema version 2: the source of declared reservations (see the module
/// documentation). Additive: a version-1 file keeps its rows, each with
/// source NULL (created through the API).
pub const SCHEMA_V2: &str = "ALTER TABLE persistent ADD COLUMN source TEXT;";

/// `MIGRATIONS[n]` takes a file from version `n` to version `n + 1`.
pub const MIGRATIONS: [&str; SCHEMA_VERSION as usize] = [SCHEMA_V1, SCHEMA_V2];

/// Why a migration could not run.
pub(crate) enum MigrateError {
    /// SQLite failed.
    Sqlite(rusqlite::Error),
    /// The file's version is one this build cannot handle.
    Version(String),
}

impl From<rusqlite::Error> for MigrateError {
    fn from(e: rusqlite::Error) -> Self {
        MigrateError::Sqlite(e)
    }
}

/// Brings the file to [`SCHEMA_VERSION`], in one immediate transaction (so
/// two processes opening a new file at once cannot both create the tables).
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), MigrateError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(()); // The transaction rolls back: nothing was written.
    }
    if !(0..SCHEMA_VERSION).contains(&version) {
        return Err(MigrateError::Version(format!(
            "the store has schema version {version}, but this portres understands only \
             versions up to {SCHEMA_VERSION}; run the portres that wrote it, or move the \
             file aside to start with an empty store"
        )));
    }
    for sql in &MIGRATIONS[version as usize..] {
        tx.execute_batch(sql)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    Ok(())
}
