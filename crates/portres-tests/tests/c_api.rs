//! The C library (`libportres.so`, `libportres.a`, `include/portres/winsock.h`)
//! driven by real C programs against a real daemon, each test in its own
//! private network namespace: the two example programs of `examples/c/`
//! (built against the shared and the static library), and the conformance
//! program `crates/portres-c/tests/c/conformance.c` under AddressSanitizer,
//! LeakSanitizer and UBSan, as an administrator, as an unprivileged user and
//! without a daemon. The programs are compiled with the system's `cc`
//! against the library of this build profile, which `cargo build
//! --workspace` (the test command's first step) produces.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use portres::{CreateOptions, Owner, Protocol};
use portres_tests::{InProcessDaemon, ProcessDaemon, as_user, cli, netns, open_tempdir, run};

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

/// `target/<profile>`, where `libportres.{so,a}` are built.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for lib in ["libportres.so", "libportres.a"] {
        assert!(
            dir.join(lib).exists(),
            "{} is not built: run `cargo build --workspace` (or `cargo build -p portres-c`) before the tests",
            dir.join(lib).display()
        );
    }
    dir
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Link {
    Shared,
    Static,
}

/// Compiles a C program of the repository against libportres, into `dir`.
fn compile(source: &str, link: Link, sanitize: bool, dir: &Path) -> PathBuf {
    let root = repo_root();
    let lib = lib_dir();
    let stem = Path::new(source).file_stem().unwrap().to_str().unwrap();
    let out = dir.join(format!(
        "{stem}-{link:?}{}",
        if sanitize { "-asan" } else { "" }
    ));
    let mut cc = Command::new("cc");
    cc.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-pthread"])
        .arg("-I")
        .arg(root.join("include"))
        .arg(root.join(source))
        .arg("-o")
        .arg(&out);
    if sanitize {
        cc.args([
            "-fsanitize=address,undefined",
            "-fno-sanitize-recover=undefined",
            "-fno-omit-frame-pointer",
        ]);
    }
    match link {
        Link::Shared => {
            cc.arg("-L")
                .arg(&lib)
                .arg("-lportres")
                .arg(format!("-Wl,-rpath,{}", lib.display()));
        }
        Link::Static => {
            // What `rustc --print native-static-libs` lists for the library.
            cc.arg(lib.join("libportres.a")).args([
                "-lgcc_s",
                "-lutil",
                "-lrt",
                "-lpthread",
                "-lm",
                "-ldl",
                "-lc",
            ]);
        }
    }
    let (o, stdout, stderr) = run(cc);
    assert!(
        o.status.success(),
        "cc {source} ({link:?}) failed:\n{stdout}{stderr}"
    );
    out
}

fn program(bin: &Path, socket: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env("PORTRES_SOCKET", socket)
        .env_remove("PORTRES_SESSION_FD")
        .env(
            "ASAN_OPTIONS",
            "detect_leaks=1:halt_on_error=1:abort_on_error=0",
        )
        .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1");
    cmd
}

fn check(what: &str, out: &Output, stdout: &str, stderr: &str) {
    assert!(
        out.status.success(),
        "{what}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("Sanitizer"),
        "{what}: sanitizer report:\n{stderr}"
    );
}

/// The value after `key` on the first line that has it, up to a comma or
/// the end of the line.
fn field(stdout: &str, key: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.contains(key))
        .unwrap_or_else(|| panic!("no {key:?} in:\n{stdout}"));
    let rest = &line[line.find(key).unwrap() + key.len()..];
    rest.split(',')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{key:?} in {line:?}: {e}"))
}

fn assert_no_reservations(d: &InProcessDaemon) {
    let left = d.client().list(None).unwrap();
    assert!(left.is_empty(), "reservations left behind: {left:?}");
}

#[test]
fn runtime_example_binds_into_its_block_shared_and_static() {
    let Some(_ns) = netns("runtime_example_binds_into_its_block_shared_and_static") else {
        return;
    };
    let d = InProcessDaemon::start(|_| {});
    let dir = open_tempdir();
    for link in [Link::Shared, Link::Static] {
        let bin = compile("examples/c/runtime_reservation.c", link, false, dir.path());
        // AF_INET, SOCK_STREAM, IPPROTO_TCP, any block of 5; the reference
        // page's UDP example (5000, 20); a specific TCP block.
        for (args, start) in [
            (["2", "1", "6", "0", "5"], None),
            (["2", "2", "17", "5000", "20"], Some(5000)),
            (["2", "1", "6", "40000", "3"], Some(40000)),
        ] {
            let what = format!("runtime_reservation {} ({link:?})", args.join(" "));
            let (out, stdout, stderr) = run(program(&bin, &d.socket, &args));
            check(&what, &out, &stdout, &stderr);
            let first = field(&stdout, "Starting port=");
            let count = field(&stdout, "Number of Ports=");
            let port = field(&stdout, "Port number allocated = ");
            assert_eq!(count, args[4].parse::<u64>().unwrap(), "{what}");
            if let Some(start) = start {
                assert_eq!(first, start, "{what}");
            }
            assert!(
                (first..first + count).contains(&port),
                "{what}: port {port} outside {first}+{count}\n{stdout}"
            );
            assert_eq!(field(&stdout, "bytesReturned = "), 16, "{what}");
            assert_no_reservations(&d);
        }
    }
}

#[test]
fn persistent_example_binds_into_its_block_shared_and_static() {
    let Some(_ns) = netns("persistent_example_binds_into_its_block_shared_and_static") else {
        return;
    };
    let d = InProcessDaemon::start(|_| {});
    let dir = open_tempdir();
    for link in [Link::Shared, Link::Static] {
        let bin = compile(
            "examples/c/persistent_reservation.c",
            link,
            false,
            dir.path(),
        );
        let what = format!("persistent_reservation 5000 20 ({link:?})");
        let (out, stdout, stderr) = run(program(&bin, &d.socket, &["5000", "20"]));
        check(&what, &out, &stdout, &stderr);
        let port = field(&stdout, "Port number allocated = ");
        assert!(
            (5000..5020).contains(&port),
            "{what}: port {port}\n{stdout}"
        );
        assert!(
            stdout.contains("DeletePersistentTcpPortReservation call succeeded"),
            "{what}\n{stdout}"
        );
        assert_no_reservations(&d);
    }
    // Not an administrator: ERROR_ACCESS_DENIED, as on Windows.
    let bin = compile(
        "examples/c/persistent_reservation.c",
        Link::Shared,
        false,
        dir.path(),
    );
    let (out, stdout, _) = run(as_user(
        &program(&bin, &d.socket, &["5000", "20"]),
        NOBODY,
        NOGROUP,
        &[],
    ));
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("CreatePersistentTcpPortReservation returned error: 5"),
        "{stdout}"
    );
    assert_no_reservations(&d);
}

fn conformance(link: Link, sanitize: bool, dir: &Path) -> PathBuf {
    compile(
        "crates/portres-c/tests/c/conformance.c",
        link,
        sanitize,
        dir,
    )
}

fn assert_all_passed(what: &str, stdout: &str) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("conformance: "))
        .unwrap_or_else(|| panic!("{what}: no summary:\n{stdout}"));
    assert!(
        line.ends_with(" passed, 0 failed"),
        "{what}: {line}\n{stdout}"
    );
}

#[test]
fn conformance_as_administrator_under_sanitizers() {
    let Some(_ns) = netns("conformance_as_administrator_under_sanitizers") else {
        return;
    };
    let d = InProcessDaemon::start(|_| {});
    let dir = open_tempdir();
    let bin = conformance(Link::Shared, true, dir.path());
    let (out, stdout, stderr) = run(program(&bin, &d.socket, &["admin"]));
    check("conformance admin", &out, &stdout, &stderr);
    assert_all_passed("conformance admin", &stdout);
    assert_no_reservations(&d);
}

#[test]
fn conformance_as_administrator_linked_statically() {
    let Some(_ns) = netns("conformance_as_administrator_linked_statically") else {
        return;
    };
    let d = InProcessDaemon::start(|_| {});
    let dir = open_tempdir();
    let bin = conformance(Link::Static, false, dir.path());
    let (out, stdout, stderr) = run(program(&bin, &d.socket, &["admin"]));
    check("conformance admin (static)", &out, &stdout, &stderr);
    assert_all_passed("conformance admin (static)", &stdout);
    assert_no_reservations(&d);
}

#[test]
fn conformance_as_unprivileged_user_under_sanitizers() {
    let Some(_ns) = netns("conformance_as_unprivileged_user_under_sanitizers") else {
        return;
    };
    let d = InProcessDaemon::start(|c| c.quota = 8);
    let root = d.client();
    let persistent = root
        .create(Protocol::Tcp, 23000, 1, CreateOptions::default())
        .unwrap();
    root.create(
        Protocol::Tcp,
        80,
        1,
        CreateOptions {
            owner: Some(Owner::User(NOBODY)),
            label: None,
        },
    )
    .unwrap();
    let foreign = root.acquire(Protocol::Tcp, 0, 2).unwrap();
    let dir = open_tempdir();
    let bin = conformance(Link::Shared, true, dir.path());
    let args = [
        "user".to_string(),
        "23000".to_string(),
        persistent.token.unwrap().to_string(),
        foreign.token().to_string(),
        "80".to_string(),
    ];
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (out, stdout, stderr) = run(as_user(
        &program(&bin, &d.socket, &args),
        NOBODY,
        NOGROUP,
        &[],
    ));
    check("conformance user", &out, &stdout, &stderr);
    assert_all_passed("conformance user", &stdout);
    // The foreign reservation is untouched; the user's own ones ended.
    let left = root.list(None).unwrap();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.iter().any(|r| r.token == Some(foreign.token())));
}

#[test]
fn conformance_without_a_daemon_under_sanitizers() {
    let dir = open_tempdir();
    let bin = conformance(Link::Shared, true, dir.path());
    let missing = dir.path().join("no-daemon-here.sock");
    let (out, stdout, stderr) = run(program(&bin, &missing, &["nodaemon"]));
    check("conformance nodaemon", &out, &stdout, &stderr);
    assert_all_passed("conformance nodaemon", &stdout);
}

#[test]
fn conformance_under_portres_exec_binds_into_the_exec_reservation() {
    let Some(_ns) = netns("conformance_under_portres_exec_binds_into_the_exec_reservation") else {
        return;
    };
    let d = InProcessDaemon::start(|_| {});
    let dir = open_tempdir();
    let bin = conformance(Link::Shared, true, dir.path());
    let mut exec = cli(&d.socket);
    exec.args(["exec", "tcp", "--count", "3", "--"])
        .arg(&bin)
        .arg("exec")
        .env("ASAN_OPTIONS", "detect_leaks=1:halt_on_error=1")
        .env("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1");
    let (out, stdout, stderr) = run(exec);
    check("portres exec -- conformance exec", &out, &stdout, &stderr);
    assert_all_passed("conformance exec", &stdout);
    assert_no_reservations(&d);
}

#[test]
fn conformance_reconnects_after_a_daemon_restart() {
    let Some(_ns) = netns("conformance_reconnects_after_a_daemon_restart") else {
        return;
    };
    let dir = open_tempdir();
    let daemon = ProcessDaemon::start(dir.path(), &[]);
    let socket = daemon.socket.clone();
    let bin = conformance(Link::Shared, true, dir.path());
    let mut child = program(&bin, &socket, &["restart"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn conformance restart");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "before the restart: {line}");
    daemon.terminate();
    let daemon = ProcessDaemon::start(dir.path(), &[]);
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut rest = String::new();
    stdout.read_to_string(&mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    check("conformance restart", &out, &rest, &stderr);
    assert_all_passed("conformance restart", &rest);
    assert!(daemon.client().list(None).unwrap().is_empty());
}

#[test]
fn header_compiles_as_c_and_cpp_with_and_without_compat() {
    let root = repo_root();
    let dir = open_tempdir();
    let src = dir.path().join("use.c");
    std::fs::write(
        &src,
        "#include <portres/winsock.h>\n\
         int main(void) {\n\
             SOCKADDR_IN sin; int len = (int)sizeof sin;\n\
             INET_PORT_RESERVATION_INSTANCE res = {{0, 0}, {0}};\n\
             SOCKET s = socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);\n\
             DWORD n = 0;\n\
             (void)WSAIoctl(s, SIO_ACQUIRE_PORT_RESERVATION, &res.Reservation, sizeof res.Reservation, &res, sizeof res, &n, NULL, NULL);\n\
             return getsockname(s, (SOCKADDR *)&sin, &len) + (int)res.Token.Token;\n\
         }\n",
    )
    .unwrap();
    let cpp = dir.path().join("use.cc");
    std::fs::copy(&src, &cpp).unwrap();
    let include = root.join("include");
    let cases: Vec<(&str, Vec<&str>, &Path)> = vec![
        ("cc", vec!["-std=c11", "-Wpedantic"], &src),
        ("cc", vec!["-std=c99"], &src),
        (
            "cc",
            vec!["-std=gnu17", "-DPORTRES_NO_SOCKADDR_TYPEDEFS"],
            &src,
        ),
        ("c++", vec!["-std=c++11"], &cpp),
        (
            "c++",
            vec!["-std=c++17", "-DPORTRES_NO_WINSOCK_COMPAT"],
            &cpp,
        ),
    ];
    for (compiler, flags, file) in cases {
        let mut cmd = Command::new(compiler);
        cmd.args(["-fsyntax-only", "-Wall", "-Wextra", "-Werror"])
            .args(&flags)
            .arg("-I")
            .arg(&include)
            .arg(file);
        if compiler == "c++" {
            // Winsock's own headers need this in C++ too: `= {0}` style
            // initialisers are idiomatic there.
            cmd.arg("-Wno-missing-field-initializers");
        }
        let (out, stdout, stderr) = run(cmd);
        // Without the compat layer, int * for socklen_t * is an error in C++.
        let expect_ok = !flags.contains(&"-DPORTRES_NO_WINSOCK_COMPAT");
        assert_eq!(
            out.status.success(),
            expect_ok,
            "{compiler} {flags:?}:\n{stdout}{stderr}"
        );
    }
}
