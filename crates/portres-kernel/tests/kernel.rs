//! Real-kernel tests of portres-kernel. Each test that binds ports or
//! writes sysctls first moves its own thread into a fresh network namespace
//! (`netns::enter_private_netns`), so tests run in parallel and never touch
//! the machine's real settings; without root they print a SKIPPED line and
//! pass.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use portres_core::{ErrorCode, PortSet, Protocol};
use portres_kernel::capability::{file_id, new_capability};
use portres_kernel::diag::{self, BoundSocket};
use portres_kernel::netns::enter_private_netns;
use portres_kernel::probe::port_in_use;
use portres_kernel::sock::{self, SocketInfo};
use portres_kernel::sysctl::{self, ProcReservedPorts, ReservedPorts};
use socket2::{Domain, Socket, Type};

/// Enters a private network namespace, or says why the test is skipped.
fn private_netns(test: &str) -> bool {
    match enter_private_netns() {
        Ok(()) => true,
        Err(e) => {
            // The same rule as portres-tests' `netns()`: CI sets this so a
            // test that could not run fails instead of passing by skipping.
            if std::env::var_os("PORTRES_REQUIRE_PRIVILEGED_TESTS").is_some_and(|v| v == "1") {
                panic!(
                    "{test}: cannot enter a private network namespace ({e}) and PORTRES_REQUIRE_PRIVILEGED_TESTS=1"
                );
            }
            eprintln!("SKIPPED {test}: needs root for a private network namespace: {e}");
            false
        }
    }
}

macro_rules! netns_or_skip {
    ($test:literal) => {
        if !private_netns($test) {
            return;
        }
    };
}

fn loopback4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

fn loopback6(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port)
}

fn tcp_socket(v6: bool) -> Socket {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    Socket::new(domain, Type::STREAM, Some(socket2::Protocol::TCP)).expect("TCP socket")
}

fn udp_socket(v6: bool) -> Socket {
    let domain = if v6 { Domain::IPV6 } else { Domain::IPV4 };
    Socket::new(domain, Type::DGRAM, Some(socket2::Protocol::UDP)).expect("UDP socket")
}

fn port_of(socket: &Socket) -> u16 {
    socket
        .local_addr()
        .expect("local address")
        .as_socket()
        .expect("an inet socket")
        .port()
}

fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The raw text of the reserved-ports sysctl, read in one call.
fn raw_reserved_text() -> String {
    let mut file = File::open(ProcReservedPorts::DEFAULT_PATH).expect("open sysctl");
    let mut buf = vec![0u8; 1 << 20];
    let n = file.read(&mut buf).expect("read sysctl");
    buf.truncate(n);
    String::from_utf8(buf).expect("UTF-8")
}

/// Every other port of 20000..=40000: about 60 KB of text.
fn every_other_port() -> PortSet {
    let mut set = PortSet::new();
    for p in (20000..=40000).step_by(2) {
        set.insert_range(p, p);
    }
    set
}

// ---------------------------------------------------------------- sysctl

#[test]
fn sysctl_round_trips_a_long_value_and_clears_it() {
    netns_or_skip!("sysctl_round_trips_a_long_value_and_clears_it");
    let mut sysctl = ProcReservedPorts::new();
    sysctl.check_writable().expect("root may write the sysctl");
    assert!(
        sysctl.read().expect("read").is_empty(),
        "a new namespace starts empty"
    );

    let mut long = every_other_port();
    long.insert_range(50000, 50100);
    assert!(long.to_string().len() > 4 * 4092, "several write pieces");
    sysctl.write(&long).expect("write long value");
    assert_eq!(sysctl.read().expect("read"), long);
    assert_eq!(raw_reserved_text(), format!("{long}\n"));

    // A shorter value replaces the longer one entirely.
    let short: PortSet = "1000-1010,2000".parse().expect("valid");
    sysctl.write(&short).expect("write short value");
    assert_eq!(sysctl.read().expect("read"), short);

    sysctl.write(&PortSet::new()).expect("clear");
    assert!(sysctl.read().expect("read").is_empty());
    assert_eq!(raw_reserved_text().trim(), "");

    // Clearing works after a multi-piece value too.
    sysctl.write(&long).expect("write long value");
    sysctl.write(&PortSet::new()).expect("clear");
    assert!(sysctl.read().expect("read").is_empty());
}

#[test]
fn sysctl_prints_the_canonical_rendering() {
    netns_or_skip!("sysctl_prints_the_canonical_rendering");
    let messy = "9,1-3,2,5-7,8,65535,4";
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(ProcReservedPorts::DEFAULT_PATH)
        .expect("open sysctl");
    assert_eq!(file.write(messy.as_bytes()).expect("write"), messy.len());
    drop(file);
    let set: PortSet = messy.parse().expect("valid");
    assert_eq!(raw_reserved_text(), format!("{set}\n"));
    assert_eq!(ProcReservedPorts::new().read().expect("read"), set);
}

#[test]
fn an_adding_write_keeps_every_port_and_a_replacing_write_is_refused_when_too_long() {
    netns_or_skip!(
        "an_adding_write_keeps_every_port_and_a_replacing_write_is_refused_when_too_long"
    );
    let mut sysctl = ProcReservedPorts::new();
    let long = every_other_port();
    sysctl.write(&long).expect("set a long value");
    // The kernel fact the daemon leans on: a write at a non-zero offset
    // adds (ORs) and keeps everything that was there.
    let added: PortSet = "50000-50010,60000".parse().expect("valid");
    sysctl.add(&added).expect("add");
    assert_eq!(sysctl.read().expect("read"), long.union(&added));
    // An adding write longer than one piece adds all of it.
    let mut more = PortSet::new();
    for p in (41001..=47001).step_by(2) {
        more.insert_range(p, p);
    }
    assert!(more.to_string().len() > sysctl::MAX_WRITE);
    sysctl.add(&more).expect("add long");
    assert_eq!(
        sysctl.read().expect("read"),
        long.union(&added).union(&more)
    );
    // A replacing write must fit one write; a longer one changes nothing.
    let err = sysctl.replace(&long).expect_err("too long");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(sysctl.read().expect("read").covers(&more));
    // converge: a shrink of the long value is one write of a superset.
    let current = sysctl.read().expect("read");
    let held = sysctl::converge(&mut sysctl, Some(&current), &long).expect("converge");
    assert!(held.covers(&long) && !held.contains(60000));
    assert_eq!(sysctl.read().expect("read"), held);
    assert_eq!(sysctl.read_text().expect("read"), held.to_string());
    sysctl.replace(&PortSet::new()).expect("clear");
    assert!(sysctl.read().expect("read").is_empty());
}

#[test]
fn bind_zero_never_lands_in_a_reserved_port() {
    netns_or_skip!("bind_zero_never_lands_in_a_reserved_port");
    let (first, last) = sysctl::local_port_range().expect("port range");
    assert!(0 < first && first <= last);
    let mut reserved = every_other_port();
    reserved.insert_range(40001, 58000);
    ProcReservedPorts::new().write(&reserved).expect("write");

    let mut sockets = Vec::new();
    for i in 0..1000 {
        let socket = tcp_socket(i % 2 == 1);
        let addr = if i % 2 == 1 {
            loopback6(0)
        } else {
            loopback4(0)
        };
        socket.bind(&addr.into()).expect("bind port 0");
        let port = port_of(&socket);
        assert!(
            !reserved.contains(port),
            "bind(0) picked reserved port {port}"
        );
        assert!((first..=last).contains(&port));
        sockets.push(socket);
    }
    for _ in 0..200 {
        let socket = UdpSocket::bind(loopback4(0)).expect("UDP bind port 0");
        let port = socket.local_addr().expect("address").port();
        assert!(!reserved.contains(port), "UDP bind(0) picked {port}");
    }
}

#[test]
fn port_sysctls_read_the_defaults() {
    netns_or_skip!("port_sysctls_read_the_defaults");
    // A new namespace starts with the kernel's default range.
    assert_eq!(sysctl::local_port_range().expect("range"), (32768, 60999));
    assert_eq!(sysctl::unprivileged_port_start().expect("start"), 1024);
}

// ----------------------------------------------------------------- probe

#[test]
fn probe_sees_an_ipv4_only_listener() {
    netns_or_skip!("probe_sees_an_ipv4_only_listener");
    let listener = TcpListener::bind(loopback4(0)).expect("listen");
    let port = listener.local_addr().expect("address").port();
    assert!(port_in_use(Protocol::Tcp, port).expect("probe"));
    // TCP and UDP port spaces are separate.
    assert!(!port_in_use(Protocol::Udp, port).expect("probe"));
}

#[test]
fn probe_sees_an_ipv6_only_listener() {
    netns_or_skip!("probe_sees_an_ipv6_only_listener");
    let socket = tcp_socket(true);
    socket.set_only_v6(true).expect("v6only");
    socket.bind(&loopback6(0).into()).expect("bind");
    socket.listen(8).expect("listen");
    assert!(port_in_use(Protocol::Tcp, port_of(&socket)).expect("probe"));
}

#[test]
fn probe_sees_a_bound_not_listening_reuseaddr_socket() {
    netns_or_skip!("probe_sees_a_bound_not_listening_reuseaddr_socket");
    let socket = tcp_socket(false);
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket
        .bind(&SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).into())
        .expect("bind");
    assert!(port_in_use(Protocol::Tcp, port_of(&socket)).expect("probe"));
}

#[test]
fn probe_sees_a_reuseport_listener() {
    netns_or_skip!("probe_sees_a_reuseport_listener");
    let socket = tcp_socket(true);
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    socket.bind(&loopback6(0).into()).expect("bind");
    socket.listen(8).expect("listen");
    assert!(port_in_use(Protocol::Tcp, port_of(&socket)).expect("probe"));
}

/// Waits until a sock_diag dump shows a TIME_WAIT entry on `port`.
fn wait_for_time_wait(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let sockets = diag::sockets_on_port(Protocol::Tcp, port).expect("dump");
        if sockets.iter().any(|s| s.state == diag::TCP_TIME_WAIT) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no TIME_WAIT on {port}: {sockets:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn probe_sees_time_wait_connections() {
    netns_or_skip!("probe_sees_time_wait_connections");
    // The side that closes first ends in TIME_WAIT.
    let listener = TcpListener::bind(loopback4(0)).expect("listen");
    let server_port = listener.local_addr().expect("address").port();

    // Client closes first: TIME_WAIT on the client's port.
    let client = TcpStream::connect(loopback4(server_port)).expect("connect");
    let client_port = client.local_addr().expect("address").port();
    let (mut server, _) = listener.accept().expect("accept");
    drop(client);
    assert_eq!(server.read(&mut [0u8; 1]).expect("read EOF"), 0);
    drop(server);
    wait_for_time_wait(client_port);
    assert!(port_in_use(Protocol::Tcp, client_port).expect("probe"));

    // Server closes first, then the listener goes: TIME_WAIT is all that
    // holds the server's port.
    let mut client = TcpStream::connect(loopback4(server_port)).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    drop(listener);
    drop(server);
    assert_eq!(client.read(&mut [0u8; 1]).expect("read EOF"), 0);
    drop(client);
    wait_for_time_wait(server_port);
    let holders = diag::sockets_on_port(Protocol::Tcp, server_port).expect("dump");
    assert!(
        holders.iter().all(|s| s.state == diag::TCP_TIME_WAIT),
        "{holders:?}"
    );
    assert!(port_in_use(Protocol::Tcp, server_port).expect("probe"));
}

#[test]
fn probe_sees_a_bound_udp_socket() {
    netns_or_skip!("probe_sees_a_bound_udp_socket");
    let v4 = UdpSocket::bind(loopback4(0)).expect("bind");
    let port = v4.local_addr().expect("address").port();
    assert!(port_in_use(Protocol::Udp, port).expect("probe"));
    assert!(!port_in_use(Protocol::Tcp, port).expect("probe"));

    let v6 = UdpSocket::bind(loopback6(0)).expect("bind");
    let port = v6.local_addr().expect("address").port();
    assert!(port_in_use(Protocol::Udp, port).expect("probe"));
}

#[test]
fn probe_reports_a_free_port_as_free() {
    netns_or_skip!("probe_reports_a_free_port_as_free");
    let listener = TcpListener::bind(loopback4(0)).expect("listen");
    let port = listener.local_addr().expect("address").port();
    drop(listener);
    assert!(!port_in_use(Protocol::Tcp, port).expect("probe"));
    assert!(!port_in_use(Protocol::Udp, port).expect("probe"));
    // Twice: the probe released the port it bound.
    assert!(!port_in_use(Protocol::Tcp, port).expect("probe"));
    assert!(!port_in_use(Protocol::Tcp, 80).expect("probe"));
    assert!(!port_in_use(Protocol::Udp, 65535).expect("probe"));
}

/// Drops CAP_NET_BIND_SERVICE from the calling thread's effective set, so
/// binds below 1024 fail with EACCES as for an unprivileged daemon.
/// Capabilities are per thread in the kernel: capset(2) called directly
/// (not through a libc wrapper that syncs all threads) leaves the rest of
/// the test process alone.
fn drop_net_bind_service() {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    const CAP_NET_BIND_SERVICE: u32 = 10;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two `Data` structs (version 3) into `data` and
    // may update `header.version`; both are live and writable.
    let rc = unsafe { libc::syscall(libc::SYS_capget, &raw mut header, data.as_mut_ptr()) };
    assert_eq!(rc, 0, "capget: {}", std::io::Error::last_os_error());
    data[0].effective &= !(1 << CAP_NET_BIND_SERVICE);
    // SAFETY: capset reads the header and two `Data` structs, all live.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &raw mut header, data.as_ptr()) };
    assert_eq!(rc, 0, "capset: {}", std::io::Error::last_os_error());
}

#[test]
fn probe_falls_back_to_diag_for_privileged_ports_without_privilege() {
    netns_or_skip!("probe_falls_back_to_diag_for_privileged_ports_without_privilege");
    let _listener = TcpListener::bind(loopback4(80)).expect("listen on 80");
    let _udp = UdpSocket::bind(loopback6(53)).expect("bind 53");
    drop_net_bind_service();
    assert!(
        TcpListener::bind(loopback4(81)).is_err(),
        "binding port 81 still works: capability not dropped"
    );
    assert!(port_in_use(Protocol::Tcp, 80).expect("probe"));
    assert!(!port_in_use(Protocol::Tcp, 81).expect("probe"));
    assert!(port_in_use(Protocol::Udp, 53).expect("probe"));
    assert!(!port_in_use(Protocol::Udp, 80).expect("probe"));

    let socket = tcp_socket(false);
    let err = sock::bind_into(socket.as_fd(), IpAddr::V4(Ipv4Addr::LOCALHOST), 81..=82)
        .expect_err("privileged");
    assert_eq!(err.code, ErrorCode::AccessDenied);
    assert!(err.message.contains("EACCES"), "{}", err.message);
}

// ------------------------------------------------------------------ diag

fn find(sockets: &[BoundSocket], port: u16) -> Vec<BoundSocket> {
    sockets.iter().filter(|s| s.port == port).cloned().collect()
}

#[test]
fn diag_sees_a_listener_and_a_bound_udp_socket() {
    netns_or_skip!("diag_sees_a_listener_and_a_bound_udp_socket");
    let listener = TcpListener::bind(loopback4(0)).expect("listen");
    let tcp_port = listener.local_addr().expect("address").port();
    let udp = UdpSocket::bind(loopback6(0)).expect("bind");
    let udp_port = udp.local_addr().expect("address").port();

    let tcp = diag::bound_sockets(Protocol::Tcp).expect("TCP dump");
    let found = find(&tcp, tcp_port);
    assert_eq!(found.len(), 1, "{tcp:?}");
    let entry = &found[0];
    assert_eq!(entry.protocol, Protocol::Tcp);
    assert!(!entry.ipv6);
    assert_eq!(entry.state, diag::TCP_LISTEN);
    assert_eq!(entry.uid, uid());
    assert_ne!(entry.inode, 0);
    assert_eq!(
        rustix::fs::fstat(listener.as_fd()).expect("fstat").st_ino,
        u64::from(entry.inode)
    );

    let udps = diag::bound_sockets(Protocol::Udp).expect("UDP dump");
    let found = find(&udps, udp_port);
    assert_eq!(found.len(), 1, "{udps:?}");
    let entry = &found[0];
    assert_eq!(entry.protocol, Protocol::Udp);
    assert!(entry.ipv6);
    assert_eq!(entry.state, diag::TCP_CLOSE);
    assert_eq!(entry.uid, uid());
    assert!(find(&udps, tcp_port).is_empty());

    assert_eq!(
        diag::sockets_on_port(Protocol::Tcp, tcp_port).expect("dump"),
        find(&tcp, tcp_port)
    );
    assert_eq!(
        diag::sockets_on_port(Protocol::Udp, udp_port).expect("dump"),
        find(&udps, udp_port)
    );
    assert!(
        diag::sockets_on_port(Protocol::Udp, tcp_port)
            .expect("dump")
            .is_empty()
    );
}

#[test]
fn diag_sees_a_connection_on_both_ends() {
    netns_or_skip!("diag_sees_a_connection_on_both_ends");
    let listener = TcpListener::bind(loopback6(0)).expect("listen");
    let port = listener.local_addr().expect("address").port();
    let client = TcpStream::connect(loopback6(port)).expect("connect");
    let (_server, _) = listener.accept().expect("accept");
    let client_port = client.local_addr().expect("address").port();
    let on_port = diag::sockets_on_port(Protocol::Tcp, port).expect("dump");
    let mut states: Vec<u8> = on_port.iter().map(|s| s.state).collect();
    states.sort_unstable();
    assert_eq!(states, vec![1, diag::TCP_LISTEN], "{on_port:?}");
    let client_side = diag::sockets_on_port(Protocol::Tcp, client_port).expect("dump");
    assert_eq!(client_side.len(), 1, "{client_side:?}");
    assert!(client_side[0].ipv6);
}

/// Linux 6.8 added the TCP_BOUND_INACTIVE dump; this pins what we rely on.
#[test]
fn diag_sees_a_bound_but_not_listening_tcp_socket() {
    netns_or_skip!("diag_sees_a_bound_but_not_listening_tcp_socket");
    let socket = tcp_socket(false);
    socket.bind(&loopback4(0).into()).expect("bind");
    let port = port_of(&socket);
    let found = diag::sockets_on_port(Protocol::Tcp, port).expect("dump");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].state, diag::TCP_CLOSE);
    assert_eq!(found[0].uid, uid());
    assert_eq!(
        find(&diag::bound_sockets(Protocol::Tcp).expect("dump"), port),
        found
    );
}

#[test]
fn diag_of_an_empty_namespace_is_empty() {
    netns_or_skip!("diag_of_an_empty_namespace_is_empty");
    assert!(diag::bound_sockets(Protocol::Tcp).expect("dump").is_empty());
    assert!(diag::bound_sockets(Protocol::Udp).expect("dump").is_empty());
}

#[test]
fn diag_reads_dumps_spanning_many_datagrams() {
    netns_or_skip!("diag_reads_dumps_spanning_many_datagrams");
    // ~2000 entries of ~100 bytes: several 32 KiB datagrams per family.
    let mut sockets = Vec::new();
    for i in 0..2000 {
        let socket = udp_socket(i % 2 == 0);
        let addr = if i % 2 == 0 {
            loopback6(0)
        } else {
            loopback4(0)
        };
        socket.bind(&addr.into()).expect("bind");
        sockets.push(socket);
    }
    let mut ports: Vec<u16> = sockets.iter().map(port_of).collect();
    let dump = diag::bound_sockets(Protocol::Udp).expect("dump");
    let mut seen: Vec<u16> = dump.iter().map(|s| s.port).collect();
    seen.sort_unstable();
    ports.sort_unstable();
    assert_eq!(seen, ports);
}

// ------------------------------------------------------------- namespaces

#[test]
fn netns_cookie_differs_after_entering_a_new_namespace() {
    std::thread::spawn(|| {
        let before = UdpSocket::bind(loopback4(0)).expect("bind");
        let old = sock::netns_cookie(before.as_fd()).expect("cookie");
        assert_eq!(sock::current_netns_cookie().expect("cookie"), old);
        netns_or_skip!("netns_cookie_differs_after_entering_a_new_namespace");
        let after = UdpSocket::bind(loopback4(0)).expect("bind");
        let new = sock::netns_cookie(after.as_fd()).expect("cookie");
        assert_ne!(new, old);
        assert_eq!(sock::current_netns_cookie().expect("cookie"), new);
        // A socket stays in the namespace it was created in.
        assert_eq!(sock::netns_cookie(before.as_fd()).expect("cookie"), old);
    })
    .join()
    .expect("test thread");
}

#[test]
fn netns_cookie_of_a_non_socket_fails() {
    let file = File::open(env!("CARGO_MANIFEST_DIR")).expect("open dir");
    assert!(sock::netns_cookie(file.as_fd()).is_err());
}

// --------------------------------------------------------------- inspect

fn inspect_code<F: AsFd>(fd: &F) -> ErrorCode {
    sock::inspect(fd.as_fd()).expect_err("refused").code
}

#[test]
fn inspect_refuses_what_is_not_a_socket() {
    let file = File::open(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).expect("open");
    let err = sock::inspect(file.as_fd()).expect_err("a file");
    assert_eq!(err.code, ErrorCode::NotASocket);
    assert!(err.message.contains("regular file"), "{}", err.message);

    let (reader, writer) = std::io::pipe().expect("pipe");
    assert_eq!(inspect_code(&reader), ErrorCode::NotASocket);
    assert_eq!(inspect_code(&writer), ErrorCode::NotASocket);
}

#[test]
fn inspect_refuses_other_kinds_of_socket() {
    let (a, _b) = UnixStream::pair().expect("socketpair");
    let err = sock::inspect(a.as_fd()).expect_err("unix");
    assert_eq!(err.code, ErrorCode::NotSupported);
    assert!(err.message.contains("AF_UNIX"), "{}", err.message);

    match Socket::new(Domain::IPV4, Type::RAW, Some(socket2::Protocol::ICMPV4)) {
        Ok(raw) => {
            let err = sock::inspect(raw.as_fd()).expect_err("raw");
            assert_eq!(err.code, ErrorCode::NotSupported);
            assert!(err.message.contains("SOCK_RAW"), "{}", err.message);
        }
        Err(e) => {
            eprintln!("raw socket part of inspect_refuses_other_kinds_of_socket skipped: {e}")
        }
    }
    // A TCP-type socket that is not TCP: MPTCP, when the kernel has it.
    if let Ok(mptcp) = Socket::new(Domain::IPV4, Type::STREAM, Some(socket2::Protocol::MPTCP)) {
        assert_eq!(inspect_code(&mptcp), ErrorCode::NotSupported);
    }
}

/// A raw socket of protocol TCP or UDP shows that number as its local port
/// from socket() on, but a connect(AF_UNSPEC) (a "disconnect") sets it to
/// 0: it then looks as unbound as a fresh TCP or UDP socket, and only
/// SO_TYPE tells it apart (it must not be taken for SOCK_STREAM/DGRAM and
/// bound as one).
#[test]
fn inspect_refuses_a_disconnected_raw_socket_of_protocol_tcp_or_udp() {
    netns_or_skip!("inspect_refuses_a_disconnected_raw_socket_of_protocol_tcp_or_udp");
    for domain in [Domain::IPV4, Domain::IPV6] {
        for protocol in [socket2::Protocol::TCP, socket2::Protocol::UDP] {
            let raw = Socket::new(domain, Type::RAW, Some(protocol)).expect("raw socket (root)");
            rustix::net::connect_unspec(&raw).expect("connect(AF_UNSPEC)");
            let local = raw.local_addr().expect("getsockname");
            assert_eq!(local.as_socket().map(|a| a.port()), Some(0), "{local:?}");
            let err = sock::inspect(raw.as_fd()).expect_err("a raw socket");
            assert_eq!(
                err.code,
                ErrorCode::NotSupported,
                "{domain:?} {protocol:?}: {}",
                err.message
            );
            assert!(err.message.contains("SOCK_RAW"), "{}", err.message);
        }
    }
}

#[test]
fn inspect_refuses_bound_listening_and_connected_sockets() {
    netns_or_skip!("inspect_refuses_bound_listening_and_connected_sockets");
    let bound = tcp_socket(false);
    bound.bind(&loopback4(0).into()).expect("bind");
    let err = sock::inspect(bound.as_fd()).expect_err("bound");
    assert_eq!(err.code, ErrorCode::AlreadyBound);
    assert!(err.message.contains("127.0.0.1:"), "{}", err.message);

    let listener = TcpListener::bind(loopback6(0)).expect("listen");
    assert_eq!(inspect_code(&listener), ErrorCode::AlreadyBound);

    let connected = UdpSocket::bind(loopback4(0)).expect("bind");
    assert_eq!(inspect_code(&connected), ErrorCode::AlreadyBound);
    let autobound = udp_socket(false);
    autobound
        .connect(&listener_addr_v4().into())
        .expect("UDP connect");
    assert_eq!(inspect_code(&autobound), ErrorCode::AlreadyBound);
}

fn listener_addr_v4() -> SocketAddr {
    loopback4(9)
}

#[test]
fn inspect_accepts_fresh_tcp_and_udp_sockets() {
    for v6 in [false, true] {
        let info = sock::inspect(tcp_socket(v6).as_fd()).expect("fresh TCP");
        assert_eq!(
            info,
            SocketInfo {
                protocol: Protocol::Tcp,
                ipv6: v6
            }
        );
        let info = sock::inspect(udp_socket(v6).as_fd()).expect("fresh UDP");
        assert_eq!(
            info,
            SocketInfo {
                protocol: Protocol::Udp,
                ipv6: v6
            }
        );
    }
    // Protocol 0 means the default protocol of the type: TCP / UDP.
    let default = Socket::new(Domain::IPV6, Type::STREAM, None).expect("socket");
    assert_eq!(
        sock::inspect(default.as_fd()).expect("TCP").protocol,
        Protocol::Tcp
    );
}

// --------------------------------------------------------------- bind_into

#[test]
fn bind_into_skips_occupied_ports() {
    netns_or_skip!("bind_into_skips_occupied_ports");
    let _taken = TcpListener::bind(loopback4(40000)).expect("occupy 40000");
    let socket = tcp_socket(false);
    let port = sock::bind_into(
        socket.as_fd(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        40000..=40009,
    )
    .expect("bind into block");
    assert_eq!(port, 40001);
    assert_eq!(port_of(&socket), 40001);
    assert_eq!(
        sock::inspect(socket.as_fd()).expect_err("now bound").code,
        ErrorCode::AlreadyBound
    );

    // IPv6 and UDP, with a holder of a different protocol not in the way.
    let udp = udp_socket(true);
    let port = sock::bind_into(
        udp.as_fd(),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        40000..=40009,
    )
    .expect("bind UDP into block");
    assert_eq!(port, 40000);
}

#[test]
fn bind_into_a_full_block_is_block_exhausted() {
    netns_or_skip!("bind_into_a_full_block_is_block_exhausted");
    let _a = UdpSocket::bind(loopback4(41000)).expect("occupy");
    let _b = UdpSocket::bind(loopback6(41001)).expect("occupy");
    let socket = udp_socket(true);
    let err = sock::bind_into(
        socket.as_fd(),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        41000..=41001,
    )
    .expect_err("full");
    assert_eq!(err.code, ErrorCode::BlockExhausted);
    assert_eq!(port_of(&socket), 0, "left unbound");

    let err = sock::bind_into(socket.as_fd(), IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0..0)
        .expect_err("empty");
    assert_eq!(err.code, ErrorCode::BlockExhausted);
}

#[test]
fn bind_into_refuses_bad_addresses() {
    netns_or_skip!("bind_into_refuses_bad_addresses");
    let v6 = tcp_socket(true);
    let err = sock::bind_into(v6.as_fd(), IpAddr::V4(Ipv4Addr::LOCALHOST), 42000..=42001)
        .expect_err("IPv4 on IPv6");
    assert_eq!(err.code, ErrorCode::InvalidParameter);
    let v4 = tcp_socket(false);
    let err = sock::bind_into(v4.as_fd(), IpAddr::V6(Ipv6Addr::LOCALHOST), 42000..=42001)
        .expect_err("IPv6 on IPv4");
    assert_eq!(err.code, ErrorCode::InvalidParameter);

    // 192.0.2.1 (TEST-NET-1) is not an address of this namespace.
    let err = sock::bind_into(
        v4.as_fd(),
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        42000..=42001,
    )
    .expect_err("not local");
    assert_eq!(err.code, ErrorCode::InvalidParameter);
    assert!(err.message.contains("EADDRNOTAVAIL"), "{}", err.message);

    let err = sock::bind_into(v4.as_fd(), IpAddr::V4(Ipv4Addr::LOCALHOST), [0].into_iter())
        .expect_err("port 0");
    assert_eq!(err.code, ErrorCode::InvalidParameter);

    let (unix, _peer) = UnixStream::pair().expect("socketpair");
    let err = sock::bind_into(unix.as_fd(), IpAddr::V4(Ipv4Addr::LOCALHOST), 42000..=42001)
        .expect_err("unix");
    assert_eq!(err.code, ErrorCode::NotSupported);
}

#[test]
fn bind_into_an_already_bound_socket_is_already_bound() {
    netns_or_skip!("bind_into_an_already_bound_socket_is_already_bound");
    let socket = tcp_socket(false);
    socket.bind(&loopback4(0).into()).expect("bind");
    let err = sock::bind_into(
        socket.as_fd(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        43000..=43001,
    )
    .expect_err("bound");
    assert_eq!(err.code, ErrorCode::AlreadyBound);
}

// ------------------------------------------------------------ capability

#[test]
fn file_id_matches_for_dups_and_differs_between_capabilities() {
    let a = new_capability().expect("memfd");
    let a2 = a.try_clone().expect("dup");
    let b = new_capability().expect("memfd");
    let id_a = file_id(a.as_fd()).expect("fstat");
    assert_eq!(file_id(a2.as_fd()).expect("fstat"), id_a);
    assert_ne!(file_id(b.as_fd()).expect("fstat"), id_a);
    let link = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&a)
    ))
    .expect("readlink");
    assert!(
        link.to_string_lossy().contains("portres-session"),
        "{link:?}"
    );
}

// ---------------------------------------------------------------- timings

/// Prints what the kernel operations cost here. Run with
/// `cargo test -p portres-kernel --release --test kernel -- --ignored --nocapture`.
#[test]
#[ignore = "prints timings, asserts nothing"]
fn timings() {
    netns_or_skip!("timings");
    fn time(what: &str, runs: u32, mut f: impl FnMut()) {
        f();
        let start = Instant::now();
        for _ in 0..runs {
            f();
        }
        eprintln!("{what}: {:?} per call", start.elapsed() / runs);
    }
    let mut sysctl = ProcReservedPorts::new();
    let long = every_other_port();
    time("sysctl write, every other port 20000..40000", 100, || {
        sysctl.write(&long).expect("write");
    });
    time("sysctl read, every other port 20000..40000", 100, || {
        sysctl.read().expect("read");
    });
    sysctl.write(&PortSet::new()).expect("clear");
    time("probe, free TCP port", 10_000, || {
        port_in_use(Protocol::Tcp, 45000).expect("probe");
    });
    let _held = TcpListener::bind(loopback4(45001)).expect("listen");
    time("probe, held TCP port", 10_000, || {
        port_in_use(Protocol::Tcp, 45001).expect("probe");
    });
    time("diag, all TCP, nearly empty namespace", 1000, || {
        diag::bound_sockets(Protocol::Tcp).expect("dump");
    });
    time("diag, TCP port 45001, nearly empty namespace", 1000, || {
        diag::sockets_on_port(Protocol::Tcp, 45001).expect("dump");
    });
    let mut held = Vec::new();
    for _ in 0..10_000 {
        held.push(TcpListener::bind(loopback4(0)).expect("listen"));
    }
    time("diag, all TCP, 10k listeners", 20, || {
        diag::bound_sockets(Protocol::Tcp).expect("dump");
    });
    time("diag, TCP port 45001, 10k listeners", 20, || {
        diag::sockets_on_port(Protocol::Tcp, 45001).expect("dump");
    });
}
