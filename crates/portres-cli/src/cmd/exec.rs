//! `portres exec`: hold a runtime reservation while a command runs, hand it
//! the ports and the session capability, pass its exit status through. A
//! watcher thread notices the daemon hanging up the session (the
//! reservation has ended): it warns, and with `--strict-daemon` ends the
//! command (through a pidfd, so a reused pid is never signalled).

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portres::{Client, Error, ErrorCode};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::args::ExecArgs;
use crate::cmd::CheckedBlock;
use crate::output::{errln, reservation_line};
use crate::{Outcome, cmd};

/// A checked `exec`.
#[derive(Debug)]
pub struct Plan {
    block: CheckedBlock,
    label: Option<String>,
    strict_daemon: bool,
    command: Vec<OsString>,
}

pub fn check(a: &ExecArgs) -> Result<Plan, Error> {
    Ok(Plan {
        block: cmd::acquire::check_block(&a.reservation)?,
        label: a.reservation.label.clone(),
        strict_daemon: a.strict_daemon,
        command: a.command.clone(),
    })
}

/// How long `--strict-daemon` lets the command end after SIGTERM before
/// SIGKILL.
const STRICT_GRACE: Duration = Duration::from_secs(5);

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorCode::Internal, format!("{what}: {e}"))
}

/// Makes the capability survive exec in the child (and only there: we exec
/// nothing else).
fn inheritable(fd: &OwnedFd) -> Result<(), Error> {
    rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())
        .map_err(|e| internal("clearing close-on-exec on the session capability", e))
}

pub fn run(client: &Client, plan: Plan) -> Result<Outcome, Error> {
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
        .map_err(|e| internal("signal setup", e))?;
    let res = cmd::acquire::acquire(client, &plan.block, plan.label.clone())?;
    let capability = client.capability()?;
    inheritable(&capability)?;
    let watch = client.daemon_watch()?;
    if cmd::acquire::kernel_reserved(client) == Some(false) {
        errln!(
            "portres: {}",
            reservation_line(res.info(), "holding", Some(false))
        );
    }

    let (program, args) = plan.command.split_first().expect("clap requires CMD");
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
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            errln!("portres: cannot run {}: {e}", program.to_string_lossy());
            // Released (and waited for) before exiting, so the ports are
            // free once `portres exec` has returned.
            let _ = res.release();
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
    let child_done = Arc::new(AtomicBool::new(false));
    let daemon_gone = Arc::new(AtomicBool::new(false));
    {
        let child_done = Arc::clone(&child_done);
        let daemon_gone = Arc::clone(&daemon_gone);
        // Opened before the child can be reaped, so it names this child.
        let pidfd = rustix::process::Pid::from_raw(pid).and_then(|p| {
            rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok()
        });
        let strict = plan.strict_daemon;
        std::thread::spawn(move || {
            if !watch.wait(None) || child_done.load(Ordering::SeqCst) {
                return;
            }
            daemon_gone.store(true, Ordering::SeqCst);
            if !strict {
                errln!(
                    "portres: warning: daemon stopped: reservation ended; the command runs on \
                     without it (--strict-daemon would end it)"
                );
                return;
            }
            errln!(
                "portres: daemon stopped: reservation ended; ending the command (--strict-daemon)"
            );
            let Some(pidfd) = pidfd else { return };
            let send = |sig| {
                let _ = rustix::process::pidfd_send_signal(&pidfd, sig);
            };
            send(rustix::process::Signal::TERM);
            let deadline = Instant::now() + STRICT_GRACE;
            while !child_done.load(Ordering::SeqCst) {
                if Instant::now() > deadline {
                    send(rustix::process::Signal::KILL);
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
    }
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
    child_done.store(true, Ordering::SeqCst);
    handle.close();
    let _ = forwarder.join();
    // Released and waited for (a dropped handle does not wait), so the
    // ports are free once `portres exec` has returned. The command (or a
    // worker holding the capability) may have released it already.
    let _ = res.release();
    if plan.strict_daemon && daemon_gone.load(Ordering::SeqCst) {
        return Err(cmd::acquire::daemon_stopped());
    }
    let code = match (status.code(), status.signal()) {
        (Some(c), _) => c as u8,
        (None, Some(sig)) => 128u8.wrapping_add(sig as u8),
        _ => 1,
    };
    Ok(Outcome::Exit(code))
}
