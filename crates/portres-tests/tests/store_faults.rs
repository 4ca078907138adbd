//! Store faults: the state directory fills up, or its file system turns
//! read-only under the running daemon (ext4 `errors=remount-ro` after an
//! error), or is read-only when the daemon starts. In each case persistent
//! changes fail with `store_unavailable` and a message naming the database
//! and the cause, change nothing, runtime reservations keep working, and
//! once the file system is writable again nothing acknowledged is lost.
//!
//! Each test moves its thread into a private mount namespace (and network
//! namespace) so its tmpfs, loop mount and read-only bind mounts are
//! invisible to the machine; the daemon, a child of the thread, shares them.

use std::path::Path;
use std::process::Command;

use portres::{Client, CreateOptions, ErrorCode, Kind, Protocol};
use portres_tests::ProcessDaemon;
use portres_tests::{kernel_reserved, netns, open_tempdir};

/// Moves this thread into a private mount namespace where mounts do not
/// propagate back.
fn private_mounts(test: &str) {
    // SAFETY: unshare(CLONE_NEWNS) gives the calling thread its own mount
    // namespace (and its own copy of the fs_struct: root, cwd, umask). No
    // descriptor table is unshared, so every descriptor stays valid for
    // every thread; other threads keep their mount namespace.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
        .unwrap_or_else(|e| panic!("{test}: unshare(CLONE_NEWNS): {e}"));
    sh(&["mount", "--make-rprivate", "/"]);
}

#[track_caller]
fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn opts(label: &str) -> CreateOptions {
    CreateOptions {
        owner: None,
        label: Some(label.to_string()),
    }
}

/// The persistent blocks the daemon lists, as (protocol, start, count, label).
fn persistent(c: &Client) -> Vec<(Protocol, u16, u16, Option<String>)> {
    c.list(None)
        .unwrap()
        .into_iter()
        .filter(|r| r.kind == Kind::Persistent)
        .map(|r| (r.protocol, r.start, r.count, r.label))
        .collect()
}

/// Runtime reservations still work: acquire, bind TCP and UDP, release.
#[track_caller]
fn runtime_works(c: &Client) {
    let t = c.acquire(Protocol::Tcp, 0, 3).unwrap();
    let l = t.bind_tcp("127.0.0.1".parse().unwrap()).unwrap();
    assert!(t.ports().contains(&l.local_addr().unwrap().port()));
    let u = c.acquire(Protocol::Udp, 0, 2).unwrap();
    let s = u.bind_udp("::1".parse().unwrap()).unwrap();
    assert!(u.ports().contains(&s.local_addr().unwrap().port()));
    assert!(kernel_reserved().contains(t.start()));
    drop((l, s));
    t.release().unwrap();
    u.release().unwrap();
}

#[track_caller]
fn assert_store_error(e: &portres::Error, db: &Path, cause: &str) {
    assert_eq!(e.code, ErrorCode::StoreUnavailable, "{e}");
    assert!(
        e.message.contains(&db.display().to_string()),
        "the message does not name the database: {e}"
    );
    assert!(
        e.message.contains(cause),
        "the message does not say {cause:?}: {e}"
    );
}

named_test!(
    a_full_state_directory_fails_persistent_changes_clearly_and_loses_nothing,
    |test| {
        let Some(_ns) = netns(test) else { return };
        private_mounts(test);
        let dir = open_tempdir();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=192k,mode=0700",
            "tmpfs",
            state.to_str().unwrap(),
        ]);
        let db = state.join("portres.db");
        let d = ProcessDaemon::start(dir.path(), &[]);
        let c = d.client();
        let mut acked = Vec::new();
        for i in 0..5u16 {
            c.create(Protocol::Tcp, 5000 + i, 1, opts(&format!("before {i}")))
                .unwrap();
            acked.push((Protocol::Tcp, 5000 + i, 1, Some(format!("before {i}"))));
        }
        // Fill the file system.
        let filler = state.join("filler");
        let out = Command::new("dd")
            .args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=4k"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "dd should stop at ENOSPC");
        // Persistent changes now fail (after at most a few that still fit in
        // space SQLite had already allocated), each cleanly.
        let label = "x".repeat(250);
        let mut failure = None;
        for i in 0..500u16 {
            match c.create(Protocol::Udp, 6000 + i, 1, opts(&label)) {
                Ok(_) => acked.push((Protocol::Udp, 6000 + i, 1, Some(label.clone()))),
                Err(e) => {
                    failure = Some((6000 + i, e));
                    break;
                }
            }
        }
        let (refused_start, create_err) =
            failure.expect("creates kept succeeding on a full file system");
        assert_store_error(&create_err, &db, "database or disk is full");
        let before = persistent(&c);
        assert_eq!(before, acked, "a refused create changed the list");
        assert!(!kernel_reserved().contains(refused_start));
        let e = c.delete(Protocol::Tcp, 5000, 1).unwrap_err();
        assert_store_error(&e, &db, "full");
        assert_eq!(persistent(&c), acked, "a refused delete changed the list");
        assert!(kernel_reserved().contains(5000));
        // Reads and runtime reservations keep working.
        assert_eq!(
            c.lookup(Protocol::Tcp, 5001, 1).unwrap().label.as_deref(),
            Some("before 1")
        );
        runtime_works(&c);
        let log = d.log_tail(50);
        // Space returns: changes work again without a restart...
        std::fs::remove_file(&filler).unwrap();
        c.create(Protocol::Tcp, 7000, 2, opts("after")).unwrap();
        acked.push((Protocol::Tcp, 7000, 2, Some("after".into())));
        c.delete(Protocol::Tcp, 5000, 1).unwrap();
        acked.remove(0);
        acked.sort_by_key(|r| (r.0.as_str(), r.1));
        // ...and nothing acknowledged is lost across a crash and a restart.
        d.kill9();
        let d = ProcessDaemon::start(dir.path(), &[]);
        let c = d.client();
        assert_eq!(persistent(&c), acked);
        eprintln!(
            "{test}: {} persistent reservations acknowledged, create #{} refused: {}\nlog: {}",
            acked.len(),
            refused_start - 6000 + 1,
            create_err.message,
            log.lines().last().unwrap_or("")
        );
        d.terminate();
        sh(&["umount", state.to_str().unwrap()]);
    }
);

nstest!(
    a_state_file_system_turning_read_only_under_the_daemon_fails_changes_and_keeps_serving,
    |test| {
        private_mounts(test);
        let dir = open_tempdir();
        let img = dir.path().join("state.img");
        let mnt = dir.path().join("fs");
        std::fs::create_dir(&mnt).unwrap();
        sh(&["truncate", "-s", "16M", img.to_str().unwrap()]);
        sh(&["mkfs.ext4", "-q", "-F", img.to_str().unwrap()]);
        let mount = || {
            sh(&[
                "mount",
                "-o",
                "loop,errors=remount-ro",
                img.to_str().unwrap(),
                mnt.to_str().unwrap(),
            ])
        };
        mount();
        // The daemon's state directory lives on the ext4 file system.
        std::os::unix::fs::symlink(&mnt, dir.path().join("state")).unwrap();
        let db = dir.path().join("state").join("portres.db");
        let d = ProcessDaemon::start(dir.path(), &[]);
        let c = d.client();
        c.create(Protocol::Tcp, 5000, 1, opts("a")).unwrap();
        c.create(Protocol::Udp, 5353, 2, opts("b")).unwrap();
        let acked = persistent(&c);
        // An ext4 error: the kernel turns the file system read-only at once.
        let dev = sh(&["findmnt", "-n", "-o", "SOURCE", mnt.to_str().unwrap()]);
        let dev = Path::new(dev.trim())
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        std::fs::write(
            format!("/sys/fs/ext4/{dev}/trigger_fs_error"),
            "portres test\n",
        )
        .unwrap();
        assert!(
            std::fs::write(mnt.join("probe"), "x").is_err(),
            "the file system is still writable"
        );
        let e = c.create(Protocol::Tcp, 6000, 1, opts("c")).unwrap_err();
        assert_store_error(&e, &db, "recording tcp 6000");
        let e2 = c.delete(Protocol::Tcp, 5000, 1).unwrap_err();
        assert_store_error(&e2, &db, "deleting tcp 5000");
        assert_eq!(persistent(&c), acked, "a refused change changed the list");
        assert!(!kernel_reserved().contains(6000));
        assert!(kernel_reserved().contains(5000));
        runtime_works(&c);
        // Recovery: stop, repair, mount again: everything acknowledged is there.
        d.terminate();
        sh(&["umount", mnt.to_str().unwrap()]);
        let fsck = Command::new("e2fsck")
            .args(["-fy", img.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            fsck.status.code().is_some_and(|c| c <= 1),
            "e2fsck: {fsck:?}"
        );
        mount();
        let d = ProcessDaemon::start(dir.path(), &[]);
        let c = d.client();
        assert_eq!(persistent(&c), acked);
        c.create(Protocol::Tcp, 6000, 1, opts("c")).unwrap();
        eprintln!(
            "{test}: after the ext4 error: create -> {}; delete -> {}",
            e.message, e2.message
        );
        d.terminate();
        sh(&["umount", mnt.to_str().unwrap()]);
    }
);

named_test!(
    a_read_only_state_directory_at_start_still_restores_and_serves,
    |test| {
        let Some(_ns) = netns(test) else { return };
        private_mounts(test);
        let dir = open_tempdir();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let state_s = state.to_str().unwrap().to_string();
        sh(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "size=1m,mode=0700",
            "tmpfs",
            &state_s,
        ]);
        let db = state.join("portres.db");
        for (how, crash) in [("after a clean stop", false), ("after a crash", true)] {
            let d = ProcessDaemon::start(dir.path(), &[]);
            let c = d.client();
            let start = if crash { 5100 } else { 5000 };
            c.create(Protocol::Tcp, start, 3, opts(how)).unwrap();
            let acked = persistent(&c);
            if crash {
                d.kill9();
            } else {
                d.terminate();
            }
            // The next start finds the state directory read-only (say, the
            // file system came up read-only after a reboot).
            sh(&["mount", "--bind", &state_s, &state_s]);
            sh(&["mount", "-o", "remount,ro,bind", &state_s]);
            std::fs::write("/proc/sys/net/ipv4/ip_local_reserved_ports", "\n").unwrap();
            let mut child = portres_tests::daemon_command(dir.path(), &[])
                .spawn()
                .unwrap();
            let started = portres_tests::eventually(|| {
                std::os::unix::net::UnixStream::connect(dir.path().join("portres.sock")).is_ok()
                    || child.try_wait().unwrap().is_some()
            }) && child.try_wait().unwrap().is_none();
            assert!(
                started,
                "{how}: portresd does not start on a read-only state directory, so nothing \
             restores the persistent reservations into the kernel; log:\n{}",
                portres_tests::log_tail(&dir.path().join("portresd.log"), 5)
            );
            let d = ProcessDaemon::adopt(child, dir.path());
            let c = d.client();
            assert_eq!(persistent(&c), acked, "{how}: not restored");
            let kernel = kernel_reserved();
            assert!(
                kernel.contains(start) && kernel.contains(start + 2),
                "{how}: kernel {kernel}"
            );
            let e = c.create(Protocol::Tcp, 6000, 1, opts("no")).unwrap_err();
            assert_store_error(&e, &db, "readonly");
            assert_eq!(persistent(&c), acked);
            runtime_works(&c);
            // Writable again: changes work without a restart.
            sh(&["mount", "-o", "remount,rw,bind", &state_s]);
            c.create(Protocol::Udp, start, 1, opts("again")).unwrap();
            c.delete(Protocol::Udp, start, 1).unwrap();
            eprintln!(
                "{test}: {how}: started read-only, restored {acked:?}; create -> {}",
                e.message
            );
            d.terminate();
            sh(&["umount", &state_s]);
            // Start over for the next round.
            let d = ProcessDaemon::start(dir.path(), &[]);
            let c = d.client();
            c.delete(Protocol::Tcp, start, 3).unwrap();
            d.terminate();
        }
        sh(&["umount", &state_s]);
    }
);
