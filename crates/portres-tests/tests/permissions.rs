//! Permissions with real uids (setpriv): administrators, other sessions,
//! owner delegation (an unprivileged user getting port 80 bound), and the
//! admin group — all judged from the kernel's peer credentials.

use portres::{CreateOptions, Owner, Protocol};
use portres_tests::{InProcessDaemon, as_user, cli, run, testkit};
use std::process::Command;

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

nstest!(
    non_admin_create_and_delete_are_access_denied_and_change_nothing,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        d.client()
            .create(Protocol::Tcp, 7000, 1, CreateOptions::default())
            .unwrap();
        let mut create = cli(&d.socket);
        create.args(["--json", "create", "tcp", "5000", "1"]);
        let (out, stdout, stderr) = run(as_user(&create, NOBODY, NOGROUP, &[]));
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("access_denied"), "{stderr}");
        assert!(stdout.contains("\"code\":\"access_denied\""), "{stdout}");
        let mut delete = cli(&d.socket);
        delete.args(["delete", "tcp", "7000", "1"]);
        let (out, _, stderr) = run(as_user(&delete, NOBODY, NOGROUP, &[]));
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr.contains("access_denied"), "{stderr}");
        let mut lookup = cli(&d.socket);
        lookup.args(["lookup", "tcp", "7000", "1"]);
        let (out, _, stderr) = run(as_user(&lookup, NOBODY, NOGROUP, &[]));
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr.contains("access_denied"), "{stderr}");
        let list = d.client().list(None).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].start, 7000);
    }
);

nstest!(another_sessions_token_is_access_denied, |_| {
    let d = InProcessDaemon::start(|_| {});
    let c = d.client();
    let res = c.acquire(Protocol::Tcp, 0, 2).unwrap();
    let token = res.token().to_string();
    let mut release = cli(&d.socket);
    release.args(["release", &token]);
    let (out, _, stderr) = run(as_user(&release, NOBODY, NOGROUP, &[]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("access_denied"), "{stderr}");
    let mut bind = Command::new(testkit());
    bind.args(["bind", &token, "tcp", "127.0.0.1"])
        .env("PORTRES_SOCKET", &d.socket)
        .env_remove("PORTRES_SESSION_FD");
    let (out, _, stderr) = run(as_user(&bind, NOBODY, NOGROUP, &[]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("access_denied"), "{stderr}");
    // Still held by its session.
    assert_eq!(c.list(None).unwrap()[0].token, Some(res.token()));
});

nstest!(owner_delegation_lets_nobody_get_port_80_bound, |_| {
    let d = InProcessDaemon::start(|_| {});
    // Without a reservation nobody cannot bind port 80 itself...
    let mut plain = Command::new("python3");
    plain.args([
        "-c",
        "import socket; socket.socket().bind(('127.0.0.1', 80))",
    ]);
    let (out, _, stderr) = run(as_user(&plain, NOBODY, NOGROUP, &[]));
    assert!(
        !out.status.success(),
        "nobody bound port 80 without help: {stderr}"
    );
    // ...nor acquire it at runtime...
    let mut acquire = cli(&d.socket);
    acquire.args(["acquire", "tcp", "--start", "80", "--hold"]);
    let (out, _, stderr) = run(as_user(&acquire, NOBODY, NOGROUP, &[]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("access_denied"), "{stderr}");
    // ...nor use a persistent reservation it does not own.
    d.client()
        .create(Protocol::Tcp, 81, 1, CreateOptions::default())
        .unwrap();
    let mut bind81 = Command::new(testkit());
    bind81
        .args(["bind-persistent", "tcp", "81", "1", "127.0.0.1"])
        .env("PORTRES_SOCKET", &d.socket);
    let (out, _, stderr) = run(as_user(&bind81, NOBODY, NOGROUP, &[]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("access_denied"), "{stderr}");
    // An admin delegates port 80 to nobody; nobody looks it up and gets it bound.
    d.client()
        .create(
            Protocol::Tcp,
            80,
            1,
            CreateOptions {
                owner: Some(Owner::User(NOBODY)),
                label: Some("web".into()),
            },
        )
        .unwrap();
    let mut bind80 = Command::new(testkit());
    bind80
        .args(["bind-persistent", "tcp", "80", "1", "127.0.0.1"])
        .env("PORTRES_SOCKET", &d.socket);
    let (out, stdout, stderr) = run(as_user(&bind80, NOBODY, NOGROUP, &[]));
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "80");
    // Group delegation works the same way for members only.
    d.client()
        .create(
            Protocol::Tcp,
            443,
            1,
            CreateOptions {
                owner: Some(Owner::Group(4242)),
                label: None,
            },
        )
        .unwrap();
    let mut bind443 = Command::new(testkit());
    bind443
        .args(["bind-persistent", "tcp", "443", "1", "::1"])
        .env("PORTRES_SOCKET", &d.socket);
    let (out, _, stderr) = run(as_user(&bind443, NOBODY, NOGROUP, &[]));
    assert_eq!(out.status.code(), Some(1), "non-member: {stderr}");
    let (out, stdout, stderr) = run(as_user(&bind443, NOBODY, NOGROUP, &[4242]));
    assert!(out.status.success(), "member: {stderr}");
    assert_eq!(stdout.trim(), "443");
});

nstest!(
    admin_group_members_may_create_persistent_reservations,
    |_| {
        let d = InProcessDaemon::start(|c| c.admin_gid = Some(4343));
        let mut create = cli(&d.socket);
        create.args([
            "--json", "create", "udp", "6000", "4", "--label", "by group",
        ]);
        let (out, _, _) = run(as_user(&create, NOBODY, NOGROUP, &[]));
        assert_eq!(out.status.code(), Some(1), "not a member yet");
        let (out, stdout, stderr) = run(as_user(&create, NOBODY, NOGROUP, &[4343]));
        assert!(out.status.success(), "{stderr}");
        assert!(stdout.contains("\"kind\":\"persistent\""), "{stdout}");
        // Primary group counts too.
        let mut delete = cli(&d.socket);
        delete.args(["delete", "udp", "6000", "4"]);
        let (out, _, stderr) = run(as_user(&delete, NOBODY, 4343, &[]));
        assert!(out.status.success(), "{stderr}");
    }
);

nstest!(the_runtime_quota_holds_per_user_across_sessions, |_| {
    let d = InProcessDaemon::start(|c| c.quota = 5);
    // Two sessions of nobody: 3 + 2 fit, 1 more does not.
    let hold = |count: &str| {
        let mut cmd = Command::new(testkit());
        cmd.args(["hold", "tcp", "0", count])
            .env("PORTRES_SOCKET", &d.socket);
        let mut c = as_user(&cmd, NOBODY, NOGROUP, &[]);
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        c.spawn().unwrap()
    };
    let read_line = |child: &mut std::process::Child| {
        use std::io::BufRead;
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        line
    };
    let mut a = hold("3");
    assert!(!read_line(&mut a).is_empty());
    let mut b = hold("2");
    assert!(!read_line(&mut b).is_empty());
    let c = hold("1");
    let out = c.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("quota_exceeded"));
    a.kill().unwrap();
    a.wait().unwrap();
    // Once a session ends its ports count no more.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let mut c = hold("3");
        if !read_line(&mut c).is_empty() {
            let _ = c.kill();
            let _ = c.wait();
            break;
        }
        let _ = c.wait();
        assert!(
            std::time::Instant::now() < deadline,
            "quota not returned after session end"
        );
    }
    b.kill().unwrap();
    b.wait().unwrap();
});
