//! `portresd`: the portres daemon's command line. Parses flags into a
//! `Config`, sets up logging to stderr, and runs the daemon until SIGTERM or
//! SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use portres_daemon::{Config, Daemon, KernelSync, PortserverAddress};

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

fn main() -> ExitCode {
    let args = Args::parse();
    let level = match args.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_target(false)
        .init();

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
    config.quota = args.quota;
    config.max_connections = args.max_connections.max(1);
    config.max_connections_per_uid = args.max_connections_per_user.max(1);
    config.workers = args.workers.0;
    config.pin_workers = matches!(args.pin_workers, OnOff::On);
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
    ]) {
        Ok(s) => s,
        Err(e) => {
            log::error!("cannot handle signals: {e}");
            return ExitCode::from(1);
        }
    };
    let daemon = match Daemon::start(config) {
        Ok(d) => d,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let stop = daemon.stop_handle();
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let name = if sig == signal_hook::consts::SIGTERM {
                "SIGTERM"
            } else {
                "SIGINT"
            };
            log::info!("{name}: stopping");
            stop.stop();
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
