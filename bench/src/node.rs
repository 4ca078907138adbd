//! The Node rows (issue 15): npm's `get-port` (advisory: a port the OS
//! picked, checked free, nothing held) and clients/node's `getPort()`
//! through a portserver (portres' endpoint, and portserver.py as the
//! reference), each timed call by call by `bench/node_ports.mjs` in one
//! Node process. Their rate is calls per second of call time, like the
//! Python rows. Node comes from PATH; get-port from the directory
//! `PORTRES_BENCH_NODE_MODULES` names (bench/run installs it with npm into
//! target/node-bench). What is missing makes its row "not available: why".

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::python::{PyRun, parse_driver_output};

/// The driver, carried in the binary so it runs from anywhere.
const DRIVER: &str = include_str!("../node_ports.mjs");

/// The pinned get-port major version bench/run installs.
pub const GET_PORT: &str = "get-port@7";

/// clients/node's entry point in this checkout.
fn client() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/node/index.js")
}

/// `node --version`, or why Node cannot run.
pub fn probe() -> Result<String, String> {
    let out = Command::new("node")
        .arg("--version")
        .output()
        .map_err(|e| format!("not available: node: {e}"))?;
    if !out.status.success() {
        return Err("not available: node --version failed".into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// get-port's index.js, if installed where bench/run puts it.
fn get_port() -> Result<PathBuf, String> {
    let dir = std::env::var_os("PORTRES_BENCH_NODE_MODULES").ok_or_else(|| {
        format!(
            "not available: PORTRES_BENCH_NODE_MODULES not set (bench/run installs {GET_PORT} with npm into target/node-bench)"
        )
    })?;
    let index = Path::new(&dir).join("get-port/index.js");
    if index.exists() {
        Ok(index)
    } else {
        Err(format!(
            "not available: no {} (npm install --prefix target/node-bench {GET_PORT})",
            index.display()
        ))
    }
}

/// npm's get-port, `getPort()` back to back for `dur`.
pub fn run_get_port(dur: Duration) -> Result<PyRun, String> {
    probe()?;
    let index = get_port()?;
    run("get-port", dur, &[("PORTRES_GET_PORT", index.as_os_str())])
}

/// clients/node's `getPort({pid})` against the portserver at `address`.
pub fn run_client(address: &OsStr, dur: Duration) -> Result<PyRun, String> {
    probe()?;
    let index = client();
    run(
        "portres",
        dur,
        &[
            ("PORTRES_NODE_CLIENT", index.as_os_str()),
            ("PORTSERVER_ADDRESS", address),
        ],
    )
}

fn run(mode: &str, dur: Duration, env: &[(&str, &OsStr)]) -> Result<PyRun, String> {
    let mut cmd = Command::new("node");
    cmd.args(["--input-type=module", "-e", DRIVER, mode])
        .arg(format!("{:.3}", dur.as_secs_f64()))
        .env_remove("PORTSERVER_ADDRESS");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().map_err(|e| format!("node: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "node_ports.mjs {mode} failed: {}",
            err.lines()
                .find(|l| l.contains("Error"))
                .or(err.lines().last())
                .unwrap_or("")
                .trim()
        ));
    }
    parse_driver_output(&format!("node_ports.mjs {mode}"), &out.stdout)
}
