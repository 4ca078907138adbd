//! Who is on the other end of a Unix socket: the peer's user, group,
//! process and supplementary groups, as the kernel recorded them.
//!
//! This module owns reading `SO_PEERCRED` and `SO_PEERGROUPS`, for the
//! daemon (who is calling) and the clients (who answered) alike. What a
//! caller may do with those credentials is policy, in `portres-core`.
//!
//! The kernel records the credentials when the connection is made
//! (`connect()`, or `socketpair()`), not when they are asked for: a peer
//! that changes its uid or groups later is still seen with the old ones.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The process on the other end of a Unix socket (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerProcess {
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
    /// The peer's process id in our pid namespace; 0 when the peer's
    /// process is not visible there.
    pub pid: i32,
}

/// The credentials of a Unix socket's peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerCreds {
    /// The peer's effective user id.
    pub uid: u32,
    /// The peer's effective group id.
    pub gid: u32,
    /// The peer's process id in our pid namespace; 0 when the peer's
    /// process is not visible there.
    pub pid: i32,
    /// The peer's supplementary groups (which may or may not include
    /// `gid`), in the kernel's order.
    pub groups: Vec<u32>,
}

/// SO_PEERCRED plus SO_PEERGROUPS (supplementary groups; the buffer grows
/// on ERANGE) of a connected Unix socket.
///
/// On kernels without SO_PEERGROUPS (before 4.13) `groups` is empty, which
/// grants nothing a group would grant: access fails closed.
pub fn peer_creds(fd: BorrowedFd<'_>) -> io::Result<PeerCreds> {
    let process = peer_process(fd)?;
    Ok(PeerCreds {
        uid: process.uid,
        gid: process.gid,
        pid: process.pid,
        groups: peer_groups(fd)?,
    })
}

/// SO_PEERCRED alone: who the peer is, without its supplementary groups.
pub fn peer_process(fd: BorrowedFd<'_>) -> io::Result<PeerProcess> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a live, writable ucred and `len` is its exact size,
    // so the kernel writes at most that many bytes into it; `fd` is a valid
    // descriptor for the duration of the call.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != mem::size_of::<libc::ucred>() {
        return Err(io::Error::other(format!(
            "SO_PEERCRED returned {len} bytes, expected {}",
            mem::size_of::<libc::ucred>()
        )));
    }
    // Why pid is taken as is: rustix's `UCred` holds a non-zero `Pid`, but
    // the kernel reports 0 for a peer in a pid namespace we cannot see.
    Ok(PeerProcess {
        uid: cred.uid,
        gid: cred.gid,
        pid: cred.pid,
    })
}

/// SO_PEERGROUPS, growing the buffer until the list fits.
fn peer_groups(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let capacity = groups.len() * mem::size_of::<libc::gid_t>();
        let mut len = libc::socklen_t::try_from(capacity)
            .map_err(|_| io::Error::other("SO_PEERGROUPS: group list too long"))?;
        // SAFETY: `groups` owns `capacity` writable bytes and `len` says so;
        // the kernel writes at most `len` bytes and updates `len`. `fd` is a
        // valid descriptor for the duration of the call.
        let rc = unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc == 0 {
            let count = len as usize / mem::size_of::<libc::gid_t>();
            groups.truncate(count);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            // Why: on ERANGE the kernel sets `len` to the size it needs. The
            // list can grow between the calls, so loop rather than trust one
            // retry; never shrink, so this always makes progress.
            Some(libc::ERANGE) => {
                let needed = (len as usize).div_ceil(mem::size_of::<libc::gid_t>());
                let grown = needed.max(groups.len() * 2);
                groups.resize(grown, 0);
            }
            Some(libc::ENOPROTOOPT) => return Ok(Vec::new()),
            _ => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    use super::*;

    #[test]
    fn peer_creds_of_a_socket_pair_are_ours() {
        let (a, _b) = UnixStream::pair().expect("socketpair");
        let creds = peer_creds(a.as_fd()).expect("peer creds");
        assert_eq!(creds.uid, rustix::process::getuid().as_raw());
        assert_eq!(creds.gid, rustix::process::getgid().as_raw());
        assert_eq!(creds.pid, std::process::id() as i32);
        assert_eq!(
            peer_process(a.as_fd()).expect("peer process"),
            PeerProcess {
                uid: creds.uid,
                gid: creds.gid,
                pid: creds.pid
            }
        );
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let mut ours: Vec<u32> = status
            .lines()
            .find_map(|l| l.strip_prefix("Groups:"))
            .expect("Groups line")
            .split_whitespace()
            .map(|g| g.parse().expect("gid"))
            .collect();
        let mut theirs = creds.groups.clone();
        ours.sort_unstable();
        theirs.sort_unstable();
        assert_eq!(theirs, ours);
    }

    #[test]
    fn peer_creds_of_a_socket_without_a_peer_fail() {
        // The kernel answers SO_PEERCRED with pid 0 and uid/gid -1 but refuses
        // SO_PEERGROUPS with ENODATA: no peer, no credentials.
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        assert!(peer_creds(udp.as_fd()).is_err());
    }
}
