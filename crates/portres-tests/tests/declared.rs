//! Declared reservations (portres.d) against the real daemon and kernel,
//! each test in a private network namespace: sysctl.d's precedence and
//! masking at start, add/change/remove on SIGHUP and `portres reload`, bad
//! lines and conflicts reported (reply, status, log) and retried, the
//! store keeping them across a restart and a SIGKILL, `delete` refused,
//! `list` showing the file, and `import-sysctl` output that reads back.

use std::fs;
use std::path::{Path, PathBuf};

use portres::{Protocol, ReservationInfo};
use portres_tests::{
    ProcessDaemon, Ran, assert_kernel_settles_to, cli, eventually, open_tempdir,
    set_kernel_reserved,
};

/// `dir/NAME` made, for a portres.d directory.
fn conf_dir(dir: &Path, name: &str) -> PathBuf {
    let d = dir.join(name);
    fs::create_dir_all(&d).unwrap();
    d
}

fn write(path: &Path, text: &str) -> String {
    fs::write(path, text).unwrap();
    path.display().to_string()
}

/// (protocol, start, count, source) of every declared reservation.
fn declared(d: &ProcessDaemon) -> Vec<(Protocol, u16, u16, String)> {
    d.client()
        .list(None)
        .unwrap()
        .into_iter()
        .filter_map(|r: ReservationInfo| Some((r.protocol, r.start, r.count, r.source?)))
        .collect()
}

/// `portres ARGS` against `d`, run to its end.
fn portres(d: &ProcessDaemon, args: &[&str]) -> Ran {
    let mut cmd = cli(&d.socket);
    cmd.args(args);
    d.run(cmd)
}

fn sighup(d: &ProcessDaemon) {
    let pid = rustix::process::Pid::from_raw(d.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
}

nstest!(
    declared_files_apply_at_start_with_sysctl_d_precedence_and_masking,
    |_| {
        let dir = open_tempdir();
        let (lib, etc) = (conf_dir(dir.path(), "lib.d"), conf_dir(dir.path(), "etc.d"));
        write(&lib.join("10-vendor.conf"), "tcp 7000\n");
        let admin = write(&etc.join("10-vendor.conf"), "tcp 7001 label=the admin's\n");
        write(&lib.join("20-masked.conf"), "tcp 7002\n");
        std::os::unix::fs::symlink("/dev/null", etc.join("20-masked.conf")).unwrap();
        let vendor = write(&lib.join("30-vendor.conf"), "both 7003-7004\n");
        let (lib_s, etc_s) = (lib.display().to_string(), etc.display().to_string());
        let d = ProcessDaemon::start(
            dir.path(),
            &["--config-dir", &lib_s, "--config-dir", &etc_s],
        );
        assert_eq!(
            declared(&d),
            vec![
                (Protocol::Tcp, 7001, 1, admin.clone()),
                (Protocol::Tcp, 7003, 2, vendor.clone()),
                (Protocol::Udp, 7003, 2, vendor.clone()),
            ]
        );
        assert_kernel_settles_to("7001,7003-7004");
        let status = d.client().status().unwrap();
        assert_eq!(status.config_dirs, vec![lib_s, etc_s]);
        assert!(status.declared_problems.is_empty());
        // `list` shows the file, in text and JSON.
        let text = portres(&d, &["list", "--wide"]).success();
        assert!(
            text.stdout.lines().next().unwrap().contains("SOURCE"),
            "{text}"
        );
        assert!(
            text.stdout
                .lines()
                .any(|l| l.contains("7001") && l.contains(&admin)),
            "{text}"
        );
        let json = portres(&d, &["--json", "list"]).success();
        let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        assert_eq!(v[0]["source"], serde_json::json!(admin), "{json}");
    }
);

nstest!(
    sighup_and_portres_reload_add_change_and_remove_declared_reservations,
    |_| {
        let dir = open_tempdir();
        let conf = conf_dir(dir.path(), "portres.d");
        let d = ProcessDaemon::start(dir.path(), &[]);
        assert!(declared(&d).is_empty());
        let file = write(&conf.join("50-web.conf"), "tcp 8080 label=web\n");
        sighup(&d);
        assert!(
            eventually(|| declared(&d).len() == 1),
            "SIGHUP applied nothing"
        );
        assert_kernel_settles_to("8080");
        // Change and add, by `portres reload`.
        write(
            &conf.join("50-web.conf"),
            "tcp 8080 owner=0 label=web v2\nudp 8081-8082\n",
        );
        let ran = portres(&d, &["reload"]).success();
        assert!(
            ran.stdout.contains("1 created, 1 updated, 0 deleted"),
            "{ran}"
        );
        let list = d.client().list(None).unwrap();
        let web = list.iter().find(|r| r.start == 8080).unwrap();
        assert_eq!(web.label.as_deref(), Some("web v2"));
        assert_eq!(web.owner, Some(portres::Owner::User(0).into()));
        assert_eq!(web.source.as_deref(), Some(file.as_str()));
        // Remove.
        write(&conf.join("50-web.conf"), "udp 8081-8082\n");
        let json = portres(&d, &["--json", "reload"]).success();
        let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
        assert_eq!(v["deleted"], 1, "{json}");
        assert_eq!(v["declared"], 1, "{json}");
        assert_kernel_settles_to("8081-8082");
        // Both triggers are in the log.
        let log = fs::read_to_string(&d.log).unwrap();
        assert!(log.contains("portres.d (SIGHUP)"), "{log}");
        assert!(log.contains("portres.d (portres reload)"), "{log}");
    }
);

nstest!(
    bad_lines_and_conflicts_are_reported_in_reload_status_and_log_and_retried,
    |_| {
        let dir = open_tempdir();
        let conf = conf_dir(dir.path(), "portres.d");
        let d = ProcessDaemon::start(dir.path(), &[]);
        let holder = d.client();
        let held = holder.acquire(Protocol::Tcp, 9000, 1).unwrap();
        let file = write(
            &conf.join("a.conf"),
            "tcp 9000 label=held by a runtime client\ntcp nine\ntcp 9001\n",
        );
        let ran = portres(&d, &["reload"]).success();
        assert!(ran.stdout.contains("1 created"), "{ran}");
        assert!(ran.stderr.contains(&format!("{file}:2: ")), "{ran}");
        assert!(ran.stderr.contains("(bad_line)"), "{ran}");
        assert!(ran.stderr.contains(&format!("{file}:1: ")), "{ran}");
        assert!(ran.stderr.contains("(conflict)"), "{ran}");
        let status = portres(&d, &["status"]).success();
        assert!(
            status
                .stdout
                .contains(&format!("declared:        {file}:1: ")),
            "{status}"
        );
        let log = fs::read_to_string(&d.log).unwrap();
        assert!(
            log.contains(&format!("{file}:1: tcp 9000 is not reserved")),
            "{log}"
        );
        // Nothing of 9000 was half-applied: it is the runtime one's alone.
        let ports: Vec<u16> = declared(&d).iter().map(|r| r.1).collect();
        assert_eq!(ports, vec![9001]);
        // The holder lets go: the next reload takes it.
        drop(held);
        drop(holder);
        // The release is oneway and the close is served on a worker: wait
        // for it, or the reload (another connection) may come first.
        assert!(eventually(|| d.client().status().unwrap().runtime == 0));
        let r = d.client().reload().unwrap();
        assert_eq!(r.created, 1, "{:?}", r.problems);
        assert_eq!(
            r.problems.len(),
            1,
            "only the bad line is left: {:?}",
            r.problems
        );
        let ports: Vec<u16> = declared(&d).iter().map(|r| r.1).collect();
        assert_eq!(ports, vec![9000, 9001]);
    }
);

nstest!(
    declared_reservations_survive_restart_and_sigkill_and_follow_the_files,
    |_| {
        let dir = open_tempdir();
        let conf = conf_dir(dir.path(), "portres.d");
        let file = write(&conf.join("a.conf"), "tcp 8080\nudp 5353 label=mdns\n");
        let d = ProcessDaemon::start(dir.path(), &[]);
        assert_eq!(declared(&d).len(), 2);
        d.kill9();
        // A SIGKILL loses nothing; the files, unchanged, change nothing.
        let d = ProcessDaemon::start(dir.path(), &[]);
        assert_eq!(
            declared(&d),
            vec![
                (Protocol::Tcp, 8080, 1, file.clone()),
                (Protocol::Udp, 5353, 1, file.clone()),
            ]
        );
        assert_kernel_settles_to("5353,8080");
        let log = fs::read_to_string(&d.log).unwrap();
        assert!(log.contains("0 created, 0 updated, 0 deleted"), "{log}");
        // A line removed while the daemon is down goes at the next start.
        d.terminate();
        write(&conf.join("a.conf"), "udp 5353 label=mdns\n");
        let d = ProcessDaemon::start(dir.path(), &[]);
        assert_eq!(declared(&d), vec![(Protocol::Udp, 5353, 1, file.clone())]);
        assert_kernel_settles_to("5353");
        // A reload's changes are durable at once: SIGKILL right after it.
        write(&conf.join("a.conf"), "udp 5353 label=mdns\ntcp 8443\n");
        d.client().reload().unwrap();
        d.kill9();
        let rows = portres_store::Store::open(&dir.path().join("state"))
            .unwrap()
            .load()
            .unwrap();
        let got: Vec<_> = rows
            .iter()
            .map(|r| (r.block.start(), r.source.as_deref()))
            .collect();
        assert_eq!(
            got,
            vec![(8443, Some(file.as_str())), (5353, Some(file.as_str()))]
        );
    }
);

nstest!(
    delete_of_a_declared_reservation_is_access_denied_naming_the_file,
    |_| {
        let dir = open_tempdir();
        let conf = conf_dir(dir.path(), "portres.d");
        let file = write(&conf.join("a.conf"), "tcp 8080\n");
        let d = ProcessDaemon::start(dir.path(), &[]);
        let ran = portres(&d, &["delete", "tcp", "8080"]).code(1);
        assert!(ran.stderr.contains("access_denied"), "{ran}");
        assert!(ran.stderr.contains(&file), "{ran}");
        assert_eq!(declared(&d).len(), 1);
        assert_kernel_settles_to("8080");
    }
);

nstest!(
    import_sysctl_prints_a_portres_d_file_that_reads_back,
    |_| {
        let dir = open_tempdir();
        set_kernel_reserved("5000-5009,6000");
        // Without a daemon: the kernel's value.
        let mut alone = cli(&dir.path().join("no-daemon.sock"));
        alone.arg("import-sysctl");
        let ran = Ran::of(alone).success();
        assert!(
            ran.stdout
                .contains("both 5000-5009 label=from ip_local_reserved_ports"),
            "{ran}"
        );
        assert!(ran.stdout.contains("both 6000 label="), "{ran}");
        let conf = conf_dir(dir.path(), "portres.d");
        let file = write(&conf.join("50-sysctl.conf"), &ran.stdout);
        // The daemon records that value as its baseline; --baseline prints
        // the same file.
        let d = ProcessDaemon::start(dir.path(), &[]);
        let again = portres(&d, &["import-sysctl", "--baseline"]).success();
        let lines = |s: &str| -> Vec<String> {
            s.lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_string)
                .collect()
        };
        assert_eq!(lines(&again.stdout), lines(&ran.stdout), "{again}");
        // It reads back: every block declared for both protocols, no problem.
        let status = d.client().status().unwrap();
        assert!(
            status.declared_problems.is_empty(),
            "{:?}",
            status.declared_problems
        );
        assert_eq!(
            declared(&d),
            vec![
                (Protocol::Tcp, 5000, 10, file.clone()),
                (Protocol::Tcp, 6000, 1, file.clone()),
                (Protocol::Udp, 5000, 10, file.clone()),
                (Protocol::Udp, 6000, 1, file.clone()),
            ]
        );
    }
);

nstest!(
    a_declared_port_in_use_is_a_conflict_until_its_socket_closes,
    |_| {
        let dir = open_tempdir();
        let conf = conf_dir(dir.path(), "portres.d");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let file = write(&conf.join("a.conf"), &format!("tcp {port}\n"));
        let d = ProcessDaemon::start(dir.path(), &[]);
        // At start: reported, not fatal, nothing reserved.
        let status = d.client().status().unwrap();
        assert_eq!(
            status.declared_problems.len(),
            1,
            "{:?}",
            status.declared_problems
        );
        let p = &status.declared_problems[0];
        assert_eq!(
            (p.file.as_str(), p.line, p.kind.as_str()),
            (file.as_str(), Some(1), "conflict")
        );
        assert!(p.message.contains("in use"), "{p:?}");
        assert!(declared(&d).is_empty());
        drop(listener);
        let r = d.client().reload().unwrap();
        assert_eq!(r.created, 1, "{:?}", r.problems);
        assert!(d.client().status().unwrap().declared_problems.is_empty());
        assert_kernel_settles_to(&port.to_string());
    }
);

nstest!(
    list_shows_the_source_file_within_80_columns_cut_from_the_front,
    |_| {
        let dir = open_tempdir();
        let conf = conf_dir(dir.path(), "portres.d");
        let name = "50-a-rather-long-vendor-file-name.conf";
        let file = write(
            &conf.join(name),
            "tcp 8080 owner=0 label=a label that is long enough to need cutting down\n",
        );
        let d = ProcessDaemon::start(dir.path(), &[]);
        let _runtime = d.client().acquire(Protocol::Tcp, 44000, 10).unwrap();
        let ran = portres(&d, &["list"]).success();
        for line in ran.stdout.lines() {
            assert!(line.chars().count() <= 80, "{line:?}\n{ran}");
        }
        assert!(
            ran.stdout.lines().next().unwrap().ends_with("SOURCE"),
            "{ran}"
        );
        let row = ran.stdout.lines().find(|l| l.contains("8080")).unwrap();
        assert!(row.contains('…') && row.ends_with(".conf"), "{ran}");
        // The runtime one has no file.
        let row = ran.stdout.lines().find(|l| l.contains("44000")).unwrap();
        assert!(row.trim_end().ends_with('-'), "{ran}");
        let wide = portres(&d, &["list", "--wide"]).success();
        assert!(wide.stdout.contains(&file), "{wide}");
    }
);

nstest!(a_fifo_or_device_behind_a_conf_name_is_never_opened, |_| {
    // A name in portres.d that leads (through a symlink, perhaps into
    // a directory someone else may write) to a FIFO or a device: the
    // daemon, as root, must not open it — opening a device can act (a
    // watchdog arms, a tape rewinds), and opening a FIFO for reading
    // releases a writer blocked in open(2), which is what shows it here.
    let dir = open_tempdir();
    let conf = conf_dir(dir.path(), "portres.d");
    let elsewhere = conf_dir(dir.path(), "elsewhere");
    let fifo = elsewhere.join("x.fifo");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let link = conf.join("60-x.conf");
    std::os::unix::fs::symlink(&fifo, &link).unwrap();
    let d = ProcessDaemon::start(dir.path(), &[]);
    // Blocks in open(2) until a reader opens the FIFO.
    let mut writer = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("echo 'tcp 9999' > '{}'", fifo.display()))
        .spawn()
        .unwrap();
    let r = d.client().reload().unwrap();
    let shown = link.display().to_string();
    assert!(
        r.problems.iter().any(|p| p.file == shown
            && p.kind == "unreadable"
            && p.message.contains("not a regular file")),
        "{:?}",
        r.problems
    );
    assert!(declared(&d).is_empty());
    // The reload has answered, so any open it made has happened: a
    // released writer ends at once.
    for _ in 0..20 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let ended = writer.try_wait().unwrap();
        assert!(
            ended.is_none(),
            "the daemon opened the FIFO (the blocked writer was released: {ended:?})"
        );
    }
    let _ = writer.kill();
    let _ = writer.wait();
});

/// One-port lines in a long reload's file: tcp 2000 and up.
const LINES: usize = 3000;

/// A daemon in `dir` that was just sent SIGHUP to read a file of `LINES`
/// one-port lines (a durable write and a kernel write each: seconds).
fn long_reload_under_way(dir: &Path) -> ProcessDaemon {
    let conf = conf_dir(dir, "portres.d");
    let d = ProcessDaemon::start(dir, &[]);
    let text: String = (0..LINES).map(|i| format!("tcp {}\n", 2000 + i)).collect();
    write(&conf.join("50-many.conf"), &text);
    sighup(&d);
    d
}

nstest!(a_long_reload_by_sighup_leaves_the_daemon_answering, |_| {
    // Thousands of one-port lines: a durable write and a kernel write
    // each, seconds in all. Meanwhile new connections are accepted and
    // answered (the SIGHUP's reload does not run on the accepting
    // loop), and answered between its changes (it does not hold the
    // state lock throughout): `status` sees it part done.
    let dir = open_tempdir();
    let d = long_reload_under_way(dir.path());
    // A new connection each time: the accepting loop must be free.
    let seen = persistent_counts_until_done(&d);
    assert!(
        seen.iter().any(|&n| n > 0 && n < LINES),
        "status never answered while the reload ran: {seen:?}"
    );
    assert_kernel_settles_to(&format!("2000-{}", 2000 + LINES - 1));
});

/// `status` (a new connection each time) until the daemon has `LINES`
/// persistent reservations: every count it answered on the way.
fn persistent_counts_until_done(d: &ProcessDaemon) -> Vec<usize> {
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let n = d.client().status().unwrap().persistent;
        seen.push(n);
        if n == LINES {
            return seen;
        }
        assert!(std::time::Instant::now() < deadline, "{seen:?}");
    }
}

nstest!(a_long_portres_reload_leaves_its_worker_serving, |_| {
    // One worker: `portres reload` of thousands of lines must not hold it
    // (its other connections, here every `status`) for the whole reload.
    let dir = open_tempdir();
    let conf = conf_dir(dir.path(), "portres.d");
    let d = ProcessDaemon::start(dir.path(), &["--workers", "1"]);
    let text: String = (0..LINES).map(|i| format!("tcp {}\n", 2000 + i)).collect();
    write(&conf.join("50-many.conf"), &text);
    let socket = d.socket.clone();
    let reload = std::thread::spawn(move || {
        portres::Client::connect_to(&socket)
            .unwrap()
            .reload()
            .unwrap()
    });
    let seen = persistent_counts_until_done(&d);
    assert!(
        seen.iter().any(|&n| n > 0 && n < LINES),
        "status never answered while the reload ran: {seen:?}"
    );
    assert_eq!(reload.join().unwrap().created, LINES);
});

nstest!(
    a_sigkill_in_the_middle_of_a_reload_loses_nothing_and_the_restart_finishes_it,
    |_| {
        // Killed between two changes of a long reload: what was applied is
        // in the store, whole; the restart applies the rest before its
        // socket accepts, and the kernel's list is baseline + persistent.
        let dir = open_tempdir();
        let d = long_reload_under_way(dir.path());
        assert!(
            eventually(|| d.client().status().unwrap().persistent > 0),
            "the reload never started"
        );
        d.kill9();
        let d = ProcessDaemon::start(dir.path(), &[]);
        let status = d.client().status().unwrap();
        assert_eq!(status.persistent, LINES);
        assert!(
            status.declared_problems.is_empty(),
            "{:?}",
            status.declared_problems
        );
        assert_kernel_settles_to(&format!("2000-{}", 2000 + LINES - 1));
    }
);

nstest!(a_file_changed_while_it_is_read_deletes_nothing, |_| {
    // A reload reading a file while it is rewritten in place (`cat new
    // > file`: emptied first, filled after) must not take the empty
    // moment for the truth and delete what the file declares.
    let dir = open_tempdir();
    let conf = conf_dir(dir.path(), "portres.d");
    let file = conf.join("a.conf");
    write(&file, "tcp 8080\ntcp 8081\n");
    let mut cmd = portres_tests::daemon_command(dir.path(), &[]);
    cmd.env("PORTRES_TEST_FAULT", "slow-declared-read");
    let d = ProcessDaemon::spawn(cmd, dir.path());
    assert_eq!(declared(&d).len(), 2);
    let daemon_pid = d.child.id();
    let socket = d.socket.clone();
    let reload = std::thread::spawn(move || {
        portres::Client::connect_to(&socket)
            .unwrap()
            .reload()
            .unwrap()
    });
    // The daemon holds its reference to the file (checked, not yet
    // read): empty it now.
    let holds_it = || {
        fs::read_dir(format!("/proc/{daemon_pid}/fd"))
            .unwrap()
            .filter_map(|e| fs::read_link(e.ok()?.path()).ok())
            .any(|target| target == file)
    };
    assert!(eventually(holds_it), "the daemon never opened the file");
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&file)
        .unwrap();
    let r = reload.join().unwrap();
    assert_eq!(r.deleted, 0, "{r:?}");
    assert_eq!(declared(&d).len(), 2);
    assert!(
        r.problems
            .iter()
            .any(|p| p.kind == "unreadable" && p.message.contains("changed")),
        "{:?}",
        r.problems
    );
});
