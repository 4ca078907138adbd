//! Unit tests for the SQLite store (store.rs).

use portres_core::PortSet;
use rusqlite::types::ValueRef;

use super::rows::parse_row;
use super::*;

#[test]
fn baseline_provenance_is_recorded_with_the_value_and_cleared_by_set_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s")).unwrap();
    assert_eq!(store.baseline_record().unwrap(), None);
    let ports: PortSet = "999,5000-5009".parse().unwrap();
    store
        .record_baseline(
            &ports,
            "read from the kernel at the first start",
            1_700_000_000,
        )
        .unwrap();
    let record = store.baseline_record().unwrap().unwrap();
    assert_eq!(record.ports, ports);
    assert_eq!(record.recorded_at, Some(1_700_000_000));
    assert_eq!(
        record.origin.as_deref(),
        Some("read from the kernel at the first start")
    );
    drop(store);
    let mut store = Store::open(&dir.path().join("s")).unwrap();
    assert_eq!(
        store.baseline_record().unwrap().unwrap().recorded_at,
        Some(1_700_000_000)
    );
    store.set_baseline(&PortSet::new()).unwrap();
    let record = store.baseline_record().unwrap().unwrap();
    assert_eq!((record.recorded_at, record.origin), (None, None));
}

#[test]
fn store_can_move_to_another_thread() {
    fn send<T: Send + 'static>() {}
    send::<Store>();
}

#[test]
fn parse_row_rejects_each_bad_column_without_panicking() {
    let good = [
        ValueRef::Text(b"tcp"),
        ValueRef::Integer(5000),
        ValueRef::Integer(10),
        ValueRef::Text(b"group"),
        ValueRef::Integer(100),
        ValueRef::Text(b"web"),
        ValueRef::Integer(0),
        ValueRef::Integer(1_700_000_000),
        ValueRef::Text(b"/etc/portres.d/web.conf"),
    ];
    let r = parse_row(&good).unwrap();
    assert_eq!(r.source.as_deref(), Some("/etc/portres.d/web.conf"));
    assert_eq!(r.block, Block::new(5000, 10).unwrap());
    assert_eq!(r.owner, Some(Owner::Group(100)));
    let cases: [(usize, ValueRef<'static>, &str); 11] = [
        (0, ValueRef::Text(b"sctp"), "protocol 'sctp'"),
        (0, ValueRef::Null, "protocol NULL"),
        (1, ValueRef::Integer(0), "start port 0"),
        (1, ValueRef::Integer(-1), "start -1 is out of range"),
        (2, ValueRef::Integer(70000), "past 65535"),
        (2, ValueRef::Real(1.5), "count is 1.5"),
        (3, ValueRef::Null, "owner_kind NULL with owner_id 100"),
        (4, ValueRef::Integer(1 << 40), "owner_id 1099511627776"),
        (5, ValueRef::Text(b"\xff"), "UTF-8"),
        (7, ValueRef::Blob(b"x"), "created_at is a blob"),
        (8, ValueRef::Integer(3), "source is 3"),
    ];
    for (i, value, expect) in cases {
        let mut row = good;
        row[i] = value;
        let why = parse_row(&row).unwrap_err();
        assert!(why.contains(expect), "{why:?} lacks {expect:?}");
    }
}
