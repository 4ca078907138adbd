// portresd's command line: `Args` and the types of its values. Not a
// module: include!d by main.rs and by the man page and
// completion generator (crates/portres-tests/tests/generated_docs.rs), so
// both build the same clap definition (an included file cannot open with
// `//!`). The including scope provides `Parser`, `ValueEnum`, `PathBuf`,
// `Config` and `PortserverAddress`.

/// The portres daemon: port reservations for Linux, in the model of the
/// Windows port reservation API.
///
/// Runs in the foreground and logs to stderr. As root it serves the whole
/// machine (system mode: /run/portres/portres.sock, /var/lib/portres/) and
/// keeps net.ipv4.ip_local_reserved_ports equal to the admin's baseline plus
/// every reserved block; as an ordinary user it serves that user (user mode:
/// $XDG_RUNTIME_DIR/portres/portres.sock, $XDG_STATE_HOME/portres/).
/// It is ready when the socket accepts connections. SIGTERM or SIGINT stop
/// it cleanly: runtime reservations end, the kernel keeps the baseline plus
/// persistent blocks, the socket file is removed.
/// (uid 0 of a user namespace of one's own, as in `unshare -rn`, is an
/// ordinary user: user mode.)
///
/// Under a service manager (systemd's conventions): NOTIFY_SOCKET gets
/// READY=1 once the socket accepts and the kernel holds baseline plus
/// persistent blocks, a STATUS= summary and STOPPING=1; a listening Unix
/// socket passed with LISTEN_FDS/LISTEN_PID (named "varlink" in
/// LISTEN_FDNAMES, or unnamed) is served instead of --socket and never
/// removed; when JOURNAL_STREAM names stderr, log lines carry <N> syslog
/// priorities and no timestamps.
#[derive(Parser, Debug)]
#[command(name = "portresd", version, max_term_width = 100)]
struct Args {
    /// Unix socket to listen on [env: PORTRES_SOCKET; default by mode, see
    /// above]. Its directory must exist (only the default's is created),
    /// owned by portresd's uid and not writable by others unless sticky
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,

    /// Directory for the database portres.db [env: PORTRES_STATE_DIR;
    /// default by mode]. One portresd per state directory: a second one
    /// exits at once, naming the first (portres.lock)
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,

    /// Keep net.ipv4.ip_local_reserved_ports in sync: auto = when writable
    /// (root, or a network namespace you own) and no other portresd keeps
    /// it in this network namespace, on = refuse to start otherwise, off =
    /// never touch it
    #[arg(long, value_enum, default_value_t = SyncArg::Auto, value_name = "MODE")]
    kernel_sync: SyncArg,

    /// Members of this group (name or gid) may create and delete persistent
    /// reservations, besides root
    #[arg(long, value_name = "GROUP")]
    admin_group: Option<String>,

    /// Most runtime ports one user may hold at once, over all sessions (root is exempt)
    #[arg(long, value_name = "PORTS", default_value_t = Config::DEFAULT_QUOTA)]
    quota: u32,

    /// Most client connections at once
    #[arg(long, value_name = "N", default_value_t = Config::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,

    /// Most client connections one (non-root) user may hold at once
    #[arg(long, value_name = "N", default_value_t = Config::DEFAULT_MAX_CONNECTIONS_PER_UID)]
    max_connections_per_user: usize,

    /// Threads serving client connections: "auto" (one per CPU portresd
    /// may use) or 1-1024. A connection is served by one worker at a time:
    /// the least busy when it connects, then one on the CPU its client runs
    /// on (clients say which, see docs/wire.md)
    #[arg(long, value_name = "auto|N", default_value = "auto", value_parser = parse_workers)]
    workers: WorkerCount,

    /// Pin workers round-robin to the CPUs portresd may use (on), or let
    /// the kernel place them (off). With pinning, a connection moves to a
    /// worker on its client's CPU, so a request and its reply rarely cross
    /// CPUs
    #[arg(long, value_name = "on|off", default_value = "on")]
    pin_workers: OnOff,

    /// Record PORTS (kernel list form, e.g. "999,5000-5009"; empty for
    /// none) as the admin's baseline of the store in --state-dir, print the
    /// old and new value, and exit. Without a value: the kernel's current
    /// list less the store's persistent blocks. The baseline is read from
    /// the kernel at the first start on a store and kept for good; reset it
    /// when that value held blocks of another portres daemon (after a
    /// crash, or one on another state directory). Refused while a daemon
    /// runs on the state directory: stop it first; its next start writes
    /// baseline + persistent blocks. `portres status` and the log at every
    /// start say where the baseline came from
    #[arg(long, value_name = "PORTS", num_args = 0..=1, require_equals = true)]
    reset_baseline: Option<Option<String>>,

    /// Strict mode: the kernel refuses an explicit bind() into a reserved
    /// block (EACCES) to everyone but the daemon, the persistent
    /// reservation's owner and the exec command holding a runtime one.
    /// auto = when the bind hooks can be attached (root or CAP_BPF +
    /// CAP_NET_ADMIN, cgroup v2, BPF), else off with a warning; strict =
    /// refuse to start otherwise; off = never [env: PORTRES_ENFORCE]
    #[arg(long, value_enum, default_value_t = EnforceArg::Auto, value_name = "MODE", env = "PORTRES_ENFORCE")]
    enforce: EnforceArg,

    /// The cgroup v2 directory strict mode's bind hooks attach to: they
    /// judge sockets made in it and below [default: the cgroup v2 root,
    /// i.e. every process of the machine]. `portres exec` commands run in a
    /// cgroup portresd makes below the caller's own
    #[arg(long, value_name = "DIR")]
    enforce_cgroup: Option<PathBuf>,

    /// A portres.d directory of declared reservations (*.conf files, one
    /// reservation per line); repeat it, lowest precedence first: a file in
    /// a later directory replaces the same name in an earlier one, a
    /// symlink to /dev/null masks the name. Replaces the defaults
    /// (/usr/lib/portres.d /run/portres.d /etc/portres.d; user mode
    /// $XDG_CONFIG_HOME/portres.d). Read at start and at SIGHUP or
    /// `portres reload`
    #[arg(long, value_name = "DIR")]
    config_dir: Vec<PathBuf>,

    /// Log more (-v: debug, -vv: trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Also serve portpicker's portserver protocol on ADDRESS: a socket
    /// path (its directory must exist, as for --socket), or @NAME for an
    /// abstract socket of this network namespace (portpicker's
    /// PORTSERVER_ADDRESS form, e.g. @unittest-portserver). Repeatable:
    /// one listener per address. Each request "<pid>\n" is answered
    /// "<port>\n": a port of the dynamic range reserved on both TCP and
    /// UDP for process <pid> (the peer itself or a process of its uid;
    /// root may name any) until that process exits; refusals get no
    /// answer. See docs/wire.md
    #[arg(long, value_name = "ADDRESS", value_parser = parse_portserver)]
    portserver: Vec<PortserverAddress>,
}

fn parse_portserver(s: &str) -> Result<PortserverAddress, String> {
    PortserverAddress::parse(s)
}

/// `--workers`: `None` is "auto".
#[derive(Clone, Copy, Debug)]
struct WorkerCount(Option<usize>);

fn parse_workers(s: &str) -> Result<WorkerCount, String> {
    if s == "auto" {
        return Ok(WorkerCount(None));
    }
    match s.parse::<usize>() {
        Ok(n) if (1..=Config::MAX_WORKERS).contains(&n) => Ok(WorkerCount(Some(n))),
        _ => Err(format!(
            "expected \"auto\" or a number from 1 to {}",
            Config::MAX_WORKERS
        )),
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SyncArg {
    Auto,
    On,
    Off,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum EnforceArg {
    Auto,
    Strict,
    Off,
}
