//! `portres exec`: hold a runtime reservation while a command runs, hand it
//! the ports and the session capability, pass its exit status through.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use portres::{Client, Error, ErrorCode};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::args::{Cli, ExecArgs};
use crate::output::errln;
use crate::{Outcome, cmd};

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Internal, format!("{what}: {e}"))
}

/// Makes the capability survive exec in the child (and only there: we exec
/// nothing else).
fn inheritable(fd: &OwnedFd) -> Result<(), Error> {
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())
        .map_err(|e| internal("clearing close-on-exec on the session capability", e))
}

pub fn run(client: &Client, cli: &Cli, a: &ExecArgs, _json: bool) -> Result<Outcome, Error> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
        .map_err(|e| internal("signal setup", e))?;
    let res = cmd::acquire::acquire(client, &a.reservation)?;
    let capability = client.capability()?;
    inheritable(&capability)?;

    let (program, args) = a.command.split_first().expect("clap requires CMD");
    let mut command = Command::new(program);
    command
        .args(args)
        .env("PORTRES_PROTOCOL", res.protocol().as_str())
        .env("PORTRES_START", res.start().to_string())
        .env("PORTRES_COUNT", res.count().to_string())
        .env("PORTRES_TOKEN", res.token().to_string())
        .env(
            portres_proto::paths::SESSION_FD_ENV,
            capability.as_raw_fd().to_string(),
        )
        .env(portres_proto::paths::SOCKET_ENV, client.socket_path());
    let _ = cli;
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            errln!("portres: cannot run {}: {e}", program.to_string_lossy());
            drop(res);
            return Ok(Outcome::Exit(if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            }));
        }
    };
    // The child has its copy; ours must not leak into anything else.
    drop(capability);
    let pid = child.id() as i32;
    let handle = signals.handle();
    let forwarder = std::thread::spawn(move || {
        for sig in signals.forever() {
            if let (Some(pid), Some(sig)) = (
                rustix::process::Pid::from_raw(pid),
                rustix::process::Signal::from_named_raw(sig),
            ) {
                let _ = rustix::process::kill_process(pid, sig);
            }
        }
    });
    let status = child
        .wait()
        .map_err(|e| internal("waiting for the command", e))?;
    handle.close();
    let _ = forwarder.join();
    // The command (or a worker holding the capability) may have released it.
    drop(res);
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 1,
    };
    Ok(Outcome::Exit(code))
}
