//! The one-round-trip path (issue 15): a fresh one-port reservation with a
//! TCP listener bound into it in one call (`Client::listen_tcp`, Acquire
//! with a socket), released by dropping the handle (a oneway Release, not
//! waited for); and the daemon with a large table (100k reservations held):
//! the acquire rate and `list` time then.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use portres::{Client, Protocol};

use crate::portres::{Daemon, run_clients};
use crate::report::{Row, row, verdict};
use crate::stats::{Samples, timed};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// listen_tcp (one round trip with a descriptor) + drop (oneway release).
pub fn listen_release(c: &Client) {
    let (listener, res) = c.listen_tcp(LOCALHOST).expect("listen_tcp");
    drop(res);
    drop(listener);
}

/// What the large-table scenario measured.
pub struct Held {
    /// Reservations held meanwhile (half TCP, half UDP).
    pub held: usize,
    /// Time to acquire them (8 clients).
    pub setup: Duration,
    /// acquire+release (two round trips), 1 client, before the table
    /// filled (same daemon, same port range).
    pub acquire_empty: Samples,
    /// The same with the table full.
    pub acquire_full: Samples,
    /// listen_tcp + oneway release, 1 client, with the table full.
    pub one_rtt_full: Samples,
    /// `list` of every reservation.
    pub list: Samples,
}

/// Widens the dynamic range to 1024-65535 (this namespace only), holds `n`
/// one-port runtime reservations (n/2 TCP, n/2 UDP, from 8 sessions),
/// and measures acquire+release, the one-round-trip path and `list`. The
/// range is put back afterwards.
pub fn held_table(d: &Daemon, n: usize, dur: Duration) -> Held {
    let old = portres_kernel::sysctl::local_port_range().expect("port range");
    let range = "/proc/sys/net/ipv4/ip_local_port_range";
    std::fs::write(range, "1024 65535").expect("widen ip_local_port_range");
    let acquire_release = |c: &Client| {
        c.acquire(Protocol::Tcp, 0, 1)
            .expect("acquire")
            .release()
            .expect("release");
    };
    let acquire_empty = run_clients(d, 1, dur, acquire_release);
    let t = Instant::now();
    let sessions = 8;
    let fillers: Vec<_> = (0..sessions)
        .map(|i| {
            let c = d.client();
            let protocol = if i % 2 == 0 {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            let count = n / sessions;
            std::thread::spawn(move || {
                for _ in 0..count {
                    let _ = c.acquire(protocol, 0, 1).expect("fill").keep();
                }
                c
            })
        })
        .collect();
    let holders: Vec<Client> = fillers
        .into_iter()
        .map(|h| h.join().expect("filler"))
        .collect();
    let setup = t.elapsed();
    let acquire_full = run_clients(d, 1, dur, acquire_release);
    let one_rtt_full = run_clients(d, 1, dur, listen_release);
    let observer = d.client();
    // What the fillers hold (a benchmark client's last oneway release may
    // still be on its way; `list` may show it a moment longer).
    let held = n / sessions * sessions;
    let start = Instant::now();
    let lat = timed(dur.min(Duration::from_secs(2)), || {
        let l = observer.list(None).expect("list");
        assert!(l.len() >= held);
    });
    let list = Samples::merge(vec![lat], start.elapsed());
    drop(holders);
    let _ = std::fs::write(range, format!("{} {}", old.0, old.1));
    Held {
        held,
        setup,
        acquire_empty,
        acquire_full,
        one_rtt_full,
        list,
    }
}

/// The one-round-trip path at 1, 8 and 64 clients.
pub struct OneRtt {
    pub one: Samples,
    pub eight: Samples,
    pub sixty_four: Samples,
}

/// Measures listen_tcp + oneway release at 1, 8 and 64 clients.
pub fn measure(d: &Daemon, dur: Duration) -> OneRtt {
    OneRtt {
        one: run_clients(d, 1, dur, listen_release),
        eight: run_clients(d, 8, dur, listen_release),
        sixty_four: run_clients(d, 64, dur, listen_release),
    }
}

/// The floors and portserver figures the rows are compared with.
pub struct Yardsticks<'a> {
    /// Unix round trip + 1 fd, 1 client (default placement).
    pub fd1: &'a Samples,
    /// The same, 8 clients.
    pub fd8: &'a Samples,
    /// The round trip with an fd plus the operation's own socket work
    /// (`floors::one_rtt_sockets`), 1 and 8 clients: what a one-RTT
    /// acquire+bind can reach at the most.
    pub op1: &'a Samples,
    pub op8: &'a Samples,
    /// The 8-client one with each client and its peer on one CPU
    /// (`floors::one_rtt_sockets_pinned`): the best placement.
    pub op8_pinned: &'a Samples,
    /// portserver request rate, 1 and 8 clients, when measured.
    pub ps1: Option<f64>,
    pub ps8: Option<f64>,
}

/// The rows: ratios to portserver and to the one-RTT-with-fd floor, with
/// issue 15's targets; then the share of the attainable (the floor with the
/// operation's socket work, `Yardsticks::op1`/`op8`).
pub fn rows(o: &OneRtt, held: &Held, y: &Yardsticks<'_>) -> Vec<Row> {
    let mut rows = one_rtt_rows(o, y);
    rows.push(row(
        "portres one-RTT acquire+bind + oneway release, 64 clients",
        &o.sixty_four,
        format!(
            "{}{:.0}% of the 8-client RTT-with-fd floor; {:.2}x the 8-client rate; {:.0}% of the 8-client RTT+fd+sockets floor",
            portserver_ratio(&o.sixty_four, y.ps8),
            100.0 * o.sixty_four.rate() / y.fd8.rate(),
            o.sixty_four.rate() / o.eight.rate(),
            100.0 * o.sixty_four.rate() / y.op8.rate()
        ),
    ));
    rows.push(row(
        &format!(
            "portres acquire+release, {} reservations held, 1 client",
            held.held
        ),
        &held.acquire_full,
        format!(
            "{:.2}x the rate with none held (same daemon: {}); filled in {}",
            held.acquire_full.rate() / held.acquire_empty.rate(),
            crate::stats::fmt_rate(held.acquire_empty.rate()),
            crate::stats::fmt_dur(held.setup)
        ),
    ));
    rows.push(row(
        &format!(
            "portres one-RTT + oneway release, {} held, 1 client",
            held.held
        ),
        &held.one_rtt_full,
        format!(
            "{:.2}x the 1-client one-RTT rate with a small table",
            held.one_rtt_full.rate() / o.one.rate()
        ),
    ));
    rows.push(row(
        &format!("portres list ({} reservations, no sockets)", held.held),
        &held.list,
        String::new(),
    ));
    rows
}

/// The 1- and 8-client one-RTT rows.
pub fn one_rtt_rows(o: &OneRtt, y: &Yardsticks<'_>) -> Vec<Row> {
    let floor8 = |s: &Samples| 100.0 * s.rate() / y.fd8.rate();
    let op8 = |s: &Samples| 100.0 * s.rate() / y.op8.rate();
    let p50x = o.one.q(0.5).as_secs_f64() / y.fd1.q(0.5).as_secs_f64().max(1e-12);
    let op_p50x = o.one.q(0.5).as_secs_f64() / y.op1.q(0.5).as_secs_f64().max(1e-12);
    vec![
        row(
            "portres one-RTT acquire+bind + oneway release, 1 client",
            &o.one,
            format!(
                "{}p50 = {p50x:.1}x one RTT with fd (target <= 2x: {}); {op_p50x:.1}x the RTT+fd+sockets floor, rate {:.0}% of it",
                portserver_ratio(&o.one, y.ps1),
                verdict(p50x <= 2.0),
                100.0 * o.one.rate() / y.op1.rate()
            ),
        ),
        row(
            "portres one-RTT acquire+bind + oneway release, 8 clients",
            &o.eight,
            format!(
                "{}{:.0}% of the 8-client RTT-with-fd floor (targets >= 20x: {}, >= 70%: {}, p99 <= 500 µs: {}); {:.0}% of the RTT+fd+sockets floor, {:.0}% of it with each pair on one CPU",
                portserver_ratio(&o.eight, y.ps8),
                floor8(&o.eight),
                y.ps8.map_or("n/a", |r| verdict(o.eight.rate() >= 20.0 * r)),
                verdict(floor8(&o.eight) >= 70.0),
                verdict(o.eight.q(0.99) <= Duration::from_micros(500)),
                op8(&o.eight),
                100.0 * o.eight.rate() / y.op8_pinned.rate()
            ),
        ),
    ]
}

/// "12.3x portserver, " when portserver was measured.
fn portserver_ratio(s: &Samples, ps: Option<f64>) -> String {
    ps.map_or(String::new(), |r| {
        format!("{:.1}x portserver, ", s.rate() / r)
    })
}
