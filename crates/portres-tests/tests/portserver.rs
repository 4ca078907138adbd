//! The portserver endpoint (`portresd --portserver`, portpicker's
//! protocol) on the real kernel: a request gets a port reserved on TCP and
//! UDP in `ip_local_reserved_ports`, listed with the named pid; it lives
//! until that process exits, not while the connection does; who may name
//! which pid; pid 0, garbage, long lines, slow writers and clients that
//! never read are closed without a reply and harm nothing; the per-user
//! quota; a clean stop ends them; the flag with a path and an abstract
//! name on the real binary. Each test runs in its own network namespace
//! (abstract names belong to it).

use std::io::{Read, Write};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use portres::{Client, HolderOrigin, Protocol, ReservationInfo};
use portres_daemon::PortserverAddress;
use portres_tests::{
    InProcessDaemon, ProcessDaemon, as_user, assert_kernel_settles_to, eventually, kernel_reserved,
    open_tempdir, run, testkit,
};

const NAME: &str = "portres-test-portserver";
const USER: u32 = 1000;
const OTHER_USER: u32 = 1001;

fn daemon(tweak: impl FnOnce(&mut portres_daemon::Config)) -> InProcessDaemon {
    InProcessDaemon::start(|c| {
        c.portserver = vec![PortserverAddress::Abstract(NAME.as_bytes().to_vec())];
        tweak(c);
    })
}

fn connect() -> UnixStream {
    let addr = SocketAddr::from_abstract_name(NAME.as_bytes()).unwrap();
    UnixStream::connect_addr(&addr).expect("connect to the portserver endpoint")
}

/// One request as portpicker makes it: `bytes`, then everything the
/// daemon writes until it closes (a reset, when the daemon closed with our
/// bytes unread, counts as closed).
fn exchange(bytes: &[u8]) -> Vec<u8> {
    let mut s = connect();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(bytes).unwrap();
    read_to_close(&mut s)
}

fn read_to_close(s: &mut UnixStream) -> Vec<u8> {
    let mut out = Vec::new();
    match s.read_to_end(&mut out) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("the daemon neither answered nor closed: {e}"),
    }
    out
}

/// Asks for `pid`'s port; `None` if the daemon closed without a reply.
fn ask(pid: u32) -> Option<u16> {
    let reply = exchange(format!("{pid}\n").as_bytes());
    if reply.is_empty() {
        return None;
    }
    let text = String::from_utf8(reply).unwrap();
    assert!(
        text.ends_with('\n') && text.lines().count() == 1,
        "{text:?}"
    );
    Some(text.trim_end().parse().expect("a port"))
}

/// A process that lives until killed.
fn sleeper(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null()).spawn().expect("spawn sleep")
}

/// `sleep 600` as `uid`, once it runs as `uid` (setpriv starts as root
/// and changes user before it execs).
fn sleeper_as(uid: u32) -> Child {
    let child = sleeper(&mut as_user(
        Command::new("sleep").arg("600"),
        uid,
        uid,
        &[],
    ));
    let status = format!("/proc/{}/status", child.id());
    let runs_as = |uid: u32| {
        std::fs::read_to_string(&status).is_ok_and(|s| {
            s.lines().any(|l| {
                l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some(&uid.to_string())
            })
        })
    };
    assert!(eventually(|| runs_as(uid)), "sleep never ran as uid {uid}");
    child
}

fn kill(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The reservations holding `port`.
fn holding(client: &Client, port: u16) -> Vec<ReservationInfo> {
    client
        .list(None)
        .unwrap()
        .into_iter()
        .filter(|r| r.start == port)
        .collect()
}

fn assert_held_for(client: &Client, port: u16, pid: u32, uid: u32) {
    let held = holding(client, port);
    let protocols: Vec<Protocol> = held.iter().map(|r| r.protocol).collect();
    assert_eq!(protocols, [Protocol::Tcp, Protocol::Udp], "{held:?}");
    for r in &held {
        let h = r.holder.expect("runtime reservations have a holder");
        assert_eq!(r.count, 1);
        assert_eq!((h.pid, h.uid), (pid as i32, uid), "{r:?}");
        assert_eq!(h.origin, Some(HolderOrigin::Portserver), "{r:?}");
        assert_eq!(r.label.as_deref(), Some("portserver"));
    }
    assert!(
        kernel_reserved().contains(port),
        "{port} not in the kernel list"
    );
}

nstest!(
    portserver_reserves_a_port_on_both_protocols_until_the_process_exits,
    |_| {
        let d = daemon(|_| {});
        let client = d.client();
        let child = sleeper(Command::new("sleep").arg("600"));
        let port = ask(child.id()).expect("a port");
        let (lo, hi) = portres_kernel::sysctl::local_port_range().unwrap();
        assert!((lo..=hi).contains(&port), "{port} outside {lo}-{hi}");
        // The connection is closed: the ports stay, held for the process.
        assert_held_for(&client, port, child.id(), 0);
        // The CLI says where they came from.
        let mut list = portres_tests::cli(&d.socket);
        list.arg("list");
        let (_, out, _) = run(list);
        assert!(
            out.contains(&format!("(pid {}, portserver)", child.id())),
            "{out}"
        );
        // The same process asks again: another port, both held.
        let second = ask(child.id()).expect("a second port");
        assert_ne!(second, port);
        assert_held_for(&client, second, child.id(), 0);
        // A port on both protocols is one nobody may take by bind(0) either:
        // it is in the kernel's list (checked above); a socket can still bind
        // it explicitly, as a portpicker user does.
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind tcp");
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port)).expect("bind udp");
        drop((tcp, udp));

        kill(child);
        assert!(
            eventually(|| holding(&client, port).is_empty() && holding(&client, second).is_empty()),
            "the process exited but its ports are still held: {:?}",
            client.list(None).unwrap()
        );
        assert_kernel_settles_to("");
    }
);

nstest!(portserver_ports_end_with_a_clean_stop, |_| {
    let d = daemon(|_| {});
    let port = ask(std::process::id()).expect("a port for this test process");
    assert!(kernel_reserved().contains(port));
    d.stop();
    assert_kernel_settles_to("");
});

nstest!(portserver_pid_of_another_user_is_refused, |_| {
    let d = daemon(|_| {});
    let client = d.client();
    let kit = |pids: &[&str]| {
        let mut cmd = Command::new(testkit());
        cmd.arg("portserver").arg(format!("@{NAME}")).args(pids);
        as_user(&cmd, USER, USER, &[])
    };
    let theirs = sleeper_as(USER);
    let other = sleeper_as(OTHER_USER);
    let root_pid = std::process::id().to_string();
    let (theirs_pid, other_pid) = (theirs.id().to_string(), other.id().to_string());
    let (out, stdout, stderr) = run(kit(&["self", &theirs_pid, &other_pid, &root_pid]));
    assert!(out.status.success(), "{stderr}");
    let replies: Vec<&str> = stdout.lines().collect();
    assert_eq!(replies.len(), 4, "{stdout}");
    // Itself and another process of its uid: ports; another user's and
    // root's process: nothing.
    assert_ne!(replies[0], "-");
    assert_ne!(replies[1], "-");
    assert_eq!(&replies[2..], ["-", "-"], "{stdout}");
    let port: u16 = replies[1].parse().unwrap();
    assert_held_for(&client, port, theirs.id(), USER);
    // The refused ones left nothing behind; the kit's own port ended with
    // it: what stays is the port of its uid's other process.
    assert!(
        eventually(|| client.list(None).unwrap().len() == 2),
        "{:?}",
        client.list(None).unwrap()
    );
    // Root may name anyone; the ports count as root's.
    let for_other = ask(other.id()).expect("root names another user's process");
    assert_held_for(&client, for_other, other.id(), 0);
    kill(theirs);
    kill(other);
});

nstest!(portserver_bad_requests_are_closed_without_a_reply, |_| {
    let d = daemon(|_| {});
    let client = d.client();
    let child = sleeper(Command::new("sleep").arg("600"));
    // Slow writers first: half a line, and nothing at all. They are held
    // open while everything else is served.
    let mut half = connect();
    half.write_all(b"12").unwrap();
    let mut silent = connect();
    for bad in [
        &b"0\n"[..],
        b"1\n",
        b"-5\n",
        b"garbage\n",
        b"12 34\n",
        b"\n",
        b"99999999999\n",
        b"2147483647\n",
        b"123456789012345678901234567890\n",
        b"123456789012345678901234567890",
        &[b'7'; 4096],
        b"\xff\xfe\n",
    ] {
        assert!(
            exchange(bad).is_empty(),
            "{:?} got an answer",
            String::from_utf8_lossy(bad)
        );
    }
    // A client that sends its request and never reads: answered, closed,
    // the daemon goes on (the port stays with the named process).
    let mut never_reads = connect();
    never_reads
        .write_all(format!("{}\n", child.id()).as_bytes())
        .unwrap();
    // The daemon serves others meanwhile.
    let port = ask(child.id()).expect("a good request is served");
    // The slow writers are closed by the read deadline, unanswered.
    for s in [&mut half, &mut silent] {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        assert!(read_to_close(s).is_empty(), "a slow writer got an answer");
    }
    // Nothing reserved but the two good requests' ports (the one never
    // read, and `port`), and the daemon is fine.
    assert!(
        eventually(|| client.list(None).unwrap().len() == 4),
        "{:?}",
        client.list(None).unwrap()
    );
    assert!(client.list(None).unwrap().iter().any(|r| r.start == port));
    drop(never_reads);
    client.acquire(Protocol::Tcp, 0, 1).unwrap();
    kill(child);
});

nstest!(portserver_quota_applies_per_user, |_| {
    let d = daemon(|c| c.quota = 5);
    let client = d.client();
    // A held runtime reservation of one port, then portserver ports (two
    // each, TCP and UDP): 1 + 2 + 2 = 5, the third would pass 5.
    let mut cmd = Command::new(testkit());
    cmd.arg("portserver")
        .arg(format!("@{NAME}"))
        .args(["self", "self", "self", "--hold"])
        .stdout(Stdio::piped());
    let mut hold = Command::new(testkit());
    hold.args(["hold", "tcp", "0", "1"])
        .env("PORTRES_SOCKET", &d.socket)
        .stdout(Stdio::piped());
    let mut holder = as_user(&hold, USER, USER, &[])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(holder.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    assert!(!line.is_empty(), "the holder did not acquire");
    let mut asker = as_user(&cmd, USER, USER, &[])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut replies = Vec::new();
    let mut out = std::io::BufReader::new(asker.stdout.take().unwrap());
    for _ in 0..3 {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).unwrap();
        replies.push(line.trim_end().to_string());
    }
    assert_ne!(replies[0], "-");
    assert_ne!(replies[1], "-");
    assert_eq!(replies[2], "-", "past the quota: {replies:?}");
    let mine = client.list(None).unwrap();
    assert_eq!(mine.len(), 5, "{mine:?}");
    // The asker's exit gives its quota back.
    kill(asker);
    assert!(eventually(|| client.list(None).unwrap().len() == 1));
    kill(holder);
});

nstest!(portserver_flag_serves_a_path_and_an_abstract_name, |_| {
    use std::os::unix::fs::PermissionsExt;
    let dir = open_tempdir();
    let path = dir.path().join("portserver.sock");
    let abstract_name = format!("@{NAME}");
    let d = ProcessDaemon::start(
        dir.path(),
        &[
            "--portserver",
            path.to_str().unwrap(),
            "--portserver",
            &abstract_name,
        ],
    );
    // The portserver listeners are bound and listening before the varlink
    // socket: once that accepts (`start` returned), they do too, with no
    // window where a connect is refused (portpicker would fall back to
    // its own unreserved pick without a word).
    let first = ask(std::process::id()).expect("a port at once over the abstract name");
    let at_once = UnixStream::connect(&path).expect("the path accepts at once");
    drop(at_once);
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666, "anyone may ask (the pid check decides)");
    let mut cmd = Command::new(testkit());
    cmd.arg("portserver")
        .arg(&path)
        .args(["self"])
        .arg("--hold")
        .stdout(Stdio::piped());
    let mut kit = as_user(&cmd, USER, USER, &[])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(kit.stdout.take().unwrap());
    std::io::BufRead::read_line(&mut out, &mut line).unwrap();
    let port: u16 = line.trim_end().parse().expect("a port over the path");
    assert_held_for(&d.client(), port, kit.id(), USER);
    let other = ask(std::process::id()).expect("a port over the abstract name");
    assert_ne!(other, port);
    assert_ne!(other, first);
    kill(kit);
    let log = d.terminate();
    assert!(log.contains("portserver endpoint"), "{log}");
    assert!(
        !path.exists(),
        "the portserver socket file is removed at stop"
    );
    assert_kernel_settles_to("");
});

nstest!(
    portserver_a_mass_exit_ends_every_holder_and_empties_the_kernel_list,
    |_| {
        // More holders than the front reaps per wakeup (256), all exiting
        // at once: every one ends, the kernel's list follows, and the
        // endpoint still answers afterwards.
        const PROCESSES: usize = 300;
        let d = daemon(|_| {});
        let client = d.client();
        let mut children: Vec<Child> = (0..PROCESSES)
            .map(|_| sleeper(Command::new("sleep").arg("600")))
            .collect();
        let mut ports: Vec<u16> = children
            .iter()
            .map(|c| ask(c.id()).expect("a port"))
            .collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), PROCESSES, "one port each");
        assert_eq!(client.list(None).unwrap().len(), 2 * PROCESSES);
        for c in &mut children {
            let _ = c.kill();
        }
        for c in &mut children {
            let _ = c.wait();
        }
        assert!(
            eventually(|| client.list(None).unwrap().is_empty()),
            "{} reservation(s) left after the exit",
            client.list(None).unwrap().len()
        );
        assert_kernel_settles_to("");
        let child = sleeper(Command::new("sleep").arg("600"));
        assert!(ask(child.id()).is_some());
        kill(child);
    }
);

nstest!(
    portserver_a_pid_namespaces_first_process_sending_1_gets_a_port_for_itself,
    |_| {
        // A test runner that is the first process of its pid namespace
        // (`docker run image pytest`) sends its own pid: "1".
        let d = daemon(|_| {});
        let client = d.client();
        let script = format!(
            "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX)\n\
             s.connect('\\0{NAME}')\n\
             s.sendall(b'1\\n')\n\
             print(s.recv(64).decode().strip(), flush=True)\n\
             sys.stdin.read()\n"
        );
        let mut child = Command::new("unshare")
            .args(["--pid", "--fork", "--kill-child", "python3", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no port for pid 1 of a pid namespace: {line:?}"));
        let held = holding(&client, port);
        assert_eq!(held.len(), 2, "{held:?}");
        let pid = held[0].holder.unwrap().pid;
        assert!(pid > 1, "held for the daemon's view of it: {held:?}");
        // It ends when that process does.
        drop(child.stdin.take());
        let _ = child.wait();
        assert!(
            eventually(|| holding(&client, port).is_empty()),
            "{port} outlived its process"
        );
    }
);

nstest!(
    portserver_ports_after_a_sigkill_of_the_daemon_are_not_kept_by_the_restart,
    |_| {
        // The daemon dies (SIGKILL) holding portserver ports: the kernel
        // still lists them. The restart knows nothing of them (a restart
        // forgets holders): it must not take them for the admin's
        // baseline, and the next request gets the same lowest port.
        let dir = open_tempdir();
        let args = ["--portserver", &format!("@{NAME}")];
        let d = ProcessDaemon::start(dir.path(), &args);
        let child = sleeper(Command::new("sleep").arg("600"));
        let port = ask(child.id()).expect("a port");
        assert!(kernel_reserved().contains(port));
        d.kill9();
        assert!(kernel_reserved().contains(port), "the kernel kept it");
        let d = ProcessDaemon::start(dir.path(), &args);
        assert_kernel_settles_to("");
        let status = d.client().status().unwrap();
        assert_eq!(status.baseline, "", "{status:?}");
        assert_eq!(status.runtime, 0);
        assert_eq!(ask(child.id()), Some(port));
        kill(child);
    }
);
