//! Unit tests for sysctl.rs.

use super::*;

#[test]
fn port_range_parses_the_kernel_form() {
    assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
    assert_eq!(parse_port_range(" 1024 1024 "), Some((1024, 1024)));
}

#[test]
fn port_range_rejects_malformed_text() {
    for bad in ["", "32768", "60999\t32768", "1 2 3", "a\tb", "1\t70000"] {
        assert_eq!(parse_port_range(bad), None, "{bad:?}");
    }
}

#[test]
fn empty_set_is_written_as_a_newline() {
    assert_eq!(replacing_text(&PortSet::new()).unwrap(), "\n");
}

fn every_other_port() -> PortSet {
    PortSet::from_ranges((20000..=40000).step_by(2).map(|p| (p, p)).collect())
}

#[test]
fn a_value_longer_than_one_write_cannot_replace_the_list() {
    let err = replacing_text(&every_other_port()).expect_err("too long");
    assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    let mut fake = FakeReservedPorts::default();
    assert!(fake.replace(&every_other_port()).is_err());
    assert_eq!(fake.writes, 0);
}

/// Runs `converge` from `start` to `desired` on the fake and checks
/// that no value in between lacked a port both ends have.
fn converge_without_gaps(start: &PortSet, desired: &PortSet) -> (PortSet, FakeReservedPorts) {
    let mut fake = FakeReservedPorts {
        value: start.clone(),
        ..FakeReservedPorts::default()
    };
    let held = converge(&mut fake, Some(start), desired).expect("converge");
    assert_eq!(fake.value, held, "returns what the list holds");
    assert!(held.covers(desired), "holds at least the desired ports");
    let kept = PortSet::from_ranges(
        start
            .ranges()
            .iter()
            .copied()
            .filter(|&(a, b)| desired.covers(&PortSet::from_ranges(vec![(a, b)])))
            .collect(),
    );
    for (i, value) in fake.history.iter().enumerate() {
        assert!(
            value.covers(&kept),
            "write {i} dropped a port kept throughout"
        );
    }
    (held, fake)
}

#[test]
fn growth_of_a_long_list_adds_just_the_new_ports_and_is_exact() {
    let start = every_other_port();
    let mut desired = start.clone();
    desired.insert_range(50000, 50010);
    let (held, fake) = converge_without_gaps(&start, &desired);
    assert_eq!(held, desired, "exact at any length");
    assert_eq!(fake.writes, 1, "one adding write");
}

#[test]
fn a_shrink_of_a_long_list_is_one_replacing_write_of_a_coarser_superset() {
    let mut start = every_other_port();
    start.insert_range(50000, 50010);
    let desired = every_other_port();
    let (held, fake) = converge_without_gaps(&start, &desired);
    assert_eq!(fake.writes, 1);
    assert!(held.to_string().len() <= MAX_WRITE);
    assert!(!held.contains(50005), "the released block is gone");
    // Converging again from there writes nothing.
    let (again, fake) = converge_without_gaps(&held, &desired);
    assert_eq!((again, fake.writes), (held, 0));
}

#[test]
fn the_old_piecewise_write_has_the_window_the_fake_can_see() {
    // Sanity check of the fake: setting a long value exactly (first
    // piece replaces, the rest add) passes through values that lack
    // ports both ends have.
    let long = every_other_port();
    let mut fake = FakeReservedPorts {
        value: long.clone(),
        ..FakeReservedPorts::default()
    };
    fake.write(&long).expect("write");
    assert_eq!(fake.value, long);
    assert!(fake.history.iter().any(|v| !v.covers(&long)), "a window");
}

#[test]
fn fake_records_writes_and_can_fail() {
    let mut fake = FakeReservedPorts::default();
    let set: PortSet = "100-200".parse().expect("valid set");
    fake.replace(&set).expect("fake write");
    assert_eq!(fake.read().expect("fake read"), set);
    fake.add(&"300".parse().expect("valid set"))
        .expect("fake add");
    assert_eq!(fake.read_text().expect("fake read"), "100-200,300");
    assert_eq!(fake.writes, 2);

    fake.fail_writes = true;
    assert!(fake.replace(&PortSet::new()).is_err());
    assert!(fake.add(&set).is_err());
    assert_eq!(fake.writes, 2);
}

#[test]
fn proc_reads_and_writes_a_plain_file() {
    // A regular file stands in for the sysctl for replacing writes (an
    // adding write at offset 1 has no such stand-in).
    let dir = std::env::temp_dir().join(format!("portres-sysctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("reserved");
    std::fs::write(&path, "").expect("create file");
    let mut file = ProcReservedPorts::with_path(&path);
    file.check_writable().expect("writable");
    let set: PortSet = "5,7-9".parse().expect("valid set");
    file.replace(&set).expect("write");
    assert_eq!(file.read().expect("read"), set);
    assert_eq!(file.read_text().expect("read"), "5,7-9");
    std::fs::remove_dir_all(&dir).expect("clean up");
}

#[test]
fn missing_file_is_an_error_naming_the_path() {
    let file = ProcReservedPorts::with_path("/nonexistent/portres/reserved");
    let err = file.check_writable().expect_err("no such file");
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(err.to_string().contains("/nonexistent/portres/reserved"));
    assert!(file.read().is_err());
}
