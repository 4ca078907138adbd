//! Session capabilities: anonymous files whose identity the daemon
//! recognises when a client presents a descriptor for one.
//!
//! This module owns creating them and reading a descriptor's file identity.
//! Which sessions exist and what a capability grants are the daemon's
//! business.
//!
//! Why an anonymous file: the daemon hands the client a descriptor over
//! SCM_RIGHTS; the client can pass it on (to a child, or another process it
//! trusts) and any holder can present it on a new connection. Nobody can
//! make one up: `memfd_create` gives a fresh inode, and the only ways to
//! reach it are a descriptor to it or `/proc/<pid>/fd` of a holder, which
//! needs the right to inspect that process (same user, or root) — no more
//! than a holder could give away anyway.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};

use rustix::fs::MemfdFlags;

/// The name a capability shows in `/proc/<pid>/fd` (as `/memfd:portres-session`).
pub const CAPABILITY_NAME: &str = "portres-session";

/// A session capability: an anonymous file (memfd_create, MFD_CLOEXEC, name
/// "portres-session") whose identity (st_dev, st_ino from fstat) the daemon
/// recognises when a descriptor for it is presented over another
/// connection. Unforgeable: only holders of a descriptor to the same open
/// file can present it.
pub fn new_capability() -> io::Result<OwnedFd> {
    Ok(rustix::fs::memfd_create(
        CAPABILITY_NAME,
        MemfdFlags::CLOEXEC,
    )?)
}

/// The identity of a file: equal for every descriptor of the same file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId {
    /// The device the file is on (`st_dev`).
    pub dev: u64,
    /// The inode number on that device (`st_ino`).
    pub ino: u64,
}

/// The identity of the file `fd` refers to (from fstat).
pub fn file_id(fd: BorrowedFd<'_>) -> io::Result<FileId> {
    let stat = rustix::fs::fstat(fd)?;
    Ok(FileId {
        dev: stat.st_dev,
        ino: stat.st_ino,
    })
}
