//! One module per subcommand, plus the argument checks they share. Every
//! subcommand is checked (`check`) before the CLI connects: what the CLI can
//! judge by itself (a protocol, a block's bounds, a token's form, an owner's
//! name, how `acquire` would hold) is a usage error, exit status 2, and the
//! daemon is never asked.

pub mod acquire;
pub mod declared;
pub mod exec;
pub mod list;
pub mod listen;
pub mod persistent;
pub mod release;
pub mod status;

use portres::{Block, Client, Error, ErrorCode, Protocol};

use crate::Outcome;
use crate::args::{Cli, Command};

/// A subcommand whose arguments passed every local check.
#[derive(Debug)]
pub enum Plan {
    /// `acquire`.
    Acquire(acquire::Plan),
    /// `exec`.
    Exec(exec::Plan),
    /// `release TOKEN`.
    Release(portres::Token),
    /// `create`.
    Create(persistent::CreatePlan),
    /// `delete`.
    Delete(CheckedBlock),
    /// `lookup`.
    Lookup(CheckedBlock),
    /// `list`.
    List(list::Plan),
    /// `status`.
    Status,
    /// `reload`.
    Reload,
    /// `import-sysctl`.
    ImportSysctl(declared::ImportPlan),
}

/// Checks `cli`'s subcommand without talking to the daemon.
pub fn check(cli: &Cli) -> Result<Plan, Error> {
    Ok(match &cli.command {
        Command::Acquire(a) => Plan::Acquire(acquire::check(a)?),
        Command::Exec(a) => Plan::Exec(exec::check(a)?),
        Command::Release(a) => Plan::Release(a.token.parse()?),
        Command::Create(a) => Plan::Create(persistent::check_create(a)?),
        Command::Delete(b) => Plan::Delete(persistent::check_block(b)?),
        Command::Lookup(b) => Plan::Lookup(persistent::check_block(b)?),
        Command::List(a) => Plan::List(list::check(a)?),
        Command::Status => Plan::Status,
        Command::Reload => Plan::Reload,
        Command::ImportSysctl(a) => Plan::ImportSysctl(declared::check_import(a)?),
    })
}

impl Plan {
    /// Runs the checked subcommand on `client`.
    pub fn run(self, client: &Client, json: bool) -> Result<Outcome, Error> {
        match self {
            Plan::Acquire(p) => acquire::run(client, p, json),
            Plan::Exec(p) => exec::run(client, p),
            Plan::Release(t) => release::run(client, t, json),
            Plan::Create(p) => persistent::create(client, p, json),
            Plan::Delete(b) => persistent::delete(client, b, json),
            Plan::Lookup(b) => persistent::lookup(client, b, json),
            Plan::List(p) => list::run(client, p, json),
            Plan::Status => status::run(client, json),
            Plan::Reload => declared::reload(client, json),
            Plan::ImportSysctl(p) => declared::import_sysctl(Some(client), p),
        }
    }

    /// Runs it without a daemon, if it needs none (`None`: it needs one).
    pub fn run_alone(&self) -> Option<Result<Outcome, Error>> {
        match self {
            Plan::ImportSysctl(p) if !p.baseline => Some(declared::import_sysctl(None, p.clone())),
            _ => None,
        }
    }
}

/// A protocol and a block that passed the local checks. `start` 0 (with
/// any count) is `acquire`'s "any free block".
#[derive(Clone, Copy, Debug)]
pub struct CheckedBlock {
    pub protocol: Protocol,
    pub start: u16,
    pub count: u16,
}

pub(crate) fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidParameter, message)
}

/// Parses a protocol argument (clap already allowed only tcp/udp).
pub fn protocol(s: &str) -> Result<Protocol, Error> {
    s.parse()
}

/// A port argument: 0-65535, written in decimal.
fn port_number(what: &str, s: &str) -> Result<u32, Error> {
    let n: i64 = s
        .trim()
        .parse()
        .map_err(|_| invalid(format!("{what} {s:?} is not a port number")))?;
    if !(0..=65535).contains(&n) {
        return Err(invalid(format!("{what} {n} is not a port (0-65535)")));
    }
    Ok(n as u32)
}

/// Checks a block given as `START [COUNT]` or `START-END`. `wildcard`: start 0
/// (or none) means "any free block" (`acquire`, `exec`); otherwise the
/// block must be a real one.
pub fn block(
    protocol_arg: &str,
    start: Option<&str>,
    count: Option<i64>,
    wildcard: bool,
) -> Result<CheckedBlock, Error> {
    let protocol = protocol(protocol_arg)?;
    if let Some(c) = count
        && !(1..=65535).contains(&c)
    {
        return Err(invalid(format!(
            "count must be between 1 and 65535, not {c}"
        )));
    }
    let (start, count) = match start.map(str::trim) {
        None => (0, count.unwrap_or(1) as u32),
        Some(s) => match s.split_once('-').filter(|(a, _)| !a.is_empty()) {
            Some((a, b)) => {
                let first = port_number("start", a)?;
                let last = port_number("end", b)?;
                if first == 0 {
                    return Err(invalid(format!(
                        "{s}: a block written START-END starts at a port (1-65535), not 0"
                    )));
                }
                if last < first {
                    return Err(invalid(format!(
                        "{s} is reversed: write the lower port first ({last}-{first})"
                    )));
                }
                let size = last - first + 1;
                if let Some(c) = count
                    && c as u32 != size
                {
                    return Err(invalid(format!(
                        "{s} is {size} port{}, but the count says {c}: give one or the other",
                        if size == 1 { "" } else { "s" }
                    )));
                }
                (first, size)
            }
            None => (port_number("start", s)?, count.unwrap_or(1) as u32),
        },
    };
    if start == 0 && wildcard {
        return Ok(CheckedBlock {
            protocol,
            start: 0,
            count: count as u16,
        });
    }
    let b = Block::new(start, count)?;
    Ok(CheckedBlock {
        protocol,
        start: b.start(),
        count: b.count(),
    })
}

/// "1 port", "3 ports": the one wording of a block's size everywhere.
pub fn ports_word(count: u32) -> String {
    format!("{count} port{}", if count == 1 { "" } else { "s" })
}
