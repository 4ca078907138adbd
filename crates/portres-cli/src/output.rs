//! Printing: human tables and lines, or JSON (`--json`): a reservation is one
//! JSON object on one line, in the wire interface's form; a list is an array.

use std::io::Write;

use portres::{Error, OwnerKind, ReservationInfo};

use crate::names;

/// A reservation's ports as "A-B" or "A".
pub fn ports(r: &ReservationInfo) -> String {
    if r.count <= 1 {
        r.start.to_string()
    } else {
        format!("{}-{}", r.start, r.start as u32 + r.count as u32 - 1)
    }
}

/// Who holds or owns it, for humans.
pub fn who(r: &ReservationInfo) -> String {
    if let Some(h) = r.holder {
        return format!("{} (pid {})", names::user_name(h.uid), h.pid);
    }
    match r.owner {
        Some(o) if o.kind == OwnerKind::User => format!("owner {}", names::user_name(o.id)),
        Some(o) => format!("owner @{}", names::group_name(o.id)),
        None => "admin".to_string(),
    }
}

/// Prints one reservation.
pub fn reservation(r: &ReservationInfo, json: bool, verb: &str) {
    let mut out = std::io::stdout().lock();
    if json {
        let _ = writeln!(out, "{}", serde_json::to_string(r).expect("serializable"));
    } else {
        let n = if r.count == 1 { "port" } else { "ports" };
        let _ = write!(
            out,
            "{verb} {} {} ({} {n}), {}",
            r.protocol,
            ports(r),
            r.count,
            r.kind.as_str()
        );
        if let Some(t) = r.token {
            let _ = write!(out, ", token {t}");
        }
        let _ = writeln!(out);
    }
    let _ = out.flush();
}

/// Prints a refusal: the code and message on stderr; with `--json` also
/// `{"error":{"code":…,"message":…}}` on stdout.
pub fn error(e: &Error, json: bool) {
    eprintln!("portres: {}: {}", e.code, e.message);
    if json {
        println!(
            "{}",
            serde_json::json!({"error": {"code": e.code.as_str(), "message": e.message}})
        );
    }
}
