//! Hostile input, item by item: every bad message, descriptor, parameter
//! and token gets a *named* error (the stable `code`), and the daemon's
//! state — `list` as an administrator sees it and `ip_local_reserved_ports`
//! — is exactly what it was before. A refused socket is left unbound. A
//! flood of silent connections hits the connection limits with a clear log
//! line while everyone else keeps being served.
//!
//! (`hostile.rs` has the first round of these; this file is the complete
//! catalogue of issue #4 and counts what it tried.)

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use portres::{Client, CreateOptions, Owner, Protocol};
use portres_tests::ProcessDaemon;
use portres_tests::{InProcessDaemon, as_user, cli, kernel_reserved, open_tempdir, run};
use rustix::net::{AddressFamily, SocketType, ipproto};
use serde_json::Value;

const NOBODY: u32 = 65534;

use portres_tests::RawClient as Raw;

fn code(v: &Value) -> String {
    v["parameters"]["code"]
        .as_str()
        .unwrap_or("<success>")
        .to_string()
}

/// What must not change: every reservation as an administrator sees it
/// (tokens included) and the kernel's reserved ports.
fn snapshot(admin: &Client) -> String {
    let mut list = admin.list(None).unwrap();
    for r in &mut list {
        r.in_use = None;
    }
    format!("{list:?} | kernel {}", kernel_reserved())
}

/// A daemon with a runtime TCP and UDP block held by `owner`, a persistent
/// block owned by nobody, and the admin's view of it.
struct World {
    d: InProcessDaemon,
    admin: Client,
    owner: Client,
    tcp: portres::Reservation,
    udp: portres::Reservation,
    persistent_token: String,
    before: String,
    /// Bad inputs tried (each followed by an unchanged-state check).
    tried: std::cell::Cell<usize>,
}

impl World {
    fn new() -> World {
        let d = InProcessDaemon::start(|c| c.quota = 64);
        let admin = d.client();
        let owner = d.client();
        let tcp = owner.acquire(Protocol::Tcp, 0, 4).unwrap();
        let udp = owner.acquire(Protocol::Udp, 0, 2).unwrap();
        let p = admin
            .create(
                Protocol::Tcp,
                7000,
                2,
                CreateOptions {
                    owner: Some(Owner::User(NOBODY)),
                    label: Some("svc".into()),
                },
            )
            .unwrap();
        let persistent_token = p.token.unwrap().to_string();
        // Let the kernel's value settle (releases are written lazily).
        std::thread::sleep(Duration::from_millis(20));
        let before = snapshot(&admin);
        World {
            d,
            admin,
            owner,
            tcp,
            udp,
            persistent_token,
            before,
            tried: std::cell::Cell::new(0),
        }
    }

    #[track_caller]
    fn unchanged(&self, what: &str) {
        self.tried.set(self.tried.get() + 1);
        assert_eq!(
            snapshot(&self.admin),
            self.before,
            "state changed after {what}"
        );
    }
}

/// The local port of a socket (0: unbound).
fn local_port(fd: BorrowedFd<'_>) -> u16 {
    let addr = rustix::net::getsockname(fd).unwrap();
    std::net::SocketAddr::try_from(addr).map_or(0, |a| a.port())
}

fn sock(family: AddressFamily, ty: SocketType, proto: Option<rustix::net::Protocol>) -> OwnedFd {
    rustix::net::socket(family, ty, proto).expect("socket")
}

nstest!(bad_descriptors_get_named_errors_and_change_nothing, |_| {
    let w = World::new();
    let mut raw = Raw::connect(&w.d.socket);
    // The raw connection is another session: give it the owner's capability
    // so the token is usable and only the descriptor is at fault.
    let cap = w.owner.capability().unwrap();
    let v = raw.call_with_fds("io.portres.Attach", serde_json::json!({}), &[cap.as_fd()]);
    assert_eq!(v["parameters"]["reservations"], 2, "{v}");
    let tcp_token = w.tcp.token().to_string();
    let bind = |raw: &mut Raw, fd: BorrowedFd<'_>, addr: &str| {
        raw.call_with_fds(
            "io.portres.Bind",
            serde_json::json!({"token": tcp_token, "address": addr}),
            &[fd],
        )
    };

    let dir = open_tempdir();
    let file = std::fs::File::create(dir.path().join("regular")).unwrap();
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    let dirfd = std::fs::File::open(dir.path()).unwrap();
    let memfd = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let eventfd = rustix::event::eventfd(0, rustix::event::EventfdFlags::CLOEXEC).unwrap();
    let o_path = rustix::fs::open(
        &w.d.socket,
        rustix::fs::OFlags::PATH | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    let (unix_a, _unix_b) = UnixStream::pair().unwrap();
    let unix_dgram = UnixDatagram::unbound().unwrap();
    let raw_icmp = sock(AddressFamily::INET, SocketType::RAW, Some(ipproto::ICMP));
    let raw_tcp = sock(AddressFamily::INET6, SocketType::RAW, Some(ipproto::TCP));
    let packet = sock(AddressFamily::PACKET, SocketType::DGRAM, None);
    let netlink = sock(AddressFamily::NETLINK, SocketType::RAW, None);
    let udplite = sock(
        AddressFamily::INET,
        SocketType::DGRAM,
        Some(ipproto::UDPLITE),
    );
    let mptcp = rustix::net::socket(
        AddressFamily::INET,
        SocketType::STREAM,
        Some(ipproto::MPTCP),
    )
    .ok();
    let bound = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    bound
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    let listening =
        socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).unwrap();
    listening.listen(1).unwrap(); // autobinds to an ephemeral port
    let connected_udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    connected_udp.connect("127.0.0.1:9").unwrap();
    let listener = TcpListener::bind("[::1]:0").unwrap();
    // A socket of another network namespace (made on a thread that enters
    // a fresh one; descriptors are process-wide).
    let foreign: OwnedFd = std::thread::spawn(|| {
        portres_kernel::netns::enter_private_netns().unwrap();
        sock(AddressFamily::INET, SocketType::STREAM, None)
    })
    .join()
    .unwrap();
    let itself = raw.0.try_clone().unwrap();
    let udp4 = sock(AddressFamily::INET, SocketType::DGRAM, None);
    let tcp4 = sock(AddressFamily::INET, SocketType::STREAM, None);
    let tcp6 = sock(AddressFamily::INET6, SocketType::STREAM, None);

    let mut cases: Vec<(&str, BorrowedFd<'_>, &str, &str)> = vec![
        ("a regular file", file.as_fd(), "127.0.0.1", "not_a_socket"),
        ("a pipe", pipe_r.as_fd(), "127.0.0.1", "not_a_socket"),
        ("/dev/null", devnull.as_fd(), "127.0.0.1", "not_a_socket"),
        ("a directory", dirfd.as_fd(), "127.0.0.1", "not_a_socket"),
        ("a memfd", memfd.as_fd(), "127.0.0.1", "not_a_socket"),
        ("an eventfd", eventfd.as_fd(), "127.0.0.1", "not_a_socket"),
        (
            "an O_PATH descriptor of a socket file",
            o_path.as_fd(),
            "127.0.0.1",
            "not_a_socket",
        ),
        (
            "a Unix stream socket",
            unix_a.as_fd(),
            "127.0.0.1",
            "not_supported",
        ),
        (
            "a Unix datagram socket",
            unix_dgram.as_fd(),
            "127.0.0.1",
            "not_supported",
        ),
        (
            "a raw ICMP socket",
            raw_icmp.as_fd(),
            "127.0.0.1",
            "not_supported",
        ),
        (
            "a raw IPv6 TCP socket",
            raw_tcp.as_fd(),
            "::1",
            "not_supported",
        ),
        (
            "a packet socket",
            packet.as_fd(),
            "127.0.0.1",
            "not_supported",
        ),
        (
            "a netlink socket",
            netlink.as_fd(),
            "127.0.0.1",
            "not_supported",
        ),
        (
            "a UDP-Lite socket",
            udplite.as_fd(),
            "127.0.0.1",
            "not_supported",
        ),
        (
            "an already-bound socket",
            bound.as_fd(),
            "127.0.0.1",
            "already_bound",
        ),
        (
            "a listening socket",
            listening.as_fd(),
            "::",
            "already_bound",
        ),
        ("a bound listener", listener.as_fd(), "::1", "already_bound"),
        (
            "a connected UDP socket",
            connected_udp.as_fd(),
            "127.0.0.1",
            "already_bound",
        ),
        (
            "a socket from another network namespace",
            foreign.as_fd(),
            "127.0.0.1",
            "wrong_namespace",
        ),
        (
            "a UDP socket for a TCP reservation",
            udp4.as_fd(),
            "127.0.0.1",
            "invalid_parameter",
        ),
        (
            "an IPv6 address on an IPv4 socket",
            tcp4.as_fd(),
            "::1",
            "invalid_parameter",
        ),
        (
            "an IPv4 address on an IPv6 socket",
            tcp6.as_fd(),
            "127.0.0.1",
            "invalid_parameter",
        ),
        (
            "an address not of this host",
            tcp4.as_fd(),
            "192.0.2.1",
            "invalid_parameter",
        ),
        (
            "the daemon connection itself",
            itself.as_fd(),
            "127.0.0.1",
            "not_supported",
        ),
        (
            "the session capability",
            cap.as_fd(),
            "127.0.0.1",
            "not_a_socket",
        ),
    ];
    if let Some(m) = &mptcp {
        cases.push(("an MPTCP socket", m.as_fd(), "127.0.0.1", "not_supported"));
    }
    let dup = raw.0.try_clone().unwrap();
    let mut failures = Vec::new();
    for (what, fd, addr, want) in &cases {
        let mut r = Raw(dup.try_clone().unwrap());
        let v = bind(&mut r, *fd, addr);
        if code(&v) != *want {
            failures.push(format!("{what}: want {want}, got {v}"));
        }
        w.unchanged(what);
    }
    // Refused sockets stay unbound: the daemon did not touch them.
    for (what, fd) in [
        ("udp socket", udp4.as_fd()),
        ("tcp4 socket", tcp4.as_fd()),
        ("tcp6 socket", tcp6.as_fd()),
    ] {
        assert_eq!(local_port(fd), 0, "{what} was bound although refused");
    }
    // Descriptors where none belongs, and too many.
    let v = raw.call_with_fds("io.portres.Status", serde_json::json!({}), &[file.as_fd()]);
    if code(&v) != "invalid_parameter" {
        failures.push(format!("a descriptor with Status: {v}"));
    }
    w.unchanged("a descriptor with Status");
    let v = raw.call_with_fds(
        "io.portres.Bind",
        serde_json::json!({"token": tcp_token, "address": "127.0.0.1"}),
        &[tcp4.as_fd(), tcp6.as_fd()],
    );
    if code(&v) != "invalid_parameter" {
        failures.push(format!("two descriptors with Bind: {v}"));
    }
    w.unchanged("two descriptors with Bind");
    assert_eq!(local_port(tcp4.as_fd()), 0);
    let v = raw.call_with_fds(
        "io.portres.Bind",
        serde_json::json!({"token": tcp_token, "address": "127.0.0.1"}),
        &[],
    );
    if code(&v) != "not_a_socket" {
        failures.push(format!("Bind without a descriptor: {v}"));
    }
    w.unchanged("Bind without a descriptor");
    // Attach with things that are not a live capability.
    for (what, fd) in [
        ("a socket", tcp4.as_fd()),
        ("a memfd of our own", memfd.as_fd()),
        ("a regular file", file.as_fd()),
    ] {
        let mut other = Raw::connect(&w.d.socket);
        let v = other.call_with_fds("io.portres.Attach", serde_json::json!({}), &[fd]);
        if code(&v) != "access_denied" {
            failures.push(format!("Attach with {what}: {v}"));
        }
        w.unchanged(&format!("Attach with {what}"));
    }
    // A descriptor flood on one connection closes that connection only.
    let mut flood = Raw::connect(&w.d.socket);
    let fds4 = [file.as_fd(), devnull.as_fd(), dirfd.as_fd(), memfd.as_fd()];
    for _ in 0..5 {
        let _ = portres_proto::fdpass::send_with_fds(flood.0.as_fd(), b"{", &fds4);
    }
    assert!(
        flood.reply().is_none(),
        "descriptor flood: connection stays open"
    );
    w.unchanged("a descriptor flood");
    // And after all this, the reservation still works for its holder.
    let l = w.tcp.bind_tcp("127.0.0.1".parse().unwrap()).unwrap();
    assert!(w.tcp.ports().contains(&l.local_addr().unwrap().port()));
    drop(l);
    eprintln!(
        "bad descriptors: {} tried, each answered by name with the state unchanged; {} wrong codes",
        w.tried.get(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    drop((w.udp, w.persistent_token));
});

nstest!(
    bad_messages_parameters_and_tokens_get_named_errors_and_change_nothing,
    |_| {
        let w = World::new();
        let mut raw = Raw::connect(&w.d.socket);
        let tcp_token = w.tcp.token().to_string();
        let guessed = loop {
            let t = getrandom_u64();
            if t != w.tcp.token().get() && t != w.udp.token().get() && t != 0 {
                break t.to_string();
            }
        };
        let deep = format!(
            "{{\"method\":\"io.portres.Acquire\",\"parameters\":{}}}",
            "[".repeat(50_000)
        );
        let bad_frames: Vec<(&str, Vec<u8>, &str)> = vec![
        ("an empty message", b"".to_vec(), "invalid_parameter"),
        ("garbage", b"garbage".to_vec(), "invalid_parameter"),
        ("invalid UTF-8", b"\xff\xfe\xfd".to_vec(), "invalid_parameter"),
        ("a JSON array", b"[1,2,3]".to_vec(), "invalid_parameter"),
        ("a JSON string", b"\"io.portres.List\"".to_vec(), "invalid_parameter"),
        ("no method", b"{\"parameters\":{}}".to_vec(), "invalid_parameter"),
        ("a numeric method", b"{\"method\":42}".to_vec(), "invalid_parameter"),
        ("an unknown method", b"{\"method\":\"io.portres.Nope\"}".to_vec(), "invalid_parameter"),
        ("another interface", b"{\"method\":\"org.example.Acquire\"}".to_vec(), "invalid_parameter"),
        ("duplicate keys", b"{\"method\":\"io.portres.Status\",\"method\":\"io.portres.List\"}".to_vec(), "invalid_parameter"),
        // (`"more": true` is no longer refused: a plain call, see hardening_proto.rs.)
        ("a bidi override in a label", b"{\"method\":\"io.portres.Acquire\",\"parameters\":{\"protocol\":\"tcp\",\"label\":\"a\\u202eb\"}}".to_vec(), "invalid_parameter"),
        ("parameters not an object", b"{\"method\":\"io.portres.Acquire\",\"parameters\":7}".to_vec(), "invalid_parameter"),
        ("50,000 nested arrays", deep.into_bytes(), "invalid_parameter"),
        ("a number past f64", b"{\"method\":\"io.portres.Acquire\",\"parameters\":{\"protocol\":\"tcp\",\"count\":1e400}}".to_vec(), "invalid_parameter"),
        ("an escaped NUL in a label", b"{\"method\":\"io.portres.Acquire\",\"parameters\":{\"protocol\":\"tcp\",\"label\":\"a\\u0000b\"}}".to_vec(), "invalid_parameter"),
        ("a lone surrogate", b"{\"method\":\"io.portres.Acquire\",\"parameters\":{\"protocol\":\"tcp\",\"label\":\"\\ud800\"}}".to_vec(), "invalid_parameter"),
    ];
        let mut failures = Vec::new();
        for (what, mut frame, want) in bad_frames {
            frame.push(0);
            let v = raw.request(&frame, &[]).expect("answered, connection kept");
            if code(&v) != want {
                failures.push(format!("{what}: want {want}, got {v}"));
            }
            w.unchanged(what);
        }
        let big_label = "x".repeat(300);
        let calls: Vec<(&str, &str, Value, &str)> = vec![
            (
                "acquire count 0",
                "io.portres.Acquire",
                serde_json::json!({"protocol":"tcp","count":0}),
                "invalid_parameter",
            ),
            (
                "acquire count 65536",
                "io.portres.Acquire",
                serde_json::json!({"protocol":"tcp","count":65536}),
                "invalid_parameter",
            ),
            (
                "acquire count -1",
                "io.portres.Acquire",
                serde_json::json!({"protocol":"tcp","count":-1}),
                "invalid_parameter",
            ),
            (
                "acquire start 65535 count 2",
                "io.portres.Acquire",
                serde_json::json!({"protocol":"udp","start":65535,"count":2}),
                "invalid_parameter",
            ),
            (
                "acquire start 65536",
                "io.portres.Acquire",
                serde_json::json!({"protocol":"udp","start":65536}),
                "invalid_parameter",
            ),
            (
                "acquire start 2^32",
                "io.portres.Acquire",
                serde_json::json!({"protocol":"udp","start":4294967296u64}),
                "invalid_parameter",
            ),
            (
                "acquire protocol sctp",
                "io.portres.Acquire",
                serde_json::json!({"protocol":"sctp"}),
                "invalid_parameter",
            ),
            (
                "acquire without protocol",
                "io.portres.Acquire",
                serde_json::json!({}),
                "invalid_parameter",
            ),
            (
                "acquire a 300-byte label",
                "io.portres.Acquire",
                serde_json::json!({"protocol":"tcp","label":big_label}),
                "invalid_parameter",
            ),
            (
                "acquire over another's block",
                "io.portres.Acquire",
                serde_json::json!({"protocol":"tcp","start":w.tcp.start(),"count":1}),
                "sharing_violation",
            ),
            (
                "acquire over a persistent block",
                "io.portres.Acquire",
                serde_json::json!({"protocol":"tcp","start":7001,"count":5}),
                "sharing_violation",
            ),
            (
                "create start 0",
                "io.portres.Create",
                serde_json::json!({"protocol":"tcp","start":0,"count":1}),
                "invalid_parameter",
            ),
            (
                "create count 0",
                "io.portres.Create",
                serde_json::json!({"protocol":"tcp","start":5000,"count":0}),
                "invalid_parameter",
            ),
            (
                "create past 65535",
                "io.portres.Create",
                serde_json::json!({"protocol":"tcp","start":65530,"count":7}),
                "invalid_parameter",
            ),
            (
                "create with owner id -1",
                "io.portres.Create",
                serde_json::json!({"protocol":"tcp","start":5000,"count":1,"owner":{"kind":"user","id":-1}}),
                "invalid_parameter",
            ),
            (
                "create with owner kind robot",
                "io.portres.Create",
                serde_json::json!({"protocol":"tcp","start":5000,"count":1,"owner":{"kind":"robot","id":1}}),
                "invalid_parameter",
            ),
            (
                "create over a runtime block",
                "io.portres.Create",
                serde_json::json!({"protocol":"udp","start":w.udp.start(),"count":1}),
                "sharing_violation",
            ),
            (
                "delete start 0",
                "io.portres.Delete",
                serde_json::json!({"protocol":"tcp","start":0,"count":1}),
                "invalid_parameter",
            ),
            (
                "delete count 0",
                "io.portres.Delete",
                serde_json::json!({"protocol":"tcp","start":7000,"count":0}),
                "invalid_parameter",
            ),
            (
                "delete past 65535",
                "io.portres.Delete",
                serde_json::json!({"protocol":"tcp","start":65535,"count":2}),
                "invalid_parameter",
            ),
            (
                "delete part of a block",
                "io.portres.Delete",
                serde_json::json!({"protocol":"tcp","start":7000,"count":1}),
                "not_found",
            ),
            (
                "delete a runtime block",
                "io.portres.Delete",
                serde_json::json!({"protocol":"tcp","start":w.tcp.start(),"count":w.tcp.count()}),
                "not_found",
            ),
            (
                "lookup count 0",
                "io.portres.Lookup",
                serde_json::json!({"protocol":"tcp","start":7000,"count":0}),
                "invalid_parameter",
            ),
            (
                "another session's token (release)",
                "io.portres.Release",
                serde_json::json!({"token":tcp_token}),
                "access_denied",
            ),
            (
                "another session's token, Bind without a descriptor",
                "io.portres.Bind",
                serde_json::json!({"token":tcp_token,"address":"127.0.0.1"}),
                "not_a_socket",
            ),
            (
                "a guessed token (release)",
                "io.portres.Release",
                serde_json::json!({"token":guessed}),
                "not_found",
            ),
            (
                "token 0",
                "io.portres.Release",
                serde_json::json!({"token":"0"}),
                "invalid_parameter",
            ),
            (
                "token 2^64",
                "io.portres.Release",
                serde_json::json!({"token":"18446744073709551616"}),
                "invalid_parameter",
            ),
            (
                "token -5",
                "io.portres.Release",
                serde_json::json!({"token":-5}),
                "invalid_parameter",
            ),
            (
                "token 1.5",
                "io.portres.Release",
                serde_json::json!({"token":1.5}),
                "invalid_parameter",
            ),
            (
                "a persistent token in release",
                "io.portres.Release",
                serde_json::json!({"token":w.persistent_token}),
                "invalid_parameter",
            ),
            (
                "bind address 'nope'",
                "io.portres.Bind",
                serde_json::json!({"token":tcp_token,"address":"nope"}),
                "invalid_parameter",
            ),
            (
                "interface description of another interface",
                "org.varlink.service.GetInterfaceDescription",
                serde_json::json!({"interface":"org.example"}),
                "invalid_parameter",
            ),
        ];
        for (what, method, params, want) in &calls {
            let v = raw.call_with_fds(method, params.clone(), &[]);
            if code(&v) != *want {
                failures.push(format!("{what}: want {want}, got {v}"));
            }
            w.unchanged(what);
        }
        // Another session's token with a real socket: refused, socket untouched.
        let s = sock(AddressFamily::INET, SocketType::STREAM, None);
        let v = raw.call_with_fds(
            "io.portres.Bind",
            serde_json::json!({"token": tcp_token, "address": "127.0.0.1"}),
            &[s.as_fd()],
        );
        if code(&v) != "access_denied" {
            failures.push(format!("bind with another session's token: {v}"));
        }
        assert_eq!(local_port(s.as_fd()), 0);
        w.unchanged("bind with another session's token");
        let v = raw.call_with_fds(
            "io.portres.Bind",
            serde_json::json!({"token": guessed, "address": "127.0.0.1"}),
            &[s.as_fd()],
        );
        if code(&v) != "not_found" {
            failures.push(format!("bind with a guessed token: {v}"));
        }
        w.unchanged("bind with a guessed token");
        // Oneway requests that fail change nothing either (and get no reply).
        let _ = portres_proto::fdpass::send_with_fds(
        raw.0.as_fd(),
        format!("{{\"method\":\"io.portres.Release\",\"oneway\":true,\"parameters\":{{\"token\":\"{tcp_token}\"}}}}\0").as_bytes(),
        &[],
    );
        w.unchanged("a oneway release of another session's token");
        let v = raw.call_with_fds("io.portres.Status", serde_json::json!({}), &[]);
        assert_eq!(v["parameters"]["wire_version"], 1, "{v}");
        // Truncated: a message cut off by the peer's close.
        let mut cut = Raw::connect(&w.d.socket);
        cut.0
            .write_all(
                b"{\"method\":\"io.portres.Acquire\",\"parameters\":{\"protocol\":\"tcp\",\"cou",
            )
            .unwrap();
        drop(cut);
        w.unchanged("a truncated message");
        // Oversized: answered and closed.
        let mut big = Raw::connect(&w.d.socket);
        let _ = big.0.write_all(&vec![b' '; 100 * 1024]);
        let v = big.reply().expect("an error before closing");
        assert_eq!(code(&v), "invalid_parameter", "{v}");
        assert!(big.reply().is_none(), "oversized: connection stays open");
        w.unchanged("an oversized message");
        let mut big2 = Raw::connect(&w.d.socket);
        let mut frame = b"{\"method\":\"io.portres.Status\",\"x\":\"".to_vec();
        frame.extend(std::iter::repeat_n(b'a', 70 * 1024));
        frame.extend(b"\"}\0");
        let _ = big2.0.write_all(&frame);
        let v = big2.reply().expect("an error before closing");
        assert_eq!(code(&v), "invalid_parameter", "{v}");
        w.unchanged("an oversized but well-formed message");
        eprintln!(
            "bad messages, parameters and tokens: {} tried, each answered by name (or the connection \
         closed) with the state unchanged; {} wrong codes",
            w.tried.get(),
            failures.len()
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
);

fn getrandom_u64() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    u64::from_le_bytes(b)
}

nstest!(unprivileged_users_cannot_touch_what_is_not_theirs, |_| {
    let w = World::new();
    let token = w.tcp.token().to_string();
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "create",
            vec!["create", "tcp", "5000", "1"],
            "access_denied",
        ),
        (
            "delete someone's persistent block",
            vec!["delete", "tcp", "7000", "2"],
            "access_denied",
        ),
        (
            "release another user's token",
            vec!["release", &token],
            "access_denied",
        ),
        (
            "acquire a privileged port",
            vec!["acquire", "tcp", "--start", "80", "--hold"],
            "access_denied",
        ),
        (
            "lookup a block it does not own",
            vec!["lookup", "tcp", "7000", "2"],
            "access_denied",
        ),
    ];
    let mut failures = Vec::new();
    for (what, args, want) in &cases {
        let mut c = cli(&w.d.socket);
        c.args(args);
        // 65533: not the owner (nobody owns 7000).
        let (out, _, stderr) = run(as_user(&c, 65533, 65533, &[]));
        if out.status.code() != Some(1) || !stderr.contains(want) {
            failures.push(format!(
                "{what}: want {want}, got {:?} {stderr}",
                out.status
            ));
        }
        w.unchanged(what);
    }
    // A client cannot claim another identity: extra fields are ignored and
    // the kernel's credentials decide.
    let py = "import json,socket,sys\n\
              s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1])\n\
              def call(m,p):\n\
              \x20 s.sendall(json.dumps({'method':m,'parameters':p}).encode()+b'\\0');b=b''\n\
              \x20 while not b.endswith(b'\\0'): b+=s.recv(65536)\n\
              \x20 return json.loads(b[:-1])\n\
              print(json.dumps(call('io.portres.Create',{'protocol':'tcp','start':5000,'count':1,'uid':0,'pid':1,'admin':True,'caller':{'uid':0}})))\n\
              print(json.dumps(call('io.portres.Status',{'uid':0})))\n\
              print(json.dumps(call('io.portres.Acquire',{'protocol':'tcp','count':1,'holder':{'uid':0,'pid':1},'uid':0})))\n";
    let mut c = Command::new("/usr/bin/python3");
    c.arg("-c").arg(py).arg(&w.d.socket);
    let (out, stdout, stderr) = run(as_user(&c, NOBODY, NOBODY, &[]));
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(code(&lines[0]), "access_denied", "{stdout}");
    assert_eq!(lines[1]["parameters"]["your_uid"], NOBODY, "{stdout}");
    assert_eq!(lines[1]["parameters"]["you_are_admin"], false, "{stdout}");
    assert_eq!(
        lines[2]["parameters"]["reservation"]["holder"]["uid"], NOBODY,
        "{stdout}"
    );
    eprintln!(
        "unprivileged: {} tried, {} wrong",
        w.tried.get() + 3,
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
});

/// Starts `portres-stress flood N BYTES` as `uid`; returns the child and
/// what it printed (`opened N refused R`).
fn flood(
    socket: &std::path::Path,
    uid: u32,
    n: usize,
    bytes: usize,
) -> (std::process::Child, usize, usize) {
    let mut cmd = Command::new(portres_tests::bin("portres-stress"));
    cmd.args(["flood", &n.to_string(), &bytes.to_string()])
        .env("PORTRES_SOCKET", socket);
    let mut cmd = if uid == 0 {
        cmd
    } else {
        as_user(&cmd, uid, uid, &[])
    };
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f.first(), Some(&"opened"), "flood printed {line:?}");
    (child, f[1].parse().unwrap(), f[3].parse().unwrap())
}

/// The limit lines of a daemon's log.
fn limit_lines(d: &ProcessDaemon) -> String {
    std::fs::read_to_string(&d.log)
        .unwrap()
        .lines()
        .filter(|l| l.contains("limit reached"))
        .collect::<Vec<_>>()
        .join("\n")
}

nstest!(
    a_flood_of_silent_connections_hits_the_limits_with_a_log_line_and_others_are_served,
    |_| {
        let dir = open_tempdir();
        let d = ProcessDaemon::start(
            dir.path(),
            &[
                "--max-connections",
                "60",
                "--max-connections-per-user",
                "20",
            ],
        );
        let held = d.client();
        let res = held.acquire(Protocol::Udp, 0, 3).unwrap();
        // One user opens 50 connections that never send: 20 are kept, 30 refused.
        let (mut a, opened, refused) = flood(&d.socket, NOBODY, 50, 0);
        assert_eq!((opened, refused), (50, 30));
        // Others are still served: root, another user, and the holder.
        assert!(d.client().status().is_ok());
        let mut st = cli(&d.socket);
        st.arg("status");
        let (out, _, stderr) = run(as_user(&st, 65533, 65533, &[]));
        assert!(out.status.success(), "another user is refused: {stderr}");
        assert_eq!(held.list(None).unwrap().len(), 1);
        let _ = a.kill();
        let _ = a.wait();
        let per_user = limit_lines(&d);
        assert!(
        per_user.contains(
            "per-user connection limit reached (uid 65534 holds 20 connections): refusing a connection from uid 65534"
        ),
        "{per_user}"
    );

        // Root (exempt from the per-user limit) floods to the total limit on a
        // second daemon: new connections are refused with a clear error...
        let dir2 = open_tempdir();
        // Kernel sync off: the first daemon keeps this namespace's sysctl.
        let d2 = ProcessDaemon::start(
            dir2.path(),
            &["--max-connections", "60", "--kernel-sync", "off"],
        );
        let held2 = d2.client();
        let res2 = held2.acquire(Protocol::Tcp, 0, 2).unwrap();
        // The start-up check's probe connection may not be reaped yet: wait
        // until held2's is the only session, so exactly one slot is taken.
        assert!(
            portres_tests::eventually(|| held2.status().is_ok_and(|s| s.sessions == 1)),
            "sessions besides held2's stay open"
        );
        let (mut b, opened, refused) = flood(&d2.socket, 0, 70, 0);
        assert_eq!((opened, refused), (70, 11), "60 slots, one of them held");
        let err = Client::connect_to(&d2.socket)
            .unwrap()
            .status()
            .unwrap_err();
        assert_eq!(err.code, portres::ErrorCode::DaemonUnavailable, "{err}");
        assert!(err.message.contains("connection limit reached"), "{err}");
        // ...open sessions keep working, and so do their reservations...
        assert_eq!(held2.list(None).unwrap().len(), 1);
        drop(res2.bind_tcp("127.0.0.1".parse().unwrap()).unwrap());
        drop(res.bind_udp("127.0.0.1".parse().unwrap()).unwrap());
        // ...and once the flood ends, service resumes.
        let _ = b.kill();
        let _ = b.wait();
        assert!(portres_tests::eventually(|| Client::connect_to(&d2.socket)
            .ok()
            .and_then(|c| c.status().ok())
            .is_some()));
        let total = limit_lines(&d2);
        assert!(
            total.contains(
                "connection limit reached (60 connections): refusing a connection from uid 0"
            ),
            "{total}"
        );
        eprintln!(
            "floods: 120 silent connections (50 from one user, 70 from root); log lines:\n{per_user}\n{total}"
        );
    }
);

nstest!(each_kind_of_connection_limit_gets_its_log_line, |_| {
    let dir = open_tempdir();
    let d = ProcessDaemon::start(
        dir.path(),
        &[
            "--max-connections",
            "40",
            "--max-connections-per-user",
            "10",
        ],
    );
    let (mut a, _, refused_a) = flood(&d.socket, NOBODY, 20, 0);
    let (mut b, _, refused_b) = flood(&d.socket, 0, 40, 0);
    let _ = (a.kill(), a.wait(), b.kill(), b.wait());
    assert_eq!((refused_a, refused_b), (10, 10));
    let lines = limit_lines(&d);
    assert!(
        lines.contains("per-user connection limit reached"),
        "{lines}"
    );
    assert!(
        lines.contains("connection limit reached (40 connections)"),
        "the total limit was hit but not logged:\n{lines}"
    );
});

nstest!(
    one_unprivileged_user_cannot_pin_unbounded_daemon_memory_with_partial_requests,
    |_| {
        let dir = open_tempdir();
        let d = ProcessDaemon::start(dir.path(), &[]);
        let pid = d.child.id();
        let before = portres_tests::rss_mib(pid);
        // Default limits: 4096 connections per user, 64 KiB per request.
        let (mut f, opened, refused) = flood(&d.socket, NOBODY, 4000, 60 * 1024);
        // Once the daemon has taken in what it was sent (RSS and CPU quiet).
        let after = portres_tests::settled_rss_mib(pid);
        let _ = f.kill();
        let _ = f.wait();
        eprintln!(
            "{opened} connections ({refused} refused) x 60 KiB unterminated: daemon RSS {before} MiB -> {after} MiB"
        );
        // RSS may also shrink meanwhile (pages given back): no u64 underflow.
        let grown = after.saturating_sub(before);
        assert!(
            grown < 64,
            "one unprivileged user made the daemon hold {grown} MiB of partial requests (no deadline to finish a request, no per-user byte budget)"
        );
    }
);
