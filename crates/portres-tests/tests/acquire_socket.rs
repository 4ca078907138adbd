//! Acquire with a socket (one round trip: a new reservation and the socket
//! bound into it) and the oneway Release a dropped `Reservation` sends,
//! through the Rust client (and by hand, pipelined) against the real
//! kernel.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream, UdpSocket};
use std::os::fd::AsFd;

use portres::{ErrorCode, Protocol};
use portres_tests::{InProcessDaemon, assert_kernel_settles_to, eventually, kernel_reserved};
use socket2::{Domain, Socket, Type};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

nstest!(
    listen_tcp_and_bind_udp_any_take_a_fresh_port_in_one_call,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        let c = d.client();
        let mut held = Vec::new();
        for addr in [V4, V6] {
            let (listener, res) = c.listen_tcp(addr).unwrap();
            let port = listener.local_addr().unwrap().port();
            assert_eq!(
                (res.protocol(), res.start(), res.count()),
                (Protocol::Tcp, port, 1)
            );
            assert!(
                kernel_reserved().contains(port),
                "reserved before the answer"
            );
            TcpStream::connect((addr, port)).unwrap();
            let (udp, ures) = c.bind_udp_any(addr).unwrap();
            let uport = udp.local_addr().unwrap().port();
            assert_eq!((ures.protocol(), ures.start()), (Protocol::Udp, uport));
            let probe = UdpSocket::bind((addr, 0)).unwrap();
            probe.send_to(b"x", (addr, uport)).unwrap();
            let mut buf = [0u8; 4];
            assert_eq!(udp.recv(&mut buf).unwrap(), 1);
            held.extend([res, ures]);
        }
        assert_eq!(c.list(None).unwrap().len(), 4);
        // A block of several ports, at a given start, with any socket.
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let (res, port) = c
            .acquire_with_fd(Protocol::Tcp, 41000, 4, sock.as_fd(), V4)
            .unwrap();
        assert_eq!((res.start(), res.count(), port), (41000, 4, 41000));
        // A later Bind into it goes on from the cursor.
        assert_eq!(
            res.bind_tcp(V4).unwrap().local_addr().unwrap().port(),
            41001
        );
    }
);

nstest!(
    a_refused_acquire_with_a_socket_leaves_no_reservation,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        let c = d.client();
        // The bind itself fails (not an address of this host): the block that
        // was found is given back.
        let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let not_here = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let err = c
            .acquire_with_fd(Protocol::Tcp, 0, 1, sock.as_fd(), not_here)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidParameter, "{err}");
        // A socket of the other protocol, an already bound one, the wrong family.
        let udp = Socket::new(Domain::IPV4, Type::DGRAM, None).unwrap();
        let err = c
            .acquire_with_fd(Protocol::Tcp, 0, 1, udp.as_fd(), V4)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidParameter, "{err}");
        let bound = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let err = c
            .acquire_with_fd(Protocol::Tcp, 0, 1, bound.as_fd(), V4)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::AlreadyBound, "{err}");
        let err = c
            .acquire_with_fd(Protocol::Tcp, 40000, 1, sock.as_fd(), V6)
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidParameter, "{err}");
        assert!(c.list(None).unwrap().is_empty());
        assert_kernel_settles_to("");
        // The socket that was refused is still unbound and usable.
        let (res, port) = c
            .acquire_with_fd(Protocol::Tcp, 40000, 1, sock.as_fd(), V4)
            .unwrap();
        assert_eq!((res.start(), port), (40000, 40000));
    }
);

nstest!(
    a_dropped_reservation_is_released_before_the_next_call,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        let c = d.client();
        for _ in 0..500 {
            let res = c.acquire(Protocol::Tcp, 40000, 1).unwrap();
            let token = res.token();
            drop(res); // oneway: not waited for
            // The next call on the connection sees it done.
            assert_eq!(c.release(token).unwrap_err().code, ErrorCode::NotFound);
            let (_listener, res) = c.listen_tcp(V4).unwrap();
            drop(res);
            assert!(c.list(None).unwrap().is_empty());
        }
        // Explicit release still reports errors.
        let res = c.acquire(Protocol::Tcp, 40000, 1).unwrap();
        let token = res.token();
        c.release(token).unwrap();
        assert_eq!(res.release().unwrap_err().code, ErrorCode::NotFound);
        // Another connection sees a drop soon.
        let other = d.client();
        let res = c.acquire(Protocol::Tcp, 40000, 1).unwrap();
        drop(res);
        assert!(eventually(|| other
            .acquire(Protocol::Tcp, 40000, 1)
            .is_ok()));
    }
);

nstest!(
    a_oneway_release_pipelined_with_the_next_call_is_done_before_it,
    |_| {
        use portres_tests::{RawClient, frame};
        let d = InProcessDaemon::start(|_| {});
        let mut raw = RawClient::connect(&d.socket);
        let acquire = serde_json::json!({"protocol": "tcp", "start": 40000, "count": 1});
        for _ in 0..200 {
            let r = raw.call("io.portres.Acquire", acquire.clone());
            let token = r["parameters"]["reservation"]["token"].clone();
            assert!(token.is_string(), "{r}");
            // The oneway Release and the next Acquire of the same block in one
            // write: the Acquire is answered (the only reply) and finds the
            // block free.
            let mut bytes = frame(
                "io.portres.Release",
                serde_json::json!({"token": token}),
                true,
            );
            bytes.extend(frame("io.portres.Acquire", acquire.clone(), false));
            let again = raw.request(&bytes, &[]).expect("a reply");
            assert!(again["error"].is_null(), "{again}");
            let token = again["parameters"]["reservation"]["token"].clone();
            let bytes = frame(
                "io.portres.Release",
                serde_json::json!({"token": token}),
                true,
            );
            raw.send(&bytes, &[]);
        }
        // A oneway call's refusal is not answered either: the next reply is
        // the Status asked after it.
        let mut bytes = frame(
            "io.portres.Release",
            serde_json::json!({"token": "12345"}),
            true,
        );
        bytes.extend(frame("io.portres.Status", serde_json::json!({}), false));
        let status = raw.request(&bytes, &[]).expect("a reply");
        assert!(status["parameters"]["wire_version"].is_number(), "{status}");
    }
);
