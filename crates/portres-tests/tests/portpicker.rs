//! Acceptance of the portserver endpoint by its reference client:
//! portpicker 1.6.0 from PyPI. Its own test suite (the sdist's
//! `src/tests`, both files) runs twice in the test's network namespace —
//! against Google's `portserver.py`, which the suite launches itself when
//! `PORTSERVER_ADDRESS` is unset, and with `PORTSERVER_ADDRESS` naming a
//! portres endpoint — and must give the same outcome for every test, none
//! failing. The suite's `PickUnusedPortTestWithAPortServer` class disables
//! portpicker's serverless fallback, so its tests pass only if the server
//! answers. A second test follows one `pick_unused_port()` through the
//! daemon: listed with the Python process's pid while it lives, gone when
//! it exits.
//!
//! The venv comes from `.ci/run` (`target/venv-portpicker`: portpicker
//! 1.6.0 with psutil, pytest, and the sdist unpacked under `sdist/`), named
//! by `PORTRES_PORTPICKER_PYTHON` or found at that path; without it these
//! tests print SKIPPED, or fail when `PORTRES_REQUIRE_PRIVILEGED_TESTS=1`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use portres::HolderOrigin;
use portres_daemon::PortserverAddress;
use portres_tests::{InProcessDaemon, assert_kernel_settles_to, eventually};

const NAME: &str = "portres-test-portpicker";

/// The venv's Python and the suite's directory, if portpicker 1.6.0 and
/// pytest are there.
fn portpicker_venv(test: &str) -> Option<(PathBuf, PathBuf)> {
    let python = std::env::var_os("PORTRES_PORTPICKER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/venv-portpicker/bin/python")
        });
    let venv = python
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf);
    let tests = venv
        .as_ref()
        .map(|v| v.join("sdist/portpicker-1.6.0/src/tests"))
        .unwrap_or_default();
    let probe = Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m, sys; \
             sys.exit(m.version('portpicker') != '1.6.0' or not m.version('pytest'))",
        ])
        .stdin(Stdio::null())
        .output();
    let why = match probe {
        Ok(out) if out.status.success() && tests.join("portpicker_test.py").exists() => {
            return Some((python, tests));
        }
        Ok(out) if out.status.success() => {
            format!("{} is missing (the unpacked sdist)", tests.display())
        }
        Ok(out) => format!(
            "{} lacks portpicker 1.6.0 or pytest: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("{}: {e}", python.display()),
    };
    let how = "run the portpicker step of .ci/run (target/venv-portpicker with portpicker==1.6.0, \
               pytest and the sdist in sdist/) or set PORTRES_PORTPICKER_PYTHON";
    portres_tests::skip(test, format_args!("{why}; {how}"));
    None
}

/// The venv's `bin`, holding `portserver.py` (the suite imports it as a
/// module and launches it by name).
fn venv_bin(python: &Path) -> PathBuf {
    python.parent().expect("bin").to_path_buf()
}

/// Runs the suite; `address`: `PORTSERVER_ADDRESS`, or none (then the
/// suite launches `portserver.py` itself). Returns each test's outcome.
fn run_suite(
    python: &Path,
    tests: &Path,
    address: Option<&str>,
) -> (BTreeMap<String, String>, String) {
    let bin = venv_bin(python);
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(python);
    cmd.args(["-m", "pytest", "-p", "no:cacheprovider", "-v", "."])
        .current_dir(tests)
        .env("PYTHONPATH", &bin)
        .env("PATH", path)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env_remove("PYTEST_ADDOPTS")
        .env_remove("PORTSERVER_ADDRESS")
        .stdin(Stdio::null());
    if let Some(a) = address {
        cmd.env("PORTSERVER_ADDRESS", a);
    }
    let out = cmd.output().expect("run pytest");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let mut outcomes = BTreeMap::new();
    for line in stdout.lines() {
        let mut words = line.split_whitespace();
        if let (Some(id), Some(outcome)) = (words.next(), words.next())
            && id.contains("::")
            && ["PASSED", "FAILED", "SKIPPED", "ERROR", "XFAIL", "XPASS"].contains(&outcome)
        {
            outcomes.insert(id.to_string(), outcome.to_string());
        }
    }
    (outcomes, report)
}

nstest!(
    portpicker_suite_passes_against_portres_as_against_portserver_py,
    |test| {
        let Some((python, tests)) = portpicker_venv(test) else {
            return;
        };
        let d = InProcessDaemon::start(|c| {
            c.portserver = vec![PortserverAddress::Abstract(NAME.as_bytes().to_vec())];
        });
        let (google, google_report) = run_suite(&python, &tests, None);
        let (portres, portres_report) = run_suite(&python, &tests, Some(&format!("@{NAME}")));
        for (who, outcomes, report) in [
            ("portserver.py", &google, &google_report),
            ("portres", &portres, &portres_report),
        ] {
            assert!(
                outcomes.len() >= 40,
                "{test}: against {who}, only {} tests ran:\n{report}",
                outcomes.len()
            );
            let bad: Vec<_> = outcomes
                .iter()
                .filter(|(_, o)| *o == "FAILED" || *o == "ERROR")
                .collect();
            assert!(bad.is_empty(), "{test}: against {who}: {bad:?}\n{report}");
        }
        assert_eq!(
            google, portres,
            "{test}: outcomes differ (left portserver.py, right portres)"
        );
        let passed = portres.values().filter(|o| *o == "PASSED").count();
        eprintln!(
            "{test}: portpicker 1.6.0's suite: {passed} of {} passed against portres and against portserver.py",
            portres.len()
        );
        // The suite's process is gone: nothing it was given is held.
        let client = d.client();
        assert!(eventually(|| client.list(None).unwrap().is_empty()));
        assert_kernel_settles_to("");
    }
);

nstest!(
    portpicker_pick_unused_port_is_held_for_the_python_process,
    |test| {
        let Some((python, _)) = portpicker_venv(test) else {
            return;
        };
        let d = InProcessDaemon::start(|c| {
            c.portserver = vec![PortserverAddress::Abstract(NAME.as_bytes().to_vec())];
        });
        // pick_unused_port() with the serverless fallback disabled: the port
        // can only come from the endpoint.
        let script = "import portpicker, sys\n\
                  def no(*a, **k): raise SystemExit('fell back to serverless picking')\n\
                  portpicker._pick_unused_port_without_server = no\n\
                  print(portpicker.pick_unused_port(), flush=True)\n\
                  sys.stdin.read()\n";
        let mut child = Command::new(&python)
            .args(["-c", script])
            .env("PORTSERVER_ADDRESS", format!("@{NAME}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port: u16 = line.trim().parse().unwrap_or_else(|_| panic!("{line:?}"));
        let client = d.client();
        let held: Vec<_> = client
            .list(None)
            .unwrap()
            .into_iter()
            .filter(|r| r.start == port)
            .collect();
        assert_eq!(held.len(), 2, "TCP and UDP: {held:?}");
        for r in &held {
            let h = r.holder.unwrap();
            assert_eq!(h.pid, child.id() as i32);
            assert_eq!(h.origin, Some(HolderOrigin::Portserver));
        }
        assert!(portres_tests::kernel_reserved().contains(port));
        child.stdin.take().unwrap().write_all(b"done").unwrap();
        assert!(child.wait().unwrap().success());
        assert!(eventually(|| client.list(None).unwrap().is_empty()));
    }
);
