//! `portres acquire`: acquire, print, hold, release. How long it holds is
//! chosen up front (`check`): until standard input ends (the default, only
//! when standard input is a terminal or a pipe that is still open), until a
//! signal (`--hold`), until a process exits (`--pid`, through a pidfd) or
//! for a time (`--timeout`). SIGINT/SIGTERM end every mode (exit 0); the
//! daemon hanging up the session ends it too (exit 2: the reservation has
//! ended, and a script must not go on believing it holds the ports).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use portres::{Client, DaemonWatch, Error, ErrorCode, Reservation};
use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::FileType;
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::args::{AcquireArgs, AcquireCmd};
use crate::cmd::{CheckedBlock, block};
use crate::output::errln;
use crate::{Outcome, output};

/// How long a checked `acquire` holds.
#[derive(Debug)]
pub enum Hold {
    /// Until standard input ends (checked to be a terminal or an open pipe).
    Stdin,
    /// Until SIGINT/SIGTERM.
    Signal,
    /// Until the process behind `pidfd` exits and/or `timeout` passes.
    Until {
        pid: Option<(i32, OwnedFd)>,
        timeout: Option<Duration>,
    },
}

/// A checked `acquire`.
#[derive(Debug)]
pub struct Plan {
    block: CheckedBlock,
    label: Option<String>,
    hold: Hold,
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorCode::InvalidParameter, message)
}

/// Checks the reservation part shared with `exec`.
pub fn check_block(a: &AcquireArgs) -> Result<CheckedBlock, Error> {
    block(&a.protocol, a.start.as_deref(), a.count, true)
}

pub fn check(a: &AcquireCmd) -> Result<Plan, Error> {
    let block = check_block(&a.reservation)?;
    let h = &a.hold;
    let hold = if h.hold {
        Hold::Signal
    } else if h.pid.is_some() || h.timeout.is_some() {
        Hold::Until {
            pid: h.pid.map(open_pid).transpose()?,
            timeout: h.timeout.as_deref().map(duration).transpose()?,
        }
    } else {
        stdin_can_hold()?;
        Hold::Stdin
    };
    Ok(Plan {
        block,
        label: a.reservation.label.clone(),
        hold,
    })
}

/// A pidfd for `--pid`: the process is watched from now on, so a pid reused
/// later cannot keep the reservation.
fn open_pid(pid: i64) -> Result<(i32, OwnedFd), Error> {
    let p = i32::try_from(pid)
        .ok()
        .filter(|&p| p > 0)
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| invalid(format!("--pid {pid} is not a process id")))?;
    match rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Ok((p.as_raw_nonzero().get(), fd)),
        Err(rustix::io::Errno::SRCH) => Err(invalid(format!("--pid {pid}: no such process"))),
        Err(e) => Err(Error::new(
            ErrorCode::NotSupported,
            format!("--pid {pid}: cannot watch the process (pidfd_open, Linux 5.3+): {e}"),
        )),
    }
}

/// `--timeout`: a bare number is seconds, else humantime's forms (90s, 5m,
/// 1h30m, 500ms).
fn duration(s: &str) -> Result<Duration, Error> {
    let t = s.trim();
    let d = match t.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(t).map_err(|e| {
            invalid(format!(
                "--timeout {s:?} is not a duration ({e}); e.g. 90, 90s, 5m, 1h30m, 500ms"
            ))
        })?,
    };
    if d.is_zero() {
        return Err(invalid("--timeout must be longer than 0"));
    }
    Ok(d)
}

/// Refuses "until the end of standard input" when that end has already
/// come or would come at once: the newcomer's `portres acquire tcp &` in a
/// script (stdin /dev/null) released at once while printing "holding it".
fn stdin_can_hold() -> Result<(), Error> {
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    let why = match rustix::fs::fstat(fd) {
        Err(_) => Some("is closed".to_string()),
        Ok(st) => match FileType::from_raw_mode(st.st_mode) {
            FileType::Fifo | FileType::Socket => {
                let mut pfd = [PollFd::new(&fd, PollFlags::IN)];
                let zero = Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                };
                match poll(&mut pfd, Some(&zero)) {
                    Ok(_) if pfd[0].revents().intersects(PollFlags::HUP | PollFlags::ERR) => {
                        Some("has already ended (its writer closed it)".to_string())
                    }
                    _ => None,
                }
            }
            FileType::CharacterDevice if rustix::termios::isatty(fd) => {
                let foreground =
                    rustix::termios::tcgetpgrp(fd).is_ok_and(|pg| pg == rustix::process::getpgrp());
                (!foreground).then(|| {
                    "is a terminal this background job may not read (it would be stopped)"
                        .to_string()
                })
            }
            FileType::CharacterDevice => Some(
                "is not a terminal or a pipe (a background job's or a service's is /dev/null), \
                 so it ends at once"
                    .to_string(),
            ),
            other => Some(format!(
                "is a {}, not a terminal or a pipe, so it ends at once",
                match other {
                    FileType::RegularFile => "file",
                    FileType::Directory => "directory",
                    _ => "special file",
                }
            )),
        },
    };
    match why {
        None => Ok(()),
        Some(why) => Err(invalid(format!(
            "acquire holds until the end of standard input, but standard input {why}. \
             Use --hold (until SIGINT/SIGTERM), --pid PID (until that process exits), \
             --timeout DURATION, or `portres exec ... -- COMMAND` (while COMMAND runs)"
        ))),
    }
}

/// Acquires a checked block (shared with `exec`).
pub fn acquire(
    client: &Client,
    b: &CheckedBlock,
    label: Option<String>,
) -> Result<Reservation, Error> {
    client.acquire_labeled(b.protocol, b.start, b.count, label)
}

/// Whether the kernel honours the daemon's reservations (its status says
/// kernel sync is on); `None` if the daemon would not say.
pub fn kernel_reserved(client: &Client) -> Option<bool> {
    client.status().ok().map(|s| s.kernel_sync)
}

/// The error that ends `acquire` (and `exec --strict-daemon`) when the
/// daemon hangs up.
pub fn daemon_stopped() -> Error {
    Error::new(
        ErrorCode::DaemonUnavailable,
        "daemon stopped: reservation ended",
    )
}

/// A pipe SIGINT and SIGTERM write to, registered before acquiring so that
/// no signal slips between the two.
fn signal_pipe() -> Result<UnixStream, Error> {
    let fail = |e: std::io::Error| Error::new(ErrorCode::Internal, format!("signal setup: {e}"));
    let (reader, writer) = UnixStream::pair().map_err(fail)?;
    for sig in [SIGINT, SIGTERM] {
        signal_hook::low_level::pipe::register(sig, writer.try_clone().map_err(fail)?)
            .map_err(fail)?;
    }
    reader.set_nonblocking(true).map_err(fail)?;
    Ok(reader)
}

fn timespec(d: Duration) -> Timespec {
    Timespec {
        tv_sec: d.as_secs().min(i64::MAX as u64) as _,
        tv_nsec: d.subsec_nanos() as _,
    }
}

/// What ended the hold.
enum Ended {
    Released,
    DaemonGone,
}

pub fn run(client: &Client, plan: Plan, json: bool) -> Result<Outcome, Error> {
    let signals = signal_pipe()?;
    let res = acquire(client, &plan.block, plan.label)?;
    let watch = client.daemon_watch()?;
    output::reservation(res.info(), json, "acquired", kernel_reserved(client));
    if !json {
        errln!(
            "holding it until {}",
            match &plan.hold {
                Hold::Stdin => "Ctrl-C, SIGTERM or end of input".to_string(),
                Hold::Signal => "SIGINT or SIGTERM".to_string(),
                Hold::Until { pid, timeout } => {
                    let process = pid
                        .as_ref()
                        .map(|(p, _)| format!("process {p} exits, "))
                        .unwrap_or_default();
                    let most = timeout
                        .map(|t| format!(" (at most {})", humantime::format_duration(t)))
                        .unwrap_or_default();
                    format!("{process}SIGINT or SIGTERM{most}")
                }
            }
        );
    }
    match hold(&watch, &signals, &plan.hold) {
        Ended::Released => {
            res.release()?;
            Ok(Outcome::Exit(0))
        }
        Ended::DaemonGone => {
            // Nothing to release: the daemon ended the session with it.
            let _ = res.keep();
            Err(daemon_stopped())
        }
    }
}

/// Waits for whichever end `hold` names, a signal, or the daemon's hang-up.
fn hold(watch: &DaemonWatch, signals: &UnixStream, hold: &Hold) -> Ended {
    let stdin = std::io::stdin();
    let (pidfd, timeout): (Option<BorrowedFd<'_>>, Option<Duration>) = match hold {
        Hold::Until { pid, timeout } => (pid.as_ref().map(|(_, fd)| fd.as_fd()), *timeout),
        _ => (None, None),
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let watch_stdin = matches!(hold, Hold::Stdin);
    let mut sink = [0u8; 4096];
    loop {
        let mut fds = vec![
            PollFd::new(watch, DaemonWatch::EVENTS),
            PollFd::new(signals, PollFlags::IN),
        ];
        let stdin_fd = stdin.as_fd();
        if watch_stdin {
            fds.push(PollFd::new(&stdin_fd, PollFlags::IN));
        }
        if let Some(p) = &pidfd {
            fds.push(PollFd::new(p, PollFlags::IN));
        }
        let left = deadline.map(|d| timespec(d.saturating_duration_since(Instant::now())));
        match poll(&mut fds, left.as_ref()) {
            Ok(0) => return Ended::Released, // the timeout passed
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return Ended::Released,
        }
        if DaemonWatch::gone_in(fds[0].revents()) {
            return Ended::DaemonGone;
        }
        if !fds[1].revents().is_empty() {
            return Ended::Released;
        }
        let mut next = 2;
        if watch_stdin {
            if !fds[next].revents().is_empty() {
                // Input is read and dropped; its end (or an error) releases.
                // (Unbuffered: std's buffer could hide input from poll.)
                match rustix::io::read(stdin_fd, &mut sink) {
                    Ok(n) if n > 0 => {}
                    Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
                    _ => return Ended::Released,
                }
            }
            next += 1;
        }
        if pidfd.is_some() && !fds[next].revents().is_empty() {
            return Ended::Released;
        }
    }
}
