//! What strict mode's bind hooks cost a plain `bind()`: an unreserved port
//! and port 0, with and without the programs attached, in one process,
//! in one private cgroup. And what strict mode costs acquire+bind+release
//! through the daemon (`daemon_rows`): the same clients against a daemon
//! with `--enforce off` and then one with `--enforce strict` attached to a
//! private cgroup the benchmark process has moved into (so the daemon's
//! Bind of its sockets runs the hooks too), in this run.
//!
//! The measurement runs in a child process (`portres-bench
//! --bindguard-child`), because the hooks judge sockets by the cgroup of
//! the process that creates them and a process moves into a cgroup whole:
//! the child, single-threaded, creates `portres-bench-<pid>` under the
//! cgroup v2 mount, moves itself in, loads a guard with a 1000-port block
//! guarded (so the map lookup is a real one), and alternates rounds with
//! the programs detached and attached, timing each `bind()` call alone
//! (the socket is made before and closed after the clock). It moves back
//! to its original cgroup, removes the one it made and prints one line
//! per case: `case off_ns on_ns`, the median single bind() of all rounds
//! (medians, not means: on a shared 2-CPU machine preemption makes the
//! mean mostly noise).

use crate::report::{Row, row, text_row, verdict};
use crate::stats::Samples;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Instant;

use portres_core::{Block, Protocol};
use portres_kernel::bindguard::{self, AllowedBinders, BindGuard};

/// One case's figures: nanoseconds per bind, without and with the hooks.
pub struct Cost {
    pub off_ns: f64,
    pub on_ns: f64,
}

/// Both cases, or why they could not be measured.
pub struct Figures {
    pub unreserved: Cost,
    pub port0: Cost,
}

const UNRESERVED_PORT: u16 = 45000;

/// Runs the child and parses its lines.
pub fn measure(quick: bool) -> Result<Figures, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(exe)
        .arg("--bindguard-child")
        .arg(if quick { "quick" } else { "full" })
        .output()
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!(
            "{}{}",
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let cost = |case: &str| -> Result<Cost, String> {
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix(case)?.strip_prefix(' '))
            .ok_or_else(|| format!("no {case} line in {stdout:?}"))?;
        let mut it = line.split(' ').map(str::parse::<f64>);
        match (it.next(), it.next()) {
            (Some(Ok(off_ns)), Some(Ok(on_ns))) => Ok(Cost { off_ns, on_ns }),
            _ => Err(format!("bad line {line:?}")),
        }
    };
    Ok(Figures {
        unreserved: cost("unreserved")?,
        port0: cost("port0")?,
    })
}

/// The child: exits 0 after printing the figures, 1 with a reason.
pub fn child(quick: bool) -> ! {
    match run_child(quick) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            println!("not measured: {e}");
            std::process::exit(1)
        }
    }
}

fn run_child(quick: bool) -> Result<(), String> {
    let mut guard = BindGuard::load().map_err(|e| e.to_string())?;
    let mount = bindguard::cgroup2_mount().map_err(|e| e.to_string())?;
    let original = own_cgroup(&mount)?;
    let cgroup = mount.join(format!("portres-bench-{}", std::process::id()));
    std::fs::create_dir(&cgroup).map_err(|e| format!("{}: {e}", cgroup.display()))?;
    let result = (|| {
        join(&cgroup)?;
        let cookie = portres_kernel::sock::current_netns_cookie().map_err(|e| e.to_string())?;
        let allowed = AllowedBinders {
            tgid: Some(1),
            ..Default::default()
        };
        guard
            .insert(
                Block::from_range(40000, 40999),
                Protocol::Tcp,
                cookie,
                &allowed,
            )
            .map_err(|e| e.to_string())?;
        let (rounds, per_round) = if quick { (4, 2_000) } else { (40, 10_000) };
        let cases = [("unreserved", UNRESERVED_PORT), ("port0", 0)];
        let mut off = [Vec::new(), Vec::new()];
        let mut on = [Vec::new(), Vec::new()];
        // Cases and states interleaved round by round, so drift (CPU
        // frequency, other load) falls on all four alike.
        for _ in 0..rounds {
            guard.detach();
            for (i, (_, port)) in cases.iter().enumerate() {
                time_binds(*port, per_round, &mut off[i])?;
            }
            guard.attach(&cgroup).map_err(|e| e.to_string())?;
            for (i, (_, port)) in cases.iter().enumerate() {
                time_binds(*port, per_round, &mut on[i])?;
            }
        }
        for (i, (case, _)) in cases.iter().enumerate() {
            println!(
                "{case} {:.1} {:.1}",
                median(&mut off[i]),
                median(&mut on[i])
            );
        }
        Ok(())
    })();
    guard.close();
    let back = join(&original);
    let removed = std::fs::remove_dir(&cgroup).map_err(|e| format!("{}: {e}", cgroup.display()));
    result.and(back).and(removed)
}

/// Times `n` single `bind()`s of fresh TCP sockets to 127.0.0.1:`port`,
/// appending each in nanoseconds to `out`.
fn time_binds(port: u16, n: u32, out: &mut Vec<u32>) -> Result<(), String> {
    let addr = socket2::SockAddr::from(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    for _ in 0..n {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        let r = s.bind(&addr);
        let ns = t.elapsed().as_nanos();
        r.map_err(|e| format!("bind :{port}: {e}"))?;
        out.push(u32::try_from(ns).unwrap_or(u32::MAX));
    }
    Ok(())
}

fn median(v: &mut [u32]) -> f64 {
    v.sort_unstable();
    f64::from(v[v.len() / 2])
}

/// The calling process's cgroup v2 directory, from /proc/self/cgroup.
fn own_cgroup(mount: &Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string("/proc/self/cgroup").map_err(|e| e.to_string())?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("no cgroup v2 line in /proc/self/cgroup")?;
    Ok(mount.join(rel.trim_start_matches('/')))
}

/// Moves the whole (single-threaded) process into `cgroup`.
fn join(cgroup: &Path) -> Result<(), String> {
    std::fs::write(cgroup.join("cgroup.procs"), "0")
        .map_err(|e| format!("join {}: {e}", cgroup.display()))
}

/// The rows for what strict mode's bind hooks add to a plain bind().
pub(crate) fn bindguard_rows(quick: bool) -> Vec<Row> {
    let target_ns = 300.0;
    match measure(quick) {
        Ok(f) => [
            ("strict mode: bind(unreserved port) hook cost", f.unreserved),
            ("strict mode: bind(port 0) hook cost", f.port0),
        ]
        .into_iter()
        .map(|(name, c)| {
            let added = c.on_ns - c.off_ns;
            text_row(
                name,
                format!(
                    "bind() {:.0} ns without the hooks, {:.0} ns with: {:+.0} ns (target < {target_ns:.0} ns: {})",
                    c.off_ns,
                    c.on_ns,
                    added,
                    verdict(added < target_ns)
                ),
            )
        })
        .collect(),
        Err(e) => vec![text_row("strict mode: bind hook cost", format!("not measured: {e}"))],
    }
}

/// What the strict-mode daemon rows measured: each scenario against the
/// daemon with enforcement off and then on.
pub struct DaemonFigures {
    /// acquire+bind+release (three round trips), 1 and 8 clients: (off, on).
    pub abr: [(Samples, Samples); 2],
    /// The one-round-trip path (listen_tcp + oneway release), 1 and 8
    /// clients: (off, on).
    pub one_rtt: [(Samples, Samples); 2],
}

/// acquire+bind+release and the one-round-trip path through the daemon, 1
/// and 8 clients, with enforcement off and on; each daemon in turn (one
/// keeps the sysctl at a time). Moves this process into a private cgroup
/// for the duration.
pub(crate) fn daemon_figures(
    dir: &Path,
    dur: std::time::Duration,
) -> Result<DaemonFigures, String> {
    use crate::onertt::listen_release;
    use crate::portres::{Daemon, acquire_bind_release, run_clients};
    bindguard::probe().map_err(|e| e.to_string())?;
    let mount = bindguard::cgroup2_mount().map_err(|e| e.to_string())?;
    let original = own_cgroup(&mount)?;
    let cgroup = mount.join(format!("portres-bench-daemon-{}", std::process::id()));
    std::fs::create_dir(&cgroup).map_err(|e| format!("{}: {e}", cgroup.display()))?;
    let cg = cgroup.to_str().ok_or("cgroup path not UTF-8")?.to_string();
    let result = join(&cgroup).map(|()| {
        let measure = |name: &str, extra: &[&str]| {
            let d = Daemon::start_with(&dir.join(name), extra).unwrap_or_else(|e| panic!("{e}"));
            let abr1 = run_clients(&d, 1, dur, acquire_bind_release);
            let abr8 = run_clients(&d, 8, dur, acquire_bind_release);
            let one1 = run_clients(&d, 1, dur, listen_release);
            let one8 = run_clients(&d, 8, dur, listen_release);
            d.stop();
            [abr1, abr8, one1, one8]
        };
        let [oa1, oa8, oo1, oo8] = measure("strict-off", &["--enforce", "off"]);
        let [sa1, sa8, so1, so8] = measure(
            "strict-on",
            &["--enforce", "strict", "--enforce-cgroup", &cg],
        );
        DaemonFigures {
            abr: [(oa1, sa1), (oa8, sa8)],
            one_rtt: [(oo1, so1), (oo8, so8)],
        }
    });
    let back = join(&original);
    let removed = std::fs::remove_dir(&cgroup).map_err(|e| format!("{}: {e}", cgroup.display()));
    result.and_then(|r| back.and(removed).map(|()| r))
}

/// The strict-mode daemon rows: the strict daemon's figures, the note the
/// off daemon's and the difference; the one-round-trip rows also as
/// ratios to portserver and to the round-trip-with-fd floors (issue 15's
/// targets) and to the RTT+fd+sockets floors when `y` has them.
pub(crate) fn daemon_rows(
    figures: &Result<DaemonFigures, String>,
    y: Option<&crate::onertt::Yardsticks<'_>>,
) -> Vec<Row> {
    let f = match figures {
        Ok(f) => f,
        Err(e) => {
            return vec![text_row(
                "strict mode: acquire+bind+release on vs off",
                format!("not measured: {e}"),
            )];
        }
    };
    let note = |off: &Samples, on: &Samples| {
        let added = on.q(0.5).as_secs_f64() * 1e9 - off.q(0.5).as_secs_f64() * 1e9;
        format!(
            "off: {} p50 {}; strict: {:+.0} ns at p50, rate {:+.1}%",
            crate::stats::fmt_rate(off.rate()),
            crate::stats::fmt_dur(off.q(0.5)),
            added,
            (on.rate() / off.rate() - 1.0) * 100.0
        )
    };
    let mut rows = Vec::new();
    for ((off, on), n) in f.abr.iter().zip([1, 8]) {
        rows.push(row(
            &format!(
                "strict mode: acquire+bind+release, {n} client{}, enforcement on",
                if n == 1 { "" } else { "s" }
            ),
            on,
            note(off, on),
        ));
    }
    for ((off, on), n) in f.one_rtt.iter().zip([1, 8]) {
        let targets = y.map_or(String::new(), |y| {
            let ps = if n == 1 { y.ps1 } else { y.ps8 };
            let ps = ps.map_or(String::new(), |r| format!("{:.1}x portserver, ", on.rate() / r));
            if n == 1 {
                let p50x = on.q(0.5).as_secs_f64() / y.fd1.q(0.5).as_secs_f64().max(1e-12);
                let op_p50x = on.q(0.5).as_secs_f64() / y.op1.q(0.5).as_secs_f64().max(1e-12);
                format!(
                    "{ps}p50 = {p50x:.1}x one RTT with fd (target <= 2x: {}), {op_p50x:.1}x the RTT+fd+sockets floor; ",
                    verdict(p50x <= 2.0)
                )
            } else {
                let floor = 100.0 * on.rate() / y.fd8.rate();
                format!(
                    "{ps}{floor:.0}% of the 8-client RTT-with-fd floor (targets >= 20x: {}, >= 70%: {}, p99 <= 500 µs: {}), {:.0}% of the RTT+fd+sockets floor; ",
                    y.ps8.map_or("n/a", |r| verdict(on.rate() >= 20.0 * r)),
                    verdict(floor >= 70.0),
                    verdict(on.q(0.99) <= std::time::Duration::from_micros(500)),
                    100.0 * on.rate() / y.op8.rate()
                )
            }
        });
        rows.push(row(
            &format!(
                "strict mode: one-RTT acquire+bind + oneway release, {n} client{}, enforcement on",
                if n == 1 { "" } else { "s" }
            ),
            on,
            format!("{targets}{}", note(off, on)),
        ));
    }
    rows
}
