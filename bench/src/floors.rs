//! The floors, measured in the same run: what the kernel itself costs for a
//! bind(0), a bare Unix-socket round trip with and without one descriptor
//! passed, and that round trip plus the socket work a one-round-trip
//! acquire+bind cannot do without — no daemon logic at all.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::stats::Samples;

/// socket + bind(127.0.0.1:0) + close, one thread.
pub fn kernel_bind0(dur: Duration) -> Samples {
    let start = Instant::now();
    let lat = crate::stats::timed(dur, || {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind(0)");
        drop(l);
    });
    Samples::merge(vec![lat], start.elapsed())
}

/// `clients` threads, each with its own echo peer thread, doing 16-byte
/// round trips; with `pass_fd` each request carries one socket descriptor
/// (received and closed by the peer), like a Bind request.
pub fn unix_rtt(clients: usize, pass_fd: bool, dur: Duration) -> Samples {
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let (mut a, b) = UnixStream::pair().expect("socketpair");
            std::thread::spawn(move || echo(b, pass_fd));
            std::thread::spawn(move || round_trips(&mut a, pass_fd, dur))
        })
        .collect();
    Samples::join(handles, start)
}

/// One client and its echo peer, both pinned to the first CPU this process
/// may use: the round trip with no CPU crossing and no idle CPU to wake —
/// what portres's own round trips cost once a connection sits on a worker
/// on its client's CPU.
pub fn unix_rtt_one_cpu(pass_fd: bool, dur: Duration) -> Samples {
    let cpu = rustix::thread::sched_getaffinity(None)
        .ok()
        .and_then(|set| (0..rustix::thread::CpuSet::MAX_CPU).find(|&c| set.is_set(c)))
        .unwrap_or(0);
    let pin = move || {
        let mut set = rustix::thread::CpuSet::new();
        set.set(cpu);
        let _ = rustix::thread::sched_setaffinity(None, &set);
    };
    let start = Instant::now();
    let (mut a, b) = UnixStream::pair().expect("socketpair");
    std::thread::spawn(move || {
        pin();
        echo(b, pass_fd)
    });
    let client = std::thread::spawn(move || {
        pin();
        round_trips(&mut a, pass_fd, dur)
    });
    Samples::merge(vec![client.join().expect("client")], start.elapsed())
}

/// 16-byte round trips on `a` for `dur` (with one descriptor passed per
/// request when `pass_fd`: an unbound socket, as Bind sends); latencies.
fn round_trips(a: &mut UnixStream, pass_fd: bool, dur: Duration) -> Vec<Duration> {
    let passed = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let mut buf = [7u8; 16];
    crate::stats::timed(dur, || {
        if pass_fd {
            portres_proto::fdpass::send_with_fds(a.as_fd(), &buf, &[passed.as_fd()]).expect("send");
        } else {
            a.write_all(&buf).expect("write");
        }
        a.read_exact(&mut buf).expect("read");
    })
}

/// Serves echo connections on `socket` forever, one thread per connection
/// (the body of `portres-bench --echo-server SOCKET`, a separate process).
pub fn echo_server(socket: &std::path::Path) -> ! {
    let listener = std::os::unix::net::UnixListener::bind(socket).expect("bind echo socket");
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let mut mode = [0u8; 1];
        // The readiness check connects and hangs up without a mode byte.
        if stream.read_exact(&mut mode).is_ok() {
            std::thread::spawn(move || echo(stream, mode[0] == 1));
        }
    }
    std::process::exit(0)
}

/// Like `unix_rtt`, but the echo peer is another process (as portresd is
/// for portres clients): the scheduler cannot treat the two ends as one
/// program, and a round trip usually crosses CPUs.
pub fn unix_rtt_process(clients: usize, pass_fd: bool, dur: Duration) -> Samples {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("echo.sock");
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = std::process::Command::new(exe)
        .arg("--echo-server")
        .arg(&socket)
        .spawn()
        .expect("spawn echo server");
    while UnixStream::connect(&socket).is_err() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let mut a = UnixStream::connect(&socket).expect("connect echo");
            a.write_all(&[u8::from(pass_fd)]).expect("mode");
            std::thread::spawn(move || round_trips(&mut a, pass_fd, dur))
        })
        .collect();
    let samples = Samples::join(handles, start);
    let _ = child.kill();
    let _ = child.wait();
    samples
}

/// The one-round-trip acquire+bind's own floor (issue 15): `clients`
/// threads, each with its own peer thread (as `unix_rtt`), each round trip
/// doing the socket work `Client::listen_tcp` and the daemon's Acquire with
/// a socket cannot skip, and nothing else. The client: socket(), the
/// request with the socket passed, the reply, SO_REUSEADDR, listen(),
/// close(). The peer: the in-use probe (socket(AF_INET6), IPV6_V6ONLY off,
/// bind `[::]:P`, close) and the bind of the passed socket to
/// `127.0.0.1:P`, then close() of its copy and the reply. Each peer has a
/// port of its own (free again once its client closed the listener); what
/// it leaves out is the daemon's part: JSON, the table, the socket checks
/// (getsockname, SO_TYPE, SO_PROTOCOL, SO_NETNS_COOKIE, SO_REUSEADDR), the
/// oneway release and the event loop.
pub fn one_rtt_sockets(clients: usize, dur: Duration) -> Samples {
    one_rtt_sockets_placed(clients, false, dur)
}

/// `one_rtt_sockets` with each client and its peer pinned to one CPU, the
/// pairs spread over the CPUs this process may use in turn: no round trip
/// crosses CPUs — as the daemon arranges for its connections (a worker
/// per CPU, each connection on its client's CPU), with the clients spread
/// evenly, which the scheduler does not promise the daemon's clients.
pub fn one_rtt_sockets_pinned(clients: usize, dur: Duration) -> Samples {
    one_rtt_sockets_placed(clients, true, dur)
}

fn one_rtt_sockets_placed(clients: usize, pinned: bool, dur: Duration) -> Samples {
    let cpus: Vec<usize> = rustix::thread::sched_getaffinity(None)
        .ok()
        .map(|set| {
            (0..rustix::thread::CpuSet::MAX_CPU)
                .filter(|&c| set.is_set(c))
                .collect()
        })
        .unwrap_or_default();
    let pin = move |cpu: Option<usize>| {
        if let Some(cpu) = cpu {
            let mut set = rustix::thread::CpuSet::new();
            set.set(cpu);
            let _ = rustix::thread::sched_setaffinity(None, &set);
        }
    };
    let start = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|i| {
            let (mut a, b) = UnixStream::pair().expect("socketpair");
            let port = OP_FLOOR_PORT + i as u16;
            let cpu = (pinned && !cpus.is_empty()).then(|| cpus[i % cpus.len()]);
            std::thread::spawn(move || {
                pin(cpu);
                probe_and_bind_peer(b, port)
            });
            std::thread::spawn(move || {
                pin(cpu);
                listen_round_trips(&mut a, dur)
            })
        })
        .collect();
    Samples::join(handles, start)
}

/// The first port of the op floor's peers (one each, in the private
/// namespace the benchmark runs in; below the dynamic range).
const OP_FLOOR_PORT: u16 = 20_000;

/// The op floor's client: a fresh TCP socket per round trip, passed, then
/// listened on and closed (what `listen_tcp` + dropping the listener does).
fn listen_round_trips(a: &mut UnixStream, dur: Duration) -> Vec<Duration> {
    let mut buf = [7u8; 16];
    crate::stats::timed(dur, || {
        let socket = rustix::net::socket_with(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            Some(rustix::net::ipproto::TCP),
        )
        .expect("socket");
        portres_proto::fdpass::send_with_fds(a.as_fd(), &buf, &[socket.as_fd()]).expect("send");
        a.read_exact(&mut buf).expect("read");
        rustix::net::sockopt::set_socket_reuseaddr(&socket, true).expect("SO_REUSEADDR");
        rustix::net::listen(&socket, 1024).expect("listen");
        drop(socket);
    })
}

/// The op floor's peer: per request, probe `port` with a dual-stack IPv6
/// socket, bind the passed socket to 127.0.0.1 on it, close, reply.
fn probe_and_bind_peer(mut b: UnixStream, port: u16) {
    use rustix::net::{AddressFamily, SocketFlags, SocketType, ipproto, sockopt};
    let mut buf = [0u8; 16];
    let mut fds = std::collections::VecDeque::new();
    let probe_at = std::net::SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port));
    let bind_at = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, port));
    loop {
        let mut got = 0;
        while got < 16 {
            match portres_proto::fdpass::recv_with_fds(&b, &mut buf[got..], &mut fds) {
                Ok(r) if r.bytes > 0 => got += r.bytes,
                _ => return,
            }
        }
        let Some(passed) = fds.pop_front() else {
            return;
        };
        fds.clear();
        let probe = rustix::net::socket_with(
            AddressFamily::INET6,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            Some(ipproto::TCP),
        )
        .expect("probe socket");
        sockopt::set_ipv6_v6only(&probe, false).expect("IPV6_V6ONLY");
        rustix::net::bind(&probe, &probe_at).expect("probe bind (the port is the peer's own)");
        drop(probe);
        rustix::net::bind(&passed, &bind_at).expect("bind the passed socket");
        drop(passed);
        if b.write_all(&buf).is_err() {
            return;
        }
    }
}

fn echo(mut b: UnixStream, pass_fd: bool) {
    let mut buf = [0u8; 16];
    let mut fds = std::collections::VecDeque::new();
    loop {
        if pass_fd {
            let mut got = 0;
            while got < 16 {
                match portres_proto::fdpass::recv_with_fds(&b, &mut buf[got..], &mut fds) {
                    Ok(r) if r.bytes > 0 => got += r.bytes,
                    _ => return,
                }
            }
            fds.clear();
        } else if b.read_exact(&mut buf).is_err() {
            return;
        }
        if b.write_all(&buf).is_err() {
            return;
        }
    }
}
