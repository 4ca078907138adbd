//! The Python rows (issue 11): `portpicker.pick_unused_port()` without a
//! server, via Google's portserver.py and via `portresd --portserver`, and
//! `portres.Client().acquire()`, each timed call by call by
//! `bench/python_ports.py` in the benchmark venv's Python (portpicker
//! 1.6.0 and clients/python installed). Their rate is calls per second of
//! call time (one process, back to back), so the ratios compare the calls
//! alone.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::stats::Samples;

/// The driver, carried in the binary so it runs from anywhere.
const DRIVER: &str = include_str!("../python_ports.py");

/// One driver run.
pub struct PyRun {
    /// The calls' latencies; `wall` is their sum.
    pub samples: Samples,
    /// Calls portpicker answered itself because the server did not.
    pub fallbacks: u64,
}

/// Whether `venv`'s Python has portpicker and portres; why not otherwise.
pub fn probe(venv: &Path) -> Result<(), String> {
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", "import portpicker, portres"])
        .output()
        .map_err(|e| format!("{}/bin/python: {e}", venv.display()))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    Err(format!(
        "{} (bench/run installs portpicker and clients/python into target/venv-bench)",
        err.lines().last().unwrap_or("python failed").trim()
    ))
}

/// Runs the driver in `mode` (`pick`, `server`, `acquire`) for `dur` with
/// `env` added.
pub fn run(
    venv: &Path,
    mode: &str,
    dur: Duration,
    env: &[(&str, &OsStr)],
) -> Result<PyRun, String> {
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.args(["-c", DRIVER, mode, &format!("{:.3}", dur.as_secs_f64())])
        .env_remove("PORTSERVER_ADDRESS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().map_err(|e| format!("python: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "python_ports.py {mode} failed: {}",
            err.lines().last().unwrap_or("").trim()
        ));
    }
    parse_driver_output(&format!("python_ports.py {mode}"), &out.stdout)
}

/// A driver's line of JSON (`{"lat_ns": [...], "fallbacks": N}`, the
/// Python and the Node drivers alike): its calls' latencies, `wall` their
/// sum.
pub fn parse_driver_output(what: &str, stdout: &[u8]) -> Result<PyRun, String> {
    let v: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|e| format!("{what}: not JSON: {e}"))?;
    let lat: Vec<Duration> = v["lat_ns"]
        .as_array()
        .ok_or_else(|| format!("{what}: no lat_ns"))?
        .iter()
        .filter_map(|n| n.as_u64().map(Duration::from_nanos))
        .collect();
    if lat.is_empty() {
        return Err(format!("{what}: no calls measured"));
    }
    let wall = lat.iter().sum();
    Ok(PyRun {
        samples: Samples::merge(vec![lat], wall),
        fallbacks: v["fallbacks"].as_u64().unwrap_or(0),
    })
}
