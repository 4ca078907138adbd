//! Client death: a client process holding runtime reservations (with
//! sockets bound into them) is killed with SIGKILL; its reservations must
//! leave `list` and `ip_local_reserved_ports` promptly. Measures the delay
//! from the kill to each, over many kills, and prints it (target ≤ 100 ms;
//! the daemon's own share is the connection's EOF plus one to two
//! `KERNEL_SHRINK_DELAY` windows, 5–10 ms, for the sysctl).
//!
//! Also kills clients in the middle of a burst of requests, all at once.
//! CI kills 25 holders; the long run (`scripts/reliability`) 300
//! (`PORTRES_DEATH_KILLS`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Rng, knob};
use portres::{Kind, Protocol};
use portres_core::PortSet;
use portres_tests::ProcessDaemon;
use portres_tests::{as_user, kernel_reserved, netns, open_tempdir, set_kernel_reserved};

const BASELINE: &str = "999";

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn summary(name: &str, v: &mut [Duration]) -> String {
    v.sort();
    format!(
        "{name}: median {:.1?}, p95 {:.1?}, max {:.1?}",
        percentile(v, 50),
        percentile(v, 95),
        v[v.len() - 1]
    )
}

fn run(test: &str, kills: u64, strict: bool) {
    let Some(_ns) = netns(test) else { return };
    let seed = Rng::seed_from_env();
    let mut rng = Rng::new(seed);
    set_kernel_reserved(BASELINE);
    let dir = open_tempdir();
    let d = ProcessDaemon::start(dir.path(), &[]);
    let observer = d.client();
    observer
        .create(Protocol::Tcp, 8080, 1, Default::default())
        .unwrap();
    let settled: PortSet = "999,8080".parse().unwrap();
    let (mut to_list, mut to_sysctl, mut to_both) = (Vec::new(), Vec::new(), Vec::new());
    // Kill -> the process is reaped (the kernel's share), and reaped ->
    // gone from both views (at most the daemon's share).
    let (mut to_exit, mut after_exit) = (Vec::new(), Vec::new());
    let mut reservations = 0;
    for i in 0..kills {
        let n = 1 + rng.below(6);
        let mut cmd = Command::new(portres_tests::bin("portres-stress"));
        cmd.args(["hold-many", &n.to_string()])
            .env("PORTRES_SOCKET", &d.socket)
            .env_remove("PORTRES_SESSION_FD");
        // Every other holder is an ordinary user.
        let mut cmd = if i % 2 == 0 {
            cmd
        } else {
            as_user(&cmd, 65534, 65534, &[])
        };
        let mut holder = cmd.stdout(Stdio::piped()).spawn().unwrap();
        let mut line = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready "), "holder printed {line:?}");
        let mut blocks = PortSet::new();
        for b in line["ready ".len()..].trim().split(',') {
            let f: Vec<&str> = b.split(' ').collect();
            let (start, count): (u16, u16) = (f[1].parse().unwrap(), f[2].parse().unwrap());
            blocks.insert_range(start, start + count - 1);
        }
        reservations += n;
        assert_eq!(observer.list(None).unwrap().len() as u64, n + 1);
        assert!(kernel_reserved().covers(&blocks));
        // Kill it and watch both views.
        let killed = Instant::now();
        holder.kill().unwrap();
        let (mut list_gone, mut sysctl_gone, mut exited) = (None, None, None);
        while list_gone.is_none() || sysctl_gone.is_none() {
            if exited.is_none() && holder.try_wait().unwrap().is_some() {
                exited = Some(killed.elapsed());
            }
            if list_gone.is_none()
                && observer
                    .list(None)
                    .unwrap()
                    .iter()
                    .all(|r| r.kind == Kind::Persistent)
            {
                list_gone = Some(killed.elapsed());
            }
            if sysctl_gone.is_none() && kernel_reserved() == settled {
                sysctl_gone = Some(killed.elapsed());
            }
            assert!(
                killed.elapsed() < Duration::from_secs(5),
                "the dead client's reservations outlived it by 5 s: list {:?}, sysctl {}",
                observer.list(None).unwrap(),
                kernel_reserved()
            );
            std::thread::sleep(Duration::from_micros(100));
        }
        holder.wait().unwrap();
        let exited = exited.unwrap_or_else(|| killed.elapsed());
        let (l, s) = (list_gone.unwrap(), sysctl_gone.unwrap());
        to_exit.push(exited);
        after_exit.push(l.max(s).saturating_sub(exited));
        to_list.push(l);
        to_sysctl.push(s);
        to_both.push(l.max(s));
    }

    // Clients killed mid-burst, all at once.
    let logs = dir.path().join("logs");
    std::fs::create_dir(&logs).unwrap();
    let burst: Vec<_> = (0..8)
        .map(|i| {
            Command::new(portres_tests::bin("portres-stress"))
                .arg("churn")
                .arg("100000000")
                .arg(rng.next().to_string())
                .arg(logs.join(format!("burst-{i}.log")))
                .env("PORTRES_SOCKET", &d.socket)
                .spawn()
                .unwrap()
        })
        .collect();
    // Killed mid-burst: once the burst holds reservations.
    let runtime = || {
        observer
            .list(None)
            .unwrap()
            .iter()
            .filter(|r| r.kind == Kind::Runtime)
            .count()
    };
    assert!(
        portres_tests::eventually(|| runtime() > 0),
        "the burst never held a reservation"
    );
    let before = observer
        .list(None)
        .unwrap()
        .iter()
        .filter(|r| r.kind == Kind::Runtime)
        .count();
    let killed = Instant::now();
    for mut c in burst {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    let gone = portres_tests::eventually(|| {
        observer
            .list(None)
            .unwrap()
            .iter()
            .all(|r| r.kind == Kind::Persistent)
            && kernel_reserved() == settled
    });
    let burst_delay = killed.elapsed();
    assert!(
        gone,
        "reservations of clients killed mid-burst outlived them"
    );

    let mut both_sorted = to_both.clone();
    both_sorted.sort();
    eprintln!(
        "{test} (seed {seed}): {kills} holders killed with {reservations} reservations; \
         kill -> gone from {}; {}; {}; {}; {}; 8 clients killed mid-burst holding {before} \
         reservations -> all gone (list and sysctl) within {burst_delay:.1?}",
        summary("list", &mut to_list),
        summary("sysctl", &mut to_sysctl),
        summary("both", &mut to_both),
        summary("kill -> process reaped (the kernel's share)", &mut to_exit),
        summary("reaped -> gone from both", &mut after_exit),
    );
    let max = both_sorted[both_sorted.len() - 1];
    let median = percentile(&both_sorted, 50);
    assert!(
        median <= Duration::from_millis(100),
        "median {median:?} > 100 ms"
    );
    if strict {
        assert!(max <= Duration::from_millis(100), "max {max:?} > 100 ms");
    } else {
        // A loaded CI machine may stall a single sample; the median holds.
        assert!(max <= Duration::from_secs(1), "max {max:?} > 1 s");
    }
}

named_test!(
    a_killed_clients_reservations_leave_list_and_sysctl_within_100_ms,
    |test| {
        run(test, knob("PORTRES_DEATH_KILLS_CI", 25), false);
    }
);

named_test!(
    #[ignore = "long run (300 kills, every one within 100 ms): scripts/reliability"]
    long_run_300_killed_clients_each_gone_within_100_ms,
    |test| {
        run(test, knob("PORTRES_DEATH_KILLS", 300), true);
    }
);
