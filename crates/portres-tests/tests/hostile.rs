//! Bad input over the raw socket: garbage, truncated, oversized and
//! unexpected messages get a named error or a closed connection — and the
//! daemon keeps serving everyone else, with its state unchanged.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use portres::Protocol;
use portres_tests::{InProcessDaemon, kernel_reserved};

fn roundtrip(s: &mut UnixStream, bytes: &[u8]) -> serde_json::Value {
    s.write_all(bytes).unwrap();
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let n = s.read(&mut byte).unwrap();
        assert_eq!(n, 1, "daemon closed the connection instead of answering");
        if byte[0] == 0 {
            break;
        }
        buf.push(byte[0]);
    }
    serde_json::from_slice(&buf).unwrap()
}

fn code(v: &serde_json::Value) -> &str {
    v["parameters"]["code"].as_str().unwrap_or("<none>")
}

nstest!(
    garbage_gets_invalid_parameter_and_the_connection_stays_usable,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        for bad in [
        &b"\0"[..],
        b"garbage\0",
        b"[1,2,3]\0",
        b"{\"method\":42}\0",
        b"{\"method\":\"io.portres.Nope\"}\0",
        b"{\"method\":\"io.portres.Acquire\",\"parameters\":{\"protocol\":\"tcp\",\"count\":\"many\"}}\0",
        b"{\"method\":\"io.portres.Acquire\",\"parameters\":{\"protocol\":\"tcp\",\"start\":70000}}\0",
        b"{\"method\":\"io.portres.Acquire\",\"parameters\":{\"protocol\":\"tcp\",\"count\":99999999999}}\0",
        b"{\"method\":\"io.portres.Release\",\"parameters\":{\"token\":\"-1\"}}\0",
        b"{\"method\":\"io.portres.Bind\",\"parameters\":{\"token\":\"1\",\"address\":\"nope\"}}\0",
        b"{\"method\":\"io.portres.Create\",\"parameters\":{\"protocol\":\"udp\",\"start\":0,\"count\":1}}\0",
        b"\xff\xfe\xfd\0",
    ] {
        let v = roundtrip(&mut s, bad);
        assert_eq!(code(&v), "invalid_parameter", "{} -> {v}", String::from_utf8_lossy(bad));
    }
        // Bind without a descriptor.
        let v = roundtrip(&mut s, b"{\"method\":\"io.portres.Bind\",\"parameters\":{\"token\":\"5\",\"address\":\"127.0.0.1\"}}\0");
        assert_eq!(code(&v), "not_a_socket");
        // The same connection still works.
        let v = roundtrip(
        &mut s,
        b"{\"method\":\"io.portres.Acquire\",\"parameters\":{\"protocol\":\"udp\",\"count\":2}}\0",
    );
        assert_eq!(v["parameters"]["reservation"]["count"], 2, "{v}");
        assert!(kernel_reserved().len() == 2);
    }
);

nstest!(
    oversized_and_truncated_messages_close_only_that_connection,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        let good = d.client();
        let held = good.acquire(Protocol::Tcp, 0, 1).unwrap();
        // A truncated message (no NUL) that never completes: harmless.
        let mut idle = UnixStream::connect(&d.socket).unwrap();
        idle.write_all(b"{\"method\":\"io.portres.Li").unwrap();
        // An oversized one: error, then close.
        let mut big = UnixStream::connect(&d.socket).unwrap();
        big.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = big.write_all(&vec![b'x'; 200 * 1024]);
        let mut reply = Vec::new();
        let _ = big.read_to_end(&mut reply);
        assert!(
            String::from_utf8_lossy(&reply).contains("invalid_parameter"),
            "{}",
            String::from_utf8_lossy(&reply)
        );
        // Many silent connections.
        let silent: Vec<UnixStream> = (0..200)
            .map(|_| UnixStream::connect(&d.socket).unwrap())
            .collect();
        // Everyone else is still served, state intact.
        assert_eq!(good.list(None).unwrap().len(), 1);
        let other = d.client();
        let r = other.acquire(Protocol::Udp, 0, 3).unwrap();
        assert_eq!(r.count(), 3);
        drop(silent);
        drop(idle);
        drop(held);
    }
);

nstest!(
    connection_limits_refuse_with_a_clear_error_and_keep_serving,
    |_| {
        let d = InProcessDaemon::start(|c| c.max_connections = 5);
        let held: Vec<_> = (0..5).map(|_| d.client()).collect();
        for c in &held {
            c.status().unwrap();
        }
        let extra = d.client();
        let err = extra.status().unwrap_err();
        assert_eq!(err.code, portres::ErrorCode::DaemonUnavailable, "{err}");
        assert!(
            err.message.contains("limit") || err.message.contains("closed"),
            "{err}"
        );
        drop(held);
        // Slots come back once connections close.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            if d.client().status().is_ok() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "connection slots never came back"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
);

nstest!(
    descriptors_sent_with_the_wrong_request_are_refused_and_closed,
    |_| {
        use std::os::fd::AsFd;
        let d = InProcessDaemon::start(|_| {});
        let s = UnixStream::connect(&d.socket).unwrap();
        let f = std::fs::File::open("/dev/null").unwrap();
        let req = b"{\"method\":\"io.portres.Status\"}\0";
        portres_proto::fdpass::send_with_fds(s.as_fd(), req, &[f.as_fd()]).unwrap();
        let mut s2 = s.try_clone().unwrap();
        s2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4096];
        let n = s2.read(&mut buf).unwrap();
        let text = String::from_utf8_lossy(&buf[..n]);
        assert!(text.contains("invalid_parameter"), "{text}");
        // The next request on the same connection works and is not given the stray fd.
        let v = roundtrip(&mut s2, b"{\"method\":\"io.portres.Status\"}\0");
        assert_eq!(v["parameters"]["wire_version"], 1, "{v}");
    }
);
