//! The cgroup v2 side of the bind guard: where cgroup2 is mounted
//! (mountinfo), a cgroup directory as the program sees it (id and level),
//! and how many bind programs a cgroup has attached (BPF_PROG_QUERY).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{GuardError, sys};

/// A cgroup v2 directory as the program sees it: its id and its depth
/// (the root is level 0), for `bpf_get_current_ancestor_cgroup_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CgroupRef {
    /// The cgroup id: the directory's inode number on cgroupfs (kernfs
    /// node id, the same number since Linux 5.5 on 64-bit hosts).
    pub id: u64,
    /// Its depth below the hierarchy's root.
    pub level: u32,
}

impl CgroupRef {
    /// The cgroup at `dir`, a directory under a cgroup v2 mount.
    ///
    /// The level is the directory's depth below the mount point plus the
    /// depth of the mount's root in the hierarchy (mountinfo's root
    /// field). Inside a cgroup namespace that root shows as "/" although
    /// it is not the real root, and the level comes out too small: then
    /// the ancestor check compares the wrong ancestor and fails — it can
    /// refuse the cgroup's own processes, never allow anyone else, as
    /// cgroup ids are unique.
    pub fn of_dir(dir: &Path) -> Result<CgroupRef, GuardError> {
        let attach_err = |error: io::Error| GuardError::Attach {
            cgroup: dir.to_owned(),
            error,
        };
        let dir = dir.canonicalize().map_err(attach_err)?;
        let meta = std::fs::metadata(&dir).map_err(attach_err)?;
        let mount = cgroup2_mount_info()?;
        let below = dir.strip_prefix(&mount.mount_point).map_err(|_| {
            attach_err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "not under the cgroup v2 mount {}",
                    mount.mount_point.display()
                ),
            ))
        })?;
        let level = components(&mount.root) + components(below);
        Ok(CgroupRef {
            id: meta.ino(),
            level,
        })
    }
}

pub(super) fn components(path: &Path) -> u32 {
    path.components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count() as u32
}

pub(super) struct MountInfo {
    pub(super) mount_point: PathBuf,
    pub(super) root: PathBuf,
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (the first
/// `cgroup2` entry: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> Result<PathBuf, GuardError> {
    Ok(cgroup2_mount_info()?.mount_point)
}

pub(super) fn cgroup2_mount_info() -> Result<MountInfo, GuardError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|_| GuardError::NoCgroup2)?;
    parse_cgroup2_mount(&text).ok_or(GuardError::NoCgroup2)
}

/// mountinfo lines: `id parent major:minor root mount-point options
/// [optional fields] - fstype source super-options`, paths with spaces,
/// tabs, newlines and backslashes escaped as octal `\NNN`.
pub(super) fn parse_cgroup2_mount(text: &str) -> Option<MountInfo> {
    text.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split(' ').next()? != "cgroup2" {
            return None;
        }
        let mut fields = left.split(' ');
        let root = fields.nth(3)?;
        let mount_point = fields.next()?;
        Some(MountInfo {
            mount_point: PathBuf::from(unescape_octal(mount_point)),
            root: PathBuf::from(unescape_octal(root)),
        })
    })
}

fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let n = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(n);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How many programs are attached directly to the cgroup directory
/// `cgroup` for the bind4 and for the bind6 hook (BPF_PROG_QUERY; not
/// counting those of its ancestors). Needs the same privileges as
/// attaching.
pub fn attached_bind_programs(cgroup: &Path) -> io::Result<(u32, u32)> {
    let dir = File::open(cgroup)?;
    Ok((
        sys::prog_query_count(dir.as_fd(), sys::BPF_CGROUP_INET4_BIND)?,
        sys::prog_query_count(dir.as_fd(), sys::BPF_CGROUP_INET6_BIND)?,
    ))
}

/// Moves the process `pidfd` names into the cgroup v2 directory `dir`,
/// only if it is the process `expected_pid` (a connection's peer, from
/// SO_PEERCRED) and alive: exec sessions put themselves into their cgroup
/// this way, and nothing else can be moved.
///
/// Race-free as far as cgroup.procs allows: the pid written is the one
/// the pidfd holds (its fdinfo), checked alive before the write and again
/// after it. A pid is not reused while its process lives, so when the
/// second check passes the process moved is the one the pidfd names; when
/// it fails (the process died meanwhile) the call fails too.
pub fn move_into_cgroup(
    dir: &Path,
    pidfd: std::os::fd::BorrowedFd<'_>,
    expected_pid: i32,
) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let refused = |why: String| io::Error::new(io::ErrorKind::PermissionDenied, why);
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    let pid = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i32>().ok())
        .ok_or_else(|| refused("the descriptor is not a pidfd".into()))?;
    if pid != expected_pid {
        return Err(refused(format!(
            "the pidfd names pid {pid}, not the caller (pid {expected_pid}): only the caller itself may be moved"
        )));
    }
    let alive = || pidfd_alive(pidfd);
    if pid <= 0 || !alive()? {
        return Err(refused(format!(
            "the caller (pid {expected_pid}) has exited"
        )));
    }
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())?;
    if !alive()? {
        return Err(refused(format!(
            "the caller (pid {expected_pid}) exited while it was moved"
        )));
    }
    Ok(())
}

/// Moves every process of the cgroup v2 directory `dir` into its parent
/// (an ended exec session's leftovers go back to the cgroup they came
/// from), so that `dir` can be removed. Each pid is checked, through a
/// pidfd opened first, to still be a live process of `dir` right before
/// it is written, so a pid that exited and was reused meanwhile is not
/// moved. Processes of cgroups below `dir`, and ones forked during the
/// move beyond a few rounds, stay.
pub fn move_out_to_parent(dir: &Path) -> io::Result<()> {
    let parent = dir.parent().ok_or(io::ErrorKind::InvalidInput)?;
    let mount = cgroup2_mount().map_err(|e| io::Error::other(e.to_string()))?;
    let rel = dir.strip_prefix(&mount).map_err(io::Error::other)?;
    let own_line = format!("0::/{}", rel.display());
    for _ in 0..8 {
        let procs = std::fs::read_to_string(dir.join("cgroup.procs"))?;
        let pids: Vec<i32> = procs
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            let Some(p) = rustix::process::Pid::from_raw(pid) else {
                continue;
            };
            let Ok(pidfd) = rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
            else {
                continue; // exited
            };
            let here = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.lines().any(|l| l == own_line));
            if here && pidfd_alive(pidfd.as_fd()).unwrap_or(false) {
                // A process gone since: ESRCH, nothing moved.
                let _ = std::fs::write(parent.join("cgroup.procs"), pid.to_string());
            }
        }
    }
    Ok(())
}

/// Whether the process `pidfd` names has not exited yet.
fn pidfd_alive(pidfd: std::os::fd::BorrowedFd<'_>) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut pfd = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd, borrowed for the call; timeout 0. A pidfd
    // polls readable once its process has exited.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n == 0)
}
