//! `portresd` as a real process: clean stop, crash (SIGKILL) and restart,
//! and clients that die — checked against the real kernel in a private
//! network namespace.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portres::{CreateOptions, Protocol};
use portres_tests::{
    ProcessDaemon, kernel_reserved, netns, open_tempdir, set_kernel_reserved, testkit,
};

#[test]
fn crash_recovery_drops_stale_runtime_blocks_and_keeps_baseline_and_persistent() {
    let Some(_ns) =
        netns("crash_recovery_drops_stale_runtime_blocks_and_keeps_baseline_and_persistent")
    else {
        return;
    };
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

#[test]
fn persistent_reservations_survive_a_crash_with_a_new_token() {
    let Some(_ns) = netns("persistent_reservations_survive_a_crash_with_a_new_token") else {
        return;
    };
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

#[test]
fn a_killed_client_loses_its_reservations_promptly() {
    let Some(_ns) = netns("a_killed_client_loses_its_reservations_promptly") else {
        return;
    };
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
}

#[test]
fn second_daemon_on_the_same_socket_refuses_to_start() {
    let Some(_ns) = netns("second_daemon_on_the_same_socket_refuses_to_start") else {
        return;
    };
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
}

#[test]
fn kernel_sync_on_without_permission_refuses_to_start_and_auto_falls_back() {
    let Some(_ns) = netns("kernel_sync_on_without_permission_refuses_to_start_and_auto_falls_back")
    else {
        return;
    };
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
