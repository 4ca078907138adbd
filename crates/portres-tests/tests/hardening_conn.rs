//! Hardening of the connection layer (issue 9, items 5, 6, 8, 9, 10 and
//! the descriptor limit of 15): descriptors go to the request they were
//! sent with however the kernel glues the byte stream; a oneway call is
//! never answered; unread replies, parked descriptors and a descriptor
//! flood are bounded per user and cannot lock root out; a failure inside a
//! request (a refused thread, a panic) costs that call only.

use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use portres::Protocol;
use portres_tests::{InProcessDaemon, ProcessDaemon, eventually, kernel_reserved, open_tempdir};
use rustix::net::{AddressFamily, SocketType};
use serde_json::{Value, json};

use portres_tests::{RawClient as Raw, frame};

fn code(v: &Value) -> &str {
    v["parameters"]["code"].as_str().unwrap_or("<success>")
}

fn is_status_reply(v: &Value) -> bool {
    v["parameters"]["wire_version"] == 1
}

fn tcp4() -> OwnedFd {
    rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap()
}

fn local_port(fd: BorrowedFd<'_>) -> u16 {
    let addr = rustix::net::getsockname(fd).unwrap();
    std::net::SocketAddr::try_from(addr).map_or(0, |a| a.port())
}

/// Stops (SIGSTOP) every thread of `pid` and waits until each one is
/// stopped, so whatever is written next is queued whole before the daemon
/// reads any of it.
fn freeze(pid: u32) {
    let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(p, rustix::process::Signal::STOP).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all_stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .all(|t| {
                let stat = std::fs::read_to_string(t.unwrap().path().join("stat")).unwrap();
                let state = stat.rsplit(')').next().unwrap().split_whitespace().next();
                matches!(state, Some("T" | "t"))
            });
        if all_stopped {
            return;
        }
        assert!(Instant::now() < deadline, "portresd did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn thaw(pid: u32) {
    let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(p, rustix::process::Signal::CONT).unwrap();
}

/// A request of the pipelining test, by what it is and what it carries.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Status, no descriptor: answered.
    Status,
    /// Status with a stray descriptor: refused (`invalid_parameter`).
    StatusWithFd,
    /// Bind with its socket: binds it.
    Bind,
    /// Bind without a socket: refused (`not_a_socket`).
    BindWithoutFd,
}

/// How a pair of requests is cut into sendmsg() calls.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// One sendmsg() per request.
    Whole,
    /// Each request in two, its descriptors on the first half.
    Halves,
    /// The first request's second half travels with the whole second
    /// request and that request's descriptors.
    TailWithNext,
}

nstest!(
    pipelined_descriptors_belong_to_the_request_they_were_sent_with,
    |_| {
        let dir = open_tempdir();
        let d = ProcessDaemon::start(dir.path(), &[]);
        let pid = d.child.id();
        let mut raw = Raw::connect(&d.socket);
        let r = raw.call(
            "io.portres.Acquire",
            json!({"protocol": "tcp", "count": 64}),
        );
        let block = &r["parameters"]["reservation"];
        let (token, start) = (
            block["token"].as_str().unwrap().to_string(),
            block["start"].as_u64().unwrap() as u16,
        );
        let ports = start..start + 64;
        let kinds = [
            Kind::Status,
            Kind::StatusWithFd,
            Kind::Bind,
            Kind::BindWithoutFd,
        ];
        let stray = std::fs::File::open("/dev/null").unwrap();
        let mut trials = 0;
        let mut failures = Vec::new();
        for a in kinds {
            for b in kinds {
                for oneway in [(false, false), (true, false), (false, true), (true, true)] {
                    for cut in [Cut::Whole, Cut::Halves, Cut::TailWithNext] {
                        trials += 1;
                        let steps = [(a, oneway.0), (b, oneway.1)];
                        let socks = [tcp4(), tcp4()];
                        let frames: Vec<Vec<u8>> = steps
                            .iter()
                            .map(|&(kind, oneway)| match kind {
                                Kind::Status | Kind::StatusWithFd => {
                                    frame("io.portres.Status", json!({}), oneway)
                                }
                                Kind::Bind | Kind::BindWithoutFd => frame(
                                    "io.portres.Bind",
                                    json!({"token": token, "address": "127.0.0.1"}),
                                    oneway,
                                ),
                            })
                            .collect();
                        let fds = |i: usize| -> Vec<BorrowedFd<'_>> {
                            match steps[i].0 {
                                Kind::StatusWithFd => vec![stray.as_fd()],
                                Kind::Bind => vec![socks[i].as_fd()],
                                _ => vec![],
                            }
                        };
                        freeze(pid);
                        let (h0, h1) = (frames[0].len() / 2, frames[1].len() / 2);
                        match cut {
                            Cut::Whole => {
                                raw.send(&frames[0], &fds(0));
                                raw.send(&frames[1], &fds(1));
                            }
                            Cut::Halves => {
                                raw.send(&frames[0][..h0], &fds(0));
                                raw.send(&frames[0][h0..], &[]);
                                raw.send(&frames[1][..h1], &fds(1));
                                raw.send(&frames[1][h1..], &[]);
                            }
                            Cut::TailWithNext => {
                                raw.send(&frames[0][..h0], &fds(0));
                                let rest = [&frames[0][h0..], &frames[1][..]].concat();
                                raw.send(&rest, &fds(1));
                            }
                        }
                        // A synchronising call; its reply comes last.
                        raw.send(&frame("io.portres.Status", json!({}), false), &[]);
                        thaw(pid);
                        let what = format!(
                            "{a:?}{} then {b:?}{}, {cut:?}",
                            if oneway.0 { " (oneway)" } else { "" },
                            if oneway.1 { " (oneway)" } else { "" }
                        );
                        let mut got = Vec::new();
                        for &(kind, oneway) in &steps {
                            if !oneway {
                                got.push((kind, raw.reply().expect("the daemon answered")));
                            }
                        }
                        let sync = raw.reply().expect("the daemon answered");
                        if !is_status_reply(&sync) {
                            failures.push(format!("{what}: the synchronising Status got {sync}"));
                            continue;
                        }
                        for (kind, reply) in got {
                            let ok = match kind {
                                Kind::Status => is_status_reply(&reply),
                                Kind::StatusWithFd => code(&reply) == "invalid_parameter",
                                Kind::Bind => reply["parameters"]["port"]
                                    .as_u64()
                                    .is_some_and(|p| ports.contains(&(p as u16))),
                                Kind::BindWithoutFd => code(&reply) == "not_a_socket",
                            };
                            if !ok {
                                failures.push(format!("{what}: {kind:?} got {reply}"));
                            }
                        }
                        for (i, &(kind, _)) in steps.iter().enumerate() {
                            let port = local_port(socks[i].as_fd());
                            if (kind == Kind::Bind) != ports.contains(&port) {
                                failures.push(format!(
                                    "{what}: request {i} ({kind:?}) left its socket on port {port}"
                                ));
                            }
                        }
                    }
                }
            }
        }
        eprintln!(
            "{trials} pipelined pairs, {} wrong attributions",
            failures.len()
        );
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
);

nstest!(a_oneway_call_is_never_answered_even_when_it_fails, |_| {
    let d = InProcessDaemon::start(|_| {});
    let mut raw = Raw::connect(&d.socket);
    let stray = std::fs::File::open("/dev/null").unwrap();
    let oneway = |call: Value| {
        let mut call = call;
        call["oneway"] = json!(true);
        let mut v = serde_json::to_vec(&call).unwrap();
        v.push(0);
        v
    };
    let cases: Vec<(&str, Vec<u8>, Vec<BorrowedFd<'_>>)> = vec![
        (
            "an unknown method",
            oneway(json!({"method": "io.portres.Nope"})),
            vec![],
        ),
        (
            "an unknown interface",
            oneway(json!({"method": "org.example.Nope", "parameters": {}})),
            vec![],
        ),
        (
            "a parameter of the wrong type",
            oneway(
                json!({"method": "io.portres.Acquire", "parameters": {"protocol": "tcp", "count": "many"}}),
            ),
            vec![],
        ),
        (
            "a missing parameter",
            oneway(json!({"method": "io.portres.Release", "parameters": {}})),
            vec![],
        ),
        (
            "an out-of-range parameter",
            oneway(
                json!({"method": "io.portres.Acquire", "parameters": {"protocol": "tcp", "start": 70000}}),
            ),
            vec![],
        ),
        (
            "\"more\"",
            oneway(json!({"method": "io.portres.List", "parameters": {}, "more": true})),
            vec![],
        ),
        (
            "a malformed cpu hint",
            oneway(json!({"method": "io.portres.Status", "cpu": "zero"})),
            vec![],
        ),
        (
            "a stray descriptor",
            oneway(json!({"method": "io.portres.Status"})),
            vec![stray.as_fd()],
        ),
        (
            "Bind without a descriptor",
            oneway(
                json!({"method": "io.portres.Bind", "parameters": {"token": "1", "address": "127.0.0.1"}}),
            ),
            vec![],
        ),
        (
            "an unknown token",
            oneway(json!({"method": "io.portres.Release", "parameters": {"token": "12345"}})),
            vec![],
        ),
        (
            "a refused Create",
            oneway(
                json!({"method": "io.portres.Create", "parameters": {"protocol": "tcp", "start": 0, "count": 1}}),
            ),
            vec![],
        ),
    ];
    let mut failures = Vec::new();
    for (what, bytes, fds) in &cases {
        raw.send(bytes, fds);
        let v = raw.call("io.portres.Status", json!({}));
        if !is_status_reply(&v) {
            failures.push(format!(
                "after a oneway call with {what}, Status was answered with {v}"
            ));
            // Resynchronise: drain the Status reply that is still coming.
            let _ = raw.reply();
        }
    }
    // Nothing else is waiting on the connection.
    raw.0
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(raw.0.read(&mut b).is_err(), "a stray reply is queued");
    eprintln!(
        "{} failing oneway calls, {} answered",
        cases.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
});

nstest!(
    more_than_four_descriptors_in_one_message_close_the_connection,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        let files: Vec<_> = (0..8)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        let status = frame("io.portres.Status", json!({}), false);
        let mut failures = Vec::new();
        for n in 1..=8 {
            let mut raw = Raw::connect(&d.socket);
            let fds: Vec<BorrowedFd<'_>> = files[..n].iter().map(|f| f.as_fd()).collect();
            // send_with_fds refuses more than the limit itself: a raw sendmsg.
            let mut space =
                vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(8))];
            let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
            assert!(control.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
            rustix::net::sendmsg(
                &raw.0,
                &[std::io::IoSlice::new(&status)],
                &mut control,
                rustix::net::SendFlags::empty(),
            )
            .unwrap();
            let first = raw.reply();
            let closed = match &first {
                None => true,
                Some(v) => code(v) != "invalid_parameter" || reply_to_status(&mut raw).is_none(),
            };
            if closed != (n > 4) {
                failures.push(format!(
                    "{n} descriptors: connection {} (first reply {first:?})",
                    if closed { "closed" } else { "kept open" }
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
);

/// `portresd` in `dir` with the test-only fault `fault` injected
/// (`PORTRES_TEST_FAULT`, see worker.rs).
fn faulty_daemon(dir: &std::path::Path, fault: &str, extra: &[&str]) -> ProcessDaemon {
    let mut cmd = portres_tests::daemon_command(dir, extra);
    cmd.env("PORTRES_TEST_FAULT", fault);
    ProcessDaemon::spawn(cmd, dir)
}

/// An exact-block Lookup of `start`+1 (the call the faults trigger on).
fn lookup(start: u64) -> Vec<u8> {
    frame(
        "io.portres.Lookup",
        json!({"protocol": "tcp", "start": start, "count": 1}),
        false,
    )
}

nstest!(a_refused_list_thread_fails_that_call_only, |_| {
    let dir = open_tempdir();
    let d = faulty_daemon(dir.path(), "list-thread", &["--workers", "1"]);
    let c = d.client();
    let r = c.acquire(Protocol::Tcp, 0, 2).unwrap();
    let err = c.list(None).unwrap_err();
    assert_eq!(err.code, portres::ErrorCode::Internal, "{err}");
    assert!(err.message.contains("thread"), "{err}");
    // The same connection, its reservation and everyone else go on.
    assert_eq!(c.status().unwrap().runtime, 1);
    drop(r.bind_tcp("127.0.0.1".parse().unwrap()).unwrap());
    assert!(d.client().status().is_ok());
    let err = d.client().list(None).unwrap_err();
    assert_eq!(err.code, portres::ErrorCode::Internal, "{err}");
});

nstest!(
    a_panicking_handler_answers_internal_and_the_worker_goes_on,
    |_| {
        let dir = open_tempdir();
        let d = faulty_daemon(dir.path(), "handler-panic", &["--workers", "1"]);
        let mut raw = Raw::connect(&d.socket);
        let r = raw.call("io.portres.Acquire", json!({"protocol": "tcp", "count": 2}));
        let start = r["parameters"]["reservation"]["start"].as_u64().unwrap();
        let kernel = kernel_reserved().to_string();
        raw.send(&lookup(start), &[]);
        let v = raw.reply().expect("answered, not closed");
        assert_eq!(code(&v), "internal", "{v}");
        // Same connection, same session, same reservation; other clients too.
        assert!(is_status_reply(&raw.call("io.portres.Status", json!({}))));
        let other = d.client();
        assert_eq!(other.list(None).unwrap().len(), 1);
        assert_eq!(kernel_reserved().to_string(), kernel);
        assert!(
            std::fs::read_to_string(&d.log)
                .unwrap()
                .contains("panicked (a bug)")
        );
    }
);

nstest!(
    a_dead_worker_ends_its_sessions_and_gets_no_new_connections,
    |_| {
        let dir = open_tempdir();
        let d = faulty_daemon(
            dir.path(),
            "worker-panic",
            &["--workers", "2", "--pin-workers", "off"],
        );
        let survivor = d.client();
        let kept = survivor.acquire(Protocol::Udp, 0, 1).unwrap();
        let mut victim = Raw::connect(&d.socket);
        let r = victim.call("io.portres.Acquire", json!({"protocol": "tcp", "count": 3}));
        let start = r["parameters"]["reservation"]["start"].as_u64().unwrap();
        victim.send(&lookup(start), &[]);
        assert!(
            victim.reply().is_none(),
            "the dying worker's connection closes"
        );
        // Its session ended: the reservation is gone, from the table and the
        // kernel (which keeps the survivor's one UDP port).
        assert!(
            eventually(|| survivor.list(Some(Protocol::Tcp)).unwrap().is_empty()),
            "the dead worker's reservation stayed: {:?}",
            survivor.list(None)
        );
        assert!(
            eventually(|| kernel_reserved().len() == 1),
            "kernel {} log {}",
            kernel_reserved(),
            d.log_tail(20)
        );
        // New connections all go to the live worker and are served.
        let clients: Vec<_> = (0..8).map(|_| d.client()).collect();
        for c in &clients {
            assert!(
                c.status().is_ok(),
                "a new connection went to the dead worker"
            );
        }
        assert_eq!(survivor.list(None).unwrap().len(), 1);
        drop(kept);
        let log = std::fs::read_to_string(&d.log).unwrap();
        assert!(log.contains("died (a bug); closing the"), "{log}");
    }
);

/// Makes the only worker of daemon `d` (started with the `worker-panic`
/// fault and `--workers 1`) die, holding a 3-port block; the block's start.
fn kill_the_only_worker(d: &ProcessDaemon) -> u64 {
    let mut victim = Raw::connect(&d.socket);
    let r = victim.call("io.portres.Acquire", json!({"protocol": "tcp", "count": 3}));
    let start = r["parameters"]["reservation"]["start"].as_u64().unwrap();
    victim.send(&lookup(start), &[]);
    assert!(victim.reply().is_none());
    start
}

/// Waits (at most 10 s) for daemon `d` to exit, and checks it failed.
fn exits_failing(d: &mut ProcessDaemon) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "portresd kept running without workers: {}",
            d.log_tail(10)
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(!status.success(), "{status}");
}

nstest!(
    with_every_worker_dead_the_daemon_exits_for_its_service_manager,
    |_| {
        let dir = open_tempdir();
        let mut d = faulty_daemon(dir.path(), "worker-panic", &["--workers", "1"]);
        let start = kill_the_only_worker(&d);
        // The next connection finds no worker: the daemon stops, non-zero.
        let _ = UnixStream::connect(&d.socket);
        exits_failing(&mut d);
        assert!(!kernel_reserved().contains(start as u16));
    }
);

nstest!(
    with_every_worker_dead_a_portserver_only_daemon_exits_too,
    |_| {
        // The portserver endpoint's connections never reach the front, so
        // "the next connection finds no worker" would never happen for a
        // daemon used only through it: the front looks every second.
        let dir = open_tempdir();
        let endpoint = dir.path().join("portserver.sock");
        let mut d = faulty_daemon(
            dir.path(),
            "worker-panic",
            &["--workers", "1", "--portserver", endpoint.to_str().unwrap()],
        );
        kill_the_only_worker(&d);
        // No new varlink connection: the daemon stops by itself, non-zero.
        exits_failing(&mut d);
        let log = std::fs::read_to_string(&d.log).unwrap();
        assert!(log.contains("every worker thread died; stopping"), "{log}");
    }
);

use portres_tests::{cpu_ticks, rss_mib, settled_rss_mib};

/// Starts `portres-stress ARGS…` as uid `uid` (root: as is) against
/// `socket`; returns the child and its first line of output.
fn stress_as(socket: &std::path::Path, uid: u32, args: &[&str]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut cmd = std::process::Command::new(portres_tests::bin("portres-stress"));
    cmd.args(args).env("PORTRES_SOCKET", socket);
    let mut cmd = if uid == 0 {
        cmd
    } else {
        portres_tests::as_user(&cmd, uid, uid, &[])
    };
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    (child, line.trim().to_string())
}

const NOBODY: u32 = 65534;

nstest!(
    one_unprivileged_user_cannot_pin_daemon_memory_with_unread_replies,
    |_| {
        let dir = open_tempdir();
        let d = ProcessDaemon::start(dir.path(), &[]);
        let pid = d.child.id();
        let before = rss_mib(pid);
        // 300 connections, each pipelining ~36 KiB of calls whose replies
        // (the interface description, ~3 KiB each) nobody reads: ~400 MiB of
        // replies if the daemon produced them all.
        let (mut flood, line) = stress_as(&d.socket, NOBODY, &["unread", "300", "36864"]);
        let during = settled_rss_mib(pid);
        // Everyone else is served meanwhile.
        assert!(d.client().status().is_ok());
        let _ = flood.kill();
        let _ = flood.wait();
        // Once they leave, the memory comes back.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut after = rss_mib(pid);
        while after > before + 16 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            after = rss_mib(pid);
        }
        eprintln!(
            "unread replies ({line}): daemon RSS {before} MiB -> {during} MiB under the flood -> {after} MiB after it left"
        );
        assert!(
            during < before + 64,
            "one user's unread replies grew the daemon from {before} to {during} MiB"
        );
        assert!(
            after <= before + 16,
            "RSS did not come back after the flood: {before} -> {after} MiB"
        );
    }
);

/// `portresd` in `dir` under RLIMIT_NOFILE `nofile` (soft and hard, via
/// `prlimit`), log in `dir/portresd.log`.
fn daemon_with_nofile(dir: &std::path::Path, nofile: u32) -> ProcessDaemon {
    daemon_with_nofile_and(dir, nofile, &[])
}

/// `daemon_with_nofile` with `extra` flags.
fn daemon_with_nofile_and(dir: &std::path::Path, nofile: u32, extra: &[&str]) -> ProcessDaemon {
    let inner = portres_tests::daemon_command(dir, extra);
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}"))
        .arg("--")
        .arg(inner.get_program())
        .args(inner.get_args())
        .env_remove("PORTRES_SOCKET")
        .env_remove("PORTRES_SESSION_FD")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(portres_tests::append(&dir.join("portresd.log")));
    ProcessDaemon::spawn(cmd, dir)
}

/// Root's whole round trip on a fresh connection, with a deadline (a
/// daemon that cannot accept must fail the test, not hang it): connect,
/// Status, Acquire, Bind a socket into the block.
fn root_is_served(socket: &std::path::Path) -> Result<(), String> {
    let mut raw = Raw::connect(socket);
    raw.send(&frame("io.portres.Status", json!({}), false), &[]);
    let v = raw
        .reply()
        .ok_or("Status: connection closed or timed out")?;
    if !is_status_reply(&v) {
        return Err(format!("Status: {v}"));
    }
    raw.send(
        &frame(
            "io.portres.Acquire",
            json!({"protocol": "tcp", "count": 1}),
            false,
        ),
        &[],
    );
    let v = raw.reply().ok_or("Acquire: no answer")?;
    let token = v["parameters"]["reservation"]["token"]
        .as_str()
        .ok_or(format!("Acquire: {v}"))?
        .to_string();
    let sock = tcp4();
    raw.send(
        &frame(
            "io.portres.Bind",
            json!({"token": token, "address": "127.0.0.1"}),
            false,
        ),
        &[sock.as_fd()],
    );
    let v = raw.reply().ok_or("Bind: no answer")?;
    if v["parameters"]["port"].as_u64().is_none() {
        return Err(format!("Bind: {v}"));
    }
    Ok(())
}

nstest!(a_descriptor_flood_by_one_user_leaves_root_served, |_| {
    let dir = open_tempdir();
    let d = daemon_with_nofile(dir.path(), 256);
    let pid = d.child.id();
    // 300 connections, each parking 16 descriptors: 5100 descriptors
    // wanted, 256 allowed.
    let (mut flood, line) = stress_as(&d.socket, NOBODY, &["park-fds", "300"]);
    let open_fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let served = root_is_served(&d.socket);
    let ticks_before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let ticks = cpu_ticks(pid) - ticks_before;
    let served_again = root_is_served(&d.socket);
    let _ = flood.kill();
    let _ = flood.wait();
    let log = std::fs::read_to_string(&d.log).unwrap();
    eprintln!(
        "park-fds flood ({line}): daemon holds {open_fds} of 256 descriptors, {ticks} CPU ticks in 2 s while it lasts; root: {served:?}, {served_again:?}"
    );
    served.expect("root is served during the flood");
    served_again.expect("root is still served");
    assert!(open_fds < 256, "the flood took every descriptor");
    assert!(
        log.contains("descriptor limit for unprivileged users reached")
            || log.contains("descriptors: closing"),
        "{}",
        d.log_tail(20)
    );
});

/// What a daemon out of descriptors did while root's 200 silent
/// connections to `socket` flooded it for 3 s.
struct Flooded {
    /// The flood's own line ("opened N refused M").
    line: String,
    /// The daemon's CPU share meanwhile.
    cpu: f64,
    /// Log lines matching the accept-failure text, meanwhile and in all.
    lines: usize,
    hits: usize,
    secs: f64,
}

/// Floods `socket` of daemon `d` with root's 200 silent connections (root
/// is exempt from the unprivileged budget, so they run the daemon out of
/// descriptors) for 3 s, then ends the flood. `failed`: the text of the
/// accept-failure log line.
fn flood_out_of_descriptors(d: &ProcessDaemon, socket: &std::path::Path, failed: &str) -> Flooded {
    let pid = d.child.id();
    let (mut flood, line) = stress_as(socket, 0, &["flood", "200", "0"]);
    let count = |log: &str| log.lines().filter(|l| l.contains(failed)).count();
    let log_before = std::fs::read_to_string(&d.log).unwrap();
    let ticks_before = cpu_ticks(pid);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let ticks = cpu_ticks(pid) - ticks_before;
    let secs = t0.elapsed().as_secs_f64();
    let log = std::fs::read_to_string(&d.log).unwrap();
    let _ = flood.kill();
    let _ = flood.wait();
    Flooded {
        line,
        cpu: ticks as f64 / 100.0 / secs, // USER_HZ on Linux
        lines: count(&log) - count(&log_before),
        hits: count(&log),
        secs,
    }
}

/// The flood hit EMFILE, and the daemon paused instead of spinning: at
/// most a log line a second, under a fifth of a CPU.
fn paused_instead_of_spinning(f: &Flooded, d: &ProcessDaemon) {
    assert!(f.hits >= 1, "EMFILE was never hit: {}", d.log_tail(10));
    assert!(
        f.lines as f64 <= f.secs + 1.0,
        "{} accept log lines in {:.1} s",
        f.lines,
        f.secs
    );
    assert!(
        f.cpu < 0.2,
        "the daemon spun at {:.0}% of a CPU",
        f.cpu * 100.0
    );
}

nstest!(
    out_of_descriptors_accepting_pauses_instead_of_spinning_and_resumes,
    |_| {
        let dir = open_tempdir();
        let d = daemon_with_nofile(dir.path(), 128);
        let f = flood_out_of_descriptors(&d, &d.socket, "accept failed");
        // Once the flood is gone, new connections are accepted and served.
        assert!(
            eventually(|| root_is_served(&d.socket).is_ok()),
            "accepting never resumed: {}",
            d.log_tail(10)
        );
        eprintln!(
            "out of descriptors ({}): {:.0}% of a CPU, {} accept log line(s) in {:.1} s",
            f.line,
            f.cpu * 100.0,
            f.lines,
            f.secs
        );
        paused_instead_of_spinning(&f, &d);
    }
);

nstest!(
    out_of_descriptors_the_portserver_endpoint_pauses_instead_of_spinning_and_resumes,
    |_| {
        // The workers accept the portserver endpoint's connections
        // themselves: out of descriptors, each pauses its accepts (as the
        // front does for the varlink socket) instead of spinning on a
        // listener that stays readable. The silent connections are closed
        // unanswered after 2 s each, and the backlog refills the room.
        let dir = open_tempdir();
        let endpoint = dir.path().join("portserver.sock");
        let d = daemon_with_nofile_and(
            dir.path(),
            128,
            &["--portserver", endpoint.to_str().unwrap()],
        );
        let f = flood_out_of_descriptors(&d, &endpoint, "portserver accept failed");
        // Once the flood is gone, a request is answered again.
        let ask = || -> Option<u16> {
            use std::io::{Read, Write};
            let mut s = std::os::unix::net::UnixStream::connect(&endpoint).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(format!("{}\n", std::process::id()).as_bytes())
                .ok()?;
            let mut answer = String::new();
            s.read_to_string(&mut answer).ok()?;
            answer.trim().parse().ok()
        };
        assert!(
            eventually(|| ask().is_some()),
            "the endpoint never answered again: {}",
            d.log_tail(10)
        );
        eprintln!(
            "portserver endpoint out of descriptors ({}): {:.0}% of a CPU, {} accept log line(s) in {:.1} s",
            f.line,
            f.cpu * 100.0,
            f.lines,
            f.secs
        );
        paused_instead_of_spinning(&f, &d);
    }
);

/// Uids no other test runs processes as, one per test: RLIMIT_NPROC counts
/// every thread of the uid.
const THREAD_LIMITED_UIDS: [u32; 2] = [65531, 65530];

/// A user-mode daemon of `uid` in `dir/home` (kernel sync off, one
/// worker) under RLIMIT_NPROC `nproc`; `None` if it cannot start under it.
fn daemon_under_nproc(
    dir: &std::path::Path,
    uid: u32,
    nproc: usize,
    fault: &str,
) -> Option<std::process::Child> {
    let home = dir.join("home");
    let _ = std::fs::remove_dir_all(&home);
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(uid), Some(uid)).unwrap();
    let mut inner = std::process::Command::new(portres_tests::bin("portresd"));
    inner
        .arg("--socket")
        .arg(home.join("portres.sock"))
        .arg("--state-dir")
        .arg(home.join("state"))
        .args(["--kernel-sync", "off", "--workers", "1"]);
    let as_daemon_user = portres_tests::as_user(&inner, uid, uid, &[]);
    let mut cmd = std::process::Command::new("prlimit");
    cmd.arg(format!("--nproc={nproc}:{nproc}"))
        .arg("--")
        .arg(as_daemon_user.get_program())
        .args(as_daemon_user.get_args())
        .env("PORTRES_TEST_FAULT", fault)
        .env_remove("PORTRES_SOCKET")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(portres_tests::append(&dir.join("portresd.log")));
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Ready once it answers: the socket is bound before the workers
        // start, and one that cannot start them exits.
        if let Ok(s) = UnixStream::connect(home.join("portres.sock")) {
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let answered = reply_to_status(&mut Raw(s)).is_some();
            if answered && child.try_wait().unwrap().is_none() {
                return Some(child);
            }
        }
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        assert!(Instant::now() < deadline, "portresd did not become ready");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Such a daemon with room for exactly `spare` threads beyond those it
/// starts with (found by trying the smallest limit it starts under), and
/// its socket.
fn thread_limited_daemon(
    uid: u32,
    dir: &std::path::Path,
    spare: usize,
    fault: &str,
) -> (std::process::Child, std::path::PathBuf) {
    let least = (1..=16)
        .find(|&n| {
            daemon_under_nproc(dir, uid, n, fault).is_some_and(|mut c| {
                let _ = c.kill();
                let _ = c.wait();
                true
            })
        })
        .expect("portresd starts under some thread limit");
    let child = daemon_under_nproc(dir, uid, least + spare, fault).expect("portresd starts again");
    (child, dir.join("home/portres.sock"))
}

nstest!(
    under_a_thread_limit_list_answers_internal_and_the_worker_survives,
    |_| {
        let dir = open_tempdir();
        // No thread to spare: the List dump's thread is refused by the OS, as
        // under a pids limit.
        let (mut child, socket) = thread_limited_daemon(THREAD_LIMITED_UIDS[0], dir.path(), 0, "");
        let mut raw = Raw::connect(&socket);
        let v = raw.call("io.portres.Acquire", json!({"protocol": "tcp", "count": 2}));
        assert_eq!(v["parameters"]["reservation"]["count"], 2, "{v}");
        raw.send(&frame("io.portres.List", json!({}), false), &[]);
        let listed = raw.reply();
        let status = reply_to_status(&mut raw);
        let other = reply_to_status(&mut Raw::connect(&socket));
        let _ = child.kill();
        let _ = child.wait();
        let listed = listed.expect("List is answered, the connection stays");
        assert_eq!(code(&listed), "internal", "{listed}");
        assert!(
            listed["parameters"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("thread")),
            "{listed}"
        );
        let status = status.expect("the same connection goes on");
        assert_eq!(status["parameters"]["runtime"], 1, "{status}");
        assert!(
            other.is_some_and(|v| is_status_reply(&v)),
            "a new connection is served (its worker is alive)"
        );
    }
);

nstest!(
    one_user_gets_at_most_four_list_dump_threads_at_once,
    |_test| {
        let dir = open_tempdir();
        // Room for four dump threads; twelve Lists, each dump 200 ms long
        // (a test-only fault), arrive at once.
        let (mut child, socket) =
            thread_limited_daemon(THREAD_LIMITED_UIDS[1], dir.path(), 4, "slow-list");
        let mut conns: Vec<Raw> = (0..12).map(|_| Raw::connect(&socket)).collect();
        for c in &mut conns {
            assert!(reply_to_status(c).is_some());
        }
        // Something to list, so each List makes a socket-table dump (ms).
        for proto in ["tcp", "udp"] {
            let v = conns[0].call("io.portres.Acquire", json!({"protocol": proto, "count": 8}));
            assert_eq!(v["parameters"]["reservation"]["count"], 8, "{v}");
        }
        freeze(child.id());
        for c in &conns {
            c.send(&frame("io.portres.List", json!({}), false), &[]);
        }
        thaw(child.id());
        let replies: Vec<Option<Value>> = conns.iter_mut().map(Raw::reply).collect();
        let _ = child.kill();
        let _ = child.wait();
        let failed: Vec<String> = replies
            .iter()
            .filter(|r| {
                r.as_ref()
                    .is_none_or(|v| v["parameters"]["reservations"].is_null())
            })
            .map(|r| format!("{r:?}"))
            .collect();
        assert!(
            failed.is_empty(),
            "{} of 12 Lists failed: {failed:?}",
            failed.len()
        );
    }
);

/// Sends Status on `raw` and reads its reply (`None`: closed or timed
/// out).
fn reply_to_status(raw: &mut Raw) -> Option<Value> {
    raw.request(&frame("io.portres.Status", json!({}), false), &[])
}

nstest!(
    a_daemon_stopping_while_clients_connect_exits_cleanly,
    |_| {
        // The workers stop with the daemon; a connection accepted meanwhile
        // must neither spin the front (handing it to stopped workers) nor turn
        // the clean stop into a failure.
        for round in 0..10 {
            let dir = open_tempdir();
            let mut d = ProcessDaemon::start(dir.path(), &["--workers", "2"]);
            let socket = d.socket.clone();
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let hammer = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = UnixStream::connect(&socket);
                    }
                })
            };
            std::thread::sleep(Duration::from_millis(20));
            let pid = rustix::process::Pid::from_raw(d.child.id() as i32).unwrap();
            rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
            let deadline = Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Some(status) = d.child.try_wait().unwrap() {
                    break Some(status);
                }
                if Instant::now() > deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            hammer.join().unwrap();
            let status = status.unwrap_or_else(|| {
                panic!(
                    "round {round}: portresd did not stop within 10 s; log:\n{}",
                    d.log_tail(10)
                )
            });
            assert!(
                status.success(),
                "round {round}: {status}; log:\n{}",
                d.log_tail(10)
            );
        }
    }
);
