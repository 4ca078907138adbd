//! The admin's baseline of `net.ipv4.ip_local_reserved_ports`: where it
//! came from (a sentence kept with it in the store, shown in the log at
//! every start and in `portres status`), and `portresd --reset-baseline`,
//! which records a new one while no daemon runs on the state directory.
//!
//! Why the admin needs both: the baseline is read from the kernel the first
//! time a daemon starts on a store, and kept forever after. If that kernel
//! value held blocks some other portres daemon had reserved (one that
//! crashed, or ran on another state directory), they are taken for the
//! admin's own and stay reserved; the provenance says when and how the
//! value was taken, and the reset corrects it.

use std::path::Path;

use portres_core::PortSet;
use portres_store::{BaselineRecord, StateDirLock, Store};

use crate::daemon::StartError;

/// Now, in unix seconds.
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `secs` (unix time) as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// One sentence: how and when the baseline was recorded.
pub fn describe(record: &BaselineRecord) -> String {
    match (&record.origin, record.recorded_at) {
        (Some(origin), Some(at)) => format!("{origin}, {}", format_utc(at)),
        (Some(origin), None) => origin.clone(),
        (None, Some(at)) => format!("recorded {}", format_utc(at)),
        (None, None) => {
            "recorded at the first start, by a portres that did not keep when or how".to_string()
        }
    }
}

/// The text form of a port set for messages (`(empty)` for none).
pub(crate) fn shown(ports: &PortSet) -> String {
    if ports.is_empty() {
        "(empty)".to_string()
    } else {
        ports.to_string()
    }
}

/// The provenance sentence of a baseline read at a first start.
pub(crate) fn first_start_origin() -> String {
    format!(
        "read from the kernel at the first start on this store (portresd {} pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    )
}

/// `portresd --reset-baseline[=VALUE]`: records `value` as the baseline of
/// the store in `state_dir` — or, without a value, the kernel's current
/// value minus this store's persistent blocks (what the admin has, once
/// portres' own blocks are taken out) — and says what changed. Refused
/// while a daemon runs on the state directory (its lock), so the running
/// daemon's view never goes stale. The next start writes baseline ∪
/// persistent to the kernel, dropping ports the old baseline had.
pub fn reset(
    state_dir: &Path,
    socket: &Path,
    value: Option<PortSet>,
) -> Result<String, StartError> {
    let db = state_dir.join(Store::FILE_NAME);
    if !db.exists() {
        return Err(StartError(format!(
            "cannot reset the baseline: there is no store {} (a daemon records the baseline at its first start; check --state-dir)",
            db.display()
        )));
    }
    let _lock = StateDirLock::acquire(state_dir, socket).map_err(|e| match e {
        portres_store::LockError::Held { .. } => {
            StartError(format!("cannot reset the baseline: {e}"))
        }
        portres_store::LockError::Store(e) => StartError(format!(
            "cannot open the store in {}: {e}",
            state_dir.display()
        )),
    })?;
    let mut store = Store::open(state_dir).map_err(|e| {
        StartError(format!(
            "cannot open the store in {}: {e}",
            state_dir.display()
        ))
    })?;
    let old = store
        .baseline_record()
        .map_err(|e| StartError(e.to_string()))?;
    let (new, origin) = match value {
        Some(v) => (
            v,
            format!(
                "set by portresd --reset-baseline=VALUE (portresd {} pid {})",
                env!("CARGO_PKG_VERSION"),
                std::process::id()
            ),
        ),
        None => {
            use portres_kernel::sysctl::{ProcReservedPorts, ReservedPorts};
            let current = ProcReservedPorts::new()
                .read()
                .map_err(|e| StartError(format!("cannot read ip_local_reserved_ports: {e}")))?;
            let rows = store.load().map_err(|e| StartError(e.to_string()))?;
            (
                without(&current, rows.iter().map(|r| r.block)),
                format!(
                    "set by portresd --reset-baseline from the kernel's value less this store's persistent blocks (portresd {} pid {})",
                    env!("CARGO_PKG_VERSION"),
                    std::process::id()
                ),
            )
        }
    };
    store
        .record_baseline(&new, &origin, now_unix())
        .map_err(|e| StartError(e.to_string()))?;
    let was = match &old {
        Some(r) => format!("{} ({})", shown(&r.ports), describe(r)),
        None => "none recorded".to_string(),
    };
    Ok(format!(
        "baseline of {}: was {was}; now {}; ip_local_reserved_ports becomes baseline + persistent blocks at the next start",
        store.path().display(),
        shown(&new)
    ))
}

/// `set` less every port of `blocks`.
fn without(set: &PortSet, blocks: impl Iterator<Item = portres_core::Block>) -> PortSet {
    let mut ports = vec![false; 65_536];
    for &(first, last) in set.ranges() {
        ports[usize::from(first)..=usize::from(last)].fill(true);
    }
    for b in blocks {
        let first = b.start() as usize;
        ports[first..first + b.count() as usize].fill(false);
    }
    let mut ranges = Vec::new();
    let mut run: Option<u16> = None;
    for (port, &held) in ports.iter().enumerate() {
        let port = port as u16;
        match (held, run) {
            (true, None) => run = Some(port),
            (false, Some(first)) => {
                ranges.push((first, port - 1));
                run = None;
            }
            _ => {}
        }
    }
    if let Some(first) = run {
        ranges.push((first, u16::MAX));
    }
    PortSet::from_ranges(ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting_matches_known_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_796_114_079), "2026-12-01 08:34:39 UTC");
    }

    #[test]
    fn without_takes_blocks_out_of_a_set() {
        let set: PortSet = "999,5000-5009,65535".parse().unwrap();
        let blocks = [
            portres_core::Block::new(5002, 3).unwrap(),
            portres_core::Block::new(999, 1).unwrap(),
        ];
        assert_eq!(
            without(&set, blocks.into_iter()).to_string(),
            "5000-5001,5005-5009,65535"
        );
    }
}
