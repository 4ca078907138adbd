//! Printing: human tables and lines, or JSON (`--json`): a reservation is one
//! JSON object on one line, in the wire interface's form; a list is an array.
//!
//! Every byte the CLI prints goes through [`outln!`] (stdout) or [`errln!`]
//! (stderr), never `println!` (clippy.toml of this crate forbids it): a
//! reader that went away (`portres status | head -1`) ends the program
//! quietly with status 141 (128 + SIGPIPE, what a shell reports for tools
//! that die of SIGPIPE) instead of a panic, for every command at once.

use std::fmt;
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

/// The exit status when stdout's reader has gone (EPIPE).
pub const BROKEN_PIPE_STATUS: i32 = 128 + 13;

/// Writes one line to stdout (what `outln!` expands to). On EPIPE the
/// program ends with [`BROKEN_PIPE_STATUS`] and no message: nobody is
/// reading. Any other failure (a full disk) is reported on stderr and ends
/// it with status 2, since output the caller relies on was lost.
pub fn write_line(args: fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    let result = out.write_fmt(args).and_then(|()| out.write_all(b"\n"));
    let result = result.and_then(|()| out.flush());
    if let Err(e) = result {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(BROKEN_PIPE_STATUS);
        }
        write_err_line(format_args!(
            "portres: cannot write to standard output: {e}"
        ));
        std::process::exit(2);
    }
}

/// Writes one line to stderr (what `errln!` expands to), ignoring failure:
/// a diagnostic nobody can read is no reason to stop.
pub fn write_err_line(args: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// `println!` for the CLI: see the module doc.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// `eprintln!` for the CLI: never panics.
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::write_err_line(format_args!($($arg)*))
    };
}
pub(crate) use errln;

/// A label for display: characters a label may not hold (controls,
/// invisible format characters, separators — possible in labels stored
/// before the daemon refused them) shown as `\u{XXXX}`.
pub fn label(r: &ReservationInfo) -> String {
    r.label
        .as_deref()
        .map(|l| portres_core::escape_label(l).into_owned())
        .unwrap_or_default()
}

/// Prints one reservation.
pub fn reservation(r: &ReservationInfo, json: bool, verb: &str) {
    if json {
        outln!("{}", serde_json::to_string(r).expect("serializable"));
    } else {
        let n = if r.count == 1 { "port" } else { "ports" };
        let token = r.token.map(|t| format!(", token {t}")).unwrap_or_default();
        outln!(
            "{verb} {} {} ({} {n}), {}{token}",
            r.protocol,
            ports(r),
            r.count,
            r.kind.as_str()
        );
    }
}

/// Prints a refusal: the code and message on stderr; with `--json` also
/// `{"error":{"code":…,"message":…}}` on stdout.
pub fn error(e: &Error, json: bool) {
    errln!("portres: {}: {}", e.code, e.message);
    if json {
        outln!(
            "{}",
            serde_json::json!({"error": {"code": e.code.as_str(), "message": e.message}})
        );
    }
}
