//! Running commands: the CLI, as another user with `setpriv`, and what a
//! command that ran did ([`Ran`]).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::{bin, log_tail};

/// A command that has run: what it was, how it ended, what it printed,
/// and (from [`ProcessDaemon::run`](crate::ProcessDaemon::run)) the log of the daemon it talked to.
/// Its `Display` shows all of it, so `assert!(…, "{ran}")` explains a
/// failure on its own.
#[derive(Debug)]
pub struct Ran {
    /// The command line, as run.
    pub command: String,
    /// Exit status and raw output.
    pub out: Output,
    /// Its stdout, as text.
    pub stdout: String,
    /// Its stderr, as text.
    pub stderr: String,
    /// The log of the daemon it talked to, if known.
    pub daemon_log: Option<PathBuf>,
}

impl Ran {
    /// Runs `cmd` to its end (stdin closed unless the caller set it).
    pub fn of(mut cmd: Command) -> Ran {
        let command = format!("{cmd:?}");
        let out = cmd
            .output()
            .unwrap_or_else(|e| panic!("cannot run {command}: {e}"));
        Ran {
            command,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            out,
            daemon_log: None,
        }
    }

    /// Asserts that it exited 0; otherwise panics showing everything.
    #[track_caller]
    pub fn success(self) -> Ran {
        assert!(self.out.status.success(), "command failed: {self}");
        self
    }

    /// Asserts that it exited with `code`; otherwise panics showing
    /// everything.
    #[track_caller]
    pub fn code(self, code: i32) -> Ran {
        assert_eq!(self.out.status.code(), Some(code), "{self}");
        self
    }
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}\n{}\nstdout:\n{}\nstderr:\n{}",
            self.command, self.out.status, self.stdout, self.stderr
        )?;
        if let Some(log) = &self.daemon_log {
            write!(
                f,
                "\nlast lines of the daemon's log ({}):\n{}",
                log.display(),
                log_tail(log, 30)
            )?;
        }
        Ok(())
    }
}

/// The `portres` CLI pointed at `socket`.
pub fn cli(socket: &Path) -> Command {
    let mut cmd = Command::new(bin("portres"));
    cmd.arg("--socket")
        .arg(socket)
        .env_remove("PORTRES_SOCKET")
        .env_remove("PORTRES_SESSION_FD")
        .stdin(Stdio::null());
    cmd
}

/// `cmd` run as `uid`/`gid` with exactly `groups` as supplementary groups,
/// via setpriv (root only).
pub fn as_user(cmd: &Command, uid: u32, gid: u32, groups: &[u32]) -> Command {
    let mut out = Command::new("setpriv");
    out.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        out.arg("--clear-groups");
    } else {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        out.arg(format!("--groups={}", list.join(",")));
    }
    out.arg("--").arg(cmd.get_program()).args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => out.env(k, v),
            None => out.env_remove(k),
        };
    }
    out.stdin(Stdio::null());
    // Keep the child out of our process group's terminal signals.
    out.process_group(0);
    out
}

/// Runs and returns the output, with stdout/stderr as strings.
pub fn run(mut cmd: Command) -> (Output, String, String) {
    let out = cmd.output().expect("run command");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// The `portres-testkit` helper binary of this package.
pub fn testkit() -> PathBuf {
    bin("portres-testkit")
}
