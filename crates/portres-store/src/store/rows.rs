//! [`StoredReservation`], the row the store keeps per persistent
//! reservation, and reading it back: every row of `persistent` validated
//! (a bad one is named, never a panic), and the open-time integrity check.

use std::path::Path;

use portres_core::{Block, Owner, Protocol};
use rusqlite::Connection;
use rusqlite::types::ValueRef;

use crate::StoreError;

/// One persistent reservation as the store keeps it. Tokens are not stored:
/// the daemon draws a fresh one for each reservation when it loads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredReservation {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The reserved ports. `(protocol, block.start())` identifies the row.
    pub block: Block,
    /// The user or group that may bind it without being admin, if any.
    pub owner: Option<Owner>,
    /// Free text from the admin, if any.
    pub label: Option<String>,
    /// Uid of the admin who created it.
    pub created_by: u32,
    /// When it was created, in unix seconds, as supplied by the caller.
    pub created_at: i64,
    /// `None`: created through the API; else the path of the portres.d
    /// file that declares it.
    pub source: Option<String>,
}

pub(super) const SELECT_ALL: &str = "SELECT rowid, protocol, start, count, owner_kind, owner_id, label, \
     created_by, created_at, source FROM persistent ORDER BY protocol, start";

/// Reads and validates every row of `persistent` (see [`Store::load`]).
pub(super) fn load_rows(
    conn: &Connection,
    path: &Path,
) -> Result<Vec<StoredReservation>, StoreError> {
    let loading = "loading the persistent reservations";
    let sql_err = |e| StoreError::sqlite(path, loading, e);
    let mut stmt = conn.prepare_cached(SELECT_ALL).map_err(sql_err)?;
    let mut rows = stmt.query([]).map_err(sql_err)?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().map_err(sql_err)? {
        let mut values = [ValueRef::Null; 10];
        for (i, v) in values.iter_mut().enumerate() {
            *v = row.get_ref(i).map_err(sql_err)?;
        }
        let [rowid, fields @ ..] = values;
        match parse_row(&fields) {
            Ok(r) => out.push(r),
            Err(why) => {
                return Err(StoreError::invalid(
                    path,
                    loading,
                    format!(
                        "row {} of table persistent (protocol {}, start {}, count {}) \
                         is not a valid reservation: {why}",
                        describe(rowid),
                        describe(fields[0]),
                        describe(fields[1]),
                        describe(fields[2]),
                    ),
                ));
            }
        }
    }
    Ok(out)
}

/// Runs `PRAGMA quick_check` and fails unless it answers exactly "ok".
pub(super) fn quick_check(conn: &Connection, path: &Path) -> Result<(), StoreError> {
    let checking = "checking the database's integrity";
    let mut problems = Vec::new();
    conn.pragma_query(None, "quick_check", |row| {
        let line = describe_text(row.get_ref(0)?);
        if line != "ok" {
            problems.push(line);
        }
        Ok(())
    })
    .map_err(|e| StoreError::sqlite(path, checking, e))?;
    if problems.is_empty() {
        return Ok(());
    }
    const SHOWN: usize = 5;
    let more = problems.len().saturating_sub(SHOWN);
    let mut why = format!(
        "PRAGMA quick_check found the file damaged: {}",
        problems[..problems.len().min(SHOWN)].join("; ")
    );
    if more > 0 {
        why.push_str(&format!("; and {more} more"));
    }
    // quick_check says which table breaks a CHECK constraint, not which
    // row: name the first row that is not a valid reservation, if readable.
    if let Some(row) = load_rows(conn, path)
        .err()
        .as_ref()
        .and_then(|e| e.invalid_reason())
    {
        why.push_str(&format!("; {row}"));
    }
    why.push_str(" (restore it from a backup, or move it aside to start with an empty store)");
    Err(StoreError::invalid(path, checking, why))
}

/// A stored value as it would read in SQL, for error messages.
fn describe(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Null => "NULL".to_string(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => f.to_string(),
        ValueRef::Text(t) => format!("'{}'", String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => format!("a blob of {} bytes", b.len()),
    }
}

/// A text value as is (anything else described).
fn describe_text(v: ValueRef<'_>) -> String {
    match v {
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
        other => describe(other),
    }
}

/// An INTEGER column that must fit a `u32`.
fn u32_column(v: ValueRef<'_>, column: &str) -> Result<u32, String> {
    match v {
        ValueRef::Integer(i) => u32::try_from(i)
            .map_err(|_| format!("{column} {i} is out of range (0 to {})", u32::MAX)),
        other => Err(format!("{column} is {}, not an integer", describe(other))),
    }
}

/// Validates one row's columns (protocol .. source, without the rowid).
pub(super) fn parse_row(v: &[ValueRef<'_>; 9]) -> Result<StoredReservation, String> {
    let [
        protocol,
        start,
        count,
        owner_kind,
        owner_id,
        label,
        created_by,
        created_at,
        source,
    ] = *v;
    let protocol = match protocol {
        ValueRef::Text(b"tcp") => Protocol::Tcp,
        ValueRef::Text(b"udp") => Protocol::Udp,
        other => {
            return Err(format!(
                "protocol {} is not 'tcp' or 'udp'",
                describe(other)
            ));
        }
    };
    let block = Block::new(u32_column(start, "start")?, u32_column(count, "count")?)
        .map_err(|e| e.message)?;
    let owner = match (owner_kind, owner_id) {
        (ValueRef::Null, ValueRef::Null) => None,
        (ValueRef::Text(b"user"), id @ ValueRef::Integer(_)) => {
            Some(Owner::User(u32_column(id, "owner_id")?))
        }
        (ValueRef::Text(b"group"), id @ ValueRef::Integer(_)) => {
            Some(Owner::Group(u32_column(id, "owner_id")?))
        }
        (kind, id) => {
            return Err(format!(
                "owner_kind {} with owner_id {} is not an owner (expected both NULL, or \
                 'user' or 'group' with an id)",
                describe(kind),
                describe(id)
            ));
        }
    };
    let label = match label {
        ValueRef::Null => None,
        ValueRef::Text(t) => Some(
            std::str::from_utf8(t)
                .map_err(|e| format!("label is not valid UTF-8: {e}"))?
                .to_string(),
        ),
        other => return Err(format!("label is {}, not text", describe(other))),
    };
    let created_by = u32_column(created_by, "created_by")?;
    let created_at = match created_at {
        ValueRef::Integer(i) => i,
        other => return Err(format!("created_at is {}, not an integer", describe(other))),
    };
    let source = match source {
        ValueRef::Null => None,
        ValueRef::Text(t) => Some(
            std::str::from_utf8(t)
                .map_err(|e| format!("source is not valid UTF-8: {e}"))?
                .to_string(),
        ),
        other => return Err(format!("source is {}, not text", describe(other))),
    };
    Ok(StoredReservation {
        protocol,
        block,
        owner,
        label,
        created_by,
        created_at,
        source,
    })
}
