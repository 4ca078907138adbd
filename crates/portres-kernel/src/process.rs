//! Processes named by pid: a pidfd that stays bound to one process (and
//! becomes readable when it exits), and who that process is (its real and
//! effective uid, its pid in its own pid namespace). For the portserver endpoint, whose requests name
//! the process a port belongs to.
//!
//! Pid reuse: open the pidfd first, read the process's identity second
//! (from the pidfd itself, `pidfd_uids`, or from `/proc/<pid>`), and check
//! the pidfd still says "running" third; then what was read belongs to the
//! process the pidfd refers to (a pid is only reused after its process
//! exited, which the pidfd would show).

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{PollFd, PollFlags, Timespec};

/// A pidfd for `pid` (`pidfd_open(2)`, Linux 5.3+): readable once the
/// process has exited. ESRCH: no such process; EINVAL: not a process
/// (thread-group leader) id.
pub fn open_pidfd(pid: i32) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// Whether the process of `pidfd` has exited (the pidfd polls readable).
pub fn pidfd_exited(pidfd: impl AsFd) -> bool {
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut fds, Some(&zero)) {
        Ok(n) => n > 0,
        // Cannot tell: say exited, so nothing is granted on it.
        Err(_) => true,
    }
}

/// `struct pidfd_info` of `<linux/pidfd.h>` (Linux 6.13), its first
/// version (64 bytes; a later kernel fills no more than the size the
/// request names). The libc crate has no binding for it yet.
#[repr(C)]
#[derive(Default)]
struct PidfdInfo {
    mask: u64,
    cgroupid: u64,
    pid: u32,
    tgid: u32,
    ppid: u32,
    ruid: u32,
    rgid: u32,
    euid: u32,
    egid: u32,
    suid: u32,
    sgid: u32,
    fsuid: u32,
    fsgid: u32,
    spare0: [u32; 1],
}

/// `PIDFD_GET_INFO`: `_IOWR(PIDFS_IOCTL_MAGIC = 0xFF, 11, struct pidfd_info)`.
const PIDFD_GET_INFO: libc::c_ulong =
    (3 << 30) | ((std::mem::size_of::<PidfdInfo>() as libc::c_ulong) << 16) | (0xFF << 8) | 11;
/// `pidfd_info.mask`: the uid/gid fields are filled.
const PIDFD_INFO_CREDS: u64 = 1 << 1;

/// The real and effective uid of the process of `pidfd`, as the kernel
/// keeps them (`PIDFD_GET_INFO`, Linux 6.13+; uids as seen from our user
/// namespace, as in `/proc/<pid>/status`): one `ioctl`, where
/// `process_ids` opens, reads and closes a status file the kernel first
/// formats. `Ok(None)` when this kernel has no such request (ask
/// `process_ids`); ESRCH when the process is gone (reaped).
pub fn pidfd_uids(pidfd: impl AsFd) -> io::Result<Option<(u32, u32)>> {
    use std::os::fd::AsRawFd;
    let mut info = PidfdInfo::default();
    // SAFETY: PIDFD_GET_INFO reads `mask` from and writes at most
    // `_IOC_SIZE` (= size_of::<PidfdInfo>()) bytes to the pointer, which
    // points to a live, writable, properly aligned `PidfdInfo` for the
    // whole call; the descriptor is borrowed, so it stays open.
    let rc = unsafe {
        libc::ioctl(
            pidfd.as_fd().as_raw_fd(),
            PIDFD_GET_INFO as _,
            &mut info as *mut PidfdInfo,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            // Before 6.13: no such ioctl on a pidfd (or no pidfs at all).
            Some(libc::ENOTTY | libc::EINVAL | libc::EOPNOTSUPP) => Ok(None),
            _ => Err(e),
        };
    }
    if info.mask & PIDFD_INFO_CREDS == 0 {
        return Ok(None);
    }
    Ok(Some((info.ruid, info.euid)))
}

/// Who a process is, from `/proc/<pid>/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcessIds {
    /// Its real uid.
    pub real_uid: u32,
    /// Its effective uid.
    pub effective_uid: u32,
    /// Its pid in the innermost pid namespace it is in (the last `NSpid:`
    /// field; the pid itself where the kernel has no such line).
    pub ns_pid: i32,
}

/// Who process `pid` (of our pid namespace) is.
pub fn process_ids(pid: i32) -> io::Result<ProcessIds> {
    let status = read_proc_file(&format!("/proc/{pid}/status"))?;
    let status = String::from_utf8_lossy(&status);
    parse_status(&status, pid).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status has no readable Uid: line"),
        )
    })
}

/// A /proc file whole, in as few reads as it takes: one, plus the one
/// that sees the end, for a status file under 4 KiB. (`fs::read_to_string`
/// sees size 0, stats the file and grows its buffer from 32 bytes: eight
/// reads of `/proc/<pid>/status`, each a system call; the portserver
/// endpoint reads one per request.)
fn read_proc_file(path: &str) -> io::Result<Vec<u8>> {
    let fd = rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity());
        }
        match rustix::io::read(&fd, rustix::buffer::spare_capacity(&mut buf)) {
            Ok(0) => return Ok(buf),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether process `pid` is in the calling process's pid namespace (its
/// `/proc/<pid>/ns/pid` is ours). One `stat`, where reading its `NSpid:`
/// from `/proc/<pid>/status` costs the kernel a whole status report. `false`
/// when it cannot tell (then ask `process_ids`).
pub fn in_own_pid_namespace(pid: i32) -> bool {
    static OWN: std::sync::OnceLock<Option<(u64, u64)>> = std::sync::OnceLock::new();
    let ns = |path: &str| rustix::fs::stat(path).ok().map(|st| (st.st_dev, st.st_ino));
    match OWN.get_or_init(|| ns("/proc/self/ns/pid")) {
        Some(own) => ns(&format!("/proc/{pid}/ns/pid")).as_ref() == Some(own),
        None => false,
    }
}

fn parse_status(status: &str, pid: i32) -> Option<ProcessIds> {
    let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name));
    let mut ids = field("Uid:")?.split_whitespace().map(|f| f.parse::<u32>());
    let real_uid = ids.next()?.ok()?;
    let effective_uid = ids.next()?.ok()?;
    let ns_pid = match field("NSpid:") {
        Some(line) => line.split_whitespace().last()?.parse().ok()?,
        None => pid,
    };
    Some(ProcessIds {
        real_uid,
        effective_uid,
        ns_pid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_uid_line() {
        let s = "Name:\tsh\nUid:\t1000\t1001\t1000\t1000\nNSpid:\t4242\t7\n";
        let ids = ProcessIds {
            real_uid: 1000,
            effective_uid: 1001,
            ns_pid: 7,
        };
        assert_eq!(parse_status(s, 4242), Some(ids));
        let old_kernel = "Uid:\t1000\t1001\t1000\t1000\n";
        assert_eq!(parse_status(old_kernel, 9).map(|i| i.ns_pid), Some(9));
        assert_eq!(parse_status("Name: x\n", 1), None);
        assert_eq!(parse_status("Uid:\tx\t1\n", 1), None);
    }

    #[test]
    fn our_own_process() {
        let fd = open_pidfd(std::process::id() as i32).unwrap();
        assert!(!pidfd_exited(&fd));
        let ids = process_ids(std::process::id() as i32).unwrap();
        assert_eq!(ids.real_uid, rustix::process::getuid().as_raw());
        assert_eq!(ids.effective_uid, rustix::process::geteuid().as_raw());
        assert!(open_pidfd(0).is_err());
        assert!(in_own_pid_namespace(std::process::id() as i32));
        assert!(!in_own_pid_namespace(i32::MAX));
    }

    #[test]
    fn uids_from_the_pidfd_agree_with_proc() {
        let me = std::process::id() as i32;
        let fd = open_pidfd(me).unwrap();
        let ids = process_ids(me).unwrap();
        match pidfd_uids(&fd).unwrap() {
            Some(uids) => assert_eq!(uids, (ids.real_uid, ids.effective_uid)),
            // An older kernel than 6.13: nothing to compare.
            None => eprintln!("PIDFD_GET_INFO not supported by this kernel"),
        }
    }

    #[test]
    fn uids_of_a_reaped_child_are_an_error() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = open_pidfd(child.id() as i32).unwrap();
        child.wait().unwrap();
        if let Ok(Some(uids)) = pidfd_uids(&fd) {
            panic!("a reaped process still has uids {uids:?}");
        }
    }

    #[test]
    fn an_exited_child() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = open_pidfd(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert!(pidfd_exited(&fd));
    }
}
