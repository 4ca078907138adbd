//! `portres list`: reservations, like `netsh int ipv4 show
//! excludedportrange` but with kind, holder, label and live usage; filtered
//! by protocol, kind, owner (`--mine`) and port, in a table that fits the
//! terminal (80 columns when standard output is not one).

use portres::{Client, Error, ErrorCode, OwnerKind, Protocol, ReservationInfo};

use crate::args::ListArgs;
use crate::cmd::protocol;
use crate::output::{errln, outln};
use crate::{Outcome, output};

/// A checked `list`.
#[derive(Debug)]
pub struct Plan {
    protocol: Option<Protocol>,
    kind: Option<String>,
    mine: bool,
    port: Option<u16>,
    wide: bool,
}

pub fn check(a: &ListArgs) -> Result<Plan, Error> {
    let port = match a.port {
        None => None,
        Some(p) if (1..=65535).contains(&p) => Some(p as u16),
        Some(p) => {
            return Err(Error::new(
                ErrorCode::InvalidParameter,
                format!("--port {p} is not a port (1-65535)"),
            ));
        }
    };
    Ok(Plan {
        protocol: a.protocol.as_deref().map(protocol).transpose()?,
        kind: a.kind.clone(),
        mine: a.mine,
        port,
        wide: a.wide,
    })
}

/// Whether `r` is the caller's: a runtime reservation it holds, or a
/// persistent one delegated to it or to one of its groups.
fn is_mine(r: &ReservationInfo, uid: u32, groups: &[u32]) -> bool {
    if let Some(h) = r.holder {
        return h.uid == uid;
    }
    match r.owner {
        Some(o) if o.kind == OwnerKind::User => o.id == uid,
        Some(o) => groups.contains(&o.id),
        None => false,
    }
}

fn my_groups() -> Vec<u32> {
    let mut groups: Vec<u32> = rustix::process::getgroups()
        .unwrap_or_default()
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    groups.push(rustix::process::getegid().as_raw());
    groups
}

pub fn run(client: &Client, plan: Plan, json: bool) -> Result<Outcome, Error> {
    let mut list = client.list(plan.protocol)?;
    let uid = rustix::process::geteuid().as_raw();
    let groups = if plan.mine { my_groups() } else { Vec::new() };
    list.retain(|r| {
        plan.kind.as_deref().is_none_or(|k| r.kind.as_str() == k)
            && plan.port.is_none_or(|p| {
                p >= r.start && u32::from(p) < u32::from(r.start) + u32::from(r.count)
            })
            && (!plan.mine || is_mine(r, uid, &groups))
    });
    if json {
        outln!("{}", serde_json::to_string(&list).expect("serializable"));
        return Ok(Outcome::Exit(0));
    }
    if list.is_empty() {
        outln!("no reservations");
        return Ok(Outcome::Exit(0));
    }
    let rows: Vec<[String; COLUMNS]> = list
        .iter()
        .map(|r| {
            [
                r.protocol.to_string(),
                output::ports(r),
                r.kind.as_str().to_string(),
                output::who(r),
                in_use(r.in_use.as_deref().unwrap_or(&[])),
                r.token.map_or_else(|| "-".to_string(), |t| t.to_string()),
                output::label(r),
                r.source.clone().unwrap_or_else(|| "-".to_string()),
            ]
        })
        .collect();
    let limit = if plan.wide { None } else { Some(width_limit()) };
    // SOURCE only when some reservation is declared in a portres.d file.
    let layout = fit(&rows, limit, list.iter().any(|r| r.source.is_some()));
    if layout.token_dropped && list.iter().any(|r| r.token.is_some()) {
        errln!(
            "portres: the TOKEN column is left out to fit {} columns (portres list --wide, or --json)",
            limit.unwrap_or_default()
        );
    }
    let print = |cells: &[String]| {
        let line: Vec<String> = cells
            .iter()
            .zip(layout.widths)
            .enumerate()
            .filter(|(i, _)| layout.shows(*i))
            .map(|(i, (c, w))| {
                let c = if i == SOURCE {
                    elide_front(c, w)
                } else {
                    elide(c, w)
                };
                format!("{c:<w$}")
            })
            .collect();
        outln!("{}", line.join("  ").trim_end());
    };
    print(&HEADER.map(String::from));
    for row in &rows {
        print(row);
    }
    Ok(Outcome::Exit(0))
}

const COLUMNS: usize = 8;
const HEADER: [&str; COLUMNS] = [
    "PROTO",
    "PORTS",
    "KIND",
    "HOLDER/OWNER",
    "IN USE",
    "TOKEN",
    "LABEL",
    "SOURCE",
];
const HOLDER: usize = 3;
const IN_USE: usize = 4;
const TOKEN: usize = 5;
const LABEL: usize = 6;
/// The portres.d file of a declared reservation.
const SOURCE: usize = 7;

/// The ports some socket holds, runs of consecutive ports as ranges:
/// "43000-43002,43010", or "-".
fn in_use(ports: &[u16]) -> String {
    if ports.is_empty() {
        return "-".to_string();
    }
    let mut sorted = ports.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut runs: Vec<(u16, u16)> = Vec::new();
    for p in sorted {
        match runs.last_mut() {
            Some((_, last)) if u32::from(*last) + 1 == u32::from(p) => *last = p,
            _ => runs.push((p, p)),
        }
    }
    runs.iter()
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The width to fit: the terminal's when standard output is one, else 80.
fn width_limit() -> usize {
    let stdout = std::io::stdout();
    rustix::termios::tcgetwinsize(&stdout)
        .ok()
        .map(|w| usize::from(w.ws_col))
        .filter(|&c| c >= 40)
        .unwrap_or(80)
}

/// `s` cut to `w` characters, the last one "…" if anything was cut.
fn elide(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        return s.to_string();
    }
    let mut out: String = s.chars().take(w.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// `s` cut to its last `w` characters, the first one "…" if anything was
/// cut (the end of a path is the part that tells files apart).
fn elide_front(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        return s.to_string();
    }
    let mut out = String::from("…");
    out.extend(s.chars().skip(n - w.saturating_sub(1)));
    out
}

#[derive(Debug)]
struct Layout {
    widths: [usize; COLUMNS],
    token_dropped: bool,
    /// No reservation has a source: the SOURCE column is not shown.
    source_dropped: bool,
}

impl Layout {
    fn shows(&self, col: usize) -> bool {
        let dropped = match col {
            TOKEN => self.token_dropped,
            SOURCE => self.source_dropped,
            _ => false,
        };
        !dropped
    }
}

/// Column widths that fit `limit`, giving up the least useful first: port
/// lists and holders are shortened a little, then the TOKEN column is left
/// out (a cut token is useless, and programs use --json), then labels,
/// port lists and holders are shortened down to about their headers'
/// width. What is still too wide (nothing else can give) overflows.
fn fit(rows: &[[String; COLUMNS]], limit: Option<usize>, with_source: bool) -> Layout {
    let mut widths = HEADER.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut layout = Layout {
        widths,
        token_dropped: false,
        source_dropped: !with_source,
    };
    let Some(limit) = limit else {
        return layout;
    };
    let total = |l: &Layout| {
        let cols = (0..COLUMNS).filter(|&i| l.shows(i));
        let n = cols.clone().count();
        cols.map(|i| l.widths[i]).sum::<usize>() + 2 * (n - 1)
    };
    let shrink = |l: &mut Layout, floors: &[(usize, usize)]| {
        for &(col, floor) in floors {
            let excess = total(l).saturating_sub(limit);
            let floor = floor.max(HEADER[col].len()).min(l.widths[col]);
            l.widths[col] = l.widths[col].saturating_sub(excess).max(floor);
        }
    };
    shrink(&mut layout, &[(SOURCE, 24), (IN_USE, 12), (HOLDER, 16)]);
    if total(&layout) > limit {
        layout.token_dropped = true;
    }
    shrink(
        &mut layout,
        &[
            (LABEL, 10),
            (SOURCE, 16),
            (IN_USE, 6),
            (HOLDER, 12),
            (LABEL, 5),
            (SOURCE, 8),
        ],
    );
    layout
}
