//! The command line, as clap types. The words and flags here are a contract
//! (scripts depend on them): change them on purpose only, and say so in
//! CHANGELOG.md.
//!
//! This file uses nothing but clap, std and `portres_core::ErrorCode`
//! (for the list of error codes in `--help`): the man page and completion
//! generator (crates/portres-tests/tests/generated_docs.rs) includes it as
//! it is. Values are checked after parsing (`cmd::check`), before the CLI
//! connects, so that every bad value is an `invalid_parameter` usage error
//! (exit status 2) with the same wording, and `--json` gets it as JSON too.

use std::path::PathBuf;

use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand};
use portres_core::ErrorCode;

/// The text after `--help`'s options: exit statuses, the `--json` shape,
/// every error code (from `ErrorCode::ALL`, so the list cannot drift),
/// examples.
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
    let codes = codes.join(", ");
    format!(
        "\
Exit status: 0 success; 1 the daemon refused (its error code on stderr, and with \
--json {{\"error\":{{\"code\":...,\"message\":...}}}} on stdout); 2 usage or connection errors \
(bad arguments are checked before connecting: bad protocol, count 0, a port past 65535, a \
reversed START-END), and `acquire` when the daemon stops; 141, silently, when the reader of \
standard output has gone (`portres list | head -1`).

Output with --json: one line. acquire, create, lookup, delete and release print one \
reservation object {{\"result\":\"acquired\"|\"created\"|\"found\"|\"deleted\"|\"released\", \
\"protocol\",\"start\",\"count\",\"kind\",\"token\"?,\"owner\"?,\"holder\"?,\"label\"?}}; list \
prints an array of reservation objects; status one object.

Error codes: {codes}.

In scripts, hold ports with `portres exec ... -- COMMAND` (held exactly while COMMAND runs). \
`portres acquire ... &` needs --hold, --pid or --timeout: a background job's standard input \
is /dev/null.

Examples:
  portres exec tcp -c 4 -- ./run-tests.sh          # tests get PORTRES_START..+3
  portres acquire udp -s 40000-40009               # hold 40000-40009 until Ctrl-C
  portres acquire tcp --pid $$ &                   # held until this shell exits
  sudo portres create tcp 8080 --owner www-data    # www-data may bind 8080
  portres list --mine --json"
    )
}

/// `exec --help`'s examples.
const EXEC_EXAMPLES: &str = "\
Examples:
  portres exec tcp -c 4 -- ./run-tests.sh            # PORTRES_START..+3 are the tests'
  portres exec tcp -c 2 --listen 127.0.0.1 -- ./srv  # fds 3 and 4 listen, LISTEN_FDS=2
  portres exec udp --listen ::1 -- ./srv             # fd 3: a UDP socket bound on ::1
  portres exec --persistent tcp 80 --listen 0.0.0.0 -- nginx   # as the owner of tcp 80";

/// The protocols, for the man page, completions and clap's check.
const PROTOCOLS: [&str; 2] = ["tcp", "udp"];

/// portres: reserve blocks of TCP/UDP ports so nobody else gets them.
///
/// Talks to portresd (the daemon). Runtime reservations ("acquire", "exec")
/// last as long as the command holds them; persistent ones ("create") are
/// stored and survive restarts (administrators only). While a block is
/// reserved the kernel's own port picker (bind to port 0, connect) never hands
/// out its ports — unless the daemon runs without kernel sync (user mode):
/// then "acquire" and "exec" say "(not kernel-reserved)".
#[derive(Parser, Debug)]
#[command(name = "portres", version, after_help = after_help(), max_term_width = 100)]
pub struct Cli {
    /// The daemon's socket, used whoever runs the daemon (`status` says who)
    /// [env: PORTRES_SOCKET; default: your user daemon's socket if one runs
    /// and passes the trust checks, else /run/portres/portres.sock]
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,

    /// Print JSON: one line; a reservation object (see `portres --help`), `list` an array
    #[arg(long, global = true)]
    pub json: bool,

    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Acquire a runtime reservation and hold it: until SIGINT/SIGTERM and
    /// the end of standard input, or as --hold, --pid, --timeout say
    ///
    /// Without --hold, --pid or --timeout the reservation is held until
    /// standard input (a terminal or a pipe) ends; acquire refuses to start
    /// when standard input is already at its end or is neither (e.g.
    /// /dev/null, as for `portres acquire ... &` in a script). SIGINT or
    /// SIGTERM always release and exit 0. If the daemon stops, the
    /// reservation has ended: acquire says "daemon stopped: reservation
    /// ended" and exits 2 at once. In scripts prefer `portres exec`, which
    /// holds the ports exactly while a command runs.
    Acquire(AcquireCmd),
    /// Hold a runtime reservation while a command runs, handing it the ports
    ///
    /// The command gets PORTRES_PROTOCOL, PORTRES_START, PORTRES_COUNT,
    /// PORTRES_TOKEN, PORTRES_SOCKET and PORTRES_SESSION_FD (an inherited
    /// descriptor: any process holding it may bind into and release the
    /// reservation, e.g. parallel test workers using the portres library or
    /// CLI). The reservation is released when the command exits; portres
    /// exits with the command's status and forwards SIGINT/SIGTERM to it.
    /// If the daemon stops while the command runs, the reservation has
    /// ended: portres warns on stderr and lets the command run on, or with
    /// --strict-daemon ends it.
    ///
    /// With --listen ADDRESS the daemon binds one socket per port on ADDRESS
    /// and the command starts with them, systemd socket activation style:
    /// descriptors 3..3+N-1 in port order (TCP listening, UDP bound),
    /// LISTEN_FDS=N, LISTEN_PID=its own pid, LISTEN_FDNAMES=the ports joined
    /// by ':' (for servers that take sd_listen_fds(), and for languages that
    /// cannot pass descriptors to the daemon). `exec --persistent PROTOCOL
    /// START [COUNT] --listen ADDRESS` does the same with an existing
    /// persistent reservation, for an administrator or its owner (a port
    /// below 1024 delegated with `create --owner` needs no root); nothing is
    /// acquired, and the reservation stays when the command ends.
    #[command(after_help = EXEC_EXAMPLES)]
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
    /// List reservations, with the ports bound right now
    ///
    /// The table fits the terminal (80 columns when standard output is not a
    /// terminal): long port lists and holders are shortened with "…", then
    /// the TOKEN column is left out (a note on stderr says so), then labels
    /// are shortened too. --wide shows everything; --json is for programs.
    List(ListArgs),
    /// Show the daemon's mode, kernel sync, counts and limits, and who
    /// answered on which socket
    Status,
    /// Re-read the daemon's portres.d files and apply them (administrators;
    /// as SIGHUP to portresd)
    ///
    /// Declared reservations are created, updated and deleted as the files
    /// say, each change durable on its own. What cannot be applied (a bad
    /// line, a conflict with another reservation, a port in use) is printed
    /// on stderr as FILE:LINE: MESSAGE, kept in `portres status` and retried
    /// at the next reload; the rest is applied and the exit status is 0.
    Reload,
    /// Print net.ipv4.ip_local_reserved_ports as a portres.d file
    ///
    /// Reads the kernel's current value (without asking the daemon), or
    /// with --baseline the baseline the daemon recorded, and prints one
    /// `both` line per block, for /etc/portres.d/: `portres import-sysctl >
    /// /etc/portres.d/50-sysctl.conf && portres reload`. While portresd
    /// keeps the sysctl, the kernel's value includes every reserved block:
    /// use --baseline then.
    ImportSysctl(ImportSysctlArgs),
}

/// `import-sysctl`.
#[derive(Args, Debug)]
pub struct ImportSysctlArgs {
    /// The daemon's recorded baseline instead of the kernel's current value
    #[arg(long)]
    pub baseline: bool,
    /// The label of every line [default: "from ip_local_reserved_ports"]
    #[arg(long)]
    pub label: Option<String>,
}

/// `acquire` and the reservation part of `exec`.
#[derive(Args, Debug, Clone)]
pub struct AcquireArgs {
    /// tcp or udp
    #[arg(value_parser = PossibleValuesParser::new(PROTOCOLS), ignore_case = true)]
    pub protocol: String,
    /// First port, or the whole block as START-END; 0 or absent: any free
    /// block in the kernel's dynamic range
    #[arg(short, long, value_name = "START", allow_negative_numbers = true)]
    pub start: Option<String>,
    /// How many consecutive ports [default: 1, or the size of START-END]
    #[arg(short, long, allow_negative_numbers = true)]
    pub count: Option<i64>,
    /// Free text shown in `list`
    #[arg(long)]
    pub label: Option<String>,
}

/// `acquire`: the reservation and how long to hold it.
#[derive(Args, Debug)]
pub struct AcquireCmd {
    #[command(flatten)]
    pub reservation: AcquireArgs,
    #[command(flatten)]
    pub hold: HoldArgs,
}

/// How long `acquire` holds (SIGINT/SIGTERM and the daemon stopping end
/// every mode).
#[derive(Args, Debug)]
pub struct HoldArgs {
    /// Hold until SIGINT or SIGTERM; standard input is not read (for
    /// `portres acquire ... --hold &` in scripts)
    #[arg(long, conflicts_with_all = ["pid", "timeout"])]
    pub hold: bool,
    /// Hold until process PID exits (or a signal); standard input is not read
    #[arg(long, value_name = "PID", allow_negative_numbers = true)]
    pub pid: Option<i64>,
    /// Hold for DURATION (90, 90s, 5m, 1h30m, 500ms; a bare number is
    /// seconds), or until a signal; with --pid, whichever comes first
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub timeout: Option<String>,
}

/// `exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    #[command(flatten)]
    pub reservation: AcquireArgs,
    /// With --persistent: the persistent reservation's first port, or its
    /// whole block as START-END
    #[arg(value_name = "START", allow_negative_numbers = true)]
    pub persistent_start: Option<String>,
    /// With --persistent: how many ports [default: 1, or the size of START-END]
    #[arg(value_name = "COUNT", allow_negative_numbers = true)]
    pub persistent_count: Option<i64>,
    /// Bind one socket per port of the block on ADDRESS (an IP address:
    /// 127.0.0.1, ::1, 0.0.0.0, ::) and pass them systemd-style: descriptors
    /// 3, 4, … (TCP listening, UDP bound; by port), LISTEN_FDS=N,
    /// LISTEN_PID=the command's pid, LISTEN_FDNAMES=the ports joined by ':'
    #[arg(long, value_name = "ADDRESS")]
    pub listen: Option<String>,
    /// Hand out an existing persistent reservation (you are an administrator
    /// or its owner) instead of acquiring one: `exec --persistent PROTOCOL
    /// START [COUNT] --listen ADDRESS -- CMD`; needs --listen
    #[arg(long)]
    pub persistent: bool,
    /// If the daemon stops while the command runs (the reservation has
    /// ended), end the command: SIGTERM, SIGKILL 5 s later, then exit 2
    #[arg(long)]
    pub strict_daemon: bool,
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

/// A block given by protocol and `START [COUNT]` or `START-END`.
#[derive(Args, Debug)]
pub struct BlockArgs {
    /// tcp or udp
    #[arg(value_parser = PossibleValuesParser::new(PROTOCOLS), ignore_case = true)]
    pub protocol: String,
    /// First port, or the whole block as START-END
    #[arg(allow_negative_numbers = true)]
    pub start: String,
    /// How many consecutive ports [default: 1, or the size of START-END]
    #[arg(allow_negative_numbers = true)]
    pub count: Option<i64>,
}

/// `list`.
#[derive(Args, Debug)]
pub struct ListArgs {
    /// Only tcp or only udp
    #[arg(value_parser = PossibleValuesParser::new(PROTOCOLS), ignore_case = true)]
    pub protocol: Option<String>,
    /// Only runtime or only persistent reservations
    #[arg(long, value_name = "KIND", value_parser = PossibleValuesParser::new(["runtime", "persistent"]))]
    pub kind: Option<String>,
    /// Only yours: runtime reservations you hold, persistent ones delegated
    /// to you or to one of your groups
    #[arg(long)]
    pub mine: bool,
    /// Only the reservation holding port N
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub port: Option<i64>,
    /// Do not shorten anything to fit the terminal
    #[arg(long, short)]
    pub wide: bool,
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
