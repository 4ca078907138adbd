//! `portres-stress`: the client processes of the reliability tests
//! (`tests/concurrency.rs`, `tests/client_death.rs`), run as many processes
//! and often as other users. Connects like any client (`PORTRES_SOCKET`).
//!
//! - `churn OPS SEED LOG`: OPS random operations — acquire (any block or a
//!   fixed start in the dynamic range), bind real sockets into the block
//!   (TCP and UDP, IPv4 and IPv6, loopback and wildcard), release, and now
//!   and then drop the whole connection — logging every interval during
//!   which it held a reservation or a bound socket, with CLOCK_MONOTONIC
//!   times (one clock for all processes), so the test can prove afterwards
//!   that no two owners ever held the same port at once.
//! - `hold-many N`: acquire N blocks (TCP and UDP), bind a socket into each,
//!   print `ready` and the blocks, then wait to be killed.
//! - `flood N BYTES`: open N connections and send BYTES bytes without a
//!   terminating NUL on each (0: send nothing), print `opened N refused R`
//!   (R: connections the daemon answered with an error and closed), then wait
//!   to be killed.
//! - `unread N BYTES`: open N connections and pipeline calls with a large
//!   reply (the interface description) on each, about BYTES bytes of
//!   them, never reading a reply; print
//!   `opened N sent B` (B: bytes the sockets took) and wait to be killed.
//! - `park-fds N`: open N connections and send, on each, four messages of
//!   an unfinished request with four descriptors each (16 parked per
//!   connection); print `opened N closed C` (C: connections the daemon
//!   closed) and wait to be killed.
//!
//! Log lines (space-separated):
//! `H proto start count t_sent t_acked t_released uid` — a reservation held
//!   from `t_acked` (reply read) to `t_released` (before the release was
//!   sent or the connection dropped); `t_sent` is before the acquire was sent.
//! `S proto port t_bound t_closed` — a socket bound to `port`.
//! `E message` — something a correct daemon never does.
//! `T ops acquired fixed_refused quota_refused no_free binds released drops` — totals.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::os::fd::OwnedFd;
use std::process::ExitCode;

use portres::{Client, ErrorCode, Protocol, Reservation};
use portres_tests::Rng;

mod floods;

use floods::{flood, park_fds, unread};

fn mono_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

struct Held {
    res: Reservation,
    sent: u64,
    acked: u64,
    sockets: Vec<(u16, u64, OwnedFd)>,
}

#[derive(Default)]
struct Totals {
    ops: u64,
    acquired: u64,
    fixed_refused: u64,
    quota_refused: u64,
    no_free: u64,
    binds: u64,
    released: u64,
    drops: u64,
}

struct Log {
    out: BufWriter<File>,
    uid: u32,
}

impl Log {
    fn line(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
    }

    fn close_held(&mut self, h: Held) -> Reservation {
        for (port, bound, fd) in h.sockets {
            let closed = mono_ns();
            drop(fd);
            let proto = h.res.protocol();
            self.line(&format!("S {proto} {port} {bound} {closed}"));
        }
        let released = mono_ns();
        let r = &h.res;
        let line = format!(
            "H {} {} {} {} {} {released} {}",
            r.protocol(),
            r.start(),
            r.count(),
            h.sent,
            h.acked,
            self.uid
        );
        self.line(&line);
        h.res
    }
}

fn addresses(rng: &mut Rng) -> IpAddr {
    let choices = ["127.0.0.1", "0.0.0.0", "::1", "::"];
    choices[rng.below(4) as usize].parse().expect("address")
}

fn churn(ops: u64, seed: u64, log_path: &str) -> Result<(), String> {
    let socket = std::env::var_os("PORTRES_SOCKET").ok_or("PORTRES_SOCKET unset")?;
    let file = File::create(log_path).map_err(|e| format!("{log_path}: {e}"))?;
    let mut log = Log {
        out: BufWriter::new(file),
        uid: rustix::process::getuid().as_raw(),
    };
    let (lo, hi) = read_range();
    let mut rng = Rng::new(seed);
    let mut client = Client::connect_to(&socket).map_err(|e| e.to_string())?;
    let mut held: Vec<Held> = Vec::new();
    let mut t = Totals::default();
    while t.ops < ops {
        t.ops += 1;
        if rng.chance_per_mille(5) {
            // Drop the connection with everything held: the session ends.
            for h in held.drain(..) {
                let res = log.close_held(h);
                let _ = res.keep();
            }
            drop(client);
            client = Client::connect_to(&socket).map_err(|e| e.to_string())?;
            t.drops += 1;
            continue;
        }
        if held.len() < 3 && (held.is_empty() || rng.chance_per_mille(550)) {
            let proto = if rng.chance_per_mille(500) {
                Protocol::Tcp
            } else {
                Protocol::Udp
            };
            let count = 1 + rng.below(4) as u16;
            let fixed = rng.chance_per_mille(200);
            let start = if fixed {
                lo + rng.below(u64::from(hi - lo - count + 1)) as u16
            } else {
                0
            };
            let sent = mono_ns();
            let res = match client.acquire(proto, start, count) {
                Ok(r) => r,
                Err(e) => {
                    match e.code {
                        ErrorCode::SharingViolation if fixed => t.fixed_refused += 1,
                        ErrorCode::QuotaExceeded => t.quota_refused += 1,
                        ErrorCode::NoFreeBlock => t.no_free += 1,
                        _ => log.line(&format!("E acquire {proto} {start}+{count}: {e}")),
                    }
                    continue;
                }
            };
            let acked = mono_ns();
            t.acquired += 1;
            if res.count() != count || (fixed && res.start() != start) || res.protocol() != proto {
                log.line(&format!(
                    "E asked {proto} {start}+{count}, got {} {}+{}",
                    res.protocol(),
                    res.start(),
                    res.count()
                ));
            }
            let mut h = Held {
                res,
                sent,
                acked,
                sockets: Vec::new(),
            };
            let addr = addresses(&mut rng);
            let binds = rng.below(u64::from(count.min(2)) + 1);
            for _ in 0..binds {
                let bound = match proto {
                    Protocol::Tcp => h.res.bind_tcp(addr).map(|s| {
                        let port = s.local_addr().map_or(0, |a| a.port());
                        (port, OwnedFd::from(s))
                    }),
                    Protocol::Udp => h.res.bind_udp(addr).map(|s| {
                        let port = s.local_addr().map_or(0, |a| a.port());
                        (port, OwnedFd::from(s))
                    }),
                };
                match bound {
                    Ok((port, fd)) => {
                        let at = mono_ns();
                        t.binds += 1;
                        if !h.res.ports().contains(&port) {
                            log.line(&format!(
                                "E bound {proto} port {port} outside the block {}+{}",
                                h.res.start(),
                                h.res.count()
                            ));
                        }
                        h.sockets.push((port, at, fd));
                    }
                    Err(e) => log.line(&format!(
                        "E bind {proto} {addr} into {}+{} ({} bound): {e}",
                        h.res.start(),
                        h.res.count(),
                        h.sockets.len()
                    )),
                }
            }
            held.push(h);
        } else if !held.is_empty() {
            let i = rng.below(held.len() as u64) as usize;
            let h = held.swap_remove(i);
            let res = log.close_held(h);
            if let Err(e) = res.release() {
                log.line(&format!("E release: {e}"));
            }
            t.released += 1;
        }
    }
    // Half the clients release everything, the others just exit.
    let release = rng.chance_per_mille(500);
    for h in held.drain(..) {
        let res = log.close_held(h);
        if release {
            if let Err(e) = res.release() {
                log.line(&format!("E release at exit: {e}"));
            }
        } else {
            let _ = res.keep();
        }
    }
    let mut line = String::new();
    let _ = write!(
        line,
        "T {} {} {} {} {} {} {} {}",
        t.ops,
        t.acquired,
        t.fixed_refused,
        t.quota_refused,
        t.no_free,
        t.binds,
        t.released,
        t.drops
    );
    log.line(&line);
    log.out.flush().map_err(|e| e.to_string())?;
    Ok(())
}

fn read_range() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .unwrap_or_else(|_| "32768 60999".into());
    let mut it = text.split_whitespace().filter_map(|s| s.parse().ok());
    (it.next().unwrap_or(32768), it.next().unwrap_or(60999))
}

fn hold_many(n: u16) -> Result<(), String> {
    let client = Client::connect().map_err(|e| e.to_string())?;
    let mut keep = Vec::new();
    let mut blocks = Vec::new();
    for i in 0..n {
        let proto = if i.is_multiple_of(2) {
            Protocol::Tcp
        } else {
            Protocol::Udp
        };
        let res = client
            .acquire(proto, 0, 1 + i % 5)
            .map_err(|e| e.to_string())?;
        let fd = match proto {
            Protocol::Tcp => res
                .bind_tcp("127.0.0.1".parse().expect("addr"))
                .map(OwnedFd::from),
            Protocol::Udp => res
                .bind_udp("::1".parse().expect("addr"))
                .map(OwnedFd::from),
        }
        .map_err(|e| e.to_string())?;
        blocks.push(format!(
            "{} {} {}",
            res.protocol(),
            res.start(),
            res.count()
        ));
        keep.push((res, fd));
    }
    println!("ready {}", blocks.join(","));
    std::io::stdout().flush().ok();
    loop {
        std::thread::park();
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
    let result = match arg(0) {
        "churn" => churn(
            arg(1).parse().unwrap_or(100),
            arg(2).parse().unwrap_or(1),
            arg(3),
        ),
        "hold-many" => hold_many(arg(1).parse().unwrap_or(1)),
        "flood" => flood(arg(1).parse().unwrap_or(1), arg(2).parse().unwrap_or(0)),
        "unread" => unread(arg(1).parse().unwrap_or(1), arg(2).parse().unwrap_or(0)),
        "park-fds" => park_fds(arg(1).parse().unwrap_or(1)),
        other => Err(format!("unknown action {other:?}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portres-stress: {e}");
            ExitCode::from(1)
        }
    }
}
