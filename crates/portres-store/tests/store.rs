//! Behaviour of the store through its public API, on real files in temporary
//! directories: round trips, durability across reopen, duplicates, the
//! baseline, file modes, damaged and unexpected files, a full and a read-only
//! file system, and a model-based property test.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use portres_core::{Block, ErrorCode, Owner, PortSet, Protocol};
use portres_store::{Store, StoreError, StoredReservation};
use proptest::prelude::*;
use tempfile::TempDir;

fn res(protocol: Protocol, start: u32, count: u32) -> StoredReservation {
    StoredReservation {
        protocol,
        block: Block::new(start, count).unwrap(),
        owner: None,
        label: None,
        created_by: 0,
        created_at: 1_700_000_000,
        source: None,
    }
}

fn state_dir() -> (TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    (tmp, dir)
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

fn raw(dir: &Path) -> rusqlite::Connection {
    rusqlite::Connection::open(dir.join(Store::FILE_NAME)).unwrap()
}

fn samples() -> Vec<StoredReservation> {
    vec![
        StoredReservation {
            owner: Some(Owner::User(1000)),
            label: Some("web frontends — ünïcode".into()),
            created_by: 4_294_967_295,
            created_at: -5,
            ..res(Protocol::Udp, 53, 1)
        },
        res(Protocol::Tcp, 65535, 1),
        StoredReservation {
            owner: Some(Owner::Group(4_000_000_000)),
            label: Some(String::new()),
            source: Some("/etc/portres.d/10-ünï.conf".into()),
            ..res(Protocol::Tcp, 1, 1024)
        },
        res(Protocol::Udp, 1, 65535),
        res(Protocol::Tcp, 5000, 10),
    ]
}

fn sorted(mut v: Vec<StoredReservation>) -> Vec<StoredReservation> {
    v.sort_by_key(|r| (r.protocol, r.block.start()));
    v
}

#[test]
fn insert_load_delete_round_trip() {
    let (_tmp, dir) = state_dir();
    let mut store = Store::open(&dir).unwrap();
    assert_eq!(store.path(), dir.join("portres.db"));
    assert_eq!(store.load().unwrap(), vec![]);
    for r in samples() {
        store.insert(&r).unwrap();
    }
    let loaded = store.load().unwrap();
    assert_eq!(loaded, sorted(samples()));
    assert_eq!(loaded[0].block, Block::new(1, 1024).unwrap()); // tcp first, by start
    assert_eq!(loaded[4].block, Block::new(53, 1).unwrap());

    assert!(
        store
            .delete(Protocol::Tcp, Block::new(5000, 10).unwrap())
            .unwrap()
    );
    assert!(
        store
            .delete(Protocol::Udp, Block::new(1, 65535).unwrap())
            .unwrap()
    );
    let expect: Vec<_> = sorted(samples())
        .into_iter()
        .filter(|r| r.block.start() != 5000 && r.block.count() != 65535)
        .collect();
    assert_eq!(store.load().unwrap(), expect);
}

#[test]
fn rows_survive_drop_and_reopen() {
    let (_tmp, dir) = state_dir();
    {
        let mut store = Store::open(&dir).unwrap();
        for r in samples() {
            store.insert(&r).unwrap();
        }
        assert!(
            store
                .delete(Protocol::Tcp, Block::new(65535, 1).unwrap())
                .unwrap()
        );
    }
    let expect: Vec<_> = sorted(samples())
        .into_iter()
        .filter(|r| r.block.start() != 65535)
        .collect();
    let store = Store::open(&dir).unwrap();
    assert_eq!(store.load().unwrap(), expect);
    drop(store);
    // The file is a WAL-mode database at schema version 1.
    let conn = raw(&dir);
    let journal: String = conn
        .pragma_query_value(None, "journal_mode", |r| r.get(0))
        .unwrap();
    assert_eq!(journal, "wal");
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, portres_store::schema::SCHEMA_VERSION);
}

#[test]
fn delete_of_a_missing_block_returns_false() {
    let (_tmp, dir) = state_dir();
    let mut store = Store::open(&dir).unwrap();
    let b = Block::new(5000, 10).unwrap();
    assert!(!store.delete(Protocol::Tcp, b).unwrap());
    store.insert(&res(Protocol::Tcp, 5000, 10)).unwrap();
    // Only the exact block of the exact protocol matches.
    assert!(!store.delete(Protocol::Udp, b).unwrap());
    assert!(
        !store
            .delete(Protocol::Tcp, Block::new(5000, 9).unwrap())
            .unwrap()
    );
    assert!(
        !store
            .delete(Protocol::Tcp, Block::new(5001, 9).unwrap())
            .unwrap()
    );
    assert_eq!(store.load().unwrap().len(), 1);
    assert!(store.delete(Protocol::Tcp, b).unwrap());
    assert!(!store.delete(Protocol::Tcp, b).unwrap());
    assert_eq!(store.load().unwrap(), vec![]);
}

#[test]
fn duplicate_insert_errors_and_changes_nothing() {
    let (_tmp, dir) = state_dir();
    let mut store = Store::open(&dir).unwrap();
    let first = StoredReservation {
        label: Some("first".into()),
        ..res(Protocol::Tcp, 8000, 5)
    };
    store.insert(&first).unwrap();
    let clash = StoredReservation {
        label: Some("second".into()),
        owner: Some(Owner::User(7)),
        ..res(Protocol::Tcp, 8000, 2)
    };
    let err = store.insert(&clash).unwrap_err();
    assert!(err.is_duplicate(), "{err}");
    let text = err.message();
    assert!(
        text.contains(&dir.join("portres.db").display().to_string()),
        "{text}"
    );
    assert!(
        text.contains("tcp 8000-8001") && text.contains("already stored"),
        "{text}"
    );
    assert_eq!(store.load().unwrap(), vec![first.clone()]);
    // The same start in the other protocol is another row.
    store.insert(&res(Protocol::Udp, 8000, 2)).unwrap();
    assert_eq!(store.load().unwrap().len(), 2);
    let core: portres_core::Error = err.into();
    assert_eq!(core.code, ErrorCode::StoreUnavailable);
}

#[test]
fn baseline_set_get_replace_and_reopen() {
    let (_tmp, dir) = state_dir();
    let mut store = Store::open(&dir).unwrap();
    assert_eq!(store.baseline().unwrap(), None);
    let first: PortSet = "1,5-7,65535".parse().unwrap();
    store.set_baseline(&first).unwrap();
    assert_eq!(store.baseline().unwrap(), Some(first));
    let second: PortSet = "8080".parse().unwrap();
    store.set_baseline(&second).unwrap();
    assert_eq!(store.baseline().unwrap(), Some(second.clone()));
    drop(store);
    let mut store = Store::open(&dir).unwrap();
    assert_eq!(store.baseline().unwrap(), Some(second));
    // An empty baseline is recorded, and differs from none.
    store.set_baseline(&PortSet::new()).unwrap();
    assert_eq!(store.baseline().unwrap(), Some(PortSet::new()));
    assert_eq!(store.load().unwrap(), vec![]);
}

#[test]
fn created_files_have_private_modes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("var/lib/portres");
    let mut store = Store::open(&dir).unwrap();
    store.insert(&res(Protocol::Tcp, 1, 1)).unwrap();
    assert_eq!(mode(&dir), 0o700);
    let db = dir.join("portres.db");
    assert_eq!(mode(&db), 0o600);
    for companion in ["portres.db-wal", "portres.db-shm"] {
        let p = dir.join(companion);
        assert!(p.exists(), "{} should exist in WAL mode", p.display());
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    drop(store);

    // Modes loosened by hand are tightened on the next open; an existing
    // state directory's own mode is the admin's and is left alone.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o750)).unwrap();
    fs::set_permissions(&db, fs::Permissions::from_mode(0o644)).unwrap();
    let store = Store::open(&dir).unwrap();
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&dir), 0o750);
    assert_eq!(store.load().unwrap().len(), 1);
}

#[test]
fn garbage_file_fails_open_clearly() {
    let (_tmp, dir) = state_dir();
    fs::create_dir(&dir).unwrap();
    let db = dir.join("portres.db");
    let garbage: Vec<u8> = (0..20_000u32).map(|i| (i * 7919 % 251) as u8).collect();
    fs::write(&db, &garbage).unwrap();
    let err = Store::open(&dir).unwrap_err();
    let text = err.to_string();
    assert!(text.contains(&db.display().to_string()), "{text}");
    assert!(text.contains("file is not a database"), "{text}");
    assert!(err.is_corrupt(), "{text}");
    assert_eq!(
        fs::read(&db).unwrap(),
        garbage,
        "a failed open must not rewrite the file"
    );
}

#[test]
fn damaged_page_fails_open_or_load_clearly() {
    let (_tmp, dir) = state_dir();
    {
        let mut store = Store::open(&dir).unwrap();
        for r in samples() {
            store.insert(&r).unwrap();
        }
    }
    let db = dir.join("portres.db");
    let mut bytes = fs::read(&db).unwrap();
    let page = 4096;
    assert!(bytes.len() >= 3 * page, "db is {} bytes", bytes.len());
    // Page 2 is the root of the first table created (persistent).
    bytes[page..2 * page].fill(0xA5);
    fs::write(&db, &bytes).unwrap();
    let err = match Store::open(&dir) {
        Err(e) => e,
        Ok(store) => store.load().unwrap_err(),
    };
    let text = err.to_string();
    assert!(text.contains(&db.display().to_string()), "{text}");
    assert!(err.is_corrupt(), "{text}");
}

/// Writes rows the schema's CHECK constraints would refuse.
fn insert_raw_unchecked(dir: &Path, sql: &str) {
    let conn = raw(dir);
    conn.pragma_update(None, "ignore_check_constraints", true)
        .unwrap();
    conn.execute_batch(sql).unwrap();
}

#[test]
fn row_breaking_a_check_constraint_fails_open_naming_it() {
    let (_tmp, dir) = state_dir();
    drop(Store::open(&dir).unwrap());
    insert_raw_unchecked(
        &dir,
        "INSERT INTO persistent VALUES ('tcp', 65535, 2, NULL, NULL, NULL, 0, 0, NULL)",
    );
    let err = Store::open(&dir).unwrap_err();
    let text = err.to_string();
    assert!(err.is_corrupt(), "{text}");
    assert!(
        text.contains("CHECK constraint failed in persistent"),
        "{text}"
    );
    assert!(
        text.contains("row 1 of table persistent (protocol 'tcp', start 65535, count 2)"),
        "{text}"
    );
    assert!(text.contains("past 65535"), "{text}");
}

#[test]
fn invalid_row_on_load_is_an_error_naming_it() {
    // Rows that pass the CHECK constraints (so quick_check is content) but
    // are not valid reservations.
    for (sql, expect) in [
        (
            "INSERT INTO persistent VALUES ('udp', 1.5, 1, NULL, NULL, NULL, 0, 0, NULL)",
            "row 1 of table persistent (protocol 'udp', start 1.5, count 1) is not a valid \
             reservation: start is 1.5, not an integer",
        ),
        (
            "INSERT INTO persistent VALUES ('tcp', 80, 1, 'user', NULL, 'x', 0, 0, NULL)",
            "owner_kind 'user' with owner_id NULL is not an owner",
        ),
        (
            "INSERT INTO persistent VALUES ('tcp', 80, 1, NULL, NULL, NULL, -1, 0, NULL)",
            "created_by -1 is out of range",
        ),
    ] {
        let (_tmp, dir) = state_dir();
        drop(Store::open(&dir).unwrap());
        raw(&dir).execute_batch(sql).unwrap();
        let store = Store::open(&dir).unwrap();
        let err = store.load().unwrap_err();
        let text = err.to_string();
        assert!(text.contains(expect), "{text}");
        assert!(err.is_corrupt(), "{text}");
    }
}

#[test]
fn a_newer_schema_version_is_refused() {
    let (_tmp, dir) = state_dir();
    drop(Store::open(&dir).unwrap());
    raw(&dir).pragma_update(None, "user_version", 7).unwrap();
    let text = Store::open(&dir).unwrap_err().to_string();
    assert!(text.contains("schema version 7"), "{text}");
}

#[test]
fn a_version_1_store_is_migrated_keeping_its_rows_as_api_created() {
    let (_tmp, dir) = state_dir();
    fs::create_dir_all(&dir).unwrap();
    {
        let conn = raw(&dir);
        conn.execute_batch(portres_store::schema::SCHEMA_V1)
            .unwrap();
        conn.execute(
            "INSERT INTO persistent (protocol, start, count, owner_kind, owner_id, label, \
             created_by, created_at) VALUES ('tcp', 8080, 2, 'user', 33, 'web', 0, 5)",
            [],
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
    }
    let mut store = Store::open(&dir).unwrap();
    let rows = store.load().unwrap();
    assert_eq!(
        rows,
        vec![StoredReservation {
            owner: Some(Owner::User(33)),
            label: Some("web".into()),
            created_at: 5,
            ..res(Protocol::Tcp, 8080, 2)
        }]
    );
    let version: i64 = raw(&dir)
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(version, 2);
    // And the new column works.
    assert!(
        store
            .update(
                Protocol::Tcp,
                Block::new(8080, 2).unwrap(),
                None,
                None,
                Some("/etc/portres.d/a.conf")
            )
            .unwrap()
    );
    assert_eq!(
        store.load().unwrap()[0].source.as_deref(),
        Some("/etc/portres.d/a.conf")
    );
}

#[test]
fn update_changes_owner_label_and_source_of_exactly_one_block_durably() {
    let (_tmp, dir) = state_dir();
    let mut store = Store::open(&dir).unwrap();
    store.insert(&res(Protocol::Tcp, 8000, 5)).unwrap();
    store.insert(&res(Protocol::Udp, 8000, 5)).unwrap();
    let block = Block::new(8000, 5).unwrap();
    assert!(
        !store
            .update(
                Protocol::Tcp,
                Block::new(8000, 4).unwrap(),
                None,
                Some("x"),
                None
            )
            .unwrap()
    );
    assert!(
        store
            .update(
                Protocol::Tcp,
                block,
                Some(Owner::Group(7)),
                Some("new"),
                Some("/run/portres.d/b.conf")
            )
            .unwrap()
    );
    drop(store);
    let rows = Store::open(&dir).unwrap().load().unwrap();
    assert_eq!(
        rows,
        vec![
            StoredReservation {
                owner: Some(Owner::Group(7)),
                label: Some("new".into()),
                source: Some("/run/portres.d/b.conf".into()),
                ..res(Protocol::Tcp, 8000, 5)
            },
            res(Protocol::Udp, 8000, 5),
        ]
    );
}

#[test]
fn foreign_tables_are_refused_at_open() {
    let (_tmp, dir) = state_dir();
    drop(Store::open(&dir).unwrap());
    raw(&dir)
        .execute_batch("DROP TABLE persistent; CREATE TABLE persistent (x TEXT);")
        .unwrap();
    let text = Store::open(&dir).unwrap_err().to_string();
    assert!(text.contains("checking the schema"), "{text}");
}

#[test]
fn state_dir_that_is_a_file_fails_clearly() {
    let (_tmp, dir) = state_dir();
    fs::write(&dir, b"not a dir").unwrap();
    let err: StoreError = Store::open(&dir).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
    assert_eq!(err.path(), dir);
}

fn running_as_root() -> bool {
    // /proc/self belongs to the process's effective uid.
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

const CHILD_ENV: &str = "PORTRES_STORE_TEST_FS_CHILD";
const CHILD_OK: &str = "portres-store fs child: passed";
const CHILD_SKIP: &str = "portres-store fs child: skipped";

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs inside a private mount namespace (as root): a full file system
/// (a tiny tmpfs) and a read-only one (`ro`, a bind mount of `src` that is
/// made read-only and writable again; a store left open on `src` plays a
/// crashed daemon, since a mount with files open for writing cannot be made
/// read-only).
fn full_and_read_only_fs_child(base: &Path) {
    let full = base.join("full");
    let src = base.join("src");
    let ro = base.join("ro");
    fs::create_dir_all(&full).unwrap();
    fs::create_dir_all(&src).unwrap();
    fs::create_dir_all(&ro).unwrap();
    let (f, r) = (full.to_str().unwrap(), ro.to_str().unwrap());
    if !sh(&[
        "mount",
        "-t",
        "tmpfs",
        "-o",
        "size=256k,mode=0700",
        "tmpfs",
        f,
    ]) || !sh(&["mount", "--bind", src.to_str().unwrap(), r])
    {
        println!("{CHILD_SKIP}: cannot mount");
        return;
    }

    // Disk full: inserts fail cleanly, acknowledged rows stay.
    let mut store = Store::open(&full).unwrap();
    let mut acked = Vec::new();
    let mut failure = None;
    for start in 1..=1000u32 {
        let r = StoredReservation {
            label: Some("x".repeat(8000)),
            ..res(Protocol::Tcp, start, 1)
        };
        match store.insert(&r) {
            Ok(()) => acked.push(r),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let err = failure.expect("a 256 KiB file system should fill up");
    let text = err.to_string();
    assert!(text.contains("database or disk is full"), "{text}");
    assert!(
        text.contains(&full.join("portres.db").display().to_string()),
        "{text}"
    );
    assert!(!acked.is_empty());
    println!("disk full after {} rows: {text}", acked.len());
    assert_eq!(store.load().unwrap(), acked);
    drop(store);
    assert!(sh(&["mount", "-o", "remount,size=4m", f]));
    assert_eq!(Store::open(&full).unwrap().load().unwrap(), acked);

    // Read-only at open, after a clean close (no -wal left) and after a
    // crash (-wal and -shm left): the store opens read-only, reads every
    // row, refuses changes naming the file, and becomes writable again by
    // itself once the file system is.
    let mut store = Store::open(&ro).unwrap();
    store.insert(&res(Protocol::Udp, 53, 1)).unwrap();
    store.set_baseline(&"999".parse().unwrap()).unwrap();
    let mut rows = vec![res(Protocol::Udp, 53, 1)];
    drop(store);
    for crashed in [false, true] {
        let how = if crashed {
            "after a crash"
        } else {
            "after a clean close"
        };
        if crashed {
            let mut store = Store::open(&src).unwrap();
            store.insert(&res(Protocol::Tcp, 80, 1)).unwrap();
            rows.insert(0, res(Protocol::Tcp, 80, 1));
            // Never closed: the -wal (holding the insert) and -shm stay.
            std::mem::forget(store);
            assert!(ro.join("portres.db-wal").exists());
        } else {
            assert!(!ro.join("portres.db-wal").exists());
        }
        assert!(sh(&["mount", "-o", "remount,ro,bind", r]));
        let mut store = Store::open(&ro).unwrap_or_else(|e| panic!("{how}: {e}"));
        assert!(store.is_read_only(), "{how}");
        assert_eq!(store.load().unwrap(), rows, "{how}");
        assert_eq!(store.baseline().unwrap().unwrap().to_string(), "999");
        let e = store.insert(&res(Protocol::Udp, 54, 1)).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("attempt to write a readonly database"),
            "{text}"
        );
        assert!(text.contains(&ro.display().to_string()), "{text}");
        assert!(
            store
                .delete(Protocol::Udp, Block::new(53, 1).unwrap())
                .is_err()
        );
        assert_eq!(
            store.load().unwrap(),
            rows,
            "{how}: a refused change changed rows"
        );
        println!("read-only {how}: {text}");
        assert!(sh(&["mount", "-o", "remount,rw,bind", r]));
        store.insert(&res(Protocol::Udp, 54, 1)).unwrap();
        assert!(!store.is_read_only(), "{how}: still read-only");
        assert!(
            store
                .delete(Protocol::Udp, Block::new(54, 1).unwrap())
                .unwrap()
        );
        drop(store);
        assert_eq!(Store::open(&ro).unwrap().load().unwrap(), rows, "{how}");
    }
    println!("{CHILD_OK}");
}

#[test]
fn full_and_read_only_file_systems_fail_cleanly() {
    if let Ok(base) = std::env::var(CHILD_ENV) {
        full_and_read_only_fs_child(Path::new(&base));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    if !running_as_root() {
        // Without root there are no mounts, but mode bits do hold: a state
        // directory the daemon cannot write to.
        let dir = tmp.path().join("state");
        let mut store = Store::open(&dir).unwrap();
        store.insert(&res(Protocol::Tcp, 1, 1)).unwrap();
        drop(store);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).unwrap();
        let outcome = Store::open(&dir).and_then(|mut s| s.insert(&res(Protocol::Tcp, 2, 1)));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
        let text = outcome.unwrap_err().to_string();
        assert!(text.contains(&dir.display().to_string()), "{text}");
        return;
    }
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "full_and_read_only_file_systems_fail_cleanly",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, tmp.path())
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => {
            eprintln!("skipped: cannot run unshare: {e}");
            return;
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.code() == Some(101) {
        panic!("the child failed:\n{stdout}\n{stderr}");
    }
    if !out.status.success() || stdout.contains(CHILD_SKIP) {
        eprintln!("skipped: no private mount namespace here:\n{stdout}\n{stderr}");
        return;
    }
    assert!(
        stdout.contains(CHILD_OK),
        "the child did not run:\n{stdout}\n{stderr}"
    );
    println!("{stdout}");
}

#[derive(Clone, Debug)]
enum Op {
    Insert(StoredReservation),
    Delete(Protocol, Block),
    /// Delete the n-th (modulo) row the model holds, by its exact block.
    DeleteExisting(usize),
    Reopen,
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)]
}

fn block() -> impl Strategy<Value = Block> {
    prop_oneof![
        (1u32..40, 1u32..4).prop_map(|(s, c)| Block::new(s, c).unwrap()),
        Just(Block::new(65535, 1).unwrap()),
        Just(Block::new(1, 65535).unwrap()),
    ]
}

fn reservation() -> impl Strategy<Value = StoredReservation> {
    let owner = prop_oneof![
        Just(None),
        any::<u32>().prop_map(|u| Some(Owner::User(u))),
        any::<u32>().prop_map(|g| Some(Owner::Group(g))),
    ];
    (
        protocol(),
        block(),
        owner,
        proptest::option::of(".{0,12}"),
        any::<u32>(),
        any::<i64>(),
    )
        .prop_map(|(protocol, block, owner, label, created_by, created_at)| {
            StoredReservation {
                protocol,
                block,
                owner,
                label,
                created_by,
                created_at,
                source: None,
            }
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => reservation().prop_map(Op::Insert),
        2 => (protocol(), block()).prop_map(|(p, b)| Op::Delete(p, b)),
        2 => any::<usize>().prop_map(Op::DeleteExisting),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_agrees_with_a_map_model_across_reopens(ops in prop::collection::vec(op(), 0..40)) {
        let (_tmp, dir) = state_dir();
        let mut store = Store::open(&dir).unwrap();
        let mut model: BTreeMap<(Protocol, u16), StoredReservation> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Insert(r) => {
                    let key = (r.protocol, r.block.start());
                    let got = store.insert(&r);
                    match model.entry(key) {
                        Entry::Occupied(_) => {
                            prop_assert!(got.is_err_and(|e| e.is_duplicate()));
                        }
                        Entry::Vacant(slot) => {
                            prop_assert!(got.is_ok(), "{:?}", got);
                            slot.insert(r);
                        }
                    }
                }
                Op::Delete(p, b) => {
                    let expect = model.get(&(p, b.start())).is_some_and(|r| r.block == b);
                    if expect {
                        model.remove(&(p, b.start()));
                    }
                    prop_assert_eq!(store.delete(p, b).unwrap(), expect);
                }
                Op::DeleteExisting(n) => {
                    if model.is_empty() {
                        continue;
                    }
                    let key = *model.keys().nth(n % model.len()).unwrap();
                    let r = model.remove(&key).unwrap();
                    prop_assert!(store.delete(r.protocol, r.block).unwrap());
                }
                Op::Reopen => {
                    drop(store);
                    store = Store::open(&dir).unwrap();
                    prop_assert_eq!(store.load().unwrap(), model.values().cloned().collect::<Vec<_>>());
                }
            }
        }
        drop(store);
        let store = Store::open(&dir).unwrap();
        prop_assert_eq!(store.load().unwrap(), model.values().cloned().collect::<Vec<_>>());
    }
}

#[test]
fn state_directories_others_can_write_to_and_planted_links_are_refused() {
    let (_tmp, dir) = state_dir();
    drop(Store::open(&dir).unwrap());
    for (mode, who) in [
        (0o777, "everyone"),
        (0o1777, "everyone"),
        (0o770, "its group"),
    ] {
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
        let text = Store::open(&dir).unwrap_err().to_string();
        assert!(
            text.contains(&format!("writable by {who} (mode {mode:04o})")),
            "{text}"
        );
        assert!(text.contains(&dir.display().to_string()), "{text}");
    }
    // Readable by others is fine (systemd's StateDirectory= default is 0755).
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    drop(Store::open(&dir).unwrap());
    // A symbolic link where the database or its -wal goes is refused.
    let elsewhere = dir.join("elsewhere");
    fs::write(&elsewhere, b"").unwrap();
    for name in ["portres.db-wal", "portres.db-shm"] {
        let link = dir.join(name);
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let text = Store::open(&dir).unwrap_err().to_string();
        assert!(text.contains("symbolic link"), "{name}: {text}");
        fs::remove_file(&link).unwrap();
    }
    fs::rename(dir.join("portres.db"), dir.join("moved.db")).unwrap();
    std::os::unix::fs::symlink(dir.join("moved.db"), dir.join("portres.db")).unwrap();
    let text = Store::open(&dir).unwrap_err().to_string();
    assert!(text.contains("symbolic link"), "{text}");
    assert_eq!(
        mode(&elsewhere) & 0o777,
        0o644,
        "the link target's mode was changed"
    );
    if running_as_root() {
        // Owned by another user: refused, directory and file alike.
        fs::remove_file(dir.join("portres.db")).unwrap();
        fs::rename(dir.join("moved.db"), dir.join("portres.db")).unwrap();
        let nobody = Some(65534);
        std::os::unix::fs::chown(dir.join("portres.db"), nobody, None).unwrap();
        let text = Store::open(&dir).unwrap_err().to_string();
        assert!(text.contains("owned by uid 65534"), "{text}");
        std::os::unix::fs::chown(dir.join("portres.db"), Some(0), None).unwrap();
        std::os::unix::fs::chown(&dir, nobody, None).unwrap();
        let text = Store::open(&dir).unwrap_err().to_string();
        assert!(
            text.contains("owned by uid 65534, not by the daemon's uid 0"),
            "{text}"
        );
    }
}
