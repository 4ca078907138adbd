//! portresd under a service manager, with systemd's protocols played by
//! the test: sd_notify messages caught on a fake `NOTIFY_SOCKET` (a path
//! and an abstract address), socket activation with a listener passed at
//! descriptor 3 (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`; a
//! `LISTEN_PID` of another process is ignored; a passed socket that does
//! not listen is refused), journald's log format when `JOURNAL_STREAM`
//! names stderr, and the fallback to user paths as uid 0 of a user
//! namespace of one's own (`unshare -rn`). `systemd-analyze verify` of the
//! installed units is in `install`.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portres::{Client, CreateOptions, Protocol};
use portres_tests::{ProcessDaemon, append, as_user, daemon_command, eventually, open_tempdir};

/// A fake service manager's notification socket.
struct NotifySocket {
    socket: UnixDatagram,
    /// Every message received so far, in order.
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(addr: &SocketAddr) -> NotifySocket {
        let socket = UnixDatagram::bind_addr(addr).expect("bind the notify socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        NotifySocket {
            socket,
            seen: Vec::new(),
        }
    }

    /// Waits (up to 30 s) for a message with the line `line`; returns it.
    #[track_caller]
    fn wait_for(&mut self, line: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = vec![0u8; 4096];
        loop {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(msg.clone());
                if msg.lines().any(|l| l == line) {
                    return msg;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {line:?} from portresd; got {:?}",
                self.seen
            );
        }
    }
}

/// The `STATUS=` value of a notification.
fn status_of(msg: &str) -> &str {
    msg.lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap_or_else(|| panic!("no STATUS= in {msg:?}"))
}

nstest!(
    sd_notify_says_ready_once_the_socket_accepts_then_status_and_stopping,
    |_| {
        let dir = open_tempdir();
        let notify_path = dir.path().join("notify");
        let mut notify =
            NotifySocket::bind(&SocketAddr::from_pathname(&notify_path).expect("addr"));
        let mut cmd = daemon_command(dir.path(), &[]);
        cmd.env("NOTIFY_SOCKET", &notify_path);
        let child = cmd.spawn().expect("spawn portresd");
        let daemon = ProcessDaemon::adopt(child, dir.path());

        let ready = notify.wait_for("READY=1");
        // Ready means serving: the first connection is answered, at once.
        let status = daemon
            .client()
            .status()
            .expect("status right after READY=1");
        assert!(status.kernel_sync, "{status:?}");
        assert_eq!(
            status_of(&ready),
            "0 persistent and 0 runtime reservation(s); kernel sync on",
            "{ready:?}"
        );

        // A change shows in STATUS= (refreshed every 10 s, not per request).
        let admin = daemon.client();
        admin
            .create(Protocol::Tcp, 7100, 2, CreateOptions::default())
            .expect("create");
        let refreshed =
            notify.wait_for("STATUS=1 persistent and 0 runtime reservation(s); kernel sync on");
        assert!(!refreshed.contains("READY=1"), "{refreshed:?}");
        drop(admin);

        let log = daemon.terminate();
        let stopping = notify.wait_for("STOPPING=1");
        assert_eq!(status_of(&stopping), "stopping");
        assert_eq!(
            notify
                .seen
                .iter()
                .filter(|m| m.lines().any(|l| l == "READY=1"))
                .count(),
            1,
            "{:?}\n{log}",
            notify.seen
        );
    }
);

nstest!(sd_notify_reaches_an_abstract_notify_socket, |test| {
    let dir = open_tempdir();
    let name = format!("portres-test-{test}-{}", std::process::id());
    let mut notify = NotifySocket::bind(
        &SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract addr"),
    );
    let mut cmd = daemon_command(dir.path(), &[]);
    cmd.env("NOTIFY_SOCKET", format!("@{name}"));
    let child = cmd.spawn().expect("spawn portresd");
    let daemon = ProcessDaemon::adopt(child, dir.path());
    notify.wait_for("READY=1");
    daemon.client().status().expect("status");
    daemon.terminate();
    notify.wait_for("STOPPING=1");
});

nstest!(a_reload_is_announced_with_reloading_then_ready, |_| {
    let dir = open_tempdir();
    let notify_path = dir.path().join("notify");
    let mut notify = NotifySocket::bind(&SocketAddr::from_pathname(&notify_path).expect("addr"));
    let conf = dir.path().join("portres.d");
    std::fs::create_dir_all(&conf).unwrap();
    let mut cmd = daemon_command(dir.path(), &[]);
    cmd.env("NOTIFY_SOCKET", &notify_path);
    let child = cmd.spawn().expect("spawn portresd");
    let daemon = ProcessDaemon::adopt(child, dir.path());
    notify.wait_for("READY=1");

    // SIGHUP: RELOADING=1 (with MONOTONIC_USEC, as systemd 253+ wants),
    // then READY=1 whose STATUS= counts the declared reservation.
    std::fs::write(conf.join("50-web.conf"), "tcp 7200-7201 label=web\n").unwrap();
    let pid = rustix::process::Pid::from_raw(daemon.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    let reloading = notify.wait_for("RELOADING=1");
    assert!(
        reloading.lines().any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{reloading:?}"
    );
    let ready = notify.wait_for("READY=1");
    assert_eq!(
        status_of(&ready),
        "1 persistent and 0 runtime reservation(s); kernel sync on",
        "{ready:?}"
    );

    // `portres reload` announces itself the same way; a bad line shows in
    // the summary.
    std::fs::write(conf.join("60-bad.conf"), "tcp nonsense\n").unwrap();
    daemon.client().reload().expect("reload");
    notify.wait_for("RELOADING=1");
    let ready = notify.wait_for("READY=1");
    assert!(
        status_of(&ready).ends_with("; 1 portres.d problem(s), see portres status"),
        "{ready:?}"
    );
    daemon.terminate();
});

nstest!(without_notify_socket_portresd_starts_as_before, |_| {
    let dir = open_tempdir();
    let mut cmd = daemon_command(dir.path(), &[]);
    cmd.env_remove("NOTIFY_SOCKET");
    let daemon = ProcessDaemon::spawn(cmd, dir.path());
    daemon.client().status().expect("status");
    let log = daemon.terminate();
    assert!(log.contains("portresd stopped"), "{log}");
});

/// `portresd` in `dir` (see `daemon_command`, with `extra` flags) started
/// as a service manager would with one passed socket: `passed` at
/// descriptor 3, `LISTEN_FDS=1`, `LISTEN_FDNAMES` = `name` (unset if
/// `None`), and `LISTEN_PID` its own pid (`$$` of the shell that execs it)
/// or `listen_pid`.
fn activated(
    dir: &Path,
    passed: &impl std::os::fd::AsFd,
    name: Option<&str>,
    listen_pid: Option<&str>,
    extra: &[&str],
) -> ProcessDaemon {
    let inner = daemon_command(dir, extra);
    let pid = listen_pid.unwrap_or("$$");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!(
            "exec 3<&0 </dev/null; LISTEN_PID={pid} LISTEN_FDS=1 exec \"$0\" \"$@\""
        ))
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    match name {
        Some(n) => cmd.env("LISTEN_FDNAMES", n),
        None => cmd.env_remove("LISTEN_FDNAMES"),
    };
    let fd = passed.as_fd().try_clone_to_owned().expect("dup");
    cmd.stdin(Stdio::from(fd))
        .stdout(Stdio::null())
        .stderr(append(&dir.join("portresd.log")));
    ProcessDaemon::adopt(cmd.spawn().expect("spawn portresd"), dir)
}

/// Waits until a client gets an answer on `socket` (not merely a queued
/// connection), or panics with the daemon's log.
#[track_caller]
fn wait_answered(daemon: &mut ProcessDaemon, socket: &Path) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(c) = Client::connect_to(socket)
            && c.status().is_ok()
        {
            return c;
        }
        if let Ok(Some(st)) = daemon.child.try_wait() {
            panic!("portresd exited ({st}); log:\n{}", daemon.log_tail(40));
        }
        assert!(
            Instant::now() < deadline,
            "portresd never answered on {}; log:\n{}",
            socket.display(),
            daemon.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

nstest!(
    socket_activation_serves_the_passed_socket_and_never_unlinks_it,
    |_| {
        let dir = open_tempdir();
        let passed_path = dir.path().join("passed.sock");
        let listener = UnixListener::bind(&passed_path).expect("bind");
        for name in [Some("varlink"), None] {
            let mut daemon = activated(dir.path(), &listener, name, None, &[]);
            let client = wait_answered(&mut daemon, &passed_path);
            let st = client.status().expect("status");
            assert!(st.kernel_sync, "{st:?}");
            drop(client);
            // Its own --socket was never bound.
            assert!(!dir.path().join("portres.sock").exists());
            let log = daemon.terminate();
            assert!(
                log.contains(&format!(
                    "listening on {} (passed by the service manager)",
                    passed_path.display()
                )),
                "{log}"
            );
            // The socket is the service manager's: still there, still
            // queueing connections for the next start.
            assert!(passed_path.exists(), "the passed socket was removed\n{log}");
            UnixStream::connect(&passed_path).expect("the passed socket still listens");
        }
    }
);

nstest!(socket_activation_ignores_sockets_for_another_pid, |_| {
    let dir = open_tempdir();
    let passed_path = dir.path().join("passed.sock");
    let listener = UnixListener::bind(&passed_path).expect("bind");
    let mut daemon = activated(dir.path(), &listener, Some("varlink"), Some("1"), &[]);
    // It binds its own socket instead.
    daemon.wait_ready(Duration::from_secs(20));
    daemon.client().status().expect("status on its own socket");
    let log = daemon.terminate();
    assert!(
        log.contains("is not for this process (LISTEN_PID=1"),
        "{log}"
    );
    assert!(!log.contains("passed by the service manager"), "{log}");
    // Nobody served the passed socket: the connection made to it waits.
    listener.set_nonblocking(true).unwrap();
    assert!(
        listener.accept().is_err(),
        "the daemon took a connection off the passed socket"
    );
    assert!(!dir.path().join("portres.sock").exists(), "{log}");
});

nstest!(
    socket_activation_refuses_a_passed_socket_that_does_not_listen,
    |_| {
        let dir = open_tempdir();
        let (a, _b) = UnixStream::pair().expect("pair");
        let mut daemon = activated(dir.path(), &a, Some("varlink"), None, &[]);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = daemon.child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "portresd kept running");
            std::thread::sleep(Duration::from_millis(5));
        };
        assert_eq!(status.code(), Some(1));
        let log = daemon.log_tail(10);
        assert!(
        log.contains("the socket passed by the service manager as \"varlink\" (descriptor 3) is not listening"),
        "{log}"
    );
        assert!(!dir.path().join("portres.sock").exists(), "{log}");
    }
);

/// The log of a daemon started and stopped with `JOURNAL_STREAM` naming
/// its log file (`matching`) or another file.
fn log_with_journal_stream(matching: bool) -> String {
    let dir = open_tempdir();
    let mut cmd = daemon_command(dir.path(), &[]);
    let log = dir.path().join("portresd.log");
    let other = dir.path().join("other");
    std::fs::write(&other, "").unwrap();
    let meta = std::fs::metadata(if matching { &log } else { &other }).unwrap();
    cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    let daemon = ProcessDaemon::spawn(cmd, dir.path());
    daemon.terminate()
}

nstest!(
    journal_stream_on_stderr_gives_syslog_priorities_and_no_timestamps,
    |_| {
        let log = log_with_journal_stream(true);
        assert!(!log.is_empty());
        for line in log.lines() {
            let (prio, text) = line
                .strip_prefix('<')
                .and_then(|l| l.split_once('>'))
                .unwrap_or_else(|| panic!("not a <N> line: {line:?}\n{log}"));
            assert!(
                ["3", "4", "6", "7"].contains(&prio),
                "priority {prio}: {line:?}"
            );
            assert!(!text.starts_with('['), "a timestamp in {line:?}");
        }
        assert!(log.lines().any(|l| l == "<6>portresd stopped"), "{log}");

        // JOURNAL_STREAM of another stream (stderr redirected): as before.
        let log = log_with_journal_stream(false);
        assert!(
            log.lines().all(|l| l.starts_with("[20")),
            "not the usual format:\n{log}"
        );
    }
);

named_test!(root_of_a_user_namespace_falls_back_to_user_paths, |test| {
    if rustix::process::geteuid().as_raw() != 0 {
        portres_tests::skip(test, "needs root to run as uid 65534 (setpriv)");
        return;
    }
    let dir = open_tempdir();
    let home = dir.path().join("nobody");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(65534), Some(65534)).unwrap();
    let portresd = portres_tests::bin("portresd");
    let portres = portres_tests::bin("portres");
    // As uid 65534, in a user namespace and network namespace of its own
    // where it is uid 0: portresd with no paths given, and a client that
    // finds it by the defaults.
    let script = r#"
        set -e
        ip link set lo up 2>/dev/null || true
        "$1" 2>"$HOME/portresd.log" &
        pid=$!
        i=0
        until "$2" status >"$HOME/status" 2>&1; do
            i=$((i + 1))
            if [ $i -gt 2000 ] || ! kill -0 $pid 2>/dev/null; then
                cat "$HOME/status" "$HOME/portresd.log"; exit 1
            fi
            sleep 0.01
        done
        cat "$HOME/status"
        kill $pid
        wait $pid
    "#;
    let mut inner = Command::new("unshare");
    inner
        .args(["-rn", "sh", "-c", script, "sh"])
        .arg(&portresd)
        .arg(&portres)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", home.join("run"))
        .env("XDG_STATE_HOME", home.join("state"));
    std::fs::create_dir(home.join("run")).unwrap();
    std::os::unix::fs::chown(home.join("run"), Some(65534), Some(65534)).unwrap();
    let ran = portres_tests::Ran::of(as_user(&inner, 65534, 65534, &[]));
    if !ran.out.status.success() && ran.stderr.contains("unshare failed") {
        portres_tests::skip(
            test,
            format_args!("unprivileged user namespaces are not allowed here: {ran}"),
        );
        return;
    }
    let ran = ran.success();
    let socket = home.join("run/portres/portres.sock");
    assert!(ran.stdout.contains("user mode"), "{ran}");
    assert!(
        ran.stdout.contains(&format!(
            "socket:          {} (your own daemon)",
            socket.display()
        )),
        "{ran}"
    );
    assert!(
        ran.stdout.contains(&format!(
            "store:           {}",
            home.join("state/portres/portres.db").display()
        )),
        "{ran}"
    );
    // The network namespace is its own, so it keeps the kernel's list.
    assert!(ran.stdout.contains("kernel sync:     on"), "{ran}");
    assert!(eventually(|| !socket.exists()), "socket left behind");
});

nstest!(
    socket_activation_without_a_client_socket_binds_its_own,
    |_| {
        let dir = open_tempdir();
        let passed_path = dir.path().join("other.sock");
        let listener = UnixListener::bind(&passed_path).expect("bind");
        let mut daemon = activated(dir.path(), &listener, Some("something-else"), None, &[]);
        daemon.wait_ready(Duration::from_secs(20));
        daemon.client().status().expect("status on its own socket");
        let log = daemon.terminate();
        assert!(
            log.contains("passed socket(s) named [\"something-else\"] but none named \"varlink\""),
            "{log}"
        );
        assert!(
            log.contains("named [\"something-else\"] that portresd does not serve; closed"),
            "{log}"
        );
        assert!(passed_path.exists());
    }
);

nstest!(
    socket_activation_serves_a_passed_portserver_socket_and_never_unlinks_it,
    |_| {
        let dir = open_tempdir();
        let passed_path = dir.path().join("portserver.sock");
        let passed = UnixListener::bind(&passed_path).expect("bind the portserver socket");
        let mut daemon = activated(dir.path(), &passed, Some("portserver"), None, &[]);
        // No socket named varlink was passed: portresd binds its own.
        let own = dir.path().join("portres.sock");
        let client = wait_answered(&mut daemon, &own);
        // portpicker's request on the passed socket: a port for this process.
        let mut s = UnixStream::connect(&passed_path).expect("connect to the passed socket");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        std::io::Write::write_all(&mut s, format!("{}\n", std::process::id()).as_bytes()).unwrap();
        let mut reply = String::new();
        std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
        let port: u16 = reply
            .trim_end()
            .parse()
            .unwrap_or_else(|_| panic!("no port in {reply:?}; log:\n{}", daemon.log_tail(20)));
        let listed = client.list(None).expect("list");
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            assert!(
                listed.iter().any(|r| r.protocol == protocol
                    && r.start == port
                    && r.label.as_deref() == Some("portserver")),
                "{protocol} {port} not listed: {listed:?}"
            );
        }
        drop(client);
        daemon.terminate();
        assert!(
            passed_path.exists(),
            "the passed portserver socket was unlinked"
        );
    }
);
