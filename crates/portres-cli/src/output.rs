//! Printing: human tables and lines, or JSON (`--json`). Every success is
//! one line: a command that acted on one reservation (acquire, create,
//! lookup, delete, release) prints one reservation object — the wire
//! interface's form plus `"result"` (what was done) — `list` an array of
//! reservation objects, `status` its object. A refusal is
//! `{"error":{"code":…,"message":…}}`. README "Output" documents this.
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
        let via = match h.origin {
            Some(portres::HolderOrigin::Portserver) => ", portserver",
            None => "",
        };
        return format!("{} (pid {}{via})", names::user_name(h.uid), h.pid);
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

/// What `--json` prints for a command that acted on one reservation: the
/// reservation in the wire interface's form, with what was done first.
#[derive(serde::Serialize)]
struct Reported<'a> {
    /// "acquired", "created", "found", "deleted" or "released".
    result: &'a str,
    #[serde(flatten)]
    reservation: &'a ReservationInfo,
    /// acquire and create: whether the kernel honours it (the daemon's
    /// kernel sync is on).
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_reserved: Option<bool>,
}

/// The human line for a reservation: "acquired tcp 40000-40002 (3 ports),
/// runtime, token N", plus " (not kernel-reserved)" when the kernel does
/// not honour it.
pub fn reservation_line(
    r: &ReservationInfo,
    result: &str,
    kernel_reserved: Option<bool>,
) -> String {
    let token = r.token.map(|t| format!(", token {t}")).unwrap_or_default();
    let unhonoured = if kernel_reserved == Some(false) {
        " (not kernel-reserved)"
    } else {
        ""
    };
    format!(
        "{result} {} {} ({}), {}{token}{unhonoured}",
        r.protocol,
        ports(r),
        crate::cmd::ports_word(u32::from(r.count)),
        r.kind.as_str()
    )
}

/// Prints one reservation a command acted on (`result`: what it did).
pub fn reservation(r: &ReservationInfo, json: bool, result: &str, kernel_reserved: Option<bool>) {
    if json {
        let reported = Reported {
            result,
            reservation: r,
            kernel_reserved,
        };
        outln!(
            "{}",
            serde_json::to_string(&reported).expect("serializable")
        );
    } else {
        outln!("{}", reservation_line(r, result, kernel_reserved));
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
