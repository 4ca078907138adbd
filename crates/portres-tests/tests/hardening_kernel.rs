//! The kernel guarantee under stress (issue 9, items 1–3, 11, 15): a
//! reserved port is never missing from `ip_local_reserved_ports` while the
//! daemon rewrites a long list; a refused Acquire leaves nothing behind;
//! someone else's rewrite of the list is undone within a second; the
//! admin's baseline ports are not handed out. Each test runs a real daemon
//! in a private network namespace.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use portres::{ErrorCode, Protocol};
use portres_core::PortSet;
use portres_kernel::sysctl::{ProcReservedPorts, ReservedPorts};
use portres_tests::{
    InProcessDaemon, ProcessDaemon, eventually, kernel_reserved, netns, open_tempdir,
    set_kernel_reserved, set_local_port_range,
};

/// A knob from the environment (the long runs), or its default.
fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What the window runs saw.
#[derive(Debug, Default)]
struct WindowFigures {
    /// Reads of the sysctl by the observer.
    reads: u64,
    /// Reads that lacked a reserved port.
    reads_missing: u64,
    /// Ports the kernel picked for the stranger's bind(0)/connect().
    stranger_ports: u64,
    /// Of those, ports of a live reservation.
    stranger_hits: u64,
    /// Acquire/Release cycles by the churning session.
    churn_cycles: u64,
}

/// `reservations` scattered one-port reservations (every third port from
/// 20000, inside the dynamic range: more than 4092 bytes of text from about
/// 700 on), held for `seconds` while another session acquires and releases
/// (each release makes the daemon rewrite the list), an observer reads the
/// sysctl in a tight loop and a stranger has the kernel pick ports (UDP
/// bind(0), TCP connect()).
fn window_run(test: &str, reservations: u16, seconds: u64) -> Option<WindowFigures> {
    let _ns = netns(test)?;
    set_local_port_range(20000, 60999);
    let d = InProcessDaemon::start(|_| {});
    let holder = d.client();
    let mut held = Vec::new();
    for i in 0..reservations {
        held.push(holder.acquire(Protocol::Udp, 20000 + 3 * i, 1).unwrap());
    }
    let reserved = PortSet::from_ranges(held.iter().map(|r| (r.start(), r.start())).collect());
    assert!(reserved.to_string().len() > 4092, "longer than one write");
    assert!(kernel_reserved().covers(&reserved));
    // Something to connect() to, so the kernel autobinds a local port.
    let target = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let target_addr = target.local_addr().unwrap();
    target.set_nonblocking(true).unwrap();

    let stop = AtomicBool::new(false);
    let reads = AtomicU64::new(0);
    let reads_missing = AtomicU64::new(0);
    let stranger_ports = AtomicU64::new(0);
    let stranger_hits = Mutex::new(Vec::<u16>::new());
    let churn_cycles = AtomicU64::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let sysctl = ProcReservedPorts::new();
            while !stop.load(Ordering::Relaxed) {
                let now = sysctl.read().unwrap();
                reads.fetch_add(1, Ordering::Relaxed);
                if !now.covers(&reserved) {
                    reads_missing.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let udp = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0)).unwrap();
                let tcp = std::net::TcpStream::connect(target_addr).unwrap();
                for port in [
                    udp.local_addr().unwrap().port(),
                    tcp.local_addr().unwrap().port(),
                ] {
                    stranger_ports.fetch_add(1, Ordering::Relaxed);
                    if reserved.contains(port) {
                        stranger_hits.lock().unwrap().push(port);
                    }
                }
                while target.accept().is_ok() {}
            }
        });
        s.spawn(|| {
            let churn = d.client();
            while !stop.load(Ordering::Relaxed) {
                let r = churn.acquire(Protocol::Udp, 0, 1).unwrap();
                r.release().unwrap();
                churn_cycles.fetch_add(1, Ordering::Relaxed);
                // Longer than two shrink windows: the released port leaves
                // the list, and the next Acquire writes it back.
                std::thread::sleep(Duration::from_millis(12));
            }
        });
        std::thread::sleep(Duration::from_secs(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    let hits = stranger_hits.into_inner().unwrap();
    let figures = WindowFigures {
        reads: reads.into_inner(),
        reads_missing: reads_missing.into_inner(),
        stranger_ports: stranger_ports.into_inner(),
        stranger_hits: hits.len() as u64,
        churn_cycles: churn_cycles.into_inner(),
    };
    eprintln!(
        "{test}: {reservations} reservations ({} bytes of text), {seconds} s: {} sysctl reads, {} lacking a reserved port; {} stranger ports, {} of them reserved {:?}; {} acquire/release cycles",
        reserved.to_string().len(),
        figures.reads,
        figures.reads_missing,
        figures.stranger_ports,
        figures.stranger_hits,
        &hits[..hits.len().min(10)],
        figures.churn_cycles
    );
    assert!(
        figures.churn_cycles > 10 && figures.reads > 10,
        "{figures:?}"
    );
    drop(held);
    Some(figures)
}

named_test!(
    a_long_reserved_list_never_lacks_a_reserved_port_while_another_session_churns,
    |test| {
        let Some(f) = window_run(test, 4000, 3) else {
            return;
        };
        assert_eq!((f.reads_missing, f.stranger_hits), (0, 0), "{f:?}");
    }
);

named_test!(
    #[ignore = "long run (4000 reservations, 60 s): scripts/reliability window"]
    long_run_window_4000_reservations_no_stray_ports,
    |test| {
        let Some(f) = window_run(
            test,
            knob("PORTRES_WINDOW_RESERVATIONS", 4000) as u16,
            knob("PORTRES_WINDOW_SECONDS", 60),
        ) else {
            return;
        };
        assert_eq!((f.reads_missing, f.stranger_hits), (0, 0), "{f:?}");
    }
);

nstest!(
    a_refused_acquire_leaves_no_block_in_the_kernel_and_status_shows_the_kernels_value,
    |_| {
        set_kernel_reserved("1000");
        let d = InProcessDaemon::start(|_| {});
        // A stranger's socket on the last port of the block asked for: every
        // Acquire of it probes 16384 ports (tens of milliseconds) and is
        // refused.
        let _stranger = TcpListener::bind((Ipv4Addr::LOCALHOST, 57387)).unwrap();
        let churn = d.client();
        let asker = d.client();
        for _ in 0..5 {
            // A release just before: the shrink flushes that follow run while
            // the candidate sits in the table, and write it into the kernel.
            churn
                .acquire(Protocol::Tcp, 0, 1)
                .unwrap()
                .release()
                .unwrap();
            let err = asker.acquire(Protocol::Tcp, 41004, 16384).unwrap_err();
            assert_eq!(err.code, ErrorCode::SharingViolation, "{err:?}");
        }
        let client = d.client();
        let held = client.acquire(Protocol::Udp, 50000, 2).unwrap();
        let ok = eventually(|| kernel_reserved().to_string() == "1000,50000-50001");
        let status = client.status().unwrap();
        assert!(
            ok,
            "after the refusals the kernel holds {}",
            kernel_reserved()
        );
        assert_eq!(status.reserved_ports, kernel_reserved().to_string());
        drop(held);
    }
);

nstest!(
    a_list_someone_else_rewrote_is_restored_within_a_second_and_logged,
    |_| {
        set_kernel_reserved("1000");
        let dir = open_tempdir();
        let d = ProcessDaemon::start(dir.path(), &[]);
        let client = d.client();
        let held = client.acquire(Protocol::Tcp, 40000, 100).unwrap();
        assert_eq!(kernel_reserved().to_string(), "1000,40000-40099");
        // The admin's `sysctl --system`, as far as this list goes.
        set_kernel_reserved("1000,2000");
        let changed = Instant::now();
        let restored = eventually(|| kernel_reserved().to_string() == "1000,40000-40099");
        let took = changed.elapsed();
        assert!(restored, "still {}", kernel_reserved());
        assert!(took < Duration::from_secs(2), "took {took:?}");
        eprintln!("restored after {took:?}");
        // Status agrees, and a second check finds nothing to do.
        assert_eq!(client.status().unwrap().reserved_ports, "1000,40000-40099");
        std::thread::sleep(Duration::from_millis(1200));
        drop(held);
        drop(client);
        let log = d.terminate();
        let incidents: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("someone else changed ip_local_reserved_ports"))
            .collect();
        assert_eq!(incidents.len(), 1, "one line per incident: {log}");
        assert!(
            incidents[0].contains("\"1000,40000-40099\"") && incidents[0].contains("\"1000,2000\""),
            "old and new value: {}",
            incidents[0]
        );
    }
);

nstest!(
    the_baselines_ports_cannot_be_acquired_with_an_explicit_start,
    |_| {
        set_kernel_reserved("40000-40009");
        let d = InProcessDaemon::start(|_| {});
        let client = d.client();
        for (start, count) in [(40000, 1), (39995, 10), (40009, 5)] {
            let err = client.acquire(Protocol::Tcp, start, count).unwrap_err();
            assert_eq!(
                err.code,
                ErrorCode::SharingViolation,
                "{start}+{count}: {err:?}"
            );
            assert!(err.message.contains("baseline"), "{}", err.message);
        }
        // Beside it is fine, and nothing leaked into the list.
        let _next = client.acquire(Protocol::Tcp, 40010, 1).unwrap();
        assert_eq!(kernel_reserved().to_string(), "40000-40010");
    }
);
