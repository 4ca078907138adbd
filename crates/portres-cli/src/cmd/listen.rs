//! `portres exec --listen ADDRESS`: the daemon binds one socket per port of
//! the block (through Bind, so persistent low ports need no root), and the
//! command starts with them as descriptors 3…3+N−1 and the systemd
//! socket-activation variables `LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`.
//!
//! `LISTEN_PID` must be the command's own pid, which exists only after
//! fork. `setenv` in the forked child is not async-signal-safe (it may
//! allocate and take the environment lock another thread of ours held at
//! fork), and std's `Command::env` is computed before the fork. So the whole
//! exec is prepared here in the parent — argv, the environment with a fixed
//! slot for `LISTEN_PID`'s digits, the PATH candidates of the program — and
//! the child, in `pre_exec`, only calls `dup2`, `getpid` and `execve` (all
//! on POSIX's async-signal-safe list) and writes digits into memory
//! allocated before the fork. execvp's search is redone with `execve` over
//! the prepared candidates for the same reason (POSIX does not list execvp).
//!
//! Descriptors: in the parent every socket sits close-on-exec at a number
//! ≥ 3+N; free numbers in 3…3+N−1 are filled with close-on-exec
//! placeholders while std spawns, so that nothing std opens for the spawn
//! (its exec-error pipe) lands where the child `dup2`s a socket. `dup2`
//! clears close-on-exec on the child's copy at 3…3+N−1 only; the parent's
//! copies are closed once the command runs.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};

use portres::{Client, Error, ErrorCode, Protocol, Token};
use socket2::{Domain, Socket, Type};

use crate::cmd::invalid;

/// The first descriptor of systemd's socket-activation protocol
/// (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;

/// Checks a `--listen` value for a block of `protocol`: an IP address (IPv6
/// also in brackets), no port, no name, no scheme of another protocol.
pub fn check_address(arg: &str, protocol: Protocol) -> Result<IpAddr, Error> {
    let bad = |why: String| invalid(format!("--listen {arg:?}: {why}"));
    let mut text = arg.trim();
    if let Some((scheme, rest)) = text.split_once("://").or_else(|| {
        text.split_once(':')
            .filter(|(s, _)| s.eq_ignore_ascii_case("tcp") || s.eq_ignore_ascii_case("udp"))
    }) {
        if !scheme.eq_ignore_ascii_case(protocol.as_str()) {
            return Err(bad(format!(
                "the reservation is {protocol}, not {scheme}: the sockets are of the \
                 reservation's protocol; give just the address"
            )));
        }
        text = rest;
    }
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    let addr: IpAddr = match unbracketed.parse() {
        Ok(a) => a,
        Err(_) => {
            let with_port = text
                .parse::<std::net::SocketAddr>()
                .is_ok()
                .then_some("the ports are the reservation's: give the address without one");
            return Err(bad(with_port
                .unwrap_or(
                    "not an IP address (names are not resolved): e.g. 127.0.0.1, ::1, \
                     0.0.0.0 or ::",
                )
                .to_string()));
        }
    };
    if let IpAddr::V6(v6) = addr
        && (v6.segments()[0] & 0xffc0) == 0xfe80
    {
        return Err(bad(
            "a link-local address needs a scope id, which the daemon's Bind cannot take"
                .to_string(),
        ));
    }
    Ok(addr)
}

/// Refuses a `--count` whose sockets would not fit under `ulimit -n`: the
/// parent holds N sockets and up to N placeholders while spawning.
pub fn check_fd_room(count: u16) -> Result<(), Error> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    let needed = 2 * u64::from(count) + 32;
    if needed > limit {
        return Err(invalid(format!(
            "--listen with {count} ports needs about {needed} descriptors, but `ulimit -n` is \
             {limit}"
        )));
    }
    Ok(())
}

fn socket_error(what: &str, e: io::Error) -> Error {
    Error::new(ErrorCode::Internal, format!("{what}: {e}"))
}

/// Has the daemon bind `count` sockets of `protocol` on `address` into the
/// reservation `token` (one per port), TCP ones listening (backlog: the
/// kernel's `net.core.somaxconn`, as systemd's default). Returns them by
/// port. No `SO_REUSEADDR`: a socket handed on is never bound again.
pub fn bind_block(
    client: &Client,
    token: Token,
    protocol: Protocol,
    count: u16,
    address: IpAddr,
) -> Result<Vec<(u16, OwnedFd)>, Error> {
    let domain = if address.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let (ty, proto) = match protocol {
        Protocol::Tcp => (Type::STREAM, socket2::Protocol::TCP),
        Protocol::Udp => (Type::DGRAM, socket2::Protocol::UDP),
    };
    let mut sockets = Vec::with_capacity(count.into());
    for _ in 0..count {
        let sock = Socket::new(domain, ty.cloexec(), Some(proto))
            .map_err(|e| socket_error("making a socket", e))?;
        let port = client.bind_socket(token, &sock, address)?;
        if protocol == Protocol::Tcp {
            // The kernel caps the backlog at net.core.somaxconn.
            sock.listen(i32::MAX)
                .map_err(|e| socket_error("listen", e))?;
        }
        sockets.push((port, OwnedFd::from(sock)));
    }
    sockets.sort_by_key(|(port, _)| *port);
    Ok(sockets)
}

/// Moves `fd` to a descriptor ≥ `min`, close-on-exec.
pub fn move_above(fd: OwnedFd, min: RawFd) -> Result<OwnedFd, Error> {
    rustix::io::fcntl_dupfd_cloexec(&fd, min)
        .map_err(|e| socket_error("moving a descriptor", e.into()))
}

/// The environment variables of the socket-activation protocol, which the
/// command's environment gets fresh (inherited ones are dropped).
const LISTEN_VARS: [&str; 3] = ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"];
const PID_PREFIX: &[u8] = b"LISTEN_PID=";
/// Room for a pid's digits (10 for i32) and the terminating NUL.
const PID_DIGITS: usize = 11;
/// The shell execvp runs a file without a `#!` line with.
const SH: &std::ffi::CStr = c"/bin/sh";

/// Everything the child needs to exec, prepared before the fork (see the
/// module doc). The pointer arrays point into the `CString`s and `pid_env`
/// it owns, whose heap buffers do not move when it does.
struct ExecImage {
    /// The sockets, in port order, at descriptors ≥ 3+N (close-on-exec).
    sockets: Vec<OwnedFd>,
    /// Where to try the program, in execvp's order.
    candidates: Vec<CString>,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    /// execvp's fallback for a file without a `#!` line (ENOEXEC):
    /// `/bin/sh FILE ARGS…`; slot 1 is set to the candidate that failed.
    sh_argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    /// `LISTEN_PID=` and room for the digits; written only through
    /// `pid_digits`.
    _pid_env: Vec<u8>,
    pid_digits: *mut u8,
    env_ptrs: Vec<*const libc::c_char>,
}

// SAFETY: the raw pointers point into buffers the image owns and nothing
// else references; the image is used only by the one forked child (in
// `pre_exec`, where the child is single-threaded) and otherwise just dropped.
unsafe impl Send for ExecImage {}
// SAFETY: as above: no shared access ever happens through `&ExecImage`.
unsafe impl Sync for ExecImage {}

fn cstring(what: &str, bytes: &[u8]) -> Result<CString, Error> {
    CString::new(bytes).map_err(|_| invalid(format!("{what} contains a NUL byte")))
}

/// Where execvp would look for `program`: itself if it names a path, else
/// each directory of `PATH` (glibc's default when unset; an empty entry is
/// the current directory).
fn candidates(program: &OsStr) -> Result<Vec<CString>, Error> {
    let name = program.as_bytes();
    if name.contains(&b'/') {
        return Ok(vec![cstring("the command", name)?]);
    }
    if name.is_empty() {
        return Err(invalid("the command is empty"));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/bin:/usr/bin"));
    path.as_bytes()
        .split(|&b| b == b':')
        .map(|dir| {
            let mut full = if dir.is_empty() {
                b".".to_vec()
            } else {
                dir.to_vec()
            };
            full.push(b'/');
            full.extend_from_slice(name);
            cstring("PATH", &full)
        })
        .collect()
}

impl ExecImage {
    fn new(
        sockets: Vec<OwnedFd>,
        command: &[OsString],
        env: Vec<(OsString, OsString)>,
    ) -> Result<ExecImage, Error> {
        let candidates = candidates(&command[0])?;
        let argv: Vec<CString> = command
            .iter()
            .map(|a| cstring("an argument", a.as_bytes()))
            .collect::<Result<_, _>>()?;
        let env: Vec<CString> = env
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstring("the environment", &kv)
            })
            .collect::<Result<_, _>>()?;
        let mut pid_env = PID_PREFIX.to_vec();
        pid_env.resize(PID_PREFIX.len() + PID_DIGITS, 0);
        // Derived once; every later access to the buffer goes through it.
        let pid_env_ptr = pid_env.as_mut_ptr();
        // SAFETY: PID_PREFIX.len() is within the buffer just sized above.
        let pid_digits = unsafe { pid_env_ptr.add(PID_PREFIX.len()) };
        let nul_terminated = |v: &[CString]| -> Vec<*const libc::c_char> {
            v.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        let argv_ptrs = nul_terminated(&argv);
        let mut sh_argv_ptrs = argv_ptrs.clone();
        sh_argv_ptrs.insert(0, SH.as_ptr());
        let mut env_ptrs = nul_terminated(&env);
        env_ptrs.insert(env_ptrs.len() - 1, pid_env_ptr as *const libc::c_char);
        Ok(ExecImage {
            sockets,
            candidates,
            _argv: argv,
            argv_ptrs,
            sh_argv_ptrs,
            _env: env,
            _pid_env: pid_env,
            pid_digits,
            env_ptrs,
        })
    }

    /// In the forked child: the sockets to 3…, `LISTEN_PID`, execve. Only
    /// async-signal-safe calls; returns only on failure.
    fn exec(&mut self) -> io::Result<()> {
        for (i, fd) in self.sockets.iter().enumerate() {
            // SAFETY: dup2 on a descriptor we own onto a number the
            // placeholders kept free of anything the child still needs;
            // the sources are all ≥ 3+N, so none is overwritten.
            if unsafe { libc::dup2(fd.as_raw_fd(), FIRST_FD + i as RawFd) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        let mut pid = rustix::process::getpid().as_raw_nonzero().get() as u32;
        let mut digits = [0u8; PID_DIGITS - 1];
        let mut n = 0;
        loop {
            digits[n] = b'0' + (pid % 10) as u8;
            n += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        for i in 0..n {
            // SAFETY: i < n ≤ 10 < PID_DIGITS: inside the buffer; written
            // through the pointer the buffer was derived to.
            unsafe { self.pid_digits.add(i).write(digits[n - 1 - i]) };
        }
        // SAFETY: n ≤ 10 < PID_DIGITS.
        unsafe { self.pid_digits.add(n).write(0) };
        let mut denied = false;
        let mut last = io::Error::from_raw_os_error(libc::ENOENT);
        for path in &self.candidates {
            // SAFETY: path, argv and envp are NUL-terminated strings and
            // NULL-terminated arrays this image owns; execve returns only
            // on failure.
            unsafe {
                libc::execve(
                    path.as_ptr(),
                    self.argv_ptrs.as_ptr(),
                    self.env_ptrs.as_ptr(),
                )
            };
            last = io::Error::last_os_error();
            match last.raw_os_error() {
                Some(libc::ENOEXEC) => {
                    // As execvp: a script without `#!` runs under /bin/sh.
                    self.sh_argv_ptrs[1] = path.as_ptr();
                    // SAFETY: as above; SH is a NUL-terminated constant.
                    unsafe {
                        libc::execve(
                            SH.as_ptr(),
                            self.sh_argv_ptrs.as_ptr(),
                            self.env_ptrs.as_ptr(),
                        )
                    };
                    return Err(io::Error::last_os_error());
                }
                Some(libc::EACCES) => denied = true,
                Some(libc::ENOENT | libc::ENOTDIR | libc::ESTALE | libc::ENODEV) => {}
                // As execvp: any other failure is the answer.
                _ => return Err(last),
            }
        }
        Err(if denied {
            io::Error::from_raw_os_error(libc::EACCES)
        } else {
            last
        })
    }
}

/// A command ready to be spawned with listening sockets ([`Handoff::spawn`]).
pub struct Handoff {
    image: ExecImage,
}

impl Handoff {
    /// Prepares the exec of `argv` with `sockets` (ports and descriptors,
    /// by port) at 3…, the inherited environment with `env` set, and the
    /// LISTEN_* variables. Every socket descriptor must be ≥ 3+N already
    /// ([`move_above`]), as must any inherited descriptor named in `env`.
    pub fn prepare(
        sockets: Vec<(u16, OwnedFd)>,
        argv: &[OsString],
        env: &[(&str, OsString)],
    ) -> Result<Handoff, Error> {
        let n = sockets.len();
        let names: Vec<String> = sockets.iter().map(|(p, _)| p.to_string()).collect();
        let fds: Vec<OwnedFd> = sockets.into_iter().map(|(_, fd)| fd).collect();
        let mut full: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| {
                let k = k.as_bytes();
                !LISTEN_VARS.iter().any(|v| v.as_bytes() == k)
                    && !env.iter().any(|(e, _)| e.as_bytes() == k)
            })
            .collect();
        full.extend(env.iter().map(|(k, v)| (OsString::from(k), v.clone())));
        full.push(("LISTEN_FDS".into(), n.to_string().into()));
        full.push(("LISTEN_FDNAMES".into(), names.join(":").into()));
        Ok(Handoff {
            image: ExecImage::new(fds, argv, full)?,
        })
    }

    /// Spawns `command` (its program, arguments and environment are
    /// replaced by the prepared ones; stdio, working directory etc. apply)
    /// and closes the parent's copies of the sockets. `Ok(Err(_))`: the
    /// exec failed (as `Command::spawn` reports it).
    pub fn spawn(self, mut command: Command) -> Result<io::Result<Child>, Error> {
        let placeholders = fill_targets(&self.image.sockets)?;
        let mut image = self.image;
        // SAFETY: the closure runs in the forked child and does only what
        // ExecImage::exec documents: dup2, getpid, execve and writes into
        // memory allocated before the fork (async-signal-safe).
        unsafe { command.pre_exec(move || image.exec()) };
        let spawned = command.spawn();
        // The closure, and with it the parent's copies of the sockets, goes
        // with the Command; then the placeholders.
        drop(command);
        drop(placeholders);
        Ok(spawned)
    }
}

/// Occupies every free descriptor in 3…3+N−1 (N sockets) with a
/// close-on-exec duplicate of the first socket, so that std's spawn opens
/// nothing there (see the module doc).
fn fill_targets(sockets: &[OwnedFd]) -> Result<Vec<OwnedFd>, Error> {
    let n = sockets.len();
    let Some(model) = sockets.first() else {
        return Ok(Vec::new());
    };
    let mut placeholders = Vec::new();
    for target in FIRST_FD..FIRST_FD + n as RawFd {
        let dup = rustix::io::fcntl_dupfd_cloexec(model.as_fd(), target)
            .map_err(|e| socket_error("reserving descriptor numbers", e.into()))?;
        // The lowest free number ≥ target: it is target exactly when
        // target was free; otherwise target is taken already and the
        // duplicate is not needed.
        if dup.as_raw_fd() == target {
            placeholders.push(dup);
        }
    }
    Ok(placeholders)
}
