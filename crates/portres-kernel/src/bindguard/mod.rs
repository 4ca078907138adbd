//! The bind guard: cgroup bind hooks that refuse an explicit `bind()` into
//! a guarded port to everyone but the port's allowed binders (strict mode,
//! issue 10).
//!
//! This module owns the eBPF map of guarded ports, the `cgroup/bind4` and
//! `cgroup/bind6` programs that read it ([`program`], hand-assembled;
//! C equivalent in `bindguard.c`), loading them through raw bpf(2)
//! ([`sys`]), attaching them to a cgroup v2 directory with `bpf_link`s,
//! and probing whether all that is possible here. Which ports are guarded
//! and for whom is the daemon's business: it calls [`BindGuard::insert`]
//! and [`BindGuard::remove`] as reservations come and go.
//!
//! Lifetime: the links are held only by the guard's descriptors, never
//! pinned. Dropping the guard, or the death of the process holding it
//! (even by SIGKILL), detaches the programs: enforcement fails open, so a
//! crashed daemon never leaves binds blocked. A new guard makes new links
//! with a new map; nothing stacks.

mod insn;
mod program;
mod sys;

use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use portres_core::{Block, Protocol};

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

fn components(path: &Path) -> u32 {
    path.components()
        .filter(|c| matches!(c, std::path::Component::Normal(_)))
        .count() as u32
}

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

fn load_program(
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

fn classify_load_error(e: sys::LoadError, eacces_log: &str) -> GuardError {
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
fn check_capabilities() -> Result<(), GuardError> {
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

struct MountInfo {
    mount_point: PathBuf,
    root: PathBuf,
}

/// The cgroup v2 mount point, from /proc/self/mountinfo (the first
/// `cgroup2` entry: `/sys/fs/cgroup` on unified hosts,
/// `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_mount() -> Result<PathBuf, GuardError> {
    Ok(cgroup2_mount_info()?.mount_point)
}

fn cgroup2_mount_info() -> Result<MountInfo, GuardError> {
    let text =
        std::fs::read_to_string("/proc/self/mountinfo").map_err(|_| GuardError::NoCgroup2)?;
    parse_cgroup2_mount(&text).ok_or(GuardError::NoCgroup2)
}

/// mountinfo lines: `id parent major:minor root mount-point options
/// [optional fields] - fstype source super-options`, paths with spaces,
/// tabs, newlines and backslashes escaped as octal `\NNN`.
fn parse_cgroup2_mount(text: &str) -> Option<MountInfo> {
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

#[cfg(test)]
mod tests {
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
}
