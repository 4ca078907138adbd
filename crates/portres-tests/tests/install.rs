//! `scripts/install` and `scripts/uninstall`: an install into a DESTDIR
//! whose binaries, library, header and man pages are used from there (the
//! installed daemon serving the installed CLI in a private network
//! namespace), a removal that leaves no file behind, and the installed
//! systemd units (system and user) passing `systemd-analyze verify`.
//!
//! The binaries come from this build's target directory (`--from`), so the
//! tests need `cargo build --workspace` first, like every CLI test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use portres_tests::{bin, open_tempdir};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The directory of this build's binaries and libraries (target/debug).
fn built() -> PathBuf {
    bin("portres").parent().expect("target dir").to_path_buf()
}

/// Runs `cmd`, asserts success, returns stdout.
#[track_caller]
fn ok(cmd: impl std::borrow::BorrowMut<Command>) -> String {
    let mut cmd = cmd;
    let cmd: &mut Command = cmd.borrow_mut();
    let what = format!("{cmd:?}");
    let out = cmd.stdin(Stdio::null()).output().expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn install(args: &[&str]) -> Command {
    let mut c = Command::new(repo().join("scripts/install"));
    c.arg("--from").arg(built()).args(args);
    c
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten() {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

nstest!(
    install_into_a_destdir_runs_from_there_and_uninstall_removes_it,
    |_| {
        let stage = open_tempdir();
        let destdir = stage.path().join("dest");
        let d = destdir.to_str().expect("utf-8 path");
        ok(install(&["--destdir", d, "--prefix", "/usr/local"]));
        let root = destdir.join("usr/local");
        for f in [
            "bin/portres",
            "bin/portresd",
            "lib/libportres.so",
            "lib/libportres.a",
            "include/portres/winsock.h",
            "lib/systemd/system/portresd.service",
            "lib/systemd/user/portresd.service",
            "lib/systemd/system/portresd.socket",
            "lib/systemd/user/portresd.socket",
            "share/man/man1/portres.1",
            "share/man/man1/portres-acquire.1",
            "share/man/man8/portresd.8",
            "share/bash-completion/completions/portres",
            "share/zsh/site-functions/_portres",
            "share/fish/vendor_completions.d/portres.fish",
            "share/bash-completion/completions/portresd",
        ] {
            assert!(root.join(f).is_file(), "{f} not installed");
        }
        // The unit names the installed path (the prefix, not the DESTDIR).
        let unit =
            std::fs::read_to_string(root.join("lib/systemd/system/portresd.service")).unwrap();
        assert!(
            unit.contains("\nExecStart=/usr/local/bin/portresd\n"),
            "{unit}"
        );

        // The installed binaries work from there.
        let portres = root.join("bin/portres");
        let portresd = root.join("bin/portresd");
        let version = format!("portres {}", env!("CARGO_PKG_VERSION"));
        assert_eq!(ok(Command::new(&portres).arg("--version")).trim(), version);
        assert_eq!(
            ok(Command::new(&portresd).arg("--version")).trim(),
            format!("portresd {}", env!("CARGO_PKG_VERSION"))
        );
        let run = stage.path().join("run");
        std::fs::create_dir(&run).unwrap();
        let socket = run.join("portres.sock");
        let mut daemon = Command::new(&portresd)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(run.join("state"))
            .args(["--kernel-sync", "on"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("installed portresd");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "the installed portresd never listened"
            );
            assert!(
                daemon.try_wait().unwrap().is_none(),
                "the installed portresd exited"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut acquire = Command::new(&portres);
        acquire
            .arg("--socket")
            .arg(&socket)
            .args(["--json", "acquire", "tcp", "-c", "2", "--timeout", "1ms"])
            .env_remove("PORTRES_SOCKET");
        let v: serde_json::Value = serde_json::from_str(&ok(acquire)).expect("JSON");
        assert_eq!(v["result"], "acquired", "{v}");
        assert_eq!(v["kernel_reserved"], true, "{v}");

        // A C program builds against the installed header and library.
        if Command::new("cc").arg("--version").output().is_ok() {
            let src = stage.path().join("prog.c");
            std::fs::write(
            &src,
            "#include <portres/winsock.h>\nint main(void) { WSADATA d; return WSAStartup(MAKEWORD(2, 2), &d); }\n",
        )
        .unwrap();
            let exe = stage.path().join("prog");
            let mut cc = Command::new("cc");
            cc.arg(&src)
                .arg("-I")
                .arg(root.join("include"))
                .arg("-L")
                .arg(root.join("lib"))
                .arg("-lportres")
                .arg("-o")
                .arg(&exe);
            ok(cc);
            let mut prog = Command::new(&exe);
            prog.env("LD_LIBRARY_PATH", root.join("lib"));
            ok(prog);
        }
        // The man pages render.
        if Command::new("man").arg("--version").output().is_ok() {
            for (page, name) in [
                ("share/man/man1/portres.1", "portres"),
                ("share/man/man1/portres-acquire.1", "--hold"),
                ("share/man/man8/portresd.8", "portresd"),
            ] {
                let mut man = Command::new("man");
                man.arg("-l")
                    .arg(root.join(page))
                    .env("MANPAGER", "cat")
                    .env("PAGER", "cat");
                let text = ok(man);
                assert!(text.contains(name), "{page}: {text}");
            }
        }
        let _ = daemon.kill();
        let _ = daemon.wait();

        // Uninstall: every file gone.
        let mut uninstall = Command::new(repo().join("scripts/uninstall"));
        uninstall.args(["--destdir", d, "--prefix", "/usr/local"]);
        ok(uninstall);
        assert_eq!(files_under(&destdir), Vec::<PathBuf>::new());
    }
);

named_test!(installed_units_pass_systemd_analyze_verify, |test| {
    let Some(analyze) = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .find(|p| Path::new(p).exists())
    else {
        portres_tests::skip(test, "no systemd-analyze (.ci/run installs systemd)");
        return;
    };
    // Installed into a real prefix (no DESTDIR), so ExecStart names a file
    // that exists and verify can check it.
    let stage = open_tempdir();
    let prefix = stage.path().join("prefix");
    ok(install(&["--prefix", prefix.to_str().expect("utf-8")]));
    // verify also checks the units' Documentation= pages: the installed
    // ones, through MANPATH (`--man=no` where man itself is missing).
    let man = Command::new("man").arg("--version").output().is_ok();
    let xdg = stage.path().join("xdg");
    std::fs::create_dir(&xdg).unwrap();
    for (unit, user) in [
        ("lib/systemd/system/portresd.service", false),
        ("lib/systemd/system/portresd.socket", false),
        ("lib/systemd/user/portresd.service", true),
        ("lib/systemd/user/portresd.socket", true),
    ] {
        let mut verify = Command::new(analyze);
        if user {
            verify.arg("--user").env("XDG_RUNTIME_DIR", &xdg);
        }
        verify.arg("verify");
        if !man {
            verify.arg("--man=no");
        }
        verify
            .arg(prefix.join(unit))
            .env(
                "MANPATH",
                format!("{}:", prefix.join("share/man").display()),
            )
            .env("SYSTEMD_LOG_LEVEL", "notice");
        let out = verify.output().expect("systemd-analyze");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{unit}: systemd-analyze verify: {}\n{stderr}",
            out.status
        );
    }
    // The ordering of the nftables.service pattern (no cycle with
    // network-pre.target on cloud-init style hosts).
    let unit = std::fs::read_to_string(prefix.join("lib/systemd/system/portresd.service")).unwrap();
    for line in [
        "DefaultDependencies=no",
        "After=local-fs.target",
        "Before=network-pre.target shutdown.target",
        "Conflicts=shutdown.target",
        "Type=notify",
        "RuntimeDirectoryPreserve=yes",
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line:?} in the unit");
    }
    let user_unit =
        std::fs::read_to_string(prefix.join("lib/systemd/user/portresd.service")).unwrap();
    assert!(user_unit.lines().any(|l| l == "Type=notify"), "{user_unit}");
    // The socket units pass the socket under the name portresd takes.
    for socket in [
        "lib/systemd/system/portresd.socket",
        "lib/systemd/user/portresd.socket",
    ] {
        let text = std::fs::read_to_string(prefix.join(socket)).unwrap();
        let name = format!("FileDescriptorName={}", portres_daemon::CLIENT_SOCKET_NAME);
        assert!(text.lines().any(|l| l == name), "{socket}: no {name:?}");
    }
    let socket =
        std::fs::read_to_string(prefix.join("lib/systemd/system/portresd.socket")).unwrap();
    for line in ["ListenStream=/run/portres/portres.sock", "SocketMode=0666"] {
        assert!(
            socket.lines().any(|l| l == line),
            "no {line:?} in portresd.socket"
        );
    }
    assert!(
        unit.contains(&format!(
            "\nExecStart={}\n",
            prefix.join("bin/portresd").display()
        )),
        "{unit}"
    );
});
