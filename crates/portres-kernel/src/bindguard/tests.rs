//! Unit tests of the bind guard that need no kernel: mountinfo parsing,
//! the holder record, the verifier-error classification.

use super::cgroup::{components, parse_cgroup2_mount};
use super::load::{check_capabilities, classify_load_error};
use super::*;

#[test]
fn finds_the_cgroup2_mount_on_hybrid_and_unified_hosts() {
    let hybrid = "25 1 0:23 / /sys rw - sysfs sysfs rw\n\
        35 25 0:30 / /sys/fs/cgroup ro shared:9 - tmpfs tmpfs ro,mode=755\n\
        41 35 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw\n";
    let m = parse_cgroup2_mount(hybrid).expect("found");
    assert_eq!(m.mount_point, Path::new("/sys/fs/cgroup/unified"));
    assert_eq!(m.root, Path::new("/"));
    let nested = "30 1 0:26 /system.slice/x\\040y /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
    let m = parse_cgroup2_mount(nested).expect("found");
    assert_eq!(m.mount_point, Path::new("/mnt/cg two"));
    assert_eq!(components(&m.root), 2);
    assert!(parse_cgroup2_mount("25 1 0:23 / /sys rw - sysfs sysfs rw\n").is_none());
}

/// Whether a privileged unit test may run; panics instead of skipping
/// under PORTRES_REQUIRE_PRIVILEGED_TESTS=1.
fn privileged(test: &str) -> bool {
    match check_capabilities() {
        Ok(()) => true,
        Err(e) => {
            if std::env::var_os("PORTRES_REQUIRE_PRIVILEGED_TESTS").is_some_and(|v| v == "1") {
                panic!("{test}: {e} and PORTRES_REQUIRE_PRIVILEGED_TESTS=1");
            }
            eprintln!("SKIPPED {test}: {e}");
            false
        }
    }
}

/// Loads `insns` as a bind4 program, expecting a refusal.
fn refusal(insns: &[insn::Insn]) -> sys::LoadError {
    sys::prog_load(
        sys::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
        sys::BPF_CGROUP_INET4_BIND,
        insns,
        "portres_bad",
    )
    .expect_err("the verifier refuses it")
}

#[test]
fn a_refused_program_brings_the_verifier_log() {
    if !privileged("a_refused_program_brings_the_verifier_log") {
        return;
    }
    // A bind hook must return 0..=3.
    let err = refusal(&[insn::mov64_imm(insn::R0, 7), insn::exit()]);
    assert_eq!(err.error.raw_os_error(), Some(libc::EINVAL));
    assert!(err.log.contains("R0"), "{}", err.log);
    let text = classify_load_error(err, "").to_string();
    assert!(text.starts_with("the BPF verifier refused"), "{text}");
    assert!(text.contains("R0"), "{text}");
}

#[test]
fn an_unknown_helper_is_named_missing() {
    if !privileged("an_unknown_helper_is_named_missing") {
        return;
    }
    // An id no kernel has, and bpf_skb_load_bytes (26), which bind
    // hooks may not call.
    for helper in [100_000, 26] {
        let err = refusal(&[
            insn::call(helper),
            insn::mov64_imm(insn::R0, 1),
            insn::exit(),
        ]);
        let e = classify_load_error(err, "");
        assert!(
            matches!(e, GuardError::HelperMissing { .. }),
            "{helper}: {e}"
        );
    }
}

#[test]
fn both_variants_load_here() {
    if !privileged("both_variants_load_here") {
        return;
    }
    let guard = BindGuard::load().expect("load");
    assert_eq!(guard.denies_with(), DenyErrno::Eacces);
    use std::os::fd::AsRawFd;
    for attach in [sys::BPF_CGROUP_INET4_BIND, sys::BPF_CGROUP_INET6_BIND] {
        let eperm = program::bind_program(guard.map.as_fd().as_raw_fd(), DenyErrno::Eperm);
        sys::prog_load(
            sys::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            attach,
            &eperm,
            "portres_eperm",
        )
        .map_err(|e| e.log)
        .expect("the EPERM fallback loads too");
    }
}

#[test]
fn allowed_binders_round_trip_and_empty_allows_nobody() {
    assert_eq!(AllowedBinders::default().to_value(), GuardValue::default());
    let a = AllowedBinders {
        tgid: Some(7),
        uid: Some(0),
        gid: None,
        cgroup: Some(CgroupRef { id: 99, level: 2 }),
        skip_bind_service_cap: true,
    };
    assert_eq!(AllowedBinders::from_value(a.to_value()), a);
}
