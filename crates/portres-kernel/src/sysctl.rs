//! The kernel's port sysctls: the reserved-ports list
//! `net.ipv4.ip_local_reserved_ports`, which keeps the kernel's automatic
//! port choice (bind to port 0, connect() autobind) off reserved ports, and
//! the dynamic port range `net.ipv4.ip_local_port_range`.
//!
//! This module owns reading and writing those files correctly — the
//! reserved-ports file has unusual read and write rules, handled and
//! explained below — and (in `fake`) an in-memory fake of the reserved-ports
//! list that keeps the kernel's write rules (for the tests of `converge`
//! here and the daemon's in-memory kernel, `portres-daemon`'s
//! `kernel::fake`). Deciding
//! *what* to reserve is the daemon's job.
//!
//! Both sysctls are per network namespace: the files under `/proc/sys/net`
//! belong to the namespace of the thread that opens them.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use portres_core::PortSet;

mod fake;

pub use fake::FakeReservedPorts;

/// The kernel's reserved-ports list (net.ipv4.ip_local_reserved_ports), per
/// network namespace, shared by TCP and UDP.
///
/// Two ways to change it, after the kernel's own two: a write() at file
/// offset 0 *replaces* the list, a write() at any other offset *adds* to it
/// (measured on kernel 6.18; `proc_do_large_bitmap` copies or ORs its
/// parsed bitmap). Neither leaves a moment in which a port that is in the
/// list before and after is missing: the bitmap is swapped word by word.
/// But one write() carries at most [`MAX_WRITE`] bytes, so a longer value
/// can be *added* in several writes, never *replaced* by one. [`converge`]
/// puts both together so that the list never loses a port it must keep.
pub trait ReservedPorts: Send {
    /// Reads the current list.
    fn read(&self) -> io::Result<PortSet>;

    /// Reads the current list as the kernel prints it (canonical ranges,
    /// no trailing newline): cheaper than [`ReservedPorts::read`] when all
    /// the caller wants is to compare it with a value it knows.
    fn read_text(&self) -> io::Result<String> {
        self.read().map(|set| set.to_string())
    }

    /// A way to read the list as text ([`ReservedPorts::read_text`])
    /// without this object, e.g. on another thread without the lock that
    /// guards it; `None` if there is none (then call `read_text`).
    fn text_reader(&self) -> Option<TextReader> {
        None
    }

    /// Adds `ports` to the list; no port leaves it, not for an instant.
    /// Any length (several writes, each adding). A failure part-way may have
    /// added some of `ports`.
    fn add(&mut self, ports: &PortSet) -> io::Result<()>;

    /// Replaces the list with `ports` in one write(): the list goes from
    /// the old value to the new one with nothing in between. `ports` must
    /// render to at most [`MAX_WRITE`] bytes ([`PortSet::coarsened_to_fit`]
    /// makes a value that does); a longer one is refused with
    /// `ErrorKind::InvalidInput` and nothing is written.
    fn replace(&mut self, ports: &PortSet) -> io::Result<()>;

    /// Sets the list to exactly `ports`, whatever its length: the first
    /// piece replaces, the rest add. Between those writes the ports of the
    /// later pieces are missing, so this is only for setting up a value
    /// nobody relies on yet (tests, tools); the daemon uses [`converge`].
    fn write(&mut self, ports: &PortSet) -> io::Result<()> {
        let mut pieces = ports.render_chunks(MAX_WRITE).into_iter();
        let first = pieces.next().unwrap_or_default();
        self.replace(&first.parse().map_err(invalid)?)?;
        for piece in pieces {
            self.add(&piece.parse().map_err(invalid)?)?;
        }
        Ok(())
    }
}

/// Reads the reserved-ports list as text; see [`ReservedPorts::text_reader`].
pub type TextReader = std::sync::Arc<dyn Fn() -> io::Result<String> + Send + Sync>;

fn invalid(e: portres_core::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.message)
}

/// Brings the kernel's list from `current` (what it holds, if the caller
/// knows) to `desired` or, when `desired` is too long to replace the list
/// in one write, to a coarser superset of it — never through a value that
/// lacks a port of `desired` that `current` had. Returns what the list
/// holds afterwards.
///
/// - Growth (`desired` covers `current`): only the added ports are
///   written, at a non-zero offset; the result is exactly `desired`, at
///   any length.
/// - Otherwise (a shrink, or `current` unknown): one replacing write of
///   `desired.coarsened_to_fit(MAX_WRITE)`, or just the added part of it
///   when that covers `current`.
///
/// On error the list may hold `current` plus some of what was added, or
/// (unknown `current`) anything it held before: re-read before relying on
/// it.
pub fn converge(
    kernel: &mut dyn ReservedPorts,
    current: Option<&PortSet>,
    desired: &PortSet,
) -> io::Result<PortSet> {
    if let Some(current) = current {
        if current == desired {
            return Ok(desired.clone());
        }
        if desired.covers(current) {
            kernel.add(&desired.difference(current))?;
            return Ok(desired.clone());
        }
    }
    let target = desired.coarsened_to_fit(MAX_WRITE);
    match current {
        Some(current) if current == &target => {}
        Some(current) if target.covers(current) => kernel.add(&target.difference(current))?,
        _ => kernel.replace(&target)?,
    }
    Ok(target)
}

/// The most bytes the kernel keeps from one write() to the reserved-ports
/// file.
///
/// Why: the sysctl handler (`proc_do_large_bitmap`) copies at most one page
/// minus a few bytes per write and silently drops the rest, cut at the last
/// whole entry (measured: a 60005-byte write returns 4092). So a long value
/// can only be added in several writes.
pub const MAX_WRITE: usize = 4092;

/// The first read buffer size for the reserved-ports file. The longest
/// possible value (every other port) is about 190 KB; typical values are a
/// few bytes.
const FIRST_READ_BUFFER: usize = 64 * 1024;

/// Beyond this the value cannot be the reserved-ports list.
const MAX_READ_BUFFER: usize = 4 * 1024 * 1024;

/// The reserved-ports list as the `/proc/sys` file of the calling thread's
/// network namespace.
#[derive(Clone, Debug)]
pub struct ProcReservedPorts {
    path: PathBuf,
    /// The file kept open for adding writes, when it is a sysctl (under
    /// `/proc/sys`, whose entry stays the same for the life of the
    /// namespace): an open per add cost ~4% of the daemon's time when each
    /// portserver request adds its port. Any other path (a test's regular
    /// file, which may be replaced) is opened per write.
    adder: Option<std::sync::Arc<File>>,
}

impl ProcReservedPorts {
    /// Where the kernel exposes the list.
    pub const DEFAULT_PATH: &'static str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

    /// The list at [`ProcReservedPorts::DEFAULT_PATH`].
    pub fn new() -> Self {
        Self::with_path(Self::DEFAULT_PATH)
    }

    /// The list at another path (tests, or a bind-mounted namespace's file).
    pub fn with_path(path: impl Into<PathBuf>) -> Self {
        ProcReservedPorts {
            path: path.into(),
            adder: None,
        }
    }

    /// The file this reads and writes.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens the file for writing without writing: tells whether we may
    /// change it (EACCES/EROFS/EPERM => Err).
    pub fn check_writable(&self) -> io::Result<()> {
        self.open_for_write(false).map(drop)
    }

    fn open_for_write(&self, truncate: bool) -> io::Result<File> {
        // O_TRUNC changes nothing for the sysctl (its first write replaces
        // the value anyway) but makes a regular file given to `with_path`
        // behave the same way.
        OpenOptions::new()
            .write(true)
            .truncate(truncate)
            .open(&self.path)
            .map_err(|e| annotate(e, "opening", &self.path))
    }
}

impl Default for ProcReservedPorts {
    fn default() -> Self {
        Self::new()
    }
}

impl ReservedPorts for ProcReservedPorts {
    fn read(&self) -> io::Result<PortSet> {
        let text = read_whole(&self.path)?;
        text.parse::<PortSet>().map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: unexpected content: {e}", self.path.display()),
            )
        })
    }

    fn read_text(&self) -> io::Result<String> {
        read_text_at(&self.path)
    }

    fn text_reader(&self) -> Option<TextReader> {
        let path = self.path.clone();
        Some(std::sync::Arc::new(move || read_text_at(&path)))
    }

    fn add(&mut self, ports: &PortSet) -> io::Result<()> {
        if ports.is_empty() {
            return Ok(());
        }
        let file = match &self.adder {
            Some(file) => file.clone(),
            None => {
                let file = std::sync::Arc::new(self.open_for_write(false)?);
                if self.path.starts_with("/proc/sys") {
                    self.adder = Some(file.clone());
                }
                file
            }
        };
        for piece in ports.render_chunks(MAX_WRITE) {
            write_once_at(&file, piece.as_bytes(), ADDING_OFFSET)
                .map_err(|e| annotate(e, "adding to", &self.path))?;
        }
        Ok(())
    }

    fn replace(&mut self, ports: &PortSet) -> io::Result<()> {
        let text = replacing_text(ports)?;
        let file = self.open_for_write(true)?;
        write_once_at(&file, text.as_bytes(), 0).map_err(|e| annotate(e, "writing", &self.path))
    }
}

/// The list as the kernel prints it, without the trailing newline.
fn read_text_at(path: &Path) -> io::Result<String> {
    let mut text = read_whole(path)?;
    text.truncate(text.trim_end().len());
    Ok(text)
}

/// Where an adding write goes: any offset but 0 makes the sysctl OR the
/// written list into its bitmap instead of replacing it.
const ADDING_OFFSET: u64 = 1;

/// What one replacing write carries for `ports`.
///
/// Why the empty set is special: a zero-length write() to this file is a
/// no-op that leaves the old value in place (measured on kernel 6.18), while
/// writing "\n" clears it.
fn replacing_text(ports: &PortSet) -> io::Result<String> {
    if ports.is_empty() {
        return Ok("\n".to_owned());
    }
    let text = ports.to_string();
    if text.len() > MAX_WRITE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a {}-byte value cannot replace the list in one write (at most {MAX_WRITE})",
                text.len()
            ),
        ));
    }
    Ok(text)
}

/// Writes `piece` with exactly one pwrite() call at `offset`.
///
/// Why one call: each write() is parsed as a list of its own, so
/// `write_all`'s retry of a short write would be wrong (and a piece cut
/// mid-entry would be wrong too). A short write means the kernel dropped
/// entries: report it.
fn write_once_at(file: &File, piece: &[u8], offset: u64) -> io::Result<()> {
    loop {
        match file.write_at(piece, offset) {
            Ok(n) if n == piece.len() => return Ok(()),
            Ok(n) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("the kernel kept only {n} of {} bytes", piece.len()),
                ));
            }
            // EINTR means nothing was written: the same piece again is right.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

/// Reads a sysctl file whole, with one read() per open.
///
/// Why: sysctl files like the reserved-ports list format their whole value
/// for a read at offset 0 and return nothing for reads at an offset > 0, so
/// a short first buffer loses the rest (measured: read(5) then read(100)
/// gives "1000," then ""). When the buffer comes back full the value may
/// have been cut: open again and read with a buffer twice as big.
fn read_whole(path: &Path) -> io::Result<String> {
    let mut size = FIRST_READ_BUFFER;
    loop {
        let mut file = File::open(path).map_err(|e| annotate(e, "opening", path))?;
        let mut buf = vec![0u8; size];
        let n = loop {
            match file.read(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other.map_err(|e| annotate(e, "reading", path))?,
            }
        };
        if n < size {
            buf.truncate(n);
            return String::from_utf8(buf).map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: content is not UTF-8", path.display()),
                )
            });
        }
        if size >= MAX_READ_BUFFER {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: value larger than {size} bytes", path.display()),
            ));
        }
        size *= 2;
    }
}

fn annotate(e: io::Error, doing: &str, path: &Path) -> io::Error {
    io::Error::new(e.kind(), format!("{doing} {}: {e}", path.display()))
}

/// Where the kernel exposes the dynamic port range.
pub const LOCAL_PORT_RANGE_PATH: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The dynamic (ephemeral) port range, net.ipv4.ip_local_port_range,
/// inclusive.
pub fn local_port_range() -> io::Result<(u16, u16)> {
    let text = read_whole(Path::new(LOCAL_PORT_RANGE_PATH))?;
    parse_port_range(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{LOCAL_PORT_RANGE_PATH}: unexpected content {text:?}"),
        )
    })
}

/// Where the kernel exposes the first port an unprivileged process may bind.
pub const UNPRIVILEGED_PORT_START_PATH: &str = "/proc/sys/net/ipv4/ip_unprivileged_port_start";

/// net.ipv4.ip_unprivileged_port_start: ports below it need
/// CAP_NET_BIND_SERVICE to bind (1024 unless the admin changed it).
pub fn unprivileged_port_start() -> io::Result<u32> {
    let text = read_whole(Path::new(UNPRIVILEGED_PORT_START_PATH))?;
    text.trim().parse::<u32>().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{UNPRIVILEGED_PORT_START_PATH}: unexpected content {text:?}"),
        )
    })
}

/// Parses the kernel's form of the port range: two ports separated by
/// whitespace (the kernel prints a tab), first <= last.
fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut words = text.split_whitespace();
    let first = words.next()?.parse::<u16>().ok()?;
    let last = words.next()?.parse::<u16>().ok()?;
    if words.next().is_some() || first > last {
        return None;
    }
    Some((first, last))
}

#[cfg(test)]
mod tests;
