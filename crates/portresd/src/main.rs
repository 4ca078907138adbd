//! `portresd`: the portres daemon's command line. Parses flags into a
//! `Config`, sets up logging to stderr, takes the sockets a service manager
//! passed (socket activation), and runs the daemon until SIGTERM or SIGINT;
//! SIGHUP re-reads the portres.d files.

// The doc comments of the clap definition below are `--help` text, printed
// as written ("<pid>\n", "[COUNT]"), not rustdoc markup.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use portres_daemon::{Config, Daemon, Enforce, KernelSync, PortserverAddress};

// The command line (`Args` and its value types) lives in
// portresd_args.rs, pasted here by include!, so that the man page and
// completion generator (crates/portres-tests/tests/generated_docs.rs) builds
// the very same clap definition.
include!("portresd_args.rs");

fn resolve_group(name: &str) -> Result<u32, String> {
    if let Ok(gid) = name.parse::<u32>() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group")
        .map_err(|e| format!("cannot read /etc/group to resolve --admin-group {name}: {e}"))?;
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let n = f.next()?;
            let _ = f.next();
            let gid = f.next()?.parse::<u32>().ok()?;
            (n == name).then_some(gid)
        })
        .next()
        .ok_or_else(|| format!("--admin-group: no group named {name:?} in /etc/group"))
}

/// Whether stderr is connected to the journal: systemd sets
/// `JOURNAL_STREAM=DEVICE:INODE` to the stream it gave the service, and
/// stderr is still that stream (not redirected by whoever started us).
fn stderr_is_journal() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    let Some((dev, ino)) = std::env::var("JOURNAL_STREAM").ok().and_then(|v| {
        let (dev, ino) = v.split_once(':')?;
        Some((dev.parse::<u64>().ok()?, ino.parse::<u64>().ok()?))
    }) else {
        return false;
    };
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(stderr)
        .metadata()
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// Logging to stderr at `level` (RUST_LOG overrides): `[TIME LEVEL] text`,
/// or, when stderr is the journal, `<N>text` with N the syslog priority
/// (sd-daemon(3)) and no timestamp (the journal keeps its own).
fn init_logging(level: &str) {
    use std::io::Write;
    let mut builder =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level));
    builder.format_target(false);
    if stderr_is_journal() {
        builder
            .write_style(env_logger::WriteStyle::Never)
            .format(|buf, record| {
                let priority = match record.level() {
                    log::Level::Error => 3,
                    log::Level::Warn => 4,
                    log::Level::Info => 6,
                    log::Level::Debug | log::Level::Trace => 7,
                };
                writeln!(buf, "<{priority}>{}", record.args())
            });
    }
    builder.init();
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    init_logging(level);
    // Before anything opens a descriptor: the passed ones start at 3.
    let mut passed = portres_daemon::PassedSockets::from_env();

    let mut config = Config::for_current_user();
    if let Some(s) = args.socket {
        config.socket = s;
    }
    if let Some(d) = args.state_dir {
        config.state_dir = d;
    }
    config.kernel_sync = match args.kernel_sync {
        SyncArg::Auto => KernelSync::Auto,
        SyncArg::On => KernelSync::On,
        SyncArg::Off => KernelSync::Off,
    };
    config.enforce = match args.enforce {
        EnforceArg::Auto => Enforce::Auto,
        EnforceArg::Strict => Enforce::Strict,
        EnforceArg::Off => Enforce::Off,
    };
    config.enforce_cgroup = args.enforce_cgroup;
    config.quota = args.quota;
    config.max_connections = args.max_connections.max(1);
    config.max_connections_per_uid = args.max_connections_per_user.max(1);
    config.workers = args.workers.0;
    config.pin_workers = matches!(args.pin_workers, OnOff::On);
    if !args.config_dir.is_empty() {
        config.config_dirs = args.config_dir;
    }
    config.portserver = args.portserver;
    if let Some(g) = args.admin_group {
        match resolve_group(&g) {
            Ok(gid) => config.admin_gid = Some(gid),
            Err(e) => {
                eprintln!("portresd: {e}");
                return ExitCode::from(2);
            }
        }
    }

    if let Some(value) = args.reset_baseline {
        let ports = match value
            .map(|v| v.parse::<portres_core::PortSet>())
            .transpose()
        {
            Ok(p) => p,
            Err(e) => {
                eprintln!("portresd: --reset-baseline: not a port list: {}", e.message);
                return ExitCode::from(2);
            }
        };
        return match portres_daemon::reset_baseline(&config.state_dir, &config.socket, ports) {
            Ok(said) => {
                println!("{said}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                log::error!("{e}");
                ExitCode::from(1)
            }
        };
    }

    // Signals are caught from before the socket exists: a SIGTERM that
    // comes once clients can connect but before the daemon runs is kept
    // and stops it cleanly, instead of killing it with the default action.
    let mut signals = match signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot handle signals: {e}");
            return ExitCode::from(1);
        }
    };
    let daemon = match Daemon::start_with(config, &mut passed) {
        Ok(d) => d,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    // Passed sockets nobody serves are closed (and named in the log).
    drop(passed);
    let stop = daemon.stop_handle();
    let reload = daemon.reload_handle();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                // Re-read the portres.d files (the daemon's front does it).
                reload.reload();
                continue;
            }
            let name = if sig == signal_hook::consts::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            log::info!("{name}: stopping");
            stop.stop();
            break;
        }
    });
    let result = daemon.run();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(1)
        }
    }
}
