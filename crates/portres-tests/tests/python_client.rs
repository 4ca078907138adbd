//! The Python package (`clients/python`, issue 11 part 2) against a real
//! daemon: its own pytest suite run plainly, with pytest-xdist `-n 4`
//! (ports held at the same time never shared across workers), and inside
//! `portres exec tcp --count 4` (every worker binds into the exec's one
//! block), and under `portres exec` without xdist; plus an offline
//! `pip wheel` of the package and its version.
//!
//! The Python comes from the venv `.ci/run` makes (`target/venv-pytest`:
//! pytest, pytest-xdist and `pip install ./clients/python`), named by
//! `PORTRES_PYTEST_PYTHON` or found at that path; without it these tests
//! print SKIPPED, or fail when `PORTRES_REQUIRE_PRIVILEGED_TESTS=1`. The
//! suite runs with `PYTHONPATH=clients/python/src`, so the source under
//! test is this checkout's even when the venv's installed copy is older
//! (the installed copy provides the `pytest11` entry point). Each daemon
//! runs as root in the test's private network namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use portres_tests::{ProcessDaemon, bin, netns, open_tempdir};
use serde_json::Value;

fn package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../clients/python")
}

/// The venv's Python, if it has pytest, pytest-xdist and the package.
/// `None` (after saying why) when it is missing and privileged tests are not
/// required.
fn pytest_python(test: &str) -> Option<PathBuf> {
    let python = std::env::var_os("PORTRES_PYTEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/venv-pytest/bin/python")
        });
    let probe = Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m; \
             print(m.version('pytest'), m.version('pytest-xdist'), m.version('portres'))",
        ])
        .stdin(Stdio::null())
        .output();
    let why = match probe {
        Ok(out) if out.status.success() => return Some(python),
        Ok(out) => format!(
            "{} lacks pytest, pytest-xdist or portres: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("{}: {e}", python.display()),
    };
    let how = "run the python step of .ci/run (target/venv-pytest with pytest, pytest-xdist \
               and `pip install ./clients/python`) or set PORTRES_PYTEST_PYTHON";
    portres_tests::skip(test, format_args!("{why}; {how}"));
    None
}

/// `python -m pytest ARGS…` in clients/python against `daemon`, recording
/// into `record` if given.
fn pytest(python: &Path, daemon: &ProcessDaemon, record: Option<&Path>, args: &[&str]) -> Command {
    let mut cmd = Command::new(python);
    cmd.args(PYTEST).args(args);
    pytest_env(&mut cmd, record);
    cmd.env("PORTRES_SOCKET", &daemon.socket);
    cmd
}

/// `python -m pytest` with the suite's fixed options: no cache files,
/// quiet, a line for every failure, error, skip, and warnings as errors.
const PYTEST: [&str; 8] = [
    "-m",
    "pytest",
    "-p",
    "no:cacheprovider",
    "-q",
    "-rfEs",
    "-W",
    "error",
];

/// `portres exec tcp --count COUNT -- python -m pytest ARGS…` against
/// `daemon`, recording into `record`: the suite sees only the exec's
/// capability, not the daemon's socket.
fn pytest_under_exec(
    python: &Path,
    daemon: &ProcessDaemon,
    count: u16,
    record: &Path,
    args: &[&str],
) -> Command {
    let mut cmd = Command::new(bin("portres"));
    cmd.arg("--socket")
        .arg(&daemon.socket)
        .args(["exec", "tcp", "--count", &count.to_string(), "--"])
        .arg(python)
        .args(PYTEST)
        .args(args)
        .env_remove("PORTRES_SOCKET");
    pytest_env(&mut cmd, Some(record));
    cmd
}

fn pytest_env(cmd: &mut Command, record: Option<&Path>) {
    cmd.current_dir(package_dir())
        .env("PYTHONPATH", package_dir().join("src"))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PORTRES_SESSION_FD")
        .env_remove("PYTEST_ADDOPTS")
        .env_remove("PORTRES_TEST_RECORD")
        .stdin(Stdio::null());
    if let Some(dir) = record {
        cmd.env("PORTRES_TEST_RECORD", dir);
    }
}

/// Runs pytest; panics with its output unless it passed. Returns stdout.
fn passes(test: &str, mut cmd: Command) -> String {
    let out: Output = cmd.output().expect("run pytest");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{test}: pytest failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let summary = stdout.lines().last().unwrap_or_default().to_string();
    assert!(
        summary.contains(" passed") && !summary.contains("failed") && !summary.contains("error"),
        "{test}: {summary}\n{stdout}"
    );
    eprintln!("{test}: {summary}");
    stdout
}

/// Every JSON line the Python tests recorded.
fn records(dir: &Path) -> Vec<Value> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("record dir") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read record");
        for line in text.lines() {
            out.push(serde_json::from_str(line).expect("a JSON record"));
        }
    }
    out
}

/// (worker, what, protocol, ports, t0, t1) of each "hold" record.
struct Hold {
    worker: String,
    what: String,
    protocol: String,
    ports: BTreeSet<u64>,
    t0: u64,
    t1: u64,
}

fn holds(recs: &[Value]) -> Vec<Hold> {
    recs.iter()
        .filter(|r| r["kind"] == "hold")
        .map(|r| Hold {
            worker: r["worker"].as_str().expect("worker").to_string(),
            what: r["what"].as_str().expect("what").to_string(),
            protocol: r["protocol"].as_str().expect("protocol").to_string(),
            ports: r["ports"]
                .as_array()
                .expect("ports")
                .iter()
                .map(|p| p.as_u64().expect("port"))
                .collect(),
            t0: r["t0"].as_u64().expect("t0"),
            t1: r["t1"].as_u64().expect("t1"),
        })
        .collect()
}

/// No two holdings that overlap in time share a port of one protocol; the
/// workers' session blocks are pairwise disjoint. Returns the workers seen.
fn assert_no_shared_ports(holds: &[Hold]) -> BTreeSet<String> {
    for (i, a) in holds.iter().enumerate() {
        for b in &holds[i + 1..] {
            let overlap_in_time = a.t0 < b.t1 && b.t0 < a.t1;
            if overlap_in_time && a.protocol == b.protocol {
                let shared: Vec<_> = a.ports.intersection(&b.ports).collect();
                assert!(
                    shared.is_empty(),
                    "{} ports {shared:?} held at once by {} ({}) and {} ({})",
                    a.protocol,
                    a.worker,
                    a.what,
                    b.worker,
                    b.what
                );
            }
        }
    }
    let sessions: BTreeMap<&str, &BTreeSet<u64>> = holds
        .iter()
        .filter(|h| h.what == "session")
        .map(|h| (h.worker.as_str(), &h.ports))
        .collect();
    let all: Vec<&&BTreeSet<u64>> = sessions.values().collect();
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert!(
                a.is_disjoint(b),
                "two workers' session blocks share ports: {sessions:?}"
            );
        }
    }
    holds.iter().map(|h| h.worker.clone()).collect()
}

named_test!(the_python_suite_passes_against_a_real_daemon, |test| {
    let Some(python) = pytest_python(test) else {
        return;
    };
    let Some(_ns) = netns(test) else {
        return;
    };
    let dir = open_tempdir();
    let daemon = ProcessDaemon::start(dir.path(), &[]);
    let out = passes(test, pytest(&python, &daemon, None, &["tests"]));
    // Run plainly, only the exec tests skip (python_client.rs runs them
    // under portres exec below).
    for line in out.lines().filter(|l| l.starts_with("SKIPPED")) {
        assert!(
            line.contains("not run under `portres exec`"),
            "{test}: unexpected skip: {line}"
        );
    }
});

named_test!(xdist_workers_never_hold_the_same_port, |test| {
    let Some(python) = pytest_python(test) else {
        return;
    };
    let Some(_ns) = netns(test) else {
        return;
    };
    let dir = open_tempdir();
    let record = open_tempdir();
    let daemon = ProcessDaemon::start(dir.path(), &[]);
    passes(
        test,
        pytest(
            &python,
            &daemon,
            Some(record.path()),
            &[
                "-n",
                "4",
                "tests/test_parallel.py",
                "--portres-session-count",
                "3",
            ],
        ),
    );
    let holds = holds(&records(record.path()));
    assert_eq!(holds.iter().filter(|h| h.what == "test").count(), 40);
    let workers = assert_no_shared_ports(&holds);
    assert_eq!(
        workers,
        ["gw0", "gw1", "gw2", "gw3"].map(String::from).into(),
        "{test}: every worker ran tests"
    );
    assert!(
        holds
            .iter()
            .filter(|h| h.what == "session")
            .all(|h| h.ports.len() == 3),
        "{test}: --portres-session-count 3"
    );
});

named_test!(xdist_workers_under_portres_exec_share_its_block, |test| {
    let Some(python) = pytest_python(test) else {
        return;
    };
    let Some(_ns) = netns(test) else {
        return;
    };
    let dir = open_tempdir();
    let record = open_tempdir();
    let daemon = ProcessDaemon::start(dir.path(), &[]);
    let cmd = pytest_under_exec(
        &python,
        &daemon,
        4,
        record.path(),
        &["-n", "4", "tests/test_exec.py", "tests/test_parallel.py"],
    );
    let out = passes(test, cmd);
    assert!(
        !out.contains("SKIPPED"),
        "{test}: nothing may skip under exec:\n{out}"
    );
    let recs = records(record.path());
    let exec: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "exec").collect();
    assert!(
        exec.len() >= 2,
        "{test}: at least two workers bound: {exec:?}"
    );
    let (start, count) = (
        exec[0]["start"].as_u64().unwrap(),
        exec[0]["count"].as_u64().unwrap(),
    );
    assert_eq!(count, 4);
    let mut ports = BTreeSet::new();
    let mut workers = BTreeSet::new();
    for r in &exec {
        assert_eq!(
            (&r["start"], &r["token"]),
            (&exec[0]["start"], &exec[0]["token"])
        );
        let port = r["port"].as_u64().unwrap();
        assert!(
            (start..start + count).contains(&port),
            "{test}: {port} outside the block"
        );
        assert!(
            ports.insert(port),
            "{test}: port {port} bound by two workers: {exec:?}"
        );
        workers.insert(r["worker"].as_str().unwrap().to_string());
    }
    assert_eq!(workers.len(), exec.len(), "{test}: one binding per worker");
    // The fixtures' own reservations never overlap the exec's block.
    let holds = holds(&recs);
    assert_no_shared_ports(&holds);
    for h in holds.iter().filter(|h| h.protocol == "tcp") {
        assert!(
            h.ports.iter().all(|p| !(start..start + count).contains(p)),
            "{test}: a fixture got a port of the exec's block"
        );
    }
    eprintln!(
        "{test}: block {start}-{}, workers bound {ports:?}",
        start + count - 1
    );
});

named_test!(
    pip_builds_the_package_offline_at_the_workspace_version,
    |test| {
        let Some(python) = pytest_python(test) else {
            return;
        };
        let out_dir = open_tempdir();
        let out = Command::new(&python)
            .args([
                "-m",
                "pip",
                "wheel",
                "--no-index",
                "--no-deps",
                "--disable-pip-version-check",
            ])
            .arg("--wheel-dir")
            .arg(out_dir.path())
            .arg(package_dir())
            .stdin(Stdio::null())
            .output()
            .expect("run pip");
        assert!(
            out.status.success(),
            "{test}: pip wheel --no-index failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let wheel = format!("portres-{}-py3-none-any.whl", env!("CARGO_PKG_VERSION"));
        assert!(
            out_dir.path().join(&wheel).exists(),
            "{test}: no {wheel} (the Python package's __version__ must be the workspace's)"
        );
    }
);

named_test!(
    pytest_under_portres_exec_without_xdist_attaches_the_capability,
    |test| {
        let Some(python) = pytest_python(test) else {
            return;
        };
        let Some(_ns) = netns(test) else {
            return;
        };
        let dir = open_tempdir();
        let record = open_tempdir();
        let daemon = ProcessDaemon::start(dir.path(), &[]);
        let cmd = pytest_under_exec(&python, &daemon, 2, record.path(), &["tests/test_exec.py"]);
        let out = passes(test, cmd);
        assert!(
            !out.contains("SKIPPED"),
            "{test}: nothing may skip under exec:\n{out}"
        );
        let recs = records(record.path());
        let exec: Vec<&Value> = recs.iter().filter(|r| r["kind"] == "exec").collect();
        assert_eq!(exec.len(), 1, "{test}: one process, one binding: {exec:?}");
        assert_eq!(exec[0]["worker"], "main");
        assert_eq!(exec[0]["count"], 2);
    }
);
