//! Strict mode through the daemon (issue 10): `portresd --enforce strict
//! --enforce-cgroup` a private child cgroup of the cgroup v2 mount, made
//! and removed by each test — never the machine's root cgroup. Binders are
//! `portres-testkit try-bind` processes started inside that cgroup (the
//! hooks judge a socket by the cgroup it was made in), as root or as other
//! users; each test runs in a private network namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use portres::{Client, CreateOptions, Owner, Protocol};
use portres_kernel::bindguard::{attached_bind_programs, cgroup2_mount};
use portres_tests::{ProcessDaemon, Ran, as_user, cli, daemon_command, open_tempdir, testkit};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A private cgroup under the cgroup v2 mount; removed on drop with the
/// session cgroups the daemon left below it (deepest first).
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new() -> TestCgroup {
        let mount = cgroup2_mount().expect("a cgroup v2 mount");
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = mount.join(format!("portres-strict-test-{}-{n}", std::process::id()));
        std::fs::create_dir(&path).expect("create the test cgroup");
        TestCgroup(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Whatever a test left running in it (cgroup.kill: Linux 5.14).
        let _ = std::fs::write(self.0.join("cgroup.kill"), "1");
        remove_cgroup_tree(&self.0);
    }
}

/// Removes the cgroup `dir` and every cgroup below it, deepest first,
/// retrying while a just-killed process still holds one.
fn remove_cgroup_tree(dir: &Path) {
    let children: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    for child in children {
        remove_cgroup_tree(&child);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Err(e) = std::fs::remove_dir(dir) {
        if Instant::now() > deadline {
            eprintln!("cannot remove {}: {e}", dir.display());
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `cmd` started inside `cg` (a shell moves itself there, then execs it).
fn in_cgroup(cg: &TestCgroup, cmd: &Command) -> Command {
    let mut out = Command::new("sh");
    out.arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
        .arg(cg.path())
        .arg(cmd.get_program())
        .args(cmd.get_args());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => out.env(k, v),
            None => out.env_remove(k),
        };
    }
    out.stdin(Stdio::null());
    out
}

fn try_bind_cmd(protocol: &str, ports: &str, addrs: &str) -> Command {
    let mut cmd = Command::new(testkit());
    cmd.args(["try-bind", protocol, ports, addrs]);
    cmd
}

/// The results of a try-bind run: `PORT ADDR OPTION` → result.
fn results(ran: Ran) -> Vec<(String, String)> {
    let ran = ran.success();
    ran.stdout
        .lines()
        .map(|l| {
            let (what, result) = l.rsplit_once(' ').expect("PORT ADDR OPTION RESULT");
            (what.to_string(), result.to_string())
        })
        .collect()
}

/// Asserts every attempt of `ran` gave `expected`.
#[track_caller]
fn all(ran: Ran, expected: &str) {
    let got = results(ran);
    assert!(!got.is_empty());
    let wrong: Vec<_> = got.iter().filter(|(_, r)| r != expected).collect();
    assert!(
        wrong.is_empty(),
        "expected {expected} everywhere: {wrong:?}"
    );
}

/// Polls until plain binds of `port` from inside `cg` succeed again.
#[track_caller]
fn binds_work_again(cg: &TestCgroup, protocol: &str, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = results(Ran::of(in_cgroup(
            cg,
            &try_bind_cmd(protocol, &port.to_string(), "v4"),
        )));
        if got.iter().all(|(_, r)| r == "ok") {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "binds of {protocol} {port} still refused: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The directories below `cg` (the session cgroups the daemon made there).
fn session_cgroups(cg: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(cg)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

/// A strict daemon in `dir`, its hooks attached to `cg`.
fn strict_daemon(dir: &Path, cg: &TestCgroup) -> ProcessDaemon {
    ProcessDaemon::start(dir, &["--enforce", "strict", "--enforce-cgroup", cg.arg()])
}

/// Skips (or fails under PORTRES_REQUIRE_PRIVILEGED_TESTS=1) where the
/// bind guard cannot load.
fn guard_or_skip(test: &str) -> bool {
    match portres_kernel::bindguard::probe() {
        Ok(_) => true,
        Err(e) => {
            portres_tests::skip(
                test,
                format!("strict mode's bind hooks cannot load here: {e}"),
            );
            false
        }
    }
}

/// A strict daemon attached to a fresh private cgroup, and its
/// directory. Fields drop in this order: the daemon, its directory, the
/// cgroup.
struct Setup {
    d: ProcessDaemon,
    _dir: tempfile::TempDir,
    cg: TestCgroup,
}

/// A `Setup`, or `None` after the skip rule where the hooks cannot load.
fn strict_setup(test: &str) -> Option<Setup> {
    if !guard_or_skip(test) {
        return None;
    }
    let cg = TestCgroup::new();
    let dir = open_tempdir();
    let d = strict_daemon(dir.path(), &cg);
    Some(Setup { d, _dir: dir, cg })
}

nstest!(
    strict_foreign_binds_into_runtime_and_persistent_blocks_fail_with_eacces_and_the_daemons_bind_works,
    |test| {
        let Some(setup) = strict_setup(test) else {
            return;
        };
        let (d, cg) = (&setup.d, &setup.cg);
        let c = d.client();
        let status = c.status().unwrap();
        assert_eq!(status.enforcement, "strict");
        assert_eq!(status.enforcement_reason, None);
        let rt_tcp = c.acquire(Protocol::Tcp, 40000, 4).unwrap();
        let rt_udp = c.acquire(Protocol::Udp, 40000, 4).unwrap();
        let p_tcp = c
            .create(Protocol::Tcp, 5000, 2, CreateOptions::default())
            .unwrap();
        let p_udp = c
            .create(Protocol::Udp, 5000, 2, CreateOptions::default())
            .unwrap();
        for protocol in ["tcp", "udp"] {
            // Every address form, with and without the reuse options.
            all(
                Ran::of(in_cgroup(cg, &try_bind_cmd(protocol, "40000,40003,5000,5001", ""))),
                "EACCES",
            );
            // Outside the blocks, and port 0: untouched.
            all(
                Ran::of(in_cgroup(cg, &try_bind_cmd(protocol, "40004,4999,5002,0", ""))),
                "ok",
            );
        }
        // The daemon's Bind into the same blocks (the associate path).
        let any: std::net::IpAddr = "::".parse().unwrap();
        let v4: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        rt_tcp.bind_tcp(v4).unwrap();
        rt_tcp.bind_tcp(any).unwrap();
        rt_udp.bind_udp(v4).unwrap();
        c.bind_tcp(p_tcp.token.unwrap(), v4).unwrap();
        c.bind_udp(p_udp.token.unwrap(), any).unwrap();
        // After the reservation ends, binds work again.
        rt_tcp.release().unwrap();
        binds_work_again(cg, "tcp", 40001);
        c.delete(Protocol::Udp, 5000, 2).unwrap();
        binds_work_again(cg, "udp", 5000);
    }
);

nstest!(
    strict_an_exec_childs_bind_into_its_own_block_works_and_into_another_execs_fails,
    |test| {
        let Some(setup) = strict_setup(test) else {
            return;
        };
        let (d, cg) = (&setup.d, &setup.cg);
        // The first exec holds 41000 while its command sleeps.
        let mut first = cli(&d.socket);
        first.args(["exec", "tcp", "--start", "41000", "--", "sleep", "60"]);
        let mut first = in_cgroup(cg, &first)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let c = d.client();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c.list(None).unwrap().iter().any(|r| r.start == 41000) {
            assert!(Instant::now() < deadline, "the first exec never reserved");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The second exec's command (through a shell: a process tree)
        // binds its own block, not the first one's.
        let mut second = cli(&d.socket);
        second
            .args(["exec", "tcp", "--start", "41010", "--count", "2", "--"])
            .arg("sh")
            .arg("-c")
            .arg(format!(
                "{} try-bind tcp 41010,41011,41000 v4,any6",
                testkit().display()
            ));
        let got = results(d.run(in_cgroup(cg, &second)));
        for (what, result) in &got {
            let expected = if what.starts_with("41000 ") {
                "EACCES"
            } else {
                "ok"
            };
            assert_eq!(result, expected, "{what}: {got:?}");
        }
        // SIGTERM: exec forwards it to its command and releases.
        let pid = rustix::process::Pid::from_raw(first.id() as i32).expect("pid");
        rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
        let _ = first.wait();
        binds_work_again(cg, "tcp", 41000);
    }
);

nstest!(
    strict_a_persistent_owner_binds_port_80_without_privilege_and_nobody_else_can,
    |test| {
        let Some(setup) = strict_setup(test) else {
            return;
        };
        let (d, cg) = (&setup.d, &setup.cg);
        let c = d.client();
        let owned = |owner| CreateOptions {
            owner: Some(owner),
            label: None,
        };
        c.create(Protocol::Tcp, 80, 1, owned(Owner::User(65534)))
            .unwrap();
        c.create(Protocol::Udp, 81, 1, owned(Owner::Group(65534)))
            .unwrap();
        let bind = |protocol, port, uid, gid, groups: &[u32]| {
            Ran::of(in_cgroup(
                cg,
                &as_user(&try_bind_cmd(protocol, port, "v4,any6"), uid, gid, groups),
            ))
        };
        // The owner, with no capability, below ip_unprivileged_port_start.
        all(bind("tcp", "80", 65534, 65534, &[]), "ok");
        // Another user, and root (admins are excluded, as on Windows).
        all(bind("tcp", "80", 65533, 65533, &[]), "EACCES");
        all(
            Ran::of(in_cgroup(cg, &try_bind_cmd("tcp", "80", "v4,any6"))),
            "EACCES",
        );
        // A group owner: its primary gid, not a supplementary one.
        all(bind("udp", "81", 65533, 65534, &[]), "ok");
        all(bind("udp", "81", 65533, 65533, &[65534]), "EACCES");
    }
);

nstest!(strict_another_network_namespace_is_unaffected, |test| {
    let Some(setup) = strict_setup(test) else {
        return;
    };
    let (d, cg) = (&setup.d, &setup.cg);
    let c = d.client();
    let _held = c.acquire(Protocol::Tcp, 42000, 1).unwrap();
    all(
        Ran::of(in_cgroup(cg, &try_bind_cmd("tcp", "42000", "any4,any6"))),
        "EACCES",
    );
    let mut elsewhere = Command::new("unshare");
    elsewhere
        .arg("-n")
        .arg(testkit())
        .args(["try-bind", "tcp", "42000", "any4,any6"]);
    all(Ran::of(in_cgroup(cg, &elsewhere)), "ok");
});

nstest!(
    strict_binds_work_again_after_a_clean_stop_and_sigkill_and_restarts_do_not_stack_programs,
    |test| {
        if !guard_or_skip(test) {
            return;
        }
        let cg = TestCgroup::new();
        let dir = open_tempdir();
        let programs = || attached_bind_programs(cg.path()).expect("BPF_PROG_QUERY");
        assert_eq!(programs(), (0, 0));
        let d = strict_daemon(dir.path(), &cg);
        assert_eq!(programs(), (1, 1));
        d.client()
            .create(Protocol::Tcp, 6000, 1, CreateOptions::default())
            .unwrap();
        all(
            Ran::of(in_cgroup(&cg, &try_bind_cmd("tcp", "6000", "v4"))),
            "EACCES",
        );
        // A clean stop detaches.
        d.terminate();
        binds_work_again(&cg, "tcp", 6000);
        assert_eq!(programs(), (0, 0));
        // The restored persistent reservation is guarded again at start.
        let d = strict_daemon(dir.path(), &cg);
        assert_eq!(programs(), (1, 1));
        all(
            Ran::of(in_cgroup(&cg, &try_bind_cmd("tcp", "6000", "v4"))),
            "EACCES",
        );
        // SIGKILL fails open: the links die with the daemon's descriptors.
        d.kill9();
        binds_work_again(&cg, "tcp", 6000);
        let deadline = Instant::now() + Duration::from_secs(20);
        while programs() != (0, 0) {
            assert!(Instant::now() < deadline, "programs left: {:?}", programs());
            std::thread::sleep(Duration::from_millis(20));
        }
        // Restarts do not stack programs.
        let d = strict_daemon(dir.path(), &cg);
        assert_eq!(programs(), (1, 1));
        d.terminate();
        let d = strict_daemon(dir.path(), &cg);
        assert_eq!(programs(), (1, 1));
        drop(d);
    }
);

/// A daemon command as uid 65534 in `dir` (owned by it), logging to
/// `dir/portresd.log`.
fn unprivileged_daemon(dir: &Path, enforce: &str) -> Command {
    rustix::fs::chown(
        dir,
        Some(rustix::fs::Uid::from_raw(65534)),
        Some(rustix::fs::Gid::from_raw(65534)),
    )
    .expect("chown");
    let cmd = daemon_command(dir, &["--enforce", enforce, "--kernel-sync", "off"]);
    let mut cmd = as_user(&cmd, 65534, 65534, &[]);
    cmd.stdout(Stdio::null())
        .stderr(portres_tests::append(&dir.join("portresd.log")));
    cmd
}

nstest!(
    strict_enforce_strict_without_the_means_refuses_to_start_and_auto_falls_back_with_one_warning,
    |test| {
        if !guard_or_skip(test) {
            return;
        }
        let dir = open_tempdir();
        let status = unprivileged_daemon(dir.path(), "strict").status().unwrap();
        assert_eq!(status.code(), Some(1));
        let log = std::fs::read_to_string(dir.path().join("portresd.log")).unwrap();
        assert!(
            log.contains("--enforce strict, but the bind hooks cannot be attached: not permitted"),
            "{log}"
        );
        assert!(!dir.path().join("portres.sock").exists());

        let dir = open_tempdir();
        let child = unprivileged_daemon(dir.path(), "auto").spawn().unwrap();
        let mut d = ProcessDaemon::adopt(child, dir.path());
        d.wait_ready(Duration::from_secs(20));
        let status = Client::connect_to(&d.socket).unwrap().status().unwrap();
        assert_eq!(status.enforcement, "off");
        let reason = status.enforcement_reason.unwrap();
        assert!(reason.contains("CAP_BPF"), "{reason}");
        let out = d.run({
            let mut c = cli(&d.socket);
            c.args(["status", "--json"]);
            c
        });
        let v: serde_json::Value = serde_json::from_str(out.success().stdout.trim()).unwrap();
        assert_eq!(v["enforcement"], "off");
        assert!(v["enforcement_reason"].is_string(), "{v}");
        let log = d.terminate();
        let warnings = log
            .lines()
            .filter(|l| l.contains("WARN") && l.contains("enforcement off"))
            .count();
        assert_eq!(warnings, 1, "{log}");
    }
);

nstest!(strict_enter_cgroup_moves_only_the_caller_itself, |test| {
    use std::os::fd::AsFd;
    let Some(setup) = strict_setup(test) else {
        return;
    };
    let (d, cg) = (&setup.d, &setup.cg);
    let mut other = in_cgroup(cg, &{
        let mut c = Command::new("sleep");
        c.arg("60");
        c
    })
    .spawn()
    .unwrap();
    let pid = rustix::process::Pid::from_raw(other.id() as i32).unwrap();
    let cgroup_of = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let name = cg.path().file_name().unwrap().to_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cgroup_of(other.id()).contains(&name) {
        assert!(Instant::now() < deadline, "the shell never moved");
        std::thread::sleep(Duration::from_millis(10));
    }
    let cgroup_before = cgroup_of(other.id());
    let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).unwrap();
    let mut raw = portres_tests::RawClient::connect(&d.socket);
    let v = raw.call_with_fds(
        "io.portres.EnterCgroup",
        serde_json::json!({}),
        &[pidfd.as_fd()],
    );
    assert_eq!(v["error"], "io.portres.AccessDenied", "{v}");
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let v = raw.call_with_fds(
        "io.portres.EnterCgroup",
        serde_json::json!({}),
        &[devnull.as_fd()],
    );
    assert_eq!(v["error"], "io.portres.AccessDenied", "{v}");
    let v = raw.call("io.portres.EnterCgroup", serde_json::json!({}));
    assert!(v["error"].is_string(), "no descriptor: {v}");
    assert_eq!(
        cgroup_of(other.id()),
        cgroup_before,
        "the other process was not moved"
    );
    let _ = other.kill();
    let _ = other.wait();
});

nstest!(
    strict_a_cgroup_the_exec_command_makes_below_its_own_may_bind_too,
    |test| {
        let Some(setup) = strict_setup(test) else {
            return;
        };
        let (d, cg) = (&setup.d, &setup.cg);
        let mount = cgroup2_mount().unwrap();
        // The command moves itself one cgroup further down, then binds.
        let script = format!(
            r#"cg="{}$(sed -n 's/^0:://p' /proc/self/cgroup)" && mkdir "$cg/nested" && echo $$ > "$cg/nested/cgroup.procs" && exec {} try-bind tcp 43000 v4,any6"#,
            mount.display(),
            testkit().display()
        );
        let mut exec = cli(&d.socket);
        exec.args(["exec", "tcp", "--start", "43000", "--", "sh", "-c", &script]);
        all(d.run(in_cgroup(cg, &exec)), "ok");
    }
);

nstest!(strict_a_portserver_port_is_for_the_user_who_asked, |test| {
    if !guard_or_skip(test) {
        return;
    }
    let cg = TestCgroup::new();
    let dir = open_tempdir();
    let name = format!("@portres-strict-{}-{test}", std::process::id());
    let d = ProcessDaemon::start(
        dir.path(),
        &[
            "--enforce",
            "strict",
            "--enforce-cgroup",
            cg.arg(),
            "--portserver",
            &name,
        ],
    );
    // uid 65534 asks for a port for itself, as portpicker does, and
    // holds it while its process lives.
    let mut ask = Command::new(testkit());
    ask.args(["portserver", &name, "self", "--hold"]);
    let mut holder = in_cgroup(&cg, &as_user(&ask, 65534, 65534, &[]))
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the portserver client");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port: u16 = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("no port: {line:?}"));
    let port_arg = port.to_string();
    for protocol in ["tcp", "udp"] {
        // The asking user's processes bind it by number, plainly.
        all(
            Ran::of(in_cgroup(
                &cg,
                &as_user(
                    &try_bind_cmd(protocol, &port_arg, "v4,any6"),
                    65534,
                    65534,
                    &[],
                ),
            )),
            "ok",
        );
        // Anyone else, root included, gets EACCES.
        all(
            Ran::of(in_cgroup(
                &cg,
                &as_user(
                    &try_bind_cmd(protocol, &port_arg, "v4,any6"),
                    65533,
                    65533,
                    &[],
                ),
            )),
            "EACCES",
        );
        all(
            Ran::of(in_cgroup(&cg, &try_bind_cmd(protocol, &port_arg, "v4"))),
            "EACCES",
        );
    }
    // The asking process exits: the port is nobody's any more.
    holder.kill().unwrap();
    holder.wait().unwrap();
    binds_work_again(&cg, "tcp", port);
    binds_work_again(&cg, "udp", port);
    drop(d);
});

nstest!(
    strict_exec_never_enters_a_session_cgroup_someone_made_beforehand,
    |test| {
        // Whoever may write the exec's parent cgroup (its user, in a
        // delegated cgroup; or a previous daemon of the same pid that left
        // a busy one behind) could make the daemon's next session cgroup
        // names first, with a process of theirs inside: that process
        // would then be allowed to bind the exec's block.
        let Some(setup) = strict_setup(test) else {
            return;
        };
        let (d, cg) = (&setup.d, &setup.cg);
        let daemon_pid = d.child.id();
        let mut made = Vec::new();
        let mut sleepers = Vec::new();
        for session in 0..64 {
            let dir = cg.path().join(format!("portres-{daemon_pid}-{session}"));
            std::fs::create_dir(&dir).unwrap();
            let sleeper = Command::new("sleep")
                .arg("60")
                .stdin(Stdio::null())
                .spawn()
                .unwrap();
            std::fs::write(dir.join("cgroup.procs"), sleeper.id().to_string()).unwrap();
            sleepers.push(sleeper);
            made.push(format!(
                "0::/{}",
                dir.strip_prefix(cgroup2_mount().unwrap())
                    .unwrap()
                    .display()
            ));
        }
        let mut exec = cli(&d.socket);
        exec.args([
            "exec",
            "tcp",
            "--start",
            "44000",
            "--",
            "cat",
            "/proc/self/cgroup",
        ]);
        let ran = d.run(in_cgroup(cg, &exec));
        let out = ran.success();
        let line = out.stdout.lines().find(|l| l.starts_with("0::")).unwrap();
        assert!(
            !made.iter().any(|m| m == line),
            "the command ran in a cgroup made before its session: {line}"
        );
        for mut s in sleepers {
            let _ = s.kill();
            let _ = s.wait();
        }
    }
);

nstest!(
    strict_an_exec_commands_leftover_process_goes_back_to_the_parent_cgroup_and_the_session_cgroup_goes,
    |test| {
        // A command that leaves a background process behind used to leave
        // its session cgroup behind too, busy, and past 1024 of them
        // untracked for good: any user could pile up cgroups in a cgroup
        // they may not write themselves.
        let Some(setup) = strict_setup(test) else {
            return;
        };
        let (d, cg) = (&setup.d, &setup.cg);
        let mut exec = cli(&d.socket);
        exec.args([
            "exec",
            "tcp",
            "--start",
            "45000",
            "--",
            "sh",
            "-c",
            "sleep 60 </dev/null >/dev/null 2>&1 & echo $!",
        ]);
        let out = d.run(in_cgroup(cg, &exec)).success();
        let pid: u32 = out.stdout.trim().parse().unwrap();
        let session_cgroups = || session_cgroups(cg.path());
        let deadline = Instant::now() + Duration::from_secs(20);
        while !session_cgroups().is_empty() {
            assert!(
                Instant::now() < deadline,
                "session cgroups left: {:?}",
                session_cgroups()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let rel = cg.path().strip_prefix(cgroup2_mount().unwrap()).unwrap();
        let now = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let line = now.lines().find(|l| l.starts_with("0::")).unwrap();
        assert_eq!(line, format!("0::/{}", rel.display()));
        // Still running: moved, not killed.
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid as i32).unwrap(),
            rustix::process::Signal::KILL,
        );
    }
);

nstest!(strict_mptcp_binds_into_a_tcp_block_fail_too, |test| {
    // MPTCP sockets take TCP's ports: a stranger's MPTCP bind() must not
    // slip past a TCP block's guard (the program maps IPPROTO_MPTCP to TCP).
    let Some(setup) = strict_setup(test) else {
        return;
    };
    let (d, cg) = (&setup.d, &setup.cg);
    let c = d.client();
    let _runtime = c.acquire(Protocol::Tcp, 46000, 1).unwrap();
    c.create(Protocol::Tcp, 46010, 1, CreateOptions::default())
        .unwrap();
    let got = results(Ran::of(in_cgroup(
        cg,
        &try_bind_cmd("mptcp", "46000,46010", ""),
    )));
    if got.iter().all(|(_, r)| r == "unsupported") {
        // Not a privilege the run lacks: nothing to check here.
        eprintln!("{test}: this kernel has no MPTCP (nothing to bypass the guard with)");
        return;
    }
    let wrong: Vec<_> = got.iter().filter(|(_, r)| r != "EACCES").collect();
    assert!(wrong.is_empty(), "expected EACCES everywhere: {wrong:?}");
    // Outside the blocks: untouched.
    all(
        Ran::of(in_cgroup(cg, &try_bind_cmd("mptcp", "46001", "v4,any6"))),
        "ok",
    );
});

nstest!(
    strict_session_cgroups_a_sigkilled_daemon_left_are_removed_by_the_next,
    |test| {
        // A SIGKILLed daemon cannot remove its exec sessions' cgroups, and
        // they sit below each caller's own cgroup. It lists them in its
        // state directory; the next daemon moves what still runs in them
        // back to the parent and removes them.
        if !guard_or_skip(test) {
            return;
        }
        let cg = TestCgroup::new();
        let dir = open_tempdir();
        let d = strict_daemon(dir.path(), &cg);
        let mut exec = cli(&d.socket);
        exec.args(["exec", "tcp", "--start", "46000", "--", "sleep", "60"]);
        let mut running = in_cgroup(&cg, &exec)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let session_cgroups = || session_cgroups(cg.path());
        let deadline = Instant::now() + Duration::from_secs(20);
        while session_cgroups().is_empty() {
            assert!(Instant::now() < deadline, "exec made no session cgroup");
            std::thread::sleep(Duration::from_millis(10));
        }
        let left = session_cgroups();
        d.kill9();
        // The exec and its command still run, in the session cgroup.
        assert!(running.try_wait().unwrap().is_none());
        assert_eq!(session_cgroups(), left);
        let d = strict_daemon(dir.path(), &cg);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !session_cgroups().is_empty() {
            assert!(
                Instant::now() < deadline,
                "session cgroups left: {:?}; files: {:?}; log: {}",
                session_cgroups(),
                walk(dir.path()),
                d.log_tail(20)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Moved, not killed.
        assert!(running.try_wait().unwrap().is_none());
        let _ = running.kill();
        let _ = running.wait();
        drop(d);
    }
);

/// Every file below `dir`, for a failure message.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
