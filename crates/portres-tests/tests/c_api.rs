//! The C library (`libportres.so`, `libportres.a`, `include/portres/winsock.h`)
//! driven by real C programs against a real daemon, each test in its own
//! private network namespace: the two example programs of `examples/c/`
//! (built against the shared and the static library), and the conformance
//! program `crates/portres-c/tests/c/conformance.c` under AddressSanitizer,
//! LeakSanitizer and UBSan, as an administrator, as an unprivileged user and
//! without a daemon. The programs are compiled with the system's `cc`
//! against the library of this build profile, which `cargo build
//! --workspace` (the test command's first step) produces.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

use portres::{CreateOptions, Owner, Protocol};
use portres_tests::{InProcessDaemon, ProcessDaemon, as_user, cli, open_tempdir, run};

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

/// The language a program is compiled as, with the lowest level the
/// header claims (README "Porting").
#[derive(Clone, Copy, Debug, PartialEq)]
enum Lang {
    C,
    Cxx,
}

impl Lang {
    fn driver(self) -> &'static str {
        match self {
            Lang::C => "cc",
            Lang::Cxx => "c++",
        }
    }

    fn args(self) -> [&'static str; 3] {
        match self {
            Lang::C => ["-x", "c", "-std=c11"],
            Lang::Cxx => ["-x", "c++", "-std=c++11"],
        }
    }
}

/// Compiles a C program of the repository against libportres, into `dir`.
fn compile(source: &str, link: Link, sanitize: bool, dir: &Path) -> PathBuf {
    let (bin, _) = compile_as(&repo_root().join(source), Lang::C, link, sanitize, dir, &[]);
    bin
}

/// Compiles `source` as `lang` with `-Wall -Wextra -Werror` (and `extra`)
/// against libportres, into `dir`; returns the program and the compiler's
/// diagnostics (warnings `extra` keeps from being errors).
///
/// Builds are cached for the whole test process by what goes into them
/// (source, language, link kind, sanitizers, flags): the tests build the
/// same programs many times, and a sanitizer build is slow. `dir` only
/// matters to sources that live in it (a test's own edited copies).
fn compile_as(
    source: &Path,
    lang: Lang,
    link: Link,
    sanitize: bool,
    _dir: &Path,
    extra: &[&str],
) -> (PathBuf, String) {
    type Key = (PathBuf, String, Vec<String>);
    type Built = Arc<OnceLock<(PathBuf, String)>>;
    static BUILDS: Mutex<BTreeMap<Key, Built>> = Mutex::new(BTreeMap::new());
    let key = (
        source.to_path_buf(),
        format!("{lang:?}-{link:?}-{sanitize}"),
        extra.iter().map(|s| s.to_string()).collect(),
    );
    let (slot, n) = {
        let mut builds = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
        let n = builds.len();
        (builds.entry(key).or_default().clone(), n)
    };
    // Others asking for the same build wait here instead of compiling it
    // again; different builds go on in parallel.
    slot.get_or_init(|| {
        build(
            source,
            lang,
            link,
            sanitize,
            &build_dir().join(n.to_string()),
            extra,
        )
    })
    .clone()
}

/// Where this test process keeps its C builds: under cargo's
/// CARGO_TARGET_TMPDIR, one directory per process; those of processes that
/// have exited are removed first.
fn build_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        if let Ok(entries) = std::fs::read_dir(tmp) {
            for e in entries.flatten() {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if let Some(pid) = name.strip_prefix("c-builds-")
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = tmp.join(format!("c-builds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("C build directory");
        // Test programs run as other users too.
        std::fs::set_permissions(tmp, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        dir
    })
}

/// One uncached build of [`compile_as`], into `dir` (created).
fn build(
    source: &Path,
    lang: Lang,
    link: Link,
    sanitize: bool,
    dir: &Path,
    extra: &[&str],
) -> (PathBuf, String) {
    std::fs::create_dir_all(dir).expect("C build directory");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let root = repo_root();
    let lib = lib_dir();
    let stem = source.file_stem().unwrap().to_str().unwrap();
    let out = dir.join(format!(
        "{stem}-{lang:?}-{link:?}{}",
        if sanitize { "-asan" } else { "" }
    ));
    let mut cc = Command::new(lang.driver());
    cc.args(lang.args())
        .args(["-Wall", "-Wextra", "-Werror", "-g", "-pthread"])
        .args(extra)
        .arg("-I")
        .arg(root.join("include"))
        .arg(source)
        // Back to "by extension" for the libraries that follow.
        .args(["-x", "none"])
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
        "{} {} ({lang:?}, {link:?}) failed:\n{stdout}{stderr}",
        lang.driver(),
        source.display()
    );
    (out, stderr)
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

/// Runs the runtime reservation example (the page's program or
/// examples/c's) with `args` (family, type, protocol, start, count) and
/// checks what it prints: a block of `count` ports, at `start` if given,
/// and a bound port inside it. Returns its output.
fn check_runtime_run(
    bin: &Path,
    d: &InProcessDaemon,
    args: &[&str; 5],
    start: Option<u64>,
    what: &str,
) -> String {
    let what = format!("{what} {}", args.join(" "));
    let (out, stdout, stderr) = run(program(bin, &d.socket, args));
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
    assert_no_reservations(d);
    stdout
}

/// Runs the persistent reservation example with 5000 20 and checks that
/// it bound a port of 5000-5019 and deleted the reservation.
fn check_persistent_run(bin: &Path, d: &InProcessDaemon, what: &str) {
    let (out, stdout, stderr) = run(program(bin, &d.socket, &["5000", "20"]));
    check(what, &out, &stdout, &stderr);
    let port = field(&stdout, "Port number allocated = ");
    assert!(
        (5000..5020).contains(&port),
        "{what}: port {port}\n{stdout}"
    );
    assert!(
        stdout.contains("DeletePersistentTcpPortReservation call succeeded"),
        "{what}\n{stdout}"
    );
    assert_no_reservations(d);
}

nstest!(
    runtime_example_binds_into_its_block_shared_and_static,
    |_| {
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
                let what = format!("runtime_reservation ({link:?})");
                let stdout = check_runtime_run(&bin, &d, &args, start, &what);
                assert_eq!(field(&stdout, "bytesReturned = "), 16, "{what}");
            }
        }
    }
);

nstest!(
    persistent_example_binds_into_its_block_shared_and_static,
    |_| {
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
            check_persistent_run(&bin, &d, &what);
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
);

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

nstest!(conformance_as_administrator_under_sanitizers, |_| {
    let d = InProcessDaemon::start(|_| {});
    let dir = open_tempdir();
    let bin = conformance(Link::Shared, true, dir.path());
    let (out, stdout, stderr) = run(program(&bin, &d.socket, &["admin"]));
    check("conformance admin", &out, &stdout, &stderr);
    assert_all_passed("conformance admin", &stdout);
    assert_no_reservations(&d);
});

nstest!(conformance_as_administrator_linked_statically, |_| {
    let d = InProcessDaemon::start(|_| {});
    let dir = open_tempdir();
    let bin = conformance(Link::Static, false, dir.path());
    let (out, stdout, stderr) = run(program(&bin, &d.socket, &["admin"]));
    check("conformance admin (static)", &out, &stdout, &stderr);
    assert_all_passed("conformance admin (static)", &stdout);
    assert_no_reservations(&d);
});

nstest!(conformance_as_unprivileged_user_under_sanitizers, |_| {
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
});

#[test]
fn conformance_without_a_daemon_under_sanitizers() {
    let dir = open_tempdir();
    let bin = conformance(Link::Shared, true, dir.path());
    let missing = dir.path().join("no-daemon-here.sock");
    let (out, stdout, stderr) = run(program(&bin, &missing, &["nodaemon"]));
    check("conformance nodaemon", &out, &stdout, &stderr);
    assert_all_passed("conformance nodaemon", &stdout);
}

nstest!(
    conformance_under_portres_exec_binds_into_the_exec_reservation,
    |_| {
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
);

nstest!(conformance_reconnects_after_a_daemon_restart, |_| {
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
});

/// `-fsyntax-only` of `source` with the header: the command's outcome.
fn syntax_check(source: &Path, compiler: &str, flags: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(compiler);
    cmd.args(["-fsyntax-only", "-Wall", "-Wextra", "-Werror"])
        .args(flags)
        .arg("-I")
        .arg(repo_root().join("include"))
        .arg(source);
    let (out, stdout, stderr) = run(cmd);
    (out.status.success(), format!("{stdout}{stderr}"))
}

#[test]
fn header_compiles_at_every_claimed_language_level_and_refuses_older_ones() {
    let shapes = repo_root().join("crates/portres-c/tests/c/shapes.c");
    // The claim (README "Porting", the header's banner): C11 and later,
    // C++11 and later; pedantically clean at each.
    for std in ["c11", "c17", "c2x", "gnu11", "gnu17"] {
        let (ok, out) = syntax_check(
            &shapes,
            "cc",
            &["-x", "c", &format!("-std={std}"), "-Wpedantic"],
        );
        assert!(ok, "-std={std}:\n{out}");
    }
    for std in ["c++11", "c++14", "c++17", "c++20", "gnu++17"] {
        let (ok, out) = syntax_check(
            &shapes,
            "c++",
            &["-x", "c++", &format!("-std={std}"), "-Wpedantic"],
        );
        assert!(ok, "-std={std}:\n{out}");
    }
    // Older levels stop at the header's #error, not somewhere inside it.
    for (compiler, lang, std, says) in [
        ("cc", "c", "c99", "needs C11 or later"),
        ("cc", "c", "gnu99", "needs C11 or later"),
        ("cc", "c", "c89", "needs C11 or later"),
        ("c++", "c++", "c++98", "needs C++11 or later"),
        ("c++", "c++", "c++03", "needs C++11 or later"),
    ] {
        let (ok, out) = syntax_check(&shapes, compiler, &["-x", lang, &format!("-std={std}")]);
        assert!(!ok && out.contains(says), "-std={std}:\n{out}");
    }
    // Linux's own headers, before and after it (IOC_IN, FIONBIO, u_long
    // and the like are theirs).
    let dir = open_tempdir();
    let linux = "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n\
                 #include <wchar.h>\n#include <unistd.h>\n#include <fcntl.h>\n\
                 #include <poll.h>\n#include <signal.h>\n#include <pthread.h>\n\
                 #include <sys/types.h>\n#include <sys/ioctl.h>\n#include <sys/socket.h>\n\
                 #include <sys/epoll.h>\n#include <sys/un.h>\n#include <netinet/in.h>\n\
                 #include <netinet/tcp.h>\n#include <netinet/udp.h>\n#include <arpa/inet.h>\n\
                 #include <net/if.h>\n#include <netdb.h>\n";
    let ours = "#include <portres/winsock.h>\n";
    let body = "int main(void) { u_long on = 1; return ioctlsocket(0, FIONBIO, &on); }\n";
    for (name, text) in [
        ("before.c", format!("{linux}{ours}{body}")),
        ("after.c", format!("{ours}{linux}{body}")),
    ] {
        let tu = dir.path().join(name);
        std::fs::write(&tu, text).unwrap();
        for (compiler, flags) in [
            ("cc", ["-x", "c", "-std=c11"]),
            ("cc", ["-x", "c", "-std=gnu17"]),
            ("c++", ["-x", "c++", "-std=c++17"]),
        ] {
            let mut flags = flags.to_vec();
            flags.push("-Wpedantic");
            let (ok, out) = syntax_check(&tu, compiler, &flags);
            assert!(ok, "{name} {flags:?}:\n{out}");
        }
    }
    // The opt-outs: without the sockaddr typedefs C still compiles; without
    // the compat layer, int * for socklen_t * is an error in C++.
    let (ok, out) = syntax_check(
        &shapes,
        "cc",
        &["-x", "c", "-std=gnu17", "-DPORTRES_NO_SOCKADDR_TYPEDEFS"],
    );
    assert!(ok, "PORTRES_NO_SOCKADDR_TYPEDEFS:\n{out}");
    let (ok, out) = syntax_check(
        &shapes,
        "c++",
        &["-x", "c++", "-std=c++17", "-DPORTRES_NO_WINSOCK_COMPAT"],
    );
    assert!(
        !ok && out.contains("getsockname"),
        "PORTRES_NO_WINSOCK_COMPAT:\n{out}"
    );
}

nstest!(instance_shapes_of_c_and_cpp_read_a_real_reservation, |_| {
    let d = InProcessDaemon::start(|_| {});
    let dir = open_tempdir();
    let source = repo_root().join("crates/portres-c/tests/c/shapes.c");
    for lang in [Lang::C, Lang::Cxx] {
        for (link, sanitize) in [(Link::Shared, true), (Link::Static, false)] {
            let (bin, _) = compile_as(&source, lang, link, sanitize, dir.path(), &["-Wpedantic"]);
            let what = format!("shapes ({lang:?}, {link:?})");
            let (out, stdout, stderr) = run(program(&bin, &d.socket, &[]));
            check(&what, &out, &stdout, &stderr);
            let name = if lang == Lang::C { "(C)" } else { "(C++)" };
            assert!(stdout.contains(name), "{what}: {stdout}");
            let start = field(&stdout, "start=");
            let port = field(&stdout, "port=");
            assert_eq!(field(&stdout, "count="), 3, "{what}: {stdout}");
            assert!((start..start + 3).contains(&port), "{what}: {stdout}");
            assert_no_reservations(&d);
        }
    }
});

/// The repository's copies of the two reference pages with example
/// programs (`../shared/seeds/002_…` and `004_…`, kept byte for byte so
/// that a checkout alone can run the seed test).
fn seed_copy(name: &str) -> Vec<u8> {
    let path = repo_root().join("crates/portres-c/tests/seeds").join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const SEED_RUNTIME: &str = "002_c880149b58dde2db.txt";
const SEED_PERSISTENT: &str = "004_053eff0aaa91761c.txt";

#[test]
fn seed_copies_are_the_reference_pages_byte_for_byte() {
    // The project's seeds sit next to the checkout (../shared/seeds from
    // the main checkout, ../../shared/seeds from a worktree).
    let root = repo_root();
    let Some(dir) = [
        root.join("../shared/seeds"),
        root.join("../../shared/seeds"),
    ]
    .into_iter()
    .find(|d| d.join(SEED_RUNTIME).exists()) else {
        eprintln!("note: no ../shared/seeds next to this checkout; the copies are not compared");
        return;
    };
    for name in [SEED_RUNTIME, SEED_PERSISTENT] {
        let original = std::fs::read(dir.join(name)).unwrap();
        assert!(
            original == seed_copy(name),
            "crates/portres-c/tests/seeds/{name} differs from {}",
            dir.join(name).display()
        );
    }
}

/// The example program of a reference page, verbatim: 002 has it in a
/// ```cpp block; 004 (a text rendering) from `#ifndef UNICODE` to the
/// closing brace before "Requirements".
fn seed_example(name: &str) -> String {
    let text = String::from_utf8(seed_copy(name)).expect("UTF-8 seed");
    let begin = text
        .find("#ifndef UNICODE\n")
        .unwrap_or_else(|| panic!("{name}: no example program"));
    let rest = &text[begin..];
    let end = if name == SEED_RUNTIME {
        rest.find("\n```\n").expect("end of the ```cpp block") + 1
    } else {
        rest.find("\n}\n").expect("the closing brace of wmain") + 3
    };
    rest[..end].to_owned()
}

/// Applies the README's edits (examples/c/port-from-windows.sed) and
/// returns the ported source's path.
fn port_from_windows(example: &str, name: &str, dir: &Path) -> PathBuf {
    let original = dir.join(format!("{name}.windows.cpp"));
    std::fs::write(&original, example).unwrap();
    let mut sed = Command::new("sed");
    sed.arg("-E")
        .arg("-f")
        .arg(repo_root().join("examples/c/port-from-windows.sed"))
        .arg(&original);
    let (out, stdout, stderr) = run(sed);
    assert!(out.status.success(), "sed: {stderr}");
    let ported = dir.join(format!("{name}.ported.txt"));
    std::fs::write(&ported, &stdout).unwrap();
    ported
}

/// The warnings (`-Wname`) a compiler run printed.
fn warnings(stderr: &str) -> std::collections::BTreeSet<String> {
    stderr
        .lines()
        .filter(|l| l.contains("warning:"))
        .filter_map(|l| {
            let tag = &l[l.rfind("[-W")? + 3..];
            Some(tag.trim_end_matches(']').to_owned())
        })
        .collect()
}

nstest!(
    seed_examples_build_with_the_readme_edits_only_and_bind_into_their_block,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        let dir = open_tempdir();
        // The warnings the seeds' own code causes, by seed and language; any
        // other warning is an error.
        //   format-extra-args: 002's usage text passes argv[0] to a format
        //     without a conversion;
        //   unused-variable: 002 declares `status` and never uses it;
        //   missing-field-initializers (C++): `WSADATA wsaData = { 0 };` and
        //     the like (C exempts `{ 0 }`);
        //   format= (C++): 002 prints portRes.Token, a structure in C++, with
        //     %I64d (in C it is the ULONG64 the format expects).
        let expected: [(&str, Lang, &[&str]); 4] = [
            (
                SEED_RUNTIME,
                Lang::C,
                &["format-extra-args", "unused-variable"],
            ),
            (
                SEED_RUNTIME,
                Lang::Cxx,
                &[
                    "format-extra-args",
                    "unused-variable",
                    "missing-field-initializers",
                    "format=",
                ],
            ),
            (SEED_PERSISTENT, Lang::C, &[]),
            (SEED_PERSISTENT, Lang::Cxx, &["missing-field-initializers"]),
        ];
        for (seed, lang, allowed) in expected {
            let stem = &seed[..3];
            let source = port_from_windows(&seed_example(seed), stem, dir.path());
            let extra: Vec<String> = allowed.iter().map(|w| format!("-Wno-error={w}")).collect();
            let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
            for (link, sanitize) in [(Link::Shared, true), (Link::Static, false)] {
                let what = format!("seed {stem} ({lang:?}, {link:?})");
                let (bin, stderr) = compile_as(&source, lang, link, sanitize, dir.path(), &extra);
                let seen = warnings(&stderr);
                let allowed: std::collections::BTreeSet<String> =
                    allowed.iter().map(|w| w.to_string()).collect();
                assert_eq!(seen, allowed, "{what}: the seed's own warnings\n{stderr}");
                if seed == SEED_RUNTIME {
                    // AF_INET, SOCK_STREAM, IPPROTO_TCP, any block of 5; the
                    // page's own UDP usage example (5000, 20).
                    for (args, start) in [
                        (["2", "1", "6", "0", "5"], None),
                        (["2", "2", "17", "5000", "20"], Some(5000)),
                    ] {
                        let stdout = check_runtime_run(&bin, &d, &args, start, &what);
                        assert!(
                            stdout.contains("WSAIoctl(SIO_RELEASE_PORT_RESERVATION) succeeded"),
                            "{what}\n{stdout}"
                        );
                    }
                } else {
                    check_persistent_run(&bin, &d, &what);
                }
            }
        }
    }
);
