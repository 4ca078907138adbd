//! Processes named by pid: a pidfd that stays bound to one process (and
//! becomes readable when it exits), and who that process is (its real and
//! effective uid, its pid in its own pid namespace). For the portserver endpoint, whose requests name
//! the process a port belongs to.
//!
//! Pid reuse: open the pidfd first, read the process's identity from
//! `/proc/<pid>` second, and check the pidfd still says "running" third;
//! then what was read belongs to the process the pidfd refers to (a pid is
//! only reused after its process exited, which the pidfd would show).

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
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_status(&status, pid).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/status has no readable Uid: line"),
        )
    })
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
    }

    #[test]
    fn an_exited_child() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let fd = open_pidfd(child.id() as i32).unwrap();
        child.wait().unwrap();
        assert!(pidfd_exited(&fd));
    }
}
