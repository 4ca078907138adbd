//! Loading the bind programs and telling why a load failed: the
//! capability check up front, the verifier's answer classified into a
//! named `GuardError`.

use std::os::fd::OwnedFd;

use super::{DenyErrno, GuardError, program, sys};

pub(super) fn load_program(
    map: &sys::GuardMap,
    attach_type: u32,
    name: &str,
) -> Result<(OwnedFd, DenyErrno), GuardError> {
    use std::os::fd::AsRawFd;
    let load = |deny| {
        sys::prog_load(
            sys::BPF_PROG_TYPE_CGROUP_SOCK_ADDR,
            attach_type,
            &program::bind_program(map.as_fd().as_raw_fd(), deny),
            name,
        )
    };
    let eacces = match load(DenyErrno::Eacces) {
        Ok(fd) => return Ok((fd, DenyErrno::Eacces)),
        Err(e) => e,
    };
    // bpf_set_retval in bind hooks came in Linux 5.18; without it a
    // refused bind fails with EPERM.
    match load(DenyErrno::Eperm) {
        Ok(fd) => Ok((fd, DenyErrno::Eperm)),
        Err(e) => Err(classify_load_error(e, &eacces.log)),
    }
}

pub(super) fn classify_load_error(e: sys::LoadError, eacces_log: &str) -> GuardError {
    let sys::LoadError { error, log } = e;
    match error.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) if log.is_empty() => GuardError::NotPermitted(
            format!("bpf(BPF_PROG_LOAD): {error}: needs CAP_BPF and CAP_NET_ADMIN (or root)"),
        ),
        Some(libc::ENOSYS) => GuardError::BpfUnavailable(format!("bpf(2): {error}")),
        // An unknown program or attach type is refused before the
        // verifier runs, so without a log.
        Some(libc::EINVAL) if log.is_empty() => GuardError::BpfUnavailable(format!(
            "the kernel refuses BPF_PROG_TYPE_CGROUP_SOCK_ADDR bind programs: {error}"
        )),
        // "unknown func bpf_x#N" (a helper this program type may not
        // call), "invalid func unknown#N" (a helper id the kernel does
        // not have), "cannot use helper" (older kernels).
        _ if ["unknown func", "invalid func", "cannot use helper"]
            .iter()
            .any(|m| log.contains(m)) =>
        {
            GuardError::HelperMissing { log }
        }
        _ => GuardError::VerifierRefused {
            error,
            log: if eacces_log.is_empty() || eacces_log == log {
                log
            } else {
                format!("{log}\n(the EACCES variant: {eacces_log})")
            },
        },
    }
}

/// CAP_BPF (39) or CAP_SYS_ADMIN (21) to load, and CAP_NET_ADMIN (12) or
/// CAP_SYS_ADMIN for a socket program and its cgroup attachment: checked
/// up front from /proc/self/status so the reason is exact.
pub(super) fn check_capabilities() -> Result<(), GuardError> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| GuardError::NotPermitted(format!("cannot read /proc/self/status: {e}")))?;
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| GuardError::NotPermitted("no CapEff in /proc/self/status".into()))?;
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    let sys_admin = has(21);
    let mut missing = Vec::new();
    if !(has(39) || sys_admin) {
        missing.push("CAP_BPF");
    }
    if !(has(12) || sys_admin) {
        missing.push("CAP_NET_ADMIN");
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(GuardError::NotPermitted(format!(
            "the bind hooks need CAP_BPF and CAP_NET_ADMIN (or root); this process lacks {}",
            missing.join(" and ")
        )))
    }
}
