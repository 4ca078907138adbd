//! `portres exec --listen`: the command starts with the block's sockets,
//! bound by the daemon, at descriptors 3…3+N−1 (TCP listening, UDP bound,
//! by port) and the systemd socket-activation variables; a Python child
//! accepts on them while the test connects. Also `--persistent` for a
//! reservation's owner (as uid 65534, on port 80), no descriptor leaking
//! into the child or staying in the `portres` process, and the usage
//! errors found before connecting. Each test in its own network namespace,
//! against a real daemon; the CLI helpers are `cli`'s.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, TcpStream, UdpSocket};
use std::process::Command;

use portres_tests::{InProcessDaemon, kernel_reserved};
use serde_json::Value;

use crate::cli::{
    NOBODY, Running, TIMEOUT, cmd, list_json, nobody, ok_json, refused_by, run_t, token_of,
    usage_refused, wait_until,
};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The command under `exec --listen`: prints what it was handed as one
/// line of JSON, then serves each socket once (TCP: accepts and greets;
/// UDP: answers one datagram) and exits 0.
const CHILD: &str = r#"
import json, os, socket
n = int(os.environ["LISTEN_FDS"])
def link(fd):
    try:
        return os.readlink("/proc/self/fd/%s" % fd)
    except OSError:
        return None
fds = {f: link(f) for f in os.listdir("/proc/self/fd")}
socks = [socket.socket(fileno=3 + i) for i in range(n)]
print(json.dumps({
    "pid": os.getpid(),
    "uid": os.getuid(),
    "env": {k: v for k, v in os.environ.items() if k.startswith(("LISTEN_", "PORTRES_"))},
    "ports": [s.getsockname()[1] for s in socks],
    "addresses": [s.getsockname()[0] for s in socks],
    "protocols": ["tcp" if s.type == socket.SOCK_STREAM else "udp" for s in socks],
    "listening": [s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) for s in socks],
    "inheritable": [os.get_inheritable(3 + i) for i in range(n)],
    "fds": fds,
}), flush=True)
for s in socks:
    port = s.getsockname()[1]
    if s.type == socket.SOCK_STREAM:
        c, _ = s.accept()
        c.sendall(b"hello %d\n" % port)
        c.close()
    else:
        data, peer = s.recvfrom(100)
        s.sendto(b"hello %d " % port + data, peer)
"#;

/// `portres exec ARGS… -- python3 -c CHILD` as `make` builds it, running;
/// and the JSON line the child printed.
fn serve(make: &dyn Fn(&[&str]) -> Command, args: &[&str]) -> (Running, Value) {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--", "/usr/bin/python3", "-c", CHILD]);
    let mut running = Running::spawn(make(&all));
    let line = running.next_line();
    let info = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    (running, info)
}

fn env<'a>(info: &'a Value, key: &str) -> &'a str {
    info["env"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} not in the command's environment: {info}"))
}

fn env_num(info: &Value, key: &str) -> u64 {
    env(info, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number: {info}"))
}

/// The socket inodes (`socket:[N]`) among a process's descriptors, from
/// `/proc/PID/fd`.
fn socket_links(pid: u32) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|l| l.to_string_lossy().into_owned())
        .filter(|l| l.starts_with("socket:"))
        .collect()
}

/// Asserts the systemd-style hand-off of `count` sockets of `protocol`
/// on `address`: descriptors 3…, each the protocol's and inheritable, TCP
/// ones listening, in port order over the whole block, LISTEN_FDS,
/// LISTEN_PID = the command's own pid (not `exec_pid`, portres' own),
/// LISTEN_FDNAMES = the ports; no other socket in the command, and none of
/// its sockets left in `portres`. Returns the ports.
fn assert_handed_off(
    info: &Value,
    exec_pid: u32,
    protocol: &str,
    count: usize,
    address: &str,
) -> Vec<u16> {
    let ports: Vec<u16> = info["ports"]
        .as_array()
        .unwrap_or_else(|| panic!("{info}"))
        .iter()
        .map(|p| p.as_u64().expect("port") as u16)
        .collect();
    assert_eq!(ports.len(), count, "{info}");
    assert_eq!(env_num(info, "LISTEN_FDS"), count as u64, "{info}");
    let pid = info["pid"].as_u64().expect("pid");
    assert_eq!(env_num(info, "LISTEN_PID"), pid, "LISTEN_PID: {info}");
    assert_ne!(
        pid,
        u64::from(exec_pid),
        "the command is not portres: {info}"
    );
    let names: Vec<String> = ports.iter().map(u16::to_string).collect();
    assert_eq!(env(info, "LISTEN_FDNAMES"), names.join(":"), "{info}");
    // The whole block, by port, starting at fd 3.
    let start = env_num(info, "PORTRES_START") as u16;
    assert_eq!(env_num(info, "PORTRES_COUNT"), count as u64, "{info}");
    assert_eq!(env(info, "PORTRES_PROTOCOL"), protocol, "{info}");
    let block: Vec<u16> = (start..start + count as u16).collect();
    assert_eq!(ports, block, "fds 3.. are not the block by port: {info}");
    for i in 0..count {
        assert_eq!(info["protocols"][i], protocol, "fd {}: {info}", 3 + i);
        assert_eq!(info["addresses"][i], address, "fd {}: {info}", 3 + i);
        assert_eq!(info["inheritable"][i], true, "fd {}: {info}", 3 + i);
        let listening = info["listening"][i].as_u64().expect("SO_ACCEPTCONN");
        assert_eq!(listening == 1, protocol == "tcp", "fd {}: {info}", 3 + i);
    }
    // No other socket reached the command.
    let fds = info["fds"].as_object().expect("fds");
    let mine: Vec<String> = (0..count)
        .map(|i| {
            fds[&(3 + i).to_string()]
                .as_str()
                .expect("link")
                .to_string()
        })
        .collect();
    for (fd, link) in fds {
        let fd: usize = fd.parse().expect("fd number");
        let link = link.as_str().unwrap_or_default();
        assert!(
            (3..3 + count).contains(&fd) || !link.starts_with("socket:"),
            "fd {fd} ({link}) leaked into the command: {info}"
        );
    }
    // And portres itself lets go of its copies once the command runs.
    wait_until("portres to close its copies of the sockets", || {
        let held = socket_links(exec_pid);
        !mine.iter().any(|m| held.contains(m))
    });
    ports
}

fn greet_tcp(port: u16) -> String {
    let mut s = TcpStream::connect((V4, port)).unwrap_or_else(|e| panic!("connect {port}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    text
}

fn greet_udp(port: u16) -> String {
    let s = UdpSocket::bind((V4, 0)).expect("udp");
    s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    s.send_to(b"there", (V4, port)).expect("send");
    let mut buf = [0u8; 100];
    let (n, _) = s.recv_from(&mut buf).expect("the command's answer");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Waits for `running` to exit with status 0.
fn exits_0(running: &mut Running) {
    let (status, err) = running.wait();
    assert_eq!(status.code(), Some(0), "exec: {status}; stderr:\n{err}");
}

/// Waits for `running` to exit with status 0, and its reservation to end.
fn ends_releasing(running: &mut Running, socket: &std::path::Path) {
    exits_0(running);
    wait_until("the reservation to end with the command", || {
        list_json(socket).is_empty()
    });
}

nstest!(exec_listen_tcp_child_accepts_on_fd_3, |_| {
    let d = InProcessDaemon::start(|_| {});
    // LISTEN_* of portres' own environment are replaced, not passed on.
    let make = |a: &[&str]| {
        let mut c = cmd(&d.socket, a);
        c.env("LISTEN_FDS", "9")
            .env("LISTEN_PID", "1")
            .env("LISTEN_FDNAMES", "stale");
        c
    };
    let (mut running, info) = serve(&make, &["tcp", "--listen", "127.0.0.1"]);
    let ports = assert_handed_off(&info, running.pid(), "tcp", 1, "127.0.0.1");
    let start = ports[0];
    assert!(
        kernel_reserved().contains(start),
        "{start} not kernel-reserved while the command runs"
    );
    let list = list_json(&d.socket);
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["in_use"], serde_json::json!([start]), "{list:?}");
    assert_eq!(greet_tcp(start), format!("hello {start}\n"));
    ends_releasing(&mut running, &d.socket);
});

nstest!(exec_listen_three_tcp_ports_and_the_capability, |_| {
    let d = InProcessDaemon::start(|_| {});
    let (mut running, info) = serve(
        &|a| cmd(&d.socket, a),
        &["tcp", "--count", "3", "--listen", "127.0.0.1"],
    );
    let ports = assert_handed_off(&info, running.pid(), "tcp", 3, "127.0.0.1");
    // The session capability sits above the sockets, open.
    let fd = env_num(&info, "PORTRES_SESSION_FD");
    assert!(
        fd >= 6,
        "PORTRES_SESSION_FD {fd} is among the sockets: {info}"
    );
    let link = info["fds"][fd.to_string()].as_str().unwrap_or_default();
    assert!(
        link.contains("portres-session"),
        "fd {fd} is {link}: {info}"
    );
    for port in &ports {
        assert_eq!(greet_tcp(*port), format!("hello {port}\n"));
    }
    ends_releasing(&mut running, &d.socket);
});

nstest!(exec_listen_udp_sockets_are_bound, |_| {
    let d = InProcessDaemon::start(|_| {});
    let (mut running, info) = serve(
        &|a| cmd(&d.socket, a),
        &["udp", "-s", "42100", "-c", "2", "--listen", "127.0.0.1"],
    );
    let ports = assert_handed_off(&info, running.pid(), "udp", 2, "127.0.0.1");
    assert_eq!(ports, [42100, 42101], "{info}");
    for port in &ports {
        assert_eq!(greet_udp(*port), format!("hello {port} there"));
    }
    ends_releasing(&mut running, &d.socket);
});

nstest!(exec_listen_persistent_port_80_for_its_owner, |_| {
    let d = InProcessDaemon::start(|_| {});
    let s = &d.socket;
    let owned = token_of(&ok_json(
        s,
        &["create", "tcp", "80", "--owner", "nobody", "--label", "web"],
    ));
    ok_json(s, &["create", "tcp", "81"]);
    let as_nobody = |a: &[&str]| nobody(s, a);

    // The owner, not root, serves on port 80.
    let (mut running, info) = serve(
        &as_nobody,
        &["--persistent", "tcp", "80", "1", "--listen", "127.0.0.1"],
    );
    assert_eq!(info["uid"], NOBODY, "{info}");
    let ports = assert_handed_off(&info, running.pid(), "tcp", 1, "127.0.0.1");
    assert_eq!(ports, [80], "{info}");
    assert_eq!(env_num(&info, "PORTRES_TOKEN"), owned, "{info}");
    assert!(
        info["env"].get("PORTRES_SESSION_FD").is_none(),
        "no session capability for a persistent reservation: {info}"
    );
    assert_eq!(greet_tcp(80), "hello 80\n");
    exits_0(&mut running);

    // Not acquired, so not released: the reservation stays as it was.
    let list = list_json(s);
    assert_eq!(list.len(), 2, "{list:?}");
    assert!(
        list.iter()
            .any(|r| r["start"] == 80 && r["kind"] == "persistent" && r["label"] == "web"),
        "{list:?}"
    );
    assert!(kernel_reserved().contains(80), "{}", kernel_reserved());

    // Someone else's: refused by the daemon (exit 1), the command never runs.
    let marker = tempfile::NamedTempFile::new().expect("tempfile");
    let path = marker.path().to_string_lossy().into_owned();
    std::fs::remove_file(&path).expect("rm");
    let touch = ["--", "/usr/bin/touch", path.as_str()];
    let mut args = vec!["exec", "--persistent", "tcp", "81", "--listen", "127.0.0.1"];
    args.extend_from_slice(&touch);
    refused_by(&as_nobody, &args, "access_denied");
    assert!(!std::path::Path::new(&path).exists(), "the command ran");
    // No such persistent reservation: not_found.
    let mut args = vec!["exec", "--persistent", "tcp", "82", "--listen", "127.0.0.1"];
    args.extend_from_slice(&touch);
    refused_by(&|a| cmd(s, a), &args, "not_found");
    assert!(!std::path::Path::new(&path).exists(), "the command ran");
});

nstest!(exec_listen_refuses_bad_input_before_connecting, |_| {
    let d = InProcessDaemon::start(|_| {});
    let s = &d.socket;
    // Each: the arguments between `exec` and `-- CMD`, split at spaces.
    let bad = [
        "tcp --listen localhost",
        "tcp --listen 127.0.0.1:8080",
        "tcp --listen [::1]:8080",
        "tcp --listen fe80::1",
        "tcp --listen udp://127.0.0.1",
        "udp --listen tcp:127.0.0.1",
        "tcp --count 0 --listen 127.0.0.1",
        "tcp 80 --listen 127.0.0.1",
        "--persistent tcp 80",
        "--persistent tcp --listen 127.0.0.1",
        "--persistent tcp 80 -c 2 --listen 127.0.0.1",
        "--persistent tcp 80 --label x --listen 127.0.0.1",
        "--persistent tcp 80 --strict-daemon --listen ::1",
        "--persistent tcp 0 --listen 127.0.0.1",
        "--persistent tcp 9000-8999 --listen 127.0.0.1",
    ];
    let as_args = |between: Vec<&'static str>| {
        let mut v = vec!["exec"];
        v.extend(between);
        v.extend(["--", "/bin/sh", "-c", "echo ran"]);
        v
    };
    for between in bad
        .map(|b| b.split(' ').collect())
        .into_iter()
        .chain([vec!["tcp", "--listen", ""]])
    {
        usage_refused(s, &as_args(between), "invalid_parameter");
    }
    assert!(list_json(s).is_empty(), "a refused exec left something");

    // The daemon refuses nothing, the command is missing: 127, nothing held.
    let ran = run_t(cmd(
        s,
        &[
            "exec",
            "tcp",
            "-c",
            "2",
            "--listen",
            "127.0.0.1",
            "--",
            "/nonexistent/portres-test-cmd",
        ],
    ));
    ran.expect(127);
    assert!(list_json(s).is_empty(), "{ran}");
    // Bracketed IPv6 and the reservation's own scheme are accepted (here a
    // TCP block on ::1 if the namespace has IPv6).
    if std::net::TcpListener::bind("[::1]:0").is_ok() {
        let ran = run_t(cmd(
            s,
            &[
                "exec",
                "tcp",
                "--listen",
                "tcp://[::1]",
                "--",
                "/bin/sh",
                "-c",
                "echo $LISTEN_FDS",
            ],
        ));
        ran.expect(0);
        assert_eq!(ran.stdout, "1\n", "{ran}");
    }
});

nstest!(
    exec_listen_finds_and_runs_the_command_as_execvp_would,
    |_| {
        let d = InProcessDaemon::start(|_| {});
        // Found on PATH by name; a script without a #! line runs under /bin/sh.
        let dir = portres_tests::open_tempdir();
        let script = dir.path().join("no-shebang");
        std::fs::write(&script, "echo \"$LISTEN_FDS $LISTEN_FDNAMES $1\"\n").expect("script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let path = format!(
            "/nonexistent:{}:{}",
            dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut c = cmd(
            &d.socket,
            &[
                "exec",
                "tcp",
                "-s",
                "42200",
                "-c",
                "2",
                "--listen",
                "127.0.0.1",
                "--",
                "no-shebang",
                "arg",
            ],
        );
        c.env("PATH", path);
        let ran = run_t(c);
        ran.expect(0);
        assert_eq!(ran.stdout, "2 42200:42201 arg\n", "{ran}");
        // Not executable: 126.
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .expect("chmod");
        let ran = run_t(cmd(
            &d.socket,
            &[
                "exec",
                "tcp",
                "--listen",
                "127.0.0.1",
                "--",
                &script.to_string_lossy(),
            ],
        ));
        ran.expect(126);
        assert!(list_json(&d.socket).is_empty(), "{ran}");
    }
);
