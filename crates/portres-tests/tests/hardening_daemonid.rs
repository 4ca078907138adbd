//! Hardening (issue 9, items 4, 13 and one of 15): who may run a daemon
//! where. One daemon per state directory (a second exits at once naming
//! the first; a crashed one's lock file blocks nothing); one kernel-syncing
//! daemon per network namespace (a second refuses, or with `auto` runs
//! without kernel sync, and never takes the first one's blocks for its
//! baseline; a user squatting the owner's socket name changes nothing);
//! the baseline says where it came from and `--reset-baseline` corrects it;
//! the socket's directory is checked in system mode too (the chmod-via-
//! symlink attack of another user); and no directory is created for a
//! `--socket` outside the defaults.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use portres::{CreateOptions, Protocol};
use portres_tests::{
    ProcessDaemon, as_user, assert_kernel_settles_to, cli, kernel_reserved, open_tempdir, run,
};
use serde_json::Value;

const NOBODY: u32 = 65534;

/// `portresd ARGS…` (no flag added), stderr captured.
fn portresd(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut cmd = Command::new(portres_tests::bin("portresd"));
    for a in args {
        cmd.arg(a);
    }
    cmd.env_remove("PORTRES_SOCKET")
        .env_remove("PORTRES_STATE_DIR")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// Runs `cmd` until it exits or `limit` passes (then kills it): its exit
/// status (`None` if it was still running), how long it ran, its stderr.
fn run_until(mut cmd: Command, limit: Duration) -> (Option<ExitStatus>, Duration, String) {
    let t = Instant::now();
    let mut child = cmd.spawn().expect("spawn");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = t.elapsed();
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    (status, elapsed, err)
}

fn status_json(socket: &Path) -> Value {
    let mut c = cli(socket);
    c.args(["--json", "status"]);
    let (out, stdout, stderr) = run(c);
    assert!(out.status.success(), "{stderr}");
    serde_json::from_str(&stdout).unwrap()
}

fn log_of(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("portresd.log")).unwrap_or_default()
}

nstest!(
    /// Item 4: two daemons on one state directory. Before: both started and
    /// corrupted each other's store and sysctl value. Now: the second exits
    /// non-zero at once, naming the first one's pid and socket.
    second_daemon_on_the_same_state_dir_exits_at_once_naming_the_first,
    |_| {
        let dir = open_tempdir();
        let first = ProcessDaemon::start(dir.path(), &[]);
        first
            .client()
            .create(Protocol::Tcp, 7000, 1, CreateOptions::default())
            .unwrap();
        let other_socket = dir.path().join("second.sock");
        // Kernel sync off, so only the state directory stands in its way.
        let (status, took, err) = run_until(
            portresd(&[
                &"--socket",
                &other_socket,
                &"--state-dir",
                &first.state_dir,
                &"--kernel-sync",
                &"off",
            ]),
            Duration::from_secs(10),
        );
        let status = status.unwrap_or_else(|| panic!("the second portresd kept running: {err}"));
        assert!(!status.success(), "{err}");
        assert!(took < Duration::from_secs(1), "took {took:?}");
        let pid = first.child.id().to_string();
        assert!(err.contains(&format!("pid {pid}")), "{err}");
        assert!(err.contains(&first.socket.display().to_string()), "{err}");
        assert!(!other_socket.exists(), "the second one bound its socket");
        // The first one is unharmed.
        let c = first.client();
        assert_eq!(c.list(None).unwrap().len(), 1);
        assert_eq!(kernel_reserved().to_string(), "7000");
        eprintln!("second portresd on the same state dir: refused in {took:?}: {err}");
    }
);

nstest!(
    /// Item 4: a daemon killed with SIGKILL leaves its lock file (with its pid)
    /// behind; the kernel dropped the lock itself, so the next start works.
    a_lock_file_left_by_a_killed_daemon_does_not_block_the_next_start,
    |_| {
        let dir = open_tempdir();
        let first = ProcessDaemon::start(dir.path(), &[]);
        let lock = first.state_dir.join("portres.lock");
        let old_pid = first.child.id();
        first.kill9();
        let note = std::fs::read_to_string(&lock).unwrap();
        assert!(note.contains(&format!("pid={old_pid}")), "{note}");
        let next = ProcessDaemon::start(dir.path(), &[]);
        let note = std::fs::read_to_string(&lock).unwrap();
        assert!(note.contains(&format!("pid={}", next.child.id())), "{note}");
        assert!(next.client().status().unwrap().kernel_sync);
    }
);

nstest!(
    /// Item 4: a second kernel-syncing daemon in one network namespace (another
    /// state directory). Before: both kept the sysctl, overwriting each other,
    /// and the second recorded the first one's blocks as its baseline. Now:
    /// with `--kernel-sync on` it refuses to start, naming the first; with
    /// `auto` it runs with kernel sync off, reads nothing from the kernel and
    /// writes nothing to it.
    second_kernel_syncing_daemon_in_one_netns_is_refused_and_takes_no_baseline,
    |_| {
        let dir_a = open_tempdir();
        let dir_b = open_tempdir();
        let a = ProcessDaemon::start(dir_a.path(), &[]);
        let ca = a.client();
        ca.create(Protocol::Tcp, 7000, 1, CreateOptions::default())
            .unwrap();
        let held = ca.acquire(Protocol::Udp, 7100, 5).unwrap();
        assert_eq!(kernel_reserved().to_string(), "7000,7100-7104");

        let socket_b = dir_b.path().join("portres.sock");
        let state_b = dir_b.path().join("state");
        let (status, took, err) = run_until(
            portresd(&[
                &"--socket",
                &socket_b,
                &"--state-dir",
                &state_b,
                &"--kernel-sync",
                &"on",
            ]),
            Duration::from_secs(10),
        );
        let status = status.unwrap_or_else(|| panic!("the second portresd kept running: {err}"));
        assert!(!status.success(), "{err}");
        assert!(err.contains("another portresd already keeps"), "{err}");
        assert!(err.contains(&format!("pid {}", a.child.id())), "{err}");
        assert!(err.contains(&a.socket.display().to_string()), "{err}");
        assert!(!socket_b.exists());

        // auto: runs, without kernel sync, and never read the kernel's value.
        let mut auto = portresd(&[
            &"--socket",
            &socket_b,
            &"--state-dir",
            &state_b,
            &"--kernel-sync",
            &"auto",
        ]);
        auto.stderr(std::fs::File::create(dir_b.path().join("portresd.log")).unwrap());
        let mut b = auto.spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket_b).is_err() {
            assert!(b.try_wait().unwrap().is_none(), "{}", log_of(dir_b.path()));
            assert!(Instant::now() < deadline, "portresd did not become ready");
            std::thread::sleep(Duration::from_millis(5));
        }
        let s = status_json(&socket_b);
        assert_eq!(s["kernel_sync"], false, "{s}");
        assert_eq!(s["baseline"], "", "{s}");
        let cb = portres::Client::connect_to(&socket_b).unwrap();
        cb.create(Protocol::Tcp, 7200, 1, CreateOptions::default())
            .unwrap();
        let _runtime = cb.acquire(Protocol::Udp, 7300, 1).unwrap();
        let log = log_of(dir_b.path());
        assert!(log.contains("kernel sync off: another portresd"), "{log}");
        assert!(!log.contains("recorded"), "{log}");
        // The kernel's list is still the first daemon's alone.
        assert_eq!(kernel_reserved().to_string(), "7000,7100-7104");
        drop(cb);
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(b.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        );
        assert!(b.wait().unwrap().success());
        assert_eq!(kernel_reserved().to_string(), "7000,7100-7104");
        held.release().unwrap();
        assert_kernel_settles_to("7000");
        eprintln!("second kernel-syncing daemon: refused in {took:?}: {err}");
    }
);

nstest!(
    /// Item 4, as an attacker: anyone may bind an abstract socket name, so a
    /// user squats `@portres/kernel-owner` hoping the daemon gives up kernel
    /// sync. It does not (the squatter cannot write the sysctl, so it is no
    /// daemon keeping it): kernel sync stays on, the squatter is named in the
    /// log, and a second real daemon is still refused (by the lock on the
    /// sysctl file, which only a writer can take), without naming the squatter
    /// as the owner.
    a_user_squatting_the_kernel_owner_name_cannot_turn_kernel_sync_off,
    |_| {
        let squat = "import os,socket,sys,time\n\
                     s=socket.socket(socket.AF_UNIX);s.bind('\\0portres/kernel-owner');s.listen(1)\n\
                     print(os.getpid(),flush=True)\n\
                     time.sleep(60)\n";
        let mut py = Command::new("/usr/bin/python3");
        py.arg("-c").arg(squat);
        let mut squatter: Child = as_user(&py, NOBODY, NOBODY, &[])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(squatter.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let squatter_pid = line.trim().to_string();
        assert!(!squatter_pid.is_empty(), "the squatter did not start");

        let dir_a = open_tempdir();
        let a = ProcessDaemon::start(dir_a.path(), &[]);
        let ca = a.client();
        assert!(ca.status().unwrap().kernel_sync);
        ca.create(Protocol::Tcp, 7400, 1, CreateOptions::default())
            .unwrap();
        assert_eq!(kernel_reserved().to_string(), "7400");
        let log = log_of(dir_a.path());
        assert!(
            log.contains(&format!("pid {squatter_pid}, uid {NOBODY}")) && log.contains("ignored"),
            "{log}"
        );

        let dir_b = open_tempdir();
        let (status, _, err) = run_until(
            portresd(&[
                &"--socket",
                &dir_b.path().join("portres.sock"),
                &"--state-dir",
                &dir_b.path().join("state"),
                &"--kernel-sync",
                &"on",
            ]),
            Duration::from_secs(10),
        );
        let _ = squatter.kill();
        let _ = squatter.wait();
        let status = status.unwrap_or_else(|| panic!("the second portresd kept running: {err}"));
        assert!(!status.success(), "{err}");
        assert!(err.contains("another portresd already keeps"), "{err}");
        assert!(!err.contains(&format!("pid {squatter_pid}")), "{err}");
        assert_eq!(kernel_reserved().to_string(), "7400");
    }
);

nstest!(
    /// Item 4, the crash case: a daemon dies holding a runtime block; a daemon
    /// started on a fresh state directory takes the leftover for the admin's
    /// baseline. Before: nothing told the admin, and nothing could undo it.
    /// Now: the log warns, `portres status` says where the baseline came from,
    /// and `portresd --reset-baseline=` (refused while the daemon runs) makes
    /// the next start drop the leftover.
    a_baseline_taken_from_a_crashed_daemons_leftovers_is_explained_and_can_be_reset,
    |_| {
        let dir_a = open_tempdir();
        let a = ProcessDaemon::start(dir_a.path(), &[]);
        let leftover = a.client().acquire(Protocol::Tcp, 40000, 10).unwrap();
        let _ = leftover.keep();
        a.kill9();
        assert_eq!(kernel_reserved().to_string(), "40000-40009");

        let dir_b = open_tempdir();
        let b = ProcessDaemon::start(dir_b.path(), &[]);
        let s = status_json(&b.socket);
        assert_eq!(s["baseline"], "40000-40009", "{s}");
        let origin = s["baseline_origin"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            origin.contains("read from the kernel at the first start")
                && origin.contains(&format!("pid {}", b.child.id()))
                && origin.contains("UTC"),
            "{s}"
        );
        let mut human = cli(&b.socket);
        human.arg("status");
        let (_, stdout, _) = run(human);
        assert!(
            stdout.contains("baseline from:   read from the kernel"),
            "{stdout}"
        );
        let log = log_of(dir_b.path());
        assert!(log.contains("--reset-baseline"), "{log}");

        // Refused while the daemon runs, naming it; nothing changes.
        let state_b = b.state_dir.clone();
        let (status, _, err) = run_until(
            portresd(&[&"--state-dir", &state_b, &"--reset-baseline="]),
            Duration::from_secs(10),
        );
        assert!(!status.unwrap().success(), "{err}");
        assert!(err.contains(&format!("pid {}", b.child.id())), "{err}");
        assert_eq!(status_json(&b.socket)["baseline"], "40000-40009");
        b.terminate();

        let mut reset = portresd(&[&"--state-dir", &state_b, &"--reset-baseline="]);
        reset.stderr(Stdio::piped());
        let out = reset.output().unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            said.contains("was 40000-40009") && said.contains("now (empty)"),
            "{said}"
        );
        let b = ProcessDaemon::start(dir_b.path(), &[]);
        assert_eq!(kernel_reserved().to_string(), "");
        let s = status_json(&b.socket);
        assert_eq!(s["baseline"], "", "{s}");
        assert!(
            s["baseline_origin"]
                .as_str()
                .is_some_and(|o| o.contains("--reset-baseline")),
            "{s}"
        );
        // Without a value: the kernel's list less this store's persistent
        // blocks (here the admin's 999 comes back, 7000 stays persistent).
        let c = b.client();
        c.create(Protocol::Tcp, 7000, 1, CreateOptions::default())
            .unwrap();
        drop(c);
        b.terminate();
        portres_tests::set_kernel_reserved("999,7000");
        let out = portresd(&[&"--state-dir", &state_b, &"--reset-baseline"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let b = ProcessDaemon::start(dir_b.path(), &[]);
        assert_eq!(status_json(&b.socket)["baseline"], "999");
        assert_eq!(kernel_reserved().to_string(), "999,7000");
        // A state directory without a store is an error, and stays absent.
        let nowhere = dir_b.path().join("no-store");
        let out = portresd(&[&"--state-dir", &nowhere, &"--reset-baseline=1"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("there is no store"));
        assert!(!nowhere.exists());
    }
);

nstest!(
    /// Item 13, the attack: root runs `portresd --socket` in a directory
    /// another user owns. Before: it started; that user replaced the socket
    /// with their own (impersonating the daemon) and, by swapping in a symbolic
    /// link between bind and chmod, had root `chmod 0666` a file of their
    /// choice (won in 133 tries). Now: the directory is refused in system mode
    /// as in user mode, before anything is bound or chmodded, while the
    /// attacker races.
    system_mode_refuses_a_socket_directory_another_user_owns_while_they_race_a_symlink,
    |_| {
        let dir = open_tempdir();
        let evil = dir.path().join("evil");
        std::fs::create_dir(&evil).unwrap();
        std::os::unix::fs::chown(&evil, Some(NOBODY), Some(NOBODY)).unwrap();
        let target = dir.path().join("target");
        std::fs::write(&target, "root's secret\n").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let socket = evil.join("portres.sock");
        // The attacker: whenever the daemon's socket appears, move it away (to
        // answer the daemon's clients with it) and put a symbolic link to the
        // target in its place, for root's chmod to follow; then clear the name
        // for the next try.
        let race = "import os,sys,time\n\
                    d,t=sys.argv[1],sys.argv[2];s=os.path.join(d,'portres.sock');n=0\n\
                    end=time.time()+120\n\
                    while time.time()<end:\n\
                    \x20 try:\n\
                    \x20\x20 if os.path.lexists(s) and not os.path.islink(s):\n\
                    \x20\x20\x20 n+=1;os.rename(s,os.path.join(d,'stolen%d'%n));os.symlink(t,s)\n\
                    \x20\x20\x20 time.sleep(0.05);os.unlink(s)\n\
                    \x20 except OSError: pass\n";
        let mut py = Command::new("/usr/bin/python3");
        py.arg("-c").arg(race).arg(&evil).arg(&target);
        let mut attacker = as_user(&py, NOBODY, NOBODY, &[]).spawn().unwrap();
        let mut started = 0;
        let mut refused = 0;
        let mut last_err = String::new();
        for _ in 0..20 {
            let (status, _, err) = run_until(
                portresd(&[
                    &"--socket",
                    &socket,
                    &"--state-dir",
                    &dir.path().join("state"),
                    &"--kernel-sync",
                    &"off",
                ]),
                Duration::from_secs(2),
            );
            match status {
                None => started += 1,
                Some(s) if !s.success() && err.contains("refusing to put the socket") => refused += 1,
                Some(_) => started += 1,
            }
            last_err = err;
        }
        let _ = attacker.kill();
        let _ = attacker.wait();
        let mode = std::fs::metadata(&target).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o600, "root chmodded the attacker's target");
        assert_eq!((started, refused), (0, 20), "{last_err}");
        assert!(
            last_err.contains(&format!("owned by uid {NOBODY}")),
            "{last_err}"
        );
        eprintln!("attacker-owned socket directory: refused 20 of 20 starts: {last_err}");
    }
);

nstest!(
    /// Item 13: a group- or world-writable (not sticky) directory of root's own
    /// is refused in system mode too; a private one works, and the socket gets
    /// its mode (0666) though it was bound elsewhere and renamed into place,
    /// with nothing else left in the directory.
    system_mode_refuses_a_writable_socket_directory_and_binds_in_a_private_one,
    |_| {
        let dir = open_tempdir();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o775)).unwrap();
        let (status, _, err) = run_until(
            portresd(&[
                &"--socket",
                &shared.join("portres.sock"),
                &"--state-dir",
                &dir.path().join("state"),
                &"--kernel-sync",
                &"off",
            ]),
            Duration::from_secs(5),
        );
        assert!(status.is_some_and(|s| !s.success()), "{err}");
        assert!(err.contains("refusing to put the socket"), "{err}");
        assert_eq!(std::fs::read_dir(&shared).unwrap().count(), 0);

        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = ProcessDaemon::start(dir.path(), &[]);
        let meta = std::fs::symlink_metadata(&d.socket).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o666);
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".portresd"))
            .collect();
        assert!(names.is_empty(), "{names:?}");
        // Another user can connect (system mode), and a clean stop removes it.
        let mut status = cli(&d.socket);
        status.arg("status");
        let (out, _, stderr) = run(as_user(&status, NOBODY, NOBODY, &[]));
        assert!(out.status.success(), "{stderr}");
        let socket = d.socket.clone();
        d.terminate();
        assert!(!socket.exists());
    }
);

nstest!(
    /// Item 15: `portresd --socket /no/such/dir/x.sock`. Before: it created
    /// the missing directories (as root, wherever it was told). Now: a clear
    /// error, and nothing is created, the state directory included.
    a_socket_in_a_missing_directory_is_refused_and_nothing_is_created,
    |_test| {
        let dir = open_tempdir();
        let (status, _, err) = run_until(
            portresd(&[
                &"--socket",
                &dir.path().join("no/such/dir/x.sock"),
                &"--state-dir",
                &dir.path().join("state"),
                &"--kernel-sync",
                &"off",
            ]),
            Duration::from_secs(5),
        );
        let status = status.unwrap_or_else(|| panic!("portresd started: {err}"));
        assert!(!status.success(), "{err}");
        assert!(err.contains("does not exist"), "{err}");
        assert!(!dir.path().join("no").exists(), "a directory was created");
        assert!(
            !dir.path().join("state").exists(),
            "the state directory was created"
        );
        // As an ordinary user too.
        let mut user = portresd(&[
            &"--socket",
            &dir.path().join("no/x.sock"),
            &"--state-dir",
            &"/tmp/portres-test-daemonid-nobody",
            &"--kernel-sync",
            &"off",
        ]);
        user.stdout(Stdio::null());
        let (out, _, err) = run(as_user(&user, NOBODY, NOBODY, &[]));
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("does not exist"), "{err}");
        assert!(!dir.path().join("no").exists());
        eprintln!("missing socket directory: {err}");
    }
);

nstest!(
    /// Items 4a and 4b in-process: while a daemon runs, `Daemon::start` on its
    /// state directory, or with kernel sync on another one in the same network
    /// namespace, fails and changes nothing; once it has stopped, both locks
    /// are free again (released after its final kernel write).
    a_stopped_daemon_frees_its_state_dir_and_the_namespace_for_the_next,
    |_| {
        use portres_daemon::{Config, Daemon, KernelSync};
        let dir = open_tempdir();
        let other = open_tempdir();
        let d = portres_tests::InProcessDaemon::start_in(dir.path(), |_| {});
        let mut same_dir = Config::for_current_user();
        same_dir.socket = other.path().join("a.sock");
        same_dir.state_dir = d.state_dir.clone();
        same_dir.kernel_sync = KernelSync::Off;
        let e = Daemon::start(same_dir).unwrap_err();
        assert!(
            e.0.contains("another portresd is running on the state directory"),
            "{e}"
        );
        let mut same_netns = Config::for_current_user();
        same_netns.socket = other.path().join("b.sock");
        same_netns.state_dir = other.path().join("state");
        same_netns.kernel_sync = KernelSync::On;
        let e = Daemon::start(same_netns).unwrap_err();
        assert!(e.0.contains("another portresd already keeps"), "{e}");
        assert!(!other.path().join("a.sock").exists() && !other.path().join("b.sock").exists());
        d.stop();
        portres_tests::InProcessDaemon::start_in(other.path(), |_| {}).stop();
        portres_tests::InProcessDaemon::start_in(dir.path(), |_| {}).stop();
    }
);
