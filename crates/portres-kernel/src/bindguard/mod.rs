//! The bind guard: cgroup bind hooks that refuse an explicit `bind()` into
//! a guarded port to everyone but the port's allowed binders (strict mode,
//! issue 10).
//!
//! This module owns the eBPF map of guarded ports, the `cgroup/bind4` and
//! `cgroup/bind6` programs that read it (`program`, hand-assembled;
//! C equivalent in `bindguard.c`), loading them through raw bpf(2)
//! (`sys`), attaching them to a cgroup v2 directory with `bpf_link`s,
//! and probing whether all that is possible here. Which ports are guarded
//! and for whom is the daemon's business: it calls [`BindGuard::insert`]
//! and [`BindGuard::remove`] as reservations come and go.
//!
//! Lifetime: the links are held only by the guard's descriptors, never
//! pinned. Dropping the guard, or the death of the process holding it
//! (even by SIGKILL), detaches the programs: enforcement fails open, so a
//! crashed daemon never leaves binds blocked. A new guard makes new links
//! with a new map; nothing stacks.

mod cgroup;
mod insn;
mod load;
mod program;
mod sys;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use portres_core::{Block, Protocol};

pub use cgroup::{
    CgroupRef, attached_bind_programs, cgroup2_mount, move_into_cgroup, move_out_to_parent,
};
use load::{check_capabilities, load_program};
pub use program::DenyErrno;
use program::{GuardKey, GuardValue};

/// Entries the map can hold: every port of both protocols in one network
/// namespace (a guard serves one daemon, which serves one namespace), so
/// the map can never fill up from reservations alone. Entries are
/// allocated on insert (BPF_F_NO_PREALLOC): an idle guard costs next to
/// nothing, a fully reserved namespace some 15 MB of kernel memory
/// (about 100 bytes of key, value and hash node per entry).
pub const MAX_GUARDED_PORTS: u32 = 2 * 65536;

/// Entries per batch system call: a bound on the kernel's temporary
/// copy of keys and values (4096 × 48 bytes).
const BATCH: usize = 4096;

/// Why the guard cannot be loaded, attached or updated.
#[derive(Debug)]
pub enum GuardError {
    /// The process lacks a privilege it needs (CAP_BPF and CAP_NET_ADMIN,
    /// or root).
    NotPermitted(String),
    /// No cgroup v2 hierarchy is mounted (nothing in /proc/self/mountinfo).
    NoCgroup2,
    /// The kernel has no usable BPF for this (bpf(2) missing, the
    /// program type unknown, a big-endian host).
    BpfUnavailable(String),
    /// The verifier refused a helper the program calls (an old kernel).
    HelperMissing {
        /// The verifier's log.
        log: String,
    },
    /// The verifier refused the program for another reason.
    VerifierRefused {
        /// The errno of BPF_PROG_LOAD.
        error: io::Error,
        /// The verifier's log.
        log: String,
    },
    /// Opening or attaching to the cgroup directory failed.
    Attach {
        /// The cgroup directory.
        cgroup: PathBuf,
        /// What failed.
        error: io::Error,
    },
    /// The guard is already attached (a guard attaches once).
    AlreadyAttached(PathBuf),
    /// The map holds [`MAX_GUARDED_PORTS`] entries.
    MapFull,
    /// Another map operation failed.
    Map(io::Error),
}

impl fmt::Display for GuardError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardError::NotPermitted(why) => write!(f, "not permitted: {why}"),
            GuardError::NoCgroup2 => {
                write!(
                    f,
                    "no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo)"
                )
            }
            GuardError::BpfUnavailable(why) => write!(f, "BPF unavailable: {why}"),
            GuardError::HelperMissing { log } => write!(
                f,
                "the kernel refuses a BPF helper the bind hooks need (Linux 5.7 or later is needed): {log}"
            ),
            GuardError::VerifierRefused { error, log } => {
                write!(f, "the BPF verifier refused the bind hook ({error}): {log}")
            }
            GuardError::Attach { cgroup, error } => {
                write!(
                    f,
                    "cannot attach the bind hooks to {}: {error}",
                    cgroup.display()
                )
            }
            GuardError::AlreadyAttached(cgroup) => {
                write!(
                    f,
                    "the bind guard is already attached to {}",
                    cgroup.display()
                )
            }
            GuardError::MapFull => write!(
                f,
                "the bind guard's map is full ({MAX_GUARDED_PORTS} entries)"
            ),
            GuardError::Map(e) => write!(f, "bind guard map: {e}"),
        }
    }
}

impl std::error::Error for GuardError {}

/// Who may bind a guarded port. Any one match allows the bind; a value
/// with nothing set allows nobody.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowedBinders {
    /// A process (thread group id): the daemon, which binds clients'
    /// sockets for them (the associate path). The id in the initial pid
    /// namespace, which is what the program sees: `std::process::id()`
    /// only when the daemon runs there (a daemon in a container's pid
    /// namespace would find its own binds refused — fail-closed).
    pub tgid: Option<u32>,
    /// A real uid (in the initial user namespace): a user owner.
    pub uid: Option<u32>,
    /// A real primary gid (supplementary groups are not visible to the
    /// program): a group owner.
    pub gid: Option<u32>,
    /// Processes in this cgroup or any cgroup below it: an exec session.
    pub cgroup: Option<CgroupRef>,
    /// Allowed binders bind ports below 1024 (ip_unprivileged_port_start)
    /// without CAP_NET_BIND_SERVICE: the program returns 3.
    pub skip_bind_service_cap: bool,
}

impl AllowedBinders {
    fn to_value(self) -> GuardValue {
        let mut v = GuardValue::default();
        if let Some(tgid) = self.tgid {
            v.flags |= program::FLAG_TGID;
            v.tgid = tgid;
        }
        if let Some(uid) = self.uid {
            v.flags |= program::FLAG_UID;
            v.uid = uid;
        }
        if let Some(gid) = self.gid {
            v.flags |= program::FLAG_GID;
            v.gid = gid;
        }
        if let Some(cg) = self.cgroup {
            v.flags |= program::FLAG_CGROUP;
            v.cgroup_id = cg.id;
            v.cgroup_level = cg.level;
        }
        if self.skip_bind_service_cap {
            v.flags |= program::FLAG_NO_CAP;
        }
        v
    }

    fn from_value(v: GuardValue) -> AllowedBinders {
        let has = |flag| v.flags & flag != 0;
        AllowedBinders {
            tgid: has(program::FLAG_TGID).then_some(v.tgid),
            uid: has(program::FLAG_UID).then_some(v.uid),
            gid: has(program::FLAG_GID).then_some(v.gid),
            cgroup: has(program::FLAG_CGROUP).then_some(CgroupRef {
                id: v.cgroup_id,
                level: v.cgroup_level,
            }),
            skip_bind_service_cap: has(program::FLAG_NO_CAP),
        }
    }
}

/// What [`probe`] found: enforcement is possible here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capable {
    /// The cgroup v2 mount point (where a daemon attaches).
    pub cgroup2: PathBuf,
    /// How refused binds fail on this kernel.
    pub deny: DenyErrno,
}

/// Whether a guard can be loaded here, and why not: privileges, a cgroup
/// v2 mount, BPF, the helpers, the verifier. Loads the programs and drops
/// them; attaches nothing.
pub fn probe() -> Result<Capable, GuardError> {
    let guard = BindGuard::load()?;
    Ok(Capable {
        cgroup2: cgroup2_mount()?,
        deny: guard.deny,
    })
}

/// The loaded programs and their map, attached to at most one cgroup.
#[derive(Debug)]
pub struct BindGuard {
    map: sys::GuardMap,
    bind4: OwnedFd,
    bind6: OwnedFd,
    deny: DenyErrno,
    /// The bind4 and bind6 links, when attached, and where.
    links: Option<(PathBuf, [OwnedFd; 2])>,
}

impl BindGuard {
    /// Checks privileges and the cgroup v2 mount, creates the map and
    /// loads both programs (the EACCES variant, or the EPERM one where the
    /// verifier refuses `bpf_set_retval`). Attaches nothing.
    pub fn load() -> Result<BindGuard, GuardError> {
        if cfg!(target_endian = "big") {
            return Err(GuardError::BpfUnavailable(
                "the bind hooks are written for little-endian hosts".into(),
            ));
        }
        check_capabilities()?;
        cgroup2_mount()?;
        let map = sys::guard_map_create(MAX_GUARDED_PORTS, sys::BPF_F_NO_PREALLOC, "portres_guard")
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EPERM) => GuardError::NotPermitted(format!(
                    "bpf(BPF_MAP_CREATE): {e}: needs CAP_BPF (or root)"
                )),
                Some(libc::ENOSYS) => GuardError::BpfUnavailable(format!("bpf(2): {e}")),
                _ => GuardError::BpfUnavailable(format!("bpf(BPF_MAP_CREATE): {e}")),
            })?;
        let (bind4, deny) = load_program(&map, sys::BPF_CGROUP_INET4_BIND, "portres_bind4")?;
        let (bind6, _) = load_program(&map, sys::BPF_CGROUP_INET6_BIND, "portres_bind6")?;
        Ok(BindGuard {
            map,
            bind4,
            bind6,
            deny,
            links: None,
        })
    }

    /// Loads and attaches to the cgroup v2 root: every socket of the
    /// machine is then judged (the daemon's mode).
    pub fn attach_to_root() -> Result<BindGuard, GuardError> {
        let mut guard = BindGuard::load()?;
        guard.attach(&cgroup2_mount()?)?;
        Ok(guard)
    }

    /// Attaches both programs to the cgroup v2 directory `cgroup` through
    /// two bpf_links (always BPF_F_ALLOW_MULTI: other programs there, such
    /// as systemd's per-unit ones, keep running). The hooks then judge
    /// every socket created in `cgroup` or below it.
    pub fn attach(&mut self, cgroup: &Path) -> Result<(), GuardError> {
        if let Some((at, _)) = &self.links {
            return Err(GuardError::AlreadyAttached(at.clone()));
        }
        let err = |error: io::Error| GuardError::Attach {
            cgroup: cgroup.to_owned(),
            error,
        };
        let dir = File::open(cgroup).map_err(err)?;
        let link4 = sys::link_create(self.bind4.as_fd(), dir.as_fd(), sys::BPF_CGROUP_INET4_BIND)
            .map_err(err)?;
        let link6 = sys::link_create(self.bind6.as_fd(), dir.as_fd(), sys::BPF_CGROUP_INET6_BIND)
            .map_err(err)?;
        self.links = Some((cgroup.to_owned(), [link4, link6]));
        Ok(())
    }

    /// Detaches both programs (closes the links); the map and its entries
    /// stay, and [`BindGuard::attach`] may attach again.
    pub fn detach(&mut self) {
        self.links = None;
    }

    /// The cgroup the programs are attached to, if they are.
    pub fn attached_to(&self) -> Option<&Path> {
        self.links.as_ref().map(|(at, _)| at.as_path())
    }

    /// How refused binds fail: EACCES, or EPERM on kernels whose bind
    /// hooks cannot set the return value.
    pub fn denies_with(&self) -> DenyErrno {
        self.deny
    }

    /// Guards every port of `block` for `protocol` in the network
    /// namespace `netns_cookie` (SO_NETNS_COOKIE), replacing any earlier
    /// entry for those ports (a lazily removed one, or a holder change).
    ///
    /// One bpf(2) call per 4096 ports (BPF_MAP_UPDATE_BATCH). On failure
    /// (out of kernel memory) no port of the block is left guarded: the
    /// entries this call wrote are deleted again, so a caller that never
    /// inserts over a live holder's ports (reservations do not overlap)
    /// finds the map as it was.
    pub fn insert(
        &self,
        block: Block,
        protocol: Protocol,
        netns_cookie: u64,
        allowed: &AllowedBinders,
    ) -> Result<(), GuardError> {
        let value = allowed.to_value();
        let keys: Vec<GuardKey> = block
            .ports()
            .map(|port| key(protocol, netns_cookie, port))
            .collect();
        let values = vec![value; BATCH.min(keys.len())];
        for (i, chunk) in keys.chunks(BATCH).enumerate() {
            let (written, error) = sys::map_update_batch(&self.map, chunk, &values[..chunk.len()]);
            if let Some(e) = error {
                let undo = &keys[..i * BATCH + written.min(chunk.len())];
                // Best effort: deleting an entry just written does not fail.
                let _ = sys::map_delete_batch(&self.map, undo);
                return Err(if e.raw_os_error() == Some(libc::E2BIG) {
                    GuardError::MapFull
                } else {
                    GuardError::Map(e)
                });
            }
        }
        Ok(())
    }

    /// Stops guarding every port of `block` for `protocol` in
    /// `netns_cookie`. Returns how many entries there were.
    pub fn remove(
        &self,
        block: Block,
        protocol: Protocol,
        netns_cookie: u64,
    ) -> Result<usize, GuardError> {
        let keys: Vec<GuardKey> = block
            .ports()
            .map(|port| key(protocol, netns_cookie, port))
            .collect();
        keys.chunks(BATCH).try_fold(0, |n, chunk| {
            Ok(n + sys::map_delete_batch(&self.map, chunk).map_err(GuardError::Map)?)
        })
    }

    /// Who may bind `port`, if it is guarded.
    pub fn allowed(
        &self,
        port: u16,
        protocol: Protocol,
        netns_cookie: u64,
    ) -> Result<Option<AllowedBinders>, GuardError> {
        let key = key(protocol, netns_cookie, port);
        let value = sys::map_lookup(&self.map, &key).map_err(GuardError::Map)?;
        Ok(value.map(AllowedBinders::from_value))
    }

    /// Detaches the programs and frees them and the map (the same as
    /// dropping the guard; named for callers that stop on purpose).
    pub fn close(self) {}
}

fn key(protocol: Protocol, netns_cookie: u64, port: u16) -> GuardKey {
    GuardKey {
        netns_cookie,
        port,
        protocol: match protocol {
            Protocol::Tcp => libc::IPPROTO_TCP as u8,
            Protocol::Udp => libc::IPPROTO_UDP as u8,
        },
        pad: [0; 5],
    }
}
