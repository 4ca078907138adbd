//! Strict mode's side of the kernel interface: the `Enforcer` trait (who
//! may explicitly `bind()` a reserved block, per block, and the exec
//! sessions' cgroups), `LinuxEnforcer` (the bind guard of
//! `portres_kernel::bindguard`, attached to a cgroup v2 directory),
//! `NoEnforcer` (enforcement off, with the reason) and, for unit tests,
//! `FakeEnforcer`.
//!
//! A sibling of `Kernel` rather than more methods on it: enforcement is
//! decided once at start (`--enforce`) and may be absent, and the state
//! owner calls it under its lock (each call is one or a few bpf(2)
//! calls, microseconds), while `Kernel` is called outside the lock.
//! Like `Kernel`, it owns no policy: the state decides who is allowed
//! (`State::allowed_binders`).

use std::collections::HashMap;
use std::fmt;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use portres_core::{Block, Protocol};
pub use portres_kernel::bindguard::{AllowedBinders, CgroupRef};
use portres_kernel::bindguard::{BindGuard, GuardError};

/// Whether explicit binds into reserved blocks are enforced, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// The bind hooks are attached to this cgroup v2 directory.
    Strict {
        /// The cgroup directory the hooks judge (its whole subtree).
        cgroup: PathBuf,
    },
    /// Not enforced.
    Off {
        /// Why: `--enforce off`, or what made `auto` fall back.
        reason: String,
    },
}

impl Enforcement {
    /// "strict" or "off".
    pub fn as_str(&self) -> &'static str {
        match self {
            Enforcement::Strict { .. } => "strict",
            Enforcement::Off { .. } => "off",
        }
    }
}

/// Who may bind which reserved block, as the kernel enforces it.
pub trait Enforcer: Send + Sync + fmt::Debug {
    /// On or off, and why.
    fn enforcement(&self) -> &Enforcement;

    /// Guards every port of `block` for `protocol` in the network namespace
    /// `netns_cookie`, allowing `allowed` (replacing an earlier entry). On
    /// failure nothing of the block is guarded.
    fn guard(
        &self,
        protocol: Protocol,
        block: Block,
        netns_cookie: u64,
        allowed: &AllowedBinders,
    ) -> Result<(), String>;

    /// Stops guarding `block`. Best effort: a stale entry only refuses
    /// strangers a port nobody holds until it is reserved again.
    fn unguard(&self, protocol: Protocol, block: Block, netns_cookie: u64);

    /// Makes the cgroup of exec session `session` and moves the process
    /// `pidfd` names into it, once it is checked to be the process
    /// `peer.0` running as effective uid `peer.1` (the connection's peer).
    fn enter_session_cgroup(
        &self,
        session: u64,
        pidfd: BorrowedFd<'_>,
        peer: (i32, u32),
    ) -> Result<CgroupRef, String>;

    /// The session's cgroup is no longer needed: its leftover processes
    /// go back to the cgroup it was made in, and it is removed, now or by
    /// a reaper thread once the exec process has finished exiting.
    fn remove_session_cgroup(&self, session: u64);
}

/// Enforcement off: every call succeeds and does nothing.
#[derive(Debug)]
pub struct NoEnforcer(Enforcement);

impl NoEnforcer {
    /// Off, for `reason`.
    pub fn new(reason: impl Into<String>) -> NoEnforcer {
        NoEnforcer(Enforcement::Off {
            reason: reason.into(),
        })
    }
}

impl Enforcer for NoEnforcer {
    fn enforcement(&self) -> &Enforcement {
        &self.0
    }

    fn guard(&self, _: Protocol, _: Block, _: u64, _: &AllowedBinders) -> Result<(), String> {
        Ok(())
    }

    fn unguard(&self, _: Protocol, _: Block, _: u64) {}

    fn enter_session_cgroup(
        &self,
        _: u64,
        _: BorrowedFd<'_>,
        _: (i32, u32),
    ) -> Result<CgroupRef, String> {
        Err("enforcement is off: exec sessions need no cgroup".into())
    }

    fn remove_session_cgroup(&self, _: u64) {}
}

/// Most ended sessions' cgroups kept for a later removal attempt.
const MAX_LINGERING: usize = 1024;

/// The real bind guard, attached.
#[derive(Debug)]
pub struct LinuxEnforcer {
    guard: BindGuard,
    enforcement: Enforcement,
    /// The cgroup v2 mount point.
    mount: PathBuf,
    /// The exec sessions' cgroups, by session.
    sessions: Mutex<HashMap<u64, PathBuf>>,
    /// Session cgroups that were still busy when their session ended.
    lingering: Arc<Lingering>,
    /// Where the session cgroups made are listed, for the next daemon.
    record: Option<SessionRecord>,
}

/// The list of session cgroups a daemon made (`<state dir>/session-cgroups`,
/// one path a line): a SIGKILLed daemon cannot remove its sessions'
/// cgroups, and they sit below each caller's own cgroup, anywhere in the
/// hierarchy; the next daemon removes those listed (`LinuxEnforcer::sweep`).
/// Not fsynced: cgroups do not outlive a reboot, and page-cache writes
/// outlive a process. Appended to as sessions are made; written anew from
/// the live and lingering ones when it holds more than twice as many.
#[derive(Debug)]
struct SessionRecord {
    path: PathBuf,
    /// Lines in the file now.
    lines: std::sync::atomic::AtomicUsize,
    /// A write failed and was logged (once: a read-only state directory
    /// would otherwise log at every exec).
    warned: std::sync::atomic::AtomicBool,
}

impl SessionRecord {
    /// Appends `dir` (one write).
    fn append(&self, dir: &Path) {
        use std::io::Write;
        let line = format!("{}\n", dir.display());
        let written = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        match written {
            Ok(()) => {
                self.lines
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => self.warn_once(|| {
                format!(
                    "cannot list the session cgroup {} in {}: {e} (a daemon after a crash will not remove it)",
                    dir.display(),
                    self.path.display()
                )
            }),
        }
    }

    fn warn_once(&self, what: impl FnOnce() -> String) {
        if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            log::warn!("{}", what());
        }
    }

    /// Writes the list anew as `dirs` (a new file renamed over the old).
    fn rewrite(&self, dirs: &[PathBuf]) {
        use std::io::Write;
        let tmp = self.path.with_extension("new");
        let mut text = String::new();
        for d in dirs {
            text.push_str(&format!("{}\n", d.display()));
        }
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        match written {
            Ok(()) => self
                .lines
                .store(dirs.len(), std::sync::atomic::Ordering::Relaxed),
            Err(e) => self.warn_once(|| format!("cannot write {}: {e}", self.path.display())),
        }
    }
}

/// Longest session-cgroup list read at start (the file is the daemon's own;
/// a bound all the same).
const MAX_RECORD: u64 = 4 << 20;

/// Whether `dir` can be a session cgroup a daemon made: below the cgroup v2
/// mount, no `..`, named `portres-<pid>-<session>`. Only such a directory
/// is ever removed, or its processes moved, at a sweep.
fn is_session_cgroup(dir: &Path, mount: &Path) -> bool {
    use std::path::Component;
    let name_ok = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("portres-"))
        .and_then(|rest| rest.split_once('-'))
        .is_some_and(|(pid, session)| {
            !pid.is_empty()
                && !session.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && session.bytes().all(|b| b.is_ascii_digit())
        });
    name_ok
        && dir.starts_with(mount)
        && dir != mount
        && dir
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// Ended sessions' cgroups that could not be removed yet, retried by a
/// reaper thread while there are any: a session ends when its exec
/// process closes its connection, which it does while exiting, still a
/// member of the cgroup, so the first removal attempt mostly fails.
#[derive(Debug, Default)]
struct Lingering {
    queue: Mutex<LingerQueue>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct LingerQueue {
    dirs: Vec<PathBuf>,
    /// A reaper thread runs.
    reaper: bool,
    /// The enforcer is dropped: the reaper ends.
    stop: bool,
}

/// The reaper's first wait; it doubles up to `REAPER_MAX_WAIT` while
/// cgroups stay busy.
const REAPER_FIRST_WAIT: Duration = Duration::from_millis(20);
const REAPER_MAX_WAIT: Duration = Duration::from_secs(10);

impl Lingering {
    /// Queues `dir` and makes sure a reaper retries it.
    fn push(self: &Arc<Self>, dir: PathBuf) {
        let mut q = unpoison(self.queue.lock());
        // Bounded: only cgroups whose processes could not be moved out
        // wait here (cgroups below one, which only root can make, keep
        // theirs); past the bound one is left to whoever ends them.
        if q.dirs.len() >= MAX_LINGERING {
            let given_up = q.dirs.remove(0);
            log::info!(
                "leaving the busy exec cgroup {} (more than {MAX_LINGERING} wait for removal)",
                given_up.display()
            );
        }
        q.dirs.push(dir);
        if !q.reaper && !q.stop {
            let me = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("portres-cgroups".into())
                .spawn(move || me.reap());
            // Without a thread: retried at the next session's end.
            q.reaper = spawned.is_ok();
        }
    }

    /// Removes what it can now (moving leftover processes out first if
    /// `move_out`); keeps the rest.
    fn retry(&self, move_out: bool) {
        let dirs = std::mem::take(&mut unpoison(self.queue.lock()).dirs);
        let left: Vec<PathBuf> = dirs
            .into_iter()
            .filter(|p| !remove_session_dir(p, move_out) && p.exists())
            .collect();
        unpoison(self.queue.lock()).dirs.extend(left);
    }

    /// The reaper thread: retries, waiting longer each round, until the
    /// queue is empty or the enforcer is dropped.
    fn reap(&self) {
        let mut wait = REAPER_FIRST_WAIT;
        loop {
            {
                let q = unpoison(self.queue.lock());
                let (mut q, _) = unpoison(self.wake.wait_timeout(q, wait));
                if q.stop || q.dirs.is_empty() {
                    q.reaper = false;
                    return;
                }
            }
            self.retry(true);
            wait = (wait * 2).min(REAPER_MAX_WAIT);
        }
    }
}

impl LinuxEnforcer {
    /// Loads the guard and attaches it to `cgroup` (the cgroup v2 root
    /// when `None`). `record`: the file listing the session cgroups made
    /// (in the daemon's locked state directory); those an earlier daemon
    /// listed and left are removed (`sweep`).
    pub fn attach(
        cgroup: Option<&Path>,
        record: Option<PathBuf>,
    ) -> Result<LinuxEnforcer, GuardError> {
        let mut guard = BindGuard::load()?;
        let mount = portres_kernel::bindguard::cgroup2_mount()?;
        let at = cgroup.map_or_else(|| mount.clone(), Path::to_path_buf);
        guard.attach(&at)?;
        let enforcer = LinuxEnforcer {
            guard,
            enforcement: Enforcement::Strict { cgroup: at },
            mount,
            sessions: Mutex::new(HashMap::new()),
            lingering: Arc::new(Lingering::default()),
            record: record.map(|path| SessionRecord {
                path,
                lines: std::sync::atomic::AtomicUsize::new(0),
                warned: std::sync::atomic::AtomicBool::new(false),
            }),
        };
        enforcer.sweep();
        Ok(enforcer)
    }

    /// At start, no session is ours yet: every session cgroup listed is an
    /// earlier daemon's (one SIGKILLed, or whose cgroups were still busy at
    /// its stop). Those still there are removed now or by the reaper
    /// (their processes moved back to the parent first), and stay listed
    /// until they are gone.
    fn sweep(&self) {
        let Some(record) = &self.record else { return };
        let text = match std::fs::File::open(&record.path) {
            Ok(f) => {
                use std::io::Read;
                let mut text = String::new();
                if let Err(e) = f.take(MAX_RECORD).read_to_string(&mut text) {
                    log::warn!("cannot read {}: {e}", record.path.display());
                }
                text
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                log::warn!("cannot read {}: {e}", record.path.display());
                String::new()
            }
        };
        let left: Vec<PathBuf> = text
            .lines()
            .map(PathBuf::from)
            .filter(|d| is_session_cgroup(d, &self.mount) && d.is_dir())
            .collect();
        if !left.is_empty() {
            log::info!(
                "removing {} exec session cgroup(s) an earlier daemon left",
                left.len()
            );
        }
        let pending: Vec<PathBuf> = left
            .into_iter()
            .filter(|d| !remove_session_dir(d, true) && d.exists())
            .collect();
        record.rewrite(&pending);
        for d in pending {
            self.lingering.push(d);
        }
    }

    /// Lists a session cgroup about to be made; writes the list anew when
    /// it has grown past twice what is live.
    fn record_made(&self, dir: &Path) {
        let Some(record) = &self.record else { return };
        let lines = record.lines.load(std::sync::atomic::Ordering::Relaxed);
        let live =
            unpoison(self.sessions.lock()).len() + unpoison(self.lingering.queue.lock()).dirs.len();
        if lines > 2 * live + 64 {
            record.rewrite(&self.live_dirs());
        }
        record.append(dir);
    }

    /// The session cgroups that may still exist: the live sessions' and
    /// the lingering ones.
    fn live_dirs(&self) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = unpoison(self.sessions.lock()).values().cloned().collect();
        dirs.extend(unpoison(self.lingering.queue.lock()).dirs.iter().cloned());
        dirs
    }

    /// Under the state lock: removals only (moving a cgroup's processes
    /// out costs a few system calls per process, which a user with many
    /// would make everyone wait for; the reaper does that).
    fn retry_lingering(&self) {
        self.lingering.retry(false);
    }
}

fn unpoison<T>(r: std::sync::LockResult<T>) -> T {
    r.unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Drop for LinuxEnforcer {
    /// A clean stop: the links close with the guard (detaching the
    /// programs); the sessions' cgroups go if they are empty.
    fn drop(&mut self) {
        let dirs: Vec<PathBuf> = unpoison(self.sessions.lock())
            .drain()
            .map(|(_, d)| d)
            .collect();
        {
            let mut q = unpoison(self.lingering.queue.lock());
            q.stop = true;
            q.dirs.extend(dirs);
        }
        self.lingering.wake.notify_all();
        self.lingering.retry(true);
        // What is still busy stays listed, for the next daemon.
        if let Some(record) = &self.record {
            record.rewrite(&unpoison(self.lingering.queue.lock()).dirs);
        }
    }
}

/// Removes an ended session's cgroup, its leftover processes (a command's
/// background processes) moved back to the cgroup exec came from first:
/// they may bind nothing of the session any more, and an empty cgroup is
/// left behind by nobody (`move_out`: off the state lock only). Whether it
/// is gone.
fn remove_session_dir(dir: &Path, move_out: bool) -> bool {
    if std::fs::remove_dir(dir).is_ok() {
        return true;
    }
    if !move_out {
        return false;
    }
    if let Err(e) = portres_kernel::bindguard::move_out_to_parent(dir) {
        log::debug!(
            "moving the processes of {} to its parent: {e}",
            dir.display()
        );
    }
    std::fs::remove_dir(dir).is_ok()
}

/// The effective uid of process `pid` (/proc/PID/status).
fn effective_uid(pid: i32) -> Result<u32, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read the caller's status: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1)?.parse().ok())
        .ok_or_else(|| format!("no Uid line in /proc/{pid}/status"))
}

/// The cgroup directory of process `pid` (its /proc/PID/cgroup `0::`
/// line, under `mount`).
fn cgroup_of(pid: i32, mount: &Path) -> Result<PathBuf, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map_err(|e| format!("cannot read the caller's cgroup: {e}"))?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or("the caller is in no cgroup v2 cgroup")?;
    if rel.split('/').any(|c| c == "..") {
        return Err(format!("the caller's cgroup {rel:?} is not a plain path"));
    }
    Ok(mount.join(rel.trim_start_matches('/')))
}

impl Enforcer for LinuxEnforcer {
    fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    fn guard(
        &self,
        protocol: Protocol,
        block: Block,
        netns_cookie: u64,
        allowed: &AllowedBinders,
    ) -> Result<(), String> {
        self.guard
            .insert(block, protocol, netns_cookie, allowed)
            .map_err(|e| e.to_string())
    }

    fn unguard(&self, protocol: Protocol, block: Block, netns_cookie: u64) {
        if let Err(e) = self.guard.remove(block, protocol, netns_cookie) {
            log::warn!("could not unguard {protocol} {block}: {e}");
        }
    }

    /// The session's cgroup is made below the caller's own cgroup, so
    /// the caller stays under every limit it was under (a cgroup of the
    /// daemon's would let a user escape its slice's memory or pid limits).
    fn enter_session_cgroup(
        &self,
        session: u64,
        pidfd: BorrowedFd<'_>,
        (peer_pid, peer_uid): (i32, u32),
    ) -> Result<CgroupRef, String> {
        self.retry_lingering();
        // A pid reused by another user's process (the peer exited, its
        // connection lives on elsewhere) is not the caller.
        let euid = effective_uid(peer_pid)?;
        if euid != peer_uid {
            return Err(format!(
                "pid {peer_pid} runs as uid {euid}, not as the caller (uid {peer_uid})"
            ));
        }
        let parent = cgroup_of(peer_pid, &self.mount)?;
        let dir = parent.join(format!("portres-{}-{session}", std::process::id()));
        // Only a cgroup made here and now: one that exists already was made
        // by whoever may write the caller's cgroup (its user, in a
        // delegated one) or left busy by an earlier daemon of the same pid,
        // and the processes in it would be allowed the session's blocks.
        // An empty one is replaced; a busy one is refused.
        // Listed before it exists: a SIGKILL in between leaves a line
        // naming nothing (skipped at the sweep), never a cgroup unlisted.
        self.record_made(&dir);
        match std::fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::remove_dir(&dir)
                    .and_then(|()| std::fs::create_dir(&dir))
                    .map_err(|e| {
                        format!(
                            "the cgroup {} exists already (not made for this session) and cannot be replaced: {e}",
                            dir.display()
                        )
                    })?;
            }
            Err(e) => return Err(format!("cannot create the cgroup {}: {e}", dir.display())),
        }
        let made = CgroupRef::of_dir(&dir)
            .map_err(|e| e.to_string())
            .and_then(|cgroup| {
                portres_kernel::bindguard::move_into_cgroup(&dir, pidfd, peer_pid)
                    .map(|()| cgroup)
                    .map_err(|e| format!("cannot move the caller into {}: {e}", dir.display()))
            });
        match made {
            Ok(cgroup) => {
                unpoison(self.sessions.lock()).insert(session, dir);
                Ok(cgroup)
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    fn remove_session_cgroup(&self, session: u64) {
        if let Some(dir) = unpoison(self.sessions.lock()).remove(&session)
            && !remove_session_dir(&dir, false)
            && dir.exists()
        {
            self.lingering.push(dir);
        }
    }
}

/// Enforcement in memory, for unit tests: the guarded blocks, the session
/// cgroups made, and a switch that makes the next guards fail.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct FakeEnforcer {
    pub(crate) state: std::sync::Arc<Mutex<FakeEnforcerState>>,
}

/// What `FakeEnforcer` holds.
#[cfg(test)]
#[derive(Debug, Default)]
pub(crate) struct FakeEnforcerState {
    /// Guarded blocks and who may bind them.
    pub(crate) guarded: std::collections::BTreeMap<(Protocol, u16, u16), AllowedBinders>,
    /// Make `guard` fail (a full or broken map).
    pub(crate) fail: bool,
    /// Make the next this many `guard` calls fail.
    pub(crate) fail_next: usize,
    /// Sessions with a cgroup.
    pub(crate) cgroups: std::collections::BTreeSet<u64>,
}

#[cfg(test)]
impl Enforcer for FakeEnforcer {
    fn enforcement(&self) -> &Enforcement {
        static STRICT: std::sync::OnceLock<Enforcement> = std::sync::OnceLock::new();
        STRICT.get_or_init(|| Enforcement::Strict {
            cgroup: PathBuf::from("/fake"),
        })
    }

    fn guard(
        &self,
        protocol: Protocol,
        block: Block,
        _: u64,
        allowed: &AllowedBinders,
    ) -> Result<(), String> {
        let mut s = self.state.lock().unwrap();
        if s.fail || s.fail_next > 0 {
            s.fail_next = s.fail_next.saturating_sub(1);
            // As `BindGuard::insert`: what a failed call wrote is deleted
            // again, so a replaced entry is gone (the worst case: all of
            // the block written, then a failure).
            s.guarded.remove(&(protocol, block.start(), block.count()));
            return Err("fake: the map refuses".into());
        }
        s.guarded
            .insert((protocol, block.start(), block.count()), *allowed);
        Ok(())
    }

    fn unguard(&self, protocol: Protocol, block: Block, _: u64) {
        let mut s = self.state.lock().unwrap();
        s.guarded.remove(&(protocol, block.start(), block.count()));
    }

    fn enter_session_cgroup(
        &self,
        session: u64,
        _: BorrowedFd<'_>,
        _: (i32, u32),
    ) -> Result<CgroupRef, String> {
        self.state.lock().unwrap().cgroups.insert(session);
        Ok(CgroupRef {
            id: 1000 + session,
            level: 2,
        })
    }

    fn remove_session_cgroup(&self, session: u64) {
        self.state.lock().unwrap().cgroups.remove(&session);
    }
}

#[cfg(test)]
mod record_tests {
    use super::*;

    #[test]
    fn only_session_cgroups_below_the_mount_are_swept() {
        let mount = Path::new("/sys/fs/cgroup");
        for ok in [
            "/sys/fs/cgroup/user.slice/portres-12-0",
            "/sys/fs/cgroup/a/b/portres-4242-17",
        ] {
            assert!(is_session_cgroup(Path::new(ok), mount), "{ok}");
        }
        for bad in [
            "/sys/fs/cgroup",
            "/sys/fs/cgroup/user.slice",
            "/sys/fs/cgroup/portres-12",
            "/sys/fs/cgroup/portres--1",
            "/sys/fs/cgroup/portres-x-1",
            "/sys/fs/cgroup/portres-12-1x",
            "/sys/fs/cgroup/../cgroup/portres-12-0",
            "/tmp/portres-12-0",
            "sys/fs/cgroup/portres-12-0",
        ] {
            assert!(!is_session_cgroup(Path::new(bad), mount), "{bad}");
        }
    }

    #[test]
    fn the_list_is_appended_to_and_written_anew() {
        let dir = tempfile::tempdir().unwrap();
        let record = SessionRecord {
            path: dir.path().join("session-cgroups"),
            lines: std::sync::atomic::AtomicUsize::new(0),
            warned: std::sync::atomic::AtomicBool::new(false),
        };
        record.append(Path::new("/sys/fs/cgroup/portres-1-0"));
        record.append(Path::new("/sys/fs/cgroup/portres-1-1"));
        assert_eq!(
            std::fs::read_to_string(&record.path).unwrap(),
            "/sys/fs/cgroup/portres-1-0\n/sys/fs/cgroup/portres-1-1\n"
        );
        record.rewrite(&[PathBuf::from("/sys/fs/cgroup/portres-1-1")]);
        assert_eq!(
            std::fs::read_to_string(&record.path).unwrap(),
            "/sys/fs/cgroup/portres-1-1\n"
        );
        assert_eq!(record.lines.load(std::sync::atomic::Ordering::Relaxed), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&record.path)
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        record.rewrite(&[]);
        assert_eq!(std::fs::read_to_string(&record.path).unwrap(), "");
    }
}
