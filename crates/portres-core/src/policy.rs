//! Who may do what. The daemon judges callers only by credentials the kernel
//! vouches for (SO_PEERCRED, SO_PEERGROUPS); this module turns those into
//! decisions and never sees anything a client merely claims.

use std::fmt;

/// A connected client as the kernel describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Effective uid of the peer at connect time.
    pub uid: u32,
    /// Effective gid of the peer at connect time.
    pub gid: u32,
    /// Supplementary groups of the peer.
    pub groups: Vec<u32>,
    /// Pid of the peer at connect time (shown in `list`; never grants
    /// anything by itself — EnterCgroup only checks that a pidfd the
    /// client sent names it).
    pub pid: i32,
    /// Whether the daemon's configuration makes this caller an administrator
    /// (root, the daemon's own user in user mode, or a member of the admin
    /// group). Decided by the daemon from the fields above.
    pub admin: bool,
}

impl Caller {
    /// Whether the caller is in group `gid` (primary or supplementary).
    pub fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }

    /// Whether the caller is the owner named by `owner`.
    pub fn is_owner(&self, owner: Owner) -> bool {
        match owner {
            Owner::User(uid) => self.uid == uid,
            Owner::Group(gid) => self.in_group(gid),
        }
    }

    /// Whether the runtime quota applies to this caller (root is exempt).
    pub fn quota_applies(&self) -> bool {
        self.uid != 0
    }
}

/// The named owner of a persistent reservation: a user or a group whose
/// members may look it up and bind into it without being administrators.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Owner {
    /// A user, by uid.
    User(u32),
    /// A group, by gid.
    Group(u32),
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Owner::User(uid) => write!(f, "uid {uid}"),
            Owner::Group(gid) => write!(f, "gid {gid}"),
        }
    }
}
