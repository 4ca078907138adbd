//! The `portres` CLI, run as a process against a real daemon inside a
//! private network namespace per test: every command, human and `--json`
//! output, exit statuses (0 success, 1 the daemon refused, 2 usage or
//! connection errors), `acquire` holding until its input closes or a signal,
//! `exec` handing the reservation and the session capability to a command,
//! and an ordinary (non-admin) user.
//!
//! Binaries must be built first: `cargo build --workspace --bins`. The
//! helpers marked `pub(crate)` serve `exec_listen` too.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use portres::{Client, Protocol};
use portres_core::PortSet;
use portres_tests::{
    InProcessDaemon, ProcessDaemon, as_user, bin, cli, kernel_reserved, open_tempdir, testkit,
};
use serde_json::Value;

/// The longest any single CLI run may take before the test fails.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const NOBODY: u32 = 65534;
const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A finished command and what it printed.
pub(crate) struct Ran {
    what: String,
    status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl std::fmt::Display for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` ended with {}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

impl Ran {
    /// The exit status; panics if it died of a signal.
    pub(crate) fn code(&self) -> i32 {
        self.status
            .code()
            .unwrap_or_else(|| panic!("died of a signal: {self}"))
    }

    /// Asserts the exit status.
    pub(crate) fn expect(&self, code: i32) -> &Ran {
        assert_eq!(self.code(), code, "unexpected exit status: {self}");
        self
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Reads `r` to its end on a thread; the text arrives on the channel.
fn drain(mut r: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
    });
    rx
}

fn kill(pid: u32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).expect("pid");
    rustix::process::kill_process(pid, sig).expect("kill");
}

/// Waits for `child` to exit, at most `TIMEOUT`; kills it and panics after.
fn wait_exit(child: &mut Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{what}` did not exit within {TIMEOUT:?} (killed)");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs `cmd` to completion (at most `TIMEOUT`), capturing its output.
pub(crate) fn run_t(mut cmd: Command) -> Ran {
    let what = describe(&cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn `{what}`: {e}"));
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let status = wait_exit(&mut child, &what);
    let text = |rx: Receiver<String>, name: &str| {
        rx.recv_timeout(TIMEOUT).unwrap_or_else(|_| {
            panic!("`{what}` exited ({status}) but its {name} stayed open for {TIMEOUT:?}")
        })
    };
    Ran {
        stdout: text(out, "stdout"),
        stderr: text(err, "stderr"),
        what,
        status,
    }
}

/// `portres --socket SOCKET ARGS…`.
pub(crate) fn cmd(socket: &Path, args: &[&str]) -> Command {
    let mut c = cli(socket);
    c.args(args);
    c
}

/// `cmd` as uid/gid 65534 without supplementary groups.
pub(crate) fn nobody(socket: &Path, args: &[&str]) -> Command {
    as_user(&cmd(socket, args), NOBODY, NOBODY, &[])
}

pub(crate) fn portres(socket: &Path, args: &[&str]) -> Ran {
    run_t(cmd(socket, args))
}

/// Runs it, asserts exit status 0, returns stdout.
fn ok(socket: &Path, args: &[&str]) -> String {
    portres(socket, args).expect(0).stdout.clone()
}

/// The single line of JSON a command printed.
pub(crate) fn one_json_line(ran: &Ran) -> Value {
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 1, "expected exactly one line of JSON: {ran}");
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("not JSON ({e}): {ran}"))
}

/// Runs `--json ARGS…`, asserts exit status 0, returns its one line of JSON.
pub(crate) fn ok_json(socket: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let ran = portres(socket, &all);
    ran.expect(0);
    one_json_line(&ran)
}

/// `list --json` as an array.
pub(crate) fn list_json(socket: &Path) -> Vec<Value> {
    match ok_json(socket, &["list"]) {
        Value::Array(a) => a,
        other => panic!("list --json printed {other}, not an array"),
    }
}

/// Asserts that `make(args)` is refused with `code`, both in human form
/// (exit 1, the code on stderr, nothing on stdout) and with `--json` (exit
/// 1, `{"error":{"code":…,"message":…}}` on stdout).
pub(crate) fn refused_by(make: &dyn Fn(&[&str]) -> Command, args: &[&str], code: &str) {
    refused_with(make, args, code, 1);
}

/// `refused_by` with another exit status (2: a usage error the CLI finds
/// before connecting).
fn refused_with(make: &dyn Fn(&[&str]) -> Command, args: &[&str], code: &str, status: i32) {
    let ran = run_t(make(args));
    ran.expect(status);
    assert!(
        ran.stderr.contains(code),
        "expected {code} on stderr: {ran}"
    );
    assert!(
        ran.stdout.trim().is_empty(),
        "a refusal printed on stdout: {ran}"
    );

    let mut json_args = vec!["--json"];
    json_args.extend_from_slice(args);
    let ran = run_t(make(&json_args));
    ran.expect(status);
    assert!(
        ran.stderr.contains(code),
        "expected {code} on stderr: {ran}"
    );
    let v = one_json_line(&ran);
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {ran}"));
    assert_eq!(obj.len(), 1, "only \"error\" expected: {ran}");
    assert_eq!(v["error"]["code"], code, "wrong error code: {ran}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error message missing: {ran}"
    );
}

/// `refused_by` for `portres --socket SOCKET ARGS…` as root.
fn refused(socket: &Path, args: &[&str], code: &str) {
    refused_by(&|a| cmd(socket, a), args, code);
}

/// A usage error found before connecting: exit 2, `code` on stderr, and
/// with `--json` the error object on stdout.
pub(crate) fn usage_refused(socket: &Path, args: &[&str], code: &str) {
    refused_with(&|a| cmd(socket, a), args, code, 2);
}

/// A usage error clap finds (a value outside the listed ones): exit 2,
/// nothing on stdout, `needle` in the explanation on stderr.
fn clap_refused(socket: &Path, args: &[&str], needle: &str) {
    for json in [false, true] {
        let mut all = if json { vec!["--json"] } else { vec![] };
        all.extend_from_slice(args);
        let ran = portres(socket, &all);
        ran.expect(2);
        assert!(ran.stdout.is_empty(), "{ran}");
        assert!(ran.stderr.contains(needle), "{ran}");
    }
}

/// Polls `cond` until it holds; panics with `what` after `TIMEOUT`.
pub(crate) fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Whether every port of the block is in the kernel's reserved ports.
fn kernel_has(start: u16, count: u16) -> bool {
    let set = kernel_reserved();
    (start..=start + (count - 1)).all(|p| set.contains(p))
}

/// Whether no port of the block is in the kernel's reserved ports.
fn kernel_has_none(start: u16, count: u16) -> bool {
    let set = kernel_reserved();
    !(start..=start + (count - 1)).any(|p| set.contains(p))
}

fn field_u64(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

fn port_of(v: &Value, key: &str) -> u16 {
    u16::try_from(field_u64(v, key)).unwrap_or_else(|_| panic!("{key} is not a port in {v}"))
}

/// A token in JSON: a decimal string of a non-zero u64.
pub(crate) fn token_of(v: &Value) -> u64 {
    let t = v["token"]
        .as_str()
        .unwrap_or_else(|| panic!("token is not a string in {v}"));
    let n: u64 = t
        .parse()
        .unwrap_or_else(|e| panic!("token {t:?} is not decimal ({e}) in {v}"));
    assert_ne!(n, 0, "token 0 in {v}");
    n
}

/// A long-running CLI process (acquire, exec) with piped stdin, its stdout
/// line by line and its stderr; killed if the test ends early.
pub(crate) struct Running {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Option<Receiver<String>>,
}

impl Running {
    pub(crate) fn spawn(cmd: Command) -> Running {
        Running::spawn_with_stderr(cmd, None)
    }

    /// `spawn`, with stderr going to `stderr` if given (then `wait` returns
    /// an empty stderr).
    fn spawn_with_stderr(mut cmd: Command, stderr: Option<std::fs::File>) -> Running {
        let what = describe(&cmd);
        let to_file = stderr.is_some();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr.map_or_else(Stdio::piped, Stdio::from));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn `{what}`: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = (!to_file).then(|| drain(child.stderr.take().expect("stderr")));
        Running {
            what,
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line of stdout, waiting at most `TIMEOUT`.
    pub(crate) fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(line) => line,
            Err(e) => {
                let _ = self.child.kill();
                let status = self.child.wait().expect("wait");
                let err = self
                    .stderr
                    .take()
                    .and_then(|rx| rx.recv_timeout(TIMEOUT).ok())
                    .unwrap_or_default();
                panic!(
                    "`{}` printed no line ({e:?}); ended with {status}; stderr:\n{err}",
                    self.what
                );
            }
        }
    }

    fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }

    fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// Waits for it to exit (at most `TIMEOUT`): its status and stderr.
    pub(crate) fn wait(&mut self) -> (ExitStatus, String) {
        let status = wait_exit(&mut self.child, &self.what);
        let err = self
            .stderr
            .take()
            .and_then(|rx| rx.recv_timeout(TIMEOUT).ok())
            .unwrap_or_default();
        (status, err)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// acquire
// ---------------------------------------------------------------------------

nstest!(acquire_json_holds_until_stdin_closes, |_| {
    let d = InProcessDaemon::start(|_| {});
    let mut held = Running::spawn(cmd(
        &d.socket,
        &["--json", "acquire", "tcp", "--count", "3"],
    ));
    let line = held.next_line();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(v["protocol"], "tcp", "{v}");
    assert_eq!(field_u64(&v, "count"), 3, "{v}");
    assert_eq!(v["kind"], "runtime", "{v}");
    token_of(&v);
    assert_eq!(field_u64(&v["holder"], "uid"), 0, "{v}");
    assert_eq!(field_u64(&v["holder"], "pid"), u64::from(held.pid()), "{v}");
    let start = port_of(&v, "start");
    assert!(start > 0 && u32::from(start) + 2 <= 65535, "{v}");

    // Held: listed (seen from another session) and in the kernel.
    let list = list_json(&d.socket);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["protocol"], "tcp");
    assert_eq!(port_of(&list[0], "start"), start);
    assert_eq!(field_u64(&list[0], "count"), 3);
    assert_eq!(list[0]["kind"], "runtime");
    assert_eq!(field_u64(&list[0]["holder"], "pid"), u64::from(held.pid()));
    assert!(
        kernel_has(start, 3),
        "{start}+3 not in {}",
        kernel_reserved()
    );
    assert!(held.is_running(), "acquire exited while its stdin was open");

    // End of input: released, exit 0.
    held.close_stdin();
    let (status, err) = held.wait();
    assert_eq!(status.code(), Some(0), "acquire: {status}; stderr:\n{err}");
    wait_until("the reservation to be released", || {
        list_json(&d.socket).is_empty()
    });
    assert!(
        portres_tests::eventually(|| kernel_has_none(start, 3)),
        "{start}+3 still in {}",
        kernel_reserved()
    );
});

nstest!(acquire_human_output_and_signals_release, |_| {
    let d = InProcessDaemon::start(|_| {});

    // Human output, SIGTERM.
    let mut held = Running::spawn(cmd(
        &d.socket,
        &[
            "acquire", "udp", "--start", "41000", "--count", "4", "--label", "probe",
        ],
    ));
    let line = held.next_line();
    assert!(
        line.contains("acquired udp 41000-41003"),
        "unexpected output: {line:?}"
    );
    assert!(line.contains("runtime"), "{line:?}");
    let list = list_json(&d.socket);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["protocol"], "udp");
    assert_eq!(port_of(&list[0], "start"), 41000);
    assert_eq!(list[0]["label"], "probe");
    assert!(kernel_has(41000, 4), "{}", kernel_reserved());
    kill(held.pid(), rustix::process::Signal::TERM);
    let (status, err) = held.wait();
    assert_eq!(status.code(), Some(0), "after SIGTERM: {status}\n{err}");
    wait_until("release after SIGTERM", || list_json(&d.socket).is_empty());
    assert!(
        portres_tests::eventually(|| kernel_has_none(41000, 4)),
        "{}",
        kernel_reserved()
    );

    // JSON output, SIGINT; stdin stays open all along.
    let mut held = Running::spawn(cmd(
        &d.socket,
        &[
            "--json", "acquire", "tcp", "--start", "41000", "--count", "2",
        ],
    ));
    let v: Value = serde_json::from_str(&held.next_line()).expect("JSON");
    assert_eq!(port_of(&v, "start"), 41000, "{v}");
    assert_eq!(field_u64(&v, "count"), 2, "{v}");
    assert!(kernel_has(41000, 2), "{}", kernel_reserved());
    kill(held.pid(), rustix::process::Signal::INT);
    let (status, err) = held.wait();
    assert_eq!(status.code(), Some(0), "after SIGINT: {status}\n{err}");
    wait_until("release after SIGINT", || list_json(&d.socket).is_empty());
    assert!(
        portres_tests::eventually(|| kernel_has_none(41000, 2)),
        "{}",
        kernel_reserved()
    );
});

nstest!(acquire_refusals_exit_1_without_holding, |_| {
    let d = InProcessDaemon::start(|_| {});
    let s = &d.socket;
    // Usage errors: found before connecting, exit 2.
    for bad in [
        &["acquire", "tcp", "--count", "0"][..],
        &["acquire", "tcp", "--count", "-1"],
        &["acquire", "tcp", "--count", "70000"],
        &["acquire", "tcp", "--start", "-5"],
        &["acquire", "tcp", "--start", "65535", "--count", "2"],
        &["acquire", "tcp", "--start", "70000"],
    ] {
        usage_refused(s, bad, "invalid_parameter");
    }
    clap_refused(s, &["acquire", "sctp", "--hold"], "sctp");
    let c = Client::connect_to(s).expect("connect");
    let _res = c.acquire(Protocol::Tcp, 42000, 5).expect("acquire");
    refused(
        s,
        &[
            "acquire", "tcp", "--start", "42004", "--count", "3", "--hold",
        ],
        "sharing_violation",
    );
    assert_eq!(list_json(s).len(), 1, "a refused acquire left something");
});

// ---------------------------------------------------------------------------
// exec
// ---------------------------------------------------------------------------

nstest!(
    exec_hands_the_reservation_to_the_command_and_passes_its_status,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        let script = r#"echo "$PORTRES_PROTOCOL $PORTRES_START $PORTRES_COUNT $PORTRES_TOKEN"
echo "socket=$PORTRES_SOCKET"
if [ -n "$PORTRES_SESSION_FD" ] && [ -e "/proc/$$/fd/$PORTRES_SESSION_FD" ]; then
  echo "fd=$PORTRES_SESSION_FD open"
else
  echo "fd=$PORTRES_SESSION_FD closed"
fi
echo "reserved=$(cat /proc/sys/net/ipv4/ip_local_reserved_ports)"
exit 7"#;
        let ran = portres(
            &d.socket,
            &["exec", "tcp", "--count", "3", "--", "sh", "-c", script],
        );
        ran.expect(7);
        let lines: Vec<&str> = ran.stdout.lines().collect();
        assert_eq!(lines.len(), 4, "{ran}");
        let f: Vec<&str> = lines[0].split(' ').collect();
        assert_eq!(f.len(), 4, "{ran}");
        assert_eq!(f[0], "tcp", "{ran}");
        let start: u16 = f[1]
            .parse()
            .unwrap_or_else(|_| panic!("PORTRES_START: {ran}"));
        assert_ne!(start, 0, "{ran}");
        assert_eq!(f[2], "3", "{ran}");
        let token: u64 = f[3]
            .parse()
            .unwrap_or_else(|_| panic!("PORTRES_TOKEN: {ran}"));
        assert_ne!(token, 0, "{ran}");
        assert_eq!(lines[1], format!("socket={}", d.socket.display()), "{ran}");
        let fd = lines[2]
            .strip_prefix("fd=")
            .and_then(|s| s.strip_suffix(" open"))
            .unwrap_or_else(|| panic!("PORTRES_SESSION_FD is not an open descriptor: {ran}"));
        fd.parse::<u32>()
            .unwrap_or_else(|_| panic!("PORTRES_SESSION_FD not a number: {ran}"));
        let reserved: PortSet = lines[3]
            .strip_prefix("reserved=")
            .expect("reserved=")
            .parse()
            .expect("kernel port set");
        assert!(
            (start..=start + 2).all(|p| reserved.contains(p)),
            "the block was not in the kernel while the command ran: {ran}"
        );
        // Released once the command is done.
        assert!(list_json(&d.socket).is_empty());
        assert!(
            portres_tests::eventually(|| kernel_has_none(start, 3)),
            "{}",
            kernel_reserved()
        );

        // A given start, UDP, status 0.
        let ran = portres(
            &d.socket,
            &[
                "exec",
                "udp",
                "--start",
                "42000",
                "--count",
                "2",
                "--",
                "sh",
                "-c",
                "echo \"$PORTRES_PROTOCOL $PORTRES_START $PORTRES_COUNT\"",
            ],
        );
        ran.expect(0);
        assert_eq!(ran.stdout, "udp 42000 2\n", "{ran}");
        assert!(list_json(&d.socket).is_empty());
        assert!(
            portres_tests::eventually(|| kernel_has_none(42000, 2)),
            "{}",
            kernel_reserved()
        );
    }
);

nstest!(exec_child_releases_with_the_inherited_capability, |_| {
    let d = InProcessDaemon::start(|_| {});
    let script = r#"echo "$PORTRES_TOKEN"
"$PR" --json release "$PORTRES_TOKEN" || exit 20
"$PR" --json list"#;
    let mut c = cmd(
        &d.socket,
        &["exec", "tcp", "--count", "2", "--", "sh", "-c", script],
    );
    c.env("PR", bin("portres"));
    let ran = run_t(c);
    ran.expect(0);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{ran}");
    let released: Value = serde_json::from_str(lines[1]).expect("JSON");
    assert_eq!(released["result"], "released", "{ran}");
    assert_eq!(released["token"], lines[0], "{ran}");
    assert_eq!(released["protocol"], "tcp", "{ran}");
    assert_eq!(released["count"], 2, "{ran}");
    // Released while the exec still ran.
    assert_eq!(lines[2], "[]", "{ran}");
    assert!(list_json(&d.socket).is_empty());
});

nstest!(exec_release_needs_the_capability, |_| {
    let d = InProcessDaemon::start(|_| {});
    let script = r#"env -u PORTRES_SESSION_FD "$PR" release "$PORTRES_TOKEN"
echo "denied-rc=$?"
env -u PORTRES_SESSION_FD "$TK" bind "$PORTRES_TOKEN" tcp 127.0.0.1
echo "testkit-rc=$?"
"$PR" release "$PORTRES_TOKEN"
echo "own-rc=$?"
echo "token=$PORTRES_TOKEN""#;
    let mut c = cmd(
        &d.socket,
        &["exec", "tcp", "--count", "2", "--", "sh", "-c", script],
    );
    c.env("PR", bin("portres")).env("TK", testkit());
    let ran = run_t(c);
    ran.expect(0);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{ran}");
    assert_eq!(lines[0], "denied-rc=1", "{ran}");
    assert_eq!(lines[1], "testkit-rc=1", "{ran}");
    assert_eq!(
        ran.stderr.matches("access_denied").count(),
        2,
        "both need access_denied on stderr: {ran}"
    );
    let token = lines[4].strip_prefix("token=").expect("token line");
    assert!(
        lines[2].starts_with("released") && lines[2].contains(token),
        "{ran}"
    );
    assert_eq!(lines[3], "own-rc=0", "{ran}");
    assert!(list_json(&d.socket).is_empty());
});

/// Parses "START COUNT" then one port per line; checks every port is inside.
fn ports_inside(ran: &Ran, expected_ports: usize) -> Vec<u16> {
    let mut lines = ran.stdout.lines();
    let head: Vec<u16> = lines
        .next()
        .unwrap_or_else(|| panic!("no output: {ran}"))
        .split(' ')
        .map(|x| x.parse().expect("number"))
        .collect();
    let (start, count) = (head[0], head[1]);
    let ports: Vec<u16> = lines
        .map(|l| l.trim().parse().unwrap_or_else(|_| panic!("{l:?}: {ran}")))
        .collect();
    assert_eq!(ports.len(), expected_ports, "{ran}");
    for &p in &ports {
        assert!(
            p >= start && u32::from(p) < u32::from(start) + u32::from(count),
            "port {p} outside {start}+{count}: {ran}"
        );
    }
    ports
}

nstest!(exec_testkit_binds_inside_the_block, |_| {
    let d = InProcessDaemon::start(|_| {});
    for (proto, addr) in [("tcp", "127.0.0.1"), ("udp", "::1")] {
        let script = format!(
            r#"echo "$PORTRES_START $PORTRES_COUNT"
"$TK" bind "$PORTRES_TOKEN" {proto} {addr}"#
        );
        let mut c = cmd(
            &d.socket,
            &["exec", proto, "--count", "4", "--", "sh", "-c", &script],
        );
        c.env("TK", testkit());
        let ran = run_t(c);
        ran.expect(0);
        ports_inside(&ran, 1);
    }
    assert!(list_json(&d.socket).is_empty());
});

nstest!(exec_two_parallel_workers_bind_with_the_capability, |_| {
    let d = InProcessDaemon::start(|_| {});
    let script = r#"echo "$PORTRES_START $PORTRES_COUNT"
"$TK" bind "$PORTRES_TOKEN" tcp 127.0.0.1 & a=$!
"$TK" bind "$PORTRES_TOKEN" tcp 127.0.0.1 & b=$!
wait $a || exit 11
wait $b || exit 12"#;
    let mut c = cmd(
        &d.socket,
        &["exec", "tcp", "--count", "4", "--", "sh", "-c", script],
    );
    c.env("TK", testkit());
    let ran = run_t(c);
    ran.expect(0);
    ports_inside(&ran, 2);
    assert!(list_json(&d.socket).is_empty());
});

nstest!(exec_forwards_sigterm_and_releases, |_| {
    let d = InProcessDaemon::start(|_| {});
    let mut running = Running::spawn(cmd(
        &d.socket,
        &[
            "exec",
            "tcp",
            "--start",
            "43000",
            "--count",
            "2",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 30",
        ],
    ));
    assert_eq!(running.next_line(), "ready");
    assert_eq!(list_json(&d.socket).len(), 1);
    assert!(kernel_has(43000, 2), "{}", kernel_reserved());
    kill(running.pid(), rustix::process::Signal::TERM);
    let (status, err) = running.wait();
    // The command died of SIGTERM: 128 + 15, the shell convention.
    assert_eq!(status.code(), Some(143), "{status}\n{err}");
    assert!(list_json(&d.socket).is_empty());
    assert!(
        portres_tests::eventually(|| kernel_has_none(43000, 2)),
        "{}",
        kernel_reserved()
    );
});

nstest!(exec_usage_errors_missing_commands_and_refusals, |_test| {
    let d = InProcessDaemon::start(|_| {});
    let s = &d.socket;
    // No command: usage error.
    for args in [&["exec", "tcp", "--"][..], &["exec", "tcp"]] {
        let ran = portres(s, args);
        ran.expect(2);
        assert!(ran.stdout.is_empty(), "{ran}");
    }
    // A command that does not exist: 127, and nothing stays reserved.
    let ran = portres(
        s,
        &[
            "exec",
            "tcp",
            "--count",
            "2",
            "--",
            "/nonexistent/portres-test-cmd",
        ],
    );
    ran.expect(127);
    assert!(list_json(s).is_empty());
    // Refused by the daemon: exit 1 and the command does not run.
    usage_refused(
        s,
        &["exec", "tcp", "--count", "0", "--", "sh", "-c", "echo ran"],
        "invalid_parameter",
    );
    clap_refused(s, &["exec", "sctp", "--", "sh", "-c", "echo ran"], "sctp");
    assert!(list_json(s).is_empty());
});

// ---------------------------------------------------------------------------
// release
// ---------------------------------------------------------------------------

nstest!(release_refusals, |_| {
    let d = InProcessDaemon::start(|_| {});
    let s = &d.socket;
    let c = Client::connect_to(s).expect("connect");
    let res = c.acquire(Protocol::Tcp, 44000, 2).expect("acquire");
    let token = res.token().to_string();
    // Another session's reservation.
    refused(s, &["release", &token], "access_denied");
    // Not a token.
    usage_refused(s, &["release", "abc"], "invalid_parameter");
    usage_refused(s, &["release", "0"], "invalid_parameter");
    // Unknown token.
    let guess = (res.token().get() ^ 1).to_string();
    refused(s, &["release", &guess], "not_found");
    // Still held by its session.
    assert_eq!(c.list(None).expect("list").len(), 1);
    assert!(kernel_has(44000, 2), "{}", kernel_reserved());
    res.release().expect("release");
    refused(s, &["release", &token], "not_found");
});

// ---------------------------------------------------------------------------
// create, lookup, delete
// ---------------------------------------------------------------------------

nstest!(create_lookup_delete, |_| {
    let d = InProcessDaemon::start(|_| {});
    let s = &d.socket;
    let created = ok_json(s, &["create", "tcp", "5000", "2", "--label", "web"]);
    assert_eq!(created["protocol"], "tcp", "{created}");
    assert_eq!(port_of(&created, "start"), 5000, "{created}");
    assert_eq!(field_u64(&created, "count"), 2, "{created}");
    assert_eq!(created["kind"], "persistent", "{created}");
    assert_eq!(created["label"], "web", "{created}");
    assert!(created.get("owner").is_none(), "{created}");
    let token = token_of(&created);
    assert!(kernel_has(5000, 2), "{}", kernel_reserved());

    let found = ok_json(s, &["lookup", "tcp", "5000", "2"]);
    assert_eq!(token_of(&found), token, "{found}");
    assert_eq!(found["kind"], "persistent", "{found}");
    assert_eq!(found["label"], "web", "{found}");
    let human = ok(s, &["lookup", "tcp", "5000", "2"]);
    assert!(
        human.contains("tcp 5000-5001") && human.contains(&token.to_string()),
        "{human:?}"
    );
    // Exactly that block, that protocol.
    refused(s, &["lookup", "tcp", "5000", "1"], "not_found");
    refused(s, &["lookup", "udp", "5000", "2"], "not_found");

    // Human create.
    let human = ok(s, &["create", "udp", "6000", "1"]);
    assert!(
        human.contains("udp 6000") && human.contains("persistent") && human.contains("token"),
        "{human:?}"
    );
    assert_eq!(list_json(s).len(), 2);

    // Delete (JSON and human), then it is gone.
    let deleted = ok_json(s, &["delete", "tcp", "5000", "2"]);
    assert!(deleted.is_object(), "{deleted}");
    refused(s, &["lookup", "tcp", "5000", "2"], "not_found");
    refused(s, &["delete", "tcp", "5000", "2"], "not_found");
    assert!(
        portres_tests::eventually(|| kernel_has_none(5000, 2)),
        "{}",
        kernel_reserved()
    );
    let human = ok(s, &["delete", "udp", "6000", "1"]);
    assert!(human.contains("deleted"), "{human:?}");
    assert!(list_json(s).is_empty());

    // Lookup and delete are for persistent reservations only.
    let c = Client::connect_to(s).expect("connect");
    let _runtime = c.acquire(Protocol::Tcp, 7000, 1).expect("acquire");
    refused(s, &["lookup", "tcp", "7000", "1"], "not_found");
    refused(s, &["delete", "tcp", "7000", "1"], "not_found");
    assert_eq!(list_json(s).len(), 1);
});

nstest!(create_owner_user_and_group, |_| {
    let d = InProcessDaemon::start(|_| {});
    let s = &d.socket;
    let cases = [
        ("nobody", "5353", "user", 65534),
        ("@nogroup", "5354", "group", 65534),
        ("1234", "5355", "user", 1234),
        ("@4321", "5356", "group", 4321),
    ];
    for (owner, port, kind, id) in cases {
        let v = ok_json(s, &["create", "udp", port, "1", "--owner", owner]);
        assert_eq!(
            v["owner"],
            serde_json::json!({"kind": kind, "id": id}),
            "--owner {owner}: {v}"
        );
        let found = ok_json(s, &["lookup", "udp", port, "1"]);
        assert_eq!(found["owner"], v["owner"], "{found}");
    }
    let human = ok(s, &["list"]);
    assert!(
        human.contains("owner nobody") && human.contains("owner @nogroup"),
        "{human}"
    );
    for owner in ["no-such-user-portres", "@no-such-group-portres"] {
        usage_refused(
            s,
            &["create", "tcp", "5400", "1", "--owner", owner],
            "invalid_parameter",
        );
    }
    assert_eq!(
        list_json(s).len(),
        cases.len(),
        "a refused create left something"
    );
    assert!(
        portres_tests::eventually(|| kernel_has_none(5400, 1)),
        "{}",
        kernel_reserved()
    );
});

nstest!(create_lookup_delete_refuse_bad_blocks, |_| {
    let d = InProcessDaemon::start(|_| {});
    let s = &d.socket;
    let before = kernel_reserved().to_string();
    for [proto, start, count] in [
        ["tcp", "5000", "0"],
        ["tcp", "0", "1"],
        ["tcp", "65535", "2"],
        ["tcp", "-5", "1"],
        ["tcp", "5000", "-1"],
        ["tcp", "70000", "1"],
        ["tcp", "5000", "70000"],
        ["udp", "4294967296", "1"],
    ] {
        for verb in ["create", "lookup", "delete"] {
            usage_refused(s, &[verb, proto, start, count], "invalid_parameter");
        }
    }
    assert!(list_json(s).is_empty(), "a refused create left something");
    assert_eq!(kernel_reserved().to_string(), before);
    // The edges of the port range are fine.
    for [proto, start] in [["tcp", "65535"], ["udp", "1"]] {
        let v = ok_json(s, &["create", proto, start, "1"]);
        assert_eq!(v["start"].to_string(), start, "{v}");
        ok(s, &["lookup", proto, start, "1"]);
        ok(s, &["delete", proto, start, "1"]);
    }
    assert!(list_json(s).is_empty());
});

nstest!(create_overlapping_is_a_sharing_violation, |_| {
    let d = InProcessDaemon::start(|_| {});
    let s = &d.socket;
    ok(s, &["create", "tcp", "6000", "10"]);
    refused(s, &["create", "tcp", "6005", "10"], "sharing_violation");
    refused(s, &["create", "tcp", "5995", "6"], "sharing_violation");
    refused(s, &["create", "tcp", "6000", "10"], "sharing_violation");
    // Adjacent, or the other protocol: fine.
    ok(s, &["create", "tcp", "6010", "1"]);
    ok(s, &["create", "udp", "6005", "10"]);
    // Over a runtime reservation, and over a port a socket holds.
    let c = Client::connect_to(s).expect("connect");
    let _runtime = c.acquire(Protocol::Tcp, 7000, 2).expect("acquire");
    refused(s, &["create", "tcp", "7001", "1"], "sharing_violation");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port().to_string();
    refused(s, &["create", "tcp", &port, "1"], "sharing_violation");
    assert_eq!(list_json(s).len(), 4);
});

// ---------------------------------------------------------------------------
// list
// ---------------------------------------------------------------------------

nstest!(list_human_json_in_use_and_filter, |_test| {
    let d = InProcessDaemon::start(|_| {});
    let s = &d.socket;
    assert_eq!(ok(s, &["list"]).trim(), "no reservations");
    assert_eq!(ok(s, &["list", "--json"]).trim(), "[]");

    let c = Client::connect_to(s).expect("connect");
    let res = c
        .acquire_labeled(Protocol::Tcp, 43000, 5, Some("web tests".into()))
        .expect("acquire");
    let listener = c.bind_tcp(res.token(), V4).expect("bind");
    let port = listener.local_addr().expect("addr").port();
    assert!(res.ports().contains(&port));
    ok(s, &["create", "udp", "5353", "2", "--label", "mdns"]);

    // JSON (flag after the subcommand: it is global).
    let list = list_json(s);
    assert_eq!(list.len(), 2, "{list:?}");
    let tcp = &list[0];
    assert_eq!(tcp["protocol"], "tcp", "{tcp}");
    assert_eq!(port_of(tcp, "start"), 43000, "{tcp}");
    assert_eq!(field_u64(tcp, "count"), 5, "{tcp}");
    assert_eq!(tcp["kind"], "runtime", "{tcp}");
    assert_eq!(tcp["label"], "web tests", "{tcp}");
    assert_eq!(
        field_u64(&tcp["holder"], "pid"),
        u64::from(std::process::id()),
        "{tcp}"
    );
    let in_use: Vec<u64> = tcp["in_use"]
        .as_array()
        .unwrap_or_else(|| panic!("no in_use in {tcp}"))
        .iter()
        .map(|p| p.as_u64().expect("port"))
        .collect();
    assert_eq!(in_use, [u64::from(port)], "{tcp}");
    let udp = &list[1];
    assert_eq!(udp["protocol"], "udp", "{udp}");
    assert_eq!(port_of(udp, "start"), 5353, "{udp}");
    assert_eq!(udp["kind"], "persistent", "{udp}");
    assert_eq!(udp["label"], "mdns", "{udp}");

    // Protocol filter.
    for (proto, start) in [("tcp", 43000), ("udp", 5353)] {
        let only = ok_json(s, &["list", proto]);
        let only = only.as_array().expect("array");
        assert_eq!(only.len(), 1, "list {proto}: {only:?}");
        assert_eq!(only[0]["protocol"], proto);
        assert_eq!(port_of(&only[0], "start"), start);
    }
    clap_refused(s, &["list", "sctp"], "sctp");

    // Human table.
    let table = ok(s, &["list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    for col in ["PROTO", "PORTS", "KIND", "IN USE", "LABEL"] {
        assert!(lines[0].contains(col), "header lacks {col}: {table}");
    }
    // Root sees the persistent token: too wide for 80 columns with it, so
    // TOKEN shows with --wide.
    let wide = ok(s, &["list", "--wide"]);
    assert!(
        wide.lines().next().is_some_and(|h| h.contains("TOKEN")),
        "{wide}"
    );
    let row = lines
        .iter()
        .find(|l| l.contains("43000-43004"))
        .unwrap_or_else(|| panic!("no tcp row: {table}"));
    assert!(
        row.starts_with("tcp")
            && row.contains("runtime")
            && row.contains(&port.to_string())
            && row.contains("web tests"),
        "{row}"
    );
    let row = lines
        .iter()
        .find(|l| l.contains("5353-5354"))
        .unwrap_or_else(|| panic!("no udp row: {table}"));
    assert!(
        row.starts_with("udp") && row.contains("persistent") && row.contains("mdns"),
        "{row}"
    );
    let table = ok(s, &["list", "udp"]);
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(!table.contains("43000"), "{table}");

    // in_use is live. (Polled: a process forked by a parallel test holds a
    // copy of every descriptor until it execs, so the socket may outlive the
    // drop by a moment.)
    drop(listener);
    let gone = portres_tests::eventually(|| {
        list_json(s)[0]["in_use"]
            .as_array()
            .is_none_or(|a| a.is_empty())
    });
    assert!(gone, "closed socket still listed: {:?}", list_json(s));
});

// ---------------------------------------------------------------------------
// status
// ---------------------------------------------------------------------------

nstest!(status_human_and_json, |_| {
    // The real daemon binary this time.
    let dir = open_tempdir();
    let d = ProcessDaemon::start(dir.path(), &["--quota", "123"]);
    let s = &d.socket;
    ok(s, &["create", "tcp", "5000", "1"]);

    let v = ok_json(s, &["status"]);
    for key in [
        "version",
        "wire_version",
        "mode",
        "kernel_sync",
        "quota",
        "you_are_admin",
    ] {
        assert!(v.get(key).is_some(), "status lacks {key}: {v}");
    }
    assert!(v["version"].as_str().is_some_and(|x| !x.is_empty()), "{v}");
    assert_eq!(v["wire_version"], 1, "{v}");
    assert_eq!(v["mode"], "system", "{v}");
    assert_eq!(v["kernel_sync"], true, "{v}");
    assert_eq!(v["quota"], 123, "{v}");
    assert_eq!(v["you_are_admin"], true, "{v}");
    assert_eq!(v["persistent"], 1, "{v}");

    let human = ok(s, &["status"]);
    assert!(human.contains("wire v1"), "{human}");
    assert!(human.contains("system"), "{human}");
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("kernel sync") && l.trim_end().ends_with("on")),
        "{human}"
    );
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("quota") && l.contains("123")),
        "{human}"
    );
    assert!(human.contains("administrator"), "{human}");

    // Without --socket: PORTRES_SOCKET; --socket wins over it.
    let mut c = Command::new(bin("portres"));
    c.args(["--json", "status"])
        .env("PORTRES_SOCKET", s)
        .env_remove("PORTRES_SESSION_FD")
        .stdin(Stdio::null());
    let ran = run_t(c);
    ran.expect(0);
    assert_eq!(one_json_line(&ran)["quota"], 123, "{ran}");
    let mut c = cmd(s, &["--json", "status"]);
    c.env("PORTRES_SOCKET", dir.path().join("missing.sock"));
    let ran = run_t(c);
    ran.expect(0);
    assert_eq!(one_json_line(&ran)["quota"], 123, "{ran}");
});

// ---------------------------------------------------------------------------
// help, version, usage and connection errors (no daemon needed)
// ---------------------------------------------------------------------------

fn no_daemon(args: &[&str]) -> Ran {
    let mut c = Command::new(bin("portres"));
    c.args(args)
        .env_remove("PORTRES_SOCKET")
        .env_remove("PORTRES_SESSION_FD")
        .stdin(Stdio::null());
    run_t(c)
}

#[test]
fn help_and_version() {
    let top = no_daemon(&["--help"]);
    top.expect(0);
    for word in [
        "acquire",
        "exec",
        "release",
        "create",
        "delete",
        "lookup",
        "list",
        "status",
        "--socket",
        "--json",
        "--version",
    ] {
        assert!(top.stdout.contains(word), "--help lacks {word}: {top}");
    }
    let subcommands: [(&str, &[&str]); 8] = [
        ("acquire", &["<PROTOCOL>", "--start", "--count", "--label"]),
        (
            "exec",
            &[
                "<PROTOCOL>",
                "--start",
                "--count",
                "<CMD>",
                "PORTRES_SESSION_FD",
            ],
        ),
        ("release", &["<TOKEN>"]),
        (
            "create",
            &["<PROTOCOL>", "<START>", "[COUNT]", "--owner", "--label"],
        ),
        ("delete", &["<PROTOCOL>", "<START>", "[COUNT]"]),
        ("lookup", &["<PROTOCOL>", "<START>", "[COUNT]"]),
        ("list", &["[PROTOCOL]"]),
        ("status", &["--json"]),
    ];
    for (sub, words) in subcommands {
        for form in [vec![sub, "--help"], vec!["help", sub]] {
            let ran = no_daemon(&form);
            ran.expect(0);
            for word in words.iter().chain(&["--socket", "--json"]) {
                assert!(ran.stdout.contains(word), "{form:?} lacks {word}: {ran}");
            }
        }
    }
    let ran = no_daemon(&["--version"]);
    ran.expect(0);
    assert_eq!(
        ran.stdout.trim(),
        format!("portres {}", env!("CARGO_PKG_VERSION")),
        "{ran}"
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["acquire"],
        &["acquire", "tcp", "--count", "abc"],
        &["acquire", "tcp", "--bogus-flag"],
        &["release"],
        &["create", "tcp"],
        &["delete", "tcp"],
        &["lookup"],
        &["list", "tcp", "udp"],
        &["status", "extra"],
    ] {
        let ran = no_daemon(args);
        ran.expect(2);
        assert!(ran.stdout.is_empty(), "{ran}");
        assert!(!ran.stderr.is_empty(), "no explanation: {ran}");
    }
}

#[test]
fn unreachable_daemon_exits_2_with_daemon_unavailable() {
    let dir = open_tempdir();
    let missing = dir.path().join("missing.sock");
    // A stale socket file nobody listens on.
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    for socket in [&missing, &stale] {
        for args in [
            &["status"][..],
            &["list"],
            &["acquire", "tcp", "--hold"],
            &["exec", "tcp", "--", "sh", "-c", "echo ran"],
            &["release", "123"],
            &["create", "tcp", "5000", "1"],
            &["delete", "tcp", "5000", "1"],
            &["lookup", "tcp", "5000", "1"],
        ] {
            let ran = portres(socket, args);
            ran.expect(2);
            assert!(ran.stderr.contains("daemon_unavailable"), "{ran}");
            assert!(!ran.stdout.contains("ran"), "the command ran: {ran}");
            let mut json = vec!["--json"];
            json.extend_from_slice(args);
            let ran = portres(socket, &json);
            ran.expect(2);
            assert_eq!(
                one_json_line(&ran)["error"]["code"],
                "daemon_unavailable",
                "{ran}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// An ordinary user
// ---------------------------------------------------------------------------

nstest!(
    non_admin_is_refused_admin_commands_and_sees_no_foreign_tokens,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        let s = &d.socket;
        let as_nobody = |args: &[&str]| nobody(s, args);
        // Root's: a persistent reservation, one owned by nobody, a runtime one.
        let admin_only = token_of(&ok_json(s, &["create", "tcp", "5000", "1"]));
        let owned = token_of(&ok_json(
            s,
            &["create", "tcp", "5001", "1", "--owner", "nobody"],
        ));
        let c = Client::connect_to(s).expect("connect");
        let runtime = c.acquire(Protocol::Tcp, 44000, 2).expect("acquire");
        let runtime_token = runtime.token().to_string();

        refused_by(&as_nobody, &["create", "tcp", "5002", "1"], "access_denied");
        refused_by(&as_nobody, &["delete", "tcp", "5000", "1"], "access_denied");
        refused_by(&as_nobody, &["lookup", "tcp", "5000", "1"], "access_denied");
        refused_by(&as_nobody, &["release", &runtime_token], "access_denied");
        assert_eq!(list_json(s).len(), 3, "a refused command changed something");
        assert!(
            portres_tests::eventually(|| kernel_has_none(5002, 1)),
            "{}",
            kernel_reserved()
        );

        // The owner may look up its own.
        let ran = run_t(as_nobody(&["--json", "lookup", "tcp", "5001", "1"]));
        ran.expect(0);
        assert_eq!(token_of(&one_json_line(&ran)), owned, "{ran}");

        // list works; tokens only where nobody may use them.
        let ran = run_t(as_nobody(&["--json", "list"]));
        ran.expect(0);
        let list = one_json_line(&ran);
        let list = list.as_array().unwrap_or_else(|| panic!("{ran}"));
        assert_eq!(list.len(), 3, "{ran}");
        for r in list {
            if port_of(r, "start") == 5001 {
                assert_eq!(token_of(r), owned, "{r}");
            } else {
                assert!(r.get("token").is_none(), "nobody sees a root token: {r}");
            }
        }
        let ran = run_t(as_nobody(&["list"]));
        ran.expect(0);
        assert!(ran.stdout.contains("PROTO"), "{ran}");
        for secret in [admin_only.to_string(), runtime_token.clone()] {
            assert!(!ran.stdout.contains(&secret), "token shown: {ran}");
        }

        let ran = run_t(as_nobody(&["--json", "status"]));
        ran.expect(0);
        let status = one_json_line(&ran);
        assert_eq!(status["you_are_admin"], false, "{status}");
        assert_eq!(status["your_uid"], NOBODY, "{status}");

        // Runtime reservations are for everyone.
        let ran = run_t(as_nobody(&[
            "exec",
            "tcp",
            "--count",
            "2",
            "--",
            "sh",
            "-c",
            "echo \"$PORTRES_START\"",
        ]));
        ran.expect(0);
        let start: u16 = ran
            .stdout
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{ran}"));
        assert_ne!(start, 0);
        assert_eq!(list_json(s).len(), 3, "exec left its reservation behind");
        drop(runtime);
    }
);

// ---------------------------------------------------------------------------
// A CLI that survives scripts (issue 12, section 4)
// ---------------------------------------------------------------------------

/// `portres --socket SOCKET ARGS…` with the given standard input.
fn with_stdin(socket: &Path, args: &[&str], stdin: Stdio) -> Command {
    let mut c = cmd(socket, args);
    c.stdin(stdin);
    c
}

nstest!(
    acquire_refuses_an_input_that_ends_at_once_and_says_what_to_use,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        let s = &d.socket;
        let file = open_tempdir();
        let regular = file.path().join("input");
        std::fs::write(&regular, "some input\n").expect("write");
        let closed_pipe = || {
            let (reader, writer) = std::io::pipe().expect("pipe");
            drop(writer);
            Stdio::from(reader)
        };
        let inputs: [(&str, &dyn Fn() -> Stdio); 3] = [
            ("/dev/null (a script's `&`)", &Stdio::null),
            ("a pipe whose writer has gone", &closed_pipe),
            ("a regular file", &|| {
                Stdio::from(std::fs::File::open(&regular).expect("open"))
            }),
        ];
        for (what, stdin) in inputs {
            for json in [false, true] {
                let mut args = if json { vec!["--json"] } else { vec![] };
                args.extend(["acquire", "tcp", "-c", "2"]);
                let ran = run_t(with_stdin(s, &args, stdin()));
                ran.expect(2);
                assert!(ran.stderr.contains("invalid_parameter"), "{what}: {ran}");
                for hint in ["--hold", "--pid", "--timeout", "portres exec"] {
                    assert!(ran.stderr.contains(hint), "{what}: no {hint} hint: {ran}");
                }
                if json {
                    assert_eq!(one_json_line(&ran)["error"]["code"], "invalid_parameter");
                } else {
                    assert!(ran.stdout.is_empty(), "{what}: {ran}");
                }
            }
        }
        // Nothing was ever acquired.
        assert!(list_json(s).is_empty());
        // The help points scripts to exec and the holding modes.
        let help = ok(s, &["acquire", "--help"]);
        for word in ["portres exec", "--hold", "--pid", "--timeout", "/dev/null"] {
            assert!(help.contains(word), "acquire --help lacks {word}: {help}");
        }
    }
);

nstest!(acquire_hold_ignores_input_and_holds_until_a_signal, |_| {
    let d = InProcessDaemon::start(|_| {});
    for sig in [rustix::process::Signal::TERM, rustix::process::Signal::INT] {
        // stdin /dev/null, as for `portres acquire tcp --hold &` in a script.
        let mut c = cmd(
            &d.socket,
            &["--json", "acquire", "tcp", "-s", "45000", "--hold"],
        );
        c.stdin(Stdio::null());
        let mut held = Running::spawn(c);
        held.close_stdin();
        let v: Value = serde_json::from_str(&held.next_line()).expect("JSON");
        assert_eq!(v["result"], "acquired", "{v}");
        assert_eq!(port_of(&v, "start"), 45000, "{v}");
        assert_eq!(list_json(&d.socket).len(), 1);
        assert!(kernel_has(45000, 1), "{}", kernel_reserved());
        assert!(held.is_running(), "--hold ended with its input");
        kill(held.pid(), sig);
        let (status, err) = held.wait();
        assert_eq!(status.code(), Some(0), "{status}: {err}");
        wait_until("release", || list_json(&d.socket).is_empty());
    }
    // --hold is its own mode.
    let ran = portres(&d.socket, &["acquire", "tcp", "--hold", "--timeout", "5s"]);
    ran.expect(2);
    assert!(ran.stderr.contains("cannot be used with"), "{ran}");
});

nstest!(acquire_pid_holds_until_that_process_exits, |_| {
    let d = InProcessDaemon::start(|_| {});
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("sleep");
    let pid = sleeper.id().to_string();
    let mut c = cmd(&d.socket, &["acquire", "udp", "-c", "3", "--pid", &pid]);
    c.stdin(Stdio::null());
    let mut held = Running::spawn(c);
    held.close_stdin();
    let line = held.next_line();
    assert!(
        line.starts_with("acquired udp") && line.contains("(3 ports)"),
        "{line}"
    );
    assert_eq!(list_json(&d.socket).len(), 1);
    assert!(held.is_running(), "--pid ended before its process");
    sleeper.kill().expect("kill sleep");
    sleeper.wait().expect("wait sleep");
    let (status, err) = held.wait();
    assert_eq!(status.code(), Some(0), "{status}: {err}");
    assert!(err.contains(&format!("process {pid} exits")), "{err}");
    wait_until("release", || list_json(&d.socket).is_empty());

    // A process that is gone already: a usage error, nothing acquired.
    let mut done = Command::new("true").spawn().expect("true");
    done.wait().expect("wait");
    let gone = done.id().to_string();
    usage_refused(
        &d.socket,
        &["acquire", "tcp", "--pid", &gone],
        "invalid_parameter",
    );
    usage_refused(
        &d.socket,
        &["acquire", "tcp", "--pid", "-3"],
        "invalid_parameter",
    );
    assert!(list_json(&d.socket).is_empty());
});

nstest!(acquire_timeout_releases_by_itself, |_| {
    let d = InProcessDaemon::start(|_| {});
    for timeout in ["300ms", "1"] {
        let ran = portres(
            &d.socket,
            &["--json", "acquire", "tcp", "--timeout", timeout],
        );
        ran.expect(0);
        assert_eq!(one_json_line(&ran)["result"], "acquired", "{ran}");
        assert!(
            list_json(&d.socket).is_empty(),
            "held after --timeout {timeout}"
        );
    }
    // --pid and --timeout together: whichever comes first (the timeout).
    let mut sleeper = Command::new("sleep").arg("30").spawn().expect("sleep");
    let pid = sleeper.id().to_string();
    let ran = portres(
        &d.socket,
        &["acquire", "tcp", "--pid", &pid, "--timeout", "200ms"],
    );
    ran.expect(0);
    assert!(ran.stderr.contains("at most 200ms"), "{ran}");
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    for bad in ["0", "abc", "5 parsecs", "-1s"] {
        usage_refused(
            &d.socket,
            &["acquire", "tcp", "--timeout", bad],
            "invalid_parameter",
        );
    }
    assert!(list_json(&d.socket).is_empty());
});

nstest!(acquire_and_exec_notice_the_daemon_stopping, |_| {
    let dir = open_tempdir();
    // acquire, in each holding mode: exits 2 at once.
    for mode in [&["--hold"][..], &[], &["--timeout", "1h"]] {
        let d = ProcessDaemon::start(dir.path(), &[]);
        let mut args = vec!["acquire", "tcp", "-c", "2"];
        args.extend_from_slice(mode);
        let mut held = Running::spawn(cmd(&d.socket, &args));
        assert!(held.next_line().starts_with("acquired tcp"));
        d.terminate();
        let (status, err) = held.wait();
        assert_eq!(status.code(), Some(2), "acquire {mode:?}: {status}: {err}");
        assert!(
            err.contains("daemon stopped: reservation ended"),
            "acquire {mode:?}: {err}"
        );
    }

    // exec: warns and lets the command run on.
    let d = ProcessDaemon::start(dir.path(), &[]);
    let log = dir.path().join("exec.err");
    let script = r#"echo ready
until grep -q "daemon stopped" "$ERR"; do sleep 0.02; done
echo ran-on; exit 5"#;
    let mut c = cmd(&d.socket, &["exec", "tcp", "--", "sh", "-c", script]);
    c.env("ERR", &log);
    let mut running =
        Running::spawn_with_stderr(c, Some(std::fs::File::create(&log).expect("log")));
    assert_eq!(running.next_line(), "ready");
    d.terminate();
    assert_eq!(running.next_line(), "ran-on");
    let (status, _) = running.wait();
    assert_eq!(status.code(), Some(5), "the command's status: {status}");
    let err = std::fs::read_to_string(&log).expect("read log");
    assert!(
        err.contains("warning: daemon stopped: reservation ended")
            && err.contains("--strict-daemon"),
        "{err}"
    );

    // exec --strict-daemon: ends the command, exits 2.
    let d = ProcessDaemon::start(dir.path(), &[]);
    let mut running = Running::spawn(cmd(
        &d.socket,
        &[
            "exec",
            "tcp",
            "--strict-daemon",
            "--",
            "sh",
            "-c",
            "echo ready; exec sleep 30",
        ],
    ));
    assert_eq!(running.next_line(), "ready");
    d.terminate();
    let (status, err) = running.wait();
    assert_eq!(status.code(), Some(2), "{status}: {err}");
    assert!(err.contains("daemon stopped: reservation ended"), "{err}");
});

nstest!(short_flags_ranges_and_a_default_count, |_| {
    let d = InProcessDaemon::start(|_| {});
    let s = &d.socket;
    let env = "echo \"$PORTRES_START $PORTRES_COUNT\"";
    for (args, want) in [
        (&["exec", "tcp", "-s", "45000", "-c", "2"][..], "45000 2"),
        (&["exec", "tcp", "--start", "45010-45012"], "45010 3"),
        (&["exec", "udp", "-s", "45020-45021", "-c", "2"], "45020 2"),
        (&["exec", "udp", "-c", "4"], ""),
    ] {
        let mut all = args.to_vec();
        all.extend(["--", "sh", "-c", env]);
        let ran = portres(s, &all);
        ran.expect(0);
        if !want.is_empty() {
            assert_eq!(ran.stdout.trim(), want, "{ran}");
        } else {
            assert!(ran.stdout.trim().ends_with(" 4"), "{ran}");
        }
    }
    let v = ok_json(
        s,
        &["acquire", "tcp", "-s", "45030-45034", "--timeout", "1ms"],
    );
    assert_eq!(
        (port_of(&v, "start"), field_u64(&v, "count")),
        (45030, 5),
        "{v}"
    );

    // create/lookup/delete: COUNT defaults to 1; START-END is the block.
    let one = ok_json(s, &["create", "tcp", "8080"]);
    assert_eq!(field_u64(&one, "count"), 1, "{one}");
    let ten = ok_json(s, &["create", "tcp", "9000-9009"]);
    assert_eq!(
        (port_of(&ten, "start"), field_u64(&ten, "count")),
        (9000, 10),
        "{ten}"
    );
    assert_eq!(
        token_of(&ok_json(s, &["lookup", "tcp", "9000-9009"])),
        token_of(&ten)
    );
    assert_eq!(
        token_of(&ok_json(s, &["lookup", "tcp", "9000", "10"])),
        token_of(&ten)
    );
    assert_eq!(
        token_of(&ok_json(s, &["lookup", "tcp", "8080"])),
        token_of(&one)
    );
    ok(s, &["delete", "tcp", "9000-9009"]);
    ok(s, &["delete", "tcp", "8080"]);
    assert!(list_json(s).is_empty());
});

#[test]
fn usage_errors_are_found_before_connecting() {
    // No daemon at all: a usage error must be reported as one (exit 2,
    // invalid_parameter), not as daemon_unavailable.
    let dir = open_tempdir();
    let missing = dir.path().join("missing.sock");
    for args in [
        &["create", "tcp", "9010-9000"][..],  // reversed
        &["create", "tcp", "65530-65536"],    // past 65535
        &["create", "tcp", "65535", "2"],     // overflowing
        &["create", "tcp", "0-5"],            // port 0
        &["create", "tcp", "9000-9009", "5"], // the range and count disagree
        &["create", "tcp", "70000"],
        &["create", "tcp", "5000", "0"],
        &["create", "tcp", "5000", "--owner", "no-such-user-portres"],
        &["delete", "udp", "x"],
        &["lookup", "udp", "5000", "-1"],
        &["acquire", "tcp", "-c", "0", "--hold"],
        &["acquire", "tcp", "-s", "65535", "-c", "2", "--hold"],
        &["acquire", "tcp", "-s", "5-1", "--hold"],
        &["exec", "tcp", "-c", "70000", "--", "true"],
        &["release", "not-a-token"],
        &["list", "--port", "70000"],
        &["list", "--port", "0"],
    ] {
        usage_refused(&missing, args, "invalid_parameter");
    }
    let ran = portres(&missing, &["create", "tcp", "9010-9000"]);
    assert!(ran.stderr.contains("reversed"), "{ran}");
    // clap's own: a protocol or kind outside the listed values.
    for args in [
        &["acquire", "sctp", "--hold"][..],
        &["list", "--kind", "forever"],
    ] {
        clap_refused(&missing, args, "possible values");
    }
}

nstest!(
    output_wording_and_json_shape_are_the_same_for_every_command,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        let s = &d.socket;
        // Human: "(1 port)" / "(3 ports)" in every line about a block.
        let lines = [
            ok(s, &["acquire", "tcp", "-s", "46000", "--timeout", "1ms"]),
            ok(s, &["create", "tcp", "5000"]),
            ok(s, &["lookup", "tcp", "5000"]),
            ok(s, &["delete", "tcp", "5000"]),
            ok(s, &["create", "udp", "5000", "3"]),
            ok(s, &["lookup", "udp", "5000-5002"]),
            ok(s, &["delete", "udp", "5000-5002"]),
        ];
        for (line, want) in lines.iter().zip([
            "acquired tcp 46000 (1 port), runtime",
            "created tcp 5000 (1 port), persistent",
            "found tcp 5000 (1 port), persistent",
            "deleted tcp 5000 (1 port), persistent",
            "created udp 5000-5002 (3 ports), persistent",
            "found udp 5000-5002 (3 ports), persistent",
            "deleted udp 5000-5002 (3 ports), persistent",
        ]) {
            assert!(line.starts_with(want), "{line:?} is not {want:?}…");
            assert!(!line.contains("port(s)"), "{line}");
        }
        let mut c = cmd(
            s,
            &[
                "exec",
                "tcp",
                "-c",
                "3",
                "--",
                "sh",
                "-c",
                "\"$PR\" release \"$PORTRES_TOKEN\"",
            ],
        );
        c.env("PR", bin("portres"));
        let ran = run_t(c);
        ran.expect(0);
        assert!(
            ran.stdout.starts_with("released tcp")
                && ran.stdout.contains("(3 ports), runtime, token"),
            "{ran}"
        );

        // JSON: every single-reservation command prints one reservation object
        // with "result".
        let mut c = cmd(
            s,
            &[
                "exec",
                "udp",
                "-c",
                "2",
                "--",
                "sh",
                "-c",
                "\"$PR\" --json release \"$PORTRES_TOKEN\"",
            ],
        );
        c.env("PR", bin("portres"));
        let ran = run_t(c);
        ran.expect(0);
        let objects = [
            (
                "acquired",
                ok_json(s, &["acquire", "tcp", "--timeout", "1ms"]),
            ),
            (
                "created",
                ok_json(s, &["create", "tcp", "5000-5001", "--label", "x"]),
            ),
            ("found", ok_json(s, &["lookup", "tcp", "5000-5001"])),
            ("deleted", ok_json(s, &["delete", "tcp", "5000-5001"])),
            ("released", one_json_line(&ran)),
        ];
        for (result, v) in &objects {
            assert_eq!(v["result"], *result, "{v}");
            assert!(v["protocol"].is_string(), "{v}");
            port_of(v, "start");
            assert!(field_u64(v, "count") >= 1, "{v}");
            assert!(v["kind"].is_string(), "{v}");
        }
        assert_eq!(objects[4].1["count"], 2);
        assert_eq!(objects[4].1["kind"], "runtime");
        // list: an array of the same objects (without "result").
        ok(s, &["create", "tcp", "5000"]);
        let list = list_json(s);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["protocol"], "tcp");
        assert!(list[0].get("result").is_none(), "{:?}", list[0]);
    }
);

nstest!(list_filters_by_kind_owner_and_port, |_| {
    let d = InProcessDaemon::start(|_| {});
    let s = &d.socket;
    ok(s, &["create", "tcp", "5000"]);
    ok(s, &["create", "tcp", "5001-5003", "--owner", "nobody"]);
    ok(s, &["create", "udp", "5010", "--owner", "@nogroup"]);
    let c = Client::connect_to(s).expect("connect");
    let _mine = c.acquire(Protocol::Tcp, 44000, 2).expect("acquire");
    let mut theirs = Running::spawn(nobody(s, &["acquire", "tcp", "-s", "44100", "--hold"]));
    assert!(theirs.next_line().starts_with("acquired tcp 44100"));
    let starts = |args: &[&str], who: Option<u32>| -> Vec<u64> {
        let mut all = vec!["--json", "list"];
        all.extend_from_slice(args);
        let ran = match who {
            None => portres(s, &all),
            Some(uid) => run_t(as_user(&cmd(s, &all), uid, uid, &[])),
        };
        ran.expect(0);
        let v = one_json_line(&ran);
        let mut starts: Vec<u64> = v
            .as_array()
            .unwrap_or_else(|| panic!("{ran}"))
            .iter()
            .map(|r| field_u64(r, "start"))
            .collect();
        starts.sort_unstable();
        starts
    };
    assert_eq!(starts(&[], None), [5000, 5001, 5010, 44000, 44100]);
    assert_eq!(starts(&["--kind", "runtime"], None), [44000, 44100]);
    assert_eq!(starts(&["--kind", "persistent"], None), [5000, 5001, 5010]);
    assert_eq!(starts(&["--kind", "persistent", "udp"], None), [5010]);
    assert_eq!(starts(&["--port", "5002"], None), [5001]);
    assert_eq!(starts(&["--port", "44001"], None), [44000]);
    assert!(starts(&["--port", "44002"], None).is_empty());
    assert_eq!(starts(&["--mine"], None), [44000]);
    assert_eq!(starts(&["--mine"], Some(NOBODY)), [5001, 5010, 44100]);
    assert_eq!(
        starts(&["--mine", "--kind", "runtime"], Some(NOBODY)),
        [44100]
    );
    // Human, filtered to nothing.
    assert_eq!(ok(s, &["list", "--port", "6000"]).trim(), "no reservations");
});

nstest!(list_fits_80_columns_unless_wide, |_| {
    let d = InProcessDaemon::start(|_| {});
    let s = &d.socket;
    let long = "a label long enough to push the table well past eighty columns";
    ok(s, &["create", "tcp", "5000", "--label", "web"]);
    ok(
        s,
        &[
            "create",
            "tcp",
            "60000-60100",
            "--owner",
            "nobody",
            "--label",
            long,
        ],
    );
    let c = Client::connect_to(s).expect("connect");
    let res = c.acquire(Protocol::Tcp, 44000, 10).expect("acquire");
    let _bound: Vec<_> = (0..6).map(|_| res.bind_tcp(V4).expect("bind")).collect();

    let ran = portres(s, &["list"]);
    ran.expect(0);
    for line in ran.stdout.lines() {
        assert!(
            line.chars().count() <= 80,
            "{} columns: {line:?}\n{ran}",
            line.chars().count()
        );
    }
    assert!(ran.stdout.contains('…'), "nothing elided: {ran}");
    assert!(ran.stdout.contains("web"), "{ran}");
    assert!(ran.stdout.contains("owner nobody"), "{ran}");
    assert!(ran.stdout.contains("44000-44009"), "{ran}");
    // Root sees the tokens: either in the table or told where they went.
    let token = c
        .lookup(Protocol::Tcp, 5000, 1)
        .expect("lookup")
        .token
        .expect("token");
    assert!(
        ran.stdout.contains(&token.to_string()) || ran.stderr.contains("TOKEN column is left out"),
        "{ran}"
    );
    // --wide: everything, uncut.
    let wide = ok(s, &["list", "--wide"]);
    assert!(wide.contains(long), "{wide}");
    assert!(wide.contains(&token.to_string()), "{wide}");
    assert!(!wide.contains('…'), "{wide}");
    // A narrow table is left alone.
    drop(_bound);
    drop(res);
    ok(s, &["delete", "tcp", "60000-60100"]);
    let narrow = ok(s, &["list"]);
    assert!(
        narrow.contains(&token.to_string()) && !narrow.contains('…'),
        "{narrow}"
    );
});

nstest!(
    acquire_and_exec_say_not_kernel_reserved_without_kernel_sync,
    |_| {
        for sync in [false, true] {
            let d = InProcessDaemon::start(|c| {
                c.kernel_sync = if sync {
                    portres_daemon::KernelSync::On
                } else {
                    portres_daemon::KernelSync::Off
                }
            });
            let s = &d.socket;
            let human = ok(s, &["acquire", "tcp", "--timeout", "1ms"]);
            assert_eq!(human.contains("(not kernel-reserved)"), !sync, "{human}");
            let v = ok_json(s, &["acquire", "tcp", "--timeout", "1ms"]);
            assert_eq!(v["kernel_reserved"], sync, "{v}");
            let ran = portres(s, &["exec", "tcp", "-c", "2", "--", "true"]);
            ran.expect(0);
            assert_eq!(ran.stderr.contains("(not kernel-reserved)"), !sync, "{ran}");
            assert!(
                ran.stdout.is_empty(),
                "exec's stdout is the command's: {ran}"
            );
            let human = ok(s, &["create", "tcp", "5000"]);
            assert_eq!(human.contains("(not kernel-reserved)"), !sync, "{human}");
        }
    }
);
