//! Bind never puts a socket on a port another socket already holds, even
//! when both have SO_REUSEADDR (which Linux lets share a port while neither
//! TCP socket listens, and always for UDP); a port only TIME_WAIT holds is
//! still reused when the client asked for SO_REUSEADDR.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use portres::{ErrorCode, Protocol};
use portres_tests::InProcessDaemon;
use socket2::{Domain, Socket, Type};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn socket(protocol: Protocol, reuse: bool) -> Socket {
    let ty = match protocol {
        Protocol::Tcp => Type::STREAM,
        Protocol::Udp => Type::DGRAM,
    };
    let s = Socket::new(Domain::IPV4, ty, None).unwrap();
    s.set_reuse_address(reuse).unwrap();
    s
}

nstest!(
    bind_skips_a_port_a_bound_reuseaddr_socket_holds_tcp_and_udp,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        let c = d.client();
        for protocol in [Protocol::Tcp, Protocol::Udp] {
            let res = c.acquire(protocol, 0, 2).unwrap();
            // Someone else's SO_REUSEADDR socket, bound, not listening, on
            // the block's first port.
            let squatter = socket(protocol, true);
            squatter
                .bind(&SocketAddr::new(V4, res.start()).into())
                .unwrap();
            let first = socket(protocol, true);
            let port = res.bind_socket(&first, V4).unwrap();
            assert_eq!(
                port,
                res.start() + 1,
                "{protocol}: the held port is skipped"
            );
            assert!(
                first.reuse_address().unwrap(),
                "{protocol}: the client's SO_REUSEADDR is put back"
            );
            if protocol == Protocol::Tcp {
                first.listen(16).unwrap();
            }
            let second = socket(protocol, true);
            let err = res.bind_socket(&second, V4).unwrap_err();
            assert_eq!(err.code, ErrorCode::BlockExhausted, "{protocol}: {err}");
            assert!(
                second.reuse_address().unwrap(),
                "{protocol}: put back on refusal too"
            );
            // The squatter's own listen() is not broken by us.
            if protocol == Protocol::Tcp {
                squatter.listen(16).unwrap();
            }
        }
    }
);

nstest!(
    bind_with_reuseaddr_still_takes_a_port_only_time_wait_holds,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        let c = d.client();
        let res = c.acquire(Protocol::Tcp, 0, 1).unwrap();
        let port = res.start();
        // A connection on the block's port whose server side closes first:
        // the port is left in TIME_WAIT.
        let listener: TcpListener = res.bind_tcp(V4).unwrap();
        let client = TcpStream::connect((V4, port)).unwrap();
        let (served, _) = listener.accept().unwrap();
        drop(served);
        drop(listener);
        drop(client);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let held = portres_kernel::diag::sockets_on_port(Protocol::Tcp, port).unwrap();
            if !held.is_empty() && held.iter().all(|s| s.state == 6) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no TIME_WAIT on {port}: {held:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // Without SO_REUSEADDR the port is busy; with it, it is the client's.
        let plain = socket(Protocol::Tcp, false);
        let err = res.bind_socket(&plain, V4).unwrap_err();
        assert_eq!(err.code, ErrorCode::BlockExhausted, "{err}");
        let reusing = socket(Protocol::Tcp, true);
        assert_eq!(res.bind_socket(&reusing, V4).unwrap(), port);
        reusing.listen(16).unwrap();
    }
);
