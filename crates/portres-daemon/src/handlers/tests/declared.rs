//! Declared reservations (portres.d): created, updated and deleted by a
//! reload as the files say, with sysctl.d's precedence and masking; bad
//! lines and conflicts reported and retried, never half-applied; a file
//! with problems never deletes; `Delete` refuses them, naming the file.

use std::fs;
use std::path::PathBuf;

use portres_core::{ErrorCode, Kind, Owner, Protocol};
use portres_proto::{ReloadReply, ReservationInfo};

use super::{Harness, unit};
use crate::declared;
use crate::state::lock;

/// A harness whose daemon runs as whoever runs the tests (so the files
/// the test writes are the daemon's own).
fn harness() -> Harness {
    Harness::with("", |c| c.daemon_uid = rustix::process::geteuid().as_raw())
}

impl Harness {
    /// `lib.d` (lowest precedence) or `etc.d`.
    fn conf_dir(&self, which: &str) -> PathBuf {
        let d = self.dir.path().join(which);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn write_conf(&self, which: &str, name: &str, text: &str) -> String {
        let path = self.conf_dir(which).join(name);
        fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn reload(&self) -> ReloadReply {
        declared::reload(&self.state, "test")
    }

    /// The declared reservations, as `List` shows them.
    fn declared_list(&self) -> Vec<ReservationInfo> {
        let root = self.root();
        self.list(root)
            .into_iter()
            .filter(|r| r.source.is_some())
            .collect()
    }
}

fn summary(r: &ReservationInfo) -> (Protocol, u16, u16, String, Option<String>) {
    (
        r.protocol,
        r.start,
        r.count,
        r.source.clone().unwrap_or_default(),
        r.label.clone(),
    )
}

#[test]
fn declared_lines_become_persistent_reservations_with_their_file_in_store_and_kernel() {
    let h = harness();
    let file = h.write_conf(
        "etc.d",
        "50-web.conf",
        "# web\ntcp 8080 owner=0 label=web front end\nboth 5000-5001\n",
    );
    let r = h.reload();
    assert_eq!((r.created, r.updated, r.deleted), (3, 0, 0), "{r:?}");
    assert_eq!(r.declared, 3);
    assert_eq!(r.files, vec![file.clone()]);
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    let list = h.declared_list();
    assert_eq!(
        list.iter().map(summary).collect::<Vec<_>>(),
        vec![
            (Protocol::Tcp, 5000, 2, file.clone(), None),
            (
                Protocol::Tcp,
                8080,
                1,
                file.clone(),
                Some("web front end".into())
            ),
            (Protocol::Udp, 5000, 2, file.clone(), None),
        ]
    );
    assert!(list.iter().all(|r| r.kind == Kind::Persistent));
    assert_eq!(list[1].owner, Some(Owner::User(0).into()));
    let snapshot = h.snapshot();
    assert_eq!(snapshot.store.len(), 3, "durable before the answer");
    assert!(
        snapshot
            .store
            .iter()
            .all(|row| row.source.as_deref() == Some(file.as_str()))
    );
    assert_eq!(snapshot.kernel.to_string(), "5000-5001,8080");
    // A second reload with nothing changed changes nothing.
    let before = h.snapshot();
    let r = h.reload();
    assert_eq!((r.created, r.updated, r.deleted, r.declared), (0, 0, 0, 3));
    assert_eq!(h.snapshot(), before);
}

#[test]
fn a_later_directory_overrides_a_name_and_a_dev_null_symlink_masks_it() {
    let h = harness();
    h.write_conf("lib.d", "10-vendor.conf", "tcp 8000\n");
    let admin = h.write_conf("etc.d", "10-vendor.conf", "tcp 8001\n");
    h.write_conf("lib.d", "20-masked.conf", "tcp 8002\n");
    std::os::unix::fs::symlink("/dev/null", h.conf_dir("etc.d").join("20-masked.conf")).unwrap();
    let lib_only = h.write_conf("lib.d", "30-lib.conf", "tcp 8003\n");
    h.write_conf("etc.d", "ignored.txt", "tcp 8004\n");
    let r = h.reload();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.files, vec![admin.clone(), lib_only.clone()]);
    let got: Vec<_> = h.declared_list().iter().map(summary).collect();
    assert_eq!(
        got,
        vec![
            (Protocol::Tcp, 8001, 1, admin, None),
            (Protocol::Tcp, 8003, 1, lib_only, None),
        ]
    );
    // Unmasking brings the vendor's file back.
    fs::remove_file(h.conf_dir("etc.d").join("20-masked.conf")).unwrap();
    let r = h.reload();
    assert_eq!((r.created, r.deleted), (1, 0));
    assert!(h.declared_list().iter().any(|r| r.start == 8002));
}

#[test]
fn a_reload_updates_changed_lines_and_deletes_removed_ones_durably() {
    let h = harness();
    let a = h.write_conf("etc.d", "a.conf", "tcp 8080 label=old\ntcp 9000-9009\n");
    h.reload();
    // Owner and label change; 9000-9009 becomes 9000-9004; a line goes to
    // another file (its source changes).
    h.write_conf(
        "etc.d",
        "a.conf",
        "tcp 8080 owner=@1500 label=new\ntcp 9000-9004\n",
    );
    let b = h.write_conf("etc.d", "b.conf", "udp 7000\n");
    let r = h.reload();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!((r.created, r.updated, r.deleted), (2, 1, 1), "{r:?}");
    let list = h.declared_list();
    assert_eq!(
        list.iter().map(summary).collect::<Vec<_>>(),
        vec![
            (Protocol::Tcp, 8080, 1, a.clone(), Some("new".into())),
            (Protocol::Tcp, 9000, 5, a.clone(), None),
            (Protocol::Udp, 7000, 1, b.clone(), None),
        ]
    );
    assert_eq!(list[0].owner, Some(Owner::Group(1500).into()));
    let store = h.snapshot().store;
    assert_eq!(store.len(), 3);
    assert_eq!(store[0].owner, Some(Owner::Group(1500)));
    assert_eq!(store[0].label.as_deref(), Some("new"));
    // Moving a line to another file changes its source only.
    h.write_conf("etc.d", "a.conf", "tcp 9000-9004\n");
    h.write_conf(
        "etc.d",
        "b.conf",
        "udp 7000\ntcp 8080 owner=@1500 label=new\n",
    );
    let r = h.reload();
    assert_eq!((r.created, r.updated, r.deleted), (0, 1, 0), "{r:?}");
    assert_eq!(h.snapshot().store[0].source.as_deref(), Some(b.as_str()));
    // Every file gone: every declared reservation goes, API ones stay.
    h.persistent(20000, 1, None);
    fs::remove_file(h.conf_dir("etc.d").join("a.conf")).unwrap();
    fs::remove_file(h.conf_dir("etc.d").join("b.conf")).unwrap();
    let r = h.reload();
    assert_eq!((r.deleted, r.declared), (3, 0));
    h.settle();
    let snapshot = h.snapshot();
    assert_eq!(snapshot.store.len(), 1);
    assert_eq!(snapshot.store[0].source, None);
    assert_eq!(snapshot.kernel.to_string(), "20000");
}

#[test]
fn bad_lines_are_reported_by_file_and_line_and_never_delete() {
    let h = harness();
    let f = h.write_conf("etc.d", "a.conf", "tcp 8080\ntcp 8081\n");
    h.reload();
    // 8081's line breaks, an owner is unknown: the good lines apply, and
    // 8081 stays (the file has problems), reported as kept.
    h.write_conf(
        "etc.d",
        "a.conf",
        "tcp 8080\ntcp 8081 colour=red\nudp 53 owner=no-such-user-here\ntcp 8082\n",
    );
    let r = h.reload();
    let problems: Vec<_> = r
        .problems
        .iter()
        .map(|p| (p.file.as_str(), p.line, p.kind.as_str()))
        .collect();
    assert_eq!(
        problems,
        vec![
            (f.as_str(), Some(2), "bad_line"),
            (f.as_str(), Some(3), "bad_line"),
            (f.as_str(), None, "kept"),
        ],
        "{:?}",
        r.problems
    );
    assert!(r.problems[1].message.contains("no-such-user-here"));
    assert!(r.problems[2].message.contains("tcp 8081"));
    let ports: Vec<u16> = h.declared_list().iter().map(|r| r.start).collect();
    assert_eq!(ports, vec![8080, 8081, 8082]);
    // Status shows them until the next reload.
    let root = h.root();
    let status = lock(&h.state).status(root).unwrap();
    assert_eq!(status.declared_problems, r.problems);
    assert_eq!(status.config_dirs.len(), 2);
    // Fixed: the clean file deletes what it no longer declares.
    h.write_conf("etc.d", "a.conf", "tcp 8080\ntcp 8082\n");
    let r = h.reload();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!(r.deleted, 1);
    assert!(
        lock(&h.state)
            .status(root)
            .unwrap()
            .declared_problems
            .is_empty()
    );
}

#[test]
fn an_unreadable_file_keeps_its_reservations() {
    let h = harness();
    let f = h.write_conf("etc.d", "a.conf", "tcp 8080\n");
    h.reload();
    // A directory where the file was cannot be read as one.
    fs::remove_file(&f).unwrap();
    fs::create_dir(&f).unwrap();
    let r = h.reload();
    let kinds: Vec<_> = r.problems.iter().map(|p| p.kind.as_str()).collect();
    assert_eq!(kinds, vec!["unreadable", "kept"], "{:?}", r.problems);
    assert_eq!(h.declared_list().len(), 1);
}

#[test]
fn overlapping_lines_and_conflicts_are_reported_and_retried_at_the_next_reload() {
    let h = harness();
    let root = h.root();
    let runtime = h.acquire_token(root, 9000, 1);
    h.persistent(9100, 1, None);
    h.kernel.hold(Protocol::Tcp, 9203);
    let a = h.write_conf("etc.d", "a.conf", "tcp 8000-8009\n");
    let b = h.write_conf(
        "etc.d",
        "b.conf",
        "tcp 8005\ntcp 9000\ntcp 9100\ntcp 9200-9205\ntcp 9300\n",
    );
    let r = h.reload();
    let got: Vec<_> = r
        .problems
        .iter()
        .map(|p| (p.file.as_str(), p.line, p.kind.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (b.as_str(), Some(1), "conflict"),
            (b.as_str(), Some(2), "conflict"),
            (b.as_str(), Some(3), "conflict"),
            (b.as_str(), Some(4), "conflict"),
        ],
        "{:?}",
        r.problems
    );
    assert!(
        r.problems[0].message.contains(&format!("{a}:1")),
        "{:?}",
        r.problems[0]
    );
    assert!(
        r.problems[1].message.contains("held by uid 0"),
        "{:?}",
        r.problems[1]
    );
    assert!(
        r.problems[2].message.contains("portres create"),
        "{:?}",
        r.problems[2]
    );
    assert!(
        r.problems[3].message.contains("9203 is in use"),
        "{:?}",
        r.problems[3]
    );
    assert_eq!(r.created, 2);
    // Nothing half-done: neither the store nor the table has the refused
    // ones, and the API reservation is untouched.
    let snapshot = h.snapshot();
    let stored: Vec<(u16, bool)> = snapshot
        .store
        .iter()
        .map(|r| (r.block.start(), r.source.is_some()))
        .collect();
    assert_eq!(stored, vec![(8000, true), (9100, false), (9300, true)]);
    // The runtime holder lets go and the port is free again: retried.
    h.release(root, runtime).unwrap();
    h.kernel.state().busy.clear();
    let r = h.reload();
    assert_eq!(r.created, 2, "{:?}", r.problems);
    let kinds: Vec<_> = r.problems.iter().map(|p| p.line).collect();
    assert_eq!(kinds, vec![Some(1), Some(3)], "{:?}", r.problems);
    let ports: Vec<u16> = h.declared_list().iter().map(|r| r.start).collect();
    assert_eq!(ports, vec![8000, 9000, 9200, 9300]);
}

#[test]
fn delete_of_a_declared_reservation_is_refused_naming_the_file_and_changes_nothing() {
    let h = harness();
    let f = h.write_conf("etc.d", "a.conf", "tcp 8080\n");
    h.reload();
    let root = h.root();
    let err = h.refused(ErrorCode::AccessDenied, || h.delete(root, 8080, 1));
    assert!(err.message.contains(&f), "{err}");
    assert!(err.message.contains("portres reload"), "{err}");
    // An API-made one beside it is deleted as ever.
    h.persistent(8081, 1, None);
    h.delete(root, 8081, 1).unwrap();
}

#[test]
fn reload_is_for_administrators() {
    let h = harness();
    h.write_conf("etc.d", "a.conf", "tcp 8080\n");
    for session in [h.stranger(), h.owner_user()] {
        let err = h.refused(ErrorCode::AccessDenied, || {
            unit(lock(&h.state).check_reload(session))
        });
        assert!(err.message.contains("administrators"), "{err}");
    }
    let admin = h.admin_member();
    assert!(lock(&h.state).check_reload(admin).is_ok());
}

#[test]
fn files_others_may_write_are_ignored() {
    use std::os::unix::fs::PermissionsExt;
    let h = harness();
    let f = h.write_conf("etc.d", "a.conf", "tcp 8080\n");
    fs::set_permissions(&f, fs::Permissions::from_mode(0o666)).unwrap();
    let r = h.reload();
    assert_eq!(r.created, 0);
    assert_eq!(r.problems[0].kind, "unreadable");
    assert!(r.problems[0].message.contains("writable by everyone"));
}

#[test]
fn a_fifo_named_conf_is_ignored_without_hanging_the_reload() {
    let h = harness();
    let fifo = h.conf_dir("etc.d").join("a.conf");
    rustix::fs::mknodat(
        rustix::fs::CWD,
        &fifo,
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    h.write_conf("etc.d", "b.conf", "tcp 8080\n");
    let r = h.reload();
    assert_eq!(r.created, 1);
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert!(
        r.problems[0].message.contains("not a regular file"),
        "{:?}",
        r.problems
    );
}

#[test]
fn status_shows_a_problems_quoted_text_to_administrators_only() {
    // A name in portres.d that leads (a symlink in a directory someone else
    // could write) to a file only root may read: it passes the owner check,
    // and a bad line's message quotes its first word. Anyone may ask for
    // `Status`; only an administrator may see what the file says.
    let h = harness();
    let file = h.write_conf(
        "etc.d",
        "50-secret.conf",
        "root:$6$SECRETSALT$SECRETHASH:19000:0:99999:7:::\n",
    );
    let r = h.reload();
    assert!(r.problems[0].message.contains("SECRETHASH"), "{r:?}");
    let stranger = h.stranger();
    let status = lock(&h.state).status(stranger).unwrap();
    let p = &status.declared_problems[0];
    assert_eq!(
        (p.file.as_str(), p.line, p.kind.as_str()),
        (file.as_str(), Some(1), "bad_line")
    );
    assert!(!p.message.contains("SECRET"), "{p:?}");
    let root = h.root();
    let status = lock(&h.state).status(root).unwrap();
    assert!(
        status.declared_problems[0].message.contains("SECRETHASH"),
        "{status:?}"
    );
}

#[test]
fn a_declared_block_over_the_baseline_never_takes_the_baseline_out_of_the_kernel() {
    // The admin's own reserved ports (the baseline) are in the kernel's
    // list whatever portres reserves: a declared block inside them, once
    // deleted, leaves them there.
    let h = Harness::with("8080-8090", |c| {
        c.daemon_uid = rustix::process::geteuid().as_raw()
    });
    h.write_conf("etc.d", "a.conf", "tcp 8085-8095\n");
    let r = h.reload();
    assert_eq!(r.created, 1, "{r:?}");
    assert_eq!(h.kernel.reserved().to_string(), "8080-8095");
    h.write_conf("etc.d", "a.conf", "");
    let r = h.reload();
    assert_eq!(r.deleted, 1, "{r:?}");
    h.settle();
    assert_eq!(h.kernel.reserved().to_string(), "8080-8090");
}
