//! The portserver stage: Google's portserver.py at 1 and 8 clients, portres'
//! portserver endpoint (`portresd --portserver @name`, issue 11 §1) measured
//! the same way, and, from Python, the ways a test suite gets a port —
//! `portpicker.pick_unused_port()` without a server, via portserver.py, via
//! the portres endpoint, and `portres.Client().acquire()` — as ratios to
//! portserver.py; and from Node, npm's `get-port` and clients/node's
//! `getPort()` via the endpoint, as ratios to the same `getPort()` via
//! portserver.py. `PORTRES_BENCH_ONLY=portserver` runs just this stage.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::node;
use crate::portres::Daemon;
use crate::portserver::{self, Address, PortServer, Requests};
use crate::python::{self, PyRun};
use crate::report::{Row, row, text_row, verdict};
use crate::stats::Samples;

type Measured<T> = Result<T, String>;

/// Runs the stage and appends its rows; returns portserver.py's request
/// rates at 1 and 8 clients (for the other rows' ratios).
pub(crate) fn portserver_stage(
    rows: &mut Vec<Row>,
    ps_venv: Measured<PathBuf>,
    dir: &Path,
    dur: Duration,
) -> Option<(f64, f64)> {
    // The Python rows need the venv's portpicker and portres.
    let py_venv = ps_venv
        .clone()
        .and_then(|venv| python::probe(&venv).map(|()| venv));

    eprintln!("measuring portserver {}...", portserver::VERSION);
    let mut py_via_ps = Err("portserver.py is not running".to_string());
    let mut node_via_ps = Err("portserver.py is not running".to_string());
    let ps = ps_venv.and_then(|venv| {
        PortServer::start(&venv, &dir.join("ps")).map(|server| {
            let one = server.measure(1, dur);
            let eight = server.measure(8, dur);
            if let Ok(venv) = &py_venv {
                let address = server.socket.clone().into_os_string();
                py_via_ps = python::run(venv, "server", dur, &[("PORTSERVER_ADDRESS", &address)]);
            }
            node_via_ps = node::run_client(server.socket.as_os_str(), dur);
            (one, eight)
        })
    });
    if let Err(e) = &ps {
        py_via_ps = Err(e.clone());
        node_via_ps = Err(e.clone());
    }
    let rates = ps.as_ref().ok().map(|(o, e)| (o.rate(), e.rate()));

    let (endpoint, py_via_endpoint, node_via_endpoint) = endpoint(&dir.join("ep"), &py_venv, dur);

    eprintln!("measuring from Python...");
    let py_pick = py_venv
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|venv| python::run(venv, "pick", dur, &[]));
    let py_acquire = py_venv.as_ref().map_err(Clone::clone).and_then(|venv| {
        let d = Daemon::start(&dir.join("py"));
        let socket = d.socket.clone().into_os_string();
        let r = python::run(venv, "acquire", dur, &[("PORTRES_SOCKET", &socket)]);
        d.stop();
        r
    });
    eprintln!("measuring from Node...");
    let node_get_port = node::run_get_port(dur);

    match &ps {
        Ok((one, eight)) => {
            for (n, s) in [(1, one), (8, eight)] {
                rows.push(row(
                    &format!("portserver {} request, {}", portserver::VERSION, clients(n)),
                    s,
                    String::new(),
                ));
            }
        }
        Err(e) => rows.push(text_row("portserver", format!("not measured: {e}"))),
    }
    endpoint_rows(rows, rates, &endpoint);
    let reference = py_via_ps.as_ref().ok().map(|r| r.samples.rate());
    for (name, run, what, ratio) in [
        (
            "python: portpicker.pick_unused_port(), no server",
            &py_pick,
            "advisory: bind(0), close, hope",
            true,
        ),
        (
            "python: pick_unused_port() via portserver.py",
            &py_via_ps,
            "the reference (per second of call time); pid trusted, nothing reserved in the kernel",
            false,
        ),
        (
            "python: pick_unused_port() via portresd --portserver",
            &py_via_endpoint,
            "reserved in the kernel on TCP and UDP until the pid exits",
            true,
        ),
        (
            "python: portres.Client().acquire(\"tcp\")",
            &py_acquire,
            "held by the session; release untimed",
            true,
        ),
    ] {
        rows.push(driver_row(
            name,
            run,
            what,
            ratio.then_some(reference).flatten(),
            "portserver.py",
        ));
    }
    let reference = node_via_ps.as_ref().ok().map(|r| r.samples.rate());
    for (name, run, what, ratio) in [
        (
            "node: get-port (npm, 7.x), no server",
            &node_get_port,
            "advisory: listen(0), close; remembered in-process 15-30 s, nothing held",
            true,
        ),
        (
            "node: portres getPort() via portserver.py",
            &node_via_ps,
            "the reference (clients/node speaks portpicker's protocol); nothing reserved in the kernel",
            false,
        ),
        (
            "node: portres getPort() via portresd --portserver",
            &node_via_endpoint,
            "reserved in the kernel on TCP and UDP until the pid exits",
            true,
        ),
    ] {
        rows.push(driver_row(
            name,
            run,
            what,
            ratio.then_some(reference).flatten(),
            "getPort() via portserver.py",
        ));
    }
    rates
}

fn clients(n: usize) -> String {
    format!("{n} client{}", if n == 1 { "" } else { "s" })
}

/// Starts a portresd with `--portserver @portres-bench-PID` and measures
/// it: the protocol from Rust at 1 and 8 clients, then portpicker from
/// Python and clients/node from Node. A portresd that does not take the
/// flag makes every row "not available: why".
fn endpoint(
    dir: &Path,
    py_venv: &Measured<PathBuf>,
    dur: Duration,
) -> (
    Measured<(Requests, Requests)>,
    Measured<PyRun>,
    Measured<PyRun>,
) {
    eprintln!("measuring portres' portserver endpoint (portresd --portserver)...");
    let name = format!("@portres-bench-{}", std::process::id());
    let d = match Daemon::start_with(dir, &["--portserver", &name]) {
        Ok(d) => d,
        Err(e) => {
            let why = format!("not available: {e}");
            return (Err(why.clone()), Err(why.clone()), Err(why));
        }
    };
    let address = Address(name.clone());
    if let Err(e) = address.wait_ready(Duration::from_secs(10)) {
        let why = format!("not available: {e}");
        return (Err(why.clone()), Err(why.clone()), Err(why));
    }
    let one = portserver::measure(&address, 1, dur);
    let eight = portserver::measure(&address, 8, dur);
    let python = match py_venv {
        Ok(venv) => python::run(
            venv,
            "server",
            dur,
            &[("PORTSERVER_ADDRESS", name.as_ref())],
        ),
        Err(e) => Err(e.clone()),
    };
    let node = node::run_client(OsStr::new(&name), dur);
    d.stop();
    (Ok((one, eight)), python, node)
}

/// The endpoint's request rows, as ratios to portserver.py's.
fn endpoint_rows(
    rows: &mut Vec<Row>,
    ps: Option<(f64, f64)>,
    endpoint: &Measured<(Requests, Requests)>,
) {
    let (one, eight) = match endpoint {
        Ok(r) => r,
        Err(e) => {
            for n in [1, 8] {
                rows.push(text_row(
                    &format!("portresd --portserver request, {}", clients(n)),
                    e.clone(),
                ));
            }
            return;
        }
    };
    let unanswered = |r: &Requests| match r.unanswered {
        0 => String::new(),
        n => format!("; {n} unanswered"),
    };
    let vs = |s: &Samples, r: Option<f64>| match r {
        Some(r) => format!("{:.1}x portserver.py", s.rate() / r),
        None => "portserver.py not measured".to_string(),
    };
    let ps8 = ps.map(|(_, e)| e);
    rows.push(row(
        "portresd --portserver request, 1 client",
        &one.samples,
        format!(
            "{}{}",
            vs(&one.samples, ps.map(|(o, _)| o)),
            unanswered(one)
        ),
    ));
    rows.push(row(
        "portresd --portserver request, 8 clients",
        &eight.samples,
        format!(
            "{} (target >= 10x: {}){}",
            vs(&eight.samples, ps8),
            ps8.map_or("n/a", |r| verdict(eight.samples.rate() >= 10.0 * r)),
            unanswered(eight)
        ),
    ));
}

/// One Python or Node row: its figures and `what`, as a ratio to
/// `reference` (the same language's rate via portserver.py, called
/// `reference_name`) if given.
fn driver_row(
    name: &str,
    run: &Measured<PyRun>,
    what: &str,
    reference: Option<f64>,
    reference_name: &str,
) -> Row {
    let r = match run {
        Ok(r) => r,
        Err(e) if e.starts_with("not ") => return text_row(name, e.clone()),
        Err(e) => return text_row(name, format!("not measured: {e}")),
    };
    let ratio = reference.map_or(String::new(), |p| {
        format!("{:.1}x {reference_name}; ", r.samples.rate() / p)
    });
    let fallbacks = match r.fallbacks {
        0 => String::new(),
        n => format!("; {n} answered by portpicker's fallback, not the server"),
    };
    row(name, &r.samples, format!("{ratio}{what}{fallbacks}"))
}
