//! Declared reservations: reading the portres.d directories (sysctl.d's
//! rules, through `portres_core::declared`), resolving owner names, and
//! [`reload`], the one entry that re-reads the files and applies them —
//! called for `io.portres.Reload`, for SIGHUP (through the front) and, in
//! its unlocked form [`reload_unlocked`], at start. Applying is the
//! state's (`State::apply_declared`, in `state/declared.rs`).
//!
//! Nothing here is fatal: a directory or file that cannot be read, a bad
//! line, an unknown owner is a [`DeclaredProblem`] in the answer, the log
//! and `Status`; the rest applies. A file with problems (or that cannot be
//! read) never deletes: reservations it declared before stay until it
//! reads cleanly, so a typo never drops a reservation.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use portres_core::declared::{self as format, DirEntry, OwnerName};
use portres_core::{Block, Owner, Protocol};
use portres_proto::{DeclaredProblem, ReloadReply};

use crate::state::{State, lock};

/// Largest portres.d file read (a reservation per line: ample).
const MAX_FILE_BYTES: u64 = 1 << 20;

/// One reservation the files want, owner resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Wanted {
    pub(crate) protocol: Protocol,
    pub(crate) block: Block,
    pub(crate) owner: Option<Owner>,
    pub(crate) label: Option<String>,
    /// The file's path.
    pub(crate) file: String,
    /// Its line there.
    pub(crate) line: usize,
}

/// What reading the directories found.
#[derive(Debug, Default)]
pub(crate) struct Declared {
    /// The files read, in reading order.
    pub(crate) files: Vec<String>,
    /// What they declare, overlaps between lines already left out.
    pub(crate) wanted: Vec<Wanted>,
    /// Bad lines, overlaps between lines, unreadable files.
    pub(crate) problems: Vec<DeclaredProblem>,
    /// Files whose reservations may not be deleted now (they have
    /// problems or could not be read).
    pub(crate) keep_from: HashSet<String>,
    /// A directory could not be listed: nothing may be deleted.
    pub(crate) keep_all: bool,
}

/// A problem about `file` (and a line of it).
pub(crate) fn problem(
    file: &str,
    line: Option<usize>,
    kind: &str,
    message: impl Into<String>,
) -> DeclaredProblem {
    DeclaredProblem {
        file: file.to_string(),
        line: line.map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
        kind: kind.to_string(),
        message: message.into(),
    }
}

/// Serialises reloads (a SIGHUP and a `portres reload` at once): each reads
/// the files and applies what it read before the next one reads. Taken
/// before the state lock, never while holding it.
static RELOADING: Mutex<()> = Mutex::new(());

/// Re-reads the portres.d files and applies them: the one reload entry
/// (`io.portres.Reload`, SIGHUP). The files are read and owner names
/// resolved without the state lock; the changes are then applied under it,
/// in slices (other requests run between them), each durable on its own
/// before the next (see `state::apply_declared`).
/// `trigger` says who asked, for the log.
pub(crate) fn reload(state: &Mutex<State>, trigger: &str) -> ReloadReply {
    let _one_at_a_time = RELOADING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // The service manager sees the reload (systemctl shows "reloading"),
    // then READY=1 with the summary once it is applied.
    let notifier = crate::systemd::Notifier::from_env();
    notifier.reloading();
    let (dirs, daemon_uid) = {
        let s = lock(state);
        (s.config().config_dirs.clone(), s.config().daemon_uid)
    };
    let declared = read(&dirs, daemon_uid);
    // Applied in slices of the state lock: other requests are served
    // between the changes of a long reload.
    let reply = crate::state::apply_declared(&mut crate::state::Access::sliced(state), declared);
    let summary = crate::systemd::status_summary(&lock(state));
    log_outcome(trigger, &reply);
    notifier.ready(&summary);
    reply
}

/// `reload` on a state nobody else holds yet (at start).
pub(crate) fn reload_unlocked(state: &mut State) -> ReloadReply {
    let declared = read(&state.config().config_dirs, state.config().daemon_uid);
    let reply = state.apply_declared(declared);
    log_outcome("start", &reply);
    reply
}

fn log_outcome(trigger: &str, r: &ReloadReply) {
    log::info!(
        "portres.d ({trigger}): {} file(s), {} declared reservation(s); {} created, {} updated, {} deleted, {} problem(s)",
        r.files.len(),
        r.declared,
        r.created,
        r.updated,
        r.deleted,
        r.problems.len()
    );
    for p in &r.problems {
        let at = match p.line {
            Some(l) => format!("{}:{l}", p.file),
            None => p.file.clone(),
        };
        log::warn!("portres.d: {at}: {} ({})", p.message, p.kind);
    }
}

/// Reads `dirs` (lowest precedence first) per sysctl.d's rules.
pub(crate) fn read(dirs: &[PathBuf], daemon_uid: u32) -> Declared {
    let mut out = Declared::default();
    let mut listings = Vec::with_capacity(dirs.len());
    for dir in dirs {
        listings.push(list_dir(dir, &mut out));
    }
    let mut names = Names::default();
    let mut per_file = Vec::new();
    for (name, i) in format::effective_files(&listings) {
        let path = dirs[i].join(&name);
        let shown = path.display().to_string();
        out.files.push(shown.clone());
        let text = match read_file(&path, daemon_uid) {
            Ok(t) => t,
            Err(why) => {
                out.problems.push(problem(&shown, None, "unreadable", why));
                out.keep_from.insert(shown);
                continue;
            }
        };
        let (decls, bad) = format::parse(&text);
        let mut clean = bad.is_empty();
        for b in bad {
            out.problems
                .push(problem(&shown, Some(b.line), "bad_line", b.message));
        }
        let mut good = Vec::with_capacity(decls.len());
        for d in decls {
            match d.owner.as_ref().map(|o| names.resolve(o)).transpose() {
                Ok(_) => good.push(d),
                Err(why) => {
                    clean = false;
                    // `both` makes two declarations of one line: say it once.
                    let dup = out
                        .problems
                        .last()
                        .is_some_and(|p| p.file == shown && p.line == Some(d.line as u32));
                    if !dup {
                        out.problems
                            .push(problem(&shown, Some(d.line), "bad_line", why));
                    }
                }
            }
        }
        if !clean {
            out.keep_from.insert(shown.clone());
        }
        per_file.push((shown, good));
    }
    let (kept, overlaps) = format::combine(per_file);
    for o in overlaps {
        out.problems.push(problem(
            &o.skipped.file,
            Some(o.skipped.decl.line),
            "conflict",
            o.to_string(),
        ));
        out.keep_from.insert(o.skipped.file.clone());
    }
    for s in kept {
        let owner = s.decl.owner.as_ref().and_then(|o| names.resolve(o).ok());
        out.wanted.push(Wanted {
            protocol: s.decl.protocol,
            block: s.decl.block,
            owner,
            label: s.decl.label,
            file: s.file,
            line: s.decl.line,
        });
    }
    out
}

/// A directory's entries; a missing directory has none (as in sysctl.d),
/// one that cannot be listed is a problem that forbids deleting anything.
fn list_dir(dir: &Path, out: &mut Declared) -> Vec<DirEntry> {
    let shown = dir.display().to_string();
    let mut cannot_list = |e: std::io::Error| {
        out.problems.push(problem(
            &shown,
            None,
            "unreadable",
            format!(
                "cannot list the directory: {e}; no declared reservation is deleted until it can be"
            ),
        ));
        out.keep_all = true;
        Vec::new()
    };
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => return cannot_list(e),
    };
    let mut listing = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => return cannot_list(e),
        };
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue; // Not UTF-8: cannot be a name we read.
        };
        if !format::is_conf_name(&name) {
            continue;
        }
        let masked = is_dev_null(&entry.path());
        listing.push(DirEntry { name, masked });
    }
    listing
}

/// Whether `path` is `/dev/null` (a symlink to it, or the device itself),
/// which masks the name.
fn is_dev_null(path: &Path) -> bool {
    let (Ok(m), Ok(null)) = (fs::metadata(path), fs::metadata("/dev/null")) else {
        return false;
    };
    m.file_type().is_char_device() && m.rdev() == null.rdev()
}

/// A file's text, if it is one we may read: a regular file (after
/// symlinks), owned by root or the daemon's user, not writable by others
/// (whoever could write it could declare reservations), at most
/// `MAX_FILE_BYTES`, UTF-8.
///
/// The name is first opened `O_PATH` (which opens nothing: no device
/// driver, FIFO or automount sees it), checked there, and only then opened
/// for reading through that very reference (`/proc/self/fd/N` reopens the
/// inode it holds, not the name again): a symlink chain through a
/// directory someone else may write cannot make the daemon open a device
/// (a watchdog, a tape) or a FIFO, or swap the file between the check and
/// the read.
fn read_file(path: &Path, daemon_uid: u32) -> Result<String, String> {
    use rustix::fs::{Mode, OFlags};
    let reference = rustix::fs::open(path, OFlags::PATH | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| format!("cannot open: {}", std::io::Error::from(e)))?;
    let m = rustix::fs::fstat(&reference)
        .map_err(|e| format!("cannot stat: {}", std::io::Error::from(e)))?;
    if rustix::fs::FileType::from_raw_mode(m.st_mode) != rustix::fs::FileType::RegularFile {
        return Err("not a regular file; ignored".into());
    }
    if m.st_uid != 0 && m.st_uid != daemon_uid {
        return Err(format!(
            "owned by uid {}, neither root nor the daemon's uid {daemon_uid}; ignored",
            m.st_uid
        ));
    }
    if m.st_mode & 0o002 != 0 {
        return Err("writable by everyone; ignored (chmod o-w it)".into());
    }
    let len = u64::try_from(m.st_size).unwrap_or(0);
    if len > MAX_FILE_BYTES {
        return Err(format!(
            "{len} bytes, more than the {MAX_FILE_BYTES} read; ignored"
        ));
    }
    if crate::fault::fault("slow-declared-read") {
        // Tests: a window between the check and the read, for the file
        // to change in.
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
    // O_NONBLOCK and O_NOCTTY: harmless on the regular file this is.
    let file = rustix::fs::open(
        format!("/proc/self/fd/{}", reference.as_raw_fd()),
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .map_err(|e| format!("cannot open: {}", std::io::Error::from(e)))?;
    let mut file = fs::File::from(file);
    let mut bytes = Vec::with_capacity(len as usize);
    file.by_ref()
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("more than {MAX_FILE_BYTES} bytes; ignored"));
    }
    // Written to while we read it (`cat new > file` empties it first): what
    // was read may be a moment of an edit, not the file. Taken as
    // unreadable, so nothing it declared is deleted; the next reload reads
    // it whole. (An edit that ended before the check is no edit any more.)
    let after = rustix::fs::fstat(&file)
        .map_err(|e| format!("cannot stat: {}", std::io::Error::from(e)))?;
    let identity = |m: &rustix::fs::Stat| {
        (
            m.st_dev,
            m.st_ino,
            m.st_size,
            m.st_mtime,
            m.st_mtime_nsec,
            m.st_ctime,
            m.st_ctime_nsec,
        )
    };
    if identity(&after) != identity(&m) || bytes.len() as u64 != len {
        return Err(
            "changed while it was read; ignored until the next reload (nothing it declares is deleted meanwhile)"
                .into(),
        );
    }
    String::from_utf8(bytes).map_err(|e| format!("not UTF-8 text ({e}); ignored"))
}

/// User and group names to ids, from /etc/passwd and /etc/group, each read
/// once per reload (numbers always work, for names only NSS knows).
#[derive(Default)]
struct Names {
    users: Option<HashMap<String, u32>>,
    groups: Option<HashMap<String, u32>>,
}

impl Names {
    fn resolve(&mut self, owner: &OwnerName) -> Result<Owner, String> {
        match owner {
            OwnerName::User(name) => {
                if let Ok(id) = name.parse() {
                    return Ok(Owner::User(id));
                }
                let users = self.users.get_or_insert_with(|| table("/etc/passwd"));
                users.get(name).map(|&id| Owner::User(id)).ok_or_else(|| {
                    format!("owner={name}: no such user in /etc/passwd (a uid number works too)")
                })
            }
            OwnerName::Group(name) => {
                if let Ok(id) = name.parse() {
                    return Ok(Owner::Group(id));
                }
                let groups = self.groups.get_or_insert_with(|| table("/etc/group"));
                groups.get(name).map(|&id| Owner::Group(id)).ok_or_else(|| {
                    format!("owner=@{name}: no such group in /etc/group (a gid number works too)")
                })
            }
        }
    }
}

/// name -> id of a passwd/group-format file (missing: empty).
fn table(path: &str) -> HashMap<String, u32> {
    let text = fs::read_to_string(path).unwrap_or_default();
    let mut map = HashMap::new();
    for line in text.lines() {
        let mut f = line.split(':');
        let (Some(name), _, Some(id)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if let Ok(id) = id.parse() {
            // The first entry of a name wins, as getpwnam does.
            map.entry(name.to_string()).or_insert(id);
        }
    }
    map
}
