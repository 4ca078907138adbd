//! The kernel baseline the store records: the admin's own value of
//! `net.ipv4.ip_local_reserved_ports` and where it came from
//! ([`BaselineRecord`]), read and written as rows of `meta`.

use portres_core::PortSet;
use rusqlite::{OptionalExtension, params};

use super::{GET_META, SET_META, Store};
use crate::StoreError;
use crate::schema::{BASELINE_AT_KEY, BASELINE_KEY, BASELINE_ORIGIN_KEY};

/// The recorded baseline with where it came from (see
/// [`Store::baseline_record`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BaselineRecord {
    /// The baseline itself.
    pub ports: PortSet,
    /// When it was recorded, unix seconds; `None` in a store written before
    /// portres kept this.
    pub recorded_at: Option<i64>,
    /// How it was recorded, a sentence for the admin; `None` like the time.
    pub origin: Option<String>,
}

impl Store {
    /// The admin's baseline value of `net.ipv4.ip_local_reserved_ports`,
    /// recorded the first time the daemon started, if it has been recorded.
    pub fn baseline(&self) -> Result<Option<PortSet>, StoreError> {
        let reading = "reading the kernel baseline";
        let value: Option<rusqlite::types::Value> = self
            .conn
            .prepare_cached(GET_META)
            .and_then(|mut stmt| stmt.query_row([BASELINE_KEY], |row| row.get(0)).optional())
            .map_err(|e| StoreError::sqlite(&self.path, reading, e))?;
        let Some(value) = value else {
            return Ok(None);
        };
        let bad = |why: String| {
            StoreError::invalid(
                &self.path,
                reading,
                format!("meta key {BASELINE_KEY:?} holds {why}"),
            )
        };
        match value {
            rusqlite::types::Value::Text(text) => text
                .parse::<PortSet>()
                .map(Some)
                .map_err(|e| bad(format!("{text:?}, which is not a port list: {}", e.message))),
            other => Err(bad(format!("{other:?}, which is not text"))),
        }
    }

    /// Records the baseline (inserting or replacing it), in the kernel's
    /// text form, without provenance (any recorded before is removed, so
    /// it cannot describe another value). Durable when it returns.
    pub fn set_baseline(&mut self, ports: &PortSet) -> Result<(), StoreError> {
        self.write_baseline(ports, None)
    }

    /// The baseline with its provenance, if a baseline has been recorded.
    /// Provenance that is unreadable (not text, a time that is not a
    /// number) reads as unknown: it only informs the admin.
    pub fn baseline_record(&self) -> Result<Option<BaselineRecord>, StoreError> {
        let Some(ports) = self.baseline()? else {
            return Ok(None);
        };
        let text = |key: &str| -> Result<Option<String>, StoreError> {
            let value: Option<rusqlite::types::Value> = self
                .conn
                .prepare_cached(GET_META)
                .and_then(|mut stmt| stmt.query_row([key], |row| row.get(0)).optional())
                .map_err(|e| StoreError::sqlite(&self.path, "reading the kernel baseline", e))?;
            Ok(match value {
                Some(rusqlite::types::Value::Text(t)) => Some(t),
                _ => None,
            })
        };
        Ok(Some(BaselineRecord {
            ports,
            recorded_at: text(BASELINE_AT_KEY)?.and_then(|t| t.parse().ok()),
            origin: text(BASELINE_ORIGIN_KEY)?,
        }))
    }

    /// Records the baseline with its provenance (`origin`, a sentence for
    /// the admin, and `at`, unix seconds), replacing any earlier one, in one
    /// transaction. Durable when it returns.
    pub fn record_baseline(
        &mut self,
        ports: &PortSet,
        origin: &str,
        at: i64,
    ) -> Result<(), StoreError> {
        self.write_baseline(ports, Some((origin, at)))
    }

    fn write_baseline(
        &mut self,
        ports: &PortSet,
        provenance: Option<(&str, i64)>,
    ) -> Result<(), StoreError> {
        self.reopen_if_read_only();
        let path = self.path.clone();
        let err = |e| StoreError::sqlite(&path, "recording the kernel baseline", e);
        let tx = self.conn.transaction().map_err(err)?;
        let set = |key: &str, value: String| {
            tx.prepare_cached(SET_META)
                .and_then(|mut stmt| stmt.execute(params![key, value]))
        };
        set(BASELINE_KEY, ports.to_string()).map_err(err)?;
        match provenance {
            Some((origin, at)) => {
                set(BASELINE_AT_KEY, at.to_string()).map_err(err)?;
                set(BASELINE_ORIGIN_KEY, origin.to_string()).map_err(err)?;
            }
            None => {
                tx.execute(
                    "DELETE FROM meta WHERE key IN (?1, ?2)",
                    params![BASELINE_AT_KEY, BASELINE_ORIGIN_KEY],
                )
                .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }
}
