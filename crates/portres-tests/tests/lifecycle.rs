//! `portresd` as a real process: clean stop, crash (SIGKILL) and restart,
//! and clients that die — checked against the real kernel in a private
//! network namespace.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portres::{CreateOptions, Protocol};
use portres_tests::{ProcessDaemon, kernel_reserved, open_tempdir, set_kernel_reserved, testkit};

nstest!(
    crash_recovery_drops_stale_runtime_blocks_and_keeps_baseline_and_persistent,
    |_| {
        set_kernel_reserved("999");
        let dir = open_tempdir();
        let d = ProcessDaemon::start(dir.path(), &[]);
        let c = d.client();
        c.create(Protocol::Tcp, 3000, 2, CreateOptions::default())
            .unwrap();
        let runtime = c.acquire(Protocol::Udp, 44000, 10).unwrap();
        assert_eq!(kernel_reserved().to_string(), "999,3000-3001,44000-44009");
        let _ = runtime.keep();
        d.kill9();
        // The crashed daemon could not clean up: the runtime block is stale.
        assert_eq!(kernel_reserved().to_string(), "999,3000-3001,44000-44009");
        let d = ProcessDaemon::start(dir.path(), &[]);
        assert_eq!(kernel_reserved().to_string(), "999,3000-3001");
        let c = d.client();
        let list = c.list(None).unwrap();
        assert_eq!(list.len(), 1);
        // Baseline is the value before portres *first* started, not the stale one.
        assert_eq!(c.status().unwrap().baseline, "999");
        let err = d.terminate();
        assert!(err.contains("stopped"), "clean stop logs: {err}");
        assert_eq!(kernel_reserved().to_string(), "999,3000-3001");
        assert!(
            !dir.path().join("portres.sock").exists(),
            "socket file removed at stop"
        );
    }
);

nstest!(
    persistent_reservations_survive_a_crash_with_a_new_token,
    |_| {
        let dir = open_tempdir();
        let d = ProcessDaemon::start(dir.path(), &[]);
        let created = d
            .client()
            .create(
                Protocol::Tcp,
                8443,
                1,
                CreateOptions {
                    owner: None,
                    label: Some("tls".into()),
                },
            )
            .unwrap();
        // Acknowledged means durable: a SIGKILL right after must not lose it.
        d.kill9();
        let d = ProcessDaemon::start(dir.path(), &[]);
        let found = d.client().lookup(Protocol::Tcp, 8443, 1).unwrap();
        assert_eq!(found.label.as_deref(), Some("tls"));
        assert!(found.token.is_some());
        // Tokens are random per start (as on Windows, a persistent token may
        // change across restarts); a clash would be a 1-in-2^64 event.
        assert_ne!(found.token, created.token);
    }
);

nstest!(a_killed_client_loses_its_reservations_promptly, |_| {
    let dir = open_tempdir();
    let d = ProcessDaemon::start(dir.path(), &[]);
    let mut holder = Command::new(testkit())
        .args(["hold", "tcp", "45000", "20"])
        .env("PORTRES_SOCKET", &d.socket)
        .env_remove("PORTRES_SESSION_FD")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("45000"), "holder printed {line:?}");
    assert!(kernel_reserved().contains(45000));
    let observer = d.client();
    assert_eq!(observer.list(None).unwrap().len(), 1);
    holder.kill().unwrap();
    let killed = Instant::now();
    holder.wait().unwrap();
    while kernel_reserved().contains(45000) || !observer.list(None).unwrap().is_empty() {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "reservation outlived its dead client"
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    eprintln!(
        "client death -> released (list and sysctl) in {:?}",
        killed.elapsed()
    );
    assert!(killed.elapsed() < Duration::from_secs(1));
});

nstest!(second_daemon_on_the_same_socket_refuses_to_start, |_| {
    let dir = open_tempdir();
    let _d = ProcessDaemon::start(dir.path(), &[]);
    let out = Command::new(portres_tests::bin("portresd"))
        .arg("--socket")
        .arg(dir.path().join("portres.sock"))
        .arg("--state-dir")
        .arg(dir.path().join("state2"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already listening"), "{err}");
});

nstest!(
    kernel_sync_on_without_permission_refuses_to_start_and_auto_falls_back,
    |_| {
        let dir = open_tempdir();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        rustix::fs::chown(
            &state,
            Some(rustix::fs::Uid::from_raw(65534)),
            Some(rustix::fs::Gid::from_raw(65534)),
        )
        .unwrap();
        let daemon = |sync: &str| {
            let mut cmd = Command::new(portres_tests::bin("portresd"));
            cmd.arg("--socket")
                .arg(state.join(format!("{sync}.sock")))
                .arg("--state-dir")
                .arg(&state)
                .arg("--kernel-sync")
                .arg(sync);
            portres_tests::as_user(&cmd, 65534, 65534, &[])
        };
        let out = daemon("on").output().unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("not writable"));
        // auto: starts (user mode), logs that kernel sync is off. Stop it at once.
        let child = daemon("auto").stderr(Stdio::piped()).spawn().unwrap();
        let sock = state.join("auto.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(Instant::now() < deadline, "user-mode daemon did not start");
            std::thread::sleep(Duration::from_millis(5));
        }
        let status = portres::Client::connect_to(&sock)
            .unwrap()
            .status()
            .unwrap();
        assert!(!status.kernel_sync);
        assert_eq!(status.mode, "user");
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("kernel sync off"), "{err}");
    }
);

nstest!(
    /// `portresd` with no flags as an ordinary user on a "fresh machine": user
    /// mode, default paths (a service account without XDG dirs or a real HOME
    /// falls back to /tmp/portres-$UID), and the CLI finds it without flags.
    user_mode_defaults_work_without_any_flags,
    |_| {
        let _ = std::fs::remove_dir_all("/tmp/portres-65534");
        let mut daemon = Command::new(portres_tests::bin("portresd"));
        daemon
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/nonexistent");
        let mut child = portres_tests::as_user(&daemon, 65534, 65534, &[])
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let sock = std::path::Path::new("/tmp/portres-65534/portres.sock");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::os::unix::net::UnixStream::connect(sock).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                let out = child.wait_with_output().unwrap();
                panic!(
                    "portresd exited ({status}): {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            assert!(
                Instant::now() < deadline,
                "user-mode portresd did not start"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut status = Command::new(portres_tests::bin("portres"));
        status
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", "/nonexistent")
            .args(["--json", "status"]);
        let (out, stdout, stderr) =
            portres_tests::run(portres_tests::as_user(&status, 65534, 65534, &[]));
        assert!(out.status.success(), "{stderr}");
        assert!(stdout.contains("\"mode\":\"user\""), "{stdout}");
        assert!(
            stdout.contains("/tmp/portres-65534/state/portres.db"),
            "{stdout}"
        );
        assert!(
            stdout.contains("\"you_are_admin\":true"),
            "the user owns its daemon: {stdout}"
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata("/tmp/portres-65534")
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(child.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert!(!sock.exists());
        let _ = std::fs::remove_dir_all("/tmp/portres-65534");
    }
);

nstest!(
    /// A user-mode socket directory that someone else controls is refused.
    user_mode_refuses_a_socket_directory_owned_by_someone_else,
    |_test| {
        let dir = open_tempdir(); // root-owned, 0755
        let mut daemon = Command::new(portres_tests::bin("portresd"));
        daemon
            .arg("--socket")
            .arg(dir.path().join("sub-owned-by-root/portres.sock"));
        std::fs::create_dir(dir.path().join("sub-owned-by-root")).unwrap();
        daemon
            .arg("--state-dir")
            .arg("/tmp/portres-test-nobody-state");
        let (out, _, stderr) = portres_tests::run(portres_tests::as_user(&daemon, 65534, 65534, &[]));
        assert!(!out.status.success());
        assert!(stderr.contains("refusing to put the socket"), "{stderr}");
        let _ = std::fs::remove_dir_all("/tmp/portres-test-nobody-state");
    }
);

nstest!(
    /// System mode with no flags: /run/portres/portres.sock and
    /// /var/lib/portres, checked inside a private mount namespace (tmpfs over
    /// /run and /var/lib) so the machine's own directories are untouched.
    system_mode_defaults_work_without_any_flags,
    |_test| {
        let script = format!(
            r#"set -e
    mount -t tmpfs tmpfs /run
    mkdir -p /var/lib && mount -t tmpfs tmpfs /var/lib
    {portresd} 2>/tmp/portresd-sysmode.log &
    pid=$!
    for i in $(seq 1 2000); do [ -S /run/portres/portres.sock ] && break; sleep 0.005; done
    {portres} --json status
    stat -c '%a %U' /run/portres /run/portres/portres.sock /var/lib/portres /var/lib/portres/portres.db
    kill -TERM $pid; wait $pid
    test ! -e /run/portres/portres.sock && echo socket-removed
    "#,
            portresd = portres_tests::bin("portresd").display(),
            portres = portres_tests::bin("portres").display(),
        );
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .env_remove("PORTRES_SOCKET")
            .env_remove("PORTRES_STATE_DIR")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("\"mode\":\"system\""), "{stdout}");
        assert!(stdout.contains("\"kernel_sync\":true"), "{stdout}");
        assert!(stdout.contains("/var/lib/portres/portres.db"), "{stdout}");
        // Socket reachable by everyone (permissions are judged per request),
        // state private to root.
        assert!(
            stdout.contains("755 root\n666 root\n700 root\n600 root\n"),
            "{stdout}"
        );
        assert!(stdout.contains("socket-removed"), "{stdout}");
    }
);

nstest!(
    worker_flags_one_unpinned_worker_serves_many_clients_and_bad_counts_are_refused,
    |_| {
        for bad in ["0", "1025", "many"] {
            let out = Command::new(portres_tests::bin("portresd"))
                .args(["--workers", bad, "--socket", "/nonexistent/x.sock"])
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(2), "--workers {bad}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("--workers"), "{err}");
        }
        let out = Command::new(portres_tests::bin("portresd"))
            .args(["--pin-workers", "sometimes"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        // One worker, not pinned: every connection shares it, and each still
        // gets its own session and blocks.
        let dir = open_tempdir();
        let d = ProcessDaemon::start(dir.path(), &["--workers", "1", "--pin-workers", "off"]);
        let clients: Vec<_> = (0..6).map(|_| d.client()).collect();
        let held: Vec<_> = clients
            .iter()
            .map(|c| c.acquire(Protocol::Tcp, 0, 2).unwrap())
            .collect();
        let mut starts: Vec<u16> = held.iter().map(|r| r.start()).collect();
        starts.sort_unstable();
        starts.dedup();
        assert_eq!(starts.len(), 6, "six disjoint blocks: {starts:?}");
        let listener = held[3].bind_tcp("127.0.0.1".parse().unwrap()).unwrap();
        assert_eq!(
            listener.local_addr().unwrap().port() - held[3].start(),
            0,
            "bound into its own block"
        );
        let mut held = held;
        let gone = held[0].start();
        held.remove(0).release().unwrap();
        let left = clients[1].list(None).unwrap();
        assert_eq!(left.len(), 5, "{left:?}");
        assert!(left.iter().all(|r| r.start != gone));
        drop(listener);
        drop(held);
        d.terminate();
    }
);

/// Sends `frames` in one write and reads one reply per frame, in order.
fn raw_calls(stream: &mut std::os::unix::net::UnixStream, frames: &[Vec<u8>]) -> Vec<String> {
    use std::io::{Read, Write};
    let all: Vec<u8> = frames.concat();
    stream.write_all(&all).unwrap();
    let mut replies = Vec::new();
    let mut buf = Vec::new();
    while replies.len() < frames.len() {
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "daemon closed the connection");
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.iter().position(|&b| b == 0) {
            replies.push(String::from_utf8(buf[..end].to_vec()).unwrap());
            buf.drain(..=end);
        }
    }
    replies
}

nstest!(
    a_connection_follows_its_clients_cpu_hint_between_workers_without_losing_order,
    |test| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 2 {
            portres_tests::skip(
                test,
                "one CPU, so portresd pins no workers and never moves a connection",
            );
            return;
        }
        let dir = open_tempdir();
        let d = ProcessDaemon::start(dir.path(), &["--workers", "4", "-v"]);
        let mut s = std::os::unix::net::UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let status = |cpu| portres_proto::Request::Status.encode_with_cpu(Some(cpu));
        let acquire = |cpu, start| {
            portres_proto::Request::Acquire(portres_proto::AcquireParams {
                protocol: Protocol::Tcp,
                start,
                count: 1,
                label: Some(format!("at {start}")),
                address: None,
            })
            .encode_with_cpu(Some(cpu))
        };
        // Whatever CPU its first worker is pinned to, one of these two runs of
        // hints names the other one; pipelined, so requests are buffered when
        // the move is considered.
        let mut expected_starts = Vec::new();
        for (round, cpu) in [0u32, 1, 0, 1].into_iter().enumerate() {
            let mut frames: Vec<Vec<u8>> = (0..6).map(|_| status(cpu)).collect();
            let start = 42000 + round as u32;
            frames.push(acquire(cpu, start));
            expected_starts.push(start);
            let replies = raw_calls(&mut s, &frames);
            for r in &replies[..6] {
                assert!(r.contains("\"wire_version\""), "{r}");
            }
            assert!(
                replies[6].contains(&format!("\"start\":{start}")),
                "{}",
                replies[6]
            );
        }
        // A hint naming a CPU with no worker is ignored.
        let replies = raw_calls(&mut s, &vec![status(9999); 8]);
        assert_eq!(replies.len(), 8);
        // The session kept everything it acquired, whichever worker served it.
        let c = d.client();
        let held: Vec<u16> = c.list(None).unwrap().iter().map(|r| r.start).collect();
        let expected: Vec<u16> = expected_starts.iter().map(|&p| p as u16).collect();
        assert_eq!(held, expected);
        drop(s);
        assert!(portres_tests::eventually(|| c
            .list(None)
            .unwrap()
            .is_empty()));
        let log = d.terminate();
        assert!(
            log.contains("follows its client to CPU"),
            "no move logged:\n{log}"
        );
    }
);
