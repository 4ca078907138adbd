//! Issue 9.12 and 9.14: whom a client talks to. Another user plants a relay
//! at the victim's user-mode socket path (`/tmp/portres-$UID/portres.sock`,
//! what a client without `XDG_RUNTIME_DIR` tries first) and relays to the
//! real daemon; the victim — through the Rust library, the CLI and the C
//! library — must refuse it (`daemon_untrusted`, or fall through to the
//! system daemon) and send it nothing. A daemon answering a user or system
//! socket as the wrong uid is refused by its `SO_PEERCRED`; an explicitly
//! named one is used and `status` says who answered. A setuid client
//! ignores `PORTRES_SOCKET` and `PORTRES_SESSION_FD`.
//!
//! Each test runs in a private network namespace *and* a private mount
//! namespace with tmpfs over /tmp and /run, so `/tmp/portres-65533` and
//! `/run/portres` are the test's own (the machine's, and parallel tests',
//! are untouched) and the system daemon's socket can be the real path.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use portres::{CreateOptions, ErrorCode, Owner, Protocol};
use portres_proto::paths::SYSTEM_SOCKET;
use portres_tests::{InProcessDaemon, Netns, bin, netns};

/// The victim: an ordinary user with no XDG_RUNTIME_DIR.
const VICTIM: u32 = 65533;
/// The other user, who plants the relay.
const OTHER: u32 = 65534;

fn victim_socket() -> PathBuf {
    PathBuf::from(format!("/tmp/portres-{VICTIM}/portres.sock"))
}

/// This thread's own mounts: tmpfs over /tmp and /run, nothing propagated
/// back to the machine.
struct Scene {
    _ns: Netns,
}

fn scene(test: &str) -> Option<Scene> {
    let ns = netns(test)?;
    // SAFETY: unshare(CLONE_NEWNS) gives this thread its own mount
    // namespace and its own cwd/root/umask (CLONE_FS); no memory is
    // touched, and other threads keep theirs. The test thread never
    // returns to libtest's pool of shared state relying on them.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .expect("unshare(CLONE_NEWNS)");
    // First: nothing mounted from here on may propagate to the machine.
    rustix::mount::mount_change(
        "/",
        rustix::mount::MountPropagationFlags::PRIVATE | rustix::mount::MountPropagationFlags::REC,
    )
    .expect("make / private");
    // The checkout and the built binaries may themselves live under /tmp
    // (a CI checkout often does): held open here, mounted back below, so
    // the fresh tmpfs does not hide them.
    let keep: Vec<(PathBuf, OwnedFd)> = [
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
        // target/debug/deps/<this test> → target/debug, where the
        // binaries the tests run are.
        std::env::current_exe().expect("current_exe").join("../.."),
    ]
    .iter()
    .filter_map(|p| p.canonicalize().ok())
    .filter(|p| p.starts_with("/tmp") || p.starts_with("/run"))
    .map(|p| {
        let fd = rustix::fs::open(
            &p,
            rustix::fs::OFlags::PATH | rustix::fs::OFlags::DIRECTORY,
            rustix::fs::Mode::empty(),
        )
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
        (p, fd)
    })
    .collect();
    for dir in ["/tmp", "/run"] {
        rustix::mount::mount(
            "tmpfs",
            dir,
            "tmpfs",
            rustix::mount::MountFlags::empty(),
            None,
        )
        .unwrap_or_else(|e| panic!("mount tmpfs on {dir}: {e}"));
    }
    std::fs::set_permissions("/tmp", std::fs::Permissions::from_mode(0o1777)).expect("chmod /tmp");
    for (path, fd) in &keep {
        std::fs::create_dir_all(path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        let from = format!("/proc/self/fd/{}", fd.as_raw_fd());
        rustix::mount::mount_bind(from.as_str(), path)
            .unwrap_or_else(|e| panic!("bind {} back over the tmpfs: {e}", path.display()));
    }
    Some(Scene { _ns: ns })
}

/// The real system daemon, as root, at /run/portres/portres.sock.
fn system_daemon() -> InProcessDaemon {
    let d = root_daemon_in("/run/portres");
    assert_eq!(d.socket, Path::new(SYSTEM_SOCKET));
    d
}

/// A root daemon somewhere that is not a default path (what the relay
/// forwards to when there is no system daemon).
fn elsewhere_daemon() -> InProcessDaemon {
    root_daemon_in("/run/elsewhere")
}

/// A root daemon with its socket in `dir` (0755, as the system daemon's)
/// and its private state beside it.
fn root_daemon_in(dir: &str) -> InProcessDaemon {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = PathBuf::from(format!("{dir}-state"));
    InProcessDaemon::start_in(Path::new(dir), |c| c.state_dir = state)
}

/// `program args` as `uid` (its own gid, no groups) with a clean
/// environment: PATH, HOME=/nonexistent and `env` only.
fn as_uid(program: &Path, args: &[&str], env: &[(&str, &str)], uid: u32) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/nonexistent")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .process_group(0);
    c
}

use portres_tests::Ran;

fn run(c: Command) -> Ran {
    Ran::of(c)
}

fn trustkit() -> PathBuf {
    bin("portres-trustkit")
}

/// The other user's relay, listening at `listen` and forwarding to
/// `target`.
struct Relay {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Relay {
    fn plant(listen: &Path, target: &Path) -> Relay {
        let mut child = as_uid(
            &trustkit(),
            &["relay", listen.to_str().unwrap(), target.to_str().unwrap()],
            &[],
            OTHER,
        )
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the relay");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).expect("relay output");
        assert_eq!(line.trim(), "ready", "the relay did not start");
        Relay { child, out }
    }

    /// Stops it; everything it saw.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut rest = String::new();
        let _ = self.out.read_to_string(&mut rest);
        rest
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts the relay was never even connected to.
#[track_caller]
fn assert_untouched(relay: Relay) {
    let saw = relay.stop();
    assert!(
        !saw.contains("connection"),
        "the victim talked to the other user's relay:\n{saw}"
    );
}

fn probe_as_victim(env: &[(&str, &str)]) -> Ran {
    run(as_uid(&trustkit(), &["probe"], env, VICTIM))
}

// ---------------------------------------------------------------------------
// The Rust library
// ---------------------------------------------------------------------------

named_test!(
    library_refuses_a_relay_planted_at_the_user_socket_path_and_uses_the_system_daemon,
    |test| {
        let Some(_s) = scene(test) else {
            return;
        };
        let d = system_daemon();
        let relay = Relay::plant(&victim_socket(), &d.socket);
        let ran = probe_as_victim(&[]);
        assert!(ran.out.status.success(), "{ran}");
        assert!(
            ran.stdout.contains(&format!(
                "socket {SYSTEM_SOCKET}\nkind system\ndaemon-uid 0\n"
            )),
            "{ran}"
        );
        // Why the user socket was passed over is kept.
        assert!(
            ran.stdout.contains(&format!(
                "passed-over {} (your own daemon): daemon_untrusted: refusing the socket",
                victim_socket().display()
            )),
            "{ran}"
        );
        assert!(ran.stdout.contains("owned by uid 65534"), "{ran}");
        assert!(ran.stdout.contains(&format!("your-uid {VICTIM}")), "{ran}");
        assert!(ran.stdout.contains("bound "), "{ran}");
        assert_untouched(relay);
    }
);

named_test!(
    library_without_a_system_daemon_says_daemon_untrusted_and_lists_every_socket_tried,
    |test| {
        let Some(_s) = scene(test) else {
            return;
        };
        let d = elsewhere_daemon();
        let relay = Relay::plant(&victim_socket(), &d.socket);
        let ran = probe_as_victim(&[]);
        assert_eq!(ran.out.status.code(), Some(1), "{ran}");
        assert!(ran.stdout.contains("error daemon_untrusted\n"), "{ran}");
        for expected in [
            format!(
                "{} (your own daemon): daemon_untrusted",
                victim_socket().display()
            ),
            format!("{SYSTEM_SOCKET} (the system daemon): daemon_unavailable"),
            "Start one: `portresd` as yourself".to_string(),
            "PORTRES_SOCKET or --socket".to_string(),
        ] {
            assert!(ran.stdout.contains(&expected), "no {expected:?}: {ran}");
        }
        assert_untouched(relay);
        // And with nothing at either path: daemon_unavailable, both listed.
        std::fs::remove_dir_all(victim_socket().parent().unwrap()).unwrap();
        let ran = probe_as_victim(&[]);
        assert!(ran.stdout.contains("error daemon_unavailable\n"), "{ran}");
        assert!(
            ran.stdout.contains(&format!(
                "{} (your own daemon): daemon_unavailable",
                victim_socket().display()
            )),
            "{ran}"
        );
    }
);

named_test!(
    /// A socket the path checks would pass (the victim's own private
    /// directory, the socket chowned to the victim) whose listener is someone
    /// else: refused by the daemon's credentials. Same for the system socket
    /// answered by a non-root listener.
    sockets_answered_by_the_wrong_uid_are_refused_by_peer_credentials,
    |test| {
        let Some(_s) = scene(test)
        else {
            return;
        };
        let d = elsewhere_daemon();
        // The relay listens in its own directory; root moves the bound socket
        // into the victim's private directory and gives it to the victim.
        let relay = Relay::plant(Path::new("/tmp/other/portres.sock"), &d.socket);
        let own_dir = victim_socket().parent().unwrap().to_path_buf();
        std::fs::create_dir(&own_dir).unwrap();
        std::fs::set_permissions(&own_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::rename("/tmp/other/portres.sock", victim_socket()).unwrap();
        std::os::unix::fs::chown(&own_dir, Some(VICTIM), Some(VICTIM)).unwrap();
        std::os::unix::fs::chown(victim_socket(), Some(VICTIM), Some(VICTIM)).unwrap();
        let ran = probe_as_victim(&[]);
        assert!(ran.stdout.contains("error daemon_untrusted\n"), "{ran}");
        assert!(
            ran.stdout.contains(&format!(
                "uid {OTHER} (not root, not you), but your own daemon runs as you (uid {VICTIM})"
            )),
            "{ran}"
        );
        // The credentials are read before anything is sent.
        let saw = relay.stop();
        assert!(
            !saw.contains("client bytes"),
            "the victim sent the relay something:\n{saw}"
        );

        // The system socket, answered by a non-root listener.
        let relay = Relay::plant(Path::new("/run/other/portres.sock"), &d.socket);
        std::fs::create_dir(Path::new(SYSTEM_SOCKET).parent().unwrap()).unwrap();
        std::fs::rename("/run/other/portres.sock", SYSTEM_SOCKET).unwrap();
        std::fs::remove_dir_all(&own_dir).unwrap();
        let ran = probe_as_victim(&[]);
        assert!(ran.stdout.contains("error daemon_untrusted\n"), "{ran}");
        assert!(
            ran.stdout.contains(&format!(
                "{SYSTEM_SOCKET} (the system daemon): daemon_untrusted: refusing the socket {SYSTEM_SOCKET}: answered by pid"
            )),
            "{ran}"
        );
        assert!(
            ran.stdout.contains("but the system daemon runs as root"),
            "{ran}"
        );
        let saw = relay.stop();
        assert!(
            !saw.contains("client bytes"),
            "the victim sent the relay something:\n{saw}"
        );
    }
);

named_test!(
    the_victims_own_user_daemon_at_the_tmp_path_is_used,
    |test| {
        let Some(_s) = scene(test) else {
            return;
        };
        let mut daemon = as_uid(&bin("portresd"), &[], &[], VICTIM)
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the victim's portresd");
        let sock = victim_socket();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::os::unix::net::UnixStream::connect(&sock).is_err() {
            assert!(
                daemon.try_wait().unwrap().is_none(),
                "the victim's user-mode portresd exited"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "the victim's user-mode portresd did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let ran = probe_as_victim(&[]);
        let _ = daemon.kill();
        let _ = daemon.wait();
        assert!(ran.out.status.success(), "{ran}");
        assert!(
            ran.stdout.contains(&format!(
                "socket {}\nkind user\ndaemon-uid {VICTIM}\n",
                sock.display()
            )),
            "{ran}"
        );
        assert!(!ran.stdout.contains("passed-over"), "{ran}");
    }
);

named_test!(
    /// Unit-level: the checks by kind, in one process (root), against a
    /// listener run by another uid.
    connect_checked_refuses_by_kind_and_explicit_reports_who_answered,
    |test| {
        let Some(_s) = scene(test) else {
            return;
        };
        let d = elsewhere_daemon();
        let relay = Relay::plant(Path::new("/run/other/portres.sock"), &d.socket);
        let path = Path::new("/run/other/portres.sock");
        // Root's own user-mode socket would have to be root's.
        let e = portres::Client::connect_checked(path, portres::SocketKind::User).unwrap_err();
        assert_eq!(e.code, ErrorCode::DaemonUntrusted, "{e}");
        assert!(e.message.contains("owned by uid 65534"), "{e}");
        let e = portres::Client::connect_checked(path, portres::SocketKind::System).unwrap_err();
        assert_eq!(e.code, ErrorCode::DaemonUntrusted, "{e}");
        let c = portres::Client::connect_to(path).expect("an explicit socket is used");
        assert_eq!(c.socket_kind(), portres::SocketKind::Explicit);
        assert_eq!(c.daemon().uid, OTHER);
        assert_eq!(
            c.daemon().describe(0),
            format!("pid {}, uid {OTHER} (not root, not you)", relay.child.id())
        );
        // It works (relayed), and a second session is checked the same way.
        c.status().unwrap();
        c.connect_again().unwrap().status().unwrap();
        drop(c);
        relay.stop();
    }
);

// ---------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------

fn portres_as_victim(args: &[&str], env: &[(&str, &str)]) -> Ran {
    run(as_uid(&bin("portres"), args, env, VICTIM))
}

named_test!(
    cli_refuses_a_relay_planted_at_the_user_socket_path_and_status_says_who_answered,
    |test| {
        let Some(_s) = scene(test) else {
            return;
        };
        let d = system_daemon();
        let relay = Relay::plant(&victim_socket(), &d.socket);
        let ran = portres_as_victim(&["status"], &[]);
        assert!(ran.out.status.success(), "{ran}");
        for expected in [
            format!("socket:          {SYSTEM_SOCKET} (the system daemon)\n"),
            "daemon:          pid ".to_string(),
            ", uid 0 (root)\n".to_string(),
            format!(
                "passed over:     {} (your own daemon): daemon_untrusted: ",
                victim_socket().display()
            ),
            format!("you:             uid {VICTIM}"),
        ] {
            assert!(ran.stdout.contains(&expected), "no {expected:?}: {ran}");
        }
        let ran = portres_as_victim(&["--json", "status"], &[]);
        assert!(ran.out.status.success(), "{ran}");
        let v: serde_json::Value = serde_json::from_str(ran.stdout.trim()).expect("json");
        assert_eq!(v["socket"]["kind"], "system", "{ran}");
        assert_eq!(v["socket"]["path"], SYSTEM_SOCKET, "{ran}");
        assert_eq!(v["daemon"]["uid"], 0, "{ran}");
        assert_eq!(v["daemon"]["who"], "root", "{ran}");
        assert_eq!(v["your_uid"], VICTIM, "{ran}");
        assert!(
            v["passed_over"][0]
                .as_str()
                .is_some_and(|s| s.contains("daemon_untrusted")),
            "{ran}"
        );
        // An acquire goes to the system daemon too.
        let ran = portres_as_victim(
            &["exec", "tcp", "--", "sh", "-c", "echo $PORTRES_START"],
            &[],
        );
        assert!(ran.out.status.success(), "{ran}");
        assert_untouched(relay);
    }
);

named_test!(
    cli_without_a_system_daemon_exits_2_with_daemon_untrusted_naming_both_sockets,
    |test| {
        let Some(_s) = scene(test) else {
            return;
        };
        let d = elsewhere_daemon();
        let relay = Relay::plant(&victim_socket(), &d.socket);
        let ran = portres_as_victim(&["status"], &[]);
        assert_eq!(ran.out.status.code(), Some(2), "{ran}");
        assert!(
            ran.stderr
                .contains("portres: daemon_untrusted: no portres daemon"),
            "{ran}"
        );
        assert!(
            ran.stderr.contains(&victim_socket().display().to_string()),
            "{ran}"
        );
        assert!(ran.stderr.contains(SYSTEM_SOCKET), "{ran}");
        assert!(ran.stderr.contains("Start one"), "{ran}");
        let ran = portres_as_victim(&["--json", "acquire", "tcp", "--hold"], &[]);
        assert_eq!(ran.out.status.code(), Some(2), "{ran}");
        let v: serde_json::Value = serde_json::from_str(ran.stdout.trim()).expect("json");
        assert_eq!(v["error"]["code"], "daemon_untrusted", "{ran}");
        assert_untouched(relay);
    }
);

named_test!(
    /// Someone else's daemon named on purpose is used — and `status` says who
    /// answered.
    cli_uses_someone_elses_daemon_only_when_named_and_says_who_answered,
    |test| {
        let Some(_s) = scene(test) else {
            return;
        };
        let d = elsewhere_daemon();
        let listen = Path::new("/tmp/other/portres.sock");
        let relay = Relay::plant(listen, &d.socket);
        let by_flag = portres_as_victim(&["--socket", listen.to_str().unwrap(), "status"], &[]);
        let by_env = portres_as_victim(&["status"], &[("PORTRES_SOCKET", listen.to_str().unwrap())]);
        for ran in [&by_flag, &by_env] {
            assert!(ran.out.status.success(), "{ran}");
            assert!(
                ran.stdout.contains(&format!(
                    "socket:          {} (named by PORTRES_SOCKET or --socket)\n",
                    listen.display()
                )),
                "{ran}"
            );
            assert!(
                ran.stdout.contains(&format!(
                    "daemon:          pid {}, uid {OTHER} (not root, not you)\n",
                    relay.child.id()
                )),
                "{ran}"
            );
        }
        let ran = portres_as_victim(
            &["--json", "status"],
            &[("PORTRES_SOCKET", listen.to_str().unwrap())],
        );
        let v: serde_json::Value = serde_json::from_str(ran.stdout.trim()).expect("json");
        assert_eq!(v["socket"]["kind"], "explicit", "{ran}");
        assert_eq!(v["daemon"]["who"], "other", "{ran}");
        relay.stop();
    }
);

// ---------------------------------------------------------------------------
// The C library
// ---------------------------------------------------------------------------

const LOOKUP_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <arpa/inet.h>
#include <portres/winsock.h>

int main(int argc, char **argv) {
    (void)argc;
    ULONG64 token = 0;
    ULONG rc = LookupPersistentTcpPortReservation(htons((USHORT)atoi(argv[1])), (USHORT)atoi(argv[2]), &token);
    printf("rc=%lu token=%llu\n", (unsigned long)rc, (unsigned long long)token);
    return rc == 0 ? 0 : 1;
}
"#;

/// The lookup program, compiled against libportres.so of this build.
fn lookup_program(dir: &Path) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let lib = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
    let include = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include");
    let src = dir.join("lookup.c");
    std::fs::write(&src, LOOKUP_C).unwrap();
    let out = dir.join("lookup");
    let ran = run({
        let mut cc = Command::new("cc");
        cc.args(["-std=c11", "-Wall", "-Werror", "-I"])
            .arg(&include)
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .arg("-L")
            .arg(&lib)
            .arg("-lportres")
            .arg(format!("-Wl,-rpath,{}", lib.display()));
        cc
    });
    assert!(ran.out.status.success(), "cc: {ran}");
    out
}

named_test!(
    c_library_refuses_a_relay_planted_at_the_user_socket_path,
    |test| {
        let Some(_s) = scene(test) else {
            return;
        };
        let dir = portres_tests::open_tempdir();
        let program = lookup_program(dir.path());
        let d = system_daemon();
        let created = d
            .client()
            .create(
                Protocol::Tcp,
                5000,
                2,
                CreateOptions {
                    owner: Some(Owner::User(VICTIM)),
                    label: None,
                },
            )
            .unwrap();
        let relay = Relay::plant(&victim_socket(), &d.socket);
        // The victim's lookup falls through to the system daemon.
        let ran = run(as_uid(&program, &["5000", "2"], &[], VICTIM));
        assert!(ran.out.status.success(), "{ran}");
        assert!(
            ran.stdout
                .contains(&format!("token={}", created.token.expect("token"))),
            "{ran}"
        );
        assert_untouched(relay);
        d.stop();

        // No system daemon: ERROR_SERVICE_NOT_ACTIVE, and still nothing sent to
        // the relay.
        let d = elsewhere_daemon();
        let relay = Relay::plant(&victim_socket(), &d.socket);
        let ran = run(as_uid(&program, &["5000", "2"], &[], VICTIM));
        assert!(ran.stdout.contains("rc=1062 "), "{ran}");
        assert_untouched(relay);
    }
);

// ---------------------------------------------------------------------------
// 9.14: setuid
// ---------------------------------------------------------------------------

named_test!(
    /// A setuid-root copy of the probe, run by another user with
    /// PORTRES_SOCKET pointing at their relay and a bogus PORTRES_SESSION_FD:
    /// both are ignored (AT_SECURE), it talks to the system daemon. The same
    /// copy without the setuid bit obeys both (the test can tell).
    setuid_client_ignores_portres_socket_and_portres_session_fd,
    |test| {
        let Some(_s) = scene(test) else {
            return;
        };
        let d = system_daemon();
        let listen = Path::new("/tmp/other/portres.sock");
        let relay = Relay::plant(listen, &d.socket);
        let dir = portres_tests::open_tempdir();
        let plain = dir.path().join("probe-plain");
        let setuid = dir.path().join("probe-setuid");
        for copy in [&plain, &setuid] {
            std::fs::copy(trustkit(), copy).unwrap();
        }
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&setuid, std::fs::Permissions::from_mode(0o4755)).unwrap();
        let env = [
            ("PORTRES_SOCKET", listen.to_str().unwrap()),
            ("PORTRES_SESSION_FD", "99"),
        ];

        let ran = run(as_uid(&setuid, &["probe"], &env, OTHER));
        assert!(ran.out.status.success(), "{ran}");
        assert!(
            ran.stdout.contains(&format!(
                "socket {SYSTEM_SOCKET}\nkind system\ndaemon-uid 0\n"
            )),
            "{ran}"
        );
        // The daemon sees the effective uid (root).
        assert!(ran.stdout.contains("your-uid 0\n"), "{ran}");
        assert_untouched(relay);

        // Control: without the bit both variables count.
        let relay = Relay::plant(listen, &d.socket);
        let ran = run(as_uid(&plain, &["probe"], &env, OTHER));
        assert!(ran.stdout.contains("error invalid_parameter\n"), "{ran}");
        assert!(ran.stdout.contains("PORTRES_SESSION_FD=99"), "{ran}");
        let ran = run(as_uid(&plain, &["probe"], &env[..1], OTHER));
        let saw = relay.stop();
        assert!(ran.out.status.success(), "{ran}\nthe relay saw:\n{saw}");
        assert!(ran.stdout.contains("kind explicit\n"), "{ran}");
        assert!(saw.contains("connection"), "{saw}");
    }
);
