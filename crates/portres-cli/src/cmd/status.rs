//! `portres status`: the daemon's report, plus who answered on which
//! socket (the client's own knowledge: `SO_PEERCRED` and how the socket
//! was chosen), so a daemon run by someone else is never used unnoticed.

use portres::{Client, Error, SocketKind, StatusReply};
use serde::Serialize;

use crate::Outcome;
use crate::output::outln;

/// `--json`: the daemon's fields, then the client's.
#[derive(Serialize)]
struct StatusJson<'a> {
    #[serde(flatten)]
    daemon_said: &'a StatusReply,
    socket: SocketJson,
    daemon: DaemonJson,
    passed_over: Vec<String>,
}

#[derive(Serialize)]
struct SocketJson {
    path: String,
    /// "explicit", "user" or "system".
    kind: &'static str,
}

#[derive(Serialize)]
struct DaemonJson {
    pid: i32,
    uid: u32,
    gid: u32,
    /// "root", "you" or "other".
    who: &'static str,
}

fn kind_name(kind: SocketKind) -> &'static str {
    match kind {
        SocketKind::Explicit => "explicit",
        SocketKind::User => "user",
        SocketKind::System => "system",
    }
}

pub fn run(client: &Client, json: bool) -> Result<Outcome, Error> {
    let s = client.status()?;
    let daemon = client.daemon();
    let me = rustix::process::geteuid().as_raw();
    if json {
        let out = StatusJson {
            daemon_said: &s,
            socket: SocketJson {
                path: client.socket_path().display().to_string(),
                kind: kind_name(client.socket_kind()),
            },
            daemon: DaemonJson {
                pid: daemon.pid,
                uid: daemon.uid,
                gid: daemon.gid,
                who: match daemon.uid {
                    0 => "root",
                    u if u == me => "you",
                    _ => "other",
                },
            },
            passed_over: client.passed_over(),
        };
        outln!("{}", serde_json::to_string(&out).expect("serializable"));
    } else {
        outln!(
            "portresd {} (wire v{}), {} mode",
            s.version,
            s.wire_version,
            s.mode
        );
        outln!(
            "socket:          {} ({})",
            client.socket_path().display(),
            client.socket_kind().describe()
        );
        outln!("daemon:          {}", daemon.describe(me));
        for skipped in client.passed_over() {
            outln!("passed over:     {skipped}");
        }
        outln!(
            "kernel sync:     {}",
            if s.kernel_sync { "on" } else { "off" }
        );
        if s.kernel_sync {
            outln!(
                "baseline:        {}",
                if s.baseline.is_empty() {
                    "(empty)"
                } else {
                    &s.baseline
                }
            );
            if !s.baseline_origin.is_empty() {
                outln!("baseline from:   {}", s.baseline_origin);
            }
            outln!(
                "reserved ports:  {}",
                if s.reserved_ports.is_empty() {
                    "(empty)"
                } else {
                    &s.reserved_ports
                }
            );
        }
        if !s.enforcement.is_empty() {
            outln!(
                "enforcement:     {}{}",
                s.enforcement,
                s.enforcement_reason
                    .as_ref()
                    .map_or(String::new(), |why| format!(" ({why})"))
            );
        }
        outln!(
            "dynamic range:   {}-{}",
            s.dynamic_range[0],
            s.dynamic_range[1]
        );
        outln!(
            "reservations:    {} runtime, {} persistent",
            s.runtime,
            s.persistent
        );
        outln!("sessions:        {}", s.sessions);
        outln!("quota:           {} runtime ports per user", s.quota);
        outln!(
            "store:           {}{}",
            s.store,
            if s.store_read_only {
                " (read-only: persistent changes fail)"
            } else {
                ""
            }
        );
        outln!(
            "you:             uid {}{}",
            s.your_uid,
            if s.you_are_admin {
                " (administrator)"
            } else {
                ""
            }
        );
        if !s.config_dirs.is_empty() {
            outln!("declared from:   {}", s.config_dirs.join(" "));
        }
        for p in &s.declared_problems {
            outln!("declared:        {}", crate::cmd::declared::problem_line(p));
        }
    }
    Ok(Outcome::Exit(0))
}
