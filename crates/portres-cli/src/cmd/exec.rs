//! `portres exec`: hold a runtime reservation while a command runs, hand it
//! the ports and the session capability, pass its exit status through. A
//! watcher thread notices the daemon hanging up the session (the
//! reservation has ended): it warns, and with `--strict-daemon` ends the
//! command (through a pidfd, so a reused pid is never signalled). With
//! `--listen` the command gets the block as bound sockets too (`listen`),
//! and with `--persistent` the block is an existing persistent reservation
//! the caller administers or owns, looked up instead of acquired.

use std::ffi::OsString;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use portres::{Client, Error, ErrorCode, Reservation, ReservationInfo, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::args::ExecArgs;
use crate::cmd::listen::{self, Handoff};
use crate::cmd::{CheckedBlock, invalid};
use crate::output::{errln, reservation_line};
use crate::{Outcome, cmd};

/// Where the block comes from.
#[derive(Debug)]
enum Source {
    /// Acquired for the command (runtime), with this label.
    Acquire(CheckedBlock, Option<String>),
    /// An existing persistent reservation of exactly this block.
    Persistent(CheckedBlock),
}

/// A checked `exec`.
#[derive(Debug)]
pub struct Plan {
    source: Source,
    /// `--listen`: the address to bind the block's sockets on.
    listen: Option<IpAddr>,
    strict_daemon: bool,
    command: Vec<OsString>,
}

pub fn check(a: &ExecArgs) -> Result<Plan, Error> {
    let r = &a.reservation;
    let source = if a.persistent {
        let Some(start) = a.persistent_start.as_deref() else {
            return Err(invalid(
                "--persistent needs the persistent reservation's block: \
                 `exec --persistent PROTOCOL START [COUNT] --listen ADDRESS -- CMD`",
            ));
        };
        if r.start.is_some() || r.count.is_some() || r.label.is_some() {
            return Err(invalid(
                "--persistent takes the block as START [COUNT] or START-END after the protocol \
                 (the exact block of the reservation), not --start, --count or --label",
            ));
        }
        if a.strict_daemon {
            return Err(invalid(
                "--strict-daemon is for runtime reservations; a persistent one outlives the daemon",
            ));
        }
        if a.listen.is_none() {
            return Err(invalid(
                "--persistent needs --listen ADDRESS: exec hands a persistent reservation's \
                 ports on as bound sockets (it does not hold the reservation)",
            ));
        }
        Source::Persistent(cmd::block(
            &r.protocol,
            Some(start),
            a.persistent_count,
            false,
        )?)
    } else {
        if a.persistent_start.is_some() {
            return Err(invalid(
                "a block after the protocol names a persistent reservation: add --persistent, \
                 or give a runtime block as --start/-s and --count/-c",
            ));
        }
        Source::Acquire(cmd::acquire::check_block(r)?, r.label.clone())
    };
    let block = match &source {
        Source::Acquire(b, _) | Source::Persistent(b) => *b,
    };
    let listen = match a.listen.as_deref() {
        Some(addr) => {
            listen::check_fd_room(block.count)?;
            Some(listen::check_address(addr, block.protocol)?)
        }
        None => None,
    };
    Ok(Plan {
        source,
        listen,
        strict_daemon: a.strict_daemon,
        command: a.command.clone(),
    })
}

/// The block the command gets: held for it (runtime), or looked up
/// (persistent: nothing to hold), with the token to bind into it.
enum Held {
    Runtime(Reservation),
    Persistent(ReservationInfo, Token),
}

impl Held {
    fn get(client: &Client, source: &Source) -> Result<Held, Error> {
        Ok(match source {
            Source::Acquire(b, label) => {
                Held::Runtime(cmd::acquire::acquire(client, b, label.clone())?)
            }
            Source::Persistent(b) => {
                let info = client.lookup(b.protocol, b.start, b.count)?;
                let token = info.token.ok_or_else(|| {
                    Error::new(
                        ErrorCode::AccessDenied,
                        "the daemon did not hand out the persistent reservation's token",
                    )
                })?;
                Held::Persistent(info, token)
            }
        })
    }

    /// Ends a runtime reservation and waits for the daemon to confirm (a
    /// dropped handle releases without waiting), so its ports are free once
    /// `portres exec` has returned. A persistent one is left alone.
    fn release(self) {
        if let Held::Runtime(r) = self {
            // The command (or a worker holding the capability) may have
            // released it already: nothing to report.
            let _ = r.release();
        }
    }

    fn info(&self) -> &ReservationInfo {
        match self {
            Held::Runtime(r) => r.info(),
            Held::Persistent(info, _) => info,
        }
    }

    fn token(&self) -> Token {
        match self {
            Held::Runtime(r) => r.token(),
            Held::Persistent(_, token) => *token,
        }
    }
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
    let held = Held::get(client, &plan.source)?;
    // Runtime: the session capability for the command, and a watch on the
    // session (a persistent reservation outlives the daemon: neither).
    let (capability, watch) = match &held {
        Held::Runtime(res) => {
            // Strict mode: the command's tree may bind the block itself (a
            // no-op when enforcement is off). Without it the command can
            // still bind through the daemon (the session capability), so
            // only warn.
            if let Err(e) = client.enter_cgroup() {
                errln!("portres: the command may not bind its ports itself under strict mode: {e}");
            }
            let mut capability = client.capability()?;
            if plan.listen.is_some() {
                // Out of 3…3+N−1, where the sockets go.
                capability =
                    listen::move_above(capability, listen::FIRST_FD + i32::from(res.count()))?;
            }
            inheritable(&capability)?;
            let watch = client.daemon_watch()?;
            if cmd::acquire::kernel_reserved(client) == Some(false) {
                errln!(
                    "portres: {}",
                    reservation_line(res.info(), "holding", Some(false))
                );
            }
            (Some(capability), Some(watch))
        }
        Held::Persistent(..) => (None, None),
    };

    let info = held.info();
    let mut env: Vec<(&str, OsString)> = vec![
        ("PORTRES_PROTOCOL", info.protocol.as_str().into()),
        ("PORTRES_START", info.start.to_string().into()),
        ("PORTRES_COUNT", info.count.to_string().into()),
        ("PORTRES_TOKEN", held.token().to_string().into()),
    ];
    if let Some(capability) = &capability {
        env.push((
            portres_proto::paths::SESSION_FD_ENV,
            capability.as_raw_fd().to_string().into(),
        ));
    }
    env.push((
        portres_proto::paths::SOCKET_ENV,
        client.socket_path().into_os_string(),
    ));
    let (program, args) = plan.command.split_first().expect("clap requires CMD");
    let mut command = Command::new(program);
    let handoff = match plan.listen {
        Some(address) => {
            let first_free = listen::FIRST_FD + i32::from(info.count);
            let sockets =
                listen::bind_block(client, held.token(), info.protocol, info.count, address)?
                    .into_iter()
                    .map(|(port, fd)| Ok((port, listen::move_above(fd, first_free)?)))
                    .collect::<Result<Vec<(u16, OwnedFd)>, Error>>()?;
            Some(Handoff::prepare(sockets, &plan.command, &env)?)
        }
        None => None,
    };
    // Caught only from here on, to be passed to the command: until now a
    // signal ends exec the default way (the daemon then releases), so
    // Ctrl-C while the daemon is slow to answer ends it, and never starts
    // the command.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGQUIT])
        .map_err(|e| internal("signal setup", e))?;
    let spawned = match handoff {
        Some(handoff) => handoff.spawn(command)?,
        None => {
            command.args(args).envs(env.iter().map(|(k, v)| (k, v)));
            command.spawn()
        }
    };
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            errln!("portres: cannot run {}: {e}", program.to_string_lossy());
            held.release();
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
    if let Some(watch) = watch {
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
    held.release();
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
