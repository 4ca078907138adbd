//! The daemon driven in-process through the client library, against the
//! real kernel inside a private network namespace per test.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpListener, UdpSocket};
use std::os::fd::AsFd;

use portres::{CreateOptions, ErrorCode, Kind, Owner, Protocol};
use portres_tests::{
    InProcessDaemon, assert_kernel_settles_to, kernel_reserved, set_kernel_reserved,
    set_local_port_range,
};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

nstest!(acquire_bind_release_tcp_and_udp_v4_and_v6, |_| {
    let d = InProcessDaemon::start(|_| {});
    let c = d.client();
    for proto in [Protocol::Tcp, Protocol::Udp] {
        let res = c.acquire(proto, 0, 3).unwrap();
        assert_eq!(res.count(), 3);
        let mut ports = Vec::new();
        for addr in [V4, V6, IpAddr::V4(Ipv4Addr::UNSPECIFIED)] {
            let port = match proto {
                Protocol::Tcp => res.bind_tcp(addr).unwrap().local_addr().unwrap().port(),
                Protocol::Udp => res.bind_udp(addr).unwrap().local_addr().unwrap().port(),
            };
            assert!(
                res.ports().contains(&port),
                "{port} outside {:?}",
                res.ports()
            );
            ports.push(port);
        }
        // Rotation: three binds (sockets closed in between) used three ports.
        ports.sort();
        ports.dedup();
        assert_eq!(ports.len(), 3, "bind should rotate through the block");
        let token = res.token();
        res.release().unwrap();
        assert_eq!(c.release(token).unwrap_err().code, ErrorCode::NotFound);
    }
    assert!(c.list(None).unwrap().is_empty());
});

nstest!(
    bind_fails_with_block_exhausted_when_every_port_is_bound,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        let c = d.client();
        let res = c.acquire(Protocol::Tcp, 0, 2).unwrap();
        let a = res.bind_tcp(V4).unwrap();
        let b = res.bind_tcp(V4).unwrap();
        assert_ne!(
            a.local_addr().unwrap().port(),
            b.local_addr().unwrap().port()
        );
        let err = res.bind_tcp(V4).unwrap_err();
        assert_eq!(err.code, ErrorCode::BlockExhausted, "{err}");
        drop(a);
        // A freed port is usable again.
        res.bind_tcp(V4).unwrap();
    }
);

nstest!(specific_start_and_sharing_violations, |_| {
    let d = InProcessDaemon::start(|_| {});
    let c = d.client();
    let res = c.acquire(Protocol::Tcp, 40000, 10).unwrap();
    assert_eq!((res.start(), res.count()), (40000, 10));
    // Overlap, same protocol: refused. Other protocol: fine.
    assert_eq!(
        c.acquire(Protocol::Tcp, 40009, 5).unwrap_err().code,
        ErrorCode::SharingViolation
    );
    let _udp = c.acquire(Protocol::Udp, 40005, 5).unwrap();
    // A port held by a real socket (v4-only listener, v6 UDP, TIME_WAIT-free cases).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let err = c.acquire(Protocol::Tcp, port, 1).unwrap_err();
    assert_eq!(err.code, ErrorCode::SharingViolation, "{err}");
    let udp = UdpSocket::bind("[::1]:0").unwrap();
    let uport = udp.local_addr().unwrap().port();
    assert_eq!(
        c.acquire(Protocol::Udp, uport, 1).unwrap_err().code,
        ErrorCode::SharingViolation
    );
    // Nothing changed on refusal.
    assert_eq!(c.list(None).unwrap().len(), 2);
    // Bad parameters.
    for (start, count) in [(65535u16, 2u16), (1, 0)] {
        assert_eq!(
            c.acquire(Protocol::Tcp, start, count).unwrap_err().code,
            ErrorCode::InvalidParameter
        );
    }
});

nstest!(wildcard_never_picks_a_busy_or_reserved_block, |_| {
    set_local_port_range(50000, 50009);
    set_kernel_reserved("50001");
    let d = InProcessDaemon::start(|_| {});
    let c = d.client();
    // Baseline port 50001 is avoided; a socket on 50003 too.
    let _busy = TcpListener::bind("0.0.0.0:50003").unwrap();
    let a = c.acquire(Protocol::Tcp, 0, 1).unwrap();
    assert_eq!(a.start(), 50000);
    let b = c.acquire(Protocol::Tcp, 0, 2).unwrap();
    assert_eq!(
        b.start(),
        50004,
        "skips 50001 (baseline), 50002-50003 (busy)"
    );
    let e = c.acquire(Protocol::Tcp, 0, 5).unwrap_err();
    assert_eq!(e.code, ErrorCode::NoFreeBlock, "{e}");
    // Each candidate the search tried (and probed) is gone again.
    assert_eq!(c.list(None).unwrap().len(), 2);
});

nstest!(sysctl_tracks_reservations_and_keeps_the_baseline, |_| {
    set_kernel_reserved("7,1000-1002");
    let d = InProcessDaemon::start(|_| {});
    let c = d.client();
    assert_eq!(kernel_reserved().to_string(), "7,1000-1002");
    let r = c.acquire(Protocol::Tcp, 41000, 3).unwrap();
    // Written before acquire returned.
    assert_eq!(kernel_reserved().to_string(), "7,1000-1002,41000-41002");
    let u = c.acquire(Protocol::Udp, 41003, 2).unwrap();
    assert_eq!(kernel_reserved().to_string(), "7,1000-1002,41000-41004");
    c.create(Protocol::Tcp, 2000, 5, CreateOptions::default())
        .unwrap();
    assert_eq!(
        kernel_reserved().to_string(),
        "7,1000-1002,2000-2004,41000-41004"
    );
    r.release().unwrap();
    drop(u);
    // Released ports leave the kernel's list shortly after (one write for
    // every release within KERNEL_SHRINK_DELAY).
    assert_kernel_settles_to("7,1000-1002,2000-2004");
    d.stop();
    // Clean shutdown: baseline + persistent.
    assert_eq!(kernel_reserved().to_string(), "7,1000-1002,2000-2004");
});

nstest!(session_end_releases_its_runtime_reservations, |_| {
    let d = InProcessDaemon::start(|_| {});
    let observer = d.client();
    {
        let c = d.client();
        let res = c.acquire(Protocol::Tcp, 42000, 4).unwrap();
        let _ = res.keep();
        assert_eq!(observer.list(None).unwrap().len(), 1);
    } // connection closes here
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !observer.list(None).unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "reservation outlived its session"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(portres_tests::eventually(
        || !kernel_reserved().contains(42000)
    ));
});

nstest!(
    only_the_holding_session_may_use_a_runtime_reservation,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        let holder = d.client();
        let other = d.client();
        let res = holder.acquire(Protocol::Tcp, 0, 2).unwrap();
        assert_eq!(
            other.release(res.token()).unwrap_err().code,
            ErrorCode::AccessDenied
        );
        assert_eq!(
            other.bind_tcp(res.token(), V4).unwrap_err().code,
            ErrorCode::AccessDenied
        );
        // Tokens are hidden from sessions that may not use them.
        let seen = other.list(None).unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].token, None);
        assert_eq!(holder.list(None).unwrap()[0].token, Some(res.token()));
        // A guessed token is simply not found.
        let guess = portres::Token::new(res.token().get() ^ 1).unwrap();
        assert_eq!(other.release(guess).unwrap_err().code, ErrorCode::NotFound);
        // The capability makes another connection speak for the session.
        let cap = holder.capability().unwrap();
        assert_eq!(other.attach(cap.as_fd()).unwrap(), 1);
        let port = other
            .bind_tcp(res.token(), V4)
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        assert!(res.ports().contains(&port));
        other.release(res.token()).unwrap();
        assert!(holder.list(None).unwrap().is_empty());
    }
);

nstest!(attach_refuses_a_descriptor_that_is_not_a_capability, |_| {
    let d = InProcessDaemon::start(|_| {});
    let c = d.client();
    let f = std::fs::File::open("/dev/null").unwrap();
    assert_eq!(
        c.attach(f.as_fd()).unwrap_err().code,
        ErrorCode::AccessDenied
    );
    let memfd = portres_kernel::capability::new_capability().unwrap();
    assert_eq!(
        c.attach(memfd.as_fd()).unwrap_err().code,
        ErrorCode::AccessDenied
    );
});

nstest!(bind_refuses_bad_descriptors, |_| {
    let d = InProcessDaemon::start(|_| {});
    let c = d.client();
    let res = c.acquire(Protocol::Tcp, 0, 2).unwrap();
    let t = res.token();
    let file = std::fs::File::open("/dev/null").unwrap();
    assert_eq!(
        c.bind_fd(t, file.as_fd(), V4).unwrap_err().code,
        ErrorCode::NotASocket
    );
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
    assert_eq!(
        c.bind_fd(t, pipe_r.as_fd(), V4).unwrap_err().code,
        ErrorCode::NotASocket
    );
    let (ua, _ub) = std::os::unix::net::UnixStream::pair().unwrap();
    assert_eq!(
        c.bind_fd(t, ua.as_fd(), V4).unwrap_err().code,
        ErrorCode::NotSupported
    );
    let bound = TcpListener::bind("127.0.0.1:0").unwrap();
    assert_eq!(
        c.bind_fd(t, bound.as_fd(), V4).unwrap_err().code,
        ErrorCode::AlreadyBound
    );
    let udp = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    assert_eq!(
        c.bind_socket(t, &udp, V4).unwrap_err().code,
        ErrorCode::InvalidParameter
    );
    let v4 = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    assert_eq!(
        c.bind_socket(t, &v4, V6).unwrap_err().code,
        ErrorCode::InvalidParameter
    );
    // A socket from another network namespace.
    let foreign = std::thread::spawn(|| {
        portres_kernel::netns::enter_private_netns().unwrap();
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap()
    })
    .join()
    .unwrap();
    assert_eq!(
        c.bind_socket(t, &foreign, V4).unwrap_err().code,
        ErrorCode::WrongNamespace
    );
    // After all that, the reservation is untouched and usable.
    let ok = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let port = c.bind_socket(t, &ok, V4).unwrap();
    assert!(res.ports().contains(&port));
});

nstest!(
    persistent_create_lookup_delete_and_restore_across_restart,
    |_| {
        let dir = portres_tests::open_tempdir();
        let d = InProcessDaemon::start_in(dir.path(), |_| {});
        let c = d.client();
        let created = c
            .create(
                Protocol::Udp,
                5353,
                2,
                CreateOptions {
                    owner: Some(Owner::User(65534)),
                    label: Some("mdns".into()),
                },
            )
            .unwrap();
        assert_eq!(created.kind, Kind::Persistent);
        let token = created.token.unwrap();
        assert_eq!(c.lookup(Protocol::Udp, 5353, 2).unwrap().token, Some(token));
        assert_eq!(
            c.lookup(Protocol::Udp, 5353, 1).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            c.lookup(Protocol::Tcp, 5353, 2).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert_eq!(
            c.create(Protocol::Udp, 5354, 1, CreateOptions::default())
                .unwrap_err()
                .code,
            ErrorCode::SharingViolation
        );
        c.create(Protocol::Tcp, 6000, 1, CreateOptions::default())
            .unwrap();
        for (s, n) in [(0u16, 1u16), (1, 0), (65535, 2)] {
            assert_eq!(
                c.create(Protocol::Tcp, s, n, CreateOptions::default())
                    .unwrap_err()
                    .code,
                ErrorCode::InvalidParameter
            );
        }
        drop(c);
        d.stop();
        let d = InProcessDaemon::start_in(dir.path(), |_| {});
        let c = d.client();
        let again = c.lookup(Protocol::Udp, 5353, 2).unwrap();
        assert_eq!(again.label.as_deref(), Some("mdns"));
        assert_eq!(again.owner, Some(Owner::User(65534).into()));
        assert!(kernel_reserved().contains(5353) && kernel_reserved().contains(6000));
        c.delete(Protocol::Tcp, 6000, 1).unwrap();
        assert_eq!(
            c.delete(Protocol::Tcp, 6000, 1).unwrap_err().code,
            ErrorCode::NotFound
        );
        assert!(portres_tests::eventually(
            || !kernel_reserved().contains(6000)
        ));
        drop(c);
        d.stop();
        let d = InProcessDaemon::start_in(dir.path(), |_| {});
        let list = d.client().list(None).unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!((list[0].protocol, list[0].start), (Protocol::Udp, 5353));
    }
);

nstest!(quota_limits_runtime_ports_per_user_but_not_root, |_| {
    let d = InProcessDaemon::start(|c| c.quota = 4);
    let c = d.client();
    // Root is exempt.
    let _big = c.acquire(Protocol::Tcp, 0, 10).unwrap();
    assert_eq!(c.status().unwrap().quota, 4);
});

nstest!(list_shows_ports_in_use_and_holders, |_| {
    let d = InProcessDaemon::start(|_| {});
    let c = d.client();
    let res = c
        .acquire_labeled(Protocol::Tcp, 43000, 5, Some("web tests".into()))
        .unwrap();
    let l1 = res.bind_tcp(V4).unwrap();
    let u = c.acquire(Protocol::Udp, 43000, 2).unwrap();
    let s1 = u.bind_udp(V6).unwrap();
    let list = c.list(None).unwrap();
    assert_eq!(list.len(), 2);
    let tcp = &list[0];
    assert_eq!(tcp.label.as_deref(), Some("web tests"));
    assert_eq!(
        tcp.in_use.as_deref(),
        Some(&[l1.local_addr().unwrap().port()][..])
    );
    let holder = tcp.holder.unwrap();
    assert_eq!(holder.uid, 0);
    assert_eq!(holder.pid, std::process::id() as i32);
    assert_eq!(
        list[1].in_use.as_deref(),
        Some(&[s1.local_addr().unwrap().port()][..])
    );
    assert_eq!(c.list(Some(Protocol::Udp)).unwrap().len(), 1);
});

nstest!(
    a_thousand_kernel_bind0_calls_never_land_in_a_reserved_block,
    |_| {
        set_local_port_range(40000, 43999);
        let d = InProcessDaemon::start(|_| {});
        let c = d.client();
        let runtime = c.acquire(Protocol::Tcp, 40000, 1500).unwrap();
        c.create(Protocol::Udp, 41500, 1000, CreateOptions::default())
            .unwrap();
        // A process that knows nothing of portres binds port 0 a thousand
        // times (TCP v4 and UDP v6 alternately), keeping every socket open so
        // each bind takes a distinct port: 1000 of the 1500 unreserved ones.
        let script = r#"
import socket
keep = []
for i in range(1000):
    if i % 2 == 0:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.bind(("127.0.0.1", 0)); s.listen()
    else:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); s.bind(("::1", 0))
    keep.append(s)
    print(s.getsockname()[1])
"#;
        let out = std::process::Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ports: Vec<u16> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.parse().unwrap())
            .collect();
        assert_eq!(ports.len(), 1000);
        for (i, port) in ports.iter().enumerate() {
            assert!(
                !(40000..=42499).contains(port),
                "bind(0) #{i} got reserved port {port}"
            );
            assert!(
                (42500..=43999).contains(port),
                "bind(0) #{i} got {port}, outside the dynamic range"
            );
        }
        drop(runtime);
    }
);
