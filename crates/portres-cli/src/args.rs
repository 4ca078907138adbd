//! The command line, as clap types. The words and flags here are a contract
//! (scripts depend on them): change them on purpose only, and say so in
//! CHANGELOG.md.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use portres_core::ErrorCode;

/// The text after `--help`'s options: exit statuses, every error code
/// (from `ErrorCode::ALL`, so the list cannot drift), examples.
fn after_help() -> String {
    let codes: Vec<String> = ErrorCode::ALL
        .iter()
        .map(|&code| match code {
            ErrorCode::DaemonUntrusted => {
                format!("{code} (a socket failed the client's trust checks)")
            }
            _ => code.to_string(),
        })
        .collect();
    format!(
        "\
Exit status: 0 success; 1 the daemon refused (its error code on stderr, and with \
--json {{\"error\":{{\"code\":...,\"message\":...}}}} on stdout); 2 usage or connection errors; \
141, silently, when the reader of standard output has gone (`portres list | head -1`).

Error codes: {}.

Examples:
  portres exec tcp --count 4 -- ./run-tests.sh     # tests get PORTRES_START..+3
  portres acquire udp --start 40000 --count 10     # hold 40000-40009 until Ctrl-C
  sudo portres create tcp 8080 1 --owner www-data  # www-data may bind 8080
  portres list --json",
        codes.join(", ")
    )
}

/// portres: reserve blocks of TCP/UDP ports so nobody else gets them.
///
/// Talks to portresd (the daemon). Runtime reservations ("acquire", "exec")
/// last as long as the command holds them; persistent ones ("create") are
/// stored and survive restarts (administrators only). While a block is
/// reserved the kernel's own port picker (bind to port 0, connect) never hands
/// out its ports.
#[derive(Parser, Debug)]
#[command(name = "portres", version, after_help = after_help(), max_term_width = 100)]
pub struct Cli {
    /// The daemon's socket, used whoever runs the daemon (`status` says who)
    /// [env: PORTRES_SOCKET; default: your user daemon's socket if one runs
    /// and passes the trust checks, else /run/portres/portres.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Print JSON: one object per reservation on one line, `list` an array
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Acquire a runtime reservation and hold it until SIGINT/SIGTERM or
    /// until standard input closes
    Acquire(AcquireArgs),
    /// Hold a runtime reservation while a command runs, handing it the ports
    ///
    /// The command gets PORTRES_PROTOCOL, PORTRES_START, PORTRES_COUNT,
    /// PORTRES_TOKEN, PORTRES_SOCKET and PORTRES_SESSION_FD (an inherited
    /// descriptor: any process holding it may bind into and release the
    /// reservation, e.g. parallel test workers using the portres library or
    /// CLI). The reservation is released when the command exits; portres
    /// exits with the command's status and forwards SIGINT/SIGTERM to it.
    Exec(ExecArgs),
    /// Release a runtime reservation (inside `exec`: uses the inherited
    /// session capability)
    Release(ReleaseArgs),
    /// Create a persistent reservation (administrators)
    Create(CreateArgs),
    /// Delete the persistent reservation of exactly this block (administrators)
    Delete(BlockArgs),
    /// Show the token of the persistent reservation of exactly this block
    /// (administrators and its owner)
    Lookup(BlockArgs),
    /// List every reservation, with the ports bound right now
    List(ListArgs),
    /// Show the daemon's mode, kernel sync, counts and limits
    Status,
}

/// `acquire` and the reservation part of `exec`.
#[derive(Args, Debug, Clone)]
pub struct AcquireArgs {
    /// tcp or udp
    pub protocol: String,
    /// First port; 0 or absent: any free block in the kernel's dynamic range
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub start: i64,
    /// How many consecutive ports
    #[arg(long, default_value_t = 1, allow_negative_numbers = true)]
    pub count: i64,
    /// Free text shown in `list`
    #[arg(long)]
    pub label: Option<String>,
}

/// `exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    pub reservation: AcquireArgs,
    /// The command and its arguments (after `--`)
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

/// `release`.
#[derive(Args, Debug)]
pub struct ReleaseArgs {
    /// The reservation's token
    pub token: String,
}

/// `create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    #[command(flatten)]
    pub block: BlockArgs,
    /// A user (name or uid) or @group (name or gid) who may look it up and
    /// bind into it without being an administrator
    #[arg(long, value_name = "USER|@GROUP")]
    pub owner: Option<String>,
    /// Free text shown in `list`
    #[arg(long)]
    pub label: Option<String>,
}

/// A block given by protocol, start and count.
#[derive(Args, Debug)]
pub struct BlockArgs {
    /// tcp or udp
    pub protocol: String,
    /// First port
    #[arg(allow_negative_numbers = true)]
    pub start: i64,
    /// How many consecutive ports
    #[arg(allow_negative_numbers = true)]
    pub count: i64,
}

/// `list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only tcp or only udp
    pub protocol: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_error_code() {
        let help = after_help();
        let line = help
            .lines()
            .find(|l| l.starts_with("Error codes: "))
            .expect("an error-code line");
        for code in ErrorCode::ALL {
            assert!(line.contains(code.as_str()), "{code} missing: {line}");
        }
    }
}
