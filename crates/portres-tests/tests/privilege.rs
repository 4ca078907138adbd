//! Privilege: the files a security reviewer looks at have the modes and
//! owners docs/reliability.md promises (system mode and user mode), the
//! daemon takes identity only from the kernel (a client's claimed uid, pid
//! or admin flag change nothing), and tokens are unpredictable 64-bit
//! values from the OS random source.

use std::collections::HashSet;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use portres::{Client, CreateOptions, Protocol};
use portres_tests::{as_user, cli, open_tempdir, run};
use serde_json::Value;

const NOBODY: u32 = 65534;

/// (file type, mode, uid, gid) of `path`.
fn stat(path: &Path) -> (&'static str, u32, u32, u32) {
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let t = m.file_type();
    let kind = if t.is_dir() {
        "dir"
    } else if t.is_socket() {
        "socket"
    } else if t.is_file() {
        "file"
    } else {
        "other"
    };
    (kind, m.mode() & 0o7777, m.uid(), m.gid())
}

fn wait_for_socket(socket: &Path, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(socket).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "portresd exited at start"
        );
        assert!(Instant::now() < deadline, "portresd did not become ready");
        std::thread::sleep(Duration::from_millis(5));
    }
}

nstest!(
    system_mode_socket_state_directory_and_database_have_the_documented_modes,
    |_| {
        let dir = open_tempdir();
        let run_dir = dir.path().join("run/portres");
        let state = dir.path().join("lib/portres");
        let socket = run_dir.join("portres.sock");
        // Like systemd's RuntimeDirectory=: portresd creates no directory for
        // a --socket outside its defaults.
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::set_permissions(
            &run_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        let mut child = Command::new(portres_tests::bin("portresd"))
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state)
            .args(["--kernel-sync", "on"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for_socket(&socket, &mut child);
        let c = Client::connect_to(&socket).unwrap();
        c.create(Protocol::Tcp, 8080, 1, CreateOptions::default())
            .unwrap();
        let db = state.join("portres.db");
        let expect = [
            (run_dir.clone(), ("dir", 0o755)),
            (socket.clone(), ("socket", 0o666)),
            (state.clone(), ("dir", 0o700)),
            (db.clone(), ("file", 0o600)),
            (state.join("portres.db-wal"), ("file", 0o600)),
            (state.join("portres.db-shm"), ("file", 0o600)),
        ];
        let mut report = Vec::new();
        for (path, (kind, mode)) in &expect {
            let got = stat(path);
            assert_eq!(
                got,
                (*kind, *mode, 0, 0),
                "{}: (type, mode, uid, gid)",
                path.display()
            );
            report.push(format!("{} {mode:04o} root:root {}", kind, path.display()));
        }
        // Nothing else in the state directory.
        let mut names: Vec<String> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "portres.db",
                "portres.db-shm",
                "portres.db-wal",
                "portres.lock"
            ]
        );
        assert_eq!(stat(&state.join("portres.lock")), ("file", 0o600, 0, 0));
        // Nothing but the socket in its directory (the private directory the
        // socket was bound in is gone).
        let names: Vec<String> = std::fs::read_dir(&run_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["portres.sock"]);
        // Any user may connect (requests are judged by peer credentials)...
        let mut status = cli(&socket);
        status.args(["--json", "status"]);
        let (out, stdout, stderr) = run(as_user(&status, NOBODY, NOBODY, &[]));
        assert!(out.status.success(), "{stderr}");
        let v: Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["you_are_admin"], false, "{stdout}");
        // ...but cannot read or write the database.
        let mut cat = Command::new("cat");
        cat.arg(&db);
        let (out, _, stderr) = run(as_user(&cat, NOBODY, NOBODY, &[]));
        assert!(!out.status.success(), "nobody read the database");
        assert!(stderr.contains("Permission denied"), "{stderr}");
        let _ = child.kill();
        let _ = child.wait();
        eprintln!("system mode:\n{}", report.join("\n"));
    }
);

nstest!(user_mode_socket_and_state_are_private_to_the_user, |_| {
    let dir = open_tempdir();
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    let run_dir = home.join("run");
    let state = home.join("state");
    let socket = run_dir.join("portres.sock");
    std::fs::create_dir(&run_dir).unwrap();
    std::fs::set_permissions(
        &run_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    std::os::unix::fs::chown(&run_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    let mut daemon = Command::new(portres_tests::bin("portresd"));
    daemon
        .arg("--socket")
        .arg(&socket)
        .arg("--state-dir")
        .arg(&state)
        .args(["--kernel-sync", "off"]);
    let mut daemon = as_user(&daemon, NOBODY, NOBODY, &[]);
    let mut child = daemon.stderr(std::process::Stdio::null()).spawn().unwrap();
    wait_for_socket(&socket, &mut child);
    // Its user is its administrator.
    let mut create = cli(&socket);
    create.args(["create", "tcp", "9000", "1"]);
    let (out, _, stderr) = run(as_user(&create, NOBODY, NOBODY, &[]));
    assert!(out.status.success(), "{stderr}");
    let mut report = Vec::new();
    for (path, kind, mode) in [
        (&run_dir, "dir", 0o700),
        (&socket, "socket", 0o600),
        (&state, "dir", 0o700),
        (&state.join("portres.db"), "file", 0o600),
    ] {
        assert_eq!(
            stat(path),
            (kind, mode, NOBODY, NOBODY),
            "{}",
            path.display()
        );
        report.push(format!("{kind} {mode:04o} nobody {}", path.display()));
    }
    // Another user cannot even connect.
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut status = cli(&socket);
    status.arg("status");
    let (out, _, stderr) = run(as_user(&status, 65533, 65533, &[]));
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
    let _ = child.kill();
    let _ = child.wait();
    eprintln!("user mode:\n{}", report.join("\n"));
});

nstest!(
    identity_comes_from_the_kernel_not_from_what_the_client_says,
    |_| {
        let d = portres_tests::InProcessDaemon::start(|_| {});
        // A client claiming to be root, pid 1 and admin, in every field it can.
        let py = "import json,os,socket,sys\n\
              s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1])\n\
              def call(m,p):\n\
              \x20 s.sendall(json.dumps({'method':m,'parameters':p,'uid':0,'pid':1}).encode()+b'\\0');b=b''\n\
              \x20 while not b.endswith(b'\\0'): b+=s.recv(65536)\n\
              \x20 return json.loads(b[:-1])\n\
              print(os.getpid())\n\
              claims={'uid':0,'pid':1,'gid':0,'groups':[0],'admin':True,'holder':{'uid':0,'pid':1},'owner':{'kind':'user','id':0}}\n\
              print(json.dumps(call('io.portres.Acquire',dict(claims,protocol='tcp',count=1))))\n\
              print(json.dumps(call('io.portres.Create',dict(claims,protocol='tcp',start=5000,count=1))))\n\
              print(json.dumps(call('io.portres.Acquire',dict(claims,protocol='tcp',start=80,count=1))))\n\
              print(json.dumps(call('io.portres.Status',claims)))\n";
        let mut c = Command::new("/usr/bin/python3");
        c.arg("-c").arg(py).arg(&d.socket);
        let (out, stdout, stderr) = run(as_user(&c, NOBODY, NOBODY, &[]));
        assert!(out.status.success(), "{stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        let pid: i64 = lines[0].parse().unwrap();
        let v: Vec<Value> = lines[1..]
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let holder = &v[0]["parameters"]["reservation"]["holder"];
        assert_eq!(holder["uid"], NOBODY, "{stdout}");
        assert_eq!(holder["pid"], pid, "{stdout}");
        assert_eq!(v[1]["parameters"]["code"], "access_denied", "{stdout}");
        assert_eq!(v[2]["parameters"]["code"], "access_denied", "{stdout}");
        assert_eq!(v[3]["parameters"]["your_uid"], NOBODY, "{stdout}");
        assert_eq!(v[3]["parameters"]["you_are_admin"], false, "{stdout}");
        // Nothing was created.
        assert!(
            d.client()
                .list(None)
                .unwrap()
                .iter()
                .all(|r| r.kind == portres::Kind::Runtime)
        );
    }
);

nstest!(tokens_are_unpredictable_64_bit_values, |_| {
    let d = portres_tests::InProcessDaemon::start(|_| {});
    let c = d.client();
    let mut tokens = Vec::new();
    for _ in 0..2000 {
        let r = c.acquire(Protocol::Udp, 0, 1).unwrap();
        tokens.push(r.token().get());
        r.release().unwrap();
    }
    // A second daemon draws different tokens (without kernel sync: one
    // daemon per network namespace keeps the kernel's list).
    let d2 = portres_tests::InProcessDaemon::start(|c| {
        c.kernel_sync = portres_daemon::KernelSync::Off;
    });
    let other = d2.client().acquire(Protocol::Udp, 0, 1).unwrap();
    tokens.push(other.token().get());
    let distinct: HashSet<u64> = tokens.iter().copied().collect();
    assert_eq!(distinct.len(), tokens.len(), "a token repeated");
    // Not a counter: successive differences are all different too.
    let diffs: HashSet<u64> = tokens.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    assert!(diffs.len() > tokens.len() - 5, "tokens follow a pattern");
    // Every bit is a coin flip: set in 40-60 % of 2001 tokens (a fair bit
    // strays that far with probability ~1e-18).
    let n = tokens.len() as f64;
    let mut worst: f64 = 0.5;
    for bit in 0..64 {
        let ones = tokens.iter().filter(|t| *t >> bit & 1 == 1).count() as f64;
        let share = ones / n;
        assert!(
            (0.40..=0.60).contains(&share),
            "bit {bit} set in {share:.3} of tokens"
        );
        if (share - 0.5).abs() > (worst - 0.5).abs() {
            worst = share;
        }
    }
    eprintln!(
        "{} tokens: all distinct, no repeated step, every bit set in 40-60 % (worst {worst:.3})",
        tokens.len()
    );
});
